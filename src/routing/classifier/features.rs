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

/// Characters a word's prefix feature keeps (a crude stem: "proving" and "proved" share
/// "prove"); only words longer by two or more get one.
const PREFIX_CHARS: usize = 5;

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
            .map(chars_up_to_cap)
            .sum::<usize>()
            .min(CHARS_CAP)
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
    if let Some(m) = last_user {
        let mut parts = texts(&m.content);
        let first = parts.next();
        let last = parts.last().or(first);
        if let (Some(first), Some(last)) = (first, last) {
            let (opening, closing) = (first_line(first), last_line(last));
            if std::ptr::eq(opening, closing) || user_chars <= ASK_HEAD + ASK_TAIL {
                window(opening, ASK_HEAD + ASK_TAIL, 0, &mut ask);
            } else {
                window(opening, ASK_HEAD, 0, &mut ask);
                ask.push_str(" | ");
                window(closing, 0, ASK_TAIL, &mut ask);
            }
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

/// Past this many characters a turn's length changes no feature (the largest bound of
/// `ask-chars`, plus one): counting stops there, so a 1 MB turn costs what an 8 KB one does.
const CHARS_CAP: usize = 8001;

/// `t`'s characters, counted up to [`CHARS_CAP`] (a character is at most 4 bytes, so the
/// first `4 × CHARS_CAP` bytes hold at least that many when the text is longer).
fn chars_up_to_cap(t: &str) -> usize {
    let bytes = &t.as_bytes()[..t.len().min(4 * CHARS_CAP)];
    // Every byte but a UTF-8 continuation byte (0b10xx_xxxx) starts a character.
    bytes.iter().filter(|&&b| (b as i8) >= -0x40).count()
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

/// What normalization makes of each ASCII byte: lowercase, digits `0`, whitespace a space
/// (0 for bytes past ASCII, which never equal it).
const NORM: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 128 {
        let b = i as u8;
        t[i] = match b {
            b'A'..=b'Z' => b + 32,
            b'0'..=b'9' => b'0',
            // char::is_whitespace's ASCII members.
            b' ' | b'\t'..=b'\r' => b' ',
            _ => b,
        };
        i += 1;
    }
    t
};

/// Lowercase, digits as `0`, whitespace runs as one space. Runs that need no change (most
/// of a text) are copied whole; other ASCII bytes by the table, other characters decoded.
fn normalize(text: &str, out: &mut String) {
    let bytes = text.as_bytes();
    let mut space = out.ends_with(' ');
    let mut i = 0;
    while i < bytes.len() {
        let run = i;
        while let Some(&b) = bytes.get(i) {
            if NORM[b as usize] != b || (b == b' ' && space) {
                break;
            }
            space = b == b' ';
            i += 1;
        }
        // A run starts and ends at an ASCII byte or a leading byte: character boundaries.
        out.push_str(&text[run..i]);
        let Some(&b) = bytes.get(i) else { break };
        if b.is_ascii() {
            i += 1;
            match NORM[b as usize] {
                b' ' if space => {}
                m => {
                    out.push(char::from(m));
                    space = m == b' ';
                }
            }
            continue;
        }
        let c = text[i..].chars().next().unwrap_or(' ');
        i += c.len_utf8();
        if c.is_whitespace() {
            if !space {
                out.push(' ');
                space = true;
            }
            continue;
        }
        space = false;
        out.extend(c.to_lowercase());
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

/// Word unigrams, prefixes and bigrams of normalized text (characters of scripts written
/// without spaces count as words, so their unigrams and bigrams are character n-grams).
fn text_features(norm: &str, prefix: &str, sink: &mut impl Sink) {
    let (w, b) = match prefix {
        "" => ("w", "b"),
        _ => ("rw", "rb"),
    };
    words(norm, w, b, sink);
}

/// Scripts written without spaces between words (Han, kana, Thai, Lao, Khmer, Myanmar):
/// each of their characters is a token of its own.
fn solo(c: char) -> bool {
    matches!(u32::from(c),
        0x0E00..=0x0EFF // Thai, Lao
        | 0x1000..=0x109F // Myanmar
        | 0x1780..=0x17FF // Khmer
        | 0x3040..=0x30FF // Hiragana, Katakana
        | 0x31F0..=0x31FF // Katakana extensions
        | 0x3400..=0x4DBF // Han, extension A
        | 0x4E00..=0x9FFF // Han
        | 0xF900..=0xFAFF // Han compatibility
        | 0xFF66..=0xFF9F // halfwidth Katakana
        | 0x20000..=0x3FFFF) // Han, extensions B on
}

/// The key of the word `buf[start..end]`: what `absorb(K, word)` gives, its bytes folded
/// eight at a time, read in place. The last partial word is one masked load from `buf`
/// when `buf` extends past it (copying it out to pad it stalled the load on the copy).
fn word_key(buf: &[u8], start: usize, end: usize) -> u64 {
    let load = |p: usize| {
        buf.get(p..p + 8)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map_or(0, u64::from_le_bytes)
    };
    let mut h = K;
    let mut p = start;
    while end - p >= 8 {
        h = (h ^ load(p)).wrapping_mul(K).rotate_left(29);
        p += 8;
    }
    let rest = end - p;
    let tail = if rest == 0 {
        0
    } else if p + 8 <= buf.len() {
        load(p) & (u64::MAX >> (64 - 8 * rest))
    } else {
        let mut w = [0u8; 8];
        w[..rest].copy_from_slice(&buf[p..end]);
        u64::from_le_bytes(w)
    };
    let last = tail ^ (((end - start) as u64) << 56);
    (h ^ last).wrapping_mul(K).rotate_left(29)
}

/// A tag's seed, mixed into each key it tags.
fn tag_seed(tag: &str) -> u64 {
    hash(tag, "")
}

/// One multiply, folded: the high and low halves of a 128-bit product xored (every input
/// bit reaches the middle bits the bucket is taken from).
fn fold_mix(x: u64) -> u64 {
    let m = u128::from(x ^ 0x2d35_8dcc_aa6c_78a5) * u128::from(0x8bb8_4b93_962e_acc9u64);
    (m >> 64) as u64 ^ m as u64
}

/// A unigram's hash: its key under its tag's seed.
fn unigram_hash(seed: u64, key: u64) -> u64 {
    fold_mix(key ^ seed)
}

/// A bigram's hash from its two words' keys (order matters: the first is rotated).
fn bigram_hash(seed: u64, first: u64, second: u64) -> u64 {
    fold_mix(first.rotate_left(23) ^ second ^ seed)
}

/// Word classes of bytes: 1 an ASCII letter or digit, 2 past ASCII (decoded), 0 neither.
const WORD: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = if b.is_ascii_alphanumeric() {
            1
        } else if b >= 0x80 {
            2
        } else {
            0
        };
        i += 1;
    }
    t
};

/// Word unigrams and bigrams of normalized text, hashed from the bytes in place: a word is
/// a run of letters and digits (cut at [`MAX_WORD_CHARS`]), a character of a script written
/// without spaces a word by itself.
fn words(norm: &str, w: &str, b: &str, sink: &mut impl Sink) {
    let (seed_w, seed_b, seed_p) = (tag_seed(w), tag_seed(b), tag_seed(w) ^ PREFIX_SEED);
    let pre = PREFIX_CHARS;
    let bytes = norm.as_bytes();
    let mut prev: Option<(usize, u64)> = None;
    let mut i = 0;
    while let Some(&c) = bytes.get(i) {
        let class = WORD[c as usize];
        if class == 0 {
            i += 1;
            continue;
        }
        let start = i;
        // The common case, an ASCII word: its extent is its bytes.
        let mut stop = i;
        if class == 1 {
            while bytes.get(stop).is_some_and(|&b| WORD[b as usize] == 1) {
                stop += 1;
            }
        }
        let (end, n, pre_end, next) = if class == 1 && bytes.get(stop).is_none_or(|&b| b < 0x80) {
            let n = stop - start;
            (start + n.min(MAX_WORD_CHARS), n, start + pre.min(n), stop)
        } else {
            match scan_word(norm, start) {
                Some(found) => found,
                None => {
                    // Not a word character: skip it.
                    i += norm[i..].chars().next().map_or(1, char::len_utf8);
                    continue;
                }
            }
        };
        i = next;
        let key = word_key(bytes, start, end);
        sink.feature(w, &norm[start..end], unigram_hash(seed_w, key));
        // Tagged `wp` and summed in the text's group whichever text it comes from (its hash
        // seeded by the unigram's tag keeps the ask's and the tool result's apart): giving
        // them groups of their own measured worse (README, Training).
        if n > pre + 1 {
            let p = word_key(bytes, start, pre_end);
            sink.feature("wp", &norm[start..pre_end], unigram_hash(seed_p, p));
        }
        if let Some((at, first)) = prev {
            sink.feature(b, &norm[at..end], bigram_hash(seed_b, first, key));
        }
        prev = Some((start, key));
    }
}

const PREFIX_SEED: u64 = 0x5bd1_e995;

/// The word starting at `start` when it holds characters past ASCII: where its kept part
/// ends ([`MAX_WORD_CHARS`] characters), its characters, where its prefix ends, and where
/// the scan resumes. `None` when `start` is no word character.
fn scan_word(norm: &str, start: usize) -> Option<(usize, usize, usize, usize)> {
    let pre = PREFIX_CHARS;
    let (mut end, mut n, mut pre_end) = (start, 0usize, start);
    let mut i = start;
    for ch in norm[start..].chars() {
        if !ch.is_alphanumeric() {
            break;
        }
        if solo(ch) {
            if n == 0 {
                i += ch.len_utf8();
                return Some((i, 1, i, i));
            }
            break;
        }
        i += ch.len_utf8();
        n += 1;
        if n <= MAX_WORD_CHARS {
            end = i;
        }
        if n <= pre {
            pre_end = i;
        }
    }
    (n > 0).then_some((end, n, pre_end, i))
}

/// Counts over the normalized ask, per mille of its characters where a rate says more.
struct Shape {
    code: u64,
    digits: u64,
    math: u64,
    questions: u64,
    lines: u64,
}

/// Shape classes of bytes: 0 other, 1 code, 2 digit, 3 question mark, 4 math, 5 a UTF-8
/// continuation byte, 6 a leading byte (the character decoded).
const SHAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = match i as u8 {
            b'{' | b'}' | b';' | b'(' | b')' | b'[' | b']' | b'<' | b'>' | b'=' | b'_' | b'`' => 1,
            b'0' => 2,
            b'?' => 3,
            b'^' => 4,
            0x80..=0xBF => 5,
            0xC0.. => 6,
            _ => 0,
        };
        i += 1;
    }
    t
};

