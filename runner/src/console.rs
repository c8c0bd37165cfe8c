//! Scans of a boot's console log (the kernel's messages): the sysrq reset, panics, oopses,
//! BUG/WARN splats, KVM errors, and device-mapper lines (blktests-style per-boot dmesg check).

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ConsoleScan {
    /// `sysrq: Resetting` was printed.
    pub sysrq_reset: bool,
    pub panic: Option<String>,
    /// Oops/BUG/WARNING/KASAN/lockdep lines (first line of each splat).
    pub splats: Vec<String>,
    pub kvm_error: bool,
    /// `device-mapper:` lines, for the report.
    pub dm_lines: Vec<String>,
    /// The kernel started at all (`Linux version` seen).
    pub kernel_started: bool,
    /// The first splat printed before the case's first step began (while the kernel booted or
    /// the guest prologue loaded modules): not the case's doing, so the boot is retried.
    pub boot_splat: Option<String>,
}

pub const SPLATS: &[&str] = &[
    "Oops:",
    "BUG:",
    "WARNING: CPU:",
    "general protection fault",
    "kernel BUG at",
    "Call Trace:",
    "UBSAN:",
    "KASAN:",
    "possible circular locking dependency",
    "blocked for more than",
];

/// The first splat in `log` — an oops, BUG, panic, KASAN report, hung task (not a WARNING,
/// after which a kernel goes on): after one, a boot rarely gets anywhere, so the runner
/// stops the VM a little later instead of waiting for the timeout.
pub fn fatal_splat(log: &str) -> Option<&str> {
    log.lines().map(strip_ts).find(|l| {
        (SPLATS.iter().any(|p| l.contains(p))
            && !l.contains("WARNING: CPU:")
            && !l.contains("Call Trace:"))
            || l.contains("Kernel panic - not syncing")
    })
}

/// The step (0-based) whose begin marker is the last one before the first line containing
/// `needle`: the step during which the kernel printed it.
pub fn step_of(log: &str, needle: &str) -> Option<usize> {
    let mut step = None;
    for l in log.lines() {
        if l.contains(needle) {
            return step;
        }
        if let Some(rest) = strip_ts(l).strip_prefix("dmt: step-") {
            if let Some(k) = rest
                .strip_suffix(" begin")
                .and_then(|k| k.trim().parse::<usize>().ok())
            {
                step = k.checked_sub(1);
            }
        }
    }
    None
}

