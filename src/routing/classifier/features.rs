//! What the lane classifier sees of a request: hashed word and character n-grams of the work
//! asked for (the last user turn, and a pending tool result), and a few structural facts.
//!
//! The work is bounded whatever arrives: only the head and the tail of the texts are read
//! (the question sits around a paste, ROUTING.md rule 2), so a 50 KB agent turn costs what a
//! 4 KB one does. Training and inference share this code, so they cannot drift apart.

use crate::wire::ir::{Block, Message, Request, Role};

/// Bytes of the last user turn read from its start, and from its end.
pub const HEAD_BYTES: usize = 1024;
pub const TAIL_BYTES: usize = 1536;
/// A last user turn longer than this (in characters) holds a paste.
pub const PASTE_CHARS: usize = 2000;
/// The windows read from a turn with a paste.
pub const PASTE_HEAD_BYTES: usize = 64;
pub const PASTE_TAIL_BYTES: usize = 192;
/// Bytes of a pending tool result read (from its start, and as many from its end).
pub const TOOL_RESULT_BYTES: usize = 768;
/// Bytes of the (normalized) last user turn read again as "the ask": its start and end.
pub const ASK_HEAD: usize = 160;
pub const ASK_TAIL: usize = 320;
/// Longest word kept whole (longer runs, a base64 blob or a CJK sentence, are cut).
const MAX_WORD_CHARS: usize = 32;

/// Receives each feature as a tag and a text; the classifier hashes them, `--explain`
/// also keeps their names.
pub trait Sink {
    /// Feature `tag`:`text`, whose hash is `h`.
    fn feature(&mut self, tag: &str, text: &str, h: u64);
}

/// A feature hashed from its bytes (words, structure).
fn emit(sink: &mut impl Sink, tag: &str, text: &str) {
    sink.feature(tag, text, hash(tag, text));
}

/// The bucket of a hash in a space of `buckets` (a power of two).
pub fn slot(h: u64, buckets: u32) -> u32 {
    ((h ^ (h >> 32)) as u32) & (buckets - 1)
}

fn fmix(mut z: u64) -> u64 {
    z ^= z >> 33;
    z = z.wrapping_mul(0xff51_afd7_ed55_8ccd);
    z ^= z >> 33;
    z = z.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    z ^ (z >> 33)
}

/// A character n-gram's hash from its characters packed in one word (21 bits each, the
/// top bit marking a bigram): one mix per gram, no bytes hashed.
fn gram_hash(tag_seed: u64, chars: &[char]) -> u64 {
    let key = match *chars {
        [a, b] => (1 << 63) | (u64::from(a) << 21) | u64::from(b),
        [a, b, c] => (u64::from(a) << 42) | (u64::from(b) << 21) | u64::from(c),
        _ => 0,
    };
    fmix(key ^ tag_seed)
}

const K: u64 = 0x9e37_79b9_7f4a_7c15;

/// Fold `bytes` into `h` eight at a time, the last word carrying the length.
fn absorb(mut h: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
    }
    let rest = chunks.remainder();
    let mut w = [0u8; 8];
    w[..rest.len()].copy_from_slice(rest);
    let last = u64::from_le_bytes(w) ^ ((bytes.len() as u64) << 56);
    (h ^ last).wrapping_mul(K).rotate_left(29)
}

/// A fixed 64-bit hash of the tag and the text, a word at a time, with a final avalanche:
/// stable across builds and platforms (the weights file depends on it).
pub fn hash(tag: &str, text: &str) -> u64 {
    fmix(absorb(absorb(K, tag.as_bytes()), text.as_bytes()))
}

/// The request as the model reads it: feature indices in `0..buckets` (a power of two),
/// sorted, with a value each. Features come in groups (the turn's text, the ask, a tool
/// result, structure); each group is scaled to unit length and counts the same, so a 50 KB
/// paste does not drown the ten words of the question.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hashed {
    pub buckets: u32,
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

/// Feature groups: the turn's text, the ask, a tool result, structure.
pub const GROUPS: usize = 4;

/// Groups by tag: 0 text, 1 ask, 2 tool result, 3 structure.
pub fn group(tag: &str) -> usize {
    match tag.as_bytes().first() {
        Some(b'q') => 1,
        Some(b'r') => 2,
        Some(b's') => 3,
        _ => 0,
    }
}

