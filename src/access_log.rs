//! The structured access log: one JSON line per request, written off the request path.
//!
//! Pingora's threads only serialize the line and push it onto a bounded queue; a dedicated
//! thread wakes every [`FLUSH_EVERY`] and writes what has queued in one batch. Producers never
//! wake it: a wake-up per line cost two futex calls and a context switch per request. If the
//! writer falls behind, lines are dropped and counted rather than slowing requests down.
//! [`AccessLog::close`] writes out what is left at shutdown.

use std::borrow::Cow;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Serialize, Serializer};

/// Lines that may wait for the writer before new ones are dropped: 64k per 50 ms tick is
/// over a million requests per second.
const QUEUE_LINES: usize = 64 * 1024;
/// How often the writer wakes to write a batch.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Longest text field in a line, in bytes (before JSON escaping): a client's 1 MB `model`
/// must not become a 1 MB log line.
pub const MAX_FIELD_BYTES: usize = 256;

/// `s` cut to at most [`MAX_FIELD_BYTES`] bytes on a character boundary, ending in `…` when
/// cut. Borrowed when it fits.
pub fn bounded(s: &str) -> Cow<'_, str> {
    if s.len() <= MAX_FIELD_BYTES {
        return Cow::Borrowed(s);
    }
    let mut end = MAX_FIELD_BYTES - '…'.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &s[..end]))
}

fn bounded_str<S: Serializer>(v: &&str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&bounded(v))
}

fn bounded_opt<S: Serializer>(v: &Option<&str>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_some(&*bounded(v)),
        None => s.serialize_none(),
    }
}

/// One request. No prompt, completion or key material: ids, routing, sizes and timings.
/// Every text field is bounded to [`MAX_FIELD_BYTES`].
#[derive(Debug, Serialize)]
pub struct AccessLine<'a> {
    /// Unix time in seconds, millisecond precision.
    pub ts: f64,
    #[serde(serialize_with = "bounded_str")]
    pub id: &'a str,
    #[serde(serialize_with = "bounded_str")]
    pub method: &'a str,
    #[serde(serialize_with = "bounded_opt")]
    pub endpoint: Option<&'a str>,
    #[serde(serialize_with = "bounded_opt")]
    pub key_id: Option<&'a str>,
    pub status: u16,
    #[serde(serialize_with = "bounded_opt")]
    pub error: Option<&'a str>,
    #[serde(serialize_with = "bounded_opt")]
    pub original_model: Option<&'a str>,
    #[serde(serialize_with = "bounded_opt")]
    pub model: Option<&'a str>,
    #[serde(serialize_with = "bounded_opt")]
    pub lane: Option<&'a str>,
    pub routed: Option<bool>,
    pub stream: bool,
    /// The client's wire format, and the provider's (equal on passthrough).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(serialize_with = "bounded_opt")]
    pub client_format: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(serialize_with = "bounded_opt")]
    pub provider_format: Option<&'a str>,
    /// Top-level request fields dropped in translation (the provider's format has no place).
    #[serde(skip_serializing_if = "is_zero")]
    pub dropped_fields: usize,
    /// What the provider reported and what it cost (exact decimal dollars).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<String>,
    pub attempts: u32,
    pub request_bytes: usize,
    pub response_bytes: usize,
    pub upstream_ttfb_ms: Option<f64>,
    pub duration_ms: f64,
    #[serde(serialize_with = "bounded_opt")]
    pub downstream_error: Option<&'a str>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

pub struct AccessLog {
    queue: Option<SyncSender<String>>,
    dropped: AtomicU64,
    closing: Arc<AtomicBool>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl AccessLog {
    /// `stderr`, `off`, or a file path (appended to).
    pub fn open(target: &str) -> io::Result<Self> {
        match target {
            "off" => Ok(AccessLog {
                queue: None,
                dropped: AtomicU64::new(0),
                closing: Arc::default(),
                writer: Mutex::new(None),
            }),
            "stderr" => Self::spawn(Box::new(io::stderr())),
            path => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(Path::new(path))?;
                Self::spawn(Box::new(file))
            }
        }
    }

