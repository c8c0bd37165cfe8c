//! The case model: YAML files in `cases/`, parsed with serde (`serde_yaml_ng`), validated
//! with `file:line:col` errors.  A case is data only: new dm-cache cases need no Rust.
//!
//! Shape (see docs/case-format.md for an annotated example):
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

use crate::yaml::render_path;
pub use crate::yaml::{from_yaml, locate, CaseError, Seg};

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
    /// Fixture files (metadata XML for `cache_restore`, …): the guest finds each as
    /// `$FILES/<name>`, rewritten before every boot.  Inline text, or `{ path: … }` relative to
    /// the case file (read by [`load`]).
    #[serde(default)]
    pub files: BTreeMap<String, FileSource>,
    /// Kernel config options the case needs (`CONFIG_KASAN_VMALLOC`, …), each `=y` or `=m` in
    /// the kernel's config.  A kernel without one (or whose config is unknown) is refused
    /// before it boots: a case that cannot see its bug there must not report a PASS.
    #[serde(default)]
    pub requires: Vec<String>,
    /// How `crashpoints` reads the case's disk at a crash state (docs/crashpoints.md).
    #[serde(default)]
    pub crashpoints: Option<CrashpointsSpec>,
}

/// Where the cache's devices lie on the case's one disk, and when its workload is durable.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CrashpointsSpec {
    /// `[start, length]` in 512-byte sectors of the disk: the case's `linear` tables.
    pub metadata: [u64; 2],
    pub data: [u64; 2],
    pub origin: [u64; 2],
    /// The cache block size in sectors (the cache table's).
    pub block_sectors: u64,
    /// The step of the crash boot (a capture's or classification's name, or a step's `name`)
    /// after which the workload's writes must survive: a state cut before that step ended
    /// is judged by the host tier only (what was not yet made durable may be lost).
    pub durable_after: String,
}

/// The text of a fixture file: inline, or a file beside the case.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum FileSource {
    Text(String),
    Path { path: String },
}

impl Case {
    /// The fixture files' names and texts; an error names a `path:` fixture that was never
    /// read (a case parsed from text, not loaded from its file).
    pub fn file_texts(&self) -> Result<Vec<(&str, &str)>> {
        self.files
            .iter()
            .map(|(n, f)| match f {
                FileSource::Text(t) => Ok((n.as_str(), t.as_str())),
                FileSource::Path { path } => {
                    anyhow::bail!("files.{n}: `{path}` was not read (load the case from its file)")
                }
            })
            .collect()
    }
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
    /// Run udev in the guest (coldplug, rules, `/dev/disk/by-*`, dm udev sync).  Off by
    /// default: nothing in a dm-cache case needs it, it costs seconds per boot under TCG, and its
    /// probing of our devices can itself change a cache (it promoted an origin block once).
    #[serde(default)]
    pub udev: bool,
    /// Extra kernel command-line parameters for every boot of this case (after the runner's
    /// own, before `--kernel-arg`), e.g. `[preempt=full]` where the outcome would otherwise
    /// depend on the kernel's default preemption model.
    #[serde(default)]
    pub kernel_args: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    pub name: String,
    pub steps: Vec<Step>,
}

/// One step in the guest: what it does ([`StepKind`]) and the fields every kind has.
/// Authors write a flat mapping ([`RawStep`]); it is turned into this at parse time, so a
/// step that mixes kinds is rejected at its own `file:line:col`.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// A label for the report; defaults to the first line of the command.
    pub name: Option<String>,
    /// Run only if these labels/captures have one of the given values.
    pub when: Option<Cond>,
    /// Skip if these labels/captures have one of the given values.
    pub unless: Option<Cond>,
    pub kind: StepKind,
}

/// What a step does.  A new kind is added here, and the compiler points at every place
/// (guest script, replay, judge) that must handle it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// A command that must meet its expectations.
    Run(Command),
    /// A command whose trimmed stdout becomes the value `name`.
    Capture {
        name: String,
        cmd: Command,
        /// Exact value the capture must have.
        expect: Option<String>,
    },
    /// A command whose outcome (exit status + kernel log lines) is labelled by `outcomes`.
    Classify {
        name: String,
        /// Any exit status and output (`expect_status: any`): the outcomes judge it.
        cmd: Command,
        outcomes: Vec<Outcome>,
    },
    /// An unclean shutdown; the last step of its boot.
    Crash(CrashKind),
}

/// A shell command (bash, `set -e -o pipefail`) and what it must do.
#[derive(Debug, Clone, Serialize)]
pub struct Command {
    pub run: String,
    /// Exit status the command must have (default 0).
    pub expect_status: ExpectStatus,
    /// Regular expression (POSIX ERE subset) the trimmed stdout must match.
    pub expect_match: Option<String>,
    /// Seconds before the guest kills the command.
    pub timeout: u32,
}

