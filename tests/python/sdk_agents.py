#!/usr/bin/env python3
"""End-to-end checks: the OpenAI Agents SDK (`openai-agents`) through a running Tollgate.

    TOLLGATE_BASE_URL=http://127.0.0.1:8080 TOLLGATE_KEY=tgk_... \
    TOLLGATE_MOCK_URL=http://127.0.0.1:PORT python3 tests/python/sdk_agents.py

One agent with one function tool, on the Responses API (the SDK's
OpenAIResponsesModel), through the gateway, with `Runner.run_sync` and
`Runner.run_streamed`, on gpt-4o-mini (Responses passed through), Groq's
llama-3.1-8b-instant and claude-haiku-4-5 (translated): a mock rule makes the first model
call a call of the tool, the SDK runs the tool and sends its output back, and
the second model call answers with text, the run's final output. Tracing is
disabled (no network but the gateway). Each model call is one usage event.
Prints one line per check; exits non-zero on any failure.
"""

import asyncio
import importlib.metadata

from e2e_common import (
    CANARY,
    DEFAULT_REPLY,
    TOOL_ARGS,
    TOOL_COMPLETION_TOKENS,
    TOOL_NAME,
    Run,
    completion_words,
    eq,
    import_sdk,
    require_env,
    tool_call_once,
    true,
    words,
)

openai = import_sdk("openai")
agents = import_sdk("agents")

BASE, KEY = require_env()
run = Run("openai-agents " + importlib.metadata.version("openai-agents"), KEY)

agents.set_tracing_disabled(True)
agents.set_default_openai_api("responses")

INSTRUCTIONS = f"You answer weather questions with the tool. {CANARY}"
REPLY_TOKENS = completion_words(DEFAULT_REPLY)

# What the tool was called with, per run.
calls = []


@agents.function_tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    calls.append(city)
    return f"Sunny and 21 degrees in {city}."


eq("tool name", get_weather.name, TOOL_NAME)


def gateway_client():
    """A fresh async client (bound to the running event loop's connections)."""
    http = openai.DefaultAsyncHttpxClient(event_hooks={"request": [run.on_request_async]})
    return openai.AsyncOpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0, http_client=http)


def expect_tool_run(model, provider, prompt, streamed):
    """The two model calls of one run: the tool call, then the answer."""
    n = words(INSTRUCTIONS, prompt)
    run.expect_event("openai", model, provider, streamed, 200, n, TOOL_COMPLETION_TOKENS)
    tool_output = f"Sunny and 21 degrees in {TOOL_ARGS['city']}."
    # The second call sends the function_call item (0 tokens to the mock) and
    # the tool's output after the prompt: counted as a function_call_output
    # item or the chat `tool` message it becomes, not as the Anthropic
    # tool_result block it becomes for Claude.
    n2 = n + (0 if provider == "anthropic" else words(tool_output))
    run.expect_event("openai", model, provider, streamed, 200, n2, REPLY_TOKENS)


def make_agent(model):
    return agents.Agent(
        name="Weather agent",
        instructions=INSTRUCTIONS,
        tools=[get_weather],
        model=model,
    )


def check_result(result, before):
    eq("final_output", result.final_output, DEFAULT_REPLY)
    eq("the tool ran, with the model's arguments", calls[before:], [TOOL_ARGS["city"]])
    eq("model calls in the run", len(result.raw_responses), 2)
    first, second = result.raw_responses
    eq("first call: output tokens (the tool call)", first.usage.output_tokens, TOOL_COMPLETION_TOKENS)
    eq("second call: output tokens", second.usage.output_tokens, REPLY_TOKENS)
    kinds = [item.type for item in result.new_items]
    eq("run items", kinds, ["tool_call_item", "tool_call_output_item", "message_output_item"])


# (model as requested, provider, model as the upstream sees it): the Responses
# API passed through (OpenAI), and translated for a chat-only provider (Groq)
# and for Anthropic.
MODELS = [
    ("gpt-4o-mini", "openai", "gpt-4o-mini"),
    ("groq:llama-3.1-8b-instant", "groq", "llama-3.1-8b-instant"),
    ("claude-haiku-4-5", "anthropic", "claude-haiku-4-5"),
]


def agent_run_sync(model, provider, upstream):
    prompt = f"What is the weather in Paris? {CANARY}"
    expect_tool_run(model, provider, prompt, streamed=False)
    tool_call_once(upstream)
    agents.set_default_openai_client(gateway_client(), use_for_tracing=False)
    before = len(calls)
    result = agents.Runner.run_sync(make_agent(model), prompt)
    check_result(result, before)


def agent_run_streamed(model, provider, upstream):
    prompt = f"Weather in Paris, streamed? {CANARY}"
    expect_tool_run(model, provider, prompt, streamed=True)
    tool_call_once(upstream)

    async def go():
        agents.set_default_openai_client(gateway_client(), use_for_tracing=False)
        result = agents.Runner.run_streamed(make_agent(model), prompt)
        deltas = []
        async for event in result.stream_events():
            if event.type == "raw_response_event" and event.data.type == "response.output_text.delta":
                deltas.append(event.data.delta)
        return result, "".join(deltas)

    before = len(calls)
    result, text = asyncio.run(go())
    eq("streamed text deltas", text, DEFAULT_REPLY)
    check_result(result, before)


for fn in (agent_run_sync, agent_run_streamed):
    for model, provider, upstream in MODELS:

        def check(fn=fn, model=model, provider=provider, upstream=upstream):
            fn(model, provider, upstream)

        check.__name__ = f"{fn.__name__}[{provider}]"
        run.check(check)


if __name__ == "__main__":
    true("tool registered", get_weather is not None)
    run.main()
