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

/* One change to a mailbox: what to post, set or clear, and on what
 * condition.  Zero means "leave it" for every field, so a designated
 * initializer names only what changes:
 *   {.rollback = true}                     post a rollback
 *   {.set_pin = true, .pin = 7}            pin to version 7 (.pin = 0 unpins)
 *   {.lockdown = ""}                       lift a lockdown
 *   {.applied = true, .applied_serial = n} a turn applied what it read
 */
struct tb_mailbox_change {
  /* One-shot requests to post, each under the next request number, in this
   * order (so of several posted at once a restore is the latest); the
   * pending ones stay, superseded at the next turn. */
  bool rollback;
  bool refresh;
  int64_t restore; /* > 0: make retained session N the overlay again */
  /* Standing settings. */
  const char *image; /* non-NULL: the image override ("" clears it; else a valid name) */
  bool set_pin;      /* set the pin to PIN (0 clears it) */
  uint32_t pin;
  const char *lockdown; /* non-NULL: why the export is refused ("" lifts it; cut to fit) */
  /* A turn applied the one-shots of a mailbox it read when this was the
   * last request number (its serial): clear them, and every one they
   * superseded; requests posted since stay for the next turn.  (A serial
   * of 0, a file older than the numbering, clears every pending one.) */
  bool applied;
  uint64_t applied_serial;
  /* Conditions on the standing settings as they are under the lock: if one
   * does not hold, nothing changes (a compare-and-set of what the caller
   * read before deciding). */
  const char *if_image; /* non-NULL: the image override is this ("" none) */
  bool if_pin;          /* the pin is PIN_WAS (0: no pin) */
  uint32_t pin_was;
};

/* Apply CH under the mailbox lock with an atomic rewrite (none if nothing
 * changes).  Returns 0 if applied, 1 if a condition did not hold (the file
 * is as it was), -1 with tb_error.  AFTER, if not NULL, receives the
 * mailbox as it is on disk afterwards, pending one-shots included (on 1:
 * as it is, for the caller to decide again); it may not overlap anything
 * CH points to. */
int tb_mailbox_change(const char *state, const char *id, const struct tb_mailbox_change *ch,
                      struct tb_mailbox *after);

/* tb_mailbox_change(STATE, ID, &(change){FIELDS...}, NULL) */
#define TB_MAILBOX_CHANGE(state, id, ...)                                                          \
  tb_mailbox_change((state), (id), &(const struct tb_mailbox_change){__VA_ARGS__}, NULL)

/* Keep only the latest one-shot request of *MB (an in-memory copy): what a
 * turn applies.  Requests of unknown order rank restore, refresh, rollback. */
void tb_mailbox_keep_latest(struct tb_mailbox *mb);

#endif
