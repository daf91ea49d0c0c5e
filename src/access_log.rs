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
    /// The client's address: the socket's peer, or behind a trusted proxy the address its
    /// forwarding header names (`crate::client_addr`).
    pub client_ip: Option<std::net::IpAddr>,
    #[serde(serialize_with = "bounded_opt")]
    pub endpoint: Option<&'a str>,
    #[serde(serialize_with = "bounded_opt")]
    pub key_id: Option<&'a str>,
    #[serde(serialize_with = "bounded_opt")]
    pub key_name: Option<&'a str>,
    pub status: u16,
    #[serde(serialize_with = "bounded_opt")]
    pub error: Option<&'a str>,
    #[serde(serialize_with = "bounded_opt")]
    pub original_model: Option<&'a str>,
    #[serde(serialize_with = "bounded_opt")]
    pub model: Option<&'a str>,
    #[serde(serialize_with = "bounded_opt")]
    pub lane: Option<&'a str>,
    /// The flux-auto rule that chose the lane.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(serialize_with = "bounded_opt")]
    pub route_rule: Option<&'a str>,
    /// When the classifier chose the lane: its probability.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lane_probability: Option<f64>,
    /// What put the first target first when the lane spreads its traffic: `weighted`,
    /// `latency`, `cost`, or prompt-cache affinity (`affinity:header|key|prefix`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_choice: Option<&'static str>,
    /// Why flux-auto kept a conversation on its previous lane: `cache` (staying costs the
    /// customer less than moving down uncached) or `signatures`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept: Option<&'static str>,
    /// The provider that served the response.
    #[serde(serialize_with = "bounded_opt")]
    pub provider: Option<&'a str>,
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
    /// Each failed attempt's provider and reason, in order (at most [`MAX_FAILED_ATTEMPTS`]).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub failed_attempts: &'a [FailedAttempt<'a>],
    pub request_bytes: usize,
    pub response_bytes: usize,
    pub upstream_ttfb_ms: Option<f64>,
    /// Time spent waiting on providers (every attempt, and the body or stream).
    pub upstream_ms: f64,
    /// The gateway's own time: the duration minus `upstream_ms`.
    pub overhead_ms: f64,
    pub duration_ms: f64,
    #[serde(serialize_with = "bounded_opt")]
    pub downstream_error: Option<&'a str>,
}

/// A failed attempt: the provider and a fixed reason (`connect`, `timeout`, `bad_answer`,
/// `auth`, `throttled`, `deadline`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FailedAttempt<'a> {
    #[serde(serialize_with = "bounded_str")]
    pub provider: &'a str,
    pub reason: &'static str,
}

/// Failed attempts a line lists (a request has as many as its lane has fallbacks).
pub const MAX_FAILED_ATTEMPTS: usize = 16;

