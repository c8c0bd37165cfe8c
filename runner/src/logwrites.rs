//! Reader of write logs in the dm-log-writes format, which both recorders write: the kernel's
//! `log-writes` target and QEMU's `blklogwrites` block driver (issue 17, crash points).
//!
//! The format (drivers/md/dm-log-writes.c): a superblock in the first log sector (`magic`,
//! `version` 1, `nr_entries`, `sectorsize`, little-endian), then one entry per logged request,
//! each a sector-sized header (`sector`, `nr_sectors`, `flags`, `data_len`; a mark's name
//! follows the header inside that sector) followed by `nr_sectors` sectors of data, except for
//! a discard.  Sector numbers and counts are in units of `sectorsize`.  The superblock's entry
//! count is rewritten only now and then (after FUA and mark entries in the kernel, per
//! `log-super-update-interval` in QEMU), so a log may hold more entries than it declares.
//! Measured with QEMU 10.0's blklogwrites over a raw file: a FUA write is logged as a plain
//! write followed by a flush (the block layer emulates FUA for the file driver).

use anyhow::{bail, Context, Result};
use std::io::{Read, Seek, SeekFrom};

pub const MAGIC: u64 = 0x006a_7366_7773_6872;
pub const VERSION: u64 = 1;
pub const FLUSH: u64 = 1 << 0;
pub const FUA: u64 = 1 << 1;
pub const DISCARD: u64 = 1 << 2;
pub const MARK: u64 = 1 << 3;
pub const METADATA: u64 = 1 << 4;

/// One logged request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    /// Position in the log, from 0.
    pub index: usize,
    /// First sector written (units of the log's `sectorsize`).
    pub sector: u64,
    pub nr_sectors: u64,
    pub flags: u64,
    /// Byte offset of the data in the log file (`nr_sectors * sectorsize` bytes; none for a
    /// discard).
    pub data_offset: u64,
    /// A mark's name.
    pub mark: Option<String>,
}

impl Entry {
    /// A persistence point: what was written before it is durable once it completes.
    pub fn is_persistence_point(&self) -> bool {
        self.flags & (FLUSH | FUA) != 0
    }
    pub fn has_data(&self) -> bool {
        self.flags & DISCARD == 0 && self.nr_sectors > 0
    }
}

/// A whole log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Log {
    pub sectorsize: u64,
    /// The superblock's count.
    pub declared: u64,
    /// The entries read: the declared ones, then any complete entry after them.
    pub entries: Vec<Entry>,
    /// Why reading stopped before the declared count (a truncated or corrupt log).
    pub short: Option<String>,
}

