//! What a reviewer is handed: a `git format-patch` file, a mail saved from a client or
//! fetched raw from a list archive, an mbox of a series, or a plain diff.  Headers and
//! transfer encodings through `mailparse`; the diff is the body from its first `diff --git`
//! / `---`+`+++` / `Index:` line to git's signature separator.  Pure: bytes in, patches out.

use anyhow::{bail, Result};
use regex::Regex;
use std::sync::LazyLock;

/// One patch of the input, in the order it is to be applied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Patch {
    /// `FILE` or `FILE#N` (the N-th message of an mbox).
    pub source: String,
    pub subject: Option<String>,
    pub from: Option<String>,
    pub message_id: Option<String>,
    /// `X-stable-base: Linux 7.0` (what AUTOSEL mails carry).
    pub stable_base: Option<String>,
    /// The upstream commit the body names (`[ Upstream commit X ]`, `commit X upstream.`).
    pub upstream: Option<String>,
    /// `[PATCH 2/3]` → (2, 3).
    pub number: Option<(u32, u32)>,
    pub diff: String,
    /// The files the diff changes (new names), in order.
    pub files: Vec<String>,
}

static NUMBER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\[[^\]]*?\b(\d+)/(\d+)\b[^\]]*\]").unwrap());
static UPSTREAM: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?im)^\s*\[?\s*(?:upstream\s+commit|commit)\s+([0-9a-f]{12,40})\b").unwrap()
});
static FROM_LINE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^From \S+").unwrap());
static HEADER: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[A-Za-z0-9-]+:").unwrap());

/// Every patch in one input file, in file order.  A cover letter (`0/N`) is skipped; a mail
/// without a diff is an error naming it.
pub fn parse_input(name: &str, bytes: &[u8]) -> Result<Vec<Patch>> {
    if bytes.len() > 200 && !bytes.contains(&b'\n') {
        bail!(
            "{name}: {} bytes on one line, no line breaks: a mail flattened by a copy; save the raw message (the list archive's `raw` link, or `b4 am`)",
            bytes.len()
        );
    }
    let text = String::from_utf8_lossy(bytes).replace("\r\n", "\n");
    let messages = split_mbox(&text);
    let many = messages.len() > 1;
    let mut out = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let source = if many {
            format!("{name}#{}", i + 1)
        } else {
            name.to_string()
        };
        let p = parse_message(&source, m)?;
        if p.diff.is_empty() {
            if p.number.is_some_and(|(n, _)| n == 0) {
                continue; // the cover letter
            }
            bail!(
                "{source}: no diff in {} (expected `diff --git` or `---`/`+++` lines)",
                p.subject
                    .as_deref()
                    .map(|s| format!("the mail `{s}`"))
                    .unwrap_or_else(|| "it".into())
            );
        }
        out.push(p);
    }
    if out.is_empty() {
        bail!("{name}: no patch in it");
    }
    Ok(out)
}

/// Messages of an mbox (split at `From ` lines followed by a header), or the whole text.
fn split_mbox(text: &str) -> Vec<&str> {
    let lines: Vec<(usize, &str)> = text
        .split_inclusive('\n')
        .scan(0usize, |off, l| {
            let at = *off;
            *off += l.len();
            Some((at, l))
        })
        .collect();
    let mut starts: Vec<usize> = Vec::new();
    for (i, (at, l)) in lines.iter().enumerate() {
        let next_is_header = lines.get(i + 1).is_some_and(|(_, n)| HEADER.is_match(n));
        if FROM_LINE.is_match(l) && next_is_header && (i == 0 || lines[i - 1].1.trim().is_empty()) {
            starts.push(*at);
        }
    }
    if starts.is_empty() {
        return vec![text];
    }
    let mut out = Vec::new();
    for (k, s) in starts.iter().enumerate() {
        let e = starts.get(k + 1).copied().unwrap_or(text.len());
        out.push(&text[*s..e]);
    }
    out
}

