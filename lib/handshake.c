/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: a deadline for the NBD handshake (see handshake.h).
 *
 * A small table under one mutex, keyed by the connection's thread (nbdkit
 * runs .preconnect, the handshake and .open on the connection's thread).
 * Matching a socket to an entry compares the full peer address, port
 * included, which is unique among live TCP connections; a descriptor
 * number reused by a later connection has another peer and is left alone.
 */
#include <config.h>

#include <dirent.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "handshake.h"
#include "util.h"
#include "vector.h"

struct pending {
  pthread_t thread;
  struct sockaddr_storage peer;
  socklen_t len;
  int64_t since_ms;
};

static TB_VECTOR(, struct pending) table;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void remove_at(size_t i)
{
  table.ptr[i] = table.ptr[--table.len];
}

void tb_handshake_begin(const struct sockaddr *peer, socklen_t len)
{
  if (len > sizeof table.ptr[0].peer || (peer->sa_family != AF_INET && peer->sa_family != AF_INET6))
    return;
  pthread_mutex_lock(&lock);
  pthread_t self = pthread_self();
  for (size_t i = 0; i < table.len; i++)
    if (pthread_equal(table.ptr[i].thread, self))
      remove_at(i--); /* a thread serves one connection at a time */
  /* Past the limit, or out of memory, the connection goes untracked. */
  if (table.len < TB_HANDSHAKE_MAX_TRACKED && tb_vector_reserve(&table, 1) == 0) {
    struct pending *p = &table.ptr[table.len++];
    memset(p, 0, sizeof *p);
    p->thread = self;
    memcpy(&p->peer, peer, len);
    p->len = len;
    p->since_ms = tb_now_ms();
  }
  pthread_mutex_unlock(&lock);
}

void tb_handshake_done(void)
{
  pthread_mutex_lock(&lock);
  pthread_t self = pthread_self();
  for (size_t i = 0; i < table.len; i++)
    if (pthread_equal(table.ptr[i].thread, self))
      remove_at(i--);
  pthread_mutex_unlock(&lock);
}

static bool same_peer(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
  if (a->ss_family != b->ss_family)
    return false;
  if (a->ss_family == AF_INET) {
    const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
    return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
  }
  const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
  return x->sin6_port == y->sin6_port &&
         memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
}

int tb_handshake_reap(int64_t timeout_ms)
{
  if (timeout_ms <= 0)
    return 0;
  pthread_mutex_lock(&lock);
  int64_t now = tb_now_ms();
  size_t late = 0;
  for (size_t i = 0; i < table.len; i++)
    late += now - table.ptr[i].since_ms > timeout_ms;
  int shut = 0;
  if (late) {
    bool *seen = calloc(table.len, sizeof *seen);
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    while (d && seen && (e = readdir(d))) {
      char *end;
      long fd = strtol(e->d_name, &end, 10);
      if (*end || fd < 0 || fd == dirfd(d))
        continue;
      struct sockaddr_storage ss;
      socklen_t len = sizeof ss;
      if (getpeername((int)fd, (struct sockaddr *)&ss, &len) == -1)
        continue;
      for (size_t i = 0; i < table.len; i++) {
        if (!same_peer(&ss, &table.ptr[i].peer))
          continue;
        seen[i] = true;
        if (now - table.ptr[i].since_ms > timeout_ms && shutdown((int)fd, SHUT_RDWR) == 0)
          shut++;
      }
    }
    if (d)
      closedir(d);
    /* Forget the late ones: shut down now, or already gone. */
    for (size_t i = table.len; seen && i-- > 0;)
      if (now - table.ptr[i].since_ms > timeout_ms || !seen[i]) {
        seen[i] = seen[table.len - 1];
        remove_at(i);
      }
    free(seen);
  }
  pthread_mutex_unlock(&lock);
  return shut;
}
