/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-fuse: a read-only view of every client's disk, its retained sessions
 * and the master versions, down to the files of the guest filesystems.
 *
 *   MOUNT/clients/ID/{disk,status.json,changes.txt,fs/VOLUME/...,sessions/N/...}
 *   MOUNT/clients/ID/disks/DISK/{the same}   a client's further disk ID/DISK
 *   MOUNT/images/NAME/N/{disk,fs/VOLUME/...}
 *
 * How it works.  The view is an NBD client of the appliance's admin exports
 * (ID@live, ID@overlay, ID@session/N, IMAGE@N): with -c it finds the unix
 * socket, the clients, sessions and versions in the configuration and the
 * state directory; with --uri it lists the exports of a (remote) appliance.
 * Every export the tree touches becomes a "source": one NBD connection,
 * opened on first use, and a snapshot (lib/inspect.h) of its volumes and
 * filesystems.  Snapshots of immutable exports (sessions, versions) live as
 * long as the mount; a live client's snapshot is re-opened when it is older
 * than CACHE_MS, so directory listings and stats lag the guest by at most
 * CACHE_MS plus the kernel's attribute timeout (KERNEL_TIMEOUT_S).  Open files
 * hold the snapshot they were opened on.  The kernel's caches follow the
 * same line (node_timeout): what lies inside an immutable export (names,
 * attributes, absences, listings, pages) it may keep without limit, the
 * rest KERNEL_TIMEOUT_S; this is why the view speaks libfuse's low-level
 * API, whose replies each carry their own timeouts.
 *
 * Promises: nothing is ever written (the mount is "ro" and every modifying
 * operation answers EROFS); a damaged or hostile guest filesystem answers EIO
 * where it cannot be read and never brings the view down.  Every request
 * into a guest filesystem has a deadline (--op-timeout): lib/inspect runs
 * libtsk on each snapshot's own worker thread and answers EIO when the
 * deadline passes, even when libtsk is lost in computation rather than I/O.
 * Such a snapshot then answers EIO at once until the abandoned work ends,
 * and its source opens no new snapshot meanwhile (tb_disk_stuck), so one
 * damaged export keeps at most one thread busy; other exports, the raw disks
 * and status.json stay served.  FUSE runs multi-threaded: sources and
 * snapshots lock themselves, libtsk handles are serialised per snapshot.
 */
#define FUSE_USE_VERSION 312
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <jansson.h>
#include <libnbd.h>

#include "cleanup.h"
#include "clientdir.h"
#include "conf.h"
#include "export.h"
#include "inspect.h"
#include "overlay.h"
#include "session.h"
#include "store.h"
#include "util.h"
#include "vector.h"

#define CACHE_MS 2000        /* lifetime of a live snapshot, of listings and of changes.txt */
#define KERNEL_TIMEOUT_S 1.0 /* kernel entry/attribute cache */
#define IMMUTABLE_TIMEOUT_S (365 * 86400.0) /* ... inside immutable exports: node_timeout */
#define MAX_SOURCES 4096
#define DEFAULT_OP_TIMEOUT_S 5 /* --op-timeout */

/* ---- options ---------------------------------------------------------------- */

static struct {
  const char *config_file;
  const char *uri;
  const char *op_timeout;
  int show_help;
  int show_version;
} opts;

static int64_t op_timeout_ms = DEFAULT_OP_TIMEOUT_S * 1000;
static struct tb_config *cfg;        /* with -c */
static char nbd_socket[TB_PATH_MAX]; /* with -c */
static time_t mount_time;

/* ---- export lists ------------------------------------------------------------- */

/* What exists: clients, their sessions, images and their versions.  With -c
 * it is read from the configuration and the state directory on each call;
 * with --uri from NBD_OPT_LIST, at most every CACHE_MS. */
TB_VECTOR(names, char *); /* each one once (names_add), owned */

static void names_free(struct names *n)
{
  for (size_t i = 0; i < n->len; i++)
    free(n->ptr[i]);
  tb_vector_free(n);
}

static bool names_has(const struct names *n, const char *s)
{
  for (size_t i = 0; i < n->len; i++)
    if (strcmp(n->ptr[i], s) == 0)
      return true;
  return false;
}

/* Out of memory drops S: a listing short of a name, not a failed one. */
static void names_add(struct names *n, const char *s)
{
  if (names_has(n, s) || tb_vector_reserve(n, 1) == -1)
    return;
  char *d = strdup(s);
  if (d)
    n->ptr[n->len++] = d;
}

static pthread_mutex_t list_lock = PTHREAD_MUTEX_INITIALIZER;
static struct names remote_exports; /* --uri: every export name */
static int64_t remote_listed_ms;
static char remote_error[512];

static int list_cb(void *user_data, const char *name, const char *description)
{
  names_add(user_data, name);
  return 0;
}

/* Refresh the remote export list if it is older than CACHE_MS.  Call with list_lock. */
static void remote_refresh(void)
{
  int64_t now = tb_now_ms();
  if (remote_listed_ms && now - remote_listed_ms < CACHE_MS)
    return;
  remote_listed_ms = now;
  struct names fresh = {0};
  struct nbd_handle *h = nbd_create();
  int r = h ? nbd_set_opt_mode(h, true) : -1;
  if (r == 0)
    r = nbd_connect_uri(h, opts.uri);
  if (r == 0)
    r = nbd_opt_list(h, (nbd_list_callback){.callback = list_cb, .user_data = &fresh});
  if (r < 0) {
    snprintf(remote_error, sizeof remote_error, "%s", nbd_get_error());
    names_free(&fresh);
  } else {
    remote_error[0] = '\0';
    names_free(&remote_exports);
    remote_exports = fresh;
  }
  if (h) {
    if (r == 0)
      nbd_opt_abort(h);
    nbd_close(h);
  }
}

static bool is_number(const char *s)
{
  if (!*s || *s == '0' || strlen(s) > 19)
    return false;
  for (; *s; s++)
    if (*s < '0' || *s > '9')
      return false;
  return true;
}

/* Clients (their further disks are under clients/ID/disks: list_disks). */
static void list_clients(struct names *out)
{
  if (cfg) {
    for (size_t i = 0; i < cfg->n_clients; i++)
      if (!cfg->clients[i].disk[0])
        names_add(out, cfg->clients[i].id);
    return;
  }
  pthread_mutex_lock(&list_lock);
  remote_refresh();
  for (size_t i = 0; i < remote_exports.len; i++) {
    const char *e = remote_exports.ptr[i];
    const char *at = strrchr(e, '@');
    if (at && strcmp(at, "@live") == 0) {
      char id[TB_NAME_MAX + 1];
      snprintf(id, sizeof id, "%.*s", (int)(at - e), e);
      if (tb_name_valid(id))
        names_add(out, id);
    }
  }
  pthread_mutex_unlock(&list_lock);
}

/* The further disks of client ID (conf.h "disks"): DISK of each "ID/DISK". */
static void list_disks(const char *id, struct names *out)
{
  if (cfg) {
    const struct tb_client_conf *c = tb_config_client(cfg, id);
    for (size_t k = 1; c && k <= c->n_disks; k++)
      names_add(out, c[k].disk);
    return;
  }
  size_t idlen = strlen(id);
  pthread_mutex_lock(&list_lock);
  remote_refresh();
  for (size_t i = 0; i < remote_exports.len; i++) {
    const char *e = remote_exports.ptr[i];
    const char *at = strrchr(e, '@');
    if (!at || strcmp(at, "@live") != 0 || strncmp(e, id, idlen) != 0 || e[idlen] != '/')
      continue;
    char disk[TB_NAME_MAX + 1];
    snprintf(disk, sizeof disk, "%.*s", (int)(at - e - idlen - 1), e + idlen + 1);
    if (tb_name_valid(disk))
      names_add(out, disk);
  }
  pthread_mutex_unlock(&list_lock);
}

/* Retained sessions of client ID, as decimal strings. */
static void list_sessions(const char *id, struct names *out)
{
  if (cfg) {
    uint64_t *nums;
    size_t n;
    if (tb_client_sessions(cfg->state_dir, id, &nums, &n) == 0) {
      for (size_t i = 0; i < n; i++) {
        char s[24];
        snprintf(s, sizeof s, "%" PRIu64, nums[i]);
        names_add(out, s);
      }
      free(nums);
    }
    return;
  }
  size_t idlen = strlen(id);
  pthread_mutex_lock(&list_lock);
  remote_refresh();
  for (size_t i = 0; i < remote_exports.len; i++) {
    const char *e = remote_exports.ptr[i];
    if (strncmp(e, id, idlen) == 0 && strncmp(e + idlen, "@session/", 9) == 0 &&
        is_number(e + idlen + 9))
      names_add(out, e + idlen + 9);
  }
  pthread_mutex_unlock(&list_lock);
}

/* Images (NAME) or, with IMAGE set, the versions of IMAGE. */
static void list_images(const char *image, struct names *out)
{
  if (cfg) {
    if (!image) {
      char **v;
      size_t n;
      if (tb_store_images(cfg->state_dir, &v, &n) == 0) {
        for (size_t i = 0; i < n; i++)
          names_add(out, v[i]);
        tb_strv_free(v, n);
      }
      return;
    }
    uint32_t *vers;
    size_t n;
    if (tb_store_versions(cfg->state_dir, image, &vers, &n) == 0) {
      for (size_t i = 0; i < n; i++) {
        char s[16];
        snprintf(s, sizeof s, "%u", vers[i]);
        names_add(out, s);
      }
      free(vers);
    }
    return;
  }
  pthread_mutex_lock(&list_lock);
  remote_refresh();
  for (size_t i = 0; i < remote_exports.len; i++) {
    const char *e = remote_exports.ptr[i];
    const char *at = strchr(e, '@');
    if (!at || !is_number(at + 1))
      continue;
    char name[TB_NAME_MAX + 1];
    snprintf(name, sizeof name, "%.*s", (int)(at - e), e);
    if (!tb_name_valid(name))
      continue;
    if (!image)
      names_add(out, name);
    else if (strcmp(name, image) == 0)
      names_add(out, at + 1);
  }
  pthread_mutex_unlock(&list_lock);
}

/* ---- sources: one NBD export and its snapshot ------------------------------------ */

/* A snapshot remembers the attributes its listings gave (VOLUME index and
 * path -> tb_istat): a stat of a listed entry (find -ls, ls -l: a kernel
 * lookup once its 1 s cache is past) is answered here, from the very
 * listing tb_inspect_stat would resolve it through, without a trip to the
 * filesystem's worker thread.  It lives and dies with the snapshot, so it
 * is never fresher or staler than the snapshot's own listings.  At most
 * STAT_CACHE_MAX entries; past that, stats take the worker's way. */
#define STAT_CACHE_BUCKETS 16384
#define STAT_CACHE_MAX 262144
struct stat_entry {
  struct stat_entry *next;
  int vol;
  uint32_t name; /* where the last component starts in path */
  struct tb_istat is;
  char path[];
};

/* The stat cache's entries live in chunks the snapshot frees whole: a
 * 20,000-entry directory was 20,000 mallocs, a quarter of its listing's
 * time. */
struct arena_chunk {
  struct arena_chunk *next;
  size_t used, cap;
  _Alignas(16) unsigned char data[];
};
#define ARENA_CHUNK (256u << 10)

struct snap {
  atomic_int refs;
  struct tb_inspect *ins;
  int64_t opened_ms;
  pthread_mutex_t stat_mu;
  struct stat_entry **stat_buckets; /* STAT_CACHE_BUCKETS, allocated at the first listing */
  size_t stat_n;
  struct arena_chunk *stat_arena;
  struct big_dir *big_dirs; /* under stat_mu: big directories listed (listing_plan) */
};

/* A directory of more than PLUS_FIRST entries that a listing gave without
 * all their attributes (listing_plan); partial: its files came names first
 * (tb_inspect_readdir_lazy), not in the stat cache (stat_fill). */
struct big_dir {
  struct big_dir *next;
  int vol;
  bool partial;
  char path[];
};

static uint32_t stat_hash(int vol, const char *path)
{
  uint32_t h = 2166136261u ^ (uint32_t)vol;
  for (const unsigned char *p = (const unsigned char *)path; *p; p++)
    h = (h ^ *p) * 16777619u;
  return h % STAT_CACHE_BUCKETS;
}

/* N bytes from the snapshot's arena (under stat_mu); NULL when out of memory. */
static void *arena_alloc(struct snap *sn, size_t n)
{
  n = (n + 15) & ~(size_t)15;
  struct arena_chunk *c = sn->stat_arena;
  if (!c || c->cap - c->used < n) {
    size_t cap = n > ARENA_CHUNK ? n : ARENA_CHUNK;
    if (!(c = malloc(sizeof *c + cap)))
      return NULL;
    c->next = sn->stat_arena;
    c->used = 0;
    c->cap = cap;
    sn->stat_arena = c;
  }
  void *p = c->data + c->used;
  c->used += n;
  return p;
}

