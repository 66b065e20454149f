#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# bench-merge.sh: `tabulactl merge` of 1 GiB of dirty blocks into an 8 GiB
# image, side by side with `cp --sparse=always` of the base image (+ sync) in
# the same run, on the filesystem of $TMPDIR (ext4 here) and, when this
# machine can loop-mount one, on XFS with reflinks, where the new version is
# a reflinked clone of the base and only the differing blocks are written.
#
#   scripts/bench-merge.sh [BUILD_DIR]     (default: the current directory)
#   SIZE_GIB=8 DIRTY_GIB=1 TMPDIR=/var/tmp
#
# On XFS the merge runs twice: into the image, and into one four times as
# large (the same data, then a hole) with the same amount of dirty data.
#
# The client is a persist client; 1 GiB of 1 MiB random writes through NBD
# (fio) makes its overlay.  The merge's time includes what every published
# version needs: the manifest's whole-image sha256 and per-chunk hashes, a
# pass over the whole image at hashing speed.
set -euo pipefail
. "$(dirname "$0")/benchlib.sh"
build=$(cd "${1:-.}" && pwd)
size_gib=${SIZE_GIB:-8}
dirty_gib=${DIRTY_GIB:-1}
daemon=$build/restored/tabula-restored
ctl=$build/tabulactl/tabulactl
plugin=$build/nbdkit-plugin/.libs/nbdkit-tabula-plugin.so
for f in "$daemon" "$ctl" "$plugin"; do
  [ -e "$f" ] || { echo "bench-merge: $f is not built (give the build directory)" >&2; exit 1; }
done
command -v fio >/dev/null || { echo "bench-merge: fio is missing (scripts/packages-bench.txt)" >&2; exit 1; }

T=$(mktemp -d "${TMPDIR:-/var/tmp}/tabula-bench-merge.XXXXXX")
dpid=
loopmnt=
cleanup()
{
  if [ -n "$dpid" ]; then kill "$dpid" 2>/dev/null || true; wait "$dpid" 2>/dev/null || true; fi
  if [ -n "$loopmnt" ]; then umount "$loopmnt" 2>/dev/null || true; fi
  rm -rf "$T"
}
trap cleanup EXIT INT TERM

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# run_on DIR LABEL [IMAGE_GIB]: the whole measurement with its state under
# DIR; an IMAGE_GIB larger than SIZE_GIB is SIZE_GIB of data and a hole.
run_on()
{
  local dir=$1 label=$2 G=1073741824 image_gib=${3:-$size_gib}
  mkdir -p "$dir/state"
  printf '{ "state_dir": "%s/state", "reconnect_grace": "0s", "listen": { "unix": "%s/nbd.sock" }, "plugin": "%s",\n' \
    "$dir" "$dir" "$plugin" >"$dir/tabula.json"
  printf '  "images": { "big": {} }, "clients": { "vm01": { "image": "big", "policy": "persist" } } }\n' \
    >>"$dir/tabula.json"
  # Incompressible base, fast: AES-CTR of zeros.
  head -c $((size_gib * G)) /dev/zero |
    openssl enc -aes-128-ctr -nosalt -pass pass:tabula-bench-merge 2>/dev/null >"$dir/base.img"
  truncate -s $((image_gib * G)) "$dir/base.img"
  "$ctl" -c "$dir/tabula.json" image import big "$dir/base.img" >/dev/null
  "$daemon" -c "$dir/tabula.json" >"$dir/daemon.log" 2>&1 &
  dpid=$!
  local i=0
  until "$ctl" -c "$dir/tabula.json" status >/dev/null 2>&1 && [ -S "$dir/nbd.sock" ]; do
    i=$((i + 1))
    [ $i -lt 300 ] || { echo "bench-merge: the daemon did not start: $(tail -3 "$dir/daemon.log")" >&2; exit 1; }
    sleep 0.1
  done
  fio --name=dirty --ioengine=nbd --uri="nbd+unix:///vm01?socket=$dir/nbd.sock" --rw=randwrite \
    --bs=1m --iodepth=16 --size=$((image_gib * G)) --io_size=$((dirty_gib * G)) --norandommap \
    --randrepeat=0 --output="$dir/fio.out" >/dev/null 2>&1
  i=0
  until [ "$(jq -r .state "$dir/state/clients/vm01/session.json" 2>/dev/null)" = idle ]; do
    i=$((i + 1))
    [ $i -lt 300 ] || { echo "bench-merge: the session did not end" >&2; exit 1; }
    sleep 0.1
  done
  sync
  local t0 t1 t2 t3
  t0=$(now)
  "$ctl" -c "$dir/tabula.json" --json merge vm01 --into big --note bench >"$dir/merge.json"
  t1=$(now)
  t2=$(now)
  cp --sparse=always "$dir/base.img" "$dir/copy.img"
  sync
  t3=$(now)
  local dirty changed ms cps
  dirty=$(jq -r .dirty_bytes "$dir/merge.json")
  changed=$(jq -r .changed_bytes "$dir/merge.json")
  ms=$(secs "$t0" "$t1")
  cps=$(secs "$t2" "$t3")
  printf '| %s | %s | %.0f MiB | %.0f MiB | %s | %.0f | %s |\n' "$label" "$image_gib GiB" \
    "$((dirty / 1048576))" "$((changed / 1048576))" "$ms" \
    "$(awk -v d="$dirty" -v t="$ms" 'BEGIN { print d / t / 1e6 }')" "$cps"
  bench_summary "merge ${dirty_gib} GiB dirty into ${image_gib} GiB ($label)" "$ms s" \
    "cp --sparse=always of the base" "$cps s" "(anchor)"
  kill "$dpid"
  wait "$dpid" 2>/dev/null || true
  dpid=
  rm -rf "${dir:?}"/*
}

printf '\n## merge: %s GiB of dirty blocks into a %s GiB image\n\n' "$dirty_gib" "$size_gib"
printf '| filesystem | image | dirty | changed | merge s | dirty MB/s | cp --sparse=always + sync s |\n'
printf '|---|---:|---:|---:|---:|---:|---:|\n'
run_on "$T/here" "$(df -T "$T" | awk 'NR == 2 { print $2 }')"

# XFS with reflinks, on a loop device, when this machine allows it.
if [ "$(id -u)" = 0 ] && command -v mkfs.xfs >/dev/null && losetup -f >/dev/null 2>&1; then
  truncate -s $((size_gib * 4 + 8))G "$T/xfs.img"
  if mkfs.xfs -q -m reflink=1 "$T/xfs.img" 2>/dev/null && mkdir -p "$T/xfs" &&
    mount -o loop "$T/xfs.img" "$T/xfs" 2>/dev/null; then
    loopmnt=$T/xfs
    run_on "$T/xfs" "xfs (reflink)"
    # Four times the image, the same dirty data: the same time if the merge
    # follows the dirty data.
    run_on "$T/xfs" "xfs (reflink)" $((size_gib * 4))
    umount "$T/xfs"
    loopmnt=
  else
    echo "(no XFS: cannot loop-mount one here)"
  fi
else
  echo "(no XFS: needs root, mkfs.xfs (xfsprogs) and a loop device)"
fi
