/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: image distribution (see repo.h for the repository layout).
 *
 * Publish copies a version file into DIR/NAME/ (temporary name, fsync, rename)
 * and then replaces DIR/NAME/index.json by rename: readers (nginx, a CDN, an
 * S3 sync) see the old index or the new one, and every version an index names
 * is already complete.  The index is an ordinary JSON document listing each
 * version's manifest fields; nothing else is needed to serve it.
 *
 * Pull works in five steps, each safe to interrupt:
 *   1. fetch NAME/index.json (size-bounded) and validate it strictly; the
 *      index is the only thing trusted, and only as far as hashes let us check;
 *   2. pick the local version sharing the most chunk hashes, clone it
 *      (reflink, else copy_file_range) into STATE/pulls/NAME/SHA/partial.img;
 *   3. fill the chunks that differ: a chunk found elsewhere in the base (zero
 *      chunks, moved data) is copied locally, every other one is fetched with
 *      a Range request, several at once (curl multi); each is verified against
 *      its sha256 before it is written and recorded in chunks.done;
 *   4. hash the whole file against the index's sha256;
 *   5. rename it into the store as the next version (tb_version_commit_manifest).
 * The pull directory is outside images/, so until step 5 the store is
 * untouched.  A later pull of the same version (same sha256) finds the
 * directory and resumes: chunks marked done are re-hashed first, so a torn
 * write or a lost marker costs a re-download, never a wrong chunk.
 *
 * Network trust: URLs are built only from the configured base URL, a validated
 * image name and a version number; the index's "file" must be "N.img".
 * Transfers are bounded (connect and stall timeouts, redirect count, sizes),
 * HTTPS peers are always verified, and a response must be exactly the range
 * asked for (206 with a matching Content-Range) before its bytes are hashed.
 */
#include <config.h>

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "conf.h"
#include "events.h"
#include "json.h"
#include "repo.h"
#include "schedule.h"
#include "manifest.h"
#include "store.h"

#define INDEX_FORMAT 1
#define MAX_PARALLEL 32

/* ---- small helpers -------------------------------------------------------- */

static void sha256(const void *data, size_t len, uint8_t out[32])
{
  EVP_Digest(data, len, out, NULL, EVP_sha256(), NULL);
}

static uint64_t chunk_len(const struct tb_manifest *m, size_t i)
{
  uint64_t off = (uint64_t)i * m->chunk_size;
  return m->size - off < m->chunk_size ? m->size - off : m->chunk_size;
}

/* ---- the index document ----------------------------------------------------- */

struct repo_index {
  struct tb_manifest **versions; /* ascending by version */
  size_t n;
};

static void index_free(struct repo_index *ix)
{
  for (size_t i = 0; i < ix->n; i++)
    tb_manifest_free(ix->versions[i]);
  free(ix->versions);
  ix->versions = NULL;
  ix->n = 0;
}

static int cmp_manifest_version(const void *a, const void *b)
{
  const struct tb_manifest *x = *(struct tb_manifest *const *)a;
  const struct tb_manifest *y = *(struct tb_manifest *const *)b;
  return x->version < y->version ? -1 : x->version > y->version;
}

/* Parse and validate an index for IMAGE; WHAT (a URL or path) prefixes errors. */
static int parse_index(const char *text, size_t len, const char *image, const char *what,
                       struct repo_index *ix)
{
  json_error_t jerr;
  ix->versions = NULL;
  ix->n = 0;
  json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
  if (!root)
    return tb_error("%s: not a valid index: not JSON (line %d column %d: %s)", what, jerr.line,
                    jerr.column, jerr.text);
  int r = -1;
  json_t *fmt = json_object_get(root, "format"), *name = json_object_get(root, "image");
  json_t *vers = json_object_get(root, "versions");
  if (!json_is_object(root)) {
    tb_error("%s: not a valid index: expected a JSON object", what);
    goto out;
  }
  if (!json_is_integer(fmt) || json_integer_value(fmt) != INDEX_FORMAT) {
    tb_error("%s: not a valid index: \"format\" must be %d (a newer tabula may have "
             "written it)",
             what, INDEX_FORMAT);
    goto out;
  }
  if (!json_is_string(name) || strcmp(json_string_value(name), image) != 0) {
    tb_error("%s: not a valid index: \"image\" is not \"%s\"", what, image);
    goto out;
  }
  if (!json_is_array(vers)) {
    tb_error("%s: not a valid index: \"versions\" is missing or not an array", what);
    goto out;
  }
  size_t n = json_array_size(vers);
  ix->versions = calloc(n + 1, sizeof *ix->versions);
  if (!ix->versions) {
    tb_error_errno("%s", what);
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    char ewhat[TB_PATH_MAX + 32];
    snprintf(ewhat, sizeof ewhat, "%s: versions[%zu]", what, i);
    struct tb_manifest *m = tb_manifest_from_index_entry(json_array_get(vers, i), image, ewhat);
    if (!m)
      goto out;
    ix->versions[ix->n++] = m;
  }
  qsort(ix->versions, ix->n, sizeof *ix->versions, cmp_manifest_version);
  for (size_t i = 1; i < ix->n; i++)
    if (ix->versions[i]->version == ix->versions[i - 1]->version) {
      tb_error("%s: not a valid index: version %u is listed twice", what, ix->versions[i]->version);
      goto out;
    }
  r = 0;
out:
  json_decref(root);
  if (r == -1)
    index_free(ix);
  return r;
}

