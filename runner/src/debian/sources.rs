//! apt sources: reading the host's (deb822 `*.sources` and one-line `sources.list`), deriving
//! the Debian mirror (and the security mirror) from them, and writing the runner's own list
//! for the configured suites.  No mirror host name is built in: it always comes from the
//! host's apt configuration, a built image's, or `DMCACHE_VMTEST_DEBIAN_MIRROR`.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// The suites searched by default (`DMCACHE_VMTEST_DEBIAN_SUITES` overrides, comma or space
/// separated).  `*-security` suites are served by the security mirror and skipped when the
/// host's configuration names none.
pub const DEFAULT_SUITES: &[&str] = &[
    "bookworm",
    "bookworm-updates",
    "bookworm-backports",
    "bookworm-security",
    "trixie",
    "trixie-updates",
    "trixie-backports",
    "trixie-security",
    "forky",
    "sid",
    "experimental",
];

/// The keyring every Debian suite is signed with (package `debian-archive-keyring`).
pub const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// One apt source (a deb822 stanza or a one-line entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceEntry {
    pub types: Vec<String>,
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    /// A keyring path (an inline key block is not kept).
    pub signed_by: Option<String>,
    pub enabled: bool,
    /// `file:line` of the entry, for messages.
    pub origin: String,
}

/// deb822 `.sources` text: stanzas separated by blank lines, `Field: value`, continuation
/// lines start with a space, `#` comments.
pub fn parse_deb822(text: &str, file: &str) -> Vec<SourceEntry> {
    let mut out = Vec::new();
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut start = 0;
    let mut flush = |fields: &mut Vec<(String, String)>, start: usize| {
        if fields.is_empty() {
            return;
        }
        let get = |k: &str| {
            fields
                .iter()
                .find(|(f, _)| f.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        let words = |k: &str| -> Vec<String> {
            get(k)
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        };
        let signed_by = get("Signed-By")
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty() && !v.contains('\n') && !v.starts_with("-----"));
        out.push(SourceEntry {
            types: words("Types"),
            uris: words("URIs"),
            suites: words("Suites"),
            components: words("Components"),
            signed_by,
            enabled: get("Enabled").is_none_or(|v| !v.trim().eq_ignore_ascii_case("no")),
            origin: format!("{file}:{start}"),
        });
        fields.clear();
    };
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            flush(&mut fields, start);
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = fields.last_mut() {
                v.push('\n');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            if fields.is_empty() {
                start = i + 1;
            }
            fields.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    flush(&mut fields, start);
    out
}

/// One-line `sources.list` text: `deb [opt=val …] URI SUITE [COMPONENT…]`.
pub fn parse_one_line(text: &str, file: &str) -> Vec<SourceEntry> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        let Some((ty, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        if ty != "deb" && ty != "deb-src" {
            continue;
        }
        let mut rest = rest.trim();
        let mut signed_by = None;
        if let Some(r) = rest.strip_prefix('[') {
            let Some((opts, after)) = r.split_once(']') else {
                continue;
            };
            for o in opts.split_whitespace() {
                if let Some(v) = o
                    .strip_prefix("signed-by=")
                    .or_else(|| o.strip_prefix("Signed-By="))
                {
                    signed_by = Some(v.to_string());
                }
            }
            rest = after.trim();
        }
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() < 2 {
            continue;
        }
        out.push(SourceEntry {
            types: vec![ty.to_string()],
            uris: vec![f[0].to_string()],
            suites: vec![f[1].to_string()],
            components: f[2..].iter().map(|s| s.to_string()).collect(),
            signed_by,
            enabled: true,
            origin: format!("{file}:{}", i + 1),
        });
    }
    out
}

/// Debian's code names and aliases (what tells a Debian source from another distribution's).
const DEBIAN_NAMES: &[&str] = &[
    "buzz",
    "rex",
    "bo",
    "hamm",
    "slink",
    "potato",
    "woody",
    "sarge",
    "etch",
    "lenny",
    "squeeze",
    "wheezy",
    "jessie",
    "stretch",
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "experimental",
    "rc-buggy",
    "stable",
    "oldstable",
    "oldoldstable",
    "testing",
    "unstable",
];

/// `bookworm`, `trixie-backports`, `bookworm-security` → (`bookworm`, suffix); `None` if the
/// suite is not a Debian one (e.g. Ubuntu's `noble`).
fn debian_suite(suite: &str) -> Option<(&str, &str)> {
    if DEBIAN_NAMES.contains(&suite) {
        return Some((suite, ""));
    }
    let (base, suffix) = suite.split_once('-')?;
    let known = [
        "updates",
        "backports",
        "security",
        "proposed-updates",
        "backports-sloppy",
    ];
    (DEBIAN_NAMES.contains(&base) && known.contains(&suffix)).then_some((base, suffix))
}

/// Where the runner's apt fetches from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirrors {
    /// The archive (`dists/SUITE` below it), without a trailing `/`.
    pub main: String,
    /// The security archive (`*-security` suites), if known.
    pub security: Option<String>,
    /// The keyring the host's Debian source names, if any.
    pub signed_by: Option<String>,
    /// Where the mirror came from (a file:line or a variable), for messages.
    pub from: String,
}

/// The Debian mirror of a set of sources: the first enabled `deb` entry with a Debian suite
/// that is not `*-security`; the security mirror from the first `*-security` one.
pub fn derive_mirrors(entries: &[SourceEntry]) -> Option<Mirrors> {
    let debs = || {
        entries
            .iter()
            .filter(|e| e.enabled && e.types.iter().any(|t| t == "deb"))
    };
    let has = |e: &SourceEntry, security: bool| {
        e.suites
            .iter()
            .any(|s| debian_suite(s).is_some_and(|(_, x)| (x == "security") == security))
    };
    let main = debs().find(|e| has(e, false) && !e.uris.is_empty())?;
    let security = debs()
        .find(|e| has(e, true) && !e.uris.is_empty())
        .map(|e| e.uris[0].trim_end_matches('/').to_string());
    Some(Mirrors {
        main: main.uris[0].trim_end_matches('/').to_string(),
        security,
        signed_by: main.signed_by.clone(),
        from: main.origin.clone(),
    })
}

/// Suites from `DMCACHE_VMTEST_DEBIAN_SUITES` (comma/space separated) or the defaults.
pub fn suites_from(var: Option<&str>) -> Vec<String> {
    match var.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) => v
            .split([',', ' '])
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        None => DEFAULT_SUITES.iter().map(|s| s.to_string()).collect(),
    }
}

