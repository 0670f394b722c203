//! The first stage of loading: YAML -> raw serde structs.
//!
//! The structs use `deny_unknown_fields`, so an unknown key is a serde error. Every leaf is a
//! [`Spanned`]`<`[`Node`]`>`: serde-saphyr's span wrapper records the 1-based line and column
//! of the value, and the untyped [`Node`] accepts any YAML value, so type and range checks
//! happen in the second stage ([`super::validate`]), which can report every problem with its
//! key path, line, what was found and what was expected, instead of stopping at the first.
//!
//! What serde-saphyr itself can still reject (syntax errors, unknown keys, duplicate keys, a
//! section that is not a mapping, resource budgets) becomes one [`Problem`] via
//! [`serde_problem`], with the key path recovered from the error's position in the source.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize as DeriveDeserialize;
use serde_saphyr::{MessageFormatter, Spanned};

use super::error::Problem;

/// Parses the document. An empty document (nothing but whitespace, comments, `---` or `null`)
/// is refused: it is what an interrupted or in-progress write leaves on disk, and reading it as
/// "every key at its default" would widen what the gateway allows. An explicit `{}` is accepted.
pub(super) fn parse(src: &str) -> Result<RawConfig, Problem> {
    let mut budget = serde_saphyr::Budget::default();
    // Room for allowlists with a million entries; the input is an operator's file.
    budget.max_nodes = 4_000_000;
    budget.max_events = 10_000_000;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.strict_booleans = true;
    options.leading_zero_numbers_as_strings = true;
    options.with_snippet = false;
    match serde_saphyr::from_str_with_options::<Option<RawConfig>>(src, options) {
        Ok(Some(raw)) => Ok(raw),
        Ok(None) => Err(Problem {
            key: String::new(),
            line: None,
            message: EMPTY_DOCUMENT.to_owned(),
        }),
        Err(err) => Err(serde_problem(src, &err)),
    }
}

/// Why an empty document is refused.
pub(super) const EMPTY_DOCUMENT: &str = "the configuration is empty (nothing but whitespace or \
    comments): a named configuration file must set its keys, so an emptied or half-written file \
    is refused rather than read as the built-in defaults (`splicegate default-config` prints \
    every key; write `{}` to mean \"every key at its default\")";

/// Turns a serde-saphyr error into a [`Problem`] with the key path found from its location.
fn serde_problem(src: &str, err: &serde_saphyr::Error) -> Problem {
    let err = innermost(err);
    let location = err.location().filter(|l| l.line() > 0);
    let line = location.and_then(|l| usize::try_from(l.line()).ok());
    let column = location
        .and_then(|l| usize::try_from(l.column()).ok())
        .unwrap_or(1);
    let parents = line
        .map(|l| parent_path(src, l, column))
        .unwrap_or_default();
    let join = |leaf: &str| {
        if parents.is_empty() {
            leaf.to_owned()
        } else {
            format!("{parents}.{leaf}")
        }
    };
    let (key, message) = match err {
        serde_saphyr::Error::SerdeUnknownField {
            field, expected, ..
        } => (
            join(field),
            format!("unknown key; expected one of: {}", expected.join(", ")),
        ),
        serde_saphyr::Error::DuplicateMappingKey { key: Some(k), .. } => {
            (join(k), "this key appears more than once".to_owned())
        }
        serde_saphyr::Error::Unexpected { expected, .. } if expected.contains("mapping") => {
            let found = line.map(|l| token_at(src, l, column)).unwrap_or_default();
            let key = line.and_then(|l| key_on_line(src, l, column));
            let key = key.map(|k| join(&k)).unwrap_or(parents.clone());
            let found = if found.is_empty() {
                String::new()
            } else {
                format!(", found {found:?}")
            };
            let what = if key.is_empty() {
                "the configuration must be a mapping of `key: value` settings"
            } else {
                "expected a mapping of `key: value` settings"
            };
            (key, format!("{what}{found}"))
        }
        serde_saphyr::Error::MultipleDocuments { .. } => (
            String::new(),
            "the file holds more than one YAML document (a second `---`); \
             put every setting in a single document"
                .to_owned(),
        ),
        other => {
            let text = serde_saphyr::DefaultMessageFormatter.format_message(other);
            let text: String = text
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let key = line.and_then(|l| key_on_line(src, l, column));
            let key = key.map(|k| join(&k)).unwrap_or(parents.clone());
            (key, with_hint(src, line, text))
        }
    };
    Problem { key, line, message }
}

