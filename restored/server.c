/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-restored: the control socket.
 *
 * A unix stream socket, mode 0600, created under a 0077 umask so there is no
 * window where others could connect.  Every accepted peer is checked with
 * SO_PEERCRED: only the daemon's own uid and root may talk, and the members
 * of "control_group" if it is set (the socket is then 0660 in that group, so
 * operators need no root); anyone else gets one error line and the door.
 *
 * Connections are non-blocking and driven by the daemon's poll() loop, so a
 * slow, silent or hostile client never stalls another:
 *   - a request is one line of at most TB_CONTROL_MAX_LINE bytes; a longer
 *     line gets an error reply and the connection is closed;
 *   - a line that is not a JSON object, an unknown operation or a wrong
 *     argument gets an error reply, and the connection stays usable;
 *   - a connection with a partial line that stays silent for IDLE_PARTIAL_MS,
 *     or any connection idle for IDLE_MS, is closed (measured on the
 *     monotonic clock: a step of the wall clock closes nothing early);
 *   - replies are buffered per connection; a peer that does not read more
 *     than MAX_OUTPUT of them is dropped;
 *   - at most MAX_CONNS connections.  An administrator must always get in,
 *     so when they are all taken the one idle the longest goes (an error
 *     line tells it why), then the oldest follower of events; only when
 *     every one is in the middle of a job is a new one refused.
 * Requests on one connection are answered in order: while one waits for a
 * job (merge) or follows events, later lines stay in the buffer.
 */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "control.h"
#include "daemon.h"
#include "vector.h"

#define MAX_CONNS 64
#define MAX_OUTPUT (64 * 1024 * 1024)
/* Fairness.  A connection's next request runs only while fewer than
 * OUTPUT_BACKLOG bytes of its replies wait to be read: a peer that sends and
 * never reads costs one backlog of work, not MAX_OUTPUT of it, and every
 * other connection is served meanwhile.  At most LINES_PER_PASS requests of
 * one connection run per pass of the loop, so a pipelined flood on one
 * connection cannot keep the others waiting either. */
#define OUTPUT_BACKLOG (256 * 1024)
#define LINES_PER_PASS 32
#define IDLE_PARTIAL_MS 30000
#define IDLE_MS (10 * 60 * 1000)

enum conn_state { CONN_READY, CONN_WAITING, CONN_FOLLOWING, CONN_CLOSING };

TB_VECTOR(out_buf, char);

struct conn {
  uint64_t id;
  int fd;
  uid_t uid;
  enum conn_state state;
  char *in; /* TB_CONTROL_MAX_LINE + 1 */
  size_t in_len;
  struct out_buf out; /* replies not yet sent */
  int64_t last_ms;    /* its last input or output, tb_mono_ms() */
  bool eof;           /* the peer shut down its side: answer what it sent, then close */
  char follow_client[TB_NAME_MAX + 1]; /* "" = all */
};

static struct conn *conns[MAX_CONNS];
static uint64_t next_conn_id = 1;
static gid_t operators_gid = (gid_t)-1; /* control_group, read at start */
static server_dispatch_fn *dispatch;    /* a request line to its reply (ops.c) */
static uint64_t requests_run;           /* request lines run since the start (status) */

size_t server_max_fds(void)
{
  return MAX_CONNS;
}

/* ---- replies: {"ok": true, "result": ...} or {"ok": false, "error": "..."} ---------- */

json_t *reply_ok(json_t *result)
{
  return json_pack("{s:b, s:o}", "ok", 1, "result", result ? result : json_object());
}

json_t *reply_error(const char *fmt, ...)
{
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return json_pack("{s:b, s:s}", "ok", 0, "error", msg);
}

const char *req_str(json_t *req, const char *key)
{
  return json_string_value(json_object_get(req, key));
}

