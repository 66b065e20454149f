/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: the iSCSI frontend's configuration sections.
 *
 *   "listen": {"iscsi": "ADDR:PORT"}        where tabula-iscsid listens (conf.h)
 *   "iscsi": {"iqn_prefix": "iqn.2026-12.lan.tabula", "program": PATH}
 *   "clients": {"pc07": {"iscsi": {"initiator": IQN,
 *                                  "chap": {"user": U, "secret": S},
 *                                  "mutual_chap": {"user": U, "secret": S}}}}
 *
 * A client's target is PREFIX:ID (the id in lower case: iSCSI names are
 * case-insensitive).  The bare PREFIX is the target of "whoever I am": the
 * client whose "initiator" is the login's InitiatorName, else the one whose
 * "address" is the peer's.  A client with an "initiator" is served only to
 * that initiator.  "chap" makes the initiator authenticate (one-way);
 * "mutual_chap" also makes the target authenticate to the initiator.
 * Parsed by conf.c (strict, JSON paths in every message) through
 * tb_iscsi_*_parse(); read by tabula-iscsid and tabula-restored.
 */
#ifndef TB_ISCSI_CONF_H
#define TB_ISCSI_CONF_H

#include <stdbool.h>

#include <jansson.h>

#define TB_ISCSI_NAME_MAX 223 /* RFC 7143 §4.2.7.1 */
#define TB_ISCSI_DEFAULT_PREFIX "iqn.2026-12.lan.tabula"

struct tb_iscsi_chap {
  bool set;
  char user[256];
  char secret[256];
  size_t secret_len;
};

struct tb_iscsi_client {
  char initiator[TB_ISCSI_NAME_MAX + 1]; /* "" if any initiator may log in */
  struct tb_iscsi_chap chap;
  struct tb_iscsi_chap mutual_chap;
};

struct tb_iscsi_conf {
  char iqn_prefix[TB_ISCSI_NAME_MAX + 1];
  char *program; /* tabula-iscsid binary, or NULL: "tabula-iscsid" on PATH */
};

/* Validate and parse a client's "iscsi" object at PATH into OUT. */
int tb_iscsi_client_parse(const json_t *v, const char *path, struct tb_iscsi_client *out);
/* The top-level "iscsi" object (V may be NULL: the defaults). */
int tb_iscsi_conf_parse(const json_t *v, struct tb_iscsi_conf *out);
/* The target name of client ID under PREFIX ("PREFIX:ID", lower case)
 * into OUT: what tabula-iscsid serves and what a sanboot script names. */
void tb_iscsi_target_name(const char *prefix, const char *id, char *out, size_t len);
/* Is S a valid iSCSI name ("iqn.", "eui." or "naa." form, at most 223 bytes
 * of [a-z0-9.:-] after case folding)? */
bool tb_iscsi_name_valid(const char *s);

#endif