static char *dump_index(const char *image, const struct repo_index *ix)
{
  json_t *vers = json_array();
  for (size_t i = 0; vers && i < ix->n; i++)
    json_array_append_new(vers, tb_manifest_to_index_entry(ix->versions[i]));
  json_t *root =
      json_pack("{s:i, s:s, s:o}", "format", INDEX_FORMAT, "image", image, "versions", vers);
  if (!root) {
    tb_error("cannot encode the index of %s", image);
    return NULL;
  }
  char *text = json_dumps(root, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
  json_decref(root);
  if (!text)
    tb_error("cannot encode the index of %s", image);
  return text;
}

/* ---- publish ------------------------------------------------------------------- */

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
static int clone_file(const char *src, const char *dst, enum tb_repo_phase phase,
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
  if (clone_file(src, tmp, TB_REPO_COPY, progress, ctx) == -1)
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
    int pr = parse_index(old, len, image, ipath, &ix);
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
    qsort(ix.versions, ix.n, sizeof *ix.versions, cmp_manifest_version);
  }
  if (!(text = dump_index(image, &ix)) ||
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
  index_free(&ix);
  if (dfd >= 0)
    close(dfd);
  tb_manifest_free(m);
  return r;
}

/* ---- pull options and the "pull" config section ----------------------------------- */

void tb_repo_pull_opts_init(struct tb_repo_pull_opts *o)
{
  memset(o, 0, sizeof *o);
  o->parallel = TB_REPO_DEFAULT_PARALLEL;
  o->connect_timeout_ms = TB_REPO_DEFAULT_CONNECT_TIMEOUT_MS;
  o->stall_timeout_ms = TB_REPO_DEFAULT_STALL_TIMEOUT_MS;
  o->max_redirects = TB_REPO_DEFAULT_MAX_REDIRECTS;
  o->max_index_size = TB_REPO_DEFAULT_MAX_INDEX;
}

static bool url_scheme_ok(const char *url)
{
  return strncmp(url, "http://", 7) == 0 || strncmp(url, "https://", 8) == 0 ||
         strncmp(url, "s3://", 5) == 0;
}

/* A size is a JSON integer (bytes) or a string such as "50M". */
static int json_size(const json_t *v, uint64_t *out)
{
  if (json_is_integer(v) && json_integer_value(v) >= 0) {
    *out = (uint64_t)json_integer_value(v);
    return 0;
  }
  return json_is_string(v) ? tb_parse_size(json_string_value(v), out) : -1;
}

static int json_duration(const json_t *v, int64_t *out)
{
  if (json_is_integer(v) && json_integer_value(v) >= 0) {
    *out = (int64_t)json_integer_value(v) * 1000; /* plain numbers are seconds */
    return 0;
  }
  return json_is_string(v) ? tb_parse_duration(json_string_value(v), out) : -1;
}

static int validate_s3(const json_t *s3, const char *path)
{
  static const char *const keys[] = {
      "region", "endpoint", "access_key_id", "secret_access_key", "session_token", "sign", NULL};
  if (!json_is_object(s3))
    return tb_error("%s: expected an object", path);
  if (tb_json_check_keys(s3, path, keys) == -1)
    return -1;
  const char *key;
  json_t *val;
  json_object_foreach((json_t *)s3, key, val)
  {
    if (strcmp(key, "sign") == 0) {
      if (!json_is_boolean(val))
        return tb_error("%s.sign: expected true or false", path);
    } else if (!json_is_string(val) || !json_string_length(val))
      return tb_error("%s.%s: expected a non-empty string", path, key);
    if (strcmp(key, "endpoint") == 0 && strncmp(json_string_value(val), "http://", 7) != 0 &&
        strncmp(json_string_value(val), "https://", 8) != 0)
      return tb_error("%s.endpoint: expected an http:// or https:// URL, got \"%s\"", path,
                      json_string_value(val));
    if (strcmp(key, "region") == 0) {
      for (const char *p = json_string_value(val); *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-')
          return tb_error("%s.region: expected a region name such as \"eu-west-1\", got "
                          "\"%s\"",
                          path, json_string_value(val));
    }
  }
  if (!json_object_get(s3, "access_key_id") != !json_object_get(s3, "secret_access_key"))
    return tb_error("%s: access_key_id and secret_access_key go together", path);
  return 0;
}

static int validate_pull_source(const json_t *pull, const char *path)
{
  if (!json_is_object(pull))
    return tb_error("%s: expected an object such as {\"from\": \"https://repo/images\", "
                    "\"images\": [\"win11\"], \"when\": \"daily 03:00\"}",
                    path);
  static const char *const keys[] = {"from",
                                     "images",
                                     "when",
                                     "make_current",
                                     "rate_limit",
                                     "parallel",
                                     "connect_timeout",
                                     "stall_timeout",
                                     "max_redirects",
                                     "max_index_size",
                                     "ca_file",
                                     "s3",
                                     NULL};
  if (tb_json_check_keys(pull, path, keys) == -1)
    return -1;
  const char *key;
  json_t *v;
  json_object_foreach((json_t *)pull, key, v)
  {
    uint64_t size;
    int64_t ms;
    if (strcmp(key, "from") == 0) {
      if (!json_is_string(v) || !url_scheme_ok(json_string_value(v)))
        return tb_error("%s.from: expected an http://, https:// or s3:// URL", path);
    } else if (strcmp(key, "images") == 0) {
      if (!json_is_array(v))
        return tb_error("%s.images: expected an array of image names", path);
      for (size_t i = 0; i < json_array_size(v); i++) {
        json_t *n = json_array_get(v, i);
        if (!json_is_string(n) || !tb_name_valid(json_string_value(n)))
          return tb_error("%s.images[%zu]: expected an image name ([A-Za-z0-9._-], 1-64)", path, i);
      }
    } else if (strcmp(key, "when") == 0) {
      struct tb_schedule sched;
      if (!json_is_string(v))
        return tb_error("%s.when: expected a schedule such as \"daily 03:00\" or "
                        "\"every 1h\"",
                        path);
      if (tb_schedule_parse(json_string_value(v), &sched) == -1)
        return tb_error_prefix("%s.when", path);
    } else if (strcmp(key, "make_current") == 0) {
      if (!json_is_boolean(v))
        return tb_error("%s.make_current: expected true or false", path);
    } else if (strcmp(key, "rate_limit") == 0 || strcmp(key, "max_index_size") == 0) {
      if (json_size(v, &size) == -1)
        return tb_error("%s.%s: expected a size such as \"50M\" (bytes per second for "
                        "rate_limit)",
                        path, key);
      if (strcmp(key, "max_index_size") == 0 && size < 4096)
        return tb_error("%s.max_index_size: must be at least 4K", path);
    } else if (strcmp(key, "parallel") == 0) {
      if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > MAX_PARALLEL)
        return tb_error("%s.parallel: expected an integer from 1 to %d", path, MAX_PARALLEL);
    } else if (strcmp(key, "connect_timeout") == 0 || strcmp(key, "stall_timeout") == 0) {
      if (json_duration(v, &ms) == -1 || ms < 1000)
        return tb_error("%s.%s: expected a duration of at least 1s, such as \"30s\"", path, key);
    } else if (strcmp(key, "max_redirects") == 0) {
      if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 50)
        return tb_error("%s.max_redirects: expected an integer from 0 to 50", path);
    } else if (strcmp(key, "ca_file") == 0) {
      if (!json_is_string(v) || !json_string_length(v))
        return tb_error("%s.ca_file: expected the path of a PEM CA bundle", path);
    } else if (strcmp(key, "s3") == 0) {
      char sub[256];
      snprintf(sub, sizeof sub, "%s.s3", path);
      if (validate_s3(v, sub) == -1)
        return -1;
    }
  }
  return 0;
}

