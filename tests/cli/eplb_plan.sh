#!/usr/bin/env bash
# eplb_plan.sh — `xds eplb-plan` end to end: a load file's plan (text and
# --json; the JSON's placements checked by python3: every worker
# ceil(E/W) + S distinct experts, replica counts summing to the physical
# slots, the predicted worker loads recomputed from the placement and the
# load, balance no worse than before); --synthetic reproducible by seed and
# the same plan from its --save-load file; every bad input (ragged layers,
# negative or fractional counts, not JSON, W > E, a budget a worker cannot
# hold, a missing file, bad options) one "xds eplb-plan: error:" line with
# status 1 (bad input) or 2 (usage), never a crash. Usage: bash tests/cli/eplb_plan.sh path/to/xds
set -u
. "$(dirname "$0")/../skip.sh"
XDS=${1:?usage: eplb_plan.sh path/to/xds}
T=$(mktemp -d /tmp/xds_eplb_cli_XXXXXX)
trap 'rm -rf "$T"' EXIT
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }

expect() { # expect STATUS MENTION ARGS...
  local want=$1 mention=$2
  shift 2
  "$XDS" eplb-plan "$@" >"$T/out" 2>"$T/err"
  local rc=$?
  if [ "$rc" -ne "$want" ]; then bad "eplb-plan $*: status $rc, want $want ($(head -c 300 "$T/err"))"; return; fi
  if ! grep -q -- "^xds eplb-plan: error: .*$mention" "$T/err"; then bad "eplb-plan $*: stderr lacks '$mention': $(cat "$T/err")"; return; fi
  [ "$(grep -c '^xds eplb-plan: error:' "$T/err")" -eq 1 ] || { bad "eplb-plan $*: not one error line"; return; }
  [ -s "$T/out" ] && [ "$want" -eq 1 ] && { bad "eplb-plan $*: printed a plan on error"; return; }
  ok
}

# a skewed 3-layer x 8-expert load
cat >"$T/load.json" <<'EOF'
[[900, 10, 20, 30, 40, 50, 60, 70],
 [5, 5, 5, 5, 5, 5, 5, 400],
 [0, 0, 0, 0, 0, 0, 0, 0]]
EOF
if "$XDS" eplb-plan --load "$T/load.json" --workers 4 --slots 1 >"$T/out" 2>"$T/err"; then
  grep -q "4 expert workers x 3 slots (2 + 1 redundant) = 12 physical experts" "$T/out" && ok || bad "text header: $(cat "$T/out")"
  grep -q "^  before " "$T/out" && grep -q "^  after " "$T/out" && ok || bad "text summary: $(cat "$T/out")"
  grep -q "^layer   0 .*replicated: 0x" "$T/out" && ok || bad "layer 0 should replicate expert 0: $(cat "$T/out")"
else
  bad "eplb-plan --load: $(cat "$T/err")"
fi
"$XDS" eplb-plan --load "$T/load.json" --workers 4 --slots 1 --placements >"$T/out" 2>"$T/err" \
  && [ "$(grep -c '^  placement [0-9,;]*$' "$T/out")" -eq 3 ] && ok || bad "--placements: $(cat "$T/out" "$T/err")"

