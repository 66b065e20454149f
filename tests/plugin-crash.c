/* SPDX-License-Identifier: BSD-3-Clause */
/* plugin-crash: a write-and-flush workload that survives being crashed, and
 * its checker.  Run by plugin-crash.sh, which kill -9s nbdkit under it.
 *
 * The disk is treated as 4 KiB records.  Every write stamps each record it
 * covers with a header (magic, record number, sequence number) and a body
 * generated from (record, sequence), so any record read back is either zeros
 * (never written: the master is all zeros), or exactly one whole write, or
 * garbage -- and garbage, including a torn record, is detected.
 *
 * Bookkeeping, per record, kept in a state file across runs:
 *   durable  the newest sequence that must survive: acknowledged with FUA, or
 *            acknowledged before a flush that then completed (NBD's rule: a
 *            flush covers every write completed before it was sent, on any
 *            connection of a multi-conn export);
 *   issued   the newest sequence ever sent to it.
 * Two writes to one record are never in flight at once, so a record's writes
 * are totally ordered by sequence, and after a crash the record must read as
 * some sequence S with durable <= S <= issued.
 *
 * Each run first checks every record against the state file (exit 1 on any
 * violation, with details), then flushes, so what it read becomes the new
 * durable baseline, then writes until it has done -o writes or the server
 * goes away (exit 3: the expected end when the test kills nbdkit).  The state
 * file is rewritten on every exit.  --verify-only stops after the check.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libnbd.h>

#define REC 4096
#define MAX_CONNS 4
#define MAX_INFLIGHT 32
#define MAX_RUN 4                          /* records per write */
#define MAGIC UINT64_C(0x315f48534152435f) /* "_CRASH_1" */

struct rec_state {
  uint64_t durable, issued;
};

struct state {
  uint64_t magic, nrec, next_seq, runs;
  struct rec_state rec[];
};

struct wr {
  bool used, done, flush;
  int err;
  uint64_t first, n, seq;
  uint32_t flags;
  uint8_t *buf;
  /* for a flush: the completed writes it covers (indexes into the acked log) */
  size_t acked_upto;
};

/* Completed writes not yet known durable, in completion order. */
struct acked {
  uint64_t first, n, seq;
};

static const char *sock_path, *export_name = "", *state_file;
static int nconns = 2, max_inflight = 16;
static long nops = 1000000;
static bool verify_only;
static uint64_t seed;

static struct nbd_handle *h[MAX_CONNS];
static struct state *st;
static bool *busy; /* record has a write in flight */
static struct acked *acked;
static size_t n_acked, cap_acked, acked_durable_upto;

static uint64_t rng;
static uint64_t rnd(void)
{
  rng ^= rng >> 12;
  rng ^= rng << 25;
  rng ^= rng >> 27;
  return rng * UINT64_C(2685821657736338717);
}

static void gen_record(uint8_t *buf, uint64_t rec, uint64_t seq)
{
  uint64_t x = rec * UINT64_C(0x9E3779B97F4A7C15) ^ seq * UINT64_C(0xD1B54A32D192ED03);
  uint64_t hdr[3] = {MAGIC, rec, seq};
  memcpy(buf, hdr, sizeof hdr);
  for (size_t i = sizeof hdr; i < REC; i += 8) {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    uint64_t v = x * UINT64_C(2685821657736338717);
    memcpy(buf + i, &v, 8);
  }
}

/* Which sequence does BUF hold for record REC?  0 = zeros, -1 = neither
 * zeros nor a whole, well-formed write of this record. */
static int64_t decode_record(const uint8_t *buf, uint64_t rec)
{
  static const uint8_t zero[REC];
  if (memcmp(buf, zero, REC) == 0)
    return 0;
  uint64_t hdr[3];
  memcpy(hdr, buf, sizeof hdr);
  if (hdr[0] != MAGIC || hdr[1] != rec || hdr[2] == 0)
    return -1;
  uint8_t expect[REC];
  gen_record(expect, rec, hdr[2]);
  return memcmp(buf, expect, REC) == 0 ? (int64_t)hdr[2] : -1;
}

