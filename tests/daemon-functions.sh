# SPDX-License-Identifier: BSD-3-Clause
# tests/daemon-functions.sh: helpers for the daemon's tests (sourced after
# functions.sh).  The daemon runs in the background of the test shell with its
# stderr in $TB_TMP/daemon.log; it starts nbdkit with the plugin itself.
#
#   td_config FILE STATE CLIENTS-JSON [EXTRA]   config with plugin and nbdkit set
#   td_start FILE / td_stop / td_kill9          the daemon
#   tctl ARGS...                                tabulactl -c $TD_CONF ARGS
#   td_nbdkit_pid                               pid of the supervised nbdkit
#   td_wait JQ-COND WHAT                        until `tabulactl --json status` matches
#   td_faketime_nbdkit [SHELL-LINE]             skip without libfaketime; $TB_NBDKIT outside it
#   td_start_faketime FILE VAR=VALUE...         the daemon under libfaketime, VAR=VALUE its clock
#   td_receiver OUT                             a webhook receiver on 127.0.0.1:$TD_RECEIVER_PORT
#                                               appending the "n" of each "test" event to OUT

TD_DAEMON=$abs_top_builddir/restored/tabula-restored
TD_CTL=$abs_top_builddir/tabulactl/tabulactl
TD_CONF=
[ -x "$TD_DAEMON" ] || tb_fail "$TD_DAEMON is not built"
tb_require jq python3

# The daemon runs nbdkit as tests/nbdkit-san (the sanitizer runtime preloaded
# in a sanitizer build; see nbdkit-san.in).
td_config()
{
  cat >"$1" <<EOF2
{
  "state_dir": "$2",
  "reconnect_grace": "${TB_RECONNECT_GRACE:-0s}",
  "plugin": "$TB_PLUGIN",
  "nbdkit": "$TB_NBDKIT",
  ${4:+$4,}
  "images": { "demo": {}, "other": {} },
  "clients": $3
}
EOF2
}

tctl()
{
  "$TD_CTL" -c "$TD_CONF" "$@"
}

td_wait()
{
  _i=0
  until tctl --json status 2>/dev/null | jq -e "$1" >/dev/null 2>&1; do
    _i=$((_i + 1))
    [ $_i -lt 300 ] || tb_fail "$2 (within 30 s): $(tctl --json status 2>&1 | head -c 2000)"
    sleep 0.1
  done
}

td_start()
{
  TD_CONF=$1
  "$TD_DAEMON" -c "$1" >>"$TB_TMP/daemon.log" 2>&1 &
  echo $! >"$TB_TMP/daemon.bgpid"
  _i=0
  until [ -S "$(jq -r '.state_dir' "$1")/control.sock" ] && tctl status >/dev/null 2>&1; do
    kill -0 "$(cat "$TB_TMP/daemon.bgpid")" 2>/dev/null ||
      tb_fail "tabula-restored exited: $(tail -n 20 "$TB_TMP/daemon.log")"
    _i=$((_i + 1))
    [ $_i -lt 300 ] || tb_fail "tabula-restored did not answer within 30 s"
    sleep 0.1
  done
  td_wait '.nbdkit.state == "running"' "nbdkit must be running"
}

