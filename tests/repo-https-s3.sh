#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# HTTPS certificates are always checked (a private CA is given with --ca-file),
# and S3-style repositories get AWS signature v4 on every request, with
# credentials from the config or the AWS_* environment variables, as nginx's
# access log shows.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/repo-common.sh"
tb_require openssl

log=$TB_TMP/nginx/logs/access.log

repo_setup 2 31
ctl "$pub" image publish demo "$www" >/dev/null || tb_fail "publish"
ctl "$pub" image publish demo "$www/bucket/images" >/dev/null || tb_fail "publish to bucket"

# A private CA and a certificate for 127.0.0.1 signed by it.
mkdir -p "$TB_TMP/tls"
(
  cd "$TB_TMP/tls"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 \
    -subj "/CN=tabula test CA" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr \
    -subj "/CN=127.0.0.1" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\n' >ext.cnf
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
    -out server.crt -days 2 -extfile ext.cnf 2>/dev/null
) || tb_fail "cannot make test certificates"

REPO_TLS_PORT=$(tb_free_port)
repo_nginx_start
url=$(repo_url)
https=https://127.0.0.1:$REPO_TLS_PORT

# HTTPS: refused without the CA, pulled with it.
repo_write_config "$TB_TMP/a1"
expect_fail "https, unknown CA" "TLS certificate check failed.*set pull.ca_file" \
  "$TB_CTL" -c "$TB_TMP/a1.json" image pull demo --from "$https"
[ ! -e "$TB_TMP/a1/images/demo/1.json" ] || tb_fail "published despite a bad certificate"
ctl "$TB_TMP/a1" image pull demo --from "$https" --ca-file "$TB_TMP/tls/ca.crt" \
  >"$TB_TMP/out" || tb_fail "https pull with --ca-file failed"
cmp -s "$TB_TMP/a1/images/demo/1.img" "$TB_TMP/v1.img" || tb_fail "https pull: image differs"
# The CA can come from the config as well.
repo_write_config "$TB_TMP/a2" "\"pull\": {\"from\": \"$https\", \"ca_file\": \"$TB_TMP/tls/ca.crt\"}"
ctl "$TB_TMP/a2" image pull demo >/dev/null || tb_fail "https pull with pull.ca_file failed"

# S3 signature v4 with credentials from the config, on a plain URL.
repo_write_config "$TB_TMP/a3" "\"pull\": {\"from\": \"$url\", \"s3\": {\"sign\": true,
  \"region\": \"eu-west-1\", \"access_key_id\": \"AKIDCONFIG\", \"secret_access_key\": \"s3cr3t\"}}"
repo_log_reset
ctl "$TB_TMP/a3" image pull demo >/dev/null || tb_fail "signed pull failed"
n=$(grep -c '"AWS4-HMAC-SHA256 Credential=AKIDCONFIG/[0-9]\{8\}/eu-west-1/s3/aws4_request, SignedHeaders=[^"]*, Signature=[0-9a-f]\{64\}"' "$log")
total=$(wc -l <"$log")
[ "$n" -ge 2 ] && [ "$n" = "$total" ] || tb_fail "signed pull: $n of $total requests signed: $(cat "$log")"
grep -q '"GET /demo/1.img HTTP/1.1" "bytes=' "$log" || tb_fail "signed pull: no range requests"

# s3://BUCKET/PREFIX with a custom endpoint (Ceph RGW, MinIO) and credentials
# from the environment, session token included.
repo_write_config "$TB_TMP/a4" "\"pull\": {\"s3\": {\"endpoint\": \"$url\", \"region\": \"us-east-2\"}}"
repo_log_reset
AWS_ACCESS_KEY_ID=AKIDENV AWS_SECRET_ACCESS_KEY=envsecret AWS_SESSION_TOKEN=tok123 \
  ctl "$TB_TMP/a4" image pull demo --from s3://bucket/images >"$TB_TMP/out" ||
  tb_fail "s3:// pull failed"
cmp -s "$TB_TMP/a4/images/demo/1.img" "$TB_TMP/v1.img" || tb_fail "s3 pull: image differs"
grep -q '"GET /bucket/images/demo/index.json HTTP/1.1" "-" "AWS4-HMAC-SHA256 Credential=AKIDENV/[0-9]*/us-east-2/s3/aws4_request' "$log" ||
  tb_fail "s3 pull: index request not path-style or not signed: $(cat "$log")"
grep -q '"tok123"$' "$log" || tb_fail "s3 pull: no x-amz-security-token header"
[ "$(grep -c '"tok123"$' "$log")" = "$(wc -l <"$log")" ] || tb_fail "s3 pull: token missing on some requests"

# No credentials at all: a clear error before any request.
repo_log_reset
expect_fail "s3 without credentials" "needs S3 credentials" \
  env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY \
  "$TB_CTL" -c "$TB_TMP/a4.json" image pull demo --from s3://bucket/images
[ ! -s "$log" ] || tb_fail "a request was sent without credentials"
echo "repo-https-s3: ok"
