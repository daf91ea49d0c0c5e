//! The transcoder's stream and cost tests, against the golden fixtures.

use bytes::BytesMut;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::*;
use crate::units::{Rates, Usd};
use crate::wire::codec::UsageProbe as Probe;
use crate::wire::ir::{Billed, StreamMeta};

fn fixture(format: Format, name: &str) -> String {
    let folder = match format {
        Format::OpenAiChat => "openai_chat",
        Format::OpenAiResponses => "openai_responses",
        Format::Anthropic => "anthropic",
    };
    let path = format!(
        "{}/tests/fixtures/wire/{folder}/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// gpt-4o-mini's prices: cached input is half the input rate.
fn rates() -> Rates {
    let usd = |s: &str| s.parse::<Usd>().unwrap();
    Rates::per_million(usd("0.15"), usd("0.075"), usd("0.60"))
}

/// A stream's settings, and the rates the gateway bills it at (None: not billed).
struct Setup {
    meta: StreamMeta,
    rates: Option<Rates>,
}

fn meta(include_usage: bool, rates: Option<Rates>) -> Setup {
    Setup {
        meta: StreamMeta {
            estimated_input_tokens: 42,
            include_usage,
            created: 1_700_000_000,
        },
        rates,
    }
}

/// What the gateway bills for the usage a stream reported, as the exchange does when no
/// cap applies (none when nothing was reported).
fn billed(t: &StreamTranscoder, rates: Option<Rates>) -> Option<Billed> {
    let usage = t.usage();
    let rates = rates.filter(|_| !usage.is_empty())?;
    Some(Billed {
        cost: crate::units::cost(&usage, &rates),
        usage,
    })
}

/// The cost billed at rates() for what a stream reported.
fn cost_of(t: &StreamTranscoder) -> Option<String> {
    billed(t, Some(rates())).map(|b| b.cost.to_decimal())
}

/// The whole stream through a transcoder, in small pieces, closed with its bill.
fn run(client: Format, provider: Format, setup: Setup, input: &str) -> (String, StreamTranscoder) {
    let mut t = StreamTranscoder::new(client, provider, setup.meta);
    let mut out = BytesMut::new();
    for piece in input.as_bytes().chunks(13) {
        t.push(piece, &mut out).unwrap();
    }
    t.finish(&mut out).unwrap();
    let billed = billed(&t, setup.rates);
    t.close(billed.as_ref(), &mut out);
    (String::from_utf8(out.to_vec()).unwrap(), t)
}

fn comment(cost: &str, input: u64, output: u64, cached: u64) -> String {
    format!(
        ": x-flux-cost-usd={cost} input_tokens={input} output_tokens={output} \
         cached_input_tokens={cached}\n\n"
    )
}

/// The provider's stream with `from` (once) replaced by `to`: what a passthrough client
/// receives when only the usage frame changes.
fn replaced_once(input: &str, from: &str, to: &str) -> String {
    assert_eq!(input.matches(from).count(), 1, "{from}");
    input.replace(from, to)
}

// Expected costs at rates(), by hand:
// Chat stream_usage_cached: 2048 in (1920 cached), 300 out:
//   128 x 0.15 + 1920 x 0.075 + 300 x 0.60 = 19.2 + 144 + 180 = 343.2 micro-dollars.
const CHAT_CACHED_COST: &str = "0.0003432";
// Anthropic cache_usage: 12 uncached + 9000 read + 300 written, 40 out:
//   312 x 0.15 + 9000 x 0.075 + 40 x 0.60 = 46.8 + 675 + 24 = 745.8 micro-dollars.
const ANTHROPIC_CACHED_COST: &str = "0.0007458";
// Responses usage_cached: 7012 in (6912 cached), 5 out:
//   100 x 0.15 + 6912 x 0.075 + 5 x 0.60 = 15 + 518.4 + 3 = 536.4 micro-dollars.
const RESPONSES_CACHED_COST: &str = "0.0005364";

#[test]
fn cached_tokens_are_priced_at_the_cached_rate() {
    let usage = Usage {
        input: 2048,
        cached_input: 1920,
        output: 300,
        ..Usage::default()
    };
    assert_eq!(
        crate::units::cost(&usage, &rates()).to_decimal(),
        CHAT_CACHED_COST
    );
}

#[test]
fn chat_passthrough_prices_the_usage_chunk_and_ends_with_the_comment() {
    let input = fixture(Format::OpenAiChat, "stream_usage_cached.sse");
    let (out, t) = run(
        Format::OpenAiChat,
        Format::OpenAiChat,
        meta(true, Some(rates())),
        &input,
    );
    // Usage on a chunk whose choices are not empty: read, and priced in place.
    let want = replaced_once(
        &input,
        "\"reasoning_tokens\":256}}}",
        &format!("\"reasoning_tokens\":256}},\"cost\":{CHAT_CACHED_COST}}}}}"),
    ) + &comment(CHAT_CACHED_COST, 2048, 300, 1920);
    assert_eq!(out, want);
    assert_eq!(cost_of(&t).unwrap(), CHAT_CACHED_COST);
    assert_eq!(t.usage().cached_input, 1920);
    // The chunk with the usage was the client's: not stripped even when it did not ask.
    let (out, _) = run(
        Format::OpenAiChat,
        Format::OpenAiChat,
        meta(false, Some(rates())),
        &input,
    );
    assert_eq!(out, want);
}

#[test]
fn chat_passthrough_strips_the_usage_chunk_the_client_did_not_ask_for() {
    let input = fixture(Format::OpenAiChat, "stream_tools_parallel.sse");
    let at = input.find("data: {\"id\":\"chatcmpl-CbX8toolsPar\",\"object\":\"chat.completion.chunk\",\"created\":1764400100,\"model\":\"gpt-4.1-2025-04-14\",\"system_fingerprint\":\"fp_b3f1157249\",\"choices\":[],").unwrap();
    let end = at + input[at..].find("\n\n").unwrap() + 2;
    let usage_chunk = &input[at..end];
    // 84 x 0.15 + 41 x 0.60 = 12.6 + 24.6 = 37.2 micro-dollars.
    let cost = "0.0000372";

    // Not asked: dropped, still metered and priced.
    let (out, t) = run(
        Format::OpenAiChat,
        Format::OpenAiChat,
        meta(false, Some(rates())),
        &input,
    );
    let stripped = input.replace(usage_chunk, "");
    assert_eq!(out, stripped.clone() + &comment(cost, 84, 41, 0));
    assert_eq!((t.usage().input, t.usage().output), (84, 41));
    assert_eq!(cost_of(&t).unwrap(), cost);
    // Not priced: dropped all the same, and no comment.
    let (out, t) = run(
        Format::OpenAiChat,
        Format::OpenAiChat,
        meta(false, None),
        &input,
    );
    assert_eq!(out, stripped);
    assert_eq!(t.usage().input, 84);

    // Asked: kept, with its cost; every other byte as the provider sent it.
    let (out, _) = run(
        Format::OpenAiChat,
        Format::OpenAiChat,
        meta(true, Some(rates())),
        &input,
    );
    let priced = usage_chunk.replace(
        "\"rejected_prediction_tokens\":0}}}",
        &format!("\"rejected_prediction_tokens\":0}},\"cost\":{cost}}}}}"),
    );
    assert_eq!(
        out,
        replaced_once(&input, usage_chunk, &priced) + &comment(cost, 84, 41, 0)
    );
    let v: serde_json::Value = serde_json::from_str(&priced[6..]).unwrap();
    assert_eq!(v["usage"]["cost"].as_f64(), Some(3.72e-5), "a JSON number");
    // Not priced: byte for byte.
    let (out, _) = run(
        Format::OpenAiChat,
        Format::OpenAiChat,
        meta(true, None),
        &input,
    );
    assert_eq!(out, input);
}

#[test]
fn anthropic_passthrough_prices_message_delta_with_message_start_input() {
    let input = fixture(Format::Anthropic, "cache_usage.sse");
    let (out, t) = run(
        Format::Anthropic,
        Format::Anthropic,
        meta(false, Some(rates())),
        &input,
    );
    let want = replaced_once(
        &input,
        "\"output_tokens\":40,\"server_tool_use\":null}}",
        &format!(
            "\"output_tokens\":40,\"server_tool_use\":null,\"cost\":{ANTHROPIC_CACHED_COST}}}}}"
        ),
    ) + &comment(ANTHROPIC_CACHED_COST, 9312, 40, 9000);
    assert_eq!(out, want);
    assert!(out.contains("message_stop\"}\n\n: x-flux-cost-usd="));
    assert_eq!(
        t.usage(),
        Usage {
            input: 9312,
            cached_input: 9000,
            cache_write: 300,
            output: 40,
            reasoning: 0
        }
    );
}

#[test]
fn anthropic_message_delta_with_output_only_is_merged_with_message_start() {
    // Older API versions: message_delta reports output_tokens alone.
    let input = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"m\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":300,\"cache_read_input_tokens\":9000,\"output_tokens\":1}}}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":40}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );
    for client in Format::ALL {
        let (out, t) = run(client, Format::Anthropic, meta(true, Some(rates())), input);
        assert_eq!(
            (
                t.usage().input,
                t.usage().cached_input,
                t.usage().cache_write,
                t.usage().output
            ),
            (9312, 9000, 300, 40),
            "{client:?}"
        );
        assert_eq!(cost_of(&t).unwrap(), ANTHROPIC_CACHED_COST);
        assert!(
            out.contains(&format!("\"cost\":{ANTHROPIC_CACHED_COST}")),
            "{client:?}: {out}"
        );
        assert!(out.ends_with(&comment(ANTHROPIC_CACHED_COST, 9312, 40, 9000)));
    }
}

