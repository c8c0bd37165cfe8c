//! Kernel × case matrices: a YAML file names kernels (any `--kernel` spec) and the outcome
//! each (kernel, case) pair is expected to give; [`run`] runs the pairs in parallel, possibly
//! several times, and [`judge`] compares each verdict with its expectation.
//!
//! ```yaml
//! kernels:
//!   debian-6.12: { spec: "debian:6.12.117+deb12" }
//!   fixed-6.12:  { spec: "build:debian:6.12,patches/a373b3d5289e-on-linux-6.12.117.patch" }
//!   kasan-6.12:  { spec: "build:debian:6.12,kconfigs/kasan.config", suite: full }  # cargo test: ignored unless --include-ignored
//! pairs:
//!   - kernel: fixed-6.12
//!     case: unclean_passthrough
//!     outcome: fixed                 # a tag for people: fixed | unfixed | vulnerable | …
//!     verdict: pass                  # pass | fail
//!     classify: { passthrough: "refused: unclean shutdown (can_resume)" }
//!     cache_target: 2.4.0            # optional
//!     failure: data loss             # optional: text a failure of the verdict must contain,
//!                                    # or a list of alternatives (any one must be there):
//!                                    # failure: [kernel splat, data loss]
//! ```

use crate::case;
use crate::check::{Status, Verdict};
use crate::event::Event;
use crate::yaml::{CaseError, Seg};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub mod ci;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Matrix {
    pub kernels: BTreeMap<String, KernelEntry>,
    pub pairs: Vec<Pair>,
}

