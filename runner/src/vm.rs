//! Launching VMs: pure builders of the `vng` argument list (one small function per group),
//! the KVM usability probe with TCG fallback, and one `vng` process per boot in its own
//! process group, killed as a group on timeout, Ctrl-C or error.

use anyhow::{bail, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set by the Ctrl-C handler; every wait loop checks it.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs a Ctrl-C/SIGTERM handler that makes running boots stop and clean up.
pub fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

/// Everything one boot needs.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Kernel image to boot (`vng -r`); its modules are found by vng next to it (`DIR/lib/modules`).
    pub kernel: PathBuf,
    /// (name, raw image path); the guest sees them as virtio-blk disks with serial = name.
    pub disks: Vec<(String, PathBuf)>,
    /// The only host directory the guest may write (same path inside the guest).
    pub rwdir: PathBuf,
    /// Guest command (the generated boot script).
    pub exec: String,
    pub memory: String,
    pub cpus: u32,
    pub accel: Accel,
    /// Root filesystem for the guest (`vng --root`); `None` = the host root, read-only.
    pub root: Option<PathBuf>,
    /// (release, host dir) of the kernel's modules, mounted read-only at
    /// `/lib/modules/<release>` when the guest root is an image.
    pub modules: Option<(String, PathBuf)>,
}

fn kernel_args(kernel: &Path) -> Vec<String> {
    vec!["--run".into(), kernel.display().to_string()]
}

fn accel_args(accel: Accel) -> Vec<String> {
    match accel {
        Accel::Kvm => vec![],
        Accel::Tcg => vec!["--disable-kvm".into()],
    }
}

/// PC machine (not microvm) so virtio-blk-pci is always there; verbose = kernel console on stderr.
fn machine_args(memory: &str, cpus: u32) -> Vec<String> {
    vec![
        "--disable-microvm".into(),
        "--verbose".into(),
        "--memory".into(),
        memory.into(),
        "--cpus".into(),
        cpus.to_string(),
    ]
}

/// Raw disks with explicit `format=raw` (QEMU's probing would forbid writes to block 0,
/// where dm-cache metadata lives) and a serial the guest resolves to a device node.
fn disk_args(disks: &[(String, PathBuf)]) -> Vec<String> {
    disks
        .iter()
        .enumerate()
        .flat_map(|(i, (name, path))| {
            // One token: argparse would take a separate value starting with `-` for an option.
            vec![format!(
                    "--qemu-opts=-drive if=none,id=dmt{i},file={},format=raw,cache=writeback -device virtio-blk-pci,drive=dmt{i},serial={name}",
                    path.display()
                )]
        })
        .collect()
}

/// The host root stays read-only (never `--rw`); the results dir is the only writable share,
/// at [`crate::guest::GUEST_RESULTS`] in the guest.  With an image root, the kernel's modules
/// are mounted read-only into it.
fn share_args(
    rwdir: &Path,
    root: Option<&Path>,
    modules: Option<&(String, PathBuf)>,
) -> Vec<String> {
    let guest = crate::guest::GUEST_RESULTS.trim_start_matches('/');
    let mut v = vec![format!("--rwdir={guest}={}", rwdir.display())];
    if let Some(r) = root {
        v.push("--root".into());
        v.push(r.display().to_string());
        if let Some((rel, dir)) = modules {
            v.push(format!("--rodir=lib/modules/{rel}={}", dir.display()));
        }
    }
    v
}

/// The full `vng` argument list for one boot.
pub fn vng_args(cfg: &VmConfig) -> Vec<String> {
    let mut a = Vec::new();
    a.extend(kernel_args(&cfg.kernel));
    a.extend(accel_args(cfg.accel));
    a.extend(machine_args(&cfg.memory, cfg.cpus));
    a.extend(share_args(
        &cfg.rwdir,
        cfg.root.as_deref(),
        cfg.modules.as_ref(),
    ));
    a.extend(disk_args(&cfg.disks));
    a.push("--exec".into());
    a.push(cfg.exec.clone());
    a
}

