# deploy_wait.sh — sourced by tests/cli/deploy.sh and deploy_faults.sh.
# every process of a deployment live in /v1/topology (its supervisor done
# starting: the port answers as soon as the first front-end serves, while
# the others may still start); a single process (404) counts as started
wait_started() { # port pid
  for _ in $(seq 1 600); do
    python3 - "$1" <<'EOF' 2>/dev/null && return 0
import json, sys, urllib.error, urllib.request
try:
    t = json.loads(urllib.request.urlopen("http://127.0.0.1:%s/v1/topology" % sys.argv[1], timeout=2).read())
except urllib.error.HTTPError as e:
    sys.exit(0 if e.code == 404 else 1)
sys.exit(0 if all(r.get("state", "live") == "live" for r in t["ranks"]) else 1)
EOF
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
