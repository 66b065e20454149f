/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-restored: long work (merges) on a job thread.
 *
 * The main loop must never wait on disk-sized work, so merges are queued to
 * one worker thread and run one at a time.  The worker never touches daemon
 * state or connections: it posts messages (progress lines, the final reply)
 * to an outbox and writes a byte to a pipe; the main loop (jobs_drain) hands
 * them to the waiting connection if it is still there.
 *
 * A merge of a client's current overlay holds the client's lock for its whole
 * run (so no session can start on it), and afterwards moves the client onto
 * the new version: the merged overlay is kept as a retained session (a restore
 * point) and an empty overlay on the new version takes its place.  A pinned
 * client is re-pinned to the new version.  Killed at any point, the store's
 * builder leaves no version or a complete one, and the overlay is untouched
 * until the version is published; the move is replayed at the next start
 * (see move_finish).
 */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "clientdir.h"
#include "clientcheck.h"
#include "daemon.h"
#include "events.h"
#include "mailbox.h"
#include "merge.h"
#include "overlay.h"
#include "session.h"
#include "store.h"

#define MAX_QUEUED 32

struct job {
  struct job *next;
  struct merge_request req;
  char state_dir[TB_PATH_MAX];
  struct tb_client_conf client; /* copied: the config may be reloaded meanwhile */
  struct tb_config *cfg;        /* a reference: the clients the new version is checked for */
  /* progress, read by jobs_status (under the lock) */
  char phase[16];
  uint64_t done, total;
  bool running;
};

static void job_free(struct job *j)
{
  if (j->cfg)
    tb_config_unref(j->cfg);
  free(j->req.note);
  free(j);
}

struct message {
  struct message *next;
  uint64_t conn_id;
  json_t *line;
  bool final;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static struct job *queue, *current;
static size_t queued;
static struct message *outbox, **outbox_tail = &outbox;
static int wake_pipe[2] = {-1, -1};

int jobs_fd(void)
{
  return wake_pipe[0];
}

static void post_message(uint64_t conn, json_t *line, bool final)
{
  struct message *m = calloc(1, sizeof *m);
  if (!m) {
    json_decref(line);
    return;
  }
  m->conn_id = conn;
  m->line = line;
  m->final = final;
  pthread_mutex_lock(&lock);
  *outbox_tail = m;
  outbox_tail = &m->next;
  pthread_mutex_unlock(&lock);
  char b = 1;
  if (write(wake_pipe[1], &b, 1) == -1 && errno != EAGAIN)
    perror("tabula-restored: job pipe");
}

void jobs_drain(struct daemon *d)
{
  char buf[256];
  while (read(wake_pipe[0], buf, sizeof buf) > 0)
    ;
  pthread_mutex_lock(&lock);
  struct message *list = outbox;
  outbox = NULL;
  outbox_tail = &outbox;
  pthread_mutex_unlock(&lock);
  while (list) {
    struct message *m = list;
    list = m->next;
    struct conn *c = conn_by_id(m->conn_id);
    if (c && m->final)
      conn_finish(c, m->line);
    else if (c)
      conn_send(c, m->line);
    else
      json_decref(m->line);
    if (m->final)
      d->merges++; /* counted for metrics whatever happened to the peer */
    free(m);
  }
}

json_t *jobs_status(void)
{
  json_t *arr = json_array();
  pthread_mutex_lock(&lock);
  if (current)
    json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:s, s:I, s:I}", "kind", "merge", "what",
                                         current->req.client, "into", current->req.into, "phase",
                                         current->phase, "done", (json_int_t)current->done, "total",
                                         (json_int_t)current->total));
  for (struct job *j = queue; j; j = j->next)
    json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:s}", "kind", "merge", "what",
                                         j->req.client, "into", j->req.into, "phase", "queued"));
  pthread_mutex_unlock(&lock);
  return arr;
}

/* ---- the merge job ------------------------------------------------------------------------- */

static int merge_progress(void *ctx, const char *phase, uint64_t done, uint64_t total)
{
  struct job *j = ctx;
  pthread_mutex_lock(&lock);
  snprintf(j->phase, sizeof j->phase, "%s", phase);
  j->done = done;
  j->total = total;
  pthread_mutex_unlock(&lock);
  if (j->req.progress)
    post_message(j->req.conn_id,
                 json_pack("{s:{s:s, s:I, s:I}}", "progress", "phase", phase, "done",
                           (json_int_t)done, "total", (json_int_t)total),
                 false);
  return 0;
}

