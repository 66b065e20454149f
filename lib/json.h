/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: strict reading of JSON documents (Jansson).
 *
 * Every JSON document tabula reads from a user or a peer (the configuration,
 * manifests, repository indexes, control requests, watchdog rules) is read
 * strictly: a key the reader does not know is an error, never ignored, so a
 * typo ("polcy") is reported instead of silently meaning the default.  This
 * file owns that rule and its one message style:
 *
 *   PATH.KEY: unknown key (allowed here: a, b, c)
 *
 * PATH is the dotted place of the object in its document ("clients.pc01",
 * "pull.s3"); an empty PATH means the document's top level.  A value of the
 * wrong type or range has one message style too, which the typed getters
 * below share (conf.c, watchdog-conf.c):
 *
 *   PATH.KEY: expected WHAT, got "text" / got 42 / got an object
 */
#ifndef TB_JSON_H
#define TB_JSON_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* Fail (-1, tb_error) on the first key of OBJ that is not in ALLOWED
 * (NULL-terminated).  OBJ must be an object. */
int tb_json_check_keys(const json_t *obj, const char *path, const char *const *allowed);

/* PATH.KEY (or KEY when PATH is empty) into OUT, truncated to LEN. */
void tb_json_subpath(char *out, size_t len, const char *path, const char *key);

/* Fail (-1, tb_error): "PATH: expected EXPECTED, got GOT", GOT shown as its
 * string or integer, else its type (GOT NULL, a missing value: no "got"). */
int tb_json_bad(const char *path, const char *expected, const json_t *got);
/* The same at PATH.KEY (at PATH when KEY is NULL). */
int tb_json_bad_at(const char *path, const char *key, const char *expected, const json_t *got);

/* Typed getters of an optional KEY of OBJ: missing, *OUT is left alone and
 * the answer 0; a value of another type or out of range fails as
 * tb_json_bad_at(PATH, KEY) does. */
/* An integer from LO to HI. */
int tb_json_get_int(const json_t *obj, const char *path, const char *key, long long lo,
                    long long hi, long long *out);
/* A size: an integer number of bytes or a string such as "10G" (tb_parse_size). */
int tb_json_get_size(const json_t *obj, const char *path, const char *key, uint64_t *out);
/* A duration string such as "90s" (tb_parse_duration), in milliseconds. */
int tb_json_get_duration(const json_t *obj, const char *path, const char *key, int64_t *out);

/* Scoped release of a reference (cleanup.h). */
static inline void tb_cleanup_json(json_t **j)
{
  json_decref(*j);
}
#define CLEANUP_JSON __attribute__((cleanup(tb_cleanup_json)))

#endif
