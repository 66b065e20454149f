/* SPDX-License-Identifier: BSD-3-Clause */
/* Unit tests of the record-geometry parsers of lib/inspect-geom.c (issue 17
 * §4, §6) on records built by hand in a buffer, byte by byte at the offsets
 * of the kernel's layout (so they also check libtsk's definitions the
 * parsers read them with):
 *
 *   ext          the superblock and the group descriptors: where each
 *                group's inode table lies, 32-byte descriptors and 64bit
 *                ones (the table's high 32 bits), revision 0's 128-byte
 *                inodes, a volume that does not start at byte 0; refused:
 *                no magic, meta_bg, an inode size that is not a power of
 *                two, no inodes per group, a table past the volume, a bad
 *                descriptor size
 *   inode place  tbi_ext_inode_off over that geometry (group, slot)
 *   extents      geom_finish: sorted, disjoint, inside the volume;
 *                tbi_geom_covers: a table that grew keeps the base's records
 *   NTFS         the boot sector's cluster and MFT record sizes, both
 *                encodings of each, and what is refused
 *   NTFS index   lib/inspect-list.c's directory index reader: an index
 *                node's entries (what is listed, what is passed over, what
 *                does not parse), a record's update sequence
 *   ext inodes   lib/inspect-meta.c's raw-inode fields: times with ext4's
 *                epoch bits and nanoseconds only where i_extra_isize covers
 *                them, in-inode extended attributes (prefixes, values that
 *                do not fit, the end of the entries)
 *
 * The disk is tests/fuzz/buf-disk.h's buffer-backed tb_disk (zeros past the
 * buffer, so a volume can be terabytes long), the parsers reached as the
 * fuzzers reach them (tests/fuzz/inspect-all.h).
 */
#include "fuzz/inspect-all.h"
#include "fuzz/buf-disk.h"

#include <check.h>
#include "check-run.h"

static unsigned char img[64 << 10];

static void put16(size_t off, uint16_t v)
{
  img[off] = v & 0xff;
  img[off + 1] = v >> 8;
}

static void put32(size_t off, uint32_t v)
{
  for (int i = 0; i < 4; i++)
    img[off + i] = (v >> (8 * i)) & 0xff;
}

/* An ext superblock at VO + 1024: INODES inodes, IPG a group, 1 KiB << LOGBS
 * blocks, the first data block FDB, revision 1 with ISZ-byte inodes. */
static void ext_sb(size_t vo, uint32_t inodes, uint32_t ipg, uint32_t logbs, uint32_t fdb,
                   uint16_t isz, uint32_t incompat)
{
  memset(img, 0, sizeof img);
  size_t sb = vo + 1024;
  put32(sb + 0, inodes);
  put32(sb + 20, fdb);
  put32(sb + 24, logbs);
  put32(sb + 40, ipg);
  put16(sb + 56, 0xEF53);
  put32(sb + 76, 1);
  put16(sb + 88, isz);
  put32(sb + 96, incompat);
}

static int ext_parse(uint64_t vo, uint64_t vlen, struct geom *g)
{
  struct buf b = {img, sizeof img};
  struct tb_disk *disk = tb_disk_new(vo + vlen, buf_read, NULL, &b, "unit");
  ck_assert_ptr_nonnull(disk);
  struct tb_volume vol = {.offset = vo, .length = vlen};
  memset(g, 0, sizeof *g);
  int r = ext_geometry(disk, &vol, g);
  if (r == 0)
    r = geom_finish(g, &vol);
  tb_disk_unref(disk);
  return r;
}

