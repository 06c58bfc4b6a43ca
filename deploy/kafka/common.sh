# shellcheck shell=bash
# Shared by the scripts in this directory (sourced, not run).

# Fails unless the variable named $1 holds a secret that can go into a JAAS line and a
# --add-scram argument as it is: 16 or more of A-Z a-z 0-9 . _ ~ -
# (`openssl rand -hex 24` makes one).
require_secret() {
  local name=$1 value=${!1:-}
  if [[ -z $value ]]; then
    echo "$name is not set" >&2
    exit 2
  fi
  if [[ ! $value =~ ^[A-Za-z0-9._~-]{16,}$ ]]; then
    echo "$name must be 16 or more of A-Z a-z 0-9 . _ ~ - (e.g. openssl rand -hex 24)" >&2
    exit 2
  fi
}

# Writes to $1 the settings a Kafka command-line tool needs to log in as the admin user
# over SASL_SSL, trusting the CA certificate in $2 (PEM).
write_admin_client_config() {
  local file=$1 cafile=$2
  require_secret KAFKA_ADMIN_PASSWORD
  (
    umask 077
    cat >"$file" <<PROPERTIES
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="${KAFKA_ADMIN_USERNAME:-admin}" password="${KAFKA_ADMIN_PASSWORD}";
ssl.truststore.type=PEM
ssl.truststore.location=${cafile}
PROPERTIES
  )
}

# The principals of the grants table (deploy/kafka/grants.txt), one a line, each once, in
# the order they first appear.
grant_principals() {
  awk '!/^[[:space:]]*(#|$)/ && !seen[$1]++ {print $1}' "$(dirname "${BASH_SOURCE[0]}")/grants.txt"
}

# The variable holding principal $1's password: KAFKA_<PRINCIPAL>_PASSWORD, upper case,
# "-" as "_" (auth-service: KAFKA_AUTH_SERVICE_PASSWORD).
password_variable() {
  local name=${1^^}
  printf 'KAFKA_%s_PASSWORD\n' "${name//-/_}"
}
