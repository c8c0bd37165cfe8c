//! CLI: clap commands only; the work is in the library modules.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use dmcache_vmtest::event::Event;
use dmcache_vmtest::{bisect, case, check, debian, kernel, report, run, vm};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "dmcache-vmtest",
    version,
    about = "Prove on real kernels in real VMs whether a dm-cache change keeps data safe"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// More detail: skipped steps, guest tool versions, longer evidence.
    #[arg(short, long, global = true)]
    verbose: bool,
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Kernel: a bzImage (`PATH[,modules=DIR]`), a dir with an unpacked kernel, `debian:VERSION`
    /// (e.g. debian:6.12.117+deb12, debian:6.1.0-56, debian:6.18.15, debian:6.18 = newest), or
    /// `build:SRC[,PATCH…]`.
    #[arg(long, env = "DMCACHE_VMTEST_KERNEL", default_value = kernel::DEFAULT_SPEC)]
    kernel: String,
    /// Write the verdict as JSON to FILE.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Record every write of every boot (QEMU's blklogwrites) into the work dir's
    /// `disks/NAME.log`; needs `--keep` (the log is in the kept work dir).
    #[arg(long)]
    record: bool,
    #[command(flatten)]
    vm: VmArgs,
}

/// `crashpoints CASE`.
#[derive(clap::Args)]
struct CrashpointsArgs {
    /// The case (a name in cases/ or a path to a YAML file) with a `crashpoints:` block.
    name: String,
    /// Sampled subsets of each epoch's writes, besides the persistence points (0: points only).
    #[arg(long, default_value_t = 8)]
    states: usize,
    /// Seed of the epoch samples (the same seed gives the same states).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Check only this state (an id as a report prints it, e.g. P57+50,52).
    #[arg(long, value_name = "ID")]
    state: Option<String>,
    /// Host tier only: no recovery boot on the states.
    #[arg(long)]
    host_only: bool,
    /// Check the log an earlier run kept (`--keep`: DIR/disks/NAME.log) on the host instead
    /// of recording anew: a `--state` id names a state of one recording.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
}

/// How each VM of a run is set up: every command that boots (`case`, `crashpoints`, `matrix`,
/// `bench`, `bisect`, `review`).
#[derive(clap::Args, Clone)]
struct VmArgs {
    /// Keep disk images, results and console logs, and print where.
    #[arg(long)]
    keep: bool,
    /// Per-boot timeout in seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Guest memory (QEMU syntax), overrides the case.
    #[arg(long)]
    memory: Option<String>,
    /// Guest vCPUs, overrides the case.
    #[arg(long)]
    cpus: Option<u32>,
    /// Guest userspace: a pinned image from images/ (`image build NAME` first); default: the host root, read-only.
    #[arg(long)]
    image: Option<String>,
    /// An extra kernel command-line parameter for every boot (repeatable), e.g.
    /// `--kernel-arg preempt=full` to run a case under another preemption model.
    #[arg(long = "kernel-arg", value_name = "PARAM", value_parser = parse_kernel_arg)]
    kernel_args: Vec<String>,
}

