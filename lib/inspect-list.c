/* SPDX-License-Identifier: BSD-3-Clause */
/* lib/inspect-list.c: directory listings, the one primitive of the view.
 *
 * read_dir() reads a directory (ext and NTFS with our own readers, which
 * avoid libtsk's quadratic tsk_fs_dir_add; the others through libtsk), keeps
 * the allocated, real entries with sane names (entry_name escapes the rest),
 * loads each entry's metadata (inspect-meta.c), sorts by name and caches the
 * listing per volume (LRU, bounded by directories and entries).
 *
 * Names first: the inodes of a big ext directory's files (the MFT records
 * of an NTFS one's) are most of its listing's work (20,000 ext4 entries:
 * 5 MiB read and decoded, about half its time; 5,000 NTFS entries: three
 * quarters) and a `find` or an `ls` without -l reads none of them: the
 * directory entry says what each is (ext's file type; NTFS's index flags,
 * as ntfs-3g reads them).  So a lazy listing (tb_inspect_readdir_lazy, and
 * every listing ahead) of more than TB_INSPECT_LAZY_MIN entries keeps its
 * files as name, type and inode number (st.partial, counted in n_partial;
 * not NTFS reparse points and system files, whose type is in their record)
 * and stats only the rest; the first request that needs more (tbi_get_dir:
 * a stat of one of them, a walk, a second readdir) loads them all
 * (dir_complete), in the same spans.  Path
 * lookups (resolve) binary-search these listings component by component, so
 * a lookup finds only what readdir shows.  Runs on the worker only.
 *
 * Listing ahead: a walker (find, du, a file manager) opens the
 * subdirectories of what it just listed, depth first.  So each readdir
 * queues its subdirectories (AHEAD_MAX, the latest on top) and the worker,
 * when it has no job, lists them into the cache (tbi_list_ahead), and
 * theirs, down to AHEAD_DEPTH levels and AHEAD_BUDGET listings: the
 * walker's next opendir finds its listing made, and the NBD round trips and
 * the parsing ran while the kernel and the walker were busy with the last
 * reply.  Listing ahead never delays a job by more than a quarter of the
 * budget (its own deadline, after which that listing is dropped), stops at
 * once when the handle closes, and its errors are nobody's: the job that
 * wants the directory meets them itself.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "inspect-internal.h"

#define DIR_CACHE_MAX_ENTRIES 400000 /* entries cached per volume */

static int dent_cmp(const void *a, const void *b)
{
  return strcmp(((const struct dent *)a)->name, ((const struct dent *)b)->name);
}

/* Names a listing can hold.  A guest with raw disk access can write names
 * no path component can be: with a '/', empty (a NUL first: libtsk stops
 * at a NUL), "." or ".." beyond a directory's own two entries, longer than
 * FUSE's 1024 bytes.  Dropping them would hide the file from the view and
 * from every rule, so they are listed under an escaped name instead: the
 * tb_guest_name() encoding (util.h) with '/' as "\x2f", "." as "\x2e" and
 * ".." as "\x2e\x2e", an empty name as "\x00", and a name still longer
 * than 1024 bytes cut to 1000 and ended with "\~" and 16 hex digits of the
 * sha256 of the whole name (so two long names stay apart).  Every other
 * name is listed as libtsk reports it, raw bytes and all. */
#define LIST_NAME_MAX 1024

static char *escaped_name(const char *raw)
{
  if (!*raw)
    return strdup("\\x00");
  if (strcmp(raw, ".") == 0 || strcmp(raw, "..") == 0)
    return strdup(raw[1] ? "\\x2e\\x2e" : "\\x2e");
  char *enc = tb_guest_name(raw);
  if (!enc)
    return NULL;
  size_t slashes = 0, n = strlen(enc);
  for (size_t i = 0; i < n; i++)
    slashes += enc[i] == '/';
  char *out = malloc(n + 3 * slashes + 24 + 1), *o = out;
  if (!out) {
    free(enc);
    return NULL;
  }
  for (size_t i = 0; i < n; i++) {
    if (enc[i] == '/') {
      memcpy(o, "\\x2f", 4);
      o += 4;
    } else {
      *o++ = enc[i];
    }
  }
  *o = '\0';
  free(enc);
  if ((size_t)(o - out) > LIST_NAME_MAX) {
    size_t cut = 1000; /* not inside a UTF-8 character or an escape */
    while (cut > 0 && ((unsigned char)out[cut] & 0xC0) == 0x80)
      cut--;
    for (size_t k = cut; k > 0 && k + 4 > cut; k--)
      if (out[k - 1] == '\\') {
        cut = k - 1;
        break;
      }
    unsigned char md[32];
    EVP_Digest(raw, strlen(raw), md, NULL, EVP_sha256(), NULL);
    char hex[65];
    tb_hex(md, 8, hex);
    snprintf(out + cut, 24, "\\~%s", hex);
  }
  return out;
}

/* The listed name of entry NM of directory DIR_INUM (malloc'd), or NULL
 * with errno 0 if the entry is not listed (the directory's own "." and
 * "..", libtsk's unallocated names), ENOMEM if out of memory. */
char *tbi_entry_name(const TSK_FS_NAME *nm, struct name_seen *seen)
{
  errno = 0;
  if (!nm || !nm->name || !(nm->flags & TSK_FS_NAME_FLAG_ALLOC))
    return NULL;
  const char *name = nm->name;
  bool own = nm->type == TSK_FS_NAME_TYPE_DIR || nm->type == TSK_FS_NAME_TYPE_UNDEF;
  if (strcmp(name, ".") == 0 && !seen->dot && own) {
    seen->dot = true;
    return NULL;
  }
  if (strcmp(name, "..") == 0 && !seen->dotdot && own) {
    seen->dotdot = true;
    return NULL;
  }
  char *r = *name && strcmp(name, ".") != 0 && strcmp(name, "..") != 0 && !strchr(name, '/') &&
                    strlen(name) <= LIST_NAME_MAX
                ? strdup(name)
                : escaped_name(name);
  if (!r)
    errno = ENOMEM;
  return r;
}

/* An ext2/3 block map (no extents) reaching into the triple-indirect block:
 * libtsk's map builder visits every pointer of the triple-indirect tree
 * whatever the file's size (a million indirect blocks with 4 KiB blocks)
 * and appends each run by walking the whole list: an hour of CPU and a
 * hundred MiB for one damaged inode (or one honest file over 4 GiB), with
 * no read the deadline could stop.  Such files never reach it: a regular
 * one is read by our own walker (tbi_ext_bmap_pread), anything else refused. */
bool tbi_needs_triple_indirect(const struct vol *v, const TSK_FS_META *m, uint64_t size)
{
  if (!TSK_FS_TYPE_ISEXT(v->fs->ftype) || m->content_type != TSK_FS_META_CONTENT_TYPE_DEFAULT)
    return false;
  uint64_t bs = v->fs->block_size, per_block = bs / 4;
  uint64_t mapped = 12 + per_block + per_block * per_block; /* direct, single, double */
  return bs > 0 && (size + bs - 1) / bs > mapped;
}

/* libtsk builds a file's run list in time quadratic in its length before
 * the first read, without a read the deadline could stop: a damaged inode
 * claiming a huge size hangs it.  So sizes no guest writes are refused
 * before libtsk sees them: symlinks over 64 KiB, directories larger than
 * their volume, files more than 16 times larger than their volume (sparse
 * files that large are unheard of in a PC or VM guest), except ext4
 * extent-mapped files, whose size costs libtsk nothing. */
