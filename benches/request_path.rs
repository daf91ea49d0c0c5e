//! Per-request CPU work outside the network, with criterion:
//! - parse + validate + features for each client format (1 KB chat, a ~50 KB agent turn, and
//!   the captured Codex and Claude Code bodies), the flux-auto decision, the passthrough
//!   rewrite;
//! - translation of a ~50 KB request each way between formats (parse + encode);
//! - a non-streamed response translated each way;
//! - one stream event through the transcoder, for passthrough and each translated pair;
//! - cost and ledger settlement; recording a request's metrics, and a scrape;
//! - the client's address (direct, and behind trusted proxies) and the per-address checks.
//!
//! `cargo bench --bench request_path` (`-- --quick` for a fast pass).

use futures_util::FutureExt;
use std::hint::black_box;
use std::path::Path;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion};
use fluxrouter::config::LanesFile;
use fluxrouter::routing::{Requested, RouteTable};
use fluxrouter::wire::ir::StreamMeta;
use fluxrouter::wire::transcode::{self, StreamTranscoder};
use fluxrouter::wire::Format;
use serde_json::json;

// The allocator the gateway binary runs with (src/main.rs), so the timings here are what it
// sees; the library leaves the choice to the program.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn table() -> RouteTable {
    let text = std::fs::read_to_string("lanes.yaml").expect("run from the crate root");
    let file: LanesFile = fluxrouter::config::parse_yaml(Path::new("lanes.yaml"), &text).unwrap();
    RouteTable::compile(Path::new("lanes.yaml"), file, &|_| true).unwrap()
}

