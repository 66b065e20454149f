/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: a version's manifest (see manifest.h).
 *
 * One reader (from_json) serves both documents a manifest lives in; the only
 * difference is where the image name comes from: the store's N.json carries
 * it, an index entry gets it from its index.  Every bound is checked before
 * any field is used, so a hostile index or a damaged N.json is an error that
 * names the field, never a huge allocation or a wrong size.
 */
#include <config.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "json.h"
#include "manifest.h"

void tb_manifest_free(struct tb_manifest *m)
{
  if (!m)
    return;
  free(m->chunks);
  free(m->note);
  free(m);
}

struct tb_manifest *tb_manifest_copy(const struct tb_manifest *m)
{
  struct tb_manifest *c = calloc(1, sizeof *c);
  if (!c) {
    tb_error("out of memory");
    return NULL;
  }
  *c = *m;
  c->note = NULL;
  c->chunks = malloc((m->n_chunks + 1) * 32);
  if (!c->chunks || (m->note && !(c->note = strdup(m->note)))) {
    tb_manifest_free(c);
    tb_error("out of memory");
    return NULL;
  }
  memcpy(c->chunks, m->chunks, m->n_chunks * 32);
  return c;
}

/* The first thing wrong with OBJ's fields, or NULL; fills M as it goes. */
static const char *check_fields(const json_t *obj, struct tb_manifest *m)
{
  json_t *ver = json_object_get(obj, "version"), *size = json_object_get(obj, "size");
  json_t *sha = json_object_get(obj, "sha256"), *cs = json_object_get(obj, "chunk_size");
  json_t *chunks = json_object_get(obj, "chunks"), *parent = json_object_get(obj, "parent");
  json_t *note = json_object_get(obj, "note"), *created = json_object_get(obj, "created");

  if (!json_is_integer(ver) || json_integer_value(ver) < 1 || json_integer_value(ver) > UINT32_MAX)
    return "\"version\" is missing or not a positive integer";
  if (!json_is_integer(size) || json_integer_value(size) < 1 ||
      (uint64_t)json_integer_value(size) > TB_MANIFEST_MAX_SIZE)
    return "\"size\" is missing or not a size from 1 byte to 1 PiB";
  if (!json_is_string(sha) || tb_unhex(json_string_value(sha), m->sha256, 32) == -1)
    return "\"sha256\" is missing or not 64 hex digits";
  if (!json_is_integer(cs) || json_integer_value(cs) < 4096 || json_integer_value(cs) > (1 << 30) ||
      !tb_is_pow2((uint64_t)json_integer_value(cs)))
    return "\"chunk_size\" is missing or not a power of two from 4096 to 1 GiB";
  if (!json_is_array(chunks))
    return "\"chunks\" is missing or not an array";
  if (parent && !json_is_null(parent) &&
      (!json_is_integer(parent) || json_integer_value(parent) < 0 ||
       json_integer_value(parent) > UINT32_MAX))
    return "\"parent\" is not a version number or null";
  if (note && !json_is_null(note) && !json_is_string(note))
    return "\"note\" is not a string or null";
  if (created && (!json_is_string(created) || strlen(json_string_value(created)) > 31))
    return "\"created\" is not a timestamp";

  m->version = (uint32_t)json_integer_value(ver);
  m->size = (uint64_t)json_integer_value(size);
  m->chunk_size = (uint32_t)json_integer_value(cs);
  m->parent = json_is_integer(parent) ? (uint32_t)json_integer_value(parent) : 0;
  if (json_is_string(note) && !(m->note = strdup(json_string_value(note))))
    return "out of memory";
  if (json_is_string(created))
    snprintf(m->created, sizeof m->created, "%s", json_string_value(created));
  uint64_t want = (m->size + m->chunk_size - 1) / m->chunk_size;
  m->n_chunks = json_array_size(chunks);
  if (m->n_chunks != want)
    return "\"chunks\" does not have one hash per chunk of \"size\"";
  if (!(m->chunks = calloc(m->n_chunks + 1, 32)))
    return "out of memory";
  for (size_t i = 0; i < m->n_chunks; i++) {
    json_t *c = json_array_get(chunks, i);
    if (!json_is_string(c) || tb_unhex(json_string_value(c), m->chunks[i], 32) == -1)
      return "a chunk hash is not 64 hex digits";
  }
  return NULL;
}

