#!/usr/bin/env bash
# The test command: install dependencies, fetch the default model, build, and
# run the whole test suite — release build, then the unit tests again under
# ASan+UBSan, then each fuzz target briefly.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export XDS_TEST_MODEL="$(scripts/fetch_model.sh)"
J="$(nproc)"

echo "== release build + tests"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$J"
ctest --test-dir build --output-on-failure -j"$J"

echo "== ASan+UBSan build + tests"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DXDS_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$J"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 XDS_SANITIZED=1 \
  ctest --test-dir build-asan --output-on-failure -j"$J"

echo "== fuzz targets (brief)"
# Each target runs over its seeds; its log must show coverage (a final cov:
# figure above 0) and covered functions under src/ (-print_coverage), i.e. the
# code under test is instrumented, not only the harness.
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DXDS_FUZZ=ON >/dev/null
cmake --build build-fuzz -j"$J" --target fuzz_all
for f in build-fuzz/fuzz_*; do
  [ -x "$f" ] || continue
  name=$(basename "$f")
  corpus="fuzz/corpus/${name#fuzz_}"
  mkdir -p "build-fuzz/corpus-$name"
  args=("build-fuzz/corpus-$name")
  [ -d "$corpus" ] && args+=("$corpus")
  [ -f "fuzz/${name#fuzz_}.dict" ] && args=(-dict="fuzz/${name#fuzz_}.dict" "${args[@]}")
  echo "-- $name (${XDS_FUZZ_SECONDS:-20}s)"
  "$f" -max_total_time="${XDS_FUZZ_SECONDS:-20}" -max_len=65536 -print_coverage=1 "${args[@]}" \
    2>build-fuzz/$name.log || { tail -50 build-fuzz/$name.log; echo "fuzz target $name failed"; exit 1; }
  last=$(grep -E '^#[0-9]+' build-fuzz/$name.log | grep -E 'cov: [0-9]+' | tail -1 || true)
  cov=$(sed -nE 's/.*cov: ([0-9]+) ft: ([0-9]+).*/\1/p' <<<"$last")
  ft=$(sed -nE 's/.*cov: ([0-9]+) ft: ([0-9]+).*/\2/p' <<<"$last")
  execs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$last")
  src_funcs=$( (grep '^COVERED_FUNC: ' build-fuzz/$name.log || true) | grep -cF " $PWD/src/" || true)
  echo "   cov: ${cov:-missing} ft: ${ft:-missing} after ${execs:-?} runs; ${src_funcs} functions of src/ covered"
  if [ -z "$cov" ] || [ "$cov" -eq 0 ] || [ "$src_funcs" -eq 0 ]; then
    echo "fuzz target $name shows no coverage of the code under test (is src/ built with -fsanitize=fuzzer-no-link?)"
    exit 1
  fi
done
echo "all test stages passed"
