/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: the whole pull (tb_repo_pull).
 *
 * Pull works in five steps, each safe to interrupt:
 *   1. fetch NAME/index.json (size-bounded) and validate it strictly
 *      (repo-http.c, repo-index.c); the index's "file" must be "N.img";
 *   2. pick the local version sharing the most chunk hashes, clone it
 *      (reflink, else copy_file_range) into STATE/pulls/NAME/SHA/partial.img
 *      (repo-pulldir.c), or resume what an earlier run left there;
 *   3. fill the chunks that differ, locally or by download (repo-chunks.c);
 *   4. hash the whole file against the index's sha256;
 *   5. rename it into the store as the next version (tb_version_commit_manifest).
 * Until step 5 the store is untouched.  Every failure past the arguments is an
 * image-pull-failed event (scheduled pulls have no terminal).
 */
#include <config.h>

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "cleanup.h"
#include "events.h"
#include "repo-internal.h"
#include "store.h"

/* ---- choosing the base ------------------------------------------------------------- */

static int find_base(const char *state, const char *image, const struct tb_manifest *want,
                     struct local_match *best)
{
  memset(best, 0, sizeof *best);
  uint32_t *vers;
  size_t n;
  if (tb_store_versions(state, image, &vers, &n) == -1)
    return -1;
  for (size_t i = n; i-- > 0;) { /* newest first: it wins ties */
    struct tb_manifest *m = tb_manifest_load(state, image, vers[i]);
    if (!m)
      continue; /* a damaged manifest is not a base */
    if (m->size == want->size && memcmp(m->sha256, want->sha256, 32) == 0) {
      tb_manifest_free(best->m);
      *best = (struct local_match){vers[i], want->n_chunks, m, true};
      break;
    }
    size_t shared = 0;
    if (m->chunk_size == want->chunk_size)
      for (size_t c = 0; c < m->n_chunks && c < want->n_chunks; c++)
        shared += memcmp(m->chunks[c], want->chunks[c], 32) == 0 &&
                  repo_chunk_len(m, c) == repo_chunk_len(want, c);
    /* Any version with the same chunk size is still useful for moved chunks. */
    if (m->chunk_size == want->chunk_size && (!best->m || shared > best->shared)) {
      tb_manifest_free(best->m);
      *best = (struct local_match){vers[i], shared, m, false};
    } else
      tb_manifest_free(m);
  }
  free(vers);
  return 0;
}

/* ---- the whole pull ---------------------------------------------------------------------- */

static int verify_whole(struct pull *p)
{
  const struct tb_manifest *w = p->want;
  uint8_t h[32];
  if (fsync(p->fd) == -1)
    return tb_error_errno("cannot sync %s", p->partial);
  if (repo_hash_ahead(p, -1) == -1)
    return -1;
  if (p->hashed != w->n_chunks)
    return tb_error("%s@%u: chunk %zu is missing", p->image, w->version, p->hashed);
  EVP_DigestFinal_ex(p->whole, h, NULL);
  if (memcmp(h, w->sha256, 32) != 0) {
    char got[65], want[65];
    tb_hex(h, 32, got);
    tb_hex(w->sha256, 32, want);
    return tb_error("%s@%u: the assembled image's digest is %s, the index says %s (every "
                    "chunk matched: the index is inconsistent); nothing was published",
                    p->image, w->version, got, want);
  }
  return 0;
}

