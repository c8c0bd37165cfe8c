//! The one stream of progress.  Everything that reports what it is doing — kernel fetch,
//! unpack and build (`kernel`, `debian`, `kbuild`, `image`), boots and steps (`run`), matrix
//! and review jobs — sends [`Event`]s to a sink, `&mut dyn FnMut(Event)` ([`Sink`]); one
//! terminal renderer (`report::Progress`, and `report::MultiUi` for parallel jobs) draws
//! them, and `plain` gives the line a log without a terminal gets.  Nothing below the
//! command layer prints.
//!
//! The order, as a state machine (danobi/vmtest's `Output` is the model):
//!
//! ```text
//! Prepare*                                   the kernel (and image) a run needs
//! ( BootStart (Step)* BootEnd )*              each boot; a retried boot starts again
//! JobEnd                                     multi-job runs: this job is over
//! ```
//!
//! `Notice` and `Warning` may come at any point and are kept on screen; `Prepare` and `Step`
//! replace the line's current activity.

use serde::Serialize;

/// What receives the stream.
pub type Sink<'a> = dyn FnMut(Event) + 'a;

/// One event of the stream.
#[derive(Debug, Clone)]
pub enum Event {
    /// Host-side preparation — a kernel resolved, fetched, unpacked, patched, configured or
    /// built, an image built: what is being done now (the next one replaces it).
    Prepare(String),
    BootStart {
        boot: usize,
        boots: usize,
        name: String,
        attempt: u32,
    },
    Step {
        boot: usize,
        step: usize,
        steps: usize,
        label: String,
    },
    BootEnd {
        boot: usize,
        end: BootEnd,
        seconds: f64,
    },
    /// Something to keep on screen (a fallback, a skipped option, a retried state): printed
    /// as `note: …`.
    Notice(String),
    /// Something probably wrong that does not stop the work (an index that could not be
    /// read, a stale cache): printed as `warning: …`.
    Warning(String),
    /// One job of a multi-job run (a matrix pair's run, a review's case run) ended: its
    /// progress line goes, and the summary (if not empty) is kept in its place.
    JobEnd(String),
}

/// How a boot ended, from the results dir, the process and the console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum BootEnd {
    /// Ran to the end of its steps and powered off.
    Exited,
    /// Reached its `crash` step and the machine reset.
    Reset,
    /// A step failed its expectation; the guest stopped the boot there.
    Aborted(String),
    Panic(String),
    /// Still running at the timeout.
    Hang,
    /// The guest's setup failed (no dm-cache target, disk missing …).
    GuestError(String),
    /// Never reached the first step, twice.
    Infra(String),
    /// QEMU/vng ended without a reset, a panic or the done marker.
    Died(String),
    Interrupted,
}

impl BootEnd {
    /// The boot went to an end the guest script reaches: it exited after its last step or reset
    /// at its `crash` step (which of the two the case planned, [`crate::check`] checks).  Only
    /// then do the next boot, and the verdict, look at what it left.
    pub fn as_planned(&self) -> bool {
        matches!(self, BootEnd::Exited | BootEnd::Reset)
    }

    pub fn describe(&self) -> String {
        match self {
            BootEnd::Exited => "exited".into(),
            BootEnd::Reset => "reset by sysrq-b".into(),
            BootEnd::Aborted(m) => format!("stopped: {m}"),
            BootEnd::Panic(m) => format!("kernel panic: {m}"),
            BootEnd::Hang => "hang (timeout)".into(),
            BootEnd::GuestError(m) => format!("guest setup failed: {m}"),
            BootEnd::Infra(m) => format!("infrastructure failure: {m}"),
            BootEnd::Died(m) => format!("VM died: {m}"),
            BootEnd::Interrupted => "interrupted".into(),
        }
    }
}

impl Event {
    /// The same event with `prefix: ` before its text (a tree's or a kernel's name); events
    /// without text are unchanged.
    pub fn prefixed(self, prefix: &str) -> Event {
        match self {
            Event::Prepare(m) => Event::Prepare(format!("{prefix}: {m}")),
            Event::Notice(m) => Event::Notice(format!("{prefix}: {m}")),
            Event::Warning(m) => Event::Warning(format!("{prefix}: {m}")),
            e => e,
        }
    }

    /// The line a log without a terminal gets, if the event has one (boots and steps are
    /// drawn by the terminal renderer only).
    pub fn plain(&self) -> Option<String> {
        match self {
            Event::Prepare(m) => Some(m.clone()),
            Event::Notice(m) => Some(format!("note: {m}")),
            Event::Warning(m) => Some(format!("warning: {m}")),
            Event::BootEnd { boot, end, seconds } => Some(format!(
                "boot {}: {} ({seconds:.1} s)",
                boot + 1,
                end.describe()
            )),
            Event::JobEnd(m) if !m.is_empty() => Some(m.clone()),
            Event::BootStart { .. } | Event::Step { .. } | Event::JobEnd(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixed_and_plain() {
        let e = Event::Warning("no index".into()).prefixed("debian:6.18.5");
        assert_eq!(
            e.plain().as_deref(),
            Some("warning: debian:6.18.5: no index")
        );
        let e = Event::Prepare("make".into()).prefixed("t");
        assert_eq!(e.plain().as_deref(), Some("t: make"));
        assert!(Event::JobEnd(String::new()).prefixed("t").plain().is_none());
        let e = Event::BootEnd {
            boot: 0,
            end: BootEnd::Reset,
            seconds: 2.0,
        };
        assert_eq!(
            e.plain().as_deref(),
            Some("boot 1: reset by sysrq-b (2.0 s)")
        );
    }
}
