//! Reporting: live progress (indicatif) driven by [`Event`]s, the verdict for humans, and
//! JSON for machines.

use crate::check::{Status, Verdict};
use crate::matrix::{Coverage, CoverageCell, CoverageRow};
use crate::run::Event;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} [{elapsed:>4}] {prefix} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// A spinner line per running case; prints notices above it.
pub struct Progress {
    bar: ProgressBar,
    prefix: String,
    /// The boot the line is about (`boot 1/2 populate`), for the step lines.
    boot: std::sync::Mutex<String>,
}

impl Progress {
    pub fn new(prefix: &str) -> Self {
        let bar = ProgressBar::new_spinner();
        bar.set_style(spinner_style());
        Self::with_bar(bar, prefix)
    }

    pub fn with_bar(bar: ProgressBar, prefix: &str) -> Self {
        bar.set_prefix(prefix.to_string());
        bar.enable_steady_tick(Duration::from_millis(250));
        Progress {
            bar,
            prefix: prefix.to_string(),
            boot: std::sync::Mutex::new(String::new()),
        }
    }

    pub fn event(&self, e: Event) {
        let mut boot = self.boot.lock().unwrap();
        match e {
            Event::Prepare(m) => self.bar.set_message(m),
            Event::Notice(_) | Event::Warning(_) | Event::JobEnd(_) => {
                if let Some(line) = e.plain() {
                    say(self.bar.is_hidden(), line, |l| self.bar.println(l));
                }
            }
            Event::BootStart {
                boot: b,
                boots,
                name,
                attempt,
            } => {
                *boot = format!("boot {}/{} {name}", b + 1, boots);
                let retry = if attempt > 1 { " (retry)" } else { "" };
                self.bar.set_message(format!("{boot}{retry}: booting"));
            }
            Event::Step {
                step, steps, label, ..
            } => {
                self.bar
                    .set_message(format!("{boot}: step {}/{steps} {label}", step + 1));
            }
            Event::BootEnd { end, seconds, .. } => {
                let mark = if end.as_planned() { "✓" } else { "✗" };
                self.bar.println(format!(
                    "{mark} {} {}: {} ({seconds:.1} s)",
                    self.prefix,
                    boot,
                    end.describe()
                ));
            }
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// A line that must not be lost: above the progress lines on a terminal, on stderr when
/// there is none (CI logs, pipes), where indicatif draws nothing.
fn say(hidden: bool, line: String, println: impl FnOnce(String)) {
    if hidden {
        eprintln!("{line}");
    } else {
        println(line);
    }
}

fn status_word(s: Status) -> &'static str {
    match s {
        Status::Pass => "PASS",
        Status::Fail => "FAIL",
        Status::Infra => "ERROR (infrastructure)",
    }
}

/// The verdict for a terminal.
pub fn render(v: &Verdict, verbose: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "case {} on {}", v.case, v.kernel);
    if let (true, Some(src)) = (verbose, &v.source) {
        let _ = writeln!(s, "  source {src}");
    }
    let _ = writeln!(
        s,
        "  kernel release {}   dm-cache target {}   accel {:?}",
        v.release.as_deref().unwrap_or("?"),
        v.cache_target
            .as_deref()
            .map(|t| format!("v{t}"))
            .unwrap_or_else(|| "?".into()),
        v.accel
    );
    for (i, b) in v.boots.iter().enumerate() {
        let retry = if b.attempts > 1 {
            format!(", {} attempts", b.attempts)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "  boot {} {}: {} ({:.1} s{retry})",
            i + 1,
            b.name,
            b.end.describe(),
            b.seconds
        );
        for (j, st) in b.steps.iter().enumerate() {
            if st.skipped && !verbose {
                continue;
            }
            let mark = match (st.skipped, st.ok) {
                (true, _) => "-",
                (false, true) => "✓",
                (false, false) => "✗",
            };
            let time = st
                .seconds
                .map(|t| format!("{t:>6.2} s"))
                .unwrap_or_else(|| "      ".into());
            let status = match (st.skipped, st.status) {
                (true, _) => "skipped".to_string(),
                (_, Some(c)) => format!("rc={c}"),
                (_, None) if st.ok => String::new(),
                _ => "not run".into(),
            };
            let _ = writeln!(
                s,
                "    {mark} {:>2} {time} {:<8} {}",
                j + 1,
                status,
                st.label
            );
        }
    }
    for (name, c) in &v.classifications {
        let _ = writeln!(s, "  {name}: {}", c.label);
        for e in &c.evidence {
            let _ = writeln!(s, "      kernel: {}", crate::console::strip_ts(e));
        }
        if let Some(allowed) = v.expected.get(name) {
            let _ = writeln!(s, "      expected for this kernel: {}", allowed.join(" | "));
        }
    }
    if let Some(n) = &v.expected_note {
        let _ = writeln!(s, "      ({n})");
    }
    if !v.captures.is_empty() {
        let _ = writeln!(s, "  captures:");
        for (k, val) in &v.captures {
            let _ = writeln!(s, "    {k:<20} {val}");
        }
    }
    if verbose && !v.tools.is_empty() {
        let _ = writeln!(s, "  guest tools:");
        for (k, val) in &v.tools {
            let _ = writeln!(s, "    {k:<12} {val}");
        }
    }
    for f in &v.failures {
        let _ = writeln!(s, "  ✗ {}", f.what);
        for d in f.detail.iter().take(if verbose { 60 } else { 14 }) {
            let _ = writeln!(s, "      | {d}");
        }
    }
    if let Some(w) = &v.workdir {
        let _ = writeln!(s, "  kept: {w} (disks/, results/, logs/*.console.log)");
    }
    let _ = writeln!(
        s,
        "{}: {} ({:.1} s)",
        status_word(v.status),
        v.case,
        v.seconds
    );
    s
}

pub fn to_json(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// How a pair came out, for tables: the first run's result and whether it matched.
enum PairMark {
    Ok,
    Flaky,
    Mismatch,
    /// A host error kept a run from a verdict.
    Error,
}

/// The first line of a host error, at most `max` characters, for a table cell.
fn short(e: &str, max: usize) -> String {
    let line = e.lines().next().unwrap_or("");
    if line.chars().count() <= max {
        line.to_string()
    } else {
        format!("{}…", line.chars().take(max - 1).collect::<String>())
    }
}

fn pair_cells(r: &crate::matrix::PairResult) -> (String, PairMark) {
    let result = match (r.runs.first(), r.errors.first()) {
        (Some(v), _) => crate::matrix::describe(v),
        (None, Some(e)) => format!("ERROR {}", short(e, 50)),
        (None, None) => "not run".into(),
    };
    let mark = if !r.errors.is_empty() {
        PairMark::Error
    } else if !r.ok() {
        PairMark::Mismatch
    } else if r.flaky() {
        PairMark::Flaky
    } else {
        PairMark::Ok
    };
    (result, mark)
}

/// What to say under a table about a pair that is not as expected: its host errors, then
/// per run what differed.
fn pair_problems(r: &crate::matrix::PairResult) -> Vec<String> {
    let mut out: Vec<String> = r.errors.iter().map(|e| format!("error: {e}")).collect();
    for (i, m) in r.mismatches.iter().enumerate() {
        for line in m {
            out.push(format!("run {}: {line}", i + 1));
        }
    }
    out
}

/// The matrix as a Markdown table (for `$GITHUB_STEP_SUMMARY`).
pub fn matrix_markdown(results: &[crate::matrix::PairResult]) -> String {
    let mut s = String::from(
        "| kernel | case | expected | result | release | cache target | time (min/med/max) | |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let (lo, med, hi) = r.durations();
        let v = r.runs.first();
        let (result, mark) = pair_cells(r);
        let mark = match mark {
            PairMark::Error => "❌ error",
            PairMark::Mismatch => "❌ mismatch",
            PairMark::Flaky => "⚠️ flaky",
            PairMark::Ok => "✅",
        };
        let times = if r.runs.is_empty() {
            "-".to_string()
        } else if r.runs.len() > 1 {
            format!("{lo:.0}/{med:.0}/{hi:.0} s ×{}", r.runs.len())
        } else {
            format!("{med:.0} s")
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} ({}) | {} | {} | {} | {} | {} |",
            r.pair.kernel,
            r.pair.case,
            r.pair.outcome,
            match r.pair.verdict {
                crate::matrix::VerdictExpect::Pass => "pass",
                crate::matrix::VerdictExpect::Fail => "fail",
            },
            result.replace('|', "\\|"),
            v.and_then(|v| v.release.clone()).unwrap_or_default(),
            v.and_then(|v| v.cache_target.clone()).unwrap_or_default(),
            times,
            mark
        );
    }
    for r in results.iter().filter(|r| !r.ok()) {
        let _ = writeln!(s, "\n**{}** on `{}`:", r.pair.id(), r.spec);
        for line in pair_problems(r) {
            let _ = writeln!(s, "- {line}");
        }
    }
    s
}

/// Builds the coverage view; rows and columns in name order.
pub fn coverage(results: &[crate::matrix::PairResult]) -> Coverage {
    let mut cases: Vec<String> = results.iter().map(|r| r.pair.case.clone()).collect();
    cases.sort();
    cases.dedup();
    let mut rows: BTreeMap<String, CoverageRow> = BTreeMap::new();
    for r in results {
        let v = r.runs.first();
        let row = rows
            .entry(r.pair.kernel.clone())
            .or_insert_with(|| CoverageRow {
                kernel: r.pair.kernel.clone(),
                spec: r.spec.clone(),
                release: None,
                cache_target: None,
                cells: BTreeMap::new(),
            });
        if let Some(v) = v {
            row.release = row.release.clone().or_else(|| v.release.clone());
            row.cache_target = row.cache_target.clone().or_else(|| v.cache_target.clone());
        }
        let verdict = match v.map(|v| v.status) {
            _ if r.errored() => "error",
            Some(Status::Pass) => "pass",
            Some(Status::Fail) => "fail",
            _ => "error",
        };
        let (result, _) = pair_cells(r);
        let result = result
            .trim_start_matches("PASS")
            .trim_start_matches("FAIL")
            .trim()
            .to_string();
        row.cells.insert(
            r.pair.case.clone(),
            CoverageCell {
                verdict: verdict.into(),
                result,
                as_expected: r.ok(),
            },
        );
    }
    Coverage {
        cases,
        kernels: rows.into_values().collect(),
    }
}

/// The coverage view as Markdown: ✅ the property held, ❌ it did not, ⚠️ no verdict; `(!)`
/// marks a cell that differs from the matrix's expectation.
pub fn coverage_markdown(c: &Coverage) -> String {
    let mut s = format!(
        "| kernel | release | target | {} |\n|---|---|---|{}\n",
        c.cases
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(c.cases.len())
    );
    for row in &c.kernels {
        let cells: Vec<String> = c
            .cases
            .iter()
            .map(|case| match row.cells.get(case) {
                None => "·".to_string(),
                Some(cell) => {
                    let mark = match cell.verdict.as_str() {
                        "pass" => "✅",
                        "fail" => "❌",
                        _ => "⚠️",
                    };
                    let unexpected = if cell.as_expected { "" } else { " (!)" };
                    format!("{mark} {}{unexpected}", cell.result.replace('|', "\\|"))
                }
            })
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            row.kernel,
            row.release.as_deref().unwrap_or(""),
            row.cache_target.as_deref().unwrap_or(""),
            cells.join(" | ")
        );
    }
    s.push_str("\n✅ the case's property held (the fix is there in behaviour) · ❌ it did not · ⚠️ no verdict · (!) not what `matrix.yaml` expects · · not paired\n");
    s
}

