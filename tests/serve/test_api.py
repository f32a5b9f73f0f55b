#!/usr/bin/env python3
"""test_api.py — the OpenAI-compatible API of a live `xds serve`, driven by the
official `openai` Python client (and raw sockets / http.client where the
client would refuse to send the bad input).

Run by tests/cli/serve.sh, which starts the main server and passes:
  XDS_SERVE_URL    http://127.0.0.1:PORT of the main server (started with --read-timeout 3)
  XDS_SERVE_MODEL  its served model name
  XDS_BIN, XDS_TEST_MODEL  to start the short extra servers (--api-key / 429, SIGTERM)
Prints one line per test and a final "N passed, N failed" (", N skipped" after it if
any test skipped: SkipTest, left out of this build by design; MissingInput, an input
absent, which fails under CI=true); exit status 1 on any failure.
"""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

import openai

URL = os.environ["XDS_SERVE_URL"]
MODEL = os.environ["XDS_SERVE_MODEL"]
HOST, PORT = re.match(r"http://([^:/]+):(\d+)", URL).groups()
PORT = int(PORT)
XDS_BIN = os.environ.get("XDS_BIN")
XDS_MODEL = os.environ.get("XDS_TEST_MODEL")
# Under ASan/UBSan the model runs ~10x slower: the tests that mostly exercise
# the engine (seeds, batch invariance) run only in the release build.
SANITIZED = os.environ.get("XDS_SANITIZED") == "1"

client = openai.OpenAI(base_url=URL + "/v1", api_key="unused", max_retries=0, timeout=120)

# The chat question and its expected greedy answer come from the transformers
# oracle fixture (tools/oracle.py): a prompt whose greedy choices keep a wide
# top-1/top-2 margin, so 8-bit activation quantization cannot flip them
# (world-knowledge prompts such as "capital of France?" are near ties for a
# 135M Q4_1 model and flip on rounding).
_FIXTURE = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                       "..", "data", "oracle", "smollm2.json")))
_CHAT_CASE = next(c for c in _FIXTURE["cases"] if c.get("chat"))
CHAT_Q = [{"role": "user", "content": _CHAT_CASE["chat"][0]}]
CHAT_EXPECT = _CHAT_CASE["text_32"]
PROMPT = "The three primary colors are"

# ---------------------------------------------------------------------------
# helpers


def raw(method, path, body=None, headers=None, port=None, timeout=60):
    """One HTTP request with http.client; returns (status, headers dict, body bytes)."""
    c = http.client.HTTPConnection(HOST, port or PORT, timeout=timeout)
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    if isinstance(body, str):
        body = body.encode()
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    hd = {k.lower(): v for k, v in r.getheaders()}
    c.close()
    return r.status, hd, data


def check_error_body(data, status, want_status):
    assert status == want_status, f"status {status} (want {want_status}): {data[:300]!r}"
    j = json.loads(data)
    e = j["error"]
    for k in ("message", "type", "param", "code"):
        assert k in e, f"error body lacks {k}: {j}"
    assert isinstance(e["message"], str) and e["message"], j
    return e


def metrics():
    return metrics_at(PORT)


def metrics_at(port):
    st, _, data = raw("GET", "/metrics", port=port)
    assert st == 200
    out = {}
    for line in data.decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def chat(**kw):
    args = dict(model=MODEL, messages=CHAT_Q, max_tokens=4 if SANITIZED else 12, temperature=0)
    args.update(kw)
    return client.chat.completions.create(**args)


def completion(**kw):
    args = dict(model=MODEL, prompt=PROMPT, max_tokens=4 if SANITIZED else 12, temperature=0)
    args.update(kw)
    return client.completions.create(**args)


def answers_like_transformers(text):
    """The greedy answer is a prefix of transformers' greedy answer to the same
    conversation (32 tokens recorded; we ask for fewer)."""
    return bool(text.strip()) and CHAT_EXPECT.startswith(text)


# ---------------------------------------------------------------------------
# tests against the main server


def test_health_and_models():
    st, _, data = raw("GET", "/health")
    assert st == 200 and json.loads(data) == {"status": "ok"}, (st, data)
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids == [MODEL], ids


