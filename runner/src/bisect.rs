//! `bisect CASE --kernels …`: the first kernel, in version order, whose outcome (verdict +
//! classifications) differs from the oldest one's.  The algorithm is pure: it calls a runner
//! closure per kernel spec, so it is tested with fake runners.
//!
//! It runs both ends first and stops when they agree (nothing to bisect), then halves the
//! range, O(log n) runs.  A run that ends as an infrastructure failure is retried once; if it
//! persists (or the kernel cannot be had at all) that kernel is skipped, like `git bisect
//! skip`, and named in the report.

use crate::check::Status;
use anyhow::{bail, Result};
use serde::Serialize;
use std::collections::BTreeMap;

/// What one run gave.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub status: Status,
    /// Classification name → label (e.g. `passthrough` → `refused: dirty mapping`).
    pub classifications: BTreeMap<String, String>,
    pub release: Option<String>,
    pub cache_target: Option<String>,
    pub seconds: f64,
}

impl Outcome {
    /// What bisect compares: the verdict and the classification labels.
    pub fn key(&self) -> String {
        let verdict = match self.status {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Infra => "INFRA",
        };
        if self.classifications.is_empty() {
            return verdict.to_string();
        }
        let labels: Vec<String> = self
            .classifications
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        format!("{verdict} {}", labels.join(", "))
    }
}

/// One kernel that was tried.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    /// Position in the ordered range.
    pub index: usize,
    pub spec: String,
    /// 1-based order in which the kernels were run.
    pub order: usize,
    pub attempts: u32,
    /// The last attempt's outcome, if a run finished.
    pub outcome: Option<Outcome>,
    /// Why it was skipped (infrastructure failure twice, or the runner's error).
    pub skipped: Option<String>,
}

/// How the bisection ended.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Conclusion {
    /// The outcome changes between `last_same` and `first_different`.  Kernels between them
    /// that were skipped are in `untested`: the change is in one of them or at
    /// `first_different`.
    Changed {
        last_same: String,
        first_different: String,
        from: String,
        to: String,
        untested: Vec<String>,
    },
    /// Both ends give the same outcome.
    SameEnds { outcome: String },
    /// An end could not be run (so there is nothing to compare against).
    EndFailed { spec: String, why: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub case: String,
    /// The ordered range, oldest first.
    pub kernels: Vec<String>,
    /// Every kernel run, in range order.
    pub trials: Vec<Trial>,
    pub conclusion: Conclusion,
}

impl Report {
    /// 0 when an answer was found, 2 otherwise (agreeing ends, an end that cannot run).
    pub fn exit_code(&self) -> i32 {
        match self.conclusion {
            Conclusion::Changed { .. } => 0,
            _ => 2,
        }
    }
    pub fn skipped(&self) -> Vec<&str> {
        self.trials
            .iter()
            .filter(|t| t.skipped.is_some())
            .map(|t| t.spec.as_str())
            .collect()
    }
}

/// `--kernels`: `A..B` (a range, resolved by the caller) or a comma list in order.  In a list,
/// `.patch`/`.diff`/`.config` items belong to the `build:` spec before them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelsArg {
    Range(String, String),
    List(Vec<String>),
}

pub fn parse_kernels(arg: &str) -> Result<KernelsArg> {
    let arg = arg.trim();
    if let Some((a, b)) = arg.split_once("..") {
        let (a, b) = (a.trim(), b.trim());
        if a.is_empty() || b.is_empty() || arg.contains(',') {
            bail!("--kernels `{arg}`: write SPEC..SPEC (e.g. debian:6.16..debian:7.3) or a comma list");
        }
        return Ok(KernelsArg::Range(a.to_string(), b.to_string()));
    }
    let mut list: Vec<String> = Vec::new();
    for item in arg.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let build_item = [".patch", ".diff", ".config"]
            .iter()
            .any(|e| item.ends_with(e));
        match list.last_mut() {
            Some(prev) if build_item && prev.starts_with("build:") => {
                prev.push(',');
                prev.push_str(item);
            }
            _ => list.push(item.to_string()),
        }
    }
    if list.len() < 2 {
        bail!("--kernels `{arg}`: name at least two kernels (SPEC..SPEC or SPEC,SPEC,…)");
    }
    Ok(KernelsArg::List(list))
}