fn parse_kernel_arg(a: &str) -> Result<String, String> {
    case::check_kernel_arg(a).map(|()| a.to_string())
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one case (a name in cases/ or a path to a YAML file).
    Case {
        name: String,
        #[command(flatten)]
        args: RunArgs,
    },
    /// List the cases with their one-line summaries.
    List,
    /// Kernels: what Debian offers, fetch into the cache, build from source.
    Kernel {
        #[command(subcommand)]
        cmd: KernelCmd,
    },
    /// Power loss, not just a reset: record every write of a case's boots up to its crash,
    /// then check recovery at every crash state a power cut may leave (every flush/FUA, and
    /// sampled subsets of each epoch's writes): on the host, then in VMs.  Exit 0 holds at
    /// every state, 1 fails at one, 2 could not run.
    Crashpoints(CrashpointsArgs),
    /// Time bare boots and a case on one kernel; print per-boot times and the runner's overhead.
    Bench(BenchArgs),
    /// Run a kernel × case matrix (YAML) and compare every pair with its expected outcome.
    Matrix(MatrixArgs),
    /// Pinned guest userspace images (images/*.yaml).
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// Find the first kernel whose outcome (verdict + classifications) differs from the
    /// oldest one's: runs both ends, then halves the range.
    Bisect {
        /// The case (a name in cases/ or a path to a YAML file).
        name: String,
        /// `debian:A..debian:B` (every available Debian kernel between them; a series end
        /// takes the whole series, e.g. debian:6.16..debian:7.3) or a comma list in order.
        #[arg(long)]
        kernels: String,
        /// Write the report (every run, the answer) as JSON to FILE.
        #[arg(long)]
        json: Option<PathBuf>,
        #[command(flatten)]
        vm: VmArgs,
    },
    /// Review a stable backport on the trees it is for: does it apply (or is it already
    /// there), build each tree without and with it, run every case on both, and answer:
    /// closes, regresses, still failing, not testable.  Exit 0 closes and regresses
    /// nothing, 1 does not close or regresses, 2 could not run.
    Review {
        /// A mail (saved or raw from a list archive), an mbox of a series (applied in
        /// order), a `git format-patch` file or a plain diff; several are one series.
        #[arg(required = true)]
        patches: Vec<PathBuf>,
        /// A tree to test on (repeatable), e.g. debian:6.18.15 or debian:6.18 (its newest);
        /// default: the newest tree of each series the mail's subject names.
        #[arg(long = "tree", value_name = "SPEC")]
        trees: Vec<String>,
        /// Only these cases (comma-separated); default: every case in cases/.
        #[arg(long, value_delimiter = ',')]
        cases: Vec<String>,
        /// An extra kconfig fragment for every build (repeatable), e.g. kconfigs/kasan.config.
        #[arg(long)]
        kconfig: Vec<PathBuf>,
        /// VMs at a time (default: one per core, at most one per 2 GiB free memory).
        #[arg(long)]
        jobs: Option<usize>,
        /// Write the review as JSON to FILE.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write the reply (Markdown, fit to paste) to FILE.
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// Run every case even where a result of the same runner, kernel image and case
        /// file is cached.
        #[arg(long)]
        no_cache: bool,
        #[command(flatten)]
        vm: VmArgs,
    },
    /// Check host tools, QEMU, KVM and vng; say how to fix each gap.
    Doctor {
        #[arg(long, env = "DMCACHE_VMTEST_KERNEL", default_value = kernel::DEFAULT_SPEC)]
        kernel: String,
    },
}

#[derive(clap::Args)]
struct MatrixArgs {
    file: PathBuf,
    /// VMs at a time (default: one per core, at most one per 2 GiB free memory).
    #[arg(long)]
    jobs: Option<usize>,
    /// Run each pair N times; report flakiness and min/median/max durations.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Markdown summary (e.g. $GITHUB_STEP_SUMMARY).
    #[arg(long)]
    summary: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
    /// Backport coverage: kernels × cases, each cell what the kernel did and whether the
    /// case's property held; Markdown to FILE, JSON to FILE with `.json` appended.
    #[arg(long)]
    coverage: Option<PathBuf>,
    /// Only these kernels (names in the matrix, comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only the pairs of these cases (names, comma-separated).
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// Copy every run's console logs and results (not the disks) under DIR.
    #[arg(long)]
    logs: Option<PathBuf>,
    /// Print the matrix's kernel names as a JSON array and run nothing (the GitHub
    /// workflow's job list comes from this).
    #[arg(long)]
    list_kernels: bool,
    /// Print the build plan as JSON and run nothing: the `build:` kernels grouped by
    /// configured tree (source + fragments), each tree's inputs and cache key, each
    /// kernel's tree (the GitHub workflow's build and test jobs come from this).
    #[arg(long)]
    list_builds: bool,
    /// Print each pair's accelerator; a pair that ran under another (KVM expected, the
    /// runner fell back to TCG) makes the exit status 2.
    #[arg(long, value_name = "kvm|tcg", value_parser = dmcache_vmtest::matrix::ci::parse_accel)]
    expect_accel: Option<vm::Accel>,
    /// Print one coverage table (Markdown) from coverage JSON files of several runs
    /// (`--coverage F` writes F.json) and run nothing.
    #[arg(long, value_name = "JSON", num_args = 1..)]
    merge_coverage: Vec<PathBuf>,
    #[command(flatten)]
    vm: VmArgs,
}

