/* SPDX-License-Identifier: BSD-3-Clause */
/* lib/inspect-handle.c: an inspection handle and what libtsk sees of it.
 *
 * libtsk reads the disk through img_read (tsk_img_open_external), which
 * enforces the deadline of the job in progress: past it, or once the job's
 * caller gave up, every read fails and libtsk unwinds.  At open (on the
 * worker, do_open) the volume system or an unpartitioned filesystem is
 * found and each recognised filesystem is opened once, with its root's stat;
 * teardown closes them and frees the caches.  Also here: libtsk's types and
 * metadata made into tb_istat, and the callback section that keeps a
 * caller's callback from running after the caller gave up.
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "inspect-internal.h"

#ifdef TB_STATIC_TSK
/* libtsk linked statically (configure --enable-static-tsk): its image
 * opener (img_open.o, which holds tsk_img_open_external and tsk_img_close)
 * names the openers of the image formats it was built with, and each of
 * those pulls in its library: libewf, libvmdk, libvhdi, afflib (and curl,
 * Kerberos, LDAP, ICU behind them), 45 shared objects whose relocation was
 * 10 of the 12.5 ms a tabula-fuse start cost, most of a mount's time to its
 * first listing.  We only ever hand libtsk our own reader
 * (tsk_img_open_external), so these stand in for the format openers: the
 * archive's are never pulled.  They say "not this format" if reached. */
TSK_IMG_INFO *ewf_open(int n, const TSK_TCHAR *const images[], unsigned int ssize);
TSK_IMG_INFO *aff_open(const TSK_TCHAR *const images[], unsigned int ssize);
TSK_IMG_INFO *vmdk_open(int n, const TSK_TCHAR *const images[], unsigned int ssize);
TSK_IMG_INFO *vhdi_open(int n, const TSK_TCHAR *const images[], unsigned int ssize);
TSK_IMG_INFO *ewf_open(int n, const TSK_TCHAR *const images[], unsigned int ssize)
{
  return NULL;
}
TSK_IMG_INFO *aff_open(const TSK_TCHAR *const images[], unsigned int ssize)
{
  return NULL;
}
TSK_IMG_INFO *vmdk_open(int n, const TSK_TCHAR *const images[], unsigned int ssize)
{
  return NULL;
}
TSK_IMG_INFO *vhdi_open(int n, const TSK_TCHAR *const images[], unsigned int ssize)
{
  return NULL;
}
#endif

/* Handles whose worker overran a deadline and still runs, process-wide. */
atomic_int tbi_n_stuck;

/* What libtsk sees: its image header first, then our handle. */
struct tsk_ext_img {
  TSK_IMG_INFO info;
  struct tb_inspect *ins;
};

int64_t tbi_mono_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* On the worker: is the job in progress out of time, or given up? */
bool tbi_past_deadline(struct tb_inspect *ins)
{
  if (ins->deadline_hit)
    return true;
  if (atomic_load(&ins->giving_up) || tbi_mono_ms() > ins->deadline_ms ||
      (ins->listing_ahead && atomic_load(&ins->closing_now)))
    ins->deadline_hit = true;
  return ins->deadline_hit;
}

/* The disk's last TAIL_BYTES are read whole at the first read that falls
 * in them, and kept: where sector 1 holds no GPT header (an MBR disk, an
 * unpartitioned one), libtsk's detection looks for a backup GPT header in
 * the last sector at each sector size from 512 to 8192, five round trips
 * of an open's dozen, one now. */
#define TAIL_BYTES (64u << 10)

static ssize_t img_read(TSK_IMG_INFO *img, TSK_OFF_T off, char *buf, size_t len)
{
  struct tb_inspect *ins = ((struct tsk_ext_img *)img)->ins;
  uint64_t size = tb_disk_size(ins->disk);
  if (off < 0 || (uint64_t)off >= size)
    return 0;
  if (len > size - (uint64_t)off)
    len = size - (uint64_t)off;
  if (tbi_past_deadline(ins)) {
    tsk_error_reset();
    tsk_error_set_errno(TSK_ERR_IMG_READ);
    tsk_error_set_errstr("time budget of the request spent");
    return -1;
  }
  uint64_t tail_at = size > TAIL_BYTES ? size - TAIL_BYTES : 0;
  if ((uint64_t)off >= tail_at && !ins->tail && (ins->tail = malloc(size - tail_at))) {
    if (tb_disk_pread(ins->disk, ins->tail, size - tail_at, tail_at) != 0) {
      free(ins->tail);
      ins->tail = NULL; /* tried again at the next read there */
    }
  }
  if ((uint64_t)off >= tail_at && ins->tail) {
    memcpy(buf, ins->tail + ((uint64_t)off - tail_at), len);
    return (ssize_t)len;
  }
  if (tb_disk_pread(ins->disk, buf, len, (uint64_t)off) < 0) {
    tsk_error_reset();
    tsk_error_set_errno(TSK_ERR_IMG_READ);
    tsk_error_set_errstr("%s", tb_errmsg());
    return -1;
  }
  return (ssize_t)len;
}

