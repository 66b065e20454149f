/* tabula: the event journal (see events.h).
 *
 * Appends are one write(2) of a whole line on an O_APPEND descriptor, which
 * the kernel keeps atomic with respect to other appenders, so the plugin, the
 * daemon and the CLI can all write the same journal.  Rotation renames the
 * journal under an flock on events.lock; a writer that raced a rotation at
 * worst appends one line to the just-rotated file, which readers still see.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "events.h"
#include "store.h"

static uint64_t max_bytes = TB_EVENTS_DEFAULT_MAX;

void tb_events_set_max_bytes(uint64_t max)
{
  if (max >= 4096)
    max_bytes = max;
}

/* Out of line so its path buffers take stack only when a journal is rotated
 * (events are written from nbdkit's connection threads: see session.c). */
static __attribute__((noinline)) void rotate(const char *path)
{
  struct stat st;
  char lock[TB_PATH_MAX], old[TB_PATH_MAX];
  if (tb_path(lock, sizeof lock, "%s.lock", path) == -1 ||
      tb_path(old, sizeof old, "%s.1", path) == -1)
    return;
  int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd == -1)
    return;
  if (flock(fd, LOCK_EX) == 0 && stat(path, &st) == 0 && (uint64_t)st.st_size >= max_bytes)
    rename(path, old);
  close(fd);
}

static void rotate_if_large(const char *path)
{
  struct stat st;
  if (stat(path, &st) == 0 && (uint64_t)st.st_size >= max_bytes)
    rotate(path);
}

static int append_line(const char *path, const char *line, size_t len)
{
  rotate_if_large(path);
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd == -1)
    return tb_error_errno("cannot open the event journal %s", path);
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
  if (client)
    json_object_set_new(ev, "client", json_string(client));
  if (fields)
    json_object_update(ev, fields);
  json_decref(fields);
  char *text = json_dumps(ev, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(ev);
  if (!text)
    return tb_error("cannot encode an event");
  size_t len = strlen(text);
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
  if (client && tb_store_client_path(state, client, "events.jsonl", path, sizeof path) == 0 &&
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
