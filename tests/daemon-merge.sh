#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# merge ID --into IMAGE: the new version equals base + overlay block for block
# (checked against the client's ID@live export read before the merge), its
# manifest verifies, only differing blocks were written; the merged client
# continues on the new version with an empty overlay, a rollback client boots
# the new version at its next session, a persist client stays on its pinned
# version.  A merge is refused while the client is in a session.  kill -9 of
# the daemon mid-merge leaves no new version or a complete one.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup
tb_require nbdcopy

K=65536
M=$((8 * 1024 * 1024))
state=$TB_TMP/state
tb_make_file "$TB_TMP/v1.img" $M 1 $((6 * 1024 * 1024)) # last 2 MiB sparse
conf=$TB_TMP/tabula.json
td_config "$conf" "$state" '{
    "vm01": { "image": "demo", "policy": "persist" },
    "pc01": { "image": "demo", "policy": "rollback" },
    "vm02": { "image": "demo", "policy": "persist" },
    "new1": { "image": "demo" }
  }'
TD_CONF=$conf
tctl image import demo "$TB_TMP/v1.img" >/dev/null || tb_fail "import"
td_start "$conf"
sock=$state/nbd.sock
io() { "$TB_IO" -s "$sock" "$@"; }

echo "== sessions: vm01 writes data, zeros over data, zeros over a hole, rewrites equal data"
io -e vm02 write:0:4096:7 || tb_fail "vm02"
tb_wait_idle "$state" vm02
io -e vm01 write:0:$K:5 write:$((1024 * 1024)):$((3 * K)):6 zero:$((2 * 1024 * 1024)):$K \
  zero:$((7 * 1024 * 1024)):$K trim:$((3 * 1024 * 1024)):$K write:$((4 * 1024 * 1024)):$K:1 \
  write:$((M - 4096)):4096:9 || tb_fail "vm01 writes"
tb_wait_idle "$state" vm01
nbdcopy "nbd+unix:///vm01@live?socket=$sock" "$TB_TMP/expected.img" || tb_fail "read vm01@live"

echo "== merge refused during a session"
mkfifo "$TB_TMP/h.fifo"
"$TB_IO" -s "$sock" -e vm01 read:0:4096:5 hold <"$TB_TMP/h.fifo" >"$TB_TMP/h.out" 2>&1 &
iopid=$!
sleep 2147483647 >"$TB_TMP/h.fifo" &
holdpid=$!
i=0; until grep -q holding "$TB_TMP/h.out" 2>/dev/null; do i=$((i + 1)); [ $i -lt 100 ] || tb_fail "hold"; sleep 0.1; done
td_expect_fail "merge during a session" "in a session" tctl merge vm01 --into demo
tctl --json client vm01 | jq -e '.live.state == "booting"' >/dev/null ||
  tb_fail "vm01 must be booting: $(tctl --json client vm01)"
kill $holdpid; wait $iopid || tb_fail "held session"
tb_wait_idle "$state" vm01

echo "== merge"
tctl --json merge vm01 --into demo --note "vm01 merged" >"$TB_TMP/merge.json" || tb_fail "merge: $(cat "$TB_TMP/merge.json")"
jq -e '.image == "demo" and .version == 2 and .base_version == 1 and .client_moved == true' "$TB_TMP/merge.json" >/dev/null ||
  tb_fail "merge result: $(cat "$TB_TMP/merge.json")"
# dirty: 64K + 192K + 64K + 64K + 64K + 64K + 4K; the rewrite of equal data (64K at 4M)
# and the zeros over the hole (64K at 7M) do not differ from the base.
dirty=$((K + 3 * K + K + K + K + K + 4096))
changed=$((dirty - K - K))
jq -e ".dirty_bytes == $dirty and .changed_bytes == $changed" "$TB_TMP/merge.json" >/dev/null ||
  tb_fail "merge figures (dirty $dirty, changed $changed expected): $(cat "$TB_TMP/merge.json")"
cmp "$state/images/demo/2.img" "$TB_TMP/expected.img" || tb_fail "demo@2 differs from vm01's base + overlay"
jq -e '.note == "vm01 merged" and .parent == 1' "$state/images/demo/2.json" >/dev/null || tb_fail "manifest note/parent"
[ "$(jq -r .sha256 "$state/images/demo/2.json")" = "$(tb_digest "$state/images/demo/2.img")" ] ||
  tb_fail "demo@2 does not verify against its manifest"
tb_event "$state" '.type == "merge" and .client == "vm01" and .version == 2' "merge event"

echo "== after the merge"
tctl --json client vm01 | jq -e '.image == "demo" and .version == 2 and .dirty_bytes == 0' >/dev/null ||
  tb_fail "vm01 must continue on demo@2 with an empty overlay: $(tctl --json client vm01)"
