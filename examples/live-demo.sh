#!/usr/bin/env bash
# The live examples, on one machine: Diffie-Hellman identification between a
# prover agent and the coordinator (accepted, then an impostor rejected), and
# a rolling deployment of a small web service to three agents with a canary,
# an approval signal and one host at a time.
set -euo pipefail
. "$(dirname "$0")/local-cluster.sh"

start_workflowd
start_agent prover --label role=prover --allow dh.prove
ports=()
for i in 1 2 3; do
    ports+=("$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')")
    canary=$([ "$i" = 1 ] && echo yes || echo no)
    start_agent "web-$i" --allow web.deploy --label role=web --label "port=${ports[-1]}" \
        --label "canary=$canary"
done
wait_agents 4
workflowctl agents

echo
echo "== DH identification: the prover knows x"
keys=$(python3 -c 'from workflowd.plugins.dh import keypair; x, y = keypair(); print(x, y)')
read -r secret public <<<"$keys"
echo "$secret" >"$work/prover/secret"
workflowctl submit "$examples/dh-koe.yaml" --input "public_y=$public" \
    --input "secret_file=$work/prover/secret" --follow

echo
echo "== DH identification: an impostor holds another number"
python3 -c 'from workflowd.plugins.dh import keypair; print(keypair()[0])' >"$work/prover/wrong"
if workflowctl submit "$examples/dh-koe.yaml" --input "public_y=$public" \
    --input "secret_file=$work/prover/wrong" --follow; then
    echo "error: the impostor was accepted" >&2
    exit 1
fi

echo
echo "== rolling deploy of version 2.0: canary, approval, then one host at a time"
run=$(workflowctl submit "$examples/rolling-deploy.yaml" --input version=2.0)
wait_step "$run" approve waiting
echo "canary serves: $(python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:${ports[0]}/config.json').read().decode())")"
workflowctl signal "$run" approve '{"by": "the demo"}'
workflowctl tail "$run"
for i in 0 1 2; do
    echo "web-$((i + 1)) serves: $(python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:${ports[$i]}/config.json').read().decode())")"
done
# the deployed services outlive their steps on purpose; stop them with the demo
for i in 1 2 3; do
    pidfile="$work/web-$i/agent/state/sites/web/server.pid"
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
done
echo "== done"
