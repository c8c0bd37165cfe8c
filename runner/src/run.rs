//! Runs one case on one kernel: a work dir with sparse raw disks and a results dir, then one
//! VM per boot on the same disks, in order.  A boot that never reached its first step is an
//! infrastructure failure and is retried once.  Emits [`Event`]s (boots and steps).

use crate::case::Case;
use crate::console::{self, ConsoleScan};
pub use crate::event::{BootEnd, Event};
use crate::guest::{self, BootRecord};
use crate::kernel::Kernel;
use crate::replay;
use crate::vm::{self, Accel, ProcessEnd, VmConfig};
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Per-boot timeout.
    pub timeout: Duration,
    /// Keep the work dir (disks, results, console logs) and report its path.
    pub keep: bool,
    pub accel: Accel,
    /// Overrides of the case's `vm:` settings.
    pub memory: Option<String>,
    pub cpus: Option<u32>,
    /// Guest root filesystem (`--image`); `None` = host root, read-only.
    pub root: Option<PathBuf>,
    /// Copy each run's `logs/` and `results/` (not the disks) into a new dir under this one.
    pub save_logs: Option<PathBuf>,
    /// Extra kernel command-line parameters for every boot.
    pub kernel_args: Vec<String>,
    /// Record every write of every boot to `disks/<name>.log` (QEMU's blklogwrites, see
    /// [`vm::Recording`]); the disk image then ends in the mark area.  `crashpoints` sets it.
    pub record: bool,
}

impl RunOptions {
    pub fn new(accel: Accel) -> Self {
        RunOptions {
            timeout: Duration::from_secs(600),
            keep: false,
            accel,
            memory: None,
            cpus: None,
            root: None,
            save_logs: None,
            kernel_args: Vec::new(),
            record: false,
        }
    }
}

/// One boot as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct BootOutcome {
    pub name: String,
    pub record: BootRecord,
    pub scan: ConsoleScan,
    pub end: BootEnd,
    pub process: ProcessEnd,
    pub seconds: f64,
    /// Seconds until the console's first byte (the host side of the boot).
    pub first_output: Option<f64>,
    pub attempts: u32,
    pub console_log: PathBuf,
    /// The console text (for dmesg assertions and evidence).
    #[serde(skip)]
    pub console: String,
}

/// A whole case run on one kernel.
#[derive(Debug, Clone, Serialize)]
pub struct CaseRun {
    pub case: String,
    pub kernel: Kernel,
    pub accel: Accel,
    /// Boots that ran, in order (later boots are missing when an earlier one went wrong).
    pub boots: Vec<BootOutcome>,
    /// Kept work dir (with `--keep`).
    pub workdir: Option<PathBuf>,
    pub seconds: f64,
}

/// The VM settings of a boot: the case's `vm:` values, overridden by the options.
pub fn vm_config(
    case: &Case,
    kernel: &Kernel,
    opts: &RunOptions,
    disks: Vec<(String, PathBuf)>,
    rwdir: &Path,
    exec: String,
) -> VmConfig {
    VmConfig {
        kernel: kernel.image.clone(),
        disks,
        rwdir: rwdir.to_path_buf(),
        exec,
        memory: opts
            .memory
            .clone()
            .or_else(|| case.vm.memory.clone())
            .unwrap_or_else(|| "1G".into()),
        cpus: opts
            .cpus
            .or(case.vm.cpus)
            .unwrap_or(default_cpus(opts.accel)),
        accel: opts.accel,
        root: opts.root.clone(),
        modules: kernel.release.clone().zip(kernel.modules.clone()),
        udev: case.vm.udev,
        kernel_args: case
            .vm
            .kernel_args
            .iter()
            .chain(&opts.kernel_args)
            .cloned()
            .collect(),
        record: None,
    }
}

/// vCPUs when neither the case nor the user says: 1 under TCG (with several vCPUs, software
/// emulation races the kernel's live code patching: seen here as `Oops: int3` at boot), 2 on KVM.
pub fn default_cpus(accel: Accel) -> u32 {
    match accel {
        Accel::Tcg => 1,
        Accel::Kvm => 2,
    }
}

