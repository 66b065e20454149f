/* SPDX-License-Identifier: BSD-3-Clause */
/* fuse-mutate: hostile filesystems against lib/inspect, the code under the view.
 *
 *   fuse-mutate IMAGE COUNT SEED
 *   fuse-mutate IMAGE COUNT SEED OUT   (write mutant number COUNT to OUT and exit)
 *
 * Loads IMAGE, finds its non-zero sectors (in the small test images these are
 * mostly metadata: superblocks, inode tables, FATs, MFT entries, directories),
 * and COUNT times writes random bytes into a few of them, then does what the
 * view does on the result: open, list volumes, walk every filesystem, stat,
 * readdir, readlink and read every file, and compare with the original.  Every
 * mutant must finish within the alarm (a hang fails) and, under ASan, without
 * a memory error (a crash fails).  Errors (EIO) are what we expect; the count
 * is printed.  Each mutant is also diffed against the original, fully and
 * through the original's index, with the mutated 4 KiB blocks as the dirty
 * map: how often the two differ is printed.  Exit 0 if all mutants were
 * survived.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "inspect.h"

#define SECTOR 512
#define PER_MUTANT_SECONDS 30

struct mem {
  unsigned char *buf;
  size_t size;
};

static int mem_read(void *opaque, void *buf, size_t len, uint64_t off)
{
  struct mem *m = opaque;
  if (off > m->size || len > m->size - off) {
    errno = EIO;
    return -1;
  }
  memcpy(buf, m->buf + off, len);
  return 0;
}

static uint64_t rng_state;
static uint64_t rnd(void)
{
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

struct counts {
  unsigned long files, dirs, links, errors, bytes;
};

struct visit {
  struct tb_inspect *ins;
  size_t vol;
  struct counts *c;
  char (*paths)[1024];
  size_t n_paths;
};

static int walk_cb(void *ctx, const char *path, const struct tb_istat *st, bool touched)
{
  struct visit *v = ctx;
  if (v->n_paths < 4096)
    snprintf(v->paths[v->n_paths++], 1024, "%s", path);
  return v->n_paths >= 4096 ? 1 : 0;
}

static void visit_path(struct visit *v, const char *path)
{
  struct tb_istat st;
  if (tb_inspect_stat(v->ins, v->vol, path, &st) < 0) {
    v->c->errors++;
    return;
  }
  if (st.type == TB_FT_DIR) {
    v->c->dirs++;
    return;
  }
  if (st.type == TB_FT_LNK) {
    char target[4096];
    v->c->links++;
    if (tb_inspect_readlink(v->ins, v->vol, path, target, sizeof target) < 0)
      v->c->errors++;
    return;
  }
  struct tb_ifile *f = tb_inspect_open_file(v->ins, v->vol, path);
  if (!f) {
    v->c->errors++;
    return;
  }
  v->c->files++;
  static char buf[65536];
  uint64_t off = 0, limit = 4u << 20;
  while (off < limit) {
    ssize_t n = tb_ifile_pread(f, buf, sizeof buf, off);
    if (n < 0) {
      v->c->errors++;
      break;
    }
    if (n == 0)
      break;
    v->c->bytes += (unsigned long)n;
    off += (uint64_t)n;
  }
  tb_ifile_close(f);
}

static int count_entry(void *ctx, const char *name, const struct tb_istat *st)
{
  return 0;
}

static int count_change(void *ctx, enum tb_change kind, const char *path, const struct tb_istat *st)
{
  (*(unsigned long *)ctx)++;
  return 0;
}

/* A diff as text, to compare the full and the indexed one. */
struct text {
  char *buf;
  size_t len;
  FILE *f;
};

static int print_change(void *ctx, enum tb_change kind, const char *path, const struct tb_istat *st)
{
  fprintf(((struct text *)ctx)->f, "%s %s %d %" PRIu64 " %" PRIu64 " %" PRId64 "\n",
          tb_change_name(kind), path, (int)st->type, st->size, st->inum, st->mtime);
  return 0;
}

/* The dirty map of a mutant: the 4 KiB blocks where it differs from ORIG. */
static const struct mem *orig_mem;
static struct tb_inspect_index *orig_index;
static unsigned long index_diffs, index_mismatches, index_errors;

