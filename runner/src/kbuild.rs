//! Building a small x86_64 bzImage (dm-cache built in) from a Linux source tree plus
//! patches, for booting with virtme-ng.
//!
//! Layout under the cache root (see [`crate::cache`]):
//!
//! ```text
//! src/linux-source-6.12_<version>/tree    unpacked Debian source (read-only for us)
//! builds/<srckey>-<cfgkey>/tree           ONE configured build tree per source + fragments
//! builds/<srckey>-<cfgkey>/config.base    the merged, verified .config of that tree
//! builds/<srckey>-<cfgkey>/pristine/…     pristine copies of the files patches touch
//! builds/<srckey>-<cfgkey>/state.json     which patch set is applied, which files it touched
//! builds/<srckey>-<cfgkey>/build.log      log of the latest `make` (also copied to out/)
//! builds/out/<variantkey>/                bzImage, config, release, build.log, info.json
//! ccache/                                 CCACHE_DIR
//! ```
//!
//! A variant is "source identity + patch contents (in order) + merged config";
//! `variantkey = sha256` of those.  If `builds/out/<variantkey>` exists the build is a
//! cache hit and `make` is not run at all.  Otherwise the build tree is reset to pristine
//! (every file the previously applied patches touched is copied back from `pristine/`,
//! with a new mtime so make rebuilds exactly those objects), the requested patches are
//! applied with `patch -p1 --forward --batch`, and `make -jN bzImage` runs
//! incrementally.  The user's tree is never modified.
//!
//! Config: `vng --kconfig` (virtme-ng's minimal config; fallback `make defconfig`), then
//! the fragments are merged again with `scripts/kconfig/merge_config.sh -m` (vng appends
//! its own defaults after user fragments) and `make olddefconfig`; finally every option
//! the fragments set is checked in `.config` — a dropped option is an error naming the
//! fragment file and line.  The release string carries a per-variant tag
//! (`LOCALVERSION=-dmt<8 hex of variantkey>`, `LOCALVERSION_AUTO=n`), so `uname -r`
//! tells variants apart.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// Where the source comes from.
    pub src: SourceSpec,
    /// Patches applied in order with `patch -p1`.
    pub patches: Vec<PathBuf>,
    /// Kconfig fragments, merged in order; empty means [`default_kconfigs`].
    pub kconfigs: Vec<PathBuf>,
    /// `make -jN`.
    pub jobs: usize,
}

/// Where the kernel source comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// A kernel source directory (never modified; copied into the cache).
    Dir(PathBuf),
    /// A Debian source package series: `"6.12"` means `linux-source-6.12`.
    Debian(String),
}