/// Bisects `kernels` (ordered, oldest first) with `run`.  Errors only when there are fewer
/// than two kernels; every other ending is a [`Conclusion`].
pub fn bisect(
    case: &str,
    kernels: &[String],
    run: &mut dyn FnMut(&str) -> Result<Outcome>,
) -> Result<Report> {
    if kernels.len() < 2 {
        bail!(
            "bisect needs at least two available kernels, the range has {}{}",
            kernels.len(),
            kernels
                .first()
                .map(|k| format!(" ({k})"))
                .unwrap_or_default()
        );
    }
    let mut trials: Vec<Trial> = Vec::new();
    let mut try_one = |i: usize, trials: &mut Vec<Trial>| -> Option<Outcome> {
        let spec = &kernels[i];
        let mut t = Trial {
            index: i,
            spec: spec.clone(),
            order: trials.len() + 1,
            attempts: 0,
            outcome: None,
            skipped: None,
        };
        for attempt in 1..=2 {
            t.attempts = attempt;
            match run(spec) {
                Ok(o) if o.status == Status::Infra => {
                    t.outcome = Some(o);
                    t.skipped = Some(format!("infrastructure failure ({attempt}×)"));
                }
                Ok(o) => {
                    t.outcome = Some(o);
                    t.skipped = None;
                    break;
                }
                Err(e) => {
                    // Not a run at all (fetch failed, no dm-cache): retrying will not help.
                    t.skipped = Some(format!("{e:#}"));
                    break;
                }
            }
        }
        let out = t.skipped.is_none().then(|| t.outcome.clone()).flatten();
        trials.push(t);
        out
    };
    let n = kernels.len();
    let finish = |trials: Vec<Trial>, conclusion| {
        let mut trials = trials;
        trials.sort_by_key(|t| t.index);
        Ok(Report {
            case: case.to_string(),
            kernels: kernels.to_vec(),
            trials,
            conclusion,
        })
    };
    let end_failed = |trials: &Vec<Trial>, i: usize| Conclusion::EndFailed {
        spec: kernels[i].clone(),
        why: trials
            .last()
            .and_then(|t| t.skipped.clone())
            .unwrap_or_default(),
    };
    let Some(first) = try_one(0, &mut trials) else {
        let c = end_failed(&trials, 0);
        return finish(trials, c);
    };
    let Some(last) = try_one(n - 1, &mut trials) else {
        let c = end_failed(&trials, n - 1);
        return finish(trials, c);
    };
    if first.key() == last.key() {
        return finish(
            trials,
            Conclusion::SameEnds {
                outcome: first.key(),
            },
        );
    }
    let (mut lo, mut hi) = (0usize, n - 1);
    let mut hi_key = last.key();
    let mut skipped = vec![false; n];
    loop {
        // The untried, unskipped kernel nearest the middle of (lo, hi).
        let mid = (lo + hi) / 2;
        let Some(i) = (lo + 1..hi)
            .filter(|&i| !skipped[i])
            .min_by_key(|&i| (i.abs_diff(mid), i))
        else {
            break;
        };
        match try_one(i, &mut trials) {
            None => skipped[i] = true,
            Some(o) if o.key() == first.key() => lo = i,
            Some(o) => {
                hi = i;
                hi_key = o.key();
            }
        }
    }
    let untested: Vec<String> = (lo + 1..hi).map(|i| kernels[i].clone()).collect();
    finish(
        trials,
        Conclusion::Changed {
            last_same: kernels[lo].clone(),
            first_different: kernels[hi].clone(),
            from: first.key(),
            to: hi_key,
            untested,
        },
    )
}

