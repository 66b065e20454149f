/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: merge of a base version and an overlay into a new version (see merge.h).
 *
 * Walk: the overlay's extents (runs of DATA and ZERO blocks) in order.
 *   DATA runs: read the overlay's data and the base's in slices of up to
 *     1 MiB, compare block by block, write only the blocks that differ.
 *   ZERO runs: only the base's data extents inside the run (SEEK_DATA) can
 *     differ from zeros; read those, and punch out the blocks that are not
 *     zero (or write zeros where the filesystem cannot punch).
 * Writing only differing blocks keeps a reflinked clone sharing every other
 * block with the base, and makes the cost follow the dirty data.  So does the
 * manifest: the chunks the walk wrote are hashed again, every other chunk
 * hash is the base's (the version digest is a hash of chunk hashes, see
 * store.h).  With a reflink, a merge costs time in proportion to the dirty
 * data, whatever the size of the image.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "merge.h"
#include "overlay.h"
#include "session.h"
#include "store.h"

#define SLICE (1024 * 1024)

struct walk {
  struct tb_overlay *ovl;
  int base_fd, out_fd;
  uint32_t bs;
  uint64_t size;
  uint8_t *obuf, *bbuf;
  struct tb_merge_result *res;
  tb_merge_progress_fn progress;
  void *ctx;
  uint64_t done; /* dirty bytes walked so far */
  int64_t last_report;
  uint8_t *touched; /* a byte per chunk of the new version: written by the walk */
  size_t n_chunks;
};

static void mark_touched(struct walk *w, uint64_t off, uint64_t len)
{
  for (uint64_t c = off / TB_CHUNK_SIZE; c <= (off + len - 1) / TB_CHUNK_SIZE && c < w->n_chunks;
       c++)
    w->touched[c] = 1;
}

static int report(struct walk *w, const char *phase, uint64_t done, uint64_t total)
{
  if (!w->progress)
    return 0;
  int64_t now = tb_now_ms();
  if (done < total && now - w->last_report < 100)
    return 0;
  w->last_report = now;
  if (w->progress(w->ctx, phase, done, total)) {
    errno = ECANCELED;
    return tb_error("merge cancelled");
  }
  return 0;
}

