//! The protocol with the guest, and the only place that knows its file names.
//!
//! Host → guest: a generated POSIX sh script per boot plus one `cmd.sh` file per step, written
//! into the run's results directory, which the guest mounts read-write at [`GUEST_RESULTS`]
//! (the only host path it can write).  A step's command runs in bash with `set -e -o pipefail`.
//! Guest → host: per boot `boot-N/`, files written in this order: `started`, `facts/*`, then
//! per step `step-K/{stdout,stderr,time,label}` and last `step-K/status` (its presence means the
//! step finished) or `step-K/skipped`; `step-K/abort` when the guest stopped the boot on a failed
//! expectation; `dmesg` (the kernel log) before a planned sysrq-b (`crash`) or at a normal end
//! (`done`); `error` for a setup failure.  The guest writes `dmt: step-K begin|end` markers into
//! the kernel log, so the host attributes kernel log lines (from `dmesg`, or from the console
//! when the boot died) to steps.  The results dir is 9p/virtiofs without caching: writes reach
//! the host as they happen; `sync` is only for the disks (before a crash and at the end).
//! The vng stdout pipe is never used for results (it lost lines here).
//!
//! The guest only reports; [`crate::replay`] re-derives every decision on the host, so a guest
//! that disagrees can only make the verdict worse.

use crate::case::{Boot, Case, Cond, ExpectStatus, Outcome, StepKind, UNCLASSIFIED};
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Single-quotes a string for POSIX sh.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Where the results dir appears inside the guest (the same for the host root and an image).
pub const GUEST_RESULTS: &str = "/tmp/dmcache-vmtest-results";

/// The case's fixture files inside the results dir (`$FILES` in the guest).
const FILES_DIR: &str = "files";

/// Directory of boot `b` (0-based) inside the results dir.
pub fn boot_dir(results: &Path, b: usize) -> PathBuf {
    results.join(format!("boot-{}", b + 1))
}

fn step_dir_name(i: usize) -> String {
    format!("step-{}", i + 1)
}

/// The kernel-log marker the guest writes before (`begin`) and after (`end`) step `i`.
pub fn marker(i: usize, edge: &str) -> String {
    format!("dmt: step-{} {edge}", i + 1)
}

/// How many steps of the boot in `boot_dir` have finished (status or skipped), in order.
/// Polled ~20 times a second while a boot runs: the boot dir is checked once, then one step
/// dir and its marker per step (not every directory above every file).
pub fn steps_finished(boot_dir: &Path, nsteps: usize) -> usize {
    if !real_dir(boot_dir) {
        return 0;
    }
    let plain = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_file());
    (0..nsteps)
        .take_while(|i| {
            let d = boot_dir.join(step_dir_name(*i));
            real_dir(&d) && (plain(&d.join("status")) || plain(&d.join("skipped")))
        })
        .count()
}

/// `d` is a directory, not a link to one.
fn real_dir(d: &Path) -> bool {
    std::fs::symlink_metadata(d).is_ok_and(|m| m.file_type().is_dir())
}

/// True once the guest script of the boot in `boot_dir` has started.
pub fn boot_started(boot_dir: &Path) -> bool {
    guest_file(&boot_dir.join("started"))
}

/// Shell test that is true when `cond` holds (values are shell variables named like the keys).
fn cond_test(cond: &Cond) -> String {
    cond.0
        .iter()
        .map(|(k, allowed)| {
            let alts: Vec<String> = allowed
                .values()
                .iter()
                .map(|v| format!("[ \"${{{k}-}}\" = {} ]", sh_quote(v)))
                .collect();
            format!("{{ {}; }}", alts.join(" || "))
        })
        .collect::<Vec<_>>()
        .join(" && ")
}

fn status_test(e: ExpectStatus) -> String {
    match e {
        ExpectStatus::Code(c) => format!("[ \"$dmt_st\" -eq {c} ]"),
        ExpectStatus::Nonzero => "[ \"$dmt_st\" -ne 0 ]".into(),
        ExpectStatus::Any => "true".into(),
    }
}

/// Shell that sets `$name` to the label of the first matching outcome (the step's kernel log
/// lines are in `$dir/dmesg`).
fn classify_sh(name: &str, outcomes: &[Outcome], dir: &str, k: usize, indent: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{indent}dmt_klog \"{dir}\" {k}");
    for (i, o) in outcomes.iter().enumerate() {
        let mut tests = vec![status_test(o.status.unwrap_or(ExpectStatus::Any))];
        if let Some(m) = &o.dmesg {
            tests.push(format!("grep -qF -e {} \"{dir}/dmesg\"", sh_quote(m)));
        }
        let kw = if i == 0 { "if" } else { "elif" };
        let _ = writeln!(
            s,
            "{indent}{kw} {}; then {name}={}",
            tests.join(" && "),
            sh_quote(&o.label)
        );
    }
    let _ = writeln!(s, "{indent}else {name}={}; fi", sh_quote(UNCLASSIFIED));
    let _ = writeln!(s, "{indent}export {name}");
    let _ = writeln!(s, "{indent}printf '%s' \"${name}\" > \"{dir}/label\"");
    s
}

