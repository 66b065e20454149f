/* SPDX-License-Identifier: BSD-3-Clause */
/* tabulactl: the administrator's command line for tabula.
 *
 *   tabulactl [-c CONFIG] [--state DIR] [--socket PATH] [--json] [-q] COMMAND [ARGS]
 *
 * Most commands are requests to tabula-restored over its control socket (JSON
 * lines, see lib/control.h): the daemon owns the clients' state and is the
 * only writer of mailboxes and merged versions.  Two work directly on the
 * state directory, without a daemon, so a store can be prepared before
 * anything runs: `image import` (through lib/store's atomic version builder,
 * safe next to a running daemon) and `image list`.
 *
 * Output: human tables by default, the daemon's JSON result with --json.
 * Long work (import, publish, pull, merge) shows one progress line on stderr
 * when it is a terminal, unless -q or --json (progress.c).  Commands are a
 * table (struct command): the dispatcher parses every command's options
 * once and checks its operands; most are a request and how its reply
 * prints.
 * Exit codes: 0 done, 1 the operation failed (one line on stderr says why),
 * 2 bad usage, 3 the daemon cannot be reached.
 */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "cleanup.h"
#include "clientcheck.h"
#include "conf.h"
#include "control.h"
#include "ctl-image-repo.h"
#include "events.h"
#include "json.h"
#include "progress.h"
#include "store.h"
#include "vector.h"

#define EXIT_FAIL 1
#define EXIT_USAGE 2
#define EXIT_NODAEMON 3
#define DEFAULT_CONFIG "/etc/tabula/tabula.json"

struct ctl {
  const char *config_file; /* -c */
  const char *state_dir;   /* --state */
  const char *socket;      /* --socket */
  bool json;
  bool quiet;            /* -q: no progress line */
  struct tb_config *cfg; /* loaded on demand */
};

static const char *prog = "tabulactl";

/* ---- small output helpers -------------------------------------------------- */

/* "tabulactl: " and the message, without a newline. */
static void say(const char *fmt, va_list ap)
{
  fprintf(stderr, "%s: ", prog);
  vfprintf(stderr, fmt, ap);
}

