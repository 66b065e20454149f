/* SPDX-License-Identifier: BSD-3-Clause */
/* lib/inspect-meta.c: guest metadata libtsk gets wrong or does not show.
 *
 * Bounded parsers of the on-disk records (ext inodes and xattrs, NTFS
 * attributes and reparse points, FAT/exFAT directory entries) correct the
 * tb_istat libtsk gives, so the view shows what the guest's own driver
 * shows; fix_stat is the one entry, entry_stat/file_stat the stat of a
 * listed entry, and tbi_ext_entry_stat the same stat of an ext entry
 * decoded from its raw inode without a libtsk open (what makes a big ext
 * directory's listing cheap).  The detail is below.  Runs on the worker only.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inspect-internal.h"

/* libtsk 4.11 reads what the view needs, except for what follows, which
 * our own bounded parsers of the on-disk records fix (read with tsk_fs_read,
 * through libtsk's image cache, so a record libtsk has just read costs no
 * I/O).  The view must show what the guest's own driver shows (tests/
 * fuse-fidelity.sh holds it to the kernel, ntfs-3g and exfat-fuse):
 *
 *  ext2/3/4   times are read unsigned and without ext4's epoch bits (1969
 *             showed as 2105): decoded from the raw inode as the kernel
 *             does; device numbers are not kept: from i_block as the kernel
 *             decodes them; extended attributes are not parsed: the in-inode
 *             area and the xattr block are (tbi_ext_xattrs).
 *  NTFS       the system files (MFT records below 16: $MFT, $Bitmap,
 *             $Extend...) are listed, and so are index entries whose MFT
 *             record was freed or reused (deleted names): hidden, by the
 *             record's allocation and sequence number, as ntfs-3g hides
 *             them; Interix symlinks (IntxLNK) and reparse points (symlinks,
 *             junctions) are plain files and directories: symlinks; owners
 *             are not Unix ids and modes not Unix modes: uid/gid 0, mode 0
 *             (the view shows 0444 and 0555); a directory's size is its
 *             $INDEX_ROOT's: its $I30 index allocation's, as ntfs-3g.
 *  FAT/exFAT  the volume label and exFAT's allocation bitmap and up-case
 *             table are listed as files: hidden; times go through mktime()
 *             in the process's time zone, are clamped before 2038, and
 *             exFAT's 10 ms field is taken modulo one second: decoded from
 *             the raw directory entry (FAT in UTC like the kernel with no
 *             tz= option, exFAT with its recorded UTC offset). */

/* ext inodes and extended attributes are read with libtsk's definitions
 * (tsk_ext2fs.h: ext2fs_inode, ext2fs_ea_header, ext2fs_ea_entry), at the
 * kernel's offsets, which these hold them to. */
#define EXT_IFIELD(f) offsetof(ext2fs_inode, f)
#define EXT_OLD_ISIZE EXT_IFIELD(i_extra_isize) /* 128: where the extra fields begin */
#define EXT_EA_ENTRY_HDR offsetof(ext2fs_ea_entry, name)
_Static_assert(EXT_OLD_ISIZE == 128 && EXT_IFIELD(i_block) == 40 && EXT_IFIELD(i_file_acl) == 104,
               "ext2fs_inode: the kernel's layout");
_Static_assert(EXT_IFIELD(f1) == 118, "ext2fs_inode: f1 is the kernel's l_i_file_acl_high");
_Static_assert(EXT_IFIELD(i_crtime_extra) == 148, "ext2fs_inode: i_crtime_extra at 148");
_Static_assert(offsetof(ext2fs_ea_header, entry) == 32 && EXT_EA_ENTRY_HDR == 16,
               "ext2fs_ea_header/entry: the kernel's layout");
_Static_assert(offsetof(ntfs_attr_si, dos) == 32 && NTFS_SI_SYS == 0x4,
               "ntfs_attr_si: the file attributes at 32");
#define REPARSE_MOUNT_POINT 0xA0000003u
#define REPARSE_SYMLINK 0xA000000Cu

void tbi_raw_free(struct vol *v)
{
  free(v->ntfs_runs);
  v->ntfs_runs = NULL;
  for (size_t i = 0; i < sizeof v->spans / sizeof *v->spans; i++) {
    free(v->spans[i].buf);
    v->spans[i] = (struct vol_span){0};
  }
  if (v->ext_geom) {
    tbi_geom_free(v->ext_geom);
    free(v->ext_geom);
    v->ext_geom = NULL;
  }
}

static uint64_t fnv64(uint64_t h, const void *p, size_t n)
{
  const unsigned char *b = p;
  if (h == 0)
    h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) {
    h ^= b[i];
    h *= 1099511628211ull;
  }
  return h;
}

/* LEN bytes at byte VOFF of the volume, through libtsk's cache. */
bool tbi_raw_read(struct vol *v, uint64_t voff, void *buf, size_t len)
{
  bool ok = tsk_fs_read(v->fs, (TSK_OFF_T)voff, buf, len) == (ssize_t)len;
  if (!ok)
    tsk_error_reset();
  return ok;
}

/* Days from 1970-01-01 to Y-M-D (proleptic Gregorian). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
  y -= m <= 2;
  int64_t era = (y >= 0 ? y : y - 399) / 400;
  unsigned yoe = (unsigned)(y - era * 400);
  unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + (int64_t)doe - 719468;
}

/* -- ext -- */

static const char *ext_xattr_prefix(unsigned index)
{
  switch (index) {
  case 1:
    return "user.";
  case 4:
    return "trusted.";
  case 6:
    return "security.";
  default:
    return NULL; /* system.*: POSIX ACLs (stored in ext4's own format), inline data */
  }
}

/* The entries of an xattr area: ENTS (LEN bytes) holds the entries, their
 * values lie at offsets from BASE (BASE_LEN bytes). */
static void ext_xattr_entries(const unsigned char *base, size_t base_len, const unsigned char *ents,
                              size_t len, xattr_fn fn, void *ctx)
{
  size_t p = 0;
  for (int guard = 0; p + EXT_EA_ENTRY_HDR <= len && guard < 4096; guard++) {
    const ext2fs_ea_entry *e = (const ext2fs_ea_entry *)(ents + p);
    if (tb_get_le32(ents + p) == 0) /* the four zero bytes that end the entries */
      break;
    unsigned nlen = e->nlen;
    uint32_t voff = tb_get_le16(e->val_off), vinum = tb_get_le32(e->val_blk),
             vsize = tb_get_le32(e->val_size);
    if (p + EXT_EA_ENTRY_HDR + nlen > len)
      break;
    const char *prefix = ext_xattr_prefix(e->nidx);
    if (prefix && vinum == 0 && vsize <= TB_XATTR_MAX && voff <= base_len &&
        vsize <= base_len - voff) {
      char name[300];
      snprintf(name, sizeof name, "%s%.*s", prefix, (int)nlen,
               (const char *)ents + p + EXT_EA_ENTRY_HDR);
      fn(ctx, name, base + voff, vsize);
    }
    p += (EXT_EA_ENTRY_HDR + nlen + 3) & ~(size_t)3;
  }
}

