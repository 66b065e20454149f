/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: per-client I/O limits (bandwidth and IOPS, read and write).
 *
 * One nbdkit serves every client, so nbdkit's rate filter (which limits all
 * connections of one nbdkit together, or each connection alone) cannot keep
 * one PC installing a game from starving the others' boots.  These limits
 * belong to a client: every connection of it (multi-conn, reconnects, every
 * frontend in this process) draws from the same buckets.
 *
 * A request never fails for a limit: tb_limit_take() sleeps until the
 * client's budget covers it (the limit is a delay, never an error).  The
 * first 100 ms of each rate may be used at once, so a client that was quiet
 * starts at full speed and a long transfer averages the configured rate.
 */
#ifndef TB_LIMIT_H
#define TB_LIMIT_H

#include <stdbool.h>
#include <stdint.h>

/* clients.ID.limits: 0 means unlimited. */
struct tb_io_limits {
  uint64_t read_bps, write_bps;   /* bytes per second */
  uint64_t read_iops, write_iops; /* requests per second */
};

enum tb_limit_dir { TB_LIMIT_READ = 0, TB_LIMIT_WRITE = 1 };

struct tb_limit;

static inline bool tb_io_limits_set(const struct tb_io_limits *l)
{
  return l && (l->read_bps || l->write_bps || l->read_iops || l->write_iops);
}

/* The limiter of client ID with the rates of CONF (the connection's
 * configuration: a reload's new rates apply from the client's next
 * connection on, to its other connections then too).  NULL when CONF limits
 * nothing (tb_limit_take(NULL, ...) does nothing).  Limiters live as long as
 * the process; one per client id. */
struct tb_limit *tb_limit_get(const char *id, const struct tb_io_limits *conf);

/* Account one request of BYTES in direction DIR (BYTES 0: a request that
 * moves no data, such as a trim: it counts against the IOPS limit only), and
 * sleep until the client's rates allow it.  Thread-safe; holds no lock while
 * it sleeps. */
void tb_limit_take(struct tb_limit *l, enum tb_limit_dir dir, uint64_t bytes);

#endif
