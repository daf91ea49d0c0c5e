//! Writing the billed cost into what a client receives: `cost` in the final usage object of
//! its format, and the SSE comment after the last event. The amount always comes from the
//! caller (what the settlement billed); nothing here prices anything.

use std::borrow::Cow;

use bytes::BytesMut;
use serde_json::value::RawValue;

use crate::wire::codec::UsageProbe;
use crate::wire::format::Format;
use crate::wire::ir::Billed;
use crate::wire::json;
use crate::wire::sse::{self, Frame};

/// The comment that ends a billed stream: `: x-flux-cost-usd=… input_tokens=…`, ignored by
/// every SSE parser and readable by a person.
pub(super) fn write_comment(out: &mut BytesMut, billed: &Billed) {
    let u = &billed.usage;
    sse::write_comment(
        out,
        &format!(
            "x-flux-cost-usd={} input_tokens={} output_tokens={} cached_input_tokens={}",
            billed.cost.to_decimal(),
            u.input,
            u.output,
            u.cached_input
        ),
    );
}

/// A passthrough event that carries the final usage object, written with `billed.cost` in
/// it; as it came when the stream was not billed or the object cannot take it.
pub(super) fn write_priced(
    client: Format,
    carrier: &Frame,
    billed: Option<&Billed>,
    out: &mut BytesMut,
) {
    let event = carrier.event();
    let priced =
        billed.and_then(|b| with_cost(client, event.name, &event.data, &b.cost.to_decimal()));
    match priced {
        Some(data) => write_data(out, event.name, &data),
        None => out.extend_from_slice(&carrier.0),
    }
}

/// Write an event whose data may hold line breaks (a provider's multi-line `data:`).
pub(super) fn write_data(out: &mut BytesMut, name: Option<&str>, data: &str) {
    if !data.contains(['\n', '\r']) {
        sse::write_event(out, name, data.as_bytes());
        return;
    }
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\n");
    }
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.trim_end_matches('\r').as_bytes());
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"\n");
}

/// A Chat chunk that is only there for its usage: `usage` set and `choices` empty or absent.
pub(super) fn is_usage_chunk(data: &str) -> bool {
    let Ok(p) = serde_json::from_str::<UsageProbe>(data) else {
        return false;
    };
    let no_choices = p.choices.is_none_or(|c| {
        let c = c.get().as_bytes();
        c.first() == Some(&b'[') && c[1..].iter().all(|b| b.is_ascii_whitespace() || *b == b']')
    });
    p.usage.is_some() && no_choices
}

/// One event's data with `"cost": <cost>` set in the final usage object a client of
/// `format` reads ([`Codec::final_usage`]). `cost` is a decimal (`Usd::to_decimal`) written as the
/// JSON number's digits. An existing `cost` member gets the new value; every other byte
/// stays. None when the event has no such usage object.
///
/// [`Codec::final_usage`]: crate::wire::codec::Codec::final_usage
pub fn with_cost(format: Format, name: Option<&str>, data: &str, cost: &str) -> Option<String> {
    set_cost(data, final_usage(format, name, data)?, cost)
}

/// The usage object of an event that a client of `format` reads as the final usage, the
/// place for `cost` (each codec says where: [`Codec::final_usage`]).
///
/// [`Codec::final_usage`]: crate::wire::codec::Codec::final_usage
pub(super) fn final_usage<'d>(
    format: Format,
    name: Option<&str>,
    data: &'d str,
) -> Option<&'d RawValue> {
    let probe: UsageProbe = serde_json::from_str(data).ok()?;
    let kind: Option<Cow<'_, str>> = match probe.kind {
        Some(k) => serde_json::from_str(k.get()).ok(),
        None => name.map(Cow::Borrowed),
    };
    let usage = format.codec().final_usage(kind.as_deref(), &probe)?;
    usage.get().starts_with('{').then_some(usage)
}

/// `data` with `"cost": <cost>` set in the object `usage` (a slice of `data`).
fn set_cost(data: &str, usage: &RawValue, cost: &str) -> Option<String> {
    let span = json::span_of(data.as_bytes(), usage);
    let members = json::top_level(usage.get().as_bytes()).ok()?;
    let (at, insert) = match members.iter().find(|(k, _)| k == "cost") {
        Some((_, v)) => (json::span_of(data.as_bytes(), v), cost.to_owned()),
        None if members.is_empty() => (span, format!("{{\"cost\":{cost}}}")),
        // Before the closing brace.
        None => (span.end - 1..span.end - 1, format!(",\"cost\":{cost}")),
    };
    let mut out = String::with_capacity(data.len() + insert.len());
    out.push_str(data.get(..at.start)?);
    out.push_str(&insert);
    out.push_str(data.get(at.end..)?);
    Some(out)
}
