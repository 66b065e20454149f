/* SPDX-License-Identifier: BSD-3-Clause */
/* lib/inspect-index.c: the index of a base version, and the diff through it.
 *
 * An index is the tree a walk of the base shows (nodes by path, by inode
 * number), its content runs as intervals and its record geometry
 * (inspect-geom.c), built once per base version.  The indexed diff finds the
 * records and content runs the dirty ranges touch, marks their paths, and
 * lists again only the directories on those paths: work in the size of the
 * change, not of the filesystem.  Results equal tb_inspect_diff()'s.
 *
 * The file also keeps the process's indexes (tb_inspect_index_get): a small
 * LRU of base versions by the caller's key, each slot an index or the memo
 * of a failed build, under one mutex that is never held while building or
 * freeing; the daemon's rules and the view's changes.txt both go through it.
 */
#include <config.h>

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inspect-internal.h"

_Static_assert(offsetof(ntfs_mft, base_ref) == 0x20 && offsetof(ntfs_mft, next_attrid) == 0x28,
               "ntfs_mft: the MFT record header");
#define NODE_NONE UINT32_MAX
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

TB_VECTOR(inode_nodes, struct inode_node);
TB_VECTOR(name_pool, char); /* NUL-terminated names, end to end */
TB_VECTOR(intervals, struct interval);

struct ivol {
  struct tb_volume pub;
  struct geom geom; /* GEOM_NONE: not indexed */
  struct inode_nodes nodes;
  struct name_pool names;
  struct inum_ref *inums; /* every node by inode number, sorted */
  size_t n_inums;
  struct intervals runs; /* content runs, sorted by start */
  uint64_t *max_end;     /* max_end[i]: the largest end of runs[0..i] */
};

struct tb_inspect_index {
  atomic_int refs;
  uint64_t disk_size;
  struct ivol *vols;
  size_t n_vols;
  uint64_t files;
  size_t bytes;
};

/* -- building -- */

static void ivol_free(struct ivol *iv)
{
  tbi_geom_free(&iv->geom);
  tb_vector_free(&iv->nodes);
  tb_vector_free(&iv->names);
  free(iv->inums);
  tb_vector_free(&iv->runs);
  free(iv->max_end);
}

void tbi_index_put(struct tb_inspect_index *idx)
{
  if (!idx || atomic_fetch_sub(&idx->refs, 1) != 1)
    return;
  for (size_t i = 0; i < idx->n_vols; i++)
    ivol_free(&idx->vols[i]);
  free(idx->vols);
  free(idx);
}

/* An index is kept for long: give back what the doubling left unused.
 * realloc, not vector.h, which only grows; a failure keeps the larger
 * array, which is still whole. */
#define VECTOR_SHRINK(v)                                                                           \
  do {                                                                                             \
    if ((v)->len > 0 && (v)->len < (v)->cap) {                                                     \
      __typeof__((v)->ptr) shrunk_ = reallocarray((v)->ptr, (v)->len, sizeof *(v)->ptr);           \
      if (shrunk_) {                                                                               \
        (v)->ptr = shrunk_;                                                                        \
        (v)->cap = (v)->len;                                                                       \
      }                                                                                            \
    }                                                                                              \
  } while (0)

static int index_oom(void)
{
  errno = ENOMEM;
  return tb_error("out of memory indexing a filesystem");
}

static int64_t add_node(struct ivol *iv, const char *name, uint32_t parent,
                        const struct tb_istat *st)
{
  size_t nl = strlen(name) + 1;
  if (iv->nodes.len >= INDEX_MAX_NODES || iv->names.len + nl > UINT32_MAX)
    return index_oom();
  if (tb_vector_reserve(&iv->nodes, 1) == -1 || tb_vector_reserve(&iv->names, nl) == -1)
    return index_oom();
  memcpy(iv->names.ptr + iv->names.len, name, nl);
  iv->nodes.ptr[iv->nodes.len] = (struct inode_node){
      .name = (uint32_t)iv->names.len, .parent = parent, .first_child = 0, .st = *st};
  iv->names.len += nl;
  return (int64_t)iv->nodes.len++;
}

