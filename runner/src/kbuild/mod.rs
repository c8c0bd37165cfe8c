//! Building a small x86_64 bzImage (dm-cache built in) from a Linux source tree plus
//! patches, for booting with virtme-ng.
//!
//! Layout under the cache root (see [`crate::cache`]):
//!
//! ```text
//! src/linux-source-6.12_<version>/tree    unpacked Debian source (read-only for us)
//! builds/<srckey>-<cfgkey>/tree           ONE configured build tree per source + fragments
//!                                         (hard links into src/…/tree for the runner's own)
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
//! Config: `make tinyconfig`, then the fragments (`kconfigs/guest.config`: what a guest
//! needs; `kconfigs/dm-cache.config`; the spec's own) are merged with
//! `scripts/kconfig/merge_config.sh -m` and `make olddefconfig`; finally every option
//! the fragments set is checked in `.config` — a dropped option is an error naming the
//! fragment file and line.  The release string carries a per-variant tag
//! (`LOCALVERSION=-dmt<8 hex of variantkey>`, `LOCALVERSION_AUTO=n`), so `uname -r`
//! tells variants apart.

use crate::event::Event;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

mod config;
mod exec;
mod patch;
mod source;

pub use source::SourceSpec;

use config::{check_fragments, prepare_tree, Fragment};
use exec::{command_stdout, run_logged};
use patch::{apply_patch_set, patch_bytes, PatchInput};
use source::{ensure_source, source_identity, Identity};

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
    /// Of those, the seconds of `make bzImage` (0 on a cache hit).
    pub make_secs: f64,
    /// The variant key (sha256 hex of source identity + patch contents + merged config).
    pub key: String,
}

/// The unpacked source tree of `src` (fetched and unpacked into the cache once), and its
/// identity — for a look at the tree before building it (e.g. whether a patch applies).
pub fn source_dir(src: &SourceSpec, progress: &mut dyn FnMut(Event)) -> Result<(PathBuf, String)> {
    let ident = source_identity(src)?;
    let dir = ensure_source(src, &ident, progress)?;
    Ok((dir, ident.identity))
}

/// `kconfigs/guest.config` (what a guest needs on top of tinyconfig) and
/// `kconfigs/dm-cache.config` of this repository.
pub fn default_kconfigs() -> Vec<PathBuf> {
    ["guest.config", "dm-cache.config"]
        .iter()
        .map(|f| {
            let p = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../kconfigs")
                .join(f);
            p.canonicalize().unwrap_or(p)
        })
        .collect()
}

/// Options forced for every build, merged before the user's fragments.
const INTERNAL_FRAGMENT: &str = "\
# dmcache-vmtest: the release tag comes from LOCALVERSION=-dmt<variant> on the make command line
CONFIG_LOCALVERSION=\"\"
# CONFIG_LOCALVERSION_AUTO is not set
";

/// The fragments (the internal one, then the request's or the default ones) and the
/// patches, read once: their contents are what the keys hash.
fn read_inputs(req: &BuildRequest) -> Result<(Vec<PathBuf>, Vec<Fragment>, Vec<PatchInput>)> {
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
    let patches = req
        .patches
        .iter()
        .map(|p| PatchInput::read(p))
        .collect::<Result<Vec<_>>>()?;
    Ok((kconfigs, frags, patches))
}

