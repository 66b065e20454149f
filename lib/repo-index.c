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

#include "manifest.h"
#include "repo-internal.h"

void repo_index_free(struct repo_index *ix)
{
  for (size_t i = 0; i < ix->n; i++)
    tb_manifest_free(ix->versions[i]);
  free(ix->versions);
  ix->versions = NULL;
  ix->n = 0;
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
  qsort(ix->versions, ix->n, sizeof *ix->versions, repo_cmp_manifest_version);
  for (size_t i = 1; i < ix->n; i++)
    if (ix->versions[i]->version == ix->versions[i - 1]->version) {
      tb_error("%s: not a valid index: version %u is listed twice", what, ix->versions[i]->version);
      goto out;
    }
  r = 0;
out:
  json_decref(root);
  if (r == -1)
    repo_index_free(ix);
  return r;
}

char *repo_dump_index(const char *image, const struct repo_index *ix)
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