impl Shape {
    /// One pass over the bytes by class; characters past ASCII decoded only to match the
    /// few symbols counted.
    fn of(norm: &str) -> Shape {
        let mut counts = [0u64; 7];
        let bytes = norm.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            let class = SHAPE[b as usize];
            counts[class as usize] += 1;
            if class == 6 {
                match norm[i..].chars().next() {
                    Some('？') => counts[3] += 1,
                    Some(
                        '∑' | '∫' | '√' | '≤' | '≥' | '≠' | '∀' | '∃' | '∈' | '⊂' | '→' | '≡' | 'π'
                        | '∞' | '±' | '×' | '÷',
                    ) => counts[4] += 1,
                    _ => {}
                }
            }
        }
        let chars = bytes.len() as u64 - counts[5];
        let rate = |n: u64| (n * 1000).checked_div(chars).unwrap_or(0);
        Shape {
            code: rate(counts[1]),
            digits: rate(counts[2]),
            math: counts[4],
            questions: counts[3],
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
        for want in ["w:prove", "w:00", "b:is prime", "b:00 is", "s:turns:2"] {
            assert!(n.iter().any(|x| x == want), "{want} not in {n:?}");
        }
        assert!(!n.iter().any(|x| x.contains("cats")), "only the last turn");
        assert!(!n.iter().any(|x| x == "s:tools"));
    }

