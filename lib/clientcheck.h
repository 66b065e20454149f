/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: whether a client can be served a version. */
#ifndef TB_CLIENTCHECK_H
#define TB_CLIENTCHECK_H

#include <stdint.h>

#include <jansson.h>

/* Whether client C can be served IMAGE@VERSION: the version's manifest reads,
 * and each of the client's preserved ranges (clients.ID.preserve) and
 * protected regions (watchdog.protect) resolves on it.  -1 with a message
 * naming the rule and the version, e.g. "clients.pc01.preserve[0]
 * \"partition:3\": win11@6 has no partition 3".  Run when a client is
 * configured (daemon start, reload, the plugin's start) and when a version is
 * made (import, merge, pull). */
struct tb_config;
struct tb_client_conf;
int tb_client_check_version(const struct tb_config *cfg, const struct tb_client_conf *c,
                            const char *image, uint32_t version);
/* The rules alone against the raw disk image at PATH of SIZE bytes (a file
 * about to become a version), WHAT naming it in the message. */
int tb_client_check_image(const struct tb_config *cfg, const struct tb_client_conf *c,
                          const char *path, uint64_t size, const char *what);
/* The same for the version C's next session gets (tb_client_target). */
int tb_client_check(const struct tb_config *cfg, const struct tb_client_conf *c);
/* The same in a pass over many clients: MEMO (a JSON object the caller
 * makes and frees) keeps each version's manifest read once. */
int tb_client_check_memo(const struct tb_config *cfg, const struct tb_client_conf *c, json_t *memo);

#endif
