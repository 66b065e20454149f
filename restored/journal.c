/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-restored: following the event journal.
 *
 * Every program appends to STATE/events.jsonl (lib/events.h): the plugin's
 * sessions, the daemon's own actions, tabulactl's imports.  The daemon tails
 * it by offset, from where it was when the daemon started, and hands each new
 * line to `events --follow` connections, to the webhooks and to the per-client
 * counters of the metrics.  Rotation (rename to .1, ours or logrotate's) is
 * noticed by the inode changing: the rest of the old file is read first,
 * then .1 if it is not the old file (a second rotation between two polls),
 * then the new one from 0.  A truncation in place (logrotate's copytruncate)
 * is noticed by the file getting shorter than what was read: the copy
 * (.1, if it is at least that long) gives the lines written since the last
 * poll, then the file is read from 0.  Only complete lines are consumed.
 * Journals are opened with O_NOFOLLOW.
 *
 * A generation is named by its fingerprint: the sha256 of its first line
 * (journal_fingerprint), which survives both a rename and a copy.  The
 * tailer records how many lines each generation it finished held (a small
 * ring, journal_lines_between), so a webhook that fell behind by more
 * generations than are kept can tell how many events it lost.
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

#include <openssl/evp.h>

#include "clientdir.h"
#include "daemon.h"
#include "journal.h"
#include "store.h"

#define READ_CHUNK 65536
#define POLL_MS 200 /* how often the tail looks for new lines */
#define MAX_LINE (1024 * 1024)
#define TAIL_WINDOW_PER_LINE 4096 /* tail_file's first guess at the bytes a line takes */

static int fd = -1;
static ino_t ino;
TB_VECTOR(line_bytes, char);
static struct line_bytes partial;       /* the start of a line not yet complete, at most MAX_LINE */
static time_t last_poll_s;              /* wall clock of the previous poll */
static char cur_fp[65];                 /* the followed generation's fingerprint, "" until known */
static uint64_t cur_lines;              /* complete lines it held so far */
static uint64_t *counting = &cur_lines; /* where read_new counts lines */

/* Finished generations, oldest first (a ring; under gens_lock: webhook
 * threads read it). */
#define GENS_MAX 64
static struct {
  char fp[65];
  uint64_t lines;
} gens[GENS_MAX];
static size_t gens_start, gens_len;
static pthread_mutex_t gens_lock = PTHREAD_MUTEX_INITIALIZER;

int journal_fingerprint(int f, char out[65])
{
  char buf[JOURNAL_FP_BYTES];
  out[0] = '\0';
  ssize_t n = pread(f, buf, sizeof buf, 0);
  if (n <= 0)
    return -1;
  char *nl = memchr(buf, '\n', (size_t)n);
  if (!nl && (size_t)n < sizeof buf)
    return -1; /* the first line is not complete yet */
  size_t len = nl ? (size_t)(nl - buf) + 1 : sizeof buf;
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  if (!EVP_Digest(buf, len, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
    return -1;
  tb_hex(md, 32, out);
  return 0;
}

static void generation_done(const char *fp, uint64_t lines)
{
  if (!fp[0])
    return;
  pthread_mutex_lock(&gens_lock);
  if (gens_len == GENS_MAX) {
    gens_start = (gens_start + 1) % GENS_MAX;
    gens_len--;
  }
  size_t i = (gens_start + gens_len++) % GENS_MAX;
  snprintf(gens[i].fp, sizeof gens[i].fp, "%s", fp);
  gens[i].lines = lines;
  pthread_mutex_unlock(&gens_lock);
}

int64_t journal_lines_between(const char *from, const char *to)
{
  int64_t sum = -1;
  pthread_mutex_lock(&gens_lock);
  size_t i = gens_len;
  while (i-- > 0)
    if (strcmp(gens[(gens_start + i) % GENS_MAX].fp, from) == 0)
      break;
  if (i < gens_len) {
    sum = 0;
    for (size_t j = i + 1; j < gens_len; j++) {
      size_t k = (gens_start + j) % GENS_MAX;
      if (to && strcmp(gens[k].fp, to) == 0)
        break;
      sum += (int64_t)gens[k].lines;
    }
  }
  pthread_mutex_unlock(&gens_lock);
  return sum;
}

/* Lines in F up to its end (where the tailer starts). */
static uint64_t count_lines(int f)
{
  char buf[READ_CHUNK];
  uint64_t lines = 0, off = 0;
  for (;;) {
    ssize_t n = pread(f, buf, sizeof buf, (off_t)off);
    if (n <= 0)
      return lines;
    for (ssize_t i = 0; i < n; i++)
      lines += buf[i] == '\n';
    off += (uint64_t)n;
  }
}

static void journal_path(const char *state, char *buf, size_t len)
{
  snprintf(buf, len, "%s/events.jsonl", state);
}

void journal_open(struct daemon *d)
{
  char path[TB_PATH_MAX];
  journal_path(d->cfg->state_dir, path, sizeof path);
  fd = open(path, O_RDONLY | O_CLOEXEC | O_CREAT | O_NOFOLLOW, 0600);
  if (fd == -1) {
    log_msg("cannot open the event journal %s: %s", path, strerror(errno));
    return;
  }
  struct stat st;
  fstat(fd, &st);
  ino = st.st_ino;
  cur_lines = count_lines(fd);
  journal_fingerprint(fd, cur_fp);
  lseek(fd, 0, SEEK_END);
}

/* Counters of session-end events, per client (status and metrics read them). */
struct client_counters *counters_for(struct daemon *d, const char *id)
{
  for (size_t i = 0; i < d->counters.len; i++)
    if (strcmp(d->counters.ptr[i].id, id) == 0)
      return &d->counters.ptr[i];
  struct client_counters c = {0};
  snprintf(c.id, sizeof c.id, "%s", id);
  if (tb_vector_push(&d->counters, c) == -1)
    return NULL;
  return &d->counters.ptr[d->counters.len - 1];
}

static void count_event(struct daemon *d, const json_t *ev)
{
  const char *type = json_string_value(json_object_get(ev, "type"));
  const char *client = json_string_value(json_object_get(ev, "client"));
  if (!type || !client || strcmp(type, "session-end") != 0)
    return;
  struct client_counters *c = counters_for(d, client);
  if (!c)
    return;
  c->sessions++;
  c->bytes_read += (uint64_t)json_integer_value(json_object_get(ev, "bytes_read"));
  c->bytes_written += (uint64_t)json_integer_value(json_object_get(ev, "bytes_written"));
  c->errors += (uint64_t)json_integer_value(json_object_get(ev, "errors"));
}

static void deliver(struct daemon *d, const char *line, size_t len)
{
  json_t *ev = json_loadb(line, len, 0, NULL);
  if (!json_is_object(ev)) {
    json_decref(ev);
    return;
  }
  count_event(d, ev);
  scan_event(d, ev);
  server_broadcast_event(ev);
  json_decref(ev);
}

/* Append N bytes at S to the partial line, NUL-terminated; -1 when out of
 * memory (the partial line is as it was). */
static int partial_append(const char *s, size_t n)
{
  if (tb_vector_reserve(&partial, n + 1) == -1)
    return -1;
  memcpy(partial.ptr + partial.len, s, n);
  partial.len += n;
  partial.ptr[partial.len] = '\0';
  return 0;
}

/* Read what FD has beyond its offset; deliver complete lines. */
static void read_new(struct daemon *d)
{
  char buf[READ_CHUNK];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0)
      return;
    size_t start = 0;
    for (size_t i = 0; i < (size_t)n; i++) {
      if (buf[i] != '\n')
        continue;
      (*counting)++;
      if (partial.len) {
        size_t add = i - start;
        if (partial.len + add <= MAX_LINE && partial_append(buf + start, add) == 0)
          deliver(d, partial.ptr, partial.len);
        partial.len = 0;
      } else {
        buf[i] = '\0';
        deliver(d, buf + start, i - start);
      }
      start = i + 1;
    }
    size_t rest = (size_t)n - start;
    if (rest && partial.len + rest <= MAX_LINE)
      partial_append(buf + start, rest); /* out of memory: the line ends short and will not parse */
  }
}

/* Deliver what PATH holds from offset FROM (a rotated generation), counting
 * its lines into LINES; its fingerprint goes to FP if not NULL. */
static void read_other(struct daemon *d, const char *path, off_t from, uint64_t *lines, char fp[65])
{
  int saved = fd;
  fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd != -1) {
    counting = lines;
    if (lseek(fd, from, SEEK_SET) == from)
      read_new(d);
    counting = &cur_lines;
    if (fp)
      journal_fingerprint(fd, fp);
    close(fd);
  }
  fd = saved;
  partial.len = 0;
}

/* The followed generation ended (rotated or truncated): record it, start a
 * new one. */
static void next_generation(void)
{
  generation_done(cur_fp, cur_lines);
  cur_fp[0] = '\0';
  cur_lines = 0;
}

void journal_poll(struct daemon *d)
{
  char path[TB_PATH_MAX], old[TB_PATH_MAX + sizeof ".1"]; /* the rotated journal: PATH.1 */
  journal_path(d->cfg->state_dir, path, sizeof path);
  snprintf(old, sizeof old, "%s.1", path);
  if (fd == -1) {
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd == -1)
      return;
    struct stat st;
    fstat(fd, &st);
    ino = st.st_ino;
  }
  read_new(d);
  if (!cur_fp[0] && cur_lines)
    journal_fingerprint(fd, cur_fp);
  time_t prev = last_poll_s;
  last_poll_s = time(NULL);
  struct stat st, ost;
  off_t at = lseek(fd, 0, SEEK_CUR);
  if (fstat(fd, &st) == 0 && st.st_size < at) { /* truncated in place (copytruncate) */
    partial.len = 0;
    if (stat(old, &ost) == 0 && ost.st_ino != ino && ost.st_size >= at)
      read_other(d, old, at, &cur_lines, cur_fp[0] ? NULL : cur_fp);
    next_generation();
    lseek(fd, 0, SEEK_SET);
    read_new(d);
  }
  if (stat(path, &st) == 0 && st.st_ino != ino) { /* rotated: finish the old, follow the new */
    read_new(d);
    if (!cur_fp[0])
      journal_fingerprint(fd, cur_fp);
    close(fd);
    partial.len = 0;
    next_generation();
    /* Rotated twice since the last poll: .1 is a file we never saw (and it
     * was written since; an older .1 is a generation already read). */
    if (stat(old, &ost) == 0 && ost.st_ino != ino && ost.st_mtime >= prev) {
      char fp[65] = "";
      uint64_t lines = 0;
      read_other(d, old, 0, &lines, fp);
      generation_done(fp, lines);
    }
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd == -1)
      return;
    fstat(fd, &st);
    ino = st.st_ino;
    read_new(d);
  }
}

