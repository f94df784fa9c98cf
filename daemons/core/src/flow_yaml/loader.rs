//! YAML text → Python values, the way PyYAML's `yaml.safe_load` does it (YAML 1.1 resolvers and
//! constructors on top of libyaml's parse; see the module documentation for the details).

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use regex::Regex;
use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Visitor};

use super::values::{Dict, HashKey, OpaqueKind, Py};

/// A scalar as serde_norway resolved it (YAML 1.2 core schema plus standard tags).
#[derive(Debug, Clone)]
enum Typed {
    Null,
    Bool(bool),
    Int(i128),
    BigInt,
    Float(f64),
    Str,
}

#[derive(Debug)]
struct ScalarNode {
    typed: Typed,
    /// Scalar value (after unquoting/folding), from the second pass.
    raw: String,
    /// Byte offset of `raw` in the source when serde could borrow it (plain and simple quoted
    /// scalars); `None` for block scalars and scalars with escapes or line folding.
    offset: Option<usize>,
}

#[derive(Debug)]
enum Node {
    /// Empty document.
    Void,
    Scalar(ScalarNode),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Copy)]
struct Source {
    base: usize,
    len: usize,
}

impl Source {
    fn offset_of(self, s: &str) -> Option<usize> {
        let p = s.as_ptr() as usize;
        (p >= self.base && p + s.len() <= self.base + self.len).then(|| p - self.base)
    }
}

/// First pass: shape of the document and serde's typed scalars. `budget` counts the nodes still
/// allowed: serde replays an alias's events, so the tree is the alias-expanded document, and a
/// small file of nested aliases could otherwise expand to billions of nodes (PyYAML shares the
/// aliased object instead).
#[derive(Clone, Copy)]
struct ShapePass<'b> {
    budget: &'b Cell<usize>,
}

impl<'de> DeserializeSeed<'de> for ShapePass<'_> {
    type Value = Node;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        let left = self.budget.get();
        if left == 0 {
            return Err(de::Error::custom(
                "document too large once aliases are expanded (refused to protect the server)",
            ));
        }
        self.budget.set(left - 1);
        d.deserialize_any(self)
    }
}

impl ShapePass<'_> {
    fn scalar(typed: Typed) -> Node {
        Node::Scalar(ScalarNode {
            typed,
            raw: String::new(),
            offset: None,
        })
    }
}

impl<'de> Visitor<'de> for ShapePass<'_> {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML node")
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Void)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Self::scalar(Typed::Null))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Self::scalar(Typed::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Self::scalar(Typed::Int(v.into())))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Self::scalar(Typed::Int(v.into())))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        Ok(Self::scalar(Typed::Int(v)))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        Ok(Self::scalar(
            i128::try_from(v).map_or(Typed::BigInt, Typed::Int),
        ))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Self::scalar(Typed::Float(v)))
    }
    fn visit_str<E: de::Error>(self, _v: &str) -> Result<Node, E> {
        Ok(Self::scalar(Typed::Str))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut pairs = Vec::new();
        while let Some(k) = map.next_key_seed(self)? {
            let v = map.next_value_seed(self)?;
            pairs.push((k, v));
        }
        Ok(Node::Map(pairs))
    }
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Node, A::Error> {
        // serde_norway reports local tags (`!foo value`) as enum variants.
        let (tag, _variant): (String, A::Variant) = data.variant()?;
        Err(de::Error::custom(format!(
            "could not determine a constructor for the tag '!{tag}'"
        )))
    }
}

/// Second pass: walk the same events again, reading each scalar as text.
struct TextPass<'a> {
    node: &'a mut Node,
    src: Source,
}

impl<'de> DeserializeSeed<'de> for TextPass<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let src = self.src;
        match self.node {
            Node::Void => Ok(()),
            Node::Scalar(s) => {
                let (raw, offset) = d.deserialize_str(StrVisitor { src })?;
                s.raw = raw;
                s.offset = offset;
                Ok(())
            }
            Node::Seq(items) => d.deserialize_seq(FillSeq { items, src }),
            Node::Map(pairs) => d.deserialize_map(FillMap { pairs, src }),
        }
    }
}

