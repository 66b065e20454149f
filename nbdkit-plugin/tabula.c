/* nbdkit-tabula-plugin: serves every client its own copy-on-write overlay of
 * a master image, and read-only admin views of clients, sessions and versions.
 *
 *   nbdkit tabula config=/etc/tabula/tabula.json
 *
 * The plugin is glue: the overlay engine, the session turn, the store and the
 * configuration all live in lib/.  What lives here is the mapping from an NBD
 * connection to what it may see:
 *
 *   export "ID"            client ID's disk, read-write, for peers in its "allow"
 *   export ""              the client whose "address" is the peer's address
 *   export "ID@live"       ID's current disk (base + overlay), read-only   } admin
 *   export "ID@overlay"    the overlay alone; NBD extents = the dirty map  } peers
 *   export "ID@session/N"  retained session N (base + that overlay)         } only
 *   export "IMAGE@N"       master version N                                 }
 *
 * Sessions: all connections of one client share one struct live_client.  The
 * first client connection runs the session start (lib/session.c), the last one
 * to close ends it.  Admin connections to ID@live/ID@overlay read the running
 * session's overlay if there is one (so they see the guest's writes at once),
 * else a read-only copy of the overlay on disk, reopened whenever a session
 * starts or ends.
 *
 * The configuration is re-read when its file changes (checked at each new
 * connection); a new file with an error is logged and the old one kept.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "conf.h"
#include "events.h"
#include "overlay.h"
#include "session.h"
#include "store.h"
#include "watchdog.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

/* ---- configuration ---------------------------------------------------------- */

static char *config_file;
static struct tb_config *current_cfg;
static struct timespec cfg_mtime;
static off_t cfg_size;
static pthread_mutex_t cfg_lock = PTHREAD_MUTEX_INITIALIZER;

static int tabula_config(const char *key, const char *value)
{
  if (strcmp(key, "config") == 0) {
    free(config_file);
    config_file = nbdkit_absolute_path(value);
    return config_file ? 0 : -1;
  }
  nbdkit_error("unknown parameter '%s' (the only parameter is config=FILE)", key);
  return -1;
}

static int tabula_config_complete(void)
{
  if (!config_file) {
    nbdkit_error("missing config=FILE: the tabula configuration (see nbdkit-tabula-plugin(1))");
    return -1;
  }
  return 0;
}

/* Every client's image must have the version it will be served. */
static int check_client_images(const struct tb_config *cfg)
{
  for (size_t i = 0; i < cfg->n_clients; i++) {
    const struct tb_client_conf *c = &cfg->clients[i];
    if (c->version) {
      struct tb_manifest *m = tb_manifest_load(cfg->state_dir, c->image, c->version);
      if (!m)
        return tb_error("clients.%s.version: image %s has no version %u (see tabulactl image "
                        "list)",
                        c->id, c->image, c->version);
      tb_manifest_free(m);
    } else if (!tb_store_latest(cfg->state_dir, c->image)) {
      return tb_error_prefix("clients.%s.image", c->id);
    }
  }
  return 0;
}

static int tabula_get_ready(void)
{
  struct stat st;
  struct tb_config *cfg = tb_config_load(config_file);
  if (!cfg || stat(config_file, &st) == -1) {
    nbdkit_error("%s", tb_errmsg());
    tb_config_unref(cfg);
    return -1;
  }
  if (tb_store_init(cfg->state_dir) == -1 || check_client_images(cfg) == -1) {
    nbdkit_error("%s: %s", config_file, tb_errmsg());
    tb_config_unref(cfg);
    return -1;
  }
  tb_events_set_max_bytes(cfg->events_max_bytes);
  current_cfg = cfg;
  cfg_mtime = st.st_mtim;
  cfg_size = st.st_size;
  return 0;
}

/* The current configuration (a reference the caller must drop), re-read first
 * if the file changed. */
static struct tb_config *config_get(void)
{
  struct stat st;
  pthread_mutex_lock(&cfg_lock);
  if (stat(config_file, &st) == 0 &&
      (st.st_mtim.tv_sec != cfg_mtime.tv_sec || st.st_mtim.tv_nsec != cfg_mtime.tv_nsec ||
       st.st_size != cfg_size)) {
    cfg_mtime = st.st_mtim;
    cfg_size = st.st_size;
    struct tb_config *fresh = tb_config_load(config_file);
    if (!fresh) {
      nbdkit_error("configuration not reloaded, keeping the running one: %s", tb_errmsg());
    } else {
      tb_config_unref(current_cfg);
      current_cfg = fresh;
      tb_events_set_max_bytes(fresh->events_max_bytes);
      nbdkit_debug("configuration reloaded from %s", config_file);
    }
  }
  struct tb_config *cfg = tb_config_ref(current_cfg);
  pthread_mutex_unlock(&cfg_lock);
  return cfg;
}

static void tabula_unload(void)
{
  tb_config_unref(current_cfg);
  free(config_file);
}

/* ---- peers ------------------------------------------------------------------ */

