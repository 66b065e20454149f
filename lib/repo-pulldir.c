/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: a pull's state on disk, STATE/pulls/NAME/SHA/ (SHA: the first 16
 * hex digits of the version's sha256):
 *   partial.img   the image being assembled (a clone of the base to start)
 *   chunks.done   one byte a chunk (enum chunk_state), written as each lands
 *   pull.json     which version and which base; written after the clone step,
 *                 so its presence says partial.img may be trusted that far
 *   lock          flock'd by the pull running in it
 * The directory is outside images/, so until the pull publishes, the store is
 * untouched.  A later pull of the same version finds the directory and
 * resumes: chunks marked done are re-hashed first, so a torn write or a lost
 * marker costs a re-download, never a wrong chunk.
 */
#include <config.h>

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "cleanup.h"
#include "json.h"
#include "repo-internal.h"

void repo_report(struct pull *p, enum tb_repo_phase phase, uint64_t done, uint64_t total,
                 bool force)
{
  if (!p->progress)
    return;
  int64_t now = tb_now_ms();
  if (!force && now - p->last_progress_ms < 100)
    return;
  p->last_progress_ms = now;
  struct tb_repo_progress pr = {phase, done, total};
  p->progress(p->ctx, &pr);
}

int repo_mark_chunk(struct pull *p, size_t i, enum chunk_state s)
{
  uint8_t b = (uint8_t)s;
  p->done[i] = b;
  if (tb_pwrite_full(p->done_fd, &b, 1, i) == -1)
    return tb_error_errno("cannot write %s", p->done_path);
  return 0;
}

/* The record that lets a later run trust partial.img: which version, which base. */
static char *pull_meta_text(const struct pull *p)
{
  char sha[65], base_sha[65] = "";
  tb_hex(p->want->sha256, 32, sha);
  if (p->base.m)
    tb_hex(p->base.m->manifest_sha256, 32, base_sha);
  CLEANUP_JSON json_t *j =
      json_pack("{s:s, s:s, s:I, s:s, s:I, s:I, s:I, s:s}", "url", p->o->url, "image", p->image,
                "version", (json_int_t)p->want->version, "sha256", sha, "size",
                (json_int_t)p->want->size, "chunk_size", (json_int_t)p->want->chunk_size, "base",
                (json_int_t)p->base.version, "base_manifest_sha256", base_sha);
  return j ? json_dumps(j, JSON_SORT_KEYS) : NULL;
}

/* Can we continue from what an earlier run left?  Only if it was a pull of the
 * same content (the directory is named by sha256), its clone step completed
 * (the meta file is written after it), and partial.img has the right size. */
bool repo_pull_can_resume(struct pull *p)
{
  size_t len;
  CLEANUP_FREE char *text = tb_read_file(p->meta, 1 << 20, &len);
  if (!text)
    return false;
  CLEANUP_JSON json_t *j = json_loadb(text, len, 0, NULL);
  char sha[65];
  tb_hex(p->want->sha256, 32, sha);
  bool ok = j && json_is_string(json_object_get(j, "sha256")) &&
            strcmp(json_string_value(json_object_get(j, "sha256")), sha) == 0 &&
            json_integer_value(json_object_get(j, "size")) == (json_int_t)p->want->size &&
            json_integer_value(json_object_get(j, "chunk_size")) == (json_int_t)p->want->chunk_size;
  struct stat st;
  if (!ok || stat(p->partial, &st) == -1 || (uint64_t)st.st_size != p->want->size)
    return false;
  struct stat ds;
  return stat(p->done_path, &ds) == 0 && (uint64_t)ds.st_size == p->want->n_chunks;
}

static int pull_open_files(struct pull *p, bool create)
{
  int flags = O_RDWR | O_CLOEXEC | (create ? O_CREAT | O_TRUNC : 0);
  p->fd = open(p->partial, O_RDWR | O_CLOEXEC | O_NOFOLLOW | (create ? O_CREAT : 0), 0600);
  if (p->fd == -1)
    return tb_error_errno("cannot open %s", p->partial);
  p->done_fd = open(p->done_path, flags | O_NOFOLLOW, 0600);
  if (p->done_fd == -1)
    return tb_error_errno("cannot open %s", p->done_path);
  return 0;
}

