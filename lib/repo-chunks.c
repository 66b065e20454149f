/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: filling a pull's chunks.
 *
 * A chunk that differs from the base is first looked for locally: zero chunks
 * are punched as holes, a chunk found elsewhere in the base (moved data) is
 * copied and verified.  Every other one is fetched with a Range request,
 * several at once (curl multi), split of the rate limit between them; each is
 * verified against its sha256 before it is written and recorded in
 * chunks.done.  Between network events the whole-file digest runs ahead over
 * the chunks in place, in order, from disk, so most of the hashing overlaps
 * the downloads.
 */
#include <config.h>

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#include "cleanup.h"
#include "repo-internal.h"

struct hash_ref {
  uint8_t hash[32];
  size_t chunk;
};

static int cmp_hash_ref(const void *a, const void *b)
{
  return memcmp(a, b, 32);
}

/* Chunks whose content is already here: zero chunks (punched as holes) and
 * chunks found at another place in the base (copied, then verified). */
int repo_fill_local(struct pull *p)
{
  const struct tb_manifest *w = p->want, *b = p->base.m;
  CLEANUP_FREE uint8_t *buf = malloc(w->chunk_size);
  uint8_t zero_hash[32], tail_zero_hash[32];
  CLEANUP_FREE struct hash_ref *refs = NULL;
  size_t n_refs = 0;
  CLEANUP_CLOSE int base_fd = -1;
  if (!buf)
    return tb_error_errno("pull");
  memset(buf, 0, w->chunk_size);
  repo_sha256(buf, w->chunk_size, zero_hash);
  repo_sha256(buf, (size_t)repo_chunk_len(w, w->n_chunks - 1), tail_zero_hash);
  if (b && (base_fd = open(p->base_path, O_RDONLY | O_CLOEXEC)) >= 0 &&
      (refs = malloc((b->n_chunks + 1) * sizeof *refs))) {
    for (size_t i = 0; i < b->n_chunks; i++)
      if (repo_chunk_len(b, i) == b->chunk_size) {
        memcpy(refs[n_refs].hash, b->chunks[i], 32);
        refs[n_refs++].chunk = i;
      }
    qsort(refs, n_refs, sizeof *refs, cmp_hash_ref);
  }
  for (size_t i = 0; i < w->n_chunks; i++) {
    if (p->done[i] != CHUNK_TODO)
      continue;
    uint64_t off = (uint64_t)i * w->chunk_size;
    size_t len = (size_t)repo_chunk_len(w, i);
    bool full = len == w->chunk_size;
    if (memcmp(w->chunks[i], full ? zero_hash : tail_zero_hash, 32) == 0) {
      if (fallocate(p->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) ==
          -1) {
        memset(buf, 0, len);
        if (tb_pwrite_full(p->fd, buf, len, off) == -1)
          return tb_error_errno("cannot write %s", p->partial);
      }
      if (repo_mark_chunk(p, i, CHUNK_VERIFIED) == -1)
        return -1;
      p->r->chunks_copied++;
      continue;
    }
    struct hash_ref *ref =
        full && n_refs ? bsearch(w->chunks[i], refs, n_refs, sizeof *refs, cmp_hash_ref) : NULL;
    if (!ref)
      continue;
    uint8_t h[32];
    if (tb_pread_full(base_fd, buf, len, (uint64_t)ref->chunk * b->chunk_size) == -1)
      continue; /* download it instead */
    repo_sha256(buf, len, h);
    if (memcmp(h, w->chunks[i], 32) != 0)
      continue;
    if (tb_pwrite_full(p->fd, buf, len, off) == -1)
      return tb_error_errno("cannot write %s", p->partial);
    if (repo_mark_chunk(p, i, CHUNK_VERIFIED) == -1)
      return -1;
    p->r->chunks_copied++;
  }
  return 0;
}

/* Verify the assembled file: hash the chunks that are in place, in order,
 * from disk, check each against the index, and feed the version digest (the
 * hash of the chunk hashes, see store.h) -- for at most BUDGET_MS (no limit
 * if negative, reporting the verify phase).  Runs between network events, so
 * most of the hashing overlaps the downloads. */
int repo_hash_ahead(struct pull *p, int64_t budget_ms)
{
  const struct tb_manifest *w = p->want;
  if (!p->whole) {
    p->whole = EVP_MD_CTX_new();
    p->hash_buf = malloc(w->chunk_size);
    if (!p->whole || !p->hash_buf || !EVP_DigestInit_ex(p->whole, EVP_sha256(), NULL))
      return tb_error_errno("hashing %s", p->partial);
  }
  int64_t until = tb_now_ms() + budget_ms;
  while (p->hashed < w->n_chunks && p->done[p->hashed] != CHUNK_TODO) {
    uint64_t off = (uint64_t)p->hashed * w->chunk_size;
    size_t len = (size_t)repo_chunk_len(w, p->hashed);
    uint8_t h[32];
    if (tb_pread_full(p->fd, p->hash_buf, len, off) == -1)
      return tb_error_errno("cannot read %s", p->partial);
    EVP_Digest(p->hash_buf, len, h, NULL, EVP_sha256(), NULL);
    if (memcmp(h, w->chunks[p->hashed], 32) != 0)
      return tb_error("%s@%u: chunk %zu of the assembled image does not match the index (it "
                      "changed on disk after it was verified?); nothing was published",
                      p->image, w->version, p->hashed);
    EVP_DigestUpdate(p->whole, h, 32);
    p->hashed++;
    if (budget_ms < 0)
      repo_report(p, TB_REPO_VERIFY, off + len, w->size, false);
    else if (tb_now_ms() >= until)
      break;
  }
  return 0;
}

