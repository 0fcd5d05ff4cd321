//! End-to-end tests over a tiny raw HTTP/1.1 client, so the exact wire format is seen.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Action, MockOptions, MockUpstream, Rule, DEFAULT_REPLY};

/// A parsed HTTP response; `complete` is false when the connection ended early.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    complete: bool,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not json ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decodes chunked data; returns the payload and the consumed length when the
/// terminating chunk was seen.
fn decode_chunked(data: &[u8]) -> (Vec<u8>, Option<usize>) {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let Some(line_end) = find(&data[pos..], b"\r\n") else {
            return (out, None);
        };
        let size_str = std::str::from_utf8(&data[pos..pos + line_end]).unwrap();
        let size = usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16).unwrap();
        let start = pos + line_end + 2;
        if size == 0 {
            return if data.len() >= start + 2 {
                (out, Some(start + 2))
            } else {
                (out, None)
            };
        }
        if data.len() < start + size + 2 {
            return (out, None);
        }
        out.extend_from_slice(&data[start..start + size]);
        pos = start + size + 2;
    }
}

/// Parses one response from `buf`; `None` while incomplete (unless `eof`).
fn parse(buf: &[u8], eof: bool) -> Option<(Resp, usize)> {
    let head_end = find(buf, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..head_end]).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &buf[head_end + 4..];
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let (body, used, complete) = if get("transfer-encoding").as_deref() == Some("chunked") {
        let (body, used) = decode_chunked(rest);
        match used {
            Some(u) => (body, u, true),
            None if eof => (body, rest.len(), false),
            None => return None,
        }
    } else {
        let len: usize = get("content-length").map_or(0, |v| v.parse().unwrap());
        if rest.len() < len {
            if !eof {
                return None;
            }
            (rest.to_vec(), rest.len(), false)
        } else {
            (rest[..len].to_vec(), len, true)
        }
    };
    Some((
        Resp {
            status,
            headers,
            body,
            complete,
        },
        head_end + 4 + used,
    ))
}

/// A keep-alive HTTP/1.1 connection.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    addr: SocketAddr,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        Conn {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
            addr,
        }
    }

    async fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n",
            self.addr,
            body.len()
        );
        if !body.is_empty() {
            req.push_str("content-type: application/json\r\n");
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.stream.write_all(req.as_bytes()).await.unwrap();
    }

    async fn response(&mut self) -> Resp {
        loop {
            if let Some((resp, used)) = parse(&self.buf, false) {
                self.buf.drain(..used);
                return resp;
            }
            let mut tmp = [0u8; 8192];
            let n = self.stream.read(&mut tmp).await.unwrap_or(0);
            if n == 0 {
                let (resp, _) = parse(&self.buf, true).expect("no response head");
                return resp;
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Resp {
        self.send(method, path, headers, body).await;
        self.response().await
    }
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> Resp {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    Conn::open(addr)
        .await
        .request(method, path, headers, &body)
        .await
}

async fn chat(mock: &MockUpstream, key: &str, body: Value) -> Resp {
    let auth = format!("Bearer {key}");
    request(
        mock.addr(),
        "POST",
        "/v1/chat/completions",
        &[("authorization", &auth)],
        &body,
    )
    .await
}

async fn messages(mock: &MockUpstream, key: &str, body: Value) -> Resp {
    request(
        mock.addr(),
        "POST",
        "/v1/messages",
        &[("x-api-key", key), ("anthropic-version", "2023-06-01")],
        &body,
    )
    .await
}

/// `(event name, data)` pairs of an SSE body.
fn sse(body: &[u8]) -> Vec<(Option<String>, String)> {
    let text = String::from_utf8(body.to_vec()).unwrap();
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let mut name = None;
            let mut data = String::new();
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = d.to_owned();
                } else {
                    panic!("unexpected SSE line {line:?}");
                }
            }
            (name, data)
        })
        .collect()
}

fn sse_json(body: &[u8]) -> Vec<Value> {
    sse(body)
        .into_iter()
        .filter(|(_, d)| d != "[DONE]")
        .map(|(_, d)| serde_json::from_str(&d).unwrap())
        .collect()
}

fn oa_body(stream: bool, include_usage: bool) -> Value {
    let mut b = json!({
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi there"}]}
        ]
    });
    if stream {
        b["stream"] = json!(true);
    }
    if include_usage {
        b["stream_options"] = json!({"include_usage": true});
    }
    b
}

fn an_body(stream: bool) -> Value {
    json!({
        "model": "claude-test",
        "max_tokens": 100,
        "system": "be brief",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi there you"}]}],
        "stream": stream
    })
}

#[tokio::test]
async fn openai_non_stream_exact_body() {
    let mock = MockUpstream::start().await.unwrap();
    let r = chat(&mock, "k1", oa_body(false, false)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("req_mock_1"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({
            "id": "chatcmpl-mock-1",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "gpt-test",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": DEFAULT_REPLY},
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": {
                "prompt_tokens": 4,
                "completion_tokens": 5,
                "total_tokens": 9,
                "prompt_tokens_details": {"cached_tokens": 0}
            }
        })
    );
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/v1/chat/completions");
    assert_eq!(reqs[0].api_key.as_deref(), Some("k1"));
    assert_eq!(reqs[0].header("Authorization"), Some("Bearer k1"));
    assert_eq!(reqs[0].body, oa_body(false, false));
}