/* IMAGE NULL: the store's document, which names its image; else an index
 * entry of IMAGE. */
static struct tb_manifest *from_json(const json_t *obj, const char *image, const char *what)
{
  static const char *const doc_keys[] = {"image",  "version", "size", "sha256",  "chunk_size",
                                         "chunks", "parent",  "note", "created", NULL};
  static const char *const entry_keys[] = {"version", "file",   "size", "sha256",  "chunk_size",
                                           "chunks",  "parent", "note", "created", NULL};
  if (!json_is_object(obj)) {
    tb_error("%s: expected an object", what);
    return NULL;
  }
  if (tb_json_check_keys(obj, what, image ? entry_keys : doc_keys) == -1)
    return NULL;
  struct tb_manifest *m = calloc(1, sizeof *m);
  const char *err = m ? NULL : "out of memory";
  if (!err && !image) {
    json_t *name = json_object_get(obj, "image");
    if (!json_is_string(name) || !tb_name_valid(json_string_value(name)))
      err = "\"image\" is missing or not a valid name";
    else
      image = json_string_value(name);
  }
  if (!err) {
    snprintf(m->image, sizeof m->image, "%s", image);
    err = check_fields(obj, m);
  }
  json_t *file = json_object_get(obj, "file");
  if (!err && file) {
    char want_file[32];
    snprintf(want_file, sizeof want_file, "%u.img", m->version);
    if (!json_is_string(file) || strcmp(json_string_value(file), want_file) != 0)
      err = "\"file\" is not \"VERSION.img\"";
  }
  if (err) {
    tb_error("%s: %s", what, err);
    tb_manifest_free(m);
    return NULL;
  }
  return m;
}

struct tb_manifest *tb_manifest_parse(const char *text, size_t len, const char *what)
{
  json_error_t jerr;
  json_t *root = json_loadb(text, len, 0, &jerr);
  if (!root) {
    tb_error("%s: not valid JSON (line %d: %s)", what, jerr.line, jerr.text);
    return NULL;
  }
  struct tb_manifest *m = from_json(root, NULL, what);
  json_decref(root);
  if (m)
    EVP_Digest(text, len, m->manifest_sha256, NULL, EVP_sha256(), NULL);
  return m;
}

struct tb_manifest *tb_manifest_from_index_entry(const json_t *entry, const char *image,
                                                 const char *what)
{
  return from_json(entry, image, what);
}

/* The fields both documents share, in the order they are written. */
static json_t *to_json(const struct tb_manifest *m)
{
  char hex[65];
  json_t *chunks = json_array();
  for (size_t i = 0; chunks && i < m->n_chunks; i++) {
    tb_hex(m->chunks[i], 32, hex);
    json_array_append_new(chunks, json_string(hex));
  }
  tb_hex(m->sha256, 32, hex);
  return json_pack(
      "{s:I, s:I, s:s, s:I, s:o, s:o, s:s, s:o*}", "version", (json_int_t)m->version, "size",
      (json_int_t)m->size, "sha256", hex, "chunk_size", (json_int_t)m->chunk_size, "parent",
      m->parent ? json_integer(m->parent) : json_null(), "note",
      m->note ? json_string(m->note) : json_null(), "created", m->created, "chunks", chunks);
}

char *tb_manifest_dump(const struct tb_manifest *m)
{
  json_t *doc = json_pack("{s:s}", "image", m->image), *fields = to_json(m);
  char *text = NULL;
  if (doc && fields && json_object_update(doc, fields) == 0)
    text = json_dumps(doc, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
  json_decref(doc);
  json_decref(fields);
  if (!text)
    tb_error("cannot encode the manifest of %s@%u", m->image, m->version);
  return text;
}

json_t *tb_manifest_to_index_entry(const struct tb_manifest *m)
{
  char file[32];
  snprintf(file, sizeof file, "%u.img", m->version);
  json_t *e = json_pack("{s:I, s:s}", "version", (json_int_t)m->version, "file", file);
  json_t *fields = to_json(m);
  if (!e || !fields || json_object_update(e, fields) == -1) {
    json_decref(e);
    e = NULL;
  }
  json_decref(fields);
  return e;
}
