//! The verdict: step expectations, captures, classifications, case assertions, the expected
//! outcome for this kernel, and the per-boot kernel log check (panic, oops, BUG, WARN).
//! Pure: takes a [`CaseRun`] (what happened) and the [`Case`] (what must hold).

use crate::case::{Assertion, Case, ExpectStatus, KernelFacts};
use crate::guest;
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
    /// Exit status of the classified command.
    pub status: i32,
    /// The kernel log lines it printed (the refusal message, if any).
    pub evidence: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub case: String,
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

fn tail(s: &str, n: usize) -> Vec<String> {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

fn assertion_text(a: &Assertion) -> String {
    if let Some([x, y]) = &a.equal {
        format!("{x} == {y}")
    } else if let Some([x, y]) = &a.differ {
        format!("{x} != {y}")
    } else if let Some(m) = &a.dmesg_contains {
        format!("kernel log contains `{m}`")
    } else if let Some(m) = &a.dmesg_absent {
        format!("kernel log lacks `{m}`")
    } else {
        "?".into()
    }
}

/// Judges a run.
pub fn evaluate(case: &Case, run: &CaseRun) -> Verdict {
    let mut failures: Vec<Failure> = Vec::new();
    let mut infra: Vec<Failure> = Vec::new();
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    let mut captures = BTreeMap::new();
    let mut classifications = BTreeMap::new();
    let mut boots = Vec::new();

    for (b, boot) in case.boots.iter().enumerate() {
        let Some(out) = run.boots.get(b) else {
            failures.push(Failure {
                what: format!(
                    "boot {} `{}` did not run: an earlier boot went wrong",
                    b + 1,
                    boot.name
                ),
                detail: vec![],
            });
            continue;
        };
        let rec = &out.record;
        let mut steps = Vec::new();
        for (i, step) in boot.steps.iter().enumerate() {
            let sr = rec.steps.get(i).cloned().unwrap_or_default();
            let where_ = format!(
                "boot {} `{}` step {} `{}`",
                b + 1,
                boot.name,
                i + 1,
                step.label()
            );
            let enabled = guest::step_enabled(step, &values);
            let mut ok = true;
            if step.crash.is_some() {
                ok = out.end == BootEnd::Reset;
            } else if !enabled {
                if !sr.skipped && sr.status.is_some() {
                    ok = false;
                    failures.push(Failure {
                        what: format!(
                            "{where_}: ran in the guest although its condition was false"
                        ),
                        detail: vec![],
                    });
                }
            } else if let Some(status) = sr.status {
                let mut detail = tail(&sr.stderr, 8);
                detail.extend(sr.dmesg.iter().cloned());
                if let Some(name) = &step.classify {
                    let label = guest::classify(&step.outcomes, status, &sr.dmesg);
                    if sr.label.as_deref().is_some_and(|g| g != label) {
                        failures.push(Failure {
                            what: format!(
                                "{where_}: the guest classified `{}` but the host `{label}`",
                                sr.label.clone().unwrap_or_default()
                            ),
                            detail: detail.clone(),
                        });
                    }
                    values.insert(name.clone(), label.clone());
                    classifications.insert(
                        name.clone(),
                        Classification {
                            label,
                            status,
                            evidence: sr
                                .dmesg
                                .iter()
                                .filter(|l| l.contains("device-mapper"))
                                .cloned()
                                .collect(),
                        },
                    );
                } else {
                    let want = step.expect_status.unwrap_or(ExpectStatus::Code(0));
                    if !want.accepts(status) {
                        ok = false;
                        failures.push(Failure {
                            what: format!("{where_}: exit status {status}, expected {want}"),
                            detail: detail.clone(),
                        });
                    }
                    if let Some(name) = &step.capture {
                        let v = guest::capture_value(&sr.stdout);
                        if let Some(want) = &step.expect {
                            if &v != want {
                                ok = false;
                                failures.push(Failure {
                                    what: format!("{where_}: `{name}` is `{v}`, expected `{want}`"),
                                    detail: detail.clone(),
                                });
                            }
                        }
                        values.insert(name.clone(), v.clone());
                        captures.insert(name.clone(), v);
                    }
                    if let Some(re) = &step.expect_match {
                        let m = regex::Regex::new(re)
                            .map(|r| r.is_match(&sr.stdout))
                            .unwrap_or(false);
                        if !m {
                            ok = false;
                            failures.push(Failure {
                                what: format!("{where_}: stdout does not match /{re}/"),
                                detail: tail(&sr.stdout, 8),
                            });
                        }
                    }
                }
            } else if sr.skipped {
                ok = false;
                failures.push(Failure {
                    what: format!("{where_}: skipped in the guest although its condition held"),
                    detail: vec![],
                });
            } else {
                ok = false;
                // Only the first unfinished step of a boot is worth a line.
                if !matches!(out.end, BootEnd::Aborted(_))
                    && steps
                        .iter()
                        .all(|s: &StepSummary| s.status.is_some() || s.skipped)
                {
                    failures.push(Failure {
                        what: format!("{where_}: never finished (boot {})", out.end.describe()),
                        detail: tail(&out.console, 12),
                    });
                }
            }
            steps.push(StepSummary {
                label: step.label(),
                status: sr.status,
                ok,
                skipped: !enabled && step.crash.is_none(),
                seconds: sr.seconds,
            });
        }
        match &out.end {
            BootEnd::Infra(m) | BootEnd::GuestError(m) => infra.push(Failure {
                what: format!(
                    "boot {} `{}`: {}",
                    b + 1,
                    boot.name,
                    if matches!(out.end, BootEnd::Infra(_)) {
                        format!(
                            "infrastructure failure after {} attempts: {m}",
                            out.attempts
                        )
                    } else {
                        m.clone()
                    }
                ),
                detail: tail(&out.console, 12),
            }),
            BootEnd::Panic(p) => failures.push(Failure {
                what: format!("boot {} `{}`: kernel panic", b + 1, boot.name),
                detail: crate::console::context(&out.console, p, 20, 3),
            }),
            BootEnd::Hang => failures.push(Failure {
                what: format!(
                    "boot {} `{}`: hang — still running at the timeout ({:.0} s)",
                    b + 1,
                    boot.name,
                    out.seconds
                ),
                detail: tail(&out.console, 12),
            }),
            BootEnd::Died(m) => failures.push(Failure {
                what: format!(
                    "boot {} `{}`: the VM ended unexpectedly ({m})",
                    b + 1,
                    boot.name
                ),
                detail: tail(&out.console, 12),
            }),
            BootEnd::Interrupted => infra.push(Failure {
                what: "interrupted".into(),
                detail: vec![],
            }),
            BootEnd::Exited | BootEnd::Reset | BootEnd::Aborted(_) => {}
        }
        for s in &out.scan.splats {
            failures.push(Failure {
                what: format!("boot {} `{}`: kernel splat: {s}", b + 1, boot.name),
                detail: crate::console::context(&out.console, s, 2, 12),
            });
        }
        boots.push(BootSummary {
            name: boot.name.clone(),
            end: out.end.clone(),
            seconds: out.seconds,
            attempts: out.attempts,
            console_log: out.console_log.display().to_string(),
            steps,
        });
    }

    // Case-level assertions.
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
    let boots_ok = run.boots.len() == case.boots.len()
        && run
            .boots
            .iter()
            .all(|o| matches!(o.end, BootEnd::Exited | BootEnd::Reset));
    for a in &case.assert {
        let missing = a
            .equal
            .iter()
            .chain(a.differ.iter())
            .flatten()
            .any(|n| !values.contains_key(n));
        if missing && !boots_ok {
            continue; // the boot failure above is the explanation
        }
        if a.when.as_ref().is_some_and(|c| !c.holds(&values))
            || a.unless.as_ref().is_some_and(|c| c.holds(&values))
        {
            continue;
        }
        let get = |n: &str| values.get(n).cloned();
        let (ok, detail) = if let Some([x, y]) = a.equal.as_ref().or(a.differ.as_ref()) {
            match (get(x), get(y)) {
                (Some(vx), Some(vy)) => {
                    let same = vx == vy;
                    (
                        if a.equal.is_some() { same } else { !same },
                        vec![format!("{x} = {vx}"), format!("{y} = {vy}")],
                    )
                }
                (vx, vy) => (
                    false,
                    vec![
                        format!("{x} = {}", vx.unwrap_or_else(|| "(not captured)".into())),
                        format!("{y} = {}", vy.unwrap_or_else(|| "(not captured)".into())),
                    ],
                ),
            }
        } else if let Some(m) = &a.dmesg_contains {
            (all_log(a.boot.as_deref()).contains(m.as_str()), vec![])
        } else if let Some(m) = &a.dmesg_absent {
            let log = all_log(a.boot.as_deref());
            (
                !log.contains(m.as_str()),
                crate::console::context(&log, m, 1, 1),
            )
        } else {
            (true, vec![])
        };
        if !ok {
            let head = match &a.message {
                Some(m) => format!("{m} (assertion {} failed)", assertion_text(a)),
                None => format!("assertion failed: {}", assertion_text(a)),
            };
            failures.push(Failure { what: head, detail });
        }
    }

    // The outcome this kernel is expected to give.
    let last_rec = run
        .boots
        .iter()
        .rev()
        .map(|o| &o.record)
        .find(|r| r.release.is_some());
    let facts = KernelFacts {
        release: last_rec.and_then(|r| r.release.clone()).unwrap_or_default(),
        cache_target: last_rec.and_then(|r| r.cache_target()),
    };
    let mut expected = BTreeMap::new();
    let mut expected_note = None;
    if let Some(rule) = case.expectation_for(&facts) {
        expected_note = rule.note.clone();
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
                None if infra.is_empty() && boots_ok => failures.push(Failure {
                    what: format!("`{name}` was never classified (its step did not run)"),
                    detail: vec![],
                }),
                _ => {}
            }
            expected.insert(name.clone(), allowed);
        }
    }

    let status = if !infra.is_empty() {
        Status::Infra
    } else if failures.is_empty() {
        Status::Pass
    } else {
        Status::Fail
    };
    // An infrastructure failure explains everything after it; don't bury it in consequences.
    let all_failures = if infra.is_empty() { failures } else { infra };
    Verdict {
        case: case.name.clone(),
        kernel: run.kernel.spec.clone(),
        release: Some(facts.release).filter(|r| !r.is_empty()),
        cache_target: facts.cache_target,
        accel: run.accel,
        tools: last_rec.map(|r| r.tools.clone()).unwrap_or_default(),
        status,
        classifications,
        captures,
        expected,
        expected_note,
        failures: all_failures,
        boots,
        seconds: run.seconds,
        workdir: run.workdir.as_ref().map(|p| p.display().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::ConsoleScan;
    use crate::guest::{BootRecord, StepRecord};
    use crate::run::{BootOutcome, CaseRun};
    use std::collections::BTreeMap;

    /// A recorded run of `cases/unclean_passthrough.yaml` where the passthrough activation
    /// ends with `status` and `dmesg`, and the captures have the given values.
    fn synthetic(status: i32, dmesg: &[&str], caps: &[(&str, &str)]) -> (Case, CaseRun) {
        let case =
            crate::case::load(&crate::case::cases_dir().join("unclean_passthrough.yaml")).unwrap();
        let caps: BTreeMap<&str, &str> = caps.iter().cloned().collect();
        let mut values = BTreeMap::new();
        let mut boots = Vec::new();
        for (b, boot) in case.boots.iter().enumerate() {
            let mut steps = Vec::new();
            for s in &boot.steps {
                let mut r = StepRecord::default();
                if !crate::guest::step_enabled(s, &values) {
                    r.skipped = true;
                } else if let Some(n) = &s.classify {
                    r.status = Some(status);
                    r.dmesg = dmesg.iter().map(|l| l.to_string()).collect();
                    values.insert(
                        n.clone(),
                        crate::guest::classify(&s.outcomes, status, &r.dmesg),
                    );
                } else if s.crash.is_none() {
                    r.status = Some(0);
                    if let Some(n) = &s.capture {
                        r.stdout = format!("{}\n", caps.get(n.as_str()).copied().unwrap_or("1"));
                        values.insert(n.clone(), crate::guest::capture_value(&r.stdout));
                    }
                }
                steps.push(r);
            }
            let crash = boot.steps.last().is_some_and(|s| s.crash.is_some());
            boots.push(BootOutcome {
                name: boot.name.clone(),
                record: BootRecord {
                    started: true,
                    release: Some("6.12.117-test".into()),
                    targets: Some("cache            v2.3.0\n".into()),
                    steps,
                    crash_marker: crash,
                    done: !crash,
                    ..Default::default()
                },
                scan: ConsoleScan {
                    sysrq_reset: crash,
                    kernel_started: true,
                    ..Default::default()
                },
                end: if crash {
                    BootEnd::Reset
                } else {
                    BootEnd::Exited
                },
                process: crate::vm::ProcessEnd::Exited(if crash { 255 } else { 0 }),
                seconds: 30.0,
                attempts: 1,
                console_log: format!("boot-{b}.console.log").into(),
                console: String::new(),
            });
        }
        let kernel = crate::kernel::Kernel {
            spec: "test".into(),
            image: "/k".into(),
            release: Some("6.12.117-test".into()),
            config: None,
            modules: None,
            dm_cache: crate::kernel::DmCache::BuiltIn,
        };
        let run = CaseRun {
            case: case.name.clone(),
            kernel,
            accel: crate::vm::Accel::Tcg,
            boots,
            workdir: None,
            seconds: 60.0,
        };
        (case, run)
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

    #[test]
    fn refused_by_dirty_check_passes_and_names_the_check() {
        let (case, run) = synthetic(1, &["device-mapper: cache: 253:3: cannot enter passthrough mode unless all blocks are clean"], GOOD);
        let v = evaluate(&case, &run);
        assert_eq!(v.status, Status::Pass, "{:?}", v.failures);
        assert_eq!(
            v.classifications["passthrough"].label,
            "refused: dirty mapping"
        );
        assert_eq!(v.cache_target.as_deref(), Some("2.3.0"));
    }

    #[test]
    fn accepted_with_lost_tail_fails_as_data_loss() {
        let mut caps = GOOD.to_vec();
        caps.push(("origin_tail_md5", "different"));
        let (case, run) = synthetic(0, &[], &caps);
        let v = evaluate(&case, &run);
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
        let mut caps = GOOD.to_vec();
        caps.retain(|(k, _)| *k != "origin_md5_after");
        caps.push(("origin_md5_after", "00"));
        let (case, run) = synthetic(
            1,
            &["cannot enter passthrough mode unless all blocks are clean"],
            &caps,
        );
        let v = evaluate(&case, &run);
        assert_eq!(v.status, Status::Fail);
        assert!(
            v.failures[0].what.starts_with("data loss: after writeback"),
            "{:?}",
            v.failures
        );
    }

    #[test]
    fn panic_fails_and_infra_is_not_a_verdict() {
        let (case, mut run) = synthetic(
            1,
            &["cannot enter passthrough mode unless all blocks are clean"],
            GOOD,
        );
        run.boots[1].end = BootEnd::Panic("Kernel panic - not syncing: x".into());
        assert_eq!(evaluate(&case, &run).status, Status::Fail);
        run.boots[1].end = BootEnd::Infra("never started".into());
        let v = evaluate(&case, &run);
        assert_eq!(v.status, Status::Infra);
        assert_eq!(
            v.failures.len(),
            1,
            "infra failures stand alone: {:?}",
            v.failures
        );
    }
}
