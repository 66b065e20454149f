/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: the watchdog's file rules (see rules.h).
 *
 * How it works.  A scan is two lib/inspect handles over two byte sources:
 * the base version's image file, and the same image seen through the overlay
 * (a tb_disk whose reads are tb_overlay_pread).  The dirty map comes from the
 * overlay's block map (tb_overlay_extents), so it is exact and costs no I/O.
 * Created/changed/deleted rules share one diff, the comparison behind the
 * view's changes.txt: a volume the overlay never wrote is not read at all,
 * and file contents are compared only where they lie in dirty blocks.  The
 * diff goes through an index of the base version (tb_inspect_diff_indexed),
 * so it reads only what the dirty map touches; the index is built once per
 * version and cached (lib/inspect's tb_inspect_index_get, keyed by image,
 * version and manifest digest: immutable, never invalidated).
 * "exists" rules with a literal path are one lookup; glob "exists" rules walk
 * the volume once per rule.
 *
 * Promises: read-only (the overlay is opened TB_OVL_RDONLY, the base with
 * O_RDONLY); a hostile guest filesystem costs at most lib/inspect's time
 * budget per call and yields an error, never a hang.
 */
#include <config.h>

#include <errno.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "rules.h"
#include "session.h"

#define READ_CHUNK (8u << 20) /* tb_overlay_pread takes a 32-bit count */

/* ---- the disks ---------------------------------------------------------------- */

static int overlay_read(void *opaque, void *buf, size_t len, uint64_t off)
{
  struct tb_overlay *o = opaque;
  char *p = buf;
  while (len > 0) {
    uint32_t n = len < READ_CHUNK ? (uint32_t)len : READ_CHUNK;
    if (tb_overlay_pread(o, p, n, off) == -1)
      return -1;
    p += n;
    off += n;
    len -= n;
  }
  return 0;
}

/* The live disk owns the overlay: an inspection abandoned at its deadline
 * may read it after tb_scan_close (lib/inspect.h), until its last reference. */
static void overlay_close(void *opaque)
{
  tb_overlay_close(opaque);
}

static int dirty_extent(void *ctx, uint64_t offset, uint64_t length, enum tb_block_state state)
{
  return state == TB_CLEAN ? 0 : tb_ranges_add(ctx, offset, length);
}

struct tb_disk *tb_scan_stuck(struct tb_scan *s)
{
  if (s && s->live && tb_disk_stuck(s->live))
    return tb_disk_ref(s->live);
  if (s && s->base && tb_disk_stuck(s->base))
    return tb_disk_ref(s->base);
  return NULL;
}

/* Open S's overlay, base and their inspections: -1 with a message. */
static int scan_open(struct tb_scan *s, const char *state, const char *overlay_path,
                     int64_t budget_ms)
{
  char base_path[TB_PATH_MAX];
  struct tb_base_id base;
  struct stat st;
  if (tb_overlay_read_info(overlay_path, &s->info) == -1 ||
      tb_base_lookup(state, s->info.base.image, s->info.base.version, &base, base_path,
                     sizeof base_path, NULL) == -1)
    return -1;
  if (!(s->overlay = tb_overlay_open(overlay_path, base_path, &base, TB_OVL_RDONLY)))
    return -1;
  /* The identity of what we opened: the caller acts on this file, not on
   * whatever the path names later. */
  if (stat(overlay_path, &st) == -1)
    return tb_error_errno("cannot stat %s", overlay_path);
  s->dev = st.st_dev;
  s->ino = st.st_ino;
  tb_overlay_info(s->overlay, &s->info);
  if (tb_overlay_extents(s->overlay, 0, s->info.size, dirty_extent, &s->dirty) != 0)
    return -1;
  if (!(s->base = tb_disk_open_file(base_path)))
    return -1;
  if (!(s->live = tb_disk_new(s->info.size, overlay_read, overlay_close, s->overlay, overlay_path)))
    return -1;
  if (budget_ms <= 0)
    budget_ms = TB_INSPECT_DEFAULT_BUDGET_MS;
  if (!(s->base_ins = tb_inspect_open_budget(s->base, budget_ms)) ||
      !(s->live_ins = tb_inspect_open_budget(s->live, budget_ms)))
    return -1;
  return 0;
}

