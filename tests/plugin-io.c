/* SPDX-License-Identifier: BSD-3-Clause */
/* plugin-io: a small scripted NBD client for the plugin's shell tests.
 *
 * The shell tests need more than nbdinfo and qemu-io give them: several
 * connections to one export held open at once, exact export names (even ones
 * that are not valid in a URI, such as "../x"), writes of a known pattern and
 * reads that check it, and a way to tell "the server refused us" from "the
 * data was wrong".  So this program takes a connection spec and a list of
 * commands, runs them in order, and exits:
 *   0  every command did what it was asked,
 *   1  a check failed (wrong data, wrong size, an unexpected error),
 *   2  the connection was refused or could not be made (message on stderr).
 *
 * Data is a pattern: byte at absolute disk offset X for seed S is pat(S, X),
 * and seed 0 is all zeros.  Because the pattern depends on the absolute offset,
 * a read of any range can be checked without remembering what was written,
 * and misplaced data (right bytes, wrong offset) is caught.
 *
 * -e EXPORT may be given several times: connection i then opens the
 * (i mod count)-th export, and -n defaults to the count (many clients at once).
 *
 * Commands (one argument each):
 *   conn:K                 switch to connection K (all are opened at start)
 *   write:OFF:LEN:SEED     pwrite the pattern        fua:OFF:LEN:SEED  same with FUA
 *   read:OFF:LEN:SEED      pread and check the pattern
 *   zero:OFF:LEN  trim:OFF:LEN  flush
 *   rewrite:OFF:LEN        pread and pwrite back the same bytes (a change of
 *                          nothing: a boot's first write, for session tests)
 *   size:N                 check the export size
 *   fill:OFF:LEN:CHUNK:SEED  write CHUNK at a time until LEN or an error; prints
 *                          "filled BYTES errno NAME" (NAME "none" if no error)
 *   extents:OFF:LEN        print base:allocation extents "OFFSET LENGTH FLAGS"
 *   sleep:MS  hold         (hold: print "holding", then wait for EOF on stdin,
 *                          keeping the connections open)
 *   !CMD                   CMD must fail; prints "error: ERRNO-NAME: message"
 *
 * Also: plugin-io --make-file FILE SIZE SEED [DATA_BYTES] writes a patterned
 * file (sparse after DATA_BYTES), used to build master images; and
 * plugin-io -s SOCKET --list prints the export names (NBD_OPT_LIST), one a
 * line, without opening them (exit 2 if the server refuses to list).
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libnbd.h>

#define MAX_CONNS 1024

static uint8_t pat(uint64_t seed, uint64_t off)
{
  if (seed == 0)
    return 0;
  uint64_t x = (off >> 3) * UINT64_C(0x9E3779B97F4A7C15) ^ seed * UINT64_C(0xD1B54A32D192ED03);
  x ^= x >> 29;
  x *= UINT64_C(0xBF58476D1CE4E5B9);
  x ^= x >> 32;
  return (uint8_t)(x >> ((off & 7) * 8));
}

static void fill_pattern(uint8_t *buf, uint64_t len, uint64_t seed, uint64_t off)
{
  for (uint64_t i = 0; i < len; i++)
    buf[i] = pat(seed, off + i);
}

static int make_file(const char *file, uint64_t size, uint64_t seed, uint64_t data_bytes)
{
  int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd == -1) {
    perror(file);
    return 1;
  }
  if (data_bytes > size)
    data_bytes = size;
  static uint8_t buf[1 << 20];
  for (uint64_t off = 0; off < data_bytes; off += sizeof buf) {
    uint64_t n = data_bytes - off < sizeof buf ? data_bytes - off : sizeof buf;
    fill_pattern(buf, n, seed, off);
    if (pwrite(fd, buf, n, off) != (ssize_t)n) {
      perror(file);
      return 1;
    }
  }
  if (ftruncate(fd, size) == -1 || close(fd) == -1) {
    perror(file);
    return 1;
  }
  return 0;
}

static const char *errno_name(int e)
{
  switch (e) {
  case 0:
    return "none";
  case EPERM:
    return "EPERM";
  case EIO:
    return "EIO";
  case ENOMEM:
    return "ENOMEM";
  case EINVAL:
    return "EINVAL";
  case ENOSPC:
    return "ENOSPC";
  case EOVERFLOW:
    return "EOVERFLOW";
  case ENOTSUP:
    return "ENOTSUP";
  case ESHUTDOWN:
    return "ESHUTDOWN";
  case EROFS:
    return "EROFS";
  case ENOENT:
    return "ENOENT";
  case EACCES:
    return "EACCES";
  default:
    return "other";
  }
}

static bool parse_u64s(const char *arg, uint64_t *v, int n)
{
  const char *p = strchr(arg, ':');
  for (int i = 0; i < n; i++) {
    if (!p)
      return false;
    char *end;
    errno = 0;
    v[i] = strtoull(p + 1, &end, 0);
    if (errno || end == p + 1 || (*end != ':' && *end != '\0'))
      return false;
    p = *end == ':' ? end : NULL;
  }
  return p == NULL;
}

/* Prints each base:allocation extent and remembers where the last one ended,
 * so the caller can ask again from there (servers may answer with a prefix). */
