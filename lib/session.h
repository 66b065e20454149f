/* tabula: session turns -- what happens when a client's first connection opens
 * and its last one closes.  The nbdkit plugin calls these; nothing else does
 * the turn, so the policy logic lives here once.
 *
 * Begin:  take clients/ID/lock (held for the whole session), read the mailbox,
 *         apply it and the policy:
 *           rollback: rotate the previous overlay into sessions/ (O(1) rename),
 *                     create an empty one on the current version, carrying
 *                     preserved ranges over; delete retained sessions past
 *                     keep_sessions;
 *           persist:  keep the overlay, pinned to its base version.
 *         Then open the overlay and record a session-start event.
 * End:    flush, write session figures to session.json and a session-end
 *         event, release the lock.
 */
#ifndef TB_SESSION_H
#define TB_SESSION_H

#include <stdint.h>

#include "conf.h"
#include "overlay.h"

struct tb_session {
  char id[TB_NAME_MAX + 1];
  char *state_dir; /* heap, like everything a running session keeps */
  struct tb_overlay *overlay;
  struct tb_overlay_info info; /* at session start */
  uint64_t number;             /* session number */
  int64_t started_ms;
  int lock_fd;
};

/* Which version a client is served at its next clean start: mailbox image
 * override and pin first, then the configured version, else the newest. */
int tb_client_target(const char *state, const struct tb_client_conf *c, char image[TB_NAME_MAX + 1],
                     uint32_t *version);

struct tb_session *tb_session_begin(const struct tb_config *cfg, const struct tb_client_conf *c);
/* Ends the session: flush, figures, event, unlock, free.  Returns flush result. */
int tb_session_end(struct tb_session *s);

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
int tb_client_session_path(const char *state, const char *id, uint64_t n, char *buf, size_t len);

/* Base image path and identity for an image version. */
int tb_base_lookup(const char *state, const char *image, uint32_t version, struct tb_base_id *id,
                   char *path, size_t path_len, uint64_t *size);

/* The exact info of an overlay file no session holds (PATH: a client's
 * overlay or retained session): unlike tb_overlay_read_info, which reads the
 * header only, it opens the overlay read-only on its base and counts the
 * dirty blocks of its map. */
int tb_overlay_exact_info(const char *state, const char *path, struct tb_overlay_info *info);

#endif
