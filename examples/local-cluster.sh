# Sourced by the example scripts: a coordinator and agents on this machine, in
# a temporary directory, stopped cleanly (SIGTERM) when the script exits.
# Needs workflowd, workflow-agent and workflowctl on PATH.

work=$(mktemp -d "${TMPDIR:-/tmp}/workflow-example.XXXXXX")
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export WORKFLOW_COORDINATOR="127.0.0.1:$port"
examples="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pids=()

stop_all() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -z "${KEEP_DEMO:-}" ]; then rm -rf "$work"; else echo "files kept in $work"; fi
}
trap stop_all EXIT

start_workflowd() {
    echo "== starting workflowd on $WORKFLOW_COORDINATOR (store: $work/workflowd.db)"
    workflowd --store "$work/workflowd.db" --listen "$WORKFLOW_COORDINATOR" 2>"$work/workflowd.log" &
    pids+=($!)
}

# start_agent NAME [workflow-agent options...]
start_agent() {
    local name=$1
    shift
    mkdir -p "$work/$name/agent"
    workflow-agent --name "$name" --work-dir "$work/$name/agent" "$@" 2>"$work/$name/agent.log" &
    pids+=($!)
}

# wait_agents COUNT: until COUNT agents are connected
wait_agents() {
    for _ in $(seq 1 150); do
        connected=$(workflowctl agents --json 2>/dev/null | grep -c '"connected": true' || true)
        [ "$connected" = "$1" ] && return 0
        sleep 0.2
    done
    echo "error: $1 agents did not connect; see $work/*/agent.log" >&2
    return 1
}

# wait_step RUN_ID STEP STATUS: until the step has that status
wait_step() {
    for _ in $(seq 1 300); do
        workflowctl status "$1" --json | python3 -c '
import json, sys
run = json.load(sys.stdin)
steps = {s["step_id"]: s["status"] for s in run["steps"]}
sys.exit(0 if steps.get(sys.argv[1]) == sys.argv[2] else 1)' "$2" "$3" && return 0
        sleep 0.2
    done
    echo "error: step $2 of run $1 never became $3" >&2
    return 1
}
