#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# An admin handle outlives a change of the client's disk: root opens
# big01@live (8 MiB) while no session runs, the client is re-imaged to a
# 1 MiB image, a session of it runs and ends, and the handle reads at 4 MiB.
# It must get ESTALE ("the client's disk changed ... reconnect"; EINVAL on
# the wire, NBD has no ESTALE), not a read
# past the overlay's map (a heap overflow that took nbdkit and every client
# down) or zeros through a handle that still says 8 MiB.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
tb_require jq

M=$((1024 * 1024))
state=$TB_TMP/state
tb_make_file "$TB_TMP/big.img" $((8 * M)) 1
tb_make_file "$TB_TMP/small.img" $M 2
tb_import "$state" big "$TB_TMP/big.img"
tb_import "$state" small "$TB_TMP/small.img"
cat >"$TB_TMP/tabula.json" <<EOF2
{ "state_dir": "$state", "reconnect_grace": "0s", "images": { "big": {}, "small": {} },
  "clients": { "big01": { "image": "big", "policy": "persist" },
               "other": { "image": "big", "policy": "persist" } } }
EOF2
tb_start s "$TB_TMP/tabula.json"

tb_io s -e big01@live size:$((8 * M)) read:0:4096:1 sleep:4000 !read:$((4 * M)):4096:1 \
  >"$TB_TMP/admin.out" 2>&1 &
admin=$!
sleep 1
mkdir -p "$state/clients/big01"
printf '{"image": "small"}' >"$state/clients/big01/mailbox.json"
tb_io s -e big01 size:$M read:0:4096:2 write:0:4096:5 || tb_fail "big01 on small@1"
tb_wait_idle "$state" big01
wait $admin || tb_fail "the stale admin handle: $(cat "$TB_TMP/admin.out")"
# The plugin fails it with ESTALE, which NBD carries as EINVAL; the log says why.
grep -q "error: EINVAL" "$TB_TMP/admin.out" ||
  tb_fail "a read through the stale admin handle must fail: $(cat "$TB_TMP/admin.out")"
grep -q "big01: the client's disk changed (re-imaged from 8388608 to 1048576 bytes); reconnect" \
  "$TB_TMP/s.log" || tb_fail "the log must say the disk changed: $(tail -5 "$TB_TMP/s.log")"
tb_io s -e other write:0:4096:3 read:0:4096:3 || tb_fail "nbdkit must still serve the others"
tb_stop s
tb_check_logs
