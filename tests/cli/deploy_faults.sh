#!/usr/bin/env bash
# deploy_faults.sh — faults of every role of a disaggregated deployment, as
# real processes under load (SmolLM2, XDS_TEST_MODEL; skipped when unset, a failure under CI=true).
# Each fault is injected while 8 greedy streaming requests run; every check
# wants zero failed requests (each stream ends with [DONE], no error) and
# every output byte-identical to the fault-free run of the same requests:
#   - a decode group killed (kill -9): its streams continue on the other group
#     (re-prefill of prompt + tokens so far); the group is restarted and
#     rejoins (GET /v1/topology: live, restarts 1);
#   - a decode group stopped (SIGSTOP, SIGCONT later): suspect, then killed
#     after --hang-timeout and restarted;
#   - two faults in a row (both groups, 0.7 s apart);
#   - a crash loop (--restart-max 3): the group is left out ("removed"), the
#     deployment shrinks and still serves; with no group left a request gets
#     503 + Retry-After at once;
#   - a prefill instance killed: its requests are re-routed;
#   - a front-end killed: the other keeps serving the port, it is restarted;
#   - SIGTERM while a group is being restarted: the streams finish, exit 0;
#   - the supervisor killed (kill -9 of its process group): serving goes on; a
#     new `xds serve` on the port refuses with a clear message; SIGTERM to one
#     front-end leaves the other serving, to both ends the rest; the next `xds serve` on the port removes the
#     crashed deployment's shared memory and serves.
#   - a prefill instance and a decode group killed while starting: started
#     again, the deployment comes up and serves the same outputs (a worker
#     that fails on its own at start-up still ends the start with its error:
#     deploy.sh);
#   - the prefill instance killed during a KV transfer (a test hook holds
#     the decode group's pull open): the group computes the prompt itself;
#   - MoE-attention (SmolLM2 upcycled to 4 experts, 2 expert workers
#     serving 2 groups): a decode group stopped: the workers keep running,
#     the group is restarted and taken back;
# Every run ends with no process and no /dev/shm segment left.
# Usage: bash tests/cli/deploy_faults.sh path/to/xds
set -uo pipefail
XDS="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
cd "$(dirname "$0")/../.."
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $*"; }
bad() { failed=$((failed + 1)); echo "FAIL $*"; }
. "$(dirname "$0")/../skip.sh"
. "$(dirname "$0")/../deploy_wait.sh" # wait_started
if [ -z "${XDS_TEST_MODEL:-}" ]; then
  skip_input "fault tests: XDS_TEST_MODEL is not set (scripts/test.sh sets it)" || { echo "0 passed, 1 failed"; exit 1; }
  echo "0 passed, 0 failed, 1 skipped"; exit 77
fi
M="$XDS_TEST_MODEL"
# under sanitizers the model is ~10x slower: shorter streams
if [ "${XDS_SANITIZED:-0}" = 1 ]; then NTOK=24; else NTOK=96; fi
TMP="$(mktemp -d /tmp/xds-deploy-faults.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do for c in $(pgrep -f -- "--segment /xds-serve-$p( |$)|--frontend-of /xds-serve-$p( |$)"); do kill -9 "$c" 2>/dev/null; done; done
  rm -rf "$TMP"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# processes of supervisor $1's deployment still alive (workers and front-ends)
