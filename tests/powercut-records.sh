#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Power cuts under the daemon's small records (tests/powercut.c below the
# state directory), while they are being written:
#   boot markers      clients/ID/boot (a PXE DHCP request through pxe-event);
#   maintenance       clients/ID/maintenance.json (maintenance start / abort);
#   schedule marks    clients/ID/schedule.json (a refresh "every 1s"),
#                     clients/ID/merge-schedule.json (a merge "every 1s" of a
#                     client that wrote nothing: merge-skipped, then the mark),
#                     schedules/pull-0.json (a pull "every 1s" from a port
#                     where nothing listens: it fails, then the mark);
#   pxe/              dnsmasq.conf, hosts, tftp/ID.ipxe, the boot/ID symlinks
#                     (the configuration alternates between two kernels and is
#                     reloaded), unknown.json (an unregistered MAC: it
#                     stays recorded).
# The cut falls at a random moment 0.1 to 0.9 s into the load, every other
# round at the first sync call after it (pc_arm: inside a write), and every
# third round the next start is cut too, at a random one of its sync calls;
# TB_POWERCUT_CUTS rounds (default 12, in the default mode and then in
# --strict: 32 cuts).  After each cut the simulator
# is mounted again, the daemon starts, and:
#   - tabulactl status is sane, maintenance list answers;
#   - every record parses and is plausible (a boot marker, a maintenance
#     record, a schedule mark), and what was acknowledged before the cut is
#     there: the boot marker's seq is not behind the last one pxe-event
#     answered, the maintenance record is there after an acknowledged start
#     and gone after an acknowledged abort;
#   - a refresh the mark says has fired is in pc01's mailbox (not lost);
#   - pxe/ holds what the configuration asks for, the symlinks resolve;
#   - no temporary of an atomic write is left anywhere in the state
#     directory (NAME.tmp.XXXXXX: what a cut between the create and the
#     rename leaves).
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
. "$abs_top_srcdir/tests/powercut-functions.sh"
tb_setup
tb_require jq
pc_init
cuts=$(pc_cuts 12)

M=1048576
mkdir -p "$TB_TMP/boot"
echo kernel-a >"$TB_TMP/boot/vmlinuz-a"
echo kernel-b >"$TB_TMP/boot/vmlinuz-b"
echo initrd >"$TB_TMP/boot/initrd.img"
tb_make_file "$TB_TMP/v1.img" $M 1
port=$(tb_free_port) # nothing listens there: every scheduled pull fails at once
MAC=52:54:00:00:00:11
ADDR=10.20.0.11

# config FILE STATE KERNEL
config()
{
  td_config "$1.new" "$2" '{
    "pc01": { "image": "demo", "policy": "persist", "mac": "'$MAC'", "address": "'$ADDR'",
              "refresh": "every 1s" },
    "mt01": { "image": "demo", "policy": "persist" },
    "mg01": { "image": "demo", "policy": "persist", "merge": { "into": "demo", "when": "every 1s" } }
  }' "\"pxe\": { \"interface\": \"tbbr0\", \"server\": \"10.20.0.1\", \"network\": \"10.20.0.0/24\",
    \"kernel\": \"$TB_TMP/boot/vmlinuz-$3\", \"initrd\": \"$TB_TMP/boot/initrd.img\", \"dnsmasq\": \"none\" },
  \"pull\": { \"from\": \"http://127.0.0.1:$port/\", \"images\": [\"demo\"], \"when\": \"every 1s\",
    \"make_current\": true }"
  mv "$1.new" "$1"
}
prep=$PC_STATE/disk/state
st=$PC_MNT/state
config "$TB_TMP/prep.json" "$prep" a
tb_import "$prep" demo "$TB_TMP/v1.img"
td_start "$TB_TMP/prep.json"
td_stop
pc_snapshot

