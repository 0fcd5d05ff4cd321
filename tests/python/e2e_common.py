"""Shared helpers for the SDK end-to-end scripts (sdk_openai.py, sdk_anthropic.py,
sdk_responses.py, sdk_agents.py).

The scripts talk to a running Tollgate whose `openai` and `anthropic` providers
point at the bundled mock upstream (tollgate-mock-upstream), and so do two
custom providers with declared prices, `openai-mock` and `anthropic-mock` (one
per upstream API): the special models below are not in the catalog, and a
model without a price is refused on the operator's credentials. The mock must
have these rules (tollgate/tests/sdk_e2e.rs installs them):

* model `tool-model`   -> a tool call `get_weather` with arguments {"city": "Paris"}
* model `reply-canary` -> the reply text REPLY_CANARY_TEXT below
* model `cut-model`    -> the stream is cut (connection aborted) after CUT_AFTER
                          content chunks

Every other model gets the mock's default reply, DEFAULT_REPLY.

A script may add one-off rules (`times: 1`) through the mock's control API at
TOLLGATE_MOCK_URL (`mock_rule`): a tool call for the next request to a model,
or a failure of a provider's first operator key (OPERATOR_KEYS, tried in
order) so that the request fails over to the second. The scripts run one
request at a time, so such a rule is used by the very next request it matches.

Output protocol, read by sdk_e2e.rs (one line each):

* `ok   <check>` / `FAIL <check>: <why>` for every check;
* `EXPECT_EVENT {json}` for every model request sent with the valid key: the
  usage event the gateway must have stored for it (token counts `null` when
  the gateway can only estimate them);
* `EXPECT_EVENT_ID <id> <model>` for event ids read from `x-tollgate-event-id`;
* last: `REQUESTS=<n>`, the number of model requests (POST /v1/chat/completions,
  /v1/responses, /v1/embeddings or /v1/messages) that actually went over the wire with the valid key,
  counted by an httpx hook, so a check that forgets to declare its event
  is caught.

Exit status: 0 when every check passed, 1 otherwise, 2 when the environment is
unusable (missing variables or SDKs).
"""

import json
import os
import re
import sys
import traceback
import urllib.request

CANARY = "CANARY-7f3a9d"
"""Sent in every prompt; must never reach stored events or logs."""

DEFAULT_REPLY = "Hello from the mock upstream."
REPLY_CANARY = "CANARY-REPLY-2b8e1c"
REPLY_CANARY_TEXT = f"The secret reply word is {REPLY_CANARY} for this test."
"""The reply the mock sends for model `reply-canary` (keep in sync with sdk_e2e.rs)."""

CUT_AFTER = 2
CUT_TEXT = "".join(word + " " for word in DEFAULT_REPLY.split()[:CUT_AFTER])
"""What a client receives of DEFAULT_REPLY before the mock cuts the stream."""