/// Decides how a boot ended.
pub fn boot_end(
    case: &Case,
    b: usize,
    rec: &BootRecord,
    scan: &ConsoleScan,
    process: ProcessEnd,
) -> BootEnd {
    let planned_crash = case.boots[b].ends_in_crash();
    if process == ProcessEnd::Interrupted {
        return BootEnd::Interrupted;
    }
    if !rec.started {
        // Whatever stopped it, the case never ran: not a verdict on the case.
        let why = if let Some(p) = &scan.panic {
            format!("the kernel panicked while booting, before the first step: {p}")
        } else if let Some(p) = &scan.boot_splat {
            // The guest script saw it and stopped before its first step (seen: KASAN's
            // `wild-memory-access in _raw_spin_lock` during the delay-loop calibration, in
            // about one TCG boot of five of the same kernel).
            format!("the kernel reported a splat while booting, before the first step: {p}")
        } else if scan.kvm_error {
            "KVM internal error (set DMCACHE_VMTEST_ACCEL=tcg)".to_string()
        } else if let Some(e) = &rec.error {
            return BootEnd::GuestError(e.clone());
        } else if process == ProcessEnd::Timeout {
            "timed out before the first step".to_string()
        } else if !scan.kernel_started {
            format!("the kernel never printed a line ({process:?})")
        } else {
            format!("the guest script never started ({process:?})")
        };
        return BootEnd::Infra(why);
    }
    if let Some(p) = &scan.panic {
        return BootEnd::Panic(p.clone());
    }
    if process == ProcessEnd::Stopped {
        return BootEnd::Died(format!(
            "stopped by the runner {} s after a kernel splat, at step {}/{}",
            SPLAT_GRACE.as_secs(),
            rec.steps_finished(),
            case.boots[b].steps.len()
        ));
    }
    if let Some(e) = &rec.error {
        return BootEnd::GuestError(e.clone());
    }
    if let Some(a) = rec.steps.iter().find_map(|s| s.abort.clone()) {
        return BootEnd::Aborted(a);
    }
    if process == ProcessEnd::Timeout {
        return BootEnd::Hang;
    }
    if planned_crash && rec.crash_marker && (scan.sysrq_reset || process != ProcessEnd::Exited(0)) {
        return BootEnd::Reset;
    }
    if !planned_crash && rec.done {
        return BootEnd::Exited;
    }
    BootEnd::Died(format!(
        "{process:?} after step {}/{}",
        rec.steps_finished(),
        case.boots[b].steps.len()
    ))
}

/// How long a guest may go on after a kernel oops, BUG, KASAN report or hung task before the
/// runner stops it: the verdict is a FAIL already, and such a guest usually hangs until the
/// boot's timeout (seen: Debian 6.16's `dmsetup remove` stuck after a NULL dereference in the
/// passthrough write path).
pub const SPLAT_GRACE: Duration = Duration::from_secs(20);

/// Watches a growing console log for a fatal splat, reading it about once a second.
#[derive(Default)]
struct SplatWatch {
    checked: Option<Instant>,
    seen: Option<Instant>,
}

impl SplatWatch {
    /// True once a fatal splat was seen [`SPLAT_GRACE`] ago.
    fn expired(&mut self, console: &Path) -> bool {
        if let Some(t) = self.seen {
            return t.elapsed() >= SPLAT_GRACE;
        }
        if self
            .checked
            .is_some_and(|c| c.elapsed() < Duration::from_secs(1))
        {
            return false;
        }
        self.checked = Some(Instant::now());
        let log = crate::console::read_lossy(console);
        if console::fatal_splat(&log).is_some() {
            self.seen = Some(Instant::now());
        }
        false
    }
}

/// Creates the work dir: `disks/*.img` (sparse), `results/`, `logs/`.
/// A fresh work dir: `disks/` (sparse raw images of the case's sizes; recorded: with the mark
/// area after each, and an empty write log beside it), `results/`, `logs/`.
pub fn make_workdir(case: &Case, opts: &RunOptions) -> Result<tempfile::TempDir> {
    let parent = std::env::temp_dir();
    std::fs::create_dir_all(&parent)?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("dmcache-vmtest-{}-", case.name))
        .tempdir_in(&parent)
        .with_context(|| format!("cannot create a work dir in {}", parent.display()))?;
    for sub in ["disks", "results", "logs"] {
        std::fs::create_dir_all(dir.path().join(sub))?;
    }
    for d in &case.disks {
        let f = std::fs::File::create(disk_path(dir.path(), &d.name))?;
        let marks = if opts.record { vm::MARK_BYTES } else { 0 };
        f.set_len(d.size.0 + marks)?;
        if opts.record {
            std::fs::File::create(log_path(dir.path(), &d.name))?;
        }
    }
    Ok(dir)
}