/* Extended attributes of the raw inode INO (ISZ bytes): the in-inode area
 * after i_extra_isize, then the xattr block (i_file_acl). */
void tbi_ext_xattrs(struct vol *v, const unsigned char *ino, uint32_t isz, xattr_fn fn, void *ctx)
{
  const ext2fs_inode *in = (const ext2fs_inode *)ino;
  uint32_t extra = isz > EXT_OLD_ISIZE ? tb_get_le16(in->i_extra_isize) : 0;
  /* In the inode: the magic after the extra fields, then the entries. */
  if (extra && EXT_OLD_ISIZE + extra + 4 <= isz &&
      tb_get_le32(ino + EXT_OLD_ISIZE + extra) == EXT2_EA_MAGIC) {
    const unsigned char *first = ino + EXT_OLD_ISIZE + extra + 4;
    size_t n = isz - (EXT_OLD_ISIZE + extra + 4);
    ext_xattr_entries(first, n, first, n, fn, ctx);
  }
  uint64_t blk = tb_get_le32(in->i_file_acl) | (uint64_t)tb_get_le16(in->f1) << 32;
  uint32_t bs = v->fs->block_size;
  if (blk == 0 || blk > v->fs->last_block || bs < 1024 || bs > 65536)
    return;
  unsigned char *b = malloc(bs);
  const ext2fs_ea_header *h = (const ext2fs_ea_header *)b;
  if (b && tbi_raw_read(v, blk * bs, b, bs) && tb_get_le32(h->magic) == EXT2_EA_MAGIC &&
      tb_get_le32(h->blocks) == 1)
    ext_xattr_entries(b, bs, b + offsetof(ext2fs_ea_header, entry),
                      bs - offsetof(ext2fs_ea_header, entry), fn, ctx);
  free(b);
}

/* Seconds as the kernel decodes them: a signed 32-bit field, plus the
 * epoch bits and nanoseconds of its _extra field when the inode has it. */
static int64_t ext_time(const unsigned char *ino, uint32_t isz, unsigned off, unsigned xoff,
                        uint32_t *ns)
{
  int64_t t = (int32_t)tb_get_le32(ino + off);
  uint32_t extra =
      isz > EXT_OLD_ISIZE ? tb_get_le16(((const ext2fs_inode *)ino)->i_extra_isize) : 0;
  if (xoff && EXT_OLD_ISIZE + extra >= xoff + 4 && xoff + 4 <= isz) {
    uint32_t x = tb_get_le32(ino + xoff);
    t += (int64_t)(x & 3) << 32;
    if (ns)
      *ns = (x >> 2) < 1000000000 ? x >> 2 : 0;
  }
  return t;
}

struct xattr_digest {
  uint64_t h;
  size_t n; /* xattrs seen: the ones tbi_do_xattrs lists */
};

static void digest_xattr(void *ctx, const char *name, const unsigned char *val, size_t len)
{
  struct xattr_digest *d = ctx;
  d->h = fnv64(fnv64(d->h, name, strlen(name) + 1), val, len);
  d->h = fnv64(d->h, &len, sizeof len);
  d->n++;
}

/* ST's times, device numbers and xattr digest from raw inode INO (ISZ bytes). */
static void ext_fix_raw(struct vol *v, const unsigned char *ino, uint32_t isz, struct tb_istat *st)
{
  const ext2fs_inode *in = (const ext2fs_inode *)ino;
  st->atime = ext_time(ino, isz, EXT_IFIELD(i_atime), EXT_IFIELD(i_atime_extra), &st->atime_ns);
  st->ctime = ext_time(ino, isz, EXT_IFIELD(i_ctime), EXT_IFIELD(i_ctime_extra), &st->ctime_ns);
  st->mtime = ext_time(ino, isz, EXT_IFIELD(i_mtime), EXT_IFIELD(i_mtime_extra), &st->mtime_ns);
  uint32_t extra = isz > EXT_OLD_ISIZE ? tb_get_le16(in->i_extra_isize) : 0;
  if (EXT_OLD_ISIZE + extra >= EXT_IFIELD(i_crtime_extra))
    st->crtime = ext_time(ino, isz, EXT_IFIELD(i_crtime), EXT_IFIELD(i_crtime_extra), NULL);
  if (st->type == TB_FT_CHR || st->type == TB_FT_BLK) {
    uint32_t b0 = tb_get_le32(in->i_block[0]), b1 = tb_get_le32(in->i_block[1]);
    if (b0) {
      st->rdev_major = (b0 >> 8) & 0xff;
      st->rdev_minor = b0 & 0xff;
    } else {
      st->rdev_major = (b1 & 0xfff00) >> 8;
      st->rdev_minor = (b1 & 0xff) | ((b1 >> 12) & 0xfff00);
    }
  }
  struct xattr_digest d = {0, 0};
  tbi_ext_xattrs(v, ino, isz, digest_xattr, &d);
  st->xdigest = d.h;
  st->no_xattrs = d.n == 0;
}

static void ext_fix(struct tb_inspect *ins, struct vol *v, struct tb_istat *st)
{
  unsigned char ino[1024];
  uint64_t off;
  uint32_t isz;
  if (!tbi_ext_inode_off(ins, v, st->inum, &off, &isz) || isz > sizeof ino ||
      !tbi_raw_read(v, off, ino, isz)) {
    /* No raw inode: at least the sign of the 32-bit times. */
    st->mtime = (int32_t)(uint32_t)st->mtime;
    st->atime = (int32_t)(uint32_t)st->atime;
    st->ctime = (int32_t)(uint32_t)st->ctime;
    return;
  }
  ext_fix_raw(v, ino, isz, st);
}

/* Where libtsk finds inode INUM of ext volume V, as its ext2fs_dinode_load
 * and ext2fs_group_load find it (the group's one descriptor: 64-bit ones
 * on ext4 with INCOMPAT_64BIT and s_desc_size >= 64, otherwise 32-bit ones
 * s_desc_size apart, 32 at least; META_BG ignored, as libtsk ignores it):
 * for a volume whose whole
 * geometry tbi_ext_inode_off refuses (a damaged one). */