/// Shell that stops the boot unless the step's trimmed stdout matches `re` (bash `=~`, POSIX
/// ERE; the host re-checks with the same trimmed text).
fn match_sh(re: &str, dir: &str, indent: &str) -> String {
    format!(
        "{indent}bash -c '[[ $1 =~ $2 ]]' dmt \"$(cat \"{dir}/stdout\")\" {re} || dmt_abort \"{dir}\" {why}\n",
        re = sh_quote(re),
        why = sh_quote(&format!("stdout does not match /{re}/"))
    )
}

/// The script a boot runs.  `carried` are values captured/classified in earlier boots, as the
/// host derived them.
pub fn render_script(
    case: &Case,
    b: usize,
    results: &Path,
    carried: &BTreeMap<String, String>,
    tools: ToolFacts,
) -> String {
    let boot: &Boot = &case.boots[b];
    let r = boot_dir(results, b);
    let r = r.display();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "#!/bin/sh\n# generated by dmcache-vmtest: case {}, boot {} ({})\nR={}\ncd /\nexport PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n: \"${{DMT_KMSG:=/dev/kmsg}}\"",
        case.name,
        b + 1,
        boot.name,
        sh_quote(&r.to_string())
    );
    s.push_str(PROLOGUE);
    if !case.files.is_empty() {
        let files = results.join(FILES_DIR);
        let _ = writeln!(
            s,
            "FILES={}; export FILES",
            sh_quote(&files.display().to_string())
        );
    }
    if b == 0 && tools == ToolFacts::InGuest {
        s.push_str(TOOL_VERSIONS);
    }
    for d in &case.disks {
        let _ = writeln!(
            s,
            "DISK_{n}=$(dmt_disk {n}) || dmt_fail \"disk {n} (serial {n}) not found in /sys/block\"\nexport DISK_{n}",
            n = d.name
        );
    }
    for (k, v) in carried {
        let _ = writeln!(s, "{k}={}; export {k}", sh_quote(v));
    }
    // A kernel that reported a splat while booting (seen: a KASAN report during the delay-loop
    // calibration under TCG) is not what the case tests: stop before the first step, with the
    // disks untouched, so that the host can retry the boot.
    let patterns: Vec<String> = crate::console::SPLATS
        .iter()
        .filter(|p| **p != "Call Trace:")
        .map(|p| format!("-e {}", sh_quote(p)))
        .collect();
    let _ = writeln!(
        s,
        "if dmesg | grep -q -F {}; then echo 'dmt: kernel splat before the first step' >> \"$DMT_KMSG\"; sync; exit 0; fi",
        patterns.join(" ")
    );
    s.push_str(": > \"$R/started\"\n");
    for (i, step) in boot.steps.iter().enumerate() {
        let dir = format!("$R/{}", step_dir_name(i));
        let _ = writeln!(s, "\n# step {}: {}", i + 1, step.label().replace('\n', " "));
        if step.is_crash() {
            let _ = writeln!(
                s,
                "mkdir -p \"{dir}\"; dmesg > \"$R/dmesg\" 2>&1; : > \"$R/crash\"; sync\necho b > /proc/sysrq-trigger\nsleep 60\ndmt_fail 'sysrq-b did not reset the machine'"
            );
            continue;
        }
        let mut guard = Vec::new();
        if let Some(c) = &step.when {
            guard.push(cond_test(c));
        }
        if let Some(c) = &step.unless {
            guard.push(format!("! {{ {}; }}", cond_test(c)));
        }
        let ind = if guard.is_empty() { "" } else { "  " };
        if !guard.is_empty() {
            let _ = writeln!(s, "if {}; then", guard.join(" && "));
        }
        let _ = writeln!(s, "{ind}dmt_run \"{dir}\" {} {}", i + 1, step.timeout());
        match &step.kind {
            StepKind::Run(cmd) | StepKind::Capture { cmd, .. } => {
                let ok = status_test(cmd.expect_status);
                let _ = writeln!(
                    s,
                    "{ind}{ok} || dmt_abort \"{dir}\" \"exit status $dmt_st, expected {}\"",
                    cmd.expect_status
                );
                if let Some(re) = &cmd.expect_match {
                    s.push_str(&match_sh(re, &dir, ind));
                }
                if let StepKind::Capture { name, expect, .. } = &step.kind {
                    let _ = writeln!(s, "{ind}{name}=$(cat \"{dir}/stdout\"); export {name}");
                    if let Some(want) = expect {
                        let _ = writeln!(
                            s,
                            "{ind}[ \"${name}\" = {} ] || dmt_abort \"{dir}\" \"{name} is '${name}', expected \"{}",
                            sh_quote(want),
                            sh_quote(&format!("'{want}'"))
                        );
                    }
                }
            }
            StepKind::Classify { name, outcomes, .. } => {
                s.push_str(&classify_sh(name, outcomes, &dir, i + 1, ind));
            }
            StepKind::Crash(_) => unreachable!("handled above"),
        }
        let _ = writeln!(s, "{ind}echo \"$dmt_st\" > \"{dir}/status\"");
        if !guard.is_empty() {
            let _ = writeln!(s, "else mkdir -p \"{dir}\"; : > \"{dir}/skipped\"; fi");
        }
        let _ = writeln!(s, "dmt_mark {}", mark_sector(b, i));
    }
    s.push_str("\ndmt_end\nexit 0\n");
    s
}

