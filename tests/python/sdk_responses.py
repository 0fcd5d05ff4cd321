#!/usr/bin/env python3
"""End-to-end checks: the OpenAI Python SDK's Responses API against a running Tollgate.

    TOLLGATE_BASE_URL=http://127.0.0.1:8080 TOLLGATE_KEY=tgk_... \
    TOLLGATE_MOCK_URL=http://127.0.0.1:PORT python3 tests/python/sdk_responses.py

Three models, one of each kind the gateway routes `POST /v1/responses` to:

* `gpt-4o-mini` (OpenAI, `responses = true` in the catalog): passed through to
  the mock's `/v1/responses`;
* `groq:llama-3.1-8b-instant` (a chat-only OpenAI-API provider): translated to
  `/v1/chat/completions` and back;
* `claude-haiku-4-5` (Anthropic): translated to `/v1/messages` and back.

For each: `responses.create` non-streamed and streamed, `responses.stream(...)`
with `get_final_response()`, a function-tool call streamed, a function-tool
round trip (`function_call` + `function_call_output` items sent back), and
failover from the provider's first operator key to its second, streamed and
not. The gateway's providers must point at the mock upstream (see
e2e_common.py). Prints one line per check; exits non-zero on any failure.
"""

import json

from e2e_common import (
    CANARY,
    CheckError,
    DEFAULT_REPLY,
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
    tool_call_once,
    true,
    words,
)

openai = import_sdk("openai")

BASE, KEY = require_env()
run = Run("openai sdk (responses) " + openai.__version__, KEY)

http = openai.DefaultHttpxClient(event_hooks={"request": [run.on_request]})
# max_retries=0: one SDK call is one HTTP request (failover is the gateway's).
c = openai.OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0, http_client=http)

# (model as requested, provider, model as the upstream sees it)
MODELS = [
    ("gpt-4o-mini", "openai", "gpt-4o-mini"),
    ("groq:llama-3.1-8b-instant", "groq", "llama-3.1-8b-instant"),
    ("claude-haiku-4-5", "anthropic", "claude-haiku-4-5"),
]

TOOLS = [
    {
        "type": "function",
        "name": TOOL_NAME,
        "description": f"Current weather for a city. {CANARY}",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    }
]

REPLY_TOKENS = completion_words(DEFAULT_REPLY)
INSTRUCTIONS = f"You are terse. {CANARY}"


def check_response(r, prompt_words, output_tokens=REPLY_TOKENS, reply=DEFAULT_REPLY):
    eq("object", r.object, "response")
    eq("status", r.status, "completed")
    true("id", bool(r.id))
    eq("output item types", [item.type for item in r.output], ["message"])
    eq("output_text", r.output_text, reply)
    true("usage present", r.usage is not None)
    eq("usage.input_tokens", r.usage.input_tokens, prompt_words)
    eq("usage.output_tokens", r.usage.output_tokens, output_tokens)
    eq("usage.total_tokens", r.usage.total_tokens, prompt_words + output_tokens)


def check_event_sequence(events):
    """The Responses stream's shape, whoever produced it (upstream or translation)."""
    types = [e.type for e in events]
    true("stream has events", len(types) >= 3, repr(types))
    eq("first events", types[:2], ["response.created", "response.in_progress"])
    eq("last event", types[-1], "response.completed")
    eq("response.completed events", types.count("response.completed"), 1)
    numbers = [e.sequence_number for e in events]
    eq("sequence numbers", numbers, list(range(numbers[0], numbers[0] + len(numbers))))
    return types


def check_text_stream(events, prompt_words):
    types = check_event_sequence(events)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    true("text arrived in several deltas", len(deltas) >= 2, repr(types))
    eq("joined output_text deltas", "".join(deltas), DEFAULT_REPLY)
    done = [e.text for e in events if e.type == "response.output_text.done"]
    eq("response.output_text.done text", done, [DEFAULT_REPLY])
    final = events[-1].response
    check_response(final, prompt_words)
    return final


def stream_headers(stream, provider, attempts="1", model=None):
    headers = stream.response.headers
    eq("x-tollgate-provider (stream)", headers.get("x-tollgate-provider"), provider)
    eq("x-tollgate-attempts (stream)", headers.get("x-tollgate-attempts"), attempts)
    run.expect_event_id(headers.get("x-tollgate-event-id"), model)