/// Collects hashed features with their group, then sets the values.
struct Collect {
    buckets: u32,
    entries: Vec<(u32, u8)>,
}

impl Sink for Collect {
    fn feature(&mut self, tag: &str, _text: &str, h: u64) {
        self.entries.push((slot(h, self.buckets), group(tag) as u8));
    }
}

impl Hashed {
    pub fn of(req: &Request<'_>, buckets: u32) -> Self {
        let mut c = Collect {
            buckets,
            entries: Vec::with_capacity(4096),
        };
        extract(req, &mut c);
        // A feature seen twice counts twice; each group is scaled by its number of features
        // and the groups weigh the same (as the gateway's streaming scorer computes it).
        let mut per_group = [0usize; GROUPS];
        for &(_, g) in &c.entries {
            per_group[g as usize] += 1;
        }
        let groups = per_group.iter().filter(|&&n| n > 0).count().max(1) as f32;
        let scale = per_group.map(|n| 1.0 / ((n.max(1) as f32) * groups).sqrt());
        c.entries.sort_unstable();
        let mut out = Hashed {
            buckets,
            indices: Vec::with_capacity(c.entries.len()),
            values: Vec::with_capacity(c.entries.len()),
        };
        for (index, g) in c.entries {
            let v = scale[g as usize];
            if out.indices.last() == Some(&index) {
                if let Some(last) = out.values.last_mut() {
                    *last += v;
                }
                continue;
            }
            out.indices.push(index);
            out.values.push(v);
        }
        out
    }
}

/// The text a part of a turn carries.
fn texts<'r>(blocks: &'r [Block<'_>]) -> impl Iterator<Item = &'r str> {
    blocks.iter().filter_map(|b| match b {
        Block::Text { text, .. } => Some(text.as_ref()),
        _ => None,
    })
}

/// A turn that only hands tool results back (the agent's plumbing).
fn only_tool_results(m: &Message<'_>) -> bool {
    !m.content.is_empty()
        && m.content
            .iter()
            .all(|b| matches!(b, Block::ToolResult { .. }))
}

/// Every feature of `req`, in a fixed order.
pub fn extract(req: &Request<'_>, sink: &mut impl Sink) {
    let last = req.messages.last();
    let pending_tool = last.is_some_and(|m| m.role == Role::User && only_tool_results(m));
    let last_user = req
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User && texts(&m.content).next().is_some());
    let mut norm = String::with_capacity(HEAD_BYTES + TAIL_BYTES + 64);
    let user_chars: usize = last_user.map_or(0, |m| {
        texts(&m.content)
            .map(|t| t.chars().count().min(1 << 20))
            .sum()
    });
    // A paste (a document, a log, a file) says little of the work asked about it (rule 6):
    // its text is read from a narrower window than a turn the user wrote.
    let paste = user_chars > PASTE_CHARS;
    let (head, tail) = if paste {
        (PASTE_HEAD_BYTES, PASTE_TAIL_BYTES)
    } else {
        (HEAD_BYTES, TAIL_BYTES)
    };
    if let Some(m) = last_user {
        for (i, t) in texts(&m.content).enumerate() {
            if i > 0 {
                norm.push(' ');
            }
            window(t, head, tail, &mut norm);
        }
    }
    text_features(&norm, "", sink);
    // The ask itself, apart: the words that open and close the turn, where the question
    // sits around a paste. Seen on their own they are not drowned by the pasted text.
    let mut ask = String::with_capacity(ASK_HEAD + ASK_TAIL + 8);
    let parts: Vec<&str> = last_user
        .map(|m| texts(&m.content).collect())
        .unwrap_or_default();
    if let (Some(first), Some(last)) = (parts.first(), parts.last()) {
        let (opening, closing) = (first_line(first), last_line(last));
        if std::ptr::eq(opening, closing) || user_chars <= ASK_HEAD + ASK_TAIL {
            window(opening, ASK_HEAD + ASK_TAIL, 0, &mut ask);
        } else {
            window(opening, ASK_HEAD, 0, &mut ask);
            ask.push_str(" | ");
            window(closing, 0, ASK_TAIL, &mut ask);
        }
    }
    words(&ask, "qw", "qb", sink);
    if paste {
        emit(sink, "s", "paste");
    }
    let shape = Shape::of(&norm);

    if pending_tool {
        emit(sink, "s", "tool-result-pending");
        let mut result = String::with_capacity(2 * TOOL_RESULT_BYTES + 8);
        if let Some(m) = last {
            for b in &m.content {
                if let Block::ToolResult {
                    content, is_error, ..
                } = b
                {
                    if *is_error {
                        emit(sink, "s", "tool-error");
                    }
                    for t in texts(content) {
                        window(t, TOOL_RESULT_BYTES, TOOL_RESULT_BYTES, &mut result);
                    }
                }
            }
        }
        text_features(&result, "r", sink);
        let turns_since_user = req
            .messages
            .iter()
            .rev()
            .take_while(|m| !(m.role == Role::User && texts(&m.content).next().is_some()))
            .count();
        bucket(sink, "agent-steps", turns_since_user as u64, &[2, 4, 8, 16]);
    }

    // Structure: facts that inform but never decide alone (ROUTING.md rule 6).
    if !req.tools.is_empty() {
        emit(sink, "s", "tools");
        bucket(sink, "tool-count", req.tools.len() as u64, &[1, 3, 8]);
    }
    bucket(sink, "turns", req.messages.len() as u64, &[1, 2, 4, 8, 16]);
    let system_bytes: usize = texts(&req.system).map(str::len).sum::<usize>()
        + req
            .messages
            .iter()
            .filter(|m| m.role == Role::System)
            .flat_map(|m| texts(&m.content))
            .map(str::len)
            .sum::<usize>();
    bucket(
        sink,
        "system-bytes",
        system_bytes as u64,
        &[0, 400, 4000, 20000],
    );
    let input_bounds = [500, 2000, 8000, 32000, 128000];
    bucket(sink, "input-bytes", req.raw.len() as u64, &input_bounds);
    let ask_bounds = [20, 60, 200, 600, 2000, 8000];
    bucket(sink, "ask-chars", user_chars as u64, &ask_bounds);
    match req.max_tokens {
        None => emit(sink, "s", "max-tokens-none"),
        Some(n) => bucket(sink, "max-tokens", n, &[256, 1024, 4096, 16384]),
    }
    if req.reasoning.is_some() {
        emit(sink, "s", "reasoning-asked");
    }
    bucket(sink, "code-per-mille", shape.code, &[5, 20, 50, 100]);
    bucket(sink, "digits-per-mille", shape.digits, &[5, 30, 100]);
    bucket(sink, "math-symbols", shape.math, &[0, 2, 8]);
    bucket(sink, "questions", shape.questions, &[0, 1, 3]);
    bucket(sink, "lines", shape.lines, &[1, 4, 16, 64]);
}