/// The mark-area sector the guest writes after step `i` of boot `b` in a recorded run.
pub fn mark_sector(b: usize, i: usize) -> u64 {
    (b * 256 + i) as u64
}

/// The (boot, step) whose mark is mark-area sector `m`.
pub fn mark_step(m: u64) -> (usize, usize) {
    ((m / 256) as usize, (m % 256) as usize)
}

/// Fixed helper functions of every guest script.  Every name the script uses is `dmt_…` or
/// upper case, and captures are lower case without `dmt_`, so a capture can never overwrite
/// the script's own state.
const PROLOGUE: &str = r#"
dmt_fail() { printf '%s\n' "$*" > "$R/error"; sync; exit 1; }
dmt_end() { dmesg > "$R/dmesg" 2>&1; : > "$R/done"; sync; }
# A failed expectation: record why and the exit status, stop this boot.
dmt_abort() { printf '%s\n' "$2" > "$1/abort"; echo "$dmt_st" > "$1/status"; dmt_end; exit 0; }
dmt_disk() {
  for dmt_b in /sys/block/*; do
    # (a serial has no trailing newline: `read` then fails but still sets the variable)
    dmt_s=; read -r dmt_s < "$dmt_b/serial" 2>/dev/null
    [ "$dmt_s" = "$1" ] && { echo "/dev/${dmt_b##*/}"; return 0; }
  done
  return 1
}
# dmt_klog DIR K: the kernel log lines of step K, for a step whose outcome depends on them.
dmt_klog() { dmesg | sed -n "/dmt: step-$2 begin\$/,/dmt: step-$2 end\$/p" > "$1/dmesg"; }
# dmt_run DIR K TIMEOUT: run DIR/cmd.sh in bash (errexit, pipefail) between two kernel-log
# markers; record stdout, stderr and the uptime before and after; the status is written last
# by the caller, once the step's expectations are checked.
dmt_run() {
  read -r dmt_t0 dmt_x < /proc/uptime
  echo "dmt: step-$2 begin" >> "$DMT_KMSG"
  timeout -k 5 "$3" bash -e -o pipefail "$1/cmd.sh" > "$1/stdout" 2> "$1/stderr" < /dev/null
  dmt_st=$?
  echo "dmt: step-$2 end" >> "$DMT_KMSG"
  read -r dmt_t1 dmt_x < /proc/uptime
  echo "$dmt_t0 $dmt_t1" > "$1/time"
}
# Without udev (the default) libdevmapper must make the /dev/mapper nodes itself, and the
# disks' driver is loaded here (udev's coldplug would have done it).
[ -e /run/udev/control ] || { DM_DISABLE_UDEV=1; export DM_DISABLE_UDEV; }
read -r dmt_rel < /proc/sys/kernel/osrelease; echo "$dmt_rel" > "$R/facts/release"
modprobe -qa virtio_blk dm-mod dm-cache dm-cache-smq dm-cache-cleaner 2>/dev/null
dmsetup targets > "$R/facts/targets" 2>&1
grep -q '^cache ' "$R/facts/targets" || dmt_fail "kernel has no dm-cache target (dmsetup targets: $(tr '\n' ' ' < "$R/facts/targets"))"
command -v bash >/dev/null || dmt_fail "the guest has no bash (steps run in bash with pipefail)"
# A recorded run (crashpoints) has a mark disk behind the same write log as the case's disk:
# after each step one sector there (boot × 256 + step) marks where the step ended in the log.
DMT_MARKS=$(dmt_disk dmtmarks) || DMT_MARKS=
dmt_mark() { [ -z "$DMT_MARKS" ] || dd if=/dev/zero of="$DMT_MARKS" bs=512 count=1 seek="$1" oflag=direct 2>/dev/null; }
"#;

/// Where the versions of the guest's tools are read (once per run: every boot sees the same
/// root).  The same snippet runs in the guest (an image root) or on the host (the guest sees
/// the host's root, so its tools are the host's), which spares every first boot ~2 s of
/// process starts under TCG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFacts {
    InGuest,
    OnHost,
}

/// Removes whatever is at `p` without following it (a symlink is removed, not its target)
/// and makes an empty directory there.
fn fresh_dir(p: &Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(_) => Ok(()),
    }
    .with_context(|| format!("cannot remove {}", p.display()))?;
    std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))
}

/// Records the tool versions into `facts/` of the boot dir `dir`, running the guest snippet on
/// the host.
fn host_tool_versions(dir: &Path) -> Result<()> {
    let facts = dir.join("facts");
    std::fs::create_dir_all(&facts)?;
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(TOOL_VERSIONS)
        .env("R", dir)
        .stdin(std::process::Stdio::null())
        .status()
        .context("cannot run sh for the tool versions")?;
    anyhow::ensure!(st.success(), "reading the tool versions failed ({st})");
    Ok(())
}

