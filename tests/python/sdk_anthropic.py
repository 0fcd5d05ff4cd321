#!/usr/bin/env python3
"""End-to-end checks: the official Anthropic Python SDK against a running Tollgate.

    TOLLGATE_BASE_URL=http://127.0.0.1:8080 TOLLGATE_KEY=tgk_... python3 tests/python/sdk_anthropic.py

The gateway's providers must point at the mock upstream with the rules listed in
e2e_common.py. Prints one line per check; exits non-zero on any failure.
"""

import json

from e2e_common import (
    CANARY,
    CheckError,
    CUT_TEXT,
    DEFAULT_REPLY,
    REPLY_CANARY_TEXT,
    TOOL_ARGS,
    TOOL_COMPLETION_TOKENS,
    TOOL_NAME,
    Run,
    completion_words,
    eq,
    fail_first_key_once,
    import_sdk,
    require_env,
    true,
    words,
)

anthropic = import_sdk("anthropic")

BASE, KEY = require_env()
run = Run("anthropic sdk " + anthropic.__version__, KEY)


def client(api_key=KEY):
    # DefaultHttpxClient keeps the SDK's own defaults (timeouts, limits); the hook
    # only counts requests. max_retries=0: one SDK call is one HTTP request.
    http = anthropic.DefaultHttpxClient(event_hooks={"request": [run.on_request]})
    return anthropic.Anthropic(base_url=BASE, api_key=api_key, max_retries=0, http_client=http)


c = client()

