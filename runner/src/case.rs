//! The case model: YAML files in `cases/`, parsed with serde (`serde_yaml_ng`), validated
//! with `file:line:col` errors.  A case is data only: new dm-cache cases need no Rust.
//!
//! Shape (see README "Case format" for an annotated example):
//! ```yaml
//! name: unclean_passthrough
//! summary: one line
//! disks: [{ name: sdc, size: 256MiB }]
//! boots:
//!   - name: populate
//!     steps:
//!       - run: "dmsetup create …"            # plain step; must exit 0 unless expect_status says otherwise
//!       - capture: dirty                      # named value = trimmed stdout
//!         run: "dmsetup status cache | awk '{print $14}'"
//!         expect: "1"
//!       - crash: sysrq-b                      # last step of a boot
//!   - name: recover
//!     steps:
//!       - classify: passthrough               # label chosen from exit status + kernel log lines
//!         run: "dmsetup create cache …"
//!         outcomes:
//!           - { label: "refused: dirty mapping", status: nonzero, dmesg: "cannot enter passthrough mode" }
//!           - { label: accepted, status: 0 }
//!       - run: "…"
//!         when: { passthrough: accepted }     # conditional on a label or a capture
//! assert:
//!   - differ: [cache_md5, origin_md5]
//! expect:
//!   - classify: { passthrough: ["refused: dirty mapping"] }
//! ```

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A parsed, validated case.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub summary: String,
    /// Where the case comes from (a commit, a mail), for the report.
    #[serde(default)]
    pub source: Option<String>,
    pub disks: Vec<Disk>,
    #[serde(default)]
    pub vm: VmSpec,
    pub boots: Vec<Boot>,
    #[serde(default)]
    pub assert: Vec<Assertion>,
    /// Expected classification labels, per kernel; the first rule whose `kernel` selector
    /// matches applies.
    #[serde(default)]
    pub expect: Vec<ExpectRule>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// Stable name; the guest sees the device path as `$DISK_<name>`.
    pub name: String,
    pub size: Size,
}

/// A byte size written as `256MiB`, `1GiB`, `4096` …
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "serde_yaml_ng::Value", into = "u64")]
pub struct Size(pub u64);

impl From<Size> for u64 {
    fn from(s: Size) -> u64 {
        s.0
    }
}

impl TryFrom<serde_yaml_ng::Value> for Size {
    type Error = String;
    fn try_from(v: serde_yaml_ng::Value) -> Result<Self, String> {
        match v {
            serde_yaml_ng::Value::Number(n) => n
                .as_u64()
                .map(Size)
                .ok_or_else(|| format!("size must be a positive integer, got {n}")),
            serde_yaml_ng::Value::String(s) => parse_size(&s).map(Size),
            other => Err(format!("size must be like 256MiB, got {other:?}")),
        }
    }
}

/// Parses `256MiB`, `1GiB`, `512KiB`, `4096`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size `{s}` must start with a number"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        u => {
            return Err(format!(
                "size `{s}`: unknown unit `{u}` (use KiB, MiB or GiB)"
            ))
        }
    };
    if n == 0 {
        return Err(format!("size `{s}` must not be zero"));
    }
    n.checked_mul(mult)
        .ok_or_else(|| format!("size `{s}` is too large"))
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// Guest memory, as QEMU takes it (`1G`).
    #[serde(default)]
    pub memory: Option<String>,
    #[serde(default)]
    pub cpus: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    pub name: String,
    pub steps: Vec<Step>,
}

