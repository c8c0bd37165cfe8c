//! Which crash states a run checks, where each lies in the case (the guest's step marks in
//! the log), and the host tier's judgement of one state.

use super::host::{self, Metadata, Versions};
use super::{Options, StateResult};
use crate::case::{Case, CrashpointsSpec};
use crate::guest::mark_step;
use crate::logwrites::{self, CrashState, Entry, Log, Overlay, SECTOR};
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// The states to check and what the marks say about the log.
#[derive(Debug, Clone)]
pub struct Plan {
    pub states: Vec<CrashState>,
    /// For each entry: the (boot, step) whose mark is the last one at or before it.
    pub after: Vec<Option<(usize, usize)>>,
    /// A state whose durable prefix reaches this many entries has the workload durable.
    pub gate: usize,
    /// Sectors of the case's disk (the mark area comes after).
    pub disk_sectors: u64,
}

fn is_mark(e: &Entry, unit: u64, disk_sectors: u64) -> bool {
    e.sector * unit >= disk_sectors && e.nr_sectors > 0
}

/// Entry index → mark (boot, step), from the mark writes after the disk's sectors.
fn marks(log: &Log, disk_sectors: u64) -> BTreeMap<usize, (usize, usize)> {
    let unit = log.sectorsize / SECTOR;
    log.entries
        .iter()
        .filter(|e| is_mark(e, unit, disk_sectors))
        .map(|e| (e.index, mark_step(e.sector * unit - disk_sectors)))
        .collect()
}

/// Parses a state id (`P12` or `P12+14,15`) and checks it against the log: the extras are
/// writes of the epoch after the durable prefix.
pub fn parse_state(id: &str, log: &Log) -> Result<CrashState> {
    let st = parse_id(id)?;
    let durable = st.durable;
    if durable > log.entries.len() {
        bail!("state `{id}`: the log has {} entries", log.entries.len());
    }
    let next = next_point(log, durable);
    if let Some(e) = st.extra.iter().find(|&&e| e < durable || e >= next) {
        bail!("state `{id}`: entry {e} is not a write of the epoch {durable}..{next}");
    }
    Ok(st)
}

/// A state id's syntax alone (checked before anything is recorded).
pub fn parse_id(id: &str) -> Result<CrashState> {
    let bad = || {
        anyhow::anyhow!(
            "state `{id}`: write P<entries> or P<entries>+<entry>,<entry>… as a report prints it"
        )
    };
    let rest = id.strip_prefix('P').ok_or_else(bad)?;
    let (d, extra) = match rest.split_once('+') {
        Some((d, e)) => (
            d,
            e.split(',')
                .map(|x| x.parse::<usize>().map_err(|_| bad()))
                .collect::<Result<Vec<_>>>()?,
        ),
        None => (rest, vec![]),
    };
    let durable: usize = d.parse().map_err(|_| bad())?;
    Ok(CrashState { durable, extra })
}

/// The end of the epoch that starts at `durable`: just after the next persistence point.
pub fn next_point(log: &Log, durable: usize) -> usize {
    log.entries[durable.min(log.entries.len())..]
        .iter()
        .find(|e| e.is_persistence_point())
        .map_or(log.entries.len(), |e| e.index + 1)
}