/* Remember DIR/NAME's attributes IS in the snapshot (DL: strlen(DIR)).  Returns its entry,
 * which lives as long as the snapshot (an entry already there for that
 * path: that one), or NULL when the cache is full or out of memory. */
static const struct stat_entry *stat_put(struct snap *sn, int vol, const char *dir, size_t dl,
                                         const char *name, const struct tb_istat *is)
{
  size_t nl = strlen(name);
  bool slash = dl == 0 || dir[dl - 1] != '/';
  size_t size = sizeof(struct stat_entry) + dl + slash + nl + 1;
  pthread_mutex_lock(&sn->stat_mu);
  if (!sn->stat_buckets && sn->stat_n == 0)
    sn->stat_buckets = calloc(STAT_CACHE_BUCKETS, sizeof *sn->stat_buckets);
  struct stat_entry *e =
      sn->stat_buckets && sn->stat_n < STAT_CACHE_MAX ? arena_alloc(sn, size) : NULL;
  if (e) {
    memcpy(e->path, dir, dl);
    if (slash)
      e->path[dl] = '/';
    memcpy(e->path + dl + slash, name, nl + 1);
    uint32_t h = stat_hash(vol, e->path);
    struct stat_entry *old = sn->stat_buckets[h];
    while (old && (old->vol != vol || strcmp(old->path, e->path) != 0))
      old = old->next;
    if (old) { /* listed before: give back what was just taken */
      sn->stat_arena->used -= (size + 15) & ~(size_t)15;
      e = old;
    } else {
      e->vol = vol;
      e->name = (uint32_t)(dl + slash);
      e->is = *is;
      e->next = sn->stat_buckets[h];
      sn->stat_buckets[h] = e;
      sn->stat_n++;
    }
  }
  pthread_mutex_unlock(&sn->stat_mu);
  return e;
}

static bool stat_get(struct snap *sn, int vol, const char *path, struct tb_istat *is)
{
  bool found = false;
  pthread_mutex_lock(&sn->stat_mu);
  if (sn->stat_buckets)
    for (const struct stat_entry *e = sn->stat_buckets[stat_hash(vol, path)]; e && !found;
         e = e->next)
      if (e->vol == vol && strcmp(e->path, path) == 0) {
        *is = e->is;
        found = true;
      }
  pthread_mutex_unlock(&sn->stat_mu);
  return found;
}

struct fill_ctx {
  struct listing *listing;
  const struct source *source;
  int vol;
  struct snap *snap;
  const char *dir;
  size_t dl; /* strlen(dir) */
  bool full; /* out of memory */
};

static int stat_fill_cb(void *ctx, const char *name, const struct tb_istat *is)
{
  struct fill_ctx *fc = ctx;
  return stat_put(fc->snap, fc->vol, fc->dir, fc->dl, name, is) ? 0 : 1;
}

/* A stat of PATH that the stat cache lacks, in a big directory whose first
 * listing came names first: the first such stat (a `find -ls`, an `ls -l`
 * of it) lists the directory again, whole, into the stat cache, so the
 * others are answered there instead of by a request each.  True if it did. */
static bool stat_fill(struct snap *sn, int vol, const char *path)
{
  const char *slash = strrchr(path, '/');
  if (!slash)
    return false;
  size_t dl = slash == path ? 1 : (size_t)(slash - path);
  bool fill = false;
  pthread_mutex_lock(&sn->stat_mu);
  for (struct big_dir *b = sn->big_dirs; b && !fill; b = b->next)
    if (b->vol == vol && b->partial && strlen(b->path) == dl && memcmp(b->path, path, dl) == 0) {
      b->partial = false; /* once: a lookup racing this one asks the library */
      fill = true;
    }
  pthread_mutex_unlock(&sn->stat_mu);
  char *dir = fill ? strndup(path, dl) : NULL;
  struct fill_ctx fc = {.vol = vol, .snap = sn, .dir = dir, .dl = dl};
  fill = dir && tb_inspect_readdir(sn->ins, (size_t)vol, dir, stat_fill_cb, &fc) == 0;
  free(dir);
  return fill;
}

static struct snap *snap_ref(struct snap *s)
{
  atomic_fetch_add(&s->refs, 1);
  return s;
}

static void snap_put(struct snap *s)
{
  if (s && atomic_fetch_sub(&s->refs, 1) == 1) {
    tb_inspect_close(s->ins);
    for (struct arena_chunk *c = s->stat_arena, *next; c; c = next) {
      next = c->next;
      free(c);
    }
    free(s->stat_buckets);
    for (struct big_dir *b = s->big_dirs, *next; b; b = next) {
      next = b->next;
      free(b);
    }
    pthread_mutex_destroy(&s->stat_mu);
    free(s);
  }
}

struct source {
  char export[TB_PATH_MAX];
  size_t idx;  /* in sources[]: part of the inode numbers of its files */
  bool moving; /* a live disk: snapshots expire */
  pthread_mutex_t mu;
  struct tb_disk *disk;
  struct snap *snap;
  char error[512];
  int64_t failed_ms; /* last failed connection, to avoid hammering */
};

static pthread_mutex_t sources_lock = PTHREAD_MUTEX_INITIALIZER;
static struct source *sources[MAX_SOURCES];
static size_t n_sources;

static struct source *source_get(const char *export, bool moving)
{
  pthread_mutex_lock(&sources_lock);
  struct source *s = NULL;
  for (size_t i = 0; i < n_sources && !s; i++)
    if (strcmp(sources[i]->export, export) == 0)
      s = sources[i];
  if (!s && n_sources < MAX_SOURCES && (s = calloc(1, sizeof *s))) {
    snprintf(s->export, sizeof s->export, "%s", export);
    s->moving = moving;
    pthread_mutex_init(&s->mu, NULL);
    s->idx = n_sources;
    sources[n_sources++] = s;
  }
  pthread_mutex_unlock(&sources_lock);
  return s;
}

/* The disk of export S of the local appliance.  A version of its store
 * (IMAGE@N) never changes: the view reads its file (one pread a request;
 * through nbdkit a read is its pread, a socket's two copies and a round
 * trip), opened as nbdkit's admin export opens it (lib/store.c).  What
 * moves (a client's live disk, its overlay) and retained sessions come from
 * nbdkit, which runs them. */
static struct tb_disk *local_disk(const struct source *s)
{
  struct tb_export e;
  if (tb_export_parse(s->export, &e) == 0 && e.kind == TB_EXPORT_IMAGE) {
    if (!tb_config_has_image(cfg, e.name) || e.num > UINT32_MAX) {
      errno = ENOENT;
      tb_error("no image %s in the configuration", s->export);
      return NULL;
    }
    int fd = tb_store_open_version(cfg->state_dir, e.name, (uint32_t)e.num);
    return fd >= 0 ? tb_disk_open_fd(fd, s->export) : NULL;
  }
  return tb_disk_open_nbd(NULL, nbd_socket, s->export);
}

/* Connect if needed.  Call with s->mu held. */
static int source_connect(struct source *s)
{
  if (s->disk)
    return 0;
  int64_t now = tb_now_ms();
  if (s->failed_ms && now - s->failed_ms < 1000)
    return -1;
  s->disk = cfg ? local_disk(s) : tb_disk_open_nbd(opts.uri, NULL, s->export);
  if (!s->disk) {
    snprintf(s->error, sizeof s->error, "%s", tb_errmsg());
    fprintf(stderr, "tabula-fuse: %s\n", s->error);
    s->failed_ms = now;
    return -1;
  }
  return 0;
}

static struct tb_disk *source_disk(struct source *s)
{
  pthread_mutex_lock(&s->mu);
  struct tb_disk *d = source_connect(s) == 0 ? tb_disk_ref(s->disk) : NULL;
  pthread_mutex_unlock(&s->mu);
  return d;
}

/* The source's current snapshot (a reference: snap_put it). */
static struct snap *source_snap(struct source *s)
{
  pthread_mutex_lock(&s->mu);
  struct snap *r = NULL;
  int64_t now = tb_now_ms();
  if (s->snap && s->moving && now - s->snap->opened_ms >= CACHE_MS) {
    snap_put(s->snap);
    s->snap = NULL;
  }
  /* While a snapshot of this export is stuck past a deadline, no new one:
   * it would only get stuck on the same damage. */
  if (!s->snap && source_connect(s) == 0 && !tb_disk_stuck(s->disk)) {
    struct snap *n = calloc(1, sizeof *n);
    if (n && (n->ins = tb_inspect_open_budget(s->disk, op_timeout_ms))) {
      atomic_init(&n->refs, 1);
      pthread_mutex_init(&n->stat_mu, NULL);
      n->opened_ms = now;
      s->snap = n;
    } else {
      free(n);
    }
  }
  if (s->snap)
    r = snap_ref(s->snap);
  pthread_mutex_unlock(&s->mu);
  return r;
}

/* ---- paths ---------------------------------------------------------------------- */

enum kind {
  K_ROOT,
  K_CLIENTS,
  K_IMAGES,
  K_IMAGE,    /* images/NAME */
  K_CTX,      /* clients/ID, clients/ID/sessions/N, images/NAME/N */
  K_SESSIONS, /* clients/ID/sessions */
  K_DISKS,    /* clients/ID/disks: a client's further disks, each a CTX */
  K_DISK,     /* CTX/disk */
  K_STATUS,   /* clients/ID/status.json */
  K_CHANGES,  /* CTX/changes.txt (clients and sessions) */
  K_FS,       /* CTX/fs */
  K_VOL,      /* CTX/fs/VOLUME[/path] */
};

enum ctx_type { CTX_LIVE, CTX_SESSION, CTX_VERSION };

struct node {
  enum kind kind;
  enum ctx_type ctx;
  char name[TB_NAME_MAX + 1]; /* client id ("ID" or "ID/DISK") or image name */
  char num[24];               /* session or version number */
  char export[TB_PATH_MAX];   /* the context's export */
  char volume[64];
  const char *inner; /* path inside the volume ("/" for its root) */
};

/* Split the next component of *P into OUT; false at the end. */
static bool next_comp(const char **p, char *out, size_t len)
{
  while (**p == '/')
    (*p)++;
  if (!**p)
    return false;
  size_t n = strcspn(*p, "/");
  if (n >= len)
    n = len - 1; /* too long for any name: it will not match */
  memcpy(out, *p, n);
  out[n] = '\0';
  *p += strcspn(*p, "/");
  return true;
}

static bool exists_in(void (*lister)(const char *, struct names *), const char *arg,
                      const char *name)
{
  struct names n = {0};
  lister(arg, &n);
  bool r = names_has(&n, name);
  names_free(&n);
  return r;
}

static void list_clients_arg(const char *unused, struct names *out)
{
  list_clients(out);
}

/* Parse PATH into a node; -ENOENT if it names nothing. */
/* Who may see the view: the admin exports behind it are for admin uids only
 * (admin.uids with -c; root and the mounting user always), and so is the
 * view, whatever the mount options (allow_other lets others reach the
 * mount, never its content).  Every lookup, listing, open and readlink
 * goes through parse(), which asks this first.  With allow_other the
 * kernel may still answer a stat from its attribute cache for up to
 * KERNEL_TIMEOUT_S; data always needs an open. */
static __thread int64_t req_uid = -1; /* the caller of the request being served */

static bool caller_is_admin(void)
{
  if (req_uid < 0 || req_uid == 0 || req_uid == (int64_t)getuid())
    return true;
  for (size_t i = 0; cfg && i < cfg->n_admin_uids; i++)
    if (cfg->admin_uids[i] == req_uid)
      return true;
  return false;
}

/* The rest of a path inside a context (N->kind K_CTX): C is its first
 * component (a TB_PATH_MAX buffer), P what follows. */
static int parse_ctx_child(const char *p, char *c, struct node *n)
{
  if (strcmp(c, "disk") == 0)
    n->kind = K_DISK;
  else if (strcmp(c, "changes.txt") == 0 && n->ctx != CTX_VERSION)
    n->kind = K_CHANGES;
  else if (strcmp(c, "fs") == 0) {
    n->kind = K_FS;
    if (!next_comp(&p, c, TB_PATH_MAX))
      return 0;
    if (strlen(c) >= sizeof n->volume)
      return -ENOENT;
    snprintf(n->volume, sizeof n->volume, "%s", c);
    n->kind = K_VOL;
    n->inner = *p ? p : "/";
    return 0;
  } else
    return -ENOENT;
  return *p && strspn(p, "/") != strlen(p) ? -ENOTDIR : 0;
}

