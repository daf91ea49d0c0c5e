//! The passthrough splice: a same-format provider gets the client's own bytes, edited in
//! place rather than re-serialized.

use std::borrow::Cow;
use std::ops::Range;

use crate::wire::format::Format;
use crate::wire::ir::Request;
use crate::wire::json;

/// The client's body for a same-format provider: `model` replaced, and for a Chat stream
/// without `stream_options.include_usage: true`, that option set so the provider reports
/// usage. Both are splices into the client's bytes; nothing else is re-serialized.
pub fn passthrough_body(req: &Request<'_>, model: &str) -> Vec<u8> {
    let needs_usage = req.format == Format::OpenAiChat && req.stream && !req.include_usage;
    if !needs_usage && req.preferences_cut.is_none() {
        return json::splice_model(req.raw, &req.model_span, model);
    }
    let quoted = serde_json::to_string(model).unwrap_or_else(|_| "\"\"".to_owned());
    // At most three edits: the model, the usage option, FluxRouter's `provider` cut out.
    let mut edits: Vec<(Range<usize>, Cow<'static, [u8]>)> = Vec::with_capacity(3);
    edits.push((req.model_span.clone(), Cow::Owned(quoted.into_bytes())));
    if needs_usage {
        edits.push(include_usage_edit(req.raw, req.stream_options_span.clone()));
    }
    if let Some(cut) = &req.preferences_cut {
        edits.push((cut.clone(), Cow::Borrowed(&[])));
    }
    edits.sort_by_key(|(at, _)| (at.start, at.end));
    let extra: usize = edits.iter().map(|(_, b)| b.len()).sum();
    let mut out = Vec::with_capacity(req.raw.len() + extra);
    let mut from = 0;
    for (at, bytes) in &edits {
        // Spans come from the parser and never overlap; a bad one leaves the body as it is.
        if at.start < from || at.end > req.raw.len() || at.start > at.end {
            return json::splice_model(req.raw, &req.model_span, model);
        }
        out.extend_from_slice(&req.raw[from..at.start]);
        out.extend_from_slice(bytes);
        from = at.end;
    }
    out.extend_from_slice(&req.raw[from..]);
    out
}

/// The splice that makes a Chat body ask for usage, given where its `stream_options` value
/// is: absent -> the member inserted right after the body's opening `{`; an object with
/// `include_usage` -> that value replaced by `true`; an object without it -> the member
/// inserted first, its other members kept; null or anything else -> the value replaced.
fn include_usage_edit(
    raw: &[u8],
    stream_options: Option<Range<usize>>,
) -> (Range<usize>, Cow<'static, [u8]>) {
    const MEMBER: &[u8] = br#""stream_options":{"include_usage":true},"#;
    const VALUE: &[u8] = br#"{"include_usage":true}"#;
    let Some(span) = stream_options.filter(|s| s.end <= raw.len() && s.start < s.end) else {
        // The body parsed as an object with a `model`, so it has a `{` and a member after it.
        let at = raw.iter().position(|b| *b == b'{').map_or(0, |i| i + 1);
        return (at..at, Cow::Borrowed(MEMBER));
    };
    let value = &raw[span.clone()];
    if value.starts_with(b"{") {
        if let Ok(members) = json::top_level(value) {
            if let Some((_, v)) = members.iter().find(|(k, _)| k == "include_usage") {
                let at = json::span_of(value, v);
                return (
                    span.start + at.start..span.start + at.end,
                    Cow::Borrowed(b"true"),
                );
            }
            if !members.is_empty() {
                let at = span.start + 1;
                return (at..at, Cow::Borrowed(br#""include_usage":true,"#));
            }
        }
    }
    (span, Cow::Borrowed(VALUE))
}