static int fail(const char *fmt, ...) TB_PRINTF(1, 2);
static int fail(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  say(fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  return EXIT_FAIL;
}

/* A table: rows of cells, printed with columns padded to their widest cell. */
#define MAX_COLS 12
TB_VECTOR(cells, char *);
struct table {
  size_t ncols, nrows;
  struct cells cells; /* nrows * ncols */
};

static void table_row(struct table *t, ...)
{
  if (tb_vector_reserve(&t->cells, t->ncols) == -1) {
    perror(prog);
    exit(EXIT_FAIL);
  }
  va_list ap;
  va_start(ap, t);
  for (size_t i = 0; i < t->ncols; i++) {
    const char *s = va_arg(ap, const char *);
    t->cells.ptr[t->cells.len++] = strdup(s ? s : "-"); /* reserved above */
  }
  va_end(ap);
  t->nrows++;
}

static void table_free(struct table *t)
{
  for (size_t i = 0; i < t->cells.len; i++)
    free(t->cells.ptr[i]);
  tb_vector_free(&t->cells);
  t->nrows = 0;
}

static void table_print(struct table *t)
{
  size_t width[MAX_COLS] = {0};
  for (size_t r = 0; r < t->nrows; r++)
    for (size_t c = 0; c < t->ncols; c++) {
      size_t w = strlen(t->cells.ptr[r * t->ncols + c]);
      if (w > width[c])
        width[c] = w;
    }
  for (size_t r = 0; r < t->nrows; r++) {
    for (size_t c = 0; c < t->ncols; c++) {
      const char *s = t->cells.ptr[r * t->ncols + c];
      if (c + 1 == t->ncols)
        printf("%s\n", s);
      else
        printf("%-*s  ", (int)width[c], s);
    }
  }
  table_free(t);
}

/* ---- --json: one style, errors too ----------------------------------------------
 *
 * Every command's --json result is one document, indented by 2, keys in the
 * daemon's order (events --follow: one compact document a line).  A command
 * that fails under --json prints {"ok": false, "error": MESSAGE,
 * "exit_status": N} on stdout as well, so a script reading stdout always
 * gets JSON; MESSAGE is what went to stderr (its "tabulactl: " lines, joined),
 * which every error path writes, here and in ctl-image-repo.c alike, so
 * stderr goes through a stream that remembers them. */
static bool json_printed; /* stdout got a JSON document */
static FILE *real_stderr;
static char err_text[2048], err_line[1024];
static size_t err_line_len;

static ssize_t stderr_write(void *cookie, const char *buf, size_t n)
{
  (void)cookie;
  fwrite(buf, 1, n, real_stderr);
  fflush(real_stderr);
  for (size_t i = 0; i < n; i++) {
    if (buf[i] == '\r') {
      err_line_len = 0; /* a progress line redraws itself */
    } else if (buf[i] != '\n') {
      if (err_line_len + 1 < sizeof err_line)
        err_line[err_line_len++] = buf[i];
    } else {
      err_line[err_line_len] = '\0';
      size_t plen = strlen(prog);
      if (!strncmp(err_line, prog, plen) && !strncmp(err_line + plen, ": ", 2)) {
        size_t have = strlen(err_text);
        snprintf(err_text + have, sizeof err_text - have, "%s%s", have ? " " : "",
                 err_line + plen + 2);
      }
      err_line_len = 0;
    }
  }
  return (ssize_t)n;
}

static void capture_stderr(void)
{
  real_stderr = fdopen(dup(STDERR_FILENO), "w");
  FILE *f =
      real_stderr ? fopencookie(NULL, "w", (cookie_io_functions_t){.write = stderr_write}) : NULL;
  if (f) {
    setvbuf(f, NULL, _IOLBF, 0);
    stderr = f;
  }
}

static void print_json(const json_t *v)
{
  char *text = json_dumps(v, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  if (text) {
    puts(text);
    free(text);
    json_printed = true;
  }
}

/* After a failed command under --json. */
static void print_json_error(int code)
{
  if (json_printed)
    return;
  json_t *e = json_pack("{s:b, s:s, s:i}", "ok", 0, "error",
                        err_text[0] ? err_text : "failed (no message)", "exit_status", code);
  print_json(e);
  json_decref(e);
}

/* Field accessors that tolerate missing keys (older daemons, optional data). */
static const char *jstr(const json_t *o, const char *key)
{
  const char *s = json_string_value(json_object_get(o, key));
  return s ? s : "-";
}

static json_int_t jint(const json_t *o, const char *key)
{
  return json_integer_value(json_object_get(o, key));
}

static const char *jnum(const json_t *o, const char *key, char *buf, size_t len)
{
  json_t *v = json_object_get(o, key);
  if (!json_is_integer(v) || json_integer_value(v) == 0)
    return "-";
  snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
  return buf;
}

static const char *jsize(const json_t *o, const char *key, char *buf, size_t len)
{
  json_t *v = json_object_get(o, key);
  if (!json_is_integer(v))
    return "-";
  human_size((uint64_t)json_integer_value(v), buf, len);
  return buf;
}

/* KEY (epoch milliseconds) as local time, and how far from now: "2026-11-24
 * 03:30 CET (in 20 h 5 min)".  Schedules are in local time, so is this. */
static const char *jtime(const json_t *o, const char *key, char *buf, size_t len)
{
  json_t *v = json_object_get(o, key);
  if (!json_is_integer(v))
    return "-";
  int64_t ms = json_integer_value(v), delta = ms - tb_now_ms();
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  localtime_r(&t, &tm);
  size_t n = strftime(buf, len, "%Y-%m-%d %H:%M:%S %Z", &tm);
  int64_t a = (delta < 0 ? -delta : delta) / 1000;
  char rel[48];
  if (a < 60)
    snprintf(rel, sizeof rel, "%lld s", (long long)a);
  else if (a < 3600)
    snprintf(rel, sizeof rel, "%lld min", (long long)(a / 60));
  else if (a < 86400)
    snprintf(rel, sizeof rel, "%lld h %lld min", (long long)(a / 3600), (long long)(a / 60 % 60));
  else
    snprintf(rel, sizeof rel, "%lld d %lld h", (long long)(a / 86400), (long long)(a / 3600 % 24));
  snprintf(buf + n, len - n, delta < 0 ? " (%s ago)" : " (in %s)", rel);
  return buf;
}

/* KEY, a time as --json gives it (ISO 8601 UTC, "2026-12-01T23:02:21.123Z"),
 * in local time for people: "2026-12-02 00:02:21 CET", with the milliseconds
 * when MS (event lines, where the order within a second matters).  A value
 * that does not parse is shown as it is. */
static const char *jlocal(const json_t *o, const char *key, bool ms, char *buf, size_t len)
{
  const char *s = json_string_value(json_object_get(o, key));
  if (!s)
    return "-";
  struct tm tm = {0};
  const char *end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
  if (!end)
    return s;
  int millis = 0;
  if (end[0] == '.' && end[1] >= '0' && end[1] <= '9')
    millis = (int)strtol(end + 1, NULL, 10) % 1000;
  time_t t = timegm(&tm);
  struct tm lt;
  localtime_r(&t, &lt);
  char day[32], zone[16];
  strftime(day, sizeof day, "%Y-%m-%d %H:%M:%S", &lt);
  strftime(zone, sizeof zone, "%Z", &lt);
  if (ms)
    snprintf(buf, len, "%s.%03d %s", day, millis, zone);
  else
    snprintf(buf, len, "%s %s", day, zone);
  return buf;
}

/* ---- progress (progress.c draws it) ------------------------------------------- */

/* lib/store's import reports two passes (copy, then hash), each 0..size. */
static int import_progress(void *ctx, uint64_t done, uint64_t total)
{
  struct progress *p = ctx;
  if (done < p->last_done)
    p->phase_no++;
  p->last_done = done;
  progress_show(p, p->phase_no == 0 ? "copying" : "hashing", done, total);
  return 0;
}

/* ---- configuration and connection -------------------------------------------- */

static int load_config(struct ctl *ctl)
{
  if (ctl->cfg)
    return 0;
  const char *file = ctl->config_file ? ctl->config_file : getenv("TABULA_CONFIG");
  if (!file)
    file = DEFAULT_CONFIG;
  ctl->cfg = tb_config_load(file);
  if (!ctl->cfg) {
    fprintf(stderr, "%s: %s\n", prog, tb_errmsg());
    if (!ctl->config_file && !getenv("TABULA_CONFIG"))
      fprintf(stderr,
              "%s: (pass the configuration with -c FILE, or the state directory "
              "with --state DIR)\n",
              prog);
    return -1;
  }
  return 0;
}

static const char *state_dir(struct ctl *ctl)
{
  if (ctl->state_dir)
    return ctl->state_dir;
  return load_config(ctl) == 0 ? ctl->cfg->state_dir : NULL;
}

/* The control socket named by the configuration.  A file the strict parser
 * refuses (say, being edited before a reload) still names its socket: the
 * daemon runs with the previous version, and `reload` must reach it to say
 * what is wrong. */
static int socket_from_config(struct ctl *ctl, char *path, size_t len)
{
  const char *file = ctl->config_file ? ctl->config_file : getenv("TABULA_CONFIG");
  if (!file)
    file = DEFAULT_CONFIG;
  struct tb_config *cfg = tb_config_load(file);
  if (cfg) {
    int r = tb_control_socket_path(cfg, path, len);
    tb_config_unref(cfg);
    return r;
  }
  json_t *root = json_load_file(file, 0, NULL);
  const char *control = json_string_value(json_object_get(root, "control"));
  const char *state = json_string_value(json_object_get(root, "state_dir"));
  int r = -1;
  if (control)
    r = tb_path(path, len, "%s", control);
  else if (state)
    r = tb_path(path, len, "%s/control.sock", state);
  json_decref(root);
  if (r == -1)
    return load_config(ctl); /* prints the parser's message */
  return 0;
}

/* *CODE: EXIT_FAIL when the configuration cannot tell where the daemon is
 * (a broken or missing file: the message says what is wrong with it),
 * EXIT_NODAEMON when nothing answers there. */
static struct tb_control *connect_daemon(struct ctl *ctl, int *code)
{
  char path[TB_PATH_MAX];
  *code = EXIT_FAIL;
  if (ctl->socket)
    snprintf(path, sizeof path, "%s", ctl->socket);
  else if (!ctl->config_file && !getenv("TABULA_CONFIG") && ctl->state_dir)
    snprintf(path, sizeof path, "%s/control.sock", ctl->state_dir);
  else if (socket_from_config(ctl, path, sizeof path) == -1)
    return NULL;
  *code = EXIT_NODAEMON;
  struct tb_control *c = tb_control_connect(path);
  if (!c)
    fprintf(stderr, "%s: %s\n", prog, tb_errmsg());
  return c;
}

/* Scoped close of a daemon connection (cleanup.h). */
static void control_closep(struct tb_control **c)
{
  tb_control_close(*c);
}
#define CLEANUP_CONTROL __attribute__((cleanup(control_closep)))

/* Callback for interim lines (progress, events) of a request. */
typedef void (*interim_fn)(void *ctx, json_t *line);

/* Send REQ (consumed), wait for the final reply.  Returns the result object
 * (a new reference) or NULL after printing why; *code gets the exit code. */
static json_t *request(struct ctl *ctl, json_t *req, interim_fn interim, void *ictx, int *code)
{
  CLEANUP_JSON json_t *owned_req = req;
  CLEANUP_CONTROL struct tb_control *c = connect_daemon(ctl, code);
  if (!c)
    return NULL;
  *code = EXIT_FAIL;
  if (tb_control_send(c, owned_req) == -1) {
    /* The daemon may have refused us with a reason before closing. */
    char why[1024];
    snprintf(why, sizeof why, "%s", tb_errmsg());
    CLEANUP_JSON json_t *line = tb_control_recv(c, 1000);
    const char *err = json_string_value(json_object_get(line, "error"));
    fail("%s", err ? err : why);
    return NULL;
  }
  for (;;) {
    CLEANUP_JSON json_t *line = tb_control_recv(c, -1);
    if (!line) {
      fail("%s", tb_errmsg());
      return NULL;
    }
    json_t *ok = json_object_get(line, "ok");
    if (json_is_boolean(ok)) {
      if (!json_is_true(ok)) {
        fail("%s", jstr(line, "error"));
        return NULL;
      }
      json_t *result = json_incref(json_object_get(line, "result"));
      if (!result)
        result = json_object();
      *code = 0;
      return result;
    }
    if (interim)
      interim(ictx, line);
  }
}

/* A request whose result needs no more than "done" (or its JSON). */
static int simple_request(struct ctl *ctl, json_t *req, const char *done_fmt, ...)
{
  int code;
  json_t *res = request(ctl, req, NULL, NULL, &code);
  if (!res)
    return code;
  if (ctl->json) {
    print_json(res);
  } else {
    const char *msg = json_string_value(json_object_get(res, "message"));
    if (msg) {
      puts(msg);
    } else if (done_fmt) {
      va_list ap;
      va_start(ap, done_fmt);
      vprintf(done_fmt, ap);
      va_end(ap);
      putchar('\n');
    }
  }
  json_decref(res);
  return 0;
}

/* ---- argument helpers ------------------------------------------------------------ */

/* What an operand of a simple command is: its text in the usage, and what it
 * puts into the request. */
enum operand {
  OPERAND_NONE,   /* ends the list */
  OPERAND_CLIENT, /* ID: "client" */
  OPERAND_PIN,    /* N >= 1: "version" */
  OPERAND_IMAGE,  /* IMAGE[@N]: "image" and, with @N, "version" */
  OPERAND_REASON, /* [REASON], optional and last: "reason" */
};

/* A command's operands and options, as the dispatcher parsed them. */
struct args {
  int n; /* operands */
  char **op;
  int seen[256]; /* by the option's val */
  const char *val[256];
};

/* A command, declared: the dispatcher (run_command) answers --help, parses
 * OPTIONS and checks the operand count (MIN..MAX, else COUNT_ERROR, or for
 * a simple command the usage of its OPERANDS) once, for every command.  Then
 * one of:
 *   RAW      gets argv as given and parses it itself (image, pxe-event);
 *   RUN      does the rest;
 *   a request: BUILD makes it (NULL after a usage error), or it is {"op":
 *            OP or NAME} plus the OPERANDS; the daemon's result prints as
 *            JSON with --json (exit status VERDICT, default 0), else through
 *            PRINT, else as its "message" or DONE (%1, %2: the operands). */
struct command {
  const char *name;
  const char *usage;
  const char *help;
  const struct option *options; /* NULL: none */
  int min, max;
  const char *count_error;
  int (*raw)(struct ctl *ctl, int argc, char **argv);
  int (*run)(struct ctl *ctl, const struct args *a);
  const char *op;
  enum operand operands[3];
  json_t *(*build)(struct ctl *ctl, const struct args *a);
  int (*print)(struct ctl *ctl, const struct args *a, const json_t *req, const json_t *res);
  int (*verdict)(const json_t *res);
  const char *done;
};

static const struct command *current;

static int usage_error(const char *fmt, ...) TB_PRINTF(1, 2);
static int usage_error(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  say(fmt, ap);
  va_end(ap);
  if (current)
    fprintf(stderr, "\nusage: %s %s %s\n", prog, current->name, current->usage);
  else
    fprintf(stderr, "\n(see %s --help)\n", prog);
  return EXIT_USAGE;
}

static bool want_help(int argc, char **argv)
{
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--") == 0)
      return false;
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
      return true;
  }
  return false;
}

static void command_help(const struct command *c)
{
  printf("usage: %s %s %s\n\n%s\n", prog, c->name, c->usage, c->help);
}

static int parse_uint(const char *s, const char *what, uint64_t max, uint64_t *out)
{
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (!*s || *end || errno || v > max || s[0] == '-')
    return usage_error("%s: expected a number, got \"%s\"", what, s);
  *out = v;
  return 0;
}

/* A command's options, before or after its operands (getopt_long permutes). */
static int parse_opts(int argc, char **argv, const struct option *longopts, int *seen,
                      const char **values)
{
  optind = 0;
  opterr = 0;
  /* The leading ':' makes getopt tell a missing value (':') from an
   * unknown option ('?'). */
  const char *shorts = ":";
  for (const struct option *o = longopts; o->name; o++)
    if (o->val == 'q')
      shorts = ":q";
  int ch, idx;
  while ((ch = getopt_long(argc, argv, shorts, longopts, &idx)) != -1) {
    if (ch == '?')
      return usage_error("unknown option %s", argv[optind - 1]);
    if (ch == ':')
      return usage_error("option %s needs a value", argv[optind - 1]);
    seen[ch] = 1;
    values[ch] = optarg;
  }
  return 0;
}

static int check_client_arg(const char *id)
{
  if (!tb_client_id_valid(id))
    return usage_error("invalid client id \"%.80s\" (1-64 characters [A-Za-z0-9._-], or a "
                       "client's disk ID/DISK)",
                       id);
  return 0;
}

/* ---- image import / list (direct on the state directory) ---------------------------- */

/* ---- image import guardrails (issue 18 §2) ---------------------------------- */

/* The format of the disk image FILE from its magic: "raw" when it is none of
 * the container formats qemu-img knows (a raw disk has no magic). */
static const char *image_format(const char *file)
{
  int fd = open(file, O_RDONLY | O_CLOEXEC);
  if (fd == -1)
    return NULL;
  char head[64] = {0}, tail[512] = {0};
  struct stat st;
  ssize_t n = pread(fd, head, sizeof head, 0);
  bool have_tail = fstat(fd, &st) == 0 && st.st_size >= 512 &&
                   pread(fd, tail, sizeof tail, st.st_size - 512) == 512;
  close(fd);
  if (n < 8)
    return "raw";
  if (memcmp(head, "QFI\xfb", 4) == 0)
    return "qcow2";
  if (memcmp(head, "vhdxfile", 8) == 0)
    return "vhdx";
  if (memcmp(head, "KDMV", 4) == 0 || strncmp(head, "# Disk DescriptorFile", 21) == 0)
    return "vmdk";
  if (memcmp(head, "conectix", 8) == 0 || (have_tail && memcmp(tail, "conectix", 8) == 0))
    return "vpc"; /* VHD: qemu-img calls it vpc */
  return "raw";
}

/* qemu-img convert -O raw FILE OUT; -1 with a message naming the command. */
static int convert_to_raw(const char *file, const char *fmt, const char *out)
{
  pid_t pid = fork();
  if (pid == -1)
    return tb_error_errno("cannot run qemu-img");
  if (pid == 0) {
    execlp("qemu-img", "qemu-img", "convert", "-f", fmt, "-O", "raw", "--", file, out,
           (char *)NULL);
    _exit(127);
  }
  int status;
  while (waitpid(pid, &status, 0) == -1 && errno == EINTR)
    ;
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
    return 0;
  unlink(out);
  return tb_error("%s is a %s image, which tabula serves only as raw, and %s; convert it yourself "
                  "with: qemu-img convert -f %s -O raw %s %s.raw (then import the .raw)",
                  file, fmt,
                  WIFEXITED(status) && WEXITSTATUS(status) == 127
                      ? "qemu-img is not installed (apt-get install qemu-utils)"
                      : "qemu-img convert failed (see its message above)",
                  fmt, file, file);
}

static int compare_progress(void *ctx, uint64_t done, uint64_t total)
{
  progress_show(ctx, "comparing with the newest version", done, total);
  return 0;
}

/* The way back from an unwanted new version, for messages. */
static void promote_hint(const char *image, uint32_t prev, char *buf, size_t len)
{
  if (prev)
    snprintf(buf, len, "; to go back: tabulactl image promote %s@%" PRIu32, image, prev);
  else
    buf[0] = '\0';
}

/* Checks of FILE (raw) against IMAGE's newest version PREV (0: none) before
 * it becomes the next one: a size change needs --force; content identical
 * to PREV is a no-op (1); each configured client of IMAGE that is not pinned
 * must find its preserved and protected partitions in FILE (--force to
 * import anyway).  0 to go on, 1 nothing to do, -1 refused. */
static int import_checks(struct ctl *ctl, const char *state, const char *image, const char *file,
                         const char *shown, uint32_t prev, bool force, struct progress *p)
{
  struct stat st;
  if (stat(file, &st) == -1)
    return tb_error_errno("%s", file);
  char back[128];
  promote_hint(image, prev, back, sizeof back);
  if (prev) {
    struct tb_manifest *m = tb_manifest_load(state, image, prev);
    if (!m)
      return -1;
    uint64_t size = m->size;
    uint8_t want[32];
    memcpy(want, m->sha256, 32);
    uint32_t chunk = m->chunk_size;
    tb_manifest_free(m);
    if ((uint64_t)st.st_size != size && !force) {
      char a[32], b[32];
      human_size((uint64_t)st.st_size, a, sizeof a);
      human_size(size, b, sizeof b);
      return tb_error("%s is %s but %s@%" PRIu32 " is %s: every client's disk would change "
                      "size; pass --force if that is meant",
                      shown, a, image, prev, b);
    }
    if ((uint64_t)st.st_size == size) {
      int fd = open(file, O_RDONLY | O_CLOEXEC);
      uint8_t got[32], (*chunks)[32] = NULL;
      size_t n = 0;
      if (fd == -1)
        return tb_error_errno("%s", file);
      int r = tb_hash_file(fd, size, chunk, got, &chunks, &n, compare_progress, p);
      close(fd);
      free(chunks);
      if (r == -1)
        return -1;
      if (memcmp(got, want, 32) == 0) {
        tb_error("%s is identical to %s@%" PRIu32 ": nothing imported", shown, image, prev);
        return 1;
      }
      p->phase_no = 0; /* the import's own passes follow */
      p->last_done = 0;
    }
  }
  if (!ctl->cfg)
    return 0;
  for (size_t i = 0; i < ctl->cfg->n_clients; i++) {
    const struct tb_client_conf *c = &ctl->cfg->clients[i];
    char what[TB_NAME_MAX + 32];
    snprintf(what, sizeof what, "the new %s@%" PRIu32, image, prev + 1);
    if (strcmp(c->image, image) != 0 || c->version ||
        tb_client_check_image(ctl->cfg, c, file, (uint64_t)st.st_size, what) == 0)
      continue;
    if (!force)
      return tb_error_prefix("%s cannot be served to %s: pass --force to import it anyway (%s "
                             "is then refused until its rules are fixed)",
                             shown, c->id, c->id);
    fprintf(stderr, "%s: warning: %s (%s is refused on it%s)\n", prog, tb_errmsg(), c->id, back);
  }
  return 0;
}

static int cmd_image_import(struct ctl *ctl, const struct args *a)
{
  const char *name = a->op[0], *file = a->op[1];
  if (!tb_name_valid(name))
    return usage_error("invalid image name \"%.80s\" (1-64 characters [A-Za-z0-9._-], "
                       "starting with a letter or digit)",
                       name);
  const char *state = state_dir(ctl);
  if (!state)
    return EXIT_FAIL;
  if (ctl->cfg && !tb_config_has_image(ctl->cfg, name))
    fprintf(stderr,
            "%s: note: image %s is not listed in \"images\" of %s; clients cannot use it "
            "until it is\n",
            prog, name, ctl->cfg->path);
  char what[128];
  snprintf(what, sizeof what, "importing %s", name);
  struct progress p;
  progress_init(&p, what, ctl->quiet || ctl->json || a->seen['q']);
  /* qcow2, VHD, VHDX, VMDK: converted to raw first (next to the store). */
  const char *fmt = image_format(file);
  if (!fmt)
    return fail("cannot read %s: %s", file, strerror(errno));
  char raw[TB_PATH_MAX] = "";
  const char *shown = file;
  if (strcmp(fmt, "raw") != 0) {
    if (tb_path(raw, sizeof raw, "%s/images/.import-%s-%ld.raw", state, name, (long)getpid()) ==
            -1 ||
        tb_store_init(state) == -1)
      return fail("%s", tb_errmsg());
    fprintf(stderr, "%s: %s is a %s image: converting it to raw with qemu-img\n", prog, file, fmt);
    if (convert_to_raw(file, fmt, raw) == -1)
      return fail("%s", tb_errmsg());
    file = raw;
  }
  uint32_t prev = 0, *vers = NULL;
  size_t nv = 0;
  if (tb_store_versions(state, name, &vers, &nv) == 0 && nv)
    prev = vers[nv - 1];
  free(vers);
  int r = import_checks(ctl, state, name, file, shown, prev, a->seen['f'], &p);
  if (r != 0) {
    progress_done(&p);
    if (raw[0])
      unlink(raw);
    if (r == 1) { /* identical: a no-op that names the version */
      if (ctl->json) {
        json_t *o = json_pack("{s:s, s:I, s:b}", "image", name, "version", (json_int_t)prev,
                              "unchanged", 1);
        print_json(o);
        json_decref(o);
      } else {
        printf("%s\n", tb_errmsg());
      }
      return 0;
    }
    return fail("%s", tb_errmsg());
  }
  uint32_t ver;
  r = tb_store_import(state, name, file, a->val['n'], import_progress, &p, &ver);
  progress_done(&p);
  if (raw[0])
    unlink(raw);
  if (r == -1)
    return fail("%s", tb_errmsg());
  struct tb_manifest *m = tb_manifest_load(state, name, ver);
  if (!m)
    return fail("%s", tb_errmsg());
  tb_eventf(state, "image-import", NULL, "{s:s, s:I, s:I, s:s}", "image", name, "version",
            (json_int_t)ver, "size", (json_int_t)m->size, "file", shown);
  char sha[65], size[32];
  tb_hex(m->sha256, 32, sha);
  human_size(m->size, size, sizeof size);
  if (ctl->json) {
    json_t *o = json_pack("{s:s, s:I, s:I, s:s}", "image", name, "version", (json_int_t)ver, "size",
                          (json_int_t)m->size, "sha256", sha);
    print_json(o);
    json_decref(o);
  } else {
    printf("imported %s as %s@%" PRIu32 " (%s, sha256 %.16s..., %.1f s)\n", shown, name, ver, size,
           sha, (double)(tb_now_ms() - p.start_ms) / 1000);
  }
  tb_manifest_free(m);
  return 0;
}

static json_t *version_json(const struct tb_manifest *m)
{
  char sha[65];
  tb_hex(m->sha256, 32, sha);
  json_t *o = json_pack("{s:I, s:I, s:s, s:s}", "version", (json_int_t)m->version, "size",
                        (json_int_t)m->size, "sha256", sha, "created", m->created);
  if (m->parent)
    json_object_set_new(o, "parent", json_integer(m->parent));
  if (m->note)
    json_object_set_new(o, "note", json_string(m->note));
  return o;
}

static int cmd_image_list(struct ctl *ctl, const struct args *a)
{
  const char *only = a->n ? a->op[0] : NULL;
  const char *state = state_dir(ctl);
  if (!state)
    return EXIT_FAIL;
  char **names;
  size_t n;
  if (tb_store_images(state, &names, &n) == -1)
    return fail("%s", tb_errmsg());
  json_t *images = json_array();
  int code = 0;
  for (size_t i = 0; i < n; i++) {
    if (only && strcmp(only, names[i]) != 0)
      continue;
    uint32_t *vers;
    size_t nv;
    if (tb_store_versions(state, names[i], &vers, &nv) == -1) {
      code = fail("%s", tb_errmsg());
      continue;
    }
    json_t *jv = json_array();
    for (size_t k = 0; k < nv; k++) {
      struct tb_manifest *m = tb_manifest_load(state, names[i], vers[k]);
      if (!m) {
        code = fail("%s", tb_errmsg());
        continue;
      }
      json_array_append_new(jv, version_json(m));
      tb_manifest_free(m);
    }
    free(vers);
    json_array_append_new(images, json_pack("{s:s, s:o}", "name", names[i], "versions", jv));
  }
  tb_strv_free(names, n);
  if (only && json_array_size(images) == 0) {
    json_decref(images);
    return fail("no image %s in %s (see tabulactl image list)", only, state);
  }
  if (ctl->json) {
    json_t *o = json_pack("{s:o}", "images", images);
    print_json(o);
    json_decref(o);
    return code;
  }
  struct table t = {.ncols = 6};
  table_row(&t, "IMAGE", "VERSION", "SIZE", "CREATED", "PARENT", "NOTE");
  size_t i;
  json_t *img;
  json_array_foreach(images, i, img)
  {
    size_t k;
    json_t *v;
    json_array_foreach(json_object_get(img, "versions"), k, v)
    {
      char ver[32], size[32], parent[32], created[64];
      table_row(&t, jstr(img, "name"), jnum(v, "version", ver, sizeof ver),
                jsize(v, "size", size, sizeof size),
                jlocal(v, "created", false, created, sizeof created),
                jnum(v, "parent", parent, sizeof parent), jstr(v, "note"));
    }
  }
  if (t.nrows == 1)
    printf("no images in %s (add one with: tabulactl image import NAME FILE)\n", state);
  else
    table_print(&t);
  json_decref(images);
  return code;
}

/* ---- image rm / gc (through the daemon: it knows every reference) -------------------- */

static int split_image_version(const char *arg, char *image, uint32_t *ver)
{
  const char *at = strchr(arg, '@');
  size_t len = at ? (size_t)(at - arg) : strlen(arg);
  if (len == 0 || len > TB_NAME_MAX)
    return usage_error("invalid image \"%.80s\"", arg);
  memcpy(image, arg, len);
  image[len] = '\0';
  if (!tb_name_valid(image))
    return usage_error("invalid image name \"%.80s\"", image);
  *ver = 0;
  if (at) {
    uint64_t v;
    if (parse_uint(at + 1, "version", UINT32_MAX, &v) || v == 0)
      return usage_error("invalid version in \"%.80s\" (expected IMAGE@N, N >= 1)", arg);
    *ver = (uint32_t)v;
  }
  return 0;
}

/* IMAGE@N with N given: the version to VERB; -1 after a usage error. */
static int image_at_version(const char *arg, const char *verb, char *image, uint32_t *ver)
{
  if (split_image_version(arg, image, ver))
    return -1;
  if (!*ver)
    return usage_error("say which version to %s: %s@N (see tabulactl image list)", verb, image), -1;
  return 0;
}

static json_t *image_rm_request(struct ctl *ctl, const struct args *a)
{
  (void)ctl;
  char image[TB_NAME_MAX + 1];
  uint32_t ver;
  if (image_at_version(a->op[0], "remove", image, &ver))
    return NULL;
  return json_pack("{s:s, s:s, s:I}", "op", "image-rm", "image", image, "version", (json_int_t)ver);
}

/* The daemon's "message", else the line FMT says (args as printf's). */
static int done_line(const json_t *res, const char *fmt, ...) TB_PRINTF(2, 3);
static int done_line(const json_t *res, const char *fmt, ...)
{
  const char *msg = json_string_value(json_object_get(res, "message"));
  if (msg) {
    puts(msg);
    return 0;
  }
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  putchar('\n');
  return 0;
}

static int image_rm_print(struct ctl *ctl, const struct args *a, const json_t *req,
                          const json_t *res)
{
  (void)ctl, (void)a;
  return done_line(res, "removed %s@%" JSON_INTEGER_FORMAT, jstr(req, "image"),
                   jint(req, "version"));
}

static json_t *image_gc_request(struct ctl *ctl, const struct args *a)
{
  (void)ctl;
  return json_pack("{s:s, s:b}", "op", "image-gc", "dry_run", a->seen['n'] != 0);
}

static int image_gc_print(struct ctl *ctl, const struct args *a, const json_t *req,
                          const json_t *res)
{
  (void)ctl, (void)req;
  bool dry = a->seen['n'] != 0;
  json_t *removed = json_object_get(res, "removed");
  size_t i;
  json_t *v;
  json_array_foreach(removed, i, v)
  {
    char size[32];
    printf("%s %s@%" JSON_INTEGER_FORMAT " (%s)\n", dry ? "would remove" : "removed",
           jstr(v, "image"), jint(v, "version"), jsize(v, "bytes", size, sizeof size));
  }
  char total[32];
  human_size((uint64_t)jint(res, "freed_bytes"), total, sizeof total);
  printf("%s %zu version%s, %s; kept %" JSON_INTEGER_FORMAT
         " referenced or newest version%s; removed %" JSON_INTEGER_FORMAT " leftover temporaries\n",
         dry ? "would free" : "freed", json_array_size(removed),
         json_array_size(removed) == 1 ? "" : "s", total, jint(res, "kept"),
         jint(res, "kept") == 1 ? "" : "s", jint(res, "temporaries"));
  return 0;
}

/* publish and pull live in ctl-image-repo.c (lib/repo-*.c do the work).
 * The state directory is found as for every other command: --state DIR,
 * else the configuration's state_dir.  With --state the configuration is
 * read only when one is named (-c, $TABULA_CONFIG), for its "pull" section.
 * CFG is then a shallow copy of it, only read. */
static int repo_config(struct ctl *ctl, struct tb_config *cfg)
{
  bool named = ctl->config_file || getenv("TABULA_CONFIG");
  if ((!ctl->state_dir || named) && load_config(ctl) == -1)
    return -1;
  *cfg = (struct tb_config){0};
  if (ctl->cfg)
    *cfg = *ctl->cfg;
  if (ctl->state_dir)
    cfg->state_dir = (char *)ctl->state_dir;
  return 0;
}

/* What ctl-image-repo.c returned; a usage error gets the usage line, as
 * usage_error gives every other command's. */
static int repo_exit(int r)
{
  if (r == EXIT_USAGE)
    fprintf(stderr, "usage: %s %s %s\n", prog, current->name, current->usage);
  return r;
}

static int cmd_image_publish(struct ctl *ctl, const struct args *a)
{
  struct tb_config cfg;
  if (repo_config(ctl, &cfg) == -1)
    return EXIT_FAIL;
  return repo_exit(ctl_image_publish(a->op[0], a->op[1], ctl->json || a->seen['j'],
                                     ctl->quiet || a->seen['q'], &cfg));
}

static int cmd_image_pull(struct ctl *ctl, const struct args *a)
{
  struct ctl_pull_options o = {.from = a->val['f'],
                               .version = a->val['V'],
                               .rate_limit = a->val['r'],
                               .parallel = a->val['p'],
                               .connect_timeout = a->val['C'],
                               .stall_timeout = a->val['S'],
                               .ca_file = a->val['A'],
                               .json = ctl->json || a->seen['j'],
                               .quiet = ctl->quiet || a->seen['q']};
  struct tb_config cfg;
  if (repo_config(ctl, &cfg) == -1)
    return EXIT_FAIL;
  return repo_exit(ctl_image_pull(a->op[0], &o, &cfg));
}

/* ---- image promote (canary versions, canary.c in the daemon) ------------------------ */

static json_t *image_promote_request(struct ctl *ctl, const struct args *a)
{
  (void)ctl;
  char image[TB_NAME_MAX + 1];
  uint32_t ver;
  if (image_at_version(a->op[0], "promote", image, &ver))
    return NULL;
  if (a->seen['c'] && !tb_name_valid(a->val['c'])) {
    usage_error("invalid group name \"%.80s\"", a->val['c']);
    return NULL;
  }
  json_t *req = json_pack("{s:s, s:s, s:I}", "op", "image-promote", "image", image, "version",
                          (json_int_t)ver);
  if (a->seen['c'])
    json_object_set_new(req, "canary", json_string(a->val['c']));
  return req;
}

static int image_promote_print(struct ctl *ctl, const struct args *a, const json_t *req,
                               const json_t *res)
{
  (void)ctl, (void)a;
  return done_line(res, "%s@%" JSON_INTEGER_FORMAT " promoted", jstr(req, "image"),
                   jint(req, "version"));
}

static const struct option import_options[] = {{"note", required_argument, NULL, 'n'},
                                               {"force", no_argument, NULL, 'f'},
                                               {"quiet", no_argument, NULL, 'q'},
                                               {0}};
static const struct option gc_options[] = {{"dry-run", no_argument, NULL, 'n'}, {0}};
static const struct option promote_options[] = {{"canary", required_argument, NULL, 'c'}, {0}};
static const struct option publish_options[] = {
    {"json", no_argument, NULL, 'j'}, {"quiet", no_argument, NULL, 'q'}, {0}};
/* Long options only; the values are checked by ctl-image-repo.c. */
static const struct option pull_options[] = {{"from", required_argument, NULL, 'f'},
                                             {"version", required_argument, NULL, 'V'},
                                             {"rate-limit", required_argument, NULL, 'r'},
                                             {"parallel", required_argument, NULL, 'p'},
                                             {"connect-timeout", required_argument, NULL, 'C'},
                                             {"stall-timeout", required_argument, NULL, 'S'},
                                             {"ca-file", required_argument, NULL, 'A'},
                                             {"json", no_argument, NULL, 'j'},
                                             {"quiet", no_argument, NULL, 'q'},
                                             {0}};

static int run_command(struct ctl *ctl, const struct command *c, int argc, char **argv);

static const struct command image_commands[] = {
    {.name = "import",
     .usage = "NAME FILE [--note TEXT] [--force] [-q]",
     .help = "Add FILE as the next version of image NAME, directly in the state directory (no\n"
             "daemon needed).  The version is published atomically with its manifest (size,\n"
             "sha256, per-chunk sha256).  Holes stay holes; a reflink is used where the\n"
             "filesystem allows.  A qcow2, VHD, VHDX or VMDK file is converted to raw with\n"
             "qemu-img first.  Refused without --force: a size different from the newest\n"
             "version's, a file in which a client's preserved or protected partition is\n"
             "missing.  A file identical to the newest version imports nothing and names that\n"
             "version.  -q: no progress line.",
     .options = import_options,
     .min = 2,
     .max = 2,
     .count_error = "expected NAME FILE",
     .run = cmd_image_import},
    {.name = "list",
     .usage = "[NAME]",
     .help = "List images and their versions, directly from the state directory (no daemon "
             "needed).",
     .max = 1,
     .count_error = "expected at most one image name",
     .run = cmd_image_list},
    {.name = "rm",
     .usage = "IMAGE@N",
     .help = "Remove a version.  Refused while any client, overlay, retained session or pin uses "
             "it.",
     .min = 1,
     .max = 1,
     .count_error = "expected IMAGE@N",
     .build = image_rm_request,
     .print = image_rm_print},
    {.name = "gc",
     .usage = "[--dry-run]",
     .help = "Remove every version that no client, overlay, retained session or pin references "
             "and\n"
             "that is not the newest of its image, and leftovers of interrupted builds.  Says what "
             "it\n"
             "freed.",
     .options = gc_options,
     .count_error = "gc takes no operands",
     .build = image_gc_request,
     .print = image_gc_print},
    {.name = "publish",
     .usage = "IMAGE[@N] DIR",
     .help = "Write a version into the static repository DIR (DIR/IMAGE/N.img, then\n"
             "DIR/IMAGE/index.json by rename), ready for nginx `root DIR` or `aws s3 sync`.",
     .options = publish_options,
     .min = 2,
     .max = 2,
     .count_error = "expected IMAGE[@N] DIR",
     .run = cmd_image_publish},
    {.name = "pull",
     .usage = "IMAGE [--from URL] [--version N] [--rate-limit RATE]",
     .help = "Fetch a version from a repository: only the chunks that differ from the nearest\n"
             "local version are downloaded, each verified by sha256; interrupted pulls resume.\n"
             "Options: --from URL (http, https, s3://BUCKET/PREFIX), --version N, --rate-limit\n"
             "RATE (bytes/s), --parallel N (default 4), --connect-timeout D (default 10s),\n"
             "--stall-timeout D (default 30s), --ca-file FILE, --json, --quiet.  The config's\n"
             "\"pull\" section can set other defaults; s3 URLs are signed (SigV4) with pull.s3\n"
             "or the AWS_* environment credentials.",
     .options = pull_options,
     .min = 1,
     .max = 1,
     .count_error = "expected one IMAGE",
     .run = cmd_image_pull},
    {.name = "promote",
     .usage = "IMAGE@N [--canary GROUP]",
     .help = "Make version N current for every client of IMAGE that has no configured version\n"
             "(mailbox pins are lifted, or set to N if N is not the newest).  With --canary, "
             "only\n"
             "GROUP gets N; the other clients stay on the previous version until N has\n"
             "watchdog.canary.promote_after healthy sessions in GROUP, and after withdraw_after\n"
             "strikes GROUP returns to the previous version.  Every step is an event.",
     .options = promote_options,
     .min = 1,
     .max = 1,
     .count_error = "expected IMAGE@N [--canary GROUP]",
     .build = image_promote_request,
     .print = image_promote_print},
};

static int cmd_image(struct ctl *ctl, int argc, char **argv)
{
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    printf("usage: %s image SUBCOMMAND ...\n\n", prog);
    for (size_t i = 0; i < sizeof image_commands / sizeof *image_commands; i++)
      printf("  image %-7s %s\n", image_commands[i].name, image_commands[i].usage);
    return argc < 2 ? EXIT_USAGE : 0;
  }
  for (size_t i = 0; i < sizeof image_commands / sizeof *image_commands; i++) {
    const struct command *c = &image_commands[i];
    if (strcmp(argv[1], c->name) == 0) {
      static struct command full;
      static char name[32];
      snprintf(name, sizeof name, "image %s", c->name);
      full = *c;
      full.name = name;
      return run_command(ctl, &full, argc - 1, argv + 1);
    }
  }
  return usage_error(
      "unknown image subcommand \"%s\" (import, list, rm, gc, publish, pull, promote)", argv[1]);
}

