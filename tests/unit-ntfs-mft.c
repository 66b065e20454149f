/* SPDX-License-Identifier: BSD-3-Clause */
/* Unit tests of lib/ntfs-mft.c, the MFT record reader of NTFS listings,
 * over hand-built records: what a well-formed record gives (sizes, times
 * as libtsk converts them, streams in order, the first reparse point and
 * index allocation), where $MFT's runs put a record, torn and malformed
 * update sequences, and hostile lengths: every attribute length, name and
 * content offset and run header mutated through its whole range must be
 * parsed or refused without a read outside the record (the record is
 * allocated to its exact size, so ASan sees any).  Whether the records of a
 * real volume agree with libtsk is tests/fuse-fidelity.sh's (TB_NTFS_MFT=check). */
#include <config.h>

#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "ntfs-mft.h"
#include "util.h"
#include "check-run.h"

#define REC 1024
#define USA 0x30
#define FIRST_ATTR 0x38

static const struct tb_ntfs_run runs[] = {{100, 4}, {UINT64_MAX, 2}, {300, 8}};
static const struct tb_ntfs_geom geom = {
    .rec_size = REC,
    .cluster_size = 4096,
    .clusters = 10000,
    .n_records = 64,
    .runs = runs,
    .n_runs = 3,
};

/* A record under construction: its bytes and where the next attribute goes. */
struct rb {
  unsigned char b[REC];
  size_t p;
};

static void rb_init(struct rb *r, uint16_t flags)
{
  memset(r, 0, sizeof *r);
  memcpy(r->b, "FILE", 4);
  r->b[4] = USA; /* update sequence offset */
  r->b[6] = 3;   /* entries: the number, then one per sector */
  r->b[16] = 7;  /* sequence number */
  r->b[18] = 2;  /* links */
  r->b[20] = FIRST_ATTR;
  r->b[22] = (unsigned char)flags;
  r->p = FIRST_ATTR;
}

/* Append an attribute header of LEN bytes (a multiple of 8); returns it. */
static unsigned char *rb_attr(struct rb *r, uint32_t type, uint32_t len, int nonres, uint16_t id)
{
  unsigned char *a = r->b + r->p;
  tb_put_le32(a, type);
  tb_put_le32(a + 4, len);
  a[8] = (unsigned char)nonres;
  a[14] = (unsigned char)id;
  r->p += len;
  return a;
}

static unsigned char *rb_res(struct rb *r, uint32_t type, uint16_t id, const void *data, uint32_t n)
{
  uint32_t len = (24 + n + 7) & ~7u;
  unsigned char *a = rb_attr(r, type, len, 0, id);
  tb_put_le32(a + 16, n);
  a[20] = 24;
  memcpy(a + 24, data, n);
  return a;
}

/* A named resident attribute: the name right after the header. */
static unsigned char *rb_named(struct rb *r, uint32_t type, uint16_t id, const char *name,
                               const void *data, uint32_t n)
{
  size_t units = strlen(name), soff = (24 + 2 * units + 7) & ~(size_t)7;
  uint32_t len = (uint32_t)((soff + n + 7) & ~(size_t)7);
  unsigned char *a = rb_attr(r, type, len, 0, id);
  a[9] = (unsigned char)units;
  a[10] = 24;
  for (size_t i = 0; i < units; i++)
    a[24 + 2 * i] = (unsigned char)name[i];
  tb_put_le32(a + 16, n);
  a[20] = (unsigned char)soff;
  memcpy(a + soff, data, n);
  return a;
}

static unsigned char *rb_nonres(struct rb *r, uint32_t type, uint16_t id, uint64_t size,
                                const unsigned char *rl, size_t rl_len)
{
  uint32_t len = (uint32_t)((64 + rl_len + 7) & ~(size_t)7);
  unsigned char *a = rb_attr(r, type, len, 1, id);
  a[32] = 64; /* run list offset */
  tb_put_le64(a + 40, (size + 4095) & ~4095ull);
  tb_put_le64(a + 48, size);
  tb_put_le64(a + 56, size);
  memcpy(a + 64, rl, rl_len);
  return a;
}

static void rb_si(struct rb *r, uint64_t t, uint32_t dos)
{
  unsigned char si[72] = {0};
  for (int i = 0; i < 4; i++)
    tb_put_le64(si + 8 * i, t + (uint64_t)i * 10000000);
  tb_put_le32(si + 32, dos);
  rb_res(r, 0x10, 0, si, sizeof si);
}

/* The end marker, the bytes in use, and the update sequence applied as a
 * driver writes it: each sector's last two bytes saved, replaced by N. */