/* "pull" is one source, or an array of sources for different images. */
int tb_repo_pull_config_validate(const json_t *pull, const char *path)
{
  if (!json_is_array(pull))
    return validate_pull_source(pull, path);
  for (size_t i = 0; i < json_array_size(pull); i++) {
    char sub[256];
    snprintf(sub, sizeof sub, "%s[%zu]", path, i);
    if (validate_pull_source(json_array_get(pull, i), sub) == -1)
      return -1;
  }
  return 0;
}

static bool source_has_image(const json_t *src, const char *image)
{
  const json_t *images = json_object_get(src, "images");
  if (!images)
    return true; /* no list: every image */
  for (size_t i = 0; i < json_array_size(images); i++)
    if (image && strcmp(json_string_value(json_array_get(images, i)), image) == 0)
      return true;
  return false;
}

int tb_repo_pull_opts_from_config(const json_t *pull, const char *image,
                                  struct tb_repo_pull_opts *o)
{
  if (!pull)
    return 0;
  if (tb_repo_pull_config_validate(pull, "pull") == -1)
    return -1;
  if (json_is_array(pull)) {
    const json_t *found = NULL;
    for (size_t i = 0; !found && i < json_array_size(pull); i++)
      if (source_has_image(json_array_get(pull, i), image))
        found = json_array_get(pull, i);
    if (!found)
      return 0;
    pull = found;
  }
  json_t *v, *s3 = json_object_get(pull, "s3");
  uint64_t size;
  int64_t ms;
  if ((v = json_object_get(pull, "from")))
    o->url = json_string_value(v);
  if ((v = json_object_get(pull, "rate_limit")) && json_size(v, &size) == 0)
    o->rate_limit = size;
  if ((v = json_object_get(pull, "max_index_size")) && json_size(v, &size) == 0)
    o->max_index_size = size;
  if ((v = json_object_get(pull, "parallel")))
    o->parallel = (int)json_integer_value(v);
  if ((v = json_object_get(pull, "connect_timeout")) && json_duration(v, &ms) == 0)
    o->connect_timeout_ms = ms;
  if ((v = json_object_get(pull, "stall_timeout")) && json_duration(v, &ms) == 0)
    o->stall_timeout_ms = ms;
  if ((v = json_object_get(pull, "max_redirects")))
    o->max_redirects = (long)json_integer_value(v);
  if ((v = json_object_get(pull, "ca_file")))
    o->ca_file = json_string_value(v);
  if (s3) {
    o->s3_region = json_string_value(json_object_get(s3, "region"));
    o->s3_endpoint = json_string_value(json_object_get(s3, "endpoint"));
    o->s3_access_key_id = json_string_value(json_object_get(s3, "access_key_id"));
    o->s3_secret_access_key = json_string_value(json_object_get(s3, "secret_access_key"));
    o->s3_session_token = json_string_value(json_object_get(s3, "session_token"));
    o->s3_sign = json_is_true(json_object_get(s3, "sign"));
  }
  return 0;
}

/* ---- HTTP ---------------------------------------------------------------------------- */

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

static const char *env_or(const char *value, const char *env)
{
  if (value)
    return value;
  const char *e = getenv(env);
  return e && *e ? e : NULL;
}

static int http_init(struct http *h, const struct tb_repo_pull_opts *o)
{
  memset(h, 0, sizeof *h);
  h->o = o;
  const char *url = o->url;
  if (!url || !url_scheme_ok(url))
    return tb_error("repository URL \"%s\" must start with http://, https:// or s3://",
                    url ? url : "");
  const char *region = env_or(o->s3_region, "AWS_REGION");
  if (!region)
    region = env_or(NULL, "AWS_DEFAULT_REGION");
  if (!region)
    region = "us-east-1";
  int n;
  if (strncmp(url, "s3://", 5) == 0) {
    /* Path-style URLs work with AWS, Ceph RGW and MinIO alike. */
    char endpoint[512];
    if (o->s3_endpoint)
      snprintf(endpoint, sizeof endpoint, "%s", o->s3_endpoint);
    else
      snprintf(endpoint, sizeof endpoint, "https://s3.%s.amazonaws.com", region);
    size_t el = strlen(endpoint);
    while (el && endpoint[el - 1] == '/')
      endpoint[--el] = '\0';
    n = snprintf(h->base, sizeof h->base, "%s/%s", endpoint, url + 5);
    h->sign = true;
  } else {
    n = snprintf(h->base, sizeof h->base, "%s", url);
    h->sign = o->s3_sign;
  }
  if (n < 0 || (size_t)n >= sizeof h->base)
    return tb_error("repository URL is too long");
  size_t bl = strlen(h->base);
  while (bl && h->base[bl - 1] == '/')
    h->base[--bl] = '\0';
  if (h->sign) {
    const char *key = env_or(o->s3_access_key_id, "AWS_ACCESS_KEY_ID");
    const char *secret = env_or(o->s3_secret_access_key, "AWS_SECRET_ACCESS_KEY");
    const char *token = env_or(o->s3_session_token, "AWS_SESSION_TOKEN");
    if (!key || !secret)
      return tb_error("%s needs S3 credentials: set pull.s3.access_key_id and "
                      "secret_access_key in the config, or AWS_ACCESS_KEY_ID and "
                      "AWS_SECRET_ACCESS_KEY",
                      url);
    snprintf(h->sigv4, sizeof h->sigv4, "aws:amz:%s:s3", region);
    n = snprintf(h->userpwd, sizeof h->userpwd, "%s:%s", key, secret);
    if (n < 0 || (size_t)n >= sizeof h->userpwd)
      return tb_error("S3 credentials are too long");
    if (token) {
      char hdr[4096];
      n = snprintf(hdr, sizeof hdr, "x-amz-security-token: %s", token);
      if (n < 0 || (size_t)n >= sizeof hdr || !(h->headers = curl_slist_append(NULL, hdr)))
        return tb_error("S3 session token is too long");
    }
  }
  return 0;
}

