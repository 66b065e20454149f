/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-restored: the maintenance PC flow (lib/maintenance.h).
 *
 *   maintenance-start  {client, image}          the PC's next boot starts on the
 *                                               newest version of IMAGE, persist
 *   maintenance-finish {client, note, progress} merge its overlay into IMAGE
 *                                               (jobs.c), the new version is the
 *                                               newest: every client following
 *                                               the newest boots it next
 *   maintenance-abort  {client}                 discard (kept as a restore point)
 *   maintenance-list   {}                       the maintenance PCs
 *
 * What a start promises: the PC's work survives its reboots, lands in one
 * new version of the image it maintains, and never on top of a version it
 * did not see (finish is refused when the image moved on since: the merge
 * would silently drop that version's changes).  Everything goes through the
 * existing machinery: the mailbox's refresh moves the PC onto the image and
 * back off it, the merge job builds the version and moves the PC onto it,
 * and the session turn reads the maintenance record for the image and the
 * policy.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clientdir.h"
#include "daemon.h"
#include "events.h"
#include "mailbox.h"
#include "maintenance.h"
#include "overlay.h"
#include "session.h"
#include "store.h"

/* After the merge (job thread, the client's lock held): the PC leaves
 * maintenance.  The merge re-pinned it to the new version (jobs.c repin);
 * it goes back to the image and pin it had, and its next boot starts
 * afresh on its own configuration. */
static void maintenance_merged(const char *state, const struct merge_request *req,
                               const char *image, uint32_t version)
{
  if (TB_MAILBOX_CHANGE(state, req->client, .image = req->maint_image, .set_pin = true,
                        .pin = req->maint_pin, .refresh = true) == -1 ||
      tb_maintenance_clear(state, req->client) == -1) {
    log_msg("client %s: merged into %s@%" PRIu32 " but cannot leave maintenance: %s", req->client,
            image, version, tb_errmsg());
    tb_eventf(state, "error", req->client, "{s:s}", "error", tb_errmsg());
    return;
  }
  tb_eventf(state, "maintenance-finish", req->client, "{s:s, s:I, s:s*}", "image", image, "version",
            (json_int_t)version, "note", req->note);
}

static const struct tb_client_conf *req_client(struct daemon *d, json_t *req, json_t **err)
{
  const char *id = req_str(req, "client");
  const struct tb_client_conf *c = id ? tb_config_client(d->cfg, id) : NULL;
  if (!id)
    *err = reply_error("maintenance: missing argument \"client\"");
  else if (!c)
    *err = reply_error("unknown client \"%.64s\" (not in the configuration)", id);
  return c;
}

static json_t *record_json(const char *id, const struct tb_maintenance *m)
{
  return json_pack("{s:s, s:s, s:I, s:I}", "client", id, "image", m->image, "from_version",
                   (json_int_t)m->from_version, "since", (json_int_t)m->since_ms);
}

static json_t *op_start(struct daemon *d, json_t *req)
{
  const char *state = d->cfg->state_dir;
  json_t *err = NULL;
  const struct tb_client_conf *c = req_client(d, req, &err);
  if (!c)
    return err;
  const char *image = req_str(req, "image");
  if (!image)
    return reply_error("maintenance start: say which image %s maintains (--image IMAGE)", c->id);
  if (!tb_config_has_image(d->cfg, image))
    return reply_error("image \"%.64s\" is not in the configuration's \"images\"", image);
  if (c->refresh || c->merge_when)
    return reply_error("client %s has a %s schedule, which would %s its maintenance work; use a "
                       "client without \"%s\" as the maintenance PC",
                       c->id, c->refresh ? "refresh" : "merge",
                       c->refresh ? "throw away" : "merge elsewhere",
                       c->refresh ? "refresh" : "merge");
  if (c->n_preserve > 0)
    return reply_error("client %s has preserve rules: its preserved ranges would be merged into "
                       "%s; use a client without \"preserve\" as the maintenance PC",
                       c->id, image);
  struct tb_maintenance m;
  int r = tb_maintenance_read(state, c->id, &m);
  if (r == -1)
    return reply_error("%s", tb_errmsg());
  if (r == 1)
    return reply_error("client %s is already the maintenance PC of %s (since %s@%" PRIu32
                       "); finish it (tabulactl maintenance finish %s) or abort it first",
                       c->id, m.image, m.image, m.from_version, c->id);
  for (size_t i = 0; i < d->cfg->n_clients; i++) {
    struct tb_maintenance o;
    const char *other = d->cfg->clients[i].id;
    if (strcmp(other, c->id) != 0 && tb_maintenance_read(state, other, &o) == 1 &&
        strcmp(o.image, image) == 0)
      return reply_error("%s already has a maintenance PC, %s (one at a time: the second merge "
                         "would be refused); finish or abort it first",
                         image, other);
  }
  uint32_t newest = tb_store_latest(state, image);
  if (!newest)
    return reply_error("image %s has no versions yet: import one first (tabulactl image import "
                       "%s FILE)",
                       image, image);
  m = (struct tb_maintenance){.from_version = newest, .since_ms = tb_now_ms()};
  snprintf(m.image, sizeof m.image, "%s", image);
  /* The record first, then the refresh: a refresh without the record would
   * only give the PC a clean ordinary boot. */
  if (tb_maintenance_write(state, c->id, &m) == -1 ||
      TB_MAILBOX_CHANGE(state, c->id, .refresh = true) == -1)
    return reply_error("%s", tb_errmsg());
  tb_eventf(state, "maintenance-start", c->id, "{s:s, s:I}", "image", image, "version",
            (json_int_t)newest);
  bool busy = tb_client_locked(state, c->id);
  json_t *res = record_json(c->id, &m);
  char msg[768];
  snprintf(msg, sizeof msg,
           "%s is the maintenance PC of %s: its next boot starts on %s@%" PRIu32
           " and keeps what it writes across its reboots%s; then: tabulactl maintenance "
           "finish %s --note TEXT",
           c->id, image, image, newest,
           busy ? " (it is in a session now: restart it to begin)" : "", c->id);
  json_object_set_new(res, "message", json_string(msg));
  return reply_ok(res);
}

static json_t *op_finish(struct daemon *d, struct conn *conn, json_t *req)
{
  const char *state = d->cfg->state_dir;
  json_t *err = NULL;
  const struct tb_client_conf *c = req_client(d, req, &err);
  if (!c)
    return err;
  struct tb_maintenance m;
  int r = tb_maintenance_read(state, c->id, &m);
  if (r == -1)
    return reply_error("%s", tb_errmsg());
  if (r == 0)
    return reply_error("client %s is not a maintenance PC (tabulactl maintenance start %s "
                       "--image IMAGE makes it one)",
                       c->id, c->id);
  if (tb_client_locked(state, c->id))
    return reply_error("client %s is in a session: shut it down first (the merge takes what it "
                       "wrote once it has stopped)",
                       c->id);
  struct tb_mailbox mb;
  char overlay[TB_PATH_MAX];
  struct tb_overlay_info info;
  if (tb_mailbox_read(state, c->id, &mb) == -1 ||
      tb_clientdir_path(state, c->id, TB_CF_OVERLAY, overlay, sizeof overlay) == -1)
    return reply_error("%s", tb_errmsg());
  if (mb.refresh || access(overlay, F_OK) == -1 ||
      tb_overlay_exact_info(state, overlay, &info) == -1 || strcmp(info.base.image, m.image) != 0)
    return reply_error("client %s has not booted since its maintenance started: there is "
                       "nothing to merge (boot it, make the changes, shut it down)",
                       c->id);
  if (info.dirty_blocks == 0)
    return reply_error("client %s wrote nothing during its maintenance: there is nothing to merge "
                       "(tabulactl maintenance abort %s ends it)",
                       c->id, c->id);
  uint32_t newest = tb_store_latest(state, m.image);
  if (info.base.version != newest)
    return reply_error("%s moved on since %s's maintenance started: %s is on %s@%" PRIu32
                       " and the newest is %s@%" PRIu32 "; merging would drop what @%" PRIu32
                       " changed.  End it with "
                       "tabulactl maintenance abort %s and start again on %s@%" PRIu32,
                       m.image, c->id, c->id, m.image, info.base.version, m.image, newest, newest,
                       c->id, m.image, newest);
  struct merge_request *mr = calloc(1, sizeof *mr);
  if (!mr)
    return reply_error("out of memory");
  snprintf(mr->client, sizeof mr->client, "%s", c->id);
  snprintf(mr->into, sizeof mr->into, "%s", m.image);
  const char *note = req_str(req, "note");
  char dflt[128];
  snprintf(dflt, sizeof dflt, "maintenance of %s@%" PRIu32 " on %s", m.image, info.base.version,
           c->id);
  mr->note = strdup(note ? note : dflt);
  mr->progress = json_is_true(json_object_get(req, "progress"));
  mr->conn_id = conn_id(conn);
  mr->merged = maintenance_merged;
  snprintf(mr->maint_image, sizeof mr->maint_image, "%s", mb.image);
  mr->maint_pin = mb.pin;
  if (jobs_submit_merge(d, mr) == -1)
    return reply_error("%s", tb_errmsg());
  conn_wait(conn);
  return NULL;
}

static json_t *op_abort(struct daemon *d, json_t *req)
{
  const char *state = d->cfg->state_dir;
  json_t *err = NULL;
  const struct tb_client_conf *c = req_client(d, req, &err);
  if (!c)
    return err;
  struct tb_maintenance m;
  int r = tb_maintenance_read(state, c->id, &m);
  if (r == 0)
    return reply_error("client %s is not a maintenance PC", c->id);
  /* A record that does not read is removed too: abort is the way out. */
  if (TB_MAILBOX_CHANGE(state, c->id, .refresh = true) == -1 ||
      tb_maintenance_clear(state, c->id) == -1)
    return reply_error("%s", tb_errmsg());
  tb_eventf(state, "maintenance-abort", c->id, "{s:s}", "image", r == 1 ? m.image : "");
  char msg[512];
  snprintf(msg, sizeof msg,
           "%s left maintenance: its next boot starts afresh on its own configuration (what it "
           "wrote is kept as a restore point: tabulactl sessions %s)%s",
           c->id, c->id,
           tb_client_locked(state, c->id) ? "; it is in a session now, restart it" : "");
  return reply_ok(json_pack("{s:s, s:s}", "client", c->id, "message", msg));
}

json_t *maintenance_status(struct daemon *d, const char *id)
{
  struct tb_maintenance m;
  int r = tb_maintenance_read(d->cfg->state_dir, id, &m);
  if (r == -1)
    return json_pack("{s:s}", "error", tb_errmsg());
  return r == 1 ? record_json(id, &m) : NULL;
}

static json_t *op_list(struct daemon *d)
{
  json_t *arr = json_array();
  for (size_t i = 0; i < d->cfg->n_clients; i++) {
    json_t *s = maintenance_status(d, d->cfg->clients[i].id);
    if (s) {
      json_object_set_new(s, "client", json_string(d->cfg->clients[i].id));
      json_object_set_new(s, "in_session",
                          json_boolean(tb_client_locked(d->cfg->state_dir, d->cfg->clients[i].id)));
      json_array_append_new(arr, s);
    }
  }
  return reply_ok(json_pack("{s:o}", "maintenance", arr));
}

/* The maintenance operations (ops.c dispatches through this table). */
static json_t *run_start(struct daemon *d, struct op_call *call)
{
  return op_start(d, call->req);
}

static json_t *run_finish(struct daemon *d, struct op_call *call)
{
  return op_finish(d, call->conn, call->req); /* NULL: the merge job answers */
}

static json_t *run_abort(struct daemon *d, struct op_call *call)
{
  return op_abort(d, call->req);
}

static json_t *run_list(struct daemon *d, struct op_call *call)
{
  (void)call;
  return op_list(d);
}

const struct daemon_op maintenance_ops[] = {
    {"maintenance-start", run_start},
    {"maintenance-finish", run_finish},
    {"maintenance-abort", run_abort},
    {"maintenance-list", run_list},
    {NULL, NULL},
};
