/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: image distribution -- a static repository of versions, and delta pulls.
 *
 * Repository layout (what `tabulactl image publish` writes and any web server,
 * CDN or object store serves as plain files):
 *   DIR/NAME/index.json   {"format":1,"image":NAME,"versions":[{"version":N,
 *                          "file":"N.img","size":..,"sha256":..,"chunk_size":..,
 *                          "chunks":[sha256 hex...],"parent":P,"note":..,"created":..}]}
 *   DIR/NAME/N.img        the raw version file
 * The version file is written first, the index replaced last by rename, so a
 * reader never finds an index entry whose file is missing or incomplete.
 *
 * A pull fetches the index, picks the nearest local version (the one sharing
 * most chunk hashes), clones it, and downloads only the chunks that differ with
 * HTTP range requests, several at once.  Every chunk is verified against the
 * index, the whole file against its sha256, and only then published in the
 * store (tb_version_commit_manifest), so a failed pull leaves the store as it
 * was.  Progress is kept under STATE/pulls/NAME/SHA/ so an interrupted pull
 * resumes; chunks recorded as done are re-verified first.
 */
#ifndef TB_REPO_H
#define TB_REPO_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "util.h"

#define TB_REPO_DEFAULT_PARALLEL 4
#define TB_REPO_DEFAULT_CONNECT_TIMEOUT_MS 10000
#define TB_REPO_DEFAULT_STALL_TIMEOUT_MS 30000
#define TB_REPO_DEFAULT_MAX_REDIRECTS 5
#define TB_REPO_DEFAULT_MAX_INDEX (64 * 1024 * 1024)

/* What a publish or a pull is doing, for a progress display (PROGRESS
 * callbacks below). */
enum tb_repo_phase {
  TB_REPO_INDEX,    /* pull: fetching the index */
  TB_REPO_CLONE,    /* pull: cloning the nearest local version */
  TB_REPO_RESUME,   /* pull: re-verifying chunks from an interrupted pull */
  TB_REPO_DOWNLOAD, /* pull: downloading the chunks that differ */
  TB_REPO_VERIFY,   /* pull: hashing the whole file */
  TB_REPO_PUBLISH,  /* pull: renaming it into the store */
  TB_REPO_COPY,     /* publish: copying the version file into the repository */
};
struct tb_repo_progress {
  enum tb_repo_phase phase;
  uint64_t done, total; /* bytes within the phase */
};
typedef void (*tb_repo_progress_fn)(void *ctx, const struct tb_repo_progress *p);

/* Publish version VER (0: the newest) of IMAGE from the store STATE into the
 * repository directory DIR.  Re-publishing an identical version is a no-op;
 * a different version under the same number is refused.  *published gets the
 * version number (may be NULL).  PROGRESS (may be NULL) sees the copy of the
 * version file (TB_REPO_COPY), which is all of a publish's time. */
int tb_repo_publish(const char *state, const char *image, uint32_t ver, const char *dir,
                    tb_repo_progress_fn progress, void *ctx, uint32_t *published);

/* Where a pull comes from and how it talks to the server. */
struct tb_repo_pull_opts {
  const char *url;     /* repository base: http(s)://... or s3://BUCKET[/PREFIX] */
  uint32_t version;    /* remote version to pull; 0: the newest in the index */
  uint64_t rate_limit; /* bytes per second for the whole pull; 0: unlimited */
  int parallel;        /* concurrent range requests */
  int64_t connect_timeout_ms;
  int64_t stall_timeout_ms; /* abort a transfer that receives nothing for this long */
  long max_redirects;
  uint64_t max_index_size;
  const char *ca_file; /* NULL: the system's CA store; verification is always on */
  /* S3 (signature v4).  Credentials default to AWS_ACCESS_KEY_ID,
   * AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN from the environment. */
  const char *s3_region;   /* default us-east-1 (or AWS_REGION / AWS_DEFAULT_REGION) */
  const char *s3_endpoint; /* default https://s3.REGION.amazonaws.com; path-style URLs */
  const char *s3_access_key_id;
  const char *s3_secret_access_key;
  const char *s3_session_token;
  bool s3_sign; /* sign plain http(s) URLs as well (S3-compatible servers) */
};

/* Defaults for every field. */
void tb_repo_pull_opts_init(struct tb_repo_pull_opts *o);

/* The config's "pull" section: one source object, or an array of them (each
 * with its own "images").  A source:
 *   {"from": URL, "images": [NAME...], "when": SCHEDULE, "make_current": BOOL,
 *    "rate_limit": SIZE, "parallel": N, "connect_timeout": DURATION,
 *    "stall_timeout": DURATION, "max_redirects": N, "max_index_size": SIZE,
 *    "ca_file": PATH, "s3": {"region", "endpoint", "access_key_id",
 *    "secret_access_key", "session_token", "sign"}}
 * Validate checks it strictly; errors start with the JSON path, e.g.
 * `pull.rate_limit: expected a size such as "50M"`.  JSON_PATH is the path of
 * the section itself ("pull").  opts_from_config fills the fields set by the
 * source that serves IMAGE (the first whose "images" lists it or that has no
 * list); strings point into PULL, which must outlive O. */
int tb_repo_pull_config_validate(const json_t *pull, const char *json_path);
int tb_repo_pull_opts_from_config(const json_t *pull, const char *image,
                                  struct tb_repo_pull_opts *o);

struct tb_repo_pull_result {
  uint32_t remote_version;
  uint32_t local_version; /* the version in the store now holding it */
  uint32_t base_version;  /* local version cloned as the base, 0 if none */
  bool already_present;   /* an identical version was already in the store */
  bool resumed;           /* continued an interrupted pull */
  uint64_t size;
  size_t chunks_total;
  size_t chunks_cloned;  /* same chunk at the same place in the base */
  size_t chunks_copied;  /* found elsewhere in the base, copied locally */
  size_t chunks_resumed; /* verified by an earlier, interrupted run */
  size_t chunks_downloaded;
  uint64_t bytes_downloaded; /* payload bytes received, index included */
};

/* Pull IMAGE from the repository into the store STATE.  PROGRESS may be NULL.
 * On failure returns -1 with tb_errmsg() naming what failed (the URL, the HTTP
 * status, the chunk) and the store unchanged. */
int tb_repo_pull(const char *state, const char *image, const struct tb_repo_pull_opts *o,
                 tb_repo_progress_fn progress, void *ctx, struct tb_repo_pull_result *r);

/* Scheduled pulls (the daemon).  The "pull" section has sources (one object,
 * or an array); source I pulls its "images" (every image of the config if it
 * lists none) on its "when" schedule (NULL if it has none: manual only).
 * Run one source: every image is pulled in turn, each failure recorded as an
 * event; returns the number of images that failed (0: all pulled or already
 * present), or -1 if the source itself is unusable. */
struct tb_config;
size_t tb_repo_pull_sources(const json_t *pull);
const char *tb_repo_pull_source_when(const json_t *pull, size_t i);
bool tb_repo_pull_source_make_current(const json_t *pull, size_t i);
int tb_repo_pull_source_run(const struct tb_config *cfg, size_t i, tb_repo_progress_fn progress,
                            void *ctx);

#endif
