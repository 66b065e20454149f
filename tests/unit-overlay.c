/* SPDX-License-Identifier: BSD-3-Clause */
/* Unit tests of lib/overlay.c: the map, reads and writes of every alignment
 * against an in-memory model, flush and reopen, header checks (corrupt,
 * truncated, other base), quota, extents, preserved-block copies, many
 * threads writing at once, DATA past the end of the file, map page checksums,
 * and format 1 files. */
#include <config.h>

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/sha.h>

#include "overlay.h"
#include "check-run.h"

#define SIZE (4 * 1024 * 1024 + 1536) /* not a multiple of the block size on purpose */

static char dir[256], base_path[300], ovl_path[300];
static unsigned char *master;
static struct tb_base_id base = {.image = "demo", .version = 1};

static void setup(void)
{
  strcpy(dir, "/tmp/unit-overlay-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
  snprintf(base_path, sizeof base_path, "%s/base.img", dir);
  snprintf(ovl_path, sizeof ovl_path, "%s/overlay", dir);
  master = malloc(SIZE);
  srand(42);
  for (size_t i = 0; i < SIZE; i++)
    master[i] = (unsigned char)rand();
  int fd = open(base_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, master, SIZE), SIZE);
  close(fd);
  memset(base.manifest_sha256, 7, 32);
}

static void teardown(void)
{
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  ck_assert_int_eq(system(cmd), 0);
  free(master);
}

static struct tb_overlay *create_open(uint32_t bs)
{
  unlink(ovl_path);
  ck_assert_msg(tb_overlay_create(ovl_path, SIZE, bs, &base, 1) == 0, "%s", tb_errmsg());
  struct tb_overlay *o = tb_overlay_open(ovl_path, base_path, &base, 0);
  ck_assert_msg(o != NULL, "%s", tb_errmsg());
  return o;
}

static void check_model(struct tb_overlay *o, const unsigned char *model)
{
  unsigned char *buf = malloc(SIZE);
  ck_assert_int_eq(tb_overlay_pread(o, buf, SIZE, 0), 0);
  for (size_t i = 0; i < SIZE; i++)
    if (buf[i] != model[i])
      ck_abort_msg("byte %zu differs: got %u, want %u", i, buf[i], model[i]);
  free(buf);
}

START_TEST(test_fresh_reads_master)
{
  struct tb_overlay *o = create_open(4096);
  check_model(o, master);
  struct tb_overlay_info info;
  tb_overlay_info(o, &info);
  ck_assert_uint_eq(info.dirty_blocks, 0);
  ck_assert_uint_eq(info.size, SIZE);
  ck_assert_int_eq(tb_overlay_close(o), 0);
}
END_TEST

/* Random writes, zeros and trims of every alignment against a model, for each
 * block size; then flush, reopen and compare again. */
