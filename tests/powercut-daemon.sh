#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Power cuts under the daemon (tests/powercut.c below the state directory):
# image import, merge (and the client's move onto the merged version), image
# publish (the repository on the same disk), gc, pull from a repository
# served by nginx (after the cut the pull is run again: it resumes or starts
# over, and its version verifies), quarantine release --restore (the client
# boots the quarantined session or the one it had, never refused, and no
# quarantine is half moved).  Each case runs once uncut to
# count its sync calls, then is cut at sync calls spread over the operation
# (TB_POWERCUT_CUTS per case, default 5; --strict with TB_POWERCUT_STRICT=1;
# TB_POWERCUT_CASES="merge pull release:strict" runs only those; release runs
# in both modes by default).
# After each cut: the daemon starts and tabulactl status is sane; every
# version is absent or complete (manifest and image agree, sha256 checked,
# no image without its manifest, no temporary left); the published
# repository lists only complete versions; the merged client boots its data.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
. "$abs_top_srcdir/tests/powercut-functions.sh"
tb_setup
. "$abs_top_srcdir/tests/repo-common.sh"
pc_init
cuts=$(pc_cuts 5)
base_flag=
[ "${TB_POWERCUT_STRICT:-0}" = 1 ] && base_flag=--strict

M=1048576
tb_make_file "$TB_TMP/v1.img" $((8 * M)) 1
tb_make_file "$TB_TMP/v2.img" $((8 * M)) 2
prep=$PC_STATE/disk/state
tb_import "$prep" demo "$TB_TMP/v1.img"
clients='{ "vm01": { "image": "demo", "policy": "persist", "keep_sessions": 5 } }'
td_config "$TB_TMP/prep.json" "$prep" "$clients"
td_config "$TB_TMP/tabula.json" "$PC_MNT/state" "$clients"
td_start "$TB_TMP/prep.json"
"$TB_IO" -s "$prep/nbd.sock" -e vm01 write:0:$M:7 write:$((5 * M)):65536:8 flush ||
  tb_fail "vm01's session"
tb_wait_idle "$prep" vm01
td_stop
mkdir -p -m 700 "$PC_STATE/disk/www"
# The repository to pull from: demo@1 (the same bytes) and demo@2 (one chunk differs).
cp "$TB_TMP/v1.img" "$TB_TMP/r2.img"
repo_change_chunks "$TB_TMP/r2.img" 5 1
tb_import "$TB_TMP/pub" demo "$TB_TMP/v1.img"
tb_import "$TB_TMP/pub" demo "$TB_TMP/r2.img"
ctl "$TB_TMP/pub" image publish demo@1 "$TB_TMP/www" >/dev/null || tb_fail "publish demo@1"
ctl "$TB_TMP/pub" image publish demo@2 "$TB_TMP/www" >/dev/null || tb_fail "publish demo@2"
repo_nginx_start "$TB_TMP/www"
url=$(repo_url)
pc_snapshot
st=$PC_MNT/state
# For the release case: session 2 (9 at 0) after a rollback, session 1's
# overlay (7 at 0, 8 at 5 MiB) quarantined as number 1.
cp -a "$TB_TMP/pristine" "$TB_TMP/pq"
q=$TB_TMP/pq/state
printf '{ "rollback": true }\n' >"$q/clients/vm01/mailbox.json"
chmod 600 "$q/clients/vm01/mailbox.json"
td_config "$TB_TMP/prep-q.json" "$q" "$clients"
td_start "$TB_TMP/prep-q.json"
"$TB_IO" -s "$q/nbd.sock" -e vm01 write:0:$M:9 flush || tb_fail "vm01's session 2"
tb_wait_idle "$q" vm01
td_stop
mkdir -p -m 700 "$q/clients/vm01/quarantine/1"
mv "$q/clients/vm01/sessions/1" "$q/clients/vm01/quarantine/1/overlay"
printf '{ "number": 1, "reason": "powercut-daemon.sh" }\n' >"$q/clients/vm01/quarantine/1/note.json"
chmod 600 "$q/clients/vm01/quarantine/1/note.json"

reset_disk()
{
  if [ "$1" = release ]; then pc_restore pq; else pc_restore; fi
}

# op CASE: the operation, against the running daemon.
op()
{
  case $1 in
  import) tctl image import demo "$TB_TMP/v2.img" ;;
  merge) tctl merge vm01 --into demo ;;
  publish) tctl image publish demo@1 "$PC_MNT/www" ;;
  pull) tctl image pull demo --from "$url" ;;
  release) tctl quarantine release vm01 1 --restore ;;
  gc)
    printf '{"x' >"$st/images/demo/7.json.tmp.Zz12Yy"
    chmod 600 "$st/images/demo/7.json.tmp.Zz12Yy"
    tctl image gc
    ;;
  esac
}

