/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: publish a version into a repository directory (tabulactl image
 * publish).
 *
 * Publish copies a version file into DIR/NAME/ (temporary name, fsync, rename)
 * and then replaces DIR/NAME/index.json by rename: readers (nginx, a CDN, an
 * S3 sync) see the old index or the new one, and every version an index names
 * is already complete.  One publisher at a time per image directory (flock on
 * the directory itself, so no lock file ends up in the served tree).
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "cleanup.h"
#include "events.h"
#include "manifest.h"
#include "repo-internal.h"
#include "store.h"

/* tb_clone_file's progress (lib/store) reported as a phase of this module. */
struct copy_progress {
  tb_repo_progress_fn fn;
  void *ctx;
  enum tb_repo_phase phase;
};

static int copy_progress(void *ctx, uint64_t done, uint64_t total)
{
  const struct copy_progress *c = ctx;
  struct tb_repo_progress pr = {c->phase, done, total};
  c->fn(c->ctx, &pr);
  return 0;
}

/* tb_clone_file with PROGRESS (may be NULL) seeing it as PHASE. */
int repo_clone_file(const char *src, const char *dst, enum tb_repo_phase phase,
                    tb_repo_progress_fn progress, void *ctx)
{
  struct copy_progress c = {progress, ctx, phase};
  return tb_clone_file(src, dst, progress ? copy_progress : NULL, &c);
}

/* Copy the version file into the repository under a temporary name, then rename. */
static int publish_file(const char *src, const char *dir, uint32_t ver,
                        tb_repo_progress_fn progress, void *ctx)
{
  char tmp[TB_PATH_MAX], dst[TB_PATH_MAX];
  if (tb_path(tmp, sizeof tmp, "%s/.%u.img.tmp", dir, ver) == -1 ||
      tb_path(dst, sizeof dst, "%s/%u.img", dir, ver) == -1)
    return -1;
  if (repo_clone_file(src, tmp, TB_REPO_COPY, progress, ctx) == -1)
    return tb_error_prefix("publishing %s", src);
  chmod(tmp, 0644); /* the web server reads it as another user */
  if (rename(tmp, dst) == -1) {
    tb_error_errno("cannot rename %s to %s", tmp, dst);
    unlink(tmp);
    return -1;
  }
  return tb_fsync_dir(dst);
}

/* Does the repository already hold this exact file (published earlier)? */
static bool file_has_size(const char *path, uint64_t size)
{
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size == size;
}

int tb_repo_publish(const char *state, const char *image, uint32_t ver, const char *dir,
                    tb_repo_progress_fn progress, void *ctx, uint32_t *published)
{
  if (!tb_name_valid(image))
    return tb_error("invalid image name \"%.80s\"", image);
  if (ver == 0 && (ver = tb_store_latest(state, image)) == 0)
    return -1;
  CLEANUP_MANIFEST struct tb_manifest *m = tb_manifest_load(state, image, ver);
  if (!m)
    return -1;
  char src[TB_PATH_MAX], idir[TB_PATH_MAX], ipath[TB_PATH_MAX], dst[TB_PATH_MAX];
  if (tb_store_version_path(state, image, ver, src, sizeof src) == -1 ||
      tb_path(idir, sizeof idir, "%s/%s", dir, image) == -1 ||
      tb_path(ipath, sizeof ipath, "%s/index.json", idir) == -1 ||
      tb_path(dst, sizeof dst, "%s/%u.img", idir, ver) == -1 || tb_mkdirs(idir, false) == -1)
    return -1;
  /* One publisher at a time per image directory; the lock is on the directory
   * itself so no lock file ends up in the served tree. */
  CLEANUP_CLOSE int dfd = open(idir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd == -1 || flock(dfd, LOCK_EX) == -1)
    return tb_error_errno("cannot lock %s", idir);
  CLEANUP_INDEX struct repo_index ix = {0};
  size_t len;
  CLEANUP_FREE char *old = tb_read_file(ipath, TB_REPO_DEFAULT_MAX_INDEX * 4, &len);
  if (old) {
    if (repo_parse_index(old, len, image, ipath, &ix) == -1)
      return tb_error_prefix("the repository's index is damaged (fix or remove it)");
  } else if (errno != ENOENT)
    return -1;
  struct repo_versions *v = &ix.versions;
  size_t slot = v->len;
  for (size_t i = 0; i < v->len; i++)
    if (v->ptr[i]->version == ver)
      slot = i;
  if (slot < v->len) {
    const struct tb_manifest *have = v->ptr[slot];
    if (have->size != m->size || memcmp(have->sha256, m->sha256, 32) != 0)
      return tb_error("%s already lists %s@%u with a different sha256; this store's %s@%u is "
                      "another image: publish into another directory, or remove %s first",
                      ipath, image, ver, image, ver, idir);
    if (file_has_size(dst, m->size)) {
      if (published) /* already published: nothing to do */
        *published = ver;
      return 0;
    }
  }
  if (publish_file(src, idir, ver, progress, ctx) == -1)
    return -1;
  struct tb_manifest *c = tb_manifest_copy(m);
  if (!c)
    return tb_error_errno("publishing %s@%u", image, ver);
  if (slot < v->len) {
    tb_manifest_free(v->ptr[slot]);
    v->ptr[slot] = c;
  } else {
    if (tb_vector_push(v, c) == -1) {
      tb_manifest_free(c);
      return tb_error_errno("publishing %s@%u", image, ver);
    }
    qsort(v->ptr, v->len, sizeof *v->ptr, repo_cmp_manifest_version);
  }
  CLEANUP_FREE char *text = repo_dump_index(image, &ix);
  if (!text || tb_write_file_atomic(ipath, text, strlen(text), 0644) == -1)
    return -1;
  char hex[65];
  tb_hex(m->sha256, 32, hex);
  tb_eventf(state, "image-published", NULL, "{s:s, s:I, s:s, s:I, s:s}", "image", image, "version",
            (json_int_t)ver, "dir", dir, "size", (json_int_t)m->size, "sha256", hex);
  if (published)
    *published = ver;
  return 0;
}
