/* SPDX-License-Identifier: BSD-3-Clause */
/* lib/inspect-ext.c: ext2/3 block maps past what libtsk builds.
 *
 * Regular files whose block map reaches the triple-indirect block are read
 * and enumerated here, pointer by pointer through libtsk's image cache, and
 * never handed to libtsk's map builder (it would build the whole map, for a
 * sparse file in quadratic time).  Runs on the worker only.
 */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "inspect-internal.h"

/* A regular ext2/3 file whose block map reaches the triple-indirect block
 * (over 4 GiB with 4 KiB blocks: a big file, a 5 GiB sparse one) is never
 * given to libtsk's map builder (tbi_needs_triple_indirect): this walker reads
 * it.  A file block is found by following at most three pointers from
 * i_block (libtsk's inode copy keeps the 15 pointers in content_ptr), each
 * read through libtsk's image cache, so a read costs the blocks it touches
 * and a sparse file its allocated blocks; nothing is built up front.  A
 * pointer past the volume's last block is damage: EIO.  Its runs (the dirty
 * map, the index) are enumerated within the file's size, each allocated
 * pointer once, checking the request's deadline as they go. */
#define EXT_NDIRECT 12
#define EXT_NPTRS 15

bool tbi_ext_bmapped(const struct vol *v, const TSK_FS_META *m)
{
  uint64_t size = m->size > 0 ? (uint64_t)m->size : 0;
  return m->type == TSK_FS_META_TYPE_REG && tbi_needs_triple_indirect(v, m, size) &&
         m->content_ptr && m->content_len >= EXT_NPTRS * sizeof(TSK_DADDR_T) &&
         v->fs->block_size >= 1024 && v->fs->block_size <= 65536;
}

/* The disk block holding file block LBLK (0: a hole); false if the map is
 * damaged or unreadable. */
static bool ext_bmap_block(struct vol *v, const TSK_FS_META *m, uint64_t lblk, uint64_t *pblk)
{
  const TSK_DADDR_T *ip = m->content_ptr;
  uint64_t bs = v->fs->block_size, per = bs / 4, idx[3], p;
  int depth;
  if (lblk < EXT_NDIRECT) {
    p = ip[lblk];
    depth = 0;
  } else if ((lblk -= EXT_NDIRECT) < per) {
    p = ip[12];
    depth = 1;
    idx[0] = lblk;
  } else if ((lblk -= per) < per * per) {
    p = ip[13];
    depth = 2;
    idx[0] = lblk / per;
    idx[1] = lblk % per;
  } else if ((lblk -= per * per) < per * per * per) {
    p = ip[14];
    depth = 3;
    idx[0] = lblk / (per * per);
    idx[1] = lblk / per % per;
    idx[2] = lblk % per;
  } else {
    return false;
  }
  for (int d = 0; d < depth && p != 0; d++) {
    unsigned char b[4];
    if (p > v->fs->last_block || !tbi_raw_read(v, p * bs + idx[d] * 4, b, sizeof b))
      return false;
    p = tb_get_le32(b);
  }
  if (p > v->fs->last_block)
    return false;
  *pblk = p;
  return true;
}

/* LEN bytes of the file at OFF (clipped to its size), holes as zeros;
 * contiguous blocks are read at once. */
ssize_t tbi_ext_bmap_pread(struct tb_inspect *ins, struct vol *v, const TSK_FS_META *m, char *buf,
                           size_t len, uint64_t off)
{
  uint64_t size = m->size > 0 ? (uint64_t)m->size : 0, bs = v->fs->block_size;
  if (off >= size)
    return 0;
  if (len > size - off)
    len = (size_t)(size - off);
  size_t done = 0;
  while (done < len) {
    uint64_t o = off + done, lblk = o / bs, p, q;
    size_t n = (size_t)(bs - o % bs);
    if (n > len - done)
      n = len - done;
    if (!ext_bmap_block(v, m, lblk, &p))
      return tbi_tsk_fail(ins, "cannot read file (damaged block map)");
    /* Extend over the next blocks while they follow on the disk (or
     * stay holes). */
    for (uint64_t k = 1; done + n < len; k++) {
      if (!ext_bmap_block(v, m, lblk + k, &q) || (p ? q != p + k : q != 0))
        break;
      n += len - done - n < bs ? len - done - n : (size_t)bs;
    }
    if (p == 0)
      memset(buf + done, 0, n);
    else if (!tbi_raw_read(v, p * bs + o % bs, buf + done, n))
      return tbi_tsk_fail(ins, "cannot read file");
    done += n;
  }
  return (ssize_t)done;
}

