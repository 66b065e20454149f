/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: a version's manifest -- the one reader and writer of its fields.
 *
 * A manifest describes one immutable version of an image: image, version,
 * size, sha256, chunk_size, chunks (sha256 of each chunk, hex), parent, note,
 * created.  It appears in two documents with one set of rules:
 *   - the store's images/NAME/N.json (store.h), which names its image, and
 *   - an entry of a repository's index.json (repo.h), which does not (the
 *     index is per image) and may name its file ("N.img").
 * Both are read here, strictly (json.h: an unknown key is an error) and with
 * the same bounds: version 1 to 2^32-1, size 1 byte to 1 PiB, chunk_size a
 * power of two from 4 KiB to 1 GiB, exactly one chunk hash per chunk of size.
 *
 * "sha256" is the version's digest: the SHA-256 of its chunk hashes (32 bytes
 * each, in order), a hash tree of one level.  It verifies the whole image as
 * surely as a SHA-256 of the bytes (every chunk is bound to its hash, every
 * hash to the digest), and a new version that changes a few chunks of another
 * (a merge) is hashed in time proportional to those chunks, not to the image.
 * The sha256 of the manifest file itself (manifest_sha256) identifies the
 * version in overlay headers.
 */
#ifndef TB_MANIFEST_H
#define TB_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "util.h"

#define TB_MANIFEST_MAX_SIZE (UINT64_C(1) << 50) /* 1 PiB: anything larger is a lie */

struct tb_manifest {
  char image[TB_NAME_MAX + 1];
  uint32_t version;
  uint64_t size;
  uint8_t sha256[32];
  uint32_t chunk_size;
  size_t n_chunks;
  uint8_t (*chunks)[32];
  uint32_t parent; /* 0 if none */
  char *note;      /* may be NULL */
  char created[32];
  uint8_t manifest_sha256[32]; /* sha256 of the manifest file's bytes */
};

/* The store's N.json: text in, manifest out (manifest_sha256 set).  WHAT
 * names the document in messages (its path). */
struct tb_manifest *tb_manifest_parse(const char *json_text, size_t len, const char *what);
/* The store's N.json as text (malloc'd). */
char *tb_manifest_dump(const struct tb_manifest *m);

/* An index.json entry of IMAGE (no "image" key, optional "file": "N.img").
 * WHAT names it in messages ("URL: versions[2]"). */
struct tb_manifest *tb_manifest_from_index_entry(const json_t *entry, const char *image,
                                                 const char *what);
json_t *tb_manifest_to_index_entry(const struct tb_manifest *m);

struct tb_manifest *tb_manifest_copy(const struct tb_manifest *m);
void tb_manifest_free(struct tb_manifest *m);
static inline void tb_cleanup_manifest(struct tb_manifest **m)
{
  tb_manifest_free(*m);
}
#define CLEANUP_MANIFEST __attribute__((cleanup(tb_cleanup_manifest)))

#endif
