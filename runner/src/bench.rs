//! `bench`: where the time of a case goes.  Runs `runs` bare boots (`--exec true`, the same
//! kernel and VM settings: the floor) and the case `runs` times, and splits every boot into
//! phases from the host's clock and the console's timestamps:
//!
//! | phase | from → to |
//! |---|---|
//! | host | vng starts → the console's first byte (vng, initramfs, QEMU, firmware) |
//! | kernel | kernel start → `Run /init` |
//! | init | `/init` → the user script starts, without udev (initramfs, virtme-ng-init) |
//! | udev | `triggering udev coldplug` → `udev is done` |
//! | prologue | script start → the first step (modules, facts, disks) |
//! | steps | the steps' own commands (their `time` records) |
//! | protocol | first step → last step, minus the steps' own time |
//! | unclocked | the rest of the host's wall time: before the kernel's clock starts (bzImage decompression, early setup) and after the last step (`dmesg` dump, sync, power-off or reset, QEMU and vng exit) |

use crate::case::Case;
use crate::check;
use crate::guest;
use crate::kernel::Kernel;
use crate::run::{self, RunOptions};
use crate::vm;
use anyhow::{bail, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// One boot's time, split into phases (seconds).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Phases {
    pub host: f64,
    pub kernel: f64,
    pub init: f64,
    pub udev: f64,
    pub prologue: f64,
    pub steps: f64,
    pub protocol: f64,
    pub unclocked: f64,
    pub total: f64,
    /// Steps that ran (for the per-step protocol cost).
    pub steps_run: usize,
}

pub const PHASES: [&str; 9] = [
    "host",
    "kernel",
    "init",
    "udev",
    "prologue",
    "steps",
    "protocol",
    "unclocked",
    "total",
];

impl Phases {
    pub fn get(&self, name: &str) -> f64 {
        match name {
            "host" => self.host,
            "kernel" => self.kernel,
            "init" => self.init,
            "udev" => self.udev,
            "prologue" => self.prologue,
            "steps" => self.steps,
            "protocol" => self.protocol,
            "unclocked" => self.unclocked,
            _ => self.total,
        }
    }
}

/// The console timestamp (seconds since the kernel started) of the first line containing
/// `what`.
fn stamp(console: &str, what: &str) -> Option<f64> {
    console
        .lines()
        .find(|l| l.contains(what))
        .and_then(|l| l.trim_start().strip_prefix('['))
        .and_then(|l| l.split_once(']'))
        .and_then(|(t, _)| t.trim().parse().ok())
}

/// Splits one boot: `wall` is its wall time on the host, `first_output` when the console got
/// its first byte, `step_secs` the steps' own times, `last_step` the index of the last step
/// whose markers to look for (`None` for a bare boot).
pub fn phases_of(
    console: &str,
    first_output: Option<f64>,
    wall: f64,
    step_secs: &[f64],
    last_step: Option<usize>,
) -> Phases {
    let host = first_output.unwrap_or(0.0);
    let init_at = stamp(console, "Run /init as init process").unwrap_or(0.0);
    let udev_from = stamp(console, "triggering udev coldplug");
    let udev_to = stamp(console, "udev is done");
    let udev = match (udev_from, udev_to) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    let script = stamp(console, "virtme-ng-init: starting script")
        .or(udev_to)
        .unwrap_or(init_at);
    let first = stamp(console, &guest::marker(0, "begin"));
    let last = last_step.and_then(|k| {
        (0..=k)
            .rev()
            .find_map(|i| stamp(console, &guest::marker(i, "end")))
    });
    let steps: f64 = step_secs.iter().fold(0.0, |a, b| a + b);
    let (prologue, protocol, end_of_work) = match (first, last) {
        (Some(f), Some(l)) => (f - script, (l - f - steps).max(0.0), l),
        _ => (0.0, 0.0, script),
    };
    Phases {
        host,
        kernel: init_at,
        init: (script - init_at - udev).max(0.0),
        udev,
        prologue,
        steps,
        protocol,
        unclocked: (wall - host - end_of_work).max(0.0),
        total: wall,
        steps_run: step_secs.len(),
    }
}

