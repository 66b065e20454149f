/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: admin views of a session that another frontend process runs.
 *
 * The admin exports (ID@live, ID@overlay) are served by nbdkit only, but a
 * client's session may run in tabula-iscsid.  The frontend that runs a
 * session answers admin reads of it on a unix socket in the state directory
 * (tb_liveview_serve), and the process serving the admin export asks it
 * (tb_liveview_peer_*), so ID@live reads exactly what the client's own
 * reads would return at that moment, flushed or not, as it does for a
 * session nbdkit runs itself.  liveview.c says why it is done this way.
 *
 * Functions return 0 / a pointer on success, -1 / NULL with errno set and a
 * message in tb_errmsg() on failure; the peer calls return 1 when the other
 * process answered from its running session, 0 when no other process runs a
 * session of the client (read the overlay on disk instead).
 */
#ifndef TB_LIVEVIEW_H
#define TB_LIVEVIEW_H

#include <stdbool.h>
#include <stdint.h>

#include "overlay.h"

/* STATE/view-FRONTEND.sock: where FRONTEND ("iscsi") answers. */
int tb_liveview_socket_path(const char *state, const char *frontend, char *buf, size_t len);

/* In a frontend process: answer admin reads of the sessions this process
 * runs (lib/live.c's tb_live_read_begin), on a thread of its own, until
 * tb_liveview_serve_stop.  Only peers of this process's uid (or root). */
int tb_liveview_serve(const char *state, const char *frontend);
void tb_liveview_serve_stop(void);

/* In the admin process: client ID's session as FRONTEND runs it.  Calls
 * may overlap (a few connections, opened as needed and kept); after an
 * answer "none" they answer 0 without asking until the client's live.json
 * or overlay changes. */
struct tb_liveview_peer;
struct tb_liveview_peer *tb_liveview_peer_new(const char *state, const char *frontend,
                                              const char *id);
void tb_liveview_peer_free(struct tb_liveview_peer *p);

/* The running session's overlay: size, block size, base, session number. */
int tb_liveview_peer_info(struct tb_liveview_peer *p, struct tb_overlay_info *info);
/* Read the disk (DIRTY_ONLY: the overlay alone, CLEAN reads as zeros, the
 * ID@overlay export).  A disk of another size than EXPECT_SIZE (re-imaged)
 * fails with ESTALE. */
int tb_liveview_peer_pread(struct tb_liveview_peer *p, bool dirty_only, void *buf, uint32_t count,
                           uint64_t offset, uint64_t expect_size);
/* Runs of block states from OFFSET (they may cover less than COUNT: call
 * again from where they end), malloc'd into *RUNS; *BASE_FD is the base
 * version's file (for holes in CLEAN runs), for the caller to close. */
struct tb_liveview_run {
  uint64_t offset, length;
  enum tb_block_state state;
};
int tb_liveview_peer_extents(struct tb_liveview_peer *p, uint64_t offset, uint64_t count,
                             uint64_t expect_size, struct tb_liveview_run **runs, size_t *n_runs,
                             int *base_fd);

#endif
