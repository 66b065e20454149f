/* SPDX-License-Identifier: BSD-3-Clause */
/* lib/inspect-geom.c: where a filesystem keeps its metadata records.
 *
 * Our own parsers of the ext superblock and group descriptors and of the
 * NTFS boot sector and $MFT's record read the geometry of the record table
 * (inodes, MFT entries) as disk extents: which disk bytes hold which
 * record.  The index uses it to find the records a dirty range touches, the
 * metadata fixes (inspect-meta.c) to read a raw inode.  A geometry that does
 * not parse exactly is refused (-1): the caller falls back.
 */
#include <config.h>

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "inspect-internal.h"

#define GEOM_MAX_EXTENTS (1u << 20)

/* The records are read with libtsk's own definitions of them (tsk_ext2fs.h,
 * tsk_ntfs.h: byte arrays, read with tb_get_le*); these are the layouts the
 * parsers rely on, the kernel's. */
#define EXT_SB_OFF 1024                                          /* the superblock's place */
#define EXT_OLD_INODE_SIZE offsetof(ext2fs_inode, i_extra_isize) /* 128: revision 0's */
_Static_assert(sizeof(ext2fs_sb) == 1024, "ext2fs_sb is the 1 KiB superblock");
_Static_assert(offsetof(ext2fs_sb, s_desc_size) == 254, "ext2fs_sb: s_desc_size at 254");
_Static_assert(sizeof(ext2fs_gd) == 32 && sizeof(ext4fs_gd) == 64, "ext group descriptors");
_Static_assert(offsetof(ext4fs_gd, bg_inode_table_hi) == 0x28, "ext4fs_gd: table_hi at 0x28");
_Static_assert(EXT_OLD_INODE_SIZE == 128, "ext2fs_inode: i_extra_isize at 128");
_Static_assert(sizeof(ntfs_sb) == 512 && offsetof(ntfs_sb, mft_rsize_c) == 0x40,
               "ntfs_sb is the boot sector");

void tbi_geom_free(struct geom *g)
{
  free(g->v);
  memset(g, 0, sizeof *g);
}

static int geom_add(struct geom *g, uint64_t off, uint64_t len, uint64_t foff)
{
  if (len == 0)
    return 0;
  if (g->n >= GEOM_MAX_EXTENTS)
    return -1;
  /* G's extents grow as a vector; struct geom keeps v and n, the names its
   * readers (the index, the fuzzers) use. */
  TB_VECTOR(meta_extents, struct meta_extent) grown = {g->v, g->n, g->cap};
  if (tb_vector_push(&grown, ((struct meta_extent){off, len, foff})) == -1)
    return -1;
  g->v = grown.ptr;
  g->n = grown.len;
  g->cap = grown.cap;
  return 0;
}

static int extent_cmp(const void *a, const void *b)
{
  uint64_t x = ((const struct meta_extent *)a)->off, y = ((const struct meta_extent *)b)->off;
  return x < y ? -1 : x > y;
}

/* Sort the extents; all must lie inside the volume and none overlap. */
static int geom_finish(struct geom *g, const struct tb_volume *vol)
{
  if (g->n > 0)
    qsort(g->v, g->n, sizeof *g->v, extent_cmp);
  for (size_t i = 0; i < g->n; i++) {
    const struct meta_extent *e = &g->v[i];
    if (e->off < vol->offset || e->len > vol->length || e->off - vol->offset > vol->length - e->len)
      return -1;
    if (i > 0 && g->v[i - 1].off + g->v[i - 1].len > e->off)
      return -1;
  }
  return 0;
}

/* ext2/3/4: the superblock at byte 1024 of the volume, then the group
 * descriptors in the block after the first data block; inode N lives at
 * inode_table[(N-1) / ipg] + ((N-1) % ipg) * inode_size. */
