#!/usr/bin/env bash
# The main job: install what is needed, fetch the default model, build, upcycle
# it to a Mixture-of-Experts model (exact: same tokens as the dense model),
# start the OpenAI-compatible service on it as a disaggregated deployment —
# 1 prefill instance, 2 decode DP groups, 2 expert workers shared by both
# groups, each its own process over one XCCL segment — show the topology,
# send one chat request and show the answer, then keep serving (Ctrl-C or
# SIGTERM stops every process gracefully).
#   XDS_PORT     port to serve on (default 8000)
#   XDS_HOST     address to bind (default 127.0.0.1)
#   XDS_SINGLE=1 serve the dense model in one process instead
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
MODEL="$(scripts/fetch_model.sh)"
scripts/build.sh
PORT="${XDS_PORT:-8000}"
HOST="${XDS_HOST:-127.0.0.1}"

if [ "${XDS_SINGLE:-0}" = 1 ]; then
  build/xds serve -m "$MODEL" --host "$HOST" --port "$PORT" --served-model-name smollm2 &
  SERVER=$!
else
  MOE="${MODEL%.gguf}-moe4k2.gguf"
  if [ ! -s "$MOE" ]; then
    build/xds upcycle -m "$MODEL" -o "$MOE.tmp" -E 4 -k 2
    mv "$MOE.tmp" "$MOE"
  fi
  build/xds serve -m "$MOE" --host "$HOST" --port "$PORT" --served-model-name smollm2 -t 1 \
    --prefill 1 --decode-dp 2 --experts 2 &
  SERVER=$!
fi
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' INT TERM
for _ in $(seq 1 300); do
  curl -sf "http://$HOST:$PORT/health" >/dev/null 2>&1 && break
  kill -0 $SERVER 2>/dev/null || { echo "server exited during start-up" >&2; exit 1; }
  sleep 0.2
done

if [ "${XDS_SINGLE:-0}" != 1 ]; then
  echo
  echo "GET /v1/topology:"
  curl -s "http://$HOST:$PORT/v1/topology" | python3 -c 'import json,sys
t=json.load(sys.stdin)
for r in t["ranks"]:
    print("  rank %-2d pid %-7d %s%s" % (r["rank"], r["pid"], r["role"],
          " experts %s" % r["experts"] if "experts" in r else " group %d" % r["dp_group"] if "dp_group" in r else ""))'
fi
echo
echo "POST /v1/chat/completions:"
curl -s "http://$HOST:$PORT/v1/chat/completions" -H 'Content-Type: application/json' -d '{
  "model": "smollm2",
  "messages": [{"role": "user", "content": "Write a haiku about the sea."}],
  "max_tokens": 64, "temperature": 0
}' | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["choices"][0]["message"]["content"]); print("usage:", r["usage"])'
echo
echo "serving on http://$HOST:$PORT/v1 (OpenAI API) — Ctrl-C to stop"
wait $SERVER