pub fn disk_path(work: &Path, name: &str) -> PathBuf {
    work.join("disks").join(format!("{name}.img"))
}

/// The write log of a recorded disk.
pub fn log_path(work: &Path, name: &str) -> PathBuf {
    work.join("disks").join(format!("{name}.log"))
}

/// Runs every boot of `case` on `kernel`.
pub fn run_case(
    case: &Case,
    kernel: &Kernel,
    opts: &RunOptions,
    events: &mut dyn FnMut(Event),
) -> Result<CaseRun> {
    crate::kernel::check_requires(kernel, &case.name, &case.requires)?;
    let start = Instant::now();
    let work = make_workdir(case, opts)?;
    let got = run_boots(
        case,
        kernel,
        opts,
        work.path(),
        0..case.boots.len(),
        Vec::new(),
        events,
    );
    let (boots, work) = keep_on_error(work, opts.keep, got)?;
    finish_run(case, kernel, opts, work, boots, start)
}

/// `got` and the work dir; on an error the work dir is removed, or kept (and the error says
/// where) when the user asked to keep it: never lose disks the user asked to keep.
pub fn keep_on_error<T>(
    work: tempfile::TempDir,
    keep: bool,
    got: Result<T>,
) -> Result<(T, tempfile::TempDir)> {
    match got {
        Ok(v) => Ok((v, work)),
        Err(e) if keep => {
            let kept = work.keep();
            Err(e.context(format!("work dir kept at {}", kept.display())))
        }
        Err(e) => Err(e),
    }
}

/// Runs boots `range` of `case` in the work dir `work`, after the boots `prior` (already run,
/// on these disks or on the state they left), and returns them all.  Stops after a boot that
/// did not end as it should (reset or exit).
pub fn run_boots(
    case: &Case,
    kernel: &Kernel,
    opts: &RunOptions,
    work: &Path,
    range: std::ops::Range<usize>,
    mut boots: Vec<BootOutcome>,
    events: &mut dyn FnMut(Event),
) -> Result<Vec<BootOutcome>> {
    let results = work.join("results");
    let logs = work.join("logs");
    let records: Vec<&BootRecord> = boots.iter().map(|o| &o.record).collect();
    let mut values = replay::replay(case, &records).values;
    for b in range {
        let outcome = run_boot(
            case, b, kernel, opts, work, &results, &logs, &values, events,
        )?;
        let go_on = outcome.end.as_planned();
        boots.push(outcome);
        if !go_on {
            break;
        }
        // The next boot gets the values as the host derived them, never the guest's.
        let records: Vec<&BootRecord> = boots.iter().map(|o| &o.record).collect();
        values = replay::replay(case, &records).values;
    }
    Ok(boots)
}

