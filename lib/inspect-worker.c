/* SPDX-License-Identifier: BSD-3-Clause */
/* lib/inspect-worker.c: the worker thread of a handle, and the deadline.
 *
 * Each handle has one worker thread that alone touches libtsk and the
 * caches.  run_request() hands it one job at a time and waits until the
 * job's deadline plus DEADLINE_SLACK_MS; past that the job is abandoned, the
 * handle is stuck (requests fail at once) until the worker ends the job, and
 * the worker, holding references to the job, the handle and the disk, frees
 * them whenever that is.  Jobs are reference counted (job_new, job_put).
 * With no job the worker lists directories ahead (inspect-list.c).
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "inspect-internal.h"

#define DEADLINE_SLACK_MS 100 /* for a worker to answer its own deadline before it is abandoned */

void tbi_job_put(struct job *j)
{
  if (!j || atomic_fetch_sub(&j->refs, 1) != 1)
    return;
  free(j->path);
  free(j->buf);
  free(j->runs);
  tb_ranges_free(&j->dirty);
  tb_ranges_free(&j->franges);
  tb_disk_unref(j->base);
  tbi_index_put(j->index);
  if (j->xattrs) {
    tb_xattrs_free(j->xattrs);
    free(j->xattrs);
  }
  if (j->changes) {
    for (size_t i = 0; i < j->changes->len; i++)
      free(j->changes->ptr[i].path);
    tb_vector_free(j->changes);
    free(j->changes);
  }
  free(j);
}

void tbi_ins_put(struct tb_inspect *ins)
{
  if (atomic_fetch_sub(&ins->refs, 1) != 1)
    return;
  pthread_mutex_destroy(&ins->mu);
  pthread_mutex_destroy(&ins->cb_mu);
  pthread_cond_destroy(&ins->wake);
  pthread_cond_destroy(&ins->done);
  free(ins);
}

/* TB_INSPECT_TRACE set: each job says its kind and path on stderr when it
 * starts, so a test can count the trips to the worker (two thread hand-
 * offs each) that a command costs. */
static const char *const job_names[] = {
    [JOB_OPEN] = "open",         [JOB_STAT] = "stat",           [JOB_READDIR] = "readdir",
    [JOB_READLINK] = "readlink", [JOB_OPEN_FILE] = "open-file", [JOB_PREAD] = "pread",
    [JOB_WALK] = "walk",         [JOB_INDEX] = "index",         [JOB_IDIFF] = "idiff",
    [JOB_XATTRS] = "xattrs",     [JOB_FRANGES] = "franges",
};

bool tbi_tracing(void)
{
  static atomic_int trace = -1;
  if (trace < 0)
    trace = getenv("TB_INSPECT_TRACE") != NULL;
  return trace > 0;
}

static void trace_job(const struct job *j)
{
  if (tbi_tracing())
    fprintf(stderr, "tabula: inspect job: %s %s\n", job_names[j->kind], j->path ? j->path : "-");
}

static void run_job(struct tb_inspect *ins, struct job *j)
{
  trace_job(j);
  ins->running = j;
  ins->deadline_ms = j->deadline_ms;
  ins->deadline_hit = false;
  tsk_error_reset();
  switch (j->kind) {
  case JOB_OPEN:
    j->r = tbi_do_open(ins);
    break;
  case JOB_STAT:
    j->r = tbi_do_stat(ins, j);
    break;
  case JOB_READDIR:
    j->r = tbi_do_readdir(ins, j);
    break;
  case JOB_READLINK:
    j->r = tbi_do_readlink(ins, j);
    break;
  case JOB_OPEN_FILE:
    j->r = tbi_do_open_file(ins, j);
    break;
  case JOB_PREAD:
    j->r = tbi_do_pread(ins, j);
    break;
  case JOB_WALK:
    j->r = tbi_do_walk(ins, j);
    break;
  case JOB_INDEX:
    j->r = tbi_do_index(ins, j);
    break;
  case JOB_IDIFF:
    j->r = tbi_do_idiff(ins, j);
    break;
  case JOB_XATTRS:
    j->r = tbi_do_xattrs(ins, j);
    break;
  case JOB_FRANGES:
    j->r = tbi_do_franges(ins, j);
    break;
  }
  if (j->r < 0) {
    j->err = errno ? errno : EIO;
    snprintf(j->msg, sizeof j->msg, "%s", tb_errmsg());
  }
  ins->running = NULL;
}

/* The worker: runs the handle's jobs one at a time, releases closed files
 * between them, and at the end the handle's libtsk state.  It owns that
 * state: a job overrunning its deadline delays the release, never races it. */