static int publish_pulled(struct pull *p)
{
  const struct tb_manifest *w = p->want;
  repo_report(p, TB_REPO_PUBLISH, 0, 1, true);
  /* The parent is the local version this one was built from, if any chunk was. */
  uint32_t parent = p->base.shared ? p->base.version : 0;
  struct tb_version_builder *b = tb_version_begin(p->state, p->image, parent, w->note);
  if (!b)
    return -1;
  uint32_t num = tb_version_number(b);
  if (rename(p->partial, tb_version_tmp_path(b)) == -1) {
    tb_error_errno("cannot move %s into the store", p->partial);
    tb_version_abort(b);
    return -1;
  }
  struct tb_manifest *m = tb_manifest_copy(w);
  if (!m) {
    tb_error_errno("publishing %s", p->image);
    tb_version_abort(b);
    return -1;
  }
  m->parent = parent;
  m->created[0] = '\0';
  int r = tb_version_commit_manifest(b, m); /* frees or aborts b */
  tb_manifest_free(m);
  if (r == 0)
    p->r->local_version = num;
  repo_report(p, TB_REPO_PUBLISH, 1, 1, true);
  return r;
}

static void remove_pull_dir(struct pull *p)
{
  repo_remove_state_dir(p->dir);
}

static int pull_version(struct pull *p)
{
  const struct tb_manifest *w = p->want;
  char hex[65], lock[TB_PATH_MAX];
  tb_hex(w->sha256, 32, hex);
  hex[16] = '\0';
  if (tb_path(p->dir, sizeof p->dir, "%s/pulls/%s/%s", p->state, p->image, hex) == -1 ||
      tb_path(p->partial, sizeof p->partial, "%s/partial.img", p->dir) == -1 ||
      tb_path(p->done_path, sizeof p->done_path, "%s/chunks.done", p->dir) == -1 ||
      tb_path(p->meta, sizeof p->meta, "%s/pull.json", p->dir) == -1 ||
      tb_path(lock, sizeof lock, "%s/lock", p->dir) == -1 || tb_mkdirs(p->dir, true) == -1)
    return -1;
  p->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (p->lock_fd == -1)
    return tb_error_errno("cannot open %s", lock);
  if (flock(p->lock_fd, LOCK_EX | LOCK_NB) == -1)
    return tb_error("another pull of %s@%u is running (it holds %s)", p->image, w->version, lock);
  if (!(p->done = calloc(w->n_chunks + 1, 1)))
    return tb_error_errno("pull");
  if (p->base.m && tb_store_version_path(p->state, p->image, p->base.version, p->base_path,
                                         sizeof p->base_path) == -1)
    return -1;
  if (repo_pull_can_resume(p)) {
    if (repo_pull_resume(p) == -1)
      return -1;
  } else if (repo_pull_start(p) == -1)
    return -1;
  if (repo_fill_local(p) == -1 || repo_download_chunks(p) == -1)
    return -1;
  if (verify_whole(p) == -1) {
    /* Every chunk matched its hash, so retrying cannot help: start over next time. */
    remove_pull_dir(p);
    return -1;
  }
  if (publish_pulled(p) == -1)
    return -1;
  remove_pull_dir(p);
  return 0;
}

static const struct tb_manifest *pick_version(const struct repo_index *ix, uint32_t want,
                                              const char *image, const char *url)
{
  const struct repo_versions *v = &ix->versions;
  if (v->len == 0) {
    tb_error("%s: the repository lists no versions of %s yet", url, image);
    return NULL;
  }
  if (want == 0)
    return v->ptr[v->len - 1];
  for (size_t i = 0; i < v->len; i++)
    if (v->ptr[i]->version == want)
      return v->ptr[i];
  tb_error("%s: the repository has no version %u of %s (newest: %u)", url, want, image,
           v->ptr[v->len - 1]->version);
  return NULL;
}

/* The daemon may pull from several threads; libcurl is initialised once. */
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_status;

