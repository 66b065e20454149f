/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: small shared helpers (see util.h).
 *
 * The error buffer is thread-local so the plugin's many worker threads never
 * see each other's messages.  File helpers are careful about durability:
 * tb_write_file_atomic() is the only way small state files (manifests,
 * mailboxes, session records) are written, so a crash leaves the old file or
 * the new one, never a torn one.
 */
#include <config.h>

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "util.h"
#include "vector.h"

static _Thread_local char errbuf[1024];

static int set_error_v(const char *fmt, va_list ap)
{
  vsnprintf(errbuf, sizeof errbuf, fmt, ap);
  return -1;
}

int tb_error(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  set_error_v(fmt, ap);
  va_end(ap);
  return -1;
}

int tb_error_errno(const char *fmt, ...)
{
  int saved = errno;
  va_list ap;
  va_start(ap, fmt);
  set_error_v(fmt, ap);
  va_end(ap);
  size_t n = strlen(errbuf);
  snprintf(errbuf + n, sizeof errbuf - n, ": %s", strerror(saved));
  errno = saved;
  return -1;
}

int tb_error_prefix(const char *fmt, ...)
{
  char old[sizeof errbuf];
  memcpy(old, errbuf, sizeof old);
  va_list ap;
  va_start(ap, fmt);
  set_error_v(fmt, ap);
  va_end(ap);
  size_t n = strlen(errbuf);
  snprintf(errbuf + n, sizeof errbuf - n, ": %s", old);
  return -1;
}

const char *tb_errmsg(void)
{
  return errbuf[0] ? errbuf : "unknown error";
}

bool tb_name_valid(const char *name)
{
  if (!name || !isalnum((unsigned char)name[0]))
    return false;
  size_t n = 0;
  for (const char *p = name; *p; p++, n++) {
    unsigned char c = (unsigned char)*p;
    if (!(isalnum(c) || c == '.' || c == '_' || c == '-'))
      return false;
  }
  return n <= TB_NAME_MAX;
}

bool tb_client_id_valid(const char *id)
{
  if (!id || strlen(id) > TB_NAME_MAX)
    return false;
  const char *slash = strchr(id, '/');
  if (!slash)
    return tb_name_valid(id);
  char client[TB_NAME_MAX + 1];
  memcpy(client, id, (size_t)(slash - id));
  client[slash - id] = '\0';
  return tb_name_valid(client) && tb_name_valid(slash + 1);
}

/* ---- guest names ------------------------------------------------------------ */

/* Length of the valid UTF-8 character at P (N bytes left): 1-4, or 0 if
 * the byte at P does not start one (overlong forms and surrogates too). */
static size_t utf8_char(const unsigned char *p, size_t n, uint32_t *cp)
{
  unsigned char c = p[0];
  size_t len;
  uint32_t v, min;
  if (c < 0x80) {
    *cp = c;
    return 1;
  } else if ((c & 0xE0) == 0xC0) {
    len = 2, v = c & 0x1F, min = 0x80;
  } else if ((c & 0xF0) == 0xE0) {
    len = 3, v = c & 0x0F, min = 0x800;
  } else if ((c & 0xF8) == 0xF0) {
    len = 4, v = c & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (len > n)
    return 0;
  for (size_t i = 1; i < len; i++) {
    if ((p[i] & 0xC0) != 0x80)
      return 0;
    v = v << 6 | (p[i] & 0x3F);
  }
  if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
    return 0;
  *cp = v;
  return len;
}

static bool needs_escape(uint32_t cp)
{
  return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F) || cp == 0x200E || cp == 0x200F ||
         (cp >= 0x202A && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069);
}

