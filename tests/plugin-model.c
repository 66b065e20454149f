/* SPDX-License-Identifier: BSD-3-Clause */
/* plugin-model: a randomized model test of one export over several connections.
 *
 * It keeps the expected content of the whole disk in memory and drives the
 * server with thousands of random requests -- reads, writes (some FUA), write
 * zeroes (with and without FAST_ZERO / NO_HOLE), trims, flushes and block
 * status -- of random size and alignment: sub-block, aligned, unaligned
 * multi-block, large, and crowded against the end of the disk.  Every byte
 * read is checked against the model.
 *
 * Concurrency: work comes in rounds.  A "batch" round sends up to
 * --inflight requests at once, spread over the connections with the aio API,
 * whose byte ranges do not overlap (they may share blocks: that exercises the
 * server's read-modify-write locking); the result must equal any serial order,
 * which for disjoint ranges is unique.  A "serial" round hammers one small hot
 * region with overlapping requests, each on a random connection, waiting for
 * each before sending the next: a write acknowledged on one connection must be
 * seen by a read on another (one shared overlay per client).
 *
 * Trim: bytes a trim covered may read back as zeros or as their old content
 * (the plugin zeroes whole blocks and leaves partial ones).  The model tracks
 * such bytes as "old-or-zero" and pins them to what is first read.  A failed
 * FAST_ZERO (ENOTSUP) is treated the same way.
 *
 * Block status: an extent flagged ZERO must read as zeros; extents must tile
 * the range asked for, in order, without gaps.
 *
 * At the end every connection reads the whole disk, then (with -r) all are
 * closed and one new connection -- a new session -- reads it again: with the
 * persist policy the data must still be there.
 *
 * Seeded and reproducible: the seed is printed first; -S SEED replays it.
 * Exit 0 pass, 1 mismatch or unexpected error, 2 cannot connect.
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

#define MAX_CONNS 8
#define MAX_INFLIGHT 32
#define BLK 4096 /* the plugin's default block size: what alignments are relative to */

enum op_type { OP_READ, OP_WRITE, OP_ZERO, OP_TRIM, OP_FLUSH, OP_STATUS };
static const char *op_names[] = {"read", "write", "zero", "trim", "flush", "block-status"};

struct op {
  enum op_type type;
  uint64_t off, len;
  uint32_t flags;
  int conn;
  uint64_t seq;
  /* in flight */
  uint8_t *buf;
  bool done;
  int err;
};

/* Options. */
static const char *sock_path;
static const char *export_name = "";
static const char *base_file;
static int nconns = 4;
static long nops = 4000;
static int max_inflight = 8;
static bool reconnect_check;
static uint64_t seed;

static struct nbd_handle *h[MAX_CONNS];
static uint64_t disk_size;
static uint8_t *model;  /* expected byte */
static uint8_t *maybe0; /* 1: the byte may also read as zero (trimmed) */
static bool fast_zero_ok;

/* The history, to explain a mismatch. */
static struct op *history;
static size_t n_history, cap_history;

static uint64_t stats[6], n_fast_zero_enotsup;

/* xorshift64*: small, fast, reproducible everywhere. */
static uint64_t rng_state;
static uint64_t rnd(void)
{
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * UINT64_C(2685821657736338717);
}
static uint64_t rnd_below(uint64_t n)
{
  return n ? rnd() % n : 0;
}

static void record(const struct op *op)
{
  if (n_history == cap_history) {
    cap_history = cap_history ? cap_history * 2 : 1024;
    history = realloc(history, cap_history * sizeof *history);
    if (!history)
      abort();
  }
  history[n_history] = *op;
  history[n_history].buf = NULL;
  n_history++;
}

static void explain(uint64_t byte)
{
  fprintf(stderr, "plugin-model: requests that touched offset %" PRIu64 " (block %" PRIu64 "):\n",
          byte, byte / BLK);
  for (size_t i = 0; i < n_history; i++) {
    const struct op *op = &history[i];
    if (op->type == OP_FLUSH || op->type == OP_READ || op->type == OP_STATUS)
      continue;
    if (op->off / BLK <= byte / BLK && byte / BLK <= (op->off + op->len - 1) / BLK)
      fprintf(stderr, "  #%" PRIu64 " conn %d %s off %" PRIu64 " len %" PRIu64 " flags 0x%x%s\n",
              op->seq, op->conn, op_names[op->type], op->off, op->len, op->flags,
              op->off <= byte && byte < op->off + op->len ? "  (covers the byte)" : "");
  }
  fprintf(stderr, "plugin-model: replay with -S %" PRIu64 "\n", seed);
}

