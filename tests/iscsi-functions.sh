# SPDX-License-Identifier: BSD-3-Clause
# tests/iscsi-functions.sh: helpers of the iSCSI tests (sourced after functions.sh).
#
#   tb_iscsi_state STATE SIZE         a state dir with image "demo" (SIZE bytes, patterned)
#   tb_iscsi_start NAME CONFIG        tabula-iscsid on a free loopback port: $TB_ISCSI_PORT,
#                                     stderr in $TB_TMP/NAME.log, pid in NAME.bgpid
#   tb_iscsi_stop NAME                SIGTERM, waits (30 s at most)
#   tb_iscsi_url CLIENT [LUN]         iscsi://127.0.0.1:PORT/PREFIX:CLIENT/LUN
#   tb_iscsi_raw CLIENT ACTION [ARG]  tests/iscsi-raw.py with the test initiator

TB_ISCSID=$abs_top_builddir/iscsi/tabula-iscsid
TB_ISCSI_PREFIX=iqn.2026-12.lan.tabula
TB_ISCSI_INITIATOR=iqn.2024-01.lan.tabula.test:initiator
TB_ISCSI_PORT=

tb_iscsi_state()
{
  mkdir -p "$1"
  tb_make_file "$TB_TMP/master.img" "$2" 7
  tb_import "$1" demo "$TB_TMP/master.img"
}

tb_iscsi_start()
{
  [ -x "$TB_ISCSID" ] || tb_fail "$TB_ISCSID is not built"
  _tries=0
  while [ $_tries -lt 20 ]; do
    TB_ISCSI_PORT=$((20000 + $(od -An -N2 -tu2 /dev/urandom) % 30000))
    rm -f "$TB_TMP/$1.pid"
    "$TB_ISCSID" --listen "127.0.0.1:$TB_ISCSI_PORT" --pidfile "$TB_TMP/$1.pid" "$2" \
      >>"$TB_TMP/$1.log" 2>&1 &
    _pid=$!
    echo "$_pid" >"$TB_TMP/$1.bgpid"
    _i=0
    while [ $_i -lt 100 ] && kill -0 "$_pid" 2>/dev/null && [ ! -s "$TB_TMP/$1.pid" ]; do
      sleep 0.1
      _i=$((_i + 1))
    done
    [ -s "$TB_TMP/$1.pid" ] && return 0
    if kill -0 "$_pid" 2>/dev/null; then
      kill -9 "$_pid"
      tb_fail "tabula-iscsid $1 did not start within 10 s"
    fi
    grep -q "cannot listen there" "$TB_TMP/$1.log" || tb_fail "tabula-iscsid $1 did not start: $(tail -n 3 "$TB_TMP/$1.log")"
    _tries=$((_tries + 1))
  done
  tb_fail "no free port for tabula-iscsid"
}

tb_iscsi_stop()
{
  _pid=$(cat "$TB_TMP/$1.bgpid")
  kill -TERM "$_pid" 2>/dev/null || true
  _i=0
  while kill -0 "$_pid" 2>/dev/null; do
    _i=$((_i + 1))
    [ $_i -gt 300 ] && { kill -9 "$_pid"; tb_fail "tabula-iscsid $1 did not stop within 30 s"; }
    sleep 0.1
  done
  wait "$_pid" 2>/dev/null || true
  rm -f "$TB_TMP/$1.bgpid"
}

tb_iscsi_url()
{
  echo "iscsi://127.0.0.1:$TB_ISCSI_PORT/$TB_ISCSI_PREFIX:$1/${2:-0}"
}

tb_iscsi_raw()
{
  _client=$1
  shift
  python3 "$abs_top_srcdir/tests/iscsi-raw.py" "$TB_ISCSI_PORT" "$TB_ISCSI_PREFIX:$_client" \
    "${TB_RAW_INITIATOR:-$TB_ISCSI_INITIATOR}" "$@"
}
