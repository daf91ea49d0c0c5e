//! OpenAI Responses' wire types, declared once for request, response and stream: usage,
//! status, ids, output items, the `response` object (as written and as a provider sends it)
//! and raw input items. The `response` object and its output items are written by one set of
//! types, shared by the non-streamed encoder and the stream encoder (whose
//! `response.completed` carries the same object), so the two cannot drift apart.
use std::borrow::Cow;

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::units::Usage;
use crate::wire::ir::StopReason;

/// The part of an id after the `resp_`-style prefix of the format it came from, so the item
/// ids of one response share it. Anything but `[A-Za-z0-9_-]` is dropped (ids end up in
/// logs and in clients' stores); an empty result gets a fresh random id.
pub(super) fn id_base(id: &str) -> String {
    let rest = ["resp_", "chatcmpl-", "msg_"]
        .iter()
        .find_map(|p| id.strip_prefix(p))
        .unwrap_or(id);
    let base: String = rest
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(96)
        .collect();
    if base.is_empty() {
        random_hex()
    } else {
        base
    }
}

pub(super) fn random_hex() -> String {
    use rand::Rng;
    let bytes: [u8; 12] = rand::thread_rng().gen();
    hex::encode(bytes)
}

/// The Responses id for a provider's response id: kept when it already is one.
pub(super) fn response_id(id: &str, base: &str) -> String {
    if id.starts_with("resp_") && id.len() > 5 {
        id.to_string()
    } else {
        format!("resp_{base}")
    }
}

/// Ids of output items: `msg_…`, `fc_…`, `rs_…`, numbered by output index.
pub(super) fn item_id(prefix: &str, base: &str, output_index: usize) -> String {
    format!("{prefix}_{base}_{output_index}")
}

/// `usage` as the Responses API writes it.
pub(super) struct UsageOut<'u>(pub(super) &'u Usage);

impl Serialize for UsageOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let u = self.0;
        let mut m = s.serialize_map(Some(5))?;
        m.serialize_entry("input_tokens", &u.input)?;
        m.serialize_entry(
            "input_tokens_details",
            &InputDetails {
                cached_tokens: u.cached_input,
                cache_write_tokens: u.cache_write,
            },
        )?;
        m.serialize_entry("output_tokens", &u.output)?;
        m.serialize_entry(
            "output_tokens_details",
            &OutputDetails {
                reasoning_tokens: u.reasoning,
            },
        )?;
        m.serialize_entry("total_tokens", &(u.input.saturating_add(u.output)))?;
        m.end()
    }
}

#[derive(Serialize, Deserialize, Default)]
pub(super) struct InputDetails {
    #[serde(default)]
    pub(super) cached_tokens: u64,
    #[serde(default)]
    pub(super) cache_write_tokens: u64,
}

#[derive(Serialize, Deserialize, Default)]
pub(super) struct OutputDetails {
    #[serde(default)]
    pub(super) reasoning_tokens: u64,
}

/// `usage` as a provider reports it. Counts that are null or missing are 0.
#[derive(Deserialize, Default)]
pub(super) struct UsageIn {
    #[serde(default, deserialize_with = "nullable")]
    pub(super) input_tokens: u64,
    #[serde(default, deserialize_with = "nullable")]
    pub(super) input_tokens_details: InputDetails,
    #[serde(default, deserialize_with = "nullable")]
    pub(super) output_tokens: u64,
    #[serde(default, deserialize_with = "nullable")]
    pub(super) output_tokens_details: OutputDetails,
}

impl UsageIn {
    pub(super) fn to_ir(&self) -> Usage {
        Usage {
            input: self.input_tokens,
            cached_input: self.input_tokens_details.cached_tokens,
            cache_write: self.input_tokens_details.cache_write_tokens,
            output: self.output_tokens,
            reasoning: self.output_tokens_details.reasoning_tokens,
        }
    }
}

/// `null` reads as the type's default.
pub(super) fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Item status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    InProgress,
    Completed,
    Incomplete,
}

