//! One config file's text: its TOML parse, and errors that point into it
//! with the key's full path (`device[1].relay.storm_rate`), found from the
//! error's position in the parsed document.

use std::ops::Range;
use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::{line_col, shown, ConfigError};
use super::raw::RawFile;

/// A file and its text.
pub(super) struct Source<'a> {
    pub file: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    /// An `Invalid` error at `span`.
    pub fn err(&self, span: Range<usize>, key: &str, message: String, fix: &str) -> ConfigError {
        let (line, column) = line_col(self.text, span.start);
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message,
            fix: fix.to_string(),
        }
    }

    /// The raw layer, or the first TOML or serde error with its key path.
    pub fn parse(&self) -> Result<RawFile, ConfigError> {
        toml::from_str::<RawFile>(self.text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let msg = e.message().trim();
            let quoted = msg.split('`').nth(1).unwrap_or_default();
            let at = key_path(self.text, span.start);
            let (key, message, fix) = if msg.starts_with("unknown field") {
                (
                    at.unwrap_or_else(|| shown(quoted)),
                    // The rest of the message lists the keys the table takes.
                    msg.replacen(&format!("`{quoted}`"), &format!("`{}`", shown(quoted)), 1),
                    "remove the key or correct its spelling; docs/configuration.md lists every key",
                )
            } else if msg.starts_with("missing field") {
                let key = match at {
                    Some(table) => format!("{table}.{quoted}"),
                    None => quoted.to_string(),
                };
                (
                    key,
                    msg.to_string(),
                    "add the key; docs/configuration.md shows an example",
                )
            } else if msg.contains("duplicate") {
                let repeated = self.text.get(span.clone()).unwrap_or_default().trim();
                let repeated = repeated.trim_matches(|c| c == '"' || c == '\'');
                (
                    earlier_key(self.text, repeated, span.start).unwrap_or_else(|| shown(repeated)),
                    msg.to_string(),
                    "each key may appear once per table; remove the repeat",
                )
            } else {
                (
                    at.unwrap_or_else(|| "(toml)".to_string()),
                    msg.to_string(),
                    "write the value with the type shown in docs/configuration.md",
                )
            };
            self.err(span, &key, message, fix)
        })
    }
}

/// Every key and array element of a document: its dotted path
/// (`device[1].relay.storm_rate`, `device[0].allow_uids[2]`), the span of its
/// key (none for an array element) and of its value, parents first.
struct Entry {
    path: String,
    name: String,
    key: Option<Range<usize>>,
    value: Range<usize>,
}

fn entries(text: &str) -> Vec<Entry> {
    let (root, _) = DeTable::parse_recoverable(text);
    let mut out = Vec::new();
    table(root.get_ref(), "", &mut out);
    out
}

/// The path of the key or value at byte `at` of `text`, or `None` when
/// `at` is on no key (a syntax error, a comment).
pub(super) fn key_path(text: &str, at: usize) -> Option<String> {
    let holds = |s: &Range<usize>| s.start <= at && at < s.end;
    entries(text)
        .into_iter()
        .filter(|e| e.key.as_ref().is_some_and(holds) || holds(&e.value))
        .max_by_key(|e| e.path.len())
        .map(|e| e.path)
}

/// The path of the last key named `name` before byte `at` (for a repeated
/// key, which the parsed document holds only once).
fn earlier_key(text: &str, name: &str, at: usize) -> Option<String> {
    entries(text)
        .into_iter()
        .filter(|e| e.name == name && e.key.as_ref().is_some_and(|k| k.start < at))
        .max_by_key(|e| e.key.as_ref().map(|k| k.start))
        .map(|e| e.path)
}

fn table(t: &DeTable<'_>, prefix: &str, out: &mut Vec<Entry>) {
    for (k, v) in t.iter() {
        let name = k.get_ref();
        let part = if !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            shown(name)
        } else {
            format!("\"{}\"", shown(name))
        };
        let path = if prefix.is_empty() {
            part
        } else {
            format!("{prefix}.{part}")
        };
        out.push(Entry {
            path: path.clone(),
            name: name.to_string(),
            key: Some(k.span()),
            value: v.span(),
        });
        value(v, &path, out);
    }
}

fn value(v: &Spanned<DeValue<'_>>, path: &str, out: &mut Vec<Entry>) {
    match v.get_ref() {
        DeValue::Table(t) => table(t, path, out),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("{path}[{i}]");
                out.push(Entry {
                    path: path.clone(),
                    name: String::new(),
                    key: None,
                    value: item.span(),
                });
                value(item, &path, out);
            }
        }
        _ => {}
    }
}