/// A log file as text, read as bytes: an invalid UTF-8 byte (the kernel prints raw bytes)
/// becomes U+FFFD instead of dropping the whole log, and with it every splat it shows.
pub fn read_lossy(path: &std::path::Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Strips the `[    1.234567] ` timestamp.
pub fn strip_ts(line: &str) -> &str {
    let l = line.trim_start();
    if l.starts_with('[') {
        if let Some(i) = l.find("] ") {
            return &l[i + 2..];
        }
    }
    l
}

pub fn scan(log: &str) -> ConsoleScan {
    let mut s = ConsoleScan::default();
    let mut in_case = false;
    for raw in log.lines() {
        let line = strip_ts(raw.trim_end_matches('\r'));
        if line.contains("sysrq: Resetting") || line.contains("SysRq : Resetting") {
            s.sysrq_reset = true;
        }
        if line.contains("Linux version") {
            s.kernel_started = true;
        }
        if line.contains("KVM internal error") {
            s.kvm_error = true;
        }
        if s.panic.is_none() && line.contains("Kernel panic - not syncing") {
            s.panic = Some(line.to_string());
        }
        if line.starts_with("dmt: step-") {
            in_case = true;
        }
        // "Call Trace:" alone follows the headline we already keep.
        if SPLATS.iter().any(|p| line.contains(p)) && !line.contains("Call Trace:") {
            if !in_case && s.boot_splat.is_none() {
                s.boot_splat = Some(line.to_string());
            }
            s.splats.push(line.to_string());
        }
        if line.contains("device-mapper:") {
            s.dm_lines.push(line.to_string());
        }
    }
    s
}

/// Lines of `log` around the first occurrence of `needle` (for failure evidence).
pub fn context(log: &str, needle: &str, before: usize, after: usize) -> Vec<String> {
    let lines: Vec<&str> = log.lines().collect();
    match lines.iter().position(|l| l.contains(needle)) {
        Some(i) => lines[i.saturating_sub(before)..(i + after + 1).min(lines.len())]
            .iter()
            .map(|l| l.to_string())
            .collect(),
        None => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_byte_does_not_hide_a_splat() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("console.log");
        std::fs::write(
            &f,
            b"[ 1.0] name \xff\xfe here\n[ 2.0] BUG: kernel NULL pointer dereference\n",
        )
        .unwrap();
        let log = read_lossy(&f);
        assert_eq!(
            scan(&log).splats,
            vec!["BUG: kernel NULL pointer dereference"]
        );
        assert!(fatal_splat(&log).is_some());
        assert_eq!(read_lossy(&d.path().join("missing")), "");
    }

    const OOPS: &str = "[ 12.5] dmt: step-9 end
[ 12.6] dmt: step-10 begin
[ 14.7] WARNING: CPU: 0 PID: 1 at x
[ 14.8] BUG: kernel NULL pointer dereference, address: 0000000000000028
[ 14.9] Oops: Oops: 0000 [#1] SMP NOPTI
";

    #[test]
    fn a_splat_before_the_first_step_is_a_boot_splat() {
        let s = scan(
            "[ 1.0] BUG: KASAN: wild-memory-access in x\n[ 5.0] dmt: step-1 begin\n[ 6.0] BUG: y\n",
        );
        assert_eq!(
            s.boot_splat.as_deref(),
            Some("BUG: KASAN: wild-memory-access in x")
        );
        assert_eq!(s.splats.len(), 2);
        let s = scan("[ 5.0] dmt: step-1 begin\n[ 6.0] BUG: y\n");
        assert_eq!(s.boot_splat, None);
    }

    #[test]
    fn fatal_splats_and_their_step() {
        assert_eq!(
            fatal_splat(OOPS),
            Some("BUG: kernel NULL pointer dereference, address: 0000000000000028")
        );
        assert_eq!(fatal_splat("[ 1.0] WARNING: CPU: 0 PID: 1 at x\n"), None);
        assert_eq!(
            fatal_splat("[ 1.0] INFO: task dmsetup:99 blocked for more than 120 seconds.\n"),
            Some("INFO: task dmsetup:99 blocked for more than 120 seconds.")
        );
        assert_eq!(step_of(OOPS, "BUG: kernel NULL"), Some(9));
        assert_eq!(step_of("[ 1.0] BUG: x\n", "BUG: x"), None);
    }

    #[test]
    fn finds_reset_and_dm_lines() {
        let log = "[    0.000000] Linux version 6.12.117\n[   12.1] device-mapper: cache: 252:3: cannot enter passthrough mode unless all blocks are clean\n[   20.5] sysrq: Resetting\n";
        let s = scan(log);
        assert!(s.sysrq_reset && s.kernel_started);
        assert_eq!(s.dm_lines.len(), 1);
        assert!(s.panic.is_none() && s.splats.is_empty());
    }

    #[test]
    fn finds_panic_and_oops() {
        let log = "[ 1.0] BUG: kernel NULL pointer dereference, address: 0000000000000008\n[ 1.1] Oops: 0000 [#1] PREEMPT SMP NOPTI\n[ 1.2] Call Trace:\n[ 2.0] Kernel panic - not syncing: Fatal exception\n";
        let s = scan(log);
        assert_eq!(s.splats.len(), 2);
        assert_eq!(
            s.panic.as_deref(),
            Some("Kernel panic - not syncing: Fatal exception")
        );
        assert!(!s.sysrq_reset);
    }

    #[test]
    fn context_lines() {
        let log = "a\nb\nc\nd\n";
        assert_eq!(context(log, "c", 1, 1), vec!["b", "c", "d"]);
        assert!(context(log, "z", 1, 1).is_empty());
    }
}
