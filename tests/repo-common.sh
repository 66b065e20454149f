# SPDX-License-Identifier: BSD-3-Clause
# tests/repo-common.sh: helpers for the image distribution tests (sourced
# after functions.sh and tb_setup).
#
# A real nginx from Debian's packages serves $TB_TMP/www on 127.0.0.1 on a free
# port, with its own prefix, config and logs in $TB_TMP/nginx (never the
# system's service).  Its access log has one line per request:
#   STATUS BYTES_SENT "REQUEST" "RANGE" "AUTHORIZATION" "X-AMZ-SECURITY-TOKEN"
# so a test can count exactly what the server sent.
#
#   repo_nginx_start / repo_nginx_stop     start (or restart) / stop nginx
#   repo_url                               http://127.0.0.1:PORT
#   repo_bytes_served                      sum of $bytes_sent so far; repo_log_reset clears it
#   repo_make_image FILE CHUNKS SEED       CHUNKS x 4 MiB of random data (+ a short tail)
#   repo_change_chunks FILE SEED I...      overwrite part of chunks I... with new data
#   ctl STATE ARGS...                      tabulactl -c STATE.json ARGS (config written on first use)
#   repo_setup CHUNKS SEED [SEED2 I...]    the tests' common start: $pub (the publishing store),
#                                          $app (the pulling one, empty), $www (the repository);
#                                          $TB_TMP/v1.img (repo_make_image) imported as demo@1
#                                          into $pub; with SEED2, v2.img is v1.img with chunks
#                                          I... changed (repo_change_chunks), imported as demo@2
#   repo_serve                             repo_nginx_start, then $url is repo_url
#   store_snapshot STATE                   what the store holds (names, sizes, manifests)

REPO_PORT=
REPO_CHUNK=4194304
pub=$TB_TMP/pub
app=$TB_TMP/app
www=$TB_TMP/www
url=
TB_CTL=$abs_top_builddir/tabulactl/tabulactl

command -v nginx >/dev/null 2>&1 || PATH=$PATH:/usr/sbin:/sbin
tb_require nginx python3
[ -x "$TB_CTL" ] || tb_fail "$TB_CTL is not built"

# nginx must get SIGTERM (not tb_cleanup's SIGKILL) so its workers exit too.
repo_cleanup()
{
  _status=$?
  repo_nginx_stop 2>/dev/null
  (exit $_status)
  tb_cleanup
}
trap repo_cleanup EXIT

repo_url()
{
  echo "http://127.0.0.1:$REPO_PORT"
}

repo_nginx_config()
{
  _n=$TB_TMP/nginx
  mkdir -p "$_n/logs" "$_n/tmp" "$TB_TMP/www"
  cat >"$_n/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $_n/nginx.pid;
error_log $_n/logs/error.log;
events { worker_connections 256; }
http {
  log_format tb '\$status \$bytes_sent "\$request" "\$http_range" "\$http_authorization" "\$http_x_amz_security_token"';
  access_log $_n/logs/access.log tb;
  client_body_temp_path $_n/tmp/body;
  proxy_temp_path $_n/tmp/proxy;
  fastcgi_temp_path $_n/tmp/fastcgi;
  uwsgi_temp_path $_n/tmp/uwsgi;
  scgi_temp_path $_n/tmp/scgi;
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$REPO_PORT;
    root $TB_TMP/www;
    location /err500/ { return 500; }
    location /loop/ { return 302 /loop/; }
  }
EOF
  # With REPO_TLS_PORT set (and $TB_TMP/tls/server.{crt,key}), https as well.
  if [ -n "${REPO_TLS_PORT:-}" ]; then
    cat >>"$_n/nginx.conf" <<EOF
  server {
    listen 127.0.0.1:$REPO_TLS_PORT ssl;
    ssl_certificate $TB_TMP/tls/server.crt;
    ssl_certificate_key $TB_TMP/tls/server.key;
    root $TB_TMP/www;
  }
EOF
  fi
  echo "}" >>"$_n/nginx.conf"
  # Workers run as our own user so they can read the private temp dir.
  if [ "$(id -u)" = 0 ]; then
    sed -i "1i user root root;" "$_n/nginx.conf"
  fi
}

