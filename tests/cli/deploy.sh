#!/usr/bin/env bash
# deploy.sh — `xds serve --experts E` as a real multi-process deployment
# (supervisor + `xds worker --role expert` processes over an XCCL segment),
# with SmolLM2 upcycled to 4 experts (XDS_TEST_MODEL; skipped when unset, a failure under CI=true);
# also --prefill (disaggregated prefill/decode), --decode-dp 2, and 2 decode
# groups sharing the expert workers (with and without a prefill instance).
# The MoE is a perturbed upcycle (`xds upcycle --perturb 0.5`: expert e's
# down projection scaled by 0.5 .. 1.5), so a token routed to the wrong
# expert changes the text; one deployment also runs on the exact upcycle
# (identical experts), whose text must equal the dense model's.
#   - greedy completions over the API identical to the single-process server:
#     6 real prompts of 5 to ~190 tokens (chunked prefill at 48 tokens per
#     step, several 16-token KV blocks), 12 tokens each; the reference sends
#     them one at a time, every deployment all at once (concurrent requests);
#   - GET /v1/topology lists every rank with a live pid (two front-ends by
#     default) and every expert on two workers (default --expert-replicas 2);
#     port 0 with two front-ends serves on the port the kernel picked;
#   - SIGTERM stops everything: exit 0, no worker left, shm segment removed;
#   - start-up errors (dense model, unsupported flags, a worker that fails to
#     start) give one clear error, exit 1, and leave no process or segment;
#   - a SIGKILLed expert worker is restarted and the deployment keeps serving the
#     same tokens (the faults of every role under load: deploy_faults.sh).
# Every wait has a deadline. Usage: bash tests/cli/deploy.sh path/to/xds
set -uo pipefail
. "$(dirname "$0")/../skip.sh"
. "$(dirname "$0")/../deploy_wait.sh" # wait_started
XDS="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
cd "$(dirname "$0")/../.."
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $*"; }
bad() { failed=$((failed + 1)); echo "FAIL $*"; }

if [ -z "${XDS_TEST_MODEL:-}" ]; then
  skip_input "deployment tests: XDS_TEST_MODEL is not set (scripts/test.sh sets it)" || { echo "0 passed, 1 failed"; exit 1; }
  echo "0 passed, 0 failed, 1 skipped"; exit 77
fi

