#!/usr/bin/env bash
# gen-certs.sh OUT [NAME=UID ...]: the Docker demo's keys, certificates and
# passwords, generated at first start (nothing secret is committed) with
# openssl and ssh-keygen. Each consumer gets a directory of its own, which
# docker-compose.yml mounts as a volume of its own into that container only:
#
#   OUT/ca/          the CA's key and certificate (this script only)
#   OUT/public/      ca.pem, truststore.p12 (PKCS12) and its password
#   OUT/kafka/       the broker's keystore.p12 (PKCS12: key, certificate,
#                    CA) and its password, the same as PEM (broker.pem,
#                    broker-key.pem), scram-users (NAME PASSWORD per line:
#                    admin, the master, each node) for kafka-storage format
#   OUT/conveyor/    the master's SCRAM password (kafka.password), its SSH
#                    key (id_ed25519) and known_hosts naming the SSH agent
#   OUT/NODE/        each Kafka node's SCRAM password (kafka.password); the
#                    setup service adds the node's secret
#   OUT/ssh-agent/   the SSH agent's host key and authorized_keys
#   OUT/kafka-ui/    config.yml for the Kafka web UI (user admin)
#
# NAME=UID hands directory NAME (and its files, mode 0400) to that user, for
# a container that runs as another user than this script; the files of a
# directory without an owner are mode 0444 (its volume is its boundary).
#
# It is idempotent: what exists is kept (passwords, keys, so that a broker
# formatted with these SCRAM users keeps working), certificates are renewed
# when missing, expiring within 30 days or not signed by the current CA.
#
# Environment: KAFKA_NODES (default "kafka-1 kafka-2"), BROKER_HOST
# (default kafka), SSH_HOST (default ssh-agent), DAYS (default 365),
# REQUIRE_JAVA_TRUSTSTORE=1 to fail rather than write a truststore that
# Java cannot read (openssl before 3.2 cannot mark its CA as trusted).
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 OUT [NAME=UID ...]" >&2
  exit 2
fi
out=$1
shift
nodes=${KAFKA_NODES:-kafka-1 kafka-2}
broker_host=${BROKER_HOST:-kafka}
ssh_host=${SSH_HOST:-ssh-agent}
days=${DAYS:-365}
renew_before=$((30 * 24 * 3600))

umask 077
for dir in ca public kafka conveyor ssh-agent kafka-ui $nodes; do
  mkdir -p "$out/$dir"
done

say() { echo "gen-certs: $*" >&2; }

# password FILE: a random password (hex, so that it needs no quoting in
# properties, JAAS or HCL), written without a newline; kept when present.
password() {
  if [ ! -s "$1" ]; then
    printf '%s' "$(openssl rand -hex 24)" > "$1"
    say "new password $1"
  fi
}