TOOLS = [
    {
        "name": TOOL_NAME,
        "description": f"Current weather for a city. {CANARY}",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]


def user(text):
    return [{"role": "user", "content": text}]


def check_text_message(m, model, input_tokens, output_tokens=5, reply=DEFAULT_REPLY, check_input=True):
    eq("type", m.type, "message")
    eq("role", m.role, "assistant")
    eq("model", m.model, model)
    true("id", bool(m.id))
    eq("content block types", [b.type for b in m.content], ["text"])
    eq("content[0].text", m.content[0].text, reply)
    eq("stop_reason", m.stop_reason, "end_turn")
    if check_input:
        eq("usage.input_tokens", m.usage.input_tokens, input_tokens)
    eq("usage.output_tokens", m.usage.output_tokens, output_tokens)


def streamed_text(model, prompt, provider, reply=DEFAULT_REPLY, system=None):
    """messages.stream(): text_stream joined, final message, usage from events."""
    n = words(prompt) + (words(system) if system else 0)
    out = completion_words(reply)
    run.expect_event("anthropic", model, provider, True, 200, n, out)
    kwargs = {"system": system} if system else {}
    with c.messages.stream(model=model, max_tokens=64, messages=user(prompt), **kwargs) as stream:
        headers = stream.response.headers
        eq("x-tollgate-provider (stream)", headers.get("x-tollgate-provider"), provider)
        run.expect_event_id(headers.get("x-tollgate-event-id"), model)
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    eq("text_stream joined", text, reply)
    # input_tokens: Anthropic reports it in message_start; a translated OpenAI
    # stream learns it only at the end and sends it in message_delta, which
    # the SDK folds into the final message.
    check_text_message(final, model, n, out, reply)


def raw_stream_events(model, prompt, provider):
    """messages.create(stream=True): the raw event sequence."""
    n = words(prompt)
    run.expect_event("anthropic", model, provider, True, 200, n, 5)
    stream = c.messages.create(model=model, max_tokens=64, messages=user(prompt), stream=True)
    events = list(stream)
    types = [e.type for e in events]
    eq("first event", types[:1], ["message_start"])
    eq("last event", types[-1:], ["message_stop"])
    for required in ("content_block_start", "content_block_delta", "content_block_stop", "message_delta"):
        true(f"stream has {required}", required in types, repr(types))
    text = "".join(
        e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
    eq("text deltas joined", text, DEFAULT_REPLY)
    deltas = [e for e in events if e.type == "message_delta"]
    eq("number of message_delta events", len(deltas), 1)
    eq("message_delta stop_reason", deltas[0].delta.stop_reason, "end_turn")
    eq("message_delta usage.output_tokens", deltas[0].usage.output_tokens, 5)
    start_input = events[0].message.usage.input_tokens
    delta_input = getattr(deltas[0].usage, "input_tokens", None)
    true(
        "input tokens reported in message_start or message_delta",
        n in (start_input, delta_input),
        f"expected {n}; message_start has {start_input}, message_delta has {delta_input}",
    )


# --- Claude (native) -------------------------------------------------------------


@run.check
def messages_non_streamed():
    system = f"You are terse. {CANARY}"
    prompt = f"Say hello to the gateway test. {CANARY}"
    n = words(system, prompt)
    run.expect_event("anthropic", "claude-sonnet-4-5", "anthropic", False, 200, n, 5)
    m = c.messages.create(model="claude-sonnet-4-5", max_tokens=64, system=system, messages=user(prompt))
    check_text_message(m, "claude-sonnet-4-5", n)


@run.check
def messages_stream_helper():
    streamed_text("claude-sonnet-4-5", f"Stream a hello. {CANARY}", "anthropic", system=f"Be kind. {CANARY}")


@run.check
def messages_raw_stream_events():
    raw_stream_events("claude-sonnet-4-5", f"Raw events please. {CANARY}", "anthropic")


@run.check
def messages_multi_turn_blocks():
    turns = [
        {"role": "user", "content": [{"type": "text", "text": f"First question. {CANARY}"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "First answer."}]},
        {"role": "user", "content": [{"type": "text", "text": "Second question?"}]},
    ]
    n = words(f"First question. {CANARY}", "First answer.", "Second question?")
    run.expect_event("anthropic", "claude-sonnet-4-5", "anthropic", False, 200, n, 5)
    raw = c.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=64, messages=turns)
    eq("x-tollgate-provider", raw.headers.get("x-tollgate-provider"), "anthropic")
    eq("x-tollgate-model", raw.headers.get("x-tollgate-model"), "claude-sonnet-4-5")
    run.expect_event_id(raw.headers.get("x-tollgate-event-id"), "claude-sonnet-4-5")
    check_text_message(raw.parse(), "claude-sonnet-4-5", n)


# --- GPT through the Anthropic SDK (translated) ----------------------------------


@run.check
def gpt_non_streamed():
    system_text = f"Answer briefly. {CANARY}"
    # System as text blocks with cache_control, as prompt-caching code sends it.
    system = [{"type": "text", "text": system_text, "cache_control": {"type": "ephemeral"}}]
    prompt = f"Hello GPT via Messages. {CANARY}"
    n = words(system_text, prompt)
    run.expect_event("anthropic", "gpt-4o", "openai", False, 200, n, 5)
    raw = c.messages.with_raw_response.create(model="gpt-4o", max_tokens=64, system=system, messages=user(prompt))
    eq("x-tollgate-provider", raw.headers.get("x-tollgate-provider"), "openai")
    eq("x-tollgate-model", raw.headers.get("x-tollgate-model"), "gpt-4o")
    check_text_message(raw.parse(), "gpt-4o", n)


@run.check
def gpt_stream_helper():
    streamed_text("gpt-4o", f"Stream from GPT. {CANARY}", "openai")


@run.check
def gpt_raw_stream_events():
    raw_stream_events("gpt-4o", f"Raw GPT events. {CANARY}", "openai")


# --- tool use ----------------------------------------------------------------------


def tool_use_non_streamed(model, provider):
    prompt = f"What is the weather in Paris? {CANARY}"
    n = words(prompt)
    run.expect_event("anthropic", model, provider, False, 200, n, TOOL_COMPLETION_TOKENS)
    m = c.messages.create(model=model, max_tokens=64, messages=user(prompt), tools=TOOLS)
    eq("stop_reason", m.stop_reason, "tool_use")
    eq("content block types", [b.type for b in m.content], ["tool_use"])
    block = m.content[0]
    true("tool_use.id", bool(block.id))
    eq("tool_use.name", block.name, TOOL_NAME)
    eq("tool_use.input", block.input, TOOL_ARGS)
    eq("usage.input_tokens", m.usage.input_tokens, n)
    eq("usage.output_tokens", m.usage.output_tokens, TOOL_COMPLETION_TOKENS)


def tool_use_streamed(model, provider):
    prompt = f"Weather in Paris, streamed? {CANARY}"
    n = words(prompt)
    run.expect_event("anthropic", model, provider, True, 200, n, TOOL_COMPLETION_TOKENS)
    partial = []
    with c.messages.stream(model=model, max_tokens=64, messages=user(prompt), tools=TOOLS) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                partial.append(event.delta.partial_json)
        final = stream.get_final_message()
    true("input_json arrived in several fragments", len(partial) >= 2, f"{len(partial)} fragment(s)")
    eq("input_json fragments joined (parsed)", json.loads("".join(partial)), TOOL_ARGS)
    eq("stop_reason", final.stop_reason, "tool_use")
    eq("content block types", [b.type for b in final.content], ["tool_use"])
    block = final.content[0]
    true("tool_use.id", bool(block.id))
    eq("tool_use.name", block.name, TOOL_NAME)
    eq("tool_use.input", block.input, TOOL_ARGS)
    eq("usage.output_tokens", final.usage.output_tokens, TOOL_COMPLETION_TOKENS)


@run.check
def tool_use_claude_non_streamed():
    tool_use_non_streamed("anthropic-mock:tool-model", "anthropic-mock")


@run.check
def tool_use_claude_streamed():
    tool_use_streamed("anthropic-mock:tool-model", "anthropic-mock")


@run.check
def tool_use_gpt_non_streamed():
    tool_use_non_streamed("openai-mock:tool-model", "openai-mock")


@run.check
def tool_use_gpt_streamed():
    tool_use_streamed("openai-mock:tool-model", "openai-mock")


def tool_result_round_trip(model, provider):
    """Send the tool's result back: a tool_use block, then a tool_result block."""
    prompt = f"What is the weather in Paris? {CANARY}"
    result = f"Sunny and 21 degrees. {CANARY}"
    # The mock does not count Anthropic tool_result blocks, but does count the
    # text of the OpenAI `tool` message the gateway translates one into.
    n = words(prompt) + (words(result) if provider == "openai" else 0)
    run.expect_event("anthropic", model, provider, False, 200, n, 5)
    m = c.messages.create(
        model=model,
        max_tokens=64,
        tools=TOOLS,
        messages=[
            {"role": "user", "content": prompt},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_e2e_1", "name": TOOL_NAME, "input": TOOL_ARGS}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_e2e_1", "content": result}],
            },
        ],
    )
    check_text_message(m, model, n)


