//! `doctor`: checks every host tool a boot needs (vng, QEMU, a static busybox for vng's
//! initramfs), the guest tools (the guest sees the host root, so guest tools are host tools),
//! what fetches `debian:` kernels, the kernel build tools (for `build:` kernels and so
//! `cargo test`), and KVM; says how to fix each gap.  A missing tool makes it exit 2.
//!
//! The checks look tools up on a given `PATH` and host root ([`Host`]), so they are tested
//! with a fake one.

use crate::{kernel, vm};
use anyhow::Result;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The one script that installs everything below.
const SETUP: &str = "scripts/setup-host.sh";

/// Where tools are looked up: a `PATH` and a root for fixed paths (headers, vng's busybox dirs).
#[derive(Debug, Clone)]
pub struct Host {
    pub path: OsString,
    pub root: PathBuf,
}

impl Host {
    pub fn current() -> Host {
        Host {
            path: std::env::var_os("PATH").unwrap_or_default(),
            root: PathBuf::from("/"),
        }
    }

    fn file(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }
}

/// `name` looked up like a shell does: a name with a `/` is a path, else the first executable
/// file of that name in a `PATH` directory.
pub fn which(name: &str, path: &OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let exe = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return exe(&p).then_some(p);
    }
    std::env::split_paths(path)
        .map(|d| d.join(name))
        .find(|p| exe(p))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    /// Required and missing: doctor fails.
    Miss,
    /// Worth knowing, not a failure.
    Note,
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub level: Level,
    pub what: String,
    /// The version or path found, or for a gap, what is wrong and the fix.
    pub detail: String,
}

impl Finding {
    fn ok(what: &str, detail: impl Into<String>) -> Self {
        Finding {
            level: Level::Ok,
            what: what.into(),
            detail: detail.into(),
        }
    }
    fn miss(what: &str, detail: impl Into<String>) -> Self {
        Finding {
            level: Level::Miss,
            what: what.into(),
            detail: detail.into(),
        }
    }
    fn note(what: &str, detail: impl Into<String>) -> Self {
        Finding {
            level: Level::Note,
            what: what.into(),
            detail: detail.into(),
        }
    }
}

/// One tool: found on `PATH` and answering `args` (exit 0 or some stdout).
struct Tool {
    what: &'static str,
    cmd: &'static str,
    args: &'static [&'static str],
    fix: &'static str,
}

const fn tool(
    what: &'static str,
    cmd: &'static str,
    args: &'static [&'static str],
    fix: &'static str,
) -> Tool {
    Tool {
        what,
        cmd,
        args,
        fix,
    }
}

/// What the guest runs: the guest sees the host root read-only.
const GUEST: &[Tool] = &[
    tool(
        "bash (runs every step, with pipefail)",
        "bash",
        &["--version"],
        "apt-get install bash",
    ),
    tool(
        "dmsetup",
        "dmsetup",
        &["--version"],
        "apt-get install dmsetup",
    ),
    tool("fio", "fio", &["--version"], "apt-get install fio"),
    tool(
        "cache_check",
        "cache_check",
        &["-V"],
        "apt-get install thin-provisioning-tools",
    ),
    tool(
        "cache_dump",
        "cache_dump",
        &["-V"],
        "apt-get install thin-provisioning-tools",
    ),
    tool(
        "modprobe",
        "modprobe",
        &["--version"],
        "apt-get install kmod",
    ),
    tool("udevadm", "udevadm", &["--version"], "apt-get install udev"),
    tool(
        "lvm (lvmcache probes, notes/lvmcache)",
        "lvm",
        &["version"],
        "apt-get install lvm2",
    ),
    tool(
        "timeout, md5sum (coreutils)",
        "timeout",
        &["--version"],
        "apt-get install coreutils",
    ),
    tool(
        "dmesg",
        "dmesg",
        &["--version"],
        "apt-get install util-linux",
    ),
];

/// What fetches `debian:` kernels (the default kernel is one).
const DEBIAN: &[Tool] = &[
    tool(
        "apt-get download",
        "apt-get",
        &["--version"],
        "use a Debian/Ubuntu host, or pass --kernel PATH",
    ),
    tool(
        "dpkg-deb",
        "dpkg-deb",
        &["--version"],
        "apt-get install dpkg",
    ),
    tool(
        "curl (orig tarballs of Debian's linux source package)",
        "curl",
        &["--version"],
        "apt-get install curl",
    ),
];

