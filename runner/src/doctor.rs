//! `doctor`: checks the host tools the runner and the guest need, QEMU, KVM usability and
//! vng, the kernel build tools (for `build:` kernels and `cargo test`), and says how to fix
//! each gap.  The guest sees the host root, so guest tools are host tools.

use crate::{kernel, vm};
use std::process::Command;

struct Check {
    what: &'static str,
    cmd: &'static str,
    args: &'static [&'static str],
    fix: &'static str,
}

/// A header file the kernel build needs (no command to ask).
struct Header {
    what: &'static str,
    path: &'static str,
    fix: &'static str,
}

const BUILD_FIX: &str =
    "apt-get install build-essential flex bison bc libelf-dev libssl-dev rsync patch";

/// What `kernel build` / `build:` kernels (and so `cargo test`) run on the host.
const BUILD_CHECKS: &[Check] = &[
    Check {
        what: "make (build: kernels)",
        cmd: "make",
        args: &["--version"],
        fix: BUILD_FIX,
    },
    Check {
        what: "gcc (build: kernels)",
        cmd: "gcc",
        args: &["--version"],
        fix: BUILD_FIX,
    },
    Check {
        what: "flex (build: kernels)",
        cmd: "flex",
        args: &["--version"],
        fix: BUILD_FIX,
    },
    Check {
        what: "bison (build: kernels)",
        cmd: "bison",
        args: &["--version"],
        fix: BUILD_FIX,
    },
    Check {
        what: "bc (build: kernels)",
        cmd: "bc",
        args: &["--version"],
        fix: BUILD_FIX,
    },
    Check {
        what: "rsync (build: kernels)",
        cmd: "rsync",
        args: &["--version"],
        fix: BUILD_FIX,
    },
    Check {
        what: "patch (build: kernels)",
        cmd: "patch",
        args: &["--version"],
        fix: BUILD_FIX,
    },
];

const BUILD_HEADERS: &[Header] = &[
    Header {
        what: "libelf headers (build: kernels)",
        path: "/usr/include/gelf.h",
        fix: "apt-get install libelf-dev",
    },
    Header {
        what: "OpenSSL headers (build: kernels)",
        path: "/usr/include/openssl/ssl.h",
        fix: "apt-get install libssl-dev",
    },
];

const CHECKS: &[Check] = &[
    Check {
        what: "virtme-ng (vng)",
        cmd: "vng",
        args: &["--version"],
        fix: "pip install virtme-ng==1.42",
    },
    Check {
        what: "QEMU",
        cmd: "qemu-system-x86_64",
        args: &["--version"],
        fix: "apt-get install qemu-system-x86",
    },
    Check {
        what: "dmsetup (guest)",
        cmd: "dmsetup",
        args: &["--version"],
        fix: "apt-get install dmsetup",
    },
    Check {
        what: "fio (guest)",
        cmd: "fio",
        args: &["--version"],
        fix: "apt-get install fio",
    },
    Check {
        what: "cache_check (guest)",
        cmd: "cache_check",
        args: &["-V"],
        fix: "apt-get install thin-provisioning-tools",
    },
    Check {
        what: "cache_dump (guest)",
        cmd: "cache_dump",
        args: &["-V"],
        fix: "apt-get install thin-provisioning-tools",
    },
    Check {
        what: "modprobe (guest)",
        cmd: "modprobe",
        args: &["--version"],
        fix: "apt-get install kmod",
    },
    Check {
        what: "udevadm (guest)",
        cmd: "udevadm",
        args: &["--version"],
        fix: "apt-get install udev",
    },
    Check {
        what: "coreutils timeout/md5sum (guest)",
        cmd: "timeout",
        args: &["--version"],
        fix: "apt-get install coreutils",
    },
    Check {
        what: "dmesg (guest)",
        cmd: "dmesg",
        args: &["--version"],
        fix: "apt-get install util-linux",
    },
    Check {
        what: "apt-get download (debian: kernels)",
        cmd: "apt-get",
        args: &["--version"],
        fix: "use a Debian/Ubuntu host, or pass --kernel PATH",
    },
    Check {
        what: "dpkg-deb (debian: kernels)",
        cmd: "dpkg-deb",
        args: &["--version"],
        fix: "apt-get install dpkg",
    },
];

/// Prints one line per check; returns the exit code (0 all good, 2 something missing).
pub fn run(kernel_spec: &str) -> i32 {
    let mut bad = 0;
    for c in CHECKS.iter().chain(BUILD_CHECKS) {
        match Command::new(c.cmd).args(c.args).output() {
            Ok(o) if o.status.success() || !o.stdout.is_empty() => {
                let v = String::from_utf8_lossy(&o.stdout);
                let first = v.lines().next().unwrap_or("").trim().to_string();
                println!("ok    {:<36} {first}", c.what);
            }
            _ => {
                bad += 1;
                println!("MISS  {:<36} fix: {}", c.what, c.fix);
            }
        }
    }
    for h in BUILD_HEADERS {
        if std::path::Path::new(h.path).is_file() {
            println!("ok    {:<36} {}", h.what, h.path);
        } else {
            bad += 1;
            println!("MISS  {:<36} fix: {}", h.what, h.fix);
        }
    }
    if std::path::Path::new("/usr/lib/ccache").is_dir() {
        println!(
            "ok    {:<36} /usr/lib/ccache on make's PATH",
            "ccache (build: kernels)"
        );
    } else {
        println!(
            "note  {:<36} optional, makes rebuilds cheap: apt-get install ccache",
            "ccache (build: kernels)"
        );
    }
    // KVM: probe with the kernel if it is already in the cache (doctor does not download).
    let cached = kernel::KernelSpec::parse(kernel_spec)
        .ok()
        .and_then(|s| match s {
            kernel::KernelSpec::Debian(_) | kernel::KernelSpec::Build { .. } => None,
            other => Some(other),
        })
        .or_else(|| cached_debian(kernel_spec));
    match cached.and_then(|s| kernel::resolve(&s, kernel_spec, &mut |_| {}).ok()) {
        Some(k) => match vm::choose_accel(&k.image) {
            Ok((vm::Accel::Kvm, _)) => println!("ok    {:<36} KVM runs {}", "KVM", k.image.display()),
            Ok((vm::Accel::Tcg, why)) => println!(
                "note  {:<36} TCG fallback: {} (cases run, ~2x slower)",
                "KVM",
                why.unwrap_or_default()
            ),
            Err(e) => println!("MISS  {:<36} {e:#}", "KVM"),
        },
        None => println!(
            "note  {:<36} not probed: kernel `{kernel_spec}` is not fetched yet (`dmcache-vmtest kernel fetch {kernel_spec}`)",
            "KVM"
        ),
    }
    if bad == 0 {
        println!("all host tools present");
        0
    } else {
        println!("{bad} missing: install them and run doctor again");
        2
    }
}

/// A `debian:` kernel that is already unpacked in the cache.
fn cached_debian(spec: &str) -> Option<kernel::KernelSpec> {
    let v = spec.strip_prefix("debian:")?;
    let root = crate::cache::dir("kernels");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.join(".complete").exists()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("debian-{v}")))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(kernel::KernelSpec::Dir)
}