bool tbi_size_plausible(const struct vol *v, const TSK_FS_META *m)
{
  uint64_t vol = v->pub.length > (1u << 30) ? v->pub.length : (1u << 30);
  uint64_t size = m->size > 0 ? (uint64_t)m->size : 0;
  if (tbi_needs_triple_indirect(v, m, size))
    return tbi_ext_bmapped(v, m); /* a regular file: our own reader's */
  switch (m->type) {
  case TSK_FS_META_TYPE_LNK:
    return size <= 65536;
  case TSK_FS_META_TYPE_DIR:
    return size <= vol;
  default:
    /* An ext4 extent tree maps a file in as many runs as it has extents,
     * each read from the disk (the deadline holds): its size costs nothing,
     * and sparse files of any size read (a 1 TiB one on a 560 MiB volume). */
    return m->content_type == TSK_FS_META_CONTENT_TYPE_EXT4_EXTENTS || size / 16 <= vol;
  }
}

TB_VECTOR(dents, struct dent);

/* ext directories, read by us: libtsk's tsk_fs_dir_add looks for a
 * duplicate among every name already added, so listing a directory costs
 * the square of its size (a 20,000-entry directory: 75% of a find's time,
 * half a second).  The blocks are read through libtsk (its extent or block
 * map) and their entries followed by rec_len, as the kernel does: "." and
 * "..", the htree's index blocks and metadata_csum's tail are entries of
 * inode 0 or passed over like libtsk's.  Inline-data directories, and any
 * block whose chain does not parse exactly (where libtsk scans for
 * remnants), go to libtsk: *FALLBACK is set. */
static bool dir_add(struct cached_dir *d, size_t *cap, char *name, const struct tb_istat *st)
{
  /* D's entries grow as a vector (D->v, D->n and *CAP); the listing keeps
   * v and n, the names every reader of a cached listing uses. */
  struct dents grown = {d->v, d->n, *cap};
  if (tb_vector_push(&grown, ((struct dent){.name = name, .st = *st})) == -1)
    return false;
  d->v = grown.ptr;
  d->n = grown.len;
  *cap = grown.cap;
  return true;
}

/* The records of a listing (NTFS MFT records, ext inodes) are read in
 * their on-disk order, those no further than SPAN_GAP apart in one request
 * of at most SPAN_MAX bytes: a 5,000-entry NTFS directory in 5 reads of
 * 1 MiB instead of 180 of libtsk's cache blocks (64 KiB, 32 kept), its
 * index sorted by name and its records by creation; a 20,000-entry ext4
 * directory's inodes in 5 instead of 80, and without libtsk's cache lookup
 * per inode (which scans and ages all 32 blocks: a seventh of that
 * listing's time).  A read takes at least SPAN_AHEAD bytes (inside the
 * run) and the volume keeps the last few (struct vol_span, as long as
 * libtsk's own cache): the records of a tree's next directories, made
 * after these, are mostly there already (a find of 20 small directories:
 * one read, not 20). */
#define PENDING_MAX 4096
#define SPAN_MAX (1u << 20)
#define SPAN_GAP (64u << 10)
#define SPAN_AHEAD (256u << 10)
#define N_SPANS (sizeof((struct vol *)0)->spans / sizeof *((struct vol *)0)->spans)

/* The bytes [START, END) of the volume from a kept span, or read into one
 * (with SPAN_AHEAD, up to RUN_END); NULL if they cannot be read. */
static const unsigned char *vol_span(struct tb_inspect *ins, struct vol *v, uint64_t start,
                                     uint64_t end, uint64_t run_end)
{
  struct vol_span *sp = v->spans, *old = sp;
  for (size_t i = 0; i < N_SPANS; i++) {
    if (sp[i].buf && sp[i].off <= start && end <= sp[i].off + sp[i].len) {
      sp[i].tick = ++v->span_tick;
      return sp[i].buf + (start - sp[i].off);
    }
    if (sp[i].tick < old->tick)
      old = &sp[i];
  }
  uint64_t ahead = run_end > start ? run_end - start : 0, disk = tb_disk_size(ins->disk);
  if (ahead > SPAN_AHEAD)
    ahead = SPAN_AHEAD;
  size_t len = (size_t)(end - start > ahead ? end - start : ahead);
  uint64_t at = (uint64_t)v->fs->offset + start;
  if (at > disk)
    return NULL;
  if (len > disk - at)
    len = (size_t)(disk - at);
  if (len < end - start)
    return NULL;
  if (!old->buf && !(old->buf = malloc(SPAN_MAX)))
    return NULL;
  old->tick = 0;
  old->len = 0;
  if (tb_disk_pread(ins->disk, old->buf, len, at) < 0)
    return NULL;
  old->off = start;
  old->len = len;
  old->tick = ++v->span_tick;
  return old->buf;
}

/* Of the records at the ascending volume offsets OFF[I..N), each REC
 * bytes, how many from I on one span holds; *END: where they end. */
static size_t span_count(const uint64_t *off, size_t i, size_t n, uint64_t rec, uint64_t *end)
{
  uint64_t start = off[i];
  *end = start + rec;
  size_t k = i + 1;
  while (k < n && off[k] <= *end + SPAN_GAP && off[k] + rec - start <= SPAN_MAX) {
    if (off[k] + rec > *end)
      *end = off[k] + rec;
    k++;
  }
  return k - i;
}

/* An ext directory entry (libtsk's ext2fs_dentry2, the kernel's
 * ext2_dir_entry_2): its 8-byte header, then the name. */
#define EXT_DENTRY_HDR offsetof(ext2fs_dentry2, name)
#define EXT_DIR_CHUNK (256u << 10) /* a multiple of every block size */
_Static_assert(EXT_DENTRY_HDR == 8 && offsetof(ext2fs_dentry2, type) == 7,
               "ext2fs_dentry2: the on-disk layout");

static TSK_FS_NAME_TYPE_ENUM ext_name_type(unsigned ft)
{
  static const TSK_FS_NAME_TYPE_ENUM map[] = {
      TSK_FS_NAME_TYPE_UNDEF, TSK_FS_NAME_TYPE_REG,  TSK_FS_NAME_TYPE_DIR,  TSK_FS_NAME_TYPE_CHR,
      TSK_FS_NAME_TYPE_BLK,   TSK_FS_NAME_TYPE_FIFO, TSK_FS_NAME_TYPE_SOCK, TSK_FS_NAME_TYPE_LNK};
  return ft < sizeof map / sizeof *map ? map[ft] : TSK_FS_NAME_TYPE_UNDEF;
}

/* An ext entry waiting for its inode (ext_read_dir). */
struct ext_pending {
  char *name;
  TSK_FS_NAME nm; /* without its name */
  uint64_t off;   /* of its inode in the volume */
  bool ours;      /* stat'ed from the span */
  bool lazy;      /* listed names first: its inode is read later */
  struct tb_istat st;
};

static int ext_pend_cmp(const void *a, const void *b)
{
  const struct ext_pending *x = *(struct ext_pending *const *)a,
                           *y = *(struct ext_pending *const *)b;
  return x->off < y->off ? -1 : x->off > y->off;
}

/* Read the inodes of the N pending entries P (but the lazy ones) in
 * spans, in inode order, and stat those the spans hold (ours); false when
 * out of time. */
static bool ext_read_inodes(struct tb_inspect *ins, struct vol *v, struct ext_pending *p, size_t n)
{
  struct ext_pending **by_off = malloc(n * sizeof *by_off);
  uint64_t *offs = malloc(n * sizeof *offs);
  uint32_t isz = 0;
  size_t m = 0;
  for (size_t i = 0; by_off && offs && i < n; i++) {
    p[i].ours = false;
    if (!p[i].lazy && tbi_ext_inode_off(ins, v, p[i].nm.meta_addr, &p[i].off, &isz) && isz <= 1024)
      by_off[m++] = &p[i];
  }
  if (by_off && offs) {
    size_t i = 1;
    while (i < m && by_off[i - 1]->off <= by_off[i]->off) /* often in inode order already */
      i++;
    if (i < m)
      qsort(by_off, m, sizeof *by_off, ext_pend_cmp);
    for (i = 0; i < m; i++)
      offs[i] = by_off[i]->off;
  }
  bool ok = true;
  for (size_t i = 0; by_off && offs && i < m;) {
    uint64_t end;
    size_t k = i + span_count(offs, i, m, isz, &end);
    if (tbi_past_deadline(ins)) {
      ok = false;
      break;
    }
    const unsigned char *span = vol_span(ins, v, offs[i], end, end);
    for (size_t j = i; span && j < k; j++)
      by_off[j]->ours = tbi_ext_inode_stat(v, by_off[j]->nm.meta_addr, span + (offs[j] - offs[i]),
                                           isz, &by_off[j]->st);
    i = k;
  }
  free(by_off);
  free(offs);
  return ok;
}