# Under sanitizers (XDS_SANITIZED=1, scripts/test.sh) the model runs ~10x slower:
# only the two short prompts, shorter completions, and the E=4 / prefill+experts
# cases are left to the release run.
if [ "${XDS_SANITIZED:-0}" = 1 ]; then NTOK=4; NPROMPT=2; ESET="2"; FULL=0; else NTOK=12; NPROMPT=6; ESET="2 4"; FULL=1; fi
# every server of the equivalence cases: 48-token steps, so the long prompts are prefilled in chunks
STEP=(--max-step-tokens 48)
export NTOK NPROMPT FULL
TMP="$(mktemp -d /tmp/xds-deploy-test.XXXXXX)"
PIDS=()
cleanup() { # supervisors, then their children (they outlive a killed supervisor by design)
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do
    for c in $(pgrep -f -- "--segment /xds-serve-$p( |$)|--frontend-of /xds-serve-$p( |$)"); do kill -9 "$c" 2>/dev/null; done
  done
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# workers of supervisor $1 still alive (by their segment name)
stray() { pgrep -f -- "--segment /xds-serve-$1( |$)|--frontend-of /xds-serve-$1( |$)" || true; }
wait_health() { # port pid: the port answers and the deployment has started
  for _ in $(seq 1 300); do
    python3 - "$1" <<'EOF' 2>/dev/null && { wait_started "$1" "$2"; return; }
import sys, urllib.request
urllib.request.urlopen("http://127.0.0.1:%s/health" % sys.argv[1], timeout=1).read()
EOF
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
wait_exit() { # pid seconds -> sets RC
  local end=$((SECONDS + $2))
  while kill -0 "$1" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.1; done
  if kill -0 "$1" 2>/dev/null; then kill -9 "$1"; wait "$1" 2>/dev/null; RC=124; else wait "$1"; RC=$?; fi
}
# Real prompts of several lengths (the sanitizer run, ~10x slower, takes the first two, the short ones).
python3 - "$TMP/prompts.json" <<'EOF'
import json, sys
prompts = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old woodcutter and his "
    "wife. Every morning he walked into the forest with his axe, and every evening he came home with a bundle of "
    "wood on his back. One winter the snow fell so deep that the paths disappeared, and the woodcutter could not "
    "find his way home. He wandered among the silent trees until he saw a light shining between the branches. "
    "His feet were cold and his stomach was empty, but he kept walking towards it, step by step, through the "
    "snow. When he came closer, he saw",
    "Explain in simple words why the sky is blue during the day and red or orange at sunset, as you would to a "
    "curious ten year old child.",
    "def merge_sort(items):\n    \"\"\"Sort a list of numbers and return a new list.\"\"\"\n"
    "    if len(items) <= 1:\n        return list(items)\n    middle = len(items) // 2\n"
    "    left = merge_sort(items[:middle])\n    right = merge_sort(items[middle:])\n    result = []\n"
    "    i = j = 0\n    while i < len(left) and j < len(right):\n        if left[i] <= right[j]:\n"
    "            result.append(left[i])\n            i += 1\n        else:\n            result.append(right[j])\n"
    "            j += 1\n    result.extend(left[i:])\n    result.extend(right[j:])\n    return result\n\n\n"
    "def binary_search(items, target):\n    \"\"\"Return the index of target in the sorted list items, or -1.\"\"\"\n",
    "The history of the printing press begins in the fifteenth century. Before it, books were copied by hand, "
    "which made them rare and expensive; a single Bible could take a scribe more than a year. Around 1440 "
    "Johannes Gutenberg, a goldsmith from Mainz, combined movable metal type, an oil-based ink and a wooden "
    "press adapted from those used to make wine. Within fifty years printing shops had spread to more than two "
    "hundred cities across Europe, and millions of books had been printed. The consequences were enormous: "
    "ideas travelled faster than ever before, scholars could compare the same text in different cities, and "
    "literacy slowly grew among ordinary people. Historians still debate which changes followed most directly "
    "from the press. In summary, the three most important effects of the printing press were",
]
json.dump(prompts, open(sys.argv[1], "w"))
EOF
export PROMPTS="$TMP/prompts.json"
complete() { # port [seq] -> [[text, prompt_tokens], ...] of the prompts (one JSON line); all sent at once unless seq
  python3 - "$1" "${2:-par}" <<'EOF'
import json, os, sys, threading, urllib.request
port, mode = sys.argv[1], sys.argv[2]
prompts = json.load(open(os.environ["PROMPTS"]))[:int(os.environ["NPROMPT"])]
out = [None] * len(prompts)
def one(i):
    req = urllib.request.Request("http://127.0.0.1:%s/v1/completions" % port,
        data=json.dumps({"prompt": prompts[i], "max_tokens": int(os.environ["NTOK"]), "temperature": 0,
                         "ignore_eos": True}).encode(),
        headers={"Content-Type": "application/json", "Connection": "close"})
    j = json.loads(urllib.request.urlopen(req, timeout=120).read())
    out[i] = [j["choices"][0]["text"], j["usage"]["prompt_tokens"]]
if mode == "seq":
    for i in range(len(prompts)): one(i)
else:
    ts = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    [t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps(out))
EOF
}

MOE="$TMP/smol-e4p.gguf" MOEX="$TMP/smol-e4.gguf"
if ! "$XDS" upcycle -m "$XDS_TEST_MODEL" -o "$MOE" -E 4 -k 2 --perturb 0.5 >/dev/null 2>&1 \
   || ! "$XDS" upcycle -m "$XDS_TEST_MODEL" -o "$MOEX" -E 4 -k 2 >/dev/null 2>&1; then
  bad "upcycle SmolLM2 to 4 experts"; echo "$passed passed, $failed failed"; exit 1
fi

# --- reference: single-process server, one request at a time ---
PORT=$(free_port)
"$XDS" serve -m "$MOE" --port "$PORT" -t 1 "${STEP[@]}" >"$TMP/ref.log" 2>&1 & SRV=$!; PIDS+=("$SRV")
REF=""
if wait_health "$PORT" "$SRV"; then REF=$(complete "$PORT" seq); fi
kill -TERM "$SRV"; wait_exit "$SRV" 30
[ -n "$REF" ] && ok "single-process reference answers" || bad "single-process reference: $(tail -3 "$TMP/ref.log")"
echo "$REF" | python3 -c '
import json, os, sys
r = json.load(sys.stdin); n = [p for _, p in r]
assert len(r) == int(os.environ["NPROMPT"]) and min(n) < 16 and (max(n) > 100 or os.environ["FULL"] == "0"), n
print("     prompt tokens:", n)' && ok "reference: prompts of several lengths (release run: some beyond 100 tokens)" \
  || bad "reference prompts: $REF"

# --- deployments with 2 and 4 expert workers ---
for E in $ESET; do
  PORT=$(free_port)
  "$XDS" serve -m "$MOE" --port "$PORT" -t 1 "${STEP[@]}" --experts "$E" >"$TMP/dep$E.log" 2>&1 & SRV=$!; PIDS+=("$SRV")
  if ! wait_health "$PORT" "$SRV"; then bad "E=$E: deployment did not come up: $(tail -5 "$TMP/dep$E.log")"; continue; fi
  grep -q "topology: rank $E pid" "$TMP/dep$E.log" && ok "E=$E: topology printed at start" || bad "E=$E: no topology lines"
  if python3 - "$PORT" "$E" "$SRV" <<'EOF'
import json, os, sys, urllib.request
port, E, sup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t = json.loads(urllib.request.urlopen("http://127.0.0.1:%s/v1/topology" % port, timeout=5).read())
ranks = t["ranks"]
# the supervisor runs no model; every role is a child: E expert workers, two
# front-ends (the default), decode group 0
assert t["experts"] == E and t["frontends"] == 2 and len(ranks) == E + 4, t
assert ranks[0]["pid"] == sup and ranks[0]["role"] == "supervisor", ranks[0]
assert sorted(r["role"] for r in ranks[1:]) == sorted(["expert"] * E + ["frontend"] * 2 + ["decode"]), ranks
held = []
for r in ranks[1:]:
    assert r["pid"] != sup and r["state"] == "live" and r["restarts"] == 0, r
    os.kill(r["pid"], 0)  # alive
    if r["role"] == "decode": assert r["kv_blocks"] > 0 and r["dp_group"] == 0, r
    if r["role"] == "expert":
        assert len(set(r["experts"])) == len(r["experts"]), r
        held += r["experts"]
# default --expert-replicas 2: every expert on two different workers
assert sorted(held) == sorted(list(range(4)) * 2), held
EOF
  then ok "E=$E: GET /v1/topology (live pids, every expert on two workers)"; else bad "E=$E: /v1/topology"; fi
  GOT=$(complete "$PORT")
  if [ -n "$REF" ] && [ "$GOT" = "$REF" ]; then ok "E=$E: $NPROMPT concurrent greedy completions identical to single process"
  else bad "E=$E: completions differ: ref=$REF got=$GOT"; fi
  kill -TERM "$SRV"; wait_exit "$SRV" 30
  [ "$RC" = 0 ] && ok "E=$E: SIGTERM -> exit 0" || bad "E=$E: exit status $RC after SIGTERM: $(tail -3 "$TMP/dep$E.log")"
  [ -z "$(stray "$SRV")" ] && ok "E=$E: no worker left" || bad "E=$E: workers left: $(stray "$SRV")"
  [ ! -e "/dev/shm/xds-serve-$SRV" ] && ok "E=$E: segment removed" || bad "E=$E: /dev/shm/xds-serve-$SRV left"
done

# --- disaggregated prefill/decode: alone (dense SmolLM2 and its MoE) and with expert workers ---
REFD=""
PORT=$(free_port)
"$XDS" serve -m "$XDS_TEST_MODEL" --port "$PORT" -t 1 "${STEP[@]}" >"$TMP/refd.log" 2>&1 & SRV=$!; PIDS+=("$SRV")
if wait_health "$PORT" "$SRV"; then REFD=$(complete "$PORT" seq); fi
kill -TERM "$SRV"; wait_exit "$SRV" 30
# (the perturbation shows in the text: not checked on the sanitizer run's 2 x 4 tokens)
[ -n "$REFD" ] && { [ "$FULL" = 0 ] || [ "$REFD" != "$REF" ]; } && ok "dense reference answers (and differs from the perturbed MoE's)" \
  || bad "dense reference: $REFD (perturbed MoE: $REF)"
pd_case() { # label, model, reference, serve args...
  local label="$1" model="$2" want="$3"; shift 3
  local P; P=$(free_port)
  "$XDS" serve -m "$model" --port "$P" -t 1 "${STEP[@]}" "$@" >"$TMP/pd.log" 2>&1 & local S=$!; PIDS+=("$S")
  if ! wait_health "$P" "$S"; then bad "$label: did not come up: $(tail -5 "$TMP/pd.log")"; return; fi
  local GOT; GOT=$(complete "$P")
  python3 - "$P" <<'EOF2' && ok "$label: /v1/topology lists the prefill instances" || bad "$label: topology"
import json, os, sys, urllib.request
t = json.loads(urllib.request.urlopen("http://127.0.0.1:%s/v1/topology" % sys.argv[1], timeout=5).read())
pre = [r for r in t["ranks"] if r["role"] == "prefill"]
assert len(pre) == t["prefill"] >= 1, t
for r in pre: os.kill(r["pid"], 0)
EOF2
  kill -TERM "$S"; wait_exit "$S" 30
  if [ -n "$want" ] && [ "$GOT" = "$want" ]; then ok "$label: greedy completions identical to single process"
  else bad "$label: completions differ: ref=$want got=$GOT"; fi
  grep -q "KV pulled from prefill instances: [1-9]" "$TMP/pd.log" && ok "$label: decode pulled the prompt KV" \
    || bad "$label: no KV was pulled: $(tail -3 "$TMP/pd.log")"
  [ "$RC" = 0 ] && [ -z "$(stray "$S")" ] && [ ! -e "/dev/shm/xds-serve-$S" ] && ok "$label: SIGTERM -> exit 0, nothing left" \
    || bad "$label: rc=$RC left: $(stray "$S")"
}
pd_case "prefill 1 (dense)" "$XDS_TEST_MODEL" "$REFD" --prefill 1
[ "$FULL" = 1 ] && pd_case "prefill 1 + experts 2 (exact upcycle, identical experts: the dense text)" "$MOEX" "$REFD" --prefill 1 --experts 2
[ "$FULL" = 1 ] && pd_case "prefill 2 + experts 2 (MoE)" "$MOE" "$REF" --prefill 2 --experts 2
pd_case "prefill 1 + decode-dp 2 (dense)" "$XDS_TEST_MODEL" "$REFD" --prefill 1 --decode-dp 2
grep -Eq "group 0: [1-9][0-9]* group 1: [1-9]" "$TMP/pd.log" && grep -q "0 transfer tasks still held" "$TMP/pd.log" \
  && ok "prefill 1 + decode-dp 2: both groups served; every transfer task was freed" \
  || bad "prefill 1 + decode-dp 2: $(grep -E 'served per|still held' "$TMP/pd.log")"

# --- prefill instance choice by prefix-cache affinity: prompts X, Y, Y', X' (X' and Y' share
# 64+ tokens with X and Y); rotating ties alone would send Y' and X' to the instance without
# their prefix, affinity sends each to the instance that cached it ---
P=$(free_port)
"$XDS" serve -m "$XDS_TEST_MODEL" --port "$P" -t 1 --prefill 2 >"$TMP/aff.log" 2>&1 & S=$!; PIDS+=("$S")
if wait_health "$P" "$S"; then
  python3 - "$P" <<'EOF2'
import json, sys, urllib.request
X = "Once upon a time in a land far far away there lived a king who had three daughters, and the youngest was the most beautiful of all the girls in the kingdom, loved by everyone who met her."
Y = "The mitochondria is the powerhouse of the cell, turning the food we eat into energy that the body can use for movement, growth, repair and every other process that keeps us alive and well."
for p in [X + " One", Y + " Two", Y + " Three", X + " Four"]:
    req = urllib.request.Request("http://127.0.0.1:%s/v1/completions" % sys.argv[1],
        data=json.dumps({"prompt": p, "max_tokens": 2, "temperature": 0}).encode(), headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=60).read()
EOF2
  kill -TERM "$S"; wait_exit "$S" 30
  [ "$(grep -Ec "computed, [1-9][0-9]* from the prefix cache" "$TMP/aff.log")" = 2 ] \
    && ok "prefill 2: each repeated prefix went to the instance that cached it" \
    || bad "prefill 2 affinity: $(grep 'prefix cache' "$TMP/aff.log")"
else bad "prefill 2 affinity: did not come up"; fi

# --- long prompt, chunked prefill not aligned to KV blocks (40-token steps, 16-token blocks) ---
long_complete() { # port -> greedy text of a ~300-token prompt
  python3 - "$1" <<'EOF2'
import json, sys, urllib.request
p = " ".join("word%d is number %d," % (i, i * 7 % 13) for i in range(40))
req = urllib.request.Request("http://127.0.0.1:%s/v1/completions" % sys.argv[1],
    data=json.dumps({"prompt": p, "max_tokens": 8, "temperature": 0}).encode(),
    headers={"Content-Type": "application/json"})
j = json.loads(urllib.request.urlopen(req, timeout=120).read())
print(json.dumps([j["choices"][0]["text"], j["usage"]["prompt_tokens"]]))
EOF2
}
if [ "$FULL" = 1 ]; then
  P=$(free_port)
  "$XDS" serve -m "$XDS_TEST_MODEL" --port "$P" -t 1 --max-step-tokens 40 >"$TMP/l1.log" 2>&1 & S=$!; PIDS+=("$S")
  LREF=""; wait_health "$P" "$S" && LREF=$(long_complete "$P"); kill -TERM "$S"; wait_exit "$S" 30
  P=$(free_port)
  "$XDS" serve -m "$XDS_TEST_MODEL" --port "$P" -t 1 --max-step-tokens 40 --prefill 1 >"$TMP/l2.log" 2>&1 & S=$!; PIDS+=("$S")
  LGOT=""; wait_health "$P" "$S" && LGOT=$(long_complete "$P"); kill -TERM "$S"; wait_exit "$S" 30
  [ -n "$LREF" ] && [ "$LGOT" = "$LREF" ] && ok "prefill 1, long prompt in 40-token chunks: same tokens ($LREF)" \
    || bad "prefill 1, long prompt: ref=$LREF got=$LGOT $(tail -3 "$TMP/l2.log")"
fi

# --- two decode DP groups (group 1 its own process), picked from the shared load table ---
P=$(free_port)
"$XDS" serve -m "$XDS_TEST_MODEL" --port "$P" -t 1 "${STEP[@]}" --decode-dp 2 >"$TMP/dp.log" 2>&1 & S=$!; PIDS+=("$S")
if wait_health "$P" "$S"; then
  GOT=$(complete "$P")
  [ -n "$REFD" ] && [ "$GOT" = "$REFD" ] && ok "decode-dp 2: greedy completions identical to single process" \
    || bad "decode-dp 2: completions differ: ref=$REFD got=$GOT"
  grep -q "rank [0-9]* pid [0-9]*: decode DP group 1" "$TMP/dp.log" && ok "decode-dp 2: topology lists group 1" \
    || bad "decode-dp 2: topology"
  kill -TERM "$S"; wait_exit "$S" 30
  grep -Eq "group 0: [1-9][0-9]* group 1: [1-9]" "$TMP/dp.log" && ok "decode-dp 2: both groups served requests" \
    || bad "decode-dp 2: $(grep 'served per' "$TMP/dp.log")"
  [ "$RC" = 0 ] && [ -z "$(stray "$S")" ] && [ ! -e "/dev/shm/xds-serve-$S" ] && [ ! -e "/dev/shm/xds-load-$S" ] \
    && ok "decode-dp 2: SIGTERM -> exit 0, nothing left" || bad "decode-dp 2: rc=$RC left: $(stray "$S")"
else
  bad "decode-dp 2: did not come up: $(tail -5 "$TMP/dp.log")"
fi

# --- two decode DP groups sharing the expert workers (MoE-attention for both) ---
dp_moe_case() { # label, serve args...
  local label="$1"; shift
  local P; P=$(free_port)
  "$XDS" serve -m "$MOE" --port "$P" -t 1 "${STEP[@]}" "$@" >"$TMP/dpm.log" 2>&1 & local S=$!; PIDS+=("$S")
  if ! wait_health "$P" "$S"; then bad "$label: did not come up: $(tail -5 "$TMP/dpm.log")"; return; fi
  local GOT; GOT=$(complete "$P")
  python3 - "$P" <<'EOF2' && ok "$label: /v1/topology: 2 decode groups, each expert on two workers" || bad "$label: topology"
import json, os, sys, urllib.request
t = json.loads(urllib.request.urlopen("http://127.0.0.1:%s/v1/topology" % sys.argv[1], timeout=5).read())
dec = [r for r in t["ranks"] if r["role"] == "decode"]
assert len(dec) == 2 and all("attn_rank" in r for r in dec), t
held = sorted(e for r in t["ranks"] if r["role"] == "expert" for e in r["experts"])
assert held == sorted(list(range(4)) * 2), held  # default: two replicas of each
for r in t["ranks"][1:]: os.kill(r["pid"], 0)
EOF2
  kill -TERM "$S"; wait_exit "$S" 30
  if [ -n "$REF" ] && [ "$GOT" = "$REF" ]; then ok "$label: greedy completions identical to single process"
  else bad "$label: completions differ: ref=$REF got=$GOT $(tail -3 "$TMP/dpm.log")"; fi
  grep -Eq "group 0: [1-9][0-9]* group 1: [1-9]" "$TMP/dpm.log" && ok "$label: both groups served requests" \
    || bad "$label: $(grep 'served per' "$TMP/dpm.log")"
  grep -q "decode group 1): [1-9][0-9]* passes" "$TMP/dpm.log" && ok "$label: group 1 ran its MoE layers on the workers" \
    || bad "$label: group 1 stats missing: $(grep 'decode group 1' "$TMP/dpm.log")"
  [ "$RC" = 0 ] && [ -z "$(stray "$S")" ] && [ ! -e "/dev/shm/xds-serve-$S" ] && ok "$label: SIGTERM -> exit 0, nothing left" \
    || bad "$label: rc=$RC left: $(stray "$S") $(tail -3 "$TMP/dpm.log")"
}
dp_moe_case "decode-dp 2 + experts 2" --decode-dp 2 --experts 2
[ "$FULL" = 1 ] && dp_moe_case "prefill 1 + decode-dp 2 + experts 4, 1 micro-batch" --prefill 1 --decode-dp 2 --experts 4 --micro-batches 1

# --- a topology file: per-process settings, replicated experts, 2 decode groups ---
cat >"$TMP/topo.json" <<'EOF2'
{"prefill": [{"threads": 1, "kv_tokens": 4096}],
 "decode": [{"threads": 1, "max_batch": 8}, {"threads": 1, "max_batch": 4, "kv_blocks": 256}],
 "experts": [{"experts": [0, 1, 2]}, {"experts": [2, 3]}, {"experts": [3, 0, 1]}]}
EOF2
if [ "$FULL" = 1 ]; then
  P=$(free_port)
  "$XDS" serve -m "$MOE" --port "$P" -t 1 "${STEP[@]}" --topology "$TMP/topo.json" >"$TMP/topo.log" 2>&1 & S=$!; PIDS+=("$S")
  if wait_health "$P" "$S"; then
    GOT=$(complete "$P")
    python3 - "$P" <<'EOF2' && ok "topology file: /v1/topology has its placement and settings" || bad "topology file: /v1/topology"
import json, sys, urllib.request
t = json.loads(urllib.request.urlopen("http://127.0.0.1:%s/v1/topology" % sys.argv[1], timeout=5).read())
ex = [r["experts"] for r in t["ranks"] if r["role"] == "expert"]
assert ex == [[0, 1, 2], [2, 3], [3, 0, 1]], ex
dec = [r for r in t["ranks"] if r["role"] == "decode"]
assert len(dec) == 2 and dec[1]["kv_blocks"] == 256, dec
assert t["prefill"] == 1, t
EOF2
    kill -TERM "$S"; wait_exit "$S" 30
    [ -n "$REF" ] && [ "$GOT" = "$REF" ] && ok "topology file: greedy completions identical to single process" \
      || bad "topology file: completions differ: ref=$REF got=$GOT"
    [ "$(grep -c "expert [0-9], rank [0-9]): [1-9][0-9]* messages" "$TMP/topo.log")" = 3 ] \
      && ok "topology file: every expert worker (replicas too) computed rows" \
      || bad "topology file: $(grep 'messages' "$TMP/topo.log")"
    [ "$RC" = 0 ] && [ -z "$(stray "$S")" ] && ok "topology file: SIGTERM -> exit 0, nothing left" || bad "topology file: rc=$RC"
  else bad "topology file: did not come up: $(tail -3 "$TMP/topo.log")"; fi