@run.check
def tool_result_claude():
    tool_result_round_trip("claude-sonnet-4-5", "anthropic")


@run.check
def tool_result_gpt():
    tool_result_round_trip("gpt-4o", "openai")


# --- a reply carrying a canary (response text must not be stored either) ---------


@run.check
def reply_canary_streamed():
    streamed_text("openai-mock:reply-canary", f"Tell me the secret word. {CANARY}", "openai-mock", reply=REPLY_CANARY_TEXT)


def stream_cut(model, provider):
    """The upstream breaks mid-stream: the SDK must raise, after the text so far."""
    prompt = f"This stream will break. {CANARY}"
    # Anthropic reports input tokens up front; an OpenAI upstream only at the end.
    n = words(prompt) if provider.startswith("anthropic") else None
    run.expect_event("anthropic", model, provider, True, 502, n, None)
    text = []
    try:
        with c.messages.stream(model=model, max_tokens=64, messages=user(prompt)) as stream:
            for piece in stream.text_stream:
                text.append(piece)
    except anthropic.APIStatusError as err:
        # An `event: error` inside a 200 stream, as Anthropic sends overloaded errors.
        body = err.body if isinstance(err.body, dict) else {}
        eq("error event type", body.get("type"), "error")
        eq("error type", (body.get("error") or {}).get("type"), "api_error")
        message = (body.get("error") or {}).get("message", "")
        true("error message", "upstream stream" in message, message)
    else:
        raise CheckError("expected anthropic.APIStatusError mid-stream, the stream ended normally")
    eq("text received before the error", "".join(text), CUT_TEXT)


@run.check
def stream_cut_claude():
    stream_cut("anthropic-mock:cut-model", "anthropic-mock")


@run.check
def stream_cut_gpt():
    stream_cut("openai-mock:cut-model", "openai-mock")


# --- count_tokens (never billed: no usage event) ------------------------------------------