struct StrVisitor {
    src: Source,
}

impl<'de> Visitor<'de> for StrVisitor {
    type Value = (String, Option<usize>);
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a scalar")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok((v.to_string(), self.src.offset_of(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok((v.to_string(), None))
    }
}

struct FillSeq<'a> {
    items: &'a mut Vec<Node>,
    src: Source,
}

impl<'de> Visitor<'de> for FillSeq<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sequence")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        for node in self.items.iter_mut() {
            seq.next_element_seed(TextPass {
                node,
                src: self.src,
            })?
            .ok_or_else(|| de::Error::custom("document changed between passes"))?;
        }
        Ok(())
    }
}

struct FillMap<'a> {
    pairs: &'a mut Vec<(Node, Node)>,
    src: Source,
}

impl<'de> Visitor<'de> for FillMap<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        for (k, v) in self.pairs.iter_mut() {
            map.next_key_seed(TextPass {
                node: k,
                src: self.src,
            })?
            .ok_or_else(|| de::Error::custom("document changed between passes"))?;
            map.next_value_seed(TextPass {
                node: v,
                src: self.src,
            })?;
        }
        Ok(())
    }
}

/// Nodes a document may have after alias expansion: a fixed allowance plus a multiple of its
/// size (without aliases a document has fewer nodes than bytes).
const MAX_NODES_BASE: usize = 100_000;
const MAX_NODES_PER_BYTE: usize = 2;

/// `yaml.safe_load(text)`, as far as this module emulates it.
pub(super) fn safe_load(text: &str) -> Result<Py, String> {
    let budget = Cell::new(MAX_NODES_BASE + MAX_NODES_PER_BYTE * text.len());
    let mut root = ShapePass { budget: &budget }
        .deserialize(serde_norway::Deserializer::from_str(text))
        .map_err(|e| e.to_string())?;
    if matches!(root, Node::Void) {
        return Ok(Py::Null);
    }
    let src = Source {
        base: text.as_ptr() as usize,
        len: text.len(),
    };
    TextPass {
        node: &mut root,
        src,
    }
    .deserialize(serde_norway::Deserializer::from_str(text))
    .map_err(|e| e.to_string())?;
    check_tabs(text)?;
    Loader { text }.construct(&root)
}

/// PyYAML's scanner skips only spaces between tokens and ends plain scalars at a tab, so it
/// refuses a tab anywhere but inside a quoted scalar, the content of a block scalar, or a
/// comment; libyaml is more lenient (`key:<TAB>value`, trailing tabs). Refuse what PyYAML
/// refuses. The scan is approximate in the lenient direction only: where it cannot tell,
/// the tab is let through.
fn check_tabs(text: &str) -> Result<(), String> {
    if !text.contains('\t') {
        return Ok(());
    }
    let mut quote: Option<u8> = None;
    // Inside block scalar content: the column its lines must be indented beyond.
    let mut block_parent: Option<usize> = None;
    for (lineno, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let b = line.as_bytes();
        let indent = b.iter().take_while(|c| **c == b' ').count();
        if quote.is_none() {
            if let Some(parent) = block_parent {
                if indent == b.len() || indent > parent {
                    continue;
                }
                block_parent = None;
            }
        }
        let mut code_end = b.len();
        let mut i = 0;
        while i < b.len() {
            let ch = b[i];
            if let Some(q) = quote {
                if q == b'"' && ch == b'\\' {
                    i += 2;
                    continue;
                }
                if ch == q {
                    if q == b'\'' && b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    quote = None;
                }
                i += 1;
                continue;
            }
            match ch {
                b'\t' => {
                    return Err(format!(
                        "found character '\\t' that cannot start any token at line {}, column {}",
                        lineno + 1,
                        i + 1
                    ))
                }
                b'#' if i == 0 || b[i - 1] == b' ' => {
                    code_end = i;
                    break;
                }
                b'\'' | b'"' if i == 0 || matches!(b[i - 1], b' ' | b'[' | b'{' | b',' | b':') => {
                    quote = Some(ch)
                }
                _ => {}
            }
            i += 1;
        }
        if quote.is_none() {
            block_parent = block_header_parent(&line[..code_end], indent);
        }
    }
    Ok(())
}

