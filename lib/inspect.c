/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: inspection of guest disks with The Sleuth Kit (see inspect.h).
 *
 * How it works.  A tb_disk is a byte source (NBD export, file, callback).  A
 * tb_inspect hands the disk to libtsk through tsk_img_open_external(), finds
 * the volume system (MBR/GPT) or an unpartitioned filesystem, and opens each
 * recognised filesystem once.  Everything else is built from one primitive,
 * the directory listing: read_dir() reads a directory (ext and NTFS
 * directories with our own readers, which avoid libtsk's quadratic
 * tsk_fs_dir_add; the others through libtsk), keeps only allocated, real
 * (not TSK-virtual) entries with sane names, loads each entry's metadata,
 * sorts the entries by name and caches the result per volume (LRU, bounded
 * by directories and entries).  Path lookups walk these
 * listings with a binary search per component, so stat and lookup cost no
 * filesystem I/O once a directory is cached, and lookups can only ever find
 * what readdir shows.
 *
 * Robustness.  Each handle has a worker thread that alone touches libtsk and
 * the caches (content reads of a file mapped at open go to the disk from the
 * caller's thread: see struct frun); a public call packs its arguments into a job the worker owns,
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
#include <openssl/evp.h>
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
  /* Every read's result is checked (a failed one is an error, never
   * data), so libnbd need not zero each buffer first: a tenth of a
   * sequential read's time. */
  int r = nbd_set_pread_initialize(h, false);
  if (r == 0)
    r = nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION);
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
  /* Our own readers of what libtsk gets wrong or does not show (see
   * "Guest metadata" below), set up at the first use. */
  struct geom *ext_geom; /* ext: where each inode lives */
  bool ext_geom_tried;
  uint64_t fat_data_sect; /* FAT/exFAT: the sector libtsk's inode numbers count from */
  uint32_t fat_ssize, fat_per_sect;
  bool fat_tried;
};

/* Changes found by a diff, before they are sorted and reported. */
struct change {
  enum tb_change kind;
  char *path;
  struct tb_istat st;
  /* Changed by its content bytes alone, or a regular file with another
   * inode (deleted and made again, renamed over) and the same metadata:
   * confirmed against the base's copy of the file before it is reported
   * (content_differs: at the dirty file offsets, or the whole content). */
  enum { CONFIRM_NONE, CONFIRM_DIRTY, CONFIRM_WHOLE } confirm;
};

struct changes {
  struct change *v;
  size_t n, cap;
};

struct tb_inspect_index;
static void index_put(struct tb_inspect_index *idx);

/* A request shipped to a handle's worker thread.  The caller and the worker
 * each hold a reference; arguments and results live here, never on the
 * caller's stack, so a worker that overruns its deadline and is abandoned
 * only ever writes into memory it owns. */
enum job_kind {
  JOB_OPEN,
  JOB_STAT,
  JOB_READDIR,
  JOB_READLINK,
  JOB_OPEN_FILE,
  JOB_PREAD,
  JOB_WALK,
  JOB_INDEX,
  JOB_IDIFF,
  JOB_XATTRS,
  JOB_FRANGES
};

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
  struct frun *runs;    /* JOB_OPEN_FILE: the file's content map, if it has one */
  size_t n_runs;
  uint64_t off;
  size_t len;
  struct tb_inspect_index *index; /* JOB_IDIFF: a reference; JOB_INDEX: the result */
  size_t ivol;                    /* JOB_IDIFF: the volume in INDEX */
  /* results */
  struct changes *changes;    /* JOB_IDIFF */
  struct tb_xattrs *xattrs;   /* JOB_XATTRS */
  struct tb_ranges franges;   /* JOB_FRANGES: file offsets whose bytes lie in DIRTY */
  struct tb_diff_stats stats; /* JOB_IDIFF */
  char *buf;                  /* JOB_READLINK, JOB_PREAD: LEN bytes */
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

static bool fix_stat(struct tb_inspect *ins, struct vol *v, TSK_FS_FILE *f, const TSK_FS_NAME *nm,
                     struct tb_istat *st);
static void raw_free(struct vol *v);

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
    fix_stat(ins, nv, root, NULL, &nv->root);
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
    raw_free(&ins->vols[i]);
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

/* Names a listing can hold.  A guest with raw disk access can write names
 * no path component can be: with a '/', empty (a NUL first: libtsk stops
 * at a NUL), "." or ".." beyond a directory's own two entries, longer than
 * FUSE's 1024 bytes.  Dropping them would hide the file from the view and
 * from every rule, so they are listed under an escaped name instead: the
 * tb_guest_name() encoding (util.h) with '/' as "\x2f", "." as "\x2e" and
 * ".." as "\x2e\x2e", an empty name as "\x00", and a name still longer
 * than 1024 bytes cut to 1000 and ended with "\~" and 16 hex digits of the
 * sha256 of the whole name (so two long names stay apart).  Every other
 * name is listed as libtsk reports it, raw bytes and all. */
#define LIST_NAME_MAX 1024

struct name_seen {
  bool dot, dotdot; /* the directory's own "." and ".." were passed over */
};

static char *escaped_name(const char *raw)
{
  if (!*raw)
    return strdup("\\x00");
  if (strcmp(raw, ".") == 0 || strcmp(raw, "..") == 0)
    return strdup(raw[1] ? "\\x2e\\x2e" : "\\x2e");
  char *enc = tb_guest_name(raw);
  if (!enc)
    return NULL;
  size_t slashes = 0, n = strlen(enc);
  for (size_t i = 0; i < n; i++)
    slashes += enc[i] == '/';
  char *out = malloc(n + 3 * slashes + 24 + 1), *o = out;
  if (!out) {
    free(enc);
    return NULL;
  }
  for (size_t i = 0; i < n; i++) {
    if (enc[i] == '/') {
      memcpy(o, "\\x2f", 4);
      o += 4;
    } else {
      *o++ = enc[i];
    }
  }
  *o = '\0';
  free(enc);
  if ((size_t)(o - out) > LIST_NAME_MAX) {
    size_t cut = 1000; /* not inside a UTF-8 character or an escape */
    while (cut > 0 && ((unsigned char)out[cut] & 0xC0) == 0x80)
      cut--;
    for (size_t k = cut; k > 0 && k + 4 > cut; k--)
      if (out[k - 1] == '\\') {
        cut = k - 1;
        break;
      }
    unsigned char md[32];
    EVP_Digest(raw, strlen(raw), md, NULL, EVP_sha256(), NULL);
    char hex[65];
    tb_hex(md, 8, hex);
    snprintf(out + cut, 24, "\\~%s", hex);
  }
  return out;
}

/* The listed name of entry NM of directory DIR_INUM (malloc'd), or NULL
 * with errno 0 if the entry is not listed (the directory's own "." and
 * "..", libtsk's unallocated names), ENOMEM if out of memory. */
static char *entry_name(const TSK_FS_NAME *nm, struct name_seen *seen)
{
  errno = 0;
  if (!nm || !nm->name || !(nm->flags & TSK_FS_NAME_FLAG_ALLOC))
    return NULL;
  const char *name = nm->name;
  bool own = nm->type == TSK_FS_NAME_TYPE_DIR || nm->type == TSK_FS_NAME_TYPE_UNDEF;
  if (strcmp(name, ".") == 0 && !seen->dot && own) {
    seen->dot = true;
    return NULL;
  }
  if (strcmp(name, "..") == 0 && !seen->dotdot && own) {
    seen->dotdot = true;
    return NULL;
  }
  char *r = *name && strcmp(name, ".") != 0 && strcmp(name, "..") != 0 && !strchr(name, '/') &&
                    strlen(name) <= LIST_NAME_MAX
                ? strdup(name)
                : escaped_name(name);
  if (!r)
    errno = ENOMEM;
  return r;
}

/* An ext2/3 block map (no extents) reaching into the triple-indirect block:
 * libtsk's map builder visits every pointer of the triple-indirect tree
 * whatever the file's size (a million indirect blocks with 4 KiB blocks)
 * and appends each run by walking the whole list: an hour of CPU and a
 * hundred MiB for one damaged inode (or one honest file over 4 GiB), with
 * no read the deadline could stop.  Such files never reach it: a regular
 * one is read by our own walker (ext_bmap_pread), anything else refused. */
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
 * files that large are unheard of in a PC or VM guest), except ext4
 * extent-mapped files, whose size costs libtsk nothing. */
static bool ext_bmapped(const struct vol *v, const TSK_FS_META *m);
static bool size_plausible(const struct vol *v, const TSK_FS_META *m)
{
  uint64_t vol = v->pub.length > (1u << 30) ? v->pub.length : (1u << 30);
  uint64_t size = m->size > 0 ? (uint64_t)m->size : 0;
  if (needs_triple_indirect(v, m, size))
    return ext_bmapped(v, m); /* a regular file: our own reader's */
  switch (m->type) {
  case TSK_FS_META_TYPE_LNK:
    return size <= 65536;
  case TSK_FS_META_TYPE_DIR:
    return size <= vol;
  default:
    /* An ext4 extent tree maps a file in as many runs as it has extents,
     * each read from the disk (the deadline holds): its size costs nothing,
     * and sparse files of any size read (a 1 TiB one on a 560 MiB volume). */
    return m->content_type == TSK_FS_META_CONTENT_TYPE_EXT4_EXTENTS || size / 16 <= vol;
  }
}

/* ------------------------------------------------------------------ */
/* ext2/3 block maps past libtsk                                       */
/* ------------------------------------------------------------------ */

/* A regular ext2/3 file whose block map reaches the triple-indirect block
 * (over 4 GiB with 4 KiB blocks: a big file, a 5 GiB sparse one) is never
 * given to libtsk's map builder (needs_triple_indirect): this walker reads
 * it.  A file block is found by following at most three pointers from
 * i_block (libtsk's inode copy keeps the 15 pointers in content_ptr), each
 * read through libtsk's image cache, so a read costs the blocks it touches
 * and a sparse file its allocated blocks; nothing is built up front.  A
 * pointer past the volume's last block is damage: EIO.  Its runs (the dirty
 * map, the index) are enumerated within the file's size, each allocated
 * pointer once, checking the request's deadline as they go. */
#define EXT_NDIRECT 12
#define EXT_NPTRS 15

static bool raw_read(struct vol *v, uint64_t voff, void *buf, size_t len);

static bool ext_bmapped(const struct vol *v, const TSK_FS_META *m)
{
  uint64_t size = m->size > 0 ? (uint64_t)m->size : 0;
  return m->type == TSK_FS_META_TYPE_REG && needs_triple_indirect(v, m, size) && m->content_ptr &&
         m->content_len >= EXT_NPTRS * sizeof(TSK_DADDR_T) && v->fs->block_size >= 1024 &&
         v->fs->block_size <= 65536;
}

/* The disk block holding file block LBLK (0: a hole); false if the map is
 * damaged or unreadable. */
static bool ext_bmap_block(struct vol *v, const TSK_FS_META *m, uint64_t lblk, uint64_t *pblk)
{
  const TSK_DADDR_T *ip = m->content_ptr;
  uint64_t bs = v->fs->block_size, per = bs / 4, idx[3], p;
  int depth;
  if (lblk < EXT_NDIRECT) {
    p = ip[lblk];
    depth = 0;
  } else if ((lblk -= EXT_NDIRECT) < per) {
    p = ip[12];
    depth = 1;
    idx[0] = lblk;
  } else if ((lblk -= per) < per * per) {
    p = ip[13];
    depth = 2;
    idx[0] = lblk / per;
    idx[1] = lblk % per;
  } else if ((lblk -= per * per) < per * per * per) {
    p = ip[14];
    depth = 3;
    idx[0] = lblk / (per * per);
    idx[1] = lblk / per % per;
    idx[2] = lblk % per;
  } else {
    return false;
  }
  for (int d = 0; d < depth && p != 0; d++) {
    unsigned char b[4];
    if (p > v->fs->last_block || !raw_read(v, p * bs + idx[d] * 4, b, sizeof b))
      return false;
    p = tb_get_le32(b);
  }
  if (p > v->fs->last_block)
    return false;
  *pblk = p;
  return true;
}

/* LEN bytes of the file at OFF (clipped to its size), holes as zeros;
 * contiguous blocks are read at once. */
static ssize_t ext_bmap_pread(struct tb_inspect *ins, struct vol *v, const TSK_FS_META *m,
                              char *buf, size_t len, uint64_t off)
{
  uint64_t size = m->size > 0 ? (uint64_t)m->size : 0, bs = v->fs->block_size;
  if (off >= size)
    return 0;
  if (len > size - off)
    len = (size_t)(size - off);
  size_t done = 0;
  while (done < len) {
    uint64_t o = off + done, lblk = o / bs, p, q;
    size_t n = (size_t)(bs - o % bs);
    if (n > len - done)
      n = len - done;
    if (!ext_bmap_block(v, m, lblk, &p))
      return tsk_fail(ins, "cannot read file (damaged block map)");
    /* Extend over the next blocks while they follow on the disk (or
     * stay holes). */
    for (uint64_t k = 1; done + n < len; k++) {
      if (!ext_bmap_block(v, m, lblk + k, &q) || (p ? q != p + k : q != 0))
        break;
      n += len - done - n < bs ? len - done - n : (size_t)bs;
    }
    if (p == 0)
      memset(buf + done, 0, n);
    else if (!raw_read(v, p * bs + o % bs, buf + done, n))
      return tsk_fail(ins, "cannot read file");
    done += n;
  }
  return (ssize_t)done;
}

/* The file's content runs as disk byte ranges: FN(CTX, FOFF, d0, d1), FOFF
 * the file offset of d0, UINT64_MAX for an indirect block.  FN returns true
 * to stop. */
typedef bool (*bmap_run_fn)(void *ctx, uint64_t foff, uint64_t d0, uint64_t d1);
struct bmap_walk {
  struct tb_inspect *ins;
  struct vol *v;
  uint64_t nblk, size, visits;
  unsigned char *buf[3];
  bmap_run_fn fn;
  void *ctx;
  bool stop;
  uint64_t run_l, run_p, run_n; /* the data run being gathered */
};

static void bmap_flush(struct bmap_walk *w)
{
  if (w->run_n == 0 || w->stop)
    return;
  uint64_t bs = w->v->fs->block_size, foff = w->run_l * bs, len = w->run_n * bs;
  if (len > w->size - foff)
    len = w->size - foff;
  uint64_t d0 = w->v->pub.offset + w->run_p * bs;
  w->stop = w->fn(w->ctx, foff, d0, d0 + len);
  w->run_n = 0;
}

static void bmap_tree(struct bmap_walk *w, uint64_t p, int depth, uint64_t lbase)
{
  if (w->stop || p == 0 || lbase >= w->nblk)
    return;
  uint64_t bs = w->v->fs->block_size, per = bs / 4;
  if (p > w->v->fs->last_block || ((++w->visits & 4095) == 0 && past_deadline(w->ins))) {
    w->stop = true; /* damaged, or out of time: the runs so far */
    return;
  }
  if (depth == 0) {
    if (w->run_n > 0 && w->run_l + w->run_n == lbase && w->run_p + w->run_n == p) {
      w->run_n++;
      return;
    }
    bmap_flush(w);
    w->run_l = lbase;
    w->run_p = p;
    w->run_n = 1;
    return;
  }
  uint64_t d0 = w->v->pub.offset + p * bs;
  unsigned char *b = w->buf[depth - 1];
  if (w->fn(w->ctx, UINT64_MAX, d0, d0 + bs) || !raw_read(w->v, p * bs, b, bs)) {
    w->stop = true;
    return;
  }
  uint64_t span = 1;
  for (int d = 1; d < depth; d++)
    span *= per;
  for (uint64_t i = 0; i < per && !w->stop && lbase + i * span < w->nblk; i++)
    bmap_tree(w, tb_get_le32(b + 4 * i), depth - 1, lbase + i * span);
}

static void ext_bmap_runs(struct tb_inspect *ins, struct vol *v, const TSK_FS_META *m,
                          bmap_run_fn fn, void *ctx)
{
  uint64_t bs = v->fs->block_size, per = bs / 4;
  struct bmap_walk w = {.ins = ins, .v = v, .fn = fn, .ctx = ctx};
  w.size = m->size > 0 ? (uint64_t)m->size : 0;
  w.nblk = (w.size + bs - 1) / bs;
  unsigned char *mem = malloc(3 * bs);
  if (!mem)
    return;
  for (int d = 0; d < 3; d++)
    w.buf[d] = mem + d * bs;
  const TSK_DADDR_T *ip = m->content_ptr;
  for (uint64_t i = 0; i < EXT_NDIRECT && !w.stop; i++)
    bmap_tree(&w, ip[i], 0, i);
  bmap_tree(&w, ip[12], 1, EXT_NDIRECT);
  bmap_tree(&w, ip[13], 2, EXT_NDIRECT + per);
  bmap_tree(&w, ip[14], 3, EXT_NDIRECT + per + per * per);
  bmap_flush(&w);
  free(mem);
  tsk_error_reset();
}