# The clock tests (daemon-clock*.sh) run the daemon under libfaketime with its
# wall clock faked and its monotonic clock left alone.  td_faketime_nbdkit
# finds the library (the test skips without it) and makes $TB_NBDKIT a
# wrapper that runs nbdkit, the daemon's child, without the fake clock (under
# it an ASan nbdkit hangs in its start and outlives the test); SHELL-LINE
# runs in the wrapper first.  Call it before td_config, which names
# $TB_NBDKIT.
td_faketime_nbdkit()
{
  TD_FAKETIME_SO=
  for _f in /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 /usr/lib/*/faketime/libfaketime.so.1; do
    [ -f "$_f" ] && TD_FAKETIME_SO=$_f && break
  done
  [ -n "$TD_FAKETIME_SO" ] || tb_skip "libfaketime is not installed (Debian's faketime package)"
  cat >"$TB_TMP/nbdkit" <<EOF2
#!/bin/sh
${1:-}
unset LD_PRELOAD FAKETIME FAKETIME_TIMESTAMP_FILE FAKETIME_NO_CACHE FAKETIME_DONT_FAKE_MONOTONIC FAKETIME_DONT_RESET
exec "$TB_NBDKIT" "\$@"
EOF2
  chmod +x "$TB_TMP/nbdkit"
  TB_NBDKIT=$TB_TMP/nbdkit
}

# td_start_faketime FILE VAR=VALUE...: start the daemon with config FILE under
# libfaketime, its fake clock set by the FAKETIME* VAR=VALUEs, and wait for
# its status JSON (not for nbdkit: `tabulactl status` exits 1 while nbdkit
# starts, which a test may not wait for).
td_start_faketime()
{
  TD_CONF=$1
  shift
  # The sanitizer runtime need not come first: libfaketime is preloaded before it.
  env LD_PRELOAD="$TD_FAKETIME_SO" "$@" FAKETIME_DONT_FAKE_MONOTONIC=1 \
    ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0" \
    "$TD_DAEMON" -c "$TD_CONF" >>"$TB_TMP/daemon.log" 2>&1 &
  echo $! >"$TB_TMP/daemon.bgpid"
  _i=0
  until [ -S "$(jq -r '.state_dir' "$TD_CONF")/control.sock" ] &&
    tctl --json status 2>/dev/null | jq -e .daemon >/dev/null 2>&1; do
    kill -0 "$(td_pid)" 2>/dev/null || tb_fail "tabula-restored exited: $(tail -n 20 "$TB_TMP/daemon.log")"
    _i=$((_i + 1))
    [ $_i -lt 300 ] || tb_fail "tabula-restored did not answer within 30 s"
    sleep 0.1
  done
}

td_pid()
{
  cat "$TB_TMP/daemon.bgpid"
}

td_stop()
{
  _pid=$(td_pid)
  kill -TERM "$_pid" 2>/dev/null || true
  _st=0
  wait "$_pid" || _st=$?
  rm -f "$TB_TMP/daemon.bgpid"
  [ $_st -eq 0 ] || tb_fail "tabula-restored exited with $_st after SIGTERM: $(tail -n 20 "$TB_TMP/daemon.log")"
}

td_kill9()
{
  _pid=$(td_pid)
  kill -9 "$_pid" 2>/dev/null || true
  wait "$_pid" 2>/dev/null || true
  rm -f "$TB_TMP/daemon.bgpid"
}

td_nbdkit_pid()
{
  tctl --json status | jq -r .nbdkit.pid
}

# td_expect_fail WHAT REGEX CMD...: CMD must exit non-zero with REGEX on stderr.
td_expect_fail()
{
  _what=$1
  _re=$2
  shift 2
  _st=0
  "$@" >"$TB_TMP/out" 2>"$TB_TMP/err" || _st=$?
  [ $_st -ne 0 ] || tb_fail "$_what: succeeded, expected a failure: $(cat "$TB_TMP/out")"
  grep -Eq -- "$_re" "$TB_TMP/err" || tb_fail "$_what: stderr does not match /$_re/: $(cat "$TB_TMP/err")"
}

# A webhook receiver on loopback (port $TD_RECEIVER_PORT, pid in
# $TB_TMP/receiver.bgpid): each "test" event's "n" is appended to OUT, one a
# line, and every POST is answered 204.
td_receiver()
{
  TD_RECEIVER_PORT=$(tb_free_port)
  python3 - "$TD_RECEIVER_PORT" "$1" >"$TB_TMP/receiver.log" 2>&1 <<'PY' &
import http.server, json, sys
port, out = int(sys.argv[1]), sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        ev = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if ev.get("type") == "test":
            with open(out, "a") as f:
                f.write("%d\n" % ev["n"])
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
srv = http.server.HTTPServer(("127.0.0.1", port), H)
print("listening", flush=True)
srv.serve_forever()
PY
  echo $! >"$TB_TMP/receiver.bgpid"
  _i=0
  until grep -q listening "$TB_TMP/receiver.log"; do
    _i=$((_i + 1))
    [ $_i -lt 100 ] || tb_fail "the webhook receiver did not start: $(cat "$TB_TMP/receiver.log")"
    sleep 0.1
  done
}
