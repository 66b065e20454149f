#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# ENOSPC at session end: the state directory on a small filesystem fills up
# while a client writes; when its session ends, session.json must say so
# ("idle", an end time, the dirty figures of the end), not stay "active" with
# the figures of its start (its atomic rewrite needs a new file the full disk
# refuses: the end writes into the spare the start allocated).
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
tb_require mount umount jq

M=1048576
mnt=$TB_TMP/mnt
mkdir -p "$mnt"
if truncate -s 24M "$TB_TMP/fs.img" && mkfs.ext4 -q -F "$TB_TMP/fs.img" 2>/dev/null &&
  mount -o loop "$TB_TMP/fs.img" "$mnt" 2>/dev/null; then
  fs=ext4
elif mount -t tmpfs -o size=24m tmpfs "$mnt" 2>/dev/null; then
  fs=tmpfs
else
  tb_skip "cannot mount a small filesystem here (needs root: loop device or tmpfs)"
fi
TB_MOUNTS=$mnt
echo "== state dir on a 24 MiB $fs"

state=$mnt/state
tb_make_file "$TB_TMP/master.img" $((256 * M)) 1 $M
tb_import "$state" demo "$TB_TMP/master.img"
tb_config "$TB_TMP/tabula.json" "$state" '{ "vm01": { "image": "demo", "policy": "persist" } }'
tb_start s "$TB_TMP/tabula.json"
tb_io s -e vm01 write:0:$M:3 flush fill:$((8 * M)):$((64 * M)):$((256 * 1024)):4 >"$TB_TMP/fill.out" ||
  tb_fail "fill: $(cat "$TB_TMP/fill.out")"
grep -q 'errno ENOSPC' "$TB_TMP/fill.out" || tb_fail "the disk did not fill: $(cat "$TB_TMP/fill.out")"
tb_wait_idle "$state" vm01
rec=$state/clients/vm01/session.json
jq -e '.state == "idle" and (.ended | length) > 0 and .dirty_bytes >= 1048576' "$rec" >/dev/null ||
  tb_fail "session.json after a session that ended on a full disk: $(cat "$rec")"
tb_stop s
umount "$mnt"
TB_MOUNTS=
