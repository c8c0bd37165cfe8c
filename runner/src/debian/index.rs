//! What the archive offers: the kernel-related records of the suites' `Packages` indexes, the
//! kernels they make up (packaging form, usable or why not), and resolving a `debian:` spec
//! against them.  Pure: no network, no apt.

use super::version;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// One binary package version in one suite (only the fields the runner needs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub package: String,
    pub version: String,
    pub suite: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub depends: String,
    /// kB, as the index says.
    #[serde(default)]
    pub installed_size: u64,
}

/// Packages the runner cares about: kernels, their split parts, and kernel sources.
pub fn wanted(package: &str) -> bool {
    ["image-", "binary-", "modules-", "base-", "source-"]
        .iter()
        .any(|p| {
            package
                .strip_prefix("linux-")
                .is_some_and(|r| r.starts_with(p))
        })
}

/// The wanted records of one `Packages` text (a suite's index).
pub fn parse_packages(text: &str, suite: &str) -> Vec<Record> {
    let mut out = Vec::new();
    let mut cur: Option<Record> = None;
    let mut finish = |cur: &mut Option<Record>| {
        if let Some(r) = cur.take() {
            if !r.version.is_empty() {
                out.push(r);
            }
        }
    };
    for line in text.lines() {
        if line.is_empty() {
            finish(&mut cur);
            continue;
        }
        if let Some(p) = line.strip_prefix("Package: ") {
            finish(&mut cur);
            let p = p.trim();
            if wanted(p) {
                cur = Some(Record {
                    package: p.to_string(),
                    version: String::new(),
                    suite: suite.to_string(),
                    depends: String::new(),
                    installed_size: 0,
                });
            }
            continue;
        }
        let Some(r) = cur.as_mut() else { continue };
        if let Some(v) = line.strip_prefix("Version: ") {
            r.version = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("Depends: ") {
            r.depends = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("Installed-Size: ") {
            r.installed_size = v.trim().parse().unwrap_or(0);
        }
    }
    finish(&mut cur);
    out
}

/// How Debian packages a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    /// `linux-image-V-amd64-unsigned`: the whole kernel in one package.
    Unsigned,
    /// `linux-image-V-amd64` (up to 6.18): the whole kernel, signed image.
    Signed,
    /// From 6.19 on: `linux-binary-V` (the image), `linux-modules-V`, `linux-base-V`.
    Split,
}

impl Form {
    pub fn name(self) -> &'static str {
        match self {
            Form::Unsigned => "unsigned",
            Form::Signed => "signed",
            Form::Split => "split",
        }
    }
}

/// A kernel the archive names.
#[derive(Debug, Clone, Serialize)]
pub struct KernelEntry {
    /// The ABI name in the package names: `6.12.117+deb12`, `6.1.0-56`, `7.3`.
    pub abi: String,
    /// The package version: `6.12.117-1~deb12u1`.
    pub version: String,
    /// The upstream version: `6.12.117`, `7.3~rc7`.
    pub upstream: String,
    pub suites: Vec<String>,
    pub form: Form,
    /// `(package, version)` to download and unpack, in order.
    pub packages: Vec<(String, String)>,
    /// Why it cannot be had, if so (e.g. its modules are gone from the archive).
    pub unusable: Option<String>,
}

impl KernelEntry {
    pub fn usable(&self) -> bool {
        self.unusable.is_none()
    }
    pub fn release(&self) -> String {
        format!("{}-amd64", self.abi)
    }
    pub fn spec(&self) -> String {
        format!("debian:{}", self.abi)
    }
}

/// `linux-{kind}-{abi}-amd64` → abi, for ABI names of the generic amd64 flavour only
/// (`6.12.117+deb12`, `6.1.0-56`, `6.12.90+deb13.1`, `7.3`; not `…-cloud`, `…-rt`).
fn abi_of<'a>(package: &'a str, kind: &str) -> Option<&'a str> {
    let abi = package
        .strip_prefix("linux-")?
        .strip_prefix(kind)?
        .strip_prefix('-')?
        .strip_suffix("-amd64")?;
    let (main, deb) = match abi.split_once('+') {
        Some((m, d)) => (m, Some(d)),
        None => (abi, None),
    };
    let (dotted, abinum) = match main.split_once('-') {
        Some((d, n)) => (d, Some(n)),
        None => (main, None),
    };
    let nums = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let ok = dotted.split('.').count() >= 2
        && dotted.split('.').all(nums)
        && abinum.is_none_or(nums)
        && deb.is_none_or(|d| {
            d.strip_prefix("deb")
                .is_some_and(|n| n.split('.').all(nums))
        });
    ok.then_some(abi)
}