char *tb_guest_name_len(const char *raw, size_t n)
{
  const unsigned char *p = (const unsigned char *)raw;
  char *out = malloc(4 * n + 1), *o = out;
  if (!out) {
    tb_error("out of memory encoding a name");
    return NULL;
  }
  static const char hex[] = "0123456789abcdef";
  for (size_t i = 0; i < n;) {
    uint32_t cp;
    size_t len = utf8_char(p + i, n - i, &cp);
    if (len && cp == '\\') {
      *o++ = '\\';
      *o++ = '\\';
    } else if (len && !needs_escape(cp)) {
      memcpy(o, p + i, len);
      o += len;
    } else {
      for (size_t k = 0; k < (len ? len : 1); k++) {
        *o++ = '\\';
        *o++ = 'x';
        *o++ = hex[p[i + k] >> 4];
        *o++ = hex[p[i + k] & 15];
      }
    }
    i += len ? len : 1;
  }
  *o = '\0';
  return out;
}

char *tb_guest_name(const char *raw)
{
  return tb_guest_name_len(raw, strlen(raw));
}

void tb_utf8_truncate(char *s)
{
  size_t n = strlen(s), start = n;
  while (start > 0 && n - start < 4 && ((unsigned char)s[start - 1] & 0xC0) == 0x80)
    start--;
  if (start == 0 || (unsigned char)s[start - 1] < 0x80)
    return;
  uint32_t cp;
  if (utf8_char((const unsigned char *)s + start - 1, n - start + 1, &cp) == 0)
    s[start - 1] = '\0';
}

static int hexval(char c);

ssize_t tb_guest_name_decode(const char *enc, char *out, size_t len)
{
  size_t o = 0;
  for (const char *p = enc; *p; o++) {
    if (o + 1 >= len)
      return -1;
    if (*p != '\\') {
      out[o] = *p++;
    } else if (p[1] == '\\') {
      out[o] = '\\';
      p += 2;
    } else if (p[1] == 'x' && hexval(p[2]) >= 0 && hexval(p[3]) >= 0) {
      out[o] = (char)(hexval(p[2]) << 4 | hexval(p[3]));
      p += 4;
    } else {
      return -1;
    }
  }
  if (len == 0)
    return -1;
  out[o] = '\0';
  return (ssize_t)o;
}

int tb_path(char *buf, size_t len, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, len, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= len) {
    errno = ENAMETOOLONG;
    return tb_error("path too long (limit %zu bytes)", len);
  }
  return 0;
}

/* mkdir PATH unless it exists; a directory it creates is made durable (its
 * parent fsynced), else a power cut on a filesystem without a journal undoes
 * the mkdir and with it everything later made durable inside. */
static int mkdir_durable(const char *path, mode_t mode)
{
  if (mkdir(path, mode) == -1)
    return errno == EEXIST ? 0 : tb_error_errno("cannot create directory %s", path);
  char parent[TB_PATH_MAX];
  if (tb_path(parent, sizeof parent, "%s", path) == -1)
    return -1;
  return tb_fsync_dir(dirname(parent));
}

int tb_mkdirs(const char *path, bool private_dir)
{
  char tmp[TB_PATH_MAX];
  if (tb_path(tmp, sizeof tmp, "%s", path) == -1)
    return -1;
  size_t n = strlen(tmp);
  while (n > 1 && tmp[n - 1] == '/')
    tmp[--n] = '\0';
  for (char *p = tmp + 1; *p; p++) {
    if (*p != '/')
      continue;
    *p = '\0';
    if (mkdir_durable(tmp, 0755) == -1)
      return -1;
    *p = '/';
  }
  return mkdir_durable(tmp, private_dir ? 0700 : 0755);
}

int tb_fsync_dir(const char *path)
{
  char tmp[TB_PATH_MAX];
  if (tb_path(tmp, sizeof tmp, "%s", path) == -1)
    return -1;
  struct stat st;
  const char *dir = tmp;
  if (stat(tmp, &st) == -1 || !S_ISDIR(st.st_mode))
    dir = dirname(tmp);
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd == -1)
    return tb_error_errno("cannot open directory %s", dir);
  int r = fsync(fd);
  int saved = errno;
  close(fd);
  if (r == -1) {
    errno = saved;
    return tb_error_errno("fsync of directory %s", dir);
  }
  return 0;
}

