#!/usr/bin/env bash
# docker-compose.sasl.yml's one-shot kafka-tls job: the broker's TLS material, made once.
#
#   make-tls.sh BROKER_DIR CA_DIR
#
# BROKER_DIR, read by the broker only: broker.p12 (its key and certificate chain, PKCS12),
# keystore-password, ca.pem. CA_DIR, read by the applications: ca.pem, the certificate
# they trust (KAFKA_SSL_CAFILE).
#
# A private CA signs a broker certificate for the names clients dial (KAFKA_TLS_NAMES,
# default kafka and localhost), then its key is thrown away: nothing can sign another
# certificate. To renew, delete the files and run the job again. To use your own CA's
# certificates, put broker.p12, keystore-password and ca.pem into BROKER_DIR first: files
# that are there are kept. keytool only, so it runs in the apache/kafka image.
set -euo pipefail
broker_dir=${1:?usage: make-tls.sh BROKER_DIR CA_DIR}
ca_dir=${2:?usage: make-tls.sh BROKER_DIR CA_DIR}
names=${KAFKA_TLS_NAMES:-dns:kafka,dns:localhost}
days=${KAFKA_TLS_DAYS:-825}

mkdir -p "$broker_dir" "$ca_dir"
if [[ -s $broker_dir/broker.p12 && -s $broker_dir/keystore-password && -s $broker_dir/ca.pem ]]; then
  echo "kafka-tls: keeping the keystore in $broker_dir"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  umask 077
  password=$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
  store=(-storetype PKCS12 -storepass "$password")
  key=(-keyalg EC -groupname secp256r1 -validity "$days")

  keytool -genkeypair -keystore "$work/ca.p12" "${store[@]}" "${key[@]}" -alias ca \
    -dname "CN=signup-pipeline Kafka CA" -ext bc:c=ca:true,pathlen:0 -ext ku:c=keyCertSign,cRLSign
  keytool -exportcert -rfc -keystore "$work/ca.p12" "${store[@]}" -alias ca -file "$work/ca.pem"

  keytool -genkeypair -keystore "$work/broker.p12" "${store[@]}" "${key[@]}" -alias broker \
    -dname "CN=kafka"
  keytool -certreq -keystore "$work/broker.p12" "${store[@]}" -alias broker -file "$work/broker.csr"
  keytool -gencert -keystore "$work/ca.p12" "${store[@]}" -alias ca -rfc -validity "$days" \
    -infile "$work/broker.csr" -outfile "$work/broker.pem" \
    -ext "SAN=$names" -ext ku:c=digitalSignature -ext eku=serverAuth,clientAuth
  # The CA as a trusted entry lets keytool chain the reply; the chain is then stored with
  # the key, and the extra entry removed.
  keytool -importcert -noprompt -keystore "$work/broker.p12" "${store[@]}" -alias ca -file "$work/ca.pem"
  keytool -importcert -keystore "$work/broker.p12" "${store[@]}" -alias broker -file "$work/broker.pem"
  keytool -delete -keystore "$work/broker.p12" "${store[@]}" -alias ca

  printf '%s' "$password" >"$work/keystore-password"
  mv "$work/broker.p12" "$work/keystore-password" "$broker_dir/"
  cp "$work/ca.pem" "$broker_dir/ca.pem"
  echo "kafka-tls: made a broker certificate for $names, valid $days days"
fi

cp "$broker_dir/ca.pem" "$ca_dir/ca.pem"
chmod 0644 "$ca_dir/ca.pem" "$broker_dir/ca.pem"
chmod 0600 "$broker_dir/broker.p12" "$broker_dir/keystore-password"
if [[ -n ${KAFKA_TLS_OWNER:-} ]]; then
  chown "$KAFKA_TLS_OWNER" "$broker_dir/broker.p12" "$broker_dir/keystore-password" "$broker_dir/ca.pem"
fi