static void img_close(TSK_IMG_INFO *img)
{
  free(img);
}

static void img_stat(TSK_IMG_INFO *img, FILE *f)
{
  fprintf(f, "tabula disk\n");
}

/* Fail with EIO, naming what failed and libtsk's (or the deadline's) reason. */
int tbi_tsk_fail(struct tb_inspect *ins, const char *what)
{
  const char *why =
      ins->deadline_hit ? "the request took too long (damaged filesystem?)" : tsk_error_get();
  tb_error("%s: %s: %s", tb_disk_name(ins->disk), what, why && *why ? why : "unreadable");
  errno = EIO;
  return -1;
}

/* On the worker: call the caller's callback, unless the caller gave up.
 * Returns -1 (EIO) then, else enters the callback section: leave it with
 * tbi_callback_leave(). */
int tbi_callback_enter(struct tb_inspect *ins)
{
  pthread_mutex_lock(&ins->cb_mu);
  if (atomic_load(&ins->running->abandoned)) {
    pthread_mutex_unlock(&ins->cb_mu);
    errno = EIO;
    return tb_error("%s: the request was given up", tb_disk_name(ins->disk));
  }
  return 0;
}

void tbi_callback_leave(struct tb_inspect *ins)
{
  pthread_mutex_unlock(&ins->cb_mu);
}

void tb_inspect_set_budget(struct tb_inspect *ins, int64_t ms)
{
  atomic_store(&ins->budget_ms, ms > 0 ? ms : TB_INSPECT_DEFAULT_BUDGET_MS);
}

bool tb_inspect_stuck(struct tb_inspect *ins)
{
  pthread_mutex_lock(&ins->mu);
  bool stuck = ins->stuck;
  pthread_mutex_unlock(&ins->mu);
  return stuck;
}

struct tb_disk *tb_inspect_disk(struct tb_inspect *ins)
{
  return ins->disk;
}

size_t tb_inspect_n_volumes(const struct tb_inspect *ins)
{
  return ins->n_vols;
}

const struct tb_volume *tb_inspect_volume(const struct tb_inspect *ins, size_t i)
{
  return i < ins->n_vols ? &ins->vols[i].pub : NULL;
}

int tb_inspect_find_volume(const struct tb_inspect *ins, const char *name)
{
  for (size_t i = 0; i < ins->n_vols; i++)
    if (strcmp(ins->vols[i].pub.name, name) == 0)
      return (int)i;
  return -1;
}

/* -- metadata -- */

static enum tb_file_type meta_type(TSK_FS_META_TYPE_ENUM t)
{
  switch (t) {
  case TSK_FS_META_TYPE_REG:
    return TB_FT_REG;
  case TSK_FS_META_TYPE_DIR:
    return TB_FT_DIR;
  case TSK_FS_META_TYPE_LNK:
    return TB_FT_LNK;
  case TSK_FS_META_TYPE_CHR:
    return TB_FT_CHR;
  case TSK_FS_META_TYPE_BLK:
    return TB_FT_BLK;
  case TSK_FS_META_TYPE_FIFO:
    return TB_FT_FIFO;
  case TSK_FS_META_TYPE_SOCK:
    return TB_FT_SOCK;
  default:
    return TB_FT_OTHER;
  }
}

enum tb_file_type tbi_name_type(TSK_FS_NAME_TYPE_ENUM t)
{
  switch (t) {
  case TSK_FS_NAME_TYPE_REG:
    return TB_FT_REG;
  case TSK_FS_NAME_TYPE_DIR:
    return TB_FT_DIR;
  case TSK_FS_NAME_TYPE_LNK:
    return TB_FT_LNK;
  default:
    return TB_FT_OTHER;
  }
}

