#!/bin/sh
# Make the certificates the TLS tests use, with the openssl command line tool.
#
#   scripts/gen-certs.sh DIR
#
# Writes into DIR (created if missing):
#   ca.crt ca.key                 test certificate authority
#   server.crt server.key         server certificate, SAN DNS:localhost and IP:127.0.0.1, signed by ca
#   client.crt client.key         client certificate (CN=makelaar-test-client), signed by ca
#   expired.crt expired.key       client certificate signed by ca whose validity ended in 2020
#   unknown-ca.crt unknown-ca.key a second CA that the broker does not trust
#   unknown.crt unknown.key       client certificate signed by unknown-ca
#   intermediate.crt intermediate.key  an intermediate CA signed by ca
#   chain-server.crt chain-server.key  server certificate (as server.crt) signed by the
#                                 intermediate, alone in its file: root -> intermediate -> server
#
# Idempotent: when every file already exists (and the server certificate verifies against the
# CA), nothing is done. Otherwise everything is made afresh.
set -eu

if [ $# -ne 1 ]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
dir=$1
mkdir -p "$dir"
cd "$dir"

files="ca.crt ca.key server.crt server.key client.crt client.key expired.crt expired.key
unknown-ca.crt unknown-ca.key unknown.crt unknown.key intermediate.crt intermediate.key
chain-server.crt chain-server.key"

complete=yes
for f in $files; do
    [ -s "$f" ] || complete=no
done
if [ "$complete" = yes ] && openssl verify -CAfile ca.crt server.crt >/dev/null 2>&1; then
    exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/gen-certs.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

days=3650

# A self-signed CA: $1 = file stem, $2 = common name.
make_ca() {
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" \
        -keyout "$1.key" -out "$1.crt" -subj "/O=Makelaar tests/CN=$2" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

# A leaf certificate: $1 = file stem, $2 = common name, $3 = CA stem, $4 = extension lines.
make_leaf() {
    printf '%s\n' "$4" > "$work/$1.ext"
    openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$1.key" -out "$work/$1.csr" \
        -subj "/O=Makelaar tests/CN=$2" 2>/dev/null
    openssl x509 -req -sha256 -days "$days" -in "$work/$1.csr" -CA "$3.crt" -CAkey "$3.key" \
        -CAcreateserial -CAserial "$work/$3.srl" -extfile "$work/$1.ext" -out "$1.crt" 2>/dev/null
}

make_ca ca "Makelaar test CA"
make_ca unknown-ca "Unknown test CA"

server_ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1"
make_leaf server localhost ca "$server_ext"

# root -> intermediate -> server, for completing the chain from cafile.
make_leaf intermediate "Makelaar test intermediate CA" ca "basicConstraints=critical,CA:TRUE,pathlen:0
keyUsage=critical,keyCertSign,cRLSign"
make_leaf chain-server localhost intermediate "$server_ext"

client_ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
make_leaf client makelaar-test-client ca "$client_ext"
make_leaf unknown unknown-test-client unknown-ca "$client_ext"

# The expired certificate needs explicit start and end dates, which only `openssl ca` offers
# on OpenSSL 3.0; give it a throwaway CA database.
mkdir -p "$work/ca-db"
: > "$work/ca-db/index.txt"
echo 1000 > "$work/ca-db/serial"
cat > "$work/ca.cnf" <<EOF
[ ca ]
default_ca = test_ca
[ test_ca ]
dir = $work/ca-db
database = \$dir/index.txt
serial = \$dir/serial
new_certs_dir = \$dir
default_md = sha256
policy = any_policy
unique_subject = no
copy_extensions = none
[ any_policy ]
organizationName = optional
commonName = supplied
[ client_ext ]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
EOF
openssl req -newkey rsa:2048 -nodes -sha256 -keyout expired.key -out "$work/expired.csr" \
    -subj "/O=Makelaar tests/CN=expired-test-client" 2>/dev/null
openssl ca -batch -config "$work/ca.cnf" -cert ca.crt -keyfile ca.key \
    -startdate 20200101000000Z -enddate 20200102000000Z -extensions client_ext \
    -in "$work/expired.csr" -out "$work/expired.pem" -notext 2>/dev/null
openssl x509 -in "$work/expired.pem" -out expired.crt

chmod 600 ./*.key
openssl verify -CAfile ca.crt server.crt client.crt >/dev/null
openssl verify -CAfile ca.crt -untrusted intermediate.crt chain-server.crt >/dev/null
echo "test certificates written to $(pwd)"
