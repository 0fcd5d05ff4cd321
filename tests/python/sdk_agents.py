#!/usr/bin/env python3
"""End-to-end checks: the OpenAI Agents SDK (`openai-agents`) through a running Tollgate.

    TOLLGATE_BASE_URL=http://127.0.0.1:8080 TOLLGATE_KEY=tgk_... \
    TOLLGATE_MOCK_URL=http://127.0.0.1:PORT python3 tests/python/sdk_agents.py

One agent with one function tool, on the Responses API (the SDK's
OpenAIResponsesModel), through the gateway: a mock rule makes the first model
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
    # the tool's output (counted) after the prompt.
    run.expect_event("openai", model, provider, streamed, 200, n + words(tool_output), REPLY_TOKENS)


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


@run.check
def agent_with_a_tool_run_sync():
    model = "gpt-4o-mini"
    prompt = f"What is the weather in Paris? {CANARY}"
    expect_tool_run(model, "openai", prompt, streamed=False)
    tool_call_once(model)
    agents.set_default_openai_client(gateway_client(), use_for_tracing=False)
    before = len(calls)
    result = agents.Runner.run_sync(make_agent(model), prompt)
    check_result(result, before)


@run.check
def agent_with_a_tool_run_streamed():
    model = "gpt-4o-mini"
    prompt = f"Weather in Paris, streamed? {CANARY}"
    expect_tool_run(model, "openai", prompt, streamed=True)
    tool_call_once(model)

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


if __name__ == "__main__":
    true("tool registered", get_weather is not None)
    run.main()
