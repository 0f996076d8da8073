//! The table walker: key paths and lines, reading a table's keys (and
//! finding the ones no code asked for), collecting every error, and the
//! "did you mean" hints and value rendering of the messages.
//!
//! The document is parsed with spans (`toml::de::DeTable`), then walked by
//! hand. Every reader reports its own errors and returns `None` for a bad
//! value; callers evaluate all their fields before combining them with
//! `?`, so one bad key never hides the errors of its neighbours.

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt::{Display, Write as _};
use std::hash::Hash;
use std::net::SocketAddr;
use std::path::PathBuf;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::ConfigError;

/// The byte offset of the value at a key path like `listener[1].tls[0].cert`.
pub(super) fn locate(root: &DeTable<'_>, path: &str) -> Option<usize> {
    let mut table = root;
    let mut found: Option<&Spanned<DeValue<'_>>> = None;
    for segment in path.split('.') {
        if let Some(value) = found {
            table = value.get_ref().as_table()?;
        }
        let (key, index) = match segment.split_once('[') {
            Some((key, rest)) => (key, Some(rest.strip_suffix(']')?.parse::<usize>().ok()?)),
            None => (segment, None),
        };
        let mut value = table.get(key)?;
        if let Some(i) = index {
            value = value.get_ref().as_array()?.get(i)?;
        }
        found = Some(value);
    }
    found.map(|value| value.span().start)
}

pub(super) fn syntax_error(e: &toml::de::Error, text: &str, lines: &Lines) -> ConfigError {
    match e.span() {
        Some(span) => ConfigError {
            path: String::new(),
            message: format!(
                "TOML syntax error at column {}: {}",
                lines.column(text, span.start),
                e.message()
            ),
            line: Some(lines.line(span.start)),
        },
        None => ConfigError {
            path: String::new(),
            message: format!("TOML syntax error: {}", e.message()),
            line: None,
        },
    }
}

/// Byte offsets of line starts, to turn spans into 1-based line numbers.
pub(super) struct Lines(Vec<usize>);

impl Lines {
    pub(super) fn new(text: &str) -> Self {
        Lines(
            std::iter::once(0)
                .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                .collect(),
        )
    }

    pub(super) fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|&start| start <= offset)
    }

    pub(super) fn column(&self, text: &str, offset: usize) -> usize {
        let start = self.0.get(self.line(offset) - 1).copied().unwrap_or(0);
        text.get(start..offset).map_or(1, |s| s.chars().count() + 1)
    }
}

/// A value and its key path (`pool[1].backends[0].addr`).
#[derive(Clone)]
pub(super) struct Field<'t, 'i> {
    pub(super) path: String,
    pub(super) value: &'t Spanned<DeValue<'i>>,
}

impl<'t, 'i> Field<'t, 'i> {
    pub(super) fn get(&self) -> &'t DeValue<'i> {
        self.value.get_ref()
    }

    pub(super) fn offset(&self) -> usize {
        self.value.span().start
    }
}

/// A table being read. Every key the code asks for, present or not, is
/// recorded: those are the keys this table accepts, so once its code has
/// run, any other key in it is unknown (see [`Ctx::table`]). No list of
/// keys is kept by hand, so a new key cannot be forgotten in one.
pub(super) struct Tbl<'t, 'i> {
    pub(super) path: String,
    /// Where a missing key is reported: the `[[header]]` or the `{`.
    pub(super) offset: usize,
    pub(super) map: &'t DeTable<'i>,
    /// In the order first asked for, which is the order they are listed
    /// in "accepted here".
    known: RefCell<Vec<&'static str>>,
    /// Where this table's unknown keys sort among errors at the same
    /// offset: as if they were reported on entering the table.
    seq: usize,
}

impl<'t, 'i> Tbl<'t, 'i> {
    pub(super) fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(super) fn field(&self, key: &'static str) -> Option<Field<'t, 'i>> {
        let mut known = self.known.borrow_mut();
        if !known.contains(&key) {
            known.push(key);
        }
        self.map.get(key).map(|value| Field {
            path: self.key_path(key),
            value,
        })
    }
}

/// `pool[2].backends[0].addr` -> `pool[].backends[].addr`.
#[cfg(test)]
fn normalise(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => in_index = true,
            ']' => {
                in_index = false;
                out.push_str("[]");
            }
            _ if in_index => {}
            c => out.push(c),
        }
    }
    out
}

/// Records `key` as first seen at `path`; on a second sighting returns the
/// first one's path.
pub(super) fn first_seen<K: Eq + Hash>(
    seen: &mut HashMap<K, String>,
    key: K,
    path: &str,
) -> Option<String> {
    match seen.entry(key) {
        Entry::Occupied(e) => Some(e.get().clone()),
        Entry::Vacant(e) => {
            e.insert(path.to_owned());
            None
        }
    }
}