repo_nginx_start()
{
  [ -n "$REPO_PORT" ] || REPO_PORT=$(tb_free_port)
  [ -f "$TB_TMP/nginx/nginx.conf" ] || repo_nginx_config
  nginx -p "$TB_TMP/nginx" -c "$TB_TMP/nginx/nginx.conf" >>"$TB_TMP/nginx.log" 2>&1 &
  echo $! >"$TB_TMP/nginx.master"
  _i=0
  until curl -s -o /dev/null "http://127.0.0.1:$REPO_PORT/"; do
    _i=$((_i + 1))
    [ $_i -lt 100 ] || tb_fail "nginx did not start: $(cat "$TB_TMP/nginx.log")"
    kill -0 "$(cat "$TB_TMP/nginx.master")" 2>/dev/null ||
      tb_fail "nginx exited: $(cat "$TB_TMP/nginx.log" "$TB_TMP/nginx/logs/error.log")"
    sleep 0.1
  done
}

repo_nginx_stop()
{
  [ -f "$TB_TMP/nginx.master" ] || return 0
  _pid=$(cat "$TB_TMP/nginx.master")
  kill -TERM "$_pid" 2>/dev/null || true
  wait "$_pid" 2>/dev/null || true
  rm -f "$TB_TMP/nginx.master"
}

# nginx writes its log when a request completes; reopen makes it flush.
repo_bytes_served()
{
  awk '{ s += $2 } END { print s + 0 }' "$TB_TMP/nginx/logs/access.log"
}

repo_log_reset()
{
  : >"$TB_TMP/nginx/logs/access.log"
}

repo_make_image()
{
  python3 - "$@" <<'EOF'
import random, sys
path, chunks, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(seed)
with open(path, "wb") as f:
    for i in range(chunks):
        f.write(rnd.randbytes(4194304))
    f.write(rnd.randbytes(12345))  # a short last chunk
EOF
}

repo_change_chunks()
{
  python3 - "$@" <<'EOF'
import random, sys
path, seed = sys.argv[1], int(sys.argv[2])
rnd = random.Random(seed)
with open(path, "r+b") as f:
    for c in sys.argv[3:]:
        f.seek(int(c) * 4194304 + 4096)
        f.write(rnd.randbytes(65536))
EOF
}

# repo_write_config STATE [EXTRA-JSON-MEMBERS]: STATE.json beside STATE.
repo_write_config()
{
  cat >"$1.json" <<EOF
{"state_dir": "$1", "reconnect_grace": "${TB_RECONNECT_GRACE:-0s}", "images": {"demo": {}}${2:+, $2}}
EOF
}

# ctl STATE ARGS...: tabulactl with STATE's config (written on first use).
ctl()
{
  [ -f "$1.json" ] || repo_write_config "$1"
  _conf=$1.json
  shift
  "$TB_CTL" -c "$_conf" "$@"
}

store_snapshot()
{
  (cd "$1" && find images -type f ! -name .lock -printf '%p %s\n' | sort &&
    cat images/*/*.json 2>/dev/null | sha256sum)
}

# expect_fail WHAT REGEX CMD...: CMD must exit 1 with stderr matching REGEX.
expect_fail()
{
  _what=$1
  _re=$2
  shift 2
  _st=0
  "$@" >"$TB_TMP/out" 2>"$TB_TMP/err" || _st=$?
  [ "$_st" = 1 ] || tb_fail "$_what: expected exit 1, got $_st: $(cat "$TB_TMP/out" "$TB_TMP/err")"
  grep -Eq -- "$_re" "$TB_TMP/err" ||
    tb_fail "$_what: stderr does not match /$_re/: $(cat "$TB_TMP/err")"
  if grep -q 'AddressSanitizer\|runtime error' "$TB_TMP/err"; then
    tb_fail "$_what: sanitizer error: $(cat "$TB_TMP/err")"
  fi
  echo "ok: $_what: $(head -c 300 "$TB_TMP/err")"
}

repo_setup()
{
  repo_make_image "$TB_TMP/v1.img" "$1" "$2"
  tb_import "$pub" demo "$TB_TMP/v1.img"
  shift 2
  [ $# -gt 0 ] || return 0
  cp "$TB_TMP/v1.img" "$TB_TMP/v2.img"
  repo_change_chunks "$TB_TMP/v2.img" "$@"
  tb_import "$pub" demo "$TB_TMP/v2.img"
}

repo_serve()
{
  repo_nginx_start
  url=$(repo_url)
}