struct bmap_walk {
  struct tb_inspect *ins;
  struct vol *v;
  uint64_t nblk, size, visits;
  unsigned char *buf[3];
  bmap_run_fn fn;
  void *ctx;
  bool stop;
  uint64_t run_l, run_p, run_n; /* the data run being gathered */
};

static void bmap_flush(struct bmap_walk *w)
{
  if (w->run_n == 0 || w->stop)
    return;
  uint64_t bs = w->v->fs->block_size, foff = w->run_l * bs, len = w->run_n * bs;
  if (len > w->size - foff)
    len = w->size - foff;
  uint64_t d0 = w->v->pub.offset + w->run_p * bs;
  w->stop = w->fn(w->ctx, foff, d0, d0 + len);
  w->run_n = 0;
}

static void bmap_tree(struct bmap_walk *w, uint64_t p, int depth, uint64_t lbase)
{
  if (w->stop || p == 0 || lbase >= w->nblk)
    return;
  uint64_t bs = w->v->fs->block_size, per = bs / 4;
  if (p > w->v->fs->last_block || ((++w->visits & 4095) == 0 && tbi_past_deadline(w->ins))) {
    w->stop = true; /* damaged, or out of time: the runs so far */
    return;
  }
  if (depth == 0) {
    if (w->run_n > 0 && w->run_l + w->run_n == lbase && w->run_p + w->run_n == p) {
      w->run_n++;
      return;
    }
    bmap_flush(w);
    w->run_l = lbase;
    w->run_p = p;
    w->run_n = 1;
    return;
  }
  uint64_t d0 = w->v->pub.offset + p * bs;
  unsigned char *b = w->buf[depth - 1];
  if (w->fn(w->ctx, UINT64_MAX, d0, d0 + bs) || !tbi_raw_read(w->v, p * bs, b, bs)) {
    w->stop = true;
    return;
  }
  uint64_t span = 1;
  for (int d = 1; d < depth; d++)
    span *= per;
  for (uint64_t i = 0; i < per && !w->stop && lbase + i * span < w->nblk; i++)
    bmap_tree(w, tb_get_le32(b + 4 * i), depth - 1, lbase + i * span);
}

void tbi_ext_bmap_runs(struct tb_inspect *ins, struct vol *v, const TSK_FS_META *m, bmap_run_fn fn,
                       void *ctx)
{
  uint64_t bs = v->fs->block_size, per = bs / 4;
  struct bmap_walk w = {.ins = ins, .v = v, .fn = fn, .ctx = ctx};
  w.size = m->size > 0 ? (uint64_t)m->size : 0;
  w.nblk = (w.size + bs - 1) / bs;
  unsigned char *mem = malloc(3 * bs);
  if (!mem)
    return;
  for (int d = 0; d < 3; d++)
    w.buf[d] = mem + d * bs;
  const TSK_DADDR_T *ip = m->content_ptr;
  for (uint64_t i = 0; i < EXT_NDIRECT && !w.stop; i++)
    bmap_tree(&w, ip[i], 0, i);
  bmap_tree(&w, ip[12], 1, EXT_NDIRECT);
  bmap_tree(&w, ip[13], 2, EXT_NDIRECT + per);
  bmap_tree(&w, ip[14], 3, EXT_NDIRECT + per + per * per);
  bmap_flush(&w);
  free(mem);
  tsk_error_reset();
}
