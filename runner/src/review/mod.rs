//! `review PATCH…`: a stable backport on the trees it is for.  The patch (a mail, an mbox
//! of a series, a format-patch file or a plain diff, [`patch`]) names its trees
//! ([`trees`], or `--tree`); per tree the runner fetches the source ([`crate::debian`]:
//! `linux-source-*` or the orig tarball), checks that the patch applies or is already there
//! ([`apply`]), builds the tree without and with it ([`crate::kbuild`]), runs every case on
//! both (VMs in parallel, each result cached by kernel image, case file and runner binary),
//! and answers ([`answer`]): closes, regresses, still failing, not testable.

pub mod answer;
pub mod apply;
pub mod patch;
pub mod trees;

use crate::event::Event;
use crate::kbuild::sha_hex;
use crate::{case, check, debian, kbuild, kernel, run, vm};
use answer::{Cell, Review, Row, TreeReview};
use anyhow::{bail, Context, Result};
use apply::Applies;
use patch::Patch;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What to review, where, how.
#[derive(Debug, Clone)]
pub struct Request {
    pub inputs: Vec<PathBuf>,
    /// `debian:6.18.15`-style build sources; empty: the trees the mail names.
    pub trees: Vec<String>,
    /// Case names; empty: every case in `cases/`.
    pub cases: Vec<String>,
    /// Extra kconfig fragments for every build (beside `kconfigs/dm-delay.config` when a case
    /// under review requires CONFIG_DM_DELAY).
    pub kconfigs: Vec<PathBuf>,
    pub jobs: usize,
    pub opts: run::RunOptions,
    /// Run every case even where the result cache has it (`--no-cache`).
    pub fresh: bool,
}

/// Every patch of the inputs, in order; the series' numbering checked.
pub fn load_patches(inputs: &[PathBuf]) -> Result<Vec<Patch>> {
    let mut all = Vec::new();
    for f in inputs {
        let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        all.extend(patch::parse_input(&f.display().to_string(), &bytes)?);
    }
    patch::check_series(&all)?;
    Ok(all)
}

/// A tree to review: its series, build source, origin, or why none can be had.
type TreeChoice = (String, std::result::Result<(String, String), String>);

/// The trees: `--tree` specs as given, else the newest tree that can be had of each series
/// the mail names (a series with none is kept with the reason).
pub fn choose_trees(
    req: &Request,
    patches: &[Patch],
    progress: &mut dyn FnMut(Event),
) -> Result<Vec<TreeChoice>> {
    let resolve = |spec: &str,
                   progress: &mut dyn FnMut(Event)|
     -> std::result::Result<(String, String), String> {
        match debian::source_tree(spec, progress) {
            Ok(Some(t)) => Ok((format!("debian:{}", t.spec()), t.origin())),
            Ok(None) => Err("no Debian index (see `kernel list --refresh`)".into()),
            Err(e) => Err(format!("{e:#}")),
        }
    };
    if !req.trees.is_empty() {
        return req
            .trees
            .iter()
            .map(|t| {
                let Some(spec) = t.strip_prefix("debian:") else {
                    bail!("--tree {t}: write debian:VERSION (e.g. debian:6.18.15, debian:6.18 = its newest tree)");
                };
                kbuild::SourceSpec::parse(t)?;
                let series = debian::version::series(spec).unwrap_or_else(|| spec.to_string());
                Ok((series, resolve(spec, progress)))
            })
            .collect();
    }
    let first = &patches[0];
    let known = debian::known_series(progress)?;
    let series = trees::series_of(
        first.subject.as_deref(),
        first.stable_base.as_deref(),
        &known,
    );
    if series.is_empty() {
        bail!(
            "{}: the mail names no stable tree (as in `[PATCH 6.18.y]` or `[PATCH AUTOSEL 7.0-6.18]`): give --tree debian:6.18.15",
            first.source
        );
    }
    Ok(series
        .into_iter()
        .rev()
        .map(|s| {
            let got = resolve(&s, progress);
            (s, got)
        })
        .collect())
}

