/* SPDX-License-Identifier: BSD-3-Clause */
/* ptable-tsk: lib/ptable (the core's MBR/GPT reader) against libtsk.
 *
 *   ptable-tsk IMAGE...
 *
 * For every image, and every partition number 1..TB_PTABLE_MAX + 8, asks
 * both readers for the partition's byte range: lib/ptable through
 * tb_ptable_read_file, libtsk through lib/inspect's tb_inspect_partition
 * (what the view calls "pN-..." and the core resolved "partition:N" with
 * before the layers were split).  Prints "IMAGE N OFF LEN" for each partition
 * found, "IMAGE volume NAME" for each volume the view shows, and "DIFF ..."
 * for each number where they disagree or a view's "pN-..." volume is not
 * partition N of lib/ptable.
 *
 * Exit 0 if they agree on every image, 1 if not, 2 on an error.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "inspect.h"
#include "ptable.h"

static int compare(const char *path)
{
  struct tb_ptable *t = malloc(sizeof *t);
  if (!t || tb_ptable_read_file(path, t) == -1) {
    fprintf(stderr, "ptable-tsk: %s\n", t ? tb_errmsg() : "out of memory");
    free(t);
    return 2;
  }
  struct tb_disk *d = tb_disk_open_file(path);
  struct tb_inspect *ins = d ? tb_inspect_open(d) : NULL;
  if (d)
    tb_disk_unref(d);
  if (!ins) {
    fprintf(stderr, "ptable-tsk: %s: %s\n", path, tb_errmsg());
    free(t);
    return 2;
  }
  int r = 0;
  for (uint32_t n = 1; n <= TB_PTABLE_MAX + 8; n++) {
    uint64_t off = 0, len = 0;
    int tsk = tb_inspect_partition(ins, n, &off, &len);
    const struct tb_partition *p = tb_ptable_find(t, n);
    if (tsk == 0 && p && p->offset == off && p->length == len)
      printf("%s %" PRIu32 " %" PRIu64 " %" PRIu64 "\n", path, n, off, len);
    else if (tsk == 0 || p) {
      printf("DIFF %s %" PRIu32 ": libtsk %s %" PRIu64 " %" PRIu64 ", ptable %s %" PRIu64
             " %" PRIu64 "\n",
             path, n, tsk == 0 ? "has" : "lacks", off, len, p ? "has" : "lacks", p ? p->offset : 0,
             p ? p->length : 0);
      r = 1;
    }
  }
  /* The view's volumes: "pN-TYPE" is partition N of the table, same bytes. */
  for (size_t i = 0; i < tb_inspect_n_volumes(ins); i++) {
    const struct tb_volume *v = tb_inspect_volume(ins, i);
    const struct tb_partition *p =
        v->partition > 0 ? tb_ptable_find(t, (uint32_t)v->partition) : NULL;
    if (v->partition > 0 && (!p || p->offset != v->offset || p->length != v->length)) {
      printf("DIFF %s volume %s at %" PRIu64 ": ptable %s\n", path, v->name, v->offset,
             p ? "has it elsewhere" : "lacks the partition");
      r = 1;
    } else
      printf("%s volume %s\n", path, v->name);
  }
  tb_inspect_close(ins);
  free(t);
  return r;
}

int main(int argc, char **argv)
{
  if (argc < 2) {
    fprintf(stderr, "usage: ptable-tsk IMAGE...\n");
    return 2;
  }
  int r = 0;
  for (int i = 1; i < argc; i++) {
    int c = compare(argv[i]);
    if (c > r)
      r = c;
  }
  return r;
}
