//! Running the build's commands: kbuild's environment (ccache on PATH), output capture,
//! and a log-following runner that reports the latest `CC …` line.

use crate::event::Event;
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub(super) fn make_env(cmd: &mut Command) {
    for v in [
        "MAKEFLAGS",
        "MFLAGS",
        "MAKELEVEL",
        "ARCH",
        "CROSS_COMPILE",
        "CC",
        "LOCALVERSION",
        "KCONFIG_CONFIG",
    ] {
        cmd.env_remove(v);
    }
    let ccache = Path::new("/usr/lib/ccache");
    if ccache.is_dir() {
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
        cmd.env("PATH", format!("{}:{path}", ccache.display()));
        let dir = crate::cache::dir("ccache");
        let _ = fs::create_dir_all(&dir);
        cmd.env("CCACHE_DIR", dir);
        // Depend mode: a miss compiles once instead of running the preprocessor first to
        // hash its output (kbuild passes -Wp,-MMD, which depend mode reads).  Measured on
        // 6.18.5's drivers/acpi (214 objects, -j2): no ccache 20.6 s, ccache's default
        // 33.2 s, depend mode 22.5 s cold and 2.3 s warm (docs/results.md).
        cmd.env("CCACHE_DEPEND", "1");
        if let Some(cwd) = cmd.get_current_dir().map(Path::to_path_buf) {
            // Relative paths in the ccache key: hits across build trees.
            cmd.env("CCACHE_BASEDIR", cwd);
        }
    }
}

/// Runs `argv` in `cwd` with the build environment; its output, whatever the exit status.
pub(super) fn output_of(cwd: &Path, argv: &[&str]) -> Result<std::process::Output> {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]).current_dir(cwd).stdin(Stdio::null());
    make_env(&mut cmd);
    cmd.output()
        .with_context(|| format!("running {}", argv.join(" ")))
}

pub(super) fn run_checked(cwd: &Path, argv: &[&str]) -> Result<String> {
    let out = output_of(cwd, argv)?;
    let mut all = String::from_utf8_lossy(&out.stdout).into_owned();
    all.push_str(&String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!(
            "`{}` failed ({}) in {}:\n{}",
            argv.join(" "),
            out.status,
            cwd.display(),
            tail(&all, 30)
        );
    }
    Ok(all)
}

pub(super) fn command_stdout(cwd: &Path, argv: &[&str]) -> Result<String> {
    let out = output_of(cwd, argv)?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Run a command with stdout+stderr appended to `log`; with `show`, report the latest
/// kbuild line (`CC drivers/…`) through `progress` about once a second.  On failure the
/// error carries the last 30 lines of the log.
pub(super) fn run_logged(
    cwd: &Path,
    argv: &[&str],
    log: &Path,
    show: bool,
    progress: &mut dyn FnMut(Event),
) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    writeln!(f, "### {} (in {})", argv.join(" "), cwd.display())?;
    let start = f.seek(SeekFrom::End(0))?;
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f.try_clone()?);
    make_env(&mut cmd);
    // Owned: an interrupt or any early return kills make and every compiler it started.
    let mut child = crate::proc::GroupGuard::spawn(&mut cmd)
        .with_context(|| format!("running {}", argv.join(" ")))?;
    let mut reader = fs::File::open(log)?;
    reader.seek(SeekFrom::Start(start))?;
    let mut pending = String::new();
    let mut last_shown = Instant::now() - Duration::from_secs(2);
    let status = loop {
        if crate::vm::INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
            child.stop(Duration::from_secs(2));
            bail!("interrupted while running `{}`", argv.join(" "));
        }
        let done = child.exited()?;
        if show {
            let mut buf = Vec::new();
            reader.read_to_end(&mut buf)?;
            pending.push_str(&String::from_utf8_lossy(&buf));
            if let Some(cut) = pending.rfind('\n') {
                let complete: String = pending.drain(..=cut).collect();
                if last_shown.elapsed() >= Duration::from_secs(1) {
                    if let Some(l) = complete.lines().rev().find(|l| is_kbuild_line(l)) {
                        let l = l.replace(&format!("{}/", cwd.display()), "");
                        progress(Event::Prepare(format!(
                            "make: {}",
                            l.split_whitespace().collect::<Vec<_>>().join(" ")
                        )));
                        last_shown = Instant::now();
                    }
                }
            }
        }
        if let Some(s) = done {
            break s;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    child.kill();
    if status != crate::proc::LeaderEnd::Exited(0) {
        let text = fs::read_to_string(log).unwrap_or_default();
        bail!(
            "`{}` failed ({status:?}); full log: {}\n--- last 30 lines ---\n{}",
            argv.join(" "),
            log.display(),
            tail(&text, 30)
        );
    }
    Ok(())
}

pub(super) fn is_kbuild_line(l: &str) -> bool {
    l.starts_with("  ")
        && l.split_whitespace().next().is_some_and(|w| {
            w.len() <= 8
                && w.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-' || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kbuild_lines() {
        assert!(is_kbuild_line("  CC      drivers/md/dm-cache-target.o"));
        assert!(is_kbuild_line("  LD      vmlinux.o"));
        assert!(!is_kbuild_line("make[1]: Entering directory"));
        assert!(!is_kbuild_line("drivers/md/x.c:1: warning: foo"));
    }
}