struct tb_scan *tb_scan_open(const char *state, const char *overlay_path, int64_t budget_ms,
                             struct tb_disk **stuck)
{
  if (stuck)
    *stuck = NULL;
  struct tb_scan *s = calloc(1, sizeof *s);
  if (!s) {
    tb_error("scanning %s: out of memory", overlay_path);
    return NULL;
  }
  if (scan_open(s, state, overlay_path, budget_ms) == 0)
    return s;
  tb_error_prefix("scanning %s", overlay_path);
  if (stuck)
    *stuck = tb_scan_stuck(s);
  tb_scan_close(s);
  return NULL;
}

void tb_scan_close(struct tb_scan *s)
{
  if (!s)
    return;
  tb_inspect_close(s->live_ins);
  tb_inspect_close(s->base_ins);
  if (s->live)
    tb_disk_unref(s->live); /* and with its last reference the overlay */
  else if (s->overlay)
    tb_overlay_close(s->overlay);
  tb_disk_unref(s->base);
  tb_ranges_free(&s->dirty);
  free(s);
}

/* ---- matching ------------------------------------------------------------------ */

/* Match path components: P and S point at a component (after a '/'); "**"
 * matches any number of whole components. */
static bool match_components(const char *p, const char *s)
{
  for (;;) {
    const char *pe = strchr(p, '/'), *se = strchr(s, '/');
    size_t pl = pe ? (size_t)(pe - p) : strlen(p);
    if (pl == 2 && p[0] == '*' && p[1] == '*') {
      if (!pe)
        return true; /* a trailing ** matches everything below */
      for (const char *t = s;; t = strchr(t, '/') + 1) {
        if (match_components(pe + 1, t))
          return true;
        if (!strchr(t, '/'))
          return false;
      }
    }
    char pc[TB_PATH_MAX], sc[TB_PATH_MAX];
    size_t sl = se ? (size_t)(se - s) : strlen(s);
    if (pl >= sizeof pc || sl >= sizeof sc)
      return false;
    memcpy(pc, p, pl);
    pc[pl] = '\0';
    memcpy(sc, s, sl);
    sc[sl] = '\0';
    if (fnmatch(pc, sc, 0) != 0)
      return false;
    if (!pe || !se)
      return !pe && !se;
    p = pe + 1;
    s = se + 1;
  }
}

bool tb_rule_path_match(const char *pattern, const char *path)
{
  if (pattern[0] != '/' || path[0] != '/')
    return false;
  if (!strstr(pattern, "**"))
    return fnmatch(pattern, path, FNM_PATHNAME) == 0;
  return match_components(pattern + 1, path + 1);
}

static bool has_glob(const char *pattern)
{
  return strpbrk(pattern, "*?[") != NULL;
}

static bool volume_match(const struct tb_file_rule *r, const char *volume)
{
  return !r->volume[0] || strcmp(r->volume, volume) == 0;
}

/* ---- the base versions' indexes -------------------------------------------------- */

/* The index of S's base version, from lib/inspect's cache or built now
 * (NULL if the base cannot be indexed: the diff then walks both trees).  The
 * key is the whole base identity: image, version and manifest digest. */
static struct tb_inspect_index *scan_index(struct tb_scan *s)
{
  const struct tb_base_id *id = &s->info.base;
  char digest[2 * sizeof id->manifest_sha256 + 1];
  char key[sizeof id->image + sizeof digest + 16];
  tb_hex(id->manifest_sha256, sizeof id->manifest_sha256, digest);
  snprintf(key, sizeof key, "%s@%" PRIu32 " %s", id->image, id->version, digest);
  struct tb_inspect_index *idx = tb_inspect_index_get(key, s->base_ins, &s->index_ms);
  s->index_files = tb_inspect_index_files(idx);
  return idx;
}

/* ---- created, changed, deleted ---------------------------------------------------- */

struct eval {
  const struct tb_file_rule *rules;
  size_t n;
  tb_rule_hit_fn fn;
  void *ctx;
  const char *volume; /* exists walks */
  const struct tb_file_rule *rule;
};

static enum tb_rule_on change_rule_on(enum tb_change kind)
{
  return kind == TB_CREATED   ? TB_RULE_CREATED
         : kind == TB_CHANGED ? TB_RULE_CHANGED
                              : TB_RULE_DELETED;
}