int tb_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
  char *p = buf;
  while (len > 0) {
    ssize_t r = pread(fd, p, len, (off_t)off);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    if (r == 0) { /* past EOF: the rest reads as zeros */
      memset(p, 0, len);
      return 0;
    }
    p += r;
    len -= (size_t)r;
    off += (uint64_t)r;
  }
  return 0;
}

int tb_pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
  const char *p = buf;
  while (len > 0) {
    ssize_t r = pwrite(fd, p, len, (off_t)off);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    p += r;
    len -= (size_t)r;
    off += (uint64_t)r;
  }
  return 0;
}

int tb_write_file_atomic(const char *path, const void *data, size_t len, int mode)
{
  /* An unpredictable name created with O_EXCL (mkostemp), so nobody can
   * plant the temporary file (or a symlink in its place) beforehand. */
  char tmp[TB_PATH_MAX];
  if (tb_path(tmp, sizeof tmp, "%s.tmp.XXXXXX", path) == -1)
    return -1;
  int fd = mkostemp(tmp, O_CLOEXEC);
  if (fd == -1)
    return tb_error_errno("cannot create a temporary file next to %s", path);
  if (fchmod(fd, (mode_t)mode) == -1 || tb_pwrite_full(fd, data, len, 0) == -1 || fsync(fd) == -1) {
    tb_error_errno("cannot write %s", tmp);
    close(fd);
    unlink(tmp);
    return -1;
  }
  if (close(fd) == -1) {
    tb_error_errno("cannot write %s", tmp);
    unlink(tmp);
    return -1;
  }
  if (rename(tmp, path) == -1) {
    tb_error_errno("cannot rename %s to %s", tmp, path);
    unlink(tmp);
    return -1;
  }
  return tb_fsync_dir(path);
}

size_t tb_atomic_temp(const char *name)
{
  const char *t = strstr(name, ".tmp.");
  while (t && strstr(t + 1, ".tmp."))
    t = strstr(t + 1, ".tmp.");
  if (!t || t == name || strlen(t + 5) != 6)
    return 0;
  for (const char *c = t + 5; *c; c++)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9')))
      return 0;
  return (size_t)(t - name);
}

int tb_remove_atomic_temps(const char *dir, const char *suffix)
{
  DIR *d = opendir(dir);
  if (!d)
    return 0;
  int removed = 0;
  size_t slen = strlen(suffix);
  struct dirent *e;
  while ((e = readdir(d))) {
    size_t n = tb_atomic_temp(e->d_name);
    char p[TB_PATH_MAX];
    if (n > 0 && n >= slen && memcmp(e->d_name + n - slen, suffix, slen) == 0 &&
        tb_path(p, sizeof p, "%s/%s", dir, e->d_name) == 0 && unlink(p) == 0)
      removed++;
  }
  closedir(d);
  if (removed)
    tb_fsync_dir(dir);
  return removed;
}

static char *read_file(const char *path, size_t max_len, size_t *len_out, int flags)
{
  int fd = open(path, O_RDONLY | O_CLOEXEC | flags);
  if (fd == -1) {
    tb_error_errno(errno == ELOOP ? "cannot open %s (a symlink: tabula does not follow them)"
                                  : "cannot open %s",
                   path);
    return NULL;
  }
  struct stat st;
  if (fstat(fd, &st) == -1) {
    tb_error_errno("cannot stat %s", path);
    close(fd);
    return NULL;
  }
  if ((uint64_t)st.st_size > max_len) {
    tb_error("%s is too large (%lld bytes, limit %zu)", path, (long long)st.st_size, max_len);
    close(fd);
    errno = EFBIG;
    return NULL;
  }
  size_t len = (size_t)st.st_size;
  char *buf = malloc(len + 1);
  if (!buf) {
    tb_error_errno("reading %s", path);
    close(fd);
    return NULL;
  }
  size_t got = 0;
  while (got < len) {
    ssize_t r = read(fd, buf + got, len - got);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    got += (size_t)r;
  }
  close(fd);
  buf[got] = '\0';
  if (len_out)
    *len_out = got;
  return buf;
}