/* After a merge client C continues on IMAGE@VERSION.  A pin (mailbox or
 * configuration) or another image would take it back, so re-pin it.  The
 * edit is decided on the mailbox as read and applied only if its image and
 * pin are still what they were (else decided again on what they are). */
static int repin(const char *state, const struct tb_client_conf *c, const char *image,
                 uint32_t version)
{
  struct tb_mailbox mb;
  if (tb_mailbox_read(state, c->id, &mb) == -1)
    return -1;
  for (;;) {
    bool other_image = strcmp(mb.image[0] ? mb.image : c->image, image) != 0;
    if (!mb.pin && !c->version && !other_image)
      return 0;
    char image_was[sizeof mb.image];
    memcpy(image_was, mb.image, sizeof image_was);
    struct tb_mailbox_change ch = {.image = other_image ? image : NULL,
                                   .set_pin = true,
                                   .pin = version,
                                   .if_image = image_was,
                                   .if_pin = true,
                                   .pin_was = mb.pin};
    int r = tb_mailbox_change(state, c->id, &ch, &mb);
    if (r != 1)
      return r;
  }
}

/* ---- moving a merged client onto its new version ------------------------------------------
 *
 * Retire, create and re-pin are one recoverable step.  clients/ID/overlay.next,
 * the new empty overlay on the merged version, is the journal of intent: it is
 * built first (under a temporary name, durable, then linked into place), and
 * its header names the version and the session number.  Then:
 *   1. the mailbox re-pins the client to that version (idempotent);
 *   2. sessions/N becomes a hard link of the merged overlay (the restore point);
 *   3. overlay.next is renamed over overlay, and the directory fsynced.
 * clients/ID/overlay exists at every point: the merged one (intact, on its old
 * version) until the rename, the new one after it.  A kill anywhere leaves
 * overlay.next behind and the daemon's start replays steps 1-3 (move_recover).
 * A session that starts on the merged overlay first abandons the move
 * (session.c removes overlay.next and the link: the client stays where the
 * guest left it).
 *
 * TABULA_DEBUG_KILL_MOVE=N (tests only) kills the daemon with SIGKILL after
 * step N (0: overlay.next is built), so a test can cut at every point. */
static void debug_kill_point(int step)
{
  const char *v = getenv("TABULA_DEBUG_KILL_MOVE");
  if (v && *v && atoi(v) == step) {
    fprintf(stderr, "tabula-restored: TABULA_DEBUG_KILL_MOVE=%d: killed in move_client\n", step);
    raise(SIGKILL);
  }
}

/* Steps 1-3 for client C, overlay.next NEXT in place (the client's lock is
 * held). */
static int move_finish(const char *state, const struct tb_client_conf *c, const char *next)
{
  const char *id = c->id;
  char overlay[TB_PATH_MAX], retained[TB_PATH_MAX], sessions[TB_PATH_MAX];
  struct tb_overlay_info ni;
  if (tb_overlay_read_info(next, &ni) == -1 ||
      tb_clientdir_path(state, id, TB_CF_OVERLAY, overlay, sizeof overlay) == -1 ||
      tb_clientdir_path(state, id, TB_CF_SESSIONS, sessions, sizeof sessions) == -1 ||
      tb_clientdir_session(state, id, ni.session, retained, sizeof retained) == -1)
    return -1;
  if (repin(state, c, ni.base.image, ni.base.version) == -1)
    return -1;
  debug_kill_point(1);
  struct stat st;
  bool used =
      stat(overlay, &st) == 0 && (uint64_t)st.st_blocks * S_BLKSIZE > TB_OVERLAY_HEADER_SIZE;
  if (used && ni.session > 0 && access(retained, F_OK) == -1) {
    if (tb_mkdirs(sessions, true) == -1)
      return -1;
    if (link(overlay, retained) == -1)
      return tb_error_errno("cannot keep %s as %s", overlay, retained);
    if (tb_fsync_dir(retained) == -1)
      return -1;
  }
  debug_kill_point(2);
  if (rename(next, overlay) == -1)
    return tb_error_errno("cannot move %s to %s", next, overlay);
  debug_kill_point(3);
  return tb_fsync_dir(overlay);
}

/* Retire the merged overlay as a retained session and start an empty one on
 * the new version (the client's lock is held). */
static int move_client(const struct job *j, const char *overlay, const struct tb_merge_result *res)
{
  const char *state = j->state_dir;
  const char *id = j->req.client;
  struct tb_overlay_info info;
  char next[TB_PATH_MAX];
  if (tb_overlay_read_info(overlay, &info) == -1 ||
      tb_clientdir_path(state, id, TB_CF_OVERLAY_NEXT, next, sizeof next) == -1)
    return -1;
  uint64_t number = tb_client_last_session(state, id);
  struct tb_base_id base;
  uint64_t size;
  unlink(next); /* a move abandoned before it was built */
  if (tb_base_lookup(state, res->image, res->version, &base, NULL, 0, &size) == -1 ||
      tb_overlay_create(next, size, info.block_size, &base, number) == -1)
    return -1;
  debug_kill_point(0);
  return move_finish(state, &j->client, next);
}