/// Seconds a step's command may take when the case does not say.
pub const DEFAULT_STEP_TIMEOUT: u32 = 300;

/// A step as authors write it: one flat mapping.  Exactly one of `run` (alone),
/// `capture`+`run`, `classify`+`run`+`outcomes`, or `crash`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub run: Option<String>,
    #[serde(default)]
    pub capture: Option<String>,
    #[serde(default)]
    pub classify: Option<String>,
    #[serde(default)]
    pub outcomes: Vec<Outcome>,
    #[serde(default)]
    pub crash: Option<CrashKind>,
    #[serde(default)]
    pub expect_status: Option<ExpectStatus>,
    #[serde(default)]
    pub expect: Option<String>,
    #[serde(default)]
    pub expect_match: Option<String>,
    #[serde(default)]
    pub when: Option<Cond>,
    #[serde(default)]
    pub unless: Option<Cond>,
    #[serde(default)]
    pub timeout: Option<u32>,
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawStep::deserialize(d)?;
        Step::try_from(raw).map_err(serde::de::Error::custom)
    }
}

/// Why a step's fields do not make a step, and the key to point at when one is to blame.
#[derive(Debug)]
pub struct StepError {
    pub key: Option<&'static str>,
    pub msg: String,
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl From<&str> for StepError {
    fn from(msg: &str) -> Self {
        StepError {
            key: None,
            msg: msg.into(),
        }
    }
}

impl From<String> for StepError {
    fn from(msg: String) -> Self {
        StepError { key: None, msg }
    }
}

impl TryFrom<RawStep> for Step {
    type Error = StepError;
    fn try_from(r: RawStep) -> Result<Step, StepError> {
        let kinds: Vec<&str> = [
            (r.capture.is_some(), "capture"),
            (r.classify.is_some(), "classify"),
            (r.crash.is_some(), "crash"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, k)| *k)
        .collect();
        if kinds.len() > 1 {
            return Err(format!(
                "a step is one of `run`, `capture`, `classify`, `crash`; this one has `{}`",
                kinds.join("` and `")
            )
            .into());
        }
        let run = r.run.filter(|x| !x.trim().is_empty());
        let timeout = r.timeout.unwrap_or(DEFAULT_STEP_TIMEOUT);
        if timeout == 0 {
            return Err("`timeout` must be at least 1 second".into());
        }
        if let Some(re) = &r.expect_match {
            check_portable_regex(re)?;
        }
        if !r.outcomes.is_empty() && r.classify.is_none() {
            return Err("`outcomes` belongs to a `classify` step".into());
        }
        if r.expect.is_some() && r.capture.is_none() {
            return Err(
                "`expect` belongs to a `capture` step (use `expect_match` on stdout)".into(),
            );
        }
        for (key, n) in [("capture", &r.capture), ("classify", &r.classify)] {
            if let Some(n) = n.as_deref().filter(|n| !is_ident(n)) {
                return Err(StepError {
                    key: Some(key),
                    msg: format!(
                        "`{n}`: names are lowercase letters, digits and `_`, starting with a letter (`dmt_` is the runner's)"
                    ),
                });
            }
        }
        let kind = if let Some(c) = r.crash {
            if run.is_some()
                || r.expect_status.is_some()
                || r.expect_match.is_some()
                || r.timeout.is_some()
            {
                return Err(
                    "a `crash` step takes no `run`, `expect_status`, `expect_match` or `timeout`"
                        .into(),
                );
            }
            if r.when.is_some() || r.unless.is_some() {
                return Err("a `crash` step cannot be conditional".into());
            }
            StepKind::Crash(c)
        } else {
            let run = run.ok_or("a step needs `run` (or is `crash: sysrq-b`)")?;
            if let Some(name) = r.classify {
                if r.outcomes.is_empty() {
                    return Err("a `classify` step needs `outcomes`".into());
                }
                if r.expect_status.is_some() || r.expect_match.is_some() {
                    return Err(
                        "a `classify` step takes any exit status and output; use `outcomes`".into(),
                    );
                }
                StepKind::Classify {
                    name,
                    cmd: Command {
                        run,
                        expect_status: ExpectStatus::Any,
                        expect_match: None,
                        timeout,
                    },
                    outcomes: r.outcomes,
                }
            } else {
                let cmd = Command {
                    run,
                    expect_status: r.expect_status.unwrap_or(ExpectStatus::Code(0)),
                    expect_match: r.expect_match,
                    timeout,
                };
                match r.capture {
                    Some(name) => StepKind::Capture {
                        name,
                        cmd,
                        expect: r.expect,
                    },
                    None => StepKind::Run(cmd),
                }
            }
        };
        Ok(Step {
            name: r.name,
            when: r.when,
            unless: r.unless,
            kind,
        })
    }
}

/// `expect_match` is evaluated twice — by bash's `[[ =~ ]]` (POSIX ERE) in the guest, which
/// stops the boot on a mismatch, and by Rust's `regex` on the host, which judges — so it must
/// mean the same to both: no backslash classes or escapes like `\d`, `\n`, `\b`.
fn check_portable_regex(re: &str) -> Result<(), String> {
    regex::Regex::new(re).map_err(|e| format!("`expect_match` is not a valid regex: {e}"))?;
    let mut chars = re.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n) if n.is_ascii_alphanumeric() => {
                    return Err(format!(
                        "`expect_match`: `\\{n}` means different things to the guest (POSIX ERE) and the host; use a bracket expression such as [0-9] or [[:space:]]"
                    ))
                }
                _ => {}
            }
        }
    }
    Ok(())
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
    /// `timeout: true`: this outcome is the step running into its `timeout:` — the only kind
    /// of outcome a timed-out step can match (a hang is never read as a refusal).
    #[serde(default)]
    pub timeout: bool,
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

