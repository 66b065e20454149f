/* SPDX-License-Identifier: BSD-3-Clause */
/* lib/inspect-internal.h: what the inspect-*.c files share, and nothing
 * outside them includes (in the manner of nbdkit's server/internal.h): the
 * structs, the functions one file gives another (tbi_ names, one section
 * per file) and the lock order.  inspect.h is the public API.
 *
 * Inspection of guest disks with The Sleuth Kit.
 *
 * How it works.  A tb_disk is a byte source (NBD export, file, callback).  A
 * tb_inspect hands the disk to libtsk through tsk_img_open_external(), finds
 * the volume system (MBR/GPT) or an unpartitioned filesystem, and opens each
 * recognised filesystem once.  Everything else is built from one primitive,
 * the directory listing: read_dir() reads a directory (ext and NTFS
 * directories with our own readers, which avoid libtsk's quadratic
 * tsk_fs_dir_add; the others through libtsk), keeps only allocated, real
 * (not TSK-virtual) entries with sane names, loads each entry's metadata,
 * sorts the entries by name and caches the result per volume (LRU, bounded
 * by directories and entries).  Path lookups walk these
 * listings with a binary search per component, so stat and lookup cost no
 * filesystem I/O once a directory is cached, and lookups can only ever find
 * what readdir shows.
 *
 * Robustness.  Each handle has a worker thread that alone touches libtsk and
 * the caches (content reads of a file mapped at open go to the disk from the
 * caller's thread: see struct frun); a public call packs its arguments into a job the worker owns,
 * hands it over and waits on a condition variable until the job's deadline.
 * The worker's image read callback enforces the same deadline: once it is
 * spent every further read fails, libtsk unwinds with an error and the caller
 * gets EIO.  Walks also check the deadline between entries (cached listings
 * need no reads), skip directories already on the current path (cycles in a
 * hostile filesystem) and stop at a depth limit.  What a read cannot stop
 * (libtsk computing run lists in quadratic time) the wait does: the caller
 * abandons the job and answers EIO, the handle is stuck (calls fail at once)
 * until the worker finishes, and the worker, holding references to the job,
 * the handle and the disk, frees them whenever that is.  Sizes libtsk is
 * known to choke on are refused before it sees them (size_plausible).
 *
 * Changes.  tb_inspect_diff() walks the base and the live filesystem and
 * compares them by path.  The dirty map narrows the work: a volume with no
 * dirty byte is not read at all, and a file whose metadata did not change is
 * changed only if one of its content runs (from libtsk's attribute run lists)
 * lies in a dirty range.
 *
 * The files, each owning one concern: inspect-disk.c (byte sources,
 * ranges, dirty maps), inspect-handle.c (a handle, libtsk's image, volumes),
 * inspect-list.c (directory listings and their cache, path lookup),
 * inspect-ext.c (ext2/3 block maps past libtsk), inspect-meta.c (guest
 * metadata libtsk gets wrong), inspect-file.c (files: maps, reads, links,
 * xattrs), inspect-walk.c (walks, owners, content runs), inspect-worker.c
 * (the worker thread and the deadline), inspect-request.c (the public
 * calls), inspect-diff.c (the diff by walks), inspect-geom.c (metadata
 * record geometry), inspect-index.c (the index of a base and the diff
 * through it).
 *
 * Threads and locks.  Everything under "the worker's alone" in struct
 * tb_inspect, libtsk and the listing caches are touched by the handle's
 * worker thread only (every function of inspect-list.c, -ext.c, -meta.c,
 * -walk.c, -geom.c and the do_* jobs runs there); callers touch a handle
 * only through a job (inspect-worker.c) or fields that are atomic or set at
 * open.  One exception: a readdir the cache can answer runs on the caller's
 * thread under ins->mu while the worker is idle (no job, not listing ahead:
 * readdir_cached in inspect-request.c), reading nothing from the disk; the
 * worker, which touches the caches only in a job or listing ahead, cannot
 * run meanwhile.  Two mutexes per handle, in this order, and never both at
 * once:
 *
 *   1. ins->mu     the job slot, stuck, closing/ended, orphans,
 *                  listing_ahead (and the condition variables wake and
 *                  done).  The worker drops it while a job runs or it lists
 *                  ahead; a cached readdir holds it throughout, the
 *                  caller's callback included.
 *   2. ins->cb_mu  held on the worker while a caller's callback runs
 *                  (tbi_callback_enter/leave); a caller that abandons a job
 *                  takes it, after releasing mu, to wait out a callback in
 *                  progress.
 *
 * So no code holds mu while it takes cb_mu or the reverse, and a caller's
 * callback (run under cb_mu, or mu) must not call into the same handle.  The
 * reference counts (disk, handle, job, index) are atomics, taken and
 * dropped without a lock; tbi_n_stuck and a disk's stuck count likewise.
 */