/// The guest's tool versions, recorded by the first boot (every boot sees the same root).
const TOOL_VERSIONS: &str = r#"{
  echo "dmsetup: $(dmsetup --version 2>/dev/null | head -1)"
  echo "fio: $(fio --version 2>&1 | head -1)"
  echo "cache_check: $(cache_check -V 2>&1 | head -1)"
  echo "coreutils: $(md5sum --version 2>&1 | head -1)"
  echo "bash: $(bash --version 2>&1 | head -1)"
} > "$R/facts/tools"
"#;

/// Writes the boot script and every step's `cmd.sh` into the results dir (host path);
/// returns the script's path inside the guest.
pub fn prepare_boot(
    case: &Case,
    b: usize,
    results: &Path,
    carried: &BTreeMap<String, String>,
    tools: ToolFacts,
) -> Result<PathBuf> {
    let dir = boot_dir(results, b);
    // The results dir is shared read-write with the guest of the previous boot: whatever it
    // left at these paths (a symlink to a host directory, say) is removed, never followed.
    fresh_dir(&dir)?;
    if b == 0 && tools == ToolFacts::OnHost {
        host_tool_versions(&dir)?;
    }
    // Fixtures, fresh for every boot (a step that changed one cannot pass it on).
    let fixtures = case.file_texts()?;
    let files = results.join(FILES_DIR);
    if !fixtures.is_empty() {
        fresh_dir(&files)?;
    }
    for (name, text) in fixtures {
        std::fs::write(files.join(name), text)
            .with_context(|| format!("cannot write fixture {name}"))?;
    }
    // made here: one process less in the guest, where each costs ~50 ms under TCG
    std::fs::create_dir_all(dir.join("facts"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    for (i, step) in case.boots[b].steps.iter().enumerate() {
        if let Some(run) = step.command() {
            let sd = dir.join(step_dir_name(i));
            std::fs::create_dir_all(&sd)
                .with_context(|| format!("cannot create {}", sd.display()))?;
            std::fs::write(sd.join("cmd.sh"), format!("{run}\n"))?;
        }
    }
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("boot.sh");
    let guest = Path::new(GUEST_RESULTS);
    std::fs::write(&script, render_script(case, b, guest, carried, tools))?;
    Ok(boot_dir(guest, b).join("boot.sh"))
}

/// What one step left in the results dir.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StepRecord {
    /// `None`: the step never finished (or was skipped, see `skipped`).
    pub status: Option<i32>,
    pub skipped: bool,
    pub stdout: String,
    pub stderr: String,
    /// Kernel log lines printed while the step ran.
    pub dmesg: Vec<String>,
    pub seconds: Option<f64>,
    pub label: Option<String>,
    /// Why the guest stopped the boot at this step (status or value mismatch).
    pub abort: Option<String>,
}

/// What one boot left in the results dir.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BootRecord {
    pub started: bool,
    pub release: Option<String>,
    /// `dmsetup targets` as printed.
    pub targets: Option<String>,
    pub tools: BTreeMap<String, String>,
    pub steps: Vec<StepRecord>,
    pub crash_marker: bool,
    pub done: bool,
    pub error: Option<String>,
    /// The guest's own kernel log (`dmesg` at the end of the boot or before its crash).
    #[serde(skip)]
    pub klog: Option<String>,
    /// Links, FIFOs or device nodes in the boot's results dir ([`planted`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub planted: Vec<String>,
}

impl BootRecord {
    /// Version of the dm-cache target from `dmsetup targets` (`cache  v2.3.0`).
    pub fn cache_target(&self) -> Option<String> {
        parse_target_version(self.targets.as_deref()?, "cache")
    }
    /// Index of the last step that finished (has a status or was skipped).
    pub fn steps_finished(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.status.is_some() || s.skipped)
            .count()
    }
}

pub fn parse_target_version(targets: &str, name: &str) -> Option<String> {
    targets.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(name))
            .then(|| it.next().map(|v| v.trim_start_matches('v').to_string()))
            .flatten()
    })
}

/// A record as text.  Read as bytes, lossily: the kernel prints raw bytes (device names,
/// corrupted metadata strings), and one invalid byte must not drop the whole record (and
/// with it every splat it shows).
fn read_opt(p: &Path) -> Option<String> {
    read_guest(p).map(|b| String::from_utf8_lossy(&b).into_owned())
}

// The results dir is shared read-write with the guest (9p): anything in it may be a link, a
// FIFO or a device node the guest made.  The host reads only plain files there, never through
// a link (the file opened with O_NOFOLLOW, the two directories above it checked), never
// blocking on a FIFO, at most 64 MiB of each; and what is neither a file nor a directory fails
// the run ([`planted`], [`crate::check`]).

/// The most the host reads of one file the guest wrote.
const MAX_GUEST_FILE: u64 = 64 << 20;

/// `p` is a plain file the guest wrote (not a link, FIFO or device; no link above it).
pub fn guest_file(p: &Path) -> bool {
    no_link_above(p) && std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_file())
}