char *tb_read_file(const char *path, size_t max_len, size_t *len_out)
{
  return read_file(path, max_len, len_out, O_NOFOLLOW);
}

char *tb_read_file_follow(const char *path, size_t max_len, size_t *len_out)
{
  return read_file(path, max_len, len_out, 0);
}

int64_t tb_now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t tb_mono_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t tb_mono_at_wall(int64_t wall_ms)
{
  if (wall_ms == INT64_MAX)
    return INT64_MAX;
  int64_t mono = tb_mono_ms(), wall = tb_now_ms();
  if (wall_ms <= wall)
    return mono - (wall - wall_ms < INT64_MAX / 2 ? wall - wall_ms : 0);
  int64_t ahead = wall_ms - wall;
  return ahead < INT64_MAX - mono ? mono + ahead : INT64_MAX;
}

void tb_iso_time(int64_t ms, char out[32])
{
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&t, &tm);
  char base[24];
  strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out, 32, "%s.%03dZ", base, (int)(ms % 1000));
}

void tb_hex(const uint8_t *in, size_t len, char *out)
{
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < len; i++) {
    out[2 * i] = digits[in[i] >> 4];
    out[2 * i + 1] = digits[in[i] & 15];
  }
  out[2 * len] = '\0';
}

static int hexval(char c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

int tb_unhex(const char *in, uint8_t *out, size_t len)
{
  if (strlen(in) != 2 * len)
    return -1;
  for (size_t i = 0; i < len; i++) {
    int hi = hexval(in[2 * i]), lo = hexval(in[2 * i + 1]);
    if (hi < 0 || lo < 0)
      return -1;
    out[i] = (uint8_t)(hi << 4 | lo);
  }
  return 0;
}

int tb_parse_size(const char *s, uint64_t *out)
{
  if (!s || !isdigit((unsigned char)*s))
    return tb_error("expected a size such as 4096, 64K, 1M or 2G, got \"%s\"", s ? s : "");
  errno = 0;
  char *end;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno)
    return tb_error("size \"%s\" is out of range", s);
  unsigned shift = 0;
  switch (*end) {
  case '\0':
    break;
  case 'k':
  case 'K':
    shift = 10;
    end++;
    break;
  case 'm':
  case 'M':
    shift = 20;
    end++;
    break;
  case 'g':
  case 'G':
    shift = 30;
    end++;
    break;
  case 't':
  case 'T':
    shift = 40;
    end++;
    break;
  default:
    return tb_error("expected a size such as 4096, 64K, 1M or 2G, got \"%s\"", s);
  }
  if (*end == 'i' && shift)
    end++;
  if (*end == 'B' || *end == 'b')
    end++;
  if (*end != '\0')
    return tb_error("expected a size such as 4096, 64K, 1M or 2G, got \"%s\"", s);
  if (shift && v > (UINT64_MAX >> shift))
    return tb_error("size \"%s\" is out of range", s);
  *out = (uint64_t)v << shift;
  return 0;
}

int tb_parse_duration(const char *s, int64_t *ms_out)
{
  if (!s || !isdigit((unsigned char)*s))
    return tb_error("expected a duration such as 90s, 15m, 2h or 1d, got \"%s\"", s ? s : "");
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  int64_t unit;
  if (strcmp(end, "ms") == 0)
    unit = 1;
  else if (strcmp(end, "s") == 0 || *end == '\0')
    unit = 1000;
  else if (strcmp(end, "m") == 0)
    unit = 60 * 1000;
  else if (strcmp(end, "h") == 0)
    unit = 3600 * 1000;
  else if (strcmp(end, "d") == 0)
    unit = 86400 * 1000;
  else
    return tb_error("expected a duration such as 90s, 15m, 2h or 1d, got \"%s\"", s);
  if (errno || v > INT64_MAX / unit)
    return tb_error("duration \"%s\" is out of range", s);
  *ms_out = (int64_t)v * unit;
  return 0;
}

