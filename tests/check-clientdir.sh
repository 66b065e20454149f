#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# scripts/check-clientdir.pl, make check's rule that lib/clientdir.c alone
# formats a clients/ path: it fails on path-building calls that spell the
# layout (one line or several) or join onto a path a tb_clientdir_* call made
# in the same function, names the file and line, and lets messages that
# mention the same files, and joins onto other paths, pass.
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

int g(const char *state, const char *id, char *p, char *dir, unsigned long long n)
{
  if (tb_clientdir_entry(state, id, TB_CF_TRASH, "1", p, 64) == -1)
    return -1;
  snprintf(p, 64, "%s/%llu", dir, n); /* dir: not filled by clientdir here */
  return tb_path(dir, 64, "%s/%s", "x", p);
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

int g(const char *state, const char *id, char *p, unsigned long long n)
{
  struct { char trash[64]; } *b = malloc(sizeof *b);
  if (tb_clientdir_path(state, id, TB_CF_TRASH, b->trash, sizeof b->trash) == -1)
    return -1;
  return tb_path(p, 64,
                 "%s/%llu", b->trash, n);
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
grep -q "bad.c:15: joins a path onto b->trash, which tb_clientdir_\* made" <<<"$out" || {
  echo "FAIL: the join onto a clientdir path (line 15) not reported" >&2
  exit 1
}
[ "$(wc -l <<<"$out")" -eq 4 ] || { echo "FAIL: expected 4 reports" >&2; exit 1; }
echo "PASS"
