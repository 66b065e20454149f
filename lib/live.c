/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: live clients (see live.h) -- one client's boots in one frontend process.
 *
 * Each client this process has seen has one struct tb_live_client, found by
 * id in a list (live_lock).  Its state:
 *
 *   IDLE          no connection of the current boot, no session held here
 *   BOOTING       connections open, the turn planned (tb_session_plan) but not
 *                 done: reads come from the plan, the first change commits it
 *   RUNNING       a session (tb_session) with connections
 *   RECONNECTING  a session whose connections all closed; it waits until
 *                 grace_until for its boot to come back, then ends
 *
 * A connection belongs to the boot that was current when it opened (its
 * boot_gen).  When a new boot is seen (boot.h: another boot token, a boot
 * marker newer than the session's start) the old session ends at once and
 * boot_gen moves on, so connections of the old boot (a PC reset without a
 * FIN leaves them open) get ESHUTDOWN instead of writing into the new one.
 *
 * After the process restarts, a session that session.json still calls active
 * is taken over (tb_session_resume) by a connection of the same boot that
 * comes within reconnect_grace of the restart; one that nobody takes over is
 * ended when its grace has passed.
 *
 * A client with further disks (conf.h "disks") has one tb_live_client a
 * disk ("pc01", "pc01/games"), each with its own session, overlay, lock and
 * turn, and one boot across them (its machine, struct machine):
 *   - a disk's boot markers are its client's (clients/ID/boot);
 *   - the machine counts its boots (epoch): a disk that sees a new boot
 *     (another boot token than the machine's, a newer marker) starts the
 *     machine's next one, and the sessions of its other disks that belong
 *     to an older boot end at once (their stale connections get ESHUTDOWN),
 *     so the games disk of a PC that rebooted turns (rolls back or keeps,
 *     by its own policy) in the same boot as its system disk;
 *   - each disk turns at its own first write, so a disk the boot never
 *     writes spends no session, as a probe does not;
 *   - the busy rule is the machine's: while a process serves any of its
 *     disks it holds clients/ID/disks.lock (flock), so another frontend
 *     process (NBD or iSCSI) is refused every disk of that client;
 *   - the I/O limits are the machine's, one budget over all its disks.
 * A client without disks has no machine: nothing of this applies to it.
 *
 * Lock order: live_lock, then a client's turn_lock, then its io_lock (write),
 * then guard_lock; machine_lock is a leaf (taken under turn_lock).  I/O holds io_lock for reading
 * (so a transition waits for the requests in flight), never turn_lock; live_lock is never held
 * across I/O or a turn.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <jansson.h>

#include "clientdir.h"
#include "boot.h"
#include "events.h"
#include "guards.h"
#include "live.h"
#include "session.h"
#include "store.h"
#include "watchdog-conf.h"

/* How often the running sessions' figures in live.json are refreshed. */
#define LIVE_FIGURES_MS 5000

enum live_state { LIVE_IDLE, LIVE_BOOTING, LIVE_RUNNING, LIVE_RECONNECTING };
static const char *const state_names[] = {"ended", "booting", "running", "reconnecting"};

struct tb_conn {
  struct tb_conn *next; /* the client's connections (turn_lock) */
  struct tb_live_client *lc;
  uint64_t boot_gen;
  bool admin;
  char frontend[8];
  char peer[128];
  int64_t since_ms;
  uint64_t size;
  uint32_t block_size;
  bool read_only;
  struct tb_limit *limit; /* the client's I/O limits (limit.h), NULL: none */
};

struct tb_live_client {
  struct tb_live_client *next;
  char id[TB_NAME_MAX + 1];
  int refs; /* connections, admin handles, ticks; live_lock */

  pthread_mutex_t turn_lock; /* everything below, except as noted */
  enum live_state state;
  uint64_t boot_gen;
  struct tb_conn *conns; /* of every boot, for status */
  int boot_conns;        /* connections of the current boot */
  struct tb_config *cfg; /* a reference held for the boot: C points into it */
  const struct tb_client_conf *c;
  struct tb_boot_note boot;
  int64_t boot_started_ms;
  int64_t grace_until_ms;
  bool deny_applied;

  pthread_rwlock_t io_lock;     /* readers: I/O; writer: a change of plan or session */
  struct tb_session_plan *plan; /* BOOTING */
  struct tb_session *session;   /* RUNNING, RECONNECTING */
  uint64_t generation;          /* bumped when session changes (io_lock) */
  uint64_t plan_bytes_read;     /* atomic: read from the plan, counted in the session */

  struct tb_guards guards; /* of the session */
  pthread_mutex_t guard_lock;
  int64_t idle_ms;
  int64_t last_io_ms; /* atomic; this and every interval here: tb_mono_ms() */
  int64_t idle_reported_ms;
  int64_t published_ms;    /* live.json last written (turn_lock) */
  int64_t published_io_ms; /* last_io_ms it showed */

  uint64_t epoch;     /* the machine's boot this disk's boot belongs to (turn_lock) */
  bool holds_machine; /* holds its machine's disks.lock (turn_lock) */
};

/* The machine of a client with further disks: its boots and its hold of
 * clients/ID/disks.lock, shared by the tb_live_client of each disk. */
struct machine {
  struct machine *next;
  char id[TB_NAME_MAX + 1];
  uint64_t epoch; /* its boots seen by this process */
  char token[65]; /* the boot id of the current boot, or "" */
  int hold_fd;    /* disks.lock while holders > 0 */
  int holders;    /* its disks' clients holding a boot here */
};

static struct tb_live_client *live_list;
static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t process_start_ms;
static bool swept;               /* sessions of a dead process past their grace were ended */
static bool low_space;           /* atomic: the state directory is below its reserve */
static struct machine *machines; /* never freed: one small entry a client with disks */
static pthread_mutex_t machine_lock = PTHREAD_MUTEX_INITIALIZER;

/* ---- machines: one boot across a client's disks ------------------------------- */

/* The client part of a client or disk id ("pc01/games" -> "pc01"). */
static void client_of(const char *id, char out[TB_NAME_MAX + 1])
{
  size_t n = strcspn(id, "/");
  memcpy(out, id, n);
  out[n] = '\0';
}

static bool has_machine(const struct tb_client_conf *c)
{
  return c->n_disks > 0 || c->disk[0];
}

/* machine_lock held. */
static struct machine *machine_get(const char *client)
{
  struct machine *m;
  for (m = machines; m; m = m->next)
    if (strcmp(m->id, client) == 0)
      return m;
  if ((m = calloc(1, sizeof *m))) {
    snprintf(m->id, sizeof m->id, "%s", client);
    m->hold_fd = -1;
    m->next = machines;
    machines = m;
  }
  return m;
}

/* Hold LC's machine for a boot (turn_lock held): the first disk of a
 * machine to boot in this process takes clients/ID/disks.lock. */
static int machine_hold(struct tb_live_client *lc, const char *state, const char *client)
{
  if (lc->holds_machine)
    return 0;
  char dir[TB_PATH_MAX], path[TB_PATH_MAX];
  pthread_mutex_lock(&machine_lock);
  struct machine *m = machine_get(client);
  int r = m ? 0 : tb_error_errno("client %s", client);
  if (m && m->holders == 0) {
    int fd = -1;
    r = tb_clientdir_mkdir(state, client, dir, sizeof dir) == -1 ||
                tb_clientdir_path(state, client, TB_CF_DISKS_LOCK, path, sizeof path) == -1
            ? -1
            : 0;
    if (r == 0 && (fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600)) == -1)
      r = tb_error_errno("cannot open %s", path);
    if (r == 0 && flock(fd, LOCK_EX | LOCK_NB) == -1) {
      int err = errno;
      r = err == EWOULDBLOCK
              ? tb_error("client %s is busy: another process serves one of its disks (every "
                         "disk of a client is served by one frontend at a time)",
                         client)
              : tb_error_errno("cannot lock %s", path);
      close(fd);
      errno = err;
      fd = -1;
    }
    m->hold_fd = fd;
  }
  if (r == 0) {
    m->holders++;
    lc->holds_machine = true;
  }
  pthread_mutex_unlock(&machine_lock);
  return r;
}

/* LC's boot is over (turn_lock held): the last disk lets the machine go. */
static void machine_release(struct tb_live_client *lc)
{
  if (!lc->holds_machine)
    return;
  char client[TB_NAME_MAX + 1];
  client_of(lc->id, client);
  pthread_mutex_lock(&machine_lock);
  struct machine *m = machine_get(client);
  if (m && --m->holders == 0) {
    close(m->hold_fd);
    m->hold_fd = -1;
  }
  pthread_mutex_unlock(&machine_lock);
  lc->holds_machine = false;
}

/* The machine's current boot, after LC's connection with TOKEN (or NULL)
 * was seen; NEW_BOOT: LC saw a new boot.  Returns the machine's epoch and
 * sets *BEGAN when this began the machine's next boot. */
static uint64_t machine_boot(const char *id, const char *token, bool new_boot, bool *began)
{
  char client[TB_NAME_MAX + 1];
  client_of(id, client);
  pthread_mutex_lock(&machine_lock);
  struct machine *m = machine_get(client);
  uint64_t epoch = 0;
  *began = false;
  if (m) {
    if (new_boot || (token && m->token[0] && strcmp(token, m->token) != 0)) {
      m->epoch++;
      m->token[0] = '\0';
      *began = true;
    }
    if (token)
      snprintf(m->token, sizeof m->token, "%s", token);
    epoch = m->epoch;
  }
  pthread_mutex_unlock(&machine_lock);
  return epoch;
}

static uint64_t machine_epoch(const char *id)
{
  char client[TB_NAME_MAX + 1];
  client_of(id, client);
  pthread_mutex_lock(&machine_lock);
  struct machine *m = machine_get(client);
  uint64_t epoch = m ? m->epoch : 0;
  pthread_mutex_unlock(&machine_lock);
  return epoch;
}

/* ---- the registry ------------------------------------------------------------ */

struct tb_live_client *tb_live_client_get(const char *id)
{
  pthread_mutex_lock(&live_lock);
  if (!process_start_ms)
    process_start_ms = tb_mono_ms();
  struct tb_live_client *lc;
  for (lc = live_list; lc; lc = lc->next)
    if (strcmp(lc->id, id) == 0)
      break;
  if (!lc && (lc = calloc(1, sizeof *lc))) {
    snprintf(lc->id, sizeof lc->id, "%s", id);
    pthread_mutex_init(&lc->turn_lock, NULL);
    pthread_rwlock_init(&lc->io_lock, NULL);
    pthread_mutex_init(&lc->guard_lock, NULL);
    lc->next = live_list;
    live_list = lc;
  }
  if (lc)
    lc->refs++;
  pthread_mutex_unlock(&live_lock);
  if (!lc)
    tb_error_errno("client %s", id);
  return lc;
}

/* A client's state is dropped when nothing refers to it and it holds
 * nothing (no plan, no session). */
void tb_live_client_put(struct tb_live_client *lc)
{
  pthread_mutex_lock(&live_lock);
  bool drop = --lc->refs == 0;
  if (drop) {
    pthread_mutex_lock(&lc->turn_lock);
    drop = lc->state == LIVE_IDLE && !lc->conns;
    pthread_mutex_unlock(&lc->turn_lock);
  }
  if (drop) {
    for (struct tb_live_client **pp = &live_list; *pp; pp = &(*pp)->next)
      if (*pp == lc) {
        *pp = lc->next;
        break;
      }
    pthread_mutex_destroy(&lc->turn_lock);
    pthread_rwlock_destroy(&lc->io_lock);
    pthread_mutex_destroy(&lc->guard_lock);
    tb_guards_free(&lc->guards);
    tb_config_unref(lc->cfg);
    free(lc);
  }
  pthread_mutex_unlock(&live_lock);
}

/* ---- live.json: what is happening now, for tabulactl ---------------------------- */

/* The wall-clock time of monotonic time MONO, for display. */
static int64_t wall_of(int64_t mono)
{
  return tb_now_ms() - (tb_mono_ms() - mono);
}

/* Written at every change of state or connections; runtime information, so
 * it is renamed into place but not fsynced (after a power cut the pid in it
 * is dead, and the daemon shows the state as stale). */
static void write_live_json(struct tb_live_client *lc, const char *state_dir)
{
  char path[TB_PATH_MAX], tmp[TB_PATH_MAX];
  if (!state_dir ||
      tb_clientdir_path(state_dir, lc->id, TB_CF_LIVE_JSON, path, sizeof path) == -1 ||
      tb_path(tmp, sizeof tmp, "%s.%d", path, (int)getpid()) == -1)
    return;
  json_t *conns = json_array();
  for (struct tb_conn *c = lc->conns; c; c = c->next)
    json_array_append_new(conns, json_pack("{s:s, s:s, s:I, s:b}", "frontend", c->frontend, "peer",
                                           c->peer, "since", (json_int_t)c->since_ms, "current",
                                           c->boot_gen == lc->boot_gen));
  json_t *session = lc->session ? json_integer((json_int_t)lc->session->number) : json_null();
  /* The running session's figures, as of now (the tick refreshes them). */
  json_t *figures = json_null();
  if (lc->session) {
    struct tb_overlay_stats st;
    struct tb_overlay_info info;
    tb_overlay_stats(lc->session->overlay, &st);
    tb_overlay_info(lc->session->overlay, &info);
    figures =
        json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "dirty_bytes",
                  (json_int_t)(info.dirty_blocks * info.block_size), "data_bytes",
                  (json_int_t)(info.data_blocks * info.block_size), "bytes_read",
                  (json_int_t)(st.bytes_read + lc->session->bytes_read_before), "bytes_written",
                  (json_int_t)st.bytes_written, "errors", (json_int_t)st.errors, "last_io",
                  (json_int_t)wall_of(__atomic_load_n(&lc->last_io_ms, __ATOMIC_RELAXED)),
                  "quota_bytes", (json_int_t)(lc->c ? lc->c->quota : 0));
  }
  lc->published_ms = tb_mono_ms();
  lc->published_io_ms = __atomic_load_n(&lc->last_io_ms, __ATOMIC_RELAXED);
  json_t *o = json_pack(
      "{s:s, s:o, s:i, s:I, s:o, s:{s:s, s:s?, s:I, s:s}, s:o, s:o}", "state",
      state_names[lc->state], "session", session, "pid", (int)getpid(), "updated",
      (json_int_t)tb_now_ms(), "connections", conns, "boot", "via",
      lc->boot.via[0] ? lc->boot.via : "none", "token", lc->boot.token[0] ? lc->boot.token : NULL,
      "marker_seq", (json_int_t)lc->boot.marker_seq, "peer", lc->boot.peer, "grace_until",
      lc->state == LIVE_RECONNECTING ? json_integer(wall_of(lc->grace_until_ms)) : json_null(),
      "figures", figures);
  char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
  json_decref(o);
  if (!text)
    return;
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd >= 0) {
    bool ok = tb_pwrite_full(fd, text, strlen(text), 0) == 0;
    close(fd);
    if (!ok || rename(tmp, path) == -1)
      unlink(tmp);
  }
  free(text);
}

