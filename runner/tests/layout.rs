//! The source layout the architecture doc promises, checked: no import circle between the
//! library's modules, and no function longer than ~120 lines (docs/architecture.md).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_FN_LINES: usize = 120;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The source without `//` comments (doc links name modules without using them) and
/// without its `#[cfg(test)]` tail (tests may use anything).
fn code_of(text: &str) -> String {
    let text = text
        .split("\n#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or(text);
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module a file under src/ belongs to (`kbuild/patch.rs` → `kbuild`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let m = first.trim_end_matches(".rs").to_string();
    (m != "main" && m != "lib").then_some(m)
}

/// `crate::X` and `crate::{X, Y::…}` references.
fn uses(code: &str) -> BTreeSet<String> {
    let word = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let w = word(item.trim());
                if !w.is_empty() {
                    out.insert(w);
                }
            }
        } else {
            out.insert(word(rest));
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let Some(m) = module_of(&src, &f) else {
            continue;
        };
        let deps = uses(&code_of(&std::fs::read_to_string(&f).unwrap()));
        let e = g.entry(m.clone()).or_default();
        e.extend(deps.into_iter().filter(|d| *d != m));
    }
    g
}

/// A cycle through `start`, if any (depth-first).
fn cycle_from(
    g: &BTreeMap<String, BTreeSet<String>>,
    at: &str,
    path: &mut Vec<String>,
) -> Option<Vec<String>> {
    for next in g.get(at).into_iter().flatten() {
        if let Some(i) = path.iter().position(|p| p == next) {
            let mut c = path[i..].to_vec();
            c.push(next.clone());
            return Some(c);
        }
        if g.contains_key(next) {
            path.push(next.clone());
            if let Some(c) = cycle_from(g, next, path) {
                return Some(c);
            }
            path.pop();
        }
    }
    None
}

#[test]
fn no_import_circle_between_modules() {
    let g = graph();
    assert!(g.len() > 10, "found only {:?}", g.keys());
    for m in g.keys() {
        if let Some(c) = cycle_from(&g, m, &mut vec![m.clone()]) {
            panic!("import circle: {}", c.join(" → "));
        }
    }
}

#[test]
fn the_cycle_finder_finds_one() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default().insert("a".into());
    let c = cycle_from(&g, "a", &mut vec!["a".into()]).unwrap();
    assert_eq!(c.join(" "), "a b c a");
    g.get_mut("c").unwrap().clear();
    assert!(cycle_from(&g, "a", &mut vec!["a".into()]).is_none());
    assert_eq!(
        uses("use crate::{case::Case, vm};\nlet x = crate::kbuild::build();"),
        ["case", "kbuild", "vm"].map(String::from).into()
    );
}

/// Functions of at most [`MAX_FN_LINES`] lines: from `fn` to the closing brace at its indent.
#[test]
fn no_function_over_120_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("tests"), &mut files);
    let mut long = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            let indent = &l[..l.len() - t.len()];
            let is_fn = ["fn ", "pub fn ", "pub(crate) fn ", "pub(super) fn "]
                .iter()
                .any(|p| t.starts_with(p));
            if !is_fn || t.ends_with(';') {
                continue;
            }
            let close = format!("{indent}}}");
            if let Some(n) = lines[i + 1..].iter().position(|x| *x == close) {
                if n + 2 > MAX_FN_LINES {
                    long.push(format!(
                        "{}:{} {} lines",
                        f.strip_prefix(root).unwrap().display(),
                        i + 1,
                        n + 2
                    ));
                }
            }
        }
    }
    assert!(long.is_empty(), "functions over 120 lines: {long:?}");
}

/// README is a user's page of at most 15 KB; measurements and internals live in docs/.
#[test]
fn readme_is_at_most_15_kb() {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let n = std::fs::metadata(&readme).unwrap().len();
    assert!(n <= 15 * 1024, "README.md is {n} bytes (at most 15360)");
}