check_json() { # check_json FILE.json LOAD.json W S
  python3 - "$@" <<'EOF'
import json, sys
plan = json.load(open(sys.argv[1])); load = json.load(open(sys.argv[2]))
W, S = int(sys.argv[3]), int(sys.argv[4])
E, L = len(load[0]), len(load)
K = -(-E // W) + S
assert plan["experts"] == E and plan["layers"] == L and plan["workers"] == W, "shape"
assert plan["slots_per_worker"] == K and plan["physical_slots"] == W * K, "budget"
smax = smean = bmax = 0.0
for l, lp in enumerate(plan["plan"]):
    ws = lp["workers"]
    assert len(ws) == W and all(len(w) == K and len(set(w)) == K for w in ws), f"layer {l}: slots"
    reps = [sum(e in w for w in ws) for e in range(E)]
    assert reps == lp["replicas"] and min(reps) >= 1 and sum(reps) == W * K, f"layer {l}: replicas"
    wl = [sum(load[l][e] / reps[e] for e in w) for w in ws]
    assert all(abs(a - b) <= 1e-6 * (1 + a) for a, b in zip(wl, lp["worker_load"])), f"layer {l}: worker loads"
    mean = sum(load[l]) / W
    if mean > 0:
        assert abs(max(wl) / mean - lp["after_max_mean"]) < 1e-6, f"layer {l}: max/mean"
    assert lp["after_max_mean"] <= lp["before_max_mean"] + 1e-9, f"layer {l}: worse than before"
    smax += max(wl); smean += mean
assert abs((smax / smean if smean else 1.0) - plan["after"]["max_mean"]) < 1e-6, "total max/mean"
print("ok", plan["before"]["max_mean"], plan["after"]["max_mean"])
EOF
}
if "$XDS" eplb-plan --load "$T/load.json" --workers 4 --slots 1 --json >"$T/plan.json" 2>"$T/err"; then
  check_json "$T/plan.json" "$T/load.json" 4 1 >"$T/py" 2>&1 && ok || bad "JSON plan: $(cat "$T/py")"
else
  bad "eplb-plan --json: $(cat "$T/err")"
fi

# synthetic: reproducible, and the saved load gives the same plan
"$XDS" eplb-plan --synthetic 64,4 --hot 10 --seed 3 --workers 8 --slots 2 --json --save-load "$T/syn.json" >"$T/a.json" 2>"$T/err" || bad "synthetic: $(cat "$T/err")"
"$XDS" eplb-plan --synthetic 64,4 --hot 10 --seed 3 --workers 8 --slots 2 --json >"$T/b.json" 2>&1
cmp -s "$T/a.json" "$T/b.json" && ok || bad "the same seed gave another plan"
"$XDS" eplb-plan --synthetic 64,4 --hot 10 --seed 4 --workers 8 --slots 2 --json >"$T/c.json" 2>&1
cmp -s "$T/a.json" "$T/c.json" && bad "another seed gave the same plan" || ok
"$XDS" eplb-plan --load "$T/syn.json" --workers 8 --slots 2 --json >"$T/d.json" 2>&1
cmp -s "$T/a.json" "$T/d.json" && ok || bad "the saved load gave another plan"
check_json "$T/a.json" "$T/syn.json" 8 2 >"$T/py" 2>&1 && ok || bad "synthetic JSON plan: $(cat "$T/py")"

# bad input: status 1
printf '[[1, 2, 3], [4, 5]]' >"$T/ragged.json"
expect 1 "layer 1 has 2 experts, layer 0 has 3" --load "$T/ragged.json" --workers 2
printf '[[1, -2, 3]]' >"$T/neg.json"
expect 1 "layer 0, expert 1: negative" --load "$T/neg.json" --workers 2
printf '[[1, 2.5, 3]]' >"$T/frac.json"
expect 1 "2.5 is not an integer" --load "$T/frac.json" --workers 2
printf '[[1, 2, 3]' >"$T/trunc.json"
expect 1 "not JSON" --load "$T/trunc.json" --workers 2
printf '[]' >"$T/empty.json"
expect 1 "0 layers" --load "$T/empty.json" --workers 2
printf '{"load": [[1]]}' >"$T/obj.json"
expect 1 "expected an array" --load "$T/obj.json" --workers 1
expect 1 "cannot open" --load "$T/nonexistent.json" --workers 2
expect 1 "9 expert workers for 8 experts" --load "$T/load.json" --workers 9
expect 1 "S must be 0..6" --load "$T/load.json" --workers 4 --slots 7
expect 1 "--workers 0: out of range" --load "$T/load.json" --workers 0
expect 1 "--workers 64: out of range" --load "$T/load.json" --workers 64
expect 1 "--slots -1: out of range" --load "$T/load.json" --workers 2 --slots -1
expect 1 "more than 30 experts" --synthetic 16,2 --workers 2
expect 1 "fraction above the mean" --synthetic 64,2 --above 0.9 --workers 2
expect 1 "0 layers" --synthetic 64,0 --workers 2
expect 1 "--save-load" --synthetic 64,2 --hot 10 --workers 2 --save-load "$T/no/such/dir/l.json"
# usage: status 2
expect 2 "--workers W is required" --load "$T/load.json"
expect 2 "exactly one of" --workers 2
expect 2 "exactly one of" --load "$T/load.json" --synthetic 64,2 --workers 2
expect 2 "--workers x: expected an integer" --load "$T/load.json" --workers x
expect 2 "--synthetic 64: expected E,L" --synthetic 64 --workers 2
expect 2 "--synthetic 64,x: expected E,L" --synthetic 64,x --workers 2
expect 2 "--seed q" --synthetic 64,2 --seed q --workers 2
expect 2 "unexpected argument" --load "$T/load.json" --workers 2 extra
"$XDS" eplb-plan --help >"$T/out" 2>&1 && grep -q "usage: xds eplb-plan" "$T/out" && ok || bad "--help"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