static void rb_end(struct rb *r, uint16_t n)
{
  tb_put_le32(r->b + r->p, 0xFFFFFFFFu);
  r->p += 8;
  tb_put_le32(r->b + 24, (uint32_t)r->p);
  tb_put_le32(r->b + 28, REC);
  r->b[USA] = (unsigned char)n;
  r->b[USA + 1] = (unsigned char)(n >> 8);
  for (int s = 1; s <= 2; s++) {
    memcpy(r->b + USA + 2 * s, r->b + s * 512 - 2, 2);
    memcpy(r->b + s * 512 - 2, r->b + USA, 2);
  }
}

/* A heap copy of exactly REC bytes, fixed up, so ASan sees a read past it. */
static unsigned char *rb_fixed(const struct rb *r)
{
  unsigned char *b = malloc(REC);
  ck_assert_ptr_nonnull(b);
  memcpy(b, r->b, REC);
  ck_assert(tb_ntfs_fixup(b, REC));
  return b;
}

static struct tb_ntfs_rec out;

/* 2020-01-02 03:04:05.1234567 UTC as an NT time */
#define T2020 (132224078451234567ull)

static void rb_file(struct rb *r)
{
  rb_init(r, 1);
  rb_si(r, T2020, 0x20);
  unsigned char fn[66 + 10] = {0};
  fn[64] = 5;
  fn[65] = 1;
  memcpy(fn + 66, "h\0e\0l\0l\0o\0", 10);
  rb_res(r, 0x30, 2, fn, sizeof fn);
}

START_TEST(test_resident_file)
{
  struct rb r;
  rb_file(&r);
  rb_res(&r, 0x80, 1, "hello\n", 6);
  rb_named(&r, 0x80, 4, "stream1", "stream data", 11);
  rb_end(&r, 0x1234);
  ck_assert_uint_eq(tb_get_le16(r.b + 510), 0x1234); /* torn until fixed */
  unsigned char *b = rb_fixed(&r);
  ck_assert_uint_eq(tb_get_le16(b + 510), 0);
  ck_assert_int_eq(tb_ntfs_parse(&geom, 20, b, &out), 0);
  ck_assert(out.in_use && !out.dir);
  ck_assert_uint_eq(out.seq, 7);
  ck_assert_uint_eq(out.nlink, 2);
  ck_assert(out.has_si);
  uint32_t ns;
  ck_assert_int_eq(tb_ntfs_time(out.crtime, &ns), 1577934245);
  ck_assert_uint_eq(ns, 123456700);
  ck_assert_int_eq(tb_ntfs_time(out.mtime, NULL), 1577934246);
  ck_assert_int_eq(tb_ntfs_time(out.atime, NULL), 1577934248);
  ck_assert_uint_eq(out.si_len, 72);
  ck_assert_uint_eq(out.dos, 0x20);
  ck_assert_uint_eq(out.size, 6);
  ck_assert_uint_eq(out.n_streams, 2);
  ck_assert_str_eq(out.streams[0].name, "");
  ck_assert_uint_eq(out.streams[0].size, 6);
  ck_assert_mem_eq(out.streams[0].data, "hello\n", 6);
  ck_assert_str_eq(out.streams[1].name, "stream1");
  ck_assert_uint_eq(out.streams[1].size, 11);
  ck_assert_mem_eq(out.streams[1].data, "stream data", 11);
  ck_assert(!out.has_reparse && !out.has_idxalloc);
  free(b);
}
END_TEST