#[derive(clap::Args)]
struct BenchArgs {
    #[arg(default_value = "unclean_passthrough")]
    name: String,
    /// Bare boots and case runs to time (min/median/max over them).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Also time bare boots of this kernel (e.g. the Debian kernel vs a minimal build).
    #[arg(long)]
    compare: Option<String>,
    #[command(flatten)]
    args: RunArgs,
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Build an image into the cache with debootstrap (root); print its path.
    Build { name: String },
}

#[derive(Subcommand)]
enum KernelCmd {
    /// Download (or build) a kernel into the cache and print its image path.
    Fetch { spec: String },
    /// What Debian's archive offers (every suite of the runner's apt): version, suites,
    /// packaging form, usable or why not; newest first.
    List {
        /// `debian` (all) or `debian:SERIES` (e.g. debian:6.18, debian:7).
        #[arg(default_value = "debian")]
        what: String,
        /// Refresh the index now (otherwise it is refreshed when older than a day).
        #[arg(long)]
        refresh: bool,
        /// Kernel source trees instead (`build:` sources): every `linux-source-*` package
        /// and every `linux` source upload's orig tarball, whether it can be had and why
        /// not (the mirror is asked once per tarball; the answer is cached).  `kernel list
        /// --sources 6.18`.
        #[arg(long)]
        sources: bool,
        /// Print the kernels as a JSON array (abi, version, upstream, suites, form,
        /// packages, unusable) instead of the table.
        #[arg(long, conflicts_with = "sources")]
        json: bool,
    },
    /// Build a small bzImage with dm-cache built in from a source tree plus patches
    /// (kconfigs/dm-cache.config + --kconfig fragments); print its path and timings.
    Build {
        /// A kernel source directory (never modified) or `debian:6.12` (linux-source-6.12).
        #[arg(long)]
        src: String,
        /// Patches applied in order (`patch -p1`).
        #[arg(long)]
        patch: Vec<PathBuf>,
        /// Extra kconfig fragments, merged after kconfigs/dm-cache.config.
        #[arg(long)]
        kconfig: Vec<PathBuf>,
        /// make -jN (default: all cores).
        #[arg(long)]
        jobs: Option<usize>,
    },
}

fn main() {
    let cli = Cli::parse();
    vm::install_interrupt_handler();
    let code = match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {:#}", dmcache_vmtest::cache::with_space_hint(e));
            2
        }
    };
    std::process::exit(code);
}

