//! The runner's own apt state in the cache (`<cache>/debian/`): its sources list, lists and
//! archives, used through `apt-get -o Dir::…` options, so nothing of the host's apt changes
//! and no root is needed.  The host's apt.conf (proxies, …) still applies; its update hooks
//! do not run.

use super::index::{parse_packages, Record};
use super::orig::{parse_sources, SourceRecord};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

/// Index age after which a `debian:` lookup refreshes it.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// The runner-owned apt directory tree.
#[derive(Debug, Clone)]
pub struct AptState {
    pub root: PathBuf,
}

impl AptState {
    pub fn new(root: PathBuf) -> AptState {
        AptState { root }
    }

    /// `<cache>/debian`.
    pub fn default_location() -> AptState {
        AptState::new(crate::cache::dir("debian"))
    }

    pub fn sources_list(&self) -> PathBuf {
        self.root.join("sources.list")
    }
    fn stamp(&self) -> PathBuf {
        self.root.join("updated")
    }
    fn index_file(&self) -> PathBuf {
        self.root.join("index.json")
    }
    fn sources_file(&self) -> PathBuf {
        self.root.join("sources.json")
    }

    /// The `-o` options that point apt at this state only.
    pub fn options(&self) -> Vec<String> {
        let r = &self.root;
        let d = |k: &str, p: PathBuf| format!("-o{k}={}", p.display());
        let mut v = vec![
            d("Dir::Etc::SourceList", r.join("sources.list")),
            d("Dir::Etc::SourceParts", r.join("sources.list.d")),
            d("Dir::Etc::Preferences", r.join("preferences")),
            d("Dir::Etc::PreferencesParts", r.join("preferences.d")),
            d("Dir::State", r.join("state")),
            d("Dir::State::Lists", r.join("state/lists")),
            d("Dir::State::status", r.join("state/status")),
            d("Dir::Cache", r.join("cache")),
            d("Dir::Cache::Archives", r.join("cache/archives")),
            "-oDir::Cache::pkgcache=".into(),
            "-oDir::Cache::srcpkgcache=".into(),
            "-oDebug::NoLocking=1".into(),
            "-oAcquire::Languages=none".into(),
            "-oAPT::Update::Post-Invoke::=".into(),
            "-oAPT::Update::Post-Invoke-Success::=".into(),
            "-oAPT::Update::Pre-Invoke::=".into(),
        ];
        // As root apt would hand downloads to `_apt`, which cannot enter a private cache.
        if nix::unistd::Uid::effective().is_root() {
            v.push("-oAPT::Sandbox::User=root".into());
        }
        v
    }