const char *req_unknown_key(json_t *req, const char *const *keys)
{
  const char *key;
  json_t *v;
  json_object_foreach(req, key, v)
  {
    bool known = strcmp(key, "op") == 0;
    for (size_t i = 0; keys[i] && !known; i++)
      known = strcmp(keys[i], key) == 0;
    if (!known)
      return key;
  }
  return NULL;
}

json_t *req_check_keys(json_t *req, const char *op, const char *const *keys)
{
  const char *bad = req_unknown_key(req, keys);
  return bad ? reply_error("%s: unknown argument \"%.64s\"", op, bad) : NULL;
}

/* ---- the listening socket --------------------------------------------------------- */

static int is_live_socket(const char *path)
{
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  strcpy(sa.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1)
    return 0;
  int live = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
  close(fd);
  return live;
}

int server_open(struct daemon *d, server_dispatch_fn *dispatch_fn)
{
  dispatch = dispatch_fn;
  if (tb_control_socket_path(d->cfg, d->control_path, sizeof d->control_path) == -1)
    return -1;
  const char *path = d->control_path;
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sa.sun_path)
    return tb_error("control socket path %s is too long (at most %zu bytes); set \"control\" "
                    "to a shorter path",
                    path, sizeof sa.sun_path - 1);
  strcpy(sa.sun_path, path);
  struct stat st;
  if (lstat(path, &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return tb_error("%s exists and is not a socket; remove it or set \"control\" elsewhere",
                      path);
    if (is_live_socket(path))
      return tb_error("another tabula-restored is already serving %s", path);
    unlink(path);
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd == -1)
    return tb_error_errno("socket");
  mode_t old = umask(0077);
  int r = bind(fd, (struct sockaddr *)&sa, sizeof sa);
  umask(old);
  if (r == -1 && errno == ENOENT) {
    tb_error_errno("cannot listen on %s (its directory does not exist: create it, or let "
                   "systemd do it with RuntimeDirectory=tabula as the shipped unit does)",
                   path);
    close(fd);
    return -1;
  }
  if (r == -1 || chmod(path, 0600) == -1 || listen(fd, 64) == -1) {
    tb_error_errno("cannot listen on %s", path);
    close(fd);
    return -1;
  }
  /* control_group: its members (operators) may use the socket too. */
  operators_gid = (gid_t)-1;
  if (d->cfg->control_group &&
      (daemon_group(d->cfg->control_group, "control_group", &operators_gid) == -1 ||
       chown(path, (uid_t)-1, operators_gid) == -1 || chmod(path, 0660) == -1)) {
    if (operators_gid != (gid_t)-1)
      tb_error_errno("control_group: cannot give %s to group %s (the daemon must run as root or "
                     "be a member of it)",
                     path, d->cfg->control_group);
    close(fd);
    unlink(path);
    return -1;
  }
  d->listen_fd = fd;
  return 0;
}

static void conn_free(struct conn *c)
{
  close(c->fd);
  free(c->in);
  tb_vector_free(&c->out);
  free(c);
}

void server_close(struct daemon *d)
{
  for (size_t i = 0; i < MAX_CONNS; i++)
    if (conns[i]) {
      conn_free(conns[i]);
      conns[i] = NULL;
    }
  if (d->listen_fd >= 0) {
    close(d->listen_fd);
    unlink(d->control_path);
    d->listen_fd = -1;
  }
}

/* ---- output ---------------------------------------------------------------------------- */

static void conn_write(struct conn *c)
{
  while (c->out.len) {
    ssize_t n = send(c->fd, c->out.ptr, c->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n == -1 && errno == EINTR)
      continue;
    if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return;
    if (n <= 0) {
      c->state = CONN_CLOSING;
      c->out.len = 0;
      return;
    }
    memmove(c->out.ptr, c->out.ptr + n, c->out.len - (size_t)n);
    c->out.len -= (size_t)n;
  }
}

