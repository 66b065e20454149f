/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: whether a client can be served a version (see clientcheck.h):
 * the version's manifest reads, and the client's preserved ranges and
 * protected regions resolve on it.
 */
#include <config.h>

#include <inttypes.h>
#include <stdio.h>

#include "clientcheck.h"
#include "guards.h"
#include "session.h"
#include "store.h"

/* Where client (or disk) C is in the configuration file, for a message. */
#define CPATH(c) tb_client_conf_path((c), (char[TB_NAME_MAX * 2 + 32]){0}, TB_NAME_MAX * 2 + 32)

int tb_client_check_image(const struct tb_config *cfg, const struct tb_client_conf *c,
                          const char *path, uint64_t size, const char *what)
{
  for (size_t i = 0; i < c->n_preserve; i++) {
    uint64_t off[2], len[2];
    int n;
    if (tb_region_resolve(&c->preserve[i], path, size, off, len, &n) == -1)
      return tb_error_prefix("%s.preserve[%zu] on %s", CPATH(c), i, what);
  }
  struct tb_watchdog_conf w;
  if (tb_watchdog_for(cfg->watchdog, c->watchdog, &w) == -1)
    return tb_error_prefix("%s.watchdog", CPATH(c));
  struct tb_guards gs;
  int r = tb_guards_resolve(&w, path, size, &gs);
  tb_watchdog_free(&w);
  tb_guards_free(&gs);
  if (r == -1)
    return tb_error_prefix("%s: %s", CPATH(c), what);
  return 0;
}

/* The size of IMAGE@VERSION from its manifest, through MEMO ("IMAGE@N" ->
 * size or error text; NULL: no memo), so a pass over 500 clients of one
 * image reads its manifest once. */
static int version_size(const char *state, const char *image, uint32_t version, json_t *memo,
                        uint64_t *size)
{
  char key[TB_NAME_MAX + 16];
  snprintf(key, sizeof key, "%s@%" PRIu32, image, version);
  json_t *seen = memo ? json_object_get(memo, key) : NULL;
  if (json_is_string(seen))
    return tb_error("%s", json_string_value(seen));
  if (json_is_integer(seen)) {
    *size = (uint64_t)json_integer_value(seen);
    return 0;
  }
  struct tb_manifest *m = tb_manifest_load(state, image, version);
  if (!m) {
    if (memo)
      json_object_set_new(memo, key, json_string(tb_errmsg()));
    return -1;
  }
  *size = m->size;
  tb_manifest_free(m);
  if (memo)
    json_object_set_new(memo, key, json_integer((json_int_t)*size));
  return 0;
}

static int check_version(const struct tb_config *cfg, const struct tb_client_conf *c,
                         const char *image, uint32_t version, json_t *memo)
{
  const char *state = cfg->state_dir;
  uint64_t size = 0; /* set by version_size (GCC -O2 cannot see it) */
  if (version_size(state, image, version, memo, &size) == -1)
    return tb_error_prefix("%s: %s@%" PRIu32, CPATH(c), image, version);
  char path[TB_PATH_MAX], what[TB_NAME_MAX + 16];
  if (tb_store_version_path(state, image, version, path, sizeof path) == -1)
    return tb_error_prefix("%s", CPATH(c));
  snprintf(what, sizeof what, "%s@%" PRIu32, image, version);
  return tb_client_check_image(cfg, c, path, size, what);
}

int tb_client_check_version(const struct tb_config *cfg, const struct tb_client_conf *c,
                            const char *image, uint32_t version)
{
  return check_version(cfg, c, image, version, NULL);
}

int tb_client_check_memo(const struct tb_config *cfg, const struct tb_client_conf *c, json_t *memo)
{
  char image[TB_NAME_MAX + 1];
  uint32_t v;
  if (tb_client_target(cfg->state_dir, c, image, &v) == -1)
    return tb_error_prefix("%s.image", CPATH(c));
  return check_version(cfg, c, image, v, memo);
}

int tb_client_check(const struct tb_config *cfg, const struct tb_client_conf *c)
{
  return tb_client_check_memo(cfg, c, NULL);
}