START_TEST(test_ext_groups)
{
  /* 1 KiB blocks, data from block 1: descriptors in block 2 (byte 2048);
   * 2 groups of 16 inodes of 256 bytes, tables at blocks 10 and 30. */
  size_t vo = 4096;
  ext_sb(vo, 32, 16, 0, 1, 256, 0);
  put32(vo + 2048 + 8, 10);
  put32(vo + 2048 + 32 + 8, 30);
  struct geom g;
  ck_assert_int_eq(ext_parse(vo, 1 << 20, &g), 0);
  ck_assert_int_eq(g.kind, GEOM_EXT);
  ck_assert_uint_eq(g.rec, 256);
  ck_assert_uint_eq(g.first, 1);
  ck_assert_uint_eq(g.n, 2);
  ck_assert_uint_eq(g.v[0].off, vo + 10 * 1024);
  ck_assert_uint_eq(g.v[0].len, 16 * 256);
  ck_assert_uint_eq(g.v[0].foff, 0);
  ck_assert_uint_eq(g.v[1].off, vo + 30 * 1024);
  ck_assert_uint_eq(g.v[1].foff, 16 * 256);
  ck_assert(tbi_geom_covers(&g, &g));
  tbi_geom_free(&g);

  /* Revision 0: 128-byte inodes whatever s_inode_size says. */
  ext_sb(vo, 32, 16, 0, 1, 999, 0);
  put32(vo + 1024 + 76, 0);
  put32(vo + 2048 + 8, 10);
  put32(vo + 2048 + 32 + 8, 30);
  ck_assert_int_eq(ext_parse(vo, 1 << 20, &g), 0);
  ck_assert_uint_eq(g.rec, 128);
  ck_assert_uint_eq(g.v[1].len, 16 * 128);
  tbi_geom_free(&g);
}
END_TEST

START_TEST(test_ext_64bit)
{
  /* 4 KiB blocks, 64bit with 64-byte descriptors in block 1: group 1's
   * table lies past 2^32 blocks (16 TiB into a 32 TiB volume). */
  ext_sb(0, 64, 32, 2, 0, 256, 0x80);
  put16(1024 + 254, 64);
  put32(4096 + 8, 5);
  put32(4096 + 64 + 8, 7);
  put32(4096 + 64 + 0x28, 1);
  struct geom g;
  ck_assert_int_eq(ext_parse(0, 32ull << 40, &g), 0);
  ck_assert_uint_eq(g.n, 2);
  ck_assert_uint_eq(g.v[0].off, 5 * 4096);
  ck_assert_uint_eq(g.v[1].off, ((1ull << 32) + 7) * 4096);
  ck_assert_uint_eq(g.v[1].foff, 32 * 256);
  tbi_geom_free(&g);

  /* Without 64bit the same descriptors are 32 bytes: the high half is not
   * read (and group 1 is the second 32 bytes). */
  put32(1024 + 96, 0);
  put32(4096 + 32 + 8, 9);
  ck_assert_int_eq(ext_parse(0, 32ull << 40, &g), 0);
  ck_assert_uint_eq(g.v[1].off, 9 * 4096);
  tbi_geom_free(&g);

  /* A descriptor size that is not a power of two, or below 32. */
  put32(1024 + 96, 0x80);
  put16(1024 + 254, 48);
  ck_assert_int_eq(ext_parse(0, 32ull << 40, &g), -1);
  tbi_geom_free(&g);
  put16(1024 + 254, 16);
  ck_assert_int_eq(ext_parse(0, 32ull << 40, &g), -1);
  tbi_geom_free(&g);
}
END_TEST

START_TEST(test_ext_refused)
{
  struct geom g;
  static const struct {
    uint32_t inodes, ipg, incompat;
    uint16_t isz, magic;
    uint32_t table; /* group 0's table block */
  } bad[] = {
      {32, 16, 0, 256, 0xEF54, 10},    /* no magic */
      {32, 16, 0x10, 256, 0xEF53, 10}, /* meta_bg */
      {32, 16, 0, 200, 0xEF53, 10},    /* inode size not a power of two */
      {32, 16, 0, 64, 0xEF53, 10},     /* smaller than 128 */
      {32, 0, 0, 256, 0xEF53, 10},     /* no inodes per group */
      {0, 16, 0, 256, 0xEF53, 10},     /* no inodes */
      {32, 16, 0, 256, 0xEF53, 1021},  /* table past the 1 MiB volume */
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    ext_sb(0, bad[i].inodes, bad[i].ipg, 0, 1, bad[i].isz, bad[i].incompat);
    put16(1024 + 56, bad[i].magic);
    put32(2048 + 8, bad[i].table);
    put32(2048 + 32 + 8, 30);
    ck_assert_msg(ext_parse(0, 1 << 20, &g) == -1, "case %zu accepted", i);
    tbi_geom_free(&g);
  }
  /* A table that ends at the volume's end fits. */
  ext_sb(0, 32, 16, 0, 1, 256, 0);
  put32(2048 + 8, 1020);
  put32(2048 + 32 + 8, 30);
  ck_assert_int_eq(ext_parse(0, 1 << 20, &g), 0);
  tbi_geom_free(&g);
  /* A block size past 64 KiB; a volume too small to hold one. */
  ext_sb(0, 32, 16, 7, 1, 256, 0);
  ck_assert_int_eq(ext_parse(0, 1 << 20, &g), -1);
  tbi_geom_free(&g);
  ext_sb(0, 32, 16, 0, 1, 256, 0);
  ck_assert_int_eq(ext_parse(0, 2048, &g), -1);
  tbi_geom_free(&g);
}
END_TEST

