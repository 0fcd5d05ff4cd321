#!/usr/bin/env python3
"""The official SDKs' view of Tollgate's per-key refusals.

    TOLLGATE_BASE_URL=http://127.0.0.1:8080 TOLLGATE_RESTRICTED_KEY=tgk_... \\
        python3 tests/python/sdk_refusals.py

TOLLGATE_RESTRICTED_KEY must be a fresh key whose configuration allows only
the provider `anthropic` and has requests_per_minute = 1, on a gateway whose
`anthropic` provider answers (e.g. the bundled mock upstream). Driven by
proxy/tests/tenancy.rs (official_sdks_raise_permission_denied_and_rate_limit_errors).

In this order, with max_retries=0 (one SDK call = one HTTP request):
  1. OpenAI SDK, a GPT model    -> openai.PermissionDeniedError (403), "provider ... not allowed"
  2. Anthropic SDK, a GPT model -> anthropic.PermissionDeniedError (403), likewise
  3. Anthropic SDK, a Claude model -> succeeds (uses the one request of the minute)
  4. OpenAI SDK, a Claude model -> openai.RateLimitError (429) with retry-after
  5. Anthropic SDK, a Claude model -> anthropic.RateLimitError (429) with retry-after

Prints `ok <check>` or `FAIL <check>: <why>` per check. Exit status: 0 when
every check passed, 1 otherwise, 2 when the environment is unusable.
"""

import os
import sys

GPT_MODEL = "gpt-4o-mini"
CLAUDE_MODEL = "claude-haiku-4-5"
DEFAULT_REPLY = "Hello from the mock upstream."


def environment():
    base = os.environ.get("TOLLGATE_BASE_URL", "").rstrip("/")
    key = os.environ.get("TOLLGATE_RESTRICTED_KEY", "")
    if not base or not key:
        print(
            "FAIL environment: set TOLLGATE_BASE_URL (e.g. http://127.0.0.1:8080) and "
            "TOLLGATE_RESTRICTED_KEY (a tgk_... key allowed only `anthropic`, 1 request/minute)"
        )
        sys.exit(2)
    try:
        import anthropic
        import openai
    except ImportError as err:
        print(
            f"FAIL environment: the official Python SDKs are not installed ({err}); "
            "run: python3 -m pip install -r tests/python/requirements.txt"
        )
        sys.exit(2)
    return base, key, openai, anthropic


BASE, KEY, openai, anthropic = environment()
oai = openai.OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0)
claude = anthropic.Anthropic(base_url=BASE, api_key=KEY, max_retries=0)


class CheckError(AssertionError):
    pass


def check(cond, why):
    if not cond:
        raise CheckError(why)


def error_message(err):
    """The gateway's message from either SDK's error (both shapes)."""
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        if isinstance(body.get("error"), dict):
            body = body["error"]
        if isinstance(body.get("message"), str):
            return body["message"]
    return str(err)


def expect_error(call, error_class, status):
    try:
        result = call()
    except error_class as err:
        check(err.status_code == status, f"status {err.status_code}, expected {status}")
        return err
    raise CheckError(f"expected {error_class.__module__}.{error_class.__name__}, got a result: {result!r}")


def check_not_allowed(err, sdk):
    message = error_message(err)
    check("`openai`" in message, f"{sdk}: the message does not name the provider: {message!r}")
    check("not allowed" in message, f"{sdk}: the message does not say `not allowed`: {message!r}")


def check_retry_after(err):
    value = err.response.headers.get("retry-after", "")
    check(value.isdigit() and int(value) > 0, f"retry-after {value!r} is not a positive integer")
    message = error_message(err)
    check("rate limit" in message, f"message does not mention the rate limit: {message!r}")


def openai_gpt_model_is_permission_denied():
    err = expect_error(
        lambda: oai.chat.completions.create(
            model=GPT_MODEL, messages=[{"role": "user", "content": "hi"}]
        ),
        openai.PermissionDeniedError,
        403,
    )
    check_not_allowed(err, "openai")
    check(err.code == "provider_not_allowed", f"code {err.code!r}")
    check(err.type == "permission_error", f"type {err.type!r}")


def anthropic_gpt_model_is_permission_denied():
    err = expect_error(
        lambda: claude.messages.create(
            model=GPT_MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        ),
        anthropic.PermissionDeniedError,
        403,
    )
    check_not_allowed(err, "anthropic")
    check(err.body["error"]["type"] == "permission_error", f"body {err.body!r}")


def anthropic_allowed_model_succeeds():
    message = claude.messages.create(
        model=CLAUDE_MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    )
    text = "".join(block.text for block in message.content if block.type == "text")
    check(text == DEFAULT_REPLY, f"reply {text!r}")


def openai_next_call_is_rate_limited():
    err = expect_error(
        lambda: oai.chat.completions.create(
            model=CLAUDE_MODEL, messages=[{"role": "user", "content": "hi"}]
        ),
        openai.RateLimitError,
        429,
    )
    check_retry_after(err)
    check(err.code == "rate_limit_exceeded", f"code {err.code!r}")


def anthropic_next_call_is_rate_limited():
    err = expect_error(
        lambda: claude.messages.create(
            model=CLAUDE_MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        ),
        anthropic.RateLimitError,
        429,
    )
    check_retry_after(err)
    check(err.body["error"]["type"] == "rate_limit_error", f"body {err.body!r}")


CHECKS = [
    openai_gpt_model_is_permission_denied,
    anthropic_gpt_model_is_permission_denied,
    anthropic_allowed_model_succeeds,
    openai_next_call_is_rate_limited,
    anthropic_next_call_is_rate_limited,
]


def main():
    print(f"openai {openai.__version__}, anthropic {anthropic.__version__}")
    failures = 0
    for fn in CHECKS:
        try:
            fn()
        except CheckError as err:
            failures += 1
            print(f"FAIL {fn.__name__}: {err}", flush=True)
        except Exception as err:  # noqa: BLE001 - any other SDK error is a failed check
            failures += 1
            print(f"FAIL {fn.__name__}: {type(err).__module__}.{type(err).__name__}: {err}", flush=True)
        else:
            print(f"ok   {fn.__name__}", flush=True)
    print(f"sdk_refusals: {len(CHECKS) - failures}/{len(CHECKS)} checks passed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
