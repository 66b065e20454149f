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
 * "pull.s3"); an empty PATH means the document's top level.
 */
#ifndef TB_JSON_H
#define TB_JSON_H

#include <jansson.h>
#include <stddef.h>

/* Fail (-1, tb_error) on the first key of OBJ that is not in ALLOWED
 * (NULL-terminated).  OBJ must be an object. */
int tb_json_check_keys(const json_t *obj, const char *path, const char *const *allowed);

/* PATH.KEY (or KEY when PATH is empty) into OUT, truncated to LEN. */
void tb_json_subpath(char *out, size_t len, const char *path, const char *key);

/* Scoped release of a reference (cleanup.h). */
static inline void tb_cleanup_json(json_t **j)
{
  json_decref(*j);
}
#define CLEANUP_JSON __attribute__((cleanup(tb_cleanup_json)))

#endif
