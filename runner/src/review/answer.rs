//! The reviewer's answer, from the measured cells: per tree, what the patch closes, what it
//! regresses, what still fails with it (and the upstream commits those cases name), what
//! could not be tested; the exit status; the text and Markdown reports.  Pure.

use super::apply::Applies;
use serde::{Deserialize, Serialize};

/// One case's outcome on one kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// `pass`, `fail` or `error` (the run could not judge the case).
    pub status: String,
    /// The classification labels, e.g. `refused: unclean shutdown (can_resume)`.
    pub labels: Vec<String>,
    /// What failed (data loss …), or why it could not run.
    pub failures: Vec<String>,
    pub release: Option<String>,
    pub cache_target: Option<String>,
    pub seconds: f64,
    /// Taken from the result cache rather than run now.
    #[serde(default)]
    pub cached: bool,
}

impl Cell {
    pub fn pass(&self) -> bool {
        self.status == "pass"
    }
    pub fn fail(&self) -> bool {
        self.status == "fail"
    }
    /// `✅ PASS refused: dirty mapping`, `❌ FAIL accepted — data loss`.
    pub fn short(&self) -> String {
        let mark = match self.status.as_str() {
            "pass" => "✅ PASS",
            "fail" => "❌ FAIL",
            _ => "⚠️ ERROR",
        };
        let mut s = format!("{mark} {}", self.labels.join(", "));
        if let Some(f) = self.failures.first() {
            // "data loss: …" → "data loss"; a longer text is cut, not split mid-quote.
            let head = f.split(": ").next().unwrap_or(f);
            let f = if head.len() < 40 && !head.contains('`') {
                head.to_string()
            } else if f.chars().count() > 80 {
                format!("{}…", f.chars().take(80).collect::<String>())
            } else {
                f.clone()
            };
            s += &format!(" — {f}");
        }
        s.trim().to_string()
    }
}

/// One case on one tree.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub case: String,
    /// The case's `source:` (the upstream commits it reproduces).
    pub source: Option<String>,
    pub without: Option<Cell>,
    pub with: Option<Cell>,
    /// Why the case was not run on this tree (`requires:` an option the build lacks).
    pub not_run: Option<String>,
    /// A case whose verdict differs between the two sides is run once more on each; these
    /// are those second runs (without, with).
    #[serde(default)]
    pub again: Option<(Cell, Cell)>,
}

impl Row {
    /// The second runs disagree with the first on a side: the case is racy on this tree and
    /// neither closes nor regresses anything.
    pub fn racy(&self) -> Option<String> {
        let (a, b) = self.again.as_ref()?;
        let flip = |first: &Option<Cell>, second: &Cell| {
            first.as_ref().is_some_and(|f| f.status != second.status)
        };
        let mut sides = Vec::new();
        if flip(&self.without, a) {
            sides.push(format!(
                "without: {} then {}",
                status_word(&self.without),
                a.status.to_uppercase()
            ));
        }
        if flip(&self.with, b) {
            sides.push(format!(
                "with: {} then {}",
                status_word(&self.with),
                b.status.to_uppercase()
            ));
        }
        (!sides.is_empty()).then(|| sides.join("; "))
    }
    /// Every run of the side with the patch passed.
    fn with_passes(&self) -> bool {
        self.with.as_ref().is_some_and(Cell::pass)
            && self.again.as_ref().is_none_or(|(_, b)| b.pass())
    }
    fn with_fails_ever(&self) -> bool {
        self.with.as_ref().is_some_and(Cell::fail)
            || self.again.as_ref().is_some_and(|(_, b)| b.fail())
    }
}

fn status_word(c: &Option<Cell>) -> String {
    c.as_ref()
        .map(|c| c.status.to_uppercase())
        .unwrap_or_default()
}

/// The upstream commits a case's `source:` names (12+ hex digits), or the text itself.
pub fn commits(source: &str) -> String {
    let ids: Vec<&str> = source
        .split(|c: char| !c.is_ascii_hexdigit())
        .filter(|w| w.len() >= 12 && w.chars().any(|c| c.is_ascii_digit()))
        .collect();
    if ids.is_empty() {
        source.to_string()
    } else {
        ids.join(", ")
    }
}

