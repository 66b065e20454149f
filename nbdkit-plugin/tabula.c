/* SPDX-License-Identifier: BSD-3-Clause */
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
 *   export "ID@boot/TOKEN" client ID's disk in the boot TOKEN (a per-boot id)
 *
 *   export "ID/DISK"       the client's further disk DISK (conf.h "disks"), in
 *                          every form above: ID/DISK@boot/TOKEN, ID/DISK@live...
 *
 * Sessions are lib/live.c's: a session is a boot, connections of one boot
 * share it, the turn happens at the first write, and reconnects within
 * reconnect_grace continue it.  The plugin maps a connection to a client and
 * a boot token and calls tb_conn_*.  Admin connections to ID@live/ID@overlay
 * read what the client itself would read at that moment, flushed or not:
 *   - the running session's overlay, if this process runs it;
 *   - else, if another frontend process runs it (tabula-iscsid), that
 *     process's answer from its overlay (lib/liveview.h says why the file
 *     cannot show it: its map on disk is as of the last flush);
 *   - else a read-only copy of the overlay on disk, which no process then
 *     writes: reopened when this process's sessions started or ended, or the
 *     file changed (another process's session ended or turned).
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

#include "clientdir.h"
#include "boot.h"
#include "cleanup.h"
#include "clientcheck.h"
#include "conf.h"
#include "events.h"
#include "export.h"
#include "handshake.h"
#include "live.h"
#include "liveview.h"
#include "overlay.h"
#include "session.h"
#include "store.h"

/* A page: the least a handle tells nbdkit it prefers, and a raw version's
 * block size (it has no overlay to have one). */
#define PREFERRED_BLOCK_SIZE 4096

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

/* Clients whose configuration cannot be served (their image has no version
 * yet, a pinned version is missing or its manifest is corrupt, a preserved
 * or protected partition is not on it): id -> the reason.  Each is refused
 * alone at open, naming the reason, and checked again there (an import may
 * have fixed it); the others are served.  Built at start and at every
 * configuration reload; under cfg_lock. */
static json_t *broken_clients;

static json_t *find_broken(const struct tb_config *cfg)
{
  json_t *b = json_object(), *memo = json_object();
  for (size_t i = 0; b && i < cfg->n_clients; i++) {
    const struct tb_client_conf *c = &cfg->clients[i];
    if (tb_client_check_memo(cfg, c, memo) == -1) {
      nbdkit_error("%s: client %s is refused until this is fixed (the other clients are "
                   "served): %s",
                   cfg->path, c->id, tb_errmsg());
      json_object_set_new(b, c->id, json_string(tb_errmsg()));
    }
  }
  json_decref(memo);
  return b;
}

/* Whether client C is still unservable (refreshes its entry); the reason in
 * tb_errmsg(). */
static bool client_broken(const struct tb_config *cfg, const struct tb_client_conf *c)
{
  pthread_mutex_lock(&cfg_lock);
  bool listed = json_object_get(broken_clients, c->id) != NULL;
  pthread_mutex_unlock(&cfg_lock);
  if (!listed)
    return false;
  bool broken = tb_client_check(cfg, c) == -1;
  pthread_mutex_lock(&cfg_lock);
  if (!broken)
    json_object_del(broken_clients, c->id);
  pthread_mutex_unlock(&cfg_lock);
  return broken;
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
  if (tb_store_init(cfg->state_dir) == -1) {
    nbdkit_error("%s: %s", config_file, tb_errmsg());
    tb_config_unref(cfg);
    return -1;
  }
  broken_clients = find_broken(cfg);
  tb_events_set_max_bytes(cfg->events_max_bytes);
  tb_events_set_keep(cfg->events_keep);
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
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&cfg_lock);
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
      json_decref(broken_clients);
      broken_clients = find_broken(fresh);
      tb_events_set_max_bytes(fresh->events_max_bytes);
      tb_events_set_keep(fresh->events_keep);
      nbdkit_debug("configuration reloaded from %s", config_file);
    }
  }
  return tb_config_ref(current_cfg);
}