struct peer {
  struct sockaddr_storage addr;
  bool is_unix;
  char text[128];
};

static int peer_get(struct peer *p)
{
  socklen_t len = sizeof p->addr;
  memset(p, 0, sizeof *p);
  if (nbdkit_peer_name((struct sockaddr *)&p->addr, &len) == -1)
    return -1;
  p->is_unix = p->addr.ss_family == AF_UNIX;
  if (p->is_unix) {
    int64_t uid = nbdkit_peer_uid();
    snprintf(p->text, sizeof p->text, "unix socket (uid %" PRIi64 ")", uid);
  } else {
    char host[64] = "?";
    const void *a = p->addr.ss_family == AF_INET
                        ? (const void *)&((struct sockaddr_in *)&p->addr)->sin_addr
                        : (const void *)&((struct sockaddr_in6 *)&p->addr)->sin6_addr;
    inet_ntop(p->addr.ss_family, a, host, sizeof host);
    snprintf(p->text, sizeof p->text, "%s", host);
  }
  return 0;
}

static bool peer_is_admin(const struct tb_config *cfg, const struct peer *p)
{
  if (p->is_unix) {
    int64_t uid = nbdkit_peer_uid();
    for (size_t i = 0; i < cfg->n_admin_uids; i++)
      if (uid >= 0 && uid == cfg->admin_uids[i])
        return true;
    return false;
  }
  if (!tb_acl_allows(&cfg->admin_nets, (const struct sockaddr *)&p->addr))
    return false;
  return !cfg->tls_certificates || nbdkit_is_tls() == 1;
}

/* ---- the watchdog thread ---------------------------------------------------------
 *
 * Once a second: report clients idle for longer than their "idle" setting, and
 * compare the state directory's free space with the watchdog "reserve"; below
 * it, every running overlay refuses writes that need new blocks (ENOSPC to the
 * guest, nothing else breaks) until space is back.
 */

static bool low_space; /* protected by live_lock */
static pthread_t watchdog_thread;
static bool watchdog_running;
static pthread_mutex_t watchdog_stop_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t watchdog_stop_cond = PTHREAD_COND_INITIALIZER;
static bool watchdog_stop;

static void *watchdog_main(void *arg);
static void watchdog_tick(void);

static int tabula_after_fork(void)
{
  int err = pthread_create(&watchdog_thread, NULL, watchdog_main, NULL);
  if (err) {
    errno = err;
    nbdkit_error("cannot start the watchdog thread: %m");
    return -1;
  }
  watchdog_running = true;
  return 0;
}

static void tabula_cleanup(void)
{
  if (!watchdog_running)
    return;
  pthread_mutex_lock(&watchdog_stop_lock);
  watchdog_stop = true;
  pthread_cond_signal(&watchdog_stop_cond);
  pthread_mutex_unlock(&watchdog_stop_lock);
  pthread_join(watchdog_thread, NULL);
  watchdog_running = false;
}

static void *watchdog_main(void *arg)
{
  pthread_mutex_lock(&watchdog_stop_lock);
  while (!watchdog_stop) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 1;
    pthread_cond_timedwait(&watchdog_stop_cond, &watchdog_stop_lock, &ts);
    if (watchdog_stop)
      break;
    pthread_mutex_unlock(&watchdog_stop_lock);
    watchdog_tick();
    pthread_mutex_lock(&watchdog_stop_lock);
  }
  pthread_mutex_unlock(&watchdog_stop_lock);
  return NULL;
}

/* ---- live clients ------------------------------------------------------------ */

struct live_client {
  struct live_client *next;
  char id[TB_NAME_MAX + 1];
  int refs;    /* handles of any kind; protected by live_lock */
  int clients; /* client (read-write) connections; protected by turn_lock */
  pthread_mutex_t turn_lock;
  pthread_rwlock_t session_lock; /* admin readers vs session start/end */
  struct tb_session *session;
  uint64_t generation; /* bumped at every session start and end */
  /* Watchdog state of the running session (set at its start). */
  struct tb_guards guards;
  pthread_mutex_t guard_lock; /* event rate-limiting only */
  int64_t idle_ms;            /* 0 = no idle detection */
  int64_t last_io_ms;         /* atomic */
  int64_t idle_reported_ms;   /* last_io_ms at the last idle event; idle thread only */
};

static struct live_client *live_list;
static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;

static struct live_client *live_get(const char *id)
{
  pthread_mutex_lock(&live_lock);
  struct live_client *lc;
  for (lc = live_list; lc; lc = lc->next)
    if (strcmp(lc->id, id) == 0)
      break;
  if (!lc && (lc = calloc(1, sizeof *lc))) {
    snprintf(lc->id, sizeof lc->id, "%s", id);
    pthread_mutex_init(&lc->turn_lock, NULL);
    pthread_rwlock_init(&lc->session_lock, NULL);
    pthread_mutex_init(&lc->guard_lock, NULL);
    lc->next = live_list;
    live_list = lc;
  }
  if (lc)
    lc->refs++;
  pthread_mutex_unlock(&live_lock);
  return lc;
}

