#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# The shipped systemd unit and configuration fit together (issue 18 §1):
#  - `systemd-analyze verify` accepts the unit as make install writes it;
#  - every socket the shipped conf/tabula.json puts under /run lies in a
#    directory the unit creates (RuntimeDirectory=): without it the daemon
#    exited with "cannot listen on /run/tabula/control.sock";
#  - the shipped configuration loads;
#  - make install (DESTDIR) puts tabulactl in bin (a user command),
#    tabula-restored in sbin where the unit's ExecStart points, the unit,
#    README.md in docdir and tabula.json(5).
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
tb_require systemd-analyze jq

unit=$TB_TMP/tabula-restored.service
# As the top Makefile.am generates it, with the built daemon as the binary.
sed -e "s|@sbindir[@]|$abs_top_builddir/restored|g" -e "s|@bindir[@]|$abs_top_builddir/tabulactl|g" \
  -e "s|@sysconfdir[@]|$TB_TMP|g" \
  "$abs_top_srcdir/conf/tabula-restored.service.in" >"$unit"
systemd-analyze verify --man=no "$unit" >"$TB_TMP/verify.out" 2>&1 ||
  tb_fail "systemd-analyze verify: $(cat "$TB_TMP/verify.out")"
[ ! -s "$TB_TMP/verify.out" ] || tb_fail "systemd-analyze verify warns: $(cat "$TB_TMP/verify.out")"

conf=$abs_top_srcdir/conf/tabula.json
rundirs=$(sed -n 's/^RuntimeDirectory=//p' "$unit")
for sock in $(jq -r '.control, .listen.unix, .metrics.file // empty' "$conf"); do
  case $sock in
  /run/*) ;;
  *) continue ;;
  esac
  d=$(dirname "$sock")
  ok=
  for r in $rundirs; do
    [ "$d" = "/run/$r" ] && ok=1
  done
  [ -n "$ok" ] || tb_fail "$sock (conf/tabula.json): the unit creates no $d (RuntimeDirectory=$rundirs)"
  echo "ok: $sock in RuntimeDirectory $d"
done

# The shipped configuration parses (tabulactl reads it for the state dir).
cp "$conf" "$TB_TMP/tabula.json"
"$abs_top_builddir/tabulactl/tabulactl" -c "$TB_TMP/tabula.json" --state "$TB_TMP/state" image list \
  >"$TB_TMP/list.out" 2>&1 || tb_fail "the shipped configuration: $(cat "$TB_TMP/list.out")"

echo "== make install DESTDIR"
# Only on a build that is up to date: make install would otherwise rebuild
# under the tests running beside this one.
b=$abs_top_builddir
newer=
for pair in "lib restored:restored/tabula-restored" "tabulactl:tabulactl/tabulactl" \
  "fuse:fuse/tabula-fuse" "nbdkit-plugin:nbdkit-plugin/nbdkit-tabula-plugin.la"; do
  for d in ${pair%%:*}; do
    [ -e "$b/${pair#*:}" ] || continue
    newer=${newer:-$(find "$abs_top_srcdir/$d" -name '*.[ch]' -newer "$b/${pair#*:}" | head -n 1)}
  done
done
if [ -n "$newer" ]; then
  echo "the build is older than $newer (make all first): the install part is not run"
  exit 0
fi
dest=$TB_TMP/root
make -C "$abs_top_builddir" install DESTDIR="$dest" >"$TB_TMP/install.log" 2>&1 ||
  tb_fail "make install: $(tail -n 5 "$TB_TMP/install.log")"
var() { sed -n "s|^$1 = ||p" "$abs_top_builddir/Makefile" | head -1; }
prefix=$(var prefix)
expand() { echo "$1" | sed -e "s|\${exec_prefix}|$prefix|" -e "s|\${prefix}|$prefix|" \
  -e "s|\${datarootdir}|$prefix/share|" -e "s|\${PACKAGE_TARNAME}|tabula|" \
  -e "s|\${PACKAGE}|tabula|"; }
bindir=$(expand "$(var bindir)")
sbindir=$(expand "$(var sbindir)")
docdir=$(expand "$(expand "$(var docdir)")")
mandir=$(expand "$(expand "$(var mandir)")")
unitdir=$(expand "$(var systemdsystemunitdir)")
for f in "$bindir/tabulactl" "$sbindir/tabula-restored" "$docdir/README.md" \
  "$mandir/man5/tabula.json.5" "$unitdir/tabula-restored.service"; do
  [ -e "$dest$f" ] || tb_fail "make install did not install $f: $(find "$dest" -type f | head -n 30)"
  echo "ok: installed $f"
done
[ ! -e "$dest$sbindir/tabulactl" ] || tb_fail "tabulactl is installed in sbin, not in a user's PATH"
grep -q "^ExecStart=$sbindir/tabula-restored " "$dest$unitdir/tabula-restored.service" ||
  tb_fail "the installed unit's ExecStart: $(grep ExecStart "$dest$unitdir/tabula-restored.service")"
grep -q '^RuntimeDirectory=tabula$' "$dest$unitdir/tabula-restored.service" ||
  tb_fail "the installed unit creates no /run/tabula"
