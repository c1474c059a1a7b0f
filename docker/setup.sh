#!/usr/bin/env bash
# setup.sh: the Docker demo's one-shot step between the master and its
# Kafka agents. Once the master answers, it writes each Kafka node's secret
# (`conveyor secret NODE`, with the API token the master generated into
# its data directory) into that node's own volume, and applies the ACLs
# that confine each agent's Kafka user to its node's topics and group
# (`conveyor kafka acls -apply`, as the master's Kafka user). The agents
# start after it.
#
# Environment: CONVEYOR_ADDR (default http://conveyor:8080),
# CONVEYOR_TOKEN_FILE (default /var/lib/conveyor/api-token), CONVEYOR_PKI
# (default /pki), CONVEYOR_CONFIG (default /etc/conveyor/config.hcl),
# KAFKA_NODES (default "kafka-1 kafka-2"), AGENT_UID (the agents' user,
# default 65532; empty: the files keep this script's), KAFKA_ACLS (apply,
# the default, or skip where the broker sets them up itself: the embedded
# broker of the native test of this topology).
set -euo pipefail

addr=${CONVEYOR_ADDR:-http://conveyor:8080}
token_file=${CONVEYOR_TOKEN_FILE:-/var/lib/conveyor/api-token}
pki=${CONVEYOR_PKI:-/pki}
config=${CONVEYOR_CONFIG:-/etc/conveyor/config.hcl}
nodes=${KAFKA_NODES:-kafka-1 kafka-2}
agent_uid=${AGENT_UID-65532}
acls=${KAFKA_ACLS:-apply}

echo "setup: waiting for the master at $addr"
for _ in $(seq 1 300); do
  if curl -fsS "$addr/healthz" >/dev/null 2>&1 && [ -s "$token_file" ]; then
    break
  fi
  sleep 1
done
curl -fsS "$addr/healthz" >/dev/null

umask 077
for node in $nodes; do
  out=$(conveyor secret -address "$addr" -token-file "$token_file" "$node")
  secret=${out%%$'\n'*} # the first line; the rest is the agent's command line
  if ! [[ $secret =~ ^[0-9a-f]+$ ]]; then
    echo "setup: no secret for $node" >&2
    exit 1
  fi
  printf '%s\n' "$secret" > "$pki/$node/secret.tmp"
  if [ -n "$agent_uid" ]; then
    chown "$agent_uid:$agent_uid" "$pki/$node/secret.tmp"
  fi
  chmod 0400 "$pki/$node/secret.tmp"
  mv -f "$pki/$node/secret.tmp" "$pki/$node/secret"
  echo "setup: wrote the secret of $node"
done

# Each agent's Kafka user is named after its node, as on the embedded broker.
case $acls in
apply) conveyor kafka acls -apply -principal 'User:{node}' -config "$config" $nodes ;;
skip) echo "setup: ACLs left to the broker" ;;
*)
  echo "setup: KAFKA_ACLS=$acls: want apply or skip" >&2
  exit 2
  ;;
esac
echo "setup: done"