def test_chat():
    r = chat()
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == MODEL
    assert isinstance(r.created, int) and abs(r.created - time.time()) < 600
    c = r.choices[0]
    assert c.index == 0 and c.message.role == "assistant"
    assert isinstance(c.message.content, str) and c.message.content.strip(), c.message
    assert answers_like_transformers(c.message.content), (c.message.content, CHAT_EXPECT)
    assert c.finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 5 and 0 < u.completion_tokens <= 12 and u.total_tokens == u.prompt_tokens + u.completion_tokens
    # system + multi-part content goes through the template too
    if SANITIZED:
        return

    def with_system(sys_text):
        return chat(messages=[{"role": "system", "content": sys_text},
                              {"role": "user", "content": [{"type": "text", "text": "What is the capital"},
                                                           {"type": "text", "text": "of France?"}]}])
    a, b = with_system("Be brief."), with_system("Be brief. Be brief. Be brief.")
    assert b.usage.prompt_tokens > a.usage.prompt_tokens  # the system text is in the prompt
    assert a.choices[0].message.content and b.choices[0].message.content


def test_completion():
    k = 3 if SANITIZED else 8
    r = completion(max_tokens=k, extra_body={"ignore_eos": True})
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == MODEL
    c = r.choices[0]
    assert isinstance(c.text, str) and c.text
    assert c.finish_reason == "length" and r.usage.completion_tokens == k, (c.finish_reason, r.usage)
    # a list of one string and a token-id prompt are accepted
    r2 = completion(prompt=[PROMPT], max_tokens=k, extra_body={"ignore_eos": True})
    assert r2.choices[0].text == c.text
    st, _, data = raw("POST", "/v1/completions", json.dumps(
        {"model": MODEL, "prompt": [1, 2, 3, 4], "max_tokens": 2, "temperature": 0}))
    assert st == 200, data
    assert json.loads(data)["usage"]["prompt_tokens"] == 4


def test_logit_bias():
    """logit_bias is applied (not ignored): +100 on a token makes greedy output
    that token every step, a -100 removes it again; a token id outside the
    vocabulary and malformed maps are 400s naming logit_bias."""
    k = 3 if SANITIZED else 6
    base = completion(max_tokens=k, extra_body={"ignore_eos": True})
    a, b = 1000, 1001  # two ordinary tokens of the 49152-token vocabulary

    def text_of(tok):  # a token's text: the completion of a token-id prompt, forced to it
        st, _, d = raw("POST", "/v1/completions", json.dumps(
            {"model": MODEL, "prompt": [tok], "max_tokens": 1, "temperature": 0, "logit_bias": {str(tok): 100}}))
        assert st == 200, d
        return json.loads(d)["choices"][0]["text"]
    ta, tb = text_of(a), text_of(b)
    assert ta and tb and ta != tb, (ta, tb)
    r = completion(max_tokens=k, logit_bias={str(a): 100}, extra_body={"ignore_eos": True})
    assert r.choices[0].text == ta * k and r.choices[0].text != base.choices[0].text, (r.choices[0].text, ta)
    r = completion(max_tokens=k, logit_bias={str(a): 100, str(b): 60}, extra_body={"ignore_eos": True})
    assert r.choices[0].text == ta * k, r.choices[0].text
    r = completion(max_tokens=k, logit_bias={str(a): -100, str(b): 60}, extra_body={"ignore_eos": True})
    assert r.choices[0].text == tb * k, r.choices[0].text
    for bad in ({"logit_bias": "x"}, {"logit_bias": {"abc": 1}}, {"logit_bias": {"5": 1000}},
                {"logit_bias": {"99999999": 1}}):
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 2}
        body.update(bad)
        st, _, d = raw("POST", "/v1/completions", json.dumps(body))
        e = check_error_body(d, st, 400)
        assert e["param"] == "logit_bias", (bad, e)


