/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-restored: scheduled pulls -- the config's "pull" sources that have a
 * "when" schedule (lib/repo.h does the pulling).
 *
 * The main loop only compares due times; a due source runs on a thread of its
 * own, since a pull is network-bound and may take minutes, and a source never
 * runs twice at once.  The thread holds a reference to the configuration it
 * started with, so a reload during a pull is harmless.
 *
 * Versions and clients: a client that follows the newest version of its image
 * (its configured image, or the one its mailbox reimaged it to, and no
 * configured version or pin) would boot a pulled version at its next session.  That is what
 * "make_current": true asks for.  Without it, before a source runs, every
 * client of its images that follows the newest version is pinned (mailbox) to
 * the version it runs now, so a pulled version waits until an administrator
 * moves clients to it (tabulactl pin / unpin / reimage).
 *
 * Each source's place in its schedule is kept in STATE/schedules/pull-I.json
 * (lib/schedule.h), so a restart of the daemon neither pulls every source
 * again nor forgets a pull that came due while it was down.  A turn is saved
 * when its pull is done, so a pull a kill interrupted runs at the next start.
 */
#include <config.h>

#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "clientcheck.h"
#include "daemon.h"
#include "events.h"
#include "mailbox.h"
#include "repo.h"
#include "schedule.h"
#include "store.h"

struct pull_sched {
  bool has;
  struct tb_schedule sched;
  int64_t next_ms;
  bool running; /* protected by lock */
};

/* The mark file of source I and the text it is kept for: its schedule and
 * where it pulls from, so a source that moved counts from its last pull. */
static int mark_of(const struct tb_config *cfg, size_t i, char *file, size_t flen, char *text,
                   size_t tlen)
{
  const json_t *src = json_is_array(cfg->pull) ? json_array_get(cfg->pull, i) : cfg->pull;
  const char *from = json_string_value(json_object_get(src, "from"));
  snprintf(text, tlen, "%s from %s", tb_repo_pull_source_when(cfg->pull, i),
           from ? from : "(none)");
  return tb_path(file, flen, "%s/schedules/pull-%zu.json", cfg->state_dir, i);
}

static void save_mark(const struct tb_config *cfg, size_t i, int64_t last_ms, int64_t next_ms)
{
  char file[TB_PATH_MAX], text[1024];
  struct tb_schedule_mark m = {last_ms, next_ms};
  if (mark_of(cfg, i, file, sizeof file, text, sizeof text) == -1 ||
      tb_schedule_save(file, text, &m) == -1)
    log_msg("scheduled pull (source %zu): %s", i, tb_errmsg());
}

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct pull_sched *scheds;
static size_t n_scheds;
static const struct tb_config *built_for; /* the configuration scheds were built from */

/* (Re)build the schedules when the configuration changed (start, reload). */
static void rebuild(const struct tb_config *cfg, int64_t now)
{
  size_t n = cfg->pull ? tb_repo_pull_sources(cfg->pull) : 0;
  struct pull_sched *s = calloc(n ? n : 1, sizeof *s);
  if (!s)
    return;
  pthread_mutex_lock(&lock);
  for (size_t i = 0; i < n; i++) {
    const char *when = tb_repo_pull_source_when(cfg->pull, i);
    if (!when || tb_schedule_parse(when, &s[i].sched) == -1)
      continue; /* manual only (the parser validated "when" at load) */
    s[i].has = true;
    char file[TB_PATH_MAX], text[1024];
    struct tb_schedule_mark m = {0, tb_schedule_next(&s[i].sched, now)};
    if (mark_of(cfg, i, file, sizeof file, text, sizeof text) == -1 ||
        tb_schedule_resume(&s[i].sched, text, file, now, 0, &m) == -1)
      log_msg("scheduled pull (source %zu): %s; it counts from now", i, tb_errmsg());
    s[i].next_ms = m.next_ms;
    s[i].running = i < n_scheds && scheds[i].running;
  }
  free(scheds);
  scheds = s;
  n_scheds = n;
  built_for = cfg;
  pthread_mutex_unlock(&lock);
}

static bool source_has_image(const json_t *pull, size_t i, const char *image)
{
  const json_t *src = json_is_array(pull) ? json_array_get(pull, i) : pull;
  const json_t *images = json_object_get(src, "images");
  if (!json_is_array(images))
    return true; /* no list: every image */
  size_t k;
  const json_t *v;
  json_array_foreach(images, k, v) if (json_is_string(v) &&
                                       strcmp(json_string_value(v), image) == 0) return true;
  return false;
}

/* Keep the clients of source I on the versions they run now: every client
 * that follows the newest version of an image the source pulls, whether the
 * image is its configured one or the one its mailbox reimaged it to (as the
 * watchdog's promotions count them). */
