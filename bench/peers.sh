#!/usr/bin/env bash
# peers.sh — xds against the systems it is compared with, on the same weights,
# the same threads and the same load, run alternately in one sitting, so that
# the ratios in docs/PERFORMANCE.md are measured, not quoted.
#
#   bench/peers.sh [micro] [llama-serve] [vllm-serve]     (default: all three)
#
# micro        `xds bench` against llama.cpp's `llama-bench` on the same GGUF:
#              decode at batch 1 (64 tokens from an empty context: llama-bench
#              tg64) and prefill of 128 and 512 tokens as one batch (pp128,
#              pp512), 2 threads, 5 repetitions after a warm-up each; per round
#              one run of each, the order swapped every round.
# llama-serve  `xds serve` against `llama-server` (same GGUF, 2 threads, 16
#              sequences), both started once; per round and workload the same
#              `xds bench-serve` load (a fresh seed per round, so no prompt is
#              ever served twice by one server) goes to one, then the other,
#              the order swapped every round.
# vllm-serve   the same against `vllm serve` on a bf16 Hugging Face copy of
#              the GGUF (the peer reads no GGUF), with `xds serve` from that
#              same bf16 directory and from the GGUF.
# Idle servers stay up while another one is loaded: the CPU time each used
# meanwhile is recorded and printed (a fair run shows ~0).
#
# Environment:
#   ROUNDS=3                  rounds per section
#   OUT=build/peers           results (one JSON per run) and peers.md
#   XDS=build/xds             the binary under test
#   MODEL=~/.cache/xds/models/SmolLM2-135M-Instruct.Q4_1.gguf
#   PEERS=~/.cache/xds-peers  where the peers were built / installed by
#   PEER_SCRIPTS=../shared/peers   llama-cpp.sh, vllm-cpu.sh (README there)
#   PORT=18100                base port (this script uses PORT .. PORT+3)
#   WORKLOADS="16:48:128:128 1:8:128:128"   concurrency:requests:prompt:output
#   THREADS=2
# Writes $OUT/peers.md (bench/peers_table.py) and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}; OUT=${OUT:-build/peers}; XDS=${XDS:-build/xds}; THREADS=${THREADS:-2}
MODEL=${MODEL:-$HOME/.cache/xds/models/SmolLM2-135M-Instruct.Q4_1.gguf}
PEERS=${PEERS:-$HOME/.cache/xds-peers}; PEER_SCRIPTS=${PEER_SCRIPTS:-../shared/peers}
PORT=${PORT:-18100}; WORKLOADS=${WORKLOADS:-"16:48:128:128 1:8:128:128"}
LB=$PEERS/llama.cpp/build/bin
sections=("$@"); [ ${#sections[@]} -gt 0 ] || sections=(micro llama-serve vllm-serve)

die() { echo "peers.sh: error: $*" >&2; exit 1; }
[ -x "$XDS" ] || die "no xds binary at $XDS (build it first)"
[ -f "$MODEL" ] || die "no model at $MODEL (scripts/fetch_model.sh)"
for s in "${sections[@]}"; do
  case $s in
    micro) [ -x "$LB/llama-bench" ] || die "no $LB/llama-bench: run $PEER_SCRIPTS/llama-cpp.sh build GIT_DIR" ;;
    llama-serve) [ -x "$LB/llama-server" ] || die "no $LB/llama-server: run $PEER_SCRIPTS/llama-cpp.sh build GIT_DIR" ;;
    vllm-serve) [ -x "$PEERS/vllm-venv/bin/vllm" ] || die "no vLLM at $PEERS/vllm-venv: run $PEER_SCRIPTS/vllm-cpu.sh install"
                [ -f "$PEER_SCRIPTS/vllm-cpu.sh" ] || die "no $PEER_SCRIPTS/vllm-cpu.sh (set PEER_SCRIPTS)" ;;
    *) die "unknown section '$s' (micro, llama-serve, vllm-serve)" ;;
  esac
done
mkdir -p "$OUT"

