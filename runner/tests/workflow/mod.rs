//! Host trials of `.github/workflows/matrix.yml` (no VM, no kernel build): what can be
//! simulated of a workflow that only GitHub runs.  The workflow is parsed, its job matrices
//! resolved from the runner's own `matrix matrix.yaml --list-builds`, its steps' `run:` blocks
//! shellchecked and some of them run here (the plan step, the KVM guard, and a build job's
//! steps feeding a test job's on a fake kernel tree with fake `make` and `vng`).  Issue 20's
//! findings 1–9 are each checked by one of these (docs/ci-workflow.md).

use libtest_mimic::Failed;
use serde_json::{json, Value as Json};
use serde_yaml_ng::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_dmcache-vmtest");

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

type R<T> = Result<T, Failed>;

fn fail<T>(msg: impl Into<String>) -> R<T> {
    Err(msg.into().into())
}

pub fn workflow() -> R<Value> {
    let path = repo().join(".github/workflows/matrix.yml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()).into())
}

fn job<'a>(wf: &'a Value, name: &str) -> R<&'a Value> {
    wf["jobs"]
        .get(name)
        .ok_or_else(|| format!("the workflow has no job `{name}`").into())
}

fn steps(job: &Value) -> Vec<&Value> {
    job["steps"]
        .as_sequence()
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The first step of `job` whose `id`, `name` or `uses` starts with `what`.
fn step<'a>(job: &'a Value, what: &str) -> R<&'a Value> {
    steps(job)
        .into_iter()
        .find(|st| {
            ["id", "name", "uses"]
                .iter()
                .any(|k| s(st, k).starts_with(what))
        })
        .ok_or_else(|| format!("no step `{what}`").into())
}

/// Every `run:` block: (job, step name, script).
fn run_blocks(wf: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (name, j) in wf["jobs"].as_mapping().into_iter().flatten() {
        for (i, st) in steps(j).into_iter().enumerate() {
            if let Some(run) = st.get("run").and_then(Value::as_str) {
                let label = format!("{} (step {})", s(st, "name"), i + 1);
                out.push((name.as_str().unwrap_or("").into(), label, run.into()));
            }
        }
    }
    out
}

/// `${{ … }}` replaced: paths like `matrix.tree.id` from `ctx`, `hashFiles(…)` by a
/// stand-in once every pattern matches a file of the repository; anything else is an error.
fn resolve(template: &str, ctx: &Json) -> R<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("${{") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find("}}")
            .ok_or_else(|| format!("unclosed expression in `{template}`"))?;
        let expr = rest[start + 3..start + end].trim();
        out.push_str(&eval(expr, ctx)?);
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn eval(expr: &str, ctx: &Json) -> R<String> {
    if let Some(args) = expr
        .strip_prefix("hashFiles(")
        .and_then(|a| a.strip_suffix(')'))
    {
        for pat in args.split(',') {
            let pat = pat.trim().trim_matches('\'');
            if pat.contains("matrix.yaml") {
                return fail(format!(
                    "a cache key hashes `{pat}`: matrix.yaml is not a build input"
                ));
            }
            if !pattern_matches(pat) {
                return fail(format!(
                    "hashFiles('{pat}') matches no file of the repository"
                ));
            }
        }
        return Ok("HASHFILES".into());
    }
    let mut v = ctx;
    for part in expr.split('.') {
        v = v
            .get(part)
            .ok_or_else(|| format!("`{expr}`: not in the simulated context"))?;
    }
    Ok(match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// `dir/**` (some file below dir) or an exact file.
fn pattern_matches(pat: &str) -> bool {
    fn any_file(d: &Path) -> bool {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let p = e.path();
                p.is_file() || (p.is_dir() && any_file(&p))
            })
    }
    match pat.strip_suffix("/**") {
        Some(dir) => any_file(&repo().join(dir)),
        None => !pat.contains('*') && repo().join(pat).is_file(),
    }
}