/* Check BUF (read at OFF) against the model, pinning old-or-zero bytes. */
static int check_read(const char *what, const uint8_t *buf, uint64_t off, uint64_t len)
{
  for (uint64_t i = 0; i < len; i++) {
    uint64_t x = off + i;
    if (buf[i] == model[x]) {
      maybe0[x] = 0;
      continue;
    }
    if (maybe0[x] && buf[i] == 0) {
      model[x] = 0;
      maybe0[x] = 0;
      continue;
    }
    fprintf(stderr,
            "plugin-model: %s: byte at offset %" PRIu64 " reads 0x%02x, expected 0x%02x%s\n", what,
            x, buf[i], model[x], maybe0[x] ? " or 0x00 (trimmed)" : "");
    explain(x);
    return -1;
  }
  return 0;
}

/* Apply a completed modifying request to the model. */
static void apply(const struct op *op)
{
  switch (op->type) {
  case OP_WRITE:
    memcpy(model + op->off, op->buf, op->len);
    memset(maybe0 + op->off, 0, op->len);
    break;
  case OP_ZERO:
    memset(model + op->off, 0, op->len);
    memset(maybe0 + op->off, 0, op->len);
    break;
  case OP_TRIM:
    memset(maybe0 + op->off, 1, op->len);
    break;
  default:
    break;
  }
}

/* A random range: the alignment classes the plugin must get right. */
static void random_range(uint64_t *off, uint64_t *len)
{
  uint64_t o, l;
  switch (rnd_below(10)) {
  case 0:
  case 1: /* sub-block, unaligned */
    l = 1 + rnd_below(BLK);
    o = rnd_below(disk_size);
    break;
  case 2:
  case 3:
  case 4: /* whole aligned blocks */
    l = BLK * (1 + rnd_below(8));
    o = BLK * rnd_below(disk_size / BLK);
    break;
  case 5:
  case 6: /* unaligned, spanning blocks */
    l = 1 + rnd_below(16 * BLK);
    o = rnd_below(disk_size);
    break;
  case 7: /* 512-byte sectors, the guest's usual unit */
    l = 512 * (1 + rnd_below(24));
    o = 512 * rnd_below(disk_size / 512);
    break;
  case 8: /* crowded against the end of the disk */
    l = 1 + rnd_below(3 * BLK);
    o = disk_size - rnd_below(4 * BLK + 1);
    break;
  default: /* large */
    l = 1 + rnd_below(1024 * 1024);
    o = rnd_below(disk_size);
    if (rnd_below(2))
      o &= ~(uint64_t)(BLK - 1);
    break;
  }
  if (o >= disk_size)
    o = disk_size - 1;
  if (l > disk_size - o)
    l = disk_size - o;
  *off = o;
  *len = l;
}

static enum op_type random_type(void)
{
  uint64_t r = rnd_below(100);
  if (r < 35)
    return OP_READ;
  if (r < 65)
    return OP_WRITE;
  if (r < 78)
    return OP_ZERO;
  if (r < 90)
    return OP_TRIM;
  if (r < 95)
    return OP_FLUSH;
  return OP_STATUS;
}

static void make_op(struct op *op, enum op_type type, uint64_t off, uint64_t len)
{
  static uint64_t seq;
  memset(op, 0, sizeof *op);
  op->type = type;
  op->off = off;
  op->len = len;
  op->conn = (int)rnd_below((uint64_t)nconns);
  op->seq = ++seq;
  switch (type) {
  case OP_WRITE:
    if (rnd_below(5) == 0)
      op->flags |= LIBNBD_CMD_FLAG_FUA;
    op->buf = malloc(len);
    for (uint64_t i = 0; i < len; i++)
      op->buf[i] = (uint8_t)(rnd() >> 56);
    break;
  case OP_READ:
    op->buf = malloc(len);
    break;
  case OP_ZERO:
    if (rnd_below(4) == 0)
      op->flags |= LIBNBD_CMD_FLAG_FUA;
    if (rnd_below(4) == 0)
      op->flags |= LIBNBD_CMD_FLAG_NO_HOLE;
    else if (fast_zero_ok && rnd_below(3) == 0)
      op->flags |= LIBNBD_CMD_FLAG_FAST_ZERO;
    break;
  case OP_TRIM:
    if (rnd_below(4) == 0)
      op->flags |= LIBNBD_CMD_FLAG_FUA;
    break;
  default:
    break;
  }
}

