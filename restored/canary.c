/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-restored: canary versions (`tabulactl image promote IMAGE@N
 * --canary GROUP`).
 *
 * How it works.  The clients of IMAGE outside GROUP that follow the newest
 * version are pinned (mailbox) to the previous version P, GROUP's clients to
 * N.  The state lives in STATE/watchdog/canary-IMAGE.json.  Each session end
 * the scan thread judged (scan.c, health.c) is counted here (canary_count):
 * healthy sessions on N in GROUP count up to promote_after, then N becomes
 * current for everyone (the pins the canary set are lifted, or set to N if N
 * is not the newest); strikes on N count up to withdraw_after, then GROUP is
 * pinned back to P (persist clients also refreshed: their overlays were
 * built on the failing version).  The record keeps the last session it
 * counted of each client ("counted"), so a session end the daemon's start
 * judges again after a cut counts once, and one whose health.json (its
 * judgement) reached the disk before the cut and whose count did not is
 * counted then.  image-promote, the control operation that
 * starts and ends canaries, is here too (canary_ops).
 *
 * What it promises.  canary_lock serialises every read-modify-write of a
 * canary record (the scan thread's counts, the main loop's promote); the
 * records are written atomically and at the daemon's start (canary_check)
 * one that fails a plausibility check is moved aside with a warning naming
 * it, its pins left until an administrator promotes a version.
 */
#include <config.h>

#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "events.h"
#include "mailbox.h"
#include "store.h"
#include "watchdog-conf.h"

static pthread_mutex_t canary_lock = PTHREAD_MUTEX_INITIALIZER; /* canary files */

/* ---- canary ------------------------------------------------------------------------------------
 */

static int canary_path(const char *state, const char *image, char *buf, size_t len)
{
  if (!tb_name_valid(image))
    return tb_error("invalid image name \"%.80s\"", image);
  return tb_path(buf, len, "%s/watchdog/canary-%s.json", state, image);
}

/* The image a client runs next (mailbox override or configured). */
/* Does C follow the versions of IMAGE (its image, or the one its mailbox
 * reimaged it to, and no configured version)?  Promotions move only these. */
static bool follows_image(const char *state, const struct tb_client_conf *c, const char *image)
{
  struct tb_mailbox mb;
  if (c->version)
    return false;
  if (tb_mailbox_read(state, c->id, &mb) == -1)
    memset(&mb, 0, sizeof mb);
  return strcmp(mb.image[0] ? mb.image : c->image, image) == 0;
}

/* N becomes current for every client of IMAGE without a configured version:
 * its mailbox pin is lifted if N is the newest version, else set to N.  With
 * a canary (PREVIOUS set), only the pins the canary set are touched. */
static json_t *make_current(const struct tb_config *cfg, const char *image, uint32_t n,
                            uint32_t previous)
{
  const char *state = cfg->state_dir;
  bool newest = tb_store_latest(state, image) == n;
  json_t *moved = json_array();
  for (size_t i = 0; i < cfg->n_clients; i++) {
    const struct tb_client_conf *c = &cfg->clients[i];
    if (!follows_image(state, c, image))
      continue;
    struct tb_mailbox mb;
    if (tb_mailbox_read(state, c->id, &mb) == -1)
      continue;
    if (mb.pin && previous && mb.pin != previous && mb.pin != n)
      continue; /* an administrator's pin */
    struct tb_mailbox_change ch = {
        .set_pin = true, .pin = newest ? 0 : n, .if_pin = true, .pin_was = mb.pin};
    if ((newest ? mb.pin != 0 : mb.pin != n) && tb_mailbox_change(state, c->id, &ch, NULL) == 0)
      json_array_append_new(moved, json_string(c->id));
  }
  return moved;
}

static bool in_group(const struct tb_client_conf *c, const char *group)
{
  return c->group[0] && strcmp(c->group, group) == 0;
}