static int extent_cb(void *user_data, const char *metacontext, uint64_t offset, uint32_t *entries,
                     size_t nr_entries, int *error)
{
  uint64_t *next = user_data;
  if (strcmp(metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
    return 0;
  for (size_t i = 0; i + 1 < nr_entries; i += 2) {
    printf("%" PRIu64 " %" PRIu32 " %" PRIu32 "\n", offset, entries[i], entries[i + 1]);
    offset += entries[i];
  }
  *next = offset;
  return 0;
}

/* Run one command on H.  Returns 0 ok, 1 check failed, -1 NBD error (errno in *err). */
static int run(struct nbd_handle *h, const char *cmd, int *err)
{
  uint64_t v[4];
  int r = 0;
  *err = 0;
#define ARGS(n)                                                                                    \
  do {                                                                                             \
    if (!parse_u64s(cmd, v, n)) {                                                                  \
      fprintf(stderr, "plugin-io: bad command '%s'\n", cmd);                                       \
      exit(1);                                                                                     \
    }                                                                                              \
  } while (0)
#define NBD(call)                                                                                  \
  do {                                                                                             \
    if ((call) == -1) {                                                                            \
      *err = nbd_get_errno();                                                                      \
      return -1;                                                                                   \
    }                                                                                              \
  } while (0)

  if (!strncmp(cmd, "write:", 6) || !strncmp(cmd, "fua:", 4)) {
    ARGS(3);
    uint8_t *buf = malloc(v[1] ? v[1] : 1);
    fill_pattern(buf, v[1], v[2], v[0]);
    r = nbd_pwrite(h, buf, v[1], v[0], cmd[0] == 'f' ? LIBNBD_CMD_FLAG_FUA : 0);
    free(buf);
    NBD(r);
  } else if (!strncmp(cmd, "read:", 5)) {
    ARGS(3);
    uint8_t *buf = malloc(v[1] ? v[1] : 1);
    r = nbd_pread(h, buf, v[1], v[0], 0);
    if (r == -1) {
      *err = nbd_get_errno();
      free(buf);
      return -1;
    }
    for (uint64_t i = 0; i < v[1]; i++) {
      if (buf[i] != pat(v[2], v[0] + i)) {
        fprintf(stderr,
                "plugin-io: %s: byte at offset %" PRIu64
                " is 0x%02x, expected 0x%02x (seed %" PRIu64 ")\n",
                cmd, v[0] + i, buf[i], pat(v[2], v[0] + i), v[2]);
        free(buf);
        return 1;
      }
    }
    free(buf);
  } else if (!strncmp(cmd, "rewrite:", 8)) {
    ARGS(2);
    uint8_t *buf = malloc(v[1] ? v[1] : 1);
    r = nbd_pread(h, buf, v[1], v[0], 0);
    if (r == 0)
      r = nbd_pwrite(h, buf, v[1], v[0], 0);
    free(buf);
    NBD(r);
  } else if (!strncmp(cmd, "zero:", 5)) {
    ARGS(2);
    NBD(nbd_zero(h, v[1], v[0], 0));
  } else if (!strncmp(cmd, "trim:", 5)) {
    ARGS(2);
    NBD(nbd_trim(h, v[1], v[0], 0));
  } else if (!strcmp(cmd, "flush")) {
    NBD(nbd_flush(h, 0));
  } else if (!strncmp(cmd, "size:", 5)) {
    ARGS(1);
    int64_t size = nbd_get_size(h);
    NBD(size);
    if ((uint64_t)size != v[0]) {
      fprintf(stderr, "plugin-io: export size is %" PRIi64 ", expected %" PRIu64 "\n", size, v[0]);
      return 1;
    }
  } else if (!strncmp(cmd, "fill:", 5)) {
    ARGS(4);
    uint8_t *buf = malloc(v[2]);
    uint64_t done = 0;
    int e = 0;
    while (done < v[1]) {
      uint64_t n = v[1] - done < v[2] ? v[1] - done : v[2];
      fill_pattern(buf, n, v[3], v[0] + done);
      if (nbd_pwrite(h, buf, n, v[0] + done, 0) == -1) {
        e = nbd_get_errno();
        fprintf(stderr, "plugin-io: fill: write at %" PRIu64 ": %s\n", v[0] + done,
                nbd_get_error());
        break;
      }
      done += n;
    }
    free(buf);
    printf("filled %" PRIu64 " errno %s\n", done, errno_name(e));
  } else if (!strncmp(cmd, "extents:", 8)) {
    ARGS(2);
    uint64_t off = v[0], end = v[0] + v[1];
    while (off < end) {
      uint64_t next = off;
      uint64_t len = end - off > UINT32_MAX ? UINT32_MAX : end - off;
      NBD(nbd_block_status(h, len, off,
                           (nbd_extent_callback){.callback = extent_cb, .user_data = &next}, 0));
      if (next <= off) {
        fprintf(stderr, "plugin-io: block status made no progress at %" PRIu64 "\n", off);
        return 1;
      }
      off = next;
    }
  } else if (!strncmp(cmd, "sleep:", 6)) {
    ARGS(1);
    struct timespec ts = {(time_t)(v[0] / 1000), (long)(v[0] % 1000) * 1000000};
    nanosleep(&ts, NULL);
  } else if (!strcmp(cmd, "hold")) {
    printf("holding\n");
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0)
      ;
  } else {
    fprintf(stderr, "plugin-io: unknown command '%s'\n", cmd);
    exit(1);
  }
  return 0;
#undef ARGS
#undef NBD
}

static int list_cb(void *user_data, const char *name, const char *description)
{
  printf("%s\n", name);
  return 0;
}

/* NBD_OPT_LIST only: the names, without opening each export as nbdinfo does. */
static int list_exports(struct nbd_handle *h, const char *sock, const char *tcp_host,
                        const char *tcp_port)
{
  if (nbd_set_opt_mode(h, true) == -1 ||
      (sock ? nbd_connect_unix(h, sock) : nbd_connect_tcp(h, tcp_host, tcp_port)) == -1) {
    fprintf(stderr, "plugin-io: connect: %s\n", nbd_get_error());
    return 2;
  }
  if (nbd_opt_list(h, (nbd_list_callback){.callback = list_cb}) == -1) {
    fprintf(stderr, "plugin-io: list: %s\n", nbd_get_error());
    return 2;
  }
  nbd_opt_abort(h);
  return 0;
}

static void usage(FILE *f)
{
  fprintf(f, "usage: plugin-io (-s SOCKET | -t HOST:PORT) [-e EXPORT]... [-n CONNS] CMD...\n"
             "       plugin-io (-s SOCKET | -t HOST:PORT) --list\n"
             "       plugin-io --make-file FILE SIZE SEED [DATA_BYTES]\n"
             "See the comment at the top of tests/plugin-io.c for the commands.\n");
}

int main(int argc, char **argv)
{
  if (argc >= 2 && !strcmp(argv[1], "--help")) {
    usage(stdout);
    return 0;
  }
  if (argc >= 5 && !strcmp(argv[1], "--make-file"))
    return make_file(argv[2], strtoull(argv[3], NULL, 0), strtoull(argv[4], NULL, 0),
                     argc >= 6 ? strtoull(argv[5], NULL, 0) : UINT64_MAX);

  const char *sock = NULL, *tcp = NULL;
  const char **exports = NULL;
  int nexports = 0, nconns = 0, opt;
  bool list = false;
  static const struct option longopts[] = {{"list", no_argument, NULL, 'l'}, {NULL, 0, NULL, 0}};
  while ((opt = getopt_long(argc, argv, "+s:t:e:n:", longopts, NULL)) != -1) {
    switch (opt) {
    case 's':
      sock = optarg;
      break;
    case 't':
      tcp = optarg;
      break;
    case 'e':
      exports = realloc(exports, sizeof *exports * (size_t)(nexports + 1));
      if (!exports)
        return 1;
      exports[nexports++] = optarg;
      break;
    case 'n':
      nconns = atoi(optarg);
      break;
    case 'l':
      list = true;
      break;
    default:
      usage(stderr);
      return 1;
    }
  }
  if (nconns == 0)
    nconns = nexports > 1 ? nexports : 1;
  if ((!sock) == (!tcp) || nconns < 1 || nconns > MAX_CONNS) {
    usage(stderr);
    return 1;
  }

  char host[256] = "", *port = NULL;
  if (tcp) {
    snprintf(host, sizeof host, "%s", tcp);
    char *colon = strrchr(host, ':');
    if (!colon) {
      usage(stderr);
      return 1;
    }
    *colon = '\0';
    port = colon + 1;
  }
  static struct nbd_handle *h[MAX_CONNS];
  if (list) {
    h[0] = nbd_create();
    int r = h[0] ? list_exports(h[0], sock, host, port) : 1;
    nbd_close(h[0]);
    return r;
  }
  for (int i = 0; i < nconns; i++) {
    const char *export = nexports ? exports[i % nexports] : "";
    h[i] = nbd_create();
    if (!h[i] || nbd_set_export_name(h[i], export) == -1 ||
        nbd_add_meta_context(h[i], LIBNBD_CONTEXT_BASE_ALLOCATION) == -1) {
      fprintf(stderr, "plugin-io: %s\n", nbd_get_error());
      return 1;
    }
    int r = sock ? nbd_connect_unix(h[i], sock) : nbd_connect_tcp(h[i], host, port);
    if (r == -1) {
      fprintf(stderr, "plugin-io: connect to export '%s': %s\n", export, nbd_get_error());
      for (int k = 0; k <= i; k++)
        nbd_close(h[k]);
      return 2;
    }
  }

  int cur = 0, status = 0;
  for (int i = optind; i < argc && status == 0; i++) {
    const char *cmd = argv[i];
    bool expect_fail = cmd[0] == '!';
    if (expect_fail)
      cmd++;
    if (!strncmp(cmd, "conn:", 5)) {
      cur = atoi(cmd + 5);
      if (cur < 0 || cur >= nconns) {
        fprintf(stderr, "plugin-io: no connection %d\n", cur);
        return 1;
      }
      continue;
    }
    int err;
    int r = run(h[cur], cmd, &err);
    if (r == 1) {
      status = 1;
    } else if (r == -1 && !expect_fail) {
      fprintf(stderr, "plugin-io: %s: %s\n", cmd, nbd_get_error());
      status = 1;
    } else if (r == -1) {
      printf("error: %s: %s\n", errno_name(err), nbd_get_error());
    } else if (expect_fail) {
      fprintf(stderr, "plugin-io: %s: succeeded, but it should have failed\n", cmd);
      status = 1;
    }
  }
  fflush(stdout);
  for (int i = 0; i < nconns; i++) {
    if (status == 0 && nbd_shutdown(h[i], 0) == -1) {
      fprintf(stderr, "plugin-io: shutdown: %s\n", nbd_get_error());
      status = 1;
    }
    nbd_close(h[i]);
  }
  free(exports);
  return status;
}
