//! OpenAI Chat Completions requests: parse once, validate, extract features, rewrite `model`.

use std::borrow::Cow;
use std::ops::Range;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::errors::{ErrorKind, FluxError};
use crate::routing::Features;

/// Tokens counted for an image regardless of its encoded size (a high-detail tile budget).
const TOKENS_PER_IMAGE: u64 = 1_000;

/// A validated Chat Completions request.
#[derive(Debug)]
pub struct ChatRequest {
    body: Map<String, Value>,
    /// The client's bytes, forwarded as they are but for the `model` value.
    raw: Bytes,
    /// Where the top-level `model` value (with its quotes) sits in `raw`.
    model_span: Range<usize>,
    /// What the client asked for (`flux-auto`, an alias or a pinned id).
    pub model: String,
    pub stream: bool,
    /// Routing features except the text cues, which only flux-auto needs.
    pub features: Features,
}

fn bad(message: impl Into<Cow<'static, str>>) -> FluxError {
    FluxError::new(ErrorKind::InvalidRequest, message)
}

/// The top-level object, read in one pass: every member as a `Value`, and the top-level
/// `model` also borrowed raw, so its position in the input is known for the rewrite.
struct TopLevel<'a> {
    body: Map<String, Value>,
    model_raw: Option<&'a RawValue>,
}

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TopLevelVisitor)
    }
}

struct TopLevelVisitor;

impl<'de> serde::de::Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut body = Map::new();
        let mut model_raw = None;
        while let Some(key) = map.next_key::<String>()? {
            let value = if key == "model" {
                let raw: &'de RawValue = map.next_value()?;
                model_raw = Some(raw);
                serde_json::from_str(raw.get()).map_err(serde::de::Error::custom)?
            } else {
                map.next_value()?
            };
            body.insert(key, value);
        }
        Ok(TopLevel { body, model_raw })
    }
}

impl ChatRequest {
    pub fn parse(raw: Bytes) -> Result<Self, FluxError> {
        let bytes = &raw[..];
        let TopLevel { body, model_raw } =
            serde_json::from_slice(bytes).map_err(|e| match e.classify() {
                serde_json::error::Category::Data => bad("The request body must be a JSON object."),
                _ => bad(format!("Malformed JSON in request body: {e}.")),
            })?;
        let model = match body.get("model") {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            Some(Value::String(_)) | None | Some(Value::Null) => {
                return Err(bad(
                    "'model' is required: use flux-auto, a lane alias or a pinned id.",
                ))
            }
            Some(_) => return Err(bad("'model' must be a string.")),
        };
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad("'stream' must be a boolean (true or false).")),
        };
        let messages = match body.get("messages") {
            Some(Value::Array(m)) => m,
            None => {
                return Err(bad(
                    "'messages' is required: an array of {role, content} objects.",
                ))
            }
            Some(_) => {
                return Err(bad(
                    "'messages' must be an array of {role, content} objects.",
                ))
            }
        };
        if messages.is_empty() {
            return Err(FluxError::new(
                ErrorKind::EmptyPrompt,
                "The prompt is empty: 'messages' has no entries.",
            ));
        }

        let mut scan = Scan::default();
        for (i, message) in messages.iter().enumerate() {
            scan.message(i, message)?;
        }
        if !scan.has_content {
            return Err(FluxError::new(
                ErrorKind::EmptyPrompt,
                "The prompt is empty: add message content.",
            ));
        }

        let tools = ["tools", "functions"].iter().any(|k| {
            body.get(*k)
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
        });
        let max_tokens = ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|k| body.get(*k).and_then(Value::as_u64));
        // Where `model` sits, so the rewrite can splice the provider's id into the client's
        // bytes instead of serializing the whole body. `model` was checked to be a string.
        let model_raw = model_raw
            .expect("a valid model was read from the top level")
            .get();
        let start = model_raw.as_ptr() as usize - bytes.as_ptr() as usize;
        let model_span = start..start + model_raw.len();
        let text_bytes = (bytes.len() as u64).saturating_sub(scan.image_bytes);
        let features = Features {
            input_tokens: text_bytes.div_ceil(4) + scan.images * TOKENS_PER_IMAGE,
            tools,
            images: scan.images > 0,
            stream,
            max_tokens,
            messages: messages.len(),
            code: false,
            reasoning: false,
        };
        Ok(ChatRequest {
            body,
            raw,
            model_span,
            model,
            stream,
            features,
        })
    }

    /// The text of the last user message, where flux-auto looks for code and reasoning cues.
    pub fn last_user_text(&self) -> Cow<'_, str> {
        let last_user = self
            .messages()
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"));
        match last_user.and_then(|m| m.get("content")) {
            Some(Value::String(s)) => Cow::Borrowed(s),
            Some(Value::Array(parts)) => {
                let texts: Vec<&str> = parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect();
                Cow::Owned(texts.join("\n"))
            }
            _ => Cow::Borrowed(""),
        }
    }

    fn messages(&self) -> &[Value] {
        self.body
            .get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The body to send upstream: the client's bytes with the `model` value replaced by the
    /// provider's id. Everything else reaches the provider exactly as the client wrote it.
    pub fn encode_for(&self, upstream_model: &str) -> Bytes {
        let quoted = serde_json::to_string(upstream_model).expect("a string always serializes");
        let (before, after) = (
            &self.raw[..self.model_span.start],
            &self.raw[self.model_span.end..],
        );
        let mut out = Vec::with_capacity(before.len() + quoted.len() + after.len());
        out.extend_from_slice(before);
        out.extend_from_slice(quoted.as_bytes());
        out.extend_from_slice(after);
        Bytes::from(out)
    }
}