/// Feature `name:i`, where `i` is the index of the first bound `v` does not exceed (the
/// number of bounds past them all). Written on the stack: features cost no allocation.
fn bucket(sink: &mut impl Sink, name: &str, v: u64, bounds: &[u64]) {
    let i = bounds.iter().position(|&b| v <= b).unwrap_or(bounds.len());
    let mut buf = [0u8; 40];
    let n = name.len().min(36);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    buf[n] = b':';
    buf[n + 1] = b'0' + (i as u8 % 10);
    if let Ok(text) = std::str::from_utf8(&buf[..n + 2]) {
        emit(sink, "s", text);
    }
}

/// Append `text`'s head and tail (at most `head` + `tail` bytes, on character boundaries),
/// normalized: lowercase, digits as `0`, whitespace runs as one space.
fn window(text: &str, head: usize, tail: usize, out: &mut String) {
    if text.len() <= head + tail {
        normalize(text, out);
        return;
    }
    let mut h = head;
    while !text.is_char_boundary(h) {
        h -= 1;
    }
    let mut t = text.len() - tail;
    while !text.is_char_boundary(t) {
        t += 1;
    }
    normalize(&text[..h], out);
    out.push_str(" \u{2026} ");
    normalize(&text[t..], out);
}

fn normalize(text: &str, out: &mut String) {
    let mut space = out.ends_with(' ');
    for c in text.chars() {
        if c.is_whitespace() {
            if !space {
                out.push(' ');
                space = true;
            }
            continue;
        }
        space = false;
        if c.is_ascii_digit() {
            out.push('0');
        } else if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
        } else {
            out.extend(c.to_lowercase());
        }
    }
}