/* At the daemon's start: finish the moves a kill interrupted. */
void jobs_recover(const struct tb_config *cfg)
{
  char **ids; /* every client's and disk's directory */
  size_t n_ids;
  if (tb_store_clients(cfg->state_dir, &ids, &n_ids) == -1)
    return;
  for (size_t i = 0; i < n_ids; i++) {
    const char *id = ids[i];
    char next[TB_PATH_MAX];
    if (tb_clientdir_path(cfg->state_dir, id, TB_CF_OVERLAY_NEXT, next, sizeof next) == -1 ||
        access(next, F_OK) == -1)
      continue;
    const struct tb_client_conf *c = tb_config_client(cfg, id);
    if (!c) {
      log_msg("%s: a merge's move of client %s was interrupted, and the client is no longer "
              "configured; it is left as it is",
              next, id);
      continue;
    }
    int fd = tb_client_lock(cfg->state_dir, c->id, false);
    if (fd == -1) {
      log_msg("%s: the interrupted move of client %s onto its merged version waits: %s", next,
              c->id, tb_errmsg());
      continue;
    }
    if (access(next, F_OK) == 0) {
      if (move_finish(cfg->state_dir, c, next) == 0) {
        log_msg("client %s: finished its move onto its merged version, interrupted by a crash "
                "(%s)",
                c->id, next);
        tb_eventf(cfg->state_dir, "merge-move-recovered", c->id, "{s:s}", "file", next);
      } else {
        log_msg("client %s: cannot finish its interrupted move onto its merged version: %s", c->id,
                tb_errmsg());
        tb_eventf(cfg->state_dir, "error", c->id, "{s:s}", "error", tb_errmsg());
      }
    }
    tb_client_unlock(fd);
  }
  tb_strv_free(ids, n_ids);
}

/* A new version checked against every client that follows its image's
 * newest version (clients.ID.preserve, watchdog.protect), whoever asked for
 * the merge (tabulactl, a merge window, a maintenance finish): one that
 * cannot be served is a warning and a client-unservable event naming the
 * rule, the version and the way back, as after a scheduled pull (pulls.c). */
static void check_clients(const struct job *j, const char *image, uint32_t version)
{
  const struct tb_config *cfg = j->cfg;
  for (size_t k = 0; k < cfg->n_clients; k++) {
    const struct tb_client_conf *c = &cfg->clients[k];
    if (c->version || strcmp(c->image, image) != 0 ||
        tb_client_check_version(cfg, c, image, version) == 0)
      continue;
    char why[1024];
    snprintf(why, sizeof why, "%s", tb_errmsg());
    log_msg("warning: after the merge of %s into %s@%" PRIu32 ", client %s is refused: %s (to go "
            "back: tabulactl image promote %s@%" PRIu32 ")",
            j->req.client, image, version, c->id, why, image, version > 1 ? version - 1 : 1);
    tb_eventf(j->state_dir, "client-unservable", c->id, "{s:s, s:s, s:s, s:I}", "error", why,
              "after", "merge", "image", image, "version", (json_int_t)version);
  }
}

/* The client's lock (tb_client_lock) is released when the variable goes out of scope. */
static void unlock_client(int *fd)
{
  tb_client_unlock(*fd);
}
#define CLEANUP_CLIENT_UNLOCK __attribute__((cleanup(unlock_client)))