static void tabula_unload(void)
{
  json_decref(broken_clients);
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

/* Was nbdkit started with --tls-verify-peer (tabula-restored starts it so
 * when tls is set)?  Only then does a TLS connection prove a client
 * certificate signed by the configured CA: nbdkit 1.32 tells a plugin
 * whether a connection is TLS, not whether its peer was verified. */
static bool nbdkit_verifies_peers(void)
{
  static int verified = -1;
  if (verified == -1) {
    char buf[8192];
    int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd == -1 ? -1 : read(fd, buf, sizeof buf - 1);
    if (fd != -1)
      close(fd);
    int found = 0;
    for (ssize_t i = 0; i < n; i += (ssize_t)strlen(buf + i) + 1) {
      buf[n] = '\0';
      if (strcmp(buf + i, "--tls-verify-peer") == 0)
        found = 1;
    }
    if (!found)
      nbdkit_error("tls is configured but nbdkit runs without --tls-verify-peer: admin exports "
                   "are refused over TCP (start nbdkit with --tls-verify-peer, as "
                   "tabula-restored does)");
    verified = found;
  }
  return verified == 1;
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
  /* With tls, a verified client certificate (see nbdkit_verifies_peers). */
  return !cfg->tls_certificates || (nbdkit_is_tls() == 1 && nbdkit_verifies_peers());
}

/* ---- the tick thread ------------------------------------------------------------
 *
 * Once a second lib/live.c ends sessions whose reconnect grace ran out,
 * reports idle clients and applies the state directory's reserve.
 */

static pthread_t tick_thread;
static bool tick_running;
static pthread_mutex_t tick_stop_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t tick_stop_cond = PTHREAD_COND_INITIALIZER;
static bool tick_stop;

static void *tick_main(void *arg);

static int tabula_after_fork(void)
{
  int err = pthread_create(&tick_thread, NULL, tick_main, NULL);
  if (err) {
    errno = err;
    nbdkit_error("cannot start the session tick thread: %m");
    return -1;
  }
  tick_running = true;
  return 0;
}

static void tabula_cleanup(void)
{
  if (tick_running) {
    pthread_mutex_lock(&tick_stop_lock);
    tick_stop = true;
    pthread_cond_signal(&tick_stop_cond);
    pthread_mutex_unlock(&tick_stop_lock);
    pthread_join(tick_thread, NULL);
    tick_running = false;
  }
  /* Sessions in their reconnect grace stay resumable for the next nbdkit. */
  tb_live_shutdown();
}

/* Every TCP connection gets listen.handshake_timeout to open an export
 * (lib/handshake.h: nbdkit 1.32 would wait forever, a thread each). */
static int tabula_preconnect(int readonly)
{
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (nbdkit_peer_name((struct sockaddr *)&ss, &len) == 0)
    tb_handshake_begin((struct sockaddr *)&ss, len);
  return 0;
}

static void *tick_main(void *arg)
{
  pthread_mutex_lock(&tick_stop_lock);
  while (!tick_stop) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 1;
    pthread_cond_timedwait(&tick_stop_cond, &tick_stop_lock, &ts);
    if (tick_stop)
      break;
    pthread_mutex_unlock(&tick_stop_lock);
    struct tb_config *cfg = config_get();
    tb_live_tick(cfg);
    tb_handshake_reap(cfg->listen_handshake_timeout_ms);
    tb_config_unref(cfg);
    pthread_mutex_lock(&tick_stop_lock);
  }
  pthread_mutex_unlock(&tick_stop_lock);
  return NULL;
}

/* ---- handles ------------------------------------------------------------------ */

/* The grammar is lib/export.h's (fuzzed: tests/fuzz-export.sh). */
enum export_kind {
  EXPORT_CLIENT = TB_EXPORT_CLIENT,   /* ID, ID@boot/TOKEN: read-write */
  EXPORT_LIVE = TB_EXPORT_LIVE,       /* ID@live */
  EXPORT_OVERLAY = TB_EXPORT_OVERLAY, /* ID@overlay */
  EXPORT_SESSION = TB_EXPORT_SESSION, /* ID@session/N */
  EXPORT_IMAGE = TB_EXPORT_IMAGE,     /* IMAGE@N */
};

