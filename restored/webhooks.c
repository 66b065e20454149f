/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-restored: webhooks -- every event POSTed as JSON to configured URLs.
 *
 * The journal is the queue.  Each URL has one thread that reads
 * STATE/events.jsonl itself, one line at a time, from a position of its own:
 * the generation (named by the sha256 of its first line, which a rename and
 * logrotate's copy both keep; the inode as a hint) and the byte offset.  An
 * event is delivered once the journal holds it durably (the worker
 * fdatasyncs the generation first: its writers do not), and the position is
 * saved (STATE/webhooks/HASH.pos, written atomically) after every delivery,
 * so a power cut never leaves a delivered event out of the journal nor a
 * position past the journal's end; while it cannot be saved, nothing more
 * is delivered (a restart sends again only the event before the failure).
 * A stalled or dead endpoint costs no memory (one line, at most MAX_LINE
 * bytes, is in memory per URL) and loses
 * nothing across a restart of the daemon, our rotation or an external
 * logrotate (rename or copytruncate): when the thread reaches the end of a
 * generation that is no longer the live file, it goes on with the next newer
 * one (.K-1 after .K, the live file after .1); a live file truncated in place
 * is finished from its copy.  The main loop wakes the threads as often as the
 * tailer (journal.c) looks for new lines, just after it (webhooks_timer).
 *
 * Something is lost only when an endpoint is so far behind that the
 * generation it was reading has been rotated out (events.keep): it then
 * resumes at the oldest generation kept and a "webhook-gap" event says so,
 * with the number of events skipped ("lost", from the tailer's record of the
 * generations; null when unknown, e.g. across a restart).
 *
 * A delivery is a POST with Content-Type: application/json, the event's JSON
 * line as the body, X-Tabula-Event: TYPE, and, with a secret,
 *   X-Tabula-Signature: sha256=HEX(HMAC-SHA256(secret, body))
 * A 2xx answer is success.  Another answer (a 500) is retried up to "retries"
 * times (default 3) after 1 s, 2 s, 4 s ... (at most 60 s), then counted as
 * failed and passed over.  No answer at all (refused, timeout) is retried
 * until the endpoint is back, with the same backoff: the journal holds what
 * waits.  Events behind a waiting retry wait too, so each URL sees events in
 * order, each once (at least once if the daemon is killed between an answer
 * and the save of the position).
 *
 * A reload replaces the set of workers; old workers are told to stop, finish
 * the request in flight (bounded by its timeout), save their position and free
 * themselves; a new worker for the same URL waits for that, then starts where
 * the old one stopped.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "daemon.h"
#include "journal.h"
#include "events.h"

#define DEFAULT_TIMEOUT_MS 5000
#define DEFAULT_RETRIES 3
#define BACKOFF_MAX_MS 60000
#define IDLE_WAIT_MS 1000
#define READ_CHUNK 65536
#define MAX_LINE (1024 * 1024)

struct gen {
  char path[TB_PATH_MAX];
  ino_t ino;
  char fp[65];
};

struct worker {
  char *url, *secret, *state;
  char pos_path[TB_PATH_MAX];
  int64_t timeout_ms;
  int retries;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  bool stop, kick;
  /* the position (worker thread only) */
  int fd;          /* the generation being read, or -1 */
  ino_t ino;       /* its inode */
  char fp[65];     /* its fingerprint, "" while unknown */
  uint64_t off;    /* the next line starts here */
  uint64_t synced; /* the generation is durable up to here (fdatasync) */
  bool sync_error; /* its fdatasync failed (logged once) */
  bool skipping;   /* inside a line longer than MAX_LINE */
  char *buf;       /* one line */
  bool pos_error;  /* the position file could not be written (logged once) */
  /* counters (under lock) */
  uint64_t sent, failed, dropped, retried, gaps;
  bool busy;                /* an event is being delivered or waits for a retry */
  bool idle;                /* at the end of the journal */
  struct worker *next_live; /* every thread still running (under totals_lock) */
  bool retired;             /* told to stop (under totals_lock) */
  char last_error[256];
};

static struct worker **workers;
static size_t n_workers;
/* Counters of retired workers, so totals survive a reload; live threads. */
static uint64_t old_sent, old_failed, old_dropped;
static size_t running;
static struct worker *threads; /* running threads, new and retired */
static pthread_mutex_t totals_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t totals_cond = PTHREAD_COND_INITIALIZER;

static void sign(const char *secret, const char *body, char out[80])
{
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)body, strlen(body), mac,
       &len);
  strcpy(out, "sha256=");
  tb_hex(mac, len, out + 7);
}