START_TEST(test_nonresident)
{
  struct rb r;
  rb_file(&r);
  /* a sparse file: 0x0100 clusters of hole, then 1 cluster at +50 */
  static const unsigned char rl[] = {0x02, 0x00, 0x01, 0x11, 0x01, 0x32, 0x00};
  unsigned char *a = rb_nonres(&r, 0x80, 1, 257 * 4096, rl, sizeof rl);
  a[12] = 0x00;
  a[13] = 0x80; /* sparse */
  rb_end(&r, 9);
  unsigned char *b = rb_fixed(&r);
  ck_assert_int_eq(tb_ntfs_parse(&geom, 20, b, &out), 0);
  ck_assert_uint_eq(out.size, 257 * 4096);
  ck_assert_uint_eq(out.n_streams, 1);
  ck_assert_ptr_null(out.streams[0].data);
  ck_assert_uint_eq(out.streams[0].flags, 0x8000);
  free(b);

  /* a run past the volume's end: libtsk fails the record, so do we */
  static const unsigned char far[] = {0x21, 0x01, 0x10, 0x27, 0x00}; /* 1 cluster at 10000 */
  rb_file(&r);
  rb_nonres(&r, 0x80, 1, 4096, far, sizeof far);
  rb_end(&r, 9);
  b = rb_fixed(&r);
  ck_assert_int_eq(tb_ntfs_parse(&geom, 20, b, &out), -1);
  free(b);

  /* a run list not ended inside its attribute */
  static const unsigned char open_rl[] = {0x11, 0x01, 0x05, 0x11, 0x01, 0x05, 0x11, 0x01};
  rb_file(&r);
  rb_nonres(&r, 0x80, 1, 4096, open_rl, sizeof open_rl);
  rb_end(&r, 9);
  b = rb_fixed(&r);
  ck_assert_int_eq(tb_ntfs_parse(&geom, 20, b, &out), -1);
  free(b);

  /* libtsk computes a size of 0 from the runs: left to it */
  static const unsigned char one[] = {0x11, 0x01, 0x05, 0x00};
  rb_file(&r);
  rb_nonres(&r, 0x80, 1, 0, one, sizeof one);
  rb_end(&r, 9);
  b = rb_fixed(&r);
  ck_assert_int_eq(tb_ntfs_parse(&geom, 20, b, &out), -1);
  free(b);
}
END_TEST

START_TEST(test_directory_and_reparse)
{
  struct rb r;
  rb_init(&r, 3);
  rb_si(&r, T2020, 0x400);
  static const unsigned char rp[24] = {0x03, 0x00, 0x00, 0xA0, 16};
  rb_res(&r, 0xC0, 3, rp, sizeof rp);
  static const unsigned char rl[] = {0x11, 0x01, 0x40, 0x00};
  unsigned char *ia = rb_nonres(&r, 0xA0, 5, 4096, rl, sizeof rl);
  ia[9] = 0; /* unnamed is enough here */
  rb_end(&r, 2);
  unsigned char *b = rb_fixed(&r);
  ck_assert_int_eq(tb_ntfs_parse(&geom, 30, b, &out), 0);
  ck_assert(out.dir && out.in_use);
  ck_assert(out.has_reparse);
  ck_assert_uint_eq(out.reparse_len, 24);
  ck_assert_uint_eq(tb_get_le32(out.reparse), 0xA0000003u);
  ck_assert(out.has_idxalloc);
  ck_assert_uint_eq(out.idxalloc_size, 4096);
  ck_assert_uint_eq(out.size, 0);
  free(b);
}
END_TEST

START_TEST(test_refused_layouts)
{
  struct rb r;
  unsigned char *b;
  /* an attribute list: libtsk reads other records */
  rb_file(&r);
  rb_res(&r, 0x20, 5, "\0\0\0\0\0\0\0\0", 8);
  rb_end(&r, 1);
  b = rb_fixed(&r);
  ck_assert_int_eq(tb_ntfs_parse(&geom, 20, b, &out), -1);
  free(b);
  /* an extension record */
  rb_file(&r);
  r.b[32] = 17;
  rb_end(&r, 1);
  b = rb_fixed(&r);
  ck_assert_int_eq(tb_ntfs_parse(&geom, 20, b, &out), -1);
  free(b);
  /* two attributes of one type and id */
  rb_file(&r);
  rb_res(&r, 0x80, 1, "a", 1);
  rb_res(&r, 0x80, 1, "b", 1);
  rb_end(&r, 1);
  b = rb_fixed(&r);
  ck_assert_int_eq(tb_ntfs_parse(&geom, 20, b, &out), -1);
  free(b);
  /* a non-resident $STANDARD_INFORMATION */
  rb_init(&r, 1);
  static const unsigned char rl[] = {0x00};
  rb_nonres(&r, 0x10, 0, 0, rl, 1);
  rb_end(&r, 1);
  b = rb_fixed(&r);
  ck_assert_int_eq(tb_ntfs_parse(&geom, 20, b, &out), -1);
  free(b);
  /* no FILE magic */
  rb_file(&r);
  rb_end(&r, 1);
  memcpy(r.b, "BAAD", 4);
  b = rb_fixed(&r);
  ck_assert_int_eq(tb_ntfs_parse(&geom, 20, b, &out), -1);
  free(b);
  /* no end marker: the last attribute reaches the record's end */
  rb_file(&r);
  size_t at = r.p;
  rb_end(&r, 1);
  tb_put_le32(r.b + at, 0x40);
  tb_put_le32(r.b + at + 4, (uint32_t)(REC - at));
  r.b[at + 20] = 24;
  b = rb_fixed(&r);
  ck_assert_int_eq(tb_ntfs_parse(&geom, 20, b, &out), -1);
  free(b);
}
END_TEST

