//! Maps between positions in a TOML document and key paths, so every config
//! error can name both the key and the line it is on.

use std::fmt;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One step into a TOML document: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A path such as `pool[0].backend[1].weight`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPath(Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        Self(Vec::new())
    }

    pub fn key(&self, key: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(key.to_string()));
        p
    }

    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }

    pub fn segments(&self) -> &[Seg] {
        &self.0
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for seg in &self.0 {
            match seg {
                Seg::Key(k) if first => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// Line (1-based) and column (1-based, in characters) of a byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineCol {
    pub line: usize,
    pub col: usize,
}

pub struct SourceMap<'a> {
    text: &'a str,
    root: Option<Spanned<DeTable<'a>>>,
}

impl<'a> SourceMap<'a> {
    /// A map of `text`; a document that does not parse yields a map that can
    /// still turn offsets into lines but knows no keys.
    pub fn new(text: &'a str) -> Self {
        Self {
            text,
            root: DeTable::parse(text).ok(),
        }
    }

    pub fn line_col(&self, offset: usize) -> LineCol {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        LineCol {
            line: before.matches('\n').count() + 1,
            col: before.get(line_start..).map_or(0, |s| s.chars().count()) + 1,
        }
    }

    /// The source line (without its newline) holding `line` (1-based).
    pub fn line_text(&self, line: usize) -> Option<&'a str> {
        self.text.lines().nth(line.checked_sub(1)?)
    }

    /// Where `path` is written: the key itself when the path ends in a key
    /// (so the line shown is the one an operator must edit), else the value.
    pub fn span_of(&self, path: &KeyPath) -> Option<Range<usize>> {
        let root = self.root.as_ref()?;
        let mut table: &DeTable<'_> = root.get_ref();
        let mut value: Option<&Spanned<DeValue<'_>>> = None;
        let mut last_span = None;
        for seg in path.segments() {
            match seg {
                Seg::Key(k) => {
                    let t = match value {
                        None => table,
                        Some(v) => v.get_ref().as_table()?,
                    };
                    let (key, v) = t.iter().find(|(key, _)| key.get_ref() == k)?;
                    last_span = Some(key.span());
                    value = Some(v);
                    table = t;
                }
                Seg::Index(i) => {
                    let arr = value?.get_ref().as_array()?;
                    let v = arr.get(*i)?;
                    last_span = Some(v.span());
                    value = Some(v);
                }
            }
        }
        last_span
    }

    /// The deepest key path whose key or value covers `offset`.
    pub fn path_at(&self, offset: usize) -> KeyPath {
        let mut path = KeyPath::root();
        if let Some(root) = &self.root {
            descend_table(root.get_ref(), offset, &mut path);
        }
        path
    }
}

fn covers(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end.max(span.start + 1)
}

fn descend_table(table: &DeTable<'_>, offset: usize, path: &mut KeyPath) {
    for (key, value) in table.iter() {
        if covers(&key.span(), offset) {
            path.0.push(Seg::Key(key.get_ref().to_string()));
            return;
        }
        if covers(&value.span(), offset) || contains_offset(value, offset) {
            path.0.push(Seg::Key(key.get_ref().to_string()));
            descend_value(value, offset, path);
            return;
        }
    }
}

fn descend_value(value: &Spanned<DeValue<'_>>, offset: usize, path: &mut KeyPath) {
    match value.get_ref() {
        DeValue::Table(t) => descend_table(t, offset, path),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if covers(&item.span(), offset) || contains_offset(item, offset) {
                    path.0.push(Seg::Index(i));
                    descend_value(item, offset, path);
                    return;
                }
            }
        }
        _ => {}
    }
}

/// Tables from `[header]` sections have spans that need not cover their
/// keys, so look inside as well.
fn contains_offset(value: &Spanned<DeValue<'_>>, offset: usize) -> bool {
    match value.get_ref() {
        DeValue::Table(t) => t
            .iter()
            .any(|(k, v)| covers(&k.span(), offset) || covers(&v.span(), offset) || contains_offset(v, offset)),
        DeValue::Array(items) => items
            .iter()
            .any(|v| covers(&v.span(), offset) || contains_offset(v, offset)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str =
        "[node]\nid = \"lb1\"\n\n[[pool]]\nname = \"web\"\n\n[[pool.backend]]\nname = \"a\"\nweight = 0\n";

    #[test]
    fn finds_lines_of_nested_keys() {
        let map = SourceMap::new(DOC);
        let path = KeyPath::root()
            .key("pool")
            .index(0)
            .key("backend")
            .index(0)
            .key("weight");
        let span = map.span_of(&path);
        assert_eq!(span.map(|s| map.line_col(s.start).line), Some(9));
        let missing = KeyPath::root().key("pool").index(3);
        assert_eq!(map.span_of(&missing), None);
    }

    #[test]
    fn finds_paths_of_offsets() {
        let map = SourceMap::new(DOC);
        let offset = DOC.find("weight").unwrap_or(0);
        assert_eq!(map.path_at(offset).to_string(), "pool[0].backend[0].weight");
        let offset = DOC.find("lb1").unwrap_or(0);
        assert_eq!(map.path_at(offset).to_string(), "node.id");
    }

    #[test]
    fn line_col_counts_characters() {
        let map = SourceMap::new("a = 1\nbé = 2\n");
        assert_eq!(map.line_col(0), LineCol { line: 1, col: 1 });
        assert_eq!(map.line_col(6), LineCol { line: 2, col: 1 });
        // 'é' is two bytes but one column.
        assert_eq!(map.line_col(9), LineCol { line: 2, col: 3 });
    }
}