static int parse(const char *path, struct node *n)
{
  memset(n, 0, sizeof *n);
  if (!caller_is_admin())
    return -EACCES;
  const char *p = path;
  char c[TB_PATH_MAX];
  n->kind = K_ROOT;
  if (!next_comp(&p, c, sizeof c))
    return 0;
  if (strcmp(c, "clients") == 0) {
    n->kind = K_CLIENTS;
    if (!next_comp(&p, c, sizeof c))
      return 0;
    if (!tb_name_valid(c) || !exists_in(list_clients_arg, NULL, c))
      return -ENOENT;
    snprintf(n->name, sizeof n->name, "%s", c);
    n->kind = K_CTX;
    n->ctx = CTX_LIVE;
    snprintf(n->export, sizeof n->export, "%s@live", c);
    if (!next_comp(&p, c, sizeof c))
      return 0;
    if (strcmp(c, "disks") == 0) { /* clients/ID/disks/DISK: disk ID/DISK */
      struct names disks = {0};
      list_disks(n->name, &disks);
      bool any = disks.len > 0;
      names_free(&disks);
      if (!any)
        return -ENOENT;
      n->kind = K_DISKS;
      if (!next_comp(&p, c, sizeof c))
        return 0;
      char id[TB_NAME_MAX + 1];
      if (!tb_name_valid(c) || strlen(n->name) + 1 + strlen(c) > TB_NAME_MAX ||
          !exists_in(list_disks, n->name, c))
        return -ENOENT;
      snprintf(id, sizeof id, "%s/%s", n->name, c);
      snprintf(n->name, sizeof n->name, "%s", id);
      n->kind = K_CTX;
      snprintf(n->export, sizeof n->export, "%s@live", n->name);
      if (!next_comp(&p, c, sizeof c))
        return 0;
    }
    if (strcmp(c, "status.json") == 0) {
      n->kind = K_STATUS;
      return *p ? -ENOTDIR : 0;
    }
    if (strcmp(c, "sessions") == 0) {
      n->kind = K_SESSIONS;
      if (!next_comp(&p, c, sizeof c))
        return 0;
      if (!is_number(c) || !exists_in(list_sessions, n->name, c))
        return -ENOENT;
      snprintf(n->num, sizeof n->num, "%s", c);
      n->kind = K_CTX;
      n->ctx = CTX_SESSION;
      snprintf(n->export, sizeof n->export, "%s@session/%s", n->name, c);
      if (!next_comp(&p, c, sizeof c))
        return 0;
    }
    return parse_ctx_child(p, c, n);
  } else if (strcmp(c, "images") == 0) {
    n->kind = K_IMAGES;
    if (!next_comp(&p, c, sizeof c))
      return 0;
    if (!tb_name_valid(c) || !exists_in(list_images, NULL, c))
      return -ENOENT;
    snprintf(n->name, sizeof n->name, "%s", c);
    n->kind = K_IMAGE;
    if (!next_comp(&p, c, sizeof c))
      return 0;
    if (!is_number(c) || !exists_in(list_images, n->name, c))
      return -ENOENT;
    snprintf(n->num, sizeof n->num, "%s", c);
    n->kind = K_CTX;
    n->ctx = CTX_VERSION;
    snprintf(n->export, sizeof n->export, "%s@%s", n->name, c);
    if (!next_comp(&p, c, sizeof c))
      return 0;
    return parse_ctx_child(p, c, n);
  }
  return -ENOENT;
}

static struct source *node_source(const struct node *n)
{
  return source_get(n->export, n->ctx == CTX_LIVE);
}

/* ---- generated files: status.json and changes.txt ----------------------------------- */

struct gen {
  char key[TB_PATH_MAX];
  char *text;
  size_t len;
  int64_t made_ms;
};

static pthread_mutex_t gen_lock = PTHREAD_MUTEX_INITIALIZER;
static struct gen gens[256];
static size_t n_gens;

/* With --uri: the base version from the export's description, which the
 * plugin sets to "base IMAGE@N, ..." on ID@live and ID@session/N. */
static int find_base_remote(const struct node *n, char image[TB_NAME_MAX + 1], uint32_t *version)
{
  char export[TB_PATH_MAX];
  if (n->ctx == CTX_SESSION)
    snprintf(export, sizeof export, "%s@session/%s", n->name, n->num);
  else
    snprintf(export, sizeof export, "%s@live", n->name);
  struct nbd_handle *h = nbd_create();
  int r = -1;
  char *desc = NULL;
  /* Option mode, so EXPORT replaces the URI's export name; NBD_OPT_INFO is
   * enough to read the description. */
  if (h && nbd_set_opt_mode(h, true) == 0 && nbd_set_full_info(h, true) == 0 &&
      nbd_connect_uri(h, opts.uri) == 0 && nbd_set_export_name(h, export) == 0 &&
      nbd_opt_info(h) == 0)
    desc = nbd_get_export_description(h);
  char img[TB_NAME_MAX + 1];
  unsigned v;
  if (desc && sscanf(desc, "base %64[A-Za-z0-9._-]@%u", img, &v) == 2 && tb_name_valid(img)) {
    snprintf(image, TB_NAME_MAX + 1, "%s", img);
    *version = v;
    r = 0;
  } else {
    tb_error("the appliance does not say which version %s is based on%s%s", export,
             h && !desc ? ": " : "", h && !desc && nbd_get_error() ? nbd_get_error() : "");
  }
  free(desc);
  if (h)
    nbd_close(h);
  return r;
}

/* The base version of a client's overlay (live or retained session N), from
 * the overlay header in the state directory (with -c), or from the appliance
 * (with --uri). */
static int find_base(const struct node *n, char image[TB_NAME_MAX + 1], uint32_t *version)
{
  if (!cfg)
    return find_base_remote(n, image, version);
  char path[TB_PATH_MAX];
  int r = n->ctx == CTX_SESSION
              ? tb_clientdir_session(cfg->state_dir, n->name, strtoull(n->num, NULL, 10), path,
                                     sizeof path)
              : tb_clientdir_path(cfg->state_dir, n->name, TB_CF_OVERLAY, path, sizeof path);
  struct tb_overlay_info info;
  if (r == 0)
    r = tb_overlay_read_info(path, &info);
  if (r < 0)
    return -1;
  snprintf(image, TB_NAME_MAX + 1, "%s", info.base.image);
  *version = info.base.version;
  return 0;
}

struct text {
  char *buf;
  size_t len;
  FILE *f;
};

/* A guest path as changes.txt prints it: the tb_guest_name() encoding
 * (util.h), so no control character (a newline, a terminal escape) and no
 * byte that is not UTF-8 reaches a terminal or a line-based reader raw. */
static void change_path_escaped(FILE *f, const char *path)
{
  char *enc = tb_guest_name(path);
  fputs(enc ? enc : "(out of memory)", f);
  free(enc);
}

static int change_line(void *ctx, enum tb_change kind, const char *path, const struct tb_istat *st)
{
  FILE *f = ctx;
  fprintf(f, "%-8s %-8s %12" PRIu64 " ", tb_change_name(kind), tb_file_type_name(st->type),
          st->size);
  change_path_escaped(f, path);
  fputc('\n', f);
  return 0;
}

static void make_changes(const struct node *n, FILE *f)
{
  char image[TB_NAME_MAX + 1], when[32], base_export[TB_PATH_MAX];
  uint32_t version;
  tb_iso_time(tb_now_ms(), when);
  fprintf(f, "# tabula changes of %s%s%s against its base version, %s\n", n->name,
          n->ctx == CTX_SESSION ? " session " : " (live)", n->ctx == CTX_SESSION ? n->num : "",
          when);
  if (find_base(n, image, &version) < 0) {
    fprintf(f, "# not available: %s\n", tb_errmsg());
    return;
  }
  snprintf(base_export, sizeof base_export, "%s@%u", image, version);
  struct source *bs = source_get(base_export, false);
  struct source *ls = node_source(n);
  struct snap *b = bs ? source_snap(bs) : NULL;
  struct snap *l = ls ? source_snap(ls) : NULL;
  struct tb_ranges dirty = {0};
  bool have_dirty = false;
  if (n->ctx == CTX_LIVE) {
    char ovl[TB_PATH_MAX];
    snprintf(ovl, sizeof ovl, "%s@overlay", n->name);
    struct source *os = source_get(ovl, true);
    struct tb_disk *od = os ? source_disk(os) : NULL;
    have_dirty = od && tb_disk_dirty_ranges(od, &dirty) == 0;
    tb_disk_unref(od);
  }
  fprintf(f, "# base %s; kind type size path (VOLUME/path); ", base_export);
  if (have_dirty)
    fprintf(f, "%" PRIu64 " dirty bytes in %zu ranges\n", tb_ranges_bytes(&dirty), dirty.n);
  else
    fprintf(f, "compared by metadata\n");
  if (!b || !l) {
    fprintf(f, "# not available: cannot open %s\n", !b ? base_export : n->export);
  } else if (have_dirty && dirty.n > 0) {
    /* Through the base version's index: only what the dirty map touches.
     * lib/inspect keeps it (built at the first read, a failed build not
     * retried: each would cost its whole budget before the full diff). */
    struct tb_inspect_index *idx = tb_inspect_index_get(base_export, b->ins, NULL);
    if (tb_inspect_diff_indexed(idx, b->ins, l->ins, &dirty, change_line, f, NULL) < 0)
      fprintf(f, "# incomplete: %s\n", tb_errmsg());
    tb_inspect_index_free(idx);
  } else if (!have_dirty && tb_inspect_diff(b->ins, l->ins, NULL, change_line, f) < 0) {
    fprintf(f, "# incomplete: %s\n", tb_errmsg());
  }
  tb_ranges_free(&dirty);
  snap_put(b);
  snap_put(l);
}

static void json_add_file(json_t *o, const char *key, const char *path)
{
  size_t len;
  char *text = tb_read_file(path, 1 << 20, &len);
  json_t *v = text ? json_loadb(text, len, 0, NULL) : NULL;
  if (v)
    json_object_set_new(o, key, v);
  free(text);
}

static void make_status(const struct node *n, FILE *f)
{
  json_t *o = json_object();
  json_object_set_new(o, "client", json_string(n->name));
  struct source *ls = node_source(n);
  struct tb_disk *d = ls ? source_disk(ls) : NULL;
  if (d)
    json_object_set_new(o, "size", json_integer((json_int_t)tb_disk_size(d)));
  else
    json_object_set_new(o, "error", json_string(ls ? ls->error : "no source"));
  tb_disk_unref(d);
  char ovl[TB_PATH_MAX];
  snprintf(ovl, sizeof ovl, "%s@overlay", n->name);
  struct source *os = source_get(ovl, true);
  struct tb_disk *od = os ? source_disk(os) : NULL;
  struct tb_ranges dirty;
  if (od && tb_disk_dirty_ranges(od, &dirty) == 0) {
    json_object_set_new(o, "dirty_bytes", json_integer((json_int_t)tb_ranges_bytes(&dirty)));
    json_object_set_new(o, "dirty_ranges", json_integer((json_int_t)dirty.n));
    tb_ranges_free(&dirty);
  }
  tb_disk_unref(od);
  if (cfg) {
    const struct tb_client_conf *c = tb_config_client(cfg, n->name);
    if (c) {
      json_object_set_new(o, "image", json_string(c->image));
      json_object_set_new(o, "policy",
                          json_string(c->policy == TB_POLICY_PERSIST ? "persist" : "rollback"));
    }
    json_object_set_new(o, "in_session", json_boolean(tb_client_locked(cfg->state_dir, n->name)));
    char image[TB_NAME_MAX + 1];
    uint32_t version;
    if (find_base(n, image, &version) == 0) {
      char b[TB_PATH_MAX];
      snprintf(b, sizeof b, "%s@%u", image, version);
      json_object_set_new(o, "base", json_string(b));
    }
    char path[TB_PATH_MAX];
    if (tb_clientdir_path(cfg->state_dir, n->name, TB_CF_SESSION_JSON, path, sizeof path) == 0)
      json_add_file(o, "session", path);
    /* The last few events of the client's journal. */
    json_t *events = json_array();
    size_t len;
    char *text = tb_clientdir_path(cfg->state_dir, n->name, TB_CF_EVENTS, path, sizeof path) == 0
                     ? tb_read_file(path, 16 << 20, &len)
                     : NULL;
    if (text) {
      int lines = 0;
      char *p = text + len;
      while (p > text && lines <= 5) {
        p--;
        if (*p == '\n' && p[1])
          lines++;
      }
      char *save, *line = strtok_r(lines > 5 ? p + 1 : text, "\n", &save);
      for (; line; line = strtok_r(NULL, "\n", &save)) {
        json_t *ev = json_loads(line, 0, NULL);
        if (ev)
          json_array_append_new(events, ev);
      }
      free(text);
    }
    json_object_set_new(o, "last_events", events);
  }
  char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  if (s)
    fprintf(f, "%s\n", s);
  free(s);
  json_decref(o);
}