void *tbi_worker_main(void *arg)
{
  struct tb_inspect *ins = arg;
  pthread_mutex_lock(&ins->mu);
  for (;;) {
    struct job *j = ins->job;
    if (ins->orphans && !ins->closing) {
      struct tb_ifile *files = ins->orphans;
      ins->orphans = NULL;
      pthread_mutex_unlock(&ins->mu);
      tbi_close_files(files);
      pthread_mutex_lock(&ins->mu);
    } else if (j && !j->started) {
      j->started = true;
      atomic_store(&ins->giving_up, false);
      pthread_mutex_unlock(&ins->mu);
      run_job(ins, j);
      pthread_mutex_lock(&ins->mu);
      j->done = true;
      ins->job = NULL;
      if (ins->stuck) {
        ins->stuck = false;
        atomic_fetch_sub(&tbi_n_stuck, 1);
        atomic_fetch_sub(&ins->disk->stuck, 1);
      }
      pthread_cond_broadcast(&ins->done);
      if (atomic_load(&j->abandoned) && j->file && j->kind == JOB_OPEN_FILE) {
        tsk_fs_file_close(j->file); /* opened for a caller who left */
        j->file = NULL;
      }
      tbi_job_put(j);
    } else if (ins->closing) {
      break;
    } else if (ins->n_ahead > 0) {
      /* Idle: list a directory a walker will likely open next. */
      ins->listing_ahead = true;
      pthread_mutex_unlock(&ins->mu);
      tbi_list_ahead(ins);
      pthread_mutex_lock(&ins->mu);
      ins->listing_ahead = false;
    } else {
      pthread_cond_wait(&ins->wake, &ins->mu);
    }
  }
  pthread_mutex_unlock(&ins->mu);
  tbi_teardown(ins);
  pthread_mutex_lock(&ins->mu);
  ins->ended = true;
  pthread_cond_broadcast(&ins->done);
  pthread_mutex_unlock(&ins->mu);
  tbi_ins_put(ins);
  return NULL;
}

static void abs_timespec(int64_t mono, struct timespec *ts)
{
  ts->tv_sec = (time_t)(mono / 1000);
  ts->tv_nsec = (long)(mono % 1000) * 1000000;
}

struct job *tbi_job_new(struct tb_inspect *ins, enum job_kind kind, int64_t deadline_ms)
{
  struct job *j = calloc(1, sizeof *j);
  if (!j) {
    errno = ENOMEM;
    tb_error("%s: out of memory", tb_disk_name(ins->disk));
    return NULL;
  }
  atomic_init(&j->refs, 1);
  atomic_init(&j->abandoned, false);
  j->kind = kind;
  j->deadline_ms = deadline_ms;
  return j;
}

int64_t tbi_deadline_in(struct tb_inspect *ins, int factor)
{
  return tbi_mono_ms() + factor * (int64_t)atomic_load(&ins->budget_ms);
}

/* Run J on the worker and wait for it, at most until its deadline (plus
 * DEADLINE_SLACK_MS for the worker to notice the deadline itself and answer
 * with its own error).  Past that the job is abandoned: the handle is stuck,
 * and every request answers EIO at once until the job ends.  Returns the
 * job's result, or -1 with errno EIO.  The caller keeps its reference. */
ssize_t tbi_run_request(struct tb_inspect *ins, struct job *j)
{
  struct timespec ts;
  abs_timespec(j->deadline_ms + DEADLINE_SLACK_MS, &ts);
  pthread_mutex_lock(&ins->mu);
  /* One job at a time: wait for the slot, as long as our own deadline allows. */
  while (ins->job && !ins->stuck && !ins->ended)
    if (pthread_cond_timedwait(&ins->done, &ins->mu, &ts) == ETIMEDOUT)
      break;
  if (ins->stuck || ins->job || ins->ended) {
    bool stuck = ins->stuck || ins->ended;
    pthread_mutex_unlock(&ins->mu);
    errno = EIO;
    return stuck ? tb_error("%s: an earlier request is still running past its deadline "
                            "(damaged filesystem?)",
                            tb_disk_name(ins->disk))
                 : tb_error("%s: busy with another request until the deadline",
                            tb_disk_name(ins->disk));
  }
  atomic_fetch_add(&j->refs, 1); /* the worker's */
  ins->job = j;
  pthread_cond_signal(&ins->wake);
  while (!j->done)
    if (pthread_cond_timedwait(&ins->done, &ins->mu, &ts) == ETIMEDOUT && !j->done) {
      atomic_store(&j->abandoned, true);
      atomic_store(&ins->giving_up, true);
      ins->stuck = true;
      atomic_fetch_add(&tbi_n_stuck, 1);
      atomic_fetch_add(&ins->disk->stuck, 1);
      pthread_cond_broadcast(&ins->done); /* requests waiting for the slot fail now */
      break;
    }
  bool ran = j->done;
  pthread_mutex_unlock(&ins->mu);
  if (!ran) {
    /* A callback of ours may be running: wait it out, none starts after. */
    pthread_mutex_lock(&ins->cb_mu);
    pthread_mutex_unlock(&ins->cb_mu);
    errno = EIO;
    return tb_error("%s: gave up on a request after its deadline (damaged filesystem?)",
                    tb_disk_name(ins->disk));
  }
  ssize_t r = j->r;
  if (r < 0) {
    tb_error("%s", j->msg);
    errno = j->err;
  }
  return r;
}
