//! Upstream trees from Debian's `linux` source package: the `Sources` indexes of the
//! runner's suites (`deb-src`) list every upload with its upstream orig tarball
//! (`linux_V.orig.tar.xz`, with its SHA256).  For most uploads older than the newest, the
//! `.dsc` and `debian.tar.xz` are gone from the pool while the orig tarball is still
//! served: that tarball *is* the upstream stable tree a backport targets (Debian's DFSG
//! removals aside).  This module parses the indexes (pure), asks the mirror once whether
//! an orig tarball can be had (the answer cached), and fetches one, verified and unpacked
//! atomically.

use super::version;
use crate::event::Event;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One upload of the `linux` source package in one suite (the fields the runner needs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRecord {
    pub version: String,
    pub suite: String,
    /// `pool/main/l/linux`.
    pub directory: String,
    /// The orig tarball: file name, SHA256, size in bytes.
    pub orig: Option<OrigFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrigFile {
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

/// The `linux` stanzas of one `Sources` text.
pub fn parse_sources(text: &str, suite: &str) -> Vec<SourceRecord> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields: BTreeMap<&str, String> = BTreeMap::new();
        let mut last: Option<&str> = None;
        for line in stanza.lines() {
            if line.starts_with(' ') || line.starts_with('\t') {
                if let Some(k) = last {
                    let v = fields.entry(k).or_default();
                    v.push('\n');
                    v.push_str(line.trim());
                }
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.insert(k, v.trim().to_string());
                last = Some(k);
            }
        }
        if fields.get("Package").map(String::as_str) != Some("linux") {
            continue;
        }
        let (Some(version), Some(directory)) = (fields.get("Version"), fields.get("Directory"))
        else {
            continue;
        };
        let orig = fields.get("Checksums-Sha256").and_then(|c| {
            c.lines().find_map(|l| {
                let mut it = l.split_whitespace();
                let (sha, size, name) = (it.next()?, it.next()?, it.next()?);
                (name.starts_with("linux_") && name.contains(".orig.tar.")).then(|| OrigFile {
                    name: name.to_string(),
                    sha256: sha.to_ascii_lowercase(),
                    size: size.parse().unwrap_or(0),
                })
            })
        });
        out.push(SourceRecord {
            version: version.clone(),
            suite: suite.to_string(),
            directory: directory.clone(),
            orig,
        });
    }
    out
}

/// One upstream version's tree: its orig tarball and the uploads (package version, suites)
/// that carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// Upstream version, e.g. `6.18.15`.
    pub upstream: String,
    pub orig: OrigFile,
    pub directory: String,
    /// (package version, suites), newest first.
    pub uploads: Vec<(String, Vec<String>)>,
}

impl Tree {
    pub fn url(&self, mirror: &str) -> String {
        format!(
            "{}/{}/{}",
            mirror.trim_end_matches('/'),
            self.directory,
            self.orig.name
        )
    }
    /// The build-cache identity: the tarball's name and checksum (the same tree whichever
    /// upload names it).
    pub fn identity(&self) -> String {
        format!("debian:{}@sha256:{}", self.orig.name, &self.orig.sha256)
    }
}

/// The trees of a series (`6.18`), newest upstream first.
pub fn trees(records: &[SourceRecord], series: &str) -> Vec<Tree> {
    let mut by: BTreeMap<String, Tree> = BTreeMap::new();
    for r in records {
        let Some(orig) = &r.orig else { continue };
        let up = version::upstream(&r.version);
        if version::series(&up).as_deref() != Some(series) {
            continue;
        }
        let t = by.entry(up.clone()).or_insert_with(|| Tree {
            upstream: up.clone(),
            orig: orig.clone(),
            directory: r.directory.clone(),
            uploads: vec![],
        });
        match t.uploads.iter_mut().find(|(v, _)| *v == r.version) {
            Some((_, suites)) => suites.push(r.suite.clone()),
            None => t.uploads.push((r.version.clone(), vec![r.suite.clone()])),
        }
    }
    let mut v: Vec<Tree> = by.into_values().collect();
    for t in &mut v {
        t.uploads.sort_by(|a, b| version::cmp(&b.0, &a.0));
    }
    v.sort_by(|a, b| version::cmp(&b.upstream, &a.upstream));
    v
}

/// Whether an orig tarball can be had, as the mirror answered (cached per file name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub ok: bool,
    /// `HTTP 404 from <url>`, …
    pub why: String,
}

fn probes_file() -> PathBuf {
    crate::cache::dir("debian").join("orig-probes.json")
}