/* E's stat: from the span, else the way tbi_ext_entry_stat and libtsk
 * give it (those the span misses or tbi_ext_inode_stat refuses). */
static bool ext_pending_stat(struct tb_inspect *ins, struct vol *v, struct ext_pending *e)
{
  e->nm.name = e->name;
  bool have = e->ours || tbi_ext_entry_stat(ins, v, e->nm.meta_addr, &e->st) ||
              tbi_file_stat(ins, v, tbi_open_meta(ins, v, e->nm.meta_addr), &e->nm, &e->st);
  e->st.partial = false;
  return have;
}

/* Stat the N pending entries P (ext_read_inodes, ext_pending_stat; the
 * lazy ones keep their type and inode number) and add them to D; false
 * when out of memory or time.  Frees their names. */
static bool ext_stat_pending(struct tb_inspect *ins, struct vol *v, struct ext_pending *p, size_t n,
                             struct cached_dir *d, size_t *cap, bool *oom)
{
  bool ok = ext_read_inodes(ins, v, p, n);
  for (size_t i = 0; i < n; i++) {
    struct ext_pending *e = &p[i];
    e->st.partial = e->lazy;
    bool have = ok && (e->lazy || ext_pending_stat(ins, v, e));
    if (have && !*oom && dir_add(d, cap, e->name, &e->st)) {
      d->n_partial += e->lazy;
      continue;
    }
    if (have)
      *oom = true;
    free(e->name);
  }
  return ok && !*oom;
}

/* A pending entry may be listed names first: a file whose directory entry
 * says what it is (not a subdirectory: a walker opens those, and the view
 * gives their attributes with the listing). */
static bool ext_lazy_type(TSK_FS_NAME_TYPE_ENUM t)
{
  return t != TSK_FS_NAME_TYPE_DIR && t != TSK_FS_NAME_TYPE_UNDEF;
}

/* Mark the N pending entries P lazy (names first) if LAZY and the listing
 * is big: D already holds DONE entries. */
static void ext_mark_lazy(struct ext_pending *p, size_t n, size_t done, bool lazy)
{
  if (!lazy || done + n <= TB_INSPECT_LAZY_MIN)
    return;
  for (size_t i = 0; i < n; i++)
    p[i].lazy = ext_lazy_type(p[i].nm.type);
}

static struct cached_dir *ext_read_dir(struct tb_inspect *ins, struct vol *v, TSK_FS_FILE *dm,
                                       uint64_t inum, bool lazy, bool *fallback)
{
  uint64_t bs = v->fs->block_size, size = dm->meta->size > 0 ? (uint64_t)dm->meta->size : 0;
  *fallback = true;
  if (dm->meta->content_type == TSK_FS_META_CONTENT_TYPE_EXT4_INLINE || bs < 1024 || bs > 65536 ||
      size == 0 || size % bs != 0)
    return NULL;
  /* The blocks are read EXT_DIR_CHUNK at a time, one libtsk read each
   * (which reads past its cache, one NBD request per contiguous run), not
   * one 64 KiB cache block per 16 directory blocks. */
  size_t chunk = size < EXT_DIR_CHUNK ? (size_t)size : EXT_DIR_CHUNK;
  unsigned char *buf = malloc(chunk), *blk = NULL;
  struct cached_dir *d = calloc(1, sizeof *d);
  struct ext_pending *pend = malloc(PENDING_MAX * sizeof *pend);
  size_t cap = 0, n_pend = 0;
  bool ok = buf && d && pend, oom = !ok;
  if (d)
    d->inum = inum;
  struct name_seen seen = {0};
  for (uint64_t off = 0; ok && off < size; off += bs) {
    if (off % chunk == 0) {
      size_t n = size - off < chunk ? (size_t)(size - off) : chunk;
      if (tbi_past_deadline(ins) || tsk_fs_file_read(dm, (TSK_OFF_T)off, (char *)buf, n,
                                                     TSK_FS_FILE_READ_FLAG_NONE) != (ssize_t)n) {
        ok = false;
        break;
      }
    }
    blk = buf + off % chunk;
    for (size_t idx = 0; ok && idx < bs;) {
      if (idx + EXT_DENTRY_HDR > bs) {
        ok = false;
        break;
      }
      const ext2fs_dentry2 *de = (const ext2fs_dentry2 *)(blk + idx);
      uint32_t ino = tb_get_le32(de->inode);
      unsigned reclen = tb_get_le16(de->rec_len), nl = de->name_len;
      if (reclen < EXT_DENTRY_HDR || reclen % 4 || idx + reclen > bs ||
          (ino && (nl == 0 || EXT_DENTRY_HDR + nl > reclen || ino > v->fs->last_inum))) {
        ok = false;
        break;
      }
      if (ino && d->n + n_pend < TB_INSPECT_MAX_DIR_ENTRIES) {
        char raw[256];
        memcpy(raw, blk + idx + EXT_DENTRY_HDR, nl);
        raw[nl] = 0;
        TSK_FS_NAME nm = {.name = raw,
                          .meta_addr = ino,
                          .flags = TSK_FS_NAME_FLAG_ALLOC,
                          .type = ext_name_type(de->type)};
        char *name = tbi_entry_name(&nm, &seen);
        if (name) {
          nm.name = NULL;
          pend[n_pend++] =
              (struct ext_pending){.name = name,
                                   .nm = nm,
                                   .st = {.type = tbi_name_type(nm.type), .inum = ino, .nlink = 1}};
          if (n_pend == PENDING_MAX) {
            ext_mark_lazy(pend, n_pend, d->n, lazy);
            ok = ext_stat_pending(ins, v, pend, n_pend, d, &cap, &oom);
            n_pend = 0;
          }
        }
      }
      idx += reclen;
    }
  }
  if (ok && n_pend) {
    ext_mark_lazy(pend, n_pend, d->n, lazy);
    ok = ext_stat_pending(ins, v, pend, n_pend, d, &cap, &oom);
  } else {
    for (size_t i = 0; i < n_pend; i++)
      free(pend[i].name);
  }
  free(pend);
  free(buf);
  tsk_error_reset();
  if (ok)
    return d;
  if (ins->deadline_hit || oom)
    *fallback = false; /* out of time or memory */
  if (d)
    tbi_free_dir(d);
  return NULL;
}

/* D, complete, without the entries its completion dropped (name NULL). */
static void dir_compact(struct vol *v, struct cached_dir *d)
{
  size_t kept = 0;
  for (size_t i = 0; i < d->n; i++)
    if (d->v[i].name)
      d->v[kept++] = d->v[i];
  v->n_entries -= d->n - kept;
  d->n = kept;
  d->n_partial = 0;
}

/* Load the attributes of D's partial entries (a names-first listing), in
 * spans as ext_read_dir would have; an entry that cannot be stat'ed leaves
 * the listing, as ext_read_dir would have left it out.  -1 when out of
 * time or memory (D stays as it was). */