def test_tokenize_and_models_id():
    """POST /tokenize gives the ids a completion / chat request feeds the model
    (counts equal the usage's prompt_tokens), /detokenize turns them back into
    the text, GET /v1/models/{id} answers the served model and 404s others."""
    st, _, d = raw("POST", "/tokenize", json.dumps({"model": MODEL, "prompt": PROMPT}))
    assert st == 200, d
    t = json.loads(d)
    assert t["count"] == len(t["tokens"]) > 0 and all(isinstance(x, int) for x in t["tokens"]), t
    assert t["max_model_len"] > t["count"], t
    assert completion(max_tokens=1).usage.prompt_tokens == t["count"]
    st, _, d = raw("POST", "/detokenize", json.dumps({"model": MODEL, "tokens": t["tokens"]}))
    assert st == 200 and json.loads(d)["prompt"] == PROMPT, d
    st, _, d = raw("POST", "/tokenize", json.dumps({"model": MODEL, "messages": CHAT_Q}))
    assert st == 200, d
    assert chat(max_tokens=1).usage.prompt_tokens == json.loads(d)["count"] > t["count"], d
    for path, body, param in (("/tokenize", {}, "prompt"), ("/tokenize", {"prompt": 5}, "prompt"),
                              ("/detokenize", {"tokens": "x"}, "tokens"), ("/detokenize", {"tokens": [-1]}, "tokens"),
                              ("/detokenize", {"tokens": [10 ** 7]}, "tokens")):
        st, _, d = raw("POST", path, json.dumps(body))
        e = check_error_body(d, st, 400)
        assert e["param"] == param, (path, body, e)
    st, _, d = raw("POST", "/tokenize", "[1")
    check_error_body(d, st, 400)
    st, hd, d = raw("GET", "/tokenize")
    check_error_body(d, st, 405)
    assert hd.get("allow") == "POST", hd
    m = client.models.retrieve(MODEL)
    assert m.id == MODEL and m.object == "model", m
    st, _, d = raw("GET", "/v1/models/no-such-model")
    e = check_error_body(d, st, 404)
    assert e["code"] == "model_not_found", e