fn parse_message(source: &str, m: &str) -> Result<Patch> {
    let after_from = match m.strip_prefix("From ") {
        Some(_) if FROM_LINE.is_match(m) => &m[m.find('\n').map(|i| i + 1).unwrap_or(m.len())..],
        _ => m,
    };
    let is_mail = HEADER.is_match(after_from.lines().next().unwrap_or(""))
        && !after_from.starts_with("Index:");
    let (mut subject, mut from, mut message_id, mut stable_base) = (None, None, None, None);
    let body = if is_mail {
        let mail = mailparse::parse_mail(after_from.as_bytes())
            .map_err(|e| anyhow::anyhow!("{source}: not a mail: {e}"))?;
        use mailparse::MailHeaderMap;
        let h = &mail.headers;
        let one = |k: &str| h.get_first_value(k).map(|v| unfold(&v));
        subject = one("Subject");
        from = one("From");
        message_id = one("Message-ID");
        stable_base = one("X-stable-base");
        // Quoted-printable decoding gives CRLF line ends.
        text_body(&mail).replace("\r\n", "\n")
    } else {
        after_from.to_string()
    };
    // An in-body `From:`/`Subject:` (git's convention for a patch forwarded by someone else)
    // does not replace the mail's subject, which carries the stable tags.
    let (prose, diff) = split_diff(&body);
    let number = subject.as_deref().and_then(|s| {
        let c = NUMBER.captures(s)?;
        Some((c[1].parse().ok()?, c[2].parse().ok()?))
    });
    let upstream = UPSTREAM.captures(prose).map(|c| c[1].to_ascii_lowercase());
    Ok(Patch {
        source: source.to_string(),
        subject,
        from,
        message_id,
        stable_base,
        upstream,
        number,
        files: diff_files(&diff),
        diff,
    })
}

