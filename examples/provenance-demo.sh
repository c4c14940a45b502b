#!/usr/bin/env bash
# The main job, on one machine: a coordinator on the embedded SQLite store, two
# agents (host-a, host-b) each holding a copy of a real tree (this machine's
# Python standard library), the provenance workflow run across them, then run
# again after one file was altered on host-b, to show the failure report.
# Needs workflowd, workflow-agent and workflowctl on PATH (`make demo` does that).
set -euo pipefail

work=$(mktemp -d "${TMPDIR:-/tmp}/provenance-demo.XXXXXX")
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export WORKFLOW_COORDINATOR="127.0.0.1:$port"
flow="$(cd "$(dirname "$0")" && pwd)/provenance.yaml"
pids=()

stop_all() {
    # SIGTERM: each daemon finishes what it is doing and exits cleanly
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -z "${KEEP_DEMO:-}" ]; then rm -rf "$work"; else echo "demo files kept in $work"; fi
}
trap stop_all EXIT

stdlib=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
echo "== copying $stdlib to host-a and host-b"
for host in host-a host-b; do
    mkdir -p "$work/$host/data" "$work/$host/agent"
    tar -C "$stdlib" --exclude=site-packages --exclude=__pycache__ -cf - . | tar -C "$work/$host/data" -xf -
done
files=$(find "$work/host-a/data" -type f | wc -l)
size=$(du -sh "$work/host-a/data" | cut -f1)
echo "   $files files, $size per host"

echo "== starting workflowd on $WORKFLOW_COORDINATOR (store: $work/workflowd.db)"
workflowd --store "$work/workflowd.db" --listen "$WORKFLOW_COORDINATOR" 2>"$work/workflowd.log" &
pids+=($!)
for host in host-a host-b; do
    workflow-agent --name "$host" --work-dir "$work/$host/agent" 2>"$work/$host/agent.log" &
    pids+=($!)
done

echo "== waiting for both agents"
for _ in $(seq 1 100); do
    connected=$(workflowctl agents --json 2>/dev/null | grep -c '"connected": true' || true)
    [ "$connected" = 2 ] && break
    sleep 0.2
done
workflowctl agents

echo
echo "== run 1: identical trees"
started=$(date +%s.%N)
workflowctl submit "$flow" --input "path_a=$work/host-a/data" --input "path_b=$work/host-b/data" --follow
ended=$(date +%s.%N)
first_run=$(workflowctl list --json | head -1 | python3 -c 'import json, sys; print(json.load(sys.stdin)["run_id"])')
echo
workflowctl status "$first_run"

echo
echo "== run 2: one file altered on host-b"
echo "# altered on host-b" >> "$work/host-b/data/json/decoder.py"
if workflowctl submit "$flow" --input "path_a=$work/host-a/data" --input "path_b=$work/host-b/data" --follow; then
    echo "error: the altered tree was not detected" >&2
    exit 1
fi

echo
elapsed=$(python3 -c "print(f'{$ended - $started:.1f}')")
echo "== done: run 1 hashed $files files on each of 2 hosts in ${elapsed}s; run 2 found the altered file"
