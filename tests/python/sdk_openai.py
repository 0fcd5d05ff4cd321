#!/usr/bin/env python3
"""End-to-end checks: the official OpenAI Python SDK against a running Tollgate.

    TOLLGATE_BASE_URL=http://127.0.0.1:8080 TOLLGATE_KEY=tgk_... python3 tests/python/sdk_openai.py

The gateway's providers must point at the mock upstream with the rules listed in
e2e_common.py. Prints one line per check; exits non-zero on any failure.
"""

import array
import base64
import json

from e2e_common import (
    CANARY,
    CheckError,
    CUT_TEXT,
    DEFAULT_REPLY,
    REPLY_CANARY_TEXT,
    TOOL_ARGS,
    TOOL_ARGS_JSON,
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

openai = import_sdk("openai")

BASE, KEY = require_env()
run = Run("openai sdk " + openai.__version__, KEY)


def client(api_key=KEY):
    # DefaultHttpxClient keeps the SDK's own defaults (timeouts, limits); the hook
    # only counts requests. max_retries=0: one SDK call is one HTTP request.
    http = openai.DefaultHttpxClient(event_hooks={"request": [run.on_request]})
    return openai.OpenAI(base_url=BASE + "/v1", api_key=api_key, max_retries=0, http_client=http)


c = client()

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "description": f"Current weather for a city. {CANARY}",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def user(text):
    return [{"role": "user", "content": text}]


def check_text_completion(r, model, prompt_words, completion=None, reply=DEFAULT_REPLY):
    eq("object", r.object, "chat.completion")
    eq("model", r.model, model)
    eq("number of choices", len(r.choices), 1)
    choice = r.choices[0]
    eq("message.role", choice.message.role, "assistant")
    eq("message.content", choice.message.content, reply)
    eq("finish_reason", choice.finish_reason, "stop")
    true("usage present", r.usage is not None)
    eq("usage.prompt_tokens", r.usage.prompt_tokens, prompt_words)
    want_completion = completion_words(reply) if completion is None else completion
    eq("usage.completion_tokens", r.usage.completion_tokens, want_completion)
    eq("usage.total_tokens", r.usage.total_tokens, prompt_words + want_completion)


def collect_stream(stream):
    """(text, chunks, finish_reasons) of a streamed completion."""
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    return text, chunks, finish


def check_usage_chunk(chunks, prompt_words, completion):
    true("stream has chunks", len(chunks) > 0)
    last = chunks[-1]
    true("last chunk carries usage (stream_options.include_usage)", last.usage is not None, repr(last))
    eq("usage chunk choices", last.choices, [])
    eq("stream usage.prompt_tokens", last.usage.prompt_tokens, prompt_words)
    eq("stream usage.completion_tokens", last.usage.completion_tokens, completion)
    eq("stream usage.total_tokens", last.usage.total_tokens, prompt_words + completion)
    with_usage = [i for i, ch in enumerate(chunks) if ch.usage is not None]
    eq("indices of chunks carrying usage", with_usage, [len(chunks) - 1])


def check_no_usage(chunks):
    true("stream has chunks", len(chunks) > 0)
    carrying = [ch for ch in chunks if ch.usage is not None]
    eq("chunks carrying usage without stream_options.include_usage", carrying, [])
    empty = [ch for ch in chunks if not ch.choices]
    eq("chunks without choices (usage-only chunks leaked)", empty, [])


def stream_event_id(stream, model, provider):
    headers = stream.response.headers
    eq("x-tollgate-provider (stream)", headers.get("x-tollgate-provider"), provider)
    run.expect_event_id(headers.get("x-tollgate-event-id"), model)


# --- plain chat, OpenAI model -------------------------------------------------


@run.check
def chat_non_streamed():
    system = f"You are terse. {CANARY}"
    prompt = f"Say hello to the gateway test. {CANARY}"
    n = words(system, prompt)
    run.expect_event("openai", "gpt-4o-mini", "openai", False, 200, n, 5)
    r = c.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": system}, {"role": "user", "content": prompt}],
    )
    check_text_completion(r, "gpt-4o-mini", n, completion=5)
    true("id", bool(r.id))


