//! The build tree's configuration: `make tinyconfig`, the fragments (the guest's needs in
//! `kconfigs/guest.config`, dm-cache, the spec's own) merged on top, `make olddefconfig`,
//! and the check that every fragment option survived.

use super::exec::{run_checked, run_logged};
use super::patch::TreeState;
use crate::event::Event;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fs;
use std::path::Path;

pub(super) fn prepare_tree(
    src: &Path,
    bdir: &Path,
    tree: &Path,
    frags: &[Fragment],
    progress: &mut dyn FnMut(Event),
) -> Result<()> {
    for stale in ["tree", "pristine", "state.json", "config.base"] {
        let p = bdir.join(stale);
        if p.is_dir() {
            fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        } else if p.exists() {
            fs::remove_file(&p)?;
        }
    }
    progress(Event::Prepare(format!(
        "copying source to {}",
        tree.display()
    )));
    let argv = copy_argv(src, tree, may_link(src, &crate::cache::dir("src"), bdir));
    run_checked(bdir, &argv.iter().map(String::as_str).collect::<Vec<_>>())?;
    if tree.join(".config").exists() || tree.join("include/config").exists() {
        progress(Event::Prepare(
            "source was built in-tree: make mrproper (in the copy)".into(),
        ));
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
    progress(Event::Prepare("configuring: make tinyconfig".into()));
    run_logged(tree, &["make", "tinyconfig"], &log, false, progress)?;
    progress(Event::Prepare("merging kconfig fragments".into()));
    let mut merge = vec!["scripts/kconfig/merge_config.sh", "-m", ".config"];
    merge.extend(frag_files.iter().map(String::as_str));
    run_logged(tree, &merge, &log, false, progress)?;
    run_logged(tree, &["make", "olddefconfig"], &log, false, progress)?;
    let config = fs::read_to_string(tree.join(".config")).context("reading merged .config")?;
    for n in check_fragments(frags, &config)? {
        progress(Event::Notice(n));
    }
    fs::write(bdir.join("config.base"), &config)?;
    fs::write(
        bdir.join("state.json"),
        serde_json::to_string(&TreeState::default())?,
    )?;
    fs::write(bdir.join("configured"), "")?;
    progress(Event::Prepare("config ready".into()));
    Ok(())
}

/// Whether the build tree in `bdir` may share the files of `src`: only a tree the runner
/// unpacked into its own cache (under `owned_root`, the cache's `src/`: nobody edits it), and
/// only on `bdir`'s file system (hard links cannot cross one: a `builds/` mounted elsewhere
/// gets a copy).
pub(super) fn may_link(src: &Path, owned_root: &Path, bdir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    src.starts_with(owned_root)
        && match (fs::metadata(src), fs::metadata(bdir)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev(),
            _ => false,
        }
}

/// The command that makes `tree` a copy of `src`.  A tree the runner owns is hard-linked
/// (`cp -al`: 2 s and no space for 6.18.5's 91 000 files, where `rsync` takes 12 s and
/// 1.7 GB): nothing writes a source file in place — kbuild only creates files, `patch`
/// writes a new file and renames it over the link, and resetting a patched file removes
/// it before the pristine copy goes back.  A user's tree is copied (`rsync`, without its
/// `.git`): it may change under a build.
pub(super) fn copy_argv(src: &Path, tree: &Path, owned: bool) -> Vec<String> {
    if owned {
        vec![
            "cp".into(),
            "-al".into(),
            src.display().to_string(),
            tree.display().to_string(),
        ]
    } else {
        vec![
            "rsync".into(),
            "-a".into(),
            "--exclude=/.git".into(),
            format!("{}/", src.display()),
            format!("{}/", tree.display()),
        ]
    }
}

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

pub(super) fn valid_symbol(s: &str) -> bool {
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

/// Every fragment option must survive, with one exception: an option of
/// `kconfigs/guest.config` (one file for 6.12 … 7.3) that this tree cannot have at all — its
/// symbol is absent from `.config`, neither set nor "is not set": undefined in this tree
/// (7.3 has no PROC_SYSCTL) or its dependencies false (7.3's x86 has no PREEMPT_VOLUNTARY,
/// only lazy/full).  Those are returned as notes; everything else dropped is an error.
pub(super) fn check_fragments(frags: &[Fragment], config: &str) -> Result<Vec<String>> {
    let (na, dropped): (Vec<Dropped>, Vec<Dropped>) = verify_fragments(frags, config)
        .into_iter()
        .partition(|d| d.actual.is_none() && d.opt.file.ends_with("guest.config"));
    let notes: Vec<String> = na
        .iter()
        .map(|d| format!("not in this tree (skipped): {d}"))
        .collect();
    if dropped.is_empty() {
        return Ok(notes);
    }
    let list: Vec<String> = dropped.iter().map(|d| format!("  {d}")).collect();
    bail!(
        "kernel config: {} option(s) from the kconfig fragments did not survive `make olddefconfig`:\n{}",
        dropped.len(),
        list.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kbuild::default_kconfigs;

    #[test]
    fn a_guest_option_this_tree_cannot_have_is_a_note() {
        let g = Fragment::parse(
            "/r/kconfigs/guest.config",
            "CONFIG_PREEMPT_VOLUNTARY=y\nCONFIG_SMP=y\n",
        )
        .unwrap();
        let d = Fragment::parse("/r/kconfigs/dm-cache.config", "CONFIG_DM_CACHE=y\n").unwrap();
        // 7.3: the symbol is absent (its dependencies are false): a note.
        let notes =
            check_fragments(&[g.clone(), d.clone()], "CONFIG_SMP=y\nCONFIG_DM_CACHE=y\n").unwrap();
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("PREEMPT_VOLUNTARY"), "{notes:?}");
        // Visible but turned off: still an error.
        assert!(check_fragments(
            std::slice::from_ref(&g),
            "# CONFIG_PREEMPT_VOLUNTARY is not set\nCONFIG_SMP=y\n"
        )
        .is_err());
        // Any other fragment stays strict, absent or not.
        assert!(check_fragments(&[d], "CONFIG_SMP=y\n").is_err());
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
    fn default_fragments_parse() {
        let opts: Vec<FragOpt> = default_kconfigs()
            .iter()
            .flat_map(|p| {
                let text = fs::read_to_string(p).unwrap();
                Fragment::parse(&p.display().to_string(), &text)
                    .unwrap()
                    .opts
            })
            .collect();
        for want in [
            "DM_CACHE",
            "DM_CACHE_SMQ",
            "BLK_DEV_DM",
            "DEBUG_INFO_NONE",
            "VIRTIO_FS",
            "9P_FS",
            "PREEMPT_DYNAMIC",
            "KALLSYMS",
            "64BIT",
        ] {
            assert!(
                opts.iter()
                    .any(|o| o.name == want && o.value.as_deref() == Some("y")),
                "{want}"
            );
        }
    }
}
