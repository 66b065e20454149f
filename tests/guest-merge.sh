#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# tabulactl merge of a real guest's disk: vm01 (persist) installs files and
# removes one in its session; `tabulactl merge vm01 --into demo` publishes
# demo@2; a second client, which never ran, boots demo@2 and sees exactly
# vm01's files; a client pinned to demo@1 still sees the old master.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup
. "$abs_top_srcdir/tests/guest-functions.sh"

T=$TB_TMP
mkdir -p "$T/root/etc" "$T/root/opt"
echo "the master's motd" >"$T/root/etc/motd"
echo "version 1" >"$T/root/opt/VERSION"
tg_appliance "$T/root" '{
    "vm01": { "image": "demo", "policy": "persist" },
    "pc02": { "image": "demo", "policy": "rollback" },
    "old1": { "image": "demo", "version": 1, "policy": "rollback" }
  }'

echo "== vm01 installs an update"
tg_boot vm01 "$sock" vm01 \
  write:/opt/VERSION:version-2,random:/opt/app/app.bin:1500,write:/opt/app/app.conf:enabled,rm:/etc/motd,list
tb_wait_idle "$state" vm01

echo "== merge into demo"
tctl --json merge vm01 --into demo --note "vm01's update" >"$T/merge.json" || tb_fail "merge: $(cat "$T/merge.json")"
jq -e '.image == "demo" and .version == 2' "$T/merge.json" >/dev/null || tb_fail "merge result: $(cat "$T/merge.json")"
tb_event "$state" '.type == "merge" and .client == "vm01" and .version == 2' "merge event"

echo "== a second client boots the merged version"
tg_boot pc02 "$sock" pc02 list
tg_same_files "$T/vm01.files" "$T/pc02.files" "pc02 must see vm01's merged files"
tctl --json client pc02 | jq -e '.version == 2' >/dev/null || tb_fail "pc02 must run demo@2: $(tctl --json client pc02)"

echo "== vm01 continues on demo@2 with its files"
tg_boot vm01b "$sock" vm01 list
tg_same_files "$T/vm01.files" "$T/vm01b.files" "vm01 after its merge"

echo "== a client pinned to demo@1 sees the old master"
tg_boot old1 "$sock" old1 list
tg_same_files "$T/master.files" "$T/old1.files" "old1 (demo@1)"
td_stop
tb_check_logs
echo PASS