/// `linux-binary-V-amd64 (= 6.19.14-1~bpo13+1), …` → does `depends` name `pkg`?
fn depends_on(depends: &str, pkg: &str) -> bool {
    depends.split([',', '|']).any(|d| {
        d.split_whitespace().next() == Some(pkg)
            || d.split_whitespace().next() == Some(&format!("{pkg}:any"))
    })
}

/// The runner's view of the archive: every kernel (newest first) and the kernel sources.
#[derive(Debug, Clone, Default)]
pub struct Index {
    pub records: Vec<Record>,
}

impl Index {
    pub fn new(records: Vec<Record>) -> Index {
        Index { records }
    }

    /// Records of `package` at `version` (one per suite).
    fn find(&self, package: &str, version: &str) -> impl Iterator<Item = &Record> {
        let (p, v) = (package.to_string(), version.to_string());
        self.records
            .iter()
            .filter(move |r| r.package == p && r.version == v)
    }

    /// Every kernel of the generic amd64 flavour, one per ABI name (its newest package
    /// version, a usable one before an unusable one), newest first.
    pub fn kernels(&self) -> Vec<KernelEntry> {
        // (abi, version) → entry being built
        let mut by: BTreeMap<(String, String), KernelEntry> = BTreeMap::new();
        for r in &self.records {
            let (abi, form, packages, unusable) = if let Some(abi) = r
                .package
                .strip_suffix("-unsigned")
                .and_then(|p| abi_of(p, "image"))
            {
                (
                    abi,
                    Form::Unsigned,
                    vec![(r.package.clone(), r.version.clone())],
                    None,
                )
            } else if let Some(abi) = abi_of(&r.package, "image") {
                let binary = format!("linux-binary-{abi}-amd64");
                if depends_on(&r.depends, &binary) {
                    self.split_parts(abi, &r.version)
                } else if r.depends.contains("linux-image-") || r.installed_size < 1024 {
                    continue; // a meta package (linux-image-6.12-amd64 → …) or an empty one
                } else {
                    (
                        abi,
                        Form::Signed,
                        vec![(r.package.clone(), r.version.clone())],
                        None,
                    )
                }
            } else {
                continue;
            };
            let key = (abi.to_string(), r.version.clone());
            let e = by.entry(key).or_insert_with(|| KernelEntry {
                abi: abi.to_string(),
                version: r.version.clone(),
                upstream: version::upstream(&r.version),
                suites: vec![],
                form,
                packages: packages.clone(),
                unusable: unusable.clone(),
            });
            if !e.suites.contains(&r.suite) {
                e.suites.push(r.suite.clone());
            }
            // The unsigned package is preferred (the image as built); signed only when alone.
            if form == Form::Unsigned && e.form == Form::Signed {
                e.form = form;
                e.packages = packages;
                e.unusable = unusable;
            }
        }
        // One entry per ABI: the newest usable version, else the newest.
        let mut per_abi: BTreeMap<String, KernelEntry> = BTreeMap::new();
        for e in by.into_values() {
            match per_abi.get(&e.abi) {
                Some(old)
                    if (old.usable(), version::cmp(&old.version, &e.version))
                        >= (e.usable(), Ordering::Equal) => {}
                _ => {
                    per_abi.insert(e.abi.clone(), e);
                }
            }
        }
        let mut v: Vec<KernelEntry> = per_abi.into_values().collect();
        v.sort_by(|a, b| version::cmp(&b.version, &a.version).then_with(|| b.abi.cmp(&a.abi)));
        v
    }

