//! The per-user cache directory (XDG): fetched kernels, built kernels, ccache.

use crate::event::Event;
use std::path::{Path, PathBuf};

/// `$DMCACHE_VMTEST_CACHE`, else `$XDG_CACHE_HOME/dmcache-vmtest`, else `~/.cache/dmcache-vmtest`.
pub fn root() -> PathBuf {
    if let Some(p) = std::env::var_os("DMCACHE_VMTEST_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("dmcache-vmtest");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache").join("dmcache-vmtest")
}

/// A subdirectory of the cache root (not created).
pub fn dir(sub: &str) -> PathBuf {
    root().join(sub)
}

/// Makes what `path` holds durable before it is renamed into place: a file is fsync'd; a
/// directory tree is flushed with `syncfs(2)` (one call for a kernel's thousands of module
/// files; since Linux 5.8 it reports a write-back error such as a full disk) and each of its
/// directories fsync'd.  Without this a power loss can leave an empty bzImage under a valid
/// key, and a full disk can go unnoticed until the data is read.
pub fn sync_path(path: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return std::fs::File::open(path)?.sync_all();
    }
    let dir = std::fs::File::open(path)?;
    // SAFETY: syncfs on a file descriptor this function owns for the duration of the call.
    if unsafe { nix::libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    sync_dirs(path)
}

fn sync_dirs(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            sync_dirs(&e.path())?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

/// fsync of the directory holding `path` (what makes a rename into it durable).
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(parent)?.sync_all()
}

/// `sync_path(tmp)`, the rename of `tmp` to `dst`, then `sync_parent(dst)`.
pub fn durable_rename(tmp: &Path, dst: &Path) -> std::io::Result<()> {
    sync_path(tmp)?;
    std::fs::rename(tmp, dst)?;
    sync_parent(dst)
}

/// Writes `bytes` to `dst` through a temporary file beside it, durably: a reader sees the old
/// file or the whole new one, before and after a crash.
pub fn write_durable(dst: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut name = dst.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    let tmp = dst.with_file_name(name);
    let written = std::fs::write(&tmp, bytes).and_then(|()| durable_rename(&tmp, dst));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// An exclusive `flock` on the file at `path` (created), held until the file is dropped; if
/// another process holds it, `progress(waiting)` first, then the wait.
pub fn lock_exclusive(
    path: &Path,
    waiting: &str,
    progress: &mut dyn FnMut(Event),
) -> anyhow::Result<std::fs::File> {
    use anyhow::Context;
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    if f.try_lock().is_err() {
        progress(Event::Prepare(waiting.to_string()));
        f.lock()
            .with_context(|| format!("locking {}", path.display()))?;
    }
    Ok(f)
}

/// Below this much free space the cache's file system counts as full.
const LOW_SPACE: u64 = 256 << 20;

/// The fix to name when an operation failed and the cache's file system is (nearly) full:
/// `None` when it has room (or cannot be asked).
pub fn space_hint() -> Option<String> {
    let mut at = root();
    while !at.exists() {
        at = at.parent()?.to_path_buf();
    }
    let st = nix::sys::statvfs::statvfs(&at).ok()?;
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    low_space_words(&root(), free)
}

/// `e` led by [`space_hint`]'s words when the cache's file system is (nearly) full now and `e`
/// does not say so already.  Called where a failure's partial output is about to be removed
/// (after which the disk no longer looks full), and by `main` for every other error.
pub fn with_space_hint(e: anyhow::Error) -> anyhow::Error {
    match space_hint() {
        Some(h) if !format!("{e:#}").contains(FULL) => e.context(h),
        _ => e,
    }
}

/// The words every full-disk hint starts with.
const FULL: &str = "the cache's file system is full";

/// Fails with [`space_hint`]'s words before `what` (a download, an unpack, a build) starts on
/// a full cache: apt-get update on a full disk was seen to hang for 10 minutes instead.
pub fn ensure_space(what: &str) -> anyhow::Result<()> {
    match space_hint() {
        Some(hint) => anyhow::bail!("cannot start {what}: {hint}"),
        None => Ok(()),
    }
}

fn low_space_words(root: &Path, free: u64) -> Option<String> {
    (free < LOW_SPACE).then(|| {
        format!(
            "{FULL} ({} MiB free under {}): free space there or set DMCACHE_VMTEST_CACHE to a larger one",
            free >> 20,
            root.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_space_names_the_fix() {
        let w = low_space_words(Path::new("/c"), 5 << 20).unwrap();
        assert!(
            w.contains("5 MiB free under /c") && w.contains("DMCACHE_VMTEST_CACHE"),
            "{w}"
        );
        assert_eq!(low_space_words(Path::new("/c"), 1 << 30), None);
    }

    #[test]
    fn durable_writes_and_renames() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("state.json");
        write_durable(&f, b"one").unwrap();
        write_durable(&f, b"two").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temporary left"
        );
        let tree = d.path().join("k.tmp");
        std::fs::create_dir_all(tree.join("lib/modules")).unwrap();
        std::fs::write(tree.join("lib/modules/x.ko"), "m").unwrap();
        durable_rename(&tree, &d.path().join("k")).unwrap();
        assert!(d.path().join("k/lib/modules/x.ko").is_file());
        assert!(sync_path(&d.path().join("missing")).is_err());
    }

    /// A full disk under the cache: a clear error and nothing left half-written (needs root
    /// for a small tmpfs, as the runner does for its lean guest: fails without).
    #[test]
    fn a_full_disk_leaves_nothing_half_written() {
        let d = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "dmt-full"])
            .arg(d.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(mounted, "cannot mount a 64 KiB tmpfs here (needs root)");
        let f = d.path().join("index.json");
        write_durable(&f, b"old").unwrap();
        let e = write_durable(&f, &vec![b'x'; 1 << 20]);
        let old = std::fs::read(&f);
        let left = std::fs::read_dir(d.path()).map(|r| r.count());
        let _ = std::process::Command::new("umount").arg(d.path()).status();
        assert_eq!(e.unwrap_err().raw_os_error(), Some(nix::libc::ENOSPC));
        assert_eq!(old.unwrap(), b"old", "the entry is the old one, whole");
        assert_eq!(left.unwrap(), 1, "no temporary left");
    }
}