/// One tree's review.
#[derive(Debug, Clone, Serialize)]
pub struct TreeReview {
    /// The series the tree stands for (`6.18`).
    pub series: String,
    /// `debian:6.18.15` (a `build:` source).
    pub tree: String,
    /// Where it came from (`linux_6.18.15.orig.tar.xz`, `linux-source-6.12 6.12.117-1`).
    pub origin: String,
    pub applies: Applies,
    pub rows: Vec<Row>,
    /// Host errors that kept the tree from being tested (a build that failed …).
    pub errors: Vec<String>,
}

/// Cases whose `source:` names `commit` (its first 12 hex digits).
pub fn targets(rows: &[Row], commit: Option<&str>) -> Vec<String> {
    let Some(c) = commit else { return vec![] };
    let short = &c[..c.len().min(12)];
    rows.iter()
        .filter(|r| r.source.as_deref().is_some_and(|s| s.contains(short)))
        .map(|r| r.case.clone())
        .collect()
}

impl TreeReview {
    fn both(&self) -> impl Iterator<Item = (&Row, &Cell, &Cell)> {
        self.rows
            .iter()
            .filter(|r| r.racy().is_none())
            .filter_map(|r| Some((r, r.without.as_ref()?, r.with.as_ref()?)))
    }
    /// Cases whose verdict flipped on a re-run, with what was seen.
    pub fn racy(&self) -> Vec<(String, String)> {
        self.rows
            .iter()
            .filter_map(|r| Some((r.case.clone(), r.racy()?)))
            .collect()
    }
    /// Fail without the patch, pass with it.
    pub fn closes(&self) -> Vec<String> {
        self.both()
            .filter(|(_, a, b)| a.fail() && b.pass())
            .map(|(r, _, _)| r.case.clone())
            .collect()
    }
    /// Pass without the patch, fail with it: must be empty.
    pub fn regresses(&self) -> Vec<String> {
        self.both()
            .filter(|(_, a, b)| a.pass() && b.fail())
            .map(|(r, _, _)| r.case.clone())
            .collect()
    }
    /// Fail with the patch (or, for a tree that has it already, on the tree): each with
    /// the upstream commits its case names — the companion fixes the tree still lacks.
    pub fn still_failing(&self) -> Vec<(String, String)> {
        self.rows
            .iter()
            .filter(|r| r.with_fails_ever())
            .map(|r| {
                (
                    r.case.clone(),
                    commits(r.source.as_deref().unwrap_or_default()),
                )
            })
            .collect()
    }
    /// Cases not run or not judged, each with the reason.
    pub fn not_testable(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .rows
            .iter()
            .filter_map(|r| Some((r.case.clone(), r.not_run.clone()?)))
            .collect();
        for r in &self.rows {
            for (side, c) in [("without", &r.without), ("with", &r.with)] {
                if let Some(c) = c.as_ref().filter(|c| !c.pass() && !c.fail()) {
                    let why = c.failures.first().cloned().unwrap_or_default();
                    out.push((
                        r.case.clone(),
                        format!("{side} the patch: could not run: {why}"),
                    ));
                }
            }
        }
        out
    }
    /// Every case of `targets` passes with the patch (on a tree that has it: on the tree).
    pub fn targets_hold(&self, targets: &[String]) -> bool {
        targets
            .iter()
            .all(|t| self.rows.iter().any(|r| &r.case == t && r.with_passes()))
    }
    fn tested(&self) -> bool {
        self.errors.is_empty() && self.rows.iter().any(|r| r.with.is_some())
    }
}

/// The whole review.
#[derive(Debug, Clone, Serialize)]
pub struct Review {
    pub subject: Option<String>,
    pub upstream: Option<String>,
    pub patches: Vec<String>,
    pub trees: Vec<TreeReview>,
    /// Series named by the mail (or `--tree`) that no tree can be had for, with the reason.
    pub untestable_trees: Vec<(String, String)>,
    pub runner: String,
    pub accel: String,
    pub seconds: f64,
}