/* PATH is "VOLUME/inner/path" (tb_inspect_diff's convention). */
static int diff_hit(void *ctx, enum tb_change kind, const char *path, const struct tb_istat *st)
{
  (void)st;
  struct eval *e = ctx;
  const char *slash = strchr(path, '/');
  if (!slash)
    return 0;
  char volume[64];
  snprintf(volume, sizeof volume, "%.*s", (int)(slash - path), path);
  enum tb_rule_on on = change_rule_on(kind);
  int r = 0;
  for (size_t i = 0; i < e->n && r == 0; i++) {
    const struct tb_file_rule *rule = &e->rules[i];
    if (rule->on == on && volume_match(rule, volume) && tb_rule_path_match(rule->path, slash))
      r = e->fn(e->ctx, rule, tb_change_name(kind), path);
  }
  return r;
}

/* ---- exists ---------------------------------------------------------------------- */

static int exists_walk_hit(void *ctx, const char *path, const struct tb_istat *st, bool touched)
{
  (void)st;
  (void)touched;
  struct eval *e = ctx;
  if (!tb_rule_path_match(e->rule->path, path))
    return 0;
  char full[TB_PATH_MAX];
  snprintf(full, sizeof full, "%s%s", e->volume, path);
  return e->fn(e->ctx, e->rule, "exists", full);
}

static int eval_exists(struct tb_scan *s, struct eval *e, const struct tb_file_rule *rule)
{
  int r = 0;
  size_t nv = tb_inspect_n_volumes(s->live_ins);
  for (size_t v = 0; v < nv && r == 0; v++) {
    const struct tb_volume *vol = tb_inspect_volume(s->live_ins, v);
    if (!volume_match(rule, vol->name))
      continue;
    if (!has_glob(rule->path) && rule->path[0] == '/') {
      struct tb_istat st;
      if (tb_inspect_stat(s->live_ins, v, rule->path, &st) == 0) {
        char full[TB_PATH_MAX];
        snprintf(full, sizeof full, "%s%s", vol->name, rule->path);
        r = e->fn(e->ctx, rule, "exists", full);
      } else if (errno != ENOENT && errno != ENOTDIR) {
        r = -1;
      }
      continue;
    }
    e->volume = vol->name;
    e->rule = rule;
    int64_t t0 = tb_now_ms();
    r = tb_inspect_walk(s->live_ins, v, NULL, exists_walk_hit, e);
    s->walk_ms += tb_now_ms() - t0;
  }
  return r;
}

int tb_rules_eval(struct tb_scan *s, const struct tb_file_rule *rules, size_t n, tb_rule_hit_fn fn,
                  void *ctx)
{
  struct eval e = {.rules = rules, .n = n, .fn = fn, .ctx = ctx};
  bool need_diff = false;
  for (size_t i = 0; i < n; i++)
    need_diff = need_diff || rules[i].on != TB_RULE_EXISTS;
  int r = 0;
  if (need_diff && s->dirty.n > 0) {
    struct tb_inspect_index *idx = scan_index(s);
    int64_t t0 = tb_now_ms();
    r = tb_inspect_diff_indexed(idx, s->base_ins, s->live_ins, &s->dirty, diff_hit, &e,
                                &s->diff_stats);
    s->diff_ms += tb_now_ms() - t0;
    tb_inspect_index_free(idx);
  }
  for (size_t i = 0; i < n && r == 0; i++)
    if (rules[i].on == TB_RULE_EXISTS)
      r = eval_exists(s, &e, &rules[i]);
  return r;
}

int tb_scan_stat(struct tb_scan *s, const char *volume, const char *path, struct tb_istat *st)
{
  struct tb_istat tmp;
  size_t nv = tb_inspect_n_volumes(s->live_ins);
  for (size_t v = 0; v < nv; v++) {
    const struct tb_volume *vol = tb_inspect_volume(s->live_ins, v);
    if (volume && volume[0] && strcmp(volume, vol->name) != 0)
      continue;
    if (tb_inspect_stat(s->live_ins, v, path, st ? st : &tmp) == 0)
      return 1;
    if (errno != ENOENT && errno != ENOTDIR)
      return -1;
  }
  return 0;
}
