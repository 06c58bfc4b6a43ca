#!/usr/bin/env bash
# docker-compose's one-shot kafka-topics job (apache/kafka image): creates the pipeline's
# topics with the partition counts of shared/messaging/pipeline.py and their dead-letter topics.
#
# With docker-compose.sasl.yml (KAFKA_ADMIN_PASSWORD set) it logs in as the admin user
# and creates the ACLs of deploy/kafka/grants.txt, one kafka-acls call per line: each
# process's principal gets what that process does, no more.
set -euo pipefail
here=$(dirname "$0")
# shellcheck source=deploy/kafka/common.sh
. "$here/common.sh"

bin=${KAFKA_HOME:-/opt/kafka}/bin
bootstrap=${KAFKA_BOOTSTRAP:-kafka:9092}
replication=${KAFKA_REPLICATION_FACTOR:-1}
topics=(
  profile-insert:6 partner-created:6 profile-created:6 profile-rejected:6
  profile-delete:6 partner-deleted:6
  post-created:6 post-deleted:6 follow-created:6 follow-deleted:6
  coordinate-closed:6 review-created:6
  profile-insert.DLT:1 partner-created.DLT:1 profile-created.DLT:1 profile-rejected.DLT:1
  profile-delete.DLT:1 partner-deleted.DLT:1
  post-created.DLT:1 post-deleted.DLT:1 follow-created.DLT:1 follow-deleted.DLT:1
  coordinate-closed.DLT:1 review-created.DLT:1
)

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
  while read -r principal resource name operations; do
    [[ -z $principal || $principal == \#* ]] && continue
    ops=()
    for operation in ${operations//,/ }; do ops+=(--operation "$operation"); done
    "$bin/kafka-acls.sh" --bootstrap-server "$bootstrap" "${login[@]}" --add \
      --allow-principal "User:$principal" "--$resource" "$name" "${ops[@]}"
  done <"$here/grants.txt"
fi