static void publish(struct tb_live_client *lc)
{
  write_live_json(lc, lc->cfg ? lc->cfg->state_dir : NULL);
}

/* ---- transitions (turn_lock held) -------------------------------------------------- */

/* The data-path watchdog of the boot: protected regions resolved against
 * the master its overlay is (or will be) built on, idle detection.  A rule
 * that cannot be resolved (a partition the master does not have) refuses
 * the client: serving it unguarded is not what the administrator asked. */
static int guards_resolve(struct tb_live_client *lc, const char *base_path, uint64_t size)
{
  struct tb_watchdog_conf w;
  tb_guards_free(&lc->guards);
  lc->idle_ms = 0;
  if (tb_watchdog_for(lc->cfg->watchdog, lc->c->watchdog, &w) == -1)
    return tb_error_prefix("client %s", lc->id);
  int r = tb_guards_resolve(&w, base_path, size, &lc->guards);
  lc->idle_ms = w.idle_ms;
  tb_watchdog_free(&w);
  return r == -1 ? tb_error_prefix("client %s", lc->id) : 0;
}

/* A session began (commit or resume): idle detection and the reserve. */
static void guards_begin(struct tb_live_client *lc)
{
  struct tb_session *s = lc->session;
  __atomic_store_n(&lc->last_io_ms, tb_mono_ms(), __ATOMIC_RELAXED);
  lc->idle_reported_ms = 0;
  lc->deny_applied = __atomic_load_n(&low_space, __ATOMIC_RELAXED);
  if (lc->deny_applied)
    tb_overlay_deny_new_blocks(s->overlay, true);
}