impl Status {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Incomplete => "incomplete",
        }
    }
}

/// One output item of a response, in the form the stream encoder accumulates and both
/// encoders write.
#[derive(Debug)]
pub(super) enum OutItem<'x> {
    Message {
        id: String,
        status: Status,
        /// One `output_text` part each.
        parts: Vec<Cow<'x, str>>,
    },
    FunctionCall {
        id: String,
        call_id: Cow<'x, str>,
        name: Cow<'x, str>,
        arguments: Cow<'x, str>,
        status: Status,
    },
    Reasoning {
        id: String,
        /// The summary text; no summary part when empty.
        summary: Cow<'x, str>,
        encrypted_content: Option<Cow<'x, str>>,
    },
}

impl OutItem<'_> {
    /// The item as `response.output_item.added` announces it: no content yet.
    pub(super) fn added(&self) -> Added<'_, '_> {
        Added(self)
    }
}

/// An output-text part: `{"type":"output_text","text","annotations":[]}`.
pub(super) struct TextPart<'t>(pub(super) &'t str);

impl Serialize for TextPart<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("type", "output_text")?;
        m.serialize_entry("text", self.0)?;
        m.serialize_entry("annotations", &[(); 0])?;
        m.end()
    }
}

/// A summary part: `{"type":"summary_text","text"}`.
pub(super) struct SummaryPart<'t>(pub(super) &'t str);

impl Serialize for SummaryPart<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("type", "summary_text")?;
        m.serialize_entry("text", self.0)?;
        m.end()
    }
}

pub(super) struct Parts<'p, 'x>(pub(super) &'p [Cow<'x, str>]);

impl Serialize for Parts<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for p in self.0 {
            seq.serialize_element(&TextPart(p))?;
        }
        seq.end()
    }
}

impl Serialize for OutItem<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        write_item(self, false, s)
    }
}

pub(super) struct Added<'a, 'x>(pub(super) &'a OutItem<'x>);

impl Serialize for Added<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        write_item(self.0, true, s)
    }
}

pub(super) fn write_item<S: Serializer>(
    item: &OutItem<'_>,
    added: bool,
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut m = s.serialize_map(None)?;
    match item {
        OutItem::Message { id, status, parts } => {
            m.serialize_entry("type", "message")?;
            m.serialize_entry("id", id)?;
            m.serialize_entry("status", status.as_str())?;
            m.serialize_entry("role", "assistant")?;
            let parts: &[Cow<'_, str>] = if added { &[] } else { parts };
            m.serialize_entry("content", &Parts(parts))?;
        }
        OutItem::FunctionCall {
            id,
            call_id,
            name,
            arguments,
            status,
        } => {
            m.serialize_entry("type", "function_call")?;
            m.serialize_entry("id", id)?;
            m.serialize_entry("call_id", call_id)?;
            m.serialize_entry("name", name)?;
            m.serialize_entry("arguments", if added { "" } else { arguments })?;
            m.serialize_entry("status", status.as_str())?;
        }
        OutItem::Reasoning {
            id,
            summary,
            encrypted_content,
        } => {
            m.serialize_entry("type", "reasoning")?;
            m.serialize_entry("id", id)?;
            if added || summary.is_empty() {
                m.serialize_entry("summary", &[(); 0])?;
            } else {
                m.serialize_entry("summary", &[SummaryPart(summary)])?;
            }
            if let (false, Some(enc)) = (added, encrypted_content) {
                m.serialize_entry("encrypted_content", enc)?;
            }
        }
    }
    m.end()
}

/// How a response ended, as the `response` object says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    InProgress,
    Completed,
    /// `incomplete` with `incomplete_details.reason`.
    Incomplete(&'static str),
    Failed,
}

impl Outcome {
    pub(super) fn of(stop: Option<StopReason>) -> Outcome {
        match stop {
            Some(StopReason::MaxTokens) => Outcome::Incomplete("max_output_tokens"),
            Some(StopReason::ContentFilter) => Outcome::Incomplete("content_filter"),
            _ => Outcome::Completed,
        }
    }
}

/// The `response` object: what `client.responses.create(...)` returns and what the stream's
/// `response.*` lifecycle events carry. Request parameters the gateway does not know are
/// written with the API's defaults so SDK models find every field they declare.
pub(super) struct ResponseObject<'r, 'x> {
    pub(super) id: &'r str,
    pub(super) created_at: u64,
    pub(super) model: &'r str,
    pub(super) outcome: Outcome,
    /// `error.message` when failed.
    pub(super) error: Option<&'r str>,
    pub(super) output: &'r [OutItem<'x>],
    /// None is `null` (a response still in progress).
    pub(super) usage: Option<&'r Usage>,
}