START_TEST(test_fixup)
{
  struct rb r;
  rb_file(&r);
  rb_end(&r, 0x55AA);
  unsigned char *b = malloc(REC);
  /* a torn write: the second sector is newer than the first */
  memcpy(b, r.b, REC);
  b[1022] = 0x56;
  ck_assert(!tb_ntfs_fixup(b, REC));
  memcpy(b, r.b, REC);
  b[511] = 0;
  ck_assert(!tb_ntfs_fixup(b, REC));
  /* an array that does not cover every sector, or lies past the first */
  memcpy(b, r.b, REC);
  b[6] = 2;
  ck_assert(!tb_ntfs_fixup(b, REC));
  memcpy(b, r.b, REC);
  b[6] = 0;
  ck_assert(!tb_ntfs_fixup(b, REC));
  memcpy(b, r.b, REC);
  b[6] = 0xFF;
  b[7] = 0xFF;
  ck_assert(!tb_ntfs_fixup(b, REC));
  for (unsigned off = 506; off < 65536; off += off < 2048 ? 1 : 4093) {
    memcpy(b, r.b, REC);
    tb_put_le32(b + 4, off | 3u << 16);
    ck_assert(!tb_ntfs_fixup(b, REC));
  }
  ck_assert(!tb_ntfs_fixup(b, 1000)); /* not whole sectors */
  memcpy(b, r.b, REC);
  ck_assert(tb_ntfs_fixup(b, REC));
  free(b);
}
END_TEST

START_TEST(test_rec_offset)
{
  uint64_t off;
  ck_assert(tb_ntfs_rec_offset(&geom, 0, &off, NULL));
  ck_assert_uint_eq(off, 100 * 4096);
  ck_assert(tb_ntfs_rec_offset(&geom, 15, &off, NULL));
  ck_assert_uint_eq(off, 100 * 4096 + 15 * 1024);
  ck_assert(!tb_ntfs_rec_offset(&geom, 16, &off, NULL)); /* in the hole */
  ck_assert(!tb_ntfs_rec_offset(&geom, 23, &off, NULL));
  ck_assert(tb_ntfs_rec_offset(&geom, 24, &off, NULL));
  ck_assert_uint_eq(off, 300 * 4096);
  uint64_t end;
  ck_assert(tb_ntfs_rec_offset(&geom, 55, &off, &end));
  ck_assert_uint_eq(off, 300 * 4096 + 31 * 1024);
  ck_assert_uint_eq(end, 308 * 4096);
  ck_assert(!tb_ntfs_rec_offset(&geom, 56, &off, NULL)); /* past the runs */
  ck_assert(!tb_ntfs_rec_offset(&geom, 64, &off, NULL)); /* past n_records */
  ck_assert(!tb_ntfs_rec_offset(&geom, UINT64_MAX, &off, NULL));
  /* 512-byte clusters and a run of 3: record 1 lies across two runs */
  static const struct tb_ntfs_run odd[] = {{10, 3}, {20, 5}};
  struct tb_ntfs_geom g = {.rec_size = 1024,
                           .cluster_size = 512,
                           .clusters = 100,
                           .n_records = 8,
                           .runs = odd,
                           .n_runs = 2};
  ck_assert(tb_ntfs_rec_offset(&g, 0, &off, NULL));
  ck_assert(!tb_ntfs_rec_offset(&g, 1, &off, NULL));
  /* a record at byte 0 is libtsk's "not found" */
  static const struct tb_ntfs_run zero[] = {{0, 4}};
  g.runs = zero;
  g.n_runs = 1;
  ck_assert(!tb_ntfs_rec_offset(&g, 0, &off, NULL));
  ck_assert(tb_ntfs_rec_offset(&g, 1, &off, NULL));
}
END_TEST

