//! `crashpoints`: power loss, not just a reset.  The case's boots up to its crash run once
//! with every write recorded on the host (QEMU's blklogwrites, [`crate::vm::Recording`]);
//! from the log come the crash states a power cut may leave — every persistence point (a
//! FLUSH or FUA entry) and, per epoch, a seeded sample of subsets of its writes
//! ([`crate::logwrites`]).  Each state is checked on the host ([`host`]: metadata flags,
//! strict `cache_check`, mappings backed by their data), and each distinct state at which the
//! case's workload must have survived is booted: the case's own recovery boots on that disk,
//! judged by [`crate::check::evaluate`] like a normal run.

pub mod host;
mod states;

use crate::case::Case;
use crate::check::{self, Status};
use crate::kernel::Kernel;
use crate::logwrites::{self, CrashState, Log, Overlay};
use crate::run::{self, BootEnd, Event, RunOptions};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

pub use states::{plan, Plan};

/// What to check.
#[derive(Debug, Clone)]
pub struct Options {
    /// Sampled subsets per epoch (0: persistence points only).
    pub states_per_epoch: usize,
    pub seed: u64,
    /// Only this state (its id, as a report prints it).
    pub only: Option<String>,
    /// Boot the distinct states after `durable_after` (the VM tier).
    pub vm_tier: bool,
}

/// One crash state's result.
#[derive(Debug, Clone, Serialize)]
pub struct StateResult {
    pub id: String,
    /// The log entries of its epoch: `[durable, next persistence point]`.
    pub epoch: (usize, usize),
    /// The last step the guest had finished at the cut (`boot N step K: label`).
    pub after_step: Option<String>,
    /// Writes of the epoch it leaves out (a power cut lost them).
    pub dropped: Vec<usize>,
    /// The case's workload must have survived here (cut after `durable_after`'s last flush).
    pub after_durable: bool,
    pub digest: String,
    /// The state this one leaves the same disk as (checked once).
    pub same_as: Option<String>,
    pub superblock: String,
    pub host_failures: Vec<String>,
    /// The VM tier's verdict, when it ran on this state.
    pub vm: Option<Status>,
    pub vm_failures: Vec<String>,
    pub kept: Option<PathBuf>,
}

impl StateResult {
    pub fn failed(&self) -> bool {
        !self.host_failures.is_empty() || self.vm == Some(Status::Fail)
    }
}

/// A whole crash-point run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub case: String,
    pub kernel: String,
    pub release: Option<String>,
    pub entries: usize,
    pub persistence_points: usize,
    pub writes: usize,
    pub states: Vec<StateResult>,
    pub record_seconds: f64,
    pub host_seconds: f64,
    pub vm_seconds: f64,
    pub recording_kept: Option<PathBuf>,
}

impl Report {
    /// Fail if any state failed; infrastructure if a VM-tier boot could not judge.
    pub fn status(&self) -> Status {
        if self.states.iter().any(StateResult::failed) {
            Status::Fail
        } else if self.states.iter().any(|s| s.vm == Some(Status::Infra)) {
            Status::Infra
        } else {
            Status::Pass
        }
    }
}

/// The recording: the case's boots up to its crash, on disks whose writes are logged.
struct Recording {
    work: tempfile::TempDir,
    boots: Vec<run::BootOutcome>,
    log: Log,
    data: Vec<u8>,
    seconds: f64,
}

/// A recorded log and its bytes; a damaged one is an error naming the entry.
fn read_log(path: &std::path::Path) -> Result<(Log, Vec<u8>)> {
    let log = logwrites::read_file(path)?;
    if let Some(why) = &log.short {
        bail!("the write log {} is damaged: {why}", path.display());
    }
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((log, data))
}