static void append_out(struct conn *c, const char *text, size_t len)
{
  if (c->out.len + len > MAX_OUTPUT) {
    /* The peer does not read its replies: drop it rather than grow forever. */
    c->state = CONN_CLOSING;
    c->out.len = 0;
    return;
  }
  if (tb_vector_reserve(&c->out, len) == -1) {
    c->state = CONN_CLOSING;
    return;
  }
  memcpy(c->out.ptr + c->out.len, text, len);
  c->out.len += len;
}

void conn_send(struct conn *c, json_t *line)
{
  char *text = json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(line);
  if (!text)
    return;
  append_out(c, text, strlen(text));
  append_out(c, "\n", 1);
  free(text);
  conn_write(c);
}

void conn_finish(struct conn *c, json_t *final)
{
  conn_send(c, final);
  if (c->state != CONN_CLOSING)
    c->state = CONN_READY;
  c->last_ms = tb_mono_ms();
}

uint64_t conn_id(const struct conn *c)
{
  return c->id;
}

struct conn *conn_by_id(uint64_t id)
{
  for (size_t i = 0; i < MAX_CONNS; i++)
    if (conns[i] && conns[i]->id == id && conns[i]->state != CONN_CLOSING)
      return conns[i];
  return NULL;
}

bool conn_alive(uint64_t id)
{
  return conn_by_id(id) != NULL;
}

void conn_follow(struct conn *c, const char *client)
{
  c->state = CONN_FOLLOWING;
  snprintf(c->follow_client, sizeof c->follow_client, "%s", client ? client : "");
}

void conn_wait(struct conn *c)
{
  c->state = CONN_WAITING;
}

void server_broadcast_event(const json_t *ev)
{
  const char *client = json_string_value(json_object_get(ev, "client"));
  for (size_t i = 0; i < MAX_CONNS; i++) {
    struct conn *c = conns[i];
    if (!c || c->state != CONN_FOLLOWING)
      continue;
    if (c->follow_client[0] && (!client || strcmp(client, c->follow_client) != 0))
      continue;
    conn_send(c, json_pack("{s:O}", "event", ev));
  }
}

/* ---- input ------------------------------------------------------------------------------ */

static void handle_line(struct daemon *d, struct conn *c, const char *line, size_t len)
{
  json_error_t jerr;
  json_t *req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
  if (!req) {
    conn_finish(c, reply_error("malformed request: %s (line %d, column %d); send one JSON "
                               "object per line",
                               jerr.text, jerr.line, jerr.column));
    return;
  }
  if (!json_is_object(req)) {
    json_decref(req);
    conn_finish(c, reply_error("malformed request: expected a JSON object such as "
                               "{\"op\": \"status\"}"));
    return;
  }
  requests_run++;
  json_t *reply = dispatch(d, c, req);
  json_decref(req);
  if (reply)
    conn_finish(c, reply);
}

uint64_t server_requests(void)
{
  return requests_run;
}

/* Whether C has a request it could run now (see OUTPUT_BACKLOG). */
static bool runnable(const struct conn *c)
{
  return c->state == CONN_READY && c->out.len < OUTPUT_BACKLOG && c->in_len &&
         memchr(c->in, '\n', c->in_len);
}

/* Run the complete lines in the buffer while the connection is ready for
 * one, its replies are being read and its share of this pass lasts; the
 * rest waits for the next pass (server_timer's next says it is due). */
static void process_input(struct daemon *d, struct conn *c)
{
  for (int budget = LINES_PER_PASS; c->state == CONN_READY && budget > 0; budget--) {
    if (c->out.len >= OUTPUT_BACKLOG)
      return; /* conn_write resumes it once the peer reads */
    char *nl = memchr(c->in, '\n', c->in_len);
    if (!nl) {
      if (c->in_len > TB_CONTROL_MAX_LINE) {
        conn_finish(c, reply_error("request line longer than %d bytes; closing the connection",
                                   TB_CONTROL_MAX_LINE));
        c->state = CONN_CLOSING;
      }
      return;
    }
    size_t len = (size_t)(nl - c->in);
    *nl = '\0';
    if (len && c->in[len - 1] == '\r')
      len--;
    bool blank = true;
    for (size_t i = 0; i < len && blank; i++)
      blank = c->in[i] == ' ' || c->in[i] == '\t';
    if (!blank)
      handle_line(d, c, c->in, len);
    size_t used = (size_t)(nl - c->in) + 1;
    memmove(c->in, c->in + used, c->in_len - used);
    c->in_len -= used;
  }
}