START_TEST(test_ext_inode_off)
{
  size_t vo = 8192;
  ext_sb(vo, 32, 16, 0, 1, 256, 0);
  put32(vo + 2048 + 8, 10);
  put32(vo + 2048 + 32 + 8, 30);
  struct buf b = {img, sizeof img};
  struct tb_disk *disk = tb_disk_new(vo + (1 << 20), buf_read, NULL, &b, "unit");
  ck_assert_ptr_nonnull(disk);
  struct tb_inspect ins = {.disk = disk};
  struct vol v = {.pub = {.offset = vo, .length = 1 << 20}};
  uint64_t off;
  uint32_t isz;
  ck_assert(tbi_ext_inode_off(&ins, &v, 1, &off, &isz));
  ck_assert_uint_eq(off, 10 * 1024); /* from the volume's start */
  ck_assert_uint_eq(isz, 256);
  ck_assert(tbi_ext_inode_off(&ins, &v, 16, &off, &isz));
  ck_assert_uint_eq(off, 10 * 1024 + 15 * 256);
  ck_assert(tbi_ext_inode_off(&ins, &v, 18, &off, &isz));
  ck_assert_uint_eq(off, 30 * 1024 + 256);
  ck_assert(!tbi_ext_inode_off(&ins, &v, 0, &off, &isz));
  ck_assert(!tbi_ext_inode_off(&ins, &v, 33, &off, &isz));
  tbi_geom_free(v.ext_geom);
  free(v.ext_geom);
  tb_disk_unref(disk);
}
END_TEST

START_TEST(test_extents)
{
  struct tb_volume vol = {.offset = 1000, .length = 1000};
  struct meta_extent ok[] = {{1500, 100, 100}, {1000, 100, 0}, {1900, 100, 200}};
  struct geom g = {.kind = GEOM_EXT, .rec = 10, .first = 1, .v = ok, .n = 3, .cap = 3};
  ck_assert_int_eq(geom_finish(&g, &vol), 0);
  ck_assert_uint_eq(g.v[0].off, 1000); /* sorted */
  ck_assert_uint_eq(g.v[2].off, 1900);
  struct meta_extent overlap[] = {{1000, 200, 0}, {1100, 100, 200}};
  g.v = overlap, g.n = 2;
  ck_assert_int_eq(geom_finish(&g, &vol), -1);
  struct meta_extent outside[][1] = {{{900, 200, 0}}, {{1950, 100, 0}}, {{1000, 1001, 0}}};
  for (size_t i = 0; i < 3; i++) {
    g.v = outside[i], g.n = 1;
    ck_assert_int_eq(geom_finish(&g, &vol), -1);
  }

  /* The live table grew after the base's: it covers the base's records
   * where the base has them, not once a record moved. */
  struct meta_extent base[] = {{1000, 100, 0}};
  struct meta_extent grown[] = {{1000, 100, 0}, {1500, 100, 100}};
  struct meta_extent moved[] = {{1010, 100, 0}};
  struct geom bg = {.kind = GEOM_NTFS, .rec = 10, .v = base, .n = 1};
  struct geom lg = {.kind = GEOM_NTFS, .rec = 10, .v = grown, .n = 2};
  ck_assert(tbi_geom_covers(&lg, &bg));
  ck_assert(!tbi_geom_covers(&bg, &lg));
  lg.v = moved, lg.n = 1;
  ck_assert(!tbi_geom_covers(&lg, &bg));
  lg.v = base, lg.rec = 20;
  ck_assert(!tbi_geom_covers(&lg, &bg));
}
END_TEST