/* ---- daemon commands ------------------------------------------------------------------ */

/* Exit 1 when the appliance does not serve (nbdkit starting, restarting or
 * stopped), so a monitor or a script can tell; the output says why. */
static int status_serving(const json_t *res)
{
  const char *nbstate = json_string_value(json_object_get(json_object_get(res, "nbdkit"), "state"));
  return nbstate && strcmp(nbstate, "running") == 0 ? 0 : EXIT_FAIL;
}

static int print_status(struct ctl *ctl, const struct args *a, const json_t *req, const json_t *res)
{
  (void)ctl, (void)a, (void)req;
  const char *nbstate = json_string_value(json_object_get(json_object_get(res, "nbdkit"), "state"));
  int serving = status_serving(res);
  json_t *d = json_object_get(res, "daemon"), *nb = json_object_get(res, "nbdkit"),
         *cl = json_object_get(res, "clients"), *wh = json_object_get(res, "webhooks");
  char dirty[32];
  printf("daemon:   pid %" JSON_INTEGER_FORMAT ", up %" JSON_INTEGER_FORMAT " s, config %s\n",
         jint(d, "pid"), jint(d, "uptime_s"), jstr(d, "config"));
  printf("state:    %s\n", jstr(d, "state_dir"));
  printf("nbdkit:   %s", jstr(nb, "state"));
  if (jint(nb, "pid"))
    printf(", pid %" JSON_INTEGER_FORMAT, jint(nb, "pid"));
  printf(", %" JSON_INTEGER_FORMAT " restart%s, unix %s", jint(nb, "restarts"),
         jint(nb, "restarts") == 1 ? "" : "s", jstr(nb, "unix"));
  if (json_is_string(json_object_get(nb, "tcp")))
    printf(", tcp %s", jstr(nb, "tcp"));
  printf("\n");
  if (json_is_string(json_object_get(nb, "last_exit")))
    printf("          last exit: %s\n", jstr(nb, "last_exit"));
  if (json_is_integer(json_object_get(nb, "restart_in_ms")))
    printf("          next start in %.1f s (the backoff grows while nbdkit keeps exiting; see "
           "the daemon's log)\n",
           (double)jint(nb, "restart_in_ms") / 1000);
  char disks[64] = "";
  if (jint(cl, "disks"))
    snprintf(disks, sizeof disks, " (%" JSON_INTEGER_FORMAT " further disk%s)", jint(cl, "disks"),
             jint(cl, "disks") == 1 ? "" : "s");
  printf("clients:  %" JSON_INTEGER_FORMAT " configured%s, %" JSON_INTEGER_FORMAT
         " in a session, %" JSON_INTEGER_FORMAT " with pending actions, %s dirty\n",
         jint(cl, "total"), disks, jint(cl, "active"), jint(cl, "pending"),
         jsize(cl, "dirty_bytes", dirty, sizeof dirty));
  if (jint(cl, "locked_down"))
    printf("          %" JSON_INTEGER_FORMAT
           " locked down (tabulactl clients; tabulactl unlock ID)\n",
           jint(cl, "locked_down"));
  json_t *next = json_object_get(cl, "next_refresh");
  if (json_is_object(next)) {
    char when[96];
    printf("refresh:  next %s at %s\n", jstr(next, "client"), jtime(next, "ms", when, sizeof when));
  }
  json_t *images = json_object_get(res, "images");
  size_t i;
  json_t *v;
  json_array_foreach(images, i, v)
  {
    char latest[32];
    printf("%s%s@%s (%" JSON_INTEGER_FORMAT " version%s)", i ? ", " : "images:   ", jstr(v, "name"),
           jnum(v, "latest", latest, sizeof latest), jint(v, "versions"),
           jint(v, "versions") == 1 ? "" : "s");
  }
  if (json_array_size(images))
    printf("\n");
  json_array_foreach(json_object_get(res, "jobs"), i, v)
  {
    char done[32], total[32];
    printf("job:      %s %s (%s of %s)\n", jstr(v, "kind"), jstr(v, "what"),
           jsize(v, "done", done, sizeof done), jsize(v, "total", total, sizeof total));
  }
  json_t *pxe = json_object_get(res, "pxe");
  if (json_is_object(pxe) && strcmp(jstr(pxe, "state"), "off") != 0) {
    printf("pxe:      dnsmasq %s", jstr(pxe, "state"));
    if (jint(pxe, "pid"))
      printf(", pid %" JSON_INTEGER_FORMAT, jint(pxe, "pid"));
    printf(", %s on %s, %" JSON_INTEGER_FORMAT " PXE clients\n", jstr(pxe, "server"),
           jstr(pxe, "interface"), jint(pxe, "clients"));
    if (json_is_string(json_object_get(pxe, "error")))
      printf("          %s\n", jstr(pxe, "error"));
  }
  json_t *isc = json_object_get(res, "iscsi");
  if (json_is_object(isc) && strcmp(jstr(isc, "state"), "off") != 0) {
    printf("iscsi:    tabula-iscsid %s", jstr(isc, "state"));
    if (jint(isc, "pid"))
      printf(", pid %" JSON_INTEGER_FORMAT, jint(isc, "pid"));
    printf(", %" JSON_INTEGER_FORMAT " restart%s, on %s, targets %s:ID\n", jint(isc, "restarts"),
           jint(isc, "restarts") == 1 ? "" : "s", jstr(isc, "listen"), jstr(isc, "iqn_prefix"));
    if (json_is_string(json_object_get(isc, "last_exit")))
      printf("          last exit: %s\n", jstr(isc, "last_exit"));
    if (json_is_string(json_object_get(isc, "error")))
      printf("          %s\n", jstr(isc, "error"));
  }
  if (wh)
    printf("webhooks: %" JSON_INTEGER_FORMAT " sent, %" JSON_INTEGER_FORMAT
           " failed, %" JSON_INTEGER_FORMAT " queued, %" JSON_INTEGER_FORMAT " dropped\n",
           jint(wh, "sent"), jint(wh, "failed"), jint(wh, "queued"), jint(wh, "dropped"));
  if (serving != 0)
    fprintf(stderr,
            "tabulactl: the appliance does not serve: nbdkit is %s (see the daemon's "
            "log: journalctl -u tabula-restored)\n",
            nbstate ? nbstate : "unknown");
  return serving;
}

