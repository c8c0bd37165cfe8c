//! Debian's archive, the one home of the runner's apt code: `debian:` kernels from every
//! suite (bookworm … experimental) and `linux-source-*`, without touching the host's apt and
//! without root.
//!
//! * [`sources`]: the mirror, derived from the host's apt sources (or a built image's, or
//!   `DMCACHE_VMTEST_DEBIAN_MIRROR`), and the runner's own sources list for the suites
//!   (`DMCACHE_VMTEST_DEBIAN_SUITES`).
//! * [`apt`]: the runner-owned apt state in the cache (`apt-get -o Dir::…`), refreshed when
//!   older than a day, `apt-get download`.
//! * [`index`]: the kernels the archive offers (packaging form, usable or why not) and spec
//!   resolution; [`version`]: dpkg's version order.
//!
//! A fetched kernel is downloaded and unpacked in a temporary directory inside the cache and
//! renamed into place when complete, so no half-unpacked kernel is ever left.

pub mod apt;
pub mod index;
pub mod orig;
pub mod sources;
pub mod version;

pub use index::{Form, Index, KernelEntry};

use crate::event::Event;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// When to refresh the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// When it is older than a day (or the sources changed).
    IfStale,
    /// Now (`kernel list --refresh`).
    Force,
}

/// The runner's view of Debian's archive: its apt state, mirrors and suites.
pub struct Archive {
    pub state: apt::AptState,
    pub mirrors: sources::Mirrors,
    pub suites: Vec<String>,
    /// Suites left out (security suites without a security mirror).
    pub skipped: Vec<String>,
    sources_changed: bool,
}

/// What [`Archive::index`] did, for messages.
#[derive(Debug, Clone)]
pub struct IndexInfo {
    pub updated_at: Option<SystemTime>,
    pub refreshed: bool,
    /// Suites that failed to refresh, or why a stale index is used.
    pub warnings: Vec<String>,
}

impl Archive {
    /// Derives the mirror and writes the runner's sources list (nothing is fetched yet).
    pub fn open() -> Result<Archive> {
        let mirrors = sources::mirrors()?;
        let keyring = sources::keyring(&mirrors)?;
        let suites = sources::suites_from(
            std::env::var("DMCACHE_VMTEST_DEBIAN_SUITES")
                .ok()
                .as_deref(),
        );
        let (list, skipped) = sources::render_list(&mirrors, &suites, &keyring);
        let state = apt::AptState::default_location();
        let sources_changed = state.write_sources(&list)?;
        Ok(Archive {
            state,
            mirrors,
            suites,
            skipped,
            sources_changed,
        })
    }

    /// The kernel index, refreshed first when due.  A failed refresh falls back to the
    /// previous index with a warning; with no index at all it is an error.
    pub fn index(
        &self,
        refresh: Refresh,
        progress: &mut dyn FnMut(Event),
    ) -> Result<(Index, IndexInfo)> {
        let due = refresh == Refresh::Force || self.sources_changed || self.state.stale();
        let mut info = IndexInfo {
            updated_at: self.state.updated_at(),
            refreshed: false,
            warnings: vec![],
        };
        if due {
            progress(Event::Prepare(format!(
                "apt-get update: {} suites (mirror from {})",
                self.suites.len() - self.skipped.len(),
                self.mirrors.from
            )));
            match self.state.update() {
                Ok(w) => {
                    info.refreshed = true;
                    info.warnings = w;
                    info.updated_at = self.state.updated_at();
                }
                Err(e) if info.updated_at.is_some() => {
                    info.warnings
                        .push(format!("using the previous index: {e:#}"));
                }
                Err(e) => return Err(e),
            }
        }
        Ok((Index::new(self.state.load_index()?), info))
    }
}

/// The available kernels from `debian:A` to `debian:B` ([`Index::range`]), with the index
/// refreshed when due.
pub fn kernel_range(a: &str, b: &str, progress: &mut dyn FnMut(Event)) -> Result<index::Range> {
    let (Some(lo), Some(hi)) = (a.strip_prefix("debian:"), b.strip_prefix("debian:")) else {
        bail!("{a}..{b}: a range needs debian: ends (e.g. debian:6.16..debian:7.3); name other kernels as a comma list");
    };
    let archive = Archive::open()?;
    let (index, info) = archive.index(Refresh::IfStale, progress)?;
    for w in &info.warnings {
        progress(Event::Warning(w.to_string()));
    }
    index.range(lo, hi)
}