static json_t *run_merge(struct job *j)
{
  const char *state = j->state_dir;
  const char *id = j->req.client;
  CLEANUP_CLIENT_UNLOCK int fd = tb_client_lock(state, id, false);
  if (fd == -1)
    return reply_error("%s", tb_errmsg());
  char overlay[TB_PATH_MAX];
  int r = j->req.session > 0
              ? tb_clientdir_session(state, id, (uint64_t)j->req.session, overlay, sizeof overlay)
              : tb_clientdir_path(state, id, TB_CF_OVERLAY, overlay, sizeof overlay);
  if (r == -1)
    return reply_error("%s", tb_errmsg());
  if (access(overlay, F_OK) == -1)
    return j->req.session > 0
               ? reply_error("client %s has no retained session %lld (see tabulactl sessions %s)",
                             id, (long long)j->req.session, id)
               : reply_error("client %s has no overlay to merge (it has not had a session yet)",
                             id);
  tb_eventf(state, "merge-start", id, "{s:s, s:I}", "into", j->req.into, "session",
            (json_int_t)j->req.session);
  struct tb_merge_result res;
  if (tb_merge(state, overlay, j->req.into, j->req.note, merge_progress, j, &res) == -1) {
    tb_eventf(state, "merge-failed", id, "{s:s, s:s}", "into", j->req.into, "error", tb_errmsg());
    return reply_error("%s", tb_errmsg());
  }
  bool moved = false;
  if (j->req.session == 0) {
    if (move_client(j, overlay, &res) == -1)
      tb_eventf(state, "error", id, "{s:s}", "error", tb_errmsg());
    else
      moved = true;
  }
  if (moved && j->req.merged)
    j->req.merged(state, &j->req, res.image, res.version);
  check_clients(j, res.image, res.version);
  double secs = (double)res.duration_ms / 1000;
  json_t *fig = json_pack(
      "{s:s, s:I, s:s, s:I, s:I, s:I, s:b, s:I, s:I, s:b}", "image", res.image, "version",
      (json_int_t)res.version, "base_image", res.base_image, "base_version",
      (json_int_t)res.base_version, "dirty_bytes", (json_int_t)res.dirty_bytes, "changed_bytes",
      (json_int_t)res.changed_bytes, "reflink", res.reflink, "duration_ms",
      (json_int_t)res.duration_ms, "session", (json_int_t)j->req.session, "client_moved", moved);
  json_object_set_new(fig, "mb_per_s",
                      json_real(secs > 0 ? (double)res.dirty_bytes / 1e6 / secs : 0));
  tb_event(state, "merge", id, json_deep_copy(fig));
  return reply_ok(fig);
}

static void *worker(void *arg)
{
  for (;;) {
    pthread_mutex_lock(&lock);
    while (!queue)
      pthread_cond_wait(&cond, &lock);
    struct job *j = queue;
    queue = j->next;
    queued--;
    current = j;
    j->running = true;
    pthread_mutex_unlock(&lock);

    json_t *reply = run_merge(j);

    pthread_mutex_lock(&lock);
    current = NULL;
    pthread_mutex_unlock(&lock);
    post_message(j->req.conn_id, reply, true);
    job_free(j);
  }
  return NULL;
}

int jobs_start(void)
{
  if (pipe2(wake_pipe, O_NONBLOCK | O_CLOEXEC) == -1)
    return tb_error_errno("job pipe");
  pthread_t t;
  int e = pthread_create(&t, NULL, worker, NULL);
  if (e) {
    errno = e;
    return tb_error_errno("cannot start the job thread");
  }
  pthread_detach(t);
  return 0;
}

/* Append J to the queue: -1 with a message when the queue is full or J's
 * client has a merge queued or running. */
static int enqueue(struct job *j)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&lock);
  if (queued >= MAX_QUEUED)
    return tb_error("%d merges are already queued; try again later", MAX_QUEUED);
  for (struct job *q = queue; q; q = q->next)
    if (strcmp(q->req.client, j->req.client) == 0 ||
        (current && strcmp(current->req.client, j->req.client) == 0))
      return tb_error("a merge of %s is already queued or running", j->req.client);
  if (current && strcmp(current->req.client, j->req.client) == 0)
    return tb_error("a merge of %s is already running", j->req.client);
  struct job **tail = &queue;
  while (*tail)
    tail = &(*tail)->next;
  *tail = j;
  queued++;
  pthread_cond_signal(&cond);
  return 0;
}

int jobs_submit_merge(struct daemon *d, struct merge_request *req)
{
  struct job *j = calloc(1, sizeof *j);
  const struct tb_client_conf *c = tb_config_client(d->cfg, req->client);
  if (!j || !c) {
    tb_error("cannot queue the merge of %s", req->client);
    free(j);
    free(req->note);
    free(req);
    return -1;
  }
  j->req = *req;
  free(req);
  snprintf(j->state_dir, sizeof j->state_dir, "%s", d->cfg->state_dir);
  j->client = *c; /* only plain fields are used by the job (id, image, version) */
  j->client.refresh = NULL;
  j->client.merge_when = NULL;
  j->client.merge_note = NULL;
  j->client.preserve = NULL;
  j->client.watchdog = NULL;
  j->client.allow.nets = (struct tb_cidr_list){0};
  j->cfg = tb_config_ref(d->cfg);
  snprintf(j->phase, sizeof j->phase, "queued");
  if (enqueue(j) == -1) {
    job_free(j);
    return -1;
  }
  return 0;
}
