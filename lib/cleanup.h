/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: scoped cleanup, in the style of nbdkit's common/include/cleanup.h.
 *
 * A local declared with one of these attributes is released when it goes
 * out of scope, on every return path, so a function that acquires several
 * things needs no "goto fail" ladder:
 *
 *   CLEANUP_FREE char *text = tb_read_file(path, max, &len);
 *   CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_CLOEXEC);
 *   ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&lock);
 *
 * To hand a value to the caller, take it out first (p = x, x = NULL; or for
 * a descriptor fd = x, x = -1).  The GCC/Clang cleanup attribute is the
 * mechanism; both compilers tabula builds with support it.
 */
#ifndef TB_CLEANUP_H
#define TB_CLEANUP_H

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

static inline void tb_cleanup_free(void *ptr)
{
  free(*(void **)ptr);
}
#define CLEANUP_FREE __attribute__((cleanup(tb_cleanup_free)))

/* Closes a descriptor >= 0; errno survives (a close must not hide the
 * error being returned). */
static inline void tb_cleanup_close(int *fd)
{
  if (*fd >= 0) {
    int saved = errno;
    close(*fd);
    errno = saved;
  }
}
#define CLEANUP_CLOSE __attribute__((cleanup(tb_cleanup_close)))

static inline void tb_cleanup_unlock(pthread_mutex_t **m)
{
  pthread_mutex_unlock(*m);
}
#define TB_CLEANUP_CONCAT_(a, b) a##b
#define TB_CLEANUP_CONCAT(a, b) TB_CLEANUP_CONCAT_(a, b)
/* Lock M now, unlock it when the enclosing block ends. */
#define ACQUIRE_LOCK_FOR_CURRENT_SCOPE(m)                                                          \
  __attribute__((cleanup(tb_cleanup_unlock)))                                                      \
  pthread_mutex_t *TB_CLEANUP_CONCAT(tb_scope_lock_, __LINE__) = (m);                              \
  pthread_mutex_lock(TB_CLEANUP_CONCAT(tb_scope_lock_, __LINE__))

#endif
