#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# bench-pull.sh: the delta pull of a 4 GiB version that differs from the local
# one in 5% of its chunks, side by side with `curl -o` of the whole file from
# the same nginx in the same run.  Bytes come from nginx's access log
# ($bytes_sent, headers included); times are wall clock, and include making
# the file durable (the pull fsyncs; curl's file gets a sync).  Fails if the
# pull transferred more than 6% of the image.
#
# Where the pull's time goes without a network limit: cloning the local base
# (a reflink on XFS or btrfs, O(1); a full copy on ext4), writing it back to
# disk, and hashing the whole result once.
#
#   scripts/bench-pull.sh [BUILD_DIR]      (default: the current directory)
#   SIZE_GIB=4 CHANGED_PERMILLE=50 PARALLEL=4 LINK_RATE=100M TMPDIR=/var/tmp
#
# Loopback has no bandwidth limit, so the pair is run twice: unlimited, and
# with both tools limited to LINK_RATE bytes/s (a WAN or a busy LAN), where
# the bytes not sent are what the delta saves.  LINK_RATE= skips that pair.
#
# Needs about 6 x SIZE of free disk in $TMPDIR (two stores, the repository,
# the curl copy), nginx, curl and openssl.
set -euo pipefail
. "$(dirname "$0")/benchlib.sh"

build=${1:-.}
build=$(cd "$build" && pwd)
ctl=$build/tabulactl/tabulactl
[ -x "$ctl" ] || {
  echo "bench-pull: $ctl is not built (give the build directory)" >&2
  exit 1
}
command -v nginx >/dev/null 2>&1 || PATH=$PATH:/usr/sbin
for t in nginx curl openssl python3; do
  command -v $t >/dev/null || {
    echo "bench-pull: $t is not installed" >&2
    exit 1
  }
done