/// What the review says, as an exit status and a word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// On every tested tree the patch closes what its cases target (or the tree has it and
    /// they pass) and regresses nothing.
    Closes,
    /// It does not close, or it regresses (exit 1).
    DoesNotClose,
    /// Nothing could be tested, or a cell could not be judged (exit 2).
    CouldNotRun,
}

impl Outcome {
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Closes => 0,
            Outcome::DoesNotClose => 1,
            Outcome::CouldNotRun => 2,
        }
    }
}

impl Review {
    /// Target cases per tree: those whose `source:` names the patch's upstream commit, else
    /// every case that fails without the patch.
    pub fn targets(&self, t: &TreeReview) -> Vec<String> {
        let named = targets(&t.rows, self.upstream.as_deref());
        if !named.is_empty() {
            return named;
        }
        t.rows
            .iter()
            .filter(|r| r.without.as_ref().is_some_and(Cell::fail))
            .map(|r| r.case.clone())
            .collect()
    }

    pub fn outcome(&self) -> Outcome {
        let tested: Vec<&TreeReview> = self.trees.iter().filter(|t| t.tested()).collect();
        if tested.is_empty() {
            return Outcome::CouldNotRun;
        }
        let falls_short = |t: &&TreeReview| {
            !t.regresses().is_empty()
                || !t.targets_hold(&self.targets(t))
                || (matches!(t.applies, Applies::Yes(_)) && t.closes().is_empty())
        };
        if tested.iter().any(falls_short) {
            return Outcome::DoesNotClose;
        }
        let unjudged = |c: &Option<Cell>| c.as_ref().is_some_and(|c| !c.pass() && !c.fail());
        if tested.iter().any(|t| {
            t.rows
                .iter()
                .any(|r| unjudged(&r.without) || unjudged(&r.with))
        }) {
            return Outcome::CouldNotRun;
        }
        Outcome::Closes
    }
}

/// The review as JSON: everything measured, plus per tree the answer in words (closes,
/// regresses, targets, still failing, not testable) and the overall outcome.
pub fn to_json(r: &Review) -> serde_json::Value {
    let mut v = serde_json::to_value(r).expect("a review serializes");
    if let Some(trees) = v.get_mut("trees").and_then(|t| t.as_array_mut()) {
        for (j, t) in trees.iter_mut().zip(&r.trees) {
            let targets = r.targets(t);
            j["closes"] = serde_json::json!(t.closes());
            j["regresses"] = serde_json::json!(t.regresses());
            j["targets"] = serde_json::json!(targets);
            j["targets_hold"] = serde_json::json!(t.targets_hold(&targets));
            j["still_failing"] = serde_json::json!(t.still_failing());
            j["not_testable"] = serde_json::json!(t.not_testable());
        }
    }
    v["outcome"] = serde_json::json!(r.outcome());
    v
}

