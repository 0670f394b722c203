//! Output of the admin commands: text for people, one JSON object for scripts (`--json`).
//!
//! The JSON is `serde_json`'s (already linked by the JSON log format), with object keys kept in
//! the order they are written (`preserve_order`). These helpers only shorten the call sites.

pub use serde_json::Value as Json;

/// An object with `fields` in this order.
pub fn obj<const N: usize>(fields: [(&str, Json); N]) -> Json {
    Json::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

/// An object from owned `(key, value)` pairs, in this order.
pub fn object(fields: Vec<(String, Json)>) -> Json {
    Json::Object(fields.into_iter().collect())
}

/// A JSON string.
pub fn text(s: impl Into<String>) -> Json {
    Json::String(s.into())
}

/// An array of JSON strings.
pub fn texts<S: AsRef<str>>(items: &[S]) -> Json {
    Json::Array(items.iter().map(|s| text(s.as_ref())).collect())
}

/// Adding a field to an object value.
pub trait WithField {
    /// Add `key` to an object (no-op on other values).
    fn with(self, key: &str, value: Json) -> Json;
}

impl WithField for Json {
    fn with(mut self, key: &str, value: Json) -> Json {
        if let Json::Object(fields) = &mut self {
            fields.insert(key.to_owned(), value);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_escaped_json_in_written_order() {
        let j = obj([
            ("ok", Json::Bool(true)),
            ("n", Json::from(-3)),
            ("s", text("a\"b\\c\n\u{1}")),
            ("l", texts(&["x", "y"])),
            ("z", Json::Null),
        ])
        .with("after", text("last"));
        assert_eq!(
            j.to_string(),
            r#"{"ok":true,"n":-3,"s":"a\"b\\c\n\u0001","l":["x","y"],"z":null,"after":"last"}"#
        );
    }
}
