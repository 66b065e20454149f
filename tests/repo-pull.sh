#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Publish versions into a static repository served by a real nginx, then pull
# them into another appliance's store: a first pull fetches every chunk, a
# delta pull of a version that changes 5% of the chunks fetches only those
# (counted from nginx's access log), a repeated pull fetches nothing.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/repo-common.sh"

# The publishing appliance: demo@1, and demo@2 with 2 of 40 chunks (5%) changed.
repo_setup 40 1 2 7 31
size=$(stat -c %s "$TB_TMP/v1.img")

ctl "$pub" image publish demo@1 "$www" >"$TB_TMP/out" || tb_fail "publish demo@1 failed"
grep -q "published demo@1" "$TB_TMP/out" || tb_fail "publish said: $(cat "$TB_TMP/out")"
[ -f "$www/demo/1.img" ] && [ -f "$www/demo/index.json" ] || tb_fail "repository layout"
cmp -s "$www/demo/1.img" "$TB_TMP/v1.img" || tb_fail "published 1.img differs from demo@1"
ls -a "$www/demo" | grep -q '^\.[^.]' && tb_fail "publish left hidden files: $(ls -a "$www/demo")"
python3 -c '
import json, sys
ix = json.load(open(sys.argv[1]))
assert ix["format"] == 1 and ix["image"] == "demo", ix
(v,) = ix["versions"]
assert v["version"] == 1 and v["file"] == "1.img" and v["size"] == int(sys.argv[2]), v
assert v["chunk_size"] == 4194304 and len(v["chunks"]) == 41, v
' "$www/demo/index.json" "$size" || tb_fail "index.json content"
# Publishing the same version again changes nothing.
ctl "$pub" image publish demo@1 "$www" >/dev/null || tb_fail "re-publish demo@1 failed"

repo_serve

# A first pull downloads the whole image.
ctl "$app" image pull demo --from "$url" --json >"$TB_TMP/pull1" || tb_fail "first pull failed"
cat "$TB_TMP/pull1"
cmp -s "$app/images/demo/1.img" "$TB_TMP/v1.img" || tb_fail "pulled demo@1 differs"
jq -e '.chunks_downloaded == 41' "$TB_TMP/pull1" >/dev/null || tb_fail "first pull: not 41 chunks"
served=$(repo_bytes_served)
[ "$served" -ge "$size" ] || tb_fail "first pull: nginx served $served bytes < $size"
echo "first pull: nginx served $served bytes for a $size-byte image"

# Publish demo@2 and pull it: only the 2 changed chunks travel.
ctl "$pub" image publish demo "$www" >"$TB_TMP/out" || tb_fail "publish demo@2 failed"
grep -q "published demo@2" "$TB_TMP/out" || tb_fail "publish said: $(cat "$TB_TMP/out")"
repo_log_reset
ctl "$app" image pull demo --from "$url" >"$TB_TMP/pull2" || tb_fail "delta pull failed"
cat "$TB_TMP/pull2"
cmp -s "$app/images/demo/2.img" "$TB_TMP/v2.img" || tb_fail "pulled demo@2 differs"
grep -q "base demo@1: 39 of 41 chunks cloned" "$TB_TMP/pull2" || tb_fail "delta pull: base"
grep -q "2 chunks downloaded" "$TB_TMP/pull2" || tb_fail "delta pull: chunk count"
served=$(repo_bytes_served)
ranges=$(grep -c '^206 ' "$TB_TMP/nginx/logs/access.log")
[ "$ranges" = 2 ] || tb_fail "delta pull: $ranges range requests, expected 2"
limit=$((size * 6 / 100))
[ "$served" -le "$limit" ] || tb_fail "delta pull: nginx served $served bytes > 6% ($limit)"
echo "delta pull: nginx served $served bytes ($((served * 1000 / size)) per mille of $size)"

# The manifest of the pulled version matches the publisher's, hash for hash.
python3 -c '
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
for k in ("size", "sha256", "chunk_size", "chunks"):
    assert a[k] == b[k], k
assert b["parent"] == 1, b["parent"]
' "$pub/images/demo/2.json" "$app/images/demo/2.json" || tb_fail "pulled manifest differs"

# Pulling again: already present, nothing but the index is fetched.
repo_log_reset
ctl "$app" image pull demo --from "$url" >"$TB_TMP/pull3" || tb_fail "repeated pull failed"
grep -q "already here as demo@2" "$TB_TMP/pull3" || tb_fail "repeated pull: $(cat "$TB_TMP/pull3")"
grep -c '^206 ' "$TB_TMP/nginx/logs/access.log" | grep -qx 0 || tb_fail "repeated pull fetched chunks"
# An explicit older version is found locally as well.
ctl "$app" image pull demo --from "$url" --version 1 | grep -q "already here as demo@1" ||
  tb_fail "pull --version 1"