static void canary_withdraw(const struct tb_config *cfg, json_t *canary)
{
  const char *state = cfg->state_dir;
  const char *image = json_string_value(json_object_get(canary, "image"));
  const char *group = json_string_value(json_object_get(canary, "group"));
  uint32_t n = (uint32_t)json_integer_value(json_object_get(canary, "version"));
  uint32_t previous = (uint32_t)json_integer_value(json_object_get(canary, "previous"));
  json_t *moved = json_array();
  for (size_t i = 0; i < cfg->n_clients; i++) {
    const struct tb_client_conf *c = &cfg->clients[i];
    if (!in_group(c, group))
      continue;
    struct tb_mailbox_change ch = {.set_pin = true, .pin = previous, .if_pin = true, .pin_was = n};
    ch.refresh = c->policy == TB_POLICY_PERSIST;
    if (tb_mailbox_change(state, c->id, &ch, NULL) == 0)
      json_array_append_new(moved, json_string(c->id));
  }
  json_object_set_new(canary, "state", json_string("withdrawn"));
  tb_eventf(state, "canary-withdrawn", NULL, "{s:s, s:I, s:I, s:s, s:o, s:I}", "image", image,
            "version", (json_int_t)n, "previous", (json_int_t)previous, "group", group, "clients",
            moved, "strikes", json_integer_value(json_object_get(canary, "strikes")));
}

/* Returns the clients moved (a new reference). */
static json_t *canary_promote(const struct tb_config *cfg, json_t *canary, const char *how)
{
  const char *image = json_string_value(json_object_get(canary, "image"));
  uint32_t n = (uint32_t)json_integer_value(json_object_get(canary, "version"));
  uint32_t previous = (uint32_t)json_integer_value(json_object_get(canary, "previous"));
  json_t *moved = make_current(cfg, image, n, previous);
  json_object_set_new(canary, "state", json_string("promoted"));
  tb_eventf(cfg->state_dir, "canary-promoted", NULL, "{s:s, s:I, s:s, s:O, s:I, s:s}", "image",
            image, "version", (json_int_t)n, "group",
            json_string_value(json_object_get(canary, "group")), "clients", moved, "healthy",
            json_integer_value(json_object_get(canary, "healthy")), "by", how);
  return moved;
}

/* Count a finished session of a group client on a running canary version. */
void canary_count(const struct scan_request *rq, const struct tb_client_conf *c,
                  const struct tb_watchdog_conf *w, const char *image, uint32_t version,
                  bool healthy)
{
  const char *state = rq->cfg->state_dir;
  char path[TB_PATH_MAX];
  if (!image[0] || canary_path(state, image, path, sizeof path) == -1)
    return;
  pthread_mutex_lock(&canary_lock);
  json_t *canary = state_load_json(path);
  const char *st = json_string_value(json_object_get(canary, "state"));
  const char *group = json_string_value(json_object_get(canary, "group"));
  json_t *counted = json_object_get(canary, "counted");
  if (canary && st && strcmp(st, "running") == 0 && group && in_group(c, group) &&
      json_integer_value(json_object_get(canary, "version")) == version &&
      json_integer_value(json_object_get(counted, c->id)) < (json_int_t)rq->session) {
    if (!json_is_object(counted))
      json_object_set_new(canary, "counted", counted = json_object());
    json_object_set_new(counted, c->id, json_integer((json_int_t)rq->session));
    const char *key = healthy ? "healthy" : "strikes";
    json_int_t count = json_integer_value(json_object_get(canary, key)) + 1;
    json_int_t of = healthy ? w->canary_promote_after : w->canary_withdraw_after;
    json_object_set_new(canary, key, json_integer(count));
    tb_eventf(state, healthy ? "canary-healthy" : "canary-strike", c->id,
              "{s:s, s:I, s:I, s:s, s:I, s:I}", "image", image, "version", (json_int_t)version,
              "session", (json_int_t)rq->session, "group", group, "count", count, "of", of);
    if (count >= of) {
      if (healthy)
        json_decref(canary_promote(rq->cfg, canary, "healthy sessions"));
      else
        canary_withdraw(rq->cfg, canary);
    }
    if (state_save_json(path, canary) == -1)
      log_msg("watchdog: %s", tb_errmsg());
  }
  json_decref(canary);
  pthread_mutex_unlock(&canary_lock);
}

/* At the daemon's start: every STATE/watchdog/canary-IMAGE.json read back
 * with a plausibility check (its image, a version above its previous one, a
 * group, a state).  One that fails it is moved aside to
 * canary-IMAGE.json.bad, with a warning and a state-recovered event naming
 * it: the pins it set stay until an administrator promotes a version. */