static void live_put(struct live_client *lc)
{
  pthread_mutex_lock(&live_lock);
  if (--lc->refs == 0) {
    for (struct live_client **pp = &live_list; *pp; pp = &(*pp)->next)
      if (*pp == lc) {
        *pp = lc->next;
        break;
      }
    pthread_mutex_destroy(&lc->turn_lock);
    pthread_rwlock_destroy(&lc->session_lock);
    pthread_mutex_destroy(&lc->guard_lock);
    tb_guards_free(&lc->guards);
    free(lc);
  }
  pthread_mutex_unlock(&live_lock);
}

/* Free space of the state directory against the reserve; idle clients. */
static void watchdog_tick(void)
{
  struct tb_config *cfg = config_get();
  struct tb_watchdog_conf w;
  uint64_t reserve = 0;
  if (tb_watchdog_for(cfg->watchdog, NULL, &w) == 0) {
    reserve = w.reserve_bytes;
    tb_watchdog_free(&w);
  }
  struct statvfs sv = {0};
  bool low =
      reserve && statvfs(cfg->state_dir, &sv) == 0 && (uint64_t)sv.f_bavail * sv.f_frsize < reserve;
  int64_t now = tb_now_ms();

  pthread_mutex_lock(&live_lock);
  bool changed = low != low_space;
  low_space = low;
  for (struct live_client *lc = live_list; lc; lc = lc->next) {
    /* A session's pointer changes only under turn_lock; trylock keeps this
     * thread from waiting on a slow session turn. */
    if (pthread_mutex_trylock(&lc->turn_lock) != 0)
      continue;
    struct tb_session *s = lc->session;
    if (s && changed)
      tb_overlay_deny_new_blocks(s->overlay, low);
    int64_t last = __atomic_load_n(&lc->last_io_ms, __ATOMIC_RELAXED);
    if (s && lc->idle_ms && now - last >= lc->idle_ms && lc->idle_reported_ms != last) {
      lc->idle_reported_ms = last;
      tb_eventf(cfg->state_dir, "idle", lc->id, "{s:I, s:I}", "session", (json_int_t)s->number,
                "idle_ms", (json_int_t)(now - last));
    }
    pthread_mutex_unlock(&lc->turn_lock);
  }
  pthread_mutex_unlock(&live_lock);
  if (changed)
    tb_eventf(cfg->state_dir, low ? "low-space" : "space-recovered", NULL, "{s:I, s:I}",
              "reserve_bytes", (json_int_t)reserve, "free_bytes",
              (json_int_t)(reserve ? (uint64_t)sv.f_bavail * sv.f_frsize : 0));
  tb_config_unref(cfg);
}

/* ---- handles ------------------------------------------------------------------ */

enum export_kind {
  EXPORT_CLIENT,  /* ID: read-write */
  EXPORT_LIVE,    /* ID@live */
  EXPORT_OVERLAY, /* ID@overlay */
  EXPORT_SESSION, /* ID@session/N */
  EXPORT_IMAGE,   /* IMAGE@N */
};

struct handle {
  enum export_kind kind;
  char name[TB_NAME_MAX + 1]; /* client id or image name */
  struct live_client *lc;     /* CLIENT, LIVE, OVERLAY */
  /* What an admin handle reads when no session is running (or for SESSION):
   * a read-only overlay, or, for a client with no overlay and for IMAGE, a raw file. */
  pthread_mutex_t fallback_lock;
  struct tb_overlay *ro;
  int raw_fd;
  uint64_t ro_generation;
  uint64_t size;
  uint32_t block_size;
};

static void handle_free(struct handle *h)
{
  if (!h)
    return;
  tb_overlay_close(h->ro);
  if (h->raw_fd >= 0)
    close(h->raw_fd);
  pthread_mutex_destroy(&h->fallback_lock);
  free(h);
}

/* Parse an export name into its kind, name and number.  Returns -1 for a name
 * that is not of any known form. */
static int parse_export(const char *export, enum export_kind *kind, char *name, uint64_t *num)
{
  const char *at = strchr(export, '@');
  size_t len = at ? (size_t)(at - export) : strlen(export);
  if (len == 0 || len > TB_NAME_MAX)
    return -1;
  memcpy(name, export, len);
  name[len] = '\0';
  if (!tb_name_valid(name))
    return -1;
  *num = 0;
  if (!at) {
    *kind = EXPORT_CLIENT;
    return 0;
  }
  const char *rest = at + 1;
  if (strcmp(rest, "live") == 0) {
    *kind = EXPORT_LIVE;
    return 0;
  }
  if (strcmp(rest, "overlay") == 0) {
    *kind = EXPORT_OVERLAY;
    return 0;
  }
  const char *digits = rest;
  *kind = EXPORT_IMAGE;
  if (strncmp(rest, "session/", 8) == 0) {
    digits = rest + 8;
    *kind = EXPORT_SESSION;
  }
  if (digits[0] < '1' || digits[0] > '9' || strlen(digits) > 19)
    return -1;
  char *end;
  *num = strtoull(digits, &end, 10);
  return *end ? -1 : 0;
}