[ ! -e "$app/pulls/demo" ] || [ -z "$(ls "$app/pulls/demo")" ] || tb_fail "pull state left behind"

# demo@3: two chunks zeroed and one copied from elsewhere in the image.  The
# pull finds all three locally (a zero chunk becomes a hole): no range request.
python3 -c '
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(3 * 4194304)
    moved = f.read(4194304)
    f.seek(10 * 4194304)
    f.write(bytes(2 * 4194304))
    f.seek(12 * 4194304)
    f.write(moved)
' "$TB_TMP/v2.img"
tb_import "$pub" demo "$TB_TMP/v2.img"
ctl "$pub" image publish demo@3 "$www" >/dev/null || tb_fail "publish demo@3 failed"
repo_log_reset
ctl "$app" image pull demo --from "$url" >"$TB_TMP/pull4" || tb_fail "pull demo@3 failed"
cat "$TB_TMP/pull4"
cmp -s "$app/images/demo/3.img" "$TB_TMP/v2.img" || tb_fail "pulled demo@3 differs"
grep -q "0 chunks downloaded (.*), 3 found locally" "$TB_TMP/pull4" || tb_fail "demo@3: not found locally"
grep -c '^206 ' "$TB_TMP/nginx/logs/access.log" | grep -qx 0 || tb_fail "demo@3 fetched chunks"

# Another store's demo@1 is a different image: publishing it over ours is refused.
other=$TB_TMP/other
repo_make_image "$TB_TMP/o1.img" 1 99
tb_import "$other" demo "$TB_TMP/o1.img"
repo_write_config "$other"
expect_fail "publish conflict" "already lists demo@1 with a different sha256" \
  "$TB_CTL" -c "$other.json" image publish demo@1 "$www"
cmp -s "$www/demo/1.img" "$TB_TMP/v1.img" || tb_fail "publish conflict changed 1.img"

# The daemon's scheduled pulls run a "pull" source from the config: each
# source has its own URL, images and schedule.
app2=$TB_TMP/app2
repo_write_config "$app2" "\"pull\": [
  {\"from\": \"$url/nothere\", \"images\": [\"demo\"], \"when\": \"every 1h\"},
  {\"from\": \"$url\", \"when\": \"daily 03:00\", \"make_current\": true}]"
"$abs_builddir/repo-source" "$app2.json" 1 >"$TB_TMP/src1" || tb_fail "source 1: $(cat "$TB_TMP/src1")"
grep -q "when: daily 03:00" "$TB_TMP/src1" && grep -q "make_current: true" "$TB_TMP/src1" ||
  tb_fail "source 1: $(cat "$TB_TMP/src1")"
cmp -s "$app2/images/demo/1.img" "$TB_TMP/v2.img" || tb_fail "scheduled pull: image differs"
st=0
"$abs_builddir/repo-source" "$app2.json" 0 >"$TB_TMP/src0" || st=$?
[ $st = 1 ] && grep -q "failed: 1" "$TB_TMP/src0" || tb_fail "source 0 should fail: $(cat "$TB_TMP/src0")"
grep -q '"type":"image-pull-failed".*HTTP 404' "$app2/events.jsonl" || tb_fail "no failure event"

# An abandoned pull (killed, never resumed) of an older version is removed
# once a newer version has been pulled from the same repository.
app3=$TB_TMP/app3
repo_write_config "$app3"
"$TB_CTL" -c "$app3.json" image pull demo --from "$url" --version 1 --rate-limit 4M \
  >/dev/null 2>&1 &
abandoned=$!
i=0
until ls "$app3"/pulls/demo/*/pull.json >/dev/null 2>&1; do
  i=$((i + 1))
  [ $i -lt 300 ] || tb_fail "the pull to abandon did not start"
  sleep 0.1
done
kill -9 $abandoned
wait $abandoned 2>/dev/null || true
ctl "$app3" image pull demo --from "$url" >/dev/null || tb_fail "pull after an abandoned one"
[ -z "$(ls "$app3/pulls/demo")" ] || tb_fail "abandoned pull state kept: $(ls -R "$app3/pulls")"

# Events record the pulls.
grep -q '"type":"image-pulled"' "$app/events.jsonl" || tb_fail "no image-pulled event"
grep -q '"type":"image-published"' "$pub/events.jsonl" || tb_fail "no image-published event"
echo "repo-pull: ok"