/// The runner's one-line sources list: amd64 `main` of every suite, only the `Packages`
/// index (and, but for security suites, the `Sources` index), signatures checked with `keyring`.  Returns the text and the suites left out
/// (security suites without a security mirror).
pub fn render_list(m: &Mirrors, suites: &[String], keyring: &Path) -> (String, Vec<String>) {
    let mut text = String::from("# written by dmcache-vmtest; mirror from ");
    text += &m.from;
    text.push('\n');
    let mut skipped = Vec::new();
    for s in suites {
        let uri = if s.ends_with("-security") {
            match &m.security {
                Some(u) => u,
                None => {
                    skipped.push(s.clone());
                    continue;
                }
            }
        } else {
            &m.main
        };
        text += &format!(
            "deb [arch=amd64 target=Packages signed-by={}] {uri} {s} main\n",
            keyring.display()
        );
        // The `linux` source package's uploads (their orig tarballs are upstream trees);
        // the security archive's sources add nothing a stable tree needs.
        if !s.ends_with("-security") {
            text += &format!(
                "deb-src [target=Sources signed-by={}] {uri} {s} main\n",
                keyring.display()
            );
        }
    }
    (text, skipped)
}

/// The host's apt sources: `sources.list` and `sources.list.d/*.{list,sources}` below `etc`
/// (normally `/etc/apt`).
pub fn read_sources_dir(etc: &Path) -> Vec<SourceEntry> {
    let mut out = Vec::new();
    let main = etc.join("sources.list");
    if let Ok(t) = std::fs::read_to_string(&main) {
        out.extend(parse_one_line(&t, &main.display().to_string()));
    }
    let mut parts: Vec<PathBuf> = std::fs::read_dir(etc.join("sources.list.d"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    parts.sort();
    for p in parts {
        let name = p.display().to_string();
        let Ok(t) = std::fs::read_to_string(&p) else {
            continue;
        };
        if name.ends_with(".sources") {
            out.extend(parse_deb822(&t, &name));
        } else if name.ends_with(".list") {
            out.extend(parse_one_line(&t, &name));
        }
    }
    out
}

/// The mirrors to use: `DMCACHE_VMTEST_DEBIAN_MIRROR` (and `…_SECURITY_MIRROR`), else the
/// host's apt sources, else a built image's `sources.list` (an Ubuntu host).
pub fn mirrors() -> Result<Mirrors> {
    let host = read_sources_dir(Path::new("/etc/apt"));
    let derived = derive_mirrors(&host).or_else(|| {
        crate::image::built_images().into_iter().find_map(|img| {
            let list = img.join("etc/apt/sources.list");
            let text = std::fs::read_to_string(&list).ok()?;
            derive_mirrors(&parse_one_line(&text, &list.display().to_string()))
        })
    });
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let security_env = env("DMCACHE_VMTEST_DEBIAN_SECURITY_MIRROR");
    if let Some(main) = env("DMCACHE_VMTEST_DEBIAN_MIRROR") {
        return Ok(Mirrors {
            main: main.trim().trim_end_matches('/').to_string(),
            security: security_env
                .map(|s| s.trim().trim_end_matches('/').to_string())
                .or_else(|| derived.as_ref().and_then(|d| d.security.clone())),
            signed_by: None,
            from: "DMCACHE_VMTEST_DEBIAN_MIRROR".into(),
        });
    }
    match derived {
        Some(mut m) => {
            if let Some(s) = security_env {
                m.security = Some(s.trim().trim_end_matches('/').to_string());
            }
            Ok(m)
        }
        None => bail!(
            "no Debian mirror in the host's apt sources (/etc/apt/sources.list, sources.list.d) nor in a built image: set DMCACHE_VMTEST_DEBIAN_MIRROR to a Debian archive URL, or build the image (`sudo dmcache-vmtest image build bookworm`)"
        ),
    }
}

/// The keyring for the runner's sources: `DMCACHE_VMTEST_DEBIAN_KEYRING`, else Debian's full
/// archive keyring, else the one the host's Debian source names.
pub fn keyring(m: &Mirrors) -> Result<PathBuf> {
    if let Some(k) = std::env::var_os("DMCACHE_VMTEST_DEBIAN_KEYRING") {
        let k = PathBuf::from(k);
        if !k.is_file() {
            bail!(
                "DMCACHE_VMTEST_DEBIAN_KEYRING={} is not a file",
                k.display()
            );
        }
        return Ok(k);
    }
    let full = PathBuf::from(DEBIAN_KEYRING);
    if full.is_file() {
        return Ok(full);
    }
    if let Some(k) = m.signed_by.as_deref().map(PathBuf::from) {
        if k.is_file() {
            return Ok(k);
        }
    }
    bail!("no Debian archive keyring ({DEBIAN_KEYRING}): apt-get install debian-archive-keyring, or set DMCACHE_VMTEST_DEBIAN_KEYRING")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "\
Types: deb
# a comment inside the stanza
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 xyz
 -----END PGP PUBLIC KEY BLOCK-----

Types: deb
URIs: http://other.example/debian
Suites: trixie
Components: main
Enabled: no
";

    #[test]
    fn deb822_stanzas() {
        let e = parse_deb822(DEB822, "x.sources");
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].suites, vec!["bookworm", "bookworm-updates"]);
        assert_eq!(e[0].uris, vec!["http://mirror.example/debian"]);
        assert_eq!(
            e[0].signed_by.as_deref(),
            Some("/usr/share/keyrings/debian-archive-keyring.gpg")
        );
        assert_eq!(e[0].origin, "x.sources:1");
        assert_eq!(e[1].signed_by, None, "an inline key is not a path");
        assert_eq!(e[1].origin, "x.sources:8");
        assert!(e[0].enabled && !e[2].enabled);
    }

    #[test]
    fn one_line_entries() {
        let e = parse_one_line(
            "# comment\n\
             deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian/ trixie main contrib # tail\n\
             deb-src http://m.example/debian trixie main\n\
             deb http://m.example/debian-security trixie-security main\n\
             bogus line\n",
            "sources.list",
        );
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].types, vec!["deb"]);
        assert_eq!(e[0].uris, vec!["http://m.example/debian/"]);
        assert_eq!(e[0].suites, vec!["trixie"]);
        assert_eq!(e[0].components, vec!["main", "contrib"]);
        assert_eq!(e[0].signed_by.as_deref(), Some("/k.gpg"));
        assert_eq!(e[0].origin, "sources.list:2");
        assert_eq!(e[1].types, vec!["deb-src"]);
    }

    #[test]
    fn mirrors_from_host_sources() {
        let e = parse_deb822(DEB822, "debian.sources");
        let m = derive_mirrors(&e).unwrap();
        assert_eq!(m.main, "http://mirror.example/debian");
        assert_eq!(
            m.security.as_deref(),
            Some("http://mirror.example/debian-security")
        );
        assert_eq!(m.from, "debian.sources:1");
        // deb-src and disabled entries do not count; Ubuntu suites are not Debian's.
        let e = parse_one_line(
            "deb http://archive.example/ubuntu noble main\n\
             deb-src http://m.example/debian trixie main\n\
             deb http://m.example/debian/ trixie-backports main\n",
            "l",
        );
        let m = derive_mirrors(&e).unwrap();
        assert_eq!(m.main, "http://m.example/debian");
        assert_eq!(m.security, None);
        assert!(derive_mirrors(&parse_one_line(
            "deb http://archive.example/ubuntu noble main\n",
            "l"
        ))
        .is_none());
        assert!(debian_suite("bookworm-security").is_some());
        assert!(debian_suite("noble-security").is_none());
    }

    #[test]
    fn runner_list_and_suites() {
        let m = Mirrors {
            main: "http://m.example/debian".into(),
            security: None,
            signed_by: None,
            from: "test".into(),
        };
        let suites = suites_from(Some("trixie, trixie-security sid"));
        assert_eq!(suites, vec!["trixie", "trixie-security", "sid"]);
        let (text, skipped) = render_list(&m, &suites, Path::new("/k.gpg"));
        assert_eq!(skipped, vec!["trixie-security"]);
        assert_eq!(
            text.lines().skip(1).collect::<Vec<_>>(),
            vec![
                "deb [arch=amd64 target=Packages signed-by=/k.gpg] http://m.example/debian trixie main",
                "deb-src [target=Sources signed-by=/k.gpg] http://m.example/debian trixie main",
                "deb [arch=amd64 target=Packages signed-by=/k.gpg] http://m.example/debian sid main",
                "deb-src [target=Sources signed-by=/k.gpg] http://m.example/debian sid main",
            ]
        );
        let with_sec = Mirrors {
            security: Some("http://m.example/debian-security".into()),
            ..m
        };
        let (text, skipped) = render_list(&with_sec, &suites, Path::new("/k.gpg"));
        assert!(skipped.is_empty());
        assert!(text.contains("http://m.example/debian-security trixie-security main"));
        assert!(!text.contains(
            "deb-src [target=Sources signed-by=/k.gpg] http://m.example/debian-security"
        ));
        assert_eq!(suites_from(None).len(), DEFAULT_SUITES.len());
        assert_eq!(suites_from(Some("  ")).len(), DEFAULT_SUITES.len());
    }

    #[test]
    fn reads_a_sources_dir() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sources.list.d")).unwrap();
        std::fs::write(d.path().join("sources.list.d/debian.sources"), DEB822).unwrap();
        std::fs::write(
            d.path().join("sources.list.d/other.list"),
            "deb http://x.example/debian sid main\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("sources.list.d/ignored.list.disabled"),
            "deb http://y.example/debian sid main\n",
        )
        .unwrap();
        let e = read_sources_dir(d.path());
        assert_eq!(e.len(), 4);
        assert_eq!(
            derive_mirrors(&e).unwrap().main,
            "http://mirror.example/debian"
        );
    }
}
