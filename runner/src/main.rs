//! CLI: clap commands only; the work is in the library modules.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use dmcache_vmtest::{case, check, kernel, report, run, vm};
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
    /// Kernel: a bzImage (`PATH[,modules=DIR]`), a dir with boot/vmlinuz-*, `debian:VERSION`
    /// (e.g. debian:6.12.117+deb12, debian:6.1.0-56, debian:6.12 = newest), or `build:SRC[,PATCH…]`.
    #[arg(long, env = "DMCACHE_VMTEST_KERNEL", default_value = kernel::DEFAULT_SPEC)]
    kernel: String,
    /// Keep disk images, results and console logs, and print where.
    #[arg(long)]
    keep: bool,
    /// Per-boot timeout in seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Write the verdict as JSON to FILE.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Guest memory (QEMU syntax), overrides the case.
    #[arg(long)]
    memory: Option<String>,
    /// Guest vCPUs, overrides the case.
    #[arg(long)]
    cpus: Option<u32>,
    /// Guest userspace: a pinned image from images/ (`image build NAME` first); default: the host root, read-only.
    #[arg(long)]
    image: Option<String>,
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
    /// Kernels: fetch into the cache.
    Kernel {
        #[command(subcommand)]
        cmd: KernelCmd,
    },
    /// Time bare boots and a case on one kernel; print per-boot times and the runner's overhead.
    Bench {
        #[arg(default_value = "unclean_passthrough")]
        name: String,
        /// Bare boots and case runs to time (min/median/max over them).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Also time bare boots of this kernel (e.g. the Debian kernel vs a minimal build).
        #[arg(long)]
        compare: Option<String>,
        /// Write the phases of every boot as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        #[command(flatten)]
        args: RunArgs,
    },
    /// Run a kernel × case matrix (YAML) and compare every pair with its expected outcome.
    Matrix {
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
        #[arg(long)]
        keep: bool,
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Only these kernels (names in the matrix, comma-separated).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Guest userspace image (see `image build`).
        #[arg(long)]
        image: Option<String>,
        /// Copy every run's console logs and results (not the disks) under DIR.
        #[arg(long)]
        logs: Option<PathBuf>,
    },
    /// Pinned guest userspace images (images/*.yaml).
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// Check host tools, QEMU, KVM and vng; say how to fix each gap.
    Doctor {
        #[arg(long, env = "DMCACHE_VMTEST_KERNEL", default_value = kernel::DEFAULT_SPEC)]
        kernel: String,
    },
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
            eprintln!("error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

fn dispatch(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Case { name, args } => cmd_case(&name, &args, cli.verbose),
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
        } => {
            let items: Vec<PathBuf> = patch.into_iter().chain(kconfig).collect();
            let mut req = kernel::build_request(&src, &items)?;
            if let Some(j) = jobs {
                req.jobs = j;
            }
            let p = report::Progress::new("build");
            let built = dmcache_vmtest::kbuild::build(&req, &mut |m| p.message(m));
            p.finish();
            let b = built?;
            println!("{}", b.bzimage.display());
            eprintln!(
                "release {}  {}  {:.1} s  (key {})",
                b.release,
                if b.cache_hit { "cache hit" } else { "built" },
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
        Cmd::Kernel {
            cmd: KernelCmd::Fetch { spec },
        } => {
            let k = resolve_kernel(&spec)?;
            println!("{}", k.image.display());
            eprintln!(
                "release {}  dm-cache {:?}",
                k.release.as_deref().unwrap_or("?"),
                k.dm_cache
            );
            Ok(0)
        }
        Cmd::Bench {
            name,
            runs,
            compare,
            json,
            args,
        } => {
            let case = case::load(&case::find(&name)?)?;
            let k = resolve_kernel(&args.kernel)?;
            let opts = run_options(&k, &args)?;
            let p = report::Progress::new("bench");
            p.message(&format!(
                "{runs} bare boots, then {} {runs} times",
                case.name
            ));
            let r = dmcache_vmtest::bench::bench(&case, &k, &opts, runs);
            p.finish();
            let r = r?;
            print!("{}", dmcache_vmtest::bench::render(&r));
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&r)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            if let Some(other) = compare {
                let k2 = resolve_kernel(&other)?;
                let mut o2 = run_options(&k2, &args)?;
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
        Cmd::Matrix {
            file,
            jobs,
            repeat,
            junit,
            summary,
            json,
            keep,
            timeout,
            only,
            logs,
            image,
        } => {
            let mut m = dmcache_vmtest::matrix::load(&file)?;
            if !only.is_empty() {
                m = m.only(&only)?;
            }
            let mut opts = run::RunOptions::new(vm::Accel::Tcg);
            opts.keep = keep;
            opts.timeout = Duration::from_secs(timeout);
            opts.save_logs = logs;
            opts.root = image
                .as_deref()
                .map(dmcache_vmtest::image::resolve)
                .transpose()?;
            let jobs = jobs.unwrap_or_else(dmcache_vmtest::matrix::default_jobs);
            let ui = report::MultiUi::new();
            // Every pair gets a row: a host error (kernel fetch, …) is that pair's ERROR.
            let results =
                dmcache_vmtest::matrix::run(&m, jobs, repeat, &opts, &|l, e| ui.event(l, e));
            ui.finish();
            print!("{}", report::matrix_table(&results));
            let write = |p: &Option<PathBuf>, text: String| -> Result<()> {
                if let Some(p) = p {
                    std::fs::write(p, text)
                        .with_context(|| format!("cannot write {}", p.display()))?;
                }
                Ok(())
            };
            write(&junit, report::matrix_junit(&results))?;
            write(&summary, report::matrix_markdown(&results))?;
            write(&json, report::to_json(&results))?;
            let n = results.len();
            let errored = results.iter().filter(|r| r.errored()).count();
            let bad = results.iter().filter(|r| !r.ok()).count();
            if errored > 0 {
                eprintln!(
                    "{errored} of {n} pairs could not be judged (host or infrastructure error)"
                );
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
            Ok(dmcache_vmtest::matrix::exit_code(&results))
        }
        Cmd::Image {
            cmd: ImageCmd::Build { name },
        } => {
            let p = report::Progress::new(&format!("image {name}"));
            let dir = dmcache_vmtest::image::build(&name, &mut |m| p.message(m));
            p.finish();
            println!("{}", dir?.display());
            Ok(0)
        }
        Cmd::Doctor { kernel } => Ok(dmcache_vmtest::doctor::run(&kernel)),
    }
}

fn resolve_kernel(spec: &str) -> Result<kernel::Kernel> {
    let parsed = kernel::KernelSpec::parse(spec)?;
    let p = report::Progress::new("kernel");
    let k = kernel::resolve(&parsed, spec, &mut |m| p.message(m));
    p.finish();
    k
}

/// VM options from the flags; decides KVM or TCG (one notice on fallback).
fn run_options(k: &kernel::Kernel, args: &RunArgs) -> Result<run::RunOptions> {
    let (accel, notice) = vm::choose_accel(&k.image)?;
    if let Some(n) = notice {
        eprintln!("note: {n}");
    }
    let mut opts = run::RunOptions::new(accel);
    opts.timeout = Duration::from_secs(args.timeout);
    opts.keep = args.keep;
    opts.memory = args.memory.clone();
    opts.cpus = args.cpus;
    opts.root = args
        .image
        .as_deref()
        .map(dmcache_vmtest::image::resolve)
        .transpose()?;
    Ok(opts)
}

fn cmd_case(name: &str, args: &RunArgs, verbose: bool) -> Result<i32> {
    let path = case::find(name)?;
    let case = case::load(&path)?;
    let k = resolve_kernel(&args.kernel)?;
    let opts = run_options(&k, args)?;
    let mut progress = report::Progress::new(&case.name);
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