def count_tokens_of(messages_api, model, provider, system, prompt, attempts="1"):
    raw = messages_api.with_raw_response.count_tokens(
        model=model, system=system, messages=user(prompt), tools=TOOLS
    )
    eq("x-tollgate-provider", raw.headers.get("x-tollgate-provider"), provider)
    # Counted locally for an OpenAI-API model: no upstream attempt.
    want_attempts = attempts if provider == "anthropic" else None
    eq("x-tollgate-attempts", raw.headers.get("x-tollgate-attempts"), want_attempts)
    eq("no cost header (count_tokens is free)", raw.headers.get("x-tollgate-cost-total"), None)
    counted = raw.parse()
    if provider == "anthropic":
        # Asked upstream: the mock counts system + message words.
        eq("input_tokens", counted.input_tokens, words(system, prompt))
    else:
        # Counted by the gateway with the model's tiktoken encoding.
        true("input_tokens estimated", counted.input_tokens >= words(system, prompt), repr(counted))
    return counted.input_tokens


@run.check
def count_tokens_claude():
    count_tokens_of(c.messages, "claude-haiku-4-5", "anthropic", f"Be brief. {CANARY}", f"Count me. {CANARY}")


@run.check
def count_tokens_gpt():
    count_tokens_of(c.messages, "gpt-4o-mini", "openai", f"Be brief. {CANARY}", f"Count me. {CANARY}")


@run.check
def count_tokens_beta_claude():
    count_tokens_of(c.beta.messages, "claude-haiku-4-5", "anthropic", "Beta system.", f"Count me too. {CANARY}")


@run.check
def count_tokens_beta_gpt():
    count_tokens_of(c.beta.messages, "gpt-4o-mini", "openai", "Beta system.", f"Count me too. {CANARY}")


@run.check
def count_tokens_fails_over_to_the_second_key():
    fail_first_key_once("anthropic", 429)
    count_tokens_of(
        c.messages, "claude-haiku-4-5", "anthropic", "Fail over.", f"Count after a 429. {CANARY}", attempts="2"
    )
    fail_first_key_once("anthropic", 500)
    count_tokens_of(
        c.beta.messages, "claude-haiku-4-5", "anthropic", "Fail over.", f"Count after a 500. {CANARY}", attempts="2"
    )


# --- failover on messages ---------------------------------------------------------------


@run.check
def messages_fail_over_to_the_second_key():
    prompt = f"Fail over, please. {CANARY}"
    n = words(prompt)
    run.expect_event("anthropic", "claude-haiku-4-5", "anthropic", False, 200, n, 5, attempts=2)
    fail_first_key_once("anthropic", 429)
    raw = c.messages.with_raw_response.create(model="claude-haiku-4-5", max_tokens=64, messages=user(prompt))
    eq("x-tollgate-attempts", raw.headers.get("x-tollgate-attempts"), "2")
    check_text_message(raw.parse(), "claude-haiku-4-5", n)


# --- models, errors ------------------------------------------------------------------


@run.check
def models_list():
    ids = [m.id for m in c.models.list().data]
    for want in ("claude-sonnet-4-5", "claude-haiku-4-5", "gpt-4o"):
        true(f"models.list() contains {want}", want in ids, f"got {len(ids)} ids: {ids[:10]}...")


@run.check
def wrong_key_is_authentication_error():
    bad = client(api_key="tgk_this-key-does-not-exist")
    try:
        bad.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=user(f"hi {CANARY}"))
    except anthropic.AuthenticationError as err:
        eq("status code", err.status_code, 401)
    else:
        raise CheckError("expected anthropic.AuthenticationError, the request succeeded")


@run.check
def unknown_model_is_not_found():
    model = "no-such-model-e2e"
    run.expect_event("anthropic", model, None, False, 404, 0, 0)
    try:
        c.messages.create(model=model, max_tokens=64, messages=user(f"hi {CANARY}"))
    except anthropic.NotFoundError as err:
        eq("status code", err.status_code, 404)
        message = str(err.message)
        true("error message says the model is unknown", "unknown model" in message, message)
        true("error message names the model", model in message, message)
        body = err.body if isinstance(err.body, dict) else {}
        eq("error type", (body.get("error") or {}).get("type"), "not_found_error")
    else:
        raise CheckError("expected anthropic.NotFoundError, the request succeeded")


if __name__ == "__main__":
    run.main()
