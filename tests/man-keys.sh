#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# tabula.json(5) lists exactly the keys the parser accepts (issue 18 §5): the
# key tables of lib/conf.c, lib/watchdog-conf.c and lib/iscsi-conf.c (the
# `static const char *const ...keys[] = {...}` lists check_keys uses) and
# the pull section's keys in lib/repo-pullconf.c (`strcmp(key, "...")`) are compared
# with the page: every key must appear in bold (.B/.BR/.RB lines), and every
# key the page documents as an item (.TP then .B KEY) must be one the parser
# knows.  A key added to the parser without the page fails here.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
tb_require python3

python3 - "$abs_top_srcdir" <<'PY' || tb_fail "tabula.json(5) and the parser differ (see above)"
import re, sys
top = sys.argv[1]
keys = set()
for f in ("lib/conf.c", "lib/watchdog-conf.c", "lib/iscsi-conf.c"):
    s = open(f"{top}/{f}").read()
    for m in re.finditer(r'static const char \*const \w*keys\w*\[\]\s*=\s*\{([^}]*)\}', s):
        keys.update(re.findall(r'"([^"]+)"', m.group(1)))
repo = open(f"{top}/lib/repo-pullconf.c").read()
keys.update(re.findall(r'strcmp\(key, "([a-z_0-9]+)"\)', repo))
if len(keys) < 50:
    sys.exit(f"only {len(keys)} keys found in the parser: the extraction is broken")
page = open(f"{top}/man/tabula.json.5").read().splitlines()
bold = set()
items = set()
for i, line in enumerate(page):
    if re.match(r'\.(B|BR|RB|BI)\b', line):
        bold.update(re.findall(r'[a-z][a-z0-9_]*', line.split(' ', 1)[1] if ' ' in line else ''))
    if line == '.TP' and i + 1 < len(page) and re.match(r'\.(B|BR) ', page[i + 1]):
        items.update(k for k in re.findall(r'[a-z][a-z0-9_]*', page[i + 1].split(' ', 1)[1])
                     if k not in ('required',))
missing = sorted(keys - bold)
unknown = sorted(items - keys)
for k in missing:
    print(f"tabula.json(5) does not list the key {k!r} the parser accepts")
for k in unknown:
    print(f"tabula.json(5) documents {k!r}, which the parser does not accept")
print(f"{len(keys)} keys in the parser, {len(items)} documented items")
sys.exit(1 if missing or unknown else 0)
PY