START_TEST(test_random_ops_model)
{
  static const uint32_t sizes[] = {512, 4096, 65536};
  uint32_t bs = sizes[_i];
  unsigned char *model = malloc(SIZE);
  memcpy(model, master, SIZE);
  struct tb_overlay *o = create_open(bs);
  unsigned char *buf = malloc(256 * 1024);
  srand(1000 + _i);
  for (int op = 0; op < 3000; op++) {
    uint64_t off = (uint64_t)rand() % SIZE;
    uint32_t len = 1 + (uint32_t)rand() % (rand() % 4 ? 9000 : 200000);
    if (off + len > SIZE)
      len = (uint32_t)(SIZE - off);
    switch (rand() % 5) {
    case 0:
    case 1:
      for (uint32_t i = 0; i < len; i++)
        buf[i] = (unsigned char)rand();
      ck_assert_int_eq(tb_overlay_pwrite(o, buf, len, off, op % 50 == 0 ? TB_FUA : 0), 0);
      memcpy(model + off, buf, len);
      break;
    case 2:
      ck_assert_int_eq(tb_overlay_zero(o, len, off, 0), 0);
      memset(model + off, 0, len);
      break;
    case 3: {
      /* Trim: whole blocks inside the range become zeros; edges unchanged. */
      ck_assert_int_eq(tb_overlay_trim(o, len, off, 0), 0);
      uint64_t a = (off + bs - 1) / bs * bs, z = (off + len) / bs * bs;
      if (off + len == SIZE)
        z = SIZE;
      if (z > a)
        memset(model + a, 0, z - a);
      break;
    }
    case 4:
      ck_assert_int_eq(tb_overlay_pread(o, buf, len, off), 0);
      ck_assert_int_eq(memcmp(buf, model + off, len), 0);
      break;
    }
    if (op % 500 == 0)
      ck_assert_int_eq(tb_overlay_flush(o), 0);
  }
  check_model(o, model);
  ck_assert_int_eq(tb_overlay_close(o), 0);
  o = tb_overlay_open(ovl_path, base_path, &base, TB_OVL_RDONLY);
  ck_assert_msg(o != NULL, "%s", tb_errmsg());
  check_model(o, model);
  ck_assert_int_eq(tb_overlay_pwrite(o, buf, 1, 0, 0), -1);
  ck_assert_int_eq(errno, EROFS);
  tb_overlay_close(o);
  free(buf);
  free(model);
}
END_TEST

struct extent_sum {
  uint64_t bytes[3];
  uint64_t last_end;
};

static int sum_extent(void *ctx, uint64_t off, uint64_t len, enum tb_block_state s)
{
  struct extent_sum *x = ctx;
  ck_assert_uint_eq(off, x->last_end); /* contiguous, in order */
  x->bytes[s] += len;
  x->last_end = off + len;
  return 0;
}

START_TEST(test_states_and_extents)
{
  struct tb_overlay *o = create_open(4096);
  char b[4096];
  memset(b, 1, sizeof b);
  ck_assert_int_eq(tb_overlay_pwrite(o, b, 4096, 8192, 0), 0);       /* block 2 DATA */
  ck_assert_int_eq(tb_overlay_pwrite(o, b, 10, 4096 * 5 + 3, 0), 0); /* block 5 DATA (rmw) */
  ck_assert_int_eq(tb_overlay_zero(o, 8192, 4096 * 10, 0), 0);       /* blocks 10-11 ZERO */
  ck_assert_int_eq(tb_overlay_trim(o, 100, 4096 * 20, 0), 0);        /* partial: no change */
  ck_assert_int_eq(tb_overlay_block(o, 2), TB_DATA);
  ck_assert_int_eq(tb_overlay_block(o, 5), TB_DATA);
  ck_assert_int_eq(tb_overlay_block(o, 10), TB_ZERO);
  ck_assert_int_eq(tb_overlay_block(o, 11), TB_ZERO);
  ck_assert_int_eq(tb_overlay_block(o, 20), TB_CLEAN);
  /* Zeroing a DATA block turns it ZERO and frees its data. */
  ck_assert_int_eq(tb_overlay_zero(o, 4096, 8192, 0), 0);
  ck_assert_int_eq(tb_overlay_block(o, 2), TB_ZERO);
  struct extent_sum x = {0};
  ck_assert_int_eq(tb_overlay_extents(o, 0, SIZE, sum_extent, &x), 0);
  ck_assert_uint_eq(x.last_end, SIZE);
  ck_assert_uint_eq(x.bytes[TB_DATA], 4096);
  ck_assert_uint_eq(x.bytes[TB_ZERO], 3 * 4096);
  struct tb_overlay_info info;
  tb_overlay_info(o, &info);
  ck_assert_uint_eq(info.dirty_blocks, 4);
  ck_assert_uint_eq(info.data_blocks, 1);
  /* The overlay alone: CLEAN reads as zeros. */
  char r[4096];
  ck_assert_int_eq(tb_overlay_pread_dirty(o, r, 4096, 0), 0);
  for (int i = 0; i < 4096; i++)
    ck_assert_int_eq(r[i], 0);
  tb_overlay_close(o);
}
END_TEST

