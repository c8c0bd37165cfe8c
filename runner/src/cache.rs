//! The per-user cache directory (XDG): fetched kernels, built kernels, ccache.

use std::path::PathBuf;

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