impl SourceSpec {
    /// `debian:6.12` (or `debian:linux-source-6.12`), or a kernel source directory.
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
                    .all(|c| c.is_ascii_alphanumeric() || ".+-~".contains(c));
            if !ok {
                bail!(
                    "`{s}`: write debian:SERIES, e.g. debian:6.12 (the package linux-source-6.12)"
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

/// A built (or cached) kernel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuiltKernel {
    /// `builds/out/<key>/bzImage`.
    pub bzimage: PathBuf,
    /// `builds/out/<key>/config` (the kernel's .config).
    pub config: PathBuf,
    /// `make -s kernelrelease`, e.g. `6.12.117-dmt1a2b3c4d`.
    pub release: String,
    /// The output already existed; `make` was not run.
    pub cache_hit: bool,
    /// Wall-clock seconds spent in [`build`] (everything: fetch, configure, patch, make).
    pub build_secs: f64,
    /// The variant key (sha256 hex of source identity + patch contents + merged config).
    pub key: String,
}

/// `kconfigs/dm-cache.config` of this repository.
pub fn default_kconfigs() -> Vec<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kconfigs/dm-cache.config");
    vec![p.canonicalize().unwrap_or(p)]
}

/// Options forced for every build, merged before the user's fragments.
const INTERNAL_FRAGMENT: &str = "\
# dmcache-vmtest: the release tag comes from LOCALVERSION=-dmt<variant> on the make command line
CONFIG_LOCALVERSION=\"\"
# CONFIG_LOCALVERSION_AUTO is not set
";

/// Build (or find in the cache) the kernel `req` describes.
pub fn build(req: &BuildRequest, progress: &mut dyn FnMut(&str)) -> Result<BuiltKernel> {
    let t0 = Instant::now();
    let jobs = req.jobs.max(1);

    // Inputs: fragments and patches, read once (their contents are what the keys hash).
    let kconfigs = if req.kconfigs.is_empty() {
        default_kconfigs()
    } else {
        req.kconfigs.clone()
    };
    let mut frags = vec![Fragment::parse(
        "<dmcache-vmtest internal>",
        INTERNAL_FRAGMENT,
    )?];
    for k in &kconfigs {
        let text = fs::read_to_string(k)
            .with_context(|| format!("reading kconfig fragment {}", k.display()))?;
        frags.push(Fragment::parse(&k.display().to_string(), &text)?);
    }
    let mut patches = Vec::new();
    for p in &req.patches {
        let bytes = fs::read(p).with_context(|| format!("reading patch {}", p.display()))?;
        let text = String::from_utf8_lossy(&bytes);
        let files = patch_paths(&text).with_context(|| format!("patch {}", p.display()))?;
        if files.is_empty() {
            bail!(
                "patch {} touches no files (no `--- a/…`/`+++ b/…` headers)",
                p.display()
            );
        }
        patches.push(PatchInput {
            path: p.clone(),
            bytes,
            files,
        });
    }

    // Identity and keys.
    progress(&format!("resolving source {}", req.src));
    let ident = source_identity(&req.src)?;
    let srckey = short_hash(ident.identity.as_bytes());
    let cfgkey = config_key(&frags);
    let bdir = crate::cache::dir("builds").join(format!("{srckey}-{cfgkey}"));
    let outroot = crate::cache::dir("builds").join("out");

    // Fast path: a configured tree records its merged config; with it we know the key.
    if let Ok(base) = fs::read_to_string(bdir.join("config.base")) {
        let key = variant_key(&ident.identity, &patch_bytes(&patches), &base);
        if let Some(k) = load_output(&outroot.join(&key), &key, t0)? {
            progress(&format!(
                "cache hit: {} ({})",
                k.release,
                k.bzimage.display()
            ));
            return Ok(k);
        }
    }

    fs::create_dir_all(&bdir).with_context(|| format!("creating {}", bdir.display()))?;
    let lock = fs::File::create(bdir.join("lock")).context("creating build lock")?;
    if lock.try_lock().is_err() {
        progress("waiting for another build in the same tree");
        lock.lock().context("locking build tree")?;
    }
    fs::write(bdir.join("source.txt"), format!("{}\n", ident.identity))?;

    let tree = bdir.join("tree");
    if !bdir.join("configured").exists() {
        let src = ensure_source(&req.src, &ident, progress)?;
        prepare_tree(&src, &bdir, &tree, &frags, progress)?;
    }
    let base = fs::read_to_string(bdir.join("config.base")).context("reading config.base")?;
    let key = variant_key(&ident.identity, &patch_bytes(&patches), &base);
    let outdir = outroot.join(&key);
    if let Some(k) = load_output(&outdir, &key, t0)? {
        progress(&format!(
            "cache hit: {} ({})",
            k.release,
            k.bzimage.display()
        ));
        return Ok(k);
    }
    let tag = format!("-dmt{}", &key[..8]);

    // Patches.
    apply_patch_set(&bdir, &tree, &patches, progress)?;

    // Config: back to the base config (a patch that touched Kconfig may have changed it).
    let cur = fs::read_to_string(tree.join(".config")).unwrap_or_default();
    if cur != base {
        fs::write(tree.join(".config"), &base)?;
    }
    let log = bdir.join("build.log");
    if patches
        .iter()
        .any(|p| p.files.iter().any(|f| file_name_starts(f, "Kconfig")))
    {
        progress("a patch touches Kconfig: make olddefconfig");
        run_logged(&tree, &["make", "olddefconfig"], &log, false, progress)?;
        let now = fs::read_to_string(tree.join(".config"))?;
        check_fragments(&frags, &now)?;
    }

    // make.
    progress(&format!("make -j{jobs} bzImage (LOCALVERSION={tag})"));
    let tm = Instant::now();
    let j = format!("-j{jobs}");
    let lv = format!("LOCALVERSION={tag}");
    run_logged(&tree, &["make", &j, &lv, "bzImage"], &log, true, progress)?;
    let make_secs = tm.elapsed().as_secs_f64();
    let release = command_stdout(&tree, &["make", "-s", &lv, "kernelrelease"])?;
    if !release.ends_with(&tag) {
        bail!("kernel release `{release}` does not end with the variant tag `{tag}`");
    }
    progress(&format!("built {release} in {make_secs:.0} s"));

    // Output, atomically.
    fs::create_dir_all(&outroot)?;
    let tmp = outroot.join(format!("{key}.tmp{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    fs::copy(tree.join("arch/x86/boot/bzImage"), tmp.join("bzImage")).context("copying bzImage")?;
    fs::copy(tree.join(".config"), tmp.join("config")).context("copying .config")?;
    let _ = fs::copy(&log, tmp.join("build.log"));
    fs::write(tmp.join("release"), format!("{release}\n"))?;
    let info = serde_json::json!({
        "source": ident.identity,
        "patches": patches.iter().map(|p| p.path.display().to_string()).collect::<Vec<_>>(),
        "kconfigs": kconfigs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "release": release,
        "make_secs": make_secs,
        "build_tree": tree.display().to_string(),
    });
    fs::write(
        tmp.join("info.json"),
        serde_json::to_string_pretty(&info)? + "\n",
    )?;
    if fs::rename(&tmp, &outdir).is_err() {
        // Someone else finished the same variant first; theirs is as good as ours.
        let _ = fs::remove_dir_all(&tmp);
    }
    Ok(BuiltKernel {
        bzimage: outdir.join("bzImage"),
        config: outdir.join("config"),
        release,
        cache_hit: false,
        build_secs: t0.elapsed().as_secs_f64(),
        key,
    })
}

// ---------------------------------------------------------------------------------------
// Keys

fn sha_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        // Length-prefixed, so ("ab","c") and ("a","bc") differ.
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn short_hash(b: &[u8]) -> String {
    sha_hex(&[b])[..12].to_string()
}

/// sha256 over the source identity, each patch's contents in order, and the merged config.
pub(crate) fn variant_key(identity: &str, patches: &[&[u8]], merged_config: &str) -> String {
    let mut parts: Vec<&[u8]> = vec![b"dmcache-vmtest variant v1", identity.as_bytes()];
    let n = patches.len().to_string();
    parts.push(n.as_bytes());
    parts.extend_from_slice(patches);
    parts.push(merged_config.as_bytes());
    sha_hex(&parts)
}

/// Which configured tree: the virtme-ng version (its `--kconfig` output) and the
/// fragments' contents in order (not their paths).
fn config_key(frags: &[Fragment]) -> String {
    let vng = Command::new("vng")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "no-vng".into());
    let mut parts: Vec<&[u8]> = vec![b"dmcache-vmtest config v1", vng.as_bytes()];
    for f in frags {
        parts.push(f.text.as_bytes());
    }
    sha_hex(&parts)[..12].to_string()
}

struct PatchInput {
    path: PathBuf,
    bytes: Vec<u8>,
    files: Vec<String>,
}

fn patch_bytes(p: &[PatchInput]) -> Vec<&[u8]> {
    p.iter().map(|p| p.bytes.as_slice()).collect()
}

fn load_output(outdir: &Path, key: &str, t0: Instant) -> Result<Option<BuiltKernel>> {
    let (bz, cfg, rel) = (
        outdir.join("bzImage"),
        outdir.join("config"),
        outdir.join("release"),
    );
    if !(bz.is_file() && cfg.is_file() && rel.is_file()) {
        return Ok(None);
    }
    let release = fs::read_to_string(&rel)?.trim().to_string();
    Ok(Some(BuiltKernel {
        bzimage: bz,
        config: cfg,
        release,
        cache_hit: true,
        build_secs: t0.elapsed().as_secs_f64(),
        key: key.to_string(),
    }))
}

// ---------------------------------------------------------------------------------------
// Source

struct Identity {
    /// Human-readable and stable: `debian:linux-source-6.12=6.12.117-1~deb12u1`,
    /// `dir:/abs/path@git:<HEAD>+<diff hash>` or `dir:/abs/path@tree:<hash>`.
    identity: String,
    /// Debian: the exact package version.
    version: Option<String>,
}

/// The identity of a source, without fetching it.
///
/// * `Debian(series)`: the candidate version of `linux-source-<series>` from `apt-cache
///   policy` (offline: the newest version already unpacked in the cache).
/// * `Dir(path)`: the canonical path plus, for a git work tree, `HEAD` and a hash of
///   `git diff HEAD` (uncommitted changes to tracked files; untracked files are ignored);
///   otherwise a hash of the top `Makefile` and the newest mtime of any file in the tree
///   (`.git` excluded).  Touching any file therefore makes a new build tree.
fn source_identity(spec: &SourceSpec) -> Result<Identity> {
    match spec {
        SourceSpec::Debian(series) => {
            let pkg = format!("linux-source-{series}");
            let version = match apt_candidate(&pkg) {
                Some(v) => v,
                None => newest_cached(&pkg).ok_or_else(|| {
                    anyhow!("no Debian package {pkg} (apt-cache policy has no candidate; try `apt-cache search linux-source`)")
                })?,
            };
            Ok(Identity {
                identity: format!("debian:{pkg}={version}"),
                version: Some(version),
            })
        }
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
                        version: None,
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
                version: None,
            })
        }
    }
}

