//! Parsing `Cache-Control` (and the fields shaped like it: `CDN-Cache-Control`,
//! `Surrogate-Control`) into directives.
//!
//! The grammar (RFC 9111 §5.2) is a comma-separated list of `token [ "=" (
//! token / quoted-string ) ]`. Directive names are case-insensitive. Everything
//! here is lenient in what it accepts and strict in what it concludes:
//!
//! * an unknown directive is ignored (so `nothing-to-see-here` changes nothing);
//! * a delta-seconds argument that is not a number makes the directive count as
//!   present with *no usable value*; callers decide what that means — for
//!   `max-age` it means "stale" (RFC 9111 §4.2.1: an invalid freshness value
//!   must not extend freshness);
//! * a number too large for 31 bits is capped at 2^31 seconds (RFC 9111 §1.2.2).
//!
//! Every field line of the header is parsed; duplicates keep the first value
//! (RFC 9111 §4.2.1 leaves conflicting duplicates to the cache; the first one is
//! what most caches use).

use http::header::{GetAll, HeaderValue};

/// The largest delta-seconds value we keep (RFC 9111 §1.2.2: 2^31).
pub(crate) const MAX_DELTA: u64 = 1 << 31;

/// One parsed directive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Directive {
    /// Lower-cased name.
    pub name: String,
    /// The argument with quotes and escapes removed, if any.
    pub value: Option<String>,
    /// The device the directive targets (`max-age=60;edge1`, Edge
    /// Architecture 1.0, used by `Surrogate-Control`); `None` for everyone.
    pub target: Option<String>,
}

/// The directives of one field (all its lines).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Directives {
    list: Vec<Directive>,
}

impl Directives {
    /// Parses every line of a header field. Lines that are not valid UTF-8 are
    /// skipped (a directive is always ASCII).
    pub(crate) fn parse_all(values: GetAll<'_, HeaderValue>) -> Self {
        let mut list = Vec::new();
        for value in values {
            if let Ok(text) = value.to_str() {
                parse_into(text, &mut list);
            }
        }
        Directives { list }
    }

    /// Parses one string (for tests and for single values).
    #[cfg(test)]
    pub(crate) fn parse(text: &str) -> Self {
        let mut list = Vec::new();
        parse_into(text, &mut list);
        Directives { list }
    }

    /// Drops directives targeted at a device other than `me`.
    pub(crate) fn for_target(mut self, me: &str) -> Self {
        self.list.retain(|d| {
            d.target
                .as_deref()
                .is_none_or(|t| t.eq_ignore_ascii_case(me))
        });
        self
    }