/* A fresh start: clone the base (or start from an empty sparse file). */
int repo_pull_start(struct pull *p)
{
  const struct tb_manifest *w = p->want;
  unlink(p->meta);
  unlink(p->partial);
  if (p->base.m && p->base.shared > 0) {
    repo_report(p, TB_REPO_CLONE, 0, p->base.m->size, true);
    if (repo_clone_file(p->base_path, p->partial, TB_REPO_CLONE, p->progress, p->ctx) == -1)
      return tb_error_prefix("cloning %s@%u", p->image, p->base.version);
  }
  if (pull_open_files(p, true) == -1)
    return -1;
  if (ftruncate(p->fd, (off_t)w->size) == -1 || ftruncate(p->done_fd, 0) == -1 ||
      ftruncate(p->done_fd, (off_t)w->n_chunks) == -1)
    return tb_error_errno("cannot size %s", p->partial);
  memset(p->done, CHUNK_TODO, w->n_chunks);
  if (p->base.m && p->base.shared > 0) {
    const struct tb_manifest *b = p->base.m;
    for (size_t i = 0; i < w->n_chunks && i < b->n_chunks; i++)
      if (memcmp(b->chunks[i], w->chunks[i], 32) == 0 &&
          repo_chunk_len(b, i) == repo_chunk_len(w, i)) {
        p->done[i] = CHUNK_CLONED;
        p->r->chunks_cloned++;
      }
    /* A shorter base leaves its last partial chunk's tail as data past the
     * base's end: the size change above zero-fills, and that chunk is TODO. */
    if (tb_pwrite_full(p->done_fd, p->done, w->n_chunks, 0) == -1)
      return tb_error_errno("cannot write %s", p->done_path);
  }
  if (fsync(p->fd) == -1 || fsync(p->done_fd) == -1)
    return tb_error_errno("cannot sync %s", p->partial);
  CLEANUP_FREE char *text = pull_meta_text(p);
  return text ? tb_write_file_atomic(p->meta, text, strlen(text), 0600)
              : tb_error("cannot encode %s", p->meta);
}

/* Resume: re-hash every chunk an earlier run verified; a mismatch is fetched again. */
int repo_pull_resume(struct pull *p)
{
  const struct tb_manifest *w = p->want;
  if (pull_open_files(p, false) == -1)
    return -1;
  if (tb_pread_full(p->done_fd, p->done, w->n_chunks, 0) == -1)
    return tb_error_errno("cannot read %s", p->done_path);
  CLEANUP_FREE uint8_t *buf = malloc(w->chunk_size);
  if (!buf)
    return tb_error_errno("resuming");
  uint64_t todo = 0, done = 0;
  for (size_t i = 0; i < w->n_chunks; i++)
    if (p->done[i] == CHUNK_VERIFIED)
      todo += repo_chunk_len(w, i);
  for (size_t i = 0; i < w->n_chunks; i++) {
    if (p->done[i] == CHUNK_CLONED) {
      p->r->chunks_cloned++;
      continue;
    }
    if (p->done[i] != CHUNK_VERIFIED) {
      p->done[i] = CHUNK_TODO;
      continue;
    }
    size_t len = (size_t)repo_chunk_len(w, i);
    uint8_t h[32];
    if (tb_pread_full(p->fd, buf, len, (uint64_t)i * w->chunk_size) == -1)
      return tb_error_errno("cannot read %s", p->partial);
    repo_sha256(buf, len, h);
    if (memcmp(h, w->chunks[i], 32) == 0)
      p->r->chunks_resumed++;
    else if (repo_mark_chunk(p, i, CHUNK_TODO) == -1)
      return -1;
    done += len;
    repo_report(p, TB_REPO_RESUME, done, todo, false);
  }
  p->r->resumed = true;
  return 0;
}

/* Remove a pull's state directory (its files are known: nothing else is in it). */
void repo_remove_state_dir(const char *dir)
{
  static const char *files[] = {"partial.img", "chunks.done", "pull.json", "lock"};
  char path[TB_PATH_MAX];
  for (size_t i = 0; i < sizeof files / sizeof *files; i++)
    if (tb_path(path, sizeof path, "%s/%s", dir, files[i]) == 0)
      unlink(path);
  rmdir(dir);
}
/* Once version VER of IMAGE has been pulled from URL, an interrupted pull of
 * an older (or the same) version from the same repository will never be
 * resumed: remove it, unless a pull holds it, so abandoned partial images do
 * not pile up in STATE/pulls. */
void repo_prune_obsolete_pulls(const char *state, const char *image, const char *url, uint32_t ver)
{
  char dir[TB_PATH_MAX];
  if (tb_path(dir, sizeof dir, "%s/pulls/%s", state, image) == -1)
    return;
  DIR *d = opendir(dir);
  struct dirent *e;
  while (d && (e = readdir(d))) {
    char sub[TB_PATH_MAX], meta[TB_PATH_MAX], lock[TB_PATH_MAX];
    if (e->d_name[0] == '.' || tb_path(sub, sizeof sub, "%s/%s", dir, e->d_name) == -1 ||
        tb_path(meta, sizeof meta, "%s/pull.json", sub) == -1 ||
        tb_path(lock, sizeof lock, "%s/lock", sub) == -1)
      continue;
    size_t len;
    CLEANUP_FREE char *text = tb_read_file(meta, 1 << 20, &len);
    CLEANUP_JSON json_t *j = text ? json_loadb(text, len, 0, NULL) : NULL;
    const char *their_url = json_string_value(json_object_get(j, "url"));
    json_int_t their_ver = json_integer_value(json_object_get(j, "version"));
    bool obsolete =
        their_url && strcmp(their_url, url) == 0 && their_ver >= 1 && their_ver <= (json_int_t)ver;
    CLEANUP_CLOSE int fd = obsolete ? open(lock, O_RDWR | O_CLOEXEC) : -1;
    if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0)
      repo_remove_state_dir(sub);
  }
  if (d)
    closedir(d);
}
