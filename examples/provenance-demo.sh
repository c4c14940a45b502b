#!/usr/bin/env bash
# The main job, on one machine: a coordinator on the embedded SQLite store, two
# agents (host-a, host-b) each holding a copy of a real tree (this machine's
# Python standard library), the provenance workflow run across them, then run
# again after one file was altered on host-b, to show the failure report.
# Needs workflowd, workflow-agent and workflowctl on PATH (`make demo` does that).
set -euo pipefail

. "$(dirname "$0")/local-cluster.sh"
flow="$examples/provenance.yaml"

stdlib=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
echo "== copying $stdlib to host-a and host-b"
for host in host-a host-b; do
    mkdir -p "$work/$host/data"
    tar -C "$stdlib" --exclude=site-packages --exclude=__pycache__ -cf - . | tar -C "$work/$host/data" -xf -
done
files=$(find "$work/host-a/data" -type f | wc -l)
size=$(du -sh "$work/host-a/data" | cut -f1)
echo "   $files files, $size per host"

start_workflowd
start_agent host-a
start_agent host-b
echo "== waiting for both agents"
wait_agents 2
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