/// Writes each patch's diff to the cache, content-addressed (the build key hashes the
/// contents, so the same patch is the same variant whatever file it came in).
fn patch_files(patches: &[Patch]) -> Result<Vec<PathBuf>> {
    let dir = crate::cache::dir("review").join("patches");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    patches
        .iter()
        .map(|p| {
            let f = dir.join(format!("{}.patch", &sha_hex(&[p.diff.as_bytes()])[..16]));
            if !f.is_file() {
                crate::cache::write_durable(&f, p.diff.as_bytes())
                    .with_context(|| format!("writing {}", f.display()))?;
            }
            Ok(f)
        })
        .collect()
}

/// The kconfig fragments of every review build: dm-delay when a case under review requires
/// it (the write-ordering case; otherwise the builds are the plain ones `matrix.yaml` and
/// `kernel build` make, and share their cache entries), then the request's own.
fn fragments(req: &Request, cases: &[LoadedCase]) -> Vec<String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kconfigs/dm-delay.config");
    let delay = cases
        .iter()
        .any(|(_, c, _)| c.requires.iter().any(|r| r == "CONFIG_DM_DELAY"));
    delay
        .then(|| repo.canonicalize().unwrap_or(repo))
        .into_iter()
        .chain(req.kconfigs.iter().cloned())
        .map(|p| p.display().to_string())
        .collect()
}

/// One kernel of a tree: its spec, and the kernel once built (or the build's error).
struct Side {
    kernel: std::result::Result<(kernel::Kernel, vm::Accel), String>,
}

fn build_side(spec: &str, progress: &mut dyn FnMut(Event)) -> Side {
    let got = kernel::prepare(spec, progress).map(|(k, accel, _)| (k, accel));
    Side {
        kernel: got.map_err(|e| format!("{e:#}")),
    }
}