fn record(
    case: &Case,
    kernel: &Kernel,
    opts: &RunOptions,
    events: &mut dyn FnMut(Event),
) -> Result<Recording> {
    let cb = case.crash_boot().context("the case has no crash")?;
    let start = Instant::now();
    let mut ro = opts.clone();
    ro.record = true;
    let work = run::make_workdir(case, &ro)?;
    let got = run::run_boots(
        case,
        kernel,
        &ro,
        work.path(),
        0..cb + 1,
        Vec::new(),
        events,
    )
    .and_then(|boots| {
        let last = boots.last().expect("one boot at least");
        if boots.len() != cb + 1 || last.end != BootEnd::Reset {
            bail!(
                "the recording run did not reach its crash: boot {} `{}` {} (run `case {}` on this kernel to see why)",
                boots.len(),
                last.name,
                last.end.describe(),
                case.name
            );
        }
        let log = read_log(&run::log_path(work.path(), &case.disks[0].name))?;
        Ok((boots, log))
    });
    let ((boots, (log, data)), work) = run::keep_on_error(work, opts.keep, got)?;
    Ok(Recording {
        work,
        boots,
        log,
        data,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Records the case on `kernel`, then checks every planned state (see the module doc).
pub fn run(
    case: &Case,
    kernel: &Kernel,
    opts: &RunOptions,
    cp: &Options,
    events: &mut dyn FnMut(Event),
) -> Result<Report> {
    case.crashpoints.as_ref().with_context(|| {
        format!(
            "case `{}` has no `crashpoints:` block (where the cache lies on its disk, when its workload is durable): see docs/crashpoints.md",
            case.name
        )
    })?;
    crate::kernel::check_requires(kernel, &case.name, &case.requires)?;
    if let Some(id) = &cp.only {
        states::parse_id(id)?;
    }
    let rec = record(case, kernel, opts, events)?;
    let disk_sectors = case.disks[0].size.0 / logwrites::SECTOR;
    let plan = plan(case, &rec.log, disk_sectors, cp)?;
    let host_start = Instant::now();
    let mut results = host_tier(case, &rec.log, &rec.data, rec.work.path(), &plan, events)?;
    let host_seconds = host_start.elapsed().as_secs_f64();
    let vm_start = Instant::now();
    if cp.vm_tier {
        for (r, st) in results.iter_mut().zip(&plan.states) {
            if !r.after_durable || r.same_as.is_some() || !r.host_failures.is_empty() {
                continue;
            }
            events(Event::Notice(format!("vm tier: state {}", r.id)));
            let (status, failures, kept) =
                vm_state(case, kernel, opts, &rec, st, disk_sectors, events)?;
            r.vm = Some(status);
            r.vm_failures = failures;
            r.kept = kept;
        }
    }
    // One state asked for and kept: its disk beside the recording, for a look with the tools.
    if opts.keep && cp.only.is_some() {
        for (r, st) in results
            .iter_mut()
            .zip(&plan.states)
            .filter(|(r, _)| r.kept.is_none())
        {
            let img = rec
                .work
                .path()
                .join("disks")
                .join(format!("state-{}.img", r.id.replace(['+', ','], "_")));
            Overlay::build(&rec.log, &rec.data, st, disk_sectors)?
                .write_image(&img, case.disks[0].size.0)?;
            r.kept = Some(img);
        }
    }
    let release = rec.boots[0].record.release.clone();
    let recording_kept = opts.keep.then(|| rec.work.keep());
    Ok(Report {
        case: case.name.clone(),
        kernel: kernel.spec.clone(),
        release,
        entries: rec.log.entries.len(),
        persistence_points: rec.log.persistence_points().len(),
        writes: rec.log.entries.iter().filter(|e| e.has_data()).count(),
        states: results,
        record_seconds: rec.seconds,
        host_seconds,
        vm_seconds: vm_start.elapsed().as_secs_f64(),
        recording_kept,
    })
}

/// Every planned state on the host: its digest (the first state with a digest is checked by
/// the VM tier, the others are `same_as` it), its superblock and the host tier's failures.
fn host_tier(
    case: &Case,
    log: &Log,
    data: &[u8],
    scratch_dir: &std::path::Path,
    plan: &Plan,
    events: &mut dyn FnMut(Event),
) -> Result<Vec<StateResult>> {
    let spec = case
        .crashpoints
        .as_ref()
        .context("the case has no `crashpoints:`")?;
    let scratch = scratch_dir.join("metadata.scratch");
    let points = states::persistence_info(log, data, spec, plan.disk_sectors, &scratch)?;
    let mut seen: std::collections::BTreeMap<String, String> = Default::default();
    let mut results = Vec::new();
    let total = plan.states.len();
    for (n, st) in plan.states.iter().enumerate() {
        if n % 50 == 0 {
            events(Event::Notice(format!(
                "host tier: state {} of {total}",
                n + 1
            )));
        }
        let o = Overlay::build(log, data, st, plan.disk_sectors)?;
        let mut r = plan.describe(st, log, case);
        r.digest = o.digest();
        if let Some(first) = seen.get(&r.digest) {
            r.same_as = Some(first.clone());
        } else {
            seen.insert(r.digest.clone(), r.id.clone());
        }
        let ctx = states::HostCtx {
            points: &points,
            log,
            data,
            spec,
            scratch: &scratch,
        };
        (r.superblock, r.host_failures) = states::host_check(&o, st, &ctx)?;
        results.push(r);
    }
    let _ = std::fs::remove_file(&scratch);
    Ok(results)
}

/// The host tier alone on a recorded log (its bytes `data`) of `case`: what `crashpoints
/// --host-only` checks after recording.  `scratch_dir` receives a scratch file.
pub fn check_log(
    case: &Case,
    data: &[u8],
    cp: &Options,
    scratch_dir: &std::path::Path,
) -> Result<Vec<StateResult>> {
    let log = logwrites::read(&mut std::io::Cursor::new(data), data.len() as u64)?;
    let disk_sectors = case.disks[0].size.0 / logwrites::SECTOR;
    let plan = plan(case, &log, disk_sectors, cp)?;
    host_tier(case, &log, data, scratch_dir, &plan, &mut |_| {})
}

/// The host tier on a log kept by an earlier run (`--keep`: `DIR/disks/NAME.log`), with no
/// recording and no VM: how `--state ID` re-checks a state of *that* recording (a new
/// recording may order an epoch's writes differently, so an id names a state of one log).
pub fn run_log(case: &Case, path: &std::path::Path, cp: &Options) -> Result<Report> {
    case.crashpoints
        .as_ref()
        .with_context(|| format!("case `{}` has no `crashpoints:` block", case.name))?;
    if let Some(id) = &cp.only {
        states::parse_id(id)?;
    }
    let (log, data) = read_log(path)?;
    let scratch = tempfile::tempdir()?;
    let start = Instant::now();
    let disk_sectors = case.disks[0].size.0 / logwrites::SECTOR;
    let plan = plan(case, &log, disk_sectors, cp)?;
    let states = host_tier(case, &log, &data, scratch.path(), &plan, &mut |_| {})?;
    Ok(Report {
        case: case.name.clone(),
        kernel: format!("the log {}", path.display()),
        release: None,
        entries: log.entries.len(),
        persistence_points: log.persistence_points().len(),
        writes: log.entries.iter().filter(|e| e.has_data()).count(),
        states,
        record_seconds: 0.0,
        host_seconds: start.elapsed().as_secs_f64(),
        vm_seconds: 0.0,
        recording_kept: None,
    })
}

/// The VM tier for one state: its disk in a fresh work dir, the case's boots after the crash
/// on it, the same verdict as a normal run (the recorded boots included).
fn vm_state(
    case: &Case,
    kernel: &Kernel,
    opts: &RunOptions,
    rec: &Recording,
    st: &CrashState,
    disk_sectors: u64,
    events: &mut dyn FnMut(Event),
) -> Result<(Status, Vec<String>, Option<PathBuf>)> {
    let cb = rec.boots.len() - 1;
    let start = Instant::now();
    let work = run::make_workdir(case, opts)?;
    let disk = run::disk_path(work.path(), &case.disks[0].name);
    std::fs::remove_file(&disk)?;
    Overlay::build(&rec.log, &rec.data, st, disk_sectors)?
        .write_image(&disk, case.disks[0].size.0)?;
    let got = run::run_boots(
        case,
        kernel,
        opts,
        work.path(),
        cb + 1..case.boots.len(),
        rec.boots.clone(),
        events,
    );
    let (boots, work) = run::keep_on_error(work, opts.keep, got)?;
    let run = run::finish_run(case, kernel, opts, work, boots, start)?;
    let v = check::evaluate(case, &run);
    let failures = v.failures.iter().map(|f| f.what.clone()).collect();
    Ok((v.status, failures, run.workdir))
}

/// The report as text: counts and times, then each failed state with its position.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let distinct = r.states.iter().filter(|x| x.same_as.is_none()).count();
    let durable = r.states.iter().filter(|x| x.after_durable).count();
    let host_failed = r
        .states
        .iter()
        .filter(|x| !x.host_failures.is_empty())
        .count();
    let booted = r.states.iter().filter(|x| x.vm.is_some()).count();
    let vm_failed = r
        .states
        .iter()
        .filter(|x| x.vm == Some(Status::Fail))
        .count();
    let _ = writeln!(s, "crashpoints {} on {}", r.case, r.kernel);
    let _ = writeln!(
        s,
        "  recorded   {} log entries: {} writes, {} persistence points ({:.1} s, kernel {})",
        r.entries,
        r.writes,
        r.persistence_points,
        r.record_seconds,
        r.release.as_deref().unwrap_or("?")
    );
    let _ = writeln!(
        s,
        "  states     {} ({} distinct; {} after the workload was durable)",
        r.states.len(),
        distinct,
        durable
    );
    let rate = r.states.len() as f64 / r.host_seconds.max(1e-3);
    let _ = writeln!(
        s,
        "  host tier  {} checked in {:.2} s ({rate:.0} states/s), {host_failed} failed",
        r.states.len(),
        r.host_seconds
    );
    let _ = writeln!(
        s,
        "  vm tier    {booted} distinct durable states booted in {:.1} s, {vm_failed} failed",
        r.vm_seconds
    );
    for x in r
        .states
        .iter()
        .filter(|x| x.failed() || x.vm == Some(Status::Infra))
    {
        let _ = writeln!(
            s,
            "  ✗ {} (entries {}..{}{}{}): superblock {}",
            x.id,
            x.epoch.0,
            x.epoch.1,
            x.after_step
                .as_deref()
                .map(|a| format!(", after {a}"))
                .unwrap_or_default(),
            if x.dropped.is_empty() {
                String::new()
            } else {
                format!(", lost writes {:?}", x.dropped)
            },
            x.superblock
        );
        for f in x.host_failures.iter().chain(&x.vm_failures) {
            let _ = writeln!(s, "      {f}");
        }
        if x.vm == Some(Status::Infra) {
            let _ = writeln!(
                s,
                "      the recovery boot could not judge this state (infrastructure)"
            );
        }
    }
    if let Some(k) = &r.recording_kept {
        let _ = writeln!(s, "  recording kept at {}", k.display());
    }
    for x in r
        .states
        .iter()
        .filter_map(|x| x.kept.as_ref().map(|k| (&x.id, k)))
    {
        let _ = writeln!(s, "  state {} kept at {}", x.0, x.1.display());
    }
    let _ = writeln!(
        s,
        "{}",
        match r.status() {
            Status::Pass => format!("HOLDS at every state: {}", r.case),
            Status::Fail => format!(
                "FAIL: {} at {} state(s); re-run one with --state ID (--keep leaves its disk)",
                r.case,
                r.states.iter().filter(|x| x.failed()).count()
            ),
            Status::Infra => format!("ERROR (infrastructure): {}", r.case),
        }
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log `crashpoints unclean_passthrough --kernel build:debian:6.12=6.12.117-1~deb12u1`
    /// recorded (xz; 25 entries: the cache created at 5–13, fio's 64 KiB at 15, the status
    /// query's commit at 19–22: mapping array, flush, superblock, flush).
    fn fixture() -> (Case, Vec<u8>) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let case = crate::case::load(&root.join("../cases/unclean_passthrough.yaml")).unwrap();
        (
            case,
            logwrites::xz_fixture("unclean_passthrough-6.12.117.log.xz"),
        )
    }

    fn failing(case: &Case, data: &[u8], n: usize) -> Vec<StateResult> {
        let d = tempfile::tempdir().unwrap();
        let cp = Options {
            states_per_epoch: n,
            seed: 1,
            only: None,
            vm_tier: false,
        };
        check_log(case, data, &cp, d.path())
            .unwrap()
            .into_iter()
            .filter(|s| s.failed())
            .collect()
    }

    #[test]
    fn the_stock_kernels_log_holds_and_its_mutations_are_caught() {
        let (case, data) = fixture();
        let log = logwrites::read(&mut std::io::Cursor::new(&data), data.len() as u64).unwrap();
        let flags: Vec<u64> = log.entries.iter().map(|e| e.flags).collect();
        assert_eq!((flags[20], flags[22], log.entries[21].sector), (1, 1, 0));
        let stock = failing(&case, &data, 8);
        assert!(stock.is_empty(), "{stock:#?}");
        let order = |skip: &[usize], moves: &[(usize, usize)]| {
            let mut o: Vec<usize> = (0..log.entries.len())
                .filter(|i| !skip.contains(i))
                .collect();
            for &(what, before) in moves {
                o.retain(|&i| i != what);
                let at = o.iter().position(|&i| i == before).unwrap();
                o.insert(at, what);
            }
            logwrites::encode(&log, &data, &o)
        };
        // The flush between the mapping array and the superblock removed: a subset of that
        // epoch keeps the superblock without the array.
        let no_flush = failing(&case, &order(&[20], &[]), 8);
        assert!(
            no_flush
                .iter()
                .any(|s| s.host_failures.iter().any(|f| f.contains("cache_check"))),
            "{no_flush:#?}"
        );
        // The superblock moved before the flush that precedes its epoch: a persistence point
        // (no sampling at all) has the superblock and not the array.
        let moved = failing(&case, &order(&[], &[(21, 13)]), 0);
        assert!(!moved.is_empty(), "the moved superblock went unnoticed");
        assert!(moved.iter().all(|s| s.dropped.is_empty()), "{moved:#?}");
        // fio's data (entry 15) moved after the commit's last flush: at that persistence point
        // the metadata is intact (cache_check passes) but maps cache block 0, whose data is
        // not on the disk yet — only the mapping check sees it.
        let late_data = failing(&case, &order(&[], &[(15, 23)]), 0);
        assert!(
            late_data.iter().any(|s| s
                .host_failures
                .iter()
                .any(|f| f.starts_with("cache block 0 (origin block 0")
                    && f.contains("is mapped, but"))),
            "{late_data:#?}"
        );
        assert!(
            late_data
                .iter()
                .all(|s| s.host_failures.iter().all(|f| !f.contains("cache_check"))),
            "{late_data:#?}"
        );
    }
}
