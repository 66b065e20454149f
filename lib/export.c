/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: export names (see export.h).
 *
 * One pass over a bounded string: the name before '@' is copied only once
 * its length is known to fit, the suffix is matched literally, and numbers
 * are checked digit by digit before strtoull, so no input reads past its
 * NUL or yields a number the caller did not ask for.
 */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "boot.h"
#include "export.h"

/* N: [1-9][0-9]{0,18}, the whole string. */
static int parse_number(const char *s, uint64_t *out)
{
  size_t len = strlen(s);
  if (len == 0 || len > 19 || s[0] < '1' || s[0] > '9')
    return -1;
  for (size_t i = 1; i < len; i++)
    if (s[i] < '0' || s[i] > '9')
      return -1;
  *out = strtoull(s, NULL, 10); /* 19 digits always fit in 64 bits */
  return 0;
}

int tb_export_parse(const char *export, struct tb_export *out)
{
  memset(out, 0, sizeof *out);
  const char *at = strchr(export, '@');
  size_t len = at ? (size_t)(at - export) : strlen(export);
  if (len == 0 || len > TB_NAME_MAX)
    return -1;
  memcpy(out->name, export, len);
  out->name[len] = '\0';
  if (!tb_client_id_valid(out->name))
    return -1;
  if (!at) {
    out->kind = TB_EXPORT_CLIENT;
    return 0;
  }
  const char *rest = at + 1;
  if (strncmp(rest, "boot/", 5) == 0) {
    if (!tb_boot_token_valid(rest + 5) || strlen(rest + 5) >= sizeof out->token)
      return -1;
    snprintf(out->token, sizeof out->token, "%s", rest + 5);
    out->kind = TB_EXPORT_CLIENT;
    return 0;
  }
  if (strcmp(rest, "live") == 0) {
    out->kind = TB_EXPORT_LIVE;
    return 0;
  }
  if (strcmp(rest, "overlay") == 0) {
    out->kind = TB_EXPORT_OVERLAY;
    return 0;
  }
  if (strncmp(rest, "session/", 8) == 0) {
    out->kind = TB_EXPORT_SESSION;
    return parse_number(rest + 8, &out->num);
  }
  out->kind = TB_EXPORT_IMAGE;
  if (strchr(out->name, '/')) /* images have no disks */
    return -1;
  return parse_number(rest, &out->num);
}

bool tb_export_is_admin(enum tb_export_kind kind)
{
  return kind != TB_EXPORT_CLIENT;
}
