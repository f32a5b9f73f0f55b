#!/usr/bin/env python3
"""Markdown tables from bench/peers.sh's results: one row per round, the xds
figure, the peer's, and their ratio, then the range of the ratios.

    python3 bench/peers_table.py OUT_DIR

micro: `xds bench` decode (batch 1, 64 tokens) and prefill (128, 512) tokens/s,
medians of 5 repetitions, against llama-bench's tg64 / pp128 / pp512 (median of
its samples). Serving: `xds bench-serve` output tokens/s and TTFT / TPOT p50
and p99 per server, and the CPU seconds the idle servers used meanwhile.
"""
import glob
import json
import os
import re
import statistics
import sys

d = sys.argv[1] if len(sys.argv) > 1 else "build/peers"
meta = json.load(open(os.path.join(d, "meta.json")))


def jload(p):
    try:
        return json.load(open(p))
    except (OSError, ValueError):
        return None


def rng(v):
    v = [x for x in v if x is not None]
    if not v:
        return "—"
    lo, hi = min(v), max(v)
    return f"{lo:.2f}x" if abs(hi - lo) < 0.005 else f"{lo:.2f}–{hi:.2f}x"


print(f"Measured {meta['date']} on **{meta['cpu']}** ({meta['nproc']} CPUs), {meta['threads']} threads, "
      f"{meta['model']}; xds {meta['xds_commit']}, llama.cpp {meta['llama_commit']}, "
      f"vLLM {meta['vllm_version']}; `bench/peers.sh`, {meta['rounds']} alternating rounds "
      "(load = 1-minute load average before / after each run).\n")

# ---- micro ----
rounds = sorted({int(m.group(1)) for f in glob.glob(os.path.join(d, "micro-*-xds.jsonl"))
                 if (m := re.search(r"micro-(\d+)-xds", f))})
if rounds:
    print("### `xds bench` against `llama-bench` (same GGUF)\n")
    print("| round | test | xds tok/s | llama.cpp tok/s | xds / llama.cpp | load xds | load llama.cpp |")
    print("| --- | --- | ---: | ---: | ---: | --- | --- |")
    ratios = {}
    for r in rounds:
        xs = [json.loads(l) for l in open(os.path.join(d, f"micro-{r}-xds.jsonl")) if l.startswith("{")]
        ll = jload(os.path.join(d, f"micro-{r}-llama.json")) or []
        lx = jload(os.path.join(d, f"micro-{r}-xds.load.json")) or {}
        lL = jload(os.path.join(d, f"micro-{r}-llama.load.json")) or {}
        tests = []
        dec = [x for x in xs if x.get("kind") == "decode"]
        if dec:
            tests.append(("tg64 (decode, batch 1)", dec[0]["tok_s_med"], [e for e in ll if e["n_prompt"] == 0 and e["n_gen"] == 64]))
        for L in (128, 512):
            pf = [x for x in xs if x.get("kind") == "prefill" and x["n_prompt"] == L]
            if pf:
                tests.append((f"pp{L} (prefill)", pf[0]["tok_s_med"], [e for e in ll if e["n_prompt"] == L and e["n_gen"] == 0]))
        for name, xv, le in tests:
            lv = statistics.median(le[0]["samples_ts"]) if le else None
            ratio = xv / lv if lv else None
            ratios.setdefault(name, []).append(ratio)
            print(f"| {r} | {name} | {xv:.1f} | {lv:.1f} | {ratio:.2f}x | "
                  f"{lx.get('load_before', '?')} / {lx.get('load_after', '?')} | "
                  f"{lL.get('load_before', '?')} / {lL.get('load_after', '?')} |" if lv else
                  f"| {r} | {name} | {xv:.1f} | (no result) | — | | |")
    print()
    for name, v in ratios.items():
        print(f"* {name}: xds / llama.cpp {rng(v)} over {len(v)} rounds")
    print()

# ---- serving ----
for sec, title in (("llama", "`xds serve` against `llama-server` (same GGUF)"),
                   ("vllm", "`xds serve` against `vllm serve` (vLLM on a bf16 copy of the GGUF; "
                            "xds on the GGUF and on the same bf16 directory)")):
    files = glob.glob(os.path.join(d, f"serve-{sec}-w*-r*-*.json"))
    files = [f for f in files if not f.endswith(".meta.json")]
    if not files:
        continue
    runs = {}
    for f in files:
        m = re.search(rf"serve-{sec}-w(\d+)-r(\d+)-(.+)\.json$", f)
        wi, r, name = int(m.group(1)), int(m.group(2)), m.group(3)
        runs[(wi, r, name)] = (jload(f), jload(f[:-5] + ".meta.json") or {})
    names = sorted({k[2] for k in runs}, key=lambda n: (n != "xds", n))
    peer = "llama" if sec == "llama" else "vllm"
    print(f"### {title}\n")
    print("| workload | round | server | output tok/s | TTFT p50 / p99 ms | TPOT p50 / p99 ms | errors | "
          "idle servers' CPU s meanwhile | load |")
    print("| --- | --- | --- | ---: | --- | --- | --- | --- | --- |")
    summ = {}
    for wi in sorted({k[0] for k in runs}):
        for r in sorted({k[1] for k in runs if k[0] == wi}):
            for n in names:
                j, mt = runs.get((wi, r, n), (None, {}))
                w = mt.get("workload", "?")
                c, nreq, pl, ol = (w.split(":") + ["?"] * 4)[:4]
                wl = f"c{c}, {nreq} req, {pl} / {ol}"
                if not j:
                    print(f"| {wl} | {r} | {n} | (no result) | | | | | |")
                    continue
                t, p = j["ttft_ms"], j["tpot_ms"]
                f = lambda v: "—" if v is None else f"{v:.0f}" if v >= 100 else f"{v:.1f}"
                print(f"| {wl} | {r} | {n} | {j['output_throughput']:.1f} | {f(t['p50'])} / {f(t['p99'])} | "
                      f"{f(p['p50'])} / {f(p['p99'])} | {j['errors']} of {j['num_requests']} | "
                      f"{mt.get('others_cpu_s', '?')} | {mt.get('load_before', '?')} / {mt.get('load_after', '?')} |")
                summ.setdefault((wl, n), {})[r] = j
    print()
    for wl in dict.fromkeys(k[0] for k in summ):
        pr = summ.get((wl, peer), {})
        for n in names:
            if n == peer:
                continue
            xr = summ.get((wl, n), {})
            rs = [xr[r]["output_throughput"] / pr[r]["output_throughput"]
                  for r in xr if r in pr and pr[r]["output_throughput"] > 0 and not xr[r]["errors"] and not pr[r]["errors"]]
            print(f"* {wl}: {n} / {peer} output tok/s {rng(rs)} over {len(rs)} rounds")
    print()