#ifndef TB_INSPECT_INTERNAL_H
#define TB_INSPECT_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <tsk/libtsk.h>
/* libtsk's definitions of the on-disk records (ext2fs_sb, ntfs_mft...), which
 * our own parsers read; they need libtsk.h first. */
#include <tsk/fs/tsk_ext2fs.h>
#include <tsk/fs/tsk_ntfs.h>

#include "inspect.h"
#include "ntfs-mft.h"
#include "vector.h"

/* ---- Limits ---- */
#define DIR_CACHE_MAX 256 /* directories cached per volume */
#define AHEAD_MAX 64      /* directories queued to be listed ahead (inspect-list.c) */
#define AHEAD_DEPTH 3     /* levels below a listed directory listed ahead */
#define AHEAD_BUDGET 64   /* directories listed ahead per listing asked for */
#define WALK_MAX_DEPTH 256
#define NTFS_FIRST_USER_RECORD 16 /* ntfs-3g's FILE_first_user */

/* ---- A disk (inspect-disk.c) ---- */
struct tb_disk {
  atomic_int refs;
  atomic_int stuck; /* inspection workers on this disk abandoned at a deadline */
  uint64_t size;
  tb_disk_read_fn read;
  void (*close)(void *opaque);
  void *opaque;
  struct nbd_pool *nbd; /* when the disk is an NBD export (inspect-disk.c) */
  int fd;               /* when it is a local file (tb_disk_open_fd), else -1 */
  char name[256];
};

/* ---- A handle, its volumes and their cached listings (inspect-handle.c) ---- */
struct dent {
  char *name;
  struct tb_istat st;
  uint16_t seq; /* st.partial on NTFS: the index entry's sequence number */
};

struct cached_dir {
  uint64_t inum;
  uint64_t tick; /* last use, for LRU */
  size_t n;
  struct dent *v;   /* sorted by name */
  size_t n_partial; /* entries without their attributes yet (st.partial) */
  bool served;      /* given to a lazy readdir with them */
};

struct vol {
  struct tb_volume pub;
  TSK_FS_INFO *fs;
  struct tb_istat root;
  struct cached_dir *dirs[DIR_CACHE_MAX];
  size_t n_dirs, n_entries;
  /* Our own readers of what libtsk gets wrong or does not show (inspect-meta.c),
   * set up at the first use. */
  struct geom *ext_geom; /* ext: where each inode lives */
  bool ext_geom_tried;
  uint64_t fat_data_sect; /* FAT/exFAT: the sector libtsk's inode numbers count from */
  uint32_t fat_ssize, fat_per_sect;
  bool fat_tried;
  /* NTFS: $MFT's geometry for our record reader (lib/ntfs-mft.c), from
   * libtsk at the first listing; TB_NTFS_MFT's mode and what each reader
   * stat'ed (inspect-meta.c). */
  struct tb_ntfs_geom ntfs_geom;
  struct tb_ntfs_run *ntfs_runs;
  bool ntfs_tried, ntfs_ok;
  enum { NTFS_MFT_OURS, NTFS_MFT_LIBTSK, NTFS_MFT_CHECK } ntfs_mode;
  size_t ntfs_ours, ntfs_libtsk;
  /* The last runs of records a listing read (NTFS MFT records, ext inodes;
   * inspect-list.c, vol_span). */
  struct vol_span {
    uint64_t off, tick;
    size_t len;
    unsigned char *buf;
  } spans[4];
  uint64_t span_tick;
};