impl Log {
    /// Indices of the persistence points (FLUSH or FUA entries), in log order.
    pub fn persistence_points(&self) -> Vec<usize> {
        self.entries
            .iter()
            .filter(|e| e.is_persistence_point())
            .map(|e| e.index)
            .collect()
    }
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads the log in `r` (of `len` bytes).  A bad superblock is an error; a log that ends
/// early or holds a nonsensical entry keeps what came before it and says why in `short`.
pub fn read<R: Read + Seek>(r: &mut R, len: u64) -> Result<Log> {
    let mut sb = [0u8; 28];
    r.seek(SeekFrom::Start(0))?;
    r.read_exact(&mut sb)
        .context("the log is shorter than its superblock")?;
    let magic = le64(&sb, 0);
    if magic != MAGIC {
        bail!("not a dm-log-writes log: magic {magic:#x}, expected {MAGIC:#x}");
    }
    let version = le64(&sb, 8);
    if version != VERSION {
        bail!("log version {version}, this reader knows {VERSION}");
    }
    let declared = le64(&sb, 16);
    let sectorsize = u32::from_le_bytes(sb[24..28].try_into().expect("4 bytes")) as u64;
    if sectorsize < 512 || !sectorsize.is_power_of_two() || sectorsize > 65536 {
        bail!("log sector size {sectorsize}: not a power of two from 512 to 64 KiB");
    }
    let mut entries = Vec::new();
    let mut short = None;
    let mut pos = sectorsize;
    let mut header = vec![0u8; sectorsize as usize];
    loop {
        let index = entries.len();
        let within = index < declared as usize;
        if pos + sectorsize > len {
            if within {
                short = Some(format!(
                    "entry {index} of {declared}: the log ends at byte {len}"
                ));
            }
            break;
        }
        r.seek(SeekFrom::Start(pos))?;
        r.read_exact(&mut header)?;
        let (sector, nr_sectors, flags, data_len) = (
            le64(&header, 0),
            le64(&header, 8),
            le64(&header, 16),
            le64(&header, 24),
        );
        let data = if flags & DISCARD != 0 { 0 } else { nr_sectors };
        let end = data
            .checked_mul(sectorsize)
            .and_then(|d| d.checked_add(pos + sectorsize));
        let bad = if flags & !(FLUSH | FUA | DISCARD | MARK | METADATA) != 0 {
            Some(format!("unknown flags {flags:#x}"))
        } else if flags & MARK != 0 && data_len > sectorsize - 32 {
            Some(format!(
                "a mark of {data_len} bytes in a {sectorsize}-byte sector"
            ))
        } else if end.is_none_or(|e| e > len) {
            Some(format!(
                "{nr_sectors} sectors of data past the end of the log"
            ))
        } else {
            None
        };
        if let Some(why) = bad {
            // Past the declared count, zeros or garbage just mean the log ended.
            if within {
                short = Some(format!("entry {index} of {declared} at byte {pos}: {why}"));
            }
            break;
        }
        if !within && flags == 0 && nr_sectors == 0 {
            break; // an unwritten (zeroed) sector after the last entry
        }
        let mark = (flags & MARK != 0).then(|| {
            let name = &header[32..32 + data_len as usize];
            String::from_utf8_lossy(name)
                .trim_end_matches('\0')
                .to_string()
        });
        entries.push(Entry {
            index,
            sector,
            nr_sectors,
            flags,
            data_offset: pos + sectorsize,
            mark,
        });
        pos = end.expect("checked above");
    }
    Ok(Log {
        sectorsize,
        declared,
        entries,
        short,
    })
}

/// Reads the log file at `path`.
pub fn read_file(path: &std::path::Path) -> Result<Log> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata()?.len();
    read(&mut f, len).with_context(|| format!("reading the write log {}", path.display()))
}

/// What a power cut may leave: every entry before `durable` (it ends just after a
/// persistence point, or is 0), plus `extra`, some of the writes logged after it and before the
/// next persistence point (any subset of an epoch may have reached the disk, in any order).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CrashState {
    pub durable: usize,
    pub extra: Vec<usize>,
}

impl CrashState {
    /// `P<durable>` or `P<durable>+i,j`: stable across runs, for `--state K` and reports.
    pub fn id(&self) -> String {
        if self.extra.is_empty() {
            format!("P{}", self.durable)
        } else {
            let e: Vec<String> = self.extra.iter().map(|i| i.to_string()).collect();
            format!("P{}+{}", self.durable, e.join(","))
        }
    }
}

/// The states at the persistence points: nothing written, then everything up to and including
/// each FLUSH/FUA entry, then the whole log.
pub fn persistence_states(log: &Log) -> Vec<CrashState> {
    let mut cuts = vec![0];
    cuts.extend(log.persistence_points().iter().map(|p| p + 1));
    cuts.push(log.entries.len());
    cuts.dedup();
    cuts.into_iter()
        .map(|durable| CrashState {
            durable,
            extra: vec![],
        })
        .collect()
}

/// Per epoch (the writes after a persistence point, before the next), up to `n` distinct
/// non-empty proper subsets of its `eligible` writes, drawn from `seed`: the same seed gives
/// the same states.
pub fn epoch_samples(
    log: &Log,
    n: usize,
    seed: u64,
    eligible: &dyn Fn(&Entry) -> bool,
) -> Vec<CrashState> {
    let mut rng = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // splitmix64
        rng = rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut out = Vec::new();
    let states = persistence_states(log);
    for w in states.windows(2) {
        let (start, end) = (w[0].durable, w[1].durable);
        let writes: Vec<usize> = (start..end)
            .filter(|&i| {
                let e = &log.entries[i];
                e.has_data() && !e.is_persistence_point() && eligible(e)
            })
            .collect();
        if writes.len() < 2 {
            continue; // nothing between "none" and "all" of it
        }
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..n * 4 {
            if seen.len() == n {
                break;
            }
            let pick: Vec<usize> = writes.iter().copied().filter(|_| next() & 1 == 1).collect();
            if !pick.is_empty() && pick.len() < writes.len() && seen.insert(pick.clone()) {
                out.push(CrashState {
                    durable: start,
                    extra: pick,
                });
            }
        }
    }
    out
}