static int ext_complete(struct tb_inspect *ins, struct vol *v, struct cached_dir *d)
{
  struct ext_pending *p = malloc(d->n_partial * sizeof *p);
  size_t *at = malloc(d->n_partial * sizeof *at), m = 0;
  if (!p || !at) {
    free(p);
    free(at);
    errno = ENOMEM;
    return tb_error("out of memory listing a directory");
  }
  for (size_t i = 0; i < d->n && m < d->n_partial; i++) {
    const struct dent *e = &d->v[i];
    if (!e->st.partial)
      continue;
    /* (An ext stat reads no more of the name than its inode number.) */
    p[m] = (struct ext_pending){.name = e->name,
                                .nm = {.meta_addr = e->st.inum, .flags = TSK_FS_NAME_FLAG_ALLOC},
                                .st = {.type = e->st.type, .inum = e->st.inum, .nlink = 1}};
    at[m++] = i;
  }
  if (!ext_read_inodes(ins, v, p, m)) {
    free(p);
    free(at);
    tsk_error_reset();
    return tbi_tsk_fail(ins, "cannot read directory");
  }
  for (size_t k = 0; k < m; k++) {
    struct dent *e = &d->v[at[k]];
    if (ext_pending_stat(ins, v, &p[k])) {
      e->st = p[k].st;
    } else { /* gone from the listing (below) */
      free(e->name);
      e->name = NULL;
    }
  }
  free(p);
  free(at);
  tsk_error_reset();
  dir_compact(v, d);
  return 0;
}

/* NTFS directories, read by us: libtsk's ntfs_dir_open_meta adds each
 * name with tsk_fs_dir_add, which compares it with every name already
 * added (a 5,000-entry directory: three quarters of its listing time),
 * scans the slack of every index block for deleted names, and at the first
 * listing walks the whole MFT for files naming the directory as parent
 * that its index lacks.  None of that is what ntfs-3g shows: it lists the
 * index, the $INDEX_ROOT and the index blocks of $INDEX_ALLOCATION that
 * $BITMAP marks in use, in order, without DOS (8.3) names.  So do we,
 * through the directory's attributes as libtsk loaded them (attribute
 * lists included) and libtsk's reads, with the same checks on each entry
 * as libtsk (parent reference, lengths inside the record) and its lenient
 * UTF-16 decoding (tb_ntfs_name).  Anything that does not parse exactly (a
 * record without its magic, a bad update sequence, an entry running past
 * its record) goes to libtsk: *FALLBACK is set. */
#define NTFS_SECTOR 512 /* the update sequence's stride */
/* The records, read with libtsk's definitions (tsk_ntfs.h: ntfs_idxroot,
 * ntfs_idxrec, ntfs_idxelist, ntfs_idxentry, ntfs_attr_fname): an index
 * entry's header, then its key, a $FILE_NAME whose name starts at
 * NTFS_FNAME_NAME. */
#define NTFS_IDXENTRY_HDR 16
#define NTFS_FNAME_NAME offsetof(ntfs_attr_fname, name)
_Static_assert(sizeof(ntfs_idxentry) >= NTFS_IDXENTRY_HDR && offsetof(ntfs_idxentry, flags) == 12 &&
                   NTFS_FNAME_NAME == 66 && offsetof(ntfs_attr_fname, flags) == 56,
               "ntfs_idxentry, ntfs_attr_fname: the on-disk layout");
_Static_assert(offsetof(ntfs_idxroot, list) == 16 && offsetof(ntfs_idxrec, list) == 0x18 &&
                   offsetof(ntfs_idxrec, upd_cnt) == 6,
               "ntfs_idxroot, ntfs_idxrec: the on-disk layout");

/* An entry waiting for its metadata, in index order. */
struct ntfs_pending {
  char *name;
  TSK_FS_NAME nm;        /* without its name */
  uint64_t off, run_end; /* where its record lies in the volume, where its run ends */
  int ours;              /* tbi_ntfs_rec_stat's answer: 1, 0, or -1 (libtsk's) */
  bool plain;            /* the index says: a file, not a reparse point or system file */
  bool lazy;             /* listed names first: its record is read later */
  bool keep;             /* ntfs_stat_entries: it stays, with st */
  struct tb_istat st;
};

struct ntfs_dir_read {
  struct tb_inspect *ins;
  struct vol *v;
  struct cached_dir *d; /* with the entries' metadata, or */
  size_t cap;
  struct ntfs_names names; /* ... without, when names_only */
  bool names_only;
  bool lazy; /* names first (ext_read_dir's) */
  struct name_seen seen;
  bool oom;
  struct ntfs_pending *pend; /* entries to stat (PENDING_MAX at a time) */
  size_t n_pend;
};

static int pend_off_cmp(const void *a, const void *b)
{
  const struct ntfs_pending *x = *(struct ntfs_pending *const *)a,
                            *y = *(struct ntfs_pending *const *)b;
  return x->off < y->off ? -1 : x->off > y->off;
}

/* Stat the pending entries from their records (tbi_ntfs_rec_stat), read in
 * spans; *OK false when the deadline passed. */
static void ntfs_read_records(struct ntfs_dir_read *x, bool *ok)
{
  struct vol *v = x->v;
  const struct tb_ntfs_geom *g = &v->ntfs_geom;
  struct ntfs_pending **by_off = malloc(x->n_pend * sizeof *by_off);
  uint64_t *offs = malloc(x->n_pend * sizeof *offs);
  unsigned char *rec = malloc(g->rec_size);
  if (!by_off || !offs || !rec) {
    free(by_off);
    free(offs);
    free(rec);
    return; /* libtsk's path then */
  }
  size_t n = 0;
  for (size_t i = 0; i < x->n_pend; i++)
    if (!x->pend[i].lazy &&
        tb_ntfs_rec_offset(g, x->pend[i].nm.meta_addr, &x->pend[i].off, &x->pend[i].run_end) &&
        x->pend[i].run_end <= UINT64_MAX / 2)
      by_off[n++] = &x->pend[i];
  qsort(by_off, n, sizeof *by_off, pend_off_cmp);
  for (size_t i = 0; i < n; i++)
    offs[i] = by_off[i]->off;
  for (size_t i = 0; i < n && *ok;) {
    uint64_t start = offs[i], end;
    size_t k = i + span_count(offs, i, n, g->rec_size, &end);
    if (tbi_past_deadline(x->ins)) {
      *ok = false;
      break;
    }
    const unsigned char *span = vol_span(x->ins, v, start, end, by_off[i]->run_end);
    for (size_t j = i; span && j < k; j++) {
      memcpy(rec, span + (by_off[j]->off - start), g->rec_size);
      if (tb_ntfs_fixup(rec, g->rec_size))
        by_off[j]->ours = tbi_ntfs_rec_stat(v, rec, &by_off[j]->nm, &by_off[j]->st);
    }
    i = k;
  }
  free(by_off);
  free(offs);
  free(rec);
}

/* Stat the pending entries but the lazy ones (p->keep and p->st: their
 * records read in spans, libtsk's way for what our parser refuses); false
 * when out of time. */
static bool ntfs_stat_entries(struct ntfs_dir_read *x)
{
  struct vol *v = x->v;
  bool ok = true;
  for (size_t i = 0; i < x->n_pend; i++)
    x->pend[i].ours = -1;
  if (tbi_ntfs_mft_setup(v))
    ntfs_read_records(x, &ok);
  for (size_t i = 0; i < x->n_pend; i++) {
    struct ntfs_pending *p = &x->pend[i];
    if (p->lazy)
      continue;
    bool keep = p->ours == 1;
    if (!ok) {
      keep = false;
    } else if (p->ours < 0 || v->ntfs_mode == NTFS_MFT_CHECK) {
      struct tb_istat st = {.type = tbi_name_type(p->nm.type), .inum = p->nm.meta_addr, .nlink = 1};
      p->nm.name = p->name;
      bool k = tbi_file_stat(x->ins, v, tsk_fs_file_open_meta(v->fs, NULL, p->nm.meta_addr), &p->nm,
                             &st);
      tbi_ntfs_mft_check(v, &p->nm, p->ours, &p->st, k, &st);
      if (p->ours < 0) {
        keep = k;
        p->st = st;
      }
    }
    if (p->ours < 0)
      v->ntfs_libtsk++;
    else
      v->ntfs_ours++;
    p->keep = keep;
    p->st.partial = false;
  }
  return ok;
}

/* Stat the pending entries (ntfs_stat_entries; in a big lazy listing the
 * plain files keep their type and record number) and add them to the
 * listing in index order; false when out of memory or time. */