fn apt_candidate(pkg: &str) -> Option<String> {
    let (mut apt, _) = crate::image::apt_command("apt-cache", &std::env::temp_dir()).ok()?;
    let o = apt
        .args(["policy", pkg])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&o.stdout);
    let v = s
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))?
        .trim()
        .to_string();
    (!v.is_empty() && v != "(none)").then_some(v)
}

fn debian_src_dir(pkg: &str, version: &str) -> PathBuf {
    crate::cache::dir("src").join(format!("{pkg}_{version}"))
}

fn newest_cached(pkg: &str) -> Option<String> {
    let prefix = format!("{pkg}_");
    let mut vs: Vec<String> = fs::read_dir(crate::cache::dir("src"))
        .ok()?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix(&prefix)
                .map(String::from)
        })
        .filter(|v| debian_src_dir(pkg, v).join("complete").exists())
        .collect();
    vs.sort_by(|a, b| version_cmp(a, b));
    vs.pop()
}

/// Rough version ordering (numeric runs compared as numbers); enough to pick the newest.
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> Vec<Result<u64, String>> {
        let mut out = Vec::new();
        let mut cur = String::new();
        for c in s.chars() {
            if !cur.is_empty() && cur.chars().next().unwrap().is_ascii_digit() != c.is_ascii_digit()
            {
                out.push(cur.parse::<u64>().map_err(|_| cur.clone()));
                cur.clear();
            }
            cur.push(c);
        }
        if !cur.is_empty() {
            out.push(cur.parse::<u64>().map_err(|_| cur.clone()));
        }
        out
    }
    parts(a).cmp(&parts(b))
}