/* The text of a generated file, made at most every CACHE_MS (malloc'd copy). */
static char *gen_get(const struct node *n, const char *path, size_t *len, bool fresh_only)
{
  pthread_mutex_lock(&gen_lock);
  struct gen *g = NULL;
  for (size_t i = 0; i < n_gens && !g; i++)
    if (strcmp(gens[i].key, path) == 0)
      g = &gens[i];
  int64_t now = tb_now_ms();
  if (g && (now - g->made_ms < CACHE_MS || fresh_only)) {
    char *copy = malloc(g->len + 1);
    if (copy)
      memcpy(copy, g->text, g->len + 1);
    *len = g->len;
    pthread_mutex_unlock(&gen_lock);
    return copy;
  }
  pthread_mutex_unlock(&gen_lock);
  if (fresh_only) {
    *len = 0;
    return NULL;
  }
  struct text t = {0};
  t.f = open_memstream(&t.buf, &t.len);
  if (!t.f)
    return NULL;
  if (n->kind == K_STATUS)
    make_status(n, t.f);
  else
    make_changes(n, t.f);
  fclose(t.f);
  pthread_mutex_lock(&gen_lock);
  g = NULL;
  for (size_t i = 0; i < n_gens && !g; i++)
    if (strcmp(gens[i].key, path) == 0)
      g = &gens[i];
  if (!g && n_gens < sizeof gens / sizeof gens[0])
    g = &gens[n_gens++];
  if (g) {
    free(g->text);
    snprintf(g->key, sizeof g->key, "%s", path);
    g->text = strdup(t.buf ? t.buf : "");
    g->len = g->text ? t.len : 0;
    g->made_ms = tb_now_ms();
  }
  pthread_mutex_unlock(&gen_lock);
  *len = t.len;
  return t.buf;
}

/* ---- FUSE operations ------------------------------------------------------------------ */

/* A directory's st_blksize: glibc's opendir sizes its getdents buffer by
 * it (32 KiB to 1 MiB) and the kernel asks FUSE for a listing as large as
 * that buffer (up to max_pages, 1 MiB), so a 20,000-entry directory is 4
 * READDIRPLUS round trips instead of 100. */
#define DIR_BLKSIZE (1 << 20)

static void dir_stat(struct stat *st)
{
  st->st_mode = S_IFDIR | 0555;
  st->st_nlink = 2;
  st->st_blksize = DIR_BLKSIZE;
  st->st_mtime = st->st_ctime = st->st_atime = mount_time;
}

/* Inode numbers (use_ino).  A guest file's is made of its source, its
 * volume and its inode number in the guest, so the hard links of a volume
 * share one and no two volumes, snapshots or images collide (diff -r
 * takes equal inode numbers for equal files): bits 63-51 the source + 1,
 * 50-46 the volume, 45-0 the guest's number.  The view's own directories
 * and files get a hash of their path, with the source bits 0. */
static uint64_t guest_ino(const struct source *s, int vol, uint64_t inum)
{
  return (uint64_t)(s->idx + 1) << 51 | (uint64_t)(vol & 31) << 46 | (inum & ((1ull << 46) - 1));
}

static uint64_t path_ino(const char *path)
{
  uint64_t h = 1469598103934665603ull;
  for (; *path; path++) {
    h ^= (unsigned char)*path;
    h *= 1099511628211ull;
  }
  h &= (1ull << 51) - 1;
  return h < 2 ? h + 2 : h;
}

/* The S_IF* type of IS. */
static mode_t istat_type(const struct tb_istat *is)
{
  switch (is->type) {
  case TB_FT_DIR:
    return S_IFDIR;
  case TB_FT_LNK:
    return S_IFLNK;
  case TB_FT_CHR:
    return S_IFCHR;
  case TB_FT_BLK:
    return S_IFBLK;
  case TB_FT_FIFO:
    return S_IFIFO;
  case TB_FT_SOCK:
    return S_IFSOCK;
  default:
    return S_IFREG;
  }
}

static void istat_to_stat(const struct tb_istat *is, struct stat *st, uint64_t ino)
{
  memset(st, 0, sizeof *st);
  mode_t type = istat_type(is);
  mode_t perm = is->mode;
  if (perm == 0) /* the guest has no Unix modes (NTFS, FAT) */
    perm = type == S_IFDIR ? 0555 : 0444;
  st->st_mode = type | (perm & 07777);
  st->st_nlink = is->nlink ? is->nlink : 1;
  st->st_uid = is->uid;
  st->st_gid = is->gid;
  st->st_size = (off_t)(is->size > INT64_MAX ? INT64_MAX : is->size);
  st->st_blocks = (blkcnt_t)((is->size + 511) / 512);
  st->st_blksize = type == S_IFDIR ? DIR_BLKSIZE : 4096;
  st->st_ino = ino;
  if (type == S_IFCHR || type == S_IFBLK)
    st->st_rdev = makedev(is->rdev_major, is->rdev_minor);
  st->st_mtim.tv_sec = is->mtime;
  st->st_mtim.tv_nsec = is->mtime_ns;
  st->st_atim.tv_sec = is->atime;
  st->st_atim.tv_nsec = is->atime_ns;
  st->st_ctim.tv_sec = is->ctime;
  st->st_ctim.tv_nsec = is->ctime_ns;
}

static int errno_or_eio(void)
{
  return errno == ENOENT || errno == ENOTDIR || errno == EISDIR || errno == ENAMETOOLONG ||
                 errno == EINVAL
             ? -errno
             : -EIO;
}

static int vol_index(struct snap *s, const char *volume)
{
  return tb_inspect_find_volume(s->ins, volume);
}

/* How long the kernel may keep a node's entry and attributes (and its
 * absence): the inside of an immutable export (a version, a retained
 * session: their disk, volumes and files) for as long as it likes, the
 * rest KERNEL_TIMEOUT_S.  Not with allow_other: the kernel answers a stat
 * from its cache without asking the view, so another user could see what
 * an admin looked up; there, everything keeps KERNEL_TIMEOUT_S. */
static bool shared_mount; /* allow_other or allow_root */

static double node_timeout(const struct node *n)
{
  bool inside = n->kind == K_DISK || n->kind == K_FS || n->kind == K_VOL;
  return inside && n->ctx != CTX_LIVE && !shared_mount ? IMMUTABLE_TIMEOUT_S : KERNEL_TIMEOUT_S;
}

static int getattr_node(const char *path, struct stat *st, double *timeout)
{
  struct node n;
  *timeout = KERNEL_TIMEOUT_S;
  int r = parse(path, &n);
  if (r < 0)
    return r;
  *timeout = node_timeout(&n);
  memset(st, 0, sizeof *st);
  switch (n.kind) {
  case K_ROOT:
  case K_CLIENTS:
  case K_IMAGES:
  case K_IMAGE:
  case K_CTX:
  case K_SESSIONS:
  case K_DISKS:
  case K_FS:
    dir_stat(st);
    return 0;
  case K_STATUS:
  case K_CHANGES: {
    /* Size of the last text made (0 before the first open): reads are
     * direct, so readers see the whole text whatever the size says. */
    size_t len = 0;
    free(gen_get(&n, path, &len, true));
    st->st_mode = S_IFREG | 0444;
    st->st_nlink = 1;
    st->st_size = (off_t)len;
    st->st_mtime = st->st_ctime = st->st_atime = time(NULL);
    return 0;
  }
  case K_DISK: {
    struct source *s = node_source(&n);
    struct tb_disk *d = s ? source_disk(s) : NULL;
    if (!d)
      return -EIO;
    st->st_mode = S_IFREG | 0444;
    st->st_nlink = 1;
    st->st_size = (off_t)tb_disk_size(d);
    st->st_blocks = st->st_size / 512;
    st->st_mtime = st->st_ctime = st->st_atime = mount_time;
    tb_disk_unref(d);
    return 0;
  }
  case K_VOL: {
    struct source *s = node_source(&n);
    struct snap *sn = s ? source_snap(s) : NULL;
    if (!sn)
      return -EIO;
    int vi = vol_index(sn, n.volume);
    struct tb_istat is;
    r = vi < 0                                                         ? -ENOENT
        : stat_get(sn, vi, n.inner, &is)                               ? 0
        : stat_fill(sn, vi, n.inner) && stat_get(sn, vi, n.inner, &is) ? 0
        : tb_inspect_stat(sn->ins, (size_t)vi, n.inner, &is) == 0      ? 0
                                                                       : errno_or_eio();
    snap_put(sn);
    if (r == 0)
      istat_to_stat(&is, st, guest_ino(s, vi, is.inum));
    return r;
  }
  }
  return -ENOENT;
}

static int tf_getattr(const char *path, struct stat *st, double *timeout)
{
  int r = getattr_node(path, st, timeout);
  if (r == 0 && st->st_ino == 0)
    st->st_ino = path_ino(path);
  return r;
}

/* Directory listings.  A pass over a directory takes the whole listing
 * once (a guest directory is one request to its snapshot's worker): at
 * opendir into the handle, or without OPENDIR at its first readdir (see
 * "Listings without OPENDIR" below); each readdir then hands the kernel
 * the entries from its offset on, with
 * offsets, so libfuse passes each entry's attributes along (readdirplus:
 * a `find -ls` or `ls -l` needs no lookup per file).  Without offsets
 * libfuse would take the listing in one go and drop the attributes. */
struct listed {
  const char *name;
  const struct tb_istat *is; /* its attributes, NULL if not known */
};
TB_VECTOR(listed_vector, struct listed);
TB_VECTOR(owned_vector, void *);

/* A guest directory's entries point into its snapshot's stat cache, which
 * the listing holds (snap): no copy of 20,000 names and stats per opendir. */
struct listing {
  atomic_int refs;
  double timeout; /* of its entries (node_timeout) */
  size_t plus_n;  /* entries from here on carry attributes only if directories */
  struct listed_vector entries;
  struct owned_vector owned; /* chunks of the names (and stats) copied into the listing */
  char *chunk_at;            /* the free end of the last chunk, */
  size_t chunk_left;         /* that many bytes */
  bool partial;              /* some entries have only their type (names first) */
  struct snap *snap;         /* held, for the entries' attributes; NULL: none of them has any */
  const struct source *source;
  int vol;
};

static void snap_put(struct snap *s);

static void listing_put(struct listing *l)
{
  if (!l || atomic_fetch_sub(&l->refs, 1) != 1)
    return;
  for (size_t i = 0; i < l->owned.len; i++)
    free(l->owned.ptr[i]);
  tb_vector_free(&l->owned);
  tb_vector_free(&l->entries);
  snap_put(l->snap);
  free(l);
}

/* N bytes of L's own, freed with it: a big directory's names-first entries
 * (fill_cb) are 20,000 copies, one malloc each was a millisecond of a
 * `find`.  NULL when out of memory. */
#define LISTING_CHUNK (64u << 10)
static void *listing_alloc(struct listing *l, size_t n)
{
  n = (n + 15) & ~(size_t)15;
  if (n > l->chunk_left) {
    size_t cap = n > LISTING_CHUNK ? n : LISTING_CHUNK;
    char *c = malloc(cap);
    if (!c || tb_vector_push(&l->owned, c) == -1) {
      free(c);
      return NULL;
    }
    l->chunk_at = c;
    l->chunk_left = cap;
  }
  void *p = l->chunk_at;
  l->chunk_at += n;
  l->chunk_left -= n;
  return p;
}

/* Add NAME (and its attributes IS, if known) to L, copied; non-zero when
 * out of memory. */
static int listing_add(struct listing *l, const char *name, const struct tb_istat *is)
{
  size_t nl = strlen(name) + 1;
  struct tb_istat *copy = listing_alloc(l, is ? sizeof *copy + nl : nl);
  if (!copy)
    return 1;
  struct listed e = {.name = (char *)copy};
  if (is) {
    *copy = *is;
    e.is = copy;
    e.name = (char *)(copy + 1);
  }
  memcpy((char *)e.name, name, nl);
  return tb_vector_push(&l->entries, e) == -1;
}

/* Which entries of a guest directory's listing carry their attributes.
 * Each one the kernel gets with its attributes (readdirplus) becomes an
 * inode and a dentry in the kernel: about 5 us of the lister's CPU, which
 * for a 20,000-entry directory was most of a `find`'s time (find, ls
 * without -l, a shell's globbing never stat the files).  Without them a
 * stat of the entry is a lookup round trip instead (answered from the
 * snapshot's stat cache).  So: every entry of a directory of up to
 * PLUS_FIRST entries; of a bigger one, at the first listing of that
 * directory in the snapshot, only the subdirectories (a walker opens
 * those), the others as names and types; and everything from its second
 * listing on (a directory listed again is being walked again: `find -ls`
 * after `find`).  A listing without every attribute is not left in the
 * kernel's directory cache (listing_keepable), so its next listing comes
 * here and gets them.  The cost falls on a first `ls -l` of a big
 * directory: a lookup per file, which for a 3,000-entry directory was lost
 * in the noise of its two GETXATTRs per file (250-370 ms either way).
 * Giving the first PLUS_FIRST files their attributes too cost a `find` of
 * a 20,000-entry ext4 directory 4 ms of its 24 (the kernel's inodes for
 * them), and 1024 instead of 4096 had taken an NTFS `find` over 5,000
 * entries from 45 to 27 ms. */
#define PLUS_FIRST TB_INSPECT_LAZY_MIN

