#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# scripts/check-clientdir.pl, make check's rule that lib/clientdir.c alone
# formats a clients/ path: it fails on path-building calls that spell the
# layout (one line or several), names the file and line, and lets messages
# that mention the same files pass.
set -euo pipefail
script="$abs_top_srcdir/scripts/check-clientdir.pl"
dir=$(mktemp -d "${TMPDIR:-/tmp}/tabula-test.check-clientdir.XXXXXX")
trap 'rm -rf "$dir"' EXIT

cat >"$dir/ok.c" <<'C'
int f(const char *state, const char *id, char *p)
{
  if (tb_clientdir_path(state, id, TB_CF_SEQ, p, 64) == -1)
    return tb_error("cannot retire: clients/%s/seq is behind", id);
  log_msg("crash after health.json recorded it");
  tb_path(p, 64, "%s/events.jsonl", state);
  return tb_path(p, 64, "%s/%s", state, "x");
}
C
perl "$script" "$dir/ok.c"

cat >"$dir/bad.c" <<'C'
int f(const char *dir, char *p, unsigned long long n)
{
  snprintf(p, 64, "%s/clients/%s", dir, "pc01");
  if (tb_path(p, 64,
              "%s/sessions/%llu", dir, n) == -1)
    return -1;
  return tb_path(p, 64, "%s/mailbox.json", dir);
}
C
if out=$(perl "$script" "$dir/bad.c"); then
  echo "FAIL: check-clientdir.pl passed a file that formats clients/ paths" >&2
  exit 1
fi
echo "$out"
for line in 3 4 7; do
  grep -q "bad.c:$line: formats a clients/ path" <<<"$out" || {
    echo "FAIL: line $line not reported" >&2
    exit 1
  }
done
[ "$(wc -l <<<"$out")" -eq 3 ] || { echo "FAIL: expected 3 reports" >&2; exit 1; }
echo "PASS"