static bool ntfs_stat_pending(struct ntfs_dir_read *x)
{
  bool lazy =
      x->lazy && x->v->ntfs_mode != NTFS_MFT_CHECK && x->d->n + x->n_pend > TB_INSPECT_LAZY_MIN;
  for (size_t i = 0; i < x->n_pend; i++) {
    struct ntfs_pending *p = &x->pend[i];
    p->lazy = lazy && p->plain;
    p->st = (struct tb_istat){
        .type = tbi_name_type(p->nm.type), .inum = p->nm.meta_addr, .nlink = 1, .partial = p->lazy};
  }
  bool ok = ntfs_stat_entries(x);
  for (size_t i = 0; i < x->n_pend; i++) {
    struct ntfs_pending *p = &x->pend[i];
    if (ok && (p->lazy || p->keep) && x->d->n < TB_INSPECT_MAX_DIR_ENTRIES && !x->oom) {
      if (dir_add(x->d, &x->cap, p->name, &p->st)) {
        x->d->v[x->d->n - 1].seq = p->nm.meta_seq;
        x->d->n_partial += p->lazy;
        continue;
      }
      x->oom = true;
    }
    free(p->name);
  }
  x->n_pend = 0;
  return ok && !x->oom;
}

static void ntfs_pending_free(struct ntfs_dir_read *x)
{
  for (size_t i = 0; i < x->n_pend; i++)
    free(x->pend[i].name);
  free(x->pend);
  x->pend = NULL;
  x->n_pend = 0;
}

static bool ntfs_name_add(struct ntfs_dir_read *x, char *name, const TSK_FS_NAME *nm)
{
  return tb_vector_push(&x->names,
                        ((struct ntfs_name){name, nm->meta_addr, nm->meta_seq, nm->type})) == 0;
}

/* The entries of one index node (BUF[OFF, END)); false if they do not
 * parse exactly. */
static bool ntfs_index_entries(struct ntfs_dir_read *x, const unsigned char *buf, size_t off,
                               size_t end)
{
  while (off + NTFS_IDXENTRY_HDR <= end) {
    const ntfs_idxentry *e = (const ntfs_idxentry *)(buf + off);
    uint32_t len = tb_get_le16(e->idxlen), klen = tb_get_le16(e->strlen);
    if (e->flags & NTFS_IDX_LAST)
      return true;
    if (len < NTFS_IDXENTRY_HDR + NTFS_FNAME_NAME || len % 8 || len > end - off ||
        klen < NTFS_FNAME_NAME || klen > len - NTFS_IDXENTRY_HDR)
      return false;
    const ntfs_attr_fname *fn = (const ntfs_attr_fname *)(buf + off + NTFS_IDXENTRY_HDR);
    unsigned units = fn->nlen, ns = fn->nspace;
    /* file references: 48 bits of record number, then 16 of sequence */
    uint64_t ref = tb_get_le64(e->file_ref) & 0xFFFFFFFFFFFFull,
             parent = tb_get_le64(fn->par_ref) & 0xFFFFFFFFFFFFull;
    if (NTFS_FNAME_NAME + 2u * units > klen)
      return false;
    off += len;
    /* libtsk's checks: a reference inside the MFT, naming this directory */
    if (ns == NTFS_FNAME_DOS || ref < x->v->fs->first_inum || ref > x->v->fs->last_inum ||
        parent != x->d->inum ||
        (x->names_only ? x->names.len : x->d->n) >= TB_INSPECT_MAX_DIR_ENTRIES)
      continue;
    char raw[4 * 255 + 1];
    tb_ntfs_name((const unsigned char *)fn + NTFS_FNAME_NAME, units, raw);
    TSK_FS_NAME nm = {.name = raw,
                      .meta_addr = ref,
                      .meta_seq = tb_get_le16(e->seq_num),
                      .flags = TSK_FS_NAME_FLAG_ALLOC,
                      .type = tb_get_le32(fn->flags) & NTFS_FNAME_FLAGS_DIR ? TSK_FS_NAME_TYPE_DIR
                                                                            : TSK_FS_NAME_TYPE_REG};
    char *name = tbi_entry_name(&nm, &x->seen);
    if (name && x->names_only && ref >= NTFS_FIRST_USER_RECORD) {
      if (!ntfs_name_add(x, name, &nm)) {
        free(name);
        x->oom = true;
        return false;
      }
    } else if (name && !x->names_only && ref >= NTFS_FIRST_USER_RECORD) {
      /* its metadata in a batch (ntfs_stat_pending) */
      if (!x->pend && !(x->pend = malloc(PENDING_MAX * sizeof *x->pend))) {
        free(name);
        x->oom = true;
        return false;
      }
      nm.name = NULL;
      uint32_t flags = tb_get_le32(fn->flags);
      x->pend[x->n_pend++] = (struct ntfs_pending){
          .name = name,
          .nm = nm,
          .plain = !(flags & (NTFS_FNAME_FLAGS_DIR | NTFS_FNAME_FLAGS_REP | NTFS_FNAME_FLAGS_SYS))};
      if (x->n_pend == PENDING_MAX && !ntfs_stat_pending(x))
        return false;
    } else {
      free(name);
    }
  }
  return off == end;
}

/* Undo the update sequence of an index record of SIZE bytes in place. */
static bool ntfs_fixup(unsigned char *rec, size_t size)
{
  const ntfs_idxrec *r = (const ntfs_idxrec *)rec;
  size_t usa = tb_get_le16(r->upd_off), count = tb_get_le16(r->upd_cnt);
  if (count < 1 || usa + 2 * count > size || (count - 1) * NTFS_SECTOR > size)
    return false;
  for (size_t i = 1; i < count; i++) {
    unsigned char *tail = rec + i * NTFS_SECTOR - 2;
    if (memcmp(tail, rec + usa, 2) != 0)
      return false;
    memcpy(tail, rec + usa + 2 * i, 2);
  }
  return true;
}

/* The index of directory DM into X (x->d allocated, its inum set); false
 * if it does not parse (*FALLBACK: libtsk may read it) or on error. */