const BUILD_FIX: &str =
    "apt-get install build-essential flex bison bc libelf-dev libssl-dev rsync patch";

/// What `kernel build` / `build:` kernels (and so `cargo test`) run on the host.
const BUILD: &[Tool] = &[
    tool("make", "make", &["--version"], BUILD_FIX),
    tool("gcc", "gcc", &["--version"], BUILD_FIX),
    tool("flex", "flex", &["--version"], BUILD_FIX),
    tool("bison", "bison", &["--version"], BUILD_FIX),
    tool("bc", "bc", &["--version"], BUILD_FIX),
    tool("rsync", "rsync", &["--version"], BUILD_FIX),
    tool("patch", "patch", &["--version"], BUILD_FIX),
];

/// Header files the kernel build needs: (what, path, fix).
const BUILD_HEADERS: &[(&str, &str, &str)] = &[
    (
        "libelf headers",
        "/usr/include/gelf.h",
        "apt-get install libelf-dev",
    ),
    (
        "OpenSSL headers",
        "/usr/include/openssl/ssl.h",
        "apt-get install libssl-dev",
    ),
];

/// The virtme-ng release this runner is tested with (also pinned by `scripts/setup-host.sh`).
pub const VNG_PINNED: &str = "1.42";

fn first_line(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

/// Runs `cmd args` found on the host's PATH: the first line it prints, or what is wrong.
fn probe(host: &Host, cmd: &str, args: &[&str]) -> Result<String, String> {
    let Some(exe) = which(cmd, &host.path) else {
        return Err(format!("`{cmd}` is not on PATH"));
    };
    // ETXTBSY: a file just written (a tool installed a moment ago, or a test's fake tool)
    // can still be open for writing in a child another thread forked; it passes in a moment.
    let mut got = Command::new(&exe)
        .args(args)
        .env("PATH", &host.path)
        .output();
    for _ in 0..20 {
        match &got {
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) => {
                std::thread::sleep(std::time::Duration::from_millis(50));
                got = Command::new(&exe)
                    .args(args)
                    .env("PATH", &host.path)
                    .output();
            }
            _ => break,
        }
    }
    match got {
        Ok(o) if o.status.success() || !o.stdout.is_empty() => {
            let line = first_line(&o.stdout);
            Ok(if line.is_empty() {
                first_line(&o.stderr)
            } else {
                line
            })
        }
        Ok(o) => Err(format!(
            "`{} {}` failed ({}): {}",
            exe.display(),
            args.join(" "),
            o.status,
            first_line(&o.stderr)
        )),
        Err(e) => Err(format!("cannot run {}: {e}", exe.display())),
    }
}

fn check_tool(host: &Host, t: &Tool) -> Finding {
    match probe(host, t.cmd, t.args) {
        Ok(v) => Finding::ok(t.what, v),
        Err(e) => Finding::miss(t.what, format!("{e}; fix: {}", t.fix)),
    }
}

/// The busybox vng puts into the initramfs of a modular kernel, found the way virtme-ng 1.42
/// finds it (`mkinitramfs.find_busybox`): for each of `busybox-static`, `busybox.static`,
/// `busybox`, `PATH` first, then `/usr/local/{bin,sbin}`, `/usr/{bin,sbin}`, `/{bin,sbin}`.
pub fn find_busybox(host: &Host) -> Option<PathBuf> {
    for name in ["busybox-static", "busybox.static", "busybox"] {
        if let Some(p) = which(name, &host.path) {
            return Some(p);
        }
        for dir in ["usr/local", "usr", ""] {
            for bin in ["bin", "sbin"] {
                let p = host.root.join(dir).join(bin).join(name);
                if p.is_file() {
                    return Some(p);
                }
            }
        }
    }
    None
}

/// Whether an ELF file has no program interpreter (statically linked); `None` if it is not
/// a 64-bit little-endian ELF.
pub fn elf_is_static(path: &Path) -> Option<bool> {
    let b = std::fs::read(path).ok()?;
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    let phoff = u64_at(0x20)? as usize;
    let phentsize = u16_at(0x36)? as usize;
    let phnum = u16_at(0x38)? as usize;
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        if u32_at(phoff + i * phentsize)? == PT_INTERP {
            return Some(false);
        }
    }
    Some(true)
}

