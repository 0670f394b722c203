//! A surgical editor for block-style YAML text: it changes one value and leaves every other
//! byte — comments, blank lines, key order, quoting — as it was.
//!
//! It understands what splicegate's configuration files are made of: nested block mappings
//! (`key:` with an indented block), scalar values on the key's line, flow sequences
//! (`[a, "b"]`) and block sequences of scalars (`- a`). Anything else (anchors, multi-line
//! scalars, mappings inside sequences) is left alone and reported as [`Value::Block`]; the
//! caller always re-validates the whole result with [`crate::config::Config::from_yaml`] before
//! writing it, so a construct this editor misreads can never reach the disk as a broken file.

/// A value found at a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A scalar, unquoted (`null` and `~` included as text).
    Scalar(String),
    /// A sequence of scalars, each unquoted.
    Seq(Vec<String>),
    /// A nested mapping: the names of its keys.
    Map(Vec<String>),
    /// Something else; the raw text.
    Block(String),
}

/// The document, one entry per line (without the line break).
#[derive(Debug, Clone)]
pub struct Doc {
    lines: Vec<String>,
}

/// Where a key sits.
#[derive(Debug, Clone, Copy)]
struct Entry {
    line: usize,
    indent: usize,
    /// Byte range of the value on the key's line (comment excluded), if any.
    inline: Option<(usize, usize)>,
    /// One past the last content line of the key's block (== `line + 1` when it has none).
    end: usize,
}

impl Doc {
    pub fn parse(text: &str) -> Doc {
        Doc {
            lines: text.lines().map(str::to_owned).collect(),
        }
    }

    pub fn render(&self) -> String {
        let mut s = self.lines.join("\n");
        s.push('\n');
        s
    }

    /// The value at `path` (`["limits", "idle_timeout"]`), if the key is present.
    pub fn get(&self, path: &[&str]) -> Option<Value> {
        let e = self.find(path)?;
        if let Some((s, t)) = e.inline {
            let text = &self.lines[e.line][s..t];
            return Some(match text.strip_prefix('[') {
                Some(rest) if text.ends_with(']') => Value::Seq(
                    split_flow(&rest[..rest.len() - 1])
                        .iter()
                        .map(|i| unquote(i))
                        .collect(),
                ),
                _ if text == "{}" => Value::Map(Vec::new()),
                _ => Value::Scalar(unquote(text)),
            });
        }
        let items = self.block_items(&e);
        if !items.is_empty() {
            return Some(Value::Seq(
                items
                    .iter()
                    .map(|&(l, s, t)| unquote(&self.lines[l][s..t]))
                    .collect(),
            ));
        }
        let children = self.children(&e);
        if !children.is_empty() {
            return Some(Value::Map(children.into_iter().map(|(_, k)| k).collect()));
        }
        if e.end == e.line + 1 {
            return Some(Value::Scalar("null".into()));
        }
        Some(Value::Block(self.lines[e.line + 1..e.end].join("\n")))
    }

    /// Set `path` to `yaml` (a YAML scalar or flow collection, already quoted as needed). A
    /// missing key is added at the end of its parent's block (parents are created as needed); a
    /// key with a block value has the block replaced. A trailing comment on the key's line stays.
    pub fn set(&mut self, path: &[&str], yaml: &str) {
        if let Some(e) = self.find(path) {
            match e.inline {
                Some((s, t)) => self.lines[e.line].replace_range(s..t, yaml),
                None => {
                    self.lines.drain(e.line + 1..e.end);
                    let line = &mut self.lines[e.line];
                    let colon = key_colon(line, e.indent).unwrap_or(line.len());
                    let comment = line[colon + 1..].trim().to_owned();
                    line.truncate(colon + 1);
                    line.push(' ');
                    line.push_str(yaml);
                    if !comment.is_empty() {
                        line.push_str("  ");
                        line.push_str(&comment);
                    }
                }
            }
            return;
        }
        let Some((last, parents)) = path.split_last() else {
            return;
        };
        if parents.is_empty() {
            if self.lines.last().is_some_and(|l| !l.trim().is_empty()) {
                self.lines.push(String::new());
            }
            self.lines.push(format!("{}: {yaml}", key_text(last)));
            return;
        }
        let parent = match self.find(parents) {
            Some(p) => p,
            None => {
                self.set(parents, "{}");
                match self.find(parents) {
                    Some(p) => p,
                    None => return,
                }
            }
        };
        // A parent written inline (`relay_proxy: null`, `hosts: {}`) becomes a block.
        if let Some((s, t)) = parent.inline {
            let line = &mut self.lines[parent.line];
            let cut = line[t..].to_owned();
            line.replace_range(s..line.len(), "");
            let trimmed = line.trim_end().len();
            line.truncate(trimmed);
            let comment = cut.trim();
            if !comment.is_empty() {
                line.push_str("  ");
                line.push_str(comment);
            }
        }
        let parent = match self.find(parents) {
            Some(p) => p,
            None => return,
        };
        let indent = self
            .children(&parent)
            .first()
            .map_or(parent.indent + 2, |&(l, _)| indent_of(&self.lines[l]));
        self.lines.insert(
            parent.end,
            format!("{}{}: {yaml}", " ".repeat(indent), key_text(last)),
        );
    }