fi

# --- two front-ends on one port (SO_REUSEPORT), a prefill instance, 2 decode groups sharing 2 expert workers ---
P=$(free_port)
"$XDS" serve -m "$MOE" --port "$P" -t 1 "${STEP[@]}" --frontends 2 --prefill 1 --decode-dp 2 --experts 2 >"$TMP/fe.log" 2>&1 & S=$!; PIDS+=("$S")
if wait_health "$P" "$S"; then
  FE=$(python3 - "$P" <<'EOF2'
import json, sys, threading, urllib.request, os
port = sys.argv[1]
prompts = json.load(open(os.environ["PROMPTS"]))[:int(os.environ["NPROMPT"])]
res = {}
def one(i):
    p = prompts[i % len(prompts)]
    req = urllib.request.Request("http://127.0.0.1:%s/v1/completions" % port,
        data=json.dumps({"prompt": p, "max_tokens": int(os.environ["NTOK"]), "temperature": 0,
                         "ignore_eos": True}).encode(),
        headers={"Content-Type": "application/json", "Connection": "close"})
    j = json.loads(urllib.request.urlopen(req, timeout=120).read())
    res[i] = [j["choices"][0]["text"], j["usage"]["prompt_tokens"]]
ts = [threading.Thread(target=one, args=(i,)) for i in range(12)]
[t.start() for t in ts]; [t.join() for t in ts]
ok = all(res[i] == res[i % len(prompts)] for i in range(12)) and len(res) == 12
print(json.dumps([res[i] for i in range(len(prompts))]) if ok else "MISMATCH %r" % res)
EOF2
)
  kill -TERM "$S"; wait_exit "$S" 60
  [ -n "$REF" ] && [ "$FE" = "$REF" ] && ok "frontends 2: 12 concurrent requests, greedy completions identical to single process" \
    || bad "frontends 2: ref=$REF got=$FE"
  grep -Eq "front-end \(rank [0-9]+\): [1-9][0-9]? requests routed" "$TMP/fe.log" \
    && ok "frontends 2: the second front-end took requests on the shared port" \
    || bad "frontends 2: $(grep 'routed' "$TMP/fe.log")"
  grep -q "0 transfer tasks still held" "$TMP/fe.log" && grep -Eq "group 0: [1-9][0-9]* group 1: [1-9]" "$TMP/fe.log" \
    && ok "frontends 2: every transfer task freed, both groups served" || bad "frontends 2: $(grep -E 'held|served per' "$TMP/fe.log")"
  [ "$RC" = 0 ] && [ -z "$(stray "$S")" ] && [ ! -e "/dev/shm/xds-serve-$S" ] && [ ! -e "/dev/shm/xds-serve-$S.topology" ] \
    && ok "frontends 2: SIGTERM -> exit 0, nothing left" || bad "frontends 2: rc=$RC $(tail -4 "$TMP/fe.log")"
