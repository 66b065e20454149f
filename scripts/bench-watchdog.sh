#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# bench-watchdog.sh: a watchdog file-rule scan at a session end.  The client's
# guest ext4 holds FILES small files (100,000, mke2fs -d from a generated
# tree); its session writes 1 GiB into one new file and creates, changes and
# deletes a handful of others (nbdfuse + debugfs -w, real NBD writes).  The
# daemon then scans the overlay: reported are the building of the base
# version's index (once per version, then cached), the created/changed/
# deleted diff through it (tb_inspect_diff_indexed: it reads only what the
# dirty map touches) with the files it examined, and for comparison a walk of
# the whole tree (an "exists" glob rule).  Then tests/inspect-index runs the
# indexed diff and the full diff (tb_inspect_diff: both whole trees, the
# view's changes.txt code) on the same overlay, cold, and checks they agree.
#
#   scripts/bench-watchdog.sh [BUILD_DIR] [FILES]   (default: ., 100000)
set -eu
. "$(dirname "$0")/benchlib.sh"
build=$(cd "${1:-.}" && pwd)
files=${2:-100000}
daemon=$build/restored/tabula-restored
ctl=$build/tabulactl/tabulactl
plugin=$build/nbdkit-plugin/.libs/nbdkit-tabula-plugin.so
idxtool=$build/tests/inspect-index
make -C "$build/tests" inspect-index >/dev/null
for f in "$daemon" "$ctl" "$plugin" "$idxtool"; do
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
{ "state_dir": "$T/state", "reconnect_grace": "0s", "plugin": "$plugin", "images": { "demo": {} },
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
index_ms=$(echo "$scan" | jq -r .index_ms)
index_files=$(echo "$scan" | jq -r .index_files)
examined=$(echo "$scan" | jq -r .files_examined)
relisted=$(echo "$scan" | jq -r .dirs_relisted)
fallbacks=$(echo "$scan" | jq -r .diff_fallbacks)
[ "$fallbacks" = 0 ] || { echo "bench-watchdog: the diff fell back to walking: $scan" >&2; exit 1; }

# The same overlay, cold: the indexed diff and the full diff side by side.
"$idxtool" --scan "$T/state" "$T/state/clients/pc01/overlay" >"$T/idx.out" ||
  { echo "bench-watchdog: indexed and full diffs differ: $(grep -v '^indexed' "$T/idx.out")" >&2; exit 1; }
st=$(grep '^stats: ' "$T/idx.out")
val() { echo "$st" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
changes=$(grep -c '^indexed: ' "$T/idx.out" || true)

printf '\n## watchdog: file rules at a session end, %d files, %s MiB dirty\n\n' "$files" "$dirty"
printf 'The session touched %s files (created, changed or deleted) with its %s MiB.\n\n' \
  "$changes" "$dirty"
printf '| scan part | ms |\n|---|---:|\n'
printf '| index of the base version, %s files (once per version, cached) | %s |\n' \
  "$index_files" "$index_ms"
printf '| created/changed/deleted through the index: %s files examined, %s directories listed | %s |\n' \
  "$examined" "$relisted" "$diff_ms"
printf '| exists glob (full tree walk) | %s |\n' "$walk_ms"
printf '| whole scan, %s hits (index build included) | %s |\n' "$hits" "$total_ms"
printf '\nCold, on the same overlay (tests/inspect-index):\n\n| diff | files examined | ms |\n|---|---:|---:|\n'
printf '| index build (%s KiB in memory) | %s | %s |\n' "$(val index_kib)" "$(val files)" "$(val index_ms)"
printf '| indexed (tb_inspect_diff_indexed) | %s | %s |\n' "$(val examined)" "$(val indexed_ms)"
printf '| full (tb_inspect_diff, both trees) | %s | %s |\n' "$(val full_examined)" "$(val full_ms)"
echo "watchdog scan: $files files, $dirty MiB dirty, $changes files touched: index build $index_ms ms" \
  "(once per version), indexed diff $diff_ms ms examining $examined files," \
  "full diff $(val full_ms) ms, full walk $walk_ms ms, total $total_ms ms"
bench_summary "watchdog file-rule diff (indexed), $files files, $dirty MiB dirty" "$diff_ms ms" \
  "full diff (both trees)" "$(val full_ms) ms" "uses the dirty map"