/// QEMU arguments of the KVM probe: boot the kernel with no root; reaching the kernel's first
/// console line proves KVM runs it.
pub fn kvm_probe_args(kernel: &Path) -> Vec<String> {
    [
        "-accel",
        "kvm",
        "-m",
        "256",
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
        "-kernel",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        kernel.display().to_string(),
        "-append".into(),
        "console=ttyS0 earlyprintk=ttyS0 panic=-1 root=/dev/nonexistent".into(),
    ])
    .collect()
}

/// What the probe's output says: `Some(true)` usable, `Some(false)` not, `None` undecided yet.
pub fn kvm_probe_verdict(output: &str) -> Option<bool> {
    if output.contains("KVM internal error") || output.contains("failed to initialize kvm") {
        Some(false)
    } else if output.contains("Linux version") {
        Some(true)
    } else {
        None
    }
}

/// Decides the accelerator: `$DMCACHE_VMTEST_ACCEL` (kvm|tcg) wins; else KVM if `/dev/kvm`
/// is usable and a probe boot of `kernel` gets past decompression under it.
/// Returns the choice and, for a fallback, the one-line reason.
pub fn choose_accel(kernel: &Path) -> Result<(Accel, Option<String>)> {
    match std::env::var("DMCACHE_VMTEST_ACCEL").as_deref() {
        Ok("kvm") => return Ok((Accel::Kvm, None)),
        Ok("tcg") => return Ok((Accel::Tcg, None)),
        Ok(other) => bail!("DMCACHE_VMTEST_ACCEL must be `kvm` or `tcg`, not `{other}`"),
        Err(_) => {}
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Ok((
            Accel::Tcg,
            Some(
                "/dev/kvm is missing or not accessible: using TCG software emulation (slow)".into(),
            ),
        ));
    }
    let out = tempfile::NamedTempFile::new()?;
    let mut child = Command::new(qemu_binary())
        .args(kvm_probe_args(kernel))
        .stdin(Stdio::null())
        .stdout(out.reopen()?)
        .stderr(out.reopen()?)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot run {} for the KVM probe", qemu_binary()))?;
    let start = Instant::now();
    let verdict = loop {
        let mut text = String::new();
        let _ = out.reopen()?.read_to_string(&mut text);
        if let Some(v) = kvm_probe_verdict(&text) {
            break v;
        }
        if child.try_wait()?.is_some() || start.elapsed() > Duration::from_secs(15) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    kill_group(&mut child);
    if verdict {
        Ok((Accel::Kvm, None))
    } else {
        Ok((
            Accel::Tcg,
            Some("KVM is present but cannot run this kernel (e.g. `KVM internal error` on a paravirtual KVM): using TCG software emulation (slow)".into()),
        ))
    }
}

pub fn qemu_binary() -> String {
    std::env::var("DMCACHE_VMTEST_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into())
}

/// SIGTERM then SIGKILL to the child's whole process group, and reap it.
pub fn kill_group(child: &mut Child) {
    let pg = Pid::from_raw(child.id() as i32);
    if child.try_wait().ok().flatten().is_none() {
        let _ = killpg(pg, Signal::SIGTERM);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // QEMU or virtiofsd may still linger in the group even after vng exited.
    let _ = killpg(pg, Signal::SIGKILL);
    let _ = child.wait();
}

/// How a vng process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessEnd {
    Exited(i32),
    Signaled,
    Timeout,
    Interrupted,
}

/// One finished boot, as the host saw the process.
#[derive(Debug, Clone)]
pub struct Launched {
    pub end: ProcessEnd,
    pub seconds: f64,
    pub console_log: PathBuf,
    pub stdout_log: PathBuf,
}

/// Runs one boot: `vng` in its own process group, stdout/stderr to log files in `log_dir`
/// (`<tag>.console.log` holds the kernel console).  `tick` is called ~5×/s while it runs.
pub fn launch(
    cfg: &VmConfig,
    log_dir: &Path,
    tag: &str,
    timeout: Duration,
    tick: &mut dyn FnMut(),
) -> Result<Launched> {
    let console_log = log_dir.join(format!("{tag}.console.log"));
    let stdout_log = log_dir.join(format!("{tag}.stdout.log"));
    let console = std::fs::File::create(&console_log)
        .with_context(|| format!("cannot create {}", console_log.display()))?;
    let stdout = std::fs::File::create(&stdout_log)?;
    let start = Instant::now();
    let mut child = Command::new(vng_binary())
        .args(vng_args(cfg))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(console)
        .process_group(0)
        .spawn()
        .with_context(|| {
            format!(
                "cannot run `{}`: install virtme-ng (pip install virtme-ng) or set DMCACHE_VMTEST_VNG",
                vng_binary()
            )
        })?;
    let end = loop {
        if let Some(st) = child.try_wait()? {
            break match st.code() {
                Some(c) => ProcessEnd::Exited(c),
                None => ProcessEnd::Signaled,
            };
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            kill_group(&mut child);
            break ProcessEnd::Interrupted;
        }
        if start.elapsed() > timeout {
            kill_group(&mut child);
            break ProcessEnd::Timeout;
        }
        tick();
        std::thread::sleep(Duration::from_millis(200));
    };
    // vng may leave QEMU children behind in the group; never leave a stray VM.
    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    Ok(Launched {
        end,
        seconds: start.elapsed().as_secs_f64(),
        console_log,
        stdout_log,
    })
}

pub fn vng_binary() -> String {
    std::env::var("DMCACHE_VMTEST_VNG").unwrap_or_else(|_| "vng".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VmConfig {
        VmConfig {
            kernel: "/k/boot/vmlinuz-6.12".into(),
            disks: vec![("sdc".into(), "/w/disks/sdc.img".into())],
            rwdir: "/w/results".into(),
            exec: "sh /w/results/boot-1/boot.sh".into(),
            memory: "1G".into(),
            cpus: 2,
            accel: Accel::Tcg,
            root: None,
            modules: Some(("6.12".into(), "/k/lib/modules/6.12".into())),
        }
    }

    #[test]
    fn disks_are_raw_with_serial() {
        let a = disk_args(&cfg().disks);
        assert_eq!(a.len(), 1);
        assert!(a[0].starts_with("--qemu-opts=-drive "), "{}", a[0]);
        assert!(
            a[0].contains("file=/w/disks/sdc.img,format=raw"),
            "{}",
            a[0]
        );
        assert!(a[0].contains("virtio-blk-pci,drive=dmt0,serial=sdc"));
    }

    #[test]
    fn tcg_disables_kvm_and_kvm_does_not() {
        assert_eq!(accel_args(Accel::Tcg), vec!["--disable-kvm"]);
        assert!(accel_args(Accel::Kvm).is_empty());
    }

    #[test]
    fn full_args_isolation() {
        let a = vng_args(&cfg());
        assert!(
            !a.iter().any(|x| x == "--rw"),
            "host root must stay read-only"
        );
        assert!(a.contains(&"--rwdir=tmp/dmcache-vmtest-results=/w/results".to_string()));
        assert!(
            !a.iter().any(|x| x.starts_with("--rodir")),
            "host root has its own modules"
        );
        assert_eq!(&a[..2], &["--run", "/k/boot/vmlinuz-6.12"]);
        assert_eq!(a.last().unwrap(), "sh /w/results/boot-1/boot.sh");
        assert!(a.contains(&"--disable-microvm".to_string()));
        let mut c = cfg();
        c.root = Some("/img/root".into());
        assert!(vng_args(&c)
            .windows(2)
            .any(|w| w == ["--root", "/img/root"]));
    }

    #[test]
    fn probe_verdicts() {
        assert_eq!(
            kvm_probe_verdict("KVM internal error. Suberror: 1\nemulation failure"),
            Some(false)
        );
        assert_eq!(
            kvm_probe_verdict("[    0.000000] Linux version 6.12.117"),
            Some(true)
        );
        assert_eq!(kvm_probe_verdict("SeaBIOS"), None);
        let a = kvm_probe_args(Path::new("/k"));
        assert!(a.windows(2).any(|w| w == ["-accel", "kvm"]));
    }
}
