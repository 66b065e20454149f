/* SPDX-License-Identifier: BSD-3-Clause */
/* inspect-ext-stat: an ext listing's stat from the raw inode
 * (tbi_ext_entry_stat, lib/inspect-meta.c) against libtsk's way
 * (tsk_fs_file_open_meta + tbi_file_stat), for every inode of every ext
 * volume of an image, allocated or not.
 *
 *   inspect-ext-stat IMAGE
 *
 * Prints a DIFF line for each inode where both ways answer and any field
 * differs, then "inodes N raw R libtsk L": R inodes answered from the raw
 * inode, L left to libtsk (inline data, block symlinks, the orphan
 * directory).  Exit 0 if no field differs, 1 if one does, 2 on an error.
 * Built with every lib/inspect-*.c in one translation unit (as the
 * geometry fuzzers), so it reaches the library's internal functions; it
 * calls libtsk only while the handle's worker is idle. */
#include "fuzz/inspect-all.h"

static int same(const struct tb_istat *a, const struct tb_istat *b)
{
  return a->type == b->type && a->inum == b->inum && a->size == b->size && a->mode == b->mode &&
         a->uid == b->uid && a->gid == b->gid && a->nlink == b->nlink && a->mtime == b->mtime &&
         a->atime == b->atime && a->ctime == b->ctime && a->crtime == b->crtime &&
         a->mtime_ns == b->mtime_ns && a->atime_ns == b->atime_ns && a->ctime_ns == b->ctime_ns &&
         a->rdev_major == b->rdev_major && a->rdev_minor == b->rdev_minor &&
         a->xdigest == b->xdigest && a->first_data == b->first_data && a->no_xattrs == b->no_xattrs;
}

static void show(const char *what, uint64_t inum, const struct tb_istat *s)
{
  printf("  %s %" PRIu64 ": type %d size %" PRIu64 " mode %o uid %u gid %u nlink %u mtime %" PRId64
         ".%09u atime %" PRId64 ".%09u ctime %" PRId64 ".%09u crtime %" PRId64
         " rdev %u:%u xdigest %" PRIx64 "\n",
         what, inum, (int)s->type, s->size, s->mode, s->uid, s->gid, s->nlink, s->mtime,
         s->mtime_ns, s->atime, s->atime_ns, s->ctime, s->ctime_ns, s->crtime, s->rdev_major,
         s->rdev_minor, s->xdigest);
}

int main(int argc, char **argv)
{
  if (argc != 2) {
    fprintf(stderr, "usage: inspect-ext-stat IMAGE\n");
    return 2;
  }
  struct tb_disk *d = tb_disk_open_file(argv[1]);
  struct tb_inspect *ins = d ? tb_inspect_open(d) : NULL;
  tb_disk_unref(d);
  if (!ins) {
    fprintf(stderr, "inspect-ext-stat: %s\n", tb_errmsg());
    return 2;
  }
  uint64_t n = 0, raw = 0, tsk = 0, diffs = 0;
  for (size_t i = 0; i < ins->n_vols; i++) {
    struct vol *v = &ins->vols[i];
    if (!TSK_FS_TYPE_ISEXT(v->fs->ftype))
      continue;
    for (uint64_t inum = v->fs->first_inum; inum <= v->fs->last_inum; inum++) {
      TSK_FS_NAME nm = {.name = "x", .meta_addr = inum, .flags = TSK_FS_NAME_FLAG_ALLOC};
      struct tb_istat a = {.type = TB_FT_OTHER, .inum = inum, .nlink = 1}, b;
      bool kept = tbi_file_stat(ins, v, tsk_fs_file_open_meta(v->fs, NULL, inum), &nm, &a);
      n++;
      if (!tbi_ext_entry_stat(ins, v, inum, &b)) {
        tsk++;
        continue;
      }
      raw++;
      if (!kept || !same(&a, &b)) {
        diffs++;
        printf("DIFF %s inode %" PRIu64 "%s\n", v->pub.name, inum,
               kept ? "" : ": libtsk leaves it out");
        show("libtsk", inum, &a);
        show("raw   ", inum, &b);
      }
    }
  }
  printf("inodes %" PRIu64 " raw %" PRIu64 " libtsk %" PRIu64 "\n", n, raw, tsk);
  tb_inspect_close(ins);
  return diffs ? 1 : 0;
}
