//! Where an unpacked kernel keeps its files, for the three ways Debian packages one (and any
//! directory laid out like them):
//!
//! | form | image | modules | config |
//! | --- | --- | --- | --- |
//! | bookworm (`linux-image-V-amd64[-unsigned]`) | `boot/vmlinuz-REL` | `lib/modules/REL` | `boot/config-REL` |
//! | merged /usr (trixie, up to 6.18) | `boot/vmlinuz-REL` | `usr/lib/modules/REL` | `boot/config-REL` |
//! | split (6.19 on: `linux-binary`, `-modules`, `-base`) | `usr/lib/modules/REL/vmlinuz` | `usr/lib/modules/REL` | `usr/lib/modules/REL/config` |
//!
//! virtme-ng finds the modules of all three from the image's path (it walks up to the
//! directory holding `lib/modules`, or `usr/lib/modules`).

use anyhow::{bail, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// How a kernel directory is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// `boot/vmlinuz-REL` + `lib/modules/REL`.
    Boot,
    /// `boot/vmlinuz-REL` + `usr/lib/modules/REL` (merged /usr).
    MergedUsr,
    /// `usr/lib/modules/REL/vmlinuz` (+ modules and base files beside it).
    Split,
}

impl Layout {
    pub fn describe(self) -> &'static str {
        match self {
            Layout::Boot => "boot/ + lib/modules",
            Layout::MergedUsr => "boot/ + usr/lib/modules (merged /usr)",
            Layout::Split => "usr/lib/modules/REL/vmlinuz (split packages)",
        }
    }
}

/// The files of one kernel in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub image: PathBuf,
    /// The release named by the path (`vmlinuz-REL` or `modules/REL/vmlinuz`).
    pub release: String,
    pub layout: Layout,
}

/// Module directories a kernel of `release` may have below `dir`, in lookup order.
pub fn module_dirs(dir: &Path, release: &str) -> [PathBuf; 2] {
    [
        dir.join("lib/modules").join(release),
        dir.join("usr/lib/modules").join(release),
    ]
}

/// A directory that holds modules (not just the split form's `vmlinuz`).
pub fn is_modules_dir(d: &Path) -> bool {
    d.join("kernel").is_dir() || d.join("modules.dep").is_file()
}

/// The modules of `release` below `dir`, if any.
pub fn modules(dir: &Path, release: &str) -> Option<PathBuf> {
    module_dirs(dir, release)
        .into_iter()
        .find(|d| is_modules_dir(d))
}