static int ext_geometry(struct tb_disk *disk, const struct tb_volume *vol, struct geom *g)
{
  ext2fs_sb sb;
  uint64_t vo = vol->offset, vl = vol->length;
  if (vl < 4096 || tb_disk_pread(disk, &sb, sizeof sb, vo + EXT_SB_OFF) < 0 ||
      tb_get_le16(sb.s_magic) != EXT2FS_FS_MAGIC)
    return -1;
  uint32_t inodes = tb_get_le32(sb.s_inodes_count), fdb = tb_get_le32(sb.s_first_data_block),
           logbs = tb_get_le32(sb.s_log_block_size), ipg = tb_get_le32(sb.s_inodes_per_group);
  uint32_t rev = tb_get_le32(sb.s_rev_level), incompat = tb_get_le32(sb.s_feature_incompat);
  if (logbs > 6 || ipg == 0 || inodes == 0 ||
      (incompat & EXT2FS_FEATURE_INCOMPAT_META_BG)) /* not parsed */
    return -1;
  uint64_t bs = (uint64_t)EXT2FS_MIN_BLOCK_SIZE << logbs;
  uint32_t isz = rev == EXT2FS_REV_ORIG ? EXT_OLD_INODE_SIZE : tb_get_le16(sb.s_inode_size);
  if (isz < EXT_OLD_INODE_SIZE || isz > bs || (isz & (isz - 1)))
    return -1;
  uint32_t ds = sizeof(ext2fs_gd);
  if (incompat & EXT2FS_FEATURE_INCOMPAT_64BIT) { /* descriptors of s_desc_size bytes */
    ds = tb_get_le16(sb.s_desc_size);
    if (ds < sizeof(ext2fs_gd) || ds > 1024 || (ds & (ds - 1)))
      return -1;
  }
  uint64_t groups = (inodes + (uint64_t)ipg - 1) / ipg;
  uint64_t gdt = ((uint64_t)fdb + 1) * bs, gdt_len = groups * ds, table = (uint64_t)ipg * isz;
  /* 64 MiB of descriptors is a 64 TiB filesystem with 64-byte descriptors:
   * past that a crafted superblock would only make us allocate and read. */
  if (groups > (1u << 22) || gdt_len > (64u << 20) || gdt_len > vl || gdt > vl - gdt_len ||
      table > vl)
    return -1;
  unsigned char *d = malloc(gdt_len);
  int r = d && tb_disk_pread(disk, d, gdt_len, vo + gdt) == 0 ? 0 : -1;
  for (uint64_t i = 0; i < groups && r == 0; i++) {
    /* ext2fs_gd, or with 64bit descriptors ext4fs_gd (the same first 32 bytes). */
    const unsigned char *e = d + i * ds;
    uint64_t it = tb_get_le32(((const ext2fs_gd *)e)->bg_inode_table);
    if (ds >= sizeof(ext4fs_gd))
      it |= (uint64_t)tb_get_le32(((const ext4fs_gd *)e)->bg_inode_table_hi) << 32;
    if (it > vl / bs || it * bs > vl - table)
      r = -1;
    else
      r = geom_add(g, vo + it * bs, table, i * table);
  }
  free(d);
  g->kind = GEOM_EXT;
  g->rec = isz;
  g->first = 1;
  return r;
}

/* Where inode INUM of ext volume V lives (bytes from the volume's start)
 * and its size, from the geometry read at the first use. */
bool tbi_ext_inode_off(struct tb_inspect *ins, struct vol *v, uint64_t inum, uint64_t *voff,
                       uint32_t *isz)
{
  if (!v->ext_geom_tried) {
    v->ext_geom_tried = true;
    struct geom *g = calloc(1, sizeof *g);
    if (g && ext_geometry(ins->disk, &v->pub, g) == 0 && g->n > 0) {
      v->ext_geom = g; /* one extent per group, in group order */
    } else if (g) {
      tbi_geom_free(g);
      free(g);
    }
  }
  const struct geom *g = v->ext_geom;
  if (!g || inum < 1 || g->v[0].len == 0)
    return false;
  uint64_t foff = (inum - 1) * g->rec, table = g->v[0].len, grp = foff / table;
  if (grp >= g->n)
    return false;
  *voff = g->v[grp].off - v->pub.offset + foff % table;
  *isz = g->rec;
  return true;
}

/* The MFT record size of the NTFS boot sector B (0: not NTFS, or sizes the
 * parsers refuse), and its cluster size in *CLUSTER.  Sectors per cluster
 * above 0x80 are a negative power of two (0xF4 and up: 2^(256-n) sectors);
 * clusters per MFT record below zero mean 2^-n bytes. */