/// A case-level assertion over captures and kernel logs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(try_from = "RawAssertion")]
pub struct Assertion {
    pub check: Check,
    /// The boot whose kernel log a `dmesg_*` check reads (all boots if absent).
    pub boot: Option<String>,
    /// What a failure means, e.g. "data loss: …"; shown in the verdict.
    pub message: Option<String>,
    pub when: Option<Cond>,
    pub unless: Option<Cond>,
}

/// What an assertion checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Two values (captures or classifications) are equal.
    Equal([String; 2]),
    /// Two values differ.
    Differ([String; 2]),
    /// A fixed string appears in the kernel log.
    DmesgContains(String),
    /// A fixed string does not appear in the kernel log.
    DmesgAbsent(String),
}

impl Check {
    /// The YAML key and the value names it compares (none for the kernel-log checks).
    pub fn names(&self) -> (&'static str, &[String]) {
        match self {
            Check::Equal(p) => ("equal", p),
            Check::Differ(p) => ("differ", p),
            Check::DmesgContains(_) => ("dmesg_contains", &[]),
            Check::DmesgAbsent(_) => ("dmesg_absent", &[]),
        }
    }
}

/// An assertion as authors write it: one flat mapping, exactly one of `equal`, `differ`,
/// `dmesg_contains`, `dmesg_absent`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAssertion {
    #[serde(default)]
    equal: Option<[String; 2]>,
    #[serde(default)]
    differ: Option<[String; 2]>,
    #[serde(default)]
    dmesg_contains: Option<String>,
    #[serde(default)]
    dmesg_absent: Option<String>,
    #[serde(default)]
    boot: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    when: Option<Cond>,
    #[serde(default)]
    unless: Option<Cond>,
}