/// The walk's state: what every section reports into.
pub(super) struct Ctx {
    lines: Lines,
    /// Relative paths in the file are resolved against this directory.
    pub(super) base: PathBuf,
    /// Sorted by byte offset, then by `seq` so that errors at one offset
    /// stay in the order the walk met them.
    errors: Vec<((usize, usize), ConfigError)>,
    /// The last error's place among errors at its offset.
    seq: usize,
    /// TCP addresses bound so far (admin, DNS, listeners), with the key that
    /// binds each: two sockets cannot share one.
    pub(super) binds: HashMap<SocketAddr, String>,
    /// Every key path asked for (array indexes as `[]`), and whether it was
    /// present anywhere: the reference config must set every one.
    #[cfg(test)]
    pub(super) looked_up: std::collections::BTreeMap<String, bool>,
}

impl Ctx {
    pub(super) fn new(lines: Lines, base: PathBuf) -> Self {
        Ctx {
            lines,
            base,
            errors: Vec::new(),
            seq: 0,
            binds: HashMap::new(),
            #[cfg(test)]
            looked_up: Default::default(),
        }
    }

    /// Every error found, in file order.
    pub(super) fn into_errors(mut self) -> Vec<ConfigError> {
        self.errors.sort_by_key(|(at, _)| *at);
        self.errors.into_iter().map(|(_, e)| e).collect()
    }

    pub(super) fn error_count(&self) -> usize {
        self.errors.len()
    }

    // --- reporting -------------------------------------------------------

    pub(super) fn err(&mut self, path: String, offset: usize, message: String) {
        let seq = self.next_seq();
        self.push((offset, seq), path, message);
    }

    fn next_seq(&mut self) -> usize {
        self.seq += 1;
        self.seq
    }

    fn push(&mut self, at: (usize, usize), path: String, message: String) {
        let line = Some(self.lines.line(at.0));
        self.errors.push((
            at,
            ConfigError {
                path,
                message,
                line,
            },
        ));
    }

    pub(super) fn bad(&mut self, f: &Field<'_, '_>, message: impl Display) {
        let message = format!("= {}: {message}", show(f.get()));
        self.err(f.path.clone(), f.offset(), message);
    }

    pub(super) fn missing(&mut self, t: &Tbl<'_, '_>, key: &str, example: &str) {
        self.err(
            t.key_path(key),
            t.offset,
            format!("required key is missing; add e.g. {key} = {example}"),
        );
    }

    // --- structure -------------------------------------------------------

    /// Reads the table at `f` with `read`, then reports every key in it
    /// that `read` never asked for.
    pub(super) fn table<'t, 'i, T>(
        &mut self,
        f: &Field<'t, 'i>,
        expected: &str,
        read: impl FnOnce(&mut Self, &Tbl<'t, 'i>) -> Option<T>,
    ) -> Option<T> {
        let DeValue::Table(map) = f.get() else {
            self.bad(f, expected);
            return None;
        };
        self.walk(f.path.clone(), f.offset(), map, read)
    }

    /// [`Ctx::table`] for a table already known to be one (the root).
    pub(super) fn walk<'t, 'i, T>(
        &mut self,
        path: String,
        offset: usize,
        map: &'t DeTable<'i>,
        read: impl FnOnce(&mut Self, &Tbl<'t, 'i>) -> T,
    ) -> T {
        let t = Tbl {
            path,
            offset,
            map,
            known: RefCell::default(),
            seq: self.next_seq(),
        };
        let out = read(self, &t);
        self.unknown_keys(&t);
        out
    }

    fn unknown_keys(&mut self, t: &Tbl<'_, '_>) {
        let known = t.known.borrow();
        #[cfg(test)]
        for key in known.iter() {
            let path = normalise(&t.key_path(key));
            *self.looked_up.entry(path).or_default() |= t.map.contains_key(*key);
        }
        for (key, _) in t.map.iter() {
            let name: &str = key.get_ref();
            if known.contains(&name) {
                continue;
            }
            let hint = suggest(name, known.iter().copied())
                .map(|s| format!(" (did you mean {s}?)"))
                .unwrap_or_default();
            self.push(
                (key.span().start, t.seq),
                t.key_path(name),
                format!("unknown key{hint}; accepted here: {}", known.join(", ")),
            );
        }
    }

    pub(super) fn array<'t, 'i>(
        &mut self,
        f: &Field<'t, 'i>,
        expected: &str,
    ) -> Option<Vec<Field<'t, 'i>>> {
        let DeValue::Array(items) = f.get() else {
            self.bad(f, expected);
            return None;
        };
        Some(
            items
                .iter()
                .enumerate()
                .map(|(i, value)| Field {
                    path: format!("{}[{i}]", f.path),
                    value,
                })
                .collect(),
        )
    }

