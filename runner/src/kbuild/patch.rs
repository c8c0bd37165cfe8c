//! Patches on the shared build tree: which files they touch, pristine copies, apply,
//! and reset back to pristine.

use super::sha_hex;
use crate::event::Event;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

pub(super) struct PatchInput {
    pub(super) path: PathBuf,
    pub(super) bytes: Vec<u8>,
    pub(super) files: Vec<String>,
}

impl PatchInput {
    /// Reads a patch file and the files it touches; a patch that touches none is an error.
    pub(super) fn read(path: &Path) -> Result<PatchInput> {
        let bytes = fs::read(path).with_context(|| format!("reading patch {}", path.display()))?;
        let files = patch_paths(&String::from_utf8_lossy(&bytes))
            .with_context(|| format!("patch {}", path.display()))?;
        if files.is_empty() {
            bail!(
                "patch {} touches no files (no `--- a/…`/`+++ b/…` headers)",
                path.display()
            );
        }
        Ok(PatchInput {
            path: path.to_path_buf(),
            bytes,
            files,
        })
    }

    /// True if the patch touches a `Kconfig*` file (then the config must be made again).
    pub(super) fn touches_kconfig(&self) -> bool {
        self.files.iter().any(|f| {
            Path::new(f)
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("Kconfig"))
        })
    }
}

pub(super) fn patch_bytes(p: &[PatchInput]) -> Vec<&[u8]> {
    p.iter().map(|p| p.bytes.as_slice()).collect()
}

/// The files a unified diff touches (`-p1`), in order, without duplicates.  Reads
/// `--- a/X` + `+++ b/Y` header pairs and git `rename/copy from/to` lines.
pub(crate) fn patch_paths(text: &str) -> Result<Vec<String>> {
    fn strip1(p: &str) -> Option<String> {
        let p = p.split('\t').next().unwrap_or(p).trim_end();
        let p = p.trim_matches('"');
        if p == "/dev/null" {
            return None;
        }
        Some(p.split_once('/').map(|x| x.1).unwrap_or(p).to_string())
    }
    let mut out: Vec<String> = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut push = |p: String| -> Result<()> {
        let path = Path::new(&p);
        if p.is_empty()
            || path.is_absolute()
            || path
                .components()
                .any(|c| !matches!(c, Component::Normal(_)))
        {
            bail!("refusing path `{p}` in patch (must be relative, without `..`)");
        }
        if !out.contains(&p) {
            out.push(p);
        }
        Ok(())
    };
    // The files a variant restores come from these headers: a hunk this reader cannot see
    // would stay in the shared tree for the next variant, so other formats are refused.
    if let Some(n) = lines.iter().position(|l| *l == "***************") {
        bail!("line {}: a context diff (`***`/`---` hunks) — only unified diffs are taken: regenerate it with `diff -u` or `git diff`", n + 1);
    }
    for (i, l) in lines.iter().enumerate() {
        if let Some(f) = l.strip_prefix("diff --git ") {
            let next: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|n| !n.starts_with("diff --git "))
                .copied()
                .collect();
            if next
                .iter()
                .any(|n| n.starts_with("GIT binary patch") || n.starts_with("Binary files"))
            {
                bail!(
                    "line {}: a binary diff ({f}) — patch(1) cannot apply it",
                    i + 1
                );
            }
        }
        if let (Some(a), Some(b)) = (
            l.strip_prefix("--- "),
            lines.get(i + 1).and_then(|n| n.strip_prefix("+++ ")),
        ) {
            for p in [a, b].into_iter().filter_map(strip1) {
                push(p)?;
            }
        } else if let Some(p) = ["rename from ", "rename to ", "copy from ", "copy to "]
            .iter()
            .find_map(|pre| l.strip_prefix(pre))
        {
            push(p.trim().to_string())?;
        }
    }
    Ok(out)
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct TreeState {
    /// sha256 of the applied patch set; `None` = pristine (or unknown if `touched` is set).
    pub(super) applied: Option<String>,
    /// Display names of the applied patches (for humans).
    pub(super) patches: Vec<String>,
    /// Files (relative to the tree) that the applied/being-applied patches touch and
    /// whether each existed in the pristine tree (copy in `pristine/`).
    pub(super) touched: Vec<(String, bool)>,
}

