# SPDX-License-Identifier: BSD-3-Clause
# tests/watchdog-functions.sh: helpers for the watchdog's daemon tests (sourced
# after functions.sh and daemon-functions.sh).  Sessions are real: the
# client's export is exposed as a file by nbdfuse and written by debugfs, so
# the guest's ext4 changes exactly as a guest's writes would change it.
#
#   tw_setup CLIENTS-JSON [EXTRA]   the tests' common start: $T ($TB_TMP), $state; the
#                                   tw_master image as demo@1, $T/tabula.json (td_config
#                                   with CLIENTS-JSON and EXTRA), the daemon started
#   tw_master IMG                   a 32 MiB ext4 with /etc/hosts, /apps, /home
#   tw_session STATE ID [CMDS]      one session of ID: debugfs -w runs CMDS
#                                   (stdin if not given), then the session ends
#   tw_read STATE ID CMD            one session of ID: debugfs -R CMD (read-only)
#   tw_live STATE ID CMD            debugfs -R CMD on ID@live (admin export, no session)
#   tw_wait STATE JQ-COND WHAT      until an event matches (30 s)
#   tw_count STATE JQ-COND          number of matching events

tb_require mke2fs debugfs nbdfuse nbdcopy fusermount3

T=$TB_TMP
state=$T/state

tw_setup()
{
  tw_master "$T/master.img"
  tb_import "$state" demo "$T/master.img"
  td_config "$T/tabula.json" "$state" "$@"
  td_start "$T/tabula.json"
}

tw_master()
{
  mkdir -p "$TB_TMP/src/etc" "$TB_TMP/src/apps" "$TB_TMP/src/home/user"
  printf '127.0.0.1 localhost\n' >"$TB_TMP/src/etc/hosts"
  echo "tool" >"$TB_TMP/src/apps/tool.txt"
  echo "notes" >"$TB_TMP/src/home/user/notes.txt"
  truncate -s 32M "$1"
  mke2fs -q -F -t ext4 -b 4096 -d "$TB_TMP/src" "$1" >/dev/null
}

# tw_disk STATE ID: nbdfuse ID's export (a session starts) at $TB_TMP/nf/disk.
tw_disk()
{
  mkdir -p "$TB_TMP/nf"
  nbdfuse "$TB_TMP/nf/disk" "nbd+unix:///$2?socket=$1/nbd.sock" >"$TB_TMP/nbdfuse.log" 2>&1 &
  echo $! >"$TB_TMP/nbdfuse.bgpid"
  TB_MOUNTS="$TB_TMP/nf $TB_MOUNTS"
  _i=0
  until [ -f "$TB_TMP/nf/disk" ]; do
    _i=$((_i + 1))
    [ $_i -lt 100 ] || tb_fail "nbdfuse did not expose $2: $(cat "$TB_TMP/nbdfuse.log")"
    sleep 0.1
  done
}

tw_undisk()
{
  fusermount3 -u "$TB_TMP/nf"
  wait "$(cat "$TB_TMP/nbdfuse.bgpid")" || true
  rm -f "$TB_TMP/nbdfuse.bgpid"
  tb_wait_idle "$1" "$2"
}

tw_session()
{
  tw_disk "$1" "$2"
  if [ $# -ge 3 ]; then
    printf '%s\n' "$3" | debugfs -w "$TB_TMP/nf/disk" >"$TB_TMP/debugfs.log" 2>&1
  else
    debugfs -w "$TB_TMP/nf/disk" >"$TB_TMP/debugfs.log" 2>&1
  fi
  sync
  tw_undisk "$1" "$2"
}

# tw_boot STATE ID: a session of ID that changes no byte (block 0 rewritten
# as it is): a probe is no session, a boot that writes is.
tw_boot()
{
  "$TB_IO" -s "$1/nbd.sock" -e "$2" rewrite:0:4096 || tb_fail "a session of $2"
}

tw_read()
{
  tw_disk "$1" "$2"
  debugfs -R "$3" "$TB_TMP/nf/disk" 2>/dev/null
  tw_undisk "$1" "$2"
}

tw_live()
{
  rm -f "$TB_TMP/live.img"
  nbdcopy "nbd+unix:///$2@live?socket=$1/nbd.sock" "$TB_TMP/live.img" ||
    tb_fail "cannot copy $2@live"
  debugfs -R "$3" "$TB_TMP/live.img" 2>/dev/null
}

tw_count()
{
  jq -c "select($2)" "$1/events.jsonl" 2>/dev/null | wc -l
}

tw_wait()
{
  _i=0
  until [ "$(tw_count "$1" "$2")" -gt 0 ]; do
    _i=$((_i + 1))
    [ $_i -lt 300 ] || tb_fail "$3: no event with $2 within 30 s: $(tail -n 5 "$1/events.jsonl")"
    sleep 0.1
  done
}