/// The states of the crash boot: its persistence points, then the epoch samples.
pub fn plan(case: &Case, log: &Log, disk_sectors: u64, cp: &Options) -> Result<Plan> {
    let spec = case.crashpoints.as_ref().expect("checked by the caller");
    let cb = case
        .crash_boot()
        .expect("validated: crashpoints need a crash");
    let unit = log.sectorsize / SECTOR;
    let m = marks(log, disk_sectors);
    let mut after = Vec::with_capacity(log.entries.len());
    let mut last = None;
    for e in &log.entries {
        if let Some(&bs) = m.get(&e.index) {
            last = Some(bs);
        }
        after.push(last);
    }
    let start = m
        .iter()
        .filter(|(_, (b, _))| *b < cb)
        .map(|(i, _)| i + 1)
        .max()
        .unwrap_or(0);
    let k = case
        .durable_step(cb, &spec.durable_after)
        .expect("validated");
    let Some((&mark, _)) = m.iter().find(|(_, bs)| **bs == (cb, k)) else {
        bail!(
            "the write log has no mark of step {} (`{}`) of boot {}: the recording did not see the guest's marks",
            k + 1,
            spec.durable_after,
            cb + 1
        );
    };
    let gate = log.entries[..mark]
        .iter()
        .rev()
        .find(|e| e.is_persistence_point())
        .map_or(mark, |e| e.index + 1);
    let eligible = |e: &Entry| e.index >= start && !is_mark(e, unit, disk_sectors);
    let mut states: Vec<CrashState> = logwrites::persistence_states(log)
        .into_iter()
        .filter(|s| s.durable >= start)
        .collect();
    states.extend(
        logwrites::epoch_samples(log, cp.states_per_epoch, cp.seed, &eligible)
            .into_iter()
            .filter(|s| s.durable >= start),
    );
    if let Some(id) = &cp.only {
        states = vec![parse_state(id, log)?];
    }
    Ok(Plan {
        states,
        after,
        gate,
        disk_sectors,
    })
}

impl Plan {
    /// A state's position, before it is checked.
    pub fn describe(&self, st: &CrashState, log: &Log, case: &Case) -> StateResult {
        let next = next_point(log, st.durable);
        let unit = log.sectorsize / SECTOR;
        let dropped = (st.durable..next)
            .filter(|i| {
                let e = &log.entries[*i];
                e.has_data()
                    && !e.is_persistence_point()
                    && !is_mark(e, unit, self.disk_sectors)
                    && !st.extra.contains(i)
            })
            .collect::<Vec<_>>();
        let after_step = st
            .durable
            .checked_sub(1)
            .and_then(|i| self.after[i])
            .map(|(b, k)| {
                format!(
                    "boot {} step {}: {}",
                    b + 1,
                    k + 1,
                    case.boots[b].steps[k].label()
                )
            });
        StateResult {
            id: st.id(),
            epoch: (st.durable, next),
            after_step,
            dropped: if st.extra.is_empty() { vec![] } else { dropped },
            after_durable: st.durable >= self.gate,
            digest: String::new(),
            same_as: None,
            superblock: String::new(),
            host_failures: vec![],
            vm: None,
            vm_failures: vec![],
            kept: None,
        }
    }
}

/// The metadata at each persistence point (by durable prefix): what the host tier compares
/// a state's mappings with.
pub struct PointInfo {
    pub durable: usize,
    pub overlay: Overlay,
    pub metadata: Metadata,
}

pub fn persistence_info(
    log: &Log,
    data: &[u8],
    spec: &CrashpointsSpec,
    disk_sectors: u64,
    scratch: &Path,
) -> Result<Vec<PointInfo>> {
    logwrites::persistence_states(log)
        .into_iter()
        .map(|st| {
            let overlay = Overlay::build(log, data, &st, disk_sectors)?;
            let metadata = host::metadata(&overlay, spec, scratch)?;
            Ok(PointInfo {
                durable: st.durable,
                overlay,
                metadata,
            })
        })
        .collect()
}

/// What the host tier reads besides the state: the persistence points' metadata,
/// the log and its bytes, the case's layout, a scratch file for the tools.
pub struct HostCtx<'a> {
    pub points: &'a [PointInfo],
    pub log: &'a Log,
    pub data: &'a [u8],
    pub spec: &'a CrashpointsSpec,
    pub scratch: &'a Path,
}

