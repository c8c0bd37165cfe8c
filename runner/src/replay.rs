//! The one host-side replay of a case over what the guest recorded.
//!
//! The guest decides at run time (which steps run, which label a classification gets, when a
//! failed expectation stops the boot); the host decides again, here, from the raw records
//! (exit status, stdout, kernel log lines), and the guest's own decisions are only compared
//! with the host's.  Any disagreement, or a record that is missing or contradictory, is a
//! problem of that step: a guest can make a verdict worse, never better.  `run` uses the
//! values to carry them into the next boot; `check` judges from the facts.

use crate::case::{Case, Command, Cond, ExpectStatus, Outcome, Step, StepKind, UNCLASSIFIED};
use crate::guest::{BootRecord, StepRecord};
use std::collections::BTreeMap;

/// What became of a step, as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepState {
    /// The guest ran it and recorded this exit status.
    Ran(i32),
    /// The host's condition was false and the guest skipped it.
    Skipped,
    /// No record: the boot ended before it (or the guest left no trace of it).
    NotReached,
    /// A crash step (its outcome is the boot's end).
    Crash,
}

/// The host's facts about one step.
#[derive(Debug, Clone)]
pub struct StepFact {
    /// The host's decision from the values known before the step.
    pub enabled: bool,
    pub state: StepState,
    /// What the step defined (host-derived): a capture's value or a classification's label.
    pub value: Option<Defined>,
    /// What is wrong with this step: unmet expectations and guest/host disagreements.
    pub problems: Vec<String>,
    /// Evidence for the problems: stderr tail and the step's kernel log lines.
    pub detail: Vec<String>,
}

/// A value a step defines, by the step's kind; `check` reads these, never the step kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Defined {
    /// `capture: name` and its trimmed stdout.
    Capture { name: String, value: String },
    /// `classify: name` and the label of its outcome.
    Label { name: String, label: String },
}

impl Defined {
    pub fn name(&self) -> &str {
        match self {
            Defined::Capture { name, .. } | Defined::Label { name, .. } => name,
        }
    }

    /// The value conditions and later boots see.
    pub fn text(&self) -> &str {
        match self {
            Defined::Capture { value, .. } => value,
            Defined::Label { label, .. } => label,
        }
    }
}

/// The host's replay of the boots that ran.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    /// Captures and classification labels, by name.
    pub values: BTreeMap<String, String>,
    /// Per boot that ran, per step.
    pub steps: Vec<Vec<StepFact>>,
}

/// The captured value of a step, and the text `expect_match` sees: stdout without trailing
/// newlines (like the shell's `$(...)`).
pub fn trimmed(stdout: &str) -> String {
    stdout.trim_end_matches('\n').to_string()
}

/// The first outcome whose status and kernel-log conditions hold (outcomes that say
/// `timeout: true` match only a step that timed out, and a timed-out step only them).
pub fn classify(outcomes: &[Outcome], status: i32, dmesg: &[String]) -> String {
    classify_run(outcomes, status, false, dmesg)
}

/// [`classify`] for a step that may have run into its timeout.
pub fn classify_run(
    outcomes: &[Outcome],
    status: i32,
    timed_out: bool,
    dmesg: &[String],
) -> String {
    outcomes
        .iter()
        .find(|o| {
            o.timeout == timed_out
                && (timed_out || o.status.unwrap_or(ExpectStatus::Any).accepts(status))
                && o.dmesg
                    .as_ref()
                    .is_none_or(|m| dmesg.iter().any(|l| l.contains(m.as_str())))
        })
        .map(|o| o.label.clone())
        .unwrap_or_else(|| UNCLASSIFIED.to_string())
}

/// The label of a classification whose step never finished (the kernel panicked or the VM was
/// stopped after a splat during it): only an outcome that asks nothing of the exit status and
/// names a kernel-log line can hold, matched against the step's lines of the console.
pub fn classify_unfinished(outcomes: &[Outcome], dmesg: &[String]) -> Option<String> {
    outcomes
        .iter()
        .find(|o| {
            o.status.is_none()
                && !o.timeout
                && o.dmesg
                    .as_ref()
                    .is_some_and(|m| dmesg.iter().any(|l| l.contains(m.as_str())))
        })
        .map(|o| o.label.clone())
}

/// True when `step` runs given the values known before it.
pub fn step_enabled(step: &Step, values: &BTreeMap<String, String>) -> bool {
    let holds = |c: &Option<Cond>| c.as_ref().map(|c| c.holds(values));
    holds(&step.when).unwrap_or(true) && !holds(&step.unless).unwrap_or(false)
}

/// Does `text` match `re` as the guest's bash `=~` would (POSIX ERE, `.` matches a newline)?
pub fn matches(re: &str, text: &str) -> bool {
    regex::RegexBuilder::new(re)
        .dot_matches_new_line(true)
        .build()
        .map(|r| r.is_match(text))
        .unwrap_or(false)
}