fn newest_mtime(root: &Path) -> u64 {
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
fn ensure_source(
    spec: &SourceSpec,
    ident: &Identity,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf> {
    match spec {
        SourceSpec::Dir(p) => Ok(p.canonicalize()?),
        SourceSpec::Debian(series) => {
            let pkg = format!("linux-source-{series}");
            let version = ident
                .version
                .as_deref()
                .expect("debian identity has a version");
            let dir = debian_src_dir(&pkg, version);
            let tree = dir.join("tree");
            if dir.join("complete").exists() && tree.join("Makefile").exists() {
                return Ok(tree);
            }
            let _ = fs::remove_dir_all(&dir);
            let work = dir.join("work");
            fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
            progress(&format!("apt-get download {pkg}={version}"));
            // Debian's apt: the host's, or a built image's on other distributions.
            let (mut apt, dl) = crate::image::apt_command("apt-get", &work)?;
            let out = apt
                .args(["download", &format!("{pkg}={version}")])
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("running apt-get download {pkg}={version}"))?;
            if !out.status.success() {
                bail!(
                    "apt-get download {pkg}={version} failed: {}",
                    tail(&String::from_utf8_lossy(&out.stderr), 10)
                );
            }
            if dl != work {
                for e in fs::read_dir(&dl)?.flatten() {
                    fs::rename(e.path(), work.join(e.file_name()))?;
                }
            }
            let deb = fs::read_dir(&work)?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|e| e == "deb"))
                .ok_or_else(|| {
                    anyhow!(
                        "apt-get download {pkg} produced no .deb in {}",
                        work.display()
                    )
                })?;
            progress(&format!(
                "dpkg-deb -x {}",
                deb.file_name().unwrap_or_default().to_string_lossy()
            ));
            run_checked(&work, &["dpkg-deb", "-x", &deb.to_string_lossy(), "x"])?;
            let tarball = work.join(format!("x/usr/src/{pkg}.tar.xz"));
            if !tarball.is_file() {
                bail!("{} has no usr/src/{pkg}.tar.xz", deb.display());
            }
            progress(&format!("unpacking {pkg}.tar.xz"));
            run_checked(&work, &["tar", "-xf", &tarball.to_string_lossy()])?;
            let top = work.join(&pkg);
            if !top.join("Makefile").is_file() {
                bail!("{pkg}.tar.xz did not unpack to {pkg}/ with a Makefile");
            }
            fs::rename(&top, &tree)?;
            fs::remove_dir_all(&work)?;
            fs::write(dir.join("complete"), format!("{pkg}={version}\n"))?;
            Ok(tree)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Build tree and config

fn prepare_tree(
    src: &Path,
    bdir: &Path,
    tree: &Path,
    frags: &[Fragment],
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    for stale in ["tree", "pristine", "state.json", "config.base"] {
        let p = bdir.join(stale);
        if p.is_dir() {
            fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        } else if p.exists() {
            fs::remove_file(&p)?;
        }
    }
    progress(&format!("copying source to {}", tree.display()));
    let from = format!("{}/", src.display());
    let to = format!("{}/", tree.display());
    run_checked(bdir, &["rsync", "-a", "--exclude=/.git", &from, &to])?;
    if tree.join(".config").exists() || tree.join("include/config").exists() {
        progress("source was built in-tree: make mrproper (in the copy)");
        run_checked(tree, &["make", "-s", "mrproper"])?;
    }

    // Fragments as files (the internal one lives only in memory).
    let fdir = bdir.join("fragments");
    let _ = fs::remove_dir_all(&fdir);
    fs::create_dir_all(&fdir)?;
    let mut frag_files = Vec::new();
    for (i, f) in frags.iter().enumerate() {
        let p = fdir.join(format!("{i:02}.config"));
        fs::write(&p, &f.text)?;
        frag_files.push(p.to_string_lossy().into_owned());
    }

    let log = bdir.join("config.log");
    let _ = fs::remove_file(&log);
    progress("configuring: vng --kconfig");
    if let Err(e) = run_logged(tree, &["vng", "--kconfig"], &log, false, progress) {
        progress(&format!(
            "vng --kconfig failed ({}); falling back to make defconfig",
            first_line(&e)
        ));
        run_logged(tree, &["make", "defconfig"], &log, false, progress)?;
    }
    progress("merging kconfig fragments");
    let mut merge = vec!["scripts/kconfig/merge_config.sh", "-m", ".config"];
    merge.extend(frag_files.iter().map(String::as_str));
    run_logged(tree, &merge, &log, false, progress)?;
    run_logged(tree, &["make", "olddefconfig"], &log, false, progress)?;
    let config = fs::read_to_string(tree.join(".config")).context("reading merged .config")?;
    check_fragments(frags, &config)?;
    fs::write(bdir.join("config.base"), &config)?;
    fs::write(
        bdir.join("state.json"),
        serde_json::to_string(&TreeState::default())?,
    )?;
    fs::write(bdir.join("configured"), "")?;
    progress("config ready");
    Ok(())
}

fn file_name_starts(path: &str, prefix: &str) -> bool {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(prefix))
}

// ---------------------------------------------------------------------------------------
// Fragments

/// One `CONFIG_X=…` / `# CONFIG_X is not set` line of a fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FragOpt {
    /// Without the `CONFIG_` prefix.
    pub name: String,
    /// `None` for "is not set" / `=n`.
    pub value: Option<String>,
    pub file: String,
    pub line: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct Fragment {
    pub text: String,
    pub opts: Vec<FragOpt>,
}

impl Fragment {
    /// Parse a fragment; anything that is not blank, a comment or an option is an error.
    pub(crate) fn parse(file: &str, text: &str) -> Result<Fragment> {
        let mut opts = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let at = || format!("{file}:{}", i + 1);
            if line.is_empty() {
                continue;
            }
            if let Some(c) = line.strip_prefix('#') {
                if let Some(name) = c
                    .trim()
                    .strip_prefix("CONFIG_")
                    .and_then(|r| r.strip_suffix(" is not set"))
                {
                    if !valid_symbol(name) {
                        bail!("{}: bad symbol in `{line}`", at());
                    }
                    opts.push(FragOpt {
                        name: name.into(),
                        value: None,
                        file: file.into(),
                        line: i + 1,
                    });
                }
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                bail!(
                    "{}: expected CONFIG_X=VALUE or `# CONFIG_X is not set`, got `{line}`",
                    at()
                );
            };
            let Some(name) = k.trim().strip_prefix("CONFIG_").filter(|n| valid_symbol(n)) else {
                bail!("{}: expected CONFIG_X=VALUE, got `{line}`", at());
            };
            let v = v.trim();
            if v.is_empty() {
                bail!("{}: empty value in `{line}`", at());
            }
            let value = if v == "n" { None } else { Some(v.to_string()) };
            opts.push(FragOpt {
                name: name.into(),
                value,
                file: file.into(),
                line: i + 1,
            });
        }
        Ok(Fragment {
            text: text.to_string(),
            opts,
        })
    }
}

fn valid_symbol(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `.config` → symbol (without `CONFIG_`) → value (`None` = "is not set").
pub(crate) fn parse_dotconfig(text: &str) -> HashMap<String, Option<String>> {
    let mut m = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line
            .strip_prefix("# CONFIG_")
            .and_then(|r| r.strip_suffix(" is not set"))
        {
            m.insert(name.to_string(), None);
        } else if let Some((k, v)) = line.strip_prefix("CONFIG_").and_then(|r| r.split_once('=')) {
            m.insert(k.to_string(), Some(v.to_string()));
        }
    }
    m
}

