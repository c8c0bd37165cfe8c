//! Where a kernel source comes from: `debian:SERIES` (Debian's linux-source package from
//! any of the runner's suites, see [`crate::debian`], fetched and unpacked once into the
//! cache) or a directory; and its identity.

use super::short_hash;
use crate::debian::SourceTree;
use crate::event::Event;
use anyhow::{anyhow, bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// A kernel source directory (never modified; copied into the cache).
    Dir(PathBuf),
    /// A Debian source package: `"6.12"` means the newest `linux-source-6.12`, `"6.12.117"`
    /// its newest package of upstream 6.12.117, `"6.12=6.12.117-1~deb12u1"` that package.
    Debian(String),
}

impl SourceSpec {
    /// `debian:6.12` (or `debian:linux-source-6.12`), `debian:6.12.117`,
    /// `debian:6.12=6.12.117-1~deb12u1`, or a kernel source directory.
    pub fn parse(s: &str) -> Result<SourceSpec> {
        let s = s.trim();
        if s.is_empty() {
            bail!("empty kernel source (write debian:6.12 or a kernel source directory)");
        }
        if let Some(v) = s.strip_prefix("debian:") {
            let v = v.strip_prefix("linux-source-").unwrap_or(v);
            let ok = !v.is_empty()
                && v.chars().next().is_some_and(|c| c.is_ascii_digit())
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".+-~=".contains(c))
                && crate::debian::parse_source_spec(v).is_ok();
            if !ok {
                bail!(
                    "`{s}`: write debian:SERIES, e.g. debian:6.12 (the package linux-source-6.12), debian:6.12.117 or debian:6.12=6.12.117-1~deb12u1"
                );
            }
            return Ok(SourceSpec::Debian(v.to_string()));
        }
        let p = PathBuf::from(s);
        if !p.is_dir() {
            bail!("kernel source `{s}` is not a directory (write debian:6.12 or a kernel source directory)");
        }
        if !p.join("Makefile").is_file() || !p.join("Kconfig").is_file() {
            bail!("`{s}` does not look like a Linux source tree (no Makefile/Kconfig at its top)");
        }
        Ok(SourceSpec::Dir(p))
    }
}

impl std::fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceSpec::Dir(p) => write!(f, "{}", p.display()),
            SourceSpec::Debian(v) => write!(f, "debian:{v}"),
        }
    }
}

pub(super) struct Identity {
    /// Human-readable and stable: `debian:linux-source-6.12=6.12.117-1~deb12u1`,
    /// `debian:linux_6.18.15.orig.tar.xz@sha256:<hex>`, `dir:/abs/path@git:<HEAD>+<diff
    /// hash>` or `dir:/abs/path@tree:<hash>`.
    pub(super) identity: String,
    /// Debian: where the tree comes from (`None` offline: then `cached` names it).
    pub(super) tree: Option<SourceTree>,
    /// Offline: the complete cached tree the identity was read from.
    pub(super) cached: Option<PathBuf>,
}