/// The review: trees, builds, every case on both sides, the answer.
pub fn review(req: &Request, ui: &(dyn Fn(Event) + Sync)) -> Result<Review> {
    let t0 = Instant::now();
    let patches = load_patches(&req.inputs)?;
    let files = patch_files(&patches)?;
    let cases = load_cases(&req.cases)?;
    let choices = choose_trees(req, &patches, &mut |e| ui(e))?;
    let frags = fragments(req, &cases);
    let mut trees = Vec::new();
    let mut untestable = Vec::new();
    let mut jobs: Vec<Job> = Vec::new();
    let mut sides: Vec<[Option<Side>; 2]> = Vec::new();
    for (series, choice) in choices {
        let (tree, origin) = match choice {
            Ok(x) => x,
            Err(why) => {
                ui(Event::Notice(format!("{series}: not testable: {why}")));
                untestable.push((series, why));
                continue;
            }
        };
        ui(Event::Prepare(format!(
            "{tree} ({origin}): fetching the source"
        )));
        let src = kbuild::SourceSpec::parse(&tree)?;
        let applies = match kbuild::source_dir(&src, &mut |e| ui(e.prefixed(&tree))) {
            Ok((dir, _)) => apply::check(&dir, &patches)?,
            Err(e) => {
                untestable.push((series, format!("{tree}: {e:#}")));
                continue;
            }
        };
        ui(Event::Notice(format!(
            "{tree}: the patch {}",
            short_applies(&applies)
        )));
        let specs = side_specs(&tree, &applies, &files, &frags);
        let built = build_sides(&tree, specs, ui);
        let (rows, errors, tree_jobs) = plan_rows(trees.len(), &cases, &built);
        jobs.extend(tree_jobs);
        sides.push(built);
        trees.push(TreeReview {
            series,
            tree,
            origin,
            applies,
            rows,
            errors,
        });
    }
    if trees.iter().all(|t| matches!(t.applies, Applies::No(_))) && !trees.is_empty() {
        let why: Vec<String> = trees
            .iter()
            .map(|t| format!("{}: {}", t.tree, short_applies(&t.applies)))
            .collect();
        bail!("the patch applies to no tree — {}", why.join("; "));
    }
    let cells = run_jobs(req, &cases, &trees, &sides, &jobs, false, ui)?;
    for (job, cell) in jobs.iter().zip(cells) {
        let row = &mut trees[job.tree].rows[job.case];
        if job.side == 0 {
            row.without = Some(cell);
        } else {
            row.with = Some(cell);
        }
    }
    confirm_changes(req, &cases, &mut trees, &sides, ui)?;
    Ok(Review {
        subject: patches[0].subject.clone(),
        upstream: patches[0].upstream.clone(),
        patches: patches.iter().map(|p| p.source.clone()).collect(),
        trees,
        untestable_trees: untestable,
        runner: env!("CARGO_PKG_VERSION").to_string(),
        accel: accels(&sides),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The accelerators the kernels ran under (`tcg`, `kvm`, `kvm+tcg`).
fn accels(sides: &[[Option<Side>; 2]]) -> String {
    let mut v: Vec<String> = sides
        .iter()
        .flatten()
        .flatten()
        .filter_map(|s| s.kernel.as_ref().ok())
        .map(|(_, a)| format!("{a:?}").to_lowercase())
        .collect();
    v.sort();
    v.dedup();
    if v.is_empty() {
        "no VM".into()
    } else {
        v.join("+")
    }
}

/// Why a case that `requires:` options cannot run on a review build, in a table cell's
/// words: the options missing and the `--kconfig` that adds them.
fn not_run_reason(k: &kernel::Kernel, required: &[String], e: &anyhow::Error) -> String {
    let text = k
        .config
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok());
    let Some(text) = text else {
        return format!("{e:#}");
    };
    let missing = kernel::missing_options(&text, required);
    let frag = match missing.iter().any(|m| m.starts_with("CONFIG_KASAN")) {
        true => " (add it with --kconfig kconfigs/kasan.config)".to_string(),
        false => String::new(),
    };
    format!("needs {}{frag}", missing.join(", "))
}

/// The `build:` specs of a tree's two kernels: without the patch and with it (a tree that
/// has it already: only the tree, in the "with" slot; a patch that does not apply: none).
fn side_specs(
    tree: &str,
    applies: &Applies,
    files: &[PathBuf],
    frags: &[String],
) -> [Option<String>; 2] {
    let spec = |patches: &[PathBuf]| -> String {
        std::iter::once(format!("build:{tree}"))
            .chain(patches.iter().map(|f| f.display().to_string()))
            .chain(frags.iter().cloned())
            .collect::<Vec<_>>()
            .join(",")
    };
    match applies {
        Applies::Yes(_) => [Some(spec(&[])), Some(spec(files))],
        Applies::AlreadyIn => [None, Some(spec(&[]))],
        Applies::No(_) => [None, None],
    }
}

fn build_sides(
    tree: &str,
    specs: [Option<String>; 2],
    ui: &(dyn Fn(Event) + Sync),
) -> [Option<Side>; 2] {
    let mut i = 0;
    specs.map(|s| {
        i += 1;
        s.map(|spec| {
            let which = if i == 2 && spec.contains("/review/patches/") {
                "with"
            } else {
                "without"
            };
            ui(Event::Prepare(format!(
                "{tree}: building {which} the patch"
            )));
            build_side(&spec, &mut |e| ui(e.prefixed(tree)))
        })
    })
}

/// A tree's rows (one per case), the build errors, and the jobs to run: a case runs on each
/// built side unless it `requires:` what the build lacks.
fn plan_rows(
    ti: usize,
    cases: &[LoadedCase],
    built: &[Option<Side>; 2],
) -> (Vec<Row>, Vec<String>, Vec<Job>) {
    let (mut rows, mut errors, mut jobs) = (Vec::new(), Vec::new(), Vec::new());
    for (ci, (_, c, _)) in cases.iter().enumerate() {
        let mut row = Row {
            case: c.name.clone(),
            source: c.source.clone(),
            without: None,
            with: None,
            not_run: None,
            again: None,
        };
        for (si, side) in built.iter().enumerate() {
            let Some(side) = side else { continue };
            match &side.kernel {
                Err(e) if !errors.contains(e) => errors.push(e.clone()),
                Err(_) => {}
                Ok((k, _)) => match kernel::check_requires(k, &c.name, &c.requires) {
                    Err(e) => row.not_run = Some(not_run_reason(k, &c.requires, &e)),
                    Ok(()) => jobs.push(Job {
                        tree: ti,
                        case: ci,
                        side: si,
                    }),
                },
            }
        }
        rows.push(row);
    }
    (rows, errors, jobs)
}

fn short_applies(a: &Applies) -> String {
    match a {
        Applies::Yes(n) if n.is_empty() => "applies cleanly".into(),
        Applies::Yes(n) => format!("applies ({})", n.join("; ")),
        Applies::AlreadyIn => "is already in this tree".into(),
        Applies::No(r) => format!("does not apply ({})", r.join("; ")),
    }
}

type LoadedCase = (String, case::Case, Vec<u8>);

fn load_cases(names: &[String]) -> Result<Vec<LoadedCase>> {
    let paths: Vec<(String, PathBuf)> = if names.is_empty() {
        case::list()?
    } else {
        names
            .iter()
            .map(|n| Ok((n.clone(), case::find(n)?)))
            .collect::<Result<_>>()?
    };
    paths
        .into_iter()
        .map(|(n, p)| {
            let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            Ok((n, case::load(&p)?, bytes))
        })
        .collect()
}

/// One case on one side of one tree.
struct Job {
    tree: usize,
    case: usize,
    /// 0 without the patch, 1 with it.
    side: usize,
}

/// A verdict that changes with the patch is what the answer rests on: each such case runs
/// once more on both sides (never from the cache), and a side that disagrees with its first
/// run makes the case racy on this tree (counted neither as closed nor as regressed).
fn confirm_changes(
    req: &Request,
    cases: &[LoadedCase],
    trees: &mut [TreeReview],
    sides: &[[Option<Side>; 2]],
    ui: &(dyn Fn(Event) + Sync),
) -> Result<()> {
    let mut jobs = Vec::new();
    for (ti, t) in trees.iter().enumerate() {
        for (ci, r) in t.rows.iter().enumerate() {
            let (Some(a), Some(b)) = (&r.without, &r.with) else {
                continue;
            };
            if (a.pass() || a.fail()) && (b.pass() || b.fail()) && a.status != b.status {
                jobs.push(Job {
                    tree: ti,
                    case: ci,
                    side: 0,
                });
                jobs.push(Job {
                    tree: ti,
                    case: ci,
                    side: 1,
                });
            }
        }
    }
    if jobs.is_empty() {
        return Ok(());
    }
    ui(Event::Notice(format!(
        "{} case(s) change with the patch: running each once more on both sides",
        jobs.len() / 2
    )));
    let cells = run_jobs(req, cases, trees, sides, &jobs, true, ui)?;
    for (pair, cells) in jobs.chunks(2).zip(cells.chunks(2)) {
        trees[pair[0].tree].rows[pair[0].case].again = Some((cells[0].clone(), cells[1].clone()));
    }
    Ok(())
}

/// Runs every job (from the result cache where it has one, unless `fresh`), `req.jobs` VMs
/// at a time.
fn run_jobs(
    req: &Request,
    cases: &[LoadedCase],
    trees: &[TreeReview],
    sides: &[[Option<Side>; 2]],
    jobs: &[Job],
    fresh: bool,
    ui: &(dyn Fn(Event) + Sync),
) -> Result<Vec<Cell>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let runner = runner_hash();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<Cell>>> = Mutex::new(vec![None; jobs.len()]);
    std::thread::scope(|s| {
        for _ in 0..req.jobs.max(1) {
            s.spawn(|| loop {
                if vm::INTERRUPTED.load(Ordering::SeqCst) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(job) = jobs.get(i) else { break };
                let (_, case, bytes) = &cases[job.case];
                let (k, accel) = sides[job.tree][job.side]
                    .as_ref()
                    .unwrap()
                    .kernel
                    .as_ref()
                    .unwrap();
                let mut opts = req.opts.clone();
                opts.accel = *accel;
                let cell = one_cell(case, bytes, k, &opts, &runner, req.fresh || fresh);
                let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                ui(Event::JobEnd(format!(
                    "[{n}/{}] {} on {}{}: {}{}",
                    jobs.len(),
                    case.name,
                    trees[job.tree].tree,
                    if job.side == 1 && matches!(trees[job.tree].applies, Applies::Yes(_)) {
                        " + patch"
                    } else {
                        ""
                    },
                    cell.short(),
                    if cell.cached {
                        " (cached)".to_string()
                    } else {
                        format!(" ({:.0} s)", cell.seconds)
                    }
                )));
                out.lock().unwrap()[i] = Some(cell);
            });
        }
    });
    if vm::INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(out
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|c| c.expect("every job ran"))
        .collect())
}