fn check_busybox(host: &Host) -> Finding {
    const WHAT: &str = "busybox (vng's initramfs)";
    const FIX: &str = "apt-get install busybox-static";
    match find_busybox(host) {
        None => Finding::miss(
            WHAT,
            format!("no busybox: vng cannot boot a modular kernel (the default debian:6.12) without one; fix: {FIX}"),
        ),
        Some(p) => match elf_is_static(&p) {
            Some(true) => Finding::ok(WHAT, format!("{} (static)", p.display())),
            Some(false) => Finding::miss(
                WHAT,
                format!("{} is dynamically linked: it cannot run in vng's initramfs; fix: {FIX}", p.display()),
            ),
            None => Finding::miss(
                WHAT,
                format!("{} is not an x86-64 ELF executable; fix: {FIX}", p.display()),
            ),
        },
    }
}

/// The tools a boot itself needs: vng, QEMU and busybox.
fn boot_checks(host: &Host) -> Vec<Finding> {
    let vng = vm::vng_binary();
    let mut out = vec![match probe(host, &vng, &["--version"]) {
        Ok(v) if v.split_whitespace().last() == Some(VNG_PINNED) => Finding::ok("virtme-ng (vng)", v),
        Ok(v) => Finding::note(
            "virtme-ng (vng)",
            format!("{v}: tested with {VNG_PINNED} only (pip install virtme-ng=={VNG_PINNED})"),
        ),
        Err(e) => Finding::miss(
            "virtme-ng (vng)",
            format!("{e}; fix: pip install virtme-ng=={VNG_PINNED} (and put pip's bin dir on PATH) or set DMCACHE_VMTEST_VNG"),
        ),
    }];
    let qemu = vm::qemu_binary();
    out.push(match probe(host, &qemu, &["--version"]) {
        Ok(v) => Finding::ok("QEMU", v),
        Err(e) => Finding::miss(
            "QEMU",
            format!("{e}; fix: apt-get install qemu-system-x86 (or set DMCACHE_VMTEST_QEMU)"),
        ),
    });
    out.push(check_busybox(host));
    out
}

fn build_checks(host: &Host) -> Vec<Finding> {
    let mut out: Vec<Finding> = BUILD.iter().map(|t| check_tool(host, t)).collect();
    for (what, path, fix) in BUILD_HEADERS {
        out.push(if host.file(path).is_file() {
            Finding::ok(what, *path)
        } else {
            Finding::miss(what, format!("no {path}; fix: {fix}"))
        });
    }
    out.push(if host.file("/usr/lib/ccache").is_dir() {
        Finding::ok("ccache", "/usr/lib/ccache on make's PATH")
    } else {
        Finding::note(
            "ccache",
            "optional, makes rebuilds cheap: apt-get install ccache",
        )
    });
    out
}

/// Every tool check, by section (no KVM probe: that needs a kernel).
pub fn check_tools(host: &Host) -> Vec<(&'static str, Vec<Finding>)> {
    vec![
        ("boot", boot_checks(host)),
        (
            "guest tools (the guest runs the host's)",
            GUEST.iter().map(|t| check_tool(host, t)).collect(),
        ),
        (
            "fetching Debian kernels (debian:VERSION, the default kernel)",
            DEBIAN.iter().map(|t| check_tool(host, t)).collect(),
        ),
        (
            "building kernels (build:SRC, kernel build, cargo test)",
            build_checks(host),
        ),
    ]
}

/// The findings as text, and the exit status: 0 if nothing required is missing, else 2.
pub fn render(sections: &[(&str, Vec<Finding>)]) -> (String, i32) {
    let mut s = String::new();
    let mut missing = Vec::new();
    for (title, findings) in sections {
        let _ = writeln!(s, "{title}:");
        for f in findings {
            let tag = match f.level {
                Level::Ok => "ok  ",
                Level::Miss => {
                    missing.push(f.what.clone());
                    "MISS"
                }
                Level::Note => "note",
            };
            let _ = writeln!(s, "  {tag}  {:<32} {}", f.what, f.detail);
        }
    }
    if missing.is_empty() {
        let _ = writeln!(s, "all host tools present");
        (s, 0)
    } else {
        let _ = writeln!(
            s,
            "{} missing ({}): run {SETUP} (installs all of them), or the fixes above, then doctor again",
            missing.len(),
            missing.join(", ")
        );
        (s, 2)
    }
}

/// Prints every check, probes KVM with the kernel if it is already cached; returns the exit
/// status (0 all good, 2 something required is missing).
pub fn run(kernel_spec: &str) -> i32 {
    let mut sections = check_tools(&Host::current());
    let mirrors = crate::debian::sources::mirrors();
    sections.push((
        "Debian archive (debian: kernels, linux-source)",
        archive_findings(mirrors, crate::debian::sources::keyring),
    ));
    sections.push(("accelerator", vec![kvm_finding(kernel_spec)]));
    let (text, code) = render(&sections);
    print!("{text}");
    code
}

