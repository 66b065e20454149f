/* SPDX-License-Identifier: BSD-3-Clause */
/* lib/inspect-file.c: files: content maps, reads, links, attributes.
 *
 * A file is mapped at open when its content is plain runs of the volume;
 * its reads then go to the disk from the caller's thread without libtsk
 * (mapped_pread).  Everything else, and readlink, xattrs and the file
 * offsets of dirty bytes (franges), are jobs the worker runs.  The detail is
 * below.
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inspect-internal.h"

/* A file whose content is plain runs of the volume (ext extents or block
 * maps, NTFS non-resident uncompressed data, FAT chains: what libtsk's
 * tsk_fs_attr_read reads run by run) is mapped once at open, on the
 * worker: each run's file offset, length and disk offset, sparse and
 * uninitialised parts as zeros (DOFF FRUN_ZERO), exactly as libtsk reads
 * them.  Its reads then go to the disk from the caller's thread, one
 * request per disk-contiguous stretch, without the worker (whose one job
 * at a time would serialise every reader of the snapshot, listings
 * included) and without libtsk: a content read only follows the map, so
 * no damage can make it compute, and a read of a 1 MiB FUSE request is one
 * NBD request into the caller's buffer.  Everything else (resident and
 * compressed data, ext2/3 files past the triple-indirect block, maps
 * that do not cover the file in order) reads through libtsk on the
 * worker. */

TB_VECTOR(fruns, struct frun);

/* Append [FOFF, FOFF+LEN) at DOFF to the map, merging with the last run
 * when it continues it.  False when the map is full (FRUN_MAX runs) or out
 * of memory. */
static bool frun_add(struct fruns *runs, uint64_t foff, uint64_t len, uint64_t doff)
{
  if (len == 0)
    return true;
  if (runs->len > 0) {
    struct frun *last = &runs->ptr[runs->len - 1];
    if (last->foff + last->len == foff &&
        (last->doff == FRUN_ZERO ? doff == FRUN_ZERO
                                 : doff != FRUN_ZERO && last->doff + last->len == doff)) {
      last->len += len;
      return true;
    }
  }
  return runs->len < FRUN_MAX && tb_vector_push(runs, ((struct frun){foff, len, doff})) == 0;
}

/* The content map of F on volume V into J (runs, n_runs), or nothing if
 * its content is not plain runs (see above). */
static void map_file(struct tb_inspect *ins, struct vol *v, TSK_FS_FILE *f, struct job *j)
{
  TSK_FS_INFO *fs = v->fs;
  if (tbi_ext_bmapped(v, f->meta) || (fs->flags & TSK_FS_INFO_FLAG_ENCRYPTED))
    return;
  const TSK_FS_ATTR *a = tsk_fs_file_attr_get(f);
  tsk_error_reset();
  uint64_t bs = fs->block_size, size = f->meta->size > 0 ? (uint64_t)f->meta->size : 0;
  if (!a || !(a->flags & TSK_FS_ATTR_NONRES) || (a->flags & (TSK_FS_ATTR_COMP | TSK_FS_ATTR_ENC)) ||
      a->size < 0 || (uint64_t)a->size != size || size == 0 || bs == 0 || bs > (1u << 20))
    return;
  uint64_t init = a->nrd.initsize > 0 ? (uint64_t)a->nrd.initsize : 0;
  TSK_DADDR_T last = fs->last_block_act > 0 ? fs->last_block_act : fs->last_block;
  uint64_t disk = tb_disk_size(ins->disk), base = fs->offset > 0 ? (uint64_t)fs->offset : 0;
  if (base >= disk)
    return;
  struct fruns runs = {0};
  uint64_t next = 0; /* the file byte the next run must start at */
  bool ok = true;
  for (const TSK_FS_ATTR_RUN *r = a->nrd.run; r && ok && next < size; r = r->next) {
    if (r->len == 0 || r->offset > UINT64_MAX / bs || r->len > UINT64_MAX / bs ||
        r->offset * bs != next) {
      ok = false; /* a map out of order, with a gap or absurd */
      break;
    }
    uint64_t len = r->len * bs;
    if (len > size - next)
      len = size - next;
    bool zero = r->flags & (TSK_FS_ATTR_RUN_FLAG_SPARSE | TSK_FS_ATTR_RUN_FLAG_FILLER);
    if (!zero && (r->flags & TSK_FS_ATTR_RUN_FLAG_ENCRYPTED))
      ok = false;
    else if (!zero && (r->addr > last || r->len > last + 1 - r->addr ||
                       r->addr > (disk - base) / bs || r->len * bs > disk - base - r->addr * bs))
      ok = false; /* past the volume or the disk: libtsk says what is wrong */
    else if (zero || next >= init)
      ok = frun_add(&runs, next, len, FRUN_ZERO);
    else {
      /* Past the initialised size, zeros (NTFS valid data length). */
      uint64_t data = init - next < len ? init - next : len;
      ok = frun_add(&runs, next, data, base + r->addr * bs) &&
           frun_add(&runs, next + data, len - data, FRUN_ZERO);
    }
    next += len;
  }
  if (ok && next == size) {
    j->runs = runs.ptr; /* the job's: freed with it */
    j->n_runs = runs.len;
  } else {
    tb_vector_free(&runs);
  }
}