START_TEST(test_unflushed_map_not_on_disk)
{
  /* A write that is never flushed must not appear in the on-disk map: the
   * process "crashes" (we copy the file before close) and the copy reads the
   * master for that block. */
  struct tb_overlay *o = create_open(4096);
  char b[4096];
  memset(b, 0x5a, sizeof b);
  ck_assert_int_eq(tb_overlay_pwrite(o, b, 4096, 0, 0), 0);
  ck_assert_int_eq(tb_overlay_flush(o), 0);
  ck_assert_int_eq(tb_overlay_pwrite(o, b, 4096, 65536, 0), 0); /* not flushed */
  char cmd[700], copy[320];
  snprintf(copy, sizeof copy, "%s/crashed", dir);
  snprintf(cmd, sizeof cmd, "cp --sparse=always %s %s", ovl_path, copy);
  ck_assert_int_eq(system(cmd), 0);
  tb_overlay_close(o);
  struct tb_overlay *c = tb_overlay_open(copy, base_path, &base, TB_OVL_RDONLY);
  ck_assert_msg(c != NULL, "%s", tb_errmsg());
  ck_assert_int_eq(tb_overlay_block(c, 0), TB_DATA);
  ck_assert_int_eq(tb_overlay_block(c, 16), TB_CLEAN);
  char r[4096];
  ck_assert_int_eq(tb_overlay_pread(c, r, 4096, 65536), 0);
  ck_assert_int_eq(memcmp(r, master + 65536, 4096), 0);
  tb_overlay_close(c);
}
END_TEST

START_TEST(test_header_checks)
{
  struct tb_overlay *o = create_open(4096);
  tb_overlay_close(o);
  /* Another base version: refused, naming both. */
  struct tb_base_id other = base;
  other.version = 2;
  ck_assert_ptr_null(tb_overlay_open(ovl_path, base_path, &other, 0));
  ck_assert_ptr_nonnull(strstr(tb_errmsg(), "demo@1"));
  ck_assert_ptr_nonnull(strstr(tb_errmsg(), "demo@2"));
  /* Same version, different manifest. */
  other = base;
  other.manifest_sha256[0] ^= 1;
  ck_assert_ptr_null(tb_overlay_open(ovl_path, base_path, &other, 0));
  ck_assert_ptr_nonnull(strstr(tb_errmsg(), "different manifest"));
  /* Corrupt header: one flipped byte. */
  int fd = open(ovl_path, O_RDWR);
  unsigned char byte;
  ck_assert_int_eq(pread(fd, &byte, 1, 20), 1);
  byte ^= 0xff;
  ck_assert_int_eq(pwrite(fd, &byte, 1, 20), 1);
  ck_assert_ptr_null(tb_overlay_open(ovl_path, base_path, &base, 0));
  ck_assert_ptr_nonnull(strstr(tb_errmsg(), "corrupt"));
  byte ^= 0xff;
  ck_assert_int_eq(pwrite(fd, &byte, 1, 20), 1);
  ck_assert_ptr_nonnull(o = tb_overlay_open(ovl_path, base_path, &base, 0));
  tb_overlay_close(o);
  /* Truncated: inside the header, then inside the map. */
  ck_assert_int_eq(ftruncate(fd, 1000), 0);
  ck_assert_ptr_null(tb_overlay_open(ovl_path, base_path, &base, 0));
  ck_assert_ptr_nonnull(strstr(tb_errmsg(), "truncated"));
  close(fd);
  /* Not an overlay at all. */
  ck_assert_ptr_null(tb_overlay_open(base_path, base_path, &base, 0));
  ck_assert_ptr_nonnull(strstr(tb_errmsg(), "not a tabula overlay"));
  /* Bad block sizes. */
  unlink(ovl_path);
  ck_assert_int_eq(tb_overlay_create(ovl_path, SIZE, 3000, &base, 1), -1);
  ck_assert_int_eq(tb_overlay_create(ovl_path, SIZE, 256, &base, 1), -1);
  ck_assert_int_eq(tb_overlay_create(ovl_path, SIZE, 2 * 1024 * 1024, &base, 1), -1);
}
END_TEST

