/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: the repository layer's private header (lib/repo-*.c), as nbdkit's
 * server/internal.h: one section per file, in the order a pull uses them.
 * lib/repo.h is the public API; nothing outside lib/repo-*.c (and the fuzz
 * target of the index parser) includes this.
 *
 * Ownership:
 *   repo-index.c     the index document (parse strictly, dump)
 *   repo-publish.c   publish into a repository directory; the progress-aware
 *                    file clone a pull's base copy uses too
 *   repo-pullconf.c  pull options, the config's "pull" section, its sources
 *                    and their scheduled runs
 *   repo-http.c      HTTP(S)/S3 transfers (libcurl): one request, its checks
 *   repo-pulldir.c   a pull's state on disk (STATE/pulls/NAME/SHA/): start,
 *                    resume, chunk marks, pruning of abandoned pulls
 *   repo-chunks.c    filling chunks: locally from the base, by download, and
 *                    the running whole-file hash
 *   repo-pull.c      the whole pull: index, base choice, verify, publish
 */
#ifndef TB_REPO_INTERNAL_H
#define TB_REPO_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "manifest.h"
#include "repo.h"
#include "util.h"
#include "vector.h"

#define INDEX_FORMAT 1
#define MAX_PARALLEL 32

/* ---- small helpers -------------------------------------------------------- */

static inline void repo_sha256(const void *data, size_t len, uint8_t out[32])
{
  EVP_Digest(data, len, out, NULL, EVP_sha256(), NULL);
}

static inline uint64_t repo_chunk_len(const struct tb_manifest *m, size_t i)
{
  uint64_t off = (uint64_t)i * m->chunk_size;
  return m->size - off < m->chunk_size ? m->size - off : m->chunk_size;
}

/* ---- repo-index.c: the index document ------------------------------------- */

TB_VECTOR(repo_versions, struct tb_manifest *);
struct repo_index {
  struct repo_versions versions; /* ascending by version */
};

void repo_index_free(struct repo_index *ix);
static inline void repo_cleanup_index(struct repo_index *ix)
{
  repo_index_free(ix);
}
#define CLEANUP_INDEX __attribute__((cleanup(repo_cleanup_index)))
/* qsort comparator of struct tb_manifest * by version. */
int repo_cmp_manifest_version(const void *a, const void *b);
/* Parse and validate an index for IMAGE; WHAT (a URL or path) prefixes errors. */
int repo_parse_index(const char *text, size_t len, const char *image, const char *what,
                     struct repo_index *ix);
char *repo_dump_index(const char *image, const struct repo_index *ix);

/* ---- repo-publish.c ------------------------------------------------------- */

/* tb_clone_file with PROGRESS (may be NULL) seeing it as PHASE. */
int repo_clone_file(const char *src, const char *dst, enum tb_repo_phase phase,
                    tb_repo_progress_fn progress, void *ctx);

/* ---- repo-pullconf.c ------------------------------------------------------ */

/* http://, https:// or s3:// */
bool repo_url_scheme_ok(const char *url);

/* ---- repo-http.c ---------------------------------------------------------- */

/* Everything a transfer needs that does not change between requests. */
struct http {
  const struct tb_repo_pull_opts *o;
  char base[2048];   /* http(s) URL of the repository root, no trailing slash */
  bool sign;         /* S3 signature v4 */
  char sigv4[128];   /* "aws:amz:REGION:s3" */
  char userpwd[512]; /* "KEY:SECRET" */
  struct curl_slist *headers;
  uint64_t bytes; /* payload bytes received, all transfers */
};

/* One request: a memory buffer of bounded size, and what the headers said. */
struct xfer {
  CURL *curl;
  struct http *http;
  char url[2200];
  char errbuf[CURL_ERROR_SIZE];
  TB_VECTOR(, uint8_t) body; /* what was received */
  size_t limit;              /* the most we accept */
  bool overflow;             /* the server sent more than limit */
  bool range;                /* a Range request: Content-Range must match */
  uint64_t first, last;
  bool have_range; /* Content-Range seen */
  uint64_t cr_first, cr_last, cr_total;
  size_t chunk; /* for chunk transfers */
  bool busy;
};

int repo_http_init(struct http *h, const struct tb_repo_pull_opts *o);
void repo_http_cleanup(struct http *h);
/* (Re)arm X for a GET of BASE/PATH into a buffer of at most CAP bytes. */
int repo_xfer_setup(struct xfer *x, struct http *h, const char *path, size_t cap,
                    long max_recv_speed);
void repo_xfer_free(struct xfer *x);
#define CLEANUP_XFER __attribute__((cleanup(repo_xfer_free)))
void repo_xfer_set_range(struct xfer *x, uint64_t first, uint64_t last);
/* Turn a finished transfer into 0 or a message that says what went wrong and
 * what to do.  WHAT says what was being fetched ("the index", "chunk 7"). */
int repo_xfer_check(struct xfer *x, CURLcode rc, const char *what, uint64_t expect_total);
/* Fetch NAME/index.json into a NUL-terminated malloc'd buffer. */
char *repo_fetch_index(struct http *h, const char *image, size_t *len, char *url_out,
                       size_t url_len);

/* ---- repo-pulldir.c: pull state on disk ----------------------------------- */

/* The local version a pull starts from (repo-pull.c chooses it). */
struct local_match {
  uint32_t version; /* 0: none */
  size_t shared;    /* chunks equal at the same place */
  struct tb_manifest *m;
  bool identical; /* same size and sha256: nothing to pull */
};

enum chunk_state { CHUNK_TODO = 0, CHUNK_CLONED = 1, CHUNK_VERIFIED = 2 };

struct pull {
  const char *state, *image;
  const struct tb_repo_pull_opts *o;
  struct tb_repo_pull_result *r;
  tb_repo_progress_fn progress;
  void *ctx;
  const struct tb_manifest *want;
  struct local_match base;
  char base_path[TB_PATH_MAX];
  char dir[TB_PATH_MAX], partial[TB_PATH_MAX], done_path[TB_PATH_MAX], meta[TB_PATH_MAX];
  int lock_fd, fd, done_fd;
  uint8_t *done; /* enum chunk_state per chunk */
  struct http http;
  uint64_t bytes_done, bytes_todo; /* download progress */
  int64_t last_progress_ms;
  /* The whole-file sha256 runs ahead in chunk order while chunks download. */
  EVP_MD_CTX *whole;
  uint8_t *hash_buf;
  size_t hashed; /* chunks 0..hashed-1 are in `whole` */
};

/* Progress, at most every 100 ms unless FORCE. */
void repo_report(struct pull *p, enum tb_repo_phase phase, uint64_t done, uint64_t total,
                 bool force);
int repo_mark_chunk(struct pull *p, size_t i, enum chunk_state s);
bool repo_pull_can_resume(struct pull *p);
int repo_pull_start(struct pull *p);
int repo_pull_resume(struct pull *p);
void repo_remove_state_dir(const char *dir);
void repo_prune_obsolete_pulls(const char *state, const char *image, const char *url, uint32_t ver);

/* ---- repo-chunks.c -------------------------------------------------------- */

int repo_fill_local(struct pull *p);
int repo_hash_ahead(struct pull *p, int64_t budget_ms);
int repo_download_chunks(struct pull *p);

#endif