static const char *pending_text(const json_t *c, char *buf, size_t len)
{
  buf[0] = '\0';
  size_t i;
  json_t *v;
  json_array_foreach(json_object_get(c, "pending"), i, v)
  {
    size_t n = strlen(buf);
    snprintf(buf + n, len - n, "%s%s", n ? "," : "", json_string_value(v));
  }
  return buf[0] ? buf : "-";
}

/* The boot session of a client (its "live" object): "running", "running
 * (frontend gone)", "ended". */
static const char *live_state(const json_t *c, char *buf, size_t len)
{
  json_t *live = json_object_get(c, "live");
  if (!json_is_object(live))
    return "-";
  snprintf(buf, len, "%s%s", jstr(live, "state"),
           json_is_true(json_object_get(live, "frontend_gone")) ? " (frontend gone)" : "");
  return buf;
}

/* Its connections' peers, "10.20.0.21,10.20.0.21" or "-". */
static const char *live_peers(const json_t *c, char *buf, size_t len)
{
  buf[0] = '\0';
  size_t i;
  json_t *v;
  json_array_foreach(json_object_get(json_object_get(c, "live"), "connections"), i, v)
  {
    size_t n = strlen(buf);
    snprintf(buf + n, len - n, "%s%s", n ? "," : "", jstr(v, "peer"));
  }
  return buf[0] ? buf : "-";
}

/* How its session's boot was recognised: "dhcp #4", "token", "-". */
static const char *live_boot(const json_t *c, char *buf, size_t len)
{
  json_t *boot = json_object_get(json_object_get(c, "live"), "boot");
  if (!json_is_object(boot) || !json_is_string(json_object_get(boot, "via")))
    return "-";
  if (json_integer_value(json_object_get(boot, "marker_seq")) > 0)
    snprintf(buf, len, "%s #%" JSON_INTEGER_FORMAT, jstr(boot, "via"), jint(boot, "marker_seq"));
  else
    snprintf(buf, len, "%s", jstr(boot, "via"));
  return buf;
}

static int print_unknown(struct ctl *ctl, const struct args *a, const json_t *req,
                         const json_t *res)
{
  (void)ctl, (void)a, (void)req;
  struct table t = {.ncols = 7};
  table_row(&t, "MAC", "ADDRESS", "PXE", "VENDOR CLASS", "FIRST SEEN", "LAST SEEN", "COUNT");
  size_t i;
  json_t *u;
  json_array_foreach(json_object_get(res, "unknown"), i, u)
  {
    char first[96], last[96], count[32];
    table_row(&t, jstr(u, "mac"), jstr(u, "address"),
              json_is_true(json_object_get(u, "pxe")) ? "yes" : "no", jstr(u, "vendor_class"),
              jtime(u, "first_seen_ms", first, sizeof first),
              jtime(u, "last_seen_ms", last, sizeof last), jnum(u, "count", count, sizeof count));
  }
  if (t.nrows == 1) {
    printf("no unknown PCs asked for a lease (pxe.unknown_range gives them one, so they are "
           "recorded)\n");
    table_free(&t);
  } else {
    table_print(&t);
    printf("\nregister one with: %s register MAC ID [--group G] [--address A]\n", prog);
  }
  return 0;
}