/// The identity of a source, without fetching it.
///
/// * `Debian(spec)`: the `linux-source-<series>` version or the orig tarball the runner's
///   Debian index resolves the spec to (offline: the newest tree of it already unpacked in
///   the cache).
/// * `Dir(path)`: the canonical path plus, for a git work tree, `HEAD` and a hash of
///   `git diff HEAD` (uncommitted changes to tracked files; untracked files are ignored);
///   otherwise a hash of the top `Makefile` and the newest mtime of any file in the tree
///   (`.git` excluded).  Touching any file therefore makes a new build tree.
pub(super) fn source_identity(spec: &SourceSpec) -> Result<Identity> {
    match spec {
        SourceSpec::Debian(spec) => match crate::debian::source_tree(spec, &mut |_| {})? {
            Some(tree) => Ok(Identity {
                identity: tree_identity(&tree),
                tree: Some(tree),
                cached: None,
            }),
            None => {
                let (series, pin) = crate::debian::parse_source_spec(spec)?;
                let dir = newest_cached(&series, &pin).ok_or_else(|| {
                    anyhow!("no Debian index to find debian:{spec} in, and no such tree unpacked in the cache (`dmcache-vmtest kernel list --refresh` says why)")
                })?;
                let written = fs::read_to_string(dir.join("complete"))?;
                // Trees unpacked before orig tarballs wrote `PKG=VERSION` only.
                let identity = match written.trim() {
                    w if w.starts_with("debian:") => w.to_string(),
                    w => format!("debian:{w}"),
                };
                Ok(Identity {
                    identity,
                    tree: None,
                    cached: Some(dir.join("tree")),
                })
            }
        },
        SourceSpec::Dir(p) => {
            let canon = p
                .canonicalize()
                .with_context(|| format!("kernel source {}", p.display()))?;
            let git = |args: &[&str]| -> Option<Vec<u8>> {
                let o = Command::new("git")
                    .arg("-C")
                    .arg(&canon)
                    .args(args)
                    .stdin(Stdio::null())
                    .output()
                    .ok()?;
                o.status.success().then_some(o.stdout)
            };
            let is_toplevel = git(&["rev-parse", "--show-toplevel"])
                .map(|o| Path::new(String::from_utf8_lossy(&o).trim()) == canon)
                .unwrap_or(false);
            if is_toplevel {
                if let Some(head) = git(&["rev-parse", "HEAD"]) {
                    let diff = git(&["diff", "HEAD"]).unwrap_or_default();
                    return Ok(Identity {
                        identity: format!(
                            "dir:{}@git:{}+{}",
                            canon.display(),
                            String::from_utf8_lossy(&head).trim(),
                            short_hash(&diff)
                        ),
                        tree: None,
                        cached: None,
                    });
                }
            }
            let makefile = fs::read(canon.join("Makefile")).context("reading Makefile")?;
            let newest = newest_mtime(&canon);
            Ok(Identity {
                identity: format!(
                    "dir:{}@tree:{}",
                    canon.display(),
                    short_hash(&[makefile.as_slice(), &newest.to_le_bytes()].concat())
                ),
                tree: None,
                cached: None,
            })
        }
    }
}

fn tree_identity(tree: &SourceTree) -> String {
    match tree {
        SourceTree::Package { pkg, version } => format!("debian:{pkg}={version}"),
        SourceTree::Orig { tree, .. } => tree.identity(),
    }
}

/// `src/linux-source-6.12_<version>` or `src/linux_<upstream>.orig`: `tree/` holds the
/// source, `complete` (written last) its identity.
fn debian_src_dir(tree: &SourceTree) -> PathBuf {
    let name = match tree {
        SourceTree::Package { pkg, version } => format!("{pkg}_{version}"),
        SourceTree::Orig { tree, .. } => format!("linux_{}.orig", tree.upstream),
    };
    crate::cache::dir("src").join(name)
}

/// Offline: the newest complete tree in the cache of `series` that fits the pin
/// (`linux-source-SERIES_<version>` or `linux_<upstream>.orig`).
fn newest_cached(series: &str, pin: &crate::debian::SourcePin) -> Option<PathBuf> {
    use crate::debian::{version, SourcePin};
    let pkg_prefix = format!("linux-source-{series}_");
    let mut found: Vec<(String, PathBuf)> = fs::read_dir(crate::cache::dir("src"))
        .ok()?
        .flatten()
        .filter(|e| e.path().join("complete").exists())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let v = match name.strip_prefix(&pkg_prefix) {
                Some(v) => v.to_string(),
                None => {
                    let up = name.strip_prefix("linux_")?.strip_suffix(".orig")?;
                    (version::series(up).as_deref() == Some(series)).then(|| up.to_string())?
                }
            };
            Some((v, e.path()))
        })
        .filter(|(v, _)| match pin {
            SourcePin::Newest => true,
            SourcePin::Upstream(u) => version::upstream(v) == *u,
            SourcePin::Exact(x) => v == x,
        })
        .collect();
    found.sort_by(|a, b| version::cmp(&a.0, &b.0));
    found.pop().map(|(_, p)| p)
}

