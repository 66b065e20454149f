/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: a growable array -- one type for every list that grows.
 *
 *   TB_VECTOR(name, type)    declares struct name { type *ptr; size_t len, cap; }
 *   tb_vector_reserve(v, n)  room for N more elements; 0, or -1 with tb_error
 *                            ("out of memory") and V unchanged
 *   tb_vector_push(v, x)     append X; 0 or -1 as above
 *   tb_vector_free(v)        free the array (not what its elements point to)
 *
 * Capacity doubles (from 8), so N pushes cost O(N); reallocarray() refuses a
 * size that would overflow.  A zeroed struct is an empty vector.  The macros
 * are GNU C statement expressions, as nbdkit's vector.h is a macro family:
 * the element type stays visible to the compiler, no void ** punning.
 */
#ifndef TB_VECTOR_H
#define TB_VECTOR_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "util.h"

#define TB_VECTOR(name, type)                                                                      \
  struct name {                                                                                    \
    type *ptr;                                                                                     \
    size_t len, cap;                                                                               \
  }

#define tb_vector_reserve(v, n)                                                                    \
  __extension__({                                                                                  \
    int tb_r_ = 0;                                                                                 \
    size_t tb_need_ = (v)->len + (n);                                                              \
    if (tb_need_ < (v)->len) /* LEN + N overflowed */                                              \
      tb_r_ = tb_error("out of memory");                                                           \
    else if (tb_need_ > (v)->cap) {                                                                \
      size_t tb_cap_ = (v)->cap ? (v)->cap : 8;                                                    \
      while (tb_cap_ < tb_need_ && tb_cap_ <= SIZE_MAX / 2)                                        \
        tb_cap_ *= 2;                                                                              \
      if (tb_cap_ < tb_need_) /* no doubling reaches it: ask for it exactly */                     \
        tb_cap_ = tb_need_;                                                                        \
      __typeof__((v)->ptr) tb_p_ = reallocarray((v)->ptr, tb_cap_, sizeof *(v)->ptr);              \
      if (tb_p_) {                                                                                 \
        (v)->ptr = tb_p_;                                                                          \
        (v)->cap = tb_cap_;                                                                        \
      } else                                                                                       \
        tb_r_ = tb_error("out of memory");                                                         \
    }                                                                                              \
    tb_r_;                                                                                         \
  })

#define tb_vector_push(v, x)                                                                       \
  (tb_vector_reserve((v), 1) == -1 ? -1 : ((v)->ptr[(v)->len++] = (x), 0))

#define tb_vector_free(v)                                                                          \
  do {                                                                                             \
    free((v)->ptr);                                                                                \
    (v)->ptr = NULL;                                                                               \
    (v)->len = (v)->cap = 0;                                                                       \
  } while (0)

#endif