/* Swap what I/O reads: a plan, a session, or nothing. */
static void set_view(struct tb_live_client *lc, struct tb_session_plan *plan,
                     struct tb_session *session)
{
  pthread_rwlock_wrlock(&lc->io_lock);
  struct tb_session_plan *old_plan = lc->plan;
  lc->plan = plan;
  if (lc->session != session)
    lc->generation++;
  lc->session = session;
  pthread_rwlock_unlock(&lc->io_lock);
  if (old_plan != plan)
    tb_session_plan_free(old_plan);
}

/* Connections of the boot before this become stale.  Readers load boot_gen
 * under io_lock but writers change it under turn_lock only, hence atomics. */
static void next_boot(struct tb_live_client *lc)
{
  __atomic_add_fetch(&lc->boot_gen, 1, __ATOMIC_RELEASE);
}

/* End whatever the current boot holds; its connections become stale. */
static void end_boot(struct tb_live_client *lc)
{
  struct tb_session *s = lc->session;
  set_view(lc, NULL, NULL);
  if (s && tb_session_end(s) == -1)
    tb_eventf(lc->cfg->state_dir, "session-end-failed", lc->id, "{s:s}", "error", tb_errmsg());
  tb_guards_free(&lc->guards);
  lc->state = LIVE_IDLE;
  machine_release(lc);
  next_boot(lc);
  lc->boot_conns = 0;
  memset(&lc->boot, 0, sizeof lc->boot);
}

