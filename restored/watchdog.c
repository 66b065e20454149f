/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-restored: the watchdog in the daemon -- file rules, their actions,
 * health strikes with last known good, and canary versions.
 *
 * How it works.  The main loop hands work to one watchdog thread: a scan of a
 * client at the end of each of its sessions (the journal's "session-end"
 * events, see journal.c) and every "interval" while a session runs.  A scan
 * opens the client's overlay read-only over its base (lib/rules.h, which
 * inspects disks with the view's code) and
 *   1. evaluates the client's file rules; every hit is a "watchdog-rule"
 *      event (webhooks deliver it like any event) and its action is taken:
 *        alert       the event only;
 *        rollback    mailbox rollback: the next session starts clean;
 *        lockdown    mailbox lockdown with the reason: the plugin refuses the
 *                    export until `tabulactl unlock`;
 *        quarantine  the overlay moves to clients/ID/quarantine/N/overlay with
 *                    note.json saying why; the next session starts clean.
 *   2. at a session end, judges the session's health (the marker file exists
 *      and, for persist clients, was touched since the last check; the session
 *      lasted min_session): a healthy session resets the strikes and becomes
 *      the last known good (the version, and for persist clients a copy of the
 *      overlay in clients/ID/good/overlay); after "strikes" unhealthy sessions
 *      in a row the client is pinned to its last good version and a persist
 *      client gets its good overlay back (the current one is kept as a
 *      retained session);
 *   3. counts the session for a running canary of its version.
 *
 * The daemon never writes into an overlay a session holds.  Moving an overlay
 * (quarantine, last known good) is done under the client's lock on the very
 * file that was scanned (checked by inode); when a new session already holds
 * the lock, a rollback client's scanned overlay has been rotated into
 * sessions/ and is taken from there, and otherwise the action waits: the
 * mailbox asks for a clean start and the next session end acts.
 *
 * Canary versions (`tabulactl image promote IMAGE@N --canary GROUP`): the
 * clients of IMAGE outside GROUP that follow the newest version are pinned
 * (mailbox) to the previous version P, GROUP's clients to N.  The state lives
 * in STATE/watchdog/canary-IMAGE.json.  Healthy sessions on N in GROUP count
 * up to promote_after: then N becomes current for everyone (the pins the
 * canary set are lifted, or set to N if N is not the newest).  Strikes on N
 * count up to withdraw_after: then GROUP is pinned back to P (persist clients
 * also refreshed: their overlays were built on the failing version).  The
 * record keeps the last session it counted of each client ("counted"), so a
 * session end the daemon's start judges again after a cut counts once, and
 * one whose health.json (its judgement) reached the disk before the cut and
 * whose count did not is counted then.
 *
 * State files: clients/ID/health.json (strikes, last good, marker identity),
 * clients/ID/quarantine/N/{overlay,note.json}, clients/ID/good/overlay (and
 * good/overlay.S, overlay.good while a save or a fall-back runs: see "the last
 * known good overlay"), STATE/watchdog/canary-IMAGE.json.  All written
 * atomically; at the daemon's start (watchdog_recover) what a crash left
 * half done is finished, and the records are read back with a plausibility
 * check, what fails it recovered with a warning naming the file
 * (tests/powercut-watchdog.sh cuts the power under each writer).
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
#include "store.h"
#include "watchdog-conf.h"

#define MAX_QUEUED 256
#define MAX_SEEN 256

/* ---- small file helpers -------------------------------------------------------------- */

static json_t *load_json(const char *path)
{
  size_t len;
  char *text = tb_read_file(path, 1 << 20, &len);
  json_t *v = text ? json_loadb(text, len, 0, NULL) : NULL;
  free(text);
  return json_is_object(v) ? v : (json_decref(v), NULL);
}

static int save_json(const char *path, json_t *v)
{
  char *text = json_dumps(v, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
  int r = text ? tb_write_file_atomic(path, text, strlen(text), 0600)
               : tb_error("cannot encode %s", path);
  free(text);
  return r;
}

static bool same_file(const char *path, dev_t dev, ino_t ino)
{
  struct stat st;
  return stat(path, &st) == 0 && st.st_dev == dev && st.st_ino == ino;
}

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
  if (save_json(notep, note) == -1) {
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
    found = tb_clientdir_session(state, id, nums[i], buf, len) == 0 && same_file(buf, dev, ino);
  free(nums);
  return found;
}

/* Quarantine the overlay scan S read.  Returns 1 done (*number set), 0
 * deferred (a session holds it: mailbox rollback, the next end acts), -1. */
/* The client's lock, waiting up to a second while session SESSION is still
 * the client's last (the plugin records a session's end just before it lets
 * go of the lock); -1 if a session holds it. */
static int lock_after(const char *state, const char *id, uint64_t session)
{
  for (int i = 0;; i++) {
    int fd = tb_client_lock(state, id, false);
    if (fd >= 0 || i >= 20 || tb_client_last_session(state, id) != session)
      return fd;
    usleep(50 * 1000);
  }
}

static int quarantine_scanned(const char *state, const char *id, uint64_t session,
                              const struct tb_scan *s, json_t *note, uint64_t *number)
{
  char path[TB_PATH_MAX];
  int lock = lock_after(state, id, session);
  int r = 0;
  if (lock >= 0) {
    if (tb_clientdir_path(state, id, TB_CF_OVERLAY, path, sizeof path) == 0 &&
        same_file(path, s->dev, s->ino))
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

/* ---- the scan queue ------------------------------------------------------------------------ */

struct request {
  struct request *next;
  struct tb_config *cfg; /* a reference: a reload may swap the daemon's cfg */
  char id[TB_NAME_MAX + 1];
  bool end;            /* session end (else an interval scan of a live session) */
  uint64_t session;    /* the session that ended or runs */
  int64_t duration_ms; /* of the session that ended */
  char image[TB_NAME_MAX + 1];
  uint32_t version; /* what it ran on (session.json), 0 if unknown */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t canary_lock = PTHREAD_MUTEX_INITIALIZER; /* canary files */
static struct request *queue, **queue_tail = &queue;
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
static struct seen *seen;
static size_t n_seen;

static struct seen *seen_for(const char *id, uint64_t session)
{
  struct seen *s = NULL;
  for (size_t i = 0; i < n_seen && !s; i++)
    if (strcmp(seen[i].id, id) == 0)
      s = &seen[i];
  if (!s) {
    struct seen *grown = realloc(seen, (n_seen + 1) * sizeof *seen);
    if (!grown)
      return NULL;
    seen = grown;
    s = &seen[n_seen++];
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
  const struct request *rq;
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

/* ---- health ---------------------------------------------------------------------------------- */

static bool health_configured(const struct tb_watchdog_conf *w)
{
  return w->health_marker || w->health_min_session_ms > 0;
}

static int health_path(const char *state, const char *id, char *buf, size_t len)
{
  return tb_clientdir_path(state, id, TB_CF_HEALTH, buf, len);
}

/* Is V what check_health writes?  strikes a count, last_good an image, a
 * version and a session, marker numbers.  WHY says what is wrong. */
static bool health_plausible(json_t *v, char *why, size_t len)
{
  json_t *strikes = json_object_get(v, "strikes"), *good = json_object_get(v, "last_good"),
         *marker = json_object_get(v, "marker");
  if (!json_is_object(v))
    snprintf(why, len, "not a JSON object");
  else if (strikes && (!json_is_integer(strikes) || json_integer_value(strikes) < 0))
    snprintf(why, len, "\"strikes\" is not a count");
  else if (good && (!json_is_object(good) || !json_is_string(json_object_get(good, "image")) ||
                    !tb_name_valid(json_string_value(json_object_get(good, "image"))) ||
                    json_integer_value(json_object_get(good, "version")) < 1 ||
                    json_integer_value(json_object_get(good, "version")) > UINT32_MAX ||
                    json_integer_value(json_object_get(good, "session")) < 1))
    snprintf(why, len, "\"last_good\" does not name an image, a version and a session");
  else if (json_object_get(v, "judged") && json_integer_value(json_object_get(v, "judged")) < 1)
    snprintf(why, len, "\"judged\" is not a session number");
  else if (marker && !json_is_object(marker))
    snprintf(why, len, "\"marker\" is not an object");
  else
    return true;
  return false;
}

/* clients/ID/health.json, checked: a file that does not parse or is not
 * plausible (a damaged disk; an atomic write never tears it) counts from
 * nothing, with a warning and a state-recovered event naming it.  Absent:
 * an empty record.  Never NULL but on allocation failure. */
static json_t *load_health(const char *state, const char *id, const char *path, bool *recovered)
{
  if (recovered)
    *recovered = false;
  size_t len;
  errno = 0;
  char *text = tb_read_file(path, 1 << 20, &len);
  if (!text && errno == ENOENT)
    return json_object();
  bool read = text != NULL;
  json_t *v = read ? json_loadb(text, len, 0, NULL) : NULL;
  free(text);
  char why[128];
  if (!v)
    snprintf(why, sizeof why, "%s", read ? "not JSON" : tb_errmsg());
  if (v && health_plausible(v, why, sizeof why))
    return v;
  json_decref(v);
  log_msg("warning: %s: %s; the health record of %s counts from nothing (strikes 0, no last known "
          "good version)",
          path, why, id);
  tb_eventf(state, "state-recovered", id, "{s:s, s:s}", "file", path, "problem", why);
  if (recovered)
    *recovered = true;
  return json_object();
}

/* Is the session healthy?  WHY says why not. */
static bool judge(const struct request *rq, const struct tb_client_conf *c,
                  const struct tb_watchdog_conf *w, struct tb_scan *s, json_t *health, char *why,
                  size_t len)
{
  if (w->health_marker) {
    struct tb_istat st;
    int e = s ? tb_scan_stat(s, w->health_volume, w->health_marker, &st) : -1;
    if (e != 1) {
      snprintf(why, len, "health marker %s%s%s %s", w->health_volume,
               w->health_volume[0] ? ":" : "", w->health_marker,
               e == 0 ? "is missing" : "cannot be read");
      return false;
    }
    /* A persist client keeps the marker from earlier sessions: it counts only
     * if the guest touched it since the last check. */
    json_t *prev = json_object_get(health, "marker");
    bool same = json_is_object(prev) &&
                json_integer_value(json_object_get(prev, "inum")) == (json_int_t)st.inum &&
                json_integer_value(json_object_get(prev, "mtime")) == st.mtime &&
                json_integer_value(json_object_get(prev, "mtime_ns")) == st.mtime_ns &&
                json_integer_value(json_object_get(prev, "size")) == (json_int_t)st.size;
    json_object_set_new(health, "marker",
                        json_pack("{s:I, s:I, s:I, s:I}", "inum", (json_int_t)st.inum, "mtime",
                                  (json_int_t)st.mtime, "mtime_ns", (json_int_t)st.mtime_ns, "size",
                                  (json_int_t)st.size));
    if (c->policy == TB_POLICY_PERSIST && same) {
      snprintf(why, len, "health marker %s was not touched in this session", w->health_marker);
      return false;
    }
  }
  if (w->health_min_session_ms > 0 && rq->duration_ms < w->health_min_session_ms) {
    snprintf(why, len, "the session lasted %lld ms, less than min_session %lld ms",
             (long long)rq->duration_ms, (long long)w->health_min_session_ms);
    return false;
  }
  return true;
}

/* ---- the last known good overlay --------------------------------------------------------------
 *
 * clients/ID/good/overlay is a copy of the overlay of the session health.json's
 * "last_good" names, and the record is the commit point.  A save of session S
 * builds good/overlay.S (durable: tb_clone_file fsyncs it, and good/ is fsynced
 * for its name), then health.json names S, then good/overlay.S is renamed over
 * good/overlay.  A cut before the record leaves a good/overlay.S the daemon's
 * start removes; one after it, a good/overlay.S the start renames into place
 * (good_recover): the copy and its record never disagree.
 *
 * Putting it back (the fall-back) builds clients/ID/overlay.good, a durable
 * copy of good/overlay: the journal of intent.  Then (good_swap) the current
 * overlay is linked into sessions/N as a restore point and overlay.good is
 * renamed over the overlay.  clients/ID/overlay exists at every point, and a
 * cut anywhere after the journal leaves overlay.good, which the daemon's start
 * swaps in (the session numbers and the pin are the same then: no session ran). */

static int good_dir(const char *state, const char *id, char *buf, size_t len)
{
  return tb_clientdir_path(state, id, TB_CF_GOOD, buf, len);
}

/* Copy the scanned overlay of SESSION to good/overlay.SESSION (persist clients):
 * its path into PENDING; commit_good makes it the last known good once
 * health.json names SESSION. */
static bool save_good(const char *state, const char *id, uint64_t session, const struct tb_scan *s,
                      char *pending, size_t len)
{
  char ovl[TB_PATH_MAX], dir[TB_PATH_MAX];
  pending[0] = '\0';
  int lk = lock_after(state, id, session);
  if (lk < 0)
    return false; /* a new session already writes it */
  bool ok = tb_clientdir_path(state, id, TB_CF_OVERLAY, ovl, sizeof ovl) == 0 &&
            same_file(ovl, s->dev, s->ino) && good_dir(state, id, dir, sizeof dir) == 0 &&
            tb_mkdirs(dir, true) == 0 &&
            tb_clientdir_good_pending(state, id, session, pending, len) == 0 &&
            tb_clone_file(ovl, pending, NULL, NULL) == 0 && tb_fsync_dir(pending) == 0;
  if (!ok) {
    log_msg("watchdog: cannot keep the last known good overlay of %s: %s", id, tb_errmsg());
    if (pending[0])
      unlink(pending);
    pending[0] = '\0';
  }
  tb_client_unlock(lk);
  return ok;
}

/* PENDING (good/overlay.S) becomes good/overlay: health.json names S now. */
static int commit_good(const char *state, const char *id, const char *pending)
{
  char dst[TB_PATH_MAX];
  if (tb_clientdir_path(state, id, TB_CF_GOOD_OVERLAY, dst, sizeof dst) == -1)
    return -1;
  if (rename(pending, dst) == -1)
    return tb_error_errno("cannot rename %s to %s", pending, dst);
  return tb_fsync_dir(dst);
}

/* The current overlay becomes retained session N (a hard link, so the
 * overlay stays where it is) and JOURNAL (overlay.good) replaces it.  The
 * client's lock is held. */
static int good_swap(const char *state, const char *id, const char *journal)
{
  char ovl[TB_PATH_MAX], retained[TB_PATH_MAX], sessions[TB_PATH_MAX];
  uint64_t n = tb_client_last_session(state, id);
  if (tb_clientdir_path(state, id, TB_CF_OVERLAY, ovl, sizeof ovl) == -1 ||
      tb_clientdir_path(state, id, TB_CF_SESSIONS, sessions, sizeof sessions) == -1 ||
      tb_clientdir_session(state, id, n, retained, sizeof retained) == -1)
    return -1;
  struct stat st = {0};
  bool used = stat(ovl, &st) == 0 && (uint64_t)st.st_blocks * 512 > 4096;
  /* A retained session N that is another file: the overlay was put in place
   * after session N ended (an earlier fall-back, whose health.json a crash
   * took back, or a merge's move) and no session ran on it since (a session
   * would have counted past N), so it holds nothing to keep. */
  if (used && n > 0 && access(retained, F_OK) == -1) {
    if (tb_mkdirs(sessions, true) == -1)
      return -1;
    if (link(ovl, retained) == -1)
      return tb_error_errno("cannot keep %s as %s", ovl, retained);
    if (tb_fsync_dir(retained) == -1)
      return -1;
  }
  if (rename(journal, ovl) == -1) {
    int saved = errno;
    if (same_file(retained, st.st_dev, st.st_ino) && unlink(retained) == 0)
      tb_fsync_dir(retained); /* no restore point that is the live overlay */
    errno = saved;
    return tb_error_errno("cannot move %s to %s", journal, ovl);
  }
  return tb_fsync_dir(ovl);
}

/* Put the good overlay back (the current one becomes a retained session). */
static bool restore_good(const char *state, const char *id, uint64_t session)
{
  char good[TB_PATH_MAX], tmp[TB_PATH_MAX], journal[TB_PATH_MAX];
  if (tb_clientdir_path(state, id, TB_CF_GOOD_OVERLAY, good, sizeof good) == -1 ||
      access(good, F_OK) == -1)
    return false;
  int lk = lock_after(state, id, session);
  if (lk < 0)
    return false;
  /* The copy is built under a temporary name (what a cut leaves of it goes
   * with the next turn or gc) and named overlay.good once durable. */
  bool ok = tb_clientdir_path(state, id, TB_CF_OVERLAY_GOOD_TMP, tmp, sizeof tmp) == 0 &&
            tb_clientdir_path(state, id, TB_CF_OVERLAY_GOOD, journal, sizeof journal) == 0 &&
            (unlink(tmp) == 0 || errno == ENOENT) && tb_clone_file(good, tmp, NULL, NULL) == 0 &&
            rename(tmp, journal) == 0 && tb_fsync_dir(journal) == 0 &&
            good_swap(state, id, journal) == 0;
  if (!ok) {
    log_msg("watchdog: cannot restore the last known good overlay of %s: %s", id, tb_errmsg());
    unlink(tmp);
    unlink(journal);
  }
  tb_client_unlock(lk);
  return ok;
}

static void fall_back(const char *state, const struct tb_client_conf *c, uint64_t session,
                      json_t *health)
{
  json_t *good = json_object_get(health, "last_good");
  if (!json_is_object(good)) {
    tb_eventf(state, "last-known-good", c->id, "{s:s}", "error",
              "no healthy session recorded yet: nothing to fall back to");
    return;
  }
  const char *image = json_string_value(json_object_get(good, "image"));
  json_int_t version = json_integer_value(json_object_get(good, "version"));
  bool overlay = c->policy == TB_POLICY_PERSIST && restore_good(state, c->id, session);
  struct tb_mailbox_change ch = {.set_pin = true, .pin = version};
  if (c->policy == TB_POLICY_PERSIST && !overlay)
    ch.refresh = true; /* no good overlay to return to: start clean on the good version */
  if (tb_mailbox_change(state, c->id, &ch, NULL) == -1) {
    log_msg("watchdog: last known good of %s: %s", c->id, tb_errmsg());
    return;
  }
  tb_eventf(state, "last-known-good", c->id, "{s:s, s:I, s:I, s:b}", "image", image ? image : "",
            "version", version, "session", json_integer_value(json_object_get(good, "session")),
            "overlay", overlay);
  json_object_set_new(health, "strikes", json_integer(0));
}

static void check_health(const struct request *rq, const struct tb_client_conf *c,
                         const struct tb_watchdog_conf *w, struct tb_scan *s, bool *healthy)
{
  const char *state = rq->cfg->state_dir;
  *healthy = true;
  if (!health_configured(w))
    return;
  /* A machine's health is its system disk's: a further disk (a games disk
   * has no health marker) is judged only when its own watchdog asks. */
  if (c->disk[0] && !json_object_get(c->watchdog, "health"))
    return;
  char path[TB_PATH_MAX], why[512] = "";
  if (health_path(state, c->id, path, sizeof path) == -1)
    return;
  json_t *health = load_health(state, c->id, path, NULL);
  if (!health)
    return;
  if (json_integer_value(json_object_get(health, "judged")) >= (json_int_t)rq->session) {
    /* A scan the daemon's start resumed: judged once.  Its verdict, for a
     * canary count the cut may have taken (canary_count counts it once). */
    *healthy = json_integer_value(json_object_get(json_object_get(health, "last_good"),
                                                  "session")) == (json_int_t)rq->session;
    json_decref(health);
    return;
  }
  json_object_set_new(health, "judged", json_integer((json_int_t)rq->session));
  *healthy = judge(rq, c, w, s, health, why, sizeof why);
  const char *image = s ? s->info.base.image : rq->image;
  uint32_t version = s ? s->info.base.version : rq->version;
  char pending[TB_PATH_MAX] = "";
  if (*healthy) {
    bool saved = c->policy == TB_POLICY_PERSIST && s &&
                 save_good(state, c->id, rq->session, s, pending, sizeof pending);
    char when[32];
    tb_iso_time(tb_now_ms(), when);
    json_object_set_new(health, "strikes", json_integer(0));
    json_object_set_new(health, "last_good",
                        json_pack("{s:s, s:I, s:I, s:s, s:b}", "image", image, "version",
                                  (json_int_t)version, "session", (json_int_t)rq->session, "time",
                                  when, "overlay", saved));
    tb_eventf(state, "healthy", c->id, "{s:I, s:s, s:I, s:b}", "session", (json_int_t)rq->session,
              "image", image, "version", (json_int_t)version, "saved_overlay", saved);
  } else {
    json_int_t strikes = json_integer_value(json_object_get(health, "strikes")) + 1;
    json_object_set_new(health, "strikes", json_integer(strikes));
    tb_eventf(state, "strike", c->id, "{s:I, s:I, s:I, s:s, s:s, s:I}", "session",
              (json_int_t)rq->session, "strikes", strikes, "of", (json_int_t)w->health_strikes,
              "reason", why, "image", image, "version", (json_int_t)version);
    if (strikes >= w->health_strikes)
      fall_back(state, c, rq->session, health);
  }
  if (save_json(path, health) == -1) {
    log_msg("watchdog: %s", tb_errmsg());
    if (pending[0])
      unlink(pending); /* the record still names the copy before */
  } else if (pending[0] && commit_good(state, c->id, pending) == -1) {
    log_msg("watchdog: %s (the daemon's next start finishes it)", tb_errmsg());
  }
  json_decref(health);
}

/* ---- what the watchdog's state holds ----------------------------------------------------- */

void watchdog_refs(const char *state, const char *id, const struct watchdog_refs_cb *cb)
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
      health_path(state, id, p, sizeof p) == 0 && access(p, F_OK) == 0 ? load_json(p) : NULL;
  json_t *good = json_object_get(health, "last_good");
  const char *image = json_string_value(json_object_get(good, "image"));
  json_int_t version = json_integer_value(json_object_get(good, "version"));
  if (image && version > 0 && version <= UINT32_MAX) {
    snprintf(why, sizeof why, "%s (its last known good version)", id);
    cb->version(cb->ctx, image, (uint32_t)version, why);
  }
  json_decref(health);
}

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
static void canary_count(const struct request *rq, const struct tb_client_conf *c,
                         const struct tb_watchdog_conf *w, const char *image, uint32_t version,
                         bool healthy)
{
  const char *state = rq->cfg->state_dir;
  char path[TB_PATH_MAX];
  if (!image[0] || canary_path(state, image, path, sizeof path) == -1)
    return;
  pthread_mutex_lock(&canary_lock);
  json_t *canary = load_json(path);
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
    if (save_json(path, canary) == -1)
      log_msg("watchdog: %s", tb_errmsg());
  }
  json_decref(canary);
  pthread_mutex_unlock(&canary_lock);
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
static struct stuck_scan *stuck_scans;
static size_t n_stuck_scans;

/* Is ID's last abandoned scan still running?  Forgets it once it ended. */
static bool scan_still_stuck(const char *id)
{
  for (size_t i = 0; i < n_stuck_scans; i++) {
    if (strcmp(stuck_scans[i].id, id) != 0)
      continue;
    if (tb_disk_stuck(stuck_scans[i].disk))
      return true;
    tb_disk_unref(stuck_scans[i].disk);
    stuck_scans[i] = stuck_scans[--n_stuck_scans];
    return false;
  }
  return false;
}

/* Remember DISK (a reference, consumed) as ID's stuck scan, with an event. */
static void scan_got_stuck(const char *state, const char *id, uint64_t session,
                           struct tb_disk *disk)
{
  struct stuck_scan *grown = realloc(stuck_scans, (n_stuck_scans + 1) * sizeof *stuck_scans);
  if (!grown) {
    tb_disk_unref(disk);
    return;
  }
  stuck_scans = grown;
  struct stuck_scan *st = &stuck_scans[n_stuck_scans++];
  snprintf(st->id, sizeof st->id, "%s", id);
  st->disk = disk;
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
 * (watchdog_resume).  Rule actions taken twice are the same; health.json's
 * "judged" keeps a session from being counted twice. */
static void mark_ended(const char *state, const char *id, uint64_t session)
{
  char path[TB_PATH_MAX];
  json_t *v = json_pack("{s:I}", "ended", (json_int_t)session);
  if (tb_clientdir_path(state, id, TB_CF_WATCHDOG, path, sizeof path) == -1 || !v ||
      save_json(path, v) == -1)
    log_msg("watchdog: %s", tb_errmsg());
  json_decref(v);
}

static void run_request(struct request *rq)
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
    struct request *rq = queue;
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
        !same_file(q, st.st_dev, st.st_ino) || unlink(ovl) == -1)
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

/* At the daemon's start: what a crash left of a save of the last known good
 * or of a fall-back to it (see "the last known good overlay"), finished with
 * a warning and a state-recovered event naming the file. */
static void good_recover(const struct tb_config *cfg, const struct tb_client_conf *c)
{
  const char *state = cfg->state_dir, *id = c->id;
  char dir[TB_PATH_MAX], hpath[TB_PATH_MAX], journal[TB_PATH_MAX], p[TB_PATH_MAX];
  if (good_dir(state, id, dir, sizeof dir) == -1 ||
      health_path(state, id, hpath, sizeof hpath) == -1 ||
      tb_clientdir_path(state, id, TB_CF_OVERLAY_GOOD, journal, sizeof journal) == -1)
    return;
  json_t *health = NULL;
  json_int_t named = 0;
  DIR *d = opendir(dir);
  struct dirent *e;
  while (d && (e = readdir(d))) {
    const char *num = strncmp(e->d_name, "overlay.", 8) == 0 ? e->d_name + 8 : NULL;
    bool saving = num && *num && strspn(num, "0123456789") == strlen(num);
    if ((!saving && strcmp(e->d_name, ".overlay.tmp") != 0) ||
        tb_path(p, sizeof p, "%s/%s", dir, e->d_name) == -1)
      continue;
    if (!health) {
      health = load_health(state, id, hpath, NULL);
      json_t *lg = json_object_get(health, "last_good");
      if (json_is_true(json_object_get(lg, "overlay")))
        named = json_integer_value(json_object_get(lg, "session"));
    }
    if (saving && strtoll(num, NULL, 10) == named && named > 0) {
      if (commit_good(state, id, p) == 0) {
        log_msg("warning: %s: the save of %s's last known good overlay (session %s) was cut by a "
                "crash after health.json recorded it; it is finished",
                p, id, num);
        tb_eventf(state, "state-recovered", id, "{s:s, s:s}", "file", p, "problem",
                  "last known good saved, not yet in place: finished");
      } else {
        log_msg("watchdog: %s", tb_errmsg());
      }
    } else if (unlink(p) == 0) {
      tb_fsync_dir(p);
      log_msg("warning: %s: a save of %s's last known good overlay cut by a crash before "
              "health.json recorded it is removed (the last known good stays the one recorded)",
              p, id);
      tb_eventf(state, "state-recovered", id, "{s:s, s:s}", "file", p, "problem",
                "unfinished save of the last known good: removed");
    }
  }
  if (d)
    closedir(d);
  if (access(journal, F_OK) == 0) {
    int lk = tb_client_lock(state, id, false);
    if (lk == -1) {
      log_msg("%s: the interrupted fall-back of %s to its last known good waits: %s", journal, id,
              tb_errmsg());
    } else if (good_swap(state, id, journal) == 0) {
      if (!health)
        health = load_health(state, id, hpath, NULL);
      json_t *lg = json_object_get(health, "last_good");
      json_int_t version = json_integer_value(json_object_get(lg, "version"));
      if (version > 0 && version <= UINT32_MAX &&
          TB_MAILBOX_CHANGE(state, id, .set_pin = true, .pin = (uint32_t)version) == -1)
        log_msg("watchdog: %s", tb_errmsg());
      json_object_set_new(health, "strikes", json_integer(0));
      if (save_json(hpath, health) == -1)
        log_msg("watchdog: %s", tb_errmsg());
      log_msg("warning: %s: the fall-back of %s to its last known good overlay was cut by a "
              "crash; it is finished (the overlay it replaced is kept in sessions/)",
              journal, id);
      tb_eventf(state, "state-recovered", id, "{s:s, s:s}", "file", journal, "problem",
                "fall-back to the last known good cut by a crash: finished");
      tb_eventf(state, "last-known-good", id, "{s:s, s:I, s:I, s:b, s:b}", "image",
                json_string_value(json_object_get(lg, "image"))
                    ? json_string_value(json_object_get(lg, "image"))
                    : "",
                "version", version, "session", json_integer_value(json_object_get(lg, "session")),
                "overlay", 1, "recovered", 1);
    } else {
      log_msg("watchdog: cannot finish the fall-back of %s to its last known good: %s", id,
              tb_errmsg());
      tb_eventf(state, "error", id, "{s:s}", "error", tb_errmsg());
    }
    tb_client_unlock(lk);
  }
  json_decref(health);
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

/* At the daemon's start: every STATE/watchdog/canary-IMAGE.json read back
 * with a plausibility check (its image, a version above its previous one, a
 * group, a state).  One that fails it is moved aside to
 * canary-IMAGE.json.bad, with a warning and a state-recovered event naming
 * it: the pins it set stay until an administrator promotes a version. */
static void canary_check(const char *state, const char *dir)
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
    json_t *v = load_json(path);
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

/* At the daemon's start, before anything moves quarantines: a numbered
 * quarantine without its overlay is what a crash leaves of a release (the
 * overlay went back to sessions/, its note and directory not yet removed) or
 * of a quarantine (the note written, the overlay not yet moved in: it is still
 * where it was).  Either way the step is finished by removing the rest, so
 * no quarantine is ever half moved. */
void watchdog_recover(const struct tb_config *cfg)
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
      if (bad && save_json(hpath, h) == -1)
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

int watchdog_start(void)
{
  if (pthread_create(&thread, NULL, worker, NULL) != 0)
    return tb_error("cannot start the watchdog thread");
  started = true;
  return 0;
}

void watchdog_stop(void)
{
  if (!started)
    return;
  pthread_mutex_lock(&lock);
  stopping = true;
  pthread_cond_signal(&cond);
  pthread_mutex_unlock(&lock);
  pthread_join(thread, NULL);
  started = false;
  for (size_t i = 0; i < n_seen; i++)
    for (size_t k = 0; k < seen[i].n; k++)
      free(seen[i].hits[k]);
  free(seen);
  seen = NULL;
  n_seen = 0;
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
void watchdog_resume(struct tb_config *cfg)
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
    json_t *sess = access(sj, F_OK) == 0 ? load_json(sj) : NULL;
    json_t *done = access(mark, F_OK) == 0 ? load_json(mark) : NULL;
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
  struct request *rq = calloc(1, sizeof *rq);
  if (!rq)
    return;
  snprintf(rq->id, sizeof rq->id, "%s", id);
  rq->end = end;
  rq->session = session;
  rq->duration_ms = duration_ms;
  char sj[TB_PATH_MAX];
  json_t *sess = tb_clientdir_path(cfg->state_dir, id, TB_CF_SESSION_JSON, sj, sizeof sj) == 0
                     ? load_json(sj)
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

void watchdog_event(struct daemon *d, const json_t *ev)
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

static void watchdog_tick(struct daemon *d, int64_t now)
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

static int64_t watchdog_next(const struct daemon *d)
{
  (void)d;
  int64_t next = INT64_MAX;
  for (size_t i = 0; i < n_intervals; i++)
    if (intervals[i].next_ms < next)
      next = intervals[i].next_ms;
  return next;
}

const struct daemon_timer watchdog_timer = {"watchdog", watchdog_tick, watchdog_next};

void watchdog_free(void)
{
  for (size_t i = 0; i < n_stuck_scans; i++)
    tb_disk_unref(stuck_scans[i].disk);
  free(stuck_scans);
  stuck_scans = NULL;
  n_stuck_scans = 0;
  free(intervals);
  intervals = NULL;
  n_intervals = 0;
  intervals_for = NULL;
}

/* ---- control operations (main thread) -------------------------------------------------------- */

static const char *req_str(json_t *req, const char *key)
{
  return json_string_value(json_object_get(req, key));
}

/* Only KEYS (and "op") in REQ; else an error reply. */
static json_t *check_req(json_t *req, const char *op, const char *const *keys)
{
  const char *key;
  json_t *v;
  json_object_foreach(req, key, v)
  {
    bool known = strcmp(key, "op") == 0;
    for (size_t i = 0; keys[i] && !known; i++)
      known = strcmp(keys[i], key) == 0;
    if (!known)
      return reply_error("%s: unknown argument \"%.64s\"", op, key);
  }
  return NULL;
}

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
  json_t *err = check_req(req, op, lock_it ? lock_keys : unlock_keys);
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
  json_t *note = load_json(path);
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
  json_t *err = check_req(req, "quarantine-list", keys);
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
  json_t *err = check_req(req, op, release ? release_keys : show_keys);
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
              : save_json(path, canary);
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
  json_t *err = check_req(req, "image-promote", keys);
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
  json_t *canary = load_json(path), *reply;
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
    if (running && save_json(path, canary) == -1)
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

/* The operations of the watchdog (ops.c dispatches through this table). */
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

static json_t *run_promote(struct daemon *d, struct op_call *call)
{
  return op_promote(d, call->req);
}

const struct daemon_op watchdog_ops[] = {
    {"lockdown", run_lockdown},
    {"unlock", run_unlock},
    {"quarantine-list", run_quarantine_list},
    {"quarantine-show", run_quarantine_show},
    {"quarantine-release", run_quarantine_release},
    {"image-promote", run_promote},
    {NULL, NULL},
};
