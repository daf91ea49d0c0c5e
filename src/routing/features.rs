//! Routing features, computed from the IR so that a request routes the same way whichever
//! format the client spoke.

use std::borrow::Cow;

use crate::wire::ir::{Block, Image, Request, Role};

use super::Features;

/// Tokens counted for an image regardless of its encoded size (a high-detail tile budget).
pub const TOKENS_PER_IMAGE: u64 = 1_000;

/// Everything but the text cues, which only flux-auto needs (see
/// [`super::RouteTable::detect_cues`] over [`last_user_text`]).
pub fn features(req: &Request<'_>) -> Features {
    let mut images = 0u64;
    let mut image_bytes = 0u64;
    let mut count = |b: &Block<'_>| {
        if let Block::Image(img) = b {
            images += 1;
            image_bytes += match img {
                Image::Url(u) => u.len() as u64,
                Image::Base64 { data, .. } => data.len() as u64,
            };
        }
    };
    let mut signed = false;
    for block in req
        .system
        .iter()
        .chain(req.messages.iter().flat_map(|m| &m.content))
    {
        signed |= matches!(
            block,
            Block::Thinking {
                signature: Some(_),
                ..
            } | Block::RedactedThinking { .. }
        );
        count(block);
        if let Block::ToolResult { content, .. } = block {
            content.iter().for_each(&mut count);
        }
    }
    let text_bytes = (req.raw.len() as u64).saturating_sub(image_bytes);
    Features {
        input_tokens: text_bytes.div_ceil(4) + images * TOKENS_PER_IMAGE,
        tools: !req.tools.is_empty(),
        images: images > 0,
        stream: req.stream,
        max_tokens: req.max_tokens,
        messages: req.messages.len(),
        turns: 1 + req
            .messages
            .iter()
            .filter(|m| m.role == Role::Assistant)
            .count(),
        signed,
        code: false,
        reasoning: false,
        lane_scores: None,
    }
}

/// The text of the last user turn that has text (a turn carrying only tool results is the
/// agent's plumbing, not what the user asked), where flux-auto looks for cues.
pub fn last_user_text<'r>(req: &'r Request<'_>) -> Cow<'r, str> {
    let texts = |m: &'r crate::wire::ir::Message<'_>| {
        m.content.iter().filter_map(|b| match b {
            Block::Text { text, .. } => Some(text.as_ref()),
            _ => None,
        })
    };
    let Some(last) = req
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User && texts(m).next().is_some())
    else {
        return Cow::Borrowed("");
    };
    let mut parts = texts(last);
    let first = parts.next().unwrap_or_default();
    match parts.next() {
        None => Cow::Borrowed(first),
        Some(second) => {
            let mut joined = format!("{first}\n{second}");
            for p in parts {
                joined.push('\n');
                joined.push_str(p);
            }
            Cow::Owned(joined)
        }
    }
}
