/* SPDX-License-Identifier: BSD-3-Clause */
/* lib/inspect-walk.c: walks of a volume, the owners of bytes, changes.
 *
 * walk_dir() visits every path under a directory through the cached
 * listings, depth first, skipping directories already on the path (cycles)
 * and stopping at WALK_MAX_DEPTH, checking the deadline between entries.
 * for_each_run() gives a file's content runs as disk byte ranges, so a walk
 * can say which files the dirty ranges touch (and whether their bytes differ
 * from a base disk's).  Runs on the worker only.
 */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "inspect-internal.h"

/* Index of the first range that ends after OFF. */
size_t tbi_ranges_lower_bound(const struct tb_ranges *r, uint64_t off)
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
    if (tbi_past_deadline(ins) || tb_disk_pread(live, a, n, off) < 0 ||
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

void tbi_for_each_run(struct tb_inspect *ins, struct vol *v, uint64_t inum, run_fn fn, void *ctx)
{
  TSK_FS_FILE *f = tbi_open_meta(ins, v, inum);
  bool stop = false;
  if (f && f->meta && tbi_ext_bmapped(v, f->meta)) {
    struct run_relay rr = {fn, ctx};
    tbi_ext_bmap_runs(ins, v, f->meta, relay_run, &rr);
    tsk_fs_file_close(f);
    return;
  }
  int n = f && f->meta && tbi_size_plausible(v, f->meta) ? tsk_fs_file_attr_getsize(f) : 0;
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
  for (size_t k = tbi_ranges_lower_bound(t->dirty, d0); k < t->dirty->n && !t->touched; k++) {
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
bool tbi_content_touched(struct tb_inspect *ins, struct vol *v, uint64_t inum,
                         const struct tb_ranges *dirty, struct tb_disk *base)
{
  struct touch t = {ins, dirty, base, false};
  tbi_for_each_run(ins, v, inum, touch_run, &t);
  return t.touched;
}

int tbi_walk_dir(struct walk *w, uint64_t inum, size_t path_len)
{
  if (w->depth >= WALK_MAX_DEPTH)
    return 0;
  for (int i = 0; i < w->depth; i++)
    if (w->stack[i] == inum)
      return 0; /* a cycle in a damaged filesystem */
  struct cached_dir *cd = tbi_get_dir(w->ins, w->v, inum);
  if (!cd)
    return w->ins->deadline_hit ? -1 : 0; /* an unreadable directory is skipped */
  size_t n = 0;
  struct dent *list = tbi_copy_listing(cd, &n);
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
    if (tbi_past_deadline(w->ins)) {
      r = tbi_tsk_fail(w->ins, "walking the filesystem");
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
      touched = tbi_content_touched(w->ins, w->v, list[i].st.inum, w->dirty, w->base);
    if ((!w->owners_only || touched) && (r = tbi_callback_enter(w->ins)) == 0) {
      r = w->fn(w->ctx, w->path, &list[i].st, touched);
      tbi_callback_leave(w->ins);
    }
    if (r == 0 && list[i].st.type == TB_FT_DIR)
      r = tbi_walk_dir(w, list[i].st.inum, path_len + 1 + nl);
    w->path[path_len] = '\0';
  }
  w->depth--;
  for (size_t i = 0; i < n; i++)
    free(names[i]);
  free(names);
  free(list);
  return r;
}

int tbi_do_walk(struct tb_inspect *ins, struct job *j)
{
  struct vol *v = tbi_get_vol(ins, j->vol);
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
  int r = tbi_walk_dir(w, v->root.inum, 0);
  free(w);
  return r;
}