# fresh CERT [CA]: true when CERT exists, is valid for 30 more days and,
# with CA, verifies against it.
fresh() {
  [ -s "$1" ] || return 1
  openssl x509 -in "$1" -noout -checkend "$renew_before" >/dev/null 2>&1 || return 1
  if [ $# -gt 1 ]; then
    openssl verify -CAfile "$2" "$1" >/dev/null 2>&1 || return 1
  fi
}

# The CA.
ca_key=$out/ca/ca.key
ca_pem=$out/ca/ca.pem
renewed=
if [ ! -s "$ca_key" ] || ! fresh "$ca_pem"; then
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$ca_key"
  openssl req -x509 -new -key "$ca_key" -sha256 -days $((days * 2)) -subj "/CN=Conveyor demo CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$ca_pem"
  say "new CA $ca_pem"
  renewed=1
fi
# Files rewritten below may be read-only from the last run.
rm -f "$out/public/ca.pem" "$out/kafka/scram-users" "$out/ssh-agent/authorized_keys" \
  "$out/conveyor/known_hosts" "$out/kafka-ui/config.yml"
cp "$ca_pem" "$out/public/ca.pem"

# The truststore: the CA certificate, marked as a trust anchor for Java
# (attribute 2.16.840.1.113894.746875.1.1) where openssl can (3.2 and up).
password "$out/public/truststore.password"
if [ -n "$renewed" ] || [ ! -s "$out/public/truststore.p12" ]; then
  jdk=()
  if openssl pkcs12 -help 2>&1 | grep -q -- -jdktrust; then
    jdk=(-jdktrust anyExtendedKeyUsage)
  elif [ "${REQUIRE_JAVA_TRUSTSTORE:-}" = 1 ]; then
    say "$(openssl version) cannot mark the truststore's CA as trusted for Java (-jdktrust, OpenSSL 3.2+)"
    exit 1
  else
    say "warning: $(openssl version) has no -jdktrust: Java sees no entry in truststore.p12 (Go and ca.pem are unaffected)"
  fi
  rm -f "$out/public/truststore.p12"
  openssl pkcs12 -export -nokeys -in "$ca_pem" -caname "conveyor-demo-ca" "${jdk[@]}" \
    -passout "file:$out/public/truststore.password" -out "$out/public/truststore.p12"
  say "new truststore $out/public/truststore.p12"
fi

# The broker: one certificate for its SASL_SSL, SSL and controller
# listeners (server and client use: the broker talks to itself over SSL),
# named after BROKER_HOST and loopback. Its subject is its principal on
# the SSL listeners (User:CN=BROKER_HOST, a superuser).
broker_key=$out/kafka/broker-key.pem
broker_pem=$out/kafka/broker.pem
password "$out/kafka/keystore.password"
if [ ! -s "$broker_key" ]; then
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$broker_key"
fi
if [ -n "$renewed" ] || ! fresh "$broker_pem" "$ca_pem" || [ ! -s "$out/kafka/keystore.p12" ]; then
  rm -f "$broker_pem" "$out/kafka/keystore.p12"
  ext=$(mktemp)
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=DNS:$broker_host,DNS:localhost,IP:127.0.0.1" > "$ext"
  openssl req -new -key "$broker_key" -subj "/CN=$broker_host" |
    openssl x509 -req -CA "$ca_pem" -CAkey "$ca_key" -CAcreateserial -sha256 -days "$days" \
      -extfile "$ext" -out "$broker_pem" 2>/dev/null
  rm -f "$ext"
  openssl pkcs12 -export -in "$broker_pem" -inkey "$broker_key" -certfile "$ca_pem" -name "$broker_host" \
    -passout "file:$out/kafka/keystore.password" -out "$out/kafka/keystore.p12"
  say "new broker certificate and keystore for $broker_host"
fi

# SCRAM users: admin (the web UI, a superuser), conveyor (the master, a
# superuser: it creates topics and applies the agents' ACLs), one per node.
password "$out/kafka/admin.password"
password "$out/conveyor/kafka.password"
users="admin $(cat "$out/kafka/admin.password")"$'\n'"conveyor $(cat "$out/conveyor/kafka.password")"
for node in $nodes; do
  password "$out/$node/kafka.password"
  users+=$'\n'"$node $(cat "$out/$node/kafka.password")"
done
printf '%s\n' "$users" > "$out/kafka/scram-users"

# SSH: the master's client key, the agent's host key, and each side's
# view of the other.
if [ ! -s "$out/conveyor/id_ed25519" ]; then
  ssh-keygen -q -t ed25519 -N '' -C "conveyor-master" -f "$out/conveyor/id_ed25519"
fi
if [ ! -s "$out/ssh-agent/ssh_host_ed25519_key" ]; then
  ssh-keygen -q -t ed25519 -N '' -C "$ssh_host" -f "$out/ssh-agent/ssh_host_ed25519_key"
fi
cp "$out/conveyor/id_ed25519.pub" "$out/ssh-agent/authorized_keys"
echo "$ssh_host $(cut -d' ' -f1,2 "$out/ssh-agent/ssh_host_ed25519_key.pub")" > "$out/conveyor/known_hosts"

# The web UI: SASL_SSL with SCRAM-SHA-512 as admin, trusting the CA.
cat > "$out/kafka-ui/config.yml" <<EOF
# Written by gen-certs.sh: the Kafka web UI's view of the demo's broker.
kafka:
  clusters:
    - name: conveyor-demo
      bootstrapServers: $broker_host:9092
      properties:
        security.protocol: SASL_SSL
        sasl.mechanism: SCRAM-SHA-512
        sasl.jaas.config: org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(cat "$out/kafka/admin.password")";
        ssl.truststore.type: PKCS12
      ssl:
        truststoreLocation: /pki/public/truststore.p12
        truststorePassword: $(cat "$out/public/truststore.password")
EOF

# Modes and owners: public files are readable by all, a directory's
# secrets by its owner (or, without one, by whoever mounts its volume).
chmod 0755 "$out/public" && chmod 0444 "$out/public"/*
declare -A owner=()
for arg in "$@"; do
  owner[${arg%%=*}]=${arg#*=}
done
for dir in kafka conveyor kafka-ui $nodes; do
  if [ -n "${owner[$dir]:-}" ]; then
    chown -R "${owner[$dir]}:${owner[$dir]}" "$out/$dir"
    chmod 0700 "$out/$dir" && chmod 0400 "$out/$dir"/*
  else
    chmod 0755 "$out/$dir" && chmod 0444 "$out/$dir"/*
  fi
done
# sshd reads its host key as root and refuses one others may read.
chmod 0755 "$out/ssh-agent"
chmod 0600 "$out/ssh-agent/ssh_host_ed25519_key"
chmod 0444 "$out/ssh-agent/ssh_host_ed25519_key.pub" "$out/ssh-agent/authorized_keys"
say "done: $out"
