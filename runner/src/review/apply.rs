//! Does a patch series apply to a tree, or is it already there?  The files the series
//! touches are copied into a scratch directory and patched there with `patch -p1` (the
//! tool the build applies patches with), forward in order, else backward in reverse order:
//! the tree itself is never written.

use super::patch::Patch;
use anyhow::{Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "notes")]
pub enum Applies {
    /// Applies; notes are `patch`'s offset/fuzz remarks.
    Yes(Vec<String>),
    /// Reverse-applies cleanly: the tree has it already.
    AlreadyIn,
    /// Neither: what `patch` rejected (file, hunk, line), per patch.
    No(Vec<String>),
}

/// Whether `series` applies to the tree at `tree`.
pub fn check(tree: &Path, series: &[Patch]) -> Result<Applies> {
    let forward = run_series(tree, series, false)?;
    if let Ok(notes) = forward {
        return Ok(Applies::Yes(notes));
    }
    if run_series(tree, series, true)?.is_ok() {
        return Ok(Applies::AlreadyIn);
    }
    Ok(Applies::No(forward.unwrap_err()))
}

/// Applies the series (or reverts it, in reverse order) to copies of its files: `Ok(notes)`
/// or `Err(rejections)`.
fn run_series(
    tree: &Path,
    series: &[Patch],
    reverse: bool,
) -> Result<Result<Vec<String>, Vec<String>>> {
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    for f in series.iter().flat_map(|p| &p.files) {
        let from = tree.join(f);
        if from.is_file() {
            let to = scratch.path().join(f);
            std::fs::create_dir_all(to.parent().unwrap())?;
            std::fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
        }
    }
    let order: Vec<&Patch> = if reverse {
        series.iter().rev().collect()
    } else {
        series.iter().collect()
    };
    let mut notes = Vec::new();
    for p in order {
        let mut cmd = Command::new("patch");
        cmd.args([
            "-p1",
            "--batch",
            "--forward",
            "--no-backup-if-mismatch",
            "-r",
            "-",
        ])
        .current_dir(scratch.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if reverse {
            cmd.arg("-R");
        }
        let mut child = cmd
            .spawn()
            .context("cannot run patch (apt-get install patch)")?;
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(p.diff.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        let (ok, lines) = summarize(&text);
        // One patch: its hunks speak for themselves; a series: say which patch.
        let name = match series.len() {
            1 => String::new(),
            _ => format!(
                "{}: ",
                p.subject.clone().unwrap_or_else(|| p.source.clone())
            ),
        };
        if !out.status.success() || !ok {
            return Ok(Err(lines
                .into_iter()
                .map(|l| format!("{name}{l}"))
                .collect()));
        }
        notes.extend(lines.into_iter().map(|l| format!("{name}{l}")));
    }
    Ok(Ok(notes))
}

/// `patch`'s output boiled down: (no hunk failed, one line per hunk remark or failure).
pub fn summarize(out: &str) -> (bool, Vec<String>) {
    let mut file = String::new();
    let mut lines = Vec::new();
    let mut ok = true;
    for l in out.lines() {
        if let Some(f) = l
            .strip_prefix("patching file ")
            .or_else(|| l.strip_prefix("checking file "))
        {
            file = f.trim_matches(['\'', '`', '"']).to_string();
        } else if l.starts_with("Hunk #") {
            if l.contains("FAILED") {
                ok = false;
            }
            let l = l.trim_end_matches('.');
            lines.push(format!("{file}: {}", l.to_ascii_lowercase()));
        } else if l.contains("Reversed (or previously applied) patch detected") {
            ok = false;
            lines.push(format!("{file}: already applied"));
        } else if l.starts_with("can't find file to patch") || l.contains("No file to patch") {
            ok = false;
            lines.push(format!("{file}: no such file in the tree"));
        } else if l.contains("malformed patch") || l.contains("Only garbage") {
            ok = false;
            lines.push(l.trim().to_string());
        }
    }
    (ok, lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(diff: &str) -> Patch {
        Patch {
            source: "t.patch".into(),
            subject: Some("[PATCH] t".into()),
            from: None,
            message_id: None,
            stable_base: None,
            upstream: None,
            number: None,
            files: super::super::patch::diff_files(diff),
            diff: diff.into(),
        }
    }

    const FILE: &str = "l1\nl2\nl3\nl4\nl5\nl6\nl7\nl8\nl9\nl10\n";
    const D: &str = "--- a/f.c\n+++ b/f.c\n@@ -3,6 +3,7 @@\n l3\n l4\n l5\n+new\n l6\n l7\n l8\n";
    const SECOND: &str =
        "--- a/f.c\n+++ b/f.c\n@@ -3,7 +3,7 @@\n l3\n l4\n l5\n-new\n+newer\n l6\n l7\n l8\n";

    fn write(t: &tempfile::TempDir, text: &str) {
        std::fs::write(t.path().join("f.c"), text).unwrap();
    }

    #[test]
    fn applies_already_in_or_rejected() {
        let t = tempfile::tempdir().unwrap();
        write(&t, FILE);
        assert_eq!(check(t.path(), &[patch(D)]).unwrap(), Applies::Yes(vec![]));
        // The tree is untouched.
        assert_eq!(std::fs::read_to_string(t.path().join("f.c")).unwrap(), FILE);
        // With an offset: two lines more before.
        write(&t, &format!("x\ny\n{FILE}"));
        match check(t.path(), &[patch(D)]).unwrap() {
            Applies::Yes(n) => assert!(
                n[0].contains("f.c: hunk #1 succeeded at 5 (offset 2 lines)"),
                "{n:?}"
            ),
            o => panic!("{o:?}"),
        }
        write(&t, &FILE.replace("l5\n", "l5\nnew\n"));
        assert_eq!(check(t.path(), &[patch(D)]).unwrap(), Applies::AlreadyIn);
        write(&t, "q1\nq2\nq3\nq4\nq5\nq6\nq7\nq8\n");
        match check(t.path(), &[patch(D)]).unwrap() {
            Applies::No(r) => assert!(r.iter().any(|l| l == "f.c: hunk #1 failed at 3"), "{r:?}"),
            o => panic!("{o:?}"),
        }
        std::fs::remove_file(t.path().join("f.c")).unwrap();
        assert!(matches!(
            check(t.path(), &[patch(D)]).unwrap(),
            Applies::No(_)
        ));
    }

    #[test]
    fn a_series_applies_in_order() {
        let t = tempfile::tempdir().unwrap();
        write(&t, FILE);
        let s = [patch(D), patch(SECOND)];
        assert_eq!(check(t.path(), &s).unwrap(), Applies::Yes(vec![]));
        // Out of order, the second patch does not apply.
        let r = [patch(SECOND), patch(D)];
        assert!(matches!(check(t.path(), &r).unwrap(), Applies::No(_)));
        write(&t, &FILE.replace("l5\n", "l5\nnewer\n"));
        assert_eq!(check(t.path(), &s).unwrap(), Applies::AlreadyIn);
    }
}