/* The client's configuration for this boot. */
static void take_config(struct tb_live_client *lc, const struct tb_config *cfg,
                        const struct tb_client_conf *c)
{
  struct tb_config *old = lc->cfg;
  lc->cfg = tb_config_ref((struct tb_config *)cfg);
  lc->c = c;
  tb_config_unref(old);
}

/* A marker recorded this soon after a boot's first connection is that boot's
 * own, reported late (dnsmasq runs its script asynchronously); a machine
 * cannot reset and reach its NBD client again this fast. */
#define LATE_MARKER_MS 5000

/* Does a connection with TOKEN, seeing MARKER, start another boot than the
 * one LC holds? */
static bool is_new_boot(struct tb_live_client *lc, const char *token,
                        const struct tb_boot_marker *marker)
{
  if (token && strcmp(token, lc->boot.token) != 0)
    return true;
  if (marker->seq <= lc->boot.marker_seq)
    return false;
  if (marker->at_ms <= lc->boot_started_ms + LATE_MARKER_MS) {
    lc->boot.marker_seq = marker->seq; /* this boot's own */
    return false;
  }
  return true;
}

static void note_boot(struct tb_live_client *lc, const struct tb_conn_info *info,
                      const struct tb_boot_marker *marker, const struct tb_session_record *last)
{
  memset(&lc->boot, 0, sizeof lc->boot);
  if (info->boot_token)
    snprintf(lc->boot.token, sizeof lc->boot.token, "%s", info->boot_token);
  bool fresh_marker = marker->seq > last->boot.marker_seq;
  snprintf(lc->boot.via, sizeof lc->boot.via, "%s",
           info->boot_token ? "token"
           : fresh_marker   ? marker->via
                            : "none");
  lc->boot.marker_seq = marker->seq;
  snprintf(lc->boot.peer, sizeof lc->boot.peer, "%s", info->peer ? info->peer : "?");
  lc->boot_started_ms = tb_now_ms();
}

/* The refusal errno of tb_session_plan() and tb_session_resume() (session.h). */
static enum tb_conn_refusal refusal_of(int err)
{
  return err == EWOULDBLOCK ? TB_CONN_BUSY : err == EACCES ? TB_CONN_LOCKED_DOWN : TB_CONN_FAILED;
}

/* Take over a session a dead process left active, if this connection is of
 * its boot and comes within its grace.  Returns 1 if resumed, 0 if not (an
 * old record is then ended), -1 on error. */
static int try_resume(struct tb_live_client *lc, const struct tb_conn_info *info,
                      const struct tb_boot_marker *marker, const struct tb_session_record *rec,
                      enum tb_conn_refusal *why)
{
  if (!rec->active)
    return 0;
  bool same_boot = (!info->boot_token || strcmp(info->boot_token, rec->boot.token) == 0) &&
                   marker->seq <= rec->boot.marker_seq;
  bool in_grace = tb_mono_ms() < process_start_ms + lc->c->reconnect_grace_ms;
  struct tb_session *s = tb_session_resume(lc->cfg, lc->c, rec);
  if (!s) {
    *why = refusal_of(errno); /* busy: another frontend process serves it */
    return -1;
  }
  char base_path[TB_PATH_MAX];
  if (same_boot && in_grace &&
      (tb_store_version_path(lc->cfg->state_dir, s->info.base.image, s->info.base.version,
                             base_path, sizeof base_path) == -1 ||
       guards_resolve(lc, base_path, s->info.size) == -1)) {
    tb_session_suspend(s); /* stays resumable once the rule is fixed */
    return -1;
  }
  if (!same_boot || !in_grace) { /* its boot is over: end it, then a new one */
    tb_eventf(lc->cfg->state_dir, "session-orphaned", lc->id, "{s:I, s:s}", "session",
              (json_int_t)rec->number, "reason", same_boot ? "grace passed" : "new boot");
    tb_session_end(s);
    return 0;
  }
  tb_eventf(lc->cfg->state_dir, "session-resume", lc->id, "{s:I, s:I, s:s}", "session",
            (json_int_t)rec->number, "dirty_bytes",
            (json_int_t)(s->info.dirty_blocks * s->info.block_size), "peer",
            info->peer ? info->peer : "?");
  lc->boot = rec->boot;
  lc->boot_started_ms = rec->started_ms;
  set_view(lc, NULL, s);
  guards_begin(lc);
  lc->state = LIVE_RUNNING;
  return 1;
}

/* Commit the plan of the current boot (first change of the disk). */
static int commit_turn(struct tb_live_client *lc)
{
  struct tb_session *s = tb_session_commit(lc->plan, &lc->boot);
  if (!s)
    return -1;
  s->bytes_read_before = __atomic_exchange_n(&lc->plan_bytes_read, 0, __ATOMIC_RELAXED);
  set_view(lc, NULL, s); /* frees the plan once no read uses it */
  guards_begin(lc);
  lc->state = LIVE_RUNNING;
  publish(lc);
  return 0;
}

/* ---- connections ---------------------------------------------------------------- */

/* LC's machine began another boot (seen on disk BY, or NULL when the tick
 * finds it first): LC's boot ends (turn_lock held). */
static void end_stale(struct tb_live_client *lc, const char *by)
{
  tb_eventf(lc->cfg->state_dir, "boot-new", lc->id, "{s:s, s:s?, s:I}", "via", "disk", "disk", by,
            "stale_connections", (json_int_t)lc->boot_conns);
  end_boot(lc);
  publish(lc);
}