/* Changes found by a diff, before they are sorted and reported. */
struct change {
  enum tb_change kind;
  char *path;
  struct tb_istat st;
  /* Changed by its content bytes alone, or a regular file with another
   * inode (deleted and made again, renamed over) and the same metadata:
   * confirmed against the base's copy of the file before it is reported
   * (content_differs: at the dirty file offsets, or the whole content). */
  enum { CONFIRM_NONE, CONFIRM_DIRTY, CONFIRM_WHOLE } confirm;
};

TB_VECTOR(changes, struct change);

/* A request shipped to a handle's worker thread.  The caller and the worker
 * each hold a reference; arguments and results live here, never on the
 * caller's stack, so a worker that overruns its deadline and is abandoned
 * only ever writes into memory it owns. */
enum job_kind {
  JOB_OPEN,
  JOB_STAT,
  JOB_READDIR,
  JOB_READLINK,
  JOB_OPEN_FILE,
  JOB_PREAD,
  JOB_WALK,
  JOB_INDEX,
  JOB_IDIFF,
  JOB_XATTRS,
  JOB_FRANGES
};

struct job {
  atomic_int refs;
  enum job_kind kind;
  int64_t deadline_ms;   /* CLOCK_MONOTONIC */
  atomic_bool abandoned; /* the caller gave up: no callback may run, results are dropped */
  bool started, done;    /* under ins->mu */
  /* arguments */
  size_t vol;
  char *path;
  tb_inspect_dir_fn dir_fn;
  tb_inspect_walk_fn walk_fn;
  void *ctx;
  struct tb_ranges dirty; /* JOB_WALK: a copy of the caller's, used if has_dirty */
  bool has_dirty, owners_only;
  bool lazy;            /* JOB_READDIR: names first (tb_inspect_readdir_lazy) */
  struct tb_disk *base; /* JOB_WALK: compare touched bytes with this disk (a reference) */
  TSK_FS_FILE *file;    /* JOB_PREAD: the file; JOB_OPEN_FILE: the result */
  struct frun *runs;    /* JOB_OPEN_FILE: the file's content map, if it has one */
  size_t n_runs;
  uint64_t off;
  size_t len;
  struct tb_inspect_index *index; /* JOB_IDIFF: a reference; JOB_INDEX: the result */
  size_t ivol;                    /* JOB_IDIFF: the volume in INDEX */
  /* results */
  struct changes *changes;    /* JOB_IDIFF */
  struct tb_xattrs *xattrs;   /* JOB_XATTRS */
  struct tb_ranges franges;   /* JOB_FRANGES: file offsets whose bytes lie in DIRTY */
  struct tb_diff_stats stats; /* JOB_IDIFF */
  char *buf;                  /* JOB_READLINK, JOB_PREAD: LEN bytes */
  struct tb_istat st;
  ssize_t r;
  int err;
  char msg[512];
};

struct tb_inspect {
  /* Shared between callers and the worker, under mu. */
  pthread_mutex_t mu;
  pthread_cond_t wake; /* to the worker: a job, files to close, or closing */
  pthread_cond_t done; /* to callers: a job ended, the slot is free, the worker ended */
  atomic_int refs;     /* the owner (until tb_inspect_close) and the worker */
  struct job *job;     /* the one job in flight, or NULL */
  bool stuck;          /* job was abandoned and is still running */
  bool closing, ended;
  struct tb_ifile *orphans; /* closed by their owner, for the worker to release */
  atomic_llong budget_ms;
  atomic_bool giving_up;   /* the job's caller gave up: every further disk read fails */
  atomic_bool closing_now; /* set by tb_inspect_close: a listing ahead stops at once */
  /* Held while a caller's callback runs on the worker, so that none runs
   * after the caller gave up and returned. */
  pthread_mutex_t cb_mu;
  /* Set at open, read-only afterwards (readers need no lock). */
  struct tb_disk *disk;
  TSK_VS_INFO *vs;
  struct vol *vols;
  size_t n_vols, cap_vols; /* grown as a vector (add_volume) */
  /* The worker's alone: libtsk and the caches. */
  TSK_IMG_INFO *img;
  unsigned char *tail; /* the disk's last bytes, once read (img_read) */
  struct job *running;
  int64_t deadline_ms; /* of the job in progress */
  bool deadline_hit;
  uint64_t tick;
  /* Directories to list while idle (tbi_list_ahead): a stack, the
   * subdirectories of the latest listing on top, first child first; each
   * with its depth below the listing asked for, and how many more listings
   * ahead that listing allows (ahead_budget). */
  struct ahead {
    size_t vol;
    uint64_t inum;
    unsigned depth;
  } ahead[AHEAD_MAX];
  size_t n_ahead, ahead_budget;
  /* Set and cleared under mu: tbi_list_ahead is running (closing_now ends
   * it, and no caller may serve itself from the cache meanwhile). */
  bool listing_ahead;
  /* Under mu: a caller serves a listing from the cache on its own thread
   * (tb_inspect_readdir): tbi_get_dir reads nothing and says cache_miss. */
  bool cache_only, cache_miss;
};