static bool ext_inode_as_libtsk(struct vol *v, uint64_t inum, uint64_t *off, uint32_t *isz)
{
  const EXT2FS_INFO *e = (const EXT2FS_INFO *)v->fs;
  uint32_t ipg = tb_get_le32(e->fs->s_inodes_per_group),
           incompat = tb_get_le32(e->fs->s_feature_incompat);
  uint64_t ds = tb_get_le16(e->fs->s_desc_size), bs = v->fs->block_size;
  bool wide = v->fs->ftype == TSK_FS_TYPE_EXT4 && (incompat & EXT2FS_FEATURE_INCOMPAT_64BIT) &&
              ds >= sizeof(ext4fs_gd);
  if (ds < sizeof(ext2fs_gd))
    ds = sizeof(ext2fs_gd);
  if (ipg == 0 || inum < 1 || bs == 0 || e->groups_offset < 0)
    return false;
  unsigned char gd[sizeof(ext4fs_gd)];
  uint64_t grp = (inum - 1) / ipg, at = (uint64_t)e->groups_offset + grp * ds;
  if (grp > UINT64_MAX / ds || at > v->pub.length ||
      !tbi_raw_read(v, at, gd, wide ? sizeof(ext4fs_gd) : sizeof(ext2fs_gd)))
    return false;
  uint64_t table = tb_get_le32(((const ext2fs_gd *)gd)->bg_inode_table);
  if (wide)
    table |= (uint64_t)tb_get_le32(((const ext4fs_gd *)gd)->bg_inode_table_hi) << 32;
  uint64_t in = ((inum - 1) % ipg) * e->inode_size;
  if (table > v->pub.length / bs || in > v->pub.length - table * bs)
    return false;
  *off = table * bs + in;
  *isz = e->inode_size;
  return true;
}

/* Raw inode INUM of ext volume V into INO (1024 bytes), its size in *ISZ
 * (at least EXT_OLD_ISIZE); AS_LIBTSK: found the way libtsk finds it where
 * our geometry refuses the volume. */
static bool ext_raw_inode(struct tb_inspect *ins, struct vol *v, uint64_t inum, unsigned char *ino,
                          uint32_t *isz, bool as_libtsk)
{
  uint64_t off;
  return inum >= 1 && inum < (uint64_t)v->fs->last_inum &&
         (tbi_ext_inode_off(ins, v, inum, &off, isz) ||
          (as_libtsk && ext_inode_as_libtsk(v, inum, &off, isz))) &&
         *isz >= EXT_OLD_ISIZE && *isz <= 1024 && tbi_raw_read(v, off, ino, *isz);
}

/* Would libtsk allocate what ext inode INUM claims (see tbi_open_meta)?
 * Then the error is set. */
static bool ext_inline_refused(struct tb_inspect *ins, struct vol *v, uint64_t inum)
{
  unsigned char ino[1024];
  uint32_t isz;
  if (!TSK_FS_TYPE_ISEXT(v->fs->ftype) || !ext_raw_inode(ins, v, inum, ino, &isz, true))
    return false;
  const ext2fs_inode *in = (const ext2fs_inode *)ino;
  uint64_t size = tb_get_le32(in->i_size) | (uint64_t)tb_get_le32(in->i_size_high) << 32;
  if (!(tb_get_le32(in->i_flags) & EXT2_INLINE_DATA) || size <= isz)
    return false;
  tsk_error_reset();
  tsk_error_set_errno(TSK_ERR_FS_INODE_COR);
  tsk_error_set_errstr("inode %" PRIu64 " claims %" PRIu64 " bytes of inline data, more than "
                       "the inode holds (damaged filesystem?)",
                       inum, size);
  return true;
}

/* libtsk's tsk_fs_file_open_meta, refusing first an ext inode that would
 * have libtsk allocate what the inode claims rather than what the disk
 * holds: one with inline data (ext4's INLINE_DATA flag) is loaded into a
 * buffer of its i_size, which a damaged or hostile inode sets to gigabytes
 * (the geometry fuzzer's 3.9 GB calloc at a volume's open).  Inline data
 * lives in the inode (i_block and the in-inode "system.data" xattr), so it
 * is never larger than the inode.  An inode we cannot read ourselves is
 * left to libtsk, which fails on the same read. */
TSK_FS_FILE *tbi_open_meta(struct tb_inspect *ins, struct vol *v, uint64_t inum)
{
  return ext_inline_refused(ins, v, inum) ? NULL
                                          : tsk_fs_file_open_meta(v->fs, NULL, (TSK_INUM_T)inum);
}

/* The stat of a listed ext entry straight from its raw inode, without
 * opening it through libtsk: tsk_fs_file_open_meta allocates a file and
 * its metadata, reads the inode and the group's inode bitmap, and ext_fix
 * then reads the same inode again; for a 20,000-entry directory that was
 * most of a listing's time.  The fields are decoded as libtsk's
 * ext2fs_dinode_copy decodes them (the type and mode bits of i_mode; the
 * 32-bit size, plus i_size_high for regular files when the filesystem has
 * RO_COMPAT_LARGE_FILE, a size past 2^63 being 0 as libtsk's signed one;
 * 32-bit uid/gid from their low and high halves; i_nlink; ext4's
 * nanoseconds and crtime read even past i_extra_isize), then corrected by
 * ext_fix_raw, so the result is what tbi_file_stat gives
 * (tests/inspect-ext-stat.sh holds them equal, inode by inode).  False
 * (the caller takes libtsk's way) where libtsk does more than decode:
 * numbers outside the inode table (libtsk's virtual orphan directory is
 * last_inum), inline data, symlinks whose target libtsk reads from a block
 * (a read that can fail and drop the metadata); or when the geometry or the
 * inode cannot be read.  Where libtsk would have failed on the group's
 * inode bitmap alone (a damaged descriptor) this shows the inode's
 * metadata instead of the name's type. */
bool tbi_ext_entry_stat(struct tb_inspect *ins, struct vol *v, uint64_t inum, struct tb_istat *st)
{
  unsigned char ino[1024];
  uint32_t isz;
  return ext_raw_inode(ins, v, inum, ino, &isz, false) && tbi_ext_inode_stat(v, inum, ino, isz, st);
}

/* tbi_ext_entry_stat's decoding of raw inode INO (ISZ bytes, at least
 * EXT_OLD_ISIZE), for a lister that read it itself (ext_read_dir). */
