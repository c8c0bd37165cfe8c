//! Debian version order (dpkg's rules: epoch, then upstream and revision compared in
//! alternating non-digit/digit runs, `~` before everything, even the end of the string), from
//! the `debversion` crate; plus the two views of a kernel version the specs use.

use std::cmp::Ordering;

/// Orders two Debian versions like `dpkg --compare-versions`.  A string that is not a Debian
/// version sorts before every valid one (and such strings compare as text among themselves).
pub fn cmp(a: &str, b: &str) -> Ordering {
    match (
        a.parse::<debversion::Version>(),
        b.parse::<debversion::Version>(),
    ) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => Ordering::Greater,
        (Err(_), Ok(_)) => Ordering::Less,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

/// The upstream part of a package version: `6.12.117-1~deb12u1` → `6.12.117`,
/// `7.3~rc7-1~exp1` → `7.3~rc7`, `1:2.0-3` → `2.0`.
pub fn upstream(version: &str) -> String {
    match version.parse::<debversion::Version>() {
        Ok(v) => v.upstream_version,
        Err(_) => version.to_string(),
    }
}

/// The `MAJOR.MINOR` series of a version: `6.12.117` → `6.12`, `7.3~rc7` → `7.3`, `6.1.0-56` → `6.1`.
pub fn series(version: &str) -> Option<String> {
    let mut it = version.split(|c: char| !c.is_ascii_digit());
    let major = it.next().filter(|s| !s.is_empty())?;
    let rest = version[major.len()..].strip_prefix('.')?;
    let minor: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    (!minor.is_empty()).then(|| format!("{major}.{minor}"))
}

/// `6.12`, `7.3`: a series spec (two numeric parts, nothing else).
pub fn is_series(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_order() {
        use Ordering::*;
        // Cases checked against `dpkg --compare-versions`.
        for (a, b, want) in [
            ("7.3~rc7-1~exp1", "7.3.4-1~bpo13+1", Less),
            ("7.3~rc7-1~exp1", "7.3-1", Less),
            ("6.12.117-1~deb12u1", "6.12.117-1", Less),
            ("6.12.117-1", "6.12.118-1", Less),
            ("6.12.9-1", "6.12.10-1", Less),
            ("6.18.15-1~bpo13+1", "6.18.15-1", Less),
            ("6.1.192-2", "6.1.192-1", Greater),
            ("1:1.0-1", "2.0-1", Greater),
            ("1.0~", "1.0", Less),
            ("1.0", "1.0", Equal),
            ("1.0a", "1.0+", Less),
        ] {
            assert_eq!(cmp(a, b), want, "{a} vs {b}");
            assert_eq!(cmp(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn views() {
        assert_eq!(upstream("6.12.117-1~deb12u1"), "6.12.117");
        assert_eq!(upstream("7.3~rc7-1~exp1"), "7.3~rc7");
        assert_eq!(upstream("1:2.0-3"), "2.0");
        assert_eq!(series("6.12.117").as_deref(), Some("6.12"));
        assert_eq!(series("7.3~rc7").as_deref(), Some("7.3"));
        assert_eq!(series("6.1.0-56").as_deref(), Some("6.1"));
        assert_eq!(series("7").as_deref(), None);
        assert!(is_series("6.12") && is_series("7.3"));
        assert!(!is_series("6.12.117") && !is_series("6.1.0-56") && !is_series("6."));
    }
}