    /// A split kernel's packages: the image (signed `linux-binary`, else unsigned), the
    /// modules and the base files, at the meta package's version.
    fn split_parts<'a>(
        &self,
        abi: &'a str,
        version: &str,
    ) -> (&'a str, Form, Vec<(String, String)>, Option<String>) {
        let has = |p: &str| self.find(p, version).next().is_some();
        let binary = [
            format!("linux-binary-{abi}-amd64"),
            format!("linux-binary-unsigned-{abi}-amd64"),
        ]
        .into_iter()
        .find(|p| has(p));
        let modules = format!("linux-modules-{abi}-amd64");
        let base = format!("linux-base-{abi}-amd64");
        let mut missing = Vec::new();
        if binary.is_none() {
            missing.push(format!("linux-binary-{abi}-amd64"));
        }
        if !has(&modules) {
            missing.push(modules.clone());
        }
        if !has(&base) {
            missing.push(base.clone());
        }
        let unusable = (!missing.is_empty()).then(|| {
            let what = if missing.contains(&modules) {
                "its modules are gone from the archive"
            } else {
                "its packages are gone from the archive"
            };
            format!("{what} ({} not in any suite)", missing.join(" and "))
        });
        let packages = binary
            .into_iter()
            .chain([modules, base])
            .map(|p| (p, version.to_string()))
            .collect();
        (abi, Form::Split, packages, unusable)
    }

    /// The series that have a `linux-source-SERIES` package.
    pub fn source_series(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .records
            .iter()
            .filter_map(|r| r.package.strip_prefix("linux-source-"))
            .filter(|s| version::is_series(s))
            .map(str::to_string)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Versions of `linux-source-SERIES`, newest first, each with its suites.
    pub fn sources(&self, series: &str) -> Vec<(String, Vec<String>)> {
        let pkg = format!("linux-source-{series}");
        let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in self.records.iter().filter(|r| r.package == pkg) {
            by.entry(r.version.clone())
                .or_default()
                .push(r.suite.clone());
        }
        let mut v: Vec<(String, Vec<String>)> = by.into_iter().collect();
        v.sort_by(|a, b| version::cmp(&b.0, &a.0));
        v
    }

    /// The kernel a `debian:` spec names (without the prefix):
    /// * a series `6.18` → the newest usable 6.18.x;
    /// * an ABI name `6.12.117+deb13`, `6.1.0-56` → that kernel;
    /// * a package version `6.18.15-1~bpo13+1` → that kernel;
    /// * an upstream version `6.18.15`, `7.3~rc7` → the newest usable kernel of it.
    ///
    /// Errors are one line: an unknown version names the nearest available ones, a kernel
    /// that cannot be had says why.
    pub fn resolve(&self, spec: &str) -> Result<KernelEntry> {
        let all = self.kernels();
        let matches = matching(&all, spec);
        if let Some(e) = matches.iter().find(|e| e.usable()) {
            return Ok((*e).clone());
        }
        if let Some(e) = matches.first() {
            bail!(
                "debian:{spec}: Linux {} ({} in {}) cannot be had: {}",
                e.abi,
                e.version,
                e.suites.join(", "),
                e.unusable.as_deref().unwrap_or("unusable")
            );
        }
        let near = nearest(&all, spec, 4);
        if near.is_empty() {
            bail!("debian:{spec}: no such Debian kernel, and no usable kernel in the index (`dmcache-vmtest kernel list --refresh`)");
        }
        bail!(
            "debian:{spec}: no such Debian kernel; nearest available: {} (`dmcache-vmtest kernel list` shows all)",
            near.join(", ")
        )
    }

    /// Usable kernels from `lo` to `hi` (both `debian:` specs without the prefix; a series
    /// means its oldest kernel as the low end and its newest as the high end), oldest first,
    /// one per upstream version (its newest package), as `debian:ABI` specs; and the kernels
    /// in the range that cannot be had.
    pub fn range(&self, lo: &str, hi: &str) -> Result<Range> {
        let all = self.kernels();
        // An end may be a kernel that cannot be had: it still bounds the range.
        let end = |spec: &str, low: bool| -> Result<String> {
            let m = matching(&all, spec);
            let pick = if !version::is_series(spec) {
                m.first().copied()
            } else if low {
                m.iter()
                    .copied()
                    .min_by(|a, b| version::cmp(&a.version, &b.version))
            } else {
                m.iter()
                    .copied()
                    .max_by(|a, b| version::cmp(&a.version, &b.version))
            };
            match pick {
                Some(e) => Ok(e.version.clone()),
                None => self.resolve(spec).map(|e| e.version),
            }
        };
        let (mut a, mut b) = (end(lo, true)?, end(hi, false)?);
        if version::cmp(&a, &b) == Ordering::Greater {
            // Reversed ends: a series end keeps its meaning (the whole series inside).
            a = end(hi, true)?;
            b = end(lo, false)?;
        }
        let inside = |e: &&KernelEntry| {
            version::cmp(&e.version, &a) != Ordering::Less
                && version::cmp(&e.version, &b) != Ordering::Greater
        };
        let mut per_upstream: BTreeMap<String, &KernelEntry> = BTreeMap::new();
        for e in all.iter().filter(inside).filter(|e| e.usable()) {
            match per_upstream.get(&e.upstream) {
                Some(old) if version::cmp(&old.version, &e.version) != Ordering::Less => {}
                _ => {
                    per_upstream.insert(e.upstream.clone(), e);
                }
            }
        }
        let mut v: Vec<&KernelEntry> = per_upstream.into_values().collect();
        v.sort_by(|x, y| version::cmp(&x.version, &y.version));
        let mut left_out: Vec<&KernelEntry> =
            all.iter().filter(inside).filter(|e| !e.usable()).collect();
        left_out.sort_by(|x, y| version::cmp(&x.version, &y.version));
        Ok(Range {
            kernels: v.into_iter().map(|e| e.spec()).collect(),
            left_out: left_out.into_iter().map(|e| e.abi.clone()).collect(),
        })
    }
}

