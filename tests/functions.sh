# SPDX-License-Identifier: BSD-3-Clause
# tests/functions.sh: helpers shared by the shell integration tests (sourced).
#
# Every test gets its own temporary directory and a trap that stops every
# nbdkit it started, unmounts what it mounted and removes the directory, on
# any exit.  Servers are real: nbdkit with the tabula plugin (or any other
# plugin) on a unix socket inside that directory, started in the foreground
# (-f) in the background of the shell, so the test knows its pid and sees its
# stderr in NAME.log.
#
#   tb_setup                       temp dir in $TB_TMP, cleanup trap
#   tb_start NAME CONFIG [ARGS]    nbdkit + plugin on $TB_TMP/NAME.sock, waits until it serves
#   tb_start_plugin NAME ARGS...   same with any nbdkit plugin/filter arguments
#   tb_stop NAME / tb_kill9 NAME   stop cleanly (SIGTERM) / crash it (SIGKILL)
#   tb_refuses_to_start NAME CONFIG  nbdkit must exit with an error; stderr in NAME.log
#   tb_io NAME [-e EXPORT] CMD...  tests/plugin-io against NAME's socket
#   tb_import STATE IMAGE FILE     publish FILE as the next version of IMAGE
#   tb_make_file FILE SIZE SEED [DATA_BYTES]  patterned master image
#   tb_fail MSG / tb_skip MSG      exit 1 / exit 77 with a message
#   tb_ext3_selfmap IMG PATH       damage PATH in the ext3 (4 KiB blocks) of IMG so
#                                  that libtsk computes for an hour mapping it
#
# Set TB_KEEP=1 to keep the temporary directory for a post-mortem.

set -eu

: "${abs_top_builddir:?run through make check, or set abs_top_builddir}"
: "${abs_builddir:=$abs_top_builddir/tests}"
: "${abs_top_srcdir:=$(cd "$(dirname "$0")/.." && pwd)}"

TB_PLUGIN=$abs_top_builddir/nbdkit-plugin/.libs/nbdkit-tabula-plugin.so
# nbdkit for the tabula plugin: with the sanitizer runtime preloaded in a
# sanitizer build (tests/nbdkit-san.in says why and how).
TB_NBDKIT=$abs_builddir/nbdkit-san
# The test clients may be sanitizer builds too; their exit paths after a
# refused connection are not worth leak reports.
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}
export ASAN_OPTIONS
TB_IO=$abs_builddir/plugin-io
TB_IMPORT=$abs_builddir/plugin-import
TB_TMP=
TB_MOUNTS=

tb_fail()
{
  echo "FAIL: $0: $*" >&2
  exit 1
}

tb_skip()
{
  echo "SKIP: $0: $*" >&2
  exit 77
}

# tb_require CMD...: skip the test when an optional tool is missing.
tb_require()
{
  for cmd in "$@"; do
    command -v "$cmd" >/dev/null 2>&1 || tb_skip "$cmd is not installed"
  done
}

