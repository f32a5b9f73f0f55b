#!/usr/bin/env bash
# upcycle.sh — `xds upcycle` end to end: usage and input errors exit with one
# "xds upcycle: error:" line (status 2 / 1, never a crash); with the real model
# (XDS_TEST_MODEL) the upcycled GGUF (temp dir, removed) generates exactly the
# same greedy text as the dense model through `xds generate` at the default
# kernel level (the kernels are batch-invariant, so an expert's product over
# the rows routed to it equals the dense product row for row; see
# tests/unit/test_upcycle.c), and `xds inspect` shows its expert tensors; a
# --perturb upcycle records its per-expert scales (inspect shows them) and
# generates (its text may differ from the dense one: that is its purpose). Usage: bash tests/cli/upcycle.sh path/to/xds
set -u
. "$(dirname "$0")/../skip.sh"
XDS=${1:?usage: upcycle.sh path/to/xds}
T=$(mktemp -d /tmp/xds_upcycle_cli_XXXXXX)
trap 'rm -rf "$T"' EXIT
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }

expect() { # expect STATUS MENTION ARGS...
  local want=$1 mention=$2
  shift 2
  "$XDS" upcycle "$@" >"$T/out" 2>"$T/err"
  local rc=$?
  if [ "$rc" -ne "$want" ]; then bad "upcycle $*: status $rc, want $want"; return; fi
  if ! grep -q "^xds upcycle: error: .*$mention" "$T/err"; then bad "upcycle $*: stderr lacks '$mention': $(cat "$T/err")"; return; fi
  [ "$(wc -l <"$T/err")" -eq 1 ] || { bad "upcycle $*: more than one stderr line"; return; }
  ok
}
expect 1 "nonexistent" -m "$T/nonexistent.gguf" -o "$T/o.gguf"
expect 2 "-E 0" -m a -o b -E 0
expect 2 "-k x" -m a -o b -k x
expect 2 "--perturb 1:" -m a -o b --perturb 1
expect 2 "--perturb x:" -m a -o b --perturb x
expect 2 "--perturb -0.5:" -m a -o b --perturb -0.5
printf 'GGUF\x03\x00\x00\x00' >"$T/trunc.gguf"
expect 1 "trunc.gguf" -m "$T/trunc.gguf" -o "$T/o.gguf"
[ ! -e "$T/o.gguf" ] && ok || bad "a failed upcycle left an output file"

if [ -n "${XDS_TEST_MODEL:-}" ]; then
  expect 1 "k (5) <= E (4)" -m "$XDS_TEST_MODEL" -o "$T/o.gguf" -E 4 -k 5
  if "$XDS" upcycle -m "$XDS_TEST_MODEL" -o "$T/moe.gguf" -E 4 -k 2 --seed 3 >"$T/out" 2>"$T/err"; then ok; else bad "upcycle: $(cat "$T/err")"; fi
  "$XDS" inspect "$T/moe.gguf" >"$T/insp" 2>&1 && grep -q "blk.0.ffn_gate_exps.weight" "$T/insp" && grep -q "expert_count" "$T/insp" && ok || bad "inspect of the upcycled model"
  if "$XDS" upcycle -m "$XDS_TEST_MODEL" -o "$T/moep.gguf" -E 4 -k 2 --perturb 0.5 >"$T/out" 2>"$T/err" \
     && grep -q "scaled by 1 -/+ 0.5" "$T/out"; then ok; else bad "upcycle --perturb: $(cat "$T/out" "$T/err")"; fi
  "$XDS" inspect "$T/moep.gguf" >"$T/insp" 2>&1 && grep -q "xds.upcycle.down_scale *array *float32\[4\]" "$T/insp" \
    && grep -q "xds.upcycle.perturb *float32 *0.5" "$T/insp" && ok || bad "inspect of the perturbed upcycle: $(grep xds "$T/insp")"
  "$XDS" generate -m "$T/moep.gguf" -p "The capital of France is" -n 8 --temp 0 -q -t 2 >"$T/pert" 2>"$T/e3"
  [ -s "$T/pert" ] && ok || bad "generate with the perturbed upcycle: $(cat "$T/e3")"
  rm -f "$T/moep.gguf"
  prompts=("The capital of France is" "def fibonacci(n):")
  [ -n "${XDS_SANITIZED:-}" ] && prompts=("The capital of France is") # ASan build: one prompt
  for p in "${prompts[@]}"; do
    "$XDS" generate -m "$XDS_TEST_MODEL" -p "$p" -n 24 --temp 0 -q -t 2 >"$T/dense" 2>"$T/e1"
    "$XDS" generate -m "$T/moe.gguf" -p "$p" -n 24 --temp 0 -q -t 2 >"$T/moe" 2>"$T/e2"
    if [ -s "$T/dense" ] && cmp -s "$T/dense" "$T/moe"; then ok; else bad "greedy text differs for '$p': dense '$(cat "$T/dense")' vs moe '$(cat "$T/moe")' $(cat "$T/e2")"; fi
  done
else
  skip_input "real-model upcycle: XDS_TEST_MODEL not set" || fail=$((fail + 1))
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