/// The first non-blank line of a text (the whole text when it has one line).
fn first_line(t: &str) -> &str {
    t.lines().find(|l| !l.trim().is_empty()).unwrap_or(t)
}

/// The last non-blank line of a text: after a paste, usually the question.
fn last_line(t: &str) -> &str {
    t.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(t)
}

/// Word unigrams and bigrams, and character 2- and 3-grams, of normalized text.
fn text_features(norm: &str, prefix: &str, sink: &mut impl Sink) {
    let (w, b, c) = match prefix {
        "" => ("w", "b", "c"),
        _ => ("rw", "rb", "rc"),
    };
    words(norm, w, b, sink);
    chars(norm, c, sink);
}

fn words(norm: &str, w: &str, b: &str, sink: &mut impl Sink) {
    let mut prev: Option<&str> = None;
    let mut pair = String::with_capacity(2 * MAX_WORD_CHARS * 4 + 1);
    for word in norm
        .split(|ch: char| !ch.is_alphanumeric())
        .filter(|s| !s.is_empty())
    {
        let word = match word.char_indices().nth(MAX_WORD_CHARS) {
            Some((i, _)) => &word[..i],
            None => word,
        };
        emit(sink, w, word);
        if let Some(p) = prev {
            pair.clear();
            pair.push_str(p);
            pair.push(' ');
            pair.push_str(word);
            emit(sink, b, &pair);
        }
        prev = Some(word);
    }
}

fn chars(norm: &str, c: &str, sink: &mut impl Sink) {
    // Character n-grams carry languages without spaces and morphology across languages.
    // The last three characters and where they start, in a ring: no buffer, and each gram
    // hashed from its packed characters in one mix.
    let seed = hash(c, "");
    let mut starts = [0usize; 3];
    let mut last = [' '; 3];
    let mut seen = 0usize;
    for (at, ch) in norm.char_indices() {
        starts[seen % 3] = at;
        last[seen % 3] = ch;
        seen += 1;
        let end = at + ch.len_utf8();
        for n in 2..=3 {
            if seen < n {
                continue;
            }
            let mut gram = [' '; 3];
            for (k, g) in gram[..n].iter_mut().enumerate() {
                *g = last[(seen - n + k) % 3];
            }
            if gram[..n].iter().all(|&g| g == ' ') {
                continue;
            }
            let text = &norm[starts[(seen - n) % 3]..end];
            sink.feature(c, text, gram_hash(seed, &gram[..n]));
        }
    }
}

/// Counts over the normalized ask, per mille of its characters where a rate says more.
struct Shape {
    code: u64,
    digits: u64,
    math: u64,
    questions: u64,
    lines: u64,
}

