/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-iscsid: iSCSI sessions and connections (RFC 7143) over live clients.
 *
 * One thread per TCP connection (like nbdkit) runs the login (text
 * negotiation, CHAP), then the full feature phase: it reads PDUs in order;
 * SCSI commands run on a small pool of worker threads of the connection
 * and are answered in any order (target.c); a write's data arrives as immediate data, unsolicited
 * Data-Out or Data-Out solicited by R2T (one R2T outstanding at a time).
 * Each client is one target, PREFIX:ID, with LUN 0 its disk; a normal
 * session opens one tb_conn (live.h) for the client, so sessions, policies,
 * guards and the busy rule are lib/'s.  ErrorRecoveryLevel is 0: any
 * connection failure ends the iSCSI session, and the initiator's next login
 * (session reinstatement) opens a new tb_conn, which continues the client's
 * session if it comes within reconnect_grace.
 *
 * A client is served to one initiator name at a time: a login from another
 * initiator while a session runs is refused as busy.  A login with the same
 * initiator name and ISID replaces the old session (session reinstatement);
 * the same name with another ISID is another session of the same machine
 * (iPXE's session stays, orphaned, when Windows' initiator logs in with its
 * own ISID), sharing the client's one tb_conn session.
 */
#ifndef ISC_TARGET_H
#define ISC_TARGET_H

#include <stdbool.h>
#include <sys/socket.h>

#include "conf.h"

/* Set the configuration new logins use (takes a reference). */
void isc_set_config(struct tb_config *cfg);
/* The current configuration, with a reference for the caller. */
struct tb_config *isc_get_config(void);

/* Serve one accepted connection in a new detached thread; closes FD on
 * failure. */
int isc_serve(int fd);

/* Ask every connection to end (SIGTERM) and wait up to WAIT_MS for them. */
void isc_stop_all(int wait_ms);

/* The target name of client ID under PREFIX, lower case, into OUT. */
void isc_target_name(const char *prefix, const char *id, char *out, size_t len);

#endif
