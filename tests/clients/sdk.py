#!/usr/bin/env python3
"""Drive the real openai-python and anthropic-python SDKs against a FluxRouter gateway.

    sdk.py SCENARIO --base-url http://127.0.0.1:PORT --key sk-... [--model flux-auto]
           [--stream] [--auth bearer|x-api-key] [--http2]

Scenarios:
  chat              openai: chat.completions, not streamed
  chat-stream       openai: chat.completions, streamed (with usage)
  chat-tool         openai: chat.completions, a tool call and the follow-up with its result
  responses-stream  openai: responses, streamed
  responses-tool    openai: responses, a function_call and the follow-up with its output
  messages          anthropic: messages, not streamed
  messages-stream   anthropic: messages, streamed
  messages-tool     anthropic: messages, a tool_use and the follow-up with its tool_result
  httpx-h2          httpx2 (the SDKs' HTTP client) with http2=True, no SDK: a chat completion,
                    then the same streamed; each must be served over HTTP/2

Over TLS (an https:// base URL) the clients trust what a user's would: the system roots, or
the CA file named by SSL_CERT_FILE, which httpx2 reads. With --http2 the SDKs are given an
`http_client` with http2=True (it needs the `h2` package) and every response must come over
HTTP/2 (HTTP/2 is only offered over TLS by ALPN: httpx2 does not do h2c).

The tool scenarios stream both turns with --stream. The anthropic scenarios authenticate with
`api_key=` (which 2.x sends as `Authorization: Bearer`) or, with --auth x-api-key, with only an
`x-api-key` header given through `default_headers`.

The tool is made to be called by the simulated provider's directive `[sim:call NAME {args}]`
in the prompt. Prints one JSON line with what the client saw (text, tool call, the X-Flux-*
headers of each request, usage) and exits 1 when the exchange is not what it should be.
"""

import argparse
import json
import sys
import traceback

TOOL_NAME = "get_weather"
TOOL_ARGS = {"city": "Paris"}
TOOL_DESCRIPTION = "Current weather in a city."
TOOL_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
# The tool's result: the test finds it in the simulator's recorded follow-up request.
TOOL_RESULT = "sunny, 21 C in Paris (tool result 7f3a)"
TOOL_PROMPT = "What is the weather in Paris? [sim:call %s %s]" % (
    TOOL_NAME,
    json.dumps(TOOL_ARGS, separators=(",", ":")),
)
TEXT_PROMPT = "say hi to the gateway"
HEADERS = (
    "x-flux-request-id",
    "x-flux-model",
    "x-flux-original-model",
    "x-flux-routed",
    "x-flux-lane",
    "x-flux-cost-usd",
    "x-request-id",
    "request-id",
)
TIMEOUT_S = 60.0


class Failure(Exception):
    pass


def check(cond, message):
    if not cond:
        raise Failure(message)


def headers_of(raw):
    """The FluxRouter headers of one raw SDK response, plus its status and HTTP version."""
    out = {"status": raw.status_code, "http_version": raw.http_response.http_version}
    for name in HEADERS:
        value = raw.headers.get(name)
        if value is not None:
            out[name] = value
    return out


def dump(obj):
    if obj is None:
        return None
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    return obj


def check_call(call):
    check(call is not None, "expected a call to %s, got none" % TOOL_NAME)
    check(call["name"] == TOOL_NAME, "called %r, expected %r" % (call["name"], TOOL_NAME))
    try:
        args = json.loads(call["arguments"]) if isinstance(call["arguments"], str) else call["arguments"]
    except ValueError:
        raise Failure("tool arguments are not JSON: %r" % (call["arguments"],))
    check(args == TOOL_ARGS, "tool arguments %r, expected %r" % (args, TOOL_ARGS))
    check(bool(call["id"]), "tool call without an id")


# --- OpenAI Chat Completions --------------------------------------------------------------

def http_client_kwargs(opts):
    """`http_client=` for an SDK when --http2 asks for one (else the SDK's own default)."""
    if not opts.http2:
        return {}
    import httpx2

    return {"http_client": httpx2.Client(http2=True, timeout=TIMEOUT_S)}


