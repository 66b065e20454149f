/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-restored: the scans of client disks, the actions on what they find,
 * and the quarantine.
 *
 * How it works.  The main loop hands work to one scan thread: a scan of a
 * client at the end of each of its sessions (the journal's "session-end"
 * events, see journal.c) and every "interval" while a session runs (the
 * scan_timer).  A scan opens the client's overlay read-only over its
 * base (lib/rules.h, which inspects disks with the view's code) and
 *   1. evaluates the client's file rules; every hit is a "watchdog-rule"
 *      event (webhooks deliver it like any event) and its action is taken:
 *        alert       the event only;
 *        rollback    mailbox rollback: the next session starts clean;
 *        lockdown    mailbox lockdown with the reason: the plugin refuses the
 *                    export until `tabulactl unlock`;
 *        quarantine  the overlay moves to clients/ID/quarantine/N/overlay with
 *                    note.json saying why; the next session starts clean.
 *   2. at a session end, has health.c judge the session's health;
 *   3. counts the session for a running canary of its version (canary.c).
 * The control operations lockdown, unlock and quarantine-* are here too
 * (scan_ops).
 *
 * The daemon never writes into an overlay a session holds.  A quarantine
 * moves an overlay under the client's lock on the very file that was scanned
 * (checked by inode); when a new session already holds the lock, a rollback
 * client's scanned overlay has been rotated into sessions/ and is taken from
 * there, and otherwise the action waits: the mailbox asks for a clean start
 * and the next session end acts.
 *
 * State files: clients/ID/quarantine/N/{overlay,note.json} and
 * clients/ID/watchdog.json (the last session end done with, so that the
 * daemon's start scans one a crash left unscanned: scan_resume).  At the
 * daemon's start (scan_recover) what a crash left half done of the
 * watchdog's state is finished -- quarantines here, health.json and the last
 * known good by health.c, canary records by canary.c -- with a warning
 * naming each file (tests/powercut-watchdog.sh cuts the power under each
 * writer).
 */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clientdir.h"
#include "daemon.h"
#include "events.h"
#include "mailbox.h"
#include "rules.h"
#include "session.h"
#include "watchdog-conf.h"

#define MAX_QUEUED 256
#define MAX_SEEN 256

/* ---- quarantine ---------------------------------------------------------------------------- */

static int quarantine_dir(const char *state, const char *id, char *buf, size_t len)
{
  return tb_clientdir_path(state, id, TB_CF_QUARANTINE, buf, len);
}

/* Quarantine numbers of a client, ascending (malloc'd). */
static int quarantine_list(const char *state, const char *id, uint64_t **nums, size_t *n)
{
  char dir[TB_PATH_MAX];
  *nums = NULL;
  *n = 0;
  if (quarantine_dir(state, id, dir, sizeof dir) == -1)
    return -1;
  return tb_list_numbers(dir, nums, n);
}

/* Move SRC into clients/ID/quarantine/N/overlay with NOTE; *number gets N. */
static int quarantine_move(const char *state, const char *id, const char *src, json_t *note,
                           uint64_t *number)
{
  char dir[TB_PATH_MAX], qdir[TB_PATH_MAX], dst[TB_PATH_MAX], notep[TB_PATH_MAX];
  uint64_t *nums;
  size_t n;
  if (quarantine_dir(state, id, dir, sizeof dir) == -1 || tb_mkdirs(dir, true) == -1 ||
      quarantine_list(state, id, &nums, &n) == -1)
    return -1;
  /* Numbers are never reused, even after a release: clients/ID/quarantine/seq. */
  char seqp[TB_PATH_MAX];
  if (tb_clientdir_path(state, id, TB_CF_QUARANTINE_SEQ, seqp, sizeof seqp) == -1) {
    free(nums);
    return -1;
  }
  char *text = tb_read_file(seqp, 64, NULL);
  uint64_t last = text ? strtoull(text, NULL, 10) : 0;
  free(text);
  *number = (n && nums[n - 1] > last ? nums[n - 1] : last) + 1;
  free(nums);
  char buf[32];
  int len = snprintf(buf, sizeof buf, "%llu\n", (unsigned long long)*number);
  if (tb_write_file_atomic(seqp, buf, (size_t)len, 0600) == -1)
    return -1;
  if (tb_clientdir_quarantined(state, id, *number, TB_CQ_DIR, qdir, sizeof qdir) == -1 ||
      tb_clientdir_quarantined(state, id, *number, TB_CQ_OVERLAY, dst, sizeof dst) == -1 ||
      tb_clientdir_quarantined(state, id, *number, TB_CQ_NOTE, notep, sizeof notep) == -1)
    return -1;
  if (mkdir(qdir, 0700) == -1)
    return tb_error_errno("cannot create %s", qdir);
  if (tb_fsync_dir(dir) == -1) /* quarantine/N itself survives a power cut */
    return -1;
  json_object_set_new(note, "number", json_integer((json_int_t)*number));
  if (state_save_json(notep, note) == -1) {
    rmdir(qdir); /* no empty quarantine left behind */
    return -1;
  }
  if (rename(src, dst) == -1) {
    int saved = errno;
    unlink(notep);
    rmdir(qdir);
    errno = saved;
    return tb_error_errno("cannot move %s to %s", src, dst);
  }
  /* Both directories: the new name, and the old one gone (SRC no longer
   * exists, so tb_fsync_dir syncs its directory). */
  if (tb_fsync_dir(dst) == -1 || tb_fsync_dir(src) == -1)
    return -1;
  return 0;
}

/* The retained session of ID whose file is DEV/INO, into BUF; false if none. */
static bool find_retained(const char *state, const char *id, dev_t dev, ino_t ino, char *buf,
                          size_t len)
{
  uint64_t *nums;
  size_t n;
  bool found = false;
  if (tb_client_sessions(state, id, &nums, &n) == -1)
    return false;
  for (size_t i = n; i-- > 0 && !found;)
    found =
        tb_clientdir_session(state, id, nums[i], buf, len) == 0 && state_same_file(buf, dev, ino);
  free(nums);
  return found;
}

/* Quarantine the overlay scan S read.  Returns 1 done (*number set), 0
 * deferred (a session holds it: mailbox rollback, the next end acts), -1. */
static int quarantine_scanned(const char *state, const char *id, uint64_t session,
                              const struct tb_scan *s, json_t *note, uint64_t *number)
{
  char path[TB_PATH_MAX];
  int lock = client_lock_after(state, id, session);
  int r = 0;
  if (lock >= 0) {
    if (tb_clientdir_path(state, id, TB_CF_OVERLAY, path, sizeof path) == 0 &&
        state_same_file(path, s->dev, s->ino))
      r = quarantine_move(state, id, path, json_incref(note), number) == 0 ? 1 : -1;
    else if (find_retained(state, id, s->dev, s->ino, path, sizeof path))
      r = quarantine_move(state, id, path, json_incref(note), number) == 0 ? 1 : -1;
    tb_client_unlock(lock);
  } else if (find_retained(state, id, s->dev, s->ino, path, sizeof path)) {
    r = quarantine_move(state, id, path, json_incref(note), number) == 0 ? 1 : -1;
  }
  json_decref(note);
  if (r == 0 && TB_MAILBOX_CHANGE(state, id, .rollback = true) == -1)
    return -1;
  return r;
}

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;

static struct scan_request *queue, **queue_tail = &queue;
static size_t queued;
static bool stopping, started;
static pthread_t thread;

/* Hits already reported by interval scans of a client's current session. */
struct seen {
  char id[TB_NAME_MAX + 1];
  uint64_t session;
  char *hits[MAX_SEEN];
  size_t n;
};
TB_VECTOR(seen_vector, struct seen);
static struct seen_vector seen_by_client;

static struct seen *seen_for(const char *id, uint64_t session)
{
  struct seen *s = NULL;
  for (size_t i = 0; i < seen_by_client.len && !s; i++)
    if (strcmp(seen_by_client.ptr[i].id, id) == 0)
      s = &seen_by_client.ptr[i];
  if (!s) {
    if (tb_vector_reserve(&seen_by_client, 1) == -1)
      return NULL;
    s = &seen_by_client.ptr[seen_by_client.len++];
    memset(s, 0, sizeof *s);
    snprintf(s->id, sizeof s->id, "%s", id);
  }
  if (s->session != session) {
    for (size_t i = 0; i < s->n; i++)
      free(s->hits[i]);
    s->n = 0;
    s->session = session;
  }
  return s;
}

/* True the first time KEY is seen in S (and remembers it). */
static bool seen_first(struct seen *s, const char *key)
{
  if (!s)
    return true;
  for (size_t i = 0; i < s->n; i++)
    if (strcmp(s->hits[i], key) == 0)
      return false;
  if (s->n < MAX_SEEN)
    s->hits[s->n++] = strdup(key);
  return true;
}

/* ---- one scan ------------------------------------------------------------------------------- */

struct scan_ctx {
  const struct scan_request *rq;
  const char *state;
  struct seen *seen;
  json_t *hits; /* [{rule, kind, path, action}] of this scan */
  bool act[4];  /* by enum tb_rule_action */
  char reason[256];
};

/* PATH is the guest's (raw bytes, matched as such by the rule): everything
 * recorded carries it encoded (tb_guest_name), so a name that is not UTF-8
 * or holds terminal escapes is written, never dropped.  A hit that cannot
 * be recorded still acts, and says so (watchdog-error). */
static int on_hit(void *ctx, const struct tb_file_rule *rule, const char *kind, const char *path)
{
  struct scan_ctx *x = ctx;
  char key[TB_PATH_MAX + 128];
  snprintf(key, sizeof key, "%s|%s|%s", rule->name, kind, path);
  bool fresh = seen_first(x->seen, key);
  if (!x->rq->end && !fresh)
    return 0; /* reported by an earlier interval scan of this session */
  const char *action = tb_rule_action_name(rule->action);
  char *enc = tb_guest_name(path);
  const char *shown = enc ? enc : "(a name that could not be encoded: out of memory)";
  if (fresh &&
      tb_eventf(x->state, "watchdog-rule", x->rq->id, "{s:s, s:s, s:s, s:s, s:I, s:s}", "rule",
                rule->name, "kind", kind, "path", shown, "action", action, "session",
                (json_int_t)x->rq->session, "scan", x->rq->end ? "session-end" : "interval") == -1)
    log_msg("watchdog: %s: rule %s hit %s but the event could not be written: %s", x->rq->id,
            rule->name, shown, tb_errmsg());
  json_array_append_new(x->hits, json_pack("{s:s, s:s, s:s, s:s}", "rule", rule->name, "kind", kind,
                                           "path", shown, "action", action));
  if (!x->act[rule->action] && rule->action != TB_RULE_ALERT) {
    snprintf(x->reason, sizeof x->reason, "rule %s: %s %s", rule->name, kind, shown);
    tb_utf8_truncate(x->reason); /* a cut must not leave half a character */
  }
  x->act[rule->action] = true;
  free(enc);
  return 0;
}

/* An action the watchdog decided but could not take or record: an event
 * and the log, never silence. */
static void action_failed(const char *state, const char *id, const char *action, const char *reason)
{
  log_msg("watchdog: %s of %s failed: %s (%s)", action, id, tb_errmsg(), reason);
  tb_eventf(state, "watchdog-error", id, "{s:s, s:s, s:s}", "action", action, "error", tb_errmsg(),
            "reason", reason);
}

static void take_actions(struct scan_ctx *x, const struct tb_scan *s)
{
  const char *state = x->state, *id = x->rq->id;
  if (x->act[TB_RULE_LOCKDOWN]) {
    if (TB_MAILBOX_CHANGE(state, id, .lockdown = x->reason) == 0)
      tb_eventf(state, "lockdown", id, "{s:s, s:s}", "reason", x->reason, "by", "watchdog");
    else
      action_failed(state, id, "lockdown", x->reason);
  }
  if (x->act[TB_RULE_QUARANTINE]) {
    char when[32];
    tb_iso_time(tb_now_ms(), when);
    json_t *note = json_pack("{s:s, s:I, s:s, s:I, s:s, s:s, s:O}", "client", id, "session",
                             (json_int_t)s->info.session, "image", s->info.base.image, "version",
                             (json_int_t)s->info.base.version, "time", when, "reason", x->reason,
                             "hits", x->hits);
    uint64_t number = 0;
    int r = note ? quarantine_scanned(state, id, x->rq->session, s, note, &number)
                 : tb_error("cannot encode the quarantine note");
    if (r == 1)
      tb_eventf(state, "quarantine", id, "{s:I, s:I, s:s}", "number", (json_int_t)number, "session",
                (json_int_t)s->info.session, "reason", x->reason);
    else if (r == 0)
      tb_eventf(state, "quarantine-deferred", id, "{s:I, s:s, s:s}", "session",
                (json_int_t)s->info.session, "reason", x->reason, "applies", "session-end");
    else
      action_failed(state, id, "quarantine", x->reason);
  }
  if (x->act[TB_RULE_ROLLBACK] && !x->act[TB_RULE_QUARANTINE]) {
    if (TB_MAILBOX_CHANGE(state, id, .rollback = true) == 0)
      tb_eventf(state, "rollback", id, "{s:s, s:s, s:s}", "reason", x->reason, "by", "watchdog",
                "applies", "next-session");
    else
      action_failed(state, id, "rollback", x->reason);
  }
}

/* ---- what the watchdog's state holds ----------------------------------------------------- */

void scan_refs(const char *state, const char *id, const struct scan_refs_cb *cb)
{
  char p[TB_PATH_MAX], why[96];
  if (tb_clientdir_path(state, id, TB_CF_GOOD_OVERLAY, p, sizeof p) == 0 && access(p, F_OK) == 0) {
    snprintf(why, sizeof why, "%s (its last known good overlay)", id);
    cb->overlay(cb->ctx, p, why);
  }
  uint64_t *nums;
  size_t n;
  if (quarantine_list(state, id, &nums, &n) == 0) {
    for (size_t k = 0; k < n; k++) {
      if (tb_clientdir_quarantined(state, id, nums[k], TB_CQ_OVERLAY, p, sizeof p) == -1)
        continue;
      snprintf(why, sizeof why, "%s (quarantined overlay %llu)", id, (unsigned long long)nums[k]);
      cb->overlay(cb->ctx, p, why);
    }
  }
  free(nums);
  json_t *health =
      health_path(state, id, p, sizeof p) == 0 && access(p, F_OK) == 0 ? state_load_json(p) : NULL;
  json_t *good = json_object_get(health, "last_good");
  const char *image = json_string_value(json_object_get(good, "image"));
  json_int_t version = json_integer_value(json_object_get(good, "version"));
  if (image && version > 0 && version <= UINT32_MAX) {
    snprintf(why, sizeof why, "%s (its last known good version)", id);
    cb->version(cb->ctx, image, (uint32_t)version, why);
  }
  json_decref(health);
}

/* ---- the worker --------------------------------------------------------------------------------
 */

/* Clients whose last scan was abandoned at its deadline, with the disk the
 * abandoned inspection still computes on (a guest filesystem crafted to keep
 * libtsk busy).  Their scans are skipped until that work ends: a hostile
 * guest keeps at most one inspection thread busy, however short its
 * interval, and cannot use up lib/inspect's global allowance of stuck
 * inspections (TB_INSPECT_MAX_STUCK) that every other client's scans need.
 * Only the worker thread touches the table. */
struct stuck_scan {
  char id[TB_NAME_MAX + 1];
  struct tb_disk *disk;
};
TB_VECTOR(stuck_scan_vector, struct stuck_scan);
static struct stuck_scan_vector stuck_scans;

/* Is ID's last abandoned scan still running?  Forgets it once it ended. */
static bool scan_still_stuck(const char *id)
{
  for (size_t i = 0; i < stuck_scans.len; i++) {
    if (strcmp(stuck_scans.ptr[i].id, id) != 0)
      continue;
    if (tb_disk_stuck(stuck_scans.ptr[i].disk))
      return true;
    tb_disk_unref(stuck_scans.ptr[i].disk);
    stuck_scans.ptr[i] = stuck_scans.ptr[--stuck_scans.len];
    return false;
  }
  return false;
}

/* Remember DISK (a reference, consumed) as ID's stuck scan, with an event. */
static void scan_got_stuck(const char *state, const char *id, uint64_t session,
                           struct tb_disk *disk)
{
  struct stuck_scan st = {.disk = disk};
  snprintf(st.id, sizeof st.id, "%s", id);
  if (tb_vector_push(&stuck_scans, st) == -1) {
    tb_disk_unref(disk);
    return;
  }
  tb_eventf(state, "watchdog-stuck", id, "{s:s, s:I}", "error",
            "inspecting the guest's filesystem did not end by its deadline (damaged or crafted "
            "metadata?): this client's scans are skipped until that work ends",
            "session", (json_int_t)session);
}

/* Open the overlay session SESSION ended with (0: the current overlay).  By
 * the time the scan runs the client may be in its next session: then a
 * rotated overlay is sessions/SESSION, and a persist overlay is the one the
 * new session continues.  NULL with errno ENOENT if there is none. */
static struct tb_scan *open_ended(const char *state, const char *id, uint64_t session,
                                  int64_t budget_ms, struct tb_disk **stuck)
{
  char ovl[TB_PATH_MAX], retained[TB_PATH_MAX];
  if (tb_clientdir_path(state, id, TB_CF_OVERLAY, ovl, sizeof ovl) == -1 ||
      (session && tb_clientdir_session(state, id, session, retained, sizeof retained) == -1))
    return NULL;
  for (int attempt = 0; attempt < 3; attempt++) {
    bool moved_on = session && tb_client_last_session(state, id) != session;
    const char *path = moved_on && access(retained, F_OK) == 0 ? retained : ovl;
    if (access(path, F_OK) == -1) {
      errno = ENOENT;
      return NULL;
    }
    struct tb_scan *s = tb_scan_open(state, path, budget_ms, stuck);
    if (!s || path == retained || !session || tb_client_last_session(state, id) == session ||
        access(retained, F_OK) == -1)
      return s;
    tb_scan_close(s); /* rotated while we opened it: open the retained one */
  }
  return NULL;
}

/* clients/ID/watchdog.json {"ended": S}: the watchdog is done with the end
 * of session S (rules, health, canary).  The queue is in memory, so a
 * session that ended just before a crash would never be scanned or judged:
 * the daemon's start queues the end of a session the record is behind
 * (scan_resume).  Rule actions taken twice are the same; health.json's
 * "judged" keeps a session from being counted twice. */
static void mark_ended(const char *state, const char *id, uint64_t session)
{
  char path[TB_PATH_MAX];
  json_t *v = json_pack("{s:I}", "ended", (json_int_t)session);
  if (tb_clientdir_path(state, id, TB_CF_WATCHDOG, path, sizeof path) == -1 || !v ||
      state_save_json(path, v) == -1)
    log_msg("watchdog: %s", tb_errmsg());
  json_decref(v);
}

static void run_request(struct scan_request *rq)
{
  const char *state = rq->cfg->state_dir;
  const struct tb_client_conf *c = tb_config_client(rq->cfg, rq->id);
  if (!c)
    return;
  struct tb_watchdog_conf w = {0};
  if (tb_watchdog_for(rq->cfg->watchdog, c->watchdog, &w) == -1) {
    log_msg("watchdog: client %s: %s", c->id, tb_errmsg());
    return;
  }
  bool want_scan = w.n_rules > 0 || (rq->end && w.health_marker);
  if (want_scan && scan_still_stuck(c->id)) {
    log_msg("watchdog: client %s: skipping a scan, the last one still runs past its deadline",
            c->id);
    want_scan = false;
  }
  struct tb_scan *s = NULL;
  struct tb_disk *stuck = NULL;
  if (want_scan &&
      !(s = open_ended(state, c->id, rq->end ? rq->session : 0, w.scan_timeout_ms, &stuck)) &&
      errno != ENOENT)
    tb_eventf(state, "watchdog-error", c->id, "{s:s, s:I}", "error", tb_errmsg(), "session",
              (json_int_t)rq->session);
  if (s && w.n_rules > 0) {
    pthread_mutex_lock(&lock);
    struct seen *sn = seen_for(c->id, s->info.session);
    pthread_mutex_unlock(&lock);
    struct scan_ctx x = {.rq = rq, .state = state, .seen = sn, .hits = json_array()};
    int64_t t0 = tb_now_ms();
    if (tb_rules_eval(s, w.rules, w.n_rules, on_hit, &x) != 0)
      tb_eventf(state, "watchdog-error", c->id, "{s:s, s:I}", "error", tb_errmsg(), "session",
                (json_int_t)rq->session);
    const struct tb_diff_stats *ds = &s->diff_stats;
    tb_eventf(state, "watchdog-scan", c->id,
              "{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "scan",
              rq->end ? "session-end" : "interval", "session", (json_int_t)s->info.session, "hits",
              (json_int_t)json_array_size(x.hits), "dirty_bytes",
              (json_int_t)tb_ranges_bytes(&s->dirty), "ms", (json_int_t)(tb_now_ms() - t0),
              "diff_ms", (json_int_t)s->diff_ms, "walk_ms", (json_int_t)s->walk_ms, "index_ms",
              (json_int_t)s->index_ms, "index_files", (json_int_t)s->index_files, "files_examined",
              (json_int_t)ds->files_examined, "dirs_relisted", (json_int_t)ds->dirs_relisted,
              "diff_fallbacks", (json_int_t)ds->fallbacks);
    take_actions(&x, s);
    json_decref(x.hits);
  }
  if (s && !stuck)
    stuck = tb_scan_stuck(s);
  if (stuck)
    scan_got_stuck(state, c->id, rq->session, stuck);
  if (rq->end) {
    bool healthy;
    check_health(rq, c, &w, s, &healthy);
    canary_count(rq, c, &w, s ? s->info.base.image : rq->image,
                 s ? s->info.base.version : rq->version, healthy);
    if (want_scan || health_configured(&w))
      mark_ended(state, c->id, rq->session);
  }
  tb_scan_close(s);
  tb_watchdog_free(&w);
}

static void *worker(void *arg)
{
  (void)arg;
  pthread_mutex_lock(&lock);
  for (;;) {
    while (!queue && !stopping)
      pthread_cond_wait(&cond, &lock);
    if (!queue)
      break;
    struct scan_request *rq = queue;
    if (!(queue = rq->next))
      queue_tail = &queue;
    queued--;
    pthread_mutex_unlock(&lock);
    run_request(rq);
    tb_config_unref(rq->cfg);
    free(rq);
    pthread_mutex_lock(&lock);
  }
  pthread_mutex_unlock(&lock);
  return NULL;
}

/* At the daemon's start: on a filesystem without a journal, a cut between
 * the two directory fsyncs of quarantine_move leaves the quarantined overlay
 * under both names, and the client would go on writing into its quarantine.
 * The move is finished: the client's name goes. */
static void quarantine_unlink_live(const char *state, const char *id)
{
  char ovl[TB_PATH_MAX], q[TB_PATH_MAX];
  struct stat st;
  uint64_t *nums;
  size_t n;
  if (tb_clientdir_path(state, id, TB_CF_OVERLAY, ovl, sizeof ovl) == -1 || stat(ovl, &st) == -1 ||
      st.st_nlink < 2 || quarantine_list(state, id, &nums, &n) == -1)
    return;
  for (size_t k = 0; k < n; k++) {
    if (tb_clientdir_quarantined(state, id, nums[k], TB_CQ_OVERLAY, q, sizeof q) == -1 ||
        !state_same_file(q, st.st_dev, st.st_ino) || unlink(ovl) == -1)
      continue;
    tb_fsync_dir(ovl);
    log_msg("warning: %s: the client's overlay is also quarantined as %s (a quarantine cut by a "
            "crash); the move is finished, the client starts clean",
            ovl, q);
    tb_eventf(state, "state-recovered", id, "{s:s, s:s}", "file", ovl, "problem",
              "overlay also quarantined: the move is finished");
    break;
  }
  free(nums);
}

/* At the daemon's start: the temporaries a crash left of the watchdog's
 * atomic writes (health.json.tmp.XXXXXX, watchdog.json.tmp.XXXXXX,
 * watchdog/canary-IMAGE.json.tmp.XXXXXX). */
static void remove_temps(const char *dir, const char *prefix)
{
  DIR *d = opendir(dir);
  struct dirent *e;
  bool any = false;
  char p[TB_PATH_MAX];
  while (d && (e = readdir(d))) {
    if (strncmp(e->d_name, prefix, strlen(prefix)) != 0 || !strstr(e->d_name, ".json.tmp.") ||
        tb_path(p, sizeof p, "%s/%s", dir, e->d_name) == -1 || unlink(p) == -1)
      continue;
    log_msg("removed %s, left by a write a crash cut", p);
    any = true;
  }
  if (d)
    closedir(d);
  if (any)
    tb_fsync_dir(dir);
}

/* At the daemon's start, before anything moves quarantines: a numbered
 * quarantine without its overlay is what a crash leaves of a release (the
 * overlay went back to sessions/, its note and directory not yet removed) or
 * of a quarantine (the note written, the overlay not yet moved in: it is still
 * where it was).  Either way the step is finished by removing the rest, so
 * no quarantine is ever half moved. */
void scan_recover(const struct tb_config *cfg)
{
  for (size_t i = 0; i < cfg->n_clients; i++) {
    const char *id = cfg->clients[i].id;
    char dir[TB_PATH_MAX];
    uint64_t *nums;
    size_t n;
    if (quarantine_dir(cfg->state_dir, id, dir, sizeof dir) == -1 ||
        quarantine_list(cfg->state_dir, id, &nums, &n) == -1)
      continue;
    bool removed = false;
    for (size_t k = 0; k < n; k++) {
      char qdir[TB_PATH_MAX], ovl[TB_PATH_MAX], note[TB_PATH_MAX];
      const char *state = cfg->state_dir;
      if (tb_clientdir_quarantined(state, id, nums[k], TB_CQ_DIR, qdir, sizeof qdir) == -1 ||
          tb_clientdir_quarantined(state, id, nums[k], TB_CQ_OVERLAY, ovl, sizeof ovl) == -1 ||
          tb_clientdir_quarantined(state, id, nums[k], TB_CQ_NOTE, note, sizeof note) == -1 ||
          access(ovl, F_OK) == 0)
        continue;
      unlink(note);
      remove_temps(qdir, "note.json"); /* a note whose write the crash cut */
      if (rmdir(qdir) == 0) {
        removed = true;
        log_msg("%s: a quarantine of %s without its overlay (a release or a quarantine cut by a "
                "crash) is removed",
                qdir, id);
        tb_eventf(cfg->state_dir, "state-recovered", id, "{s:s, s:s}", "file", qdir, "problem",
                  "quarantine without its overlay");
      }
    }
    free(nums);
    if (removed)
      tb_fsync_dir(dir);
    quarantine_unlink_live(cfg->state_dir, id);
    char hpath[TB_PATH_MAX];
    bool bad = false;
    if (health_path(cfg->state_dir, id, hpath, sizeof hpath) == 0 && access(hpath, F_OK) == 0) {
      json_t *h = load_health(cfg->state_dir, id, hpath, &bad);
      if (bad && state_save_json(hpath, h) == -1)
        log_msg("watchdog: %s", tb_errmsg());
      json_decref(h);
    }
    good_recover(cfg, &cfg->clients[i]);
    char cdir[TB_PATH_MAX];
    if (tb_clientdir_path(cfg->state_dir, id, TB_CF_DIR, cdir, sizeof cdir) == 0) {
      remove_temps(cdir, "health.json");
      remove_temps(cdir, "watchdog.json");
    }
  }
  char wdir[TB_PATH_MAX];
  if (tb_path(wdir, sizeof wdir, "%s/watchdog", cfg->state_dir) == 0) {
    remove_temps(wdir, "canary-");
    canary_check(cfg->state_dir, wdir);
  }
}

int scan_start(void)
{
  if (pthread_create(&thread, NULL, worker, NULL) != 0)
    return tb_error("cannot start the watchdog thread");
  started = true;
  return 0;
}

void scan_stop(void)
{
  if (!started)
    return;
  pthread_mutex_lock(&lock);
  stopping = true;
  pthread_cond_signal(&cond);
  pthread_mutex_unlock(&lock);
  pthread_join(thread, NULL);
  started = false;
  for (size_t i = 0; i < seen_by_client.len; i++)
    for (size_t k = 0; k < seen_by_client.ptr[i].n; k++)
      free(seen_by_client.ptr[i].hits[k]);
  tb_vector_free(&seen_by_client);
}

static void enqueue_cfg(struct tb_config *cfg, const char *id, bool end, uint64_t session,
                        int64_t duration_ms);

static void enqueue(struct daemon *d, const char *id, bool end, uint64_t session,
                    int64_t duration_ms)
{
  enqueue_cfg(d->cfg, id, end, session, duration_ms);
}

/* At the daemon's start: the end of each client's last session, if it
 * ended and the watchdog's record (mark_ended) is behind it. */
void scan_resume(struct tb_config *cfg)
{
  for (size_t i = 0; i < cfg->n_clients; i++) {
    const struct tb_client_conf *c = &cfg->clients[i];
    struct tb_watchdog_conf w = {0};
    if (tb_watchdog_for(cfg->watchdog, c->watchdog, &w) == -1)
      continue;
    bool watched = w.n_rules > 0 || health_configured(&w);
    tb_watchdog_free(&w);
    char sj[TB_PATH_MAX], mark[TB_PATH_MAX];
    if (!watched ||
        tb_clientdir_path(cfg->state_dir, c->id, TB_CF_SESSION_JSON, sj, sizeof sj) == -1 ||
        tb_clientdir_path(cfg->state_dir, c->id, TB_CF_WATCHDOG, mark, sizeof mark) == -1)
      continue;
    json_t *sess = access(sj, F_OK) == 0 ? state_load_json(sj) : NULL;
    json_t *done = access(mark, F_OK) == 0 ? state_load_json(mark) : NULL;
    const char *st = json_string_value(json_object_get(sess, "state"));
    json_int_t n = json_integer_value(json_object_get(sess, "session"));
    json_int_t ended = json_integer_value(json_object_get(sess, "ended_ts"));
    json_int_t began = json_integer_value(json_object_get(sess, "started_ts"));
    json_int_t last = json_integer_value(json_object_get(done, "ended"));
    if (st && strcmp(st, "active") != 0 && n > 0 && ended > 0 && n > last) {
      log_msg("watchdog: %s: session %lld of %s ended before the daemon stopped and was not "
              "scanned; it is scanned now",
              sj, (long long)n, c->id);
      enqueue_cfg(cfg, c->id, true, (uint64_t)n, ended > began ? ended - began : 0);
    }
    json_decref(sess);
    json_decref(done);
  }
}

static void enqueue_cfg(struct tb_config *cfg, const char *id, bool end, uint64_t session,
                        int64_t duration_ms)
{
  struct scan_request *rq = calloc(1, sizeof *rq);
  if (!rq)
    return;
  snprintf(rq->id, sizeof rq->id, "%s", id);
  rq->end = end;
  rq->session = session;
  rq->duration_ms = duration_ms;
  char sj[TB_PATH_MAX];
  json_t *sess = tb_clientdir_path(cfg->state_dir, id, TB_CF_SESSION_JSON, sj, sizeof sj) == 0
                     ? state_load_json(sj)
                     : NULL;
  if (sess && json_integer_value(json_object_get(sess, "session")) == (json_int_t)session) {
    snprintf(rq->image, sizeof rq->image, "%s",
             json_string_value(json_object_get(sess, "image"))
                 ? json_string_value(json_object_get(sess, "image"))
                 : "");
    rq->version = (uint32_t)json_integer_value(json_object_get(sess, "version"));
  }
  json_decref(sess);
  pthread_mutex_lock(&lock);
  if (queued >= MAX_QUEUED || stopping) {
    pthread_mutex_unlock(&lock);
    log_msg("watchdog: queue full, %s of %s not scanned", end ? "session end" : "interval", id);
    free(rq);
    return;
  }
  rq->cfg = tb_config_ref(cfg);
  *queue_tail = rq;
  queue_tail = &rq->next;
  queued++;
  pthread_cond_signal(&cond);
  pthread_mutex_unlock(&lock);
}

void scan_event(struct daemon *d, const json_t *ev)
{
  const char *type = json_string_value(json_object_get(ev, "type"));
  const char *client = json_string_value(json_object_get(ev, "client"));
  if (!type || !client || strcmp(type, "session-end") != 0 || !tb_config_client(d->cfg, client))
    return;
  enqueue(d, client, true, (uint64_t)json_integer_value(json_object_get(ev, "session")),
          json_integer_value(json_object_get(ev, "duration_ms")));
}

/* ---- interval scans of live clients -------------------------------------------------------- */

struct interval {
  char id[TB_NAME_MAX + 1];
  int64_t every_ms, next_ms;
};
static struct interval *intervals;
static size_t n_intervals;
static const struct tb_config *intervals_for;

static void intervals_build(const struct tb_config *cfg, int64_t now)
{
  free(intervals);
  intervals = calloc(cfg->n_clients ? cfg->n_clients : 1, sizeof *intervals);
  n_intervals = 0;
  intervals_for = cfg;
  for (size_t i = 0; intervals && i < cfg->n_clients; i++) {
    struct tb_watchdog_conf w = {0};
    if (tb_watchdog_for(cfg->watchdog, cfg->clients[i].watchdog, &w) == 0 && w.n_rules > 0 &&
        w.interval_ms > 0) {
      struct interval *iv = &intervals[n_intervals++];
      snprintf(iv->id, sizeof iv->id, "%s", cfg->clients[i].id);
      iv->every_ms = w.interval_ms;
      iv->next_ms = now + w.interval_ms;
    }
    tb_watchdog_free(&w);
  }
}

static void scan_tick(struct daemon *d, int64_t now)
{
  if (intervals_for != d->cfg)
    intervals_build(d->cfg, now);
  for (size_t i = 0; i < n_intervals; i++) {
    struct interval *iv = &intervals[i];
    if (now < iv->next_ms)
      continue;
    iv->next_ms = now + iv->every_ms;
    if (tb_client_locked(d->cfg->state_dir, iv->id))
      enqueue(d, iv->id, false, tb_client_last_session(d->cfg->state_dir, iv->id), 0);
  }
}

static int64_t scan_next(const struct daemon *d)
{
  (void)d;
  int64_t next = INT64_MAX;
  for (size_t i = 0; i < n_intervals; i++)
    if (intervals[i].next_ms < next)
      next = intervals[i].next_ms;
  return next;
}

const struct daemon_timer scan_timer = {"watchdog", scan_tick, scan_next};

void scan_free(void)
{
  for (size_t i = 0; i < stuck_scans.len; i++)
    tb_disk_unref(stuck_scans.ptr[i].disk);
  tb_vector_free(&stuck_scans);
  free(intervals);
  intervals = NULL;
  n_intervals = 0;
  intervals_for = NULL;
}

/* ---- control operations (main thread) -------------------------------------------------------- */

static const struct tb_client_conf *req_client(struct daemon *d, json_t *req, const char *op,
                                               json_t **err)
{
  const char *id = req_str(req, "client");
  const struct tb_client_conf *c = NULL;
  if (!id)
    *err = reply_error("%s: missing argument \"client\"", op);
  else if (!tb_client_id_valid(id))
    *err = reply_error("invalid client id \"%.80s\"", id);
  else if (!(c = tb_config_client(d->cfg, id)))
    *err = reply_error("no client \"%s\" in %s (see tabulactl clients)", id, d->config_file);
  return c;
}

static json_t *op_lockdown(struct daemon *d, json_t *req, const char *op, bool lock_it)
{
  static const char *const lock_keys[] = {"client", "reason", NULL};
  static const char *const unlock_keys[] = {"client", NULL};
  json_t *err = req_check_keys(req, op, lock_it ? lock_keys : unlock_keys);
  const struct tb_client_conf *c = err ? NULL : req_client(d, req, op, &err);
  if (!c)
    return err;
  const char *state = d->cfg->state_dir;
  struct tb_mailbox mb;
  if (tb_mailbox_read(state, c->id, &mb) == -1)
    return reply_error("%s", tb_errmsg());
  char msg[512];
  if (lock_it) {
    const char *reason = req_str(req, "reason");
    char why[256];
    snprintf(why, sizeof why, "%s", reason && reason[0] ? reason : "by an administrator");
    if (TB_MAILBOX_CHANGE(state, c->id, .lockdown = why) == -1)
      return reply_error("%s", tb_errmsg());
    tb_eventf(state, "lockdown", c->id, "{s:s, s:s}", "reason", why, "by", "admin");
    snprintf(msg, sizeof msg,
             "%s: locked down (%s); its export is refused from its next "
             "connection until tabulactl unlock %s",
             c->id, why, c->id);
  } else {
    if (!mb.lockdown[0])
      return reply_error("client %s is not locked down", c->id);
    if (TB_MAILBOX_CHANGE(state, c->id, .lockdown = "") == -1)
      return reply_error("%s", tb_errmsg());
    tb_eventf(state, "unlock", c->id, "{s:s}", "was", mb.lockdown);
    snprintf(msg, sizeof msg, "%s: unlocked (was: %.200s)", c->id, mb.lockdown);
  }
  return reply_ok(json_pack("{s:s, s:s}", "client", c->id, "message", msg));
}

static json_t *quarantine_entry(const char *state, const char *id, uint64_t n, bool full)
{
  char path[TB_PATH_MAX];
  if (tb_clientdir_quarantined(state, id, n, TB_CQ_NOTE, path, sizeof path) == -1)
    return NULL;
  json_t *note = state_load_json(path);
  if (!note)
    note = json_pack("{s:s, s:I, s:s}", "client", id, "number", (json_int_t)n, "error",
                     "note.json is missing or unreadable");
  if (!full)
    json_object_del(note, "hits");
  struct stat st;
  if (tb_clientdir_quarantined(state, id, n, TB_CQ_OVERLAY, path, sizeof path) == 0 &&
      stat(path, &st) == 0) {
    json_object_set_new(note, "disk_bytes", json_integer((json_int_t)st.st_blocks * 512));
    if (full)
      json_object_set_new(note, "overlay", json_string(path));
  }
  return note;
}

static json_t *op_quarantine_list(struct daemon *d, json_t *req)
{
  static const char *const keys[] = {"client", NULL};
  json_t *err = req_check_keys(req, "quarantine-list", keys);
  if (err)
    return err;
  const struct tb_client_conf *only = NULL;
  if (json_object_get(req, "client") && !(only = req_client(d, req, "quarantine-list", &err)))
    return err;
  json_t *arr = json_array();
  for (size_t i = 0; i < d->cfg->n_clients; i++) {
    const struct tb_client_conf *c = &d->cfg->clients[i];
    if (only && only != c)
      continue;
    uint64_t *nums;
    size_t n;
    if (quarantine_list(d->cfg->state_dir, c->id, &nums, &n) == -1)
      continue;
    for (size_t k = 0; k < n; k++) {
      json_t *e = quarantine_entry(d->cfg->state_dir, c->id, nums[k], false);
      if (e)
        json_array_append_new(arr, e);
    }
    free(nums);
  }
  return reply_ok(json_pack("{s:o}", "quarantine", arr));
}

static json_t *op_quarantine_show(struct daemon *d, json_t *req, bool release)
{
  static const char *const show_keys[] = {"client", "number", NULL};
  static const char *const release_keys[] = {"client", "number", "restore", NULL};
  const char *op = release ? "quarantine-release" : "quarantine-show";
  json_t *err = req_check_keys(req, op, release ? release_keys : show_keys);
  const struct tb_client_conf *c = err ? NULL : req_client(d, req, op, &err);
  if (!c)
    return err;
  json_t *num = json_object_get(req, "number");
  if (!json_is_integer(num) || json_integer_value(num) < 1)
    return reply_error("%s: argument \"number\" must be a quarantine number (see tabulactl "
                       "quarantine list)",
                       op);
  uint64_t n = (uint64_t)json_integer_value(num);
  const char *state = d->cfg->state_dir;
  char dir[TB_PATH_MAX], qdir[TB_PATH_MAX], ovl[TB_PATH_MAX], note[TB_PATH_MAX];
  if (quarantine_dir(state, c->id, dir, sizeof dir) == -1 ||
      tb_clientdir_quarantined(state, c->id, n, TB_CQ_DIR, qdir, sizeof qdir) == -1 ||
      tb_clientdir_quarantined(state, c->id, n, TB_CQ_OVERLAY, ovl, sizeof ovl) == -1 ||
      tb_clientdir_quarantined(state, c->id, n, TB_CQ_NOTE, note, sizeof note) == -1)
    return reply_error("%s", tb_errmsg());
  if (access(qdir, F_OK) == -1)
    return reply_error("client %s has no quarantined overlay %llu (see tabulactl quarantine list)",
                       c->id, (unsigned long long)n);
  if (!release)
    return reply_ok(quarantine_entry(state, c->id, n, true));
  char msg[512];
  if (json_is_true(json_object_get(req, "restore"))) {
    /* Back through the session machinery: it becomes a retained session
     * and the mailbox restores it at the next session start. */
    struct tb_overlay_info info;
    char dst[TB_PATH_MAX], sessions[TB_PATH_MAX];
    if (tb_overlay_read_info(ovl, &info) == -1)
      return reply_error("%s", tb_errmsg());
    if (info.session == 0)
      return reply_error("quarantined overlay %llu of %s has no session number",
                         (unsigned long long)n, c->id);
    if (tb_clientdir_path(state, c->id, TB_CF_SESSIONS, sessions, sizeof sessions) == -1 ||
        tb_mkdirs(sessions, false) == -1 ||
        tb_clientdir_session(state, c->id, info.session, dst, sizeof dst) == -1)
      return reply_error("%s", tb_errmsg());
    if (access(dst, F_OK) == 0)
      return reply_error("client %s already has a retained session %llu: remove or restore it "
                         "first",
                         c->id, (unsigned long long)info.session);
    if (rename(ovl, dst) == -1)
      return reply_error("cannot move %s to %s: %s", ovl, dst, strerror(errno));
    /* Durable before the mailbox asks for it: a restore of a session that a
     * cut took back would refuse every boot of the client. */
    if (tb_fsync_dir(dst) == -1 || tb_fsync_dir(ovl) == -1)
      return reply_error("%s", tb_errmsg());
    if (TB_MAILBOX_CHANGE(state, c->id, .restore = (int64_t)info.session) == -1)
      return reply_error("%s", tb_errmsg());
    snprintf(msg, sizeof msg,
             "%s: quarantined overlay %llu is retained session %llu again and becomes the "
             "overlay at the next session start",
             c->id, (unsigned long long)n, (unsigned long long)info.session);
  } else {
    snprintf(msg, sizeof msg, "%s: quarantined overlay %llu deleted", c->id, (unsigned long long)n);
  }
  if ((unlink(ovl) == -1 && errno != ENOENT) || (unlink(note) == -1 && errno != ENOENT) ||
      rmdir(qdir) == -1)
    return reply_error("cannot remove %s: %s", qdir, strerror(errno));
  tb_fsync_dir(dir);
  tb_eventf(state, "quarantine-release", c->id, "{s:I, s:b}", "number", (json_int_t)n, "restore",
            json_is_true(json_object_get(req, "restore")));
  return reply_ok(
      json_pack("{s:s, s:I, s:s}", "client", c->id, "number", (json_int_t)n, "message", msg));
}

/* The operations of scans and quarantines (ops.c dispatches through this
 * table). */
static json_t *run_lockdown(struct daemon *d, struct op_call *call)
{
  return op_lockdown(d, call->req, call->op, true);
}

static json_t *run_unlock(struct daemon *d, struct op_call *call)
{
  return op_lockdown(d, call->req, call->op, false);
}

static json_t *run_quarantine_list(struct daemon *d, struct op_call *call)
{
  return op_quarantine_list(d, call->req);
}

static json_t *run_quarantine_show(struct daemon *d, struct op_call *call)
{
  return op_quarantine_show(d, call->req, false);
}

static json_t *run_quarantine_release(struct daemon *d, struct op_call *call)
{
  return op_quarantine_show(d, call->req, true);
}

const struct daemon_op scan_ops[] = {
    {"lockdown", run_lockdown},
    {"unlock", run_unlock},
    {"quarantine-list", run_quarantine_list},
    {"quarantine-show", run_quarantine_show},
    {"quarantine-release", run_quarantine_release},
    {NULL, NULL},
};