/// The matrix as JUnit XML: one test case per (kernel, case) pair and run.
pub fn matrix_junit(results: &[crate::matrix::PairResult]) -> String {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut report = Report::new("dmcache-vmtest");
    let mut suite = TestSuite::new("matrix");
    for r in results {
        for (i, v) in r.runs.iter().enumerate() {
            let mism = &r.mismatches[i];
            let status = if mism.is_empty() {
                TestCaseStatus::success()
            } else {
                let mut st = TestCaseStatus::non_success(if v.status == Status::Infra {
                    NonSuccessKind::Error
                } else {
                    NonSuccessKind::Failure
                });
                st.set_message(mism.join("; "));
                st.set_description(render(v, true));
                st
            };
            let name = if r.runs.len() > 1 {
                format!("{} #{}", r.pair.id(), i + 1)
            } else {
                r.pair.id()
            };
            let mut tc = TestCase::new(name, status);
            tc.set_classname(format!("{}.{}", r.pair.kernel, r.pair.case));
            tc.set_time(Duration::from_secs_f64(v.seconds));
            if mism.is_empty() {
                tc.set_system_out(render(v, false));
            }
            tc.add_property(quick_junit::Property::new("kernel", r.spec.clone()));
            tc.add_property(quick_junit::Property::new(
                "release",
                v.release.clone().unwrap_or_default(),
            ));
            tc.add_property(quick_junit::Property::new(
                "cache_target",
                v.cache_target.clone().unwrap_or_default(),
            ));
            tc.add_property(quick_junit::Property::new("outcome", describe_short(v)));
            for (tool, version) in &v.tools {
                tc.add_property(quick_junit::Property::new(
                    format!("guest.{tool}"),
                    version.clone(),
                ));
            }
            suite.add_test_case(tc);
        }
        for (i, e) in r.errors.iter().enumerate() {
            let mut st = TestCaseStatus::non_success(NonSuccessKind::Error);
            st.set_message(short(e, 200));
            st.set_description(e.clone());
            let name = if r.runs.len() + r.errors.len() > 1 {
                format!("{} error #{}", r.pair.id(), i + 1)
            } else {
                r.pair.id()
            };
            let mut tc = TestCase::new(name, st);
            tc.set_classname(format!("{}.{}", r.pair.kernel, r.pair.case));
            tc.add_property(quick_junit::Property::new("kernel", r.spec.clone()));
            tc.add_property(quick_junit::Property::new("outcome", "ERROR (host)"));
            suite.add_test_case(tc);
        }
        if r.runs.is_empty() && r.errors.is_empty() {
            let mut st = TestCaseStatus::non_success(NonSuccessKind::Error);
            st.set_message("not run");
            suite.add_test_case(TestCase::new(r.pair.id(), st));
        }
    }
    report.add_test_suite(suite);
    report
        .to_string()
        .unwrap_or_else(|e| format!("<!-- junit error: {e} -->"))
}