def test_get_keep_alive():
    """GET responses keep the connection open (HTTP/1.1): three GETs and a POST
    on one connection, no Connection: close (it used to close after each GET)."""
    c = http.client.HTTPConnection(HOST, PORT, timeout=30)
    socks = []
    for path in ("/v1/models", "/health", "/v1/models/" + MODEL):
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        assert r.status == 200 and (r.getheader("Connection") or "").lower() != "close", (path, r.getheaders())
        socks.append(c.sock)
    c.request("POST", "/v1/completions", body=json.dumps({"model": MODEL, "prompt": PROMPT, "max_tokens": 1}),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    r.read()
    socks.append(c.sock)
    c.close()
    assert r.status == 200 and all(x is socks[0] and x is not None for x in socks), socks


def _raw_socket(data, port=None):
    """Send raw bytes on a new connection; return everything read until close or 5 s."""
    s = socket.create_connection((HOST, port or PORT), timeout=5)
    s.sendall(data)
    out = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
    except socket.timeout:
        pass
    s.close()
    return out


def test_request_smuggling():
    """Ambiguous body framing (RFC 9112 6.3) is refused: two Content-Length
    headers, or Content-Length with Transfer-Encoding — a 400 with the OpenAI
    error body, and the connection closed (the body's end is unknown)."""
    body = json.dumps({"model": MODEL, "prompt": PROMPT, "max_tokens": 1}).encode()
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    cases = [head + b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(body), len(body)) + body,
             head + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(body)
             + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"]
    for raw_req in cases:
        out = _raw_socket(raw_req)
        head_b, _, data = out.partition(b"\r\n\r\n")
        status = int(head_b.split(b" ")[1])
        e = check_error_body(data[:data.rfind(b"}") + 1].decode(), status, 400)
        assert "Content-Length" in e["message"], e
        assert b"connection: close" in head_b.lower(), head_b
    # the same body with one Content-Length is served
    out = _raw_socket(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    assert out.startswith(b"HTTP/1.1 200"), out[:200]


def _collect_chat_stream(**kw):
    chunks = list(chat(stream=True, stream_options={"include_usage": True}, **kw))
    return chunks


def test_stream_equals_nonstream_chat():
    n = 6 if SANITIZED else 20
    ref = chat(max_tokens=n)
    chunks = _collect_chat_stream(max_tokens=n)
    assert chunks, "no chunks"
    for ch in chunks:
        assert ch.object == "chat.completion.chunk" and ch.id == chunks[0].id and ch.model == MODEL
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join((ch.choices[0].delta.content or "") for ch in chunks if ch.choices)
    assert text == ref.choices[0].message.content, (text, ref.choices[0].message.content)
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finals == [ref.choices[0].finish_reason], finals
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.prompt_tokens == ref.usage.prompt_tokens
    assert last.usage.completion_tokens == ref.usage.completion_tokens
    assert all(ch.usage is None for ch in chunks[:-1])


def test_stream_equals_nonstream_completion():
    if SANITIZED:
        raise SkipTest("the chat variant covers streaming under sanitizers")
    ref = completion(max_tokens=16)
    chunks = list(completion(max_tokens=16, stream=True))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == ref.choices[0].text, (text, ref.choices[0].text)
    assert chunks[-1].choices[0].finish_reason == ref.choices[0].finish_reason
    assert all(ch.usage is None for ch in chunks)  # no include_usage: no usage chunk


def test_raw_sse_framing():
    """The bytes on the wire: data: lines, blank-line separated, ending with [DONE]."""
    st, hd, data = raw("POST", "/v1/completions", json.dumps(
        {"model": MODEL, "prompt": PROMPT, "max_tokens": 4, "temperature": 0, "stream": True}))
    assert st == 200 and hd["content-type"].startswith("text/event-stream"), hd
    events = data.decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]", events[-3:]
    for ev in events[:-2]:
        assert ev.startswith("data: ") and "\n" not in ev, ev
        json.loads(ev[6:])


def test_stop_sequences():
    if SANITIZED:
        raise SkipTest("engine-heavy; release build only")
    ref = completion(max_tokens=24, extra_body={"ignore_eos": True}).choices[0].text
    words = re.findall(r"[A-Za-z]{3,}", ref)
    assert len(words) >= 3, ref
    stop = words[len(words) // 2]
    cut = ref[: ref.index(stop)]
    r = completion(max_tokens=24, stop=[stop, "zzzzqqq"])
    assert r.choices[0].finish_reason == "stop", r.choices[0]
    assert r.choices[0].text == cut, (r.choices[0].text, cut, stop)
    # streaming stops at the same place and never shows the stop string
    chunks = list(completion(max_tokens=24, stop=stop, stream=True))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == cut and stop not in text, (text, cut)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_usage_and_length():
    for n in ((1,) if SANITIZED else (1, 5)):
        r = completion(max_tokens=n, extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == n and r.choices[0].finish_reason == "length", r
    a = completion(max_tokens=3)
    b = completion(prompt=PROMPT + " and", max_tokens=3)
    assert b.usage.prompt_tokens == a.usage.prompt_tokens + 1, (a.usage, b.usage)
    r = chat(max_completion_tokens=2, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 2 and r.choices[0].finish_reason == "length"


def test_seed_reproducible():
    if SANITIZED:
        raise SkipTest("engine-heavy; release build only")
    kw = dict(prompt="Write a short poem about the sea:", max_tokens=16, temperature=1.0,
              extra_body={"ignore_eos": True})
    a = completion(seed=1234, **kw).choices[0].text
    b = completion(seed=1234, **kw).choices[0].text
    assert a == b, (a, b)
    others = {completion(seed=s, **kw).choices[0].text for s in (1, 2, 3)}
    assert others != {a}, "different seeds all gave the seed-1234 text"


def test_concurrent_greedy_matches_alone():
    if SANITIZED:
        raise SkipTest("engine-heavy; release build only")
    prompts = ["The sun is", "My favourite food is", "In the year 1900", "Water boils at"]
    alone = [completion(prompt=p, max_tokens=10, extra_body={"ignore_eos": True}).choices[0].text for p in prompts]
    out = [None] * len(prompts)

    def run(i):
        out[i] = completion(prompt=prompts[i], max_tokens=10, extra_body={"ignore_eos": True}).choices[0].text

    ths = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    assert out == alone, (out, alone)


def test_bad_inputs():
    P = "/v1/chat/completions"
    msgs = [{"role": "user", "content": "hi"}]
    # malformed JSON
    st, _, d = raw("POST", P, '{"model": "x", "messages": [')
    check_error_body(d, st, 400)
    # wrong types
    for extra in ({"max_tokens": "10"}, {"temperature": "hot"}, {"stream": "yes"}, {"stop": 5},
                  {"messages": "hello"}, {"top_p": 7}, {"n": 2}):
        body = {"model": MODEL, "messages": msgs}
        body.update(extra)
        st, _, d = raw("POST", P, json.dumps(body))
        e = check_error_body(d, st, 400)
        assert e["type"] == "invalid_request_error", e
        assert e["param"] == next(iter(extra)), (extra, e)
    # empty messages (through the official client)
    try:
        client.chat.completions.create(model=MODEL, messages=[])
        raise AssertionError("empty messages accepted")
    except openai.BadRequestError as ex:
        assert ex.status_code == 400 and ex.body and ex.body.get("param") == "messages", ex.body
    # unknown model
    try:
        chat(model="no-such-model")
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError as ex:
        assert ex.status_code == 404 and ex.body.get("code") == "model_not_found", ex.body
    # max_tokens beyond the context
    try:
        chat(max_tokens=10_000_000)
        raise AssertionError("max_tokens beyond context accepted")
    except openai.BadRequestError as ex:
        assert ex.body.get("param") == "max_tokens", ex.body
    # a prompt longer than the context
    try:
        completion(prompt="hello " * 20000, max_tokens=1)
        raise AssertionError("overlong prompt accepted")
    except openai.BadRequestError as ex:
        assert ex.body.get("code") == "context_length_exceeded", ex.body
    # invalid UTF-8
    st, _, d = raw("POST", P, b'{"model":"' + MODEL.encode() + b'","messages":[{"role":"user","content":"\xff\xfe"}]}')
    check_error_body(d, st, 400)
    # huge body: a client announcing 9 MiB (Expect: 100-continue) gets 413 before sending it
    s = socket.create_connection((HOST, PORT), timeout=30)
    s.sendall((f"POST {P} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {9 << 20}\r\nExpect: 100-continue\r\n\r\n").encode())
    resp = b""
    while b"\r\n\r\n" not in resp:
        chunk = s.recv(65536)
        if not chunk:
            break
        resp += chunk
    head, _, rest = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), resp[:200]
    clen = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(rest) < clen:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    check_error_body(rest, 413, 413)
    s.close()
    # the same without Expect: the body is pushed anyway; the server answers 413 or drops us, and lives on
    s = socket.create_connection((HOST, PORT), timeout=30)
    try:
        s.sendall((f"POST {P} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {9 << 20}\r\n\r\n").encode())
        s.sendall(b"x" * (9 << 20))
        got = s.recv(4096)
        assert got == b"" or got.startswith(b"HTTP/1.1 413"), got[:100]
    except (BrokenPipeError, ConnectionResetError):
        pass
    s.close()
    # huge body without Content-Length (chunked upload) → 413 after reading
    def gen():
        for _ in range(10):
            yield b"y" * (1 << 20)
    c = http.client.HTTPConnection(HOST, PORT, timeout=60)
    c.request("POST", P, body=gen(), headers={"Content-Type": "application/json"}, encode_chunked=True)
    r = c.getresponse()
    check_error_body(r.read(), r.status, 413)
    c.close()
    # headers beyond the limit (64 KiB) are refused, not buffered
    st, _, d = raw("GET", "/health", headers={"X-Big": "a" * (100 << 10)})
    assert st in (413, 431), st
    # unknown route, wrong method
    st, _, d = raw("GET", "/v1/nothing")
    check_error_body(d, st, 404)
    st, hd, d = raw("GET", P)
    check_error_body(d, st, 405)
    assert hd.get("allow") == "POST", hd
    st, _, d = raw("DELETE", "/health")
    check_error_body(d, st, 405)
    # still healthy and serving
    assert raw("GET", "/health")[0] == 200
    r = chat()
    assert r.choices[0].message.content and r.usage.completion_tokens > 0


def test_slow_client():
    """A client sending one byte a second is cut off by --read-timeout (3 s)
    while everyone else is served."""
    s = socket.create_connection((HOST, PORT), timeout=30)
    req = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
           f"Content-Length: 200\r\n\r\n").encode()
    t0 = time.time()
    closed = {}
    stop = threading.Event()

    def dribble():
        for i in range(len(req)):
            if stop.is_set():
                return
            try:
                s.send(req[i:i + 1])
            except OSError:
                return
            time.sleep(1.0)

    def watch():  # when does the server hang up?
        try:
            data = s.recv(4096)
        except OSError as ex:
            data = repr(ex).encode()
        closed["t"], closed["data"] = time.time() - t0, data

    ths = [threading.Thread(target=dribble), threading.Thread(target=watch)]
    for t in ths:
        t.start()
    try:
        time.sleep(1.5)
        # others are served meanwhile
        assert raw("GET", "/health", timeout=10)[0] == 200
        r = chat(max_tokens=4)
        assert r.choices[0].message.content
        ths[1].join(15)
        assert "t" in closed, "slow connection still open after 15 s"
        assert closed["t"] < 8, f"closed only after {closed['t']:.1f}s"
        assert not closed["data"].startswith(b"HTTP/1.1 200"), closed["data"]
    finally:
        stop.set()
        s.close()
        for t in ths:
            t.join()


def test_client_disconnect_cancels():
    before = metrics()
    stream = client.completions.create(model=MODEL, prompt="Tell me a very long story.", max_tokens=1500,
                                       temperature=0, stream=True, extra_body={"ignore_eos": True})
    n = 0
    for ch in stream:
        n += 1
        if n >= 3:
            break
    stream.close()  # drop the connection mid-stream
    deadline = time.time() + 10
    while time.time() < deadline:
        m = metrics()
        if m.get("xds_num_requests_running", 1) == 0 and m.get('xds_request_finished_total{finished_reason="abort"}', 0) > \
                before.get('xds_request_finished_total{finished_reason="abort"}', 0):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"request not cancelled: {m}")
    gen = m["xds_generation_tokens_total"] - before.get("xds_generation_tokens_total", 0)
    assert gen < 1500, gen


def test_metrics():
    m = metrics()
    assert m.get('xds_http_requests_total{endpoint="/v1/chat/completions",code="200"}', 0) > 0, m
    assert m.get('xds_http_requests_total{endpoint="/v1/chat/completions",code="400"}', 0) > 0
    assert m.get('xds_http_requests_total{endpoint="/v1/chat/completions",code="413"}', 0) > 0
    assert m["xds_prompt_tokens_total"] > 0 and m["xds_generation_tokens_total"] > 0
    for h in ("xds_time_to_first_token_seconds", "xds_time_per_output_token_seconds", "xds_e2e_request_latency_seconds"):
        assert m[h + "_count"] > 0 and m[h + '_bucket{le="+Inf"}'] == m[h + "_count"], h
    for g in ("xds_num_requests_waiting", "xds_num_requests_running", "xds_kv_blocks_used", "xds_kv_blocks_free",
              "xds_prefix_cache_hit_rate"):
        assert g in m, g
    assert m["xds_kv_blocks_free"] > 0
    assert 0 <= m["xds_prefix_cache_hit_rate"] <= 1


def test_still_healthy():
    assert raw("GET", "/health")[0] == 200
    r = chat()
    assert r.choices[0].message.content and r.usage.completion_tokens > 0


# ---------------------------------------------------------------------------
# extra short-lived servers


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start_server(*args, env=None):
    port = free_port()
    p = subprocess.Popen([XDS_BIN, "serve", "-m", XDS_MODEL, "--port", str(port), "-t", "2",
                          "--served-model-name", MODEL, *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, **(env or {})))
    deadline = time.time() + 60
    while time.time() < deadline:
        if p.poll() is not None:
            raise AssertionError(f"server exited {p.returncode}: {p.stderr.read()}")
        try:
            if raw("GET", "/health", port=port, timeout=2)[0] == 200:
                return p, port
        except OSError:
            time.sleep(0.2)
    p.kill()
    raise AssertionError("server did not come up")


def test_api_key_and_busy():
    if not XDS_BIN or not XDS_MODEL:
        raise MissingInput("XDS_BIN / XDS_TEST_MODEL not set")
    p, port = start_server("--api-key", "sekret", "--max-batch", "1", "--max-queue", "1")
    try:
        base = f"http://127.0.0.1:{port}/v1"
        for key in ("wrong", ""):
            c = openai.OpenAI(base_url=base, api_key=key or "x", max_retries=0,
                              default_headers={} if key else {"Authorization": ""})
            try:
                c.chat.completions.create(model=MODEL, messages=CHAT_Q, max_tokens=2)
                raise AssertionError("accepted a bad key")
            except openai.AuthenticationError as ex:
                assert ex.status_code == 401
        st, hd, d = raw("GET", "/v1/models", port=port)
        check_error_body(d, st, 401)
        assert raw("GET", "/health", port=port)[0] == 200  # health needs no key
        good = openai.OpenAI(base_url=base, api_key="sekret", max_retries=0)
        assert good.models.list().data[0].id == MODEL
        # 429: one running (max-batch 1), one waiting (max-queue 1), the next is refused
        long_kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=400, temperature=0,
                       extra_body={"ignore_eos": True})
        first = good.completions.create(stream=True, **long_kw)
        next(iter(first))  # it is running
        res = {}

        def second():
            try:
                res["r"] = good.completions.create(**dict(long_kw, max_tokens=2))
            except Exception as ex:  # noqa: BLE001
                res["e"] = ex

        th = threading.Thread(target=second)
        th.start()
        deadline = time.time() + 30  # until the second one waits in the queue
        while time.time() < deadline and metrics_at(port).get("xds_num_requests_waiting") != 1:
            time.sleep(0.05)
        st, hd, d = raw("POST", "/v1/completions", json.dumps(dict(
            model=MODEL, prompt="hi", max_tokens=2)), headers={"Authorization": "Bearer sekret"}, port=port)
        e = check_error_body(d, st, 429)
        assert hd.get("retry-after"), hd
        assert e["type"] == "rate_limit_error", e
        first.close()
        th.join(60)
        assert "r" in res, res
    finally:
        p.terminate()
        p.wait(30)