struct handle {
  enum export_kind kind;
  char name[TB_NAME_MAX + 1];    /* client id or image name */
  char boot_token[65];           /* CLIENT: the boot id sent with the name, or "" */
  struct tb_conn *conn;          /* CLIENT */
  struct tb_live_client *lc;     /* LIVE, OVERLAY */
  struct tb_liveview_peer *peer; /* LIVE, OVERLAY: the session in tabula-iscsid */
  /* What an admin handle reads when no session is running (or for SESSION):
   * a read-only overlay, or, for a client with no overlay and for IMAGE, a raw file. */
  pthread_mutex_t fallback_lock;
  struct tb_overlay *ro;
  int raw_fd;
  bool fallback_open;        /* LIVE, OVERLAY: ro / raw_fd hold what is below */
  uint64_t ro_generation;    /* this process's session generation when opened */
  char ro_path[TB_PATH_MAX]; /* LIVE, OVERLAY: clients/ID/overlay */
  struct stat ro_stat;       /* it, when opened (st_ino 0: none) */
  uint64_t fallback_size;    /* of what ro / raw_fd hold */
  uint64_t size;             /* announced at open; a different disk is ESTALE */
  uint32_t block_size;
};

static void handle_free(struct handle *h)
{
  if (!h)
    return;
  tb_conn_close(h->conn);
  if (h->lc)
    tb_live_client_put(h->lc);
  tb_liveview_peer_free(h->peer);
  tb_overlay_close(h->ro);
  if (h->raw_fd >= 0)
    close(h->raw_fd);
  pthread_mutex_destroy(&h->fallback_lock);
  free(h);
}

/* Parse an export name into its kind, name and number.  Returns -1 for a name
 * that is not of any known form. */
