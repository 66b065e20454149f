/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: NTFS MFT records read by us (see ntfs-mft.c). */
#ifndef TABULA_NTFS_MFT_H
#define TABULA_NTFS_MFT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One run of $MFT's $DATA, in clusters; lcn UINT64_MAX for a run libtsk
 * keeps as a hole or filler (a record there is not read by us). */
struct tb_ntfs_run {
  uint64_t lcn, len;
};

/* Where the records lie, as libtsk found it at open (NTFS_INFO). */
struct tb_ntfs_geom {
  uint32_t rec_size;     /* bytes per record (mft_rsize_b) */
  uint32_t cluster_size; /* bytes per cluster (csize_b) */
  uint64_t clusters;     /* clusters in the volume (block_count): run checks */
  uint64_t n_records;    /* records 0 .. n_records-1 may be read */
  bool nt4;              /* NTFS 1.2: a run offset of -1 is a hole anywhere */
  const struct tb_ntfs_run *runs;
  size_t n_runs;
};

/* The volume byte offset of record REC into *OFF, and (RUN_END not NULL)
 * where its run ends; false if it lies outside the runs, across two runs,
 * or in a hole. */
bool tb_ntfs_rec_offset(const struct tb_ntfs_geom *g, uint64_t rec, uint64_t *off,
                        uint64_t *run_end);

/* Undo the update sequence of a SIZE-byte record (a multiple of 512) in
 * place; false if it is torn (a sector's tail is not the sequence number)
 * or its array is malformed (one entry per sector, inside the first). */
bool tb_ntfs_fixup(unsigned char *rec, size_t size);

#define TB_NTFS_MAX_STREAMS 32
#define TB_NTFS_NAMES_MAX 4096

/* A $DATA attribute, as libtsk lists it. */
struct tb_ntfs_stream {
  const char *name;          /* UTF-8 as libtsk names it; "" for the unnamed stream */
  uint64_t size;             /* its size (libtsk's TSK_FS_ATTR size) */
  const unsigned char *data; /* the resident content (size bytes), NULL if non-resident */
  uint16_t flags;            /* the attribute's flags (0x0001 compressed, 0x4000
                                encrypted, 0x8000 sparse) */
};

/* What stat needs of a base record, equal to what libtsk's
 * tsk_fs_file_open_meta() would load from it (ntfs-mft.c). */
struct tb_ntfs_rec {
  uint16_t seq, nlink;
  bool in_use, dir;
  bool has_si;                          /* $STANDARD_INFORMATION */
  uint64_t crtime, mtime, ctime, atime; /* NT times (100 ns since 1601) */
  uint32_t si_len;                      /* its content's length */
  uint32_t dos;                         /* its DOS flags (when si_len >= 36) */
  bool has_reparse;                     /* the first $REPARSE_POINT: */
  const unsigned char *reparse;         /* its resident content, or NULL */
  uint32_t reparse_len;
  bool has_idxalloc; /* the first $INDEX_ALLOCATION and its size */
  uint64_t idxalloc_size;
  uint64_t size; /* a file's size as libtsk gives it: its last unnamed $DATA's */
  struct tb_ntfs_stream streams[TB_NTFS_MAX_STREAMS]; /* every $DATA, in record order */
  size_t n_streams;
  char names[TB_NTFS_NAMES_MAX]; /* the streams' names */
};

/* Parse record REC (G->rec_size bytes, fixed up) into OUT, which points
 * into BUF.  0, or -1 if anything is unusual (an attribute list, an
 * extension record, a layout or value libtsk would refuse or read in a
 * way not mirrored here): libtsk must read it. */
int tb_ntfs_parse(const struct tb_ntfs_geom *g, uint64_t rec, const unsigned char *buf,
                  struct tb_ntfs_rec *out);

/* UNITS UTF-16LE code units at P into OUT (at least 4 * UNITS + 1 bytes),
 * NUL-terminated, as libtsk's lenient tsk_UTF16toUTF8 decodes them: an
 * unpaired surrogate is '^' (a high one takes the unit after it along), a
 * high surrogate at the very end makes the whole string empty.  Returns
 * the length written. */
size_t tb_ntfs_name(const unsigned char *p, size_t units, char *out);

/* An NT time as libtsk converts it (nt2unixtime, nt2nano): seconds since
 * 1970 taken modulo 2^32, unsigned; *NS the 100 ns remainder in ns. */
int64_t tb_ntfs_time(uint64_t nt, uint32_t *ns);

#endif