/// The directory a `debian:` kernel is unpacked into (`<cache>/kernels/debian-ABI`).
pub fn kernel_dir(abi: &str) -> PathBuf {
    crate::cache::dir("kernels").join(format!("debian-{abi}"))
}

const COMPLETE: &str = ".complete";

fn is_complete(dir: &Path) -> bool {
    dir.join(COMPLETE).exists()
}

/// Resolves a `debian:` spec (without the prefix) and fetches the kernel into the cache if
/// needed; returns its directory.  An ABI name already in the cache needs no network; a
/// series with no reachable index falls back to the newest cached kernel of that series.
pub fn fetch_kernel(spec: &str, progress: &mut dyn FnMut(Event)) -> Result<PathBuf> {
    // An ABI name (not a series: `debian:7.3` means 7.3.x, not experimental's `7.3` ABI).
    let cached = kernel_dir(spec);
    if !version::is_series(spec) && is_complete(&cached) {
        return Ok(cached);
    }
    let resolved = Archive::open().and_then(|a| {
        let (index, info) = a.index(Refresh::IfStale, progress)?;
        for w in &info.warnings {
            progress(Event::Warning(w.to_string()));
        }
        Ok((a, index))
    });
    let (archive, index) = match resolved {
        Ok(x) => x,
        Err(e) => {
            if let Some(dir) = newest_cached(spec) {
                progress(Event::Warning(format!(
                    "no Debian index ({e:#}); using the cached {}",
                    dir.display()
                )));
                return Ok(dir);
            }
            return Err(e);
        }
    };
    let entry = index.resolve(spec)?;
    fetch_entry(&archive, &entry, progress)
}

/// Downloads and unpacks one kernel (all its packages) unless it is in the cache.
pub fn fetch_entry(
    archive: &Archive,
    entry: &KernelEntry,
    progress: &mut dyn FnMut(Event),
) -> Result<PathBuf> {
    let dir = kernel_dir(&entry.abi);
    if is_complete(&dir) {
        return Ok(dir);
    }
    if let Some(why) = &entry.unusable {
        bail!("debian:{} cannot be had: {why}", entry.abi);
    }
    let parent = crate::cache::dir("kernels");
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let work = tempfile::Builder::new()
        .prefix(&format!(".partial-{}-", entry.abi))
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
    let names: Vec<&str> = entry.packages.iter().map(|(p, _)| p.as_str()).collect();
    progress(Event::Prepare(format!(
        "apt-get download {} ({})",
        names.join(" "),
        entry.version
    )));
    let debs = archive
        .state
        .download(&entry.packages, &work.path().join("debs"))?;
    let root = work.path().join("root");
    for deb in &debs {
        progress(Event::Prepare(format!(
            "unpacking {}",
            deb.file_name().unwrap_or_default().to_string_lossy()
        )));
        dpkg_extract(deb, &root)?;
        std::fs::remove_file(deb)?;
    }
    let complete: String = entry
        .packages
        .iter()
        .map(|(p, v)| format!("{p}={v}\n"))
        .collect();
    std::fs::write(root.join(COMPLETE), complete)?;
    crate::cache::sync_path(&root).context("syncing the unpacked kernel to disk")?;
    match std::fs::rename(&root, &dir) {
        Ok(()) => crate::cache::sync_parent(&dir)?,
        // Another run finished the same kernel first: keep its copy.
        Err(_) if is_complete(&dir) => {}
        Err(_) => {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&root, &dir)
                .with_context(|| format!("moving the kernel into {}", dir.display()))?;
        }
    }
    Ok(dir)
}

fn dpkg_extract(deb: &Path, into: &Path) -> Result<()> {
    std::fs::create_dir_all(into)?;
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("-x").arg(deb).arg(into);
    succeed(
        &mut cmd,
        &format!("dpkg-deb -x {}", deb.display()),
        "apt-get install dpkg",
    )?;
    Ok(())
}