static void hold_clients(const struct tb_config *cfg, size_t i)
{
  for (size_t k = 0; k < cfg->n_clients; k++) {
    const struct tb_client_conf *c = &cfg->clients[k];
    struct tb_mailbox mb;
    if (c->version || tb_mailbox_read(cfg->state_dir, c->id, &mb) == -1 || mb.pin)
      continue;
    const char *image = mb.image[0] ? mb.image : c->image;
    if (!source_has_image(cfg->pull, i, image))
      continue;
    /* The hold: pin to the newest if the mailbox still has no pin and still
     * names the image it named when read. */
    uint32_t newest = tb_store_latest(cfg->state_dir, image);
    struct tb_mailbox_change hold = {
        .set_pin = true, .pin = newest, .if_pin = true, .pin_was = 0, .if_image = mb.image};
    if (newest && tb_mailbox_change(cfg->state_dir, c->id, &hold, NULL) == 0)
      tb_eventf(cfg->state_dir, "pin", c->id, "{s:s, s:I, s:s}", "image", image, "version",
                (json_int_t)newest, "reason", "scheduled pull without make_current");
  }
}

/* After a pull: each client that follows an image of source I checked
 * against the version its next session gets (a pulled version whose
 * partition table lacks a client's preserved or protected partition): one
 * that cannot be served is a warning and a client-unservable event naming
 * the rule, the version and the way back. */
static void check_clients(const struct tb_config *cfg, size_t i)
{
  json_t *memo = json_object();
  for (size_t k = 0; k < cfg->n_clients; k++) {
    const struct tb_client_conf *c = &cfg->clients[k];
    if (c->version || !source_has_image(cfg->pull, i, c->image) ||
        tb_client_check_memo(cfg, c, memo) == 0)
      continue;
    char why[1024];
    uint32_t newest = tb_store_latest(cfg->state_dir, c->image);
    snprintf(why, sizeof why, "%s", tb_errmsg());
    log_msg("warning: after the scheduled pull, client %s is refused: %s (to go back: tabulactl "
            "image promote %s@%" PRIu32 ")",
            c->id, why, c->image, newest > 1 ? newest - 1 : 1);
    tb_eventf(cfg->state_dir, "client-unservable", c->id, "{s:s, s:s}", "error", why, "after",
              "scheduled pull");
  }
  json_decref(memo);
}

struct run {
  struct tb_config *cfg;
  size_t index;
  int64_t started_ms, next_ms; /* the turn, for its mark */
};

static void *run_source(void *arg)
{
  struct run *r = arg;
  if (!tb_repo_pull_source_make_current(r->cfg->pull, r->index))
    hold_clients(r->cfg, r->index);
  int failed = tb_repo_pull_source_run(r->cfg, r->index, NULL, NULL);
  if (failed != 0)
    log_msg("scheduled pull (source %zu): %s", r->index,
            failed < 0 ? tb_errmsg() : "some images failed (see the events)");
  check_clients(r->cfg, r->index);
  tb_eventf(r->cfg->state_dir, "pull-scheduled-done", NULL, "{s:I, s:i}", "source",
            (json_int_t)r->index, "failed", failed);
  /* The turn is marked done only now: a pull cut by a daemon kill is due
   * again at the next start, not a whole period later. */
  save_mark(r->cfg, r->index, r->started_ms, r->next_ms);
  pthread_mutex_lock(&lock);
  if (r->index < n_scheds)
    scheds[r->index].running = false;
  pthread_mutex_unlock(&lock);
  tb_config_unref(r->cfg);
  free(r);
  return NULL;
}

static void pulls_tick(struct daemon *d, int64_t mono)
{
  (void)mono; /* calendar schedules: the wall clock (persisted in the marks) */
  int64_t now = tb_now_ms();
  if (built_for != d->cfg)
    rebuild(d->cfg, now);
  pthread_mutex_lock(&lock);
  for (size_t i = 0; i < n_scheds; i++) {
    struct pull_sched *s = &scheds[i];
    if (!s->has || now < s->next_ms)
      continue;
    s->next_ms = tb_schedule_next(&s->sched, now);
    if (s->running) {
      log_msg("scheduled pull (source %zu) is still running: this turn is skipped", i);
      continue;
    }
    struct run *r = malloc(sizeof *r);
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (r) {
      r->cfg = tb_config_ref(d->cfg);
      r->index = i;
      r->started_ms = now;
      r->next_ms = s->next_ms;
      tb_eventf(d->cfg->state_dir, "pull-scheduled", NULL, "{s:I}", "source", (json_int_t)i);
      if (pthread_create(&t, &attr, run_source, r) == 0) {
        s->running = true;
      } else {
        log_msg("scheduled pull (source %zu): cannot start a thread", i);
        tb_config_unref(r->cfg);
        free(r);
      }
    }
    pthread_attr_destroy(&attr);
  }
  pthread_mutex_unlock(&lock);
}

static int64_t pulls_next(const struct daemon *d)
{
  int64_t next = INT64_MAX;
  pthread_mutex_lock(&lock);
  for (size_t i = 0; i < n_scheds; i++)
    if (scheds[i].has && scheds[i].next_ms < next)
      next = scheds[i].next_ms;
  pthread_mutex_unlock(&lock);
  return tb_mono_at_wall(next); /* the loop sleeps on the monotonic clock */
}

const struct daemon_timer pulls_timer = {"pulls", pulls_tick, pulls_next};