static bool all_zero(const uint8_t *p, size_t n)
{
  return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

/* Write [off, off+len) of BUF (which is the new content of those bytes). */
static int write_out(struct walk *w, const uint8_t *buf, uint64_t off, uint64_t len)
{
  if (len == 0)
    return 0;
  if (tb_pwrite_full(w->out_fd, buf, len, off) == -1)
    return tb_error_errno("writing the new version at offset %llu", (unsigned long long)off);
  mark_touched(w, off, len);
  w->res->changed_bytes += len;
  return 0;
}

static int zero_out(struct walk *w, uint64_t off, uint64_t len)
{
  if (len == 0)
    return 0;
  if (fallocate(w->out_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) ==
      -1) {
    if (errno != EOPNOTSUPP)
      return tb_error_errno("punching the new version at offset %llu", (unsigned long long)off);
    memset(w->obuf, 0, SLICE);
    for (uint64_t o = 0; o < len; o += SLICE) {
      uint64_t n = len - o < SLICE ? len - o : SLICE;
      if (tb_pwrite_full(w->out_fd, w->obuf, n, off + o) == -1)
        return tb_error_errno("zeroing the new version");
    }
  }
  mark_touched(w, off, len);
  w->res->changed_bytes += len;
  return 0;
}

/* Compare a slice block by block; flush runs of differing blocks with FN. */
static int apply_slice(struct walk *w, uint64_t off, uint64_t len, bool zero)
{
  uint64_t run_start = 0, run_len = 0;
  for (uint64_t b = 0; b < len; b += w->bs) {
    uint64_t n = len - b < w->bs ? len - b : w->bs;
    bool differs = zero ? !all_zero(w->bbuf + b, n) : memcmp(w->obuf + b, w->bbuf + b, n) != 0;
    if (differs) {
      if (run_len == 0)
        run_start = b;
      run_len += n;
      continue;
    }
    if (run_len) {
      int r = zero ? zero_out(w, off + run_start, run_len)
                   : write_out(w, w->obuf + run_start, off + run_start, run_len);
      if (r == -1)
        return -1;
      run_len = 0;
    }
  }
  if (run_len)
    return zero ? zero_out(w, off + run_start, run_len)
                : write_out(w, w->obuf + run_start, off + run_start, run_len);
  return 0;
}

static int apply_data(struct walk *w, uint64_t off, uint64_t len)
{
  for (uint64_t o = 0; o < len; o += SLICE) {
    uint32_t n = (uint32_t)(len - o < SLICE ? len - o : SLICE);
    if (tb_overlay_pread(w->ovl, w->obuf, n, off + o) == -1)
      return tb_error_prefix("reading the overlay");
    if (tb_pread_full(w->base_fd, w->bbuf, n, off + o) == -1)
      return tb_error_errno("reading the base version");
    if (apply_slice(w, off + o, n, false) == -1)
      return -1;
    w->done += n;
    if (report(w, "applying", w->done, w->res->dirty_bytes) == -1)
      return -1;
  }
  return 0;
}

static int apply_zero(struct walk *w, uint64_t off, uint64_t len)
{
  uint64_t end = off + len, pos = off;
  while (pos < end) {
    off_t data = lseek(w->base_fd, (off_t)pos, SEEK_DATA);
    if (data == -1 || (uint64_t)data >= end)
      break; /* the rest of the run is a hole in the base: already zeros */
    off_t hole = lseek(w->base_fd, data, SEEK_HOLE);
    uint64_t stop = hole == -1 || (uint64_t)hole > end ? end : (uint64_t)hole;
    /* Align the data extent to blocks of the run. */
    uint64_t a = off + ((uint64_t)data - off) / w->bs * w->bs;
    for (uint64_t o = a; o < stop; o += SLICE) {
      uint64_t n = stop - o < SLICE ? stop - o : SLICE;
      if (o + n > end)
        n = end - o;
      if (tb_pread_full(w->base_fd, w->bbuf, n, o) == -1)
        return tb_error_errno("reading the base version");
      if (apply_slice(w, o, n, true) == -1)
        return -1;
    }
    pos = stop > a ? stop : a + w->bs;
  }
  w->done += len;
  return report(w, "applying", w->done, w->res->dirty_bytes);
}

static int count_dirty(void *ctx, uint64_t offset, uint64_t length, enum tb_block_state state)
{
  struct walk *w = ctx;
  if (state != TB_CLEAN)
    w->res->dirty_bytes += length;
  return 0;
}

static int apply_extent(void *ctx, uint64_t offset, uint64_t length, enum tb_block_state state)
{
  struct walk *w = ctx;
  if (state == TB_DATA)
    return apply_data(w, offset, length);
  if (state == TB_ZERO)
    return apply_zero(w, offset, length);
  return 0;
}

/* Clone BASE into the builder's temporary: reflink if possible, else a sparse copy. */
static int clone_base(struct walk *w, const char *base_path, const char *tmp)
{
  int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (out == -1)
    return tb_error_errno("cannot create %s", tmp);
  bool reflinked = ioctl(out, FICLONE, w->base_fd) == 0;
  close(out);
  if (reflinked) {
    w->res->reflink = true;
    return 0;
  }
  return tb_clone_file(base_path, tmp, NULL, NULL);
}

/* The new version's manifest: the base's chunk hashes, with the chunks the
 * walk touched hashed again from the new file.  NULL with *FAILED false (and
 * a full hash by the caller) if the base's manifest does not fit, another
 * chunk size; NULL with *FAILED true on an error or a cancel. */
static struct tb_manifest *incremental_manifest(struct walk *w, const char *state,
                                                const struct tb_base_id *base, int fd, bool *failed)
{
  *failed = false;
  CLEANUP_MANIFEST struct tb_manifest *bm = tb_manifest_load(state, base->image, base->version);
  if (!bm || bm->chunk_size != TB_CHUNK_SIZE || bm->size != w->size || bm->n_chunks != w->n_chunks)
    return NULL;
  CLEANUP_MANIFEST struct tb_manifest *m = calloc(1, sizeof *m);
  CLEANUP_FREE char *buf = malloc(TB_CHUNK_SIZE);
  if (!m || !buf || !(m->chunks = malloc(bm->n_chunks * 32 + 32))) {
    tb_error_errno("hashing the new version");
    *failed = true;
    return NULL;
  }
  m->size = bm->size;
  m->chunk_size = bm->chunk_size;
  m->n_chunks = bm->n_chunks;
  memcpy(m->chunks, bm->chunks, bm->n_chunks * 32);
  size_t todo = 0, done = 0;
  for (size_t i = 0; i < m->n_chunks; i++)
    todo += w->touched[i];
  w->last_report = 0;
  for (size_t i = 0; i < m->n_chunks; i++) {
    if (!w->touched[i])
      continue;
    uint64_t off = (uint64_t)i * TB_CHUNK_SIZE;
    size_t len = (size_t)(m->size - off < TB_CHUNK_SIZE ? m->size - off : TB_CHUNK_SIZE);
    if (tb_hash_chunk(fd, off, len, buf, m->chunks[i]) == -1 ||
        report(w, "hashing chunks", ++done, todo) == -1) {
      *failed = true;
      return NULL;
    }
  }
  tb_chunks_digest((const uint8_t(*)[32])m->chunks, m->n_chunks, m->sha256);
  struct tb_manifest *ret = m;
  m = NULL;
  return ret;
}

static int hash_progress(void *ctx, uint64_t done, uint64_t total)
{
  struct walk *w = ctx;
  return report(w, "hashing", done, total) == -1;
}

/* A version being built that nothing committed is aborted. */
static void abort_unless_committed(struct tb_version_builder **b)
{
  if (*b)
    tb_version_abort(*b);
}
#define CLEANUP_ABORT_VERSION __attribute__((cleanup(abort_unless_committed)))

/* Build the new version INTO from the base (BASE_PATH, SIZE bytes) and W's
 * overlay: clone, apply, sync, manifest, commit. */
static int merge_walk(struct walk *w, const char *state, const struct tb_base_id *base,
                      const char *base_path, uint64_t size, const char *into, const char *note)
{
  CLEANUP_FREE uint8_t *obuf = malloc(SLICE);
  CLEANUP_FREE uint8_t *bbuf = malloc(SLICE);
  if (!obuf || !bbuf)
    return tb_error_errno("merge buffers");
  w->obuf = obuf;
  w->bbuf = bbuf;
  tb_overlay_extents(w->ovl, 0, w->size, count_dirty, w);
  w->n_chunks = (size_t)((w->size + TB_CHUNK_SIZE - 1) / TB_CHUNK_SIZE);
  CLEANUP_FREE uint8_t *touched = calloc(w->n_chunks + 1, 1);
  if (!touched)
    return tb_error_errno("merge buffers");
  w->touched = touched;

  CLEANUP_ABORT_VERSION struct tb_version_builder *b =
      tb_version_begin(state, into, strcmp(into, base->image) == 0 ? base->version : 0, note);
  if (!b)
    return -1;
  const char *tmp = tb_version_tmp_path(b);
  if (report(w, "cloning", 0, size) == -1 || clone_base(w, base_path, tmp) == -1)
    return -1;
  w->last_report = 0;
  if (report(w, "cloning", size, size) == -1)
    return -1;
  CLEANUP_CLOSE int fd = open(tmp, O_RDWR | O_CLOEXEC);
  if (fd == -1)
    return tb_error_errno("cannot open %s", tmp);
  w->out_fd = fd;
  if (tb_overlay_extents(w->ovl, 0, w->size, apply_extent, w) != 0)
    return -1;
  if (fsync(fd) == -1)
    return tb_error_errno("cannot sync %s", tmp);
  bool hash_failed;
  CLEANUP_MANIFEST struct tb_manifest *m = incremental_manifest(w, state, base, fd, &hash_failed);
  if (hash_failed)
    return -1;
  close(fd);
  fd = w->out_fd = -1;
  w->res->version = tb_version_number(b);
  snprintf(w->res->image, sizeof w->res->image, "%s", into);
  w->last_report = 0;
  struct tb_version_builder *committing = b;
  b = NULL; /* commit consumes it, on success or failure */
  return m ? tb_version_commit_manifest(committing, m)
           : tb_version_commit(committing, hash_progress, w);
}

int tb_merge(const char *state, const char *overlay_path, const char *into, const char *note,
             tb_merge_progress_fn progress, void *ctx, struct tb_merge_result *res)
{
  int64_t start = tb_now_ms();
  memset(res, 0, sizeof *res);
  if (!tb_name_valid(into))
    return tb_error("invalid image name \"%.80s\"", into);
  struct tb_overlay_info info;
  if (tb_overlay_read_info(overlay_path, &info) == -1)
    return -1;
  char base_path[TB_PATH_MAX];
  struct tb_base_id base;
  uint64_t size;
  if (tb_base_lookup(state, info.base.image, info.base.version, &base, base_path, sizeof base_path,
                     &size) == -1)
    return tb_error_prefix("the base of %s", overlay_path);
  snprintf(res->base_image, sizeof res->base_image, "%s", base.image);
  res->base_version = base.version;

  struct walk w = {.progress = progress, .ctx = ctx, .res = res, .out_fd = -1};
  w.ovl = tb_overlay_open(overlay_path, base_path, &base, TB_OVL_RDONLY);
  if (!w.ovl)
    return -1;
  w.base_fd = tb_overlay_base_fd(w.ovl);
  w.bs = tb_overlay_block_size(w.ovl);
  w.size = tb_overlay_size(w.ovl);
  int r = merge_walk(&w, state, &base, base_path, size, into, note);
  tb_overlay_close(w.ovl);
  if (r == -1) {
    tb_error_prefix("merge of %s into %s", overlay_path, into);
    res->version = 0;
  }
  res->duration_ms = tb_now_ms() - start;
  return r;
}
