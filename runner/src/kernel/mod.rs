//! Kernel specs and acquisition: a bzImage path, a directory holding an unpacked kernel in
//! any of Debian's three packaging forms ([`layout`]), `debian:VERSION` fetched without root
//! from any Debian suite into the per-user cache ([`crate::debian`]), or `build:SRC[,PATCH…]`
//! (see [`crate::kbuild`]).  Before any boot we check that the kernel has dm-cache.

pub mod layout;

use crate::event::Event;
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Default kernel when no `--kernel` is given: Debian's newest 6.12 image.
pub const DEFAULT_SPEC: &str = "debian:6.12";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSpec {
    /// A kernel image, optionally with the directory holding `lib/modules/RELEASE` (or the
    /// `RELEASE` modules dir itself).
    Image {
        image: PathBuf,
        modules: Option<PathBuf>,
    },
    /// A directory with an unpacked kernel: `boot/vmlinuz-*` with `lib/modules/*` or
    /// `usr/lib/modules/*`, or `usr/lib/modules/*/vmlinuz` (Debian's split packages).
    Dir(PathBuf),
    /// `debian:6.12.117+deb12`, `debian:6.1.0-56`, `debian:6.18.15`, or a series `debian:6.18`
    /// (newest); see [`crate::debian::Index::resolve`].
    Debian(String),
    /// `build:debian:6.12,patches/fix.patch[,extra.config]` — built from source with `kconfigs/`.
    Build { src: String, patches: Vec<PathBuf> },
}

impl KernelSpec {
    pub fn parse(s: &str) -> Result<KernelSpec> {
        let s = s.trim();
        if s.is_empty() {
            bail!("empty kernel spec");
        }
        if let Some(rest) = s.strip_prefix("build:") {
            let mut parts = rest.split(',');
            let src = parts.next().unwrap_or("").to_string();
            if src.is_empty() {
                bail!("`{s}`: write build:SRC[,PATCH…], e.g. build:debian:6.12,patches/a373b3d5289e-on-linux-6.12.117.patch");
            }
            return Ok(KernelSpec::Build {
                src,
                patches: parts.filter(|p| !p.is_empty()).map(PathBuf::from).collect(),
            });
        }
        if let Some(v) = s.strip_prefix("debian:") {
            if v.is_empty()
                || !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".+-~".contains(c))
            {
                bail!("`{s}`: write debian:VERSION, e.g. debian:6.12.117+deb12, debian:6.1.0-56, debian:6.18.15 or debian:6.18");
            }
            return Ok(KernelSpec::Debian(v.to_string()));
        }
        if let Some((img, m)) = s.split_once(",modules=") {
            return Ok(KernelSpec::Image {
                image: img.into(),
                modules: Some(m.into()),
            });
        }
        let p = PathBuf::from(s);
        if p.is_dir() {
            Ok(KernelSpec::Dir(p))
        } else if p.exists() {
            Ok(KernelSpec::Image {
                image: p,
                modules: None,
            })
        } else {
            bail!("kernel `{s}` does not exist (give a bzImage path, a directory with an unpacked kernel, debian:VERSION or build:SRC[,PATCH…])")
        }
    }
}

impl KernelSpec {
    /// The spec as one writes it: [`KernelSpec::parse`]'s inverse.
    pub fn render(&self) -> String {
        match self {
            KernelSpec::Image { image, modules } => match modules {
                Some(m) => format!("{},modules={}", image.display(), m.display()),
                None => image.display().to_string(),
            },
            KernelSpec::Dir(d) => d.display().to_string(),
            KernelSpec::Debian(v) => format!("debian:{v}"),
            KernelSpec::Build { src, patches } => {
                let mut s = format!("build:{src}");
                for p in patches {
                    s.push(',');
                    s.push_str(&p.display().to_string());
                }
                s
            }
        }
    }