/// One step in the guest.  Exactly one of `run` (alone), `capture`+`run`,
/// `classify`+`run`+`outcomes`, or `crash` — checked by [`Case::validate`].
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// A label for the report; defaults to the first line of `run`.
    #[serde(default)]
    pub name: Option<String>,
    /// Shell (POSIX sh) run in the guest.
    #[serde(default)]
    pub run: Option<String>,
    /// Store the trimmed stdout of `run` under this name.
    #[serde(default)]
    pub capture: Option<String>,
    /// Classify the outcome of `run` under this name using `outcomes`.
    #[serde(default)]
    pub classify: Option<String>,
    #[serde(default)]
    pub outcomes: Vec<Outcome>,
    /// Force an unclean shutdown; must be the last step of its boot.
    #[serde(default)]
    pub crash: Option<CrashKind>,
    /// Exit status the step must have (default 0; `nonzero`, `any`).
    #[serde(default)]
    pub expect_status: Option<ExpectStatus>,
    /// Exact value the capture must have (trimmed stdout).
    #[serde(default)]
    pub expect: Option<String>,
    /// Regular expression the stdout must match.
    #[serde(default)]
    pub expect_match: Option<String>,
    /// Run only if these labels/captures have one of the given values.
    #[serde(default)]
    pub when: Option<Cond>,
    /// Skip if these labels/captures have one of the given values.
    #[serde(default)]
    pub unless: Option<Cond>,
    /// Seconds before the guest kills the step (default 300).
    #[serde(default)]
    pub timeout: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum CrashKind {
    #[serde(rename = "sysrq-b")]
    SysrqB,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "serde_yaml_ng::Value", into = "String")]
pub enum ExpectStatus {
    Code(i32),
    Nonzero,
    Any,
}

impl From<ExpectStatus> for String {
    fn from(e: ExpectStatus) -> String {
        e.to_string()
    }
}

impl fmt::Display for ExpectStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectStatus::Code(c) => write!(f, "{c}"),
            ExpectStatus::Nonzero => f.write_str("nonzero"),
            ExpectStatus::Any => f.write_str("any"),
        }
    }
}

impl TryFrom<serde_yaml_ng::Value> for ExpectStatus {
    type Error = String;
    fn try_from(v: serde_yaml_ng::Value) -> Result<Self, String> {
        match &v {
            serde_yaml_ng::Value::Number(n) => n
                .as_i64()
                .and_then(|c| i32::try_from(c).ok())
                .filter(|c| (0..=255).contains(c))
                .map(ExpectStatus::Code)
                .ok_or_else(|| format!("exit status must be 0..255, got {n}")),
            serde_yaml_ng::Value::String(s) if s == "nonzero" => Ok(ExpectStatus::Nonzero),
            serde_yaml_ng::Value::String(s) if s == "any" => Ok(ExpectStatus::Any),
            _ => Err(format!(
                "expect_status must be a number, `nonzero` or `any`, got {v:?}"
            )),
        }
    }
}

impl ExpectStatus {
    pub fn accepts(self, status: i32) -> bool {
        match self {
            ExpectStatus::Code(c) => status == c,
            ExpectStatus::Nonzero => status != 0,
            ExpectStatus::Any => true,
        }
    }
}

/// A rule of a `classify` step: the first whose conditions all hold gives the label.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    pub label: String,
    /// `0`, `nonzero`, a code, or `any` (default).
    #[serde(default)]
    pub status: Option<ExpectStatus>,
    /// A fixed string that must appear in the kernel log lines printed during the step.
    #[serde(default)]
    pub dmesg: Option<String>,
}

/// Label a `classify` step gets when no outcome rule matches.
pub const UNCLASSIFIED: &str = "unclassified";

/// `{ name: value }` or `{ name: [value, value] }`; all names must match.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Cond(pub BTreeMap<String, OneOrMany>);

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn values(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

impl Cond {
    /// True when every named value is one of the allowed ones (a missing value never matches).
    pub fn holds(&self, values: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, allowed)| {
            values
                .get(k)
                .is_some_and(|v| allowed.values().contains(&v.as_str()))
        })
    }
}

