//! Shared JSON helpers for the request parsers: the top level read once as raw members,
//! duplicate keys refused, fields deserialized from their raw slices with errors that name
//! them.

use std::borrow::Cow;
use std::ops::Range;

use serde::de::{Deserialize, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::errors::{ErrorKind, FluxError};

pub fn bad(message: impl Into<Cow<'static, str>>) -> FluxError {
    FluxError::new(ErrorKind::InvalidRequest, message)
}

/// Echo at most 64 characters of client input in a message.
pub fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// Echo at most 512 characters of a provider's message.
pub fn shown_long(s: &str) -> String {
    let mut out: String = s.chars().take(512).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// The members of the top-level object, in order, each value kept as its raw slice.
pub type Members<'a> = Vec<(Cow<'a, str>, &'a RawValue)>;

/// Read the top-level object. Malformed JSON, a non-object and a key that appears twice are
/// each a 400: with a duplicated key, the gateway and the provider could act on different
/// values (route and price one `model`, serve another).
pub fn top_level(raw: &[u8]) -> Result<Members<'_>, FluxError> {
    let TopLevel(members) = serde_json::from_slice(raw).map_err(|e| {
        if let Some(key) = e.to_string().strip_prefix(DUPLICATE) {
            let key = key.split(" at line").next().unwrap_or(key);
            return bad(format!(
                "The top-level key '{}' appears more than once in the request body; send it \
                 once.",
                shown(key)
            ));
        }
        match e.classify() {
            serde_json::error::Category::Data => bad("The request body must be a JSON object."),
            _ => bad(format!("Malformed JSON in request body: {e}.")),
        }
    })?;
    Ok(members)
}

const DUPLICATE: &str = "duplicate top-level key ";

struct TopLevel<'a>(Members<'a>);

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TopLevelVisitor)
    }
}

struct TopLevelVisitor;

impl<'de> Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members: Members<'de> = Vec::new();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            // Top levels have tens of keys: a linear check beats hashing.
            if members.iter().any(|(k, _)| *k == key) {
                return Err(serde::de::Error::custom(format_args!("{DUPLICATE}{key}")));
            }
            let value: &'de RawValue = map.next_value()?;
            members.push((key, value));
        }
        Ok(TopLevel(members))
    }
}

/// Deserialize one member, naming it in the error.
pub fn field<'a, T: Deserialize<'a>>(name: &str, value: &'a RawValue) -> Result<T, FluxError> {
    serde_json::from_str(value.get()).map_err(|e| {
        let e = e.to_string();
        let e = e.split(" at line").next().unwrap_or(&e);
        bad(format!("'{name}' is invalid: {e}."))
    })
}

/// Where `value` sits inside `raw` (it must be a slice of it).
pub fn span_of(raw: &[u8], value: &RawValue) -> Range<usize> {
    let start = value.get().as_ptr() as usize - raw.as_ptr() as usize;
    debug_assert!(start + value.get().len() <= raw.len());
    start..start + value.get().len()
}

/// The whole top-level member `"key": value` (of a plainly written `key`) with one comma
/// beside it (the one after it, else the one before), to cut out of the body so the rest
/// stays valid JSON. None when the key is written with escapes (then it cannot be found
/// from its value, and the caller refuses the request).
pub fn member_cut(raw: &[u8], key: &str, value: &RawValue) -> Option<Range<usize>> {
    let span = span_of(raw, value);
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    // Back from the value: blanks, the colon, blanks, then `"key"`.
    let mut at = span.start;
    while at > 0 && is_space(&raw[at - 1]) {
        at -= 1;
    }
    if at == 0 || raw[at - 1] != b':' {
        return None;
    }
    at -= 1;
    while at > 0 && is_space(&raw[at - 1]) {
        at -= 1;
    }
    let quoted = key.len() + 2;
    if at < quoted
        || raw[at - quoted] != b'"'
        || &raw[at - quoted + 1..at - 1] != key.as_bytes()
        || raw[at - 1] != b'"'
    {
        return None;
    }
    let start = at - quoted;
    // Forward: blanks, then a comma (taken) or the object's end.
    let mut end = span.end;
    while end < raw.len() && is_space(&raw[end]) {
        end += 1;
    }
    if end < raw.len() && raw[end] == b',' {
        return Some(start..end + 1);
    }
    // The last member: the comma before it goes (none: it was the only member).
    let mut before = start;
    while before > 0 && is_space(&raw[before - 1]) {
        before -= 1;
    }
    if before > 0 && raw[before - 1] == b',' {
        return Some(before - 1..span.end);
    }
    Some(start..span.end)
}

