/* SPDX-License-Identifier: BSD-3-Clause */
/* lib/inspect-request.c: the public calls of a handle (inspect.h).
 *
 * Each call packs its arguments into a job (inspect-worker.c), runs it with
 * a deadline of its kind (budget times a factor) and unpacks the result:
 * open and close, stat, readdir, readlink, xattrs, files (mapped reads run
 * here, on the caller's thread), walks and owners.  A readdir the cache
 * can answer runs here too (readdir_cached).
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inspect-internal.h"

struct tb_inspect *tb_inspect_open(struct tb_disk *disk)
{
  return tb_inspect_open_budget(disk, TB_INSPECT_DEFAULT_BUDGET_MS);
}

struct tb_inspect *tb_inspect_open_budget(struct tb_disk *disk, int64_t budget_ms)
{
  if (atomic_load(&tbi_n_stuck) >= TB_INSPECT_MAX_STUCK) {
    errno = EIO;
    tb_error("%s: %d inspections are still running past their deadline (damaged "
             "filesystems?): not opening another one until they end",
             tb_disk_name(disk), TB_INSPECT_MAX_STUCK);
    return NULL;
  }
  struct tb_inspect *ins = calloc(1, sizeof *ins);
  if (!ins) {
    errno = ENOMEM;
    tb_error("%s: out of memory", tb_disk_name(disk));
    return NULL;
  }
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_mutex_init(&ins->mu, NULL);
  pthread_mutex_init(&ins->cb_mu, NULL);
  pthread_cond_init(&ins->wake, &ca);
  pthread_cond_init(&ins->done, &ca);
  pthread_condattr_destroy(&ca);
  atomic_init(&ins->refs, 2);
  atomic_init(&ins->budget_ms, budget_ms > 0 ? budget_ms : TB_INSPECT_DEFAULT_BUDGET_MS);
  atomic_init(&ins->giving_up, false);
  atomic_init(&ins->closing_now, false);
  ins->disk = tb_disk_ref(disk);

  pthread_attr_t ta;
  pthread_t tid;
  pthread_attr_init(&ta);
  pthread_attr_setdetachstate(&ta, PTHREAD_CREATE_DETACHED);
  int e = pthread_create(&tid, &ta, tbi_worker_main, ins);
  pthread_attr_destroy(&ta);
  if (e != 0) {
    errno = e;
    tb_error_errno("%s: cannot start an inspection thread", tb_disk_name(disk));
    tb_disk_unref(ins->disk);
    atomic_store(&ins->refs, 1);
    tbi_ins_put(ins);
    errno = e;
    return NULL;
  }
  struct job *j = tbi_job_new(ins, JOB_OPEN, tbi_deadline_in(ins, 1));
  ssize_t r = j ? tbi_run_request(ins, j) : -1;
  tbi_job_put(j);
  if (r < 0) {
    int err = errno;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", tb_errmsg());
    tb_inspect_close(ins);
    tb_error("%s", msg);
    errno = err;
    return NULL;
  }
  return ins;
}

/* The worker tears down and frees the handle; a stuck one does it when its
 * job ends, so close never waits for a deadline. */
void tb_inspect_close(struct tb_inspect *ins)
{
  if (!ins)
    return;
  atomic_store(&ins->closing_now, true);
  pthread_mutex_lock(&ins->mu);
  ins->closing = true;
  pthread_cond_signal(&ins->wake);
  while (!ins->ended && !ins->stuck)
    pthread_cond_wait(&ins->done, &ins->mu);
  pthread_mutex_unlock(&ins->mu);
  tbi_ins_put(ins);
}

/* A copy of PATH for a job, or -1 (ENOMEM). */
int tbi_job_path(struct job *j, const char *path)
{
  if ((j->path = strdup(path)))
    return 0;
  errno = ENOMEM;
  return tb_error("out of memory");
}

int tb_inspect_stat(struct tb_inspect *ins, size_t vol, const char *path, struct tb_istat *st)
{
  struct job *j = tbi_job_new(ins, JOB_STAT, tbi_deadline_in(ins, 1));
  if (!j || tbi_job_path(j, path) < 0) {
    tbi_job_put(j);
    return -1;
  }
  j->vol = vol;
  int r = (int)tbi_run_request(ins, j);
  if (r == 0)
    *st = j->st;
  tbi_job_put(j);
  return r;
}

