/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: the event journal (see events.h).
 *
 * Appends are one write(2) of a whole line on an O_APPEND descriptor, which
 * the kernel keeps atomic with respect to other appenders, so the plugin, the
 * daemon and the CLI can all write the same journal.  Rotation renames the
 * journal under an flock on events.lock (older generations shift up first);
 * a writer that raced a rotation at worst appends one line to the
 * just-rotated file, which readers still see.
 *
 * The refusal limiter is a small table per process (the plugin is one
 * process) keyed by peer and reason: one event per key and interval, the
 * count of the others in the next one.  The table is bounded: when it is
 * full the stalest key goes, its unreported count joining a global one
 * ("suppressed_other"), and a global budget of TB_REFUSAL_BUDGET events per
 * interval caps what many distinct peers can write.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clientdir.h"
#include "events.h"
#include "store.h"

/* Set at start and on reload while other threads append: read and written
 * atomically (relaxed: each is one independent number). */
static uint64_t max_bytes = TB_EVENTS_DEFAULT_MAX;
static unsigned keep_gens = TB_EVENTS_DEFAULT_KEEP;

void tb_events_set_max_bytes(uint64_t max)
{
  if (max >= TB_EVENTS_MIN_MAX)
    __atomic_store_n(&max_bytes, max, __ATOMIC_RELAXED);
}

void tb_events_set_keep(unsigned keep)
{
  if (keep >= 1 && keep <= TB_EVENTS_MAX_KEEP)
    __atomic_store_n(&keep_gens, keep, __ATOMIC_RELAXED);
}

static uint64_t journal_max(void)
{
  return __atomic_load_n(&max_bytes, __ATOMIC_RELAXED);
}

/* PATH.N+1 <- PATH.N for N = keep-1 .. 1 (the oldest falls off), then
 * PATH.1 <- PATH. */
static void shift_generations(const char *path)
{
  char from[TB_PATH_MAX], to[TB_PATH_MAX];
  for (unsigned n = __atomic_load_n(&keep_gens, __ATOMIC_RELAXED); n > 1; n--) {
    if (tb_path(from, sizeof from, "%s.%u", path, n - 1) == -1 ||
        tb_path(to, sizeof to, "%s.%u", path, n) == -1)
      return;
    rename(from, to); /* a missing generation is no error */
  }
  if (tb_path(to, sizeof to, "%s.1", path) == 0)
    rename(path, to);
}

/* Out of line so its path buffers take stack only when a journal is rotated
 * (events are written from nbdkit's connection threads: see session.c). */
static __attribute__((noinline)) void rotate(const char *path)
{
  struct stat st;
  char lock[TB_PATH_MAX];
  if (tb_path(lock, sizeof lock, "%s.lock", path) == -1)
    return;
  int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd == -1)
    return;
  if (flock(fd, LOCK_EX) == 0 && lstat(path, &st) == 0 && S_ISREG(st.st_mode) &&
      (uint64_t)st.st_size >= journal_max())
    shift_generations(path);
  close(fd);
}

static void rotate_if_large(const char *path)
{
  struct stat st;
  if (lstat(path, &st) == 0 && (uint64_t)st.st_size >= journal_max())
    rotate(path);
}

static int append_line(const char *path, const char *line, size_t len)
{
  rotate_if_large(path);
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd == -1)
    return tb_error_errno(errno == ELOOP ? "cannot open the event journal %s (a symlink: remove it)"
                                         : "cannot open the event journal %s",
                          path);
  ssize_t n = write(fd, line, len);
  int saved = errno;
  close(fd);
  if (n != (ssize_t)len) {
    errno = n == -1 ? saved : EIO;
    return tb_error_errno("cannot append to the event journal %s", path);
  }
  return 0;
}

