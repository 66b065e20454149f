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

static const char *type_name(const json_t *v)
{
  switch (json_typeof(v)) {
  case JSON_OBJECT:
    return "an object";
  case JSON_ARRAY:
    return "an array";
  case JSON_STRING:
    return "a string";
  case JSON_INTEGER:
    return "an integer";
  case JSON_REAL:
    return "a number";
  case JSON_TRUE:
  case JSON_FALSE:
    return "a boolean";
  case JSON_NULL:
    return "null";
  }
  return "something else";
}

int tb_json_bad(const char *path, const char *expected, const json_t *got)
{
  if (!got) /* a required key is missing */
    return tb_error("%s: expected %s", path, expected);
  if (json_is_string(got))
    return tb_error("%s: expected %s, got \"%s\"", path, expected, json_string_value(got));
  if (json_is_integer(got))
    return tb_error("%s: expected %s, got %lld", path, expected,
                    (long long)json_integer_value(got));
  return tb_error("%s: expected %s, got %s", path, expected, type_name(got));
}

int tb_json_bad_at(const char *path, const char *key, const char *expected, const json_t *got)
{
  if (!key)
    return tb_json_bad(path, expected, got);
  char p[512];
  tb_json_subpath(p, sizeof p, path, key);
  return tb_json_bad(p, expected, got);
}

int tb_json_get_int(const json_t *obj, const char *path, const char *key, long long lo,
                    long long hi, long long *out)
{
  json_t *v = json_object_get(obj, key);
  if (!v)
    return 0;
  if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
    char what[128];
    snprintf(what, sizeof what, "an integer from %lld to %lld", lo, hi);
    return tb_json_bad_at(path, key, what, v);
  }
  *out = json_integer_value(v);
  return 0;
}

int tb_json_get_size(const json_t *obj, const char *path, const char *key, uint64_t *out)
{
  json_t *v = json_object_get(obj, key);
  if (!v)
    return 0;
  if (json_is_integer(v) && json_integer_value(v) >= 0) {
    *out = (uint64_t)json_integer_value(v);
    return 0;
  }
  if (json_is_string(v) && tb_parse_size(json_string_value(v), out) == 0)
    return 0;
  return tb_json_bad_at(path, key, "a size in bytes or a string such as \"64M\" or \"10G\"", v);
}

int tb_json_get_duration(const json_t *obj, const char *path, const char *key, int64_t *out)
{
  json_t *v = json_object_get(obj, key);
  if (!v)
    return 0;
  if (json_is_string(v) && tb_parse_duration(json_string_value(v), out) == 0)
    return 0;
  return tb_json_bad_at(path, key, "a duration such as \"90s\", \"15m\", \"2h\" or \"1d\"", v);
}
