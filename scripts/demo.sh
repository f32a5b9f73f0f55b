#!/usr/bin/env bash
# The main job: install what is needed, fetch the default model, build, and
# generate text with it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
MODEL="$(scripts/fetch_model.sh)"
scripts/build.sh
build/xds generate -m "$MODEL" -p "${1:-The three most useful things to know about the ocean are}" -n "${2:-96}"
