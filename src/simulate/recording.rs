//! An in-memory log of the generation requests the simulator received (every
//! format), so tests can assert what the gateway actually sent upstream: the
//! head (and the HTTP version it came in), every header, the body, and which credential
//! header arrived (`auth`).

use std::collections::VecDeque;
use std::sync::Mutex;

use serde_json::{json, Map, Value};

/// How many requests are kept; older ones are dropped first.
const MAX_ENTRIES: usize = 1000;
/// Bodies at least this large are logged by size only, to bound memory.
const MAX_LOGGED_BODY_BYTES: usize = 1024 * 1024;

#[derive(Default)]
pub struct Recorder {
    entries: Mutex<VecDeque<Value>>,
}

impl Recorder {
    /// Logs one request; `parsed` is its body as JSON when it parsed.
    pub fn record(&self, head: &http::request::Parts, body: &[u8], parsed: Option<&Value>) {
        let mut headers = Map::new();
        for (name, value) in &head.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            // Repeated headers are joined the way HTTP allows them to be folded.
            match headers.get_mut(name.as_str()) {
                Some(Value::String(existing)) => {
                    existing.push_str(", ");
                    existing.push_str(&value);
                }
                _ => {
                    headers.insert(name.as_str().to_owned(), Value::String(value.into_owned()));
                }
            }
        }
        let entry = json!({
            "method": head.method.as_str(),
            // How the request arrived: `HTTP/1.1` or `HTTP/2.0` (h2c).
            "version": format!("{:?}", head.version),
            "auth": credentials(&head.headers),
            "path": head.uri.path(),
            "query": head.uri.query(),
            "headers": headers,
            "body_bytes": body.len(),
            "model": parsed.and_then(|body| body.get("model")).cloned().unwrap_or(Value::Null),
            "stream": parsed.map(|body| body["stream"].as_bool().unwrap_or(false)),
            "body": if body.len() < MAX_LOGGED_BODY_BYTES { parsed.cloned() } else { None },
        });

        let mut entries = self.lock();
        if entries.len() == MAX_ENTRIES {
            entries.pop_front();
        }
        entries.push_back(entry);
    }

    /// All logged requests as a JSON array, most recent last.
    pub fn to_json(&self) -> Vec<u8> {
        let entries = self.lock();
        let (older, newer) = entries.as_slices();
        let all: Vec<&Value> = older.iter().chain(newer).collect();
        serde_json::to_vec(&all).expect("JSON values always serialize")
    }

    /// Forgets every logged request; returns how many there were.
    pub fn clear(&self) -> usize {
        let mut entries = self.lock();
        let count = entries.len();
        entries.clear();
        count
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Value>> {
        // A panic while holding the lock cannot leave the log inconsistent
        // (every update is a single push or pop), so a poisoned lock is usable.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Headers that carry a provider credential, in the order they are reported.
const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "x-api-key", "api-key"];

/// The credentials that arrived: one `{"header", "scheme", "key"}` per credential
/// header present (`scheme` is `Bearer` for `authorization: Bearer …`, else null).
/// The key is kept verbatim so tests can assert which key reached the provider.
fn credentials(headers: &http::HeaderMap) -> Value {
    let mut found = Vec::new();
    for name in CREDENTIAL_HEADERS {
        for value in headers.get_all(name) {
            let value = String::from_utf8_lossy(value.as_bytes());
            let (scheme, key) = match value.split_once(' ') {
                Some((scheme, key)) if name == "authorization" => (Some(scheme), key.trim()),
                _ => (None, value.as_ref()),
            };
            found.push(json!({"header": name, "scheme": scheme, "key": key}));
        }
    }
    Value::Array(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(uri: &str) -> http::request::Parts {
        let (head, ()) = http::Request::post(uri)
            .header("Authorization", "Bearer sk-test")
            .header("x-multi", "a")
            .header("x-multi", "b")
            .body(())
            .unwrap()
            .into_parts();
        head
    }

    #[test]
    fn records_head_and_body_and_keeps_the_last_entries() {
        let recorder = Recorder::default();
        let body = br#"{"model":"m","stream":true,"messages":[]}"#;
        let parsed: Value = serde_json::from_slice(body).unwrap();
        recorder.record(&head("/v1/chat/completions?x=1"), body, Some(&parsed));

        let log: Value = serde_json::from_slice(&recorder.to_json()).unwrap();
        let entry = &log[0];
        assert_eq!(entry["method"], "POST");
        assert_eq!(entry["version"], "HTTP/1.1");
        assert_eq!(entry["path"], "/v1/chat/completions");
        assert_eq!(entry["query"], "x=1");
        assert_eq!(entry["headers"]["authorization"], "Bearer sk-test");
        assert_eq!(
            entry["auth"],
            json!([{"header": "authorization", "scheme": "Bearer", "key": "sk-test"}])
        );
        assert_eq!(entry["headers"]["x-multi"], "a, b");
        assert_eq!(entry["body_bytes"], body.len());
        assert_eq!(entry["model"], "m");
        assert_eq!(entry["stream"], true);
        assert_eq!(entry["body"], parsed);

        for i in 0..MAX_ENTRIES {
            recorder.record(&head(&format!("/r{i}")), b"not json", None);
        }
        let log: Value = serde_json::from_slice(&recorder.to_json()).unwrap();
        let log = log.as_array().unwrap();
        assert_eq!(log.len(), MAX_ENTRIES);
        assert_eq!(log[0]["path"], "/r0");
        assert_eq!(
            log[MAX_ENTRIES - 1]["path"],
            format!("/r{}", MAX_ENTRIES - 1)
        );
        assert_eq!(log[0]["body"], Value::Null);
        assert_eq!(recorder.clear(), MAX_ENTRIES);
        assert_eq!(recorder.to_json(), b"[]");

        let (anthropic, ()) = http::Request::post("/v1/messages")
            .header("x-api-key", "sk-ant")
            .body(())
            .unwrap()
            .into_parts();
        recorder.record(&anthropic, b"{}", None);
        let log: Value = serde_json::from_slice(&recorder.to_json()).unwrap();
        assert_eq!(
            log[0]["auth"],
            json!([{"header": "x-api-key", "scheme": null, "key": "sk-ant"}])
        );
        assert_eq!(log[0]["headers"]["x-api-key"], "sk-ant");
    }
}
