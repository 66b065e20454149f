/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: the iSCSI configuration sections (see iscsi-conf.h). */
#include <config.h>

#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "iscsi-conf.h"
#include "json.h"
#include "util.h"

bool tb_iscsi_name_valid(const char *s)
{
  size_t n = strlen(s);
  if (n < 5 || n > TB_ISCSI_NAME_MAX)
    return false;
  if (strncasecmp(s, "iqn.", 4) != 0 && strncasecmp(s, "eui.", 4) != 0 &&
      strncasecmp(s, "naa.", 4) != 0)
    return false;
  for (const char *p = s; *p; p++)
    if (!isalnum((unsigned char)*p) && *p != '.' && *p != ':' && *p != '-')
      return false;
  return true;
}

static int get_str(const json_t *v, const char *path, const char *key, char *out, size_t max,
                   size_t *len)
{
  json_t *e = json_object_get(v, key);
  if (!e)
    return 0;
  if (!json_is_string(e) || json_string_length(e) == 0 || json_string_length(e) >= max)
    return tb_error("%s.%s: expected a non-empty string of at most %zu bytes", path, key, max - 1);
  memcpy(out, json_string_value(e), json_string_length(e) + 1);
  if (len)
    *len = json_string_length(e);
  return 1;
}

static int parse_chap(const json_t *v, const char *path, struct tb_iscsi_chap *c)
{
  static const char *const keys[] = {"user", "secret", NULL};
  if (!json_is_object(v))
    return tb_error("%s: expected an object such as {\"user\": \"pc07\", \"secret\": "
                    "\"12 to 16 chars\"}",
                    path);
  if (tb_json_check_keys(v, path, keys) == -1)
    return -1;
  int u = get_str(v, path, "user", c->user, sizeof c->user, NULL);
  int s = get_str(v, path, "secret", c->secret, sizeof c->secret, &c->secret_len);
  if (u == -1 || s == -1)
    return -1;
  if (!u || !s)
    return tb_error("%s: needs \"user\" and \"secret\" (Windows' initiator wants a secret of "
                    "12 to 16 characters)",
                    path);
  c->set = true;
  return 0;
}

int tb_iscsi_client_parse(const json_t *v, const char *path, struct tb_iscsi_client *out)
{
  static const char *const keys[] = {"initiator", "chap", "mutual_chap", NULL};
  memset(out, 0, sizeof *out);
  if (!json_is_object(v))
    return tb_error("%s: expected an object such as {\"initiator\": "
                    "\"iqn.1991-05.com.microsoft:pc07\"}",
                    path);
  if (tb_json_check_keys(v, path, keys) == -1)
    return -1;
  int r = get_str(v, path, "initiator", out->initiator, sizeof out->initiator, NULL);
  if (r == -1)
    return -1;
  if (r && !tb_iscsi_name_valid(out->initiator))
    return tb_error("%s.initiator: \"%s\" is not an iSCSI name (expected iqn.YYYY-MM.domain:name, "
                    "eui.HEX or naa.HEX)",
                    path, out->initiator);
  char p[512];
  json_t *e;
  if ((e = json_object_get(v, "chap"))) {
    snprintf(p, sizeof p, "%s.chap", path);
    if (parse_chap(e, p, &out->chap) == -1)
      return -1;
  }
  if ((e = json_object_get(v, "mutual_chap"))) {
    snprintf(p, sizeof p, "%s.mutual_chap", path);
    if (!out->chap.set)
      return tb_error("%s: needs \"chap\" too (the initiator authenticates first)", p);
    if (parse_chap(e, p, &out->mutual_chap) == -1)
      return -1;
    if (out->mutual_chap.secret_len == out->chap.secret_len &&
        memcmp(out->mutual_chap.secret, out->chap.secret, out->chap.secret_len) == 0)
      return tb_error("%s.secret: must differ from chap.secret (RFC 7143 §12.1.3)", p);
  }
  return 0;
}

int tb_iscsi_conf_parse(const json_t *v, struct tb_iscsi_conf *out)
{
  static const char *const keys[] = {"iqn_prefix", "program", NULL};
  snprintf(out->iqn_prefix, sizeof out->iqn_prefix, "%s", TB_ISCSI_DEFAULT_PREFIX);
  out->program = NULL;
  if (!v)
    return 0;
  if (!json_is_object(v))
    return tb_error("iscsi: expected an object such as {\"iqn_prefix\": \"%s\"}",
                    TB_ISCSI_DEFAULT_PREFIX);
  if (tb_json_check_keys(v, "iscsi", keys) == -1)
    return -1;
  int r = get_str(v, "iscsi", "iqn_prefix", out->iqn_prefix, sizeof out->iqn_prefix - 65, NULL);
  if (r == -1)
    return -1;
  if (r && (!tb_iscsi_name_valid(out->iqn_prefix) || strchr(out->iqn_prefix, ':')))
    return tb_error("iscsi.iqn_prefix: \"%s\" is not an iSCSI name without a ':' part (expected "
                    "e.g. \"%s\")",
                    out->iqn_prefix, TB_ISCSI_DEFAULT_PREFIX);
  json_t *e = json_object_get(v, "program");
  if (e) {
    if (!json_is_string(e) || json_string_length(e) == 0)
      return tb_error("iscsi.program: expected the path of tabula-iscsid");
    if (!(out->program = strdup(json_string_value(e))))
      return tb_error_errno("iscsi.program");
  }
  return 0;
}

void tb_iscsi_target_name(const char *prefix, const char *id, char *out, size_t len)
{
  snprintf(out, len, "%s:%s", prefix, id);
  for (char *p = out; *p; p++)
    *p = (char)tolower((unsigned char)*p);
}
