/* tabula: inspection of guest disks with The Sleuth Kit (see inspect.h).
 *
 * How it works.  A tb_disk is a byte source (NBD export, file, callback).  A
 * tb_inspect hands the disk to libtsk through tsk_img_open_external(), finds
 * the volume system (MBR/GPT) or an unpartitioned filesystem, and opens each
 * recognised filesystem once.  Everything else is built from one primitive,
 * the directory listing: load_dir() reads a directory through libtsk, keeps
 * only allocated, real (not TSK-virtual) entries with sane names, loads each
 * entry's metadata, sorts the entries by name and caches the result per
 * volume (LRU, bounded by directories and entries).  Path lookups walk these
 * listings with a binary search per component, so stat and lookup cost no
 * filesystem I/O once a directory is cached, and lookups can only ever find
 * what readdir shows.
 *
 * Robustness.  Each handle has a worker thread that alone touches libtsk and
 * the caches; a public call packs its arguments into a job the worker owns,
 * hands it over and waits on a condition variable until the job's deadline.
 * The worker's image read callback enforces the same deadline: once it is
 * spent every further read fails, libtsk unwinds with an error and the caller
 * gets EIO.  Walks also check the deadline between entries (cached listings
 * need no reads), skip directories already on the current path (cycles in a
 * hostile filesystem) and stop at a depth limit.  What a read cannot stop
 * (libtsk computing run lists in quadratic time) the wait does: the caller
 * abandons the job and answers EIO, the handle is stuck (calls fail at once)
 * until the worker finishes, and the worker, holding references to the job,
 * the handle and the disk, frees them whenever that is.  Sizes libtsk is
 * known to choke on are refused before it sees them (size_plausible).
 *
 * Changes.  tb_inspect_diff() walks the base and the live filesystem and
 * compares them by path.  The dirty map narrows the work: a volume with no
 * dirty byte is not read at all, and a file whose metadata did not change is
 * changed only if one of its content runs (from libtsk's attribute run lists)
 * lies in a dirty range.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <libnbd.h>
#include <tsk/libtsk.h>

#include "inspect.h"

#define DIR_CACHE_MAX 256            /* directories cached per volume */
#define DIR_CACHE_MAX_ENTRIES 400000 /* entries cached per volume */
#define WALK_MAX_DEPTH 256
#define NBD_MAX_REQUEST (8u << 20)
#define DEADLINE_SLACK_MS 100 /* for a worker to answer its own deadline before it is abandoned */

/* ------------------------------------------------------------------ */
/* Disks                                                               */
/* ------------------------------------------------------------------ */

struct tb_disk {
  atomic_int refs;
  atomic_int stuck; /* inspection workers on this disk abandoned at a deadline */
  uint64_t size;
  tb_disk_read_fn read;
  void (*close)(void *opaque);
  void *opaque;
  struct nbd_handle *nbd; /* when the disk is an NBD export, for block status */
  char name[256];
};

struct tb_disk *tb_disk_new(uint64_t size, tb_disk_read_fn read, void (*close)(void *opaque),
                            void *opaque, const char *what)
{
  struct tb_disk *d = calloc(1, sizeof *d);
  if (!d) {
    tb_error("%s: out of memory", what);
    return NULL;
  }
  atomic_init(&d->refs, 1);
  atomic_init(&d->stuck, 0);
  d->size = size;
  d->read = read;
  d->close = close;
  d->opaque = opaque;
  snprintf(d->name, sizeof d->name, "%s", what);
  return d;
}

struct tb_disk *tb_disk_ref(struct tb_disk *d)
{
  atomic_fetch_add(&d->refs, 1);
  return d;
}

void tb_disk_unref(struct tb_disk *d)
{
  if (!d || atomic_fetch_sub(&d->refs, 1) != 1)
    return;
  if (d->close)
    d->close(d->opaque);
  free(d);
}

uint64_t tb_disk_size(const struct tb_disk *d)
{
  return d->size;
}

const char *tb_disk_name(const struct tb_disk *d)
{
  return d->name;
}

bool tb_disk_stuck(struct tb_disk *d)
{
  return atomic_load(&d->stuck) > 0;
}

int tb_disk_pread(struct tb_disk *d, void *buf, size_t len, uint64_t off)
{
  if (off > d->size || len > d->size - off) {
    errno = EIO;
    return tb_error("%s: read of %zu bytes at %" PRIu64 " is past the end of the disk", d->name,
                    len, off);
  }
  return d->read(d->opaque, buf, len, off);
}

/* -- files -- */

static int file_read(void *opaque, void *buf, size_t len, uint64_t off)
{
  int fd = (int)(intptr_t)opaque;
  return tb_pread_full(fd, buf, len, off);
}

static void file_close(void *opaque)
{
  close((int)(intptr_t)opaque);
}

struct tb_disk *tb_disk_open_file(const char *path)
{
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    tb_error_errno("%s: cannot open the disk image", path);
    return NULL;
  }
  struct stat st;
  if (fstat(fd, &st) < 0) {
    tb_error_errno("%s: cannot stat the disk image", path);
    close(fd);
    return NULL;
  }
  struct tb_disk *d =
      tb_disk_new((uint64_t)st.st_size, file_read, file_close, (void *)(intptr_t)fd, path);
  if (!d)
    close(fd);
  return d;
}

/* -- NBD -- */

static int nbd_read(void *opaque, void *buf, size_t len, uint64_t off)
{
  struct nbd_handle *h = opaque;
  char *p = buf;
  while (len > 0) {
    size_t n = len < NBD_MAX_REQUEST ? len : NBD_MAX_REQUEST;
    if (nbd_pread(h, p, n, off, 0) < 0) {
      int e = nbd_get_errno();
      errno = e ? e : EIO;
      return tb_error("NBD read of %zu bytes at %" PRIu64 ": %s", n, off, nbd_get_error());
    }
    p += n;
    off += n;
    len -= n;
  }
  return 0;
}

static void nbd_close_handle(void *opaque)
{
  nbd_close(opaque);
}

struct tb_disk *tb_disk_open_nbd(const char *uri, const char *socket, const char *export)
{
  char what[256];
  snprintf(what, sizeof what, "NBD export '%s' at %s", export ? export : "", uri ? uri : socket);
  struct nbd_handle *h = nbd_create();
  if (!h) {
    tb_error("%s: %s", what, nbd_get_error());
    return NULL;
  }
  int r = nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION);
  if (r == 0 && uri && export) {
    /* Negotiate by hand so EXPORT replaces the URI's export name. */
    r = nbd_set_opt_mode(h, true);
    if (r == 0)
      r = nbd_connect_uri(h, uri);
    if (r == 0)
      r = nbd_set_export_name(h, export);
    if (r == 0)
      r = nbd_opt_go(h);
  } else if (r == 0 && uri) {
    r = nbd_connect_uri(h, uri);
  } else if (r == 0) {
    r = nbd_set_export_name(h, export ? export : "");
    if (r == 0)
      r = nbd_connect_unix(h, socket);
  }
  int64_t size = r == 0 ? nbd_get_size(h) : -1;
  if (size < 0) {
    int e = nbd_get_errno();
    tb_error("%s: %s", what, nbd_get_error());
    nbd_close(h);
    errno = e ? e : EIO;
    return NULL;
  }
  struct tb_disk *d = tb_disk_new((uint64_t)size, nbd_read, nbd_close_handle, h, what);
  if (!d) {
    nbd_close(h);
    return NULL;
  }
  d->nbd = h;
  return d;
}

/* -- ranges -- */

int tb_ranges_add(struct tb_ranges *r, uint64_t off, uint64_t len)
{
  if (len == 0)
    return 0;
  if (r->n > 0) {
    struct tb_range *last = &r->v[r->n - 1];
    if (off >= last->off && off <= last->off + last->len) {
      if (off + len > last->off + last->len)
        last->len = off + len - last->off;
      return 0;
    }
    if (off < last->off) {
      errno = EINVAL;
      return tb_error("dirty ranges must be added in ascending order");
    }
  }
  if (r->n == r->cap) {
    size_t cap = r->cap ? r->cap * 2 : 64;
    struct tb_range *v = realloc(r->v, cap * sizeof *v);
    if (!v) {
      errno = ENOMEM;
      return tb_error("out of memory for dirty ranges");
    }
    r->v = v;
    r->cap = cap;
  }
  r->v[r->n++] = (struct tb_range){off, len};
  return 0;
}

void tb_ranges_free(struct tb_ranges *r)
{
  free(r->v);
  memset(r, 0, sizeof *r);
}

uint64_t tb_ranges_bytes(const struct tb_ranges *r)
{
  uint64_t total = 0;
  for (size_t i = 0; i < r->n; i++)
    total += r->v[i].len;
  return total;
}