#[test]
fn responses_passthrough_prices_response_completed() {
    let input = fixture(Format::OpenAiResponses, "usage_cached.sse");
    let (out, t) = run(
        Format::OpenAiResponses,
        Format::OpenAiResponses,
        meta(false, Some(rates())),
        &input,
    );
    let want = replaced_once(
        &input,
        "\"total_tokens\":7017}",
        &format!("\"total_tokens\":7017,\"cost\":{RESPONSES_CACHED_COST}}}"),
    ) + &comment(RESPONSES_CACHED_COST, 7012, 5, 6912);
    assert_eq!(out, want);
    assert_eq!(cost_of(&t).unwrap(), RESPONSES_CACHED_COST);

    // response.incomplete carries the final usage too.
    let input = fixture(Format::OpenAiResponses, "incomplete.sse");
    let (out, t) = run(
        Format::OpenAiResponses,
        Format::OpenAiResponses,
        meta(false, Some(rates())),
        &input,
    );
    // 20 x 0.15 + 16 x 0.60 = 3 + 9.6 micro-dollars.
    assert_eq!(cost_of(&t).unwrap(), "0.0000126");
    let last = out.trim_end().rsplit("\n\n").nth(1).unwrap();
    assert!(last.contains("\"cost\":0.0000126}"), "{last}");
    assert!(out.ends_with(&comment("0.0000126", 20, 16, 0)));
}