/* ---- downloading chunks ----------------------------------------------------------------- */

static int start_chunk(struct pull *p, CURLM *multi, struct xfer *x, size_t i, long speed)
{
  const struct tb_manifest *w = p->want;
  char path[TB_NAME_MAX + 32];
  snprintf(path, sizeof path, "%s/%u.img", p->image, w->version);
  uint64_t off = (uint64_t)i * w->chunk_size, len = repo_chunk_len(w, i);
  if (repo_xfer_setup(x, &p->http, path, (size_t)len, speed) == -1)
    return -1;
  repo_xfer_set_range(x, off, off + len - 1);
  x->chunk = i;
  x->busy = true;
  if (curl_multi_add_handle(multi, x->curl) != CURLM_OK)
    return tb_error("cannot start a transfer");
  return 0;
}

/* A chunk arrived: check the response, verify, write, record. */
static int finish_chunk(struct pull *p, struct xfer *x, CURLcode rc)
{
  const struct tb_manifest *w = p->want;
  char what[64];
  snprintf(what, sizeof what, "chunk %zu", x->chunk);
  if (repo_xfer_check(x, rc, what, w->size) == -1)
    return -1;
  uint8_t h[32];
  repo_sha256(x->body.ptr, x->body.len, h);
  if (memcmp(h, w->chunks[x->chunk], 32) != 0) {
    char got[65], want[65];
    tb_hex(h, 32, got);
    tb_hex(w->chunks[x->chunk], 32, want);
    return tb_error("%s: chunk %zu (bytes %llu-%llu) is corrupt: its sha256 is %s, the index "
                    "says %s; nothing was published (the repository needs repair)",
                    x->url, x->chunk, (unsigned long long)x->first, (unsigned long long)x->last,
                    got, want);
  }
  if (tb_pwrite_full(p->fd, x->body.ptr, x->body.len, x->first) == -1)
    return tb_error_errno("cannot write %s", p->partial);
  p->bytes_done += x->body.len;
  p->r->chunks_downloaded++;
  return repo_mark_chunk(p, x->chunk, CHUNK_VERIFIED);
}

/* The transfers of one download_chunks: a multi handle and N easy ones,
 * released together (a busy one is taken out of the multi handle first). */
struct transfers {
  CURLM *multi;
  struct xfer *xs;
  int n;
};

static void transfers_free(struct transfers *t)
{
  for (int s = 0; t->xs && s < t->n; s++) {
    if (t->xs[s].busy)
      curl_multi_remove_handle(t->multi, t->xs[s].curl);
    repo_xfer_free(&t->xs[s]);
  }
  free(t->xs);
  if (t->multi)
    curl_multi_cleanup(t->multi);
}
#define CLEANUP_TRANSFERS __attribute__((cleanup(transfers_free)))

int repo_download_chunks(struct pull *p)
{
  const struct tb_manifest *w = p->want;
  int parallel = p->o->parallel < 1              ? 1
                 : p->o->parallel > MAX_PARALLEL ? MAX_PARALLEL
                                                 : p->o->parallel;
  size_t next = 0, active = 0;
  p->bytes_todo = 0;
  for (size_t i = 0; i < w->n_chunks; i++)
    if (p->done[i] == CHUNK_TODO)
      p->bytes_todo += repo_chunk_len(w, i);
  if (p->bytes_todo == 0)
    return 0;
  /* The rate limit is for the whole pull: split it between the transfers. */
  long speed = p->o->rate_limit ? (long)(p->o->rate_limit / (uint64_t)parallel) : 0;
  if (p->o->rate_limit && speed < 1)
    speed = 1;
  CLEANUP_TRANSFERS struct transfers set = {curl_multi_init(),
                                            calloc((size_t)parallel, sizeof *set.xs), parallel};
  CURLM *multi = set.multi;
  struct xfer *xs = set.xs;
  if (!multi || !xs)
    return tb_error("cannot initialise libcurl");
  bool failed = false;
  for (;;) {
    for (int s = 0; s < parallel && !failed; s++) {
      if (xs[s].busy)
        continue;
      while (next < w->n_chunks && p->done[next] != CHUNK_TODO)
        next++;
      if (next == w->n_chunks)
        break;
      if (start_chunk(p, multi, &xs[s], next++, speed) == -1) {
        failed = true;
        break;
      }
      active++;
    }
    if (active == 0)
      break;
    int running;
    if (curl_multi_perform(multi, &running) != CURLM_OK) {
      tb_error("libcurl failed");
      failed = true;
      break;
    }
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(multi, &left))) {
      if (msg->msg != CURLMSG_DONE)
        continue;
      struct xfer *x;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
      CURLcode rc = msg->data.result;
      curl_multi_remove_handle(multi, x->curl);
      x->busy = false;
      active--;
      /* Keep the first error; chunks that finish fine are still recorded. */
      if (finish_chunk(p, x, rc) == -1 && !failed)
        failed = true;
    }
    if (failed)
      break;
    if (repo_hash_ahead(p, 20) == -1) {
      failed = true;
      break;
    }
    uint64_t inflight = 0;
    for (int s = 0; s < parallel; s++)
      if (xs[s].busy)
        inflight += xs[s].body.len;
    repo_report(p, TB_REPO_DOWNLOAD, p->bytes_done + inflight, p->bytes_todo, false);
    if (running && curl_multi_poll(multi, NULL, 0, 500, NULL) != CURLM_OK) {
      tb_error("libcurl failed");
      failed = true;
      break;
    }
  }
  if (failed)
    return -1;
  repo_report(p, TB_REPO_DOWNLOAD, p->bytes_todo, p->bytes_todo, true);
  return 0;
}
