#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# The admin views of a client whose session runs in tabula-iscsid are exact
# and current, as for a session nbdkit runs itself (lib/liveview.h): every
# write the target acknowledged is seen, flushed or not.  tabula-restored runs
# nbdkit and tabula-iscsid (listen.iscsi); tests/iscsi-raw.py writes over
# iSCSI (WRITE(10), no FUA) into an ext4 master, as a guest would.
#  - unflushed writes: a new pc01@live connection (nbdcopy) reads the disk
#    exactly as written; pc01@overlay's map has exactly the written blocks;
#    the view, mounted (and its pc01@live connection open) before the
#    session began, shows the same bytes in disk, the created file in fs/,
#    and changes.txt lists it and the deleted one;
#  - after SYNCHRONIZE CACHE and more unflushed writes: the same, again;
#  - the client's further disk (LUN 1): pc01/games@live reads its unflushed
#    write too;
#  - the watchdog: an interval scan (which reads a live client as its
#    session last flushed it, over NBD too) finds the flushed evil.exe while
#    the session runs, a scan at or after the end the later.txt written
#    after the flush;
#  - after the logout (the session ends, the overlay on disk is quiescent):
#    the same bytes from the overlay file, through the view's old connection
#    too;
#  - hostile requests on STATE/view-iscsi.sock get an error, and the target
#    and its view go on.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
. "$abs_top_srcdir/tests/iscsi-functions.sh"
tb_require nbdcopy nbdinfo debugfs mke2fs
tb_setup
. "$abs_top_srcdir/tests/fuse-functions.sh"

T=$TB_TMP
P=$(tb_free_port)
mkdir -p "$T/root/etc" "$T/root/home/user"
echo "the master's motd" >"$T/root/etc/motd"
echo "notes of the master" >"$T/root/home/user/notes.txt"
truncate -s 32M "$T/master.img"
mke2fs -q -F -t ext4 -b 4096 -d "$T/root" "$T/master.img" || tb_fail "mke2fs"
# What the "guest" makes of it: step 1 creates /evil.exe and deletes
# /etc/motd, step 2 creates /home/user/later.txt.
echo "MZ: not really a program" >"$T/evil"
echo "written after the sync" >"$T/later"
cp "$T/master.img" "$T/step1.img"
debugfs -w -R "write $T/evil evil.exe" "$T/step1.img" >/dev/null 2>&1
debugfs -w -R "rm etc/motd" "$T/step1.img" >/dev/null 2>&1
cp "$T/step1.img" "$T/step2.img"
debugfs -w -R "write $T/later home/user/later.txt" "$T/step2.img" >/dev/null 2>&1
debugfs -R "stat evil.exe" "$T/step1.img" 2>/dev/null | grep -q "Size: 25" || tb_fail "debugfs did not write evil.exe"

state=$T/state
td_config "$T/tabula.json" "$state" '{
    "pc01": { "image": "demo", "policy": "rollback",
              "disks": { "games": { "image": "other", "policy": "persist" } },
              "watchdog": { "interval": "1s", "rules": [
                { "name": "exe", "path": "/**/*.exe", "on": "created", "action": "alert" },
                { "name": "later", "path": "/home/user/later.txt", "on": "created", "action": "alert" } ] } }
  }' "\"listen\": { \"iscsi\": \"127.0.0.1:$P\" }, \"iscsi\": { \"program\": \"$TB_ISCSID\" }"
TD_CONF=$T/tabula.json
tctl image import demo "$T/master.img" >/dev/null || tb_fail "import"
tb_make_file "$T/games.img" 8388608 5
tctl image import other "$T/games.img" >/dev/null || tb_fail "import other"
td_start "$T/tabula.json"
td_wait '.iscsi.state == "running"' "tabula-iscsid must be running"
sock=$state/nbd.sock
TB_ISCSI_PORT=$P

# The view first: its pc01@live connection opens while no session runs.
M=$T/view
tf_mount "$M" -c "$T/tabula.json"
fs=$M/clients/pc01/fs/$(ls "$M/clients/pc01/fs")
[ "$(cat "$fs/etc/motd")" = "the master's motd" ] || tb_fail "the view does not show the master: $(ls -R "$fs")"