void tbi_fill_stat(const TSK_FS_META *m, struct tb_istat *st)
{
  memset(st, 0, sizeof *st);
  st->type = meta_type(m->type);
  st->inum = m->addr;
  st->size = m->size > 0 ? (uint64_t)m->size : 0;
  st->mode = (uint32_t)m->mode & 07777;
  st->uid = (uint32_t)m->uid;
  st->gid = (uint32_t)m->gid;
  st->nlink = m->nlink > 0 ? (uint32_t)m->nlink : 1;
  st->mtime = m->mtime;
  st->atime = m->atime;
  st->ctime = m->ctime;
  st->crtime = m->crtime;
  st->mtime_ns = m->mtime_nano < 1000000000 ? m->mtime_nano : 0;
  st->atime_ns = m->atime_nano < 1000000000 ? m->atime_nano : 0;
  st->ctime_ns = m->ctime_nano < 1000000000 ? m->ctime_nano : 0;
}

/* -- opening -- */

static const char *fs_type_name(TSK_FS_TYPE_ENUM t)
{
  if (TSK_FS_TYPE_ISNTFS(t))
    return "ntfs";
  if (t == TSK_FS_TYPE_EXFAT)
    return "exfat";
  const char *n = tsk_fs_type_toname(t);
  return n ? n : "unknown";
}

/* Partition number as Linux counts it: table slots for MBR primaries and GPT
 * entries, 5, 6... for MBR logical partitions (one per extended table). */
static int partition_number(const TSK_VS_INFO *vs, const TSK_VS_PART_INFO *p)
{
  if (vs->vstype == TSK_VS_TYPE_DOS && p->table_num > 0)
    return 4 + p->table_num;
  return p->slot_num + 1;
}

static int add_volume(struct tb_inspect *ins, TSK_FS_INFO *fs, int partno, uint64_t offset,
                      uint64_t length)
{
  /* The volumes grow as a vector; the handle keeps vols and n_vols, the
   * names every inspect-*.c file reads. */
  TB_VECTOR(vols, struct vol) grown = {ins->vols, ins->n_vols, ins->cap_vols};
  if (tb_vector_reserve(&grown, 1) == -1) {
    tsk_fs_close(fs);
    errno = ENOMEM;
    return tb_error("out of memory");
  }
  ins->vols = grown.ptr;
  ins->cap_vols = grown.cap;
  struct vol *nv = &ins->vols[ins->n_vols];
  memset(nv, 0, sizeof *nv);
  nv->fs = fs;
  nv->pub.partition = partno;
  nv->pub.offset = offset;
  nv->pub.length = length;
  nv->pub.block_size = fs->block_size;
  snprintf(nv->pub.fstype, sizeof nv->pub.fstype, "%s", fs_type_name(fs->ftype));
  if (partno > 0)
    snprintf(nv->pub.name, sizeof nv->pub.name, "p%d-%s", partno, nv->pub.fstype);
  else
    snprintf(nv->pub.name, sizeof nv->pub.name, "whole-%s", nv->pub.fstype);
  /* A hostile table could repeat a slot: keep names unique. */
  for (int k = 2; tb_inspect_find_volume(ins, nv->pub.name) >= 0; k++)
    snprintf(nv->pub.name, sizeof nv->pub.name, "p%d-%s-%d", partno, nv->pub.fstype, k);
  nv->root.type = TB_FT_DIR;
  nv->root.inum = fs->root_inum;
  nv->root.mode = 0555;
  nv->root.nlink = 2;
  TSK_FS_FILE *root = tbi_open_meta(ins, nv, fs->root_inum);
  if (root && root->meta) {
    tbi_fill_stat(root->meta, &nv->root);
    tbi_fix_stat(ins, nv, root, NULL, &nv->root);
    nv->root.type = TB_FT_DIR;
  }
  tsk_fs_file_close(root);
  ins->n_vols++;
  return 0;
}

/* Open the filesystem at byte OFF, trying only the types we promise.  Full
 * autodetection would also probe YAFFS2, HFS, APFS, UFS and ISO9660, which
 * costs many reads (tens of milliseconds over NBD) and finds nothing a
 * PC or VM guest uses. */