static void conn_read(struct daemon *d, struct conn *c)
{
  for (;;) {
    if (c->in_len > TB_CONTROL_MAX_LINE) {
      process_input(d, c);
      if (c->state == CONN_CLOSING || c->in_len > TB_CONTROL_MAX_LINE)
        return; /* waiting on a job with a full buffer: stop reading */
    }
    ssize_t n = recv(c->fd, c->in + c->in_len, TB_CONTROL_MAX_LINE + 1 - c->in_len, MSG_DONTWAIT);
    if (n == -1 && errno == EINTR)
      continue;
    if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
      break;
    if (n == 0) { /* half-close: still answer the requests it sent */
      c->eof = true;
      break;
    }
    if (n < 0) { /* the peer is gone (a waiting job's reply is dropped) */
      c->state = CONN_CLOSING;
      c->out.len = 0;
      return;
    }
    c->in_len += (size_t)n;
    c->last_ms = tb_mono_ms();
    if (c->state != CONN_READY && c->in_len > TB_CONTROL_MAX_LINE)
      break;
  }
  process_input(d, c);
}

/* ---- the poll loop's side -------------------------------------------------------------- */

/* True if UID (whose primary group is GID) is in the operators' group. */
static bool is_operator(uid_t uid, gid_t gid)
{
  if (operators_gid == (gid_t)-1)
    return false;
  if (gid == operators_gid)
    return true;
  struct passwd *pw = getpwuid(uid);
  gid_t groups[256];
  int n = (int)(sizeof groups / sizeof *groups);
  if (!pw || getgrouplist(pw->pw_name, pw->pw_gid, groups, &n) == -1)
    return false;
  for (int i = 0; i < n; i++)
    if (groups[i] == operators_gid)
      return true;
  return false;
}

static bool peer_allowed(int fd, uid_t *uid)
{
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1)
    return false;
  *uid = cred.uid;
  return cred.uid == geteuid() || cred.uid == 0 || is_operator(cred.uid, cred.gid);
}

