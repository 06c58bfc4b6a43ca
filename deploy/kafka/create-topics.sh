#!/usr/bin/env bash
# docker-compose's one-shot kafka-topics job (apache/kafka image): creates the pipeline's
# topics with the partition counts of shared/messaging/pipeline.py and their dead-letter topics.
#
# With docker-compose.sasl.yml (KAFKA_ADMIN_PASSWORD set) it logs in as the admin user
# and grants the application's user (KAFKA_APP_USERNAME) what its processes do, no more:
# read, write and describe on these four topics, read on the two consumer groups.
set -euo pipefail
here=$(dirname "$0")
# shellcheck source=deploy/kafka/common.sh
. "$here/common.sh"

bin=${KAFKA_HOME:-/opt/kafka}/bin
bootstrap=${KAFKA_BOOTSTRAP:-kafka:9092}
replication=${KAFKA_REPLICATION_FACTOR:-1}
topics=(profile-insert:6 partner-created:6 profile-insert.DLT:1 partner-created.DLT:1)
groups=(member-service batch-service)

login=()
if [[ -n ${KAFKA_ADMIN_PASSWORD:-} ]]; then
  config=$(mktemp)
  trap 'rm -f "$config"' EXIT
  write_admin_client_config "$config" "${KAFKA_SSL_CAFILE:?KAFKA_SSL_CAFILE is not set}"
  login=(--command-config "$config")
fi

for spec in "${topics[@]}"; do
  "$bin/kafka-topics.sh" --bootstrap-server "$bootstrap" "${login[@]}" --create \
    --if-not-exists --topic "${spec%%:*}" --partitions "${spec##*:}" \
    --replication-factor "$replication"
done

if [[ -n ${KAFKA_ADMIN_PASSWORD:-} ]]; then
  acl=("$bin/kafka-acls.sh" --bootstrap-server "$bootstrap" "${login[@]}" --add
    --allow-principal "User:${KAFKA_APP_USERNAME:?KAFKA_APP_USERNAME is not set}")
  names=()
  for spec in "${topics[@]}"; do names+=(--topic "${spec%%:*}"); done
  "${acl[@]}" "${names[@]}" --operation Read --operation Write --operation Describe
  members=()
  for group in "${groups[@]}"; do members+=(--group "$group"); done
  "${acl[@]}" "${members[@]}" --operation Read
  # Idempotent producers: Kafka 3.x also accepts Write on a topic; older brokers need this.
  "${acl[@]}" --cluster --operation IdempotentWrite
fi