/// An optional leaf: `None` when the key is absent. A present key with a `null` value is
/// `Some(Node::Null)`, not `None`.
pub(super) type Field = Option<Spanned<Node>>;

/// The top level of the configuration document.
#[derive(Debug, Default, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default, deserialize_with = "present")]
    pub listen: Field,
    #[serde(default, deserialize_with = "present")]
    pub metrics_listen: Field,
    #[serde(default, deserialize_with = "present")]
    pub metrics_public: Field,
    #[serde(default, deserialize_with = "present")]
    pub health_listen: Field,
    #[serde(default, deserialize_with = "present")]
    pub takeover_socket: Field,
    #[serde(default, deserialize_with = "present")]
    pub admin_socket: Field,
    #[serde(default, deserialize_with = "present")]
    pub workers: Field,
    #[serde(default, deserialize_with = "present")]
    pub engine: Field,
    #[serde(default, deserialize_with = "present")]
    pub data_path: Field,
    #[serde(default, deserialize_with = "present")]
    pub allowed_ports: Field,
    #[serde(default, deserialize_with = "present")]
    pub allowed_hosts: Field,
    #[serde(default, deserialize_with = "present")]
    pub hosts: Field,
    #[serde(default, deserialize_with = "present")]
    pub allow_private_destinations: Field,
    #[serde(default, deserialize_with = "present")]
    pub revoke_on_reload: Field,
    #[serde(default, deserialize_with = "present")]
    pub allowed_destination_networks: Field,
    #[serde(default, deserialize_with = "present")]
    pub allowed_client_networks: Field,
    #[serde(default)]
    pub client_auth: Option<Spanned<RawClientAuth>>,
    #[serde(default)]
    pub limits: Option<RawLimits>,
    #[serde(default)]
    pub resolver: Option<RawResolver>,
    #[serde(default)]
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub relay_proxy: Option<RawRelay>,
    #[serde(default)]
    pub logging: Option<RawLogging>,
    #[serde(default, deserialize_with = "present")]
    pub cloud: Field,
    #[serde(default, deserialize_with = "present")]
    pub presets: Field,
    #[serde(default, deserialize_with = "present")]
    pub workspaces: Field,
    #[serde(default, deserialize_with = "present")]
    pub regions: Field,
}

/// `relay_proxy:`.
#[derive(Debug, Default, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRelay {
    #[serde(default, deserialize_with = "present")]
    pub address: Field,
    #[serde(default, deserialize_with = "present")]
    pub username: Field,
    #[serde(default, deserialize_with = "present")]
    pub password_file: Field,
    #[serde(default, deserialize_with = "present")]
    pub ca_file: Field,
    #[serde(default, deserialize_with = "present")]
    pub health_check: Field,
}

/// `client_auth:`.
#[derive(Debug, Default, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClientAuth {
    #[serde(default, deserialize_with = "present")]
    pub users_file: Field,
    #[serde(default, deserialize_with = "present")]
    pub realm: Field,
    #[serde(default, deserialize_with = "present")]
    pub max_failures: Field,
    #[serde(default, deserialize_with = "present")]
    pub failure_window: Field,
    #[serde(default, deserialize_with = "present")]
    pub user_hosts: Field,
}

