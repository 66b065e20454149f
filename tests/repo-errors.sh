#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Pulls that must fail, each with a message that says what went wrong, and
# leave the local store exactly as it was: a chunk corrupted on the server,
# 404, 500, a redirect loop, a server that stalls, a server that is down, a
# server without range requests, an index that is not JSON, is too large, or
# lies about sizes.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/repo-common.sh"

repo_setup 8 11 12 2 5
ctl "$pub" image publish demo@1 "$www" >/dev/null || tb_fail "publish demo@1"
ctl "$pub" image publish demo@2 "$www/corrupt" >/dev/null || tb_fail "publish demo@2"
repo_serve

# The appliance starts with demo@1.
ctl "$app" image pull demo --from "$url" >/dev/null || tb_fail "pull demo@1"
before=$(store_snapshot "$app")

# pull_fails WHAT REGEX ARGS...: the pull fails and the store is unchanged.
pull_fails()
{
  _w=$1
  _r=$2
  shift 2
  expect_fail "$_w" "$_r" timeout 60 "$TB_CTL" -c "$app.json" image pull demo "$@"
  [ "$(store_snapshot "$app")" = "$before" ] || tb_fail "$_w: the local store changed"
}

# A chunk corrupted on the server: named in the error, nothing published.
python3 -c '
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(5 * 4194304 + 100000)
    b = f.read(1)
    f.seek(5 * 4194304 + 100000)
    f.write(bytes([b[0] ^ 0xff]))
' "$www/corrupt/demo/2.img"
pull_fails "corrupt chunk" "chunk 5 \(bytes 20971520-25165823\) is corrupt" --from "$url/corrupt"
grep -q '"type":"image-pull-failed"' "$app/events.jsonl" || tb_fail "no image-pull-failed event"

pull_fails "404" "HTTP 404 Not Found: the repository has no image \"demo\"" --from "$url/nothere"
pull_fails "500" "index.json: the index of demo: HTTP 500" --from "$url/err500"
pull_fails "redirect loop" "more than 5 redirects" --from "$url/loop"
pull_fails "server down" "cannot connect.*is the repository server up" \
  --from "http://127.0.0.1:$(tb_free_port)"

# A server that accepts connections and never answers: the stall timeout.
python3 -c '
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(16)
print(s.getsockname()[1], flush=True)
held = []
end = time.time() + 120
while time.time() < end:
    s.settimeout(1)
    try:
        held.append(s.accept()[0])
    except socket.timeout:
        pass
' >"$TB_TMP/stall.port" 2>"$TB_TMP/stall.log" &
echo $! >"$TB_TMP/stall.bgpid"
i=0
until [ -s "$TB_TMP/stall.port" ]; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "stalling server did not start"
  sleep 0.1
done
pull_fails "stalling server" "sent nothing for 2s \(stall timeout" \
  --from "http://127.0.0.1:$(cat "$TB_TMP/stall.port")" --stall-timeout 2s

# A server without range requests (python's http.server answers 200 with the
# whole file): refused, since nothing could be verified chunk by chunk.
plain=$(tb_free_port)
python3 -m http.server --bind 127.0.0.1 --directory "$www" "$plain" \
  >"$TB_TMP/plain.log" 2>&1 &
echo $! >"$TB_TMP/plain.bgpid"
i=0
until curl -s -o /dev/null "http://127.0.0.1:$plain/"; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "python http.server did not start"
  sleep 0.1
done
pull_fails "no range support" "HTTP 200 with the whole file instead of 206 Partial Content" \
  --from "http://127.0.0.1:$plain/corrupt"

# Indexes that are not what they claim to be.
mkdir -p "$www/notjson/demo" "$www/big/demo" "$www/longer/demo" "$www/shorter/demo" \
  "$www/count/demo" "$www/other/demo"
echo "<html><body>Welcome to nginx!</body></html>" >"$www/notjson/demo/index.json"
pull_fails "index not JSON" "not a valid index: not JSON" --from "$url/notjson"

head -c 100000 /dev/zero | tr '\0' ' ' >"$www/big/demo/index.json"
repo_write_config "$TB_TMP/small" '"pull": {"max_index_size": "16K"}'
expect_fail "index too large" "larger than the limit of 16384 bytes" \
  "$TB_CTL" -c "$TB_TMP/small.json" image pull demo --from "$url/big"

# lie DIR PYTHON: DIR gets demo@1's file and an index edited by PYTHON (v = the entry).
lie()
{
  cp "$www/demo/1.img" "$www/$1/demo/1.img"
  python3 -c "
import json, sys
ix = json.load(open(sys.argv[1]))
v = ix['versions'][0]
$2
json.dump(ix, open(sys.argv[2], 'w'))
" "$www/demo/index.json" "$www/$1/demo/index.json"
}
# The app must not find these versions locally, so change their sha256 too.
lie longer "v['size'] += 4194304; v['chunks'].append('00' * 32); v['sha256'] = '11' * 32"
# Two chunks fail, downloaded at once: chunk 8 comes back short (a 206 with
# the file's last bytes), chunk 9 lies wholly past the end (416).  Whichever
# answer comes first is the error; each names the problem.
pull_fails "index says the file is longer" \
  "HTTP 416 range not satisfiable: the file on the server is shorter than the index says|chunk 8: the file on the server is 33566777 bytes, the index says 37761081" \
  --from "$url/longer"
lie shorter "v['size'] -= 1; v['sha256'] = '11' * 32"
pull_fails "index says the file is shorter" \
  "the file on the server is [0-9]+ bytes, the index says [0-9]+" --from "$url/shorter"
lie count "v['chunks'].pop(); v['sha256'] = '11' * 32"
pull_fails "index chunk count" "does not have one hash per chunk of \"size\"" --from "$url/count"
mkdir -p "$www/wholesha/demo"
lie wholesha "v['sha256'] = '11' * 32"
pull_fails "index whole sha256" "the assembled image's digest is [0-9a-f]{64}, the index says 1111" \
  --from "$url/wholesha"
# Retrying cannot help, so its partial file is not kept for a resume.
[ ! -e "$app/pulls/demo/1111111111111111" ] || tb_fail "inconsistent pull kept its state"
lie other "ix['image'] = 'win11'"
pull_fails "index of another image" "\"image\" is not \"demo\"" --from "$url/other"

# After all that, the good repository still works (and the failed corrupt
# pull left no version behind).
ctl "$app" image pull demo --from "$url" | grep -q "already here as demo@1" ||
  tb_fail "pull from the good repository"
[ ! -e "$app/images/demo/2.json" ] || tb_fail "a failed pull published demo@2"
echo "repo-errors: ok"