    /// `apt-get`/`apt-cache` with this state.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.args(self.options()).stdin(Stdio::null());
        c
    }

    fn prepare(&self) -> Result<()> {
        for d in [
            "sources.list.d",
            "preferences.d",
            "state/lists/partial",
            "cache/archives/partial",
        ] {
            std::fs::create_dir_all(self.root.join(d))
                .with_context(|| format!("creating {}", self.root.join(d).display()))?;
        }
        let status = self.root.join("state/status");
        if !status.exists() {
            std::fs::write(&status, "")?;
        }
        Ok(())
    }

    /// When the index was last refreshed, if ever.
    pub fn updated_at(&self) -> Option<SystemTime> {
        if !self.index_file().exists() || !self.sources_file().exists() {
            return None;
        }
        self.stamp().metadata().ok()?.modified().ok()
    }

    /// Writes `list` as the sources list; `true` if it changed (a refresh is then due).
    pub fn write_sources(&self, list: &str) -> Result<bool> {
        self.prepare()?;
        let path = self.sources_list();
        if std::fs::read_to_string(&path).ok().as_deref() == Some(list) {
            return Ok(false);
        }
        std::fs::write(&path, list).with_context(|| format!("writing {}", path.display()))?;
        Ok(true)
    }

    /// Whether the index is missing or older than [`MAX_AGE`].
    pub fn stale(&self) -> bool {
        self.updated_at()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age > MAX_AGE)
    }

    /// `apt-get update` on this state, then rebuilds the kernel index from the lists.
    /// Holds a lock so parallel runs do not update at once.  A suite that failed (gone from
    /// the mirror, bad signature) is left out and named in the returned warnings; no list at
    /// all is an error.
    pub fn update(&self) -> Result<Vec<String>> {
        self.prepare()?;
        crate::cache::ensure_space("apt-get update")?;
        let seen = self.updated_at();
        let lock = std::fs::File::create(self.root.join("lock"))?;
        lock.lock().context("locking the runner's apt state")?;
        if self.updated_at() != seen && !self.stale() {
            return Ok(vec![]); // another run refreshed it while this one waited
        }
        let mut cmd = self.command("apt-get");
        cmd.args(["update", "-q"]);
        let out =
            crate::proc::guarded_output(&mut cmd).context("cannot run apt-get (install apt)")?;
        let err = String::from_utf8_lossy(&out.stderr);
        let warnings: Vec<String> = err
            .lines()
            .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
            .filter(|l| !l.contains("unsandboxed"))
            .map(|l| l.trim().to_string())
            .collect();
        let records = self.read_lists()?;
        if records.is_empty() {
            bail!(
                "apt-get update (runner's sources {}) gave no kernel packages: {}",
                self.sources_list().display(),
                warnings
                    .iter()
                    .find(|l| l.starts_with("E:"))
                    .map(String::as_str)
                    .or_else(|| err.lines().last())
                    .unwrap_or(if out.status.success() {
                        "empty lists"
                    } else {
                        "failed"
                    })
                    .trim()
            );
        }
        let sources = self.read_source_lists()?;
        write_atomic(&self.index_file(), &serde_json::to_vec(&records)?)?;
        write_atomic(&self.sources_file(), &serde_json::to_vec(&sources)?)?;
        std::fs::write(self.stamp(), "")?;
        Ok(warnings)
    }

    /// The saved kernel index.
    pub fn load_index(&self) -> Result<Vec<Record>> {
        let text = std::fs::read(self.index_file()).with_context(|| {
            format!(
                "no Debian kernel index at {} (run `dmcache-vmtest kernel list --refresh`)",
                self.index_file().display()
            )
        })?;
        serde_json::from_slice(&text).with_context(|| format!("{}", self.index_file().display()))
    }

    /// The saved `linux` source-package uploads (see [`super::orig`]).
    pub fn load_sources(&self) -> Result<Vec<SourceRecord>> {
        let text = std::fs::read(self.sources_file()).with_context(|| {
            format!(
                "no Debian source index at {} (run `dmcache-vmtest kernel list --refresh`)",
                self.sources_file().display()
            )
        })?;
        serde_json::from_slice(&text).with_context(|| format!("{}", self.sources_file().display()))
    }

    /// Every list of one index target apt fetched, as (text, suite) (from `apt-get
    /// indextargets`; compressed lists are read with `apt-helper cat-file`).
    fn each_list(&self, target: &str, f: &mut dyn FnMut(&str, &str)) -> Result<()> {
        let mut cmd = self.command("apt-get");
        let ident = format!("Identifier: {target}");
        cmd.args([
            "indextargets",
            "--format",
            "$(FILENAME)\t$(RELEASE)",
            &ident,
        ]);
        let out = super::succeed(&mut cmd, "apt-get indextargets", "install apt")?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some((file, suite)) = line.split_once('\t') else {
                continue;
            };
            if let Some(text) = read_list(Path::new(file))? {
                f(&text, suite);
            }
        }
        Ok(())
    }

    /// The wanted records of every `Packages` list, with their suite.
    fn read_lists(&self) -> Result<Vec<Record>> {
        let mut records = Vec::new();
        self.each_list("Packages", &mut |text, suite| {
            records.extend(parse_packages(text, suite))
        })?;
        Ok(records)
    }

    /// The `linux` uploads of every `Sources` list, with their suite.
    fn read_source_lists(&self) -> Result<Vec<SourceRecord>> {
        let mut records = Vec::new();
        self.each_list("Sources", &mut |text, suite| {
            records.extend(parse_sources(text, suite))
        })?;
        Ok(records)
    }

    /// `apt-get download PKG=VERSION …` into `dir`; the `.deb` paths in the same order.
    pub fn download(&self, pkgs: &[(String, String)], dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let specs: Vec<String> = pkgs.iter().map(|(p, v)| format!("{p}={v}")).collect();
        crate::cache::ensure_space(&format!("apt-get download {}", specs.join(" ")))?;
        let mut cmd = self.command("apt-get");
        cmd.current_dir(dir).args(["download", "-q"]).args(&specs);
        let out = crate::proc::guarded_output(&mut cmd).context("cannot run apt-get")?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let why = err
                .lines()
                .find(|l| l.starts_with("E:"))
                .or_else(|| err.lines().last())
                .unwrap_or("")
                .trim();
            bail!("apt-get download {} failed: {why}", specs.join(" "));
        }
        pkgs.iter()
            .map(|(p, _)| {
                std::fs::read_dir(dir)?
                    .flatten()
                    .map(|e| e.path())
                    .find(|f| {
                        f.file_name().is_some_and(|n| {
                            let n = n.to_string_lossy();
                            n.starts_with(&format!("{p}_")) && n.ends_with(".deb")
                        })
                    })
                    .ok_or_else(|| {
                        anyhow!("apt-get download {p} left no .deb in {}", dir.display())
                    })
            })
            .collect()
    }
}