fn dispatch(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Case { name, args } => cmd_case(&name, &args, cli.verbose),
        Cmd::Crashpoints(a) => cmd_crashpoints(&a),
        Cmd::List => {
            for (name, path) in case::list()? {
                match case::load(&path) {
                    Ok(c) => println!("{name:<32} {}", c.summary),
                    Err(e) => println!("{name:<32} INVALID: {e:#}"),
                }
            }
            Ok(0)
        }
        Cmd::Kernel {
            cmd:
                KernelCmd::Build {
                    src,
                    patch,
                    kconfig,
                    jobs,
                },
        } => cmd_kernel_build(&src, patch, kconfig, jobs),
        Cmd::Kernel {
            cmd:
                KernelCmd::List {
                    what,
                    refresh,
                    sources,
                    json,
                },
        } => cmd_kernel_list(&what, refresh, sources, json),
        Cmd::Review {
            patches,
            trees,
            cases,
            kconfig,
            jobs,
            json,
            markdown,
            no_cache,
            vm,
        } => {
            let req = dmcache_vmtest::review::Request {
                fresh: no_cache,
                inputs: patches,
                trees,
                cases,
                kconfigs: kconfig,
                jobs: jobs.unwrap_or_else(dmcache_vmtest::matrix::default_jobs),
                opts: vm_options(vm::Accel::Tcg, &vm)?,
            };
            cmd_review(&req, json.as_deref(), markdown.as_deref())
        }
        Cmd::Bisect {
            name,
            kernels,
            json,
            vm,
        } => cmd_bisect(&name, &kernels, json.as_deref(), &vm),
        Cmd::Kernel {
            cmd: KernelCmd::Fetch { spec },
        } => cmd_kernel_fetch(&spec),
        Cmd::Bench(b) => cmd_bench(&b),
        Cmd::Matrix(m) => cmd_matrix(&m),
        Cmd::Image {
            cmd: ImageCmd::Build { name },
        } => {
            let p = report::Progress::new(&format!("image {name}"));
            let dir = dmcache_vmtest::image::build(&name, &mut |e| p.event(e));
            p.finish();
            println!("{}", dir?.display());
            Ok(0)
        }
        Cmd::Doctor { kernel } => Ok(dmcache_vmtest::doctor::run(&kernel)),
    }
}

/// `kernel build`: the build's path on stdout, release/timing and the spec to use on stderr.
fn cmd_kernel_build(
    src: &str,
    patch: Vec<PathBuf>,
    kconfig: Vec<PathBuf>,
    jobs: Option<usize>,
) -> Result<i32> {
    let items: Vec<PathBuf> = patch.into_iter().chain(kconfig).collect();
    let mut req = kernel::build_request(src, &items)?;
    if let Some(j) = jobs {
        req.jobs = j;
    }
    let p = report::Progress::new("build");
    let built = dmcache_vmtest::kbuild::build(&req, &mut |e| p.event(e));
    p.finish();
    let b = built?;
    println!("{}", b.bzimage.display());
    let how = if b.cache_hit {
        "cache hit".to_string()
    } else {
        format!("built (make {:.1} s)", b.make_secs)
    };
    eprintln!(
        "release {}  {how}  {:.1} s  (key {})",
        b.release,
        b.build_secs,
        &b.key[..12.min(b.key.len())]
    );
    let spec = std::iter::once(format!("build:{src}"))
        .chain(items.iter().map(|p| p.display().to_string()))
        .collect::<Vec<_>>()
        .join(",");
    eprintln!(
        "use it with --kernel {spec}  (or --kernel {})",
        b.bzimage.display()
    );
    Ok(0)
}

/// `kernel fetch`: the image path on stdout, what it is on stderr.
fn cmd_kernel_fetch(spec: &str) -> Result<i32> {
    let t = std::time::Instant::now();
    let k = resolve_kernel(spec)?;
    println!("{}", k.image.display());
    eprintln!(
        "release {}  dm-cache {:?}  modules {}  ({:.1} s)",
        k.release.as_deref().unwrap_or("?"),
        k.dm_cache,
        k.modules
            .as_deref()
            .map(|m| m.display().to_string())
            .unwrap_or_else(|| "none".into()),
        t.elapsed().as_secs_f64()
    );
    Ok(0)
}