/* The first run of mapped file F ending after OFF (n_runs if none). */
static size_t run_at(const struct tb_ifile *f, uint64_t off)
{
  size_t lo = 0, hi = f->n_runs;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (f->runs[mid].foff + f->runs[mid].len <= off)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* Read from a mapped file (above), on the caller's thread. */
ssize_t tbi_mapped_pread(struct tb_ifile *f, char *buf, size_t len, uint64_t off)
{
  size_t done = 0;
  for (size_t i = run_at(f, off); i < f->n_runs && done < len; i++) {
    const struct frun *r = &f->runs[i];
    uint64_t o = off + done, in = o - r->foff;
    size_t n = r->len - in < len - done ? (size_t)(r->len - in) : len - done;
    if (r->doff == FRUN_ZERO)
      memset(buf + done, 0, n);
    else if (tb_disk_pread(f->ins->disk, buf + done, n, r->doff + in) < 0)
      return -1;
    done += n;
  }
  if (done < len) {
    errno = EIO;
    return tb_error("%s: file map ends before its size", tb_disk_name(f->ins->disk));
  }
  return (ssize_t)done;
}

size_t tb_ifile_local_run(struct tb_ifile *f, uint64_t off, size_t len, int *fd, uint64_t *fd_off)
{
  int dfd = tb_disk_local_fd(f->ins->disk);
  if (dfd == -1 || !f->runs || off >= f->size)
    return 0;
  size_t i = run_at(f, off);
  if (i == f->n_runs || f->runs[i].foff > off || f->runs[i].doff == FRUN_ZERO)
    return 0;
  const struct frun *r = &f->runs[i];
  uint64_t in = off - r->foff, n = r->len - in;
  if (n > len)
    n = len;
  if (n > f->size - off)
    n = f->size - off;
  if (r->doff + in > tb_disk_size(f->ins->disk) || n > tb_disk_size(f->ins->disk) - (r->doff + in))
    return 0; /* past the disk's end: tb_ifile_pread says so */
  *fd = dfd;
  *fd_off = r->doff + in;
  return (size_t)n;
}

static TSK_FS_FILE *open_meta(struct tb_inspect *ins, struct vol *v, uint64_t inum)
{
  TSK_FS_FILE *f = tbi_open_meta(ins, v, inum);
  if (!f || !f->meta) {
    tsk_fs_file_close(f);
    tbi_tsk_fail(ins, "cannot read file metadata");
    return NULL;
  }
  if (!tbi_size_plausible(v, f->meta)) {
    tsk_fs_file_close(f);
    tsk_error_reset();
    tbi_tsk_fail(ins, "implausible file size (damaged filesystem?)");
    return NULL;
  }
  return f;
}

int tbi_do_readlink(struct tb_inspect *ins, struct job *j)
{
  struct vol *v = tbi_get_vol(ins, j->vol);
  struct tb_istat st;
  int r = v ? tbi_resolve(ins, v, j->path, &st) : -1;
  if (r == 0 && st.type != TB_FT_LNK) {
    errno = EINVAL;
    r = tb_error("%s: not a symbolic link", j->path);
  }
  TSK_FS_FILE *f = r == 0 ? open_meta(ins, v, st.inum) : NULL;
  if (r == 0 && !f)
    r = -1;
  if (r == 0 && j->len > 0) {
    if (TSK_FS_TYPE_ISNTFS(v->fs->ftype) && tbi_ntfs_link(f, j->buf, j->len) >= 0) {
      /* an NTFS reparse point or Interix symlink (see inspect-meta.c) */
    } else if (f->meta->link && *f->meta->link) {
      snprintf(j->buf, j->len, "%s", f->meta->link);
    } else {
      size_t want = st.size < j->len - 1 ? st.size : j->len - 1;
      ssize_t got = want ? tsk_fs_file_read(f, 0, j->buf, want, TSK_FS_FILE_READ_FLAG_NONE) : 0;
      if (got < 0)
        r = tbi_tsk_fail(ins, "cannot read symbolic link");
      else
        j->buf[got] = '\0';
    }
  }
  tsk_fs_file_close(f);
  return r;
}

int tbi_do_xattrs(struct tb_inspect *ins, struct job *j)
{
  struct vol *v = tbi_get_vol(ins, j->vol);
  struct tb_istat st;
  if (!v || tbi_resolve(ins, v, j->path, &st) < 0)
    return -1;
  if (!(j->xattrs = calloc(1, sizeof *j->xattrs))) {
    errno = ENOMEM;
    return tb_error("out of memory");
  }
  TSK_FS_TYPE_ENUM t = v->fs->ftype;
  if (TSK_FS_TYPE_ISEXT(t)) {
    unsigned char ino[1024];
    uint64_t off;
    uint32_t isz;
    if (tbi_ext_inode_off(ins, v, st.inum, &off, &isz) && isz <= sizeof ino &&
        tbi_raw_read(v, off, ino, isz))
      tbi_ext_xattrs(v, ino, isz, tbi_collect_xattr, j->xattrs);
  } else if (TSK_FS_TYPE_ISNTFS(t)) {
    TSK_FS_FILE *f = open_meta(ins, v, st.inum);
    if (!f)
      return -1;
    tbi_ntfs_streams(f, tbi_collect_xattr, j->xattrs);
    tsk_fs_file_close(f);
  }
  return 0;
}

/* The file offsets of PATH's content (its default data stream) whose bytes
 * lie in the job's dirty ranges; a compressed stream is taken whole. */
struct franges_ctx {
  struct job *j;
  int r;
};

/* A data run of a file our ext walker maps: its dirty part, as file offsets. */
static bool franges_run(void *ctx, uint64_t foff, uint64_t d0, uint64_t d1)
{
  struct franges_ctx *fc = ctx;
  struct job *j = fc->j;
  if (foff == UINT64_MAX)
    return false; /* an indirect block: no file offset */
  for (size_t k = tbi_ranges_lower_bound(&j->dirty, d0);
       k < j->dirty.n && j->dirty.v[k].off < d1 && fc->r == 0; k++) {
    uint64_t x0 = j->dirty.v[k].off > d0 ? j->dirty.v[k].off : d0;
    uint64_t e = j->dirty.v[k].off + j->dirty.v[k].len, x1 = e < d1 ? e : d1;
    fc->r = tb_ranges_add(&j->franges, foff + (x0 - d0), x1 - x0);
  }
  return fc->r != 0;
}

int tbi_do_franges(struct tb_inspect *ins, struct job *j)
{
  struct vol *v = tbi_get_vol(ins, j->vol);
  struct tb_istat st;
  if (!v || tbi_resolve(ins, v, j->path, &st) < 0)
    return -1;
  TSK_FS_FILE *f = open_meta(ins, v, st.inum);
  if (!f)
    return -1;
  if (tbi_ext_bmapped(v, f->meta)) {
    struct franges_ctx fc = {j, 0};
    tbi_ext_bmap_runs(ins, v, f->meta, franges_run, &fc);
    tsk_fs_file_close(f);
    return fc.r;
  }
  const TSK_FS_ATTR *a = tsk_fs_file_attr_get(f);
  uint64_t bs = v->fs->block_size;
  int r = 0, guard = 0;
  if (a && (a->flags & TSK_FS_ATTR_NONRES) && a->size > 0 && (a->flags & TSK_FS_ATTR_COMP))
    r = tb_ranges_add(&j->franges, 0, (uint64_t)a->size);
  else if (a && (a->flags & TSK_FS_ATTR_NONRES) && a->size > 0) {
    uint64_t asize = (uint64_t)a->size;
    for (const TSK_FS_ATTR_RUN *run = a->nrd.run; run && r == 0 && guard < 1000000;
         run = run->next, guard++) {
      if ((run->flags & (TSK_FS_ATTR_RUN_FLAG_FILLER | TSK_FS_ATTR_RUN_FLAG_SPARSE)) ||
          run->len == 0 || run->addr > UINT64_MAX / bs / 2 || run->len > UINT64_MAX / bs / 2 ||
          run->offset > UINT64_MAX / bs / 2 || run->offset * bs >= asize)
        continue;
      uint64_t foff = run->offset * bs, len = run->len * bs;
      if (len > asize - foff)
        len = asize - foff;
      uint64_t d0 = v->pub.offset + run->addr * bs, d1 = d0 + len;
      for (size_t k = tbi_ranges_lower_bound(&j->dirty, d0);
           k < j->dirty.n && j->dirty.v[k].off < d1 && r == 0; k++) {
        uint64_t x0 = j->dirty.v[k].off > d0 ? j->dirty.v[k].off : d0;
        uint64_t e = j->dirty.v[k].off + j->dirty.v[k].len, x1 = e < d1 ? e : d1;
        r = tb_ranges_add(&j->franges, foff + (x0 - d0), x1 - x0);
      }
    }
  }
  tsk_fs_file_close(f);
  tsk_error_reset();
  return r;
}

int tbi_do_open_file(struct tb_inspect *ins, struct job *j)
{
  struct vol *v = tbi_get_vol(ins, j->vol);
  if (!v || tbi_resolve(ins, v, j->path, &j->st) < 0)
    return -1;
  if (j->st.type == TB_FT_DIR) {
    errno = EISDIR;
    return tb_error("%s: is a directory", j->path);
  }
  j->file = open_meta(ins, v, j->st.inum);
  if (!j->file)
    return -1;
  j->st.size = j->file->meta->size > 0 ? (uint64_t)j->file->meta->size : 0;
  map_file(ins, v, j->file, j);
  return 0;
}

ssize_t tbi_do_pread(struct tb_inspect *ins, struct job *j)
{
  struct vol *v = tbi_get_vol(ins, j->vol);
  if (v && v->fs == j->file->fs_info && tbi_ext_bmapped(v, j->file->meta))
    return tbi_ext_bmap_pread(ins, v, j->file->meta, j->buf, j->len, j->off);
  ssize_t r =
      tsk_fs_file_read(j->file, (TSK_OFF_T)j->off, j->buf, j->len, TSK_FS_FILE_READ_FLAG_NONE);
  if (r < 0)
    tbi_tsk_fail(ins, "cannot read file");
  return r;
}

/* Release files their owners closed (a list through next_orphan). */
void tbi_close_files(struct tb_ifile *f)
{
  while (f) {
    struct tb_ifile *next = f->next_orphan;
    tsk_fs_file_close(f->file);
    free(f->runs);
    free(f);
    f = next;
  }
}
