//! `bench`: what a case costs.  Times bare `vng --exec true` boots of the same kernel with the
//! same VM settings, then the case, and prints per-boot times and the runner's overhead (wall
//! time of the case outside its VM processes, over the case's total).

use crate::case::Case;
use crate::check;
use crate::kernel::Kernel;
use crate::run::{self, RunOptions};
use crate::vm;
use anyhow::{bail, Result};
use std::time::{Duration, Instant};

pub struct BenchReport {
    pub bare: Vec<f64>,
    pub boots: Vec<(String, f64)>,
    pub total: f64,
    pub status: check::Status,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

/// Times `n` bare `vng --exec true` boots of `kernel` (seconds each).  Each boot is a
/// [`vm::launch`], so its process group is killed on any return.
pub fn bare_boots(case: &Case, kernel: &Kernel, opts: &RunOptions, n: usize) -> Result<Vec<f64>> {
    let tmp = tempfile::tempdir()?;
    let mut bare = Vec::new();
    for i in 0..n.max(1) {
        let cfg = run::vm_config(case, kernel, opts, vec![], tmp.path(), "true".into());
        let t = Instant::now();
        let l = vm::launch(
            &cfg,
            tmp.path(),
            &format!("bare-{i}"),
            Duration::from_secs(300),
            &mut || {},
        )?;
        if l.end == vm::ProcessEnd::Interrupted {
            bail!("interrupted during bare boot {} of {}", i + 1, kernel.spec);
        }
        if l.end != vm::ProcessEnd::Exited(0) {
            bail!(
                "bare boot {} of {} ended {:?}: see {}",
                i + 1,
                kernel.spec,
                l.end,
                l.console_log.display()
            );
        }
        bare.push(t.elapsed().as_secs_f64());
        eprintln!("bare boot {} of {}: {:.1} s", i + 1, kernel.spec, bare[i]);
    }
    Ok(bare)
}

/// Runs `n` bare boots, then the case once.
pub fn bench(case: &Case, kernel: &Kernel, opts: &RunOptions, n: usize) -> Result<BenchReport> {
    let bare = bare_boots(case, kernel, opts, n)?;
    let t = Instant::now();
    let out = run::run_case(case, kernel, opts, &mut |_| {})?;
    let total = t.elapsed().as_secs_f64();
    let verdict = check::evaluate(case, &out);
    Ok(BenchReport {
        bare,
        boots: out
            .boots
            .iter()
            .map(|b| (b.name.clone(), b.seconds))
            .collect(),
        total,
        status: verdict.status,
    })
}

/// Median of a set of timings.
pub fn median_of(v: &[f64]) -> f64 {
    median(v)
}

pub fn render(r: &BenchReport, accel: vm::Accel) -> String {
    let bare = median(&r.bare);
    let in_vms: f64 = r.boots.iter().map(|b| b.1).sum();
    let runner = r.total - in_vms;
    let mut s = format!(
        "accel {accel:?}\nbare boot (vng --exec true): median {bare:.1} s over {} runs (min {:.1}, max {:.1})\n",
        r.bare.len(),
        r.bare.iter().cloned().fold(f64::MAX, f64::min),
        r.bare.iter().cloned().fold(0.0, f64::max)
    );
    for (name, secs) in &r.boots {
        s += &format!(
            "boot {name:<12} {secs:6.1} s  ({:+.1} s over a bare boot: the case's steps)\n",
            secs - bare
        );
    }
    s += &format!(
        "case total     {:6.1} s  (verdict {:?})\nrunner overhead {:5.1} s = {:.1} % of the case (outside the VM processes; goal <= 10 %)\nvs bare boots  {:+.1} % (case total over {} bare boots)\n",
        r.total,
        r.status,
        runner,
        100.0 * runner / r.total,
        100.0 * (r.total - bare * r.boots.len() as f64) / (bare * r.boots.len() as f64),
        r.boots.len()
    );
    s
}