void canary_check(const char *state, const char *dir)
{
  DIR *d = opendir(dir);
  struct dirent *e;
  while (d && (e = readdir(d))) {
    size_t len = strlen(e->d_name);
    char image[TB_NAME_MAX + 1], path[TB_PATH_MAX], bad[TB_PATH_MAX];
    if (strncmp(e->d_name, "canary-", 7) != 0 || len < 13 ||
        strcmp(e->d_name + len - 5, ".json") != 0 || len - 12 > TB_NAME_MAX)
      continue;
    snprintf(image, sizeof image, "%.*s", (int)(len - 12), e->d_name + 7);
    if (tb_path(path, sizeof path, "%s/%s", dir, e->d_name) == -1)
      continue;
    json_t *v = state_load_json(path);
    const char *im = json_string_value(json_object_get(v, "image"));
    const char *group = json_string_value(json_object_get(v, "group"));
    const char *st = json_string_value(json_object_get(v, "state"));
    json_int_t n = json_integer_value(json_object_get(v, "version"));
    json_int_t prev = json_integer_value(json_object_get(v, "previous"));
    bool ok = im && strcmp(im, image) == 0 && group && tb_name_valid(group) && st &&
              (strcmp(st, "running") == 0 || strcmp(st, "promoted") == 0 ||
               strcmp(st, "withdrawn") == 0) &&
              prev >= 1 && n > prev && n <= UINT32_MAX &&
              json_integer_value(json_object_get(v, "healthy")) >= 0 &&
              json_integer_value(json_object_get(v, "strikes")) >= 0;
    json_decref(v);
    if (ok || tb_path(bad, sizeof bad, "%s.bad", path) == -1 || rename(path, bad) == -1)
      continue;
    tb_fsync_dir(bad);
    log_msg("warning: %s: not a canary record (damaged); moved aside to %s. The pins it set stay: "
            "promote a version of %s (tabulactl image promote %s@N) to move its clients",
            path, bad, image, image);
    tb_eventf(state, "state-recovered", NULL, "{s:s, s:s, s:s}", "file", path, "problem",
              "not a canary record", "moved_to", bad);
  }
  if (d)
    closedir(d);
}

/* ---- image-promote (main thread) ---- */

/* Highest published version of IMAGE below N, 0 if none. */
static uint32_t version_before(const char *state, const char *image, uint32_t n)
{
  uint32_t *vers, prev = 0;
  size_t nv;
  if (tb_store_versions(state, image, &vers, &nv) == -1)
    return 0;
  for (size_t i = 0; i < nv; i++)
    if (vers[i] < n && vers[i] > prev)
      prev = vers[i];
  free(vers);
  return prev;
}

/* PREVIOUS: the version the other clients stay on (0: the one before N). */
static json_t *start_canary(struct daemon *d, const char *image, uint32_t n, const char *group,
                            uint32_t previous)
{
  const char *state = d->cfg->state_dir;
  if (!previous || previous >= n)
    previous = version_before(state, image, n);
  if (!previous)
    return reply_error("%s@%u has no earlier version to keep the other clients on; promote it "
                       "without --canary",
                       image, n);
  size_t members = 0;
  for (size_t i = 0; i < d->cfg->n_clients; i++)
    members += in_group(&d->cfg->clients[i], group);
  if (!members)
    return reply_error("no client is in group \"%s\" (see \"groups\" in %s)", group,
                       d->config_file);
  json_t *held = json_array(), *canaries = json_array();
  for (size_t i = 0; i < d->cfg->n_clients; i++) {
    const struct tb_client_conf *c = &d->cfg->clients[i];
    if (!follows_image(state, c, image))
      continue;
    struct tb_mailbox mb;
    if (tb_mailbox_read(state, c->id, &mb) == -1)
      return reply_error("%s", tb_errmsg());
    if (in_group(c, group)) {
      if (TB_MAILBOX_CHANGE(state, c->id, .set_pin = true, .pin = n) == 0)
        json_array_append_new(canaries, json_string(c->id));
    } else if (!mb.pin || mb.pin == n || mb.pin == previous) {
      if (TB_MAILBOX_CHANGE(state, c->id, .set_pin = true, .pin = previous) == 0)
        json_array_append_new(held, json_string(c->id));
    }
  }
  char when[32];
  tb_iso_time(tb_now_ms(), when);
  json_t *canary = json_pack("{s:s, s:I, s:I, s:s, s:s, s:I, s:I, s:s, s:O, s:O}", "image", image,
                             "version", (json_int_t)n, "previous", (json_int_t)previous, "group",
                             group, "state", "running", "healthy", (json_int_t)0, "strikes",
                             (json_int_t)0, "started", when, "clients", canaries, "held", held);
  char path[TB_PATH_MAX], dir[TB_PATH_MAX];
  int r = tb_path(dir, sizeof dir, "%s/watchdog", state) == -1 || tb_mkdirs(dir, false) == -1 ||
                  canary_path(state, image, path, sizeof path) == -1
              ? -1
              : state_save_json(path, canary);
  json_decref(canary);
  if (r == -1) {
    json_decref(held);
    json_decref(canaries);
    return reply_error("%s", tb_errmsg());
  }
  tb_eventf(state, "canary-start", NULL, "{s:s, s:I, s:I, s:s, s:O, s:O}", "image", image,
            "version", (json_int_t)n, "previous", (json_int_t)previous, "group", group, "clients",
            canaries, "held", held);
  char msg[512];
  snprintf(msg, sizeof msg,
           "%s@%u is served to group %s (%zu clients) from their next clean start; %zu other "
           "clients stay on %s@%u until it is promoted",
           image, n, group, json_array_size(canaries), json_array_size(held), image, previous);
  return reply_ok(json_pack("{s:s, s:I, s:I, s:s, s:o, s:o, s:s}", "image", image, "version",
                            (json_int_t)n, "previous", (json_int_t)previous, "group", group,
                            "clients", canaries, "held", held, "message", msg));
}