/// Runs `cmd` to its end; its output, or an error naming `what` (and `install`, the fix when
/// it cannot be started) with the tail of its stderr.
pub(crate) fn succeed(
    cmd: &mut Command,
    what: &str,
    install: &str,
) -> Result<std::process::Output> {
    // In a process-group guard: an interrupt, an error or a killed runner leaves no child.
    let out = crate::proc::guarded_output(cmd)
        .with_context(|| format!("cannot run {what} ({install})"))?;
    if !out.status.success() {
        let e = anyhow::anyhow!(
            "{what} failed: {}",
            short_stderr(&String::from_utf8_lossy(&out.stderr))
        );
        // Asked now, while the partial output still fills the disk (it is removed after).
        return Err(crate::cache::with_space_hint(e));
    }
    Ok(out)
}

/// A child's stderr for a one-line error: its first line, and when there are more, how many
/// and the last (a `tar` on a full disk prints a line per file, tens of thousands).
fn short_stderr(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match lines.as_slice() {
        [] => "(no output)".into(),
        [one] => one.to_string(),
        [first, last] => format!("{first} / {last}"),
        [first, .., last] => format!("{first} … ({} more lines) … {last}", lines.len() - 2),
    }
}

/// The newest complete `debian-ABI` kernel in the cache matching a series or ABI prefix.
pub fn newest_cached(spec: &str) -> Option<PathBuf> {
    let mut found: Vec<String> = std::fs::read_dir(crate::cache::dir("kernels"))
        .ok()?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("debian-")
                .map(String::from)
        })
        .filter(|abi| {
            abi == spec
                || (version::is_series(spec) && version::series(abi).as_deref() == Some(spec))
                || abi.starts_with(&format!("{spec}+"))
        })
        .filter(|abi| is_complete(&kernel_dir(abi)))
        .collect();
    found.sort_by(|a, b| version::cmp(a, b));
    found.pop().map(|abi| kernel_dir(&abi))
}

/// Where a source spec's tree comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceTree {
    /// Debian's `linux-source-SERIES` binary package (Debian's patched tree).
    Package { pkg: String, version: String },
    /// The `linux` source package's upstream orig tarball, from `mirror`.
    Orig { tree: orig::Tree, mirror: String },
}

impl SourceTree {
    /// The source spec that names exactly this tree (`6.12=6.12.117-1~deb12u1`, `6.18.15`).
    pub fn spec(&self) -> String {
        match self {
            SourceTree::Package { pkg, version } => format!(
                "{}={version}",
                pkg.strip_prefix("linux-source-").unwrap_or(pkg)
            ),
            SourceTree::Orig { tree, .. } => tree.upstream.clone(),
        }
    }
    /// Where it comes from, for reports.
    pub fn origin(&self) -> String {
        match self {
            SourceTree::Package { pkg, version } => format!("{pkg} {version}"),
            SourceTree::Orig { tree, .. } => tree.orig.name.clone(),
        }
    }
}

/// Every series the archive has a tree of (`linux-source-*` or a `linux` upload), oldest
/// first.
pub fn known_series(progress: &mut dyn FnMut(Event)) -> Result<Vec<String>> {
    let archive = Archive::open()?;
    let (index, _) = archive.index(Refresh::IfStale, progress)?;
    let mut v: Vec<String> = archive
        .state
        .load_sources()?
        .iter()
        .filter_map(|r| version::series(&version::upstream(&r.version)))
        .chain(index.source_series())
        .collect();
    v.sort_by(|a, b| version::cmp(a, b));
    v.dedup();
    Ok(v)
}