bool tb_ranges_intersect(const struct tb_ranges *r, uint64_t off, uint64_t len)
{
  if (len == 0)
    return false;
  /* First range ending after OFF. */
  size_t lo = 0, hi = r->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (r->v[mid].off + r->v[mid].len <= off)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < r->n && r->v[lo].off < off + len;
}

struct status_walk {
  struct tb_ranges *out;
  uint64_t next; /* where the next extent starts */
  int failed;
};

static int dirty_extent_cb(void *user_data, const char *metacontext, uint64_t offset,
                           uint32_t *entries, size_t nr_entries, int *error)
{
  struct status_walk *w = user_data;
  if (strcmp(metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
    return 0;
  uint64_t pos = offset;
  for (size_t i = 0; i + 1 < nr_entries; i += 2) {
    if (!(entries[i + 1] & LIBNBD_STATE_HOLE) && tb_ranges_add(w->out, pos, entries[i]) < 0)
      w->failed = 1;
    pos += entries[i];
  }
  w->next = pos;
  return 0;
}

int tb_disk_dirty_ranges(struct tb_disk *d, struct tb_ranges *out)
{
  memset(out, 0, sizeof *out);
  if (!d->nbd || nbd_can_meta_context(d->nbd, LIBNBD_CONTEXT_BASE_ALLOCATION) != 1) {
    errno = ENOTSUP;
    return tb_error("%s: the server does not report block status", d->name);
  }
  struct status_walk w = {.out = out};
  uint64_t off = 0;
  while (off < d->size) {
    uint64_t count = d->size - off;
    if (count > (1u << 30))
      count = 1u << 30;
    w.next = off;
    if (nbd_block_status(d->nbd, count, off,
                         (nbd_extent_callback){.callback = dirty_extent_cb, .user_data = &w},
                         0) < 0) {
      tb_error("%s: block status at %" PRIu64 ": %s", d->name, off, nbd_get_error());
      tb_ranges_free(out);
      errno = EIO;
      return -1;
    }
    if (w.failed || w.next <= off) {
      tb_ranges_free(out);
      errno = EIO;
      return tb_error("%s: the server's block status at %" PRIu64 " makes no progress", d->name,
                      off);
    }
    off = w.next;
  }
  return 0;
}

/* ------------------------------------------------------------------ */
/* Inspection handles                                                  */
/* ------------------------------------------------------------------ */

struct dent {
  char *name;
  struct tb_istat st;
};

struct cached_dir {
  uint64_t inum;
  uint64_t tick; /* last use, for LRU */
  size_t n;
  struct dent *v; /* sorted by name */
};

struct vol {
  struct tb_volume pub;
  TSK_FS_INFO *fs;
  struct tb_istat root;
  struct cached_dir *dirs[DIR_CACHE_MAX];
  size_t n_dirs, n_entries;
};

/* A request shipped to a handle's worker thread.  The caller and the worker
 * each hold a reference; arguments and results live here, never on the
 * caller's stack, so a worker that overruns its deadline and is abandoned
 * only ever writes into memory it owns. */
enum job_kind { JOB_OPEN, JOB_STAT, JOB_READDIR, JOB_READLINK, JOB_OPEN_FILE, JOB_PREAD, JOB_WALK };

struct job {
  atomic_int refs;
  enum job_kind kind;
  int64_t deadline_ms;   /* CLOCK_MONOTONIC */
  atomic_bool abandoned; /* the caller gave up: no callback may run, results are dropped */
  bool started, done;    /* under ins->mu */
  /* arguments */
  size_t vol;
  char *path;
  tb_inspect_dir_fn dir_fn;
  tb_inspect_walk_fn walk_fn;
  void *ctx;
  struct tb_ranges dirty; /* JOB_WALK: a copy of the caller's, used if has_dirty */
  bool has_dirty, owners_only;
  struct tb_disk *base; /* JOB_WALK: compare touched bytes with this disk (a reference) */
  TSK_FS_FILE *file;    /* JOB_PREAD: the file; JOB_OPEN_FILE: the result */
  uint64_t off;
  size_t len;
  /* results */
  char *buf; /* JOB_READLINK, JOB_PREAD: LEN bytes */
  struct tb_istat st;
  ssize_t r;
  int err;
  char msg[512];
};

struct tb_inspect {
  /* Shared between callers and the worker, under mu. */
  pthread_mutex_t mu;
  pthread_cond_t wake; /* to the worker: a job, files to close, or closing */
  pthread_cond_t done; /* to callers: a job ended, the slot is free, the worker ended */
  atomic_int refs;     /* the owner (until tb_inspect_close) and the worker */
  struct job *job;     /* the one job in flight, or NULL */
  bool stuck;          /* job was abandoned and is still running */
  bool closing, ended;
  struct tb_ifile *orphans; /* closed by their owner, for the worker to release */
  atomic_llong budget_ms;
  atomic_bool giving_up; /* the job's caller gave up: every further disk read fails */
  /* Held while a caller's callback runs on the worker, so that none runs
   * after the caller gave up and returned. */
  pthread_mutex_t cb_mu;
  /* Set at open, read-only afterwards (readers need no lock). */
  struct tb_disk *disk;
  TSK_VS_INFO *vs;
  struct vol *vols;
  size_t n_vols;
  /* The worker's alone: libtsk and the caches. */
  TSK_IMG_INFO *img;
  struct job *running;
  int64_t deadline_ms; /* of the job in progress */
  bool deadline_hit;
  uint64_t tick;
};

/* Handles whose worker overran a deadline and still runs, process-wide. */
static atomic_int n_stuck;

/* What libtsk sees: its image header first, then our handle. */
struct tsk_ext_img {
  TSK_IMG_INFO info;
  struct tb_inspect *ins;
};

static int64_t mono_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* On the worker: is the job in progress out of time, or given up? */
static bool past_deadline(struct tb_inspect *ins)
{
  if (ins->deadline_hit)
    return true;
  if (atomic_load(&ins->giving_up) || mono_ms() > ins->deadline_ms)
    ins->deadline_hit = true;
  return ins->deadline_hit;
}

static ssize_t img_read(TSK_IMG_INFO *img, TSK_OFF_T off, char *buf, size_t len)
{
  struct tb_inspect *ins = ((struct tsk_ext_img *)img)->ins;
  uint64_t size = tb_disk_size(ins->disk);
  if (off < 0 || (uint64_t)off >= size)
    return 0;
  if (len > size - (uint64_t)off)
    len = size - (uint64_t)off;
  if (past_deadline(ins)) {
    tsk_error_reset();
    tsk_error_set_errno(TSK_ERR_IMG_READ);
    tsk_error_set_errstr("time budget of the request spent");
    return -1;
  }
  if (tb_disk_pread(ins->disk, buf, len, (uint64_t)off) < 0) {
    tsk_error_reset();
    tsk_error_set_errno(TSK_ERR_IMG_READ);
    tsk_error_set_errstr("%s", tb_errmsg());
    return -1;
  }
  return (ssize_t)len;
}

static void img_close(TSK_IMG_INFO *img)
{
  free(img);
}

static void img_stat(TSK_IMG_INFO *img, FILE *f)
{
  fprintf(f, "tabula disk\n");
}

/* Fail with EIO, naming what failed and libtsk's (or the deadline's) reason. */
static int tsk_fail(struct tb_inspect *ins, const char *what)
{
  const char *why =
      ins->deadline_hit ? "the request took too long (damaged filesystem?)" : tsk_error_get();
  tb_error("%s: %s: %s", tb_disk_name(ins->disk), what, why && *why ? why : "unreadable");
  errno = EIO;
  return -1;
}

/* On the worker: call the caller's callback, unless the caller gave up.
 * Returns -1 (EIO) then, else enters the callback section: leave it with
 * callback_leave(). */
static int callback_enter(struct tb_inspect *ins)
{
  pthread_mutex_lock(&ins->cb_mu);
  if (atomic_load(&ins->running->abandoned)) {
    pthread_mutex_unlock(&ins->cb_mu);
    errno = EIO;
    return tb_error("%s: the request was given up", tb_disk_name(ins->disk));
  }
  return 0;
}

static void callback_leave(struct tb_inspect *ins)
{
  pthread_mutex_unlock(&ins->cb_mu);
}

void tb_inspect_set_budget(struct tb_inspect *ins, int64_t ms)
{
  atomic_store(&ins->budget_ms, ms > 0 ? ms : TB_INSPECT_DEFAULT_BUDGET_MS);
}

bool tb_inspect_stuck(struct tb_inspect *ins)
{
  pthread_mutex_lock(&ins->mu);
  bool stuck = ins->stuck;
  pthread_mutex_unlock(&ins->mu);
  return stuck;
}

struct tb_disk *tb_inspect_disk(struct tb_inspect *ins)
{
  return ins->disk;
}

size_t tb_inspect_n_volumes(const struct tb_inspect *ins)
{
  return ins->n_vols;
}

const struct tb_volume *tb_inspect_volume(const struct tb_inspect *ins, size_t i)
{
  return i < ins->n_vols ? &ins->vols[i].pub : NULL;
}

int tb_inspect_find_volume(const struct tb_inspect *ins, const char *name)
{
  for (size_t i = 0; i < ins->n_vols; i++)
    if (strcmp(ins->vols[i].pub.name, name) == 0)
      return (int)i;
  return -1;
}

/* -- metadata -- */

static enum tb_file_type meta_type(TSK_FS_META_TYPE_ENUM t)
{
  switch (t) {
  case TSK_FS_META_TYPE_REG:
    return TB_FT_REG;
  case TSK_FS_META_TYPE_DIR:
    return TB_FT_DIR;
  case TSK_FS_META_TYPE_LNK:
    return TB_FT_LNK;
  case TSK_FS_META_TYPE_CHR:
    return TB_FT_CHR;
  case TSK_FS_META_TYPE_BLK:
    return TB_FT_BLK;
  case TSK_FS_META_TYPE_FIFO:
    return TB_FT_FIFO;
  case TSK_FS_META_TYPE_SOCK:
    return TB_FT_SOCK;
  default:
    return TB_FT_OTHER;
  }
}

static enum tb_file_type name_type(TSK_FS_NAME_TYPE_ENUM t)
{
  switch (t) {
  case TSK_FS_NAME_TYPE_REG:
    return TB_FT_REG;
  case TSK_FS_NAME_TYPE_DIR:
    return TB_FT_DIR;
  case TSK_FS_NAME_TYPE_LNK:
    return TB_FT_LNK;
  default:
    return TB_FT_OTHER;
  }
}

static void fill_stat(const TSK_FS_META *m, struct tb_istat *st)
{
  memset(st, 0, sizeof *st);
  st->type = meta_type(m->type);
  st->inum = m->addr;
  st->size = m->size > 0 ? (uint64_t)m->size : 0;
  st->mode = (uint32_t)m->mode & 07777;
  st->uid = (uint32_t)m->uid;
  st->gid = (uint32_t)m->gid;
  st->nlink = m->nlink > 0 ? (uint32_t)m->nlink : 1;
  st->mtime = m->mtime;
  st->atime = m->atime;
  st->ctime = m->ctime;
  st->crtime = m->crtime;
  st->mtime_ns = m->mtime_nano < 1000000000 ? m->mtime_nano : 0;
  st->atime_ns = m->atime_nano < 1000000000 ? m->atime_nano : 0;
  st->ctime_ns = m->ctime_nano < 1000000000 ? m->ctime_nano : 0;
}

/* -- opening -- */

static const char *fs_type_name(TSK_FS_TYPE_ENUM t)
{
  if (TSK_FS_TYPE_ISNTFS(t))
    return "ntfs";
  if (t == TSK_FS_TYPE_EXFAT)
    return "exfat";
  const char *n = tsk_fs_type_toname(t);
  return n ? n : "unknown";
}

/* Partition number as Linux counts it: table slots for MBR primaries and GPT
 * entries, 5, 6... for MBR logical partitions (one per extended table). */
static int partition_number(const TSK_VS_INFO *vs, const TSK_VS_PART_INFO *p)
{
  if (vs->vstype == TSK_VS_TYPE_DOS && p->table_num > 0)
    return 4 + p->table_num;
  return p->slot_num + 1;
}

static int add_volume(struct tb_inspect *ins, TSK_FS_INFO *fs, int partno, uint64_t offset,
                      uint64_t length)
{
  struct vol *v = realloc(ins->vols, (ins->n_vols + 1) * sizeof *v);
  if (!v) {
    tsk_fs_close(fs);
    errno = ENOMEM;
    return tb_error("out of memory");
  }
  ins->vols = v;
  struct vol *nv = &v[ins->n_vols];
  memset(nv, 0, sizeof *nv);
  nv->fs = fs;
  nv->pub.partition = partno;
  nv->pub.offset = offset;
  nv->pub.length = length;
  nv->pub.block_size = fs->block_size;
  snprintf(nv->pub.fstype, sizeof nv->pub.fstype, "%s", fs_type_name(fs->ftype));
  if (partno > 0)
    snprintf(nv->pub.name, sizeof nv->pub.name, "p%d-%s", partno, nv->pub.fstype);
  else
    snprintf(nv->pub.name, sizeof nv->pub.name, "whole-%s", nv->pub.fstype);
  /* A hostile table could repeat a slot: keep names unique. */
  for (int k = 2; tb_inspect_find_volume(ins, nv->pub.name) >= 0; k++)
    snprintf(nv->pub.name, sizeof nv->pub.name, "p%d-%s-%d", partno, nv->pub.fstype, k);
  nv->root.type = TB_FT_DIR;
  nv->root.inum = fs->root_inum;
  nv->root.mode = 0555;
  nv->root.nlink = 2;
  TSK_FS_FILE *root = tsk_fs_file_open_meta(fs, NULL, fs->root_inum);
  if (root && root->meta) {
    fill_stat(root->meta, &nv->root);
    nv->root.type = TB_FT_DIR;
  }
  tsk_fs_file_close(root);
  ins->n_vols++;
  return 0;
}

/* Open the filesystem at byte OFF, trying only the types we promise.  Full
 * autodetection would also probe YAFFS2, HFS, APFS, UFS and ISO9660, which
 * costs many reads (tens of milliseconds over NBD) and finds nothing a
 * PC or VM guest uses. */
static TSK_FS_INFO *open_fs(TSK_IMG_INFO *img, uint64_t off)
{
  static const TSK_FS_TYPE_ENUM types[] = {TSK_FS_TYPE_NTFS_DETECT, TSK_FS_TYPE_FAT_DETECT,
                                           TSK_FS_TYPE_EXT_DETECT};
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
    TSK_FS_INFO *fs = tsk_fs_open_img(img, (TSK_OFF_T)off, types[i]);
    tsk_error_reset();
    if (fs)
      return fs;
  }
  return NULL;
}

static void open_partitions(struct tb_inspect *ins)
{
  TSK_VS_INFO *vs = ins->vs;
  for (TSK_PNUM_T i = 0; i < vs->part_count && !past_deadline(ins); i++) {
    const TSK_VS_PART_INFO *p = tsk_vs_part_get(vs, i);
    if (!p || !(p->flags & TSK_VS_PART_FLAG_ALLOC))
      continue;
    uint64_t off = (uint64_t)p->start * vs->block_size + vs->offset;
    uint64_t len = (uint64_t)p->len * vs->block_size;
    if (off >= tb_disk_size(ins->disk))
      continue;
    TSK_FS_INFO *fs = open_fs(ins->img, off);
    if (fs)
      add_volume(ins, fs, partition_number(vs, p), off, len);
  }
}

/* The partition table is read at open and never changes: no lock. */
int tb_inspect_partition(struct tb_inspect *ins, uint32_t n, uint64_t *off, uint64_t *len)
{
  int r = -1;
  TSK_VS_INFO *vs = ins->vs;
  for (TSK_PNUM_T i = 0; vs && i < vs->part_count && r == -1; i++) {
    const TSK_VS_PART_INFO *p = tsk_vs_part_get(vs, i);
    if (!p || !(p->flags & TSK_VS_PART_FLAG_ALLOC) || partition_number(vs, p) != (int)n)
      continue;
    *off = (uint64_t)p->start * vs->block_size + vs->offset;
    *len = (uint64_t)p->len * vs->block_size;
    r = 0;
  }
  if (r == -1) {
    errno = ENOENT;
    tb_error("partition %u does not exist in the partition table of %s", n,
             tb_disk_name(ins->disk));
  }
  return r;
}

/* On the worker: hand the disk to libtsk, find the volumes and filesystems. */
static int do_open(struct tb_inspect *ins)
{
  struct tsk_ext_img *ext = calloc(1, sizeof *ext);
  if (!ext) {
    errno = ENOMEM;
    return tb_error("%s: out of memory", tb_disk_name(ins->disk));
  }
  ext->ins = ins;
  ins->img = tsk_img_open_external(ext, (TSK_OFF_T)tb_disk_size(ins->disk), 512, img_read,
                                   img_close, img_stat);
  if (!ins->img) {
    tb_error("%s: libtsk cannot open the disk: %s", tb_disk_name(ins->disk), tsk_error_get());
    free(ext);
    errno = EIO;
    return -1;
  }
  ins->vs = tsk_vs_open(ins->img, 0, TSK_VS_TYPE_DETECT);
  tsk_error_reset();
  if (ins->vs)
    open_partitions(ins);
  if (ins->n_vols == 0 && !past_deadline(ins)) {
    /* No table, or a table without filesystems: try the whole disk. */
    TSK_FS_INFO *fs = open_fs(ins->img, 0);
    if (fs)
      add_volume(ins, fs, 0, 0, tb_disk_size(ins->disk));
  }
  return 0;
}

static void free_dir(struct cached_dir *d)
{
  if (!d)
    return;
  for (size_t i = 0; i < d->n; i++)
    free(d->v[i].name);
  free(d->v);
  free(d);
}

static void close_files(struct tb_ifile *f);

/* On the worker, last: release libtsk and the caches. */
static void teardown(struct tb_inspect *ins)
{
  close_files(ins->orphans);
  ins->orphans = NULL;
  for (size_t i = 0; i < ins->n_vols; i++) {
    for (size_t k = 0; k < ins->vols[i].n_dirs; k++)
      free_dir(ins->vols[i].dirs[k]);
    tsk_fs_close(ins->vols[i].fs);
  }
  free(ins->vols);
  ins->vols = NULL;
  ins->n_vols = 0;
  if (ins->vs)
    tsk_vs_close(ins->vs);
  if (ins->img)
    tsk_img_close(ins->img);
  tb_disk_unref(ins->disk);
}

/* ------------------------------------------------------------------ */
/* Directory listings                                                  */
/* ------------------------------------------------------------------ */

static int dent_cmp(const void *a, const void *b)
{
  return strcmp(((const struct dent *)a)->name, ((const struct dent *)b)->name);
}

static bool name_ok(const char *name)
{
  return name && *name && strcmp(name, ".") != 0 && strcmp(name, "..") != 0 && !strchr(name, '/') &&
         strlen(name) <= 1024;
}

/* An ext2/3 block map (no extents) reaching into the triple-indirect block:
 * libtsk's map builder visits every pointer of the triple-indirect tree
 * whatever the file's size (a million indirect blocks with 4 KiB blocks)
 * and appends each run by walking the whole list: an hour of CPU and a
 * hundred MiB for one damaged inode (or one honest file over 4 GiB), with
 * no read the deadline could stop.  Such files are refused. */
static bool needs_triple_indirect(const struct vol *v, const TSK_FS_META *m, uint64_t size)
{
  if (!TSK_FS_TYPE_ISEXT(v->fs->ftype) || m->content_type != TSK_FS_META_CONTENT_TYPE_DEFAULT)
    return false;
  uint64_t bs = v->fs->block_size, per_block = bs / 4;
  uint64_t mapped = 12 + per_block + per_block * per_block; /* direct, single, double */
  return bs > 0 && (size + bs - 1) / bs > mapped;
}

/* libtsk builds a file's run list in time quadratic in its length before
 * the first read, without a read the deadline could stop: a damaged inode
 * claiming a huge size hangs it.  So sizes no guest writes are refused
 * before libtsk sees them: symlinks over 64 KiB, directories larger than
 * their volume, files more than 16 times larger than their volume (sparse
 * files that large are unheard of in a PC or VM guest). */
static bool size_plausible(const struct vol *v, const TSK_FS_META *m)
{
  uint64_t vol = v->pub.length > (1u << 30) ? v->pub.length : (1u << 30);
  uint64_t size = m->size > 0 ? (uint64_t)m->size : 0;
  if (needs_triple_indirect(v, m, size))
    return false;
  switch (m->type) {
  case TSK_FS_META_TYPE_LNK:
    return size <= 65536;
  case TSK_FS_META_TYPE_DIR:
    return size <= vol;
  default:
    return size / 16 <= vol;
  }
}

/* Read directory INUM through libtsk into a sorted listing. */
static struct cached_dir *read_dir(struct tb_inspect *ins, struct vol *v, uint64_t inum)
{
  TSK_FS_FILE *dm = tsk_fs_file_open_meta(v->fs, NULL, (TSK_INUM_T)inum);
  bool plausible = dm && dm->meta && size_plausible(v, dm->meta);
  tsk_fs_file_close(dm);
  if (!plausible) {
    tsk_fail(ins, "implausible directory (damaged filesystem?)");
    return NULL;
  }
  TSK_FS_DIR *td = tsk_fs_dir_open_meta(v->fs, (TSK_INUM_T)inum);
  if (!td) {
    tsk_fail(ins, "cannot read directory");
    return NULL;
  }
  size_t n = tsk_fs_dir_getsize(td);
  if (n > TB_INSPECT_MAX_DIR_ENTRIES)
    n = TB_INSPECT_MAX_DIR_ENTRIES;
  struct cached_dir *d = calloc(1, sizeof *d);
  if (d && n)
    d->v = calloc(n, sizeof *d->v);
  if (!d || (n && !d->v)) {
    free(d);
    tsk_fs_dir_close(td);
    errno = ENOMEM;
    tb_error("out of memory listing a directory");
    return NULL;
  }
  d->inum = inum;
  for (size_t i = 0; i < n; i++) {
    if ((i & 255) == 0 && past_deadline(ins))
      break;
    const TSK_FS_NAME *nm = tsk_fs_dir_get_name(td, i);
    if (!nm || !(nm->flags & TSK_FS_NAME_FLAG_ALLOC) || !name_ok(nm->name))
      continue;
    struct tb_istat st = {
        .type = name_type(nm->type), .inum = nm->meta_addr, .mode = 0, .nlink = 1};
    TSK_FS_FILE *f = tsk_fs_dir_get(td, i);
    if (f && f->meta) {
      if (f->meta->type == TSK_FS_META_TYPE_VIRT || f->meta->type == TSK_FS_META_TYPE_VIRT_DIR) {
        tsk_fs_file_close(f);
        continue;
      }
      fill_stat(f->meta, &st);
    }
    tsk_fs_file_close(f);
    tsk_error_reset();
    char *name = strdup(nm->name);
    if (!name)
      continue;
    d->v[d->n++] = (struct dent){name, st};
  }
  tsk_fs_dir_close(td);
  if (ins->deadline_hit) {
    free_dir(d);
    tsk_fail(ins, "cannot read directory");
    return NULL;
  }
  if (d->n > 0)
    qsort(d->v, d->n, sizeof *d->v, dent_cmp);
  /* A damaged directory may name a file twice: keep the first. */
  size_t k = 0;
  for (size_t i = 0; i < d->n; i++) {
    if (k > 0 && strcmp(d->v[k - 1].name, d->v[i].name) == 0)
      free(d->v[i].name);
    else
      d->v[k++] = d->v[i];
  }
  d->n = k;
  return d;
}

static void evict_dirs(struct vol *v, size_t incoming)
{
  while (v->n_dirs > 0 &&
         (v->n_dirs >= DIR_CACHE_MAX || v->n_entries + incoming > DIR_CACHE_MAX_ENTRIES)) {
    size_t old = 0;
    for (size_t i = 1; i < v->n_dirs; i++)
      if (v->dirs[i]->tick < v->dirs[old]->tick)
        old = i;
    v->n_entries -= v->dirs[old]->n;
    free_dir(v->dirs[old]);
    v->dirs[old] = v->dirs[--v->n_dirs];
  }
}

/* The listing of directory INUM, from the cache or read now.  The pointer is
 * valid until the next get_dir() on the same volume. */
static struct cached_dir *get_dir(struct tb_inspect *ins, struct vol *v, uint64_t inum)
{
  for (size_t i = 0; i < v->n_dirs; i++)
    if (v->dirs[i]->inum == inum) {
      v->dirs[i]->tick = ++ins->tick;
      return v->dirs[i];
    }
  struct cached_dir *d = read_dir(ins, v, inum);
  if (!d)
    return NULL;
  evict_dirs(v, d->n);
  d->tick = ++ins->tick;
  v->dirs[v->n_dirs++] = d;
  v->n_entries += d->n;
  return d;
}

static const struct dent *find_dent(const struct cached_dir *d, const char *name)
{
  struct dent key = {.name = (char *)name};
  return d->n > 0 ? bsearch(&key, d->v, d->n, sizeof *d->v, dent_cmp) : NULL;
}

static struct vol *get_vol(struct tb_inspect *ins, size_t vol)
{
  if (vol >= ins->n_vols) {
    errno = ENOENT;
    tb_error("%s: no volume %zu", tb_disk_name(ins->disk), vol);
    return NULL;
  }
  return &ins->vols[vol];
}

/* Resolve PATH to its stat, one component at a time through the listings. */
static int resolve(struct tb_inspect *ins, struct vol *v, const char *path, struct tb_istat *out)
{
  struct tb_istat cur = v->root;
  const char *p = path;
  char comp[1100];
  while (*p) {
    while (*p == '/')
      p++;
    if (!*p)
      break;
    size_t len = strcspn(p, "/");
    if (len >= sizeof comp) {
      errno = ENAMETOOLONG;
      return tb_error("%s: name too long", path);
    }
    memcpy(comp, p, len);
    comp[len] = '\0';
    p += len;
    if (cur.type != TB_FT_DIR) {
      errno = ENOTDIR;
      return tb_error("%s: not a directory", path);
    }
    struct cached_dir *d = get_dir(ins, v, cur.inum);
    if (!d)
      return -1;
    const struct dent *e = find_dent(d, comp);
    if (!e) {
      errno = ENOENT;
      return tb_error("%s: no such file in %s", path, v->pub.name);
    }
    cur = e->st;
  }
  *out = cur;
  return 0;
}

/* The work of each request, on the worker.  They return -1 with errno and
 * tb_errmsg() on failure, like the public functions they serve. */

static int do_stat(struct tb_inspect *ins, struct job *j)
{
  struct vol *v = get_vol(ins, j->vol);
  return v ? resolve(ins, v, j->path, &j->st) : -1;
}

/* Copy a listing out of the cache: the cache may evict it while a walk recurses. */
static struct dent *copy_listing(const struct cached_dir *d, size_t *n)
{
  struct dent *v = calloc(d->n ? d->n : 1, sizeof *v);
  if (!v)
    return NULL;
  for (size_t i = 0; i < d->n; i++)
    v[i] = (struct dent){d->v[i].name, d->v[i].st};
  *n = d->n;
  return v;
}

static int do_readdir(struct tb_inspect *ins, struct job *j)
{
  struct vol *v = get_vol(ins, j->vol);
  struct tb_istat st;
  int r = v ? resolve(ins, v, j->path, &st) : -1;
  if (r == 0 && st.type != TB_FT_DIR) {
    errno = ENOTDIR;
    r = tb_error("%s: not a directory", j->path);
  }
  struct cached_dir *d = r == 0 ? get_dir(ins, v, st.inum) : NULL;
  if (r == 0 && !d)
    r = -1;
  /* The callback must not re-enter this handle (its request would wait for
   * this one), so the cached listing cannot move under us while we iterate. */
  for (size_t i = 0; r == 0 && i < d->n; i++) {
    if ((r = callback_enter(ins)) == 0) {
      r = j->dir_fn(j->ctx, d->v[i].name, &d->v[i].st);
      callback_leave(ins);
    }
  }
  return r;
}

/* ------------------------------------------------------------------ */
/* Files                                                               */
/* ------------------------------------------------------------------ */

struct tb_ifile {
  struct tb_inspect *ins;
  TSK_FS_FILE *file;
  uint64_t size;
  struct tb_ifile *next_orphan;
};

static TSK_FS_FILE *open_meta(struct tb_inspect *ins, struct vol *v, uint64_t inum)
{
  TSK_FS_FILE *f = tsk_fs_file_open_meta(v->fs, NULL, (TSK_INUM_T)inum);
  if (!f || !f->meta) {
    tsk_fs_file_close(f);
    tsk_fail(ins, "cannot read file metadata");
    return NULL;
  }
  if (!size_plausible(v, f->meta)) {
    tsk_fs_file_close(f);
    tsk_error_reset();
    tsk_fail(ins, "implausible file size (damaged filesystem?)");
    return NULL;
  }
  return f;
}

static int do_readlink(struct tb_inspect *ins, struct job *j)
{
  struct vol *v = get_vol(ins, j->vol);
  struct tb_istat st;
  int r = v ? resolve(ins, v, j->path, &st) : -1;
  if (r == 0 && st.type != TB_FT_LNK) {
    errno = EINVAL;
    r = tb_error("%s: not a symbolic link", j->path);
  }
  TSK_FS_FILE *f = r == 0 ? open_meta(ins, v, st.inum) : NULL;
  if (r == 0 && !f)
    r = -1;
  if (r == 0 && j->len > 0) {
    if (f->meta->link && *f->meta->link) {
      snprintf(j->buf, j->len, "%s", f->meta->link);
    } else {
      size_t want = st.size < j->len - 1 ? st.size : j->len - 1;
      ssize_t got = want ? tsk_fs_file_read(f, 0, j->buf, want, TSK_FS_FILE_READ_FLAG_NONE) : 0;
      if (got < 0)
        r = tsk_fail(ins, "cannot read symbolic link");
      else
        j->buf[got] = '\0';
    }
  }
  tsk_fs_file_close(f);
  return r;
}

static int do_open_file(struct tb_inspect *ins, struct job *j)
{
  struct vol *v = get_vol(ins, j->vol);
  if (!v || resolve(ins, v, j->path, &j->st) < 0)
    return -1;
  if (j->st.type == TB_FT_DIR) {
    errno = EISDIR;
    return tb_error("%s: is a directory", j->path);
  }
  j->file = open_meta(ins, v, j->st.inum);
  if (!j->file)
    return -1;
  j->st.size = j->file->meta->size > 0 ? (uint64_t)j->file->meta->size : 0;
  return 0;
}

static ssize_t do_pread(struct tb_inspect *ins, struct job *j)
{
  ssize_t r =
      tsk_fs_file_read(j->file, (TSK_OFF_T)j->off, j->buf, j->len, TSK_FS_FILE_READ_FLAG_NONE);
  if (r < 0)
    tsk_fail(ins, "cannot read file");
  return r;
}

/* Release files their owners closed (a list through next_orphan). */
static void close_files(struct tb_ifile *f)
{
  while (f) {
    struct tb_ifile *next = f->next_orphan;
    tsk_fs_file_close(f->file);
    free(f);
    f = next;
  }
}

/* ------------------------------------------------------------------ */
/* Walks, owners, changes                                              */
/* ------------------------------------------------------------------ */

/* Index of the first range that ends after OFF. */
static size_t ranges_lower_bound(const struct tb_ranges *r, uint64_t off)
{
  size_t lo = 0, hi = r->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (r->v[mid].off + r->v[mid].len <= off)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* Do the handle's disk and BASE differ in [off, off+len)?  An unreadable
 * disk, or a spent deadline, counts as a difference. */
static bool bytes_differ(struct tb_inspect *ins, struct tb_disk *base, uint64_t off, uint64_t len)
{
  struct tb_disk *live = ins->disk;
  /* Heap, not thread-local: every program linking lib/ (nbdkit's dozens of
   * threads among them) would carry 128 KiB of TLS per thread otherwise. */
  enum { CMP_BYTES = 65536 };
  char *a = malloc(2 * CMP_BYTES), *b = a + CMP_BYTES;
  bool differ = !a;
  while (!differ && len > 0) {
    size_t n = len < CMP_BYTES ? (size_t)len : CMP_BYTES;
    if (past_deadline(ins) || tb_disk_pread(live, a, n, off) < 0 ||
        tb_disk_pread(base, b, n, off) < 0 || memcmp(a, b, n) != 0)
      differ = true;
    off += n;
    len -= n;
  }
  free(a);
  return differ;
}

/* Does any content of file INUM lie in DIRTY (and, with BASE set, differ
 * there from BASE)?  Looks at every attribute (NTFS streams and index
 * allocations, ext extents, FAT chains), clipped to the attribute's size so
 * slack space does not count.  The dirty map has the overlay's block
 * granularity, coarser than many filesystems' blocks: comparing the bytes
 * with the base tells a file written from its neighbour in the same block. */
static bool content_touched(struct tb_inspect *ins, struct vol *v, uint64_t inum,
                            const struct tb_ranges *dirty, struct tb_disk *base)
{
  TSK_FS_FILE *f = tsk_fs_file_open_meta(v->fs, NULL, (TSK_INUM_T)inum);
  bool touched = false;
  int n = f && f->meta && size_plausible(v, f->meta) ? tsk_fs_file_attr_getsize(f) : 0;
  uint64_t bs = v->fs->block_size;
  for (int i = 0; i < n && !touched; i++) {
    const TSK_FS_ATTR *a = tsk_fs_file_attr_get_idx(f, i);
    if (!a || !(a->flags & TSK_FS_ATTR_NONRES) || a->size <= 0)
      continue;
    uint64_t asize = (uint64_t)a->size;
    int guard = 0;
    for (const TSK_FS_ATTR_RUN *run = a->nrd.run; run && !touched && guard < 1000000;
         run = run->next, guard++) {
      if (run->flags & (TSK_FS_ATTR_RUN_FLAG_FILLER | TSK_FS_ATTR_RUN_FLAG_SPARSE))
        continue;
      if (run->len == 0 || run->addr > UINT64_MAX / bs / 2 || run->len > UINT64_MAX / bs / 2 ||
          run->offset > UINT64_MAX / bs / 2)
        continue;
      uint64_t foff = run->offset * bs;
      if (foff >= asize)
        continue;
      uint64_t len = run->len * bs;
      if (len > asize - foff)
        len = asize - foff;
      uint64_t d0 = v->pub.offset + run->addr * bs, d1 = d0 + len;
      for (size_t k = ranges_lower_bound(dirty, d0); k < dirty->n && !touched; k++) {
        const struct tb_range *r = &dirty->v[k];
        if (r->off >= d1)
          break;
        uint64_t x0 = r->off > d0 ? r->off : d0;
        uint64_t x1 = r->off + r->len < d1 ? r->off + r->len : d1;
        touched = !base || bytes_differ(ins, base, x0, x1 - x0);
      }
    }
  }
  tsk_fs_file_close(f);
  tsk_error_reset();
  return touched;
}

struct walk {
  struct tb_inspect *ins;
  struct vol *v;
  const struct tb_ranges *dirty;
  struct tb_disk *base; /* compare touched bytes with this disk, or NULL */
  bool owners_only;     /* report only touched files */
  tb_inspect_walk_fn fn;
  void *ctx;
  uint64_t stack[WALK_MAX_DEPTH];
  int depth;
  char path[TB_PATH_MAX];
};

static int walk_dir(struct walk *w, uint64_t inum, size_t path_len)
{
  if (w->depth >= WALK_MAX_DEPTH)
    return 0;
  for (int i = 0; i < w->depth; i++)
    if (w->stack[i] == inum)
      return 0; /* a cycle in a damaged filesystem */
  struct cached_dir *cd = get_dir(w->ins, w->v, inum);
  if (!cd)
    return w->ins->deadline_hit ? -1 : 0; /* an unreadable directory is skipped */
  size_t n = 0;
  struct dent *list = copy_listing(cd, &n);
  char **names = calloc(n ? n : 1, sizeof *names);
  if (!list || !names) {
    free(list);
    free(names);
    errno = ENOMEM;
    return tb_error("out of memory walking a directory");
  }
  /* The cache may evict CD while we recurse: own the names. */
  for (size_t i = 0; i < n; i++)
    names[i] = list[i].name = strdup(list[i].name);
  w->stack[w->depth++] = inum;
  int r = 0;
  for (size_t i = 0; i < n && r == 0; i++) {
    if (past_deadline(w->ins)) {
      r = tsk_fail(w->ins, "walking the filesystem");
      break;
    }
    if (!list[i].name)
      continue;
    size_t nl = strlen(list[i].name);
    if (path_len + 1 + nl >= sizeof w->path)
      continue;
    w->path[path_len] = '/';
    memcpy(w->path + path_len + 1, list[i].name, nl + 1);
    bool touched = false;
    if (w->dirty && w->dirty->n > 0)
      touched = content_touched(w->ins, w->v, list[i].st.inum, w->dirty, w->base);
    if ((!w->owners_only || touched) && (r = callback_enter(w->ins)) == 0) {
      r = w->fn(w->ctx, w->path, &list[i].st, touched);
      callback_leave(w->ins);
    }
    if (r == 0 && list[i].st.type == TB_FT_DIR)
      r = walk_dir(w, list[i].st.inum, path_len + 1 + nl);
    w->path[path_len] = '\0';
  }
  w->depth--;
  for (size_t i = 0; i < n; i++)
    free(names[i]);
  free(names);
  free(list);
  return r;
}

static int do_walk(struct tb_inspect *ins, struct job *j)
{
  struct vol *v = get_vol(ins, j->vol);
  struct walk *w = v ? calloc(1, sizeof *w) : NULL;
  if (v && !w) {
    errno = ENOMEM;
    return tb_error("out of memory");
  }
  if (!w)
    return -1;
  *w = (struct walk){.ins = ins,
                     .v = v,
                     .dirty = j->has_dirty ? &j->dirty : NULL,
                     .base = j->base,
                     .owners_only = j->owners_only,
                     .fn = j->walk_fn,
                     .ctx = j->ctx};
  int r = walk_dir(w, v->root.inum, 0);
  free(w);
  return r;
}

/* ------------------------------------------------------------------ */
/* The worker and the deadline                                         */
/* ------------------------------------------------------------------ */

static void job_put(struct job *j)
{
  if (!j || atomic_fetch_sub(&j->refs, 1) != 1)
    return;
  free(j->path);
  free(j->buf);
  tb_ranges_free(&j->dirty);
  tb_disk_unref(j->base);
  free(j);
}

static void ins_put(struct tb_inspect *ins)
{
  if (atomic_fetch_sub(&ins->refs, 1) != 1)
    return;
  pthread_mutex_destroy(&ins->mu);
  pthread_mutex_destroy(&ins->cb_mu);
  pthread_cond_destroy(&ins->wake);
  pthread_cond_destroy(&ins->done);
  free(ins);
}

static void run_job(struct tb_inspect *ins, struct job *j)
{
  ins->running = j;
  ins->deadline_ms = j->deadline_ms;
  ins->deadline_hit = false;
  tsk_error_reset();
  switch (j->kind) {
  case JOB_OPEN:
    j->r = do_open(ins);
    break;
  case JOB_STAT:
    j->r = do_stat(ins, j);
    break;
  case JOB_READDIR:
    j->r = do_readdir(ins, j);
    break;
  case JOB_READLINK:
    j->r = do_readlink(ins, j);
    break;
  case JOB_OPEN_FILE:
    j->r = do_open_file(ins, j);
    break;
  case JOB_PREAD:
    j->r = do_pread(ins, j);
    break;
  case JOB_WALK:
    j->r = do_walk(ins, j);
    break;
  }
  if (j->r < 0) {
    j->err = errno ? errno : EIO;
    snprintf(j->msg, sizeof j->msg, "%s", tb_errmsg());
  }
  ins->running = NULL;
}

/* The worker: runs the handle's jobs one at a time, releases closed files
 * between them, and at the end the handle's libtsk state.  It owns that
 * state: a job overrunning its deadline delays the release, never races it. */
static void *worker_main(void *arg)
{
  struct tb_inspect *ins = arg;
  pthread_mutex_lock(&ins->mu);
  for (;;) {
    struct job *j = ins->job;
    if (ins->orphans && !ins->closing) {
      struct tb_ifile *files = ins->orphans;
      ins->orphans = NULL;
      pthread_mutex_unlock(&ins->mu);
      close_files(files);
      pthread_mutex_lock(&ins->mu);
    } else if (j && !j->started) {
      j->started = true;
      atomic_store(&ins->giving_up, false);
      pthread_mutex_unlock(&ins->mu);
      run_job(ins, j);
      pthread_mutex_lock(&ins->mu);
      j->done = true;
      ins->job = NULL;
      if (ins->stuck) {
        ins->stuck = false;
        atomic_fetch_sub(&n_stuck, 1);
        atomic_fetch_sub(&ins->disk->stuck, 1);
      }
      pthread_cond_broadcast(&ins->done);
      if (atomic_load(&j->abandoned) && j->file && j->kind == JOB_OPEN_FILE) {
        tsk_fs_file_close(j->file); /* opened for a caller who left */
        j->file = NULL;
      }
      job_put(j);
    } else if (ins->closing) {
      break;
    } else {
      pthread_cond_wait(&ins->wake, &ins->mu);
    }
  }
  pthread_mutex_unlock(&ins->mu);
  teardown(ins);
  pthread_mutex_lock(&ins->mu);
  ins->ended = true;
  pthread_cond_broadcast(&ins->done);
  pthread_mutex_unlock(&ins->mu);
  ins_put(ins);
  return NULL;
}

static void abs_timespec(int64_t mono, struct timespec *ts)
{
  ts->tv_sec = (time_t)(mono / 1000);
  ts->tv_nsec = (long)(mono % 1000) * 1000000;
}

static struct job *job_new(struct tb_inspect *ins, enum job_kind kind, int64_t deadline_ms)
{
  struct job *j = calloc(1, sizeof *j);
  if (!j) {
    errno = ENOMEM;
    tb_error("%s: out of memory", tb_disk_name(ins->disk));
    return NULL;
  }
  atomic_init(&j->refs, 1);
  atomic_init(&j->abandoned, false);
  j->kind = kind;
  j->deadline_ms = deadline_ms;
  return j;
}

static int64_t deadline_in(struct tb_inspect *ins, int factor)
{
  return mono_ms() + factor * (int64_t)atomic_load(&ins->budget_ms);
}

/* Run J on the worker and wait for it, at most until its deadline (plus
 * DEADLINE_SLACK_MS for the worker to notice the deadline itself and answer
 * with its own error).  Past that the job is abandoned: the handle is stuck,
 * and every request answers EIO at once until the job ends.  Returns the
 * job's result, or -1 with errno EIO.  The caller keeps its reference. */
static ssize_t run_request(struct tb_inspect *ins, struct job *j)
{
  struct timespec ts;
  abs_timespec(j->deadline_ms + DEADLINE_SLACK_MS, &ts);
  pthread_mutex_lock(&ins->mu);
  /* One job at a time: wait for the slot, as long as our own deadline allows. */
  while (ins->job && !ins->stuck && !ins->ended)
    if (pthread_cond_timedwait(&ins->done, &ins->mu, &ts) == ETIMEDOUT)
      break;
  if (ins->stuck || ins->job || ins->ended) {
    bool stuck = ins->stuck || ins->ended;
    pthread_mutex_unlock(&ins->mu);
    errno = EIO;
    return stuck ? tb_error("%s: an earlier request is still running past its deadline "
                            "(damaged filesystem?)",
                            tb_disk_name(ins->disk))
                 : tb_error("%s: busy with another request until the deadline",
                            tb_disk_name(ins->disk));
  }
  atomic_fetch_add(&j->refs, 1); /* the worker's */
  ins->job = j;
  pthread_cond_signal(&ins->wake);
  while (!j->done)
    if (pthread_cond_timedwait(&ins->done, &ins->mu, &ts) == ETIMEDOUT && !j->done) {
      atomic_store(&j->abandoned, true);
      atomic_store(&ins->giving_up, true);
      ins->stuck = true;
      atomic_fetch_add(&n_stuck, 1);
      atomic_fetch_add(&ins->disk->stuck, 1);
      pthread_cond_broadcast(&ins->done); /* requests waiting for the slot fail now */
      break;
    }
  bool ran = j->done;
  pthread_mutex_unlock(&ins->mu);
  if (!ran) {
    /* A callback of ours may be running: wait it out, none starts after. */
    pthread_mutex_lock(&ins->cb_mu);
    pthread_mutex_unlock(&ins->cb_mu);
    errno = EIO;
    return tb_error("%s: gave up on a request after its deadline (damaged filesystem?)",
                    tb_disk_name(ins->disk));
  }
  ssize_t r = j->r;
  if (r < 0) {
    tb_error("%s", j->msg);
    errno = j->err;
  }
  return r;
}

/* ------------------------------------------------------------------ */
/* Requests                                                            */
/* ------------------------------------------------------------------ */

struct tb_inspect *tb_inspect_open(struct tb_disk *disk)
{
  return tb_inspect_open_budget(disk, TB_INSPECT_DEFAULT_BUDGET_MS);
}

struct tb_inspect *tb_inspect_open_budget(struct tb_disk *disk, int64_t budget_ms)
{
  if (atomic_load(&n_stuck) >= TB_INSPECT_MAX_STUCK) {
    errno = EIO;
    tb_error("%s: %d inspections are still running past their deadline (damaged "
             "filesystems?): not opening another one until they end",
             tb_disk_name(disk), TB_INSPECT_MAX_STUCK);
    return NULL;
  }
  struct tb_inspect *ins = calloc(1, sizeof *ins);
  if (!ins) {
    errno = ENOMEM;
    tb_error("%s: out of memory", tb_disk_name(disk));
    return NULL;
  }
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_mutex_init(&ins->mu, NULL);
  pthread_mutex_init(&ins->cb_mu, NULL);
  pthread_cond_init(&ins->wake, &ca);
  pthread_cond_init(&ins->done, &ca);
  pthread_condattr_destroy(&ca);
  atomic_init(&ins->refs, 2);
  atomic_init(&ins->budget_ms, budget_ms > 0 ? budget_ms : TB_INSPECT_DEFAULT_BUDGET_MS);
  atomic_init(&ins->giving_up, false);
  ins->disk = tb_disk_ref(disk);

  pthread_attr_t ta;
  pthread_t tid;
  pthread_attr_init(&ta);
  pthread_attr_setdetachstate(&ta, PTHREAD_CREATE_DETACHED);
  int e = pthread_create(&tid, &ta, worker_main, ins);
  pthread_attr_destroy(&ta);
  if (e != 0) {
    errno = e;
    tb_error_errno("%s: cannot start an inspection thread", tb_disk_name(disk));
    tb_disk_unref(ins->disk);
    atomic_store(&ins->refs, 1);
    ins_put(ins);
    errno = e;
    return NULL;
  }
  struct job *j = job_new(ins, JOB_OPEN, deadline_in(ins, 1));
  ssize_t r = j ? run_request(ins, j) : -1;
  job_put(j);
  if (r < 0) {
    int err = errno;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", tb_errmsg());
    tb_inspect_close(ins);
    tb_error("%s", msg);
    errno = err;
    return NULL;
  }
  return ins;
}

/* The worker tears down and frees the handle; a stuck one does it when its
 * job ends, so close never waits for a deadline. */
void tb_inspect_close(struct tb_inspect *ins)
{
  if (!ins)
    return;
  pthread_mutex_lock(&ins->mu);
  ins->closing = true;
  pthread_cond_signal(&ins->wake);
  while (!ins->ended && !ins->stuck)
    pthread_cond_wait(&ins->done, &ins->mu);
  pthread_mutex_unlock(&ins->mu);
  ins_put(ins);
}

/* A copy of PATH for a job, or -1 (ENOMEM). */
static int job_path(struct job *j, const char *path)
{
  if ((j->path = strdup(path)))
    return 0;
  errno = ENOMEM;
  return tb_error("out of memory");
}

int tb_inspect_stat(struct tb_inspect *ins, size_t vol, const char *path, struct tb_istat *st)
{
  struct job *j = job_new(ins, JOB_STAT, deadline_in(ins, 1));
  if (!j || job_path(j, path) < 0) {
    job_put(j);
    return -1;
  }
  j->vol = vol;
  int r = (int)run_request(ins, j);
  if (r == 0)
    *st = j->st;
  job_put(j);
  return r;
}

int tb_inspect_readdir(struct tb_inspect *ins, size_t vol, const char *path, tb_inspect_dir_fn fn,
                       void *ctx)
{
  struct job *j = job_new(ins, JOB_READDIR, deadline_in(ins, 1));
  if (!j || job_path(j, path) < 0) {
    job_put(j);
    return -1;
  }
  j->vol = vol;
  j->dir_fn = fn;
  j->ctx = ctx;
  int r = (int)run_request(ins, j);
  job_put(j);
  return r;
}

int tb_inspect_readlink(struct tb_inspect *ins, size_t vol, const char *path, char *buf, size_t len)
{
  struct job *j = job_new(ins, JOB_READLINK, deadline_in(ins, 1));
  if (!j || job_path(j, path) < 0 || (len && !(j->buf = malloc(len)))) {
    job_put(j);
    errno = ENOMEM;
    return tb_error("out of memory");
  }
  j->vol = vol;
  j->len = len;
  int r = (int)run_request(ins, j);
  if (r == 0 && len > 0)
    memcpy(buf, j->buf, strnlen(j->buf, len - 1) + 1);
  job_put(j);
  return r;
}

struct tb_ifile *tb_inspect_open_file(struct tb_inspect *ins, size_t vol, const char *path)
{
  struct tb_ifile *fh = calloc(1, sizeof *fh);
  struct job *j = fh ? job_new(ins, JOB_OPEN_FILE, deadline_in(ins, 1)) : NULL;
  if (!j || job_path(j, path) < 0) {
    free(fh);
    job_put(j);
    errno = ENOMEM;
    tb_error("out of memory");
    return NULL;
  }
  j->vol = vol;
  if (run_request(ins, j) < 0) {
    free(fh);
    fh = NULL;
  } else {
    fh->ins = ins;
    fh->file = j->file;
    fh->size = j->st.size;
  }
  job_put(j);
  return fh;
}

uint64_t tb_ifile_size(const struct tb_ifile *f)
{
  return f->size;
}

ssize_t tb_ifile_pread(struct tb_ifile *f, void *buf, size_t len, uint64_t off)
{
  if (off >= f->size)
    return 0;
  if (len > f->size - off)
    len = f->size - off;
  if (len == 0)
    return 0;
  struct job *j = job_new(f->ins, JOB_PREAD, deadline_in(f->ins, 1));
  if (!j || !(j->buf = malloc(len))) {
    job_put(j);
    errno = ENOMEM;
    return tb_error("out of memory reading a file");
  }
  j->file = f->file;
  j->off = off;
  j->len = len;
  ssize_t r = run_request(f->ins, j);
  if (r > 0)
    memcpy(buf, j->buf, (size_t)r);
  job_put(j);
  return r;
}

/* Never waits: the worker releases the file between jobs. */
void tb_ifile_close(struct tb_ifile *f)
{
  if (!f)
    return;
  struct tb_inspect *ins = f->ins;
  pthread_mutex_lock(&ins->mu);
  f->next_orphan = ins->orphans;
  ins->orphans = f;
  pthread_cond_signal(&ins->wake);
  pthread_mutex_unlock(&ins->mu);
}

/* A walk of volume VOL as a job that ends by DEADLINE_MS. */
static int walk_request(struct tb_inspect *ins, size_t vol, const struct tb_ranges *dirty,
                        struct tb_disk *base, bool owners_only, tb_inspect_walk_fn fn, void *ctx,
                        int64_t deadline_ms)
{
  struct job *j = job_new(ins, JOB_WALK, deadline_ms);
  if (!j)
    return -1;
  j->vol = vol;
  j->walk_fn = fn;
  j->ctx = ctx;
  j->owners_only = owners_only;
  j->base = base ? tb_disk_ref(base) : NULL;
  if (dirty) {
    j->has_dirty = true;
    for (size_t i = 0; i < dirty->n; i++)
      if (tb_ranges_add(&j->dirty, dirty->v[i].off, dirty->v[i].len) < 0) {
        job_put(j);
        return -1;
      }
  }
  int r = (int)run_request(ins, j);
  job_put(j);
  return r;
}

/* A walk reads a whole tree: it gets TB_INSPECT_WALK_FACTOR budgets. */
int tb_inspect_walk(struct tb_inspect *ins, size_t vol, const struct tb_ranges *dirty,
                    tb_inspect_walk_fn fn, void *ctx)
{
  return walk_request(ins, vol, dirty, NULL, false, fn, ctx,
                      deadline_in(ins, TB_INSPECT_WALK_FACTOR));
}

int tb_inspect_owners(struct tb_inspect *ins, size_t vol, const struct tb_ranges *ranges,
                      tb_inspect_walk_fn fn, void *ctx)
{
  const struct tb_volume *v = tb_inspect_volume(ins, vol);
  if (!v) {
    errno = ENOENT;
    return tb_error("%s: no volume %zu", tb_disk_name(ins->disk), vol);
  }
  if (!ranges || !tb_ranges_intersect(ranges, v->offset, v->length))
    return 0;
  return walk_request(ins, vol, ranges, NULL, true, fn, ctx,
                      deadline_in(ins, TB_INSPECT_WALK_FACTOR));
}

/* -- diff -- */

struct entry {
  char *path;
  struct tb_istat st;
  bool touched, seen;
};

struct entries {
  struct entry *v;
  size_t n, cap;
};

static int entries_add(struct entries *e, const char *path, const struct tb_istat *st, bool touched)
{
  if (e->n == e->cap) {
    size_t cap = e->cap ? e->cap * 2 : 256;
    struct entry *v = realloc(e->v, cap * sizeof *v);
    if (!v)
      goto oom;
    e->v = v;
    e->cap = cap;
  }
  char *p = strdup(path);
  if (!p)
    goto oom;
  e->v[e->n++] = (struct entry){p, *st, touched, false};
  return 0;
oom:
  errno = ENOMEM;
  return tb_error("out of memory comparing filesystems");
}

static void entries_free(struct entries *e)
{
  for (size_t i = 0; i < e->n; i++)
    free(e->v[i].path);
  free(e->v);
  memset(e, 0, sizeof *e);
}

static int entry_cmp(const void *a, const void *b)
{
  return strcmp(((const struct entry *)a)->path, ((const struct entry *)b)->path);
}

static int collect_cb(void *ctx, const char *path, const struct tb_istat *st, bool touched)
{
  return entries_add(ctx, path, st, touched);
}

static bool meta_changed(const struct tb_istat *a, const struct tb_istat *b)
{
  if (a->type != b->type)
    return true;
  if (a->type == TB_FT_DIR)
    return a->mode != b->mode; /* entries added or removed show as their own lines */
  return a->size != b->size || a->mtime != b->mtime || a->mtime_ns != b->mtime_ns ||
         a->inum != b->inum || a->mode != b->mode || a->uid != b->uid || a->gid != b->gid;
}

struct change {
  enum tb_change kind;
  char *path;
  struct tb_istat st;
};

struct changes {
  struct change *v;
  size_t n, cap;
};

static int changes_add(struct changes *c, enum tb_change kind, const char *vol, const char *path,
                       const struct tb_istat *st)
{
  if (c->n == c->cap) {
    size_t cap = c->cap ? c->cap * 2 : 64;
    struct change *v = realloc(c->v, cap * sizeof *v);
    if (!v) {
      errno = ENOMEM;
      return tb_error("out of memory comparing filesystems");
    }
    c->v = v;
    c->cap = cap;
  }
  char *p;
  if (asprintf(&p, "%s%s", vol, path) < 0) {
    errno = ENOMEM;
    return tb_error("out of memory comparing filesystems");
  }
  c->v[c->n++] = (struct change){kind, p, *st};
  return 0;
}

static int change_cmp(const void *a, const void *b)
{
  return strcmp(((const struct change *)a)->path, ((const struct change *)b)->path);
}

/* Compare one volume present in BASE (index bi, or -1) and LIVE (li, or -1). */
static int diff_volume(struct tb_inspect *base, int bi, struct tb_inspect *live, int li,
                       const struct tb_ranges *dirty, int64_t deadline_ms, struct changes *out)
{
  struct entries be = {0}, le = {0};
  const char *vname = li >= 0 ? live->vols[li].pub.name : base->vols[bi].pub.name;
  int r = 0;
  if (bi >= 0)
    r = walk_request(base, (size_t)bi, NULL, NULL, false, collect_cb, &be, deadline_ms);
  if (r == 0 && li >= 0)
    r = walk_request(live, (size_t)li, dirty, base->disk, false, collect_cb, &le, deadline_ms);
  if (r == 0) {
    if (be.n > 0)
      qsort(be.v, be.n, sizeof *be.v, entry_cmp);
    for (size_t i = 0; i < le.n && r == 0; i++) {
      struct entry *l = &le.v[i];
      struct entry *b = be.n ? bsearch(l, be.v, be.n, sizeof *be.v, entry_cmp) : NULL;
      if (!b)
        r = changes_add(out, TB_CREATED, vname, l->path, &l->st);
      else {
        b->seen = true;
        if (meta_changed(&b->st, &l->st) || (l->touched && l->st.type == TB_FT_REG))
          r = changes_add(out, TB_CHANGED, vname, l->path, &l->st);
      }
    }
    for (size_t i = 0; i < be.n && r == 0; i++)
      if (!be.v[i].seen)
        r = changes_add(out, TB_DELETED, vname, be.v[i].path, &be.v[i].st);
  }
  entries_free(&be);
  entries_free(&le);
  return r;
}

int tb_inspect_diff(struct tb_inspect *base, struct tb_inspect *live, const struct tb_ranges *dirty,
                    tb_inspect_change_fn fn, void *ctx)
{
  struct changes out = {0};
  int r = 0;
  /* Two trees to walk: two walks' worth of time for the whole comparison. */
  int64_t deadline_ms = deadline_in(live, 2 * TB_INSPECT_WALK_FACTOR);
  for (size_t li = 0; li < live->n_vols && r == 0; li++) {
    const struct tb_volume *lv = &live->vols[li].pub;
    int bi = tb_inspect_find_volume(base, lv->name);
    if (bi >= 0 && dirty && !tb_ranges_intersect(dirty, lv->offset, lv->length))
      continue; /* nothing written there */
    r = diff_volume(base, bi, live, (int)li, dirty, deadline_ms, &out);
  }
  for (size_t bi = 0; bi < base->n_vols && r == 0; bi++)
    if (tb_inspect_find_volume(live, base->vols[bi].pub.name) < 0)
      r = diff_volume(base, (int)bi, live, -1, dirty, deadline_ms, &out);
  if (r == 0) {
    if (out.n > 0)
      qsort(out.v, out.n, sizeof *out.v, change_cmp);
    for (size_t i = 0; i < out.n && r == 0; i++)
      r = fn(ctx, out.v[i].kind, out.v[i].path, &out.v[i].st);
  }
  for (size_t i = 0; i < out.n; i++)
    free(out.v[i].path);
  free(out.v);
  return r;
}

const char *tb_change_name(enum tb_change kind)
{
  switch (kind) {
  case TB_CREATED:
    return "created";
  case TB_CHANGED:
    return "changed";
  case TB_DELETED:
    return "deleted";
  }
  return "?";
}

const char *tb_file_type_name(enum tb_file_type t)
{
  switch (t) {
  case TB_FT_REG:
    return "file";
  case TB_FT_DIR:
    return "dir";
  case TB_FT_LNK:
    return "symlink";
  case TB_FT_CHR:
    return "chardev";
  case TB_FT_BLK:
    return "blockdev";
  case TB_FT_FIFO:
    return "fifo";
  case TB_FT_SOCK:
    return "socket";
  case TB_FT_OTHER:
    break;
  }
  return "other";
}