/* SELF began boot EPOCH of its machine: the other disks' sessions of older
 * boots end now (turn_lock of none held). */
static void end_stale_siblings(struct tb_live_client *self, uint64_t epoch)
{
  char client[TB_NAME_MAX + 1], other[TB_NAME_MAX + 1];
  client_of(self->id, client);
  pthread_mutex_lock(&live_lock);
  size_t n = 0;
  for (struct tb_live_client *lc = live_list; lc; lc = lc->next)
    n++;
  struct tb_live_client **sib = calloc(n ? n : 1, sizeof *sib);
  n = 0;
  for (struct tb_live_client *lc = live_list; lc && sib; lc = lc->next) {
    client_of(lc->id, other);
    if (lc != self && strcmp(client, other) == 0) {
      lc->refs++;
      sib[n++] = lc;
    }
  }
  pthread_mutex_unlock(&live_lock);
  for (size_t i = 0; i < n; i++) {
    struct tb_live_client *lc = sib[i];
    pthread_mutex_lock(&lc->turn_lock);
    if (lc->state != LIVE_IDLE && lc->epoch < epoch && lc->cfg)
      end_stale(lc, self->id);
    pthread_mutex_unlock(&lc->turn_lock);
    tb_live_client_put(lc);
  }
  free(sib);
}

const char *tb_conn_refusal_reason(enum tb_conn_refusal why, const char *msg)
{
  switch (why) {
  case TB_CONN_BUSY:
    return "busy";
  case TB_CONN_LOCKED_DOWN:
    return "locked down";
  case TB_CONN_FAILED:
    break;
  }
  return msg;
}

struct tb_conn *tb_conn_open(const struct tb_config *cfg, const struct tb_client_conf *c,
                             const struct tb_conn_info *info, enum tb_conn_refusal *why)
{
  enum tb_conn_refusal refusal = TB_CONN_FAILED;
  struct tb_boot_marker marker;
  if (tb_boot_marker_read(cfg->state_dir, c->client, &marker) == -1)
    memset(&marker, 0, sizeof marker); /* a damaged marker marks nothing */
  struct tb_conn *conn = calloc(1, sizeof *conn);
  if (!conn) {
    tb_error_errno("client %s", c->id);
    return NULL;
  }
  struct tb_live_client *lc = tb_live_client_get(c->id);
  if (!lc) {
    free(conn);
    return NULL;
  }
  conn->lc = lc;
  conn->admin = info->admin;
  snprintf(conn->frontend, sizeof conn->frontend, "%s", info->frontend ? info->frontend : "?");
  snprintf(conn->peer, sizeof conn->peer, "%s", info->peer ? info->peer : "?");
  conn->since_ms = tb_now_ms();
  conn->limit = tb_limit_get(c->client, &c->limits); /* the machine's, over all its disks */

  int r = 0;
  bool machine = has_machine(c), new_boot = false, began = false;
  uint64_t epoch = 0;
  pthread_mutex_lock(&lc->turn_lock);
  /* Another disk of the machine began a boot after this disk's. */
  bool stale = machine && lc->state != LIVE_IDLE && lc->epoch < machine_epoch(c->id);
  if (lc->state != LIVE_IDLE && (stale || is_new_boot(lc, info->boot_token, &marker))) {
    tb_eventf(cfg->state_dir, "boot-new", c->id, "{s:s, s:s, s:I}", "peer", conn->peer, "via",
              stale              ? "disk"
              : info->boot_token ? "token"
                                 : marker.via,
              "stale_connections", (json_int_t)lc->boot_conns);
    end_boot(lc);
    new_boot = !stale;
  }
  if (machine)
    epoch = machine_boot(c->id, info->boot_token, new_boot, &began);
  if (lc->state == LIVE_IDLE && machine && machine_hold(lc, cfg->state_dir, c->client) == -1) {
    refusal = refusal_of(errno);
    r = -1;
  }
  if (lc->state == LIVE_IDLE && r == 0) {
    struct tb_session_record last;
    lc->epoch = epoch;
    take_config(lc, cfg, c);
    if (tb_session_record(cfg->state_dir, c->id, &last) == -1)
      memset(&last, 0, sizeof last); /* rewritten by the next session */
    r = try_resume(lc, info, &marker, &last, &refusal);
    if (r == 0) {
      struct tb_session_plan *pl = tb_session_plan(lc->cfg, lc->c, info->admin);
      if (!pl)
        refusal = refusal_of(errno);
      if (pl && guards_resolve(lc, tb_session_plan_base_path(pl), tb_session_plan_size(pl)) == -1) {
        tb_session_plan_free(pl);
        pl = NULL;
      }
      if (pl) {
        note_boot(lc, info, &marker, &last);
        set_view(lc, pl, NULL);
        lc->state = LIVE_BOOTING;
      } else {
        r = -1;
      }
    }
  } else if (lc->state == LIVE_RECONNECTING) {
    lc->state = LIVE_RUNNING;
    tb_eventf(cfg->state_dir, "session-reconnect", c->id, "{s:I, s:s}", "session",
              (json_int_t)lc->session->number, "peer", conn->peer);
  }
  if (r != -1) {
    conn->boot_gen = lc->boot_gen;
    lc->boot_conns++;
    conn->next = lc->conns;
    lc->conns = conn;
    pthread_rwlock_rdlock(&lc->io_lock);
    conn->size =
        lc->session ? tb_overlay_size(lc->session->overlay) : tb_session_plan_size(lc->plan);
    conn->block_size = lc->session ? tb_overlay_block_size(lc->session->overlay)
                                   : tb_session_plan_block_size(lc->plan);
    conn->read_only = !lc->session && tb_session_plan_read_only(lc->plan);
    pthread_rwlock_unlock(&lc->io_lock);
    publish(lc);
  }
  if (lc->state == LIVE_IDLE)
    machine_release(lc);
  pthread_mutex_unlock(&lc->turn_lock);
  if (began)
    end_stale_siblings(lc, epoch);
  if (r == -1) {
    tb_live_client_put(lc);
    free(conn);
    if (why)
      *why = refusal;
    return NULL;
  }
  return conn;
}

