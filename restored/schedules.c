/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-restored: the refresh and merge schedules of the clients.
 *
 * A client's "refresh" schedule (lib/schedule.h: hourly, daily, weekly,
 * every) sets its mailbox's refresh flag when due (plus up to
 * refresh_jitter of random delay, so a room does not refresh at once); its
 * "merge" schedule queues a merge of its overlay into merge.into (jobs.c)
 * once it is between sessions.  Where each stands is kept in
 * clients/ID/schedule.json and merge-schedule.json, saved after the mailbox
 * or once the merge is done (its job saves it): a restart or a power cut
 * loses neither; a refresh whose mark a cut took fires again and finds the
 * refresh still pending in the mailbox, a merge whose mark a cut took runs
 * again (and, done already, finds nothing to merge).
 */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clientdir.h"
#include "daemon.h"
#include "events.h"
#include "mailbox.h"
#include "overlay.h"
#include "session.h"
#include "store.h"

static int64_t jitter(int64_t max_ms)
{
  return max_ms > 0 ? (int64_t)(random() % (max_ms + 1)) : 0;
}

int schedules_build(const struct tb_config *cfg, struct client_sched **out, size_t *n)
{
  struct client_sched *s = calloc(cfg->n_clients ? cfg->n_clients : 1, sizeof *s);
  if (!s)
    return tb_error_errno("schedules");
  int64_t now = tb_now_ms();
  for (size_t i = 0; i < cfg->n_clients; i++) {
    const struct tb_client_conf *c = &cfg->clients[i];
    snprintf(s[i].id, sizeof s[i].id, "%s", c->id);
    if (c->merge_when) {
      if (tb_schedule_parse(c->merge_when, &s[i].merge_sched) == -1) {
        tb_error_prefix("clients.%s.merge.when", c->id);
        free(s);
        return -1;
      }
      s[i].merge_has = true;
      s[i].merge_next_ms = tb_schedule_next(&s[i].merge_sched, now);
    }
    if (!c->refresh)
      continue;
    if (tb_schedule_parse(c->refresh, &s[i].sched) == -1) {
      tb_error_prefix("clients.%s.refresh", c->id);
      free(s);
      return -1;
    }
    s[i].has = true;
    s[i].next_ms = tb_schedule_next(&s[i].sched, now) + jitter(c->refresh_jitter_ms);
  }
  *out = s;
  *n = cfg->n_clients;
  return 0;
}

/* Where each schedule stands after a start or a reload: from the client's
 * clients/ID/schedule.json (lib/schedule.h), so a restart neither fires every
 * refresh again nor forgets one that came due meanwhile (it fires at once). */
void schedules_resume(const struct tb_config *cfg, struct client_sched *s, size_t n)
{
  int64_t now = tb_now_ms();
  for (size_t i = 0; i < n; i++) {
    const struct tb_client_conf *c = tb_config_client(cfg, s[i].id);
    char file[TB_PATH_MAX];
    if (s[i].merge_has && c &&
        tb_clientdir_path(cfg->state_dir, s[i].id, TB_CF_MERGE_SCHEDULE, file, sizeof file) == 0) {
      struct tb_schedule_mark m;
      if (tb_schedule_resume(&s[i].merge_sched, c->merge_when, file, now, 0, &m) == -1)
        log_msg("merge schedule of %s: %s; it counts from now", s[i].id, tb_errmsg());
      s[i].merge_last_ms = m.last_ms;
      s[i].merge_next_ms = m.next_ms;
    }
    if (!s[i].has || !c ||
        tb_clientdir_path(cfg->state_dir, s[i].id, TB_CF_SCHEDULE, file, sizeof file) == -1)
      continue;
    struct tb_schedule_mark m;
    if (tb_schedule_resume(&s[i].sched, c->refresh, file, now, jitter(c->refresh_jitter_ms), &m) ==
        -1)
      log_msg("refresh schedule of %s: %s; it counts from now", s[i].id, tb_errmsg());
    s[i].last_ms = m.last_ms;
    s[i].next_ms = m.next_ms;
  }
}

const struct client_sched *schedule_for(const struct daemon *d, const char *id)
{
  for (size_t i = 0; i < d->n_sched; i++)
    if (strcmp(d->sched[i].id, id) == 0)
      return d->sched[i].has || d->sched[i].merge_has ? &d->sched[i] : NULL;
  return NULL;
}

static void save_mark(const char *state, const struct client_sched *s, const char *text)
{
  char file[TB_PATH_MAX];
  struct tb_schedule_mark m = {s->last_ms, s->next_ms};
  if (tb_clientdir_path(state, s->id, TB_CF_SCHEDULE, file, sizeof file) == -1 ||
      tb_schedule_save(file, text, &m) == -1)
    log_msg("refresh schedule of %s: %s", s->id, tb_errmsg());
}

static void save_merge_mark(const char *state, const char *id, const char *text,
                            const struct tb_schedule_mark *m)
{
  char file[TB_PATH_MAX];
  if (tb_clientdir_path(state, id, TB_CF_MERGE_SCHEDULE, file, sizeof file) == -1 ||
      tb_schedule_save(file, text, m) == -1)
    log_msg("merge schedule of %s: %s", id, tb_errmsg());
}

/* The job thread, the merge done and the client moved: the turn is saved. */
static void merge_done(const char *state, const struct merge_request *req, const char *image,
                       uint32_t version)
{
  (void)image, (void)version;
  save_merge_mark(state, req->client, req->sched_text, &req->sched_mark);
}

