/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: the overlay engine -- a client's dirty blocks on top of one base version.
 *
 * See overlay.c for the design notes.  In short: one file per session,
 *   [header 4 KiB][block map, 2 bits a block][data region: block b at data_start + b*bs]
 * Every block is CLEAN (read the base), DATA (read the overlay) or ZERO.
 * Reads are one map lookup and one pread per run of blocks in the same state.
 * Flush makes data durable before the map that points at it.
 *
 * All I/O functions are safe to call from many threads at once on one overlay;
 * overlapping requests behave as if run in some serial order.  They return 0 on
 * success or -1 with errno set and a message in tb_errmsg().
 */
#ifndef TB_OVERLAY_H
#define TB_OVERLAY_H

#include <stdbool.h>
#include <stdint.h>

#include "util.h"

/* The overlay file's header, its first bytes: an overlay file that has no
 * more than this allocated has no data yet. */
#define TB_OVERLAY_HEADER_SIZE 4096

/* Block sizes an overlay can have (the configuration's "block_size" bounds). */
#define TB_MIN_BLOCK_SIZE 512
#define TB_MAX_BLOCK_SIZE (1024 * 1024)

enum tb_block_state { TB_CLEAN = 0, TB_DATA = 1, TB_ZERO = 2 };

/* What an overlay is built on: checked every time it is opened. */
struct tb_base_id {
  char image[TB_NAME_MAX + 1];
  uint32_t version;
  uint8_t manifest_sha256[32];
};

struct tb_overlay_info {
  uint32_t format_version;
  uint32_t block_size;
  uint64_t size; /* virtual size = base size */
  struct tb_base_id base;
  uint64_t session; /* session number this overlay belongs to */
  int64_t created_ms;
  uint64_t dirty_blocks; /* DATA + ZERO blocks */
  uint64_t data_blocks;  /* DATA blocks (what occupies disk) */
};

struct tb_overlay;

enum {
  TB_OVL_RDONLY = 1, /* open read-only (the view, merges, admin exports) */
};
enum {
  TB_FUA = 1, /* write/zero/trim: durable before returning */
};

/* Create an empty overlay file at PATH (fails if it exists). */
int tb_overlay_create(const char *path, uint64_t size, uint32_t block_size,
                      const struct tb_base_id *base, uint64_t session);

/* Open PATH on top of the base image file BASE_PATH.  If EXPECT is not NULL the
 * header's base must match it exactly, else the open fails with a message that
 * names both versions.  A corrupt or truncated header fails cleanly. */
struct tb_overlay *tb_overlay_open(const char *path, const char *base_path,
                                   const struct tb_base_id *expect, int flags);
/* Flush (if writable) and free.  Returns the flush result. */
int tb_overlay_close(struct tb_overlay *o);

/* Read only the header of PATH (no base needed): for listings and checks. */
int tb_overlay_read_info(const char *path, struct tb_overlay_info *info);

void tb_overlay_info(struct tb_overlay *o, struct tb_overlay_info *info);
uint64_t tb_overlay_size(const struct tb_overlay *o);
uint32_t tb_overlay_block_size(const struct tb_overlay *o);

int tb_overlay_pread(struct tb_overlay *o, void *buf, uint32_t count, uint64_t offset);
/* Read the overlay alone: CLEAN blocks read as zeros (the ID@overlay export). */
int tb_overlay_pread_dirty(struct tb_overlay *o, void *buf, uint32_t count, uint64_t offset);
int tb_overlay_pwrite(struct tb_overlay *o, const void *buf, uint32_t count, uint64_t offset,
                      int flags);
/* Write zeros: whole blocks become ZERO (their data punched out), partial
 * blocks are written. */
int tb_overlay_zero(struct tb_overlay *o, uint32_t count, uint64_t offset, int flags);
/* Trim: whole blocks become ZERO; partial blocks are left as they are. */
int tb_overlay_trim(struct tb_overlay *o, uint32_t count, uint64_t offset, int flags);
int tb_overlay_flush(struct tb_overlay *o);

enum tb_block_state tb_overlay_block(struct tb_overlay *o, uint64_t block);
/* Call FN for each maximal run of blocks in one state within [offset, offset+count).
 * Stop and return FN's value if it returns non-zero. */
typedef int (*tb_extent_fn)(void *ctx, uint64_t offset, uint64_t length, enum tb_block_state state);
int tb_overlay_extents(struct tb_overlay *o, uint64_t offset, uint64_t count, tb_extent_fn fn,
                       void *ctx);

/* Quota in bytes of DATA blocks (0 = none).  A write that needs a new block
 * past the quota fails with ENOSPC; rewrites of DATA blocks still succeed. */
void tb_overlay_set_quota(struct tb_overlay *o, uint64_t bytes);

/* While DENY is set, writes that need a new block fail with ENOSPC (the
 * appliance's own free space is below its reserve); rewrites still succeed. */
void tb_overlay_deny_new_blocks(struct tb_overlay *o, bool deny);

/* Copy the state and data of blocks [first, first+n) from SRC (same geometry)
 * into O: used to carry preserved ranges across a rollback and to restore. */
int tb_overlay_copy_blocks(struct tb_overlay *o, struct tb_overlay *src, uint64_t first,
                           uint64_t n);

/* Counters since open. */
struct tb_overlay_stats {
  uint64_t bytes_read, bytes_written, bytes_zeroed, bytes_trimmed, flushes, errors;
};
void tb_overlay_stats(struct tb_overlay *o, struct tb_overlay_stats *st);

/* The file descriptor of the base image (for merges and the view). */
int tb_overlay_base_fd(const struct tb_overlay *o);

#endif