impl TryFrom<RawAssertion> for Assertion {
    type Error = String;
    fn try_from(r: RawAssertion) -> Result<Assertion, String> {
        let mut checks: Vec<Check> = [
            r.equal.map(Check::Equal),
            r.differ.map(Check::Differ),
            r.dmesg_contains.map(Check::DmesgContains),
            r.dmesg_absent.map(Check::DmesgAbsent),
        ]
        .into_iter()
        .flatten()
        .collect();
        if checks.len() != 1 {
            return Err(
                "an assertion takes exactly one of `equal`, `differ`, `dmesg_contains`, `dmesg_absent`"
                    .into(),
            );
        }
        Ok(Assertion {
            check: checks.remove(0),
            boot: r.boot,
            message: r.message,
            when: r.when,
            unless: r.unless,
        })
    }
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
            .filter_map(|(_, _, s)| match &s.kind {
                StepKind::Classify { name, .. } => Some(name.as_str()),
                StepKind::Run(_) | StepKind::Capture { .. } | StepKind::Crash(_) => None,
            })
            .collect()
    }

    /// The outcome labels of classification `name` (without [`UNCLASSIFIED`]).
    pub fn outcome_labels(&self, name: &str) -> Vec<&str> {
        self.all_steps()
            .filter_map(|(_, _, s)| match &s.kind {
                StepKind::Classify {
                    name: n, outcomes, ..
                } if n == name => Some(outcomes),
                _ => None,
            })
            .flatten()
            .map(|o| o.label.as_str())
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

impl Boot {
    /// True when the boot ends in a planned unclean shutdown.
    pub fn ends_in_crash(&self) -> bool {
        self.steps
            .last()
            .is_some_and(|s| matches!(s.kind, StepKind::Crash(_)))
    }
}

impl Step {
    /// The command the guest runs, if the step has one.
    pub fn cmd(&self) -> Option<&Command> {
        match &self.kind {
            StepKind::Run(c)
            | StepKind::Capture { cmd: c, .. }
            | StepKind::Classify { cmd: c, .. } => Some(c),
            StepKind::Crash(_) => None,
        }
    }

    /// The shell command the guest runs, if the step has one.
    pub fn command(&self) -> Option<&str> {
        self.cmd().map(|c| c.run.as_str())
    }

    /// Seconds before the guest kills the step's command.
    pub fn timeout(&self) -> u32 {
        self.cmd().map_or(0, |c| c.timeout)
    }

    /// The value this step defines (a capture or a classification).
    pub fn defines(&self) -> Option<&str> {
        match &self.kind {
            StepKind::Capture { name, .. } | StepKind::Classify { name, .. } => Some(name),
            StepKind::Run(_) | StepKind::Crash(_) => None,
        }
    }

    pub fn is_crash(&self) -> bool {
        matches!(self.kind, StepKind::Crash(_))
    }

    /// Short label for progress and reports.
    pub fn label(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let first = self
            .command()
            .unwrap_or("")
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        let mut s: String = first.chars().take(60).collect();
        if first.chars().count() > 60 {
            s.push('…');
        }
        match &self.kind {
            StepKind::Crash(CrashKind::SysrqB) => "crash: sysrq-b".into(),
            StepKind::Capture { name, .. } => format!("capture {name}: {s}"),
            StepKind::Classify { name, .. } => format!("classify {name}: {s}"),
            StepKind::Run(_) => s,
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

/// Parses and validates case text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Case, CaseError> {
    let case: Case =
        from_yaml(text, file).map_err(|e| locate_step_error(text, file).unwrap_or(e))?;
    case.validate().map_err(|e| {
        let msg = format!("{}: {}", render_path(&e.path), e.msg);
        CaseError::at(text, file, &e.path, msg)
    })?;
    Ok(case)
}

/// serde_yaml_ng places an error raised while turning a [`RawStep`] into a [`Step`] at the
/// start of the `steps` list; this finds the step itself (the first that does not convert) and
/// says its position.  `None` when no step fails to convert (the error is elsewhere).
fn locate_step_error(text: &str, file: &str) -> Option<CaseError> {
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).ok()?;
    let boots = doc.get("boots")?.as_sequence()?;
    for (b, boot) in boots.iter().enumerate() {
        let Some(steps) = boot.get("steps").and_then(|s| s.as_sequence()) else {
            continue;
        };
        for (i, st) in steps.iter().enumerate() {
            let Ok(raw) = serde_yaml_ng::from_value::<RawStep>(st.clone()) else {
                continue;
            };
            if let Err(StepError { key, msg }) = Step::try_from(raw) {
                let mut path = vec![
                    Seg::Key("boots"),
                    Seg::Index(b),
                    Seg::Key("steps"),
                    Seg::Index(i),
                ];
                path.extend(key.map(Seg::Key));
                let at = locate(text, &path);
                return Some(CaseError {
                    file: file.into(),
                    line: at.map(|(l, _)| l),
                    col: at.map(|(_, c)| c),
                    msg: format!("{}: {msg}", render_path(&path)),
                });
            }
        }
    }
    None
}

/// Reads and parses a case file.
pub fn load(path: &Path) -> Result<Case> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read case file {}", path.display()))?;
    let mut case = parse(&text, &path.display().to_string())?;
    let dir = path.parent().unwrap_or(Path::new("."));
    for (name, f) in case.files.iter_mut() {
        if let FileSource::Path { path: rel } = f {
            let p = dir.join(&*rel);
            let t = std::fs::read_to_string(&p).with_context(|| {
                format!(
                    "{}: files.{name}: cannot read {}",
                    path.display(),
                    p.display()
                )
            })?;
            *f = FileSource::Text(t);
        }
    }
    Ok(case)
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

/// A validation error: where (a path to the exact node) and what.
#[derive(Debug, Clone)]
pub struct VErr {
    pub path: Vec<Seg>,
    pub msg: String,
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_lowercase())
        && c.all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')
        && !s.starts_with("dmt_")
}

/// A `--kernel-arg` value: one `name` or `name=value` parameter, nothing the command line
/// would split or quote.
pub fn check_kernel_arg(a: &str) -> Result<(), String> {
    if a.is_empty()
        || a.starts_with('=')
        || a.chars().any(|c| c.is_whitespace() || "\"'\\".contains(c))
    {
        return Err(format!(
            "kernel parameter `{a}`: one parameter, `name` or `name=value`, without spaces or quotes"
        ));
    }
    let name = a.split('=').next().unwrap_or(a);
    if SILENCING.iter().any(|s| match s.strip_suffix('.') {
        Some(prefix) => name.starts_with(&format!("{prefix}.")),
        None => name == *s,
    }) {
        return Err(format!(
            "kernel parameter `{a}`: it changes what the kernel prints to the console the runner reads its splats from; not allowed"
        ));
    }
    Ok(())
}

/// Parameters that silence or move the console: a splat the runner never sees would be a
/// PASS never earned.  (`printk.` is a prefix: every printk module parameter.)
const SILENCING: &[&str] = &[
    "quiet",
    "loglevel",
    "console",
    "earlycon",
    "earlyprintk",
    "printk.",
    "console_msg_format",
];

fn verr<T>(path: Vec<Seg>, msg: String) -> Result<T, VErr> {
    Err(VErr { path, msg })
}

/// `condition on K`: every name a `when:`/`unless:` tests must be in `defined`.
fn check_conditions(
    conds: [(&'static str, &Option<Cond>); 2],
    defined: &[&str],
    at: &dyn Fn(&'static str) -> Vec<Seg>,
    earlier: &str,
) -> Result<(), VErr> {
    for (key, c) in conds {
        for k in c.iter().flat_map(|c| c.0.keys()) {
            if !defined.contains(&k.as_str()) {
                let mut p = at(key);
                p.push(Seg::Name(k.clone()));
                return verr(
                    p,
                    format!("condition on `{k}`, which no {earlier}step captures or classifies"),
                );
            }
        }
    }
    Ok(())
}

impl Case {
    /// Semantic checks serde cannot express, each pointing at the node it is about.
    fn validate(&self) -> Result<(), VErr> {
        self.validate_header()?;
        self.validate_disks()?;
        self.validate_files()?;
        let defined = self.validate_boots()?;
        self.validate_asserts(&defined)?;
        self.validate_expect()?;
        self.validate_crashpoints()
    }

    /// The first boot that ends in a crash: the boot `crashpoints` records.
    pub fn crash_boot(&self) -> Option<usize> {
        self.boots.iter().position(|b| b.ends_in_crash())
    }

    /// The step of `boot` that `durable_after` names.
    pub fn durable_step(&self, boot: usize, name: &str) -> Option<usize> {
        self.boots[boot]
            .steps
            .iter()
            .position(|s| s.defines() == Some(name) || s.name.as_deref() == Some(name))
    }

    /// `crashpoints:`: one disk, a crash boot (and so a recovery boot after it), the three
    /// areas inside the disk and apart, whole cache blocks, a `durable_after` step there.
    fn validate_crashpoints(&self) -> Result<(), VErr> {
        use Seg::Key;
        let Some(c) = &self.crashpoints else {
            return Ok(());
        };
        let at = |k: &'static str| vec![Key("crashpoints"), Key(k)];
        if self.disks.len() != 1 {
            return verr(
                at("metadata"),
                format!(
                    "crashpoints record one disk (one ordered write log); this case has {}",
                    self.disks.len()
                ),
            );
        }
        let Some(cb) = self.crash_boot() else {
            return verr(vec![Key("crashpoints")], "crashpoints need a boot that ends in `crash: sysrq-b` and one after it that recovers; this case has no crash".into());
        };
        if cb >= 8 || self.boots[..=cb].iter().any(|b| b.steps.len() > 255) {
            return verr(
                vec![Key("crashpoints")],
                "crashpoints mark at most 8 boots of 255 steps up to the crash".into(),
            );
        }
        let sectors = self.disks[0].size.0 / 512;
        let areas = [
            ("metadata", c.metadata),
            ("data", c.data),
            ("origin", c.origin),
        ];
        for (k, [start, len]) in areas {
            if len == 0 || start.checked_add(len).is_none_or(|e| e > sectors) {
                return verr(at(k), format!("[{start}, {len}] must be a non-empty range inside the disk's {sectors} sectors"));
            }
        }
        for (i, (k, [s1, l1])) in areas.iter().enumerate() {
            for (k2, [s2, l2]) in &areas[i + 1..] {
                if s1 < &(s2 + l2) && s2 < &(s1 + l1) {
                    return verr(at(k2), format!("overlaps `{k}`"));
                }
            }
        }
        if c.block_sectors == 0 || c.data[1] % c.block_sectors != 0 {
            return verr(
                at("block_sectors"),
                format!(
                    "{} must divide the data area's {} sectors",
                    c.block_sectors, c.data[1]
                ),
            );
        }
        if self.durable_step(cb, &c.durable_after).is_none() {
            return verr(at("durable_after"), format!("`{}` names no step of the crash boot `{}` (a capture's or classification's name, or a step's `name`)", c.durable_after, self.boots[cb].name));
        }
        Ok(())
    }

    /// The name, the kernel arguments and `requires:`.
    fn validate_header(&self) -> Result<(), VErr> {
        use Seg::{Index, Key};
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return verr(
                vec![Key("name")],
                format!("`{}` must be letters, digits, `_` or `-`", self.name),
            );
        }
        for (i, a) in self.vm.kernel_args.iter().enumerate() {
            if let Err(msg) = check_kernel_arg(a) {
                return verr(vec![Key("vm"), Key("kernel_args"), Index(i)], msg);
            }
        }
        for (i, r) in self.requires.iter().enumerate() {
            let ok = r.strip_prefix("CONFIG_").is_some_and(|n| {
                !n.is_empty()
                    && n.chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            });
            if !ok {
                return verr(
                    vec![Key("requires"), Index(i)],
                    format!("`{r}` is not a kernel config option (CONFIG_ and upper-case letters, digits or `_`)"),
                );
            }
        }
        Ok(())
    }

    /// At least one disk, each named once with a short plain word.
    fn validate_disks(&self) -> Result<(), VErr> {
        use Seg::{Index, Key};
        if self.disks.is_empty() {
            return verr(vec![Key("disks")], "at least one disk".into());
        }
        let mut disk_names = Vec::new();
        for (i, d) in self.disks.iter().enumerate() {
            let at = vec![Key("disks"), Index(i), Key("name")];
            if d.name.is_empty()
                || !d
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                || d.name.len() > 20
            {
                return verr(
                    at,
                    format!("`{}`: use up to 20 letters, digits or `_`", d.name),
                );
            }
            if disk_names.contains(&&d.name) {
                return verr(at, format!("disk `{}` is declared twice", d.name));
            }
            disk_names.push(&d.name);
        }
        Ok(())
    }

    /// Fixture names, and their paths relative to the case file without `..`.
    fn validate_files(&self) -> Result<(), VErr> {
        use Seg::{Key, Name};
        for (n, f) in &self.files {
            let ok = n.len() <= 64
                && n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !ok {
                return verr(
                    vec![Key("files"), Name(n.clone())],
                    format!("file name `{n}`: use up to 64 letters, digits, `.`, `_` or `-`, starting with a letter or digit"),
                );
            }
            if let FileSource::Path { path } = f {
                if Path::new(path).is_absolute() || path.split('/').any(|c| c == "..") {
                    return verr(
                        vec![Key("files"), Name(n.clone()), Key("path")],
                        format!("`{path}` must be relative to the case file, without `..`"),
                    );
                }
            }
        }
        Ok(())
    }

    /// Boot names and steps; returns the names the steps define, in execution order.
    fn validate_boots(&self) -> Result<Vec<&str>, VErr> {
        use Seg::{Index, Key};
        if self.boots.is_empty() {
            return verr(vec![Key("boots")], "at least one boot".into());
        }
        let mut defined: Vec<&str> = Vec::new();
        for (b, boot) in self.boots.iter().enumerate() {
            // A boot's name lands in the generated script, file names and reports.
            let ok = !boot.name.is_empty()
                && boot.name.len() <= 40
                && boot
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c));
            if !ok {
                return verr(
                    vec![Key("boots"), Index(b), Key("name")],
                    format!(
                        "boot name `{}`: use up to 40 letters, digits, `_` or `-`",
                        boot.name.escape_debug()
                    ),
                );
            }
            if boot.steps.is_empty() {
                return verr(
                    vec![Key("boots"), Index(b), Key("steps")],
                    format!("boot `{}` has no steps", boot.name),
                );
            }
            for i in 0..boot.steps.len() {
                self.validate_step(b, i, &mut defined)?;
            }
        }
        Ok(defined)
    }

    /// Step `i` of boot `b`: a crash only last and never in the last boot, conditions only
    /// on names defined earlier, each name defined once (added to `defined`).
    fn validate_step<'a>(
        &'a self,
        b: usize,
        i: usize,
        defined: &mut Vec<&'a str>,
    ) -> Result<(), VErr> {
        use Seg::{Index, Key};
        let boot = &self.boots[b];
        let s = &boot.steps[i];
        let at = |k: &'static str| vec![Key("boots"), Index(b), Key("steps"), Index(i), Key(k)];
        if s.is_crash() {
            if i + 1 != boot.steps.len() {
                return verr(
                    at("crash"),
                    "`crash` must be the last step of its boot".into(),
                );
            }
            if b + 1 == self.boots.len() {
                return verr(
                    at("crash"),
                    "the last boot cannot end in a crash: nothing would look at what it left"
                        .into(),
                );
            }
        }
        check_conditions(
            [("when", &s.when), ("unless", &s.unless)],
            defined,
            &at,
            "earlier ",
        )?;
        if let Some(n) = s.defines() {
            let key = if matches!(s.kind, StepKind::Capture { .. }) {
                "capture"
            } else {
                "classify"
            };
            if defined.contains(&n) {
                return verr(at(key), format!("`{n}` is defined twice"));
            }
            defined.push(n);
        }
        Ok(())
    }

    /// Each assertion: exactly one kind, on names some step defines, a boot that exists.
    fn validate_asserts(&self, defined: &[&str]) -> Result<(), VErr> {
        use Seg::{Index, Key};
        for (i, a) in self.assert.iter().enumerate() {
            let at = |k: &'static str| vec![Key("assert"), Index(i), Key(k)];
            let (key, names) = a.check.names();
            for (j, n) in names.iter().enumerate() {
                if !defined.contains(&n.as_str()) {
                    let mut p = at(key);
                    p.push(Index(j));
                    return verr(p, format!("`{n}` is not captured by any step"));
                }
            }
            if let Some(bn) = &a.boot {
                if !self.boots.iter().any(|b| &b.name == bn) {
                    return verr(at("boot"), format!("no boot named `{bn}`"));
                }
            }
            check_conditions([("when", &a.when), ("unless", &a.unless)], defined, &at, "")?;
        }
        Ok(())
    }

    /// `expect:` rules: classifications of this case, labels it can give, valid version ranges.
    fn validate_expect(&self) -> Result<(), VErr> {
        use Seg::{Index, Key, Name};
        let classes = self.classifications();
        for (i, r) in self.expect.iter().enumerate() {
            for (k, allowed) in &r.classify {
                let at = vec![Key("expect"), Index(i), Key("classify"), Name(k.clone())];
                if !classes.contains(&k.as_str()) {
                    return verr(
                        at,
                        format!(
                            "`{k}` is not a classification of this case (have: {})",
                            classes.join(", ")
                        ),
                    );
                }
                let mut labels = self.outcome_labels(k);
                labels.push(UNCLASSIFIED);
                for v in allowed.values() {
                    if !labels.contains(&v) {
                        return verr(
                            at,
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
                    return verr(
                        vec![Key("expect"), Index(i), Key("kernel"), Key("cache_target")],
                        e,
                    );
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
        assert!(matches!(
            c.boots[0].steps[2].kind,
            StepKind::Crash(CrashKind::SysrqB)
        ));
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

    const CRASHPOINTS: &str = "crashpoints:\n  metadata: [0, 8192]\n  data: [8192, 131072]\n  origin: [262144, 262144]\n  block_sectors: 128\n  durable_after: dirty\n";

    #[test]
    fn crashpoints_key_is_checked_where_it_is_written() {
        let c = parse(&format!("{GOOD}{CRASHPOINTS}"), "t.yaml").unwrap();
        assert_eq!(c.crash_boot(), Some(0));
        assert_eq!(c.durable_step(0, "dirty"), Some(1));
        let e = err_of(&format!(
            "{GOOD}{}",
            CRASHPOINTS.replace("durable_after: dirty", "durable_after: later")
        ));
        assert!(
            e.contains("bad.yaml:35:") && e.contains("names no step of the crash boot"),
            "{e}"
        );
        let e = err_of(&format!(
            "{GOOD}{}",
            CRASHPOINTS.replace("[262144, 262144]", "[262144, 262145]")
        ));
        assert!(e.contains("inside the disk"), "{e}");
        let e = err_of(&format!(
            "{GOOD}{}",
            CRASHPOINTS.replace("[8192, 131072]", "[0, 131072]")
        ));
        assert!(e.contains("overlaps"), "{e}");
        let e = err_of(&format!(
            "{GOOD}{}",
            CRASHPOINTS.replace("block_sectors: 128", "block_sectors: 100")
        ));
        assert!(e.contains("must divide"), "{e}");
        // No crash: nothing to recover from.
        let no_crash = GOOD.replace("      - crash: sysrq-b\n", "");
        let e = err_of(&format!("{no_crash}{CRASHPOINTS}"));
        assert!(e.contains("bad.yaml:") && e.contains("no crash"), "{e}");
    }

    const FILES: &str =
        "files:\n  a.xml: |\n    <superblock/>\n  b.xml: { path: fixtures/b.xml }\n";

    #[test]
    fn fixture_files_inline_or_beside_the_case() {
        let c = parse(&format!("{GOOD}{FILES}"), "t.yaml").unwrap();
        assert_eq!(c.files["a.xml"], FileSource::Text("<superblock/>\n".into()));
        let e = c.file_texts().unwrap_err().to_string();
        assert!(
            e.contains("files.b.xml: `fixtures/b.xml` was not read"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("fixtures")).unwrap();
        std::fs::write(dir.path().join("fixtures/b.xml"), "<b/>").unwrap();
        let f = dir.path().join("t.yaml");
        std::fs::write(&f, format!("{GOOD}{FILES}")).unwrap();
        let c = load(&f).unwrap();
        assert_eq!(
            c.file_texts().unwrap(),
            vec![("a.xml", "<superblock/>\n"), ("b.xml", "<b/>")]
        );
        std::fs::remove_file(dir.path().join("fixtures/b.xml")).unwrap();
        let e = format!("{:#}", load(&f).unwrap_err());
        assert!(e.contains("files.b.xml: cannot read"), "{e}");
    }

    #[test]
    fn requires_names_kernel_config_options() {
        let c = parse(
            &format!("{GOOD}requires: [CONFIG_KASAN, CONFIG_KASAN_VMALLOC]\n"),
            "t.yaml",
        )
        .unwrap();
        assert_eq!(c.requires, vec!["CONFIG_KASAN", "CONFIG_KASAN_VMALLOC"]);
        let e = err_of(&format!("{GOOD}requires: [CONFIG_KASAN, kasan]\n"));
        assert!(e.starts_with("bad.yaml:30:26: requires[1]"), "{e}");
        assert!(e.contains("`kasan` is not a kernel config option"), "{e}");
    }

    #[test]
    fn fixture_names_and_paths_are_checked_where_written() {
        let e = err_of(&format!("{GOOD}files:\n  ../x: hi\n"));
        assert!(e.starts_with("bad.yaml:31:"), "{e}");
        assert!(e.contains("files.../x: file name `../x`"), "{e}");
        let e = err_of(&format!(
            "{GOOD}files:\n  x: {{ path: ../../etc/passwd }}\n"
        ));
        assert!(e.starts_with("bad.yaml:31:"), "{e}");
        assert!(
            e.contains("must be relative to the case file, without `..`"),
            "{e}"
        );
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
    fn an_assertion_has_exactly_one_check() {
        let c = parse(GOOD, "good.yaml").unwrap();
        assert_eq!(
            c.assert[0].check,
            Check::Differ(["dirty".into(), "later".into()])
        );
        for bad in [
            "  - differ: [dirty, later]\n    equal: [dirty, later]\n",
            "  - message: nothing to check\n",
        ] {
            let e = err_of(&GOOD.replace(
                "  - differ: [dirty, later]\n    when: { pt: accepted }\n",
                bad,
            ));
            assert!(e.contains("exactly one of `equal`, `differ`"), "{e}");
            assert!(e.starts_with("bad.yaml:"), "{e}");
        }
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

    /// Finding 7: the error names the exact node, not the first line with the same text.
    #[test]
    fn validation_points_at_the_exact_node() {
        let twice = GOOD.replace(
            "      - capture: later\n        run: echo 2",
            "      - capture: dirty\n        run: echo 2",
        );
        let e = err_of(&twice);
        assert!(e.contains("`dirty` is defined twice"), "{e}");
        assert!(
            e.starts_with("bad.yaml:20:18: boots[1].steps[1].capture"),
            "{e}"
        );
        let e = err_of(&GOOD.replace(
            "when: { pt: accepted }\nassert",
            "when: { zz: accepted }\nassert",
        ));
        assert!(
            e.starts_with("bad.yaml:22:21: boots[1].steps[1].when.zz"),
            "{e}"
        );
        let e = err_of(&GOOD.replace("differ: [dirty, later]", "differ: [dirty, nope]"));
        assert!(e.starts_with("bad.yaml:24:21: assert[0].differ[1]"), "{e}");
    }

    #[test]
    fn a_step_of_two_kinds_is_rejected_where_it_stands() {
        let e = err_of(&GOOD.replace(
            "      - capture: dirty\n",
            "      - capture: dirty\n        classify: x\n",
        ));
        assert!(e.contains("this one has `capture` and `classify`"), "{e}");
        assert!(e.starts_with("bad.yaml:9:"), "{e}");
    }

    #[test]
    fn kernel_args_of_a_case() {
        let c = parse(
            &GOOD.replace(
                "disks:",
                "vm: { kernel_args: [preempt=full, nokaslr] }\ndisks:",
            ),
            "t.yaml",
        )
        .unwrap();
        assert_eq!(c.vm.kernel_args, vec!["preempt=full", "nokaslr"]);
        let e = err_of(&GOOD.replace(
            "disks:",
            "vm: { kernel_args: [preempt=full, \"a b\"] }\ndisks:",
        ));
        assert!(
            e.starts_with("bad.yaml:4:35: vm.kernel_args[1]: kernel parameter `a b`"),
            "{e}"
        );
    }

    #[test]
    fn names_the_guest_script_uses_are_reserved() {
        let e = err_of(&GOOD.replace("capture: dirty", "capture: dmt_st"));
        assert!(e.contains("`dmt_` is the runner's"), "{e}");
        // At the name itself, not at the step that holds it.
        assert!(e.starts_with("bad.yaml:9:18:"), "{e}");
    }

    #[test]
    fn expect_match_must_mean_the_same_in_guest_and_host() {
        let e = err_of(&GOOD.replace(
            "      - run: \"true\"",
            "      - run: \"true\"\n        expect_match: '^\\d+$'",
        ));
        assert!(e.contains("`\\d` means different things"), "{e}");
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

    #[test]
    fn a_boot_name_must_be_a_plain_word() {
        for bad in ["\"a\\nb\"", "\"a b\"", "\"a;b\"", "\"\""] {
            let text = format!("name: t\nsummary: t\ndisks: [{{ name: sdc, size: 1MiB }}]\nboots:\n  - name: {bad}\n    steps:\n      - run: \"true\"\n");
            let e = parse(&text, "t.yaml").unwrap_err().to_string();
            assert!(
                e.contains("t.yaml:5:") && e.contains("boot name"),
                "{bad}: {e}"
            );
        }
    }
}
