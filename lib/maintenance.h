/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: the maintenance PC of an image -- how a café updates its master.
 *
 * `tabulactl maintenance start pc00 --image win11` makes pc00 the
 * maintenance PC of win11: from its next boot it is served the newest
 * version of win11 with a persist overlay (kept across its reboots, whatever
 * its configured policy and image), so an administrator can install updates
 * and games over as many reboots as they need.  `maintenance finish` merges
 * that overlay into a new version of win11 (the daemon's merge job), which
 * every client following the newest version boots next; it is refused when
 * win11 got another new version meanwhile (the merge would drop it).
 * `maintenance abort` discards the overlay (kept as a restore point).  After
 * finish or abort the PC's next boot is back on its own configuration.
 *
 * The state is clients/ID/maintenance.json, written by the daemon and read at
 * each session plan (session.c: the image it boots and its policy).  The
 * daemon writes it before it posts the mailbox's refresh that moves the PC
 * onto the image, and removes it only after the merge has published the new
 * version, so a crash in between leaves the PC in maintenance, never a
 * maintenance overlay turned into an ordinary one.
 */
#ifndef TB_MAINTENANCE_H
#define TB_MAINTENANCE_H

#include <stdint.h>

#include "util.h"

struct tb_maintenance {
  char image[TB_NAME_MAX + 1]; /* the image the PC maintains */
  uint32_t from_version;       /* its newest version when maintenance started */
  int64_t since_ms;
};

/* 1: client ID is a maintenance PC (M filled in, if not NULL); 0: it is not;
 * -1: the file cannot be read (message names it). */
int tb_maintenance_read(const char *state, const char *id, struct tb_maintenance *m);
int tb_maintenance_write(const char *state, const char *id, const struct tb_maintenance *m);
/* Remove the file (no file is no error). */
int tb_maintenance_clear(const char *state, const char *id);

#endif
