# SPDX-License-Identifier: BSD-3-Clause
# tests/fuse-functions.sh: helpers for the tabula-fuse tests (sourced after
# functions.sh).
#
#   tf_src DIR                  a source tree: nested dirs, empty/odd/1 MiB files,
#                               spaces and UTF-8 in names
#   tf_ext4 IMG SRC SIZE        mke2fs -d
#   tf_fat IMG SRC SIZE [BITS]  mkfs.vfat + mcopy
#   tf_ntfs IMG SRC SIZE        mkntfs, filled through ntfs-3g (FUSE)
#   tf_exfat IMG SRC SIZE       mkfs.exfat, filled through a loop device and
#                               exfat-fuse when possible (else left empty: TF_EXFAT_EMPTY=1)
#   tf_mount MNT ARGS...        tabula-fuse -f ARGS MNT in the background; waits for it
#   tf_umount MNT               unmount and wait for the process
#   tf_appliance IMG [OPTS...]  a local appliance: IMG imported as image demo into
#                               $state ($TB_TMP/state), client pc01 on it, the plugin
#                               serving it (nbdkit srv), the view mounted on $M
#                               ($TB_TMP/mnt) with -c and OPTS
#   tf_same SRC DIR             every file of SRC has the same bytes in DIR
#   tf_reads LOG                the reads nbdkit's log filter wrote to LOG
#   tf_settle LOG               wait (10 s at most) until LOG shows no new read
#                               for 0.1 s: the worker's listings ahead are done

TF_FUSE=$abs_top_builddir/fuse/tabula-fuse
[ -x "$TF_FUSE" ] || tb_fail "$TF_FUSE is not built"
[ -c /dev/fuse ] || tb_skip "/dev/fuse is missing"
command -v fusermount3 >/dev/null || tb_skip "fusermount3 (package fuse3) is missing"

tf_src()
{
  mkdir -p "$1/a/b/c" "$1/with space" "$1/empty-dir"
  echo "hello from tabula" >"$1/hello.txt"
  : >"$1/empty"
  head -c 1048577 /dev/urandom >"$1/a/rand.bin"
  head -c 4097 /dev/urandom >"$1/a/b/odd.bin"
  head -c 70000 /dev/urandom >"$1/a/b/c/deep.bin"
  printf 'été\n' >"$1/with space/un été accentué.txt"
  for i in $(seq 1 40); do echo "file $i" >"$1/a/many-$i.txt"; done
}

tf_ext4()
{
  truncate -s "$3" "$1"
  mke2fs -q -F -t ext4 -b 4096 -d "$2" "$1" >/dev/null
}

tf_fat()
{
  truncate -s "$3" "$1"
  mkfs.vfat ${4:+-F $4} "$1" >/dev/null
  MTOOLS_NO_VFAT=0 mcopy -s -Q -i "$1" "$2"/* ::/
}

tf_ntfs()
{
  command -v mkntfs >/dev/null || tb_skip "mkntfs (package ntfs-3g) is missing"
  truncate -s "$3" "$1"
  mkntfs -q -F -Q "$1" >/dev/null 2>&1
  mkdir -p "$TB_TMP/ntfs-mnt"
  ntfs-3g "$1" "$TB_TMP/ntfs-mnt" || tb_fail "ntfs-3g cannot mount $1"
  cp -r "$2"/. "$TB_TMP/ntfs-mnt"/
  umount "$TB_TMP/ntfs-mnt"
}

TF_EXFAT_EMPTY=0
tf_exfat()
{
  truncate -s "$3" "$1"
  mkfs.exfat "$1" >/dev/null
  TF_EXFAT_EMPTY=1
  if command -v mount.exfat-fuse >/dev/null && command -v losetup >/dev/null; then
    _loop=$(losetup -f --show "$1" 2>/dev/null) || return 0
    mkdir -p "$TB_TMP/exfat-mnt"
    if mount.exfat-fuse "$_loop" "$TB_TMP/exfat-mnt" >/dev/null 2>&1; then
      cp -r "$2"/. "$TB_TMP/exfat-mnt"/ && TF_EXFAT_EMPTY=0
      umount "$TB_TMP/exfat-mnt"
    fi
    losetup -d "$_loop"
  fi
}

tf_mount()
{
  _mnt=$1
  shift
  mkdir -p "$_mnt"
  _log=$TB_TMP/fuse-$(basename "$_mnt").log
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0} "$TF_FUSE" -f "$@" "$_mnt" >>"$_log" 2>&1 &
  echo $! >"$TB_TMP/fuse-$(basename "$_mnt").bgpid"
  TB_MOUNTS="$TB_MOUNTS $_mnt"
  _i=0
  until mountpoint -q "$_mnt"; do
    kill -0 "$(cat "$TB_TMP/fuse-$(basename "$_mnt").bgpid")" 2>/dev/null ||
      tb_fail "tabula-fuse $* exited: $(cat "$_log")"
    _i=$((_i + 1))
    [ $_i -lt 300 ] || tb_fail "tabula-fuse did not mount $_mnt"
    sleep 0.1
  done
}

tf_umount()
{
  _pidf=$TB_TMP/fuse-$(basename "$1").bgpid
  fusermount3 -u "$1" || umount -l "$1"
  _st=0
  wait "$(cat "$_pidf")" || _st=$?
  rm -f "$_pidf"
  [ $_st -eq 0 ] || tb_fail "tabula-fuse on $1 exited with $_st: $(tail -5 "$TB_TMP/fuse-$(basename "$1").log")"
}

tf_appliance()
{
  _img=$1
  shift
  state=$TB_TMP/state
  tb_import "$state" demo "$_img"
  tb_config "$TB_TMP/tabula.json" "$state" '{ "pc01": { "image": "demo" } }' \
    "\"listen\": { \"unix\": \"$TB_TMP/srv.sock\" }"
  tb_start srv "$TB_TMP/tabula.json"
  M=$TB_TMP/mnt
  tf_mount "$M" -c "$TB_TMP/tabula.json" "$@"
}

tf_reads() { grep -c ' Read id=' "$1" || true; }

tf_settle()
{
  _last=-1 _i=0
  while [ "$(tf_reads "$1")" != "$_last" ] && [ $_i -lt 100 ]; do
    _last=$(tf_reads "$1")
    sleep 0.1
    _i=$((_i + 1))
  done
}

tf_same()
{
  (cd "$1" && find . -type f) | while IFS= read -r f; do
    [ -f "$2/$f" ] || tb_fail "$2/$f is missing (source $1)"
    cmp -s "$1/$f" "$2/$f" || tb_fail "$2/$f differs from $1/$f"
  done
  (cd "$1" && find . -type d) | while IFS= read -r d; do
    [ -d "$2/$d" ] || tb_fail "directory $2/$d is missing"
  done
}
