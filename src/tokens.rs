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

static LOADED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static LOADING: std::sync::Once = std::sync::Once::new();
/// Wakes the requests waiting for the vocabulary ([`loaded`]).
static ON_LOADED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Whether the vocabulary is in memory (about 70 MB once built: it is loaded on first need,
/// not at start, so a gateway that never counts tokens never holds it).
pub fn ready() -> bool {
    LOADED.load(std::sync::atomic::Ordering::Acquire)
}

fn mark_loaded() {
    if !ready() {
        LOADED.store(true, std::sync::atomic::Ordering::Release);
        ON_LOADED.notify_waiters();
    }
}

/// Start loading the vocabulary on its own thread, if nothing has yet; returns at once.
fn load_in_background() {
    LOADING.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("flux-tokenizer".into())
            .spawn(|| {
                bpe_openai::o200k_base();
                mark_loaded();
            });
        if let Err(e) = spawned {
            log::warn!("tokenizer thread not started ({e}); the first count loads it");
        }
    });
}

/// Wait until the vocabulary is in memory, loading it on its own thread if nothing has (it
/// takes about 0.1 s), for at most `limit`. True once it is in memory; false if it was not in
/// time (a count then loads it on the caller's thread).
pub async fn loaded(limit: std::time::Duration) -> bool {
    if ready() {
        return true;
    }
    // Registered before looking again, so a load finishing in between is not missed.
    let notified = ON_LOADED.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    load_in_background();
    if ready() {
        return true;
    }
    tokio::time::timeout(limit, notified).await.is_ok() || ready()
}

/// Tokens in a piece of text (loads the vocabulary first if needed).
pub fn count_text(text: &str) -> u64 {
    let n = bpe_openai::o200k_base().count(text) as u64;
    mark_loaded();
    n
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