#[tokio::test]
async fn openai_stream_with_usage() {
    let mock = MockUpstream::start().await.unwrap();
    mock.add_rule(Rule::any().reply_text("one two  three").cached_tokens(3));
    let r = chat(&mock, "k", oa_body(true, true)).await;
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = sse(&r.body);
    assert!(events.iter().all(|(name, _)| name.is_none()));
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks = sse_json(&r.body);
    // role, 3 words, finish, usage
    assert_eq!(chunks.len(), 6);
    for c in &chunks {
        assert_eq!(c["id"], "chatcmpl-mock-1");
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "gpt-test");
    }
    assert_eq!(
        chunks[0]["choices"],
        json!([{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}])
    );
    assert_eq!(chunks[0]["usage"], Value::Null);
    assert!(chunks[0].as_object().unwrap().contains_key("usage"));
    let deltas: Vec<&str> = chunks[1..4]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, vec!["one ", "two  ", "three"]);
    assert_eq!(
        chunks[4]["choices"],
        json!([{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}])
    );
    assert_eq!(chunks[5]["choices"], json!([]));
    assert_eq!(
        chunks[5]["usage"],
        json!({"prompt_tokens":7,"completion_tokens":3,"total_tokens":10,"prompt_tokens_details":{"cached_tokens":3}})
    );
}

#[tokio::test]
async fn reasoning_tokens_are_reported_in_openai_answers_and_streams() {
    let mock = MockUpstream::start().await.unwrap();
    mock.add_rule(Rule::any().reply_text("one two").reasoning_tokens(40));
    let usage = json!({"prompt_tokens": 4, "completion_tokens": 42, "total_tokens": 46,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 40}});
    let r = chat(&mock, "k", oa_body(false, false)).await;
    assert_eq!(r.json()["usage"], usage);
    let r = chat(&mock, "k", oa_body(true, true)).await;
    let chunks = sse_json(&r.body);
    assert_eq!(chunks.last().unwrap()["usage"], usage);
    // Anthropic has no such field: the tokens are only in output_tokens.
    let r = messages(&mock, "k", an_body(false)).await;
    assert_eq!(r.json()["usage"]["output_tokens"], 42);
    assert!(!String::from_utf8_lossy(&r.body).contains("reasoning"));
    // Without the option nothing changes.
    let plain = MockUpstream::start().await.unwrap();
    let r = chat(&plain, "k", oa_body(false, false)).await;
    assert!(r.json()["usage"].get("completion_tokens_details").is_none());
}

#[tokio::test]
async fn openai_stream_without_include_usage() {
    let mock = MockUpstream::start().await.unwrap();
    let r = chat(&mock, "k", oa_body(true, false)).await;
    let chunks = sse_json(&r.body);
    assert_eq!(chunks.len(), 1 + 5 + 1);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, DEFAULT_REPLY);
    assert_eq!(sse(&r.body).last().unwrap().1, "[DONE]");

    // omit_usage suppresses the usage chunk even when it was asked for.
    mock.add_rule(Rule::any().omit_usage());
    let r = chat(&mock, "k", oa_body(true, true)).await;
    let chunks = sse_json(&r.body);
    assert_eq!(chunks.len(), 7);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
}

