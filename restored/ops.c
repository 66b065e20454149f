/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-restored: the control operations.
 *
 * Each request {"op": NAME, ...} is checked strictly (unknown operation,
 * missing or wrongly typed argument, unknown client: an error reply naming
 * the problem) and then answered from the state directory, which is the
 * truth: session.json (written by the plugin), the mailbox, overlay headers,
 * retained sessions and manifests.  Nothing here changes a client's overlay:
 * actions go to the mailbox (lib/mailbox.h), applied by the plugin at the
 * next session start.  Merges are queued to the job thread (jobs.c).
 *
 * Version references (what `image rm` and `image gc` must keep): every
 * client's next version (mailbox image and pin, configured version, else the
 * newest), every overlay's and retained session's base, what the watchdog
 * keeps (the last known good overlay's base and health.json's last good
 * version, every quarantined overlay's base: scan_refs), and for gc the
 * newest version of every image.
 */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <signal.h>

#include "clientdir.h"
#include "boot.h"
#include "daemon.h"
#include "events.h"
#include "mailbox.h"
#include "maintenance.h"
#include "overlay.h"
#include "session.h"
#include "store.h"

/* ---- replies ------------------------------------------------------------------------ */

static json_t *reply_lib_error(void)
{
  return reply_error("%s", tb_errmsg());
}

/* ---- arguments ------------------------------------------------------------------------ */

/* A string argument; REQUIRED or not.  Sets a.err on a problem. */
static const char *arg_str(struct op_call *a, const char *key, bool required)
{
  json_t *v = json_object_get(a->req, key);
  if (!v || json_is_null(v)) {
    if (required && !a->err[0])
      snprintf(a->err, sizeof a->err, "%s: missing argument \"%s\"", a->op, key);
    return NULL;
  }
  if (!json_is_string(v)) {
    if (!a->err[0])
      snprintf(a->err, sizeof a->err, "%s: argument \"%s\" must be a string", a->op, key);
    return NULL;
  }
  return json_string_value(v);
}

static int64_t arg_int(struct op_call *a, const char *key, bool required, int64_t min, int64_t max,
                       int64_t dflt)
{
  json_t *v = json_object_get(a->req, key);
  if (!v || json_is_null(v)) {
    if (required && !a->err[0])
      snprintf(a->err, sizeof a->err, "%s: missing argument \"%s\"", a->op, key);
    return dflt;
  }
  if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
    if (!a->err[0])
      snprintf(a->err, sizeof a->err, "%s: argument \"%s\" must be an integer from %lld to %lld",
               a->op, key, (long long)min, (long long)max);
    return dflt;
  }
  return json_integer_value(v);
}

static bool arg_bool(struct op_call *a, const char *key)
{
  json_t *v = json_object_get(a->req, key);
  if (v && !json_is_boolean(v) && !json_is_null(v) && !a->err[0])
    snprintf(a->err, sizeof a->err, "%s: argument \"%s\" must be true or false", a->op, key);
  return json_is_true(v);
}

/* Only the listed keys (besides "op") may appear. */
static void check_keys(struct op_call *a, const char *const *keys)
{
  const char *bad = req_unknown_key(a->req, keys);
  if (bad && !a->err[0])
    snprintf(a->err, sizeof a->err, "%s: unknown argument \"%.64s\"", a->op, bad);
}

/* The configured client named by argument "client". */
static const struct tb_client_conf *arg_client(struct daemon *d, struct op_call *a)
{
  const char *id = arg_str(a, "client", true);
  if (!id)
    return NULL;
  if (!tb_client_id_valid(id)) {
    snprintf(a->err, sizeof a->err, "invalid client id \"%.80s\"", id);
    return NULL;
  }
  const struct tb_client_conf *c = tb_config_client(d->cfg, id);
  if (!c)
    snprintf(a->err, sizeof a->err, "no client \"%s\" in %s (see tabulactl clients)", id,
             d->config_file);
  return c;
}

/* ---- client state ------------------------------------------------------------------------ */

static json_t *read_json_file(const char *path)
{
  size_t len;
  char *text = tb_read_file(path, 1024 * 1024, &len);
  if (!text)
    return NULL;
  json_t *v = json_loadb(text, len, 0, NULL);
  free(text);
  return v;
}

static uint64_t disk_bytes(const char *path)
{
  struct stat st;
  return stat(path, &st) == 0 ? (uint64_t)st.st_blocks * 512 : 0;
}

/* What the client's next session start will apply.  A reimage (the
 * mailbox's standing image) is pending only until the client's overlay is on
 * that image (BASE_IMAGE, NULL: no overlay). */
static json_t *pending_json(const struct tb_mailbox *mb, const char *base_image)
{
  json_t *p = json_array();
  char buf[128];
  if (mb->rollback)
    json_array_append_new(p, json_string("rollback"));
  if (mb->refresh)
    json_array_append_new(p, json_string("refresh"));
  if (mb->restore > 0) {
    snprintf(buf, sizeof buf, "restore %lld", (long long)mb->restore);
    json_array_append_new(p, json_string(buf));
  }
  if (mb->image[0] && (!base_image || strcmp(base_image, mb->image) != 0)) {
    snprintf(buf, sizeof buf, "image %s", mb->image);
    json_array_append_new(p, json_string(buf));
  }
  if (mb->lockdown[0]) {
    snprintf(buf, sizeof buf, "lockdown: %.100s", mb->lockdown);
    json_array_append_new(p, json_string(buf));
  }
  return p;
}