/// An option a fragment set that `.config` does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dropped {
    pub opt: FragOpt,
    /// What `.config` has: `Some(Some(v))` = `CONFIG_X=v`, `Some(None)` = not set, `None` = absent.
    pub actual: Option<Option<String>>,
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let want = match &self.opt.value {
            Some(v) => format!("CONFIG_{}={v}", self.opt.name),
            None => format!("CONFIG_{}=n", self.opt.name),
        };
        let got = match &self.actual {
            Some(Some(v)) => format!(".config has CONFIG_{}={v}", self.opt.name),
            Some(None) => format!(".config has `# CONFIG_{} is not set`", self.opt.name),
            None => "absent from .config (unknown symbol or unmet dependency)".to_string(),
        };
        write!(f, "{want} ({}:{}): {got}", self.opt.file, self.opt.line)
    }
}

/// The options (last setting wins across fragments, like merge_config.sh) that `.config`
/// lost.  `=n` is satisfied by "is not set" or absence.
pub(crate) fn verify_fragments(frags: &[Fragment], config: &str) -> Vec<Dropped> {
    let have = parse_dotconfig(config);
    let mut last: Vec<&FragOpt> = Vec::new();
    let mut idx: HashMap<&str, usize> = HashMap::new();
    for o in frags.iter().flat_map(|f| f.opts.iter()) {
        match idx.get(o.name.as_str()) {
            Some(&i) => last[i] = o,
            None => {
                idx.insert(&o.name, last.len());
                last.push(o);
            }
        }
    }
    let mut dropped = Vec::new();
    for o in last {
        let actual = have.get(&o.name).cloned();
        let ok = match (&o.value, &actual) {
            (None, None) | (None, Some(None)) => true,
            (None, Some(Some(v))) => v == "n",
            (Some(want), Some(Some(v))) => want == v,
            (Some(_), _) => false,
        };
        if !ok {
            dropped.push(Dropped {
                opt: o.clone(),
                actual,
            });
        }
    }
    dropped
}

fn check_fragments(frags: &[Fragment], config: &str) -> Result<()> {
    let dropped = verify_fragments(frags, config);
    if dropped.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = dropped.iter().map(|d| format!("  {d}")).collect();
    bail!(
        "kernel config: {} option(s) from the kconfig fragments did not survive `make olddefconfig`:\n{}",
        dropped.len(),
        list.join("\n")
    )
}

// ---------------------------------------------------------------------------------------
// Patches