bool tbi_ext_inode_stat(struct vol *v, uint64_t inum, const unsigned char *ino, uint32_t isz,
                        struct tb_istat *st)
{
  if (inum < 1 || inum >= (uint64_t)v->fs->last_inum || isz < EXT_OLD_ISIZE)
    return false;
  const ext2fs_inode *in = (const ext2fs_inode *)ino;
  uint32_t mode = tb_get_le16(in->i_mode), flags = tb_get_le32(in->i_flags);
  uint64_t size = tb_get_le32(in->i_size);
  enum tb_file_type type;
  switch (mode & EXT2_IN_FMT) {
  case EXT2_IN_REG:
    type = TB_FT_REG;
    break;
  case EXT2_IN_DIR:
    type = TB_FT_DIR;
    break;
  case EXT2_IN_LNK:
    type = TB_FT_LNK;
    break;
  case EXT2_IN_CHR:
    type = TB_FT_CHR;
    break;
  case EXT2_IN_BLK:
    type = TB_FT_BLK;
    break;
  case EXT2_IN_FIFO:
    type = TB_FT_FIFO;
    break;
  case EXT2_IN_SOCK:
    type = TB_FT_SOCK;
    break;
  default:
    type = TB_FT_OTHER;
  }
  if ((flags & EXT2_INLINE_DATA) ||
      (type == TB_FT_LNK && !(flags & EXT2_IN_EXTENTS) && size >= sizeof in->i_block))
    return false;
  const ext2fs_sb *sb = ((const EXT2FS_INFO *)v->fs)->fs;
  if (type == TB_FT_REG &&
      (tb_get_le32(sb->s_feature_ro_compat) & EXT2FS_FEATURE_RO_COMPAT_LARGE_FILE))
    size += (uint64_t)tb_get_le32(in->i_size_high) << 32;
  if (size > INT64_MAX)
    size = 0;
  bool ext4 = v->fs->ftype == TSK_FS_TYPE_EXT4;
  /* libtsk's nanoseconds: the _extra fields wherever the inode is long
   * enough to hold them (ext_fix_raw keeps them only inside i_extra_isize). */
  static const size_t xoff[3] = {EXT_IFIELD(i_mtime_extra), EXT_IFIELD(i_atime_extra),
                                 EXT_IFIELD(i_ctime_extra)};
  uint32_t ns[3] = {0, 0, 0};
  for (int i = 0; ext4 && i < 3; i++) {
    uint32_t x = xoff[i] + 4 <= isz ? tb_get_le32(ino + xoff[i]) >> 2 : 0;
    ns[i] = x < 1000000000 ? x : 0;
  }
  uint32_t nlink = tb_get_le16(in->i_nlink);
  *st = (struct tb_istat){
      .type = type,
      .inum = inum,
      .size = size,
      .mode = mode & 07777,
      .uid = tb_get_le16(in->i_uid) | (uint32_t)tb_get_le16(in->i_uid_high) << 16,
      .gid = tb_get_le16(in->i_gid) | (uint32_t)tb_get_le16(in->i_gid_high) << 16,
      .nlink = nlink ? nlink : 1,
      .crtime = ext4 && EXT_IFIELD(i_crtime) + 4 <= isz ? tb_get_le32(in->i_crtime) : 0,
      .mtime_ns = ns[0],
      .atime_ns = ns[1],
      .ctime_ns = ns[2],
  };
  ext_fix_raw(v, ino, isz, st);
  return true;
}

/* -- NTFS -- */

static bool ntfs_default_name(const char *name)
{
  return !name || !*name || strcmp(name, "$Data") == 0;
}

/* UTF-16LE (LEN bytes) into UTF-8 OUT (SIZE bytes, NUL-terminated);
 * backslashes become slashes.  Returns the length, or -1 if it does not fit. */
static ssize_t utf16_path(const unsigned char *p, size_t len, char *out, size_t size)
{
  size_t o = 0;
  for (size_t i = 0; i + 1 < len; i += 2) {
    uint32_t c = tb_get_le16(p + i);
    if (c >= 0xD800 && c < 0xDC00 && i + 3 < len && tb_get_le16(p + i + 2) >= 0xDC00 &&
        tb_get_le16(p + i + 2) < 0xE000) {
      c = 0x10000 + ((c - 0xD800) << 10) + (tb_get_le16(p + i + 2) - 0xDC00);
      i += 2;
    }
    if (c == 0)
      break;
    if (c == '\\')
      c = '/';
    char u[4];
    size_t n = c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
    if (n == 1)
      u[0] = (char)c;
    else if (n == 2)
      u[0] = (char)(0xC0 | c >> 6), u[1] = (char)(0x80 | (c & 0x3F));
    else if (n == 3)
      u[0] = (char)(0xE0 | c >> 12), u[1] = (char)(0x80 | ((c >> 6) & 0x3F)),
      u[2] = (char)(0x80 | (c & 0x3F));
    else
      u[0] = (char)(0xF0 | c >> 18), u[1] = (char)(0x80 | ((c >> 12) & 0x3F)),
      u[2] = (char)(0x80 | ((c >> 6) & 0x3F)), u[3] = (char)(0x80 | (c & 0x3F));
    if (o + n >= size)
      return -1;
    memcpy(out + o, u, n);
    o += n;
  }
  out[o] = '\0';
  return (ssize_t)o;
}

const TSK_FS_ATTR *tbi_ntfs_attr(TSK_FS_FILE *f, uint32_t type)
{
  int n = tsk_fs_file_attr_getsize(f);
  for (int i = 0; i < n; i++) {
    const TSK_FS_ATTR *a = tsk_fs_file_attr_get_idx(f, i);
    if (a && (uint32_t)a->type == type)
      return a;
  }
  tsk_error_reset();
  return NULL;
}

/* The target of an NTFS symlink into OUT, or -1 if F is none: a reparse
 * point (a symlink: its substitute name, relative or, for an absolute one,
 * "\??\C:\x" as "/x" on this volume; a junction likewise) or an Interix
 * symlink (a system file holding "IntxLNK\1" and the UTF-16 target).
 * ntfs-3g shows absolute targets under its own mount point; the view keeps
 * them rooted at the volume (tabula-fuse(1)). */
/* A reparse point's target from its content B (BLEN bytes), or -1. */
static ssize_t ntfs_reparse_target(const unsigned char *b, size_t blen, char *out, size_t size)
{
  uint32_t tag = tb_get_le32(b);
  size_t hdr = tag == REPARSE_SYMLINK ? 20 : tag == REPARSE_MOUNT_POINT ? 16 : 0;
  if (!hdr || blen < hdr)
    return -1;
  size_t so = tb_get_le16(b + 8), sl = tb_get_le16(b + 10);
  bool relative = tag == REPARSE_SYMLINK && (tb_get_le32(b + 16) & 1);
  if (hdr + so > blen || sl > blen - hdr - so)
    return -1;
  ssize_t n = utf16_path(b + hdr + so, sl, out, size);
  if (n < 0 || relative)
    return n;
  /* "/??/C:/x" -> "/x"; other absolute forms are kept. */
  if (n >= 6 &&
      strncmp(out,
              "/?"
              "?/",
              4) == 0 &&
      out[5] == ':') {
    memmove(out, out + 6, (size_t)n - 5);
    n -= 6;
    if (n == 0) {
      snprintf(out, size, "/");
      n = 1;
    }
  }
  return n;
}