/// A log of `log`'s entries in `order` (indices; left out = dropped), with their data from
/// the log's bytes `data`: how a test mutates a recorded log (a flush removed, a write moved).
pub fn encode(log: &Log, data: &[u8], order: &[usize]) -> Vec<u8> {
    let ss = log.sectorsize as usize;
    let mut out = vec![0u8; ss];
    out[0..8].copy_from_slice(&MAGIC.to_le_bytes());
    out[8..16].copy_from_slice(&VERSION.to_le_bytes());
    out[16..24].copy_from_slice(&(order.len() as u64).to_le_bytes());
    out[24..28].copy_from_slice(&(log.sectorsize as u32).to_le_bytes());
    for &i in order {
        let e = &log.entries[i];
        let header = (e.data_offset as usize) - ss;
        out.extend_from_slice(&data[header..header + ss]);
        if e.flags & DISCARD == 0 {
            let n = e.nr_sectors as usize * ss;
            out.extend_from_slice(&data[e.data_offset as usize..e.data_offset as usize + n]);
        }
    }
    out
}

/// A crash state's disk as the writes it keeps, by 512-byte sector (whatever no kept write
/// touched reads as zeros: recording starts on an empty sparse disk).  Built in memory from
/// the log's bytes: no copy of the disk per state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overlay {
    sectors: std::collections::BTreeMap<u64, Vec<u8>>,
}

pub const SECTOR: u64 = 512;

impl Overlay {
    /// The durable prefix of `state`, then its extra writes, in log order, of the writes below
    /// sector `limit` (the mark area after it is not part of the disk).  `data`: the log file.
    pub fn build(log: &Log, data: &[u8], state: &CrashState, limit: u64) -> Result<Overlay> {
        let mut o = Overlay::default();
        let unit = log.sectorsize / SECTOR;
        for i in (0..state.durable).chain(state.extra.iter().copied()) {
            let e = &log.entries[i];
            if e.nr_sectors == 0 {
                continue;
            }
            let first = e.sector * unit;
            let n = e.nr_sectors * unit;
            if first >= limit {
                continue;
            }
            for k in 0..n.min(limit - first) {
                let bytes = if e.flags & DISCARD != 0 {
                    vec![0u8; SECTOR as usize]
                } else {
                    let at = (e.data_offset + k * SECTOR) as usize;
                    data.get(at..at + SECTOR as usize)
                        .with_context(|| format!("entry {i}: its data is past the end of the log"))?
                        .to_vec()
                };
                o.sectors.insert(first + k, bytes);
            }
        }
        // A sector of zeros reads like one never written: one state, however it got there.
        o.sectors.retain(|_, b| b.iter().any(|&x| x != 0));
        Ok(o)
    }

    /// `count` sectors from `sector`.
    pub fn read(&self, sector: u64, count: u64) -> Vec<u8> {
        let mut out = vec![0u8; (count * SECTOR) as usize];
        for (s, b) in self.sectors.range(sector..sector + count) {
            let at = ((s - sector) * SECTOR) as usize;
            out[at..at + SECTOR as usize].copy_from_slice(b);
        }
        out
    }

    /// SHA-256 of the contents: equal for states that leave the same disk.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for (s, b) in &self.sectors {
            h.update(s.to_le_bytes());
            h.update(b);
        }
        format!("{:x}", h.finalize())
    }

    /// Writes the state as a sparse raw image of `bytes` at `path` (created, must not exist).
    pub fn write_image(&self, path: &std::path::Path, bytes: u64) -> Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        let written = (|| -> std::io::Result<()> {
            f.set_len(bytes)?;
            for (s, b) in &self.sectors {
                f.seek(SeekFrom::Start(s * SECTOR))?;
                f.write_all(b)?;
            }
            f.sync_all()
        })();
        // Nothing half-written is left behind (a full disk, say).
        if let Err(e) = written {
            let _ = std::fs::remove_file(path);
            return Err(e).with_context(|| format!("writing the state image {}", path.display()));
        }
        Ok(())
    }
}