static size_t discard_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
  return size * nmemb;
}

/* One POST of BODY (LEN bytes); returns 0 on a 2xx answer, 1 on another
 * answer, -1 on none (refused, timeout...), with the message (tb_errmsg)
 * set for 1 and -1. */
static int deliver(struct worker *w, const char *type, const char *body, size_t len)
{
  CURL *curl = curl_easy_init();
  if (!curl)
    return tb_error("%s: curl_easy_init failed", w->url);
  struct curl_slist *h = NULL;
  char line[512];
  h = curl_slist_append(h, "Content-Type: application/json");
  snprintf(line, sizeof line, "X-Tabula-Event: %s", type);
  h = curl_slist_append(h, line);
  if (w->secret) {
    char sig[80];
    sign(w->secret, body, sig);
    snprintf(line, sizeof line, "X-Tabula-Signature: %s", sig);
    h = curl_slist_append(h, line);
  }
  h = curl_slist_append(h, "Expect:");
  curl_easy_setopt(curl, CURLOPT_URL, w->url);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)len);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long)w->timeout_ms);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, (long)w->timeout_ms);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, discard_body);
  curl_easy_setopt(curl, CURLOPT_USERAGENT, "tabula-restored/" PACKAGE_VERSION);
#if LIBCURL_VERSION_NUM >= 0x075500
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
#else
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
  CURLcode rc = curl_easy_perform(curl);
  long status = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(h);
  curl_easy_cleanup(curl);
  if (rc != CURLE_OK)
    return tb_error("%s: %s", w->url, curl_easy_strerror(rc));
  if (status < 200 || status > 299) {
    tb_error("%s: HTTP status %ld", w->url, status);
    return 1;
  }
  return 0;
}

/* Sleep up to MS, or until told to stop (or, if KICKABLE, until new lines
 * arrive).  Returns true if stopping. */
static bool wait_or_stop(struct worker *w, int64_t ms, bool kickable)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += ms / 1000;
  ts.tv_nsec += (ms % 1000) * 1000000;
  if (ts.tv_nsec >= 1000000000) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000;
  }
  pthread_mutex_lock(&w->lock);
  while (!w->stop && !(kickable && w->kick) && pthread_cond_timedwait(&w->cond, &w->lock, &ts) == 0)
    ;
  if (kickable)
    w->kick = false;
  bool stop = w->stop;
  pthread_mutex_unlock(&w->lock);
  return stop;
}

static bool stopping(struct worker *w)
{
  pthread_mutex_lock(&w->lock);
  bool stop = w->stop;
  pthread_mutex_unlock(&w->lock);
  return stop;
}

/* ---- the position ---- */

static void save_position(struct worker *w)
{
  json_t *j = json_pack("{s:s, s:s, s:I, s:I}", "url", w->url, "generation", w->fp, "inode",
                        (json_int_t)w->ino, "offset", (json_int_t)w->off);
  char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
  json_decref(j);
  if (!text || tb_write_file_atomic(w->pos_path, text, strlen(text), 0600) == -1) {
    if (!w->pos_error)
      log_msg("webhook %s: cannot save its journal position: %s; its events wait until it can",
              w->url, text ? tb_errmsg() : "out of memory");
    w->pos_error = true;
  } else {
    if (w->pos_error)
      log_msg("webhook %s: its journal position is saved again: delivering", w->url);
    w->pos_error = false;
  }
  free(text);
}

/* The generations of the journal, newest (the live file) first; stops at the
 * first one missing.  Returns how many were found. */