else bad "frontends 2: did not come up: $(tail -5 "$TMP/fe.log")"; fi

# --- a worker killed while serving is restarted; the deployment keeps serving the same tokens ---
# (more faults, under load: tests/cli/deploy_faults.sh)
PORT=$(free_port)
"$XDS" serve -m "$MOE" --port "$PORT" -t 1 --experts 2 >"$TMP/kill.log" 2>&1 & SRV=$!; PIDS+=("$SRV")
if wait_health "$PORT" "$SRV"; then
  W=$(pgrep -f -- "--segment /xds-serve-$SRV --rank 2 " | head -1)
  kill -9 "$W"
  for _ in $(seq 1 300); do grep -q "expert worker 2 (rank 2, pid [0-9]*) rejoined" "$TMP/kill.log" && break; sleep 0.1; done
  GOT=$(complete "$PORT")
  grep -q "expert worker 2 (rank 2, pid $W) was killed by signal 9 (Killed); restarting it" "$TMP/kill.log" \
    && kill -0 "$SRV" && ok "killed expert worker: the supervisor names it and restarts it" \
    || bad "killed worker: $(tail -4 "$TMP/kill.log")"
  [ -n "$REF" ] && [ "$GOT" = "$REF" ] && ok "killed expert worker: after the restart, greedy completions identical" \
    || bad "killed expert worker: ref=$REF got=$GOT $(tail -4 "$TMP/kill.log")"
  M=$(curl -s "http://127.0.0.1:$PORT/metrics")
  echo "$M" | grep -q '^xds_fault_failures_detected_total{role="expert",cause="exit"} 1$' \
    && echo "$M" | grep -q '^xds_fault_restarts_total{role="expert"} 1$' \
    && echo "$M" | grep -q '^xds_fault_recovery_seconds_count{role="expert"} 1$' \
    && echo "$M" | grep -q '^xds_fault_failures_detected_total{role="decode",cause="exit"} 0$' \
    && ok "killed expert worker: /metrics counts one expert exit, restart and recovery" \
    || bad "killed expert worker: /metrics: $(echo "$M" | grep '^xds_fault' | grep -v ' 0$' | tr '\n' ' ')"
  kill -TERM "$SRV"; wait_exit "$SRV" 30
  [ "$RC" = 0 ] && [ -z "$(stray "$SRV")" ] && [ ! -e "/dev/shm/xds-serve-$SRV" ] && ok "killed expert worker: SIGTERM -> exit 0, nothing left" \
    || bad "killed worker: rc=$RC left: $(stray "$SRV")"
