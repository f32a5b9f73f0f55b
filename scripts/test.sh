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
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DXDS_FUZZ=ON >/dev/null
cmake --build build-fuzz -j"$J"
for f in build-fuzz/fuzz_*; do
  [ -x "$f" ] || continue
  name=$(basename "$f")
  corpus="fuzz/corpus/${name#fuzz_}"
  mkdir -p "build-fuzz/corpus-$name"
  args=("build-fuzz/corpus-$name")
  [ -d "$corpus" ] && args+=("$corpus")
  echo "-- $name (${XDS_FUZZ_SECONDS:-20}s)"
  "$f" -max_total_time="${XDS_FUZZ_SECONDS:-20}" -max_len=65536 "${args[@]}" 2>build-fuzz/$name.log \
    || { tail -50 build-fuzz/$name.log; echo "fuzz target $name failed"; exit 1; }
  grep -E "^Done|#[0-9]+.*DONE" build-fuzz/$name.log | tail -1 || true
done
echo "all test stages passed"
