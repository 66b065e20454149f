/* SPDX-License-Identifier: BSD-3-Clause */
/* inspect-index: the indexed diff against the full diff (lib/inspect).
 *
 *   inspect-index BASE LIVE           two raw images: the dirty map is every
 *                                     4 KiB block where they differ
 *   inspect-index --scan STATE OVERLAY a client's overlay on its base version
 *                                     (lib/rules' scan: the overlay's dirty map)
 *
 * Builds the index of BASE, then runs tb_inspect_diff and
 * tb_inspect_diff_indexed with the same dirty map and prints both change
 * lists ("full: KIND PATH TYPE SIZE INUM MTIME", "indexed: ..."), then one
 * line of figures:
 *
 *   stats: same=1 indexed=V full=V fallbacks=V candidates=N examined=N
 *          relisted=N full_examined=N files=N index_ms=T full_ms=T indexed_ms=T
 *
 * Exit 0 if both lists are the same, 1 if not, 2 on an error.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "inspect.h"
#include "rules.h"

#define BLOCK 4096

struct lines {
  char **v;
  size_t n, cap;
};

static int collect(void *ctx, enum tb_change kind, const char *path, const struct tb_istat *st)
{
  struct lines *l = ctx;
  if (l->n == l->cap) {
    l->cap = l->cap ? 2 * l->cap : 64;
    if (!(l->v = realloc(l->v, l->cap * sizeof *l->v)))
      return -1;
  }
  if (asprintf(&l->v[l->n], "%s %s %s %" PRIu64 " %" PRIu64 " %" PRId64 ".%09u",
               tb_change_name(kind), path, tb_file_type_name(st->type), st->size, st->inum,
               st->mtime, st->mtime_ns) < 0)
    return -1;
  l->n++;
  return 0;
}

/* The 4 KiB blocks where A and B differ. */
static int dirty_by_compare(const char *a, const char *b, struct tb_ranges *out)
{
  int fa = open(a, O_RDONLY), fb = open(b, O_RDONLY);
  struct stat sa, sb;
  if (fa < 0 || fb < 0 || fstat(fa, &sa) < 0 || fstat(fb, &sb) < 0 || sa.st_size != sb.st_size) {
    fprintf(stderr, "inspect-index: %s and %s must be readable images of the same size\n", a, b);
    return -1;
  }
  enum { CHUNK = 1 << 20 };
  char *x = malloc(CHUNK), *y = malloc(CHUNK);
  for (uint64_t off = 0; off < (uint64_t)sa.st_size; off += CHUNK) {
    size_t n = (uint64_t)sa.st_size - off < CHUNK ? (size_t)((uint64_t)sa.st_size - off) : CHUNK;
    if (tb_pread_full(fa, x, n, off) < 0 || tb_pread_full(fb, y, n, off) < 0)
      return -1;
    for (size_t k = 0; k < n; k += BLOCK) {
      size_t len = n - k < BLOCK ? n - k : BLOCK;
      if (memcmp(x + k, y + k, len) != 0 && tb_ranges_add(out, off + k, len) < 0)
        return -1;
    }
  }
  free(x);
  free(y);
  close(fa);
  close(fb);
  return 0;
}

int main(int argc, char **argv)
{
  struct tb_inspect *base = NULL, *live = NULL;
  struct tb_ranges dirty = {0};
  struct tb_scan *scan = NULL;
  if (argc == 4 && strcmp(argv[1], "--scan") == 0) {
    if (!(scan = tb_scan_open(argv[2], argv[3], 0, NULL))) {
      fprintf(stderr, "inspect-index: %s\n", tb_errmsg());
      return 2;
    }
    base = scan->base_ins;
    live = scan->live_ins;
    for (size_t i = 0; i < scan->dirty.n; i++)
      tb_ranges_add(&dirty, scan->dirty.v[i].off, scan->dirty.v[i].len);
  } else if (argc == 3) {
    struct tb_disk *bd = tb_disk_open_file(argv[1]), *ld = tb_disk_open_file(argv[2]);
    if (!bd || !ld || dirty_by_compare(argv[1], argv[2], &dirty) < 0) {
      fprintf(stderr, "inspect-index: %s\n", tb_errmsg());
      return 2;
    }
    base = tb_inspect_open(bd);
    live = tb_inspect_open(ld);
    tb_disk_unref(bd);
    tb_disk_unref(ld);
    if (!base || !live) {
      fprintf(stderr, "inspect-index: %s\n", tb_errmsg());
      return 2;
    }
  } else {
    fprintf(stderr, "usage: inspect-index BASE LIVE | inspect-index --scan STATE OVERLAY\n");
    return 2;
  }
  tb_inspect_set_budget(base, 60000);
  tb_inspect_set_budget(live, 60000);

  int64_t t0 = tb_now_ms();
  struct tb_inspect_index *idx = tb_inspect_index_build(base);
  int64_t index_ms = tb_now_ms() - t0;
  if (!idx) {
    fprintf(stderr, "inspect-index: index: %s\n", tb_errmsg());
    return 2;
  }
  /* The indexed diff first: the full one would warm the live handle's
   * directory cache for it. */
  struct lines full = {0}, indexed = {0};
  struct tb_diff_stats st;
  t0 = tb_now_ms();
  if (tb_inspect_diff_indexed(idx, base, live, &dirty, collect, &indexed, &st) < 0) {
    fprintf(stderr, "inspect-index: indexed diff: %s\n", tb_errmsg());
    return 2;
  }
  int64_t indexed_ms = tb_now_ms() - t0;
  struct tb_diff_stats fst;
  t0 = tb_now_ms();
  if (tb_inspect_diff_indexed(NULL, base, live, &dirty, collect, &full, &fst) < 0) {
    fprintf(stderr, "inspect-index: full diff: %s\n", tb_errmsg());
    return 2;
  }
  int64_t full_ms = tb_now_ms() - t0;

  bool same = full.n == indexed.n;
  for (size_t i = 0; i < full.n; i++)
    printf("full: %s\n", full.v[i]);
  for (size_t i = 0; i < indexed.n; i++) {
    printf("indexed: %s\n", indexed.v[i]);
    same = same && strcmp(full.v[i], indexed.v[i]) == 0;
  }
  printf("stats: same=%d indexed=%" PRIu64 " full=%" PRIu64 " fallbacks=%" PRIu64
         " candidates=%" PRIu64 " examined=%" PRIu64 " relisted=%" PRIu64 " full_examined=%" PRIu64
         " files=%" PRIu64 " index_ms=%" PRId64 " full_ms=%" PRId64 " indexed_ms=%" PRId64
         " index_kib=%zu dirty_mib=%" PRIu64 "\n",
         same, st.volumes_indexed, st.volumes_full, st.fallbacks, st.candidates, st.files_examined,
         st.dirs_relisted, fst.files_examined, tb_inspect_index_files(idx), index_ms, full_ms,
         indexed_ms, tb_inspect_index_bytes(idx) / 1024, tb_ranges_bytes(&dirty) >> 20);
  for (size_t i = 0; i < full.n; i++)
    free(full.v[i]);
  for (size_t i = 0; i < indexed.n; i++)
    free(indexed.v[i]);
  free(full.v);
  free(indexed.v);
  tb_inspect_index_free(idx);
  tb_ranges_free(&dirty);
  if (scan) {
    tb_scan_close(scan);
  } else {
    tb_inspect_close(base);
    tb_inspect_close(live);
  }
  return same ? 0 : 1;
}