/// `bench`: bare boots and case runs, optionally beside another kernel's bare boots.
fn cmd_bench(b: &BenchArgs) -> Result<i32> {
    let (name, runs, compare, args) = (&b.name, b.runs, &b.compare, &b.args);
    let case = case::load(&case::find(name)?)?;
    let (k, opts) = prepare(&args.kernel, &args.vm)?;
    let p = report::Progress::new("bench");
    p.event(Event::Prepare(format!(
        "{runs} bare boots, then {} {runs} times",
        case.name
    )));
    let r = dmcache_vmtest::bench::bench(&case, &k, &opts, runs);
    p.finish();
    let r = r?;
    print!("{}", dmcache_vmtest::bench::render(&r));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&r)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(other) = compare {
        let (k2, mut o2) = prepare(other, &args.vm)?;
        o2.root = opts.root.clone();
        let b2 = dmcache_vmtest::bench::bare_boots(&case, &k2, &o2, runs)?;
        let med = |v: &[dmcache_vmtest::bench::Phases]| {
            dmcache_vmtest::bench::median_of(&v.iter().map(|p| p.total).collect::<Vec<_>>())
        };
        println!("bare boot, median of {runs}:");
        println!(
            "  {:<40} {:6.1} s  ({:?})",
            k.spec,
            med(&r.bare),
            opts.accel
        );
        println!("  {:<40} {:6.1} s  ({:?})", k2.spec, med(&b2), o2.accel);
    }
    Ok(0)
}

/// `matrix FILE`: the list modes, or every pair run, reported and judged.
fn cmd_matrix(a: &MatrixArgs) -> Result<i32> {
    use dmcache_vmtest::matrix::ci;
    if !a.merge_coverage.is_empty() {
        print!(
            "{}",
            report::coverage_markdown(&ci::merge_coverage(&a.merge_coverage)?)
        );
        return Ok(0);
    }
    let mut m = dmcache_vmtest::matrix::load(&a.file)?;
    if a.list_kernels {
        println!("{}", serde_json::to_string(&m.kernel_names())?);
        return Ok(0);
    }
    if a.list_builds {
        let base = a.file.parent().unwrap_or(std::path::Path::new("."));
        println!("{}", serde_json::to_string(&ci::plan(&m, base)?)?);
        return Ok(0);
    }
    if !a.only.is_empty() {
        m = m.only(&a.only)?;
    }
    if !a.cases.is_empty() {
        m = m.only_cases(&a.cases)?;
    }
    // Each kernel's accelerator is probed (or DMCACHE_VMTEST_ACCEL) as it is prepared.
    let mut opts = vm_options(vm::Accel::Tcg, &a.vm)?;
    opts.save_logs = a.logs.clone();
    let jobs = a.jobs.unwrap_or_else(dmcache_vmtest::matrix::default_jobs);
    let ui = report::MultiUi::new();
    // Every pair gets a row: a host error (kernel fetch, …) is that pair's ERROR.
    let results = dmcache_vmtest::matrix::run(&m, jobs, a.repeat, &opts, &|l, e| ui.event(l, e));
    ui.finish();
    print!("{}", report::matrix_table(&results));
    let (accels, wrong_accel) = ci::accel_report(&results, a.expect_accel);
    if a.expect_accel.is_some() {
        accels.iter().for_each(|l| println!("{l}"));
    }
    write_matrix_reports(a, &results, &accels)?;
    print_matrix_summary(&results);
    for p in &wrong_accel {
        eprintln!("error: {p}");
    }
    let code = dmcache_vmtest::matrix::exit_code(&results);
    Ok(if wrong_accel.is_empty() { code } else { 2 })
}

/// The files `matrix` was asked for: `--junit`, `--summary`, `--json`, `--coverage` (+ .json).
fn write_matrix_reports(
    a: &MatrixArgs,
    results: &[dmcache_vmtest::matrix::PairResult],
    accels: &[String],
) -> Result<()> {
    let write = |p: &Option<PathBuf>, text: String| -> Result<()> {
        if let Some(p) = p {
            std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?;
        }
        Ok(())
    };
    write(&a.junit, report::matrix_junit(results))?;
    let mut md = report::matrix_markdown(results);
    if a.expect_accel.is_some() {
        md += &format!("\n```\n{}\n```\n", accels.join("\n"));
    }
    write(&a.summary, md)?;
    write(&a.json, report::to_json(&results))?;
    if let Some(p) = &a.coverage {
        let c = report::coverage(results);
        write(&Some(p.clone()), report::coverage_markdown(&c))?;
        let mut j = p.clone().into_os_string();
        j.push(".json");
        write(&Some(PathBuf::from(j)), report::to_json(&c))?;
    }
    Ok(())
}