/// The kernels of a range ([`Index::range`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// `debian:ABI` specs, oldest first.
    pub kernels: Vec<String>,
    /// ABI names in the range that cannot be had.
    pub left_out: Vec<String>,
}

/// Whether an entry belongs to a `kernel list` filter: a series `6.18`, a major `7`, an
/// upstream version or an ABI name.
pub fn matches_filter(e: &KernelEntry, filter: &str) -> bool {
    e.abi == filter
        || e.upstream == filter
        || e.upstream.starts_with(&format!("{filter}."))
        || e.upstream.starts_with(&format!("{filter}~"))
}

/// `kernel list`: one line per kernel, newest first.  `cached` tells whether a kernel is
/// already unpacked in the cache.
pub fn render_list(entries: &[KernelEntry], cached: &dyn Fn(&str) -> bool) -> String {
    let w = |f: &dyn Fn(&KernelEntry) -> usize, min: usize| {
        entries.iter().map(f).max().unwrap_or(0).max(min)
    };
    let (wa, wv, ws) = (
        w(&|e| e.abi.len(), 7),
        w(&|e| e.version.len(), 15),
        w(&|e| e.suites.join(",").len(), 6),
    );
    let mut s = format!(
        "{:<wa$}  {:<wv$}  {:<ws$}  {:<8}  usable\n",
        "version", "package version", "suites", "form"
    );
    for e in entries {
        let usable = match &e.unusable {
            None if cached(&e.abi) => "yes (cached)".to_string(),
            None => "yes".to_string(),
            Some(why) => format!("no: {why}"),
        };
        s += &format!(
            "{:<wa$}  {:<wv$}  {:<ws$}  {:<8}  {usable}\n",
            e.abi,
            e.version,
            e.suites.join(","),
            e.form.name()
        );
    }
    s
}

/// The kernels a spec names, best first (see [`Index::resolve`]); usable or not.
fn matching<'a>(all: &'a [KernelEntry], spec: &str) -> Vec<&'a KernelEntry> {
    if version::is_series(spec) {
        return all
            .iter()
            .filter(|e| version::series(&e.upstream).as_deref() == Some(spec))
            .collect();
    }
    let by = |f: &dyn Fn(&KernelEntry) -> bool| -> Vec<&'a KernelEntry> {
        all.iter().filter(|e| f(e)).collect()
    };
    let by_abi = by(&|e| e.abi == spec);
    if !by_abi.is_empty() {
        return by_abi;
    }
    let by_version = by(&|e| e.version == spec);
    if !by_version.is_empty() {
        return by_version;
    }
    by(&|e| e.upstream == spec)
}

/// Which field of an entry a spec is written in: an ABI name (`6.1.0-47`, `6.12.117+deb13`),
/// a package version (`6.1.170-3`, `6.18.15-1~bpo13+1`) or an upstream version (`6.18.15`).
/// Bookworm's ABI names and package versions have the same shape; an ABI name's third
/// component is always 0 (`6.1.0-N`), a package version's never is.
fn spec_field(spec: &str) -> fn(&KernelEntry) -> &str {
    // `6.12.117+deb13` (no `-`: a package version always has its Debian revision after one)
    let abi_like = (spec.contains("+deb") && !spec.contains('-'))
        || spec
            .split_once('-')
            .is_some_and(|(up, n)| up.ends_with(".0") && n.bytes().all(|b| b.is_ascii_digit()));
    if abi_like {
        |e| &e.abi
    } else if spec.contains('-') {
        |e| &e.version
    } else {
        |e| &e.upstream
    }
}

