//! Child processes the runner owns: each in its own process group ([`GroupGuard`]), killed as
//! a whole on drop, error, Ctrl-C/SIGTERM or the runner's death (a watchdog); and
//! [`guarded_output`], `Command::output` inside one — for vng/QEMU, make and the host tools.

use crate::interrupt::INTERRUPTED;
use anyhow::{Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long vng gets to shut QEMU down after SIGTERM before the group is SIGKILLed.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// A child process started as the leader of its own process group, which it owns: dropping
/// the guard SIGKILLs the whole group (vng, QEMU, virtiofsd … whatever vng started) and reaps
/// the leader.  Every vng/QEMU process of the runner lives in one, so no early return (`?`),
/// panic or interrupt can leave a VM behind.
///
/// The leader is observed with `waitid(WNOWAIT)` and reaped only after the group is killed:
/// while it is an unreaped zombie its pid (= the group id) cannot be reused, so the kill can
/// never hit an unrelated process group.
pub struct GroupGuard {
    child: Child,
    pgid: Pid,
    /// Outlives a runner killed with -9 and then kills the group ([`watchdog_argv`]).
    watchdog: Option<Child>,
    /// The group has been killed (once: afterwards the group id is not ours to signal).
    killed: bool,
    /// The leader's status, once reaped.
    status: Option<ExitStatus>,
}

/// How the leader of a [`GroupGuard`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderEnd {
    Exited(i32),
    Signaled,
}