/* ------------------------------------------------------------------ */
/* Guest metadata libtsk gets wrong or does not show                   */
/* ------------------------------------------------------------------ */

/* libtsk 4.11 reads what the view needs, except for what follows, which
 * our own bounded parsers of the on-disk records fix (read with tsk_fs_read,
 * through libtsk's image cache, so a record libtsk has just read costs no
 * I/O).  The view must show what the guest's own driver shows (tests/
 * fuse-fidelity.sh holds it to the kernel, ntfs-3g and exfat-fuse):
 *
 *  ext2/3/4   times are read unsigned and without ext4's epoch bits (1969
 *             showed as 2105): decoded from the raw inode as the kernel
 *             does; device numbers are not kept: from i_block as the kernel
 *             decodes them; extended attributes are not parsed: the in-inode
 *             area and the xattr block are (ext_xattrs).
 *  NTFS       the system files (MFT records below 16: $MFT, $Bitmap,
 *             $Extend...) are listed, and so are index entries whose MFT
 *             record was freed or reused (deleted names): hidden, by the
 *             record's allocation and sequence number, as ntfs-3g hides
 *             them; Interix symlinks (IntxLNK) and reparse points (symlinks,
 *             junctions) are plain files and directories: symlinks; owners
 *             are not Unix ids and modes not Unix modes: uid/gid 0, mode 0
 *             (the view shows 0444 and 0555); a directory's size is its
 *             $INDEX_ROOT's: its $I30 index allocation's, as ntfs-3g.
 *  FAT/exFAT  the volume label and exFAT's allocation bitmap and up-case
 *             table are listed as files: hidden; times go through mktime()
 *             in the process's time zone, are clamped before 2038, and
 *             exFAT's 10 ms field is taken modulo one second: decoded from
 *             the raw directory entry (FAT in UTC like the kernel with no
 *             tz= option, exFAT with its recorded UTC offset). */

#define EXT_XATTR_MAGIC 0xEA020000u
#define NTFS_FIRST_USER_RECORD 16 /* ntfs-3g's FILE_first_user */
#define REPARSE_MOUNT_POINT 0xA0000003u
#define REPARSE_SYMLINK 0xA000000Cu

struct geom;
static void geom_free(struct geom *g);
static bool ext_inode_off(struct tb_inspect *ins, struct vol *v, uint64_t inum, uint64_t *voff,
                          uint32_t *isz);

static void raw_free(struct vol *v)
{
  if (v->ext_geom) {
    geom_free(v->ext_geom);
    free(v->ext_geom);
    v->ext_geom = NULL;
  }
}

static uint64_t fnv64(uint64_t h, const void *p, size_t n)
{
  const unsigned char *b = p;
  if (h == 0)
    h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) {
    h ^= b[i];
    h *= 1099511628211ull;
  }
  return h;
}

/* LEN bytes at byte VOFF of the volume, through libtsk's cache. */
static bool raw_read(struct vol *v, uint64_t voff, void *buf, size_t len)
{
  bool ok = tsk_fs_read(v->fs, (TSK_OFF_T)voff, buf, len) == (ssize_t)len;
  if (!ok)
    tsk_error_reset();
  return ok;
}

/* Days from 1970-01-01 to Y-M-D (proleptic Gregorian). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
  y -= m <= 2;
  int64_t era = (y >= 0 ? y : y - 399) / 400;
  unsigned yoe = (unsigned)(y - era * 400);
  unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + (int64_t)doe - 719468;
}

/* Decoded names and values of a file's extended attributes, one at a time. */
typedef void (*xattr_fn)(void *ctx, const char *name, const unsigned char *val, size_t len);

/* -- ext -- */

static const char *ext_xattr_prefix(unsigned index)
{
  switch (index) {
  case 1:
    return "user.";
  case 4:
    return "trusted.";
  case 6:
    return "security.";
  default:
    return NULL; /* system.*: POSIX ACLs (stored in ext4's own format), inline data */
  }
}

/* The entries of an xattr area: ENTS (LEN bytes) holds the entries, their
 * values lie at offsets from BASE (BASE_LEN bytes). */
static void ext_xattr_entries(const unsigned char *base, size_t base_len, const unsigned char *ents,
                              size_t len, xattr_fn fn, void *ctx)
{
  size_t p = 0;
  for (int guard = 0; p + 16 <= len && guard < 4096; guard++) {
    const unsigned char *e = ents + p;
    if (tb_get_le32(e) == 0)
      break;
    unsigned nlen = e[0];
    uint32_t voff = tb_get_le16(e + 2), vinum = tb_get_le32(e + 4), vsize = tb_get_le32(e + 8);
    if (p + 16 + nlen > len)
      break;
    const char *prefix = ext_xattr_prefix(e[1]);
    if (prefix && vinum == 0 && vsize <= TB_XATTR_MAX && voff <= base_len &&
        vsize <= base_len - voff) {
      char name[300];
      snprintf(name, sizeof name, "%s%.*s", prefix, (int)nlen, (const char *)e + 16);
      fn(ctx, name, base + voff, vsize);
    }
    p += (16 + nlen + 3) & ~(size_t)3;
  }
}

/* Extended attributes of the raw inode INO (ISZ bytes): the in-inode area
 * after i_extra_isize, then the xattr block (i_file_acl). */
static void ext_xattrs(struct vol *v, const unsigned char *ino, uint32_t isz, xattr_fn fn,
                       void *ctx)
{
  uint32_t extra = isz > 128 ? tb_get_le16(ino + 128) : 0;
  if (extra && 128 + extra + 4 <= isz && tb_get_le32(ino + 128 + extra) == EXT_XATTR_MAGIC) {
    const unsigned char *first = ino + 128 + extra + 4;
    size_t n = isz - (128 + extra + 4);
    ext_xattr_entries(first, n, first, n, fn, ctx);
  }
  uint64_t blk = tb_get_le32(ino + 104) | (uint64_t)tb_get_le16(ino + 118) << 32;
  uint32_t bs = v->fs->block_size;
  if (blk == 0 || blk > v->fs->last_block || bs < 1024 || bs > 65536)
    return;
  unsigned char *b = malloc(bs);
  if (b && raw_read(v, blk * bs, b, bs) && tb_get_le32(b) == EXT_XATTR_MAGIC &&
      tb_get_le32(b + 8) == 1)
    ext_xattr_entries(b, bs, b + 32, bs - 32, fn, ctx);
  free(b);
}

/* Seconds as the kernel decodes them: a signed 32-bit field, plus the
 * epoch bits and nanoseconds of its _extra field when the inode has it. */
static int64_t ext_time(const unsigned char *ino, uint32_t isz, unsigned off, unsigned xoff,
                        uint32_t *ns)
{
  int64_t t = (int32_t)tb_get_le32(ino + off);
  uint32_t extra = isz > 128 ? tb_get_le16(ino + 128) : 0;
  if (xoff && 128 + extra >= xoff + 4 && xoff + 4 <= isz) {
    uint32_t x = tb_get_le32(ino + xoff);
    t += (int64_t)(x & 3) << 32;
    if (ns)
      *ns = (x >> 2) < 1000000000 ? x >> 2 : 0;
  }
  return t;
}

static void digest_xattr(void *ctx, const char *name, const unsigned char *val, size_t len)
{
  uint64_t *h = ctx;
  *h = fnv64(fnv64(*h, name, strlen(name) + 1), val, len);
  *h = fnv64(*h, &len, sizeof len);
}

static void ext_fix(struct tb_inspect *ins, struct vol *v, struct tb_istat *st)
{
  unsigned char ino[1024];
  uint64_t off;
  uint32_t isz;
  if (!ext_inode_off(ins, v, st->inum, &off, &isz) || isz > sizeof ino ||
      !raw_read(v, off, ino, isz)) {
    /* No raw inode: at least the sign of the 32-bit times. */
    st->mtime = (int32_t)(uint32_t)st->mtime;
    st->atime = (int32_t)(uint32_t)st->atime;
    st->ctime = (int32_t)(uint32_t)st->ctime;
    return;
  }
  st->atime = ext_time(ino, isz, 8, 140, &st->atime_ns);
  st->ctime = ext_time(ino, isz, 12, 132, &st->ctime_ns);
  st->mtime = ext_time(ino, isz, 16, 136, &st->mtime_ns);
  uint32_t extra = isz > 128 ? tb_get_le16(ino + 128) : 0;
  if (128 + extra >= 148)
    st->crtime = ext_time(ino, isz, 144, 148, NULL);
  if (st->type == TB_FT_CHR || st->type == TB_FT_BLK) {
    uint32_t b0 = tb_get_le32(ino + 40), b1 = tb_get_le32(ino + 44);
    if (b0) {
      st->rdev_major = (b0 >> 8) & 0xff;
      st->rdev_minor = b0 & 0xff;
    } else {
      st->rdev_major = (b1 & 0xfff00) >> 8;
      st->rdev_minor = (b1 & 0xff) | ((b1 >> 12) & 0xfff00);
    }
  }
  uint64_t h = 0;
  ext_xattrs(v, ino, isz, digest_xattr, &h);
  st->xdigest = h;
}

/* -- NTFS -- */

static bool ntfs_default_name(const char *name)
{
  return !name || !*name || strcmp(name, "$Data") == 0;
}

/* UTF-16LE (LEN bytes) into UTF-8 OUT (SIZE bytes, NUL-terminated);
 * backslashes become slashes.  Returns the length, or -1 if it does not fit. */
static ssize_t utf16_path(const unsigned char *p, size_t len, char *out, size_t size)
{
  size_t o = 0;
  for (size_t i = 0; i + 1 < len; i += 2) {
    uint32_t c = tb_get_le16(p + i);
    if (c >= 0xD800 && c < 0xDC00 && i + 3 < len && tb_get_le16(p + i + 2) >= 0xDC00 &&
        tb_get_le16(p + i + 2) < 0xE000) {
      c = 0x10000 + ((c - 0xD800) << 10) + (tb_get_le16(p + i + 2) - 0xDC00);
      i += 2;
    }
    if (c == 0)
      break;
    if (c == '\\')
      c = '/';
    char u[4];
    size_t n = c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
    if (n == 1)
      u[0] = (char)c;
    else if (n == 2)
      u[0] = (char)(0xC0 | c >> 6), u[1] = (char)(0x80 | (c & 0x3F));
    else if (n == 3)
      u[0] = (char)(0xE0 | c >> 12), u[1] = (char)(0x80 | ((c >> 6) & 0x3F)),
      u[2] = (char)(0x80 | (c & 0x3F));
    else
      u[0] = (char)(0xF0 | c >> 18), u[1] = (char)(0x80 | ((c >> 12) & 0x3F)),
      u[2] = (char)(0x80 | ((c >> 6) & 0x3F)), u[3] = (char)(0x80 | (c & 0x3F));
    if (o + n >= size)
      return -1;
    memcpy(out + o, u, n);
    o += n;
  }
  out[o] = '\0';
  return (ssize_t)o;
}

static const TSK_FS_ATTR *ntfs_attr(TSK_FS_FILE *f, uint32_t type)
{
  int n = tsk_fs_file_attr_getsize(f);
  for (int i = 0; i < n; i++) {
    const TSK_FS_ATTR *a = tsk_fs_file_attr_get_idx(f, i);
    if (a && (uint32_t)a->type == type)
      return a;
  }
  tsk_error_reset();
  return NULL;
}

/* The target of an NTFS symlink into OUT, or -1 if F is none: a reparse
 * point (a symlink: its substitute name, relative or, for an absolute one,
 * "\??\C:\x" as "/x" on this volume; a junction likewise) or an Interix
 * symlink (a system file holding "IntxLNK\1" and the UTF-16 target).
 * ntfs-3g shows absolute targets under its own mount point; the view keeps
 * them rooted at the volume (tabula-fuse(1)). */
static ssize_t ntfs_link(TSK_FS_FILE *f, char *out, size_t size)
{
  const TSK_FS_ATTR *rp = ntfs_attr(f, TSK_FS_ATTR_TYPE_NTFS_REPARSE);
  if (rp && (rp->flags & TSK_FS_ATTR_RES) && rp->rd.buf && rp->size >= 16) {
    const unsigned char *b = rp->rd.buf;
    size_t blen = (size_t)rp->size < rp->rd.buf_size ? (size_t)rp->size : rp->rd.buf_size;
    uint32_t tag = tb_get_le32(b);
    size_t hdr = tag == REPARSE_SYMLINK ? 20 : tag == REPARSE_MOUNT_POINT ? 16 : 0;
    if (!hdr || blen < hdr)
      return -1;
    size_t so = tb_get_le16(b + 8), sl = tb_get_le16(b + 10);
    bool relative = tag == REPARSE_SYMLINK && (tb_get_le32(b + 16) & 1);
    if (hdr + so > blen || sl > blen - hdr - so)
      return -1;
    ssize_t n = utf16_path(b + hdr + so, sl, out, size);
    if (n < 0 || relative)
      return n;
    /* "/??/C:/x" -> "/x"; other absolute forms are kept. */
    if (n >= 6 &&
        strncmp(out,
                "/?"
                "?/",
                4) == 0 &&
        out[5] == ':') {
      memmove(out, out + 6, (size_t)n - 5);
      n -= 6;
      if (n == 0) {
        snprintf(out, size, "/");
        n = 1;
      }
    }
    return n;
  }
  const TSK_FS_ATTR *si = ntfs_attr(f, TSK_FS_ATTR_TYPE_NTFS_SI);
  bool system = si && (si->flags & TSK_FS_ATTR_RES) && si->rd.buf && si->size >= 36 &&
                (tb_get_le32(si->rd.buf + 32) & 0x4);
  uint64_t sz = f->meta->size > 0 ? (uint64_t)f->meta->size : 0;
  if (!system || f->meta->type != TSK_FS_META_TYPE_REG || sz < 10 || sz > 8 + 2 * 4096)
    return -1;
  unsigned char buf[8 + 2 * 4096];
  if (tsk_fs_file_read(f, 0, (char *)buf, sz, TSK_FS_FILE_READ_FLAG_NONE) != (ssize_t)sz) {
    tsk_error_reset();
    return -1;
  }
  if (memcmp(buf, "IntxLNK\1", 8) != 0)
    return -1;
  return utf16_path(buf + 8, sz - 8, out, size);
}

/* Alternate data streams as "user.NAME" xattrs, as ntfs-3g shows them. */
static void ntfs_streams(TSK_FS_FILE *f, xattr_fn fn, void *ctx)
{
  int n = tsk_fs_file_attr_getsize(f);
  for (int i = 0; i < n; i++) {
    const TSK_FS_ATTR *a = tsk_fs_file_attr_get_idx(f, i);
    if (!a || a->type != TSK_FS_ATTR_TYPE_NTFS_DATA || ntfs_default_name(a->name) || a->size < 0 ||
        a->size > TB_XATTR_MAX)
      continue;
    char name[600];
    snprintf(name, sizeof name, "user.%s", a->name);
    size_t len = (size_t)a->size;
    unsigned char *val = malloc(len ? len : 1);
    if (val && (len == 0 || tsk_fs_attr_read(a, 0, (char *)val, len, TSK_FS_FILE_READ_FLAG_NONE) ==
                                (ssize_t)len))
      fn(ctx, name, val, len);
    free(val);
  }
  tsk_error_reset();
}

/* The digest of F's streams (names, sizes) and resident data (bytes). */
static uint64_t ntfs_digest(TSK_FS_FILE *f)
{
  uint64_t h = 0;
  int n = tsk_fs_file_attr_getsize(f);
  for (int i = 0; i < n; i++) {
    const TSK_FS_ATTR *a = tsk_fs_file_attr_get_idx(f, i);
    if (!a || a->type != TSK_FS_ATTR_TYPE_NTFS_DATA)
      continue;
    if (!ntfs_default_name(a->name)) {
      h = fnv64(h, a->name, strlen(a->name) + 1);
      h = fnv64(h, &a->size, sizeof a->size);
    }
    if ((a->flags & TSK_FS_ATTR_RES) && a->rd.buf && a->size > 0) {
      size_t len = (size_t)a->size < a->rd.buf_size ? (size_t)a->size : a->rd.buf_size;
      h = fnv64(h, a->rd.buf, len);
      h = fnv64(h, "r", 1);
    }
  }
  tsk_error_reset();
  return h;
}

/* False for what ntfs-3g does not list: system files, deleted names. */
static bool ntfs_fix(struct vol *v, TSK_FS_FILE *f, const TSK_FS_NAME *nm, struct tb_istat *st)
{
  const TSK_FS_META *m = f->meta;
  if (nm && (nm->meta_addr < NTFS_FIRST_USER_RECORD || !(m->flags & TSK_FS_META_FLAG_ALLOC) ||
             nm->meta_seq != m->seq))
    return false;
  st->uid = st->gid = 0;
  st->mode = 0;
  char target[4096];
  ssize_t n = ntfs_link(f, target, sizeof target);
  if (n >= 0) {
    st->type = TB_FT_LNK;
    st->size = (uint64_t)n;
  } else if (st->type == TB_FT_DIR) {
    const TSK_FS_ATTR *ia = ntfs_attr(f, TSK_FS_ATTR_TYPE_NTFS_IDXALLOC);
    st->size = ia && ia->size > 0 ? (uint64_t)ia->size : 0;
  }
  st->xdigest = ntfs_digest(f);
  return true;
}