/* An NTFS boot sector: BPS bytes a sector, SPC sectors a cluster (the byte
 * as written), C clusters an MFT record (the signed byte). */
static const ntfs_sb *ntfs_boot(const char *oem, uint16_t bps, uint8_t spc, int8_t c)
{
  memset(img, 0, 512);
  memcpy(img + 3, oem, 8);
  put16(11, bps);
  img[13] = spc;
  img[0x40] = (unsigned char)c;
  put16(510, 0xAA55);
  return (const ntfs_sb *)img;
}

START_TEST(test_ntfs_boot)
{
  uint64_t cluster = 0;
  ck_assert_uint_eq(ntfs_record_size(ntfs_boot("NTFS    ", 512, 8, -10), &cluster), 1024);
  ck_assert_uint_eq(cluster, 4096);
  ck_assert_uint_eq(ntfs_record_size(ntfs_boot("NTFS    ", 512, 2, 4), &cluster), 4096);
  ck_assert_uint_eq(cluster, 1024);
  /* 0xF4 and up: 2^(256-n) sectors (0xF7: 512 sectors of 512 bytes). */
  ck_assert_uint_eq(ntfs_record_size(ntfs_boot("NTFS    ", 512, 0xF7, -12), &cluster), 4096);
  ck_assert_uint_eq(cluster, 256 << 10);
  ck_assert_uint_eq(ntfs_record_size(ntfs_boot("NTFS    ", 4096, 1, 1), &cluster), 4096);

  static const struct {
    const char *oem;
    uint16_t bps;
    uint8_t spc;
    int8_t c;
  } bad[] = {
      {"EXFAT   ", 512, 8, -10}, {"NTFS   \0", 512, 8, -10},   /* not NTFS */
      {"NTFS    ", 100, 8, -10}, {"NTFS    ", 8192, 1, -10},   /* sector sizes */
      {"NTFS    ", 768, 8, -10},                               /* not a power of two */
      {"NTFS    ", 512, 0, -10}, {"NTFS    ", 512, 0x81, -10}, /* no cluster */
      {"NTFS    ", 512, 8, -7},  {"NTFS    ", 512, 8, -17},    /* 128 B, 128 KiB records */
      {"NTFS    ", 512, 8, 0},   {"NTFS    ", 512, 128, 2},    /* 0 B, 128 KiB */
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    ck_assert_msg(
        ntfs_record_size(ntfs_boot(bad[i].oem, bad[i].bps, bad[i].spc, bad[i].c), &cluster) == 0,
        "case %zu accepted", i);
}
END_TEST

/* An index entry at OFF naming NAME (ASCII), record REF sequence SEQ, in
 * directory PARENT, name space NS, FLAGS in the entry's header.  Returns
 * the next entry's offset. */
static size_t idx_entry(size_t off, uint64_t ref, uint16_t seq, uint64_t parent, unsigned ns,
                        bool dir, const char *name, unsigned flags)
{
  size_t units = strlen(name), klen = 66 + 2 * units, len = (16 + klen + 7) & ~(size_t)7;
  memset(img + off, 0, len);
  put32(off, (uint32_t)ref);
  put16(off + 4, (uint16_t)(ref >> 32));
  put16(off + 6, seq);
  put16(off + 8, (uint16_t)len);
  put16(off + 10, (uint16_t)klen);
  img[off + 12] = (unsigned char)flags;
  size_t fn = off + 16;
  put32(fn, (uint32_t)parent);
  put32(fn + 56, dir ? 0x10000000u : 0);
  img[fn + 64] = (unsigned char)units;
  img[fn + 65] = (unsigned char)ns;
  for (size_t i = 0; i < units; i++)
    put16(fn + 66 + 2 * i, (unsigned char)name[i]);
  return off + len;
}

START_TEST(test_ntfs_index)
{
  TSK_FS_INFO fs = {.first_inum = 0, .last_inum = 1000};
  struct vol v = {.fs = &fs};
  struct tb_inspect ins = {0};
  struct cached_dir d = {.inum = 5};
  struct ntfs_dir_read x = {.ins = &ins, .v = &v, .d = &d, .names_only = true};
  memset(img, 0, 4096);
  size_t e = idx_entry(0, 64, 3, 5, 1, true, "abc", 0); /* listed */
  e = idx_entry(e, 65, 1, 5, 2, false, "ABC~1", 0);     /* a DOS name: passed over */
  e = idx_entry(e, 66, 1, 6, 1, false, "other", 0);     /* another directory's */
  e = idx_entry(e, 10, 1, 5, 1, false, "$Sys", 0);      /* a system record */
  e = idx_entry(e, 2000, 1, 5, 1, false, "far", 0);     /* past the MFT */
  e = idx_entry(e, 67, 7, 5, 0, false, "file.txt", 0);  /* listed */
  size_t end = e + 16;
  put16(e + 8, 16);
  img[e + 12] = 0x02; /* the last entry */
  ck_assert(ntfs_index_entries(&x, img, 0, end));
  ck_assert_uint_eq(x.names.len, 2);
  ck_assert_str_eq(x.names.ptr[0].name, "abc");
  ck_assert_uint_eq(x.names.ptr[0].ref, 64);
  ck_assert_uint_eq(x.names.ptr[0].seq, 3);
  ck_assert_int_eq(x.names.ptr[0].type, TSK_FS_NAME_TYPE_DIR);
  ck_assert_str_eq(x.names.ptr[1].name, "file.txt");
  ck_assert_uint_eq(x.names.ptr[1].ref, 67);
  ck_assert_int_eq(x.names.ptr[1].type, TSK_FS_NAME_TYPE_REG);
  tbi_ntfs_names_free(x.names.ptr, x.names.len);

  /* Entries that do not parse exactly: the node goes to libtsk. */
  struct ntfs_dir_read y = {.ins = &ins, .v = &v, .d = &d, .names_only = true};
  e = idx_entry(0, 64, 3, 5, 1, false, "abc", 0);
  put16(8, (uint16_t)(e - 4)); /* a length that is not a multiple of 8 */
  ck_assert(!ntfs_index_entries(&y, img, 0, e));
  e = idx_entry(0, 64, 3, 5, 1, false, "abc", 0);
  put16(10, 60); /* a key too short for a $FILE_NAME */
  ck_assert(!ntfs_index_entries(&y, img, 0, e));
  e = idx_entry(0, 64, 3, 5, 1, false, "abc", 0);
  img[16 + 64] = 40; /* a name longer than the key */
  ck_assert(!ntfs_index_entries(&y, img, 0, e));
  e = idx_entry(0, 64, 3, 5, 1, false, "abc", 0);
  ck_assert(!ntfs_index_entries(&y, img, 0, e - 8)); /* running past the node */
  ck_assert_uint_eq(y.names.len, 0);
  tbi_ntfs_names_free(y.names.ptr, y.names.len);
}
END_TEST

START_TEST(test_ntfs_fixup)
{
  /* A 1 KiB INDX record, two sectors: the update sequence at 0x28 (count 3:
   * the value, then each sector's original last two bytes). */
  memset(img, 0, 1024);
  memcpy(img, "INDX", 4);
  put16(4, 0x28);
  put16(6, 3);
  put16(0x28, 0x0102);
  put16(0x2A, 0xAAAA);
  put16(0x2C, 0xBBBB);
  put16(510, 0x0102);
  put16(1022, 0x0102);
  ck_assert(ntfs_fixup(img, 1024));
  ck_assert_uint_eq(tb_get_le16(img + 510), 0xAAAA);
  ck_assert_uint_eq(tb_get_le16(img + 1022), 0xBBBB);
  /* Applied twice, the tails no longer hold the value: torn. */
  ck_assert(!ntfs_fixup(img, 1024));
  put16(510, 0x0102);
  put16(1022, 0x0102);
  put16(6, 0); /* no count */
  ck_assert(!ntfs_fixup(img, 1024));
  put16(6, 4); /* more sectors than the record has */
  ck_assert(!ntfs_fixup(img, 1024));
  put16(6, 3);
  put16(4, 1020); /* the sequence past the record */
  ck_assert(!ntfs_fixup(img, 1024));
}
END_TEST

/* An inode (up to 1 KiB) in img with i_extra_isize EXTRA. */
static unsigned char *ext_inode(uint16_t extra)
{
  memset(img, 0, 1024);
  put16(128, extra);
  return img;
}

START_TEST(test_ext_times)
{
  unsigned char *ino = ext_inode(32);
  put32(16, 0x80000000u);            /* i_mtime: -2^31 as a signed 32-bit time */
  put32(136, (123456789u << 2) | 1); /* i_mtime_extra: epoch bit 1, nanoseconds */
  put32(144, 1000);                  /* i_crtime */
  put32(148, (999999999u + 1) << 2); /* i_crtime_extra: nanoseconds out of range */
  uint32_t ns = 7;
  ck_assert_int_eq(ext_time(ino, 256, 16, 136, &ns), (int64_t)1 << 31); /* 2038, not 1901 */
  ck_assert_uint_eq(ns, 123456789);
  ck_assert_int_eq(ext_time(ino, 256, 144, 148, &ns), 1000);
  ck_assert_uint_eq(ns, 0);
  /* Extra fields the inode does not have are not read: the plain time. */
  ns = 7;
  ck_assert_int_eq(ext_time(ino, 128, 16, 136, &ns), -((int64_t)1 << 31));
  ck_assert_uint_eq(ns, 7);
  put16(128, 4); /* i_extra_isize covers only i_checksum_hi */
  ck_assert_int_eq(ext_time(ino, 256, 16, 136, &ns), -((int64_t)1 << 31));
  ck_assert_uint_eq(ns, 7);
}
END_TEST

struct seen_xattrs {
  char names[4][64];
  char values[4][16];
  size_t n;
};

static void seen_xattr(void *ctx, const char *name, const unsigned char *val, size_t len)
{
  struct seen_xattrs *x = ctx;
  ck_assert_uint_lt(x->n, 4);
  snprintf(x->names[x->n], sizeof x->names[0], "%s", name);
  snprintf(x->values[x->n], sizeof x->values[0], "%.*s", (int)len, (const char *)val);
  x->n++;
}

/* An xattr entry at OFF: name index IDX, NAME, the value at VOFF (from the
 * first entry) of VSIZE bytes.  Returns the next entry's offset. */
static size_t ea_entry(size_t off, unsigned idx, const char *name, uint16_t voff, uint32_t vsize)
{
  size_t nlen = strlen(name);
  img[off] = (unsigned char)nlen;
  img[off + 1] = (unsigned char)idx;
  put16(off + 2, voff);
  put32(off + 4, 0);
  put32(off + 8, vsize);
  memcpy(img + off + 16, name, nlen);
  return off + ((16 + nlen + 3) & ~(size_t)3);
}

START_TEST(test_ext_xattrs)
{
  unsigned char *ino = ext_inode(32); /* of 512 bytes */
  size_t first = 128 + 32 + 4;        /* after the extra fields and the magic */
  put32(128 + 32, 0xEA020000u);
  size_t e = ea_entry(first, 1, "test", 200, 3); /* user.test = abc */
  e = ea_entry(e, 6, "selinux", 203, 4);         /* security.selinux = ctx0 */
  e = ea_entry(e, 99, "odd", 200, 3);            /* no such prefix: left out */
  e = ea_entry(e, 1, "big", 204, 200);           /* past the inode: left out */
  memcpy(img + first + 200, "abcctx0", 7);
  ck_assert_uint_lt(e, first + 200);     /* four zero bytes end the entries */
  TSK_FS_INFO fs = {.block_size = 4096}; /* no xattr block (i_file_acl 0) */
  struct vol v = {.fs = &fs};
  struct seen_xattrs x = {0};
  tbi_ext_xattrs(&v, ino, 512, seen_xattr, &x);
  ck_assert_uint_eq(x.n, 2);
  ck_assert_str_eq(x.names[0], "user.test");
  ck_assert_str_eq(x.values[0], "abc");
  ck_assert_str_eq(x.names[1], "security.selinux");
  ck_assert_str_eq(x.values[1], "ctx0");
  /* No magic, or i_extra_isize reaching past the inode: none. */
  put32(128 + 32, 0xEA020001u);
  x.n = 0;
  tbi_ext_xattrs(&v, ino, 512, seen_xattr, &x);
  ck_assert_uint_eq(x.n, 0);
  put32(128 + 32, 0xEA020000u);
  put16(128, 400);
  tbi_ext_xattrs(&v, ino, 512, seen_xattr, &x);
  ck_assert_uint_eq(x.n, 0);
}
END_TEST

/* dir_finish (lib/inspect-list.c): the multikey quicksort gives strcmp's
 * order and keeps the first of duplicate names in directory order, as the
 * stable merge sort it replaced did; on random bytes, names sharing long
 * prefixes, few distinct names and all names equal. */
struct ref_dent {
  const char *name;
  size_t i;
};

static int ref_cmp(const void *a, const void *b)
{
  const struct ref_dent *x = a, *y = b;
  int c = strcmp(x->name, y->name);
  return c ? c : (x->i > y->i) - (x->i < y->i);
}

static void check_sorted(size_t n, unsigned kind, uint64_t *rng)
{
  struct cached_dir *d = calloc(1, sizeof *d);
  struct ref_dent *ref = malloc((n ? n : 1) * sizeof *ref);
  ck_assert(d && ref);
  d->v = calloc(n ? n : 1, sizeof *d->v);
  d->n = n;
  ck_assert(d->v);
  for (size_t i = 0; i < n; i++) {
    char name[64];
    *rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t r = *rng >> 17;
    if (kind == 0) { /* random bytes 1..255, lengths 1..12 */
      size_t len = 1 + r % 12;
      for (size_t k = 0; k < len; k++) {
        *rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
        name[k] = (char)(1 + (*rng >> 33) % 255);
      }
      name[len] = 0;
    } else if (kind == 1) { /* a long shared prefix */
      snprintf(name, sizeof name, "a-shared-prefix-of-forty-bytes-entry-%" PRIu64, r % (n * 2 + 1));
    } else if (kind == 2) { /* few distinct names */
      snprintf(name, sizeof name, "n%" PRIu64, r % 5);
    } else { /* all the same */
      snprintf(name, sizeof name, "same");
    }
    d->v[i].name = strdup(name);
    ck_assert(d->v[i].name);
    d->v[i].st.inum = i;
    ref[i] = (struct ref_dent){d->v[i].name, i};
  }
  qsort(ref, n, sizeof *ref, ref_cmp);
  size_t k = 0; /* the reference's distinct names, each its first */
  for (size_t i = 0; i < n; i++)
    if (k == 0 || strcmp(ref[k - 1].name, ref[i].name) != 0)
      ref[k++] = ref[i];
  char **names = malloc((n ? n : 1) * sizeof *names); /* dir_finish frees duplicates */
  for (size_t i = 0; i < n; i++)
    names[i] = strdup(d->v[i].name);
  for (size_t i = 0; i < k; i++)
    ref[i].name = names[ref[i].i];
  dir_finish(d);
  ck_assert_uint_eq(d->n, k);
  for (size_t i = 0; i < k; i++) {
    ck_assert_str_eq(d->v[i].name, ref[i].name);
    ck_assert_uint_eq(d->v[i].st.inum, ref[i].i);
  }
  for (size_t i = 0; i < n; i++)
    free(names[i]);
  free(names);
  free(ref);
  tbi_free_dir(d);
}

START_TEST(test_dir_sort)
{
  uint64_t rng = 42;
  static const size_t sizes[] = {0, 1, 2, 3, 15, 16, 17, 100, 1000, 20000};
  for (unsigned kind = 0; kind < 4; kind++)
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
      check_sorted(sizes[i], kind, &rng);
}
END_TEST

static Suite *geometry_suite(void)
{
  Suite *s = suite_create("geometry");
  TCase *tc = tcase_create("geometry");
  tcase_add_test(tc, test_ext_groups);
  tcase_add_test(tc, test_ext_64bit);
  tcase_add_test(tc, test_ext_refused);
  tcase_add_test(tc, test_ext_inode_off);
  tcase_add_test(tc, test_extents);
  tcase_add_test(tc, test_ntfs_boot);
  tcase_add_test(tc, test_ntfs_index);
  tcase_add_test(tc, test_ntfs_fixup);
  tcase_add_test(tc, test_ext_times);
  tcase_add_test(tc, test_ext_xattrs);
  tcase_add_test(tc, test_dir_sort);
  suite_add_tcase(s, tc);
  return s;
}

int main(void)
{
  return tb_check_run(geometry_suite());
}