else
  bad "kill test: deployment did not come up"
fi
# --- --quantize w8a8 reaches every role: the README topology against one W8A8 process ---
if [ "$FULL" = 1 ]; then
  P=$(free_port)
  "$XDS" serve -m "$MOE" --port "$P" -t 1 "${STEP[@]}" --quantize w8a8 >"$TMP/q1.log" 2>&1 & S=$!; PIDS+=("$S")
  REFQ=""; if wait_health "$P" "$S"; then REFQ=$(complete "$P" seq); fi
  kill -TERM "$S"; wait_exit "$S" 30
  P=$(free_port)
  "$XDS" serve -m "$MOE" --port "$P" -t 1 "${STEP[@]}" --quantize w8a8 --prefill 1 --decode-dp 2 --experts 2 \
    >"$TMP/q2.log" 2>&1 & S=$!; PIDS+=("$S")
  GOTQ=""; if wait_health "$P" "$S"; then GOTQ=$(complete "$P"); fi
  W=$(pgrep -f -- "--segment /xds-serve-$S --rank 1 " | head -1)
  QARGS=$(tr '\0' ' ' <"/proc/$W/cmdline" 2>/dev/null)
  kill -TERM "$S"; wait_exit "$S" 30
  [ -n "$REFQ" ] && [ "$REFQ" != "$REF" ] && [ "$GOTQ" = "$REFQ" ] && [[ "$QARGS" == *"--quantize w8a8"* ]] \
    && ok "--quantize w8a8: prefill + 2 decode groups + 2 expert workers give the single W8A8 process's completions" \
    || bad "--quantize w8a8 deployment: ref=$REFQ got=$GOTQ (Q4_1 $REF) worker: $QARGS $(tail -3 "$TMP/q2.log")"
  [ "$RC" = 0 ] && [ -z "$(stray "$S")" ] || bad "--quantize w8a8 deployment: rc=$RC left: $(stray "$S")"