impl<'a> AccessLine<'a> {
    /// A line that knows only its request and its status: everything else empty (a request
    /// refused before any phase ran; tests).
    pub fn bare(ts: f64, id: &'a str, method: &'a str, status: u16) -> Self {
        AccessLine {
            ts,
            id,
            method,
            client_ip: None,
            endpoint: None,
            key_id: None,
            key_name: None,
            status,
            error: None,
            original_model: None,
            model: None,
            lane: None,
            route_rule: None,
            target_choice: None,
            kept: None,
            lane_probability: None,
            provider: None,
            routed: None,
            stream: false,
            client_format: None,
            provider_format: None,
            dropped_fields: 0,
            input_tokens: None,
            cached_input_tokens: None,
            output_tokens: None,
            cost_usd: None,
            attempts: 0,
            failed_attempts: &[],
            request_bytes: 0,
            response_bytes: 0,
            upstream_ttfb_ms: None,
            upstream_ms: 0.0,
            overhead_ms: 0.0,
            duration_ms: 0.0,
            downstream_error: None,
        }
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Which requests the log keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Level {
    /// Every request (successes sampled at the configured rate).
    #[default]
    Info,
    /// Only requests that failed: an error status, an error code, or a broken connection.
    Error,
}

/// How the log is opened: where it goes, which requests it keeps, and the share of
/// successful requests written (errors are always written).
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// `stderr`, `off`, or a file path (appended to; reopened on [`AccessLog::reopen`]).
    pub destination: String,
    pub level: Level,
    /// 0.0 to 1.0.
    pub sample: f64,
}

impl Options {
    pub fn to(destination: &str) -> Self {
        Options {
            destination: destination.to_string(),
            level: Level::Info,
            sample: 1.0,
        }
    }
}

enum Target {
    Stderr,
    File(std::path::PathBuf),
}

impl Target {
    fn open(&self) -> io::Result<Box<dyn Write + Send>> {
        Ok(match self {
            Target::Stderr => Box::new(io::stderr()),
            Target::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        })
    }
}

pub struct AccessLog {
    queue: Option<SyncSender<String>>,
    level: Level,
    /// The sample rate as a threshold on a random u32 (`u32::MAX` and above: keep all).
    sample_below: u64,
    dropped: AtomicU64,
    closing: Arc<AtomicBool>,
    reopening: Arc<AtomicBool>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl AccessLog {
    /// Open the log as `options` say; a file is created if missing and appended to.
    pub fn open(options: &Options) -> io::Result<Self> {
        let target = match options.destination.as_str() {
            "off" => None,
            "stderr" => Some(Target::Stderr),
            path => Some(Target::File(Path::new(path).to_path_buf())),
        };
        let sample = options.sample.clamp(0.0, 1.0);
        let mut log = AccessLog {
            queue: None,
            level: options.level,
            sample_below: (sample * (1u64 << 32) as f64) as u64,
            dropped: AtomicU64::new(0),
            closing: Arc::default(),
            reopening: Arc::default(),
            writer: Mutex::new(None),
        };
        if let Some(target) = target {
            log.spawn(target)?;
        }
        Ok(log)
    }

    fn spawn(&mut self, target: Target) -> io::Result<()> {
        let first = target.open()?;
        let (queue, lines) = mpsc::sync_channel::<String>(QUEUE_LINES);
        let stop = self.closing.clone();
        let reopen = self.reopening.clone();
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut out = io::BufWriter::with_capacity(64 * 1024, first);
                loop {
                    let last = stop.load(Ordering::Acquire);
                    while let Ok(line) = lines.try_recv() {
                        let _ = out.write_all(line.as_bytes());
                    }
                    let _ = out.flush();
                    // After logrotate moved the file: what was queued went to the old one,
                    // what follows goes to a new file at the path.
                    if reopen.swap(false, Ordering::AcqRel) {
                        match target.open() {
                            Ok(next) => out = io::BufWriter::with_capacity(64 * 1024, next),
                            Err(e) => log::error!("access log: reopen failed: {e}"),
                        }
                    }
                    if last {
                        return;
                    }
                    std::thread::park_timeout(FLUSH_EVERY);
                }
            })?;
        self.queue = Some(queue);
        *self.writer.get_mut().unwrap_or_else(|e| e.into_inner()) = Some(writer);
        Ok(())
    }