/// On the patched tree: the base config back (a patch that touched Kconfig may have changed
/// it; then `make olddefconfig` and the fragments checked again), `make bzImage` with the
/// variant's tag.  The release and make's seconds.
#[allow(clippy::too_many_arguments)]
fn make_variant(
    tree: &Path,
    base: &str,
    frags: &[Fragment],
    patches: &[PatchInput],
    tag: &str,
    jobs: usize,
    log: &Path,
    progress: &mut dyn FnMut(Event),
) -> Result<(String, f64)> {
    let cur = fs::read_to_string(tree.join(".config")).unwrap_or_default();
    if cur != base {
        fs::write(tree.join(".config"), base)?;
    }
    if patches.iter().any(PatchInput::touches_kconfig) {
        progress(Event::Prepare(
            "a patch touches Kconfig: make olddefconfig".into(),
        ));
        run_logged(tree, &["make", "olddefconfig"], log, false, progress)?;
        let now = fs::read_to_string(tree.join(".config"))?;
        for n in check_fragments(frags, &now)? {
            progress(Event::Notice(n));
        }
    }
    progress(Event::Prepare(format!(
        "make -j{jobs} bzImage (LOCALVERSION={tag})"
    )));
    let tm = Instant::now();
    let j = format!("-j{jobs}");
    let lv = format!("LOCALVERSION={tag}");
    run_logged(tree, &["make", &j, &lv, "bzImage"], log, true, progress)?;
    let make_secs = tm.elapsed().as_secs_f64();
    let release = command_stdout(tree, &["make", "-s", &lv, "kernelrelease"])?;
    if !release.ends_with(tag) {
        bail!("kernel release `{release}` does not end with the variant tag `{tag}`");
    }
    progress(Event::Prepare(format!(
        "built {release} in {make_secs:.0} s"
    )));
    Ok((release, make_secs))
}

/// The build's output (bzImage, config, log, release, info.json) into `outdir`, atomically
/// and durably: assembled beside it, synced, renamed; nothing is left on an error.  Durable
/// before it is visible: a power loss must not leave an empty bzImage under a valid key.
fn publish(
    tree: &Path,
    log: &Path,
    release: &str,
    info: &serde_json::Value,
    outdir: &Path,
) -> Result<()> {
    let outroot = outdir.parent().context("the output dir has a parent")?;
    fs::create_dir_all(outroot)?;
    let tmp = tempfile::Builder::new()
        .prefix(".partial-")
        .tempdir_in(outroot)
        .with_context(|| format!("creating a temporary directory in {}", outroot.display()))?;
    let t = tmp.path();
    fs::copy(tree.join("arch/x86/boot/bzImage"), t.join("bzImage")).context("copying bzImage")?;
    fs::copy(tree.join(".config"), t.join("config")).context("copying .config")?;
    let _ = fs::copy(log, t.join("build.log"));
    fs::write(t.join("release"), format!("{release}\n"))?;
    fs::write(
        t.join("info.json"),
        serde_json::to_string_pretty(info)? + "\n",
    )?;
    crate::cache::sync_path(t).context("syncing the built kernel to disk")?;
    // The rename is the commit (the directory is synced after it).  If it fails, someone
    // else finished the same variant first; theirs is as good as ours (the guard removes
    // this copy).
    if fs::rename(t, outdir).is_ok() {
        let _ = tmp.keep();
    }
    let _ = crate::cache::sync_parent(outdir);
    Ok(())
}

