/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer target: the ext record geometry that lib/inspect-geom.c reads
 * for the indexed diff from guest bytes (the superblock, the group
 * descriptors, where each inode table lies), its extent checks (geom_finish,
 * geom_covers), and lib/inspect-meta.c's parsers of raw inode bytes
 * (in-inode xattr entries, timestamps).  lib/inspect-*.c are included whole
 * (inspect-all.h) so the static parsers are reachable; the disk is the input itself (zeros past its
 * end, up to 1 MiB), read through an ordinary buffer-backed tb_disk.  A geometry that is accepted
 * must lie inside the volume, sorted and disjoint, and every inode's place must be inside one of
 * its extents. */
#include "inspect-all.h"
#include "buf-disk.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void count_xattr(void *ctx, const char *name, const unsigned char *val, size_t len)
{
  size_t *n = ctx;
  *n += strlen(name);
  for (size_t i = 0; i < len; i++) /* every byte the parser hands out is readable */
    *n += val[i];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct buf b = {data, size};
  uint64_t disk_size = size > (1u << 20) ? size : 1u << 20;
  struct tb_disk *disk = tb_disk_new(disk_size, buf_read, NULL, &b, "fuzz");
  if (!disk)
    return 0;
  struct tb_volume vol = {.offset = 0, .length = disk_size};
  struct geom g = {0};
  if (ext_geometry(disk, &vol, &g) == 0 && geom_finish(&g, &vol) == 0) {
    for (size_t i = 0; i < g.n; i++) {
      const struct meta_extent *e = &g.v[i];
      if (e->off + e->len > vol.length || (i && g.v[i - 1].off + g.v[i - 1].len > e->off))
        abort();
    }
    if (!tbi_geom_covers(&g, &g))
      abort();
  }
  tbi_geom_free(&g);
  /* The raw-inode parsers on the first 1 KiB read as an inode. */
  if (size >= 256) {
    uint32_t isz = size >= 1024 ? 1024 : 256;
    uint32_t extra = tb_get_le16(data + 128);
    size_t n = 0;
    if (128 + extra + 4 <= isz) {
      const unsigned char *first = data + 128 + extra + 4;
      size_t len = isz - (128 + extra + 4);
      ext_xattr_entries(first, len, first, len, count_xattr, &n);
    }
    uint32_t ns = 0;
    (void)ext_time(data, isz, 8, 0x8c, &ns);
    if (ns >= 1000000000)
      abort();
  }
  tb_disk_unref(disk);
  return 0;
}