/* ---- A mapped file (inspect-file.c) ---- */
#define FRUN_ZERO UINT64_MAX
#define FRUN_MAX 1000000 /* runs in a map; a file with more reads through libtsk */
struct frun {
  uint64_t foff, len; /* bytes of the file */
  uint64_t doff;      /* disk byte of foff, or FRUN_ZERO */
};

struct tb_ifile {
  struct tb_inspect *ins;
  TSK_FS_FILE *file;
  size_t vol;
  uint64_t size;
  struct frun *runs; /* the content map, or NULL */
  size_t n_runs;
  struct tb_ifile *next_orphan;
};

/* ---- Metadata geometry (inspect-geom.c) ---- */
/* Where a filesystem keeps its metadata records (inodes, MFT entries), as
 * our own parsers read it: disk bytes [off, off+len) hold the bytes of the
 * record table from FOFF on, so the disk byte d holds record
 * (d - off + foff) / rec + first. */
enum geom_kind { GEOM_NONE, GEOM_EXT, GEOM_NTFS };

struct meta_extent {
  uint64_t off, len, foff;
};

struct geom {
  enum geom_kind kind;
  uint32_t rec;          /* inode size, MFT record size */
  uint64_t first;        /* number of the first record: 1 for ext inodes, 0 for MFT entries */
  struct meta_extent *v; /* sorted by off, disjoint, inside the volume */
  size_t n, cap;
};

/* ---- A walk (inspect-walk.c) ---- */
struct walk {
  struct tb_inspect *ins;
  struct vol *v;
  const struct tb_ranges *dirty;
  struct tb_disk *base; /* compare touched bytes with this disk, or NULL */
  bool owners_only;     /* report only touched files */
  tb_inspect_walk_fn fn;
  void *ctx;
  uint64_t stack[WALK_MAX_DEPTH];
  int depth;
  char path[TB_PATH_MAX];
};

/* ---- Callbacks ---- */
/* tbi_ext_bmap_runs: a file's content runs as disk byte ranges: FN(CTX,
 * FOFF, d0, d1), FOFF the file offset of d0, UINT64_MAX for an indirect
 * block.  FN returns true to stop. */
typedef bool (*bmap_run_fn)(void *ctx, uint64_t foff, uint64_t d0, uint64_t d1);

/* Decoded names and values of a file's extended attributes, one at a time. */
typedef void (*xattr_fn)(void *ctx, const char *name, const unsigned char *val, size_t len);

/* A file's content run as disk bytes [d0, d1) (tbi_for_each_run); true to
 * stop. */
typedef bool (*run_fn)(void *ctx, uint64_t d0, uint64_t d1);

/* ---- Names (inspect-list.c) ---- */
struct name_seen {
  bool dot, dotdot; /* the directory's own "." and ".." were passed over */
};

/* An entry as the index names it, for a listing without metadata
 * (tbi_ntfs_list_names: the indexed diff loads only what it compares). */
struct ntfs_name {
  char *name;
  uint64_t ref;
  uint16_t seq;
  TSK_FS_NAME_TYPE_ENUM type;
};
TB_VECTOR(ntfs_names, struct ntfs_name);