fi
# --- Ctrl-C in a terminal (SIGINT to the whole process group), and a second signal ---
P=$(free_port)
setsid "$XDS" serve -m "$MOE" --port "$P" -t 1 --decode-dp 2 --experts 2 >"$TMP/sig.log" 2>&1 & S=$!; PIDS+=("$S")
if wait_health "$P" "$S"; then
  kill -INT -- "-$S"; wait_exit "$S" 30
  [ "$RC" = 0 ] && grep -q "xds serve: stopped" "$TMP/sig.log" && [ -z "$(stray "$S")" ] && [ ! -e "/dev/shm/xds-serve-$S" ] \
    && [ ! -e "/dev/shm/xds-load-$S" ] && ok "SIGINT to the process group: orderly stop, exit 0, nothing left" \
    || bad "SIGINT to the group: rc=$RC left: $(stray "$S") $(tail -3 "$TMP/sig.log")"
else bad "SIGINT case: did not come up"; fi
P=$(free_port)
"$XDS" serve -m "$MOE" --port "$P" -t 1 --decode-dp 2 --experts 2 >"$TMP/sig2.log" 2>&1 & S=$!; PIDS+=("$S")
if wait_health "$P" "$S"; then
  kill -TERM "$S"; kill -TERM "$S"; wait_exit "$S" 30; sleep 0.5
  [ -z "$(stray "$S")" ] && [ ! -e "/dev/shm/xds-serve-$S" ] && [ ! -e "/dev/shm/xds-load-$S" ] \
    && ok "second SIGTERM quits at once (rc=$RC) and still leaves no process or segment" \
    || bad "second SIGTERM: left: $(stray "$S") $(ls /dev/shm | grep -- "-$S")"