fn load_probes() -> BTreeMap<String, Probe> {
    std::fs::read(probes_file())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Asks the mirror (an HTTP HEAD through curl) whether `tree`'s tarball is served, once;
/// later calls answer from the cache.  A network failure is not cached.
pub fn probe(tree: &Tree, mirror: &str) -> Result<Probe> {
    let mut all = load_probes();
    if let Some(p) = all.get(&tree.orig.name) {
        return Ok(p.clone());
    }
    let url = tree.url(mirror);
    let mut curl = Command::new("curl");
    curl.args(["-sS", "-I", "-L", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["--connect-timeout", "20", "--max-time", "60"])
        .arg(&url);
    let out =
        crate::proc::guarded_output(&mut curl).context("cannot run curl (apt-get install curl)")?;
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let p = match code.as_str() {
        "200" => Probe {
            ok: true,
            why: format!("served by {url}"),
        },
        "000" | "" => bail!(
            "asking {url}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        c => Probe {
            ok: false,
            why: format!("HTTP {c} from {url} (gone from the pool)"),
        },
    };
    all.insert(tree.orig.name.clone(), p.clone());
    std::fs::create_dir_all(crate::cache::dir("debian"))?;
    crate::cache::write_durable(&probes_file(), &serde_json::to_vec_pretty(&all)?)
        .with_context(|| format!("writing {}", probes_file().display()))?;
    Ok(p)
}

/// The hex SHA256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Downloads `tree`'s orig tarball, checks its SHA256 against the index, and unpacks it so
/// that `into` becomes the tree's top directory — all in a temporary directory beside
/// `into`, renamed only when complete: a failure (404, checksum mismatch, a full disk)
/// leaves nothing behind.
pub fn fetch(
    tree: &Tree,
    mirror: &str,
    into: &Path,
    progress: &mut dyn FnMut(Event),
) -> Result<()> {
    crate::cache::ensure_space(&format!("the download of {}", tree.orig.name))?;
    let work = super::partial_dir(into)?;
    let url = tree.url(mirror);
    let file = work.path().join(&tree.orig.name);
    progress(Event::Prepare(format!(
        "downloading {} ({} MB)",
        tree.orig.name,
        tree.orig.size / 1_000_000
    )));
    let mut curl = Command::new("curl");
    // A stalled transfer (under 1 kB/s for a minute) fails instead of hanging.
    curl.args(["-sS", "-f", "-L", "--connect-timeout", "20"])
        .args(["--speed-limit", "1000", "--speed-time", "60", "-o"])
        .arg(&file)
        .arg(&url);
    super::succeed(&mut curl, &format!("curl {url}"), "apt-get install curl")?;
    let got = sha256_file(&file)?;
    if got != tree.orig.sha256 {
        bail!(
            "{}: SHA256 {got} is not the index's {} (a damaged download or a changed mirror; nothing was kept)",
            tree.orig.name,
            tree.orig.sha256
        );
    }
    progress(Event::Prepare(format!("unpacking {}", tree.orig.name)));
    let x = work.path().join("x");
    std::fs::create_dir_all(&x)?;
    let mut tar = Command::new("tar");
    tar.arg("-xf").arg(&file).current_dir(&x);
    super::succeed(
        &mut tar,
        &format!("tar -xf {}", tree.orig.name),
        "apt-get install tar xz-utils",
    )?;
    std::fs::remove_file(&file)?;
    let top = std::fs::read_dir(&x)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("Makefile").is_file())
        .with_context(|| format!("{} has no top directory with a Makefile", tree.orig.name))?;
    crate::cache::durable_rename(&top, into)
        .with_context(|| format!("moving the tree to {}", into.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCES: &str = "\
Package: linux
Binary: linux-doc, linux-headers-6.18.15+deb13-common
Version: 6.18.15-1~bpo13+1
Maintainer: Debian Kernel Team <debian-kernel@lists.debian.org>
Directory: pool/main/l/linux
Checksums-Sha256:
 aaaa 123 linux_6.18.15-1~bpo13+1.dsc
 BBBB 157000000 linux_6.18.15.orig.tar.xz
 cccc 1500000 linux_6.18.15-1~bpo13+1.debian.tar.xz

Package: linux-signed-amd64
Version: 6.18.15+1~bpo13+1
Directory: pool/main/l/linux-signed-amd64
Checksums-Sha256:
 dddd 10 linux-signed-amd64_6.18.15+1~bpo13+1.tar.xz

Package: linux
Version: 6.18.5-1
Directory: pool/main/l/linux
Checksums-Sha256:
 eeee 156000000 linux_6.18.5.orig.tar.xz
";

    #[test]
    fn parses_linux_stanzas_only() {
        let r = parse_sources(SOURCES, "trixie-backports");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].version, "6.18.15-1~bpo13+1");
        assert_eq!(r[0].directory, "pool/main/l/linux");
        let o = r[0].orig.as_ref().unwrap();
        assert_eq!(o.name, "linux_6.18.15.orig.tar.xz");
        assert_eq!(o.sha256, "bbbb");
        assert_eq!(o.size, 157000000);
        assert_eq!(r[1].orig.as_ref().unwrap().name, "linux_6.18.5.orig.tar.xz");
    }

    #[test]
    fn trees_group_uploads_by_upstream() {
        let mut r = parse_sources(SOURCES, "trixie-backports");
        r.extend(parse_sources(SOURCES, "sid"));
        r.extend(parse_sources(
            "Package: linux\nVersion: 7.1.13-1\nDirectory: pool/main/l/linux\nChecksums-Sha256:\n ff 1 linux_7.1.13.orig.tar.xz\n",
            "experimental",
        ));
        let t = trees(&r, "6.18");
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].upstream, "6.18.15");
        assert_eq!(
            t[0].uploads,
            vec![(
                "6.18.15-1~bpo13+1".to_string(),
                vec!["trixie-backports".to_string(), "sid".to_string()]
            )]
        );
        assert_eq!(t[1].upstream, "6.18.5");
        assert_eq!(
            t[0].url("http://m/debian/"),
            "http://m/debian/pool/main/l/linux/linux_6.18.15.orig.tar.xz"
        );
        assert_eq!(
            t[0].identity(),
            "debian:linux_6.18.15.orig.tar.xz@sha256:bbbb"
        );
        assert_eq!(trees(&r, "7.1")[0].upstream, "7.1.13");
        assert!(trees(&r, "6.19").is_empty());
    }

    #[test]
    fn sha256_of_a_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("x");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(
            sha256_file(&f).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