/// `limits:`.
#[derive(Debug, Default, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    #[serde(default, deserialize_with = "present")]
    pub max_connections: Field,
    #[serde(default, deserialize_with = "present")]
    pub max_header_bytes: Field,
    #[serde(default, deserialize_with = "present")]
    pub header_timeout: Field,
    #[serde(default, deserialize_with = "present")]
    pub connect_timeout: Field,
    #[serde(default, deserialize_with = "present")]
    pub idle_timeout: Field,
    #[serde(default, deserialize_with = "present")]
    pub drain_timeout: Field,
    #[serde(default, deserialize_with = "present")]
    pub resolve_timeout: Field,
    #[serde(default, deserialize_with = "present")]
    pub max_pipes: Field,
    #[serde(default, deserialize_with = "present")]
    pub pipe_size: Field,
    #[serde(default, deserialize_with = "present")]
    pub metrics_max_connections: Field,
    #[serde(default, deserialize_with = "present")]
    pub reload_debounce: Field,
    #[serde(default, deserialize_with = "present")]
    pub reload_retries: Field,
    #[serde(default, deserialize_with = "present")]
    pub accept_backoff_min: Field,
    #[serde(default, deserialize_with = "present")]
    pub accept_backoff_max: Field,
    #[serde(default, deserialize_with = "present")]
    pub worker_restart_delay: Field,
    #[serde(default, deserialize_with = "present")]
    pub max_connections_per_client: Field,
    #[serde(default, deserialize_with = "present")]
    pub drain_grace: Field,
    #[serde(default, deserialize_with = "present")]
    pub takeover_timeout: Field,
    #[serde(default, deserialize_with = "present")]
    pub admin_max_connections: Field,
    #[serde(default, deserialize_with = "present")]
    pub admin_timeout: Field,
    #[serde(default, deserialize_with = "present")]
    pub memory_budget: Field,
    #[serde(default, deserialize_with = "present")]
    pub overload_engage_percent: Field,
    #[serde(default, deserialize_with = "present")]
    pub overload_release_percent: Field,
    #[serde(default, deserialize_with = "present")]
    pub overload_sample_interval: Field,
}

/// `resolver:`.
#[derive(Debug, Default, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResolver {
    #[serde(default, deserialize_with = "present")]
    pub nameservers: Field,
    #[serde(default, deserialize_with = "present")]
    pub cache_size: Field,
    #[serde(default, deserialize_with = "present")]
    pub hosts_file: Field,
    #[serde(default, deserialize_with = "present")]
    pub min_ttl: Field,
    #[serde(default, deserialize_with = "present")]
    pub max_ttl: Field,
    #[serde(default, deserialize_with = "present")]
    pub negative_ttl: Field,
    #[serde(default, deserialize_with = "present")]
    pub stale_after: Field,
    #[serde(default, deserialize_with = "present")]
    pub stale_ttl: Field,
    #[serde(default, deserialize_with = "present")]
    pub resolution_delay: Field,
    #[serde(default, deserialize_with = "present")]
    pub private_link: Field,
}

/// `logging:`.
#[derive(Debug, Default, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLogging {
    #[serde(default, deserialize_with = "present")]
    pub refusal_burst: Field,
    #[serde(default, deserialize_with = "present")]
    pub refusal_window: Field,
    #[serde(default, deserialize_with = "present")]
    pub refusal_table_size: Field,
}

/// `tls:`.
#[derive(Debug, Default, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    #[serde(default, deserialize_with = "present")]
    pub inspect: Field,
    #[serde(default, deserialize_with = "present")]
    pub min_version: Field,
    #[serde(default, deserialize_with = "present")]
    pub require_sni: Field,
    #[serde(default, deserialize_with = "present")]
    pub require_sni_match: Field,
    #[serde(default, deserialize_with = "present")]
    pub hello_timeout: Field,
    #[serde(default, deserialize_with = "present")]
    pub max_hello_bytes: Field,
    #[serde(default, deserialize_with = "present")]
    pub allowed_client_certificates: Field,
    #[serde(default, deserialize_with = "present")]
    pub tls13_client_certificate: Field,
}

/// Deserialises a present key (even one whose value is `null`) as `Some`.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Field, D::Error> {
    Spanned::<Node>::deserialize(deserializer).map(Some)
}

/// Any YAML value, with the locations of its children.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<Node>, Spanned<Node>)>),
}

impl Node {
    /// A short description of the value for "found ..." messages.
    pub(super) fn describe(&self) -> String {
        match self {
            Node::Null => "an empty value (null)".to_owned(),
            Node::Bool(b) => format!("the boolean {b}"),
            Node::Int(i) => format!("the number {i}"),
            Node::Float(x) => format!("the number {x}"),
            Node::Str(s) => {
                const MAX: usize = 80;
                if s.chars().count() > MAX {
                    let head: String = s.chars().take(MAX).collect();
                    format!("the string {head:?}...")
                } else {
                    format!("the string {s:?}")
                }
            }
            Node::Seq(items) if items.is_empty() => "an empty list".to_owned(),
            Node::Seq(_) => "a list".to_owned(),
            Node::Map(entries) if entries.is_empty() => "an empty mapping".to_owned(),
            Node::Map(_) => "a mapping".to_owned(),
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Int(v.into()))
    }