/// Runs `cmd` to its end in a [`GroupGuard`] (its own process group, killed with the runner
/// by the watchdog, on an error and on Ctrl-C), collecting stdout and stderr like
/// [`Command::output`].  For the host tools the runner drives (apt-get, dpkg-deb, tar, curl).
pub fn guarded_output(cmd: &mut Command) -> std::io::Result<std::process::Output> {
    let mut g = GroupGuard::spawn(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()))?;
    fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    }
    let out = drain(g.child.stdout.take());
    let err = drain(g.child.stderr.take());
    while g.exited().map_err(std::io::Error::other)?.is_none() {
        if INTERRUPTED.load(Ordering::SeqCst) {
            g.stop(STOP_GRACE);
            return Err(std::io::Error::other("interrupted"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    g.kill();
    let status = g
        .status
        .ok_or_else(|| std::io::Error::other("lost the child's status"))?;
    Ok(std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

impl GroupGuard {
    /// Spawns `cmd` in a new process group (`setpgid(0, 0)`) led by the child.
    ///
    /// A runner killed with -9 runs no destructor, and vng starts QEMU through `sh -c`
    /// (`PR_SET_PDEATHSIG` would reach vng only), so each group gets a watchdog outside it:
    /// it polls the runner once a second and, once the runner is gone, SIGKILLs the group.
    /// The guard stops the watchdog when it is dropped.
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Self> {
        let child = cmd.process_group(0).spawn()?;
        let pgid = Pid::from_raw(child.id() as i32);
        let argv = watchdog_argv(std::process::id(), child.id());
        let watchdog = Command::new(&argv[0])
            .args(&argv[1..])
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok();
        Ok(GroupGuard {
            child,
            pgid,
            watchdog,
            killed: false,
            status: None,
        })
    }

    /// The process group id (= the leader's pid).
    pub fn pgid(&self) -> Pid {
        self.pgid
    }

    /// Has the leader ended?  Does not reap it (the group id stays reserved).
    pub fn exited(&mut self) -> Result<Option<LeaderEnd>> {
        if self.killed {
            return Ok(Some(match self.status.and_then(|st| st.code()) {
                Some(c) => LeaderEnd::Exited(c),
                None => LeaderEnd::Signaled,
            }));
        }
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(self.pgid), flags)
            .with_context(|| format!("cannot wait for process {}", self.pgid))?
        {
            WaitStatus::Exited(_, c) => Ok(Some(LeaderEnd::Exited(c))),
            WaitStatus::Signaled(..) => Ok(Some(LeaderEnd::Signaled)),
            _ => Ok(None),
        }
    }

    /// SIGTERM to the group, up to `grace` for the leader to end, then [`GroupGuard::kill`].
    pub fn stop(&mut self, grace: Duration) {
        if !self.killed && !matches!(self.exited(), Ok(Some(_))) {
            let _ = killpg(self.pgid, Signal::SIGTERM);
            let t = Instant::now();
            while t.elapsed() < grace && matches!(self.exited(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill();
    }

    /// SIGKILL to the whole group (QEMU may outlive vng), then reap the leader.  Idempotent.
    pub fn kill(&mut self) {
        if !self.killed {
            self.killed = true;
            let _ = killpg(self.pgid, Signal::SIGKILL);
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// The watchdog of the process group `pgid` of runner `runner`: bash polling `kill -0`
/// (bash: dash's `kill` takes no negative process-group id).
pub fn watchdog_argv(runner: u32, pgid: u32) -> Vec<String> {
    vec![
        "bash".into(),
        "-c".into(),
        "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; kill -KILL -- -\"$2\" 2>/dev/null"
            .into(),
        "dmcache-vmtest-watchdog".into(),
        runner.to_string(),
        pgid.to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::{bail, Result};
    use std::path::Path;

    /// Whether a process is gone (or a zombie nobody reaped yet: it runs nothing).
    fn gone(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(s) => s
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with(['Z', 'X'])),
        }
    }

    fn wait_gone(pid: i32) -> bool {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if gone(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn guarded_output_keeps_status_and_output_and_kills_the_group() {
        let out = guarded_output(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]))
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        // A child left behind in the group (`sleep &`) dies with it.
        let d = tempfile::tempdir().unwrap();
        let pidfile = d.path().join("pid");
        let script = format!("sleep 60 >/dev/null 2>&1 & echo $! > {}", pidfile.display());
        guarded_output(Command::new("sh").args(["-c", &script])).unwrap();
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(wait_gone(pid), "the straggler {pid} survived");
        let e = guarded_output(&mut Command::new("/nonexistent/tool")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }

    /// A shell leading its group that starts a grandchild (a stand-in for vng's QEMU) and
    /// writes its pid; `then` is what the shell does afterwards.
    fn group_with_grandchild(dir: &Path, then: &str) -> (GroupGuard, i32) {
        let pidfile = dir.join("grandchild");
        let g = GroupGuard::spawn(
            Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "sleep 300 & echo $! > {}.tmp && mv {0}.tmp {0}; {then}",
                    pidfile.display()
                ))
                .stderr(Stdio::null()),
        )
        .unwrap();
        let t = Instant::now();
        let pid = loop {
            if let Ok(s) = std::fs::read_to_string(&pidfile) {
                break s.trim().parse::<i32>().unwrap();
            }
            assert!(t.elapsed() < Duration::from_secs(5), "no grandchild pid");
            std::thread::sleep(Duration::from_millis(10));
        };
        (g, pid)
    }

    #[test]
    fn dropping_the_guard_kills_the_whole_group() {
        let d = tempfile::tempdir().unwrap();
        let (g, grandchild) = group_with_grandchild(d.path(), "wait");
        let leader = g.pgid().as_raw();
        assert!(!gone(grandchild));
        drop(g);
        assert!(gone(leader), "leader {leader} still running");
        assert!(wait_gone(grandchild), "grandchild {grandchild} survived");
    }

    #[test]
    fn an_early_return_cannot_leave_the_group_alive() {
        fn starts_then_fails(dir: &Path, grandchild: &mut i32) -> Result<()> {
            let (mut g, pid) = group_with_grandchild(dir, "wait");
            *grandchild = pid;
            g.exited()?;
            bail!("some later step failed")
        }
        let d = tempfile::tempdir().unwrap();
        let mut grandchild = 0;
        assert!(starts_then_fails(d.path(), &mut grandchild).is_err());
        assert!(wait_gone(grandchild), "grandchild {grandchild} survived");
    }

    #[test]
    fn a_straggler_outliving_its_leader_is_killed() {
        let d = tempfile::tempdir().unwrap();
        // The leader exits at once (vng gone) but leaves the grandchild (QEMU) in the group.
        let (mut g, grandchild) = group_with_grandchild(d.path(), "exit 3");
        let t = Instant::now();
        let end = loop {
            if let Some(e) = g.exited().unwrap() {
                break e;
            }
            assert!(t.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(end, LeaderEnd::Exited(3));
        // Observed, not reaped: the group id stays reserved until the group is killed.
        assert!(std::path::Path::new(&format!("/proc/{}", g.pgid())).exists());
        assert!(!gone(grandchild));
        g.kill();
        assert!(wait_gone(grandchild), "straggler {grandchild} survived");
        assert_eq!(g.exited().unwrap(), Some(LeaderEnd::Exited(3)));
    }

    #[test]
    fn stop_sends_sigterm_first() {
        let d = tempfile::tempdir().unwrap();
        let mark = d.path().join("termed");
        let (mut g, grandchild) = group_with_grandchild(
            d.path(),
            &format!(
                "trap 'touch {}; exit 0' TERM; while :; do sleep 0.05; done",
                mark.display()
            ),
        );
        std::thread::sleep(Duration::from_millis(200));
        g.stop(Duration::from_secs(3));
        assert!(mark.exists(), "the leader never saw SIGTERM");
        assert!(wait_gone(grandchild));
    }

    /// The watchdog kills its group once the runner it watches is gone.
    #[test]
    fn the_watchdog_kills_the_group_of_a_dead_runner() {
        use std::os::unix::process::CommandExt;
        let mut group = Command::new("sleep")
            .arg("100")
            .process_group(0)
            .spawn()
            .unwrap();
        // A runner that is already gone: a child that exited and was reaped.
        let mut gone = Command::new("true").spawn().unwrap();
        let dead = gone.id();
        gone.wait().unwrap();
        let argv = watchdog_argv(dead, group.id());
        let st = Command::new(&argv[0]).args(&argv[1..]).status().unwrap();
        assert!(st.success());
        let end = group.wait().unwrap();
        assert!(end.code().is_none(), "killed by a signal: {end:?}");
    }
}