static json_t *clients_request(struct ctl *ctl, const struct args *a)
{
  (void)ctl;
  return json_pack("{s:s}", "op", a->seen['u'] ? "pxe-unknown" : "clients");
}

static int print_clients(struct ctl *ctl, const struct args *a, const json_t *req,
                         const json_t *res)
{
  (void)req;
  if (a->seen['u'])
    return print_unknown(ctl, a, req, res);
  struct table t = {.ncols = 12};
  table_row(&t, "CLIENT", "GROUP", "POLICY", "BASE", "NEXT", "STATE", "SESSION", "DIRTY", "PENDING",
            "BOOT SESSION", "PEERS", "BOOT");
  size_t i;
  json_t *c;
  json_array_foreach(json_object_get(res, "clients"), i, c)
  {
    char base[96], next[96], sess[32], dirty[32], pend[128], live[64], peers[256], boot[64];
    snprintf(base, sizeof base, "%s@%" JSON_INTEGER_FORMAT, jstr(c, "image"), jint(c, "version"));
    if (!jint(c, "version"))
      snprintf(base, sizeof base, "-");
    /* A pin (or a maintenance PC's image) decides the next version, not the base. */
    snprintf(next, sizeof next, "%s@%" JSON_INTEGER_FORMAT "%s", jstr(c, "next_image"),
             jint(c, "next_version"),
             json_is_object(json_object_get(c, "maintenance")) ? " (maintenance)"
             : json_is_true(json_object_get(c, "pinned"))      ? " (pinned)"
                                                               : "");
    if (!jint(c, "next_version"))
      snprintf(next, sizeof next, "-");
    table_row(&t, jstr(c, "id"),
              json_is_string(json_object_get(c, "group")) ? jstr(c, "group") : "-",
              jstr(c, "policy"), base, next, jstr(c, "state"),
              jnum(c, "session", sess, sizeof sess), jsize(c, "dirty_bytes", dirty, sizeof dirty),
              pending_text(c, pend, sizeof pend), live_state(c, live, sizeof live),
              live_peers(c, peers, sizeof peers), live_boot(c, boot, sizeof boot));
  }
  table_print(&t);
  return 0;
}

static void print_sessions_table(const json_t *sessions)
{
  struct table t = {.ncols = 5};
  table_row(&t, "SESSION", "BASE", "DIRTY", "ON DISK", "ENDED");
  size_t i;
  json_t *s;
  json_array_foreach(sessions, i, s)
  {
    char num[32], base[96], dirty[32], disk[32], ended[64];
    snprintf(base, sizeof base, "%s@%" JSON_INTEGER_FORMAT, jstr(s, "image"), jint(s, "version"));
    table_row(
        &t, jnum(s, "session", num, sizeof num), base, jsize(s, "dirty_bytes", dirty, sizeof dirty),
        jsize(s, "disk_bytes", disk, sizeof disk), jlocal(s, "ended", false, ended, sizeof ended));
  }
  if (t.nrows == 1) {
    printf("no retained sessions\n");
    table_free(&t);
  } else {
    table_print(&t);
  }
}

/* {"op": OP, "client": ID}: client, sessions. */
static json_t *client_request(struct ctl *ctl, const struct args *a)
{
  (void)ctl;
  if (check_client_arg(a->op[0]))
    return NULL;
  return json_pack("{s:s, s:s}", "op", current->op, "client", a->op[0]);
}

static int print_client(struct ctl *ctl, const struct args *a, const json_t *req, const json_t *res)
{
  (void)ctl, (void)a, (void)req;
  char buf[64], pend[128];
  printf("client:       %s\n", jstr(res, "id"));
  if (json_is_string(json_object_get(res, "group")))
    printf("group:        %s\n", jstr(res, "group"));
  if (json_is_string(json_object_get(res, "disk")))
    printf("disk:         %s of client %s%s\n", jstr(res, "disk"), jstr(res, "client"),
           json_is_true(json_object_get(res, "read_only")) ? " (read-only)" : "");
  json_t *disks = json_object_get(res, "disks");
  if (json_array_size(disks) > 0) {
    printf("disks:        %s (this one, export %s)", jstr(res, "id"), jstr(res, "id"));
    size_t k;
    json_t *dv;
    json_array_foreach(disks, k, dv) printf(", %s", json_string_value(dv));
    printf("\n");
  }
  printf("policy:       %s (keep %" JSON_INTEGER_FORMAT " sessions)\n", jstr(res, "policy"),
         jint(res, "keep_sessions"));
  if (jint(res, "version"))
    printf("base:         %s@%" JSON_INTEGER_FORMAT "\n", jstr(res, "image"), jint(res, "version"));
  else
    printf("base:         - (no overlay yet)\n");
  /* The pin is the next clean start's version; an overlay kept stays on its base. */
  if (json_is_true(json_object_get(res, "keeps_overlay")) && jint(res, "version"))
    printf("next session: %s@%" JSON_INTEGER_FORMAT " (keeps its overlay; a clean start is on "
           "%s@%" JSON_INTEGER_FORMAT "%s)\n",
           jstr(res, "image"), jint(res, "version"), jstr(res, "next_image"),
           jint(res, "next_version"),
           json_is_true(json_object_get(res, "pinned")) ? ", pinned" : "");
  else
    printf("next session: %s@%" JSON_INTEGER_FORMAT "%s\n", jstr(res, "next_image"),
           jint(res, "next_version"),
           json_is_true(json_object_get(res, "pinned")) ? " (pinned)" : "");
  json_t *maint = json_object_get(res, "maintenance");
  if (json_is_object(maint)) {
    char since[96];
    printf("maintenance:  the maintenance PC of %s since %s (from %s@%" JSON_INTEGER_FORMAT
           "): tabulactl maintenance finish %s\n",
           jstr(maint, "image"), jtime(maint, "since", since, sizeof since), jstr(maint, "image"),
           jint(maint, "from_version"), jstr(res, "id"));
  }
  printf("state:        %s", jstr(res, "state"));
  if (json_is_string(json_object_get(res, "lockdown")))
    printf(" (locked down: its export is refused until tabulactl unlock %s)", jstr(res, "id"));
  printf("\n");
  printf("session:      %s\n", jnum(res, "session", buf, sizeof buf));
  printf("dirty:        %s\n", jsize(res, "dirty_bytes", buf, sizeof buf));
  if (jint(res, "quota_bytes") > 0) {
    char used[32];
    json_t *fig = json_object_get(json_object_get(res, "live"), "figures");
    printf("quota:        %s", jsize(res, "quota_bytes", buf, sizeof buf));
    if (json_is_object(fig))
      printf(" (%s of data used)", jsize(fig, "data_bytes", used, sizeof used));
    printf("\n");
  }
  printf("on disk:      %s\n", jsize(res, "disk_bytes", buf, sizeof buf));
  json_t *lim = json_object_get(res, "limits");
  if (json_is_object(lim)) {
    static const char *const keys[] = {"read_bytes_per_s", "write_bytes_per_s", "read_iops",
                                       "write_iops"};
    static const char *const names[] = {"read", "write", "read", "write"};
    printf("limits:      ");
    for (int k = 0; k < 4; k++) {
      json_int_t v = jint(lim, keys[k]);
      char sz[32];
      if (k < 2)
        human_size((uint64_t)v, sz, sizeof sz);
      if (!v)
        printf(" %s%s unlimited", names[k], k < 2 ? "" : " IOPS");
      else if (k < 2)
        printf(" %s %s/s", names[k], sz);
      else
        printf(" %s %" JSON_INTEGER_FORMAT " IOPS", names[k], v);
      printf(k < 3 ? "," : "\n");
    }
  }
  printf("pending:      %s\n", pending_text(res, pend, sizeof pend));
  if (json_is_string(json_object_get(res, "refresh"))) {
    char when[96];
    printf("refresh:      %s\n", jstr(res, "refresh"));
    printf("  next:       %s\n", jtime(res, "next_refresh_ms", when, sizeof when));
    printf("  last:       %s\n", jtime(res, "last_refresh_ms", when, sizeof when));
  }
  json_t *merge = json_object_get(res, "merge");
  if (json_is_object(merge)) {
    char when[96];
    printf("merge:        into %s, %s\n", json_string_value(json_object_get(merge, "into")),
           json_string_value(json_object_get(merge, "when")));
    printf("  next:       %s%s\n", jtime(res, "next_merge_ms", when, sizeof when),
           json_is_true(json_object_get(res, "merge_waiting"))
               ? " (one is due: waiting for the session to end)"
               : "");
    printf("  last:       %s\n", jtime(res, "last_merge_ms", when, sizeof when));
  }
  json_t *pxe = json_object_get(res, "pxe");
  if (json_is_object(pxe))
    printf("pxe:          mac %s, address %s\n", jstr(pxe, "mac"), jstr(pxe, "address"));
  json_t *live = json_object_get(res, "live");
  if (json_is_object(live)) {
    char st[64], when[96];
    printf("boot session: %s", live_state(res, st, sizeof st));
    if (json_is_integer(json_object_get(live, "session")))
      printf(", session %" JSON_INTEGER_FORMAT, jint(live, "session"));
    if (json_is_integer(json_object_get(live, "grace_until")))
      printf(", waits for its boot until %s", jtime(live, "grace_until", when, sizeof when));
    printf("\n");
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(live, "connections"), i, v)
        printf("  connection: %s %s since %s\n", jstr(v, "frontend"), jstr(v, "peer"),
               jtime(v, "since", when, sizeof when));
    json_t *boot = json_object_get(live, "boot");
    if (json_is_object(boot)) {
      printf("  opened by:  %s", jstr(boot, "via"));
      if (json_is_string(json_object_get(boot, "token")))
        printf(" (boot id %s)", jstr(boot, "token"));
      if (jint(boot, "marker_seq"))
        printf(" (boot marker %" JSON_INTEGER_FORMAT ")", jint(boot, "marker_seq"));
      if (json_is_string(json_object_get(boot, "detail")))
        printf(": %s", jstr(boot, "detail"));
      printf("\n");
    }
    json_t *m = json_object_get(live, "last_boot_marker");
    if (json_is_object(m))
      printf("last boot:    marker %" JSON_INTEGER_FORMAT " via %s at %s: %s\n", jint(m, "seq"),
             jstr(m, "via"), jtime(m, "at", when, sizeof when), jstr(m, "detail"));
    else
      printf("last boot:    - (no PXE boot seen)\n");
  }
  json_t *last = json_object_get(res, "last_session");
  if (json_is_object(last)) {
    char rd[32], wr[32], from[64], to[64];
    bool cut = !strcmp(jstr(last, "state"), "interrupted");
    printf("last session: %" JSON_INTEGER_FORMAT " %s, %s -> %s, read %s, written %s\n",
           jint(last, "session"),
           cut ? "interrupted (its frontend stopped without ending it: it resumes, or ends, when "
                 "the client connects again)"
               : jstr(last, "state"),
           jlocal(last, "started", false, from, sizeof from),
           jlocal(last, "ended", false, to, sizeof to), jsize(last, "bytes_read", rd, sizeof rd),
           jsize(last, "bytes_written", wr, sizeof wr));
  }
  printf("\n");
  print_sessions_table(json_object_get(res, "sessions"));
  return 0;
}

static int print_sessions(struct ctl *ctl, const struct args *a, const json_t *req,
                          const json_t *res)
{
  (void)ctl, (void)a, (void)req;
  print_sessions_table(json_object_get(res, "sessions"));
  return 0;
}

/* rollback ID [--all-disks]: with --all-disks, ID and each of its further
 * disks (conf.h "disks"), each its own request. */
static int cmd_rollback(struct ctl *ctl, const struct args *a)
{
  const char *id = a->op[0];
  if (check_client_arg(id))
    return EXIT_USAGE;
  if (a->seen['a'] && strchr(id, '/'))
    return usage_error("--all-disks takes a client (%.*s), not one of its disks",
                       (int)strcspn(id, "/"), id);
  json_t *ids = json_pack("[s]", id);
  if (a->seen['a']) {
    int code;
    json_t *res =
        request(ctl, json_pack("{s:s, s:s}", "op", "client", "client", id), NULL, NULL, &code);
    if (!res) {
      json_decref(ids);
      return code;
    }
    json_array_extend(ids, json_object_get(res, "disks"));
    json_decref(res);
  }
  int worst = 0;
  size_t i;
  json_t *v;
  json_array_foreach(ids, i, v)
  {
    const char *one = json_string_value(v);
    int r = simple_request(ctl, json_pack("{s:s, s:s}", "op", "rollback", "client", one),
                           "%s: rollback at the next session start", one);
    if (r > worst)
      worst = r;
  }
  json_decref(ids);
  return worst;
}