START_TEST(test_time_and_names)
{
  uint32_t ns;
  ck_assert_int_eq(tb_ntfs_time(116444736000000000ull, &ns), 0);
  ck_assert_uint_eq(ns, 0);
  /* libtsk's arithmetic: unsigned 64 bits, then the low 32 (1969-12-31
   * 23:59:59 is not -1) */
  ck_assert_int_eq(tb_ntfs_time(116444736000000000ull - 10000000, &ns), 2133437385);
  ck_assert_int_eq(tb_ntfs_time(0, NULL), 3373865674);
  char s[64];
  static const unsigned char ok[] = {'a', 0, 0xE9, 0, 0x3D, 0xD8, 0x00, 0xDE}; /* aé😀 */
  ck_assert_uint_eq(tb_ntfs_name(ok, 4, s), 7);
  ck_assert_str_eq(s, "a\xc3\xa9\xf0\x9f\x98\x80");
  static const unsigned char lone[] = {0x00, 0xDC, 'x', 0, 0x00, 0xD8, 'y', 0};
  tb_ntfs_name(lone, 4, s);
  ck_assert_str_eq(s, "^x^");
  static const unsigned char end[] = {'x', 0, 0x00, 0xD8};
  ck_assert_uint_eq(tb_ntfs_name(end, 2, s), 0);
}
END_TEST

/* Every byte of each attribute's header and of the run list through its
 * whole range: parsed or refused, never a read outside the record. */
START_TEST(test_hostile_lengths)
{
  struct rb r;
  rb_file(&r);
  rb_named(&r, 0x80, 4, "s", "x", 1);
  /* a filler, so that the last attribute (the run list) ends where the
   * record does: a read past either is outside the buffer */
  static const unsigned char rl[] = {0x21, 0x02, 0x10, 0x00, 0x01, 0x21, 0x00, 0x00};
  static unsigned char zeros[REC];
  uint32_t fill = (uint32_t)(REC - 8 - r.p - (64 + sizeof rl));
  rb_named(&r, 0x80, 9, "f", zeros, fill - 32);
  size_t nr_at = r.p;
  rb_nonres(&r, 0x80, 1, 8192, rl, sizeof rl);
  ck_assert_uint_eq(r.p, REC - 8);
  rb_end(&r, 1);
  unsigned char *good = rb_fixed(&r), *b = malloc(REC);
  size_t used = tb_get_le32(good + 24);
  int parsed = 0, refused = 0;
  for (size_t at = 0; at < used; at++) {
    for (unsigned v = 0; v < 256; v++) {
      memcpy(b, good, REC);
      b[at] = (unsigned char)v;
      if (tb_ntfs_parse(&geom, 20, b, &out) == 0) {
        parsed++;
        for (size_t i = 0; i < out.n_streams; i++)
          if (out.streams[i].data)
            ck_assert(out.streams[i].data >= b &&
                      out.streams[i].data + out.streams[i].size <= b + REC);
      } else {
        refused++;
      }
    }
  }
  /* 32-bit lengths and offsets at their extremes */
  for (size_t at = FIRST_ATTR; at + 4 <= used; at += 4) {
    static const uint32_t ext[] = {0x7FFFFFFFu, 0x80000000u, 0xFFFFFFF8u,
                                   0xFFFFFFFFu, REC,         REC - 8};
    for (size_t k = 0; k < sizeof ext / sizeof *ext; k++) {
      memcpy(b, good, REC);
      tb_put_le32(b + at, ext[k]);
      if (tb_ntfs_parse(&geom, 20, b, &out) == 0)
        for (size_t i = 0; i < out.n_streams; i++)
          if (out.streams[i].data)
            ck_assert(out.streams[i].data >= b &&
                      out.streams[i].data + out.streams[i].size <= b + REC);
    }
  }
  /* a run list running to the record's last byte, no end marker after it */
  for (unsigned run = 2; run <= 3; run++) { /* runs of 2 bytes (holes) and 3 */
    memcpy(b, good, REC);
    tb_put_le32(b + nr_at + 4, (uint32_t)(REC - nr_at));
    for (size_t i = nr_at + 64; i < REC; i++)
      b[i] = (i - nr_at - 64) % run ? 0x01 : (unsigned char)((run - 2) << 4 | 1);
    for (unsigned v = 0; v < 256; v++) {
      b[REC - 1] = (unsigned char)v;
      ck_assert_int_eq(tb_ntfs_parse(&geom, 20, b, &out), -1);
    }
  }
  ck_assert_int_gt(parsed, 0);
  ck_assert_int_gt(refused, 0);
  free(b);
  free(good);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("ntfs-mft");
  TCase *tc = tcase_create("records");
  tcase_add_test(tc, test_resident_file);
  tcase_add_test(tc, test_nonresident);
  tcase_add_test(tc, test_directory_and_reparse);
  tcase_add_test(tc, test_refused_layouts);
  tcase_add_test(tc, test_fixup);
  tcase_add_test(tc, test_rec_offset);
  tcase_add_test(tc, test_time_and_names);
  tcase_add_test(tc, test_hostile_lengths);
  tcase_set_timeout(tc, 60);
  suite_add_tcase(s, tc);
  return tb_check_run(s);
}
