/* SPDX-License-Identifier: BSD-3-Clause */
/* bench-iscsi-load: a small libiscsi load generator for scripts/bench-iscsi.sh.
 *
 *   bench-iscsi-load URL randread|randwrite|seqread|seqwrite BLOCK QD SECONDS [SPAN]
 *
 * Logs in to URL (iscsi://HOST:PORT/TARGET/LUN) as one initiator, keeps QD
 * READ(16)/WRITE(16) commands of BLOCK bytes in flight for SECONDS over the
 * first SPAN bytes of the LUN (default: all of it), random offsets aligned
 * to BLOCK or sequential, and prints "IOPS MiB/s" of the completed commands.
 * Any failed command is an error (exit 1).  iscsi-perf (libiscsi-bin) reads
 * only; this writes too, with the same async libiscsi event loop.
 *
 * Built by the bench script: cc -O2 bench-iscsi-load.c -liscsi.
 */
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

static struct iscsi_context *ctx;
static struct iscsi_url *url;
static uint32_t bs, lbs = 512;
static uint64_t span_blocks, seq_next, done_ops, errors;
static int writing, random_io, inflight;
static double deadline;
static unsigned char *wbuf;
static uint64_t rng = 88172645463325252ull;

static double now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t next_lba(void)
{
  uint64_t per = bs / lbs, slots = span_blocks / per;
  uint64_t slot;
  if (random_io) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    slot = rng % slots;
  } else {
    slot = seq_next++ % slots;
  }
  return slot * per;
}

static void submit(void);

static void done(struct iscsi_context *i, int status, void *data, void *priv)
{
  (void)i;
  (void)priv;
  struct scsi_task *task = data;
  inflight--;
  if (status != SCSI_STATUS_GOOD) {
    if (errors++ == 0)
      fprintf(stderr, "bench-iscsi-load: a command failed: %s\n", iscsi_get_error(ctx));
  } else {
    done_ops++;
  }
  scsi_free_scsi_task(task);
  if (now() < deadline)
    submit();
}

static void submit(void)
{
  uint64_t lba = next_lba();
  struct scsi_task *t =
      writing
          ? iscsi_write16_task(ctx, url->lun, lba, wbuf, bs, (int)lbs, 0, 0, 0, 0, 0, done, NULL)
          : iscsi_read16_task(ctx, url->lun, lba, bs, (int)lbs, 0, 0, 0, 0, 0, done, NULL);
  if (!t) {
    fprintf(stderr, "bench-iscsi-load: cannot queue a command: %s\n", iscsi_get_error(ctx));
    exit(1);
  }
  inflight++;
}

int main(int argc, char **argv)
{
  if (argc < 6) {
    fprintf(stderr, "usage: bench-iscsi-load URL randread|randwrite|seqread|seqwrite BLOCK QD "
                    "SECONDS [SPAN]\n");
    return 2;
  }
  writing = strstr(argv[2], "write") != NULL;
  random_io = strncmp(argv[2], "rand", 4) == 0;
  bs = (uint32_t)strtoul(argv[3], NULL, 0);
  int qd = atoi(argv[4]);
  double secs = atof(argv[5]);
  ctx = iscsi_create_context("iqn.2024-01.lan.tabula.bench:load");
  if (!ctx || !(url = iscsi_parse_full_url(ctx, argv[1]))) {
    fprintf(stderr, "bench-iscsi-load: %s: %s\n", argv[1],
            ctx ? iscsi_get_error(ctx) : "no memory");
    return 1;
  }
  iscsi_set_targetname(ctx, url->target);
  iscsi_set_session_type(ctx, ISCSI_SESSION_NORMAL);
  iscsi_set_header_digest(ctx, ISCSI_HEADER_DIGEST_NONE);
  if (iscsi_full_connect_sync(ctx, url->portal, url->lun) != 0) {
    fprintf(stderr, "bench-iscsi-load: login to %s: %s\n", argv[1], iscsi_get_error(ctx));
    return 1;
  }
  struct scsi_task *cap = iscsi_readcapacity16_sync(ctx, url->lun);
  struct scsi_readcapacity16 *rc16 = cap ? scsi_datain_unmarshall(cap) : NULL;
  if (!rc16) {
    fprintf(stderr, "bench-iscsi-load: READ CAPACITY(16): %s\n", iscsi_get_error(ctx));
    return 1;
  }
  lbs = rc16->block_length;
  span_blocks = rc16->returned_lba + 1;
  scsi_free_scsi_task(cap);
  if (argc > 6) {
    uint64_t span = strtoull(argv[6], NULL, 0) / lbs;
    if (span && span < span_blocks)
      span_blocks = span;
  }
  wbuf = malloc(bs);
  for (uint32_t k = 0; k < bs; k++)
    wbuf[k] = (unsigned char)(k * 131 + 7);
  double start = now();
  deadline = start + secs;
  for (int k = 0; k < qd; k++)
    submit();
  while (inflight > 0) {
    struct pollfd pfd = {.fd = iscsi_get_fd(ctx), .events = (short)iscsi_which_events(ctx)};
    if (poll(&pfd, 1, 1000) < 0 || iscsi_service(ctx, pfd.revents) < 0) {
      fprintf(stderr, "bench-iscsi-load: %s\n", iscsi_get_error(ctx));
      return 1;
    }
  }
  double el = now() - start;
  printf("%.0f %.1f\n", (double)done_ops / el, (double)done_ops * bs / el / 1048576.0);
  iscsi_logout_sync(ctx);
  iscsi_destroy_url(url);
  iscsi_destroy_context(ctx);
  return errors ? 1 : 0;
}
