#!/usr/bin/env bash
# deploy_tiny.sh — every tiny test model over the OpenAI API, in every
# deployment topology, as real processes: greedy completions must be the
# same as the single-process server's. The fixtures (tests/data/oracle:
# qwen3_moe, mixtral, deepseek_v3 with MLA, a dense llama) have no tokenizer,
# so each runs from a temporary directory with its config and weights linked
# and a tokenizer.json in which token i decodes to "<i>" (the completion text
# spells the generated token ids); prompts are sent as token ids. Topologies: prefill/decode only
# (--prefill 1), MoE-attention only (--experts 2 / 4), and both with two
# decode DP groups (--prefill 1 --decode-dp 2 --experts 2 / 4), and all of
# it behind two front-ends (--frontends 2 --prefill 2 ...); the dense model:
# --prefill 1, --decode-dp 2 and both. Usage: bash deploy_tiny.sh xds
set -uo pipefail
XDS="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
cd "$(dirname "$0")/../.."
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $*"; }
bad() { failed=$((failed + 1)); echo "FAIL $*"; }
TMP="$(mktemp -d /tmp/xds-deploy-tiny.XXXXXX)"
PIDS=()
cleanup() { # supervisors, then their children (they outlive a killed supervisor by design)
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do
    for c in $(pgrep -f -- "--segment /xds-serve-$p( |$)|--frontend-of /xds-serve-$p( |$)"); do kill -9 "$c" 2>/dev/null; done
  done
  rm -rf "$TMP"
}
trap cleanup EXIT

python3 - "$TMP/tokenizer.json" <<'EOF'
import json, sys
# token i decodes to the text "<i>" (printable ASCII, which the byte-level
# decoder maps to itself), so the completion text spells the token ids
vocab = {"<%d>" % i: i for i in range(300)}
level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
json.dump({"version": "1.0", "added_tokens": [], "normalizer": None, "pre_tokenizer": level,
           "post_processor": None, "decoder": level,
           "model": {"type": "BPE", "vocab": vocab, "merges": [], "unk_token": None, "byte_fallback": False}},
          open(sys.argv[1], "w"))
EOF

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
stray() { pgrep -f -- "--segment /xds-serve-$1( |$)|--frontend-of /xds-serve-$1( |$)" || true; }
wait_health() { # port pid
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$1/health" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
wait_exit() { # pid seconds -> RC
  local end=$((SECONDS + $2))
  while kill -0 "$1" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.1; done
  if kill -0 "$1" 2>/dev/null; then kill -9 "$1"; wait "$1" 2>/dev/null; RC=124; else wait "$1"; RC=$?; fi
}
complete() { # port -> the greedy texts of three token-id prompts (one JSON line)
  python3 - "$1" <<'EOF'
import json, sys, urllib.request
out = []
for prompt in [[5, 77, 200, 13, 9], list(range(40, 73)), [255, 3, 128, 64, 32, 16, 8, 4, 2, 1, 99]]:
    req = urllib.request.Request("http://127.0.0.1:%s/v1/completions" % sys.argv[1],
        data=json.dumps({"prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": True}).encode(),
        headers={"Content-Type": "application/json"})
    j = json.loads(urllib.request.urlopen(req, timeout=60).read())
    out.append([j["choices"][0]["text"], j["usage"]["completion_tokens"]])
print(json.dumps(out))
EOF
}
serve_run() { # dir label -> GOT (completions), checks a clean stop
  local dir="$1" label="$2"; shift 2
  local P; P=$(free_port)
  "$XDS" serve -m "$dir" --port "$P" -t 1 --ctx 256 "$@" >"$TMP/log" 2>&1 & local S=$!; PIDS+=("$S")
  GOT=""
  if wait_health "$P" "$S"; then GOT=$(complete "$P"); fi
  kill -TERM "$S"; wait_exit "$S" 30
  if [ "$RC" != 0 ] || [ -n "$(stray "$S")" ] || [ -e "/dev/shm/xds-serve-$S" ]; then
    bad "$label: rc=$RC after SIGTERM, left: $(stray "$S") $(tail -3 "$TMP/log")"
  fi
}

check_model() { # name fixture-dir moe(0/1)
  local name="$1" src="$2" moe="$3"
  local dir="$TMP/$name"
  mkdir -p "$dir"
  ln -s "$PWD/$src/config.json" "$dir/config.json"
  ln -s "$PWD/$src/model.safetensors" "$dir/model.safetensors"
  cp "$TMP/tokenizer.json" "$dir/"
  serve_run "$dir" "$name single process"
  local REF="$GOT"
  if [ -z "$REF" ]; then bad "$name: single-process reference: $(tail -3 "$TMP/log")"; return; fi
  echo "     $name reference: $REF"
  local tops
  if [ "$moe" = 1 ]; then
    tops=("--prefill 1" "--experts 2" "--experts 4" "--prefill 1 --decode-dp 2 --experts 2"
          "--prefill 1 --decode-dp 2 --experts 4 --micro-batches 1"
          "--frontends 2 --prefill 2 --decode-dp 2 --experts 2")
  else
    tops=("--prefill 1" "--decode-dp 2" "--prefill 1 --decode-dp 2")
  fi
  for t in "${tops[@]}"; do
    # shellcheck disable=SC2086
    serve_run "$dir" "$name $t" $t
    [ "$GOT" = "$REF" ] && ok "$name, $t: same greedy completions as one process" \
      || bad "$name, $t: ref=$REF got=$GOT $(tail -3 "$TMP/log")"
  done
}

check_model qwen3_moe tests/data/oracle/moe/qwen3moe_gqa_sparse 1
check_model mixtral tests/data/oracle/moe/mixtral_top2 1
check_model deepseek_v3 tests/data/oracle/moe/ds_qlora_yarn_groups 1
check_model llama tests/data/oracle/tiny/h72_mha_untied 0

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
