#!/usr/bin/env bash
# docker-compose.sasl.yml's broker (apache/kafka image): a single KRaft node whose only
# network listener is SASL_SSL with SCRAM-SHA-512, and an authorizer that denies what
# no ACL allows. devtools/kafka_security.py runs the same configuration on the local
# Apache Kafka, and a test compares the two.
#
# The SCRAM users are written into the metadata log when the storage is formatted, the
# KRaft way (KIP-900), on the first start only: the broker's own user (admin, the only
# super user, also used by the setup job and the health check) and one user per
# principal of deploy/kafka/grants.txt, each with the password in
# KAFKA_<PRINCIPAL>_PASSWORD (KAFKA_AUTH_SERVICE_PASSWORD, ...). To change one later:
#   kafka-configs.sh --bootstrap-server kafka:9092 --command-config ADMIN.properties \
#     --alter --entity-type users --entity-name member-service \
#     --add-config 'SCRAM-SHA-512=[password=NEW]'
#
# The controller listener is on the loopback interface only and takes SASL PLAIN as the
# admin user, whose PLAIN password is in its JAAS line: SCRAM credentials live in the
# metadata log, which the controller cannot read before it runs. So nothing, not even a
# process inside this container, reaches the controller anonymously, and ANONYMOUS is
# no super user.
#
# The KAFKA_* variables docker-compose.yml sets for the image's own start script are not
# read here: this script writes the whole configuration.
set -euo pipefail
here=$(dirname "$0")
# shellcheck source=deploy/kafka/common.sh
. "$here/common.sh"

kafka_home=${KAFKA_HOME:-/opt/kafka}
tls=${KAFKA_TLS_DIR:-/etc/kafka/secrets}
data=${KAFKA_DATA_DIR:-/var/lib/kafka/data}
config_dir=${KAFKA_CONFIG_DIR:-/tmp/kafka-sasl}
host=${KAFKA_ADVERTISED_HOST:-kafka}
admin=${KAFKA_ADMIN_USERNAME:-admin}
require_secret KAFKA_ADMIN_PASSWORD
mapfile -t principals < <(grant_principals)
for principal in "${principals[@]}"; do
  require_secret "$(password_variable "$principal")"
done
for file in broker.p12 keystore-password ca.pem; do
  [[ -s $tls/$file ]] || { echo "$tls/$file is missing: run the kafka-tls job first" >&2; exit 2; }
done

mkdir -p "$config_dir"
chmod 0700 "$config_dir"
server=$config_dir/server.properties
(
  umask 077
  cat >"$server" <<PROPERTIES
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@localhost:9093
controller.listener.names=CONTROLLER
listeners=SASL_SSL://:9092,CONTROLLER://localhost:9093
advertised.listeners=SASL_SSL://${host}:9092
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT
inter.broker.listener.name=SASL_SSL

sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="${admin}" password="${KAFKA_ADMIN_PASSWORD}";
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="${admin}" password="${KAFKA_ADMIN_PASSWORD}" user_${admin}="${KAFKA_ADMIN_PASSWORD}";

ssl.keystore.type=PKCS12
ssl.keystore.location=${tls}/broker.p12
ssl.keystore.password=$(cat "$tls/keystore-password")
ssl.truststore.type=PEM
ssl.truststore.location=${tls}/ca.pem
ssl.client.auth=none
ssl.endpoint.identification.algorithm=https
ssl.enabled.protocols=TLSv1.3,TLSv1.2

authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:${admin}
allow.everyone.if.no.acl.found=false

log.dirs=${data}
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
PROPERTIES
)
write_admin_client_config "$config_dir/admin-client.properties" "$tls/ca.pem"

# A storage formatted by docker-compose.yml alone has no SCRAM users: nobody could log in.
marker=$data/.signup-pipeline-scram
if [[ -e $data/meta.properties && ! -e $marker ]]; then
  echo "$data was formatted without SCRAM users (by docker-compose.yml alone?);" \
    "remove the kafka-data volume (docker compose down -v) and start again" >&2
  exit 2
fi
if [[ ! -e $data/meta.properties ]]; then
  users=(--add-scram "SCRAM-SHA-512=[name=${admin},password=${KAFKA_ADMIN_PASSWORD}]")
  for principal in "${principals[@]}"; do
    variable=$(password_variable "$principal")
    users+=(--add-scram "SCRAM-SHA-512=[name=${principal},password=${!variable}]")
  done
  "$kafka_home/bin/kafka-storage.sh" format --config "$server" \
    --cluster-id "${KAFKA_CLUSTER_ID:-$("$kafka_home/bin/kafka-storage.sh" random-uuid)}" \
    "${users[@]}"
  touch "$marker"
fi
exec "$kafka_home/bin/kafka-server-start.sh" "$server"