fn agent_chat_body() -> Vec<u8> {
    let system = "You are a coding agent. Follow the repository's conventions. ".repeat(600);
    let tools: Vec<_> = (0..12)
        .map(|i| {
            json!({"type": "function", "function": {"name": format!("tool_{i}"),
                "description": "Runs a thing. ".repeat(20),
                "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}}})
        })
        .collect();
    serde_json::to_vec(
        &json!({"model": "flux-auto", "stream": true, "max_tokens": 32000,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": "say hi"}],
        "tools": tools}),
    )
    .unwrap()
}

fn small_chat_body() -> Vec<u8> {
    let text = "lorem ipsum dolor sit amet ".repeat(36);
    serde_json::to_vec(&json!({"model": "flux-auto",
        "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]}))
    .unwrap()
}

fn captured(file: &str) -> Vec<u8> {
    let path = Path::new("tests/fixtures/clients").join(file);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    serde_json::to_vec(&v["body"]).unwrap()
}

fn bodies() -> Vec<(&'static str, Format, Vec<u8>)> {
    vec![
        ("chat 1KB", Format::OpenAiChat, small_chat_body()),
        ("chat 50KB agent", Format::OpenAiChat, agent_chat_body()),
        (
            "responses 45KB codex",
            Format::OpenAiResponses,
            captured("codex-0.169.0-3.json"),
        ),
        (
            "anthropic 54KB claude-code",
            Format::Anthropic,
            captured("claude-code-2.1.330-4.json"),
        ),
    ]
}

fn request_path(c: &mut Criterion) {
    let routes = table();
    let access: Vec<String> = ["express", "daily", "deep", "image"]
        .map(String::from)
        .to_vec();
    for (name, format, body) in bodies() {
        c.bench_function(&format!("parse+features/{name}"), |b| {
            b.iter(|| {
                let r = transcode::parse_request(format, black_box(&body)).unwrap();
                black_box(fluxrouter::routing::features(&r));
            })
        });
        let request = transcode::parse_request(format, &body).unwrap();
        c.bench_function(&format!("flux-auto decision/{name}"), |b| {
            b.iter(|| {
                let mut f = fluxrouter::routing::features(&request);
                routes.detect_cues(&fluxrouter::routing::last_user_text(&request), &mut f);
                // The learned classifier, when lanes.yaml names one (it does as shipped).
                routes.classify(&request, &mut f);
                black_box(
                    routes
                        .route(Requested::Auto, &f, access.as_slice())
                        .unwrap(),
                );
            })
        });
        // What count_tokens and a translated Anthropic stream's message_start cost.
        c.bench_function(&format!("count tokens/{name}"), |b| {
            b.iter(|| black_box(fluxrouter::tokens::count_request(&request)))
        });
        for provider in Format::ALL {
            let label = if provider == format {
                format!("rewrite passthrough/{name}")
            } else {
                format!("translate request/{name} -> {}", provider.label())
            };
            c.bench_function(&label, |b| {
                b.iter(|| black_box(transcode::encode_request(provider, &request, "gpt-x")))
            });
        }
    }
}

/// A provider's non-streamed answer in each format, and one text event of its stream.
fn provider_samples(format: Format) -> (Vec<u8>, &'static [u8], &'static [u8]) {
    match format {
        Format::OpenAiChat => (
            serde_json::to_vec(&json!({"id":"chatcmpl-1","object":"chat.completion","created":1,
                "model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there, how can I help you today?"},"finish_reason":"stop"}],
                "usage":{"prompt_tokens":900,"completion_tokens":9,"total_tokens":909}})).unwrap(),
            b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
            b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello \"},\"finish_reason\":null}]}\n\n",
        ),
        Format::OpenAiResponses => (
            serde_json::to_vec(&json!({"id":"resp_1","object":"response","created_at":1,"status":"completed","model":"m",
                "output":[{"type":"message","id":"msg_1","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hello there, how can I help you today?","annotations":[]}]}],
                "usage":{"input_tokens":900,"input_tokens_details":{"cached_tokens":0},"output_tokens":9,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":909}})).unwrap(),
            b"event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"created_at\":1,\"status\":\"in_progress\",\"model\":\"m\",\"output\":[]}}\n\nevent: response.output_item.added\ndata: {\"type\":\"response.output_item.added\",\"sequence_number\":1,\"output_index\":0,\"item\":{\"type\":\"message\",\"id\":\"msg_1\",\"status\":\"in_progress\",\"role\":\"assistant\",\"content\":[]}}\n\nevent: response.content_part.added\ndata: {\"type\":\"response.content_part.added\",\"sequence_number\":2,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"part\":{\"type\":\"output_text\",\"text\":\"\",\"annotations\":[]}}\n\n",
            b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":3,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"Hello \"}\n\n",
        ),
        Format::Anthropic => (
            serde_json::to_vec(&json!({"id":"msg_1","type":"message","role":"assistant","model":"m",
                "content":[{"type":"text","text":"Hello there, how can I help you today?"}],"stop_reason":"end_turn","stop_sequence":null,
                "usage":{"input_tokens":900,"output_tokens":9}})).unwrap(),
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"m\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":900,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello \"}}\n\n",
        ),
    }
}

fn responses_and_streams(c: &mut Criterion) {
    let meta = StreamMeta {
        estimated_input_tokens: 900,
        include_usage: false,
        created: 1,
    };
    for provider in Format::ALL {
        let (body, opening, delta) = provider_samples(provider);
        let body = bytes::Bytes::from(body);
        for client in Format::ALL {
            let pair = format!("{} -> {}", provider.label(), client.label());
            c.bench_function(&format!("response/{pair}"), |b| {
                b.iter(|| {
                    black_box(
                        transcode::translate_response(client, provider, black_box(body.clone()))
                            .unwrap(),
                    )
                })
            });
            // One text event through a transcoder whose stream is already open.
            let mut t = StreamTranscoder::new(client, provider, meta.clone());
            let mut out = BytesMut::with_capacity(4096);
            t.push(opening, &mut out).unwrap();
            c.bench_function(&format!("stream event/{pair}"), |b| {
                b.iter(|| {
                    out.clear();
                    t.push(black_box(delta), &mut out).unwrap();
                    black_box(&out);
                })
            });
        }
    }
}

/// The money side of a request: price the usage, hold the worst case, settle into the
/// embedded ledger (in memory; the ledger's writer thread commits in the background).
fn metering(c: &mut Criterion) {
    use fluxrouter::metering::budget::Budget;
    use fluxrouter::metering::ledger::{EmbeddedLedger, Entry, LedgerOptions};
    use fluxrouter::units::{cost, worst_case, Rates, Usage, Usd};
    use std::sync::Arc;

    let usd = |s: &str| s.parse::<Usd>().unwrap();
    let rates = Rates::per_million(usd("2.00"), usd("0.50"), usd("8.00"));
    let usage = Usage {
        input: 9_000,
        cached_input: 6_000,
        output: 350,
        ..Usage::default()
    };
    c.bench_function("metering/cost of a usage", |b| {
        b.iter(|| black_box(cost(black_box(&usage), &rates)))
    });

    let dir = std::env::temp_dir().join(format!("flux-bench-ledger-{}", std::process::id()));
    let ledger =
        EmbeddedLedger::open(&dir.join("ledger.sqlite"), LedgerOptions::default()).expect("ledger");
    let budget = Budget::new(Arc::new(ledger), 900);
    let mut keys = fluxrouter::config::KeysFile::default();
    keys.keys.push(fluxrouter::auth::new_key("bench", "p", 0).1);
    let terms = Arc::new(fluxrouter::auth::Terms::compile(
        &fluxrouter::config::server::PlanConfig {
            lanes: vec!["express".into()],
            monthly_credit_usd: Some(usd("1000000")),
            hourly_limit_usd: Some(usd("1000000")),
            ..Default::default()
        },
    ));
    let table =
        fluxrouter::auth::KeyTable::compile(Path::new("k"), &keys, &|_| Some(terms.clone()))
            .unwrap();
    let account = table
        .account_by_id(&table.id_of("bench").unwrap())
        .unwrap()
        .clone();
    c.bench_function("metering/reserve + settle into the ledger", |b| {
        b.iter(|| {
            // The local budget never waits: its settlement's future is ready at once.
            let hold = budget
                .reserve(&account, worst_case(50_000, 32_000, &rates), 1_800_000_000)
                .unwrap();
            let entry = Entry::from_usage(
                1_800_000_000,
                &account.key_id,
                &account.account_id,
                "daily",
                "flux-pinned-x",
                "req_1",
                &usage,
                cost(&usage, &rates),
            );
            black_box(hold.settle(entry).now_or_never());
        })
    });
    let _ = budget.ledger().close();
    let _ = std::fs::remove_dir_all(dir);
}

/// What `logging()` adds per request to the Prometheus series (existing series: the steady
/// state), and a scrape.
fn metrics(c: &mut Criterion) {
    use fluxrouter::metrics::{render, Finished, Live, Metrics};
    let m = Metrics::default();
    let finished = Finished {
        endpoint: "chat_completions",
        lane: "express",
        model: "flux-fast-model",
        provider: "openai",
        status: 200,
        error_code: None,
        duration: std::time::Duration::from_micros(900),
        upstream: std::time::Duration::from_micros(800),
        request_bytes: 1000,
        response_bytes: 400,
        usage: Some(fluxrouter::units::Usage {
            input: 250,
            output: 40,
            ..Default::default()
        }),
        cost: Some(fluxrouter::units::Usd(410_000_000)),
    };
    c.bench_function("metrics/record a finished request", |b| {
        b.iter(|| m.request(black_box(&finished)))
    });
    c.bench_function("metrics/record an attempt and its first byte", |b| {
        b.iter(|| {
            m.attempt(black_box("openai"), false);
            m.first_byte("openai", std::time::Duration::from_micros(700));
        })
    });
    c.bench_function("metrics/render a scrape", |b| {
        b.iter(|| black_box(render(&m, &Live::default())))
    });
}

fn addresses(c: &mut Criterion) {
    use fluxrouter::address_limits::AddressLimits;
    use fluxrouter::client_addr::{client_addr, ForwardedHeader, TrustedProxies};
    use std::net::IpAddr;
    let peer: IpAddr = "203.0.113.9".parse().unwrap();
    let proxy: IpAddr = "10.0.0.1".parse().unwrap();
    let xff: &[u8] = b"198.51.100.7, 10.1.2.3, 10.4.5.6";
    let none = TrustedProxies::default();
    let trusted = TrustedProxies::new(
        vec![
            "10.0.0.0/8".parse().unwrap(),
            "192.168.0.0/16".parse().unwrap(),
        ],
        ForwardedHeader::XForwardedFor,
    );
    c.bench_function("address/client address, no trusted proxies", |b| {
        b.iter(|| black_box(client_addr(black_box(peer), [xff], [], &none)))
    });
    c.bench_function(
        "address/client address, three hops behind trusted proxies",
        |b| b.iter(|| black_box(client_addr(black_box(proxy), [xff], [], &trusted))),
    );
    let limits = AddressLimits::new(fluxrouter::config::PerAddressLimits {
        requests_per_second: u32::MAX / 64,
        failed_auth_per_minute: u32::MAX / 64,
        connections: 256,
    });
    let mut n = 0u32;
    c.bench_function("address/requests per second, distinct addresses", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            black_box(limits.request(IpAddr::from(n.to_be_bytes())))
        })
    });
    c.bench_function("address/a failed authentication counted", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            black_box(limits.failed_auth(IpAddr::from(n.to_be_bytes())))
        })
    });
    c.bench_function("address/a connection opened and closed", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            drop(black_box(
                limits.connect(IpAddr::from(n.to_be_bytes()), false),
            ))
        })
    });
}

criterion_group!(
    benches,
    request_path,
    responses_and_streams,
    metering,
    metrics,
    addresses
);
criterion_main!(benches);
