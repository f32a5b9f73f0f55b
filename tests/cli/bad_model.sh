#!/usr/bin/env bash
# bad_model.sh — `xds inspect` on missing, truncated and corrupt model files
# (GGUF and Hugging Face directories), built here in a temp dir with
# printf/head/dd. Each must exit non-zero without crashing (status < 128), and
# print exactly one stderr line "xds inspect: error: ..." naming the file.
# Then `inspect` on the real model (when XDS_TEST_MODEL is set) must succeed.
# Usage: bash tests/cli/bad_model.sh path/to/xds
set -u
. "$(dirname "$0")/../skip.sh"
XDS=${1:?usage: bad_model.sh path/to/xds}
T=$(mktemp -d /tmp/xds_bad_model_XXXXXX)
trap 'rm -rf "$T"' EXIT
pass=0
fail=0

ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }

# Little-endian integers as raw bytes.
le32() { printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $((($1 >> 8) & 255)) $((($1 >> 16) & 255)) $((($1 >> 24) & 255)))"; }
le64() { le32 $(($1 & 0xffffffff)); le32 $((($1 >> 32) & 0xffffffff)); }
gstr() { le64 ${#1}; printf '%s' "$1"; }
zeros() { head -c "$1" /dev/zero; }

# expect_error NAME MUST_MENTION ARGS...: inspect fails cleanly with one line naming MUST_MENTION.
expect_error() {
  local name=$1 mention=$2
  shift 2
  "$XDS" inspect "$@" >"$T/out" 2>"$T/err"
  local rc=$?
  local lines
  lines=$(wc -l <"$T/err")
  if [ "$rc" -eq 0 ]; then bad "$name: exit status 0"; return; fi
  if [ "$rc" -ge 128 ]; then bad "$name: crashed (status $rc): $(cat "$T/err")"; return; fi
  if [ "$lines" -ne 1 ]; then bad "$name: $lines stderr lines: $(cat "$T/err")"; return; fi
  if ! grep -q '^xds inspect: error: ' "$T/err"; then bad "$name: not an error line: $(cat "$T/err")"; return; fi
  if ! grep -qF -- "$mention" "$T/err"; then bad "$name: does not mention '$mention': $(cat "$T/err")"; return; fi
  echo "ok   $name: $(cat "$T/err")"
  ok
}

# --- GGUF ------------------------------------------------------------------
expect_error "missing file" "$T/nope.gguf" "$T/nope.gguf"

: >"$T/empty.gguf"
expect_error "empty file" "$T/empty.gguf" "$T/empty.gguf"

{ printf 'GGUX'; le32 3; le64 0; le64 0; } >"$T/magic.gguf"
expect_error "bad magic" "$T/magic.gguf" "$T/magic.gguf"

{ printf 'GGUF'; le32 1; le64 0; le64 0; } >"$T/v1.gguf"
expect_error "version 1" "version 1" "$T/v1.gguf"

{ printf 'GGUF'; le32 3; le64 0; le64 0x7fffffffffffffff; zeros 64; } >"$T/nkv.gguf"
expect_error "absurd metadata count" "$T/nkv.gguf" "$T/nkv.gguf"

{ printf 'GGUF'; le32 3; le64 0x4000000000000; le64 0; zeros 64; } >"$T/ntensors.gguf"
expect_error "absurd tensor count" "$T/ntensors.gguf" "$T/ntensors.gguf"

{ printf 'GGUF'; le32 3; le64 0; le64 1; le64 1000000; printf 'abcdefghijklmnopqrstuvwxyz'; } >"$T/keylen.gguf"
expect_error "key length past end" "length 1000000 exceeds" "$T/keylen.gguf"

# one F32 tensor [8] at data offset OFF, type TYPE, then 32 data bytes
one_tensor() { # file name type off
  { printf 'GGUF'; le32 3; le64 1; le64 0; gstr "$2"; le32 1; le64 8; le32 "$3"; le64 "$4"; } >"$1"
  local n
  n=$(stat -c %s "$1")
  zeros $(((32 - n % 32) % 32 + 32)) >>"$1"
}
one_tensor "$T/control.gguf" "w" 0 0
if "$XDS" inspect "$T/control.gguf" >/dev/null 2>&1; then ok; else bad "control one-tensor GGUF rejected"; fi
one_tensor "$T/offset.gguf" "blk.3.attn_q.weight" 0 4096
expect_error "tensor offset past end" "tensor 'blk.3.attn_q.weight'" "$T/offset.gguf"
one_tensor "$T/type.gguf" "blk.0.ffn_up.weight" 6 0
expect_error "unknown tensor type" "type id 6" "$T/type.gguf"
one_tensor "$T/align.gguf" "w" 0 16
expect_error "misaligned tensor offset" "$T/align.gguf" "$T/align.gguf"

# --- the real model, damaged -------------------------------------------------
if [ -n "${XDS_TEST_MODEL:-}" ] && [ -f "$XDS_TEST_MODEL" ]; then
  for n in 10 1000 1785000 50000000; do
    head -c $n "$XDS_TEST_MODEL" >"$T/trunc$n.gguf"
    expect_error "real model truncated to $n bytes" "$T/trunc$n.gguf" "$T/trunc$n.gguf"
  done
  # overwrite the n_kv field with 2^60
  cp "$XDS_TEST_MODEL" "$T/corrupt.gguf"
  le64 0x1000000000000000 | dd of="$T/corrupt.gguf" bs=1 seek=16 conv=notrunc status=none
  expect_error "real model with absurd n_kv" "$T/corrupt.gguf" "$T/corrupt.gguf"
fi

# --- Hugging Face directories -------------------------------------------------
st_file() { # file header datalen
  { le64 ${#2}; printf '%s' "$2"; zeros "$3"; } >"$1"
}
mkdir "$T/nocfg"
st_file "$T/nocfg/model.safetensors" '{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}' 8
expect_error "directory without config.json" "$T/nocfg" "$T/nocfg"
expect_error "lone safetensors file" "directory" "$T/nocfg/model.safetensors"

mkdir "$T/hdr"
echo '{"model_type": "llama"}' >"$T/hdr/config.json"
{ le64 100000; printf '{}'; } >"$T/hdr/model.safetensors"
expect_error "safetensors header length past end" "$T/hdr/model.safetensors" "$T/hdr"

mkdir "$T/json"
echo '{"model_type": "llama"}' >"$T/json/config.json"
st_file "$T/json/model.safetensors" '{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]' 8
expect_error "safetensors bad JSON" "$T/json/model.safetensors" "$T/json"

mkdir "$T/dtype"
echo '{"model_type": "llama"}' >"$T/dtype/config.json"
st_file "$T/dtype/model.safetensors" '{"ids":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}' 8
expect_error "safetensors unsupported dtype" "tensor 'ids'" "$T/dtype"

mkdir "$T/cfg"
echo '{"model_type": llama' >"$T/cfg/config.json"
st_file "$T/cfg/model.safetensors" '{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}' 8
expect_error "config.json not JSON" "$T/cfg/config.json" "$T/cfg"

mkdir "$T/shard"
echo '{"model_type": "llama"}' >"$T/shard/config.json"
echo '{"weight_map": {"w": "model-00001-of-00002.safetensors"}}' >"$T/shard/model.safetensors.index.json"
expect_error "missing shard" "model-00001-of-00002.safetensors" "$T/shard"

mkfifo "$T/fifo.gguf"
expect_error "a FIFO (must not block)" "$T/fifo.gguf" "$T/fifo.gguf"
expect_error "/dev/null" "/dev/null" /dev/null
expect_error "no model argument" "no model"

# --- success paths --------------------------------------------------------------
if "$XDS" inspect --help | grep -q 'usage: xds inspect'; then ok; else bad "--help"; fi
cp -r "$T/hdr" "$T/good"
st_file "$T/good/model.safetensors" '{"w":{"dtype":"BF16","shape":[3,2],"data_offsets":[0,12]}}' 12
if "$XDS" inspect "$T/good" >"$T/out" 2>"$T/err" && grep -q 'bf16' "$T/out" && grep -q 'architecture: llama' "$T/out" &&
  grep -qE '^  w +bf16 +2 x 3 +12$' "$T/out"; then ok; else bad "valid HF directory: $(cat "$T/err")"; fi
if [ -n "${XDS_TEST_MODEL:-}" ]; then
  if "$XDS" inspect "$XDS_TEST_MODEL" >"$T/out" 2>"$T/err" && grep -q '^architecture: llama' "$T/out" &&
    grep -qE 'llama.block_count +uint32 +30$' "$T/out" && grep -q '^totals: 272 tensors' "$T/out" &&
    grep -qE '^  token_embd.weight +q8_0 +576 x 49152 +30081024$' "$T/out"; then
    ok
  else
    bad "inspect on the real model: $(cat "$T/err")"
  fi
else
  skip_input "real-model inspect checks: XDS_TEST_MODEL not set" || fail=$((fail + 1))
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