/// The data of the last event named `name` (or the last `data:` line for Chat).
fn last_data<'s>(out: &'s str, needle: &str) -> &'s str {
    out.split("\n\n")
        .filter(|e| e.contains(needle))
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .last()
        .unwrap_or_else(|| panic!("no {needle} in {out}"))
}

fn raw_cost(usage: &RawValue) -> String {
    #[derive(Deserialize)]
    struct U<'a> {
        #[serde(borrow)]
        cost: &'a RawValue,
    }
    serde_json::from_str::<U>(usage.get())
        .unwrap()
        .cost
        .get()
        .to_owned()
}

/// The `cost` written in the final usage object a client of `client` reads, verbatim.
fn final_cost(client: Format, out: &str) -> String {
    let probe = |data: &str| -> String {
        let p: Probe = serde_json::from_str(data).unwrap();
        match client {
            Format::OpenAiResponses => {
                let r: Probe = serde_json::from_str(p.response.unwrap().get()).unwrap();
                raw_cost(r.usage.unwrap())
            }
            _ => raw_cost(p.usage.unwrap()),
        }
    };
    match client {
        Format::OpenAiChat => probe(last_data(out, "\"choices\":[]")),
        Format::Anthropic => probe(last_data(out, "event: message_delta")),
        Format::OpenAiResponses => probe(last_data(out, "event: response.completed")),
    }
}