TOOL_NAME = "get_weather"
TOOL_ARGS = {"city": "Paris"}
# The mock counts one completion token per 8-character fragment of the compact
# JSON arguments string.
TOOL_ARGS_JSON = json.dumps(TOOL_ARGS, separators=(",", ":"))
TOOL_COMPLETION_TOKENS = -(-len(TOOL_ARGS_JSON) // 8)

OPERATOR_KEYS = {
    "openai": ("sk-e2e-operator-openai-51c0", "sk-e2e-operator-openai-2-7b14"),
    "anthropic": ("sk-ant-e2e-operator-9d2e", "sk-ant-e2e-operator-2-c3a8"),
    "groq": ("gsk-e2e-operator-groq-4e61", "gsk-e2e-operator-groq-2-90fd"),
}
"""The operator keys of each provider, in the order the gateway tries them
(keep in sync with sdk_e2e.rs)."""

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def words(*texts):
    """Prompt tokens as the mock counts them: whitespace-separated words."""
    return sum(len(t.split()) for t in texts)


def completion_words(text):
    return len(text.split())


def mock_rule(rule):
    """Add a rule to the mock upstream (its JSON form: `api_key`, `model`,
    `times`, `action`)."""
    base = os.environ.get("TOLLGATE_MOCK_URL", "").rstrip("/")
    if not base:
        raise CheckError("TOLLGATE_MOCK_URL is not set: cannot add a mock rule")
    request = urllib.request.Request(
        base + "/__mock/rules",
        data=json.dumps(rule).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        if response.status != 200:
            raise CheckError(f"the mock refused rule {rule}: {response.status}")


def fail_first_key_once(provider, status=429):
    """The next request with `provider`'s first operator key fails with `status`."""
    mock_rule(
        {
            "api_key": OPERATOR_KEYS[provider][0],
            "times": 1,
            "action": {"type": "fail", "status": status},
        }
    )


def tool_call_once(upstream_model, name=None, arguments=None):
    """The next request for `upstream_model` (as the upstream sees it) answers a
    tool call (TOOL_NAME with TOOL_ARGS unless given)."""
    mock_rule(
        {
            "model": upstream_model,
            "times": 1,
            "action": {
                "type": "reply",
                "tool_call": {
                    "name": name or TOOL_NAME,
                    "arguments": TOOL_ARGS if arguments is None else arguments,
                },
            },
        }
    )


def require_env():
    base = os.environ.get("TOLLGATE_BASE_URL", "").rstrip("/")
    key = os.environ.get("TOLLGATE_KEY", "")
    if not base or not key:
        print(
            "FAIL environment: set TOLLGATE_BASE_URL (e.g. http://127.0.0.1:8080) "
            "and TOLLGATE_KEY (a tgk_... access key)"
        )
        sys.exit(2)
    return base, key


def import_sdk(name):
    try:
        return __import__(name)
    except ImportError as err:
        print(
            f"FAIL environment: the `{name}` Python SDK is not installed ({err}); "
            "run: python3 -m pip install -r tests/python/requirements.txt"
        )
        sys.exit(2)


class CheckError(AssertionError):
    pass


def eq(what, got, want):
    if got != want:
        raise CheckError(f"{what}: expected {want!r}, got {got!r}")


def true(what, cond, detail=""):
    if not cond:
        raise CheckError(f"{what}{': ' + detail if detail else ''}")


class Run:
    """Runs checks, counts requests on the wire, and prints the protocol."""

    def __init__(self, sdk_name, key):
        self.sdk_name = sdk_name
        self.key = key
        self.checks = []
        self.expected = []
        self.event_ids = []
        self.sent_with_key = 0
        self.sent_other = 0

    # -- request accounting -------------------------------------------------

    async def on_request_async(self, request):
        """The same hook for an async httpx client."""
        self.on_request(request)

    def on_request(self, request):
        """httpx request hook: count model requests by the key they carry."""
        path = request.url.path
        if request.method != "POST" or not path.endswith(
            ("/chat/completions", "/messages", "/embeddings", "/responses")
        ):
            return
        auth = request.headers.get("authorization", "")
        api_key = request.headers.get("x-api-key", "")
        if auth == f"Bearer {self.key}" or api_key == self.key:
            self.sent_with_key += 1
        else:
            self.sent_other += 1

    def expect_event(
        self, client_api, model, provider, streamed, status, input_tokens, output_tokens, attempts=None
    ):
        """Declare the usage event the gateway must store for the next request;
        None for a token count means "estimated, any value"; `attempts` defaults
        to 1 when the request reaches a provider, else 0."""
        self.expected.append(
            {
                "attempts": attempts if attempts is not None else (1 if provider else 0),
                "client_api": client_api,
                "model_requested": model,
                "provider": provider,
                "streamed": streamed,
                "status": status,
                "input": input_tokens,
                "output": output_tokens,
            }
        )

    def expect_event_id(self, event_id, model):
        true("x-tollgate-event-id is a UUID", bool(event_id and UUID_RE.match(event_id)), repr(event_id))
        self.event_ids.append((event_id, model))

    # -- running --------------------------------------------------------------

    def check(self, fn):
        self.checks.append(fn)
        return fn

    def main(self):
        failures = 0
        for fn in self.checks:
            name = fn.__name__
            try:
                fn()
            except CheckError as err:
                failures += 1
                print(f"FAIL {name}: {err}", flush=True)
            except Exception as err:  # noqa: BLE001 - any SDK error is a failed check
                failures += 1
                print(f"FAIL {name}: {type(err).__module__}.{type(err).__name__}: {err}", flush=True)
                here = os.path.dirname(os.path.abspath(__file__))
                for frame in traceback.extract_tb(err.__traceback__)[1:]:
                    if os.path.dirname(os.path.abspath(frame.filename)) == here:
                        print(f"     at {os.path.basename(frame.filename)}:{frame.lineno} {frame.line}")
            else:
                print(f"ok   {name}", flush=True)
        passed = len(self.checks) - failures
        if self.sent_with_key != len(self.expected):
            failures += 1
            print(
                f"FAIL request accounting: {self.sent_with_key} model requests went out with the "
                f"valid key but {len(self.expected)} usage events were declared (script bug)"
            )
        for event in self.expected:
            print("EXPECT_EVENT " + json.dumps(event, sort_keys=True))
        for event_id, model in self.event_ids:
            print(f"EXPECT_EVENT_ID {event_id} {model}")
        print(
            f"{self.sdk_name}: {passed}/{len(self.checks)} checks passed; "
            f"{self.sent_other} model request(s) sent with other keys"
        )
        print(f"REQUESTS={self.sent_with_key}", flush=True)
        sys.exit(1 if failures else 0)