static TSK_FS_INFO *open_fs(TSK_IMG_INFO *img, uint64_t off)
{
  static const TSK_FS_TYPE_ENUM types[] = {TSK_FS_TYPE_NTFS_DETECT, TSK_FS_TYPE_FAT_DETECT,
                                           TSK_FS_TYPE_EXT_DETECT};
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
    TSK_FS_INFO *fs = tsk_fs_open_img(img, (TSK_OFF_T)off, types[i]);
    tsk_error_reset();
    if (fs)
      return fs;
  }
  return NULL;
}

static void open_partitions(struct tb_inspect *ins)
{
  TSK_VS_INFO *vs = ins->vs;
  for (TSK_PNUM_T i = 0; i < vs->part_count && !tbi_past_deadline(ins); i++) {
    const TSK_VS_PART_INFO *p = tsk_vs_part_get(vs, i);
    if (!p || !(p->flags & TSK_VS_PART_FLAG_ALLOC))
      continue;
    uint64_t off = (uint64_t)p->start * vs->block_size + vs->offset;
    uint64_t len = (uint64_t)p->len * vs->block_size;
    if (off >= tb_disk_size(ins->disk))
      continue;
    TSK_FS_INFO *fs = open_fs(ins->img, off);
    if (fs)
      add_volume(ins, fs, partition_number(vs, p), off, len);
  }
}

/* The partition table is read at open and never changes: no lock. */
int tb_inspect_partition(struct tb_inspect *ins, uint32_t n, uint64_t *off, uint64_t *len)
{
  int r = -1;
  TSK_VS_INFO *vs = ins->vs;
  for (TSK_PNUM_T i = 0; vs && i < vs->part_count && r == -1; i++) {
    const TSK_VS_PART_INFO *p = tsk_vs_part_get(vs, i);
    if (!p || !(p->flags & TSK_VS_PART_FLAG_ALLOC) || partition_number(vs, p) != (int)n)
      continue;
    *off = (uint64_t)p->start * vs->block_size + vs->offset;
    *len = (uint64_t)p->len * vs->block_size;
    r = 0;
  }
  if (r == -1) {
    errno = ENOENT;
    tb_error("partition %u does not exist in the partition table of %s", n,
             tb_disk_name(ins->disk));
  }
  return r;
}

/* On the worker: hand the disk to libtsk, find the volumes and filesystems. */
int tbi_do_open(struct tb_inspect *ins)
{
  struct tsk_ext_img *ext = calloc(1, sizeof *ext);
  if (!ext) {
    errno = ENOMEM;
    return tb_error("%s: out of memory", tb_disk_name(ins->disk));
  }
  ext->ins = ins;
  ins->img = tsk_img_open_external(ext, (TSK_OFF_T)tb_disk_size(ins->disk), 512, img_read,
                                   img_close, img_stat);
  if (!ins->img) {
    tb_error("%s: libtsk cannot open the disk: %s", tb_disk_name(ins->disk), tsk_error_get());
    free(ext);
    errno = EIO;
    return -1;
  }
  ins->vs = tsk_vs_open(ins->img, 0, TSK_VS_TYPE_DETECT);
  tsk_error_reset();
  if (ins->vs)
    open_partitions(ins);
  if (ins->n_vols == 0 && !tbi_past_deadline(ins)) {
    /* No table, or a table without filesystems: try the whole disk. */
    TSK_FS_INFO *fs = open_fs(ins->img, 0);
    if (fs)
      add_volume(ins, fs, 0, 0, tb_disk_size(ins->disk));
  }
  return 0;
}

void tbi_free_dir(struct cached_dir *d)
{
  if (!d)
    return;
  for (size_t i = 0; i < d->n; i++)
    free(d->v[i].name);
  free(d->v);
  free(d);
}

/* On the worker, last: release libtsk and the caches. */
void tbi_teardown(struct tb_inspect *ins)
{
  tbi_close_files(ins->orphans);
  ins->orphans = NULL;
  for (size_t i = 0; i < ins->n_vols; i++) {
    for (size_t k = 0; k < ins->vols[i].n_dirs; k++)
      tbi_free_dir(ins->vols[i].dirs[k]);
    tsk_fs_close(ins->vols[i].fs);
    tbi_raw_free(&ins->vols[i]);
  }
  free(ins->vols);
  ins->vols = NULL;
  ins->n_vols = ins->cap_vols = 0;
  if (ins->vs)
    tsk_vs_close(ins->vs);
  if (ins->img)
    tsk_img_close(ins->img);
  free(ins->tail);
  ins->tail = NULL;
  tb_disk_unref(ins->disk);
}