static json_t *session_entry(const char *state, const char *id, uint64_t n, bool exact)
{
  char path[TB_PATH_MAX];
  if (tb_clientdir_session(state, id, n, path, sizeof path) == -1)
    return NULL;
  json_t *s = json_pack("{s:I}", "session", (json_int_t)n);
  struct tb_overlay_info info;
  int r = exact ? tb_overlay_exact_info(state, path, &info) : tb_overlay_read_info(path, &info);
  if (r == 0) {
    json_object_set_new(s, "image", json_string(info.base.image));
    json_object_set_new(s, "version", json_integer(info.base.version));
    if (exact)
      json_object_set_new(s, "dirty_bytes",
                          json_integer((json_int_t)(info.dirty_blocks * info.block_size)));
  } else {
    json_object_set_new(s, "error", json_string(tb_errmsg()));
  }
  json_object_set_new(s, "disk_bytes", json_integer((json_int_t)disk_bytes(path)));
  struct stat st;
  if (stat(path, &st) == 0) {
    char iso[32];
    tb_iso_time((int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000, iso);
    json_object_set_new(s, "ended", json_string(iso));
  }
  return s;
}

static json_t *sessions_json(const char *state, const char *id, bool exact)
{
  json_t *arr = json_array();
  uint64_t *nums;
  size_t n;
  if (tb_client_sessions(state, id, &nums, &n) == -1)
    return arr;
  for (size_t i = 0; i < n; i++) {
    json_t *s = session_entry(state, id, nums[i], exact);
    if (s)
      json_array_append_new(arr, s);
  }
  free(nums);
  return arr;
}

/* The boot session as the frontend reports it (clients/ID/live.json, written
 * by the plugin): state, connections, the boot marker that opened it.  No
 * file is "ended"; a frontend whose pid is gone keeps its last state, marked
 * "frontend_gone".  And the client's latest boot marker (lib/boot.h). */
static json_t *live_json(const char *state, const char *id)
{
  char path[TB_PATH_MAX];
  json_t *live = NULL;
  if (tb_clientdir_path(state, id, TB_CF_LIVE_JSON, path, sizeof path) == 0)
    live = read_json_file(path);
  json_t *o = json_object();
  const char *st = json_string_value(json_object_get(live, "state"));
  json_object_set_new(o, "state", json_string(json_is_object(live) && st ? st : "ended"));
  static const char *const copy[] = {"session", "pid",         "updated", "connections",
                                     "boot",    "grace_until", "figures", NULL};
  for (const char *const *k = copy; *k; k++)
    json_object_set(o, *k, json_object_get(live, *k) ? json_object_get(live, *k) : json_null());
  json_t *pid = json_object_get(live, "pid");
  bool gone = false;
  if (json_is_integer(pid) && json_integer_value(pid) > 0 && st && strcmp(st, "ended") != 0)
    gone = kill((pid_t)json_integer_value(pid), 0) == -1 && errno == ESRCH;
  json_object_set_new(o, "frontend_gone", json_boolean(gone));
  if (!json_is_array(json_object_get(o, "connections")))
    json_object_set_new(o, "connections", json_array());
  json_decref(live);
  struct tb_boot_marker m;
  char client[TB_NAME_MAX + 1]; /* a disk's boots are its client's */
  snprintf(client, sizeof client, "%.*s", (int)strcspn(id, "/"), id);
  if (tb_boot_marker_read(state, client, &m) == 0 && m.seq > 0)
    json_object_set_new(o, "last_boot_marker",
                        json_pack("{s:I, s:I, s:s, s:s}", "seq", (json_int_t)m.seq, "at",
                                  (json_int_t)m.at_ms, "via", m.via, "detail", m.detail));
  else
    json_object_set_new(o, "last_boot_marker", json_null());
  return o;
}

/* One client's state.  DETAIL adds exact dirty bytes, the last session and
 * the retained sessions (it opens overlays: fine for one client, not for 500). */
static json_t *client_json(struct daemon *d, const struct tb_client_conf *c, bool detail)
{
  const char *state = d->cfg->state_dir;
  json_t *o = json_pack("{s:s}", "id", c->id);
  if (c->group[0])
    json_object_set_new(o, "group", json_string(c->group));
  /* A client's disks (conf.h): each its own entry, tied to its machine. */
  json_object_set_new(o, "client", json_string(c->client));
  json_object_set_new(o, "disk", c->disk[0] ? json_string(c->disk) : json_null());
  if (c->disk[0])
    json_object_set_new(o, "read_only", json_boolean(c->read_only));
  if (c->n_disks) {
    json_t *disks = json_array();
    for (size_t k = 1; k <= c->n_disks; k++)
      json_array_append_new(disks, json_string(c[k].id));
    json_object_set_new(o, "disks", disks);
  }
  json_object_set_new(o, "policy",
                      json_string(c->policy == TB_POLICY_PERSIST ? "persist" : "rollback"));
  json_object_set_new(o, "keep_sessions", json_integer(c->keep_sessions));

  struct tb_mailbox mb;
  if (tb_mailbox_read(state, c->id, &mb) == -1) {
    json_object_set_new(o, "mailbox_error", json_string(tb_errmsg()));
    memset(&mb, 0, sizeof mb);
  }
  json_object_set_new(o, "pinned", json_boolean(mb.pin || c->version));
  char image[TB_NAME_MAX + 1];
  uint32_t next = 0;
  if (tb_client_target(state, c, image, &next) == 0) {
    json_object_set_new(o, "next_image", json_string(image));
    json_object_set_new(o, "next_version", json_integer(next));
  } else {
    json_object_set_new(o, "next_image", json_string(mb.image[0] ? mb.image : c->image));
    json_object_set_new(o, "next_version", json_integer(0));
    json_object_set_new(o, "next_error", json_string(tb_errmsg()));
  }

  char ovl[TB_PATH_MAX], sj[TB_PATH_MAX];
  tb_clientdir_path(state, c->id, TB_CF_OVERLAY, ovl, sizeof ovl);
  tb_clientdir_path(state, c->id, TB_CF_SESSION_JSON, sj, sizeof sj);
  struct tb_overlay_info info;
  bool have_overlay = access(ovl, F_OK) == 0;
  bool have_info = have_overlay && (detail ? tb_overlay_exact_info(state, ovl, &info) == 0
                                           : tb_overlay_read_info(ovl, &info) == 0);
  if (have_info) {
    json_object_set_new(o, "image", json_string(info.base.image));
    json_object_set_new(o, "version", json_integer(info.base.version));
  } else {
    json_object_set_new(o, "image", json_string(mb.image[0] ? mb.image : c->image));
    json_object_set_new(o, "version", json_integer(0));
    if (have_overlay)
      json_object_set_new(o, "overlay_error", json_string(tb_errmsg()));
  }
  json_t *sess = read_json_file(sj);
  bool locked = tb_client_locked(state, c->id);
  const char *st = !locked ? (sess ? "idle" : "new")
                   : sess && strcmp(json_string_value(json_object_get(sess, "state"))
                                        ? json_string_value(json_object_get(sess, "state"))
                                        : "",
                                    "active") == 0
                       ? "active"
                       : "busy";
  json_object_set_new(o, "state", json_string(st));
  json_object_set_new(o, "session", json_incref(json_object_get(sess, "session")));
  json_t *live = live_json(state, c->id);
  json_t *figures = json_object_get(live, "figures");
  bool running = json_is_object(figures) && !json_is_true(json_object_get(live, "frontend_gone"));
  uint64_t dirty = 0;
  if (running) /* the running session's own figure (a few seconds old at most) */
    dirty = (uint64_t)json_integer_value(json_object_get(figures, "dirty_bytes"));
  else if (have_info && detail)
    dirty = info.dirty_blocks * info.block_size;
  else if (have_overlay && json_is_integer(json_object_get(sess, "dirty_bytes")))
    dirty = (uint64_t)json_integer_value(json_object_get(sess, "dirty_bytes"));
  json_object_set_new(o, "dirty_bytes", json_integer((json_int_t)dirty));
  json_object_set_new(o, "disk_bytes", json_integer((json_int_t)disk_bytes(ovl)));
  json_object_set_new(o, "quota_bytes", json_integer((json_int_t)c->quota));
  if (tb_io_limits_set(&c->limits)) /* 0: that one is unlimited */
    json_object_set_new(
        o, "limits",
        json_pack("{s:I, s:I, s:I, s:I}", "read_bytes_per_s", (json_int_t)c->limits.read_bps,
                  "write_bytes_per_s", (json_int_t)c->limits.write_bps, "read_iops",
                  (json_int_t)c->limits.read_iops, "write_iops", (json_int_t)c->limits.write_iops));
  json_object_set_new(o, "pending", pending_json(&mb, have_info ? info.base.image : NULL));
  json_t *maint = maintenance_status(d, c->id);
  if (maint)
    json_object_set_new(o, "maintenance", maint);
  json_object_set_new(o, "live", live);
  if (c->has_mac) {
    char addr[64] = "?";
    inet_ntop(c->address.family, c->address.addr, addr, sizeof addr);
    json_object_set_new(o, "pxe", json_pack("{s:s, s:s}", "mac", c->mac, "address", addr));
  }
  if (mb.lockdown[0])
    json_object_set_new(o, "lockdown", json_string(mb.lockdown));
  bool rolls = c->policy == TB_POLICY_ROLLBACK && !maint; /* a maintenance PC persists */
  bool discard = rolls || mb.rollback || mb.refresh || mb.restore > 0;
  json_object_set_new(o, "keeps_overlay", json_boolean(have_overlay && !discard));
  const struct client_sched *sch = schedule_for(d, c->id);
  if (c->refresh) {
    json_object_set_new(o, "refresh", json_string(c->refresh));
    if (sch && sch->has) {
      char iso[32];
      tb_iso_time(sch->next_ms, iso);
      json_object_set_new(o, "next_refresh", json_string(iso));
      json_object_set_new(o, "next_refresh_ms", json_integer(sch->next_ms));
      if (sch->last_ms > 0) {
        tb_iso_time(sch->last_ms, iso);
        json_object_set_new(o, "last_refresh", json_string(iso));
        json_object_set_new(o, "last_refresh_ms", json_integer(sch->last_ms));
      }
    }
  }
  if (c->merge_when) {
    json_object_set_new(o, "merge",
                        json_pack("{s:s, s:s}", "into", c->merge_into, "when", c->merge_when));
    if (sch && sch->merge_has) {
      char iso[32];
      tb_iso_time(sch->merge_next_ms, iso);
      json_object_set_new(o, "next_merge", json_string(iso));
      json_object_set_new(o, "next_merge_ms", json_integer(sch->merge_next_ms));
      json_object_set_new(o, "merge_waiting", json_boolean(sch->merge_pending));
      if (sch->merge_last_ms > 0) {
        tb_iso_time(sch->merge_last_ms, iso);
        json_object_set_new(o, "last_merge", json_string(iso));
        json_object_set_new(o, "last_merge_ms", json_integer(sch->merge_last_ms));
      }
    }
  }
  if (detail) {
    /* A session.json left "active" by a frontend that stopped without ending
     * it (kill -9, a daemon stop under a running client) is interrupted: it
     * is resumed or ended when the client next connects. */
    const char *sst = json_string_value(json_object_get(sess, "state"));
    if (sess && sst && !strcmp(sst, "active") &&
        (!locked || json_is_true(json_object_get(live, "frontend_gone")))) {
      json_t *copy = json_copy(sess);
      json_object_set_new(copy, "state", json_string("interrupted"));
      json_object_set_new(o, "last_session", copy);
    } else if (sess) {
      json_object_set(o, "last_session", sess);
    }
    json_object_set_new(o, "sessions", sessions_json(state, c->id, true));
    struct client_counters *cc = counters_for(d, c->id);
    if (cc)
      json_object_set_new(o, "since_daemon_start",
                          json_pack("{s:I, s:I, s:I, s:I}", "sessions", (json_int_t)cc->sessions,
                                    "bytes_read", (json_int_t)cc->bytes_read, "bytes_written",
                                    (json_int_t)cc->bytes_written, "errors",
                                    (json_int_t)cc->errors));
  }
  json_decref(sess);
  return o;
}

int clients_status_json(struct daemon *d, json_t **out)
{
  json_t *arr = json_array();
  for (size_t i = 0; i < d->cfg->n_clients; i++)
    json_array_append_new(arr, client_json(d, &d->cfg->clients[i], false));
  *out = arr;
  return 0;
}

/* ---- status, clients, client, sessions ---------------------------------------------------- */

static json_t *op_status(struct daemon *d, struct op_call *a)
{
  static const char *const keys[] = {NULL};
  check_keys(a, keys);
  if (a->err[0])
    return reply_error("%s", a->err);
  const char *state = d->cfg->state_dir;
  json_t *daemon =
      json_pack("{s:I, s:I, s:s, s:s, s:s, s:s, s:I}", "pid", (json_int_t)getpid(), "uptime_s",
                (json_int_t)((tb_now_ms() - d->started_ms) / 1000), "config", d->config_file,
                "state_dir", state, "control", d->control_path, "version", PACKAGE_VERSION,
                "control_requests", (json_int_t)server_requests());
  char sock[TB_PATH_MAX];
  if (d->cfg->listen_unix)
    snprintf(sock, sizeof sock, "%s", d->cfg->listen_unix);
  else
    snprintf(sock, sizeof sock, "%s/nbd.sock", state);
  const struct child *in = &d->nbd.child;
  json_t *nb =
      json_pack("{s:s, s:I, s:I, s:s}", "state",
                in->ready                ? "running"
                : in->pid                ? "starting"
                : in->restart_at_mono_ms ? "restarting"
                                         : "stopped",
                "pid", (json_int_t)in->pid, "restarts", (json_int_t)in->restarts, "unix", sock);
  if (d->cfg->listen_tcp)
    json_object_set_new(nb, "tcp", json_string(d->cfg->listen_tcp));
  if (child_restart_in_ms(in) >= 0)
    json_object_set_new(nb, "restart_in_ms", json_integer((json_int_t)child_restart_in_ms(in)));
  if (in->last_exit[0])
    json_object_set_new(nb, "last_exit", json_string(in->last_exit));

  /* Clients: cheap per-client reads only (this must stay fast with 500 clients).
   * A client with further disks counts once: active, pending or locked down
   * when any of its disks is. */
  json_int_t active = 0, pending = 0, locked_down = 0, dirty = 0;
  bool m_active = false, m_pending = false, m_locked = false;
  for (size_t i = 0; i < d->cfg->n_clients; i++) {
    const struct tb_client_conf *c = &d->cfg->clients[i];
    if (!c->disk[0]) { /* the next client: count the one before */
      active += m_active;
      pending += m_pending;
      locked_down += m_locked;
      m_active = m_pending = m_locked = false;
    }
    m_active |= tb_client_locked(state, c->id);
    struct tb_mailbox mb;
    if (tb_mailbox_read(state, c->id, &mb) == 0) {
      m_pending |= mb.rollback || mb.refresh || mb.restore || mb.lockdown[0];
      m_locked |= mb.lockdown[0] != '\0';
    }
    char sj[TB_PATH_MAX];
    if (tb_clientdir_path(state, c->id, TB_CF_SESSION_JSON, sj, sizeof sj) == 0) {
      json_t *s = read_json_file(sj);
      dirty += json_integer_value(json_object_get(s, "dirty_bytes"));
      json_decref(s);
    }
  }
  active += m_active;
  pending += m_pending;
  locked_down += m_locked;
  json_t *clients = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I}", "total",
                              (json_int_t)(d->cfg->n_clients - d->cfg->n_disks), "disks",
                              (json_int_t)d->cfg->n_disks, "active", active, "pending", pending,
                              "locked_down", locked_down, "dirty_bytes", dirty);
  const struct client_sched *soonest = NULL;
  for (size_t i = 0; i < d->n_sched; i++)
    if (d->sched[i].has && (!soonest || d->sched[i].next_ms < soonest->next_ms))
      soonest = &d->sched[i];
  if (soonest) {
    char iso[32];
    tb_iso_time(soonest->next_ms, iso);
    json_object_set_new(clients, "next_refresh",
                        json_pack("{s:s, s:s, s:I}", "client", soonest->id, "time", iso, "ms",
                                  (json_int_t)soonest->next_ms));
  }
  json_t *images = json_array();
  char **names;
  size_t n;
  if (tb_store_images(state, &names, &n) == 0) {
    for (size_t i = 0; i < n; i++) {
      uint32_t *vers;
      size_t nv;
      if (tb_store_versions(state, names[i], &vers, &nv) == 0) {
        json_array_append_new(images, json_pack("{s:s, s:I, s:I}", "name", names[i], "latest",
                                                (json_int_t)(nv ? vers[nv - 1] : 0), "versions",
                                                (json_int_t)nv));
        free(vers);
      }
    }
    tb_strv_free(names, n);
  }
  return reply_ok(json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "daemon", daemon, "nbdkit",
                            nb, "clients", clients, "images", images, "jobs", jobs_status(),
                            "webhooks", webhooks_status(), "pxe", pxe_status(d), "iscsi",
                            iscsid_status(d)));
}

