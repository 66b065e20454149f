/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: admin views of a session another frontend process runs (see liveview.h).
 *
 * The promise.  An admin export of a running client (ID@live, ID@overlay)
 * reads the client's disk as the client itself would read it at that
 * moment: every write the client had acknowledged before the admin read was
 * issued is seen, flushed or not, and a session turn (a rollback rotation)
 * is never seen half-way.  For a session nbdkit runs itself that is
 * lib/live.c's tb_live_read_begin: the admin read takes the session's
 * io_lock and reads its overlay in memory.  The view (tabula-fuse) and the
 * tools (nbdinfo, nbdcopy) build on it; the view's own lag is its snapshot
 * lifetime (fuse/tabula-fuse.c), not the export's.
 *
 * The problem.  When the session runs in another process (tabula-iscsid),
 * the overlay file cannot keep that promise.  Its data region is current
 * (a pwrite is in the shared page cache at once), but the map that says
 * which blocks are DATA is written by a flush only, and must stay so: data
 * fdatasync, then the map, then fdatasync (lib/overlay.c; the crash order
 * tests/powercut-plugin.sh checks).  A reader of the file sees the disk as
 * of the last flush (a guest that writes and does not flush stays
 * invisible), and a map page read while a flush writes it fails its
 * checksum.
 *
 * The options.  (1) Re-read the map from the file when it changed: as of
 * the last flush only, and racing every flush.  (2) The running process
 * publishes its map in shared memory: exact, but a second copy of every map
 * update on the data path of every client, and a shared structure whose
 * identity (which session's overlay), lifetime (a crash, a restart that
 * resumes the session) and consistency against a rotation need a protocol
 * of their own.  (3) Ask the process that runs the session.  This file is
 * (3): that process answers each admin request from the session's overlay
 * under the same io_lock an in-process admin read takes, so the answer is
 * exact by construction, and nothing about the overlay, its file or its
 * durability changes.  The price, one round trip on a unix socket per admin
 * request, is paid by admin reads alone; the data path is untouched.
 *
 * The channel.  STATE/view-FRONTEND.sock, mode 0600, peers of the serving
 * process's uid (or root) only (SO_PEERCRED); read-only requests.  A
 * request is fixed-size, little-endian: magic, op (READ, READ_DIRTY,
 * EXTENTS, INFO), offset, count, the size the reader announced (another size
 * is ESTALE: re-imaged), the client id.  A reply: magic, status (0 or an
 * errno), payload length; on success the session's identity (size, block
 * size, base, session number) and the op's payload (data, or runs of block
 * states), on error the message.  ENOENT means this process runs no session
 * of that client: the reader then reads the overlay on disk, which is then
 * quiescent (no process writes an overlay it does not run).  io_lock is held
 * while the answer is read into memory, never while it is sent, so a slow
 * reader cannot hold up a session turn.
 *
 * The reader's gate.  Asking costs a round trip, and most clients a view
 * reads run nowhere.  After a "none" answer the reader asks again only when
 * the client's live.json or overlay changed since just before it asked
 * (two stats a request): a frontend rewrites live.json (rename: a new
 * inode) when it opens a boot and when its turn makes the session, before
 * the first write goes in, and a rollback turn renames the overlay away, so
 * no session can start unseen (were live.json not written, a full state
 * directory, a write's change of the overlay's mtime would still tell).
 * The client's flock is not used for this: a test of it takes the lock for
 * an instant, and a boot's connection that tries to lock it at that
 * instant would be refused as busy.  A reader
 * keeps up to PEER_CONNS connections, so overlapping requests of one
 * handle are answered in parallel.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "cleanup.h"
#include "clientdir.h"
#include "live.h"
#include "liveview.h"
#include "session.h"
#include "store.h"