/// Up to `n` usable ABI names nearest to `spec` in version order (half below, half above),
/// ordered in the field the spec is written in.
fn nearest(all: &[KernelEntry], spec: &str, n: usize) -> Vec<String> {
    let key = spec_field(spec);
    let mut usable: Vec<&KernelEntry> = all.iter().filter(|e| e.usable()).collect();
    usable.sort_by(|a, b| version::cmp(key(a), key(b)));
    usable.dedup_by(|a, b| key(a) == key(b));
    let pos = usable
        .iter()
        .position(|e| version::cmp(key(e), spec) == Ordering::Greater)
        .unwrap_or(usable.len());
    let lo = pos.saturating_sub(n / 2);
    let hi = (lo + n).min(usable.len());
    let lo = hi.saturating_sub(n);
    usable[lo..hi].iter().rev().map(|e| e.abi.clone()).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// (package, version, installed size, depends) per suite; `split:ABI` expands to the
    /// split packaging form of 6.19+ (image + binary, and modules + base unless `nomod`).
    type Stanzas = &'static [(&'static str, &'static str, u64, &'static str)];
    #[rustfmt::skip]
    const FIXTURE: &[(&[&str], Stanzas)] = &[
        (&["bookworm"], &[
            ("linux-image-6.1.0-50-amd64-unsigned", "6.1.164-1", 400000, "kmod"),
            ("linux-image-6.1.0-50-amd64", "6.1.164-1", 400000, "kmod"),
            ("linux-source-6.1", "6.1.164-1", 150000, "binutils"),
            ("fio", "3.33-3", 100, "libc6"),
        ]),
        (&["bookworm-security"], &[
            ("linux-image-6.1.0-56-amd64-unsigned", "6.1.192-2", 400000, "kmod"),
            ("linux-image-6.1.0-57-amd64", "6.1.194-1", 400000, "kmod"),
            ("linux-image-6.12.117+deb12-amd64-unsigned", "6.12.117-1~deb12u1", 100000, "kmod"),
            ("linux-image-6.12.117+deb12-amd64", "6.12.117-1~deb12u1", 100000, "kmod"),
            ("linux-image-6.12-amd64", "6.12.117-1~deb12u1", 13, "linux-image-6.12.117+deb12-amd64 (= 6.12.117-1~deb12u1)"),
            ("linux-image-6.12.117+deb12-cloud-amd64-unsigned", "6.12.117-1~deb12u1", 90000, "kmod"),
            ("linux-source-6.12", "6.12.117-1~deb12u1", 150000, "binutils"),
            ("linux-source-6.12", "6.12.115-2~deb12u1", 150000, "binutils"),
        ]),
        (&["trixie", "trixie-security"], &[
            ("linux-image-6.12.117+deb13-amd64-unsigned", "6.12.117-1", 100000, "kmod"),
            ("linux-image-6.12.117+deb13-amd64", "6.12.117-1", 100000, "kmod"),
            ("linux-source-6.12", "6.12.117-1", 150000, "binutils"),
        ]),
        (&["trixie-backports"], &[
            ("linux-image-6.16.12+deb13-amd64", "6.16.12-1~bpo13+1", 160000, "kmod, linux-base-6.16.12+deb13-amd64"),
            ("linux-image-6.17.13+deb13-amd64", "6.17.13-1~bpo13+1", 160000, "kmod"),
            ("linux-image-6.18.5+deb13-amd64", "6.18.5-1~bpo13+1", 160000, "kmod"),
            ("linux-image-6.18.12+deb13-amd64", "6.18.12-1~bpo13+1", 160000, "kmod"),
            ("linux-image-6.18.15+deb13-amd64", "6.18.15-1~bpo13+1", 166232, "kmod"),
            ("split:6.19.14+deb13:nomod", "6.19.14-1~bpo13+1", 0, ""),
            ("split:7.0.13+deb13:nomod", "7.0.13-1~bpo13+1", 0, ""),
            ("split:7.2.12+deb13", "7.2.12-1~bpo13+1", 0, ""),
            ("split:7.3.4+deb13", "7.3.4-1~bpo13+1", 0, ""),
            ("linux-source-7.3", "7.3.4-1~bpo13+1", 160000, "binutils"),
        ]),
        (&["sid"], &[("split:7.2.13+deb14", "7.2.13-1", 0, "")]),
        (&["experimental"], &[("split:7.3", "7.3~rc7-1~exp1", 0, "")]),
    ];

    fn stanza(p: &str, v: &str, size: u64, dep: &str) -> String {
        format!(
            "Package: {p}\nSource: linux\nVersion: {v}\nInstalled-Size: {size}\nDepends: {dep}\nDescription: x\n more\n\n"
        )
    }

    /// The split form: a meta image package depending on base, binary and modules.
    fn split(abi: &str, v: &str, modules: bool) -> String {
        let mut s = stanza(
            &format!("linux-image-{abi}-amd64"),
            v,
            16,
            &format!("dracut | initramfs-tools, linux-base-{abi}-amd64 (= {v}), linux-binary-{abi}-amd64 (= {v}), linux-modules-{abi}-amd64 (= {v})"),
        );
        s += &stanza(&format!("linux-binary-{abi}-amd64"), v, 14000, "x");
        if modules {
            s += &stanza(&format!("linux-modules-{abi}-amd64"), v, 156000, "kmod");
            s += &stanza(&format!("linux-base-{abi}-amd64"), v, 1500, "");
        }
        s
    }

    /// A `Packages` excerpt per suite with every packaging form and the awkward cases.
    pub(crate) fn fixture() -> Index {
        let mut recs = Vec::new();
        for (suites, stanzas) in FIXTURE {
            let text: String = stanzas
                .iter()
                .map(|(p, v, size, dep)| match p.strip_prefix("split:") {
                    Some(rest) => {
                        let abi = rest.trim_end_matches(":nomod");
                        split(abi, v, !rest.ends_with(":nomod"))
                    }
                    None => stanza(p, v, *size, dep),
                })
                .collect();
            for suite in *suites {
                recs.extend(parse_packages(&text, suite));
            }
        }
        Index::new(recs)
    }

    #[test]
    fn parses_only_wanted_records() {
        let text = "Package: fio\nVersion: 1\n\nPackage: linux-image-6.1.0-50-amd64\nSource: linux-signed-amd64 (6.1.164+1)\nVersion: 6.1.164-1\nInstalled-Size: 399855\nDepends: kmod, linux-base (>= 4.3~)\nDescription: Linux\n for PCs\n";
        let r = parse_packages(text, "bookworm");
        assert_eq!(
            r,
            vec![Record {
                package: "linux-image-6.1.0-50-amd64".into(),
                version: "6.1.164-1".into(),
                suite: "bookworm".into(),
                depends: "kmod, linux-base (>= 4.3~)".into(),
                installed_size: 399855,
            }]
        );
        assert!(wanted("linux-source-6.12") && wanted("linux-modules-7.3-amd64"));
        assert!(!wanted("linux-libc-dev") && !wanted("linux-headers-6.12.117+deb13-amd64"));
    }

    #[test]
    fn abi_names() {
        assert_eq!(
            abi_of("linux-image-6.12.117+deb12-amd64", "image"),
            Some("6.12.117+deb12")
        );
        assert_eq!(
            abi_of("linux-image-6.1.0-56-amd64", "image"),
            Some("6.1.0-56")
        );
        assert_eq!(
            abi_of("linux-image-6.12.90+deb13.1-amd64", "image"),
            Some("6.12.90+deb13.1")
        );
        assert_eq!(abi_of("linux-image-7.3-amd64", "image"), Some("7.3"));
        assert_eq!(
            abi_of("linux-binary-7.3.4+deb13-amd64", "binary"),
            Some("7.3.4+deb13")
        );
        assert_eq!(
            abi_of("linux-image-6.12.117+deb12-cloud-amd64", "image"),
            None
        );
        assert_eq!(abi_of("linux-image-6.1.0-56-rt-amd64", "image"), None);
        assert_eq!(abi_of("linux-image-amd64", "image"), None);
        assert_eq!(
            abi_of("linux-image-6.12-amd64-signed-template", "image"),
            None
        );
    }

    #[test]
    fn kernels_forms_and_order() {
        let k = fixture().kernels();
        let abis: Vec<&str> = k.iter().map(|e| e.abi.as_str()).collect();
        assert_eq!(
            abis,
            vec![
                "7.3.4+deb13",
                "7.3",
                "7.2.13+deb14",
                "7.2.12+deb13",
                "7.0.13+deb13",
                "6.19.14+deb13",
                "6.18.15+deb13",
                "6.18.12+deb13",
                "6.18.5+deb13",
                "6.17.13+deb13",
                "6.16.12+deb13",
                "6.12.117+deb13",
                "6.12.117+deb12",
                "6.1.0-57",
                "6.1.0-56",
                "6.1.0-50",
            ],
            "newest first in dpkg order; no meta, no cloud flavour"
        );
        let get = |abi: &str| k.iter().find(|e| e.abi == abi).unwrap();
        let e = get("6.12.117+deb13");
        assert_eq!(e.form, Form::Unsigned, "unsigned preferred");
        assert_eq!(e.suites, vec!["trixie", "trixie-security"]);
        assert_eq!(
            e.packages,
            vec![(
                "linux-image-6.12.117+deb13-amd64-unsigned".to_string(),
                "6.12.117-1".to_string()
            )]
        );
        assert_eq!(get("6.1.0-57").form, Form::Signed);
        assert_eq!(get("6.18.15+deb13").form, Form::Signed);
        let s = get("7.3.4+deb13");
        assert_eq!(s.form, Form::Split);
        assert!(s.usable());
        assert_eq!(
            s.packages
                .iter()
                .map(|(p, _)| p.as_str())
                .collect::<Vec<_>>(),
            vec![
                "linux-binary-7.3.4+deb13-amd64",
                "linux-modules-7.3.4+deb13-amd64",
                "linux-base-7.3.4+deb13-amd64"
            ]
        );
        let gone = get("7.0.13+deb13");
        assert_eq!(gone.form, Form::Split);
        assert!(
            gone.unusable.as_deref().unwrap().starts_with(
                "its modules are gone from the archive (linux-modules-7.0.13+deb13-amd64 and linux-base-7.0.13+deb13-amd64 not in any suite)"
            ),
            "{:?}",
            gone.unusable
        );
        assert_eq!(get("7.3").upstream, "7.3~rc7");
    }

    #[test]
    fn resolves_specs() {
        let i = fixture();
        let abi = |s: &str| i.resolve(s).map(|e| e.abi).map_err(|e| e.to_string());
        assert_eq!(abi("6.18.15").unwrap(), "6.18.15+deb13");
        assert_eq!(abi("6.18").unwrap(), "6.18.15+deb13");
        assert_eq!(
            abi("7.3").unwrap(),
            "7.3.4+deb13",
            "7.3.4 sorts after 7.3~rc7"
        );
        assert_eq!(abi("7.3~rc7").unwrap(), "7.3");
        assert_eq!(abi("6.12.117+deb13").unwrap(), "6.12.117+deb13");
        assert_eq!(abi("6.12.117+deb12").unwrap(), "6.12.117+deb12");
        assert_eq!(
            abi("6.12.117").unwrap(),
            "6.12.117+deb13",
            "the newer package of that upstream"
        );
        assert_eq!(abi("6.12").unwrap(), "6.12.117+deb13");
        assert_eq!(abi("6.1.0-56").unwrap(), "6.1.0-56");
        assert_eq!(abi("6.1").unwrap(), "6.1.0-57");
        assert_eq!(abi("6.18.15-1~bpo13+1").unwrap(), "6.18.15+deb13");
        assert_eq!(abi("7.2").unwrap(), "7.2.13+deb14");
        let e = abi("7.0.13").unwrap_err();
        assert!(
            e.contains("7.0.13+deb13") && e.contains("modules are gone"),
            "{e}"
        );
        assert!(!e.contains('\n'));
        let e = abi("7.0").unwrap_err();
        assert!(e.contains("modules are gone"), "{e}");
        let e = abi("6.18.99").unwrap_err();
        assert_eq!(
            e,
            "debian:6.18.99: no such Debian kernel; nearest available: 7.2.13+deb14, 7.2.12+deb13, 6.18.15+deb13, 6.18.12+deb13 (`dmcache-vmtest kernel list` shows all)"
        );
        // An ABI-style spec is ordered among ABI names, not by its upstream version.
        let e = abi("6.1.0-99").unwrap_err();
        assert!(e.contains("6.1.0-57, 6.1.0-56 ("), "{e}");
        let e = abi("6.18.99+deb13").unwrap_err();
        assert!(e.contains("6.18.15+deb13"), "{e}");
        let e = abi("6.1.190-1").unwrap_err();
        assert!(e.contains("6.1.0-57, 6.1.0-56, 6.1.0-50 ("), "{e}");
        let e = abi("5.10").unwrap_err();
        assert!(
            e.contains("nearest available: 6.1.0-56, 6.1.0-50")
                || e.contains("nearest available: 6.12"),
            "{e}"
        );
    }

    #[test]
    fn ranges() {
        let i = fixture();
        let r = i.range("6.16", "7.3").unwrap();
        assert_eq!(r.left_out, vec!["6.19.14+deb13", "7.0.13+deb13"]);
        let r = r.kernels;
        assert_eq!(
            r,
            vec![
                "debian:6.16.12+deb13",
                "debian:6.17.13+deb13",
                "debian:6.18.5+deb13",
                "debian:6.18.12+deb13",
                "debian:6.18.15+deb13",
                "debian:7.2.12+deb13",
                "debian:7.2.13+deb14",
                "debian:7.3",
                "debian:7.3.4+deb13",
            ],
            "usable ones only, oldest first, the series ends include the whole series"
        );
        assert_eq!(i.range("7.3", "6.16").unwrap().kernels, r, "reversed ends");
        assert_eq!(
            i.range("6.18.12", "6.18.15").unwrap().kernels,
            vec!["debian:6.18.12+deb13", "debian:6.18.15+deb13"]
        );
        // One kernel per upstream version: 6.12.117+deb12 and +deb13 are the same release.
        assert_eq!(
            i.range("6.12.117+deb12", "6.16").unwrap().kernels,
            vec!["debian:6.12.117+deb13", "debian:6.16.12+deb13"]
        );
        assert!(i.range("6.18.99", "7.3").is_err());
        // Ends that cannot be had still bound the range.
        let r = i.range("6.19", "7.0.13").unwrap();
        assert!(r.kernels.is_empty());
        assert_eq!(r.left_out, vec!["6.19.14+deb13", "7.0.13+deb13"]);
        assert_eq!(
            i.range("6.18.15", "7.0").unwrap().kernels,
            vec!["debian:6.18.15+deb13"]
        );
    }

    #[test]
    fn list_filter_and_render() {
        let all = fixture().kernels();
        let pick = |f: &str| -> Vec<String> {
            all.iter()
                .filter(|e| matches_filter(e, f))
                .map(|e| e.abi.clone())
                .collect()
        };
        assert_eq!(
            pick("6.18"),
            vec!["6.18.15+deb13", "6.18.12+deb13", "6.18.5+deb13"]
        );
        assert_eq!(pick("7.3"), vec!["7.3.4+deb13", "7.3"]);
        assert_eq!(pick("7").len(), 5);
        assert_eq!(pick("6.1"), vec!["6.1.0-57", "6.1.0-56", "6.1.0-50"]);
        assert_eq!(pick("6.1.0-56"), vec!["6.1.0-56"]);
        let shown: Vec<KernelEntry> = all
            .iter()
            .filter(|e| matches_filter(e, "7"))
            .cloned()
            .collect();
        let text = render_list(&shown, &|abi| abi == "7.3.4+deb13");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("version"));
        assert!(
            lines[1].starts_with("7.3.4+deb13")
                && lines[1].contains("trixie-backports")
                && lines[1].contains("split")
                && lines[1].ends_with("yes (cached)"),
            "{text}"
        );
        let gone = lines
            .iter()
            .find(|l| l.starts_with("7.0.13+deb13"))
            .unwrap();
        assert!(gone.contains("no: its modules are gone"), "{gone}");
    }

    #[test]
    fn sources_newest_first() {
        let s = fixture().sources("6.12");
        assert_eq!(s[0].0, "6.12.117-1");
        assert_eq!(s[0].1, vec!["trixie", "trixie-security"]);
        assert_eq!(s[1].0, "6.12.117-1~deb12u1");
        assert_eq!(s[2].0, "6.12.115-2~deb12u1");
    }
}
