#!/usr/bin/env bash
# The test command: install dependencies, fetch the default model, build, and
# run the whole test suite — release build, then the unit tests again under
# ASan+UBSan, then each fuzz target briefly.
#
# Inputs: the model (scripts/fetch_model.sh; a failed fetch fails the run) and
# the Hugging Face tokenizers, XDS_TEST_TOKENIZERS (default ../shared/tokenizers,
# beside the clone). A test that cannot run for a missing input prints "SKIP:
# why"; under CI=true (.ci/run) that is a failure (tests/test.h, tests/skip.sh).
# Each stage ends with its counts from ctest's JUnit file, every skip listed
# with its reason, and the run with "summary: N passed, N failed, N skipped".
# For checking a change to this script on a part of the suite:
# XDS_TEST_STAGES (default "release asan fuzz") and XDS_TEST_ONLY (a ctest -R
# regex); CI runs everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if ! XDS_TEST_MODEL="$(scripts/fetch_model.sh)" || [ ! -f "$XDS_TEST_MODEL" ]; then
  echo "error: scripts/fetch_model.sh could not provide the test model; the real-model tests cannot run" >&2
  exit 1
fi
export XDS_TEST_MODEL
tok="${XDS_TEST_TOKENIZERS:-../shared/tokenizers}"
if [ -d "$tok" ]; then
  export XDS_TEST_TOKENIZERS="$(cd "$tok" && pwd)"
else
  export XDS_TEST_TOKENIZERS="$tok"
  echo "note: tokenizers directory $tok not found: the Qwen3/DeepSeek tokenizer checks will skip (fail under CI=true)"
fi
echo "inputs: model $XDS_TEST_MODEL; tokenizers $XDS_TEST_TOKENIZERS; CI=${CI:-unset}"
J="$(nproc)"
STAGES="${XDS_TEST_STAGES:-release asan fuzz}"
ONLY=(); [ -n "${XDS_TEST_ONLY:-}" ] && ONLY=(-R "$XDS_TEST_ONLY")
has_stage() { [[ " $STAGES " == *" $1 "* ]]; }
TOTALS="$(mktemp /tmp/xds-test-totals.XXXXXX)"
rm -f "$TOTALS"
trap 'rm -f "$TOTALS"' EXIT

# run_ctest STAGE BUILD_DIR [env...]: ctest with a JUnit file, then its counts;
# a failing stage ends the run (after the summary)
run_ctest() {
  local stage=$1 dir=$2 rc=0; shift 2
  rm -f "$dir/ctest-junit.xml" # no stale counts if ctest dies before writing it
  env "$@" ctest --test-dir "$dir" --output-on-failure -j"$J" "${ONLY[@]}" --output-junit "$PWD/$dir/ctest-junit.xml" \
    --test-output-size-passed 1048576 --test-output-size-failed 1048576 || rc=$?
  python3 scripts/test_summary.py stage "$TOTALS" "$stage" "$dir/ctest-junit.xml"
  if [ "$rc" != 0 ]; then
    python3 scripts/test_summary.py total "$TOTALS" || true
    exit 1
  fi
}

if has_stage release; then
  echo "== release build + tests"
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build -j"$J"
  run_ctest release build
fi

if has_stage asan; then
  echo "== ASan+UBSan build + tests"
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DXDS_SANITIZE=ON >/dev/null
  cmake --build build-asan -j"$J"
  run_ctest asan build-asan ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 XDS_SANITIZED=1
fi

if has_stage fuzz; then # (body not indented)
echo "== fuzz targets (brief)"
# Each target runs over its seeds; its log must show coverage (a final cov:
# figure above 0) and covered functions under src/ (-print_coverage), i.e. the
# code under test is instrumented, not only the harness.
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DXDS_FUZZ=ON >/dev/null
cmake --build build-fuzz -j"$J" --target fuzz_all
nfuzz=0
for f in build-fuzz/fuzz_*; do
  [ -x "$f" ] || continue
  nfuzz=$((nfuzz + 1))
  name=$(basename "$f")
  corpus="fuzz/corpus/${name#fuzz_}"
  mkdir -p "build-fuzz/corpus-$name"
  args=("build-fuzz/corpus-$name")
  [ -d "$corpus" ] && args+=("$corpus")
  [ -f "fuzz/${name#fuzz_}.dict" ] && args=(-dict="fuzz/${name#fuzz_}.dict" "${args[@]}")
  echo "-- $name (${XDS_FUZZ_SECONDS:-20}s)"
  fail_fuzz() { echo "$1"; python3 scripts/test_summary.py add "$TOTALS" fuzz $((nfuzz - 1)) 1
               python3 scripts/test_summary.py total "$TOTALS" || true; exit 1; }
  "$f" -max_total_time="${XDS_FUZZ_SECONDS:-20}" -max_len=65536 -print_coverage=1 "${args[@]}" \
    2>build-fuzz/$name.log || { tail -50 build-fuzz/$name.log; fail_fuzz "fuzz target $name failed"; }
  last=$(grep -E '^#[0-9]+' build-fuzz/$name.log | grep -E 'cov: [0-9]+' | tail -1 || true)
  cov=$(sed -nE 's/.*cov: ([0-9]+) ft: ([0-9]+).*/\1/p' <<<"$last")
  ft=$(sed -nE 's/.*cov: ([0-9]+) ft: ([0-9]+).*/\2/p' <<<"$last")
  execs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$last")
  src_funcs=$( (grep '^COVERED_FUNC: ' build-fuzz/$name.log || true) | grep -cF " $PWD/src/" || true)
  echo "   cov: ${cov:-missing} ft: ${ft:-missing} after ${execs:-?} runs; ${src_funcs} functions of src/ covered"
  if [ -z "$cov" ] || [ "$cov" -eq 0 ] || [ "$src_funcs" -eq 0 ]; then
    fail_fuzz "fuzz target $name shows no coverage of the code under test (is src/ built with -fsanitize=fuzzer-no-link?)"
  fi
done
python3 scripts/test_summary.py add "$TOTALS" fuzz "$nfuzz" 0
fi
echo "all test stages passed ($STAGES)"
python3 scripts/test_summary.py total "$TOTALS"