def for_each_model(fn):
    """One check per model, named after the function and the provider."""
    for model, provider, upstream in MODELS:

        def check(model=model, provider=provider, upstream=upstream):
            fn(model, provider, upstream)

        check.__name__ = f"{fn.__name__}[{provider}]"
        run.check(check)
    return fn


# --- text, three ways ----------------------------------------------------------------


@for_each_model
def create_non_streamed(model, provider, _upstream):
    prompt = f"Say hello to the gateway test. {CANARY}"
    n = words(INSTRUCTIONS, prompt)
    run.expect_event("openai", model, provider, False, 200, n, REPLY_TOKENS)
    raw = c.responses.with_raw_response.create(model=model, instructions=INSTRUCTIONS, input=prompt)
    eq("x-tollgate-provider", raw.headers.get("x-tollgate-provider"), provider)
    eq("x-tollgate-attempts", raw.headers.get("x-tollgate-attempts"), "1")
    true("x-tollgate-cost-total", raw.headers.get("x-tollgate-cost-total") is not None)
    run.expect_event_id(raw.headers.get("x-tollgate-event-id"), model)
    check_response(raw.parse(), n)


@for_each_model
def create_streamed(model, provider, _upstream):
    prompt = f"Stream a hello. {CANARY}"
    n = words(prompt)
    run.expect_event("openai", model, provider, True, 200, n, REPLY_TOKENS)
    stream = c.responses.create(
        model=model,
        input=[{"role": "user", "content": [{"type": "input_text", "text": prompt}]}],
        stream=True,
    )
    stream_headers(stream, provider, model=model)
    events = list(stream)
    final = check_text_stream(events, n)
    # The gateway's cost rides on the closing event's usage (an extra field).
    extra = final.usage.model_extra or {}
    true("response.completed usage.tollgate_cost", "tollgate_cost" in extra, repr(final.usage))


@for_each_model
def stream_helper_final_response(model, provider, _upstream):
    prompt = f"Use the stream helper. {CANARY}"
    n = words(INSTRUCTIONS, prompt)
    run.expect_event("openai", model, provider, True, 200, n, REPLY_TOKENS)
    with c.responses.stream(model=model, instructions=INSTRUCTIONS, input=prompt) as stream:
        events = list(stream)
        final = stream.get_final_response()
    check_event_sequence(events)
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    eq("joined deltas", deltas, DEFAULT_REPLY)
    check_response(final, n)


# --- function tools --------------------------------------------------------------------


def check_function_call(item):
    eq("output item type", item.type, "function_call")
    eq("function_call.name", item.name, TOOL_NAME)
    eq("function_call.arguments (parsed)", json.loads(item.arguments), TOOL_ARGS)
    true("function_call.call_id", bool(item.call_id), repr(item))


@for_each_model
def function_call_streamed(model, provider, upstream):
    prompt = f"Weather in Paris, streamed? {CANARY}"
    n = words(prompt)
    run.expect_event("openai", model, provider, True, 200, n, TOOL_COMPLETION_TOKENS)
    tool_call_once(upstream)
    events = list(c.responses.create(model=model, input=prompt, tools=TOOLS, stream=True))
    types = check_event_sequence(events)
    fragments = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    true("arguments arrived in several fragments", len(fragments) >= 2, repr(types))
    eq("joined argument fragments (parsed)", json.loads("".join(fragments)), TOOL_ARGS)
    done = [e.arguments for e in events if e.type == "response.function_call_arguments.done"]
    eq("response.function_call_arguments.done", [json.loads(a) for a in done], [TOOL_ARGS])
    final = events[-1].response
    eq("final output item types", [item.type for item in final.output], ["function_call"])
    check_function_call(final.output[0])
    eq("usage.input_tokens", final.usage.input_tokens, n)
    eq("usage.output_tokens", final.usage.output_tokens, TOOL_COMPLETION_TOKENS)