#[tokio::test]
async fn openai_tool_call() {
    let mock = MockUpstream::start().await.unwrap();
    mock.add_rule(Rule::any().tool_call("get_weather", json!({"city": "Paris"})));
    let r = chat(&mock, "k", oa_body(false, false)).await;
    // `{"city":"Paris"}` is 16 chars: 2 fragments = 2 completion tokens.
    assert_eq!(
        r.json()["choices"],
        json!([{
            "index": 0,
            "message": {"role": "assistant", "content": null, "tool_calls": [{
                "id": "call_mock_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}
            }]},
            "logprobs": null,
            "finish_reason": "tool_calls"
        }])
    );
    assert_eq!(r.json()["usage"]["completion_tokens"], 2);

    let r = chat(&mock, "k", oa_body(true, true)).await;
    let chunks = sse_json(&r.body);
    // role, tool header, 2 fragments, finish, usage
    assert_eq!(chunks.len(), 6);
    assert_eq!(
        chunks[1]["choices"][0]["delta"],
        json!({"tool_calls":[{"index":0,"id":"call_mock_2","type":"function","function":{"name":"get_weather","arguments":""}}]})
    );
    assert_eq!(
        chunks[2]["choices"][0]["delta"],
        json!({"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]})
    );
    let args: String = chunks[2..4]
        .iter()
        .map(|c| {
            c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(args, "{\"city\":\"Paris\"}");
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(chunks[5]["usage"]["completion_tokens"], 2);
}

#[tokio::test]
async fn anthropic_non_stream_exact_body() {
    let mock = MockUpstream::start().await.unwrap();
    mock.add_rule(Rule::for_key("ak").cached_tokens(10).cache_write(4, 6));
    let r = messages(&mock, "ak", an_body(false)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("request-id"), Some("req_mock_1"));
    assert_eq!(
        r.json(),
        json!({
            "id": "msg_mock_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-test",
            "content": [{"type": "text", "text": DEFAULT_REPLY}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {
                "input_tokens": 5,
                "output_tokens": 5,
                "cache_read_input_tokens": 10,
                "cache_creation_input_tokens": 10,
                "cache_creation": {"ephemeral_5m_input_tokens": 4, "ephemeral_1h_input_tokens": 6}
            }
        })
    );
    assert_eq!(mock.requests()[0].api_key.as_deref(), Some("ak"));
}

#[tokio::test]
async fn anthropic_stream_sequence() {
    let mock = MockUpstream::start().await.unwrap();
    mock.add_rule(Rule::any().reply_text("a b").cached_tokens(2));
    let r = messages(&mock, "k", an_body(true)).await;
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = sse(&r.body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        vec![
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let data: Vec<Value> = events
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    for ((name, _), d) in events.iter().zip(&data) {
        assert_eq!(d["type"].as_str(), name.as_deref());
    }
    assert_eq!(
        data[0]["message"],
        json!({
            "id": "msg_mock_1", "type": "message", "role": "assistant", "model": "claude-test",
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 5, "output_tokens": 1, "cache_read_input_tokens": 2,
                      "cache_creation_input_tokens": 0,
                      "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}}
        })
    );
    assert_eq!(
        data[1],
        json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}})
    );
    assert_eq!(
        data[3],
        json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a "}})
    );
    assert_eq!(data[4]["delta"]["text"], "b");
    assert_eq!(data[5], json!({"type":"content_block_stop","index":0}));
    assert_eq!(
        data[6],
        json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":2}})
    );
}

#[tokio::test]
async fn anthropic_tool_use_and_omit_usage() {
    let mock = MockUpstream::start().await.unwrap();
    mock.add_rule(
        Rule::any()
            .tool_call("lookup", json!({"q": "rust"}))
            .omit_usage(),
    );
    let r = messages(&mock, "k", an_body(false)).await;
    let j = r.json();
    assert_eq!(
        j["content"],
        json!([{"type":"tool_use","id":"toolu_mock_1","name":"lookup","input":{"q":"rust"}}])
    );
    assert_eq!(j["stop_reason"], "tool_use");
    assert!(j.get("usage").is_none());

    let r = messages(&mock, "k", an_body(true)).await;
    let events = sse(&r.body);
    let data: Vec<Value> = events
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(
        data[1]["content_block"],
        json!({"type":"tool_use","id":"toolu_mock_2","name":"lookup","input":{}})
    );
    assert_eq!(data[0]["message"]["usage"]["input_tokens"], 0);
    assert_eq!(data[0]["message"]["usage"]["output_tokens"], 0);
    let partial: String = data
        .iter()
        .filter(|d| d["type"] == "content_block_delta")
        .map(|d| {
            assert_eq!(d["delta"]["type"], "input_json_delta");
            d["delta"]["partial_json"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(partial, r#"{"q":"rust"}"#);
    let delta = data.iter().find(|d| d["type"] == "message_delta").unwrap();
    assert_eq!(
        delta,
        &json!({"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null}})
    );
}

#[tokio::test]
async fn anthropic_validation() {
    let mock = MockUpstream::start().await.unwrap();
    mock.add_rule(Rule::any().once().fail(500));
    let r = request(
        mock.addr(),
        "POST",
        "/v1/messages",
        &[("x-api-key", "k")],
        &an_body(false),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"type":"error","error":{"type":"invalid_request_error","message":"anthropic-version: header is required"}})
    );
    let mut body = an_body(false);
    body.as_object_mut().unwrap().remove("max_tokens");
    let r = messages(&mock, "k", body).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["message"], "max_tokens: Field required");
    // Invalid requests did not use up the rule.
    let r = messages(&mock, "k", an_body(false)).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.header("request-id"), Some("req_mock_3"));
    assert_eq!(mock.requests().len(), 3);
}

#[tokio::test]
async fn invalid_json_is_400_and_recorded() {
    let mock = MockUpstream::start().await.unwrap();
    let mut conn = Conn::open(mock.addr()).await;
    let r = conn
        .request("POST", "/v1/chat/completions", &[], "{nope")
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert_eq!(mock.requests()[0].body, json!("{nope"));
}

#[tokio::test]
async fn rule_times_and_keys() {
    let mock = MockUpstream::start().await.unwrap();
    mock.add_rule(Rule::for_model("gpt-test").times(2).fail(500));
    mock.add_rule(Rule::for_key("limited").fail(429));
    let statuses = [
        chat(&mock, "a", oa_body(false, false)).await.status,
        chat(&mock, "a", oa_body(false, false)).await.status,
        chat(&mock, "a", oa_body(false, false)).await.status,
    ];
    assert_eq!(statuses, [500, 500, 200]);

    let r = chat(&mock, "limited", oa_body(false, false)).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-request-id"), Some("req_mock_4"));
    assert_eq!(
        r.json(),
        json!({"error":{"message":"mock upstream: injected 429 error","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}})
    );
    let r = messages(&mock, "limited", an_body(false)).await;
    assert_eq!(r.status, 429);
    assert_eq!(
        r.json(),
        json!({"type":"error","error":{"type":"rate_limit_error","message":"mock upstream: injected 429 error"}})
    );
    // Streaming requests get the JSON error too.
    let r = messages(&mock, "limited", an_body(true)).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("content-type"), Some("application/json"));

    let r = messages(&mock, "other", an_body(false)).await;
    assert_eq!(r.status, 200);

    mock.clear_rules();
    assert_eq!(
        chat(&mock, "limited", oa_body(false, false)).await.status,
        200
    );
}

#[tokio::test]
async fn fail_default_types_and_custom_body() {
    let mock = MockUpstream::start().await.unwrap();
    mock.add_rule(Rule::for_key("503").fail(503));
    mock.add_rule(Rule::for_key("529").fail(529));
    mock.add_rule(Rule::for_key("custom").fail_with(418, json!({"teapot": true})));
    let r = chat(&mock, "503", oa_body(false, false)).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["type"], "server_error");
    let r = messages(&mock, "503", an_body(false)).await;
    assert_eq!(r.json()["error"]["type"], "api_error");
    let r = messages(&mock, "529", an_body(false)).await;
    assert_eq!(r.status, 529);
    assert_eq!(r.json()["error"]["type"], "overloaded_error");
    let r = chat(&mock, "custom", oa_body(false, false)).await;
    assert_eq!(r.status, 418);
    assert_eq!(r.json(), json!({"teapot": true}));
}

#[tokio::test]
async fn zero_usage_reports_zeros() {
    let mock = MockUpstream::start().await.unwrap();
    mock.add_rule(Rule::any().zero_usage().cached_tokens(5));
    let r = chat(&mock, "k", oa_body(false, false)).await;
    assert_eq!(
        r.json()["usage"],
        json!({"prompt_tokens":0,"completion_tokens":0,"total_tokens":0,"prompt_tokens_details":{"cached_tokens":0}})
    );
    let r = messages(&mock, "k", an_body(true)).await;
    let data = sse_json(&r.body);
    assert_eq!(data[0]["message"]["usage"]["output_tokens"], 0);
    assert_eq!(data[0]["message"]["usage"]["input_tokens"], 0);
    let delta = data.iter().find(|d| d["type"] == "message_delta").unwrap();
    assert_eq!(delta["usage"], json!({"output_tokens": 0}));
    // The text is still the normal reply.
    let text: String = data
        .iter()
        .filter_map(|d| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, DEFAULT_REPLY);
}

#[tokio::test]
async fn garbage_bodies() {
    let mock = MockUpstream::start().await.unwrap();
    mock.add_rule(Rule::any().garbage());
    let r = chat(&mock, "k", oa_body(false, false)).await;
    assert_eq!(r.status, 200);
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());
    let r = chat(&mock, "k", oa_body(true, true)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.text(), "data: {this is not json\n\n");
    let r = messages(&mock, "k", an_body(true)).await;
    assert_eq!(
        r.text(),
        "event: message_start\ndata: {this is not json\n\n"
    );
}

#[tokio::test]
async fn cut_stream_closes_abruptly() {
    let mock = MockUpstream::start().await.unwrap();
    mock.add_rule(Rule::any().cut_stream(2));
    let r = chat(&mock, "k", oa_body(true, true)).await;
    assert_eq!(r.status, 200);
    assert!(!r.complete, "chunked body must not be terminated");
    let chunks = sse_json(&r.body);
    assert_eq!(chunks.len(), 3, "role chunk + 2 content chunks");
    assert_eq!(chunks[2]["choices"][0]["delta"]["content"], "from ");

    let r = messages(&mock, "k", an_body(true)).await;
    assert!(!r.complete);
    let names: Vec<String> = sse(&r.body).into_iter().map(|(n, _)| n.unwrap()).collect();
    assert_eq!(
        names,
        vec![
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta"
        ]
    );

    let r = chat(&mock, "k", oa_body(false, false)).await;
    assert_eq!(r.status, 200);
    assert!(!r.complete);
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());
    // A cut made by the server is not a client cancellation.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(mock.cancelled_streams(), 0);
}

#[tokio::test]
async fn cancelled_stream_is_counted() {
    let mock = MockUpstream::start().await.unwrap();
    mock.add_rule(
        Rule::any()
            .reply_text("w ".repeat(200))
            .chunk_delay(Duration::from_millis(10)),
    );
    let mut conn = Conn::open(mock.addr()).await;
    conn.send(
        "POST",
        "/v1/chat/completions",
        &[],
        &oa_body(true, false).to_string(),
    )
    .await;
    let mut tmp = [0u8; 1024];
    let n = conn.stream.read(&mut tmp).await.unwrap();
    assert!(n > 0);
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(3);
    while mock.cancelled_streams() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(mock.cancelled_streams(), 1);

    // A stream read to the end is not counted.
    mock.clear_rules();
    let r = chat(&mock, "k", oa_body(true, false)).await;
    assert!(r.complete);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(mock.cancelled_streams(), 1);
}

#[tokio::test]
async fn chunk_delay_spaces_frames() {
    let mock = MockUpstream::start_with(MockOptions {
        reply: "a b c d".into(),
        chunk_delay: Duration::from_millis(20),
        ..MockOptions::default()
    })
    .await
    .unwrap();
    let start = Instant::now();
    let r = messages(&mock, "k", an_body(true)).await;
    // 10 frames, 9 gaps of 20ms.
    assert!(start.elapsed() >= Duration::from_millis(180));
    assert_eq!(sse(&r.body).len(), 10);
}

#[tokio::test]
async fn delay_before_headers() {
    let mock = MockUpstream::start().await.unwrap();
    mock.add_rule(Rule::any().once().delay(Duration::from_millis(300)));
    let addr = mock.addr();
    let start = Instant::now();
    let pending = tokio::spawn(async move { chat_addr(addr, oa_body(false, false)).await });
    // The request is recorded while the delay is still running.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(mock.requests().len(), 1);
    let r = pending.await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["choices"][0]["message"]["content"], DEFAULT_REPLY);
    let start = Instant::now();
    chat(&mock, "k", oa_body(false, false)).await;
    assert!(start.elapsed() < Duration::from_millis(300));
}

async fn chat_addr(addr: SocketAddr, body: Value) -> Resp {
    request(addr, "POST", "/v1/chat/completions", &[], &body).await
}

#[tokio::test]
async fn keep_alive_and_ids() {
    let mock = MockUpstream::start().await.unwrap();
    let mut conn = Conn::open(mock.addr()).await;
    let body = oa_body(false, false).to_string();
    for i in 1..=3 {
        let r = conn
            .request(
                "POST",
                "/v1/chat/completions",
                &[("x-api-key", "xk")],
                &body,
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["id"], format!("chatcmpl-mock-{i}"));
    }
    let r = conn.request("GET", "/v1/models", &[], "").await;
    assert_eq!(r.status, 200);
    let ids: Vec<String> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec!["gpt-4o-mini", "claude-sonnet-4-5"]);
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 3, "models calls are not recorded");
    assert!(reqs.iter().all(|r| r.api_key.as_deref() == Some("xk")));
    mock.clear_requests();
    assert!(mock.requests().is_empty());
    assert_eq!(mock.request_count(), 3);
}

#[tokio::test]
async fn recording_off() {
    let mock = MockUpstream::start_with(MockOptions {
        record: false,
        ..MockOptions::default()
    })
    .await
    .unwrap();
    assert_eq!(chat(&mock, "k", oa_body(false, false)).await.status, 200);
    assert!(mock.requests().is_empty());
    assert!(mock.base_url().starts_with("http://127.0.0.1:"));
    assert!(mock.base_url().ends_with("/v1"));
}

#[tokio::test]
async fn http_control_endpoints() {
    let mock = MockUpstream::start().await.unwrap();
    let addr = mock.addr();
    let rule = json!({"model": "gpt-test", "times": 1, "action": {"type": "fail", "status": 503}});
    let r = request(addr, "POST", "/__mock/rules", &[], &rule).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"rules": 1}));
    let r = request(
        addr,
        "POST",
        "/__mock/rules",
        &[],
        &json!({"action": {"type": "reply", "text": "via http", "chunk_delay_ms": 0}}),
    )
    .await;
    assert_eq!(r.json(), json!({"rules": 2}));
    let r = request(
        addr,
        "POST",
        "/__mock/rules",
        &[],
        &json!({"action": {"type": "nope"}}),
    )
    .await;
    assert_eq!(r.status, 400);

    assert_eq!(chat(&mock, "k", oa_body(false, false)).await.status, 503);
    let r = chat(&mock, "k", oa_body(false, false)).await;
    assert_eq!(r.json()["choices"][0]["message"]["content"], "via http");

    let r = request(addr, "GET", "/__mock/requests", &[], &Value::Null).await;
    let list = r.json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["path"], "/v1/chat/completions");
    assert_eq!(list[0]["api_key"], "k");

    let r = request(addr, "GET", "/__mock/stats", &[], &Value::Null).await;
    assert_eq!(r.json(), json!({"requests": 2, "cancelled_streams": 0}));

    let r = request(addr, "DELETE", "/__mock/rules", &[], &Value::Null).await;
    assert_eq!(r.status, 204);
    let r = request(addr, "DELETE", "/__mock/requests", &[], &Value::Null).await;
    assert_eq!(r.status, 204);
    assert!(mock.requests().is_empty());
    let r = chat(&mock, "k", oa_body(false, false)).await;
    assert_eq!(r.json()["choices"][0]["message"]["content"], DEFAULT_REPLY);

    let r = request(addr, "GET", "/nowhere", &[], &Value::Null).await;
    assert_eq!(r.status, 404);
}

