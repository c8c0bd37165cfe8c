//! Every case in `cases/` on every test kernel, in real VMs (libtest-mimic: one trial per
//! case × kernel).  A trial passes when the verdict is PASS, i.e. the case's outcome is the one
//! it declares for that kernel.  Then the same recorded run is judged against a deliberately
//! wrong expectation, which must FAIL with a readable reason (so the verdict can fail).
//!
//! Kernels: `$DMCACHE_VMTEST_TEST_KERNELS` (comma-separated specs), default
//! `debian:6.12.117+deb12,debian:6.1.0-56`.  A missing QEMU/vng/kernel fails the trial with
//! the reason; nothing is skipped.

use dmcache_vmtest::case::{self, Case, OneOrMany};
use dmcache_vmtest::check::{self, Status};
use dmcache_vmtest::{kernel, report, run, vm};
use libtest_mimic::{Arguments, Failed, Trial};
use std::path::{Path, PathBuf};

const DEFAULT_KERNELS: &str = "debian:6.12.117+deb12,debian:6.1.0-56";

fn kernels() -> Vec<String> {
    std::env::var("DMCACHE_VMTEST_TEST_KERNELS")
        .unwrap_or_else(|_| DEFAULT_KERNELS.into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A copy of `case` whose every expectation rule allows only labels other than the observed ones.
fn wrong_expectation(case: &Case, observed: &std::collections::BTreeMap<String, String>) -> Case {
    let mut c = case.clone();
    for rule in &mut c.expect {
        for (name, allowed) in rule.classify.iter_mut() {
            let Some(got) = observed.get(name) else { continue };
            let labels: Vec<String> = case
                .all_steps()
                .filter(|(_, _, s)| s.classify.as_deref() == Some(name))
                .flat_map(|(_, _, s)| s.outcomes.iter().map(|o| o.label.clone()))
                .filter(|l| l != got)
                .collect();
            *allowed = OneOrMany::Many(labels);
        }
    }
    c
}

fn run_trial(path: &Path, spec: &str) -> Result<(), Failed> {
    let case = case::load(path).map_err(|e| format!("{e:#}"))?;
    let parsed = kernel::KernelSpec::parse(spec).map_err(|e| format!("{e:#}"))?;
    let k = kernel::resolve(&parsed, spec, &mut |m| eprintln!("[{spec}] {m}"))
        .map_err(|e| format!("cannot get kernel {spec}: {e:#}"))?;
    let (accel, notice) = vm::choose_accel(&k.image).map_err(|e| format!("{e:#}"))?;
    if let Some(n) = notice {
        eprintln!("[{spec}] note: {n}");
    }
    let mut opts = run::RunOptions::new(accel);
    opts.keep = std::env::var_os("DMCACHE_VMTEST_KEEP").is_some();
    let label = format!("{}@{spec}", case.name);
    let outcome = run::run_case(&case, &k, &opts, &mut |e| {
        if let run::Event::BootEnd { boot, end, seconds } = e {
            eprintln!("[{label}] boot {}: {} ({seconds:.1} s)", boot + 1, end.describe());
        } else if let run::Event::Notice(n) = e {
            eprintln!("[{label}] note: {n}");
        }
    })
    .map_err(|e| format!("{e:#}"))?;
    let verdict = check::evaluate(&case, &outcome);
    let text = report::render(&verdict, true);
    eprintln!("{text}");
    if verdict.status != Status::Pass {
        return Err(format!("{} on {spec}:\n{text}", status_name(verdict.status)).into());
    }
    // The same run against a wrong expectation must fail, naming the classification.
    let observed = verdict
        .classifications
        .iter()
        .map(|(k, c)| (k.clone(), c.label.clone()))
        .collect();
    if !verdict.classifications.is_empty() {
        let wrong = wrong_expectation(&case, &observed);
        let v2 = check::evaluate(&wrong, &outcome);
        let reason = v2.failures.iter().map(|f| f.what.clone()).collect::<Vec<_>>().join("; ");
        if v2.status != Status::Fail || !reason.contains("is expected to give") {
            return Err(format!("a wrong expectation did not make the case fail: {:?} {reason}", v2.status).into());
        }
    }
    Ok(())
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Pass => "PASS",
        Status::Fail => "FAIL",
        Status::Infra => "INFRASTRUCTURE ERROR",
    }
}

fn main() {
    let args = Arguments::from_args();
    let cases: Vec<(String, PathBuf)> = case::list().expect("cannot list cases/");
    let mut trials = Vec::new();
    for (name, path) in cases {
        for spec in kernels() {
            let p = path.clone();
            trials.push(Trial::test(format!("vm::{name}@{spec}"), move || run_trial(&p, &spec)));
        }
    }
    libtest_mimic::run(&args, trials).exit();
}
