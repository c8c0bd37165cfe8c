//! The host's cores, shared between kernel builds and VMs by every runner process at once.
//!
//! A cold build and TCG VMs on the same two cores make both slow and the racy cases land
//! differently (measured: boots of 50–60 s instead of 10, and write-ordering pairs that lost
//! their outcome).  So each VM holds one of N *slots* (N = the host's cores) while it runs, and
//! a build holds all of them: builds run alone, VMs run N at a time, across processes (`cargo
//! test`'s threads, a `review`'s jobs, a `matrix` in another terminal).  Slots are `flock`s on
//! files under `/tmp/dmcache-vmtest-UID/cores` (per machine and user, whatever the cache root or
//! `TMPDIR`);
//! the kernel drops them when a process dies, so a killed runner
//! never leaves one held.  A builder first takes the *turnstile*, which new VMs pass through,
//! so a stream of VMs cannot starve it.

use anyhow::{Context, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often a waiter tries again.
const POLL: Duration = Duration::from_millis(100);

/// A share of the host's cores, held until dropped (the `flock`s are released with the files).
#[derive(Debug)]
pub struct Held {
    _turnstile: Option<File>,
    _slots: Vec<File>,
}

/// How many VMs may run at once: the host's cores.
pub fn slot_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The lock files' directory (created): one per user and machine, not per cache root or
/// `TMPDIR` — two runs with different `DMCACHE_VMTEST_CACHE` or `TMPDIR` (the interrupt trials
/// use a private one) still share the same cores, and a private `TMPDIR` is left empty.
fn dir() -> Result<PathBuf> {
    let uid = nix::unistd::getuid();
    let d = Path::new("/tmp")
        .join(format!("dmcache-vmtest-{uid}"))
        .join("cores");
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

fn open(dir: &Path, name: &str) -> Result<File> {
    let p = dir.join(name);
    File::create(&p).with_context(|| format!("opening the core lock {}", p.display()))
}

fn open_slots(dir: &Path, n: usize) -> Result<Vec<File>> {
    (0..n).map(|i| open(dir, &format!("slot-{i}"))).collect()
}

/// Calls `attempt` until it returns true, every [`POLL`]; `waiting` once if the first attempt
/// fails; an interrupt ends the wait with an error.
fn poll_until(waiting: &mut dyn FnMut(), mut attempt: impl FnMut() -> bool) -> Result<()> {
    let mut told = false;
    while !attempt() {
        if crate::interrupt::requested() {
            anyhow::bail!("interrupted while waiting for the host's cores");
        }
        if !told {
            waiting();
            told = true;
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// Waits for `cpus` free slots (a VM with that many vCPUs; all of them when it has as many
/// as the host has cores).  `waiting` is called once if they are not free at once.
pub fn vm_slot(cpus: usize, waiting: &mut dyn FnMut()) -> Result<Held> {
    vm_slot_in(&dir()?, slot_count(), cpus, waiting)
}

fn vm_slot_in(dir: &Path, n: usize, cpus: usize, waiting: &mut dyn FnMut()) -> Result<Held> {
    let k = cpus.clamp(1, n);
    if k == n {
        return all_cores_in(dir, n, waiting);
    }
    let turnstile = open(dir, "turnstile")?;
    let slots = open_slots(dir, n)?;
    let mut got: Vec<usize> = Vec::new();
    poll_until(waiting, || {
        // A builder holds the turnstile exclusively while it collects the slots and builds.
        if turnstile.try_lock_shared().is_err() {
            return false;
        }
        // All k at once or none (never hold some while waiting for more).
        got = (0..n)
            .filter(|&i| slots[i].try_lock().is_ok())
            .take(k)
            .collect();
        let _ = turnstile.unlock();
        if got.len() < k {
            got.iter().for_each(|&i| {
                let _ = slots[i].unlock();
            });
            got.clear();
        }
        !got.is_empty()
    })?;
    let held = slots
        .into_iter()
        .enumerate()
        .filter(|(i, _)| got.contains(i))
        .map(|(_, f)| f)
        .collect();
    Ok(Held {
        _turnstile: None,
        _slots: held,
    })
}

/// Waits for the whole host: the turnstile, then every slot in order.
pub fn all_cores(waiting: &mut dyn FnMut()) -> Result<Held> {
    all_cores_in(&dir()?, slot_count(), waiting)
}

fn all_cores_in(dir: &Path, n: usize, waiting: &mut dyn FnMut()) -> Result<Held> {
    let turnstile = open(dir, "turnstile")?;
    let slots = open_slots(dir, n)?;
    let mut next = 0;
    poll_until(waiting, || {
        if next == 0 && turnstile.try_lock().is_err() {
            return false;
        }
        next = next.max(1);
        while next <= n && slots[next - 1].try_lock().is_ok() {
            next += 1;
        }
        next > n
    })?;
    Ok(Held {
        _turnstile: Some(turnstile),
        _slots: slots,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    #[test]
    fn builds_exclude_vms_and_vms_share_the_slots() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().to_path_buf();
        let n = 2;
        // N VMs at once: all get a slot without waiting.
        let vms: Vec<Held> = (0..n)
            .map(|_| vm_slot_in(&d, n, 1, &mut || panic!("a free slot was not taken")).unwrap())
            .collect();
        // The N+1st waits (threads: flocks of one process conflict between separate opens,
        // which is what each call makes).
        let (d3, (tx3, rx3)) = (d.clone(), mpsc::channel());
        let t0 = Instant::now();
        let third = std::thread::spawn(move || {
            let _s = vm_slot_in(&d3, n, 1, &mut || {}).unwrap();
            tx3.send(t0.elapsed().as_secs_f64()).unwrap();
        });
        assert!(
            rx3.recv_timeout(Duration::from_millis(300)).is_err(),
            "3 VMs on 2 slots"
        );
        // A builder waits for the running VMs.
        let (d1, (tx, rx)) = (d.clone(), mpsc::channel());
        let builder = std::thread::spawn(move || {
            let all = all_cores_in(&d1, n, &mut || {}).unwrap();
            tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(800));
            drop(all);
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(400)).is_err(),
            "build beside VMs"
        );
        // The VMs end: the builder, which holds the turnstile, goes before the waiting VM.
        drop(vms);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("build never got the cores");
        assert!(rx3.try_recv().is_err(), "a VM overtook the waiting build");
        // While it builds, a new VM waits too; both run once it is done.
        let (mut waited, t1) = (false, Instant::now());
        let s = vm_slot_in(&d, n, 1, &mut || waited = true).unwrap();
        assert!(
            waited && t1.elapsed() >= Duration::from_millis(100),
            "a VM ran beside a build"
        );
        let w3 = rx3
            .recv_timeout(Duration::from_secs(5))
            .expect("the third VM never ran");
        assert!(w3 >= 1.0, "the third VM waited only {w3} s");
        builder.join().unwrap();
        third.join().unwrap();
        drop(s);
        // A 2-vCPU VM on 3 slots takes 2; then a second one waits for them.
        let two = vm_slot_in(&d, 3, 2, &mut || panic!("3 free slots")).unwrap();
        let one = vm_slot_in(&d, 3, 1, &mut || panic!("1 slot is free")).unwrap();
        let (d4, (tx4, rx4)) = (d.clone(), mpsc::channel());
        let t4 = std::thread::spawn(move || {
            let _s = vm_slot_in(&d4, 3, 2, &mut || {}).unwrap();
            tx4.send(()).unwrap();
        });
        assert!(
            rx4.recv_timeout(Duration::from_millis(300)).is_err(),
            "4 vCPUs on 3 slots"
        );
        drop(one);
        assert!(
            rx4.recv_timeout(Duration::from_millis(300)).is_err(),
            "a 2-vCPU VM ran on 1 free slot"
        );
        drop(two);
        rx4.recv_timeout(Duration::from_secs(5))
            .expect("the second 2-vCPU VM never ran");
        t4.join().unwrap();
    }
}
