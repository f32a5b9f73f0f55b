#!/usr/bin/env bash
# bench_moe.sh — `xds bench --moe-only --json` on the tiny qwen3_moe fixture:
# one JSON line per batch size with the step time, the bytes read (the hit
# experts no more than all of them), a bound and its kind, and the bandwidth
# probes between its steps (slowest, fastest) and the huge-page share of
# the repacked weights. Checks the report's shape and consistency, never
# a speed. Usage: bash tests/cli/bench_moe.sh path/to/xds
set -uo pipefail
XDS="$1"
cd "$(dirname "$0")/../.."
OUT=$("$XDS" bench -m tests/data/oracle/moe/qwen3moe_gqa_sparse -t 1 --moe-only --reps 1 --json --moe-ctx 8 \
      --moe-batches 1,3 2>&1)
rc=$?
python3 - "$rc" "$OUT" <<'PY'
import json, sys
rc, out = int(sys.argv[1]), sys.argv[2]
lines = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
moe = [l for l in lines if l.get("kind") == "moe_decode"]
checks = [
    ("exit status 0", rc == 0),
    ("one moe_decode line per batch size", [l["batch"] for l in moe] == [1, 3]),
    ("positive step times and bounds", all(l["t_med_s"] > 0 and l["bound_s"] > 0 for l in moe)),
    ("hit experts <= all experts <= bytes", all(0 < l["expert_bytes"] <= l["expert_bytes_all"] and l["expert_bytes"] <= l["bytes"] for l in moe)),
    ("bound kind named", all(l["bound_by"] in ("bandwidth", "compute") for l in moe)),
    ("bandwidth probes: 0 < min <= max", all(len(l["bw_gbs_min_max"]) == 2 and 0 < l["bw_gbs_min_max"][0] <= l["bw_gbs_min_max"][1] for l in moe)),
    ("huge-page share a fraction (or -1: nothing repacked)", all(l["huge_share"] == -1 or 0 <= l["huge_share"] <= 1 for l in moe)),
    ("more tokens read at least as many expert bytes", len(moe) == 2 and moe[1]["expert_bytes"] >= moe[0]["expert_bytes"]),
]
bad = 0
for name, ok in checks:
    print(("ok   " if ok else "FAIL ") + name)
    bad += not ok
if bad: print(out)
print("%d passed, %d failed" % (len(checks) - bad, bad))
sys.exit(1 if bad else 0)
PY
