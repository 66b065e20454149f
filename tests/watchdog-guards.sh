#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Watchdog guards in the data path, driven by real NBD writes:
#  - "deny" regions (MBR, a partition read from the base's MBR) fail a write
#    that changes their bytes with EPERM, leave the overlay unchanged and
#    record a protect-deny event; a write leaving them as they were passes;
#  - an "alert" region lets the write through and records protect-alert;
#  - a quota gives ENOSPC for new blocks while rewrites of dirty blocks work;
#  - a client with no I/O for its "idle" time raises an idle event;
#  - a protected partition that does not exist refuses the session, saying so.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
tb_require sfdisk mkfs.vfat mke2fs jq

M=1048576
master=$TB_TMP/master.img
truncate -s $((16 * M)) "$master"
printf 'label: dos\nstart=2048, size=8192, type=c\nstart=10240, size=20480, type=83\n' |
  sfdisk -q "$master"
mkfs.vfat --offset 2048 "$master" 4096 >/dev/null 2>&1
mke2fs -q -t ext4 -E offset=$((10240 * 512)) "$master" 10240k
state=$TB_TMP/state
tb_import "$state" demo "$master"

tb_config "$TB_TMP/tabula.json" "$state" '{
  "g1": { "image": "demo", "policy": "persist", "quota": "256K",
          "watchdog": { "protect": [
              { "name": "boot", "region": "mbr", "action": "deny" },
              { "name": "efi", "region": "partition:1", "action": "deny" },
              { "name": "tail", "region": "lba:30000-30719", "action": "alert" } ],
            "idle": "1s" } },
  "bad": { "image": "demo",
           "watchdog": { "protect": [ { "name": "p9", "region": "partition:9" } ] } }
}'
tb_start s "$TB_TMP/tabula.json"

echo "== deny: MBR and partition 1"
tb_io s -e g1 !write:0:512:5 !write:100:4:5 !write:$((2048 * 512 + 4096)):4096:5 \
  !zero:$((2048 * 512)):4096 !trim:$((2048 * 512)):$M >"$TB_TMP/deny.out" ||
  tb_fail "denied writes: $(cat "$TB_TMP/deny.out")"
[ "$(grep -c 'error: EPERM' "$TB_TMP/deny.out")" -eq 5 ] ||
  tb_fail "every denied request must fail with EPERM: $(cat "$TB_TMP/deny.out")"
tb_io s -e g1@overlay extents:0:$((16 * M)) >"$TB_TMP/ext.out"
if grep -v ' 3$' "$TB_TMP/ext.out" | grep -q .; then
  tb_fail "a denied write changed the overlay: $(cat "$TB_TMP/ext.out")"
fi
tb_event "$state" '.type == "protect-deny" and .rule == "boot" and .client == "g1"' "MBR deny"
tb_event "$state" '.type == "protect-deny" and .rule == "efi"' "partition deny"
tb_assert_log s 'protected region "efi"' "the server log must name the region"

echo "== deny regions refuse a change of their bytes, not a write that leaves them as they are"
# ext4 on a bare disk rewrites its first 4 KiB, sector 0 unchanged (issue 18).
tb_io s -e g1 rewrite:0:4096 rewrite:$((2048 * 512)):8192 >"$TB_TMP/same.out" ||
  tb_fail "a write that leaves the MBR and partition 1 as they were was refused: $(cat "$TB_TMP/same.out")"
tb_io s -e g1 !write:0:4096:5 >"$TB_TMP/diff.out" ||
  tb_fail "a write that changes the MBR must still be refused: $(cat "$TB_TMP/diff.out")"

echo "== allowed and alerted writes"
tb_io s -e g1 write:$((10240 * 512)):4096:6 write:$((30000 * 512)):4096:7 \
  read:$((10240 * 512)):4096:6 read:$((30000 * 512)):4096:7 || tb_fail "allowed writes"
tb_event "$state" '.type == "protect-alert" and .rule == "tail" and .offset == 15360000' "alert"
if jq -c 'select(.type == "protect-deny" and .offset == 5242880)' "$state/events.jsonl" | grep -q .; then
  tb_fail "a write outside every deny region was reported as denied"
fi

echo "== quota: 256 KiB"
tb_io s -e g1 fill:$((12 * M)):$((2 * M)):$((64 * 1024)):8 >"$TB_TMP/fill.out" ||
  tb_fail "fill: $(cat "$TB_TMP/fill.out")"
grep -q 'errno ENOSPC' "$TB_TMP/fill.out" || tb_fail "quota must give ENOSPC: $(cat "$TB_TMP/fill.out")"
filled=$(sed -n 's/^filled \([0-9]*\) .*/\1/p' "$TB_TMP/fill.out")
[ "$filled" -le $((256 * 1024)) ] || tb_fail "wrote $filled bytes past a 256 KiB quota"
tb_io s -e g1 write:$((12 * M)):4096:9 read:$((12 * M)):4096:9 ||
  tb_fail "rewriting a dirty block must work under a full quota"
tb_io s -e g1 zero:$((12 * M)):$((64 * 1024)) write:$((13 * M)):4096:9 ||
  tb_fail "zeroing must free quota for new blocks"

echo "== idle"
tb_hold s idle -e g1 write:4096:512:3 read:4096:512:3
sleep 2.5
tb_release idle
tb_event "$state" '.type == "idle" and .client == "g1" and .idle_ms >= 1000' "idle event"

echo "== a partition that does not exist"
st=0
tb_io s -e bad read:0:512:0 >/dev/null 2>&1 || st=$?
[ $st -eq 2 ] || tb_fail "client 'bad' was served (exit $st)"
tb_assert_log s 'partition 9 does not exist' "a missing protected partition must be named"
tb_stop s
tb_check_logs