    /// A `build:` spec with its relative paths (a source directory, patches, fragments) taken
    /// from `dir` — how a matrix file's specs are read; other specs as they are.
    pub fn anchored(self, dir: &Path) -> KernelSpec {
        let KernelSpec::Build { src, patches } = self else {
            return self;
        };
        let rebase = |p: &Path| {
            if p.is_relative() {
                dir.join(p)
            } else {
                p.to_path_buf()
            }
        };
        let src = if is_debian_source(&src) {
            src
        } else {
            rebase(Path::new(&src)).display().to_string()
        };
        KernelSpec::Build {
            src,
            patches: patches.iter().map(|p| rebase(p)).collect(),
        }
    }
}

/// Whether a `build:` source is Debian's (`debian:…`) rather than a directory.
pub fn is_debian_source(src: &str) -> bool {
    src.starts_with("debian:")
}

/// How dm-cache is present in a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DmCache {
    BuiltIn,
    Module,
    /// No config and no modules to look at: the guest checks `dmsetup targets`.
    Unknown,
}

/// A kernel ready to boot.
#[derive(Debug, Clone, Serialize)]
pub struct Kernel {
    /// What the user asked for (for reports).
    pub spec: String,
    /// The image `vng -r` boots.  vng finds its modules by walking up from it to the
    /// directory holding `lib/modules` or `usr/lib/modules` ([`layout`]).
    pub image: PathBuf,
    pub release: Option<String>,
    pub config: Option<PathBuf>,
    /// `[usr/]lib/modules/<release>` of this kernel, if it has modules.
    pub modules: Option<PathBuf>,
    pub dm_cache: DmCache,
}

/// The release string embedded in a bzImage header (`kernel_version` field), which also
/// proves the file is an x86 Linux kernel image.
pub fn bzimage_release(data: &[u8]) -> Option<String> {
    if data.len() < 0x210 || &data[0x202..0x206] != b"HdrS" {
        return None;
    }
    let off = u16::from_le_bytes([data[0x20e], data[0x20f]]) as usize + 0x200;
    let tail = data.get(off..)?;
    let end = tail.iter().position(|&b| b == 0 || b == b' ')?;
    let v = std::str::from_utf8(&tail[..end]).ok()?;
    (!v.is_empty()).then(|| v.to_string())
}

/// `CONFIG_DM_CACHE` in a .config text: `y`, `m` or absent.
pub fn config_dm_cache(config: &str) -> Option<char> {
    config.lines().find_map(|l| {
        l.strip_prefix("CONFIG_DM_CACHE=")
            .and_then(|v| v.chars().next())
    })
}

/// The options of `required` that a .config text does not set to `y` or `m`.
pub fn missing_options<'a>(config: &str, required: &'a [String]) -> Vec<&'a str> {
    required
        .iter()
        .filter(|opt| {
            !config.lines().any(|l| {
                l.strip_prefix(opt.as_str())
                    .and_then(|v| v.strip_prefix('='))
                    .is_some_and(|v| v == "y" || v == "m")
            })
        })
        .map(|s| s.as_str())
        .collect()
}

/// Refuses a kernel that lacks a config option a case requires (or whose config is unknown),
/// with one line that names the options and the fix.
pub fn check_requires(kernel: &Kernel, case: &str, required: &[String]) -> Result<()> {
    if required.is_empty() {
        return Ok(());
    }
    let Some(path) = &kernel.config else {
        bail!(
            "case {case} requires {} but the config of kernel {} is unknown (no config file beside it): use a kernel with its config (a Debian kernel, or a build: spec; {})",
            required.join(", "),
            kernel.spec,
            fragment_hint(&required.iter().map(String::as_str).collect::<Vec<_>>(), &repo_fragments())
        );
    };
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the config of kernel {}: {}",
            kernel.spec,
            path.display()
        )
    })?;
    let missing = missing_options(&text, required);
    if !missing.is_empty() {
        bail!(
            "kernel {} lacks {} (not set in {}), which case {case} requires: {}",
            kernel.spec,
            missing.join(", "),
            path.display(),
            fragment_hint(&missing, &repo_fragments())
        );
    }
    Ok(())
}

