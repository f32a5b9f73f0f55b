# skip.sh — sourced by tests/cli/*.sh: how a shell test skips (tests/test.h's
# rules). skip_input REASON: a part that cannot run for a missing input (the
# real model, a tool); prints "SKIP: REASON" and returns 0, or under CI=true
# prints why the skip is refused and returns 1 (the caller counts a failure).
# skip_build REASON: a part this build leaves out by design; never a failure.
skip_input() {
  if [ "${CI:-}" = true ] || [ "${CI:-}" = 1 ]; then
    echo "FAIL: skip refused under CI=true: $*"; return 1
  fi
  echo "SKIP: $*"
}
skip_build() { echo "SKIP (not in this build): $*"; }