/// How many pairs could not be judged, differ, or all as expected.
fn print_matrix_summary(results: &[dmcache_vmtest::matrix::PairResult]) {
    let n = results.len();
    let errored = results.iter().filter(|r| r.errored()).count();
    let bad = results.iter().filter(|r| !r.ok()).count();
    if errored > 0 {
        eprintln!("{errored} of {n} pairs could not be judged (host or infrastructure error)");
    }
    if bad > errored {
        eprintln!(
            "{} of {n} pairs differ from their expected outcome",
            bad - errored
        );
    }
    if bad == 0 {
        println!("all {n} pairs as expected");
    }
}

fn resolve_kernel(spec: &str) -> Result<kernel::Kernel> {
    let parsed = kernel::KernelSpec::parse(spec)?;
    let p = report::Progress::new("kernel");
    let k = kernel::resolve(&parsed, spec, &mut |e| p.event(e));
    p.finish();
    k
}

/// The kernel (fetched or built, with a progress line) and the VM options from the flags for
/// it; KVM or TCG decided by [`kernel::prepare`] (one notice on fallback).
fn prepare(spec: &str, args: &VmArgs) -> Result<(kernel::Kernel, run::RunOptions)> {
    let p = report::Progress::new("kernel");
    let got = kernel::prepare(spec, &mut |e| p.event(e));
    p.finish();
    let (k, accel, notice) = got?;
    if let Some(n) = notice {
        eprintln!("note: {n}");
    }
    Ok((k, vm_options(accel, args)?))
}

/// VM options from the flags, for `accel`.
fn vm_options(accel: vm::Accel, args: &VmArgs) -> Result<run::RunOptions> {
    let mut opts = run::RunOptions::new(accel);
    opts.timeout = Duration::from_secs(args.timeout);
    opts.keep = args.keep;
    opts.memory = args.memory.clone();
    opts.cpus = args.cpus;
    opts.kernel_args = args.kernel_args.clone();
    if !args.kernel_args.is_empty() {
        eprintln!("note: kernel command line + {}", args.kernel_args.join(" "));
    }
    opts.root = args
        .image
        .as_deref()
        .map(dmcache_vmtest::image::resolve)
        .transpose()?;
    Ok(opts)
}

fn cmd_review(
    req: &dmcache_vmtest::review::Request,
    json: Option<&std::path::Path>,
    markdown: Option<&std::path::Path>,
) -> Result<i32> {
    use dmcache_vmtest::review;
    use std::io::IsTerminal;
    let p = report::Progress::new("review");
    let tty = std::io::stderr().is_terminal();
    // A log (CI, a file) gets every line; a terminal gets them above a spinner.
    let got = review::review(req, &|e| {
        if tty {
            p.event(e)
        } else if let Some(line) = e.plain() {
            eprintln!("{line}")
        }
    });
    p.finish();
    let r = got?;
    let md = review::answer::markdown(&r, &review::tested_by());
    println!("{md}");
    if let Some(f) = json {
        let text = serde_json::to_string_pretty(&review::answer::to_json(&r))? + "\n";
        std::fs::write(f, text).with_context(|| format!("writing {}", f.display()))?;
    }
    if let Some(f) = markdown {
        std::fs::write(f, &md).with_context(|| format!("writing {}", f.display()))?;
    }
    Ok(r.outcome().exit_code())
}