@run.check
def chat_streamed_with_usage():
    prompt = f"Stream a hello. {CANARY}"
    n = words(prompt)
    run.expect_event("openai", "gpt-4o-mini", "openai", True, 200, n, 5)
    stream = c.chat.completions.create(
        model="gpt-4o-mini",
        messages=user(prompt),
        stream=True,
        stream_options={"include_usage": True},
    )
    stream_event_id(stream, "gpt-4o-mini", "openai")
    text, chunks, finish = collect_stream(stream)
    eq("concatenated deltas", text, DEFAULT_REPLY)
    eq("finish_reason(s)", finish, ["stop"])
    eq("chunk object", {ch.object for ch in chunks}, {"chat.completion.chunk"})
    check_usage_chunk(chunks, n, 5)


@run.check
def chat_streamed_without_usage():
    prompt = f"Stream without usage please. {CANARY}"
    n = words(prompt)
    # The gateway asks the upstream for usage anyway (for billing) and hides it.
    run.expect_event("openai", "gpt-4o-mini", "openai", True, 200, n, 5)
    stream = c.chat.completions.create(model="gpt-4o-mini", messages=user(prompt), stream=True)
    text, chunks, finish = collect_stream(stream)
    eq("concatenated deltas", text, DEFAULT_REPLY)
    eq("finish_reason(s)", finish, ["stop"])
    check_no_usage(chunks)


# --- Claude through the OpenAI SDK (translated) --------------------------------


@run.check
def claude_non_streamed():
    system = f"Answer briefly. {CANARY}"
    part1 = f"First part of the question. {CANARY}"
    part2 = "Second part."
    n = words(system, part1, part2)
    run.expect_event("openai", "claude-haiku-4-5", "anthropic", False, 200, n, 5)
    raw = c.chat.completions.with_raw_response.create(
        model="claude-haiku-4-5",
        messages=[
            {"role": "system", "content": system},
            {
                "role": "user",
                "content": [{"type": "text", "text": part1}, {"type": "text", "text": part2}],
            },
        ],
        max_tokens=64,
    )
    eq("x-tollgate-provider", raw.headers.get("x-tollgate-provider"), "anthropic")
    eq("x-tollgate-model", raw.headers.get("x-tollgate-model"), "claude-haiku-4-5")
    run.expect_event_id(raw.headers.get("x-tollgate-event-id"), "claude-haiku-4-5")
    check_text_completion(raw.parse(), "claude-haiku-4-5", n, completion=5)


@run.check
def claude_streamed_with_usage():
    prompt = f"Stream from Claude. {CANARY}"
    n = words(prompt)
    run.expect_event("openai", "claude-haiku-4-5", "anthropic", True, 200, n, 5)
    stream = c.chat.completions.create(
        model="claude-haiku-4-5",
        messages=user(prompt),
        max_completion_tokens=64,
        stream=True,
        stream_options={"include_usage": True},
    )
    stream_event_id(stream, "claude-haiku-4-5", "anthropic")
    text, chunks, finish = collect_stream(stream)
    eq("concatenated deltas", text, DEFAULT_REPLY)
    eq("finish_reason(s)", finish, ["stop"])
    eq("chunk model", {ch.model for ch in chunks}, {"claude-haiku-4-5"})
    check_usage_chunk(chunks, n, 5)


@run.check
def claude_streamed_without_usage():
    prompt = f"Stream from Claude, no usage. {CANARY}"
    n = words(prompt)
    run.expect_event("openai", "claude-haiku-4-5", "anthropic", True, 200, n, 5)
    stream = c.chat.completions.create(model="claude-haiku-4-5", messages=user(prompt), stream=True)
    text, chunks, finish = collect_stream(stream)
    eq("concatenated deltas", text, DEFAULT_REPLY)
    eq("finish_reason(s)", finish, ["stop"])
    check_no_usage(chunks)


# --- tool calls ----------------------------------------------------------------


def tool_call_non_streamed(model, provider):
    prompt = f"What is the weather in Paris? {CANARY}"
    n = words(prompt)
    run.expect_event("openai", model, provider, False, 200, n, TOOL_COMPLETION_TOKENS)
    r = c.chat.completions.create(model=model, messages=user(prompt), tools=TOOLS)
    choice = r.choices[0]
    eq("finish_reason", choice.finish_reason, "tool_calls")
    calls = choice.message.tool_calls
    true("message.tool_calls present", bool(calls), repr(choice.message))
    eq("number of tool calls", len(calls), 1)
    call = calls[0]
    eq("tool_calls[0].type", call.type, "function")
    true("tool_calls[0].id", bool(call.id))
    eq("tool_calls[0].function.name", call.function.name, TOOL_NAME)
    eq("tool_calls[0].function.arguments (parsed)", json.loads(call.function.arguments), TOOL_ARGS)
    eq("usage.prompt_tokens", r.usage.prompt_tokens, n)
    eq("usage.completion_tokens", r.usage.completion_tokens, TOOL_COMPLETION_TOKENS)


