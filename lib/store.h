/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: the state directory and its image store.
 *
 * Layout under STATE (every name validated with tb_name_valid):
 *   images/NAME/N.img        raw, immutable once published
 *   images/NAME/N.json       manifest; its presence is what publishes N
 *   images/NAME/.lock        flock: serialises version numbering
 *   clients/ID/...           a client's directory: clientdir.h owns its layout
 *   events.jsonl             the event journal (events.h)
 *
 * Versions are published atomically: the image is written under a temporary
 * name, fsynced, renamed to N.img; then the manifest is written the same way.
 * A reader trusts a version only if its manifest exists.  A crash at any point
 * leaves either no version N or a complete one; stale temporaries are removed
 * by tb_store_gc_temp().
 *
 * A version's manifest (N.json) is read and written by manifest.h.
 */
#ifndef TB_STORE_H
#define TB_STORE_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include "manifest.h"
#include "util.h"

#define TB_CHUNK_SIZE (4 * 1024 * 1024)

/* Paths (return -1 with tb_error if too long or a name is invalid). */
int tb_store_image_dir(const char *state, const char *image, char *buf, size_t len);
int tb_store_version_path(const char *state, const char *image, uint32_t ver, char *buf,
                          size_t len);
int tb_store_manifest_path(const char *state, const char *image, uint32_t ver, char *buf,
                           size_t len);
/* Open published version VER of IMAGE to read (published: its manifest,
 * the commit record, exists): a descriptor (O_CLOEXEC), or -1 with
 * tb_error.  Versions never change, so a reader may keep it as long as it
 * likes (a removed version stays readable through it). */
int tb_store_open_version(const char *state, const char *image, uint32_t ver);
/* Create STATE/{images,clients} if missing (0700), then refuse the state
 * directory if it, or a directory in it (three levels deep), is owned by
 * another user or writable by group or others (tb_store_check_private). */
int tb_store_init(const char *state);
int tb_store_check_private(const char *state);
/* True if STATE itself is readable or searchable by group or others (an
 * older tabula made it 0755): worth a warning, since its files then are. */
bool tb_store_exposed(const char *state);

/* Published versions of IMAGE, ascending; *vers is malloc'd (may be NULL with n 0). */
int tb_store_versions(const char *state, const char *image, uint32_t **vers, size_t *n);
/* Newest published version, or 0 (with tb_error) if there is none. */
uint32_t tb_store_latest(const char *state, const char *image);
/* Image names present in the store (malloc'd array of malloc'd strings). */
int tb_store_images(const char *state, char ***names, size_t *n);
void tb_strv_free(char **v, size_t n);
/* Client ids with a directory in the store, and "ID/DISK" for each disk
 * directory of theirs (clients/ID/disks/DISK), sorted (malloc'd). */
int tb_store_clients(const char *state, char ***ids, size_t *n);

struct tb_manifest *tb_manifest_load(const char *state, const char *image, uint32_t ver);

/* Progress callback for long work: done and total in bytes.  Return non-zero to cancel. */
typedef int (*tb_progress_fn)(void *ctx, uint64_t done, uint64_t total);

/* Building a new version.  begin() takes the image lock and picks N = newest+1,
 * creates images/NAME/.N.img.tmp (returned in tmp_path) for the caller to fill,
 * or clone with tb_clone_file().  commit() hashes the file (sha256 and chunks),
 * fsyncs, renames, writes the manifest and releases the lock.  abort() removes
 * the temporary.  Exactly one of commit/abort must be called. */
struct tb_version_builder;
struct tb_version_builder *tb_version_begin(const char *state, const char *image, uint32_t parent,
                                            const char *note);
const char *tb_version_tmp_path(const struct tb_version_builder *b);
uint32_t tb_version_number(const struct tb_version_builder *b);
int tb_version_commit(struct tb_version_builder *b, tb_progress_fn progress, void *ctx);
/* Commit with a precomputed manifest (sizes and hashes already known, e.g. verified
 * chunk by chunk during a pull): fills version/created and publishes. */
int tb_version_commit_manifest(struct tb_version_builder *b, struct tb_manifest *m);
void tb_version_abort(struct tb_version_builder *b);

/* Import FILE as the next version of IMAGE (sparse-aware copy, reflink when the
 * filesystem allows).  On success *ver is the new version. */
int tb_store_import(const char *state, const char *image, const char *file, const char *note,
                    tb_progress_fn progress, void *ctx, uint32_t *ver);

/* The digest of a version: SHA-256 over its N chunk hashes. */
void tb_chunks_digest(const uint8_t (*chunks)[32], size_t n, uint8_t digest[32]);
/* SHA-256 of [off, off+len) of FD, through BUF (len bytes); holes are not read. */
int tb_hash_chunk(int fd, uint64_t off, size_t len, char *buf, uint8_t sha256[32]);
/* Hash a file: per-chunk sha256 (chunks malloc'd) and its digest. */
int tb_hash_file(int fd, uint64_t size, uint32_t chunk_size, uint8_t sha256[32],
                 uint8_t (**chunks)[32], size_t *n_chunks, tb_progress_fn progress, void *ctx);

/* Copy SRC to DST (created/truncated): FICLONE reflink if possible, else
 * copy_file_range of the data extents only (holes stay holes). */
int tb_clone_file(const char *src, const char *dst, tb_progress_fn progress, void *ctx);

/* Remove version N of IMAGE (manifest first, so it stops being published). */
int tb_store_remove_version(const char *state, const char *image, uint32_t ver);

/* Remove leftovers of interrupted work: builders' temporaries, N.img without
 * its manifest, manifest temporaries (images/NAME/N.json.tmp.*), a turn's or a
 * merge's overlay temporaries in clients/ID (when no session holds it), and,
 * with PULLS, interrupted pulls no pull holds (STATE/pulls/IMAGE/SHA: their
 * partial.img would let a pull resume, so only an explicit gc takes them;
 * the daemon's start does not).  Returns the count removed. */
int tb_store_gc(const char *state, bool pulls);
/* tb_store_gc(state, true): what tabulactl image gc runs. */
int tb_store_gc_temp(const char *state);

#endif