static int save_state(void)
{
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp", state_file);
  FILE *f = fopen(tmp, "w");
  size_t len = sizeof *st + st->nrec * sizeof st->rec[0];
  if (!f || fwrite(st, 1, len, f) != len || fclose(f) != 0 || rename(tmp, state_file) != 0) {
    perror(state_file);
    return -1;
  }
  return 0;
}

static int load_state(uint64_t nrec)
{
  size_t len = sizeof *st + nrec * sizeof st->rec[0];
  st = calloc(1, len);
  FILE *f = fopen(state_file, "r");
  if (!f) {
    st->magic = MAGIC;
    st->nrec = nrec;
    st->next_seq = 1;
    return 0;
  }
  if (fread(st, 1, len, f) != len || st->magic != MAGIC || st->nrec != nrec) {
    fprintf(stderr, "plugin-crash: %s does not match this disk\n", state_file);
    return -1;
  }
  fclose(f);
  return 0;
}

/* Read every record and check it against durable/issued.  Returns 0, -1 if a
 * record is wrong, -2 if the server could not be read. */
static int verify(void)
{
  const uint64_t chunk_recs = 256;
  uint8_t *buf = malloc(chunk_recs * REC);
  uint64_t bad = 0, at_durable = 0, newer = 0;
  for (uint64_t r0 = 0; r0 < st->nrec; r0 += chunk_recs) {
    uint64_t n = st->nrec - r0 < chunk_recs ? st->nrec - r0 : chunk_recs;
    if (nbd_pread(h[0], buf, n * REC, r0 * REC, 0) == -1) {
      fprintf(stderr, "plugin-crash: verify: read at %" PRIu64 ": %s\n", r0 * REC, nbd_get_error());
      free(buf);
      return -2;
    }
    for (uint64_t i = 0; i < n; i++) {
      uint64_t rec = r0 + i;
      struct rec_state *rs = &st->rec[rec];
      int64_t got = decode_record(buf + i * REC, rec);
      const char *why = NULL;
      if (got < 0)
        why = "is neither zeros nor one whole write of this record (torn or misplaced)";
      else if ((uint64_t)got < rs->durable)
        why = "lost a write that was acknowledged before a completed flush or with FUA";
      else if ((uint64_t)got > rs->issued)
        why = "holds a sequence number never written to it";
      if (why) {
        if (bad++ < 10)
          fprintf(stderr,
                  "plugin-crash: record %" PRIu64 " (offset %" PRIu64 ") %s: reads seq %" PRIi64
                  ", durable %" PRIu64 ", newest issued %" PRIu64 "\n",
                  rec, rec * REC, why, got, rs->durable, rs->issued);
        continue;
      }
      if ((uint64_t)got == rs->durable)
        at_durable++;
      else
        newer++;
      /* What survived is now the baseline; nothing newer can come back. */
      rs->durable = rs->issued = (uint64_t)got;
    }
  }
  free(buf);
  if (bad) {
    fprintf(stderr, "plugin-crash: %" PRIu64 " bad records (seed %" PRIu64 ")\n", bad, seed);
    return -1;
  }
  printf("verified %" PRIu64 " records after run %" PRIu64 ": %" PRIu64
         " hold their last durable write, %" PRIu64 " a newer unflushed one\n",
         st->nrec, st->runs, at_durable, newer);
  fflush(stdout);
  return 0;
}

static int completed(void *user_data, int *error)
{
  struct wr *w = user_data;
  w->done = true;
  w->err = *error;
  return 1;
}

static void note_acked(const struct wr *w)
{
  if (n_acked == cap_acked) {
    cap_acked = cap_acked ? cap_acked * 2 : 4096;
    acked = realloc(acked, cap_acked * sizeof *acked);
    if (!acked)
      abort();
  }
  acked[n_acked++] = (struct acked){w->first, w->n, w->seq};
}

static void make_durable(uint64_t first, uint64_t n, uint64_t seq)
{
  for (uint64_t r = first; r < first + n; r++)
    if (st->rec[r].durable < seq)
      st->rec[r].durable = seq;
}

