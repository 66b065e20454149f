/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-restored: what the journal's tailer (journal.c) knows of the
 * journal's generations, for the webhooks (webhooks.c), which read the
 * journal on their own. */
#ifndef TB_JOURNAL_H
#define TB_JOURNAL_H

#include <stdint.h>

/* A generation's name: hex sha256 of its first line (of its first
 * JOURNAL_FP_BYTES bytes if longer); -1 (OUT "") while that line is not
 * complete. */
#define JOURNAL_FP_BYTES 4096
int journal_fingerprint(int fd, char out[65]);

/* Lines held by the generations the tailer finished after the one named FROM
 * and before the one named TO (NULL: up to the newest); -1 if FROM is not
 * among the last 64 it saw (e.g. before a restart). */
int64_t journal_lines_between(const char *from, const char *to);

#endif