/// The runner's build plan of matrix.yaml.
pub fn plan() -> R<Json> {
    let out = Command::new(BIN)
        .args(["matrix", "matrix.yaml", "--list-builds"])
        .current_dir(repo())
        .output()
        .map_err(|e| format!("cannot run {BIN}: {e}"))?;
    if !out.status.success() {
        return fail(format!("--list-builds failed: {out:?}"));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("--list-builds: {e}").into())
}

fn items<'a>(v: &'a Json, key: &str) -> Vec<&'a Json> {
    v[key]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a `run:` block as GitHub's `shell: bash` does (`bash --noprofile --norc -eo pipefail`).
fn run_block(script: &str, cwd: &Path, env: &[(&str, &Path)]) -> R<Output> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = dir.path().join("step.sh");
    std::fs::write(&file, script).map_err(|e| e.to_string())?;
    let mut cmd = Command::new("bash");
    cmd.args(["--noprofile", "--norc", "-eo", "pipefail"])
        .arg(&file)
        .current_dir(cwd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output()
        .map_err(|e| format!("cannot run bash: {e}").into())
}

/// Every `run:` block passes shellcheck as the bash script GitHub runs (`set -eo pipefail`),
/// with each `${{ … }}` replaced by a plain word; and no line that writes `$GITHUB_OUTPUT` or
/// `$GITHUB_ENV` takes a `$(…)` (finding 4: its failure would not fail the step).
pub fn shellcheck() -> R<()> {
    let wf = workflow()?;
    let expr = regex::Regex::new(r"\$\{\{.*?\}\}").unwrap();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    for (i, (job, step, run)) in run_blocks(&wf).into_iter().enumerate() {
        for line in run.lines() {
            let writes = line.contains("GITHUB_OUTPUT") || line.contains("GITHUB_ENV");
            if writes && (line.contains("$(") || line.contains('`')) {
                problems.push(format!("{job} / {step}: `$(…)` on a line that writes an output hides its failure: {line}"));
            }
        }
        let file = dir.path().join(format!("{i}.sh"));
        let body = expr.replace_all(&run, "PLACEHOLDER");
        std::fs::write(
            &file,
            format!("#!/usr/bin/env bash\nset -eo pipefail\n{body}"),
        )
        .map_err(|e| e.to_string())?;
        let out = Command::new("shellcheck")
            .arg(&file)
            .output()
            .map_err(|e| format!("cannot run shellcheck (apt-get install shellcheck): {e}"))?;
        if !out.status.success() {
            problems.push(format!("{job} / {step}:\n{}", text(&out)));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        fail(problems.join("\n"))
    }
}

/// Finding 4: the plan step, run here, gives the runner's list as its output; with a
/// runner that fails (after printing half a list) the step fails and writes no output.
pub fn plan_step() -> R<()> {
    let wf = workflow()?;
    let plan_job = job(&wf, "plan")?;
    let run = s(step(plan_job, "plan")?, "run").to_string();
    let want = plan()?;
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let bad = tmp.path().join("bad-runner");
    std::fs::write(&bad, "#!/bin/sh\necho '{\"trees\": ['\nexit 3\n").map_err(|e| e.to_string())?;
    make_exec(&bad)?;
    for (bin, ok) in [(PathBuf::from(BIN), true), (bad, false)] {
        let out_file = tmp.path().join(format!("output-{ok}"));
        let out = run_block(
            &run,
            &repo(),
            &[
                ("DMCACHE_VMTEST_BIN", &bin),
                ("RUNNER_TEMP", tmp.path()),
                ("GITHUB_OUTPUT", &out_file),
            ],
        )?;
        let written = std::fs::read_to_string(&out_file).unwrap_or_default();
        if !ok {
            if out.status.success() || written.contains("plan=") {
                return fail(format!(
                    "with a failing runner the plan step went green or wrote `plan=`: {:?}\n{written}",
                    out.status
                ));
            }
            continue;
        }
        if !out.status.success() {
            return fail(format!("the plan step failed: {}", text(&out)));
        }
        let get = |k: &str| {
            written
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(str::to_string)
        };
        let got: Json = serde_json::from_str(&get("plan").unwrap_or_default())
            .map_err(|e| format!("plan= is not JSON ({e}): {written}"))?;
        if got != want {
            return fail("the plan step's `plan` output is not the runner's --list-builds");
        }
        let n = want["trees"].as_array().map_or(0, |a| a.len()).to_string();
        if get("trees").as_deref() != Some(n.as_str()) {
            return fail(format!(
                "the plan step's `trees` output is not {n}: {written}"
            ));
        }
    }
    Ok(())
}

fn make_exec(p: &Path) -> R<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", p.display()).into())
}