/* Handle finished commands.  Returns -1 when one failed. */
static int reap(struct wr *ws)
{
  int rc = 0;
  for (int i = 0; i < max_inflight; i++) {
    struct wr *w = &ws[i];
    if (!w->used || !w->done)
      continue;
    if (w->err) {
      if (rc == 0)
        fprintf(stderr, "plugin-crash: %s seq %" PRIu64 " failed: %s\n",
                w->flush ? "flush" : "write", w->seq, strerror(w->err));
      rc = -1;
    } else if (w->flush) {
      /* Every write completed before this flush was sent is now durable. */
      for (size_t k = acked_durable_upto; k < w->acked_upto; k++)
        make_durable(acked[k].first, acked[k].n, acked[k].seq);
      if (w->acked_upto > acked_durable_upto)
        acked_durable_upto = w->acked_upto;
    } else {
      note_acked(w);
      if (w->flags & LIBNBD_CMD_FLAG_FUA)
        make_durable(w->first, w->n, w->seq);
    }
    if (!w->flush)
      for (uint64_t r = w->first; r < w->first + w->n; r++)
        busy[r] = false;
    free(w->buf);
    memset(w, 0, sizeof *w);
  }
  return rc;
}

static int pump(void)
{
  struct pollfd fds[MAX_CONNS];
  for (int i = 0; i < nconns; i++) {
    fds[i].fd = nbd_aio_get_fd(h[i]);
    fds[i].revents = 0;
    unsigned dir = nbd_aio_get_direction(h[i]);
    fds[i].events = (dir & LIBNBD_AIO_DIRECTION_READ ? POLLIN : 0) |
                    (dir & LIBNBD_AIO_DIRECTION_WRITE ? POLLOUT : 0);
  }
  if (poll(fds, (nfds_t)nconns, 30000) <= 0) {
    fprintf(stderr, "plugin-crash: no progress for 30 s\n");
    return -1;
  }
  for (int i = 0; i < nconns; i++) {
    int r = 0;
    if (fds[i].revents & (POLLIN | POLLHUP | POLLERR))
      r = nbd_aio_notify_read(h[i]);
    else if (fds[i].revents & POLLOUT)
      r = nbd_aio_notify_write(h[i]);
    if (r == -1 || nbd_aio_is_dead(h[i]))
      return -1;
  }
  return 0;
}

static int start_write(struct wr *w)
{
  uint64_t n = 1 + rnd() % MAX_RUN;
  uint64_t first = rnd() % st->nrec;
  if (first + n > st->nrec)
    n = st->nrec - first;
  for (uint64_t r = first; r < first + n; r++)
    if (busy[r])
      return 1; /* try another place */
  w->used = true;
  w->first = first;
  w->n = n;
  w->seq = st->next_seq++;
  w->flags = rnd() % 8 == 0 ? LIBNBD_CMD_FLAG_FUA : 0;
  w->buf = malloc(n * REC);
  for (uint64_t r = first; r < first + n; r++) {
    gen_record(w->buf + (r - first) * REC, r, w->seq);
    busy[r] = true;
    st->rec[r].issued = w->seq;
  }
  int c = (int)(rnd() % (uint64_t)nconns);
  return nbd_aio_pwrite(h[c], w->buf, n * REC, first * REC,
                        (nbd_completion_callback){.callback = completed, .user_data = w},
                        w->flags) == -1
             ? -1
             : 0;
}

static int start_flush(struct wr *w)
{
  w->used = true;
  w->flush = true;
  w->acked_upto = n_acked;
  int c = (int)(rnd() % (uint64_t)nconns);
  return nbd_aio_flush(h[c], (nbd_completion_callback){.callback = completed, .user_data = w}, 0) ==
                 -1
             ? -1
             : 0;
}