static bool ntfs_read_index(struct ntfs_dir_read *x, TSK_FS_FILE *dm, bool *fallback)
{
  struct tb_inspect *ins = x->ins;
  struct vol *v = x->v;
  *fallback = true;
  const TSK_FS_ATTR *root = tbi_ntfs_attr(dm, TSK_FS_ATTR_TYPE_NTFS_IDXROOT);
  const TSK_FS_ATTR *alloc = tbi_ntfs_attr(dm, TSK_FS_ATTR_TYPE_NTFS_IDXALLOC);
  const TSK_FS_ATTR *bitmap = tbi_ntfs_attr(dm, TSK_FS_ATTR_TYPE_NTFS_BITMAP);
  tsk_error_reset();
  if (!root || !(root->flags & TSK_FS_ATTR_RES) || !root->rd.buf || root->rd.buf_size < 32 ||
      root->size < 32 || (size_t)root->size > root->rd.buf_size)
    return NULL;
  const unsigned char *rb = root->rd.buf;
  const ntfs_idxroot *ir = (const ntfs_idxroot *)rb;
  size_t rsize = (size_t)root->size, recsize = tb_get_le32(ir->idxalloc_size_b);
  /* the entries' offsets count from the list header */
  size_t rbeg = offsetof(ntfs_idxroot, list) + (size_t)tb_get_le32(ir->list.begin_off),
         rend = offsetof(ntfs_idxroot, list) + (size_t)tb_get_le32(ir->list.seqend_off);
  if (tb_get_le32(ir->type) != NTFS_ATYPE_FNAME || rbeg > rend || rend > rsize ||
      recsize < NTFS_SECTOR || recsize > 65536 || (recsize & (recsize - 1)))
    return false;
  bool ok = ntfs_index_entries(x, rb, rbeg, rend);
  uint64_t asize = alloc && alloc->size > 0 ? (uint64_t)alloc->size : 0;
  unsigned char *bits = NULL, *rec = NULL;
  uint64_t nbits = 0;
  if (ok && asize) {
    uint64_t bsize = bitmap && bitmap->size > 0 ? (uint64_t)bitmap->size : 0;
    ok = (alloc->flags & TSK_FS_ATTR_NONRES) && !(alloc->flags & TSK_FS_ATTR_COMP) && bsize &&
         bsize <= (1u << 24) && asize <= v->pub.length && (bits = malloc(bsize)) &&
         (rec = malloc(recsize)) &&
         tsk_fs_attr_read(bitmap, 0, (char *)bits, bsize, TSK_FS_FILE_READ_FLAG_NONE) ==
             (ssize_t)bsize;
    nbits = bsize * 8;
  }
  for (uint64_t b = 0; ok && asize && b < asize / recsize && b < nbits; b++) {
    if (!(bits[b / 8] & (1u << (b % 8))))
      continue;
    if (tbi_past_deadline(ins) ||
        tsk_fs_attr_read(alloc, (TSK_OFF_T)(b * recsize), (char *)rec, recsize,
                         TSK_FS_FILE_READ_FLAG_NONE) != (ssize_t)recsize ||
        tb_get_le32(((const ntfs_idxrec *)rec)->magic) != NTFS_IDXREC_MAGIC ||
        !ntfs_fixup(rec, recsize)) {
      ok = false;
      break;
    }
    const ntfs_idxelist *l = &((const ntfs_idxrec *)rec)->list;
    size_t beg = offsetof(ntfs_idxrec, list) + (size_t)tb_get_le32(l->begin_off),
           end = offsetof(ntfs_idxrec, list) + (size_t)tb_get_le32(l->seqend_off);
    ok = beg <= end && end <= recsize && ntfs_index_entries(x, rec, beg, end);
  }
  free(bits);
  free(rec);
  if (ok && x->n_pend)
    ok = ntfs_stat_pending(x);
  ntfs_pending_free(x);
  if (ok && !x->names_only && v->ntfs_mode == NTFS_MFT_CHECK)
    fprintf(stderr,
            "tabula: TB_NTFS_MFT=check: %s: after directory %" PRIu64 ": %zu entries stat'ed by "
            "lib/ntfs-mft.c, %zu by libtsk, no difference\n",
            v->pub.name, x->d->inum, v->ntfs_ours, v->ntfs_libtsk);
  tsk_error_reset();
  if (!ok && (ins->deadline_hit || x->oom))
    *fallback = false;
  return ok;
}

static struct cached_dir *ntfs_read_dir(struct tb_inspect *ins, struct vol *v, TSK_FS_FILE *dm,
                                        uint64_t inum, bool lazy, bool *fallback)
{
  struct ntfs_dir_read x = {.ins = ins, .v = v, .d = calloc(1, sizeof *x.d), .lazy = lazy};
  if (!x.d) {
    *fallback = false;
    return NULL;
  }
  x.d->inum = inum;
  if (ntfs_read_index(&x, dm, fallback))
    return x.d;
  tbi_free_dir(x.d);
  return NULL;
}

/* As ext_complete, for NTFS: the records of D's partial entries, and an
 * entry whose record is not in use or of another sequence leaves, as
 * ntfs_read_dir would have left it out. */
static int ntfs_complete(struct tb_inspect *ins, struct vol *v, struct cached_dir *d)
{
  struct ntfs_dir_read x = {
      .ins = ins, .v = v, .d = d, .pend = malloc(d->n_partial * sizeof *x.pend)};
  size_t *at = malloc(d->n_partial * sizeof *at);
  if (!x.pend || !at) {
    free(x.pend);
    free(at);
    errno = ENOMEM;
    return tb_error("out of memory listing a directory");
  }
  for (size_t i = 0; i < d->n && x.n_pend < d->n_partial; i++) {
    const struct dent *e = &d->v[i];
    if (!e->st.partial)
      continue;
    x.pend[x.n_pend] =
        (struct ntfs_pending){.name = e->name,
                              .nm = {.meta_addr = e->st.inum,
                                     .meta_seq = e->seq,
                                     .flags = TSK_FS_NAME_FLAG_ALLOC,
                                     .type = TSK_FS_NAME_TYPE_REG},
                              .st = {.type = e->st.type, .inum = e->st.inum, .nlink = 1}};
    at[x.n_pend++] = i;
  }
  bool ok = ntfs_stat_entries(&x);
  for (size_t k = 0; ok && k < x.n_pend; k++) {
    struct dent *e = &d->v[at[k]];
    if (x.pend[k].keep) {
      e->st = x.pend[k].st;
    } else { /* gone from the listing (dir_compact) */
      free(e->name);
      e->name = NULL;
    }
  }
  free(x.pend);
  free(at);
  tsk_error_reset();
  if (!ok)
    return tbi_tsk_fail(ins, "cannot read directory");
  dir_compact(v, d);
  return 0;
}

static int dir_complete(struct tb_inspect *ins, struct vol *v, struct cached_dir *d)
{
  return TSK_FS_TYPE_ISNTFS(v->fs->ftype) ? ntfs_complete(ins, v, d) : ext_complete(ins, v, d);
}

void tbi_ntfs_names_free(struct ntfs_name *v, size_t n)
{
  for (size_t i = 0; i < n; i++)
    free(v[i].name);
  free(v);
}

/* Directory INUM's entries as ntfs_read_dir lists them, without their
 * metadata; false if libtsk must read it (*FALLBACK) or on error. */
bool tbi_ntfs_list_names(struct tb_inspect *ins, struct vol *v, uint64_t inum,
                         struct ntfs_name **out, size_t *n, bool *fallback)
{
  struct cached_dir d = {.inum = inum};
  struct ntfs_dir_read x = {.ins = ins, .v = v, .d = &d, .names_only = true};
  *fallback = true;
  TSK_FS_FILE *dm = tbi_open_meta(ins, v, inum);
  bool ok = dm && dm->meta && tbi_size_plausible(v, dm->meta) && ntfs_read_index(&x, dm, fallback);
  if (!dm || !dm->meta)
    *fallback = true;
  tsk_fs_file_close(dm);
  tsk_error_reset();
  if (!ok) {
    tbi_ntfs_names_free(x.names.ptr, x.names.len);
    return false;
  }
  *out = x.names.ptr;
  *n = x.names.len;
  return true;
}

/* Read directory INUM (ext: ext_read_dir, NTFS: ntfs_read_dir; else
 * through libtsk) into a
 * sorted listing. */
