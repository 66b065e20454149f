#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Per-client I/O limits (clients.ID.limits, lib/limit.c): a limited client is
# held to its rate over all its connections, while an unlimited client served
# by the same nbdkit at the same time is not slowed.  A behaviour check of
# the limiter, bounded to a few seconds: 4 MiB at 1 MiB/s cannot take less
# than 3 s (the burst is 100 ms); 40 writes at 20 per second no less than
# 1.5 s.  No speed is asserted for the unlimited client, only that it
# finishes while the limited one is still held back.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup

M=1048576
state=$TB_TMP/state
tb_make_file "$TB_TMP/master.img" $((8 * M)) 1 $((8 * M))
tb_import "$state" demo "$TB_TMP/master.img"
tb_config "$TB_TMP/tabula.json" "$state" '{
    "slow": { "image": "demo", "group": "lab" },
    "free": { "image": "demo" },
    "iops": { "image": "demo", "limits": { "write_iops": 20 } }
  }' '"groups": { "lab": { "limits": { "read": "1M/s" } } }'
tb_start s "$TB_TMP/tabula.json"

now()
{
  date +%s%N
}
# 16 reads of 256 KiB in order, checked against the master's pattern.
reads=
off=0
while [ $off -lt $((4 * M)) ]; do
  reads="$reads read:$off:262144:1"
  off=$((off + 262144))
done

echo "== a limited and an unlimited client at once"
t0=$(now)
# shellcheck disable=SC2086
tb_io s -e slow -n 2 $reads conn:1 read:$((4 * M)):65536:1 >"$TB_TMP/slow.out" 2>&1 &
slow=$!
# shellcheck disable=SC2086
tb_io s -e free $reads || tb_fail "the unlimited client's reads"
kill -0 $slow 2>/dev/null ||
  tb_fail "the limited client (1 MiB/s) read 4 MiB before an unlimited one did the same: $(cat "$TB_TMP/slow.out")"
wait $slow || tb_fail "the limited client's reads: $(cat "$TB_TMP/slow.out")"
ms=$((($(now) - t0) / 1000000))
echo "limited client: 4 MiB in $ms ms"
[ $ms -ge 3000 ] || tb_fail "4 MiB at 1 MiB/s took $ms ms (at least 3000 expected)"

echo "== write IOPS"
cmds=
i=0
while [ $i -lt 40 ]; do
  cmds="$cmds write:$((i * 4096)):4096:7"
  i=$((i + 1))
done
t0=$(now)
# shellcheck disable=SC2086
tb_io s -e iops $cmds read:0:$((40 * 4096)):7 || tb_fail "the IOPS-limited client's writes"
ms=$((($(now) - t0) / 1000000))
echo "40 writes at 20/s: $ms ms"
[ $ms -ge 1500 ] || tb_fail "40 writes at 20 IOPS took $ms ms (at least 1500 expected)"
# Reads are not limited for this client (its limit is on writes only).
tb_io s -e iops read:0:$((4 * M)):7 2>/dev/null || true

tb_stop s
tb_check_logs
echo ok