/// A case-level assertion over captures and kernel logs.  Exactly one of
/// `equal`, `differ`, `dmesg_contains`, `dmesg_absent`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Assertion {
    #[serde(default)]
    pub equal: Option<[String; 2]>,
    #[serde(default)]
    pub differ: Option<[String; 2]>,
    /// Fixed string that must appear in the console log of `boot` (all boots if absent).
    #[serde(default)]
    pub dmesg_contains: Option<String>,
    /// Fixed string that must not appear in the console log of `boot` (all boots if absent).
    #[serde(default)]
    pub dmesg_absent: Option<String>,
    #[serde(default)]
    pub boot: Option<String>,
    /// What a failure means, e.g. "data loss: …"; shown in the verdict.
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub when: Option<Cond>,
    #[serde(default)]
    pub unless: Option<Cond>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectRule {
    /// Which kernels this rule is for; absent = every kernel.
    #[serde(default)]
    pub kernel: Option<KernelSel>,
    /// Allowed labels per classification name.
    pub classify: BTreeMap<String, OneOrMany>,
    /// Why (shown in the report).
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSel {
    /// Glob (`*`, `?`) on `uname -r`.
    #[serde(default)]
    pub release: Option<String>,
    /// Version requirement on the dm-cache target version, e.g. `>=2.4.0`, `<2.4.0`, `2.3.0`.
    #[serde(default)]
    pub cache_target: Option<String>,
}

/// Facts about the kernel a case ran on, used to pick an expectation rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelFacts {
    pub release: String,
    /// dm-cache target version as `dmsetup targets` prints it, without the `v`.
    pub cache_target: Option<String>,
}

impl KernelSel {
    pub fn matches(&self, facts: &KernelFacts) -> bool {
        let rel_ok = self
            .release
            .as_deref()
            .is_none_or(|g| glob_match(g, &facts.release));
        let ver_ok = match (&self.cache_target, &facts.cache_target) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(req), Some(v)) => version_req_matches(req, v).unwrap_or(false),
        };
        rel_ok && ver_ok
    }
}

impl Case {
    /// The first expectation rule that applies to this kernel.
    pub fn expectation_for(&self, facts: &KernelFacts) -> Option<&ExpectRule> {
        self.expect
            .iter()
            .find(|r| r.kernel.as_ref().is_none_or(|k| k.matches(facts)))
    }

    /// Names of all classifications in step order.
    pub fn classifications(&self) -> Vec<&str> {
        self.all_steps()
            .filter_map(|(_, _, s)| s.classify.as_deref())
            .collect()
    }

    /// Every step with its boot and step index.
    pub fn all_steps(&self) -> impl Iterator<Item = (usize, usize, &Step)> {
        self.boots
            .iter()
            .enumerate()
            .flat_map(|(b, boot)| boot.steps.iter().enumerate().map(move |(i, s)| (b, i, s)))
    }
}

impl Step {
    /// Short label for progress and reports.
    pub fn label(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        if let Some(c) = self.crash {
            return match c {
                CrashKind::SysrqB => "crash: sysrq-b".into(),
            };
        }
        let first = self
            .run
            .as_deref()
            .unwrap_or("")
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        let mut s: String = first.chars().take(60).collect();
        if first.chars().count() > 60 {
            s.push('…');
        }
        match (&self.capture, &self.classify) {
            (Some(c), _) => format!("capture {c}: {s}"),
            (_, Some(c)) => format!("classify {c}: {s}"),
            _ => s,
        }
    }
}