/// When `code` (a line without its comment) ends with a block scalar header (`|`, `>-`, ...),
/// the column its content must be indented beyond.
fn block_header_parent(code: &str, indent: usize) -> Option<usize> {
    let last = code.split_whitespace().last()?;
    let mut chars = last.chars();
    if !matches!(chars.next(), Some('|') | Some('>'))
        || !chars.all(|c| c.is_ascii_digit() || c == '+' || c == '-')
    {
        return None;
    }
    let b = code.as_bytes();
    let mut col = indent;
    let mut seq_col = None;
    while b.get(col) == Some(&b'-') && matches!(b.get(col + 1), Some(b' ')) {
        seq_col = Some(col);
        col += 1;
        while b.get(col) == Some(&b' ') {
            col += 1;
        }
    }
    if code[col..].contains(": ") {
        Some(col)
    } else if let Some(c) = seq_col {
        Some(c)
    } else {
        Some(indent.saturating_sub(1))
    }
}

struct Loader<'t> {
    text: &'t str,
}

#[derive(Debug, PartialEq, Eq)]
enum Style {
    Plain,
    Quoted,
    /// Block scalar, or a scalar with escapes or folded lines: always a string.
    Other,
}

enum Implicit {
    Bool,
    Float,
    Int,
    Merge,
    Null,
    Timestamp,
    Value,
    Str,
}

const YAML_TAG_PREFIX: &str = "tag:yaml.org,2002:";