static void http_cleanup(struct http *h)
{
  curl_slist_free_all(h->headers);
  h->headers = NULL;
}

/* One request: a memory buffer of bounded size, and what the headers said. */
struct xfer {
  CURL *curl;
  struct http *http;
  char url[2200];
  char errbuf[CURL_ERROR_SIZE];
  uint8_t *buf;
  size_t len, cap; /* received, and the most we accept */
  bool overflow;   /* the server sent more than cap */
  bool range;      /* a Range request: Content-Range must match */
  uint64_t first, last;
  bool have_range; /* Content-Range seen */
  uint64_t cr_first, cr_last, cr_total;
  size_t chunk; /* for chunk transfers */
  bool busy;
};

static size_t xfer_write(char *data, size_t size, size_t nmemb, void *ud)
{
  struct xfer *x = ud;
  size_t n = size * nmemb;
  x->http->bytes += n;
  if (n > x->cap - x->len) {
    x->overflow = true;
    return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
  }
  memcpy(x->buf + x->len, data, n);
  x->len += n;
  return n;
}

static size_t xfer_header(char *data, size_t size, size_t nmemb, void *ud)
{
  struct xfer *x = ud;
  size_t n = size * nmemb;
  char line[256];
  size_t l = n < sizeof line - 1 ? n : sizeof line - 1;
  memcpy(line, data, l);
  line[l] = '\0';
  /* A new response (after a redirect) starts over. */
  if (strncmp(line, "HTTP/", 5) == 0)
    x->have_range = false;
  unsigned long long a, b, t;
  if (strncasecmp(line, "content-range:", 14) == 0 &&
      sscanf(line + 14, " bytes %llu-%llu/%llu", &a, &b, &t) == 3) {
    x->have_range = true;
    x->cr_first = a;
    x->cr_last = b;
    x->cr_total = t;
  }
  return n;
}

static int xfer_setup(struct xfer *x, struct http *h, const char *path, size_t cap,
                      long max_recv_speed)
{
  const struct tb_repo_pull_opts *o = h->o;
  if (!x->curl && !(x->curl = curl_easy_init()))
    return tb_error("cannot initialise libcurl");
  curl_easy_reset(x->curl);
  x->http = h;
  x->len = 0;
  x->overflow = false;
  x->have_range = false;
  x->range = false;
  x->errbuf[0] = '\0';
  if (cap > x->cap || !x->buf) {
    uint8_t *nb = realloc(x->buf, cap ? cap : 1);
    if (!nb)
      return tb_error_errno("allocating a %zu-byte buffer", cap);
    x->buf = nb;
  }
  x->cap = cap;
  snprintf(x->url, sizeof x->url, "%s/%s", h->base, path);
  CURL *c = x->curl;
  curl_easy_setopt(c, CURLOPT_URL, x->url);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(c, CURLOPT_MAXREDIRS, o->max_redirects);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)o->connect_timeout_ms);
  /* Stalls: fewer than 1 byte/s for the stall time aborts (also while waiting
   * for the response headers). */
  long stall_s = (long)((o->stall_timeout_ms + 999) / 1000);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, stall_s > 0 ? stall_s : 1L);
  curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
  if (o->ca_file)
    curl_easy_setopt(c, CURLOPT_CAINFO, o->ca_file);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, x->errbuf);
  curl_easy_setopt(c, CURLOPT_USERAGENT, "tabula/" PACKAGE_VERSION);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, xfer_write);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, x);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, xfer_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, x);
  curl_easy_setopt(c, CURLOPT_PRIVATE, x);
  if (max_recv_speed > 0)
    curl_easy_setopt(c, CURLOPT_MAX_RECV_SPEED_LARGE, (curl_off_t)max_recv_speed);
  if (h->sign) {
    curl_easy_setopt(c, CURLOPT_AWS_SIGV4, h->sigv4);
    curl_easy_setopt(c, CURLOPT_USERPWD, h->userpwd);
    /* Redirects must not carry the credentials elsewhere. */
    curl_easy_setopt(c, CURLOPT_UNRESTRICTED_AUTH, 0L);
  }
  if (h->headers)
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h->headers);
  return 0;
}

static void xfer_free(struct xfer *x)
{
  if (x->curl)
    curl_easy_cleanup(x->curl);
  free(x->buf);
  x->curl = NULL;
  x->buf = NULL;
}

static void xfer_set_range(struct xfer *x, uint64_t first, uint64_t last)
{
  char r[64];
  snprintf(r, sizeof r, "%" PRIu64 "-%" PRIu64, first, last);
  curl_easy_setopt(x->curl, CURLOPT_RANGE, r);
  x->range = true;
  x->first = first;
  x->last = last;
}

/* Turn a finished transfer into 0 or a message that says what went wrong and
 * what to do.  WHAT says what was being fetched ("the index", "chunk 7"). */