static void dirty_of(const struct mem *m, struct tb_ranges *dirty)
{
  for (size_t off = 0; off < m->size; off += 4096) {
    size_t n = m->size - off < 4096 ? m->size - off : 4096;
    if (memcmp(m->buf + off, orig_mem->buf + off, n) != 0)
      tb_ranges_add(dirty, off, n);
  }
}

/* The indexed diff must say what the full diff says (both may fail: EIO). */
static void compare_diffs(struct tb_inspect *orig, struct tb_inspect *ins, const struct mem *m)
{
  struct tb_ranges dirty = {0};
  dirty_of(m, &dirty);
  struct text full = {0}, indexed = {0};
  full.f = open_memstream(&full.buf, &full.len);
  indexed.f = open_memstream(&indexed.buf, &indexed.len);
  int rf = tb_inspect_diff(orig, ins, &dirty, print_change, &full);
  int ri = tb_inspect_diff_indexed(orig_index, orig, ins, &dirty, print_change, &indexed, NULL);
  fclose(full.f);
  fclose(indexed.f);
  index_diffs++;
  if (rf < 0 || ri < 0)
    index_errors++;
  else if (full.len != indexed.len || memcmp(full.buf, indexed.buf, full.len) != 0) {
    index_mismatches++;
    fprintf(stderr, "the full diff says\n%.2000s\nthe indexed diff says\n%.2000s\n", full.buf,
            indexed.buf);
  }
  free(full.buf);
  free(indexed.buf);
  tb_ranges_free(&dirty);
}

static void inspect_all(struct tb_disk *disk, struct tb_inspect *orig, struct counts *c,
                        const struct mem *m)
{
  struct tb_inspect *ins = tb_inspect_open(disk);
  if (!ins) {
    c->errors++;
    return;
  }
  tb_inspect_set_budget(ins, 2000);
  char(*paths)[1024] = malloc(4096 * sizeof *paths);
  for (size_t vol = 0; vol < tb_inspect_n_volumes(ins) && paths; vol++) {
    struct visit v = {ins, vol, c, paths, 0};
    if (tb_inspect_walk(ins, vol, NULL, walk_cb, &v) < 0)
      c->errors++;
    if (tb_inspect_readdir(ins, vol, "/", count_entry, NULL) < 0)
      c->errors++;
    for (size_t i = 0; i < v.n_paths; i++)
      visit_path(&v, paths[i]);
    /* Lookups of names that are not there, and through files. */
    struct tb_istat st;
    tb_inspect_stat(ins, vol, "/no/such/file", &st);
    if (v.n_paths)
      tb_inspect_stat(ins, vol, strcat(paths[0], "/x"), &st);
  }
  free(paths);
  unsigned long changes = 0;
  if (orig && tb_inspect_diff(orig, ins, NULL, count_change, &changes) < 0)
    c->errors++;
  if (orig && m)
    compare_diffs(orig, ins, m);
  tb_inspect_close(ins);
}

/* A copy of ORIG with random bytes in 1-4 of the candidate sectors. */
static void mutate(struct mem *m, const struct mem *orig, const size_t *cand, size_t n_cand)
{
  memcpy(m->buf, orig->buf, orig->size);
  int sectors = 1 + (int)(rnd() % 4);
  for (int k = 0; k < sectors; k++) {
    /* Half the time one of the first non-zero sectors: boot sectors,
     * superblocks, FATs, group descriptors live there. */
    size_t first = n_cand < 96 ? n_cand : 96;
    size_t s = cand[(rnd() & 1) ? rnd() % first : rnd() % n_cand];
    int bytes = 1 + (int)(rnd() % 24);
    for (int b = 0; b < bytes; b++) {
      unsigned char v = (unsigned char)rnd();
      if (rnd() % 4 == 0)
        v = (rnd() & 1) ? 0xff : 0x00;
      m->buf[s * SECTOR + rnd() % SECTOR] = v;
    }
  }
}

static volatile int current_mutant;