/// Whether a raw value is JSON `null`.
pub fn is_null(value: &RawValue) -> bool {
    value.get() == "null"
}

/// The body with the top-level `model` value replaced by `model`: everything else reaches a
/// same-format provider exactly as the client wrote it.
pub fn splice_model(raw: &[u8], span: &Range<usize>, model: &str) -> Vec<u8> {
    let quoted = serde_json::to_string(model).expect("a string always serializes");
    let mut out = Vec::with_capacity(raw.len() + quoted.len());
    out.extend_from_slice(&raw[..span.start]);
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(&raw[span.end..]);
    out
}

#[cfg(test)]
mod member_cut_tests {
    use super::*;

    fn cut(raw: &str) -> Option<String> {
        let members = top_level(raw.as_bytes()).unwrap();
        let (_, v) = members.iter().find(|(k, _)| k == "provider")?;
        let at = member_cut(raw.as_bytes(), "provider", v)?;
        let mut out = raw.as_bytes().to_vec();
        out.drain(at);
        Some(String::from_utf8(out).unwrap())
    }

    #[test]
    fn the_member_and_one_comma_go_and_the_rest_stays_valid() {
        for (raw, want) in [
            (
                r#"{"model":"m","provider":{"only":["a"]},"x":1}"#,
                r#"{"model":"m","x":1}"#,
            ),
            (
                r#"{"provider":{"sort":"price"}, "model":"m"}"#,
                r#"{ "model":"m"}"#,
            ),
            (
                r#"{"model":"m" , "provider" : null }"#,
                r#"{"model":"m"  }"#,
            ),
            (r#"{"provider":[]}"#, r#"{}"#),
        ] {
            let out = cut(raw).unwrap();
            assert_eq!(out, want);
            serde_json::from_str::<serde_json::Value>(&out).unwrap();
        }
        // A key written with escapes is not found from its value.
        assert_eq!(cut(r#"{"model":"m","\u0070rovider":{}}"#), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_raw_and_in_order() {
        let raw = br#"{"b": [1, 2], "a":"x\"y", "c" : {"k":null}}"#;
        let m = top_level(raw).unwrap();
        let keys: Vec<&str> = m.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["b", "a", "c"]);
        assert_eq!(m[0].1.get(), "[1, 2]");
        assert_eq!(&raw[span_of(raw, m[1].1)], br#""x\"y""#);
        let s: Cow<str> = field("a", m[1].1).unwrap();
        assert_eq!(s, "x\"y");
    }

    #[test]
    fn duplicates_and_non_objects_are_400() {
        let e = top_level(br#"{"model":"a","x":1,"model":"b"}"#).unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.message.contains("'model' appears more than once"), "{e}");
        let e = top_level(br#"[1]"#).unwrap_err();
        assert!(e.message.contains("JSON object"), "{e}");
        let e = top_level(br#"{"a":"#).unwrap_err();
        assert!(e.message.starts_with("Malformed JSON"), "{e}");
        // Nested duplicates are the provider's business; only the top level is acted on.
        assert!(top_level(br#"{"m":{"a":1,"a":2}}"#).is_ok());
    }

    #[test]
    fn splice_keeps_everything_else() {
        let raw = br#"{"model" : "flux-fast", "x":1}"#;
        let m = top_level(raw).unwrap();
        let out = splice_model(raw, &span_of(raw, m[0].1), "a\"b");
        assert_eq!(out, br#"{"model" : "a\"b", "x":1}"#.to_vec());
    }
}