PIDS=()
descendants() { local c; for c in $(pgrep -P "$1" 2>/dev/null); do echo "$c"; descendants "$c"; done; }
# SIGTERM each server started here, then SIGKILL whatever of its process tree
# is left after 20 s (vLLM's engine and worker processes are its children)
stop_all() {
  local p all=()
  for p in "${PIDS[@]}"; do all+=("$p" $(descendants "$p")); done
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 200); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  done
  for p in "${all[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  PIDS=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# CPU ticks (user + system) of a process and its children so far
ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# ticks of the whole process tree of a server (vLLM runs an engine-core child)
tree_ticks() {
  local t c
  t=$(ticks "$1")
  for c in $(pgrep -P "$1" 2>/dev/null); do t=$((t + $(tree_ticks "$c"))); done
  echo "$t"
}
wait_health() { # URL PID SECONDS
  for _ in $(seq 1 "$3"); do
    curl -sf "$1/health" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 1
  done
  return 1
}

cpu_model=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
{
  echo "{\"cpu\": \"$cpu_model\", \"nproc\": $(nproc), \"date\": \"$(date -u +%FT%TZ)\","
  echo " \"xds_commit\": \"$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo +dirty)\","
  echo " \"model\": \"$(basename "$MODEL")\", \"threads\": $THREADS, \"rounds\": $ROUNDS,"
  echo " \"llama_commit\": \"$(git -C "$PEERS/llama.cpp" log -1 --format=%h 2>/dev/null || echo none)\","
  echo " \"vllm_version\": \"$("$PEERS/vllm-venv/bin/python" -c 'import vllm; print(vllm.__version__)' 2>/dev/null || echo none)\"}"
} > "$OUT/meta.json"
load() { cut -d' ' -f1 /proc/loadavg; }

# ---- micro: xds bench vs llama-bench ----
run_xds_bench() { # round
  local l0; l0=$(load)
  "$XDS" bench -m "$MODEL" -t "$THREADS" --prompt-lens 128,512 --gen 64 --reps 5 --json \
    > "$OUT/micro-$1-xds.jsonl"
  echo "{\"load_before\": $l0, \"load_after\": $(load)}" > "$OUT/micro-$1-xds.load.json"
}
run_llama_bench() {
  local l0; l0=$(load)
  "$LB/llama-bench" -m "$MODEL" -t "$THREADS" -p 128,512 -n 64 -r 5 -o json \
    > "$OUT/micro-$1-llama.json" 2> "$OUT/micro-$1-llama.err"
  echo "{\"load_before\": $l0, \"load_after\": $(load)}" > "$OUT/micro-$1-llama.load.json"
}
if [[ " ${sections[*]} " == *" micro "* ]]; then
  rm -f "$OUT"/micro-*
  for r in $(seq 1 "$ROUNDS"); do
    echo "micro round $r/$ROUNDS (load $(load))"
    if [ $((r % 2)) -eq 1 ]; then run_xds_bench "$r"; run_llama_bench "$r"
    else run_llama_bench "$r"; run_xds_bench "$r"; fi
  done
fi