/// The jobs' matrices resolved from the runner's plan: every test job's kernel is produced by
/// a build job (artifact names resolved per leg), every `build:` kernel of the matrix has a
/// tree, and the runner binary is built once and handed on (finding 3).
pub fn wiring(m: &dmcache_vmtest::matrix::Matrix) -> R<()> {
    let wf = workflow()?;
    let plan = plan()?;
    let (build, test) = (job(&wf, "build")?, job(&wf, "test")?);
    let from_plan = |j: &Value, key: &str, what: &str| -> R<()> {
        let got = s(&j["strategy"]["matrix"], key);
        let want = format!("${{{{ fromJSON(needs.plan.outputs.plan).{what} }}}}");
        if got != want {
            return fail(format!("matrix.{key} is `{got}`, not `{want}`"));
        }
        Ok(())
    };
    from_plan(build, "tree", "trees")?;
    from_plan(test, "kernel", "kernels")?;
    let names: Vec<&str> = items(&plan, "kernels")
        .iter()
        .filter_map(|k| k["name"].as_str())
        .collect();
    if names != m.kernel_names() {
        return fail(format!("the plan's kernels {names:?} are not the matrix's"));
    }
    let upload = s(&step(build, "actions/upload-artifact")?["with"], "name");
    let mut produced = BTreeSet::new();
    for t in items(&plan, "trees") {
        produced.insert(resolve(upload, &json!({ "matrix": { "tree": t } }))?);
    }
    let download = s(
        &step(test, "The kernel from its build job")?["with"],
        "name",
    );
    for k in items(&plan, "kernels") {
        let name = k["name"].as_str().unwrap_or("");
        let built = m.kernels[name].spec.starts_with("build:");
        let tree = k["tree"].as_str().unwrap_or("");
        if built == tree.is_empty() {
            return fail(format!(
                "kernel {name}: built {built}, but its tree is `{tree}`"
            ));
        }
        if !built {
            continue;
        }
        let art = resolve(download, &json!({ "matrix": { "kernel": k } }))?;
        if !produced.contains(&art) {
            return fail(format!(
                "test {name} downloads `{art}`, which no build job uploads"
            ));
        }
        let t = items(&plan, "trees")
            .into_iter()
            .find(|t| t["id"] == k["tree"]);
        let b = t.and_then(|t| {
            items(t, "builds")
                .into_iter()
                .find(|b| b["id"] == k["build"])
        });
        let has = b.is_some_and(|b| items(b, "kernels").iter().any(|n| n.as_str() == Some(name)));
        if !has {
            return fail(format!(
                "kernel {name}: its tree's build job does not build it"
            ));
        }
    }
    runner_once(&wf)
}

/// Finding 3 (second half): only `plan` builds the runner; every job that runs it downloads it.
fn runner_once(wf: &Value) -> R<()> {
    for (name, j) in wf["jobs"].as_mapping().into_iter().flatten() {
        let name = name.as_str().unwrap_or("");
        let runs: String = steps(j).iter().map(|st| s(st, "run")).collect();
        if runs.contains("cargo build") && name != "plan" {
            return fail(format!("job {name} builds the runner again"));
        }
        if runs.contains(".bin/dmcache-vmtest") {
            let dl = steps(j).into_iter().any(|st| {
                s(st, "uses").starts_with("actions/download-artifact")
                    && s(&st["with"], "name") == "runner"
            });
            if !dl {
                return fail(format!(
                    "job {name} runs .bin/dmcache-vmtest without downloading it"
                ));
            }
        }
    }
    Ok(())
}

