/* SPDX-License-Identifier: BSD-3-Clause */
/* tabulactl: the one progress line of every long command (image import,
 * publish, pull; merge and maintenance finish through the daemon's interim
 * lines), and the human sizes it and the results print.
 *
 * The line is drawn on stderr, redrawn in place ("\r", erase to the end of
 * the line), only when stderr is a terminal and neither -q nor --json was
 * given; progress_done erases it before the result goes to stdout:
 *
 *   WHAT: PHASE [#########.....................]  30% 3.6 MiB of 12.0 MiB 4.0 MiB/s, ETA 0m02s
 *
 * The rate and the ETA are the phase's own (a new phase restarts them), shown
 * once the phase has run for half a second.  A phase whose name says
 * "chunks" counts chunks, not bytes.  A step without a size (fetching an
 * index) is "WHAT: STEP...".  Redraws are at most every 100 ms, and always at
 * a phase's end.
 */
#ifndef TB_CTL_PROGRESS_H
#define TB_CTL_PROGRESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct progress {
  bool on;
  bool drawn;
  char what[128];
  char phase[48]; /* a copy: merge's phase names are freed after each interim line */
  uint64_t last_done;
  int64_t start_ms, last_ms, phase_ms;
  int phase_no; /* for callers that number their passes (import) */
};

/* "12.0 MiB", "512 B". */
void human_size(uint64_t n, char *out, size_t len);

/* WHAT prefixes the line; QUIET (-q, --json) keeps it off even on a terminal. */
void progress_init(struct progress *p, const char *what, bool quiet);
void progress_show(struct progress *p, const char *phase, uint64_t done, uint64_t total);
void progress_step(struct progress *p, const char *step);
void progress_done(struct progress *p);

#endif
