/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: a repository's index document, DIR/NAME/index.json (layout in
 * repo.h).  The index is an ordinary JSON document listing each version's
 * manifest fields (lib/manifest.c reads and writes each entry); nothing else
 * is needed to serve it.  Parsing is strict: the format number, the image
 * name, every entry, no version twice; the result is sorted by version.  It
 * is the only thing a pull trusts, and only as far as hashes let it check.
 */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "json.h"
#include "manifest.h"
#include "repo-internal.h"

void repo_index_free(struct repo_index *ix)
{
  for (size_t i = 0; i < ix->versions.len; i++)
    tb_manifest_free(ix->versions.ptr[i]);
  tb_vector_free(&ix->versions);
}

int repo_cmp_manifest_version(const void *a, const void *b)
{
  const struct tb_manifest *x = *(struct tb_manifest *const *)a;
  const struct tb_manifest *y = *(struct tb_manifest *const *)b;
  return x->version < y->version ? -1 : x->version > y->version;
}

/* Parse and validate an index for IMAGE; WHAT (a URL or path) prefixes errors. */
int repo_parse_index(const char *text, size_t len, const char *image, const char *what,
                     struct repo_index *ix)
{
  json_error_t jerr;
  *ix = (struct repo_index){0};
  CLEANUP_JSON json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
  if (!root)
    return tb_error("%s: not a valid index: not JSON (line %d column %d: %s)", what, jerr.line,
                    jerr.column, jerr.text);
  json_t *fmt = json_object_get(root, "format"), *name = json_object_get(root, "image");
  json_t *vers = json_object_get(root, "versions");
  if (!json_is_object(root))
    return tb_error("%s: not a valid index: expected a JSON object", what);
  if (!json_is_integer(fmt) || json_integer_value(fmt) != INDEX_FORMAT)
    return tb_error("%s: not a valid index: \"format\" must be %d (a newer tabula may have "
                    "written it)",
                    what, INDEX_FORMAT);
  if (!json_is_string(name) || strcmp(json_string_value(name), image) != 0)
    return tb_error("%s: not a valid index: \"image\" is not \"%s\"", what, image);
  if (!json_is_array(vers))
    return tb_error("%s: not a valid index: \"versions\" is missing or not an array", what);
  CLEANUP_INDEX struct repo_index got = {0};
  size_t n = json_array_size(vers);
  if (tb_vector_reserve(&got.versions, n + 1) == -1)
    return tb_error_errno("%s", what);
  for (size_t i = 0; i < n; i++) {
    char ewhat[TB_PATH_MAX + 32];
    snprintf(ewhat, sizeof ewhat, "%s: versions[%zu]", what, i);
    struct tb_manifest *m = tb_manifest_from_index_entry(json_array_get(vers, i), image, ewhat);
    if (!m)
      return -1;
    got.versions.ptr[got.versions.len++] = m; /* reserved above */
  }
  struct tb_manifest **v = got.versions.ptr;
  qsort(v, got.versions.len, sizeof *v, repo_cmp_manifest_version);
  for (size_t i = 1; i < got.versions.len; i++)
    if (v[i]->version == v[i - 1]->version)
      return tb_error("%s: not a valid index: version %u is listed twice", what, v[i]->version);
  *ix = got;
  got = (struct repo_index){0};
  return 0;
}

char *repo_dump_index(const char *image, const struct repo_index *ix)
{
  json_t *vers = json_array();
  for (size_t i = 0; vers && i < ix->versions.len; i++)
    json_array_append_new(vers, tb_manifest_to_index_entry(ix->versions.ptr[i]));
  CLEANUP_JSON json_t *root =
      json_pack("{s:i, s:s, s:o}", "format", INDEX_FORMAT, "image", image, "versions", vers);
  if (!root) {
    tb_error("cannot encode the index of %s", image);
    return NULL;
  }
  char *text = json_dumps(root, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
  if (!text)
    tb_error("cannot encode the index of %s", image);
  return text;
}