/// Matches `*` and `?` globs.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len()).any(|i| go(rest, &t[i..])),
            Some(('?', rest)) => !t.is_empty() && go(rest, &t[1..]),
            Some((c, rest)) => t.first() == Some(c) && go(rest, &t[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    go(&p, &t)
}

fn parse_version(v: &str) -> Option<Vec<u64>> {
    v.trim()
        .trim_start_matches('v')
        .split('.')
        .map(|p| p.parse().ok())
        .collect()
}

/// `>=2.4.0`, `>2.3`, `<=…`, `<…`, `=…` or a bare version (equality).
pub fn version_req_matches(req: &str, version: &str) -> Result<bool, String> {
    let req = req.trim();
    let (op, rest) = [">=", "<=", ">", "<", "==", "="]
        .iter()
        .find_map(|op| req.strip_prefix(op).map(|r| (*op, r)))
        .unwrap_or(("=", req));
    let mut want = parse_version(rest).ok_or_else(|| format!("bad version requirement `{req}`"))?;
    let mut have = parse_version(version).ok_or_else(|| format!("bad version `{version}`"))?;
    let n = want.len().max(have.len());
    want.resize(n, 0);
    have.resize(n, 0);
    let ord = have.cmp(&want);
    Ok(match op {
        ">=" => ord.is_ge(),
        "<=" => ord.is_le(),
        ">" => ord.is_gt(),
        "<" => ord.is_lt(),
        _ => ord.is_eq(),
    })
}

/// A case-file error with the file and, where known, line and column.
#[derive(Debug, thiserror::Error)]
#[error("{file}{loc}: {msg}", loc = match (.line, .col) { (Some(l), Some(c)) => format!(":{l}:{c}"), (Some(l), None) => format!(":{l}"), _ => String::new() })]
pub struct CaseError {
    pub file: String,
    pub line: Option<usize>,
    pub col: Option<usize>,
    pub msg: String,
}

/// Deserializes YAML; a syntax, type or unknown-key error becomes `file:line:col: message`.
pub fn from_yaml<T: serde::de::DeserializeOwned>(text: &str, file: &str) -> Result<T, CaseError> {
    serde_yaml_ng::from_str(text).map_err(|e| {
        let loc = e.location();
        // serde_yaml_ng appends " at line L column C"; we print it as file:L:C instead.
        let msg = e.to_string();
        let msg = match msg.rfind(" at line ") {
            Some(i) if loc.is_some() => msg[..i].to_string(),
            _ => msg,
        };
        CaseError {
            file: file.into(),
            line: loc.as_ref().map(|l| l.line()),
            col: loc.as_ref().map(|l| l.column()),
            msg,
        }
    })
}

/// Parses and validates case text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Case, CaseError> {
    let case: Case = from_yaml(text, file)?;
    case.validate().map_err(|(path, needle, msg)| {
        let line = needle.and_then(|n| locate(text, &n));
        CaseError {
            file: file.into(),
            line,
            col: None,
            msg: format!("{path}: {msg}"),
        }
    })?;
    Ok(case)
}

/// Reads and parses a case file.
pub fn load(path: &Path) -> Result<Case> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read case file {}", path.display()))?;
    Ok(parse(&text, &path.display().to_string())?)
}

/// The `cases/` directory of this checkout (or `$DMCACHE_VMTEST_CASES`).
pub fn cases_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("DMCACHE_VMTEST_CASES") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cases")
}

/// Resolves `NAME` (a file in `cases/`) or a path to a case file.
pub fn find(name_or_path: &str) -> Result<PathBuf> {
    let p = Path::new(name_or_path);
    if p.is_file() {
        return Ok(p.to_path_buf());
    }
    let in_dir = cases_dir().join(format!("{name_or_path}.yaml"));
    if in_dir.is_file() {
        return Ok(in_dir);
    }
    let names: Vec<String> = list()
        .unwrap_or_default()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    bail!(
        "no case `{name_or_path}`: not a file, and not in {} (known: {})",
        cases_dir().display(),
        names.join(", ")
    )
}

/// All case files in `cases/`, sorted: (name, path).
pub fn list() -> Result<Vec<(String, PathBuf)>> {
    let dir = cases_dir();
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            out.push((name, p));
        }
    }
    out.sort();
    Ok(out)
}

/// First line (1-based) containing `needle`.
fn locate(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

type VErr = (String, Option<String>, String);

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_lowercase())
        && c.all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')
        && !s.starts_with("dmt_")
}