impl Loader<'_> {
    fn construct(&self, node: &Node) -> Result<Py, String> {
        match node {
            Node::Void => Ok(Py::Null),
            Node::Scalar(s) => self.scalar(s, false),
            Node::Seq(items) => Ok(Py::Seq(
                items
                    .iter()
                    .map(|n| self.construct(n))
                    .collect::<Result<_, _>>()?,
            )),
            Node::Map(pairs) => self.mapping(pairs),
        }
    }

    /// Style of a scalar and where its node starts (for finding a tag in front of it).
    fn style(&self, s: &ScalarNode) -> (Style, Option<usize>) {
        let Some(o) = s.offset else {
            return match s.typed {
                Typed::Str => (Style::Other, None),
                _ => (Style::Plain, None),
            };
        };
        let after = self.text.as_bytes().get(o + s.raw.len()).copied();
        if !s.raw.is_empty() && matches!(after, Some(b'"') | Some(b'\'')) {
            return (Style::Quoted, o.checked_sub(1));
        }
        if s.raw.is_empty() && matches!(s.typed, Typed::Str) {
            // An empty plain scalar is null for serde too; an empty string came from quotes.
            return (Style::Quoted, None);
        }
        (Style::Plain, Some(o))
    }

    /// The explicit tag written in front of the node starting at `start`, if any (only tags of
    /// the `!!` family or verbatim `!<...>` tags; local tags were refused by the first pass).
    /// Properties of a block mapping key sit on the key's line, so for keys the search stops at
    /// the line start (a tag on the line above belongs to the mapping).
    /// `adjacent`: the node is an empty scalar, whose position is the end of its properties.
    fn explicit_tag(&self, start: usize, is_key: bool, adjacent: bool) -> Option<String> {
        let b = self.text.as_bytes();
        let mut end = start;
        let mut first = true;
        loop {
            let mut i = end;
            while i > 0 && matches!(b[i - 1], b' ' | b'\t' | b'\r' | b'\n') {
                if is_key && matches!(b[i - 1], b'\r' | b'\n') {
                    return None;
                }
                i -= 1;
            }
            if i == end && !(first && adjacent) {
                return None;
            }
            first = false;
            let mut j = i;
            while j > 0 && !matches!(b[j - 1], b' ' | b'\t' | b'\r' | b'\n' | b'[' | b'{' | b',') {
                j -= 1;
            }
            let token = &self.text[j..i];
            if token.starts_with('!') {
                if self.in_comment(j) {
                    return None;
                }
                if let Some(suffix) = token.strip_prefix("!!") {
                    return Some(format!("{YAML_TAG_PREFIX}{suffix}"));
                }
                if let Some(verbatim) = token.strip_prefix("!<").and_then(|t| t.strip_suffix('>')) {
                    return Some(verbatim.to_string());
                }
                return None;
            } else if token.starts_with('&') {
                end = j;
            } else {
                return None;
            }
        }
    }

    /// Whether byte `pos` is inside a `#` comment on its line (approximate: quotes not tracked).
    fn in_comment(&self, pos: usize) -> bool {
        let line_start = self.text[..pos].rfind('\n').map_or(0, |p| p + 1);
        let line = &self.text.as_bytes()[line_start..pos];
        line.iter()
            .enumerate()
            .any(|(i, c)| *c == b'#' && (i == 0 || matches!(line[i - 1], b' ' | b'\t')))
    }

    fn scalar(&self, s: &ScalarNode, is_key: bool) -> Result<Py, String> {
        let (style, start) = self.style(s);
        let tag = match s.offset {
            Some(o) if s.raw.is_empty() => self.explicit_tag(o, is_key, true),
            _ => start.and_then(|st| self.explicit_tag(st, is_key, false)),
        };
        if let Some(tag) = tag {
            return self.tagged(&tag, s);
        }
        match style {
            Style::Plain => self.implicit(s),
            Style::Quoted | Style::Other => Ok(Py::Str(s.raw.clone())),
        }
    }

    fn from_typed(s: &ScalarNode) -> Option<Py> {
        Some(match s.typed {
            Typed::Null => Py::Null,
            Typed::Bool(b) => Py::Bool(b),
            Typed::Int(i) => Py::Int(i),
            Typed::BigInt => Py::BigInt(s.raw.clone()),
            Typed::Float(f) => Py::Float(f),
            Typed::Str => return None,
        })
    }

    fn tagged(&self, tag: &str, s: &ScalarNode) -> Result<Py, String> {
        let no_constructor = || format!("could not determine a constructor for the tag '{tag}'");
        let Some(name) = tag.strip_prefix(YAML_TAG_PREFIX) else {
            return Err(no_constructor());
        };
        match name {
            "str" => Ok(Py::Str(s.raw.clone())),
            "null" | "bool" | "int" | "float" => Self::from_typed(s).ok_or_else(no_constructor),
            "binary" => Ok(Py::Opaque {
                kind: OpaqueKind::Bytes,
                text: s.raw.clone(),
                truthy: s
                    .raw
                    .bytes()
                    .any(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/'),
            }),
            "timestamp" => timestamp(&s.raw),
            "map" | "seq" | "set" | "omap" | "pairs" => Err(format!(
                "expected a collection node for the tag '{tag}', but found a scalar"
            )),
            _ => Err(no_constructor()),
        }
    }

    fn implicit(&self, s: &ScalarNode) -> Result<Py, String> {
        let v = s.raw.as_str();
        match resolve_plain(v) {
            Implicit::Null => Ok(Py::Null),
            Implicit::Bool => Ok(Py::Bool(matches!(
                v,
                "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON"
            ))),
            Implicit::Int => construct_int(v),
            Implicit::Float => construct_float(v),
            Implicit::Timestamp => timestamp(v),
            Implicit::Str => Ok(Py::Str(v.to_string())),
            Implicit::Merge => Err(
                "could not determine a constructor for the tag 'tag:yaml.org,2002:merge'".into(),
            ),
            Implicit::Value => Err(
                "could not determine a constructor for the tag 'tag:yaml.org,2002:value'".into(),
            ),
        }
    }

    /// Plain, untagged `<<` as a mapping key.
    fn is_merge_key(&self, node: &Node) -> bool {
        match node {
            Node::Scalar(s) if s.raw == "<<" => {
                let (style, start) = self.style(s);
                style == Style::Plain
                    && start
                        .and_then(|st| self.explicit_tag(st, true, false))
                        .is_none()
            }
            _ => false,
        }
    }

    /// PyYAML's `flatten_mapping`: merged pairs first (deduplicated by key node identity), then
    /// the mapping's own pairs.
    fn flatten<'n>(
        &self,
        pairs: &'n [(Node, Node)],
        out: &mut Vec<(&'n Node, &'n Node)>,
    ) -> Result<(), String> {
        let mut merged: Vec<(&Node, &Node)> = Vec::new();
        let mut seen: Vec<KeyIdentity> = Vec::new();
        let mut own: Vec<(&Node, &Node)> = Vec::new();
        for (k, v) in pairs {
            if !self.is_merge_key(k) {
                own.push((k, v));
                continue;
            }
            let sources: Vec<&[(Node, Node)]> = match v {
                Node::Map(sub) => vec![sub.as_slice()],
                Node::Seq(items) => items
                    .iter()
                    .map(|item| match item {
                        Node::Map(sub) => Ok(sub.as_slice()),
                        _ => Err("while constructing a mapping: expected a mapping for merging".to_string()),
                    })
                    .collect::<Result<_, _>>()?,
                _ => {
                    return Err(
                        "while constructing a mapping: expected a mapping or list of mappings for merging".into()
                    )
                }
            };
            for sub in sources {
                let mut flat = Vec::new();
                self.flatten(sub, &mut flat)?;
                for (sk, sv) in flat {
                    let id = KeyIdentity::of(sk);
                    if id.as_ref().is_some_and(|id| seen.contains(id)) {
                        continue;
                    }
                    if let Some(id) = id {
                        seen.push(id);
                    }
                    merged.push((sk, sv));
                }
            }
        }
        out.extend(merged);
        out.extend(own);
        Ok(())
    }

    fn mapping(&self, pairs: &[(Node, Node)]) -> Result<Py, String> {
        let mut flat = Vec::new();
        self.flatten(pairs, &mut flat)?;
        let mut dict = Dict::default();
        let mut index: HashMap<HashKey, usize> = HashMap::new();
        for (k, v) in flat {
            let key = match k {
                Node::Scalar(s) => {
                    if s.raw == "=" && self.is_plain_untagged(s) {
                        // PyYAML's `value` key: a plain `=` key is the string "=".
                        Py::Str("=".into())
                    } else {
                        self.scalar(s, true)?
                    }
                }
                other => self.construct(other)?,
            };
            let Some(hk) = key.hash_key() else {
                return Err("while constructing a mapping: found unhashable key".into());
            };
            let value = self.construct(v)?;
            match index.get(&hk) {
                Some(&i) => dict.entries[i].1 = value,
                None => {
                    index.insert(hk, dict.entries.len());
                    dict.entries.push((key, value));
                }
            }
        }
        Ok(Py::Map(dict))
    }

    fn is_plain_untagged(&self, s: &ScalarNode) -> bool {
        let (style, start) = self.style(s);
        style == Style::Plain
            && start
                .and_then(|st| self.explicit_tag(st, true, false))
                .is_none()
    }
}

