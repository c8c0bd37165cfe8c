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