static int xfer_check(struct xfer *x, CURLcode rc, const char *what, uint64_t expect_total)
{
  const struct tb_repo_pull_opts *o = x->http->o;
  long status = 0;
  curl_easy_getinfo(x->curl, CURLINFO_RESPONSE_CODE, &status);
  const char *detail = x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc);
  switch (rc) {
  case CURLE_OK:
    break;
  case CURLE_WRITE_ERROR:
    if (x->overflow && !x->range)
      return tb_error("%s: %s is larger than the limit of %zu bytes (pull.max_index_size)", x->url,
                      what, x->cap);
    if (x->overflow && status == 200)
      return tb_error("%s: %s: HTTP 200 with the whole file instead of 206 Partial Content "
                      "(the server must support range requests)",
                      x->url, what);
    if (x->overflow)
      return tb_error("%s: %s: the server sent more than the expected %zu bytes", x->url, what,
                      x->cap);
    return tb_error("%s: %s: %s", x->url, what, detail);
  case CURLE_FILESIZE_EXCEEDED:
    return tb_error("%s: %s is larger than the limit of %zu bytes (pull.max_index_size)", x->url,
                    what, x->cap);
  case CURLE_OPERATION_TIMEDOUT:
    return tb_error("%s: %s: the server sent nothing for %llds (stall timeout: %s); try again "
                    "later, or raise pull.stall_timeout",
                    x->url, what, (long long)((o->stall_timeout_ms + 999) / 1000), detail);
  case CURLE_TOO_MANY_REDIRECTS:
    return tb_error("%s: %s: more than %ld redirects (a redirect loop on the server?)", x->url,
                    what, o->max_redirects);
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_CONNECT:
    return tb_error("%s: %s: cannot connect (%s); is the repository server up?", x->url, what,
                    detail);
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_CONNECT_ERROR:
    return tb_error("%s: %s: TLS certificate check failed (%s); set pull.ca_file to the CA "
                    "that signed the server's certificate",
                    x->url, what, detail);
  case CURLE_UNSUPPORTED_PROTOCOL:
    return tb_error("%s: %s: %s (only http and https are followed)", x->url, what, detail);
  default:
    return tb_error("%s: %s: %s", x->url, what, detail);
  }
  if (status == 404)
    return tb_error("%s: %s: HTTP 404 Not Found", x->url, what);
  if (status == 401 || status == 403)
    return tb_error("%s: %s: HTTP %ld access denied; check the S3 credentials "
                    "(pull.s3 or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)",
                    x->url, what, status);
  if (status == 416)
    return tb_error("%s: %s: HTTP 416 range not satisfiable: the file on the server is "
                    "shorter than the index says",
                    x->url, what);
  if (x->range && status != 206)
    return tb_error("%s: %s: HTTP %ld instead of 206 Partial Content (the server must "
                    "support range requests)",
                    x->url, what, status);
  if (!x->range && status != 200)
    return tb_error("%s: %s: HTTP %ld from the server", x->url, what, status);
  if (x->range) {
    if (!x->have_range)
      return tb_error("%s: %s: the 206 response has no Content-Range", x->url, what);
    if (x->cr_total != expect_total)
      return tb_error("%s: %s: the file on the server is %llu bytes, the index says %llu", x->url,
                      what, (unsigned long long)x->cr_total, (unsigned long long)expect_total);
    if (x->cr_first != x->first || x->cr_last != x->last || x->len != x->last - x->first + 1)
      return tb_error("%s: %s: the server sent bytes %llu-%llu (%zu bytes) for the range "
                      "%llu-%llu",
                      x->url, what, (unsigned long long)x->cr_first, (unsigned long long)x->cr_last,
                      x->len, (unsigned long long)x->first, (unsigned long long)x->last);
  }
  return 0;
}

/* Fetch NAME/index.json into a NUL-terminated malloc'd buffer. */
static char *fetch_index(struct http *h, const char *image, size_t *len, char *url_out,
                         size_t url_len)
{
  struct xfer x = {0};
  char path[TB_NAME_MAX + 32];
  snprintf(path, sizeof path, "%s/index.json", image);
  char *text = NULL;
  size_t cap =
      h->o->max_index_size > (64u << 20) * 16 ? (64u << 20) * 16 : (size_t)h->o->max_index_size;
  if (xfer_setup(&x, h, path, cap, 0) == -1)
    goto out;
  snprintf(url_out, url_len, "%s", x.url);
  curl_easy_setopt(x.curl, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)cap);
  CURLcode rc = curl_easy_perform(x.curl);
  char what[128];
  snprintf(what, sizeof what, "the index of %s", image);
  if (xfer_check(&x, rc, what, 0) == -1) {
    long status = 0;
    curl_easy_getinfo(x.curl, CURLINFO_RESPONSE_CODE, &status);
    if (rc == CURLE_OK && status == 404)
      tb_error("%s: HTTP 404 Not Found: the repository has no image \"%s\" (check --from and "
               "the image name)",
               x.url, image);
    goto out;
  }
  text = malloc(x.len + 1);
  if (!text) {
    tb_error_errno("%s", x.url);
    goto out;
  }
  memcpy(text, x.buf, x.len);
  text[x.len] = '\0';
  *len = x.len;
out:
  xfer_free(&x);
  return text;
}

/* ---- choosing the base ------------------------------------------------------------- */

struct local_match {
  uint32_t version; /* 0: none */
  size_t shared;    /* chunks equal at the same place */
  struct tb_manifest *m;
  bool identical; /* same size and sha256: nothing to pull */
};

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
        shared +=
            memcmp(m->chunks[c], want->chunks[c], 32) == 0 && chunk_len(m, c) == chunk_len(want, c);
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

/* ---- pull state on disk ---------------------------------------------------------------- */

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