#[test]
fn translated_streams_carry_the_cost_in_usage_and_the_comment() {
    let cases = [
        (
            Format::OpenAiChat,
            "stream_usage_cached.sse",
            CHAT_CACHED_COST,
            (2048, 300, 1920),
        ),
        (
            Format::Anthropic,
            "cache_usage.sse",
            ANTHROPIC_CACHED_COST,
            (9312, 40, 9000),
        ),
        (
            Format::OpenAiResponses,
            "usage_cached.sse",
            RESPONSES_CACHED_COST,
            (7012, 5, 6912),
        ),
    ];
    for (provider, file, cost, (input_tokens, output, cached)) in cases {
        let input = fixture(provider, file);
        for client in Format::ALL.into_iter().filter(|c| *c != provider) {
            let (out, t) = run(client, provider, meta(true, Some(rates())), &input);
            assert_eq!(final_cost(client, &out), cost, "{provider:?} -> {client:?}");
            assert_eq!(cost_of(&t).unwrap(), cost);
            // The comment follows the last event.
            let last_event = match client {
                Format::OpenAiChat => "data: [DONE]\n\n".to_owned(),
                Format::Anthropic => {
                    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_owned()
                }
                Format::OpenAiResponses => "}\n\n".to_owned(),
            };
            let tail = last_event + &comment(cost, input_tokens, output, cached);
            assert!(out.ends_with(&tail), "{provider:?} -> {client:?}: {out}");
            if client == Format::OpenAiResponses {
                let completed = out.rfind("event: response.completed\n").unwrap();
                assert!(out[completed..].ends_with(&tail));
            }

            // Not billed: no cost anywhere.
            let (out, _) = run(client, provider, meta(true, None), &input);
            assert!(!out.contains("cost"), "{provider:?} -> {client:?}: {out}");
        }
    }
}

/// Every `cost` member of a client's stream, verbatim, and the comment's amount.
fn costs_told(out: &str) -> (Vec<String>, Option<String>) {
    let mut costs = Vec::new();
    for data in out.lines().filter_map(|l| l.strip_prefix("data: ")) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
            continue;
        };
        for usage in [&v["usage"], &v["response"]["usage"]] {
            if let Some(c) = usage.get("cost") {
                costs.push(c.to_string());
            }
        }
    }
    let comment = out
        .lines()
        .find_map(|l| l.strip_prefix(": x-flux-cost-usd="))
        .map(|c| c.split(' ').next().unwrap().to_owned());
    (costs, comment)
}

#[test]
fn every_stream_tells_the_amount_it_is_given_and_prices_nothing_itself() {
    // A bill below the usage's price, as a hard cap makes it.
    let cases = [
        (Format::OpenAiChat, "stream_usage_cached.sse"),
        (Format::Anthropic, "cache_usage.sse"),
        (Format::OpenAiResponses, "usage_cached.sse"),
    ];
    for (provider, file) in cases {
        let input = fixture(provider, file);
        for client in Format::ALL {
            let mut t = StreamTranscoder::new(client, provider, meta(true, None).meta);
            let mut out = BytesMut::new();
            for piece in input.as_bytes().chunks(11) {
                t.push(piece, &mut out).unwrap();
            }
            t.finish(&mut out).unwrap();
            let before_close = String::from_utf8(out.to_vec()).unwrap();
            assert_eq!(
                costs_told(&before_close),
                (vec![], None),
                "{provider:?} -> {client:?}: nothing priced before the bill"
            );
            let usage = t.usage();
            let billed = Billed {
                cost: "0.001".parse().unwrap(),
                usage,
            };
            assert_ne!(cost_of(&t).unwrap(), "0.001");
            t.close(Some(&billed), &mut out);
            let out = String::from_utf8(out.to_vec()).unwrap();
            assert_eq!(
                costs_told(&out),
                (vec!["0.001".to_owned()], Some("0.001".to_owned())),
                "{provider:?} -> {client:?}: {out}"
            );
            assert!(out.ends_with(&comment(
                "0.001",
                usage.input,
                usage.output,
                usage.cached_input
            )));
        }
    }
}

