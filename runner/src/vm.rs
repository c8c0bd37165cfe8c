//! Launching VMs: pure builders of the `vng` argument list (one small function per group),
//! the KVM usability probe with TCG fallback, and one `vng` process per boot.  Every vng/QEMU
//! child lives in a [`GroupGuard`]: its own process group, killed as a whole on timeout,
//! Ctrl-C/SIGTERM, error or any early return.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub use crate::interrupt::{install_interrupt_handler, INTERRUPTED};
use crate::proc::{GroupGuard, LeaderEnd, STOP_GRACE};

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
    /// Let the guest start udev (the case's `vm: { udev: true }`); see [`launch_command`].
    pub udev: bool,
    /// Extra kernel command-line parameters (`--kernel-arg`), after the runner's own.
    pub kernel_args: Vec<String>,
    /// Record every write to the (one) disk with QEMU's blklogwrites (`crashpoints`).
    pub record: Option<Recording>,
}

/// How a disk is recorded: its image holds the case's `disk_bytes` and then
/// [`MARK_BYTES`] of mark area, both seen through one blklogwrites node, so that the guest's
/// step marks ([`MARK_SERIAL`]) and the case's writes are in one ordered log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    pub log: PathBuf,
    /// Continue the log of an earlier boot (`log-append=on`) instead of starting it.
    pub append: bool,
    pub disk_bytes: u64,
}

/// The mark area after a recorded disk: one 512-byte sector per step (boot × 256 + step).
pub const MARK_BYTES: u64 = 1 << 20;
/// The serial of the mark disk: the guest script writes a sector there after each step.
pub const MARK_SERIAL: &str = "dmtmarks";

fn kernel_args(kernel: &Path) -> Vec<String> {
    vec!["--run".into(), kernel.display().to_string()]
}

fn accel_args(accel: Accel) -> Vec<String> {
    match accel {
        Accel::Kvm => vec![],
        Accel::Tcg => vec!["--disable-kvm".into()],
    }
}

/// Drivers of the VM's own virtual hardware (QEMU q35 with `-cpu max`: its AHCI controller and
/// CD-ROM, ICH9 chipset, watchdogs, PC speaker, PS/2 mouse, the emulated CPU's crypto and
/// virtualization extensions) that no case uses.  udev's coldplug would load each of them at
/// every boot — from xz-compressed modules over 9p, under TCG: measured here 8.7 s of udev
/// coldplug with them, 3.4 s without, on Debian's 6.12.  Kernels with these built in are not
/// affected.
pub const UNUSED_DRIVERS: &[&str] = &[
    "ahci",
    "libahci",
    "sr_mod",
    "cdrom",
    "sg",
    "lpc_ich",
    "i2c_i801",
    "i2c_smbus",
    "iTCO_wdt",
    "iTCO_vendor_support",
    "intel_pmc_bxt",
    "i6300esb",
    "pcspkr",
    "psmouse",
    "serio_raw",
    "evdev",
    "button",
    "qemu_fw_cfg",
    "kvm",
    "kvm_amd",
    "kvm_intel",
    "ccp",
    "aesni_intel",
    "crypto_simd",
    "cryptd",
    "ghash_clmulni_intel",
    "crct10dif_pclmul",
    "crc32_pclmul",
    "sha1_ssse3",
    "sha256_ssse3",
    "sha512_ssse3",
];

/// Init functions of built-in drivers for the same unused hardware, skipped with
/// `initcall_blacklist=`: the q35 AHCI controller (six SATA links probed, a CD-ROM), the
/// PIIX IDE driver, the PS/2 controller.  The minimal built kernel has all three built in
/// (Debian: i8042): measured 2.9 s → 2.5 s from kernel start to the guest's first command.
pub const UNUSED_INITCALLS: &[&str] = &["ahci_pci_driver_init", "piix_init", "i8042_init"];

