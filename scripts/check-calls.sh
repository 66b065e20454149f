#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# scripts/check-calls.sh: restored/'s files call each other in the order
# restored/daemon.h documents, without a cycle (make check runs it:
# restored/Makefile.am's check-calls).
#
#   scripts/check-calls.sh SRCDIR OBJECT...
#
# How.  The order is read from daemon.h's design note: the lines after "in
# this order:" up to the note's next blank line; each line that begins with
# FILE.c names (one or more) is a rank, and a file may call only files of
# earlier ranks (files of one rank not each other).  The graph is derived,
# not kept by hand:
#   - a call edge A -> B for each global symbol that A's object leaves
#     undefined and B's object defines (nm): functions and data (timers,
#     op tables) alike;
#   - an include edge A -> B for each #include "B.h" in A.c whose B.c is a
#     file of SRCDIR (daemon.h, everyone's, is no file's).
# An object named PROG-FILE.o (automake's per-target names) or FILE.o is
# SRCDIR/FILE.c.  It prints both graphs, then fails on a file the order does
# not place, on an edge the order does not allow, and on a cycle (tsort).
set -euo pipefail
export LC_ALL=C

if [ $# -lt 2 ]; then
  echo "usage: $0 SRCDIR OBJECT..." >&2
  exit 2
fi
srcdir=$1
shift
header=$srcdir/daemon.h
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The documented order: "FILE RANK" lines.
awk '
  /in this order:/ { on = 1; next }
  on && /^ \*[ \t]*$/ { if (rank) exit; next }
  on {
    sub(/^ \*[ \t]*/, "")
    n = split($0, w, /[ \t]+/)
    placed = 0
    for (i = 1; i <= n && w[i] ~ /^[A-Za-z0-9_-]+\.c$/; i++) {
      if (!placed) { rank++; placed = 1 }
      print w[i], rank
    }
  }
' "$header" | sort >"$tmp/rank"
if [ ! -s "$tmp/rank" ]; then
  echo "check-calls: $header documents no order (\"in this order:\")" >&2
  exit 1
fi

# Global definitions and references of each object.
files=()
for obj in "$@"; do
  base=$(basename "$obj" .o)
  file=${base#*-}.c
  files+=("$file")
  nm --defined-only -g "$obj" | awk -v f="$file" 'NF == 3 { print $3, f }' >>"$tmp/defs"
  nm -u "$obj" | awk -v f="$file" '{ print $NF, f }' >>"$tmp/refs"
done
sort -u "$tmp/defs" -o "$tmp/defs"
sort -u "$tmp/refs" -o "$tmp/refs"

# Call edges: "FROM TO SYMBOL".
join "$tmp/refs" "$tmp/defs" | awk '$2 != $3 { print $2, $3, $1 }' | sort >"$tmp/calls"
# Include edges: "FROM TO HEADER".
for file in "${files[@]}"; do
  sed -n 's/^#include "\([^"]*\)\.h".*/\1/p' "$srcdir/$file" | while read -r h; do
    if [ "$h" != daemon ] && [ "$h.c" != "$file" ] && [ -f "$srcdir/$h.h" ] && printf '%s\n' "${files[@]}" | grep -qx "$h.c"; then
      echo "$file $h.c $h.h"
    fi
  done
done | sort >"$tmp/includes"

echo "restored/ include graph (#include of another file's header; every file includes daemon.h):"
if [ -s "$tmp/includes" ]; then
  awk '{ printf "  %s -> %s (%s)\n", $1, $2, $3 }' "$tmp/includes"
else
  echo "  (none)"
fi
echo "restored/ call graph (what each file calls, by rank of daemon.h's order):"
awk '{ print $1, $2 }' "$tmp/calls" "$tmp/includes" | sort -u >"$tmp/edges"
join "$tmp/rank" <(printf '%s\n' "${files[@]}" | sort -u) | sort -k2,2n -k1,1 |
  while read -r f r; do
    printf '  %-2s %-15s -> %s\n' "$r" "$f" "$(awk -v f="$f" '$1 == f { printf "%s ", $2 }' "$tmp/edges")"
  done

status=0
for file in "${files[@]}"; do
  if ! grep -q "^$file " "$tmp/rank"; then
    echo "check-calls: $file is not in daemon.h's order" >&2
    status=1
  fi
done
# An edge is allowed when its target's rank is lower than its source's.
join "$tmp/calls" "$tmp/rank" | sort -k2,2 | join -1 2 -2 1 -o 1.1,1.2,1.3,1.4,2.2 - "$tmp/rank" |
  awk '$5 >= $4 { printf "check-calls: %s calls %s (%s), which daemon.h places at or after it\n", $1, $2, $3 }' \
    >"$tmp/bad"
join "$tmp/includes" "$tmp/rank" | sort -k2,2 | join -1 2 -2 1 -o 1.1,1.2,1.3,1.4,2.2 - "$tmp/rank" |
  awk '$5 >= $4 { printf "check-calls: %s includes %s, the header of %s, which daemon.h places at or after it\n", $1, $3, $2 }' \
    >>"$tmp/bad"
if [ -s "$tmp/bad" ]; then
  sort -u "$tmp/bad" >&2
  status=1
fi
if ! tsort "$tmp/edges" >/dev/null 2>"$tmp/tsort"; then
  echo "check-calls: the calls of restored/ form a cycle:" >&2
  sed 's/^/  /' "$tmp/tsort" >&2
  status=1
fi
[ $status -eq 0 ] && echo "check-calls: restored/ follows daemon.h's order, no cycle"
exit $status