/* -- FAT and exFAT -- */

/* Where libtsk's inode numbers point: inode I is the 32-byte directory
 * entry I - 3 counted from the first data sector (FAT12/16: the root
 * directory; FAT32 and exFAT: the cluster heap), as in its tsk_fatfs.h. */
static bool fat_setup(struct vol *v)
{
  if (!v->fat_tried) {
    v->fat_tried = true;
    unsigned char b[512];
    if (!raw_read(v, 0, b, sizeof b))
      return false;
    if (memcmp(b + 3, "EXFAT   ", 8) == 0) {
      unsigned shift = b[108];
      if (shift >= 9 && shift <= 12) {
        v->fat_ssize = 1u << shift;
        v->fat_data_sect = tb_get_le32(b + 88);
      }
    } else {
      uint32_t bps = tb_get_le16(b + 11),
               fatsz = tb_get_le16(b + 22) ? tb_get_le16(b + 22) : tb_get_le32(b + 36);
      if (bps >= 512 && bps <= 4096 && !(bps & (bps - 1))) {
        v->fat_ssize = bps;
        v->fat_data_sect = tb_get_le16(b + 14) + (uint64_t)b[16] * fatsz;
      }
    }
    v->fat_per_sect = v->fat_ssize / 32;
  }
  return v->fat_ssize > 0;
}

static bool fat_dentry(struct vol *v, uint64_t inum, unsigned char e[32])
{
  if (inum < 3 || !fat_setup(v))
    return false;
  uint64_t sect = (inum - 3) / v->fat_per_sect + v->fat_data_sect;
  uint64_t off = (inum - 3) % v->fat_per_sect * 32;
  if (sect > UINT64_MAX / v->fat_ssize / 2)
    return false;
  return raw_read(v, sect * v->fat_ssize + off, e, 32);
}

/* A DOS date and time (2-second steps) as seconds since the epoch, UTC. */
static int64_t fat_time(uint16_t date, uint16_t time)
{
  unsigned m = (date >> 5) & 15, d = date & 31;
  if (m < 1 || m > 12 || d < 1)
    return 0;
  return days_from_civil(1980 + (date >> 9), m, d) * 86400 + (time >> 11) * 3600 +
         ((time >> 5) & 63) * 60 + (time & 31) * 2;
}

/* An exFAT timestamp, its 10 ms increment (0-199) and UTC offset (bit 7:
 * valid; 15-minute steps, signed 7 bits). */
static int64_t exfat_time(uint32_t ts, unsigned cs, unsigned utc, uint32_t *ns)
{
  int64_t t = fat_time((uint16_t)(ts >> 16), (uint16_t)ts);
  if (cs < 200) {
    t += cs / 100;
    if (ns)
      *ns = cs % 100 * 10000000u;
  }
  if (utc & 0x80) {
    int o = utc & 0x7F;
    if (o & 0x40)
      o -= 0x80;
    t -= (int64_t)o * 15 * 60;
  }
  return t;
}

/* False for the label and exFAT's system entries. */
static bool fat_fix(struct vol *v, const TSK_FS_NAME *nm, struct tb_istat *st)
{
  st->uid = st->gid = 0;
  st->mode = 0;
  unsigned char e[32];
  if (!nm || !fat_dentry(v, st->inum, e))
    return true;
  if (v->fs->ftype == TSK_FS_TYPE_EXFAT) {
    if (e[0] != 0x85) /* a file entry; 0x81 bitmap, 0x82 up-case, 0x83 label, 0xA0 GUID... */
      return false;
    st->mtime_ns = st->atime_ns = st->ctime_ns = 0;
    st->crtime = exfat_time(tb_get_le32(e + 8), e[20], e[22], NULL);
    st->mtime = exfat_time(tb_get_le32(e + 12), e[21], e[23], &st->mtime_ns);
    st->atime = exfat_time(tb_get_le32(e + 16), 0, e[24], NULL);
    st->ctime = st->mtime;
    st->ctime_ns = st->mtime_ns;
    return true;
  }
  if ((e[11] & 0x3F) != 0x0F && (e[11] & 0x08)) /* a volume label, not a long-name slot */
    return false;
  st->mtime = st->ctime = fat_time(tb_get_le16(e + 24), tb_get_le16(e + 22));
  st->mtime_ns = st->ctime_ns = st->atime_ns = 0;
  st->atime = fat_time(tb_get_le16(e + 18), 0);
  st->crtime = fat_time(tb_get_le16(e + 16), tb_get_le16(e + 14)) + e[13] / 100;
  return true;
}

/* libtsk drops the first slot of a long name over 195 characters (it
 * takes a first slot numbered above 15 for garbage), so a 241-character
 * name lost its first 13.  For such a name (NAME, libtsk's) the slots are
 * read back from the 8.3 entry INUM of directory DIR (sector runs, in
 * order) and checked against the 8.3 name's checksum.  A new name
 * (malloc'd) or NULL to keep libtsk's. */
static char *fat_long_name(struct vol *v, TSK_FS_FILE *dir, uint64_t inum, const char *name)
{
  if (v->fs->ftype == TSK_FS_TYPE_EXFAT || strlen(name) < 190 || !dir || !fat_setup(v))
    return NULL;
  const TSK_FS_ATTR *a = tsk_fs_file_attr_get(dir);
  tsk_error_reset();
  unsigned char e[32];
  if (!a || !(a->flags & TSK_FS_ATTR_NONRES) || !fat_dentry(v, inum, e))
    return NULL;
  unsigned char sum = 0;
  for (int i = 0; i < 11; i++)
    sum = (unsigned char)(((sum & 1) << 7) + (sum >> 1) + e[i]);
  uint64_t sect = (inum - 3) / v->fat_per_sect + v->fat_data_sect;
  uint64_t slot = (inum - 3) % v->fat_per_sect;
  const TSK_FS_ATTR_RUN *run = a->nrd.run, *prev = NULL;
  for (int g = 0; run && g < 100000 && !(sect >= run->addr && sect < run->addr + run->len);
       g++, run = run->next)
    prev = run;
  if (!run)
    return NULL;
  unsigned char u16[20 * 26];
  size_t n = 0;
  for (unsigned k = 1; k <= 20; k++) {
    if (slot > 0) {
      slot--;
    } else if (sect > run->addr) {
      sect--, slot = v->fat_per_sect - 1;
    } else if (prev) {
      sect = prev->addr + prev->len - 1, slot = v->fat_per_sect - 1;
      const TSK_FS_ATTR_RUN *p = a->nrd.run, *pp = NULL;
      for (int g = 0; p && p != prev && g < 100000; g++, p = p->next)
        pp = p;
      run = prev, prev = pp;
    } else {
      return NULL;
    }
    uint64_t ino = (sect - v->fat_data_sect) * v->fat_per_sect + slot + 3;
    if (!fat_dentry(v, ino, e) || (e[11] & 0x3F) != 0x0F || e[13] != sum || (e[0] & 0x3F) != k)
      return NULL;
    static const unsigned char at[13] = {1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30};
    for (int i = 0; i < 13; i++, n += 2)
      memcpy(u16 + n, e + at[i], 2);
    if (e[0] & 0x40) {
      char *out = malloc(4 * 20 * 13 + 1);
      if (out && utf16_path(u16, n, out, 4 * 20 * 13 + 1) <= 0) {
        free(out);
        out = NULL;
      }
      return out;
    }
  }
  return NULL;
}

/* Correct ST (filled from F's metadata, the entry NM or NULL for a root)
 * where libtsk is wrong; false if the entry is not to be listed. */
static bool fix_stat(struct tb_inspect *ins, struct vol *v, TSK_FS_FILE *f, const TSK_FS_NAME *nm,
                     struct tb_istat *st)
{
  TSK_FS_TYPE_ENUM t = v->fs->ftype;
  if (TSK_FS_TYPE_ISEXT(t)) {
    ext_fix(ins, v, st);
    return true;
  }
  if (TSK_FS_TYPE_ISNTFS(t))
    return ntfs_fix(v, f, nm, st);
  if (TSK_FS_TYPE_ISFAT(t) || t == TSK_FS_TYPE_EXFAT) {
    /* libtsk keeps the first cluster's address in content_ptr[0]. */
    const TSK_FS_META *m = f ? f->meta : NULL;
    st->first_data = m && m->content_ptr && m->content_len >= sizeof(TSK_DADDR_T)
                         ? ((const TSK_DADDR_T *)m->content_ptr)[0]
                         : 0;
    return fat_fix(v, nm, st);
  }
  return true;
}

static void collect_xattr(void *ctx, const char *name, const unsigned char *val, size_t len)
{
  struct tb_xattrs *x = ctx;
  struct tb_xattr *nv = realloc(x->v, (x->n + 1) * sizeof *nv);
  if (!nv)
    return;
  x->v = nv;
  char *n = strdup(name);
  unsigned char *b = malloc(len ? len : 1);
  if (!n || !b) {
    free(n);
    free(b);
    return;
  }
  memcpy(b, val, len);
  x->v[x->n++] = (struct tb_xattr){n, b, len};
}

void tb_xattrs_free(struct tb_xattrs *x)
{
  for (size_t i = 0; x && i < x->n; i++) {
    free(x->v[i].name);
    free(x->v[i].value);
  }
  if (x) {
    free(x->v);
    memset(x, 0, sizeof *x);
  }
}

/* The stat of entry I (name NM) of TD, as listings show it: its metadata, or
 * what the name says if that is unreadable.  False for libtsk's virtual
 * files and directories, which listings leave out. */
static bool file_stat(struct tb_inspect *ins, struct vol *v, TSK_FS_FILE *f, const TSK_FS_NAME *nm,
                      struct tb_istat *st);
static bool entry_stat(struct tb_inspect *ins, struct vol *v, TSK_FS_DIR *td, size_t i,
                       const TSK_FS_NAME *nm, struct tb_istat *st)
{
  *st = (struct tb_istat){.type = name_type(nm->type), .inum = nm->meta_addr, .nlink = 1};
  if (TSK_FS_TYPE_ISNTFS(v->fs->ftype) && nm->meta_addr < NTFS_FIRST_USER_RECORD)
    return false; /* a system file, whether or not its record reads */
  return file_stat(ins, v, tsk_fs_dir_get(td, i), nm, st);
}

/* ST (with the name's type and inode) from file F, which is closed. */
static bool file_stat(struct tb_inspect *ins, struct vol *v, TSK_FS_FILE *f, const TSK_FS_NAME *nm,
                      struct tb_istat *st)
{
  bool keep = true;
  if (f && f->meta) {
    if (f->meta->type == TSK_FS_META_TYPE_VIRT || f->meta->type == TSK_FS_META_TYPE_VIRT_DIR)
      keep = false;
    else {
      fill_stat(f->meta, st);
      keep = fix_stat(ins, v, f, nm, st);
    }
  }
  tsk_fs_file_close(f);
  tsk_error_reset();
  return keep;
}

/* ext directories, read by us: libtsk's tsk_fs_dir_add looks for a
 * duplicate among every name already added, so listing a directory costs
 * the square of its size (a 20,000-entry directory: 75% of a find's time,
 * half a second).  The blocks are read through libtsk (its extent or block
 * map) and their entries followed by rec_len, as the kernel does: "." and
 * "..", the htree's index blocks and metadata_csum's tail are entries of
 * inode 0 or passed over like libtsk's.  Inline-data directories, and any
 * block whose chain does not parse exactly (where libtsk scans for
 * remnants), go to libtsk: *FALLBACK is set. */
static bool dir_add(struct cached_dir *d, size_t *cap, char *name, const struct tb_istat *st)
{
  if (d->n == *cap) {
    size_t nc = *cap ? *cap * 2 : 64;
    struct dent *nv = realloc(d->v, nc * sizeof *nv);
    if (!nv)
      return false;
    d->v = nv;
    *cap = nc;
  }
  d->v[d->n++] = (struct dent){name, *st};
  return true;
}

static TSK_FS_NAME_TYPE_ENUM ext_name_type(unsigned ft)
{
  static const TSK_FS_NAME_TYPE_ENUM map[] = {
      TSK_FS_NAME_TYPE_UNDEF, TSK_FS_NAME_TYPE_REG,  TSK_FS_NAME_TYPE_DIR,  TSK_FS_NAME_TYPE_CHR,
      TSK_FS_NAME_TYPE_BLK,   TSK_FS_NAME_TYPE_FIFO, TSK_FS_NAME_TYPE_SOCK, TSK_FS_NAME_TYPE_LNK};
  return ft < sizeof map / sizeof *map ? map[ft] : TSK_FS_NAME_TYPE_UNDEF;
}

static struct cached_dir *ext_read_dir(struct tb_inspect *ins, struct vol *v, TSK_FS_FILE *dm,
                                       uint64_t inum, bool *fallback)
{
  uint64_t bs = v->fs->block_size, size = dm->meta->size > 0 ? (uint64_t)dm->meta->size : 0;
  *fallback = true;
  if (dm->meta->content_type == TSK_FS_META_CONTENT_TYPE_EXT4_INLINE || bs < 1024 || bs > 65536 ||
      size == 0 || size % bs != 0)
    return NULL;
  unsigned char *blk = malloc(bs);
  struct cached_dir *d = calloc(1, sizeof *d);
  size_t cap = 0;
  bool ok = blk && d;
  if (d)
    d->inum = inum;
  struct name_seen seen = {0};
  for (uint64_t off = 0; ok && off < size; off += bs) {
    if (past_deadline(ins) || tsk_fs_file_read(dm, (TSK_OFF_T)off, (char *)blk, bs,
                                               TSK_FS_FILE_READ_FLAG_NONE) != (ssize_t)bs) {
      ok = false;
      break;
    }
    for (size_t idx = 0; ok && idx < bs;) {
      if (idx + 8 > bs) {
        ok = false;
        break;
      }
      uint32_t ino = tb_get_le32(blk + idx);
      unsigned reclen = tb_get_le16(blk + idx + 4), nl = blk[idx + 6];
      if (reclen < 8 || reclen % 4 || idx + reclen > bs ||
          (ino && (nl == 0 || 8 + nl > reclen || ino > v->fs->last_inum))) {
        ok = false;
        break;
      }
      if (ino && d->n < TB_INSPECT_MAX_DIR_ENTRIES) {
        char raw[256];
        memcpy(raw, blk + idx + 8, nl);
        raw[nl] = 0;
        TSK_FS_NAME nm = {.name = raw,
                          .meta_addr = ino,
                          .flags = TSK_FS_NAME_FLAG_ALLOC,
                          .type = ext_name_type(blk[idx + 7])};
        char *name = entry_name(&nm, &seen);
        struct tb_istat st = {.type = name_type(nm.type), .inum = ino, .nlink = 1};
        if (name && file_stat(ins, v, tsk_fs_file_open_meta(v->fs, NULL, ino), &nm, &st)) {
          if (!dir_add(d, &cap, name, &st)) {
            free(name);
            *fallback = false; /* out of memory */
            ok = false;
          }
        } else {
          free(name);
        }
      }
      idx += reclen;
    }
  }
  free(blk);
  tsk_error_reset();
  if (ok)
    return d;
  if (ins->deadline_hit)
    *fallback = false;
  if (d)
    free_dir(d);
  return NULL;
}

/* NTFS directories, read by us: libtsk's ntfs_dir_open_meta adds each
 * name with tsk_fs_dir_add, which compares it with every name already
 * added (a 5,000-entry directory: three quarters of its listing time),
 * scans the slack of every index block for deleted names, and at the first
 * listing walks the whole MFT for files naming the directory as parent
 * that its index lacks.  None of that is what ntfs-3g shows: it lists the
 * index, the $INDEX_ROOT and the index blocks of $INDEX_ALLOCATION that
 * $BITMAP marks in use, in order, without DOS (8.3) names.  So do we,
 * through the directory's attributes as libtsk loaded them (attribute
 * lists included) and libtsk's reads, with the same checks on each entry
 * as libtsk (parent reference, lengths inside the record) and its lenient
 * UTF-16 decoding (ntfs_name).  Anything that does not parse exactly (a
 * record without its magic, a bad update sequence, an entry running past
 * its record) goes to libtsk: *FALLBACK is set. */
#define NTFS_ATTR_FILE_NAME 0x30
#define NTFS_INDEX_ENTRY_LAST 0x02
#define NTFS_FNAME_FLAG_DIR 0x10000000u
#define NTFS_NS_DOS 2
#define NTFS_SECTOR 512

/* An index entry's name as libtsk decodes it (tsk_UTF16toUTF8, lenient):
 * an unpaired surrogate is '^' (a high one takes the unit after it
 * along), a high surrogate at the very end makes the name empty. */