int tb_event(const char *state, const char *type, const char *client, json_t *fields)
{
  json_t *ev = json_object();
  if (!ev) {
    json_decref(fields);
    return tb_error("out of memory for an event");
  }
  int64_t now = tb_now_ms();
  char iso[32];
  tb_iso_time(now, iso);
  json_object_set_new(ev, "time", json_string(iso));
  json_object_set_new(ev, "ts", json_integer(now));
  json_object_set_new(ev, "type", json_string(type));
  if (client && json_object_set_new(ev, "client", json_string(client)) == -1) {
    json_decref(ev);
    json_decref(fields);
    return tb_error("event %s: the client id is not valid UTF-8", type);
  }
  if (fields)
    json_object_update(ev, fields);
  json_decref(fields);
  char *text = json_dumps(ev, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(ev);
  if (!text)
    return tb_error("cannot encode an event");
  size_t len = strlen(text);
  /* Not a growing array (no TB_VECTOR): json_dumps' string, once, with
   * room for the newline that makes it a line. */
  char *line = realloc(text, len + 2);
  if (!line) {
    free(text);
    return tb_error("out of memory for an event");
  }
  line[len] = '\n';
  line[len + 1] = '\0';

  char path[TB_PATH_MAX];
  int r = 0;
  if (tb_path(path, sizeof path, "%s/events.jsonl", state) == -1 ||
      append_line(path, line, len + 1) == -1)
    r = -1;
  if (client && tb_clientdir_path(state, client, TB_CF_EVENTS, path, sizeof path) == 0 &&
      append_line(path, line, len + 1) == -1)
    r = -1;
  free(line);
  return r;
}

int tb_eventf(const char *state, const char *type, const char *client, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  json_error_t jerr;
  json_t *fields = json_vpack_ex(&jerr, 0, fmt, ap);
  va_end(ap);
  if (!fields)
    return tb_error("event %s: %s", type, jerr.text);
  return tb_event(state, type, client, fields);
}

/* ---- refusals ------------------------------------------------------------ */

#define REFUSAL_SLOTS 256
#define TB_REFUSAL_BUDGET 60 /* events per interval, all keys together */

struct refusal_slot {
  char key[160]; /* peer NUL reason */
  int64_t last_ms;
  uint64_t suppressed;
};

static pthread_mutex_t refusal_lock = PTHREAD_MUTEX_INITIALIZER;
static struct refusal_slot refusals[REFUSAL_SLOTS];
static uint64_t suppressed_other; /* counts of evicted keys and of refusals over budget */
static int64_t budget_start;
static unsigned budget_used;

/* Decide under the lock: 0 write (with *supp, *other), 1 suppress. */
static int refusal_decide(const char *peer, const char *reason, int64_t now, uint64_t *supp,
                          uint64_t *other)
{
  char key[sizeof refusals[0].key];
  snprintf(key, sizeof key, "%s|%s", peer, reason);
  struct refusal_slot *slot = NULL, *victim = NULL; /* a free slot, else the stalest */
  for (size_t i = 0; i < REFUSAL_SLOTS && !slot; i++) {
    struct refusal_slot *e = &refusals[i];
    if (e->key[0] && strcmp(e->key, key) == 0)
      slot = e;
    else if (!victim || (victim->key[0] && (!e->key[0] || e->last_ms < victim->last_ms)))
      victim = e;
  }
  if (!slot) { /* a new key */
    slot = victim;
    suppressed_other += slot->key[0] ? slot->suppressed : 0;
    snprintf(slot->key, sizeof slot->key, "%s", key);
    slot->last_ms = INT64_MIN;
    slot->suppressed = 0;
  }
  if (slot->last_ms != INT64_MIN && now - slot->last_ms < TB_REFUSAL_INTERVAL_MS) {
    slot->suppressed++;
    return 1;
  }
  if (now - budget_start >= TB_REFUSAL_INTERVAL_MS) {
    budget_start = now;
    budget_used = 0;
  }
  if (budget_used >= TB_REFUSAL_BUDGET) {
    slot->suppressed++;
    return 1;
  }
  budget_used++;
  slot->last_ms = now;
  *supp = slot->suppressed;
  *other = suppressed_other;
  slot->suppressed = 0;
  suppressed_other = 0;
  return 0;
}

int tb_event_refusal(const char *state, const char *client, const char *peer, const char *reason,
                     const char *export)
{
  peer = peer ? peer : "unknown";
  reason = reason ? reason : "refused";
  uint64_t supp = 0, other = 0;
  pthread_mutex_lock(&refusal_lock);
  int d = refusal_decide(peer, reason, tb_now_ms(), &supp, &other);
  pthread_mutex_unlock(&refusal_lock);
  if (d == 1)
    return 1;
  char *p = tb_guest_name(peer), *r = tb_guest_name(reason);
  char *e = export ? tb_guest_name(export) : NULL;
  json_t *f = p && r && (e || !export) ? json_pack("{s:s, s:s, s:I}", "peer", p, "reason", r,
                                                   "suppressed", (json_int_t)supp)
                                       : NULL;
  if (f && e)
    json_object_set_new(f, "export", json_string(e));
  if (f && other)
    json_object_set_new(f, "suppressed_other", json_integer((json_int_t)other));
  free(p);
  free(r);
  free(e);
  if (!f)
    return tb_error("out of memory for a refusal event");
  return tb_event(state, "refused", client, f) == 0 ? 0 : -1;
}
