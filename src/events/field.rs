//! Bounds on what a peer can put in an event field.
//!
//! Host names, user names, SNI, certificate subjects and any other string a client or an
//! upstream chose go into events through [`clip`], so one connection cannot fill a log line
//! (journald and most collectors cut or drop long lines, and the fields after a long one are
//! then lost).

use std::borrow::Cow;

/// The most bytes a peer-supplied string takes in an event field, the ellipsis included.
pub const MAX_FIELD_BYTES: usize = 256;

/// What ends a clipped field.
pub const ELLIPSIS: &str = "…";

/// `s` if it fits in [`MAX_FIELD_BYTES`]; else its longest prefix that ends on a character
/// boundary and leaves room for [`ELLIPSIS`], followed by it.
pub fn clip(s: &str) -> Cow<'_, str> {
    if s.len() <= MAX_FIELD_BYTES {
        return Cow::Borrowed(s);
    }
    let mut end = MAX_FIELD_BYTES - ELLIPSIS.len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + ELLIPSIS.len());
    out.push_str(&s[..end]);
    out.push_str(ELLIPSIS);
    Cow::Owned(out)
}

/// [`clip`] of a value's `Display` form (an authority, an error).
pub fn clip_display(v: &impl std::fmt::Display) -> String {
    let s = v.to_string();
    match clip(&s) {
        Cow::Borrowed(_) => s,
        Cow::Owned(c) => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_are_untouched() {
        for s in ["", "a.example", &"x".repeat(MAX_FIELD_BYTES)] {
            assert!(matches!(clip(s), Cow::Borrowed(b) if b == s), "{s:?}");
        }
    }

    #[test]
    fn long_strings_end_with_an_ellipsis_within_the_bound() {
        let s = "x".repeat(MAX_FIELD_BYTES + 1);
        let c = clip(&s);
        assert_eq!(c.len(), MAX_FIELD_BYTES);
        assert!(c.ends_with(ELLIPSIS));
        assert_eq!(&c[..MAX_FIELD_BYTES - ELLIPSIS.len()], &s[..253]);
        let huge = "y".repeat(1 << 20);
        assert_eq!(clip(&huge).len(), MAX_FIELD_BYTES);
    }

    #[test]
    fn cuts_on_a_character_boundary() {
        // Multi-byte characters straddling the cut at every offset.
        for (c, width) in [('é', 2), ('€', 3), ('𝄞', 4)] {
            for pad in 0..width {
                let s = format!("{}{}", "a".repeat(pad), c.to_string().repeat(200));
                let out = clip(&s);
                assert!(out.len() <= MAX_FIELD_BYTES, "{c} pad {pad}: {}", out.len());
                assert!(out.len() > MAX_FIELD_BYTES - width - ELLIPSIS.len());
                assert!(out.ends_with(ELLIPSIS));
                let body = &out[..out.len() - ELLIPSIS.len()];
                assert!(s.starts_with(body), "{c} pad {pad}: a prefix of the input");
            }
        }
    }

    #[test]
    fn display_values() {
        let long = format!("{}:443", "h".repeat(300));
        let c = clip_display(&long);
        assert_eq!(c.len(), MAX_FIELD_BYTES);
        assert!(c.ends_with(ELLIPSIS));
        assert_eq!(clip_display(&"a.example:443"), "a.example:443");
    }
}