void tb_conn_close(struct tb_conn *conn)
{
  if (!conn)
    return;
  struct tb_live_client *lc = conn->lc;
  pthread_mutex_lock(&lc->turn_lock);
  for (struct tb_conn **pp = &lc->conns; *pp; pp = &(*pp)->next)
    if (*pp == conn) {
      *pp = conn->next;
      break;
    }
  if (conn->boot_gen == lc->boot_gen && --lc->boot_conns == 0) {
    if (lc->state == LIVE_BOOTING) { /* a probe, or a boot that never wrote */
      set_view(lc, NULL, NULL);
      __atomic_store_n(&lc->plan_bytes_read, 0, __ATOMIC_RELAXED);
      lc->state = LIVE_IDLE;
      machine_release(lc);
      next_boot(lc);
    } else if (lc->state == LIVE_RUNNING) {
      if (tb_overlay_flush(lc->session->overlay) == -1)
        tb_eventf(lc->cfg->state_dir, "flush-failed", lc->id, "{s:s}", "error", tb_errmsg());
      lc->grace_until_ms = tb_mono_ms() + lc->c->reconnect_grace_ms;
      lc->state = LIVE_RECONNECTING;
      if (lc->c->reconnect_grace_ms <= 0)
        end_boot(lc);
    }
  }
  if (lc->cfg)
    publish(lc);
  pthread_mutex_unlock(&lc->turn_lock);
  tb_live_client_put(lc);
  free(conn);
}

uint64_t tb_conn_size(const struct tb_conn *conn)
{
  return conn->size;
}

bool tb_conn_read_only(const struct tb_conn *conn)
{
  return conn->read_only;
}

uint32_t tb_conn_block_size(const struct tb_conn *conn)
{
  return conn->block_size;
}

/* ---- the data path ----------------------------------------------------------------- */

/* Hold the client's view for one request.  Returns the session's overlay, or
 * NULL with *PLAN set (the boot has not written yet), or -1 (stale). */
static int view_begin(struct tb_conn *conn, struct tb_overlay **ovl, struct tb_session_plan **plan)
{
  struct tb_live_client *lc = conn->lc;
  pthread_rwlock_rdlock(&lc->io_lock);
  /* boot_gen changes under turn_lock and io_lock (end_boot -> set_view),
   * so it is stable while io_lock is held. */
  if (__atomic_load_n(&lc->boot_gen, __ATOMIC_ACQUIRE) != conn->boot_gen ||
      (!lc->session && !lc->plan)) {
    pthread_rwlock_unlock(&lc->io_lock);
    errno = ESHUTDOWN;
    return tb_error("client %s: this connection belongs to a boot that has ended (the machine "
                    "started again); reconnect",
                    lc->id);
  }
  *ovl = lc->session ? lc->session->overlay : NULL;
  *plan = lc->plan;
  return 0;
}

static void view_end(struct tb_conn *conn)
{
  pthread_rwlock_unlock(&conn->lc->io_lock);
}

int tb_conn_pread(struct tb_conn *conn, void *buf, uint32_t count, uint64_t offset)
{
  struct tb_overlay *ovl;
  struct tb_session_plan *plan;
  if (offset > conn->size || count > conn->size - offset) {
    errno = EINVAL;
    return tb_error("client %s: read beyond the end of the disk", conn->lc->id);
  }
  tb_limit_take(conn->limit, TB_LIMIT_READ, count);
  __atomic_store_n(&conn->lc->last_io_ms, tb_mono_ms(), __ATOMIC_RELAXED);
  if (view_begin(conn, &ovl, &plan) == -1)
    return -1;
  int r;
  if (ovl) {
    r = tb_overlay_pread(ovl, buf, count, offset);
  } else {
    r = tb_session_plan_pread(plan, buf, count, offset);
    if (r == 0)
      __atomic_add_fetch(&conn->lc->plan_bytes_read, count, __ATOMIC_RELAXED);
  }
  view_end(conn);
  return r;
}

/* Check a change of [offset, offset+count) (BUF, NULL: zeros) against the
 * client's protected regions.  Returns -1 (EPERM) if a "deny" region forbids
 * it.  Events are
 * rate-limited to one a second per region; the next one carries the count of
 * hits in between. */
static int guard_change(struct tb_live_client *lc, struct tb_overlay *ovl, const char *what,
                        const void *buf, uint64_t offset, uint32_t count)
{
  if (lc->guards.len == 0)
    return 0;
  struct tb_guard *g = tb_guards_check(&lc->guards, offset, count);
  /* On a hit only: a deny region refuses a change of its bytes, not a write
   * that leaves them as they are (ext4 rewriting sector 0 unchanged). */
  if (g && g->action == TB_GUARD_DENY)
    g = tb_guards_check_change(&lc->guards, ovl, buf, offset, count);
  if (!g)
    return 0;
  int64_t now = tb_mono_ms();
  pthread_mutex_lock(&lc->guard_lock);
  bool emit = now - g->last_event_ms >= 1000;
  uint64_t suppressed = g->suppressed;
  if (emit) {
    g->last_event_ms = now;
    g->suppressed = 0;
  } else {
    g->suppressed++;
  }
  pthread_mutex_unlock(&lc->guard_lock);
  bool deny = g->action == TB_GUARD_DENY;
  if (emit)
    tb_eventf(lc->session->state_dir, deny ? "protect-deny" : "protect-alert", lc->id,
              "{s:s, s:s, s:I, s:I, s:I}", "rule", g->name, "request", what, "offset",
              (json_int_t)offset, "length", (json_int_t)count, "hits_since_last_event",
              (json_int_t)suppressed);
  if (!deny)
    return 0;
  errno = EPERM;
  return tb_error("client %s: %s of %" PRIu32 " bytes at %" PRIu64
                  " refused: protected region \"%s\"",
                  lc->id, what, count, offset, g->name);
}