impl Matrix {
    /// The kernels' names, in the file's (sorted) order: one GitHub job each.
    pub fn kernel_names(&self) -> Vec<&str> {
        self.kernels.keys().map(String::as_str).collect()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KernelEntry {
    pub spec: String,
    #[serde(default)]
    pub note: Option<String>,
    /// `full`: the kernel is costly to get (a KASAN build: 26 min cold on 2 cores), so
    /// `cargo test` lists its pairs as ignored and runs them with `-- --include-ignored`; the
    /// `matrix` command and the GitHub workflow run every kernel.
    #[serde(default)]
    pub suite: Suite,
}

/// Which test suite a matrix kernel (or pair) belongs to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Suite {
    #[default]
    Default,
    Full,
}

impl Suite {
    fn is_default(&self) -> bool {
        *self == Suite::Default
    }
}

impl Matrix {
    /// Whether `cargo test` runs this pair only in the full suite: its kernel or the pair
    /// itself says `suite: full`.
    pub fn full_suite_only(&self, p: &Pair) -> bool {
        p.suite == Suite::Full
            || self
                .kernels
                .get(&p.kernel)
                .is_some_and(|k| k.suite == Suite::Full)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VerdictExpect {
    Pass,
    Fail,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pair {
    pub kernel: String,
    pub case: String,
    pub outcome: String,
    pub verdict: VerdictExpect,
    #[serde(default)]
    pub classify: BTreeMap<String, String>,
    #[serde(default)]
    pub cache_target: Option<String>,
    /// `full`: the pair runs only in the full suite (`cargo test -- --include-ignored`, the
    /// `matrix` command, the workflow), like every pair of a `suite: full` kernel: measured and
    /// re-checked, but kept out of `cargo test`'s default set so `.ci/run` fits its budget.
    #[serde(default, skip_serializing_if = "Suite::is_default")]
    pub suite: Suite,
    /// Texts of which at least one failure of the verdict must contain one (empty: no demand).
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub failure: Vec<String>,
    /// A race on a kernel that lacks the fix: the pair expects FAIL and is as expected when
    /// one of up to N runs gives the expected outcome (the first that does ends it); every
    /// attempt is reported.  Only for `verdict: fail` (a PASS must hold every time).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub attempts: usize,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// `failure: data loss` or `failure: [kernel splat, data loss]`: a racy kernel may show its
/// defect in more than one measured way, and the pair names each way it was seen.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl Pair {
    pub fn id(&self) -> String {
        format!("{}@{}", self.case, self.kernel)
    }
}

/// Parses and checks a matrix (kernel names defined, cases exist).
pub fn parse(text: &str, file: &str) -> Result<Matrix, CaseError> {
    let m: Matrix = crate::yaml::from_yaml(text, file)?;
    for (i, p) in m.pairs.iter().enumerate() {
        let err = |key, msg| {
            Err(CaseError::at(
                text,
                file,
                &[Seg::Key("pairs"), Seg::Index(i), Seg::Key(key)],
                msg,
            ))
        };
        if !m.kernels.contains_key(&p.kernel) {
            return err(
                "kernel",
                format!(
                    "pairs[{i}]: kernel `{}` is not defined under `kernels:`",
                    p.kernel
                ),
            );
        }
        if p.attempts == 0 || (p.attempts > 1 && p.verdict != VerdictExpect::Fail) {
            return err(
                "attempts",
                format!(
                    "pairs[{i}].attempts: {} — at least 1, and more only for `verdict: fail` (a PASS must hold every time)",
                    p.attempts
                ),
            );
        }
    }
    Ok(m)
}

impl Matrix {
    /// The pairs of these kernels only.
    pub fn only(mut self, kernels: &[String]) -> Result<Matrix> {
        for k in kernels {
            anyhow::ensure!(
                self.kernels.contains_key(k),
                "--only {k}: no such kernel in the matrix (have: {})",
                self.kernels.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        self.pairs.retain(|p| kernels.contains(&p.kernel));
        Ok(self)
    }

    /// The pairs of these cases only.
    pub fn only_cases(mut self, cases: &[String]) -> Result<Matrix> {
        for c in cases {
            anyhow::ensure!(
                self.pairs.iter().any(|p| &p.case == c),
                "--cases {c}: no pair of the matrix runs it"
            );
        }
        self.pairs.retain(|p| cases.contains(&p.case));
        Ok(self)
    }
}

/// Paths inside `build:` specs are relative to the matrix file's directory.
fn anchor_spec(spec: &str, dir: &Path) -> String {
    match crate::kernel::KernelSpec::parse(spec) {
        Ok(k @ crate::kernel::KernelSpec::Build { .. }) => k.anchored(dir).render(),
        _ => spec.to_string(),
    }
}

pub fn load(path: &Path) -> Result<Matrix> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut m = parse(&text, &path.display().to_string())?;
    let dir = path.parent().unwrap_or(Path::new("."));
    for k in m.kernels.values_mut() {
        k.spec = anchor_spec(&k.spec, dir);
    }
    for p in &m.pairs {
        case::find(&p.case).with_context(|| format!("{}: pair {}", path.display(), p.id()))?;
    }
    Ok(m)
}

/// Differences between what a pair expects and what its verdict says (empty = as expected).
pub fn judge(pair: &Pair, v: &Verdict) -> Vec<String> {
    let mut out = Vec::new();
    match (pair.verdict, v.status) {
        (_, Status::Infra) => out.push(format!(
            "could not run: {}",
            v.failures
                .first()
                .map(|f| f.what.as_str())
                .unwrap_or("infrastructure failure")
        )),
        (VerdictExpect::Pass, Status::Fail) => out.push(format!(
            "expected PASS, got FAIL: {}",
            v.failures
                .iter()
                .map(|f| f.what.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        )),
        (VerdictExpect::Fail, Status::Pass) => out.push("expected FAIL, got PASS".into()),
        _ => {}
    }
    for (name, want) in &pair.classify {
        let got = v
            .classifications
            .get(name)
            .map(|c| c.label.as_str())
            .unwrap_or("(not classified)");
        if got != want {
            out.push(format!("{name}: expected `{want}`, got `{got}`"));
        }
    }
    if let Some(t) = &pair.cache_target {
        let got = v.cache_target.as_deref().unwrap_or("?");
        if got != t.trim_start_matches('v') {
            out.push(format!("cache target: expected {t}, got {got}"));
        }
    }
    let seen = |f: &String| v.failures.iter().any(|x| x.what.contains(f.as_str()));
    if !pair.failure.is_empty() && !pair.failure.iter().any(seen) {
        out.push(format!(
            "expected a failure mentioning {}",
            pair.failure
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    }
    out
}

/// A short description of what a verdict says, for tables.
pub fn describe(v: &Verdict) -> String {
    let labels: Vec<String> = v
        .classifications
        .values()
        .map(|c| c.label.clone())
        .collect();
    let status = match v.status {
        Status::Pass => "PASS",
        Status::Fail => "FAIL",
        Status::Infra => "ERROR",
    };
    let mut s = format!("{status} {}", labels.join(", "));
    if v.status == Status::Fail {
        if let Some(f) = v.failures.iter().find(|f| f.what.starts_with("data loss")) {
            s += &format!(" — {}", f.what.split(':').next().unwrap_or("data loss"));
        } else if v.failures.iter().any(|f| f.what.contains("kernel splat")) {
            s += " — kernel splat";
        } else if v.failures.iter().any(|f| f.what.starts_with("stale data")) {
            s += " — stale data";
        }
    }
    s.trim().to_string()
}

/// All runs of one pair.
#[derive(Debug, Clone, Serialize)]
pub struct PairResult {
    pub pair: Pair,
    pub spec: String,
    pub runs: Vec<Verdict>,
    /// Per run, what differed from the expectation.
    pub mismatches: Vec<Vec<String>>,
    /// Host errors that kept runs of this pair from a verdict (the kernel could not be
    /// fetched or built, the case file is invalid, the run was interrupted …), each once,
    /// prefixed with the runs it concerns unless it concerns all of them.
    pub errors: Vec<String>,
}

impl PairResult {
    /// Every run as expected; for a race (`attempts:` above 1), one run as expected.
    pub fn ok(&self) -> bool {
        let matched = if self.pair.attempts > 1 {
            self.mismatches.iter().any(|m| m.is_empty())
        } else {
            self.mismatches.iter().all(|m| m.is_empty())
        };
        !self.runs.is_empty() && self.errors.is_empty() && matched
    }
    /// A host error or a run that could not judge the case (infrastructure).
    pub fn errored(&self) -> bool {
        !self.errors.is_empty() || self.runs.iter().any(|v| v.status == Status::Infra)
    }
    /// Runs that disagree with each other (status or labels).
    pub fn flaky(&self) -> bool {
        let mut d: Vec<String> = self.runs.iter().map(describe).collect();
        d.dedup();
        d.len() > 1
    }
    /// (min, median, max) seconds.
    pub fn durations(&self) -> (f64, f64, f64) {
        let mut t: Vec<f64> = self.runs.iter().map(|v| v.seconds).collect();
        if t.is_empty() {
            return (0.0, 0.0, 0.0);
        }
        t.sort_by(|a, b| a.total_cmp(b));
        (t[0], t[t.len() / 2], t[t.len() - 1])
    }
}

/// The matrix command's exit status: 2 if a pair could not be judged (a host error, an
/// infrastructure failure, an interrupt), else 1 if a pair differs from its expectation, else 0.
pub fn exit_code(results: &[PairResult]) -> i32 {
    if results.iter().any(PairResult::errored) {
        2
    } else if results.iter().any(|r| !r.ok()) {
        1
    } else {
        0
    }
}

/// Default parallelism: one VM per core, at most one per 2 GiB of memory.
pub fn default_jobs() -> usize {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| (kb / (1 << 20)) as usize)
        .unwrap_or(2);
    cpus.min(mem_gib / 2).max(1)
}

/// Runs every pair `repeat` times with `jobs` VMs at a time.  Kernels are resolved (fetched,
/// built) first, one at a time.  `ui` gets a label and the events of each job.  Nothing is
/// discarded: a kernel that cannot be had, a case that does not load or a run that fails on
/// the host becomes an error of the pairs it concerns, and every other pair is run and judged.
pub fn run(
    m: &Matrix,
    jobs: usize,
    repeat: usize,
    base: &crate::run::RunOptions,
    ui: &(dyn Fn(&str, Event) + Sync),
) -> Vec<PairResult> {
    type Prepared = std::result::Result<(crate::kernel::Kernel, crate::vm::Accel), String>;
    let mut kernels: BTreeMap<String, Prepared> = BTreeMap::new();
    for (name, k) in &m.kernels {
        if !m.pairs.iter().any(|p| &p.kernel == name) {
            continue;
        }
        let label = format!("kernel {name}");
        ui(&label, Event::Prepare(k.spec.clone()));
        let prepared = (|| -> Result<_> {
            if crate::vm::INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
                anyhow::bail!("interrupted");
            }
            let (resolved, accel, notice) =
                crate::kernel::prepare(&k.spec, &mut |e| ui(&label, e))?;
            if let Some(n) = notice {
                ui(&label, Event::Notice(n));
            }
            Ok((resolved, accel))
        })()
        .map_err(|e| format!("kernel {name} ({}): {e:#}", k.spec));
        if let Err(e) = &prepared {
            ui(&label, Event::Warning(format!("error: {e}")));
        }
        ui(&label, Event::JobEnd(String::new()));
        kernels.insert(name.clone(), prepared);
    }
    let cases: BTreeMap<&str, std::result::Result<case::Case, String>> = m
        .pairs
        .iter()
        .map(|p| {
            let c = case::find(&p.case)
                .and_then(|f| case::load(&f))
                .map_err(|e| format!("case {}: {e:#}", p.case));
            (p.case.as_str(), c)
        })
        .collect();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let per_vm_cpus = (cpus / jobs.max(1)).max(1) as u32;
    run_pairs(m, jobs, repeat, ui, &|pair, label| {
        let (kernel, accel) = kernels[&pair.kernel]
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let case = cases[pair.case.as_str()]
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut opts = base.clone();
        opts.accel = *accel;
        opts.cpus = opts
            .cpus
            .or(Some(per_vm_cpus.min(crate::run::default_cpus(*accel))));
        let out = crate::run::run_case(case, kernel, &opts, &mut |e| ui(label, e))?;
        Ok(crate::check::evaluate(case, &out))
    })
}

/// One run of one pair: the pair and its progress label; a verdict or a host error.
pub type RunOne<'a> = dyn Fn(&Pair, &str) -> Result<Verdict> + Sync + 'a;

/// The scheduler behind [`run`], with the per-run work injected: `jobs` workers take
/// (pair, repeat) jobs off one queue; an `Err` from `run_one` becomes that pair's error
/// (the other pairs go on), and runs never started because of an interrupt are recorded
/// as such.  Results are in matrix order.
pub fn run_pairs(
    m: &Matrix,
    jobs: usize,
    repeat: usize,
    ui: &(dyn Fn(&str, Event) + Sync),
    run_one: &RunOne,
) -> Vec<PairResult> {
    use std::sync::Mutex;
    let repeat = repeat.max(1);
    let queue: Mutex<Vec<(usize, usize)>> = Mutex::new(
        (0..repeat)
            .flat_map(|r| (0..m.pairs.len()).map(move |i| (i, r)))
            .rev()
            .collect(),
    );
    type Slot = Option<std::result::Result<Verdict, String>>;
    let results: Mutex<Vec<Vec<Slot>>> = Mutex::new(vec![vec![None; repeat]; m.pairs.len()]);
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                if crate::vm::INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let Some((i, r)) = queue.lock().unwrap().pop() else {
                    break;
                };
                let pair = &m.pairs[i];
                let label = if repeat > 1 {
                    format!("{} #{}", pair.id(), r + 1)
                } else {
                    pair.id()
                };
                let got = run_one(pair, &label).map_err(|e| format!("{e:#}"));
                if let Err(e) = &got {
                    ui(&label, Event::Warning(format!("error: {e}")));
                }
                ui(&label, Event::JobEnd(String::new()));
                results.lock().unwrap()[i][r] = Some(got);
            });
        }
    });
    m.pairs
        .iter()
        .zip(results.into_inner().unwrap())
        .map(|(p, slots)| {
            let mut runs = Vec::new();
            // (message, runs that gave it), in order of first appearance
            let mut failed: Vec<(String, Vec<usize>)> = Vec::new();
            for (r, slot) in slots.into_iter().enumerate() {
                let e = match slot {
                    Some(Ok(v)) => {
                        runs.push(v);
                        continue;
                    }
                    Some(Err(e)) => e,
                    None => "not run: interrupted".to_string(),
                };
                match failed.iter_mut().find(|(m, _)| *m == e) {
                    Some((_, rs)) => rs.push(r + 1),
                    None => failed.push((e, vec![r + 1])),
                }
            }
            let errors = failed
                .into_iter()
                .map(|(e, rs)| {
                    if rs.len() == repeat {
                        e
                    } else {
                        let rs: Vec<String> = rs.iter().map(|r| r.to_string()).collect();
                        format!("run {}: {e}", rs.join(", "))
                    }
                })
                .collect();
            PairResult {
                pair: p.clone(),
                spec: m.kernels[&p.kernel].spec.clone(),
                mismatches: runs.iter().map(|v| judge(p, v)).collect(),
                runs,
                errors,
            }
        })
        .collect()
}

/// The backport-coverage view of a matrix run: kernels as rows, cases as columns, each cell
/// what the kernel did (its classification labels) and whether the case's property held.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Coverage {
    pub cases: Vec<String>,
    pub kernels: Vec<CoverageRow>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CoverageRow {
    pub kernel: String,
    pub spec: String,
    pub release: Option<String>,
    pub cache_target: Option<String>,
    /// By case; a case the matrix does not pair with this kernel has no cell.
    pub cells: BTreeMap<String, CoverageCell>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CoverageCell {
    /// `pass` (the property holds: the fix is there in behaviour), `fail`, or `error`.
    pub verdict: String,
    /// The classification labels and, for a failure, what failed (first run).
    pub result: String,
    /// Whether this is what `matrix.yaml` expects of the pair (every run).
    pub as_expected: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = r#"
kernels:
  k1: { spec: "debian:6.12.117+deb12" }
pairs:
  - kernel: k1
    case: unclean_passthrough
    outcome: unfixed
    verdict: pass
    classify: { passthrough: "refused: dirty mapping" }
"#;

    fn verdict(status: Status, label: &str, failures: &[&str]) -> Verdict {
        let mut classifications = BTreeMap::new();
        classifications.insert(
            "passthrough".to_string(),
            crate::check::Classification {
                label: label.into(),
                status: Some(1),
                evidence: vec![],
            },
        );
        Verdict {
            case: "unclean_passthrough".into(),
            source: None,
            kernel: "k".into(),
            release: Some("6.12".into()),
            cache_target: Some("2.3.0".into()),
            accel: crate::vm::Accel::Tcg,
            tools: BTreeMap::new(),
            status,
            classifications,
            captures: BTreeMap::new(),
            expected: BTreeMap::new(),
            expected_note: None,
            failures: failures
                .iter()
                .map(|f| crate::check::Failure {
                    what: f.to_string(),
                    detail: vec![],
                })
                .collect(),
            boots: vec![],
            seconds: 60.0,
            workdir: None,
        }
    }

    #[test]
    fn judge_compares_verdict_label_target_and_failure() {
        let m = parse(M, "m.yaml").unwrap();
        let p = &m.pairs[0];
        assert!(judge(p, &verdict(Status::Pass, "refused: dirty mapping", &[])).is_empty());
        let got = judge(p, &verdict(Status::Pass, "accepted", &[]));
        assert_eq!(
            got,
            vec!["passthrough: expected `refused: dirty mapping`, got `accepted`"]
        );
        let got = judge(p, &verdict(Status::Fail, "accepted", &["data loss: x"]));
        assert!(
            got[0].starts_with("expected PASS, got FAIL: data loss"),
            "{got:?}"
        );
        let mut neg = p.clone();
        neg.verdict = VerdictExpect::Fail;
        neg.classify.insert("passthrough".into(), "accepted".into());
        neg.failure = vec!["data loss".into()];
        neg.cache_target = Some("2.3.0".into());
        assert!(judge(&neg, &verdict(Status::Fail, "accepted", &["data loss: x"])).is_empty());
        assert_eq!(
            judge(&neg, &verdict(Status::Fail, "accepted", &["hang"])).len(),
            1
        );
        let infra = judge(
            p,
            &verdict(
                Status::Infra,
                "refused: dirty mapping",
                &["boot 1: never started"],
            ),
        );
        assert_eq!(infra, vec!["could not run: boot 1: never started"]);
    }

    #[test]
    fn failure_alternatives_need_one_of_them() {
        let text = M.replace(
            "    verdict: pass",
            "    verdict: fail\n    failure: [kernel splat, data loss]",
        );
        let m = parse(&text, "m.yaml").unwrap();
        let p = &m.pairs[0];
        assert_eq!(p.failure, vec!["kernel splat", "data loss"]);
        let v = |f: &str| verdict(Status::Fail, "refused: dirty mapping", &[f]);
        assert!(judge(p, &v("data loss: tail lost")).is_empty());
        assert!(judge(p, &v("kernel splat in step 10")).is_empty());
        assert_eq!(
            judge(p, &v("hang")),
            vec!["expected a failure mentioning `kernel splat` or `data loss`"]
        );
        let one = parse(
            &M.replace("    verdict: pass", "    verdict: fail\n    failure: hang"),
            "m.yaml",
        );
        assert_eq!(one.unwrap().pairs[0].failure, vec!["hang"]);
    }

    #[test]
    fn flakiness_and_durations() {
        let m = parse(M, "m.yaml").unwrap();
        let mut r = PairResult {
            pair: m.pairs[0].clone(),
            spec: "debian:6.12".into(),
            runs: vec![verdict(Status::Pass, "refused: dirty mapping", &[]); 3],
            mismatches: vec![vec![]; 3],
            errors: vec![],
        };
        r.runs[1].seconds = 50.0;
        r.runs[2].seconds = 90.0;
        assert!(r.ok() && !r.flaky());
        assert_eq!(r.durations(), (50.0, 60.0, 90.0));
        r.runs[2] = verdict(Status::Pass, "accepted", &[]);
        assert!(r.flaky());
    }

    #[test]
    fn the_table_is_as_wide_as_its_longest_kernel_name() {
        let m = parse(M, "m.yaml").unwrap();
        let row = |kernel: &str| {
            let mut pair = m.pairs[0].clone();
            pair.kernel = kernel.into();
            PairResult {
                pair,
                spec: "debian:6.12".into(),
                runs: vec![verdict(Status::Pass, "accepted", &[])],
                mismatches: vec![vec![]],
                errors: vec![],
            }
        };
        let table = crate::report::matrix_table(&[row("short"), row("tree-6.18.15-fixed")]);
        let case_column: Vec<usize> = table
            .lines()
            .take(3)
            .map(|l| {
                l.find(if l.starts_with("kernel") {
                    "case"
                } else {
                    "unclean"
                })
                .unwrap()
            })
            .collect();
        assert_eq!(case_column, vec![19, 19, 19], "{table}");
    }

    #[test]
    fn coverage_has_kernels_as_rows_and_cases_as_columns() {
        let m = parse(M, "m.yaml").unwrap();
        let result = |kernel: &str, case: &str, v: Verdict| {
            let mut pair = m.pairs[0].clone();
            pair.kernel = kernel.into();
            pair.case = case.into();
            let mismatches = vec![judge(&pair, &v)];
            PairResult {
                pair,
                spec: format!("debian:{kernel}"),
                runs: vec![v],
                mismatches,
                errors: vec![],
            }
        };
        let rs = vec![
            result(
                "old",
                "seed",
                verdict(Status::Fail, "accepted", &["data loss: x"]),
            ),
            result(
                "new",
                "seed",
                verdict(Status::Pass, "refused: dirty mapping", &[]),
            ),
            result(
                "new",
                "shrink",
                verdict(Status::Pass, "refused: dirty mapping", &[]),
            ),
        ];
        let c = crate::report::coverage(&rs);
        assert_eq!(c.cases, vec!["seed", "shrink"]);
        assert_eq!(
            c.kernels
                .iter()
                .map(|k| k.kernel.as_str())
                .collect::<Vec<_>>(),
            vec!["new", "old"]
        );
        let old = &c.kernels[1].cells["seed"];
        assert_eq!((old.verdict.as_str(), old.as_expected), ("fail", false));
        assert_eq!(old.result, "accepted — data loss");
        let splat = verdict(
            Status::Fail,
            "accepted",
            &["boot 2: kernel splat during step 10"],
        );
        assert_eq!(describe(&splat), "FAIL accepted — kernel splat");
        assert!(!c.kernels[1].cells.contains_key("shrink"));
        let md = crate::report::coverage_markdown(&c);
        assert!(
            md.contains(
                "| new | 6.12 | 2.3.0 | ✅ refused: dirty mapping | ✅ refused: dirty mapping |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| old | 6.12 | 2.3.0 | ❌ accepted — data loss (!) | · |"),
            "{md}"
        );
        let json: serde_json::Value = serde_json::from_str(&crate::report::to_json(&c)).unwrap();
        assert_eq!(json["kernels"][0]["cells"]["shrink"]["verdict"], "pass");
    }

    #[test]
    fn build_specs_are_anchored_at_the_matrix_file() {
        let d = Path::new("/repo");
        assert_eq!(
            anchor_spec("build:debian:6.12,patches/a.patch", d),
            "build:debian:6.12,/repo/patches/a.patch"
        );
        assert_eq!(
            anchor_spec("build:src,/abs.patch", d),
            "build:/repo/src,/abs.patch"
        );
        assert_eq!(anchor_spec("debian:6.1.0-56", d), "debian:6.1.0-56");
    }

    #[test]
    fn full_suite_by_kernel_or_by_pair() {
        let text = format!(
            "{}  - {{ kernel: k1, case: c, outcome: o, verdict: pass, suite: full }}\n",
            M.trim_start()
        );
        let m = parse(&text, "m.yaml").unwrap();
        assert!(!m.full_suite_only(&m.pairs[0]));
        assert!(m.full_suite_only(&m.pairs[1]));
        let mut k = m.clone();
        k.kernels.get_mut("k1").unwrap().suite = Suite::Full;
        assert!(k.full_suite_only(&k.pairs[0]));
        let e = parse(&text.replace("suite: full", "suite: nightly"), "m.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("m.yaml:9:62: pairs[1].suite: unknown variant `nightly`"),
            "{e}"
        );
    }

    #[test]
    fn only_filters_kernels() {
        let m = parse(M, "m.yaml").unwrap();
        assert_eq!(m.clone().only(&["k1".into()]).unwrap().pairs.len(), 1);
        assert!(m
            .only(&["zz".into()])
            .unwrap_err()
            .to_string()
            .contains("no such kernel"));
    }

    #[test]
    fn only_cases_filters_pairs() {
        let m = parse(M, "m.yaml").unwrap();
        let cases = |c: &str| m.clone().only_cases(&[c.to_string()]);
        assert_eq!(cases("unclean_passthrough").unwrap().pairs.len(), 1);
        let e = cases("clean_passthrough").unwrap_err().to_string();
        assert!(e.contains("--cases clean_passthrough: no pair"), "{e}");
    }

    #[test]
    fn attempts_only_for_an_expected_failure() {
        let text = "kernels:\n  k1: { spec: \"debian:6.12\" }\npairs:\n  - { kernel: k1, case: c, outcome: o, verdict: fail, attempts: 3 }\n";
        assert_eq!(parse(text, "m.yaml").unwrap().pairs[0].attempts, 3);
        let e = parse(&text.replace("fail", "pass"), "m.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("m.yaml:4:") && e.contains("only for `verdict: fail`"),
            "{e}"
        );
        let e = parse(&text.replace("3", "0"), "m.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("attempts: 0"), "{e}");
        let one = parse(&text.replace(", attempts: 3", ""), "m.yaml").unwrap();
        assert_eq!(one.pairs[0].attempts, 1);
    }

    #[test]
    fn parse_and_reject_unknown_kernel() {
        let m = parse(M, "m.yaml").unwrap();
        assert_eq!(m.pairs[0].id(), "unclean_passthrough@k1");
        let e = parse(&M.replace("kernel: k1", "kernel: k2"), "m.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kernel `k2` is not defined"), "{e}");
        assert!(e.starts_with("m.yaml:5:13:"), "{e}");
        // The node itself, not the first line that mentions the name (a comment, a second
        // pair of the same kernel, a flow mapping).
        let text = format!(
            "# kernel: k2 is planned\n{}  - {{ kernel: k1, case: c, outcome: o, verdict: pass }}\n  - {{ case: c, kernel: k2, outcome: o, verdict: pass }}\n",
            M.trim_start()
        );
        let e = parse(&text, "m.yaml").unwrap_err().to_string();
        assert!(e.starts_with("m.yaml:11:24: pairs[2]: kernel `k2`"), "{e}");
        let e = parse(&M.replace("verdict: pass", "verdict: maybe"), "m.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("m.yaml:8:14:"), "{e}");
    }

    const TWO: &str = r#"
kernels:
  good: { spec: "debian:6.12.117+deb12" }
  gone: { spec: "debian:9.9" }
pairs:
  - kernel: good
    case: unclean_passthrough
    outcome: unfixed
    verdict: pass
    classify: { passthrough: "refused: dirty mapping" }
  - kernel: gone
    case: unclean_passthrough
    outcome: unfixed
    verdict: pass
  - kernel: good
    case: unclean_passthrough_empty
    outcome: unfixed
    verdict: pass
"#;

    #[test]
    fn a_host_error_is_that_pairs_error_row_and_the_others_are_kept() {
        let m = parse(TWO, "m.yaml").unwrap();
        let for_pair = |p: &Pair, _label: &str| -> Result<Verdict> {
            if p.kernel == "gone" {
                anyhow::bail!("kernel gone (debian:9.9): apt knows no linux-image-9.9")
            }
            Ok(verdict(Status::Pass, "refused: dirty mapping", &[]))
        };
        for repeat in [1, 2] {
            let results = run_pairs(&m, 2, repeat, &|_, _| {}, &for_pair);
            assert_eq!(results.len(), 3);
            let (good, gone) = (&results[0], &results[1]);
            assert!(good.ok() && !good.errored(), "{good:?}");
            assert_eq!(good.runs.len(), repeat);
            assert!(results[2].ok());
            assert!(gone.runs.is_empty() && !gone.ok() && gone.errored());
            assert_eq!(
                gone.errors,
                vec!["kernel gone (debian:9.9): apt knows no linux-image-9.9"]
            );
            assert_eq!(exit_code(&results), 2);

            // every report has the error row and the pairs that ran
            let table = crate::report::matrix_table(&results);
            let rows: Vec<&str> = table.lines().collect();
            assert!(
                rows[1].starts_with("good") && rows[1].ends_with("✓"),
                "{table}"
            );
            assert!(
                rows[2].starts_with("gone") && rows[2].contains("ERROR kernel gone"),
                "{table}"
            );
            assert!(rows[2].ends_with("✗ ERROR"), "{table}");
            assert!(rows[3].ends_with("✓"), "{table}");
            assert!(
                table.contains("unclean_passthrough@gone error: "),
                "{table}"
            );
            let md = crate::report::matrix_markdown(&results);
            assert!(
                md.contains("| gone | unclean_passthrough | unfixed (pass) | ERROR kernel gone"),
                "{md}"
            );
            assert!(
                md.contains("❌ error") && md.matches("✅").count() == 2,
                "{md}"
            );
            assert!(md.contains("- error: "), "{md}");
            let junit = crate::report::matrix_junit(&results);
            assert_eq!(junit.matches("<error").count(), 1, "{junit}");
            assert!(junit.contains("apt knows no linux-image-9.9"), "{junit}");
            assert_eq!(
                junit.matches("<testcase").count(),
                2 * repeat + 1,
                "{junit}"
            );
            let json: serde_json::Value =
                serde_json::from_str(&crate::report::to_json(&results)).unwrap();
            assert_eq!(json[1]["errors"].as_array().unwrap().len(), 1);
            assert_eq!(json[0]["runs"].as_array().unwrap().len(), repeat);
            let cov = crate::report::coverage(&results);
            let gone_row = cov.kernels.iter().find(|k| k.kernel == "gone").unwrap();
            let cell = &gone_row.cells["unclean_passthrough"];
            assert_eq!(cell.verdict, "error", "{cell:?}");
            assert!(!cell.as_expected);
            let cmd = crate::report::coverage_markdown(&cov);
            let line = cmd.lines().find(|l| l.starts_with("| gone")).unwrap();
            assert!(line.contains("⚠️") && line.contains("(!)"), "{cmd}");
            assert!(
                cmd.lines()
                    .any(|l| l.starts_with("| good") && l.contains("✅")),
                "{cmd}"
            );
        }
    }

    #[test]
    fn an_error_of_some_runs_names_them() {
        let m = parse(TWO, "m.yaml")
            .unwrap()
            .only(&["good".into()])
            .unwrap();
        let n = std::sync::atomic::AtomicUsize::new(0);
        let second_fails = |_: &Pair, label: &str| -> Result<Verdict> {
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if label.ends_with("#2") {
                anyhow::bail!("cannot create a work dir in /tmp: No space left on device")
            }
            Ok(verdict(Status::Pass, "refused: dirty mapping", &[]))
        };
        let results = run_pairs(&m, 1, 3, &|_, _| {}, &second_fails);
        assert_eq!(n.into_inner(), 6);
        assert_eq!(results[0].runs.len(), 2);
        assert_eq!(
            results[0].errors,
            vec!["run 2: cannot create a work dir in /tmp: No space left on device"]
        );
        assert_eq!(exit_code(&results), 2);
    }

    #[test]
    fn mismatches_exit_1_and_infrastructure_exits_2() {
        let m = parse(TWO, "m.yaml").unwrap();
        let only_good = m.clone().only(&["good".into()]).unwrap();
        let accepted = |_: &Pair, _: &str| Ok(verdict(Status::Pass, "accepted", &[]));
        assert_eq!(
            exit_code(&run_pairs(&only_good, 1, 1, &|_, _| {}, &accepted)),
            1
        );
        let infra = |_: &Pair, _: &str| Ok(verdict(Status::Infra, "", &["boot 1: never started"]));
        assert_eq!(
            exit_code(&run_pairs(&only_good, 1, 1, &|_, _| {}, &infra)),
            2
        );
        let fine = |_: &Pair, _: &str| Ok(verdict(Status::Pass, "refused: dirty mapping", &[]));
        assert_eq!(
            exit_code(&run_pairs(&only_good, 1, 1, &|_, _| {}, &fine)),
            0
        );
    }

    #[test]
    fn kernels_and_cases_that_cannot_be_had_become_error_rows_without_a_vm() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("bzImage");
        std::fs::write(&junk, "not a kernel").unwrap();
        let text = format!(
            r#"
kernels:
  missing: {{ spec: "{}/no-such-bzImage" }}
  junk: {{ spec: "{}" }}
pairs:
  - {{ kernel: missing, case: unclean_passthrough, outcome: unfixed, verdict: pass }}
  - {{ kernel: junk, case: unclean_passthrough, outcome: unfixed, verdict: pass }}
  - {{ kernel: junk, case: no_such_case, outcome: unfixed, verdict: pass }}
"#,
            dir.path().display(),
            junk.display()
        );
        let m = parse(&text, "m.yaml").unwrap();
        let opts = crate::run::RunOptions::new(crate::vm::Accel::Tcg);
        let results = run(&m, 2, 1, &opts, &|_, _| {});
        assert_eq!(results.len(), 3);
        assert!(results.iter().all(|r| r.runs.is_empty() && r.errored()));
        assert!(
            results[0].errors[0].starts_with("kernel missing ("),
            "{:?}",
            results[0].errors
        );
        assert!(
            results[0].errors[0].contains("does not exist"),
            "{:?}",
            results[0].errors
        );
        assert!(
            results[1].errors[0].starts_with("kernel junk ("),
            "{:?}",
            results[1].errors
        );
        assert_eq!(
            results[1].errors, results[2].errors,
            "the kernel fails first"
        );
        assert_eq!(exit_code(&results), 2);
    }
}