impl Serialize for ResponseObject<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Error<'e> {
            code: &'static str,
            message: &'e str,
        }
        #[derive(Serialize)]
        struct Incomplete {
            reason: &'static str,
        }
        let status = match self.outcome {
            Outcome::InProgress => "in_progress",
            Outcome::Completed => "completed",
            Outcome::Incomplete(_) => "incomplete",
            Outcome::Failed => "failed",
        };
        let null = ();
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", self.id)?;
        m.serialize_entry("object", "response")?;
        m.serialize_entry("created_at", &self.created_at)?;
        m.serialize_entry("status", status)?;
        match (self.outcome, self.error) {
            (Outcome::Failed, message) => m.serialize_entry(
                "error",
                &Error {
                    code: "server_error",
                    message: message.unwrap_or("The provider failed."),
                },
            )?,
            _ => m.serialize_entry("error", &null)?,
        }
        match self.outcome {
            Outcome::Incomplete(reason) => {
                m.serialize_entry("incomplete_details", &Incomplete { reason })?
            }
            _ => m.serialize_entry("incomplete_details", &null)?,
        }
        m.serialize_entry("instructions", &null)?;
        m.serialize_entry("max_output_tokens", &null)?;
        m.serialize_entry("model", self.model)?;
        m.serialize_entry("output", self.output)?;
        m.serialize_entry("parallel_tool_calls", &true)?;
        m.serialize_entry("previous_response_id", &null)?;
        m.serialize_entry("store", &false)?;
        m.serialize_entry("temperature", &null)?;
        m.serialize_entry("tool_choice", "auto")?;
        m.serialize_entry("tools", &[(); 0])?;
        m.serialize_entry("top_p", &null)?;
        m.serialize_entry("truncation", "disabled")?;
        m.serialize_entry("usage", &self.usage.map(UsageOut))?;
        m.serialize_entry("user", &null)?;
        m.serialize_entry("metadata", &serde_json::Map::new())?;
        m.end()
    }
}

/// An output or input item with every field raw: one pass over the item whatever its type
/// (a field of an unexpected type in an item the gateway skips is never an error); fields
/// are read from their slices once the type is known.
#[derive(Deserialize, Default)]
pub(super) struct RawItem<'a> {
    #[serde(rename = "type", borrow, default)]
    pub(super) kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) role: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) call_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) arguments: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) output: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) summary: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) encrypted_content: Option<&'a RawValue>,
}

impl RawItem<'_> {
    pub(super) fn id(&self) -> Option<String> {
        opt_str(self.id).map(Cow::into_owned)
    }
}

/// A JSON string that borrows from the input when it has no escapes. (A bare `Cow<str>`
/// always deserializes owned; only a `#[serde(borrow)]` field borrows.)
#[derive(Deserialize, Debug)]
#[serde(transparent)]
pub(super) struct Str<'a>(#[serde(borrow)] pub(super) Cow<'a, str>);

/// A string field, if it is one (`None` for null, missing or another type).
pub(super) fn opt_str<'a>(v: Option<&'a RawValue>) -> Option<Cow<'a, str>> {
    v.and_then(|v| serde_json::from_str::<Str<'a>>(v.get()).ok())
        .map(|s| s.0)
}