/// The host tier on one state: a one-line superblock summary and the failures.
pub fn host_check(o: &Overlay, st: &CrashState, ctx: &HostCtx) -> Result<(String, Vec<String>)> {
    let HostCtx {
        points,
        log,
        data,
        spec,
        scratch,
    } = *ctx;
    // A persistence point's metadata was read once already, for every state's reference.
    let known = points
        .iter()
        .find(|p| st.extra.is_empty() && p.durable == st.durable);
    let md = match known {
        Some(p) => p.metadata.clone(),
        None => host::metadata(o, spec, scratch)?,
    };
    let Metadata::Formatted {
        clean_shutdown,
        needs_check,
        cache_blocks,
        check_error,
        mappings,
    } = &md
    else {
        return Ok(("unformatted (all zeros)".into(), vec![]));
    };
    let sb = format!(
        "clean_shutdown={clean_shutdown} needs_check={needs_check} cache_blocks={cache_blocks} mappings={}",
        mappings.len()
    );
    let mut failures = Vec::new();
    if let Some(e) = check_error {
        failures.push(format!("metadata inconsistent: {e}"));
    }
    let next = next_point(log, st.durable);
    let allowed = |cb: u64| -> Versions {
        let ob = mappings[&cb].0;
        let committed = |p: &PointInfo| matches!(&p.metadata, Metadata::Formatted { mappings: m, .. } if m.get(&cb).map(|x| x.0) == Some(ob));
        let first = points
            .iter()
            .find(|p| committed(p))
            .map_or(next, |p| p.durable.min(next));
        let sectors =
            spec.data[0] + cb * spec.block_sectors..spec.data[0] + (cb + 1) * spec.block_sectors;
        // The first entry that writes each sector: before it, the sector's zeros are not a
        // version the block held, only a disk that had not seen the data yet.
        let unit = log.sectorsize / SECTOR;
        let first_write = |s: u64| {
            log.entries.iter().position(|e| {
                e.has_data() && (e.sector * unit..(e.sector + e.nr_sectors) * unit).contains(&s)
            })
        };
        let mut v = Versions::default();
        for s in sectors.clone() {
            let Some(w) = first_write(s) else { continue };
            for p in points
                .iter()
                .filter(|p| p.durable >= first && p.durable <= next && w < p.durable)
            {
                v.add(s, p.overlay.read(s, 1));
            }
        }
        // Any write of the state's own epoch may have landed, alone or with others.
        for e in &log.entries[st.durable..next] {
            if !e.has_data() {
                continue;
            }
            let (first, n) = (e.sector * unit, e.nr_sectors * unit);
            for s in sectors.clone().filter(|s| (first..first + n).contains(s)) {
                let at = (e.data_offset + (s - first) * SECTOR) as usize;
                if let Some(b) = data.get(at..at + SECTOR as usize) {
                    v.add(s, b.to_vec());
                }
            }
        }
        v
    };
    failures.extend(host::unbacked_mappings(o, spec, mappings, &allowed));
    Ok((sb, failures))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(flags: &[u64]) -> Log {
        Log {
            sectorsize: 512,
            declared: flags.len() as u64,
            entries: flags
                .iter()
                .enumerate()
                .map(|(index, &flags)| Entry {
                    index,
                    sector: index as u64,
                    nr_sectors: u64::from(flags == 0),
                    flags,
                    data_offset: 0,
                    mark: None,
                })
                .collect(),
            short: None,
        }
    }

    #[test]
    fn state_ids_parse_back_and_stay_inside_their_epoch() {
        let l = log(&[0, 0, logwrites::FLUSH, 0, 0, logwrites::FLUSH]);
        assert_eq!(next_point(&l, 0), 3);
        assert_eq!(next_point(&l, 3), 6);
        let st = parse_state("P3+3,4", &l).unwrap();
        assert_eq!(st.id(), "P3+3,4");
        assert_eq!(parse_state("P6", &l).unwrap().extra, Vec::<usize>::new());
        for (bad, why) in [
            ("3", "write P<entries>"),
            ("P3+x", "write P<entries>"),
            ("P9", "has 6 entries"),
            ("P3+1", "not a write of the epoch 3..6"),
            ("P0+3", "not a write of the epoch 0..3"),
        ] {
            let e = parse_state(bad, &l).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