pub(super) fn read_state(bdir: &Path) -> Result<TreeState> {
    match fs::read_to_string(bdir.join("state.json")) {
        Ok(s) => serde_json::from_str(&s).context("parsing state.json"),
        Err(_) => Ok(TreeState::default()),
    }
}

pub(super) fn write_state(bdir: &Path, st: &TreeState) -> Result<()> {
    let f = bdir.join("state.json");
    crate::cache::write_durable(&f, serde_json::to_string_pretty(st)?.as_bytes())
        .with_context(|| format!("writing {}", f.display()))
}

/// Put every file in `st.touched` back to pristine (new mtime → make rebuilds it).
pub(super) fn reset_tree(bdir: &Path, tree: &Path, st: &mut TreeState) -> Result<()> {
    let pristine = bdir.join("pristine");
    for (f, existed) in &st.touched {
        let dst = tree.join(f);
        for junk in [".rej", ".orig"] {
            let _ = fs::remove_file(format!("{}{junk}", dst.display()));
        }
        if *existed {
            let src = pristine.join(f);
            // Remove first: fs::copy onto a hard link or read-only file would be wrong.
            let _ = fs::remove_file(&dst);
            if let Some(d) = dst.parent() {
                fs::create_dir_all(d)?;
            }
            fs::copy(&src, &dst).with_context(|| format!("restoring pristine {f}"))?;
        } else if dst.exists() {
            fs::remove_file(&dst).with_context(|| format!("removing patch-created {f}"))?;
        }
    }
    st.applied = None;
    st.patches.clear();
    st.touched.clear();
    write_state(bdir, st)
}

/// `patch -p1 --forward --batch` of `file` in `tree` (`--dry-run` when asked): whether it
/// applied, and what it printed.
fn run_patch(tree: &Path, file: &Path, dry_run: bool) -> Result<(bool, String)> {
    let mut cmd = Command::new("patch");
    cmd.args(["-p1", "--forward", "--batch", "--no-backup-if-mismatch"]);
    if dry_run {
        cmd.arg("--dry-run");
    }
    let out = cmd
        .arg("-i")
        .arg(file)
        .current_dir(tree)
        .stdin(Stdio::null())
        .output()
        .context("running patch (apt-get install patch)")?;
    let mut msg = String::from_utf8_lossy(&out.stdout).into_owned();
    msg.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), msg))
}

/// The files `patch --dry-run` says it would change: `checking file X`, and for a rename or
/// copy `checking file X (renamed from Y)` names both.
fn dry_run_files(out: &str) -> Vec<String> {
    let mut files = Vec::new();
    for l in out.lines() {
        let Some(rest) = l.strip_prefix("checking file ") else {
            continue;
        };
        let (name, from) = match rest.split_once(" (") {
            Some((n, tail)) => {
                let from = tail
                    .trim_end_matches(')')
                    .strip_prefix("renamed from ")
                    .or_else(|| tail.trim_end_matches(')').strip_prefix("copied from "));
                (n, from)
            }
            None => (rest, None),
        };
        files.push(name.trim().to_string());
        if let Some(f) = from {
            files.push(f.trim().to_string());
        }
    }
    files
}

