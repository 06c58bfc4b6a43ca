#!/usr/bin/env bash
# Makes sure Apache Kafka's jars (deploy/kafka-local/pom.xml: kafka_2.13 and its
# dependencies, from Maven Central) are in the local cache that devtools/kafka_cluster.py
# runs brokers from. Downloads them once, with Maven; afterwards it only checks the
# completion marker, so nothing is downloaded at run time.
#
# The cache: $KAFKA_JARS_DIR, or ${XDG_CACHE_HOME:-$HOME/.cache}/signup-pipeline/kafka-4.4.0.
# Exits non-zero, loudly, when Java or Maven is missing or the download fails.
set -euo pipefail
cd "$(dirname "$0")/.."

KAFKA_VERSION=4.4.0
dir=${KAFKA_JARS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/signup-pipeline/kafka-$KAFKA_VERSION}
marker="$dir/.complete"

if [ -f "$marker" ]; then exit 0; fi

command -v java >/dev/null || {
  echo "ensure-kafka-jars: FAILED: no java on PATH (Apache Kafka $KAFKA_VERSION needs Java 17+)" >&2
  exit 1
}
command -v mvn >/dev/null || {
  echo "ensure-kafka-jars: FAILED: no mvn on PATH (it fetches Kafka's jars from Maven Central)" >&2
  exit 1
}

echo "ensure-kafka-jars: fetching Apache Kafka $KAFKA_VERSION's jars into $dir" >&2
mkdir -p "$dir"
if ! mvn -q -B -Dstyle.color=never -f deploy/kafka-local/pom.xml dependency:copy-dependencies -Dkafka.jars="$dir"; then
  echo "ensure-kafka-jars: FAILED: mvn could not fetch Kafka's jars (see above) into $dir" >&2
  exit 1
fi
if [ ! -f "$dir/kafka_2.13-$KAFKA_VERSION.jar" ]; then
  echo "ensure-kafka-jars: FAILED: $dir holds no kafka_2.13-$KAFKA_VERSION.jar after mvn" >&2
  exit 1
fi
echo "kafka_2.13 $KAFKA_VERSION" >"$marker"