# The load, in the background until the cut: boot markers, maintenance
# start and abort, reloads with the other kernel.  Acknowledgements are
# logged outside the mount ($TB_TMP/acks): "boot SEQ", "begin OP", "ack OP".
load()
{
  (
    k=$(jq -r .pxe.kernel "$TB_TMP/tabula.json")
    k=${k##*-}
    while :; do
      seq=$(DNSMASQ_VENDOR_CLASS=PXEClient:Arch:00000 tctl --json pxe-event add $MAC $ADDR 2>/dev/null |
        jq -r '.seq // empty' 2>/dev/null) || true
      [ -z "$seq" ] || echo "boot $seq" >>"$TB_TMP/acks"
      DNSMASQ_VENDOR_CLASS=PXEClient tctl pxe-event add 52:54:00:99:00:0$((${seq:-0} % 8)) 10.20.0.20 \
        >/dev/null 2>&1 && echo unknown >>"$TB_TMP/acks"
      if [ -f "$TB_TMP/in-maint" ]; then op=abort; else op=start; fi
      echo "begin $op" >>"$TB_TMP/acks"
      if [ $op = start ]; then
        tctl maintenance start mt01 --image demo >/dev/null 2>&1 && touch "$TB_TMP/in-maint" &&
          echo "ack start" >>"$TB_TMP/acks"
      else
        tctl maintenance abort mt01 >/dev/null 2>&1 && rm -f "$TB_TMP/in-maint" &&
          echo "ack abort" >>"$TB_TMP/acks"
      fi
      if [ $k = a ]; then k=b; else k=a; fi
      config "$TB_TMP/tabula.json" "$st" $k
      tctl reload >/dev/null 2>&1 || true
    done
  ) >/dev/null 2>&1 &
  echo $! >"$TB_TMP/load.bgpid"
}

check()
{
  tctl --json status >"$TB_TMP/status.json" 2>"$TB_TMP/status.err" || tb_fail "$WHAT: tabulactl status: $(cat "$TB_TMP/status.err")"
  jq -e '.nbdkit.state == "running"' "$TB_TMP/status.json" >/dev/null ||
    tb_fail "$WHAT: status is not sane: $(cat "$TB_TMP/status.json")"
  tctl maintenance list >"$TB_TMP/mlist" 2>&1 || tb_fail "$WHAT: maintenance list: $(cat "$TB_TMP/mlist")"
  # (the daemon's writers run on: a temporary still there a second later is a leftover)
  left=
  for f in $(find "$st" -name '*.tmp*' 2>/dev/null); do left="$left $f"; done
  [ -z "$left" ] || sleep 1
  for f in $left; do
    [ ! -e "$f" ] || tb_fail "$WHAT: temporaries left after the start: $f"
  done
  b=$st/clients/pc01/boot
  acked=$(sed -n 's/^boot //p' "$TB_TMP/acks" 2>/dev/null | tail -n 1)
  if [ -n "$acked" ]; then
    seq=$(jq -r '.seq' "$b" 2>/dev/null) || tb_fail "$WHAT: $b does not parse: $(cat "$b")"
    [ "$seq" -ge "$acked" ] 2>/dev/null ||
      tb_fail "$WHAT: boot marker $seq, behind the acknowledged $acked"
    jq -e '(.at | type) == "number" and .via == "dhcp"' "$b" >/dev/null ||
      tb_fail "$WHAT: $b is no boot marker: $(cat "$b")"
  fi
  m=$st/clients/mt01/maintenance.json
  if [ -f "$m" ]; then
    jq -e '.image == "demo" and .from_version == 1 and (.since | type) == "number"' "$m" >/dev/null ||
      tb_fail "$WHAT: $m is no maintenance record: $(cat "$m")"
  fi
  case $(tail -n 1 "$TB_TMP/acks" 2>/dev/null) in
  "ack start") [ -f "$m" ] || tb_fail "$WHAT: the acknowledged maintenance start is lost" ;;
  "ack abort") [ ! -f "$m" ] || tb_fail "$WHAT: the acknowledged maintenance abort is lost" ;;
  esac
  # The load goes on from the state on disk.
  if [ -f "$m" ]; then touch "$TB_TMP/in-maint"; else rm -f "$TB_TMP/in-maint"; fi
  for f in "$st/clients/pc01/schedule.json" "$st/clients/mg01/merge-schedule.json" \
    "$st/schedules/pull-0.json"; do
    [ -f "$f" ] || continue
    jq -e '(.schedule | type) == "string" and .last_ms >= 0 and .next_ms > 0' "$f" >/dev/null ||
      tb_fail "$WHAT: $f is no schedule mark: $(cat "$f")"
  done
  if jq -e '.last_ms > 0' "$st/clients/pc01/schedule.json" >/dev/null 2>&1; then
    jq -e '.refresh == true' "$st/clients/pc01/mailbox.json" >/dev/null 2>&1 ||
      tb_fail "$WHAT: the refresh the mark says fired is not in the mailbox: $(cat "$st/clients/pc01/mailbox.json" 2>&1)"
  fi
  grep -q 'implausible' "$TB_TMP/daemon.log" && tb_fail "$WHAT: $(grep implausible "$TB_TMP/daemon.log")"
  k=$(jq -r .pxe.kernel "$TB_TMP/tabula.json")
  k=${k##*-}
  tctl pxe >"$TB_TMP/dnsmasq.conf" || tb_fail "$WHAT: tabulactl pxe"
  cmp -s "$TB_TMP/dnsmasq.conf" "$st/pxe/dnsmasq.conf" || tb_fail "$WHAT: pxe/dnsmasq.conf is not the configuration's"
  grep -qi "$MAC,$ADDR,pc01" "$st/pxe/hosts" || tb_fail "$WHAT: pxe/hosts: $(cat "$st/pxe/hosts")"
  grep -q '^kernel boot/pc01/linux ' "$st/pxe/tftp/pc01.ipxe" || tb_fail "$WHAT: pc01.ipxe: $(cat "$st/pxe/tftp/pc01.ipxe")"
  [ "$(cat "$st/pxe/tftp/boot/pc01/linux")" = "kernel-$k" ] ||
    tb_fail "$WHAT: boot/pc01/linux is not kernel-$k: $(ls -l "$st/pxe/tftp/boot/pc01/")"
  [ "$(cat "$st/pxe/tftp/boot/pc01/initrd")" = initrd ] || tb_fail "$WHAT: boot/pc01/initrd"
  if grep -q '^unknown' "$TB_TMP/acks" 2>/dev/null; then # an unknown MAC was recorded
    jq -e 'type == "object" and length > 0' "$st/pxe/unknown.json" >/dev/null ||
      tb_fail "$WHAT: pxe/unknown.json: $(cat "$st/pxe/unknown.json" 2>&1)"
  fi
}