    fn visit_i128<E>(self, v: i128) -> Result<Node, E> {
        Ok(Node::Int(v))
    }

    fn visit_u128<E>(self, v: u128) -> Result<Node, E> {
        Ok(i128::try_from(v).map_or(Node::Float(v as f64), Node::Int))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Node, E> {
        match std::str::from_utf8(v) {
            Ok(s) => Ok(Node::Str(s.to_owned())),
            Err(_) => Err(E::custom("binary data is not valid here")),
        }
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Node::Map(entries))
    }
}

/// Unwraps errors that only add context (snippets, alias locations).
fn innermost(err: &serde_saphyr::Error) -> &serde_saphyr::Error {
    match err.without_snippet() {
        serde_saphyr::Error::AliasError { error, .. } => innermost(error),
        other => other,
    }
}

/// Adds a hint for the most common YAML mistake in this file: an unquoted `[::]:8080`.
fn with_hint(src: &str, line: Option<usize>, text: String) -> String {
    let text_of_line = line.and_then(|l| src.lines().nth(l.saturating_sub(1)));
    if text_of_line.is_some_and(|t| t.contains("- [") || t.contains(": [:")) {
        format!("{text} (hint: quote IPv6 addresses in brackets, as in \"[::]:8080\")")
    } else {
        text
    }
}

/// The dotted path of the block mappings that contain the position `line`:`column`
/// (1-based), found from indentation: each enclosing `key:` line is less indented.
/// Flow mappings on the same line (`limits: {bogus: 1}`) are recognised too.
fn parent_path(src: &str, line: usize, column: usize) -> String {
    let lines: Vec<&str> = src.lines().collect();
    let Some(current) = lines.get(line.saturating_sub(1)) else {
        return String::new();
    };
    let mut keys: Vec<String> = Vec::new();
    // Keys of flow mappings opened earlier on the same line, e.g. `limits: {`.
    let before: String = current.chars().take(column.saturating_sub(1)).collect();
    let mut same_line: Vec<String> = Vec::new();
    for (i, _) in before.match_indices('{') {
        if let Some(k) = before[..i].trim_end().strip_suffix(':').and_then(last_key) {
            same_line.push(k);
        }
    }
    let mut indent = indentation(current);
    for candidate in lines[..line.saturating_sub(1)].iter().rev() {
        if indent == 0 {
            break;
        }
        let trimmed = candidate.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let ind = indentation(candidate);
        if ind < indent {
            indent = ind;
            if let Some(k) = key_prefix(trimmed) {
                keys.push(k);
            }
        }
    }
    keys.reverse();
    keys.extend(same_line);
    keys.join(".")
}

/// The key of a `key: value` line whose value starts at or after `column`.
fn key_on_line(src: &str, line: usize, column: usize) -> Option<String> {
    let text = src.lines().nth(line.saturating_sub(1))?;
    let before: String = text.chars().take(column.saturating_sub(1)).collect();
    let before = before.trim_end().strip_suffix(':')?;
    last_key(before)
}

/// The last plain key in `text`, e.g. `limits` in `  limits` or `b` in `a: {b`.
fn last_key(text: &str) -> Option<String> {
    let key: String = text
        .chars()
        .rev()
        .take_while(|c| is_key_char(*c))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    (!key.is_empty()).then_some(key)
}

/// The key at the start of a trimmed `key: ...` line, if it is one.
fn key_prefix(trimmed: &str) -> Option<String> {
    let trimmed = trimmed.strip_prefix("- ").unwrap_or(trimmed);
    let end = trimmed.find(':')?;
    let key = trimmed[..end].trim_matches(|c| c == '"' || c == '\'');
    (!key.is_empty() && key.chars().all(is_key_char)).then(|| key.to_owned())
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '*')
}

fn indentation(line: &str) -> usize {
    line.chars().take_while(|&c| c == ' ').count()
}