static struct cached_dir *dir_finish(struct cached_dir *d);
static struct cached_dir *read_dir(struct tb_inspect *ins, struct vol *v, uint64_t inum, bool lazy)
{
  TSK_FS_FILE *dm = tbi_open_meta(ins, v, inum);
  bool plausible = dm && dm->meta && tbi_size_plausible(v, dm->meta), fallback = true;
  struct cached_dir *ed =
      !plausible                         ? NULL
      : TSK_FS_TYPE_ISEXT(v->fs->ftype)  ? ext_read_dir(ins, v, dm, inum, lazy, &fallback)
      : TSK_FS_TYPE_ISNTFS(v->fs->ftype) ? ntfs_read_dir(ins, v, dm, inum, lazy, &fallback)
                                         : NULL;
  tsk_fs_file_close(dm);
  if (!plausible) {
    tbi_tsk_fail(ins, "implausible directory (damaged filesystem?)");
    return NULL;
  }
  if (ed)
    return dir_finish(ed);
  if (!fallback) {
    if (ins->deadline_hit) {
      tbi_tsk_fail(ins, "cannot read directory");
    } else {
      errno = ENOMEM;
      tb_error("out of memory listing a directory");
    }
    return NULL;
  }
  TSK_FS_DIR *td = tsk_fs_dir_open_meta(v->fs, (TSK_INUM_T)inum);
  if (!td) {
    tbi_tsk_fail(ins, "cannot read directory");
    return NULL;
  }
  size_t n = tsk_fs_dir_getsize(td);
  if (n > TB_INSPECT_MAX_DIR_ENTRIES)
    n = TB_INSPECT_MAX_DIR_ENTRIES;
  struct cached_dir *d = calloc(1, sizeof *d);
  if (d && n)
    d->v = calloc(n, sizeof *d->v);
  if (!d || (n && !d->v)) {
    free(d);
    tsk_fs_dir_close(td);
    errno = ENOMEM;
    tb_error("out of memory listing a directory");
    return NULL;
  }
  d->inum = inum;
  struct name_seen seen = {0};
  for (size_t i = 0; i < n; i++) {
    if ((i & 255) == 0 && tbi_past_deadline(ins))
      break;
    const TSK_FS_NAME *nm = tsk_fs_dir_get_name(td, i);
    char *name = tbi_entry_name(nm, &seen);
    if (!name)
      continue;
    struct tb_istat st;
    if (!tbi_entry_stat(ins, v, td, i, nm, &st)) {
      free(name);
      continue;
    }
    if (TSK_FS_TYPE_ISFAT(v->fs->ftype) && nm->shrt_name && *nm->shrt_name) {
      char *full = tbi_fat_long_name(v, td->fs_file, nm->meta_addr, name);
      if (full) {
        free(name);
        name = full;
      }
    }
    d->v[d->n++] = (struct dent){.name = name, .st = st};
  }
  tsk_fs_dir_close(td);
  if (ins->deadline_hit) {
    tbi_free_dir(d);
    tbi_tsk_fail(ins, "cannot read directory");
    return NULL;
  }
  return dir_finish(d);
}

/* A listing is sorted by name (strcmp's order: lookups binary-search it)
 * with a most-significant-byte-first radix sort: each pass distributes a
 * group of names by their byte at one depth, so a prefix the names share
 * is read once per name, never compared again.  qsort's merge sort
 * compared whole names (a directory of "entry-N": its 6-byte prefix
 * 300,000 times) and was a third of a 20,000-entry listing's
 * instructions.  The distribution is stable and names equal to the end
 * keep their directory order, as with the merge sort (the duplicate
 * dir_finish keeps is the first).  The largest bucket is sorted by the
 * loop, the others by recursion (each at most half the group), so the
 * stack stays within log2(n) frames whatever names a guest chooses; small
 * groups go to an insertion sort. */
struct name_key {
  const unsigned char *s;
  size_t i; /* in directory order */
};

static int name_key_cmp(const struct name_key *a, const struct name_key *b, size_t depth)
{
  int c = strcmp((const char *)a->s + depth, (const char *)b->s + depth);
  return c ? c : (a->i > b->i) - (a->i < b->i);
}

#define NAME_SORT_SMALL 24

static void name_sort(struct name_key *a, struct name_key *tmp, size_t n, size_t depth)
{
  while (n > 1) {
    if (n < NAME_SORT_SMALL) {
      for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && name_key_cmp(&a[j - 1], &a[j], depth) > 0; j--) {
          struct name_key t = a[j];
          a[j] = a[j - 1];
          a[j - 1] = t;
        }
      return;
    }
    size_t count[256] = {0};
    for (size_t i = 0; i < n; i++)
      count[a[i].s[depth]]++;
    if (count[0] == n)
      return; /* equal names, already in directory order */
    size_t big = 0, at = 0, start[256];
    for (size_t c = 0; c < 256; c++) {
      start[c] = at;
      at += count[c];
      if (count[c] > count[big])
        big = c;
    }
    if (count[big] < n) { /* distribute, stably */
      size_t next[256];
      memcpy(next, start, sizeof next);
      for (size_t i = 0; i < n; i++)
        tmp[next[a[i].s[depth]]++] = a[i];
      memcpy(a, tmp, n * sizeof *a);
    }
    for (size_t c = 1; c < 256; c++) /* bucket 0: names ending here, in order */
      if (c != big && count[c] > 1)
        name_sort(a + start[c], tmp, count[c], depth + 1);
    if (big == 0)
      return;
    a += start[big];
    n = count[big];
    depth++;
  }
}

/* Sort D by name (name_sort; qsort's if out of memory). */
static void dir_sort(struct cached_dir *d)
{
  struct name_key *keys = malloc(d->n * sizeof *keys), *tmp = malloc(d->n * sizeof *tmp);
  struct dent *sorted = malloc(d->n * sizeof *sorted);
  if (!keys || !tmp || !sorted) {
    free(keys);
    free(tmp);
    free(sorted);
    qsort(d->v, d->n, sizeof *d->v, dent_cmp);
    return;
  }
  for (size_t i = 0; i < d->n; i++)
    keys[i] = (struct name_key){(const unsigned char *)d->v[i].name, i};
  name_sort(keys, tmp, d->n, 0);
  for (size_t i = 0; i < d->n; i++)
    sorted[i] = d->v[keys[i].i];
  memcpy(d->v, sorted, d->n * sizeof *sorted);
  free(sorted);
  free(tmp);
  free(keys);
}

static struct cached_dir *dir_finish(struct cached_dir *d)
{
  if (d->n > 1)
    dir_sort(d);
  /* A damaged directory may name a file twice: keep the first. */
  size_t k = 0;
  for (size_t i = 0; i < d->n; i++) {
    if (k > 0 && strcmp(d->v[k - 1].name, d->v[i].name) == 0) {
      d->n_partial -= d->v[i].st.partial;
      free(d->v[i].name);
    } else
      d->v[k++] = d->v[i];
  }
  d->n = k;
  return d;
}

static void evict_dirs(struct vol *v, size_t incoming)
{
  while (v->n_dirs > 0 &&
         (v->n_dirs >= DIR_CACHE_MAX || v->n_entries + incoming > DIR_CACHE_MAX_ENTRIES)) {
    size_t old = 0;
    for (size_t i = 1; i < v->n_dirs; i++)
      if (v->dirs[i]->tick < v->dirs[old]->tick)
        old = i;
    v->n_entries -= v->dirs[old]->n;
    tbi_free_dir(v->dirs[old]);
    v->dirs[old] = v->dirs[--v->n_dirs];
  }
}

/* TB_INSPECT_TRACE set: each directory read from the disk (not the cache)
 * says so on stderr, so a test can see which listings were made ahead. */
static void trace_read_dir(uint64_t inum)
{
  if (tbi_tracing())
    fprintf(stderr, "tabula: inspect read dir: inode %" PRIu64 "\n", inum);
}

static bool dir_cached(const struct vol *v, uint64_t inum)
{
  for (size_t i = 0; i < v->n_dirs; i++)
    if (v->dirs[i]->inum == inum)
      return true;
  return false;
}

/* Queue D's subdirectories to be listed ahead at DEPTH, on top, the first
 * on top. */
static void queue_ahead(struct tb_inspect *ins, size_t vol, const struct cached_dir *d,
                        unsigned depth)
{
  size_t subdirs = 0;
  for (size_t i = 0; i < d->n; i++)
    subdirs += d->v[i].st.type == TB_FT_DIR && strcmp(d->v[i].name, ".") != 0 &&
               strcmp(d->v[i].name, "..") != 0;
  if (subdirs > AHEAD_MAX)
    subdirs = AHEAD_MAX;
  /* Make room: the oldest (bottom) entries go. */
  if (ins->n_ahead + subdirs > AHEAD_MAX) {
    size_t drop = ins->n_ahead + subdirs - AHEAD_MAX;
    memmove(ins->ahead, ins->ahead + drop, (ins->n_ahead - drop) * sizeof *ins->ahead);
    ins->n_ahead -= drop;
  }
  size_t top = ins->n_ahead + subdirs, k = 0;
  for (size_t i = 0; i < d->n && k < subdirs; i++) {
    const struct dent *e = &d->v[i];
    if (e->st.type != TB_FT_DIR || strcmp(e->name, ".") == 0 || strcmp(e->name, "..") == 0)
      continue;
    ins->ahead[top - 1 - k++] = (struct ahead){vol, e->st.inum, depth};
  }
  ins->n_ahead = top;
}

