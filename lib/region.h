/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: regions of a disk, as the configuration names them.
 *
 *   "mbr"              sector 0
 *   "gpt"              the primary table (sectors 0-33) and the backup table
 *                      (the last 33 sectors)
 *   "partition:N"      partition N (1-based, as Linux numbers them) of the MBR
 *                      or GPT of the image the client runs, read
 *                      by lib/ptable when the region is resolved
 *   "lba:FIRST-LAST"   512-byte sectors, inclusive
 *
 * Preserved ranges (conf.h) and protected regions (watchdog-conf.h) both use them,
 * so both are parsed and resolved here, once.
 */
#ifndef TB_REGION_H
#define TB_REGION_H

#include <stdbool.h>
#include <stdint.h>

#include "util.h"

enum tb_region_kind { TB_REGION_MBR, TB_REGION_GPT, TB_REGION_PARTITION, TB_REGION_LBA };

struct tb_region {
  enum tb_region_kind kind;
  uint32_t partition;           /* TB_REGION_PARTITION: 1..128 */
  uint64_t first_lba, last_lba; /* TB_REGION_LBA: inclusive */
};

/* Parse TEXT; with tables_allowed false only "partition:N" and "lba:A-B" are
 * accepted.  Returns 0 or -1 (no message: the caller names the JSON path). */
int tb_region_parse(const char *text, bool tables_allowed, struct tb_region *out);

/* The byte ranges of R on a disk of SIZE bytes whose raw image is IMAGE_PATH,
 * clipped to the disk: N (0, 1 or 2) ranges in OFF/LEN.  A partition that does
 * not exist is an error that names it. */
int tb_region_resolve(const struct tb_region *r, const char *image_path, uint64_t size,
                      uint64_t off[2], uint64_t len[2], int *n);

/* Byte range of partition N in the MBR or GPT of the raw image at PATH. */
int tb_image_partition(const char *path, uint32_t n, uint64_t *off, uint64_t *len);

#endif