static json_t *restore_request(struct ctl *ctl, const struct args *a)
{
  (void)ctl;
  uint64_t n;
  if (!a->seen['s']) {
    usage_error("expected ID --session N");
    return NULL;
  }
  if (check_client_arg(a->op[0]) || parse_uint(a->val['s'], "--session", INT64_MAX, &n))
    return NULL;
  return json_pack("{s:s, s:s, s:I}", "op", "restore", "client", a->op[0], "session",
                   (json_int_t)n);
}

static int restore_print(struct ctl *ctl, const struct args *a, const json_t *req,
                         const json_t *res)
{
  (void)ctl, (void)a;
  return done_line(
      res, "%s: session %" JSON_INTEGER_FORMAT " becomes the overlay at the next session start",
      jstr(req, "client"), jint(req, "session"));
}

static void merge_progress(void *ctx, json_t *line)
{
  json_t *p = json_object_get(line, "progress");
  if (p)
    progress_show(ctx, jstr(p, "phase"), (uint64_t)jint(p, "done"), (uint64_t)jint(p, "total"));
}

/* After a new version IMAGE@VER was made (merge, pull): the configured
 * clients that follow IMAGE's newest version checked against it, each one
 * that cannot be served named with the rule and the way back. */
static void check_new_version(struct ctl *ctl, const char *image, uint32_t ver)
{
  if (load_config(ctl) == -1)
    return;
  for (size_t i = 0; i < ctl->cfg->n_clients; i++) {
    const struct tb_client_conf *c = &ctl->cfg->clients[i];
    if (strcmp(c->image, image) != 0 || c->version ||
        tb_client_check_version(ctl->cfg, c, image, ver) == 0)
      continue;
    char back[128];
    promote_hint(image, ver > 1 ? ver - 1 : 0, back, sizeof back);
    fprintf(stderr, "%s: warning: %s (%s is refused on %s@%" PRIu32 "%s)\n", prog, tb_errmsg(),
            c->id, image, ver, back);
  }
}

/* A merge (merge, maintenance finish) with its progress line, which the
 * daemon feeds with interim lines when REQ asks for them ("progress"). */
static json_t *merge_request(struct ctl *ctl, const struct args *a, json_t *req, const char *what,
                             int *code)
{
  struct progress p;
  progress_init(&p, what, ctl->quiet || ctl->json || a->seen['q']);
  json_object_set_new(req, "progress", json_boolean(p.on));
  json_t *res = request(ctl, req, merge_progress, &p, code);
  progress_done(&p);
  return res;
}

static int cmd_merge(struct ctl *ctl, const struct args *a)
{
  if (!a->seen['i'])
    return usage_error("expected ID --into IMAGE");
  if (check_client_arg(a->op[0]))
    return EXIT_USAGE;
  if (!tb_name_valid(a->val['i']))
    return usage_error("invalid image name \"%.80s\"", a->val['i']);
  json_t *req =
      json_pack("{s:s, s:s, s:s}", "op", "merge", "client", a->op[0], "into", a->val['i']);
  if (a->seen['n'])
    json_object_set_new(req, "note", json_string(a->val['n']));
  if (a->seen['f'])
    json_object_set_new(req, "force", json_true());
  if (a->seen['s']) {
    uint64_t n;
    if (parse_uint(a->val['s'], "--session", INT64_MAX, &n)) {
      json_decref(req);
      return EXIT_USAGE;
    }
    json_object_set_new(req, "session", json_integer((json_int_t)n));
  }
  char what[128];
  snprintf(what, sizeof what, "merging %s into %s", a->op[0], a->val['i']);
  int code;
  json_t *res = merge_request(ctl, a, req, what, &code);
  if (!res)
    return code;
  if (ctl->json) {
    print_json(res);
  } else {
    char changed[32], dirty[32];
    printf("merged %s into %s@%" JSON_INTEGER_FORMAT " (from %s@%" JSON_INTEGER_FORMAT
           "): %s dirty, %s differed from the base, %.1f s%s\n",
           a->op[0], jstr(res, "image"), jint(res, "version"), jstr(res, "base_image"),
           jint(res, "base_version"), jsize(res, "dirty_bytes", dirty, sizeof dirty),
           jsize(res, "changed_bytes", changed, sizeof changed),
           (double)jint(res, "duration_ms") / 1000,
           json_is_true(json_object_get(res, "reflink")) ? ", reflinked" : "");
  }
  if (json_is_string(json_object_get(res, "image")))
    check_new_version(ctl, jstr(res, "image"), (uint32_t)jint(res, "version"));
  json_decref(res);
  return 0;
}

/* ---- maintenance: the maintenance PC of an image (restored/maintenance.c) ------------ */

static int maintenance_list(struct ctl *ctl)
{
  int code;
  json_t *res = request(ctl, json_pack("{s:s}", "op", "maintenance-list"), NULL, NULL, &code);
  if (!res)
    return code;
  json_t *arr = json_object_get(res, "maintenance");
  if (ctl->json) {
    print_json(res);
  } else if (json_array_size(arr) == 0) {
    puts("no maintenance PC (tabulactl maintenance start ID --image IMAGE makes one)");
  } else {
    struct table t = {.ncols = 4};
    table_row(&t, "CLIENT", "FROM", "SINCE", "SESSION");
    size_t i;
    json_t *m;
    json_array_foreach(arr, i, m)
    {
      char from[96], since[96];
      snprintf(from, sizeof from, "%s@%" JSON_INTEGER_FORMAT, jstr(m, "image"),
               jint(m, "from_version"));
      table_row(&t, jstr(m, "client"), from, jtime(m, "since", since, sizeof since),
                json_is_true(json_object_get(m, "in_session")) ? "running" : "-");
    }
    table_print(&t);
  }
  json_decref(res);
  return 0;
}

/* maintenance SUB ...: SUB is the first operand (options may stand anywhere). */
static int cmd_maintenance(struct ctl *ctl, const struct args *a)
{
  bool any_option = a->seen['i'] || a->seen['n'] || a->seen['q'];
  if (a->n == 0 && !any_option)
    return maintenance_list(ctl);
  if (a->n == 0 || strcmp(a->op[0], "list") == 0)
    return a->n == 1 && !any_option ? maintenance_list(ctl)
                                    : usage_error("maintenance list takes no operand");
  const char *sub = a->op[0];
  if (strcmp(sub, "start") && strcmp(sub, "finish") && strcmp(sub, "abort"))
    return usage_error("unknown maintenance subcommand \"%.40s\" (start, finish, abort, list)",
                       sub);
  if (a->n != 2)
    return usage_error("expected: maintenance %s ID%s", sub,
                       !strcmp(sub, "start")    ? " --image IMAGE"
                       : !strcmp(sub, "finish") ? " [--note TEXT]"
                                                : "");
  const char *id = a->op[1];
  if (check_client_arg(id))
    return EXIT_USAGE;
  if (!strcmp(sub, "start") && !a->seen['i'])
    return usage_error("say which image %s maintains: --image IMAGE", id);
  if (strcmp(sub, "start") && a->seen['i'])
    return usage_error("--image is for maintenance start");
  if (a->seen['n'] && strcmp(sub, "finish"))
    return usage_error("--note is for maintenance finish");
  if (!strcmp(sub, "start") && !tb_name_valid(a->val['i']))
    return usage_error("invalid image name \"%.80s\"", a->val['i']);
  char op[32];
  snprintf(op, sizeof op, "maintenance-%s", sub);
  json_t *req = json_pack("{s:s, s:s}", "op", op, "client", id);
  if (a->seen['i'])
    json_object_set_new(req, "image", json_string(a->val['i']));
  if (strcmp(sub, "finish"))
    return simple_request(ctl, req, NULL);
  if (a->seen['n'])
    json_object_set_new(req, "note", json_string(a->val['n']));
  char what[128];
  snprintf(what, sizeof what, "merging %s's maintenance", id);
  int code;
  json_t *res = merge_request(ctl, a, req, what, &code);
  if (!res)
    return code;
  if (ctl->json) {
    print_json(res);
  } else {
    char changed[32];
    printf("%s's maintenance is %s@%" JSON_INTEGER_FORMAT " (from %s@%" JSON_INTEGER_FORMAT
           ", %s changed), now the newest: every client following %s boots it next; %s is back "
           "on its own configuration from its next boot\n",
           id, jstr(res, "image"), jint(res, "version"), jstr(res, "base_image"),
           jint(res, "base_version"), jsize(res, "changed_bytes", changed, sizeof changed),
           jstr(res, "image"), id);
  }
  json_decref(res);
  return 0;
}

static json_t *refresh_request(struct ctl *ctl, const struct args *a)
{
  (void)ctl;
  if ((a->n == 1) == (a->seen['g'] != 0)) {
    usage_error("expected ID or --group GROUP");
    return NULL;
  }
  if (a->seen['g']) {
    if (!tb_name_valid(a->val['g'])) {
      usage_error("invalid group name \"%.80s\"", a->val['g']);
      return NULL;
    }
    return json_pack("{s:s, s:s}", "op", "refresh", "group", a->val['g']);
  }
  if (check_client_arg(a->op[0]))
    return NULL;
  return json_pack("{s:s, s:s}", "op", "refresh", "client", a->op[0]);
}