/// The kernel config of `release` below `dir`, if any.
pub fn config(dir: &Path, release: &str) -> Option<PathBuf> {
    [
        dir.join("boot").join(format!("config-{release}")),
        dir.join("usr/lib/modules").join(release).join("config"),
        dir.join("lib/modules").join(release).join("config"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// The one kernel image in `dir`, in any of the three forms.
pub fn find(dir: &Path) -> Result<Found> {
    let mut found = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir.join("boot")) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(rel) = name.strip_prefix("vmlinuz-") {
                let layout =
                    if module_dirs(dir, rel)[1].is_dir() && !module_dirs(dir, rel)[0].is_dir() {
                        Layout::MergedUsr
                    } else {
                        Layout::Boot
                    };
                found.push(Found {
                    image: e.path(),
                    release: rel.to_string(),
                    layout,
                });
            }
        }
    }
    for base in ["usr/lib/modules", "lib/modules"] {
        let Ok(rd) = std::fs::read_dir(dir.join(base)) else {
            continue;
        };
        for e in rd.flatten() {
            let rel = e.file_name().to_string_lossy().into_owned();
            // Signed image first; `vmlinuz.unsigned` is what linux-binary-unsigned ships.
            if let Some(img) = ["vmlinuz", "vmlinuz.unsigned"]
                .iter()
                .map(|n| e.path().join(n))
                .find(|p| p.is_file())
            {
                if !found.iter().any(|f: &Found| f.release == rel) {
                    found.push(Found {
                        image: img,
                        release: rel,
                        layout: Layout::Split,
                    });
                }
            }
        }
        if dir.join("lib").is_symlink() {
            break; // lib → usr/lib: the same directory twice
        }
    }
    found.sort_by(|a, b| a.image.cmp(&b.image));
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!(
            "no kernel in {} (looked for boot/vmlinuz-* and usr/lib/modules/*/vmlinuz)",
            dir.display()
        ),
        n => bail!(
            "{} has {n} kernels ({}): name one image, e.g. --kernel {}",
            dir.display(),
            found
                .iter()
                .map(|f| f.release.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            found[0].image.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "x").unwrap();
    }

    #[test]
    fn bookworm_form() {
        let d = tempfile::tempdir().unwrap();
        let r = "6.1.0-56-amd64";
        touch(d.path(), &format!("boot/vmlinuz-{r}"));
        touch(d.path(), &format!("boot/config-{r}"));
        touch(
            d.path(),
            &format!("lib/modules/{r}/kernel/drivers/md/dm-cache.ko.xz"),
        );
        let f = find(d.path()).unwrap();
        assert_eq!(f.layout, Layout::Boot);
        assert_eq!(f.release, r);
        assert_eq!(f.image, d.path().join(format!("boot/vmlinuz-{r}")));
        assert_eq!(
            modules(d.path(), r),
            Some(d.path().join(format!("lib/modules/{r}")))
        );
        assert_eq!(
            config(d.path(), r),
            Some(d.path().join(format!("boot/config-{r}")))
        );
    }

    #[test]
    fn merged_usr_form() {
        let d = tempfile::tempdir().unwrap();
        let r = "6.18.15+deb13-amd64";
        touch(d.path(), &format!("boot/vmlinuz-{r}"));
        touch(d.path(), &format!("boot/config-{r}"));
        touch(
            d.path(),
            &format!("usr/lib/modules/{r}/kernel/drivers/md/dm-cache.ko.xz"),
        );
        let f = find(d.path()).unwrap();
        assert_eq!(f.layout, Layout::MergedUsr);
        assert_eq!(
            modules(d.path(), r),
            Some(d.path().join(format!("usr/lib/modules/{r}")))
        );
        assert_eq!(
            config(d.path(), r),
            Some(d.path().join(format!("boot/config-{r}")))
        );
    }

    #[test]
    fn split_form() {
        let d = tempfile::tempdir().unwrap();
        let r = "7.3.4+deb13-amd64";
        touch(d.path(), &format!("usr/lib/modules/{r}/vmlinuz"));
        // Only linux-binary unpacked: the image is there, the modules are not.
        let f = find(d.path()).unwrap();
        assert_eq!(f.layout, Layout::Split);
        assert_eq!(f.release, r);
        assert_eq!(
            f.image,
            d.path().join(format!("usr/lib/modules/{r}/vmlinuz"))
        );
        assert_eq!(
            modules(d.path(), r),
            None,
            "vmlinuz alone is no modules dir"
        );
        assert_eq!(config(d.path(), r), None);
        // + linux-base and linux-modules.
        touch(d.path(), &format!("usr/lib/modules/{r}/config"));
        touch(d.path(), &format!("usr/lib/modules/{r}/modules.builtin"));
        touch(
            d.path(),
            &format!("usr/lib/modules/{r}/kernel/drivers/md/dm-cache.ko.xz"),
        );
        assert_eq!(
            modules(d.path(), r),
            Some(d.path().join(format!("usr/lib/modules/{r}")))
        );
        assert_eq!(
            config(d.path(), r),
            Some(d.path().join(format!("usr/lib/modules/{r}/config")))
        );
    }

    #[test]
    fn unsigned_split_image_and_errors() {
        let d = tempfile::tempdir().unwrap();
        assert!(find(d.path())
            .unwrap_err()
            .to_string()
            .contains("no kernel in"));
        touch(
            d.path(),
            "usr/lib/modules/7.3.4+deb13-amd64/vmlinuz.unsigned",
        );
        assert_eq!(find(d.path()).unwrap().layout, Layout::Split);
        touch(d.path(), "boot/vmlinuz-6.1.0-56-amd64");
        let e = find(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("has 2 kernels") && e.contains("6.1.0-56-amd64"),
            "{e}"
        );
    }
}