    /// Remove `path` and its block. False if it was not there.
    pub fn remove(&mut self, path: &[&str]) -> bool {
        match self.find(path) {
            Some(e) => {
                self.lines.drain(e.line..e.end);
                true
            }
            None => false,
        }
    }

    /// Append `item` (YAML text) to the sequence at `path`, keeping its style (block or flow);
    /// a missing or empty key becomes `[item]`.
    pub fn seq_push(&mut self, path: &[&str], item: &str) {
        let Some(e) = self.find(path) else {
            self.set(path, &format!("[{item}]"));
            return;
        };
        if let Some((s, t)) = e.inline {
            let text = self.lines[e.line][s..t].to_owned();
            let mut items = match text.strip_prefix('[') {
                Some(rest) if text.ends_with(']') => split_flow(&rest[..rest.len() - 1]),
                _ if is_null(&text) => Vec::new(),
                // Not a sequence: let validation say so.
                _ => vec![text],
            };
            items.push(item.to_owned());
            let flow = format!("[{}]", items.join(", "));
            self.lines[e.line].replace_range(s..t, &flow);
            return;
        }
        let items = self.block_items(&e);
        match items.last() {
            Some(&(l, _, _)) => {
                let line = &self.lines[l];
                let dash = line.len() - line.trim_start().len();
                let new = format!("{}- {item}", " ".repeat(dash));
                self.lines.insert(l + 1, new);
            }
            None => self.set(path, &format!("[{item}]")),
        }
    }

    /// Remove the items of the sequence at `path` whose unquoted value satisfies `pred`. Returns
    /// how many were removed.
    pub fn seq_remove(&mut self, path: &[&str], pred: impl Fn(&str) -> bool) -> usize {
        let Some(e) = self.find(path) else {
            return 0;
        };
        if let Some((s, t)) = e.inline {
            let text = self.lines[e.line][s..t].to_owned();
            let Some(rest) = text.strip_prefix('[').filter(|_| text.ends_with(']')) else {
                return 0;
            };
            let items = split_flow(&rest[..rest.len() - 1]);
            let kept: Vec<String> = items
                .iter()
                .filter(|i| !pred(&unquote(i)))
                .cloned()
                .collect();
            let removed = items.len() - kept.len();
            if removed > 0 {
                let flow = format!("[{}]", kept.join(", "));
                self.lines[e.line].replace_range(s..t, &flow);
            }
            return removed;
        }
        let items = self.block_items(&e);
        let doomed: Vec<usize> = items
            .iter()
            .filter(|&&(l, s, t)| pred(&unquote(&self.lines[l][s..t])))
            .map(|&(l, _, _)| l)
            .collect();
        let all = doomed.len() == items.len();
        for l in doomed.iter().rev() {
            self.lines.remove(*l);
        }
        if all && !doomed.is_empty() {
            // `key:` with nothing under it would read as null.
            self.set(path, "[]");
        }
        doomed.len()
    }

    /// Find the key at `path`.
    fn find(&self, path: &[&str]) -> Option<Entry> {
        let mut range = (0, self.lines.len());
        let mut indent: Option<usize> = None;
        let mut found = None;
        for part in path {
            let e = self.find_in(range, indent, part)?;
            range = (e.line + 1, e.end);
            indent = Some(e.indent);
            found = Some(e);
        }
        found
    }

