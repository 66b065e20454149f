/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: per-client I/O limits (see limit.h).
 *
 * Each rate is a virtual-time bucket (GCRA): TAT, the time at which the
 * client would have used up everything charged so far at exactly its rate,
 * moves forward by cost/rate for each request; a request waits until TAT is
 * no more than the burst ahead of now.  That is a token bucket without a
 * refill timer: O(1) per request, fair between threads in the order they
 * charge, and a long transfer takes bytes/rate minus the burst.
 *
 * Limiters are kept in a list by client id for the life of the process (a
 * few dozen bytes per limited client), so connections of one client share
 * them, and a pointer handed to a connection stays valid.
 */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "limit.h"
#include "util.h"

#define LIMIT_BURST_NS (100 * 1000000LL)

struct bucket {
  int64_t tat_ns; /* CLOCK_MONOTONIC */
};

struct tb_limit {
  struct tb_limit *next;
  char id[TB_NAME_MAX + 1];
  pthread_mutex_t lock; /* everything below */
  struct tb_io_limits rates;
  struct bucket bytes[2], ops[2];
};

static struct tb_limit *limits;
static pthread_mutex_t limits_lock = PTHREAD_MUTEX_INITIALIZER;

static int64_t mono_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

struct tb_limit *tb_limit_get(const char *id, const struct tb_io_limits *conf)
{
  if (!tb_io_limits_set(conf))
    return NULL;
  pthread_mutex_lock(&limits_lock);
  struct tb_limit *l = limits;
  while (l && strcmp(l->id, id) != 0)
    l = l->next;
  if (!l && (l = calloc(1, sizeof *l))) {
    snprintf(l->id, sizeof l->id, "%s", id);
    pthread_mutex_init(&l->lock, NULL);
    l->next = limits;
    limits = l;
  }
  pthread_mutex_unlock(&limits_lock);
  if (!l)
    return NULL; /* out of memory: serve unlimited rather than fail the connection */
  pthread_mutex_lock(&l->lock);
  l->rates = *conf;
  pthread_mutex_unlock(&l->lock);
  return l;
}

/* Charge UNITS at RATE per second; returns how long the request must wait. */
static int64_t charge(struct bucket *b, uint64_t rate, uint64_t units, int64_t now)
{
  if (!rate || !units)
    return 0;
  int64_t cost = (int64_t)((double)units * 1e9 / (double)rate);
  int64_t burst = LIMIT_BURST_NS;
  if (units == 1 && cost > burst) /* a slow IOPS limit still lets one request through */
    burst = cost;
  if (b->tat_ns < now)
    b->tat_ns = now;
  b->tat_ns += cost;
  int64_t wait = b->tat_ns - burst - now;
  return wait > 0 ? wait : 0;
}

void tb_limit_take(struct tb_limit *l, enum tb_limit_dir dir, uint64_t bytes)
{
  if (!l)
    return;
  int64_t now = mono_ns();
  pthread_mutex_lock(&l->lock);
  uint64_t bps = dir == TB_LIMIT_READ ? l->rates.read_bps : l->rates.write_bps;
  uint64_t iops = dir == TB_LIMIT_READ ? l->rates.read_iops : l->rates.write_iops;
  int64_t w1 = charge(&l->bytes[dir], bps, bytes, now);
  int64_t w2 = charge(&l->ops[dir], iops, 1, now);
  pthread_mutex_unlock(&l->lock);
  int64_t wait = w1 > w2 ? w1 : w2;
  if (wait <= 0)
    return;
  struct timespec ts = {.tv_sec = (time_t)(wait / 1000000000LL),
                        .tv_nsec = (long)(wait % 1000000000LL)};
  while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) == EINTR)
    ;
}