static void refuse(int fd, const char *msg)
{
  char line[512];
  int n = snprintf(line, sizeof line, "{\"ok\":false,\"error\":\"%s\"}\n", msg);
  send(fd, line, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
  close(fd);
}

/* The connection to drop for a newcomer when all are taken: the one idle
 * the longest (no request in progress, nothing to send), else the oldest
 * follower of events; MAX_CONNS if every one is busy with a job. */
static size_t victim(void)
{
  size_t best = MAX_CONNS;
  for (int pass = 0; pass < 2 && best == MAX_CONNS; pass++) {
    enum conn_state want = pass == 0 ? CONN_READY : CONN_FOLLOWING;
    for (size_t i = 0; i < MAX_CONNS; i++) {
      struct conn *c = conns[i];
      if (c && c->state == want && !c->in_len && !c->out.len &&
          (best == MAX_CONNS || c->last_ms < conns[best]->last_ms))
        best = i;
    }
  }
  return best;
}

void server_accept(struct daemon *d)
{
  for (;;) {
    int fd = accept4(d->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd == -1)
      return;
    uid_t uid = (uid_t)-1;
    if (!peer_allowed(fd, &uid)) {
      log_msg("control: refused a peer with uid %d (only uid %d and root may connect)", (int)uid,
              (int)geteuid());
      refuse(fd, "permission denied: only the daemon's user and root may use the control "
                 "socket");
      continue;
    }
    size_t slot = MAX_CONNS;
    for (size_t i = 0; i < MAX_CONNS; i++)
      if (!conns[i]) {
        slot = i;
        break;
      }
    if (slot == MAX_CONNS && (slot = victim()) < MAX_CONNS) {
      struct conn *old = conns[slot];
      log_msg("control: %d connections: closing the one idle the longest (uid %d) for a new one",
              MAX_CONNS, (int)old->uid);
      conn_finish(old, reply_error("closed: %d control connections are open and this one was "
                                   "idle the longest",
                                   MAX_CONNS));
      conn_write(old);
      conn_free(old);
      conns[slot] = NULL;
    }
    struct conn *c = slot < MAX_CONNS ? calloc(1, sizeof *c) : NULL;
    if (c)
      c->in = malloc(TB_CONTROL_MAX_LINE + 1);
    if (!c || !c->in) {
      if (c)
        free(c);
      refuse(fd, "too many control connections; try again later");
      continue;
    }
    c->id = next_conn_id++;
    c->fd = fd;
    c->uid = uid;
    c->last_ms = tb_mono_ms();
    conns[slot] = c;
  }
}

size_t server_pollfds(struct pollfd *fds, size_t max)
{
  size_t n = 0;
  for (size_t i = 0; i < MAX_CONNS && n < max; i++) {
    struct conn *c = conns[i];
    if (!c)
      continue;
    short ev = 0;
    if (c->in_len <= TB_CONTROL_MAX_LINE && !c->eof)
      ev |= POLLIN;
    if (c->out.len)
      ev |= POLLOUT;
    fds[n++] = (struct pollfd){.fd = c->fd, .events = ev};
  }
  return n;
}

static struct conn *by_fd(int fd)
{
  for (size_t i = 0; i < MAX_CONNS; i++)
    if (conns[i] && conns[i]->fd == fd)
      return conns[i];
  return NULL;
}

static void reap_closed(void)
{
  for (size_t i = 0; i < MAX_CONNS; i++) {
    struct conn *c = conns[i];
    /* A half-closed peer is done once its answers are out (a follower that
     * half-closed is done too). */
    if (c && c->eof && c->out.len == 0 && (c->state == CONN_READY || c->state == CONN_FOLLOWING))
      c->state = CONN_CLOSING;
    if (c && c->state == CONN_CLOSING) {
      conn_write(c); /* a last error line, if the peer still reads */
      conn_free(c);
      conns[i] = NULL;
    }
  }
}

void server_io(struct daemon *d, const struct pollfd *fds, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    if (!fds[i].revents)
      continue;
    struct conn *c = by_fd(fds[i].fd);
    if (!c)
      continue;
    if (fds[i].revents & POLLOUT)
      conn_write(c);
    if (fds[i].revents & (POLLIN | POLLHUP | POLLERR))
      conn_read(d, c);
  }
  reap_closed();
}

static void server_tick(struct daemon *d, int64_t now)
{
  (void)now; /* idle time: on the monotonic clock, as the loop's NOW */
  int64_t mono = tb_mono_ms();
  for (size_t i = 0; i < MAX_CONNS; i++) {
    struct conn *c = conns[i];
    if (c && c->state == CONN_READY && c->in_len) /* lines queued behind a finished job */
      process_input(d, c);
    if (!c || c->state != CONN_READY)
      continue;
    int64_t idle = mono - c->last_ms;
    if ((c->in_len && idle > IDLE_PARTIAL_MS) || idle > IDLE_MS) {
      if (c->in_len)
        conn_finish(c, reply_error("incomplete request line (no newline) for %d s; closing",
                                   IDLE_PARTIAL_MS / 1000));
      c->state = CONN_CLOSING;
    }
  }
  reap_closed();
}

/* Queued requests that can run are due now; idle timeouts need no time of
 * their own (the loop wakes at least once a second). */
static int64_t server_next(const struct daemon *d)
{
  (void)d;
  for (size_t i = 0; i < MAX_CONNS; i++)
    if (conns[i] && runnable(conns[i]))
      return 0;
  return INT64_MAX;
}

const struct daemon_timer server_timer = {"server", server_tick, server_next};
