/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: live clients -- a client's sessions as a frontend sees them.
 *
 * Every way a machine reaches its disk (the NBD plugin, the iSCSI target) is
 * a thin frontend over these calls; the session rules live here once:
 *
 *   - A session is one boot (boot.h says how a new boot is told from a
 *     reconnect).  Connections of one boot share one session and one overlay;
 *     when the last one closes the session waits reconnect_grace for the boot
 *     to come back before it ends.  A frontend process that restarts (kill -9
 *     of nbdkit, a daemon restart) resumes the sessions it finds running on
 *     disk for reconnect_grace after its start.
 *   - Opening a connection turns nothing: the session turn (rollback
 *     rotation, mailbox, session record, session-start event) happens at the
 *     first write, trim or zero.  Until then reads see exactly the disk the
 *     turn will produce (the clean master for a rollback client, the
 *     restored session, the kept overlay), so a probe (NBD_OPT_INFO, nbdinfo,
 *     qemu-img info) never spends a session and never consumes the mailbox.
 *   - Data-path guards (protected regions, quota, the reserve), idle
 *     detection and their events are applied here for every frontend.
 *
 * The client's flock (clients/ID/lock) is held from the first connection of a
 * boot to the end of its session, so one client is never served by two
 * frontend processes at once: the second is refused as busy.
 *
 * Functions return 0 / a pointer on success, -1 / NULL with errno set and a
 * message in tb_errmsg() on failure.  Data-path errno values: EPERM (a
 * protected region denies the change), ENOSPC (quota or reserve), EROFS (a
 * read-only connection), ESHUTDOWN (the connection belongs to a boot that
 * has ended: the machine rebooted), EIO (the overlay or master failed).
 */
#ifndef TB_LIVE_H
#define TB_LIVE_H

#include <stdbool.h>
#include <stdint.h>

#include "conf.h"
#include "overlay.h"

struct tb_conn;

struct tb_conn_info {
  const char *frontend;   /* "nbd", "iscsi": shown in status */
  const char *peer;       /* printable peer ("10.20.0.21", "unix socket (uid 0)") */
  const char *boot_token; /* the boot id the client sent, or NULL */
  bool admin;             /* an admin peer: may look at a locked-down client */
};

/* Why tb_conn_open refused a connection: what a frontend records in its
 * refusal event and answers in its protocol (iSCSI: busy is "target
 * unavailable"). */
enum tb_conn_refusal {
  TB_CONN_FAILED,      /* the disk cannot be served: tb_errmsg() says why */
  TB_CONN_BUSY,        /* another process serves the client, or the daemon works on it */
  TB_CONN_LOCKED_DOWN, /* the client is locked down and the peer is no admin */
};
/* The "reason" of the refusal event: "busy", "locked down", else MSG (the
 * error message). */
const char *tb_conn_refusal_reason(enum tb_conn_refusal why, const char *msg);

/* Open a connection of client C.  Fails when the client is busy (another
 * process serves it), locked down (unless INFO->admin: then reads work and
 * writes fail with EPERM), or its disk cannot be found; then *WHY (if WHY is
 * not NULL) says which. */
struct tb_conn *tb_conn_open(const struct tb_config *cfg, const struct tb_client_conf *c,
                             const struct tb_conn_info *info, enum tb_conn_refusal *why);
void tb_conn_close(struct tb_conn *conn);

uint64_t tb_conn_size(const struct tb_conn *conn);
/* A locked-down client opened by an admin: its disk can be read, not changed
 * (frontends announce it read-only, so a VM refuses to start on it). */
bool tb_conn_read_only(const struct tb_conn *conn);
uint32_t tb_conn_block_size(const struct tb_conn *conn);

int tb_conn_pread(struct tb_conn *conn, void *buf, uint32_t count, uint64_t offset);
int tb_conn_pwrite(struct tb_conn *conn, const void *buf, uint32_t count, uint64_t offset,
                   int flags /* TB_FUA */);
int tb_conn_zero(struct tb_conn *conn, uint32_t count, uint64_t offset, int flags);
int tb_conn_trim(struct tb_conn *conn, uint32_t count, uint64_t offset, int flags);
int tb_conn_flush(struct tb_conn *conn);
/* Extents of the client's disk (TB_CLEAN runs are the master's). */
int tb_conn_extents(struct tb_conn *conn, uint64_t offset, uint64_t count, tb_extent_fn fn,
                    void *ctx);
/* The master file descriptor under the connection's current view (for
 * finding holes in CLEAN runs), or -1. */
int tb_conn_base_fd(struct tb_conn *conn);

/* Once a second, from a frontend's own thread: ends sessions whose grace ran
 * out, reports idle clients, applies the state directory's reserve. */
void tb_live_tick(const struct tb_config *cfg);

/* At process exit: flush every session and leave it resumable (state
 * "reconnecting" on disk) for the next frontend process. */
void tb_live_shutdown(void);

/* Does this process hold a boot of client ID (booting, running, reconnecting)? */
bool tb_live_holds(const char *id);
/* Would client (or disk) C be refused as busy here: another process holds
 * its lock, or (a client with disks) any disk of it? */
bool tb_live_busy(const char *state, const struct tb_client_conf *c);

/* Admin views (ID@live, ID@overlay) read the running session's overlay when
 * this process serves one, so they see the guest's writes at once.  The
 * handle keeps client ID's state alive; read_begin returns the session's
 * overlay (held for reading until read_end) or NULL when no session runs
 * here (then read the overlay on disk); GENERATION changes whenever a
 * session starts or ends, to tell when a copy read from disk is stale. */
struct tb_live_client;
struct tb_live_client *tb_live_client_get(const char *id);
void tb_live_client_put(struct tb_live_client *lc);
struct tb_overlay *tb_live_read_begin(struct tb_live_client *lc, uint64_t *generation);
void tb_live_read_end(struct tb_live_client *lc);

#endif
