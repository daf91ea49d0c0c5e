//! Golden translations: every provider fixture (streams and bodies of each format) translated
//! for each other client format, compared with the checked-in output under
//! `tests/fixtures/wire/golden/`. A change in a translation shows as a diff of those files;
//! `UPDATE_GOLDEN=1 cargo test --test wire_golden` rewrites them after a deliberate change.

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use fluxrouter::units::{Rates, Usage, Usd};
use fluxrouter::wire::ir::{Billed, StreamMeta};
use fluxrouter::wire::transcode::{self, StreamTranscoder};
use fluxrouter::wire::Format;

fn fixtures(format: Format) -> PathBuf {
    let folder = match format {
        Format::OpenAiChat => "openai_chat",
        Format::OpenAiResponses => "openai_responses",
        Format::Anthropic => "anthropic",
    };
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/wire")
        .join(folder)
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wire/golden")
}

/// Provider-side fixtures: streams and bodies as a provider sends them (the encoders' own
/// expected outputs and request fixtures are not provider answers).
fn provider_fixtures(format: Format) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures(format))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            !name.starts_with("encode") && !name.starts_with("request")
        })
        .collect();
    files.sort();
    files
}

/// Timestamps are the only thing that differs between runs.
fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("\"created") {
        let (head, tail) = rest.split_at(i);
        out.push_str(head);
        let key_end = tail.find(':').map_or(tail.len(), |k| k + 1);
        out.push_str(&tail[..key_end]);
        let spaces = tail[key_end..].bytes().take_while(|b| *b == b' ').count();
        out.push_str(&tail[key_end..key_end + spaces]);
        let value = &tail[key_end + spaces..];
        let digits = value.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            out.push('0');
        }
        rest = &value[digits..];
    }
    out.push_str(rest);
    out
}

fn check_or_update(name: &str, got: &str, failures: &mut Vec<String>) {
    let path = golden_dir().join(name);
    let got = normalize(got);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&path, &got).unwrap();
        return;
    }
    match std::fs::read_to_string(&path) {
        Ok(want) if want == got => {}
        Ok(want) => failures.push(format!("{name} differs:\n--- want\n{want}\n--- got\n{got}")),
        Err(e) => failures.push(format!("{name}: {e} (run with UPDATE_GOLDEN=1)")),
    }
}

/// Every event of a client stream parses in that client's grammar.
fn check_grammar(client: Format, name: &str, text: &str) {
    assert!(
        text.is_empty() || text.ends_with("\n\n"),
        "{name}: partial event"
    );
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    for (i, event) in events.iter().enumerate() {
        // The cost comment: one line, after the last event.
        if event.starts_with(':') {
            assert!(
                i + 1 == events.len()
                    && event.starts_with(": x-flux-cost-usd=")
                    && !event.contains('\n'),
                "{name}: a comment only as the last line: {event}"
            );
            continue;
        }
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        assert_eq!(data.len(), 1, "{name}: one data line per event: {event}");
        if client == Format::OpenAiChat && data[0] == "[DONE]" {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(data[0])
            .unwrap_or_else(|e| panic!("{name}: unparseable {event}: {e}"));
        if client != Format::OpenAiChat {
            let named = event.lines().find_map(|l| l.strip_prefix("event: "));
            assert_eq!(
                v["type"].as_str(),
                named,
                "{name}: event name matches its type"
            );
        }
    }
}

fn usd(s: &str) -> Usd {
    s.parse().unwrap()
}

#[test]
fn every_provider_fixture_translates_to_every_client_format() {
    let meta = StreamMeta {
        estimated_input_tokens: 42,
        include_usage: true,
        created: 1_700_000_000,
    };
    // Billed streams end with the cost: `cost` in the final usage object and a comment.
    let rates = Rates::per_million(usd("3.00"), usd("0.30"), usd("15.00"));
    let bill = |usage: Usage| {
        (!usage.is_empty()).then(|| Billed {
            cost: fluxrouter::units::cost(&usage, &rates),
            usage,
        })
    };
    let mut failures = Vec::new();
    let mut count = 0;
    for provider in Format::ALL {
        for file in provider_fixtures(provider) {
            let stem = file.file_stem().unwrap().to_str().unwrap().to_string();
            let raw = std::fs::read(&file).unwrap();
            let is_stream = file.extension().unwrap() == "sse";
            for client in Format::ALL.into_iter().filter(|c| *c != provider) {
                let name = format!(
                    "{}.{stem}.to_{}.{}",
                    provider.label(),
                    client.label(),
                    if is_stream { "sse" } else { "json" }
                );
                count += 1;
                if is_stream {
                    // Fed in small pieces, as a network delivers them.
                    let mut t = StreamTranscoder::new(client, provider, meta.clone());
                    let mut out = BytesMut::new();
                    let mut broken = None;
                    for piece in raw.chunks(7) {
                        if let Err(e) = t.push(piece, &mut out) {
                            broken = Some(e.to_string());
                            break;
                        }
                    }
                    match broken {
                        Some(reason) => t.fail(&reason, bill(t.usage()).as_ref(), &mut out),
                        None => {
                            t.finish(&mut out).unwrap();
                            t.close(bill(t.usage()).as_ref(), &mut out);
                        }
                    }
                    let text = String::from_utf8(out.to_vec()).unwrap();
                    check_grammar(client, &name, &text);
                    check_or_update(&name, &text, &mut failures);
                } else {
                    let (body, _usage) =
                        transcode::translate_response(client, provider, Bytes::from(raw.clone()))
                            .unwrap_or_else(|e| panic!("{name}: {e}"));
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    let pretty = serde_json::to_string_pretty(&v).unwrap() + "\n";
                    check_or_update(&name, &pretty, &mut failures);
                }
            }
        }
    }
    assert!(count >= 40, "fixtures found: {count}");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
