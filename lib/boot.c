/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: boot markers (see boot.h).
 *
 * clients/ID/boot is {"seq": N, "at": ms, "via": "...", "detail": "..."},
 * rewritten atomically.  Writers are the daemon (one thread handles the
 * control socket) and admins through it, so a read-increment-write without a
 * lock cannot lose a marker that matters: two markers racing both say "a new
 * boot happened", and either number is newer than the running session's.
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "clientdir.h"
#include "boot.h"
#include "store.h"

bool tb_boot_token_valid(const char *token)
{
  size_t n = strlen(token);
  if (n == 0 || n > 64)
    return false;
  for (size_t i = 0; i < n; i++) {
    char ch = token[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
          ch == '-'))
      return false;
  }
  return true;
}

static void printable_copy(char *out, size_t cap, const char *in)
{
  size_t i;
  for (i = 0; in && in[i] && i + 1 < cap; i++)
    out[i] = in[i] >= 0x20 && in[i] < 0x7f ? in[i] : '?';
  out[i] = '\0';
}

int tb_boot_marker_read(const char *state, const char *id, struct tb_boot_marker *m)
{
  char path[TB_PATH_MAX];
  memset(m, 0, sizeof *m);
  if (tb_clientdir_path(state, id, TB_CF_BOOT, path, sizeof path) == -1)
    return -1;
  size_t len;
  char *text = tb_read_file(path, 4096, &len);
  if (!text)
    return errno == ENOENT ? 0 : tb_error_errno("cannot read %s", path);
  json_error_t jerr;
  json_t *root = json_loadb(text, len, 0, &jerr);
  free(text);
  json_t *seq = json_object_get(root, "seq"), *at = json_object_get(root, "at");
  if (!json_is_object(root) || !json_is_integer(seq) || json_integer_value(seq) < 1 ||
      !json_is_integer(at)) {
    json_decref(root);
    return tb_error("%s: not a boot marker (expected {\"seq\": N, \"at\": MS, ...}); remove it "
                    "and the client's next connection is treated as a new boot",
                    path);
  }
  m->seq = (uint64_t)json_integer_value(seq);
  m->at_ms = json_integer_value(at);
  printable_copy(m->via, sizeof m->via, json_string_value(json_object_get(root, "via")));
  printable_copy(m->detail, sizeof m->detail, json_string_value(json_object_get(root, "detail")));
  json_decref(root);
  return 0;
}

int tb_boot_mark(const char *state, const char *id, const char *via, const char *detail)
{
  struct tb_boot_marker old;
  char path[TB_PATH_MAX], dir[TB_PATH_MAX];
  if (tb_clientdir_path(state, id, TB_CF_DIR, dir, sizeof dir) == -1 ||
      tb_mkdirs(dir, true) == -1 ||
      tb_clientdir_path(state, id, TB_CF_BOOT, path, sizeof path) == -1)
    return -1;
  if (tb_boot_marker_read(state, id, &old) == -1)
    old.seq = 0; /* a damaged marker is replaced: any new number says "new boot" */
  struct tb_boot_marker m = {.seq = old.seq + 1, .at_ms = tb_now_ms()};
  printable_copy(m.via, sizeof m.via, via);
  printable_copy(m.detail, sizeof m.detail, detail);
  json_t *o = json_pack("{s:I, s:I, s:s, s:s}", "seq", (json_int_t)m.seq, "at", (json_int_t)m.at_ms,
                        "via", m.via, "detail", m.detail);
  char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
  json_decref(o);
  if (!text)
    return tb_error("cannot encode the boot marker of client %s", id);
  int r = tb_write_file_atomic(path, text, strlen(text), 0600);
  free(text);
  return r;
}