struct ibuild {
  struct tb_inspect *ins;
  struct vol *v;
  struct ivol *iv;
  uint64_t stack[WALK_MAX_DEPTH];
  int depth;
};

/* The tree under NODE (directory INUM), as tbi_walk_dir() shows it: the same
 * depth limit, cycle cut, path length limit and unreadable directories. */
static int build_dir(struct ibuild *b, uint32_t node, uint64_t inum, size_t path_len)
{
  if (b->depth >= WALK_MAX_DEPTH)
    return 0;
  for (int i = 0; i < b->depth; i++)
    if (b->stack[i] == inum)
      return 0;
  struct cached_dir *cd = tbi_get_dir(b->ins, b->v, inum);
  if (!cd)
    return b->ins->deadline_hit ? -1 : 0;
  struct ivol *iv = b->iv;
  size_t first = iv->nodes.len;
  /* CD stays valid: no tbi_get_dir() until the children are copied. */
  for (size_t i = 0; i < cd->n; i++) {
    if ((i & 255) == 0 && tbi_past_deadline(b->ins))
      return tbi_tsk_fail(b->ins, "indexing the filesystem");
    if (path_len + 1 + strlen(cd->v[i].name) >= TB_PATH_MAX)
      continue;
    if (add_node(iv, cd->v[i].name, node, &cd->v[i].st) < 0)
      return -1;
  }
  iv->nodes.ptr[node].first_child = (uint32_t)first;
  iv->nodes.ptr[node].n_children = (uint32_t)(iv->nodes.len - first);
  size_t last = iv->nodes.len;
  b->stack[b->depth++] = inum;
  int r = 0;
  for (size_t k = first; k < last && r == 0; k++)
    if (iv->nodes.ptr[k].st.type == TB_FT_DIR)
      r = build_dir(b, (uint32_t)k, iv->nodes.ptr[k].st.inum,
                    path_len + 1 + strlen(iv->names.ptr + iv->nodes.ptr[k].name));
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
  if (tb_vector_push(&iv->runs, ((struct interval){d0, d1, ra->inum})) == -1) {
    ra->failed = true;
    return true;
  }
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
  iv->inums = calloc(iv->nodes.len, sizeof *iv->inums);
  if (!iv->inums) {
    errno = ENOMEM;
    return tb_error("out of memory indexing a filesystem");
  }
  for (size_t i = 0; i < iv->nodes.len; i++)
    iv->inums[i] = (struct inum_ref){iv->nodes.ptr[i].st.inum, (uint32_t)i};
  iv->n_inums = iv->nodes.len;
  qsort(iv->inums, iv->n_inums, sizeof *iv->inums, inum_ref_cmp);
  for (size_t i = 0; i < iv->n_inums; i++) {
    if ((i & 255) == 0 && tbi_past_deadline(ins))
      return tbi_tsk_fail(ins, "indexing the filesystem");
    if (i > 0 && iv->inums[i - 1].inum == iv->inums[i].inum)
      continue; /* a hard link: runs once per inode */
    struct run_add ra = {iv, iv->inums[i].inum, false};
    tbi_for_each_run(ins, v, ra.inum, add_run, &ra);
    if (ra.failed) {
      errno = ENOMEM;
      return tb_error("out of memory indexing a filesystem");
    }
  }
  VECTOR_SHRINK(&iv->nodes);
  VECTOR_SHRINK(&iv->names);
  VECTOR_SHRINK(&iv->runs);
  if (iv->runs.len > 0) {
    qsort(iv->runs.ptr, iv->runs.len, sizeof *iv->runs.ptr, interval_cmp);
    if (!(iv->max_end = malloc(iv->runs.len * sizeof *iv->max_end))) {
      errno = ENOMEM;
      return tb_error("out of memory indexing a filesystem");
    }
    uint64_t m = 0;
    for (size_t i = 0; i < iv->runs.len; i++)
      iv->max_end[i] = m = iv->runs.ptr[i].end > m ? iv->runs.ptr[i].end : m;
  }
  return 0;
}