fn describe_short(v: &Verdict) -> String {
    crate::matrix::describe(v)
}

/// The matrix for a terminal.
pub fn matrix_table(results: &[crate::matrix::PairResult]) -> String {
    let mut s = String::new();
    // Columns as wide as their longest entry (at least the old fixed widths).
    let width = |f: &dyn Fn(&crate::matrix::PairResult) -> usize, min: usize| {
        results.iter().map(f).max().unwrap_or(0).max(min)
    };
    let kw = width(&|r| r.pair.kernel.chars().count(), 14);
    let cw = width(&|r| r.pair.case.chars().count(), 28);
    let _ = writeln!(
        s,
        "{:<kw$} {:<cw$} {:<12} {:<58} {:>8}",
        "kernel", "case", "expected", "result", "time"
    );
    for r in results {
        let (_, med, _) = r.durations();
        let (result, mark) = pair_cells(r);
        let mark = match mark {
            PairMark::Error => "✗ ERROR",
            PairMark::Mismatch => "✗ MISMATCH",
            PairMark::Flaky => "! flaky",
            PairMark::Ok => "✓",
        };
        let time = if r.runs.is_empty() {
            "-".to_string()
        } else {
            format!("{med:.0} s")
        };
        let _ = writeln!(
            s,
            "{:<kw$} {:<cw$} {:<12} {:<58} {time:>8} {mark}",
            r.pair.kernel, r.pair.case, r.pair.outcome, result
        );
    }
    for r in results.iter().filter(|r| !r.ok()) {
        for line in pair_problems(r) {
            let _ = writeln!(s, "  {} {line}", r.pair.id());
        }
    }
    s
}