static json_t *op_clients(struct daemon *d, struct op_call *a)
{
  static const char *const keys[] = {NULL};
  check_keys(a, keys);
  if (a->err[0])
    return reply_error("%s", a->err);
  json_t *arr;
  clients_status_json(d, &arr);
  return reply_ok(json_pack("{s:o}", "clients", arr));
}

static json_t *op_client(struct daemon *d, struct op_call *a)
{
  static const char *const keys[] = {"client", NULL};
  check_keys(a, keys);
  const struct tb_client_conf *c = arg_client(d, a);
  if (!c || a->err[0])
    return reply_error("%s", a->err);
  return reply_ok(client_json(d, c, true));
}

static json_t *op_sessions(struct daemon *d, struct op_call *a)
{
  static const char *const keys[] = {"client", NULL};
  check_keys(a, keys);
  const struct tb_client_conf *c = arg_client(d, a);
  if (!c || a->err[0])
    return reply_error("%s", a->err);
  return reply_ok(json_pack("{s:s, s:o}", "client", c->id, "sessions",
                            sessions_json(d->cfg->state_dir, c->id, true)));
}

/* ---- mailbox actions ---------------------------------------------------------------------- */

/* Post CH to the mailbox of C; OP names the action in the event and reply. */
static json_t *post(struct daemon *d, const struct tb_client_conf *c, const char *op,
                    const struct tb_mailbox_change *ch, json_t *event_fields, const char *message)
{
  if (tb_mailbox_change(d->cfg->state_dir, c->id, ch, NULL) == -1) {
    json_decref(event_fields);
    return reply_lib_error();
  }
  bool live = tb_client_locked(d->cfg->state_dir, c->id);
  json_object_set_new(event_fields, "applies", json_string("next-session"));
  tb_event(d->cfg->state_dir, op, c->id, event_fields);
  char msg[512];
  snprintf(msg, sizeof msg, "%s%s", message,
           live ? " (a session is running: it applies when the next one starts)" : "");
  return reply_ok(json_pack("{s:s, s:s, s:b, s:s}", "client", c->id, "action", op, "live", live,
                            "message", msg));
}