START_TEST(test_quota)
{
  struct tb_overlay *o = create_open(4096);
  tb_overlay_set_quota(o, 3 * 4096);
  char b[4096 * 4];
  memset(b, 9, sizeof b);
  ck_assert_int_eq(tb_overlay_pwrite(o, b, 3 * 4096, 0, 0), 0);
  ck_assert_int_eq(tb_overlay_pwrite(o, b, 4096, 3 * 4096, 0), -1);
  ck_assert_int_eq(errno, ENOSPC);
  /* Rewrites of DATA blocks still work, zeros always work. */
  ck_assert_int_eq(tb_overlay_pwrite(o, b, 2 * 4096, 4096, 0), 0);
  ck_assert_int_eq(tb_overlay_pwrite(o, b, 100, 50, 0), 0);
  ck_assert_int_eq(tb_overlay_zero(o, 4096, 0, 0), 0);
  ck_assert_int_eq(tb_overlay_pwrite(o, b, 4096, 3 * 4096, 0), 0); /* freed one block */
  ck_assert_int_eq(tb_overlay_block(o, 4), TB_CLEAN);
  tb_overlay_close(o);
}
END_TEST

START_TEST(test_copy_blocks)
{
  struct tb_overlay *src = create_open(4096);
  char b[4096];
  memset(b, 3, sizeof b);
  ck_assert_int_eq(tb_overlay_pwrite(src, b, 4096, 4096 * 7, 0), 0);
  ck_assert_int_eq(tb_overlay_zero(src, 4096, 4096 * 8, 0), 0);
  tb_overlay_close(src);
  char other[320];
  snprintf(other, sizeof other, "%s/other", dir);
  ck_assert_int_eq(rename(ovl_path, other), 0);
  src = tb_overlay_open(other, base_path, &base, TB_OVL_RDONLY);
  struct tb_overlay *dst = create_open(4096);
  ck_assert_int_eq(tb_overlay_copy_blocks(dst, src, 6, 4), 0);
  ck_assert_int_eq(tb_overlay_block(dst, 7), TB_DATA);
  ck_assert_int_eq(tb_overlay_block(dst, 8), TB_ZERO);
  ck_assert_int_eq(tb_overlay_block(dst, 6), TB_CLEAN);
  char r[4096];
  ck_assert_int_eq(tb_overlay_pread(dst, r, 4096, 4096 * 7), 0);
  ck_assert_int_eq(memcmp(r, b, 4096), 0);
  tb_overlay_close(dst);
  tb_overlay_close(src);
}
END_TEST

/* Threads writing disjoint stamped regions while others flush; every region
 * then holds its last stamp. */
struct worker {
  struct tb_overlay *o;
  int id;
};

static void *writer(void *arg)
{
  struct worker *w = arg;
  unsigned char buf[6000];
  unsigned seed = (unsigned)w->id;
  for (int i = 0; i < 400; i++) {
    /* Each thread owns every 8th 64 KiB stripe; offsets are unaligned. */
    uint64_t stripe = (uint64_t)(rand_r(&seed) % 8) * 8 + (uint64_t)w->id;
    uint64_t off = stripe * 65536 + (uint64_t)(rand_r(&seed) % 50000);
    memset(buf, (unsigned char)(w->id * 16 + i % 16), sizeof buf);
    ck_assert_int_eq(tb_overlay_pwrite(w->o, buf, sizeof buf, off, 0), 0);
    if (i % 37 == 0)
      ck_assert_int_eq(tb_overlay_flush(w->o), 0);
  }
  return NULL;
}

