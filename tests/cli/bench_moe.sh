#!/usr/bin/env bash
# bench_moe.sh — `xds bench --moe-only --json` on the tiny qwen3_moe fixture:
# one JSON line per batch size with the step time, the bytes read (the hit
# experts no more than all of them), a bound and its kind, and the bandwidth
# probes between its steps (slowest, fastest) and the huge-page share of
# the repacked weights; and the full bench's batch-1 decode, whose bytes per
# token must count the routed experts the steps hit, not all of them.
# Checks the report's shape and consistency, never a speed. Usage: bash tests/cli/bench_moe.sh path/to/xds
set -uo pipefail
XDS="$1"
cd "$(dirname "$0")/../.."
OUT=$("$XDS" bench -m tests/data/oracle/moe/qwen3moe_gqa_sparse -t 1 --moe-only --reps 1 --json --moe-ctx 8 \
      --moe-batches 1,3 2>&1)
rc=$?
# the full bench (prefill, batch-1 decode) on the same fixture: the decode's
# bytes per token count only the experts hit (top-k of n per MoE layer)
FULL=$("$XDS" bench -m tests/data/oracle/moe/qwen3moe_gqa_sparse -t 1 --reps 1 --json --gen 6 --prompt-lens 8 \
      --moe-ctx 8 --moe-batches 1 2>&1)
rc2=$?
python3 - "$rc" "$OUT" "$rc2" "$FULL" <<'PY'
import json, sys
rc, out, rc2, full = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
lines = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
moe = [l for l in lines if l.get("kind") == "moe_decode"]
fl = [json.loads(l) for l in full.splitlines() if l.startswith("{")]
bnd = [l for l in fl if l.get("kind") == "bounds"]
dec = [l for l in fl if l.get("kind") == "decode"]
d = dec[0] if len(dec) == 1 else None
def near(a, b): return abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1)
checks = [
    ("full bench: exit status 0, one bounds and one decode line", rc2 == 0 and len(bnd) == 1 and d is not None),
    ("decode: a top-k of n MoE model (k < n)", d is not None and 0 < d["n_expert_used"] < d["n_expert"]),
    # batch 1: every MoE layer runs exactly k experts, each read once
    ("decode: experts hit per token = all experts x k / n",
     d is not None and near(d["expert_bytes_per_tok"], d["expert_bytes_all"] * d["n_expert_used"] / d["n_expert"])),
    ("decode: weights per token = all weights - all experts + experts hit",
     d is not None and len(bnd) == 1 and near(d["weight_bytes"], bnd[0]["weight_bytes"] - d["expert_bytes_all"] + d["expert_bytes_per_tok"])),
    ("decode: bound = bandwidth / (weights + KV per token)",
     d is not None and near(d["bytes_per_tok"], d["weight_bytes"] + d["kv_bytes_per_tok"])
     and abs(d["bound_tok_s"] - d["bw_gbps"] * 1e9 / d["bytes_per_tok"]) <= 0.01 * d["bound_tok_s"]),

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
if bad: print(out); print(full)
print("%d passed, %d failed" % (len(checks) - bad, bad))
sys.exit(1 if bad else 0)
PY
