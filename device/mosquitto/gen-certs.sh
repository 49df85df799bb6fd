#!/usr/bin/env bash
# Make a test CA, a server certificate and client certificates with openssl.
#
#   gen-certs.sh OUT_DIR [--server-name NAME] CLIENT...
#
# Writes OUT_DIR/ca.{key,crt}, OUT_DIR/server.{key,crt} (subjectAltName DNS:NAME,
# DNS:localhost, IP:127.0.0.1; NAME defaults to localhost) and OUT_DIR/CLIENT.{key,crt}
# for every CLIENT, whose common name is CLIENT: the device id, or "operator".
# Keys are EC P-256, mode 0600; certificates are valid for 825 days. For a real fleet
# keep ca.key offline and issue device certificates from your own PKI.
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: $0 OUT_DIR [--server-name NAME] CLIENT..." >&2
    exit 2
fi
out=$1
shift
server=localhost
if [ "${1:-}" = "--server-name" ]; then
    server=$2
    shift 2
fi
mkdir -p "$out"
umask 077
days=825

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

if [ ! -f "$out/ca.crt" ]; then
    key "$out/ca.key"
    openssl req -x509 -new -key "$out/ca.key" -sha256 -days "$days" -subj "/CN=edge-runtime test CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$out/ca.crt"
fi

sign() { # NAME EXTFILE
    key "$out/$1.key"
    openssl req -new -key "$out/$1.key" -subj "/CN=$1" -out "$out/$1.csr"
    openssl x509 -req -in "$out/$1.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
        -days "$days" -sha256 -extfile "$2" -out "$out/$1.crt" 2>/dev/null
    rm -f "$out/$1.csr"
}

ext=$(mktemp)
trap 'rm -f "$ext"' EXIT
san="DNS:localhost,IP:127.0.0.1"
[ "$server" = localhost ] || san="DNS:$server,$san"
printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' "$san" >"$ext"
sign server "$ext"
printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n' >"$ext"
for client in "$@"; do
    sign "$client" "$ext"
done
chmod 0644 "$out"/*.crt
echo "wrote $out: ca.crt, server.crt/key${*:+, }$(printf '%s.crt/key ' "$@")"