#define REQ_MAGIC 0x51564254u   /* "TBVQ" */
#define REPLY_MAGIC 0x52564254u /* "TBVR" */
#define REQ_BYTES 104
#define REPLY_BYTES 16
#define INFO_BYTES 104
#define RUN_BYTES 20
#define MAX_READ (1u << 20) /* bytes a READ answers; the reader splits longer ones */
#define MAX_RUNS 8192       /* runs an EXTENTS answers */
#define MAX_MESSAGE 1024    /* an error reply's text */
#define MAX_CONNS 256       /* connections answered at once (PEER_CONNS an admin handle) */
#define PEER_TIMEOUT_S 30   /* a reader gives up on a process that does not answer */
#define PEER_CONNS 4        /* requests a reader has in flight at once (per admin handle) */

enum op { OP_INFO = 1, OP_READ = 2, OP_READ_DIRTY = 3, OP_EXTENTS = 4 };

/* Whole reads and writes on a blocking socket; -1 with errno (EPIPE at EOF). */
static int read_all(int fd, void *buf, size_t len)
{
  uint8_t *p = buf;
  while (len) {
    ssize_t n = read(fd, p, len);
    if (n == 0) {
      errno = EPIPE;
      return -1;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return -1;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

static int write_all(int fd, const void *buf, size_t len)
{
  const uint8_t *p = buf;
  while (len) {
    ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return -1;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

int tb_liveview_socket_path(const char *state, const char *frontend, char *buf, size_t len)
{
  if (tb_path(buf, len, "%s/view-%s.sock", state, frontend) == -1)
    return -1;
  if (strlen(buf) >= sizeof(((struct sockaddr_un *)0)->sun_path))
    return tb_error("%s: the path is too long for a unix socket (at most %zu bytes): use a "
                    "shorter state directory",
                    buf, sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
  return 0;
}

/* The session's identity, as every successful reply carries it. */
static void encode_info(uint8_t *p, const struct tb_overlay_info *info)
{
  memset(p, 0, INFO_BYTES);
  tb_put_le64(p, info->size);
  tb_put_le32(p + 8, info->block_size);
  tb_put_le32(p + 12, info->base.version);
  tb_put_le64(p + 16, info->session);
  memcpy(p + 24, info->base.image, strnlen(info->base.image, TB_NAME_MAX));
  memcpy(p + 72, info->base.manifest_sha256, 32);
}

static int decode_info(const uint8_t *p, struct tb_overlay_info *info)
{
  memset(info, 0, sizeof *info);
  info->size = tb_get_le64(p);
  info->block_size = tb_get_le32(p + 8);
  info->base.version = tb_get_le32(p + 12);
  info->session = tb_get_le64(p + 16);
  memcpy(info->base.image, p + 24, TB_NAME_MAX);
  info->base.image[TB_NAME_MAX] = '\0';
  memcpy(info->base.manifest_sha256, p + 72, 32);
  if (!tb_name_valid(info->base.image) || info->block_size == 0)
    return tb_error("a malformed answer (base \"%.64s\")", info->base.image);
  return 0;
}

/* ---- the serving side -------------------------------------------------------------- */

static struct {
  pthread_mutex_t lock;
  int listen_fd;
  pthread_t listener;
  bool running;
  char path[108];
  struct conn_slot {
    pthread_t thread;
    int fd;
    bool used, done;
  } conns[MAX_CONNS];
} S = {.lock = PTHREAD_MUTEX_INITIALIZER, .listen_fd = -1};

static int send_reply(int fd, uint32_t status, const void *a, size_t alen, const void *b,
                      size_t blen)
{
  uint8_t h[REPLY_BYTES] = {0};
  tb_put_le32(h, REPLY_MAGIC);
  tb_put_le32(h + 4, status);
  tb_put_le32(h + 8, (uint32_t)(alen + blen));
  return write_all(fd, h, sizeof h) == 0 && (!alen || write_all(fd, a, alen) == 0) &&
                 (!blen || write_all(fd, b, blen) == 0)
             ? 0
             : -1;
}

static int send_error(int fd, int err, const char *fmt, ...) TB_PRINTF(3, 4);
static int send_error(int fd, int err, const char *fmt, ...)
{
  char msg[MAX_MESSAGE];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return send_reply(fd, (uint32_t)(err ? err : EIO), msg, strlen(msg), NULL, 0);
}

struct runs {
  uint8_t *buf;
  size_t n;
};

static int collect_run(void *ctx, uint64_t offset, uint64_t length, enum tb_block_state state)
{
  struct runs *r = ctx;
  if (r->n == MAX_RUNS)
    return 1; /* the reader asks again from where these end */
  uint8_t *p = r->buf + r->n++ * RUN_BYTES;
  tb_put_le64(p, offset);
  tb_put_le64(p + 8, length);
  tb_put_le32(p + 16, (uint32_t)state);
  return 0;
}

/* Answer one request.  Returns -1 when the connection is unusable. */
static int answer(int fd, const uint8_t *req, uint8_t *data)
{
  uint32_t op = tb_get_le32(req + 4);
  uint64_t offset = tb_get_le64(req + 8), count = tb_get_le64(req + 16),
           expect = tb_get_le64(req + 24);
  char id[TB_NAME_MAX + 1];
  memcpy(id, req + 32, TB_NAME_MAX);
  id[TB_NAME_MAX] = '\0';
  if (tb_get_le32(req) != REQ_MAGIC || op < OP_INFO || op > OP_EXTENTS || !tb_client_id_valid(id)) {
    send_error(fd, EINVAL, "a malformed request");
    return -1;
  }
  if ((op == OP_READ || op == OP_READ_DIRTY) && count > MAX_READ)
    return send_error(fd, EINVAL, "a read of %" PRIu64 " bytes (at most %u)", count, MAX_READ);
  struct tb_live_client *lc = tb_live_client_get(id);
  if (!lc)
    return send_error(fd, errno, "%s", tb_errmsg());
  uint64_t generation;
  struct tb_overlay *o = tb_live_read_begin(lc, &generation);
  if (!o) {
    tb_live_client_put(lc);
    return send_error(fd, ENOENT, "client %s has no session running here", id);
  }
  struct tb_overlay_info info;
  tb_overlay_info(o, &info);
  int r = 0, err = 0;
  char msg[MAX_MESSAGE] = "";
  struct runs runs = {data, 0};
  size_t len = 0;
  if (expect && info.size != expect) {
    err = ESTALE;
    snprintf(msg, sizeof msg, "%" PRIu64 " bytes, not %" PRIu64, info.size, expect);
  } else if (offset > info.size || count > info.size - offset) {
    err = EINVAL;
    snprintf(msg, sizeof msg, "a request beyond the end of the disk");
  } else if (op == OP_READ || op == OP_READ_DIRTY) {
    r = op == OP_READ ? tb_overlay_pread(o, data, (uint32_t)count, offset)
                      : tb_overlay_pread_dirty(o, data, (uint32_t)count, offset);
    len = (size_t)count;
  } else if (op == OP_EXTENTS) {
    r = tb_overlay_extents(o, offset, count, collect_run, &runs) == -1 ? -1 : 0;
    len = runs.n * RUN_BYTES;
  }
  if (r == -1) {
    err = errno ? errno : EIO;
    snprintf(msg, sizeof msg, "%s", tb_errmsg());
  }
  tb_live_read_end(lc); /* before sending: a slow reader must not hold up a turn */
  tb_live_client_put(lc);
  if (err)
    return send_error(fd, err, "client %s: %s", id, msg);
  uint8_t inf[INFO_BYTES];
  encode_info(inf, &info);
  return send_reply(fd, 0, inf, sizeof inf, data, len);
}

static bool peer_allowed(int fd)
{
  struct ucred cred;
  socklen_t len = sizeof cred;
  return getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 &&
         (cred.uid == 0 || cred.uid == geteuid());
}

static void *conn_main(void *arg)
{
  struct conn_slot *slot = arg;
  size_t cap = MAX_READ > MAX_RUNS * RUN_BYTES ? MAX_READ : MAX_RUNS * RUN_BYTES;
  uint8_t *data = malloc(cap);
  uint8_t req[REQ_BYTES];
  if (data && peer_allowed(slot->fd))
    while (read_all(slot->fd, req, sizeof req) == 0 && answer(slot->fd, req, data) == 0)
      ;
  free(data);
  pthread_mutex_lock(&S.lock);
  slot->done = true;
  pthread_mutex_unlock(&S.lock);
  return NULL;
}

/* Join the connection threads that ended.  Call with S.lock. */
static void reap(void)
{
  for (int i = 0; i < MAX_CONNS; i++)
    if (S.conns[i].used && S.conns[i].done) {
      pthread_join(S.conns[i].thread, NULL);
      close(S.conns[i].fd);
      S.conns[i] = (struct conn_slot){0};
    }
}

static void *listener_main(void *arg)
{
  (void)arg;
  for (;;) {
    int fd = accept4(S.listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd == -1) {
      if (errno == EINTR || errno == ECONNABORTED)
        continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOMEM || errno == ENOBUFS) {
        poll(NULL, 0, 100); /* out of descriptors: not a busy loop */
        continue;
      }
      return NULL; /* shut down */
    }
    pthread_mutex_lock(&S.lock);
    reap();
    struct conn_slot *slot = NULL;
    for (int i = 0; i < MAX_CONNS && !slot && S.running; i++)
      if (!S.conns[i].used)
        slot = &S.conns[i];
    if (slot) {
      *slot = (struct conn_slot){.fd = fd, .used = true};
      if (pthread_create(&slot->thread, NULL, conn_main, slot) != 0) {
        *slot = (struct conn_slot){0};
        slot = NULL;
      }
    }
    pthread_mutex_unlock(&S.lock);
    if (!slot) {
      uint8_t req[REQ_BYTES];
      /* Say why before closing, so the reader reports it; a peer that
       * sends nothing holds this thread up a second at most. */
      struct timeval tv = {.tv_sec = 1};
      setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      if (read_all(fd, req, sizeof req) == 0)
        send_error(fd, EAGAIN, "more than %d admin views at once", MAX_CONNS);
      close(fd);
    }
  }
}

int tb_liveview_serve(const char *state, const char *frontend)
{
  char path[TB_PATH_MAX];
  if (tb_liveview_socket_path(state, frontend, path, sizeof path) == -1)
    return -1;
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  strcpy(sa.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1)
    return tb_error_errno("%s", path);
  /* One frontend of a kind serves a state directory: a socket left by one
   * that died is replaced. */
  unlink(path);
  mode_t old = umask(0177);
  int r = bind(fd, (struct sockaddr *)&sa, sizeof sa);
  umask(old);
  if (r == -1 || listen(fd, 64) == -1) {
    tb_error_errno("cannot listen on %s", path);
    close(fd);
    return -1;
  }
  pthread_mutex_lock(&S.lock);
  S.listen_fd = fd;
  S.running = true;
  snprintf(S.path, sizeof S.path, "%s", path);
  int e = pthread_create(&S.listener, NULL, listener_main, NULL);
  if (e) {
    S.running = false;
    S.listen_fd = -1;
  }
  pthread_mutex_unlock(&S.lock);
  if (e) {
    close(fd);
    unlink(path);
    errno = e;
    return tb_error_errno("%s: cannot start its thread", path);
  }
  return 0;
}

void tb_liveview_serve_stop(void)
{
  pthread_mutex_lock(&S.lock);
  bool was = S.running;
  S.running = false;
  if (was) {
    unlink(S.path);
    shutdown(S.listen_fd, SHUT_RDWR); /* accept returns */
    for (int i = 0; i < MAX_CONNS; i++)
      if (S.conns[i].used)
        shutdown(S.conns[i].fd, SHUT_RDWR); /* their reads return */
  }
  pthread_mutex_unlock(&S.lock);
  if (!was)
    return;
  pthread_join(S.listener, NULL);
  close(S.listen_fd);
  S.listen_fd = -1;
  for (int i = 0; i < MAX_CONNS; i++)
    if (S.conns[i].used) {
      pthread_join(S.conns[i].thread, NULL);
      close(S.conns[i].fd);
      S.conns[i] = (struct conn_slot){0};
    }
}

/* ---- the reading side --------------------------------------------------------------- */

/* What a file was when last looked at (st_ino 0: it did not exist). */
struct file_id {
  dev_t dev;
  ino_t ino;
  off_t size;
  struct timespec mtime;
};

static void file_id_of(const char *path, struct file_id *id)
{
  struct stat st;
  memset(id, 0, sizeof *id);
  if (stat(path, &st) == 0)
    *id = (struct file_id){st.st_dev, st.st_ino, st.st_size, st.st_mtim};
}

static bool file_id_same(const struct file_id *a, const struct file_id *b)
{
  return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
         a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

struct tb_liveview_peer {
  pthread_mutex_t lock; /* everything below */
  pthread_cond_t freed;
  char state[TB_PATH_MAX];
  char id[TB_NAME_MAX + 1];
  char frontend[16];
  char live_json[TB_PATH_MAX], overlay[TB_PATH_MAX];
  /* Connections: one request at a time each, opened as requests overlap. */
  int fds[PEER_CONNS];
  bool busy[PEER_CONNS];
  /* The last answer was "no session here" and these files were so before
   * it was asked: while they stay so, no session started there since (a
   * frontend rewrites live.json when a session starts, before its first
   * write; a turn renames the overlay), so nothing is asked. */
  bool idle_known;
  struct file_id idle_live_json, idle_overlay;
  /* The base version of the last extents, open for holes in CLEAN runs. */
  char base_image[TB_NAME_MAX + 1];
  uint32_t base_version;
  int base_fd;
};

struct tb_liveview_peer *tb_liveview_peer_new(const char *state, const char *frontend,
                                              const char *id)
{
  struct tb_liveview_peer *p = calloc(1, sizeof *p);
  if (!p) {
    tb_error_errno("client %s", id);
    return NULL;
  }
  if (tb_clientdir_path(state, id, TB_CF_LIVE_JSON, p->live_json, sizeof p->live_json) == -1 ||
      tb_clientdir_path(state, id, TB_CF_OVERLAY, p->overlay, sizeof p->overlay) == -1) {
    free(p);
    return NULL;
  }
  pthread_mutex_init(&p->lock, NULL);
  pthread_cond_init(&p->freed, NULL);
  snprintf(p->state, sizeof p->state, "%s", state);
  snprintf(p->id, sizeof p->id, "%s", id);
  snprintf(p->frontend, sizeof p->frontend, "%s", frontend);
  for (int i = 0; i < PEER_CONNS; i++)
    p->fds[i] = -1;
  p->base_fd = -1;
  return p;
}

void tb_liveview_peer_free(struct tb_liveview_peer *p)
{
  if (!p)
    return;
  for (int i = 0; i < PEER_CONNS; i++)
    if (p->fds[i] >= 0)
      close(p->fds[i]);
  if (p->base_fd >= 0)
    close(p->base_fd);
  pthread_cond_destroy(&p->freed);
  pthread_mutex_destroy(&p->lock);
  free(p);
}

/* A connection to the frontend.  Returns the descriptor, -2 when no such
 * frontend runs (nobody listens), -1 on error. */
static int peer_connect(const struct tb_liveview_peer *p)
{
  char path[TB_PATH_MAX];
  if (tb_liveview_socket_path(p->state, p->frontend, path, sizeof path) == -1)
    return -1;
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  strcpy(sa.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1)
    return tb_error_errno("%s", path);
  struct timeval tv = {.tv_sec = PEER_TIMEOUT_S};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == -1) {
    int e = errno;
    close(fd);
    if (e == ENOENT || e == ECONNREFUSED)
      return -2;
    errno = e;
    return tb_error_errno("cannot connect to %s", path);
  }
  return fd;
}

/* One request and its answer on *FD (opened if -1, closed and set to -1 if
 * it broke): the identity into INFO, the payload into OUT (at most OUT_LEN
 * bytes; *GOT its length).  Returns 1, 0 (no session runs there) or -1.  A
 * connection that broke (the frontend restarted) is opened again once. */
static int ask_on(const struct tb_liveview_peer *p, int *fd, const uint8_t *req,
                  struct tb_overlay_info *info, void *out, size_t out_len, size_t *got)
{
  for (int attempt = 0;; attempt++) {
    if (*fd < 0 && (*fd = peer_connect(p)) < 0) {
      int r = *fd == -2 ? 0 : -1;
      *fd = -1;
      return r;
    }
    uint8_t h[REPLY_BYTES];
    if (write_all(*fd, req, REQ_BYTES) == -1 || read_all(*fd, h, sizeof h) == -1) {
      int e = errno;
      close(*fd);
      *fd = -1;
      if ((e == EPIPE || e == ECONNRESET) && attempt == 0)
        continue;
      errno = EIO;
      return tb_error("client %s: tabula-%sd did not answer: %s", p->id, p->frontend,
                      e == EAGAIN ? "timed out" : strerror(e));
    }
    uint32_t status = tb_get_le32(h + 4), len = tb_get_le32(h + 8);
    bool ok = tb_get_le32(h) == REPLY_MAGIC &&
              (status ? len <= MAX_MESSAGE : len >= INFO_BYTES && len - INFO_BYTES <= out_len);
    char msg[MAX_MESSAGE + 1];
    uint8_t inf[INFO_BYTES];
    if (ok && status)
      ok = read_all(*fd, msg, len) == 0;
    else if (ok)
      ok = read_all(*fd, inf, sizeof inf) == 0 && read_all(*fd, out, len - INFO_BYTES) == 0 &&
           decode_info(inf, info) == 0;
    if (!ok) {
      close(*fd);
      *fd = -1;
      errno = EIO;
      return tb_error("client %s: a malformed or short answer from tabula-%sd", p->id, p->frontend);
    }
    if (status == ENOENT)
      return 0;
    if (status) {
      msg[len] = '\0';
      errno = (int)status;
      return tb_error("tabula-%sd: %s", p->frontend, msg);
    }
    *got = len - INFO_BYTES;
    return 1;
  }
}

/* Ask OP unless no session can have started there since the last "none". */
static int peer_ask(struct tb_liveview_peer *p, enum op op, uint64_t offset, uint64_t count,
                    uint64_t expect, struct tb_overlay_info *info, void *out, size_t out_len,
                    size_t *got)
{
  uint8_t req[REQ_BYTES] = {0};
  tb_put_le32(req, REQ_MAGIC);
  tb_put_le32(req + 4, op);
  tb_put_le64(req + 8, offset);
  tb_put_le64(req + 16, count);
  tb_put_le64(req + 24, expect);
  memcpy(req + 32, p->id, strlen(p->id));
  /* Before asking: a change after this is seen next time. */
  struct file_id live_json, overlay;
  file_id_of(p->live_json, &live_json);
  file_id_of(p->overlay, &overlay);
  pthread_mutex_lock(&p->lock);
  if (p->idle_known && file_id_same(&live_json, &p->idle_live_json) &&
      file_id_same(&overlay, &p->idle_overlay)) {
    pthread_mutex_unlock(&p->lock);
    return 0;
  }
  int slot;
  for (;;) {
    for (slot = 0; slot < PEER_CONNS && p->busy[slot]; slot++)
      ;
    if (slot < PEER_CONNS)
      break;
    pthread_cond_wait(&p->freed, &p->lock);
  }
  p->busy[slot] = true;
  int fd = p->fds[slot];
  pthread_mutex_unlock(&p->lock);

  int r = ask_on(p, &fd, req, info, out, out_len, got);

  pthread_mutex_lock(&p->lock);
  p->fds[slot] = fd;
  p->busy[slot] = false;
  pthread_cond_signal(&p->freed);
  if (r == 0) {
    p->idle_known = true;
    p->idle_live_json = live_json;
    p->idle_overlay = overlay;
  } else if (r == 1) {
    p->idle_known = false;
  }
  pthread_mutex_unlock(&p->lock);
  return r;
}

int tb_liveview_peer_info(struct tb_liveview_peer *p, struct tb_overlay_info *info)
{
  size_t got;
  return peer_ask(p, OP_INFO, 0, 0, 0, info, NULL, 0, &got);
}

int tb_liveview_peer_pread(struct tb_liveview_peer *p, bool dirty_only, void *buf, uint32_t count,
                           uint64_t offset, uint64_t expect_size)
{
  int r = 1;
  /* Longer reads in pieces: each piece is exact at its moment, as a long
   * read of a running session's overlay in this process is. */
  for (uint32_t done = 0; r == 1 && done < count;) {
    uint32_t n = count - done < MAX_READ ? count - done : MAX_READ;
    struct tb_overlay_info info;
    size_t got;
    r = peer_ask(p, dirty_only ? OP_READ_DIRTY : OP_READ, offset + done, n, expect_size, &info,
                 (uint8_t *)buf + done, n, &got);
    if (r == 1 && got != n) {
      errno = EIO;
      r = tb_error("client %s: a short answer from tabula-%sd", p->id, p->frontend);
    }
    /* 0 after some pieces (the session ended in between): the caller
     * reads the whole request from disk. */
    done += n;
  }
  return r;
}

/* A descriptor of INFO's base version for the caller (a dup of the one
 * kept open), or -1. */
static int base_fd_for(struct tb_liveview_peer *p, const struct tb_overlay_info *info)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&p->lock);
  if (p->base_fd < 0 || strcmp(p->base_image, info->base.image) != 0 ||
      p->base_version != info->base.version) {
    char path[TB_PATH_MAX];
    int fd = -1;
    if (tb_store_version_path(p->state, info->base.image, info->base.version, path, sizeof path) ==
            0 &&
        (fd = open(path, O_RDONLY | O_CLOEXEC)) == -1)
      tb_error_errno("cannot open %s", path);
    if (fd < 0)
      return -1;
    if (p->base_fd >= 0)
      close(p->base_fd);
    p->base_fd = fd;
    snprintf(p->base_image, sizeof p->base_image, "%s", info->base.image);
    p->base_version = info->base.version;
  }
  int fd = fcntl(p->base_fd, F_DUPFD_CLOEXEC, 0);
  if (fd == -1)
    tb_error_errno("client %s: base %s@%u", p->id, info->base.image, info->base.version);
  return fd;
}

int tb_liveview_peer_extents(struct tb_liveview_peer *p, uint64_t offset, uint64_t count,
                             uint64_t expect_size, struct tb_liveview_run **runs_out,
                             size_t *n_runs, int *base_fd)
{
  *runs_out = NULL;
  *n_runs = 0;
  *base_fd = -1;
  uint8_t *buf = malloc(MAX_RUNS * RUN_BYTES);
  if (!buf)
    return tb_error_errno("client %s: extents", p->id);
  struct tb_overlay_info info;
  size_t got = 0;
  int r =
      peer_ask(p, OP_EXTENTS, offset, count, expect_size, &info, buf, MAX_RUNS * RUN_BYTES, &got);
  struct tb_liveview_run *runs = NULL;
  size_t n = got / RUN_BYTES;
  if (r == 1 && !(runs = calloc(n ? n : 1, sizeof *runs)))
    r = tb_error_errno("client %s: extents", p->id);
  for (size_t i = 0; r == 1 && i < n; i++) {
    const uint8_t *q = buf + i * RUN_BYTES;
    runs[i] = (struct tb_liveview_run){tb_get_le64(q), tb_get_le64(q + 8),
                                       (enum tb_block_state)tb_get_le32(q + 16)};
    uint64_t expect_at = i ? runs[i - 1].offset + runs[i - 1].length : offset;
    if (runs[i].offset != expect_at || runs[i].length == 0 || runs[i].state > TB_ZERO) {
      errno = EIO;
      r = tb_error("client %s: malformed extents from tabula-%sd", p->id, p->frontend);
    }
  }
  if (r == 1 && (*base_fd = base_fd_for(p, &info)) == -1)
    r = -1;
  if (r == 1) {
    *runs_out = runs;
    *n_runs = n;
  } else {
    free(runs);
  }
  free(buf);
  return r;
}