/// The files a unified diff touches (`-p1`), in order, without duplicates.  Reads
/// `--- a/X` + `+++ b/Y` header pairs and git `rename/copy from/to` lines.
pub(crate) fn patch_paths(text: &str) -> Result<Vec<String>> {
    fn strip1(p: &str) -> Option<String> {
        let p = p.split('\t').next().unwrap_or(p).trim_end();
        let p = p.trim_matches('"');
        if p == "/dev/null" {
            return None;
        }
        Some(p.split_once('/').map(|x| x.1).unwrap_or(p).to_string())
    }
    let mut out: Vec<String> = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut push = |p: String| -> Result<()> {
        let path = Path::new(&p);
        if p.is_empty()
            || path.is_absolute()
            || path
                .components()
                .any(|c| !matches!(c, Component::Normal(_)))
        {
            bail!("refusing path `{p}` in patch (must be relative, without `..`)");
        }
        if !out.contains(&p) {
            out.push(p);
        }
        Ok(())
    };
    for (i, l) in lines.iter().enumerate() {
        if let (Some(a), Some(b)) = (
            l.strip_prefix("--- "),
            lines.get(i + 1).and_then(|n| n.strip_prefix("+++ ")),
        ) {
            for p in [a, b].into_iter().filter_map(strip1) {
                push(p)?;
            }
        } else if let Some(p) = ["rename from ", "rename to ", "copy from ", "copy to "]
            .iter()
            .find_map(|pre| l.strip_prefix(pre))
        {
            push(p.trim().to_string())?;
        }
    }
    Ok(out)
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TreeState {
    /// sha256 of the applied patch set; `None` = pristine (or unknown if `touched` is set).
    applied: Option<String>,
    /// Display names of the applied patches (for humans).
    patches: Vec<String>,
    /// Files (relative to the tree) that the applied/being-applied patches touch and
    /// whether each existed in the pristine tree (copy in `pristine/`).
    touched: Vec<(String, bool)>,
}

fn read_state(bdir: &Path) -> Result<TreeState> {
    match fs::read_to_string(bdir.join("state.json")) {
        Ok(s) => serde_json::from_str(&s).context("parsing state.json"),
        Err(_) => Ok(TreeState::default()),
    }
}

fn write_state(bdir: &Path, st: &TreeState) -> Result<()> {
    let tmp = bdir.join("state.json.tmp");
    fs::write(&tmp, serde_json::to_string_pretty(st)?)?;
    fs::rename(&tmp, bdir.join("state.json"))?;
    Ok(())
}

/// Put every file in `st.touched` back to pristine (new mtime → make rebuilds it).
fn reset_tree(bdir: &Path, tree: &Path, st: &mut TreeState) -> Result<()> {
    let pristine = bdir.join("pristine");
    for (f, existed) in &st.touched {
        let dst = tree.join(f);
        for junk in [".rej", ".orig"] {
            let _ = fs::remove_file(format!("{}{junk}", dst.display()));
        }
        if *existed {
            let src = pristine.join(f);
            // Remove first: fs::copy onto a hard link or read-only file would be wrong.
            let _ = fs::remove_file(&dst);
            if let Some(d) = dst.parent() {
                fs::create_dir_all(d)?;
            }
            fs::copy(&src, &dst).with_context(|| format!("restoring pristine {f}"))?;
        } else if dst.exists() {
            fs::remove_file(&dst).with_context(|| format!("removing patch-created {f}"))?;
        }
    }
    st.applied = None;
    st.patches.clear();
    st.touched.clear();
    write_state(bdir, st)
}

fn apply_patch_set(
    bdir: &Path,
    tree: &Path,
    patches: &[PatchInput],
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let want = sha_hex(&patch_bytes(patches));
    let mut st = read_state(bdir)?;
    if st.applied.as_deref() == Some(want.as_str()) {
        progress("patch set already applied in the build tree");
        return Ok(());
    }
    if !st.touched.is_empty() {
        progress(&format!(
            "resetting {} patched file(s) to pristine",
            st.touched.len()
        ));
        reset_tree(bdir, tree, &mut st)?;
    }
    if patches.is_empty() {
        st.applied = Some(want);
        return write_state(bdir, &st);
    }

    // Save pristine copies of everything the patches may touch, then record them
    // BEFORE patching so an interrupted run can still be reset.
    let pristine = bdir.join("pristine");
    let mut touched: Vec<(String, bool)> = Vec::new();
    for f in patches.iter().flat_map(|p| p.files.iter()) {
        if touched.iter().any(|(t, _)| t == f) {
            continue;
        }
        let src = tree.join(f);
        let existed = src.is_file();
        if existed {
            let dst = pristine.join(f);
            fs::create_dir_all(dst.parent().unwrap())?;
            fs::copy(&src, &dst).with_context(|| format!("saving pristine {f}"))?;
        }
        touched.push((f.clone(), existed));
    }
    st.touched = touched;
    st.patches = patches
        .iter()
        .map(|p| p.path.display().to_string())
        .collect();
    write_state(bdir, &st)?;

    let pdir = bdir.join("patches");
    let _ = fs::remove_dir_all(&pdir);
    fs::create_dir_all(&pdir)?;
    for (i, p) in patches.iter().enumerate() {
        let name = p
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        progress(&format!("applying {name}"));
        let copy = pdir.join(format!("{i:02}-{name}"));
        fs::write(&copy, &p.bytes)?;
        let out = Command::new("patch")
            .args([
                "-p1",
                "--forward",
                "--batch",
                "--no-backup-if-mismatch",
                "-i",
            ])
            .arg(&copy)
            .current_dir(tree)
            .stdin(Stdio::null())
            .output()
            .context("running patch")?;
        let mut msg = String::from_utf8_lossy(&out.stdout).into_owned();
        msg.push_str(&String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            let mut rejects = String::new();
            for f in &p.files {
                if let Ok(r) = fs::read_to_string(tree.join(format!("{f}.rej"))) {
                    rejects.push_str(&format!("\n--- rejected hunks for {f} ---\n{r}"));
                }
            }
            reset_tree(bdir, tree, &mut st).context("restoring the tree after a failed patch")?;
            bail!(
                "patch {} does not apply to {} (the build tree was restored to pristine):\n{}{}",
                p.path.display(),
                tree.display(),
                msg.trim_end(),
                rejects
            );
        }
        for l in msg
            .lines()
            .filter(|l| l.contains("Hunk") || l.contains("fuzz"))
        {
            progress(&format!("  {l}"));
        }
    }
    st.applied = Some(want);
    write_state(bdir, &st)
}

// ---------------------------------------------------------------------------------------
// Processes

fn make_env(cmd: &mut Command) {
    for v in [
        "MAKEFLAGS",
        "MFLAGS",
        "MAKELEVEL",
        "ARCH",
        "CROSS_COMPILE",
        "CC",
        "LOCALVERSION",
        "KCONFIG_CONFIG",
    ] {
        cmd.env_remove(v);
    }
    let ccache = Path::new("/usr/lib/ccache");
    if ccache.is_dir() {
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
        cmd.env("PATH", format!("{}:{path}", ccache.display()));
        let dir = crate::cache::dir("ccache");
        let _ = fs::create_dir_all(&dir);
        cmd.env("CCACHE_DIR", dir);
        if let Some(cwd) = cmd.get_current_dir().map(Path::to_path_buf) {
            // Relative paths in the ccache key: hits across build trees.
            cmd.env("CCACHE_BASEDIR", cwd);
        }
    }
}

fn first_line(e: &anyhow::Error) -> String {
    e.to_string().lines().next().unwrap_or("").to_string()
}

/// Run a command, capturing output; error with its output tail on failure.
/// Runs `argv` in `cwd` with the build environment; its output, whatever the exit status.
fn output_of(cwd: &Path, argv: &[&str]) -> Result<std::process::Output> {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]).current_dir(cwd).stdin(Stdio::null());
    make_env(&mut cmd);
    cmd.output()
        .with_context(|| format!("running {}", argv.join(" ")))
}

fn run_checked(cwd: &Path, argv: &[&str]) -> Result<String> {
    let out = output_of(cwd, argv)?;
    let mut all = String::from_utf8_lossy(&out.stdout).into_owned();
    all.push_str(&String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!(
            "`{}` failed ({}) in {}:\n{}",
            argv.join(" "),
            out.status,
            cwd.display(),
            tail(&all, 30)
        );
    }
    Ok(all)
}

