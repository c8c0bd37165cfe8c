//! What the GitHub workflow (`.github/workflows/matrix.yml`, `docs/ci-workflow.md`) asks of a
//! matrix: the build plan (`matrix FILE --list-builds`), the accelerator check
//! (`--expect-accel`) and one coverage table from the coverage JSON of many jobs
//! (`--merge-coverage`).
//!
//! The plan groups the matrix's `build:` kernels by **configured tree** — a source and its
//! kconfig fragments, kbuild's `builds/<srckey>-<cfgkey>` — because that is the unit of cold
//! cost and of ccache: the first build of a tree compiles everything (6.18.5: 217 s of make
//! here), every further patch set on it is an incremental make (7–40 s).  One build job per tree
//! builds each of its variants in turn; a job per variant would compile the same source once
//! per variant and keep as many near-identical ccaches.
//!
//! A tree's cache key hashes what its builds depend on — the source spec (its pin), the
//! pinned virtme-ng (its `--kconfig` output), every kconfig fragment and patch by content —
//! and never `matrix.yaml`, whose expected outcomes change without changing a build.  Keys
//! are `kbuild-<id>-<hash>` with `id` = `<series>-<8 hex>`: the prefix `kbuild-<id>-` that
//! restores an older entry of the same tree ends in a separator an id cannot contain past its
//! fixed-length hash, so it never matches another tree's key (`base-7.3-` would match
//! `base-7.3-delay-…`).

use super::{Coverage, CoverageRow};
use super::{Matrix, PairResult};
use crate::kbuild::sha_hex;
use crate::vm::Accel;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The workflow's jobs: one build job per tree, one test job per kernel.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Plan {
    pub trees: Vec<Tree>,
    pub kernels: Vec<KernelJob>,
}

/// One configured build tree and the builds (patch sets) on it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Tree {
    /// `<series>-<8 hex of source and fragment paths>`, e.g. `6.12-1a2b3c4d`: stable while
    /// the source spec and the fragment list stay, whatever the kernels are called.
    pub id: String,
    /// For people: `debian:6.12=6.12.117-1~deb12u1 + kconfigs/kasan.config`.
    pub name: String,
    /// The source as the spec gives it (`debian:SERIES[=VERSION]` or a directory).
    pub source: String,
    /// The spec's extra fragments, in order (`kconfigs/dm-cache.config` always comes first).
    pub kconfigs: Vec<String>,
    /// Every file whose contents a build of this tree depends on (relative to the matrix
    /// file's directory when inside it): the fragments, then every build's patches.
    pub inputs: Vec<String>,
    /// `kbuild-<id>-<16 hex of source spec, vng pin and inputs' contents>`.
    pub cache_key: String,
    /// `kbuild-<id>-`: restores the newest older entry of this tree only.
    pub cache_prefix: String,
    pub builds: Vec<Build>,
}

/// One distinct kernel build: source + patches + fragments.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Build {
    /// `<tree id>-<8 hex of the patch list>`.
    pub id: String,
    /// The `build:` spec with paths relative to the matrix file's directory.
    pub spec: String,
    pub patches: Vec<String>,
    /// The matrix kernels with this spec.
    pub kernels: Vec<String>,
}

/// One test job: a matrix kernel, and the tree/build that produces it (`""`: fetched, not built).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KernelJob {
    pub name: String,
    pub spec: String,
    pub tree: String,
    pub build: String,
}

/// `path` relative to `base` when inside it (both canonicalized if they exist).
fn relative(path: &Path, base: &Path) -> String {
    let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    // `matrix.yaml`'s parent is the empty path: the current directory
    let base = if base.as_os_str().is_empty() {
        Path::new(".")
    } else {
        base
    };
    let (p, b) = (canon(path), canon(base));
    match p.strip_prefix(&b) {
        Ok(r) => r.display().to_string(),
        Err(_) => path.display().to_string(),
    }
}

/// `6.12` of `debian:6.12=6.12.117-1~deb12u1`, `dir` for a directory; only `[A-Za-z0-9.]`.
fn series(source: &str) -> String {
    let s = match source.strip_prefix("debian:") {
        Some(v) => v.strip_prefix("linux-source-").unwrap_or(v),
        None => return "dir".into(),
    };
    let s: String = s
        .split('=')
        .next()
        .unwrap_or("")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '.'
            }
        })
        .collect();
    if s.is_empty() {
        "src".into()
    } else {
        s
    }
}