/* A listing the cache holds is served on the caller's thread, under the
 * handle's lock while the worker is idle, instead of by a job (two thread
 * hand-offs, most of an opendir's cost in a walk whose directories the
 * worker listed ahead).  Nothing is read from the disk there, so nothing
 * can overrun a deadline.  Returns 1 if served (result in *R), 0 if a
 * directory on the way is not cached or the worker is busy. */
static int readdir_cached(struct tb_inspect *ins, size_t vol, const char *path, bool lazy,
                          tb_inspect_dir_fn fn, void *ctx, int *r)
{
  pthread_mutex_lock(&ins->mu);
  if (ins->job || ins->listing_ahead || ins->stuck || ins->closing || ins->ended) {
    pthread_mutex_unlock(&ins->mu);
    return 0;
  }
  struct job fast = {.kind = JOB_READDIR,
                     .vol = vol,
                     .path = (char *)path,
                     .lazy = lazy,
                     .dir_fn = fn,
                     .ctx = ctx};
  ins->cache_only = true;
  ins->cache_miss = false;
  *r = tbi_do_readdir(ins, &fast);
  ins->cache_only = false;
  bool served = !ins->cache_miss, ahead = ins->n_ahead > 0;
  if (ahead)
    pthread_cond_signal(&ins->wake); /* to list the new subdirectories ahead */
  pthread_mutex_unlock(&ins->mu);
  return served;
}

static int readdir_request(struct tb_inspect *ins, size_t vol, const char *path, bool lazy,
                           tb_inspect_dir_fn fn, void *ctx)
{
  int fast_r;
  if (readdir_cached(ins, vol, path, lazy, fn, ctx, &fast_r))
    return fast_r;
  struct job *j = tbi_job_new(ins, JOB_READDIR, tbi_deadline_in(ins, 1));
  if (!j || tbi_job_path(j, path) < 0) {
    tbi_job_put(j);
    return -1;
  }
  j->vol = vol;
  j->lazy = lazy;
  j->dir_fn = fn;
  j->ctx = ctx;
  int r = (int)tbi_run_request(ins, j);
  tbi_job_put(j);
  return r;
}

int tb_inspect_readdir(struct tb_inspect *ins, size_t vol, const char *path, tb_inspect_dir_fn fn,
                       void *ctx)
{
  return readdir_request(ins, vol, path, false, fn, ctx);
}

int tb_inspect_readdir_lazy(struct tb_inspect *ins, size_t vol, const char *path,
                            tb_inspect_dir_fn fn, void *ctx)
{
  return readdir_request(ins, vol, path, true, fn, ctx);
}

int tb_inspect_readlink(struct tb_inspect *ins, size_t vol, const char *path, char *buf, size_t len)
{
  struct job *j = tbi_job_new(ins, JOB_READLINK, tbi_deadline_in(ins, 1));
  if (!j || tbi_job_path(j, path) < 0 || (len && !(j->buf = malloc(len)))) {
    tbi_job_put(j);
    errno = ENOMEM;
    return tb_error("out of memory");
  }
  j->vol = vol;
  j->len = len;
  int r = (int)tbi_run_request(ins, j);
  if (r == 0 && len > 0)
    memcpy(buf, j->buf, strnlen(j->buf, len - 1) + 1);
  tbi_job_put(j);
  return r;
}

int tb_inspect_xattrs(struct tb_inspect *ins, size_t vol, const char *path, struct tb_xattrs *out)
{
  memset(out, 0, sizeof *out);
  struct job *j = tbi_job_new(ins, JOB_XATTRS, tbi_deadline_in(ins, 1));
  if (!j || tbi_job_path(j, path) < 0) {
    tbi_job_put(j);
    return -1;
  }
  j->vol = vol;
  int r = (int)tbi_run_request(ins, j);
  if (r == 0 && j->xattrs) {
    *out = *j->xattrs;
    free(j->xattrs);
    j->xattrs = NULL;
  }
  tbi_job_put(j);
  return r;
}

