/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: small shared helpers -- errors, names, paths, files.
 *
 * Errors: every lib/ function that can fail returns -1 (or NULL) and leaves a
 * message in a thread-local buffer, read with tb_errmsg().  The message names
 * the thing that failed and, where the user can act, what to do.  Callers
 * (the nbdkit plugin, the daemon, the CLI) decide where the message goes.
 *
 * Names: anything that becomes part of a path (client ids, image names) must
 * pass tb_name_valid() first: [A-Za-z0-9][A-Za-z0-9._-]{0,63}.  A client's
 * further disk (conf.h, "disks") is named "ID/DISK": two names joined by one
 * '/', at most 64 characters in all (tb_client_id_valid), so it fits every
 * buffer a client id fits; its state lives in clients/ID/disks/DISK.
 */
#ifndef TB_UTIL_H
#define TB_UTIL_H

#include <endian.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#define TB_NAME_MAX 64
#define TB_PATH_MAX 4096

#define TB_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* Set the thread's error message; returns -1 so callers can `return tb_error(...)`. */
int tb_error(const char *fmt, ...) TB_PRINTF(1, 2);
/* Like tb_error, appending ": strerror(errno)".  Preserves errno. */
int tb_error_errno(const char *fmt, ...) TB_PRINTF(1, 2);
/* Prefix the current message with more context ("loading X: <old message>"). */
int tb_error_prefix(const char *fmt, ...) TB_PRINTF(1, 2);
const char *tb_errmsg(void);

/* Little-endian fields, byte by byte (no alignment or host-order
 * assumption): tabula's own formats (the overlay file, the live-view
 * protocol) and what it reads of guests' (partition tables, ext and NTFS
 * records). */
static inline void tb_put_le32(uint8_t *p, uint32_t v)
{
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}
static inline void tb_put_le64(uint8_t *p, uint64_t v)
{
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}
/* (memcpy and le*toh: one load each where the byte-by-byte form was not
 * merged into one; an ext4 listing decodes some 40 fields per inode.) */
static inline uint16_t tb_get_le16(const uint8_t *p)
{
  uint16_t v;
  memcpy(&v, p, sizeof v);
  return le16toh(v);
}
static inline uint32_t tb_get_le32(const uint8_t *p)
{
  uint32_t v;
  memcpy(&v, p, sizeof v);
  return le32toh(v);
}
static inline uint64_t tb_get_le64(const uint8_t *p)
{
  uint64_t v;
  memcpy(&v, p, sizeof v);
  return le64toh(v);
}

/* True if NAME is a valid client id / image name (see above). */
bool tb_name_valid(const char *name);
/* True if ID is a client id or a disk id "ID/DISK" (see above). */
bool tb_client_id_valid(const char *id);

/* Guest names: file names read from a guest filesystem (and anything else a
 * guest or a peer controls) leave the inspector only through this encoding,
 * in events, mailboxes, quarantine notes, status.json, changes.txt and
 * tabulactl's output.  It is lossless and its result is valid UTF-8 with no
 * control character:
 *   - a backslash becomes "\\" (two backslashes);
 *   - a byte that is not part of a valid UTF-8 character, a control
 *     character (U+0000-U+001F, U+007F-U+009F) and a bidirectional
 *     formatting character (U+200E, U+200F, U+202A-U+202E, U+2066-U+2069)
 *     become "\xHH" per byte (lower-case hex);
 *   - everything else is copied.
 * tb_guest_name_decode() gives the raw bytes back.  Rules match raw bytes. */
char *tb_guest_name(const char *raw);                 /* malloc'd; NULL: out of memory */
char *tb_guest_name_len(const char *raw, size_t len); /* LEN bytes, NULs included */
/* Decode ENC into OUT (at most LEN-1 bytes, NUL-terminated); the length, or
 * -1 if ENC is not an encoding or does not fit. */
ssize_t tb_guest_name_decode(const char *enc, char *out, size_t len);

/* Drop an incomplete UTF-8 character at the end of S (left by a cut). */
void tb_utf8_truncate(char *s);

/* snprintf into a PATH_MAX buffer; fails (tb_error) if the result would not fit. */
int tb_path(char *buf, size_t len, const char *fmt, ...) TB_PRINTF(3, 4);

/* mkdir -p with mode 0755 (0700 for the last component if private is set:
 * everything in the state directory is private). */
int tb_mkdirs(const char *path, bool private_dir);