/// PyYAML 6 deduplicates merged keys by the identity of the key's text object: the same node
/// (reached through an alias) or a string CPython interns (empty or one Latin-1 character).
#[derive(Debug, PartialEq, Eq)]
enum KeyIdentity {
    Node(usize),
    Interned(String),
}

impl KeyIdentity {
    fn of(node: &Node) -> Option<KeyIdentity> {
        match node {
            Node::Scalar(s) => {
                let mut chars = s.raw.chars();
                match (chars.next(), chars.next()) {
                    (None, _) => return Some(KeyIdentity::Interned(String::new())),
                    (Some(c), None) if (c as u32) < 256 => {
                        return Some(KeyIdentity::Interned(s.raw.clone()))
                    }
                    _ => {}
                }
                s.offset.map(KeyIdentity::Node)
            }
            _ => None,
        }
    }
}

struct Resolvers {
    bool_: Regex,
    float: Regex,
    int: Regex,
    null: Regex,
    timestamp: Regex,
    timestamp_parts: Regex,
}

fn resolvers() -> &'static Resolvers {
    static R: OnceLock<Resolvers> = OnceLock::new();
    R.get_or_init(|| Resolvers {
        // PyYAML's implicit resolvers (yaml/resolver.py), verbatim.
        bool_: Regex::new(r"^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$")
            .unwrap(),
        float: Regex::new(
            r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        )
        .unwrap(),
        int: Regex::new(
            r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$",
        )
        .unwrap(),
        null: Regex::new(r"^(?:~|null|Null|NULL|)$").unwrap(),
        timestamp: Regex::new(
            r"^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[ \t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$",
        )
        .unwrap(),
        // SafeConstructor.timestamp_regexp.
        timestamp_parts: Regex::new(
            r"^(?P<year>[0-9][0-9][0-9][0-9])-(?P<month>[0-9][0-9]?)-(?P<day>[0-9][0-9]?)(?:(?:[Tt]|[ \t]+)(?P<hour>[0-9][0-9]?):(?P<minute>[0-9][0-9]):(?P<second>[0-9][0-9])(?:\.(?P<fraction>[0-9]*))?(?:[ \t]*(?P<tz>Z|(?P<tz_sign>[-+])(?P<tz_hour>[0-9][0-9]?)(?::(?P<tz_minute>[0-9][0-9]))?))?)?$",
        )
        .unwrap(),
    })
}