static int parse_export(const char *export, enum export_kind *kind, char *name, uint64_t *num,
                        char token[65])
{
  struct tb_export e;
  if (tb_export_parse(export, &e) == -1)
    return -1;
  *kind = (enum export_kind)e.kind;
  memcpy(name, e.name, sizeof e.name);
  *num = e.num;
  memcpy(token, e.token, sizeof e.token);
  return 0;
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

/* Open a raw file for H; its size is what H reads (a second open, after a
 * session changed the client, must find the size the handle announced). */
/* Serve the raw file open on h->raw_fd (NAME for messages). */
static int raw_opened(struct handle *h, const char *name, uint64_t *size)
{
  struct stat st;
  if (h->raw_fd == -1 || fstat(h->raw_fd, &st) == -1)
    return tb_error_errno("cannot open %s", name);
  *size = (uint64_t)st.st_size;
  h->block_size = PREFERRED_BLOCK_SIZE;
  return 0;
}

static int open_raw(struct handle *h, const char *path, uint64_t *size)
{
  h->raw_fd = open(path, O_RDONLY | O_CLOEXEC);
  return raw_opened(h, path, size);
}

/* (Re)open what an admin handle of client ID reads when no session runs:
 * its overlay on disk, or its target version if it has none yet.  *SIZE
 * gets the size of what was opened. */
static int admin_fallback_open(struct handle *h, const struct tb_config *cfg, uint64_t *size)
{
  char path[TB_PATH_MAX];
  if (tb_clientdir_path(cfg->state_dir, h->name, TB_CF_OVERLAY, path, sizeof path) == -1)
    return -1;
  tb_overlay_close(h->ro);
  h->ro = NULL;
  if (h->raw_fd >= 0)
    close(h->raw_fd);
  h->raw_fd = -1;
  h->fallback_open = false;
  /* Stat first: a change after this is seen at the next request. */
  if (stat(path, &h->ro_stat) == -1)
    memset(&h->ro_stat, 0, sizeof h->ro_stat);
  if (h->ro_stat.st_ino) {
    if (!(h->ro = open_ro_overlay(cfg->state_dir, path)))
      return -1;
    h->fallback_open = true;
    *size = tb_overlay_size(h->ro);
    h->block_size = tb_overlay_block_size(h->ro);
    return 0;
  }
  const struct tb_client_conf *c = tb_config_client(cfg, h->name);
  char image[TB_NAME_MAX + 1], img_path[TB_PATH_MAX];
  uint32_t version;
  if (!c || tb_client_target(cfg->state_dir, c, image, &version) == -1 ||
      tb_store_version_path(cfg->state_dir, image, version, img_path, sizeof img_path) == -1)
    return -1;
  if (open_raw(h, img_path, size) == -1)
    return -1;
  h->fallback_open = true;
  return 0;
}

/* Has clients/ID/overlay changed since the fallback was opened?  Another
 * process's session that ended flushed its map there, one that turned
 * renamed it away. */
static bool fallback_changed(struct handle *h)
{
  struct stat st;
  if (stat(h->ro_path, &st) == -1)
    return h->ro_stat.st_ino != 0;
  return st.st_ino != h->ro_stat.st_ino || st.st_dev != h->ro_stat.st_dev ||
         st.st_size != h->ro_stat.st_size || st.st_mtim.tv_sec != h->ro_stat.st_mtim.tv_sec ||
         st.st_mtim.tv_nsec != h->ro_stat.st_mtim.tv_nsec;
}

static int open_admin(struct handle *h, const struct tb_config *cfg, uint64_t num)
{
  char path[TB_PATH_MAX];
  switch (h->kind) {
  case EXPORT_IMAGE:
    if (!tb_config_has_image(cfg, h->name) || num > UINT32_MAX)
      return tb_error("no image %s in the configuration", h->name);
    if ((h->raw_fd = tb_store_open_version(cfg->state_dir, h->name, (uint32_t)num)) == -1)
      return -1;
    return raw_opened(h, h->name, &h->size);
  case EXPORT_SESSION:
    if (!tb_config_client(cfg, h->name))
      return tb_error("no client %s in the configuration", h->name);
    if (tb_clientdir_session(cfg->state_dir, h->name, num, path, sizeof path) == -1 ||
        !(h->ro = open_ro_overlay(cfg->state_dir, path)))
      return -1;
    h->size = tb_overlay_size(h->ro);
    h->block_size = tb_overlay_block_size(h->ro);
    return 0;
  case EXPORT_LIVE:
  case EXPORT_OVERLAY:
    if (!tb_config_client(cfg, h->name))
      return tb_error("no client %s in the configuration", h->name);
    if (!(h->lc = tb_live_client_get(h->name)))
      return -1;
    if (!(h->peer = tb_liveview_peer_new(cfg->state_dir, "iscsi", h->name)) ||
        tb_clientdir_path(cfg->state_dir, h->name, TB_CF_OVERLAY, h->ro_path, sizeof h->ro_path) ==
            -1)
      return -1;
    uint64_t gen;
    struct tb_overlay *ovl = tb_live_read_begin(h->lc, &gen);
    struct tb_overlay_info info;
    int r = 0;
    if (ovl) {
      h->size = tb_overlay_size(ovl);
      h->block_size = tb_overlay_block_size(ovl);
      tb_live_read_end(h->lc);
    } else if ((r = tb_liveview_peer_info(h->peer, &info)) == 1) {
      h->size = info.size;
      h->block_size = info.block_size;
      r = 0; /* the fallback opens when that session has ended */
    } else if (r == 0) {
      r = admin_fallback_open(h, cfg, &h->size);
      h->fallback_size = h->size;
    }
    h->ro_generation = gen;
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

/* Open EXPORT for PEER into H: -1 after nbdkit_error (and a refusal event
 * for a client refused). */
static int open_export(struct handle *h, struct tb_config *cfg, const struct peer *peer,
                       const char *export)
{
  bool admin = peer_is_admin(cfg, peer);
  uint64_t num = 0;

  if (export[0] == '\0') {
    const struct tb_client_conf *c = client_by_address(cfg, peer);
    if (!c) {
      nbdkit_error("no client is configured for address %s: send the client id as the export "
                   "name, or set \"address\" in its configuration",
                   peer->text);
      tb_event_refusal(cfg->state_dir, NULL, peer->text, "unknown address", "");
      return -1;
    }
    export = c->id;
  }
  if (parse_export(export, &h->kind, h->name, &num, h->boot_token) == -1) {
    char shown[84];
    printable_name(export, shown);
    nbdkit_error("invalid export name \"%s\": expected a client id ([A-Za-z0-9._-], up to 64 "
                 "characters) or a client's disk ID/DISK",
                 shown);
    tb_event_refusal(cfg->state_dir, NULL, peer->text, "invalid export name", export);
    return -1;
  }
  if (h->kind == EXPORT_CLIENT) {
    const struct tb_client_conf *c = tb_config_client(cfg, h->name);
    if (!c) {
      nbdkit_error("unknown client \"%s\": no such client in the configuration", h->name);
      tb_event_refusal(cfg->state_dir, NULL, peer->text, "unknown client", export);
      return -1;
    }
    if (!tb_acl_allows(&c->allow, (const struct sockaddr *)&peer->addr)) {
      nbdkit_error("client \"%s\" refused to peer %s: not in its \"allow\" list", h->name,
                   peer->text);
      tb_event_refusal(cfg->state_dir, h->name, peer->text, "not in allow", NULL);
      return -1;
    }
    if (client_broken(cfg, c)) {
      nbdkit_error("client \"%s\" refused: %s", h->name, tb_errmsg());
      tb_event_refusal(cfg->state_dir, h->name, peer->text, tb_errmsg(), NULL);
      return -1;
    }
    struct tb_conn_info info = {.frontend = "nbd",
                                .peer = peer->text,
                                .boot_token = h->boot_token[0] ? h->boot_token : NULL,
                                .admin = admin};
    enum tb_conn_refusal why;
    if (!(h->conn = tb_conn_open(cfg, c, &info, &why))) {
      nbdkit_error("%s", tb_errmsg());
      tb_event_refusal(cfg->state_dir, h->name, peer->text,
                       tb_conn_refusal_reason(why, tb_errmsg()), NULL);
      return -1;
    }
    h->size = tb_conn_size(h->conn);
    h->block_size = tb_conn_block_size(h->conn);
    return 0;
  }
  /* Admin exports: to anyone else they do not exist. */
  if (!admin) {
    nbdkit_error("unknown client \"%.80s\": no such client in the configuration", export);
    tb_event_refusal(cfg->state_dir, NULL, peer->text, "unknown client", export);
    return -1;
  }
  if (open_admin(h, cfg, num) == -1) {
    nbdkit_error("export \"%s\": %s", export, tb_errmsg());
    return -1;
  }
  return 0;
}

static void *tabula_open(int readonly)
{
  const char *export = nbdkit_export_name();
  struct peer peer;
  if (!export || peer_get(&peer) == -1) {
    nbdkit_error("cannot identify the peer of this connection");
    return NULL;
  }
  CLEANUP_CONFIG_UNREF struct tb_config *cfg = config_get();
  struct handle *h = calloc(1, sizeof *h);
  if (!h) {
    nbdkit_error("out of memory");
    return NULL;
  }
  h->raw_fd = -1;
  pthread_mutex_init(&h->fallback_lock, NULL);
  if (open_export(h, cfg, &peer, export) == -1) {
    handle_free(h);
    return NULL;
  }
  tb_handshake_done();
  return h;
}

static void tabula_close(void *handle)
{
  handle_free(handle);
}

/* ---- what a handle reads ------------------------------------------------------ */

/* A source of data for one admin request: an overlay, or a raw file, or
 * the peer that may run the session. */
struct source {
  struct tb_overlay *ovl;
  int raw_fd;
  bool live;            /* holds the live session's overlay (tb_live_read_begin) */
  bool fallback_locked; /* holds fallback_lock */
  bool remote;          /* ask h->peer first; source_fallback if it runs no session */
  uint64_t generation;
};

/* What an admin request reads when no process runs the client's session:
 * the overlay on disk, reopened when it may be stale.  Holds fallback_lock
 * until source_put. */
static int source_fallback(struct handle *h, struct source *src)
{
  src->remote = false;
  pthread_mutex_lock(&h->fallback_lock);
  src->fallback_locked = true;
  int r = 0;
  if (!h->fallback_open || h->ro_generation != src->generation || fallback_changed(h)) {
    struct tb_config *cfg = config_get();
    uint64_t size;
    r = admin_fallback_open(h, cfg, &size);
    if (r == 0) {
      h->ro_generation = src->generation;
      h->fallback_size = size;
    }
    tb_config_unref(cfg);
  }
  if (r == -1) {
    errno = EIO;
    return tb_error_prefix("%s@live", h->name);
  }
  src->ovl = h->ro;
  src->raw_fd = h->raw_fd;
  if (h->fallback_size != h->size) {
    errno = ESTALE;
    return tb_error("%s: the client's disk changed (re-imaged from %" PRIu64 " to %" PRIu64
                    " bytes); reconnect",
                    h->name, h->size, h->fallback_size);
  }
  return 0;
}

static int source_get(struct handle *h, struct source *src)
{
  memset(src, 0, sizeof *src);
  src->raw_fd = -1;
  if (h->kind == EXPORT_SESSION || h->kind == EXPORT_IMAGE) {
    src->ovl = h->ro;
    src->raw_fd = h->raw_fd;
    return 0;
  }
  /* LIVE and OVERLAY: the running session here, else the one another
   * process runs, else the overlay on disk. */
  uint64_t gen;
  if (!(src->ovl = tb_live_read_begin(h->lc, &gen))) {
    src->generation = gen;
    src->remote = true;
    return 0;
  }
  src->live = true;
  uint64_t size = tb_overlay_size(src->ovl);
  if (size != h->size) {
    errno = ESTALE;
    return tb_error("%s: the client's disk changed (re-imaged from %" PRIu64 " to %" PRIu64
                    " bytes); reconnect",
                    h->name, h->size, size);
  }
  return 0;
}

static void source_put(struct handle *h, struct source *src)
{
  if (src->fallback_locked)
    pthread_mutex_unlock(&h->fallback_lock);
  if (src->live)
    tb_live_read_end(h->lc);
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
  *preferred = h->block_size < PREFERRED_BLOCK_SIZE ? PREFERRED_BLOCK_SIZE : h->block_size;
  *maximum = 0xffffffff;
  return 0;
}

static int tabula_can_write(void *handle)
{
  struct handle *h = handle;
  return h->kind == EXPORT_CLIENT && !tb_conn_read_only(h->conn);
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

static int tabula_pread(void *handle, void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;
  if (h->kind == EXPORT_CLIENT)
    return tb_conn_pread(h->conn, buf, count, offset) == -1 ? fail_with_errno() : 0;
  struct source src;
  int r = source_get(h, &src);
  if (r == 0 && src.remote) {
    int served =
        tb_liveview_peer_pread(h->peer, h->kind == EXPORT_OVERLAY, buf, count, offset, h->size);
    if (served != 0) {
      source_put(h, &src);
      return served == 1 ? 0 : fail_with_errno();
    }
    r = source_fallback(h, &src);
  }
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

static int fua(uint32_t flags)
{
  return (flags & NBDKIT_FLAG_FUA) ? TB_FUA : 0;
}

static int tabula_pwrite(void *handle, const void *buf, uint32_t count, uint64_t offset,
                         uint32_t flags)
{
  struct handle *h = handle;
  return tb_conn_pwrite(h->conn, buf, count, offset, fua(flags)) == -1 ? fail_with_errno() : 0;
}

static int tabula_zero(void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;
  /* A fast zero must fail rather than be slow (NBD): a partial block would
   * be written, not mapped. */
  uint64_t bs = h->block_size;
  if ((flags & NBDKIT_FLAG_FAST_ZERO) && (offset % bs || count % bs)) {
    nbdkit_set_error(ENOTSUP);
    return -1;
  }
  return tb_conn_zero(h->conn, count, offset, fua(flags)) == -1 ? fail_with_errno() : 0;
}

static int tabula_trim(void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;
  return tb_conn_trim(h->conn, count, offset, fua(flags)) == -1 ? fail_with_errno() : 0;
}

static int tabula_flush(void *handle, uint32_t flags)
{
  struct handle *h = handle;
  if (h->kind != EXPORT_CLIENT)
    return 0;
  return tb_conn_flush(h->conn) == -1 ? fail_with_errno() : 0;
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
  if (h->kind == EXPORT_CLIENT) {
    struct extents_ctx x = {extents, tb_conn_base_fd(h->conn), false};
    uint64_t len = (flags & NBDKIT_FLAG_REQ_ONE) ? h->block_size : count;
    if (len > count)
      len = count;
    if (x.base_fd == -1 || tb_conn_extents(h->conn, offset, len, extent_cb, &x) == -1) {
      nbdkit_error("%s: extents: %s", h->name, tb_errmsg());
      return -1;
    }
    return 0;
  }
  struct source src;
  int r = source_get(h, &src);
  if (r == 0 && src.remote) {
    struct tb_liveview_run *runs;
    size_t n;
    int base_fd;
    int served = tb_liveview_peer_extents(h->peer, offset, count, h->size, &runs, &n, &base_fd);
    if (served == 1) {
      struct extents_ctx x = {extents, base_fd, h->kind == EXPORT_OVERLAY};
      /* With REQ_ONE only the first extent is needed. */
      for (size_t i = 0; i < n && r == 0 && (i == 0 || !(flags & NBDKIT_FLAG_REQ_ONE)); i++)
        r = extent_cb(&x, runs[i].offset, runs[i].length, runs[i].state);
      free(runs);
      close(base_fd);
    }
    if (served != 0) {
      source_put(h, &src);
      if (served == -1 || r == -1) {
        nbdkit_error("%s: extents: %s", h->name, tb_errmsg());
        return -1;
      }
      return 0;
    }
    r = source_fallback(h, &src);
  }
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

/* Is client C's own export worth listing: could an admin open it now?  Not
 * when another process serves it (busy) or it has no version to boot; a
 * listing tool (nbdinfo --list) opens every export it is given and fails on
 * the first that refuses.  A locked-down client is listed: admins see it
 * read-only.  The admin views (ID@live...) are listed whenever they can be
 * opened (views_listable). */
static bool has_target(const struct tb_config *cfg, const struct tb_client_conf *c)
{
  char image[TB_NAME_MAX + 1], path[TB_PATH_MAX];
  uint32_t version;
  return tb_client_target(cfg->state_dir, c, image, &version) == 0 &&
         tb_store_manifest_path(cfg->state_dir, image, version, path, sizeof path) == 0 &&
         access(path, F_OK) == 0;
}

static bool client_listable(const struct tb_config *cfg, const struct tb_client_conf *c)
{
  if (tb_live_holds(c->id))
    return true;
  if (tb_live_busy(cfg->state_dir, c))
    return false;
  return has_target(cfg, c);
}

/* Can its views (ID@live, ID@overlay) be opened: it has an overlay, or a
 * version to show (a disk whose image has none yet has neither). */
static bool views_listable(const struct tb_config *cfg, const struct tb_client_conf *c)
{
  char path[TB_PATH_MAX];
  return (tb_clientdir_path(cfg->state_dir, c->id, TB_CF_OVERLAY, path, sizeof path) == 0 &&
          access(path, F_OK) == 0) ||
         has_target(cfg, c);
}

static int tabula_list_exports(int readonly, int is_tls, struct nbdkit_exports *exports)
{
  struct peer peer;
  if (peer_get(&peer) == -1)
    return -1;
  CLEANUP_CONFIG_UNREF struct tb_config *cfg = config_get();
  if (!peer_is_admin(cfg, &peer)) {
    nbdkit_error("listing exports is only for admin peers");
    return -1;
  }
  int r = 0;
  for (size_t i = 0; i < cfg->n_clients && r == 0; i++) {
    const char *id = cfg->clients[i].id;
    if (client_listable(cfg, &cfg->clients[i]))
      r = add_export(exports, "%s", id);
    if (views_listable(cfg, &cfg->clients[i]))
      r |= add_export(exports, "%s@live", id) | add_export(exports, "%s@overlay", id);
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
  if (h->kind == EXPORT_CLIENT)
    return nbdkit_printf_intern("tabula client %s", h->name);
  int r = source_get(h, &src);
  if (r == 0 && src.remote && (r = tb_liveview_peer_info(h->peer, &info)) == 0)
    r = source_fallback(h, &src);
  if (r == 0 && src.ovl)
    tb_overlay_info(src.ovl, &info);
  if (r == 1 || (r == 0 && src.ovl))
    desc = nbdkit_printf_intern("base %s@%u, session %" PRIu64 ", client %s", info.base.image,
                                info.base.version, info.session, h->name);
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
    .preconnect = tabula_preconnect,
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