/// Neither of the two directories above `p` (a step's or `facts/` dir, the boot's dir) is a
/// link: the results dir itself is the host's.
fn no_link_above(p: &Path) -> bool {
    p.ancestors().skip(1).take(2).all(real_dir)
}

/// The bytes of a plain file the guest wrote (at most [`MAX_GUEST_FILE`]); `None` for
/// anything else, a link above all.
pub fn read_guest(p: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    if !no_link_above(p) {
        return None;
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(p)
        .ok()?;
    if !f.metadata().ok()?.file_type().is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    f.take(MAX_GUEST_FILE).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// What boot `b` left in the results dir that is not a plain file: in its own dir or outside
/// every boot's dir (the fixtures dir, say); what an earlier boot left is that boot's.
fn planted_by_boot(results: &Path, b: usize) -> Vec<String> {
    let own = format!("boot-{}/", b + 1);
    planted(results)
        .into_iter()
        .filter(|p| p.starts_with(&own) || !p.starts_with("boot-"))
        .collect()
}

/// What in the results dir is neither a directory nor a plain file — a link, a FIFO, a device
/// node — as paths relative to it.  The guest script never makes one; a case that does is
/// trying the host, and fails.
pub fn planted(results: &Path) -> Vec<String> {
    fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                walk(root, &e.path(), out);
            } else if !t.is_file() {
                let p = e.path();
                out.push(p.strip_prefix(root).unwrap_or(&p).display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(results, results, &mut out);
    out.sort();
    out
}

/// The kernel log lines between step `i`'s markers in `log` (a `dmesg` dump or the console);
/// `None` when the step's begin marker is not in it.  Without an end marker (the step never
/// finished) the slice runs to the end of the log.
pub fn step_klog(log: &str, i: usize) -> Option<Vec<String>> {
    let (begin, end) = (marker(i, "begin"), marker(i, "end"));
    let mut lines = log.lines();
    lines.by_ref().find(|l| l.trim_end().ends_with(&begin))?;
    Some(
        lines
            .take_while(|l| !l.trim_end().ends_with(&end))
            .map(str::to_string)
            .collect(),
    )
}

/// Reads boot `b`'s records (tolerant: a crash may leave any subset of files).  Kernel log
/// lines are attributed to steps from the boot's `dmesg` dump or, when the boot never wrote
/// one (it died), from `console`.
pub fn read_boot(results: &Path, b: usize, nsteps: usize, console: &str) -> BootRecord {
    let dir = boot_dir(results, b);
    let mut rec = BootRecord {
        started: boot_started(&dir),
        release: read_opt(&dir.join("facts/release")).map(|s| s.trim().to_string()),
        targets: read_opt(&dir.join("facts/targets")),
        crash_marker: guest_file(&dir.join("crash")),
        done: guest_file(&dir.join("done")),
        error: read_opt(&dir.join("error")).map(|s| s.trim().to_string()),
        planted: planted_by_boot(results, b),
        ..Default::default()
    };
    if let Some(t) = read_opt(&dir.join("facts/tools")) {
        for l in t.lines() {
            if let Some((k, v)) = l.split_once(": ") {
                rec.tools.insert(k.to_string(), v.trim().to_string());
            }
        }
    }
    let klog = read_opt(&dir.join("dmesg"));
    rec.klog = klog.clone();
    for i in 0..nsteps {
        let sd = dir.join(step_dir_name(i));
        let seconds = read_opt(&sd.join("time")).and_then(|t| {
            let v: Vec<f64> = t
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (v.len() == 2).then(|| v[1] - v[0])
        });
        let dmesg = klog
            .as_deref()
            .and_then(|l| step_klog(l, i))
            .or_else(|| read_opt(&sd.join("dmesg")).and_then(|l| step_klog(&l, i)))
            .or_else(|| step_klog(console, i))
            .unwrap_or_default();
        rec.steps.push(StepRecord {
            status: read_opt(&sd.join("status")).and_then(|s| s.trim().parse().ok()),
            skipped: guest_file(&sd.join("skipped")),
            stdout: read_opt(&sd.join("stdout")).unwrap_or_default(),
            stderr: read_opt(&sd.join("stderr")).unwrap_or_default(),
            dmesg,
            seconds,
            label: read_opt(&sd.join("label")),
            abort: read_opt(&sd.join("abort")).map(|s| s.trim().to_string()),
        });
    }
    rec
}

/// Writes `rec` as a guest would (the inverse of [`read_boot`]), for hand-made results
/// directories in tests: the step's kernel log lines go between its markers in `dmesg`.
#[cfg(test)]
pub fn write_boot(results: &Path, b: usize, rec: &BootRecord) -> std::io::Result<()> {
    let dir = boot_dir(results, b);
    std::fs::create_dir_all(dir.join("facts"))?;
    let flag = |name: &str, on: bool| -> std::io::Result<()> {
        if on {
            std::fs::write(dir.join(name), "")?;
        }
        Ok(())
    };
    flag("started", rec.started)?;
    flag("crash", rec.crash_marker)?;
    flag("done", rec.done)?;
    if let Some(e) = &rec.error {
        std::fs::write(dir.join("error"), e)?;
    }
    if let Some(r) = &rec.release {
        std::fs::write(dir.join("facts/release"), r)?;
    }
    if let Some(t) = &rec.targets {
        std::fs::write(dir.join("facts/targets"), t)?;
    }
    let mut klog = String::new();
    for (i, st) in rec.steps.iter().enumerate() {
        let sd = dir.join(step_dir_name(i));
        std::fs::create_dir_all(&sd)?;
        std::fs::write(sd.join("stdout"), &st.stdout)?;
        std::fs::write(sd.join("stderr"), &st.stderr)?;
        if let Some(l) = &st.label {
            std::fs::write(sd.join("label"), l)?;
        }
        if let Some(a) = &st.abort {
            std::fs::write(sd.join("abort"), a)?;
        }
        if let Some(t) = st.seconds {
            std::fs::write(sd.join("time"), format!("1.0 {}", 1.0 + t))?;
        }
        if st.skipped {
            std::fs::write(sd.join("skipped"), "")?;
        }
        if let Some(c) = st.status {
            std::fs::write(sd.join("status"), format!("{c}\n"))?;
        }
        if st.status.is_some() {
            klog.push_str(&format!("{}\n", marker(i, "begin")));
            for l in &st.dmesg {
                klog.push_str(&format!("{l}\n"));
            }
            klog.push_str(&format!("{}\n", marker(i, "end")));
        }
    }
    if rec.done || rec.crash_marker {
        std::fs::write(dir.join("dmesg"), klog)?;
    }
    // What a lying guest planted: a link in place of each (to a path that is not there).
    for p in &rec.planted {
        let at = results.join(p);
        let _ = std::fs::remove_file(&at);
        std::fs::create_dir_all(at.parent().unwrap_or(&dir))?;
        std::os::unix::fs::symlink("/nonexistent-host-file", &at)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_reads_only_plain_files_never_through_a_link_or_a_fifo() {
        let d = tempfile::tempdir().unwrap();
        let results = d.path().join("results");
        let boot = results.join("boot-1");
        std::fs::create_dir_all(boot.join("facts")).unwrap();
        std::fs::write(boot.join("facts/release"), "6.12.0\n").unwrap();
        let secret = d.path().join("host-secret");
        std::fs::write(&secret, "root:x").unwrap();
        std::os::unix::fs::symlink(&secret, boot.join("error")).unwrap();
        nix::unistd::mkfifo(&boot.join("done"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        // A step dir that is a link to a host directory full of plain files.
        let hostdir = d.path().join("hostdir");
        std::fs::create_dir_all(&hostdir).unwrap();
        std::fs::write(hostdir.join("status"), "0").unwrap();
        std::fs::write(hostdir.join("stdout"), "root:x").unwrap();
        std::os::unix::fs::symlink(&hostdir, boot.join(step_dir_name(0))).unwrap();
        let t = std::time::Instant::now();
        let rec = read_boot(&results, 0, 1, "");
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "blocked on the FIFO"
        );
        assert_eq!(rec.release.as_deref(), Some("6.12.0"));
        assert_eq!(rec.error, None, "read through a link");
        assert!(!rec.done, "a FIFO is no `done` file");
        assert_eq!(rec.steps[0].status, None, "read through a linked step dir");
        assert_eq!(rec.steps[0].stdout, "");
        assert_eq!(steps_finished(&boot, 1), 0);
        assert_eq!(
            rec.planted,
            ["boot-1/done", "boot-1/error", "boot-1/step-1"].map(String::from)
        );
    }

    #[test]
    fn a_guest_made_link_is_removed_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().join("host-dir");
        std::fs::create_dir(&host).unwrap();
        std::fs::write(host.join("precious"), "x").unwrap();
        let link = d.path().join("files");
        std::os::unix::fs::symlink(&host, &link).unwrap();
        fresh_dir(&link).unwrap();
        assert!(
            link.is_dir()
                && !std::fs::symlink_metadata(&link)
                    .unwrap()
                    .file_type()
                    .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(host.join("precious")).unwrap(), "x");
        std::fs::write(link.join("old"), "y").unwrap();
        fresh_dir(&link).unwrap();
        assert!(
            !link.join("old").exists(),
            "fresh: nothing left from before"
        );
    }
    use crate::case;
    use crate::replay;

    const CASE: &str = r#"
name: t
summary: s
disks: [{ name: sdc, size: 1MiB }]
boots:
  - name: one
    steps:
      - capture: v
        run: echo "it's"
        expect: "it's"
      - crash: sysrq-b
  - name: two
    steps:
      - classify: pt
        run: "echo \"device-mapper: cache: can't do that\" >> $DMT_KMSG; false"
        outcomes:
          - { label: "refused: x", status: nonzero, dmesg: "can't" }
          - { label: accepted, status: 0 }
      - run: echo only-if-accepted
        when: { pt: accepted }
      - capture: n
        run: printf '1\n'
        expect_match: '^[0-9]+$'
"#;

    #[test]
    fn fixtures_reach_the_guest_as_files_fresh_each_boot() {
        let text = format!("{CASE}files:\n  m.xml: \"<superblock/>\"\n");
        let c = case::parse(&text, "t").unwrap();
        let s = render_script(
            &c,
            0,
            Path::new("/res"),
            &BTreeMap::new(),
            ToolFacts::InGuest,
        );
        assert!(s.contains("FILES='/res/files'; export FILES"), "{s}");
        let plain = case::parse(CASE, "t").unwrap();
        let s = render_script(
            &plain,
            0,
            Path::new("/res"),
            &BTreeMap::new(),
            ToolFacts::InGuest,
        );
        assert!(!s.contains("FILES="));
        let dir = tempfile::tempdir().unwrap();
        prepare_boot(&c, 0, dir.path(), &BTreeMap::new(), ToolFacts::InGuest).unwrap();
        let f = dir.path().join("files/m.xml");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "<superblock/>");
        std::fs::write(&f, "changed by a step").unwrap();
        prepare_boot(&c, 1, dir.path(), &BTreeMap::new(), ToolFacts::InGuest).unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "<superblock/>");
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn script_has_protocol_pieces() {
        let c = case::parse(CASE, "t").unwrap();
        let s = render_script(
            &c,
            0,
            Path::new("/res"),
            &BTreeMap::new(),
            ToolFacts::InGuest,
        );
        assert!(s.contains("R='/res/boot-1'"));
        assert!(s.contains("DISK_sdc=$(dmt_disk sdc)"));
        assert!(s.contains(r#"[ "$v" = 'it'\''s' ]"#), "{s}");
        assert!(s.contains(
            "dmesg > \"$R/dmesg\" 2>&1; : > \"$R/crash\"; sync\necho b > /proc/sysrq-trigger"
        ));
        assert!(s.contains("bash -e -o pipefail"), "{s}");
        let mut carried = BTreeMap::new();
        carried.insert("v".to_string(), "x y".to_string());
        let s2 = render_script(&c, 1, Path::new("/res"), &carried, ToolFacts::InGuest);
        assert!(s2.contains("v='x y'; export v"));
        assert!(s2.contains(r#"if [ "$dmt_st" -ne 0 ] && grep -qF -e 'can'\''t' "$R/step-1/dmesg"; then pt='refused: x'"#), "{s2}");
        assert!(
            s2.contains(r#"if { [ "${pt-}" = 'accepted' ]; }; then"#),
            "{s2}"
        );
    }

    /// The script's own variables are all `dmt_…` (or upper case): no lower-case name a
    /// capture could take is assigned by the script itself.
    #[test]
    fn script_variables_cannot_collide_with_captures() {
        let c = case::parse(CASE, "t").unwrap();
        let mut carried = BTreeMap::new();
        carried.insert("v".to_string(), "x".to_string());
        let s = render_script(&c, 1, Path::new("/res"), &carried, ToolFacts::InGuest);
        // dd's operands (`of=…`) are not shell assignments.
        let s: String = s
            .lines()
            .filter(|l| !l.starts_with("dmt_mark()"))
            .map(|l| format!("{l}\n"))
            .collect();
        let assign = regex::Regex::new(r"(?m)(?:^|[;\s(])([a-z][a-z0-9_]*)=").unwrap();
        let reads = regex::Regex::new(r"\bread -r ((?:[a-z][a-z0-9_]* ?)+)").unwrap();
        let mut names: Vec<String> = assign.captures_iter(&s).map(|m| m[1].to_string()).collect();
        for m in reads.captures_iter(&s) {
            names.extend(m[1].split_whitespace().map(str::to_string));
        }
        names.extend(
            regex::Regex::new(r"\bfor ([a-z][a-z0-9_]*) in")
                .unwrap()
                .captures_iter(&s)
                .map(|m| m[1].to_string()),
        );
        let defined = ["v", "pt", "n"];
        for n in names {
            assert!(
                n.starts_with("dmt_") || defined.contains(&n.as_str()),
                "the guest script assigns `{n}`, which a capture could be named"
            );
        }
    }

    /// Runs a boot script in a real shell with stubs for the guest's tools (no VM); returns
    /// the records.
    fn run_boot_in_sh(c: &case::Case, b: usize, carried: &BTreeMap<String, String>) -> BootRecord {
        run_boot_in_sh_after(c, b, carried, "").0
    }

    /// [`run_boot_in_sh`] with `kmsg` already in the kernel log; also returns the log after.
    fn run_boot_in_sh_after(
        c: &case::Case,
        b: usize,
        carried: &BTreeMap<String, String>,
        kmsg_before: &str,
    ) -> (BootRecord, String) {
        let tmp = tempfile::tempdir().unwrap().keep();
        let res = tmp.as_path();
        let bin = res.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let kmsg = res.join("kmsg");
        std::fs::write(&kmsg, kmsg_before).unwrap();
        let dmesg = format!("cat {} 2>/dev/null", kmsg.display());
        for (name, body) in [
            ("dmesg", dmesg.as_str()),
            ("dmsetup", "echo 'cache            v2.4.0'"),
            ("modprobe", "true"),
            ("sync", "true"),
        ] {
            let p = bin.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        prepare_boot(c, b, res, carried, ToolFacts::OnHost).unwrap();
        let osrelease = bin.join("osrelease");
        std::fs::write(&osrelease, "9.9.9-test\n").unwrap();
        let script = boot_dir(res, b).join("boot.sh");
        let text = std::fs::read_to_string(&script)
            .unwrap()
            .replace(GUEST_RESULTS, &res.display().to_string())
            .replace("$(dmt_disk sdc)", "/dev/null")
            .replace(
                "/proc/sys/kernel/osrelease",
                &osrelease.display().to_string(),
            )
            .replace("export PATH=", &format!("export PATH={}:", bin.display()));
        std::fs::write(&script, text).unwrap();
        let out = std::process::Command::new("sh")
            .arg(&script)
            .env("DMT_KMSG", &kmsg)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let log = std::fs::read_to_string(&kmsg).unwrap();
        (read_boot(res, b, c.boots[b].steps.len(), &log), log)
    }

    /// A kernel that splatted while booting: the script stops before its first step, so the
    /// disks stay untouched and the host may retry the boot.
    #[test]
    fn a_boot_splat_stops_the_script_before_the_first_step() {
        let c = case::parse(CASE, "t").unwrap();
        let (rec, log) = run_boot_in_sh_after(
            &c,
            1,
            &BTreeMap::new(),
            "BUG: KASAN: wild-memory-access in _raw_spin_lock+0x76/0xe0\n",
        );
        assert!(!rec.started, "{rec:?}");
        assert!(rec.steps.iter().all(|s| s.status.is_none()), "{rec:?}");
        assert!(
            log.contains("dmt: kernel splat before the first step"),
            "{log}"
        );
        assert!(!log.contains("dmt: step-1 begin"), "{log}");
    }

    /// The generated script is valid sh and the protocol round-trips through a real shell.
    #[test]
    fn script_runs_in_sh_and_reads_back() {
        let c = case::parse(CASE, "t").unwrap();
        let mut carried = BTreeMap::new();
        carried.insert("v".to_string(), "it's".to_string());
        let rec = run_boot_in_sh(&c, 1, &carried);
        assert!(rec.started && rec.done, "{rec:?}");
        assert_eq!(rec.release.as_deref(), Some("9.9.9-test"));
        assert_eq!(rec.cache_target().as_deref(), Some("2.4.0"));
        assert_eq!(rec.steps[0].status, Some(1));
        assert_eq!(rec.steps[0].label.as_deref(), Some("refused: x"));
        assert_eq!(
            rec.steps[0].dmesg,
            vec!["device-mapper: cache: can't do that".to_string()],
            "the step's kernel log lines, between its markers"
        );
        assert!(rec.steps[1].skipped);
        assert_eq!(rec.steps[2].status, Some(0), "{:?}", rec.steps[2]);
        assert!(rec.steps[2].abort.is_none(), "{:?}", rec.steps[2]);
        let rp = replay::replay(&c, &[&BootRecord::default(), &rec]);
        assert_eq!(rp.values["pt"], "refused: x");
        assert!(rp.steps[1].iter().all(|f| f.problems.is_empty()));
    }

    /// A failure inside a pipeline fails the step (bash pipefail), and `expect_match` sees
    /// the trimmed stdout and stops the boot like `expect`.
    #[test]
    fn pipefail_and_expect_match_stop_the_boot() {
        let text = CASE
            .replace(
                "run: printf '1\\n'\n        expect_match: '^[0-9]+$'",
                "run: printf 'x\\n'\n        expect_match: '^[0-9]+$'",
            )
            .replace(
                "      - run: echo only-if-accepted\n        when: { pt: accepted }\n",
                "      - run: dd if=/nonexistent bs=1 count=1 2>/dev/null | md5sum\n        expect_status: nonzero\n",
            );
        let c = case::parse(&text, "t").unwrap();
        let rec = run_boot_in_sh(&c, 1, &BTreeMap::new());
        assert_ne!(rec.steps[1].status, Some(0), "pipefail: {:?}", rec.steps[1]);
        assert!(rec.steps[1].abort.is_none());
        assert!(
            rec.steps[2]
                .abort
                .as_deref()
                .is_some_and(|a| a.contains("does not match")),
            "{:?}",
            rec.steps[2]
        );
        assert!(rec.done);
    }

    #[test]
    fn step_klog_slices_between_markers() {
        let log = "[ 1.0] a\n[ 2.0] dmt: step-1 begin\n[ 2.1] x\n[ 2.2] dmt: step-1 end\n[ 3.0] dmt: step-11 begin\n[ 3.1] y\n";
        assert_eq!(step_klog(log, 0).unwrap(), vec!["[ 2.1] x"]);
        assert_eq!(
            step_klog(log, 10).unwrap(),
            vec!["[ 3.1] y"],
            "no end marker: to the end"
        );
        assert!(step_klog(log, 1).is_none());
    }

    #[test]
    fn target_version() {
        let t = "cache            v2.3.0\nlinear           v1.4.0\n";
        assert_eq!(parse_target_version(t, "cache").as_deref(), Some("2.3.0"));
        assert_eq!(parse_target_version(t, "thin"), None);
    }
}