def test_sigterm_finishes_inflight():
    if not XDS_BIN or not XDS_MODEL:
        raise MissingInput("XDS_BIN / XDS_TEST_MODEL not set")
    p, port = start_server()
    res = {}
    N_TOK = 12 if SANITIZED else 48

    def run():
        try:
            st, _, d = raw("POST", "/v1/completions", json.dumps(dict(
                model=MODEL, prompt="Once upon a time", max_tokens=N_TOK, temperature=0, ignore_eos=True)),
                port=port)
            res["st"], res["body"] = st, json.loads(d)
        except Exception as ex:  # noqa: BLE001
            res["e"] = ex

    th = threading.Thread(target=run)
    th.start()
    # wait until it is in the engine
    deadline = time.time() + 20
    while time.time() < deadline:
        st, _, d = raw("GET", "/metrics", port=port)
        if re.search(rb"^xds_num_requests_running 1$", d, re.M):
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    th.join(60)
    rc = p.wait(60)
    assert "st" in res, res
    assert res["st"] == 200 and res["body"]["usage"]["completion_tokens"] == N_TOK, res
    assert res["body"]["choices"][0]["finish_reason"] == "length"
    assert rc == 0, (rc, p.stderr.read())
    try:
        raw("GET", "/health", port=port, timeout=2)
        raise AssertionError("still accepting after SIGTERM")
    except OSError:
        pass


