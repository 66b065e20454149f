#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Scheduled pulls run by the daemon: a "pull" source with "when" fetches new
# versions from a repository served by a real nginx.  Without "make_current"
# the clients that follow the newest version are pinned to the one they run,
# so the pulled version waits for an administrator; with it, they boot the
# pulled version at their next session.  A client reimaged (mailbox) to the
# newest version of a pulled image follows it as much as a client configured
# with it: held the same way (pc02, configured on "other", reimaged to demo).
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/repo-common.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"

repo_setup 8 1 2 3
ctl "$pub" image publish demo@1 "$www" >/dev/null || tb_fail "publish demo@1"
repo_serve

for mode in hold current; do
  echo "== scheduled pull, make_current: $([ $mode = current ] && echo true || echo false)"
  app=$TB_TMP/app-$mode
  tb_import "$app" demo "$TB_TMP/v1.img"
  td_config "$TB_TMP/$mode.json" "$app" '{ "pc01": { "image": "demo", "policy": "rollback" },
    "pc02": { "image": "other", "policy": "rollback" } }' \
    "\"pull\": { \"from\": \"$url\", \"images\": [\"demo\"], \"when\": \"every 1s\",
                 \"make_current\": $([ $mode = current ] && echo true || echo false) }"
  tb_import "$app" other "$TB_TMP/v2.img"
  mkdir -p -m 700 "$app/clients" "$app/clients/pc02"
  printf '{"image": "demo"}\n' >"$app/clients/pc02/mailbox.json"
  chmod 600 "$app/clients/pc02/mailbox.json"
  ctl "$pub" image publish demo@2 "$www" >/dev/null || tb_fail "publish demo@2"
  td_start "$TB_TMP/$mode.json"
  i=0
  until grep -q '"type":"image-pulled"' "$app/events.jsonl" 2>/dev/null; do
    i=$((i + 1))
    [ $i -lt 300 ] || tb_fail "no scheduled pull within 30 s: $(tail -n 5 "$app/events.jsonl")"
    sleep 0.1
  done
  [ -f "$app/images/demo/2.json" ] || tb_fail "the pulled version is not in the store"
  cmp -s "$app/images/demo/2.img" "$TB_TMP/v2.img" || tb_fail "the pulled version differs"
  tb_io_sock() { "$TB_IO" -s "$app/nbd.sock" "$@"; }
  if [ $mode = hold ]; then
    jq -e '.pin == 1' "$app/clients/pc01/mailbox.json" >/dev/null 2>&1 ||
      tb_fail "without make_current pc01 must be pinned to demo@1"
    tctl client pc01 >"$TB_TMP/client.out"
    grep -q 'demo@1' "$TB_TMP/client.out" || tb_fail "tabulactl client: $(cat "$TB_TMP/client.out")"
    jq -e '.pin == 1 and .image == "demo"' "$app/clients/pc02/mailbox.json" >/dev/null 2>&1 ||
      tb_fail "without make_current pc02 (reimaged to demo) must be pinned to demo@1:" \
        "$(cat "$app/clients/pc02/mailbox.json")"
  else
    for id in pc01 pc02; do
      if jq -e '.pin' "$app/clients/$id/mailbox.json" >/dev/null 2>&1; then
        tb_fail "with make_current $id must not be pinned"
      fi
    done
  fi
  want=$([ $mode = current ] && echo 2 || echo 1)
  for id in pc01 pc02; do
    tb_io_sock -e $id rewrite:0:4096 || tb_fail "$id session"
    jq -s -e "map(select(.type == \"session-start\" and .client == \"$id\")) | last |
      .image == \"demo\" and .version == $want" "$app/events.jsonl" >/dev/null ||
      tb_fail "$id must run demo@$want"
  done
  td_stop
  # Back to one version in the repository for the next round.
  rm -f "$www/demo/2.img"
  ctl "$pub" image publish demo@1 "$www" >/dev/null
  python3 - "$www/demo/index.json" <<'PY'
import json, sys
p = sys.argv[1]
ix = json.load(open(p))
ix["versions"] = [v for v in ix["versions"] if v["version"] == 1]
json.dump(ix, open(p, "w"))
PY
done
repo_nginx_stop
tb_check_logs
