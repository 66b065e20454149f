/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: the partition table of a raw disk (MBR or GPT), without libtsk.
 *
 * The core (the plugin, the iSCSI target) resolves "partition:N" regions
 * (region.h) with this reader; the view and the watchdog read volumes with
 * libtsk (inspect.h).  Both number partitions the same way, the way Linux
 * does: MBR primaries 1-4 by table slot, MBR logical partitions 5, 6... one
 * per extended boot record, GPT entries by slot (entry 0 is partition 1).
 * tests/ptable-tsk.sh checks that the two agree on MBR and GPT disks.
 *
 * Every field read from the disk is bounds-checked: a hostile table gives
 * fewer partitions or none, never a read outside the buffers or the disk, and
 * never an unbounded walk (at most TB_PTABLE_MAX partitions, GPT tables of at
 * most TB_PTABLE_GPT_ENTRIES entries, extended chains of at most
 * TB_PTABLE_MAX links).  Sectors are 512 bytes.
 */
#ifndef TB_PTABLE_H
#define TB_PTABLE_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define TB_PTABLE_MAX 256
#define TB_PTABLE_GPT_ENTRIES 1024

enum tb_ptable_kind { TB_PTABLE_NONE, TB_PTABLE_MBR, TB_PTABLE_GPT };

struct tb_partition {
  uint32_t number;         /* as Linux numbers it (see above) */
  uint64_t offset, length; /* bytes; may reach past the end of the disk */
};

struct tb_ptable {
  enum tb_ptable_kind kind;
  size_t n; /* in the order of the table: MBR primaries, logicals, GPT slots */
  struct tb_partition part[TB_PTABLE_MAX];
};

/* Read LEN bytes at OFF into BUF: 0, or -1 with errno set. */
typedef int (*tb_ptable_read_fn)(void *opaque, void *buf, size_t len, uint64_t off);

/* Read the table of a disk of SIZE bytes through READ.  A disk without a
 * table (or with one that is not valid) is kind TB_PTABLE_NONE and n 0, not
 * an error; -1 only when a read fails (tb_error). */
int tb_ptable_read(tb_ptable_read_fn read, void *opaque, uint64_t size, struct tb_ptable *out);

/* The same for the raw image file at PATH. */
int tb_ptable_read_file(const char *path, struct tb_ptable *out);

/* Partition N of T, or NULL. */
const struct tb_partition *tb_ptable_find(const struct tb_ptable *t, uint32_t n);

#endif