/// PyYAML's implicit tag for a plain scalar (resolvers tried by first character, in
/// registration order: bool, float, int, merge, null, timestamp, value).
fn resolve_plain(v: &str) -> Implicit {
    let r = resolvers();
    let Some(first) = v.chars().next() else {
        return Implicit::Null;
    };
    match first {
        'y' | 'Y' | 'n' | 'N' | 't' | 'T' | 'f' | 'F' | 'o' | 'O' => {
            if r.bool_.is_match(v) {
                Implicit::Bool
            } else if matches!(first, 'n' | 'N') && r.null.is_match(v) {
                Implicit::Null
            } else {
                Implicit::Str
            }
        }
        '-' | '+' | '.' | '0'..='9' => {
            if r.float.is_match(v) {
                Implicit::Float
            } else if first != '.' && r.int.is_match(v) {
                Implicit::Int
            } else if first.is_ascii_digit() && r.timestamp.is_match(v) {
                Implicit::Timestamp
            } else {
                Implicit::Str
            }
        }
        '<' if v == "<<" => Implicit::Merge,
        '~' if v == "~" => Implicit::Null,
        '=' if v == "=" => Implicit::Value,
        _ => Implicit::Str,
    }
}

/// SafeConstructor.construct_yaml_int.
fn construct_int(v: &str) -> Result<Py, String> {
    let s: String = v.chars().filter(|c| *c != '_').collect();
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s.as_str()),
    };
    let parsed: Result<i128, String> = if body == "0" {
        Ok(0)
    } else if let Some(bits) = body.strip_prefix("0b") {
        radix(bits, 2)
    } else if let Some(hex) = body.strip_prefix("0x") {
        radix(hex, 16)
    } else if body.starts_with('0') {
        radix(body, 8)
    } else if body.contains(':') {
        let mut value: i128 = 0;
        for part in body.split(':') {
            let d = radix(part, 10)?;
            value = value
                .checked_mul(60)
                .and_then(|x| x.checked_add(d))
                .ok_or_else(|| "overflow".to_string())?;
        }
        Ok(value)
    } else {
        radix(body, 10)
    };
    match parsed {
        Ok(n) => Ok(Py::Int(if neg { -n } else { n })),
        Err(e) if e == "overflow" => Ok(Py::BigInt(v.to_string())),
        Err(e) => Err(e),
    }
}

