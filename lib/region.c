/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: regions of a disk (see region.h).
 *
 * Partition tables are read with lib/ptable, the core's own MBR and GPT
 * reader, which numbers partitions as the view's libtsk does (tests/ptable-
 * tsk.sh), so "partition:2" here and "p2-ntfs" in the view are the same bytes
 * while the core links neither libtsk nor libnbd.
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ptable.h"
#include "region.h"

int tb_region_parse(const char *s, bool tables_allowed, struct tb_region *r)
{
  unsigned n;
  unsigned long long a, b;
  char tail;
  memset(r, 0, sizeof *r);
  if (tables_allowed && strcmp(s, "mbr") == 0)
    r->kind = TB_REGION_MBR;
  else if (tables_allowed && strcmp(s, "gpt") == 0)
    r->kind = TB_REGION_GPT;
  else if (sscanf(s, "partition:%u%c", &n, &tail) == 1 && n >= 1 && n <= 128) {
    r->kind = TB_REGION_PARTITION;
    r->partition = n;
  } else if (sscanf(s, "lba:%llu-%llu%c", &a, &b, &tail) == 2 && a <= b && b < (UINT64_MAX >> 9)) {
    r->kind = TB_REGION_LBA;
    r->first_lba = a;
    r->last_lba = b;
  } else
    return -1;
  return 0;
}

int tb_image_partition(const char *path, uint32_t n, uint64_t *off, uint64_t *len)
{
  struct tb_ptable *t = malloc(sizeof *t);
  if (!t) {
    errno = ENOMEM;
    return tb_error("reading the partition table of %s: out of memory", path);
  }
  int r = tb_ptable_read_file(path, t);
  const struct tb_partition *p = r == 0 ? tb_ptable_find(t, n) : NULL;
  if (p) {
    *off = p->offset;
    *len = p->length;
  } else if (r == 0) {
    errno = ENOENT;
    r = tb_error("partition %u does not exist in the partition table of %s", n, path);
  }
  free(t);
  return r;
}

static void add(uint64_t o, uint64_t l, uint64_t size, uint64_t off[2], uint64_t len[2], int *n)
{
  if (o >= size || l == 0)
    return;
  off[*n] = o;
  len[*n] = l > size - o ? size - o : l;
  (*n)++;
}

int tb_region_resolve(const struct tb_region *r, const char *image_path, uint64_t size,
                      uint64_t off[2], uint64_t len[2], int *n)
{
  uint64_t o, l;
  *n = 0;
  switch (r->kind) {
  case TB_REGION_MBR:
    add(0, 512, size, off, len, n);
    break;
  case TB_REGION_GPT:
    add(0, 34 * 512, size, off, len, n);
    if (size > 68 * 512)
      add(size - 33 * 512, 33 * 512, size, off, len, n);
    break;
  case TB_REGION_PARTITION:
    if (tb_image_partition(image_path, r->partition, &o, &l) == -1)
      return -1;
    add(o, l, size, off, len, n);
    break;
  case TB_REGION_LBA:
    add(r->first_lba * 512, (r->last_lba - r->first_lba + 1) * 512, size, off, len, n);
    break;
  }
  return 0;
}