/// Findings 1, 2, 6 (keys): the build job restores and saves its own cache (`if: always()`,
/// the restored key), keyed on what the builds depend on (every hashFiles pattern and every
/// input the runner names exists; never matrix.yaml), and no tree's key or restore prefix
/// matches another tree's key.  No combined `actions/cache` anywhere.
pub fn cache_keys() -> R<()> {
    let wf = workflow()?;
    let plan = plan()?;
    for (name, j) in wf["jobs"].as_mapping().into_iter().flatten() {
        let caches = steps(j)
            .iter()
            .any(|st| s(st, "uses").starts_with("actions/cache"));
        if caches && name.as_str() != Some("build") {
            return fail(format!(
                "job {name:?} caches: only build jobs do (fetched Debian kernels take seconds)"
            ));
        }
        if steps(j)
            .iter()
            .any(|st| s(st, "uses").starts_with("actions/cache@"))
        {
            return fail("a combined actions/cache step saves only when its job succeeds: use cache/restore + cache/save");
        }
    }
    let build = job(&wf, "build")?;
    let restore = step(build, "restore")?;
    let save = step(build, "actions/cache/save")?;
    if !s(restore, "uses").starts_with("actions/cache/restore@") {
        return fail("the build job's `restore` step is not actions/cache/restore");
    }
    if !s(save, "if").contains("always()") {
        return fail("the cache save step does not run after a failed build (`if: always()`)");
    }
    if s(&save["with"], "key") != "${{ steps.restore.outputs.cache-primary-key }}" {
        return fail("the save step's key is not the key the restore step computed");
    }
    if s(&save["with"], "path") != s(&restore["with"], "path") {
        return fail("the save step saves other paths than the restore step restores");
    }
    let (key_t, prefix_t) = (
        s(&restore["with"], "key"),
        s(&restore["with"], "restore-keys"),
    );
    let mut keys = Vec::new();
    for t in items(&plan, "trees") {
        for input in items(t, "inputs") {
            let p = input.as_str().unwrap_or("");
            if !repo().join(p).is_file() {
                return fail(format!(
                    "tree {}: input {p} is not a file of the repository",
                    t["id"]
                ));
            }
        }
        let ctx = json!({ "matrix": { "tree": t } });
        keys.push((
            t["id"].to_string(),
            resolve(key_t, &ctx)?,
            resolve(prefix_t, &ctx)?,
        ));
    }
    for (a, key, prefix) in &keys {
        if !key.starts_with(prefix.as_str()) {
            return fail(format!(
                "tree {a}: key {key} does not start with its prefix {prefix}"
            ));
        }
        for (b, other, _) in keys.iter().filter(|(b, ..)| b != a) {
            if other.starts_with(prefix.as_str()) || other.starts_with(key.as_str()) {
                return fail(format!(
                    "tree {a}'s key {key} / prefix {prefix} matches tree {b}'s key {other}"
                ));
            }
        }
    }
    Ok(())
}