enum change { CHANGE_WRITE, CHANGE_ZERO, CHANGE_TRIM };
static const char *const change_names[] = {"write", "zero", "trim"};

/* Every change goes through here: the first one of a boot commits its turn. */
static int change(struct tb_conn *conn, enum change kind, const void *buf, uint32_t count,
                  uint64_t offset, int flags)
{
  struct tb_live_client *lc = conn->lc;
  if (offset > conn->size || count > conn->size - offset) {
    errno = EINVAL;
    return tb_error("client %s: %s beyond the end of the disk", lc->id, change_names[kind]);
  }
  tb_limit_take(conn->limit, TB_LIMIT_WRITE, kind == CHANGE_WRITE ? count : 0);
  __atomic_store_n(&lc->last_io_ms, tb_mono_ms(), __ATOMIC_RELAXED);
  for (;;) {
    struct tb_overlay *ovl;
    struct tb_session_plan *plan;
    if (view_begin(conn, &ovl, &plan) == -1)
      return -1;
    if (ovl) {
      int r = guard_change(lc, ovl, change_names[kind], kind == CHANGE_WRITE ? buf : NULL, offset,
                           count);
      if (r == 0)
        r = kind == CHANGE_WRITE  ? tb_overlay_pwrite(ovl, buf, count, offset, flags)
            : kind == CHANGE_ZERO ? tb_overlay_zero(ovl, count, offset, flags)
                                  : tb_overlay_trim(ovl, count, offset, flags);
      view_end(conn);
      if (r == -1 && errno == ENOSPC) { /* quota or reserve: recorded, rate-limited */
        int saved = errno;
        char msg[256];
        snprintf(msg, sizeof msg, "%s", tb_errmsg());
        tb_event_refusal(lc->cfg->state_dir, lc->id, conn->peer,
                         strstr(msg, "quota") ? "quota" : "reserve", NULL);
        tb_error("client %s: %s", lc->id, msg);
        errno = saved;
      }
      return r;
    }
    view_end(conn);
    pthread_mutex_lock(&lc->turn_lock);
    int r = 0;
    if (conn->boot_gen == lc->boot_gen && lc->state == LIVE_BOOTING)
      r = commit_turn(lc);
    pthread_mutex_unlock(&lc->turn_lock);
    if (r == -1) {
      if (errno != EPERM && errno != EROFS)
        errno = EIO;
      return -1;
    }
  }
}

int tb_conn_pwrite(struct tb_conn *conn, const void *buf, uint32_t count, uint64_t offset,
                   int flags)
{
  return change(conn, CHANGE_WRITE, buf, count, offset, flags);
}

int tb_conn_zero(struct tb_conn *conn, uint32_t count, uint64_t offset, int flags)
{
  return change(conn, CHANGE_ZERO, NULL, count, offset, flags);
}

int tb_conn_trim(struct tb_conn *conn, uint32_t count, uint64_t offset, int flags)
{
  return change(conn, CHANGE_TRIM, NULL, count, offset, flags);
}

int tb_conn_flush(struct tb_conn *conn)
{
  struct tb_overlay *ovl;
  struct tb_session_plan *plan;
  if (view_begin(conn, &ovl, &plan) == -1)
    return -1;
  int r = ovl ? tb_overlay_flush(ovl) : 0; /* nothing written: nothing to flush */
  view_end(conn);
  return r;
}

int tb_conn_extents(struct tb_conn *conn, uint64_t offset, uint64_t count, tb_extent_fn fn,
                    void *ctx)
{
  struct tb_overlay *ovl;
  struct tb_session_plan *plan;
  if (view_begin(conn, &ovl, &plan) == -1)
    return -1;
  int r = ovl ? tb_overlay_extents(ovl, offset, count, fn, ctx)
              : tb_session_plan_extents(plan, offset, count, fn, ctx);
  view_end(conn);
  return r;
}

int tb_conn_base_fd(struct tb_conn *conn)
{
  struct tb_overlay *ovl;
  struct tb_session_plan *plan;
  if (view_begin(conn, &ovl, &plan) == -1)
    return -1;
  /* The base file stays open as long as the connection's boot holds it. */
  int fd = ovl ? tb_overlay_base_fd(ovl) : tb_session_plan_base_fd(plan);
  view_end(conn);
  return fd;
}

/* ---- admin views ---------------------------------------------------------------------- */

bool tb_live_holds(const char *id)
{
  bool holds = false;
  pthread_mutex_lock(&live_lock);
  for (struct tb_live_client *lc = live_list; lc; lc = lc->next)
    if (strcmp(lc->id, id) == 0) {
      pthread_mutex_lock(&lc->turn_lock);
      holds = lc->state != LIVE_IDLE;
      pthread_mutex_unlock(&lc->turn_lock);
      break;
    }
  pthread_mutex_unlock(&live_lock);
  return holds;
}

bool tb_live_busy(const char *state, const struct tb_client_conf *c)
{
  if (tb_live_holds(c->id))
    return false;
  if (tb_client_locked(state, c->id))
    return true;
  if (!has_machine(c))
    return false;
  pthread_mutex_lock(&machine_lock);
  struct machine *m = machine_get(c->client);
  bool ours = m && m->holders > 0;
  pthread_mutex_unlock(&machine_lock);
  char path[TB_PATH_MAX];
  if (ours || tb_clientdir_path(state, c->client, TB_CF_DISKS_LOCK, path, sizeof path) == -1)
    return false;
  return tb_flock_held(path);
}

struct tb_overlay *tb_live_read_begin(struct tb_live_client *lc, uint64_t *generation)
{
  pthread_rwlock_rdlock(&lc->io_lock);
  *generation = lc->generation;
  if (lc->session)
    return lc->session->overlay;
  pthread_rwlock_unlock(&lc->io_lock);
  return NULL;
}

