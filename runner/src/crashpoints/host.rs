//! The host tier: what a crash state's disk says without booting it — its cache metadata
//! (the superblock's flags, strict `cache_check`, the mappings from `cache_dump`) and, for
//! every valid mapping, whether the cache block holds data the kernel had written before it
//! committed that mapping.  Milliseconds per state: the metadata area goes to a scratch file
//! for the two tools, the data is read from the in-memory [`Overlay`].

use crate::case::CrashpointsSpec;
use crate::logwrites::Overlay;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// dm-cache's superblock magic (drivers/md/dm-cache-metadata.c: `06142003`, octal).
const CACHE_MAGIC: u64 = 0o6142003;
/// Offset of `cache_blocks` in `struct cache_disk_superblock`.
const CACHE_BLOCKS_AT: usize = 240;
const CLEAN_SHUTDOWN: u32 = 1 << 0;
const NEEDS_CHECK: u32 = 1 << 1;

/// What the metadata area holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Metadata {
    /// All zeros: no cache was ever written there (dm-cache formats it on creation).
    Unformatted,
    /// A superblock: its flags, what strict `cache_check` said, and the valid mappings.
    Formatted {
        clean_shutdown: bool,
        needs_check: bool,
        cache_blocks: u32,
        /// `None` = cache_check passed; else its complaint.
        check_error: Option<String>,
        /// cache block → (origin block, dirty)
        mappings: BTreeMap<u64, (u64, bool)>,
    },
}

/// The superblock's (clean_shutdown, needs_check, cache_blocks), if it has dm-cache's magic.
pub fn superblock_fields(md: &[u8]) -> Option<(bool, bool, u32)> {
    let le32 = |at: usize| Some(u32::from_le_bytes(md.get(at..at + 4)?.try_into().ok()?));
    let magic = u64::from_le_bytes(md.get(32..40)?.try_into().ok()?);
    if magic != CACHE_MAGIC {
        return None;
    }
    let flags = le32(4)?;
    Some((
        flags & CLEAN_SHUTDOWN != 0,
        flags & NEEDS_CHECK != 0,
        le32(CACHE_BLOCKS_AT)?,
    ))
}

/// `<mapping cache_block="0" origin_block="0" dirty="true"/>` lines of `cache_dump`.
pub fn parse_mappings(xml: &str) -> Result<BTreeMap<u64, (u64, bool)>> {
    let re = regex::Regex::new(
        r#"<mapping cache_block="(\d+)" origin_block="(\d+)" dirty="(true|false)"\s*/>"#,
    )
    .expect("static regex");
    let mut m = BTreeMap::new();
    for c in re.captures_iter(xml) {
        m.insert(c[1].parse()?, (c[2].parse()?, &c[3] == "true"));
    }
    if m.is_empty() && xml.contains("<mapping") {
        bail!("cache_dump printed mappings this reader does not understand");
    }
    Ok(m)
}

fn tool(name: &str, args: &[&str], file: &Path) -> Result<std::process::Output> {
    Command::new(name)
        .args(args)
        .arg(file)
        .output()
        .with_context(|| {
            format!("cannot run `{name}` on the host: install thin-provisioning-tools")
        })
}

/// The metadata of a state: `scratch` receives the metadata area for the tools.
pub fn metadata(o: &Overlay, spec: &CrashpointsSpec, scratch: &Path) -> Result<Metadata> {
    let md = o.read(spec.metadata[0], spec.metadata[1]);
    if md[..4096].iter().all(|&b| b == 0) {
        return Ok(Metadata::Unformatted);
    }
    let (clean_shutdown, needs_check, cache_blocks) =
        superblock_fields(&md).unwrap_or((false, false, 0));
    std::fs::write(scratch, &md).with_context(|| format!("writing {}", scratch.display()))?;
    // Right after it formats the metadata the kernel commits a superblock of 0 cache blocks
    // (the table's size is set at the first resume): cache_check 0.9.0 reports "missing
    // mappings [1, 0]" for it (measured), so such a superblock is checked alone.
    let args: &[&str] = if cache_blocks == 0 {
        &["--super-block-only"]
    } else {
        &[]
    };
    let check = tool("cache_check", args, scratch)?;
    let check_error = (!check.status.success()).then(|| {
        let text = String::from_utf8_lossy(&check.stderr).to_string()
            + &String::from_utf8_lossy(&check.stdout);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        format!("cache_check: {} ({})", lines.join("; "), check.status)
    });
    let mappings = if check_error.is_none() && cache_blocks > 0 {
        let dump = tool("cache_dump", &[], scratch)?;
        if !dump.status.success() {
            bail!(
                "cache_dump failed on metadata cache_check accepted: {}",
                String::from_utf8_lossy(&dump.stderr).trim()
            );
        }
        parse_mappings(&String::from_utf8_lossy(&dump.stdout))?
    } else {
        BTreeMap::new()
    };
    Ok(Metadata::Formatted {
        clean_shutdown,
        needs_check,
        cache_blocks,
        check_error,
        mappings,
    })
}

