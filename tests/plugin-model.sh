#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Randomized model test: thousands of reads, writes, zeroes, trims, flushes
# and block-status requests of random size and alignment over four
# connections, compared with an in-memory model (tests/plugin-model.c), for
# three block sizes, on a disk whose size is not a multiple of the block size.
# Then a new session (persist) must see the same data.  TB_SEED replays a run.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup

size=$((8 * 1024 * 1024 + 1536))
tb_make_file "$TB_TMP/master.img" $size 7 $((5 * 1024 * 1024))

for bs in 4096 512 65536; do
  state=$TB_TMP/state-$bs
  tb_import "$state" demo "$TB_TMP/master.img"
  tb_config "$TB_TMP/tabula-$bs.json" "$state" \
    '{ "vm01": { "image": "demo", "policy": "persist" } }' "\"block_size\": $bs"
  tb_start "s$bs" "$TB_TMP/tabula-$bs.json"
  ops=5000
  [ $bs = 4096 ] && ops=20000
  echo "== block size $bs, $ops requests"
  "$abs_builddir/plugin-model" -s "$TB_TMP/s$bs.sock" -e vm01 -n 4 -d 16 -o $ops -r \
    -b "$TB_TMP/master.img" ||
    tb_fail "model test failed with block size $bs (replay with the seed printed above)"
  tb_stop "s$bs"
done
tb_check_logs