/// A source spec: `6.12` (newest), `6.12.117` (that upstream version) or
/// `6.12=6.12.117-1~deb12u1` (that package version).  `linux-source-SERIES` where the
/// archive has a matching one; otherwise the orig tarball of a `linux` source upload that
/// the mirror still serves (asked once, the answer cached).  `None` when no index can be had.
pub fn source_tree(spec: &str, progress: &mut dyn FnMut(Event)) -> Result<Option<SourceTree>> {
    let (series, pin) = parse_source_spec(spec)?;
    let pkg = format!("linux-source-{series}");
    let got = Archive::open().and_then(|a| {
        let (i, _) = a.index(Refresh::IfStale, progress)?;
        Ok((a, i))
    });
    let (archive, index) = match got {
        Ok(x) => x,
        Err(e) => {
            progress(Event::Warning(format!("no Debian index: {e:#}")));
            return Ok(None);
        }
    };
    let versions = index.sources(&series);
    let fits = |v: &str| match &pin {
        SourcePin::Newest => true,
        SourcePin::Upstream(u) => version::upstream(v) == *u,
        SourcePin::Exact(x) => v == x,
    };
    if let Some((v, _)) = versions.iter().find(|(v, _)| fits(v)) {
        return Ok(Some(SourceTree::Package {
            pkg,
            version: v.clone(),
        }));
    }
    let records = archive.state.load_sources()?;
    let trees = orig::trees(&records, &series);
    let mirror = archive.mirrors.main.clone();
    let candidates: Vec<&orig::Tree> = trees
        .iter()
        .filter(|t| t.uploads.iter().any(|(v, _)| fits(v)))
        .collect();
    let mut refused = Vec::new();
    for t in &candidates {
        let p = orig::probe(t, &mirror)?;
        if p.ok {
            return Ok(Some(SourceTree::Orig {
                tree: (*t).clone(),
                mirror,
            }));
        }
        refused.push(format!("{}: {}", t.orig.name, p.why));
    }
    let had = |v: &[(String, Vec<String>)]| {
        v.iter()
            .map(|(v, _)| v.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !refused.is_empty() {
        bail!(
            "debian:{spec}: no tree can be had — {} (`kernel list --sources {series}` shows which can)",
            refused.join("; ")
        );
    }
    if versions.is_empty() && trees.is_empty() {
        bail!(
            "debian:{spec}: neither {pkg} nor a `linux` source upload of {series} in the runner's suites ({})",
            archive.suites.join(", ")
        );
    }
    let uploads: Vec<String> = trees.iter().map(|t| t.upstream.clone()).collect();
    bail!(
        "debian:{spec}: no such tree; {pkg}: {}; orig tarballs of {series}: {}",
        if versions.is_empty() {
            "none".into()
        } else {
            had(&versions)
        },
        if uploads.is_empty() {
            "none".into()
        } else {
            uploads.join(", ")
        }
    )
}

/// One row of `kernel list --sources`: an upstream tree and whether it can be had.
#[derive(Debug, Clone, Serialize)]
pub struct SourceRow {
    pub upstream: String,
    /// Package versions (`linux-source-*` or `linux` uploads) with their suites.
    pub uploads: Vec<(String, Vec<String>)>,
    /// `linux-source-6.12 6.12.117-1` or `linux_6.18.15.orig.tar.xz`.
    pub from: String,
    pub ok: bool,
    pub why: String,
}

/// Every tree of a series (or of every series) that the index knows, newest first: the
/// `linux-source-*` packages, then each `linux` upload's orig tarball, asked of the mirror
/// once (the answers cached).
pub fn source_rows(
    series: Option<&str>,
    progress: &mut dyn FnMut(Event),
) -> Result<Vec<SourceRow>> {
    let archive = Archive::open()?;
    let (index, _) = archive.index(Refresh::IfStale, progress)?;
    let records = archive.state.load_sources()?;
    let mut all_series: Vec<String> = records
        .iter()
        .filter_map(|r| version::series(&version::upstream(&r.version)))
        .chain(index.source_series())
        .filter(|s| series.is_none_or(|x| x == s))
        .collect();
    all_series.sort_by(|a, b| version::cmp(b, a));
    all_series.dedup();
    let mut rows = Vec::new();
    for s in &all_series {
        for (v, suites) in index.sources(s) {
            rows.push(SourceRow {
                upstream: version::upstream(&v),
                from: format!("linux-source-{s} {v}"),
                uploads: vec![(v, suites)],
                ok: true,
                why: "a binary package (Debian's patched tree)".into(),
            });
        }
        for t in orig::trees(&records, s) {
            let p = orig::probe(&t, &archive.mirrors.main)?;
            rows.push(SourceRow {
                upstream: t.upstream.clone(),
                from: t.orig.name.clone(),
                uploads: t.uploads.clone(),
                ok: p.ok,
                why: p.why,
            });
        }
    }
    rows.sort_by(|a, b| version::cmp(&b.upstream, &a.upstream));
    Ok(rows)
}

/// The source trees from upstream `lo` to `hi` (inclusive, e.g. `6.19.6`..`7.1.13`) as
/// `build:debian:V` specs, oldest first — every upstream version with a tree that can be had
/// (a `linux-source-*` package or a served orig tarball); the others are left out, named.
/// Bisecting over them fills the hole Debian's binaries leave (6.19–7.1 modules are gone).
pub fn tree_range(lo: &str, hi: &str, progress: &mut dyn FnMut(Event)) -> Result<index::Range> {
    for v in [lo, hi] {
        if version::series(v).is_none() {
            bail!("build:debian:{v}: a tree range names upstream versions, e.g. build:debian:6.19.6..build:debian:7.1.13");
        }
    }
    let rows = source_rows(None, progress)?;
    Ok(pick_trees(&rows, lo, hi))
}

/// The pure part of [`tree_range`].
fn pick_trees(rows: &[SourceRow], lo: &str, hi: &str) -> index::Range {
    let inside = |u: &str| version::cmp(u, lo).is_ge() && version::cmp(u, hi).is_le();
    let mut ok: Vec<String> = rows
        .iter()
        .filter(|r| r.ok && inside(&r.upstream))
        .map(|r| r.upstream.clone())
        .collect();
    ok.sort_by(|a, b| version::cmp(a, b));
    ok.dedup();
    let mut left_out: Vec<String> = rows
        .iter()
        .filter(|r| !r.ok && inside(&r.upstream) && !ok.contains(&r.upstream))
        .map(|r| r.upstream.clone())
        .collect();
    left_out.sort_by(|a, b| version::cmp(a, b));
    left_out.dedup();
    index::Range {
        kernels: ok
            .into_iter()
            .map(|u| format!("build:debian:{u}"))
            .collect(),
        left_out,
    }
}

/// The `kernel list --sources` table.
pub fn render_source_rows(rows: &[SourceRow]) -> String {
    let mut out = format!(
        "{:<12} {:<36} {:<5} {}\n",
        "upstream", "tree", "ok", "uploads / why"
    );
    for r in rows {
        let uploads = r
            .uploads
            .iter()
            .map(|(v, s)| format!("{v} ({})", s.join(",")))
            .collect::<Vec<_>>()
            .join(" ");
        out += &format!(
            "{:<12} {:<36} {:<5} {uploads}\n{:<55}{}\n",
            r.upstream,
            r.from,
            if r.ok { "yes" } else { "no" },
            "",
            r.why
        );
    }
    out
}

/// What a `linux-source` spec pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourcePin {
    Newest,
    Upstream(String),
    Exact(String),
}

/// `6.12` / `6.12.117` / `6.12=6.12.117-1~deb12u1` → (series, pin).
pub fn parse_source_spec(spec: &str) -> Result<(String, SourcePin)> {
    if let Some((series, exact)) = spec.split_once('=') {
        if !version::is_series(series) || exact.is_empty() {
            bail!("debian:{spec}: write debian:SERIES=PACKAGE-VERSION, e.g. debian:6.12=6.12.117-1~deb12u1");
        }
        return Ok((series.to_string(), SourcePin::Exact(exact.to_string())));
    }
    if version::is_series(spec) {
        return Ok((spec.to_string(), SourcePin::Newest));
    }
    match version::series(spec) {
        Some(series) => Ok((series, SourcePin::Upstream(spec.to_string()))),
        None => bail!("debian:{spec}: write debian:SERIES (e.g. debian:6.12), an upstream version (debian:6.12.117) or debian:SERIES=PACKAGE-VERSION"),
    }
}

/// A temporary directory beside `into` (`.partial-*`, removed when dropped): a download and
/// unpack happen there and only a complete result is renamed to `into`.
pub(crate) fn partial_dir(into: &Path) -> Result<tempfile::TempDir> {
    let parent = into
        .parent()
        .with_context(|| format!("{} has no parent directory", into.display()))?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    tempfile::Builder::new()
        .prefix(".partial-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))
}

/// `linux-source-SERIES` at `version`, downloaded, unpacked (`dpkg-deb -x`, then its
/// `usr/src/PKG.tar.xz`) in a temporary directory beside `into`, and renamed to `into` only
/// when complete: a failure at any point leaves nothing behind.
pub fn unpack_source(
    pkg: &str,
    version: &str,
    into: &Path,
    progress: &mut dyn FnMut(Event),
) -> Result<()> {
    let work = partial_dir(into)?;
    progress(Event::Prepare(format!("apt-get download {pkg}={version}")));
    let archive = Archive::open()?;
    let deb = archive
        .state
        .download(&[(pkg.to_string(), version.to_string())], work.path())?
        .remove(0);
    progress(Event::Prepare(format!(
        "dpkg-deb -x {}",
        deb.file_name().unwrap_or_default().to_string_lossy()
    )));
    let x = work.path().join("x");
    dpkg_extract(&deb, &x)?;
    std::fs::remove_file(&deb)?;
    let tarball = x.join(format!("usr/src/{pkg}.tar.xz"));
    if !tarball.is_file() {
        bail!("{pkg}={version} has no usr/src/{pkg}.tar.xz");
    }
    progress(Event::Prepare(format!("unpacking {pkg}.tar.xz")));
    let mut tar = Command::new("tar");
    tar.arg("-xf").arg(&tarball).current_dir(work.path());
    succeed(
        &mut tar,
        &format!("tar -xf {pkg}.tar.xz"),
        "apt-get install tar xz-utils",
    )?;
    let top = work.path().join(pkg);
    if !top.join("Makefile").is_file() {
        bail!("{pkg}.tar.xz did not unpack to {pkg}/ with a Makefile");
    }
    crate::cache::durable_rename(&top, into)
        .with_context(|| format!("moving the source to {}", into.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_childs_stderr_is_cut_to_one_line() {
        assert_eq!(short_stderr(""), "(no output)");
        assert_eq!(short_stderr("E: one\n"), "E: one");
        assert_eq!(short_stderr("a\n\nb\n"), "a / b");
        let many: String = (0..50_000)
            .map(|i| format!("tar: f{i}: Cannot write\n"))
            .collect();
        assert_eq!(
            short_stderr(&many),
            "tar: f0: Cannot write … (49998 more lines) … tar: f49999: Cannot write"
        );
    }

    #[test]
    fn a_tree_range_keeps_what_can_be_had() {
        let row = |u: &str, ok: bool| SourceRow {
            upstream: u.into(),
            uploads: vec![],
            from: String::new(),
            ok,
            why: String::new(),
        };
        let rows = [
            row("7.2.13", true),
            row("7.1.13", true),
            row("7.1.7", false),
            row("7.0.13", false),
            row("6.19.11", true),
            row("6.19.6", true),
            row("6.18.15", true),
        ];
        let r = pick_trees(&rows, "6.19.6", "7.1.13");
        assert_eq!(
            r.kernels,
            vec![
                "build:debian:6.19.6",
                "build:debian:6.19.11",
                "build:debian:7.1.13"
            ]
        );
        assert_eq!(r.left_out, vec!["7.0.13", "7.1.7"]);
    }

    #[test]
    fn source_specs() {
        assert_eq!(
            parse_source_spec("6.12").unwrap(),
            ("6.12".into(), SourcePin::Newest)
        );
        assert_eq!(
            parse_source_spec("6.12.117").unwrap(),
            ("6.12".into(), SourcePin::Upstream("6.12.117".into()))
        );
        assert_eq!(
            parse_source_spec("6.12=6.12.117-1~deb12u1").unwrap(),
            ("6.12".into(), SourcePin::Exact("6.12.117-1~deb12u1".into()))
        );
        assert!(parse_source_spec("6.12.1=x").is_err());
        assert!(parse_source_spec("foo").is_err());
    }
}