#define INTERIX_MAX (8 + 2 * 4096)

/* An Interix symlink's target from a system file's content (SZ bytes),
 * or -1. */
static ssize_t ntfs_interix_target(const unsigned char *buf, size_t sz, char *out, size_t size)
{
  if (memcmp(buf, "IntxLNK\1", 8) != 0)
    return -1;
  return utf16_path(buf + 8, sz - 8, out, size);
}

ssize_t tbi_ntfs_link(TSK_FS_FILE *f, char *out, size_t size)
{
  const TSK_FS_ATTR *rp = tbi_ntfs_attr(f, TSK_FS_ATTR_TYPE_NTFS_REPARSE);
  if (rp && (rp->flags & TSK_FS_ATTR_RES) && rp->rd.buf && rp->size >= 16)
    return ntfs_reparse_target(
        rp->rd.buf, (size_t)rp->size < rp->rd.buf_size ? (size_t)rp->size : rp->rd.buf_size, out,
        size);
  const TSK_FS_ATTR *si = tbi_ntfs_attr(f, TSK_FS_ATTR_TYPE_NTFS_SI);
  /* $STANDARD_INFORMATION (libtsk's ntfs_attr_si): its DOS attributes */
  bool system = si && (si->flags & TSK_FS_ATTR_RES) && si->rd.buf &&
                si->size >= (TSK_OFF_T)(offsetof(ntfs_attr_si, dos) + 4) &&
                (tb_get_le32(((const ntfs_attr_si *)si->rd.buf)->dos) & NTFS_SI_SYS);
  uint64_t sz = f->meta->size > 0 ? (uint64_t)f->meta->size : 0;
  if (!system || f->meta->type != TSK_FS_META_TYPE_REG || sz < 10 || sz > INTERIX_MAX)
    return -1;
  unsigned char buf[INTERIX_MAX];
  if (tsk_fs_file_read(f, 0, (char *)buf, sz, TSK_FS_FILE_READ_FLAG_NONE) != (ssize_t)sz) {
    tsk_error_reset();
    return -1;
  }
  return ntfs_interix_target(buf, sz, out, size);
}

/* Alternate data streams as "user.NAME" xattrs, as ntfs-3g shows them. */
void tbi_ntfs_streams(TSK_FS_FILE *f, xattr_fn fn, void *ctx)
{
  int n = tsk_fs_file_attr_getsize(f);
  for (int i = 0; i < n; i++) {
    const TSK_FS_ATTR *a = tsk_fs_file_attr_get_idx(f, i);
    if (!a || a->type != TSK_FS_ATTR_TYPE_NTFS_DATA || ntfs_default_name(a->name) || a->size < 0 ||
        a->size > TB_XATTR_MAX)
      continue;
    char name[600];
    snprintf(name, sizeof name, "user.%s", a->name);
    size_t len = (size_t)a->size;
    unsigned char *val = malloc(len ? len : 1);
    if (val && (len == 0 || tsk_fs_attr_read(a, 0, (char *)val, len, TSK_FS_FILE_READ_FLAG_NONE) ==
                                (ssize_t)len))
      fn(ctx, name, val, len);
    free(val);
  }
  tsk_error_reset();
}

/* The digest of F's streams (names, sizes) and resident data (bytes);
 * *NAMED the number of named streams (tbi_ntfs_streams lists no more). */
static uint64_t ntfs_digest(TSK_FS_FILE *f, size_t *named)
{
  uint64_t h = 0;
  *named = 0;
  int n = tsk_fs_file_attr_getsize(f);
  for (int i = 0; i < n; i++) {
    const TSK_FS_ATTR *a = tsk_fs_file_attr_get_idx(f, i);
    if (!a || a->type != TSK_FS_ATTR_TYPE_NTFS_DATA)
      continue;
    if (!ntfs_default_name(a->name)) {
      h = fnv64(h, a->name, strlen(a->name) + 1);
      h = fnv64(h, &a->size, sizeof a->size);
      (*named)++;
    }
    if ((a->flags & TSK_FS_ATTR_RES) && a->rd.buf && a->size > 0) {
      size_t len = (size_t)a->size < a->rd.buf_size ? (size_t)a->size : a->rd.buf_size;
      h = fnv64(h, a->rd.buf, len);
      h = fnv64(h, "r", 1);
    }
  }
  tsk_error_reset();
  return h;
}

/* False for what ntfs-3g does not list: system files, deleted names. */
static bool ntfs_fix(struct vol *v, TSK_FS_FILE *f, const TSK_FS_NAME *nm, struct tb_istat *st)
{
  const TSK_FS_META *m = f->meta;
  if (nm && (nm->meta_addr < NTFS_FIRST_USER_RECORD || !(m->flags & TSK_FS_META_FLAG_ALLOC) ||
             nm->meta_seq != m->seq))
    return false;
  st->uid = st->gid = 0;
  st->mode = 0;
  char target[4096];
  ssize_t n = tbi_ntfs_link(f, target, sizeof target);
  if (n >= 0) {
    st->type = TB_FT_LNK;
    st->size = (uint64_t)n;
  } else if (st->type == TB_FT_DIR) {
    const TSK_FS_ATTR *ia = tbi_ntfs_attr(f, TSK_FS_ATTR_TYPE_NTFS_IDXALLOC);
    st->size = ia && ia->size > 0 ? (uint64_t)ia->size : 0;
  }
  size_t named;
  st->xdigest = ntfs_digest(f, &named);
  st->no_xattrs = named == 0;
  return true;
}

/* -- NTFS records read by us --
 *
 * A listing stats each entry from its MFT record.  libtsk's
 * tsk_fs_file_open_meta loads every attribute of it into lists (a 5,500-
 * entry tree: a third of the view's CPU in malloc and libtsk); lib/
 * ntfs-mft.c reads the one record instead, and tbi_ntfs_rec_stat makes
 * of it exactly what tbi_file_stat and ntfs_fix make of libtsk's: the
 * same hiding, times, sizes, links, digest.  What it cannot mirror (a
 * record ntfs-mft.c refuses, an Interix symlink whose content is not in
 * its record) goes to libtsk.  The listing reads the records in $MFT
 * order, many in one request (inspect-list.c).  The environment variable
 * TB_NTFS_MFT=libtsk makes every record go through libtsk;
 * TB_NTFS_MFT=check stats each through both, aborts at the first
 * difference and after each listing says how many so far were read by us
 * (tests/fuse-fidelity.sh). */