impl Shape {
    fn of(norm: &str) -> Shape {
        let (mut chars, mut code, mut digits, mut math, mut questions) = (0u64, 0, 0, 0, 0);
        for c in norm.chars() {
            chars += 1;
            match c {
                '{' | '}' | ';' | '(' | ')' | '[' | ']' | '<' | '>' | '=' | '_' | '`' => code += 1,
                '0' => digits += 1,
                '?' | '？' => questions += 1,
                '∑' | '∫' | '√' | '≤' | '≥' | '≠' | '∀' | '∃' | '∈' | '⊂' | '→' | '^' | '≡'
                | 'π' | '∞' | '±' | '×' | '÷' => math += 1,
                _ => {}
            }
        }
        let rate = |n: u64| (n * 1000).checked_div(chars).unwrap_or(0);
        Shape {
            code: rate(code),
            digits: rate(digits),
            math,
            questions,
            // Line breaks are folded into spaces by normalization; a long ask reads as many.
            lines: chars / 80 + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::transcode::parse_request;
    use crate::wire::Format;

    struct Names(Vec<String>);
    impl Sink for Names {
        fn feature(&mut self, tag: &str, text: &str, _h: u64) {
            self.0.push(format!("{tag}:{text}"));
        }
    }

    fn names(body: &serde_json::Value) -> Vec<String> {
        let raw = serde_json::to_vec(body).unwrap();
        let req = parse_request(Format::OpenAiChat, &raw).unwrap();
        let mut n = Names(vec![]);
        extract(&req, &mut n);
        n.0
    }

    #[test]
    fn words_ngrams_and_structure_of_the_last_user_turn() {
        let n = names(&serde_json::json!({"model": "flux-auto", "messages": [
            {"role": "user", "content": "Old question about cats"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "Prove that 17 is PRIME"}]}));
        for want in [
            "w:prove",
            "w:00",
            "b:is prime",
            "c:pr",
            "c:pri",
            "s:turns:2",
        ] {
            assert!(n.iter().any(|x| x == want), "{want} not in {n:?}");
        }
        assert!(!n.iter().any(|x| x.contains("cats")), "only the last turn");
        assert!(!n.iter().any(|x| x == "s:tools"));
    }

    #[test]
    fn languages_without_spaces_get_character_ngrams() {
        let n = names(&serde_json::json!({"model": "flux-auto", "messages": [
            {"role": "user", "content": "证明根号二是无理数"}]}));
        assert!(n.iter().any(|x| x == "c:证明"), "{n:?}");

        assert!(n.iter().any(|x| x == "c:无理数"), "{n:?}");
    }

    #[test]
    fn a_pending_tool_result_is_read_with_its_own_tags() {
        let n = names(&serde_json::json!({"model": "flux-auto",
            "tools": [{"type": "function", "function": {"name": "sh", "parameters": {"type": "object"}}}],
            "messages": [
            {"role": "user", "content": "run the tests"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
              "function": {"name": "sh", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "FAILED test_parse: assertion"}]}));
        for want in ["s:tool-result-pending", "rw:failed", "s:tools", "w:run"] {
            assert!(n.iter().any(|x| x == want), "{want} not in {n:?}");
        }
    }

    #[test]
    fn work_is_bounded_on_huge_inputs() {
        let huge = "lorem ipsum dolor sit amet ".repeat(40_000); // ~1 MB
        let body = serde_json::json!({"model": "flux-auto", "messages": [
            {"role": "user", "content": format!("Title: Q3 report. {huge} What is the title?")}]});
        let raw = serde_json::to_vec(&body).unwrap();
        let req = parse_request(Format::OpenAiChat, &raw).unwrap();
        let mut n = Names(vec![]);
        extract(&req, &mut n);
        // Head and tail windows only: a few thousand features, not a million.
        assert!(n.0.len() < 20_000, "{}", n.0.len());
        assert!(n.0.iter().any(|x| x == "w:title"));
        assert!(n.0.iter().any(|x| x == "b:the title"));
        let hashed = Hashed::of(&req, 1 << 16);
        assert!(hashed.indices.windows(2).all(|w| w[0] < w[1]));
        assert!(hashed.indices.iter().all(|&i| i < 1 << 16));
        assert_eq!(hashed.values.len(), hashed.indices.len());
        // Each occurrence weighs 1/sqrt(its group's count × the number of groups).
        assert!(hashed.values.iter().all(|v| *v > 0.0 && *v <= 1.0));
    }

    #[test]
    fn an_image_in_an_earlier_turn_is_seen_by_the_rule_and_the_last_turn_by_the_classifier() {
        let body = serde_json::json!({"model": "flux-auto", "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "what breed is this"},
                {"type": "image_url", "image_url": {"url": "https://example.com/dog.png"}}]},
            {"role": "assistant", "content": "A beagle."},
            {"role": "user", "content": "thanks!"}]});
        let raw = serde_json::to_vec(&body).unwrap();
        let req = parse_request(Format::OpenAiChat, &raw).unwrap();
        assert!(
            crate::routing::features(&req).images,
            "the image rule sees it"
        );
        let n = names(&body);
        assert!(n.iter().any(|x| x == "qw:thanks"), "{n:?}");
        assert!(
            !n.iter().any(|x| x.contains("breed")),
            "only the last turn's words"
        );
    }

    #[test]
    fn hashing_is_stable() {
        // The weights file depends on these values: changing the hash needs retraining.
        // Pinned values, computed independently (a Python transcription of the function):
        // the weights file depends on them.
        assert_eq!(hash("w", "prove"), 0x7a0a_fa7a_baa5_be3d);
        assert_eq!(hash("", ""), 0x4113_eefe_0e3d_88f9);
        assert_ne!(hash("w", "prove"), hash("rw", "prove"));
    }
}