static json_t *op_rollback(struct daemon *d, struct op_call *a)
{
  static const char *const keys[] = {"client", NULL};
  check_keys(a, keys);
  const struct tb_client_conf *c = arg_client(d, a);
  if (!c || a->err[0])
    return reply_error("%s", a->err);
  char msg[256];
  snprintf(msg, sizeof msg, "%s: rollback at the next session start", c->id);
  return post(d, c, "rollback", &(struct tb_mailbox_change){.rollback = true}, json_object(), msg);
}

static json_t *op_restore(struct daemon *d, struct op_call *a)
{
  static const char *const keys[] = {"client", "session", NULL};
  check_keys(a, keys);
  const struct tb_client_conf *c = arg_client(d, a);
  int64_t n = arg_int(a, "session", true, 1, INT64_MAX, 0);
  if (!c || a->err[0])
    return reply_error("%s", a->err);
  char path[TB_PATH_MAX];
  struct tb_overlay_info info;
  if (tb_clientdir_session(d->cfg->state_dir, c->id, (uint64_t)n, path, sizeof path) == -1)
    return reply_lib_error();
  if (access(path, F_OK) == -1)
    return reply_error("client %s has no retained session %lld (see tabulactl sessions %s)", c->id,
                       (long long)n, c->id);
  if (tb_overlay_read_info(path, &info) == -1)
    return reply_lib_error();
  struct tb_manifest *m = tb_manifest_load(d->cfg->state_dir, info.base.image, info.base.version);
  if (!m)
    return reply_error("cannot restore session %lld of %s: its base %s@%u is gone", (long long)n,
                       c->id, info.base.image, info.base.version);
  tb_manifest_free(m);
  char msg[256];
  snprintf(msg, sizeof msg,
           "%s: session %lld (on %s@%u) becomes the overlay at the next session "
           "start",
           c->id, (long long)n, info.base.image, info.base.version);
  return post(d, c, "restore", &(struct tb_mailbox_change){.restore = n},
              json_pack("{s:I}", "session", (json_int_t)n), msg);
}