@for_each_model
def function_tool_round_trip(model, provider, upstream):
    prompt = f"What is the weather in Paris? {CANARY}"
    n = words(prompt)
    # 1. The model calls the tool.
    run.expect_event("openai", model, provider, False, 200, n, TOOL_COMPLETION_TOKENS)
    tool_call_once(upstream)
    first = c.responses.create(model=model, input=prompt, tools=TOOLS)
    eq("status", first.status, "completed")
    eq("output item types", [item.type for item in first.output], ["function_call"])
    call = first.output[0]
    check_function_call(call)
    eq("usage.output_tokens (tool call)", first.usage.output_tokens, TOOL_COMPLETION_TOKENS)
    eq("output_text of a tool call", first.output_text, "")

    # 2. Its result goes back: the call and its output as input items.
    result = f"Sunny and 21 degrees. {CANARY}"
    # The mock counts a function_call_output's text, and so it does the `tool`
    # message it becomes for a chat upstream, but not the Anthropic
    # tool_result block it becomes for Claude.
    n2 = n + (0 if provider == "anthropic" else words(result))
    run.expect_event("openai", model, provider, False, 200, n2, REPLY_TOKENS)
    second = c.responses.create(
        model=model,
        input=[
            {"role": "user", "content": prompt},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": result},
        ],
        tools=TOOLS,
    )
    check_response(second, n2)


@for_each_model
def function_tool_round_trip_as_sdk_items(model, provider, upstream):
    """The usual SDK idiom: the first response's output items sent back as they
    came (with their ids and status), plus the tool's output."""
    prompt = f"And the weather in Paris today? {CANARY}"
    n = words(prompt)
    run.expect_event("openai", model, provider, False, 200, n, TOOL_COMPLETION_TOKENS)
    tool_call_once(upstream)
    first = c.responses.create(model=model, input=prompt, tools=TOOLS)
    call = first.output[0]
    check_function_call(call)
    result = json.dumps({"forecast": "rain", "note": CANARY})
    n2 = n + (0 if provider == "anthropic" else words(result))
    run.expect_event("openai", model, provider, False, 200, n2, REPLY_TOKENS)
    items = [{"role": "user", "content": prompt}]
    items += [item.model_dump(exclude_none=True) for item in first.output]
    items.append({"type": "function_call_output", "call_id": call.call_id, "output": result})
    check_response(c.responses.create(model=model, input=items, tools=TOOLS), n2)


# --- failover: the first operator key fails, the second answers -------------------------


@for_each_model
def failover_non_streamed(model, provider, _upstream):
    prompt = f"Fail over, please. {CANARY}"
    n = words(prompt)
    run.expect_event("openai", model, provider, False, 200, n, REPLY_TOKENS, attempts=2)
    fail_first_key_once(provider, 429)
    raw = c.responses.with_raw_response.create(model=model, input=prompt)
    eq("status", raw.status_code, 200)
    eq("x-tollgate-attempts", raw.headers.get("x-tollgate-attempts"), "2")
    eq("x-tollgate-provider", raw.headers.get("x-tollgate-provider"), provider)
    run.expect_event_id(raw.headers.get("x-tollgate-event-id"), model)
    check_response(raw.parse(), n)


@for_each_model
def failover_streamed(model, provider, _upstream):
    prompt = f"Fail over, then stream. {CANARY}"
    n = words(prompt)
    run.expect_event("openai", model, provider, True, 200, n, REPLY_TOKENS, attempts=2)
    fail_first_key_once(provider, 500)
    stream = c.responses.create(model=model, input=prompt, stream=True)
    stream_headers(stream, provider, attempts="2", model=model)
    check_text_stream(list(stream), n)


# --- the usual refusal, in OpenAI's shape ------------------------------------------------


@run.check
def unknown_model_is_not_found():
    model = "no-such-model-responses-e2e"
    run.expect_event("openai", model, None, False, 404, 0, 0)
    try:
        c.responses.create(model=model, input=f"hi {CANARY}")
    except openai.NotFoundError as err:
        eq("status code", err.status_code, 404)
        eq("error code", err.code, "model_not_found")
        true("error names the model", model in str(err.message), str(err.message))
    else:
        raise CheckError("expected openai.NotFoundError, the request succeeded")


if __name__ == "__main__":
    run.main()
