#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# A client peer gets nothing of the admin side: pc01 connecting over TCP from
# its own address cannot open pc02, pc01@live, pc01@overlay, demo@1 or list
# the exports, and tabula-fuse --uri from there refuses to mount with a
# message that says why.  An admin (the unix socket as root) can.
. "$abs_top_srcdir/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/fuse-functions.sh"
tb_require nbdinfo mke2fs

T=$TB_TMP
mkdir "$T/src"
echo secret >"$T/src/secret.txt"
tf_ext4 "$T/master.img" "$T/src" 16M
state=$T/state
tb_import "$state" demo "$T/master.img"
port=$(tb_free_port)
tb_config "$T/tabula.json" "$state" '{
    "pc01": { "image": "demo", "allow": ["127.0.0.1"] },
    "pc02": { "image": "demo", "allow": ["10.99.0.2"] }
  }' "\"listen\": { \"unix\": \"$T/srv.sock\", \"tcp\": \"127.0.0.1:$port\" }"
# nbdkit serves one kind of socket: one server on the unix socket (admin),
# one on TCP (where pc01 comes from), same configuration and state.
tb_start srv "$T/tabula.json"
"$TB_NBDKIT" -f --port "$port" --ipaddr 127.0.0.1 "$TB_PLUGIN" config="$T/tabula.json" \
  >"$T/tcp.log" 2>&1 &
echo $! >"$T/tcp.bgpid"
tcp=nbd://127.0.0.1:$port
i=0
until nbdinfo --size "$tcp/pc01" >/dev/null 2>&1; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "pc01 cannot open its own export over TCP: $(cat "$T/tcp.log")"
  sleep 0.1
done

for e in pc02 pc01@live pc01@overlay demo@1 pc02@live "pc01@session/1"; do
  if nbdinfo --size "$tcp/$e" >"$T/out" 2>&1; then
    tb_fail "client peer opened $e: $(cat "$T/out")"
  fi
done
if nbdinfo --list "$tcp" >"$T/list" 2>&1; then
  grep -Eq 'pc02|@live|@overlay|demo@' "$T/list" && tb_fail "client peer listed: $(cat "$T/list")"
fi

st=0
timeout 30 "$TF_FUSE" -f --uri "$tcp" "$T/mnt-denied" >"$T/denied.log" 2>&1 || st=$?
[ $st -eq 1 ] || tb_fail "tabula-fuse as a client peer: exit $st, expected 1: $(cat "$T/denied.log")"
grep -q 'admin' "$T/denied.log" || tb_fail "refusal does not say why: $(cat "$T/denied.log")"
mountpoint -q "$T/mnt-denied" 2>/dev/null && tb_fail "mounted as a client peer"

# The admin on the unix socket sees it all.
M=$T/mnt
tf_mount "$M" --uri "nbd+unix:///?socket=$T/srv.sock"
[ "$(ls "$M/clients" | tr '\n' ' ')" = "pc01 pc02 " ] || tb_fail "admin clients: $(ls "$M/clients")"
[ "$(cat "$M/images/demo/1/fs/whole-ext4/secret.txt")" = secret ] || tb_fail "admin read"
tf_umount "$M"
tb_check_logs
exit 0