    /// Whether no directive was found.
    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether `name` (lower-case) is present, with or without an argument.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.list.iter().any(|d| d.name == name)
    }

    /// The first occurrence of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Directive> {
        self.list.iter().find(|d| d.name == name)
    }

    /// `name`'s delta-seconds argument: `None` if absent, `Some(None)` if present
    /// without a valid number, `Some(Some(secs))` otherwise.
    pub(crate) fn seconds(&self, name: &str) -> Option<Option<u64>> {
        self.get(name)
            .map(|d| d.value.as_deref().and_then(parse_delta_seconds))
    }

    /// The field names listed in a qualified directive such as
    /// `no-cache="set-cookie, x-foo"` (lower-cased). Empty when unqualified.
    pub(crate) fn field_names(&self, name: &str) -> Vec<String> {
        self.get(name)
            .and_then(|d| d.value.as_deref())
            .map(|v| {
                v.split(',')
                    .map(|f| f.trim().to_ascii_lowercase())
                    .filter(|f| !f.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Parses `1*DIGIT` with saturation at [`MAX_DELTA`]. Anything else (a sign, a
/// fraction, trailing junk, an empty string) is `None`.
pub(crate) fn parse_delta_seconds(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // All digits: the only failure left is overflow, which saturates.
    Some(text.parse::<u64>().unwrap_or(MAX_DELTA).min(MAX_DELTA))
}

fn parse_into(text: &str, out: &mut Vec<Directive>) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        // Skip separators and whitespace.
        while i < bytes.len() && (bytes[i] == b',' || bytes[i].is_ascii_whitespace()) {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && is_token_char(bytes[i]) {
            i += 1;
        }
        let name = text[start..i].to_ascii_lowercase();
        while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b'\t') {
            i += 1;
        }
        let mut value = None;
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b'\t') {
                i += 1;
            }
            if i < bytes.len() && bytes[i] == b'"' {
                i += 1;
                let mut v = String::new();
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' && i + 1 < bytes.len() {
                        i += 1;
                    }
                    // Safe to slice: we only stop on ASCII bytes, so `i` is
                    // always at a character boundary.
                    let ch_len = text[i..].chars().next().map_or(1, char::len_utf8);
                    v.push_str(&text[i..i + ch_len]);
                    i += ch_len;
                }
                i += 1; // the closing quote (or past the end)
                value = Some(v);
            } else {
                let vstart = i;
                while i < bytes.len() && bytes[i] != b',' && bytes[i] != b';' {
                    i += 1;
                }
                value = Some(text[vstart..i].trim().to_owned());
            }
        }
        let mut target = None;
        if i < bytes.len() && bytes[i] == b';' {
            i += 1;
            let tstart = i;
            while i < bytes.len() && bytes[i] != b',' {
                i += 1;
            }
            target = Some(text[tstart..i].trim().to_owned());
        }
        // Skip whatever is left up to the next comma (junk after a value).
        while i < bytes.len() && bytes[i] != b',' {
            i += 1;
        }
        if !name.is_empty() && !out.iter().any(|d| d.name == name) {
            out.push(Directive {
                name,
                value,
                target,
            });
        }
    }
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_values_and_quotes() {
        let d = Directives::parse(r#"Public, MAX-AGE=60, no-cache="Set-Cookie, X-Foo", x="a\"b""#);
        assert!(d.has("public"));
        assert_eq!(d.seconds("max-age"), Some(Some(60)));
        assert_eq!(d.field_names("no-cache"), vec!["set-cookie", "x-foo"]);
        assert_eq!(
            d.get("x").and_then(|d| d.value.clone()).as_deref(),
            Some("a\"b")
        );
    }

    #[test]
    fn bad_numbers_are_present_but_unusable() {
        let d = Directives::parse("max-age=-1, s-maxage=1.5, stale-if-error=abc");
        assert_eq!(d.seconds("max-age"), Some(None));
        assert_eq!(d.seconds("s-maxage"), Some(None));
        assert_eq!(d.seconds("stale-if-error"), Some(None));
        assert_eq!(d.seconds("stale-while-revalidate"), None);
    }

    #[test]
    fn huge_numbers_saturate_and_first_duplicate_wins() {
        let d = Directives::parse("max-age=99999999999999999999999, max-age=5");
        assert_eq!(d.seconds("max-age"), Some(Some(MAX_DELTA)));
        assert_eq!(
            Directives::parse("max-age=\"30\"").seconds("max-age"),
            Some(Some(30))
        );
    }

    #[test]
    fn targeted_directives() {
        let d = Directives::parse("max-age=60;edge, no-store;other, public").for_target("edge");
        assert_eq!(d.seconds("max-age"), Some(Some(60)));
        assert!(!d.has("no-store"));
        assert!(d.has("public"));
    }

    #[test]
    fn junk_does_not_panic() {
        for s in [
            "",
            ",,,",
            "=",
            "\"",
            "a=\"",
            "a=\"\\",
            "é=ü, max-age=1",
            " ; ;=,",
        ] {
            let _ = Directives::parse(s);
        }
        assert_eq!(
            Directives::parse("é=ü, max-age=1").seconds("max-age"),
            Some(Some(1))
        );
    }
}
