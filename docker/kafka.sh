#!/usr/bin/env bash
# kafka.sh format|start|health|properties: the Docker demo's Apache Kafka broker, run
# in the official apache/kafka image (its own configuration scripts are
# bypassed: this one writes the whole server.properties).
#
#   format  formats the KRaft storage once, creating the SCRAM-SHA-512
#           users of gen-certs.sh (kafka-storage format --add-scram)
#   start   runs the broker (combined broker and controller)
#   health  succeeds when the broker answers admin over SASL_SSL
#   properties  prints the server.properties the others use
#
# Listeners, all TLS with the keystore of gen-certs.sh:
#   SASL_SSL   :9092  SCRAM-SHA-512: the master, the agents, the web UI
#   SSL        :9093  mutual TLS: between brokers (User:CN=kafka)
#   CONTROLLER :9094  mutual TLS: the KRaft controller
# The StandardAuthorizer denies what no ACL allows; admin, conveyor (the
# master) and the broker itself are superusers, each agent gets the ACLs
# of `conveyor kafka acls` (setup.sh applies them).
set -euo pipefail

pki=${PKI:-/pki}
host=${BROKER_HOST:-kafka}
data=${KAFKA_DATA:-/var/lib/kafka/data}
bin=${KAFKA_HOME:-/opt/kafka}/bin
props=${KAFKA_PROPERTIES:-/tmp/server.properties}

write_properties() {
  local ks ts
  ks=$(cat "$pki/kafka/keystore.password")
  ts=$(cat "$pki/public/truststore.password")
  umask 077
  cat > "$props" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$host:9094
controller.listener.names=CONTROLLER
listeners=SASL_SSL://:9092,SSL://:9093,CONTROLLER://:9094
advertised.listeners=SASL_SSL://$host:9092,SSL://$host:9093
listener.security.protocol.map=SASL_SSL:SASL_SSL,SSL:SSL,CONTROLLER:SSL
inter.broker.listener.name=SSL

ssl.keystore.type=PKCS12
ssl.keystore.location=$pki/kafka/keystore.p12
ssl.keystore.password=$ks
ssl.key.password=$ks
ssl.truststore.type=PKCS12
ssl.truststore.location=$pki/public/truststore.p12
ssl.truststore.password=$ts
ssl.endpoint.identification.algorithm=https
listener.name.ssl.ssl.client.auth=required
listener.name.controller.ssl.client.auth=required

sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;

authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:CN=$host;User:admin;User:conveyor

log.dirs=$data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
}

case "${1:-}" in
format)
  write_properties
  if [ -s "$data/meta.properties" ]; then
    echo "kafka.sh: $data is formatted already"
    exit 0
  fi
  scram=()
  while read -r name pw; do
    [ -n "$name" ] && scram+=(--add-scram "SCRAM-SHA-512=[name=$name,password=$pw]")
  done < "$pki/kafka/scram-users"
  "$bin/kafka-storage.sh" format --cluster-id "$("$bin/kafka-storage.sh" random-uuid)" --config "$props" "${scram[@]}"
  ;;
start)
  write_properties
  exec "$bin/kafka-server-start.sh" "$props"
  ;;
health)
  client=/tmp/admin.properties
  umask 077
  cat > "$client" <<EOF
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(cat "$pki/kafka/admin.password")";
ssl.truststore.type=PKCS12
ssl.truststore.location=$pki/public/truststore.p12
ssl.truststore.password=$(cat "$pki/public/truststore.password")
EOF
  "$bin/kafka-broker-api-versions.sh" --bootstrap-server "$host:9092" --command-config "$client" >/dev/null
  ;;
properties)
  write_properties
  cat "$props"
  ;;
*)
  echo "usage: $0 format|start|health|properties" >&2
  exit 2
  ;;
esac
