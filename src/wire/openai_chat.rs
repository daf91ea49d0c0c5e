//! OpenAI Chat Completions requests: parse once, validate, extract features, rewrite `model`.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::errors::{ErrorKind, FluxError};
use crate::routing::Features;

/// Tokens counted for an image regardless of its encoded size (a high-detail tile budget).
const TOKENS_PER_IMAGE: u64 = 1_000;

/// A validated Chat Completions request.
#[derive(Debug)]
pub struct ChatRequest {
    body: Map<String, Value>,
    /// What the client asked for (`flux-auto`, an alias or a pinned id).
    pub model: String,
    pub stream: bool,
    /// Routing features except the text cues, which only flux-auto needs.
    pub features: Features,
}

fn bad(message: impl Into<Cow<'static, str>>) -> FluxError {
    FluxError::new(ErrorKind::InvalidRequest, message)
}

impl ChatRequest {
    pub fn parse(bytes: &[u8]) -> Result<Self, FluxError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("Malformed JSON in request body: {e}.")))?;
        let Value::Object(body) = value else {
            return Err(bad("The request body must be a JSON object."));
        };
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

    /// The body to send upstream: the client's, with `model` set to the provider's id.
    /// Key order is preserved, so the provider sees the request as the client wrote it.
    pub fn encode_for(&mut self, upstream_model: &str) -> Vec<u8> {
        if let Some(slot) = self.body.get_mut("model") {
            *slot = Value::String(upstream_model.to_string());
        }
        serde_json::to_vec(&self.body).expect("a JSON map always serializes")
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
        ChatRequest::parse(&serde_json::to_vec(&v).unwrap())
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
        let e = ChatRequest::parse(b"{\"model\": ").unwrap_err();
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
    fn encode_rewrites_only_the_model_and_keeps_key_order() {
        let mut r = ChatRequest::parse(
            br#"{"temperature":0.5,"model":"flux-fast","messages":[{"role":"user","content":"hi"}],"x_extra":{"a":1}}"#,
        )
        .unwrap();
        let out = String::from_utf8(r.encode_for("gpt-4o-mini")).unwrap();
        assert_eq!(
            out,
            r#"{"temperature":0.5,"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"x_extra":{"a":1}}"#
        );
    }
}