for flag in "" --strict; do
  rm -rf "$TB_TMP/acks" "$TB_TMP/in-maint"
  pc_restore
  config "$TB_TMP/tabula.json" "$st" a
  pc_mount $flag
  pc_daemon_start
  starts=$(wc -l <"$PC_STATE/syncs.log") # the sync calls of a start
  i=1
  while [ $i -le "$cuts" ]; do
    WHAT="round $i${flag:+ ($flag)}"
    load
    pc_pause
    if [ $((i % 2)) = 1 ]; then
      pc_arm # inside a write
      WHAT="$WHAT, cut at a sync call"
    fi
    pc_bg_stop load
    pc_daemon_cut
    if [ $((i % 3)) = 0 ]; then # and then inside the next start
      at=$(($(od -An -N2 -tu2 /dev/urandom) % starts + 1))
      mv "$TB_TMP/daemon.log" "$TB_TMP/daemon-cut.txt"
      pc_mount $flag --cut-at $at
      pc_daemon_start_loose
      pc_daemon_cut
      WHAT="$WHAT, then at sync call $at of the start"
    fi
    mv "$TB_TMP/daemon.log" "$TB_TMP/daemon-cut.txt"
    pc_mount $flag
    pc_daemon_start
    check
    i=$((i + 1))
  done
  td_stop
  pc_daemon_cut
  echo "== ${flag:-default}: $cuts rounds ($(grep -c '^boot' "$TB_TMP/acks") boot markers, $(grep -c '^ack' "$TB_TMP/acks") maintenance operations acknowledged)"
done
