/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: strict reading of JSON documents -- see json.h. */
#include <config.h>

#include "json.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

void tb_json_subpath(char *out, size_t len, const char *path, const char *key)
{
  if (path && path[0])
    snprintf(out, len, "%s.%s", path, key);
  else
    snprintf(out, len, "%s", key);
}

int tb_json_check_keys(const json_t *obj, const char *path, const char *const *allowed)
{
  const char *key;
  json_t *v;
  json_object_foreach((json_t *)obj, key, v)
  {
    bool ok = false;
    for (const char *const *a = allowed; *a && !ok; a++)
      ok = strcmp(*a, key) == 0;
    if (ok)
      continue;
    /* A guest or a peer may send the key: print it escaped and bounded. */
    char *shown = tb_guest_name(key), p[512], list[512] = "";
    tb_json_subpath(p, sizeof p, path, shown ? shown : "?");
    free(shown);
    for (const char *const *a = allowed; *a; a++) {
      strncat(list, *a, sizeof list - strlen(list) - 1);
      if (a[1])
        strncat(list, ", ", sizeof list - strlen(list) - 1);
    }
    return tb_error("%s: unknown key (allowed here: %s)", p, list);
  }
  return 0;
}