START_TEST(test_threads)
{
  struct tb_overlay *o = create_open(4096);
  pthread_t t[8];
  struct worker w[8];
  for (int i = 0; i < 8; i++) {
    w[i] = (struct worker){o, i};
    pthread_create(&t[i], NULL, writer, &w[i]);
  }
  for (int i = 0; i < 8; i++)
    pthread_join(t[i], NULL);
  /* Replay each thread's writes serially into a model. */
  unsigned char *model = malloc(SIZE);
  memcpy(model, master, SIZE);
  for (int id = 0; id < 8; id++) {
    unsigned seed = (unsigned)id;
    for (int i = 0; i < 400; i++) {
      uint64_t stripe = (uint64_t)(rand_r(&seed) % 8) * 8 + (uint64_t)id;
      uint64_t off = stripe * 65536 + (uint64_t)(rand_r(&seed) % 50000);
      memset(model + off, id * 16 + i % 16, 6000);
    }
  }
  check_model(o, model);
  tb_overlay_close(o);
  free(model);
}
END_TEST

/* A copy cut short (68 MB to 21 MB in the field): flushed DATA past the end of
 * the file must be refused, not read as zeros. */
START_TEST(test_truncated_data_refused)
{
  struct tb_overlay *o = create_open(4096);
  unsigned char *buf = malloc(65536);
  memset(buf, 0xab, 65536);
  ck_assert_int_eq(tb_overlay_pwrite(o, buf, 65536, 2 * 1024 * 1024, 0), 0);
  ck_assert_int_eq(tb_overlay_close(o), 0);
  free(buf);
  /* data_offset is 1 MiB here: the file now ends 1 MiB into the data region. */
  ck_assert_int_eq(truncate(ovl_path, 2 * 1024 * 1024), 0);
  ck_assert_ptr_null(tb_overlay_open(ovl_path, base_path, &base, 0));
  ck_assert_ptr_nonnull(strstr(tb_errmsg(), "truncated"));
  /* Cut after the last DATA block: nothing is lost, it opens. */
  unlink(ovl_path);
  o = create_open(4096);
  buf = calloc(1, 4096);
  memset(buf, 1, 4096);
  ck_assert_int_eq(tb_overlay_pwrite(o, buf, 4096, 0, 0), 0);
  ck_assert_int_eq(tb_overlay_close(o), 0);
  ck_assert_int_eq(truncate(ovl_path, 1024 * 1024 + 4096), 0);
  ck_assert_ptr_nonnull(o = tb_overlay_open(ovl_path, base_path, &base, 0));
  unsigned char got[4096];
  ck_assert_int_eq(tb_overlay_pread(o, got, 4096, 0), 0);
  ck_assert_int_eq(memcmp(got, buf, 4096), 0);
  tb_overlay_close(o);
  free(buf);
}
END_TEST

/* A flipped map entry (CLEAN -> DATA) is caught by the page checksum. */
START_TEST(test_map_checksum)
{
  struct tb_overlay *o = create_open(4096);
  unsigned char buf[4096];
  memset(buf, 0x5a, sizeof buf);
  ck_assert_int_eq(tb_overlay_pwrite(o, buf, 4096, 5 * 4096, 0), 0);
  ck_assert_int_eq(tb_overlay_close(o), 0);
  struct tb_overlay_info info;
  ck_assert_int_eq(tb_overlay_read_info(ovl_path, &info), 0);
  ck_assert_uint_eq(info.format_version, 2);
  int fd = open(ovl_path, O_RDWR);
  unsigned char byte;
  ck_assert_int_eq(pread(fd, &byte, 1, 4096 + 100 / 4), 1); /* block 100 */
  byte |= 1;
  ck_assert_int_eq(pwrite(fd, &byte, 1, 4096 + 100 / 4), 1);
  ck_assert_ptr_null(tb_overlay_open(ovl_path, base_path, &base, TB_OVL_RDONLY));
  ck_assert_ptr_nonnull(strstr(tb_errmsg(), "checksum"));
  byte &= (unsigned char)~1;
  ck_assert_int_eq(pwrite(fd, &byte, 1, 4096 + 100 / 4), 1);
  close(fd);
  ck_assert_ptr_nonnull(o = tb_overlay_open(ovl_path, base_path, &base, 0));
  unsigned char got[4096];
  ck_assert_int_eq(tb_overlay_pread(o, got, 4096, 5 * 4096), 0);
  ck_assert_int_eq(memcmp(got, buf, 4096), 0);
  tb_overlay_close(o);
}
END_TEST