io -e vm01 read:0:$K:5 read:$((K)):4096:1 rewrite:0:4096 || tb_fail "vm01 next session on demo@2"
tb_wait_idle "$state" vm01
io -e pc01 read:0:$K:5 read:$((2 * 1024 * 1024)):$K:0 rewrite:0:4096 || tb_fail "pc01 must boot demo@2"
tb_wait_idle "$state" pc01
tctl --json client pc01 | jq -e '.version == 2' >/dev/null || tb_fail "pc01 on demo@2"
io -e vm02 read:0:4096:7 read:4096:4096:1 || tb_fail "vm02 (persist) must stay on demo@1 with its overlay"
tb_wait_idle "$state" vm02
tctl --json client vm02 | jq -e '.version == 1' >/dev/null || tb_fail "vm02 stays pinned to demo@1"
# Guardrails (issue 18 §2): a base older than the newest needs --force and
# says what it would supersede; --into must name a configured image.
td_expect_fail "merge from an older base" \
  "vm02 is on demo@1 but demo@2 is the newest: the merge would make demo@3 from @1 and supersede what @2 changed; pass --force" \
  tctl merge vm02 --into demo
td_expect_fail "merge into an image not configured" "no image nosuch in the configuration" \
  tctl merge vm02 --into nosuch
[ ! -e "$state/images/nosuch" ] || tb_fail "a refused merge created image nosuch"
td_expect_fail "merge of a client that never ran" "no overlay to merge" tctl merge new1 --into demo

echo "== merge of a retained session into another image"
n=$(tctl --json sessions vm01 | jq '[.sessions[] | select(.version == 1)][-1].session')
[ "$n" != null ] || tb_fail "vm01's merged overlay must be retained: $(tctl sessions vm01)"
# On a terminal (script(1)), with its progress line (issue 18 §4): bytes
# while cloning and applying, the chunk hashing counted in chunks, not
# bytes; the result on a line of its own.
script -qec "'$TD_CTL' -c '$TD_CONF' merge vm01 --session $n --into other" /dev/null \
  </dev/null >"$TB_TMP/merge.raw" 2>&1 || tb_fail "merge --session $n --into other: $(cat "$TB_TMP/merge.raw")"
tr '\r' '\n' <"$TB_TMP/merge.raw" | sed 's/\x1b\[K//g' >"$TB_TMP/merge.tty"
for re in '^merging vm01 into other: cloning \[[#.]+\] +[0-9]+% [0-9.]+ [KMG]?i?B of 8.0 MiB' \
  '^merging vm01 into other: applying \[[#.]+\] +[0-9]+% [0-9.]+ [KMG]?i?B of [0-9.]+ [KMG]?i?B' \
  '^merging vm01 into other: hashing chunks \[[#.]+\] +[0-9]+% [0-9]+ of 2' \
  '^merged vm01 into other@1 '; do
  grep -Eq "$re" "$TB_TMP/merge.tty" || tb_fail "merge on a terminal: no line /$re/: $(cat "$TB_TMP/merge.tty")"
done
if grep -E 'hashing chunks .* [0-9.]+ [KMG]?i?B of' "$TB_TMP/merge.tty"; then
  tb_fail "merge's chunk hashing is shown in bytes"
fi
echo "ok: merge's progress on a terminal: $(grep -c 'merging vm01' "$TB_TMP/merge.tty") redraws"
cmp "$state/images/other/1.img" "$TB_TMP/expected.img" || tb_fail "other@1 differs"

echo "== kill -9 of the daemon in the middle of merges"
big=$((256 * 1024 * 1024))
tb_make_file "$TB_TMP/big.img" $big 3 $big
tctl image import other "$TB_TMP/big.img" --force >/dev/null # a new size: --force
tctl reimage vm02 other >/dev/null
io -e vm02 fill:0:$((128 * 1024 * 1024)):1048576:8 >/dev/null || tb_fail "vm02 fill"
tb_wait_idle "$state" vm02
for delay in 0.05 0.3 0.8 1.5; do
  before=$(ls "$state/images/other" | grep -c '\.json$' || true)
  tctl merge vm02 --into other >/dev/null 2>&1 &
  mpid=$!
  sleep $delay
  td_kill9
  wait $mpid 2>/dev/null || true
  td_start "$conf"
  after=$(ls "$state/images/other" | grep -c '\.json$' || true)
  for man in "$state"/images/other/*.json; do
    img=${man%.json}.img
    [ -f "$img" ] || tb_fail "$man without its image"
    [ "$(jq -r .sha256 "$man")" = "$(tb_digest "$img")" ] || tb_fail "$img does not verify (delay $delay)"
  done
  ls -a "$state/images/other" | grep -q 'tmp$' && tb_fail "leftover temporary after restart: $(ls -a "$state/images/other")"
  for img in "$state"/images/other/*.img; do
    [ -f "${img%.img}.json" ] || tb_fail "$img without a manifest after restart"
  done
  echo "delay $delay: versions $before -> $after"
  # Interrupted at any point, a merge leaves no new version or one complete one.
  [ "$after" -ge "$before" ] && [ "$after" -le $((before + 1)) ] ||
    tb_fail "delay $delay: versions $before -> $after (a killed merge adds none or one)"
  # vm02 is usable whatever happened
  io -e vm02 read:0:4096:8 >/dev/null 2>&1 || io -e vm02 read:0:4096:3 >/dev/null 2>&1 ||
    tb_fail "vm02 unusable after a killed merge"
  tb_wait_idle "$state" vm02
done

td_stop
tb_check_logs
echo PASS