/// The parts of a (matrix-anchored) `build:` spec relative to `base`: source, fragments, patches.
fn split_build_spec(spec: &str, base: &Path) -> Option<(String, Vec<String>, Vec<String>)> {
    let Ok(crate::kernel::KernelSpec::Build { src, patches }) =
        crate::kernel::KernelSpec::parse(spec)
    else {
        return None;
    };
    let src = if crate::kernel::is_debian_source(&src) {
        src
    } else {
        relative(Path::new(&src), base)
    };
    let (kconfigs, patches): (Vec<String>, Vec<String>) = patches
        .iter()
        .map(|i| relative(i, base))
        .partition(|i| i.ends_with(".config"));
    Some((src, kconfigs, patches))
}

/// The build plan of a loaded matrix whose file lies in `base`.  Reads every input file (a
/// missing patch or fragment is an error here, not in a build job).
pub fn plan(m: &Matrix, base: &Path) -> Result<Plan> {
    // (source, fragments) -> (patches -> kernels)
    type Builds = BTreeMap<Vec<String>, Vec<String>>;
    let mut trees: BTreeMap<(String, Vec<String>), Builds> = BTreeMap::new();
    let mut kernels = Vec::new();
    for (name, k) in &m.kernels {
        let Some((src, kconfigs, patches)) = split_build_spec(&k.spec, base) else {
            kernels.push((name.clone(), k.spec.clone(), None));
            continue;
        };
        let builds = trees.entry((src.clone(), kconfigs.clone())).or_default();
        builds
            .entry(patches.clone())
            .or_default()
            .push(name.clone());
        kernels.push((name.clone(), k.spec.clone(), Some((src, kconfigs, patches))));
    }
    let defaults: Vec<String> = crate::kbuild::default_kconfigs()
        .iter()
        .map(|p| relative(p, base))
        .collect();
    let mut out = Vec::new();
    for ((src, kconfigs), builds) in &trees {
        out.push(tree(src, kconfigs, builds, &defaults, base)?);
    }
    let kernels = kernels
        .into_iter()
        .map(|(name, spec, parts)| {
            let Some((src, kconfigs, patches)) = parts else {
                return KernelJob {
                    name,
                    spec,
                    tree: String::new(),
                    build: String::new(),
                };
            };
            let t = out
                .iter()
                .find(|t| t.source == src && t.kconfigs == kconfigs)
                .expect("every build kernel has a tree");
            let b = t
                .builds
                .iter()
                .find(|b| b.patches == patches)
                .expect("every build kernel has a build");
            KernelJob {
                name,
                spec: b.spec.clone(),
                tree: t.id.clone(),
                build: b.id.clone(),
            }
        })
        .collect();
    Ok(Plan {
        trees: out,
        kernels,
    })
}

fn tree(
    src: &str,
    kconfigs: &[String],
    builds: &BTreeMap<Vec<String>, Vec<String>>,
    defaults: &[String],
    base: &Path,
) -> Result<Tree> {
    let mut id_parts: Vec<&[u8]> = vec![b"dmcache-vmtest tree v1", src.as_bytes()];
    id_parts.extend(kconfigs.iter().map(|k| k.as_bytes()));
    let id = format!("{}-{}", series(src), &sha_hex(&id_parts)[..8]);
    let mut patches: Vec<String> = builds.keys().flatten().cloned().collect();
    patches.sort();
    patches.dedup();
    let inputs: Vec<String> = defaults
        .iter()
        .chain(kconfigs)
        .cloned()
        .chain(patches)
        .collect();
    let mut contents = Vec::new();
    for i in &inputs {
        let p = base.join(i);
        let text = std::fs::read(&p)
            .with_context(|| format!("tree {id} ({src}): cannot read {}", p.display()))?;
        contents.push((i.as_bytes(), text));
    }
    let mut key_parts: Vec<&[u8]> = vec![
        b"dmcache-vmtest kbuild inputs v1",
        src.as_bytes(),
        crate::doctor::VNG_PINNED.as_bytes(),
    ];
    for (path, text) in &contents {
        key_parts.push(path);
        key_parts.push(text);
    }
    let cache_prefix = format!("kbuild-{id}-");
    let cache_key = format!("{cache_prefix}{}", &sha_hex(&key_parts)[..16]);
    let builds = builds
        .iter()
        .map(|(patches, kernels)| {
            let mut parts: Vec<&[u8]> = vec![b"dmcache-vmtest build v1"];
            parts.extend(patches.iter().map(|p| p.as_bytes()));
            let spec = std::iter::once(format!("build:{src}"))
                .chain(patches.iter().cloned())
                .chain(kconfigs.iter().cloned())
                .collect::<Vec<_>>()
                .join(",");
            Build {
                id: format!("{id}-{}", &sha_hex(&parts)[..8]),
                spec,
                patches: patches.clone(),
                kernels: kernels.clone(),
            }
        })
        .collect();
    let name = std::iter::once(src.to_string())
        .chain(kconfigs.iter().cloned())
        .collect::<Vec<_>>()
        .join(" + ");
    Ok(Tree {
        id,
        name,
        source: src.to_string(),
        kconfigs: kconfigs.to_vec(),
        inputs,
        cache_key,
        cache_prefix,
        builds,
    })
}