static json_t *op_promote(struct daemon *d, json_t *req)
{
  static const char *const keys[] = {"image", "version", "canary", NULL};
  json_t *err = req_check_keys(req, "image-promote", keys);
  if (err)
    return err;
  const char *image = req_str(req, "image"), *group = req_str(req, "canary");
  json_t *v = json_object_get(req, "version");
  if (!image || !tb_name_valid(image))
    return reply_error("image-promote: argument \"image\" must be an image name");
  if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > UINT32_MAX)
    return reply_error("image-promote: argument \"version\" must be a version number");
  if (group && !tb_name_valid(group))
    return reply_error("invalid group name \"%.80s\"", group);
  uint32_t n = (uint32_t)json_integer_value(v);
  const char *state = d->cfg->state_dir;
  struct tb_manifest *m = tb_manifest_load(state, image, n);
  if (!m)
    return reply_error("image %s has no version %u (see tabulactl image list)", image, n);
  tb_manifest_free(m);
  char path[TB_PATH_MAX];
  if (canary_path(state, image, path, sizeof path) == -1)
    return reply_error("%s", tb_errmsg());
  pthread_mutex_lock(&canary_lock);
  json_t *canary = state_load_json(path), *reply;
  const char *st = json_string_value(json_object_get(canary, "state"));
  bool running = st && strcmp(st, "running") == 0;
  /* After a withdrawn canary the others still run its previous version. */
  bool withdrawn = st && strcmp(st, "withdrawn") == 0;
  uint32_t withdrawn_previous = (uint32_t)json_integer_value(json_object_get(canary, "previous"));
  if (group) {
    reply = running ? reply_error("a canary of %s@%lld is running in group %s: promote or wait "
                                  "for it first",
                                  image,
                                  (long long)json_integer_value(json_object_get(canary, "version")),
                                  json_string_value(json_object_get(canary, "group")))
                    : start_canary(d, image, n, group, withdrawn ? withdrawn_previous : 0);
  } else {
    bool this_canary = running && json_integer_value(json_object_get(canary, "version")) == n;
    uint32_t previous =
        running ? (uint32_t)json_integer_value(json_object_get(canary, "previous")) : 0;
    json_t *moved;
    if (this_canary) {
      moved = canary_promote(d->cfg, canary, "admin");
    } else {
      if (running)
        json_object_set_new(canary, "state", json_string("replaced"));
      moved = make_current(d->cfg, image, n, previous);
      tb_eventf(state, "image-promoted", NULL, "{s:s, s:I, s:O}", "image", image, "version",
                (json_int_t)n, "clients", moved);
    }
    if (running && state_save_json(path, canary) == -1)
      log_msg("watchdog: %s", tb_errmsg());
    char msg[256];
    snprintf(msg, sizeof msg, "%s@%u is current for every client of %s that follows it", image, n,
             image);
    reply = reply_ok(json_pack("{s:s, s:I, s:o, s:s}", "image", image, "version", (json_int_t)n,
                               "clients", moved, "message", msg));
  }
  json_decref(canary);
  pthread_mutex_unlock(&canary_lock);
  return reply;
}

/* The operation of canaries (ops.c dispatches through this table). */
static json_t *run_promote(struct daemon *d, struct op_call *call)
{
  return op_promote(d, call->req);
}

const struct daemon_op canary_ops[] = {
    {"image-promote", run_promote},
    {NULL, NULL},
};
