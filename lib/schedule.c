/* tabula: refresh schedules (see schedule.h).
 *
 * Calendar forms are computed with mktime() on a broken-down local time, so
 * month lengths, leap years and daylight-saving changes are the C library's
 * business.  "every" is a plain interval from the previous due time.
 */
#include <config.h>

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "schedule.h"

#define FORMS "\"hourly\", \"daily HH:MM\", \"weekly DAY HH:MM\" or \"every DURATION\""

static int parse_hhmm(const char *text, const char *s, int *hour, int *minute)
{
  int h, m, n = 0;
  if (sscanf(s, "%2d:%2d%n", &h, &m, &n) != 2 || s[n] != '\0' || h < 0 || h > 23 || m < 0 ||
      m > 59 || !isdigit((unsigned char)s[0]))
    return tb_error("refresh schedule \"%s\": expected a time HH:MM such as 03:30", text);
  *hour = h;
  *minute = m;
  return 0;
}

static int parse_day(const char *text, const char *word, size_t len, int *wday)
{
  static const char *const days[] = {"sunday",   "monday", "tuesday", "wednesday",
                                     "thursday", "friday", "saturday"};
  for (int i = 0; i < 7; i++)
    if ((len == 3 || len == strlen(days[i])) && strncasecmp(word, days[i], len) == 0) {
      *wday = i;
      return 0;
    }
  return tb_error("refresh schedule \"%s\": expected a day (mon, tue, wed, thu, fri, sat, sun)",
                  text);
}

int tb_schedule_parse(const char *text, struct tb_schedule *s)
{
  memset(s, 0, sizeof *s);
  if (!text)
    return tb_error("refresh schedule: expected " FORMS);
  if (strcmp(text, "hourly") == 0) {
    s->kind = TB_SCHED_HOURLY;
    return 0;
  }
  if (strncmp(text, "daily ", 6) == 0) {
    s->kind = TB_SCHED_DAILY;
    return parse_hhmm(text, text + 6, &s->hour, &s->minute);
  }
  if (strncmp(text, "weekly ", 7) == 0) {
    s->kind = TB_SCHED_WEEKLY;
    const char *day = text + 7, *sp = strchr(day, ' ');
    if (!sp)
      return tb_error("refresh schedule \"%s\": expected \"weekly DAY HH:MM\"", text);
    if (parse_day(text, day, (size_t)(sp - day), &s->wday) == -1)
      return -1;
    return parse_hhmm(text, sp + 1, &s->hour, &s->minute);
  }
  if (strncmp(text, "every ", 6) == 0) {
    s->kind = TB_SCHED_EVERY;
    if (tb_parse_duration(text + 6, &s->every_ms) == -1 || s->every_ms < 1000)
      return tb_error("refresh schedule \"%s\": expected a duration of at least 1s such as "
                      "\"30m\" or \"6h\"",
                      text);
    return 0;
  }
  return tb_error("refresh schedule \"%s\": expected " FORMS, text);
}

int64_t tb_schedule_next(const struct tb_schedule *s, int64_t after_ms)
{
  if (s->kind == TB_SCHED_EVERY)
    return after_ms + s->every_ms;
  time_t t = (time_t)(after_ms / 1000);
  struct tm tm;
  localtime_r(&t, &tm);
  tm.tm_sec = 0;
  tm.tm_isdst = -1;
  if (s->kind == TB_SCHED_HOURLY) {
    tm.tm_min = 0;
    tm.tm_hour++;
    return (int64_t)mktime(&tm) * 1000;
  }
  tm.tm_hour = s->hour;
  tm.tm_min = s->minute;
  if (s->kind == TB_SCHED_WEEKLY)
    tm.tm_mday += (s->wday - tm.tm_wday + 7) % 7;
  /* Step forward a day (or a week) until strictly after; at most 2 steps, but
   * a daylight-saving change can make mktime land a little off. */
  for (int i = 0; i < 16; i++) {
    struct tm try = tm;
    time_t due = mktime(&try);
    if ((int64_t)due * 1000 > after_ms)
      return (int64_t)due * 1000;
    tm.tm_mday += s->kind == TB_SCHED_WEEKLY ? 7 : 1;
  }
  return after_ms + 24 * 3600 * 1000; /* unreachable in practice */
}