/// `kvm` or `tcg`.
pub fn parse_accel(s: &str) -> Result<Accel> {
    match s {
        "kvm" => Ok(Accel::Kvm),
        "tcg" => Ok(Accel::Tcg),
        _ => bail!("`{s}`: the accelerator is kvm or tcg"),
    }
}

fn accel_name(a: Accel) -> &'static str {
    match a {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    }
}

/// Each pair's accelerator (`accel kvm  case@kernel`; `kvm,tcg` if its runs differ, `-`
/// without a run) and, if `want` is given, one problem per pair a run of which used another.
pub fn accel_report(results: &[PairResult], want: Option<Accel>) -> (Vec<String>, Vec<String>) {
    let (mut lines, mut problems) = (Vec::new(), Vec::new());
    for r in results {
        let mut used: Vec<&str> = r.runs.iter().map(|v| accel_name(v.accel)).collect();
        used.sort();
        used.dedup();
        let shown = if used.is_empty() {
            "-".to_string()
        } else {
            used.join(",")
        };
        lines.push(format!("accel {shown:<7} {}", r.pair.id()));
        if let Some(w) = want {
            if r.runs.iter().any(|v| v.accel != w) {
                problems.push(format!(
                    "{}: ran under {shown}, expected {} (is /dev/kvm usable? the runner fell back; see its note)",
                    r.pair.id(),
                    accel_name(w)
                ));
            }
        }
    }
    (lines, problems)
}