static void listing_plan(struct listing *l, struct snap *sn, int vol, const char *dir)
{
  l->plus_n = l->entries.len;
  if (l->entries.len <= PLUS_FIRST + 2) /* with "." and ".." */
    return;
  size_t dl = strlen(dir);
  pthread_mutex_lock(&sn->stat_mu);
  struct big_dir *b = sn->big_dirs;
  while (b && (b->vol != vol || strcmp(b->path, dir) != 0))
    b = b->next;
  if (!b && (b = malloc(sizeof *b + dl + 1))) {
    b->vol = vol;
    b->partial = false;
    memcpy(b->path, dir, dl + 1);
    b->next = sn->big_dirs;
    sn->big_dirs = b;
    l->plus_n = 0; /* subdirectories only (readdir_reply) */
  }
  if (b && l->partial)
    b->partial = true;
  pthread_mutex_unlock(&sn->stat_mu);
}

/* Each entry with its attributes, kept for the lookups that follow; an
 * entry listed names first (tb_inspect_readdir_lazy: a big directory's
 * first listing, which gives only subdirectories their attributes anyway)
 * only in the listing, its lookup asks the library. */
static int fill_cb(void *ctx, const char *name, const struct tb_istat *is)
{
  struct fill_ctx *fc = ctx;
  if (is->partial) {
    fc->listing->partial = true;
    if (listing_add(fc->listing, name, is) == 0)
      return 0;
    fc->full = true;
    return 1;
  }
  const struct stat_entry *se = stat_put(fc->snap, fc->vol, fc->dir, fc->dl, name, is);
  if (se ? tb_vector_push(&fc->listing->entries,
                          ((struct listed){.name = se->path + se->name, .is = &se->is})) == -1
         : listing_add(fc->listing, name, is) != 0) {
    fc->full = true;
    return 1;
  }
  return 0;
}

static void fill_names(struct listing *l, const struct names *names)
{
  for (size_t i = 0; i < names->len; i++)
    listing_add(l, names->ptr[i], NULL);
}

/* The entries of directory PATH into L. */
static int list_dir(const char *path, struct listing *l)
{
  struct node n;
  int r = parse(path, &n);
  if (r < 0)
    return r;
  struct names names = {0};
  l->timeout = node_timeout(&n);
  listing_add(l, ".", NULL);
  listing_add(l, "..", NULL);
  switch (n.kind) {
  case K_ROOT:
    listing_add(l, "clients", NULL);
    listing_add(l, "images", NULL);
    return 0;
  case K_CLIENTS:
    list_clients(&names);
    break;
  case K_IMAGES:
    list_images(NULL, &names);
    break;
  case K_IMAGE:
    list_images(n.name, &names);
    break;
  case K_SESSIONS:
    list_sessions(n.name, &names);
    break;
  case K_DISKS:
    list_disks(n.name, &names);
    break;
  case K_CTX:
    listing_add(l, "disk", NULL);
    listing_add(l, "fs", NULL);
    if (n.ctx != CTX_VERSION)
      listing_add(l, "changes.txt", NULL);
    if (n.ctx == CTX_LIVE) {
      listing_add(l, "status.json", NULL);
      listing_add(l, "sessions", NULL);
      if (!strchr(n.name, '/')) {
        list_disks(n.name, &names);
        if (names.len > 0)
          listing_add(l, "disks", NULL);
        names_free(&names);
      }
    }
    return 0;
  case K_FS: {
    struct source *s = node_source(&n);
    struct snap *sn = s ? source_snap(s) : NULL;
    if (!sn)
      return -EIO;
    for (size_t i = 0; i < tb_inspect_n_volumes(sn->ins); i++)
      listing_add(l, tb_inspect_volume(sn->ins, i)->name, NULL);
    snap_put(sn);
    return 0;
  }
  case K_VOL: {
    struct source *s = node_source(&n);
    struct snap *sn = s ? source_snap(s) : NULL;
    if (!sn)
      return -EIO;
    int vi = vol_index(sn, n.volume);
    struct fill_ctx fc = {l, s, vi, sn, n.inner, strlen(n.inner), false};
    l->snap = snap_ref(sn);
    l->source = s;
    l->vol = vi;
    r = vi < 0                                                                     ? -ENOENT
        : tb_inspect_readdir_lazy(sn->ins, (size_t)vi, n.inner, fill_cb, &fc) == 0 ? 0
        : fc.full                                                                  ? -ENOMEM
                                                                                   : errno_or_eio();
    if (r == 0)
      listing_plan(l, sn, vi, n.inner);
    snap_put(sn);
    return r;
  }
  default:
    return -ENOTDIR;
  }
  fill_names(l, &names);
  names_free(&names);
  return 0;
}

/* A new listing of directory PATH (one reference), or NULL with *ERR. */
static struct listing *listing_make(const char *path, int *err)
{
  struct listing *l = calloc(1, sizeof *l);
  if (!l) {
    *err = ENOMEM;
    return NULL;
  }
  atomic_init(&l->refs, 1);
  l->plus_n = SIZE_MAX;
  int r = list_dir(path, l);
  if (r < 0) {
    listing_put(l);
    *err = -r;
    return NULL;
  }
  return l;
}

/* May the kernel keep listing L in its directory cache?  An immutable
 * directory's complete listing, yes; a live one, the view's own, or a big
 * directory's first listing (not every entry's attributes), no. */
static bool listing_keepable(const struct listing *l)
{
  return l->timeout > KERNEL_TIMEOUT_S && l->plus_n >= l->entries.len && !l->partial;
}

static int tf_opendir(const char *path, struct fuse_file_info *fi)
{
  int err;
  struct listing *l = listing_make(path, &err);
  if (!l)
    return -err;
  fi->fh = (uint64_t)(uintptr_t)l;
  return 0;
}

static int tf_releasedir(const char *path, struct fuse_file_info *fi)
{
  listing_put((struct listing *)(uintptr_t)fi->fh);
  return 0;
}

/* Listings without OPENDIR.  Where the kernel has FUSE's zero-message
 * opendir (FUSE_CAP_NO_OPENDIR_SUPPORT), the first OPENDIR is answered
 * ENOSYS and the kernel sends no OPENDIR or RELEASEDIR again: a directory
 * costs its READDIRPLUS requests only (an NTFS `find` over 43 directories:
 * 170 requests, 84 without).  A pass over a directory then has no handle:
 * its listing is made at offset 0 and kept here by path (PASSES_MAX, the
 * least recently used dropped) until the pass reads its end; a later
 * offset whose listing was dropped makes it again (the same snapshot: the
 * same entries in the same order).  Without OPENDIR the kernel keeps every
 * listing in its directory cache (FOPEN_CACHE_DIR), so the end of a pass
 * over a listing it may not keep (listing_keepable) is followed by an
 * invalidation of the directory's cached pages and attributes, sent by the
 * notifier thread (a request handler must not send one for the directory
 * it answers): the next pass comes to the view as with OPENDIR.  Once per
 * pass, at its end: sent after every reply it raced the kernel's filling
 * of its cache and left the directory uncached for good.  (The kernel
 * serves only a complete cache, so a pass that stops early leaves nothing
 * it would serve.)
 * TB_FUSE_OPENDIR set in the environment keeps OPENDIR (for comparison). */
#define PASSES_MAX 64
static bool no_opendir; /* ll_init */
static struct fuse_session *session;
static pthread_mutex_t passes_lock = PTHREAD_MUTEX_INITIALIZER;
static struct pass {
  char *path;
  struct listing *l;
  uint64_t tick;
} passes[PASSES_MAX];
static uint64_t passes_tick;

/* The listing of PATH for a pass at offset OFF (a reference), or NULL
 * with *ERR. */
static struct listing *pass_listing(const char *path, off_t off, int *err)
{
  pthread_mutex_lock(&passes_lock);
  struct listing *l = NULL;
  for (size_t i = 0; off > 0 && !l && i < PASSES_MAX; i++)
    if (passes[i].path && strcmp(passes[i].path, path) == 0) {
      l = passes[i].l;
      atomic_fetch_add(&l->refs, 1);
      passes[i].tick = ++passes_tick;
    }
  pthread_mutex_unlock(&passes_lock);
  if (l || !(l = listing_make(path, err)))
    return l;
  char *copy = strdup(path);
  struct listing *old = NULL;
  pthread_mutex_lock(&passes_lock);
  size_t slot = 0;
  for (size_t i = 0; i < PASSES_MAX; i++) {
    if (passes[i].path && strcmp(passes[i].path, path) == 0) {
      slot = i;
      break;
    }
    if (!passes[i].path || (passes[slot].path && passes[i].tick < passes[slot].tick))
      slot = i;
  }
  if (copy) {
    free(passes[slot].path);
    old = passes[slot].l;
    atomic_fetch_add(&l->refs, 1);
    passes[slot] = (struct pass){copy, l, ++passes_tick};
  }
  pthread_mutex_unlock(&passes_lock);
  listing_put(old);
  return l;
}

/* The pass over PATH read the end of listing L: drop it. */
static void pass_end(const char *path, struct listing *l)
{
  struct listing *old = NULL;
  pthread_mutex_lock(&passes_lock);
  for (size_t i = 0; i < PASSES_MAX && !old; i++)
    if (passes[i].l == l && strcmp(passes[i].path, path) == 0) {
      old = l;
      free(passes[i].path);
      passes[i] = (struct pass){0};
    }
  pthread_mutex_unlock(&passes_lock);
  listing_put(old);
}

TB_VECTOR(ino_vector, fuse_ino_t);
static pthread_mutex_t inval_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t inval_wake = PTHREAD_COND_INITIALIZER;
static struct ino_vector inval_queue; /* under inval_lock */
static bool inval_started, inval_stop;
static pthread_t inval_thread;

static void *inval_main(void *arg)
{
  pthread_mutex_lock(&inval_lock);
  for (;;) {
    while (inval_queue.len == 0 && !inval_stop)
      pthread_cond_wait(&inval_wake, &inval_lock);
    if (inval_queue.len == 0)
      break;
    struct ino_vector q = inval_queue;
    inval_queue = (struct ino_vector){0};
    pthread_mutex_unlock(&inval_lock);
    for (size_t i = 0; i < q.len; i++)
      fuse_lowlevel_notify_inval_inode(session, q.ptr[i], 0, 0); /* ENOENT: forgotten */
    tb_vector_free(&q);
    pthread_mutex_lock(&inval_lock);
  }
  pthread_mutex_unlock(&inval_lock);
  return NULL;
}

/* Have the kernel drop its cached listing (and attributes) of node ID. */
static void inval_dir(fuse_ino_t id)
{
  pthread_mutex_lock(&inval_lock);
  if (!inval_started && !inval_stop)
    inval_started = pthread_create(&inval_thread, NULL, inval_main, NULL) == 0;
  bool queued = false;
  for (size_t i = 0; i < inval_queue.len && !queued; i++)
    queued = inval_queue.ptr[i] == id;
  if (inval_started && !queued && tb_vector_push(&inval_queue, id) == 0)
    pthread_cond_signal(&inval_wake);
  pthread_mutex_unlock(&inval_lock);
}

/* At unmount: the notifier sends what is queued and ends. */
static void inval_end(void)
{
  pthread_mutex_lock(&inval_lock);
  inval_stop = true;
  bool started = inval_started;
  pthread_cond_signal(&inval_wake);
  pthread_mutex_unlock(&inval_lock);
  if (started)
    pthread_join(inval_thread, NULL);
  tb_vector_free(&inval_queue);
}

static int tf_readlink(const char *path, char *buf, size_t size)
{
  struct node n;
  int r = parse(path, &n);
  if (r < 0)
    return r;
  if (n.kind != K_VOL)
    return -EINVAL;
  struct source *s = node_source(&n);
  struct snap *sn = s ? source_snap(s) : NULL;
  if (!sn)
    return -EIO;
  int vi = vol_index(sn, n.volume);
  r = vi < 0                                                              ? -ENOENT
      : tb_inspect_readlink(sn->ins, (size_t)vi, n.inner, buf, size) == 0 ? 0
                                                                          : errno_or_eio();
  snap_put(sn);
  return r;
}

/* Extended attributes of a guest file (lib/inspect.h: ext xattrs, NTFS
 * streams as user.NAME); the view's own nodes have none.  A listed file
 * whose stat says it has none is answered from the stat cache: `ls -l`
 * asks two xattrs of every file (security.selinux, system.posix_acl_access),
 * and each trip to the worker is two thread hand-offs (a 20,000-entry
 * directory: most of the 2.3 s its first `ls -l` took). */
static int node_xattrs(const char *path, struct tb_xattrs *x)
{
  memset(x, 0, sizeof *x);
  struct node n;
  int r = parse(path, &n);
  if (r < 0 || n.kind != K_VOL)
    return r;
  struct source *s = node_source(&n);
  struct snap *sn = s ? source_snap(s) : NULL;
  if (!sn)
    return -EIO;
  int vi = vol_index(sn, n.volume);
  struct tb_istat is;
  r = vi < 0                                                    ? -ENOENT
      : stat_get(sn, vi, n.inner, &is) && is.no_xattrs          ? 0
      : tb_inspect_xattrs(sn->ins, (size_t)vi, n.inner, x) == 0 ? 0
                                                                : errno_or_eio();
  snap_put(sn);
  return r;
}