# ---- serving ----
# serve_round SECTION ROUND NAME:URL:PID ... : the same loads to each server in
# the given order, one bench-serve per workload, with the others' CPU ticks
serve_load() { # section round wi workload name url pidlist_of_others
  local sec=$1 r=$2 wi=$3 w=$4 name=$5 url=$6; shift 6
  local c n pl ol; IFS=: read -r c n pl ol <<< "$w"
  local seed=$((1000 * wi + r)) f="$OUT/serve-$sec-w$wi-r$r-$name"
  local t0=() p i=0 l0
  for p in "$@"; do t0[i]=$(tree_ticks "$p"); i=$((i + 1)); done
  l0=$(load)
  "$XDS" bench-serve --url "$url" --concurrency "$c" --num-requests "$n" --prompt-len "$pl" \
    --output-len "$ol" --seed "$seed" --json > "$f.json" 2> "$f.err" || true
  local idle=0; i=0
  for p in "$@"; do idle=$((idle + $(tree_ticks "$p") - t0[i])); i=$((i + 1)); done
  echo "{\"load_before\": $l0, \"load_after\": $(load), \"others_cpu_s\": $(awk -v t=$idle -v h="$(getconf CLK_TCK)" 'BEGIN{print t/h}'),"\
       "\"workload\": \"$w\", \"seed\": $seed}" > "$f.meta.json"
}
serve_rounds() { # section name1 url1 pid1 name2 url2 pid2 [name3 url3 pid3]
  local sec=$1; shift
  local names=() urls=() pids=()
  while [ $# -gt 0 ]; do names+=("$1"); urls+=("$2"); pids+=("$3"); shift 3; done
  local k=${#names[@]}
  rm -f "$OUT"/serve-"$sec"-*
  for r in $(seq 1 "$ROUNDS"); do
    local wi=0
    for w in $WORKLOADS; do
      wi=$((wi + 1))
      echo "$sec round $r/$ROUNDS workload $w (load $(load))"
      for j in $(seq 0 $((k - 1))); do
        local x=$(( (j + r - 1) % k )) others=() q  # rotate the order every round
        for q in $(seq 0 $((k - 1))); do [ "$q" = "$x" ] || others+=("${pids[q]}"); done
        serve_load "$sec" "$r" "$wi" "$w" "${names[x]}" "${urls[x]}" "${others[@]}"
      done
    done
  done
}
start_xds_serve() { # model port name -> sets SPID
  "$XDS" serve -m "$1" -t "$THREADS" --max-batch 16 --host 127.0.0.1 --port "$2" > "$OUT/server-$3.log" 2>&1 &
  SPID=$!; PIDS+=("$SPID")
  wait_health "http://127.0.0.1:$2" "$SPID" 300 || die "xds serve ($3) did not start (see $OUT/server-$3.log)"
}

if [[ " ${sections[*]} " == *" llama-serve "* ]]; then
  start_xds_serve "$MODEL" "$PORT" xds; xp=$SPID
  # 16 slots of 1024 tokens each: every workload's prompt + output fits one slot
  "$LB/llama-server" -m "$MODEL" -t "$THREADS" -tb "$THREADS" -np 16 -c 16384 --host 127.0.0.1 \
    --port $((PORT + 1)) > "$OUT/server-llama.log" 2>&1 &
  lp=$!; PIDS+=("$lp")
  wait_health "http://127.0.0.1:$((PORT + 1))" "$lp" 300 || die "llama-server did not start (see $OUT/server-llama.log)"
  serve_rounds llama xds "http://127.0.0.1:$PORT" "$xp" llama "http://127.0.0.1:$((PORT + 1))" "$lp"
  stop_all
fi

if [[ " ${sections[*]} " == *" vllm-serve "* ]]; then
  hf=$PEERS/$(basename "${MODEL%.gguf}")-bf16
  [ -f "$hf/config.json" ] || PEERS=$PEERS bash "$PEER_SCRIPTS/vllm-cpu.sh" model "$MODEL" >/dev/null
  [ -f "$hf/config.json" ] || die "no bf16 copy at $hf"
  start_xds_serve "$MODEL" "$PORT" xds; xp=$SPID
  start_xds_serve "$hf" $((PORT + 2)) xds-bf16; xb=$SPID
  # vllm-cpu.sh waits 300 s for /health; on a busy machine the start-up
  # (torch compile warm-up) takes longer: keep waiting for the same process
  vout=$(PEERS=$PEERS bash "$PEER_SCRIPTS/vllm-cpu.sh" serve "$hf" $((PORT + 3))) || true
  vp=$(sed -n 's/^vllm pid //p' <<< "$vout")
  [ -n "$vp" ] || die "vllm serve did not start: $vout"
  PIDS+=("$vp")
  wait_health "http://127.0.0.1:$((PORT + 3))" "$vp" 1200 || die "vllm serve not ready (see $PEERS/vllm.$((PORT + 3)).log)"
  cp "$PEERS/vllm.$((PORT + 3)).log" "$OUT/server-vllm.log" 2>/dev/null || true
  serve_rounds vllm xds "http://127.0.0.1:$PORT" "$xp" xds-bf16 "http://127.0.0.1:$((PORT + 2))" "$xb" \
    vllm "http://127.0.0.1:$((PORT + 3))" "$vp"
  stop_all
fi

python3 bench/peers_table.py "$OUT" > "$OUT/peers.md"
cat "$OUT/peers.md"
