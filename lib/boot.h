/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: boot markers -- evidence that a client's machine started a new boot.
 *
 * A session is one boot of the client machine (DESIGN.md), not one NBD or
 * iSCSI connection: reconnects within a boot continue its session.  What tells
 * a new boot from a reconnect is, in order of strength:
 *
 *   1. a boot id the client sends with its export name ("ID@boot/TOKEN"; our
 *      initramfs hook sends the kernel's /proc/sys/kernel/random/boot_id):
 *      another token than the running session's is another boot;
 *   2. a boot marker: the daemon writes clients/ID/boot when dnsmasq reports
 *      the machine's PXE DHCP request or its TFTP fetch of the boot files
 *      (tabulactl pxe-event, called by dnsmasq's dhcp-script).  A marker newer
 *      than the one the running session started after is another boot;
 *   3. otherwise a connection within the client's reconnect_grace of the last
 *      one closing continues the session (a VM's QEMU, a plain nbd-client).
 *
 * The marker file holds a sequence number that only grows, the time and how
 * it was seen.  It is small JSON written atomically (tb_write_file_atomic), so
 * a reader sees the old or the new marker, never a torn one.
 */
#ifndef TB_BOOT_H
#define TB_BOOT_H

#include <stdint.h>

#include "util.h"

struct tb_boot_marker {
  uint64_t seq;     /* 0: no boot was ever seen */
  int64_t at_ms;    /* wall clock, ms since the epoch */
  char via[16];     /* "dhcp", "tftp", "ipxe", "admin" */
  char detail[128]; /* e.g. "mac 52:54:00:12:34:56 address 10.20.0.21" (printable ASCII) */
};

/* Record a new boot of client ID: seq = previous seq + 1.  VIA and DETAIL are
 * copied (DETAIL truncated, non-printable bytes replaced by '?'). */
int tb_boot_mark(const char *state, const char *id, const char *via, const char *detail);

/* Read client ID's latest marker; a client never marked reads as seq 0 (and
 * returns 0).  A damaged file is an error naming it (remove it to recover). */
int tb_boot_marker_read(const char *state, const char *id, struct tb_boot_marker *m);

/* Is TOKEN a valid boot id: [A-Za-z0-9-]{1,64}? */
bool tb_boot_token_valid(const char *token);

#endif