static int tf_getxattr(const char *path, const char *name, char *value, size_t size)
{
  struct tb_xattrs x;
  int r = node_xattrs(path, &x);
  if (r == 0) {
    r = -ENODATA;
    for (size_t i = 0; i < x.n; i++)
      if (strcmp(x.v[i].name, name) == 0) {
        r = size == 0 ? (int)x.v[i].len : size < x.v[i].len ? -ERANGE : (int)x.v[i].len;
        if (size >= x.v[i].len && x.v[i].len)
          memcpy(value, x.v[i].value, x.v[i].len);
        break;
      }
  }
  tb_xattrs_free(&x);
  return r;
}

static int tf_listxattr(const char *path, char *list, size_t size)
{
  struct tb_xattrs x;
  int r = node_xattrs(path, &x);
  size_t len = 0;
  for (size_t i = 0; r == 0 && i < x.n; i++) {
    size_t n = strlen(x.v[i].name) + 1;
    if (size && len + n > size)
      r = -ERANGE;
    else if (size)
      memcpy(list + len, x.v[i].name, n);
    len += n;
  }
  tb_xattrs_free(&x);
  return r < 0 ? r : (int)len;
}

/* What an open file reads. */
struct handle {
  enum kind kind;
  struct tb_disk *disk;  /* K_DISK */
  struct snap *snap;     /* K_VOL */
  struct tb_ifile *file; /* K_VOL */
  char *text;            /* K_STATUS, K_CHANGES */
  size_t len;
};

static int tf_open(const char *path, struct fuse_file_info *fi)
{
  if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & (O_TRUNC | O_CREAT)))
    return -EROFS;
  struct node n;
  int r = parse(path, &n);
  if (r < 0)
    return r;
  struct handle *h = calloc(1, sizeof *h);
  if (!h)
    return -ENOMEM;
  h->kind = n.kind;
  struct source *s = NULL;
  switch (n.kind) {
  case K_DISK:
    s = node_source(&n);
    h->disk = s ? source_disk(s) : NULL;
    r = h->disk ? 0 : -EIO;
    fi->keep_cache = n.ctx != CTX_LIVE;
    break;
  case K_STATUS:
  case K_CHANGES:
    h->text = gen_get(&n, path, &h->len, false);
    r = h->text ? 0 : -EIO;
    fi->direct_io = 1;
    break;
  case K_VOL: {
    s = node_source(&n);
    h->snap = s ? source_snap(s) : NULL;
    int vi = h->snap ? vol_index(h->snap, n.volume) : -1;
    if (!h->snap)
      r = -EIO;
    else if (vi < 0)
      r = -ENOENT;
    else if (!(h->file = tb_inspect_open_file(h->snap->ins, (size_t)vi, n.inner)))
      r = errno_or_eio();
    fi->keep_cache = n.ctx != CTX_LIVE;
    break;
  }
  default:
    r = -EISDIR;
  }
  if (r < 0) {
    snap_put(h->snap);
    tb_disk_unref(h->disk);
    free(h->text);
    free(h);
    return r;
  }
  fi->fh = (uint64_t)(uintptr_t)h;
  return 0;
}

static int tf_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
  struct handle *h = (struct handle *)(uintptr_t)fi->fh;
  if (off < 0)
    return -EINVAL;
  switch (h->kind) {
  case K_DISK: {
    uint64_t dsize = tb_disk_size(h->disk);
    if ((uint64_t)off >= dsize)
      return 0;
    if (size > dsize - (uint64_t)off)
      size = dsize - (uint64_t)off;
    return tb_disk_pread(h->disk, buf, size, (uint64_t)off) == 0 ? (int)size : -EIO;
  }
  case K_STATUS:
  case K_CHANGES:
    if ((uint64_t)off >= h->len)
      return 0;
    if (size > h->len - (size_t)off)
      size = h->len - (size_t)off;
    memcpy(buf, h->text + off, size);
    return (int)size;
  case K_VOL: {
    ssize_t got = tb_ifile_pread(h->file, buf, size, (uint64_t)off);
    return got < 0 ? -EIO : (int)got;
  }
  default:
    return -EIO;
  }
}

static int tf_release(const char *path, struct fuse_file_info *fi)
{
  struct handle *h = (struct handle *)(uintptr_t)fi->fh;
  tb_ifile_close(h->file);
  snap_put(h->snap);
  tb_disk_unref(h->disk);
  free(h->text);
  free(h);
  return 0;
}

static int tf_statfs(const char *path, struct statvfs *st)
{
  memset(st, 0, sizeof *st);
  st->f_bsize = st->f_frsize = 4096;
  st->f_namemax = 255;
  st->f_flag = ST_RDONLY;
  return 0;
}

/* ---- the kernel's side: nodes and low-level operations ------------------------------ */

/* The view answers the kernel through libfuse's low-level API, for the
 * cache timeouts: each reply says how long the kernel may keep what it
 * got (node_timeout), which libfuse's path API fixes for the whole mount.
 * The kernel names files by node ids; a node is a path of the view,
 * looked up (or listed with attributes) nlookup times and not yet
 * forgotten.  Everything else works on paths, as above.
 *
 * Inode numbers (st_ino) are ours (guest_ino), so hard links share one and
 * du, tar and rsync -H see them; node ids are per path.  Listings carry
 * the entries' attributes (readdirplus, always asked for: not the kernel's
 * "auto" choice, which asks for them only in a directory's first request,
 * so `find -ls` costs a lookup round trip per file), all of them but in a
 * big directory's first listing (listing_plan), in requests of up to
 * 1 MiB (DIR_BLKSIZE); reads go to the kernel in large requests with
 * readahead: a find or a copy costs few round trips. */
struct lnode {
  uint64_t id, nlookup;
  struct lnode *next_id, *next_path; /* hash chains */
  char path[];
};

#define LNODE_BUCKETS 65536
static pthread_mutex_t lnodes_lock = PTHREAD_MUTEX_INITIALIZER;
static struct lnode *lnodes_by_id[LNODE_BUCKETS], *lnodes_by_path[LNODE_BUCKETS];
static uint64_t next_lnode_id = FUSE_ROOT_ID + 1;

static size_t lnode_path_bucket(const char *path)
{
  uint64_t h = 1469598103934665603ull;
  for (; *path; path++)
    h = (h ^ (unsigned char)*path) * 1099511628211ull;
  return (size_t)(h % LNODE_BUCKETS);
}

/* The path of node ID (malloc'd), or NULL if the kernel named no such node. */
static char *lnode_path(fuse_ino_t id)
{
  if (id == FUSE_ROOT_ID)
    return strdup("/");
  char *r = NULL;
  pthread_mutex_lock(&lnodes_lock);
  for (struct lnode *n = lnodes_by_id[id % LNODE_BUCKETS]; n; n = n->next_id)
    if (n->id == id) {
      r = strdup(n->path);
      break;
    }
  pthread_mutex_unlock(&lnodes_lock);
  return r;
}

/* One more lookup of PATH: its node id (0 when out of memory). */
static uint64_t lnode_lookup(const char *path)
{
  size_t b = lnode_path_bucket(path);
  uint64_t id = 0;
  pthread_mutex_lock(&lnodes_lock);
  struct lnode *n = lnodes_by_path[b];
  while (n && strcmp(n->path, path) != 0)
    n = n->next_path;
  if (!n && (n = malloc(sizeof *n + strlen(path) + 1))) {
    n->id = next_lnode_id++;
    n->nlookup = 0;
    strcpy(n->path, path);
    n->next_path = lnodes_by_path[b];
    lnodes_by_path[b] = n;
    n->next_id = lnodes_by_id[n->id % LNODE_BUCKETS];
    lnodes_by_id[n->id % LNODE_BUCKETS] = n;
  }
  if (n) {
    n->nlookup++;
    id = n->id;
  }
  pthread_mutex_unlock(&lnodes_lock);
  return id;
}

static void lnode_forget(fuse_ino_t id, uint64_t count)
{
  if (id == FUSE_ROOT_ID)
    return;
  pthread_mutex_lock(&lnodes_lock);
  struct lnode **p = &lnodes_by_id[id % LNODE_BUCKETS];
  while (*p && (*p)->id != id)
    p = &(*p)->next_id;
  struct lnode *n = *p;
  if (n && (n->nlookup -= count < n->nlookup ? count : n->nlookup) == 0) {
    *p = n->next_id;
    struct lnode **q = &lnodes_by_path[lnode_path_bucket(n->path)];
    while (*q != n)
      q = &(*q)->next_path;
    *q = n->next_path;
    free(n);
  }
  pthread_mutex_unlock(&lnodes_lock);
}

/* PARENT's path joined with NAME (malloc'd), or NULL (errno set). */
static char *child_path(const char *parent, const char *name)
{
  char *r;
  if (asprintf(&r, "%s%s%s", parent, strcmp(parent, "/") == 0 ? "" : "/", name) < 0)
    return NULL;
  return r;
}

/* Start serving REQ: the caller's uid for caller_is_admin, and ID's path
 * (NULL after replying ESTALE: the kernel named a node it forgot). */
static char *begin(fuse_req_t req, fuse_ino_t id)
{
  req_uid = (int64_t)fuse_req_ctx(req)->uid;
  char *path = lnode_path(id);
  if (!path)
    fuse_reply_err(req, ESTALE);
  return path;
}

static void ll_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
  char *dir = begin(req, parent);
  if (!dir)
    return;
  char *path = child_path(dir, name);
  free(dir);
  if (!path) {
    fuse_reply_err(req, ENOMEM);
    return;
  }
  struct fuse_entry_param e = {0};
  double timeout;
  int r = tf_getattr(path, &e.attr, &timeout);
  if (r == 0 && !(e.ino = lnode_lookup(path)))
    r = -ENOMEM;
  if (r == 0 || r == -ENOENT) {
    /* ENOENT: ino 0, the kernel keeps the absence for the timeout */
    e.entry_timeout = timeout;
    e.attr_timeout = timeout;
    fuse_reply_entry(req, &e);
  } else {
    fuse_reply_err(req, -r);
  }
  free(path);
}

static void ll_forget(fuse_req_t req, fuse_ino_t id, uint64_t nlookup)
{
  lnode_forget(id, nlookup);
  fuse_reply_none(req);
}

static void ll_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
  for (size_t i = 0; i < count; i++)
    lnode_forget(forgets[i].ino, forgets[i].nlookup);
  fuse_reply_none(req);
}

static void ll_getattr(fuse_req_t req, fuse_ino_t id, struct fuse_file_info *fi)
{
  char *path = begin(req, id);
  if (!path)
    return;
  struct stat st;
  double timeout;
  int r = tf_getattr(path, &st, &timeout);
  if (r == 0)
    fuse_reply_attr(req, &st, timeout);
  else
    fuse_reply_err(req, -r);
  free(path);
}

static void ll_readlink(fuse_req_t req, fuse_ino_t id)
{
  char *path = begin(req, id);
  if (!path)
    return;
  char buf[PATH_MAX + 1];
  int r = tf_readlink(path, buf, sizeof buf);
  if (r == 0)
    fuse_reply_readlink(req, buf);
  else
    fuse_reply_err(req, -r);
  free(path);
}

static void ll_opendir(fuse_req_t req, fuse_ino_t id, struct fuse_file_info *fi)
{
  if (no_opendir) { /* the kernel sends no OPENDIR again (listings without OPENDIR) */
    fuse_reply_err(req, ENOSYS);
    return;
  }
  char *path = begin(req, id);
  if (!path)
    return;
  int r = tf_opendir(path, fi);
  if (r == 0) {
    const struct listing *l = (const struct listing *)(uintptr_t)fi->fh;
    /* An immutable directory's listing may stay in the kernel's cache. */
    fi->cache_readdir = fi->keep_cache = listing_keepable(l);
    if (fuse_reply_open(req, fi) != 0)
      tf_releasedir(path, fi);
  } else {
    fuse_reply_err(req, -r);
  }
  free(path);
}

/* Each FUSE thread's reply buffer for reads and listings, kept from one
 * request to the next: a malloc of 1 MiB per request was a fresh mapping
 * each time, 256 page faults, most of the page faults of a `find` over a
 * 20,000-entry directory and of a sequential read. */
struct reply_buf {
  size_t cap;
  _Alignas(16) char data[];
};
static pthread_key_t reply_key;
static pthread_once_t reply_once = PTHREAD_ONCE_INIT;

static void reply_key_make(void)
{
  if (pthread_key_create(&reply_key, free) != 0)
    abort(); /* only EAGAIN: out of keys at startup */
}

/* This thread's buffer of at least SIZE bytes; NULL when out of memory. */
static char *reply_buffer(size_t size)
{
  pthread_once(&reply_once, reply_key_make);
  struct reply_buf *b = pthread_getspecific(reply_key);
  if (!b || b->cap < size) {
    struct reply_buf *nb = malloc(sizeof *nb + (size ? size : 1));
    if (!nb || pthread_setspecific(reply_key, nb) != 0) {
      free(nb);
      return NULL;
    }
    free(b);
    nb->cap = size;
    b = nb;
  }
  return b->data;
}

