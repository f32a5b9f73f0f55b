#!/usr/bin/env bash
# deploy_serve.sh — `xds bench-serve` against the single-process engine and
# against disaggregated MoE-attention deployments of the same model at the
# same core budget, plus the per-step breakdown the processes print at exit.
# Usage: bash bench/deploy_serve.sh path/to/xds [DENSE.gguf] [EXPERTS] [TOPK]
# (the dense model also runs as --prefill 1 and --decode-dp 2 against one process)
# Default model: SmolLM2 (scripts/fetch_model.sh) upcycled to 4 experts top-2.
# Env: CONC (4), NREQ (16), PLEN (64), OLEN (32), CORES (2: taskset 0-1).
set -uo pipefail
XDS="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
cd "$(dirname "$0")/.."
DENSE="${2:-$(bash scripts/fetch_model.sh)}"
E="${3:-4}"; K="${4:-2}"
CONC="${CONC:-4}"; NREQ="${NREQ:-16}"; PLEN="${PLEN:-64}"; OLEN="${OLEN:-32}"; CORES="${CORES:-2}"
TMP="$(mktemp -d /tmp/xds-bench-deploy.XXXXXX)"; trap 'rm -rf "$TMP"' EXIT
MOE="$TMP/moe.gguf"
"$XDS" upcycle -m "$DENSE" -o "$MOE" -E "$E" -k "$K" >/dev/null || exit 1
PIN="taskset -c 0-$((CORES - 1))"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run() { # label, serve args...
  local label="$1"; shift
  local P; P=$(port)
  for a in "$@"; do [ "${prev:-}" = "--port" ] && P="$a"; prev="$a"; done; prev=""
  $PIN "$XDS" serve -m "${RUN_MODEL:-$MOE}" --port "$P" "$@" >"$TMP/log" 2>&1 & local S=$!
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$P/health" >/dev/null && break; sleep 0.1; done
  local J; J=$("$XDS" bench-serve --url "http://127.0.0.1:$P" --concurrency "$CONC" --num-requests "$NREQ" \
               --prompt-len "$PLEN" --output-len "$OLEN" --json 2>/dev/null)
  kill -TERM "$S"; wait "$S"
  echo "== $label: serve $*"
  echo "$J" | python3 -c '
import json, sys
j = json.loads(sys.stdin.read())
print("output tok/s %.1f  req/s %.2f  mean TTFT %.1f ms  mean TPOT %.1f ms  completed %d errors %d" % (
    j["output_throughput"], j["request_throughput"], j["ttft_ms"]["mean"] or 0,
    j["tpot_ms"]["mean"] or 0, j["completed"], j["errors"]))' 2>/dev/null || echo "$J"
  grep -E "decode group|xds worker|KV pulled|served per|routed" "$TMP/log" || true
}

run "single process, $CORES threads" -t "$CORES"
run "single process, 1 thread" -t 1
run "MoE-attention, 1 expert worker (1+1 threads), 1 micro-batch" -t 1 --experts 1 --micro-batches 1
run "MoE-attention, 1 expert worker (1+1 threads), 2 micro-batches" -t 1 --experts 1 --micro-batches 2
run "MoE-attention, 2 expert workers (1+1+1 threads on $CORES cores)" -t 1 --experts 2
run "2 decode groups sharing 2 expert workers (4 processes)" -t 1 --decode-dp 2 --experts 2
run "prefill 1 + 2 decode groups + 2 expert workers (the main job's topology)" -t 1 --prefill 1 --decode-dp 2 --experts 2
run "2 front-ends + 2 decode groups + 2 expert workers" -t 1 --frontends 2 --decode-dp 2 --experts 2 --port "$(port)"

# the dense model: disaggregated prefill/decode and two decode DP groups
export RUN_MODEL="$DENSE"
run "dense, single process, 1 thread" -t 1
run "dense, single process, $CORES threads" -t "$CORES"
run "dense, prefill 1 + decode (1+1 threads)" -t 1 --prefill 1
run "dense, 2 decode DP groups (1+1 threads)" -t 1 --decode-dp 2