# The initiator: commands on a fifo, answers in a file.
mkfifo "$T/to-initiator"
tb_iscsi_raw pc01 session <"$T/to-initiator" >"$T/initiator.out" 2>"$T/initiator.log" &
echo $! >"$T/initiator.bgpid"
exec 3>"$T/to-initiator"
# ask COMMAND EXPECTED-ANSWER-RE: one command, waits for its answer.
n_answers=0
ask()
{
  echo "$1" >&3
  n_answers=$((n_answers + 1))
  _i=0
  until [ "$(wc -l <"$T/initiator.out")" -gt "$n_answers" ]; do
    _i=$((_i + 1))
    [ $_i -lt 600 ] || tb_fail "the initiator did not answer \"$1\": $(cat "$T/initiator.out" "$T/initiator.log")"
    sleep 0.1
  done
  tail -n 1 "$T/initiator.out" | grep -Eq "$2" ||
    tb_fail "\"$1\": $(tail -n 1 "$T/initiator.out") $(cat "$T/initiator.log")"
}
_i=0
until grep -q ready "$T/initiator.out"; do
  _i=$((_i + 1))
  [ $_i -lt 300 ] || tb_fail "the initiator did not log in: $(cat "$T/initiator.out" "$T/initiator.log")"
  sleep 0.1
done

# check IMG WHAT: pc01@live and the view show IMG, byte for byte.
check()
{
  rm -f "$T/live.img"
  nbdcopy "nbd+unix:///pc01@live?socket=$sock" "$T/live.img" || tb_fail "$2: nbdcopy of pc01@live"
  cmp -s "$T/live.img" "$1" || tb_fail "$2: a new pc01@live connection does not read what was written ($(cmp "$T/live.img" "$1" | head -1))"
  cmp -s "$M/clients/pc01/disk" "$1" ||
    tb_fail "$2: the view's disk does not read what was written ($(cmp "$M/clients/pc01/disk" "$1" | head -1))"
}

# overlay_bytes: the bytes pc01@overlay's map says are data.
overlay_bytes()
{
  nbdinfo --map "nbd+unix:///pc01@overlay?socket=$sock" | awk '$3 == 0 { n += $2 } END { print n + 0 }'
}

# wait_view WHAT CONDITION: until the view (a snapshot lives 2 s) shows it.
wait_view()
{
  _i=0
  until eval "$2"; do
    _i=$((_i + 1))
    [ $_i -lt 200 ] || tb_fail "$1: $(ls -lR "$fs" 2>&1 | head -30) $(cat "$M/clients/pc01/changes.txt")"
    sleep 0.1
  done
}

echo "== unflushed writes over iSCSI: pc01@live, pc01@overlay and the view show them"
ask "writediff $T/step1.img $T/master.img" '^written [1-9][0-9]* blocks$'
blocks=$(tail -n 1 "$T/initiator.out" | cut -d' ' -f2)
tctl --json client pc01 | jq -e '.state == "active"' >/dev/null || tb_fail "pc01 must be in a session: $(tctl client pc01)"
check "$T/step1.img" "unflushed"
[ "$(overlay_bytes)" = $((blocks * 4096)) ] ||
  tb_fail "pc01@overlay shows $(overlay_bytes) data bytes, $blocks blocks of 4096 were written"
wait_view "the view lacks the unflushed evil.exe" \
  '[ "$(cat "$fs/evil.exe" 2>/dev/null)" = "MZ: not really a program" ] && [ ! -e "$fs/etc/motd" ]'
wait_view "changes.txt lacks the unflushed changes" \
  'grep -Eq "^created +file +25 +[^ ]*/evil.exe$" "$M/clients/pc01/changes.txt" &&
   grep -Eq "^deleted +file +[0-9]+ +[^ ]*/etc/motd$" "$M/clients/pc01/changes.txt"'
nbdinfo "nbd+unix:///pc01@live?socket=$sock" | grep -q "base demo@1, session 1, client pc01" ||
  tb_fail "pc01@live's description: $(nbdinfo "nbd+unix:///pc01@live?socket=$sock")"