static void report(struct pull *p, enum tb_repo_phase phase, uint64_t done, uint64_t total,
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

static int mark_chunk(struct pull *p, size_t i, enum chunk_state s)
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
  json_t *j = json_pack("{s:s, s:s, s:I, s:s, s:I, s:I, s:I, s:s}", "url", p->o->url, "image",
                        p->image, "version", (json_int_t)p->want->version, "sha256", sha, "size",
                        (json_int_t)p->want->size, "chunk_size", (json_int_t)p->want->chunk_size,
                        "base", (json_int_t)p->base.version, "base_manifest_sha256", base_sha);
  char *text = j ? json_dumps(j, JSON_SORT_KEYS) : NULL;
  json_decref(j);
  return text;
}

/* Can we continue from what an earlier run left?  Only if it was a pull of the
 * same content (the directory is named by sha256), its clone step completed
 * (the meta file is written after it), and partial.img has the right size. */
static bool pull_can_resume(struct pull *p)
{
  size_t len;
  char *text = tb_read_file(p->meta, 1 << 20, &len);
  if (!text)
    return false;
  json_t *j = json_loadb(text, len, 0, NULL);
  free(text);
  char sha[65];
  tb_hex(p->want->sha256, 32, sha);
  bool ok = j && json_is_string(json_object_get(j, "sha256")) &&
            strcmp(json_string_value(json_object_get(j, "sha256")), sha) == 0 &&
            json_integer_value(json_object_get(j, "size")) == (json_int_t)p->want->size &&
            json_integer_value(json_object_get(j, "chunk_size")) == (json_int_t)p->want->chunk_size;
  json_decref(j);
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
static int pull_start(struct pull *p)
{
  const struct tb_manifest *w = p->want;
  unlink(p->meta);
  unlink(p->partial);
  if (p->base.m && p->base.shared > 0) {
    report(p, TB_REPO_CLONE, 0, p->base.m->size, true);
    if (clone_file(p->base_path, p->partial, TB_REPO_CLONE, p->progress, p->ctx) == -1)
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
      if (memcmp(b->chunks[i], w->chunks[i], 32) == 0 && chunk_len(b, i) == chunk_len(w, i)) {
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
  char *text = pull_meta_text(p);
  int r = text ? tb_write_file_atomic(p->meta, text, strlen(text), 0600)
               : tb_error("cannot encode %s", p->meta);
  free(text);
  return r;
}

/* Resume: re-hash every chunk an earlier run verified; a mismatch is fetched again. */
static int pull_resume(struct pull *p)
{
  const struct tb_manifest *w = p->want;
  if (pull_open_files(p, false) == -1)
    return -1;
  if (tb_pread_full(p->done_fd, p->done, w->n_chunks, 0) == -1)
    return tb_error_errno("cannot read %s", p->done_path);
  uint8_t *buf = malloc(w->chunk_size);
  if (!buf)
    return tb_error_errno("resuming");
  uint64_t todo = 0, done = 0;
  for (size_t i = 0; i < w->n_chunks; i++)
    if (p->done[i] == CHUNK_VERIFIED)
      todo += chunk_len(w, i);
  for (size_t i = 0; i < w->n_chunks; i++) {
    if (p->done[i] == CHUNK_CLONED) {
      p->r->chunks_cloned++;
      continue;
    }
    if (p->done[i] != CHUNK_VERIFIED) {
      p->done[i] = CHUNK_TODO;
      continue;
    }
    size_t len = (size_t)chunk_len(w, i);
    uint8_t h[32];
    if (tb_pread_full(p->fd, buf, len, (uint64_t)i * w->chunk_size) == -1) {
      free(buf);
      return tb_error_errno("cannot read %s", p->partial);
    }
    sha256(buf, len, h);
    if (memcmp(h, w->chunks[i], 32) == 0)
      p->r->chunks_resumed++;
    else if (mark_chunk(p, i, CHUNK_TODO) == -1) {
      free(buf);
      return -1;
    }
    done += len;
    report(p, TB_REPO_RESUME, done, todo, false);
  }
  free(buf);
  p->r->resumed = true;
  return 0;
}

/* ---- filling chunks locally -------------------------------------------------------------- */

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
static int fill_local(struct pull *p)
{
  const struct tb_manifest *w = p->want, *b = p->base.m;
  uint8_t *buf = malloc(w->chunk_size), zero_hash[32], tail_zero_hash[32];
  struct hash_ref *refs = NULL;
  size_t n_refs = 0;
  int base_fd = -1, r = -1;
  if (!buf) {
    tb_error_errno("pull");
    goto out;
  }
  memset(buf, 0, w->chunk_size);
  sha256(buf, w->chunk_size, zero_hash);
  sha256(buf, (size_t)chunk_len(w, w->n_chunks - 1), tail_zero_hash);
  if (b && (base_fd = open(p->base_path, O_RDONLY | O_CLOEXEC)) >= 0 &&
      (refs = malloc((b->n_chunks + 1) * sizeof *refs))) {
    for (size_t i = 0; i < b->n_chunks; i++)
      if (chunk_len(b, i) == b->chunk_size) {
        memcpy(refs[n_refs].hash, b->chunks[i], 32);
        refs[n_refs++].chunk = i;
      }
    qsort(refs, n_refs, sizeof *refs, cmp_hash_ref);
  }
  for (size_t i = 0; i < w->n_chunks; i++) {
    if (p->done[i] != CHUNK_TODO)
      continue;
    uint64_t off = (uint64_t)i * w->chunk_size;
    size_t len = (size_t)chunk_len(w, i);
    bool full = len == w->chunk_size;
    if (memcmp(w->chunks[i], full ? zero_hash : tail_zero_hash, 32) == 0) {
      if (fallocate(p->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) ==
          -1) {
        memset(buf, 0, len);
        if (tb_pwrite_full(p->fd, buf, len, off) == -1) {
          tb_error_errno("cannot write %s", p->partial);
          goto out;
        }
      }
      if (mark_chunk(p, i, CHUNK_VERIFIED) == -1)
        goto out;
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
    sha256(buf, len, h);
    if (memcmp(h, w->chunks[i], 32) != 0)
      continue;
    if (tb_pwrite_full(p->fd, buf, len, off) == -1) {
      tb_error_errno("cannot write %s", p->partial);
      goto out;
    }
    if (mark_chunk(p, i, CHUNK_VERIFIED) == -1)
      goto out;
    p->r->chunks_copied++;
  }
  r = 0;
out:
  if (base_fd >= 0)
    close(base_fd);
  free(refs);
  free(buf);
  return r;
}

/* Verify the assembled file: hash the chunks that are in place, in order,
 * from disk, check each against the index, and feed the version digest (the
 * hash of the chunk hashes, see store.h) -- for at most BUDGET_MS (no limit
 * if negative, reporting the verify phase).  Runs between network events, so
 * most of the hashing overlaps the downloads. */
static int hash_ahead(struct pull *p, int64_t budget_ms)
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
    size_t len = (size_t)chunk_len(w, p->hashed);
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
      report(p, TB_REPO_VERIFY, off + len, w->size, false);
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
  uint64_t off = (uint64_t)i * w->chunk_size, len = chunk_len(w, i);
  if (xfer_setup(x, &p->http, path, (size_t)len, speed) == -1)
    return -1;
  xfer_set_range(x, off, off + len - 1);
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
  if (xfer_check(x, rc, what, w->size) == -1)
    return -1;
  uint8_t h[32];
  sha256(x->buf, x->len, h);
  if (memcmp(h, w->chunks[x->chunk], 32) != 0) {
    char got[65], want[65];
    tb_hex(h, 32, got);
    tb_hex(w->chunks[x->chunk], 32, want);
    return tb_error("%s: chunk %zu (bytes %llu-%llu) is corrupt: its sha256 is %s, the index "
                    "says %s; nothing was published (the repository needs repair)",
                    x->url, x->chunk, (unsigned long long)x->first, (unsigned long long)x->last,
                    got, want);
  }
  if (tb_pwrite_full(p->fd, x->buf, x->len, x->first) == -1)
    return tb_error_errno("cannot write %s", p->partial);
  p->bytes_done += x->len;
  p->r->chunks_downloaded++;
  return mark_chunk(p, x->chunk, CHUNK_VERIFIED);
}

static int download_chunks(struct pull *p)
{
  const struct tb_manifest *w = p->want;
  int parallel = p->o->parallel < 1              ? 1
                 : p->o->parallel > MAX_PARALLEL ? MAX_PARALLEL
                                                 : p->o->parallel;
  size_t next = 0, active = 0;
  p->bytes_todo = 0;
  for (size_t i = 0; i < w->n_chunks; i++)
    if (p->done[i] == CHUNK_TODO)
      p->bytes_todo += chunk_len(w, i);
  if (p->bytes_todo == 0)
    return 0;
  /* The rate limit is for the whole pull: split it between the transfers. */
  long speed = p->o->rate_limit ? (long)(p->o->rate_limit / (uint64_t)parallel) : 0;
  if (p->o->rate_limit && speed < 1)
    speed = 1;
  CURLM *multi = curl_multi_init();
  struct xfer *xs = calloc((size_t)parallel, sizeof *xs);
  int r = -1;
  if (!multi || !xs) {
    tb_error("cannot initialise libcurl");
    goto out;
  }
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
    if (hash_ahead(p, 20) == -1) {
      failed = true;
      break;
    }
    uint64_t inflight = 0;
    for (int s = 0; s < parallel; s++)
      if (xs[s].busy)
        inflight += xs[s].len;
    report(p, TB_REPO_DOWNLOAD, p->bytes_done + inflight, p->bytes_todo, false);
    if (running && curl_multi_poll(multi, NULL, 0, 500, NULL) != CURLM_OK) {
      tb_error("libcurl failed");
      failed = true;
      break;
    }
  }
  if (!failed) {
    report(p, TB_REPO_DOWNLOAD, p->bytes_todo, p->bytes_todo, true);
    r = 0;
  }
out:
  for (int s = 0; xs && s < parallel; s++) {
    if (xs[s].busy)
      curl_multi_remove_handle(multi, xs[s].curl);
    xfer_free(&xs[s]);
  }
  free(xs);
  if (multi)
    curl_multi_cleanup(multi);
  return r;
}

/* ---- the whole pull ---------------------------------------------------------------------- */

static int verify_whole(struct pull *p)
{
  const struct tb_manifest *w = p->want;
  uint8_t h[32];
  if (fsync(p->fd) == -1)
    return tb_error_errno("cannot sync %s", p->partial);
  if (hash_ahead(p, -1) == -1)
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
  report(p, TB_REPO_PUBLISH, 0, 1, true);
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
  report(p, TB_REPO_PUBLISH, 1, 1, true);
  return r;
}

/* Remove a pull's state directory (its files are known: nothing else is in it). */
static void remove_state_dir(const char *dir)
{
  static const char *files[] = {"partial.img", "chunks.done", "pull.json", "lock"};
  char path[TB_PATH_MAX];
  for (size_t i = 0; i < sizeof files / sizeof *files; i++)
    if (tb_path(path, sizeof path, "%s/%s", dir, files[i]) == 0)
      unlink(path);
  rmdir(dir);
}

static void remove_pull_dir(struct pull *p)
{
  remove_state_dir(p->dir);
}

/* Once version VER of IMAGE has been pulled from URL, an interrupted pull of
 * an older (or the same) version from the same repository will never be
 * resumed: remove it, unless a pull holds it, so abandoned partial images do
 * not pile up in STATE/pulls. */
static void prune_obsolete_pulls(const char *state, const char *image, const char *url,
                                 uint32_t ver)
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
    char *text = tb_read_file(meta, 1 << 20, &len);
    json_t *j = text ? json_loadb(text, len, 0, NULL) : NULL;
    free(text);
    const char *their_url = json_string_value(json_object_get(j, "url"));
    json_int_t their_ver = json_integer_value(json_object_get(j, "version"));
    bool obsolete =
        their_url && strcmp(their_url, url) == 0 && their_ver >= 1 && their_ver <= (json_int_t)ver;
    json_decref(j);
    int fd = obsolete ? open(lock, O_RDWR | O_CLOEXEC) : -1;
    if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0)
      remove_state_dir(sub);
    if (fd >= 0)
      close(fd);
  }
  if (d)
    closedir(d);
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
  if (pull_can_resume(p)) {
    if (pull_resume(p) == -1)
      return -1;
  } else if (pull_start(p) == -1)
    return -1;
  if (fill_local(p) == -1 || download_chunks(p) == -1)
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
  if (ix->n == 0) {
    tb_error("%s: the repository lists no versions of %s yet", url, image);
    return NULL;
  }
  if (want == 0)
    return ix->versions[ix->n - 1];
  for (size_t i = 0; i < ix->n; i++)
    if (ix->versions[i]->version == want)
      return ix->versions[i];
  tb_error("%s: the repository has no version %u of %s (newest: %u)", url, want, image,
           ix->versions[ix->n - 1]->version);
  return NULL;
}