    fn spawn(out: Box<dyn Write + Send>) -> io::Result<Self> {
        let (queue, lines) = mpsc::sync_channel::<String>(QUEUE_LINES);
        let closing = Arc::new(AtomicBool::new(false));
        let stop = closing.clone();
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut out = io::BufWriter::with_capacity(64 * 1024, out);
                loop {
                    let last = stop.load(Ordering::Acquire);
                    while let Ok(line) = lines.try_recv() {
                        let _ = out.write_all(line.as_bytes());
                    }
                    let _ = out.flush();
                    if last {
                        return;
                    }
                    std::thread::park_timeout(FLUSH_EVERY);
                }
            })?;
        Ok(AccessLog {
            queue: Some(queue),
            dropped: AtomicU64::new(0),
            closing,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Write out every queued line and stop the writer (at shutdown).
    pub fn close(&self) {
        let writer = self.writer.lock().map(|mut w| w.take()).unwrap_or(None);
        if let Some(writer) = writer {
            self.closing.store(true, Ordering::Release);
            writer.thread().unpark();
            let _ = writer.join();
        }
    }

    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn record(&self, line: &AccessLine<'_>) {
        let Some(queue) = &self.queue else { return };
        let mut text = serde_json::to_string(line).expect("access lines always serialize");
        text.push('\n');
        match queue.try_send(text) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_the_file_as_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(path.to_str().unwrap()).unwrap();
        let line = AccessLine {
            ts: 1.5,
            id: "req_1",
            method: "POST",
            endpoint: Some("chat_completions"),
            key_id: Some("key_x"),
            status: 200,
            error: None,
            original_model: Some("flux-auto"),
            model: Some("flux-pinned-a"),
            lane: Some("express"),
            routed: Some(true),
            stream: false,
            client_format: Some("anthropic"),
            provider_format: Some("openai"),
            dropped_fields: 2,
            input_tokens: Some(10),
            cached_input_tokens: Some(0),
            output_tokens: Some(5),
            cost_usd: Some("0.00003".into()),
            attempts: 1,
            request_bytes: 10,
            response_bytes: 20,
            upstream_ttfb_ms: Some(1.0),
            duration_ms: 2.0,
            downstream_error: None,
        };
        log.record(&line);
        log.record(&line);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&path).unwrap();
            if text.lines().count() == 2 {
                let v: serde_json::Value =
                    serde_json::from_str(text.lines().next().unwrap()).unwrap();
                assert_eq!(v["id"], "req_1");
                assert_eq!(v["lane"], "express");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "lines never written: {text:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(log.dropped(), 0);
        assert!(!AccessLog::open("off").unwrap().enabled());
    }

    #[test]
    fn text_fields_are_bounded() {
        assert_eq!(bounded("flux-auto"), "flux-auto");
        let exact = "m".repeat(MAX_FIELD_BYTES);
        assert!(matches!(bounded(&exact), Cow::Borrowed(_)));
        // Multi-byte characters are never split.
        for long in ["m".repeat(1 << 20), "é".repeat(1000), "€".repeat(1000)] {
            let b = bounded(&long);
            assert!(b.len() <= MAX_FIELD_BYTES, "{}", b.len());
            assert!(b.len() > MAX_FIELD_BYTES - 6, "{}", b.len());
            assert!(b.ends_with('…'));
        }
        let huge = "x".repeat(1 << 20);
        let line = AccessLine {
            ts: 1.0,
            id: &huge,
            method: &huge,
            endpoint: Some(&huge),
            key_id: Some(&huge),
            status: 400,
            error: Some(&huge),
            original_model: Some(&huge),
            model: Some(&huge),
            lane: Some(&huge),
            routed: None,
            stream: false,
            client_format: Some(&huge),
            provider_format: Some(&huge),
            dropped_fields: 0,
            input_tokens: None,
            cached_input_tokens: None,
            output_tokens: None,
            cost_usd: None,
            attempts: 0,
            request_bytes: 1 << 20,
            response_bytes: 0,
            upstream_ttfb_ms: None,
            duration_ms: 1.0,
            downstream_error: Some(&huge),
        };
        let text = serde_json::to_string(&line).unwrap();
        assert!(text.len() < 13 * MAX_FIELD_BYTES, "{}", text.len());
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["original_model"].as_str().unwrap().len(), MAX_FIELD_BYTES);
    }
}
