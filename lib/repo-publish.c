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
  struct tb_manifest *m = tb_manifest_load(state, image, ver);
  if (!m)
    return -1;
  char src[TB_PATH_MAX], idir[TB_PATH_MAX], ipath[TB_PATH_MAX], dst[TB_PATH_MAX];
  struct repo_index ix = {0};
  int dfd = -1, r = -1;
  char *text = NULL;
  if (tb_store_version_path(state, image, ver, src, sizeof src) == -1 ||
      tb_path(idir, sizeof idir, "%s/%s", dir, image) == -1 ||
      tb_path(ipath, sizeof ipath, "%s/index.json", idir) == -1 ||
      tb_path(dst, sizeof dst, "%s/%u.img", idir, ver) == -1 || tb_mkdirs(idir, false) == -1)
    goto out;
  /* One publisher at a time per image directory; the lock is on the directory
   * itself so no lock file ends up in the served tree. */
  dfd = open(idir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd == -1 || flock(dfd, LOCK_EX) == -1) {
    tb_error_errno("cannot lock %s", idir);
    goto out;
  }
  size_t len;
  char *old = tb_read_file(ipath, TB_REPO_DEFAULT_MAX_INDEX * 4, &len);
  if (old) {
    int pr = repo_parse_index(old, len, image, ipath, &ix);
    free(old);
    if (pr == -1) {
      tb_error_prefix("the repository's index is damaged (fix or remove it)");
      goto out;
    }
  } else if (errno != ENOENT)
    goto out;
  size_t slot = ix.n;
  for (size_t i = 0; i < ix.n; i++)
    if (ix.versions[i]->version == ver)
      slot = i;
  if (slot < ix.n) {
    const struct tb_manifest *have = ix.versions[slot];
    if (have->size != m->size || memcmp(have->sha256, m->sha256, 32) != 0) {
      tb_error("%s already lists %s@%u with a different sha256; this store's %s@%u is "
               "another image: publish into another directory, or remove %s first",
               ipath, image, ver, image, ver, idir);
      goto out;
    }
    if (file_has_size(dst, m->size)) {
      r = 0; /* already published: nothing to do */
      goto out;
    }
  }
  if (publish_file(src, idir, ver, progress, ctx) == -1)
    goto out;
  struct tb_manifest *c = tb_manifest_copy(m);
  if (!c) {
    tb_error_errno("publishing %s@%u", image, ver);
    goto out;
  }
  if (slot < ix.n) {
    tb_manifest_free(ix.versions[slot]);
    ix.versions[slot] = c;
  } else {
    struct tb_manifest **nv = realloc(ix.versions, (ix.n + 1) * sizeof *nv);
    if (!nv) {
      tb_manifest_free(c);
      tb_error_errno("publishing %s@%u", image, ver);
      goto out;
    }
    ix.versions = nv;
    ix.versions[ix.n++] = c;
    qsort(ix.versions, ix.n, sizeof *ix.versions, repo_cmp_manifest_version);
  }
  if (!(text = repo_dump_index(image, &ix)) ||
      tb_write_file_atomic(ipath, text, strlen(text), 0644) == -1)
    goto out;
  char hex[65];
  tb_hex(m->sha256, 32, hex);
  tb_eventf(state, "image-published", NULL, "{s:s, s:I, s:s, s:I, s:s}", "image", image, "version",
            (json_int_t)ver, "dir", dir, "size", (json_int_t)m->size, "sha256", hex);
  r = 0;
out:
  if (r == 0 && published)
    *published = ver;
  free(text);
  repo_index_free(&ix);
  if (dfd >= 0)
    close(dfd);
  tb_manifest_free(m);
  return r;
}