/* On the worker, with no job: list the directory on top of the queue into
 * the cache, under a deadline of its own, and queue its own subdirectories
 * on top while it is less than AHEAD_DEPTH below the listing asked for: a
 * walker that reached a tree finds its next few levels made (a find of 20
 * directories of 25 files each, while the walker was in a big directory
 * before them: 14-15 ms instead of 16-20).  Each listing asked for allows
 * AHEAD_BUDGET listings ahead, so a big tree is not read unasked.  Errors
 * are dropped. */
void tbi_list_ahead(struct tb_inspect *ins)
{
  while (ins->n_ahead > 0) {
    struct ahead a = ins->ahead[--ins->n_ahead];
    if (a.vol >= ins->n_vols || !ins->vols[a.vol].fs || dir_cached(&ins->vols[a.vol], a.inum))
      continue;
    if (ins->ahead_budget == 0) {
      ins->n_ahead = 0;
      return;
    }
    ins->ahead_budget--;
    ins->deadline_ms = tbi_mono_ms() + atomic_load(&ins->budget_ms) / 4;
    ins->deadline_hit = false;
    atomic_store(&ins->giving_up, false);
    tsk_error_reset();
    const struct cached_dir *d = tbi_get_listing(ins, &ins->vols[a.vol], a.inum, true);
    if (d && a.depth < AHEAD_DEPTH)
      queue_ahead(ins, a.vol, d, a.depth + 1);
    tsk_error_reset();
    return;
  }
}

static struct cached_dir *cache_miss(struct tb_inspect *ins, uint64_t inum)
{
  ins->cache_miss = true;
  errno = EAGAIN;
  tb_error("directory %" PRIu64 " is not cached", inum);
  return NULL;
}

/* The listing of directory INUM, from the cache or read now; LAZY: it may
 * be names first (n_partial), else it is complete.  The pointer is valid
 * until the next tbi_get_listing() on the same volume. */
struct cached_dir *tbi_get_listing(struct tb_inspect *ins, struct vol *v, uint64_t inum, bool lazy)
{
  for (size_t i = 0; i < v->n_dirs; i++)
    if (v->dirs[i]->inum == inum) {
      struct cached_dir *d = v->dirs[i];
      d->tick = ++ins->tick;
      if (lazy || d->n_partial == 0)
        return d;
      if (ins->cache_only) /* reads the disk: the worker's */
        return cache_miss(ins, inum);
      return dir_complete(ins, v, d) == 0 ? d : NULL;
    }
  if (ins->cache_only)
    return cache_miss(ins, inum);
  trace_read_dir(inum);
  struct cached_dir *d = read_dir(ins, v, inum, lazy);
  if (!d)
    return NULL;
  evict_dirs(v, d->n);
  d->tick = ++ins->tick;
  v->dirs[v->n_dirs++] = d;
  v->n_entries += d->n;
  return d;
}

struct cached_dir *tbi_get_dir(struct tb_inspect *ins, struct vol *v, uint64_t inum)
{
  return tbi_get_listing(ins, v, inum, false);
}

static const struct dent *find_dent(const struct cached_dir *d, const char *name)
{
  struct dent key = {.name = (char *)name};
  return d->n > 0 ? bsearch(&key, d->v, d->n, sizeof *d->v, dent_cmp) : NULL;
}

struct vol *tbi_get_vol(struct tb_inspect *ins, size_t vol)
{
  if (vol >= ins->n_vols) {
    errno = ENOENT;
    tb_error("%s: no volume %zu", tb_disk_name(ins->disk), vol);
    return NULL;
  }
  return &ins->vols[vol];
}

/* Resolve PATH to its stat, one component at a time through the listings. */
int tbi_resolve(struct tb_inspect *ins, struct vol *v, const char *path, struct tb_istat *out)
{
  struct tb_istat cur = v->root;
  const char *p = path;
  char comp[1100];
  while (*p) {
    while (*p == '/')
      p++;
    if (!*p)
      break;
    size_t len = strcspn(p, "/");
    if (len >= sizeof comp) {
      errno = ENAMETOOLONG;
      return tb_error("%s: name too long", path);
    }
    memcpy(comp, p, len);
    comp[len] = '\0';
    p += len;
    if (cur.type != TB_FT_DIR) {
      errno = ENOTDIR;
      return tb_error("%s: not a directory", path);
    }
    /* A names-first listing serves the way to a subdirectory; a file's
     * stat needs the attributes (the whole listing's, in spans). */
    struct cached_dir *d = tbi_get_listing(ins, v, cur.inum, true);
    const struct dent *e = d ? find_dent(d, comp) : NULL;
    if (e && e->st.partial)
      e = (d = tbi_get_dir(ins, v, cur.inum)) ? find_dent(d, comp) : NULL;
    if (!d)
      return -1;
    if (!e) {
      errno = ENOENT;
      return tb_error("%s: no such file in %s", path, v->pub.name);
    }
    cur = e->st;
  }
  *out = cur;
  return 0;
}

/* The work of each request, on the worker.  They return -1 with errno and
 * tb_errmsg() on failure, like the public functions they serve. */

int tbi_do_stat(struct tb_inspect *ins, struct job *j)
{
  struct vol *v = tbi_get_vol(ins, j->vol);
  return v ? tbi_resolve(ins, v, j->path, &j->st) : -1;
}

/* Copy a listing out of the cache: the cache may evict it while a walk recurses. */
struct dent *tbi_copy_listing(const struct cached_dir *d, size_t *n)
{
  struct dent *v = calloc(d->n ? d->n : 1, sizeof *v);
  if (!v)
    return NULL;
  for (size_t i = 0; i < d->n; i++)
    v[i] = (struct dent){.name = d->v[i].name, .st = d->v[i].st};
  *n = d->n;
  return v;
}

int tbi_do_readdir(struct tb_inspect *ins, struct job *j)
{
  struct vol *v = tbi_get_vol(ins, j->vol);
  struct tb_istat st;
  int r = v ? tbi_resolve(ins, v, j->path, &st) : -1;
  if (r == 0 && st.type != TB_FT_DIR) {
    errno = ENOTDIR;
    r = tb_error("%s: not a directory", j->path);
  }
  /* A lazy readdir gets a names-first listing once; listed again, the
   * directory is being walked again (`find -ls` after `find`): whole. */
  struct cached_dir *d = r == 0 ? tbi_get_listing(ins, v, st.inum, j->lazy) : NULL;
  if (d && d->n_partial > 0 && d->served)
    d = tbi_get_dir(ins, v, st.inum);
  else if (d && d->n_partial > 0)
    d->served = true;
  if (r == 0 && !d)
    r = -1;
  if (r == 0) {
    ins->ahead_budget = AHEAD_BUDGET;
    queue_ahead(ins, j->vol, d, 1);
  }
  /* The callback must not re-enter this handle (its request would wait for
   * this one), so the cached listing cannot move under us while we iterate.
   * On the worker, the callback section is entered once per CALLBACK_BATCH
   * entries, not per entry (two mutex operations per name were a fifth of
   * a 20,000-entry listing's time): a caller giving up waits for at most
   * one batch. */
  enum { CALLBACK_BATCH = 256 };
  for (size_t i = 0; r == 0 && i < d->n;) {
    size_t end = d->n - i > CALLBACK_BATCH ? i + CALLBACK_BATCH : d->n;
    if (ins->cache_only) { /* on the caller's own thread (tb_inspect_readdir) */
      for (; r == 0 && i < end; i++)
        r = j->dir_fn(j->ctx, d->v[i].name, &d->v[i].st);
    } else if ((r = tbi_callback_enter(ins)) == 0) {
      for (; r == 0 && i < end; i++)
        r = j->dir_fn(j->ctx, d->v[i].name, &d->v[i].st);
      tbi_callback_leave(ins);
    }
  }
  return r;
}