static const struct tb_client_conf *client_by_address(const struct tb_config *cfg,
                                                      const struct peer *p)
{
  if (p->is_unix)
    return NULL;
  for (size_t i = 0; i < cfg->n_clients; i++)
    if (cfg->clients[i].has_address &&
        tb_cidr_match(&cfg->clients[i].address, (const struct sockaddr *)&p->addr))
      return &cfg->clients[i];
  return NULL;
}

/* Open a read-only overlay from PATH on the base its header names. */
static struct tb_overlay *open_ro_overlay(const char *state, const char *path)
{
  struct tb_overlay_info info;
  struct tb_base_id base;
  char base_path[TB_PATH_MAX];
  if (tb_overlay_read_info(path, &info) == -1 ||
      tb_base_lookup(state, info.base.image, info.base.version, &base, base_path, sizeof base_path,
                     NULL) == -1)
    return NULL;
  return tb_overlay_open(path, base_path, &base, TB_OVL_RDONLY);
}

static int open_raw(struct handle *h, const char *path)
{
  h->raw_fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (h->raw_fd == -1 || fstat(h->raw_fd, &st) == -1)
    return tb_error_errno("cannot open %s", path);
  h->size = (uint64_t)st.st_size;
  h->block_size = 4096;
  return 0;
}

/* (Re)open what an admin handle of client ID reads when no session runs:
 * its overlay on disk, or its target version if it has none yet. */
static int admin_fallback_open(struct handle *h, const struct tb_config *cfg)
{
  char path[TB_PATH_MAX];
  if (tb_store_client_path(cfg->state_dir, h->name, "overlay", path, sizeof path) == -1)
    return -1;
  tb_overlay_close(h->ro);
  h->ro = NULL;
  if (h->raw_fd >= 0)
    close(h->raw_fd);
  h->raw_fd = -1;
  if (access(path, F_OK) == 0) {
    if (!(h->ro = open_ro_overlay(cfg->state_dir, path)))
      return -1;
    h->size = tb_overlay_size(h->ro);
    h->block_size = tb_overlay_block_size(h->ro);
    return 0;
  }
  const struct tb_client_conf *c = tb_config_client(cfg, h->name);
  char image[TB_NAME_MAX + 1], img_path[TB_PATH_MAX];
  uint32_t version;
  if (!c || tb_client_target(cfg->state_dir, c, image, &version) == -1 ||
      tb_store_version_path(cfg->state_dir, image, version, img_path, sizeof img_path) == -1)
    return -1;
  return open_raw(h, img_path);
}

/* Set up the data-path watchdog of a session that just started: protected
 * regions resolved against its base version, idle detection, the reserve. */
static int watchdog_begin(struct live_client *lc, const struct tb_config *cfg,
                          const struct tb_client_conf *c, struct tb_session *s)
{
  struct tb_watchdog_conf w;
  char base_path[TB_PATH_MAX];
  if (tb_watchdog_for(cfg->watchdog, c->watchdog, &w) == -1)
    return tb_error_prefix("client %s", c->id);
  int r = tb_store_version_path(cfg->state_dir, s->info.base.image, s->info.base.version, base_path,
                                sizeof base_path);
  tb_guards_free(&lc->guards);
  if (r == 0)
    r = tb_guards_resolve(&w, base_path, s->info.size, &lc->guards);
  if (r == -1)
    tb_error_prefix("client %s", c->id);
  lc->idle_ms = w.idle_ms;
  __atomic_store_n(&lc->last_io_ms, tb_now_ms(), __ATOMIC_RELAXED);
  lc->idle_reported_ms = 0;
  tb_watchdog_free(&w);
  if (r == 0 && low_space)
    tb_overlay_deny_new_blocks(s->overlay, true);
  return r;
}

static int open_client(struct handle *h, const struct tb_config *cfg,
                       const struct tb_client_conf *c)
{
  h->lc = live_get(c->id);
  if (!h->lc)
    return tb_error_errno("client %s", c->id);
  struct live_client *lc = h->lc;
  int r = 0;
  pthread_mutex_lock(&lc->turn_lock);
  if (lc->clients == 0) {
    struct tb_session *s = tb_session_begin(cfg, c);
    if (!s) {
      r = -1;
    } else if (watchdog_begin(lc, cfg, c, s) == -1) {
      tb_session_end(s);
      r = -1;
    } else {
      pthread_rwlock_wrlock(&lc->session_lock);
      lc->session = s;
      lc->generation++;
      pthread_rwlock_unlock(&lc->session_lock);
    }
  }
  if (r == 0) {
    lc->clients++;
    h->size = tb_overlay_size(lc->session->overlay);
    h->block_size = tb_overlay_block_size(lc->session->overlay);
  }
  pthread_mutex_unlock(&lc->turn_lock);
  return r;
}