static void ntfs_name(const unsigned char *p, size_t units, char *out)
{
  size_t o = 0;
  for (size_t i = 0; i < units; i++) {
    uint32_t c = tb_get_le16(p + 2 * i);
    if (c >= 0xD800 && c < 0xDC00) {
      if (i + 1 >= units) {
        o = 0;
        break;
      }
      uint32_t c2 = tb_get_le16(p + 2 * ++i);
      c = c2 >= 0xDC00 && c2 < 0xE000 ? ((c - 0xD800) << 10) + (c2 - 0xDC00) + 0x10000 : '^';
    } else if (c >= 0xDC00 && c < 0xE000) {
      c = '^';
    }
    if (c < 0x80) {
      out[o++] = (char)c;
    } else if (c < 0x800) {
      out[o++] = (char)(0xC0 | c >> 6);
      out[o++] = (char)(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
      out[o++] = (char)(0xE0 | c >> 12);
      out[o++] = (char)(0x80 | ((c >> 6) & 0x3F));
      out[o++] = (char)(0x80 | (c & 0x3F));
    } else {
      out[o++] = (char)(0xF0 | c >> 18);
      out[o++] = (char)(0x80 | ((c >> 12) & 0x3F));
      out[o++] = (char)(0x80 | ((c >> 6) & 0x3F));
      out[o++] = (char)(0x80 | (c & 0x3F));
    }
  }
  out[o] = '\0';
}

/* An entry as the index names it, for a listing without metadata
 * (ntfs_list_names: the indexed diff loads only what it compares). */
struct ntfs_name {
  char *name;
  uint64_t ref;
  uint16_t seq;
  TSK_FS_NAME_TYPE_ENUM type;
};

struct ntfs_dir_read {
  struct tb_inspect *ins;
  struct vol *v;
  struct cached_dir *d; /* with the entries' metadata, or */
  size_t cap;
  struct ntfs_name *names; /* ... without, when names_only */
  size_t n_names, cap_names;
  bool names_only;
  struct name_seen seen;
  bool oom;
};

static bool ntfs_name_add(struct ntfs_dir_read *x, char *name, const TSK_FS_NAME *nm)
{
  if (x->n_names == x->cap_names) {
    size_t nc = x->cap_names ? x->cap_names * 2 : 64;
    struct ntfs_name *nv = realloc(x->names, nc * sizeof *nv);
    if (!nv)
      return false;
    x->names = nv;
    x->cap_names = nc;
  }
  x->names[x->n_names++] = (struct ntfs_name){name, nm->meta_addr, nm->meta_seq, nm->type};
  return true;
}

/* The entries of one index node (BUF[OFF, END)); false if they do not
 * parse exactly. */
static bool ntfs_index_entries(struct ntfs_dir_read *x, const unsigned char *buf, size_t off,
                               size_t end)
{
  while (off + 16 <= end) {
    const unsigned char *e = buf + off;
    uint32_t len = tb_get_le16(e + 8), klen = tb_get_le16(e + 10), flags = tb_get_le32(e + 12);
    if (flags & NTFS_INDEX_ENTRY_LAST)
      return true;
    if (len < 16 + 66 || len % 8 || len > end - off || klen < 66 || klen > len - 16)
      return false;
    const unsigned char *fn = e + 16;
    unsigned units = fn[64], ns = fn[65];
    uint64_t ref = tb_get_le64(e) & 0xFFFFFFFFFFFFull, parent = tb_get_le64(fn) & 0xFFFFFFFFFFFFull;
    if (66 + 2u * units > klen)
      return false;
    off += len;
    /* libtsk's checks: a reference inside the MFT, naming this directory */
    if (ns == NTFS_NS_DOS || ref < x->v->fs->first_inum || ref > x->v->fs->last_inum ||
        parent != x->d->inum ||
        (x->names_only ? x->n_names : x->d->n) >= TB_INSPECT_MAX_DIR_ENTRIES)
      continue;
    char raw[4 * 255 + 1];
    ntfs_name(fn + 66, units, raw);
    TSK_FS_NAME nm = {.name = raw,
                      .meta_addr = ref,
                      .meta_seq = tb_get_le16(e + 6),
                      .flags = TSK_FS_NAME_FLAG_ALLOC,
                      .type = tb_get_le32(fn + 56) & NTFS_FNAME_FLAG_DIR ? TSK_FS_NAME_TYPE_DIR
                                                                         : TSK_FS_NAME_TYPE_REG};
    char *name = entry_name(&nm, &x->seen);
    struct tb_istat st = {.type = name_type(nm.type), .inum = ref, .nlink = 1};
    if (name && x->names_only && ref >= NTFS_FIRST_USER_RECORD) {
      if (!ntfs_name_add(x, name, &nm)) {
        free(name);
        x->oom = true;
        return false;
      }
    } else if (name && !x->names_only && ref >= NTFS_FIRST_USER_RECORD &&
               file_stat(x->ins, x->v, tsk_fs_file_open_meta(x->v->fs, NULL, ref), &nm, &st)) {
      if (!dir_add(x->d, &x->cap, name, &st)) {
        free(name);
        x->oom = true;
        return false;
      }
    } else {
      free(name);
    }
  }
  return off == end;
}

/* Undo the update sequence of an index record of SIZE bytes in place. */
static bool ntfs_fixup(unsigned char *rec, size_t size)
{
  size_t usa = tb_get_le16(rec + 4), count = tb_get_le16(rec + 6);
  if (count < 1 || usa + 2 * count > size || (count - 1) * NTFS_SECTOR > size)
    return false;
  for (size_t i = 1; i < count; i++) {
    unsigned char *tail = rec + i * NTFS_SECTOR - 2;
    if (memcmp(tail, rec + usa, 2) != 0)
      return false;
    memcpy(tail, rec + usa + 2 * i, 2);
  }
  return true;
}

/* The index of directory DM into X (x->d allocated, its inum set); false
 * if it does not parse (*FALLBACK: libtsk may read it) or on error. */
static bool ntfs_read_index(struct ntfs_dir_read *x, TSK_FS_FILE *dm, bool *fallback)
{
  struct tb_inspect *ins = x->ins;
  struct vol *v = x->v;
  *fallback = true;
  const TSK_FS_ATTR *root = ntfs_attr(dm, TSK_FS_ATTR_TYPE_NTFS_IDXROOT);
  const TSK_FS_ATTR *alloc = ntfs_attr(dm, TSK_FS_ATTR_TYPE_NTFS_IDXALLOC);
  const TSK_FS_ATTR *bitmap = ntfs_attr(dm, TSK_FS_ATTR_TYPE_NTFS_BITMAP);
  tsk_error_reset();
  if (!root || !(root->flags & TSK_FS_ATTR_RES) || !root->rd.buf || root->rd.buf_size < 32 ||
      root->size < 32 || (size_t)root->size > root->rd.buf_size)
    return NULL;
  const unsigned char *rb = root->rd.buf;
  size_t rsize = (size_t)root->size, recsize = tb_get_le32(rb + 8);
  size_t rbeg = 16 + (size_t)tb_get_le32(rb + 16), rend = 16 + (size_t)tb_get_le32(rb + 20);
  if (tb_get_le32(rb) != NTFS_ATTR_FILE_NAME || rbeg > rend || rend > rsize ||
      recsize < NTFS_SECTOR || recsize > 65536 || (recsize & (recsize - 1)))
    return false;
  bool ok = ntfs_index_entries(x, rb, rbeg, rend);
  uint64_t asize = alloc && alloc->size > 0 ? (uint64_t)alloc->size : 0;
  unsigned char *bits = NULL, *rec = NULL;
  uint64_t nbits = 0;
  if (ok && asize) {
    uint64_t bsize = bitmap && bitmap->size > 0 ? (uint64_t)bitmap->size : 0;
    ok = (alloc->flags & TSK_FS_ATTR_NONRES) && !(alloc->flags & TSK_FS_ATTR_COMP) && bsize &&
         bsize <= (1u << 24) && asize <= v->pub.length && (bits = malloc(bsize)) &&
         (rec = malloc(recsize)) &&
         tsk_fs_attr_read(bitmap, 0, (char *)bits, bsize, TSK_FS_FILE_READ_FLAG_NONE) ==
             (ssize_t)bsize;
    nbits = bsize * 8;
  }
  for (uint64_t b = 0; ok && asize && b < asize / recsize && b < nbits; b++) {
    if (!(bits[b / 8] & (1u << (b % 8))))
      continue;
    if (past_deadline(ins) ||
        tsk_fs_attr_read(alloc, (TSK_OFF_T)(b * recsize), (char *)rec, recsize,
                         TSK_FS_FILE_READ_FLAG_NONE) != (ssize_t)recsize ||
        memcmp(rec, "INDX", 4) != 0 || !ntfs_fixup(rec, recsize)) {
      ok = false;
      break;
    }
    size_t beg = 0x18 + (size_t)tb_get_le32(rec + 0x18),
           end = 0x18 + (size_t)tb_get_le32(rec + 0x1C);
    ok = beg <= end && end <= recsize && ntfs_index_entries(x, rec, beg, end);
  }
  free(bits);
  free(rec);
  tsk_error_reset();
  if (!ok && (ins->deadline_hit || x->oom))
    *fallback = false;
  return ok;
}

static struct cached_dir *ntfs_read_dir(struct tb_inspect *ins, struct vol *v, TSK_FS_FILE *dm,
                                        uint64_t inum, bool *fallback)
{
  struct ntfs_dir_read x = {.ins = ins, .v = v, .d = calloc(1, sizeof *x.d)};
  if (!x.d) {
    *fallback = false;
    return NULL;
  }
  x.d->inum = inum;
  if (ntfs_read_index(&x, dm, fallback))
    return x.d;
  free_dir(x.d);
  return NULL;
}

static void ntfs_names_free(struct ntfs_name *v, size_t n)
{
  for (size_t i = 0; i < n; i++)
    free(v[i].name);
  free(v);
}

/* Directory INUM's entries as ntfs_read_dir lists them, without their
 * metadata; false if libtsk must read it (*FALLBACK) or on error. */
static bool ntfs_list_names(struct tb_inspect *ins, struct vol *v, uint64_t inum,
                            struct ntfs_name **out, size_t *n, bool *fallback)
{
  struct cached_dir d = {.inum = inum};
  struct ntfs_dir_read x = {.ins = ins, .v = v, .d = &d, .names_only = true};
  *fallback = true;
  TSK_FS_FILE *dm = tsk_fs_file_open_meta(v->fs, NULL, (TSK_INUM_T)inum);
  bool ok = dm && dm->meta && size_plausible(v, dm->meta) && ntfs_read_index(&x, dm, fallback);
  if (!dm || !dm->meta)
    *fallback = true;
  tsk_fs_file_close(dm);
  tsk_error_reset();
  if (!ok) {
    ntfs_names_free(x.names, x.n_names);
    return false;
  }
  *out = x.names;
  *n = x.n_names;
  return true;
}

/* Read directory INUM (ext: ext_read_dir, NTFS: ntfs_read_dir; else
 * through libtsk) into a
 * sorted listing. */
static struct cached_dir *dir_finish(struct cached_dir *d);
static struct cached_dir *read_dir(struct tb_inspect *ins, struct vol *v, uint64_t inum)
{
  TSK_FS_FILE *dm = tsk_fs_file_open_meta(v->fs, NULL, (TSK_INUM_T)inum);
  bool plausible = dm && dm->meta && size_plausible(v, dm->meta), fallback = true;
  struct cached_dir *ed =
      !plausible                         ? NULL
      : TSK_FS_TYPE_ISEXT(v->fs->ftype)  ? ext_read_dir(ins, v, dm, inum, &fallback)
      : TSK_FS_TYPE_ISNTFS(v->fs->ftype) ? ntfs_read_dir(ins, v, dm, inum, &fallback)
                                         : NULL;
  tsk_fs_file_close(dm);
  if (!plausible) {
    tsk_fail(ins, "implausible directory (damaged filesystem?)");
    return NULL;
  }
  if (ed)
    return dir_finish(ed);
  if (!fallback) {
    if (ins->deadline_hit) {
      tsk_fail(ins, "cannot read directory");
    } else {
      errno = ENOMEM;
      tb_error("out of memory listing a directory");
    }
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
  struct name_seen seen = {0};
  for (size_t i = 0; i < n; i++) {
    if ((i & 255) == 0 && past_deadline(ins))
      break;
    const TSK_FS_NAME *nm = tsk_fs_dir_get_name(td, i);
    char *name = entry_name(nm, &seen);
    if (!name)
      continue;
    struct tb_istat st;
    if (!entry_stat(ins, v, td, i, nm, &st)) {
      free(name);
      continue;
    }
    if (TSK_FS_TYPE_ISFAT(v->fs->ftype) && nm->shrt_name && *nm->shrt_name) {
      char *full = fat_long_name(v, td->fs_file, nm->meta_addr, name);
      if (full) {
        free(name);
        name = full;
      }
    }
    d->v[d->n++] = (struct dent){name, st};
  }
  tsk_fs_dir_close(td);
  if (ins->deadline_hit) {
    free_dir(d);
    tsk_fail(ins, "cannot read directory");
    return NULL;
  }
  return dir_finish(d);
}

static struct cached_dir *dir_finish(struct cached_dir *d)
{
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

/* A file whose content is plain runs of the volume (ext extents or block
 * maps, NTFS non-resident uncompressed data, FAT chains: what libtsk's
 * tsk_fs_attr_read reads run by run) is mapped once at open, on the
 * worker: each run's file offset, length and disk offset, sparse and
 * uninitialised parts as zeros (DOFF FRUN_ZERO), exactly as libtsk reads
 * them.  Its reads then go to the disk from the caller's thread, one
 * request per disk-contiguous stretch, without the worker (whose one job
 * at a time would serialise every reader of the snapshot, listings
 * included) and without libtsk: a content read only follows the map, so
 * no damage can make it compute, and a read of a 1 MiB FUSE request is one
 * NBD request into the caller's buffer.  Everything else (resident and
 * compressed data, ext2/3 files past the triple-indirect block, maps
 * that do not cover the file in order) reads through libtsk on the
 * worker. */
#define FRUN_ZERO UINT64_MAX
#define FRUN_MAX 1000000 /* runs in a map; a file with more reads through libtsk */
struct frun {
  uint64_t foff, len; /* bytes of the file */
  uint64_t doff;      /* disk byte of foff, or FRUN_ZERO */
};

struct tb_ifile {
  struct tb_inspect *ins;
  TSK_FS_FILE *file;
  size_t vol;
  uint64_t size;
  struct frun *runs; /* the content map, or NULL */
  size_t n_runs;
  struct tb_ifile *next_orphan;
};

/* Append [FOFF, FOFF+LEN) at DOFF to the map, merging with the last run
 * when it continues it.  False when the map is full or out of memory. */
static bool frun_add(struct frun **v, size_t *n, size_t *cap, uint64_t foff, uint64_t len,
                     uint64_t doff)
{
  if (len == 0)
    return true;
  if (*n > 0) {
    struct frun *last = &(*v)[*n - 1];
    if (last->foff + last->len == foff &&
        (last->doff == FRUN_ZERO ? doff == FRUN_ZERO
                                 : doff != FRUN_ZERO && last->doff + last->len == doff)) {
      last->len += len;
      return true;
    }
  }
  if (*n == *cap) {
    size_t nc = *cap ? *cap * 2 : 16;
    struct frun *nv = nc <= FRUN_MAX ? realloc(*v, nc * sizeof *nv) : NULL;
    if (!nv)
      return false;
    *v = nv;
    *cap = nc;
  }
  (*v)[(*n)++] = (struct frun){foff, len, doff};
  return true;
}

/* The content map of F on volume V into J (runs, n_runs), or nothing if
 * its content is not plain runs (see above). */
static void map_file(struct tb_inspect *ins, struct vol *v, TSK_FS_FILE *f, struct job *j)
{
  TSK_FS_INFO *fs = v->fs;
  if (ext_bmapped(v, f->meta) || (fs->flags & TSK_FS_INFO_FLAG_ENCRYPTED))
    return;
  const TSK_FS_ATTR *a = tsk_fs_file_attr_get(f);
  tsk_error_reset();
  uint64_t bs = fs->block_size, size = f->meta->size > 0 ? (uint64_t)f->meta->size : 0;
  if (!a || !(a->flags & TSK_FS_ATTR_NONRES) || (a->flags & (TSK_FS_ATTR_COMP | TSK_FS_ATTR_ENC)) ||
      a->size < 0 || (uint64_t)a->size != size || size == 0 || bs == 0 || bs > (1u << 20))
    return;
  uint64_t init = a->nrd.initsize > 0 ? (uint64_t)a->nrd.initsize : 0;
  TSK_DADDR_T last = fs->last_block_act > 0 ? fs->last_block_act : fs->last_block;
  uint64_t disk = tb_disk_size(ins->disk), base = fs->offset > 0 ? (uint64_t)fs->offset : 0;
  if (base >= disk)
    return;
  struct frun *runs = NULL;
  size_t n = 0, cap = 0;
  uint64_t next = 0; /* the file byte the next run must start at */
  bool ok = true;
  for (const TSK_FS_ATTR_RUN *r = a->nrd.run; r && ok && next < size; r = r->next) {
    if (r->len == 0 || r->offset > UINT64_MAX / bs || r->len > UINT64_MAX / bs ||
        r->offset * bs != next) {
      ok = false; /* a map out of order, with a gap or absurd */
      break;
    }
    uint64_t len = r->len * bs;
    if (len > size - next)
      len = size - next;
    bool zero = r->flags & (TSK_FS_ATTR_RUN_FLAG_SPARSE | TSK_FS_ATTR_RUN_FLAG_FILLER);
    if (!zero && (r->flags & TSK_FS_ATTR_RUN_FLAG_ENCRYPTED))
      ok = false;
    else if (!zero && (r->addr > last || r->len > last + 1 - r->addr ||
                       r->addr > (disk - base) / bs || r->len * bs > disk - base - r->addr * bs))
      ok = false; /* past the volume or the disk: libtsk says what is wrong */
    else if (zero || next >= init)
      ok = frun_add(&runs, &n, &cap, next, len, FRUN_ZERO);
    else {
      /* Past the initialised size, zeros (NTFS valid data length). */
      uint64_t data = init - next < len ? init - next : len;
      ok = frun_add(&runs, &n, &cap, next, data, base + r->addr * bs) &&
           frun_add(&runs, &n, &cap, next + data, len - data, FRUN_ZERO);
    }
    next += len;
  }
  if (ok && next == size) {
    j->runs = runs;
    j->n_runs = n;
  } else {
    free(runs);
  }
}

/* Read from a mapped file (above), on the caller's thread. */
static ssize_t mapped_pread(struct tb_ifile *f, char *buf, size_t len, uint64_t off)
{
  size_t lo = 0, hi = f->n_runs;
  while (lo < hi) { /* the first run ending after OFF */
    size_t mid = lo + (hi - lo) / 2;
    if (f->runs[mid].foff + f->runs[mid].len <= off)
      lo = mid + 1;
    else
      hi = mid;
  }
  size_t done = 0;
  for (size_t i = lo; i < f->n_runs && done < len; i++) {
    const struct frun *r = &f->runs[i];
    uint64_t o = off + done, in = o - r->foff;
    size_t n = r->len - in < len - done ? (size_t)(r->len - in) : len - done;
    if (r->doff == FRUN_ZERO)
      memset(buf + done, 0, n);
    else if (tb_disk_pread(f->ins->disk, buf + done, n, r->doff + in) < 0)
      return -1;
    done += n;
  }
  if (done < len) {
    errno = EIO;
    return tb_error("%s: file map ends before its size", tb_disk_name(f->ins->disk));
  }
  return (ssize_t)done;
}

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
    if (TSK_FS_TYPE_ISNTFS(v->fs->ftype) && ntfs_link(f, j->buf, j->len) >= 0) {
      /* an NTFS reparse point or Interix symlink (see "Guest metadata") */
    } else if (f->meta->link && *f->meta->link) {
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

static int do_xattrs(struct tb_inspect *ins, struct job *j)
{
  struct vol *v = get_vol(ins, j->vol);
  struct tb_istat st;
  if (!v || resolve(ins, v, j->path, &st) < 0)
    return -1;
  if (!(j->xattrs = calloc(1, sizeof *j->xattrs))) {
    errno = ENOMEM;
    return tb_error("out of memory");
  }
  TSK_FS_TYPE_ENUM t = v->fs->ftype;
  if (TSK_FS_TYPE_ISEXT(t)) {
    unsigned char ino[1024];
    uint64_t off;
    uint32_t isz;
    if (ext_inode_off(ins, v, st.inum, &off, &isz) && isz <= sizeof ino &&
        raw_read(v, off, ino, isz))
      ext_xattrs(v, ino, isz, collect_xattr, j->xattrs);
  } else if (TSK_FS_TYPE_ISNTFS(t)) {
    TSK_FS_FILE *f = open_meta(ins, v, st.inum);
    if (!f)
      return -1;
    ntfs_streams(f, collect_xattr, j->xattrs);
    tsk_fs_file_close(f);
  }
  return 0;
}

/* The file offsets of PATH's content (its default data stream) whose bytes
 * lie in the job's dirty ranges; a compressed stream is taken whole. */
static size_t ranges_lower_bound(const struct tb_ranges *r, uint64_t off);
struct franges_ctx {
  struct job *j;
  int r;
};

/* A data run of a file our ext walker maps: its dirty part, as file offsets. */
static bool franges_run(void *ctx, uint64_t foff, uint64_t d0, uint64_t d1)
{
  struct franges_ctx *fc = ctx;
  struct job *j = fc->j;
  if (foff == UINT64_MAX)
    return false; /* an indirect block: no file offset */
  for (size_t k = ranges_lower_bound(&j->dirty, d0);
       k < j->dirty.n && j->dirty.v[k].off < d1 && fc->r == 0; k++) {
    uint64_t x0 = j->dirty.v[k].off > d0 ? j->dirty.v[k].off : d0;
    uint64_t e = j->dirty.v[k].off + j->dirty.v[k].len, x1 = e < d1 ? e : d1;
    fc->r = tb_ranges_add(&j->franges, foff + (x0 - d0), x1 - x0);
  }
  return fc->r != 0;
}

static int do_franges(struct tb_inspect *ins, struct job *j)
{
  struct vol *v = get_vol(ins, j->vol);
  struct tb_istat st;
  if (!v || resolve(ins, v, j->path, &st) < 0)
    return -1;
  TSK_FS_FILE *f = open_meta(ins, v, st.inum);
  if (!f)
    return -1;
  if (ext_bmapped(v, f->meta)) {
    struct franges_ctx fc = {j, 0};
    ext_bmap_runs(ins, v, f->meta, franges_run, &fc);
    tsk_fs_file_close(f);
    return fc.r;
  }
  const TSK_FS_ATTR *a = tsk_fs_file_attr_get(f);
  uint64_t bs = v->fs->block_size;
  int r = 0, guard = 0;
  if (a && (a->flags & TSK_FS_ATTR_NONRES) && a->size > 0 && (a->flags & TSK_FS_ATTR_COMP))
    r = tb_ranges_add(&j->franges, 0, (uint64_t)a->size);
  else if (a && (a->flags & TSK_FS_ATTR_NONRES) && a->size > 0) {
    uint64_t asize = (uint64_t)a->size;
    for (const TSK_FS_ATTR_RUN *run = a->nrd.run; run && r == 0 && guard < 1000000;
         run = run->next, guard++) {
      if ((run->flags & (TSK_FS_ATTR_RUN_FLAG_FILLER | TSK_FS_ATTR_RUN_FLAG_SPARSE)) ||
          run->len == 0 || run->addr > UINT64_MAX / bs / 2 || run->len > UINT64_MAX / bs / 2 ||
          run->offset > UINT64_MAX / bs / 2 || run->offset * bs >= asize)
        continue;
      uint64_t foff = run->offset * bs, len = run->len * bs;
      if (len > asize - foff)
        len = asize - foff;
      uint64_t d0 = v->pub.offset + run->addr * bs, d1 = d0 + len;
      for (size_t k = ranges_lower_bound(&j->dirty, d0);
           k < j->dirty.n && j->dirty.v[k].off < d1 && r == 0; k++) {
        uint64_t x0 = j->dirty.v[k].off > d0 ? j->dirty.v[k].off : d0;
        uint64_t e = j->dirty.v[k].off + j->dirty.v[k].len, x1 = e < d1 ? e : d1;
        r = tb_ranges_add(&j->franges, foff + (x0 - d0), x1 - x0);
      }
    }
  }
  tsk_fs_file_close(f);
  tsk_error_reset();
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
  map_file(ins, v, j->file, j);
  return 0;
}

static ssize_t do_pread(struct tb_inspect *ins, struct job *j)
{
  struct vol *v = get_vol(ins, j->vol);
  if (v && v->fs == j->file->fs_info && ext_bmapped(v, j->file->meta))
    return ext_bmap_pread(ins, v, j->file->meta, j->buf, j->len, j->off);
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
    free(f->runs);
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

/* Call FN(CTX, d0, d1) for each run of file INUM's content, as disk byte
 * ranges [d0, d1): every non-resident attribute (NTFS streams and index
 * allocations, ext extents and their tree or indirect blocks, FAT chains),
 * clipped to the attribute's size so slack space does not count, sparse and
 * filler runs left out.  FN returns true to stop.  Files of implausible
 * size have no runs (libtsk would hang building them). */
typedef bool (*run_fn)(void *ctx, uint64_t d0, uint64_t d1);
struct run_relay {
  run_fn fn;
  void *ctx;
};

static bool relay_run(void *ctx, uint64_t foff, uint64_t d0, uint64_t d1)
{
  (void)foff;
  struct run_relay *rr = ctx;
  return rr->fn(rr->ctx, d0, d1);
}

static void for_each_run(struct tb_inspect *ins, struct vol *v, uint64_t inum, run_fn fn, void *ctx)
{
  TSK_FS_FILE *f = tsk_fs_file_open_meta(v->fs, NULL, (TSK_INUM_T)inum);
  bool stop = false;
  if (f && f->meta && ext_bmapped(v, f->meta)) {
    struct run_relay rr = {fn, ctx};
    ext_bmap_runs(ins, v, f->meta, relay_run, &rr);
    tsk_fs_file_close(f);
    return;
  }
  int n = f && f->meta && size_plausible(v, f->meta) ? tsk_fs_file_attr_getsize(f) : 0;
  uint64_t bs = v->fs->block_size;
  for (int i = 0; i < n && !stop; i++) {
    const TSK_FS_ATTR *a = tsk_fs_file_attr_get_idx(f, i);
    if (!a || !(a->flags & TSK_FS_ATTR_NONRES) || a->size <= 0)
      continue;
    uint64_t asize = (uint64_t)a->size;
    int guard = 0;
    for (const TSK_FS_ATTR_RUN *run = a->nrd.run; run && !stop && guard < 1000000;
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
      uint64_t d0 = v->pub.offset + run->addr * bs;
      stop = fn(ctx, d0, d0 + len);
    }
  }
  tsk_fs_file_close(f);
  tsk_error_reset();
}

struct touch {
  struct tb_inspect *ins;
  const struct tb_ranges *dirty;
  struct tb_disk *base;
  bool touched;
};

static bool touch_run(void *ctx, uint64_t d0, uint64_t d1)
{
  struct touch *t = ctx;
  for (size_t k = ranges_lower_bound(t->dirty, d0); k < t->dirty->n && !t->touched; k++) {
    const struct tb_range *r = &t->dirty->v[k];
    if (r->off >= d1)
      break;
    uint64_t x0 = r->off > d0 ? r->off : d0;
    uint64_t x1 = r->off + r->len < d1 ? r->off + r->len : d1;
    t->touched = !t->base || bytes_differ(t->ins, t->base, x0, x1 - x0);
  }
  return t->touched;
}

/* Does any content of file INUM lie in DIRTY (and, with BASE set, differ
 * there from BASE)?  The dirty map has the overlay's block granularity,
 * coarser than many filesystems' blocks: comparing the bytes with the base
 * tells a file written from its neighbour in the same block. */
static bool content_touched(struct tb_inspect *ins, struct vol *v, uint64_t inum,
                            const struct tb_ranges *dirty, struct tb_disk *base)
{
  struct touch t = {ins, dirty, base, false};
  for_each_run(ins, v, inum, touch_run, &t);
  return t.touched;
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
  free(j->runs);
  tb_ranges_free(&j->dirty);
  tb_ranges_free(&j->franges);
  tb_disk_unref(j->base);
  index_put(j->index);
  if (j->xattrs) {
    tb_xattrs_free(j->xattrs);
    free(j->xattrs);
  }
  if (j->changes) {
    for (size_t i = 0; i < j->changes->n; i++)
      free(j->changes->v[i].path);
    free(j->changes->v);
    free(j->changes);
  }
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

static int do_index(struct tb_inspect *ins, struct job *j);
static int do_idiff(struct tb_inspect *ins, struct job *j);
static int do_xattrs(struct tb_inspect *ins, struct job *j);
static int do_franges(struct tb_inspect *ins, struct job *j);

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
  case JOB_INDEX:
    j->r = do_index(ins, j);
    break;
  case JOB_IDIFF:
    j->r = do_idiff(ins, j);
    break;
  case JOB_XATTRS:
    j->r = do_xattrs(ins, j);
    break;
  case JOB_FRANGES:
    j->r = do_franges(ins, j);
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

int tb_inspect_xattrs(struct tb_inspect *ins, size_t vol, const char *path, struct tb_xattrs *out)
{
  memset(out, 0, sizeof *out);
  struct job *j = job_new(ins, JOB_XATTRS, deadline_in(ins, 1));
  if (!j || job_path(j, path) < 0) {
    job_put(j);
    return -1;
  }
  j->vol = vol;
  int r = (int)run_request(ins, j);
  if (r == 0 && j->xattrs) {
    *out = *j->xattrs;
    free(j->xattrs);
    j->xattrs = NULL;
  }
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
    fh->vol = vol;
    fh->size = j->st.size;
    fh->runs = j->runs;
    fh->n_runs = j->n_runs;
    j->runs = NULL;
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
  if (f->runs)
    return mapped_pread(f, buf, len, off);
  struct job *j = job_new(f->ins, JOB_PREAD, deadline_in(f->ins, 1));
  if (!j || !(j->buf = malloc(len))) {
    job_put(j);
    errno = ENOMEM;
    return tb_error("out of memory reading a file");
  }
  j->file = f->file;
  j->vol = f->vol;
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
  /* The inode number is the filesystem's, not the file's (a FAT inode is
   * where its entry lies): another inode with the same metadata is
   * confirmed by the content (replaced). */
  return a->size != b->size || a->mtime != b->mtime || a->mtime_ns != b->mtime_ns ||
         a->mode != b->mode || a->uid != b->uid || a->gid != b->gid || a->xdigest != b->xdigest ||
         a->rdev_major != b->rdev_major || a->rdev_minor != b->rdev_minor;
}

/* A path whose metadata did not change but whose inode did: a regular
 * file is changed if its content differs (CONFIRM_WHOLE), anything else
 * (a symlink, a device) is changed. */
static bool replaced(const struct tb_istat *a, const struct tb_istat *b, int *confirm)
{
  if (a->inum == b->inum && a->first_data == b->first_data)
    return false;
  *confirm = b->type == TB_FT_REG ? CONFIRM_WHOLE : CONFIRM_NONE;
  return true;
}

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
  c->v[c->n++] = (struct change){kind, p, *st, CONFIRM_NONE};
  return 0;
}

static int change_cmp(const void *a, const void *b)
{
  return strcmp(((const struct change *)a)->path, ((const struct change *)b)->path);
}

/* Compare one volume present in BASE (index bi, or -1) and LIVE (li, or -1). */
static int diff_volume(struct tb_inspect *base, int bi, struct tb_inspect *live, int li,
                       const struct tb_ranges *dirty, int64_t deadline_ms, struct changes *out,
                       struct tb_diff_stats *stats)
{
  struct entries be = {0}, le = {0};
  const char *vname = li >= 0 ? live->vols[li].pub.name : base->vols[bi].pub.name;
  int r = 0;
  if (bi >= 0)
    r = walk_request(base, (size_t)bi, NULL, NULL, false, collect_cb, &be, deadline_ms);
  if (r == 0 && li >= 0)
    r = walk_request(live, (size_t)li, dirty, base->disk, false, collect_cb, &le, deadline_ms);
  stats->files_examined += le.n;
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
        int confirm = CONFIRM_NONE;
        if (meta_changed(&b->st, &l->st))
          r = changes_add(out, TB_CHANGED, vname, l->path, &l->st);
        else if ((replaced(&b->st, &l->st, &confirm) ||
                  (l->touched && l->st.type == TB_FT_REG && (confirm = CONFIRM_DIRTY))) &&
                 (r = changes_add(out, TB_CHANGED, vname, l->path, &l->st)) == 0)
          out->v[out->n - 1].confirm = confirm;
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

static int idiff_request(struct tb_inspect_index *idx, size_t ivol, struct tb_inspect *base,
                         struct tb_inspect *live, size_t li, const struct tb_ranges *dirty,
                         int64_t deadline_ms, struct changes *out, struct tb_diff_stats *stats);
static int index_volume(const struct tb_inspect_index *idx, const struct tb_volume *bv,
                        const struct tb_volume *lv, bool *by_design);
static bool index_of(const struct tb_inspect_index *idx, struct tb_inspect *base);

/* A file changed by its content bytes alone (the bytes where it lies now
 * differ from the base's there): does its content differ from the base's
 * copy of the file?  Its blocks may have moved: a file deleted and made
 * again with the same bytes and metadata (cp --preserve=all) lies where
 * the base had free space.  Compared at the file offsets whose bytes lie
 * in DIRTY, or (DIRTY NULL: a file with another inode) the whole content up
 * to CONFIRM_WHOLE_MAX (larger: a change), read through both handles;
 * anything unreadable is a change. */
#define CONFIRM_WHOLE_MAX (1ull << 30)
static bool content_differs(struct tb_inspect *base, struct tb_inspect *live, const char *vpath,
                            const struct tb_ranges *dirty)
{
  const char *slash = strchr(vpath, '/');
  char vname[64];
  if (!slash || slash - vpath >= (ptrdiff_t)sizeof vname)
    return true;
  snprintf(vname, sizeof vname, "%.*s", (int)(slash - vpath), vpath);
  int bi = tb_inspect_find_volume(base, vname), li = tb_inspect_find_volume(live, vname);
  if (bi < 0 || li < 0)
    return true;
  struct job *j = job_new(live, JOB_FRANGES, deadline_in(live, 1));
  bool differ = !j || job_path(j, slash) < 0;
  for (size_t i = 0; !differ && dirty && i < dirty->n; i++)
    differ = tb_ranges_add(&j->dirty, dirty->v[i].off, dirty->v[i].len) < 0;
  if (!differ && dirty) {
    j->vol = (size_t)li;
    differ = run_request(live, j) < 0;
  }
  struct tb_ifile *lf = differ ? NULL : tb_inspect_open_file(live, (size_t)li, slash);
  struct tb_ifile *bf = lf ? tb_inspect_open_file(base, (size_t)bi, slash) : NULL;
  enum { CHUNK = 1 << 20 };
  char *a = bf ? malloc(2 * CHUNK) : NULL, *b = a + CHUNK;
  differ = !a || tb_ifile_size(lf) != tb_ifile_size(bf);
  if (!differ && !dirty)
    differ = tb_ifile_size(lf) > CONFIRM_WHOLE_MAX ||
             tb_ranges_add(&j->franges, 0, tb_ifile_size(lf)) < 0;
  for (size_t i = 0; !differ && i < j->franges.n; i++) {
    uint64_t off = j->franges.v[i].off, end = off + j->franges.v[i].len;
    while (!differ && off < end) {
      size_t n = end - off < CHUNK ? (size_t)(end - off) : CHUNK;
      ssize_t x = tb_ifile_pread(lf, a, n, off), y = tb_ifile_pread(bf, b, n, off);
      differ = x < 0 || x != y || memcmp(a, b, (size_t)x) != 0;
      off += n;
    }
  }
  free(a);
  tb_ifile_close(bf);
  tb_ifile_close(lf);
  job_put(j);
  return differ;
}

/* Both diffs: through IDX where it serves, else by walking both trees. */
static int diff_all(struct tb_inspect_index *idx, struct tb_inspect *base, struct tb_inspect *live,
                    const struct tb_ranges *dirty, tb_inspect_change_fn fn, void *ctx,
                    struct tb_diff_stats *stats)
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
    if (bi < 0) {
      stats->volumes_full++;
    } else {
      bool by_design = false;
      int k = idx && dirty ? index_volume(idx, &base->vols[bi].pub, lv, &by_design) : -1;
      if (k >= 0) {
        r = idiff_request(idx, (size_t)k, base, live, li, dirty, deadline_ms, &out, stats);
        if (r == 0) {
          stats->volumes_indexed++;
          continue;
        }
        if (r < 0)
          break;
        r = 0; /* the geometry changed: the index cannot be trusted */
      }
      if (by_design)
        stats->volumes_full++;
      else
        stats->fallbacks++;
    }
    r = diff_volume(base, bi, live, (int)li, dirty, deadline_ms, &out, stats);
  }
  for (size_t bi = 0; bi < base->n_vols && r == 0; bi++)
    if (tb_inspect_find_volume(live, base->vols[bi].pub.name) < 0) {
      stats->volumes_full++;
      r = diff_volume(base, (int)bi, live, -1, dirty, deadline_ms, &out, stats);
    }
  for (size_t i = 0; i < out.n && r == 0; i++)
    if (out.v[i].confirm && !content_differs(base, live, out.v[i].path,
                                             out.v[i].confirm == CONFIRM_DIRTY ? dirty : NULL))
      out.v[i].kind = 0; /* the same content, moved: not a change */
  if (r == 0) {
    if (out.n > 0)
      qsort(out.v, out.n, sizeof *out.v, change_cmp);
    for (size_t i = 0; i < out.n && r == 0; i++)
      if (out.v[i].kind)
        r = fn(ctx, out.v[i].kind, out.v[i].path, &out.v[i].st);
  }
  for (size_t i = 0; i < out.n; i++)
    free(out.v[i].path);
  free(out.v);
  return r;
}

int tb_inspect_diff(struct tb_inspect *base, struct tb_inspect *live, const struct tb_ranges *dirty,
                    tb_inspect_change_fn fn, void *ctx)
{
  struct tb_diff_stats stats = {0};
  return diff_all(NULL, base, live, dirty, fn, ctx, &stats);
}

int tb_inspect_diff_indexed(struct tb_inspect_index *idx, struct tb_inspect *base,
                            struct tb_inspect *live, const struct tb_ranges *dirty,
                            tb_inspect_change_fn fn, void *ctx, struct tb_diff_stats *stats)
{
  struct tb_diff_stats tmp;
  if (!stats)
    stats = &tmp;
  memset(stats, 0, sizeof *stats);
  if (idx && !index_of(idx, base))
    idx = NULL; /* not an index of this base: the full diff, counted as fallbacks */
  return diff_all(idx, base, live, dirty, fn, ctx, stats);
}

/* ------------------------------------------------------------------ */
/* The index of a base version, and the diff through it                */
/* ------------------------------------------------------------------ */

/* Where a filesystem keeps its metadata records (inodes, MFT entries), as
 * our own parsers read it: disk bytes [off, off+len) hold the bytes of the
 * record table from FOFF on, so the disk byte d holds record
 * (d - off + foff) / rec + first. */
enum geom_kind { GEOM_NONE, GEOM_EXT, GEOM_NTFS };

struct meta_extent {
  uint64_t off, len, foff;
};

struct geom {
  enum geom_kind kind;
  uint32_t rec;          /* inode size, MFT record size */
  uint64_t first;        /* number of the first record: 1 for ext inodes, 0 for MFT entries */
  struct meta_extent *v; /* sorted by off, disjoint, inside the volume */
  size_t n, cap;
};

#define NODE_NONE UINT32_MAX
#define GEOM_MAX_EXTENTS (1u << 20)
#define INDEX_MAX_NODES (UINT32_MAX / 2)

/* One path of the tree the walk shows.  A directory's children are
 * contiguous and sorted by name; the root is node 0. */
struct inode_node {
  uint32_t name; /* offset in the names pool */
  uint32_t parent;
  uint32_t first_child, n_children;
  struct tb_istat st;
};

struct inum_ref {
  uint64_t inum;
  uint32_t node;
};

struct interval {
  uint64_t start, end, inum;
};

struct ivol {
  struct tb_volume pub;
  struct geom geom; /* GEOM_NONE: not indexed */
  struct inode_node *nodes;
  size_t n_nodes, cap_nodes;
  char *names;
  size_t names_len, names_cap;
  struct inum_ref *inums; /* every node by inode number, sorted */
  size_t n_inums;
  struct interval *runs; /* content runs, sorted by start */
  uint64_t *max_end;     /* max_end[i]: the largest end of runs[0..i] */
  size_t n_runs, cap_runs;
};

struct tb_inspect_index {
  atomic_int refs;
  uint64_t disk_size;
  struct ivol *vols;
  size_t n_vols;
  uint64_t files;
  size_t bytes;
};

static void geom_free(struct geom *g)
{
  free(g->v);
  memset(g, 0, sizeof *g);
}

static int geom_add(struct geom *g, uint64_t off, uint64_t len, uint64_t foff)
{
  if (len == 0)
    return 0;
  if (g->n >= GEOM_MAX_EXTENTS)
    return -1;
  if (g->n == g->cap) {
    size_t cap = g->cap ? g->cap * 2 : 16;
    struct meta_extent *v = realloc(g->v, cap * sizeof *v);
    if (!v)
      return -1;
    g->v = v;
    g->cap = cap;
  }
  g->v[g->n++] = (struct meta_extent){off, len, foff};
  return 0;
}

static int extent_cmp(const void *a, const void *b)
{
  uint64_t x = ((const struct meta_extent *)a)->off, y = ((const struct meta_extent *)b)->off;
  return x < y ? -1 : x > y;
}

/* Sort the extents; all must lie inside the volume and none overlap. */
static int geom_finish(struct geom *g, const struct tb_volume *vol)
{
  if (g->n > 0)
    qsort(g->v, g->n, sizeof *g->v, extent_cmp);
  for (size_t i = 0; i < g->n; i++) {
    const struct meta_extent *e = &g->v[i];
    if (e->off < vol->offset || e->len > vol->length || e->off - vol->offset > vol->length - e->len)
      return -1;
    if (i > 0 && g->v[i - 1].off + g->v[i - 1].len > e->off)
      return -1;
  }
  return 0;
}

/* ext2/3/4: the superblock at byte 1024 of the volume, then the group
 * descriptors in the block after the first data block; inode N lives at
 * inode_table[(N-1) / ipg] + ((N-1) % ipg) * inode_size. */
static int ext_geometry(struct tb_disk *disk, const struct tb_volume *vol, struct geom *g)
{
  unsigned char sb[1024];
  uint64_t vo = vol->offset, vl = vol->length;
  if (vl < 4096 || tb_disk_pread(disk, sb, sizeof sb, vo + 1024) < 0 ||
      tb_get_le16(sb + 56) != 0xEF53)
    return -1;
  uint32_t inodes = tb_get_le32(sb), fdb = tb_get_le32(sb + 20), logbs = tb_get_le32(sb + 24),
           ipg = tb_get_le32(sb + 40);
  uint32_t rev = tb_get_le32(sb + 76), incompat = tb_get_le32(sb + 96);
  if (logbs > 6 || ipg == 0 || inodes == 0 || (incompat & 0x10)) /* 0x10: meta_bg, not parsed */
    return -1;
  uint64_t bs = 1024ull << logbs;
  uint32_t isz = rev == 0 ? 128 : tb_get_le16(sb + 88);
  if (isz < 128 || isz > bs || (isz & (isz - 1)))
    return -1;
  uint32_t ds = 32;
  if (incompat & 0x80) { /* 64bit: descriptors of s_desc_size bytes */
    ds = tb_get_le16(sb + 254);
    if (ds < 32 || ds > 1024 || (ds & (ds - 1)))
      return -1;
  }
  uint64_t groups = (inodes + (uint64_t)ipg - 1) / ipg;
  uint64_t gdt = ((uint64_t)fdb + 1) * bs, gdt_len = groups * ds, table = (uint64_t)ipg * isz;
  /* 64 MiB of descriptors is a 64 TiB filesystem with 64-byte descriptors:
   * past that a crafted superblock would only make us allocate and read. */
  if (groups > (1u << 22) || gdt_len > (64u << 20) || gdt_len > vl || gdt > vl - gdt_len ||
      table > vl)
    return -1;
  unsigned char *d = malloc(gdt_len);
  int r = d && tb_disk_pread(disk, d, gdt_len, vo + gdt) == 0 ? 0 : -1;
  for (uint64_t i = 0; i < groups && r == 0; i++) {
    const unsigned char *e = d + i * ds;
    uint64_t it = tb_get_le32(e + 8) | (ds >= 64 ? (uint64_t)tb_get_le32(e + 0x28) << 32 : 0);
    if (it > vl / bs || it * bs > vl - table)
      r = -1;
    else
      r = geom_add(g, vo + it * bs, table, i * table);
  }
  free(d);
  g->kind = GEOM_EXT;
  g->rec = isz;
  g->first = 1;
  return r;
}

/* Where inode INUM of ext volume V lives (bytes from the volume's start)
 * and its size, from the geometry read at the first use. */
static bool ext_inode_off(struct tb_inspect *ins, struct vol *v, uint64_t inum, uint64_t *voff,
                          uint32_t *isz)
{
  if (!v->ext_geom_tried) {
    v->ext_geom_tried = true;
    struct geom *g = calloc(1, sizeof *g);
    if (g && ext_geometry(ins->disk, &v->pub, g) == 0 && g->n > 0) {
      v->ext_geom = g; /* one extent per group, in group order */
    } else if (g) {
      geom_free(g);
      free(g);
    }
  }
  const struct geom *g = v->ext_geom;
  if (!g || inum < 1 || g->v[0].len == 0)
    return false;
  uint64_t foff = (inum - 1) * g->rec, table = g->v[0].len, grp = foff / table;
  if (grp >= g->n)
    return false;
  *voff = g->v[grp].off - v->pub.offset + foff % table;
  *isz = g->rec;
  return true;
}

/* NTFS: the MFT record size from the boot sector (byte 0x40: clusters per
 * record, or if negative 2^-n bytes), and where the MFT lies from $MFT's
 * own $DATA runs (libtsk opens entry 0 for us). */
static int ntfs_geometry(struct vol *v, struct tb_disk *disk, struct geom *g)
{
  unsigned char b[512];
  if (tb_disk_pread(disk, b, sizeof b, v->pub.offset) < 0 || memcmp(b + 3, "NTFS    ", 8) != 0)
    return -1;
  uint64_t bps = tb_get_le16(b + 0x0B), spc = b[0x0D];
  if (spc > 0x80)
    spc = spc >= 0xF4 ? 1ull << (256 - spc) : 0;
  if (bps < 256 || bps > 4096 || (bps & (bps - 1)) || spc == 0)
    return -1;
  uint64_t cluster = bps * spc;
  int c = (int8_t)b[0x40];
  uint64_t rec = c > 0 ? (uint64_t)c * cluster : (c <= -8 && c >= -16 ? 1ull << -c : 0);
  if (rec < 256 || rec > 65536 || cluster != v->fs->block_size)
    return -1;
  TSK_FS_FILE *f = tsk_fs_file_open_meta(v->fs, NULL, 0);
  const TSK_FS_ATTR *a =
      f && f->meta ? tsk_fs_file_attr_get_type(f, TSK_FS_ATTR_TYPE_NTFS_DATA, 0, 0) : NULL;
  int r = a && (a->flags & TSK_FS_ATTR_NONRES) && a->size > 0 ? 0 : -1;
  uint64_t asize = r == 0 ? (uint64_t)a->size : 0;
  int guard = 0;
  for (const TSK_FS_ATTR_RUN *run = r == 0 ? a->nrd.run : NULL; run && r == 0; run = run->next) {
    if (++guard > 100000 || run->addr > UINT64_MAX / cluster / 2 ||
        run->len > UINT64_MAX / cluster / 2 || run->offset > UINT64_MAX / cluster / 2)
      r = -1;
    else if (!(run->flags & (TSK_FS_ATTR_RUN_FLAG_FILLER | TSK_FS_ATTR_RUN_FLAG_SPARSE)) &&
             run->offset * cluster < asize) {
      uint64_t foff = run->offset * cluster, len = run->len * cluster;
      if (len > asize - foff)
        len = asize - foff;
      r = geom_add(g, v->pub.offset + run->addr * cluster, len, foff);
    }
  }
  tsk_fs_file_close(f);
  tsk_error_reset();
  g->kind = GEOM_NTFS;
  g->rec = (uint32_t)rec;
  g->first = 0;
  return r;
}

/* The metadata geometry of volume V of INS (on the worker).  -1 if its type
 * is not indexed or the parsers refuse what they read. */
static int vol_geometry(struct tb_inspect *ins, struct vol *v, struct geom *g)
{
  memset(g, 0, sizeof *g);
  int r = -1;
  if (TSK_FS_TYPE_ISEXT(v->fs->ftype))
    r = ext_geometry(ins->disk, &v->pub, g);
  else if (TSK_FS_TYPE_ISNTFS(v->fs->ftype))
    r = ntfs_geometry(v, ins->disk, g);
  if (r == 0)
    r = geom_finish(g, &v->pub);
  if (r < 0)
    geom_free(g);
  return r;
}

/* Does LIVE keep every record of BASE where BASE has it?  A table may grow
 * (ntfs-3g extends the MFT in place as it allocates entries): the new
 * records are new files, found through the listings that name them. */
static bool geom_covers(const struct geom *live, const struct geom *base)
{
  if (live->kind != base->kind || live->rec != base->rec || live->first != base->first)
    return false;
  for (size_t i = 0; i < base->n; i++) {
    const struct meta_extent *b = &base->v[i];
    size_t lo = 0, hi = live->n; /* the last live extent starting at or before b */
    while (lo < hi) {
      size_t mid = lo + (hi - lo) / 2;
      if (live->v[mid].off <= b->off)
        lo = mid + 1;
      else
        hi = mid;
    }
    if (lo == 0)
      return false;
    const struct meta_extent *l = &live->v[lo - 1];
    uint64_t skip = b->off - l->off;
    if (skip > l->len || b->len > l->len - skip || l->foff + skip != b->foff)
      return false;
  }
  return true;
}

/* -- building -- */

static void ivol_free(struct ivol *iv)
{
  geom_free(&iv->geom);
  free(iv->nodes);
  free(iv->names);
  free(iv->inums);
  free(iv->runs);
  free(iv->max_end);
}

static void index_put(struct tb_inspect_index *idx)
{
  if (!idx || atomic_fetch_sub(&idx->refs, 1) != 1)
    return;
  for (size_t i = 0; i < idx->n_vols; i++)
    ivol_free(&idx->vols[i]);
  free(idx->vols);
  free(idx);
}

static void *grow(void *p, size_t *cap, size_t need, size_t size)
{
  if (need <= *cap)
    return p;
  size_t cap2 = *cap ? *cap : 256;
  while (cap2 < need)
    cap2 *= 2;
  void *q = realloc(p, cap2 * size);
  if (q)
    *cap = cap2;
  return q;
}

/* An index is kept for long: give back what the doubling left unused. */
static void shrink(void **p, size_t *cap, size_t n, size_t size)
{
  void *q = n > 0 && n < *cap ? realloc(*p, n * size) : NULL;
  if (q) {
    *p = q;
    *cap = n;
  }
}

static int64_t add_node(struct ivol *iv, const char *name, uint32_t parent,
                        const struct tb_istat *st)
{
  size_t nl = strlen(name) + 1;
  if (iv->n_nodes >= INDEX_MAX_NODES || iv->names_len + nl > UINT32_MAX)
    goto oom;
  struct inode_node *nodes = grow(iv->nodes, &iv->cap_nodes, iv->n_nodes + 1, sizeof *nodes);
  if (!nodes)
    goto oom;
  iv->nodes = nodes;
  char *names = grow(iv->names, &iv->names_cap, iv->names_len + nl, 1);
  if (!names)
    goto oom;
  iv->names = names;
  memcpy(names + iv->names_len, name, nl);
  nodes[iv->n_nodes] = (struct inode_node){
      .name = (uint32_t)iv->names_len, .parent = parent, .first_child = 0, .st = *st};
  iv->names_len += nl;
  return (int64_t)iv->n_nodes++;
oom:
  errno = ENOMEM;
  return tb_error("out of memory indexing a filesystem");
}

struct ibuild {
  struct tb_inspect *ins;
  struct vol *v;
  struct ivol *iv;
  uint64_t stack[WALK_MAX_DEPTH];
  int depth;
};

/* The tree under NODE (directory INUM), as walk_dir() shows it: the same
 * depth limit, cycle cut, path length limit and unreadable directories. */
static int build_dir(struct ibuild *b, uint32_t node, uint64_t inum, size_t path_len)
{
  if (b->depth >= WALK_MAX_DEPTH)
    return 0;
  for (int i = 0; i < b->depth; i++)
    if (b->stack[i] == inum)
      return 0;
  struct cached_dir *cd = get_dir(b->ins, b->v, inum);
  if (!cd)
    return b->ins->deadline_hit ? -1 : 0;
  struct ivol *iv = b->iv;
  size_t first = iv->n_nodes;
  /* CD stays valid: no get_dir() until the children are copied. */
  for (size_t i = 0; i < cd->n; i++) {
    if ((i & 255) == 0 && past_deadline(b->ins))
      return tsk_fail(b->ins, "indexing the filesystem");
    if (path_len + 1 + strlen(cd->v[i].name) >= TB_PATH_MAX)
      continue;
    if (add_node(iv, cd->v[i].name, node, &cd->v[i].st) < 0)
      return -1;
  }
  iv->nodes[node].first_child = (uint32_t)first;
  iv->nodes[node].n_children = (uint32_t)(iv->n_nodes - first);
  size_t last = iv->n_nodes;
  b->stack[b->depth++] = inum;
  int r = 0;
  for (size_t k = first; k < last && r == 0; k++)
    if (iv->nodes[k].st.type == TB_FT_DIR)
      r = build_dir(b, (uint32_t)k, iv->nodes[k].st.inum,
                    path_len + 1 + strlen(iv->names + iv->nodes[k].name));
  b->depth--;
  return r;
}

static int inum_ref_cmp(const void *a, const void *b)
{
  const struct inum_ref *x = a, *y = b;
  if (x->inum != y->inum)
    return x->inum < y->inum ? -1 : 1;
  return x->node < y->node ? -1 : x->node > y->node;
}

static int interval_cmp(const void *a, const void *b)
{
  uint64_t x = ((const struct interval *)a)->start, y = ((const struct interval *)b)->start;
  return x < y ? -1 : x > y;
}

struct run_add {
  struct ivol *iv;
  uint64_t inum;
  bool failed;
};

static bool add_run(void *ctx, uint64_t d0, uint64_t d1)
{
  struct run_add *ra = ctx;
  struct ivol *iv = ra->iv;
  struct interval *runs = grow(iv->runs, &iv->cap_runs, iv->n_runs + 1, sizeof *runs);
  if (!runs) {
    ra->failed = true;
    return true;
  }
  iv->runs = runs;
  runs[iv->n_runs++] = (struct interval){d0, d1, ra->inum};
  return false;
}

/* Every path of volume V, then the inode map and the content runs of each
 * distinct inode. */
static int build_volume(struct tb_inspect *ins, struct vol *v, struct ivol *iv)
{
  if (add_node(iv, "", NODE_NONE, &v->root) < 0)
    return -1;
  struct ibuild *b = calloc(1, sizeof *b);
  if (!b) {
    errno = ENOMEM;
    return tb_error("out of memory indexing a filesystem");
  }
  *b = (struct ibuild){.ins = ins, .v = v, .iv = iv};
  int r = build_dir(b, 0, v->root.inum, 0);
  free(b);
  if (r < 0)
    return -1;
  iv->inums = calloc(iv->n_nodes, sizeof *iv->inums);
  if (!iv->inums) {
    errno = ENOMEM;
    return tb_error("out of memory indexing a filesystem");
  }
  for (size_t i = 0; i < iv->n_nodes; i++)
    iv->inums[i] = (struct inum_ref){iv->nodes[i].st.inum, (uint32_t)i};
  iv->n_inums = iv->n_nodes;
  qsort(iv->inums, iv->n_inums, sizeof *iv->inums, inum_ref_cmp);
  for (size_t i = 0; i < iv->n_inums; i++) {
    if ((i & 255) == 0 && past_deadline(ins))
      return tsk_fail(ins, "indexing the filesystem");
    if (i > 0 && iv->inums[i - 1].inum == iv->inums[i].inum)
      continue; /* a hard link: runs once per inode */
    struct run_add ra = {iv, iv->inums[i].inum, false};
    for_each_run(ins, v, ra.inum, add_run, &ra);
    if (ra.failed) {
      errno = ENOMEM;
      return tb_error("out of memory indexing a filesystem");
    }
  }
  shrink((void **)&iv->nodes, &iv->cap_nodes, iv->n_nodes, sizeof *iv->nodes);
  shrink((void **)&iv->names, &iv->names_cap, iv->names_len, 1);
  shrink((void **)&iv->runs, &iv->cap_runs, iv->n_runs, sizeof *iv->runs);
  if (iv->n_runs > 0) {
    qsort(iv->runs, iv->n_runs, sizeof *iv->runs, interval_cmp);
    if (!(iv->max_end = malloc(iv->n_runs * sizeof *iv->max_end))) {
      errno = ENOMEM;
      return tb_error("out of memory indexing a filesystem");
    }
    uint64_t m = 0;
    for (size_t i = 0; i < iv->n_runs; i++)
      iv->max_end[i] = m = iv->runs[i].end > m ? iv->runs[i].end : m;
  }
  return 0;
}

static int do_index(struct tb_inspect *ins, struct job *j)
{
  struct tb_inspect_index *idx = calloc(1, sizeof *idx);
  if (idx && ins->n_vols > 0 && !(idx->vols = calloc(ins->n_vols, sizeof *idx->vols))) {
    free(idx);
    idx = NULL;
  }
  if (!idx) {
    errno = ENOMEM;
    return tb_error("out of memory indexing a filesystem");
  }
  atomic_init(&idx->refs, 1);
  idx->disk_size = tb_disk_size(ins->disk);
  idx->n_vols = ins->n_vols;
  j->index = idx; /* the job's: freed with it if the caller gave up */
  idx->bytes = sizeof *idx + idx->n_vols * sizeof *idx->vols;
  for (size_t i = 0; i < ins->n_vols; i++) {
    struct vol *v = &ins->vols[i];
    struct ivol *iv = &idx->vols[i];
    iv->pub = v->pub;
    /* FAT and exFAT keep metadata in the parent's directory entries: the
     * full diff serves them (small volumes, EFI system partitions). */
    if (vol_geometry(ins, v, &iv->geom) < 0) {
      if (ins->deadline_hit)
        return tsk_fail(ins, "indexing the filesystem");
      continue;
    }
    if (build_volume(ins, v, iv) < 0)
      return -1;
    idx->files += iv->n_nodes - 1;
    idx->bytes += iv->cap_nodes * sizeof *iv->nodes + iv->names_cap +
                  iv->n_inums * sizeof *iv->inums + iv->cap_runs * sizeof *iv->runs +
                  iv->n_runs * sizeof *iv->max_end + iv->geom.cap * sizeof *iv->geom.v;
  }
  return 0;
}

struct tb_inspect_index *tb_inspect_index_build(struct tb_inspect *base)
{
  struct job *j = job_new(base, JOB_INDEX, deadline_in(base, 2 * TB_INSPECT_WALK_FACTOR));
  if (!j)
    return NULL;
  struct tb_inspect_index *idx = NULL;
  if (run_request(base, j) == 0) {
    idx = j->index;
    j->index = NULL;
  }
  job_put(j);
  return idx;
}

struct tb_inspect_index *tb_inspect_index_ref(struct tb_inspect_index *idx)
{
  if (idx)
    atomic_fetch_add(&idx->refs, 1);
  return idx;
}

void tb_inspect_index_free(struct tb_inspect_index *idx)
{
  index_put(idx);
}

uint64_t tb_inspect_index_files(const struct tb_inspect_index *idx)
{
  return idx ? idx->files : 0;
}

size_t tb_inspect_index_bytes(const struct tb_inspect_index *idx)
{
  return idx ? idx->bytes : 0;
}

/* Was IDX built from a disk like BASE's (same size, same volumes)? */
static bool index_of(const struct tb_inspect_index *idx, struct tb_inspect *base)
{
  if (idx->disk_size != tb_disk_size(base->disk) || idx->n_vols != base->n_vols)
    return false;
  for (size_t i = 0; i < idx->n_vols; i++)
    if (strcmp(idx->vols[i].pub.name, base->vols[i].pub.name) != 0 ||
        idx->vols[i].pub.offset != base->vols[i].pub.offset)
      return false;
  return true;
}

/* The index volume that serves base volume BV against live volume LV, or -1
 * (BY_DESIGN: the volume's type is not indexed, FAT or exFAT). */
static int index_volume(const struct tb_inspect_index *idx, const struct tb_volume *bv,
                        const struct tb_volume *lv, bool *by_design)
{
  *by_design = false;
  for (size_t k = 0; k < idx->n_vols; k++) {
    const struct ivol *iv = &idx->vols[k];
    if (strcmp(iv->pub.name, bv->name) != 0)
      continue;
    if (iv->pub.offset != bv->offset || iv->pub.length != bv->length ||
        iv->pub.offset != lv->offset || iv->pub.length != lv->length ||
        strcmp(iv->pub.fstype, lv->fstype) != 0)
      return -1;
    if (iv->geom.kind == GEOM_NONE) {
      *by_design = strncmp(iv->pub.fstype, "fat", 3) == 0 || strcmp(iv->pub.fstype, "exfat") == 0;
      return -1;
    }
    return (int)k;
  }
  return -1;
}

/* -- the diff of one volume through the index, on the live handle's worker -- */

struct cands {
  uint64_t *v;
  size_t n, cap;
};

static int cands_add(struct cands *c, uint64_t inum)
{
  uint64_t *v = grow(c->v, &c->cap, c->n + 1, sizeof *v);
  if (!v) {
    errno = ENOMEM;
    return tb_error("out of memory comparing filesystems");
  }
  c->v = v;
  c->v[c->n++] = inum;
  return 0;
}

static int u64_cmp(const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static bool cands_has(const struct cands *c, uint64_t inum)
{
  return c->n > 0 && bsearch(&inum, c->v, c->n, sizeof *c->v, u64_cmp) != NULL;
}

enum { FL_DESCEND = 1, FL_RELIST = 2 };

struct idiff {
  struct tb_inspect *ins; /* live */
  struct vol *v;
  const struct ivol *iv;
  const struct tb_ranges *dirty;
  struct tb_disk *base;
  struct cands c;
  uint8_t *flags; /* per node */
  struct changes *out;
  const char *vname;
  struct tb_diff_stats *stats;
  uint64_t stack[WALK_MAX_DEPTH];
  int depth;
  char path[TB_PATH_MAX];
};

/* Records whose bytes lie in dirty ranges.  An NTFS extension record also
 * names its base record (header byte 0x20), whose file it changes. */
static int meta_candidates(struct idiff *x, const struct geom *g)
{
  const struct tb_ranges *d = x->dirty;
  for (size_t e = 0; e < g->n; e++) {
    const struct meta_extent *m = &g->v[e];
    for (size_t k = ranges_lower_bound(d, m->off); k < d->n && d->v[k].off < m->off + m->len; k++) {
      uint64_t x0 = d->v[k].off > m->off ? d->v[k].off : m->off;
      uint64_t x1 =
          d->v[k].off + d->v[k].len < m->off + m->len ? d->v[k].off + d->v[k].len : m->off + m->len;
      uint64_t f0 = x0 - m->off + m->foff, f1 = x1 - m->off + m->foff;
      for (uint64_t rec = f0 / g->rec; rec <= (f1 - 1) / g->rec; rec++) {
        if ((rec & 1023) == 0 && past_deadline(x->ins))
          return tsk_fail(x->ins, "comparing filesystems");
        if (cands_add(&x->c, rec + g->first) < 0)
          return -1;
        uint64_t at = rec * g->rec;
        unsigned char h[0x28];
        if (g->kind == GEOM_NTFS && at >= m->foff && m->len >= sizeof h &&
            at - m->foff <= m->len - sizeof h &&
            tb_disk_pread(x->ins->disk, h, sizeof h, m->off + (at - m->foff)) == 0 &&
            memcmp(h, "FILE", 4) == 0 && (tb_get_le64(h + 0x20) & 0xFFFFFFFFFFFFull) != 0 &&
            cands_add(&x->c, tb_get_le64(h + 0x20) & 0xFFFFFFFFFFFFull) < 0)
          return -1;
      }
    }
  }
  return 0;
}

/* Files and directories whose content runs (in BASE) lie in dirty ranges. */
static int content_candidates(struct idiff *x)
{
  const struct ivol *iv = x->iv;
  const struct tb_ranges *d = x->dirty;
  uint64_t vo = iv->pub.offset, ve = vo + iv->pub.length;
  size_t steps = 0;
  for (size_t k = ranges_lower_bound(d, vo); k < d->n && d->v[k].off < ve && iv->n_runs > 0; k++) {
    uint64_t r0 = d->v[k].off, r1 = r0 + d->v[k].len;
    /* Runs that may end after r0: from the first whose max_end does. */
    size_t lo = 0, hi = iv->n_runs;
    while (lo < hi) {
      size_t mid = lo + (hi - lo) / 2;
      if (iv->max_end[mid] <= r0)
        lo = mid + 1;
      else
        hi = mid;
    }
    for (size_t i = lo; i < iv->n_runs && iv->runs[i].start < r1; i++) {
      if ((++steps & 4095) == 0 && past_deadline(x->ins))
        return tsk_fail(x->ins, "comparing filesystems");
      if (iv->runs[i].end > r0 && cands_add(&x->c, iv->runs[i].inum) < 0)
        return -1;
    }
  }
  return 0;
}

/* Mark what to visit: a candidate directory and the parent of every
 * candidate are listed again; their ancestors are descended into. */
static void mark_candidates(struct idiff *x)
{
  const struct ivol *iv = x->iv;
  for (size_t i = 0; i < x->c.n; i++) {
    struct inum_ref key = {x->c.v[i], 0};
    size_t lo = 0, hi = iv->n_inums;
    while (lo < hi) {
      size_t mid = lo + (hi - lo) / 2;
      if (inum_ref_cmp(&iv->inums[mid], &key) < 0)
        lo = mid + 1;
      else
        hi = mid;
    }
    for (size_t k = lo; k < iv->n_inums && iv->inums[k].inum == key.inum; k++) {
      uint32_t n = iv->inums[k].node;
      if (iv->nodes[n].st.type == TB_FT_DIR)
        x->flags[n] |= FL_RELIST | FL_DESCEND;
      uint32_t p = iv->nodes[n].parent;
      if (p == NODE_NONE)
        continue;
      x->flags[p] |= FL_RELIST;
      for (; p != NODE_NONE && !(x->flags[p] & FL_DESCEND); p = iv->nodes[p].parent)
        x->flags[p] |= FL_DESCEND;
    }
  }
}

static const char *node_name(const struct ivol *iv, uint32_t n)
{
  return iv->names + iv->nodes[n].name;
}

/* Put NAME after the first PATH_LEN bytes of x->path; returns the new length. */
static size_t set_path(struct idiff *x, size_t path_len, const char *name)
{
  size_t nl = strlen(name);
  x->path[path_len] = '/';
  memcpy(x->path + path_len + 1, name, nl + 1);
  return path_len + 1 + nl;
}

/* NODE (at x->path) and everything under it, deleted. */
static int deleted_subtree(struct idiff *x, uint32_t node, size_t path_len)
{
  const struct inode_node *n = &x->iv->nodes[node];
  int r = changes_add(x->out, TB_DELETED, x->vname, x->path, &n->st);
  for (uint32_t k = 0; k < n->n_children && r == 0; k++) {
    uint32_t c = n->first_child + k;
    r = deleted_subtree(x, c, set_path(x, path_len, node_name(x->iv, c)));
    x->path[path_len] = '\0';
  }
  return r;
}

static int deleted_children(struct idiff *x, uint32_t node, size_t path_len)
{
  const struct inode_node *n = &x->iv->nodes[node];
  int r = 0;
  for (uint32_t k = 0; k < n->n_children && r == 0; k++) {
    uint32_t c = n->first_child + k;
    r = deleted_subtree(x, c, set_path(x, path_len, node_name(x->iv, c)));
    x->path[path_len] = '\0';
  }
  return r;
}

static int created_cb(void *ctx, const char *path, const struct tb_istat *st, bool touched)
{
  (void)touched;
  struct idiff *x = ctx;
  x->stats->files_examined++;
  return changes_add(x->out, TB_CREATED, x->vname, path, st);
}

/* Everything under live directory INUM (at x->path), created: the walk. */
static int created_children(struct idiff *x, uint64_t inum, size_t path_len)
{
  struct walk *w = calloc(1, sizeof *w);
  if (!w) {
    errno = ENOMEM;
    return tb_error("out of memory comparing filesystems");
  }
  *w = (struct walk){.ins = x->ins, .v = x->v, .fn = created_cb, .ctx = x, .depth = x->depth};
  memcpy(w->stack, x->stack, sizeof w->stack);
  memcpy(w->path, x->path, path_len + 1);
  int r = walk_dir(w, inum, path_len);
  free(w);
  return r;
}

static int visit(struct idiff *x, uint32_t bn, uint64_t linum, bool relist, size_t path_len);

/* Base node BK and live entry LST at the same path (x->path). */
static int compare_entry(struct idiff *x, uint32_t bk, const struct tb_istat *lst, size_t path_len)
{
  const struct tb_istat *b = &x->iv->nodes[bk].st;
  int r = 0;
  if (b->type == TB_FT_DIR && lst->type == TB_FT_DIR) {
    if (meta_changed(b, lst))
      r = changes_add(x->out, TB_CHANGED, x->vname, x->path, lst);
    return r ? r
             : visit(x, bk, lst->inum, lst->inum != b->inum || cands_has(&x->c, lst->inum),
                     path_len);
  }
  bool changed = meta_changed(b, lst);
  int confirm = CONFIRM_NONE;
  if (!changed)
    changed = replaced(b, lst, &confirm);
  if (!changed && lst->type == TB_FT_REG && cands_has(&x->c, lst->inum) &&
      (changed = content_touched(x->ins, x->v, lst->inum, x->dirty, x->base)))
    confirm = CONFIRM_DIRTY;
  if (changed && (r = changes_add(x->out, TB_CHANGED, x->vname, x->path, lst)) == 0)
    x->out->v[x->out->n - 1].confirm = confirm;
  if (r == 0 && b->type == TB_FT_DIR)
    r = deleted_children(x, bk, path_len);
  if (r == 0 && lst->type == TB_FT_DIR)
    r = created_children(x, lst->inum, path_len);
  return r;
}

struct lent {
  char *name;
  uint64_t inum;
  size_t idx;        /* in the TSK_FS_DIR, or in the NTFS names */
  uint32_t base;     /* the base child of that name, or NODE_NONE */
  bool loaded, virt; /* stat read (virt: libtsk's virtual file, not listed) */
  struct tb_istat st;
};

static int lent_cmp(const void *a, const void *b)
{
  return strcmp(((const struct lent *)a)->name, ((const struct lent *)b)->name);
}

static uint32_t find_child(const struct ivol *iv, uint32_t bn, const char *name)
{
  const struct inode_node *n = &iv->nodes[bn];
  size_t lo = 0, hi = n->n_children;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(node_name(iv, n->first_child + (uint32_t)mid), name);
    if (c == 0)
      return n->first_child + (uint32_t)mid;
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NODE_NONE;
}

static void lents_free(struct lent *le, size_t n)
{
  for (size_t i = 0; i < n; i++)
    free(le[i].name);
  free(le);
}

/* List live directory LINUM as read_dir() does, sorted by name, but read
 * the metadata only of entries that are new, renumbered or candidates: the
 * others are the base's (their inode was not written). */
static int list_live(struct idiff *x, uint32_t bn, uint64_t linum, size_t path_len,
                     struct lent **out, size_t *n_out)
{
  struct vol *v = x->v;
  *out = NULL;
  *n_out = 0;
  x->stats->dirs_relisted++;
  /* NTFS through its index, as read_dir() lists it (libtsk adds names
   * ntfs-3g does not show). */
  struct ntfs_name *names = NULL;
  size_t n_names = 0, cnt = 0;
  bool fallback = true;
  bool ours = TSK_FS_TYPE_ISNTFS(v->fs->ftype) &&
              ntfs_list_names(x->ins, v, linum, &names, &n_names, &fallback);
  if (!ours && !fallback && x->ins->deadline_hit)
    return tsk_fail(x->ins, "cannot read directory");
  if (!ours && !fallback) {
    errno = ENOMEM;
    return tb_error("out of memory comparing filesystems");
  }
  cnt = n_names;
  TSK_FS_DIR *td = NULL;
  if (!ours) {
    TSK_FS_FILE *dm = tsk_fs_file_open_meta(v->fs, NULL, (TSK_INUM_T)linum);
    bool plausible = dm && dm->meta && size_plausible(v, dm->meta);
    tsk_fs_file_close(dm);
    td = plausible ? tsk_fs_dir_open_meta(v->fs, (TSK_INUM_T)linum) : NULL;
    tsk_error_reset();
    if (!td) /* unreadable: the walk skips it */
      return x->ins->deadline_hit ? tsk_fail(x->ins, "cannot read directory") : 0;
    cnt = tsk_fs_dir_getsize(td);
  }
  if (cnt > TB_INSPECT_MAX_DIR_ENTRIES)
    cnt = TB_INSPECT_MAX_DIR_ENTRIES;
  struct lent *le = calloc(cnt ? cnt : 1, sizeof *le);
  size_t n = 0;
  int r = le ? 0 : -1;
  struct name_seen seen = {0};
  for (size_t i = 0; i < cnt && r == 0; i++) {
    if ((i & 255) == 0 && past_deadline(x->ins))
      break;
    if (ours) { /* already an entry_name(); the metadata is loaded below */
      if (path_len + 1 + strlen(names[i].name) < TB_PATH_MAX) {
        le[n++] = (struct lent){.name = names[i].name, .inum = names[i].ref, .idx = i};
        names[i].name = NULL;
      }
      continue;
    }
    const TSK_FS_NAME *nm = tsk_fs_dir_get_name(td, i);
    char *name = entry_name(nm, &seen);
    if (!name && errno == ENOMEM)
      r = -1;
    else if (name && path_len + 1 + strlen(name) >= TB_PATH_MAX)
      free(name);
    else if (name)
      le[n++] = (struct lent){.name = name, .inum = nm->meta_addr, .idx = i};
  }
  if (r == 0 && n > 0) {
    qsort(le, n, sizeof *le, lent_cmp);
    size_t k = 0; /* a damaged directory may name a file twice: keep the first */
    for (size_t i = 0; i < n; i++) {
      if (k > 0 && strcmp(le[k - 1].name, le[i].name) == 0)
        free(le[i].name);
      else
        le[k++] = le[i];
    }
    n = k;
  }
  for (size_t i = 0; i < n && r == 0 && !x->ins->deadline_hit; i++) {
    le[i].base = find_child(x->iv, bn, le[i].name);
    if (le[i].base != NODE_NONE && x->iv->nodes[le[i].base].st.inum == le[i].inum &&
        !cands_has(&x->c, le[i].inum))
      continue; /* the base's entry, unchanged */
    if ((i & 63) == 0 && past_deadline(x->ins))
      break;
    le[i].loaded = true;
    if (ours) {
      const struct ntfs_name *nn = &names[le[i].idx];
      TSK_FS_NAME nm = {.name = le[i].name,
                        .meta_addr = nn->ref,
                        .meta_seq = nn->seq,
                        .flags = TSK_FS_NAME_FLAG_ALLOC,
                        .type = nn->type};
      le[i].st = (struct tb_istat){.type = name_type(nn->type), .inum = nn->ref, .nlink = 1};
      le[i].virt =
          !file_stat(x->ins, v, tsk_fs_file_open_meta(v->fs, NULL, nn->ref), &nm, &le[i].st);
    } else {
      const TSK_FS_NAME *nm = tsk_fs_dir_get_name(td, le[i].idx);
      le[i].virt = !nm || !entry_stat(x->ins, x->v, td, le[i].idx, nm, &le[i].st);
    }
    x->stats->files_examined++;
  }
  if (td)
    tsk_fs_dir_close(td);
  ntfs_names_free(names, n_names);
  if (r < 0) {
    lents_free(le, n);
    errno = ENOMEM;
    return tb_error("out of memory comparing filesystems");
  }
  if (x->ins->deadline_hit) {
    lents_free(le, n);
    return tsk_fail(x->ins, "cannot read directory");
  }
  *out = le;
  *n_out = n;
  return 0;
}

/* Live directory LINUM against base directory node BN (both at x->path). */
static int relist_dir(struct idiff *x, uint32_t bn, uint64_t linum, size_t path_len)
{
  struct lent *le;
  size_t n;
  if (list_live(x, bn, linum, path_len, &le, &n) < 0)
    return -1;
  const struct inode_node *b = &x->iv->nodes[bn];
  uint32_t bf = b->first_child, bc = b->n_children;
  size_t i = 0, k = 0;
  int r = 0;
  while (r == 0 && (i < n || k < bc)) {
    if (past_deadline(x->ins)) {
      r = tsk_fail(x->ins, "comparing filesystems");
      break;
    }
    int cmp = i == n ? 1 : k == bc ? -1 : strcmp(le[i].name, node_name(x->iv, bf + k));
    if (cmp < 0) { /* only in live */
      size_t pl = set_path(x, path_len, le[i].name);
      if (!le[i].virt) {
        r = changes_add(x->out, TB_CREATED, x->vname, x->path, &le[i].st);
        if (r == 0 && le[i].st.type == TB_FT_DIR)
          r = created_children(x, le[i].st.inum, pl);
      }
      i++;
    } else if (cmp > 0) { /* only in base */
      r = deleted_subtree(x, bf + k, set_path(x, path_len, node_name(x->iv, bf + k)));
      k++;
    } else {
      uint32_t c = bf + k;
      size_t pl = set_path(x, path_len, le[i].name);
      if (le[i].virt)
        r = deleted_subtree(x, c, pl);
      else if (le[i].loaded)
        r = compare_entry(x, c, &le[i].st, pl);
      else if (x->flags[c] && x->iv->nodes[c].st.type == TB_FT_DIR)
        r = visit(x, c, le[i].inum, false, pl);
      i++;
      k++;
    }
    x->path[path_len] = '\0';
  }
  lents_free(le, n);
  return r;
}

/* Base directory node BN, live directory LINUM, at x->path: listed again
 * if RELIST or marked so, else only the marked children are visited (the
 * listing is the base's: neither its runs nor its metadata were written). */
static int visit(struct idiff *x, uint32_t bn, uint64_t linum, bool relist, size_t path_len)
{
  bool cut = x->depth >= WALK_MAX_DEPTH;
  for (int i = 0; i < x->depth && !cut; i++)
    cut = x->stack[i] == linum;
  if (cut) /* the walk does not list it */
    return deleted_children(x, bn, path_len);
  x->stack[x->depth++] = linum;
  int r = 0;
  if (relist || (x->flags[bn] & FL_RELIST)) {
    r = relist_dir(x, bn, linum, path_len);
  } else {
    const struct inode_node *b = &x->iv->nodes[bn];
    for (uint32_t k = 0; k < b->n_children && r == 0; k++) {
      uint32_t c = b->first_child + k;
      if (!x->flags[c] || x->iv->nodes[c].st.type != TB_FT_DIR)
        continue;
      if (past_deadline(x->ins)) {
        r = tsk_fail(x->ins, "comparing filesystems");
        break;
      }
      r = visit(x, c, x->iv->nodes[c].st.inum, false, set_path(x, path_len, node_name(x->iv, c)));
      x->path[path_len] = '\0';
    }
  }
  x->depth--;
  return r;
}

/* Returns 0 (changes added to j->changes), 1 if the index cannot be trusted
 * for this volume (its records moved: the caller runs the full diff), or
 * -1 with errno. */
static int do_idiff(struct tb_inspect *ins, struct job *j)
{
  struct vol *v = get_vol(ins, j->vol);
  if (!v)
    return -1;
  const struct ivol *iv = &j->index->vols[j->ivol];
  struct geom g;
  bool same = vol_geometry(ins, v, &g) == 0 && geom_covers(&g, &iv->geom) && iv->n_nodes > 0 &&
              iv->nodes[0].st.inum == v->root.inum;
  if (!same) {
    geom_free(&g);
    return ins->deadline_hit ? tsk_fail(ins, "comparing filesystems") : 1;
  }
  struct idiff *x = calloc(1, sizeof *x);
  uint8_t *flags = calloc(iv->n_nodes, 1);
  if (!x || !flags) {
    free(x);
    free(flags);
    geom_free(&g);
    errno = ENOMEM;
    return tb_error("out of memory comparing filesystems");
  }
  *x = (struct idiff){.ins = ins,
                      .v = v,
                      .iv = iv,
                      .dirty = &j->dirty,
                      .base = j->base,
                      .flags = flags,
                      .out = j->changes,
                      .vname = v->pub.name,
                      .stats = &j->stats};
  int r = meta_candidates(x, &g); /* the live table: a grown MFT's new extension records too */
  if (r == 0)
    r = content_candidates(x);
  if (r == 0 && x->c.n > 0) {
    qsort(x->c.v, x->c.n, sizeof *x->c.v, u64_cmp);
    size_t k = 0;
    for (size_t i = 0; i < x->c.n; i++)
      if (k == 0 || x->c.v[k - 1] != x->c.v[i])
        x->c.v[k++] = x->c.v[i];
    x->c.n = k;
  }
  j->stats.candidates = x->c.n;
  if (r == 0) {
    mark_candidates(x);
    r = visit(x, 0, v->root.inum, false, 0);
  }
  free(x->c.v);
  free(flags);
  free(x);
  geom_free(&g);
  return r;
}

static int idiff_request(struct tb_inspect_index *idx, size_t ivol, struct tb_inspect *base,
                         struct tb_inspect *live, size_t li, const struct tb_ranges *dirty,
                         int64_t deadline_ms, struct changes *out, struct tb_diff_stats *stats)
{
  struct job *j = job_new(live, JOB_IDIFF, deadline_ms);
  if (!j)
    return -1;
  j->vol = li;
  j->ivol = ivol;
  j->index = tb_inspect_index_ref(idx);
  j->base = tb_disk_ref(base->disk);
  j->has_dirty = true;
  /* Only the dirty ranges of this volume: the worker owns its copy. */
  const struct tb_volume *lv = &live->vols[li].pub;
  int r = 0;
  if (!(j->changes = calloc(1, sizeof *j->changes))) {
    errno = ENOMEM;
    r = tb_error("out of memory comparing filesystems");
  }
  for (size_t i = ranges_lower_bound(dirty, lv->offset);
       r == 0 && i < dirty->n && dirty->v[i].off < lv->offset + lv->length; i++)
    r = tb_ranges_add(&j->dirty, dirty->v[i].off, dirty->v[i].len);
  if (r == 0)
    r = (int)run_request(live, j);
  if (r >= 0) {
    stats->candidates += j->stats.candidates;
    stats->files_examined += j->stats.files_examined;
    stats->dirs_relisted += j->stats.dirs_relisted;
  }
  struct changes *c = j->changes;
  if (r == 0 && c->n > 0) {
    struct change *v = realloc(out->v, (out->n + c->n) * sizeof *v);
    if (!v) {
      errno = ENOMEM;
      r = tb_error("out of memory comparing filesystems");
    } else {
      out->v = v;
      memcpy(out->v + out->n, c->v, c->n * sizeof *v);
      out->n += c->n;
      out->cap = out->n;
      c->n = 0; /* moved */
    }
  }
  job_put(j);
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
