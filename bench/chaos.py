#!/usr/bin/env python3
"""chaos.py — fault injection under load against an `xds serve` deployment.

Starts `xds serve` (by default the README topology: 1 prefill instance, 2
decode DP groups, 2 expert workers, on SmolLM2 upcycled to 4 experts), sends
a fixed set of greedy requests once without faults (the reference outputs),
then keeps C streaming requests in flight for the run's duration while every
INTERVAL seconds a random non-supervisor process of the deployment (pids from
GET /v1/topology) is killed with SIGKILL or stopped with SIGSTOP (and
continued after --stop-seconds). It reports:

  served, failed (goal 0; the streams on a front-end that is SIGKILLed are
    cut, since a TCP connection cannot move, and are counted apart),
  outputs that differ from the fault-free run (goal 0),
  recovery seconds per fault (p50 / p99 / max) — from the fault until the
    token rate, in 0.5 s bins, is back to >= 90% of the steady rate measured
    before the first fault (and /v1/topology, where it reports states, has
    every process live again),
  throughput while recovering, as a fraction of the steady rate.

Everything stays on 127.0.0.1; the request count, the run time and every
socket wait are bounded, and the server is stopped at the end.

Usage: python3 bench/chaos.py --xds build/xds --model MOE.gguf [--minutes 10]
       [--interval 20] [--concurrency 8] [--port 18900] [--json] [-- serve args]
With no serve args after `--`: -t 1 --prefill 1 --decode-dp 2 --experts 2.
"""
import argparse
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

MODEL_NAME = "chaos"

PROMPTS = [
    "Write a short poem about the sea.",
    "Explain what a hash table is in two sentences.",
    "List three uses of copper.",
    "What is the capital of France? Answer and then describe the city.",
    "Give me a recipe for pancakes.",
    "Translate 'good morning, how are you?' into Spanish and French.",
    "Why is the sky blue?",
    "Tell me a story about a robot who learns to paint.",
    "Summarize the plot of Romeo and Juliet.",
    "How do vaccines work?",
    "Describe the water cycle for a ten-year-old.",
    "What are the benefits of regular exercise?",
]


def post_stream(port, prompt, max_tokens, timeout):
    """One greedy streaming chat request. Returns (text, [token arrival times], error or None)."""
    body = json.dumps({"model": MODEL_NAME, "messages": [{"role": "user", "content": prompt}],
                       "max_tokens": max_tokens, "temperature": 0, "stream": True})
    times, parts = [], []
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            return "", times, "HTTP %d: %s" % (r.status, r.read(300).decode(errors="replace"))
        done = False
        while True:
            line = r.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                break
            ev = json.loads(data)
            if "error" in ev:
                return "".join(parts), times, "stream error: %s" % ev["error"]
            for ch in ev.get("choices", []):
                piece = (ch.get("delta") or {}).get("content")
                if piece:
                    parts.append(piece)
                    times.append(time.monotonic())
        c.close()
        if not done:
            return "".join(parts), times, "stream ended without [DONE]"
        return "".join(parts), times, None
    except Exception as e:  # a cut connection, a timeout
        return "".join(parts), times, "%s: %s" % (type(e).__name__, e)


def get_json(port, path, timeout=2.0):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request("GET", path)
        r = c.getresponse()
        b = r.read()
        c.close()
        return r.status, (json.loads(b) if b else None)
    except Exception:
        return None, None