#[test]
fn a_passthrough_stream_holds_back_only_its_final_usage_event() {
    let input = fixture(Format::Anthropic, "cache_usage.sse");
    let mut t = StreamTranscoder::new(Format::Anthropic, Format::Anthropic, meta(true, None).meta);
    let mut out = BytesMut::new();
    t.push(input.as_bytes(), &mut out).unwrap();
    let at = input.find("event: message_delta").unwrap();
    assert_eq!(
        &out[..],
        &input.as_bytes()[..at],
        "all but message_delta and after"
    );
    t.finish(&mut out).unwrap();
    t.close(None, &mut out);
    assert_eq!(&out[..], input.as_bytes(), "unbilled: as it came");

    // A usage object followed by more than a tail: not the final one, relayed as it came.
    let early =
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n";
    let text = format!(
        "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
        "x".repeat(1000)
    );
    let mut t = StreamTranscoder::new(
        Format::OpenAiChat,
        Format::OpenAiChat,
        meta(true, None).meta,
    );
    let mut out = BytesMut::new();
    t.push(early.as_bytes(), &mut out).unwrap();
    assert!(out.is_empty());
    for _ in 0..20 {
        t.push(text.as_bytes(), &mut out).unwrap();
    }
    assert!(out.starts_with(early.as_bytes()), "released unpriced");
    t.finish(&mut out).unwrap();
    let billed = Billed {
        cost: "0.5".parse().unwrap(),
        usage: t.usage(),
    };
    t.close(Some(&billed), &mut out);
    let out = String::from_utf8(out.to_vec()).unwrap();
    assert_eq!(costs_told(&out), (vec![], Some("0.5".to_owned())));
}

#[test]
fn a_chat_client_that_did_not_ask_gets_no_usage_chunk_but_the_comment() {
    let input = fixture(Format::Anthropic, "cache_usage.sse");
    let (out, t) = run(
        Format::OpenAiChat,
        Format::Anthropic,
        meta(false, Some(rates())),
        &input,
    );
    assert!(!out.contains("\"usage\""), "{out}");
    assert!(out.ends_with(
        &("data: [DONE]\n\n".to_owned() + &comment(ANTHROPIC_CACHED_COST, 9312, 40, 9000))
    ));
    assert_eq!(cost_of(&t).unwrap(), ANTHROPIC_CACHED_COST);
}

#[test]
fn a_broken_stream_has_no_comment_but_reports_its_cost_so_far() {
    for (client, provider) in [
        (Format::Anthropic, Format::Anthropic),
        (Format::OpenAiChat, Format::Anthropic),
    ] {
        let input = fixture(Format::Anthropic, "cache_usage.sse");
        let cut = input.find("event: content_block_stop").unwrap();
        let mut t = StreamTranscoder::new(client, provider, meta(true, None).meta);
        let mut out = BytesMut::new();
        t.push(&input.as_bytes()[..cut], &mut out).unwrap();
        let billed = billed(&t, Some(rates()));
        t.fail("upstream went away", billed.as_ref(), &mut out);
        t.finish(&mut out).unwrap();
        t.close(billed.as_ref(), &mut out);
        let out = String::from_utf8(out.to_vec()).unwrap();
        assert!(!out.contains("x-flux-cost-usd"), "{out}");
        // message_start's usage: 312 uncached x 0.15 + 9000 x 0.075 + 1 x 0.60.
        assert_eq!(cost_of(&t).unwrap(), "0.0007224");
        assert_eq!(t.output_text_bytes(), 2, "the text 'hi'");
    }
    // No usage before the break: no cost.
    let input = fixture(Format::OpenAiChat, "stream_text.sse");
    let mut t = StreamTranscoder::new(
        Format::OpenAiChat,
        Format::OpenAiChat,
        meta(true, None).meta,
    );
    let mut out = BytesMut::new();
    t.push(input.as_bytes(), &mut out).unwrap();
    t.fail("idle timeout", None, &mut out);
    assert_eq!(cost_of(&t), None);
    assert_eq!(t.output_text_bytes(), "Hello there! \"hi\"".len() as u64);
}

#[test]
fn a_provider_error_in_the_stream_gets_no_comment() {
    for (provider, file) in [
        (Format::Anthropic, "error.sse"),
        (Format::OpenAiChat, "stream_error.sse"),
        (Format::OpenAiResponses, "failed.sse"),
    ] {
        let input = fixture(provider, file);
        for client in Format::ALL {
            let (out, _) = run(client, provider, meta(true, Some(rates())), &input);
            assert!(
                !out.contains("x-flux-cost-usd"),
                "{provider:?} -> {client:?}"
            );
        }
    }
}

