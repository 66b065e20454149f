/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer target: lib/ntfs-mft.c, the MFT record reader of NTFS
 * listings, on a record of the input's first 1024 bytes (zeros past its
 * end) in a buffer of exactly that size, so ASan sees any read past it:
 * the update sequence undone (or not: the parser is then given the raw
 * record), then parsed; a 1025th byte picks the record number (7 is
 * $Boot, whose run offsets of 0 are not holes) and NTFS 1.2's holes.  An
 * accepted record's streams, names and reparse point must lie inside the
 * record and the names arena.  Seeds: the records of a small mkntfs
 * volume filled by ntfs-3g (files resident and not, sparse, compressed,
 * an ADS, a symlink, a hard link, a 200-entry directory). */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "ntfs-mft.h"

#define REC 1024

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool inside(const void *p, size_t n, const void *base, size_t len)
{
  const unsigned char *b = base, *q = p;
  return q >= b && n <= len && (size_t)(q - b) <= len - n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static const struct tb_ntfs_run runs[] = {{16, 64}, {UINT64_MAX, 4}, {200, 8}};
  struct tb_ntfs_geom g = {.rec_size = REC,
                           .cluster_size = 4096,
                           .clusters = 4096,
                           .n_records = 400,
                           .runs = runs,
                           .n_runs = 3};
  unsigned char *rec = malloc(REC);
  if (!rec)
    return 0;
  memset(rec, 0, REC);
  memcpy(rec, data, size < REC ? size : REC);
  uint64_t num = size > REC ? data[REC] % 32 : 20;
  g.nt4 = size > REC && (data[REC] & 0x80);
  (void)tb_ntfs_fixup(rec, REC);
  static struct tb_ntfs_rec out;
  if (tb_ntfs_parse(&g, num, rec, &out) == 0) {
    if (out.n_streams > TB_NTFS_MAX_STREAMS)
      abort();
    for (size_t i = 0; i < out.n_streams; i++) {
      const struct tb_ntfs_stream *s = &out.streams[i];
      if (!s->name ||
          (*s->name && !inside(s->name, strlen(s->name) + 1, out.names, sizeof out.names)))
        abort();
      if (s->data && !inside(s->data, s->size, rec, REC))
        abort();
    }
    if (out.reparse && !inside(out.reparse, out.reparse_len, rec, REC))
      abort();
  }
  uint64_t off, end;
  if (tb_ntfs_rec_offset(&g, num * 13, &off, &end) && (off + REC > end || end - off > 64 * 4096))
    abort();
  free(rec);
  return 0;
}