else bad "double SIGTERM case: did not come up"; fi

# --- start-up errors: one clear message, exit 1, nothing left ---
startup_err() { # label, expected message, env..., -- args...
  local label="$1" want="$2"; shift 2
  local envs=(); while [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
  env "${envs[@]}" "$XDS" serve --port 0 "$@" >"$TMP/err.log" 2>&1 & local S=$!; PIDS+=("$S")
  wait_exit "$S" 60
  if [ "$RC" = 1 ] && grep -q "$want" "$TMP/err.log" && [ -z "$(stray "$S")" ] && [ ! -e "/dev/shm/xds-serve-$S" ]; then
    ok "start-up error: $label"
  else
    bad "start-up error: $label: rc=$RC $(cat "$TMP/err.log" | tail -3) stray=$(stray "$S")"
  fi
}
startup_err "worker fails to start" "expert worker 1 exited with status 1 before it became ready" \
  XDS_WORKER_EXE=/bin/false -- -m "$MOE" --experts 2
startup_err "dense model" "has no MoE layers" X=1 -- -m "$XDS_TEST_MODEL" --experts 2
startup_err "more workers than experts" "only 4 routed experts" X=1 -- -m "$MOE" --experts 5
# port 0: the supervisor binds the listening socket first, the front-ends share it
"$XDS" serve -m "$XDS_TEST_MODEL" --port 0 -t 1 "${STEP[@]}" --frontends 2 >"$TMP/p0.log" 2>&1 & S=$!; PIDS+=("$S")
P0=""; for _ in $(seq 1 300); do
  P0=$(sed -n 's|.*deployment listening on http://127.0.0.1:\([0-9]*\) .*|\1|p' "$TMP/p0.log" | head -1)
  [ -n "$P0" ] && break; kill -0 "$S" 2>/dev/null || break; sleep 0.1; done
if [ -n "$P0" ] && wait_health "$P0" "$S" && python3 - "$P0" <<'EOF2'
import json, sys, urllib.request
t = json.loads(urllib.request.urlopen("http://127.0.0.1:%s/v1/topology" % sys.argv[1], timeout=5).read())
fe = [r for r in t["ranks"] if r["role"] == "frontend"]
assert len(fe) == 2 and all(r["state"] == "live" for r in fe), t
EOF2
then ok "port 0 with 2 front-ends: both accept on the port the kernel picked ($P0)"
else bad "port 0 with 2 front-ends: $(tail -3 "$TMP/p0.log")"; fi
kill -TERM "$S"; wait_exit "$S" 30
[ "$RC" = 0 ] && [ -z "$(stray "$S")" ] || bad "port 0 with 2 front-ends: rc=$RC left: $(stray "$S")"
startup_err "prefill KV pool that does not fit in memory" "prefill instance 0 exited with status 1 before it became ready" \
  X=1 -- -m "$XDS_TEST_MODEL" --prefill 1 --ctx 2000000
startup_err "decode group KV that does not fit in memory" "decode group [01] exited with status 1 before it became ready" \
  X=1 -- -m "$XDS_TEST_MODEL" --decode-dp 2 --kv-blocks 60000000
echo '{"experts": [{"experts": [0, 1]}, {"experts": [1, 2]}]}' >"$TMP/bad-topo.json"
startup_err "topology that cannot place every expert" "cannot place every expert: expert 3 is on no worker" X=1 -- \
  -m "$MOE" --topology "$TMP/bad-topo.json"
echo '{"decode": [{"max_batch": 0}]}' >"$TMP/bad-topo2.json"
startup_err "topology with a zero setting" "decode\[0\].max_batch" X=1 -- -m "$MOE" --topology "$TMP/bad-topo2.json"
"$XDS" serve -m "$MOE" --experts x >"$TMP/err.log" 2>&1; RC=$?
[ "$RC" = 2 ] && grep -q "wants an integer" "$TMP/err.log" && ok "bad --experts value -> exit 2" || bad "bad --experts: rc=$RC"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