/// The bytes of `runner/tests/fixtures/NAME` (xz), for the tests of recorded logs.
#[cfg(test)]
pub(crate) fn xz_fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let out = std::process::Command::new("xz")
        .arg("-dc")
        .arg(&path)
        .output()
        .expect("xz (xz-utils) is needed for this test");
    assert!(out.status.success(), "xz -dc {}", path.display());
    out.stdout
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A log as the kernel writes it: (sector, nr_sectors, flags, mark, data byte).
    fn log_of(sectorsize: u64, declared: u64, entries: &[(u64, u64, u64, &str, u8)]) -> Vec<u8> {
        let ss = sectorsize as usize;
        let mut out = vec![0u8; ss];
        out[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        out[8..16].copy_from_slice(&VERSION.to_le_bytes());
        out[16..24].copy_from_slice(&declared.to_le_bytes());
        out[24..28].copy_from_slice(&(sectorsize as u32).to_le_bytes());
        for (sector, nr, flags, mark, byte) in entries {
            let mut h = vec![0u8; ss];
            h[0..8].copy_from_slice(&sector.to_le_bytes());
            h[8..16].copy_from_slice(&nr.to_le_bytes());
            h[16..24].copy_from_slice(&flags.to_le_bytes());
            h[24..32].copy_from_slice(&(mark.len() as u64).to_le_bytes());
            h[32..32 + mark.len()].copy_from_slice(mark.as_bytes());
            out.extend(h);
            if flags & DISCARD == 0 {
                out.extend(std::iter::repeat_n(*byte, (*nr as usize) * ss));
            }
        }
        out
    }

    fn parse(b: &[u8]) -> Result<Log> {
        read(&mut Cursor::new(b), b.len() as u64)
    }

    #[test]
    fn entries_marks_discards_and_persistence_points() {
        let b = log_of(
            4096,
            5,
            &[
                (0, 2, 0, "", 0x5a),
                (0, 0, FLUSH, "", 0),
                (8, 1, FUA | METADATA, "", 0x33),
                (16, 4, DISCARD, "", 0),
                (0, 0, MARK, "mkfs-done", 0),
            ],
        );
        let log = parse(&b).unwrap();
        assert_eq!(
            (log.sectorsize, log.declared, log.short.clone()),
            (4096, 5, None)
        );
        assert_eq!(log.entries.len(), 5);
        assert_eq!(log.entries[0].data_offset, 8192);
        assert_eq!(b[log.entries[2].data_offset as usize], 0x33);
        assert!(!log.entries[3].has_data());
        assert_eq!(log.entries[4].mark.as_deref(), Some("mkfs-done"));
        assert_eq!(log.persistence_points(), [1, 2]);
    }

    #[test]
    fn entries_past_the_declared_count_are_read_until_the_log_ends() {
        // The kernel rewrites the count only after FUA and mark entries.
        let mut b = log_of(
            512,
            1,
            &[(0, 0, FUA, "", 0), (3, 1, 0, "", 7), (4, 1, 0, "", 8)],
        );
        b.extend(vec![0u8; 4096]); // the unwritten rest of the log device
        let log = parse(&b).unwrap();
        assert_eq!(log.entries.len(), 3);
        assert_eq!(log.short, None);
    }

    #[test]
    fn a_truncated_or_corrupt_log_keeps_what_came_before() {
        let b = log_of(
            512,
            3,
            &[(0, 1, 0, "", 1), (1, 1, 0, "", 2), (2, 1, 0, "", 3)],
        );
        let cut = &b[..b.len() - 100];
        let log = parse(cut).unwrap();
        assert_eq!(log.entries.len(), 2);
        assert!(
            log.short.as_deref().unwrap().contains("entry 2 of 3"),
            "{:?}",
            log.short
        );
        let mut bad = b.clone();
        bad[512 * 3 + 16] = 0x80; // entry 1's flags
        let log = parse(&bad).unwrap();
        assert_eq!(log.entries.len(), 1);
        assert!(log.short.unwrap().contains("unknown flags 0x80"));
        let mut huge = b.clone();
        huge[512 + 8..512 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(&huge)
            .unwrap()
            .short
            .unwrap()
            .contains("past the end of the log"));
    }

    #[test]
    fn crash_states_at_persistence_points_and_within_epochs() {
        let b = log_of(
            512,
            7,
            &[
                (0, 1, 0, "", 1),
                (1, 1, 0, "", 2),
                (2, 1, 0, "", 3),
                (0, 0, FLUSH, "", 0),
                (3, 1, 0, "", 4),
                (0, 0, 0, "", 0),
                (4, 1, FUA, "", 5),
            ],
        );
        let log = parse(&b).unwrap();
        let ids: Vec<String> = persistence_states(&log)
            .iter()
            .map(CrashState::id)
            .collect();
        assert_eq!(ids, ["P0", "P4", "P7"]);
        let s1 = epoch_samples(&log, 10, 42, &|_| true);
        assert_eq!(
            s1,
            epoch_samples(&log, 10, 42, &|_| true),
            "seeded: reproducible"
        );
        // The first epoch has 3 writes: at most 6 proper non-empty subsets; the second epoch
        // has one write besides its FUA, so nothing between none and all.
        assert!(!s1.is_empty() && s1.len() <= 6, "{s1:?}");
        assert!(s1
            .iter()
            .all(|s| s.durable == 0 && s.extra.iter().all(|i| *i < 3)));
        // Only the eligible writes are sampled.
        let odd = epoch_samples(&log, 10, 42, &|e| e.index != 0);
        assert!(odd.iter().all(|s| !s.extra.contains(&0)), "{odd:?}");
        // P4 + entry 4 keeps bytes 1,2,3 and 4; entry 6 (after) is not there.
        let st = CrashState {
            durable: 4,
            extra: vec![4],
        };
        assert_eq!(st.id(), "P4+4");
        let o = Overlay::build(&log, &b, &st, 1 << 20).unwrap();
        let got = o.read(0, 8);
        let firsts: Vec<u8> = (0..6).map(|s| got[s * 512]).collect();
        assert_eq!(firsts, [1, 2, 3, 4, 0, 0]);
        // Sectors at or past the limit (the mark area) are not part of the disk.
        let cut = Overlay::build(&log, &b, &st, 2).unwrap();
        assert_eq!(cut.read(2, 1), vec![0u8; 512]);
        // Equal contents, equal digests; a sparse image holds the same bytes.
        let p4 = CrashState {
            durable: 4,
            extra: vec![],
        };
        let a = Overlay::build(&log, &b, &p4, 1 << 20).unwrap();
        assert_ne!(a.digest(), o.digest());
        assert_eq!(
            a.digest(),
            Overlay::build(&log, &b, &p4, 1 << 20).unwrap().digest()
        );
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("img");
        o.write_image(&img, 512 * 8).unwrap();
        assert_eq!(std::fs::read(&img).unwrap(), got);
        assert!(o.write_image(&img, 512 * 8).is_err(), "never overwrites");
    }

    #[test]
    fn a_bad_superblock_is_an_error() {
        let b = log_of(512, 0, &[]);
        let mut m = b.clone();
        m[0] ^= 1;
        assert!(parse(&m)
            .unwrap_err()
            .to_string()
            .contains("not a dm-log-writes log"));
        let mut v = b.clone();
        v[8] = 2;
        assert!(parse(&v).unwrap_err().to_string().contains("log version 2"));
        let mut s = b.clone();
        s[24..28].copy_from_slice(&1000u32.to_le_bytes());
        assert!(parse(&s)
            .unwrap_err()
            .to_string()
            .contains("sector size 1000"));
        assert!(parse(&b[..10])
            .unwrap_err()
            .to_string()
            .contains("shorter than its superblock"));
    }

    /// A real log from the kernel's dm-log-writes (Debian 6.12.118, recorded by
    /// `case runner/tests/fixtures/dm_log_writes_fixture.yaml --keep`: a 4 KiB write of 0x5a,
    /// mark `one`, a 4 KiB O_SYNC write of 0x33 at 8 KiB, a 64 KiB discard at 64 KiB, mark
    /// `two`, removal; the first MiB of the log disk).  The kernel logs a plain write only when
    /// the next flush comes (so after the mark and the FUA write issued later), FUA writes and
    /// marks at once, and a mark `dm-log-writes-end` at removal.
    #[test]
    fn a_log_the_kernel_recorded() {
        let b = xz_fixture("dm-log-writes-6.12.118.log.xz");
        let log = parse(&b).unwrap();
        assert_eq!(
            (log.declared, log.sectorsize, log.short.clone()),
            (7, 512, None)
        );
        let got: Vec<(u64, u64, u64, Option<&str>)> = log
            .entries
            .iter()
            .map(|e| (e.sector, e.nr_sectors, e.flags, e.mark.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (0, 0, MARK, Some("one")),
                (16, 8, FUA, None),
                (0, 8, 0, None),
                (0, 0, FLUSH, None),
                (0, 0, MARK, Some("two")),
                (128, 128, DISCARD, None),
                (0, 0, MARK, Some("dm-log-writes-end")),
            ]
        );
        assert_eq!(b[log.entries[1].data_offset as usize], 0x33);
        assert_eq!(b[log.entries[2].data_offset as usize], 0x5a);
        assert_eq!(log.persistence_points(), [1, 3]);
        // Its state after the FUA keeps the 0x33 block only; the discard zeroes what it covers.
        let o = Overlay::build(
            &log,
            &b,
            &CrashState {
                durable: 2,
                extra: vec![],
            },
            1 << 20,
        )
        .unwrap();
        assert_eq!((o.read(16, 1)[0], o.read(0, 1)[0]), (0x33, 0));
        // Cut mid-entry: the entry is named.
        let cut = &b[..log.entries[2].data_offset as usize + 100];
        let short = parse(cut).unwrap();
        assert!(
            short.short.as_deref().unwrap().starts_with("entry 2 of 7"),
            "{:?}",
            short.short
        );
    }

    /// A real log from QEMU's blklogwrites (recorded here with qemu-io: a write, a flush, a
    /// small write, a FUA write, a discard).
    #[test]
    fn a_log_qemu_recorded() {
        let d = tempfile::tempdir().unwrap();
        let (disk, logf) = (d.path().join("d.raw"), d.path().join("l.bin"));
        for (f, size) in [(&disk, "1M"), (&logf, "4M")] {
            let st = std::process::Command::new("qemu-img")
                .args(["create", "-q", "-f", "raw"])
                .arg(f)
                .arg(size)
                .status()
                .expect("qemu-img (qemu-utils) is needed for this test");
            assert!(st.success());
        }
        let opts = format!(
            "driver=blklogwrites,file.driver=file,file.filename={},log.driver=file,log.filename={},log-sector-size=512",
            disk.display(),
            logf.display()
        );
        let out = std::process::Command::new("qemu-io")
            .args(["--image-opts", &opts])
            .args([
                "-c",
                "write -P 0x5a 0 4k",
                "-c",
                "flush",
                "-c",
                "write -P 0x33 8k 1k",
            ])
            .args(["-c", "write -f -P 0x44 64k 512", "-c", "discard 128k 4k"])
            .output()
            .expect("qemu-io (qemu-utils) is needed for this test");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = read_file(&logf).unwrap();
        assert_eq!(log.short, None);
        let w: Vec<(u64, u64, u64)> = log
            .entries
            .iter()
            .filter(|e| e.flags & !FLUSH != 0 || e.nr_sectors > 0)
            .map(|e| (e.sector, e.nr_sectors, e.flags))
            .collect();
        // QEMU 10.0 over a raw file logs a FUA write as a plain write and then a flush (the
        // file driver has no FUA, the block layer emulates it): measured here.
        assert_eq!(w, [(0, 8, 0), (16, 2, 0), (128, 1, 0), (256, 8, DISCARD)]);
        let bytes = std::fs::read(&logf).unwrap();
        assert_eq!(bytes[log.entries[0].data_offset as usize], 0x5a);
        assert_eq!(bytes[log.entries[3].data_offset as usize], 0x44);
        // The flush, the FUA's flush and the flush at close.
        assert_eq!(log.persistence_points(), [1, 4, 6]);
        assert_eq!(log.declared, 7);
    }
}