fn unfold(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The decoded text/plain body (a multipart mail: the first text/plain part with a diff, or
/// the first text/plain part).
fn text_body(mail: &mailparse::ParsedMail) -> String {
    if mail.subparts.is_empty() {
        return mail.get_body().unwrap_or_default();
    }
    let mut plain = Vec::new();
    collect_plain(mail, &mut plain);
    plain
        .iter()
        .find(|b| !split_diff(b).1.is_empty())
        .or(plain.first())
        .cloned()
        .unwrap_or_default()
}

fn collect_plain(m: &mailparse::ParsedMail, out: &mut Vec<String>) {
    if m.subparts.is_empty() {
        let ct = m.ctype.mimetype.to_ascii_lowercase();
        if ct == "text/plain" || ct == "text/x-patch" || ct == "text/x-diff" {
            out.push(m.get_body().unwrap_or_default());
        }
    }
    for s in &m.subparts {
        collect_plain(s, out);
    }
}

/// (prose before the diff, the diff up to git's `-- ` signature line).
fn split_diff(body: &str) -> (&str, String) {
    let lines: Vec<&str> = body.split_inclusive('\n').collect();
    let start = lines.iter().enumerate().position(|(i, l)| {
        l.starts_with("diff --git ")
            || l.starts_with("Index: ")
            || (l.starts_with("--- ") && lines.get(i + 1).is_some_and(|n| n.starts_with("+++ ")))
    });
    let Some(start) = start else {
        return (body, String::new());
    };
    let prose_len: usize = lines[..start].iter().map(|l| l.len()).sum();
    let mut diff = String::new();
    for l in &lines[start..] {
        if l.trim_end_matches('\n') == "-- " {
            break;
        }
        diff.push_str(l);
    }
    if !diff.ends_with('\n') {
        diff.push('\n');
    }
    (&body[..prose_len], diff)
}

/// The files a diff changes: `+++ b/PATH` (or `--- a/PATH` for a deletion), and
/// `diff --git` lines without hunks (renames, mode changes).
pub fn diff_files(diff: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let strip = |p: &str| {
        let p = p.split('\t').next().unwrap_or(p).trim();
        p.split_once('/').map(|(_, r)| r.to_string())
    };
    let mut last_minus: Option<String> = None;
    for l in diff.lines() {
        if let Some(p) = l.strip_prefix("--- ") {
            last_minus = strip(p);
        } else if let Some(p) = l.strip_prefix("+++ ") {
            let f = if p.trim() == "/dev/null" {
                last_minus.take()
            } else {
                strip(p)
            };
            if let Some(f) = f.filter(|f| !out.contains(f)) {
                out.push(f);
            }
        } else if let Some(rest) = l.strip_prefix("diff --git ") {
            if let Some(b) = rest.rsplit(" b/").next().filter(|_| rest.contains(" b/")) {
                let b = b.to_string();
                if !out.contains(&b) {
                    out.push(b);
                }
            }
        }
    }
    out
}

/// Checks the order of a series given as several inputs or one mbox: numbered patches must
/// come 1/N, 2/N, … N/N with none missing.  Unnumbered single patches pass.
pub fn check_series(patches: &[Patch]) -> Result<()> {
    let numbered: Vec<&Patch> = patches.iter().filter(|p| p.number.is_some()).collect();
    if numbered.is_empty() {
        return Ok(());
    }
    if numbered.len() != patches.len() {
        let odd = patches.iter().find(|p| p.number.is_none()).unwrap();
        bail!(
            "{}: an unnumbered patch in a numbered series: give one series at a time",
            odd.source
        );
    }
    let total = numbered[0].number.unwrap().1;
    for (i, p) in numbered.iter().enumerate() {
        let (n, m) = p.number.unwrap();
        if m != total {
            bail!("{}: patch {n}/{m} in a series of {total}", p.source);
        }
        let want = i as u32 + 1;
        if n != want {
            let seen: Vec<String> = numbered
                .iter()
                .map(|p| format!("{}/{}", p.number.unwrap().0, total))
                .collect();
            if numbered.iter().any(|q| q.number.unwrap().0 == want) {
                bail!(
                    "{}: patch {n}/{total} comes where {want}/{total} belongs (given: {}): give the series in order",
                    p.source,
                    seen.join(", ")
                );
            }
            bail!(
                "{}: patch {want}/{total} is missing (given: {})",
                p.source,
                seen.join(", ")
            );
        }
    }
    if numbered.len() as u32 != total {
        bail!(
            "the series has {} of {total} patches: {}/{total} onwards are missing",
            numbered.len(),
            numbered.len() + 1
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIFF: &str = "diff --git a/drivers/md/dm-cache-target.c b/drivers/md/dm-cache-target.c
--- a/drivers/md/dm-cache-target.c
+++ b/drivers/md/dm-cache-target.c
@@ -1,3 +1,4 @@
 a
+b
 c
 d
";

    fn mail(subject: &str, body_extra: &str) -> String {
        format!(
            "From 1234567890abcdef1234567890abcdef12345678 Mon Sep 17 00:00:00 2001\n\
From: Sasha Levin <sashal@kernel.org>\n\
Subject: {subject}\n\
Message-ID: <x@k>\n\
X-stable-base: Linux 7.0\n\
\n\
From: Ming-Hung Tsai <mtsai@redhat.com>\n\
\n\
[ Upstream commit a373b3d5289e50ab26d4cf776bf5891436ff3658 ]\n\
\n\
text{body_extra}\n\
---\n\
 drivers/md/dm-cache-target.c | 1 +\n\
\n\
{DIFF}-- \n\
2.53.0\n\
\n"
        )
    }

    #[test]
    fn a_format_patch_mail() {
        let m = mail(
            "[PATCH AUTOSEL 7.0-6.18] dm cache: prevent entering\n passthrough mode",
            "",
        );
        let p = parse_input("x.patch", m.as_bytes()).unwrap();
        assert_eq!(p.len(), 1);
        let p = &p[0];
        assert_eq!(
            p.subject.as_deref(),
            Some("[PATCH AUTOSEL 7.0-6.18] dm cache: prevent entering passthrough mode")
        );
        assert_eq!(p.stable_base.as_deref(), Some("Linux 7.0"));
        assert_eq!(
            p.upstream.as_deref(),
            Some("a373b3d5289e50ab26d4cf776bf5891436ff3658")
        );
        assert_eq!(p.diff, DIFF);
        assert_eq!(p.files, vec!["drivers/md/dm-cache-target.c"]);
        assert_eq!(p.number, None);
    }

    #[test]
    fn a_plain_diff_and_a_quoted_printable_mail() {
        let p = parse_input("d.diff", DIFF.as_bytes()).unwrap();
        assert_eq!(p[0].diff, DIFF);
        assert_eq!(p[0].subject, None);
        let qp = format!(
            "From: a@b\nSubject: [PATCH 6.18.y] x\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: quoted-printable\n\ncommit 0123456789ab upstream.\n\n{}",
            DIFF.replace("+b\n", "+b=3Dc\n")
        );
        let p = parse_input("q.eml", qp.as_bytes()).unwrap();
        assert!(p[0].diff.contains("+b=c\n"), "{}", p[0].diff);
        assert_eq!(p[0].upstream.as_deref(), Some("0123456789ab"));
    }

    #[test]
    fn an_mbox_series_in_order_and_out_of_order() {
        let one = mail("[PATCH 1/2] first", "");
        let two = mail("[PATCH 2/2] second", "");
        let cover = "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\nFrom: a@b\nSubject: [PATCH 0/2] cover\n\nhello\n\n";
        let mbox = format!("{cover}{one}{two}");
        let p = parse_input("s.mbox", mbox.as_bytes()).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].source, "s.mbox#2");
        assert_eq!(p[1].number, Some((2, 2)));
        check_series(&p).unwrap();
        let rev = vec![p[1].clone(), p[0].clone()];
        let e = check_series(&rev).unwrap_err().to_string();
        assert!(e.contains("comes where 1/2 belongs"), "{e}");
        let e = check_series(&p[1..]).unwrap_err().to_string();
        assert!(e.contains("1/2 is missing"), "{e}");
        let e = check_series(&p[..1]).unwrap_err().to_string();
        assert!(e.contains("1 of 2 patches"), "{e}");
    }

    #[test]
    fn bad_inputs_are_named() {
        let flat = "From mboxrd@z Thu Jan 1 00:00:00 1970 Received: from smtp ".repeat(10);
        let e = parse_input("seed.eml", flat.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no line breaks"), "{e}");
        let e = parse_input(
            "m.eml",
            b"From: a@b\nSubject: [PATCH] words only\n\nno diff here\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("m.eml: no diff in the mail `[PATCH] words only`"),
            "{e}"
        );
    }

    /// The repository's two forms of a373b3d5289e: the posted diff and the mail-formatted copy.
    #[test]
    fn the_repository_copies_of_the_seed_patch() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../patches");
        let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
        let plain = parse_input("u", &read("upstream-a373b3d5289e.patch")).unwrap();
        let mail = parse_input("m", &read("autosel-a373b3d5289e-7.0-6.18.eml")).unwrap();
        assert_eq!(plain.len(), 1);
        assert_eq!(mail.len(), 1);
        let files = vec![
            "drivers/md/dm-cache-metadata.c",
            "drivers/md/dm-cache-metadata.h",
            "drivers/md/dm-cache-target.c",
        ];
        assert_eq!(plain[0].files, files);
        assert_eq!(mail[0].files, files);
        assert_eq!(
            mail[0].subject.as_deref(),
            Some("[PATCH AUTOSEL 7.0-6.18] dm cache: prevent entering passthrough mode after unclean shutdown")
        );
        assert_eq!(mail[0].stable_base.as_deref(), Some("Linux 7.0"));
        assert_eq!(
            mail[0].upstream.as_deref(),
            Some("a373b3d5289e50ab26d4cf776bf5891436ff3658")
        );
        // The same change: the added and removed lines agree.
        let changes = |d: &str| -> Vec<String> {
            d.lines()
                .filter(|l| {
                    (l.starts_with('+') && !l.starts_with("+++"))
                        || (l.starts_with('-') && !l.starts_with("---"))
                })
                .map(String::from)
                .collect()
        };
        assert_eq!(changes(&plain[0].diff), changes(&mail[0].diff));
        assert!(
            !mail[0].diff.contains("\n-- \n"),
            "the signature is not part of the diff"
        );
    }

    #[test]
    fn files_of_a_diff() {
        let d = "--- a/x.c\n+++ b/x.c\n@@\n--- a/gone.c\n+++ /dev/null\n@@\ndiff --git a/old.c b/new.c\nsimilarity index 100%\nrename from old.c\nrename to new.c\n";
        assert_eq!(diff_files(d), vec!["x.c", "gone.c", "new.c"]);
    }
}