/// PC machine (not microvm) so virtio-blk-pci is always there; verbose = kernel console on
/// stderr; udev (in a case that asks for it) may not load [`UNUSED_DRIVERS`], and runs two
/// workers, not one per event (measured: 3.0 s of coldplug instead of 3.4–4.8 s on one TCG
/// vCPU); no crypto self-tests at boot (each algorithm registered runs one, and asks for
/// modules the initramfs does not have: Debian 6.12 reached `/init` ~0.9 s later under TCG).
fn machine_args(memory: &str, cpus: u32, extra: &[String]) -> Vec<String> {
    let mut append = format!(
        "modprobe.blacklist={} initcall_blacklist={} udev.children_max=2 cryptomgr.notests",
        UNUSED_DRIVERS.join(","),
        UNUSED_INITCALLS.join(",")
    );
    for a in extra {
        append.push(' ');
        append.push_str(a);
    }
    vec![
        "--disable-microvm".into(),
        "--verbose".into(),
        "--memory".into(),
        memory.into(),
        "--cpus".into(),
        cpus.to_string(),
        "--append".into(),
        append,
    ]
}

/// Checks every path and value of `cfg` that reaches vng's `sh -c` (vng 1.42 joins
/// `--run`, `--rwdir`, `--rodir`, `--root`, `--memory` and `--qemu-opts` into one shell
/// string without quoting) or a QEMU option list split at commas (`-drive …,file=PATH`): a
/// space, `;`, `$( )` or `,` there would break the boot or run a host command.  The error
/// names the value and where it comes from.
pub fn check_vm_config(cfg: &VmConfig) -> Result<()> {
    let cache = "below the cache dir: $DMCACHE_VMTEST_CACHE, $XDG_CACHE_HOME or $HOME";
    let work = "below the work dir: $TMPDIR or the system temp dir";
    check_shell_word(
        &format!("the kernel image (--kernel, or {cache})"),
        &cfg.kernel,
    )?;
    check_shell_word(&format!("the results dir ({work})"), &cfg.rwdir)?;
    for (name, p) in &cfg.disks {
        check_shell_word(&format!("the disk image `{name}` ({work})"), p)?;
    }
    if let Some(rec) = &cfg.record {
        check_shell_word(&format!("the write log ({work})"), &rec.log)?;
        if cfg.disks.len() != 1 {
            bail!(
                "recording writes needs exactly one disk (one ordered log), this boot has {}",
                cfg.disks.len()
            );
        }
    }
    if let Some(r) = &cfg.root {
        check_shell_word(&format!("the guest root (--image, {cache})"), r)?;
    }
    if let Some((_, m)) = &cfg.modules {
        check_shell_word("the kernel's modules dir (next to --kernel)", m)?;
    }
    let mem = regex::Regex::new(r"^[0-9]+(\.[0-9]+)?[kKmMgGtT]?$").expect("static regex");
    if !mem.is_match(&cfg.memory) {
        bail!(
            "guest memory `{}` (--memory or the case's vm.memory): write a size such as 1G or 1536M",
            cfg.memory
        );
    }
    Ok(())
}