/// One progress line per running VM (matrix runs).
pub struct MultiUi {
    multi: indicatif::MultiProgress,
    bars: std::sync::Mutex<std::collections::BTreeMap<String, Progress>>,
}

impl Default for MultiUi {
    fn default() -> Self {
        Self::new()
    }
}

impl MultiUi {
    pub fn new() -> Self {
        MultiUi {
            multi: indicatif::MultiProgress::new(),
            bars: std::sync::Mutex::new(Default::default()),
        }
    }

    /// An event of the job `label`: its own progress line while it runs; notes, warnings and
    /// the job's summary are kept above the lines, with the label.
    pub fn event(&self, label: &str, e: Event) {
        let mut bars = self.bars.lock().unwrap();
        match e {
            Event::Notice(_) | Event::Warning(_) | Event::JobEnd(_) => {
                if matches!(e, Event::JobEnd(_)) {
                    if let Some(p) = bars.remove(label) {
                        p.finish();
                    }
                }
                if let Some(line) = e.prefixed(label).plain() {
                    say(self.multi.is_hidden(), line, |l| {
                        let _ = self.multi.println(l);
                    });
                }
            }
            e => {
                let p = bars.entry(label.to_string()).or_insert_with(|| {
                    let bar = self.multi.add(ProgressBar::new_spinner());
                    bar.set_style(spinner_style());
                    Progress::with_bar(bar, label)
                });
                p.event(e);
            }
        }
    }

    pub fn finish(&self) {
        for (_, p) in std::mem::take(&mut *self.bars.lock().unwrap()) {
            p.finish();
        }
    }
}
