/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-restored: the health of a client's sessions (clients/ID/health.json)
 * and its last known good.
 *
 * How it works.  At a session end the scan thread (scan.c) hands the ended
 * session here (check_health), with the scan of its overlay when one was
 * made.  The session is healthy when the watchdog's health marker exists
 * and, for persist clients, was touched since the last check, and when it
 * lasted min_session.  A healthy session resets the strikes and becomes the
 * last known good (the version, and for persist clients a copy of the
 * overlay in clients/ID/good/overlay); after "strikes" unhealthy sessions in
 * a row the client is pinned to its last good version and a persist client
 * gets its good overlay back (the current one is kept as a retained
 * session).  health.json's "judged" keeps a session from being counted
 * twice.
 *
 * What it promises.  The daemon never writes into an overlay a session
 * holds: the good overlay is copied and put back under the client's lock
 * (client_lock_after) on the very file that was scanned (checked by inode).
 * State files: clients/ID/health.json (strikes, last good, marker identity),
 * clients/ID/good/overlay (and good/overlay.S, overlay.good while a save or
 * a fall-back runs: see "the last known good overlay" below), all written
 * atomically; a health.json that is not plausible counts from nothing with a
 * warning naming it, and at the daemon's start (good_recover) what a crash
 * left half done is finished (tests/powercut-watchdog.sh cuts the power
 * under each writer).  It also owns the small helpers for the JSON records
 * that canary.c and scan.c keep too (daemon.h).
 */
#include <config.h>

#include <dirent.h>
#include <errno.h>
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

/* ---- small file helpers -------------------------------------------------------------- */

json_t *state_load_json(const char *path)
{
  size_t len;
  char *text = tb_read_file(path, 1 << 20, &len);
  json_t *v = text ? json_loadb(text, len, 0, NULL) : NULL;
  free(text);
  return json_is_object(v) ? v : (json_decref(v), NULL);
}

int state_save_json(const char *path, json_t *v)
{
  char *text = json_dumps(v, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
  int r = text ? tb_write_file_atomic(path, text, strlen(text), 0600)
               : tb_error("cannot encode %s", path);
  free(text);
  return r;
}

bool state_same_file(const char *path, dev_t dev, ino_t ino)
{
  struct stat st;
  return stat(path, &st) == 0 && st.st_dev == dev && st.st_ino == ino;
}

/* The client's lock, waiting up to a second while session SESSION is still
 * the client's last (the plugin records a session's end just before it lets
 * go of the lock); -1 if a session holds it. */
int client_lock_after(const char *state, const char *id, uint64_t session)
{
  for (int i = 0;; i++) {
    int fd = tb_client_lock(state, id, false);
    if (fd >= 0 || i >= 20 || tb_client_last_session(state, id) != session)
      return fd;
    usleep(50 * 1000);
  }
}

/* ---- health ---------------------------------------------------------------------------------- */

bool health_configured(const struct tb_watchdog_conf *w)
{
  return w->health_marker || w->health_min_session_ms > 0;
}

int health_path(const char *state, const char *id, char *buf, size_t len)
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
json_t *load_health(const char *state, const char *id, const char *path, bool *recovered)
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
static bool judge(const struct scan_request *rq, const struct tb_client_conf *c,
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
  int lk = client_lock_after(state, id, session);
  if (lk < 0)
    return false; /* a new session already writes it */
  bool ok = tb_clientdir_path(state, id, TB_CF_OVERLAY, ovl, sizeof ovl) == 0 &&
            state_same_file(ovl, s->dev, s->ino) && good_dir(state, id, dir, sizeof dir) == 0 &&
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
    if (state_same_file(retained, st.st_dev, st.st_ino) && unlink(retained) == 0)
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
  int lk = client_lock_after(state, id, session);
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

void check_health(const struct scan_request *rq, const struct tb_client_conf *c,
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
  if (state_save_json(path, health) == -1) {
    log_msg("watchdog: %s", tb_errmsg());
    if (pending[0])
      unlink(pending); /* the record still names the copy before */
  } else if (pending[0] && commit_good(state, c->id, pending) == -1) {
    log_msg("watchdog: %s (the daemon's next start finishes it)", tb_errmsg());
  }
  json_decref(health);
}

/* At the daemon's start: what a crash left of a save of the last known good
 * or of a fall-back to it (see "the last known good overlay"), finished with
 * a warning and a state-recovered event naming the file. */
void good_recover(const struct tb_config *cfg, const struct tb_client_conf *c)
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
      if (state_save_json(hpath, health) == -1)
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