int tbi_do_index(struct tb_inspect *ins, struct job *j)
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
    if (tbi_vol_geometry(ins, v, &iv->geom) < 0) {
      if (ins->deadline_hit)
        return tbi_tsk_fail(ins, "indexing the filesystem");
      continue;
    }
    if (build_volume(ins, v, iv) < 0)
      return -1;
    idx->files += iv->nodes.len - 1;
    idx->bytes += iv->nodes.cap * sizeof *iv->nodes.ptr + iv->names.cap +
                  iv->n_inums * sizeof *iv->inums + iv->runs.cap * sizeof *iv->runs.ptr +
                  iv->runs.len * sizeof *iv->max_end + iv->geom.cap * sizeof *iv->geom.v;
  }
  return 0;
}

struct tb_inspect_index *tb_inspect_index_build(struct tb_inspect *base)
{
  struct job *j = tbi_job_new(base, JOB_INDEX, tbi_deadline_in(base, 2 * TB_INSPECT_WALK_FACTOR));
  if (!j)
    return NULL;
  struct tb_inspect_index *idx = NULL;
  if (tbi_run_request(base, j) == 0) {
    idx = j->index;
    j->index = NULL;
  }
  tbi_job_put(j);
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
  tbi_index_put(idx);
}

uint64_t tb_inspect_index_files(const struct tb_inspect_index *idx)
{
  return idx ? idx->files : 0;
}

size_t tb_inspect_index_bytes(const struct tb_inspect_index *idx)
{
  return idx ? idx->bytes : 0;
}

/* -- the cache: one index per base version, for the whole process -- */

/* The last TB_INSPECT_INDEX_CACHE base versions asked for.  A slot holds a
 * reference to the index, or, IDX NULL, the memo of a build that failed:
 * building costs up to 2 * TB_INSPECT_WALK_FACTOR budgets, and a version
 * whose filesystem made it fail (too large for the budget, hostile, out of
 * memory) would make every changes.txt read or scan pay that again before
 * its full diff.  The memo lasts TB_INSPECT_INDEX_RETRY_MS: a build that
 * failed because the machine was busy (its budget is wall time) gets another
 * chance, at most that often.  A caller takes its own reference, so
 * eviction never frees an index in use.  USED 0 marks an empty slot. */
static struct index_slot {
  char *key;
  struct tb_inspect_index *idx;
  uint64_t used;
  int64_t failed_ms; /* IDX NULL: when the build failed (monotonic) */
} index_cache[TB_INSPECT_INDEX_CACHE];
static uint64_t index_cache_tick;
static pthread_mutex_t index_cache_lock = PTHREAD_MUTEX_INITIALIZER;

/* The slot of KEY, or NULL.  Call with index_cache_lock held. */
static struct index_slot *index_cache_find(const char *key)
{
  for (size_t i = 0; i < TB_INSPECT_INDEX_CACHE; i++)
    if (index_cache[i].used && strcmp(index_cache[i].key, key) == 0)
      return &index_cache[i];
  return NULL;
}

/* Record what building KEY gave (IDX, or NULL: it failed) and return what
 * the caller gets: a reference to the index kept.  Two callers that missed
 * at once both built; the first index kept wins, and an index replaces the
 * memo of a failure. */
static struct tb_inspect_index *index_cache_insert(const char *key, struct tb_inspect_index *idx)
{
  struct tb_inspect_index *drop = NULL;
  char *drop_key = NULL;
  char *copy = strdup(key);
  pthread_mutex_lock(&index_cache_lock);
  struct index_slot *s = index_cache_find(key);
  if (s && s->idx) {
    drop = idx; /* another caller's is kept */
    idx = tb_inspect_index_ref(s->idx);
  } else if (s) {
    s->idx = tb_inspect_index_ref(idx); /* NULL stays the failure memo */
    s->failed_ms = tb_mono_ms();
  } else if (copy) {
    s = &index_cache[0]; /* the least recently used, an empty one (used 0) first */
    for (size_t i = 1; i < TB_INSPECT_INDEX_CACHE; i++)
      if (index_cache[i].used < s->used)
        s = &index_cache[i];
    drop = s->idx;
    drop_key = s->key;
    *s = (struct index_slot){copy, tb_inspect_index_ref(idx), 0, tb_mono_ms()};
    copy = NULL;
  } /* else out of memory: not remembered, built again next time */
  if (s)
    s->used = ++index_cache_tick;
  pthread_mutex_unlock(&index_cache_lock);
  /* DROP is either the caller's duplicate or an evicted slot's reference:
   * freed outside the lock, as an index of a large volume takes a while. */
  tb_inspect_index_free(drop);
  free(drop_key);
  free(copy);
  return idx;
}