def openai_client(opts):
    import openai

    return openai.OpenAI(
        base_url=opts.base_url.rstrip("/") + "/v1",
        api_key=opts.key,
        max_retries=0,
        timeout=TIMEOUT_S,
        **http_client_kwargs(opts),
    )


def chat_turn(client, opts, messages, tools, stream):
    """One chat completion; returns (text, tool_calls, usage, headers)."""
    kwargs = {"model": opts.model, "messages": messages}
    if tools:
        kwargs["tools"] = tools
    if stream:
        kwargs["stream"] = True
        kwargs["stream_options"] = {"include_usage": True}
    raw = client.chat.completions.with_raw_response.create(**kwargs)
    headers = headers_of(raw)
    parsed = raw.parse()
    if not stream:
        check(parsed.choices, "no choices in %r" % (dump(parsed),))
        message = parsed.choices[0].message
        calls = [
            {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
            for c in (message.tool_calls or [])
        ]
        return message.content or "", calls, dump(parsed.usage), headers
    text, calls, usage, finish = [], {}, None, None
    for chunk in parsed:
        if chunk.usage is not None:
            usage = dump(chunk.usage)
        for choice in chunk.choices:
            if choice.finish_reason:
                finish = choice.finish_reason
            delta = choice.delta
            if delta.content:
                text.append(delta.content)
            for tc in delta.tool_calls or []:
                slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                if tc.id:
                    slot["id"] = tc.id
                if tc.function is not None:
                    slot["name"] += tc.function.name or ""
                    slot["arguments"] += tc.function.arguments or ""
    check(finish is not None, "the stream ended without a finish_reason")
    return "".join(text), [calls[i] for i in sorted(calls)], usage, headers


def chat(opts):
    client = openai_client(opts)
    text, calls, usage, headers = chat_turn(
        client, opts, [{"role": "user", "content": TEXT_PROMPT}], None, False
    )
    check(text, "no text in the answer")
    check(not calls, "unexpected tool calls %r" % (calls,))
    check(usage and usage.get("completion_tokens"), "no completion_tokens in %r" % (usage,))
    return {"text": text, "usage": usage, "requests": [headers]}


def chat_stream(opts):
    client = openai_client(opts)
    text, calls, usage, headers = chat_turn(
        client, opts, [{"role": "user", "content": TEXT_PROMPT}], None, True
    )
    check(text, "no text streamed")
    check(not calls, "unexpected tool calls %r" % (calls,))
    check(usage is not None, "no usage chunk although include_usage was asked")
    return {"text": text, "usage": usage, "requests": [headers]}


def chat_tool(opts):
    client = openai_client(opts)
    tools = [{
        "type": "function",
        "function": {"name": TOOL_NAME, "description": TOOL_DESCRIPTION, "parameters": TOOL_SCHEMA},
    }]
    messages = [{"role": "user", "content": TOOL_PROMPT}]
    text1, calls, _, headers1 = chat_turn(client, opts, messages, tools, opts.stream)
    check(len(calls) == 1, "expected one tool call, got %r (text %r)" % (calls, text1))
    call = calls[0]
    check_call(call)
    messages.append({
        "role": "assistant",
        "content": None,
        "tool_calls": [{
            "id": call["id"],
            "type": "function",
            "function": {"name": call["name"], "arguments": call["arguments"]},
        }],
    })
    messages.append({"role": "tool", "tool_call_id": call["id"], "content": TOOL_RESULT})
    text, calls2, usage, headers2 = chat_turn(client, opts, messages, tools, opts.stream)
    check(not calls2, "the follow-up called a tool again: %r" % (calls2,))
    check(text, "no text after the tool result")
    return {"text": text, "tool_call": call, "usage": usage, "requests": [headers1, headers2]}


# --- OpenAI Responses ---------------------------------------------------------------------

def responses_turn(client, opts, input_items, tools, stream):
    """One response; returns (text, function_calls, usage, headers)."""
    kwargs = {"model": opts.model, "input": input_items}
    if tools:
        kwargs["tools"] = tools
    if stream:
        kwargs["stream"] = True
    raw = client.responses.with_raw_response.create(**kwargs)
    headers = headers_of(raw)
    parsed = raw.parse()
    if stream:
        deltas, done_items, final, types = [], [], None, []
        for event in parsed:
            types.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "response.output_item.done":
                done_items.append(event.item)
            elif event.type in ("response.completed", "response.incomplete"):
                final = event.response
            elif event.type in ("response.failed", "error"):
                raise Failure("stream failed: %r" % (dump(event),))
        check(final is not None, "no response.completed event; events: %r" % (types,))
        check(types[0] == "response.created", "first event %r, not response.created" % (types[0],))
        text = "".join(deltas)
        check(text == (final.output_text or ""),
              "streamed text %r differs from the completed response's %r" % (text, final.output_text))
        items = done_items
    else:
        final = parsed
        text = final.output_text or ""
        items = final.output
    calls = [
        {"id": i.call_id, "name": i.name, "arguments": i.arguments, "item": dump(i)}
        for i in items
        if i.type == "function_call"
    ]
    return text, calls, dump(final.usage), headers


def responses_stream(opts):
    client = openai_client(opts)
    text, calls, usage, headers = responses_turn(client, opts, TEXT_PROMPT, None, True)
    check(text, "no text streamed")
    check(not calls, "unexpected function calls %r" % (calls,))
    check(usage is not None, "no usage in response.completed")
    return {"text": text, "usage": usage, "requests": [headers]}


def responses_tool(opts):
    client = openai_client(opts)
    tools = [{
        "type": "function",
        "name": TOOL_NAME,
        "description": TOOL_DESCRIPTION,
        "parameters": TOOL_SCHEMA,
        "strict": False,
    }]
    items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": TOOL_PROMPT}]}]
    text1, calls, _, headers1 = responses_turn(client, opts, items, tools, opts.stream)
    check(len(calls) == 1, "expected one function_call, got %r (text %r)" % (calls, text1))
    call = calls[0]
    check_call(call)
    # Stateless, as Codex does it: resend the history with the call and its output.
    items.append({
        "type": "function_call",
        "call_id": call["id"],
        "name": call["name"],
        "arguments": call["arguments"],
    })
    items.append({"type": "function_call_output", "call_id": call["id"], "output": TOOL_RESULT})
    text, calls2, usage, headers2 = responses_turn(client, opts, items, tools, opts.stream)
    check(not calls2, "the follow-up called a tool again: %r" % (calls2,))
    check(text, "no text after the function_call_output")
    del call["item"]
    return {"text": text, "tool_call": call, "usage": usage, "requests": [headers1, headers2]}


# --- Anthropic Messages -------------------------------------------------------------------

def anthropic_client(opts):
    import anthropic

    base = opts.base_url.rstrip("/") + "/anthropic"
    if opts.auth == "x-api-key":
        return anthropic.Anthropic(
            base_url=base,
            api_key=None,
            auth_token=None,
            default_headers={"x-api-key": opts.key},
            max_retries=0,
            timeout=TIMEOUT_S,
            **http_client_kwargs(opts),
        )
    return anthropic.Anthropic(
        base_url=base, api_key=opts.key, max_retries=0, timeout=TIMEOUT_S, **http_client_kwargs(opts)
    )


def messages_turn(client, opts, messages, tools, stream):
    """One message; returns (text, tool_uses, content blocks, usage, headers)."""
    kwargs = {"model": opts.model, "max_tokens": 256, "messages": messages}
    if tools:
        kwargs["tools"] = tools
    if stream:
        kwargs["stream"] = True
    raw = client.messages.with_raw_response.create(**kwargs)
    headers = headers_of(raw)
    parsed = raw.parse()
    if not stream:
        blocks = [dump(b) for b in parsed.content]
        usage = dump(parsed.usage)
        stop = parsed.stop_reason
    else:
        blocks, json_parts, usage, stop, types = {}, {}, {}, None, []
        for event in parsed:
            types.append(event.type)
            if event.type == "message_start":
                usage.update({k: v for k, v in dump(event.message.usage).items() if v is not None})
            elif event.type == "content_block_start":
                blocks[event.index] = dump(event.content_block)
            elif event.type == "content_block_delta":
                block = blocks.get(event.index)
                check(block is not None, "delta for block %d before its start" % event.index)
                if event.delta.type == "text_delta":
                    block["text"] = block.get("text", "") + event.delta.text
                elif event.delta.type == "input_json_delta":
                    json_parts[event.index] = json_parts.get(event.index, "") + event.delta.partial_json
            elif event.type == "message_delta":
                stop = event.delta.stop_reason
                usage.update({k: v for k, v in dump(event.usage).items() if v is not None})
        check(types and types[0] == "message_start", "first event is not message_start: %r" % (types,))
        check(types[-1] == "message_stop", "last event is not message_stop: %r" % (types,))
        for index, text in json_parts.items():
            try:
                blocks[index]["input"] = json.loads(text) if text else {}
            except ValueError:
                raise Failure("tool input is not JSON: %r" % (text,))
        blocks = [blocks[i] for i in sorted(blocks)]
    text = "".join(b.get("text", "") for b in blocks if b["type"] == "text")
    uses = [
        {"id": b["id"], "name": b["name"], "arguments": b["input"]}
        for b in blocks
        if b["type"] == "tool_use"
    ]
    if uses:
        check(stop == "tool_use", "stop_reason %r with a tool_use block" % (stop,))
    return text, uses, blocks, usage, headers


def messages(opts):
    client = anthropic_client(opts)
    text, uses, _, usage, headers = messages_turn(
        client, opts, [{"role": "user", "content": TEXT_PROMPT}], None, False
    )
    check(text, "no text in the answer")
    check(not uses, "unexpected tool_use %r" % (uses,))
    check(usage.get("output_tokens"), "no output_tokens in the usage: %r" % (usage,))
    return {"text": text, "usage": usage, "requests": [headers]}


def messages_stream(opts):
    client = anthropic_client(opts)
    text, uses, _, usage, headers = messages_turn(
        client, opts, [{"role": "user", "content": TEXT_PROMPT}], None, True
    )
    check(text, "no text streamed")
    check(not uses, "unexpected tool_use %r" % (uses,))
    check(usage.get("output_tokens"), "no output_tokens in the usage: %r" % (usage,))
    return {"text": text, "usage": usage, "requests": [headers]}


def messages_tool(opts):
    client = anthropic_client(opts)
    tools = [{"name": TOOL_NAME, "description": TOOL_DESCRIPTION, "input_schema": TOOL_SCHEMA}]
    messages = [{"role": "user", "content": TOOL_PROMPT}]
    text1, uses, blocks, _, headers1 = messages_turn(client, opts, messages, tools, opts.stream)
    check(len(uses) == 1, "expected one tool_use, got %r (text %r)" % (uses, text1))
    call = uses[0]
    check_call(call)
    # Send back the assistant turn as received (only the fields a request may carry).
    sent_back = []
    for b in blocks:
        if b["type"] == "text":
            sent_back.append({"type": "text", "text": b["text"]})
        elif b["type"] == "tool_use":
            sent_back.append({"type": "tool_use", "id": b["id"], "name": b["name"], "input": b["input"]})
    messages.append({"role": "assistant", "content": sent_back})
    messages.append({
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": TOOL_RESULT}],
    })
    text, uses2, _, usage, headers2 = messages_turn(client, opts, messages, tools, opts.stream)
    check(not uses2, "the follow-up called a tool again: %r" % (uses2,))
    check(text, "no text after the tool_result")
    return {"text": text, "tool_call": call, "usage": usage, "requests": [headers1, headers2]}


# --- httpx2 alone, over HTTP/2 -------------------------------------------------------------

def flux_headers(response):
    out = {"status": response.status_code, "http_version": response.http_version}
    for name in HEADERS:
        value = response.headers.get(name)
        if value is not None:
            out[name] = value
    return out


def httpx_h2(opts):
    """A chat completion and the same streamed, with httpx2's http2=True and nothing else."""
    import httpx2

    url = opts.base_url.rstrip("/") + "/v1/chat/completions"
    auth = {"authorization": "Bearer " + opts.key}
    body = {"model": opts.model, "messages": [{"role": "user", "content": TEXT_PROMPT}]}
    with httpx2.Client(http2=True, timeout=TIMEOUT_S) as client:
        response = client.post(url, headers=auth, json=body)
        first = flux_headers(response)
        check(response.status_code == 200, "status %d: %s" % (response.status_code, response.text[:2000]))
        answer = response.json()
        text = answer["choices"][0]["message"]["content"] or ""
        check(text, "no text in %r" % (answer,))
        events, cost_line = [], None
        with client.stream("POST", url, headers=auth, json=dict(body, stream=True)) as streamed:
            second = flux_headers(streamed)
            check(streamed.status_code == 200, "streamed status %d" % streamed.status_code)
            check(streamed.headers.get("content-type", "").startswith("text/event-stream"),
                  "streamed content-type %r" % (streamed.headers.get("content-type"),))
            for line in streamed.iter_lines():
                if line.startswith("data: "):
                    events.append(line[len("data: "):])
                elif line.startswith(":") and "x-flux-cost-usd" in line:
                    cost_line = line
    check(events and events[-1] == "[DONE]", "the stream did not end with [DONE]: %r" % (events[-3:],))
    deltas = []
    for data in events[:-1]:
        chunk = json.loads(data)
        for choice in chunk.get("choices", []):
            deltas.append((choice.get("delta") or {}).get("content") or "")
    streamed_text = "".join(deltas)
    check(streamed_text, "no text streamed in %d events" % len(events))
    check(cost_line is not None, "no x-flux-cost-usd line in the stream")
    for headers in (first, second):
        check(headers["http_version"] == "HTTP/2", "served over %r, not HTTP/2" % (headers["http_version"],))
    return {"text": text, "streamed_text": streamed_text, "events": len(events),
            "cost_line": cost_line, "requests": [first, second]}


SCENARIOS = {
    "chat": chat,
    "chat-stream": chat_stream,
    "chat-tool": chat_tool,
    "responses-stream": responses_stream,
    "responses-tool": responses_tool,
    "messages": messages,
    "messages-stream": messages_stream,
    "messages-tool": messages_tool,
    "httpx-h2": httpx_h2,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--base-url", required=True, help="the gateway's root URL")
    parser.add_argument("--key", required=True)
    parser.add_argument("--model", default="flux-auto")
    parser.add_argument("--stream", action="store_true", help="stream the tool scenarios")
    parser.add_argument("--auth", choices=("bearer", "x-api-key"), default="bearer")
    parser.add_argument("--http2", action="store_true",
                        help="give the SDK an httpx2 client with http2=True; require HTTP/2")
    opts = parser.parse_args()
    streamed = opts.stream or opts.scenario.endswith("-stream")
    result = {"scenario": opts.scenario, "stream": streamed, "auth": opts.auth}
    try:
        result.update(SCENARIOS[opts.scenario](opts))
        for headers in result["requests"]:
            check(headers.get("x-flux-request-id"), "no X-Flux-Request-Id: %r" % (headers,))
            check(headers.get("x-flux-model"), "no X-Flux-Model: %r" % (headers,))
            if opts.http2:
                check(headers["http_version"] == "HTTP/2",
                      "served over %r, not HTTP/2" % (headers["http_version"],))
        result["ok"] = True
    except Exception as exc:  # every failure, SDK errors included, becomes one JSON line
        result["ok"] = False
        result["error"] = "%s: %s" % (type(exc).__name__, exc)
        response = getattr(exc, "response", None)
        if response is not None:
            result["status"] = response.status_code
            result["response_headers"] = dict(response.headers)
            try:
                result["response_body"] = response.text[:4000]
            except Exception:
                pass
        traceback.print_exc(file=sys.stderr)
    print(json.dumps(result, sort_keys=True))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
