/* SPDX-License-Identifier: BSD-3-Clause */
/* lib/inspect-disk.c: the byte sources inspection reads (see inspect.h).
 *
 * A tb_disk is a size and a read callback with a reference count: an NBD
 * export (libnbd, a pool of handles, requests of at most NBD_MAX_REQUEST), a file,
 * or a caller's callback.  Its stuck count is the inspection workers on it
 * that overran a deadline (inspect-worker.c).  Also here: byte ranges
 * (tb_ranges: added in ascending order, merged with the last) and the dirty
 * map of an NBD export, read with block status (base:allocation: what is
 * not a hole is dirty).
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libnbd.h>

#include "inspect-internal.h"

#define NBD_MAX_REQUEST (8u << 20)

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
  d->fd = -1;
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

struct tb_disk *tb_disk_open_fd(int fd, const char *name)
{
  struct stat st;
  if (fstat(fd, &st) < 0) {
    tb_error_errno("%s: cannot stat the disk image", name);
    close(fd);
    return NULL;
  }
  struct tb_disk *d =
      tb_disk_new((uint64_t)st.st_size, file_read, file_close, (void *)(intptr_t)fd, name);
  if (!d)
    close(fd);
  else
    d->fd = fd;
  return d;
}

int tb_disk_local_fd(const struct tb_disk *d)
{
  return d->fd;
}

struct tb_disk *tb_disk_open_file(const char *path)
{
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    tb_error_errno("%s: cannot open the disk image", path);
    return NULL;
  }
  return tb_disk_open_fd(fd, path);
}

/* -- NBD --
 *
 * An NBD disk is a small pool of libnbd handles to one export.  A libnbd
 * handle runs one synchronous request at a time, so with one handle the
 * view's FUSE threads (a directory walk and a file read, or two readers)
 * queue behind each other's round trips.  The first handle is opened by
 * tb_disk_open_nbd (its errors are the caller's); up to NBD_HANDLES - 1 more
 * connect when every open one is busy.  A further connection that fails is
 * not an error: its reader waits for a handle already open, and the pool
 * stops growing.  Every handle serves the same export, so every read of an
 * immutable export sees the same bytes, and of a live one the disk as it is
 * at that moment, as with one handle.
 */

#define NBD_HANDLES 4

struct nbd_pool {
  pthread_mutex_t lock; /* guards h, busy, n, full */
  pthread_cond_t freed; /* a handle was given back */
  struct nbd_handle *h[NBD_HANDLES];
  bool busy[NBD_HANDLES];
  size_t n;  /* slots used: open handles and those connecting */
  bool full; /* a further connection failed: grow no more */
  char *uri, *socket, *export;
  char what[256];
};

/* Open one handle to the pool's export; its size in *SIZE. */
static struct nbd_handle *nbd_connect_one(const struct nbd_pool *p, int64_t *size)
{
  struct nbd_handle *h = nbd_create();
  if (!h) {
    tb_error("%s: %s", p->what, nbd_get_error());
    return NULL;
  }
  /* Every read's result is checked (a failed one is an error, never
   * data), so libnbd need not zero each buffer first: a tenth of a
   * sequential read's time. */
  int r = nbd_set_pread_initialize(h, false);
  if (r == 0)
    r = nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION);
  if (r == 0 && p->uri && p->export) {
    /* Negotiate by hand so EXPORT replaces the URI's export name. */
    r = nbd_set_opt_mode(h, true);
    if (r == 0)
      r = nbd_connect_uri(h, p->uri);
    if (r == 0)
      r = nbd_set_export_name(h, p->export);
    if (r == 0)
      r = nbd_opt_go(h);
  } else if (r == 0 && p->uri) {
    r = nbd_connect_uri(h, p->uri);
  } else if (r == 0) {
    r = nbd_set_export_name(h, p->export ? p->export : "");
    if (r == 0)
      r = nbd_connect_unix(h, p->socket);
  }
  *size = r == 0 ? nbd_get_size(h) : -1;
  if (*size < 0) {
    int e = nbd_get_errno();
    tb_error("%s: %s", p->what, nbd_get_error());
    nbd_close(h);
    errno = e ? e : EIO;
    return NULL;
  }
  return h;
}

/* A handle for one request (give it back with nbd_give): a free one, else
 * a new one while the pool may grow, else the next one given back. */
