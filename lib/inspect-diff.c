/* SPDX-License-Identifier: BSD-3-Clause */
/* lib/inspect-diff.c: the diff of two disks, by walking both.
 *
 * tb_inspect_diff() walks the base and the live filesystem of each volume
 * and compares them by path.  The dirty map narrows the work: a volume with
 * no dirty byte is not read, and a file whose metadata did not change is
 * changed only if a content run lies in a dirty range; such files (and
 * regular files with another inode) are confirmed against the base's copy
 * (content_differs).  With an index of the base (inspect-index.c) the
 * indexed diff is used where it applies.
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inspect-internal.h"

/* -- diff -- */

struct entry {
  char *path;
  struct tb_istat st;
  bool touched, seen;
};

TB_VECTOR(entries, struct entry);

static int entries_oom(void)
{
  errno = ENOMEM;
  return tb_error("out of memory comparing filesystems");
}

static int entries_add(struct entries *e, const char *path, const struct tb_istat *st, bool touched)
{
  char *p = strdup(path);
  if (!p || tb_vector_push(e, ((struct entry){p, *st, touched, false})) == -1) {
    free(p);
    return entries_oom();
  }
  return 0;
}

static void entries_free(struct entries *e)
{
  for (size_t i = 0; i < e->len; i++)
    free(e->ptr[i].path);
  tb_vector_free(e);
}

static int entry_cmp(const void *a, const void *b)
{
  return strcmp(((const struct entry *)a)->path, ((const struct entry *)b)->path);
}

static int collect_cb(void *ctx, const char *path, const struct tb_istat *st, bool touched)
{
  return entries_add(ctx, path, st, touched);
}

bool tbi_meta_changed(const struct tb_istat *a, const struct tb_istat *b)
{
  if (a->type != b->type)
    return true;
  if (a->type == TB_FT_DIR)
    return a->mode != b->mode; /* entries added or removed show as their own lines */
  /* The inode number is the filesystem's, not the file's (a FAT inode is
   * where its entry lies): another inode with the same metadata is
   * confirmed by the content (tbi_replaced). */
  return a->size != b->size || a->mtime != b->mtime || a->mtime_ns != b->mtime_ns ||
         a->mode != b->mode || a->uid != b->uid || a->gid != b->gid || a->xdigest != b->xdigest ||
         a->rdev_major != b->rdev_major || a->rdev_minor != b->rdev_minor;
}

/* A path whose metadata did not change but whose inode did: a regular
 * file is changed if its content differs (CONFIRM_WHOLE), anything else
 * (a symlink, a device) is changed. */
bool tbi_replaced(const struct tb_istat *a, const struct tb_istat *b, int *confirm)
{
  if (a->inum == b->inum && a->first_data == b->first_data)
    return false;
  *confirm = b->type == TB_FT_REG ? CONFIRM_WHOLE : CONFIRM_NONE;
  return true;
}

int tbi_changes_add(struct changes *c, enum tb_change kind, const char *vol, const char *path,
                    const struct tb_istat *st)
{
  char *p;
  if (asprintf(&p, "%s%s", vol, path) < 0) {
    errno = ENOMEM;
    return tb_error("out of memory comparing filesystems");
  }
  if (tb_vector_push(c, ((struct change){kind, p, *st, CONFIRM_NONE})) == -1) {
    free(p);
    errno = ENOMEM;
    return tb_error("out of memory comparing filesystems");
  }
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
    r = tbi_walk_request(base, (size_t)bi, NULL, NULL, false, collect_cb, &be, deadline_ms);
  if (r == 0 && li >= 0)
    r = tbi_walk_request(live, (size_t)li, dirty, base->disk, false, collect_cb, &le, deadline_ms);
  stats->files_examined += le.len;
  if (r == 0) {
    if (be.len > 0)
      qsort(be.ptr, be.len, sizeof *be.ptr, entry_cmp);
    for (size_t i = 0; i < le.len && r == 0; i++) {
      struct entry *l = &le.ptr[i];
      struct entry *b = be.len ? bsearch(l, be.ptr, be.len, sizeof *be.ptr, entry_cmp) : NULL;
      if (!b)
        r = tbi_changes_add(out, TB_CREATED, vname, l->path, &l->st);
      else {
        b->seen = true;
        int confirm = CONFIRM_NONE;
        if (tbi_meta_changed(&b->st, &l->st))
          r = tbi_changes_add(out, TB_CHANGED, vname, l->path, &l->st);
        else if ((tbi_replaced(&b->st, &l->st, &confirm) ||
                  (l->touched && l->st.type == TB_FT_REG && (confirm = CONFIRM_DIRTY))) &&
                 (r = tbi_changes_add(out, TB_CHANGED, vname, l->path, &l->st)) == 0)
          out->ptr[out->len - 1].confirm = confirm;
      }
    }
    for (size_t i = 0; i < be.len && r == 0; i++)
      if (!be.ptr[i].seen)
        r = tbi_changes_add(out, TB_DELETED, vname, be.ptr[i].path, &be.ptr[i].st);
  }
  entries_free(&be);
  entries_free(&le);
  return r;
}

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
  struct job *j = tbi_job_new(live, JOB_FRANGES, tbi_deadline_in(live, 1));
  bool differ = !j || tbi_job_path(j, slash) < 0;
  for (size_t i = 0; !differ && dirty && i < dirty->n; i++)
    differ = tb_ranges_add(&j->dirty, dirty->v[i].off, dirty->v[i].len) < 0;
  if (!differ && dirty) {
    j->vol = (size_t)li;
    differ = tbi_run_request(live, j) < 0;
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
  tbi_job_put(j);
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
  int64_t deadline_ms = tbi_deadline_in(live, 2 * TB_INSPECT_WALK_FACTOR);
  for (size_t li = 0; li < live->n_vols && r == 0; li++) {
    const struct tb_volume *lv = &live->vols[li].pub;
    int bi = tb_inspect_find_volume(base, lv->name);
    if (bi >= 0 && dirty && !tb_ranges_intersect(dirty, lv->offset, lv->length))
      continue; /* nothing written there */
    if (bi < 0) {
      stats->volumes_full++;
    } else {
      bool by_design = false;
      int k = idx && dirty ? tbi_index_volume(idx, &base->vols[bi].pub, lv, &by_design) : -1;
      if (k >= 0) {
        r = tbi_idiff_request(idx, (size_t)k, base, live, li, dirty, deadline_ms, &out, stats);
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
  for (size_t i = 0; i < out.len && r == 0; i++)
    if (out.ptr[i].confirm && !content_differs(base, live, out.ptr[i].path,
                                               out.ptr[i].confirm == CONFIRM_DIRTY ? dirty : NULL))
      out.ptr[i].kind = 0; /* the same content, moved: not a change */
  if (r == 0) {
    if (out.len > 0)
      qsort(out.ptr, out.len, sizeof *out.ptr, change_cmp);
    for (size_t i = 0; i < out.len && r == 0; i++)
      if (out.ptr[i].kind)
        r = fn(ctx, out.ptr[i].kind, out.ptr[i].path, &out.ptr[i].st);
  }
  for (size_t i = 0; i < out.len; i++)
    free(out.ptr[i].path);
  tb_vector_free(&out);
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
  if (idx && !tbi_index_of(idx, base))
    idx = NULL; /* not an index of this base: the full diff, counted as fallbacks */
  return diff_all(idx, base, live, dirty, fn, ctx, stats);
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
