/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: the control socket's client side -- JSON lines to tabula-restored.
 *
 * Protocol (one JSON object per line, UTF-8, each way):
 *   request   {"op": "status", ...arguments}
 *   replies   zero or more interim lines, then exactly one final line:
 *               {"progress": {"phase": "...", "done": N, "total": N}}   long work
 *               {"event": {...}}                                         events --follow
 *               {"ok": true, "result": {...}}  or  {"ok": false, "error": "message"}
 * A connection may carry any number of requests, answered in order.  The
 * daemon bounds a request line (TB_CONTROL_MAX_LINE) and answers a line it
 * cannot parse with an error; only the socket's owner (and root) may talk.
 */
#ifndef TB_CONTROL_H
#define TB_CONTROL_H

#include <jansson.h>

#include "conf.h"

#define TB_CONTROL_MAX_LINE (64 * 1024)

struct tb_control;

/* The control socket path of CFG (its "control", else STATE/control.sock). */
int tb_control_socket_path(const struct tb_config *cfg, char *buf, size_t len);

/* Connect to the daemon's socket; fails with a message naming the path and
 * saying whether the daemon is not running or access was denied. */
struct tb_control *tb_control_connect(const char *path);
void tb_control_close(struct tb_control *c);

/* Send one request (REQ is not consumed). */
int tb_control_send(struct tb_control *c, const json_t *req);
/* Read one reply line.  TIMEOUT_MS < 0 waits forever.  Returns a new
 * reference, or NULL with tb_error on EOF, timeout or a malformed line. */
json_t *tb_control_recv(struct tb_control *c, int timeout_ms);

#endif
