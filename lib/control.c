/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: the control socket's client side (see control.h).
 *
 * A small buffered line reader over a blocking unix socket with poll() for
 * timeouts.  Replies are bounded like requests (plus room for big listings),
 * so a confused peer cannot make the client allocate without limit.
 */
#include <config.h>

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "control.h"
#include "vector.h"

#define MAX_REPLY (64 * 1024 * 1024)

struct tb_control {
  int fd;
  char path[108];
  TB_VECTOR(, char) in; /* received, not yet taken as lines */
};

int tb_control_socket_path(const struct tb_config *cfg, char *buf, size_t len)
{
  if (cfg->control)
    return tb_path(buf, len, "%s", cfg->control);
  return tb_path(buf, len, "%s/control.sock", cfg->state_dir);
}

struct tb_control *tb_control_connect(const char *path)
{
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sa.sun_path) {
    tb_error("control socket path %s is too long (at most %zu bytes)", path,
             sizeof sa.sun_path - 1);
    return NULL;
  }
  strcpy(sa.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1) {
    tb_error_errno("socket");
    return NULL;
  }
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == -1) {
    int e = errno;
    close(fd);
    errno = e;
    if (e == ENOENT || e == ECONNREFUSED)
      tb_error("cannot connect to %s: tabula-restored is not running (start it, or pass the "
               "daemon's config with -c)",
               path);
    else if (e == EACCES || e == EPERM)
      tb_error("cannot connect to %s: permission denied (run as the daemon's user or root)", path);
    else
      tb_error_errno("cannot connect to %s", path);
    return NULL;
  }
  struct tb_control *c = calloc(1, sizeof *c);
  if (!c) {
    close(fd);
    tb_error_errno("control connection");
    return NULL;
  }
  c->fd = fd;
  strcpy(c->path, path);
  return c;
}

void tb_control_close(struct tb_control *c)
{
  if (!c)
    return;
  close(c->fd);
  tb_vector_free(&c->in);
  free(c);
}

int tb_control_send(struct tb_control *c, const json_t *req)
{
  char *text = json_dumps(req, JSON_COMPACT);
  if (!text)
    return tb_error("cannot encode the request");
  size_t len = strlen(text);
  text[len] = '\n'; /* json_dumps' NUL becomes the newline; we send len + 1 bytes */
  size_t off = 0;
  while (off < len + 1) {
    ssize_t n = send(c->fd, text + off, len + 1 - off, MSG_NOSIGNAL);
    if (n == -1 && errno == EINTR)
      continue;
    if (n <= 0) {
      free(text);
      return tb_error_errno("sending to %s", c->path);
    }
    off += (size_t)n;
  }
  free(text);
  return 0;
}

/* Take one complete line out of the buffer, if there is one. */
static json_t *take_line(struct tb_control *c, bool *have)
{
  char *nl = c->in.ptr ? memchr(c->in.ptr, '\n', c->in.len) : NULL;
  *have = nl != NULL;
  if (!nl)
    return NULL;
  size_t line = (size_t)(nl - c->in.ptr);
  json_error_t jerr;
  json_t *v = json_loadb(c->in.ptr, line, 0, &jerr);
  memmove(c->in.ptr, nl + 1, c->in.len - line - 1);
  c->in.len -= line + 1;
  if (!json_is_object(v)) {
    json_decref(v);
    tb_error("malformed reply from %s: %s", c->path, jerr.text);
    return NULL;
  }
  return v;
}

json_t *tb_control_recv(struct tb_control *c, int timeout_ms)
{
  int64_t deadline = timeout_ms >= 0 ? tb_now_ms() + timeout_ms : -1;
  for (;;) {
    bool have;
    json_t *v = take_line(c, &have);
    if (have)
      return v;
    if (c->in.len == c->in.cap) {
      if (c->in.cap >= MAX_REPLY) {
        tb_error("reply from %s is longer than %d bytes", c->path, MAX_REPLY);
        return NULL;
      }
      /* 64 KiB first, then double: MAX_REPLY is reached exactly */
      if (tb_vector_reserve(&c->in, c->in.cap ? c->in.cap : 65536) == -1) {
        tb_error_prefix("reading from %s", c->path);
        return NULL;
      }
    }
    int wait = -1;
    if (deadline >= 0) {
      int64_t left = deadline - tb_now_ms();
      if (left <= 0) {
        tb_error("no reply from %s within %d ms", c->path, timeout_ms);
        return NULL;
      }
      wait = (int)left;
    }
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    int r = poll(&p, 1, wait);
    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1) {
      tb_error_errno("waiting for %s", c->path);
      return NULL;
    }
    if (r == 0)
      continue; /* the deadline check above reports it */
    ssize_t n = read(c->fd, c->in.ptr + c->in.len, c->in.cap - c->in.len);
    if (n == -1 && errno == EINTR)
      continue;
    if (n == -1) {
      tb_error_errno("reading from %s", c->path);
      return NULL;
    }
    if (n == 0) {
      tb_error("tabula-restored closed the connection (%s) before replying", c->path);
      return NULL;
    }
    c->in.len += (size_t)n;
  }
}