static void print_event(struct ctl *ctl, const json_t *ev)
{
  if (ctl->json) {
    char *text = json_dumps(ev, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (text)
      puts(text);
    free(text);
    json_printed = true; /* a stream of documents: no error document after it */
    fflush(stdout);
    return;
  }
  char when[64];
  printf("%s %-16s %-10s", jlocal(ev, "time", true, when, sizeof when), jstr(ev, "type"),
         json_is_string(json_object_get(ev, "client")) ? jstr(ev, "client") : "-");
  const char *key;
  json_t *v;
  json_object_foreach((json_t *)ev, key, v)
  {
    if (!strcmp(key, "time") || !strcmp(key, "ts") || !strcmp(key, "type") ||
        !strcmp(key, "client"))
      continue;
    char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    printf(" %s=%s", key, text ? text : "?");
    free(text);
  }
  printf("\n");
  fflush(stdout);
}

static void events_line(void *ctx, json_t *line)
{
  json_t *ev = json_object_get(line, "event");
  if (ev)
    print_event(ctx, ev);
}

static int cmd_events(struct ctl *ctl, const struct args *a)
{
  uint64_t last = 20;
  if (a->seen['n'] && parse_uint(a->val['n'], "--last", 1000000, &last))
    return EXIT_USAGE;
  json_t *req = json_pack("{s:s, s:b, s:I}", "op", "events", "follow", a->seen['f'] != 0, "last",
                          (json_int_t)last);
  if (a->seen['c']) {
    if (check_client_arg(a->val['c'])) {
      json_decref(req);
      return EXIT_USAGE;
    }
    json_object_set_new(req, "client", json_string(a->val['c']));
  }
  int code;
  json_t *res = request(ctl, req, events_line, ctl, &code);
  if (!res)
    return code;
  size_t i;
  json_t *ev;
  json_array_foreach(json_object_get(res, "events"), i, ev) print_event(ctl, ev);
  json_decref(res);
  return 0;
}

/* ---- main ------------------------------------------------------------------------------- */

/* ---- watchdog: lockdown, unlock, quarantine ------------------------------------------- */

static int quarantine_number(const char *s, uint64_t *n)
{
  return parse_uint(s, "quarantine number", INT64_MAX, n) || *n == 0
             ? usage_error("invalid quarantine number \"%.40s\" (see tabulactl quarantine list)", s)
             : 0;
}

static int cmd_quarantine(struct ctl *ctl, const struct args *a)
{
  int n = a->n;
  const char *sub = n > 0 ? a->op[0] : "";
  uint64_t num = 0;
  json_t *req;
  if (strcmp(sub, "list") == 0 && n <= 2) {
    if (n == 2 && check_client_arg(a->op[1]))
      return EXIT_USAGE;
    req = json_pack("{s:s}", "op", "quarantine-list");
    if (n == 2)
      json_object_set_new(req, "client", json_string(a->op[1]));
  } else if ((strcmp(sub, "show") == 0 || strcmp(sub, "release") == 0) && n == 3) {
    if (check_client_arg(a->op[1]) || quarantine_number(a->op[2], &num))
      return EXIT_USAGE;
    bool show = strcmp(sub, "show") == 0;
    if (show && a->seen['r'])
      return usage_error("--restore goes with quarantine release");
    req = json_pack("{s:s, s:s, s:I}", "op", show ? "quarantine-show" : "quarantine-release",
                    "client", a->op[1], "number", (json_int_t)num);
    if (a->seen['r'])
      json_object_set_new(req, "restore", json_true());
    if (!show)
      return simple_request(ctl, req, "released");
  } else {
    return usage_error("expected list [ID], show ID N or release ID N [--restore]");
  }
  int code;
  json_t *res = request(ctl, req, NULL, NULL, &code);
  if (!res)
    return code;
  if (ctl->json || strcmp(sub, "show") == 0) {
    print_json(res);
  } else {
    json_t *arr = json_object_get(res, "quarantine");
    struct table t = {.ncols = 6};
    table_row(&t, "CLIENT", "N", "SESSION", "BASE", "TIME", "REASON");
    size_t i;
    json_t *e;
    json_array_foreach(arr, i, e)
    {
      char nb[32], sb[32], base[TB_NAME_MAX + 32], when[64];
      snprintf(base, sizeof base, "%s@%" JSON_INTEGER_FORMAT, jstr(e, "image"), jint(e, "version"));
      table_row(&t, jstr(e, "client"), jnum(e, "number", nb, sizeof nb),
                jnum(e, "session", sb, sizeof sb), base,
                jlocal(e, "time", false, when, sizeof when), jstr(e, "reason"));
    }
    if (t.nrows == 1) {
      table_free(&t);
      puts("no quarantined overlays");
    } else {
      table_print(&t);
    }
  }
  json_decref(res);
  return 0;
}

/* ---- PXE ------------------------------------------------------------------------------------ */

static int print_pxe(struct ctl *ctl, const struct args *a, const json_t *req, const json_t *res)
{
  (void)ctl, (void)req;
  fputs(jstr(res, a->seen['H'] ? "hosts" : "dnsmasq_conf"), stdout);
  return 0;
}

/* dnsmasq's dhcp-script: ACTION MAC ADDRESS [HOSTNAME], or tftp SIZE ADDRESS
 * FILE; the DNSMASQ_* environment adds the vendor and user classes.  Quiet
 * on success (dnsmasq logs what a script prints). */
static int cmd_pxe_event(struct ctl *ctl, int argc, char **argv)
{
  if (argc < 4 || argc > 5)
    return usage_error("expected ACTION MAC ADDRESS [HOSTNAME] or tftp SIZE ADDRESS FILE");
  json_t *req = json_pack("{s:s, s:s}", "op", "pxe-event", "action", argv[1]);
  if (strcmp(argv[1], "tftp") == 0) {
    if (argc != 5)
      return json_decref(req), usage_error("tftp needs SIZE ADDRESS FILE");
    uint64_t size;
    if (parse_uint(argv[2], "SIZE", UINT64_MAX >> 1, &size))
      return json_decref(req), EXIT_USAGE;
    json_object_set_new(req, "size", json_integer((json_int_t)size));
    json_object_set_new(req, "address", json_string(argv[3]));
    json_object_set_new(req, "file", json_string(argv[4]));
  } else {
    json_object_set_new(req, "mac", json_string(argv[2]));
    json_object_set_new(req, "address", json_string(argv[3]));
    if (argc == 5)
      json_object_set_new(req, "hostname", json_string(argv[4]));
    const char *vendor = getenv("DNSMASQ_VENDOR_CLASS");
    if (vendor)
      json_object_set_new(req, "vendor_class", json_string(vendor));
    json_t *uc = json_array();
    for (int i = 0; i < 16; i++) {
      char name[32];
      snprintf(name, sizeof name, "DNSMASQ_USER_CLASS%d", i);
      if (getenv(name))
        json_array_append_new(uc, json_string(getenv(name)));
    }
    json_object_set_new(req, "user_class", uc);
  }
  if (getenv("DNSMASQ_TAGS"))
    json_object_set_new(req, "tags", json_string(getenv("DNSMASQ_TAGS")));
  if (getenv("DNSMASQ_INTERFACE"))
    json_object_set_new(req, "interface", json_string(getenv("DNSMASQ_INTERFACE")));
  int code;
  json_t *res = request(ctl, req, NULL, NULL, &code);
  if (!res)
    return code;
  if (ctl->json)
    print_json(res);
  json_decref(res);
  return 0;
}

/* The first address of pxe.network that is no client's, not the server's,
 * not in the unknown range, nor the network's or broadcast address. */
static int free_address(const struct tb_config *cfg, char *out, size_t len)
{
  const struct tb_pxe_conf *x = &cfg->pxe;
  uint32_t net, first = 0, last = 0, server;
  memcpy(&net, x->network.addr, 4);
  net = ntohl(net);
  uint32_t size = x->network.prefix >= 31 ? 1 : 1u << (32 - x->network.prefix);
  struct in_addr a;
  inet_pton(AF_INET, x->server, &a);
  server = ntohl(a.s_addr);
  if (x->unknown_first && inet_pton(AF_INET, x->unknown_first, &a) == 1)
    first = ntohl(a.s_addr);
  if (x->unknown_last && inet_pton(AF_INET, x->unknown_last, &a) == 1)
    last = ntohl(a.s_addr);
  for (uint32_t i = 1; i + 1 < size && i < 65536; i++) {
    uint32_t ip = net + i;
    bool used = ip == server || (x->unknown_first && ip >= first && ip <= last);
    for (size_t k = 0; k < cfg->n_clients && !used; k++) {
      uint32_t c;
      memcpy(&c, cfg->clients[k].address.addr, 4);
      used = cfg->clients[k].has_address && cfg->clients[k].address.family == AF_INET &&
             ntohl(c) == ip;
    }
    if (!used) {
      a.s_addr = htonl(ip);
      inet_ntop(AF_INET, &a, out, (socklen_t)len);
      return 0;
    }
  }
  return -1;
}

/* register MAC ID: the client entry to add (printed; with --write added to
 * the configuration file, which is checked, rewritten atomically and
 * reloaded). */
static int cmd_register(struct ctl *ctl, const struct args *a)
{
  char mac[18];
  const char *id = a->op[1];
  if (tb_mac_parse(a->op[0], mac) == -1)
    return usage_error("%s", tb_errmsg());
  if (check_client_arg(id))
    return EXIT_USAGE;
  if (load_config(ctl) == -1)
    return EXIT_FAIL;
  const struct tb_config *cfg = ctl->cfg;
  if (!cfg->pxe.enabled)
    return fail("%s has no \"pxe\" section: add one first (see tabula-restored(8))", cfg->path);
  if (tb_config_client(cfg, id))
    return fail("client \"%s\" already exists in %s: choose another id", id, cfg->path);
  const struct tb_client_conf *other = tb_config_client_by_mac(cfg, mac);
  if (other)
    return fail("MAC %s is already client \"%s\"", mac, other->id);
  char addr[64];
  if (a->seen['a'])
    snprintf(addr, sizeof addr, "%s", a->val['a']);
  else if (free_address(cfg, addr, sizeof addr) == -1)
    return fail("no free address left in pxe.network %s: pass --address", cfg->pxe.network_text);
  json_t *entry = json_object();
  if (a->seen['g'])
    json_object_set_new(entry, "group", json_string(a->val['g']));
  const char *image = a->seen['i'] ? a->val['i'] : NULL;
  if (!image && !a->seen['g']) {
    if (cfg->n_images != 1)
      return json_decref(entry), fail("pass --image IMAGE or --group GROUP (the configuration "
                                      "has %zu images)",
                                      cfg->n_images);
    image = cfg->images[0];
  }
  if (image)
    json_object_set_new(entry, "image", json_string(image));
  json_object_set_new(entry, "mac", json_string(mac));
  json_object_set_new(entry, "address", json_string(addr));

  /* The configuration with the client added, checked by the real parser. */
  json_t *root = json_load_file(cfg->path, JSON_REJECT_DUPLICATES, NULL);
  json_t *clients = json_object_get(root, "clients");
  if (!json_is_object(root))
    return json_decref(entry), fail("cannot read %s as JSON", cfg->path);
  if (!clients)
    json_object_set_new(root, "clients", clients = json_object());
  json_object_set(clients, id, entry);
  char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  json_decref(root);
  struct tb_config *check = text ? tb_config_parse(text, cfg->path) : NULL;
  if (!check) {
    free(text);
    json_decref(entry);
    return fail("%s (the client was not added)", tb_errmsg());
  }
  tb_config_unref(check);
  char *snippet = json_dumps(entry, JSON_PRESERVE_ORDER);
  json_decref(entry);
  if (!a->seen['w']) {
    printf("add this to \"clients\" in %s, then run %s reload (or pass --write):\n\n"
           "    \"%s\": %s\n",
           cfg->path, prog, id, snippet ? snippet : "?");
    free(snippet);
    free(text);
    return 0;
  }
  free(snippet);
  /* The file ends in a newline, as an editor leaves it. */
  CLEANUP_FREE char *file = NULL;
  int len = asprintf(&file, "%s\n", text);
  free(text);
  if (len == -1)
    return fail("out of memory (the client was not added)");
  struct stat st;
  int mode = stat(cfg->path, &st) == 0 ? (int)(st.st_mode & 07777) : 0644;
  int r = tb_write_file_atomic(cfg->path, file, (size_t)len, mode);
  if (r == -1)
    return fail("%s", tb_errmsg());
  printf("client %s (mac %s, address %s) added to %s\n", id, mac, addr, cfg->path);
  return simple_request(ctl, json_pack("{s:s}", "op", "reload"), "configuration reloaded");
}

/* ---- the dispatcher: options once, then a request or the command's own run ----------- */

/* OPERANDS as the usage error says them: "ID N", "ID [REASON]", "no operands". */
static void operands_text(const enum operand *operands, char *buf, size_t len)
{
  static const char *const text[] = {[OPERAND_CLIENT] = "ID",
                                     [OPERAND_PIN] = "N",
                                     [OPERAND_IMAGE] = "IMAGE[@N]",
                                     [OPERAND_REASON] = "[REASON]"};
  size_t used = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < 3 && operands[i] != OPERAND_NONE; i++)
    used += (size_t)snprintf(buf + used, len - used, "%s%s", i ? " " : "", text[operands[i]]);
  if (!used)
    snprintf(buf, len, "no operands");
}

/* A string argument into the request: one operand. */
static int put_operand(json_t *req, enum operand kind, const char *arg, char *shown, size_t len)
{
  snprintf(shown, len, "%s", arg);
  switch (kind) {
  case OPERAND_CLIENT:
    if (check_client_arg(arg))
      return -1;
    json_object_set_new(req, "client", json_string(arg));
    return 0;
  case OPERAND_PIN: {
    uint64_t v;
    if (parse_uint(arg, "version", UINT32_MAX, &v))
      return -1;
    if (v == 0) {
      usage_error("versions start at 1");
      return -1;
    }
    snprintf(shown, len, "%" PRIu64, v);
    json_object_set_new(req, "version", json_integer((json_int_t)v));
    return 0;
  }
  case OPERAND_IMAGE: {
    char image[TB_NAME_MAX + 1];
    uint32_t ver;
    if (split_image_version(arg, image, &ver))
      return -1;
    json_object_set_new(req, "image", json_string(image));
    if (ver)
      json_object_set_new(req, "version", json_integer(ver));
    return 0;
  }
  case OPERAND_REASON:
    json_object_set_new(req, "reason", json_string(arg));
    return 0;
  case OPERAND_NONE:
    break;
  }
  return -1;
}

/* DONE with %1, %2 replaced by SHOWN. */
static void print_done(const char *done, char shown[][TB_PATH_MAX], size_t n)
{
  for (const char *p = done; *p; p++) {
    if (p[0] == '%' && p[1] >= '1' && (size_t)(p[1] - '1') < n) {
      fputs(shown[p[1] - '1'], stdout);
      p++;
    } else {
      putchar(*p);
    }
  }
  putchar('\n');
}

/* A request command: BUILD's request or the OPERANDS', its result printed. */
static int run_request(struct ctl *ctl, const struct command *c, const struct args *a)
{
  char shown[3][TB_PATH_MAX];
  size_t nshown = 0;
  json_t *req;
  if (c->build) {
    if (!(req = c->build(ctl, a)))
      return EXIT_USAGE;
  } else {
    req = json_pack("{s:s}", "op", c->op ? c->op : c->name);
    for (; nshown < (size_t)a->n; nshown++)
      if (put_operand(req, c->operands[nshown], a->op[nshown], shown[nshown],
                      sizeof shown[nshown]) == -1) {
        json_decref(req);
        return EXIT_USAGE;
      }
  }
  int code;
  json_incref(req); /* PRINT reads it after request() consumed its reference */
  json_t *res = request(ctl, req, NULL, NULL, &code);
  if (res) {
    const char *msg = json_string_value(json_object_get(res, "message"));
    code = 0;
    if (ctl->json) {
      print_json(res);
      if (c->verdict)
        code = c->verdict(res);
    } else if (c->print) {
      code = c->print(ctl, a, req, res);
    } else if (msg) {
      puts(msg);
    } else if (c->done) {
      print_done(c->done, shown, nshown);
    }
    json_decref(res);
  }
  json_decref(req);
  return code;
}

/* C with its ARGV (argv[0] its name): --help, its options, its operand
 * count, then what it runs. */
static int run_command(struct ctl *ctl, const struct command *c, int argc, char **argv)
{
  current = c;
  if (c->raw != cmd_image && want_help(argc, argv)) {
    command_help(c);
    return 0;
  }
  if (c->raw)
    return c->raw(ctl, argc, argv);
  static const struct option none[] = {{0}};
  struct args a = {0};
  if (parse_opts(argc, argv, c->options ? c->options : none, a.seen, a.val))
    return EXIT_USAGE;
  a.n = argc - optind;
  a.op = argv + optind;
  int min = c->min, max = c->max;
  char expected[64];
  const char *count_error = c->count_error;
  if (!c->run && !c->build) { /* a simple command: its operands say it */
    min = max = 0;
    for (; max < 3 && c->operands[max] != OPERAND_NONE; max++)
      if (c->operands[max] != OPERAND_REASON)
        min++;
    char text[48];
    operands_text(c->operands, text, sizeof text);
    snprintf(expected, sizeof expected, "expected %s", text);
    count_error = expected;
  }
  if (a.n < min || a.n > max)
    return usage_error("%s", count_error);
  return c->run ? c->run(ctl, &a) : run_request(ctl, c, &a);
}