#[test]
fn output_text_bytes_count_text_arguments_and_thinking_in_both_modes() {
    for (provider, file, bytes) in [
        (
            Format::OpenAiChat,
            "stream_text.sse",
            "Hello there! \"hi\"".len(),
        ),
        (
            Format::OpenAiChat,
            "stream_tools_parallel.sse",
            "{\"city\": \"Paris\"}{\"tz\": \"CET\"}".len(),
        ),
        (
            Format::OpenAiChat,
            "stream_reasoning.sse",
            "The user wants 2+2.4".len(),
        ),
        (Format::Anthropic, "cache_usage.sse", 2),
    ] {
        let input = fixture(provider, file);
        for client in Format::ALL {
            let (_, t) = run(client, provider, meta(true, None), &input);
            assert_eq!(t.output_text_bytes(), bytes as u64, "{file} -> {client:?}");
        }
    }
}

#[test]
fn an_unterminated_last_event_is_ended_before_the_comment() {
    let input = fixture(Format::OpenAiChat, "stream_usage_cached.sse");
    let cut = input.trim_end();
    assert!(cut.ends_with("data: [DONE]"));
    let (out, _) = run(
        Format::OpenAiChat,
        Format::OpenAiChat,
        meta(true, Some(rates())),
        cut,
    );
    assert!(out
        .ends_with(&("data: [DONE]\n\n".to_owned() + &comment(CHAT_CACHED_COST, 2048, 300, 1920))));
}