def _health(port):
    st, _, d = raw("GET", "/health", port=port, timeout=10)
    return st, json.loads(d)


def _wait_health(port, want, reason_part, deadline_s=20):
    end = time.time() + deadline_s
    while True:
        st, j = _health(port)
        if st == want and reason_part in j.get("reason", ""):
            return j
        assert time.time() < end, f"/health never {want} with {reason_part!r}: {st} {j}"
        time.sleep(0.05)


def test_overload_and_stall():
    """Degrade, never lock out (issue 13): a stalled engine makes /health 503
    and it recovers, a stream waiting on it longer than --idle-timeout is not
    cut; 300 idle connections (beyond the default 256 slots) leave a new
    client a prompt 503 with Retry-After, the idle ones are closed after
    --idle-timeout, then requests succeed again."""
    if not XDS_BIN or not XDS_MODEL:
        raise SkipTest("XDS_BIN / XDS_TEST_MODEL not set")
    p, port = start_server("--idle-timeout", "2", "--stall-timeout", "1",
                           env={"XDS_TEST_STALL_ENGINE_MS": "2500"})
    socks = []
    try:
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=60)
        res = {}

        def stream():
            try:
                res["text"] = "".join(ch.choices[0].text for ch in c.completions.create(
                    model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, stream=True,
                    extra_body={"ignore_eos": True}))
            except Exception as ex:  # noqa: BLE001
                res["e"] = ex

        th = threading.Thread(target=stream)
        th.start()
        j = _wait_health(port, 503, "no progress")  # the first step sleeps 2.5 s > --stall-timeout 1
        assert j["status"] == "unavailable", j
        st, _, d = raw("GET", "/health/live", port=port, timeout=10)  # a liveness probe sees it too
        assert st == 503 and b"no progress" in d, (st, d)
        th.join(60)
        assert res.get("text"), res  # 2.5 s without a byte > --idle-timeout 2: not cut
        _wait_health(port, 200, "")
        m = metrics_at(port)
        assert m["xds_engine_stall_seconds"] == 0 and m["xds_health_ready"] == 1, m

        for _ in range(300):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=30))
        _wait_health(port, 503, "connection slots")
        assert raw("GET", "/health/live", port=port, timeout=2)[0] == 200  # full is not dead: no restart
        st, hd, d = raw("POST", "/v1/completions", json.dumps(dict(model=MODEL, prompt="hi", max_tokens=2)),
                        port=port, timeout=2)  # answered, not dropped: 2 s is a hang check
        e = check_error_body(d, st, 503)
        assert hd.get("retry-after") == "1" and e["code"] == "server_overloaded", (hd, e)
        end = time.time() + 30
        for s in socks:  # --idle-timeout 2: every idle connection is closed by the server
            s.settimeout(max(0.1, end - time.time()))
            try:
                assert s.recv(16) == b"", "data on an idle connection"
            except ConnectionResetError:
                pass
        r = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, temperature=0)
        assert r.choices[0].text and r.usage.completion_tokens == 2, r
        m = metrics_at(port)
        assert m["xds_http_connections_refused_total"] >= 1, m
        assert m['xds_http_connections_closed_total{reason="idle"}'] >= 300, m
        assert m['xds_http_requests_total{endpoint="/v1/completions",code="503"}'] >= 1, m
    finally:
        for s in socks:
            s.close()
        p.terminate()
        p.wait(30)


