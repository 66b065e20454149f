/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: the watchdog's file rules, evaluated on a client's disk.
 *
 * A scan opens one overlay file read-only on top of its base version (through
 * lib/overlay, as the admin exports do), and inspects both with lib/inspect,
 * the view's code: volumes are named as in the view ("p2-ntfs",
 * "whole-ext4"), and created/changed/deleted files are what the view's
 * changes.txt lists (tb_inspect_diff), narrowed by the overlay's dirty map.
 *
 * The scan holds the overlay's file descriptor, so it reads one consistent
 * file even if the client's next session starts meanwhile and rotates it
 * away.  On a live overlay it reads what the session has flushed.
 *
 * Patterns: "path" is a glob matched with fnmatch(FNM_PATHNAME) against the
 * absolute path inside the volume ("/Windows/System32/drivers/etc/hosts",
 * "/Windows/Temp/[!~]*.exe"), so '*' stays within one directory; a component
 * that is exactly two stars matches any number of directories (two stars
 * between slashes, then "*.exe", matches every .exe file of the volume).
 * Names are compared as the filesystem stores them (case-sensitively).
 */
#ifndef TB_RULES_H
#define TB_RULES_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "inspect.h"
#include "overlay.h"
#include "watchdog-conf.h"

struct tb_scan {
  struct tb_overlay *overlay;
  struct tb_overlay_info info; /* base version, session, dirty blocks */
  struct tb_disk *base, *live;
  struct tb_inspect *base_ins, *live_ins;
  struct tb_ranges dirty; /* disk bytes the overlay holds (DATA and ZERO) */
  dev_t dev;              /* identity of the overlay file scanned */
  ino_t ino;
  int64_t diff_ms, walk_ms;        /* time spent, for events and benchmarks */
  int64_t index_ms;                /* building the base version's index (0: it was cached) */
  uint64_t index_files;            /* paths in that index */
  struct tb_diff_stats diff_stats; /* of the indexed diff */
};

/* Open OVERLAY_PATH (a client's overlay, retained session or quarantined
 * overlay) and its base version from STATE's store; every inspection call
 * gets BUDGET_MS (0: lib/inspect's default, see tb_inspect_set_budget).
 * NULL with tb_error; then
 * if STUCK is not NULL, *STUCK is tb_scan_stuck's answer for the failed scan
 * (else NULL). */
struct tb_scan *tb_scan_open(const char *state, const char *overlay_path, int64_t budget_ms,
                             struct tb_disk **stuck);
void tb_scan_close(struct tb_scan *s);

/* A reference to the scan's live or base disk if an inspection of it was
 * abandoned at its deadline and still runs (lib/inspect.h: a filesystem
 * crafted to keep libtsk computing), else NULL.  Callers scanning the same
 * client again wait until tb_disk_stuck() of it turns false, so a hostile
 * guest keeps at most one inspection thread busy. */
struct tb_disk *tb_scan_stuck(struct tb_scan *s);

/* Called for each (rule, file) that matches.  KIND is "created", "changed",
 * "deleted" or "exists"; PATH is "VOLUME/path/in/volume". */
typedef int (*tb_rule_hit_fn)(void *ctx, const struct tb_file_rule *rule, const char *kind,
                              const char *path);

/* Evaluate N rules.  Created/changed/deleted come from one diff of the base
 * and the overlay, limited to the dirty map (nothing dirty: nothing to
 * compare): tb_inspect_diff_indexed through the base version's index, built
 * on first use and kept in memory (tb_inspect_index_get: the last
 * TB_INSPECT_INDEX_CACHE versions used; a version never changes, so an index
 * is never stale, and one that failed to build is not built again while
 * cached); "exists" looks the path up (a literal path) or walks the volume
 * (a glob).  Non-zero from FN stops and is returned. */
int tb_rules_eval(struct tb_scan *s, const struct tb_file_rule *rules, size_t n, tb_rule_hit_fn fn,
                  void *ctx);

/* Does PATH (absolute, in VOLUME, or in any volume if VOLUME is "") exist on
 * the scanned disk?  1 yes (ST filled if not NULL), 0 no, -1 on error. */
int tb_scan_stat(struct tb_scan *s, const char *volume, const char *path, struct tb_istat *st);

/* Does PATTERN (see above) match PATH, an absolute path inside a volume? */
bool tb_rule_path_match(const char *pattern, const char *path);

#endif