/// [`crate::cache::write_durable`] with the path in its error.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::cache::write_durable(path, bytes).with_context(|| format!("writing {}", path.display()))
}

const COMPRESSED: &[&str] = &["lz4", "zst", "gz", "xz", "bz2", "lzma"];

/// A list file as text: plain, or compressed (`….lz4`, `.gz`, … when apt keeps indexes
/// compressed; `apt-get indextargets` names either form); `None` if apt has no such list
/// (a suite that failed to update).
fn read_list(file: &Path) -> Result<Option<String>> {
    let compressed = |p: &Path| {
        p.extension()
            .is_some_and(|e| COMPRESSED.contains(&e.to_string_lossy().as_ref()))
    };
    let candidates = std::iter::once(file.to_path_buf()).chain(
        COMPRESSED
            .iter()
            .map(|ext| PathBuf::from(format!("{}.{ext}", file.display()))),
    );
    for c in candidates {
        if !c.is_file() {
            continue;
        }
        if !compressed(&c) {
            return Ok(Some(
                std::fs::read_to_string(&c).with_context(|| format!("reading {}", c.display()))?,
            ));
        }
        let out = Command::new("/usr/lib/apt/apt-helper")
            .arg("cat-file")
            .arg(&c)
            .output()
            .context("cannot run /usr/lib/apt/apt-helper")?;
        if !out.status.success() {
            bail!("apt-helper cat-file {} failed", c.display());
        }
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_point_at_the_state_only() {
        let s = AptState::new("/c/debian".into());
        let o = s.options();
        assert!(o.contains(&"-oDir::Etc::SourceList=/c/debian/sources.list".to_string()));
        assert!(o.contains(&"-oDir::Etc::SourceParts=/c/debian/sources.list.d".to_string()));
        assert!(o.contains(&"-oDir::State::Lists=/c/debian/state/lists".to_string()));
        assert!(o.contains(&"-oDir::State::status=/c/debian/state/status".to_string()));
        assert!(o.contains(&"-oDir::Cache::Archives=/c/debian/cache/archives".to_string()));
        assert!(o.contains(&"-oDebug::NoLocking=1".to_string()));
        assert!(
            o.iter()
                .all(|a| !a.contains("/etc/apt") && !a.contains("/var/lib/apt")),
            "never the host's apt state: {o:?}"
        );
    }

    #[test]
    fn sources_and_staleness() {
        let d = tempfile::tempdir().unwrap();
        let s = AptState::new(d.path().join("debian"));
        assert!(s.stale() && s.updated_at().is_none());
        assert!(s.write_sources("deb x y main\n").unwrap());
        assert!(!s.write_sources("deb x y main\n").unwrap());
        assert!(s.write_sources("deb x z main\n").unwrap());
        assert!(d.path().join("debian/state/lists/partial").is_dir());
        std::fs::write(s.index_file(), "[]").unwrap();
        std::fs::write(s.sources_file(), "[]").unwrap();
        std::fs::write(s.stamp(), "").unwrap();
        assert!(!s.stale());
        assert!(s.load_index().unwrap().is_empty());
    }

    #[test]
    fn reads_plain_lists_and_skips_missing() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("x_Packages");
        std::fs::write(&f, "Package: linux-source-6.12\nVersion: 1\n").unwrap();
        assert!(read_list(&f).unwrap().unwrap().contains("linux-source"));
        assert!(read_list(&d.path().join("missing_Packages"))
            .unwrap()
            .is_none());
        // A compressed list (as apt keeps it with Acquire::GzipIndexes), named either way.
        let z = d.path().join("y_Packages");
        std::fs::write(&z, "Package: linux-source-7.3\nVersion: 2\n").unwrap();
        let st = Command::new("gzip").arg(&z).status().unwrap();
        assert!(st.success());
        assert!(read_list(&z).unwrap().unwrap().contains("linux-source-7.3"));
        let gz = d.path().join("y_Packages.gz");
        assert!(read_list(&gz)
            .unwrap()
            .unwrap()
            .contains("linux-source-7.3"));
    }
}