/// The mirror the runner's apt state uses (and where it came from) and the keyring that
/// checks its signatures; either missing stops `debian:` kernels, so both are required.
fn archive_findings(
    mirrors: Result<crate::debian::sources::Mirrors>,
    keyring: impl Fn(&crate::debian::sources::Mirrors) -> Result<PathBuf>,
) -> Vec<Finding> {
    match mirrors {
        Err(e) => vec![Finding::miss("Debian mirror", format!("{e:#}"))],
        Ok(m) => vec![
            Finding::ok("Debian mirror", format!("{} (from {})", m.main, m.from)),
            match keyring(&m) {
                Ok(k) => Finding::ok("archive keyring", k.display().to_string()),
                Err(e) => Finding::miss("archive keyring", format!("{e:#}")),
            },
        ],
    }
}

/// KVM: probed with the kernel if it is already in the cache (doctor does not download).
fn kvm_finding(kernel_spec: &str) -> Finding {
    let cached = kernel::KernelSpec::parse(kernel_spec)
        .ok()
        .and_then(|s| match s {
            kernel::KernelSpec::Debian(_) | kernel::KernelSpec::Build { .. } => None,
            other => Some(other),
        })
        .or_else(|| cached_debian(kernel_spec));
    match cached.and_then(|s| kernel::resolve(&s, kernel_spec, &mut |_| {}).ok()) {
        Some(k) => match vm::choose_accel(&k.image) {
            Ok((vm::Accel::Kvm, _)) => {
                Finding::ok("KVM", format!("KVM runs {}", k.image.display()))
            }
            Ok((vm::Accel::Tcg, why)) => Finding::note(
                "KVM",
                format!(
                    "TCG fallback: {} (cases run, ~2x slower)",
                    why.unwrap_or_default()
                ),
            ),
            Err(e) => Finding::miss("KVM", format!("{e:#}")),
        },
        None => Finding::note(
            "KVM",
            format!("not probed: kernel `{kernel_spec}` is not fetched yet (`dmcache-vmtest kernel fetch {kernel_spec}`)"),
        ),
    }
}