/* The daemon may pull from several threads; libcurl is initialised once. */
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_status;

static void curl_init_once(void)
{
  curl_init_status = curl_global_init(CURL_GLOBAL_DEFAULT);
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
  struct pull p = {.state = state,
                   .image = image,
                   .o = o,
                   .r = r,
                   .progress = progress,
                   .ctx = ctx,
                   .lock_fd = -1,
                   .fd = -1,
                   .done_fd = -1};
  struct repo_index ix = {0};
  char url[2400] = "";
  char *text = NULL;
  int ret = -1;
  if (tb_store_init(state) == -1 || http_init(&p.http, o) == -1)
    goto out;
  report(&p, TB_REPO_INDEX, 0, 1, true);
  size_t len = 0;
  if (!(text = fetch_index(&p.http, image, &len, url, sizeof url)) ||
      parse_index(text, len, image, url, &ix) == -1)
    goto out;
  if (!(p.want = pick_version(&ix, o->version, image, url)))
    goto out;
  r->remote_version = p.want->version;
  r->size = p.want->size;
  r->chunks_total = p.want->n_chunks;
  if (find_base(state, image, p.want, &p.base) == -1)
    goto out;
  if (p.base.identical) {
    r->already_present = true;
    r->local_version = p.base.version;
    r->bytes_downloaded = p.http.bytes;
    ret = 0;
    goto out;
  }
  r->base_version = p.base.shared ? p.base.version : 0;
  char sha[65];
  tb_hex(p.want->sha256, 32, sha);
  tb_eventf(state, "image-pull-start", NULL, "{s:s, s:s, s:I, s:s, s:I}", "image", image, "url",
            o->url, "version", (json_int_t)p.want->version, "sha256", sha, "base",
            (json_int_t)r->base_version);
  ret = pull_version(&p);
  r->bytes_downloaded = p.http.bytes;
  if (ret == 0)
    tb_eventf(state, "image-pulled", NULL, "{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:b}", "image",
              image, "url", o->url, "remote_version", (json_int_t)p.want->version, "version",
              (json_int_t)r->local_version, "base", (json_int_t)r->base_version,
              "chunks_downloaded", (json_int_t)r->chunks_downloaded, "bytes_downloaded",
              (json_int_t)r->bytes_downloaded, "resumed", r->resumed);
out:
  if (ret == 0)
    prune_obsolete_pulls(state, image, o->url, p.want->version);
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
  if (p.fd >= 0)
    close(p.fd);
  if (p.done_fd >= 0)
    close(p.done_fd);
  if (p.lock_fd >= 0)
    close(p.lock_fd);
  free(p.done);
  EVP_MD_CTX_free(p.whole);
  free(p.hash_buf);
  tb_manifest_free(p.base.m);
  http_cleanup(&p.http);
  index_free(&ix);
  free(text);
  return ret;
}