static void close_client(struct handle *h)
{
  struct live_client *lc = h->lc;
  pthread_mutex_lock(&lc->turn_lock);
  if (--lc->clients == 0) {
    pthread_rwlock_wrlock(&lc->session_lock);
    if (tb_session_end(lc->session) == -1)
      nbdkit_error("%s", tb_errmsg());
    lc->session = NULL;
    lc->generation++;
    pthread_rwlock_unlock(&lc->session_lock);
  }
  pthread_mutex_unlock(&lc->turn_lock);
}

static int open_admin(struct handle *h, const struct tb_config *cfg, uint64_t num)
{
  char path[TB_PATH_MAX];
  switch (h->kind) {
  case EXPORT_IMAGE:
    if (!tb_config_has_image(cfg, h->name) || num > UINT32_MAX)
      return tb_error("no image %s in the configuration", h->name);
    if (tb_store_version_path(cfg->state_dir, h->name, (uint32_t)num, path, sizeof path) == -1)
      return -1;
    {
      struct tb_manifest *m = tb_manifest_load(cfg->state_dir, h->name, (uint32_t)num);
      if (!m)
        return -1;
      tb_manifest_free(m);
    }
    return open_raw(h, path);
  case EXPORT_SESSION:
    if (!tb_config_client(cfg, h->name))
      return tb_error("no client %s in the configuration", h->name);
    if (tb_client_session_path(cfg->state_dir, h->name, num, path, sizeof path) == -1 ||
        !(h->ro = open_ro_overlay(cfg->state_dir, path)))
      return -1;
    h->size = tb_overlay_size(h->ro);
    h->block_size = tb_overlay_block_size(h->ro);
    return 0;
  case EXPORT_LIVE:
  case EXPORT_OVERLAY:
    if (!tb_config_client(cfg, h->name))
      return tb_error("no client %s in the configuration", h->name);
    if (!(h->lc = live_get(h->name)))
      return -1;
    pthread_rwlock_rdlock(&h->lc->session_lock);
    int r = 0;
    if (h->lc->session) {
      h->size = tb_overlay_size(h->lc->session->overlay);
      h->block_size = tb_overlay_block_size(h->lc->session->overlay);
    } else {
      r = admin_fallback_open(h, cfg);
      h->ro_generation = h->lc->generation;
    }
    pthread_rwlock_unlock(&h->lc->session_lock);
    return r;
  case EXPORT_CLIENT:
    break;
  }
  return -1;
}

/* A copy of NAME fit for a log line: at most 80 bytes, and bytes that are not
 * printable ASCII (escape sequences from the network) shown as '?'. */
static void printable_name(const char *name, char out[84])
{
  size_t i;
  for (i = 0; name[i] && i < 80; i++)
    out[i] = name[i] >= 0x20 && name[i] < 0x7f ? name[i] : '?';
  strcpy(out + i, name[i] ? "..." : "");
}

static void *tabula_open(int readonly)
{
  const char *export = nbdkit_export_name();
  struct peer peer;
  if (!export || peer_get(&peer) == -1) {
    nbdkit_error("cannot identify the peer of this connection");
    return NULL;
  }
  struct tb_config *cfg = config_get();
  struct handle *h = calloc(1, sizeof *h);
  if (!h) {
    nbdkit_error("out of memory");
    tb_config_unref(cfg);
    return NULL;
  }
  h->raw_fd = -1;
  pthread_mutex_init(&h->fallback_lock, NULL);
  bool admin = peer_is_admin(cfg, &peer);
  uint64_t num = 0;
  int r = -1;

  if (export[0] == '\0') {
    const struct tb_client_conf *c = client_by_address(cfg, &peer);
    if (!c) {
      nbdkit_error("no client is configured for address %s: send the client id as the export "
                   "name, or set \"address\" in its configuration",
                   peer.text);
      goto out;
    }
    export = c->id;
  }
  if (parse_export(export, &h->kind, h->name, &num) == -1) {
    char shown[84];
    printable_name(export, shown);
    nbdkit_error("invalid export name \"%s\": expected a client id ([A-Za-z0-9._-], up to 64 "
                 "characters)",
                 shown);
    goto out;
  }
  if (h->kind == EXPORT_CLIENT) {
    const struct tb_client_conf *c = tb_config_client(cfg, h->name);
    if (!c) {
      nbdkit_error("unknown client \"%s\": no such client in the configuration", h->name);
      goto out;
    }
    if (!tb_acl_allows(&c->allow, (const struct sockaddr *)&peer.addr)) {
      nbdkit_error("client \"%s\" refused to peer %s: not in its \"allow\" list", h->name,
                   peer.text);
      tb_eventf(cfg->state_dir, "refused", h->name, "{s:s, s:s}", "peer", peer.text, "reason",
                "not in allow");
      goto out;
    }
    r = open_client(h, cfg, c);
    if (r == -1)
      nbdkit_error("%s", tb_errmsg());
    goto out;
  }
  /* Admin exports: to anyone else they do not exist. */
  if (!admin) {
    nbdkit_error("unknown client \"%.80s\": no such client in the configuration", export);
    goto out;
  }
  r = open_admin(h, cfg, num);
  if (r == -1)
    nbdkit_error("export \"%s\": %s", export, tb_errmsg());
out:
  tb_config_unref(cfg);
  if (r == -1) {
    if (h->lc)
      live_put(h->lc);
    handle_free(h);
    return NULL;
  }
  return h;
}

