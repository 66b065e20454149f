/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: inspection of guest disks -- volumes, filesystems, files, changes.
 *
 * Shared by the view (tabula-fuse) and the daemon's watchdog.  Two layers:
 *
 *   struct tb_disk     a read-only byte source: an NBD export (libnbd), a file,
 *                      or any read callback.  Reference counted; safe to use
 *                      from many threads (libnbd handles are thread-safe, files
 *                      use pread).
 *   struct tb_inspect  The Sleuth Kit (libtsk) opened over a disk: its volumes
 *                      (MBR, GPT or an unpartitioned disk) and their
 *                      filesystems (NTFS, FAT12/16/32, exFAT, ext2/3/4), read
 *                      by path.  libtsk is not thread-safe per handle, so each
 *                      handle has its own worker thread that runs its requests
 *                      one at a time: one handle may be shared between
 *                      threads, distinct handles run in parallel.  A handle is
 *                      a snapshot of the filesystem metadata as it was read
 *                      (libtsk caches blocks and this code caches
 *                      directories): to follow a disk that moves (a live
 *                      overlay), open a new handle and drop the old one.
 *
 * Hostile input: a disk is guest data and may be torn, half-written or made to
 * hurt the reader.  Every call has a deadline, its time budget
 * (tb_inspect_set_budget; walks get TB_INSPECT_WALK_FACTOR budgets, a diff
 * twice that), time spent waiting for the handle's earlier requests included.
 * At the deadline further reads from the disk fail, so libtsk gives up and
 * the call returns -1 with errno EIO.  Some damage makes libtsk compute
 * without reading (run lists built in quadratic time): the caller still gets
 * EIO at the deadline, and the work goes on in the worker, abandoned.  Until
 * it ends the handle is "stuck" (tb_inspect_stuck): its calls fail with EIO at
 * once, other handles are not affected.  The abandoned worker owns what it
 * uses, so closing a stuck handle returns at once and the worker frees it
 * when it finishes.  Callers must keep a disk's read callback valid for as
 * long as the disk lives (free its state in the disk's close callback): an
 * abandoned worker holds a reference.  Callbacks (readdir, walk) run on the
 * worker thread while the caller waits; none runs after the call returned,
 * and they must not call into the same handle.  Directory listings
 * are capped (TB_INSPECT_MAX_DIR_ENTRIES), names with '/' or NUL and the
 * "."/".." entries are never returned, and paths are resolved one component
 * at a time through the same listings, so a lookup can never see a name that
 * readdir would not show.
 *
 * Errors: -1 (or NULL) with errno (ENOENT, ENOTDIR, EISDIR, EIO, ENOMEM,
 * EINVAL) and a message in tb_errmsg().
 */
#ifndef TB_INSPECT_H
#define TB_INSPECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "util.h"

#define TB_INSPECT_MAX_DIR_ENTRIES 1000000
#define TB_INSPECT_DEFAULT_BUDGET_MS 10000
#define TB_INSPECT_WALK_FACTOR 12 /* a walk reads a whole tree: 12 budgets */
/* Handles stuck past a deadline at once, process-wide; tb_inspect_open
 * refuses new ones (EIO) beyond that, so hostile disks cannot eat every core. */
#define TB_INSPECT_MAX_STUCK 16

/* ---- disks ---- */

struct tb_disk;

/* Read exactly LEN bytes at OFF; return 0, or -1 with errno. */
typedef int (*tb_disk_read_fn)(void *opaque, void *buf, size_t len, uint64_t off);

/* A disk over a read callback.  CLOSE (may be NULL) is called on the last unref. */
struct tb_disk *tb_disk_new(uint64_t size, tb_disk_read_fn read, void (*close)(void *opaque),
                            void *opaque, const char *what);
/* A raw image file, opened read-only. */
struct tb_disk *tb_disk_open_file(const char *path);
/* A disk read from descriptor FD (a regular file, read with pread), which
 * it closes; NAME names it in messages.  NULL (FD closed) on error. */
struct tb_disk *tb_disk_open_fd(int fd, const char *name);
/* The descriptor of a disk opened by tb_disk_open_fd (byte N of the disk is
 * byte N of the file; it stays open as long as the disk), else -1.  The view
 * splices reads from it into the kernel instead of copying them. */
int tb_disk_local_fd(const struct tb_disk *d);
/* An NBD export, read-only.  URI is an NBD URI ("nbd+unix:///?socket=S",
 * "nbd://host:port") or NULL with SOCKET a unix socket path; EXPORT overrides
 * the URI's export name when not NULL. */
struct tb_disk *tb_disk_open_nbd(const char *uri, const char *socket, const char *export);
struct tb_disk *tb_disk_ref(struct tb_disk *d);
void tb_disk_unref(struct tb_disk *d);
uint64_t tb_disk_size(const struct tb_disk *d);
const char *tb_disk_name(const struct tb_disk *d);
int tb_disk_pread(struct tb_disk *d, void *buf, size_t len, uint64_t off);
/* Is an inspection of this disk still running past its deadline (a stuck
 * tb_inspect, see below)?  Callers that reopen a disk's snapshot wait for
 * this to clear, so one damaged disk keeps at most one worker busy. */
bool tb_disk_stuck(struct tb_disk *d);

/* A set of byte ranges of a disk, sorted and merged. */
struct tb_range {
  uint64_t off, len;
};
struct tb_ranges {
  struct tb_range *v;
  size_t n, cap;
};
int tb_ranges_add(struct tb_ranges *r, uint64_t off, uint64_t len); /* appends, merging */
void tb_ranges_free(struct tb_ranges *r);
uint64_t tb_ranges_bytes(const struct tb_ranges *r);
/* Does [off, off+len) intersect any range? (binary search) */
bool tb_ranges_intersect(const struct tb_ranges *r, uint64_t off, uint64_t len);

/* The allocated ("not a hole") extents of an NBD disk, from NBD block status
 * (base:allocation): on a tabula ID@overlay export these are the dirty blocks
 * (DATA and ZERO), CLEAN blocks being holes.  Fails with ENOTSUP if the disk
 * is not NBD or the server does not report block status. */
int tb_disk_dirty_ranges(struct tb_disk *d, struct tb_ranges *out);

/* ---- inspection ---- */

struct tb_inspect;

enum tb_file_type {
  TB_FT_REG = 1,
  TB_FT_DIR,
  TB_FT_LNK,
  TB_FT_CHR,
  TB_FT_BLK,
  TB_FT_FIFO,
  TB_FT_SOCK,
  TB_FT_OTHER
};

struct tb_istat {
  enum tb_file_type type;
  uint64_t inum; /* the guest filesystem's metadata address */
  uint64_t size;
  uint32_t mode; /* permission bits (07777) as the guest has them; 0 if it has none */
  uint32_t uid, gid;
  uint32_t nlink;
  int64_t mtime, atime, ctime, crtime; /* seconds since the epoch */
  uint32_t mtime_ns, atime_ns, ctime_ns;
  uint32_t rdev_major, rdev_minor; /* device nodes */
  /* A digest of what the other fields do not show: ext extended attributes,
   * NTFS alternate data streams (names and sizes) and resident data (a
   * small file's bytes live in its MFT record, not in a content run).  0
   * when there is none.  The diff compares it. */
  uint64_t xdigest;
  /* Where the content starts where the inode number is no identity: FAT
   * and exFAT's first cluster (their inode numbers are where the directory
   * entry lies); 0 elsewhere.  Like another inode, another value with the
   * same metadata is confirmed by the content. */
  uint64_t first_data;
  /* True when the file has no extended attributes for certain
   * (tb_inspect_xattrs would list none): the stat saw the whole of where
   * they live (the raw ext inode and its xattr block, the NTFS record's
   * attributes, a filesystem without any).  False when unknown.  A lister
   * (the view: ls -l asks two xattrs of every file) answers from it
   * without a request. */
  bool no_xattrs;
  /* True in a names-first listing (tb_inspect_readdir_lazy) for an entry
   * whose attributes are not read yet: only type and inum are set. */
  bool partial;
};

/* Extended attributes of a file: ext xattrs (user., trusted., security.;
 * system.* such as POSIX ACLs are not shown), NTFS alternate data streams
 * as "user.STREAM" (the way ntfs-3g shows them).  Values over
 * TB_XATTR_MAX bytes are left out. */
#define TB_XATTR_MAX 65536
struct tb_xattr {
  char *name;
  unsigned char *value;
  size_t len;
};
struct tb_xattrs {
  struct tb_xattr *v;
  size_t n, cap; /* cap: lib/inspect's, the room allocated */
};

struct tb_volume {
  char name[48];       /* "p1-ntfs", "p2-ext4", "whole-fat32" (unpartitioned) */
  int partition;       /* 1-based like Linux (sda1...), 0 for an unpartitioned disk */
  uint64_t offset;     /* bytes from the start of the disk */
  uint64_t length;     /* bytes */
  char fstype[16];     /* "ntfs", "fat32", "exfat", "ext4"... */
  uint32_t block_size; /* filesystem block (cluster) size */
};

/* Open DISK (takes a reference) and find its volumes and filesystems.  A disk
 * where no filesystem is found opens fine with zero volumes.  The open itself
 * runs under the budget (TB_INSPECT_DEFAULT_BUDGET_MS, or BUDGET_MS). */
struct tb_inspect *tb_inspect_open(struct tb_disk *disk);
struct tb_inspect *tb_inspect_open_budget(struct tb_disk *disk, int64_t budget_ms);
/* Never waits for a stuck handle (its worker frees it later). */
void tb_inspect_close(struct tb_inspect *ins);
/* Per-call time budget in milliseconds (default TB_INSPECT_DEFAULT_BUDGET_MS). */
void tb_inspect_set_budget(struct tb_inspect *ins, int64_t ms);
/* Is a request that overran its deadline still running?  Meanwhile every
 * call on the handle fails with EIO at once. */
bool tb_inspect_stuck(struct tb_inspect *ins);
struct tb_disk *tb_inspect_disk(struct tb_inspect *ins);

size_t tb_inspect_n_volumes(const struct tb_inspect *ins);
const struct tb_volume *tb_inspect_volume(const struct tb_inspect *ins, size_t i);
/* Index of the volume named NAME, or -1. */
int tb_inspect_find_volume(const struct tb_inspect *ins, const char *name);

/* Byte range of partition N (numbered as Linux does: MBR slots 1-4, logical
 * partitions from 5, GPT entries from 1) in the disk's partition table, whether
 * or not it holds a filesystem this code reads.  -1 with ENOENT if there is no
 * such partition (or no table). */
int tb_inspect_partition(struct tb_inspect *ins, uint32_t n, uint64_t *off, uint64_t *len);

/* PATH is absolute inside the volume's filesystem ("/", "/etc/passwd"). */
int tb_inspect_stat(struct tb_inspect *ins, size_t vol, const char *path, struct tb_istat *st);

/* List a directory: FN is called for each entry (not "." or ".."), with the
 * entry's stat; a non-zero return stops the listing and is returned. */
typedef int (*tb_inspect_dir_fn)(void *ctx, const char *name, const struct tb_istat *st);
int tb_inspect_readdir(struct tb_inspect *ins, size_t vol, const char *path, tb_inspect_dir_fn fn,
                       void *ctx);

/* As tb_inspect_readdir, but names first: at its first listing, an ext or
 * NTFS directory of more than TB_INSPECT_LAZY_MIN entries gives its files
 * (not its subdirectories, NTFS reparse points or system files) with their
 * name, type (the directory entry's) and inode number only, st->partial
 * set, which is all a `find` or an `ls` without -l reads; their attributes
 * are read when something asks for one (tb_inspect_stat, a walk) or the
 * directory is listed again.  Other directories and filesystems are listed
 * as by tb_inspect_readdir. */
#define TB_INSPECT_LAZY_MIN 1024
int tb_inspect_readdir_lazy(struct tb_inspect *ins, size_t vol, const char *path,
                            tb_inspect_dir_fn fn, void *ctx);

/* The extended attributes of PATH into OUT (free with tb_xattrs_free). */
int tb_inspect_xattrs(struct tb_inspect *ins, size_t vol, const char *path, struct tb_xattrs *out);
void tb_xattrs_free(struct tb_xattrs *x);

/* Symlink target into BUF (NUL-terminated, truncated to LEN-1). */
int tb_inspect_readlink(struct tb_inspect *ins, size_t vol, const char *path, char *buf,
                        size_t len);

/* Open files for reading.  Close the files before the handle; closing a file
 * never waits (the worker releases it between requests). */
struct tb_ifile;
struct tb_ifile *tb_inspect_open_file(struct tb_inspect *ins, size_t vol, const char *path);
/* Returns the bytes read (short only at the end of the file), or -1.  A
 * file whose content is plain runs of the disk (most are) was mapped at
 * open: its reads run on the caller's thread, in parallel, as plain disk
 * reads (no libtsk, so no deadline is needed beyond the disk's own); the
 * others run on the worker under the deadline like every other call. */
ssize_t tb_ifile_pread(struct tb_ifile *f, void *buf, size_t len, uint64_t off);
/* Where the bytes at OFF of F lie when they are a plain run of a local disk
 * (tb_disk_local_fd): returns how many of the LEN bytes at OFF are the bytes
 * at *FD_OFF of *FD in a row (at most LEN, not past the file's size), or 0
 * when they are not (a hole, a resident or compressed file, an NBD disk, past
 * the end): tb_ifile_pread reads those. */
size_t tb_ifile_local_run(struct tb_ifile *f, uint64_t off, size_t len, int *fd, uint64_t *fd_off);
uint64_t tb_ifile_size(const struct tb_ifile *f);
void tb_ifile_close(struct tb_ifile *f);

/* Walk every allocated file and directory of a volume, depth first, parents
 * before children.  PATH is absolute.  If DIRTY is not NULL, TOUCHED says
 * whether any of the file's content blocks lies in DIRTY (disk byte ranges);
 * else it is false.  Non-zero from FN stops the walk and is returned. */
typedef int (*tb_inspect_walk_fn)(void *ctx, const char *path, const struct tb_istat *st,
                                  bool touched);
int tb_inspect_walk(struct tb_inspect *ins, size_t vol, const struct tb_ranges *dirty,
                    tb_inspect_walk_fn fn, void *ctx);

/* The files that own blocks in RANGES (disk byte ranges): FN is called for each
 * allocated file or directory whose content blocks intersect them. */
int tb_inspect_owners(struct tb_inspect *ins, size_t vol, const struct tb_ranges *ranges,
                      tb_inspect_walk_fn fn, void *ctx);

/* Compare BASE and LIVE (the same disk before and after a session): FN gets
 * each file created, changed or deleted, path prefixed with its volume name
 * ("p1-ntfs/Users/x.txt").  DIRTY, if not NULL, are the disk bytes the session
 * wrote (the overlay's dirty map): volumes it does not touch are skipped
 * without being read, and a file whose metadata is unchanged counts as
 * changed only if bytes of its content in dirty ranges differ from BASE's
 * (the dirty map is coarser than filesystem blocks).  With DIRTY NULL, files
 * are compared by metadata only (type, size, mtime, inode, mode, owner).
 * Directories are reported created or deleted, never "changed": what
 * changed in them is their entries' own lines. */
enum tb_change { TB_CREATED = 1, TB_CHANGED, TB_DELETED };
typedef int (*tb_inspect_change_fn)(void *ctx, enum tb_change kind, const char *path,
                                    const struct tb_istat *st);
int tb_inspect_diff(struct tb_inspect *base, struct tb_inspect *live, const struct tb_ranges *dirty,
                    tb_inspect_change_fn fn, void *ctx);

/* ---- indexed changes ----
 *
 * tb_inspect_diff walks both whole trees of every volume the dirty map
 * touches: its cost follows the number of files.  An index of an immutable
 * base version makes it follow what the dirty map touches instead.
 *
 * The index holds, per volume, every path the walk shows (names, hard links,
 * stats, each directory's children), each file's content runs (disk byte
 * ranges, directory listings and ext extent-tree or indirect blocks
 * included) in a sorted interval structure, and where the filesystem keeps
 * its metadata records, from our own bounds-checked parsers: ext2/3/4 inode
 * tables (superblock and group descriptors; inode N lives at a fixed byte),
 * NTFS MFT entries (record size from the boot sector, the $MFT's own data
 * runs).  FAT and exFAT keep a file's metadata in its parent's directory
 * entries and their volumes are small (EFI system partitions): they are not
 * indexed and use the full diff, counted in volumes_full.
 *
 * tb_inspect_diff_indexed compares a volume through the index: the
 * candidates are the inodes whose metadata record lies in a dirty range,
 * those whose content runs do (a guest writing raw blocks, ext4 lazytime
 * not writing mtime), and for an NTFS extension record its base record.
 * Only the directories holding a candidate (or being one) are listed again
 * in LIVE, and only entries that are new, renumbered or candidates have
 * their metadata read; new directories are walked whole, vanished ones
 * reported from the index.  The result is what tb_inspect_diff with the
 * same DIRTY reports (same kinds, paths, stats and order), except that a
 * hostile filesystem with directory cycles may be cut differently.  A volume
 * whose geometry changed (inode table locations, MFT runs or record size,
 * offset or size) or whose type is not indexed is compared by the full diff,
 * and counted.  Both run under the handle's worker and deadline, as the rest.
 *
 * An index reads only BASE: build it once per immutable version and keep it
 * (reference counted; it is read-only, so one index serves many concurrent
 * diffs against live handles of that version).
 *
 * tb_inspect_index_get is that keeping, the one cache of the process (the
 * daemon's scan threads and the view's workers call it at once): KEY names
 * an immutable base version (the caller's spelling, e.g. "image@version"
 * and its manifest digest), BASE is a handle of it, used only when KEY is
 * not cached.  The last TB_INSPECT_INDEX_CACHE keys asked for are kept (LRU),
 * each with its index or the memo that its build failed: a failed key is
 * not built again for TB_INSPECT_INDEX_RETRY_MS while it stays cached (NULL
 * at once, errno EAGAIN), since a build that failed spent up to its whole
 * budget and a version never changes (but a busy machine can make a build
 * miss its wall-clock budget once).  Two callers missing one key at once both build it and get the
 * same index (the first kept).  Returns a reference (drop it with
 * tb_inspect_index_free) or NULL; BUILD_MS (may be NULL) is the time this
 * call spent building, 0 when the cache answered. */
struct tb_inspect_index;
struct tb_diff_stats {
  uint64_t volumes_indexed; /* compared through the index */
  uint64_t volumes_full;    /* by the full diff by design: FAT, exFAT, on one side only */
  uint64_t fallbacks;       /* by the full diff because the index could not be trusted */
  uint64_t candidates;      /* inodes whose metadata or content lies in dirty ranges */
  uint64_t files_examined;  /* live entries whose metadata was read (full diff: every file) */
  uint64_t dirs_relisted;   /* live directories listed again */
};
/* Index BASE (every volume; runs under 2 * TB_INSPECT_WALK_FACTOR budgets).
 * NULL with errno on failure. */
struct tb_inspect_index *tb_inspect_index_build(struct tb_inspect *base);
struct tb_inspect_index *tb_inspect_index_ref(struct tb_inspect_index *idx);
void tb_inspect_index_free(struct tb_inspect_index *idx);            /* drops a reference */
uint64_t tb_inspect_index_files(const struct tb_inspect_index *idx); /* paths indexed */
size_t tb_inspect_index_bytes(const struct tb_inspect_index *idx);   /* memory held */
#define TB_INSPECT_INDEX_CACHE 4
#define TB_INSPECT_INDEX_RETRY_MS (10 * 60 * 1000) /* a failed build is tried again after */
struct tb_inspect_index *tb_inspect_index_get(const char *key, struct tb_inspect *base,
                                              int64_t *build_ms);
/* Like tb_inspect_diff, through IDX (built from BASE's disk; NULL, or DIRTY
 * NULL: the full diff, counted as fallbacks).  STATS (may be NULL) is
 * zeroed and filled. */
int tb_inspect_diff_indexed(struct tb_inspect_index *idx, struct tb_inspect *base,
                            struct tb_inspect *live, const struct tb_ranges *dirty,
                            tb_inspect_change_fn fn, void *ctx, struct tb_diff_stats *stats);

const char *tb_change_name(enum tb_change kind);    /* "created", "changed", "deleted" */
const char *tb_file_type_name(enum tb_file_type t); /* "file", "dir", "symlink"... */

#endif