/* The last N events (of CLIENT's journal if not NULL), oldest first.  Reads
 * the tail of the file only; the rotated .1 fills in if the file is short. */
static void tail_file(const char *path, size_t n, json_t *out)
{
  int f = open(path, O_RDONLY | O_CLOEXEC);
  if (f == -1)
    return;
  struct stat st;
  if (fstat(f, &st) == -1) {
    close(f);
    return;
  }
  /* Read backwards in growing windows until N lines are in. */
  size_t want = TAIL_WINDOW_PER_LINE * (n + 1);
  off_t size = st.st_size;
  for (;;) {
    off_t from = size > (off_t)want ? size - (off_t)want : 0;
    size_t len = (size_t)(size - from);
    char *buf = malloc(len + 1);
    if (!buf || tb_pread_full(f, buf, len, (uint64_t)from) == -1) {
      free(buf);
      break;
    }
    buf[len] = '\0';
    /* A crash or a power cut can leave a run of NULs where the journal's last
     * appends were (the size reached the disk before the data): they end a
     * line, so the events before and after them still read. */
    size_t lines = 0;
    for (size_t i = 0; i < len; i++) {
      if (buf[i] == '\0')
        buf[i] = '\n';
      lines += buf[i] == '\n' && i > 0 && buf[i - 1] != '\n';
    }
    if (lines > n || from == 0) {
      /* Skip the first (maybe partial) line unless we read from the start. */
      char *p = buf;
      if (from > 0) {
        char *nl = strchr(p, '\n');
        p = nl ? nl + 1 : buf + len;
      }
      json_t *all = json_array();
      char *save;
      for (char *line = strtok_r(p, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_t *ev = json_loads(line, 0, NULL);
        if (json_is_object(ev))
          json_array_append_new(all, ev);
        else
          json_decref(ev);
      }
      size_t total = json_array_size(all);
      for (size_t i = total > n ? total - n : 0; i < total; i++)
        json_array_append(out, json_array_get(all, i));
      json_decref(all);
      free(buf);
      break;
    }
    free(buf);
    want *= 4;
  }
  close(f);
}

json_t *journal_last(const char *state, const char *client, size_t n)
{
  char path[TB_PATH_MAX], old[TB_PATH_MAX + sizeof ".1"]; /* the rotated journal: PATH.1 */
  json_t *out = json_array();
  if (n == 0)
    return out;
  if (client) {
    if (tb_clientdir_path(state, client, TB_CF_EVENTS, path, sizeof path) == -1)
      return out;
  } else {
    journal_path(state, path, sizeof path);
  }
  json_t *recent = json_array();
  tail_file(path, n, recent);
  if (json_array_size(recent) < n) {
    snprintf(old, sizeof old, "%s.1", path);
    tail_file(old, n - json_array_size(recent), out);
  }
  json_array_extend(out, recent);
  json_decref(recent);
  return out;
}

static int64_t next_poll_ms; /* 0: at the first tick */

static void journal_tick(struct daemon *d, int64_t now)
{
  if (now < next_poll_ms)
    return;
  journal_poll(d);
  next_poll_ms = now + POLL_MS;
}

static int64_t journal_next(const struct daemon *d)
{
  (void)d;
  return next_poll_ms;
}

const struct daemon_timer journal_timer = {"journal", journal_tick, journal_next};
