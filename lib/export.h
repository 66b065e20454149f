/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: the grammar of NBD export names, untrusted bytes from any peer.
 *
 *   ID                 a client's own disk (read-write)
 *   ID@boot/TOKEN      the same, naming the boot (lib/boot.h's token)
 *   ID@live            admin: the client's disk as it is now
 *   ID@overlay         admin: the dirty map as extents
 *   ID@session/N       admin: retained session N (N >= 1)
 *   IMAGE@N            admin: master version N (N >= 1)
 * ID and IMAGE are names (tb_name_valid); N is decimal without leading
 * zeros, at most 19 digits.  Anything else is not an export.
 *
 * A client's further disk (conf.h "disks") is ID/DISK in every client form:
 * "pc01/games", "pc01/games@boot/TOKEN", "pc01/games@live",
 * "pc01/games@overlay", "pc01/games@session/N" (tb_client_id_valid: 64
 * characters in all).  NBD export names are free strings, so nbd-client,
 * QEMU (nbd+unix:///pc01/games?socket=...) and libnbd pass the '/' as is.
 * An image name never has one ("a/b@3" is nothing).
 */
#ifndef TB_EXPORT_H
#define TB_EXPORT_H

#include <stdbool.h>
#include <stdint.h>

#include "util.h"

enum tb_export_kind {
  TB_EXPORT_CLIENT,  /* ID, ID@boot/TOKEN: read-write */
  TB_EXPORT_LIVE,    /* ID@live */
  TB_EXPORT_OVERLAY, /* ID@overlay */
  TB_EXPORT_SESSION, /* ID@session/N */
  TB_EXPORT_IMAGE,   /* IMAGE@N */
};

struct tb_export {
  enum tb_export_kind kind;
  char name[TB_NAME_MAX + 1]; /* the client id ("ID" or "ID/DISK") or image name */
  uint64_t num;               /* SESSION, IMAGE: N; else 0 */
  char token[65];             /* CLIENT: the boot token, or "" */
};

/* Parse EXPORT (NUL-terminated).  Returns 0, or -1 if it is not of any of
 * the forms above (OUT is then unspecified). */
int tb_export_parse(const char *export, struct tb_export *out);

/* Is KIND served only to admin peers? */
bool tb_export_is_admin(enum tb_export_kind kind);

#endif