/// The table of every kernel run, then the answer.
pub fn render(r: &Report) -> String {
    let mut s = format!(
        "bisect {} over {} kernels ({} … {})\n",
        r.case,
        r.kernels.len(),
        r.kernels[0],
        r.kernels[r.kernels.len() - 1]
    );
    let w = r
        .trials
        .iter()
        .map(|t| t.spec.len())
        .max()
        .unwrap_or(6)
        .max(6);
    s += &format!(
        "  {:>2}  {:<w$}  {:<26}  {:<7}  {:<40}  {:<7}  {:>7}\n",
        "#", "kernel", "release", "target", "classification", "verdict", "time"
    );
    for t in &r.trials {
        let o = t.outcome.as_ref();
        let class = o
            .map(|o| {
                o.classifications
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "-".into());
        let verdict = match (&t.skipped, o) {
            (Some(_), _) => "SKIP".to_string(),
            (None, Some(o)) => o.key().split(' ').next().unwrap_or("").to_string(),
            (None, None) => "-".into(),
        };
        s += &format!(
            "  {:>2}  {:<w$}  {:<26}  {:<7}  {:<40}  {:<7}  {:>7}\n",
            t.order,
            t.spec,
            o.and_then(|o| o.release.clone())
                .unwrap_or_else(|| "-".into()),
            o.and_then(|o| o.cache_target.clone())
                .unwrap_or_else(|| "-".into()),
            class,
            verdict,
            o.map(|o| format!("{:.0} s", o.seconds))
                .unwrap_or_else(|| "-".into()),
        );
        if let Some(why) = &t.skipped {
            s += &format!("      skipped after {} attempt(s): {why}\n", t.attempts);
        }
    }
    let untried = r.kernels.len() - r.trials.len();
    s += &format!(
        "{} of {} kernels run{}\n",
        r.trials.len(),
        r.kernels.len(),
        if untried > 0 {
            format!(", {untried} not needed")
        } else {
            String::new()
        }
    );
    match &r.conclusion {
        Conclusion::Changed {
            last_same,
            first_different,
            from,
            to,
            untested,
        } => {
            s += &format!(
                "the outcome changes between {last_same} and {first_different}: `{from}` → `{to}`\n"
            );
            if !untested.is_empty() {
                s += &format!(
                    "  (not tested in between, the change may be in one of them: {})\n",
                    untested.join(", ")
                );
            }
        }
        Conclusion::SameEnds { outcome } => {
            s += &format!("both ends give the same outcome (`{outcome}`): nothing to bisect\n");
        }
        Conclusion::EndFailed { spec, why } => {
            s += &format!("cannot bisect: the end {spec} could not be run ({why})\n");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::anyhow;

    fn outcome(status: Status, label: &str) -> Outcome {
        Outcome {
            status,
            classifications: [("passthrough".to_string(), label.to_string())]
                .into_iter()
                .collect(),
            release: Some("r".into()),
            cache_target: Some("2.3.0".into()),
            seconds: 60.0,
        }
    }

    fn specs(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("k{i}")).collect()
    }

    /// A fake runner: kernels before `change` refuse, from it on they accept; counts runs.
    fn flips_at(change: usize) -> impl FnMut(&str) -> Result<Outcome> {
        move |spec: &str| {
            let i: usize = spec[1..].parse().unwrap();
            Ok(if i < change {
                outcome(Status::Pass, "refused: dirty mapping")
            } else {
                outcome(Status::Fail, "accepted")
            })
        }
    }

    #[test]
    fn finds_the_first_different_kernel_in_log_n_runs() {
        for n in [2usize, 3, 5, 16, 33, 100] {
            for change in 1..n {
                let mut runs = 0;
                let mut inner = flips_at(change);
                let mut run = |s: &str| {
                    runs += 1;
                    inner(s)
                };
                let r = bisect("c", &specs(n), &mut run).unwrap();
                match &r.conclusion {
                    Conclusion::Changed {
                        last_same,
                        first_different,
                        from,
                        to,
                        untested,
                    } => {
                        assert_eq!(last_same, &format!("k{}", change - 1));
                        assert_eq!(first_different, &format!("k{change}"));
                        assert_eq!(from, "PASS passthrough: refused: dirty mapping");
                        assert_eq!(to, "FAIL passthrough: accepted");
                        assert!(untested.is_empty());
                    }
                    c => panic!("n={n} change={change}: {c:?}"),
                }
                let bound = 2 + (n as f64).log2().ceil() as usize;
                assert!(
                    runs <= bound,
                    "n={n} change={change}: {runs} runs > {bound}"
                );
                assert_eq!(r.exit_code(), 0);
                assert!(r.trials.windows(2).all(|w| w[0].index < w[1].index));
            }
        }
    }

    #[test]
    fn agreeing_ends_stop_after_two_runs() {
        let mut runs = Vec::new();
        let mut run = |s: &str| {
            runs.push(s.to_string());
            Ok(outcome(Status::Pass, "refused: dirty mapping"))
        };
        let r = bisect("c", &specs(9), &mut run).unwrap();
        assert_eq!(runs, vec!["k0", "k8"]);
        assert!(matches!(r.conclusion, Conclusion::SameEnds { .. }));
        assert_eq!(r.exit_code(), 2);
        assert!(render(&r).contains("nothing to bisect"));
    }

    #[test]
    fn a_classification_change_alone_counts() {
        let mut run = |s: &str| {
            Ok(if s < "k3" {
                outcome(Status::Pass, "refused: dirty mapping")
            } else {
                outcome(Status::Pass, "refused: unclean shutdown (can_resume)")
            })
        };
        let r = bisect("c", &specs(6), &mut run).unwrap();
        let Conclusion::Changed {
            first_different, ..
        } = &r.conclusion
        else {
            panic!("{:?}", r.conclusion)
        };
        assert_eq!(first_different, "k3");
    }

    #[test]
    fn infra_is_retried_once_then_skipped() {
        // k4 is infra twice (skipped), k5 infra once then fine; the change is at k4.
        let mut calls: BTreeMap<String, u32> = BTreeMap::new();
        let mut run = |s: &str| {
            let c = calls.entry(s.to_string()).or_default();
            *c += 1;
            let i: usize = s[1..].parse().unwrap();
            Ok(match (i, *c) {
                (4, _) | (5, 1) => outcome(Status::Infra, "unclassified"),
                (i, _) if i < 4 => outcome(Status::Pass, "refused"),
                _ => outcome(Status::Fail, "accepted"),
            })
        };
        let r = bisect("c", &specs(8), &mut run).unwrap();
        assert_eq!(calls.get("k4"), Some(&2), "retried once");
        let Conclusion::Changed {
            last_same,
            first_different,
            untested,
            ..
        } = &r.conclusion
        else {
            panic!("{:?}", r.conclusion)
        };
        assert_eq!((last_same.as_str(), first_different.as_str()), ("k3", "k5"));
        assert_eq!(untested, &vec!["k4".to_string()]);
        assert_eq!(r.skipped(), vec!["k4"]);
        let k5 = r.trials.iter().find(|t| t.spec == "k5").unwrap();
        assert_eq!((k5.attempts, k5.skipped.is_none()), (2, true));
        let text = render(&r);
        assert!(
            text.contains("SKIP") && text.contains("infrastructure failure (2×)"),
            "{text}"
        );
        assert!(
            text.contains("the outcome changes between k3 and k5"),
            "{text}"
        );
        assert!(text.contains("may be in one of them: k4"), "{text}");
    }

    #[test]
    fn runner_errors_skip_without_retry_and_a_failed_end_stops() {
        let mut calls = 0;
        let mut run = |s: &str| {
            calls += 1;
            if s == "k0" {
                Err(anyhow!("debian:k0 cannot be had"))
            } else {
                Ok(outcome(Status::Pass, "x"))
            }
        };
        let r = bisect("c", &specs(4), &mut run).unwrap();
        assert_eq!(calls, 1);
        assert!(
            matches!(&r.conclusion, Conclusion::EndFailed { spec, why } if spec == "k0" && why.contains("cannot be had"))
        );
        assert_eq!(r.exit_code(), 2);
        // Errors in the middle are skipped.
        let mut run = |s: &str| {
            let i: usize = s[1..].parse().unwrap();
            match i {
                2 => Err(anyhow!("no dm-cache")),
                i if i < 3 => Ok(outcome(Status::Pass, "a")),
                _ => Ok(outcome(Status::Pass, "b")),
            }
        };
        let r = bisect("c", &specs(5), &mut run).unwrap();
        let Conclusion::Changed {
            last_same,
            first_different,
            ..
        } = &r.conclusion
        else {
            panic!()
        };
        assert_eq!((last_same.as_str(), first_different.as_str()), ("k1", "k3"));
    }

    #[test]
    fn fewer_than_two_kernels_is_an_error() {
        let mut run = |_: &str| Ok(outcome(Status::Pass, "a"));
        let e = bisect("c", &specs(1), &mut run).unwrap_err().to_string();
        assert!(
            e.contains("at least two available kernels") && e.contains("k0"),
            "{e}"
        );
    }

    #[test]
    fn kernels_argument() {
        assert_eq!(
            parse_kernels("debian:6.16..debian:7.3").unwrap(),
            KernelsArg::Range("debian:6.16".into(), "debian:7.3".into())
        );
        assert_eq!(
            parse_kernels("debian:6.1.0-56, build:debian:6.12,a.patch,b.config,debian:6.18")
                .unwrap(),
            KernelsArg::List(vec![
                "debian:6.1.0-56".into(),
                "build:debian:6.12,a.patch,b.config".into(),
                "debian:6.18".into()
            ])
        );
        assert!(parse_kernels("debian:6.18").is_err());
        assert!(parse_kernels("..debian:7.3").is_err());
        assert!(parse_kernels("a..b,c").is_err());
    }

    #[test]
    fn json_report() {
        let mut run = flips_at(2);
        let r = bisect("c", &specs(4), &mut run).unwrap();
        let j: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(j["conclusion"]["kind"], "changed");
        assert_eq!(j["conclusion"]["first_different"], "k2");
        assert_eq!(j["trials"][0]["outcome"]["status"], "pass");
    }
}
