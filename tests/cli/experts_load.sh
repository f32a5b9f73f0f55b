#!/usr/bin/env bash
# experts_load.sh — GET /v1/experts/load of the single-process server, end to
# end: SmolLM2 (XDS_TEST_MODEL) upcycled to 4 experts, top-2, served on a free
# loopback port; the counters start at zero, and after a greedy completion
# every MoE layer's counts sum to top-k x the tokens the engine fed (prompt +
# completion - 1, from the response's usage); the "load" array is a load file
# `xds eplb-plan` accepts; POST is 405; the dense model answers 404.
# Usage: bash tests/cli/experts_load.sh path/to/xds
set -u
. "$(dirname "$0")/../skip.sh"
XDS=${1:?usage: experts_load.sh path/to/xds}
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }
if [ -z "${XDS_TEST_MODEL:-}" ]; then
  skip_input "expert load endpoint: XDS_TEST_MODEL not set" || fail=$((fail + 1))
  echo "$pass passed, $fail failed"
  [ "$fail" -eq 0 ]; exit
fi
T=$(mktemp -d /tmp/xds_experts_load_XXXXXX)
SRV=
cleanup() { [ -n "$SRV" ] && kill -9 "$SRV" 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start() { # start MODEL: sets SRV, PORT; 0 when /health answers
  PORT=$(free_port)
  "$XDS" serve -m "$1" --port "$PORT" -t 2 >"$T/log" 2>&1 &
  SRV=$!
  for _ in $(seq 1 600); do
    kill -0 "$SRV" 2>/dev/null || break
    python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=1).status == 200 else 1)" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "xds serve did not come up: $(cat "$T/log")" >&2
  return 1
}
stop() { kill "$SRV" 2>/dev/null; wait "$SRV" 2>/dev/null; SRV=; }
# http METHOD PATH [BODY] -> prints "STATUS\tBODY"
http() {
  python3 - "$PORT" "$@" <<'EOF'
import sys, urllib.request, urllib.error
port, method, path = sys.argv[1], sys.argv[2], sys.argv[3]
body = sys.argv[4].encode() if len(sys.argv) > 4 else None
req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                             headers={"Content-Type": "application/json"})
try:
    r = urllib.request.urlopen(req, timeout=120)
    print(f"{r.status}\t{r.read().decode()}")
except urllib.error.HTTPError as e:
    print(f"{e.code}\t{e.read().decode()}")
EOF
}

if ! "$XDS" upcycle -m "$XDS_TEST_MODEL" -o "$T/moe.gguf" -E 4 -k 2 --perturb 0.5 >"$T/out" 2>&1; then
  bad "upcycle: $(cat "$T/out")"
  echo "$pass passed, $fail failed"
  exit 1
fi
if start "$T/moe.gguf"; then
  r=$(http GET /v1/experts/load)
  printf '%s' "$r" | python3 -c '
import json, sys
st, body = sys.stdin.read().split("\t", 1)
j = json.loads(body)
assert st == "200", st
assert j["experts"] == 4 and j["top_k"] == 2, j
assert j["layers"] == list(range(len(j["layers"]))) and len(j["layers"]) > 1, j["layers"]
assert all(len(r) == 4 and sum(r) == 0 for r in j["load"]), "not zero before any request"
' && ok || bad "GET /v1/experts/load before a request: $r"
  c=$(http POST /v1/completions '{"model":"moe","prompt":"The capital of France is","max_tokens":8,"temperature":0}')
  r=$(http GET /v1/experts/load)
  printf '%s\n%s' "$c" "$r" | python3 -c '
import json, sys
c, r = sys.stdin.read().split("\n", 1)
cs, cb = c.split("\t", 1); rs, rb = r.split("\t", 1)
assert cs == "200" and rs == "200", (cs, rs)
u = json.loads(cb)["usage"]
fed = u["prompt_tokens"] + u["completion_tokens"] - 1
j = json.loads(rb)
sums = [sum(row) for row in j["load"]]
assert all(s == 2 * fed for s in sums), (sums, fed)
json.dump(j["load"], open(sys.argv[1], "w"))
print("ok", fed, "tokens fed;", len(sums), "layers, e.g. layer 0:", j["load"][0])
' "$T/load.json" && ok || bad "counts after a completion: $c / $r"
  "$XDS" eplb-plan --load "$T/load.json" --workers 2 --slots 1 >"$T/plan" 2>&1 && grep -q "^  after " "$T/plan" \
    && ok || bad "eplb-plan on the served load: $(cat "$T/plan")"
  r=$(http POST /v1/experts/load '{}')
  [ "${r%%$'\t'*}" = 405 ] && ok || bad "POST /v1/experts/load: $r"
  stop
else
  bad "serve the upcycled model"
fi
if start "$XDS_TEST_MODEL"; then
  r=$(http GET /v1/experts/load)
  [ "${r%%$'\t'*}" = 404 ] && printf '%s' "$r" | grep -q "no routed experts" && ok || bad "dense model: $r"
  stop
else
  bad "serve the dense model"
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