# ---------------------------------------------------------------------------


class SkipTest(Exception):
    """A test this build leaves out by design (e.g. under sanitizers): never a failure."""


class MissingInput(SkipTest):
    """A test that cannot run for a missing input: a failure under CI=true."""


IN_CI = os.environ.get("CI") in ("true", "1")


TESTS = [test_health_and_models, test_chat, test_completion, test_stream_equals_nonstream_chat,
         test_stream_equals_nonstream_completion, test_raw_sse_framing, test_stop_sequences,
         test_usage_and_length, test_seed_reproducible, test_logit_bias, test_tokenize_and_models_id, test_request_smuggling, test_get_keep_alive, test_concurrent_greedy_matches_alone, test_bad_inputs,
         test_slow_client, test_client_disconnect_cancels, test_metrics, test_still_healthy,
         test_api_key_and_busy, test_sigterm_finishes_inflight, test_overload_and_stall]


def main():
    only = sys.argv[1:]
    passed = failed = skipped = 0
    for t in TESTS:
        if only and t.__name__ not in only:
            continue
        t0 = time.time()
        try:
            t()
            passed += 1
            print(f"ok   {t.__name__} ({time.time() - t0:.1f}s)", flush=True)
        except MissingInput as ex:
            if IN_CI:
                failed += 1
                print(f"FAIL {t.__name__}: skip refused under CI=true: {ex}", flush=True)
            else:
                skipped += 1
                print(f"SKIP: {t.__name__}: {ex}", flush=True)
        except SkipTest as ex:
            skipped += 1
            print(f"SKIP (not in this build): {t.__name__}: {ex}", flush=True)
        except Exception:  # noqa: BLE001
            failed += 1
            print(f"FAIL {t.__name__} ({time.time() - t0:.1f}s)", flush=True)
            traceback.print_exc()
    print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