def topology_pids(port, sup_pid):
    st, t = get_json(port, "/v1/topology")
    if st != 200 or not t:
        return [], None
    pids, all_live = [], True
    for r in t.get("ranks", []):
        pid = r.get("pid")
        state = r.get("state")
        if state is not None and state != "live":
            all_live = False
        if pid and pid != sup_pid:
            pids.append((pid, r.get("role", "?"), r.get("rank")))
    return sorted(set(pids)), all_live


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--xds", default="build/xds")
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, default=18900)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=20.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--stop-seconds", type=float, default=3.0, help="SIGSTOP lasts this long, then SIGCONT")
    ap.add_argument("--stop-share", type=float, default=0.3, help="share of faults that are SIGSTOP")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=120.0, help="per-request socket timeout")
    ap.add_argument("--only", default="", help="comma-separated roles to fault (expert,decode,prefill,frontend); default all")
    ap.add_argument("--kind", choices=["mixed", "kill", "stop", "none"], default="mixed",
                    help="SIGKILL and SIGSTOP mixed by --stop-share, or only one of them; none: no signal, "
                         "the same schedule (the noise floor of the recovery figures)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("serve_args", nargs="*")
    a = ap.parse_args()
    serve_args = a.serve_args or ["-t", "1", "--prefill", "1", "--decode-dp", "2", "--experts", "2"]
    rng = random.Random(a.seed)

    log = open("/tmp/xds-chaos-%d.log" % a.port, "w")
    srv = subprocess.Popen([a.xds, "serve", "-m", a.model, "--port", str(a.port),
                            "--served-model-name", MODEL_NAME] + serve_args,
                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t_end = time.monotonic() + 300
        while time.monotonic() < t_end:
            if srv.poll() is not None:
                sys.exit("xds serve exited during start-up (see %s)" % log.name)
            if get_json(a.port, "/health")[0] == 200:
                break
            time.sleep(0.2)
        else:
            sys.exit("xds serve not ready after 300 s")

        # fault-free reference, one request at a time
        ref = {}
        for p in PROMPTS:
            text, _, err = post_stream(a.port, p, a.max_tokens, a.timeout)
            if err:
                sys.exit("reference request failed: %s" % err)
            ref[p] = text

        stats = {"served": 0, "failed": 0, "changed": 0, "errors": [], "fail_at": []}
        token_times = []
        lock = threading.Lock()
        stop_at = time.monotonic() + a.minutes * 60.0

        def client(ci):
            k = ci
            while time.monotonic() < stop_at:
                p = PROMPTS[k % len(PROMPTS)]
                k += a.concurrency
                text, times, err = post_stream(a.port, p, a.max_tokens, a.timeout)
                failed_now = False
                with lock:
                    token_times.extend(times)
                    if err:
                        stats["failed"] += 1
                        stats["fail_at"].append((time.monotonic(), err))
                        if len(stats["errors"]) < 20:
                            stats["errors"].append("%.1fs %s" % (time.monotonic() - t0, err))
                        failed_now = True
                    else:
                        stats["served"] += 1
                        if text != ref[p]:
                            stats["changed"] += 1
                            if len(stats["errors"]) < 20:
                                stats["errors"].append("changed output for %r" % p)
                if failed_now:
                    time.sleep(0.2)  # a failed request is counted once; no busy loop against a dead port

        t0 = time.monotonic()
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(a.concurrency)]
        for th in threads:
            th.start()

        faults = []  # (time, kind, pid, role)
        live_back = []  # seconds from each fault until /v1/topology reports all live (where it reports states)
        first_fault = t0 + max(a.interval, 10.0)
        next_fault = first_fault
        while time.monotonic() < stop_at - 1.0:
            now = time.monotonic()
            if now >= next_fault:
                pids, _ = topology_pids(a.port, srv.pid)
                if a.only:
                    pids = [x for x in pids if x[1] in a.only.split(",")]
                if pids:
                    pid, role, rank = rng.choice(pids)
                    kind = "SIGSTOP" if rng.random() < a.stop_share else "SIGKILL"
                    if a.kind != "mixed":
                        kind = "SIGSTOP" if a.kind == "stop" else "SIGKILL"
                    if a.kind == "none":
                        kind = "none"
                    try:
                        if kind != "none":
                            os.kill(pid, signal.SIGSTOP if kind == "SIGSTOP" else signal.SIGKILL)
                        faults.append((now, kind, pid, role, rank))
                        if kind == "SIGSTOP":
                            def cont(p=pid):
                                time.sleep(a.stop_seconds)
                                try:
                                    os.kill(p, signal.SIGCONT)
                                except ProcessLookupError:
                                    pass
                            threading.Thread(target=cont, daemon=True).start()
                    except ProcessLookupError:
                        pass
                next_fault = now + a.interval
                # wait for every process to be live again (bounded by the interval)
                # (a killed process: its rank shows a new pid; a stopped one: after SIGCONT)
                t_f = now
                f_pid = faults[-1][2] if faults and faults[-1][0] == now else None
                f_kind = faults[-1][1] if f_pid else None
                while f_pid and f_kind != "none" and time.monotonic() < min(next_fault, stop_at) - 0.2:
                    cur, all_live = topology_pids(a.port, srv.pid)
                    replaced = f_kind != "SIGKILL" or all(p != f_pid for (p, _, _) in cur)
                    resumed = f_kind != "SIGSTOP" or time.monotonic() >= t_f + a.stop_seconds
                    if all_live and replaced and resumed:
                        live_back.append(time.monotonic() - t_f)
                        break
                    time.sleep(0.1)
            time.sleep(0.05)
        for th in threads:
            th.join(timeout=a.timeout + 5)

        # throughput in 0.5 s bins
        BIN = 0.5
        nb = int((time.monotonic() - t0) / BIN) + 1
        bins = [0] * nb
        for tt in token_times:
            i = int((tt - t0) / BIN)
            if 0 <= i < nb:
                bins[i] += 1
        warm = int(5.0 / BIN)  # skip the first 5 s
        steady_bins = bins[warm:int((first_fault - t0) / BIN)]
        steady = (sum(steady_bins) / (len(steady_bins) * BIN)) if steady_bins else 0.0
        rec, frac = [], []
        for (tf, kind, pid, role, rank) in faults:
            i0 = int((tf - t0) / BIN)
            horizon = min(nb, i0 + int(a.interval / BIN))
            back = None
            # back to full capacity: the rate over a 1 s window (two bins) at >= 90% of steady
            for i in range(i0, horizon - 1):
                if (bins[i] + bins[i + 1]) / (2 * BIN) >= 0.9 * steady:
                    back = (i - i0) * BIN
                    break
            if back is None:
                back = (horizon - i0) * BIN
            rec.append(back)
            win = bins[i0:i0 + max(1, int(back / BIN) + 1)]
            frac.append((sum(win) / (len(win) * BIN)) / steady if steady else 0.0)
        # A TCP connection cannot move to another process: the streams of a
        # front-end that is killed are cut. Counted apart (a cut seen within
        # 2 s of a front-end SIGKILL); every other failure is the deployment's.
        fe_kills = [tf for (tf, k, _, r, _) in faults if r == "frontend" and k == "SIGKILL"]
        cut_marks = ("without [DONE]", "RemoteDisconnected", "ConnectionReset", "IncompleteRead", "BrokenPipe")
        fe_cut = sum(1 for (tf, e) in stats["fail_at"]
                     if any(m in e for m in cut_marks) and any(0 <= tf - k <= 2.0 for k in fe_kills))
        by_fault = {}
        for (tf, k, p, r, rk), rv in zip(faults, rec):
            by_fault.setdefault("%s %s" % (r, k), []).append(rv)
        out = {
            "cpu": cpu_model(),
            "failed_frontend_cut": fe_cut, "failed_other": stats["failed"] - fe_cut,
            "serve_args": serve_args,
            "minutes": a.minutes, "interval_s": a.interval, "concurrency": a.concurrency,
            "max_tokens": a.max_tokens,
            "served": stats["served"], "failed": stats["failed"], "changed": stats["changed"],
            "faults": [{"t": round(tf - t0, 1), "kind": k, "pid": p, "role": r, "rank": rk}
                       for (tf, k, p, r, rk) in faults],
            "steady_tok_s": round(steady, 1),
            "recovery_s": {"p50": pct(rec, 50), "p99": pct(rec, 99), "max": max(rec) if rec else None},
            "all_live_s": {"p50": pct(live_back, 50), "p99": pct(live_back, 99),
                           "max": max(live_back) if live_back else None, "n": len(live_back)},
            # token-rate recovery per (role, fault kind): the bound is on expert / decode deaths
            "recovery_by_fault": {k: {"n": len(v), "p50": pct(v, 50), "p99": pct(v, 99), "max": max(v)}
                                  for k, v in sorted(by_fault.items())},
            "throughput_during_recovery": {"min": round(min(frac), 2) if frac else None,
                                           "mean": round(sum(frac) / len(frac), 2) if frac else None},
            "recovery_per_fault_s": rec,
            "tok_per_bin": bins, "bin_s": BIN,
            "server_alive_at_end": srv.poll() is None,
            "errors": stats["errors"],
        }
        if a.json:
            print(json.dumps(out, indent=1))
        else:
            print("chaos: %s, %.1f min, fault every %.0f s, %d streams, CPU %s" %
                  (" ".join(serve_args), a.minutes, a.interval, a.concurrency, out["cpu"]))
            print("  faults injected: %d (%s)" % (len(faults), ", ".join("%s %s" % (k, r) for (_, k, _, r, _) in faults)))
            print("  requests served %d, failed %d (%d streams cut with a killed front-end's connections, %d other), "
                  "changed outputs %d" % (out["served"], out["failed"], fe_cut, out["failed_other"], out["changed"]))
            print("  steady %.1f tok/s; recovery p50 %s s, p99 %s s, max %s s; throughput while recovering min %s, mean %s of steady"
                  % (steady, out["recovery_s"]["p50"], out["recovery_s"]["p99"], out["recovery_s"]["max"],
                     out["throughput_during_recovery"]["min"], out["throughput_during_recovery"]["mean"]))
            print("  server alive at end: %s" % out["server_alive_at_end"])
            for e in out["errors"][:10]:
                print("  - " + e)
        return 0 if (out["failed_other"] == 0 and out["changed"] == 0) else 1
    finally:
        if srv.poll() is None:
            srv.send_signal(signal.SIGTERM)
            try:
                srv.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(srv.pid, signal.SIGKILL)
                srv.wait()
        else:
            try:
                os.killpg(srv.pid, signal.SIGKILL)  # orphans of a dead supervisor
            except ProcessLookupError:
                pass


def cpu_model():
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except Exception:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