#[test]
fn rule_serde_uses_milliseconds() {
    let rule = Rule::for_key("k")
        .times(2)
        .action(Action::delay(Duration::from_millis(1500)));
    let j = serde_json::to_value(&rule).unwrap();
    assert_eq!(
        j,
        json!({"api_key":"k","model":null,"times":2,"action":{"type":"delay","before_headers_ms":1500}})
    );
    assert_eq!(serde_json::from_value::<Rule>(j).unwrap(), rule);
    let r: Rule = serde_json::from_value(json!({
        "action": {"type": "reply", "chunk_delay_ms": 5, "tool_call": {"name": "f", "arguments": {"a": 1}}}
    }))
    .unwrap();
    assert_eq!(
        r,
        Rule::any()
            .tool_call("f", json!({"a": 1}))
            .chunk_delay(Duration::from_millis(5))
    );
    let r: Rule =
        serde_json::from_value(json!({"action": {"type": "cut_stream", "after_chunks": 3}}))
            .unwrap();
    assert_eq!(r.action, Action::CutStream { after_chunks: 3 });
    let r: Rule = serde_json::from_value(json!({})).unwrap();
    assert_eq!(r, Rule::any());
}

#[tokio::test]
async fn drop_shuts_down() {
    let mock = MockUpstream::start().await.unwrap();
    let addr = mock.addr();
    // An idle keep-alive connection must be closed too.
    let mut conn = Conn::open(addr).await;
    let body = oa_body(false, false).to_string();
    assert_eq!(
        conn.request("POST", "/v1/chat/completions", &[], &body)
            .await
            .status,
        200
    );
    drop(mock);
    let mut tmp = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(2), conn.stream.read(&mut tmp)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if TcpStream::connect(addr).await.is_err() {
            break;
        }
        assert!(Instant::now() < deadline, "still accepting after drop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn count_tokens_counts_like_messages_and_follows_rules() {
    let mock = MockUpstream::start().await.unwrap();
    let headers = [("x-api-key", "ak"), ("anthropic-version", "2023-06-01")];
    let path = "/v1/messages/count_tokens?beta=true";
    let mut body = an_body(false);
    let usage = messages(&mock, "ak", body.clone()).await.json()["usage"]["input_tokens"].clone();
    body.as_object_mut().unwrap().remove("max_tokens");
    let r = request(mock.addr(), "POST", path, &headers, &body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("request-id"), Some("req_mock_2"));
    assert_eq!(r.json(), json!({"input_tokens": usage}));
    assert_eq!(usage, json!(5));
    let recorded = &mock.requests()[1];
    assert_eq!(recorded.path, "/v1/messages/count_tokens");
    assert_eq!(recorded.query.as_deref(), Some("beta=true"));

    mock.add_rule(Rule::for_key("ak").once().fail(529));
    let r = request(mock.addr(), "POST", path, &headers, &body).await;
    assert_eq!(r.status, 529);
    assert_eq!(r.json()["error"]["type"], "overloaded_error");
    mock.add_rule(Rule::for_key("ak").once().zero_usage());
    let r = request(mock.addr(), "POST", path, &headers, &body).await;
    assert_eq!(r.json(), json!({"input_tokens": 0}));

    let r = request(mock.addr(), "POST", path, &headers[..1], &body).await;
    assert_eq!(r.status, 400);
    let r = request(mock.addr(), "POST", path, &headers, &json!({"model": "m"})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["message"], "messages: Field required");
}

async fn responses(mock: &MockUpstream, key: &str, body: Value) -> Resp {
    let auth = format!("Bearer {key}");
    request(
        mock.addr(),
        "POST",
        "/v1/responses",
        &[("authorization", &auth)],
        &body,
    )
    .await
}

/// `instructions` (2 words) + one `input_text` part (2 words).
fn rs_body(stream: bool) -> Value {
    json!({
        "model": "gpt-test",
        "instructions": "be brief",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi there"}]}],
        "stream": stream
    })
}

/// The echoed settings of a request that sets none of them.
fn rs_defaults() -> Value {
    json!({
        "error": null, "incomplete_details": null, "max_output_tokens": null,
        "parallel_tool_calls": true, "previous_response_id": null, "store": true,
        "temperature": 1.0, "text": {"format": {"type": "text"}}, "tool_choice": "auto",
        "tools": [], "top_p": 1.0, "metadata": {}
    })
}

fn with(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

#[tokio::test]
async fn responses_non_stream_exact_body() {
    let mock = MockUpstream::start().await.unwrap();
    let r = responses(&mock, "k1", rs_body(false)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("req_mock_1"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let expected = with(
        rs_defaults(),
        json!({
            "id": "resp_mock_1",
            "object": "response",
            "created_at": 1_700_000_000,
            "status": "completed",
            "instructions": "be brief",
            "model": "gpt-test",
            "output": [{
                "id": "msg_mock_1", "type": "message", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": DEFAULT_REPLY, "annotations": []}]
            }],
            "usage": {
                "input_tokens": 4, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 9
            }
        }),
    );
    assert_eq!(r.json(), expected);
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/v1/responses");
    assert_eq!(reqs[0].api_key.as_deref(), Some("k1"));
    assert_eq!(reqs[0].body, rs_body(false));

    // A string input; the request's settings are echoed, previous_response_id
    // and store accepted and recorded (nothing is stored).
    let body = json!({
        "model": "gpt-test", "input": "one two three", "previous_response_id": "resp_abc",
        "store": false, "temperature": 0.5, "top_p": null, "max_output_tokens": 64,
        "tools": [{"type": "function", "name": "f", "parameters": {}}], "tool_choice": "required",
        "parallel_tool_calls": false, "metadata": {"a": "b"},
        "text": {"format": {"type": "json_object"}}
    });
    let j = responses(&mock, "k1", body.clone()).await.json();
    assert_eq!(j["id"], "resp_mock_2");
    assert_eq!(j["instructions"], Value::Null);
    assert_eq!(j["previous_response_id"], "resp_abc");
    assert_eq!(j["store"], false);
    assert_eq!(j["temperature"], 0.5);
    assert_eq!(j["top_p"], 1.0);
    assert_eq!(j["max_output_tokens"], 64);
    assert_eq!(j["tools"], body["tools"]);
    assert_eq!(j["tool_choice"], "required");
    assert_eq!(j["parallel_tool_calls"], false);
    assert_eq!(j["metadata"], json!({"a": "b"}));
    assert_eq!(j["text"], body["text"]);
    assert_eq!(j["usage"]["input_tokens"], 3);
    assert_eq!(mock.requests()[1].body, body);
}

#[tokio::test]
async fn responses_stream_sequence() {
    let mock = MockUpstream::start().await.unwrap();
    mock.add_rule(Rule::any().reply_text("one two  three"));
    let r = responses(&mock, "k", rs_body(true)).await;
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("x-request-id"), Some("req_mock_1"));
    let events = sse(&r.body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        vec![
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    assert!(!r.text().contains("[DONE]"));
    let data = sse_json(&r.body);
    for (i, ((name, _), d)) in events.iter().zip(&data).enumerate() {
        assert_eq!(d["type"].as_str(), name.as_deref());
        assert_eq!(d["sequence_number"], i);
    }
    let started = with(
        rs_defaults(),
        json!({
            "id": "resp_mock_1", "object": "response", "created_at": 1_700_000_000,
            "status": "in_progress", "instructions": "be brief", "model": "gpt-test",
            "output": [], "usage": null
        }),
    );
    assert_eq!(data[0]["response"], started);
    assert_eq!(data[1]["response"], started);
    assert_eq!(
        data[2],
        json!({"type": "response.output_item.added", "output_index": 0, "sequence_number": 2,
               "item": {"id": "msg_mock_1", "type": "message", "status": "in_progress",
                        "role": "assistant", "content": []}})
    );
    assert_eq!(
        data[3],
        json!({"type": "response.content_part.added", "item_id": "msg_mock_1", "output_index": 0,
               "content_index": 0, "sequence_number": 3,
               "part": {"type": "output_text", "text": "", "annotations": []}})
    );
    assert_eq!(
        data[4],
        json!({"type": "response.output_text.delta", "item_id": "msg_mock_1", "output_index": 0,
               "content_index": 0, "delta": "one ", "logprobs": [], "sequence_number": 4})
    );
    let deltas: String = data[4..7]
        .iter()
        .map(|d| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, "one two  three");
    assert_eq!(data[7]["text"], "one two  three");
    let part = json!({"type": "output_text", "text": "one two  three", "annotations": []});
    assert_eq!(data[8]["part"], part);
    let item = json!({"id": "msg_mock_1", "type": "message", "status": "completed",
                      "role": "assistant", "content": [part]});
    assert_eq!(data[9]["item"], item);
    let completed = with(
        started,
        json!({
            "status": "completed", "output": [item],
            "usage": {"input_tokens": 4, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": 7}
        }),
    );
    assert_eq!(data[10]["response"], completed);
    // The non-streamed answer is the completed response.
    let r = responses(&mock, "k", rs_body(false)).await;
    let mut j = r.json();
    j["id"] = json!("resp_mock_1");
    j["output"][0]["id"] = json!("msg_mock_1");
    assert_eq!(j, completed);
}

#[tokio::test]
async fn responses_tool_call() {
    let mock = MockUpstream::start().await.unwrap();
    mock.add_rule(Rule::any().tool_call("get_weather", json!({"city": "Paris"})));
    let r = responses(&mock, "k", rs_body(false)).await;
    let j = r.json();
    assert_eq!(
        j["output"],
        json!([{"id": "fc_mock_1", "type": "function_call", "call_id": "call_mock_1",
                "name": "get_weather", "arguments": "{\"city\":\"Paris\"}", "status": "completed"}])
    );
    // `{"city":"Paris"}` is 16 chars: 2 fragments = 2 output tokens.
    assert_eq!(j["usage"]["output_tokens"], 2);

    let r = responses(&mock, "k", rs_body(true)).await;
    let events = sse(&r.body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        vec![
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let data = sse_json(&r.body);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["sequence_number"], i);
    }
    assert_eq!(
        data[2]["item"],
        json!({"id": "fc_mock_2", "type": "function_call", "call_id": "call_mock_2",
               "name": "get_weather", "arguments": "", "status": "in_progress"})
    );
    assert_eq!(
        data[3],
        json!({"type": "response.function_call_arguments.delta", "item_id": "fc_mock_2",
               "output_index": 0, "delta": "{\"city\":", "sequence_number": 3})
    );
    let args: String = data[3..5]
        .iter()
        .map(|d| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(args, "{\"city\":\"Paris\"}");
    assert_eq!(
        data[5],
        json!({"type": "response.function_call_arguments.done", "item_id": "fc_mock_2",
               "output_index": 0, "arguments": "{\"city\":\"Paris\"}", "sequence_number": 5})
    );
    assert_eq!(data[6]["item"]["status"], "completed");
    assert_eq!(data[6]["item"]["arguments"], "{\"city\":\"Paris\"}");
    assert_eq!(data[7]["response"]["output"], json!([data[6]["item"]]));
    assert_eq!(data[7]["response"]["usage"]["output_tokens"], 2);
}

#[tokio::test]
async fn responses_usage_cached_reasoning_zero_and_omitted() {
    let mock = MockUpstream::start().await.unwrap();
    mock.add_rule(
        Rule::any()
            .times(2)
            .reply_text("one two")
            .cached_tokens(3)
            .reasoning_tokens(40),
    );
    let usage = json!({"input_tokens": 7, "input_tokens_details": {"cached_tokens": 3},
                       "output_tokens": 42, "output_tokens_details": {"reasoning_tokens": 40},
                       "total_tokens": 49});
    let r = responses(&mock, "k", rs_body(false)).await;
    assert_eq!(r.json()["usage"], usage);
    let r = responses(&mock, "k", rs_body(true)).await;
    let data = sse_json(&r.body);
    assert_eq!(data.last().unwrap()["response"]["usage"], usage);
    assert!(data[..data.len() - 1]
        .iter()
        .filter_map(|d| d.get("response"))
        .all(|resp| resp["usage"].is_null()));

    mock.add_rule(Rule::any().times(2).zero_usage().cached_tokens(5));
    let zeros = json!({"input_tokens": 0, "input_tokens_details": {"cached_tokens": 0},
                       "output_tokens": 0, "output_tokens_details": {"reasoning_tokens": 0},
                       "total_tokens": 0});
    assert_eq!(
        responses(&mock, "k", rs_body(false)).await.json()["usage"],
        zeros
    );
    let data = sse_json(&responses(&mock, "k", rs_body(true)).await.body);
    assert_eq!(data.last().unwrap()["response"]["usage"], zeros);

    mock.add_rule(Rule::any().omit_usage());
    let j = responses(&mock, "k", rs_body(false)).await.json();
    assert!(j.get("usage").is_none());
    assert_eq!(j["output"][0]["content"][0]["text"], DEFAULT_REPLY);
    let data = sse_json(&responses(&mock, "k", rs_body(true)).await.body);
    let last = data.last().unwrap();
    assert_eq!(last["type"], "response.completed");
    assert!(last["response"].as_object().unwrap().contains_key("usage"));
    assert!(last["response"]["usage"].is_null());
}

#[tokio::test]
async fn responses_rules_fail_cut_garbage_and_delay() {
    let mock = MockUpstream::start().await.unwrap();
    mock.add_rule(Rule::for_key("limited").fail(429));
    mock.add_rule(Rule::for_key("broken").fail(500));
    mock.add_rule(Rule::for_key("cut").cut_stream(2));
    mock.add_rule(Rule::for_key("junk").garbage());
    mock.add_rule(Rule::for_key("slow").delay(Duration::from_millis(200)));

    let r = responses(&mock, "limited", rs_body(true)).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-request-id"), Some("req_mock_1"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({"error":{"message":"mock upstream: injected 429 error","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}})
    );
    let r = responses(&mock, "broken", rs_body(false)).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"]["type"], "server_error");

    let r = responses(&mock, "cut", rs_body(true)).await;
    assert_eq!(r.status, 200);
    assert!(!r.complete, "chunked body must not be terminated");
    let names: Vec<String> = sse(&r.body).into_iter().map(|(n, _)| n.unwrap()).collect();
    assert_eq!(
        names,
        vec![
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
        ]
    );
    assert_eq!(sse_json(&r.body)[5]["delta"], "from ");
    let r = responses(&mock, "cut", rs_body(false)).await;
    assert!(!r.complete);
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());

    let r = responses(&mock, "junk", rs_body(true)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        r.text(),
        "event: response.created\ndata: {this is not json\n\n"
    );
    let r = responses(&mock, "junk", rs_body(false)).await;
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());

    let start = Instant::now();
    let r = responses(&mock, "slow", rs_body(false)).await;
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_eq!(r.json()["output"][0]["content"][0]["text"], DEFAULT_REPLY);

    // A malformed body is refused in OpenAI's shape and recorded.
    let mut conn = Conn::open(mock.addr()).await;
    let r = conn.request("POST", "/v1/responses", &[], "{nope").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("x-request-id"), Some("req_mock_8"));
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 8);
    assert!(reqs.iter().all(|r| r.path == "/v1/responses"));
    assert_eq!(reqs[7].body, json!("{nope"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(mock.cancelled_streams(), 0);
}