/* ---- inspect-handle.c ---- */
extern atomic_int tbi_n_stuck; /* handles whose worker overran a deadline and still runs */
int64_t tbi_mono_ms(void);
bool tbi_past_deadline(struct tb_inspect *ins);
int tbi_tsk_fail(struct tb_inspect *ins, const char *what);
int tbi_callback_enter(struct tb_inspect *ins);
void tbi_callback_leave(struct tb_inspect *ins);
enum tb_file_type tbi_name_type(TSK_FS_NAME_TYPE_ENUM t);
void tbi_fill_stat(const TSK_FS_META *m, struct tb_istat *st);
int tbi_do_open(struct tb_inspect *ins);
void tbi_free_dir(struct cached_dir *d);
void tbi_teardown(struct tb_inspect *ins);

/* ---- inspect-list.c ---- */
char *tbi_entry_name(const TSK_FS_NAME *nm, struct name_seen *seen);
bool tbi_needs_triple_indirect(const struct vol *v, const TSK_FS_META *m, uint64_t size);
bool tbi_size_plausible(const struct vol *v, const TSK_FS_META *m);
void tbi_ntfs_names_free(struct ntfs_name *v, size_t n);
bool tbi_ntfs_list_names(struct tb_inspect *ins, struct vol *v, uint64_t inum,
                         struct ntfs_name **out, size_t *n, bool *fallback);
struct cached_dir *tbi_get_dir(struct tb_inspect *ins, struct vol *v, uint64_t inum);
struct cached_dir *tbi_get_listing(struct tb_inspect *ins, struct vol *v, uint64_t inum, bool lazy);
struct vol *tbi_get_vol(struct tb_inspect *ins, size_t vol);
int tbi_resolve(struct tb_inspect *ins, struct vol *v, const char *path, struct tb_istat *out);
int tbi_do_stat(struct tb_inspect *ins, struct job *j);
struct dent *tbi_copy_listing(const struct cached_dir *d, size_t *n);
int tbi_do_readdir(struct tb_inspect *ins, struct job *j);
void tbi_list_ahead(struct tb_inspect *ins);

/* ---- inspect-ext.c ---- */
bool tbi_ext_bmapped(const struct vol *v, const TSK_FS_META *m);
ssize_t tbi_ext_bmap_pread(struct tb_inspect *ins, struct vol *v, const TSK_FS_META *m, char *buf,
                           size_t len, uint64_t off);
void tbi_ext_bmap_runs(struct tb_inspect *ins, struct vol *v, const TSK_FS_META *m, bmap_run_fn fn,
                       void *ctx);

/* ---- inspect-meta.c ---- */
void tbi_raw_free(struct vol *v);
bool tbi_raw_read(struct vol *v, uint64_t voff, void *buf, size_t len);
void tbi_ext_xattrs(struct vol *v, const unsigned char *ino, uint32_t isz, xattr_fn fn, void *ctx);
const TSK_FS_ATTR *tbi_ntfs_attr(TSK_FS_FILE *f, uint32_t type);
ssize_t tbi_ntfs_link(TSK_FS_FILE *f, char *out, size_t size);
bool tbi_ntfs_mft_setup(struct vol *v);
int tbi_ntfs_rec_stat(struct vol *v, const unsigned char *rec, const TSK_FS_NAME *nm,
                      struct tb_istat *st);
void tbi_ntfs_mft_check(struct vol *v, const TSK_FS_NAME *nm, int ours, const struct tb_istat *a,
                        bool keep, const struct tb_istat *b);
void tbi_ntfs_streams(TSK_FS_FILE *f, xattr_fn fn, void *ctx);
char *tbi_fat_long_name(struct vol *v, TSK_FS_FILE *dir, uint64_t inum, const char *name);
bool tbi_fix_stat(struct tb_inspect *ins, struct vol *v, TSK_FS_FILE *f, const TSK_FS_NAME *nm,
                  struct tb_istat *st);
void tbi_collect_xattr(void *ctx, const char *name, const unsigned char *val, size_t len);
bool tbi_entry_stat(struct tb_inspect *ins, struct vol *v, TSK_FS_DIR *td, size_t i,
                    const TSK_FS_NAME *nm, struct tb_istat *st);
/* An ext entry's stat from its raw inode, as tbi_file_stat would give it;
 * false where libtsk must open it (inspect-meta.c says when). */