struct tb_inspect_index *tb_inspect_index_get(const char *key, struct tb_inspect *base,
                                              int64_t *build_ms)
{
  if (build_ms)
    *build_ms = 0;
  pthread_mutex_lock(&index_cache_lock);
  struct index_slot *s = index_cache_find(key);
  if (s && !s->idx && tb_mono_ms() - s->failed_ms >= TB_INSPECT_INDEX_RETRY_MS)
    s = NULL; /* the failure is old: build again */
  struct tb_inspect_index *idx = s ? tb_inspect_index_ref(s->idx) : NULL;
  if (s)
    s->used = ++index_cache_tick;
  pthread_mutex_unlock(&index_cache_lock);
  if (s) {
    if (!idx) {
      errno = EAGAIN;
      tb_error("the index of %s failed to build before: not built again", key);
    }
    return idx;
  }
  int64_t t0 = tb_now_ms();
  idx = tb_inspect_index_build(base);
  if (build_ms)
    *build_ms = tb_now_ms() - t0;
  return index_cache_insert(key, idx);
}

/* Was IDX built from a disk like BASE's (same size, same volumes)? */
bool tbi_index_of(const struct tb_inspect_index *idx, struct tb_inspect *base)
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
int tbi_index_volume(const struct tb_inspect_index *idx, const struct tb_volume *bv,
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

TB_VECTOR(cands, uint64_t);

static int cands_add(struct cands *c, uint64_t inum)
{
  if (tb_vector_push(c, inum) == -1) {
    errno = ENOMEM;
    return tb_error("out of memory comparing filesystems");
  }
  return 0;
}

static int u64_cmp(const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static bool cands_has(const struct cands *c, uint64_t inum)
{
  return c->len > 0 && bsearch(&inum, c->ptr, c->len, sizeof *c->ptr, u64_cmp) != NULL;
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
    for (size_t k = tbi_ranges_lower_bound(d, m->off); k < d->n && d->v[k].off < m->off + m->len;
         k++) {
      uint64_t x0 = d->v[k].off > m->off ? d->v[k].off : m->off;
      uint64_t x1 =
          d->v[k].off + d->v[k].len < m->off + m->len ? d->v[k].off + d->v[k].len : m->off + m->len;
      uint64_t f0 = x0 - m->off + m->foff, f1 = x1 - m->off + m->foff;
      for (uint64_t rec = f0 / g->rec; rec <= (f1 - 1) / g->rec; rec++) {
        if ((rec & 1023) == 0 && tbi_past_deadline(x->ins))
          return tbi_tsk_fail(x->ins, "comparing filesystems");
        if (cands_add(&x->c, rec + g->first) < 0)
          return -1;
        uint64_t at = rec * g->rec;
        /* An MFT record's header (libtsk's ntfs_mft) up to its base record's
         * reference (48 bits of number, then the sequence). */
        unsigned char h[offsetof(ntfs_mft, next_attrid)];
        const ntfs_mft *mh = (const ntfs_mft *)h;
        if (g->kind == GEOM_NTFS && at >= m->foff && m->len >= sizeof h &&
            at - m->foff <= m->len - sizeof h &&
            tb_disk_pread(x->ins->disk, h, sizeof h, m->off + (at - m->foff)) == 0 &&
            tb_get_le32(mh->magic) == NTFS_MFT_MAGIC &&
            (tb_get_le64(mh->base_ref) & 0xFFFFFFFFFFFFull) != 0 &&
            cands_add(&x->c, tb_get_le64(mh->base_ref) & 0xFFFFFFFFFFFFull) < 0)
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
  for (size_t k = tbi_ranges_lower_bound(d, vo); k < d->n && d->v[k].off < ve && iv->runs.len > 0;
       k++) {
    uint64_t r0 = d->v[k].off, r1 = r0 + d->v[k].len;
    /* Runs that may end after r0: from the first whose max_end does. */
    size_t lo = 0, hi = iv->runs.len;
    while (lo < hi) {
      size_t mid = lo + (hi - lo) / 2;
      if (iv->max_end[mid] <= r0)
        lo = mid + 1;
      else
        hi = mid;
    }
    for (size_t i = lo; i < iv->runs.len && iv->runs.ptr[i].start < r1; i++) {
      if ((++steps & 4095) == 0 && tbi_past_deadline(x->ins))
        return tbi_tsk_fail(x->ins, "comparing filesystems");
      if (iv->runs.ptr[i].end > r0 && cands_add(&x->c, iv->runs.ptr[i].inum) < 0)
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
  for (size_t i = 0; i < x->c.len; i++) {
    struct inum_ref key = {x->c.ptr[i], 0};
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
      if (iv->nodes.ptr[n].st.type == TB_FT_DIR)
        x->flags[n] |= FL_RELIST | FL_DESCEND;
      uint32_t p = iv->nodes.ptr[n].parent;
      if (p == NODE_NONE)
        continue;
      x->flags[p] |= FL_RELIST;
      for (; p != NODE_NONE && !(x->flags[p] & FL_DESCEND); p = iv->nodes.ptr[p].parent)
        x->flags[p] |= FL_DESCEND;
    }
  }
}

static const char *node_name(const struct ivol *iv, uint32_t n)
{
  return iv->names.ptr + iv->nodes.ptr[n].name;
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
  const struct inode_node *n = &x->iv->nodes.ptr[node];
  int r = tbi_changes_add(x->out, TB_DELETED, x->vname, x->path, &n->st);
  for (uint32_t k = 0; k < n->n_children && r == 0; k++) {
    uint32_t c = n->first_child + k;
    r = deleted_subtree(x, c, set_path(x, path_len, node_name(x->iv, c)));
    x->path[path_len] = '\0';
  }
  return r;
}

static int deleted_children(struct idiff *x, uint32_t node, size_t path_len)
{
  const struct inode_node *n = &x->iv->nodes.ptr[node];
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
  return tbi_changes_add(x->out, TB_CREATED, x->vname, path, st);
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
  int r = tbi_walk_dir(w, inum, path_len);
  free(w);
  return r;
}

static int visit(struct idiff *x, uint32_t bn, uint64_t linum, bool relist, size_t path_len);

/* Base node BK and live entry LST at the same path (x->path). */
static int compare_entry(struct idiff *x, uint32_t bk, const struct tb_istat *lst, size_t path_len)
{
  const struct tb_istat *b = &x->iv->nodes.ptr[bk].st;
  int r = 0;
  if (b->type == TB_FT_DIR && lst->type == TB_FT_DIR) {
    if (tbi_meta_changed(b, lst))
      r = tbi_changes_add(x->out, TB_CHANGED, x->vname, x->path, lst);
    return r ? r
             : visit(x, bk, lst->inum, lst->inum != b->inum || cands_has(&x->c, lst->inum),
                     path_len);
  }
  bool changed = tbi_meta_changed(b, lst);
  int confirm = CONFIRM_NONE;
  if (!changed)
    changed = tbi_replaced(b, lst, &confirm);
  if (!changed && lst->type == TB_FT_REG && cands_has(&x->c, lst->inum) &&
      (changed = tbi_content_touched(x->ins, x->v, lst->inum, x->dirty, x->base)))
    confirm = CONFIRM_DIRTY;
  if (changed && (r = tbi_changes_add(x->out, TB_CHANGED, x->vname, x->path, lst)) == 0)
    x->out->ptr[x->out->len - 1].confirm = confirm;
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
  const struct inode_node *n = &iv->nodes.ptr[bn];
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
              tbi_ntfs_list_names(x->ins, v, linum, &names, &n_names, &fallback);
  if (!ours && !fallback && x->ins->deadline_hit)
    return tbi_tsk_fail(x->ins, "cannot read directory");
  if (!ours && !fallback) {
    errno = ENOMEM;
    return tb_error("out of memory comparing filesystems");
  }
  cnt = n_names;
  TSK_FS_DIR *td = NULL;
  if (!ours) {
    TSK_FS_FILE *dm = tbi_open_meta(x->ins, v, linum);
    bool plausible = dm && dm->meta && tbi_size_plausible(v, dm->meta);
    tsk_fs_file_close(dm);
    td = plausible ? tsk_fs_dir_open_meta(v->fs, (TSK_INUM_T)linum) : NULL;
    tsk_error_reset();
    if (!td) /* unreadable: the walk skips it */
      return x->ins->deadline_hit ? tbi_tsk_fail(x->ins, "cannot read directory") : 0;
    cnt = tsk_fs_dir_getsize(td);
  }
  if (cnt > TB_INSPECT_MAX_DIR_ENTRIES)
    cnt = TB_INSPECT_MAX_DIR_ENTRIES;
  struct lent *le = calloc(cnt ? cnt : 1, sizeof *le);
  size_t n = 0;
  int r = le ? 0 : -1;
  struct name_seen seen = {0};
  for (size_t i = 0; i < cnt && r == 0; i++) {
    if ((i & 255) == 0 && tbi_past_deadline(x->ins))
      break;
    if (ours) { /* already a tbi_entry_name(); the metadata is loaded below */
      if (path_len + 1 + strlen(names[i].name) < TB_PATH_MAX) {
        le[n++] = (struct lent){.name = names[i].name, .inum = names[i].ref, .idx = i};
        names[i].name = NULL;
      }
      continue;
    }
    const TSK_FS_NAME *nm = tsk_fs_dir_get_name(td, i);
    char *name = tbi_entry_name(nm, &seen);
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
    if (le[i].base != NODE_NONE && x->iv->nodes.ptr[le[i].base].st.inum == le[i].inum &&
        !cands_has(&x->c, le[i].inum))
      continue; /* the base's entry, unchanged */
    if ((i & 63) == 0 && tbi_past_deadline(x->ins))
      break;
    le[i].loaded = true;
    if (ours) {
      const struct ntfs_name *nn = &names[le[i].idx];
      TSK_FS_NAME nm = {.name = le[i].name,
                        .meta_addr = nn->ref,
                        .meta_seq = nn->seq,
                        .flags = TSK_FS_NAME_FLAG_ALLOC,
                        .type = nn->type};
      le[i].st = (struct tb_istat){.type = tbi_name_type(nn->type), .inum = nn->ref, .nlink = 1};
      le[i].virt = !tbi_file_stat(x->ins, v, tbi_open_meta(x->ins, v, nn->ref), &nm, &le[i].st);
    } else {
      const TSK_FS_NAME *nm = tsk_fs_dir_get_name(td, le[i].idx);
      le[i].virt = !nm || !tbi_entry_stat(x->ins, x->v, td, le[i].idx, nm, &le[i].st);
    }
    x->stats->files_examined++;
  }
  if (td)
    tsk_fs_dir_close(td);
  tbi_ntfs_names_free(names, n_names);
  if (r < 0) {
    lents_free(le, n);
    errno = ENOMEM;
    return tb_error("out of memory comparing filesystems");
  }
  if (x->ins->deadline_hit) {
    lents_free(le, n);
    return tbi_tsk_fail(x->ins, "cannot read directory");
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
  const struct inode_node *b = &x->iv->nodes.ptr[bn];
  uint32_t bf = b->first_child, bc = b->n_children;
  size_t i = 0, k = 0;
  int r = 0;
  while (r == 0 && (i < n || k < bc)) {
    if (tbi_past_deadline(x->ins)) {
      r = tbi_tsk_fail(x->ins, "comparing filesystems");
      break;
    }
    int cmp = i == n ? 1 : k == bc ? -1 : strcmp(le[i].name, node_name(x->iv, bf + k));
    if (cmp < 0) { /* only in live */
      size_t pl = set_path(x, path_len, le[i].name);
      if (!le[i].virt) {
        r = tbi_changes_add(x->out, TB_CREATED, x->vname, x->path, &le[i].st);
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
      else if (x->flags[c] && x->iv->nodes.ptr[c].st.type == TB_FT_DIR)
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
    const struct inode_node *b = &x->iv->nodes.ptr[bn];
    for (uint32_t k = 0; k < b->n_children && r == 0; k++) {
      uint32_t c = b->first_child + k;
      if (!x->flags[c] || x->iv->nodes.ptr[c].st.type != TB_FT_DIR)
        continue;
      if (tbi_past_deadline(x->ins)) {
        r = tbi_tsk_fail(x->ins, "comparing filesystems");
        break;
      }
      r = visit(x, c, x->iv->nodes.ptr[c].st.inum, false,
                set_path(x, path_len, node_name(x->iv, c)));
      x->path[path_len] = '\0';
    }
  }
  x->depth--;
  return r;
}

/* Returns 0 (changes added to j->changes), 1 if the index cannot be trusted
 * for this volume (its records moved: the caller runs the full diff), or
 * -1 with errno. */
int tbi_do_idiff(struct tb_inspect *ins, struct job *j)
{
  struct vol *v = tbi_get_vol(ins, j->vol);
  if (!v)
    return -1;
  const struct ivol *iv = &j->index->vols[j->ivol];
  struct geom g;
  bool same = tbi_vol_geometry(ins, v, &g) == 0 && tbi_geom_covers(&g, &iv->geom) &&
              iv->nodes.len > 0 && iv->nodes.ptr[0].st.inum == v->root.inum;
  if (!same) {
    tbi_geom_free(&g);
    return ins->deadline_hit ? tbi_tsk_fail(ins, "comparing filesystems") : 1;
  }
  struct idiff *x = calloc(1, sizeof *x);
  uint8_t *flags = calloc(iv->nodes.len, 1);
  if (!x || !flags) {
    free(x);
    free(flags);
    tbi_geom_free(&g);
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
  if (r == 0 && x->c.len > 0) {
    qsort(x->c.ptr, x->c.len, sizeof *x->c.ptr, u64_cmp);
    size_t k = 0;
    for (size_t i = 0; i < x->c.len; i++)
      if (k == 0 || x->c.ptr[k - 1] != x->c.ptr[i])
        x->c.ptr[k++] = x->c.ptr[i];
    x->c.len = k;
  }
  j->stats.candidates = x->c.len;
  if (r == 0) {
    mark_candidates(x);
    r = visit(x, 0, v->root.inum, false, 0);
  }
  tb_vector_free(&x->c);
  free(flags);
  free(x);
  tbi_geom_free(&g);
  return r;
}

int tbi_idiff_request(struct tb_inspect_index *idx, size_t ivol, struct tb_inspect *base,
                      struct tb_inspect *live, size_t li, const struct tb_ranges *dirty,
                      int64_t deadline_ms, struct changes *out, struct tb_diff_stats *stats)
{
  struct job *j = tbi_job_new(live, JOB_IDIFF, deadline_ms);
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
  for (size_t i = tbi_ranges_lower_bound(dirty, lv->offset);
       r == 0 && i < dirty->n && dirty->v[i].off < lv->offset + lv->length; i++)
    r = tb_ranges_add(&j->dirty, dirty->v[i].off, dirty->v[i].len);
  if (r == 0)
    r = (int)tbi_run_request(live, j);
  if (r >= 0) {
    stats->candidates += j->stats.candidates;
    stats->files_examined += j->stats.files_examined;
    stats->dirs_relisted += j->stats.dirs_relisted;
  }
  struct changes *c = j->changes;
  if (r == 0 && c->len > 0) {
    if (tb_vector_reserve(out, c->len) == -1) {
      errno = ENOMEM;
      r = tb_error("out of memory comparing filesystems");
    } else {
      memcpy(out->ptr + out->len, c->ptr, c->len * sizeof *c->ptr);
      out->len += c->len;
      c->len = 0; /* moved */
    }
  }
  tbi_job_put(j);
  return r;
}