static json_t *op_reimage(struct daemon *d, struct op_call *a)
{
  static const char *const keys[] = {"client", "image", "version", NULL};
  check_keys(a, keys);
  const struct tb_client_conf *c = arg_client(d, a);
  const char *image = arg_str(a, "image", true);
  int64_t ver = arg_int(a, "version", false, 1, UINT32_MAX, 0);
  if (!c || a->err[0])
    return reply_error("%s", a->err);
  if (!tb_name_valid(image))
    return reply_error("invalid image name \"%.80s\"", image);
  uint32_t v = (uint32_t)ver;
  if (v) {
    struct tb_manifest *m = tb_manifest_load(d->cfg->state_dir, image, v);
    if (!m)
      return reply_error("image %s has no version %u (see tabulactl image list)", image, v);
    tb_manifest_free(m);
  } else if (!tb_store_latest(d->cfg->state_dir, image)) {
    return reply_error("image %s has no versions (import one with tabulactl image import)", image);
  }
  /* A new image discards the overlay (a rollback), on VERSION or the newest. */
  struct tb_mailbox_change ch = {.image = image, .set_pin = true, .pin = v, .rollback = true};
  char msg[256];
  if (v)
    snprintf(msg, sizeof msg, "%s: the next session starts on %s@%u, overlay discarded", c->id,
             image, v);
  else
    snprintf(msg, sizeof msg, "%s: the next session starts on the newest %s, overlay discarded",
             c->id, image);
  return post(d, c, "reimage", &ch,
              json_pack("{s:s, s:I}", "image", image, "version", (json_int_t)v), msg);
}

static json_t *set_pin(struct daemon *d, struct op_call *a, bool pin)
{
  static const char *const pin_keys[] = {"client", "version", NULL};
  static const char *const unpin_keys[] = {"client", NULL};
  check_keys(a, pin ? pin_keys : unpin_keys);
  const struct tb_client_conf *c = arg_client(d, a);
  int64_t ver = pin ? arg_int(a, "version", true, 1, UINT32_MAX, 0) : 0;
  if (!c || a->err[0])
    return reply_error("%s", a->err);
  struct tb_mailbox mb;
  if (tb_mailbox_read(d->cfg->state_dir, c->id, &mb) == -1)
    return reply_lib_error();
  const char *image = mb.image[0] ? mb.image : c->image;
  char msg[512];
  if (pin) {
    struct tb_manifest *m = tb_manifest_load(d->cfg->state_dir, image, (uint32_t)ver);
    if (!m)
      return reply_error("image %s has no version %lld (see tabulactl image list)", image,
                         (long long)ver);
    tb_manifest_free(m);
    snprintf(msg, sizeof msg, "%s: pinned to %s@%lld%s", c->id, image, (long long)ver,
             c->policy == TB_POLICY_PERSIST
                 ? "; its overlay stays on its version until tabulactl refresh"
                 : ", from its next session");
  } else if (c->version) {
    snprintf(msg, sizeof msg,
             "%s: unpinned in the mailbox, but the configuration still pins it "
             "to version %u",
             c->id, c->version);
  } else {
    snprintf(msg, sizeof msg, "%s: unpinned, follows the newest %s", c->id, image);
  }
  struct tb_mailbox_change ch = {.set_pin = true, .pin = (uint32_t)ver};
  return post(d, c, pin ? "pin" : "unpin", &ch,
              pin ? json_pack("{s:s, s:I}", "image", image, "version", (json_int_t)ver)
                  : json_object(),
              msg);
}

static json_t *op_pin(struct daemon *d, struct op_call *a)
{
  return set_pin(d, a, true);
}

static json_t *op_unpin(struct daemon *d, struct op_call *a)
{
  return set_pin(d, a, false);
}