/* The entries of the listing from OFF on, as many as SIZE bytes hold; with
 * PLUS each entry that carries its attributes (listing_plan) is a lookup of
 * its node, the others go as names and types (node 0: the kernel makes no
 * inode for them).  Paths are built in one buffer, not one allocation per
 * entry. */
static void readdir_reply(fuse_req_t req, fuse_ino_t id, size_t size, off_t off,
                          struct fuse_file_info *fi, bool plus)
{
  char *dir = begin(req, id);
  if (!dir)
    return;
  struct listing *held = NULL; /* a pass without OPENDIR */
  int err = 0;
  if (!fi->fh && !(held = pass_listing(dir, off, &err))) {
    fuse_reply_err(req, err);
    free(dir);
    return;
  }
  const struct listing *l = held ? held : (const struct listing *)(uintptr_t)fi->fh;
  size_t dl = strcmp(dir, "/") == 0 ? 0 : strlen(dir), room = dl + 1 + NAME_MAX + 1;
  char *buf = reply_buffer(size), *pb = malloc(room);
  size_t used = 0;
  if (pb) {
    memcpy(pb, dir, dl);
    pb[dl] = '/';
  }
  for (size_t i = off > 0 ? (size_t)off : 0; buf && pb && i < l->entries.len; i++) {
    const struct listed *le = &l->entries.ptr[i];
    bool dots = strcmp(le->name, ".") == 0 || strcmp(le->name, "..") == 0;
    /* Only an entry that carries its attributes (a lookup of its node)
     * needs its path and its whole stat; the others go as name, d_ino and
     * type, which is all the kernel reads of them. */
    bool carry =
        plus && !dots && le->is && !le->is->partial && (i < l->plus_n || le->is->type == TB_FT_DIR);
    size_t nl = strlen(le->name);
    char *path = dots || (le->is && !carry) ? NULL
                 : nl <= NAME_MAX           ? pb
                                            : child_path(dir, le->name);
    if (path == pb)
      memcpy(pb + dl + 1, le->name, nl + 1);
    struct fuse_entry_param e = {0};
    if (carry) {
      istat_to_stat(le->is, &e.attr, guest_ino(l->source, l->vol, le->is->inum));
    } else if (le->is) {
      e.attr.st_ino = guest_ino(l->source, l->vol, le->is->inum);
      e.attr.st_mode = istat_type(le->is);
    } else { /* no attributes: an inode number for d_ino, the type unknown */
      e.attr.st_ino = path_ino(path ? path : dir);
    }
    size_t n;
    if (!plus) {
      n = fuse_add_direntry(req, buf + used, size - used, le->name, &e.attr, (off_t)(i + 1));
    } else if (fuse_add_direntry_plus(req, NULL, 0, le->name, &e, (off_t)(i + 1)) > size - used) {
      if (path != pb)
        free(path);
      break;
    } else {
      if (carry && path) {
        e.ino = lnode_lookup(path); /* 0 (out of memory): the kernel takes no lookup */
        e.entry_timeout = e.attr_timeout = l->timeout;
      }
      n = fuse_add_direntry_plus(req, buf + used, size - used, le->name, &e, (off_t)(i + 1));
    }
    if (path != pb)
      free(path);
    if (n > size - used)
      break;
    used += n;
  }
  if (buf && pb)
    fuse_reply_buf(req, buf, used);
  else
    fuse_reply_err(req, ENOMEM);
  if (held) {
    if (used == 0 || !buf || !pb) {
      if (!listing_keepable(held))
        inval_dir(id);
      pass_end(dir, held);
    }
    listing_put(held);
  }
  free(pb);
  free(dir);
}

static void ll_readdir(fuse_req_t req, fuse_ino_t id, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
  readdir_reply(req, id, size, off, fi, false);
}

static void ll_readdirplus(fuse_req_t req, fuse_ino_t id, size_t size, off_t off,
                           struct fuse_file_info *fi)
{
  readdir_reply(req, id, size, off, fi, true);
}

static void ll_releasedir(fuse_req_t req, fuse_ino_t id, struct fuse_file_info *fi)
{
  tf_releasedir(NULL, fi);
  fuse_reply_err(req, 0);
}

static void ll_open(fuse_req_t req, fuse_ino_t id, struct fuse_file_info *fi)
{
  char *path = begin(req, id);
  if (!path)
    return;
  int r = tf_open(path, fi);
  if (r < 0)
    fuse_reply_err(req, -r);
  else if (fuse_reply_open(req, fi) != 0)
    tf_release(path, fi);
  free(path);
}

static bool splice_ok; /* FUSE_CAP_SPLICE_WRITE granted (ll_init) */
/* A reply and its header fit in a pipe of at most 1 MiB (the default
 * fs.pipe-max-size): libfuse cannot splice a bigger one and copies it
 * through a fresh buffer instead, slower than no splice at all. */
#define MAX_READ (512 * 1024)
#define MAX_READ_STR "524288"

/* A read whose bytes are one plain run of a local disk (a version read from
 * its file, -c) is spliced from that file into the kernel (fuse_reply_data
 * with a descriptor buffer, FUSE_CAP_SPLICE_WRITE): the page cache's pages go
 * through a pipe instead of being copied into a buffer of ours and out of it
 * again.  False when the read is not such a run (over NBD, a hole, a
 * resident or compressed file, two runs): the caller reads it. */
static bool splice_read(fuse_req_t req, const struct handle *h, size_t size, off_t off)
{
  if (!splice_ok || off < 0)
    return false;
  int fd = -1;
  uint64_t at = (uint64_t)off, end;
  size_t n = 0;
  if (h->kind == K_VOL) {
    n = tb_ifile_local_run(h->file, (uint64_t)off, size, &fd, &at);
    end = tb_ifile_size(h->file);
  } else if (h->kind == K_DISK && (fd = tb_disk_local_fd(h->disk)) != -1) {
    end = tb_disk_size(h->disk);
    uint64_t left = (uint64_t)off < end ? end - (uint64_t)off : 0;
    n = size < left ? size : (size_t)left;
  } else {
    return false;
  }
  /* A reply shorter than asked is the end of the file to the kernel. */
  if (n == 0 || (n < size && (uint64_t)off + n < end))
    return false;
  struct fuse_bufvec bv = FUSE_BUFVEC_INIT(n);
  bv.buf[0].flags = (enum fuse_buf_flags)(FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK);
  bv.buf[0].fd = fd;
  bv.buf[0].pos = (off_t)at;
  fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE);
  return true;
}

static void ll_read(fuse_req_t req, fuse_ino_t id, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
  req_uid = (int64_t)fuse_req_ctx(req)->uid;
  if (splice_read(req, (const struct handle *)(uintptr_t)fi->fh, size, off))
    return;
  char *buf = reply_buffer(size);
  int r = buf ? tf_read(NULL, buf, size, off, fi) : -ENOMEM;
  if (r >= 0)
    fuse_reply_buf(req, buf, (size_t)r);
  else
    fuse_reply_err(req, -r);
}

static void ll_release(fuse_req_t req, fuse_ino_t id, struct fuse_file_info *fi)
{
  tf_release(NULL, fi);
  fuse_reply_err(req, 0);
}

static void ll_statfs(fuse_req_t req, fuse_ino_t id)
{
  struct statvfs st;
  tf_statfs(NULL, &st);
  fuse_reply_statfs(req, &st);
}

static void ll_getxattr(fuse_req_t req, fuse_ino_t id, const char *name, size_t size)
{
  char *path = begin(req, id);
  if (!path)
    return;
  char *value = size ? malloc(size) : NULL;
  int r = size && !value ? -ENOMEM : tf_getxattr(path, name, value, size);
  if (r < 0)
    fuse_reply_err(req, -r);
  else if (size == 0)
    fuse_reply_xattr(req, (size_t)r);
  else
    fuse_reply_buf(req, value, (size_t)r);
  free(value);
  free(path);
}

static void ll_listxattr(fuse_req_t req, fuse_ino_t id, size_t size)
{
  char *path = begin(req, id);
  if (!path)
    return;
  char *list = size ? malloc(size) : NULL;
  int r = size && !list ? -ENOMEM : tf_listxattr(path, list, size);
  if (r < 0)
    fuse_reply_err(req, -r);
  else if (size == 0)
    fuse_reply_xattr(req, (size_t)r);
  else
    fuse_reply_buf(req, list, (size_t)r);
  free(list);
  free(path);
}

static void ll_init(void *userdata, struct fuse_conn_info *conn)
{
  conn->max_readahead = 1u << 20;
  conn->max_read = MAX_READ;
  if (conn->capable & FUSE_CAP_READDIRPLUS)
    conn->want |= FUSE_CAP_READDIRPLUS;
  conn->want &= ~(unsigned)FUSE_CAP_READDIRPLUS_AUTO;
  if ((conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT) && !getenv("TB_FUSE_OPENDIR")) {
    conn->want |= FUSE_CAP_NO_OPENDIR_SUPPORT;
    no_opendir = true;
  }
  if (conn->capable & FUSE_CAP_ASYNC_READ)
    conn->want |= FUSE_CAP_ASYNC_READ;
  if ((conn->capable & FUSE_CAP_SPLICE_WRITE) && !getenv("TB_FUSE_NO_SPLICE")) {
    conn->want |= FUSE_CAP_SPLICE_WRITE;
    splice_ok = true;
  }
}

/* Everything that would modify the tree. */
static void rofs(fuse_req_t req)
{
  fuse_reply_err(req, EROFS);
}
static void rofs_setattr(fuse_req_t req, fuse_ino_t i, struct stat *a, int s,
                         struct fuse_file_info *fi)
{
  rofs(req);
}
static void rofs_mknod(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m, dev_t d)
{
  rofs(req);
}
static void rofs_mkdir(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m)
{
  rofs(req);
}
static void rofs_unlink(fuse_req_t req, fuse_ino_t p, const char *n)
{
  rofs(req);
}
static void rofs_symlink(fuse_req_t req, const char *l, fuse_ino_t p, const char *n)
{
  rofs(req);
}
static void rofs_rename(fuse_req_t req, fuse_ino_t p, const char *n, fuse_ino_t np, const char *nn,
                        unsigned f)
{
  rofs(req);
}
static void rofs_link(fuse_req_t req, fuse_ino_t i, fuse_ino_t np, const char *nn)
{
  rofs(req);
}
static void rofs_write(fuse_req_t req, fuse_ino_t i, const char *b, size_t s, off_t o,
                       struct fuse_file_info *fi)
{
  rofs(req);
}
static void rofs_create(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m,
                        struct fuse_file_info *fi)
{
  rofs(req);
}
static void rofs_setxattr(fuse_req_t req, fuse_ino_t i, const char *n, const char *v, size_t s,
                          int f)
{
  rofs(req);
}
static void rofs_removexattr(fuse_req_t req, fuse_ino_t i, const char *n)
{
  rofs(req);
}
static void rofs_fallocate(fuse_req_t req, fuse_ino_t i, int m, off_t o, off_t l,
                           struct fuse_file_info *fi)
{
  rofs(req);
}

static const struct fuse_lowlevel_ops ops = {
    .init = ll_init,
    .lookup = ll_lookup,
    .forget = ll_forget,
    .forget_multi = ll_forget_multi,
    .getattr = ll_getattr,
    .readlink = ll_readlink,
    .opendir = ll_opendir,
    .readdir = ll_readdir,
    .readdirplus = ll_readdirplus,
    .releasedir = ll_releasedir,
    .open = ll_open,
    .read = ll_read,
    .release = ll_release,
    .statfs = ll_statfs,
    .getxattr = ll_getxattr,
    .listxattr = ll_listxattr,
    .setattr = rofs_setattr,
    .mknod = rofs_mknod,
    .mkdir = rofs_mkdir,
    .unlink = rofs_unlink,
    .rmdir = rofs_unlink,
    .symlink = rofs_symlink,
    .rename = rofs_rename,
    .link = rofs_link,
    .write = rofs_write,
    .create = rofs_create,
    .setxattr = rofs_setxattr,
    .removexattr = rofs_removexattr,
    .fallocate = rofs_fallocate,
};

/* ---- main -------------------------------------------------------------------------------- */

/* Guest symlinks stay symlinks (readlink shows them), but the host must
 * never follow one: clients/ID/fs/.../x -> /etc/shadow would make `grep -r`
 * or `diff -r` read the host's files.  So the mount gets nosymfollow
 * (MOUNT_ATTR_NOSYMFOLLOW, Linux 5.12), set with mount_setattr right after
 * the mount and before the first request is served.  libfuse does not
 * know the option and fusermount3 cannot set it: without CAP_SYS_ADMIN it
 * fails, and the view says so and mounts anyway. */
#ifndef MOUNT_ATTR_NOSYMFOLLOW
#define MOUNT_ATTR_NOSYMFOLLOW 0x00200000
#endif
struct tf_mount_attr {
  uint64_t attr_set, attr_clr, propagation, userns_fd;
};

