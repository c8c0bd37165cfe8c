//! Reporting: live progress (indicatif) driven by [`Event`]s, the verdict for humans, and
//! JSON for machines.

use crate::check::{Status, Verdict};
use crate::run::{BootEnd, Event};
use indicatif::{ProgressBar, ProgressStyle};
use std::fmt::Write as _;
use std::time::Duration;

/// A spinner line per running case; prints notices above it.
pub struct Progress {
    bar: ProgressBar,
    prefix: String,
    boot: String,
}

impl Progress {
    pub fn new(prefix: &str) -> Self {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed:>4}] {prefix} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(prefix.to_string());
        bar.enable_steady_tick(Duration::from_millis(250));
        Progress {
            bar,
            prefix: prefix.to_string(),
            boot: String::new(),
        }
    }

    pub fn with_bar(bar: ProgressBar, prefix: &str) -> Self {
        bar.set_prefix(prefix.to_string());
        bar.enable_steady_tick(Duration::from_millis(250));
        Progress {
            bar,
            prefix: prefix.to_string(),
            boot: String::new(),
        }
    }

    pub fn message(&self, m: &str) {
        self.bar.set_message(m.to_string());
    }

    pub fn notice(&self, m: &str) {
        self.bar.println(format!("note: {m}"));
    }

    pub fn event(&mut self, e: Event) {
        match e {
            Event::BootStart { boot, boots, name, attempt } => {
                self.boot = format!("boot {}/{} {name}", boot + 1, boots);
                let retry = if attempt > 1 { " (retry)" } else { "" };
                self.bar.set_message(format!("{}{retry}: booting", self.boot));
            }
            Event::Step { step, steps, label, .. } => {
                self.bar
                    .set_message(format!("{}: step {}/{steps} {label}", self.boot, step + 1));
            }
            Event::BootEnd { end, seconds, .. } => {
                let mark = if matches!(end, BootEnd::Exited | BootEnd::Reset) { "✓" } else { "✗" };
                self.bar.println(format!(
                    "{mark} {} {}: {} ({seconds:.1} s)",
                    self.prefix,
                    self.boot,
                    end.describe()
                ));
            }
            Event::Notice(m) => self.notice(&m),
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
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
    let _ = writeln!(
        s,
        "  kernel release {}   dm-cache target {}   accel {:?}",
        v.release.as_deref().unwrap_or("?"),
        v.cache_target.as_deref().map(|t| format!("v{t}")).unwrap_or_else(|| "?".into()),
        v.accel
    );
    for (i, b) in v.boots.iter().enumerate() {
        let retry = if b.attempts > 1 { format!(", {} attempts", b.attempts) } else { String::new() };
        let _ = writeln!(s, "  boot {} {}: {} ({:.1} s{retry})", i + 1, b.name, b.end.describe(), b.seconds);
        for (j, st) in b.steps.iter().enumerate() {
            if st.skipped && !verbose {
                continue;
            }
            let mark = if st.skipped {
                "-"
            } else if st.ok && st.status.is_some() {
                "✓"
            } else if st.ok {
                "✓"
            } else {
                "✗"
            };
            let time = st.seconds.map(|t| format!("{t:>6.2} s")).unwrap_or_else(|| "      ".into());
            let status = match (st.skipped, st.status) {
                (true, _) => "skipped".to_string(),
                (_, Some(c)) => format!("rc={c}"),
                (_, None) if st.ok => String::new(),
                _ => "not run".into(),
            };
            let _ = writeln!(s, "    {mark} {:>2} {time} {:<8} {}", j + 1, status, st.label);
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
    let _ = writeln!(s, "{}: {} ({:.1} s)", status_word(v.status), v.case, v.seconds);
    s
}

pub fn to_json(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
