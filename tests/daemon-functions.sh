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
