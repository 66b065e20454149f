/* SPDX-License-Identifier: BSD-3-Clause */
/* inspect-index-cache: lib/inspect's one cache of base indexes
 * (tb_inspect_index_get), on an ext4 image IMAGE:
 *
 *   inspect-index-cache IMAGE
 *
 * A key asked again gets the same index without a read of the disk and with
 * BUILD_MS 0; TB_INSPECT_INDEX_CACHE other keys evict it (the evicted index
 * stays valid while referenced); a key whose build failed (reads slower than
 * the budget) answers NULL at once the next time, without reading; threads
 * missing one key at once all get the same index.  Prints "FAIL: ..." and
 * exits 1 on the first thing that is not so.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "inspect.h"

#define THREADS 8

#define CHECK(cond, ...)                                                                           \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      printf("FAIL: " __VA_ARGS__);                                                                \
      printf(" (%s)\n", tb_errmsg());                                                              \
      exit(1);                                                                                     \
    }                                                                                              \
  } while (0)

struct counted {
  int fd;
  atomic_uint reads;
  atomic_bool slow; /* each read sleeps 100 ms */
};

static int counted_read(void *opaque, void *buf, size_t len, uint64_t off)
{
  struct counted *c = opaque;
  atomic_fetch_add(&c->reads, 1);
  if (atomic_load(&c->slow)) {
    struct timespec ts = {0, 100 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  ssize_t n = pread(c->fd, buf, len, (off_t)off);
  if (n != (ssize_t)len) {
    errno = EIO;
    return -1;
  }
  return 0;
}

static struct tb_inspect *open_counted(const char *path, struct counted *c, int64_t budget_ms)
{
  struct stat st;
  c->fd = open(path, O_RDONLY | O_CLOEXEC);
  CHECK(c->fd >= 0 && fstat(c->fd, &st) == 0, "cannot open %s", path);
  atomic_init(&c->reads, 0);
  atomic_init(&c->slow, false);
  struct tb_disk *d = tb_disk_new((uint64_t)st.st_size, counted_read, NULL, c, path);
  CHECK(d, "tb_disk_new");
  struct tb_inspect *ins = tb_inspect_open_budget(d, budget_ms);
  tb_disk_unref(d);
  CHECK(ins && tb_inspect_n_volumes(ins) == 1, "%s: one volume expected", path);
  return ins;
}

struct racer {
  struct tb_inspect *ins;
  struct tb_inspect_index *idx;
};

static void *race(void *arg)
{
  struct racer *r = arg;
  r->idx = tb_inspect_index_get("raced", r->ins, NULL);
  return NULL;
}

int main(int argc, char **argv)
{
  if (argc != 2) {
    fprintf(stderr, "usage: inspect-index-cache IMAGE\n");
    return 2;
  }
  struct counted c;
  struct tb_inspect *ins = open_counted(argv[1], &c, TB_INSPECT_DEFAULT_BUDGET_MS);

  /* Built once, then from the cache: no read, no build time. */
  int64_t ms = -1;
  struct tb_inspect_index *first = tb_inspect_index_get("v1", ins, &ms);
  CHECK(first && tb_inspect_index_files(first) > 0, "v1 not built");
  CHECK(ms >= 0, "v1: build_ms %lld", (long long)ms);
  unsigned reads = atomic_load(&c.reads);
  struct tb_inspect_index *again = tb_inspect_index_get("v1", ins, &ms);
  CHECK(again == first, "v1 asked again: another index");
  CHECK(ms == 0, "v1 asked again: build_ms %lld", (long long)ms);
  CHECK(atomic_load(&c.reads) == reads, "v1 asked again: %u reads", atomic_load(&c.reads) - reads);
  tb_inspect_index_free(again);

  /* TB_INSPECT_INDEX_CACHE other keys: v1 is the least recently used. */
  for (int i = 2; i <= TB_INSPECT_INDEX_CACHE + 1; i++) {
    char key[16];
    snprintf(key, sizeof key, "v%d", i);
    struct tb_inspect_index *idx = tb_inspect_index_get(key, ins, NULL);
    CHECK(idx && idx != first, "%s: not built or v1's", key);
    tb_inspect_index_free(idx);
  }
  again = tb_inspect_index_get("v1", ins, &ms);
  CHECK(again && again != first, "v1 was not evicted by %d other keys", TB_INSPECT_INDEX_CACHE);
  /* The evicted index is still whole: we hold a reference. */
  CHECK(tb_inspect_index_files(first) == tb_inspect_index_files(again), "evicted v1 changed");
  tb_inspect_index_free(again);
  tb_inspect_index_free(first);

  /* A build that fails (every read slower than the whole budget) is
   * remembered: the key answers NULL at once, reading nothing. */
  struct counted slow;
  struct tb_inspect *slow_ins = open_counted(argv[1], &slow, TB_INSPECT_DEFAULT_BUDGET_MS);
  tb_inspect_set_budget(slow_ins, 10);
  atomic_store(&slow.slow, true);
  struct tb_inspect_index *idx = tb_inspect_index_get("slow", slow_ins, &ms);
  CHECK(!idx, "slow: built under a budget its reads overrun");
  while (tb_inspect_stuck(slow_ins)) /* the worker gives up at its next read */
    usleep(10 * 1000);
  reads = atomic_load(&slow.reads);
  int64_t t0 = tb_now_ms();
  idx = tb_inspect_index_get("slow", slow_ins, &ms);
  int64_t took = tb_now_ms() - t0;
  CHECK(!idx && errno == EAGAIN, "slow asked again: not the failure memo (errno %d)", errno);
  CHECK(ms == 0 && took < 50, "slow asked again: built again (%lld ms)", (long long)took);
  CHECK(atomic_load(&slow.reads) == reads, "slow asked again: %u reads",
        atomic_load(&slow.reads) - reads);
  tb_inspect_close(slow_ins);

  /* Threads missing one key at once: all get the index kept. */
  pthread_t th[THREADS];
  struct racer r[THREADS];
  for (int i = 0; i < THREADS; i++) {
    r[i] = (struct racer){ins, NULL};
    CHECK(pthread_create(&th[i], NULL, race, &r[i]) == 0, "pthread_create");
  }
  for (int i = 0; i < THREADS; i++)
    pthread_join(th[i], NULL);
  idx = tb_inspect_index_get("raced", ins, &ms);
  CHECK(idx && ms == 0, "raced: not cached");
  for (int i = 0; i < THREADS; i++) {
    CHECK(r[i].idx == idx, "raced: thread %d got another index", i);
    tb_inspect_index_free(r[i].idx);
  }
  tb_inspect_index_free(idx);
  tb_inspect_close(ins);
  close(c.fd);
  close(slow.fd);
  printf("index cache: hits, eviction, failure memo, %d racing threads: ok\n", THREADS);
  return 0;
}