    /// Reopen the file at its path (on SIGUSR1, after logrotate moved it away).
    pub fn reopen(&self) {
        self.reopening.store(true, Ordering::Release);
        if let Ok(w) = self.writer.lock() {
            if let Some(w) = w.as_ref() {
                w.thread().unpark();
            }
        }
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

    /// Whether a request with this outcome is written: failures always (unless the log is
    /// off), successes by level and sample rate.
    pub fn keeps(&self, failed: bool) -> bool {
        if self.queue.is_none() {
            return false;
        }
        if failed {
            return true;
        }
        if self.level == Level::Error {
            return false;
        }
        self.sample_below > u64::from(u32::MAX)
            || u64::from(rand::random::<u32>()) < self.sample_below
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
        let log = AccessLog::open(&Options::to(path.to_str().unwrap())).unwrap();
        let line = AccessLine {
            ts: 1.5,
            id: "req_1",
            method: "POST",
            client_ip: Some("2001:db8::7".parse().unwrap()),
            endpoint: Some("chat_completions"),
            key_id: Some("key_x"),
            key_name: Some("team-a"),
            status: 200,
            error: None,
            original_model: Some("flux-auto"),
            model: Some("flux-pinned-a"),
            lane: Some("express"),
            route_rule: Some("default"),
            target_choice: Some("weighted"),
            kept: Some("cache"),
            lane_probability: None,
            provider: Some("sim"),
            routed: Some(true),
            stream: false,
            client_format: Some("anthropic"),
            provider_format: Some("openai"),
            dropped_fields: 2,
            input_tokens: Some(10),
            cached_input_tokens: Some(0),
            output_tokens: Some(5),
            cost_usd: Some("0.00003".into()),
            attempts: 2,
            failed_attempts: &[FailedAttempt {
                provider: "flaky",
                reason: "timeout",
            }],
            request_bytes: 10,
            response_bytes: 20,
            upstream_ttfb_ms: Some(1.0),
            upstream_ms: 1.5,
            overhead_ms: 0.5,
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
                assert_eq!(v["client_ip"], "2001:db8::7");
                assert_eq!(v["lane"], "express");
                assert_eq!(v["key_name"], "team-a");
                assert_eq!(v["failed_attempts"][0]["reason"], "timeout");
                assert_eq!(v["overhead_ms"], 0.5);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "lines never written: {text:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(log.dropped(), 0);
        assert!(!AccessLog::open(&Options::to("off")).unwrap().enabled());
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
            client_ip: None,
            endpoint: Some(&huge),
            key_id: Some(&huge),
            key_name: Some(&huge),
            status: 400,
            error: Some(&huge),
            original_model: Some(&huge),
            model: Some(&huge),
            lane: Some(&huge),
            route_rule: Some(&huge),
            target_choice: None,
            kept: None,
            lane_probability: Some(0.5),
            provider: Some(&huge),
            routed: None,
            stream: false,
            client_format: Some(&huge),
            provider_format: Some(&huge),
            dropped_fields: 0,
            input_tokens: None,
            cached_input_tokens: None,
            output_tokens: None,
            cost_usd: None,
            attempts: 1,
            failed_attempts: &[FailedAttempt {
                provider: &huge,
                reason: "connect",
            }],
            request_bytes: 1 << 20,
            response_bytes: 0,
            upstream_ttfb_ms: None,
            upstream_ms: 0.0,
            overhead_ms: 1.0,
            duration_ms: 1.0,
            downstream_error: Some(&huge),
        };
        let text = serde_json::to_string(&line).unwrap();
        assert!(text.len() < 17 * MAX_FIELD_BYTES, "{}", text.len());
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["original_model"].as_str().unwrap().len(), MAX_FIELD_BYTES);
    }

    #[test]
    fn level_and_sampling_choose_what_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let path = path.to_str().unwrap();
        let log = |level, sample| {
            AccessLog::open(&Options {
                destination: path.to_string(),
                level,
                sample,
            })
            .unwrap()
        };
        let all = log(Level::Info, 1.0);
        assert!(all.keeps(false) && all.keeps(true));
        let errors = log(Level::Error, 1.0);
        assert!(!errors.keeps(false) && errors.keeps(true));
        let none = log(Level::Info, 0.0);
        assert!(!none.keeps(false) && none.keeps(true));
        let tenth = log(Level::Info, 0.1);
        let kept = (0..20_000).filter(|_| tenth.keeps(false)).count();
        assert!((1_500..2_500).contains(&kept), "{kept} of 20000 at 10%");
        assert!(!AccessLog::open(&Options::to("off")).unwrap().keeps(true));
    }

    #[test]
    fn reopen_follows_a_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let rotated = dir.path().join("access.log.1");
        let log = AccessLog::open(&Options::to(path.to_str().unwrap())).unwrap();
        let line = |id| AccessLine::bare(1.0, id, "GET", 200);
        let wait_for = |p: &std::path::Path, needle: &str| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                if text.contains(needle) {
                    return text;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{needle} never in {p:?}"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        };
        log.record(&line("before"));
        wait_for(&path, "before");
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        // The writer reopens on its next wake; a line recorded after that lands in the new file.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !path.exists() {
            assert!(std::time::Instant::now() < deadline, "never reopened");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        log.record(&line("after"));
        let new = wait_for(&path, "after");
        assert!(!new.contains("before"));
        let old = std::fs::read_to_string(&rotated).unwrap();
        assert!(old.contains("before") && !old.contains("after"));
        log.close();
    }
}
