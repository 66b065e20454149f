#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# With tls set, admin exports over TCP need a verified client certificate
# (issue 14, item 10): nbdkit runs with --tls-verify-peer and the plugin
# grants admin exports to a TLS peer in admin.networks only then.
#  - a client certificate signed by the CA (certificates/ca-cert.pem) reads
#    pc01@live over TLS;
#  - TLS without a client certificate is refused, and so is plain TCP;
#  - with tls.require false a client's own export still works over plain TCP.
# The certificates are made with openssl as README shows.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup
tb_require python3 jq nbdinfo openssl

state=$TB_TMP/state
port=$(tb_free_port)
pki=$TB_TMP/pki
mkdir -p "$pki/server" "$pki/client" "$pki/nocert"
(
  cd "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca-cert.pem -days 2 \
    -subj "/CN=tabula test CA" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
  openssl req -newkey rsa:2048 -nodes -keyout server/server-key.pem -out server.csr \
    -subj "/CN=127.0.0.1" 2>/dev/null
  openssl x509 -req -in server.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial \
    -out server/server-cert.pem -days 2 -extfile server.ext 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >client.ext
  openssl req -newkey rsa:2048 -nodes -keyout client/client-key.pem -out client.csr \
    -subj "/CN=admin" 2>/dev/null
  openssl x509 -req -in client.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial \
    -out client/client-cert.pem -days 2 -extfile client.ext 2>/dev/null
  cp ca-cert.pem server/ && cp ca-cert.pem client/ && cp ca-cert.pem nocert/
) || tb_fail "openssl could not make the certificates"

tb_make_file "$TB_TMP/v1.img" $((1024 * 1024)) 1
conf=$TB_TMP/tabula.json
td_config "$conf" "$state" '{ "pc01": { "image": "demo" } }' "\"listen\": { \"tcp\": \"127.0.0.1:$port\" },
  \"tls\": { \"certificates\": \"$pki/server\", \"require\": false },
  \"admin\": { \"networks\": [\"127.0.0.1/32\"] }"
chmod 600 "$conf"
TD_CONF=$conf
tctl image import demo "$TB_TMP/v1.img" >/dev/null
td_start "$conf"
uri=nbds://127.0.0.1:$port/pc01@live

echo "== a verified client certificate reads the admin export"
nbdinfo --size "$uri?tls-certificates=$pki/client" >"$TB_TMP/size" 2>"$TB_TMP/err" ||
  tb_fail "the admin's certificate must be accepted: $(cat "$TB_TMP/err")"
[ "$(cat "$TB_TMP/size")" = 1048576 ] || tb_fail "size: $(cat "$TB_TMP/size")"

echo "== TLS without a client certificate, and plain TCP, are refused"
nbdinfo --size "$uri?tls-certificates=$pki/nocert" >"$TB_TMP/out" 2>&1 &&
  tb_fail "TLS without a client certificate got the admin export: $(cat "$TB_TMP/out")"
nbdinfo --size "nbd://127.0.0.1:$port/pc01@live" >"$TB_TMP/out" 2>&1 &&
  tb_fail "plain TCP got the admin export: $(cat "$TB_TMP/out")"

echo "== the client's own export over plain TCP (tls.require false)"
nbdinfo --size "nbd://127.0.0.1:$port/pc01" >"$TB_TMP/size" 2>"$TB_TMP/err" ||
  tb_fail "pc01 over plain TCP: $(cat "$TB_TMP/err")"

td_stop
echo PASS
