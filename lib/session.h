/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: session turns -- what happens when a boot of a client starts
 * (live.c decides when) and when it ends.  The frontends reach them through
 * live.c; nothing else does the turn, so the policy logic lives here once.
 *
 * Plan:   take clients/ID/lock (held for the whole session), read the mailbox,
 *         decide the turn and make the resulting disk readable.
 * Commit: apply it and the policy:
 *           rollback: rotate the previous overlay into sessions/ (O(1) rename),
 *                     create an empty one on the current version, carrying
 *                     preserved ranges over; delete retained sessions past
 *                     keep_sessions;
 *           persist:  keep the overlay, pinned to its base version.
 *         Then open the overlay and record a session-start event.
 * End:    flush, write session figures to session.json and a session-end
 *         event, release the lock.
 *
 * A client's further disk (conf.h "disks", id "ID/DISK") has sessions of its
 * own, in clients/ID/disks/DISK, turned by its own policy; live.c ties them
 * to its client's boot.  Its plan also reads its client's mailbox for a
 * lockdown (a locked-down client is locked down on every disk), and a
 * read-only disk plans its master as is and never commits (EROFS).
 */
#ifndef TB_SESSION_H
#define TB_SESSION_H

#include <stdint.h>

#include "conf.h"
#include "overlay.h"

/* How the boot a session belongs to was told from the one before (boot.h). */
struct tb_boot_note {
  char via[16];   /* "token", "dhcp", "tftp", ... (the marker's), or "none" */
  char token[65]; /* the boot id the client sent, or "" */
  uint64_t marker_seq;
  char peer[128]; /* the connection that opened the boot */
};

struct tb_session {
  char id[TB_NAME_MAX + 1];
  char *state_dir; /* heap, like everything a running session keeps */
  struct tb_overlay *overlay;
  struct tb_overlay_info info; /* at session start */
  uint64_t number;             /* session number */
  int64_t started_ms;
  int lock_fd;
  struct tb_boot_note boot;
  uint64_t bytes_read_before; /* read by the boot before its turn (from the plan) */
};

/* Which version a client is served at its next clean start: mailbox image
 * override and pin first, then the configured version, else the newest. */
int tb_client_target(const char *state, const struct tb_client_conf *c, char image[TB_NAME_MAX + 1],
                     uint32_t *version);

/* A plan is a session turn decided but not yet done: the client's lock is
 * taken, the mailbox read, and the disk the session will show is readable
 * (tb_session_plan_pread) without changing anything on disk.  Commit does
 * the turn exactly as planned (a mailbox request posted in between waits
 * for the next boot).  CFG and C must outlive the plan.  ADMIN_LOOK: a
 * locked-down client may be planned (and read), never committed.  Fails with
 * EWOULDBLOCK when the client is busy (its lock is held), EACCES when it is
 * locked down and !ADMIN_LOOK (lib/live.c tells refusals apart by these). */
struct tb_session_plan;
struct tb_session_plan *tb_session_plan(const struct tb_config *cfg, const struct tb_client_conf *c,
                                        bool admin_look);
/* Frees the plan; releases the lock unless a commit took it. */
void tb_session_plan_free(struct tb_session_plan *pl);
uint64_t tb_session_plan_size(const struct tb_session_plan *pl);
uint32_t tb_session_plan_block_size(const struct tb_session_plan *pl);
bool tb_session_plan_locked_down(const struct tb_session_plan *pl);
/* Locked down, or a read-only disk: served read-only, never committed. */
bool tb_session_plan_read_only(const struct tb_session_plan *pl);
int tb_session_plan_base_fd(const struct tb_session_plan *pl);
/* The master file the planned session's overlay is built on. */
const char *tb_session_plan_base_path(const struct tb_session_plan *pl);
int tb_session_plan_pread(struct tb_session_plan *pl, void *buf, uint32_t count, uint64_t offset);
int tb_session_plan_extents(struct tb_session_plan *pl, uint64_t offset, uint64_t count,
                            tb_extent_fn fn, void *ctx);
/* The turn: rotate, restore, create, carry preserved ranges, prune, clear the
 * applied mailbox requests, session.json and a session-start event.  The
 * session takes the plan's lock; the plan must still be freed (after every
 * reader of it is done). */
struct tb_session *tb_session_commit(struct tb_session_plan *pl, const struct tb_boot_note *boot);

/* What session.json says of the client's last session. */
struct tb_session_record {
  bool active; /* not ended: running, reconnecting, or left by a process that died */
  uint64_t number;
  int64_t started_ms;
  struct tb_boot_note boot;
};
int tb_session_record(const char *state, const char *id, struct tb_session_record *rec);
/* Take an active session over from a frontend process that is gone: its
 * overlay as it is, no turn, the same number.  The caller records whether it
 * continues it (session-resume) or ends it (session-orphaned).  Fails with
 * EWOULDBLOCK when the client is busy. */
struct tb_session *tb_session_resume(const struct tb_config *cfg, const struct tb_client_conf *c,
                                     const struct tb_session_record *rec);
/* Ends the session: flush, figures, event, unlock, free.  Returns flush result. */
int tb_session_end(struct tb_session *s);
/* Leaves the session to the next frontend process: flush, unlock, free; the
 * record stays active so that process can resume it. */
int tb_session_suspend(struct tb_session *s);

/* Take / release a client's lock without a session (daemon work on an idle
 * client).  Returns the fd or -1; with wait=false fails with EWOULDBLOCK
 * (and a message saying the client is in a session) if it is held. */
int tb_client_lock(const char *state, const char *id, bool wait);
void tb_client_unlock(int fd);
/* Is a session (or daemon work) holding the client's lock right now? */
bool tb_client_locked(const char *state, const char *id);

/* The number of the last session that started (clients/ID/seq), 0 if none. */
uint64_t tb_client_last_session(const char *state, const char *id);

/* Retire a client's overlay: rename clients/ID/overlay to sessions/NUMBER (a
 * restore point), or drop it if nothing was ever written to it.  NUMBER is the
 * last session that used it (tb_client_last_session).  The caller holds the
 * client's lock.  RETAINED gets the new path, or "" if nothing was kept. */
int tb_client_retire(const char *state, const char *id, uint64_t number, char *retained,
                     size_t len);

/* Retained sessions of a client, ascending (malloc'd). */
int tb_client_sessions(const char *state, const char *id, uint64_t **nums, size_t *n);

/* Base image path and identity for an image version. */
int tb_base_lookup(const char *state, const char *image, uint32_t version, struct tb_base_id *id,
                   char *path, size_t path_len, uint64_t *size);

/* The exact info of an overlay file no session holds (PATH: a client's
 * overlay or retained session): unlike tb_overlay_read_info, which reads the
 * header only, it opens the overlay read-only on its base and counts the
 * dirty blocks of its map. */
int tb_overlay_exact_info(const char *state, const char *path, struct tb_overlay_info *info);

#endif