static void put_le(unsigned char *p, uint64_t v, int n)
{
  for (int i = 0; i < n; i++)
    p[i] = (unsigned char)(v >> (8 * i));
}

/* Format 1 (no map checksums, 16384 blocks a map page) is still read. */
START_TEST(test_format1_read)
{
  unsigned char h[4096] = {0};
  memcpy(h, "TABULAOV", 8);
  put_le(h + 8, 1, 4);        /* format */
  put_le(h + 12, 4096, 4);    /* block size */
  put_le(h + 16, SIZE, 8);    /* size */
  put_le(h + 24, 3, 8);       /* session */
  put_le(h + 40, 4096, 8);    /* map offset */
  put_le(h + 48, 1 << 20, 8); /* data offset */
  put_le(h + 56, base.version, 4);
  memcpy(h + 64, base.image, strlen(base.image));
  memcpy(h + 136, base.manifest_sha256, 32);
  SHA256(h, 4064, h + 4064);
  int fd = open(ovl_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(pwrite(fd, h, 4096, 0), 4096);
  unsigned char map = 0x01 | 0x08; /* block 0 DATA, block 1 ZERO */
  ck_assert_int_eq(pwrite(fd, &map, 1, 4096), 1);
  unsigned char data[4096];
  memset(data, 0x77, sizeof data);
  ck_assert_int_eq(pwrite(fd, data, 4096, 1 << 20), 4096);
  ck_assert_int_eq(ftruncate(fd, (1 << 20) + SIZE), 0);
  close(fd);
  struct tb_overlay *o = tb_overlay_open(ovl_path, base_path, &base, 0);
  ck_assert_msg(o != NULL, "%s", tb_errmsg());
  unsigned char got[3 * 4096], zero[4096] = {0};
  ck_assert_int_eq(tb_overlay_pread(o, got, sizeof got, 0), 0);
  ck_assert_int_eq(memcmp(got, data, 4096), 0);
  ck_assert_int_eq(memcmp(got + 4096, zero, 4096), 0);
  ck_assert_int_eq(memcmp(got + 8192, master + 8192, 4096), 0);
  /* Written and reopened: it stays format 1 and readable. */
  ck_assert_int_eq(tb_overlay_pwrite(o, data, 4096, 1000 * 4096, 0), 0);
  ck_assert_int_eq(tb_overlay_close(o), 0);
  ck_assert_ptr_nonnull(o = tb_overlay_open(ovl_path, base_path, &base, 0));
  struct tb_overlay_info info;
  tb_overlay_info(o, &info);
  ck_assert_uint_eq(info.format_version, 1);
  ck_assert_uint_eq(info.dirty_blocks, 3);
  tb_overlay_close(o);
}
END_TEST

static Suite *overlay_suite(void)
{
  Suite *s = suite_create("overlay");
  TCase *tc = tcase_create("core");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_fresh_reads_master);
  tcase_add_loop_test(tc, test_random_ops_model, 0, 3);
  tcase_add_test(tc, test_states_and_extents);
  tcase_add_test(tc, test_unflushed_map_not_on_disk);
  tcase_add_test(tc, test_header_checks);
  tcase_add_test(tc, test_quota);
  tcase_add_test(tc, test_copy_blocks);
  tcase_add_test(tc, test_threads);
  tcase_add_test(tc, test_truncated_data_refused);
  tcase_add_test(tc, test_map_checksum);
  tcase_add_test(tc, test_format1_read);
  suite_add_tcase(s, tc);
  return s;
}

int main(void)
{
  return tb_check_run(overlay_suite());
}
