#!/usr/bin/env bash
# `make run`: the master with its embedded Kafka broker, an agent per Kafka
# node started locally, and the demo jobs of examples/config.hcl.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$PWD/bin
addr=${CONVEYOR_HTTP_ADDR:-127.0.0.1:8080}
export CONVEYOR_ADDR=http://$addr
data=$PWD/data
mkdir -p "$data/agents"

pids=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

"$bin/conveyor" validate examples/config.hcl
"$bin/conveyor" server -config examples/config.hcl &
server=$!
pids+=("$server")

for _ in $(seq 1 150); do
  if curl -fsS "$CONVEYOR_ADDR/healthz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$server" 2>/dev/null; then echo "the server exited" >&2; exit 1; fi
  sleep 0.2
done

# The server generated its API token at first start (examples/config.hcl
# sets none); this script's own conveyor calls need it. It is passed to
# those calls only, not exported: the agents (and their build steps) must
# not inherit it.
if [ ! -s "$data/api-token" ]; then echo "the server wrote no $data/api-token" >&2; exit 1; fi
token=$(cat "$data/api-token")

for node in kafka-1 kafka-2; do
  dir=$data/agents/$node
  mkdir -p "$dir/work"
  (umask 077; CONVEYOR_TOKEN=$token "$bin/conveyor" secret "$node" | head -n 1 > "$dir/secret")
  "$bin/conveyor-agent" -name "$node" -secret-file "$dir/secret" \
    -brokers "${CONVEYOR_KAFKA_ADDR:-127.0.0.1:9092}" -workdir "$dir/work" 2> "$dir/agent.log" &
  pids+=("$!")
done

cat <<MSG

Conveyor is running on $CONVEYOR_ADDR with an embedded Kafka broker and two agents
(logs in data/agents/*/agent.log). This demo's broker is plaintext, without
SASL, on loopback: fine here, never beyond (see SECURITY.md for its TLS, SASL
and ACL settings). In another terminal:

  export CONVEYOR_ADDR=$CONVEYOR_ADDR
  export CONVEYOR_TOKEN=\$(cat $data/api-token)
  ./bin/conveyor nodes
  ./bin/conveyor build -follow hello
  ./bin/conveyor build -follow multi-step
  ./bin/conveyor build -follow failing       # exits 1
  ./bin/conveyor build -follow long          # prints "Build long#N queued"; Ctrl-C stops
                                             # following, and this cancels build N:
  curl -X POST -H "Authorization: Bearer \$CONVEYOR_TOKEN" $CONVEYOR_ADDR/v1/jobs/long/builds/N/cancel
  ./bin/conveyor build -follow big-output | tail -n 3
  ./bin/conveyor secret kafka-1

Press Ctrl-C here to stop everything.
MSG
# Until the server exits, or whoever started this script (make) goes away
# without passing a signal on: the EXIT trap then stops everything.
parent=$PPID
while kill -0 "$server" 2>/dev/null && kill -0 "$parent" 2>/dev/null; do
  sleep 1
done