/// A path that vng's shell reads as one word and QEMU as one option value: absolute, and
/// only letters, digits and `/ . _ - + @ % :` — and `~`, but not where a shell expands it.
fn check_shell_word(what: &str, p: &Path) -> Result<()> {
    let s = p
        .to_str()
        .with_context(|| format!("{what}: `{}` is not UTF-8", p.display()))?;
    if !s.starts_with('/') {
        bail!("{what}: `{s}` must be an absolute path");
    }
    let mut prev = '/';
    for c in s.chars() {
        let ok = c.is_ascii_alphanumeric()
            || "/._-+@%:".contains(c)
            || (c == '~' && !"/=:".contains(prev));
        if !ok {
            bail!("{what}: `{s}` has `{c}`, which vng's shell or QEMU's option list would split or run: use a path of letters, digits and / . _ - + @ % :");
        }
        prev = c;
    }
    Ok(())
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

/// One recorded disk (see [`Recording`]): file → blklogwrites → two raw windows, the case's
/// disk and the mark area, each a virtio-blk device with a write cache (so the guest sends
/// the flushes and FUAs the log must see; `share-rw`: both windows write the one node).
fn recorded_disk_args(name: &str, path: &Path, rec: &Recording) -> Vec<String> {
    let dev = |node: &str, serial: &str| {
        format!("-device virtio-blk-pci,drive={node},serial={serial},write-cache=on,share-rw=on")
    };
    // QEMU refuses log-sector-size with log-append=on (the log's superblock has it).
    let log_opts = if rec.append {
        "log-append=on"
    } else {
        "log-sector-size=512,log-append=off"
    };
    vec![
        format!("--qemu-opts=-blockdev driver=file,node-name=dmtf0,filename={}", path.display()),
        format!("--qemu-opts=-blockdev driver=file,node-name=dmtl0,filename={}", rec.log.display()),
        format!("--qemu-opts=-blockdev driver=blklogwrites,node-name=dmtw0,file=dmtf0,log=dmtl0,{log_opts}"),
        format!("--qemu-opts=-blockdev driver=raw,node-name=dmt0,file=dmtw0,offset=0,size={} {}", rec.disk_bytes, dev("dmt0", name)),
        format!("--qemu-opts=-blockdev driver=raw,node-name=dmtm0,file=dmtw0,offset={},size={MARK_BYTES} {}", rec.disk_bytes, dev("dmtm0", MARK_SERIAL)),
    ]
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
    a.extend(machine_args(&cfg.memory, cfg.cpus, &cfg.kernel_args));
    a.extend(share_args(
        &cfg.rwdir,
        cfg.root.as_deref(),
        cfg.modules.as_ref(),
    ));
    match (&cfg.record, cfg.disks.as_slice()) {
        (Some(rec), [(name, path)]) => a.extend(recorded_disk_args(name, path, rec)),
        _ => a.extend(disk_args(&cfg.disks)),
    }
    a.push("--exec".into());
    a.push(cfg.exec.clone());
    a
}

/// How a boot is started: `vng` itself, or — for a lean guest, the default — `vng` under
/// `unshare` in a private mount namespace in which the guest root (`/` or the image) has an
/// empty tmpfs over `usr/lib/systemd` and `true` bound over `usr/bin/systemd-tmpfiles`.
/// virtme-ng-init starts udev whenever it finds `systemd-udevd` there and runs
/// `systemd-tmpfiles --boot` whenever `/etc/systemd` exists, with no switch for either (~3 s
/// and ~1 s per boot under TCG); QEMU's 9p server exports the namespace's view, so the guest
/// sees neither.  The host and every other process see no change.  `lean_possible`: see
/// [`may_hide_udev`]; without it the guest starts as vng would (slower, same verdicts).
pub fn launch_command(cfg: &VmConfig, vng: &str, lean_possible: bool) -> (String, Vec<String>) {
    let vng_cmd = vng_args(cfg);
    if cfg.udev || !lean_possible {
        return (vng.to_string(), vng_cmd);
    }
    let root = cfg.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let mut a: Vec<String> = [
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        LEAN_GUEST_SH,
        "dmcache-vmtest-lean-guest",
    ]
    .map(String::from)
    .to_vec();
    a.push(root.display().to_string().trim_end_matches('/').to_string());
    a.push(vng.to_string());
    a.extend(vng_cmd);
    ("unshare".into(), a)
}

/// `$1` = the guest root (without a trailing `/`), then the command to run in its place.
const LEAN_GUEST_SH: &str = r#"r=$1; shift
mount -t tmpfs -o ro,mode=0755,size=4k dmcache-vmtest-no-udev "$r/usr/lib/systemd" || exit 125
if [ -e "$r/usr/bin/systemd-tmpfiles" ]; then
  mount --bind "$r/usr/bin/true" "$r/usr/bin/systemd-tmpfiles" || exit 125
fi
exec "$@""#;

/// Whether this process can give the guest the lean view: root, and a private mount
/// namespace with a tmpfs in it actually works here (a container may run as root without
/// CAP_SYS_ADMIN).  Tried once per process.
pub fn may_hide_udev() -> bool {
    static CAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAN.get_or_init(|| {
        nix::unistd::geteuid().is_root()
            && Command::new("unshare")
                .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                .arg("mount -t tmpfs -o size=4k dmcache-vmtest-probe /mnt")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    })
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
    // The probe's answer depends on the kernel image, this host's kernel and CPU, and QEMU:
    // cached under that key, so it is paid once per kernel and machine, not once per run.
    let key = probe_key(
        &std::fs::read(kernel).with_context(|| format!("cannot read {}", kernel.display()))?,
        &host_identity(),
    );
    let cached = crate::cache::dir("accel").join(&key);
    if let Ok(a) = std::fs::read_to_string(&cached) {
        match a.trim() {
            "kvm" => return Ok((Accel::Kvm, None)),
            "tcg" => {
                return Ok((
                    Accel::Tcg,
                    Some(format!(
                        "{TCG_FALLBACK} (cached probe result: {})",
                        cached.display()
                    )),
                ))
            }
            _ => {}
        }
    }
    let (accel, notice) = probe_kvm(kernel)?;
    // A cache that cannot be written costs a probe next time, nothing else.
    let _ = std::fs::create_dir_all(cached.parent().unwrap_or(Path::new("."))).and_then(|_| {
        crate::cache::write_durable(&cached, if accel == Accel::Kvm { b"kvm" } else { b"tcg" })
    });
    Ok((accel, notice))
}

const TCG_FALLBACK: &str = "KVM is present but cannot run this kernel (e.g. `KVM internal error` on a paravirtual KVM): using TCG software emulation (slow)";

/// What the KVM probe's answer depends on besides the kernel: this host's kernel and CPU
/// (a paravirtual KVM fails where a real one works) and the QEMU binary.
fn host_identity() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .unwrap_or("")
        .to_string();
    let qemu = which(&qemu_binary())
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| format!("{:?}{}", m.modified().ok(), m.len()))
        .unwrap_or_default();
    format!("{}|{cpu}|{qemu}", release.trim())
}

fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The cache key of a KVM probe: sha256 of the kernel image and the host identity.
pub fn probe_key(kernel_image: &[u8], host: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(kernel_image);
    h.update(b"\0");
    h.update(host.as_bytes());
    format!("{:x}", h.finalize())[..24].to_string()
}

/// Boots `kernel` briefly under KVM: does it get past decompression?
fn probe_kvm(kernel: &Path) -> Result<(Accel, Option<String>)> {
    let out = tempfile::NamedTempFile::new().context("cannot create the KVM probe's log")?;
    // Owned from here on: any early return below kills the probe's QEMU.
    let mut probe = GroupGuard::spawn(
        Command::new(qemu_binary())
            .args(kvm_probe_args(kernel))
            .stdin(Stdio::null())
            .stdout(out.reopen()?)
            .stderr(out.reopen()?),
    )
    .with_context(|| format!("cannot run {} for the KVM probe", qemu_binary()))?;
    let start = Instant::now();
    let verdict = loop {
        let mut text = String::new();
        let _ = out.reopen()?.read_to_string(&mut text);
        if let Some(v) = kvm_probe_verdict(&text) {
            break v;
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted during the KVM probe");
        }
        if probe.exited()?.is_some() || start.elapsed() > Duration::from_secs(15) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(probe);
    if verdict {
        Ok((Accel::Kvm, None))
    } else {
        Ok((Accel::Tcg, Some(TCG_FALLBACK.into())))
    }
}

pub fn qemu_binary() -> String {
    std::env::var("DMCACHE_VMTEST_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into())
}

/// How a vng process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessEnd {
    Exited(i32),
    Signaled,
    Timeout,
    Interrupted,
    /// The caller's `tick` asked to stop the VM (e.g. a kernel oops was seen and the guest
    /// had its grace period).
    Stopped,
}

/// One finished boot, as the host saw the process.
#[derive(Debug, Clone)]
pub struct Launched {
    pub end: ProcessEnd,
    pub seconds: f64,
    /// Seconds from the start until the console log got its first byte (the host side of a
    /// boot: vng, initramfs, QEMU, firmware), when it got one.
    pub first_output: Option<f64>,
    pub console_log: PathBuf,
    pub stdout_log: PathBuf,
}

impl Launched {
    fn interrupted(log_dir: &Path, tag: &str) -> Self {
        Launched {
            end: ProcessEnd::Interrupted,
            seconds: 0.0,
            first_output: None,
            console_log: console_log_path(log_dir, tag),
            stdout_log: log_dir.join(format!("{tag}.stdout.log")),
        }
    }
}

/// Where [`launch`] writes the console of the boot `tag`.
pub fn console_log_path(log_dir: &Path, tag: &str) -> PathBuf {
    log_dir.join(format!("{tag}.console.log"))
}

/// Runs one boot: `vng` in its own process group, stdout/stderr to log files in `log_dir`
/// (`<tag>.console.log` holds the kernel console).  `tick` is called ~20×/s while it runs; when it returns true the VM is stopped.
/// The boot first waits for a core slot ([`crate::cores`]; `on_wait` is called if it must
/// wait); its timeout counts from when it has one.
pub fn launch(
    cfg: &VmConfig,
    log_dir: &Path,
    tag: &str,
    timeout: Duration,
    tick: &mut dyn FnMut() -> bool,
    on_wait: &mut dyn FnMut(),
) -> Result<Launched> {
    check_vm_config(cfg)?;
    let console_log = console_log_path(log_dir, tag);
    let stdout_log = log_dir.join(format!("{tag}.stdout.log"));
    let console = std::fs::File::create(&console_log)
        .with_context(|| format!("cannot create {}", console_log.display()))?;
    let stdout = std::fs::File::create(&stdout_log)
        .with_context(|| format!("cannot create {}", stdout_log.display()))?;
    let _slot = match crate::cores::vm_slot(cfg.cpus as usize, on_wait) {
        Ok(s) => s,
        Err(_) if INTERRUPTED.load(Ordering::SeqCst) => {
            return Ok(Launched::interrupted(log_dir, tag))
        }
        Err(e) => return Err(e),
    };
    let start = Instant::now();
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Ok(Launched::interrupted(log_dir, tag));
    }
    // Owned from here on: every return below, `?` included, kills the whole group.
    let may_hide = may_hide_udev();
    if !cfg.udev && !may_hide {
        static NOTE: std::sync::Once = std::sync::Once::new();
        NOTE.call_once(|| {
            eprintln!("note: not root, or no private mount namespace here (`unshare --mount`): the guest keeps udev (slower; a case that must run without it fails its `test ! -e /run/udev/control` step)");
        });
    }
    let (program, args) = launch_command(cfg, &vng_binary(), may_hide);
    let mut vm = GroupGuard::spawn(
        Command::new(program)
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(console),
    )
    .with_context(|| {
        format!(
            "cannot run `{}`: install virtme-ng (pip install virtme-ng==1.42) or set DMCACHE_VMTEST_VNG",
            vng_binary()
        )
    })?;
    let mut first_output = None;
    let end = loop {
        if first_output.is_none() && std::fs::metadata(&console_log).is_ok_and(|m| m.len() > 0) {
            first_output = Some(start.elapsed().as_secs_f64());
        }
        if let Some(st) = vm.exited()? {
            break match st {
                LeaderEnd::Exited(c) => ProcessEnd::Exited(c),
                LeaderEnd::Signaled => ProcessEnd::Signaled,
            };
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            vm.stop(STOP_GRACE);
            break ProcessEnd::Interrupted;
        }
        if start.elapsed() > timeout {
            vm.stop(STOP_GRACE);
            break ProcessEnd::Timeout;
        }
        if tick() {
            vm.stop(STOP_GRACE);
            break ProcessEnd::Stopped;
        }
        // Fine-grained until the console starts (the host phase is measured by it), then 20
        // times a second: the end of a boot is noticed within 50 ms.
        std::thread::sleep(Duration::from_millis(if first_output.is_none() {
            20
        } else {
            50
        }));
    };
    // vng may leave QEMU children behind in the group; never leave a stray VM.
    vm.kill();
    Ok(Launched {
        end,
        seconds: start.elapsed().as_secs_f64(),
        first_output,
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

    #[test]
    fn probe_key_depends_on_kernel_and_host() {
        let k = probe_key(b"kernel-a", "6.1|cpu|qemu");
        assert_eq!(k, probe_key(b"kernel-a", "6.1|cpu|qemu"));
        assert_ne!(k, probe_key(b"kernel-b", "6.1|cpu|qemu"));
        assert_ne!(k, probe_key(b"kernel-a", "6.2|cpu|qemu"));
        assert_eq!(k.len(), 24);
    }

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
            udev: false,
            kernel_args: vec![],
            record: None,
        }
    }

    #[test]
    fn a_recorded_disk_is_one_blklogwrites_node_under_the_disk_and_the_mark_area() {
        let mut c = cfg();
        c.record = Some(Recording {
            log: "/w/disks/sdc.log".into(),
            append: true,
            disk_bytes: 256 << 20,
        });
        let a = vng_args(&c).join(" ");
        assert!(!a.contains("-drive"), "{a}");
        // (QEMU 10.0: "log-append and log-sector-size are mutually exclusive")
        assert!(
            a.contains("driver=blklogwrites,node-name=dmtw0,file=dmtf0,log=dmtl0,log-append=on "),
            "{a}"
        );
        assert!(a.contains("filename=/w/disks/sdc.log"), "{a}");
        assert!(a.contains("offset=0,size=268435456 -device virtio-blk-pci,drive=dmt0,serial=sdc,write-cache=on,share-rw=on"), "{a}");
        assert!(
            a.contains(
                "offset=268435456,size=1048576 -device virtio-blk-pci,drive=dmtm0,serial=dmtmarks"
            ),
            "{a}"
        );
        c.disks.push(("sdd".into(), "/w/disks/sdd.img".into()));
        assert!(check_vm_config(&c)
            .unwrap_err()
            .to_string()
            .contains("exactly one disk"));
    }

    #[test]
    fn kernel_args_go_after_the_runners_own() {
        let mut c = cfg();
        c.kernel_args = vec!["preempt=full".into(), "quiet".into()];
        let a = vng_args(&c);
        let i = a.iter().position(|x| x == "--append").unwrap();
        assert!(
            a[i + 1].ends_with("cryptomgr.notests preempt=full quiet"),
            "{}",
            a[i + 1]
        );
        assert!(vng_args(&cfg())[i + 1].ends_with("cryptomgr.notests"));
        assert!(crate::case::check_kernel_arg("preempt=full").is_ok());
        assert!(crate::case::check_kernel_arg("nokaslr").is_ok());
        for silencing in [
            "quiet",
            "loglevel=1",
            "console=tty0",
            "printk.time=0",
            "printk.devkmsg=off",
            "earlycon=uart8250,io,0x3f8",
        ] {
            let e = crate::case::check_kernel_arg(silencing).unwrap_err();
            assert!(e.contains("not allowed"), "{silencing}: {e}");
        }
        // More output is fine; a name that only starts like one is not refused.
        assert!(crate::case::check_kernel_arg("ignore_loglevel").is_ok());
        assert!(crate::case::check_kernel_arg("consoleblank=0").is_ok());
        assert!(crate::case::check_kernel_arg("quietly").is_ok());
        for bad in ["", "=x", "a b", "x=\"y\"", "x='y'", "a\tb"] {
            assert!(crate::case::check_kernel_arg(bad).is_err(), "{bad:?}");
        }
    }

    /// Finding 5 of issue 18: vng joins these into one `sh -c` string unquoted, and QEMU
    /// splits `-drive` at commas.
    #[test]
    fn paths_that_reach_a_shell_or_a_qemu_option_list_are_checked() {
        assert!(check_vm_config(&cfg()).is_ok());
        let mut ok = cfg();
        ok.kernel = "/c/kernels/debian-6.12.117+deb12-amd64/boot/vmlinuz-6.12.117~rc1".into();
        assert!(check_vm_config(&ok).is_ok());
        type Spoil = fn(&mut VmConfig);
        let bad: [(Spoil, &str); 9] = [
            (|c| c.kernel = "/k/a b/vmlinuz".into(), "the kernel image"),
            (|c| c.kernel = "/k/$(touch x)".into(), "has `$`"),
            (|c| c.kernel = "vmlinuz".into(), "must be an absolute path"),
            (|c| c.rwdir = "/w;reboot/results".into(), "the results dir"),
            (
                |c| c.disks[0].1 = "/w,x/sdc.img".into(),
                "the disk image `sdc`",
            ),
            (|c| c.root = Some("/img/`id`".into()), "the guest root"),
            (
                |c| c.modules = Some(("6.12".into(), "/m/~x".into())),
                "modules dir",
            ),
            (|c| c.memory = "1G --rw".into(), "guest memory `1G --rw`"),
            (|c| c.memory = "1G;id".into(), "guest memory"),
        ];
        for (spoil, want) in bad {
            let mut c = cfg();
            spoil(&mut c);
            let e = check_vm_config(&c).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn udev_is_hidden_by_a_private_tmpfs_unless_asked_for() {
        let (p, a) = launch_command(&cfg(), "vng", true);
        assert_eq!(p, "unshare");
        assert_eq!(&a[..4], &["--mount", "--propagation", "private", "--"]);
        let at = a.iter().position(|x| x == "vng").unwrap();
        assert_eq!(
            a[at - 1],
            "",
            "the host root, as a prefix of /usr/lib/systemd"
        );
        assert_eq!(&a[at + 1..], &vng_args(&cfg())[..]);
        let mut img = cfg();
        img.root = Some("/img/root".into());
        let (_, a) = launch_command(&img, "vng", true);
        assert!(a.contains(&"/img/root".to_string()));
        let mut with = cfg();
        with.udev = true;
        assert_eq!(
            launch_command(&with, "vng", true),
            ("vng".into(), vng_args(&with))
        );
        assert_eq!(launch_command(&cfg(), "vng", false).0, "vng");
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