/// Keeps or removes the work dir, copies the logs (`--logs`), and makes the [`CaseRun`].
pub fn finish_run(
    case: &Case,
    kernel: &Kernel,
    opts: &RunOptions,
    work: tempfile::TempDir,
    boots: Vec<BootOutcome>,
    start: Instant,
) -> Result<CaseRun> {
    // Kept before the logs are copied: a failed copy must not cost the disks asked for.
    let (workdir, work_path) = if opts.keep {
        let kept = work.keep();
        (Some(kept.clone()), kept)
    } else {
        (None, work.path().to_path_buf())
    };
    if let Some(dest) = &opts.save_logs {
        let name = format!(
            "{}-{}",
            case.name,
            kernel.release.as_deref().unwrap_or("kernel")
        );
        if let Err(e) = save_logs(&work_path, dest, &name) {
            return Err(match &workdir {
                Some(k) => e.context(format!("work dir kept at {}", k.display())),
                None => e,
            });
        }
    }
    Ok(CaseRun {
        case: case.name.clone(),
        kernel: kernel.clone(),
        accel: opts.accel,
        boots,
        workdir,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Copies `logs/` and `results/` of a work dir into a fresh `dest/<name>-N/`.
fn save_logs(work: &Path, dest: &Path, name: &str) -> Result<()> {
    std::fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let target = tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir_in(dest)?
        .keep();
    for sub in ["logs", "results"] {
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(work.join(sub))
            .arg(&target)
            .status()?;
        anyhow::ensure!(st.success(), "cannot copy {sub} to {}", target.display());
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_boot(
    case: &Case,
    b: usize,
    kernel: &Kernel,
    opts: &RunOptions,
    work: &Path,
    results: &Path,
    logs: &Path,
    carried: &BTreeMap<String, String>,
    events: &mut dyn FnMut(Event),
) -> Result<BootOutcome> {
    let boot = &case.boots[b];
    let nsteps = boot.steps.len();
    let mut attempt = 1;
    loop {
        let bdir = guest::boot_dir(results, b);
        let _ = std::fs::remove_dir_all(&bdir);
        let tools = if opts.root.is_some() {
            guest::ToolFacts::InGuest
        } else {
            guest::ToolFacts::OnHost
        };
        let script = guest::prepare_boot(case, b, results, carried, tools)?;
        let disks = case
            .disks
            .iter()
            .map(|d| (d.name.clone(), disk_path(work, &d.name)))
            .collect();
        let mut cfg = vm_config(
            case,
            kernel,
            opts,
            disks,
            results,
            format!("sh {}", script.display()),
        );
        if opts.record {
            let d = &case.disks[0];
            cfg.record = Some(vm::Recording {
                log: log_path(work, &d.name),
                append: b > 0 || attempt > 1,
                disk_bytes: d.size.0,
            });
        }
        events(Event::BootStart {
            boot: b,
            boots: case.boots.len(),
            name: boot.name.clone(),
            attempt,
        });
        let mut last_step = usize::MAX;
        let tag = format!("boot-{}-try-{attempt}", b + 1);
        let console_path = vm::console_log_path(logs, &tag);
        let mut splat_watch = SplatWatch::default();
        // Both callbacks report progress: the boot's steps, and a wait for a core.
        let shared = std::cell::RefCell::new(&mut *events);
        let mut tick = || {
            if splat_watch.expired(&console_path) {
                return true;
            }
            let done = guest::steps_finished(&bdir, nsteps);
            if done != last_step && done < nsteps && guest::boot_started(&bdir) {
                last_step = done;
                (shared.borrow_mut())(Event::Step {
                    boot: b,
                    step: done,
                    steps: nsteps,
                    label: boot.steps[done].label(),
                });
            }
            false
        };
        let mut on_wait = || {
            (shared.borrow_mut())(Event::Notice(format!(
                "boot {}: waiting for a core (a kernel build or other VMs hold them)",
                b + 1
            )))
        };
        let launched = vm::launch(&cfg, logs, &tag, opts.timeout, &mut tick, &mut on_wait)?;
        let console = crate::console::read_lossy(&launched.console_log);
        let scan = console::scan(&console);
        let record = guest::read_boot(results, b, nsteps, &console);
        let end = boot_end(case, b, &record, &scan, launched.end);
        if let BootEnd::Infra(why) = &end {
            if attempt == 1 {
                events(Event::Notice(format!(
                    "boot {} `{}` never reached its first step ({why}); retrying once",
                    b + 1,
                    boot.name
                )));
                attempt += 1;
                continue;
            }
        }
        events(Event::BootEnd {
            boot: b,
            end: end.clone(),
            seconds: launched.seconds,
        });
        return Ok(BootOutcome {
            name: boot.name.clone(),
            record,
            scan,
            end,
            process: launched.end,
            seconds: launched.seconds,
            first_output: launched.first_output,
            attempts: attempt,
            console_log: launched.console_log,
            console,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::StepRecord;

    const CASE: &str = r#"
name: t
summary: s
disks: [{ name: sdc, size: 1MiB }]
boots:
  - name: one
    steps:
      - run: "true"
      - crash: sysrq-b
  - name: two
    steps:
      - run: "true"
"#;

    fn rec(started: bool, steps: usize, crash: bool, done: bool) -> BootRecord {
        BootRecord {
            started,
            steps: (0..steps)
                .map(|_| StepRecord {
                    status: Some(0),
                    ..Default::default()
                })
                .collect(),
            crash_marker: crash,
            done,
            ..Default::default()
        }
    }

    fn scan(log: &str) -> ConsoleScan {
        console::scan(log)
    }

    #[test]
    fn sysrq_reset_vs_panic_vs_hang() {
        let c = crate::case::parse(CASE, "t").unwrap();
        let reset = scan("[ 1.0] Linux version 6.12\n[ 9.0] sysrq: Resetting\n");
        assert_eq!(
            boot_end(
                &c,
                0,
                &rec(true, 1, true, false),
                &reset,
                ProcessEnd::Exited(255)
            ),
            BootEnd::Reset
        );
        let panic =
            scan("[ 1.0] Linux version 6.12\n[ 9.0] Kernel panic - not syncing: Fatal exception\n");
        assert!(matches!(
            boot_end(
                &c,
                0,
                &rec(true, 1, false, false),
                &panic,
                ProcessEnd::Exited(255)
            ),
            BootEnd::Panic(_)
        ));
        let quiet = scan("[ 1.0] Linux version 6.12\n");
        assert_eq!(
            boot_end(
                &c,
                0,
                &rec(true, 1, false, false),
                &quiet,
                ProcessEnd::Timeout
            ),
            BootEnd::Hang
        );
        // a crash boot that exited normally without reaching its crash step died
        assert!(matches!(
            boot_end(
                &c,
                0,
                &rec(true, 1, false, true),
                &quiet,
                ProcessEnd::Exited(0)
            ),
            BootEnd::Died(_)
        ));
        assert_eq!(
            boot_end(
                &c,
                1,
                &rec(true, 1, false, true),
                &quiet,
                ProcessEnd::Exited(0)
            ),
            BootEnd::Exited
        );
    }

    #[test]
    fn stopped_after_a_splat_is_a_died_boot() {
        let c = crate::case::parse(CASE, "t").unwrap();
        let oops = scan("[ 1.0] Linux version 6.16\n[ 9.0] BUG: kernel NULL pointer dereference\n");
        assert!(matches!(
            boot_end(&c, 1, &rec(true, 0, false, false), &oops, ProcessEnd::Stopped),
            BootEnd::Died(m) if m.contains("after a kernel splat")
        ));
    }

    #[test]
    fn never_started_is_infrastructure() {
        let c = crate::case::parse(CASE, "t").unwrap();
        let none = scan("");
        assert!(
            matches!(boot_end(&c, 0, &rec(false, 0, false, false), &none, ProcessEnd::Exited(255)), BootEnd::Infra(m) if m.contains("never printed"))
        );
        let early = scan("[ 2.7] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n[ 2.8] Kernel panic - not syncing: Fatal exception in interrupt\n");
        assert!(
            matches!(boot_end(&c, 0, &rec(false, 0, false, false), &early, ProcessEnd::Exited(255)), BootEnd::Infra(m) if m.contains("panicked while booting"))
        );
        let splat = scan("[ 1.0] BUG: KASAN: wild-memory-access in _raw_spin_lock+0x76/0xe0\n[ 2.0] dmt: kernel splat before the first step\n");
        assert!(
            matches!(boot_end(&c, 0, &rec(false, 0, false, false), &splat, ProcessEnd::Exited(0)), BootEnd::Infra(m) if m.contains("splat while booting") && m.contains("wild-memory-access"))
        );
        let kvm = scan("KVM internal error. Suberror: 1\n");
        assert!(
            matches!(boot_end(&c, 0, &rec(false, 0, false, false), &kvm, ProcessEnd::Timeout), BootEnd::Infra(m) if m.contains("KVM"))
        );
        let mut r = rec(false, 0, false, false);
        r.error = Some("kernel has no dm-cache target".into());
        assert!(matches!(
            boot_end(&c, 0, &r, &scan("Linux version"), ProcessEnd::Exited(1)),
            BootEnd::GuestError(_)
        ));
    }

    #[test]
    fn abort_is_reported_with_its_reason() {
        let c = crate::case::parse(CASE, "t").unwrap();
        let mut r = rec(true, 1, false, true);
        r.steps[0].abort = Some("exit status 1".into());
        assert_eq!(
            boot_end(&c, 0, &r, &scan("Linux version"), ProcessEnd::Exited(0)),
            BootEnd::Aborted("exit status 1".into())
        );
    }
}