impl Case {
    /// Semantic checks serde cannot express. Errors: (yaml path, text to locate, message).
    fn validate(&self) -> Result<(), VErr> {
        let err = |path: String, needle: Option<String>, msg: String| Err((path, needle, msg));
        if !self
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            || self.name.is_empty()
        {
            return err(
                "name".into(),
                Some("name:".into()),
                format!("`{}` must be letters, digits, `_` or `-`", self.name),
            );
        }
        if self.disks.is_empty() {
            return err(
                "disks".into(),
                Some("disks".into()),
                "at least one disk".into(),
            );
        }
        let mut disk_names = Vec::new();
        for (i, d) in self.disks.iter().enumerate() {
            if d.name.is_empty()
                || !d
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                || d.name.len() > 20
            {
                return err(
                    format!("disks[{i}].name"),
                    Some(d.name.clone()),
                    format!("`{}`: use up to 20 letters, digits or `_`", d.name),
                );
            }
            if disk_names.contains(&&d.name) {
                return err(
                    format!("disks[{i}].name"),
                    Some(d.name.clone()),
                    format!("disk `{}` is declared twice", d.name),
                );
            }
            disk_names.push(&d.name);
        }
        if self.boots.is_empty() {
            return err(
                "boots".into(),
                Some("boots".into()),
                "at least one boot".into(),
            );
        }
        // Names defined so far (captures and classifications), in execution order.
        let mut defined: Vec<&str> = Vec::new();
        for (b, boot) in self.boots.iter().enumerate() {
            if boot.steps.is_empty() {
                return err(
                    format!("boots[{b}]"),
                    Some(format!("name: {}", boot.name)),
                    format!("boot `{}` has no steps", boot.name),
                );
            }
            for (i, s) in boot.steps.iter().enumerate() {
                let path = format!("boots[{b}].steps[{i}] (boot `{}`)", boot.name);
                let needle = s
                    .capture
                    .as_ref()
                    .map(|c| format!("capture: {c}"))
                    .or_else(|| s.classify.as_ref().map(|c| format!("classify: {c}")))
                    .or_else(|| s.name.clone())
                    .or_else(|| {
                        s.run
                            .as_ref()
                            .and_then(|r| r.lines().next().map(|l| l.trim().to_string()))
                    });
                let kinds = [s.capture.is_some(), s.classify.is_some(), s.crash.is_some()]
                    .iter()
                    .filter(|x| **x)
                    .count();
                if kinds > 1 {
                    return err(
                        path,
                        needle,
                        "use only one of `capture`, `classify`, `crash`".into(),
                    );
                }
                if s.crash.is_some() {
                    if s.run.is_some() || s.expect.is_some() || !s.outcomes.is_empty() {
                        return err(
                            path,
                            needle,
                            "a `crash` step takes no `run`, `expect` or `outcomes`".into(),
                        );
                    }
                    if i + 1 != boot.steps.len() {
                        return err(
                            path,
                            Some("crash:".into()),
                            "`crash` must be the last step of its boot".into(),
                        );
                    }
                    if b + 1 == self.boots.len() {
                        return err(path, Some("crash:".into()), "the last boot cannot end in a crash: nothing would look at what it left".into());
                    }
                    if s.when.is_some() || s.unless.is_some() {
                        return err(path, needle, "a `crash` step cannot be conditional".into());
                    }
                } else if s.run.as_deref().is_none_or(|r| r.trim().is_empty()) {
                    return err(
                        path,
                        needle,
                        "a step needs `run` (or is `crash: sysrq-b`)".into(),
                    );
                }
                if s.classify.is_some() {
                    if s.outcomes.is_empty() {
                        return err(path, needle, "a `classify` step needs `outcomes`".into());
                    }
                    if s.expect_status.is_some() || s.expect.is_some() {
                        return err(
                            path,
                            needle,
                            "a `classify` step takes any exit status; use `outcomes`".into(),
                        );
                    }
                } else if !s.outcomes.is_empty() {
                    return err(
                        path,
                        needle,
                        "`outcomes` belongs to a `classify` step".into(),
                    );
                }
                if s.expect.is_some() && s.capture.is_none() {
                    return err(
                        path,
                        needle,
                        "`expect` belongs to a `capture` step (use `expect_match` on stdout)"
                            .into(),
                    );
                }
                if let Some(re) = &s.expect_match {
                    if let Err(e) = regex::Regex::new(re) {
                        return err(
                            path,
                            needle,
                            format!("`expect_match` is not a valid regex: {e}"),
                        );
                    }
                }
                for c in [&s.when, &s.unless].into_iter().flatten() {
                    for k in c.0.keys() {
                        if !defined.contains(&k.as_str()) {
                            return err(path, needle, format!("condition on `{k}`, which no earlier step captures or classifies"));
                        }
                    }
                }
                for n in [&s.capture, &s.classify].into_iter().flatten() {
                    if !is_ident(n) {
                        return err(path, needle, format!("`{n}`: names are lowercase letters, digits and `_`, starting with a letter (not `dmt_`)"));
                    }
                    if defined.contains(&n.as_str()) {
                        return err(path, needle, format!("`{n}` is defined twice"));
                    }
                    defined.push(n);
                }
            }
        }
        for (i, a) in self.assert.iter().enumerate() {
            let path = format!("assert[{i}]");
            let kinds = [
                a.equal.is_some(),
                a.differ.is_some(),
                a.dmesg_contains.is_some(),
                a.dmesg_absent.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count();
            if kinds != 1 {
                return err(
                    path,
                    Some("assert".into()),
                    "use exactly one of `equal`, `differ`, `dmesg_contains`, `dmesg_absent`".into(),
                );
            }
            for n in a.equal.iter().chain(a.differ.iter()).flatten() {
                if !defined.contains(&n.as_str()) {
                    return err(
                        path,
                        Some(n.clone()),
                        format!("`{n}` is not captured by any step"),
                    );
                }
            }
            if let Some(bn) = &a.boot {
                if !self.boots.iter().any(|b| &b.name == bn) {
                    return err(path, Some(bn.clone()), format!("no boot named `{bn}`"));
                }
            }
            for c in [&a.when, &a.unless].into_iter().flatten() {
                for k in c.0.keys() {
                    if !defined.contains(&k.as_str()) {
                        return err(
                            path,
                            Some(k.clone()),
                            format!("condition on `{k}`, which no step captures or classifies"),
                        );
                    }
                }
            }
        }
        let classes = self.classifications();
        for (i, r) in self.expect.iter().enumerate() {
            let path = format!("expect[{i}]");
            for (k, allowed) in &r.classify {
                if !classes.contains(&k.as_str()) {
                    return err(
                        path,
                        Some(k.clone()),
                        format!(
                            "`{k}` is not a classification of this case (have: {})",
                            classes.join(", ")
                        ),
                    );
                }
                let labels: Vec<&str> = self
                    .all_steps()
                    .filter(|(_, _, s)| s.classify.as_deref() == Some(k))
                    .flat_map(|(_, _, s)| s.outcomes.iter().map(|o| o.label.as_str()))
                    .chain([UNCLASSIFIED])
                    .collect();
                for v in allowed.values() {
                    if !labels.contains(&v) {
                        return err(
                            path,
                            Some(v.to_string()),
                            format!(
                                "`{v}` is not an outcome label of `{k}` (have: {})",
                                labels.join(", ")
                            ),
                        );
                    }
                }
            }
            if let Some(req) = r.kernel.as_ref().and_then(|k| k.cache_target.as_ref()) {
                if let Err(e) = version_req_matches(req, "0.0.0") {
                    return err(path, Some(req.clone()), e);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name: t
summary: a test
disks: [{ name: sdc, size: 256MiB }]
boots:
  - name: one
    steps:
      - run: "true"
      - capture: dirty
        run: echo 1
        expect: "1"
      - crash: sysrq-b
  - name: two
    steps:
      - classify: pt
        run: "false"
        outcomes:
          - { label: refused, status: nonzero, dmesg: "no" }
          - { label: accepted, status: 0 }
      - capture: later
        run: echo 2
        when: { pt: accepted }
assert:
  - differ: [dirty, later]
    when: { pt: accepted }
expect:
  - kernel: { cache_target: ">=2.4.0" }
    classify: { pt: refused }
  - classify: { pt: [refused, accepted] }
"#;

    #[test]
    fn parses_good_case() {
        let c = parse(GOOD, "t.yaml").unwrap();
        assert_eq!(c.disks[0].size, Size(256 << 20));
        assert_eq!(c.boots.len(), 2);
        assert_eq!(c.boots[0].steps[2].crash, Some(CrashKind::SysrqB));
        assert_eq!(c.classifications(), vec!["pt"]);
        let new = KernelFacts {
            release: "6.12".into(),
            cache_target: Some("2.4.0".into()),
        };
        let old = KernelFacts {
            release: "6.12".into(),
            cache_target: Some("2.3.0".into()),
        };
        assert_eq!(
            c.expectation_for(&new).unwrap().classify["pt"].values(),
            vec!["refused"]
        );
        assert_eq!(
            c.expectation_for(&old).unwrap().classify["pt"].values(),
            vec!["refused", "accepted"]
        );
    }

    fn err_of(text: &str) -> String {
        parse(text, "bad.yaml").unwrap_err().to_string()
    }

    #[test]
    fn unknown_key_has_file_line_col() {
        let e = err_of(&GOOD.replace("      - run: \"true\"", "      - rnu: \"true\""));
        assert!(e.starts_with("bad.yaml:8:"), "{e}");
        assert!(e.contains("unknown field `rnu`"), "{e}");
    }

    #[test]
    fn type_error_has_location() {
        let e = err_of(&GOOD.replace("size: 256MiB", "size: [1]"));
        assert!(e.starts_with("bad.yaml:4:"), "{e}");
        let e = err_of(&GOOD.replace("size: 256MiB", "size: 256Mb"));
        assert!(e.contains("unknown unit"), "{e}");
    }

    #[test]
    fn crash_must_be_last() {
        let bad = GOOD.replace(
            "      - crash: sysrq-b\n",
            "      - crash: sysrq-b\n      - run: echo after\n",
        );
        let e = err_of(&bad);
        assert!(e.contains("must be the last step"), "{e}");
        assert!(e.starts_with("bad.yaml:12"), "{e}");
    }

    #[test]
    fn bad_crash_kind() {
        let e = err_of(&GOOD.replace("crash: sysrq-b", "crash: sysrq-c"));
        assert!(e.contains("unknown variant `sysrq-c`"), "{e}");
    }

    #[test]
    fn undefined_names_rejected() {
        let e = err_of(&GOOD.replace("differ: [dirty, later]", "differ: [dirty, nope]"));
        assert!(e.contains("`nope` is not captured"), "{e}");
        let e = err_of(&GOOD.replace(
            "when: { pt: accepted }\nassert",
            "when: { zz: accepted }\nassert",
        ));
        assert!(e.contains("condition on `zz`"), "{e}");
        let e = err_of(&GOOD.replace("classify: { pt: refused }", "classify: { pt: refusd }"));
        assert!(e.contains("`refusd` is not an outcome label"), "{e}");
    }

    #[test]
    fn expect_status_values() {
        let e = err_of(&GOOD.replace(
            "      - run: \"true\"",
            "      - run: \"true\"\n        expect_status: sometimes",
        ));
        assert!(e.contains("expect_status must be"), "{e}");
        assert!(ExpectStatus::Nonzero.accepts(3));
        assert!(!ExpectStatus::Code(0).accepts(1));
    }

    #[test]
    fn globs_and_versions() {
        assert!(glob_match("6.1.0-*", "6.1.0-56-amd64"));
        assert!(!glob_match("6.1.0-*", "6.12.117+deb12-amd64"));
        assert!(version_req_matches(">=2.4.0", "2.4.0").unwrap());
        assert!(!version_req_matches(">=2.4.0", "2.3.0").unwrap());
        assert!(version_req_matches("<2.4", "2.3.0").unwrap());
        assert!(version_req_matches("2.3.0", "v2.3.0").unwrap());
        assert!(version_req_matches(">=x", "2.3.0").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("0MiB").is_err());
    }

    #[test]
    fn cond_holds() {
        let c: Cond = serde_yaml_ng::from_str("{ a: [x, y], b: z }").unwrap();
        let mut v = BTreeMap::new();
        v.insert("a".to_string(), "y".to_string());
        assert!(!c.holds(&v));
        v.insert("b".to_string(), "z".to_string());
        assert!(c.holds(&v));
    }
}