bool tbi_ntfs_mft_setup(struct vol *v)
{
  if (v->ntfs_tried)
    return v->ntfs_ok;
  v->ntfs_tried = true;
  const char *mode = getenv("TB_NTFS_MFT");
  v->ntfs_mode = !mode                         ? NTFS_MFT_OURS
                 : strcmp(mode, "libtsk") == 0 ? NTFS_MFT_LIBTSK
                 : strcmp(mode, "check") == 0  ? NTFS_MFT_CHECK
                                               : NTFS_MFT_OURS;
  if (v->ntfs_mode == NTFS_MFT_LIBTSK || !TSK_FS_TYPE_ISNTFS(v->fs->ftype))
    return false;
  /* libtsk's own view of $MFT, with which its ntfs_dinode_lookup finds
   * records */
  const NTFS_INFO *n = (const NTFS_INFO *)v->fs;
  const TSK_FS_ATTR *a = n->mft_data;
  const TSK_FS_ATTR_RUN *first = a && (a->flags & TSK_FS_ATTR_NONRES) ? a->nrd.run : NULL;
  size_t cnt = 0;
  for (const TSK_FS_ATTR_RUN *r = first; r && cnt <= 100000; r = r->next)
    cnt++;
  if (cnt == 0 || cnt > 100000 || n->mft_rsize_b < 512 || n->mft_rsize_b > 65536 ||
      n->mft_rsize_b % 512 || n->csize_b == 0 ||
      !(v->ntfs_runs = calloc(cnt, sizeof *v->ntfs_runs)))
    return false;
  size_t i = 0;
  for (const TSK_FS_ATTR_RUN *r = first; r && i < cnt; r = r->next)
    v->ntfs_runs[i++] = (struct tb_ntfs_run){
        r->flags & (TSK_FS_ATTR_RUN_FLAG_SPARSE | TSK_FS_ATTR_RUN_FLAG_FILLER) ? UINT64_MAX
                                                                               : r->addr,
        r->len};
  v->ntfs_geom =
      (struct tb_ntfs_geom){.rec_size = n->mft_rsize_b,
                            .cluster_size = n->csize_b,
                            .clusters = v->fs->block_count,
                            .n_records = v->fs->last_inum, /* the last is libtsk's $OrphanFiles */
                            .nt4 = n->ver == NTFS_VINFO_NT,
                            .runs = v->ntfs_runs,
                            .n_runs = cnt};
  v->ntfs_ok = true;
  return true;
}

/* tbi_ntfs_link of a record we parsed; -2 if libtsk must read its content. */
static ssize_t ntfs_rec_link(const struct tb_ntfs_rec *r, char *out, size_t size)
{
  if (r->has_reparse && r->reparse && r->reparse_len >= 16)
    return ntfs_reparse_target(r->reparse, r->reparse_len, out, size);
  bool system = r->has_si && r->si_len >= 36 && (r->dos & 0x4);
  if (!system || r->dir || r->size < 10 || r->size > INTERIX_MAX)
    return -1;
  /* what libtsk reads: its default stream, the first unnamed one */
  const struct tb_ntfs_stream *d = NULL;
  size_t unnamed = 0;
  for (size_t i = 0; i < r->n_streams; i++)
    if (!*r->streams[i].name && unnamed++ == 0)
      d = &r->streams[i];
  if (unnamed != 1 || !d->data || d->size != r->size)
    return -2;
  return ntfs_interix_target(d->data, (size_t)r->size, out, size);
}

/* ntfs_digest of a record we parsed. */
static uint64_t ntfs_rec_digest(const struct tb_ntfs_rec *r, size_t *named)
{
  uint64_t h = 0;
  *named = 0;
  for (size_t i = 0; i < r->n_streams; i++) {
    const struct tb_ntfs_stream *s = &r->streams[i];
    if (!ntfs_default_name(s->name)) {
      TSK_OFF_T size = (TSK_OFF_T)s->size;
      h = fnv64(h, s->name, strlen(s->name) + 1);
      h = fnv64(h, &size, sizeof size);
      (*named)++;
    }
    if (s->data && s->size > 0) {
      h = fnv64(h, s->data, (size_t)s->size);
      h = fnv64(h, "r", 1);
    }
  }
  return h;
}

/* The stat of entry NM (a user record) from its MFT record REC (fixed up),
 * as tbi_file_stat gives it: 1 listed (ST), 0 not listed, -1 if libtsk
 * must read it. */
int tbi_ntfs_rec_stat(struct vol *v, const unsigned char *rec, const TSK_FS_NAME *nm,
                      struct tb_istat *st)
{
  struct tb_ntfs_rec r;
  if (tb_ntfs_parse(&v->ntfs_geom, nm->meta_addr, rec, &r) < 0)
    return -1;
  if (!r.in_use || nm->meta_seq != r.seq)
    return 0;
  char target[4096];
  ssize_t n = ntfs_rec_link(&r, target, sizeof target);
  if (n == -2)
    return -1;
  memset(st, 0, sizeof *st);
  st->type = r.dir ? TB_FT_DIR : TB_FT_REG;
  st->inum = nm->meta_addr;
  st->size = r.dir ? 0 : r.size;
  st->nlink = r.nlink > 0 ? r.nlink : 1;
  if (r.has_si) {
    st->mtime = tb_ntfs_time(r.mtime, &st->mtime_ns);
    st->atime = tb_ntfs_time(r.atime, &st->atime_ns);
    st->ctime = tb_ntfs_time(r.ctime, &st->ctime_ns);
    st->crtime = tb_ntfs_time(r.crtime, NULL);
  }
  if (n >= 0) {
    st->type = TB_FT_LNK;
    st->size = (uint64_t)n;
  } else if (r.dir) {
    st->size = r.has_idxalloc ? r.idxalloc_size : 0;
  }
  size_t named;
  st->xdigest = ntfs_rec_digest(&r, &named);
  st->no_xattrs = named == 0;
  return 1;
}

/* TB_NTFS_MFT=check: OURS (tbi_ntfs_rec_stat's, with A) against libtsk's
 * KEEP and B; a difference is a bug of ours: abort, saying where. */