/// The running binary's SHA256: a cached result is only as good as the runner that made it.
fn runner_hash() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| debian::orig::sha256_file(&p).ok())
        .unwrap_or_else(|| "unknown".into())
}

fn one_cell(
    case: &case::Case,
    bytes: &[u8],
    k: &kernel::Kernel,
    opts: &run::RunOptions,
    runner: &str,
    fresh: bool,
) -> Cell {
    let image = debian::orig::sha256_file(&k.image).unwrap_or_default();
    let key = sha_hex(&[
        b"review cell v1",
        runner.as_bytes(),
        image.as_bytes(),
        bytes,
        format!(
            "{:?} {:?} {:?} {:?} {:?}",
            opts.accel, opts.memory, opts.cpus, opts.root, opts.kernel_args
        )
        .as_bytes(),
    ]);
    let file = crate::cache::dir("review")
        .join("results")
        .join(format!("{key}.json"));
    let hit = (!fresh)
        .then(|| std::fs::read(&file).ok())
        .flatten()
        .and_then(|b| serde_json::from_slice::<Cell>(&b).ok());
    if let Some(mut c) = hit {
        c.cached = true;
        return c;
    }
    let cell = match run::run_case(case, k, opts, &mut |_| {}) {
        Ok(out) => cell_of(&check::evaluate(case, &out)),
        Err(e) => Cell {
            status: "error".into(),
            labels: vec![],
            failures: vec![format!("{e:#}")],
            release: k.release.clone(),
            cache_target: None,
            seconds: 0.0,
            cached: false,
        },
    };
    // Only judged results are kept: an infrastructure failure is tried again next time.
    if cell.pass() || cell.fail() {
        let _ = std::fs::create_dir_all(file.parent().unwrap());
        let _ = crate::cache::write_durable(&file, &serde_json::to_vec(&cell).unwrap_or_default());
    }
    cell
}