/// Findings 5–9, as settings: pinned runners, a concurrency group that cancels, pushes of
/// main only, the Debian mirrors set, vng at an absolute venv path in every job that runs the
/// runner (nothing from HOME, no pip --user), the lint job, the accelerator demanded per pair,
/// the coverage summary and the review job.
pub fn settings() -> R<()> {
    let wf = workflow()?;
    let mut problems = Vec::new();
    let mut want = |ok: bool, what: &str| {
        if !ok {
            problems.push(what.to_string());
        }
    };
    let on = &wf["on"];
    let branches = on["push"]["branches"]
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    want(
        branches == [Value::from("main")],
        "on.push is not filtered to main (a PR's push would run twice)",
    );
    want(on.get("pull_request").is_some(), "no pull_request trigger");
    want(
        on["workflow_dispatch"]["inputs"].get("patch").is_some(),
        "no workflow_dispatch input `patch`",
    );
    want(
        on["workflow_dispatch"]["inputs"].get("accel").is_some(),
        "no workflow_dispatch input `accel`",
    );
    want(
        wf["concurrency"]["cancel-in-progress"].as_bool() == Some(true),
        "no concurrency group with cancel-in-progress",
    );
    want(
        s(&wf["defaults"]["run"], "shell") == "bash",
        "run blocks are not `shell: bash` (-eo pipefail)",
    );
    for m in [
        "DMCACHE_VMTEST_DEBIAN_MIRROR",
        "DMCACHE_VMTEST_DEBIAN_SECURITY_MIRROR",
    ] {
        want(
            s(&wf["env"], m).starts_with("http"),
            &format!("{m} is not set for every job (finding 5)"),
        );
    }
    let vng = "${{ github.workspace }}/.tools/vng/bin/vng";
    for (name, j) in wf["jobs"].as_mapping().into_iter().flatten() {
        let name = name.as_str().unwrap_or("");
        want(
            s(j, "runs-on") == "ubuntu-24.04",
            &format!("job {name}: runs-on is not ubuntu-24.04"),
        );
        let runs: String = steps(j)
            .iter()
            .map(|st| format!("{}\n", s(st, "run")))
            .collect();
        if runs.contains("setup-host.sh") {
            want(
                s(&j["env"], "DMCACHE_VMTEST_VNG") == vng,
                &format!("job {name}: DMCACHE_VMTEST_VNG is not {vng}"),
            );
        }
        want(
            !runs.contains(".local/bin") && !runs.contains("--user"),
            &format!("job {name}: vng from ~/.local (finding 7)"),
        );
        want(
            !runs.contains("apt-get install"),
            &format!("job {name}: its own apt-get list (use scripts/setup-host.sh)"),
        );
    }
    let lint: String = job(&wf, "lint").map(|j| {
        steps(j)
            .iter()
            .map(|st| format!("{}\n", s(st, "run")))
            .collect()
    })?;
    for cmd in [
        "cargo fmt --all -- --check",
        "cargo clippy --locked --all-targets -- -D warnings",
        "cargo test --locked --lib",
        "cargo test --locked --test cases -- workflow",
    ] {
        want(
            lint.contains(cmd),
            &format!("the lint job does not run `{cmd}` (finding 8)"),
        );
    }
    let run_pairs = s(step(job(&wf, "test")?, "Run the pairs")?, "run");
    want(
        run_pairs.contains("--expect-accel \"$ACCEL\""),
        "the test job does not demand its accelerator (finding 9)",
    );
    want(
        s(&job(&wf, "test")?["env"], "ACCEL") == "${{ inputs.accel || 'kvm' }}",
        "the test job does not expect KVM by default",
    );
    let summary = s(step(job(&wf, "summary")?, "Coverage table")?, "run");
    want(
        summary.contains("--merge-coverage") && summary.contains("GITHUB_STEP_SUMMARY"),
        "no coverage table in the summary",
    );
    let review = s(step(job(&wf, "review")?, "dmcache-vmtest review")?, "run");
    want(
        review.contains("dmcache-vmtest review out/input.patch")
            && review.contains("--markdown out/review.md")
            && review.contains(">> \"$GITHUB_STEP_SUMMARY\""),
        "the review job does not put its reply in the summary",
    );
    if problems.is_empty() {
        Ok(())
    } else {
        fail(problems.join("\n"))
    }
}

/// Finding 6 (KVM): the Enable KVM step, run here as if /dev/kvm were absent (and with a
/// `sudo` that fails), succeeds with a warning instead of failing the job.
pub fn kvm_guard() -> R<()> {
    let wf = workflow()?;
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).map_err(|e| e.to_string())?;
    for tool in ["sudo", "udevadm"] {
        std::fs::write(
            bin.join(tool),
            "#!/bin/sh\necho \"$0 must not run\" >&2\nexit 1\n",
        )
        .map_err(|e| e.to_string())?;
        make_exec(&bin.join(tool))?;
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for name in ["test", "review"] {
        let run = s(step(job(&wf, name)?, "Enable KVM")?, "run");
        let absent = run.replace("/dev/kvm", &tmp.path().join("no-kvm").display().to_string());
        let out = run_block(&absent, tmp.path(), &[("PATH", Path::new(&path))])?;
        if !out.status.success() || !text(&out).contains("::warning::no ") {
            return fail(format!(
                "job {name}: Enable KVM without /dev/kvm: {:?}\n{}",
                out.status,
                text(&out)
            ));
        }
    }
    Ok(())
}

