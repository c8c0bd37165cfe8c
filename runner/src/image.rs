//! Pinned guest userspace images (`images/NAME.yaml` recipes): a Debian root built with
//! `debootstrap` into the cache on demand, used as the guest root (`vng --root`) so results do
//! not depend on the host's distribution.  The host root (read-only) stays the default.
//! On a host whose apt is not Debian's (an Ubuntu CI runner), a built image's
//! `sources.list` names the Debian mirror for [`crate::debian`] ([`built_images`]).

use crate::event::Event;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    pub suite: String,
    #[serde(default = "minbase")]
    pub variant: String,
    pub packages: Vec<String>,
    /// Extra apt suites for the image's apt (`updates`, `security`); on a non-Debian host the
    /// runner also takes the security mirror for `debian:` kernels from them.
    #[serde(default)]
    pub apt_suites: Vec<String>,
}

fn minbase() -> String {
    "minbase".into()
}

pub fn recipes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../images")
}

/// Loads `images/NAME.yaml`; returns the recipe and a key of its text.
pub fn load_recipe(name: &str) -> Result<(Recipe, String)> {
    let path = recipes_dir().join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("no image recipe `{name}` ({} not readable)", path.display()))?;
    let r: Recipe = crate::yaml::from_yaml(&text, &path.display().to_string())?;
    if r.name != name {
        bail!(
            "{}: name `{}` does not match the file name",
            path.display(),
            r.name
        );
    }
    let key = format!("{:x}", Sha256::digest(text.as_bytes()))[..12].to_string();
    Ok((r, key))
}

/// apt source lines for the extra suites, derived from the first `deb URL SUITE COMPONENTS` line
/// debootstrap wrote (so the mirror is whatever debootstrap chose).
pub fn extra_sources(sources_list: &str, extra: &[String]) -> Result<String> {
    let line = sources_list
        .lines()
        .find(|l| l.starts_with("deb "))
        .ok_or_else(|| anyhow::anyhow!("no `deb` line in the image's sources.list"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    anyhow::ensure!(f.len() >= 4, "cannot read the apt source `{line}`");
    let (url, suite, comps) = (f[1].trim_end_matches('/'), f[2], f[3..].join(" "));
    let mut out = String::new();
    for e in extra {
        match e.as_str() {
            "updates" => out += &format!("deb {url} {suite}-updates {comps}\n"),
            "security" => out += &format!("deb {url}-security {suite}-security {comps}\n"),
            other => bail!("unknown apt suite `{other}` (use updates, security)"),
        }
    }
    Ok(out)
}

/// The `debootstrap` command line for a recipe (target last).
pub fn debootstrap_args(r: &Recipe, target: &Path) -> Vec<String> {
    vec![
        format!("--variant={}", r.variant),
        format!("--include={}", r.packages.join(",")),
        r.suite.clone(),
        target.display().to_string(),
    ]
}

fn image_dir(name: &str, key: &str) -> PathBuf {
    crate::cache::dir("images").join(format!("{name}-{key}"))
}

const DONE: &str = ".dmcache-vmtest-image";

/// The built image for `name` (current recipe), or a one-line error saying how to build it.
pub fn resolve(name: &str) -> Result<PathBuf> {
    let (_, key) = load_recipe(name)?;
    let dir = image_dir(name, &key);
    if dir.join(DONE).exists() {
        Ok(dir)
    } else {
        bail!("image `{name}` is not built for the current recipe: run `dmcache-vmtest image build {name}` (as root)")
    }
}

/// Builds the image unless it exists; returns its directory.
pub fn build(name: &str, progress: &mut dyn FnMut(Event)) -> Result<PathBuf> {
    let (r, key) = load_recipe(name)?;
    let dir = image_dir(name, &key);
    if dir.join(DONE).exists() {
        progress(Event::Prepare("cached".into()));
        return Ok(dir);
    }
    if !nix::unistd::Uid::effective().is_root() {
        bail!("building an image needs root (debootstrap): sudo dmcache-vmtest image build {name}");
    }
    let tmp = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let mut child = Command::new("debootstrap")
        .args(debootstrap_args(&r, &tmp))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot run debootstrap: apt-get install debootstrap")?;
    let mut log = Vec::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            progress(Event::Prepare(line.trim_start_matches("I: ").to_string()));
            log.push(line);
        }
    }
    if !child.wait()?.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        bail!(
            "debootstrap {} failed:\n{}",
            r.suite,
            log[log.len().saturating_sub(15)..].join("\n")
        );
    }
    if !r.apt_suites.is_empty() {
        let list = tmp.join("etc/apt/sources.list");
        let text = std::fs::read_to_string(&list).unwrap_or_default();
        let extra = extra_sources(&text, &r.apt_suites)?;
        std::fs::write(&list, format!("{text}{extra}"))?;
    }
    let versions = Command::new("chroot")
        .arg(&tmp)
        .args(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n"])
        .output()
        .context("cannot list the image's packages")?;
    std::fs::write(tmp.join("packages.txt"), &versions.stdout)?;
    std::fs::write(tmp.join(DONE), format!("{name} {key}\n"))?;
    crate::cache::sync_path(&tmp).context("syncing the image to disk")?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir)?;
    crate::cache::sync_parent(&dir)?;
    Ok(dir)
}

/// The built images, newest first.
pub fn built_images() -> Vec<PathBuf> {
    let mut v: Vec<(std::time::SystemTime, PathBuf)> =
        std::fs::read_dir(crate::cache::dir("images"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.join(DONE).exists())
                    .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
                    .collect()
            })
            .unwrap_or_default();
    v.sort();
    v.into_iter().rev().map(|(_, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_in_repo_parses_and_builds_args() {
        let (r, key) = load_recipe("bookworm").unwrap();
        assert_eq!(key.len(), 12);
        let a = debootstrap_args(&r, Path::new("/x"));
        assert_eq!(a[0], "--variant=minbase");
        assert!(a[1].starts_with("--include=") && a[1].contains("thin-provisioning-tools"));
        assert_eq!(&a[2..], &["bookworm", "/x"]);
        assert!(load_recipe("nope")
            .unwrap_err()
            .to_string()
            .contains("no image recipe"));
        assert_eq!(r.apt_suites, vec!["updates", "security"]);
    }

    #[test]
    fn extra_suites_follow_the_mirror_debootstrap_chose() {
        let got = extra_sources(
            "deb http://mirror.example/debian bookworm main\n",
            &["updates".into(), "security".into()],
        )
        .unwrap();
        assert_eq!(
            got,
            "deb http://mirror.example/debian bookworm-updates main\n\
             deb http://mirror.example/debian-security bookworm-security main\n"
        );
        assert!(extra_sources("", &["updates".into()]).is_err());
        assert!(extra_sources("deb http://m/d bookworm main\n", &["backports".into()]).is_err());
    }
}