/// The last `n` lines of `s` (evidence for a failure).
pub fn tail(s: &str, n: usize) -> Vec<String> {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// Replays `case` over the records of the boots that ran (`records[b]` for boot `b`).
pub fn replay(case: &Case, records: &[&BootRecord]) -> Replay {
    let mut out = Replay::default();
    for (b, rec) in records.iter().enumerate() {
        let Some(boot) = case.boots.get(b) else { break };
        let facts = boot
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| {
                let none = StepRecord::default();
                let r = rec.steps.get(i).unwrap_or(&none);
                step_fact(step, r, &mut out.values)
            })
            .collect();
        out.steps.push(facts);
    }
    out
}

/// Whether a step was killed by its `timeout:` (`timeout -k 5 N` exits 124, or 137 after the
/// KILL) rather than exiting by itself: its status is then the host's own failure, never one
/// an `expect_status: nonzero` accepts.  The time the guest recorded must reach the limit; a
/// step with such a status and no time recorded counts as timed out (the worse reading).
fn timed_out(step: &Step, r: &StepRecord, status: i32) -> bool {
    matches!(status, 124 | 137)
        && r.seconds
            .is_none_or(|s| s + 0.5 >= f64::from(step.timeout()))
}

fn step_fact(step: &Step, r: &StepRecord, values: &mut BTreeMap<String, String>) -> StepFact {
    let enabled = step_enabled(step, values);
    let mut f = StepFact {
        enabled,
        state: StepState::NotReached,
        value: None,
        problems: vec![],
        detail: tail(&r.stderr, 8),
    };
    f.detail.extend(r.dmesg.iter().cloned());
    if let StepKind::Crash(_) = step.kind {
        f.state = StepState::Crash;
        return f;
    }
    match (r.status, r.skipped) {
        (Some(_), true) => {
            f.problems
                .push("the guest recorded both an exit status and a skip".into());
            return f;
        }
        (None, true) if enabled => {
            f.problems
                .push("skipped in the guest although its condition held".into());
            return f;
        }
        (None, true) => {
            f.state = StepState::Skipped;
            return f;
        }
        (Some(_), false) if !enabled => {
            f.problems
                .push("ran in the guest although its condition was false".into());
            return f;
        }
        (None, false) => {
            if let StepKind::Classify { name, outcomes, .. } = &step.kind {
                if let Some(label) = classify_unfinished(outcomes, &r.dmesg).filter(|_| enabled) {
                    values.insert(name.clone(), label.clone());
                    f.value = Some(Defined::Label {
                        name: name.clone(),
                        label,
                    });
                }
            }
            return f;
        }
        (Some(status), false) => f.state = StepState::Ran(status),
    }
    let StepState::Ran(status) = f.state else {
        unreachable!()
    };
    let timed_out = timed_out(step, r, status);
    let defined = match &step.kind {
        StepKind::Run(cmd) => {
            command_problems(cmd, r, status, timed_out, &mut f);
            None
        }
        StepKind::Capture { name, cmd, expect } => {
            command_problems(cmd, r, status, timed_out, &mut f);
            Some(capture(name, expect.as_deref(), r, &mut f))
        }
        StepKind::Classify {
            name,
            cmd,
            outcomes,
        } => Some(label(name, cmd, outcomes, r, status, timed_out, &mut f)),
        StepKind::Crash(_) => unreachable!("handled above"),
    };
    if let Some(d) = defined {
        values.insert(d.name().to_string(), d.text().to_string());
        f.value = Some(d);
    }
    if let Some(why) = &r.abort {
        if f.problems.is_empty() {
            f.problems.push(format!(
                "the guest stopped the boot here ({}) although the host finds the step met its expectations",
                if why.is_empty() { "no reason given" } else { why }
            ));
        }
    }
    f
}

/// A `run` or `capture` command's unmet expectations: its timeout, exit status, output.
fn command_problems(cmd: &Command, r: &StepRecord, status: i32, timed_out: bool, f: &mut StepFact) {
    if timed_out {
        f.problems.push(format!(
            "timed out after {} s (killed by its timeout)",
            cmd.timeout
        ));
    } else if !cmd.expect_status.accepts(status) {
        f.problems.push(format!(
            "exit status {status}, expected {}",
            cmd.expect_status
        ));
    }
    if let Some(re) = &cmd.expect_match {
        if !matches(re, &trimmed(&r.stdout)) {
            f.problems.push(format!("stdout does not match /{re}/"));
            f.detail.splice(0..0, tail(&r.stdout, 8));
        }
    }
}

/// A capture's value, and its problems: not text, or not the value it must have.
fn capture(name: &str, expect: Option<&str>, r: &StepRecord, f: &mut StepFact) -> Defined {
    let out = trimmed(&r.stdout);
    // Records are read lossily: two different binary outputs could read alike.
    if out.contains('\u{FFFD}') {
        f.problems.push(format!(
            "`{name}` is not text (invalid UTF-8): capture a text, e.g. `… | md5sum`"
        ));
    }
    if let Some(want) = expect.filter(|w| *w != out) {
        f.problems
            .push(format!("`{name}` is `{out}`, expected `{want}`"));
    }
    Defined::Capture {
        name: name.to_string(),
        value: out,
    }
}

