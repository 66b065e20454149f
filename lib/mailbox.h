/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: a client's mailbox -- what the daemon asks of its next session.
 *
 * The daemon never touches a live client's overlay.  It writes
 * clients/ID/mailbox.json, and the plugin applies it at the next session start
 * (session.c).  Both sides change the file only under clients/ID/mailbox.lock
 * (flock), with an atomic rewrite, so no request is lost.
 *
 * One-shot requests are cleared by the plugin when applied; standing settings
 * (image override, pin, lockdown) stay until the daemon changes them.
 *
 * One-shot requests are numbered as they are posted (a counter kept in the
 * file), and a turn applies only the latest of them: "restore 1" then
 * "rollback" is a rollback, "rollback" then "restore 1" a restore.  The
 * requests the latest one supersedes are cleared with it.
 */
#ifndef TB_MAILBOX_H
#define TB_MAILBOX_H

#include <stdbool.h>
#include <stdint.h>

#include "util.h"

struct tb_mailbox {
  /* one-shot */
  bool rollback;   /* discard the overlay: the next session starts clean */
  bool refresh;    /* move to the current version (overlay discarded) */
  int64_t restore; /* >0: make retained session N the overlay again */
  /* the order they were posted in (0: unknown, an older file) */
  uint64_t rollback_no, refresh_no, restore_no;
  uint64_t serial; /* the last request number given out */
  /* standing */
  char image[TB_NAME_MAX + 1]; /* "" or an image that replaces the configured one (reimage) */
  uint32_t pin;                /* 0 or the version this client is pinned to */
  char lockdown[256];          /* "" or why the export is refused */
};

/* Read the mailbox (all fields zero if there is none). */
int tb_mailbox_read(const char *state, const char *id, struct tb_mailbox *mb);

/* Read-modify-write under the mailbox lock.  FN edits *mb and returns 0 to
 * write it back, 1 to leave the file as it was, or -1 (with tb_error) to fail.
 * FN sees the standing settings and no pending one-shot: a one-shot it sets
 * is a new request, numbered after every pending one (which stay). */
typedef int (*tb_mailbox_fn)(struct tb_mailbox *mb, void *ctx);
int tb_mailbox_update(const char *state, const char *id, tb_mailbox_fn fn, void *ctx);

/* Keep only the latest one-shot request of *MB (an in-memory copy): what a
 * turn applies.  Requests of unknown order rank restore, refresh, rollback. */
void tb_mailbox_keep_latest(struct tb_mailbox *mb);

/* A turn applied the one-shots of a mailbox read when its SERIAL was the
 * last request number: clear them, and every one they superseded; requests
 * posted since stay for the next turn. */
int tb_mailbox_clear_applied(const char *state, const char *id, uint64_t serial);

#endif