    #[test]
    fn languages_without_spaces_get_character_ngrams() {
        // Han (and kana, Thai...): each character a word, so unigrams and bigrams are
        // character n-grams; a Latin word beside them stays whole.
        let n = names(&serde_json::json!({"model": "flux-auto", "messages": [
            {"role": "user", "content": "证明根号二是无理数 proof"}]}));
        for want in [
            "w:证",
            "b:证明",
            "b:理数",
            "w:proof",
            "b:数 proof",
            "qb:无理",
        ] {
            assert!(n.iter().any(|x| x == want), "{want} not in {n:?}");
        }
        assert!(!n.iter().any(|x| x == "w:证明根号二是无理数"), "{n:?}");
        // Korean is written with spaces: its words stay words.
        let n = names(&serde_json::json!({"model": "flux-auto", "messages": [
            {"role": "user", "content": "증명 하세요"}]}));
        assert!(n.iter().any(|x| x == "w:증명"), "{n:?}");
    }

    #[test]
    fn words_are_cut_and_prefixed_by_characters_not_bytes() {
        let long = "é".repeat(40);
        let n = names(&serde_json::json!({"model": "flux-auto", "messages": [
            {"role": "user", "content": format!("Démontrer {long} go")}]}));
        assert!(n.iter().any(|x| x == "w:démontrer"), "{n:?}");
        assert!(n.iter().any(|x| x == "wp:démon"), "{n:?}");
        assert!(
            n.iter().any(|x| *x == format!("w:{}", "é".repeat(32))),
            "{n:?}"
        );
        // Too short for a prefix of its own.
        assert!(!n.iter().any(|x| x.starts_with("wp:go")), "{n:?}");
    }

    #[test]
    fn a_word_key_read_in_place_is_the_word_hashed_alone() {
        let text = b"a bb cccccccc dddddddddddddddd e0123456789xyz!";
        // Every span, near the buffer's end too (where the last load cannot overread).
        for start in 0..text.len() {
            for end in start..=text.len() {
                assert_eq!(
                    word_key(text, start, end),
                    absorb(K, &text[start..end]),
                    "{start}..{end}"
                );
            }
        }
    }

    #[test]
    fn normalization_lowercases_zeroes_digits_and_folds_whitespace() {
        let mut out = String::new();
        normalize("Hello,  WORLD\t\n42 Ünïcode\u{3000}x  ", &mut out);
        assert_eq!(out, "hello, world 00 ünïcode x ");
        // A run continues across calls: no double space at the seam.
        normalize("  Y", &mut out);
        assert_eq!(out, "hello, world 00 ünïcode x y");
    }

    #[test]
    fn the_shape_counts_characters_not_bytes() {
        let s = Shape::of("f(x) = 0 ≤ √y? 证明？");
        assert_eq!((s.math, s.questions), (2, 2));
        // 18 characters: 3 code, 1 digit.
        assert_eq!(s.code, 3 * 1000 / 18);
        assert_eq!(s.digits, 1000 / 18);
        assert_eq!(s.lines, 1);
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