/* ---- scheduled pulls ------------------------------------------------------------------ */

static const json_t *pull_source(const json_t *pull, size_t i)
{
  if (json_is_array(pull))
    return json_array_get(pull, i);
  return i == 0 && json_is_object(pull) ? pull : NULL;
}

size_t tb_repo_pull_sources(const json_t *pull)
{
  if (json_is_array(pull))
    return json_array_size(pull);
  return json_is_object(pull) ? 1 : 0;
}

const char *tb_repo_pull_source_when(const json_t *pull, size_t i)
{
  return json_string_value(json_object_get(pull_source(pull, i), "when"));
}

bool tb_repo_pull_source_make_current(const json_t *pull, size_t i)
{
  return json_is_true(json_object_get(pull_source(pull, i), "make_current"));
}

/* Options of one source (not the first matching one: each source runs its own). */
static int source_opts(const json_t *src, struct tb_repo_pull_opts *o)
{
  tb_repo_pull_opts_init(o);
  return tb_repo_pull_opts_from_config(src, NULL, o);
}

int tb_repo_pull_source_run(const struct tb_config *cfg, size_t i, tb_repo_progress_fn progress,
                            void *ctx)
{
  const json_t *src = pull_source(cfg->pull, i);
  char path[64];
  snprintf(path, sizeof path, json_is_array(cfg->pull) ? "pull[%zu]" : "pull", i);
  if (!src)
    return tb_error("%s: no such pull source", path);
  struct tb_repo_pull_opts o;
  if (source_opts(src, &o) == -1)
    return -1;
  if (!o.url)
    return tb_error("%s.from: missing (the repository URL)", path);
  const json_t *images = json_object_get(src, "images");
  size_t n = images ? json_array_size(images) : cfg->n_images;
  int failed = 0;
  for (size_t k = 0; k < n; k++) {
    const char *image = images ? json_string_value(json_array_get(images, k)) : cfg->images[k];
    struct tb_repo_pull_result r;
    if (tb_repo_pull(cfg->state_dir, image, &o, progress, ctx, &r) == -1)
      failed++; /* tb_repo_pull recorded an image-pull-failed event */
  }
  return failed;
}