static int completed(void *user_data, int *error)
{
  struct op *op = user_data;
  op->done = true;
  op->err = *error;
  return 1;
}

static int64_t start_op(struct op *op)
{
  struct nbd_handle *c = h[op->conn];
  nbd_completion_callback cb = {.callback = completed, .user_data = op};
  switch (op->type) {
  case OP_READ:
    return nbd_aio_pread(c, op->buf, op->len, op->off, cb, 0);
  case OP_WRITE:
    return nbd_aio_pwrite(c, op->buf, op->len, op->off, cb, op->flags);
  case OP_ZERO:
    return nbd_aio_zero(c, op->len, op->off, cb, op->flags);
  case OP_TRIM:
    return nbd_aio_trim(c, op->len, op->off, cb, op->flags);
  case OP_FLUSH:
    return nbd_aio_flush(c, cb, 0);
  default:
    abort();
  }
}

/* Drive every connection until no command is in flight. */
static int wait_all(void)
{
  for (;;) {
    struct pollfd fds[MAX_CONNS];
    int busy = 0;
    for (int i = 0; i < nconns; i++) {
      fds[i].fd = -1;
      fds[i].events = 0;
      fds[i].revents = 0;
      if (nbd_aio_in_flight(h[i]) <= 0)
        continue;
      busy++;
      fds[i].fd = nbd_aio_get_fd(h[i]);
      unsigned dir = nbd_aio_get_direction(h[i]);
      if (dir & LIBNBD_AIO_DIRECTION_READ)
        fds[i].events |= POLLIN;
      if (dir & LIBNBD_AIO_DIRECTION_WRITE)
        fds[i].events |= POLLOUT;
    }
    if (!busy)
      return 0;
    if (poll(fds, (nfds_t)nconns, 30000) <= 0) {
      fprintf(stderr, "plugin-model: no progress for 30 s (server hung?)\n");
      return -1;
    }
    for (int i = 0; i < nconns; i++) {
      if (fds[i].fd == -1)
        continue;
      int r = 0;
      if (fds[i].revents & (POLLIN | POLLHUP | POLLERR))
        r = nbd_aio_notify_read(h[i]);
      else if (fds[i].revents & POLLOUT)
        r = nbd_aio_notify_write(h[i]);
      if (r == -1 || nbd_aio_is_dead(h[i])) {
        fprintf(stderr, "plugin-model: connection %d: %s\n", i, nbd_get_error());
        return -1;
      }
    }
  }
}

/* Judge a completed request; apply it to the model.  READs are checked. */
static int finish(struct op *op)
{
  int rc = 0;
  record(op);
  stats[op->type]++;
  if (op->err == ENOTSUP && op->type == OP_ZERO && (op->flags & LIBNBD_CMD_FLAG_FAST_ZERO)) {
    n_fast_zero_enotsup++;
    memset(maybe0 + op->off, 1, op->len);
  } else if (op->err) {
    fprintf(stderr,
            "plugin-model: #%" PRIu64 " %s off %" PRIu64 " len %" PRIu64
            " flags 0x%x on conn %d failed: %s\n",
            op->seq, op_names[op->type], op->off, op->len, op->flags, op->conn, strerror(op->err));
    rc = -1;
  } else if (op->type == OP_READ) {
    char what[96];
    snprintf(what, sizeof what, "#%" PRIu64 " read off %" PRIu64 " len %" PRIu64 " conn %d",
             op->seq, op->off, op->len, op->conn);
    rc = check_read(what, op->buf, op->off, op->len);
  } else {
    apply(op);
  }
  free(op->buf);
  op->buf = NULL;
  return rc;
}

struct status_ctx {
  uint64_t off, len, next;
  int bad;
};