fn cmd_case(name: &str, args: &RunArgs, verbose: bool) -> Result<i32> {
    let path = case::find(name)?;
    let case = case::load(&path)?;
    if args.record && !args.vm.keep {
        anyhow::bail!("--record writes its log into the work dir: add --keep to keep it");
    }
    let (k, mut opts) = prepare(&args.kernel, &args.vm)?;
    opts.record = args.record;
    let progress = report::Progress::new(&case.name);
    let outcome = run::run_case(&case, &k, &opts, &mut |e| progress.event(e));
    progress.finish();
    let outcome = outcome?;
    let verdict = check::evaluate(&case, &outcome);
    print!("{}", report::render(&verdict, verbose));
    if let Some(j) = &args.json {
        std::fs::write(j, report::to_json(&verdict))
            .with_context(|| format!("cannot write {}", j.display()))?;
    }
    Ok(verdict.status.exit_code())
}

fn cmd_crashpoints(a: &CrashpointsArgs) -> Result<i32> {
    use dmcache_vmtest::crashpoints;
    let case = case::load(&case::find(&a.name)?)?;
    let cp = crashpoints::Options {
        states_per_epoch: a.states,
        seed: a.seed,
        only: a.state.clone(),
        vm_tier: !a.host_only,
    };
    let r = match &a.log {
        Some(log) => crashpoints::run_log(&case, log, &cp)?,
        None => {
            let (k, opts) = prepare(&a.run.kernel, &a.run.vm)?;
            let progress = report::Progress::new(&case.name);
            let got = crashpoints::run(&case, &k, &opts, &cp, &mut |e| progress.event(e));
            progress.finish();
            got?
        }
    };
    print!("{}", crashpoints::render(&r));
    if let Some(j) = &a.run.json {
        let text = serde_json::to_string_pretty(&r)? + "\n";
        std::fs::write(j, text).with_context(|| format!("cannot write {}", j.display()))?;
    }
    Ok(r.status().exit_code())
}

