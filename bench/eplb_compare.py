#!/usr/bin/env python3
"""eplb_compare.py — our expert placement (`xds eplb-plan`) against DeepSeek's
EPLB (`rebalance_experts` of deepseek-ai/EPLB, global policy) on the same load
matrices and the same budgets. Benchmark only: DeepSeek's eplb.py is loaded
from a checkout given on the command line, never copied into this project.

Budget mapping: we give each of W workers ceil(E/W) + S slots; DeepSeek's call
takes the total number of physical experts, so num_replicas = W * (ceil(E/W) + S)
and num_gpus = W (one node, one expert group: their entry point then makes the
same call as its global branch, `rebalance_experts_hierarchical(w, R, 1, 1, W)`).
Both fill every slot.

Metric (computed here from each placement, not taken from either tool): a
physical replica of logical expert e takes load[e] / replicas(e) tokens; a
worker's load is the sum over its replicas; per layer max / mean over workers;
over the model, sum over layers of the hottest worker / sum of the means (the
MoE layers run one after another). `before` is contiguous blocks with no
replicas (the deployment's default without redundancy).

Load: `xds eplb-plan --synthetic E,L --seed N --save-load` (the paper's skew:
20% of experts above the mean, the hottest 30x), on DeepSeek-V3 (256 experts,
58 MoE layers) and Qwen3-30B-A3B (128 experts, 48 layers) shapes, or --load FILE.

Needs torch (DeepSeek's code), e.g. `python3 -m venv .venv && .venv/bin/pip install torch`
(run the script with .venv/bin/python). Usage:
  python3 bench/eplb_compare.py --eplb PATH [--xds build/xds] [--seeds 1,2,3] [--tokens N] [--markdown]
PATH: eplb.py, a checkout holding it, or a bare git directory of the repository.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

SHAPES = [("DeepSeek-V3", 256, 58), ("Qwen3-30B-A3B", 128, 48)]


def load_deepseek(path, tmp):
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "eplb.py")):
            path = os.path.join(path, "eplb.py")
        else:  # a bare git directory: read the file at HEAD
            text = subprocess.run(["git", "--git-dir", path, "show", "HEAD:eplb.py"], check=True,
                                  capture_output=True, text=True).stdout
            path = os.path.join(tmp, "deepseek_eplb.py")
            with open(path, "w") as f:
                f.write(text)
    spec = importlib.util.spec_from_file_location("deepseek_eplb", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ratio(layers_worker_loads):
    """(sum over layers of the hottest / sum of the means, worst layer's max/mean)"""
    smax = smean = 0.0
    worst = 1.0
    for wl in layers_worker_loads:
        mean = sum(wl) / len(wl)
        smax += max(wl)
        smean += mean
        if mean > 0:
            worst = max(worst, max(wl) / mean)
    return (smax / smean if smean else 1.0), worst


def worker_loads(load, workers_lists):
    """per-worker loads of one layer; workers_lists[w] = logical experts in w's slots"""
    reps = [0] * len(load)
    for w in workers_lists:
        for e in w:
            reps[e] += 1
    assert min(reps) >= 1, "an expert without a replica"
    return [sum(load[e] / reps[e] for e in w) for w in workers_lists]


def blocks(E, W):
    per = -(-E // W)
    return [list(range(w * per, min(E, (w + 1) * per))) for w in range(W)]


def run_ours(xds, load_path, W, S):
    t = time.perf_counter()
    out = subprocess.run([xds, "eplb-plan", "--load", load_path, "--workers", str(W), "--slots", str(S), "--json"],
                         check=True, capture_output=True, text=True).stdout
    dt = time.perf_counter() - t
    plan = json.loads(out)
    return [lp["workers"] for lp in plan["plan"]], dt


def run_deepseek(mod, torch, load, W, S):
    E = len(load[0])
    K = -(-E // W) + S
    R = W * K
    weight = torch.tensor(load, dtype=torch.float64)
    t = time.perf_counter()
    phy2log, _log2phy, logcnt = mod.rebalance_experts(weight, R, 1, 1, W)
    dt = time.perf_counter() - t
    phy2log = phy2log.tolist()
    per = R // W
    layers, dups = [], 0
    for l in range(len(load)):
        ws = [phy2log[l][g * per:(g + 1) * per] for g in range(W)]
        dups += sum(len(w) - len(set(w)) for w in ws)
        layers.append(ws)
    for l in range(len(load)):
        cnt = [0] * E
        for e in phy2log[l]:
            cnt[e] += 1
        assert cnt == logcnt[l].tolist(), "DeepSeek's logcnt disagrees with its phy2log"
    return layers, dt, dups


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eplb", required=True, help="DeepSeek's eplb.py, its checkout, or a bare git dir of it")
    ap.add_argument("--xds", default="build/xds")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--workers", default="8,16,32")
    ap.add_argument("--slots", default="1,2")
    ap.add_argument("--tokens", default="1048576", help="token-expert pairs per layer of the synthetic load")
    ap.add_argument("--load", help="a load file instead of the synthetic shapes")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    a = ap.parse_args()
    import torch  # noqa: E402  (DeepSeek's code needs it)

    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp(prefix="eplb_compare_")
    mod = load_deepseek(a.eplb, tmp)
    cases = []
    if a.load:
        with open(a.load) as f:
            m = json.load(f)
        cases.append(("file", len(m[0]), len(m), None, a.load, m))
    else:
        for name, E, L in SHAPES:
            for seed in [int(s) for s in a.seeds.split(",")]:
                path = os.path.join(tmp, f"{name}-{seed}.json")
                subprocess.run([a.xds, "eplb-plan", "--synthetic", f"{E},{L}", "--seed", str(seed), "--tokens", a.tokens, "--workers", "1",
                                "--slots", "0", "--save-load", path], check=True, capture_output=True)
                with open(path) as f:
                    cases.append((name, E, L, seed, path, json.load(f)))
    rows = []
    for name, E, L, seed, path, m in cases:
        for W in [int(w) for w in a.workers.split(",")]:
            for S in [int(s) for s in a.slots.split(",")]:
                before, before_w = ratio([worker_loads(m[l], blocks(E, W)) for l in range(L)])
                ours_pl, ours_t = run_ours(a.xds, path, W, S)
                ours, ours_w = ratio([worker_loads(m[l], ours_pl[l]) for l in range(L)])
                ds_pl, ds_t, dups = run_deepseek(mod, torch, m, W, S)
                ds, ds_w = ratio([worker_loads(m[l], ds_pl[l]) for l in range(L)])
                # the replica choice: the same rule on both sides; count the layers where it agrees
                same_reps = sum(sorted(e for w in ours_pl[l] for e in w) == sorted(e for w in ds_pl[l] for e in w)
                                for l in range(L))
                rows.append(dict(model=name, E=E, L=L, seed=seed, W=W, S=S, slots=W * (-(-E // W) + S),
                                 before=before, ours=ours, ours_worst=ours_w, ds=ds, ds_worst=ds_w, dups=dups, same_reps=same_reps,
                                 ours_t=ours_t, ds_t=ds_t))
                r = rows[-1]
                print(f"{name:14s} seed {seed} W {W:2d} S {S}: physical {r['slots']:3d}  before {before:.3f}  "
                      f"ours {ours:.4f} (worst layer {ours_w:.3f}, {ours_t:.2f} s)  "
                      f"DeepSeek {ds:.4f} (worst layer {ds_w:.3f}, {ds_t:.2f} s, {dups} same-GPU duplicates)  "
                      f"same replica counts in {same_reps}/{L} layers",
                      flush=True)
    if a.markdown:
        print("\n| model shape | W | S | physical experts | before | ours | DeepSeek EPLB | ours, worst layer | "
              "DeepSeek, worst layer | DeepSeek same-GPU duplicates | ours s | DeepSeek s |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['model']} {r['E']}x{r['L']} seed {r['seed']} | {r['W']} | {r['S']} | {r['slots']} | "
                  f"{r['before']:.3f} | {r['ours']:.4f} | {r['ds']:.4f} | {r['ours_worst']:.3f} | "
                  f"{r['ds_worst']:.3f} | {r['dups']} | {r['ours_t']:.2f} | {r['ds_t']:.2f} |")
    s1 = [r for r in rows if r["S"] == 1]
    ok_target = all(r["ours"] <= 1.10 for r in s1)
    ok_peer = all(r["ours"] <= r["ds"] * (1 + 1e-9) for r in rows)
    print(f"\ntarget ours <= 1.10 with one redundant slot per worker: {'met' if ok_target else 'NOT met'} "
          f"(worst {max((r['ours'] for r in s1), default=0):.4f})")
    print(f"ours no worse than DeepSeek's EPLB at the same budget: {'met' if ok_peer else 'NOT met'} "
          f"({sum(r['ours'] < r['ds'] * (1 - 1e-9) for r in rows)} better, "
          f"{sum(abs(r['ours'] - r['ds']) <= 1e-9 * r['ds'] for r in rows)} equal, of {len(rows)})")
    return 0 if ok_target and ok_peer else 1


if __name__ == "__main__":
    sys.exit(main())
