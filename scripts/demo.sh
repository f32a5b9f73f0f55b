#!/usr/bin/env bash
# The main job: install what is needed, fetch the default model, build, start
# the OpenAI-compatible service on it, send one chat request and show the
# answer, then keep serving (Ctrl-C or SIGTERM stops the server gracefully).
#   XDS_PORT   port to serve on (default 8000)
#   XDS_HOST   address to bind (default 127.0.0.1)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
MODEL="$(scripts/fetch_model.sh)"
scripts/build.sh
PORT="${XDS_PORT:-8000}"
HOST="${XDS_HOST:-127.0.0.1}"

build/xds serve -m "$MODEL" --host "$HOST" --port "$PORT" --served-model-name smollm2 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' INT TERM
for _ in $(seq 1 300); do
  curl -sf "http://$HOST:$PORT/health" >/dev/null 2>&1 && break
  kill -0 $SERVER 2>/dev/null || { echo "server exited during start-up" >&2; exit 1; }
  sleep 0.2
done

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