/// The host's label for a classification that ran, and where the guest disagrees with it.
fn label(
    name: &str,
    cmd: &Command,
    outcomes: &[Outcome],
    r: &StepRecord,
    status: i32,
    timed_out: bool,
    f: &mut StepFact,
) -> Defined {
    let label = classify_run(outcomes, status, timed_out, &r.dmesg);
    if timed_out && !outcomes.iter().any(|o| o.timeout && o.label == label) {
        f.problems.push(format!(
            "timed out after {} s (killed by its timeout; no outcome says `timeout: true`)",
            cmd.timeout
        ));
    }
    match r.label.as_deref() {
        // The guest does not tell a timeout from a status: the host's label stands.
        _ if timed_out => {}
        Some(g) if g == label => {}
        Some(g) => f.problems.push(format!(
            "the guest classified `{g}` but the host `{label}` (from the same exit status and kernel log)"
        )),
        None => f
            .problems
            .push(format!("the guest recorded no label (the host: `{label}`)")),
    }
    Defined::Label {
        name: name.to_string(),
        label,
    }
}

/// Records an honest guest would write: for the tests of the judges downstream (`check`).
#[cfg(test)]
pub mod test_support {
    use super::{classify, step_enabled, trimmed};
    use crate::case::{Case, StepKind};
    use crate::guest::{BootRecord, StepRecord};
    use std::collections::BTreeMap;

    /// What an honest guest records for `cases/unclean_passthrough.yaml` when the passthrough
    /// activation ends with `status` and `dmesg`, and the captures have the given values.
    pub fn honest_guest(
        case: &Case,
        status: i32,
        dmesg: &[&str],
        caps: &[(&str, &str)],
    ) -> Vec<BootRecord> {
        let caps: BTreeMap<&str, &str> = caps.iter().cloned().collect();
        let mut values = BTreeMap::new();
        let mut recs = Vec::new();
        for boot in &case.boots {
            let mut steps = Vec::new();
            for s in &boot.steps {
                let mut r = StepRecord::default();
                if s.is_crash() {
                } else if !step_enabled(s, &values) {
                    r.skipped = true;
                } else if let StepKind::Classify { name, outcomes, .. } = &s.kind {
                    r.status = Some(status);
                    r.dmesg = dmesg.iter().map(|l| l.to_string()).collect();
                    let label = classify(outcomes, status, &r.dmesg);
                    r.label = Some(label.clone());
                    values.insert(name.clone(), label);
                } else {
                    r.status = Some(0);
                    if let StepKind::Capture { name, .. } = &s.kind {
                        r.stdout = format!("{}\n", caps.get(name.as_str()).copied().unwrap_or("1"));
                        values.insert(name.clone(), trimmed(&r.stdout));
                    }
                }
                steps.push(r);
            }
            let crash = boot.ends_in_crash();
            recs.push(BootRecord {
                started: true,
                release: Some("6.12.117-test".into()),
                targets: Some("cache            v2.3.0\n".into()),
                steps,
                crash_marker: crash,
                done: !crash,
                ..Default::default()
            });
        }
        recs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unfinished_classification_takes_only_a_kernel_log_outcome() {
        let o = |label: &str, status: Option<ExpectStatus>, dmesg: Option<&str>| Outcome {
            label: label.into(),
            status,
            dmesg: dmesg.map(str::to_string),
            timeout: false,
        };
        let outcomes = vec![
            o("oops", None, Some("BUG: kernel NULL pointer dereference")),
            o("eio", Some(ExpectStatus::Code(5)), None),
            o("any", None, None),
        ];
        let log = vec!["BUG: kernel NULL pointer dereference, address: 0".to_string()];
        assert_eq!(
            classify_unfinished(&outcomes, &log).as_deref(),
            Some("oops")
        );
        assert_eq!(classify_unfinished(&outcomes, &[]), None);
        assert_eq!(classify_unfinished(&outcomes[1..], &log), None);
    }

    #[test]
    fn matching_is_on_trimmed_stdout_like_bash() {
        assert!(matches("^1$", &trimmed("1\n")));
        assert!(!matches("^1$", &trimmed("1\n2\n")));
        assert!(matches("^1.2$", &trimmed("1\n2\n")));
    }

    #[test]
    fn classify_first_match() {
        let o: Vec<Outcome> = serde_yaml_ng::from_str(
            "[{ label: 'refused: x', status: nonzero, dmesg: \"can't\" }, { label: accepted, status: 0 }]",
        )
        .unwrap();
        assert_eq!(classify(&o, 0, &[]), "accepted");
        assert_eq!(classify(&o, 1, &["x can't y".into()]), "refused: x");
        assert_eq!(classify(&o, 1, &[]), UNCLASSIFIED);
    }
}
