#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# scripts/setup.sh: install the Debian packages tabula needs (scripts/packages.txt)
# when any is missing, then prepare the build tree.  Sourced by demo.sh, check.sh
# and bench.sh; safe to run again (it installs nothing when all is present).
#
#   tb_install_packages [LIST...]   apt-get update once, then apt-get install -y the
#                                   missing ones (default list: scripts/packages.txt)
#   tb_install_guest_packages       the same for scripts/packages-guest.txt; a failure
#                                   (a kernel package in a container...) only warns:
#                                   the real-guest tests then skip, saying why
#   tb_build DIR [CONFIGURE-ARGS]   autoreconf, configure in DIR, make -j2

TB_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# tb_install_packages [LIST...]: the lists default to scripts/packages.txt.
tb_install_packages()
{
  local missing=() pkg list lists=("$@")
  [ ${#lists[@]} -gt 0 ] || lists=("$TB_TOP/scripts/packages.txt")
  for list in "${lists[@]}"; do
  while read -r pkg; do
    pkg=${pkg%%#*}
    pkg=${pkg//[[:space:]]/}
    [ -n "$pkg" ] || continue
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$pkg")
  done <"$list"
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]}" >&2
    echo "run as root, or: sudo apt-get install -y ${missing[*]}" >&2
    return 1
  fi
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "${TB_APT_UPDATED:-}" ]; then # once per run
    apt-get update -qq
    TB_APT_UPDATED=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

tb_install_guest_packages()
{
  tb_install_packages "$TB_TOP/scripts/packages-guest.txt" && return 0
  echo "warning: could not install the packages of scripts/packages-guest.txt; the" \
    "real-guest tests (tests/guest-*.sh) and demo.sh --guest will skip" >&2
  return 0
}

tb_build()
{
  local dir=$1
  shift
  (cd "$TB_TOP" && autoreconf -fi >/dev/null) || return 1
  mkdir -p "$dir"
  (cd "$dir" && "$TB_TOP/configure" --quiet "$@" && make -j2 --quiet) || return 1
}
