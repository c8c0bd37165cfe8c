//! Which stable trees a patch is for, read from its subject the way stable mails write it:
//! `[PATCH AUTOSEL 7.0-6.18]` (a range, newest first), `[PATCH 6.18.y]`, `[PATCH 6.12]`,
//! `[PATCH 5.15 1/2]`, or from `X-stable-base: Linux 7.0` when the subject names none.
//! Pure: the series known to the archive come in as an argument.

use crate::debian::version;
use regex::Regex;
use std::sync::LazyLock;

static BRACKET: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\[([^\]]*)\]").unwrap());
static SERIES: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(\d+\.\d+)(?:\.y|\.\d+)?$").unwrap());
static RANGE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(\d+\.\d+)(?:\.y)?-(\d+\.\d+)(?:\.y)?$").unwrap());
static BASE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?i)^linux\s+(\d+\.\d+)").unwrap());

/// The series a mail names, oldest first; empty when it names none.  `known` are the
/// series the archive has (for the inside of a range: `7.0-6.18` → 6.18, 6.19, 7.0).
pub fn series_of(
    subject: Option<&str>,
    stable_base: Option<&str>,
    known: &[String],
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in subject.into_iter().flat_map(|s| BRACKET.captures_iter(s)) {
        for word in c[1].split_whitespace() {
            if let Some(r) = RANGE.captures(word) {
                let (a, b) = (r[1].to_string(), r[2].to_string());
                let (lo, hi) = if version::cmp(&a, &b).is_le() {
                    (a, b)
                } else {
                    (b, a)
                };
                out.push(lo.clone());
                out.push(hi.clone());
                out.extend(
                    known
                        .iter()
                        .filter(|s| version::cmp(s, &lo).is_gt() && version::cmp(s, &hi).is_lt())
                        .cloned(),
                );
            } else if let Some(s) = SERIES.captures(word) {
                out.push(s[1].to_string());
            }
        }
    }
    if out.is_empty() {
        if let Some(b) = stable_base.and_then(|b| BASE.captures(b.trim())) {
            out.push(b[1].to_string());
        }
    }
    out.sort_by(|a, b| version::cmp(a, b));
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<String> {
        [
            "6.1", "6.12", "6.16", "6.17", "6.18", "6.19", "7.0", "7.1", "7.2", "7.3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    #[test]
    fn subjects_name_series() {
        let k = known();
        let s = |x: &str| series_of(Some(x), None, &k);
        assert_eq!(
            s("[PATCH AUTOSEL 7.0-6.18] dm cache: prevent"),
            vec!["6.18", "6.19", "7.0"]
        );
        assert_eq!(s("[PATCH 6.18.y] dm cache: x"), vec!["6.18"]);
        assert_eq!(s("[PATCH 6.12] dm cache: x"), vec!["6.12"]);
        assert_eq!(s("[PATCH 6.12.y 2/3] dm cache: x"), vec!["6.12"]);
        assert_eq!(s("[PATCH 6.1.y-6.12.y] x"), vec!["6.1", "6.12"]);
        assert_eq!(
            s("Re: [PATCH v2 1/2] dm cache: 2.4.0 fix"),
            Vec::<String>::new()
        );
        assert_eq!(
            series_of(Some("[PATCH] dm cache: x"), Some("Linux 7.0"), &k),
            vec!["7.0"]
        );
        assert_eq!(series_of(None, None, &k), Vec::<String>::new());
        // The seed mail's subject and header (../shared/seed/).
        assert_eq!(
            series_of(
                Some("[PATCH AUTOSEL 7.0-6.18] dm cache: prevent entering passthrough mode after unclean shutdown"),
                Some("Linux 7.0"),
                &k
            ),
            vec!["6.18", "6.19", "7.0"]
        );
    }
}