tb_cleanup()
{
  status=$?
  set +e
  if [ -n "$TB_TMP" ]; then
    for pidfile in "$TB_TMP"/*.holdpid "$TB_TMP"/*.iopid "$TB_TMP"/*.bgpid; do
      [ -f "$pidfile" ] || continue
      pid=$(cat "$pidfile" 2>/dev/null)
      [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
    done
    wait 2>/dev/null
    for m in $TB_MOUNTS; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done
    # A sanitizer report in any log fails the test, whatever it checked:
    # an error in the daemon's nbdkit ends that nbdkit, and the daemon
    # restarts it, so the test itself may not notice.
    if tb_sanitizer_reports >&2; then
      echo "FAIL: $0: a sanitizer report in the logs above" >&2
      [ "$status" -ne 0 ] && [ "$status" -ne 77 ] || status=1
    fi
    if [ "$status" -ne 0 ] && [ "$status" -ne 77 ]; then
      for log in "$TB_TMP"/*.log; do
        [ -f "$log" ] || continue
        echo "---- $log (last 30 lines)" >&2
        tail -n 30 "$log" >&2
      done
    fi
    if [ "${TB_KEEP:-}" = 1 ]; then
      echo "kept $TB_TMP" >&2
    else
      rm -rf "$TB_TMP"
    fi
  fi
  exit "$status"
}

tb_setup()
{
  TB_TMP=$(mktemp -d "${TMPDIR:-/tmp}/tabula-test.XXXXXX")
  trap tb_cleanup EXIT
  trap 'exit 130' INT TERM
  [ -x "$TB_IO" ] || tb_fail "$TB_IO is not built (make check builds it)"
  [ -x "$TB_NBDKIT" ] || tb_fail "$TB_NBDKIT is missing (configure makes it from tests/nbdkit-san.in)"
}

# tb_sanitizer_reports: print the ASan/LSan/UBSan reports of this test's
# logs (nbdkit's stderr, the daemon's); true if there is one.
tb_sanitizer_reports()
{
  _found=1
  for _log in "$TB_TMP"/*.log; do
    [ -f "$_log" ] || continue
    if grep -Eq 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$_log"; then
      echo "---- sanitizer report in $_log:"
      grep -E -A30 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$_log" | head -n 60
      _found=0
    fi
  done
  return $_found
}

# tb_wait_socket NAME PID: wait until NAME's socket accepts, or the process died.
tb_wait_socket()
{
  _sock=$TB_TMP/$1.sock
  _i=0
  while [ $_i -lt 300 ]; do
    if ! kill -0 "$2" 2>/dev/null; then
      return 1
    fi
    if [ -S "$_sock" ] && [ -s "$TB_TMP/$1.pid" ]; then
      return 0
    fi
    sleep 0.1
    _i=$((_i + 1))
  done
  return 1
}

# tb_start_plugin NAME NBDKIT-ARGS...: any plugin, e.g. tb_start_plugin f file FILE.
tb_start_plugin()
{
  _name=$1
  shift
  rm -f "$TB_TMP/$_name.sock" "$TB_TMP/$_name.pid"
  # The sanitizer preload only for the tabula plugin (nbdkit-san.in).
  _nbdkit=nbdkit
  for _arg in "$@"; do
    [ "$_arg" != "$TB_PLUGIN" ] || _nbdkit=$TB_NBDKIT
  done
  "$_nbdkit" -f --unix "$TB_TMP/$_name.sock" -P "$TB_TMP/$_name.pid" "$@" \
    >>"$TB_TMP/$_name.log" 2>&1 &
  _pid=$!
  echo "$_pid" >"$TB_TMP/$_name.bgpid"
  if ! tb_wait_socket "$_name" "$_pid"; then
    kill -9 "$_pid" 2>/dev/null || true
    cat "$TB_TMP/$_name.log" >&2
    tb_fail "nbdkit $_name did not start"
  fi
}

# tb_start NAME CONFIG [more nbdkit args before the plugin]
tb_start()
{
  _n=$1
  _c=$2
  shift 2
  [ -f "$TB_PLUGIN" ] || tb_fail "$TB_PLUGIN is not built"
  tb_start_plugin "$_n" "$@" "$TB_PLUGIN" config="$_c"
}

tb_pid()
{
  cat "$TB_TMP/$1.bgpid"
}

tb_stop()
{
  _pid=$(tb_pid "$1")
  kill -TERM "$_pid" 2>/dev/null || true
  _i=0
  while kill -0 "$_pid" 2>/dev/null; do
    _i=$((_i + 1))
    if [ $_i -gt 300 ]; then
      kill -9 "$_pid" 2>/dev/null || true
      tb_fail "nbdkit $1 did not stop within 30 s of SIGTERM"
    fi
    sleep 0.1
  done
  wait "$_pid" 2>/dev/null || true
  rm -f "$TB_TMP/$1.pid" "$TB_TMP/$1.bgpid"
}

tb_kill9()
{
  _pid=$(tb_pid "$1")
  kill -9 "$_pid" 2>/dev/null || true
  wait "$_pid" 2>/dev/null || true
  rm -f "$TB_TMP/$1.pid" "$TB_TMP/$1.bgpid"
}

# tb_refuses_to_start NAME CONFIG: nbdkit must exit non-zero within 30 s and
# never listen.  Its stderr is left in $TB_TMP/NAME.log for the caller to check.
tb_refuses_to_start()
{
  rm -f "$TB_TMP/$1.log" "$TB_TMP/$1.sock"
  "$TB_NBDKIT" -f --unix "$TB_TMP/$1.sock" "$TB_PLUGIN" config="$2" >"$TB_TMP/$1.log" 2>&1 &
  _pid=$!
  _i=0
  while kill -0 $_pid 2>/dev/null; do
    [ ! -S "$TB_TMP/$1.sock" ] || { kill -9 $_pid; tb_fail "nbdkit listens with bad config $2"; }
    _i=$((_i + 1))
    [ $_i -lt 300 ] || { kill -9 $_pid; tb_fail "nbdkit kept running with bad config $2"; }
    sleep 0.1
  done
  if wait $_pid; then
    tb_fail "nbdkit started (and exited 0) with bad config $2"
  fi
  [ ! -S "$TB_TMP/$1.sock" ] || tb_fail "nbdkit listened with bad config $2"
  grep -q 'AddressSanitizer\|runtime error' "$TB_TMP/$1.log" &&
    tb_fail "sanitizer error with config $2: $(cat "$TB_TMP/$1.log")"
  return 0
}

# tb_io NAME CMD... or tb_io NAME -e EXPORT [-n N] CMD...
tb_io()
{
  _s=$TB_TMP/$1.sock
  shift
  "$TB_IO" -s "$_s" "$@"
}

tb_make_file()
{
  "$TB_IO" --make-file "$@"
}

tb_import()
{
  [ -x "$TB_IMPORT" ] || tb_fail "$TB_IMPORT is not built"
  "$TB_IMPORT" "$@" >/dev/null
}

# tb_assert_log NAME REGEX WHAT: NAME.log must match the extended regex.
tb_assert_log()
{
  grep -Eq -- "$2" "$TB_TMP/$1.log" ||
    tb_fail "$3: nbdkit's stderr does not match /$2/: $(tail -n 5 "$TB_TMP/$1.log")"
}

# tb_sha256 FILE
tb_sha256()
{
  sha256sum "$1" | cut -d' ' -f1
}

# tb_digest FILE: a version's digest as its manifest's "sha256" holds it, the
# SHA-256 of the SHA-256s of its 4 MiB chunks (lib/store.h), computed here
# independently of tabula.
tb_digest()
{
  python3 -c '
import hashlib, sys
top = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    while True:
        chunk = f.read(4 << 20)
        if not chunk:
            break
        top.update(hashlib.sha256(chunk).digest())
print(top.hexdigest())' "$1"
}

# tb_free_port: a TCP port nobody listens on right now.
tb_free_port()
{
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' \
    2>/dev/null || echo $((20000 + $$ % 20000))
}

# tb_check_logs: no nbdkit of this test hit a sanitizer error or crashed.
tb_check_logs()
{
  for log in "$TB_TMP"/*.log; do
    [ -f "$log" ] || continue
    if grep -Eq 'AddressSanitizer|LeakSanitizer|runtime error:|Segmentation fault|Assertion' "$log"; then
      tb_fail "$(basename "$log"): $(grep -E -m3 'AddressSanitizer|LeakSanitizer|runtime error:|Segmentation fault|Assertion' "$log")"
    fi
  done
}

# tb_config FILE STATE CLIENTS-JSON [EXTRA-TOP-LEVEL-JSON]: a config with image
# "demo" and the given "clients" object.
tb_config()
{
  cat >"$1" <<EOF2
{
  "state_dir": "$2",
  ${4:+$4,}
  "reconnect_grace": "${TB_RECONNECT_GRACE:-0s}",
  "images": { "demo": {} },
  "clients": $3
}
EOF2
}

# tb_hold NAME TAG [plugin-io args...]: run plugin-io in the background, its
# last command "hold"; returns once it holds its connections open.  They stay
# open until tb_release TAG.
tb_hold()
{
  _srv=$1
  _tag=$2
  shift 2
  rm -f "$TB_TMP/$_tag.fifo" "$TB_TMP/$_tag.out"
  mkfifo "$TB_TMP/$_tag.fifo"
  tb_io "$_srv" "$@" hold <"$TB_TMP/$_tag.fifo" >"$TB_TMP/$_tag.out" 2>&1 &
  echo $! >"$TB_TMP/$_tag.iopid"
  # Keep a writer open on the fifo so plugin-io sees no EOF until released.
  sleep 2147483647 >"$TB_TMP/$_tag.fifo" &
  echo $! >"$TB_TMP/$_tag.holdpid"
  _i=0
  until grep -q holding "$TB_TMP/$_tag.out" 2>/dev/null; do
    if ! kill -0 "$(cat "$TB_TMP/$_tag.iopid")" 2>/dev/null; then
      kill "$(cat "$TB_TMP/$_tag.holdpid")" 2>/dev/null
      tb_fail "plugin-io $_tag exited before holding: $(cat "$TB_TMP/$_tag.out")"
    fi
    _i=$((_i + 1))
    [ $_i -lt 300 ] || tb_fail "plugin-io $_tag did not reach hold"
    sleep 0.1
  done
}

# tb_release TAG: let a held plugin-io finish; fails if it failed.
tb_release()
{
  kill "$(cat "$TB_TMP/$1.holdpid")" 2>/dev/null || true
  _st=0
  wait "$(cat "$TB_TMP/$1.iopid")" || _st=$?
  [ $_st -eq 0 ] || tb_fail "plugin-io $1 failed ($_st): $(cat "$TB_TMP/$1.out")"
}

# tb_count_events TYPE CLIENT STATE: how many events of TYPE for CLIENT.
tb_count_events()
{
  if [ -f "$3/events.jsonl" ]; then
    jq -c "select(.type == \"$1\" and .client == \"$2\")" "$3/events.jsonl" | wc -l
  else
    echo 0
  fi
}

# tb_json FILE JQ-EXPR WHAT: the jq expression must be true for FILE.
tb_json()
{
  [ "$(jq -r "$2" "$1")" = true ] || tb_fail "$3: $2 is not true for $1: $(cat "$1")"
}

# tb_event STATE JQ-CONDITION WHAT: some event in STATE/events.jsonl matches.
tb_event()
{
  jq -c "select($2)" "$1/events.jsonl" 2>/dev/null | grep -q . ||
    tb_fail "$3: no event with $2 in $1/events.jsonl"
}

# tb_start_tcp NAME CONFIG ADDR PORT: nbdkit + plugin on TCP ADDR:PORT.
tb_start_tcp()
{
  rm -f "$TB_TMP/$1.pid"
  "$TB_NBDKIT" -f -i "$3" -p "$4" -P "$TB_TMP/$1.pid" "$TB_PLUGIN" config="$2" \
    >>"$TB_TMP/$1.log" 2>&1 &
  _pid=$!
  echo "$_pid" >"$TB_TMP/$1.bgpid"
  _i=0
  until [ -s "$TB_TMP/$1.pid" ]; do
    kill -0 "$_pid" 2>/dev/null || tb_fail "nbdkit $1 on $3:$4 did not start: $(cat "$TB_TMP/$1.log")"
    _i=$((_i + 1))
    [ $_i -lt 300 ] || tb_fail "nbdkit $1 on $3:$4 did not start within 30 s"
    sleep 0.1
  done
}

# tb_wait_idle STATE ID: wait until client ID's session has ended (nbdkit
# ends it just after the last connection closes, asynchronously to the client,
# or, with a reconnect_grace, when that has passed), or until its connections
# are gone when none of them wrote (no session).
tb_wait_idle()
{
  _i=0
  until { [ ! -f "$1/clients/$2/session.json" ] ||
    [ "$(jq -r .state "$1/clients/$2/session.json" 2>/dev/null)" = idle ]; } &&
    flock -n -s "$1/clients/$2/lock" true; do
    _i=$((_i + 1))
    [ $_i -lt 300 ] || tb_fail "client $2's session did not end within 30 s of its last disconnect"
    sleep 0.05
  done
}

# tb_ext3_selfmap IMG PATH: PATH (a file of the block-mapped ext2/3 with 4 KiB
# blocks in IMG, an image or a disk nbdfuse exposes) gets a double-indirect
# block that is a free block filled with its own number, and a size within the
# double-indirect range.  libtsk's map builder then makes a million runs and
# appends each by walking the list (quadratic): an hour of computation without
# a single read, what a hostile guest can do to an inspector.
tb_ext3_selfmap()
{
  _b=$(debugfs -R "ffb 1 1000" "$1" 2>/dev/null | sed -n 's/^Free blocks found: *\([0-9][0-9]*\).*/\1/p')
  [ -n "$_b" ] || tb_fail "no free block in $1"
  _le=$(printf '\\%03o\\%03o\\%03o\\%03o' $((_b & 255)) $((_b >> 8 & 255)) $((_b >> 16 & 255)) $((_b >> 24)))
  _i=0
  while [ $_i -lt 1024 ]; do
    printf "$_le"
    _i=$((_i + 1))
  done | dd of="$1" bs=4096 seek="$_b" conv=notrunc status=none
  debugfs -w -R "setb $_b" "$1" 2>/dev/null # in use: a later write must not take it
  debugfs -w -R "sif $2 block[DIND] $_b" "$1" 2>/dev/null
  debugfs -w -R "sif $2 size 4000000000" "$1" 2>/dev/null
  debugfs -R "stat $2" "$1" 2>/dev/null | grep -q "(DIND):$_b" || tb_fail "could not damage $2 in $1"
}