static const struct option clients_options[] = {{"unknown", no_argument, NULL, 'u'}, {0}};
static const struct option rollback_options[] = {{"all-disks", no_argument, NULL, 'a'}, {0}};
static const struct option restore_options[] = {{"session", required_argument, NULL, 's'}, {0}};
static const struct option merge_options[] = {
    {"into", required_argument, NULL, 'i'},    {"note", required_argument, NULL, 'n'},
    {"session", required_argument, NULL, 's'}, {"force", no_argument, NULL, 'f'},
    {"quiet", no_argument, NULL, 'q'},         {0}};
static const struct option maintenance_options[] = {{"image", required_argument, NULL, 'i'},
                                                    {"note", required_argument, NULL, 'n'},
                                                    {"quiet", no_argument, NULL, 'q'},
                                                    {0}};
static const struct option refresh_options[] = {{"group", required_argument, NULL, 'g'}, {0}};
static const struct option quarantine_options[] = {{"restore", no_argument, NULL, 'r'}, {0}};
static const struct option events_options[] = {{"follow", no_argument, NULL, 'f'},
                                               {"client", required_argument, NULL, 'c'},
                                               {"last", required_argument, NULL, 'n'},
                                               {0}};
static const struct option pxe_options[] = {{"hosts", no_argument, NULL, 'H'}, {0}};
static const struct option register_options[] = {{"group", required_argument, NULL, 'g'},
                                                 {"address", required_argument, NULL, 'a'},
                                                 {"image", required_argument, NULL, 'i'},
                                                 {"write", no_argument, NULL, 'w'},
                                                 {0}};

static const struct command commands[] = {
    {.name = "status",
     .usage = "",
     .help = "Show the daemon, nbdkit and a summary of clients and images.",
     .print = print_status,
     .verdict = status_serving},
    {.name = "clients",
     .usage = "[--unknown]",
     .help = "List clients: policy, base version, next version, state, dirty bytes, and the boot\n"
             "session (booting, running, reconnecting, ended), its peers and how its boot was "
             "seen.\n"
             "--unknown lists the MACs that asked for a PXE lease and are not configured.",
     .options = clients_options,
     .count_error = "expected no operands",
     .build = clients_request,
     .print = print_clients},
    {.name = "client",
     .usage = "ID",
     .help = "Show one client: policy, base version, pinned or not, dirty bytes, session state,\n"
             "pending actions, last session and retained sessions.",
     .min = 1,
     .max = 1,
     .count_error = "expected ID",
     .op = "client",
     .build = client_request,
     .print = print_client},
    {.name = "sessions",
     .usage = "ID",
     .help = "List a client's retained sessions (restore points).",
     .min = 1,
     .max = 1,
     .count_error = "expected ID",
     .op = "sessions",
     .build = client_request,
     .print = print_sessions},
    {.name = "rollback",
     .usage = "ID [--all-disks]",
     .help = "Discard the client's overlay at its next session start; --all-disks: and its "
             "further\n"
             "disks' (ID/DISK alone rolls back that disk).",
     .options = rollback_options,
     .min = 1,
     .max = 1,
     .count_error = "expected ID [--all-disks]",
     .run = cmd_rollback},
    {.name = "restore",
     .usage = "ID --session N",
     .help = "Make retained session N the client's overlay again, at its next session start.",
     .options = restore_options,
     .min = 1,
     .max = 1,
     .count_error = "expected ID --session N",
     .build = restore_request,
     .print = restore_print},
    {.name = "merge",
     .usage = "ID --into IMAGE [--note TEXT] [--session N] [--force] [-q]",
     .help = "Build IMAGE@N+1 from the client's base plus its overlay (or retained session N),\n"
             "writing only blocks that differ from the base.  The client must not be in a "
             "session.\n"
             "IMAGE must be configured; a base older than IMAGE's newest version needs --force\n"
             "(the new version would supersede what the newer ones changed).\n"
             "The merged client continues on the new version with an empty overlay; rollback\n"
             "clients pick the new version at their next session, persist clients stay pinned "
             "to\n"
             "theirs until refreshed.  -q: no progress line.",
     .options = merge_options,
     .min = 1,
     .max = 1,
     .count_error = "expected ID --into IMAGE",
     .run = cmd_merge},
    {.name = "maintenance",
     .usage = "start ID --image IMAGE | finish ID [--note TEXT] [-q] | abort ID | list",
     .help = "The maintenance PC of an image, the everyday way to update a master: start makes\n"
             "the client boot the newest version of IMAGE and keep what it writes across its\n"
             "reboots; finish (the client shut down) merges that into IMAGE@N+1, which every\n"
             "client following the newest version boots next (refused if IMAGE got a new "
             "version\n"
             "meanwhile); abort discards it (kept as a restore point).  Either way the client\n"
             "is back on its own configuration from its next boot.",
     .options = maintenance_options,
     .max = INT_MAX,
     .run = cmd_maintenance},
    {.name = "reimage",
     .usage = "ID IMAGE[@N]",
     .help = "Start the client's next session on another image (or version), overlay discarded.",
     .operands = {OPERAND_CLIENT, OPERAND_IMAGE},
     .done = "%1: the next session starts on %2"},
    {.name = "pin",
     .usage = "ID N",
     .help = "Pin the client to version N of its image.",
     .operands = {OPERAND_CLIENT, OPERAND_PIN},
     .done = "%1: pinned to version %2"},
    {.name = "unpin",
     .usage = "ID",
     .help = "Let the client follow the newest version of its image again.",
     .operands = {OPERAND_CLIENT},
     .done = "%1: unpinned (follows the newest version)"},
    {.name = "refresh",
     .usage = "ID | --group GROUP",
     .help = "Move the client (or every client of GROUP) to its current version at the next "
             "session\n"
             "start, discarding its overlay (for persist clients).",
     .options = refresh_options,
     .max = 1,
     .count_error = "expected ID or --group GROUP",
     .build = refresh_request,
     .done = "refresh at the next session start"},
    {.name = "lockdown",
     .usage = "ID [REASON]",
     .help = "Refuse the client's export from its next connection on, with REASON in its status.",
     .operands = {OPERAND_CLIENT, OPERAND_REASON},
     .done = "%1: locked down"},
    {.name = "unlock",
     .usage = "ID",
     .help = "Lift a lockdown (set by the watchdog or by tabulactl lockdown).",
     .operands = {OPERAND_CLIENT},
     .done = "%1: unlocked"},
    {.name = "quarantine",
     .usage = "list [ID] | show ID N | release ID N [--restore]",
     .help = "Overlays the watchdog kept aside (clients/ID/quarantine/N) with why.  release "
             "deletes\n"
             "one; with --restore it becomes a retained session again and the client's overlay "
             "at\n"
             "its next session start.",
     .options = quarantine_options,
     .max = INT_MAX,
     .run = cmd_quarantine},
    {.name = "image",
     .usage = "import|list|rm|gc|publish|pull|promote ...",
     .help = "Manage image versions (see tabulactl image --help).",
     .raw = cmd_image},
    {.name = "events",
     .usage = "[--follow] [--client ID] [--last N]",
     .help = "Show the last N events of the journal (default 20), and with --follow keep "
             "printing\n"
             "new ones until interrupted.",
     .options = events_options,
     .count_error = "events takes no operands",
     .run = cmd_events},
    {.name = "reload",
     .usage = "",
     .help = "Re-read the daemon's configuration file.  An invalid file is refused with its "
             "error\n"
             "and the running configuration stays.",
     .done = "configuration reloaded"},
    {.name = "pxe",
     .usage = "[--hosts]",
     .help = "Print the dnsmasq configuration the daemon generated from the \"pxe\" section "
             "(with\n"
             "--hosts its static leases), for administrators who run dnsmasq themselves.",
     .options = pxe_options,
     .print = print_pxe},
    {.name = "pxe-event",
     .usage = "ACTION MAC ADDRESS [HOSTNAME] | tftp SIZE ADDRESS FILE",
     .help = "dnsmasq's dhcp-script (STATE/pxe/event.sh runs it): report a lease or a TFTP\n"
             "transfer to the daemon, which records PXE boots and unknown MACs.",
     .raw = cmd_pxe_event},
    {.name = "register",
     .usage = "MAC ID [--group G] [--image I] [--address A] [--write]",
     .help = "Print the configuration entry of a new PXE client (the first free address of\n"
             "pxe.network unless --address); --write adds it to the configuration file "
             "(checked,\n"
             "rewritten atomically, key order kept) and reloads the daemon.",
     .options = register_options,
     .min = 2,
     .max = 2,
     .count_error = "expected MAC ID",
     .run = cmd_register},
};

static void usage(FILE *f)
{
  fprintf(f,
          "usage: %s [-c CONFIG] [--state DIR] [--socket PATH] [--json] [-q] COMMAND [ARGS]\n\n"
          "Administer tabula: clients, sessions, merges and image versions.\n\n"
          "Options:\n"
          "  -c, --config FILE  configuration file (default $TABULA_CONFIG or %s)\n"
          "  --state DIR        state directory (overrides the configuration's state_dir)\n"
          "  --socket PATH      the daemon's control socket (default: from the configuration)\n"
          "  --json             print results as JSON\n"
          "  -q, --quiet        no progress line (long work shows one on a terminal)\n"
          "  -h, --help         this help; COMMAND --help for a command's\n"
          "  -V, --version      print the version\n\n"
          "Commands:\n",
          prog, DEFAULT_CONFIG);
  for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) {
    fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].usage);
    /* What it does: the first sentence of its help, on one line. */
    const char *h = commands[i].help ? commands[i].help : "";
    size_t col = 13;
    fputs("             ", f);
    for (size_t k = 0; h[k]; k++) {
      char ch = h[k] == '\n' ? ' ' : h[k];
      if (ch == ' ' && col > 72) { /* wrap under the indent */
        fputs("\n             ", f);
        col = 13;
        continue;
      }
      fputc(ch, f);
      col++;
      if (h[k] == '.' && (h[k + 1] == ' ' || h[k + 1] == '\n' || !h[k + 1]))
        break;
    }
    fputc('\n', f);
  }
  fprintf(f, "\nA client's further disk is ID/DISK wherever a command takes an ID (tabulactl "
             "rollback pc01/games,\ntabulactl merge pc01/games --into games); ID alone is its "
             "first disk.\n");
  fprintf(f, "\nExit status: 0 done, 1 failed, 2 bad usage, 3 daemon not reachable (status: 1 "
             "when the appliance does not serve).\n");
}

static int ctl_main(int argc, char **argv, struct ctl *ctlp);

int main(int argc, char **argv)
{
  capture_stderr();
  struct ctl ctl = {0};
  int r = ctl_main(argc, argv, &ctl);
  fflush(stderr);
  if (ctl.json && r != 0)
    print_json_error(r);
  tb_config_unref(ctl.cfg);
  return r;
}

static int ctl_main(int argc, char **argv, struct ctl *ctlp)
{
  static const struct option lo[] = {{"config", required_argument, NULL, 'c'},
                                     {"state", required_argument, NULL, 's'},
                                     {"socket", required_argument, NULL, 'S'},
                                     {"control", required_argument, NULL, 'S'},
                                     {"json", no_argument, NULL, 'j'},
                                     {"quiet", no_argument, NULL, 'q'},
                                     {"help", no_argument, NULL, 'h'},
                                     {"version", no_argument, NULL, 'V'},
                                     {0}};
  signal(SIGPIPE, SIG_IGN);
  umask(077); /* imports write into the private state directory */
  int ch;
  opterr = 0;
  while ((ch = getopt_long(argc, argv, "+c:hqV", lo, NULL)) != -1) {
    switch (ch) {
    case 'c':
      ctlp->config_file = optarg;
      break;
    case 's':
      ctlp->state_dir = optarg;
      break;
    case 'S':
      ctlp->socket = optarg;
      break;
    case 'j':
      ctlp->json = true;
      break;
    case 'q':
      ctlp->quiet = true;
      break;
    case 'h':
      usage(stdout);
      return 0;
    case 'V':
      printf("tabulactl %s\n", PACKAGE_VERSION);
      return 0;
    default:
      return usage_error("unknown or incomplete option %s", argv[optind - 1]);
    }
  }
  if (optind >= argc) {
    usage(stderr);
    return EXIT_USAGE;
  }
  const char *name = argv[optind];
  int sub_argc = argc - optind;
  char **sub_argv = argv + optind;
  /* --json may also follow the command. */
  for (int i = 1; i < sub_argc; i++)
    if (strcmp(sub_argv[i], "--json") == 0) {
      ctlp->json = true;
      memmove(&sub_argv[i], &sub_argv[i + 1], (size_t)(sub_argc - i) * sizeof *sub_argv);
      sub_argc--;
      break;
    }
  for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
    if (strcmp(name, commands[i].name) == 0)
      return run_command(ctlp, &commands[i], sub_argc, sub_argv);
  return usage_error("unknown command \"%s\"", name);
}