/// A part of message content or of a reasoning summary, every field raw.
#[derive(Deserialize, Default)]
pub(super) struct RawPart<'a> {
    #[serde(rename = "type", borrow, default)]
    pub(super) kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) refusal: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) image_url: Option<&'a RawValue>,
}

/// The texts of a reasoning item's `summary` (or, failing that, its `content` of
/// `reasoning_text` parts, as open-weight models behind Responses-compatible servers send),
/// joined with blank lines.
pub(super) fn reasoning_text<'a>(
    summary: Option<&'a RawValue>,
    content: Option<&'a RawValue>,
) -> Cow<'a, str> {
    let texts = |v: Option<&'a RawValue>, only: Option<&str>| -> Vec<Cow<'a, str>> {
        let parts: Vec<RawPart<'a>> = v
            .and_then(|v| serde_json::from_str(v.get()).ok())
            .unwrap_or_default();
        parts
            .iter()
            .filter(|p| only.is_none() || opt_str(p.kind).as_deref() == only)
            .filter_map(|p| opt_str(p.text))
            .filter(|t| !t.is_empty())
            .collect()
    };
    let mut found = texts(summary, None);
    if found.is_empty() {
        found = texts(content, Some("reasoning_text"));
    }
    join(found, "\n\n")
}

/// Join texts, borrowing when there is only one.
pub(super) fn join<'a>(mut texts: Vec<Cow<'a, str>>, sep: &str) -> Cow<'a, str> {
    match texts.len() {
        0 => Cow::Borrowed(""),
        1 => texts.pop().unwrap_or_default(),
        _ => Cow::Owned(
            texts
                .iter()
                .map(|t| t.as_ref())
                .collect::<Vec<_>>()
                .join(sep),
        ),
    }
}

/// The `response` object as a provider sends it (the body, or `response` in stream events).
#[derive(Deserialize, Default)]
pub(super) struct RawResponse<'a> {
    #[serde(borrow, default)]
    pub(super) id: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub(super) model: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub status: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub incomplete_details: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub error: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub output: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    pub usage: Option<&'a RawValue>,
}

#[derive(Deserialize)]
pub(super) struct Reason<'a> {
    #[serde(borrow, default)]
    pub(super) reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub(super) struct ErrorBody<'a> {
    #[serde(borrow, default)]
    pub(super) message: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) code: Option<Cow<'a, str>>,
}

impl<'a> RawResponse<'a> {
    pub fn status(&self) -> Option<&str> {
        self.status.as_ref().map(|s| s.0.as_ref())
    }

    /// The usage it reports, if readable.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
            .and_then(|u| serde_json::from_str::<Option<UsageIn>>(u.get()).ok())
            .flatten()
            .map(|u| u.to_ir())
    }

    /// The stop reason its status says, given whether the output called a function.
    pub fn stop(&self, called: bool) -> StopReason {
        match self.status() {
            Some("incomplete") => {
                let reason = self
                    .incomplete_details
                    .and_then(|d| serde_json::from_str::<Reason<'_>>(d.get()).ok())
                    .and_then(|r| r.reason);
                match reason.as_deref() {
                    Some("content_filter") => StopReason::ContentFilter,
                    _ => StopReason::MaxTokens,
                }
            }
            _ if called => StopReason::ToolUse,
            _ => StopReason::EndTurn,
        }
    }

    /// Whether any output item is a function call.
    pub fn calls_a_function(&self) -> bool {
        self.output.iter().flatten().any(|item| {
            serde_json::from_str::<RawItem<'_>>(item.get())
                .ok()
                .and_then(|i| opt_str(i.kind))
                .as_deref()
                == Some("function_call")
        })
    }

    /// The error message of a failed response.
    pub fn error_message(&self) -> String {
        let e = self
            .error
            .and_then(|e| serde_json::from_str::<ErrorBody<'_>>(e.get()).ok());
        match e {
            Some(ErrorBody {
                message: Some(m), ..
            }) => m.into_owned(),
            Some(ErrorBody { code: Some(c), .. }) => c.into_owned(),
            _ => "the provider's response failed".to_string(),
        }
    }
}
