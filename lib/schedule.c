/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: refresh schedules (see schedule.h).
 *
 * Calendar forms are computed with mktime() on a broken-down local time, so
 * month lengths, leap years and time zones are the C library's business; a
 * daylight-saving change is ours (at_local): a due time in the repeated hour
 * fires once, at its first occurrence, one in the skipped hour fires in the
 * hour after, and "hourly" fires every hour of real time (25 on the day the
 * clocks go back, 23 on the day they go forward; tests/unit-pure checks it
 * for Europe/Berlin).  "every" is a plain interval from the previous due
 * time.
 *
 * The mark file (tb_schedule_save) is {"schedule": TEXT, "last_ms": N,
 * "next_ms": N, "last": ISO, "next": ISO}; the ISO times are for people, the
 * milliseconds are what is read back.  A file that does not parse is treated
 * as absent and replaced: a schedule then counts from now, the safe side; so
 * is one whose times are implausible (due past two turns from now, or last
 * run in the future), with a warning naming the file.
 */
#include <config.h>

#include <ctype.h>
#include <stdbool.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <jansson.h>

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

/* H:MI local time on the day Y-MON-MDAY (struct tm fields; MDAY may run past
 * the month: mktime carries it over).  A time that happens twice (the hour
 * a daylight-saving change repeats) is its first occurrence; a time that
 * does not happen (the hour skipped) is the wall-clock time it would have
 * been, in the hour after.  mktime with tm_isdst -1 would choose between the
 * two by glibc's last guess, so a schedule could fire twice in a night. */
static time_t at_local(int year, int mon, int mday, int hour, int minute)
{
  time_t best = (time_t)-1, skipped = (time_t)-1;
  for (int dst = 0; dst <= 1; dst++) {
    struct tm tm = {.tm_year = year,
                    .tm_mon = mon,
                    .tm_mday = mday,
                    .tm_hour = hour,
                    .tm_min = minute,
                    .tm_isdst = dst};
    time_t t = mktime(&tm);
    struct tm back;
    if (t == (time_t)-1 || !localtime_r(&t, &back))
      continue;
    if (back.tm_hour == hour && back.tm_min == minute && back.tm_isdst == dst) {
      if (best == (time_t)-1 || t < best)
        best = t;
    } else if (skipped == (time_t)-1 || t > skipped)
      skipped = t;
  }
  return best != (time_t)-1 ? best : skipped;
}

int64_t tb_schedule_next(const struct tb_schedule *s, int64_t after_ms)
{
  if (s->kind == TB_SCHED_EVERY)
    return after_ms + s->every_ms;
  time_t t = (time_t)(after_ms / 1000);
  struct tm tm;
  if (s->kind == TB_SCHED_HOURLY) {
    /* Minute 0 of the next hour of real time: each of the 25 hours of the
     * day a daylight-saving change repeats one, every hour of any offset. */
    for (time_t m = (t / 60 + 1) * 60; m <= t + 2 * 3600; m += 60)
      if (localtime_r(&m, &tm) && tm.tm_min == 0)
        return (int64_t)m * 1000;
    return ((int64_t)t / 3600 + 1) * 3600 * 1000; /* unreachable in practice */
  }
  localtime_r(&t, &tm);
  int mday = tm.tm_mday, step = s->kind == TB_SCHED_WEEKLY ? 7 : 1;
  if (s->kind == TB_SCHED_WEEKLY)
    mday += (s->wday - tm.tm_wday + 7) % 7;
  /* The first day whose due time is strictly after: at most two steps. */
  for (int i = 0; i < 4; i++, mday += step) {
    time_t due = at_local(tm.tm_year, tm.tm_mon, mday, s->hour, s->minute);
    if (due != (time_t)-1 && (int64_t)due * 1000 > after_ms)
      return (int64_t)due * 1000;
  }
  return after_ms + (int64_t)step * 24 * 3600 * 1000; /* unreachable in practice */
}

/* ---- the mark file ------------------------------------------------------------------ */

int tb_schedule_save(const char *file, const char *text, const struct tb_schedule_mark *m)
{
  char dir[TB_PATH_MAX], last[32] = "", next[32];
  if (tb_path(dir, sizeof dir, "%s", file) == -1)
    return -1;
  char *slash = strrchr(dir, '/');
  if (slash && slash != dir) {
    *slash = '\0';
    if (tb_mkdirs(dir, false) == -1)
      return -1;
  }
  if (m->last_ms > 0)
    tb_iso_time(m->last_ms, last);
  tb_iso_time(m->next_ms, next);
  json_t *j =
      json_pack("{s:s, s:I, s:I, s:s, s:s}", "schedule", text, "last_ms", (json_int_t)m->last_ms,
                "next_ms", (json_int_t)m->next_ms, "last", last, "next", next);
  char *body = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
  json_decref(j);
  if (!body)
    return tb_error("schedule %s: out of memory", file);
  int r = tb_write_file_atomic(file, body, strlen(body), 0644);
  free(body);
  return r;
}

/* Read FILE into *M and its schedule text into TEXT; -1 if absent or not ours. */
static int load_mark(const char *file, char *text, size_t len, struct tb_schedule_mark *m)
{
  char *body = tb_read_file(file, 64 * 1024, NULL);
  if (!body)
    return -1;
  json_t *j = json_loads(body, 0, NULL);
  free(body);
  const json_t *t = json_object_get(j, "schedule"), *l = json_object_get(j, "last_ms"),
               *n = json_object_get(j, "next_ms");
  int r = -1;
  if (json_is_string(t) && json_is_integer(l) && json_is_integer(n) && json_integer_value(l) >= 0 &&
      json_integer_value(n) > 0) {
    snprintf(text, len, "%s", json_string_value(t));
    m->last_ms = json_integer_value(l);
    m->next_ms = json_integer_value(n);
    r = 0;
  }
  json_decref(j);
  return r;
}

int tb_schedule_resume(const struct tb_schedule *s, const char *text, const char *file,
                       int64_t now_ms, int64_t jitter_ms, struct tb_schedule_mark *m)
{
  char was[256];
  struct tb_schedule_mark old;
  bool have = load_mark(file, was, sizeof was, &old) == 0;
  /* Read back with a plausibility check: a due time past two turns from now
   * (a year 3000 in a torn or edited file) would never fire, and a last run in
   * the future would hold every turn back.  Such a mark counts from now. */
  int64_t slack = jitter_ms > 0 ? jitter_ms : 0;
  if (have && (old.next_ms > tb_schedule_next(s, tb_schedule_next(s, now_ms)) + slack ||
               old.last_ms > now_ms + 60000)) {
    fprintf(stderr,
            "tabula: warning: %s: schedule mark is implausible (next %lld ms, last %lld ms, now "
            "%lld ms); the schedule counts from now\n",
            file, (long long)old.next_ms, (long long)old.last_ms, (long long)now_ms);
    have = false;
  }
  if (have && strcmp(was, text) == 0) {
    *m = old;
    return 0;
  }
  bool known = have && old.last_ms > 0;
  m->last_ms = known ? old.last_ms : 0;
  m->next_ms = tb_schedule_next(s, known ? old.last_ms : now_ms) + jitter_ms;
  return tb_schedule_save(file, text, m);
}