pub(super) fn newest_mtime(root: &Path) -> u64 {
    let mut newest = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if e.file_name() == ".git" {
                continue;
            }
            let Ok(md) = e.metadata() else { continue };
            if let Ok(t) = md.modified() {
                let ns = t
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                newest = newest.max(ns);
            }
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    newest
}

/// The directory holding the source (Debian: fetched and unpacked once into the cache).
pub(super) fn ensure_source(
    spec: &SourceSpec,
    ident: &Identity,
    progress: &mut dyn FnMut(Event),
) -> Result<PathBuf> {
    match spec {
        SourceSpec::Dir(p) => Ok(p.canonicalize()?),
        SourceSpec::Debian(_) => {
            if let Some(tree) = &ident.cached {
                return Ok(tree.clone());
            }
            let t = ident.tree.as_ref().expect("debian identity has a tree");
            let dir = debian_src_dir(t);
            let tree = dir.join("tree");
            let complete = || dir.join("complete").exists() && tree.join("Makefile").exists();
            if complete() {
                return Ok(tree);
            }
            // One fetch per tree at a time, across processes (two reviews of one tree once
            // unpacked into the same directory, each removing the other's partial copy).
            let parent = dir.parent().context("source dir has a parent")?;
            fs::create_dir_all(parent)?;
            let mut lock_name = dir.file_name().context("source dir has a name")?.to_owned();
            lock_name.push(".lock");
            let _lock = crate::cache::lock_exclusive(
                &parent.join(lock_name),
                "waiting for another run fetching the same source",
                progress,
            )?;
            if complete() {
                return Ok(tree);
            }
            let _ = fs::remove_dir_all(&dir);
            let got = match t {
                SourceTree::Package { pkg, version } => {
                    crate::debian::unpack_source(pkg, version, &tree, progress)
                }
                SourceTree::Orig { tree: o, mirror } => {
                    crate::debian::orig::fetch(o, mirror, &tree, progress)
                }
            };
            if let Err(e) = got {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
            fs::write(dir.join("complete"), format!("{}\n", ident.identity))?;
            Ok(tree)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_debian_specs() {
        assert_eq!(
            SourceSpec::parse("debian:6.12").unwrap(),
            SourceSpec::Debian("6.12".into())
        );
        assert_eq!(
            SourceSpec::parse(" debian:linux-source-6.1 ").unwrap(),
            SourceSpec::Debian("6.1".into())
        );
        assert_eq!(
            SourceSpec::parse("debian:6.12.117").unwrap(),
            SourceSpec::Debian("6.12.117".into())
        );
        assert_eq!(
            SourceSpec::parse("debian:6.12=6.12.117-1~deb12u1").unwrap(),
            SourceSpec::Debian("6.12=6.12.117-1~deb12u1".into())
        );
        for bad in [
            "",
            "debian:",
            "debian:6.12;rm",
            "debian:foo",
            "debian:6.12.1=x",
            "/nonexistent/dir/xyz",
        ] {
            assert!(SourceSpec::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn parse_dir_spec() {
        let d = tempfile::tempdir().unwrap();
        // Not a kernel tree yet.
        assert!(SourceSpec::parse(d.path().to_str().unwrap()).is_err());
        fs::write(d.path().join("Makefile"), "VERSION = 6\n").unwrap();
        fs::write(d.path().join("Kconfig"), "").unwrap();
        assert_eq!(
            SourceSpec::parse(d.path().to_str().unwrap()).unwrap(),
            SourceSpec::Dir(d.path().to_path_buf())
        );
    }
}