static int status_cb(void *user_data, const char *metacontext, uint64_t offset, uint32_t *entries,
                     size_t nr_entries, int *error)
{
  struct status_ctx *sc = user_data;
  if (strcmp(metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
    return 0;
  if (offset != sc->off || nr_entries < 2) {
    fprintf(stderr, "plugin-model: block status of %" PRIu64 ": reply starts at %" PRIu64 "\n",
            sc->off, offset);
    sc->bad = 1;
    return 0;
  }
  for (size_t i = 0; i + 1 < nr_entries; i += 2) {
    uint64_t len = entries[i];
    uint32_t flags = entries[i + 1];
    if (len == 0) {
      fprintf(stderr, "plugin-model: block status: zero-length extent at %" PRIu64 "\n", offset);
      sc->bad = 1;
      return 0;
    }
    uint64_t end = offset + len > sc->off + sc->len ? sc->off + sc->len : offset + len;
    if (flags & LIBNBD_STATE_ZERO) {
      for (uint64_t x = offset; x < end; x++) {
        if (model[x] == 0 || maybe0[x]) {
          model[x] = 0;
          maybe0[x] = 0;
          continue;
        }
        fprintf(stderr,
                "plugin-model: block status says [%" PRIu64 ", +%" PRIu64
                ") reads as zeros, but byte %" PRIu64 " is 0x%02x\n",
                offset, len, x, model[x]);
        explain(x);
        sc->bad = 1;
        return 0;
      }
    }
    offset += len;
    if (offset >= sc->off + sc->len)
      break;
  }
  sc->next = offset;
  return 0;
}

/* Block status of [off, off+len) on connection C, checked against the model. */
static int check_status(int c, uint64_t off, uint64_t len)
{
  uint64_t end = off + len;
  while (off < end) {
    uint64_t l = end - off > (1u << 30) ? (1u << 30) : end - off;
    struct status_ctx sc = {.off = off, .len = l, .next = off};
    if (nbd_block_status(h[c], l, off,
                         (nbd_extent_callback){.callback = status_cb, .user_data = &sc}, 0) == -1) {
      fprintf(stderr, "plugin-model: block status off %" PRIu64 " len %" PRIu64 ": %s\n", off, l,
              nbd_get_error());
      return -1;
    }
    if (sc.bad)
      return -1;
    if (sc.next <= off) {
      fprintf(stderr, "plugin-model: block status at %" PRIu64 " made no progress\n", off);
      return -1;
    }
    off = sc.next;
  }
  stats[OP_STATUS]++;
  return 0;
}

static bool overlaps(const struct op *ops, int n, uint64_t off, uint64_t len)
{
  for (int i = 0; i < n; i++)
    if (ops[i].type != OP_FLUSH && off < ops[i].off + ops[i].len && ops[i].off < off + len)
      return true;
  return false;
}

/* A batch: up to max_inflight requests with disjoint ranges, all in flight at once. */
static int batch_round(long *budget)
{
  struct op ops[MAX_INFLIGHT];
  int n = 0, want = 1 + (int)rnd_below((uint64_t)max_inflight);
  for (int tries = 0; n<want && * budget> 0 && tries < 4 * want; tries++) {
    enum op_type t = random_type();
    if (t == OP_STATUS)
      t = OP_READ;
    uint64_t off = 0, len = 0;
    if (t != OP_FLUSH) {
      random_range(&off, &len);
      if (overlaps(ops, n, off, len))
        continue;
    }
    make_op(&ops[n], t, off, len);
    if (start_op(&ops[n]) == -1) {
      fprintf(stderr, "plugin-model: sending %s: %s\n", op_names[t], nbd_get_error());
      return -1;
    }
    n++;
    (*budget)--;
  }
  if (wait_all() == -1)
    return -1;
  int rc = 0;
  for (int i = 0; i < n; i++) {
    if (!ops[i].done) {
      fprintf(stderr, "plugin-model: #%" PRIu64 " never completed\n", ops[i].seq);
      rc = -1;
    } else if (finish(&ops[i]) == -1) {
      rc = -1;
    }
  }
  return rc;
}

/* A serial round: overlapping requests on one hot region, one at a time,
 * each on a random connection. */
static int serial_round(long *budget)
{
  uint64_t span = 3 * BLK;
  uint64_t base = rnd_below(disk_size > span ? disk_size - span : 1);
  if (rnd_below(5) == 0)
    base = disk_size > span ? disk_size - span : 0;
  int count = 3 + (int)rnd_below(6);
  for (int i = 0; i<count && * budget> 0; i++, (*budget)--) {
    enum op_type t = random_type();
    uint64_t off = base + rnd_below(span), len = 1 + rnd_below(span);
    if (off >= disk_size)
      off = disk_size - 1;
    if (len > disk_size - off)
      len = disk_size - off;
    if (t == OP_STATUS) {
      if (check_status((int)rnd_below((uint64_t)nconns), off, len) == -1)
        return -1;
      continue;
    }
    struct op op;
    make_op(&op, t, off, len);
    if (start_op(&op) == -1 || wait_all() == -1) {
      fprintf(stderr, "plugin-model: %s: %s\n", op_names[t], nbd_get_error());
      return -1;
    }
    if (finish(&op) == -1)
      return -1;
  }
  return 0;
}

static int read_all(int c, const char *what)
{
  uint64_t chunk = 4 * 1024 * 1024;
  uint8_t *buf = malloc(chunk);
  int rc = 0;
  for (uint64_t off = 0; off < disk_size && rc == 0; off += chunk) {
    uint64_t len = disk_size - off < chunk ? disk_size - off : chunk;
    if (nbd_pread(h[c], buf, len, off, 0) == -1) {
      fprintf(stderr, "plugin-model: %s: read off %" PRIu64 ": %s\n", what, off, nbd_get_error());
      rc = -1;
    } else {
      rc = check_read(what, buf, off, len);
    }
  }
  free(buf);
  return rc;
}

static int connect_one(int i)
{
  h[i] = nbd_create();
  if (!h[i] || nbd_set_export_name(h[i], export_name) == -1 ||
      nbd_add_meta_context(h[i], LIBNBD_CONTEXT_BASE_ALLOCATION) == -1 ||
      nbd_connect_unix(h[i], sock_path) == -1) {
    fprintf(stderr, "plugin-model: connect %d to '%s': %s\n", i, export_name, nbd_get_error());
    return -1;
  }
  return 0;
}

static void disconnect_all(int n)
{
  for (int i = 0; i < n; i++) {
    nbd_shutdown(h[i], 0);
    nbd_close(h[i]);
    h[i] = NULL;
  }
}

/* The plugin promises all of these; a missing one is a failure with its name. */
static int check_capabilities(void)
{
  struct {
    const char *name;
    int (*fn)(struct nbd_handle *);
  } caps[] = {
      {"flush", nbd_can_flush},
      {"fua", nbd_can_fua},
      {"trim", nbd_can_trim},
      {"write zeroes", nbd_can_zero},
      {"multi-conn", nbd_can_multi_conn},
  };
  int rc = 0;
  for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++) {
    if (caps[i].fn(h[0]) != 1) {
      fprintf(stderr, "plugin-model: the export does not advertise %s\n", caps[i].name);
      rc = -1;
    }
  }
  if (nbd_is_read_only(h[0]) != 0) {
    fprintf(stderr, "plugin-model: the export is read-only\n");
    rc = -1;
  }
  if (nbd_can_meta_context(h[0], LIBNBD_CONTEXT_BASE_ALLOCATION) != 1) {
    fprintf(stderr, "plugin-model: the export does not offer base:allocation\n");
    rc = -1;
  }
  fast_zero_ok = nbd_can_fast_zero(h[0]) == 1;
  int64_t min = nbd_get_block_size(h[0], LIBNBD_SIZE_MINIMUM);
  int64_t pref = nbd_get_block_size(h[0], LIBNBD_SIZE_PREFERRED);
  printf("capabilities ok; fast zero %s; block size minimum %" PRIi64 " preferred %" PRIi64 "\n",
         fast_zero_ok ? "yes" : "no", min, pref);
  if (min > 1) {
    fprintf(stderr,
            "plugin-model: minimum block size %" PRIi64 ": unaligned requests are the "
            "plugin's job (issue 3), it should be 1\n",
            min);
    rc = -1;
  }
  return rc;
}

static int load_model(void)
{
  model = malloc(disk_size);
  maybe0 = calloc(disk_size, 1);
  if (!model || !maybe0)
    return -1;
  /* Start from what the server shows; if it is fresh, that must be the base. */
  uint64_t chunk = 4 * 1024 * 1024;
  for (uint64_t off = 0; off < disk_size; off += chunk) {
    uint64_t len = disk_size - off < chunk ? disk_size - off : chunk;
    if (nbd_pread(h[0], model + off, len, off, 0) == -1) {
      fprintf(stderr, "plugin-model: initial read: %s\n", nbd_get_error());
      return -1;
    }
  }
  if (base_file) {
    int fd = open(base_file, O_RDONLY);
    uint8_t *base = malloc(disk_size);
    if (fd == -1 || pread(fd, base, disk_size, 0) != (ssize_t)disk_size) {
      fprintf(stderr, "plugin-model: cannot read %s (must be the export's size)\n", base_file);
      return -1;
    }
    close(fd);
    for (uint64_t x = 0; x < disk_size; x++) {
      if (base[x] != model[x]) {
        fprintf(stderr,
                "plugin-model: fresh export differs from the master %s at offset %" PRIu64
                ": 0x%02x vs 0x%02x\n",
                base_file, x, model[x], base[x]);
        return -1;
      }
    }
    free(base);
  }
  return 0;
}

static void usage(FILE *f)
{
  fprintf(f, "usage: plugin-model -s SOCKET [-e EXPORT] [-n CONNS] [-o OPS] [-d INFLIGHT]\n"
             "                    [-S SEED] [-b MASTER-FILE] [-r]\n"
             "  -r  after the run, reconnect (a new session) and check the data is still there\n");
}

int main(int argc, char **argv)
{
  int opt;
  bool have_seed = false;
  if (argc == 2 && !strcmp(argv[1], "--help")) {
    usage(stdout);
    return 0;
  }
  while ((opt = getopt(argc, argv, "s:e:n:o:d:S:b:r")) != -1) {
    switch (opt) {
    case 's':
      sock_path = optarg;
      break;
    case 'e':
      export_name = optarg;
      break;
    case 'n':
      nconns = atoi(optarg);
      break;
    case 'o':
      nops = atol(optarg);
      break;
    case 'd':
      max_inflight = atoi(optarg);
      break;
    case 'S':
      seed = strtoull(optarg, NULL, 0);
      have_seed = true;
      break;
    case 'b':
      base_file = optarg;
      break;
    case 'r':
      reconnect_check = true;
      break;
    default:
      usage(stderr);
      return 1;
    }
  }
  if (!sock_path || nconns < 1 || nconns > MAX_CONNS || max_inflight < 1 ||
      max_inflight > MAX_INFLIGHT) {
    usage(stderr);
    return 1;
  }
  if (!have_seed) {
    const char *env = getenv("TB_SEED");
    seed = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL) * 1000003u + (uint64_t)getpid();
  }
  rng_state = seed ? seed : 1;
  printf("seed %" PRIu64 " (replay: TB_SEED=%" PRIu64 ")\n", seed, seed);
  fflush(stdout);

  for (int i = 0; i < nconns; i++)
    if (connect_one(i) == -1)
      return 2;
  int64_t size = nbd_get_size(h[0]);
  if (size <= 0) {
    fprintf(stderr, "plugin-model: export size: %s\n", nbd_get_error());
    return 1;
  }
  disk_size = (uint64_t)size;
  if (check_capabilities() == -1 || load_model() == -1)
    return 1;

  long budget = nops;
  while (budget > 0) {
    int r = rnd_below(10) < 7 ? batch_round(&budget) : serial_round(&budget);
    if (r == -1)
      return 1;
  }
  for (int i = 0; i < nconns; i++) {
    char what[64];
    snprintf(what, sizeof what, "final read on connection %d", i);
    if (read_all(i, what) == -1)
      return 1;
  }
  if (check_status(0, 0, disk_size) == -1)
    return 1;
  if (nbd_flush(h[0], 0) == -1) {
    fprintf(stderr, "plugin-model: final flush: %s\n", nbd_get_error());
    return 1;
  }
  disconnect_all(nconns);

  if (reconnect_check) {
    if (connect_one(0) == -1)
      return 1;
    if (read_all(0, "read in the next session") == -1 || check_status(0, 0, disk_size) == -1)
      return 1;
    disconnect_all(1);
  }
  printf("ok: %" PRIu64 " reads, %" PRIu64 " writes, %" PRIu64 " zeroes, %" PRIu64
         " trims, %" PRIu64 " flushes, %" PRIu64 " block status; %" PRIu64
         " fast zeroes refused; disk %" PRIu64 " bytes, %d connections\n",
         stats[OP_READ], stats[OP_WRITE], stats[OP_ZERO], stats[OP_TRIM], stats[OP_FLUSH],
         stats[OP_STATUS], n_fast_zero_enotsup, disk_size, nconns);
  free(model);
  free(maybe0);
  free(history);
  return 0;
}