/// `kernel list [debian[:SERIES]]`.
fn cmd_kernel_list(what: &str, refresh: bool, sources: bool, json: bool) -> Result<i32> {
    let what = match what {
        w if sources && debian::version::is_series(w) => format!("debian:{w}"),
        w => w.to_string(),
    };
    let what = what.as_str();
    let filter = match what.strip_prefix("debian") {
        Some("") => None,
        Some(f) => match f.strip_prefix(':') {
            Some(f) if !f.is_empty() => Some(f),
            _ => anyhow::bail!("`{what}`: write debian or debian:SERIES (e.g. debian:6.18)"),
        },
        None => {
            anyhow::bail!("`{what}`: only Debian's archive is listed (debian or debian:SERIES)")
        }
    };
    let archive = debian::Archive::open()?;
    let mode = if refresh {
        debian::Refresh::Force
    } else {
        debian::Refresh::IfStale
    };
    let p = report::Progress::new("debian");
    if sources {
        if let Some(f) = filter.filter(|f| !debian::version::is_series(f)) {
            anyhow::bail!("`debian:{f}`: --sources lists a series (e.g. 6.18) or all");
        }
        if refresh {
            archive.index(mode, &mut |e| p.event(e))?;
        }
        let rows = debian::source_rows(filter, &mut |e| p.event(e));
        p.finish();
        print!("{}", debian::render_source_rows(&rows?));
        return Ok(0);
    }
    let got = archive.index(mode, &mut |e| p.event(e));
    p.finish();
    let (index, info) = got?;
    for w in &info.warnings {
        eprintln!("warning: {w}");
    }
    let age = info
        .updated_at
        .and_then(|t| t.elapsed().ok())
        .map(|d| match d.as_secs() {
            s if s < 120 => format!("{s} s ago"),
            s if s < 7200 => format!("{} min ago", s / 60),
            s => format!("{} h ago", s / 3600),
        })
        .unwrap_or_else(|| "never".into());
    eprintln!(
        "suites: {} (mirror from {}; index refreshed {age}{})",
        archive
            .suites
            .iter()
            .filter(|s| !archive.skipped.contains(s))
            .cloned()
            .collect::<Vec<_>>()
            .join(" "),
        archive.mirrors.from,
        if archive.skipped.is_empty() {
            String::new()
        } else {
            format!(
                "; left out, no security mirror in the host's apt: {}",
                archive.skipped.join(" ")
            )
        }
    );
    let entries: Vec<debian::KernelEntry> = index
        .kernels()
        .into_iter()
        .filter(|e| filter.is_none_or(|f| debian::index::matches_filter(e, f)))
        .collect();
    if entries.is_empty() {
        anyhow::bail!(
            "no Debian kernel matches `{what}` in these suites (set DMCACHE_VMTEST_DEBIAN_SUITES for others)"
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(0);
    }
    print!(
        "{}",
        debian::index::render_list(&entries, &|abi| debian::kernel_dir(abi)
            .join(".complete")
            .exists())
    );
    Ok(0)
}

/// `bisect`: the ordered kernels (a Debian range or a list), then [`bisect::bisect`] with a
/// runner that fetches each kernel, runs the case and evaluates it.
fn cmd_bisect(
    name: &str,
    kernels: &str,
    json: Option<&std::path::Path>,
    vm_args: &VmArgs,
) -> Result<i32> {
    let case = case::load(&case::find(name)?)?;
    let specs = match bisect::parse_kernels(kernels)? {
        bisect::KernelsArg::List(l) => l,
        bisect::KernelsArg::Range(a, b) => {
            let p = report::Progress::new("debian");
            let trees = (
                a.strip_prefix("build:debian:"),
                b.strip_prefix("build:debian:"),
            );
            let range = match trees {
                (Some(lo), Some(hi)) => debian::tree_range(lo, hi, &mut |e| p.event(e)),
                _ => debian::kernel_range(&a, &b, &mut |e| p.event(e)),
            };
            p.finish();
            let range = range?;
            let left_out = (!range.left_out.is_empty())
                .then(|| format!("left out, cannot be had: {}", range.left_out.join(", ")));
            if range.kernels.len() < 2 {
                anyhow::bail!(
                    "--kernels {kernels}: {} available kernel(s) in the range [{}]{}: bisect needs two",
                    range.kernels.len(),
                    range.kernels.join(", "),
                    left_out.map(|l| format!("; {l}")).unwrap_or_default()
                );
            }
            if let Some(l) = left_out {
                eprintln!("{l}");
            }
            range.kernels
        }
    };
    for s in &specs {
        kernel::KernelSpec::parse(s)?; // a typo fails now, not after the first boots
    }
    eprintln!("{} kernels: {}", specs.len(), specs.join(" "));
    let mut runner = |spec: &str| -> Result<bisect::Outcome> {
        let (k, opts) = prepare(spec, vm_args)?;
        let progress = report::Progress::new(&format!("{} on {spec}", case.name));
        let outcome = run::run_case(&case, &k, &opts, &mut |e| progress.event(e));
        progress.finish();
        let verdict = check::evaluate(&case, &outcome?);
        let o = bisect::Outcome {
            status: verdict.status,
            classifications: verdict
                .classifications
                .iter()
                .map(|(k, c)| (k.clone(), c.label.clone()))
                .collect(),
            release: verdict.release.clone(),
            cache_target: verdict.cache_target.clone(),
            seconds: verdict.seconds,
        };
        eprintln!("{spec}: {} ({:.0} s)", o.key(), o.seconds);
        Ok(o)
    };
    let r = bisect::bisect(&case.name, &specs, &mut runner)?;
    print!("{}", bisect::render(&r));
    if let Some(j) = json {
        std::fs::write(j, report::to_json(&r))
            .with_context(|| format!("cannot write {}", j.display()))?;
    }
    Ok(r.exit_code())
}