/* Write LEN bytes to PATH atomically: tmp file in the same directory (an
 * unpredictable name created with O_EXCL, removed on failure), mode MODE
 * exactly whatever the umask, fsync, rename, fsync of the directory.
 * Readers see the old or the new file. */
int tb_write_file_atomic(const char *path, const void *data, size_t len, int mode);
/* Is NAME a temporary tb_write_file_atomic leaves when a crash or a power cut
 * falls between its create and its rename (FINAL.tmp.XXXXXX)?  Returns the
 * length of FINAL, or 0. */
size_t tb_atomic_temp(const char *name);
/* Remove the temporaries of atomic writes (tb_atomic_temp) in DIR whose final
 * name ends with SUFFIX ("" for any), then fsync DIR if one went.  Only for
 * a directory whose writers are not running (a start).  Returns the count. */
int tb_remove_atomic_temps(const char *dir, const char *suffix);
/* Read a whole (small) file; returns malloc'd NUL-terminated buffer or NULL.
 * A symlink is refused (O_NOFOLLOW, ELOOP): state files are never read
 * through one.  tb_read_file_follow() follows (the configuration file). */
char *tb_read_file(const char *path, size_t max_len, size_t *len_out);
char *tb_read_file_follow(const char *path, size_t max_len, size_t *len_out);
int tb_fsync_dir(const char *dir_or_file_path);

/* Full pread/pwrite loops: return 0 on success, -1 with errno on error (short
 * read past EOF fills with zeros for pread_full). */
int tb_pread_full(int fd, void *buf, size_t len, uint64_t off);
int tb_pwrite_full(int fd, const void *buf, size_t len, uint64_t off);

/* Wall clock in seconds / milliseconds, and an ISO-8601 UTC timestamp. */
int64_t tb_now_ms(void);
/* A monotonic clock in milliseconds, for intervals (grace periods, idle
 * time, backoff): a stepped wall clock must not stretch or cut them. */
int64_t tb_mono_ms(void);
/* The tb_mono_ms() time at which the wall clock reads WALL_MS, at the present
 * offset between the two (INT64_MAX stays INT64_MAX): for a loop that sleeps
 * on the monotonic clock until a calendar time.  Derived anew each turn, so a
 * wall clock step moves the wake-up with it. */
int64_t tb_mono_at_wall(int64_t wall_ms);

/* Whether some process holds an flock on PATH, found without taking it
 * (/proc/locks).  Testing with flock(LOCK_SH | LOCK_NB) would hold the lock
 * for an instant, and a client booting in that instant is refused as busy.
 * The answer may be up to TB_FLOCK_SNAPSHOT_MS old (one read of /proc/locks
 * serves a burst of probes): an advisory answer, as any probe's is. */
#define TB_FLOCK_SNAPSHOT_MS 20
bool tb_flock_held(const char *path);

/* flock(FD, OP | LOCK_NB), patient with a passer-by: EWOULDBLOCK is retried
 * for up to TB_FLOCK_PATIENCE_MS, so a tool of an older tabula (or anything
 * else) that only tests the lock does not make a booting client look busy.
 * A session holds its lock for minutes: a real holder still answers
 * EWOULDBLOCK, 50 ms later.  0, or -1 with errno. */
#define TB_FLOCK_PATIENCE_MS 50
int tb_flock_nb(int fd, int op);
void tb_iso_time(int64_t epoch_ms, char out[32]);

/* Hex encoding of a sha256 (65 bytes with NUL) and back. */
void tb_hex(const uint8_t *in, size_t len, char *out);
int tb_unhex(const char *in, uint8_t *out, size_t len);

/* Parse sizes such as "4096", "64K", "1M", "2G" (binary units). */
int tb_parse_size(const char *s, uint64_t *out);
/* Parse durations such as "90s", "15m", "2h", "1d", "500ms" into milliseconds. */
int tb_parse_duration(const char *s, int64_t *ms_out);

static inline bool tb_is_pow2(uint64_t x)
{
  return x && !(x & (x - 1));
}

/* The entries of DIR named by a positive decimal number (retained sessions,
 * quarantines), ascending, malloc'd; a missing DIR is an empty list. */
int tb_list_numbers(const char *dir, uint64_t **nums, size_t *n);
/* The same for entries named "N" + SUFFIX ("3.json"), N at most MAX. */
int tb_list_numbers_suffix(const char *dir, const char *suffix, uint64_t max, uint64_t **nums,
                           size_t *n);

#endif