void tb_live_read_end(struct tb_live_client *lc)
{
  pthread_rwlock_unlock(&lc->io_lock);
}

/* ---- once a second ------------------------------------------------------------------------ */

/* A session a dead process left active and nobody took over within its
 * grace is ended: its record says so, and the daemon may work on it. */
static void sweep_orphans(const struct tb_config *cfg)
{
  for (size_t i = 0; i < cfg->n_clients; i++) {
    const struct tb_client_conf *c = &cfg->clients[i];
    if (tb_mono_ms() < process_start_ms + c->reconnect_grace_ms)
      continue;
    struct tb_live_client *lc = tb_live_client_get(c->id);
    if (!lc)
      continue;
    pthread_mutex_lock(&lc->turn_lock);
    struct tb_session_record rec;
    if (lc->state == LIVE_IDLE && tb_session_record(cfg->state_dir, c->id, &rec) == 0 &&
        rec.active) {
      take_config(lc, cfg, c);
      struct tb_session *s = tb_session_resume(lc->cfg, c, &rec);
      if (s) {
        tb_eventf(cfg->state_dir, "session-orphaned", c->id, "{s:I}", "session",
                  (json_int_t)rec.number);
        tb_session_end(s);
      }
    }
    pthread_mutex_unlock(&lc->turn_lock);
    tb_live_client_put(lc);
  }
}

void tb_live_tick(const struct tb_config *cfg)
{
  struct tb_watchdog_conf w;
  uint64_t reserve = 0;
  if (tb_watchdog_for(cfg->watchdog, NULL, &w) == 0) {
    reserve = w.reserve_bytes;
    tb_watchdog_free(&w);
  }
  struct statvfs sv = {0};
  bool low =
      reserve && statvfs(cfg->state_dir, &sv) == 0 && (uint64_t)sv.f_bavail * sv.f_frsize < reserve;
  bool was = __atomic_exchange_n(&low_space, low, __ATOMIC_RELAXED);
  if (low != was)
    tb_eventf(cfg->state_dir, low ? "low-space" : "space-recovered", NULL, "{s:I, s:I}",
              "reserve_bytes", (json_int_t)reserve, "free_bytes",
              (json_int_t)(reserve ? (uint64_t)sv.f_bavail * sv.f_frsize : 0));

  /* Take a reference on every client, then visit each without live_lock. */
  pthread_mutex_lock(&live_lock);
  if (!process_start_ms)
    process_start_ms = tb_mono_ms();
  size_t n = 0;
  for (struct tb_live_client *lc = live_list; lc; lc = lc->next)
    n++;
  struct tb_live_client **all = calloc(n ? n : 1, sizeof *all);
  n = 0;
  for (struct tb_live_client *lc = live_list; lc && all; lc = lc->next) {
    lc->refs++;
    all[n++] = lc;
  }
  bool sweep = !swept && all;
  pthread_mutex_unlock(&live_lock);

  int64_t now = tb_mono_ms();
  for (size_t i = 0; i < n; i++) {
    struct tb_live_client *lc = all[i];
    pthread_mutex_lock(&lc->turn_lock);
    struct tb_session *s = lc->session;
    if (lc->state == LIVE_RECONNECTING && now >= lc->grace_until_ms) {
      end_boot(lc);
      publish(lc);
    } else if (lc->holds_machine && lc->epoch < machine_epoch(lc->id) && lc->cfg) {
      end_stale(lc, NULL); /* before end_stale_siblings got to it */
    } else if (s) {
      /* Live figures for tabulactl and metrics: at most every few seconds,
       * and only when the session did I/O since the last write. */
      if (now - lc->published_ms >= LIVE_FIGURES_MS &&
          __atomic_load_n(&lc->last_io_ms, __ATOMIC_RELAXED) != lc->published_io_ms)
        publish(lc);
      if (lc->deny_applied != low) {
        tb_overlay_deny_new_blocks(s->overlay, low);
        lc->deny_applied = low;
      }
      int64_t last = __atomic_load_n(&lc->last_io_ms, __ATOMIC_RELAXED);
      if (lc->state == LIVE_RUNNING && lc->idle_ms && now - last >= lc->idle_ms &&
          lc->idle_reported_ms != last) {
        lc->idle_reported_ms = last;
        tb_eventf(cfg->state_dir, "idle", lc->id, "{s:I, s:I}", "session", (json_int_t)s->number,
                  "idle_ms", (json_int_t)(now - last));
      }
    }
    pthread_mutex_unlock(&lc->turn_lock);
    tb_live_client_put(lc);
  }
  free(all);
  if (sweep) {
    int64_t longest = 0;
    for (size_t i = 0; i < cfg->n_clients; i++)
      if (cfg->clients[i].reconnect_grace_ms > longest)
        longest = cfg->clients[i].reconnect_grace_ms;
    if (now >= process_start_ms + longest) {
      sweep_orphans(cfg);
      swept = true;
    } else if (now >= process_start_ms) {
      sweep_orphans(cfg); /* those whose grace has passed */
    }
  }
}

void tb_live_shutdown(void)
{
  pthread_mutex_lock(&live_lock);
  for (struct tb_live_client *lc = live_list; lc; lc = lc->next) {
    pthread_mutex_lock(&lc->turn_lock);
    struct tb_session *s = lc->session;
    set_view(lc, NULL, NULL);
    if (s && tb_session_suspend(s) == -1)
      tb_eventf(lc->cfg->state_dir, "flush-failed", lc->id, "{s:s}", "error", tb_errmsg());
    if (lc->state != LIVE_IDLE && lc->cfg) {
      lc->state = s ? LIVE_RECONNECTING : LIVE_IDLE;
      publish(lc);
    }
    lc->state = LIVE_IDLE;
    machine_release(lc);
    next_boot(lc);
    pthread_mutex_unlock(&lc->turn_lock);
  }
  pthread_mutex_unlock(&live_lock);
}