void tbi_ntfs_mft_check(struct vol *v, const TSK_FS_NAME *nm, int ours, const struct tb_istat *a,
                        bool keep, const struct tb_istat *b)
{
  if (ours < 0)
    return;
  const char *what = NULL;
  if ((ours == 1) != keep)
    what = "listed";
  else if (keep) {
    what = a->type != b->type                                                 ? "type"
           : a->inum != b->inum                                               ? "inode"
           : a->size != b->size                                               ? "size"
           : a->mode != b->mode                                               ? "mode"
           : a->uid != b->uid                                                 ? "uid"
           : a->gid != b->gid                                                 ? "gid"
           : a->nlink != b->nlink                                             ? "nlink"
           : a->mtime != b->mtime                                             ? "mtime"
           : a->atime != b->atime                                             ? "atime"
           : a->ctime != b->ctime                                             ? "ctime"
           : a->crtime != b->crtime                                           ? "crtime"
           : a->mtime_ns != b->mtime_ns                                       ? "mtime_ns"
           : a->atime_ns != b->atime_ns                                       ? "atime_ns"
           : a->ctime_ns != b->ctime_ns                                       ? "ctime_ns"
           : a->rdev_major != b->rdev_major || a->rdev_minor != b->rdev_minor ? "rdev"
           : a->xdigest != b->xdigest                                         ? "xdigest"
           : a->first_data != b->first_data                                   ? "first_data"
           : a->no_xattrs != b->no_xattrs                                     ? "no_xattrs"
                                                                              : NULL;
  }
  if (!what)
    return;
  fprintf(stderr,
          "tabula: TB_NTFS_MFT=check: %s: record %" PRIu64 " (%s): lib/ntfs-mft.c and libtsk "
          "differ in %s (listed %d/%d, size %" PRIu64 "/%" PRIu64 ", mtime %" PRId64 "/%" PRId64
          ", xdigest %" PRIx64 "/%" PRIx64 ")\n",
          v->pub.name, (uint64_t)nm->meta_addr, nm->name ? nm->name : "", what, ours == 1, keep,
          a->size, b->size, a->mtime, b->mtime, a->xdigest, b->xdigest);
  abort();
}

/* -- FAT and exFAT -- */

/* Where libtsk's inode numbers point: inode I is the 32-byte directory
 * entry I - 3 counted from the first data sector (FAT12/16: the root
 * directory; FAT32 and exFAT: the cluster heap), as in its tsk_fatfs.h. */
static bool fat_setup(struct vol *v)
{
  if (!v->fat_tried) {
    v->fat_tried = true;
    unsigned char b[512];
    if (!tbi_raw_read(v, 0, b, sizeof b))
      return false;
    if (memcmp(b + 3, "EXFAT   ", 8) == 0) {
      unsigned shift = b[108];
      if (shift >= 9 && shift <= 12) {
        v->fat_ssize = 1u << shift;
        v->fat_data_sect = tb_get_le32(b + 88);
      }
    } else {
      uint32_t bps = tb_get_le16(b + 11),
               fatsz = tb_get_le16(b + 22) ? tb_get_le16(b + 22) : tb_get_le32(b + 36);
      if (bps >= 512 && bps <= 4096 && !(bps & (bps - 1))) {
        v->fat_ssize = bps;
        v->fat_data_sect = tb_get_le16(b + 14) + (uint64_t)b[16] * fatsz;
      }
    }
    v->fat_per_sect = v->fat_ssize / 32;
  }
  return v->fat_ssize > 0;
}

static bool fat_dentry(struct vol *v, uint64_t inum, unsigned char e[32])
{
  if (inum < 3 || !fat_setup(v))
    return false;
  uint64_t sect = (inum - 3) / v->fat_per_sect + v->fat_data_sect;
  uint64_t off = (inum - 3) % v->fat_per_sect * 32;
  if (sect > UINT64_MAX / v->fat_ssize / 2)
    return false;
  return tbi_raw_read(v, sect * v->fat_ssize + off, e, 32);
}

/* A DOS date and time (2-second steps) as seconds since the epoch, UTC. */
static int64_t fat_time(uint16_t date, uint16_t time)
{
  unsigned m = (date >> 5) & 15, d = date & 31;
  if (m < 1 || m > 12 || d < 1)
    return 0;
  return days_from_civil(1980 + (date >> 9), m, d) * 86400 + (time >> 11) * 3600 +
         ((time >> 5) & 63) * 60 + (time & 31) * 2;
}

/* An exFAT timestamp, its 10 ms increment (0-199) and UTC offset (bit 7:
 * valid; 15-minute steps, signed 7 bits). */
static int64_t exfat_time(uint32_t ts, unsigned cs, unsigned utc, uint32_t *ns)
{
  int64_t t = fat_time((uint16_t)(ts >> 16), (uint16_t)ts);
  if (cs < 200) {
    t += cs / 100;
    if (ns)
      *ns = cs % 100 * 10000000u;
  }
  if (utc & 0x80) {
    int o = utc & 0x7F;
    if (o & 0x40)
      o -= 0x80;
    t -= (int64_t)o * 15 * 60;
  }
  return t;
}

/* False for the label and exFAT's system entries. */
static bool fat_fix(struct vol *v, const TSK_FS_NAME *nm, struct tb_istat *st)
{
  st->uid = st->gid = 0;
  st->mode = 0;
  unsigned char e[32];
  if (!nm || !fat_dentry(v, st->inum, e))
    return true;
  if (v->fs->ftype == TSK_FS_TYPE_EXFAT) {
    if (e[0] != 0x85) /* a file entry; 0x81 bitmap, 0x82 up-case, 0x83 label, 0xA0 GUID... */
      return false;
    st->mtime_ns = st->atime_ns = st->ctime_ns = 0;
    st->crtime = exfat_time(tb_get_le32(e + 8), e[20], e[22], NULL);
    st->mtime = exfat_time(tb_get_le32(e + 12), e[21], e[23], &st->mtime_ns);
    st->atime = exfat_time(tb_get_le32(e + 16), 0, e[24], NULL);
    st->ctime = st->mtime;
    st->ctime_ns = st->mtime_ns;
    return true;
  }
  if ((e[11] & 0x3F) != 0x0F && (e[11] & 0x08)) /* a volume label, not a long-name slot */
    return false;
  st->mtime = st->ctime = fat_time(tb_get_le16(e + 24), tb_get_le16(e + 22));
  st->mtime_ns = st->ctime_ns = st->atime_ns = 0;
  st->atime = fat_time(tb_get_le16(e + 18), 0);
  st->crtime = fat_time(tb_get_le16(e + 16), tb_get_le16(e + 14)) + e[13] / 100;
  return true;
}

/* libtsk drops the first slot of a long name over 195 characters (it
 * takes a first slot numbered above 15 for garbage), so a 241-character
 * name lost its first 13.  For such a name (NAME, libtsk's) the slots are
 * read back from the 8.3 entry INUM of directory DIR (sector runs, in
 * order) and checked against the 8.3 name's checksum.  A new name
 * (malloc'd) or NULL to keep libtsk's. */
