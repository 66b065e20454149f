/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer target: the NTFS record geometry of the indexed diff
 * (lib/inspect-geom.c's ntfs_geometry: the boot sector's record size, then
 * where the MFT lies from $MFT's own $DATA runs, which libtsk reads for it),
 * on a buffer-backed disk holding the input (zeros past its end, up to
 * 2 MiB).  lib/inspect-*.c are included whole (inspect-all.h) so the static
 * parser is reachable.  An accepted geometry must lie inside the volume,
 * sorted and disjoint. */
#include "inspect-all.h"
#include "buf-disk.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct buf b = {data, size};
  uint64_t disk_size = size > (2u << 20) ? size : 2u << 20;
  struct tb_disk *disk = tb_disk_new(disk_size, buf_read, NULL, &b, "fuzz");
  if (!disk)
    return 0;
  struct tb_inspect *ins = tb_inspect_open(disk);
  for (size_t i = 0; ins && i < ins->n_vols; i++) {
    struct vol *v = &ins->vols[i];
    if (!v->fs || !TSK_FS_TYPE_ISNTFS(v->fs->ftype))
      continue;
    struct geom g;
    if (tbi_vol_geometry(ins, v, &g) == 0) {
      for (size_t k = 0; k < g.n; k++) {
        const struct meta_extent *e = &g.v[k];
        if (e->off < v->pub.offset || e->off + e->len > v->pub.offset + v->pub.length ||
            (k && g.v[k - 1].off + g.v[k - 1].len > e->off))
          abort();
      }
      tbi_geom_free(&g);
    }
  }
  if (ins)
    tb_inspect_close(ins);
  tb_disk_unref(disk);
  return 0;
}