stray() { pgrep -f -- "--segment /xds-serve-$1( |$)|--frontend-of /xds-serve-$1( |$)" | tr '\n' ' ' || true; }
leftover() { ls /dev/shm 2>/dev/null | grep -E -- "-$1(\.|$)|xds-port-$2$" | tr '\n' ' '; }
wait_health() { # port pid: the port answers and the deployment has started
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$1/health" >/dev/null 2>&1 && { wait_started "$1" "$2"; return; }
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
wait_log() { # file pattern seconds
  local end=$((SECONDS + $3))
  while [ $SECONDS -lt $end ]; do grep -Eq -- "$2" "$1" && return 0; sleep 0.1; done
  return 1
}
pid_of() { # supervisor rank -> pid of that rank's process
  pgrep -f -- "--segment /xds-serve-$1 --rank $2 |--frontend-of /xds-serve-$1 --frontend-rank $2( |$)" | head -1
}
# load PORT OUT: 8 concurrent greedy streams; OUT: one JSON list of {text, done, finish, err}
cat >"$TMP/load.py" <<'EOF'
import json, sys, threading, urllib.request
port, out, ntok = sys.argv[1], sys.argv[2], int(sys.argv[3])
prompts = ["The capital of France is", "Write a haiku about the sea.", "1, 2, 3, 4,", "Once upon a time",
           "The best way to learn C is", "List three colors:", "def fib(n):", "Water boils at"]
res = {}
def one(i):
    body = {"prompt": prompts[i], "max_tokens": ntok, "temperature": 0, "stream": True, "ignore_eos": True}
    req = urllib.request.Request("http://127.0.0.1:%s/v1/completions" % port, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    text, done, fin, err = "", False, None, None
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            for line in r:
                line = line.decode().strip()
                if not line.startswith("data: "): continue
                if line == "data: [DONE]": done = True; break
                j = json.loads(line[6:])
                if "error" in j: err = j["error"]; continue
                c = j["choices"][0]; text += c.get("text", "")
                fin = c.get("finish_reason") or fin
    except Exception as e:
        err = repr(e)
    res[i] = {"text": text, "done": done, "finish": fin, "err": err}
ts = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
[t.start() for t in ts]; [t.join() for t in ts]
json.dump([res[i] for i in range(len(prompts))], open(out, "w"))
EOF
load() { python3 "$TMP/load.py" "$1" "$2" "$NTOK"; }
# same REF GOT -> 0 if every stream finished cleanly with the reference's text
same() {
  python3 - "$1" "$2" <<'EOF'
import json, sys
ref, got = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
bad = [i for i, (r, g) in enumerate(zip(ref, got)) if not g["done"] or g["err"] or g["finish"] != "length" or g["text"] != r["text"]]
if bad or len(got) != len(ref):
    print("streams differing or failed: %s; first: %r vs %r" % (bad, got[bad[0]] if bad else None, ref[bad[0]] if bad else None))
    sys.exit(1)
EOF
}
topo_state() { # port rank -> "state restarts"
  curl -s "http://127.0.0.1:$1/v1/topology" | python3 -c "
import json, sys
t = json.load(sys.stdin)
r = [x for x in t['ranks'] if x['rank'] == $2][0]
print(r['state'], r['restarts'])"
}
wait_state() { # port rank "state restarts" seconds
  local end=$((SECONDS + $4))
  while [ $SECONDS -lt $end ]; do [ "$(topo_state "$1" "$2" 2>/dev/null)" = "$3" ] && return 0; sleep 0.1; done
  return 1
}
finish() { # label supervisor port: SIGTERM -> exit 0, nothing left
  kill -TERM "$2"; wait_exit "$2" 60
  sleep 0.3
  [ "$RC" = 0 ] && [ -z "$(stray "$2")" ] && [ -z "$(leftover "$2" "$3")" ] && ok "$1: SIGTERM -> exit 0, no process or segment left" \
    || bad "$1: rc=$RC left: $(stray "$2") $(leftover "$2" "$3")"
}

# ---- A: two decode groups, one front-end (ranks: 0 supervisor, 1 front-end, 2 group 0, 3 group 1) ----
P=$(free_port)
"$XDS" serve -m "$M" --port "$P" -t 1 --decode-dp 2 --frontends 1 --restart-max 3 --restart-window 600 >"$TMP/a.log" 2>&1 & S=$!; PIDS+=("$S")
if wait_health "$P" "$S"; then
  load "$P" "$TMP/ref.json"
  python3 -c "import json,sys; r=json.load(open('$TMP/ref.json')); sys.exit(not all(x['done'] and not x['err'] for x in r))" \
    && ok "A: fault-free reference run" || bad "A: reference run failed: $(cat "$TMP/ref.json")"
  # kill -9 of group 0 mid-stream
  load "$P" "$TMP/f1.json" & L=$!
  sleep 1; G=$(pid_of "$S" 2); kill -9 "$G"; wait "$L"
  same "$TMP/ref.json" "$TMP/f1.json" && ok "A: decode group killed mid-stream: 8 streams complete, byte-identical" \
    || bad "A: killed group: $(tail -5 "$TMP/a.log")"
  grep -q "decode group 0 (rank 2, pid $G) was killed by signal 9 (Killed); restarting it" "$TMP/a.log" \
    && grep -Eq "decode group 0 \(rank 2\) lost .*; [1-9] requests continue on another group" "$TMP/a.log" \
    && ok "A: one log line per event (death, failover)" || bad "A: log: $(grep -E 'group 0' "$TMP/a.log" | tail -4)"
  wait_state "$P" 2 "live 1" 30 && ok "A: group 0 restarted and live again (restarts 1)" || bad "A: topology: $(topo_state "$P" 2)"
  # SIGSTOP of group 1: suspect, killed after the hang timeout, restarted
  load "$P" "$TMP/f2.json" & L=$!
  sleep 1; G=$(pid_of "$S" 3); kill -STOP "$G"
  wait_log "$TMP/a.log" "decode group 1 \(rank 3, pid $G\) hung" 20; kill -CONT "$G" 2>/dev/null; wait "$L"
  same "$TMP/ref.json" "$TMP/f2.json" && ok "A: decode group stopped (SIGSTOP): streams complete, byte-identical" \
    || bad "A: stopped group: $(tail -5 "$TMP/a.log")"
  grep -q "decode group 1 (rank 3, pid $G) is suspect: stopped" "$TMP/a.log" && ok "A: stopped group marked suspect, then killed" \
    || bad "A: no suspect line: $(tail -4 "$TMP/a.log")"
  wait_state "$P" 3 "live 1" 30 || bad "A: group 1 not live again: $(topo_state "$P" 3)"
  wait_state "$P" 2 "live 1" 30 || bad "A: group 0 not live: $(topo_state "$P" 2)"
  # two faults in a row
  load "$P" "$TMP/f3.json" & L=$!
  sleep 1; kill -9 "$(pid_of "$S" 2)"; sleep 0.7; kill -9 "$(pid_of "$S" 3)"; wait "$L"
  same "$TMP/ref.json" "$TMP/f3.json" && ok "A: two faults in a row (both groups): streams complete, byte-identical" \
    || bad "A: two faults: $(tail -6 "$TMP/a.log")"
  wait_state "$P" 2 "live 2" 30 && wait_state "$P" 3 "live 2" 30 && ok "A: both groups restarted again (restarts 2)" \
    || bad "A: after two faults: $(topo_state "$P" 2) / $(topo_state "$P" 3)"
  # crash loop: a third exit within the window leaves group 1 out; the deployment shrinks
  kill -9 "$(pid_of "$S" 3)"
  wait_state "$P" 3 "removed 2" 10 && grep -q "decode group 1 (rank 3, pid [0-9]*) .*: 3 exits within 600 s; left out" "$TMP/a.log" \
    && ok "A: crash loop: group 1 left out (state removed)" || bad "A: crash loop: $(topo_state "$P" 3) $(tail -3 "$TMP/a.log")"
  load "$P" "$TMP/f4.json"
  same "$TMP/ref.json" "$TMP/f4.json" && ok "A: shrunk to one group: streams complete, byte-identical" || bad "A: shrunk deployment"
  kill -9 "$(pid_of "$S" 2)"
  wait_state "$P" 2 "removed 2" 10 || bad "A: group 0 not removed: $(topo_state "$P" 2)"
  # /metrics of the front-end: the deployment's fault counts (supervisor, front-end and groups add to them)
  # A so far: exits 1 + 2 + 1 + 1 (the last two left out, not restarted), 1 hang; 4 restarts, each rejoined
  curl -s "http://127.0.0.1:$P/metrics" >"$TMP/a.prom"
  python3 - "$TMP/a.prom" <<'EOF' && ok "A: /metrics counts the faults (5 exits, 1 hang, 4 restarts and recoveries, failovers, replays)" \
    || bad "A: /metrics: $(grep '^xds_fault' "$TMP/a.prom" | grep -v ' 0$' | tr '\n' ' ')"
import sys
v = {}
for line in open(sys.argv[1]):
    if line.startswith("xds_fault"):
        k, x = line.rsplit(" ", 1); v[k] = float(x)
want = {'xds_fault_failures_detected_total{role="decode",cause="exit"}': 5,
        'xds_fault_failures_detected_total{role="decode",cause="hang"}': 1,
        'xds_fault_failures_detected_total{role="expert",cause="exit"}': 0,
        'xds_fault_restarts_total{role="decode"}': 4,
        'xds_fault_recovery_seconds_count{role="decode"}': 4}
for k, x in want.items(): assert v.get(k) == x, (k, v.get(k))
assert v['xds_fault_failovers_total{role="decode"}'] >= 2, v  # the crash-loop kills had no request on the group
assert v["xds_fault_requests_replayed_total"] >= 4, v  # the first kill alone moved 4 streams
assert 0 < v['xds_fault_recovery_seconds_sum{role="decode"}'] < 4 * 30, v
EOF
  H=$(curl -s -o /dev/null -D - -w '%{http_code}' --max-time 10 "http://127.0.0.1:$P/v1/completions" -H 'Content-Type: application/json' \
      -d '{"prompt": "Hi", "max_tokens": 4}')
  echo "$H" | grep -qi '^retry-after: [0-9]' && [ "${H: -3}" = 503 ] && ok "A: no decode group left: 503 with Retry-After at once" \
    || bad "A: no capacity: $H"
  finish "A" "$S" "$P"
else bad "A: did not come up: $(tail -5 "$TMP/a.log")"; fi

# ---- B: prefill instance + 2 groups + 2 front-ends (ranks: 1,2 front-ends, 3 prefill, 4,5 groups) ----
P=$(free_port)
"$XDS" serve -m "$M" --port "$P" -t 1 --prefill 1 --decode-dp 2 --frontends 2 >"$TMP/b.log" 2>&1 & S=$!; PIDS+=("$S")
if wait_health "$P" "$S"; then
  load "$P" "$TMP/refb.json"
  same "$TMP/ref.json" "$TMP/refb.json" && ok "B: prefill + 2 groups + 2 front-ends: same outputs as A" || bad "B: reference differs"
  load "$P" "$TMP/g1.json" & L=$!
  sleep 0.3; W=$(pid_of "$S" 3); kill -9 "$W"; wait "$L"
  same "$TMP/ref.json" "$TMP/g1.json" && ok "B: prefill instance killed: its requests re-routed, byte-identical" \
    || bad "B: killed prefill: $(tail -5 "$TMP/b.log")"
  wait_state "$P" 3 "live 1" 30 && ok "B: prefill instance restarted" || bad "B: prefill: $(topo_state "$P" 3)"
  F=$(pid_of "$S" 2); kill -9 "$F"
  load "$P" "$TMP/g2.json"
  same "$TMP/ref.json" "$TMP/g2.json" && ok "B: front-end killed: the other serves the port, byte-identical" \
    || bad "B: killed front-end: $(tail -5 "$TMP/b.log")"
  wait_state "$P" 2 "live 1" 30 && ok "B: front-end restarted" || bad "B: front-end: $(topo_state "$P" 2)"
  # SIGTERM while a group is being restarted: the streams still finish
  load "$P" "$TMP/g3.json" & L=$!
  sleep 1; kill -9 "$(pid_of "$S" 4)"; sleep 0.1; kill -TERM "$S"; wait "$L"
  same "$TMP/ref.json" "$TMP/g3.json" && ok "B: SIGTERM during recovery: streams complete, byte-identical" \
    || bad "B: SIGTERM in recovery: $(tail -5 "$TMP/b.log")"
  wait_exit "$S" 60; sleep 0.3
  [ "$RC" = 0 ] && [ -z "$(stray "$S")" ] && [ -z "$(leftover "$S" "$P")" ] && ok "B: then exit 0, no process or segment left" \
    || bad "B: rc=$RC left: $(stray "$S") $(leftover "$S" "$P")"
else bad "B: did not come up: $(tail -5 "$TMP/b.log")"; fi

# ---- C: the supervisor killed (SIGKILL to its process group; default two front-ends, ranks 1 and 2) ----
P=$(free_port)
setsid "$XDS" serve -m "$M" --port "$P" -t 1 --decode-dp 2 >"$TMP/c.log" 2>&1 & S=$!; PIDS+=("$S")
if wait_health "$P" "$S"; then
  load "$P" "$TMP/h1.json" & L=$!
  sleep 1; kill -9 -- "-$S"; wait "$L"
  same "$TMP/ref.json" "$TMP/h1.json" && ok "C: supervisor killed mid-stream: streams complete, byte-identical" \
    || bad "C: killed supervisor: $(tail -5 "$TMP/c.log")"
  load "$P" "$TMP/h2.json"
  same "$TMP/ref.json" "$TMP/h2.json" && ok "C: without a supervisor the deployment keeps serving" || bad "C: after the supervisor"
  "$XDS" serve -m "$M" --port "$P" -t 1 --decode-dp 2 >"$TMP/c2.log" 2>&1; RC=$?
  [ "$RC" = 1 ] && grep -q "port $P is already served by deployment /xds-serve-$S (supervisor pid $S, gone)" "$TMP/c2.log" \
    && ok "C: a new supervisor on the port refuses with a clear message" || bad "C: second supervisor: rc=$RC $(tail -2 "$TMP/c2.log")"
  F1=$(pid_of "$S" 1); F2=$(pid_of "$S" 2)
  kill -TERM "$F1"; sleep 1
  [ -n "$(stray "$S")" ] && load "$P" "$TMP/h2b.json" && same "$TMP/ref.json" "$TMP/h2b.json" \
    && ok "C: one front-end stopped: the other still serves the port" || bad "C: after one front-end: $(stray "$S")"
  kill -TERM "$F2"
  end=$((SECONDS + 30)); while [ -n "$(stray "$S")" ] && [ $SECONDS -lt $end ]; do sleep 0.2; done
  [ -z "$(stray "$S")" ] && ok "C: SIGTERM to both front-ends ends the orphaned deployment: no process left" \
    || bad "C: left: $(stray "$S")"
  "$XDS" serve -m "$M" --port "$P" -t 1 --decode-dp 2 >"$TMP/c3.log" 2>&1 & S2=$!; PIDS+=("$S2")
  if wait_health "$P" "$S2"; then
    grep -q "removing the shared memory of a crashed deployment on port $P (supervisor pid $S): /xds-serve-$S" "$TMP/c3.log" \
      && [ -z "$(leftover "$S" x)" ] && ok "C: the next supervisor removes the crashed deployment's segments" \
      || bad "C: stale segments: $(head -3 "$TMP/c3.log") $(leftover "$S" x)"
    load "$P" "$TMP/h3.json"
    same "$TMP/ref.json" "$TMP/h3.json" && ok "C: and serves the same outputs" || bad "C: new deployment"
    finish "C" "$S2" "$P"
  else bad "C: new deployment did not come up: $(tail -3 "$TMP/c3.log")"; fi
else bad "C: did not come up: $(tail -5 "$TMP/c.log")"; fi

# ---- D: faults during start-up: a prefill instance and a decode group killed while they load ----
P=$(free_port)
"$XDS" serve -m "$M" --port "$P" -t 1 --prefill 1 --decode-dp 2 --frontends 1 >"$TMP/d.log" 2>&1 & S=$!; PIDS+=("$S")
# ranks: 1 front-end, 2 prefill, 3 and 4 decode groups; kill 2 and 3 as soon as they exist
K2=""; K3=""; for _ in $(seq 1 200); do
  [ -z "$K2" ] && W=$(pid_of "$S" 2) && [ -n "$W" ] && kill -9 "$W" && K2=$W
  [ -z "$K3" ] && W=$(pid_of "$S" 3) && [ -n "$W" ] && kill -9 "$W" && K3=$W
  [ -n "$K2" ] && [ -n "$K3" ] && break; sleep 0.02; done
if [ -n "$K2" ] && [ -n "$K3" ] && wait_health "$P" "$S"; then
  grep -q "prefill instance 0 (rank 2, pid $K2) was killed by signal 9 (Killed) while starting; starting it again" "$TMP/d.log" \
    && grep -q "decode group 0 (rank 3, pid $K3) was killed by signal 9 (Killed) while starting; starting it again" "$TMP/d.log" \
    && ok "D: killed while starting: both started again (one log line each)" || bad "D: log: $(head -8 "$TMP/d.log")"
  load "$P" "$TMP/d1.json"
  same "$TMP/ref.json" "$TMP/d1.json" && ok "D: then serves 8 streams, byte-identical" || bad "D: outputs $(tail -3 "$TMP/d.log")"
  curl -s "http://127.0.0.1:$P/metrics" >"$TMP/d.prom"
  grep -q '^xds_fault_restarts_total{role="decode"} 1$' "$TMP/d.prom" && grep -q '^xds_fault_restarts_total{role="prefill"} 1$' "$TMP/d.prom" \
    && grep -q '^xds_fault_recovery_seconds_count{role="decode"} 1$' "$TMP/d.prom" \
    && ok "D: /metrics counts the start-up restarts" \
    || bad "D: /metrics: $(grep -E '^xds_fault_(restarts|failures)' "$TMP/d.prom" | tr '\n' ' ') $(grep -E 'starting|restart' "$TMP/d.log" | tr '\n' ' ')"
  finish "D" "$S" "$P"
else bad "D: killed during start-up: killed '$K2' '$K3', did not come up: $(tail -5 "$TMP/d.log")"; fi

# ---- E: the prefill instance killed during a KV transfer (ranks: 1 front-end, 2 prefill, 3 decode group) ----
# the test hook makes each KV pull of the decode group announce itself and wait 400 ms before reading the rows
P=$(free_port)
XDS_TEST_KV_PULL_DELAY_MS=400 "$XDS" serve -m "$M" --port "$P" -t 1 --prefill 1 --decode-dp 1 --frontends 1 \
  >"$TMP/e.log" 2>&1 & S=$!; PIDS+=("$S")
if wait_health "$P" "$S"; then
  load "$P" "$TMP/e1.json" & L=$!
  if wait_log "$TMP/e.log" "test hook: pulling the KV of request" 30; then W=$(pid_of "$S" 2); kill -9 "$W"; fi
  wait "$L"
  same "$TMP/ref.json" "$TMP/e1.json" && ok "E: prefill instance killed during a KV transfer: streams complete, byte-identical" \
    || bad "E: killed in transfer: $(tail -5 "$TMP/e.log")"
  wait_log "$TMP/e.log" "KV pull failed" 10 && ok "E: the decode group's pull failed and it computed the prompt itself" \
    || bad "E: no failed pull: $(grep -E 'test hook|lost' "$TMP/e.log" | head -3)"
  wait_state "$P" 2 "live 1" 30 && ok "E: prefill instance restarted" || bad "E: prefill: $(topo_state "$P" 2)"
  finish "E" "$S" "$P"
else bad "E: did not come up: $(tail -5 "$TMP/e.log")"; fi

# ---- F: MoE-attention, a decode group stopped (SIGSTOP) while the expert workers serve both groups ----
# (ranks: 1, 2 expert workers, 3 front-end, 4 and 5 decode groups; a chaos run found the workers exiting
# over a hung attention rank and a restarted worker waiting on it, which ended the deployment)
MOE="$TMP/moe.gguf"
if "$XDS" upcycle -m "$M" -o "$MOE" -E 4 -k 2 --perturb 0.5 >/dev/null 2>&1; then
  P=$(free_port)
  "$XDS" serve -m "$MOE" --port "$P" -t 1 --decode-dp 2 --experts 2 --frontends 1 >"$TMP/f.log" 2>&1 & S=$!; PIDS+=("$S")
  if wait_health "$P" "$S"; then
    load "$P" "$TMP/fref.json"
    python3 -c "import json,sys; r=json.load(open('$TMP/fref.json')); sys.exit(not all(x['done'] and not x['err'] for x in r))" \
      && ok "F: MoE fault-free reference run" || bad "F: reference run failed"
    E1=$(pid_of "$S" 1); E2=$(pid_of "$S" 2)
    load "$P" "$TMP/f5.json" & L=$!
    sleep 1; G=$(pid_of "$S" 4); kill -STOP "$G"
    wait_log "$TMP/f.log" "decode group 0 \(rank 4, pid $G\) hung" 20; kill -CONT "$G" 2>/dev/null; wait "$L"
    same "$TMP/fref.json" "$TMP/f5.json" && ok "F: decode group stopped under MoE-attention: streams complete, byte-identical" \
      || bad "F: stopped group: $(grep -vE 'topology|continues on' "$TMP/f.log" | tail -6)"
    wait_state "$P" 4 "live 1" 30 && [ "$(pid_of "$S" 1)" = "$E1" ] && [ "$(pid_of "$S" 2)" = "$E2" ] \
      && ok "F: group 0 restarted and taken back; the expert workers kept running" \
      || bad "F: after the stop: $(topo_state "$P" 4); workers $E1 $E2 now $(pid_of "$S" 1) $(pid_of "$S" 2)"
    load "$P" "$TMP/f6.json"
    same "$TMP/fref.json" "$TMP/f6.json" && ok "F: then both groups serve, byte-identical" || bad "F: after recovery"
    finish "F" "$S" "$P"
  else bad "F: did not come up: $(tail -5 "$TMP/f.log")"; fi
else bad "F: upcycle SmolLM2 to 4 experts"; fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
