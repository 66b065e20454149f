#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# An interrupted pull resumes: nginx is stopped in the middle of a slow
# (--rate-limit) pull, which fails and publishes nothing; nginx starts again and
# the same pull completes, fetching only what it did not have.  A chunk damaged
# in the partial file meanwhile is caught by the re-verification and fetched again.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/repo-common.sh"

repo_setup 40 21
size=$(stat -c %s "$TB_TMP/v1.img")
ctl "$pub" image publish demo "$www" >/dev/null || tb_fail "publish"
repo_serve

# verified_chunks: how many chunks the pull in progress has recorded as verified.
verified_chunks()
{
  for f in "$app"/pulls/demo/*/chunks.done; do
    [ -f "$f" ] && tr -cd '\002' <"$f" | wc -c && return
  done
  echo 0
}

# 16 MiB/s over 4 transfers: the 160 MiB pull takes about 10 s.
ctl "$app" image pull demo --from "$url" --rate-limit 16M >"$TB_TMP/pull1.out" \
  2>"$TB_TMP/pull1.err" &
pull=$!
i=0
while [ "$(verified_chunks)" -lt 6 ]; do
  i=$((i + 1))
  kill -0 $pull 2>/dev/null || tb_fail "the pull ended before nginx was stopped: $(cat "$TB_TMP/pull1.err")"
  [ $i -lt 600 ] || tb_fail "the pull verified no chunks in 60 s"
  sleep 0.1
done
# A second pull of the same version while the first runs is refused.
expect_fail "concurrent pull" "another pull of demo@1 is running" \
  "$TB_CTL" -c "$app.json" image pull demo --from "$url"
repo_nginx_stop
st=0
wait $pull || st=$?
[ $st = 1 ] || tb_fail "interrupted pull: exit $st, expected 1: $(cat "$TB_TMP/pull1.out" "$TB_TMP/pull1.err")"
echo "interrupted: $(cat "$TB_TMP/pull1.err")"
grep -q "run the same pull again to resume" "$TB_TMP/pull1.err" || tb_fail "no hint to resume"
[ ! -e "$app/images/demo/1.json" ] || tb_fail "the interrupted pull published a version"
kept=$(verified_chunks)
echo "$kept chunks verified before nginx stopped"

# Damage the first verified chunk of the partial file: the resume must notice.
python3 -c '
import sys, glob
d = glob.glob(sys.argv[1] + "/pulls/demo/*/")[0]
done = open(d + "chunks.done", "rb").read()
c = done.index(2)
with open(d + "partial.img", "r+b") as f:
    f.seek(c * 4194304 + 777)
    b = f.read(1)
    f.seek(c * 4194304 + 777)
    f.write(bytes([b[0] ^ 0xff]))
' "$app"

repo_log_reset
repo_nginx_start
ctl "$app" image pull demo --from "$url" --json >"$TB_TMP/pull2.out" || tb_fail "resumed pull failed"
cat "$TB_TMP/pull2.out"
cmp -s "$app/images/demo/1.img" "$TB_TMP/v1.img" || tb_fail "the resumed pull's image differs"
python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
kept = int(sys.argv[2])
assert r["resumed"] is True, r
assert r["chunks_resumed"] == kept - 1, (r, kept)
assert r["chunks_downloaded"] == 41 - (kept - 1), r
' "$TB_TMP/pull2.out" "$kept" || tb_fail "resumed pull figures"
served=$(repo_bytes_served)
limit=$((size - (kept - 1) * REPO_CHUNK + 65536))
[ "$served" -le "$limit" ] || tb_fail "the resumed pull fetched $served bytes, more than $limit"
echo "resumed pull: nginx served $served of $size bytes"
[ -z "$(ls "$app/pulls/demo" 2>/dev/null)" ] || tb_fail "pull state left behind"
echo "repo-resume: ok"