fn cell_of(v: &check::Verdict) -> Cell {
    Cell {
        status: match v.status {
            check::Status::Pass => "pass",
            check::Status::Fail => "fail",
            check::Status::Infra => "error",
        }
        .into(),
        labels: v
            .classifications
            .values()
            .map(|c| c.label.clone())
            .collect(),
        failures: v.failures.iter().map(|f| f.what.clone()).collect(),
        release: v.release.clone(),
        cache_target: v.cache_target.clone(),
        seconds: v.seconds,
        cached: false,
    }
}

/// `Name <email>` from git's configuration, for the Tested-by line.
pub fn tested_by() -> String {
    let git = |k: &str| {
        std::process::Command::new("git")
            .args(["config", k])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    match (git("user.name"), git("user.email")) {
        (Some(n), Some(e)) => format!("{n} <{e}>"),
        _ => "YOUR NAME <you@example.org>  (set git config user.name/user.email)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_kernels_of_a_tree() {
        let files = [PathBuf::from("/c/review/patches/ab.patch")];
        let frags = ["/r/kconfigs/dm-delay.config".to_string()];
        let [a, b] = side_specs("debian:6.18.15", &Applies::Yes(vec![]), &files, &frags);
        assert_eq!(
            a.as_deref(),
            Some("build:debian:6.18.15,/r/kconfigs/dm-delay.config")
        );
        assert_eq!(
            b.as_deref(),
            Some("build:debian:6.18.15,/c/review/patches/ab.patch,/r/kconfigs/dm-delay.config")
        );
        let [a, b] = side_specs("debian:7.1.13", &Applies::AlreadyIn, &files, &frags);
        assert_eq!(a, None);
        assert_eq!(
            b.as_deref(),
            Some("build:debian:7.1.13,/r/kconfigs/dm-delay.config")
        );
        assert_eq!(
            side_specs("debian:6.1", &Applies::No(vec![]), &files, &frags),
            [None, None]
        );
        // Every spec parses as a kernel spec.
        let [_, b] = side_specs("debian:6.18.15", &Applies::Yes(vec![]), &files, &frags);
        assert!(matches!(
            crate::kernel::KernelSpec::parse(&b.unwrap()).unwrap(),
            crate::kernel::KernelSpec::Build { .. }
        ));
    }
}