check()
{
  tctl --json status >"$TB_TMP/status.json" 2>&1 || tb_fail "$WHAT: tabulactl status: $(cat "$TB_TMP/status.json")"
  jq -e '.nbdkit.state == "running"' "$TB_TMP/status.json" >/dev/null ||
    tb_fail "$WHAT: status is not sane: $(cat "$TB_TMP/status.json")"
  if [ "$1" = pull ]; then
    tctl image pull demo --from "$url" >"$TB_TMP/pull.out" 2>&1 ||
      tb_fail "$WHAT: the pull again after the cut: $(cat "$TB_TMP/pull.out")"
    [ -f "$st/images/demo/2.json" ] || tb_fail "$WHAT: the pull after the cut did not publish demo@2"
  fi
  for man in "$st"/images/demo/*.json; do
    img=${man%.json}.img
    [ -f "$img" ] || tb_fail "$WHAT: $man without its image"
    [ "$(jq -r .sha256 "$man" 2>/dev/null)" = "$(tb_digest "$img")" ] ||
      tb_fail "$WHAT: ${img##*/} does not verify against its manifest"
  done
  for img in "$st"/images/demo/*.img; do
    [ -f "${img%.img}.json" ] || tb_fail "$WHAT: ${img##*/} without a manifest after the start"
  done
  ls -a "$st/images/demo" | grep -q 'tmp' && tb_fail "$WHAT: a temporary is left: $(ls -a "$st/images/demo")"
  ix=$PC_MNT/www/demo/index.json
  if [ -f "$ix" ]; then
    jq -e . "$ix" >/dev/null 2>&1 || tb_fail "$WHAT: the published index does not parse"
    for v in $(jq -r '.versions[].version' "$ix"); do
      f=$PC_MNT/www/demo/$v.img
      [ -f "$f" ] && [ "$(tb_digest "$f")" = "$(jq -r ".versions[] | select(.version == $v) | .sha256" "$ix")" ] ||
        tb_fail "$WHAT: the repository lists demo@$v and its file is incomplete"
    done
  fi
  for qd in "$st"/clients/vm01/quarantine/*/; do
    [ -d "$qd" ] || continue
    [ -f "$qd/overlay" ] && [ -f "$qd/note.json" ] ||
      tb_fail "$WHAT: a half-moved quarantine: $qd holds $(ls "$qd")"
  done
  _io() { "$TB_IO" -s "$st/nbd.sock" -e vm01 "$@" rewrite:$((6 * M)):4096 >"$TB_TMP/vm01.out" 2>&1; }
  if [ "$1" = release ]; then # the quarantined session 1, or session 2 as it was
    _io read:0:$M:7 read:$((5 * M)):65536:8 || _io read:0:$M:9 read:$((5 * M)):65536:1 ||
      tb_fail "$WHAT: vm01 does not boot session 1 or 2: $(cat "$TB_TMP/vm01.out")"
  else
    _io read:0:$M:7 read:$((5 * M)):65536:8 ||
      tb_fail "$WHAT: vm01 does not boot its data: $(cat "$TB_TMP/vm01.out")"
  fi
}

# release also in strict mode: a restore point a cut takes back refused every boot.
runs=${TB_POWERCUT_CASES:-import merge publish gc pull release release:strict}
for run in $runs; do
  case=${run%:strict}
  flag=$base_flag
  [ "$case" = "$run" ] || flag=--strict
  reset_disk $case
  pc_mount $flag
  pc_daemon_start
  s0=$(wc -l <"$PC_STATE/syncs.log")
  op $case >"$TB_TMP/op.out" 2>&1 || tb_fail "$case (no cut): $(cat "$TB_TMP/op.out")"
  s1=$(wc -l <"$PC_STATE/syncs.log")
  td_stop
  pc_daemon_cut
  n=$((s1 - s0))
  echo "== $case${flag:+ ($flag)}: $n sync calls; $cuts cuts"
  [ "$n" -gt 0 ] || tb_fail "$case made no sync call"
  i=1
  while [ $i -le "$cuts" ]; do
    at=$((s0 + (i * n + cuts - 1) / cuts)) # spread over the operation, its last call included
    [ $i -gt "$n" ] && at=$((s0 + $(od -An -N2 -tu2 /dev/urandom) % n + 1))
    reset_disk $case
    pc_mount $flag --cut-at $at
    pc_daemon_start_loose
    op $case >"$TB_TMP/op.out" 2>&1 || true
    sleep 0.2
    pc_daemon_cut
    mv "$TB_TMP/daemon.log" "$TB_TMP/daemon-cut.txt"
    WHAT="$case${flag:+ ($flag)}, cut at sync call $at"
    pc_mount $flag
    pc_daemon_start
    check $case
    td_stop
    pc_daemon_cut
    i=$((i + 1))
  done
done