    /// A key named `name` directly under a parent at `parent_indent` within `range`.
    fn find_in(
        &self,
        range: (usize, usize),
        parent_indent: Option<usize>,
        name: &str,
    ) -> Option<Entry> {
        let mut child_indent = None;
        for i in range.0..range.1 {
            let line = &self.lines[i];
            if is_blank(line) {
                continue;
            }
            let ind = indent_of(line);
            if parent_indent.is_some_and(|p| ind <= p) {
                break;
            }
            let ci = *child_indent.get_or_insert(ind);
            if ind != ci {
                continue;
            }
            let Some((key, colon)) = parse_key(line, ind) else {
                continue;
            };
            if key == name {
                return Some(self.entry(i, ind, colon));
            }
        }
        None
    }

    fn entry(&self, line: usize, indent: usize, colon: usize) -> Entry {
        let text = &self.lines[line];
        let after = colon + 1;
        let vs = after + (text.len() - after - text[after..].trim_start().len());
        let ve = comment_start(text, vs).unwrap_or(text.len());
        let ve = vs + text[vs..ve].trim_end().len();
        let inline = (ve > vs).then_some((vs, ve));
        let mut end = line + 1;
        for (i, l) in self.lines.iter().enumerate().skip(line + 1) {
            if is_blank(l) {
                continue;
            }
            let ind = indent_of(l);
            let seq_at_same_indent =
                inline.is_none() && ind == indent && l.trim_start().starts_with("- ");
            if ind > indent || seq_at_same_indent || (l.trim_start() == "-" && ind == indent) {
                end = i + 1;
            } else {
                break;
            }
        }
        Entry {
            line,
            indent,
            inline,
            end,
        }
    }

    /// Block sequence items of `e`: (line, value start, value end).
    fn block_items(&self, e: &Entry) -> Vec<(usize, usize, usize)> {
        let mut items = Vec::new();
        let mut dash_indent = None;
        for i in e.line + 1..e.end {
            let line = &self.lines[i];
            if is_blank(line) {
                continue;
            }
            let ind = indent_of(line);
            let rest = &line[ind..];
            if let Some(v) = rest
                .strip_prefix("- ")
                .or(if rest == "-" { Some("") } else { None })
            {
                let d = *dash_indent.get_or_insert(ind);
                if d != ind {
                    continue;
                }
                let vs = line.len() - v.trim_start().len();
                let ve = comment_start(line, vs).unwrap_or(line.len());
                let ve = vs + line[vs..ve].trim_end().len();
                items.push((i, vs, ve.max(vs)));
            }
        }
        items
    }

    /// Keys directly under `e`: (line, name).
    fn children(&self, e: &Entry) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        let mut child_indent = None;
        for i in e.line + 1..e.end {
            let line = &self.lines[i];
            if is_blank(line) {
                continue;
            }
            let ind = indent_of(line);
            let ci = *child_indent.get_or_insert(ind);
            if ind != ci {
                continue;
            }
            if let Some((k, _)) = parse_key(line, ind) {
                out.push((i, k));
            }
        }
        out
    }
}