def tool_call_streamed(model, provider):
    prompt = f"Weather in Paris, streamed? {CANARY}"
    n = words(prompt)
    run.expect_event("openai", model, provider, True, 200, n, TOOL_COMPLETION_TOKENS)
    stream = c.chat.completions.create(
        model=model,
        messages=user(prompt),
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    calls = {}
    finish = []
    fragments = 0
    chunks = list(stream)
    for ch in chunks:
        if not ch.choices:
            continue
        choice = ch.choices[0]
        if choice.finish_reason:
            finish.append(choice.finish_reason)
        for tc in choice.delta.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            if tc.id:
                slot["id"] = tc.id
            if tc.function and tc.function.name:
                slot["name"] += tc.function.name
            if tc.function and tc.function.arguments:
                slot["arguments"] += tc.function.arguments
                fragments += 1
    eq("finish_reason(s)", finish, ["tool_calls"])
    eq("tool call indices", sorted(calls), [0])
    call = calls[0]
    true("tool call id", bool(call["id"]))
    eq("tool call name", call["name"], TOOL_NAME)
    true("arguments arrived in several fragments", fragments >= 2, f"{fragments} fragment(s)")
    eq("reassembled arguments (parsed)", json.loads(call["arguments"]), TOOL_ARGS)
    check_usage_chunk(chunks, n, TOOL_COMPLETION_TOKENS)


@run.check
def tool_call_openai_non_streamed():
    tool_call_non_streamed("openai-mock:tool-model", "openai-mock")


@run.check
def tool_call_openai_streamed():
    tool_call_streamed("openai-mock:tool-model", "openai-mock")


@run.check
def tool_call_claude_non_streamed():
    tool_call_non_streamed("anthropic-mock:tool-model", "anthropic-mock")


@run.check
def tool_call_claude_streamed():
    tool_call_streamed("anthropic-mock:tool-model", "anthropic-mock")


def tool_result_round_trip(model, provider):
    """Send the tool's result back: assistant tool_calls + a `tool` message."""
    prompt = f"What is the weather in Paris? {CANARY}"
    result = f"Sunny and 21 degrees. {CANARY}"
    # The mock counts an OpenAI `tool` message's text, but not an Anthropic
    # tool_result block (what the gateway translates it into for Claude).
    n = words(prompt) + (words(result) if provider == "openai" else 0)
    run.expect_event("openai", model, provider, False, 200, n, 5)
    r = c.chat.completions.create(
        model=model,
        messages=[
            {"role": "user", "content": prompt},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_e2e_1",
                        "type": "function",
                        "function": {"name": TOOL_NAME, "arguments": TOOL_ARGS_JSON},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_e2e_1", "content": result},
        ],
        tools=TOOLS,
    )
    check_text_completion(r, model, n, completion=5)


@run.check
def tool_result_openai():
    tool_result_round_trip("gpt-4o-mini", "openai")


@run.check
def tool_result_claude():
    tool_result_round_trip("claude-haiku-4-5", "anthropic")


# --- a reply carrying a canary (response text must not be stored either) -------


@run.check
def reply_canary_streamed():
    prompt = f"Tell me the secret word. {CANARY}"
    n = words(prompt)
    out = completion_words(REPLY_CANARY_TEXT)
    run.expect_event("openai", "anthropic-mock:reply-canary", "anthropic-mock", True, 200, n, out)
    stream = c.chat.completions.create(
        model="anthropic-mock:reply-canary",
        messages=user(prompt),
        stream=True,
        stream_options={"include_usage": True},
    )
    text, chunks, _ = collect_stream(stream)
    eq("concatenated deltas", text, REPLY_CANARY_TEXT)
    check_usage_chunk(chunks, n, out)


def stream_cut(model, provider):
    """The upstream breaks mid-stream: the SDK must raise, after the text so far."""
    prompt = f"This stream will break. {CANARY}"
    # Anthropic reports input tokens up front; an OpenAI upstream only at the end.
    n = words(prompt) if provider.startswith("anthropic") else None
    run.expect_event("openai", model, provider, True, 502, n, None)
    chunks = []
    try:
        for chunk in c.chat.completions.create(model=model, messages=user(prompt), stream=True):
            chunks.append(chunk)
    except openai.APIError as err:
        eq("error class", type(err).__name__, "APIError")
        eq("error code", err.code, "upstream_stream_error")
        true("error message", "upstream stream" in err.message, err.message)
    else:
        raise CheckError("expected openai.APIError mid-stream, the stream ended normally")
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    eq("text received before the error", text, CUT_TEXT)
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    eq("finish_reason(s) before the error", finish, [])


@run.check
def stream_cut_openai():
    stream_cut("openai-mock:cut-model", "openai-mock")


@run.check
def stream_cut_claude():
    stream_cut("anthropic-mock:cut-model", "anthropic-mock")


# --- embeddings ------------------------------------------------------------------

EMBEDDING_MODEL = "text-embedding-3-small"


def mock_vector(index, tokens, dimensions=8):
    """The mock's embedding of input `index` with `tokens` prompt tokens."""
    return [((index + tokens + j) % 16) / 16 - 0.5 for j in range(dimensions)]


def check_embeddings(r, texts, dimensions=8, decode=False):
    eq("object", r.object, "list")
    eq("number of embeddings", len(r.data), len(texts))
    for i, (item, text) in enumerate(zip(r.data, texts)):
        eq(f"data[{i}].index", item.index, i)
        vector = item.embedding
        if decode:
            true(f"data[{i}] is base64 text", isinstance(vector, str), repr(vector)[:80])
            vector = array.array("f", base64.b64decode(vector)).tolist()
        eq(f"data[{i}].embedding", vector, mock_vector(i, words(text), dimensions))
    eq("usage.prompt_tokens", r.usage.prompt_tokens, words(*texts))
    eq("usage.total_tokens", r.usage.total_tokens, words(*texts))


@run.check
def embeddings_single_default_encoding():
    # The SDK asks for base64 and decodes it into floats.
    text = f"Embed this sentence {CANARY}"
    run.expect_event("openai", EMBEDDING_MODEL, "openai", False, 200, words(text), 0)
    raw = c.embeddings.with_raw_response.create(model=EMBEDDING_MODEL, input=text)
    eq("x-tollgate-provider", raw.headers.get("x-tollgate-provider"), "openai")
    true("a cost header", raw.headers.get("x-tollgate-cost-total") is not None)
    run.expect_event_id(raw.headers.get("x-tollgate-event-id"), EMBEDDING_MODEL)
    check_embeddings(raw.parse(), [text])


@run.check
def embeddings_batch_default_encoding():
    texts = [f"first {CANARY}", "second one here", "third"]
    run.expect_event("openai", EMBEDDING_MODEL, "openai", False, 200, words(*texts), 0)
    check_embeddings(c.embeddings.create(model=EMBEDDING_MODEL, input=texts), texts)


@run.check
def embeddings_single_float():
    text = f"floats please {CANARY}"
    run.expect_event("openai", "text-embedding-3-large", "openai", False, 200, words(text), 0)
    r = c.embeddings.create(model="text-embedding-3-large", input=text, encoding_format="float")
    check_embeddings(r, [text])


@run.check
def embeddings_batch_float():
    texts = [f"alpha {CANARY}", "beta gamma"]
    run.expect_event("openai", EMBEDDING_MODEL, "openai", False, 200, words(*texts), 0)
    r = c.embeddings.create(model=EMBEDDING_MODEL, input=texts, encoding_format="float")
    check_embeddings(r, texts)


@run.check
def embeddings_batch_explicit_base64_with_dimensions():
    texts = [f"one {CANARY}", "two three"]
    run.expect_event("openai", "text-embedding-ada-002", "openai", False, 200, words(*texts), 0)
    r = c.embeddings.create(
        model="text-embedding-ada-002", input=texts, encoding_format="base64", dimensions=4
    )
    check_embeddings(r, texts, dimensions=4, decode=True)


@run.check
def embeddings_fail_over_to_the_second_key():
    texts = [f"fail over {CANARY}", "then embed"]
    run.expect_event("openai", EMBEDDING_MODEL, "openai", False, 200, words(*texts), 0, attempts=2)
    fail_first_key_once("openai", 429)
    raw = c.embeddings.with_raw_response.create(model=EMBEDDING_MODEL, input=texts, encoding_format="float")
    eq("x-tollgate-attempts", raw.headers.get("x-tollgate-attempts"), "2")
    check_embeddings(raw.parse(), texts)


@run.check
def chat_fails_over_to_the_second_key():
    prompt = f"Fail over, then answer. {CANARY}"
    n = words(prompt)
    run.expect_event("openai", "gpt-4o-mini", "openai", True, 200, n, 5, attempts=2)
    fail_first_key_once("openai", 500)
    stream = c.chat.completions.create(
        model="gpt-4o-mini", messages=user(prompt), stream=True, stream_options={"include_usage": True}
    )
    eq("x-tollgate-attempts", stream.response.headers.get("x-tollgate-attempts"), "2")
    text, chunks, _ = collect_stream(stream)
    eq("concatenated deltas", text, DEFAULT_REPLY)
    check_usage_chunk(chunks, n, 5)


@run.check
def embeddings_refuse_a_chat_model():
    run.expect_event("openai", "gpt-4o-mini", None, False, 400, 0, 0)
    try:
        c.embeddings.create(model="gpt-4o-mini", input=f"x {CANARY}")
    except openai.BadRequestError as err:
        eq("status code", err.status_code, 400)
        true("error names the model", "gpt-4o-mini" in str(err.message), str(err.message))
        eq("error param", err.param, "model")
    else:
        raise CheckError("expected openai.BadRequestError, the request succeeded")


@run.check
def embeddings_unknown_model_is_not_found():
    model = "no-such-embedding-e2e"
    run.expect_event("openai", model, None, False, 404, 0, 0)
    try:
        c.embeddings.create(model=model, input=f"x {CANARY}")
    except openai.NotFoundError as err:
        eq("status code", err.status_code, 404)
        eq("error code", err.code, "model_not_found")
        true("error names the model", model in str(err.message), str(err.message))
    else:
        raise CheckError("expected openai.NotFoundError, the request succeeded")


@run.check
def embeddings_wrong_key_is_authentication_error():
    try:
        client(api_key="tgk_this-key-does-not-exist").embeddings.create(
            model=EMBEDDING_MODEL, input=f"x {CANARY}"
        )
    except openai.AuthenticationError as err:
        eq("status code", err.status_code, 401)
        eq("error code", err.code, "invalid_api_key")
    else:
        raise CheckError("expected openai.AuthenticationError, the request succeeded")


# --- models, errors, headers ---------------------------------------------------


@run.check
def models_list():
    models = c.models.list()
    ids = [m.id for m in models.data]
    for want in ("gpt-4o-mini", "gpt-4o", "claude-haiku-4-5", "claude-sonnet-4-5"):
        true(f"models.list() contains {want}", want in ids, f"got {len(ids)} ids: {ids[:10]}...")
    eq("model objects", {m.object for m in models.data}, {"model"})
    eq("duplicate ids", len(ids), len(set(ids)))


@run.check
def wrong_key_is_authentication_error():
    bad = client(api_key="tgk_this-key-does-not-exist")
    try:
        bad.chat.completions.create(model="gpt-4o-mini", messages=user(f"hi {CANARY}"))
    except openai.AuthenticationError as err:
        eq("status code", err.status_code, 401)
    else:
        raise CheckError("expected openai.AuthenticationError, the request succeeded")


@run.check
def unknown_model_is_not_found():
    model = "no-such-model-e2e"
    run.expect_event("openai", model, None, False, 404, 0, 0)
    try:
        c.chat.completions.create(model=model, messages=user(f"hi {CANARY}"))
    except openai.NotFoundError as err:
        eq("status code", err.status_code, 404)
        message = str(err.message)
        true("error message says the model is unknown", "unknown model" in message, message)
        true("error message names the model", model in message, message)
        eq("error code", err.code, "model_not_found")
    else:
        raise CheckError("expected openai.NotFoundError, the request succeeded")


@run.check
def raw_response_has_event_id():
    prompt = f"Raw response please. {CANARY}"
    n = words(prompt)
    run.expect_event("openai", "gpt-4o-mini", "openai", False, 200, n, 5)
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=user(prompt))
    eq("status", raw.status_code, 200)
    eq("x-tollgate-provider", raw.headers.get("x-tollgate-provider"), "openai")
    eq("x-tollgate-model", raw.headers.get("x-tollgate-model"), "gpt-4o-mini")
    eq("x-tollgate-attempts", raw.headers.get("x-tollgate-attempts"), "1")
    run.expect_event_id(raw.headers.get("x-tollgate-event-id"), "gpt-4o-mini")
    check_text_completion(raw.parse(), "gpt-4o-mini", n, completion=5)


if __name__ == "__main__":
    run.main()