/* Returns 0 when all writes were done, 3 when the server went away. */
static int workload(void)
{
  struct wr ws[MAX_INFLIGHT];
  memset(ws, 0, sizeof ws);
  long done = 0;
  uint64_t flushes = 0, writes = 0;
  int rc = 0;
  while (rc == 0) {
    int inflight = 0;
    for (int i = 0; i < max_inflight; i++)
      inflight += ws[i].used;
    if (done >= nops && inflight == 0)
      break;
    for (int i = 0; i < max_inflight && done < nops; i++) {
      if (ws[i].used)
        continue;
      int r = rnd() % 16 == 0 ? start_flush(&ws[i]) : start_write(&ws[i]);
      if (r == 1)
        continue;
      if (r == -1) {
        rc = 3;
        break;
      }
      if (ws[i].flush)
        flushes++;
      else
        writes++;
      done++;
    }
    if (rc == 0 && (pump() == -1 || reap(ws) == -1))
      rc = 3;
  }
  reap(ws); /* commands that completed before the failure still count */
  printf("run %" PRIu64 ": %" PRIu64 " writes and %" PRIu64 " flushes sent; %s\n", st->runs, writes,
         flushes, rc == 3 ? "the server went away" : "all done");
  return rc;
}

static void usage(FILE *f)
{
  fprintf(f, "usage: plugin-crash -s SOCKET -e EXPORT -f STATE-FILE [-o WRITES] [-n CONNS]\n"
             "                    [-d INFLIGHT] [-S SEED] [--verify-only]\n");
}

int main(int argc, char **argv)
{
  bool have_seed = false;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(a, "--verify-only")) {
      verify_only = true;
    } else if (v && !strcmp(a, "-s")) {
      sock_path = v, i++;
    } else if (v && !strcmp(a, "-e")) {
      export_name = v, i++;
    } else if (v && !strcmp(a, "-f")) {
      state_file = v, i++;
    } else if (v && !strcmp(a, "-o")) {
      nops = atol(v), i++;
    } else if (v && !strcmp(a, "-n")) {
      nconns = atoi(v), i++;
    } else if (v && !strcmp(a, "-d")) {
      max_inflight = atoi(v), i++;
    } else if (v && !strcmp(a, "-S")) {
      seed = strtoull(v, NULL, 0), have_seed = true, i++;
    } else {
      usage(stderr);
      return 1;
    }
  }
  if (!sock_path || !state_file || nconns < 1 || nconns > MAX_CONNS || max_inflight < 2 ||
      max_inflight > MAX_INFLIGHT) {
    usage(stderr);
    return 1;
  }
  if (!have_seed)
    seed = (uint64_t)time(NULL) * 1000003u + (uint64_t)getpid();
  rng = seed ? seed : 1;
  printf("seed %" PRIu64 "\n", seed);
  fflush(stdout);

  for (int i = 0; i < nconns; i++) {
    h[i] = nbd_create();
    if (!h[i] || nbd_set_export_name(h[i], export_name) == -1 ||
        nbd_connect_unix(h[i], sock_path) == -1) {
      fprintf(stderr, "plugin-crash: connect: %s\n", nbd_get_error());
      return 2;
    }
  }
  int64_t size = nbd_get_size(h[0]);
  if (size < REC || nbd_can_flush(h[0]) != 1 || nbd_can_fua(h[0]) != 1 ||
      nbd_can_multi_conn(h[0]) != 1) {
    fprintf(stderr,
            "plugin-crash: the export must have flush, FUA and multi-conn (size %" PRIi64 ")\n",
            size);
    return 1;
  }
  if (load_state((uint64_t)size / REC) == -1)
    return 1;
  busy = calloc(st->nrec, sizeof *busy);

  int v = verify();
  if (v == -2)
    return 3; /* the server went away: the state file is left as it was */
  if (v == -1)
    return 1;
  if (nbd_flush(h[0], 0) == -1) {
    fprintf(stderr, "plugin-crash: flush after verify: %s\n", nbd_get_error());
    return 3;
  }
  if (save_state() == -1)
    return 1;
  if (verify_only)
    return 0;

  st->runs++;
  int rc = workload();
  if (save_state() == -1)
    return 1;
  for (int i = 0; i < nconns; i++) {
    if (rc == 0)
      nbd_shutdown(h[i], 0);
    nbd_close(h[i]);
  }
  return rc;
}
