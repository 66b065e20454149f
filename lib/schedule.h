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

#endif