char *tbi_fat_long_name(struct vol *v, TSK_FS_FILE *dir, uint64_t inum, const char *name)
{
  if (v->fs->ftype == TSK_FS_TYPE_EXFAT || strlen(name) < 190 || !dir || !fat_setup(v))
    return NULL;
  const TSK_FS_ATTR *a = tsk_fs_file_attr_get(dir);
  tsk_error_reset();
  unsigned char e[32];
  if (!a || !(a->flags & TSK_FS_ATTR_NONRES) || !fat_dentry(v, inum, e))
    return NULL;
  unsigned char sum = 0;
  for (int i = 0; i < 11; i++)
    sum = (unsigned char)(((sum & 1) << 7) + (sum >> 1) + e[i]);
  uint64_t sect = (inum - 3) / v->fat_per_sect + v->fat_data_sect;
  uint64_t slot = (inum - 3) % v->fat_per_sect;
  const TSK_FS_ATTR_RUN *run = a->nrd.run, *prev = NULL;
  for (int g = 0; run && g < 100000 && !(sect >= run->addr && sect < run->addr + run->len);
       g++, run = run->next)
    prev = run;
  if (!run)
    return NULL;
  unsigned char u16[20 * 26];
  size_t n = 0;
  for (unsigned k = 1; k <= 20; k++) {
    if (slot > 0) {
      slot--;
    } else if (sect > run->addr) {
      sect--, slot = v->fat_per_sect - 1;
    } else if (prev) {
      sect = prev->addr + prev->len - 1, slot = v->fat_per_sect - 1;
      const TSK_FS_ATTR_RUN *p = a->nrd.run, *pp = NULL;
      for (int g = 0; p && p != prev && g < 100000; g++, p = p->next)
        pp = p;
      run = prev, prev = pp;
    } else {
      return NULL;
    }
    uint64_t ino = (sect - v->fat_data_sect) * v->fat_per_sect + slot + 3;
    if (!fat_dentry(v, ino, e) || (e[11] & 0x3F) != 0x0F || e[13] != sum || (e[0] & 0x3F) != k)
      return NULL;
    static const unsigned char at[13] = {1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30};
    for (int i = 0; i < 13; i++, n += 2)
      memcpy(u16 + n, e + at[i], 2);
    if (e[0] & 0x40) {
      char *out = malloc(4 * 20 * 13 + 1);
      if (out && utf16_path(u16, n, out, 4 * 20 * 13 + 1) <= 0) {
        free(out);
        out = NULL;
      }
      return out;
    }
  }
  return NULL;
}

/* Correct ST (filled from F's metadata, the entry NM or NULL for a root)
 * where libtsk is wrong; false if the entry is not to be listed. */
bool tbi_fix_stat(struct tb_inspect *ins, struct vol *v, TSK_FS_FILE *f, const TSK_FS_NAME *nm,
                  struct tb_istat *st)
{
  TSK_FS_TYPE_ENUM t = v->fs->ftype;
  if (TSK_FS_TYPE_ISEXT(t)) {
    ext_fix(ins, v, st);
    return true;
  }
  if (TSK_FS_TYPE_ISNTFS(t))
    return ntfs_fix(v, f, nm, st);
  if (TSK_FS_TYPE_ISFAT(t) || t == TSK_FS_TYPE_EXFAT) {
    /* libtsk keeps the first cluster's address in content_ptr[0]. */
    const TSK_FS_META *m = f ? f->meta : NULL;
    st->first_data = m && m->content_ptr && m->content_len >= sizeof(TSK_DADDR_T)
                         ? ((const TSK_DADDR_T *)m->content_ptr)[0]
                         : 0;
    st->no_xattrs = true; /* tbi_do_xattrs lists ext's and NTFS's only */
    return fat_fix(v, nm, st);
  }
  st->no_xattrs = true;
  return true;
}

void tbi_collect_xattr(void *ctx, const char *name, const unsigned char *val, size_t len)
{
  struct tb_xattrs *x = ctx;
  /* X grows as a vector; struct tb_xattrs (inspect.h) keeps v and n. */
  TB_VECTOR(xattr_list, struct tb_xattr) grown = {x->v, x->n, x->cap};
  if (tb_vector_reserve(&grown, 1) == -1)
    return;
  x->v = grown.ptr;
  x->cap = grown.cap;
  char *n = strdup(name);
  unsigned char *b = malloc(len ? len : 1);
  if (!n || !b) {
    free(n);
    free(b);
    return;
  }
  memcpy(b, val, len);
  x->v[x->n++] = (struct tb_xattr){n, b, len};
}

void tb_xattrs_free(struct tb_xattrs *x)
{
  for (size_t i = 0; x && i < x->n; i++) {
    free(x->v[i].name);
    free(x->v[i].value);
  }
  if (x) {
    free(x->v);
    memset(x, 0, sizeof *x);
  }
}

/* The stat of entry I (name NM) of TD, as listings show it: its metadata, or
 * what the name says if that is unreadable.  False for libtsk's virtual
 * files and directories, which listings leave out. */
bool tbi_entry_stat(struct tb_inspect *ins, struct vol *v, TSK_FS_DIR *td, size_t i,
                    const TSK_FS_NAME *nm, struct tb_istat *st)
{
  *st = (struct tb_istat){.type = tbi_name_type(nm->type), .inum = nm->meta_addr, .nlink = 1};
  if (TSK_FS_TYPE_ISNTFS(v->fs->ftype) && nm->meta_addr < NTFS_FIRST_USER_RECORD)
    return false; /* a system file, whether or not its record reads */
  return tbi_file_stat(
      ins, v, ext_inline_refused(ins, v, nm->meta_addr) ? NULL : tsk_fs_dir_get(td, i), nm, st);
}

/* ST (with the name's type and inode) from file F, which is closed. */
bool tbi_file_stat(struct tb_inspect *ins, struct vol *v, TSK_FS_FILE *f, const TSK_FS_NAME *nm,
                   struct tb_istat *st)
{
  bool keep = true;
  if (f && f->meta) {
    if (f->meta->type == TSK_FS_META_TYPE_VIRT || f->meta->type == TSK_FS_META_TYPE_VIRT_DIR)
      keep = false;
    else {
      tbi_fill_stat(f->meta, st);
      keep = tbi_fix_stat(ins, v, f, nm, st);
    }
  }
  tsk_fs_file_close(f);
  tsk_error_reset();
  return keep;
}
const char *tb_file_type_name(enum tb_file_type t)
{
  switch (t) {
  case TB_FT_REG:
    return "file";
  case TB_FT_DIR:
    return "dir";
  case TB_FT_LNK:
    return "symlink";
  case TB_FT_CHR:
    return "chardev";
  case TB_FT_BLK:
    return "blockdev";
  case TB_FT_FIFO:
    return "fifo";
  case TB_FT_SOCK:
    return "socket";
  case TB_FT_OTHER:
    break;
  }
  return "other";
}