static void tabula_close(void *handle)
{
  struct handle *h = handle;
  if (h->kind == EXPORT_CLIENT)
    close_client(h);
  if (h->lc)
    live_put(h->lc);
  handle_free(h);
}

/* ---- what a handle reads ------------------------------------------------------ */

/* A source of data for one request: an overlay, or a raw file. */
struct source {
  struct tb_overlay *ovl;
  int raw_fd;
  bool locked; /* holds lc->session_lock for reading */
  bool fallback_locked;
};

static int source_get(struct handle *h, struct source *src)
{
  memset(src, 0, sizeof *src);
  src->raw_fd = -1;
  if (h->kind == EXPORT_CLIENT) {
    src->ovl = h->lc->session->overlay;
    return 0;
  }
  if (h->kind == EXPORT_SESSION || h->kind == EXPORT_IMAGE) {
    src->ovl = h->ro;
    src->raw_fd = h->raw_fd;
    return 0;
  }
  /* LIVE and OVERLAY: the running session, else the overlay on disk. */
  pthread_rwlock_rdlock(&h->lc->session_lock);
  src->locked = true;
  if (h->lc->session) {
    src->ovl = h->lc->session->overlay;
  } else {
    pthread_mutex_lock(&h->fallback_lock);
    src->fallback_locked = true;
    if (h->ro_generation != h->lc->generation) {
      struct tb_config *cfg = config_get();
      int r = admin_fallback_open(h, cfg);
      tb_config_unref(cfg);
      if (r == -1) {
        nbdkit_error("%s@live: %s", h->name, tb_errmsg());
        errno = EIO;
        return -1;
      }
      h->ro_generation = h->lc->generation;
    }
    src->ovl = h->ro;
    src->raw_fd = h->raw_fd;
  }
  uint64_t size = src->ovl ? tb_overlay_size(src->ovl) : h->size;
  if (size != h->size) {
    nbdkit_error("%s: the client's disk changed size (re-imaged); reconnect", h->name);
    errno = ESTALE;
    return -1;
  }
  return 0;
}

static void source_put(struct handle *h, struct source *src)
{
  if (src->fallback_locked)
    pthread_mutex_unlock(&h->fallback_lock);
  if (src->locked)
    pthread_rwlock_unlock(&h->lc->session_lock);
}

static int fail_with_errno(void)
{
  int e = errno ? errno : EIO;
  nbdkit_error("%s", tb_errmsg());
  nbdkit_set_error(e);
  return -1;
}

/* ---- size and capabilities ---------------------------------------------------------- */

static int64_t tabula_get_size(void *handle)
{
  struct handle *h = handle;
  return (int64_t)h->size;
}

static int tabula_block_size(void *handle, uint32_t *minimum, uint32_t *preferred,
                             uint32_t *maximum)
{
  struct handle *h = handle;
  *minimum = 1; /* unaligned requests are handled (read-modify-write) */
  *preferred = h->block_size < 4096 ? 4096 : h->block_size;
  *maximum = 0xffffffff;
  return 0;
}

static int tabula_can_write(void *handle)
{
  return ((struct handle *)handle)->kind == EXPORT_CLIENT;
}

static int tabula_can_flush(void *handle)
{
  return 1;
}

static int tabula_can_fua(void *handle)
{
  return NBDKIT_FUA_NATIVE;
}

static int tabula_can_multi_conn(void *handle)
{
  /* All connections of a client share one overlay, and flush is global to it. */
  return 1;
}

static int tabula_can_extents(void *handle)
{
  return 1;
}

static int tabula_can_zero(void *handle)
{
  return 1;
}

static int tabula_can_fast_zero(void *handle)
{
  return 1; /* zeroing whole blocks is a map update */
}

static int tabula_can_trim(void *handle)
{
  return 1;
}

static int tabula_can_cache(void *handle)
{
  return NBDKIT_CACHE_NONE;
}

/* ---- data ------------------------------------------------------------------------ */

static void note_io(struct live_client *lc)
{
  __atomic_store_n(&lc->last_io_ms, tb_now_ms(), __ATOMIC_RELAXED);
}

static int tabula_pread(void *handle, void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;
  if (h->kind == EXPORT_CLIENT)
    note_io(h->lc);
  struct source src;
  int r = source_get(h, &src);
  if (r == 0) {
    if (src.ovl && h->kind == EXPORT_OVERLAY)
      r = tb_overlay_pread_dirty(src.ovl, buf, count, offset);
    else if (src.ovl)
      r = tb_overlay_pread(src.ovl, buf, count, offset);
    else if (h->kind == EXPORT_OVERLAY)
      memset(buf, 0, count); /* no overlay yet: nothing is dirty */
    else if (tb_pread_full(src.raw_fd, buf, count, offset) == -1)
      r = tb_error_errno("read of %u bytes at %" PRIu64, count, offset);
  }
  source_put(h, &src);
  return r == -1 ? fail_with_errno() : 0;
}