/// Finding 7 (the runner's half): nothing in runner/src starts a `vng` of PATH; every vng
/// it runs is `vm::vng_binary()` (`$DMCACHE_VMTEST_VNG`), kbuild's `--kconfig` and key too.
pub fn vng_everywhere() -> R<()> {
    let literal = regex::Regex::new(r#"Command::new\("vng"\)|\[\s*"vng"\s*,"#).unwrap();
    let mut bad = Vec::new();
    let mut stack = vec![repo().join("runner/src")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| e.to_string())?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            // unit tests may name vng (fake hosts); the code before them may not
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            for (i, line) in code.lines().enumerate() {
                if literal.is_match(line) {
                    bad.push(format!("{}:{}: {}", p.display(), i + 1, line.trim()));
                }
            }
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        fail(format!(
            "vng run from PATH, not $DMCACHE_VMTEST_VNG:\n{}",
            bad.join("\n")
        ))
    }
}

/// Finding 9: matrix.yaml says under which accelerator its outcomes were measured, and the
/// docs say how to re-measure them under KVM.
pub fn measured_accel() -> R<()> {
    let m = std::fs::read_to_string(repo().join("matrix.yaml")).map_err(|e| e.to_string())?;
    let head: String = m
        .lines()
        .take_while(|l| l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    if !(head.contains("TCG") && head.contains("KVM") && head.contains("DMCACHE_VMTEST_ACCEL")) {
        return fail("matrix.yaml's header does not say the outcomes were measured under TCG, none under KVM, and how to re-measure");
    }
    let doc = std::fs::read_to_string(repo().join("docs/ci-workflow.md"))
        .map_err(|e| format!("docs/ci-workflow.md: {e}"))?;
    for n in [
        "DMCACHE_VMTEST_ACCEL=kvm",
        "--expect-accel",
        "measured under TCG",
    ] {
        if !doc.contains(n) {
            return fail(format!("docs/ci-workflow.md does not mention `{n}`"));
        }
    }
    Ok(())
}

/// A fake kernel source (Makefile, Kconfig, a merge_config.sh that merges like the real one)
/// with a fake `make` (tinyconfig; bzImage: a copy of a minimal bzImage header;
/// kernelrelease) in `bin`, and a fake vng outside PATH (`vng/bin/vng`).
fn fake_kernel_tools(t: &Path) -> R<PathBuf> {
    let w = |p: &Path, text: &str, exec: bool| -> R<()> {
        std::fs::create_dir_all(p.parent().unwrap()).map_err(|e| e.to_string())?;
        std::fs::write(p, text).map_err(|e| e.to_string())?;
        if exec {
            make_exec(p)?;
        }
        Ok(())
    };
    let src = t.join("src");
    w(&src.join("Makefile"), "# fake\n", false)?;
    w(&src.join("Kconfig"), "# fake\n", false)?;
    w(
        &src.join("scripts/kconfig/merge_config.sh"),
        r#"#!/bin/sh
# merge_config.sh -m .config FRAG...: the last setting of each option wins
[ "$1" = -m ] && shift
out=$1; shift
cat "$out" "$@" | awk '
  /^CONFIG_[A-Za-z0-9_]+=/ { k = $0; sub(/=.*/, "", k) }
  /^# CONFIG_[A-Za-z0-9_]+ is not set$/ { k = $2 }
  !/^CONFIG_[A-Za-z0-9_]+=/ && !/^# CONFIG_[A-Za-z0-9_]+ is not set$/ { k = "line" NR }
  { if (!(k in v)) o[n++] = k; v[k] = $0 }
  END { for (i = 0; i < n; i++) print v[o[i]] }' > "$out.new"
mv "$out.new" "$out"
"#,
        true,
    )?;
    w(
        &t.join("bin/make"),
        r#"#!/bin/sh
lv=
for a in "$@"; do case $a in LOCALVERSION=*) lv=${a#LOCALVERSION=} ;; esac; done
for a in "$@"; do
  case $a in
  bzImage) mkdir -p arch/x86/boot && cp "$FAKE_BZIMAGE" arch/x86/boot/bzImage && echo "  LD      fake" ;;
  kernelrelease) echo "6.12.0$lv" ;;
  tinyconfig) echo CONFIG_FAKE=y > .config ;;
  esac
