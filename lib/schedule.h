/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: refresh schedules -- when a client's overlay is next refreshed.
 *
 * The forms a configuration may use ("refresh" of a client or a group):
 *   "hourly"                 at minute 0 of every hour
 *   "daily HH:MM"            every day at HH:MM local time
 *   "weekly DAY HH:MM"       DAY: mon tue wed thu fri sat sun (or the full name)
 *   "every DURATION"         "every 90s", "every 15m", "every 6h" (at least 1 s)
 * A random jitter ("refresh_jitter") is added by the caller to spread many
 * clients over a window.  Times are local (TZ); a daylight-saving jump moves a
 * due time with the wall clock, as cron does.
 *
 * A schedule's place survives restarts of the daemon in a small JSON file
 * (tb_schedule_resume/tb_schedule_save): its text, when it last fired and
 * when it is next due.  A restart neither fires every schedule again nor
 * forgets a turn that came due while the daemon was down: that turn fires
 * once, at start.
 */
#ifndef TB_SCHEDULE_H
#define TB_SCHEDULE_H

#include <stdint.h>

#include "util.h"

enum tb_schedule_kind { TB_SCHED_HOURLY, TB_SCHED_DAILY, TB_SCHED_WEEKLY, TB_SCHED_EVERY };

struct tb_schedule {
  enum tb_schedule_kind kind;
  int hour, minute; /* daily, weekly */
  int wday;         /* weekly: 0 = Sunday .. 6 = Saturday */
  int64_t every_ms; /* every */
};

/* Parse TEXT; on error returns -1 with a message that quotes TEXT and lists the forms. */
int tb_schedule_parse(const char *text, struct tb_schedule *s);

/* The first due time strictly after AFTER_MS (epoch milliseconds). */
int64_t tb_schedule_next(const struct tb_schedule *s, int64_t after_ms);

/* Where a schedule stands (epoch milliseconds). */
struct tb_schedule_mark {
  int64_t last_ms; /* when it last fired; 0: never */
  int64_t next_ms; /* when it is next due */
};

/* Where schedule S, written TEXT, stands after a restart, from FILE:
 *  - FILE has the same TEXT: its due time, even one that passed while the
 *    daemon was down (it fires once, at once; missed turns are not replayed);
 *  - FILE has another TEXT (the configuration changed): the first due time
 *    after its last firing, plus JITTER_MS;
 *  - no FILE (or one that is not ours): the first due time after NOW_MS plus
 *    JITTER_MS.
 * In the last two cases FILE is written, so the schedule counts from here
 * across the next restart.  Returns 0, or -1 if FILE could not be written
 * (*M is set all the same: the schedule runs, only its place may be lost). */
int tb_schedule_resume(const struct tb_schedule *s, const char *text, const char *file,
                       int64_t now_ms, int64_t jitter_ms, struct tb_schedule_mark *m);

/* Record M in FILE (atomically, creating its directory). */
int tb_schedule_save(const char *file, const char *text, const struct tb_schedule_mark *m);

#endif