static struct tb_overlay *client_overlay(void *handle)
{
  return ((struct handle *)handle)->lc->session->overlay;
}

/* Check a change of [offset, offset+count) against the client's protected
 * regions.  Returns -1 (EPERM) if a "deny" region forbids it.  Events are
 * rate-limited to one a second per region; the next one carries the count of
 * hits in between. */
static int guard_write(struct live_client *lc, const char *what, uint64_t offset, uint32_t count)
{
  if (lc->guards.n == 0)
    return 0;
  struct tb_guard *g = tb_guards_check(&lc->guards, offset, count);
  if (!g)
    return 0;
  int64_t now = tb_now_ms();
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
  nbdkit_error("client %s: %s of %" PRIu32 " bytes at %" PRIu64 " refused: protected region \"%s\"",
               lc->id, what, count, offset, g->name);
  nbdkit_set_error(EPERM);
  return -1;
}

static int tabula_pwrite(void *handle, const void *buf, uint32_t count, uint64_t offset,
                         uint32_t flags)
{
  struct live_client *lc = ((struct handle *)handle)->lc;
  note_io(lc);
  if (guard_write(lc, "write", offset, count) == -1)
    return -1;
  int f = (flags & NBDKIT_FLAG_FUA) ? TB_FUA : 0;
  if (tb_overlay_pwrite(client_overlay(handle), buf, count, offset, f) == -1)
    return fail_with_errno();
  return 0;
}

static int tabula_zero(void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct live_client *lc = ((struct handle *)handle)->lc;
  note_io(lc);
  if (guard_write(lc, "zero", offset, count) == -1)
    return -1;
  int f = (flags & NBDKIT_FLAG_FUA) ? TB_FUA : 0;
  if (tb_overlay_zero(client_overlay(handle), count, offset, f) == -1)
    return fail_with_errno();
  return 0;
}

static int tabula_trim(void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct live_client *lc = ((struct handle *)handle)->lc;
  note_io(lc);
  if (guard_write(lc, "trim", offset, count) == -1)
    return -1;
  int f = (flags & NBDKIT_FLAG_FUA) ? TB_FUA : 0;
  if (tb_overlay_trim(client_overlay(handle), count, offset, f) == -1)
    return fail_with_errno();
  return 0;
}

static int tabula_flush(void *handle, uint32_t flags)
{
  struct handle *h = handle;
  if (h->kind != EXPORT_CLIENT)
    return 0;
  if (tb_overlay_flush(client_overlay(handle)) == -1)
    return fail_with_errno();
  return 0;
}

/* ---- extents ---------------------------------------------------------------------- */

struct extents_ctx {
  struct nbdkit_extents *extents;
  int base_fd;       /* to find holes in CLEAN runs, or -1 */
  bool overlay_only; /* ID@overlay: CLEAN is a hole */
};

/* Report [off, off+len) of a raw file by its data and holes. */
static int raw_extents(struct nbdkit_extents *ex, int fd, uint64_t off, uint64_t len)
{
  uint64_t end = off + len;
  while (off < end) {
    off_t data = lseek(fd, (off_t)off, SEEK_DATA);
    if (data == -1 && errno != ENXIO)
      return nbdkit_add_extent(ex, off, end - off, 0);
    uint64_t d = data == -1 ? end : (uint64_t)data;
    if (d > end)
      d = end;
    if (d > off) {
      if (nbdkit_add_extent(ex, off, d - off, NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO) == -1)
        return -1;
      off = d;
      continue;
    }
    off_t hole = lseek(fd, (off_t)off, SEEK_HOLE);
    uint64_t hz = hole == -1 ? end : (uint64_t)hole;
    if (hz > end)
      hz = end;
    if (hz <= off)
      hz = end;
    if (nbdkit_add_extent(ex, off, hz - off, 0) == -1)
      return -1;
    off = hz;
  }
  return 0;
}

static int extent_cb(void *opaque, uint64_t off, uint64_t len, enum tb_block_state s)
{
  struct extents_ctx *x = opaque;
  switch (s) {
  case TB_DATA:
    return nbdkit_add_extent(x->extents, off, len, 0);
  case TB_ZERO:
    return nbdkit_add_extent(x->extents, off, len,
                             x->overlay_only ? NBDKIT_EXTENT_ZERO
                                             : NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO);
  case TB_CLEAN:
    if (x->overlay_only)
      return nbdkit_add_extent(x->extents, off, len, NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO);
    return raw_extents(x->extents, x->base_fd, off, len);
  }
  return 0;
}