# wait_rule RULE SCANS: a watchdog-rule event of pc01's RULE from a scan of
# one of SCANS (a jq array).
wait_rule()
{
  _i=0
  until jq -c "select(.type == \"watchdog-rule\" and .client == \"pc01\" and .rule == \"$1\" and
    .kind == \"created\" and (.scan | IN($2[])))" "$state/events.jsonl" 2>/dev/null | grep -q .; do
    _i=$((_i + 1))
    [ $_i -lt 300 ] || tb_fail "no $2 scan found rule $1 on the iSCSI client: $(tctl events --client pc01 --last 10)"
    sleep 0.1
  done
}

echo "== hostile requests on the view socket"
python3 - "$state/view-iscsi.sock" >"$T/hostile.out" 2>&1 <<'EOF2' || tb_fail "hostile requests: $(cat "$T/hostile.out")"
import socket, struct, sys
def ask(req):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(sys.argv[1])
    s.sendall(req)
    h = b""
    while len(h) < 16:
        chunk = s.recv(16 - len(h))
        if not chunk:
            return "closed"
        h += chunk
    magic, status, length, _ = struct.unpack("<IIII", h)
    return "status %d" % status
def req(op, off, count, expect, ident):
    return struct.pack("<IIQQQ", 0x51564254, op, off, count, expect) + ident.ljust(72, b"\0")
print(ask(b"\xff" * 104))                                # no magic
print(ask(req(2, 0, 1 << 30, 0, b"pc01")))              # a read of 1 GiB
print(ask(req(2, 1 << 62, 4096, 0, b"pc01")))           # past the end
print(ask(req(2, 0, 4096, 12345, b"pc01")))             # another disk size
print(ask(req(2, 0, 4096, 0, b"../../etc")))            # not a client id
print(ask(req(9, 0, 0, 0, b"pc01")))                    # no such op
print(ask(req(2, 0, 4096, 0, b"nobody")))               # no session of that name
EOF2
[ "$(tr '\n' ' ' <"$T/hostile.out")" = "status 22 status 22 status 22 status 116 status 22 status 22 status 2 " ] ||
  tb_fail "hostile requests on view-iscsi.sock: $(cat "$T/hostile.out")"
check "$T/step1.img" "after hostile requests"

echo "== a flush, then more unflushed writes"
ask sync '^synced$'
check "$T/step1.img" "flushed"
wait_rule exe '["interval"]'
ask "writediff $T/step2.img $T/step1.img" '^written [1-9][0-9]* blocks$'
check "$T/step2.img" "written after the flush"
wait_view "the view lacks later.txt" '[ "$(cat "$fs/home/user/later.txt" 2>/dev/null)" = "written after the sync" ]'

echo "== the further disk, LUN 1"
head -c 8192 /dev/urandom >"$T/games-blk"
cp "$T/games.img" "$T/games-new.img"
dd if="$T/games-blk" of="$T/games-new.img" bs=4096 seek=100 conv=notrunc status=none
ask "write 409600 $T/games-blk 1" '^written 8192$'
nbdcopy "nbd+unix:///pc01/games@live?socket=$sock" "$T/games-live.img" || tb_fail "nbdcopy of pc01/games@live"
cmp -s "$T/games-live.img" "$T/games-new.img" ||
  tb_fail "pc01/games@live does not read LUN 1's unflushed write ($(cmp "$T/games-live.img" "$T/games-new.img" | head -1))"

echo "== the session ends: the overlay on disk, through the same connections"
ask quit '^bye$'
exec 3>&-
wait "$(cat "$T/initiator.bgpid")" || true
rm -f "$T/initiator.bgpid"
tb_wait_idle "$state" pc01
check "$T/step2.img" "after the session"
rm -f "$T/games-live.img"
nbdcopy "nbd+unix:///pc01/games@live?socket=$sock" "$T/games-live.img" || tb_fail "nbdcopy of pc01/games@live"
cmp -s "$T/games-live.img" "$T/games-new.img" || tb_fail "pc01/games@live after the session: $(cmp "$T/games-live.img" "$T/games-new.img" | head -1)"
# Usually the session-end scan; an interval scan queued before the end may
# read the flushed file first (a hit is reported once a session).
wait_rule later '["session-end", "interval"]'
tf_umount "$M"
td_stop
tb_check_logs
echo PASS