fn applies_text(a: &Applies) -> String {
    match a {
        Applies::Yes(n) if n.is_empty() => "applies cleanly".into(),
        Applies::Yes(n) => format!("applies ({})", n.join("; ")),
        Applies::AlreadyIn => "is already in this tree (reverse-applies cleanly): one build, the cases run on the tree as it is".into(),
        Applies::No(r) => format!("does not apply: {}", r.join("; ")),
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The Markdown reply (also what the terminal shows).
pub fn markdown(r: &Review, tested_by: &str) -> String {
    let mut s = String::new();
    s += &format!(
        "Tested with dmcache-vmtest {} in real QEMU VMs ({}), {} tree(s), {:.0} s.\n",
        r.runner,
        r.accel,
        r.trees.len(),
        r.seconds
    );
    if let Some(sub) = &r.subject {
        s += &format!("Patch: {sub}\n");
    }
    for t in &r.trees {
        s += &tree_markdown(r, t);
    }
    if !r.untestable_trees.is_empty() {
        s += "\n**Trees not testable:**\n";
        for (series, why) in &r.untestable_trees {
            s += &format!("- {series}: {why}\n");
        }
    }
    let outcome = r.outcome();
    s += &format!(
        "\n**Answer:** {}\n",
        match outcome {
            Outcome::Closes =>
                "it closes what its cases target and regresses nothing on the trees tested.",
            Outcome::DoesNotClose => "it does NOT close the hole, or it regresses (see above).",
            Outcome::CouldNotRun => "could not be tested (see above).",
        }
    );
    if outcome == Outcome::Closes && r.trees.iter().any(|t| !t.closes().is_empty()) {
        s += &format!("\nTested-by: {tested_by}\n");
    }
    s
}

fn tree_markdown(r: &Review, t: &TreeReview) -> String {
    let release = |side: fn(&Row) -> &Option<Cell>| {
        t.rows
            .iter()
            .find_map(|row| side(row).as_ref()?.release.clone())
            .unwrap_or_else(|| "-".into())
    };
    let mut s = format!(
        "\n### {} ({})\n\nThe patch {}.\n",
        t.tree,
        t.origin,
        applies_text(&t.applies)
    );
    for e in &t.errors {
        s += &format!("\nError: {e}\n");
    }
    if t.rows.is_empty() {
        return s;
    }
    let already = matches!(t.applies, Applies::AlreadyIn);
    if already {
        s += &format!(
            "\nKernel: {}.\n\n| case | on the tree |\n| --- | --- |\n",
            release(|r| &r.with)
        );
    } else {
        s += &format!(
            "\nKernels: without {}, with {}.\n\n| case | without | with |\n| --- | --- | --- |\n",
            release(|r| &r.without),
            release(|r| &r.with)
        );
    }
    for row in &t.rows {
        let cell = |c: &Option<Cell>| {
            c.as_ref()
                .map(Cell::short)
                .or_else(|| row.not_run.clone().map(|w| format!("not run: {w}")))
                .unwrap_or_else(|| "-".into())
        };
        if already {
            s += &format!("| {} | {} |\n", row.case, cell(&row.with));
        } else {
            s += &format!(
                "| {} | {} | {} |\n",
                row.case,
                cell(&row.without),
                cell(&row.with)
            );
        }
    }
    let targets = r.targets(t);
    s += "\n";
    if !already {
        s += &format!("- **closes:** {}\n", list_or_none(&t.closes()));
        s += &format!("- **regresses:** {}\n", list_or_none(&t.regresses()));
    }
    s += &format!(
        "- **targets** (cases naming {}): {} — {}\n",
        r.upstream
            .as_deref()
            .map(|u| &u[..u.len().min(12)])
            .unwrap_or("the patch"),
        list_or_none(&targets),
        if t.targets_hold(&targets) {
            "hold"
        } else {
            "do NOT all hold"
        }
    );
    let still = t.still_failing();
    s += &format!(
        "- **still failing with the patch:** {}\n",
        if still.is_empty() {
            "none".to_string()
        } else {
            still
                .iter()
                .map(|(c, src)| format!("{c} ({})", if src.is_empty() { "no source" } else { src }))
                .collect::<Vec<_>>()
                .join("; ")
        }
    );
    let racy = t.racy();
    if !racy.is_empty() {
        s += &format!(
            "- **racy** (the verdict changed between the sides, and a second run of each disagreed with the first; counted neither way): {}\n",
            racy.iter()
                .map(|(c, w)| format!("{c} ({w})"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let nt = t.not_testable();
    if !nt.is_empty() {
        s += &format!(
            "- **not testable:** {}\n",
            nt.iter()
                .map(|(c, w)| format!("{c} ({w})"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(status: &str, label: &str) -> Option<Cell> {
        Some(Cell {
            status: status.into(),
            labels: vec![label.into()],
            failures: if status == "fail" {
                vec!["data loss: x".into()]
            } else {
                vec![]
            },
            release: Some("6.18.15-dmt1".into()),
            cache_target: None,
            seconds: 1.0,
            cached: false,
        })
    }

    fn row(case: &str, src: &str, a: Option<Cell>, b: Option<Cell>) -> Row {
        Row {
            case: case.into(),
            source: Some(src.into()),
            without: a,
            with: b,
            not_run: None,
            again: None,
        }
    }

    fn review(rows: Vec<Row>, applies: Applies) -> Review {
        Review {
            subject: Some("[PATCH AUTOSEL 7.0-6.18] dm cache: x".into()),
            upstream: Some("a373b3d5289e50ab26d4cf776bf5891436ff3658".into()),
            patches: vec!["p".into()],
            trees: vec![TreeReview {
                series: "6.18".into(),
                tree: "debian:6.18.15".into(),
                origin: "linux_6.18.15.orig.tar.xz".into(),
                applies,
                rows,
                errors: vec![],
            }],
            untestable_trees: vec![("7.0".into(), "HTTP 404".into())],
            runner: "0.1.0".into(),
            accel: "tcg".into(),
            seconds: 10.0,
        }
    }

    #[test]
    fn a_fix_that_closes() {
        let r = review(
            vec![
                row(
                    "unclean_passthrough",
                    "upstream a373b3d5289e",
                    cell("fail", "accepted"),
                    cell("pass", "refused: unclean shutdown (can_resume)"),
                ),
                row(
                    "clean_passthrough",
                    "good path of a373b3d5289e",
                    cell("pass", "accepted"),
                    cell("pass", "accepted"),
                ),
                row(
                    "passthrough_concurrent_writes",
                    "upstream 7d1f98d668ee and e4f66341779d",
                    cell("fail", "x"),
                    cell("fail", "x"),
                ),
            ],
            Applies::Yes(vec![]),
        );
        let t = &r.trees[0];
        assert_eq!(t.closes(), vec!["unclean_passthrough"]);
        assert!(t.regresses().is_empty());
        assert_eq!(t.still_failing()[0].1, "7d1f98d668ee, e4f66341779d");
        assert_eq!(
            r.targets(t),
            vec!["unclean_passthrough", "clean_passthrough"]
        );
        assert_eq!(r.outcome(), Outcome::Closes);
        let md = markdown(&r, "A Tester <a@t>");
        assert!(md.contains("| unclean_passthrough | ❌ FAIL accepted — data loss | ✅ PASS refused: unclean shutdown (can_resume) |"), "{md}");
        assert!(md.contains("- **closes:** unclean_passthrough\n"));
        assert!(md.contains("- **regresses:** none\n"));
        assert!(md.contains("passthrough_concurrent_writes (7d1f98d668ee, e4f66341779d)"));
        assert!(md.contains("- 7.0: HTTP 404"));
        assert!(md.contains("\nTested-by: A Tester <a@t>\n"));
    }

    #[test]
    fn the_json_carries_the_answer() {
        let r = review(
            vec![row(
                "unclean_passthrough",
                "upstream a373b3d5289e",
                cell("fail", "accepted"),
                cell("pass", "refused"),
            )],
            Applies::Yes(vec![]),
        );
        let mut r = r;
        r.trees[0].rows[0].again = Some((
            cell("fail", "accepted").unwrap(),
            cell("pass", "refused").unwrap(),
        ));
        serde_json::to_value(&r).unwrap();
        let v = to_json(&r);
        assert_eq!(
            v["trees"][0]["closes"],
            serde_json::json!(["unclean_passthrough"]),
            "{v:#}"
        );
        assert_eq!(v["trees"][0]["regresses"], serde_json::json!([]));
        assert_eq!(v["outcome"], serde_json::json!("closes"));
    }

    #[test]
    fn a_patch_that_refuses_too_much_regresses() {
        let r = review(
            vec![
                row(
                    "unclean_passthrough",
                    "upstream a373b3d5289e",
                    cell("fail", "accepted"),
                    cell("pass", "refused: other"),
                ),
                row(
                    "clean_passthrough",
                    "good path of a373b3d5289e",
                    cell("pass", "accepted"),
                    cell("fail", "refused: other"),
                ),
            ],
            Applies::Yes(vec![]),
        );
        assert_eq!(r.trees[0].regresses(), vec!["clean_passthrough"]);
        assert_eq!(r.outcome(), Outcome::DoesNotClose);
        let md = markdown(&r, "x");
        assert!(md.contains("- **regresses:** clean_passthrough\n"));
        assert!(!md.contains("Tested-by"));
    }

    #[test]
    fn a_racy_change_counts_neither_way() {
        let mut racy = row(
            "passthrough_write_ordering",
            "upstream 0c5eef0aad50 + 4ca8b8bd952d",
            cell("pass", "after the commit"),
            cell("fail", "before the commit"),
        );
        racy.again = Some((
            cell("fail", "before the commit").unwrap(),
            cell("fail", "before the commit").unwrap(),
        ));
        let mut steady = row(
            "unclean_passthrough",
            "upstream a373b3d5289e",
            cell("fail", "accepted"),
            cell("pass", "refused"),
        );
        steady.again = Some((
            cell("fail", "accepted").unwrap(),
            cell("pass", "refused").unwrap(),
        ));
        let r = review(vec![steady, racy], Applies::Yes(vec![]));
        let t = &r.trees[0];
        assert!(t.regresses().is_empty());
        assert_eq!(t.closes(), vec!["unclean_passthrough"]);
        assert_eq!(t.racy()[0].1, "without: PASS then FAIL");
        assert_eq!(t.still_failing()[0].0, "passthrough_write_ordering");
        assert_eq!(r.outcome(), Outcome::Closes);
        assert!(markdown(&r, "x").contains("- **racy**"));
        // A target whose second run with the patch fails does not hold.
        let mut flaky_fix = row(
            "unclean_passthrough",
            "upstream a373b3d5289e",
            cell("fail", "accepted"),
            cell("pass", "refused"),
        );
        flaky_fix.again = Some((
            cell("fail", "accepted").unwrap(),
            cell("fail", "accepted").unwrap(),
        ));
        let r = review(vec![flaky_fix], Applies::Yes(vec![]));
        assert_eq!(r.outcome(), Outcome::DoesNotClose);
        assert_eq!(
            commits("upstream 0c5eef0aad50 + 4ca8b8bd952d (steps 1-5)"),
            "0c5eef0aad50, 4ca8b8bd952d"
        );
        assert_eq!(commits("good path"), "good path");
    }

    #[test]
    fn a_patch_that_does_not_close() {
        let r = review(
            vec![row(
                "unclean_passthrough",
                "upstream a373b3d5289e",
                cell("fail", "accepted"),
                cell("fail", "accepted"),
            )],
            Applies::Yes(vec![]),
        );
        assert_eq!(r.outcome(), Outcome::DoesNotClose);
        assert!(markdown(&r, "x").contains("do NOT all hold"));
    }

    #[test]
    fn already_in_and_not_applying_and_errors() {
        let r = review(
            vec![row(
                "unclean_passthrough",
                "upstream a373b3d5289e",
                None,
                cell("pass", "refused: unclean shutdown (can_resume)"),
            )],
            Applies::AlreadyIn,
        );
        assert_eq!(r.outcome(), Outcome::Closes);
        let md = markdown(&r, "x");
        assert!(md.contains("already in this tree"));
        assert!(md.contains("| case | on the tree |"));
        assert!(!md.contains("Tested-by"), "nothing closed: no Tested-by");
        let r = review(
            vec![],
            Applies::No(vec![
                "[PATCH] x: drivers/md/dm-cache-target.c: hunk #2 failed at 2948".into(),
            ]),
        );
        assert_eq!(r.outcome(), Outcome::CouldNotRun);
        assert!(markdown(&r, "x").contains(
            "does not apply: [PATCH] x: drivers/md/dm-cache-target.c: hunk #2 failed at 2948"
        ));
        let mut err = cell("error", "");
        err.as_mut().unwrap().failures = vec!["VM never started".into()];
        let r = review(
            vec![
                row(
                    "unclean_passthrough",
                    "upstream a373b3d5289e",
                    cell("fail", "accepted"),
                    cell("pass", "refused"),
                ),
                row(
                    "origin_shrink",
                    "upstream c2662b1544cb",
                    err,
                    cell("pass", "x"),
                ),
            ],
            Applies::Yes(vec![]),
        );
        assert_eq!(r.outcome(), Outcome::CouldNotRun);
        assert!(r.trees[0].not_testable()[0]
            .1
            .contains("without the patch: could not run: VM never started"));
    }
}