/// Blank or comment-only.
fn is_blank(line: &str) -> bool {
    let t = line.trim_start();
    t.is_empty() || t.starts_with('#')
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_null(s: &str) -> bool {
    matches!(s, "null" | "~" | "Null" | "NULL")
}

/// `key:` at `indent`: the unquoted key and the byte index of its colon.
fn parse_key(line: &str, indent: usize) -> Option<(String, usize)> {
    let rest = &line[indent..];
    if rest.starts_with('-') && (rest.len() == 1 || rest[1..].starts_with(' ')) {
        return None;
    }
    let colon = key_colon(line, indent)?;
    Some((unquote(line[indent..colon].trim()), colon))
}

/// The index of the colon that ends the key starting at `indent`.
fn key_colon(line: &str, indent: usize) -> Option<usize> {
    let b = line.as_bytes();
    let mut i = indent;
    if let Some(&q @ (b'"' | b'\'')) = b.get(i) {
        i += 1;
        while i < b.len() && b[i] != q {
            if q == b'"' && b[i] == b'\\' {
                i += 1;
            }
            i += 1;
        }
        i += 1;
    }
    while i < b.len() {
        if b[i] == b'#' && (i == 0 || b[i - 1] == b' ') {
            return None;
        }
        if b[i] == b':' && (i + 1 == b.len() || b[i + 1] == b' ') {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Where a ` #` comment starts at or after `from`, outside quotes.
fn comment_start(line: &str, from: usize) -> Option<usize> {
    let b = line.as_bytes();
    let mut quote = None;
    let mut i = from;
    while i < b.len() {
        match (quote, b[i]) {
            (None, b'"' | b'\'') => quote = Some(b[i]),
            (Some(b'"'), b'\\') => i += 1,
            (Some(q), c) if c == q => quote = None,
            (None, b'#') if i == from || b[i - 1] == b' ' || b[i - 1] == b'\t' => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Split the inside of a flow sequence on commas outside quotes; items keep their quoting.
fn split_flow(inner: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '"' | '\'') => {
                quote = Some(c);
                cur.push(c);
            }
            (Some('"'), '\\') => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (Some(q), c) if c == q => {
                quote = None;
                cur.push(c);
            }
            (None, ',') => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The text of a YAML scalar without its quotes (double-quoted escapes `\"` and `\\` undone).
pub fn unquote(s: &str) -> String {
    let s = s.trim();
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        let mut out = String::new();
        let mut chars = s[1..s.len() - 1].chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(o) => out.push(o),
                    None => {}
                }
            } else {
                out.push(c);
            }
        }
        return out;
    }
    if s.len() >= 2 && s.starts_with('\'') && s.ends_with('\'') {
        return s[1..s.len() - 1].replace("''", "'");
    }
    s.to_owned()
}

/// A double-quoted YAML scalar.
pub fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A key as written: bare when it is a plain name, quoted otherwise.
fn key_text(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        k.to_owned()
    } else {
        quote(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# top comment\n\
listen:\n  - \"0.0.0.0:8080\"   # v4\n  - \"[::]:8080\"\n\n\
workers: 0  # per CPU\n\
allowed_ports: [443, 8443]\n\
# hosts allowed\n\
allowed_hosts:\n- a.example\n- \"*.b.example\" # wildcard\n\n\
limits:\n  # idle\n  idle_timeout: 15m\n  drain_timeout: 30s\n\
tls:\n  allowed_client_certificates: []\n\
relay_proxy: null\n";

    #[test]
    fn reads_scalars_sequences_and_maps() {
        let d = Doc::parse(DOC);
        assert_eq!(d.get(&["workers"]), Some(Value::Scalar("0".into())));
        assert_eq!(
            d.get(&["listen"]),
            Some(Value::Seq(vec!["0.0.0.0:8080".into(), "[::]:8080".into()]))
        );
        assert_eq!(
            d.get(&["allowed_ports"]),
            Some(Value::Seq(vec!["443".into(), "8443".into()]))
        );
        assert_eq!(
            d.get(&["allowed_hosts"]),
            Some(Value::Seq(vec!["a.example".into(), "*.b.example".into()]))
        );
        assert_eq!(
            d.get(&["limits", "idle_timeout"]),
            Some(Value::Scalar("15m".into()))
        );
        assert_eq!(
            d.get(&["limits"]),
            Some(Value::Map(vec![
                "idle_timeout".into(),
                "drain_timeout".into()
            ]))
        );
        assert_eq!(d.get(&["limits", "nope"]), None);
        assert_eq!(d.get(&["idle_timeout"]), None);
        assert_eq!(
            d.get(&["tls", "allowed_client_certificates"]),
            Some(Value::Seq(vec![]))
        );
    }

    #[test]
    fn set_keeps_comments_and_order() {
        let mut d = Doc::parse(DOC);
        d.set(&["workers"], "4");
        d.set(&["limits", "idle_timeout"], "\"5m\"");
        d.set(&["limits", "header_timeout"], "\"3s\"");
        d.set(&["resolver", "cache_size"], "10");
        let out = d.render();
        assert!(out.contains("workers: 4  # per CPU\n"), "{out}");
        assert!(out.contains("  # idle\n  idle_timeout: \"5m\"\n  drain_timeout: 30s\n  header_timeout: \"3s\"\n"), "{out}");
        assert!(
            out.ends_with("relay_proxy: null\n\nresolver:\n  cache_size: 10\n"),
            "{out}"
        );
        assert!(out.starts_with("# top comment\nlisten:\n  - \"0.0.0.0:8080\"   # v4\n"));
    }

    #[test]
    fn set_under_an_inline_null_parent() {
        let mut d = Doc::parse(DOC);
        d.set(&["relay_proxy", "address"], "\"http://p:3128\"");
        let out = d.render();
        assert!(
            out.ends_with("relay_proxy:\n  address: \"http://p:3128\"\n"),
            "{out}"
        );
        assert_eq!(
            Doc::parse(&out).get(&["relay_proxy", "address"]),
            Some(Value::Scalar("http://p:3128".into()))
        );
    }

    #[test]
    fn block_value_replaced_by_inline() {
        let mut d = Doc::parse(DOC);
        d.set(&["listen"], "[\"127.0.0.1:9000\"]");
        let out = d.render();
        assert!(
            out.contains("listen: [\"127.0.0.1:9000\"]\n\nworkers"),
            "{out}"
        );
    }

    #[test]
    fn sequence_push_and_remove_in_both_styles() {
        let mut d = Doc::parse(DOC);
        d.seq_push(&["allowed_hosts"], "\"c.example\"");
        d.seq_push(&["allowed_ports"], "9443");
        d.seq_push(&["tls", "allowed_client_certificates"], "\"CN=agent\"");
        let out = d.render();
        assert!(
            out.contains("- \"*.b.example\" # wildcard\n- \"c.example\"\n"),
            "{out}"
        );
        assert!(out.contains("allowed_ports: [443, 8443, 9443]\n"), "{out}");
        assert!(
            out.contains("allowed_client_certificates: [\"CN=agent\"]\n"),
            "{out}"
        );
        let mut d = Doc::parse(&out);
        assert_eq!(d.seq_remove(&["allowed_hosts"], |h| h == "a.example"), 1);
        assert_eq!(d.seq_remove(&["allowed_ports"], |p| p == "8443"), 1);
        assert_eq!(d.seq_remove(&["allowed_ports"], |p| p == "1"), 0);
        let out = d.render();
        assert!(
            out.contains(
                "# hosts allowed\nallowed_hosts:\n- \"*.b.example\" # wildcard\n- \"c.example\"\n"
            ),
            "{out}"
        );
        assert!(out.contains("allowed_ports: [443, 9443]\n"), "{out}");
        let mut d = Doc::parse(&out);
        assert_eq!(d.seq_remove(&["allowed_hosts"], |_| true), 2);
        assert!(d.render().contains("allowed_hosts: []\n"));
        // A missing key is created.
        d.seq_push(&["new_list"], "\"x\"");
        assert_eq!(d.get(&["new_list"]), Some(Value::Seq(vec!["x".into()])));
    }

    #[test]
    fn quoting_round_trips() {
        for s in [
            "plain",
            "with \"quotes\"",
            "back\\slash",
            "CN=a, O=b # not a comment",
        ] {
            assert_eq!(unquote(&quote(s)), s);
        }
        assert_eq!(unquote("'it''s'"), "it's");
        assert_eq!(split_flow("\"a, b\", c ,'d'"), vec!["\"a, b\"", "c", "'d'"]);
    }

    #[test]
    fn remove_key_with_block() {
        let mut d = Doc::parse(DOC);
        assert!(d.remove(&["limits"]));
        assert!(!d.remove(&["limits"]));
        let out = d.render();
        assert!(!out.contains("idle_timeout"));
        assert!(out.contains("tls:\n"));
    }

    #[test]
    fn the_default_config_is_understood() {
        let d = Doc::parse(crate::config::DEFAULT_YAML);
        assert!(matches!(d.get(&["allowed_hosts"]), Some(Value::Seq(v)) if v.len() >= 3));
        assert_eq!(
            d.get(&["limits", "idle_timeout"]),
            Some(Value::Scalar("15m".into()))
        );
        assert_eq!(d.get(&["hosts"]), Some(Value::Map(vec![])));
    }
}