    /// Parses every item, reporting all bad ones; `None` if any was bad.
    pub(super) fn each<'t, 'i, T>(
        &mut self,
        items: &[Field<'t, 'i>],
        mut parse: impl FnMut(&mut Self, &Field<'t, 'i>) -> Option<T>,
    ) -> Option<Vec<T>> {
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match parse(self, item) {
                Some(value) => out.push(value),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    pub(super) fn req<'t, 'i, T>(
        &mut self,
        t: &Tbl<'t, 'i>,
        key: &'static str,
        example: &str,
        parse: impl FnOnce(&mut Self, &Field<'t, 'i>) -> Option<T>,
    ) -> Option<T> {
        match t.field(key) {
            Some(f) => parse(self, &f),
            None => {
                self.missing(t, key, example);
                None
            }
        }
    }

    pub(super) fn opt<'t, 'i, T>(
        &mut self,
        t: &Tbl<'t, 'i>,
        key: &'static str,
        default: T,
        parse: impl FnOnce(&mut Self, &Field<'t, 'i>) -> Option<T>,
    ) -> Option<T> {
        match t.field(key) {
            Some(f) => parse(self, &f),
            None => Some(default),
        }
    }

    /// An optional key without a default: `Some(None)` when absent.
    pub(super) fn maybe<'t, 'i, T>(
        &mut self,
        t: &Tbl<'t, 'i>,
        key: &'static str,
        parse: impl FnOnce(&mut Self, &Field<'t, 'i>) -> Option<T>,
    ) -> Option<Option<T>> {
        match t.field(key) {
            Some(f) => parse(self, &f).map(Some),
            None => Some(None),
        }
    }

    /// Reports each of `keys` that is present: they do not apply here.
    pub(super) fn misplaced(&mut self, t: &Tbl<'_, '_>, keys: &[&'static str], why: &str) -> bool {
        let mut any = false;
        for f in keys.iter().filter_map(|key| t.field(key)) {
            self.bad(&f, why);
            any = true;
        }
        any
    }
}

/// How much of a value an error shows.
pub(super) const SHOW_LIMIT: usize = 80;

/// A value as TOML-ish text, shortened for an error message.
pub(super) fn show(value: &DeValue<'_>) -> String {
    let mut out = String::new();
    render(value, &mut out);
    if out.len() > SHOW_LIMIT {
        let mut end = SHOW_LIMIT;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push_str("...");
    }
    out
}

pub(super) fn render(value: &DeValue<'_>, out: &mut String) {
    match value {
        DeValue::String(s) => {
            // Only the start of a long string is shown anyway.
            let head: String = s.chars().take(SHOW_LIMIT).collect();
            quote(&head, out);
        }
        DeValue::Integer(n) => {
            let _ = write!(out, "{n}");
        }
        DeValue::Float(x) => out.push_str(x.as_str()),
        DeValue::Boolean(b) => {
            let _ = write!(out, "{b}");
        }
        DeValue::Datetime(d) => {
            let _ = write!(out, "{d}");
        }
        DeValue::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if out.len() > SHOW_LIMIT {
                    break;
                }
                if i > 0 {
                    out.push_str(", ");
                }
                render(item.get_ref(), out);
            }
            out.push(']');
        }
        DeValue::Table(table) if table.is_empty() => out.push_str("{}"),
        DeValue::Table(table) => {
            out.push_str("{ ");
            for (i, (key, item)) in table.iter().enumerate() {
                if out.len() > SHOW_LIMIT {
                    break;
                }
                if i > 0 {
                    out.push_str(", ");
                }
                let key: &str = key.get_ref();
                if !key.is_empty()
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    out.push_str(key);
                } else {
                    quote(key, out);
                }
                out.push_str(" = ");
                render(item.get_ref(), out);
            }
            out.push_str(" }");
        }
    }
}

/// A TOML basic string.
pub(super) fn quote(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The closest of `options` to a misspelt `word`, if close enough to be a
/// plausible typo.
pub(super) fn suggest<'a>(
    word: &str,
    options: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    if word.len() > 64 {
        return None;
    }
    let word = word.to_ascii_lowercase();
    let allowed = if word.chars().count() <= 4 { 1 } else { 2 };
    options
        .into_iter()
        .map(|option| (edit_distance(&word, &option.to_ascii_lowercase()), option))
        // A one-letter word is "close" to every other one-letter word.
        .filter(|(distance, _)| *distance <= allowed && *distance < word.len())
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, option)| option)
}

/// Levenshtein distance where swapping two neighbours also counts as one
/// edit (optimal string alignment), the commonest typo.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d: Vec<usize> = vec![0; (a.len() + 1) * width];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            d[i * width + j] = if i == 0 || j == 0 {
                i + j
            } else {
                let substitution = d[(i - 1) * width + j - 1] + usize::from(a[i - 1] != b[j - 1]);
                let mut best = substitution
                    .min(d[(i - 1) * width + j] + 1)
                    .min(d[i * width + j - 1] + 1);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    best = best.min(d[(i - 2) * width + j - 2] + 1);
                }
                best
            };
        }
    }
    d[a.len() * width + b.len()]
}