/// One coverage view from the coverage JSON files of several runs (`--coverage F` writes
/// `F.json`): the union of their cases, their kernels in name order (a kernel in two files
/// gets the cells of both).
pub fn merge_coverage(files: &[PathBuf]) -> Result<Coverage> {
    let mut cases: Vec<String> = Vec::new();
    let mut rows: BTreeMap<String, CoverageRow> = BTreeMap::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        let c: Coverage = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a coverage JSON file", f.display()))?;
        cases.extend(c.cases);
        for row in c.kernels {
            match rows.get_mut(&row.kernel) {
                Some(have) => {
                    have.release = have.release.take().or(row.release);
                    have.cache_target = have.cache_target.take().or(row.cache_target);
                    have.cells.extend(row.cells);
                }
                None => {
                    rows.insert(row.kernel.clone(), row);
                }
            }
        }
    }
    cases.sort();
    cases.dedup();
    Ok(Coverage {
        cases,
        kernels: rows.into_values().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository in a temp dir: the patches and fragments the specs name.
    fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (p, text) in files {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        d
    }

    fn matrix(text: &str, dir: &Path) -> Matrix {
        let path = dir.join("matrix.yaml");
        std::fs::write(&path, text).unwrap();
        let mut m = super::super::parse(text, "matrix.yaml").unwrap();
        for k in m.kernels.values_mut() {
            k.spec = super::super::anchor_spec(&k.spec, dir);
        }
        m
    }

    const FILES: &[(&str, &str)] = &[
        ("patches/fix.patch", "--- a/x\n+++ b/x\n"),
        ("patches/revert.patch", "--- a/y\n+++ b/y\n"),
        ("kconfigs/dm-delay.config", "CONFIG_DM_DELAY=y\n"),
    ];

    const MATRIX: &str = r#"
kernels:
  debian-6.12: { spec: "debian:6.12.117+deb12" }
  base-7.3:   { spec: "build:debian:7.3=7.3.4-1~bpo13+1" }
  revert-7.3: { spec: "build:debian:7.3=7.3.4-1~bpo13+1,patches/revert.patch" }
  base-7.3-delay: { spec: "build:debian:7.3=7.3.4-1~bpo13+1,kconfigs/dm-delay.config" }
  base-6.12:  { spec: "build:debian:6.12=6.12.117-1~deb12u1" }
  same-6.12:  { spec: "build:debian:6.12=6.12.117-1~deb12u1" }
  fixed-6.12: { spec: "build:debian:6.12=6.12.117-1~deb12u1,patches/fix.patch" }
pairs:
  - { kernel: base-6.12, case: unclean_passthrough, outcome: unfixed, verdict: pass }
"#;

    #[test]
    fn plan_groups_builds_by_tree_and_maps_every_kernel() {
        let d = repo(FILES);
        let p = plan(&matrix(MATRIX, d.path()), d.path()).unwrap();
        // 6.12 default, 7.3 default, 7.3 + dm-delay
        assert_eq!(p.trees.len(), 3, "{p:#?}");
        let t612 = p.trees.iter().find(|t| t.id.starts_with("6.12-")).unwrap();
        assert_eq!(t612.builds.len(), 2); // base (twice: one build), fixed
        let base = t612.builds.iter().find(|b| b.patches.is_empty()).unwrap();
        assert_eq!(base.kernels, ["base-6.12", "same-6.12"]);
        assert_eq!(base.spec, "build:debian:6.12=6.12.117-1~deb12u1");
        let delay = p.trees.iter().find(|t| !t.kconfigs.is_empty()).unwrap();
        assert_eq!(delay.kconfigs, ["kconfigs/dm-delay.config"]);
        assert_eq!(
            delay.builds[0].spec,
            "build:debian:7.3=7.3.4-1~bpo13+1,kconfigs/dm-delay.config"
        );
        assert!(delay
            .inputs
            .contains(&"kconfigs/dm-delay.config".to_string()));
        let t73 = p
            .trees
            .iter()
            .find(|t| t.id.starts_with("7.3-") && t.kconfigs.is_empty())
            .unwrap();
        assert!(t73.inputs.contains(&"patches/revert.patch".to_string()));
        // Every kernel has a job; the built ones name the tree and build that produce them.
        assert_eq!(p.kernels.len(), 7);
        for k in &p.kernels {
            if k.name == "debian-6.12" {
                assert_eq!((k.tree.as_str(), k.build.as_str()), ("", ""));
                continue;
            }
            let t = p.trees.iter().find(|t| t.id == k.tree).unwrap();
            let b = t.builds.iter().find(|b| b.id == k.build).unwrap();
            assert!(b.kernels.contains(&k.name));
            assert_eq!(b.spec, k.spec);
        }
    }

    #[test]
    fn no_cache_key_or_prefix_matches_another_tree() {
        let d = repo(FILES);
        let p = plan(&matrix(MATRIX, d.path()), d.path()).unwrap();
        for a in &p.trees {
            assert!(a.cache_key.starts_with(&a.cache_prefix));
            for b in p.trees.iter().filter(|b| b.id != a.id) {
                assert!(!b.cache_key.starts_with(&a.cache_prefix), "{a:?} {b:?}");
                assert!(!b.cache_key.starts_with(&a.cache_key));
            }
        }
    }

    /// Finding 2: an expected outcome (or any other matrix text) is not a build input; a
    /// patch's or fragment's contents are.
    #[test]
    fn cache_keys_follow_build_inputs_not_matrix_yaml() {
        let d = repo(FILES);
        let keys = |text: &str| -> Vec<String> {
            let p = plan(&matrix(text, d.path()), d.path()).unwrap();
            p.trees.iter().map(|t| t.cache_key.clone()).collect()
        };
        let before = keys(MATRIX);
        let other_outcome = MATRIX.replace("verdict: pass", "verdict: fail");
        assert_eq!(before, keys(&other_outcome));
        let renamed = MATRIX.replace("fixed-6.12", "upstream-fix-6.12");
        assert_eq!(before, keys(&renamed));
        std::fs::write(d.path().join("patches/fix.patch"), "--- a/z\n+++ b/z\n").unwrap();
        let after = keys(MATRIX);
        let changed: Vec<bool> = before.iter().zip(&after).map(|(a, b)| a != b).collect();
        // only the 6.12 tree has fix.patch
        assert_eq!(
            changed.iter().filter(|c| **c).count(),
            1,
            "{before:?} {after:?}"
        );
        std::fs::write(
            d.path().join("kconfigs/dm-delay.config"),
            "CONFIG_DM_DELAY=m\n",
        )
        .unwrap();
        assert_eq!(
            after
                .iter()
                .zip(keys(MATRIX))
                .filter(|(a, b)| *a != b)
                .count(),
            1
        );
        // another source pin is another tree and key
        let repinned = MATRIX.replace("6.12.117-1~deb12u1", "6.12.118-1~deb12u1");
        assert_ne!(before, keys(&repinned));
    }

    #[test]
    fn a_missing_input_fails_the_plan() {
        let d = repo(&FILES[1..]);
        let e = plan(&matrix(MATRIX, d.path()), d.path()).unwrap_err();
        assert!(format!("{e:#}").contains("patches/fix.patch"), "{e:#}");
    }

    #[test]
    fn tree_ids_are_fixed_form() {
        assert_eq!(series("debian:6.12=6.12.117-1~deb12u1"), "6.12");
        assert_eq!(series("debian:linux-source-7.3"), "7.3");
        assert_eq!(series("/src/linux"), "dir");
        let d = repo(FILES);
        let p = plan(&matrix(MATRIX, d.path()), d.path()).unwrap();
        for t in &p.trees {
            let (s, h) = t.id.rsplit_once('-').unwrap();
            assert!(!s.is_empty() && h.len() == 8 && h.chars().all(|c| c.is_ascii_hexdigit()));
            assert!(t
                .cache_key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-".contains(c)));
        }
    }

    fn result(kernel: &str, accels: &[Accel]) -> PairResult {
        let text = format!(
            "kernels:\n  {kernel}: {{ spec: \"debian:6.12\" }}\npairs:\n  - {{ kernel: {kernel}, case: unclean_passthrough, outcome: x, verdict: pass }}\n"
        );
        let m = super::super::parse(&text, "m.yaml").unwrap();
        let runs = accels
            .iter()
            .map(|a| crate::check::Verdict {
                case: "unclean_passthrough".into(),
                source: None,
                kernel: kernel.into(),
                release: None,
                cache_target: None,
                accel: *a,
                tools: BTreeMap::new(),
                status: crate::check::Status::Pass,
                classifications: BTreeMap::new(),
                captures: BTreeMap::new(),
                expected: BTreeMap::new(),
                expected_note: None,
                failures: vec![],
                boots: vec![],
                seconds: 1.0,
                workdir: None,
            })
            .collect();
        PairResult {
            pair: m.pairs[0].clone(),
            spec: "debian:6.12".into(),
            runs,
            mismatches: vec![],
            errors: vec![],
        }
    }

    #[test]
    fn accel_report_names_each_pair_and_each_fallback() {
        let rs = vec![
            result("a", &[Accel::Kvm]),
            result("b", &[Accel::Tcg]),
            result("c", &[Accel::Kvm, Accel::Tcg]),
            result("d", &[]),
        ];
        let (lines, problems) = accel_report(&rs, Some(Accel::Kvm));
        assert_eq!(
            lines,
            [
                "accel kvm     unclean_passthrough@a",
                "accel tcg     unclean_passthrough@b",
                "accel kvm,tcg unclean_passthrough@c",
                "accel -       unclean_passthrough@d",
            ]
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("unclean_passthrough@b: ran under tcg, expected kvm"));
        assert!(accel_report(&rs[..1], Some(Accel::Kvm)).1.is_empty());
        assert!(accel_report(&rs, None).1.is_empty());
        assert_eq!(parse_accel("kvm").unwrap(), Accel::Kvm);
        assert!(parse_accel("KVM").is_err());
    }

    #[test]
    fn merged_coverage_is_one_table() {
        let d = tempfile::tempdir().unwrap();
        let cell = |v: &str| serde_json::json!({"verdict": v, "result": "r", "as_expected": true});
        let a = serde_json::json!({"cases": ["x"], "kernels": [{"kernel": "k2", "spec": "s2", "release": "2", "cache_target": null, "cells": {"x": cell("pass")}}]});
        let b = serde_json::json!({"cases": ["y", "x"], "kernels": [{"kernel": "k1", "spec": "s1", "release": null, "cache_target": "2.3.0", "cells": {"y": cell("fail")}}]});
        let (fa, fb) = (d.path().join("a.json"), d.path().join("b.json"));
        std::fs::write(&fa, a.to_string()).unwrap();
        std::fs::write(&fb, b.to_string()).unwrap();
        let c = merge_coverage(&[fa, fb]).unwrap();
        assert_eq!(c.cases, ["x", "y"]);
        let names: Vec<&str> = c.kernels.iter().map(|r| r.kernel.as_str()).collect();
        assert_eq!(names, ["k1", "k2"]);
        let md = crate::report::coverage_markdown(&c);
        assert!(md.contains("| k1 |  | 2.3.0 | · | ❌ r |"), "{md}");
        assert!(md.contains("| k2 | 2 |  | ✅ r | · |"), "{md}");
        assert!(merge_coverage(&[d.path().join("none.json")]).is_err());
    }
}
