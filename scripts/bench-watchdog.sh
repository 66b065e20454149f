#!/bin/sh
# bench-watchdog.sh: a watchdog file-rule scan at a session end.  The client's
# guest ext4 holds FILES small files (100,000, mke2fs -d from a generated
# tree); its session writes 1 GiB into one new file and creates, changes and
# deletes a handful of others (nbdfuse + debugfs -w, real NBD writes).  The
# daemon then scans the overlay: reported are the created/changed/deleted
# diff (tb_inspect_diff limited to the dirty map, the view's changes.txt
# code), and for comparison a walk of the whole tree (an "exists" glob rule).
#
#   scripts/bench-watchdog.sh [BUILD_DIR] [FILES]   (default: ., 100000)
set -eu
. "$(dirname "$0")/benchlib.sh"
build=$(cd "${1:-.}" && pwd)
files=${2:-100000}
daemon=$build/restored/tabula-restored
ctl=$build/restored/tabulactl
plugin=$build/nbdkit-plugin/.libs/nbdkit-tabula-plugin.so
for f in "$daemon" "$ctl" "$plugin"; do
  [ -x "$f" ] || [ -f "$f" ] || { echo "bench-watchdog: $f is not built" >&2; exit 1; }
done
for t in mke2fs debugfs nbdfuse fusermount3 jq python3; do
  command -v $t >/dev/null || { echo "bench-watchdog: $t is missing" >&2; exit 1; }
done

T=$(mktemp -d "${TMPDIR:-/var/tmp}/tabula-bench-watchdog.XXXXXX")
cleanup()
{
  fusermount3 -u "$T/nf" 2>/dev/null || true
  [ -f "$T/daemon.pid" ] && kill "$(cat "$T/daemon.pid")" 2>/dev/null
  sleep 0.5
  rm -rf "$T"
}
trap cleanup EXIT INT TERM

# The guest: FILES files of a few bytes in directories of 100, three levels deep.
python3 - "$T/tree" "$files" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "d%03d" % (i // 10000), "s%03d" % (i // 100 % 100))
    if i % 100 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%03d.txt" % (i % 100)), "w") as f:
        f.write("file %d\n" % i)
os.makedirs(os.path.join(root, "etc"), exist_ok=True)
with open(os.path.join(root, "etc", "hosts"), "w") as f:
    f.write("127.0.0.1 localhost\n")
PY
mke2fs -q -F -t ext4 -b 4096 -N $((files + 20000)) -d "$T/tree" "$T/master.img" 2G
rm -rf "$T/tree"
cat >"$T/tabula.json" <<EOF2
{ "state_dir": "$T/state", "plugin": "$plugin", "images": { "demo": {} },
  "clients": { "pc01": { "image": "demo", "policy": "persist",
    "watchdog": { "rules": [
      { "name": "exe", "path": "/**/*.exe", "on": "created", "action": "alert" },
      { "name": "hosts", "path": "/etc/hosts", "on": "changed", "action": "alert" },
      { "name": "gone", "path": "/d00*/**", "on": "deleted", "action": "alert" },
      { "name": "dumps", "path": "/**/*.dmp", "on": "exists", "action": "alert" } ] } } } }
EOF2
"$ctl" -c "$T/tabula.json" image import demo "$T/master.img" >/dev/null
"$daemon" -c "$T/tabula.json" >"$T/daemon.log" 2>&1 &
echo $! >"$T/daemon.pid"
i=0
until [ -S "$T/state/nbd.sock" ] && "$ctl" -c "$T/tabula.json" status >/dev/null 2>&1; do
  i=$((i + 1))
  [ $i -lt 300 ] || { echo "bench-watchdog: the daemon did not start: $(cat "$T/daemon.log")" >&2; exit 1; }
  sleep 0.1
done
sleep 0.5

# One session: 1 GiB into one new file, a few files created, changed, deleted.
head -c 1073741824 /dev/urandom >"$T/big.bin"
echo "MZ" >"$T/evil.exe"
mkdir "$T/nf"
nbdfuse "$T/nf/disk" "nbd+unix:///pc01?socket=$T/state/nbd.sock" >"$T/nbdfuse.log" 2>&1 &
i=0
until [ -f "$T/nf/disk" ]; do
  i=$((i + 1))
  [ $i -lt 100 ] || { echo "bench-watchdog: nbdfuse: $(cat "$T/nbdfuse.log")" >&2; exit 1; }
  sleep 0.1
done
debugfs -w "$T/nf/disk" >"$T/debugfs.log" 2>&1 <<EOF2
write $T/big.bin big.bin
write $T/evil.exe d005/s050/evil.exe
rm d001/s001/f001.txt
rm d002/s002/f002.txt
write $T/evil.exe d003/s003/new.txt
EOF2
blk=$(debugfs -R "bmap etc/hosts 0" "$T/nf/disk" 2>/dev/null)
printf '6.6.6.6 x\n' | dd of="$T/nf/disk" bs=4096 seek="$blk" conv=notrunc status=none
sync
fusermount3 -u "$T/nf"
rm -f "$T/big.bin"
i=0
until jq -e 'select(.type == "watchdog-scan")' "$T/state/events.jsonl" >/dev/null 2>&1; do
  i=$((i + 1))
  [ $i -lt 1200 ] || { echo "bench-watchdog: no scan within 120 s: $(tail -n 5 "$T/daemon.log")" >&2; exit 1; }
  sleep 0.1
done
scan=$(jq -c 'select(.type == "watchdog-scan")' "$T/state/events.jsonl" | tail -n 1)
hits=$(jq -r '.hits' <<EOF2
$scan
EOF2
)
dirty=$(echo "$scan" | jq -r '.dirty_bytes / 1048576 | floor')
diff_ms=$(echo "$scan" | jq -r .diff_ms)
walk_ms=$(echo "$scan" | jq -r .walk_ms)
total_ms=$(echo "$scan" | jq -r .ms)
[ "$hits" -ge 4 ] || { echo "bench-watchdog: expected 4 rule hits, got $hits: $scan" >&2; exit 1; }

printf '\n## watchdog: file rules at a session end, %d files, %s MiB dirty\n\n' "$files" "$dirty"
printf '| scan part | ms |\n|---|---:|\n'
printf '| created/changed/deleted (dirty map, tb_inspect_diff) | %s |\n' "$diff_ms"
printf '| exists glob (full tree walk) | %s |\n' "$walk_ms"
printf '| whole scan, %s hits | %s |\n' "$hits" "$total_ms"
echo "watchdog scan: $files files, $dirty MiB dirty: diff $diff_ms ms, full walk $walk_ms ms, total $total_ms ms"
bench_summary "watchdog file-rule diff, $files files, $dirty MiB dirty" "$diff_ms ms" \
  "full tree walk (exists glob)" "$walk_ms ms" "uses the dirty map"