size_gib=${SIZE_GIB:-4}
permille=${CHANGED_PERMILLE:-50}
parallel=${PARALLEL:-4}
link_rate=${LINK_RATE-100M}
tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/tabula-bench-pull.XXXXXX")
nginx_pid=
cleanup()
{
  [ -n "$nginx_pid" ] && kill -TERM "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

chunk=$((4 * 1024 * 1024))
size=$((size_gib * 1024 * 1024 * 1024))
chunks=$((size / chunk))
echo "bench-pull: ${size_gib} GiB image, $chunks chunks of 4 MiB, ${permille} per mille changed, in $tmp"

# Incompressible data, fast: AES-CTR of zeros.
head -c "$size" /dev/zero |
  openssl enc -aes-128-ctr -nosalt -pass pass:tabula-bench 2>/dev/null >"$tmp/v1.img"
cp "$tmp/v1.img" "$tmp/v2.img"
changed=$(python3 - "$tmp/v2.img" "$chunks" "$permille" <<'EOF'
import os, sys
path, chunks, permille = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
n = chunks * permille // 1000
step = chunks / n
with open(path, "r+b") as f:
    for k in range(n):
        c = int(k * step)
        f.seek(c * 4194304 + 8192)
        f.write(os.urandom(65536))
print(n)
EOF
)

for s in pub app; do
  printf '{"state_dir": "%s", "images": {"demo": {}}}\n' "$tmp/$s" >"$tmp/$s.json"
done
"$ctl" -c "$tmp/pub.json" image import demo "$tmp/v1.img" >/dev/null
"$ctl" -c "$tmp/pub.json" image import demo "$tmp/v2.img" >/dev/null
"$ctl" -c "$tmp/app.json" image import demo "$tmp/v1.img" >/dev/null
"$ctl" -c "$tmp/pub.json" image publish demo@2 "$tmp/www" >/dev/null
rm -f "$tmp/v1.img" "$tmp/v2.img"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$tmp/nginx/logs" "$tmp/nginx/tmp"
{
  [ "$(id -u)" = 0 ] && echo "user root root;"
  cat <<EOF
worker_processes 2;
daemon off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/logs/error.log;
events { worker_connections 256; }
http {
  log_format tb '\$status \$bytes_sent "\$request"';
  access_log $tmp/nginx/logs/access.log tb;
  client_body_temp_path $tmp/nginx/tmp/body;
  proxy_temp_path $tmp/nginx/tmp/proxy;
  fastcgi_temp_path $tmp/nginx/tmp/fastcgi;
  uwsgi_temp_path $tmp/nginx/tmp/uwsgi;
  scgi_temp_path $tmp/nginx/tmp/scgi;
  sendfile on;
  default_type application/octet-stream;
  server { listen 127.0.0.1:$port; root $tmp/www; }
}
EOF
} >"$tmp/nginx/nginx.conf"
nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" &
nginx_pid=$!
for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$port/" && break
  sleep 0.1
done
url=http://127.0.0.1:$port
served()
{
  awk '{ s += $2 } END { print s + 0 }' "$tmp/nginx/logs/access.log"
}
now()
{
  date +%s.%N
}
# Both runs read the repository from the page cache: drop it if we may.
drop_caches()
{
  sync
  echo 3 2>/dev/null >/proc/sys/vm/drop_caches || true
}

# run_pair LABEL [RATE]: one delta pull (into a fresh copy of the app store's
# config, so every pull starts from demo@1 alone) and one curl -o; appends a
# line of figures to $tmp/rows.
run_pair()
{
  label=$1
  rate=${2:-}
  rm -rf "$tmp/app/images/demo/2.img" "$tmp/app/images/demo/2.json" "$tmp/curl.img"
  drop_caches
  : >"$tmp/nginx/logs/access.log"
  t0=$(now)
  "$ctl" -c "$tmp/app.json" image pull demo --from "$url" --parallel "$parallel" --json \
    ${rate:+--rate-limit "$rate"} >"$tmp/pull.json"
  t1=$(now)
  pull_bytes=$(served)
  drop_caches
  : >"$tmp/nginx/logs/access.log"
  t2=$(now)
  curl -sS -o "$tmp/curl.img" ${rate:+--limit-rate "$rate"} "$url/demo/2.img"
  sync "$tmp/curl.img" # the pull's time includes making its file durable too
  t3=$(now)
  curl_bytes=$(served)
  cmp -s "$tmp/curl.img" "$tmp/app/images/demo/2.img" || {
    echo "bench-pull: the pulled version differs from the published file" >&2
    exit 1
  }
  echo "$label $pull_bytes $t0 $t1 $curl_bytes $t2 $t3" >>"$tmp/rows"
}

: >"$tmp/rows"
run_pair unlimited
[ -z "$link_rate" ] || run_pair "$link_rate/s" "$link_rate"

python3 - "$size" "$changed" "$chunks" "$tmp/rows" "$tmp/pull.json" <<'EOF'
import json, sys
size, changed, chunks = (int(x) for x in sys.argv[1:4])
r = json.load(open(sys.argv[5]))
gib = 1024 ** 3
print()
print(f"image {size / gib:.0f} GiB, {chunks} chunks, {changed} changed ({100 * changed / chunks:.1f}%); "
      f"pull downloaded {r['chunks_downloaded']} chunks, cloned {r['chunks_cloned']}")
print(f"{'link':10} {'':22} {'bytes from nginx':>18} {'% of image':>11} {'seconds':>8}")
worst = 0
for line in open(sys.argv[4]):
    label, pb, t0, t1, cb, t2, t3 = line.split()
    pb, cb = int(pb), int(cb)
    worst = max(worst, pb)
    for name, b, t in (("tabulactl image pull", pb, float(t1) - float(t0)),
                       ("curl -o + sync (whole)", cb, float(t3) - float(t2))):
        print(f"{label:10} {name:22} {b:>18,} {100 * b / size:>10.2f}% {t:>8.2f}")
        label = ""
with open(sys.argv[4]) as f:
    rows = [l.split() for l in f]
import os
summary = os.environ.get("TB_BENCH_SUMMARY")
if summary:
    with open(summary, "a") as out:
        for label, pb, t0, t1, cb, t2, t3 in rows:
            out.write(f"delta pull {size / gib:.0f} GiB, {100 * changed / chunks:.0f}% changed, link {label}: bytes\t"
                      f"{100 * int(pb) / size:.2f} % of image\tcurl -o (whole file)\t{100 * int(cb) / size:.2f} % of image\t<= 6%\n")
            out.write(f"delta pull {size / gib:.0f} GiB, link {label}: time\t{float(t1) - float(t0):.1f} s\t"
                      f"curl -o (whole file)\t{float(t3) - float(t2):.1f} s\t(anchor)\n")
if worst > size * 6 // 100:
    print(f"FAIL: a delta pull transferred {100 * worst / size:.2f}% of the image (limit 6%)")
    sys.exit(1)
EOF
