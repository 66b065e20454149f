/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: merge -- a client's base version plus its overlay becomes a new version.
 *
 * The new version is built through the store's version builder (store.h), so
 * a crash or kill at any point leaves either no new version or a complete one
 * with its manifest: the base is cloned to the builder's temporary (a reflink
 * where the filesystem allows, else a sparse copy), then only the overlay
 * blocks whose content differs from the base are written (DATA) or punched
 * out (ZERO), the file is fsynced and the builder commits (hash, rename,
 * manifest).  On a filesystem with reflinks the work is proportional to the
 * dirty data, not to the image.
 *
 * The caller must make sure no session is writing the overlay (hold the
 * client's lock, session.h); the overlay is opened read-only.
 */
#ifndef TB_MERGE_H
#define TB_MERGE_H

#include <stdbool.h>
#include <stdint.h>

#include "util.h"

/* Progress of a merge: PHASE is "cloning", "applying" or "hashing".
 * Return non-zero to cancel (the merge is aborted, nothing is published). */
typedef int (*tb_merge_progress_fn)(void *ctx, const char *phase, uint64_t done, uint64_t total);

struct tb_merge_result {
  char image[TB_NAME_MAX + 1]; /* the new version: image@version */
  uint32_t version;
  char base_image[TB_NAME_MAX + 1]; /* what the overlay was built on */
  uint32_t base_version;
  uint64_t dirty_bytes;   /* DATA + ZERO blocks of the overlay */
  uint64_t changed_bytes; /* of those, bytes that differed from the base and were written */
  bool reflink;           /* the base was cloned by reflink */
  int64_t duration_ms;
};

/* Merge the overlay file OVERLAY_PATH (on the base version recorded in its
 * header) into the next version of image INTO.  NOTE (may be NULL) goes into
 * the manifest.  On success fills *res. */
int tb_merge(const char *state, const char *overlay_path, const char *into, const char *note,
             tb_merge_progress_fn progress, void *ctx, struct tb_merge_result *res);

#endif
