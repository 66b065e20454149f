/* SPDX-License-Identifier: BSD-3-Clause */
/* The geometry fuzzers' disk: the fuzzer's input as a buffer-backed
 * tb_disk's read callback, zeros past its end.  Included after
 * tests/fuzz/inspect-all.h. */
#ifndef TB_FUZZ_BUF_DISK_H
#define TB_FUZZ_BUF_DISK_H

struct buf {
  const uint8_t *data;
  size_t size;
};

static int buf_read(void *opaque, void *out, size_t len, uint64_t off)
{
  const struct buf *b = opaque;
  memset(out, 0, len);
  if (off < b->size)
    memcpy(out, b->data + off, len < b->size - off ? len : b->size - off);
  return 0;
}

#endif