/* ---- numbered entries ------------------------------------------------------ */

static int cmp_u64(const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

int tb_list_numbers(const char *dir, uint64_t **nums, size_t *n)
{
  return tb_list_numbers_suffix(dir, "", UINT64_MAX, nums, n);
}

int tb_list_numbers_suffix(const char *dir, const char *suffix, uint64_t max, uint64_t **nums,
                           size_t *n)
{
  *nums = NULL;
  *n = 0;
  DIR *d = opendir(dir);
  if (!d)
    return errno == ENOENT ? 0 : tb_error_errno("cannot list %s", dir);
  TB_VECTOR(, uint64_t) list = {0};
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] < '1' || e->d_name[0] > '9')
      continue;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(e->d_name, &end, 10);
    if (errno || strcmp(end, suffix) != 0 || v > max)
      continue;
    if (tb_vector_push(&list, (uint64_t)v) == -1) {
      closedir(d);
      tb_vector_free(&list);
      return tb_error("listing %s: out of memory", dir);
    }
  }
  closedir(d);
  if (list.len)
    qsort(list.ptr, list.len, sizeof *list.ptr, cmp_u64);
  *nums = list.ptr;
  *n = list.len;
  return 0;
}

/* ---- locks ----------------------------------------------------------------- */

/* /proc/locks lines: "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; a
 * waiter's line has "->" after the number and holds nothing.  Reading it
 * costs in proportion to the locks held (two per running client), so one
 * read serves every probe of the next TB_FLOCK_SNAPSHOT_MS: a status or an
 * export listing of 500 clients reads it once, not 500 times. */
struct held_flock {
  unsigned maj, min;
  unsigned long long ino;
};
static pthread_mutex_t held_lock = PTHREAD_MUTEX_INITIALIZER;
static TB_VECTOR(, struct held_flock) held;
static int64_t held_read_ms;
static bool held_valid;

static void read_held_flocks(void)
{
  held.len = 0;
  held_valid = false;
  FILE *f = fopen("/proc/locks", "re");
  if (!f)
    return;
  char line[256], kind[16];
  struct held_flock h;
  while (fgets(line, sizeof line, f)) {
    if (strstr(line, "->") ||
        sscanf(line, "%*s %15s %*s %*s %*s %x:%x:%llu", kind, &h.maj, &h.min, &h.ino) != 4 ||
        strcmp(kind, "FLOCK") != 0)
      continue;
    if (tb_vector_push(&held, h) == -1)
      break;
  }
  fclose(f);
  held_valid = true;
  held_read_ms = tb_mono_ms();
}

/* The plugin is unloaded by nbdkit before it exits: give the snapshot back
 * then (valgrind counts what a dlclose'd object still holds as lost). */
__attribute__((destructor)) static void free_held_flocks(void)
{
  tb_vector_free(&held);
}

bool tb_flock_held(const char *path)
{
  struct stat st;
  if (stat(path, &st) == -1)
    return false;
  bool found = false;
  pthread_mutex_lock(&held_lock);
  if (!held_valid || tb_mono_ms() - held_read_ms >= TB_FLOCK_SNAPSHOT_MS)
    read_held_flocks();
  for (size_t i = 0; i < held.len && !found; i++)
    found = held.ptr[i].maj == major(st.st_dev) && held.ptr[i].min == minor(st.st_dev) &&
            held.ptr[i].ino == (unsigned long long)st.st_ino;
  pthread_mutex_unlock(&held_lock);
  return found;
}

int tb_flock_nb(int fd, int op)
{
  int64_t deadline = tb_mono_ms() + TB_FLOCK_PATIENCE_MS;
  for (unsigned pause_us = 200;; pause_us = pause_us < 5000 ? pause_us * 2 : pause_us) {
    if (flock(fd, op | LOCK_NB) == 0)
      return 0;
    if (errno != EWOULDBLOCK || tb_mono_ms() >= deadline)
      return -1;
    usleep(pause_us);
  }
}