/// min, median, max.
pub fn spread(v: &[f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    (s[0], s[s.len() / 2], s[s.len() - 1])
}

/// Median of a set of timings.
pub fn median_of(v: &[f64]) -> f64 {
    spread(v).1
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub kernel: String,
    pub accel: vm::Accel,
    /// Bare boots (`--exec true`): the floor.
    pub bare: Vec<Phases>,
    /// Per boot of the case (by name, in order), one entry per run.
    pub boots: Vec<(String, Vec<Phases>)>,
    /// Wall time of each case run.
    pub totals: Vec<f64>,
    pub verdicts: Vec<check::Status>,
}

/// Times `n` bare boots of `kernel` with the case's VM settings.  Each is a [`vm::launch`],
/// so its process group is killed on any return.
pub fn bare_boots(
    case: &Case,
    kernel: &Kernel,
    opts: &RunOptions,
    n: usize,
) -> Result<Vec<Phases>> {
    let tmp = tempfile::tempdir()?;
    let mut bare = Vec::new();
    for i in 0..n.max(1) {
        // Proof of a complete boot: a file the guest writes (without udev the guest has no
        // virtio-ports links, and vng cannot report the command's exit status).
        let done = format!("bare-{i}.done");
        let exec = format!(": > {}/{done}", crate::guest::GUEST_RESULTS);
        let cfg = run::vm_config(case, kernel, opts, vec![], tmp.path(), exec);
        let l = vm::launch(
            &cfg,
            tmp.path(),
            &format!("bare-{i}"),
            Duration::from_secs(300),
            &mut || false,
            &mut || {
                eprintln!(
                    "bare boot {}: waiting for a core (a build or other VMs hold them)",
                    i + 1
                )
            },
        )?;
        if l.end == vm::ProcessEnd::Interrupted {
            bail!("interrupted during bare boot {} of {}", i + 1, kernel.spec);
        }
        if !tmp.path().join(&done).exists() {
            bail!(
                "bare boot {} of {} ended {:?}: see {}",
                i + 1,
                kernel.spec,
                l.end,
                l.console_log.display()
            );
        }
        let console = std::fs::read_to_string(&l.console_log).unwrap_or_default();
        let p = phases_of(&console, l.first_output, l.seconds, &[], None);
        eprintln!("bare boot {} of {}: {:.1} s", i + 1, kernel.spec, p.total);
        bare.push(p);
    }
    Ok(bare)
}

/// `runs` bare boots, then the case `runs` times.
pub fn bench(case: &Case, kernel: &Kernel, opts: &RunOptions, runs: usize) -> Result<BenchReport> {
    let bare = bare_boots(case, kernel, opts, runs)?;
    let mut boots: BTreeMap<usize, (String, Vec<Phases>)> = BTreeMap::new();
    let mut totals = Vec::new();
    let mut verdicts = Vec::new();
    for r in 0..runs.max(1) {
        let out = run::run_case(case, kernel, opts, &mut |_| {})?;
        let verdict = check::evaluate(case, &out);
        eprintln!(
            "case run {} of {}: {:.1} s, {:?}",
            r + 1,
            case.name,
            out.seconds,
            verdict.status
        );
        for (b, o) in out.boots.iter().enumerate() {
            let secs: Vec<f64> = o.record.steps.iter().filter_map(|s| s.seconds).collect();
            let p = phases_of(
                &o.console,
                o.first_output,
                o.seconds,
                &secs,
                Some(case.boots[b].steps.len().saturating_sub(1)),
            );
            boots
                .entry(b)
                .or_insert_with(|| (o.name.clone(), vec![]))
                .1
                .push(p);
        }
        totals.push(out.seconds);
        verdicts.push(verdict.status);
    }
    Ok(BenchReport {
        kernel: kernel.spec.clone(),
        accel: opts.accel,
        bare,
        boots: boots.into_values().collect(),
        totals,
        verdicts,
    })
}

/// The breakdown as a table: a row per phase, a column per boot (bare first), each cell the
/// median and, over several runs, the min–max.
pub fn render(r: &BenchReport) -> String {
    let mut cols: Vec<(String, &Vec<Phases>)> = vec![("bare boot".into(), &r.bare)];
    for (name, v) in &r.boots {
        cols.push((format!("boot {name}"), v));
    }
    let cell = |v: &[Phases], ph: &str| {
        let xs: Vec<f64> = v.iter().map(|p| p.get(ph)).collect();
        let (lo, med, hi) = spread(&xs);
        if xs.len() > 1 {
            format!("{med:.1} ({lo:.1}–{hi:.1})")
        } else {
            format!("{med:.1}")
        }
    };
    let mut s = format!(
        "kernel {}   accel {:?}   runs {}   (seconds: median (min–max))\n",
        r.kernel,
        r.accel,
        r.totals.len()
    );
    s += &format!("{:<10}", "phase");
    for (c, _) in &cols {
        s += &format!(" {c:>20}");
    }
    s.push('\n');
    for ph in PHASES {
        s += &format!("{ph:<10}");
        for (_, v) in &cols {
            s += &format!(" {:>20}", cell(v, ph));
        }
        s.push('\n');
    }
    let per_step: Vec<f64> = r
        .boots
        .iter()
        .flat_map(|(_, v)| v.iter())
        .filter(|p| p.steps_run > 0)
        .map(|p| 1000.0 * p.protocol / p.steps_run as f64)
        .collect();
    let (lo, med, hi) = spread(&per_step);
    let (tlo, tmed, thi) = spread(&r.totals);
    s += &format!(
        "protocol per step: {med:.0} ms ({lo:.0}–{hi:.0})\ncase total: {tmed:.1} s ({tlo:.1}–{thi:.1}), verdicts {:?}\n",
        r.verdicts
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "[    0.000000] Linux version 6.12
[    3.000000] Run /init as init process
[    6.000000] virtme-ng-init: triggering udev coldplug
[   12.500000] virtme-ng-init: udev is done
[   12.600000] virtme-ng-init: starting script
[   14.000000] dmt: step-1 begin
[   14.500000] dmt: step-1 end
[   14.600000] dmt: step-2 begin
[   15.100000] dmt: step-2 end
";

    #[test]
    fn phases_from_console_and_host_clock() {
        let p = phases_of(CONSOLE, Some(8.0), 25.0, &[0.4, 0.4], Some(2));
        assert_eq!(p.host, 8.0);
        assert_eq!(p.kernel, 3.0);
        assert!((p.udev - 6.5).abs() < 1e-9);
        assert!((p.init - (12.6 - 3.0 - 6.5)).abs() < 1e-9);
        assert!((p.prologue - 1.4).abs() < 1e-9);
        assert!((p.steps - 0.8).abs() < 1e-9);
        assert!((p.protocol - (15.1 - 14.0 - 0.8)).abs() < 1e-9);
        assert!((p.unclocked - (25.0 - 8.0 - 15.1)).abs() < 1e-9);
        let sum =
            p.host + p.kernel + p.init + p.udev + p.prologue + p.steps + p.protocol + p.unclocked;
        assert!(
            (sum - p.total).abs() < 1e-6,
            "the phases add up to the wall time: {sum}"
        );
    }

    #[test]
    fn bare_boot_has_no_steps() {
        let p = phases_of(
            "[ 0.0] x\n[ 2.0] Run /init as init process\n[ 5.0] virtme-ng-init: starting script\n",
            Some(4.0),
            10.0,
            &[],
            None,
        );
        assert_eq!(
            (p.udev, p.steps, p.protocol, p.prologue),
            (0.0, 0.0, 0.0, 0.0)
        );
        assert!((p.unclocked - 1.0).abs() < 1e-9);
    }

    #[test]
    fn spreads() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), (1.0, 2.0, 3.0));
        assert_eq!(spread(&[]), (0.0, 0.0, 0.0));
    }
}