pub(super) fn apply_patch_set(
    bdir: &Path,
    tree: &Path,
    patches: &[PatchInput],
    progress: &mut dyn FnMut(Event),
) -> Result<()> {
    let want = sha_hex(&patch_bytes(patches));
    let mut st = read_state(bdir)?;
    if st.applied.as_deref() == Some(want.as_str()) {
        progress(Event::Prepare(
            "patch set already applied in the build tree".into(),
        ));
        return Ok(());
    }
    if !st.touched.is_empty() {
        progress(Event::Prepare(format!(
            "resetting {} patched file(s) to pristine",
            st.touched.len()
        )));
        reset_tree(bdir, tree, &mut st)?;
    }
    if patches.is_empty() {
        st.applied = Some(want);
        return write_state(bdir, &st);
    }

    // Save pristine copies of everything the patches may touch, then record them
    // BEFORE patching so an interrupted run can still be reset.
    let pristine = bdir.join("pristine");
    let mut touched: Vec<(String, bool)> = Vec::new();
    for f in patches.iter().flat_map(|p| p.files.iter()) {
        if touched.iter().any(|(t, _)| t == f) {
            continue;
        }
        let src = tree.join(f);
        let existed = src.is_file();
        if existed {
            let dst = pristine.join(f);
            fs::create_dir_all(dst.parent().unwrap())?;
            fs::copy(&src, &dst).with_context(|| format!("saving pristine {f}"))?;
        }
        touched.push((f.clone(), existed));
    }
    st.touched = touched;
    st.patches = patches
        .iter()
        .map(|p| p.path.display().to_string())
        .collect();
    write_state(bdir, &st)?;

    let pdir = bdir.join("patches");
    let _ = fs::remove_dir_all(&pdir);
    fs::create_dir_all(&pdir)?;
    for (i, p) in patches.iter().enumerate() {
        let name = p
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        progress(Event::Prepare(format!("applying {name}")));
        let copy = pdir.join(format!("{i:02}-{name}"));
        fs::write(&copy, &p.bytes)?;
        // patch's own list of the files it would change must be the parser's: a file only
        // patch sees would get no pristine copy and stay changed for the next variant.
        let dry = run_patch(tree, &copy, true)?;
        if dry.0 {
            if let Some(f) = dry_run_files(&dry.1)
                .into_iter()
                .find(|f| !p.files.contains(f))
            {
                reset_tree(bdir, tree, &mut st).context("restoring the tree")?;
                bail!(
                    "patch {} changes {f}, which its headers do not name (a header form the runner does not read); refused, the build tree is pristine",
                    p.path.display()
                );
            }
        }
        let (ok, msg) = run_patch(tree, &copy, false)?;
        if !ok {
            let mut rejects = String::new();
            for f in &p.files {
                if let Ok(r) = fs::read_to_string(tree.join(format!("{f}.rej"))) {
                    rejects.push_str(&format!("\n--- rejected hunks for {f} ---\n{r}"));
                }
            }
            reset_tree(bdir, tree, &mut st).context("restoring the tree after a failed patch")?;
            bail!(
                "patch {} does not apply to {} (the build tree was restored to pristine):\n{}{}",
                p.path.display(),
                tree.display(),
                msg.trim_end(),
                rejects
            );
        }
        for l in msg
            .lines()
            .filter(|l| l.contains("Hunk") || l.contains("fuzz"))
        {
            progress(Event::Prepare(format!("  {l}")));
        }
    }
    st.applied = Some(want);
    write_state(bdir, &st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dry_run_output_names_renames_and_copies() {
        let out = "checking file drivers/md/dm-cache-target.c\nHunk #1 succeeded at 2935 (offset 6 lines).\nchecking file b.c (renamed from a.c)\nchecking file d.c (copied from c.c)\n";
        assert_eq!(
            dry_run_files(out),
            ["drivers/md/dm-cache-target.c", "b.c", "a.c", "d.c", "c.c"].map(String::from)
        );
    }

    /// A file patch changes that the headers the runner reads do not name (an `Index:`-only
    /// section) is refused before anything is applied, and the tree stays pristine.
    #[test]
    fn a_patch_touching_an_unnamed_file_is_refused_and_the_tree_restored() {
        let d = tempfile::tempdir().unwrap();
        let (bdir, tree) = (d.path().join("b"), d.path().join("t"));
        fs::create_dir_all(&bdir).unwrap();
        fs::create_dir_all(&tree).unwrap();
        fs::write(tree.join("a.c"), "one\n").unwrap();
        fs::write(tree.join("hidden.c"), "x\n").unwrap();
        let text = "--- a/a.c\n+++ b/a.c\n@@ -1 +1 @@\n-one\n+two\nIndex: a/hidden.c\n@@ -1 +1 @@\n-x\n+y\n";
        let pf = d.path().join("p.patch");
        fs::write(&pf, text).unwrap();
        let p = PatchInput::read(&pf).unwrap();
        assert_eq!(p.files, ["a.c"]);
        let e = apply_patch_set(&bdir, &tree, &[p], &mut |_| {}).unwrap_err();
        assert!(
            format!("{e:#}").contains("changes hidden.c, which its headers do not name"),
            "{e:#}"
        );
        assert_eq!(fs::read_to_string(tree.join("a.c")).unwrap(), "one\n");
        assert_eq!(fs::read_to_string(tree.join("hidden.c")).unwrap(), "x\n");
    }

    #[test]
    fn patch_paths_from_headers() {
        let text = "\
From: x
Subject: y
---
 drivers/md/a.c | 2 +-
 1 file changed

diff --git a/drivers/md/a.c b/drivers/md/a.c
--- a/drivers/md/a.c\t2024-01-01
+++ b/drivers/md/a.c\t2024-01-02
@@ -1 +1 @@
--- removed line that looks like a header
+x
--- /dev/null
+++ b/drivers/md/new.c
@@ -0,0 +1 @@
+y
diff --git a/old.c b/new2.c
rename from old.c
rename to new2.c
";
        assert_eq!(
            patch_paths(text).unwrap(),
            vec!["drivers/md/a.c", "drivers/md/new.c", "old.c", "new2.c"]
        );
        assert!(patch_paths("--- a/../etc/passwd\n+++ b/../etc/passwd\n").is_err());
        let context =
            "*** a/x.c\t2024\n--- b/x.c\t2024\n***************\n*** 1,3 ****\n--- 1,4 ----\n";
        let e = patch_paths(&format!(
            "--- a/y.c\n+++ b/y.c\n@@ -1 +1 @@\n-a\n+b\n{context}"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("context diff"), "{e}");
        let bin = "diff --git a/f.bin b/f.bin\nindex 1..2 100644\nGIT binary patch\nliteral 1\n";
        assert!(patch_paths(bin)
            .unwrap_err()
            .to_string()
            .contains("binary diff"));
    }

    #[test]
    fn shipped_patches_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../patches");
        let nc =
            fs::read_to_string(dir.join("negative-control-allow-dirty-passthrough-6.12.patch"))
                .unwrap();
        assert_eq!(
            patch_paths(&nc).unwrap(),
            vec!["drivers/md/dm-cache-target.c"]
        );
        for name in [
            "a373b3d5289e-on-linux-6.12.117.patch",
            "negative-control-backport-without-check-6.12.patch",
        ] {
            let fix = fs::read_to_string(dir.join(name)).unwrap();
            assert_eq!(
                patch_paths(&fix).unwrap(),
                vec![
                    "drivers/md/dm-cache-metadata.c",
                    "drivers/md/dm-cache-metadata.h",
                    "drivers/md/dm-cache-target.c"
                ],
                "{name}"
            );
        }
    }

    #[test]
    fn apply_and_reset_roundtrip() {
        let d = tempfile::tempdir().unwrap();
        let (bdir, tree) = (d.path().join("b"), d.path().join("b/tree"));
        fs::create_dir_all(tree.join("src")).unwrap();
        fs::write(tree.join("src/a.c"), "one\ntwo\nthree\n").unwrap();
        let mk = |name: &str, body: &str| {
            let path = d.path().join(name);
            fs::write(&path, body).unwrap();
            PatchInput {
                path,
                bytes: body.as_bytes().to_vec(),
                files: patch_paths(body).unwrap(),
            }
        };
        let good = mk(
            "good.patch",
            "--- a/src/a.c\n+++ b/src/a.c\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n--- /dev/null\n+++ b/src/new.c\n@@ -0,0 +1 @@\n+new\n",
        );
        let bad = mk(
            "bad.patch",
            "--- a/src/a.c\n+++ b/src/a.c\n@@ -1,3 +1,3 @@\n uno\n-dos\n+DOS\n tres\n",
        );
        let mut p = |_: crate::event::Event| {};
        apply_patch_set(&bdir, &tree, std::slice::from_ref(&good), &mut p).unwrap();
        assert_eq!(
            fs::read_to_string(tree.join("src/a.c")).unwrap(),
            "one\nTWO\nthree\n"
        );
        assert!(tree.join("src/new.c").exists());
        // Same set again: nothing to do.
        apply_patch_set(&bdir, &tree, std::slice::from_ref(&good), &mut p).unwrap();
        // A failing set: clear error, tree back to pristine.
        let e = apply_patch_set(&bdir, &tree, &[good, bad], &mut p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad.patch does not apply") && e.contains("rejected hunks for src/a.c"),
            "{e}"
        );
        assert_eq!(
            fs::read_to_string(tree.join("src/a.c")).unwrap(),
            "one\ntwo\nthree\n"
        );
        assert!(!tree.join("src/new.c").exists());
        assert!(!tree.join("src/a.c.rej").exists());
        // Empty set on a pristine tree.
        apply_patch_set(&bdir, &tree, &[], &mut p).unwrap();
        assert_eq!(
            fs::read_to_string(tree.join("src/a.c")).unwrap(),
            "one\ntwo\nthree\n"
        );
    }

    /// A build tree hard-linked from the cache's own source (`cp -al`): patching it and
    /// resetting it leaves the source's files as they were, and the untouched files stay
    /// shared.
    #[test]
    fn patching_a_hard_linked_tree_leaves_the_source_alone() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src/tree");
        fs::create_dir_all(src.join("drivers")).unwrap();
        fs::write(src.join("drivers/a.c"), "one\ntwo\nthree\n").unwrap();
        fs::write(src.join("drivers/b.c"), "b\n").unwrap();
        let (bdir, tree) = (d.path().join("b"), d.path().join("b/tree"));
        fs::create_dir_all(&bdir).unwrap();
        let owned = d.path().join("src");
        let link = super::super::config::may_link(&src, &owned, &bdir);
        let argv = super::super::config::copy_argv(&src, &tree, link);
        assert_eq!(argv[..2], ["cp", "-al"]);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        super::super::exec::run_checked(&bdir, &argv).unwrap();
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        assert_eq!(
            ino(&src.join("drivers/a.c")),
            ino(&tree.join("drivers/a.c"))
        );
        let body =
            "--- a/drivers/a.c\n+++ b/drivers/a.c\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n";
        let path = d.path().join("p.patch");
        fs::write(&path, body).unwrap();
        let p = PatchInput {
            path,
            bytes: body.as_bytes().to_vec(),
            files: patch_paths(body).unwrap(),
        };
        let mut ev = |_: crate::event::Event| {};
        apply_patch_set(&bdir, &tree, std::slice::from_ref(&p), &mut ev).unwrap();
        assert_eq!(
            fs::read_to_string(tree.join("drivers/a.c")).unwrap(),
            "one\nTWO\nthree\n"
        );
        assert_eq!(
            fs::read_to_string(src.join("drivers/a.c")).unwrap(),
            "one\ntwo\nthree\n"
        );
        apply_patch_set(&bdir, &tree, &[], &mut ev).unwrap();
        assert_eq!(
            fs::read_to_string(src.join("drivers/a.c")).unwrap(),
            "one\ntwo\nthree\n"
        );
        assert_eq!(
            ino(&src.join("drivers/b.c")),
            ino(&tree.join("drivers/b.c"))
        );
        // A user's tree (outside the cache's own sources) is copied, never linked.
        let user = d.path().join("linux");
        fs::create_dir_all(&user).unwrap();
        let link = super::super::config::may_link(&user, &owned, &bdir);
        let argv = super::super::config::copy_argv(&user, &tree, link);
        assert_eq!(argv[..2], ["rsync", "-a"]);
    }
}