/// A `debian:` kernel that is already unpacked in the cache (the newest in dpkg order: the
/// debian module's lookup, not a second one).
fn cached_debian(spec: &str) -> Option<kernel::KernelSpec> {
    crate::debian::newest_cached(spec.strip_prefix("debian:")?).map(kernel::KernelSpec::Dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A minimal ELF64 header with one program header: PT_INTERP (dynamic) or PT_LOAD.
    fn elf(interp: bool) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2; // 64-bit
        b[5] = 1; // little endian
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        b[64..68].copy_from_slice(&(if interp { 3u32 } else { 1u32 }).to_le_bytes());
        b
    }

    fn exe(path: &Path, body: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A fake host: every tool doctor asks for is a script on PATH printing a version, except
    /// `without`; busybox is a static ELF in `/bin` of the fake root; the headers exist.
    fn fake_host(without: &[&str]) -> (tempfile::TempDir, Host) {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("path");
        let names: Vec<&str> = GUEST
            .iter()
            .chain(DEBIAN)
            .chain(BUILD)
            .map(|t| t.cmd)
            .chain(["vng", "qemu-system-x86_64"])
            .collect();
        for n in names.iter().filter(|n| !without.contains(n)) {
            let version = if *n == "vng" {
                format!("virtme-ng {VNG_PINNED}")
            } else {
                format!("{n} 1.0")
            };
            exe(
                &bin.join(n),
                format!("#!/bin/sh\necho '{version}'\n").as_bytes(),
            );
        }
        let root = d.path().join("root");
        if !without.contains(&"busybox") {
            exe(&root.join("bin/busybox"), &elf(false));
        }
        for (_, h, _) in BUILD_HEADERS {
            exe(&root.join(h.trim_start_matches('/')), b"");
        }
        let host = Host {
            path: bin.into_os_string(),
            root,
        };
        (d, host)
    }

    #[test]
    fn the_archive_needs_a_mirror_and_a_keyring() {
        let m = || crate::debian::sources::Mirrors {
            main: "http://mirror.example/debian".into(),
            security: None,
            signed_by: None,
            from: "/etc/apt/sources.list:1".into(),
        };
        let (text, code) = render(&[(
            "a",
            archive_findings(Ok(m()), |_| Ok(PathBuf::from("/k.gpg"))),
        )]);
        assert_eq!(code, 0, "{text}");
        assert!(text.contains("http://mirror.example/debian (from /etc/apt/sources.list:1)"));
        let (text, code) = render(&[(
            "a",
            archive_findings(Ok(m()), |_| anyhow::bail!("no Debian archive keyring")),
        )]);
        assert_eq!(code, 2, "{text}");
        assert!(text.contains("MISS  archive keyring"), "{text}");
        let (text, code) = render(&[(
            "a",
            archive_findings(
                Err(anyhow::anyhow!("no Debian mirror; set X")),
                |_| unreachable!(),
            ),
        )]);
        assert_eq!(code, 2, "{text}");
        assert!(
            text.contains("MISS  Debian mirror") && text.contains("set X"),
            "{text}"
        );
    }

    #[test]
    fn everything_present_passes() {
        let (_d, host) = fake_host(&[]);
        let (text, code) = render(&check_tools(&host));
        assert_eq!(code, 0, "{text}");
        assert!(text.contains("all host tools present"), "{text}");
        assert!(text.contains("ok    virtme-ng (vng)"), "{text}");
        assert!(text.contains("(static)"), "{text}");
    }

    #[test]
    fn a_missing_boot_tool_fails_and_names_the_fix() {
        for (missing, fix) in [
            ("vng", "pip install virtme-ng==1.42"),
            ("qemu-system-x86_64", "apt-get install qemu-system-x86"),
            ("busybox", "apt-get install busybox-static"),
            ("bash", "apt-get install bash"),
            ("fio", "apt-get install fio"),
            ("cache_check", "apt-get install thin-provisioning-tools"),
        ] {
            let (_d, host) = fake_host(&[missing]);
            let (text, code) = render(&check_tools(&host));
            assert_ne!(code, 0, "{missing}: {text}");
            let line = text
                .lines()
                .find(|l| l.contains("MISS"))
                .unwrap_or_else(|| panic!("{missing}: no MISS line\n{text}"));
            assert!(line.contains(fix), "{missing}: {line}");
            assert!(text.contains("scripts/setup-host.sh"), "{text}");
            assert_eq!(text.matches("MISS").count(), 1, "{text}");
        }
    }

    #[test]
    fn a_dynamic_busybox_is_not_enough() {
        let (_d, host) = fake_host(&["busybox"]);
        exe(&host.root.join("usr/bin/busybox"), &elf(true));
        let (text, code) = render(&check_tools(&host));
        assert_eq!(code, 2);
        assert!(text.contains("dynamically linked"), "{text}");
        // a static busybox-static on PATH wins, as in vng
        exe(
            &PathBuf::from(&host.path).join("busybox-static"),
            &elf(false),
        );
        assert_eq!(render(&check_tools(&host)).1, 0);
    }

    #[test]
    fn another_vng_version_is_a_note() {
        let (_d, host) = fake_host(&[]);
        exe(
            &PathBuf::from(&host.path).join("vng"),
            b"#!/bin/sh\necho 'virtme-ng 1.30'\n",
        );
        let (text, code) = render(&check_tools(&host));
        assert_eq!(code, 0, "{text}");
        assert!(text.contains("note  virtme-ng (vng)"), "{text}");
    }

    #[test]
    fn which_needs_an_executable_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("plain"), "").unwrap();
        exe(&d.path().join("tool"), b"#!/bin/sh\n");
        let path = d.path().as_os_str();
        assert_eq!(which("tool", path), Some(d.path().join("tool")));
        assert_eq!(which("plain", path), None);
        assert_eq!(which("absent", path), None);
        let abs = d.path().join("tool");
        assert_eq!(which(abs.to_str().unwrap(), OsStr::new("")), Some(abs));
    }

    #[test]
    fn elf_interp_means_dynamic() {
        let d = tempfile::tempdir().unwrap();
        let (s, y, t) = (d.path().join("s"), d.path().join("d"), d.path().join("t"));
        std::fs::write(&s, elf(false)).unwrap();
        std::fs::write(&y, elf(true)).unwrap();
        std::fs::write(&t, "#!/bin/sh\n").unwrap();
        assert_eq!(elf_is_static(&s), Some(true));
        assert_eq!(elf_is_static(&y), Some(false));
        assert_eq!(elf_is_static(&t), None);
    }
}