static json_t *op_refresh(struct daemon *d, struct op_call *a)
{
  static const char *const keys[] = {"client", "group", NULL};
  check_keys(a, keys);
  const char *group = arg_str(a, "group", false);
  if (a->err[0])
    return reply_error("%s", a->err);
  if (!group) {
    const struct tb_client_conf *c = arg_client(d, a);
    if (!c)
      return reply_error("%s", a->err);
    char msg[256];
    snprintf(msg, sizeof msg, "%s: moves to its current version at the next session start", c->id);
    return post(d, c, "refresh", &(struct tb_mailbox_change){.refresh = true}, json_object(), msg);
  }
  if (json_object_get(a->req, "client"))
    return reply_error("refresh: give \"client\" or \"group\", not both");
  json_t *ids = json_array();
  for (size_t i = 0; i < d->cfg->n_clients; i++) {
    const struct tb_client_conf *c = &d->cfg->clients[i];
    if (strcmp(c->group, group) != 0)
      continue;
    if (tb_maintenance_read(d->cfg->state_dir, c->id, NULL) == 1)
      continue; /* a maintenance PC keeps its work (maintenance finish or abort ends it) */
    if (TB_MAILBOX_CHANGE(d->cfg->state_dir, c->id, .refresh = true) == -1) {
      json_decref(ids);
      return reply_lib_error();
    }
    tb_eventf(d->cfg->state_dir, "refresh", c->id, "{s:s, s:s}", "group", group, "applies",
              "next-session");
    json_array_append_new(ids, json_string(c->id));
  }
  if (json_array_size(ids) == 0) {
    json_decref(ids);
    return reply_error("no client is in group \"%s\" (see \"groups\" in %s)", group,
                       d->config_file);
  }
  char msg[256];
  snprintf(msg, sizeof msg,
           "group %s: %zu clients move to their current version at their next "
           "session start",
           group, json_array_size(ids));
  return reply_ok(json_pack("{s:s, s:o, s:s}", "group", group, "clients", ids, "message", msg));
}

/* ---- merge --------------------------------------------------------------------------------- */

static json_t *op_merge(struct daemon *d, struct op_call *a)
{
  struct conn *conn = a->conn;
  static const char *const keys[] = {"client",   "into",  "note", "session",
                                     "progress", "force", NULL};
  check_keys(a, keys);
  const struct tb_client_conf *c = arg_client(d, a);
  const char *into = arg_str(a, "into", true);
  const char *note = arg_str(a, "note", false);
  int64_t session = arg_int(a, "session", false, 1, INT64_MAX, 0);
  bool progress = arg_bool(a, "progress");
  bool force = arg_bool(a, "force");
  if (!c || a->err[0])
    return reply_error("%s", a->err);
  if (!tb_name_valid(into))
    return reply_error("invalid image name \"%.80s\"", into);
  if (!tb_config_has_image(d->cfg, into))
    return reply_error("--into %s: there is no image %s in the configuration's \"images\" (add "
                       "it there and reload, or name a configured image)",
                       into, into);
  /* A merge from a base older than the image's newest version would make a
   * version without what the newer ones changed: only with force. */
  char ovl[TB_PATH_MAX];
  struct tb_overlay_info info;
  const char *state = d->cfg->state_dir;
  if (!force &&
      (session ? tb_clientdir_session(state, c->id, (uint64_t)session, ovl, sizeof ovl)
               : tb_clientdir_path(state, c->id, TB_CF_OVERLAY, ovl, sizeof ovl)) == 0 &&
      tb_overlay_read_info(ovl, &info) == 0 && strcmp(info.base.image, into) == 0) {
    uint32_t newest = tb_store_latest(state, into);
    char range[48];
    if (newest == info.base.version + 1)
      snprintf(range, sizeof range, "@%" PRIu32, newest);
    else
      snprintf(range, sizeof range, "@%" PRIu32 "..@%" PRIu32, info.base.version + 1, newest);
    if (newest > info.base.version)
      return reply_error("%s is on %s@%" PRIu32 " but %s@%" PRIu32 " is the newest: the merge "
                         "would make %s@%" PRIu32 " from @%" PRIu32 " and supersede what %s "
                         "changed; pass --force to merge anyway",
                         c->id, into, info.base.version, into, newest, into, newest + 1,
                         info.base.version, range);
  }
  if (tb_client_locked(d->cfg->state_dir, c->id))
    return reply_error("client %s is in a session (or busy); merge it when its session has "
                       "ended",
                       c->id);
  struct merge_request *r = calloc(1, sizeof *r);
  if (!r)
    return reply_error("out of memory");
  snprintf(r->client, sizeof r->client, "%s", c->id);
  snprintf(r->into, sizeof r->into, "%s", into);
  r->note = note ? strdup(note) : NULL;
  r->session = session;
  r->progress = progress;
  r->conn_id = conn_id(conn);
  if (jobs_submit_merge(d, r) == -1)
    return reply_error("%s", tb_errmsg());
  conn_wait(conn);
  return NULL;
}

/* ---- references, image rm and gc ----------------------------------------------------------- */

struct ref {
  char image[TB_NAME_MAX + 1];
  uint32_t version;
  char why[96];
};
TB_VECTOR(ref_list, struct ref);

/* The references found, and why the list may be short (a client directory
 * that cannot be listed, an overlay whose header cannot be read, out of
 * memory): then nothing may be removed, since any version could be the
 * base of what was missed. */
struct refs {
  struct ref_list v;
  char error[512];
};

static void refs_failed(struct refs *r, const char *what)
{
  if (!r->error[0])
    snprintf(r->error, sizeof r->error, "%s", what);
}

static void ref_add(struct refs *r, const char *image, uint32_t version, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void ref_add(struct refs *r, const char *image, uint32_t version, const char *fmt, ...)
{
  if (!version)
    return;
  if (tb_vector_reserve(&r->v, 1) == -1) {
    refs_failed(r, "out of memory");
    return;
  }
  struct ref *e = &r->v.ptr[r->v.len++];
  snprintf(e->image, sizeof e->image, "%s", image);
  e->version = version;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->why, sizeof e->why, fmt, ap);
  va_end(ap);
}

static void ref_overlay(struct refs *r, const char *path, const char *why)
{
  struct tb_overlay_info info;
  if (tb_overlay_read_info(path, &info) == 0)
    ref_add(r, info.base.image, info.base.version, "%s", why);
  else if (access(path, F_OK) == 0) { /* there, but no base can be read from it */
    char what[sizeof r->error];
    snprintf(what, sizeof what, "%s: %s", why, tb_errmsg());
    refs_failed(r, what);
  }
}