done
"#,
        true,
    )?;
    let vng = "#!/bin/sh\ncase $1 in\n--version) echo 'virtme-ng 1.42' ;;\n--kconfig) echo CONFIG_FAKE=y > .config ;;\n*) exit 1 ;;\nesac\n";
    w(&t.join("vng/bin/vng"), vng, true)?;
    let mut bz = vec![0u8; 0x400];
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    bz[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
    bz[0x300..0x30b].copy_from_slice(b"6.12.0-fake");
    std::fs::write(t.join("bzImage"), bz).map_err(|e| e.to_string())?;
    Ok(src)
}

/// Findings 1 and 3 end to end, on a fake kernel tree: the build job's build and stage steps,
/// run here, stage a kernel; unpacked into an empty cache root (as download-artifact does),
/// the test job's cache-hit step finds it without a rebuild.  With the source changed in
/// between (another key, as any difference between the two jobs' keys would give) the same
/// step sees the rebuild and fails.  vng is only at `$DMCACHE_VMTEST_VNG`, never on PATH.
pub fn artifact_is_a_cache_hit() -> R<()> {
    let wf = workflow()?;
    let (build, test) = (job(&wf, "build")?, job(&wf, "test")?);
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let t = tmp.path();
    let src = fake_kernel_tools(t)?;
    let ws = t.join("ws");
    std::fs::create_dir_all(ws.join(".bin")).map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink(BIN, ws.join(".bin/dmcache-vmtest")).map_err(|e| e.to_string())?;
    let spec = format!("build:{}", src.display());
    let tree = json!({ "builds": [{ "id": "fake-1", "spec": spec }] }).to_string();
    let path = format!(
        "{}:{}",
        t.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let vng = t.join("vng/bin/vng");
    let rt = t.join("rt");
    std::fs::create_dir(&rt).map_err(|e| e.to_string())?;
    let common = |cache: &Path, vng: &Path, script: &str| -> R<Output> {
        run_block(
            script,
            &ws,
            &[
                ("DMCACHE_VMTEST_CACHE", cache),
                ("DMCACHE_VMTEST_VNG", vng),
                ("RUNNER_TEMP", &rt),
                ("PATH", Path::new(&path)),
                ("FAKE_BZIMAGE", &t.join("bzImage")),
                ("TREE", Path::new(&tree)),
                ("KERNEL", Path::new("fake")),
                ("SPEC", Path::new(&spec)),
                ("BUILD", Path::new("fake-1")),
            ],
        )
    };
    for name in ["build", "Stage"] {
        let out = common(&t.join("cache-build"), &vng, s(step(build, name)?, "run"))?;
        if !out.status.success() {
            return fail(format!(
                "build job, step {name}: {:?}\n{}",
                out.status,
                text(&out)
            ));
        }
    }
    let ctx = json!({ "matrix": { "kernel": { "tree": "fake" } } });
    let hit = resolve(
        s(step(test, "The built kernel is a cache hit")?, "run"),
        &ctx,
    )?;
    for (cache, want_hit) in [("cache-test", true), ("cache-other", false)] {
        if !want_hit {
            std::fs::write(src.join("Makefile"), "# fake, changed\n").map_err(|e| e.to_string())?;
        }
        let cache = t.join(cache);
        std::fs::create_dir(&cache).map_err(|e| e.to_string())?;
        let cp = Command::new("cp")
            .arg("-a")
            .arg(rt.join("kernels/."))
            .arg(&cache)
            .status();
        if !cp.is_ok_and(|s| s.success()) {
            return fail("cannot copy the staged kernels");
        }
        let out = common(&cache, &vng, &hit)?;
        let said_rebuilt = text(&out).contains("was rebuilt here");
        if want_hit != out.status.success() || said_rebuilt == want_hit {
            return fail(format!(
                "test job's cache-hit step (expected {}): {:?}\n{}",
                if want_hit {
                    "a hit"
                } else {
                    "a detected rebuild"
                },
                out.status,
                text(&out)
            ));
        }
    }
    Ok(())
}