bool tbi_ext_entry_stat(struct tb_inspect *ins, struct vol *v, uint64_t inum, struct tb_istat *st);
TSK_FS_FILE *tbi_open_meta(struct tb_inspect *ins, struct vol *v, uint64_t inum);
bool tbi_ext_inode_stat(struct vol *v, uint64_t inum, const unsigned char *ino, uint32_t isz,
                        struct tb_istat *st);
bool tbi_file_stat(struct tb_inspect *ins, struct vol *v, TSK_FS_FILE *f, const TSK_FS_NAME *nm,
                   struct tb_istat *st);

/* ---- inspect-file.c ---- */
ssize_t tbi_mapped_pread(struct tb_ifile *f, char *buf, size_t len, uint64_t off);
int tbi_do_readlink(struct tb_inspect *ins, struct job *j);
int tbi_do_xattrs(struct tb_inspect *ins, struct job *j);
int tbi_do_franges(struct tb_inspect *ins, struct job *j);
int tbi_do_open_file(struct tb_inspect *ins, struct job *j);
ssize_t tbi_do_pread(struct tb_inspect *ins, struct job *j);
void tbi_close_files(struct tb_ifile *f);

/* ---- inspect-walk.c ---- */
size_t tbi_ranges_lower_bound(const struct tb_ranges *r, uint64_t off);
void tbi_for_each_run(struct tb_inspect *ins, struct vol *v, uint64_t inum, run_fn fn, void *ctx);
bool tbi_content_touched(struct tb_inspect *ins, struct vol *v, uint64_t inum,
                         const struct tb_ranges *dirty, struct tb_disk *base);
int tbi_walk_dir(struct walk *w, uint64_t inum, size_t path_len);
int tbi_do_walk(struct tb_inspect *ins, struct job *j);

/* ---- inspect-worker.c ---- */
void tbi_job_put(struct job *j);
void tbi_ins_put(struct tb_inspect *ins);
void *tbi_worker_main(void *arg);
struct job *tbi_job_new(struct tb_inspect *ins, enum job_kind kind, int64_t deadline_ms);
int64_t tbi_deadline_in(struct tb_inspect *ins, int factor);
ssize_t tbi_run_request(struct tb_inspect *ins, struct job *j);
/* TB_INSPECT_TRACE is set: jobs and directory reads say so on stderr (tests count them). */
bool tbi_tracing(void);

/* ---- inspect-request.c ---- */
int tbi_job_path(struct job *j, const char *path);
int tbi_walk_request(struct tb_inspect *ins, size_t vol, const struct tb_ranges *dirty,
                     struct tb_disk *base, bool owners_only, tb_inspect_walk_fn fn, void *ctx,
                     int64_t deadline_ms);

/* ---- inspect-diff.c ---- */
bool tbi_meta_changed(const struct tb_istat *a, const struct tb_istat *b);
bool tbi_replaced(const struct tb_istat *a, const struct tb_istat *b, int *confirm);
int tbi_changes_add(struct changes *c, enum tb_change kind, const char *vol, const char *path,
                    const struct tb_istat *st);

/* ---- inspect-geom.c ---- */
void tbi_geom_free(struct geom *g);
bool tbi_ext_inode_off(struct tb_inspect *ins, struct vol *v, uint64_t inum, uint64_t *voff,
                       uint32_t *isz);
int tbi_vol_geometry(struct tb_inspect *ins, struct vol *v, struct geom *g);
bool tbi_geom_covers(const struct geom *live, const struct geom *base);

/* ---- inspect-index.c ---- */
void tbi_index_put(struct tb_inspect_index *idx);
int tbi_do_index(struct tb_inspect *ins, struct job *j);
bool tbi_index_of(const struct tb_inspect_index *idx, struct tb_inspect *base);
int tbi_index_volume(const struct tb_inspect_index *idx, const struct tb_volume *bv,
                     const struct tb_volume *lv, bool *by_design);
int tbi_do_idiff(struct tb_inspect *ins, struct job *j);
int tbi_idiff_request(struct tb_inspect_index *idx, size_t ivol, struct tb_inspect *base,
                      struct tb_inspect *live, size_t li, const struct tb_ranges *dirty,
                      int64_t deadline_ms, struct changes *out, struct tb_diff_stats *stats);

#endif /* TB_INSPECT_INTERNAL_H */