fn radix(digits: &str, base: u32) -> Result<i128, String> {
    if digits.is_empty() {
        return Err(format!("invalid literal for int() with base {base}: ''"));
    }
    i128::from_str_radix(digits, base).map_err(|e| match e.kind() {
        std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
            "overflow".to_string()
        }
        _ => format!("invalid literal for int() with base {base}: {digits:?}"),
    })
}

/// SafeConstructor.construct_yaml_float.
fn construct_float(v: &str) -> Result<Py, String> {
    let s: String = v
        .chars()
        .filter(|c| *c != '_')
        .collect::<String>()
        .to_lowercase();
    let (sign, body) = match s.as_bytes().first() {
        Some(b'-') => (-1.0, &s[1..]),
        Some(b'+') => (1.0, &s[1..]),
        _ => (1.0, s.as_str()),
    };
    let parse = |t: &str| {
        t.parse::<f64>()
            .map_err(|_| format!("could not convert string to float: {t:?}"))
    };
    let value = if body == ".inf" {
        f64::INFINITY
    } else if body == ".nan" {
        return Ok(Py::Float(f64::NAN));
    } else if body.contains(':') {
        let mut value = 0.0;
        for part in body.split(':') {
            value = value * 60.0 + parse(part)?;
        }
        value
    } else {
        parse(body)?
    };
    Ok(Py::Float(sign * value))
}