static void refs_overlay_cb(void *ctx, const char *path, const char *why)
{
  ref_overlay(ctx, path, why);
}

static void refs_version_cb(void *ctx, const char *image, uint32_t version, const char *why)
{
  ref_add(ctx, image, version, "%s", why);
}

/* Every reference to a version (see the top of this file).  Client
 * directories in the state dir count even if the client left the config. */
static void collect_refs(struct daemon *d, struct refs *r)
{
  const char *state = d->cfg->state_dir;
  for (size_t i = 0; i < d->cfg->n_clients; i++) {
    const struct tb_client_conf *c = &d->cfg->clients[i];
    char image[TB_NAME_MAX + 1];
    uint32_t v;
    if (tb_client_target(state, c, image, &v) == 0)
      ref_add(r, image, v, "%s (its next session)", c->id);
    if (c->version)
      ref_add(r, c->image, c->version, "%s (pinned in the configuration)", c->id);
  }
  /* Every client's and every disk's directory (clients/ID/disks/DISK). */
  char **ids;
  size_t n_ids;
  if (tb_store_clients(state, &ids, &n_ids) == -1) {
    refs_failed(r, tb_errmsg());
    return;
  }
  for (size_t i = 0; i < n_ids; i++) {
    const char *id = ids[i];
    char p[TB_PATH_MAX];
    if (tb_clientdir_path(state, id, TB_CF_OVERLAY, p, sizeof p) == 0) {
      char why[96];
      snprintf(why, sizeof why, "%s (its overlay)", id);
      ref_overlay(r, p, why);
    }
    struct tb_mailbox mb;
    if (tb_mailbox_read(state, id, &mb) == 0 && mb.pin) {
      const struct tb_client_conf *c = tb_config_client(d->cfg, id);
      ref_add(r, mb.image[0] ? mb.image : c ? c->image : "", mb.pin, "%s (pinned)", id);
    }
    uint64_t *nums;
    size_t n;
    if (tb_client_sessions(state, id, &nums, &n) == 0) {
      for (size_t k = 0; k < n; k++)
        if (tb_clientdir_session(state, id, nums[k], p, sizeof p) == 0) {
          char why[96];
          snprintf(why, sizeof why, "%s (retained session %llu)", id, (unsigned long long)nums[k]);
          ref_overlay(r, p, why);
        }
      free(nums);
    } else
      refs_failed(r, tb_errmsg());
    const struct scan_refs_cb cb = {refs_overlay_cb, refs_version_cb, r};
    scan_refs(state, id, &cb);
  }
  tb_strv_free(ids, n_ids);
}

static const char *refs_of(const struct refs *r, const char *image, uint32_t v, char *buf,
                           size_t len)
{
  buf[0] = '\0';
  for (size_t i = 0; i < r->v.len; i++) {
    const struct ref *e = &r->v.ptr[i];
    if (e->version != v || strcmp(e->image, image) != 0)
      continue;
    size_t n = strlen(buf);
    if (n + strlen(e->why) + 3 >= len)
      break;
    snprintf(buf + n, len - n, "%s%s", n ? ", " : "", e->why);
  }
  return buf[0] ? buf : NULL;
}

static json_t *op_image_rm(struct daemon *d, struct op_call *a)
{
  static const char *const keys[] = {"image", "version", NULL};
  check_keys(a, keys);
  const char *image = arg_str(a, "image", true);
  int64_t ver = arg_int(a, "version", true, 1, UINT32_MAX, 0);
  if (a->err[0])
    return reply_error("%s", a->err);
  if (!tb_name_valid(image))
    return reply_error("invalid image name \"%.80s\"", image);
  struct tb_manifest *m = tb_manifest_load(d->cfg->state_dir, image, (uint32_t)ver);
  if (!m)
    return reply_error("no version %s@%lld (see tabulactl image list)", image, (long long)ver);
  tb_manifest_free(m);
  struct refs r = {0};
  collect_refs(d, &r);
  if (r.error[0]) {
    tb_vector_free(&r.v);
    return reply_error("%s@%lld not removed: cannot tell which versions are in use (%s); fix or "
                       "move that aside and try again",
                       image, (long long)ver, r.error);
  }
  char why[1024];
  const char *used = refs_of(&r, image, (uint32_t)ver, why, sizeof why);
  json_t *reply;
  char path[TB_PATH_MAX];
  uint64_t bytes = 0;
  if (tb_store_version_path(d->cfg->state_dir, image, (uint32_t)ver, path, sizeof path) == 0)
    bytes = disk_bytes(path);
  if (used) {
    reply = reply_error("%s@%lld is in use, not removed: %s", image, (long long)ver, used);
  } else if (tb_store_remove_version(d->cfg->state_dir, image, (uint32_t)ver) == -1) {
    reply = reply_lib_error();
  } else {
    tb_eventf(d->cfg->state_dir, "image-rm", NULL, "{s:s, s:I, s:I}", "image", image, "version",
              (json_int_t)ver, "bytes", (json_int_t)bytes);
    char msg[256];
    snprintf(msg, sizeof msg, "removed %s@%lld", image, (long long)ver);
    reply = reply_ok(json_pack("{s:s, s:I, s:I, s:s}", "image", image, "version", (json_int_t)ver,
                               "bytes", (json_int_t)bytes, "message", msg));
  }
  tb_vector_free(&r.v);
  return reply;
}

