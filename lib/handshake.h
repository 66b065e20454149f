/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: a deadline for the NBD handshake.
 *
 * nbdkit 1.32 gives every accepted connection a thread and waits for its
 * handshake forever (it has no handshake timeout; its limit filter counts
 * opened exports, so it cannot bound connections that never open one):
 * 300 TCP connections that send nothing hold 300 threads.  The plugin
 * registers each TCP connection at .preconnect (its peer address and the
 * time), marks it done when an export opens, and once a second
 * tb_handshake_reap() shuts down (shutdown(2), never close: the descriptor
 * stays nbdkit's) the sockets of those past the deadline, found in
 * /proc/self/fd by their peer address.  nbdkit then sees the connection
 * end and frees its thread.
 */
#ifndef TB_HANDSHAKE_H
#define TB_HANDSHAKE_H

#include <stdint.h>
#include <sys/socket.h>

#define TB_HANDSHAKE_DEFAULT_TIMEOUT_MS 30000
#define TB_HANDSHAKE_MAX_TRACKED 65536

/* The calling thread's connection (from PEER, a TCP address) starts its
 * handshake now. */
void tb_handshake_begin(const struct sockaddr *peer, socklen_t len);
/* The calling thread's connection opened an export. */
void tb_handshake_done(void);
/* Shut down the connections whose handshake began more than TIMEOUT_MS ago
 * (0: none) and forget those that are gone.  Returns how many were shut down. */
int tb_handshake_reap(int64_t timeout_ms);

#endif