/// SafeConstructor.construct_yaml_timestamp: validates like `datetime.date`/`datetime.datetime`.
fn timestamp(v: &str) -> Result<Py, String> {
    let caps = resolvers()
        .timestamp_parts
        .captures(v)
        .ok_or_else(|| format!("{v:?} is not a timestamp"))?;
    let num = |name: &str| {
        caps.name(name)
            .map(|m| m.as_str().parse::<u32>().unwrap_or(u32::MAX))
    };
    let (year, month, day) = (
        num("year").unwrap_or(0),
        num("month").unwrap_or(0),
        num("day").unwrap_or(0),
    );
    if !(1..=9999).contains(&year) {
        return Err(format!("year {year} is out of range"));
    }
    if !(1..=12).contains(&month) {
        return Err("month must be in 1..12".into());
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if !(1..=days).contains(&day) {
        return Err("day is out of range for month".into());
    }
    let Some(hour) = num("hour") else {
        return Ok(Py::Opaque {
            kind: OpaqueKind::Date,
            text: v.to_string(),
            truthy: true,
        });
    };
    let (minute, second) = (num("minute").unwrap_or(0), num("second").unwrap_or(0));
    if hour > 23 {
        return Err("hour must be in 0..23".into());
    }
    if minute > 59 {
        return Err("minute must be in 0..59".into());
    }
    if second > 59 {
        return Err("second must be in 0..59".into());
    }
    if caps.name("tz_sign").is_some() {
        let minutes = num("tz_hour").unwrap_or(0) * 60 + num("tz_minute").unwrap_or(0);
        if minutes >= 24 * 60 {
            return Err("offset must be a timedelta strictly between -timedelta(hours=24) and timedelta(hours=24)".into());
        }
    }
    Ok(Py::Opaque {
        kind: OpaqueKind::DateTime,
        text: v.to_string(),
        truthy: true,
    })
}

#[cfg(test)]
mod tests {
    use super::super::parse_workflow_yaml;
    use super::super::testutil::{code, defaults};
    use serde_json::json;

    #[test]
    fn flow_yaml_yaml11_scalars() {
        let d = defaults(
            "flow:\n  graph: a\n  defaults:\n    a: yes\n    b: 'yes'\n    c: Off\n    d: y\n    e: 0755\n    f: 0o17\n    g: 1e3\n    h: 1.0e+3\n    i: 1:30\n    j: 0x_1F\n    k: -.5\n    l: .5\n    m: !!str 10\n    n: ~\n    o: 08\n    p: 1_000\n",
        );
        assert_eq!(
            d,
            json!({"a": true, "b": "yes", "c": false, "d": "y", "e": 493, "f": "0o17", "g": "1e3",
                   "h": 1000.0, "i": 90, "j": 31, "k": "-.5", "l": 0.5, "m": "10", "n": null,
                   "o": "08", "p": 1000})
        );
    }

    #[test]
    fn flow_yaml_keys_and_merges() {
        let d =
            defaults("flow:\n  graph: a\n  defaults: {1: a, 1.5: b, true: c, null: d, 1e3: e}\n");
        assert_eq!(d, json!({"1": "c", "1.5": "b", "null": "d", "1e3": "e"}));
        let d = defaults(
            "flow:\n  graph: a\n  defaults:\n    <<: [{x: 1, yy: 1}, {x: 2, yy: 2, z: 2}]\n    z: 3\n",
        );
        assert_eq!(d, json!({"x": 1, "yy": 2, "z": 3}));
        assert_eq!(
            code("flow: {graph: a, defaults: {? [a] : 1}}\n"),
            "invalid_yaml"
        );
        assert_eq!(
            code("flow: {graph: a, defaults: {x: !foo 1}}\n"),
            "invalid_yaml"
        );
        assert_eq!(
            code("flow: {graph: a, defaults: {x: !!python/tuple 1}}\n"),
            "invalid_yaml"
        );
        assert_eq!(code("flow: {graph: a, defaults: {x: =}}\n"), "invalid_yaml");
        assert_eq!(
            code("flow: {graph: a, defaults: {x: 2024-02-30}}\n"),
            "invalid_yaml"
        );
        assert_eq!(
            code("flow: {graph: a}\n---\nflow: {graph: b}\n"),
            "invalid_yaml"
        );
    }

    #[test]
    fn flow_yaml_alias_bomb_refused() {
        let mut y = String::from(
            "flow:\n  graph: a\n  defaults:\n    a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
        );
        for i in 1..9 {
            let p = i - 1;
            y.push_str(&format!(
                "    a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert_eq!(code(&y), "invalid_yaml");
        // Modest alias use is fine.
        let d = defaults("flow:\n  graph: a\n  defaults:\n    a: &a [1, 2]\n    b: [*a, *a]\n");
        assert_eq!(d, json!({"a": [1, 2], "b": [[1, 2], [1, 2]]}));
    }

    #[test]
    fn flow_yaml_large_file() {
        // A file at the gateway's default size limit (256 KiB) parses in reasonable time.
        let mut y = String::from("flow:\n  graph: a\n  defaults:\n");
        let mut i = 0;
        while y.len() < 256 * 1024 - 64 {
            y.push_str(&format!(
                "    key_{i}: [yes, 0755, 1.5, 'text', {{k: v}}]\n"
            ));
            i += 1;
        }
        let start = std::time::Instant::now();
        let w = parse_workflow_yaml(y.as_bytes(), true).unwrap();
        assert_eq!(w.defaults.len(), i);
        assert_eq!(
            w.defaults["key_0"],
            json!([true, 493, 1.5, "text", {"k": "v"}])
        );
        let took = start.elapsed();
        assert!(took < std::time::Duration::from_secs(20), "took {took:?}");
    }
}
