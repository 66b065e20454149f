/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: the data-path guards, the "protect" regions of a client's watchdog
 * section as byte ranges of one session's disk (see guards.h).
 *
 * Guards are resolved once per session into byte ranges, so the check on each
 * write is a scan of a handful of ranges: no allocation, no lock, no I/O.
 */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guards.h"
#include "overlay.h"

static int add_guard(struct tb_guards *g, const struct tb_protect *p, uint64_t off, uint64_t len)
{
  struct tb_guard x = {.off = off, .len = len, .action = p->action};
  snprintf(x.name, sizeof x.name, "%s", p->name);
  if (tb_vector_push(g, x) == -1)
    return tb_error_prefix("protected regions");
  return 0;
}

int tb_guards_resolve(const struct tb_watchdog_conf *w, const char *base_path, uint64_t size,
                      struct tb_guards *out)
{
  memset(out, 0, sizeof *out);
  for (size_t i = 0; i < w->n_protect; i++) {
    const struct tb_protect *p = &w->protect[i];
    uint64_t off[2], len[2];
    int n, r = tb_region_resolve(&p->region, base_path, size, off, len, &n);
    for (int k = 0; k < n && r == 0; k++)
      r = add_guard(out, p, off[k], len[k]);
    if (r == -1) {
      tb_error_prefix("watchdog protect \"%s\"", p->name);
      tb_guards_free(out);
      return -1;
    }
  }
  return 0;
}

void tb_guards_free(struct tb_guards *g)
{
  tb_vector_free(g);
}

struct tb_guard *tb_guards_check(struct tb_guards *g, uint64_t off, uint64_t len)
{
  struct tb_guard *hit = NULL;
  for (size_t i = 0; i < g->len; i++) {
    struct tb_guard *x = &g->ptr[i];
    if (off < x->off + x->len && x->off < off + len) {
      if (x->action == TB_GUARD_DENY)
        return x;
      if (!hit)
        hit = x;
    }
  }
  return hit;
}

/* True if writing BUF (NULL: zeros) at [off, off+len) leaves the bytes of
 * [x->off, x->off+x->len) that it covers as they are in OVL. */
static bool change_keeps(const struct tb_guard *x, struct tb_overlay *ovl, const void *buf,
                         uint64_t off, uint64_t len)
{
  uint64_t a = off > x->off ? off : x->off;
  uint64_t b = off + len < x->off + x->len ? off + len : x->off + x->len;
  if (!ovl || b <= a || b - a > UINT32_MAX)
    return false;
  uint32_t n = (uint32_t)(b - a);
  unsigned char *cur = malloc(n);
  bool same = cur && tb_overlay_pread(ovl, cur, n, a) == 0;
  if (same && buf)
    same = memcmp(cur, (const unsigned char *)buf + (a - off), n) == 0;
  else if (same)
    for (uint32_t i = 0; i < n && same; i++)
      same = cur[i] == 0;
  free(cur);
  return same;
}

struct tb_guard *tb_guards_check_change(struct tb_guards *g, struct tb_overlay *ovl,
                                        const void *buf, uint64_t off, uint64_t len)
{
  struct tb_guard *alert = NULL;
  for (size_t i = 0; i < g->len; i++) {
    struct tb_guard *x = &g->ptr[i];
    if (!(off < x->off + x->len && x->off < off + len))
      continue;
    if (x->action == TB_GUARD_DENY && !change_keeps(x, ovl, buf, off, len))
      return x;
    if (x->action != TB_GUARD_DENY && !alert)
      alert = x;
  }
  return alert;
}
