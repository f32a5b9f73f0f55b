#!/usr/bin/env bash
# serve.sh — end-to-end test of `xds serve` with the official `openai` Python
# client: start the server on a free loopback port with the real model
# (XDS_TEST_MODEL), run tests/serve/test_api.py against it, stop it with
# SIGTERM and check it exits 0. Usage: bash tests/cli/serve.sh path/to/xds
#
# The client lives in a virtual environment (XDS_TEST_VENV, default
# ~/.cache/xds/venv-test), created with `pip install openai` when missing.
# Prints "N passed, N failed" last; exit status 1 on any failure.
set -uo pipefail
. "$(dirname "$0")/../skip.sh"
XDS="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
cd "$(dirname "$0")/../.."

passed=0
failed=0

# xds bench-serve against stand-ins for other servers (close-delimited SSE
# without usage; chunked SSE cut mid-line, CRLF, usage chunk): exact counts.
for mode in close chunked; do
  pf="$(mktemp /tmp/xds-mock-port.XXXXXX)"; : >"$pf"
  python3 tests/serve/mock_sse_server.py "$mode" "$pf" & MOCK=$!
  for _ in $(seq 1 100); do [ -s "$pf" ] && break; sleep 0.05; done
  out=$("$XDS" bench-serve --url "http://127.0.0.1:$(cat "$pf")/v1" --concurrency 3 --num-requests 6 \
        --prompt-len 10 --output-len 7 --json 2>&1)
  kill "$MOCK" 2>/dev/null; wait "$MOCK" 2>/dev/null; rm -f "$pf"
  if echo "$out" | python3 -c '
import json, sys
j = json.loads(sys.stdin.read())
want_in = 60 if sys.argv[1] == "chunked" else 0
sys.exit(0 if (j["completed"], j["errors"], j["total_output_tokens"], j["total_input_tokens"], j["model"]) ==
         (6, 0, 42, want_in, "mock-model") else 1)' "$mode"; then
    passed=$((passed + 1)); echo "ok   bench-serve vs mock server ($mode)"
  else
    failed=$((failed + 1)); echo "FAIL bench-serve vs mock server ($mode): $out"
  fi
done

if [ -z "${XDS_TEST_MODEL:-}" ]; then
  skip_input "live server tests: XDS_TEST_MODEL is not set (scripts/test.sh sets it)" || failed=$((failed + 1))
  echo "$passed passed, $failed failed"
  [ "$failed" = 0 ]; exit
fi

VENV="${XDS_TEST_VENV:-$HOME/.cache/xds/venv-test}"
if ! "$VENV/bin/python" -c "import openai" 2>/dev/null; then
  echo "creating $VENV with the openai client"
  python3 -m venv "$VENV" && "$VENV/bin/pip" install -q openai || {
    echo "error: cannot create the test venv with openai (pip install openai failed)"
    echo "0 passed, 1 failed"
    exit 1
  }
fi
PY="$VENV/bin/python"

PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
NAME=smol-test
LOG="$(mktemp /tmp/xds-serve-test.XXXXXX)"
"$XDS" serve -m "$XDS_TEST_MODEL" --port "$PORT" -t 2 --read-timeout 3 --served-model-name "$NAME" >"$LOG" 2>&1 &
SRV=$!
cleanup() { kill -9 "$SRV" 2>/dev/null; rm -f "$LOG"; }
trap cleanup EXIT

# wait for /health (model load takes a moment; much longer under sanitizers)
up=0
for _ in $(seq 1 600); do
  if ! kill -0 "$SRV" 2>/dev/null; then break; fi
  if "$PY" -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=1).status == 200 else 1)" 2>/dev/null; then
    up=1; break
  fi
  sleep 0.2
done
if [ "$up" != 1 ]; then
  echo "error: xds serve did not come up on port $PORT:"; cat "$LOG"
  echo "0 passed, 1 failed"
  exit 1
fi

XDS_SERVE_URL="http://127.0.0.1:$PORT" XDS_SERVE_MODEL="$NAME" XDS_BIN="$XDS" \
  "$PY" tests/serve/test_api.py | tee "$LOG.py"
summary=$(tail -1 "$LOG.py")
rm -f "$LOG.py"
p=$(echo "$summary" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed\(, [0-9]* skipped\)\{0,1\}$/\1/p')
f=$(echo "$summary" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed\(, [0-9]* skipped\)\{0,1\}$/\2/p')
if [ -z "$p" ]; then p=0; f=1; echo "FAIL python tests did not finish"; fi
passed=$((passed + p)); failed=$((failed + f))

# xds bench-serve against the same server: every request completes and, as
# the server honors ignore_eos, output lengths are exact (4 x 8 tokens)
bench=$("$XDS" bench-serve --url "http://127.0.0.1:$PORT" --concurrency 2 --num-requests 4 --prompt-len 16 \
  --output-len 8 --seed 7 --json 2>&1)
if echo "$bench" | "$PY" -c '
import json, sys
j = json.loads(sys.stdin.read())
ok = (j["completed"] == 4 and j["errors"] == 0 and j["total_output_tokens"] == 32 and j["total_input_tokens"] > 0
      and j["output_throughput"] > 0 and j["ttft_ms"]["p50"] > 0 and j["tpot_ms"]["p99"] >= j["tpot_ms"]["p50"] > 0
      and j["model"] == sys.argv[1])
sys.exit(0 if ok else 1)' "$NAME"; then
  passed=$((passed + 1)); echo "ok   bench-serve (4 requests, exact output lengths)"
else
  failed=$((failed + 1)); echo "FAIL bench-serve: $bench"
fi

# bad invocations: a clear one-line error and a non-zero exit, no crash
check_err() { # expected-rc pattern args...
  local want="$1" pat="$2"; shift 2
  out=$(timeout 60 "$XDS" serve "$@" 2>&1); rc=$? # bounded: one that serves after all must not hang the run
  if [ "$rc" = "$want" ] && echo "$out" | grep -q "^xds serve: error: .*$pat"; then
    passed=$((passed + 1)); echo "ok   serve $* -> $rc"
  else
    failed=$((failed + 1)); echo "FAIL serve $*: rc $rc (want $want), output: $out"
  fi
}
check_err 1 "No such file" -m /nonexistent/model.gguf
check_err 2 "required"
check_err 2 "--port" -m "$XDS_TEST_MODEL" --port 70000
check_err 1 "Address already in use" -m "$XDS_TEST_MODEL" --port "$PORT"

# graceful shutdown of the main server: SIGTERM → exit 0
kill -TERM "$SRV"
rc=124
for _ in $(seq 1 300); do
  if ! kill -0 "$SRV" 2>/dev/null; then wait "$SRV"; rc=$?; break; fi
  sleep 0.1
done
if [ "$rc" = 0 ]; then
  passed=$((passed + 1)); echo "ok   main server exits 0 on SIGTERM"
else
  failed=$((failed + 1)); echo "FAIL main server exit status $rc after SIGTERM"; tail -20 "$LOG"
fi
if [ "$failed" != 0 ]; then echo "--- server log (tail)"; tail -30 "$LOG"; fi
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
