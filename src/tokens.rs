//! Counting input tokens locally, with the o200k_base vocabulary that ships inside the
//! `bpe-openai` crate (nothing is downloaded at run time). Used for
//! `/anthropic/v1/messages/count_tokens` (never forwarded, never billed). Providers tokenize
//! differently; this is an estimate in their range. It costs about 0.7 ms for a 50 KB agent
//! turn (`cargo bench --bench request_path -- "count tokens"`).

use crate::wire::ir::{Arguments, Block, Request};

/// Overhead per message (role and separators), as chat templates add.
const TOKENS_PER_MESSAGE: u64 = 3;
/// An image, whatever its encoded size (a high-detail tile budget).
const TOKENS_PER_IMAGE: u64 = crate::routing::features::TOKENS_PER_IMAGE;

/// Load the vocabulary in the background at start: the first use otherwise pays for it
/// (about a second in a debug build), on a request's path. A request arriving sooner waits
/// for the same load rather than starting another.
pub fn warm_up() {
    let spawned = std::thread::Builder::new()
        .name("flux-tokenizer".into())
        .spawn(|| {
            bpe_openai::o200k_base();
        });
    if let Err(e) = spawned {
        log::warn!("tokenizer warm-up thread not started ({e}); the first count loads it");
    }
}

/// Tokens in a piece of text.
pub fn count_text(text: &str) -> u64 {
    bpe_openai::o200k_base().count(text) as u64
}

/// Input tokens of a request: instructions, every message's content, and tool definitions.
pub fn count_request(req: &Request<'_>) -> u64 {
    let mut total = 0;
    for block in &req.system {
        total += count_block(block);
    }
    for message in &req.messages {
        total += TOKENS_PER_MESSAGE;
        for block in &message.content {
            total += count_block(block);
        }
    }
    for tool in &req.tools {
        total += count_text(&tool.name);
        if let Some(d) = &tool.description {
            total += count_text(d);
        }
        if let Some(p) = tool.parameters {
            total += count_text(p.get());
        }
    }
    total
}

fn count_block(block: &Block<'_>) -> u64 {
    match block {
        Block::Text { text, .. } => count_text(text),
        Block::Image(_) => TOKENS_PER_IMAGE,
        Block::ToolCall {
            name, arguments, ..
        } => {
            count_text(name)
                + match arguments {
                    Arguments::Text(t) => count_text(t),
                    Arguments::Json(raw) => count_text(raw.get()),
                }
        }
        Block::ToolResult { content, .. } => content.iter().map(count_block).sum(),
        Block::Thinking { text, .. } => count_text(text),
        Block::RedactedThinking { .. } => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_counted_with_the_shipped_vocabulary() {
        assert_eq!(count_text(""), 0);
        assert_eq!(count_text("hello world"), 2);
        // Other scripts count too, without a download.
        assert!(count_text("Bonjour, comment ça va ? 你好，世界") > 5);
    }
}