#[test]
fn with_cost_sets_or_replaces_the_member_and_keeps_every_other_byte() {
    let chat = Format::OpenAiChat;
    assert_eq!(
        with_cost(
            chat,
            None,
            r#"{"choices":[], "usage" : { "a" : 1 } }"#,
            "0.5"
        )
        .unwrap(),
        r#"{"choices":[], "usage" : { "a" : 1 ,"cost":0.5} }"#
    );
    // An upstream that already prices (OpenRouter): the gateway's price replaces it.
    assert_eq!(
        with_cost(
            chat,
            None,
            r#"{"usage":{"cost":0.00012,"is_byok":false}}"#,
            "1.0"
        )
        .unwrap(),
        r#"{"usage":{"cost":1.0,"is_byok":false}}"#
    );
    assert_eq!(
        with_cost(chat, None, r#"{"usage":{}}"#, "0.1").unwrap(),
        r#"{"usage":{"cost":0.1}}"#
    );
    assert_eq!(with_cost(chat, None, r#"{"usage":null}"#, "0.1"), None);
    assert_eq!(with_cost(chat, None, r#"{"usage":[1]}"#, "0.1"), None);
    assert_eq!(with_cost(chat, None, "not json", "0.1"), None);
    // Anthropic: message_delta only (message_start's usage is not the final one).
    let a = Format::Anthropic;
    let start = r#"{"type":"message_start","message":{"usage":{"input_tokens":1}}}"#;
    assert_eq!(with_cost(a, None, start, "0.1"), None);
    let delta = r#"{"usage":{"output_tokens":2}}"#;
    assert_eq!(with_cost(a, None, delta, "0.1"), None);
    assert_eq!(
        with_cost(a, Some("message_delta"), delta, "0.1").unwrap(),
        r#"{"usage":{"output_tokens":2,"cost":0.1}}"#
    );
    // Responses: the response's usage in completed / incomplete events.
    let r = Format::OpenAiResponses;
    let done = r#"{"type":"response.completed","response":{"usage":{"x":1},"y":{"usage":{}}}}"#;
    assert_eq!(
        with_cost(r, None, done, "0.2").unwrap(),
        r#"{"type":"response.completed","response":{"usage":{"x":1,"cost":0.2},"y":{"usage":{}}}}"#
    );
    let failed = r#"{"type":"response.failed","response":{"usage":{"x":1}}}"#;
    assert_eq!(with_cost(r, None, failed, "0.2"), None);
}

#[test]
fn a_multi_line_usage_event_is_rewritten_on_data_lines() {
    let input = "data: {\"choices\":[],\ndata: \"usage\":{\"prompt_tokens\":10,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n";
    let (out, _) = run(
        Format::OpenAiChat,
        Format::OpenAiChat,
        meta(true, Some(rates())),
        input,
    );
    // 10 x 0.15 + 1 x 0.60 = 2.1 micro-dollars.
    assert_eq!(
        out,
        "data: {\"choices\":[],\ndata: \"usage\":{\"prompt_tokens\":10,\"completion_tokens\":1,\"cost\":0.0000021}}\n\ndata: [DONE]\n\n"
            .to_owned()
            + &comment("0.0000021", 10, 1, 0)
    );
}

fn chat_request(body: &str) -> Request<'_> {
    parse_request(Format::OpenAiChat, body.as_bytes()).unwrap()
}

fn provider_body(body: &str) -> String {
    let req = chat_request(body);
    String::from_utf8(encode_request(Format::OpenAiChat, &req, "gpt-4o-mini")).unwrap()
}

#[test]
fn a_passthrough_chat_stream_asks_for_usage_by_splicing() {
    let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
    let cases = [
        // Absent: the member first, everything else as written.
        (
            format!(r#" {{"model": "flux-auto", "stream":true, {msgs}}}"#),
            format!(
                r#" {{"stream_options":{{"include_usage":true}},"model": "gpt-4o-mini", "stream":true, {msgs}}}"#
            ),
        ),
        // Present, false: only the value changes.
        (
            format!(
                r#"{{"stream":true,"stream_options": {{"include_usage" : false}},"model":"flux-auto",{msgs}}}"#
            ),
            format!(
                r#"{{"stream":true,"stream_options": {{"include_usage" : true}},"model":"gpt-4o-mini",{msgs}}}"#
            ),
        ),
        // Present with other keys: kept.
        (
            format!(
                r#"{{"model":"flux-auto","stream":true,"stream_options":{{"include_obfuscation":false}},{msgs}}}"#
            ),
            format!(
                r#"{{"model":"gpt-4o-mini","stream":true,"stream_options":{{"include_usage":true,"include_obfuscation":false}},{msgs}}}"#
            ),
        ),
        (
            format!(
                r#"{{"model":"flux-auto","stream":true,"stream_options":{{"include_obfuscation":false,"include_usage":null}},{msgs}}}"#
            ),
            format!(
                r#"{{"model":"gpt-4o-mini","stream":true,"stream_options":{{"include_obfuscation":false,"include_usage":true}},{msgs}}}"#
            ),
        ),
        // Null or empty: replaced.
        (
            format!(r#"{{"model":"flux-auto","stream":true,"stream_options":null,{msgs}}}"#),
            format!(
                r#"{{"model":"gpt-4o-mini","stream":true,"stream_options":{{"include_usage":true}},{msgs}}}"#
            ),
        ),
        (
            format!(r#"{{"model":"flux-auto","stream":true,"stream_options":{{ }},{msgs}}}"#),
            format!(
                r#"{{"model":"gpt-4o-mini","stream":true,"stream_options":{{"include_usage":true}},{msgs}}}"#
            ),
        ),
    ];
    for (client, want) in cases {
        let got = provider_body(&client);
        assert_eq!(got, want);
        let v: serde_json::Value = serde_json::from_str(&got).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
    }
    // Asked already, or not streaming: only the model changes.
    for client in [
        format!(
            r#"{{"model":"flux-auto","stream":true,"stream_options":{{"include_usage":true}},{msgs}}}"#
        ),
        format!(r#"{{"model":"flux-auto","stream":false,{msgs}}}"#),
        format!(r#"{{"model":"flux-auto",{msgs}}}"#),
    ] {
        assert_eq!(
            provider_body(&client),
            client.replace("flux-auto", "gpt-4o-mini")
        );
    }
    // Other formats are not touched.
    let body = format!(r#"{{"model":"flux-auto","stream":true,"max_tokens":5,{msgs}}}"#);
    let req = parse_request(Format::Anthropic, body.as_bytes()).unwrap();
    assert_eq!(
        encode_request(Format::Anthropic, &req, "claude-x"),
        body.replace("flux-auto", "claude-x").into_bytes()
    );
}