/* A scheduled merge that came due: merge now if the client is between
 * sessions and wrote something since, else wait for its session to end (the
 * tick retries every PENDING_RETRY_MS).  Returns 0 while it waits, 1 when the
 * turn is done (save its mark), 2 when a merge job is queued (it saves the
 * mark once the merge is done: a cut or a kill before that runs it again at
 * the next start, not a whole period later). */
#define PENDING_RETRY_MS 2000
static int scheduled_merge(struct daemon *d, struct client_sched *s, const struct tb_client_conf *c,
                           const struct tb_schedule_mark *mark)
{
  const char *state = d->cfg->state_dir;
  if (tb_client_locked(state, s->id)) {
    if (!s->merge_deferred)
      tb_eventf(state, "merge-deferred", s->id, "{s:s, s:s}", "into", c->merge_into, "reason",
                "the client is in a session: the merge runs when it ends");
    s->merge_deferred = true;
    return 0;
  }
  char overlay[TB_PATH_MAX];
  struct tb_overlay_info info;
  /* Nothing to merge: no overlay (never served) or not a dirty block in it
   * (the merged client starts over with an empty overlay on the new version). */
  bool empty = tb_clientdir_path(state, s->id, TB_CF_OVERLAY, overlay, sizeof overlay) == 0 &&
               (access(overlay, F_OK) == -1 ||
                (tb_overlay_exact_info(state, overlay, &info) == 0 && info.dirty_blocks == 0));
  if (empty) {
    tb_eventf(state, "merge-skipped", s->id, "{s:s, s:s}", "into", c->merge_into, "reason",
              "nothing written since the last merge");
    return 1;
  }
  struct merge_request *r = calloc(1, sizeof *r);
  if (!r)
    return 0;
  r->merged = merge_done;
  r->sched_mark = *mark;
  snprintf(r->sched_text, sizeof r->sched_text, "%s", c->merge_when);
  snprintf(r->client, sizeof r->client, "%s", s->id);
  snprintf(r->into, sizeof r->into, "%s", c->merge_into);
  if (c->merge_note)
    r->note = strdup(c->merge_note);
  else if (asprintf(&r->note, "scheduled merge (%s)", c->merge_when) < 0)
    r->note = NULL;
  if (jobs_submit_merge(d, r) == -1) { /* frees r */
    char err[512];
    snprintf(err, sizeof err, "%s", tb_errmsg());
    tb_eventf(state, "merge-failed", s->id, "{s:s, s:s}", "into", c->merge_into, "error", err);
    return 1;
  }
  return 2;
}

static void merge_tick(struct daemon *d, struct client_sched *s, int64_t now)
{
  const struct tb_client_conf *c = tb_config_client(d->cfg, s->id);
  if (!c || !c->merge_when)
    return;
  if (now >= s->merge_next_ms) {
    char due[32];
    tb_iso_time(s->merge_next_ms, due);
    tb_eventf(d->cfg->state_dir, "merge-scheduled", s->id, "{s:s, s:s, s:s}", "into", c->merge_into,
              "schedule", c->merge_when, "due", due);
    s->merge_pending = true;
    s->merge_next_ms = tb_schedule_next(&s->merge_sched, now);
  }
  struct tb_schedule_mark m = {now, s->merge_next_ms};
  int done = s->merge_pending ? scheduled_merge(d, s, c, &m) : 0;
  if (done) {
    s->merge_pending = false;
    s->merge_deferred = false;
    s->merge_last_ms = now;
    /* Saved once the turn is done: a restart while it waits fires it again. */
    if (done == 1)
      save_merge_mark(d->cfg->state_dir, s->id, c->merge_when, &m);
  }
}

static void schedules_tick(struct daemon *d, int64_t mono)
{
  (void)mono; /* calendar schedules: the wall clock (persisted in schedule.json, shown) */
  int64_t now = tb_now_ms();
  for (size_t i = 0; i < d->n_sched; i++) {
    struct client_sched *s = &d->sched[i];
    if (s->merge_has)
      merge_tick(d, s, now);
    if (!s->has || now < s->next_ms)
      continue;
    const struct tb_client_conf *c = tb_config_client(d->cfg, s->id);
    char due[32];
    tb_iso_time(s->next_ms, due);
    if (TB_MAILBOX_CHANGE(d->cfg->state_dir, s->id, .refresh = true) == -1) {
      log_msg("scheduled refresh of %s: %s", s->id, tb_errmsg());
    } else {
      tb_eventf(d->cfg->state_dir, "refresh-scheduled", s->id, "{s:s, s:s}", "schedule",
                c && c->refresh ? c->refresh : "", "due", due);
      s->last_ms = now;
    }
    s->next_ms = tb_schedule_next(&s->sched, now) + (c ? jitter(c->refresh_jitter_ms) : 0);
    /* After the mailbox: a crash in between fires it again, never loses it. */
    if (c && c->refresh)
      save_mark(d->cfg->state_dir, s, c->refresh);
  }
}

static int64_t schedules_next(const struct daemon *d)
{
  int64_t next = INT64_MAX;
  for (size_t i = 0; i < d->n_sched; i++) {
    const struct client_sched *s = &d->sched[i];
    if (s->has && s->next_ms < next)
      next = s->next_ms;
    if (s->merge_has && s->merge_next_ms < next)
      next = s->merge_next_ms;
  }
  next = tb_mono_at_wall(next); /* the loop sleeps on the monotonic clock */
  int64_t retry = tb_mono_ms() + PENDING_RETRY_MS;
  for (size_t i = 0; i < d->n_sched; i++)
    if (d->sched[i].merge_pending && retry < next)
      next = retry;
  return next;
}

const struct daemon_timer schedules_timer = {"schedules", schedules_tick, schedules_next};