static size_t nbd_take(struct nbd_pool *p)
{
  pthread_mutex_lock(&p->lock);
  for (;;) {
    for (size_t i = 0; i < p->n; i++) {
      if (p->h[i] && !p->busy[i]) {
        p->busy[i] = true;
        pthread_mutex_unlock(&p->lock);
        return i;
      }
    }
    if (p->n < NBD_HANDLES && !p->full) {
      size_t i = p->n++;
      p->busy[i] = true;
      pthread_mutex_unlock(&p->lock);
      int64_t size;
      struct nbd_handle *h = nbd_connect_one(p, &size);
      pthread_mutex_lock(&p->lock);
      if (h) {
        p->h[i] = h;
        pthread_mutex_unlock(&p->lock);
        return i;
      }
      /* The slot stays empty; handle 0 is always open, so waiting ends. */
      p->full = true;
      p->busy[i] = false;
      continue;
    }
    pthread_cond_wait(&p->freed, &p->lock);
  }
}

static void nbd_give(struct nbd_pool *p, size_t i)
{
  pthread_mutex_lock(&p->lock);
  p->busy[i] = false;
  pthread_cond_signal(&p->freed);
  pthread_mutex_unlock(&p->lock);
}

static int nbd_read(void *opaque, void *buf, size_t len, uint64_t off)
{
  struct nbd_pool *p = opaque;
  size_t i = nbd_take(p);
  struct nbd_handle *h = p->h[i];
  char *pos = buf;
  int r = 0;
  while (len > 0 && r == 0) {
    size_t n = len < NBD_MAX_REQUEST ? len : NBD_MAX_REQUEST;
    if (nbd_pread(h, pos, n, off, 0) < 0) {
      int e = nbd_get_errno();
      r = tb_error("NBD read of %zu bytes at %" PRIu64 ": %s", n, off, nbd_get_error());
      errno = e ? e : EIO;
    }
    pos += n;
    off += n;
    len -= n;
  }
  int saved = errno;
  nbd_give(p, i);
  errno = saved;
  return r;
}

static void nbd_pool_free(void *opaque)
{
  struct nbd_pool *p = opaque;
  if (!p)
    return;
  for (size_t i = 0; i < p->n; i++)
    if (p->h[i])
      nbd_close(p->h[i]);
  pthread_cond_destroy(&p->freed);
  pthread_mutex_destroy(&p->lock);
  free(p->uri);
  free(p->socket);
  free(p->export);
  free(p);
}

struct tb_disk *tb_disk_open_nbd(const char *uri, const char *socket, const char *export)
{
  struct nbd_pool *p = calloc(1, sizeof *p);
  if (!p || (uri && !(p->uri = strdup(uri))) || (socket && !(p->socket = strdup(socket))) ||
      (export && !(p->export = strdup(export)))) {
    if (p) {
      free(p->uri);
      free(p->socket);
      free(p->export);
    }
    free(p);
    errno = ENOMEM;
    tb_error("NBD export '%s': out of memory", export ? export : "");
    return NULL;
  }
  pthread_mutex_init(&p->lock, NULL);
  pthread_cond_init(&p->freed, NULL);
  snprintf(p->what, sizeof p->what, "NBD export '%s' at %s", export ? export : "",
           uri ? uri : socket);
  int64_t size;
  if (!(p->h[0] = nbd_connect_one(p, &size))) {
    int e = errno;
    nbd_pool_free(p);
    errno = e;
    return NULL;
  }
  p->n = 1;
  struct tb_disk *d = tb_disk_new((uint64_t)size, nbd_read, nbd_pool_free, p, p->what);
  if (!d) {
    nbd_pool_free(p);
    return NULL;
  }
  d->nbd = p;
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
  /* R grows as a vector; struct tb_ranges (inspect.h) keeps v and n, the
   * names every user of a dirty map reads. */
  TB_VECTOR(ranges, struct tb_range) grown = {r->v, r->n, r->cap};
  if (tb_vector_push(&grown, ((struct tb_range){off, len})) == -1) {
    errno = ENOMEM;
    return tb_error("out of memory for dirty ranges");
  }
  r->v = grown.ptr;
  r->n = grown.len;
  r->cap = grown.cap;
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
  size_t lo = tbi_ranges_lower_bound(r, off);
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

static int dirty_ranges_of(struct tb_disk *d, struct nbd_handle *h, struct tb_ranges *out)
{
  if (nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) != 1) {
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
    if (nbd_block_status(h, count, off,
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

int tb_disk_dirty_ranges(struct tb_disk *d, struct tb_ranges *out)
{
  memset(out, 0, sizeof *out);
  if (!d->nbd) {
    errno = ENOTSUP;
    return tb_error("%s: the server does not report block status", d->name);
  }
  size_t slot = nbd_take(d->nbd);
  int r = dirty_ranges_of(d, d->nbd->h[slot], out);
  int saved = errno;
  nbd_give(d->nbd, slot);
  errno = saved;
  return r;
}