static uint64_t ntfs_record_size(const ntfs_sb *b, uint64_t *cluster)
{
  if (memcmp(b->oemname, "NTFS    ", sizeof b->oemname) != 0)
    return 0;
  uint64_t bps = tb_get_le16(b->ssize), spc = b->csize;
  if (spc > 0x80)
    spc = spc >= 0xF4 ? 1ull << (256 - spc) : 0;
  if (bps < 256 || bps > 4096 || (bps & (bps - 1)) || spc == 0)
    return 0;
  *cluster = bps * spc;
  int c = b->mft_rsize_c;
  uint64_t rec = c > 0 ? (uint64_t)c * *cluster : (c <= -8 && c >= -16 ? 1ull << -c : 0);
  return rec < 256 || rec > 65536 ? 0 : rec;
}

/* NTFS: the MFT record size from the boot sector (ntfs_record_size), and
 * where the MFT lies from $MFT's own $DATA runs (libtsk opens entry 0 for
 * us). */
static int ntfs_geometry(struct vol *v, struct tb_disk *disk, struct geom *g)
{
  ntfs_sb b;
  uint64_t cluster, rec;
  if (tb_disk_pread(disk, &b, sizeof b, v->pub.offset) < 0 ||
      (rec = ntfs_record_size(&b, &cluster)) == 0 || cluster != v->fs->block_size)
    return -1;
  TSK_FS_FILE *f = tsk_fs_file_open_meta(v->fs, NULL, 0);
  const TSK_FS_ATTR *a =
      f && f->meta ? tsk_fs_file_attr_get_type(f, TSK_FS_ATTR_TYPE_NTFS_DATA, 0, 0) : NULL;
  int r = a && (a->flags & TSK_FS_ATTR_NONRES) && a->size > 0 ? 0 : -1;
  uint64_t asize = r == 0 ? (uint64_t)a->size : 0;
  int guard = 0;
  for (const TSK_FS_ATTR_RUN *run = r == 0 ? a->nrd.run : NULL; run && r == 0; run = run->next) {
    if (++guard > 100000 || run->addr > UINT64_MAX / cluster / 2 ||
        run->len > UINT64_MAX / cluster / 2 || run->offset > UINT64_MAX / cluster / 2)
      r = -1;
    else if (!(run->flags & (TSK_FS_ATTR_RUN_FLAG_FILLER | TSK_FS_ATTR_RUN_FLAG_SPARSE)) &&
             run->offset * cluster < asize) {
      uint64_t foff = run->offset * cluster, len = run->len * cluster;
      if (len > asize - foff)
        len = asize - foff;
      r = geom_add(g, v->pub.offset + run->addr * cluster, len, foff);
    }
  }
  tsk_fs_file_close(f);
  tsk_error_reset();
  g->kind = GEOM_NTFS;
  g->rec = (uint32_t)rec;
  g->first = 0;
  return r;
}

/* The metadata geometry of volume V of INS (on the worker).  -1 if its type
 * is not indexed or the parsers refuse what they read. */
int tbi_vol_geometry(struct tb_inspect *ins, struct vol *v, struct geom *g)
{
  memset(g, 0, sizeof *g);
  int r = -1;
  if (TSK_FS_TYPE_ISEXT(v->fs->ftype))
    r = ext_geometry(ins->disk, &v->pub, g);
  else if (TSK_FS_TYPE_ISNTFS(v->fs->ftype))
    r = ntfs_geometry(v, ins->disk, g);
  if (r == 0)
    r = geom_finish(g, &v->pub);
  if (r < 0)
    tbi_geom_free(g);
  return r;
}

/* Does LIVE keep every record of BASE where BASE has it?  A table may grow
 * (ntfs-3g extends the MFT in place as it allocates entries): the new
 * records are new files, found through the listings that name them. */
bool tbi_geom_covers(const struct geom *live, const struct geom *base)
{
  if (live->kind != base->kind || live->rec != base->rec || live->first != base->first)
    return false;
  for (size_t i = 0; i < base->n; i++) {
    const struct meta_extent *b = &base->v[i];
    size_t lo = 0, hi = live->n; /* the last live extent starting at or before b */
    while (lo < hi) {
      size_t mid = lo + (hi - lo) / 2;
      if (live->v[mid].off <= b->off)
        lo = mid + 1;
      else
        hi = mid;
    }
    if (lo == 0)
      return false;
    const struct meta_extent *l = &live->v[lo - 1];
    uint64_t skip = b->off - l->off;
    if (skip > l->len || b->len > l->len - skip || l->foff + skip != b->foff)
      return false;
  }
  return true;
}