/// Build (or find in the cache) the kernel `req` describes.
pub fn build(req: &BuildRequest, progress: &mut dyn FnMut(Event)) -> Result<BuiltKernel> {
    let t0 = Instant::now();
    let jobs = req.jobs.max(1);

    let (kconfigs, frags, patches) = read_inputs(req)?;

    // Identity and keys.
    progress(Event::Prepare(format!("resolving source {}", req.src)));
    let ident = source_identity(&req.src)?;
    let srckey = short_hash(ident.identity.as_bytes());
    let cfgkey = config_key(&frags);
    let bdir = crate::cache::dir("builds").join(format!("{srckey}-{cfgkey}"));
    let outroot = crate::cache::dir("builds").join("out");

    // Fast path: a configured tree records its merged config; with it we know the key.
    if let Ok(base) = fs::read_to_string(bdir.join("config.base")) {
        if let (_, Some(k)) = cached(&outroot, &ident, &patches, &base, t0, progress)? {
            return Ok(k);
        }
    }

    fs::create_dir_all(&bdir).with_context(|| format!("creating {}", bdir.display()))?;
    let _lock = crate::cache::lock_exclusive(
        &bdir.join("lock"),
        "waiting for another build in the same tree",
        progress,
    )?;
    fs::write(bdir.join("source.txt"), format!("{}\n", ident.identity))?;

    let tree = bdir.join("tree");
    // The host's cores for the unpack, configure and make (VMs wait meanwhile).
    let mut cores = None;
    let mut take_cores = |progress: &mut dyn FnMut(Event)| -> Result<()> {
        if cores.is_none() {
            let c = crate::cores::all_cores(&mut || {
                progress(Event::Prepare(
                    "waiting for the host's cores (VMs or another build hold them)".into(),
                ))
            })?;
            cores = Some(c);
        }
        Ok(())
    };
    if !bdir.join("configured").exists() {
        let src = ensure_source(&req.src, &ident, progress)?;
        take_cores(progress)?;
        crate::cache::ensure_space("the kernel build")?;
        if let Err(e) = prepare_tree(&src, &bdir, &tree, &frags, progress) {
            // A half-copied tree is of no use (the next build copies afresh) and, on a full
            // disk, holds the space the user must free: name the fix while it is full, then
            // remove it.
            let e = e.context("preparing the build tree (the half-copied tree is removed)");
            let e = crate::cache::with_space_hint(e);
            let _ = fs::remove_dir_all(&tree);
            return Err(e);
        }
    }
    let base = fs::read_to_string(bdir.join("config.base")).context("reading config.base")?;
    let key = match cached(&outroot, &ident, &patches, &base, t0, progress)? {
        (_, Some(k)) => return Ok(k),
        (key, None) => key,
    };
    let outdir = outroot.join(&key);
    let tag = format!("-dmt{}", &key[..8]);
    take_cores(progress)?;

    apply_patch_set(&bdir, &tree, &patches, progress)?;
    let log = bdir.join("build.log");
    let (release, make_secs) =
        make_variant(&tree, &base, &frags, &patches, &tag, jobs, &log, progress)?;
    let info = serde_json::json!({
        "source": ident.identity,
        "patches": patches.iter().map(|p| p.path.display().to_string()).collect::<Vec<_>>(),
        "kconfigs": kconfigs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "release": release,
        "make_secs": make_secs,
        "build_tree": tree.display().to_string(),
    });
    publish(&tree, &log, &release, &info, &outdir)?;
    Ok(BuiltKernel {
        bzimage: outdir.join("bzImage"),
        config: outdir.join("config"),
        release,
        cache_hit: false,
        build_secs: t0.elapsed().as_secs_f64(),
        make_secs,
        key,
    })
}

/// sha256 hex over length-prefixed parts (the one hash of the runner's cache keys).
pub(crate) fn sha_hex(parts: &[&[u8]]) -> String {
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

/// Which configured tree: the base (`make tinyconfig`) and the fragments' contents in
/// order (not their paths).
fn config_key(frags: &[Fragment]) -> String {
    let mut parts: Vec<&[u8]> = vec![b"dmcache-vmtest config v2", b"make tinyconfig"];
    for f in frags {
        parts.push(f.text.as_bytes());
    }
    sha_hex(&parts)[..12].to_string()
}

/// The variant key for this merged config, and the built kernel if the cache has it.
fn cached(
    outroot: &Path,
    ident: &Identity,
    patches: &[PatchInput],
    base: &str,
    t0: Instant,
    progress: &mut dyn FnMut(Event),
) -> Result<(String, Option<BuiltKernel>)> {
    let key = variant_key(&ident.identity, &patch_bytes(patches), base);
    let hit = load_output(&outroot.join(&key), &key, t0)?;
    if let Some(k) = &hit {
        progress(Event::Prepare(format!(
            "cache hit: {} ({})",
            k.release,
            k.bzimage.display()
        )));
    }
    Ok((key, hit))
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
        make_secs: 0.0,
        key: key.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