/// The sectors of cache block `cb` in the data area.
fn block_sectors(spec: &CrashpointsSpec, cb: u64) -> std::ops::Range<u64> {
    let first = spec.data[0] + cb * spec.block_sectors;
    first..first + spec.block_sectors
}

/// What each data-area sector may hold at a state: the versions it had at the persistence
/// points from the commit of the mapping on, and any write of the state's own epoch.
#[derive(Debug, Default)]
pub struct Versions {
    by_sector: BTreeMap<u64, BTreeSet<Vec<u8>>>,
}

impl Versions {
    pub fn add(&mut self, sector: u64, bytes: Vec<u8>) {
        self.by_sector.entry(sector).or_default().insert(bytes);
    }
    pub fn allows(&self, sector: u64, bytes: &[u8]) -> bool {
        self.by_sector
            .get(&sector)
            .is_some_and(|v| v.contains(bytes))
    }
}

/// The cache blocks of `mappings` whose data at the state `o` is not a version `allowed`
/// (per mapping: what was on the disk when it was committed, or written since): the
/// metadata was made durable before the data it points to.
pub fn unbacked_mappings(
    o: &Overlay,
    spec: &CrashpointsSpec,
    mappings: &BTreeMap<u64, (u64, bool)>,
    allowed: &dyn Fn(u64) -> Versions,
) -> Vec<String> {
    let mut bad = Vec::new();
    for (&cb, &(ob, dirty)) in mappings {
        let v = allowed(cb);
        let wrong = block_sectors(spec, cb)
            .filter(|&s| !v.allows(s, &o.read(s, 1)))
            .count();
        if wrong > 0 {
            bad.push(format!(
                "cache block {cb} (origin block {ob}{}) is mapped, but {wrong} of its {} sectors hold data it never held when a commit recorded it",
                if dirty { ", dirty" } else { "" },
                spec.block_sectors
            ));
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_from_cache_dump() {
        let xml = r#"<superblock uuid="" block_size="128" nr_cache_blocks="1024" policy="smq" hint_width="4">
  <mappings>
    <mapping cache_block="0" origin_block="0" dirty="true"/>
    <mapping cache_block="7" origin_block="12" dirty="false"/>
  </mappings>
</superblock>"#;
        let m = parse_mappings(xml).unwrap();
        assert_eq!(m[&0], (0, true));
        assert_eq!(m[&7], (12, false));
        assert!(parse_mappings("<mapping cb=\"1\"/>").is_err());
        assert!(parse_mappings("<superblock/>").unwrap().is_empty());
    }

    #[test]
    fn superblock_fields_need_the_magic() {
        let mut b = vec![0u8; 4096];
        assert_eq!(superblock_fields(&b), None);
        // 06142003 is octal in the kernel: the bytes a 6.12 superblock starts its magic with.
        b[32..40].copy_from_slice(&CACHE_MAGIC.to_le_bytes());
        assert_eq!(&b[32..36], &1_623_043u32.to_le_bytes());
        b[4..8].copy_from_slice(&(CLEAN_SHUTDOWN).to_le_bytes());
        b[CACHE_BLOCKS_AT..CACHE_BLOCKS_AT + 4].copy_from_slice(&1024u32.to_le_bytes());
        assert_eq!(superblock_fields(&b), Some((true, false, 1024)));
        b[4..8].copy_from_slice(&(NEEDS_CHECK).to_le_bytes());
        assert_eq!(superblock_fields(&b), Some((false, true, 1024)));
    }
}