/// The repository's kconfig fragments (`kconfigs/*.config`): (name as written in a spec, text).
fn repo_fragments() -> Vec<(String, String)> {
    let Some(dir) = crate::kbuild::default_kconfigs()
        .first()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    else {
        return vec![];
    };
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "config"))
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            Some((
                format!("kconfigs/{}", e.file_name().to_string_lossy()),
                text,
            ))
        })
        .collect();
    out.sort();
    out
}

/// How to get a kernel with the `missing` options: the fragments that set all of them, named
/// for a `build:` spec, or what a fragment of one's own must say.
pub fn fragment_hint(missing: &[&str], fragments: &[(String, String)]) -> String {
    let owned: Vec<String> = missing.iter().map(|s| s.to_string()).collect();
    let fit: Vec<&str> = fragments
        .iter()
        .filter(|(_, text)| missing_options(text, &owned).is_empty())
        .map(|(name, _)| name.as_str())
        .collect();
    if fit.is_empty() {
        format!(
            "add a kconfig fragment with {} to the build: spec",
            missing
                .iter()
                .map(|m| format!("{m}=y"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        format!(
            "add {} to the build: spec (e.g. build:debian:6.12,{})",
            fit.join(" or "),
            fit[0]
        )
    }
}

fn read_release(image: &Path) -> Result<String> {
    let mut head = vec![0u8; 64 * 1024];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(image)
            .with_context(|| format!("cannot open kernel {}", image.display()))?;
        f.read(&mut head)?
    };
    head.truncate(n);
    bzimage_release(&head).ok_or_else(|| {
        anyhow!(
            "{} is not a Linux kernel image (no bzImage header); give a bzImage, a directory with an unpacked kernel, or debian:VERSION",
            image.display()
        )
    })
}

fn has_dm_cache_module(moddir: &Path) -> bool {
    ["ko", "ko.xz", "ko.zst", "ko.gz"].iter().any(|ext| {
        moddir
            .join(format!("kernel/drivers/md/dm-cache.{ext}"))
            .exists()
    })
}

/// Checks a kernel's dm-cache support from its config and modules (`looked_in`: where the
/// modules were searched, for the message when they are missing).
fn dm_cache_support(
    config: Option<&Path>,
    moddir: Option<&Path>,
    image: &Path,
    looked_in: &[PathBuf],
) -> Result<DmCache> {
    if let Some(cfg) = config {
        let text = std::fs::read_to_string(cfg)
            .with_context(|| format!("cannot read {}", cfg.display()))?;
        return match config_dm_cache(&text) {
            Some('y') => Ok(DmCache::BuiltIn),
            Some('m') if moddir.is_some_and(has_dm_cache_module) => Ok(DmCache::Module),
            Some('m') => bail!(
                "{} has dm-cache as a module (CONFIG_DM_CACHE=m) but its modules are not there ({}): give the directory that holds [usr/]lib/modules",
                image.display(),
                match moddir {
                    Some(m) => format!("no drivers/md/dm-cache.ko* in {}", m.display()),
                    None if looked_in.is_empty() => "no modules dir".into(),
                    None => format!(
                        "looked in {}",
                        looked_in
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(" and ")
                    ),
                }
            ),
            _ => bail!(
                "{} has no dm-cache (CONFIG_DM_CACHE is not set in {}): build it with kconfigs/dm-cache.config",
                image.display(),
                cfg.display()
            ),
        };
    }
    if moddir.is_some_and(has_dm_cache_module) {
        return Ok(DmCache::Module);
    }
    Ok(DmCache::Unknown)
}

/// A kernel ready to boot and its accelerator, from a spec as the user wrote it: parse, fetch
/// or build (`progress` gets their events), then the KVM probe.  The third value is the
/// probe's fallback notice (TCG, and why), for the caller to show once.
pub fn prepare(
    spec: &str,
    progress: &mut dyn FnMut(Event),
) -> Result<(Kernel, crate::vm::Accel, Option<String>)> {
    let parsed = KernelSpec::parse(spec)?;
    let k = resolve(&parsed, spec, progress)?;
    let (accel, notice) = crate::vm::choose_accel(&k.image)?;
    Ok((k, accel, notice))
}

/// Resolves a spec to a bootable kernel (fetching or building it when needed).
pub fn resolve(spec: &KernelSpec, label: &str, progress: &mut dyn FnMut(Event)) -> Result<Kernel> {
    match spec {
        KernelSpec::Dir(d) => from_dir(d, label),
        KernelSpec::Debian(v) => {
            let dir = crate::debian::fetch_kernel(v, progress)?;
            from_dir(&dir, label)
        }
        KernelSpec::Image { image, modules } => from_image(image, modules.as_deref(), label),
        KernelSpec::Build { src, patches } => build_kernel(src, patches, label, progress),
    }
}

fn build_kernel(
    src: &str,
    items: &[PathBuf],
    label: &str,
    progress: &mut dyn FnMut(Event),
) -> Result<Kernel> {
    let built = crate::kbuild::build(&build_request(src, items)?, progress)?;
    let mut k = from_image(&built.bzimage, None, label)?;
    k.config = Some(built.config.clone());
    k.dm_cache = dm_cache_support(Some(&built.config), None, &built.bzimage, &[])?;
    Ok(k)
}

/// A build request from a `build:` spec: items ending in `.config` are kconfig fragments
/// (added to `kconfigs/dm-cache.config`), the others patches, in order.
pub fn build_request(src: &str, items: &[PathBuf]) -> Result<crate::kbuild::BuildRequest> {
    let (kconfigs, patches): (Vec<PathBuf>, Vec<PathBuf>) = items
        .iter()
        .cloned()
        .partition(|p| p.extension().is_some_and(|e| e == "config"));
    for p in items {
        if !p.is_file() {
            bail!(
                "{} does not exist (paths in a build: spec are relative to the current directory; in a matrix file, to its directory)",
                p.display()
            );
        }
    }
    let mut all_kconfigs = crate::kbuild::default_kconfigs();
    all_kconfigs.extend(kconfigs);
    Ok(crate::kbuild::BuildRequest {
        src: crate::kbuild::SourceSpec::parse(src)?,
        patches,
        kconfigs: all_kconfigs,
        jobs: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
    })
}

fn from_dir(dir: &Path, label: &str) -> Result<Kernel> {
    let found = layout::find(dir)?;
    let image = found.image;
    let release = read_release(&image)?;
    // The header is the truth (uname -r); the path's name is the fallback for lookups.
    let lookup = |f: &dyn Fn(&str) -> Option<PathBuf>| f(&release).or_else(|| f(&found.release));
    let config = lookup(&|r| layout::config(dir, r));
    let modules = lookup(&|r| layout::modules(dir, r));
    let looked_in = layout::module_dirs(dir, &release);
    let dm_cache = dm_cache_support(config.as_deref(), modules.as_deref(), &image, &looked_in)?;
    Ok(Kernel {
        spec: label.into(),
        image,
        release: Some(release),
        config,
        modules,
        dm_cache,
    })
}

fn from_image(image: &Path, modules: Option<&Path>, label: &str) -> Result<Kernel> {
    if !image.is_file() {
        bail!("kernel {} does not exist", image.display());
    }
    let release = read_release(image)?;
    if let Some(m) = modules {
        // Lay out DIR/boot/vmlinuz-REL + DIR/lib/modules/REL so vng finds the modules.
        let moddir = if let Some(d) = layout::modules(m, &release) {
            d
        } else if layout::is_modules_dir(m) {
            m.to_path_buf()
        } else {
            bail!(
                "{} holds no modules for release {release} (expected [usr/]lib/modules/{release} or a modules dir)",
                m.display()
            );
        };
        let layout = crate::cache::dir("layouts").join(&release);
        std::fs::create_dir_all(layout.join("boot"))?;
        std::fs::create_dir_all(layout.join("lib/modules"))?;
        let img_link = layout.join("boot").join(format!("vmlinuz-{release}"));
        let mod_link = layout.join("lib/modules").join(&release);
        for (link, target) in [
            (&img_link, image.canonicalize()?),
            (&mod_link, moddir.canonicalize()?),
        ] {
            let _ = std::fs::remove_file(link);
            std::os::unix::fs::symlink(&target, link)
                .with_context(|| format!("cannot link {}", link.display()))?;
        }
        return from_dir(&layout, label);
    }
    // A bzImage in a kernel tree: its .config sits at the top of the tree.
    let tree_config = image
        .ancestors()
        .nth(4)
        .map(|t| t.join(".config"))
        .filter(|c| c.exists() && image.ends_with("arch/x86/boot/bzImage"));
    let side_config = image
        .with_file_name("config")
        .exists()
        .then(|| image.with_file_name("config"));
    let config = side_config.or(tree_config);
    let dm_cache = dm_cache_support(config.as_deref(), None, image, &[])?;
    if config
        .as_deref()
        .is_some_and(|c| std::fs::read_to_string(c).is_ok_and(|t| config_dm_cache(&t) == Some('m')))
    {
        bail!(
            "{} has dm-cache as a module: add `,modules=DIR`",
            image.display()
        );
    }
    Ok(Kernel {
        spec: label.into(),
        image: image.to_path_buf(),
        release: Some(release),
        config,
        modules: None,
        dm_cache,
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_spec_renders_back_and_anchors_its_paths() {
        for spec in [
            "debian:6.12.117+deb12",
            "build:debian:6.12=6.12.117-1~deb12u1,patches/a.patch,kconfigs/kasan.config",
        ] {
            assert_eq!(KernelSpec::parse(spec).unwrap().render(), spec);
        }
        let d = Path::new("/repo");
        let k = KernelSpec::parse("build:debian:6.12,patches/a.patch,/abs.patch").unwrap();
        assert_eq!(
            k.anchored(d).render(),
            "build:debian:6.12,/repo/patches/a.patch,/abs.patch"
        );
        let k = KernelSpec::parse("build:src,x.config").unwrap();
        assert_eq!(k.anchored(d).render(), "build:/repo/src,/repo/x.config");
        let k = KernelSpec::parse("debian:6.1.0-56").unwrap();
        assert_eq!(k.clone().anchored(d), k);
    }
    use super::*;

    #[test]
    fn parse_specs() {
        assert_eq!(
            KernelSpec::parse("debian:6.12.117+deb12").unwrap(),
            KernelSpec::Debian("6.12.117+deb12".into())
        );
        assert_eq!(
            KernelSpec::parse("build:debian:6.12,a.patch,b.patch").unwrap(),
            KernelSpec::Build {
                src: "debian:6.12".into(),
                patches: vec!["a.patch".into(), "b.patch".into()]
            }
        );
        assert!(KernelSpec::parse("debian:").is_err());
        assert!(KernelSpec::parse("build:").is_err());
        let e = KernelSpec::parse("/nonexistent/bzImage")
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        assert!(matches!(
            KernelSpec::parse("/tmp").unwrap(),
            KernelSpec::Dir(_)
        ));
    }

    /// A file with a bzImage header naming `release`.
    fn fake_bzimage(release: &str) -> Vec<u8> {
        let mut img = vec![0u8; 0x400];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        img[0x300..0x300 + release.len()].copy_from_slice(release.as_bytes());
        img[0x300 + release.len()] = b' ';
        img
    }

    fn put(root: &Path, rel: &str, data: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    /// An unpacked kernel in one of the three forms, dm-cache as a module.
    fn unpacked(form: layout::Layout, release: &str, with_modules: bool) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let (img, cfg, moddir) = match form {
            layout::Layout::Boot => (
                format!("boot/vmlinuz-{release}"),
                format!("boot/config-{release}"),
                format!("lib/modules/{release}"),
            ),
            layout::Layout::MergedUsr => (
                format!("boot/vmlinuz-{release}"),
                format!("boot/config-{release}"),
                format!("usr/lib/modules/{release}"),
            ),
            layout::Layout::Split => (
                format!("usr/lib/modules/{release}/vmlinuz"),
                format!("usr/lib/modules/{release}/config"),
                format!("usr/lib/modules/{release}"),
            ),
        };
        put(d.path(), &img, &fake_bzimage(release));
        put(d.path(), &cfg, b"CONFIG_DM_CACHE=m\n");
        if with_modules {
            put(
                d.path(),
                &format!("{moddir}/kernel/drivers/md/dm-cache.ko.xz"),
                b"",
            );
        }
        d
    }

    #[test]
    fn dirs_in_every_packaging_form() {
        for (form, rel) in [
            (layout::Layout::Boot, "6.1.0-56-amd64"),
            (layout::Layout::MergedUsr, "6.18.15+deb13-amd64"),
            (layout::Layout::Split, "7.3.4+deb13-amd64"),
        ] {
            let d = unpacked(form, rel, true);
            let k = from_dir(d.path(), "x").unwrap_or_else(|e| panic!("{form:?}: {e:#}"));
            assert_eq!(k.release.as_deref(), Some(rel));
            assert_eq!(k.dm_cache, DmCache::Module, "{form:?}");
            assert!(k.modules.unwrap().ends_with(rel));
            assert!(k.config.is_some());
            // Without the modules: a one-line error naming where it looked.
            let d = unpacked(form, rel, false);
            let e = from_dir(d.path(), "x").unwrap_err().to_string();
            assert!(
                e.contains("has dm-cache as a module") && e.contains("usr/lib/modules/"),
                "{form:?}: {e}"
            );
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn bzimage_header() {
        let img = fake_bzimage("6.12.117+deb12-amd64");
        assert_eq!(
            bzimage_release(&img).as_deref(),
            Some("6.12.117+deb12-amd64")
        );
        assert_eq!(bzimage_release(b"not a kernel"), None);
    }

    #[test]
    fn text_file_is_not_a_kernel() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "hello").unwrap();
        let e = from_image(f.path(), None, "x").unwrap_err().to_string();
        assert!(e.contains("is not a Linux kernel image"), "{e}");
    }

    #[test]
    fn the_hint_names_the_fragment_that_sets_what_is_missing() {
        let frags = vec![
            (
                "kconfigs/dm-delay.config".to_string(),
                "# x\nCONFIG_DM_DELAY=y\n".to_string(),
            ),
            (
                "kconfigs/kasan.config".to_string(),
                "CONFIG_KASAN=y\nCONFIG_KASAN_VMALLOC=y\n".to_string(),
            ),
        ];
        assert_eq!(
            fragment_hint(&["CONFIG_DM_DELAY"], &frags),
            "add kconfigs/dm-delay.config to the build: spec (e.g. build:debian:6.12,kconfigs/dm-delay.config)"
        );
        assert!(fragment_hint(&["CONFIG_KASAN_VMALLOC"], &frags).contains("kconfigs/kasan.config"));
        assert_eq!(
            fragment_hint(&["CONFIG_DM_DELAY", "CONFIG_KASAN"], &frags),
            "add a kconfig fragment with CONFIG_DM_DELAY=y, CONFIG_KASAN=y to the build: spec"
        );
        // the repository's own fragments are found
        assert!(repo_fragments()
            .iter()
            .any(|(n, _)| n == "kconfigs/dm-delay.config"));
    }

    #[test]
    fn missing_options_of_a_config() {
        let req = vec![
            "CONFIG_KASAN".to_string(),
            "CONFIG_KASAN_VMALLOC".to_string(),
        ];
        let cfg = "CONFIG_KASAN=y\n# CONFIG_KASAN_VMALLOC is not set\nCONFIG_KASAN_VMALLOC_X=y\n";
        assert_eq!(missing_options(cfg, &req), vec!["CONFIG_KASAN_VMALLOC"]);
        assert!(missing_options("CONFIG_KASAN=y\nCONFIG_KASAN_VMALLOC=y\n", &req).is_empty());
        assert_eq!(missing_options("", &req).len(), 2);
    }

    #[test]
    fn dm_cache_config() {
        assert_eq!(
            config_dm_cache("CONFIG_X=y\nCONFIG_DM_CACHE=m\n"),
            Some('m')
        );
        assert_eq!(config_dm_cache("# CONFIG_DM_CACHE is not set\n"), None);
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(&cfg, "# CONFIG_DM_CACHE is not set\n").unwrap();
        let e = dm_cache_support(Some(&cfg), None, Path::new("k"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no dm-cache"), "{e}");
    }
}