/// What a pass over the messages learns.
#[derive(Default)]
struct Scan {
    has_content: bool,
    images: u64,
    /// Bytes of inline image data, left out of the token estimate.
    image_bytes: u64,
}

impl Scan {
    fn message(&mut self, i: usize, message: &Value) -> Result<(), FluxError> {
        let Value::Object(m) = message else {
            return Err(bad(format!(
                "messages[{i}] must be an object with 'role' and 'content'."
            )));
        };
        match m.get("role").and_then(Value::as_str) {
            Some("system" | "developer" | "user" | "assistant" | "tool" | "function") => {}
            Some(other) => {
                return Err(bad(format!(
                "messages[{i}].role '{}' is not one of system, developer, user, assistant, tool.",
                other.chars().take(32).collect::<String>()
            )))
            }
            None => return Err(bad(format!("messages[{i}].role is required."))),
        }
        if m.get("tool_calls")
            .and_then(Value::as_array)
            .is_some_and(|c| !c.is_empty())
        {
            self.has_content = true;
        }
        match m.get("content") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => self.has_content |= !s.trim().is_empty(),
            Some(Value::Array(parts)) => {
                for (j, part) in parts.iter().enumerate() {
                    self.part(i, j, part)?;
                }
            }
            Some(_) => {
                return Err(bad(format!(
                    "messages[{i}].content must be a string or an array of content parts."
                )))
            }
        }
        Ok(())
    }

    fn part(&mut self, i: usize, j: usize, part: &Value) -> Result<(), FluxError> {
        let kind = part.get("type").and_then(Value::as_str);
        match kind {
            Some("text" | "input_text") => {
                let text = part.get("text").and_then(Value::as_str).ok_or_else(|| {
                    bad(format!("messages[{i}].content[{j}].text must be a string."))
                })?;
                self.has_content |= !text.trim().is_empty();
            }
            Some("image_url" | "input_image" | "image") => {
                self.has_content = true;
                self.images += 1;
                let url = part
                    .get("image_url")
                    .map(|u| u.get("url").unwrap_or(u))
                    .and_then(Value::as_str);
                self.image_bytes += url.map_or(0, |u| u.len() as u64);
            }
            Some(_) => self.has_content = true, // audio, files: content the provider judges
            None => return Err(bad(format!("messages[{i}].content[{j}] needs a 'type'."))),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ChatRequest, FluxError> {
        ChatRequest::parse(Bytes::from(serde_json::to_vec(&v).unwrap()))
    }

    #[test]
    fn a_plain_request_parses_with_features() {
        let r = parse(json!({"model":"flux-auto","messages":[{"role":"user","content":"ping"}]}))
            .unwrap();
        assert_eq!(r.model, "flux-auto");
        assert!(!r.stream);
        assert_eq!(r.features.messages, 1);
        assert!(!r.features.tools && !r.features.images);
        assert!(r.features.input_tokens > 0);
        assert_eq!(r.last_user_text(), "ping");
    }

    #[test]
    fn shape_errors_are_400_with_the_reason() {
        let cases = [
            (json!([1]), "JSON object"),
            (
                json!({"messages":[{"role":"user","content":"x"}]}),
                "'model' is required",
            ),
            (json!({"model":7,"messages":[]}), "'model' must be a string"),
            (
                json!({"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}),
                "'stream' must be a boolean",
            ),
            (
                json!({"model":"m","messages":{}}),
                "'messages' must be an array",
            ),
            (
                json!({"model":"m","messages":["hi"]}),
                "messages[0] must be an object",
            ),
            (
                json!({"model":"m","messages":[{"role":"wizard","content":"x"}]}),
                "not one of",
            ),
            (
                json!({"model":"m","messages":[{"role":"user","content":5}]}),
                "must be a string or an array",
            ),
        ];
        for (body, expect) in cases {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!((e.status(), e.code()), (400, "invalid_request"), "{body}");
            assert!(e.message.contains(expect), "{body}: {}", e.message);
        }
        let e = ChatRequest::parse(Bytes::from_static(b"{\"model\": ")).unwrap_err();
        assert!(e.message.starts_with("Malformed JSON"), "{}", e.message);
    }

    #[test]
    fn empty_prompts_are_400_empty_prompt() {
        for body in [
            json!({"model":"m","messages":[]}),
            json!({"model":"m","messages":[{"role":"user","content":"   "}]}),
            json!({"model":"m","messages":[{"role":"user","content":[{"type":"text","text":""}]}]}),
        ] {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!((e.status(), e.code()), (400, "empty_prompt"), "{body}");
        }
    }

    #[test]
    fn tools_images_and_limits_are_detected() {
        let big_image = format!("data:image/png;base64,{}", "A".repeat(400_000));
        let r = parse(json!({
            "model": "flux-auto", "stream": true, "max_tokens": 5000,
            "tools": [{"type":"function","function":{"name":"f"}}],
            "messages": [
                {"role":"system","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"what is this"},
                                          {"type":"image_url","image_url":{"url": big_image}}]}
            ]
        }))
        .unwrap();
        assert!(r.stream && r.features.stream && r.features.tools && r.features.images);
        assert_eq!(r.features.max_tokens, Some(5000));
        // The image's 400 KB of base64 count as one image, not 100k tokens.
        assert!(
            r.features.input_tokens < 2_000,
            "{}",
            r.features.input_tokens
        );
        assert_eq!(r.last_user_text(), "what is this");
    }

    #[test]
    fn encode_rewrites_only_the_top_level_model_and_keeps_the_client_bytes() {
        let raw = r#"{"temperature":0.5, "metadata":{"model":"mine"},
            "model" :  "flux-fast","messages":[{"role":"user","content":"say \"model\": x"}],"x":1.0e0}"#;
        let r = ChatRequest::parse(Bytes::from(raw)).unwrap();
        assert_eq!(r.model, "flux-fast");
        let out = r.encode_for("org/gpt-4o-mini");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            raw.replace(r#""flux-fast""#, r#""org/gpt-4o-mini""#)
        );
        // Another target for a fallback starts again from the client's bytes.
        let again = r.encode_for("b");
        assert!(std::str::from_utf8(&again)
            .unwrap()
            .contains(r#""model" :  "b""#));
        // Ids needing escapes stay valid JSON.
        let odd: Value = serde_json::from_slice(&r.encode_for("a\"b")).unwrap();
        assert_eq!(odd["model"], "a\"b");
    }
}
