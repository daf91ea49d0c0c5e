//! Non-streamed responses: decode a provider's body into the IR, encode the IR for a client.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    id_base, item_id, opt_str, reasoning_text, response_id, OutItem, Outcome, RawItem, RawPart,
    ResponseObject, Status, UsageIn,
};
use crate::wire::ir::{Arguments, Block, Response, StopReason, Usage};

/// The `response` object as a provider sends it (the body, or `response` in stream events).
#[derive(Deserialize, Default)]
pub(super) struct RawResponse<'a> {
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub status: Option<Cow<'a, str>>,
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
struct Reason<'a> {
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
}

impl<'a> RawResponse<'a> {
    /// The usage it reports, if readable.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
            .and_then(|u| serde_json::from_str::<Option<UsageIn>>(u.get()).ok())
            .flatten()
            .map(|u| u.to_ir())
    }

    /// The stop reason its status says, given whether the output called a function.
    pub fn stop(&self, called: bool) -> StopReason {
        match self.status.as_deref() {
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

/// Decode a provider's successful (2xx) body. The error is a reason for the log.
pub fn decode_response(body: &[u8]) -> Result<Response<'_>, String> {
    let raw: RawResponse<'_> = serde_json::from_slice(body)
        .map_err(|e| format!("the provider's Responses body is not a response object: {e}"))?;
    if raw.status.as_deref() == Some("failed") {
        return Err(format!(
            "the provider's response failed: {}",
            raw.error_message()
        ));
    }
    let mut content = Vec::new();
    let mut called = false;
    for item in raw.output.iter().flatten() {
        let Ok(fields) = serde_json::from_str::<RawItem<'_>>(item.get()) else {
            continue;
        };
        match opt_str(fields.kind).as_deref() {
            Some("message") => {
                let parts: Vec<RawPart<'_>> = fields
                    .content
                    .and_then(|c| serde_json::from_str(c.get()).ok())
                    .unwrap_or_default();
                for p in parts {
                    let text = match opt_str(p.kind).as_deref() {
                        Some("output_text") => opt_str(p.text),
                        Some("refusal") => opt_str(p.refusal),
                        _ => None,
                    };
                    if let Some(text) = text {
                        content.push(Block::Text {
                            text,
                            cache_control: None,
                        });
                    }
                }
            }
            Some("function_call") => {
                called = true;
                content.push(Block::ToolCall {
                    id: opt_str(fields.call_id).unwrap_or_default(),
                    name: opt_str(fields.name).unwrap_or_default(),
                    arguments: Arguments::Text(opt_str(fields.arguments).unwrap_or_default()),
                });
            }
            Some("reasoning") => {
                let text = reasoning_text(fields.summary, fields.content);
                let encrypted = opt_str(fields.encrypted_content).filter(|e| !e.is_empty());
                match (text.is_empty(), encrypted) {
                    (false, signature) => content.push(Block::Thinking { text, signature }),
                    (true, Some(data)) => content.push(Block::RedactedThinking { data }),
                    (true, None) => {}
                }
            }
            _ => {} // hosted tool calls and the like: nothing another format can show
        }
    }
    Ok(Response {
        stop: raw.stop(called),
        usage: raw.usage().unwrap_or_default(),
        id: raw.id.unwrap_or_default(),
        model: raw.model.unwrap_or_default(),
        content,
    })
}

/// The output items of IR content: consecutive texts share one message.
pub(super) fn output_items<'x>(content: &'x [Block<'_>], base: &str) -> Vec<OutItem<'x>> {
    let mut items: Vec<OutItem<'x>> = Vec::new();
    for b in content {
        let n = items.len();
        match b {
            Block::Text { text, .. } => match items.last_mut() {
                Some(OutItem::Message { parts, .. }) => parts.push(Cow::Borrowed(text)),
                _ => items.push(OutItem::Message {
                    id: item_id("msg", base, n),
                    status: Status::Completed,
                    parts: vec![Cow::Borrowed(text)],
                }),
            },
            Block::ToolCall {
                id,
                name,
                arguments,
            } => items.push(OutItem::FunctionCall {
                id: item_id("fc", base, n),
                call_id: Cow::Borrowed(id),
                name: Cow::Borrowed(name),
                arguments: Cow::Borrowed(match arguments {
                    Arguments::Text(t) => t,
                    Arguments::Json(raw) => raw.get(),
                }),
                status: Status::Completed,
            }),
            Block::Thinking { text, signature } => items.push(OutItem::Reasoning {
                id: item_id("rs", base, n),
                summary: Cow::Borrowed(text),
                encrypted_content: signature.as_deref().map(Cow::Borrowed),
            }),
            Block::RedactedThinking { data } => items.push(OutItem::Reasoning {
                id: item_id("rs", base, n),
                summary: Cow::Borrowed(""),
                encrypted_content: Some(Cow::Borrowed(data)),
            }),
            Block::Image(_) | Block::ToolResult { .. } => {}
        }
    }
    items
}

/// Encode a response for a client of this format.
pub fn encode_response(resp: &Response<'_>) -> Vec<u8> {
    let base = id_base(&resp.id);
    let id = response_id(&resp.id, &base);
    let output = output_items(&resp.content, &base);
    let created_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let object = ResponseObject {
        id: &id,
        created_at,
        model: &resp.model,
        outcome: Outcome::of(Some(resp.stop)),
        error: None,
        output: &output,
        usage: Some(&resp.usage),
    };
    serde_json::to_vec(&object).expect("a response always serializes")
}