struct tb_ifile *tb_inspect_open_file(struct tb_inspect *ins, size_t vol, const char *path)
{
  struct tb_ifile *fh = calloc(1, sizeof *fh);
  struct job *j = fh ? tbi_job_new(ins, JOB_OPEN_FILE, tbi_deadline_in(ins, 1)) : NULL;
  if (!j || tbi_job_path(j, path) < 0) {
    free(fh);
    tbi_job_put(j);
    errno = ENOMEM;
    tb_error("out of memory");
    return NULL;
  }
  j->vol = vol;
  if (tbi_run_request(ins, j) < 0) {
    free(fh);
    fh = NULL;
  } else {
    fh->ins = ins;
    fh->file = j->file;
    fh->vol = vol;
    fh->size = j->st.size;
    fh->runs = j->runs;
    fh->n_runs = j->n_runs;
    j->runs = NULL;
  }
  tbi_job_put(j);
  return fh;
}

uint64_t tb_ifile_size(const struct tb_ifile *f)
{
  return f->size;
}

ssize_t tb_ifile_pread(struct tb_ifile *f, void *buf, size_t len, uint64_t off)
{
  if (off >= f->size)
    return 0;
  if (len > f->size - off)
    len = f->size - off;
  if (len == 0)
    return 0;
  if (f->runs)
    return tbi_mapped_pread(f, buf, len, off);
  struct job *j = tbi_job_new(f->ins, JOB_PREAD, tbi_deadline_in(f->ins, 1));
  if (!j || !(j->buf = malloc(len))) {
    tbi_job_put(j);
    errno = ENOMEM;
    return tb_error("out of memory reading a file");
  }
  j->file = f->file;
  j->vol = f->vol;
  j->off = off;
  j->len = len;
  ssize_t r = tbi_run_request(f->ins, j);
  if (r > 0)
    memcpy(buf, j->buf, (size_t)r);
  tbi_job_put(j);
  return r;
}

/* Never waits: the worker releases the file between jobs. */
void tb_ifile_close(struct tb_ifile *f)
{
  if (!f)
    return;
  struct tb_inspect *ins = f->ins;
  pthread_mutex_lock(&ins->mu);
  f->next_orphan = ins->orphans;
  ins->orphans = f;
  pthread_cond_signal(&ins->wake);
  pthread_mutex_unlock(&ins->mu);
}

/* A walk of volume VOL as a job that ends by DEADLINE_MS. */
int tbi_walk_request(struct tb_inspect *ins, size_t vol, const struct tb_ranges *dirty,
                     struct tb_disk *base, bool owners_only, tb_inspect_walk_fn fn, void *ctx,
                     int64_t deadline_ms)
{
  struct job *j = tbi_job_new(ins, JOB_WALK, deadline_ms);
  if (!j)
    return -1;
  j->vol = vol;
  j->walk_fn = fn;
  j->ctx = ctx;
  j->owners_only = owners_only;
  j->base = base ? tb_disk_ref(base) : NULL;
  if (dirty) {
    j->has_dirty = true;
    for (size_t i = 0; i < dirty->n; i++)
      if (tb_ranges_add(&j->dirty, dirty->v[i].off, dirty->v[i].len) < 0) {
        tbi_job_put(j);
        return -1;
      }
  }
  int r = (int)tbi_run_request(ins, j);
  tbi_job_put(j);
  return r;
}

/* A walk reads a whole tree: it gets TB_INSPECT_WALK_FACTOR budgets. */
int tb_inspect_walk(struct tb_inspect *ins, size_t vol, const struct tb_ranges *dirty,
                    tb_inspect_walk_fn fn, void *ctx)
{
  return tbi_walk_request(ins, vol, dirty, NULL, false, fn, ctx,
                          tbi_deadline_in(ins, TB_INSPECT_WALK_FACTOR));
}

int tb_inspect_owners(struct tb_inspect *ins, size_t vol, const struct tb_ranges *ranges,
                      tb_inspect_walk_fn fn, void *ctx)
{
  const struct tb_volume *v = tb_inspect_volume(ins, vol);
  if (!v) {
    errno = ENOENT;
    return tb_error("%s: no volume %zu", tb_disk_name(ins->disk), vol);
  }
  if (!ranges || !tb_ranges_intersect(ranges, v->offset, v->length))
    return 0;
  return tbi_walk_request(ins, vol, ranges, NULL, true, fn, ctx,
                          tbi_deadline_in(ins, TB_INSPECT_WALK_FACTOR));
}
