/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: the data-path guards: a session's protected regions
 * (watchdog.protect) as byte ranges, checked on every write (lib/live.c).
 */
#ifndef TB_GUARDS_H
#define TB_GUARDS_H

#include <stdint.h>

#include "vector.h"
#include "watchdog-conf.h"

/* Resolved byte ranges of the protected regions of one session. */
struct tb_guard {
  char name[TB_NAME_MAX + 1];
  uint64_t off, len;
  enum tb_guard_action action;
  int64_t last_event_ms; /* for rate-limiting events */
  uint64_t suppressed;   /* hits since the last event */
};

TB_VECTOR(tb_guards, struct tb_guard);

/* Resolve W's regions for a disk of SIZE bytes; partitions are looked up in
 * the partition table of the image at BASE_PATH.  A partition that does not
 * exist is an error that names it. */
int tb_guards_resolve(const struct tb_watchdog_conf *w, const char *base_path, uint64_t size,
                      struct tb_guards *out);
void tb_guards_free(struct tb_guards *g);

/* The first guard that [off, off+len) touches, preferring a "deny" one; NULL if none. */
struct tb_guard *tb_guards_check(struct tb_guards *g, uint64_t off, uint64_t len);

/* For a change that tb_guards_check() found touching a guard: the guard it
 * really concerns.  A "deny" guard counts only if the change alters its
 * bytes: the current content of the intersection, read through OVL, is
 * compared with BUF (NULL: the change writes zeros, as zero and trim do), so
 * a filesystem rewriting sector 0 unchanged passes.  Otherwise the first
 * "alert" guard touched, or NULL.  Off the fast path: only called on a hit. */
struct tb_overlay;
struct tb_guard *tb_guards_check_change(struct tb_guards *g, struct tb_overlay *ovl,
                                        const void *buf, uint64_t off, uint64_t len);

#endif