static size_t list_generations(const struct worker *w, struct gen *g, size_t max)
{
  size_t n = 0;
  for (size_t k = 0; k < max; k++) {
    int r = k ? tb_path(g[n].path, sizeof g[n].path, "%s/events.jsonl.%zu", w->state, k)
              : tb_path(g[n].path, sizeof g[n].path, "%s/events.jsonl", w->state);
    if (r == -1)
      break;
    int f = open(g[n].path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (f == -1) {
      if (k == 0)
        continue; /* no live file right now (between a rename and the next append) */
      break;
    }
    struct stat st;
    if (fstat(f, &st) == 0 && S_ISREG(st.st_mode)) {
      g[n].ino = st.st_ino;
      journal_fingerprint(f, g[n].fp);
      n++;
    }
    close(f);
  }
  return n;
}

static void report_gap(struct worker *w, int64_t lost, const char *resumed)
{
  pthread_mutex_lock(&w->lock);
  w->gaps++;
  if (lost > 0)
    w->dropped += (uint64_t)lost;
  pthread_mutex_unlock(&w->lock);
  char count[32] = "an unknown number of";
  if (lost >= 0)
    snprintf(count, sizeof count, "%lld", (long long)lost);
  log_msg("webhook %s: the journal was rotated past events it had not delivered (%s events "
          "lost); it resumes at %s (keep more generations with events.keep)",
          w->url, count, resumed);
  json_t *f = json_pack("{s:s, s:s, s:s}", "url", w->url, "resumed_at", resumed, "reason",
                        "the journal was rotated past events not yet delivered");
  json_object_set_new(f, "lost", lost >= 0 ? json_integer(lost) : json_null());
  tb_event(w->state, "webhook-gap", NULL, f);
}

/* Open generation G at offset OFF as the one being read. */
static int open_generation(struct worker *w, const struct gen *g, uint64_t off)
{
  int f = open(g->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (f == -1)
    return -1;
  struct stat st;
  if (fstat(f, &st) == -1 || st.st_ino != g->ino) {
    close(f); /* rotated while we looked: look again */
    return -1;
  }
  if (w->fd != -1)
    close(w->fd);
  w->fd = f;
  w->ino = g->ino;
  snprintf(w->fp, sizeof w->fp, "%s", g->fp);
  w->off = off;
  w->synced = 0;
  w->skipping = false;
  return 0;
}

/* Make the journal durable up to END before an event that ends there is
 * delivered: the writers append without fsync (a cut loses the newest
 * lines), and a receiver must not get an event the journal then loses, nor
 * the saved position run ahead of what the journal kept (it resumed in the
 * middle of the lines appended after the cut, or from the start of the
 * generation: every event again).  One fdatasync covers every line the
 * generation held at that moment.  False (with a message) if it failed: the
 * event waits (a filesystem without fsync, EINVAL, does not hold it back). */
static bool make_durable(struct worker *w, uint64_t end)
{
  struct stat st;
  if (end <= w->synced)
    return true;
  if (fstat(w->fd, &st) == -1) {
    tb_error_errno("cannot stat the journal");
    return false;
  }
  if (fdatasync(w->fd) == -1 && errno != EINVAL) {
    tb_error_errno("cannot fdatasync the journal");
    return false;
  }
  w->synced = (uint64_t)st.st_size;
  return true;
}

/* Find the generation of the saved position (by fingerprint, else by inode);
 * gone: resume at the oldest kept, reporting the gap.  -1: nothing to read. */
static int locate(struct worker *w)
{
  struct gen *g = calloc(TB_EVENTS_MAX_KEEP + 1, sizeof *g);
  if (!g)
    return -1;
  size_t n = list_generations(w, g, TB_EVENTS_MAX_KEEP + 1);
  int rc = -1;
  if (n) {
    size_t found = n;
    for (size_t k = 0; k < n; k++) {
      bool match = w->fp[0] ? strcmp(g[k].fp, w->fp) == 0 : g[k].ino == w->ino;
      if (match && (found == n || g[k].ino == w->ino))
        found = k;
    }
    uint64_t off = w->off;
    bool gap = found == n;
    if (gap) {
      found = n - 1;
      if (w->fp[0])
        report_gap(w, journal_lines_between(w->fp, g[found].fp[0] ? g[found].fp : NULL),
                   g[found].path);
      off = 0;
    }
    rc = open_generation(w, &g[found], off);
    if (rc == 0 && gap)
      save_position(w);
  }
  free(g);
  return rc;
}

/* Has F (a rotated generation) not changed for a second? */
static bool settled(int f)
{
  struct stat st;
  struct timespec now;
  if (fstat(f, &st) == -1 || clock_gettime(CLOCK_REALTIME, &now) == -1)
    return true;
  int64_t age_ms = ((int64_t)now.tv_sec - st.st_mtim.tv_sec) * 1000 +
                   ((int64_t)now.tv_nsec - st.st_mtim.tv_nsec) / 1000000;
  return age_ms >= 1000;
}

/* At the end of what the current generation holds: move on if it is no
 * longer the live file.  Returns true if there is something new to read. */
static bool next_generation(struct worker *w)
{
  struct gen *g = calloc(TB_EVENTS_MAX_KEEP + 1, sizeof *g);
  if (!g)
    return false;
  size_t n = list_generations(w, g, TB_EVENTS_MAX_KEEP + 1);
  const struct gen *live = n && !strstr(g[0].path, ".jsonl.") ? &g[0] : NULL;
  bool moved = false;
  if (live && live->ino == w->ino) {
    struct stat st;
    bool truncated = (w->fp[0] && strcmp(live->fp, w->fp) != 0) ||
                     (fstat(w->fd, &st) == 0 && (uint64_t)st.st_size < w->off);
    if (truncated) {
      /* copytruncate: the rest of this generation is in its copy */
      size_t k = 1;
      while (k < n && !(w->fp[0] && strcmp(g[k].fp, w->fp) == 0))
        k++;
      if (k < n) {
        moved = open_generation(w, &g[k], w->off) == 0;
      } else {
        report_gap(w, -1, live->path); /* truncated without a copy */
        moved = open_generation(w, live, 0) == 0;
      }
    }
  } else if (n && !settled(w->fd)) {
    /* Ours was just rotated: a writer that opened it before the rename may
     * still append its line (lib/events.c); look again at the next wake. */
  } else if (n) {
    /* Ours was rotated (renamed, or it is a copy): go on with the next newer
     * generation. */
    size_t k = n;
    for (size_t i = 0; i < n; i++)
      if (g[i].ino == w->ino && (!w->fp[0] || strcmp(g[i].fp, w->fp) == 0))
        k = i;
    const struct gen *next = NULL;
    if (k < n && k > 0) {
      next = &g[k - 1];
    } else if (k == n) {
      /* ours was rotated out: what was between it and the oldest kept is lost */
      next = &g[n - 1];
      int64_t lost = w->fp[0] ? journal_lines_between(w->fp, next->fp[0] ? next->fp : NULL) : 0;
      if (lost != 0)
        report_gap(w, lost, next->path);
    } /* k == 0: ours is the newest there is (the live file is being recreated) */
    moved = next && open_generation(w, next, 0) == 0;
  }
  if (moved)
    save_position(w);
  free(g);
  return moved;
}

/* The next complete line at the position: 1 (LEN set; the line ends with a
 * newline or a NUL, what a crash can leave), 0 none yet. */
static int next_line(struct worker *w, size_t *len)
{
  size_t have = 0;
  for (;;) {
    size_t want = have + READ_CHUNK > MAX_LINE ? MAX_LINE - have : READ_CHUNK;
    ssize_t got = want ? pread(w->fd, w->buf + have, want, (off_t)(w->off + have)) : 0;
    if (got < 0)
      return 0;
    for (size_t i = have; i < have + (size_t)got; i++) {
      if (w->buf[i] == '\n' || w->buf[i] == '\0') {
        w->buf[i] = '\0';
        *len = i;
        return 1;
      }
    }
    have += (size_t)got;
    if (have < MAX_LINE && got > 0)
      continue;
    if (have < MAX_LINE)
      return 0; /* an incomplete line: wait for the rest */
    /* Longer than any event: pass it over. */
    log_msg("webhook %s: a journal line at offset %llu is longer than %d bytes; passed over",
            w->url, (unsigned long long)w->off, MAX_LINE);
    w->off += have;
    w->skipping = true;
    have = 0;
  }
}

/* Deliver one event until it is sent, refused for good, or we stop.
 * Returns false if stopping (the event stays unsent). */
static bool send_event(struct worker *w, const char *type, const char *body, size_t len)
{
  int64_t backoff = 1000;
  int answers = 0;
  pthread_mutex_lock(&w->lock);
  w->busy = true;
  pthread_mutex_unlock(&w->lock);
  bool logged = false;
  for (;;) {
    int r = deliver(w, type, body, len);
    const char *err = tb_errmsg(); /* for 1 and -1; this thread's until its next deliver */
    if (r == 0) {
      pthread_mutex_lock(&w->lock);
      w->sent++;
      w->busy = false;
      pthread_mutex_unlock(&w->lock);
      if (logged)
        log_msg("webhook %s: delivering again", w->url);
      return true;
    }
    if (r == 1 && answers++ >= w->retries) {
      pthread_mutex_lock(&w->lock);
      w->failed++;
      w->busy = false;
      snprintf(w->last_error, sizeof w->last_error, "%s", err);
      pthread_mutex_unlock(&w->lock);
      log_msg("webhook %s", err);
      return true;
    }
    pthread_mutex_lock(&w->lock);
    w->retried++;
    snprintf(w->last_error, sizeof w->last_error, "%s", err);
    pthread_mutex_unlock(&w->lock);
    if (r == -1 && !logged) {
      log_msg("webhook %s; the events wait in the journal", err);
      logged = true;
    }
    if (wait_or_stop(w, backoff, false)) {
      pthread_mutex_lock(&w->lock);
      w->busy = false;
      pthread_mutex_unlock(&w->lock);
      return false;
    }
    backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
  }
}

/* Start at the end of the live journal (complete lines only): a new webhook
 * gets the events from now on. */
static void start_at_end(struct worker *w)
{
  struct gen g;
  if (tb_path(g.path, sizeof g.path, "%s/events.jsonl", w->state) == -1)
    return;
  int f = open(g.path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  struct stat st;
  if (f == -1 || fstat(f, &st) == -1) {
    if (f != -1)
      close(f);
    return; /* no journal yet: the first generation that appears, from 0 */
  }
  uint64_t end = (uint64_t)st.st_size;
  while (end > 0) {
    char c;
    if (pread(f, &c, 1, (off_t)end - 1) != 1 || c == '\n')
      break;
    end--;
  }
  w->ino = st.st_ino;
  journal_fingerprint(f, w->fp);
  w->off = end;
  close(f);
  save_position(w);
}

static void load_position(struct worker *w)
{
  json_error_t e;
  json_t *j = json_load_file(w->pos_path, 0, &e);
  const char *fp = json_string_value(json_object_get(j, "generation"));
  if (!json_is_object(j) || !fp || strlen(fp) > 64 ||
      !json_is_integer(json_object_get(j, "offset"))) {
    if (j || access(w->pos_path, F_OK) == 0)
      log_msg("webhook %s: %s is not a journal position (%s); starting at the journal's end",
              w->url, w->pos_path, e.text);
    json_decref(j);
    start_at_end(w);
    return;
  }
  snprintf(w->fp, sizeof w->fp, "%s", fp);
  w->ino = (ino_t)json_integer_value(json_object_get(j, "inode"));
  w->off = (uint64_t)json_integer_value(json_object_get(j, "offset"));
  json_decref(j);
}

static void worker_free(struct worker *w)
{
  pthread_mutex_lock(&totals_lock);
  old_sent += w->sent;
  old_failed += w->failed;
  old_dropped += w->dropped;
  running--;
  for (struct worker **p = &threads; *p; p = &(*p)->next_live)
    if (*p == w) {
      *p = w->next_live;
      break;
    }
  pthread_cond_broadcast(&totals_cond);
  pthread_mutex_unlock(&totals_lock);
  if (w->fd != -1)
    close(w->fd);
  pthread_mutex_destroy(&w->lock);
  pthread_cond_destroy(&w->cond);
  free(w->buf);
  free(w->url);
  free(w->secret);
  free(w->state);
  free(w);
}

/* Is another thread (a retired worker of the same URL, after a reload) still
 * using W's position file?  Under totals_lock. */
static bool position_taken(const struct worker *w)
{
  for (const struct worker *o = threads; o; o = o->next_live)
    if (o != w && strcmp(o->pos_path, w->pos_path) == 0)
      return true;
  return false;
}

static void *worker_main(void *arg)
{
  struct worker *w = arg;
  /* After a reload, start where the retired worker stops: once it has
   * finished its request in flight and saved its position. */
  pthread_mutex_lock(&totals_lock);
  while (position_taken(w) && !w->retired)
    pthread_cond_wait(&totals_cond, &totals_lock);
  pthread_mutex_unlock(&totals_lock);
  load_position(w);
  while (!stopping(w)) {
    /* No delivery runs ahead of the saved position by more than the one
     * just made: a restart then sends at most that one again (a state disk
     * that fails or fills would otherwise mean every event since again). */
    if (w->pos_error) {
      if (!wait_or_stop(w, IDLE_WAIT_MS, false))
        save_position(w);
      continue;
    }
    if (w->fd == -1 && locate(w) == -1) {
      wait_or_stop(w, IDLE_WAIT_MS, true);
      continue;
    }
    size_t len;
    if (next_line(w, &len) == 0) {
      if (!next_generation(w)) {
        pthread_mutex_lock(&w->lock);
        w->idle = !w->kick;
        pthread_mutex_unlock(&w->lock);
        wait_or_stop(w, IDLE_WAIT_MS, true);
      }
      continue;
    }
    pthread_mutex_lock(&w->lock);
    w->idle = false;
    pthread_mutex_unlock(&w->lock);
    if (!w->fp[0])
      journal_fingerprint(w->fd, w->fp);
    if (!w->skipping && !make_durable(w, w->off + len + 1)) {
      if (!w->sync_error)
        log_msg("webhook %s: %s: its events wait", w->url, tb_errmsg());
      w->sync_error = true;
      wait_or_stop(w, IDLE_WAIT_MS, false);
      continue;
    }
    if (w->sync_error)
      log_msg("webhook %s: the journal is durable again: delivering", w->url);
    w->sync_error = false;
    bool skip = w->skipping;
    w->skipping = false;
    json_t *ev = skip ? NULL : json_loadb(w->buf, len, 0, NULL);
    if (json_is_object(ev)) {
      const char *type = json_string_value(json_object_get(ev, "type"));
      if (!send_event(w, type ? type : "event", w->buf, len)) {
        json_decref(ev);
        break;
      }
    }
    json_decref(ev);
    w->off += len + 1;
    save_position(w);
  }
  worker_free(w);
  return NULL;
}

static void stop_all(void)
{
  /* Retired first: once told to stop, a worker may free itself at once. */
  pthread_mutex_lock(&totals_lock);
  for (size_t i = 0; i < n_workers; i++)
    workers[i]->retired = true;
  pthread_cond_broadcast(&totals_cond);
  pthread_mutex_unlock(&totals_lock);
  for (size_t i = 0; i < n_workers; i++) {
    struct worker *w = workers[i];
    pthread_mutex_lock(&w->lock);
    w->stop = true;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
  }
  free(workers);
  workers = NULL;
  n_workers = 0;
}

/* STATE/webhooks/HASH.pos: HASH from the URL (and its rank among equal URLs). */
static int position_path(const char *state, const char *url, size_t same, char *buf, size_t len)
{
  char dir[TB_PATH_MAX], key[64];
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  char *text = NULL;
  if (asprintf(&text, "%s#%zu", url, same) == -1)
    return -1;
  int ok = EVP_Digest(text, strlen(text), md, &mdlen, EVP_sha256(), NULL);
  free(text);
  if (!ok || tb_path(dir, sizeof dir, "%s/webhooks", state) == -1 || tb_mkdirs(dir, true) == -1)
    return -1;
  tb_hex(md, 12, key);
  return tb_path(buf, len, "%s/%s.pos", dir, key);
}

void webhooks_configure(const struct tb_config *cfg)
{
  stop_all();
  if (!cfg->n_webhooks)
    return;
  workers = calloc(cfg->n_webhooks, sizeof *workers);
  if (!workers)
    return;
  for (size_t i = 0; i < cfg->n_webhooks; i++) {
    const struct tb_webhook_conf *c = &cfg->webhooks[i];
    if (!c->url)
      continue;
    size_t same = 0;
    for (size_t j = 0; j < i; j++)
      same += cfg->webhooks[j].url && strcmp(cfg->webhooks[j].url, c->url) == 0;
    struct worker *w = calloc(1, sizeof *w);
    if (!w)
      continue;
    w->fd = -1;
    w->url = strdup(c->url);
    w->secret = c->secret ? strdup(c->secret) : NULL;
    w->state = strdup(cfg->state_dir);
    w->buf = malloc(MAX_LINE + 1);
    w->timeout_ms = c->timeout_ms > 0 ? c->timeout_ms : DEFAULT_TIMEOUT_MS;
    w->retries = c->retries > 0 ? c->retries : DEFAULT_RETRIES;
    if (!w->url || !w->state || !w->buf || (c->secret && !w->secret) ||
        position_path(cfg->state_dir, c->url, same, w->pos_path, sizeof w->pos_path) == -1) {
      log_msg("webhook %s: cannot start: %s", c->url, tb_errmsg());
      free(w->url), free(w->secret), free(w->state), free(w->buf), free(w);
      continue;
    }
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    pthread_mutex_lock(&totals_lock);
    running++;
    w->next_live = threads;
    threads = w;
    pthread_mutex_unlock(&totals_lock);
    pthread_t t;
    if (pthread_create(&t, NULL, worker_main, w) != 0) {
      log_msg("cannot start the webhook thread for %s", c->url);
      w->stop = true;
      worker_free(w);
      continue;
    }
    pthread_detach(t);
    workers[n_workers++] = w;
  }
}

static void webhooks_notify(void)
{
  for (size_t i = 0; i < n_workers; i++) {
    struct worker *w = workers[i];
    pthread_mutex_lock(&w->lock);
    w->kick = true;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
  }
}

#define NOTIFY_MS 200 /* the tailer's pace (journal.c) */
static int64_t next_notify_ms;

static void webhooks_tick(struct daemon *d, int64_t now)
{
  (void)d;
  if (now < next_notify_ms)
    return;
  webhooks_notify();
  next_notify_ms = now + NOTIFY_MS;
}

static int64_t webhooks_next(const struct daemon *d)
{
  (void)d;
  return next_notify_ms;
}

const struct daemon_timer webhooks_timer = {"webhooks", webhooks_tick, webhooks_next};

json_t *webhooks_status(void)
{
  pthread_mutex_lock(&totals_lock);
  uint64_t sent = old_sent, failed = old_failed, dropped = old_dropped, queued = 0;
  pthread_mutex_unlock(&totals_lock);
  json_t *urls = json_array();
  for (size_t i = 0; i < n_workers; i++) {
    struct worker *w = workers[i];
    pthread_mutex_lock(&w->lock);
    sent += w->sent;
    failed += w->failed;
    dropped += w->dropped;
    queued += w->busy;
    json_array_append_new(urls,
                          json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:s}", "url", w->url,
                                    "sent", (json_int_t)w->sent, "failed", (json_int_t)w->failed,
                                    "retried", (json_int_t)w->retried, "queued",
                                    (json_int_t)w->busy, "dropped", (json_int_t)w->dropped, "gaps",
                                    (json_int_t)w->gaps, "last_error", w->last_error));
    pthread_mutex_unlock(&w->lock);
  }
  return json_pack("{s:I, s:I, s:I, s:I, s:o}", "sent", (json_int_t)sent, "failed",
                   (json_int_t)failed, "queued", (json_int_t)queued, "dropped", (json_int_t)dropped,
                   "urls", urls);
}

void webhooks_shutdown(void)
{
  /* Give the last events a moment to go out, then let each worker finish
   * the request in flight and save its position, bounded: a hanging endpoint
   * must not hold the daemon's exit (what is not sent goes at the next start). */
  webhooks_notify();
  int64_t deadline = tb_now_ms() + 2000;
  for (;;) {
    size_t pending = 0;
    for (size_t i = 0; i < n_workers; i++) {
      pthread_mutex_lock(&workers[i]->lock);
      pending += !workers[i]->idle;
      pthread_mutex_unlock(&workers[i]->lock);
    }
    if (!pending || tb_now_ms() > deadline)
      break;
    struct timespec nap = {0, 20 * 1000 * 1000};
    nanosleep(&nap, NULL);
  }
  stop_all();
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 2;
  pthread_mutex_lock(&totals_lock);
  while (running && pthread_cond_timedwait(&totals_cond, &totals_lock, &ts) == 0)
    ;
  pthread_mutex_unlock(&totals_lock);
}
