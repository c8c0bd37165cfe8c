//! The verdict: step expectations, captures, classifications, case assertions, the expected
//! outcome for this kernel, and the per-boot kernel log check (panic, oops, BUG, WARN).
//! Pure: takes a [`CaseRun`] (what happened) and the [`Case`] (what must hold).

use crate::case::{Assertion, Case, Check, KernelFacts};
use crate::guest::BootRecord;
use crate::replay::{self, tail, Defined, StepState};
use crate::run::{BootEnd, CaseRun};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    /// The run could not judge the case (VM never booted, kernel without dm-cache …).
    Infra,
}

impl Status {
    pub fn exit_code(self) -> i32 {
        match self {
            Status::Pass => 0,
            Status::Fail => 1,
            Status::Infra => 2,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub what: String,
    /// Evidence: stderr, kernel log lines, console lines.
    pub detail: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepSummary {
    pub label: String,
    /// `None`: did not run (skipped by `when`/`unless`, or never reached).
    pub status: Option<i32>,
    pub ok: bool,
    pub skipped: bool,
    pub seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BootSummary {
    pub name: String,
    pub end: BootEnd,
    pub seconds: f64,
    pub attempts: u32,
    pub console_log: String,
    pub steps: Vec<StepSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Classification {
    pub label: String,
    /// Exit status of the classified command; `None` when it never finished (the kernel
    /// panicked or the VM was stopped after a splat during it: the label then comes from a
    /// kernel-log-only outcome, see [`crate::replay::classify_unfinished`]).
    pub status: Option<i32>,
    /// The kernel log lines it printed (the refusal message, if any).
    pub evidence: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub case: String,
    /// Where the case comes from (its `source:`: a commit, a mail).
    pub source: Option<String>,
    pub kernel: String,
    pub release: Option<String>,
    pub cache_target: Option<String>,
    pub accel: crate::vm::Accel,
    pub tools: BTreeMap<String, String>,
    pub status: Status,
    pub classifications: BTreeMap<String, Classification>,
    pub captures: BTreeMap<String, String>,
    /// The expectation rule that applied (allowed labels per classification).
    pub expected: BTreeMap<String, Vec<String>>,
    pub expected_note: Option<String>,
    pub failures: Vec<Failure>,
    pub boots: Vec<BootSummary>,
    pub seconds: f64,
    pub workdir: Option<String>,
}

/// Splats in the guest's own kernel log that the console did not show: console output can
/// be filtered (log levels, a console= elsewhere), the kernel's ring buffer is not.
fn guest_log_splats(
    b: usize,
    boot: &crate::case::Boot,
    out: &crate::run::BootOutcome,
) -> Vec<Failure> {
    let Some(log) = out.record.klog.as_deref() else {
        return vec![];
    };
    crate::console::scan(log)
        .splats
        .into_iter()
        .filter(|g| !out.scan.splats.iter().any(|c| c == g))
        .map(|s| Failure {
            what: format!(
                "boot {} `{}`: kernel splat (in the guest's kernel log, not on the console): {s}",
                b + 1,
                boot.name
            ),
            detail: crate::console::context(log, &s, 2, 12),
        })
        .collect()
}

/// The expectation is picked by what the guest reports; the host knows the release of the
/// kernel it booted (from the image's header), and the two must agree.
fn release_mismatches(run: &CaseRun) -> Vec<Failure> {
    let Some(host) = run.kernel.release.as_deref() else {
        return vec![];
    };
    run.boots
        .iter()
        .enumerate()
        .filter_map(|(b, o)| {
            let guest = o.record.release.as_deref().filter(|g| *g != host)?;
            Some(Failure {
                what: format!(
                    "boot {} `{}`: the guest reports release `{guest}`, but the kernel booted is `{host}`",
                    b + 1,
                    o.name
                ),
                detail: vec![],
            })
        })
        .collect()
}

fn assertion_text(a: &Assertion) -> String {
    match &a.check {
        Check::Equal([x, y]) => format!("{x} == {y}"),
        Check::Differ([x, y]) => format!("{x} != {y}"),
        Check::DmesgContains(m) => format!("kernel log contains `{m}`"),
        Check::DmesgAbsent(m) => format!("kernel log lacks `{m}`"),
    }
}

/// Why a run that found no failure has still not earned a PASS (`None`: it has): every boot
/// ran and ended as planned (reset by its crash step, or exited), and every step of it has a
/// record the host agrees with.  A belt over the braces above: whatever path a lying or
/// broken guest takes, a verdict without this evidence is never a PASS.
fn unearned(case: &Case, run: &CaseRun, rp: &replay::Replay) -> Option<String> {
    if run.boots.len() != case.boots.len() || rp.steps.len() != case.boots.len() {
        return Some(format!(
            "{} of {} boots ran",
            run.boots.len(),
            case.boots.len()
        ));
    }
    for (b, (boot, out)) in case.boots.iter().zip(&run.boots).enumerate() {
        let planned = if boot.ends_in_crash() {
            BootEnd::Reset
        } else {
            BootEnd::Exited
        };
        if out.end != planned {
            return Some(format!("boot {} ended {}", b + 1, out.end.describe()));
        }
        for (i, f) in rp.steps[b].iter().enumerate() {
            let recorded = match f.state {
                StepState::Ran(_) => f.enabled,
                StepState::Skipped => !f.enabled,
                StepState::Crash => true,
                StepState::NotReached => false,
            };
            if !recorded || !f.problems.is_empty() {
                return Some(format!(
                    "boot {} step {} has no consistent record",
                    b + 1,
                    i + 1
                ));
            }
        }
    }
    None
}

/// What the per-boot pass found: failures (the case's), infrastructure failures (the
/// runner's), the values and the summaries the verdict reports.
#[derive(Default)]
struct BootPass {
    failures: Vec<Failure>,
    infra: Vec<Failure>,
    classifications: BTreeMap<String, Classification>,
    captures: BTreeMap<String, String>,
    boots: Vec<BootSummary>,
}

/// Every boot of the case: its steps as the replay decided them, how it ended, its splats.
fn judge_boots(case: &Case, run: &CaseRun, rp: &replay::Replay) -> BootPass {
    let mut pass = BootPass::default();
    for (b, boot) in case.boots.iter().enumerate() {
        let (Some(out), Some(facts)) = (run.boots.get(b), rp.steps.get(b)) else {
            pass.failures.push(Failure {
                what: format!(
                    "boot {} `{}` did not run: an earlier boot went wrong",
                    b + 1,
                    boot.name
                ),
                detail: vec![],
            });
            continue;
        };
        let steps = judge_steps(b, boot, out, facts, &mut pass);
        match boot_end_failure(b, boot, out, facts) {
            Some((f, true)) => pass.infra.push(f),
            Some((f, false)) => pass.failures.push(f),
            None => {}
        }
        pass.failures.extend(guest_log_splats(b, boot, out));
        if !out.record.planted.is_empty() {
            pass.failures.push(Failure {
                what: format!(
                    "boot {} `{}`: the guest left what is not a plain file in its results dir (the host reads none of it): {}",
                    b + 1,
                    boot.name,
                    out.record.planted.join(", ")
                ),
                detail: vec![],
            });
        }
        pass.failures.extend(console_splats(b, boot, out));
        pass.boots.push(BootSummary {
            name: boot.name.clone(),
            end: out.end.clone(),
            seconds: out.seconds,
            attempts: out.attempts,
            console_log: out.console_log.display().to_string(),
            steps,
        });
    }
    pass
}

/// One boot's steps: their problems, the first unreached step of a boot that ended as
/// planned, captures and classifications into `pass`; the step summaries.
fn judge_steps(
    b: usize,
    boot: &crate::case::Boot,
    out: &crate::run::BootOutcome,
    facts: &[replay::StepFact],
    pass: &mut BootPass,
) -> Vec<StepSummary> {
    let ended_as_planned = out.end.as_planned();
    let mut steps = Vec::new();
    let mut unreached_reported = false;
    for (i, (step, f)) in boot.steps.iter().zip(facts).enumerate() {
        let where_ = format!(
            "boot {} `{}` step {} `{}`",
            b + 1,
            boot.name,
            i + 1,
            step.label()
        );
        for p in &f.problems {
            pass.failures.push(Failure {
                what: format!("{where_}: {p}"),
                detail: f.detail.clone(),
            });
        }
        // A step without a record is a failure; when the boot stopped early the boot's
        // end says why, once, and the steps after it were simply not reached.
        if f.state == StepState::NotReached && ended_as_planned && !unreached_reported {
            unreached_reported = true;
            pass.failures.push(Failure {
                what: format!(
                    "{where_}: no record although the boot {} (never finished)",
                    out.end.describe()
                ),
                detail: tail(&out.console, 12),
            });
        }
        match &f.value {
            Some(Defined::Capture { name, value }) => {
                pass.captures.insert(name.clone(), value.clone());
            }
            Some(Defined::Label { name, label }) => {
                pass.classifications
                    .insert(name.clone(), classification(label, f, &out.record.steps[i]));
            }
            None => {}
        }
        let sr = out.record.steps.get(i);
        steps.push(StepSummary {
            label: step.label(),
            status: sr.and_then(|r| r.status),
            ok: f.problems.is_empty()
                && match f.state {
                    StepState::Crash => out.end == BootEnd::Reset,
                    StepState::NotReached => false,
                    StepState::Ran(_) | StepState::Skipped => true,
                },
            skipped: f.state == StepState::Skipped,
            seconds: sr.and_then(|r| r.seconds),
        });
    }
    steps
}

/// A classification's label with its step's status and the device-mapper lines as evidence.
fn classification(
    label: &str,
    f: &replay::StepFact,
    rec: &crate::guest::StepRecord,
) -> Classification {
    Classification {
        label: label.to_string(),
        status: match f.state {
            StepState::Ran(status) => Some(status),
            _ => None,
        },
        evidence: rec
            .dmesg
            .iter()
            .filter(|l| l.contains("device-mapper"))
            .cloned()
            .collect(),
    }
}

/// What a boot's end says, if anything: the failure and whether it is the runner's
/// (infrastructure, interrupt) rather than the kernel's.
fn boot_end_failure(
    b: usize,
    boot: &crate::case::Boot,
    out: &crate::run::BootOutcome,
    facts: &[replay::StepFact],
) -> Option<(Failure, bool)> {
    let at = format!("boot {} `{}`", b + 1, boot.name);
    let with_tail = |what: String| Failure {
        what,
        detail: tail(&out.console, 12),
    };
    match &out.end {
        BootEnd::Infra(m) => Some((
            with_tail(format!(
                "{at}: infrastructure failure after {} attempts: {m}",
                out.attempts
            )),
            true,
        )),
        BootEnd::GuestError(m) => Some((with_tail(format!("{at}: {m}")), true)),
        BootEnd::Panic(p) => Some((
            Failure {
                what: format!("{at}: kernel panic"),
                detail: crate::console::context(&out.console, p, 20, 3),
            },
            false,
        )),
        BootEnd::Hang => Some((
            with_tail(format!(
                "{at}: hang — still running at the timeout ({:.0} s)",
                out.seconds
            )),
            false,
        )),
        BootEnd::Died(m) => Some((
            with_tail(format!("{at}: the VM ended unexpectedly ({m})")),
            false,
        )),
        BootEnd::Interrupted => Some((
            Failure {
                what: "interrupted".into(),
                detail: vec![],
            },
            true,
        )),
        // The step's own problems say what went wrong (the replay guarantees the stopping
        // step has at least one); a stop the host cannot place is said here.
        BootEnd::Aborted(why) if !facts.iter().any(|f| !f.problems.is_empty()) => Some((
            with_tail(format!(
                "{at}: the guest stopped the boot ({why}) but no step says why"
            )),
            false,
        )),
        BootEnd::Aborted(_) | BootEnd::Exited | BootEnd::Reset => None,
    }
}

/// Every splat on the console, with the step it happened in.
fn console_splats(
    b: usize,
    boot: &crate::case::Boot,
    out: &crate::run::BootOutcome,
) -> Vec<Failure> {
    out.scan
        .splats
        .iter()
        .map(|s| {
            let during = crate::console::step_of(&out.console, s)
                .and_then(|i| boot.steps.get(i).map(|st| (i, st)))
                .map(|(i, st)| format!(" during step {} `{}`", i + 1, st.label()))
                .unwrap_or_default();
            Failure {
                what: format!("boot {} `{}`: kernel splat{during}: {s}", b + 1, boot.name),
                detail: crate::console::context(&out.console, s, 2, 12),
            }
        })
        .collect()
}

/// The case's assertions over the values and the kernel logs.  An assertion on a value that
/// was never captured is skipped when a boot failed (that failure is the explanation).
fn assertion_failures(
    case: &Case,
    run: &CaseRun,
    values: &BTreeMap<String, String>,
    boots_ok: bool,
) -> Vec<Failure> {
    let all_log = |boot: Option<&str>| -> String {
        run.boots
            .iter()
            .filter(|o| boot.is_none_or(|n| n == o.name))
            .flat_map(|o| {
                std::iter::once(o.console.clone())
                    .chain(o.record.steps.iter().map(|s| s.dmesg.join("\n")))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut failures = Vec::new();
    for a in &case.assert {
        let missing = a.check.names().1.iter().any(|n| !values.contains_key(n));
        if missing && !boots_ok {
            continue;
        }
        if a.when.as_ref().is_some_and(|c| !c.holds(values))
            || a.unless.as_ref().is_some_and(|c| c.holds(values))
        {
            continue;
        }
        let (ok, detail) = match &a.check {
            Check::Equal([x, y]) => compare(values, x, y, true),
            Check::Differ([x, y]) => compare(values, x, y, false),
            Check::DmesgContains(m) => (all_log(a.boot.as_deref()).contains(m.as_str()), vec![]),
            Check::DmesgAbsent(m) => {
                let log = all_log(a.boot.as_deref());
                (
                    !log.contains(m.as_str()),
                    crate::console::context(&log, m, 1, 1),
                )
            }
        };
        if !ok {
            let head = match &a.message {
                Some(m) => format!("{m} (assertion {} failed)", assertion_text(a)),
                None => format!("assertion failed: {}", assertion_text(a)),
            };
            failures.push(Failure { what: head, detail });
        }
    }
    failures
}

/// `equal: [x, y]` (or `differ:`): whether it holds, and both values as the detail; a value
/// never captured fails it.
fn compare(
    values: &BTreeMap<String, String>,
    x: &str,
    y: &str,
    equal: bool,
) -> (bool, Vec<String>) {
    match (values.get(x), values.get(y)) {
        (Some(vx), Some(vy)) => (
            (vx == vy) == equal,
            vec![format!("{x} = {vx}"), format!("{y} = {vy}")],
        ),
        (vx, vy) => {
            let shown = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(not captured)".into());
            (
                false,
                vec![
                    format!("{x} = {}", shown(vx)),
                    format!("{y} = {}", shown(vy)),
                ],
            )
        }
    }
}

/// The release and dm-cache target the guest reported last.
fn kernel_facts(run: &CaseRun) -> KernelFacts {
    let last_rec = run
        .boots
        .iter()
        .rev()
        .map(|o| &o.record)
        .find(|r| r.release.is_some());
    KernelFacts {
        release: last_rec.and_then(|r| r.release.clone()).unwrap_or_default(),
        cache_target: last_rec.and_then(|r| r.cache_target()),
    }
}

/// The labels this kernel is expected to give (the case's `expect:` rule for its facts) and
/// the rule's note; a label outside them, or a classification that never happened although
/// everything ran, is a failure.
type Expected = (BTreeMap<String, Vec<String>>, Option<String>, Vec<Failure>);

fn expected_outcome(
    case: &Case,
    facts: &KernelFacts,
    classifications: &BTreeMap<String, Classification>,
    all_ran: bool,
) -> Expected {
    let mut expected = BTreeMap::new();
    let mut failures = Vec::new();
    let Some(rule) = case.expectation_for(facts) else {
        return (expected, None, failures);
    };
    for (name, allowed) in &rule.classify {
        let allowed: Vec<String> = allowed.values().iter().map(|s| s.to_string()).collect();
        match classifications.get(name) {
            Some(c) if !allowed.contains(&c.label) => failures.push(Failure {
                what: format!(
                    "`{name}` is `{}`, but this kernel (release {}, dm-cache target {}) is expected to give {}",
                    c.label,
                    facts.release,
                    facts.cache_target.as_deref().unwrap_or("?"),
                    allowed.iter().map(|l| format!("`{l}`")).collect::<Vec<_>>().join(" or ")
                ),
                detail: c.evidence.clone(),
            }),
            None if all_ran => failures.push(Failure {
                what: format!("`{name}` was never classified (its step did not run)"),
                detail: vec![],
            }),
            _ => {}
        }
        expected.insert(name.clone(), allowed);
    }
    (expected, rule.note.clone(), failures)
}

/// The status from the failures, and the failures to report.  A splat the kernel printed is
/// a finding whatever came after it: an infrastructure failure later (boot 2 never starting)
/// must not turn it into INFRA, nor hide it; otherwise an infrastructure failure explains
/// everything after it and is not buried in consequences.
fn final_status(failures: Vec<Failure>, infra: Vec<Failure>) -> (Status, Vec<Failure>) {
    if infra.is_empty() {
        let status = if failures.is_empty() {
            Status::Pass
        } else {
            Status::Fail
        };
        return (status, failures);
    }
    let splats: Vec<Failure> = failures
        .into_iter()
        .filter(|f| f.what.contains("kernel splat"))
        .collect();
    let status = if splats.is_empty() {
        Status::Infra
    } else {
        Status::Fail
    };
    (status, splats.into_iter().chain(infra).collect())
}

/// Judges a run.  The host's [`replay`] of the guest's records decides every step; the
/// guest's own decisions can only add failures.  A PASS is given only when every boot ran and
/// ended as planned and every step has a record the host agrees with.
pub fn evaluate(case: &Case, run: &CaseRun) -> Verdict {
    let records: Vec<&BootRecord> = run.boots.iter().map(|o| &o.record).collect();
    let rp = replay::replay(case, &records);
    let mut pass = judge_boots(case, run, &rp);
    let boots_ok =
        run.boots.len() == case.boots.len() && run.boots.iter().all(|o| o.end.as_planned());
    pass.failures
        .extend(assertion_failures(case, run, &rp.values, boots_ok));
    let facts = kernel_facts(run);
    pass.failures.extend(release_mismatches(run));
    let all_ran = pass.infra.is_empty() && boots_ok;
    let (expected, expected_note, wrong) =
        expected_outcome(case, &facts, &pass.classifications, all_ran);
    pass.failures.extend(wrong);
    if pass.failures.is_empty() && pass.infra.is_empty() {
        if let Some(why) = unearned(case, run, &rp) {
            pass.failures.push(Failure {
                what: format!("no PASS without evidence: {why}"),
                detail: vec![],
            });
        }
    }
    let (status, failures) = final_status(pass.failures, pass.infra);
    Verdict {
        case: case.name.clone(),
        source: case.source.clone(),
        kernel: run.kernel.spec.clone(),
        release: Some(facts.release).filter(|r| !r.is_empty()),
        cache_target: facts.cache_target,
        accel: run.accel,
        tools: run
            .boots
            .iter()
            .map(|o| &o.record.tools)
            .find(|t| !t.is_empty())
            .cloned()
            .unwrap_or_default(),
        status,
        classifications: pass.classifications,
        captures: pass.captures,
        expected,
        expected_note,
        failures,
        boots: pass.boots,
        seconds: run.seconds,
        workdir: run.workdir.as_ref().map(|p| p.display().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::ConsoleScan;
    use crate::guest::{self, BootRecord, StepRecord};
    use crate::replay::classify;
    use crate::replay::test_support::honest_guest;
    use crate::run::{BootOutcome, CaseRun};
    use crate::vm::ProcessEnd;

    fn seed_case() -> Case {
        crate::case::load(&crate::case::cases_dir().join("unclean_passthrough.yaml")).unwrap()
    }

    /// Writes the records as a results directory, reads it back as the runner does, derives
    /// each boot's end from the records like the runner, and judges.
    fn judge(case: &Case, recs: &[BootRecord]) -> Verdict {
        evaluate(case, &run_of(case, recs))
    }

    /// The run the host would see from these records (see [`judge`]).
    fn run_of(case: &Case, recs: &[BootRecord]) -> CaseRun {
        let tmp = tempfile::tempdir().unwrap();
        let mut boots = Vec::new();
        for (b, rec) in recs.iter().enumerate() {
            guest::write_boot(tmp.path(), b, rec).unwrap();
            let crash = case.boots[b].ends_in_crash();
            let console = "[ 0.5] Linux version 6.12.117-test\n".to_string();
            let scan = ConsoleScan {
                sysrq_reset: crash,
                kernel_started: true,
                ..Default::default()
            };
            let record = guest::read_boot(tmp.path(), b, case.boots[b].steps.len(), &console);
            let process = ProcessEnd::Exited(if crash { 255 } else { 0 });
            let end = crate::run::boot_end(case, b, &record, &scan, process);
            let go_on = end.as_planned();
            boots.push(BootOutcome {
                name: case.boots[b].name.clone(),
                record,
                scan,
                end,
                process,
                seconds: 30.0,
                first_output: Some(5.0),
                attempts: 1,
                console_log: format!("boot-{b}.console.log").into(),
                console,
            });
            if !go_on {
                break;
            }
        }
        let kernel = crate::kernel::Kernel {
            spec: "test".into(),
            image: "/k".into(),
            release: Some("6.12.117-test".into()),
            config: None,
            modules: None,
            dm_cache: crate::kernel::DmCache::BuiltIn,
        };
        CaseRun {
            case: case.name.clone(),
            kernel,
            accel: crate::vm::Accel::Tcg,
            boots,
            workdir: None,
            seconds: 60.0,
        }
    }

    const GOOD: &[(&str, &str)] = &[
        ("expected_md5", "aa"),
        ("written_md5", "aa"),
        ("cache_md5", "aa"),
        ("origin_md5", "00"),
        ("origin_md5_after", "aa"),
        ("cache_tail_md5", "tt"),
        ("cblock", "1"),
    ];
    const DIRTY: &str =
        "device-mapper: cache: 253:3: cannot enter passthrough mode unless all blocks are clean";

    /// Index of the step of boot `b` whose label contains `what`.
    fn step_of(case: &Case, b: usize, what: &str) -> usize {
        case.boots[b]
            .steps
            .iter()
            .position(|s| s.label().contains(what))
            .unwrap_or_else(|| panic!("no step `{what}` in boot {b}"))
    }

    /// The records of a one-boot, one-step case that ran `step` and finished.
    fn one_step_boot(step: StepRecord) -> Vec<BootRecord> {
        vec![BootRecord {
            started: true,
            release: Some("6.12.117-test".into()),
            targets: Some("cache            v2.3.0\n".into()),
            steps: vec![step],
            done: true,
            ..Default::default()
        }]
    }

    /// A step killed by its timeout is the host's failure: `timeout` exits 124 (137 after the
    /// KILL), which `expect_status: nonzero` would accept and a `status: nonzero` outcome would
    /// read as a refusal.
    #[test]
    fn a_step_killed_by_its_timeout_fails_whatever_it_expects() {
        let case = seed_case();
        // The passthrough activation hangs and is killed: no refusal was seen.
        for status in [124, 137] {
            let v = judge(&case, &honest_guest(&case, status, &[], GOOD));
            assert_eq!(v.status, Status::Fail, "{status}");
            assert_eq!(
                v.classifications["passthrough"].label,
                crate::case::UNCLASSIFIED
            );
            assert!(
                v.failures
                    .iter()
                    .any(|f| f.what.contains("timed out after")),
                "{:?}",
                v.failures
            );
        }
        // A step that exits 124 by itself well before its limit is a status like any other.
        let text = "name: t\nsummary: t\ndisks: [{ name: sdc, size: 1MiB }]\nboots:\n  - name: one\n    steps:\n      - run: sleep 60\n        timeout: 3\n        expect_status: nonzero\n";
        let t = crate::case::parse(text, "t.yaml").unwrap();
        let rec = |seconds: f64| {
            one_step_boot(StepRecord {
                status: Some(124),
                seconds: Some(seconds),
                ..Default::default()
            })
        };
        let v = judge(&t, &rec(3.02));
        assert_eq!(
            v.status,
            Status::Fail,
            "sleep 60 with timeout 3 must not pass"
        );
        assert!(
            v.failures
                .iter()
                .any(|f| f.what.contains("timed out after 3 s")),
            "{:?}",
            v.failures
        );
        let v = judge(&t, &rec(0.4));
        assert_no_failure(&v, "timed out");
    }

    /// A timed-out classification whose `timeout: true` outcome asks for a kernel-log line
    /// the step did not print is unclassified, and the timeout is the host's failure: another
    /// outcome's `timeout: true` or label must not excuse it.
    #[test]
    fn a_timeout_outcome_that_does_not_match_excuses_nothing() {
        let text = "name: t\nsummary: t\ndisks: [{ name: sdc, size: 1MiB }]\nboots:\n  - name: one\n    steps:\n      - classify: c\n        run: sleep 60\n        timeout: 3\n        outcomes:\n          - { label: hung, timeout: true, dmesg: \"blocked for more than\" }\n          - { label: ok, status: 0 }\n";
        let t = crate::case::parse(text, "t.yaml").unwrap();
        let rec = |dmesg: &[&str]| {
            one_step_boot(StepRecord {
                status: Some(124),
                seconds: Some(3.02),
                label: Some("ok".into()),
                dmesg: dmesg.iter().map(|l| l.to_string()).collect(),
                ..Default::default()
            })
        };
        let v = judge(&t, &rec(&[]));
        assert_eq!(v.classifications["c"].label, crate::case::UNCLASSIFIED);
        assert_fails(&v, "no outcome says `timeout: true`");
        let v = judge(
            &t,
            &rec(&["INFO: task dmsetup:99 blocked for more than 2 seconds."]),
        );
        assert_eq!(v.classifications["c"].label, "hung");
        assert_no_failure(&v, "timed out");
    }

    /// A splat in the guest's kernel log that the console also showed is reported once (as a
    /// console splat); one the console missed is named beside it.
    #[test]
    fn a_splat_the_console_missed_is_named_beside_one_it_showed() {
        let case = small_case("  - { equal: [a, d] }");
        let mut recs = honest_guest(&case, 0, &[], &[]);
        let shown = "BUG: kernel NULL pointer dereference, address: 0000000000000008";
        let hidden = "WARNING: CPU: 0 PID: 1 at drivers/md/dm-cache-target.c:1234 f+0x1/0x2";
        recs[0].steps[0].dmesg = vec![shown.into(), hidden.into()];
        let mut run = run_of(&case, &recs);
        run.boots[0].scan.splats = crate::console::scan(shown).splats;
        assert_eq!(run.boots[0].scan.splats.len(), 1);
        let v = evaluate(&case, &run);
        let missed: Vec<&str> = v
            .failures
            .iter()
            .map(|f| f.what.as_str())
            .filter(|w| w.contains("not on the console"))
            .collect();
        assert_eq!(missed.len(), 1, "{:#?}", v.failures);
        assert!(missed[0].contains("WARNING: CPU: 0"), "{missed:?}");
    }

    /// An outcome that says `timeout: true` is the one label a timed-out classification gets.
    #[test]
    fn a_timeout_outcome_names_a_hang() {
        let o = vec![
            crate::case::Outcome {
                label: "hung".into(),
                status: None,
                dmesg: None,
                timeout: true,
            },
            crate::case::Outcome {
                label: "refused".into(),
                status: Some(crate::case::ExpectStatus::Nonzero),
                dmesg: None,
                timeout: false,
            },
        ];
        assert_eq!(crate::replay::classify_run(&o, 124, true, &[]), "hung");
        assert_eq!(crate::replay::classify_run(&o, 124, false, &[]), "refused");
        assert_eq!(classify(&o, 1, &[]), "refused");
    }

    #[test]
    fn a_release_the_host_did_not_boot_fails() {
        let case = seed_case();
        let mut recs = honest_guest(&case, 1, &[DIRTY], GOOD);
        recs[1].release = Some("7.3.4-dmtfake".into());
        assert_fails(
            &judge(&case, &recs),
            "the guest reports release `7.3.4-dmtfake`, but the kernel booted is `6.12.117-test`",
        );
    }

    #[test]
    fn a_link_or_fifo_the_guest_planted_fails() {
        let case = seed_case();
        let mut recs = honest_guest(&case, 1, &[DIRTY], GOOD);
        assert_eq!(judge(&case, &recs).status, Status::Pass);
        recs[0].planted = vec!["boot-1/step-3/stdout".into()];
        assert_fails(
            &judge(&case, &recs),
            "the guest left what is not a plain file in its results dir (the host reads none of it): boot-1/step-3/stdout",
        );
    }

    #[test]
    fn refused_by_dirty_check_passes_and_names_the_check() {
        let case = seed_case();
        let v = judge(&case, &honest_guest(&case, 1, &[DIRTY], GOOD));
        assert_eq!(v.status, Status::Pass, "{:?}", v.failures);
        assert_eq!(
            v.classifications["passthrough"].label,
            "refused: dirty mapping"
        );
        assert_eq!(v.classifications["passthrough"].evidence, vec![DIRTY]);
        assert_eq!(v.cache_target.as_deref(), Some("2.3.0"));
    }

    #[test]
    fn accepted_with_lost_tail_fails_as_data_loss() {
        let case = seed_case();
        let mut caps = GOOD.to_vec();
        caps.push(("origin_tail_md5", "different"));
        let v = judge(&case, &honest_guest(&case, 0, &[], &caps));
        assert_eq!(v.status, Status::Fail);
        assert!(
            v.failures
                .iter()
                .any(|f| f.what.starts_with("data loss: passthrough was accepted")),
            "{:?}",
            v.failures
        );
        assert!(v
            .failures
            .iter()
            .any(|f| f.what.contains("is expected to give")));
    }

    #[test]
    fn writeback_that_loses_data_fails() {
        let case = seed_case();
        let mut caps = GOOD.to_vec();
        caps.retain(|(k, _)| *k != "origin_md5_after");
        caps.push(("origin_md5_after", "00"));
        let v = judge(&case, &honest_guest(&case, 1, &[DIRTY], &caps));
        assert_eq!(v.status, Status::Fail);
        assert!(
            v.failures[0].what.starts_with("data loss: after writeback"),
            "{:?}",
            v.failures
        );
    }

    #[test]
    fn panic_fails_and_infra_is_not_a_verdict() {
        let case = seed_case();
        let recs = honest_guest(&case, 1, &[DIRTY], GOOD);
        let mut run_panic = recs.clone();
        run_panic[1].done = false;
        let v = judge(&case, &run_panic);
        assert_eq!(v.status, Status::Fail, "a boot that never finished");
        // the VM died before the case began: not a verdict on the case
        let mut never = recs;
        never[1] = BootRecord::default();
        let v = judge(&case, &never);
        assert_eq!(v.status, Status::Infra, "{:?}", v.failures);
        assert_eq!(v.failures.len(), 1, "infra stands alone: {:?}", v.failures);
        // ... unless the kernel printed a splat in an earlier boot: that is a finding.
        let mut r = run_of(&case, &never);
        r.boots[0].scan.splats = vec!["BUG: kernel NULL pointer dereference".into()];
        let v = evaluate(&case, &r);
        assert_eq!(v.status, Status::Fail, "{:?}", v.failures);
        assert!(
            v.failures[0].what.contains("kernel splat"),
            "{:?}",
            v.failures
        );
        assert!(
            v.failures.len() >= 2,
            "the infrastructure failure is kept too: {:?}",
            v.failures
        );
    }

    // ---- A lying guest: each way a guest could try to fool the host must FAIL. ----

    fn assert_fails(v: &Verdict, why: &str) {
        assert_eq!(v.status, Status::Fail, "{why}: {:#?}", v.failures);
        assert!(
            v.failures.iter().any(|f| f.what.contains(why)),
            "expected a failure saying `{why}`: {:#?}",
            v.failures
        );
    }

    fn assert_no_failure(v: &Verdict, what: &str) {
        assert!(
            !v.failures.iter().any(|f| f.what.contains(what)),
            "no failure may say `{what}`: {:#?}",
            v.failures
        );
    }

    #[test]
    fn lying_guest_missing_status() {
        let case = seed_case();
        let mut recs = honest_guest(&case, 1, &[DIRTY], GOOD);
        let i = step_of(&case, 1, "cache_check");
        recs[1].steps[i].status = None;
        assert_fails(&judge(&case, &recs), "no record although the boot exited");
    }

    #[test]
    fn lying_guest_done_without_running_anything() {
        let case = seed_case();
        let mut recs = honest_guest(&case, 1, &[DIRTY], GOOD);
        recs[1].steps = vec![];
        let v = judge(&case, &recs);
        assert_fails(&v, "never finished");
    }

    #[test]
    fn lying_guest_skipped_step_with_a_status() {
        let case = seed_case();
        let mut recs = honest_guest(&case, 1, &[DIRTY], GOOD);
        let i = step_of(&case, 1, "passthrough_dirty");
        recs[1].steps[i].status = Some(0);
        assert!(recs[1].steps[i].skipped);
        assert_fails(&judge(&case, &recs), "both an exit status and a skip");
    }

    #[test]
    fn lying_guest_ran_a_step_whose_condition_was_false() {
        let case = seed_case();
        let mut recs = honest_guest(&case, 1, &[DIRTY], GOOD);
        let i = step_of(&case, 1, "passthrough_dirty");
        recs[1].steps[i].skipped = false;
        recs[1].steps[i].status = Some(0);
        assert_fails(&judge(&case, &recs), "although its condition was false");
    }

    #[test]
    fn lying_guest_skipped_a_step_whose_condition_held() {
        let case = seed_case();
        let mut recs = honest_guest(&case, 1, &[DIRTY], GOOD);
        let i = step_of(&case, 1, "wait until dirty == 0");
        recs[1].steps[i].status = None;
        recs[1].steps[i].skipped = true;
        assert_fails(&judge(&case, &recs), "although its condition held");
    }

    #[test]
    fn lying_guest_labels_disagree() {
        let case = seed_case();
        let mut recs = honest_guest(&case, 1, &[DIRTY], GOOD);
        let i = step_of(&case, 1, "classify passthrough");
        recs[1].steps[i].label = Some("refused: unclean shutdown (can_resume)".into());
        assert_fails(&judge(&case, &recs), "the guest classified");
        recs[1].steps[i].label = None;
        assert_fails(&judge(&case, &recs), "recorded no label");
    }

    #[test]
    fn lying_guest_abort_with_no_reason() {
        let case = seed_case();
        let mut recs = honest_guest(&case, 1, &[DIRTY], GOOD);
        let i = step_of(&case, 1, "cache_check");
        recs[1].steps[i].abort = Some(String::new());
        for st in &mut recs[1].steps[i + 1..] {
            *st = StepRecord::default();
        }
        let v = judge(&case, &recs);
        assert!(
            matches!(v.boots[1].end, BootEnd::Aborted(_)),
            "{:?}",
            v.boots[1].end
        );
        assert_fails(&v, "the guest stopped the boot here (no reason given)");
    }

    /// Finding 1 of the issue: host and guest disagree about the aborting step, and the
    /// steps after it never ran — this used to PASS.
    #[test]
    fn lying_guest_abort_the_host_cannot_place() {
        let case = seed_case();
        let mut recs = honest_guest(&case, 1, &[DIRTY], GOOD);
        let i = step_of(&case, 0, "dirty_before_crash");
        recs[0].steps[i].abort = Some("dirty_before_crash is '0', expected '1'".into());
        recs[0].steps[i + 1..]
            .iter_mut()
            .for_each(|s| *s = StepRecord::default());
        recs[0].crash_marker = false;
        recs[0].done = true;
        let v = judge(&case, &recs);
        assert_fails(&v, "although the host finds the step met its expectations");
        // The stopping step says why: the boot's end adds no "no step says why".
        assert_no_failure(&v, "no step says why");
    }

    /// A one-boot case for the assertion and classification paths: `b` and `c` are only
    /// made when `a` is `9` (it is `1`), one assertion per kind.
    fn small_case(asserts: &str) -> Case {
        let text = format!(
            r#"name: small
summary: s
disks:
  - {{ name: sdc, size: 16MiB }}
boots:
  - name: one
    steps:
      - capture: a
        run: echo 1
      - capture: b
        run: echo 2
        when: {{ a: "9" }}
      - classify: c
        run: "true"
        when: {{ a: "9" }}
        outcomes:
          - {{ label: ok, status: 0 }}
      - capture: d
        run: echo 1
assert:
{asserts}
expect:
  - classify: {{ c: ok }}
"#
        );
        crate::case::parse(&text, "small.yaml").unwrap()
    }

    /// The records of `small_case`, with the console text `console` in the kernel log of the
    /// one step.
    fn judge_small(case: &Case, log: &[&str]) -> Verdict {
        let mut recs = honest_guest(case, 0, &[], &[]);
        recs[0].steps[0].dmesg = log.iter().map(|l| l.to_string()).collect();
        judge(case, &recs)
    }

    #[test]
    fn a_classification_never_made_fails_even_when_every_boot_ended_well() {
        let case = small_case("  - { equal: [a, d] }");
        let v = judge_small(&case, &[]);
        assert_fails(&v, "`c` was never classified");
    }

    #[test]
    fn an_assertion_on_a_value_never_captured_fails() {
        let case = small_case("  - { equal: [a, b] }");
        let v = judge_small(&case, &[]);
        assert_fails(&v, "assertion failed: a == b");
        assert!(v
            .failures
            .iter()
            .any(|f| f.detail.contains(&"b = (not captured)".to_string())));
    }

    #[test]
    fn kernel_log_assertions_look_where_they_are_told() {
        let case = small_case(
            "  - { dmesg_absent: \"BUG:\", boot: one }\n  - { dmesg_contains: \"hello\", boot: one }",
        );
        let both = |v: &Verdict| -> Vec<String> {
            v.failures
                .iter()
                .map(|f| f.what.clone())
                .filter(|w| w.starts_with("assertion failed") && w.contains("kernel log"))
                .collect()
        };
        let v = judge_small(&case, &["hello"]);
        assert!(both(&v).is_empty(), "{:#?}", v.failures);
        let v = judge_small(&case, &["hello", "BUG: kernel NULL pointer dereference"]);
        // The splat in the guest's own kernel log fails the run by itself as well.
        assert_fails(
            &v,
            "kernel splat (in the guest's kernel log, not on the console)",
        );
        assert_eq!(
            both(&v),
            vec!["assertion failed: kernel log lacks `BUG:`"],
            "{:#?}",
            v.failures
        );
        let v = judge_small(&case, &[]);
        assert_eq!(
            both(&v),
            vec!["assertion failed: kernel log contains `hello`"]
        );
    }

    #[test]
    fn exit_codes() {
        assert_eq!(Status::Pass.exit_code(), 0);
        assert_eq!(Status::Fail.exit_code(), 1);
        assert_eq!(Status::Infra.exit_code(), 2);
    }

    /// The last belt: whatever slipped past every other check, a boot that did not end as
    /// planned or a step without a consistent record is never a PASS.
    #[test]
    fn no_pass_without_evidence_even_when_every_other_check_misses() {
        let case = seed_case();
        let run = run_of(&case, &honest_guest(&case, 1, &[DIRTY], GOOD));
        let records: Vec<&BootRecord> = run.boots.iter().map(|b| &b.record).collect();
        let honest = replay::replay(&case, &records);
        assert_eq!(unearned(&case, &run, &honest), None);
        let i = step_of(&case, 1, "cache_check");
        type Spoil<'a> = Box<dyn Fn(&mut CaseRun, &mut replay::Replay) + 'a>;
        let broken: [(&str, Spoil); 6] = [
            (
                "a step never reached",
                Box::new(|_, rp| rp.steps[1][i].state = StepState::NotReached),
            ),
            (
                "a step with a problem",
                Box::new(|_, rp| rp.steps[1][i].problems.push("x".into())),
            ),
            (
                "ran although disabled",
                Box::new(|_, rp| rp.steps[1][i].enabled = false),
            ),
            (
                "a boot of the replay missing",
                Box::new(|_, rp| {
                    rp.steps.pop();
                }),
            ),
            (
                "a boot not run",
                Box::new(|r, _| {
                    r.boots.pop();
                }),
            ),
            (
                "an unplanned end",
                Box::new(|r, _| r.boots[0].end = BootEnd::Exited),
            ),
        ];
        for (what, spoil) in broken {
            let (mut r, mut rp) = (run.clone(), honest.clone());
            spoil(&mut r, &mut rp);
            assert!(unearned(&case, &r, &rp).is_some(), "{what}: earned a PASS");
        }
    }

    /// A boot the guest stopped while every step's record is fine (no step says why): FAIL.
    #[test]
    fn a_stopped_boot_no_step_explains_fails() {
        let case = seed_case();
        let mut run = run_of(&case, &honest_guest(&case, 1, &[DIRTY], GOOD));
        run.boots[1].end = BootEnd::Aborted("step 9".into());
        let v = evaluate(&case, &run);
        assert_fails(
            &v,
            "the guest stopped the boot (step 9) but no step says why",
        );
    }

    /// The guest says it stopped the last boot at a step it left no status for.
    #[test]
    fn lying_guest_abort_at_a_step_without_status() {
        let case = seed_case();
        let mut recs = honest_guest(&case, 1, &[DIRTY], GOOD);
        let i = step_of(&case, 1, "cache_check");
        recs[1].steps[i].status = None;
        recs[1].steps[i].abort = Some("cache_check failed".into());
        for st in &mut recs[1].steps[i + 1..] {
            *st = StepRecord::default();
        }
        let v = judge(&case, &recs);
        assert_ne!(v.status, Status::Pass, "{:#?}", v.failures);
        assert!(!v.failures.is_empty());
    }

    #[test]
    fn lying_guest_passes_a_capture_the_host_finds_wrong() {
        let case = seed_case();
        let mut recs = honest_guest(&case, 1, &[DIRTY], GOOD);
        let i = step_of(&case, 0, "dirty_before_crash");
        recs[0].steps[i].stdout = "0\n".into();
        assert_fails(
            &judge(&case, &recs),
            "`dirty_before_crash` is `0`, expected `1`",
        );
    }

    #[test]
    fn lying_guest_expect_match_on_untrimmed_text() {
        let case = seed_case();
        let mut recs = honest_guest(&case, 1, &[DIRTY], GOOD);
        let i = step_of(&case, 1, "cache block holding");
        recs[1].steps[i].stdout = "1\n2\n".into();
        assert_fails(&judge(&case, &recs), "stdout does not match");
    }

    #[test]
    fn lying_guest_wrong_exit_status_recorded_as_fine() {
        let case = seed_case();
        let mut recs = honest_guest(&case, 1, &[DIRTY], GOOD);
        recs[1].steps[0].status = Some(1);
        assert_fails(&judge(&case, &recs), "exit status 1, expected 0");
    }

    #[test]
    fn lying_guest_reset_without_reaching_the_crash_step() {
        let case = seed_case();
        let mut recs = honest_guest(&case, 1, &[DIRTY], GOOD);
        recs[0].steps.truncate(3);
        let v = judge(&case, &recs);
        assert_ne!(v.status, Status::Pass, "{:#?}", v.failures);
    }
}