static int tabula_extents(void *handle, uint32_t count, uint64_t offset, uint32_t flags,
                          struct nbdkit_extents *extents)
{
  struct handle *h = handle;
  struct source src;
  int r = source_get(h, &src);
  if (r == 0) {
    if (src.ovl) {
      struct extents_ctx x = {extents, tb_overlay_base_fd(src.ovl), h->kind == EXPORT_OVERLAY};
      /* With REQ_ONE only the first extent is needed: stop after it. */
      uint64_t len = (flags & NBDKIT_FLAG_REQ_ONE) ? tb_overlay_block_size(src.ovl) : count;
      if (len > count)
        len = count;
      r = tb_overlay_extents(src.ovl, offset, len, extent_cb, &x);
    } else if (h->kind == EXPORT_OVERLAY) {
      r = nbdkit_add_extent(extents, offset, count, NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO);
    } else {
      r = raw_extents(extents, src.raw_fd, offset, count);
    }
  }
  source_put(h, &src);
  if (r == -1) {
    nbdkit_error("%s: extents: %s", h->name, tb_errmsg());
    return -1;
  }
  return 0;
}

/* ---- export listing (admin peers only) --------------------------------------------------- */

static int add_export(struct nbdkit_exports *ex, const char *fmt, ...) TB_PRINTF(2, 3);
static int add_export(struct nbdkit_exports *ex, const char *fmt, ...)
{
  char name[TB_PATH_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  return nbdkit_add_export(ex, name, NULL);
}

static int tabula_list_exports(int readonly, int is_tls, struct nbdkit_exports *exports)
{
  struct peer peer;
  if (peer_get(&peer) == -1)
    return -1;
  struct tb_config *cfg = config_get();
  int r = 0;
  if (!peer_is_admin(cfg, &peer)) {
    nbdkit_error("listing exports is only for admin peers");
    r = -1;
    goto out;
  }
  for (size_t i = 0; i < cfg->n_clients && r == 0; i++) {
    const char *id = cfg->clients[i].id;
    r = add_export(exports, "%s", id) | add_export(exports, "%s@live", id) |
        add_export(exports, "%s@overlay", id);
    uint64_t *nums;
    size_t n;
    if (r == 0 && tb_client_sessions(cfg->state_dir, id, &nums, &n) == 0) {
      for (size_t k = 0; k < n && r == 0; k++)
        r = add_export(exports, "%s@session/%" PRIu64, id, nums[k]);
      free(nums);
    }
  }
  for (size_t i = 0; i < cfg->n_images && r == 0; i++) {
    uint32_t *vers;
    size_t n;
    if (tb_store_versions(cfg->state_dir, cfg->images[i], &vers, &n) == 0) {
      for (size_t k = 0; k < n && r == 0; k++)
        r = add_export(exports, "%s@%u", cfg->images[i], vers[k]);
      free(vers);
    }
  }
out:
  tb_config_unref(cfg);
  return r == 0 ? 0 : -1;
}

/* "base IMAGE@N" for exports that have a base version: remote views (tabula-fuse
 * --uri) read it to know what a client or session is compared with. */
static const char *tabula_export_description(void *handle)
{
  struct handle *h = handle;
  struct tb_overlay_info info;
  struct source src;
  const char *desc = NULL;
  if (h->kind == EXPORT_IMAGE)
    return nbdkit_printf_intern("tabula image %s", h->name);
  if (source_get(h, &src) == 0 && src.ovl) {
    tb_overlay_info(src.ovl, &info);
    desc = nbdkit_printf_intern("base %s@%u, session %" PRIu64 ", client %s", info.base.image,
                                info.base.version, info.session, h->name);
  }
  source_put(h, &src);
  return desc;
}

static const char *tabula_default_export(int readonly, int is_tls)
{
  return ""; /* the client found by its peer address */
}

static struct nbdkit_plugin plugin = {
    .name = "tabula",
    .longname = "tabula: copy-on-write overlays of master images for many clients",
    .version = PACKAGE_VERSION,
    .description = "Serves each client its own copy-on-write overlay of a master image.",
    .config = tabula_config,
    .config_complete = tabula_config_complete,
    .config_help = "config=FILE     (required) the tabula configuration (JSON)",
    .magic_config_key = "config",
    .get_ready = tabula_get_ready,
    .unload = tabula_unload,
    .after_fork = tabula_after_fork,
    .cleanup = tabula_cleanup,
    .list_exports = tabula_list_exports,
    .default_export = tabula_default_export,
    .export_description = tabula_export_description,
    .open = tabula_open,
    .close = tabula_close,
    .get_size = tabula_get_size,
    .block_size = tabula_block_size,
    .can_write = tabula_can_write,
    .can_flush = tabula_can_flush,
    .can_fua = tabula_can_fua,
    .can_multi_conn = tabula_can_multi_conn,
    .can_extents = tabula_can_extents,
    .can_zero = tabula_can_zero,
    .can_fast_zero = tabula_can_fast_zero,
    .can_trim = tabula_can_trim,
    .can_cache = tabula_can_cache,
    .pread = tabula_pread,
    .pwrite = tabula_pwrite,
    .zero = tabula_zero,
    .trim = tabula_trim,
    .flush = tabula_flush,
    .extents = tabula_extents,
    .errno_is_preserved = 0,
};

NBDKIT_REGISTER_PLUGIN(plugin)
