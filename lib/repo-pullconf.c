/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: pull options and the config's "pull" section (repo.h).
 *
 * The section is one source object or an array of them, checked strictly
 * (tb_json_check_keys; every error starts with its JSON path).  A pull's
 * options are the defaults overlaid with the source serving the image.  The
 * scheduled pulls of the daemon run one source at a time: each of its images
 * in turn, a failure recorded as an event by tb_repo_pull.
 */
#include <config.h>

#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "conf.h"
#include "json.h"
#include "repo-internal.h"
#include "schedule.h"

void tb_repo_pull_opts_init(struct tb_repo_pull_opts *o)
{
  memset(o, 0, sizeof *o);
  o->parallel = TB_REPO_DEFAULT_PARALLEL;
  o->connect_timeout_ms = TB_REPO_DEFAULT_CONNECT_TIMEOUT_MS;
  o->stall_timeout_ms = TB_REPO_DEFAULT_STALL_TIMEOUT_MS;
  o->max_redirects = TB_REPO_DEFAULT_MAX_REDIRECTS;
  o->max_index_size = TB_REPO_DEFAULT_MAX_INDEX;
}

bool repo_url_scheme_ok(const char *url)
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
      if (!json_is_string(v) || !repo_url_scheme_ok(json_string_value(v)))
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