/// The source text from `line`:`column` to the end of the line, without a trailing comment.
fn token_at(src: &str, line: usize, column: usize) -> String {
    let Some(text) = src.lines().nth(line.saturating_sub(1)) else {
        return String::new();
    };
    let rest: String = text.chars().skip(column.saturating_sub(1)).collect();
    let rest = match rest.find(" #") {
        Some(i) => &rest[..i],
        None => &rest,
    };
    rest.trim().chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(src: &str) -> Problem {
        match parse(src) {
            Ok(raw) => panic!("{src:?} should fail, got {raw:?}"),
            Err(p) => p,
        }
    }

    #[test]
    fn empty_documents() {
        for src in [
            "",
            "\n\n",
            "# only a comment\n",
            "---\n",
            "--- # c\n",
            "~\n",
            "null\n",
        ] {
            match parse(src) {
                Err(p) => assert_eq!(p.message, EMPTY_DOCUMENT, "{src:?}"),
                Ok(raw) => panic!("{src:?} is empty but parsed: {raw:?}"),
            }
        }
        assert!(
            parse("{}\n").is_ok(),
            "an explicit empty mapping is accepted"
        );
    }

    #[test]
    fn nodes_keep_locations() {
        let raw = match parse("# c\nlisten:\n  - a\n  - 5\nworkers: ~\n") {
            Ok(raw) => raw,
            Err(p) => panic!("{p}"),
        };
        let listen = raw.listen.as_ref().map(|n| &n.value);
        let Some(Node::Seq(items)) = listen else {
            panic!("listen should be a list: {listen:?}");
        };
        assert_eq!(items[0].value, Node::Str("a".into()));
        assert_eq!(items[0].referenced.line(), 3);
        assert_eq!(items[1].value, Node::Int(5));
        assert_eq!(items[1].referenced.line(), 4);
        assert_eq!(raw.workers.map(|n| n.value), Some(Node::Null));
        assert!(raw.engine.is_none());
    }

    #[test]
    fn unknown_keys_name_their_path() {
        let p = problem("listen: []\nbogus: 1\n");
        assert_eq!((p.key.as_str(), p.line), ("bogus", Some(2)));
        assert!(p.message.contains("unknown key"), "{p}");
        assert!(p.message.contains("allowed_hosts"), "{p}");

        let p = problem("workers: 1\nlimits:\n  # comment\n\n  max_pipes: 3\n  bogus: 1\n");
        assert_eq!((p.key.as_str(), p.line), ("limits.bogus", Some(6)));
        assert!(p.message.contains("header_timeout"), "{p}");

        let p = problem("limits: {max_pipes: 3, bogus: 1}\n");
        assert_eq!((p.key.as_str(), p.line), ("limits.bogus", Some(1)));

        let p = problem("resolver:\n    cache: 5\n");
        assert_eq!((p.key.as_str(), p.line), ("resolver.cache", Some(2)));
    }

    #[test]
    fn structural_errors() {
        let p = problem("limits: 5\n");
        assert_eq!((p.key.as_str(), p.line), ("limits", Some(1)));
        assert!(p.message.contains("expected a mapping"), "{p}");
        assert!(p.message.contains("\"5\""), "{p}");

        let p = problem("- a\n- b\n");
        assert_eq!((p.key.as_str(), p.line), ("", Some(1)));
        assert!(p.message.contains("must be a mapping"), "{p}");

        let p = problem("hosts:\n  a.example: [192.0.2.1]\n  a.example: []\n");
        assert_eq!((p.key.as_str(), p.line), ("hosts.a.example", Some(3)));
        assert!(p.message.contains("more than once"), "{p}");

        let p = problem("workers: 1\nworkers: 2\n");
        assert_eq!((p.key.as_str(), p.line), ("workers", Some(2)));
    }

    #[test]
    fn syntax_errors_have_lines_and_hints() {
        let p = problem("listen: [a\n");
        assert_eq!(p.line, Some(1));
        assert!(p.message.contains("bracket"), "{p}");

        let p = problem("listen:\n  - 0.0.0.0:8080\n  - [::]:8080\n");
        assert_eq!(p.line, Some(3));
        assert!(p.message.contains("hint: quote IPv6"), "{p}");

        let p = problem("limits:\n  header_timeout: 'x\n");
        assert!(p.line.is_some(), "{p}");

        let p = problem("limits:\n  max_pipes: *nope\n");
        assert_eq!((p.key.as_str(), p.line), ("limits.max_pipes", Some(2)));

        let p = problem("workers: 1\n---\nworkers: 2\n");
        assert!(p.message.contains("more than one YAML document"), "{p}");
    }
}
