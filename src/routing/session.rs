//! A conversation's identity, for prompt-cache affinity ([`super::strategy`]): the one the
//! client gives (`X-Flux-Session`, `prompt_cache_key`, `user`, `metadata.user_id`), else the
//! hash of what stays the same across its turns (system prompt, tools, first user turn).
//! Hashed with XXH3, a specified algorithm: every gateway of a fleet, whatever its platform,
//! computes the same identity and so the same target.

use xxhash_rust::xxh3::Xxh3;

use crate::wire::ir::{Arguments, Block, Image, Request, Role};

use super::strategy::{Session, SessionSource};

/// Providers cache prompt prefixes of at least this many tokens (OpenAI and Anthropic both
/// start at 1,024): below it a conversation has nothing to keep warm, and its requests are
/// spread by the lane's strategy like any other.
pub const MIN_CACHEABLE_TOKENS: u64 = 1_024;

/// The identity of the conversation `request` belongs to, if affinity can use one.
/// `header`: the `X-Flux-Session` value; `input_tokens`: the request's estimate.
pub fn session(request: &Request<'_>, header: Option<&[u8]>, input_tokens: u64) -> Option<Session> {
    let keyed = |bytes: &[u8], source| Session {
        hash: xxhash_rust::xxh3::xxh3_64(bytes),
        source,
    };
    if let Some(h) = header.filter(|h| !h.is_empty()) {
        return Some(keyed(h, SessionSource::Header));
    }
    if let Some(key) = request.cache_key().filter(|k| !k.is_empty()) {
        return Some(keyed(key.as_bytes(), SessionSource::Key));
    }
    if input_tokens < MIN_CACHEABLE_TOKENS {
        return None;
    }
    Some(Session {
        hash: prefix_hash(request),
        source: SessionSource::Prefix,
    })
}

/// System prompt, tools and the first user turn: what every later turn starts with.
fn prefix_hash(request: &Request<'_>) -> u64 {
    let mut h = Xxh3::new();
    for block in &request.system {
        block_into(&mut h, block);
    }
    for tool in &request.tools {
        h.update(tool.name.as_bytes());
        h.update(&[0]);
    }
    for m in &request.messages {
        match m.role {
            Role::System => m.content.iter().for_each(|b| block_into(&mut h, b)),
            Role::User => {
                m.content.iter().for_each(|b| block_into(&mut h, b));
                break;
            }
            Role::Assistant => {}
        }
    }
    h.digest()
}

fn block_into(h: &mut Xxh3, block: &Block<'_>) {
    match block {
        Block::Text { text, .. } | Block::Thinking { text, .. } => h.update(text.as_bytes()),
        Block::Image(Image::Url(url)) => h.update(url.as_bytes()),
        Block::Image(Image::Base64 { data, .. }) => h.update(data.as_bytes()),
        Block::ToolCall {
            name, arguments, ..
        } => {
            h.update(name.as_bytes());
            match arguments {
                Arguments::Text(t) => h.update(t.as_bytes()),
                Arguments::Json(raw) => h.update(raw.get().as_bytes()),
            }
        }
        Block::ToolResult { content, .. } => content.iter().for_each(|b| block_into(h, b)),
        Block::RedactedThinking { data } => h.update(data.as_bytes()),
    }
    // A separator: ["ab", "c"] and ["a", "bc"] are different prefixes.
    h.update(&[0xff]);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::wire::transcode::parse_request;
    use crate::wire::Format;

    fn of(format: Format, body: &serde_json::Value, header: Option<&[u8]>) -> Option<Session> {
        let raw = serde_json::to_vec(body).unwrap();
        let request = parse_request(format, &raw).unwrap();
        session(&request, header, 2_000)
    }

    #[test]
    fn the_client_s_own_identity_comes_first() {
        let body = json!({"model": "m", "prompt_cache_key": "conv-1", "user": "u",
            "messages": [{"role": "user", "content": "hi"}]});
        let keyed = of(Format::OpenAiChat, &body, None).unwrap();
        assert_eq!(keyed.source, SessionSource::Key);
        let header = of(Format::OpenAiChat, &body, Some(b"s-9")).unwrap();
        assert_eq!(header.source, SessionSource::Header);
        assert_ne!(header.hash, keyed.hash);
        // `user` when there is no cache key; Claude Code's metadata.user_id.
        let body = json!({"model": "m", "user": "u",
            "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(
            of(Format::OpenAiChat, &body, None).unwrap().source,
            SessionSource::Key
        );
        let body = json!({"model": "m", "max_tokens": 5, "metadata": {"user_id": "user_x_session_1"},
            "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(
            of(Format::Anthropic, &body, None).unwrap().source,
            SessionSource::Key
        );
        let other = json!({"model": "m", "max_tokens": 5, "metadata": {"user_id": "user_x_session_2"},
            "messages": [{"role": "user", "content": "hi"}]});
        assert_ne!(
            of(Format::Anthropic, &body, None),
            of(Format::Anthropic, &other, None)
        );
    }

    #[test]
    fn a_conversation_s_turns_share_their_prefix_identity_in_every_format() {
        let system = "You are a careful assistant. ".repeat(200);
        let turn1 = json!({"model": "m", "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": "first question"}]});
        let turn3 = json!({"model": "m", "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": "a follow-up"}]});
        let a = of(Format::OpenAiChat, &turn1, None).unwrap();
        assert_eq!(a.source, SessionSource::Prefix);
        assert_eq!(Some(a), of(Format::OpenAiChat, &turn3, None));
        // The same conversation in Anthropic's and Responses' shapes: the same identity.
        let anthropic = json!({"model": "m", "max_tokens": 9, "system": system, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "first question"}]},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": "a follow-up"}]});
        assert_eq!(Some(a), of(Format::Anthropic, &anthropic, None));
        // Its turns are counted alike, wherever the system prompt sits.
        for (format, body) in [
            (Format::OpenAiChat, &turn3),
            (Format::Anthropic, &anthropic),
        ] {
            let raw = serde_json::to_vec(body).unwrap();
            let request = parse_request(format, &raw).unwrap();
            assert_eq!(crate::routing::features(&request).turns, 2, "{format:?}");
        }
        let responses = json!({"model": "m", "instructions": system, "input": [
            {"role": "user", "content": "first question"}]});
        assert_eq!(Some(a), of(Format::OpenAiResponses, &responses, None));
        // Another first question: another conversation.
        let other = json!({"model": "m", "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": "something else"}]});
        assert_ne!(Some(a), of(Format::OpenAiChat, &other, None));
    }

    #[test]
    fn a_short_conversation_has_nothing_to_keep_warm() {
        let raw = serde_json::to_vec(&json!({"model": "m",
            "messages": [{"role": "user", "content": "hi"}]}))
        .unwrap();
        let request = parse_request(Format::OpenAiChat, &raw).unwrap();
        assert_eq!(session(&request, None, MIN_CACHEABLE_TOKENS - 1), None);
        assert!(session(&request, None, MIN_CACHEABLE_TOKENS).is_some());
        assert!(session(&request, Some(b""), 10).is_none());
    }
}