static json_t *op_image_gc(struct daemon *d, struct op_call *a)
{
  static const char *const keys[] = {"dry_run", NULL};
  check_keys(a, keys);
  bool dry = arg_bool(a, "dry_run");
  if (a->err[0])
    return reply_error("%s", a->err);
  const char *state = d->cfg->state_dir;
  struct refs r = {0};
  collect_refs(d, &r);
  if (r.error[0]) {
    tb_vector_free(&r.v);
    return reply_error("image gc removed nothing: it cannot tell which versions are in use (%s); "
                       "fix or move that aside and try again",
                       r.error);
  }
  json_t *removed = json_array();
  json_int_t freed = 0, kept = 0;
  char **names;
  size_t n;
  if (tb_store_images(state, &names, &n) == -1) {
    tb_vector_free(&r.v);
    json_decref(removed);
    return reply_lib_error();
  }
  for (size_t i = 0; i < n; i++) {
    uint32_t *vers;
    size_t nv;
    if (tb_store_versions(state, names[i], &vers, &nv) == -1)
      continue;
    for (size_t k = 0; k < nv; k++) {
      char why[256], path[TB_PATH_MAX];
      if (k + 1 == nv || refs_of(&r, names[i], vers[k], why, sizeof why)) {
        kept++;
        continue;
      }
      uint64_t bytes = tb_store_version_path(state, names[i], vers[k], path, sizeof path) == 0
                           ? disk_bytes(path)
                           : 0;
      if (!dry && tb_store_remove_version(state, names[i], vers[k]) == -1) {
        log_msg("gc: %s", tb_errmsg());
        kept++;
        continue;
      }
      freed += (json_int_t)bytes;
      json_array_append_new(removed, json_pack("{s:s, s:I, s:I}", "image", names[i], "version",
                                               (json_int_t)vers[k], "bytes", (json_int_t)bytes));
    }
    free(vers);
  }
  tb_strv_free(names, n);
  tb_vector_free(&r.v);
  int temps = dry ? 0 : tb_store_gc_temp(state);
  if (!dry)
    tb_eventf(state, "image-gc", NULL, "{s:O, s:I, s:I}", "removed", removed, "freed_bytes", freed,
              "temporaries", (json_int_t)(temps > 0 ? temps : 0));
  return reply_ok(json_pack("{s:b, s:o, s:I, s:I, s:I}", "dry_run", dry, "removed", removed,
                            "freed_bytes", freed, "kept", kept, "temporaries",
                            (json_int_t)(temps > 0 ? temps : 0)));
}

/* ---- events, reload ------------------------------------------------------------------------- */

static json_t *op_events(struct daemon *d, struct op_call *a)
{
  struct conn *conn = a->conn;
  static const char *const keys[] = {"follow", "client", "last", NULL};
  check_keys(a, keys);
  bool follow = arg_bool(a, "follow");
  const char *client = arg_str(a, "client", false);
  int64_t last = arg_int(a, "last", false, 0, 1000000, 20);
  if (a->err[0])
    return reply_error("%s", a->err);
  if (client && !tb_client_id_valid(client))
    return reply_error("invalid client id \"%.80s\"", client);
  json_t *events = journal_last(d->cfg->state_dir, client, (size_t)last);
  if (!follow)
    return reply_ok(json_pack("{s:o}", "events", events));
  size_t i;
  json_t *ev;
  json_array_foreach(events, i, ev) conn_send(conn, json_pack("{s:O}", "event", ev));
  json_decref(events);
  conn_follow(conn, client);
  return NULL;
}

static json_t *op_reload(struct daemon *d, struct op_call *a)
{
  static const char *const keys[] = {NULL};
  check_keys(a, keys);
  if (a->err[0])
    return reply_error("%s", a->err);
  json_t *refused = json_object();
  if (daemon_reload_warn(d, refused) == -1) {
    json_decref(refused);
    return reply_error("%s", tb_errmsg());
  }
  char msg[2048];
  int len = snprintf(msg, sizeof msg, "configuration reloaded from %s (%zu clients)",
                     d->config_file, d->cfg->n_clients);
  const char *id;
  json_t *why;
  json_object_foreach(refused, id, why)
  {
    if (len >= 0 && (size_t)len < sizeof msg)
      len += snprintf(msg + len, sizeof msg - (size_t)len,
                      "\nwarning: client %s is refused until "
                      "this is fixed: %s",
                      id, json_string_value(why));
  }
  return reply_ok(json_pack("{s:s, s:I, s:s, s:o}", "config", d->config_file, "clients",
                            (json_int_t)d->cfg->n_clients, "message", msg, "refused_clients",
                            refused));
}

/* ---- dispatch ------------------------------------------------------------------------------- */

static const struct daemon_op core_ops[] = {
    {"status", op_status},     {"clients", op_clients},
    {"client", op_client},     {"sessions", op_sessions},
    {"rollback", op_rollback}, {"restore", op_restore},
    {"merge", op_merge},       {"reimage", op_reimage},
    {"pin", op_pin},           {"unpin", op_unpin},
    {"refresh", op_refresh},   {"image-rm", op_image_rm},
    {"image-gc", op_image_gc}, {"events", op_events},
    {"reload", op_reload},     {NULL, NULL},
};

/* Every operation the control socket answers: its owners' tables. */
static const struct daemon_op *const op_tables[] = {core_ops, maintenance_ops, scan_ops, canary_ops,
                                                    pxe_ops};

static const struct daemon_op *op_named(const char *name)
{
  for (size_t t = 0; t < sizeof op_tables / sizeof *op_tables; t++)
    for (const struct daemon_op *o = op_tables[t]; o->name; o++)
      if (strcmp(o->name, name) == 0)
        return o;
  return NULL;
}

/* "status, clients, ..., pxe-unknown": the names of every table. */
static void op_names(char *buf, size_t len)
{
  size_t used = 0;
  buf[0] = '\0';
  for (size_t t = 0; t < sizeof op_tables / sizeof *op_tables; t++)
    for (const struct daemon_op *o = op_tables[t]; o->name; o++) {
      int n = snprintf(buf + used, len - used, "%s%s", used ? ", " : "", o->name);
      if (n < 0 || (size_t)n >= len - used)
        return;
      used += (size_t)n;
    }
}

json_t *ops_dispatch(struct daemon *d, struct conn *c, json_t *req)
{
  struct op_call call = {.req = req, .conn = c};
  json_t *op = json_object_get(req, "op");
  if (!json_is_string(op))
    return reply_error("missing \"op\": expected a string such as {\"op\": \"status\"}");
  call.op = json_string_value(op);
  const struct daemon_op *o = op_named(call.op);
  if (o)
    return o->run(d, &call); /* NULL: a job or the event stream answers */
  char names[1024];
  op_names(names, sizeof names);
  return reply_error("unknown operation \"%.64s\" (%s)", call.op, names);
}