static void no_symfollow(const char *mountpoint)
{
#ifdef SYS_mount_setattr
  struct tf_mount_attr a = {.attr_set = MOUNT_ATTR_NOSYMFOLLOW};
  if (syscall(SYS_mount_setattr, AT_FDCWD, mountpoint, 0, &a, sizeof a) == 0)
    return;
  fprintf(stderr,
          "tabula-fuse: warning: cannot make %s nosymfollow (%s): the host will follow the "
          "guests' symlinks (mount as root to prevent it; see tabula-fuse(1))\n",
          mountpoint, strerror(errno));
#else
  fprintf(stderr, "tabula-fuse: warning: this system has no mount_setattr: the host will follow "
                  "the guests' symlinks (see tabula-fuse(1))\n");
#endif
}

/* fuse_main(), unrolled so nosymfollow is set between the mount and the
 * first request. */
/* The device (MAJ:MIN) of the tabula view mounted on MOUNTPOINT, from
 * /proc/self/mountinfo (no request to the filesystem, which does not serve
 * yet); false if there is none. */
static bool mounted_dev(const char *mountpoint, char *dev, size_t len)
{
  char real[PATH_MAX];
  if (!realpath(mountpoint, real))
    return false;
  FILE *f = fopen("/proc/self/mountinfo", "re");
  if (!f)
    return false;
  char line[8192];
  bool found = false;
  while (!found && fgets(line, sizeof line, f)) {
    /* ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ... - FSTYPE SOURCE ... */
    char mp[4096], fstype[256], majmin[64];
    const char *dash = strstr(line, " - ");
    if (!dash || sscanf(line, "%*s %*s %63s %*s %4095s", majmin, mp) != 2 ||
        sscanf(dash + 3, "%255s", fstype) != 1)
      continue;
    found = strcmp(mp, real) == 0 && strcmp(fstype, "fuse.tabula") == 0;
    if (found)
      snprintf(dev, len, "%s", majmin);
  }
  fclose(f);
  return found;
}

/* True if a tabula view is already mounted on MOUNTPOINT (a second mount
 * would stack on it). */
static bool already_mounted(const char *mountpoint)
{
  char dev[64];
  return mounted_dev(mountpoint, dev, sizeof dev);
}

/* The kernel reads ahead 128 KiB on a FUSE mount, whatever the INIT reply
 * asks (it only lowers the value), so a sequential read of a guest file is
 * one request per 128 KiB, each a round trip to the worker and to NBD.
 * Root may raise it in sysfs, as for a block device: READAHEAD_KB, which
 * the kernel then sends as reads of up to 1 MiB (max_pages).  Without the
 * permission reads stay at 128 KiB: slower, nothing else. */
#define READAHEAD_KB 1024
static void raise_readahead(const char *mountpoint)
{
  char dev[64], path[128];
  if (!mounted_dev(mountpoint, dev, sizeof dev))
    return;
  snprintf(path, sizeof path, "/sys/class/bdi/%s/read_ahead_kb", dev);
  FILE *f = fopen(path, "we");
  if (f) {
    fprintf(f, "%d\n", READAHEAD_KB);
    fclose(f);
  }
}

/* The view of a local appliance reads its state directory and connects to
 * nbdkit's socket as an admin peer: without that access every file would
 * answer EIO, so the mount fails instead, saying why. */
static int check_local_access(const struct tb_config *c, const char *sock)
{
  char clients[TB_PATH_MAX];
  if (tb_clientdir_root(c->state_dir, clients, sizeof clients) < 0)
    return -1;
  if (access(c->state_dir, R_OK | X_OK) == -1 ||
      (access(clients, F_OK) == 0 && access(clients, R_OK | X_OK) == -1)) {
    fprintf(stderr,
            "tabula-fuse: cannot read the state directory %s: %s (the view needs the "
            "daemon's user or root)\n",
            c->state_dir, strerror(errno));
    return -1;
  }
  struct nbd_handle *h = nbd_create();
  if (!h)
    return 0;
  int r = 0;
  if (nbd_set_opt_mode(h, true) == -1 || nbd_connect_unix(h, sock) == -1) {
    int e = nbd_get_errno();
    if (e == EACCES || e == EPERM) {
      fprintf(stderr,
              "tabula-fuse: cannot connect to nbdkit at %s: %s (the view is an admin peer: "
              "run it as a uid in admin.uids)\n",
              sock, strerror(e));
      r = -1;
    } else {
      fprintf(stderr,
              "tabula-fuse: warning: nbdkit does not answer at %s (%s): disks read EIO until "
              "tabula-restored serves\n",
              sock, nbd_get_error());
    }
  } else {
    nbd_opt_abort(h);
  }
  nbd_close(h);
  return r;
}

/* The session loop, with the loop configuration O asks for: 0, or 2. */
static int serve_loop(struct fuse_session *se, const struct fuse_cmdline_opts *o)
{
  struct fuse_loop_config *lc = fuse_loop_cfg_create();
  if (!lc)
    return 2;
  fuse_loop_cfg_set_max_threads(lc, o->max_threads);
  fuse_loop_cfg_set_clone_fd(lc, (unsigned)o->clone_fd);
  /* libfuse 3.14 reports "unset" as UINT_MAX and then complains about it
   * ("Ignoring invalid max threads value 4294967295") at every mount. */
  if (o->max_idle_threads != UINT_MAX)
    fuse_loop_cfg_set_idle_threads(lc, o->max_idle_threads);
  int lr = o->singlethread ? fuse_session_loop(se) : fuse_session_loop_mt(se, lc);
  fuse_loop_cfg_destroy(lc);
  inval_end();
  return lr == 0 ? 0 : 2;
}

/* Serve the mounted session SE until it is unmounted or signalled: 0, or 2.
 * libfuse's examples unwind this with a ladder of labels; here each step that
 * needs undoing is one function (run, serve_mounted, serve_loop) that
 * undoes it before returning. */
static int serve_mounted(struct fuse_session *se, const struct fuse_cmdline_opts *o)
{
  no_symfollow(o->mountpoint);
  raise_readahead(o->mountpoint);
  if (fuse_daemonize(o->foreground) != 0 || fuse_set_signal_handlers(se) != 0)
    return 2;
  int r = serve_loop(se, o);
  fuse_remove_signal_handlers(se);
  return r;
}

static int run(struct fuse_args *args)
{
  struct fuse_cmdline_opts o;
  if (fuse_parse_cmdline(args, &o) != 0)
    return 1;
  CLEANUP_FREE char *mountpoint = o.mountpoint;
  if (!mountpoint) {
    fprintf(stderr, "tabula-fuse: no mount point (tabula-fuse --help)\n");
    return 1;
  }
  if (already_mounted(mountpoint)) {
    fprintf(stderr,
            "tabula-fuse: a tabula view is already mounted on %s (fusermount3 -u %s "
            "first)\n",
            mountpoint, mountpoint);
    return 1;
  }
  if (cfg && check_local_access(cfg, nbd_socket) == -1)
    return 1;
  for (int i = 0; i < args->argc; i++)
    if (strstr(args->argv[i], "allow_other") || strstr(args->argv[i], "allow_root"))
      shared_mount = true;
  struct fuse_session *se = fuse_session_new(args, &ops, sizeof ops, NULL);
  if (!se)
    return 2;
  session = se;
  int r = 2;
  if (fuse_session_mount(se, mountpoint) == 0) {
    r = serve_mounted(se, &o);
    fuse_session_unmount(se);
  }
  fuse_session_destroy(se);
  return r;
}

static void usage(FILE *f)
{
  fprintf(f,
          "Usage: tabula-fuse [-c CONFIG | --uri NBD-URI] [FUSE options] MOUNTPOINT\n"
          "\n"
          "Mount a read-only view of a tabula appliance:\n"
          "  MOUNTPOINT/clients/ID/{disk,status.json,changes.txt,fs/VOLUME/...}\n"
          "  MOUNTPOINT/clients/ID/sessions/N/{disk,changes.txt,fs/...}\n"
          "  MOUNTPOINT/images/NAME/N/{disk,fs/...}\n"
          "\n"
          "  -c, --config=FILE  the appliance's configuration (local; default socket\n"
          "                     STATE/nbd.sock); must run as an admin uid\n"
          "  --uri=NBD-URI      a remote appliance, e.g. nbd://host or\n"
          "                     nbds://host (admin networks, TLS)\n"
          "  --op-timeout=SECONDS  deadline of each request into a guest filesystem\n"
          "                     (default %d); past it the request answers EIO.\n"
          "                     changes.txt gets %d times as long\n"
          "  -f                 stay in the foreground;  -d  debug FUSE\n"
          "  -o OPT             FUSE mount options.  allow_other lets other users reach\n"
          "                     the mount point, but only admin uids (admin.uids, root,\n"
          "                     the mounting user) are answered: the view is as\n"
          "                     private as the admin exports behind it\n"
          "  -h, --help         this text;  -V, --version  the version\n"
          "\n"
          "Live clients are re-read at most every %d ms; see tabula-fuse(1).\n"
          "Exit status: 0 after a clean unmount, 1 on a usage or configuration\n"
          "error, 2 if mounting failed.\n",
          DEFAULT_OP_TIMEOUT_S, 2 * TB_INSPECT_WALK_FACTOR, CACHE_MS);
}

#define OPT(t, p)                                                                                  \
  {                                                                                                \
    t, offsetof(typeof(opts), p), 1                                                                \
  }
static const struct fuse_opt option_spec[] = {
    {"-c %s", offsetof(typeof(opts), config_file), 0},
    {"--config=%s", offsetof(typeof(opts), config_file), 0},
    {"--uri=%s", offsetof(typeof(opts), uri), 0},
    {"--op-timeout=%s", offsetof(typeof(opts), op_timeout), 0},
    OPT("-h", show_help),
    OPT("--help", show_help),
    OPT("-V", show_version),
    OPT("--version", show_version),
    FUSE_OPT_END};

/* Accept "--uri X", "--config X" and "--op-timeout X" as well as the "=" forms. */
static void join_long_options(int *argc, char **argv)
{
  for (int i = 1; i + 1 < *argc; i++) {
    if (strcmp(argv[i], "--uri") == 0 || strcmp(argv[i], "--config") == 0 ||
        strcmp(argv[i], "--op-timeout") == 0) {
      char *joined;
      if (asprintf(&joined, "%s=%s", argv[i], argv[i + 1]) < 0)
        exit(1);
      argv[i] = joined;
      memmove(&argv[i + 1], &argv[i + 2], (size_t)(*argc - i - 2) * sizeof *argv);
      (*argc)--;
      argv[*argc] = NULL;
    }
  }
}

/* "2", "0.5": seconds, from 0.1 to 3600, into milliseconds. */
static int parse_seconds(const char *s, int64_t *ms)
{
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end || !(v >= 0.1 && v <= 3600))
    return -1;
  *ms = (int64_t)(v * 1000 + 0.5);
  return 0;
}

int main(int argc, char **argv)
{
  join_long_options(&argc, argv);
  struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
  if (fuse_opt_parse(&args, &opts, option_spec, NULL) == -1)
    return 1;
  if (opts.show_help) {
    usage(stdout);
    return 0;
  }
  if (opts.show_version) {
    printf("tabula-fuse %s\n", PACKAGE_VERSION);
    return 0;
  }
  if (opts.op_timeout && parse_seconds(opts.op_timeout, &op_timeout_ms) < 0) {
    fprintf(stderr,
            "tabula-fuse: --op-timeout %s: give a number of seconds from 0.1 to 3600 "
            "(tabula-fuse --help)\n",
            opts.op_timeout);
    return 1;
  }
  if (!!opts.config_file == !!opts.uri) {
    fprintf(stderr, "tabula-fuse: give exactly one of -c CONFIG or --uri NBD-URI "
                    "(tabula-fuse --help)\n");
    return 1;
  }
  if (opts.config_file) {
    cfg = tb_config_load(opts.config_file);
    if (!cfg) {
      fprintf(stderr, "tabula-fuse: %s\n", tb_errmsg());
      return 1;
    }
    if (cfg->listen_unix)
      snprintf(nbd_socket, sizeof nbd_socket, "%s", cfg->listen_unix);
    else if (tb_path(nbd_socket, sizeof nbd_socket, "%s/nbd.sock", cfg->state_dir) < 0) {
      fprintf(stderr, "tabula-fuse: %s\n", tb_errmsg());
      return 1;
    }
  } else {
    struct nbd_handle *h = nbd_create();
    if (!h || nbd_supports_uri(h) != 1) {
      fprintf(stderr, "tabula-fuse: this libnbd cannot parse NBD URIs\n");
      return 1;
    }
    nbd_close(h);
    pthread_mutex_lock(&list_lock);
    remote_refresh();
    pthread_mutex_unlock(&list_lock);
    if (remote_error[0]) {
      fprintf(stderr,
              "tabula-fuse: cannot list the exports of %s: %s\n"
              "(listing exports needs an admin peer: see \"admin\" in the configuration)\n",
              opts.uri, remote_error);
      return 1;
    }
  }
  mount_time = time(NULL);
  fuse_opt_add_arg(&args,
                   "-oro,fsname=tabula,subtype=tabula,max_threads=16,max_read=" MAX_READ_STR);
  int r = run(&args);
  fuse_opt_free_args(&args);
  return r;
}
