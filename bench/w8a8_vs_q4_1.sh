#!/usr/bin/env bash
# w8a8_vs_q4_1.sh — SmolLM2 (or any GGUF) decode batch 1 and prefill 512 as
# the file holds it (Q4_1) and with --quantize w8a8, in one run: the two
# `xds bench` runs alternate ROUNDS times (each measuring its own read
# bandwidth and int8 peak right before), and the table keeps each one's best
# round (min time over its reps), with its own bound. On a shared machine the
# alternation puts both under the same conditions.
# Usage: bench/w8a8_vs_q4_1.sh [xds] [model] [threads (1)] [rounds (3)]
set -eu
XDS=${1:-build/xds}
M=${2:-${XDS_TEST_MODEL:?model path or XDS_TEST_MODEL}}
T=${3:-1}
R=${4:-3}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for r in $(seq 1 "$R"); do
  for q in none w8a8; do
    flock /tmp/xds-bench.lock "$XDS" bench -m "$M" -t "$T" --prompt-lens 512 --gen 64 --reps 3 --quantize "$q" --json 2>/dev/null |
      sed "s/^{/{\"quantize\":\"$q\",/" >>"$out"
  done
done
lscpu | grep 'Model name' || true
python3 - "$out" "$T" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
best = {}
for q in ("none", "w8a8"):
    b = [r for r in rows if r["quantize"] == q]
    pre = max((r for r in b if r["kind"] == "prefill"), key=lambda r: r["tok_s_max"])
    dec = max((r for r in b if r["kind"] == "decode"), key=lambda r: r["frac_bound"])
    bnd = [r for r in b if r["kind"] == "bounds"]
    best[q] = (pre, dec, bnd)
print(f"threads {sys.argv[2]}, kernels {rows[0]['level']}, best of {len(best['none'][2])} alternating rounds")
print("| | Q4_1 (file) | W8A8 (--quantize w8a8) | W8A8 / Q4_1 |")
print("| --- | --- | --- | --- |")
pn, dn, _ = best["none"]; pw, dw, _ = best["w8a8"]
print(f"| prefill 512 tok/s | {pn['tok_s_max']:.0f} ({100*pn['frac_peak']:.1f}% of int8 peak {pn['peak_gops']:.0f} GOP/s) | "
      f"{pw['tok_s_max']:.0f} ({100*pw['frac_peak']:.1f}% of {pw['peak_gops']:.0f}) | {pw['tok_s_max']/pn['tok_s_max']:.2f}x |")
print(f"| decode batch 1 tok/s | {dn['tok_s_max']:.0f} | {dw['tok_s_max']:.0f} | {dw['tok_s_max']/dn['tok_s_max']:.2f}x |")
print(f"| bytes read per token | {dn['bytes_per_tok']/1e6:.1f} MB | {dw['bytes_per_tok']/1e6:.1f} MB | {dw['bytes_per_tok']/dn['bytes_per_tok']:.2f}x |")
print(f"| decode vs read-bandwidth bound | {100*dn['frac_bound']:.1f}% of {dn['bound_tok_s']:.0f} tok/s at {dn['bw_gbps']:.1f} GB/s | "
      f"{100*dw['frac_bound']:.1f}% of {dw['bound_tok_s']:.0f} tok/s at {dw['bw_gbps']:.1f} GB/s | |")
PY