static void on_alarm(int sig)
{
  char msg[128];
  int n = snprintf(msg, sizeof msg, "fuse-mutate: mutant %d took longer than %d s: HANG\n",
                   current_mutant, PER_MUTANT_SECONDS);
  if (write(2, msg, (size_t)n) < 0)
    _exit(3);
  _exit(3);
}

int main(int argc, char **argv)
{
  if (argc != 4 && argc != 5) {
    fprintf(stderr, "usage: fuse-mutate IMAGE COUNT SEED [OUT]\n");
    return 2;
  }
  const char *image = argv[1];
  int count = atoi(argv[2]);
  rng_state = strtoull(argv[3], NULL, 10) * 2654435761u + 1;

  struct mem orig = {0};
  size_t len;
  int fd = open(image, O_RDONLY);
  struct stat sb;
  if (fd < 0 || fstat(fd, &sb) < 0) {
    perror(image);
    return 2;
  }
  orig.size = (size_t)sb.st_size;
  orig.buf = malloc(orig.size);
  if (!orig.buf || tb_pread_full(fd, orig.buf, orig.size, 0) < 0) {
    perror(image);
    return 2;
  }
  close(fd);
  (void)len;

  /* Candidate sectors: the non-zero ones. */
  size_t n_sect = orig.size / SECTOR, n_cand = 0;
  size_t *cand = malloc(n_sect * sizeof *cand);
  static const unsigned char zero[SECTOR];
  for (size_t s = 0; s < n_sect; s++)
    if (memcmp(orig.buf + s * SECTOR, zero, SECTOR) != 0)
      cand[n_cand++] = s;
  if (n_cand == 0) {
    fprintf(stderr, "%s: nothing to mutate\n", image);
    return 2;
  }

  struct tb_disk *odisk = tb_disk_new(orig.size, mem_read, NULL, &orig, image);
  struct tb_inspect *oins = tb_inspect_open(odisk);
  if (!oins || (count > 0 && tb_inspect_n_volumes(oins) == 0)) {
    fprintf(stderr, "%s: the original has no filesystem: %s\n", image, tb_errmsg());
    return 2;
  }

  orig_mem = &orig;
  if (count > 0 && !(orig_index = tb_inspect_index_build(oins))) {
    fprintf(stderr, "%s: cannot index the original: %s\n", image, tb_errmsg());
    return 2;
  }
  signal(SIGALRM, on_alarm);
  if (count == 0) { /* inspect IMAGE itself: to replay a mutant written with OUT */
    struct counts c0 = {0};
    alarm(PER_MUTANT_SECONDS);
    inspect_all(odisk, NULL, &c0, NULL);
    printf("%s: %lu files, %lu errors\n", image, c0.files, c0.errors);
    return 0;
  }
  struct mem m = {malloc(orig.size), orig.size};
  struct counts c = {0};
  unsigned long unopenable = 0;
  if (argc == 5) {
    for (int i = 0; i <= count; i++)
      mutate(&m, &orig, cand, n_cand);
    int out = open(argv[4], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out < 0 || tb_pwrite_full(out, m.buf, m.size, 0) < 0 || close(out) < 0) {
      perror(argv[4]);
      return 2;
    }
    return 0;
  }
  for (int i = 0; i < count; i++) {
    current_mutant = i;
    mutate(&m, &orig, cand, n_cand);
    alarm(PER_MUTANT_SECONDS);
    struct tb_disk *d = tb_disk_new(m.size, mem_read, NULL, &m, "mutant");
    unsigned long before = c.errors;
    inspect_all(d, oins, &c, &m);
    if (c.errors > before)
      unopenable++;
    tb_disk_unref(d);
    alarm(0);
  }
  printf("%s: %d mutants survived: %lu files (%lu bytes), %lu dirs, %lu links read; "
         "%lu errors in %lu mutants\n",
         image, count, c.files, c.bytes, c.dirs, c.links, c.errors, unopenable);
  printf("%s: indexed diff vs full diff: %lu compared, %lu differ, %lu failed (EIO)\n", image,
         index_diffs, index_mismatches, index_errors);
  tb_inspect_index_free(orig_index);
  tb_inspect_close(oins);
  tb_disk_unref(odisk);
  free(m.buf);
  free(orig.buf);
  free(cand);
  return 0;
}
