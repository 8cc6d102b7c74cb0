#!/usr/bin/env bash
# otlp-certs.sh DIR [SERVER_NAMES]: a CA, the collector's certificate and one agent's client
# certificate for OTLP over mutual TLS (otel-collector/config.yaml requires it), in DIR:
#   ca.crt ca.key          the CA (keep ca.key offline in real use)
#   tls.crt tls.key        the collector's (subjectAltName: SERVER_NAMES, default
#                          "IP:127.0.0.1,DNS:localhost,DNS:otel-collector")
#   client.crt client.key  an agent's (podtrail: export.otlp_client_cert / _key, or
#                          OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE / _CLIENT_KEY; export.otlp_ca
#                          or OTEL_EXPORTER_OTLP_CERTIFICATE = ca.crt)
# Existing files are kept (run again: nothing changes). For tests and docker-compose; in a
# cluster, use cert-manager or your PKI (docs/security.md).
set -euo pipefail
d=${1:?usage: otlp-certs.sh DIR [SERVER_NAMES]}
names=${2:-IP:127.0.0.1,DNS:localhost,DNS:otel-collector}
mkdir -p "$d"
[ -f "$d/client.key" ] && exit 0
openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=podtrail OTLP CA" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=otel-collector" \
    -keyout "$d/tls.key" -out "$d/tls.csr" 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$names" >"$d/server.ext"
openssl x509 -req -in "$d/tls.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 365 \
    -extfile "$d/server.ext" -out "$d/tls.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=podtrail-agent" \
    -keyout "$d/client.key" -out "$d/client.csr" 2>/dev/null
printf 'extendedKeyUsage=clientAuth\n' >"$d/client.ext"
openssl x509 -req -in "$d/client.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 365 \
    -extfile "$d/client.ext" -out "$d/client.crt" 2>/dev/null
rm -f "$d"/*.csr "$d"/*.ext
# the collector image runs as a non-root user: its key must be readable by it
chmod 644 "$d/tls.key"
