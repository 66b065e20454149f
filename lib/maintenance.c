/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: the maintenance PC of an image (see maintenance.h).
 *
 * One small JSON file per maintenance PC, {"image", "from_version",
 * "since"}, replaced atomically; a file that does not parse is an error that
 * names it (a session start then fails rather than silently serving the PC
 * its ordinary disk, which would throw its maintenance work away at the
 * next rollback).
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "clientdir.h"
#include "maintenance.h"
#include "store.h"

static int path_of(const char *state, const char *id, char path[TB_PATH_MAX])
{
  return tb_clientdir_path(state, id, TB_CF_MAINTENANCE, path, TB_PATH_MAX);
}

int tb_maintenance_read(const char *state, const char *id, struct tb_maintenance *m)
{
  char path[TB_PATH_MAX];
  if (path_of(state, id, path) == -1)
    return -1;
  size_t len;
  char *text = tb_read_file(path, 65536, &len);
  if (!text)
    return errno == ENOENT ? 0 : tb_error_errno("%s", path);
  json_error_t jerr;
  json_t *root = json_loadb(text, len, 0, &jerr);
  free(text);
  const char *image = json_string_value(json_object_get(root, "image"));
  json_t *from = json_object_get(root, "from_version");
  if (!image || !tb_name_valid(image) || !json_is_integer(from)) {
    json_decref(root);
    return tb_error("%s: not a maintenance record (expected {\"image\", \"from_version\", "
                    "\"since\"}); end the maintenance with: tabulactl maintenance abort %s",
                    path, id);
  }
  if (m) {
    snprintf(m->image, sizeof m->image, "%s", image);
    m->from_version = (uint32_t)json_integer_value(from);
    m->since_ms = json_integer_value(json_object_get(root, "since"));
  }
  json_decref(root);
  return 1;
}

int tb_maintenance_write(const char *state, const char *id, const struct tb_maintenance *m)
{
  char path[TB_PATH_MAX], dir[TB_PATH_MAX];
  if (path_of(state, id, path) == -1 ||
      tb_clientdir_path(state, id, TB_CF_DIR, dir, sizeof dir) == -1 || tb_mkdirs(dir, true) == -1)
    return -1;
  json_t *root = json_pack("{s:s, s:I, s:I}", "image", m->image, "from_version",
                           (json_int_t)m->from_version, "since", (json_int_t)m->since_ms);
  char *text = root ? json_dumps(root, JSON_COMPACT) : NULL;
  json_decref(root);
  if (!text)
    return tb_error("%s: out of memory", path);
  int r = tb_write_file_atomic(path, text, strlen(text), 0600);
  free(text);
  return r;
}

int tb_maintenance_clear(const char *state, const char *id)
{
  char path[TB_PATH_MAX];
  if (path_of(state, id, path) == -1)
    return -1;
  if (unlink(path) == -1 && errno != ENOENT)
    return tb_error_errno("cannot remove %s", path);
  return tb_fsync_dir(path);
}