static void curl_init_once(void)
{
  curl_init_status = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* What a pull holds until it returns (the index it chose from is the caller's). */
static void pull_free(struct pull *p)
{
  if (p->fd >= 0)
    close(p->fd);
  if (p->done_fd >= 0)
    close(p->done_fd);
  if (p->lock_fd >= 0)
    close(p->lock_fd);
  free(p->done);
  EVP_MD_CTX_free(p->whole);
  free(p->hash_buf);
  tb_manifest_free(p->base.m);
  repo_http_cleanup(&p->http);
}
#define CLEANUP_PULL __attribute__((cleanup(pull_free)))

/* Everything from the index to the store; IX gets the index (P->want points
 * into it). */
static int pull_steps(struct pull *p, struct repo_index *ix)
{
  const char *state = p->state, *image = p->image;
  const struct tb_repo_pull_opts *o = p->o;
  struct tb_repo_pull_result *r = p->r;
  char url[2400] = "";
  if (tb_store_init(state) == -1 || repo_http_init(&p->http, o) == -1)
    return -1;
  repo_report(p, TB_REPO_INDEX, 0, 1, true);
  size_t len = 0;
  CLEANUP_FREE char *text = repo_fetch_index(&p->http, image, &len, url, sizeof url);
  if (!text || repo_parse_index(text, len, image, url, ix) == -1)
    return -1;
  if (!(p->want = pick_version(ix, o->version, image, url)))
    return -1;
  r->remote_version = p->want->version;
  r->size = p->want->size;
  r->chunks_total = p->want->n_chunks;
  if (find_base(state, image, p->want, &p->base) == -1)
    return -1;
  if (p->base.identical) {
    r->already_present = true;
    r->local_version = p->base.version;
    r->bytes_downloaded = p->http.bytes;
    return 0;
  }
  r->base_version = p->base.shared ? p->base.version : 0;
  char sha[65];
  tb_hex(p->want->sha256, 32, sha);
  tb_eventf(state, "image-pull-start", NULL, "{s:s, s:s, s:I, s:s, s:I}", "image", image, "url",
            o->url, "version", (json_int_t)p->want->version, "sha256", sha, "base",
            (json_int_t)r->base_version);
  int ret = pull_version(p);
  r->bytes_downloaded = p->http.bytes;
  if (ret == 0)
    tb_eventf(state, "image-pulled", NULL, "{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:b}", "image",
              image, "url", o->url, "remote_version", (json_int_t)p->want->version, "version",
              (json_int_t)r->local_version, "base", (json_int_t)r->base_version,
              "chunks_downloaded", (json_int_t)r->chunks_downloaded, "bytes_downloaded",
              (json_int_t)r->bytes_downloaded, "resumed", r->resumed);
  return ret;
}

int tb_repo_pull(const char *state, const char *image, const struct tb_repo_pull_opts *o,
                 tb_repo_progress_fn progress, void *ctx, struct tb_repo_pull_result *r)
{
  pthread_once(&curl_once, curl_init_once);
  if (curl_init_status != CURLE_OK)
    return tb_error("cannot initialise libcurl: %s", curl_easy_strerror(curl_init_status));
  memset(r, 0, sizeof *r);
  if (!tb_name_valid(image))
    return tb_error("invalid image name \"%.80s\" (1-64 characters [A-Za-z0-9._-])", image);
  CLEANUP_PULL struct pull p = {.state = state,
                                .image = image,
                                .o = o,
                                .r = r,
                                .progress = progress,
                                .ctx = ctx,
                                .lock_fd = -1,
                                .fd = -1,
                                .done_fd = -1};
  CLEANUP_INDEX struct repo_index ix = {0};
  int ret = pull_steps(&p, &ix);
  if (ret == 0)
    repo_prune_obsolete_pulls(state, image, o->url, p.want->version);
  if (ret == -1 && !r->bytes_downloaded)
    r->bytes_downloaded = p.http.bytes;
  if (ret == -1 && p.http.o) {
    /* Every failure past the arguments is an event: scheduled pulls have no terminal. */
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", tb_errmsg());
    tb_eventf(state, "image-pull-failed", NULL, "{s:s, s:s?, s:o, s:s}", "image", image, "url",
              o->url, "version", p.want ? json_integer(p.want->version) : json_null(), "error",
              msg);
    tb_error("%s", msg); /* the event may have overwritten it */
  }
  return ret;
}