fn command_stdout(cwd: &Path, argv: &[&str]) -> Result<String> {
    let out = output_of(cwd, argv)?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Run a command with stdout+stderr appended to `log`; with `show`, report the latest
/// kbuild line (`CC drivers/…`) through `progress` about once a second.  On failure the
/// error carries the last 30 lines of the log.
fn run_logged(
    cwd: &Path,
    argv: &[&str],
    log: &Path,
    show: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    writeln!(f, "### {} (in {})", argv.join(" "), cwd.display())?;
    let start = f.seek(SeekFrom::End(0))?;
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f.try_clone()?);
    make_env(&mut cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {}", argv.join(" ")))?;
    let mut reader = fs::File::open(log)?;
    reader.seek(SeekFrom::Start(start))?;
    let mut pending = String::new();
    let mut last_shown = Instant::now() - Duration::from_secs(2);
    let status = loop {
        let done = child.try_wait()?;
        if show {
            let mut buf = Vec::new();
            reader.read_to_end(&mut buf)?;
            pending.push_str(&String::from_utf8_lossy(&buf));
            if let Some(cut) = pending.rfind('\n') {
                let complete: String = pending.drain(..=cut).collect();
                if last_shown.elapsed() >= Duration::from_secs(1) {
                    if let Some(l) = complete.lines().rev().find(|l| is_kbuild_line(l)) {
                        let l = l.replace(&format!("{}/", cwd.display()), "");
                        progress(&format!(
                            "make: {}",
                            l.split_whitespace().collect::<Vec<_>>().join(" ")
                        ));
                        last_shown = Instant::now();
                    }
                }
            }
        }
        if let Some(s) = done {
            break s;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    if !status.success() {
        let text = fs::read_to_string(log).unwrap_or_default();
        bail!(
            "`{}` failed ({status}); full log: {}\n--- last 30 lines ---\n{}",
            argv.join(" "),
            log.display(),
            tail(&text, 30)
        );
    }
    Ok(())
}

fn is_kbuild_line(l: &str) -> bool {
    l.starts_with("  ")
        && l.split_whitespace().next().is_some_and(|w| {
            w.len() <= 8
                && w.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-' || c == '_')
        })
}

// ---------------------------------------------------------------------------------------

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
        for bad in [
            "",
            "debian:",
            "debian:6.12;rm",
            "debian:foo",
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

    #[test]
    fn variant_key_is_stable_and_sensitive() {
        let cfg = "CONFIG_DM_CACHE=y\n";
        let p1: &[u8] = b"--- a/x\n+++ b/x\n";
        let p2: &[u8] = b"--- a/y\n+++ b/y\n";
        let k = variant_key("debian:linux-source-6.12=6.12.117-1~deb12u1", &[p1], cfg);
        assert_eq!(k.len(), 64);
        assert_eq!(
            k,
            variant_key("debian:linux-source-6.12=6.12.117-1~deb12u1", &[p1], cfg)
        );
        assert_ne!(
            k,
            variant_key("debian:linux-source-6.12=6.12.117-1~deb12u1", &[p2], cfg)
        );
        assert_ne!(
            k,
            variant_key("debian:linux-source-6.12=6.12.117-1~deb12u1", &[], cfg)
        );
        assert_ne!(
            k,
            variant_key("debian:linux-source-6.12=6.12.115-2~deb12u1", &[p1], cfg)
        );
        assert_ne!(
            k,
            variant_key(
                "debian:linux-source-6.12=6.12.117-1~deb12u1",
                &[p1],
                "CONFIG_DM_CACHE=m\n"
            )
        );
        // Order matters, and concatenation is not ambiguous.
        assert_ne!(
            variant_key("s", &[p1, p2], cfg),
            variant_key("s", &[p2, p1], cfg)
        );
        assert_ne!(
            variant_key("s", &[b"ab", b"c"], cfg),
            variant_key("s", &[b"a", b"bc"], cfg)
        );
    }

    #[test]
    fn fragment_parse_and_errors() {
        let f = Fragment::parse(
            "k/a.config",
            "# comment\n\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x y\"\nCONFIG_D=n\n  CONFIG_E=0x10\n",
        )
        .unwrap();
        let got: Vec<(&str, Option<&str>, usize)> = f
            .opts
            .iter()
            .map(|o| (o.name.as_str(), o.value.as_deref(), o.line))
            .collect();
        assert_eq!(
            got,
            vec![
                ("A", Some("y"), 3),
                ("B", None, 4),
                ("C", Some("\"x y\""), 5),
                ("D", None, 6),
                ("E", Some("0x10"), 7)
            ]
        );
        let e = Fragment::parse("k/b.config", "CONFIG_A=y\nDM_CACHE=y\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("k/b.config:2"), "{e}");
        let e = Fragment::parse("k/c.config", "CONFIG_A=\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("k/c.config:1"), "{e}");
    }

    #[test]
    fn verify_reports_dropped_with_file_line() {
        let a = Fragment::parse(
            "kconfigs/dm-cache.config",
            "CONFIG_DM_CACHE=y\nCONFIG_DM_CACHE_SMQ=y\n# CONFIG_EXT4_FS is not set\nCONFIG_DEBUG_INFO_NONE=y\nCONFIG_NOPE=y\nCONFIG_HZ=250\n",
        )
        .unwrap();
        // A later fragment overrides an earlier one (last wins).
        let b = Fragment::parse("extra.config", "CONFIG_HZ=1000\n").unwrap();
        let config = "\
CONFIG_DM_CACHE=m
CONFIG_DM_CACHE_SMQ=y
# CONFIG_EXT4_FS is not set
# CONFIG_DEBUG_INFO_NONE is not set
CONFIG_HZ=1000
";
        let d = verify_fragments(&[a.clone(), b], config);
        let names: Vec<String> = d.iter().map(|d| d.to_string()).collect();
        assert_eq!(names.len(), 3, "{names:#?}");
        assert!(
            names[0].starts_with(
                "CONFIG_DM_CACHE=y (kconfigs/dm-cache.config:1): .config has CONFIG_DM_CACHE=m"
            ),
            "{}",
            names[0]
        );
        assert!(
            names[1].contains("CONFIG_DEBUG_INFO_NONE=y (kconfigs/dm-cache.config:4)")
                && names[1].contains("is not set")
        );
        assert!(names[2].contains("CONFIG_NOPE=y (kconfigs/dm-cache.config:5): absent"));
        // Without the override, HZ=250 is reported as changed.
        let d = verify_fragments(&[a], config);
        assert!(d.iter().any(|d| d.opt.name == "HZ" && d.opt.line == 6));
        // =n is satisfied by absence.
        let n = Fragment::parse("n.config", "# CONFIG_X is not set\nCONFIG_Y=n\n").unwrap();
        assert!(verify_fragments(std::slice::from_ref(&n), "").is_empty());
        assert_eq!(verify_fragments(&[n], "CONFIG_Y=y\n").len(), 1);
    }

    #[test]
    fn default_fragment_parses() {
        let p = &default_kconfigs()[0];
        let f = Fragment::parse(&p.display().to_string(), &fs::read_to_string(p).unwrap()).unwrap();
        for want in [
            "DM_CACHE",
            "DM_CACHE_SMQ",
            "BLK_DEV_DM",
            "DEBUG_INFO_NONE",
            "VIRTIO_FS",
            "9P_FS",
        ] {
            assert!(
                f.opts
                    .iter()
                    .any(|o| o.name == want && o.value.as_deref() == Some("y")),
                "{want}"
            );
        }
    }

    #[test]
    fn patch_paths_from_headers() {
        let text = "\
From: x
Subject: y
---
 drivers/md/a.c | 2 +-
 1 file changed

diff --git a/drivers/md/a.c b/drivers/md/a.c
--- a/drivers/md/a.c\t2024-01-01
+++ b/drivers/md/a.c\t2024-01-02
@@ -1 +1 @@
--- removed line that looks like a header
+x
--- /dev/null
+++ b/drivers/md/new.c
@@ -0,0 +1 @@
+y
diff --git a/old.c b/new2.c
rename from old.c
rename to new2.c
";
        assert_eq!(
            patch_paths(text).unwrap(),
            vec!["drivers/md/a.c", "drivers/md/new.c", "old.c", "new2.c"]
        );
        assert!(patch_paths("--- a/../etc/passwd\n+++ b/../etc/passwd\n").is_err());
    }

    #[test]
    fn shipped_patches_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../patches");
        let nc =
            fs::read_to_string(dir.join("negative-control-allow-dirty-passthrough-6.12.patch"))
                .unwrap();
        assert_eq!(
            patch_paths(&nc).unwrap(),
            vec!["drivers/md/dm-cache-target.c"]
        );
        let fix = fs::read_to_string(dir.join("a373b3d5289e-on-linux-6.12.117.patch")).unwrap();
        assert_eq!(
            patch_paths(&fix).unwrap(),
            vec![
                "drivers/md/dm-cache-metadata.c",
                "drivers/md/dm-cache-metadata.h",
                "drivers/md/dm-cache-target.c"
            ]
        );
    }

    #[test]
    fn apply_and_reset_roundtrip() {
        let d = tempfile::tempdir().unwrap();
        let (bdir, tree) = (d.path().join("b"), d.path().join("b/tree"));
        fs::create_dir_all(tree.join("src")).unwrap();
        fs::write(tree.join("src/a.c"), "one\ntwo\nthree\n").unwrap();
        let mk = |name: &str, body: &str| {
            let path = d.path().join(name);
            fs::write(&path, body).unwrap();
            PatchInput {
                path,
                bytes: body.as_bytes().to_vec(),
                files: patch_paths(body).unwrap(),
            }
        };
        let good = mk(
            "good.patch",
            "--- a/src/a.c\n+++ b/src/a.c\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n--- /dev/null\n+++ b/src/new.c\n@@ -0,0 +1 @@\n+new\n",
        );
        let bad = mk(
            "bad.patch",
            "--- a/src/a.c\n+++ b/src/a.c\n@@ -1,3 +1,3 @@\n uno\n-dos\n+DOS\n tres\n",
        );
        let mut p = |_: &str| {};
        apply_patch_set(&bdir, &tree, std::slice::from_ref(&good), &mut p).unwrap();
        assert_eq!(
            fs::read_to_string(tree.join("src/a.c")).unwrap(),
            "one\nTWO\nthree\n"
        );
        assert!(tree.join("src/new.c").exists());
        // Same set again: nothing to do.
        apply_patch_set(&bdir, &tree, std::slice::from_ref(&good), &mut p).unwrap();
        // A failing set: clear error, tree back to pristine.
        let e = apply_patch_set(&bdir, &tree, &[good, bad], &mut p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad.patch does not apply") && e.contains("rejected hunks for src/a.c"),
            "{e}"
        );
        assert_eq!(
            fs::read_to_string(tree.join("src/a.c")).unwrap(),
            "one\ntwo\nthree\n"
        );
        assert!(!tree.join("src/new.c").exists());
        assert!(!tree.join("src/a.c.rej").exists());
        // Empty set on a pristine tree.
        apply_patch_set(&bdir, &tree, &[], &mut p).unwrap();
        assert_eq!(
            fs::read_to_string(tree.join("src/a.c")).unwrap(),
            "one\ntwo\nthree\n"
        );
    }

    #[test]
    fn kbuild_lines() {
        assert!(is_kbuild_line("  CC      drivers/md/dm-cache-target.o"));
        assert!(is_kbuild_line("  LD      vmlinux.o"));
        assert!(!is_kbuild_line("make[1]: Entering directory"));
        assert!(!is_kbuild_line("drivers/md/x.c:1: warning: foo"));
    }
}
