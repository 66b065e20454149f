#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# libiscsi's conformance suite (iscsi-test-cu) against a tabula target, one
# suite per run (a fresh session each).  Every applicable test must pass.
# Not applicable, and why (also in README "Windows PCs over iSCSI"):
#   ProutReserve.*, PrinReadKeys, Prout*, Reserve6.*, PreventAllow.2ITNexuses,
#   MultipathIO.*: need a second initiator on the same LU, which tabula refuses
#   by design (one machine per client: "busy"); persistent reservations are for
#   clusters, not for a PC's boot disk.
#   CompareAndWrite, ExtendedCopy, ReceiveCopyResults, OrWrite, WriteAtomic16,
#   WriteVerify*, Sanitize, ReportSupportedOpcodes, ReadDefectData*: not
#   implemented (the tests skip themselves on INVALID OPCODE).
#   GetLBAStatus.UnmapSingle: its second half is wrong when a physical block
#   holds more than one logical block (tabula reports 8 x 512 in 4 KiB): it
#   asks for the status at LBA i+1 and requires the first descriptor to
#   start at i+8, where SBC-4 (5.8) says the first descriptor starts at the
#   LBA asked for, as tabula answers; its first half (i+8 asked, i+8
#   expected) passes.  The test stays in the run: any other assertion of it
#   failing is a failure here.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/iscsi-functions.sh"
tb_require iscsi-test-cu
tb_setup
S=$TB_TMP/state
tb_iscsi_state "$S" 67108864
cat >"$TB_TMP/tabula.json" <<JSON
{"state_dir": "$S", "images": {"demo": {}}, "clients": {"pc01": {"image": "demo"}}}
JSON
tb_iscsi_start t "$TB_TMP/tabula.json"
SUITES="Inquiry Mandatory ModeSense6 NoMedia Prefetch10 Prefetch16 PreventAllow Read6 Read10 Read12
Read16 ReadCapacity10 ReadCapacity16 ReadOnly StartStopUnit TestUnitReady Unmap Verify10 Verify12
Verify16 Write10 Write12 Write16 WriteSame10 WriteSame16 GetLBAStatus iSCSIcmdsn iSCSIdatasn
iSCSIResiduals iSCSITMF"
KNOWN="PreventAllow.2ITNexuses"
failed=
for s in $SUITES; do
  # its exit status counts failed tests: the summary says whether it finished
  timeout 300 iscsi-test-cu -d -n -t "ALL.$s" "$(tb_iscsi_url pc01)" >"$TB_TMP/cu-$s.log" 2>&1 || true
  grep -q "Run Summary" "$TB_TMP/cu-$s.log" ||
    tb_fail "iscsi-test-cu $s did not finish: $(tail -n 5 "$TB_TMP/cu-$s.log")"
  for t in $(sed -n 's/^Suite \([^,]*\), Test \(.*\) had failures:$/\1.\2/p' "$TB_TMP/cu-$s.log"); do
    # GetLBAStatus.UnmapSingle (above): only its one wrong assertion is excused.
    if [ "$t" = GetLBAStatus.UnmapSingle ] &&
      [ "$(grep -c 'CU_FAIL\|CU_ASSERT' "$TB_TMP/cu-$s.log")" -eq 1 ] &&
      grep -q 'lba offset in first descriptor does not' "$TB_TMP/cu-$s.log"; then
      echo "not applicable: $t (libiscsi's test assumes one logical block per physical block)"
      continue
    fi
    case " $(echo $KNOWN) " in
    *" $t "*) echo "known failure: $t" ;;
    *) failed="$failed $t" ;;
    esac
  done
done
[ -z "$failed" ] || tb_fail "iscsi-test-cu failures:$failed (logs: $TB_TMP/cu-*.log, TB_KEEP=1)"
kill -0 "$(cat "$TB_TMP/t.bgpid")" || tb_fail "tabula-iscsid died"
tb_iscsi_stop t
echo "PASS: $0"
