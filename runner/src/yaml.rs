//! YAML with locations: deserialize with `file:line:col` errors, and find the line and column
//! of any node by its path — for cases, matrix files and image recipes alike.

use std::fmt;

/// A case-file error with the file and, where known, line and column.
#[derive(Debug, thiserror::Error)]
#[error("{file}{loc}: {msg}", loc = match (.line, .col) { (Some(l), Some(c)) => format!(":{l}:{c}"), (Some(l), None) => format!(":{l}"), _ => String::new() })]
pub struct CaseError {
    pub file: String,
    pub line: Option<usize>,
    pub col: Option<usize>,
    pub msg: String,
}

impl CaseError {
    /// An error about the node at `path` of `text` (its line and column, where found).
    pub fn at(text: &str, file: &str, path: &[Seg], msg: String) -> Self {
        let at = locate(text, path);
        CaseError {
            file: file.into(),
            line: at.map(|(l, _)| l),
            col: at.map(|(_, c)| c),
            msg,
        }
    }
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

/// One step of a path into a YAML document: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(&'static str),
    /// A mapping key that is data (a condition's name).
    Name(String),
    Index(usize),
}

/// `boots[0].steps[2].run`: a path as an error message names it.
pub fn render_path(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k)
            }
            Seg::Name(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k)
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Line and column (1-based) of the node at `path`, found by deserializing the document with
/// a seed that walks down the path and fails at the node: serde_yaml_ng marks the error with
/// the node's position.  `None` if the path is not in the document.
pub fn locate(text: &str, path: &[Seg]) -> Option<(usize, usize)> {
    use serde::de::{DeserializeSeed, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
    const HERE: &str = "dmcache-vmtest: node found";
    struct Seek<'a>(&'a [Seg]);
    impl<'de> DeserializeSeed<'de> for Seek<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Seek<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a YAML node")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
            let Some((first, rest)) = self.0.split_first() else {
                return Err(A::Error::custom(HERE));
            };
            while let Some(k) = m.next_key::<serde_yaml_ng::Value>()? {
                let hit = match (first, k.as_str()) {
                    (Seg::Key(want), Some(k)) => k == *want,
                    (Seg::Name(want), Some(k)) => k == want,
                    _ => false,
                };
                if hit {
                    return m.next_value_seed(Seek(rest));
                }
                m.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut q: A) -> Result<(), A::Error> {
            let Some((first, rest)) = self.0.split_first() else {
                return Err(A::Error::custom(HERE));
            };
            let mut i = 0;
            loop {
                if Seg::Index(i) == *first {
                    return q.next_element_seed(Seek(rest)).map(|_| ());
                }
                if q.next_element::<IgnoredAny>()?.is_none() {
                    return Ok(());
                }
                i += 1;
            }
        }
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
            self.scalar()
        }
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
            self.scalar()
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
            self.scalar()
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
            self.scalar()
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
            self.scalar()
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
            self.scalar()
        }
    }
    impl Seek<'_> {
        fn scalar<E: serde::de::Error>(&self) -> Result<(), E> {
            if self.0.is_empty() {
                Err(E::custom(HERE))
            } else {
                Ok(())
            }
        }
    }
    let de = serde_yaml_ng::Deserializer::from_str(text);
    match Seek(path).deserialize(de) {
        Err(e) if e.to_string().contains(HERE) => e.location().map(|l| (l.line(), l.column())),
        _ => None,
    }
}
