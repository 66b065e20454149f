/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: session turns (see session.h).
 *
 * A session start is a handful of renames and one small file creation, so it
 * takes the same time whatever the client wrote: "rollback" renames the old
 * overlay into sessions/ and creates an empty one.  Only preserved ranges (a
 * data partition that survives rollbacks) cost time proportional to their
 * dirty blocks, and a restore that cannot reflink.
 *
 * Session numbers come from clients/ID/seq, written (durably) before anything
 * is rotated, so the overlay rotated at the start of session s+1 is always
 * named sessions/s and names never collide, even after a crash between steps.
 * A crash anywhere in a turn leaves the client startable: at worst the next
 * turn finds no overlay and creates one, or finds one more retained session.
 */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "cleanup.h"
#include "clientdir.h"
#include "events.h"
#include "mailbox.h"
#include "maintenance.h"
#include "region.h"
#include "session.h"
#include "store.h"
#include "vector.h"

/* ---- locks -------------------------------------------------------------- */

int tb_client_lock(const char *state, const char *id, bool wait)
{
  char path[TB_PATH_MAX];
  if (tb_clientdir_mkdir(state, id, path, sizeof path) == -1 ||
      tb_clientdir_path(state, id, TB_CF_LOCK, path, sizeof path) == -1)
    return -1;
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd == -1)
    return tb_error_errno("cannot open %s", path);
  if ((wait ? flock(fd, LOCK_EX) : tb_flock_nb(fd, LOCK_EX)) == -1) {
    int saved = errno;
    close(fd);
    errno = saved;
    if (saved == EWOULDBLOCK)
      return tb_error("client %s is busy: a session is running or the daemon is working on "
                      "it (merge, restore); try again when it is done",
                      id);
    return tb_error_errno("cannot lock %s", path);
  }
  return fd;
}

void tb_client_unlock(int fd)
{
  if (fd >= 0)
    close(fd);
}

bool tb_client_locked(const char *state, const char *id)
{
  char path[TB_PATH_MAX];
  if (tb_clientdir_path(state, id, TB_CF_LOCK, path, sizeof path) == -1)
    return false;
  return tb_flock_held(path);
}

/* ---- lookups -------------------------------------------------------------- */

/* Manifests are immutable once published, and a big image's manifest is a
 * megabyte of JSON (a hash per 4 MiB chunk), so parsing it at every session
 * start would cost time and, worse, leave that much heap behind in every
 * malloc arena of a busy nbdkit.  The identity of a version is therefore
 * remembered per manifest file, keyed by its path and its stat identity (a
 * version removed and re-imported under the same number is a new file). */
struct base_cache_entry {
  char path[TB_PATH_MAX];
  dev_t dev;
  ino_t ino;
  struct timespec mtime;
  off_t bytes;
  uint8_t manifest_sha256[32];
  uint64_t size;
};
#define BASE_CACHE_SLOTS 32
static struct base_cache_entry base_cache[BASE_CACHE_SLOTS];
static unsigned base_cache_next;
static pthread_mutex_t base_cache_lock = PTHREAD_MUTEX_INITIALIZER;

static bool same_file(const struct base_cache_entry *e, const char *path, const struct stat *st)
{
  return strcmp(e->path, path) == 0 && e->dev == st->st_dev && e->ino == st->st_ino &&
         e->bytes == st->st_size && e->mtime.tv_sec == st->st_mtim.tv_sec &&
         e->mtime.tv_nsec == st->st_mtim.tv_nsec;
}

static int base_identity(const char *state, const char *image, uint32_t version,
                         uint8_t manifest_sha256[32], uint64_t *size)
{
  char path[TB_PATH_MAX];
  struct stat st;
  if (tb_store_manifest_path(state, image, version, path, sizeof path) == -1)
    return -1;
  bool known = false;
  if (stat(path, &st) == 0) {
    pthread_mutex_lock(&base_cache_lock);
    for (size_t i = 0; i < BASE_CACHE_SLOTS && !known; i++)
      if (same_file(&base_cache[i], path, &st)) {
        memcpy(manifest_sha256, base_cache[i].manifest_sha256, 32);
        *size = base_cache[i].size;
        known = true;
      }
    pthread_mutex_unlock(&base_cache_lock);
  }
  if (known)
    return 0;

  struct tb_manifest *m = tb_manifest_load(state, image, version);
  if (!m)
    return -1;
  memcpy(manifest_sha256, m->manifest_sha256, 32);
  *size = m->size;
  tb_manifest_free(m);
  if (stat(path, &st) == 0) {
    pthread_mutex_lock(&base_cache_lock);
    struct base_cache_entry *e = &base_cache[base_cache_next++ % BASE_CACHE_SLOTS];
    snprintf(e->path, sizeof e->path, "%s", path);
    e->dev = st.st_dev;
    e->ino = st.st_ino;
    e->mtime = st.st_mtim;
    e->bytes = st.st_size;
    memcpy(e->manifest_sha256, manifest_sha256, 32);
    e->size = *size;
    pthread_mutex_unlock(&base_cache_lock);
  }
  return 0;
}

int tb_base_lookup(const char *state, const char *image, uint32_t version, struct tb_base_id *id,
                   char *path, size_t path_len, uint64_t *size)
{
  uint64_t image_size;
  memset(id, 0, sizeof *id);
  if (base_identity(state, image, version, id->manifest_sha256, &image_size) == -1)
    return -1;
  snprintf(id->image, sizeof id->image, "%s", image);
  id->version = version;
  if (size)
    *size = image_size;
  return path ? tb_store_version_path(state, image, version, path, path_len) : 0;
}

int tb_overlay_exact_info(const char *state, const char *path, struct tb_overlay_info *info)
{
  if (tb_overlay_read_info(path, info) == -1)
    return -1;
  char base[TB_PATH_MAX];
  struct tb_base_id id;
  if (tb_base_lookup(state, info->base.image, info->base.version, &id, base, sizeof base, NULL) ==
      -1)
    return -1;
  struct tb_overlay *o = tb_overlay_open(path, base, &id, TB_OVL_RDONLY);
  if (!o)
    return -1;
  tb_overlay_info(o, info);
  tb_overlay_close(o);
  return 0;
}

int tb_client_target(const char *state, const struct tb_client_conf *c, char image[TB_NAME_MAX + 1],
                     uint32_t *version)
{
  struct tb_mailbox mb;
  if (tb_mailbox_read(state, c->id, &mb) == -1)
    return -1;
  struct tb_maintenance mt; /* a maintenance PC boots the newest version of its image */
  int maint = tb_maintenance_read(state, c->id, &mt);
  if (maint == -1)
    return -1;
  snprintf(image, TB_NAME_MAX + 1, "%s", maint ? mt.image : mb.image[0] ? mb.image : c->image);
  *version = maint ? 0 : mb.pin ? mb.pin : c->version;
  if (!*version && !(*version = tb_store_latest(state, image)))
    return -1;
  return 0;
}

int tb_client_sessions(const char *state, const char *id, uint64_t **nums, size_t *n)
{
  char dir[TB_PATH_MAX];
  *nums = NULL;
  *n = 0;
  if (tb_clientdir_path(state, id, TB_CF_SESSIONS, dir, sizeof dir) == -1)
    return -1;
  return tb_list_numbers(dir, nums, n);
}

/* ---- the turn ------------------------------------------------------------- */

/* clients/ID/seq read back with a plausibility check.  It must be a plain
 * number, and not behind what the disk shows: the highest retained session
 * and the overlay's own session number (its header).  A torn or flipped file
 * read as 0 would make the next rollback drop the overlay as never used
 * instead of keeping it as a restore point; one that is behind would collide
 * with a retained session.  Such a file counts from what the disk shows,
 * with a warning (and an event) naming it, when WARN is set. */
static __attribute__((noinline)) uint64_t checked_seq(const char *state, const char *id, bool warn)
{
  char path[TB_PATH_MAX], overlay[TB_PATH_MAX];
  if (tb_clientdir_path(state, id, TB_CF_SEQ, path, sizeof path) == -1 ||
      tb_clientdir_path(state, id, TB_CF_OVERLAY, overlay, sizeof overlay) == -1)
    return 0;
  size_t len = 0;
  char *text = tb_read_file(path, 64, &len);
  bool plain = text != NULL && len > 0 && text[0] >= '0' && text[0] <= '9';
  uint64_t n = 0;
  if (plain) {
    char *end;
    errno = 0;
    n = strtoull(text, &end, 10);
    plain = errno == 0 && (size_t)(end - text) + (*end == '\n') == len;
  }
  bool missing = !text && errno == ENOENT;
  free(text);
  /* What the disk shows. */
  uint64_t floor = 0, *nums;
  size_t count;
  if (tb_client_sessions(state, id, &nums, &count) == 0 && count > 0)
    floor = nums[count - 1];
  free(nums);
  struct tb_overlay_info info;
  if (access(overlay, F_OK) == 0 && tb_overlay_read_info(overlay, &info) == 0 &&
      info.session > floor)
    floor = info.session;
  if (plain && n >= floor)
    return n;
  if (missing && floor == 0)
    return 0;
  if (warn) {
    fprintf(stderr,
            "tabula: warning: %s: the session counter is %s; it counts on from session %llu "
            "(the highest retained session or overlay header)\n",
            path,
            missing ? "missing"
            : plain ? "behind the sessions on disk"
                    : "not a number",
            (unsigned long long)floor);
    tb_eventf(state, "state-recovered", id, "{s:s, s:s, s:I}", "file", path, "problem",
              missing ? "missing"
              : plain ? "behind"
                      : "not a number",
              "session", (json_int_t)floor);
  }
  return floor;
}

/* Bump clients/ID/seq; returns the new session number or 0. */
static __attribute__((noinline)) uint64_t next_session_number(const char *state, const char *id)
{
  char path[TB_PATH_MAX];
  if (tb_clientdir_path(state, id, TB_CF_SEQ, path, sizeof path) == -1)
    return 0;
  uint64_t prev = checked_seq(state, id, false);
  char buf[32];
  int n = snprintf(buf, sizeof buf, "%llu\n", (unsigned long long)(prev + 1));
  if (tb_write_file_atomic(path, buf, (size_t)n, 0600) == -1)
    return 0;
  return prev + 1;
}

/* An overlay with nothing but its header allocated was never written to. */
static bool overlay_unused(const char *path)
{
  struct stat st;
  return stat(path, &st) == 0 && (uint64_t)st.st_blocks * 512 <= 4096;
}

uint64_t tb_client_last_session(const char *state, const char *id)
{
  return checked_seq(state, id, true);
}

static int retire_into_sessions(const char *state, const char *id, uint64_t prev,
                                const char *overlay, char *retained, size_t len);

int tb_client_retire(const char *state, const char *id, uint64_t prev, char *retained, size_t len)
{
  char overlay[TB_PATH_MAX];
  retained[0] = '\0';
  if (tb_clientdir_path(state, id, TB_CF_OVERLAY, overlay, sizeof overlay) == -1)
    return -1;
  if (access(overlay, F_OK) == -1)
    return 0;
  if (overlay_unused(overlay) || prev == 0) {
    if (unlink(overlay) == -1)
      return tb_error_errno("cannot remove %s", overlay);
    return 0;
  }
  return retire_into_sessions(state, id, prev, overlay, retained, len);
}

/* Out of line, like every path buffer on the session-start path: see
 * tb_session_begin. */
static __attribute__((noinline)) int retire_into_sessions(const char *state, const char *id,
                                                          uint64_t prev, const char *overlay,
                                                          char *retained, size_t len)
{
  char dir[TB_PATH_MAX];
  if (tb_clientdir_path(state, id, TB_CF_SESSIONS, dir, sizeof dir) == -1 ||
      tb_mkdirs(dir, true) == -1 || tb_clientdir_session(state, id, prev, retained, len) == -1)
    return -1;
  if (access(retained, F_OK) == 0) /* never clobber a restore point */
    return tb_error("cannot retire the overlay of %s: %s already exists (the session counter "
                    "clients/%s/seq is behind: set it past the highest retained session)",
                    id, retained, id);
  if (rename(overlay, retained) == -1)
    return tb_error_errno("cannot rotate %s to %s", overlay, retained);
  /* sessions/ holds the new name, clients/ID loses the old one (OVERLAY is
   * gone, so tb_fsync_dir syncs its directory): on a filesystem without a
   * journal a cut would otherwise leave the overlay in both. */
  if (tb_fsync_dir(retained) == -1 || tb_fsync_dir(overlay) == -1)
    return -1;
  return 0;
}

/* Delete every file in TRASH, client ID's trash, without waiting for it.
 * Unlinking an overlay with gigabytes of extents keeps a filesystem busy for
 * hundreds of milliseconds, which must not delay a session start, and a
 * thread could outlive the plugin's code at nbdkit's exit.  So a grandchild
 * process does it, at the lowest CPU and I/O priority: the unlink of a 2 GiB
 * overlay whose pages are cached is half a second of CPU (freeing the pages
 * and the extents), which at normal priority competed with the session start
 * it was meant to spare: connect + turn + close after a 2 GiB session with
 * keep_sessions 0, median of 6 at a load of 6-9, 100 ms at normal priority,
 * 50 ms at the lowest (scripts/bench.sh rollback measures it).  The names are
 * listed before fork (after it only async-signal-safe calls), the grandchild
 * closes every inherited descriptor first (a client lock must not outlive its
 * session in a copy), and the child exits at once so nobody has to reap the
 * grandchild.  Whatever a crash leaves behind goes with the next call. */
static void delete_in_background(const char *state, const char *id, const char *trash)
{
  CLEANUP_FREE char *path = malloc(TB_PATH_MAX); /* heap: see tb_session_begin */
  DIR *d = path ? opendir(trash) : NULL;
  if (!d)
    return;
  TB_VECTOR(, char *) paths = {0};
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.' ||
        tb_clientdir_entry(state, id, TB_CF_TRASH, e->d_name, path, TB_PATH_MAX) == -1)
      continue;
    if (tb_vector_reserve(&paths, 1) == -1)
      break; /* out of memory: delete what is listed, the next call the rest */
    if ((paths.ptr[paths.len] = strdup(path)))
      paths.len++;
  }
  closedir(d);
  if (paths.len > 0) {
    pid_t pid = fork();
    if (pid == 0) {
      if (fork() == 0) {
        close_range(3, ~0U, 0);
        setpriority(PRIO_PROCESS, 0, 19);
        syscall(SYS_ioprio_set, 1 /* IOPRIO_WHO_PROCESS */, 0, 3 << 13 /* IOPRIO_CLASS_IDLE */);
        for (size_t i = 0; i < paths.len; i++)
          unlink(paths.ptr[i]);
      }
      _exit(0);
    }
    if (pid > 0)
      waitpid(pid, NULL, 0);
    else /* no process to spare: delete them here */
      for (size_t i = 0; i < paths.len; i++)
        unlink(paths.ptr[i]);
  }
  for (size_t i = 0; i < paths.len; i++)
    free(paths.ptr[i]);
  tb_vector_free(&paths);
}

/* Retained sessions beyond KEEP, oldest first, leave sessions/ at once (a
 * rename into trash/) and are deleted in the background. */
static void prune_sessions(const char *state, const char *id, int keep)
{
  uint64_t *nums;
  size_t n;
  struct {
    char trash[TB_PATH_MAX], from[TB_PATH_MAX], to[TB_PATH_MAX];
  } *b = malloc(sizeof *b); /* heap: see tb_session_begin */
  if (!b || tb_clientdir_path(state, id, TB_CF_TRASH, b->trash, TB_PATH_MAX) == -1 ||
      tb_mkdirs(b->trash, true) == -1 || tb_client_sessions(state, id, &nums, &n) == -1) {
    free(b);
    return;
  }
  for (size_t i = 0; i + (size_t)keep < n; i++) {
    if (tb_clientdir_session(state, id, nums[i], b->from, TB_PATH_MAX) == 0 &&
        tb_clientdir_trashed(state, id, nums[i], b->to, TB_PATH_MAX) == 0 &&
        rename(b->from, b->to) == 0)
      tb_eventf(state, "session-pruned", id, "{s:I}", "session", (json_int_t)nums[i]);
  }
  free(nums);
  delete_in_background(state, id, b->trash);
  free(b);
}

/* Resolve preserved ranges into block ranges and copy them from OLD into NEW.
 * This works across versions too (a data partition keeps the user's files when
 * the system partition moves to a new master), as long as the disk geometry is
 * the same; partitions are looked up in the new base's partition table. */
static __attribute__((noinline)) int carry_preserved(const char *state,
                                                     const struct tb_client_conf *c,
                                                     struct tb_overlay *nw, const char *old_path,
                                                     const char *base_path)
{
  const char *id = c->id;
  if (c->n_preserve == 0 || !old_path[0])
    return 0;
  struct tb_overlay_info oi;
  struct tb_base_id ob;
  char old_base[TB_PATH_MAX];
  if (tb_overlay_read_info(old_path, &oi) == -1 ||
      tb_base_lookup(state, oi.base.image, oi.base.version, &ob, old_base, sizeof old_base, NULL) ==
          -1)
    return tb_error_prefix("client %s: preserved ranges cannot be carried over", id);
  struct tb_overlay_info ni;
  tb_overlay_info(nw, &ni);
  if (oi.size != ni.size || oi.block_size != ni.block_size) {
    tb_eventf(state, "preserve-skipped", id, "{s:s}", "reason",
              "the new version has another size or block size");
    return 0;
  }
  struct tb_overlay *old = tb_overlay_open(old_path, old_base, &ob, TB_OVL_RDONLY);
  if (!old)
    return tb_error_prefix("client %s: preserved ranges cannot be carried over", id);
  int r = 0;
  uint64_t bs = ni.block_size;
  for (size_t i = 0; i < c->n_preserve && r == 0; i++) {
    uint64_t offs[2], lens[2];
    int n;
    if (tb_region_resolve(&c->preserve[i], base_path, ni.size, offs, lens, &n) == -1) {
      r = tb_error_prefix("client %s: preserve", id);
      break;
    }
    if (n == 0)
      continue;
    uint64_t off = offs[0], len = lens[0];
    /* Whole blocks only: a block shared with an unpreserved neighbour returns
     * to the master, so nothing outside the range survives. */
    uint64_t first = (off + bs - 1) / bs, end = (off + len) / bs;
    if (end > first)
      r = tb_overlay_copy_blocks(nw, old, first, end - first);
  }
  tb_overlay_close(old);
  /* Durable before prune_sessions may delete the only other copy. */
  if (r == 0)
    r = tb_overlay_flush(nw);
  return r;
}

/* session.json on a full disk.  Its atomic rewrite needs a new file, which a
 * full filesystem refuses, and a session that ended would stay "active" with
 * the figures of its start.  So every session start keeps a spare
 * (session.json.spare, space allocated); the end writes into it and renames
 * it over session.json when the rewrite fails with ENOSPC. */
static void make_spare(const char *spare)
{
  int fd = open(spare, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd == -1)
    return;
  struct stat st;
  if (fstat(fd, &st) == 0 && (uint64_t)st.st_blocks * 512 < 65536)
    (void)posix_fallocate(fd, 0, 65536);
  close(fd);
}

static int write_into_spare(const char *path, const char *spare, const char *text)
{
  size_t len = strlen(text);
  int fd = open(spare, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd == -1)
    return tb_error_errno("cannot write %s: the disk is full and there is no spare %s", path,
                          spare);
  if (tb_pwrite_full(fd, text, len, 0) == -1 || ftruncate(fd, (off_t)len) == -1 ||
      fsync(fd) == -1) {
    tb_error_errno("cannot write %s (the disk is full)", spare);
    close(fd);
    return -1;
  }
  close(fd);
  if (rename(spare, path) == -1)
    return tb_error_errno("cannot rename %s to %s", spare, path);
  return tb_fsync_dir(path);
}

static __attribute__((noinline)) int write_session_json(const struct tb_session *s,
                                                        const char *state_word,
                                                        const struct tb_overlay_stats *st,
                                                        int64_t ended_ms)
{
  char path[TB_PATH_MAX], spare[TB_PATH_MAX];
  if (tb_clientdir_path(s->state_dir, s->id, TB_CF_SESSION_JSON, path, sizeof path) == -1 ||
      tb_clientdir_path(s->state_dir, s->id, TB_CF_SESSION_SPARE, spare, sizeof spare) == -1)
    return -1;
  struct tb_overlay_info info;
  tb_overlay_info(s->overlay, &info);
  char started[32], ended[32] = "";
  tb_iso_time(s->started_ms, started);
  if (ended_ms)
    tb_iso_time(ended_ms, ended);
  json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:I, s:s, s:I, s:I}", "client", s->id, "state",
                        state_word, "session", (json_int_t)s->number, "image", info.base.image,
                        "version", (json_int_t)info.base.version, "started", started, "started_ts",
                        (json_int_t)s->started_ms, "dirty_bytes",
                        (json_int_t)(info.dirty_blocks * info.block_size));
  if (!o)
    return tb_error("cannot encode %s", path);
  if (ended_ms) {
    json_object_set_new(o, "ended", json_string(ended));
    json_object_set_new(o, "ended_ts", json_integer(ended_ms));
  }
  json_object_set_new(o, "boot",
                      json_pack("{s:s, s:s?, s:I, s:s}", "via",
                                s->boot.via[0] ? s->boot.via : "none", "token",
                                s->boot.token[0] ? s->boot.token : NULL, "marker_seq",
                                (json_int_t)s->boot.marker_seq, "peer", s->boot.peer));
  if (st) {
    json_object_set_new(o, "bytes_read", json_integer((json_int_t)st->bytes_read));
    json_object_set_new(o, "bytes_written", json_integer((json_int_t)st->bytes_written));
    json_object_set_new(o, "errors", json_integer((json_int_t)st->errors));
  }
  char *text = json_dumps(o, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
  json_decref(o);
  int r = text ? tb_write_file_atomic(path, text, strlen(text), 0600) : -1;
  if (r == -1 && text && errno == ENOSPC)
    r = write_into_spare(path, spare, text);
  else if (r == 0 && !ended_ms)
    make_spare(spare);
  free(text);
  return r;
}

/* Temporaries a crash left in DIR, clients/ID (the caller holds the client's
 * lock, so no turn of ours is building them): a restore's overlay.restore
 * and tb_overlay_create's overlay.tmp.XXXXXX (overlay.next.tmp.XXXXXX: a
 * merge's).  tb_store_gc_temp removes them too. */
static __attribute__((noinline)) void remove_stale_temps(const char *state, const char *id,
                                                         const char *dir)
{
  DIR *d = opendir(dir);
  struct dirent *e;
  while (d && (e = readdir(d))) {
    if (tb_clientdir_temp(e->d_name) != TB_CT_OVERLAY)
      continue;
    char path[TB_PATH_MAX];
    if (tb_clientdir_entry(state, id, TB_CF_DIR, e->d_name, path, sizeof path) == 0 &&
        unlink(path) == 0)
      fprintf(stderr, "tabula: removed %s, left by an interrupted session turn\n", path);
  }
  if (d)
    closedir(d);
}

/* A merge's move of the client onto its new version (restored/jobs.c) was
 * cut before its rename, and this session starts first, on the merged
 * overlay the plan showed: the move is abandoned, so the client stays where
 * the guest left it.  Its overlay.next goes, and so does the restore point
 * the move linked to the live overlay (a retained session must not change). */
static __attribute__((noinline)) void abandon_move(const char *state, const char *id,
                                                   const char *overlay)
{
  char next[TB_PATH_MAX], sessions[TB_PATH_MAX], path[TB_PATH_MAX];
  struct stat ov, st;
  if (tb_clientdir_path(state, id, TB_CF_OVERLAY_NEXT, next, sizeof next) == -1 ||
      access(next, F_OK) == -1 ||
      tb_clientdir_path(state, id, TB_CF_SESSIONS, sessions, sizeof sessions) == -1)
    return;
  if (stat(overlay, &ov) == 0 && ov.st_nlink > 1) {
    DIR *d = opendir(sessions);
    struct dirent *e;
    bool unlinked = false; /* then PATH names an entry of sessions/ */
    while (d && (e = readdir(d)))
      if (e->d_name[0] != '.' &&
          tb_clientdir_entry(state, id, TB_CF_SESSIONS, e->d_name, path, sizeof path) == 0 &&
          stat(path, &st) == 0 && st.st_ino == ov.st_ino && st.st_dev == ov.st_dev &&
          unlink(path) == 0)
        unlinked = true;
    if (d)
      closedir(d);
    if (unlinked)
      tb_fsync_dir(path);
  }
  if (unlink(next) == 0) {
    tb_fsync_dir(next);
    fprintf(stderr,
            "tabula: warning: %s: a merge's move of %s onto its new version was interrupted; "
            "the session starts on the merged overlay as it was (merge it again to move it)\n",
            next, id);
    tb_eventf(state, "merge-move-abandoned", id, "{s:s}", "file", next);
  }
}

/* TABULA_DEBUG_KILL_RESTORE=K (tests only): the process kills itself
 * (SIGKILL) after the Kth extent a restore copies, as a kill -9 in the middle
 * of the copy would (tests/durability-restore-kill.sh). */
static int restore_progress(void *ctx, uint64_t done, uint64_t total)
{
  int *calls = ctx;
  const char *v = getenv("TABULA_DEBUG_KILL_RESTORE");
  if (v && *v && ++*calls == atoi(v)) {
    fprintf(stderr, "tabula: TABULA_DEBUG_KILL_RESTORE=%s: killed after %llu of %llu bytes\n", v,
            (unsigned long long)done, (unsigned long long)total);
    raise(SIGKILL);
  }
  return 0;
}

/* Make retained session N the overlay (a reflink where the filesystem can):
 * built under a temporary name and renamed into place once it is durable, so
 * a crash never leaves a partial copy where the overlay belongs. */
static __attribute__((noinline)) int restore_session(const char *state, const char *id, int64_t n,
                                                     const char *overlay)
{
  char src[TB_PATH_MAX], tmp[TB_PATH_MAX];
  if (tb_clientdir_session(state, id, (uint64_t)n, src, sizeof src) == -1 ||
      tb_clientdir_path(state, id, TB_CF_OVERLAY_RESTORE, tmp, sizeof tmp) == -1)
    return -1;
  unlink(tmp);
  int calls = 0;
  if (tb_clone_file(src, tmp, restore_progress, &calls) == -1) {
    unlink(tmp);
    return tb_error_prefix("restoring session %lld of %s", (long long)n, id);
  }
  int fd = open(tmp, O_RDONLY | O_CLOEXEC);
  if (fd == -1 || fchmod(fd, 0600) == -1 || fsync(fd) == -1) {
    tb_error_errno("restoring session %lld of %s: %s", (long long)n, id, tmp);
    if (fd != -1)
      close(fd);
    unlink(tmp);
    return -1;
  }
  close(fd);
  if (rename(tmp, overlay) == -1) {
    tb_error_errno("restoring session %lld of %s: cannot rename %s", (long long)n, id, tmp);
    unlink(tmp);
    return -1;
  }
  return tb_fsync_dir(overlay);
}

/* ---- plans: the turn decided, not yet done ------------------------------------ */

#define MAX_PRESERVED_RANGES 32

struct tb_session_plan {
  const struct tb_config *cfg;
  const struct tb_client_conf *c;
  char *state_dir;
  int lock_fd;
  struct tb_mailbox mb; /* as read when planned, its latest one-shot: what the turn applies */
  uint64_t mb_serial;   /* the mailbox's last request number then */
  bool locked_down;     /* an admin looks at a locked-down client: no turn */
  bool read_only;       /* a read-only disk (conf.h): its master as is, no turn */
  char lockdown_id[TB_NAME_MAX + 1]; /* whose mailbox locked it down: the disk or its client */
  bool discard;                      /* the overlay is retired (rollback, refresh, restore) */
  bool retain;                       /* ... and kept as a restore point */
  bool keep_overlay;                 /* the overlay stays (persist): no new one */
  uint64_t prev_number;
  /* The base of the overlay the session will use. */
  struct tb_base_id base;
  char base_path[TB_PATH_MAX];
  uint64_t size;
  uint32_t block_size;
  /* The disk the session will show, readable now. */
  struct tb_overlay *view;    /* the kept or restored overlay, or NULL */
  int view_fd;                /* else the base */
  struct tb_overlay *carried; /* the overlay preserved ranges come from */
  uint64_t carry_first[MAX_PRESERVED_RANGES], carry_n[MAX_PRESERVED_RANGES];
  size_t n_carry;
};

static struct tb_overlay *open_ro(const char *state, const char *path, struct tb_base_id *base,
                                  char *base_path, uint64_t *size)
{
  struct tb_overlay_info info;
  if (tb_overlay_read_info(path, &info) == -1 ||
      tb_base_lookup(state, info.base.image, info.base.version, base, base_path, TB_PATH_MAX,
                     size) == -1)
    return NULL;
  return tb_overlay_open(path, base_path, base, TB_OVL_RDONLY);
}

/* The blocks of preserved ranges a rollback carries from the old overlay, as
 * carry_preserved() would copy them; NULL result and no error when nothing
 * is carried. */
static int plan_carry(struct tb_session_plan *pl, const char *old_path)
{
  const struct tb_client_conf *c = pl->c;
  if (c->n_preserve == 0 || !pl->retain)
    return 0;
  struct tb_base_id ob;
  char ob_path[TB_PATH_MAX];
  uint64_t osize;
  struct tb_overlay *old = open_ro(pl->state_dir, old_path, &ob, ob_path, &osize);
  if (!old)
    return tb_error_prefix("client %s: preserved ranges cannot be carried over", c->id);
  if (tb_overlay_size(old) != pl->size || tb_overlay_block_size(old) != pl->block_size) {
    tb_overlay_close(old); /* carry_preserved skips it too (preserve-skipped) */
    return 0;
  }
  uint64_t bs = pl->block_size;
  for (size_t i = 0; i < c->n_preserve; i++) {
    uint64_t offs[2], lens[2];
    int n;
    if (tb_region_resolve(&c->preserve[i], pl->base_path, pl->size, offs, lens, &n) == -1) {
      tb_overlay_close(old);
      return tb_error_prefix("client %s: preserve", c->id);
    }
    if (n == 0)
      continue;
    uint64_t first = (offs[0] + bs - 1) / bs, end = (offs[0] + lens[0]) / bs;
    if (end > first && pl->n_carry < MAX_PRESERVED_RANGES) {
      pl->carry_first[pl->n_carry] = first;
      pl->carry_n[pl->n_carry++] = end - first;
    }
  }
  pl->carried = old;
  return 0;
}

/* Fill PL (its cfg, c and fds set) with what the next session of its client
 * is: -1 with tb_error on a failure, PL for the caller to free. */
static int plan_build(struct tb_session_plan *pl, bool admin_look)
{
  const struct tb_config *cfg = pl->cfg;
  const struct tb_client_conf *c = pl->c;
  const char *state = cfg->state_dir;
  CLEANUP_FREE char *overlay = malloc(TB_PATH_MAX);
  CLEANUP_FREE char *src = malloc(TB_PATH_MAX);
  if (!overlay || !src)
    return tb_error_errno("session of %s", c->id);
  if (tb_clientdir_path(state, c->id, TB_CF_OVERLAY, overlay, TB_PATH_MAX) == -1 ||
      (pl->lock_fd = tb_client_lock(state, c->id, false)) == -1 ||
      tb_mailbox_read(state, c->id, &pl->mb) == -1)
    return -1;
  /* Only the latest one-shot request applies ("restore 1" then "rollback" is
   * a rollback); the turn clears it and the ones it superseded. */
  pl->mb_serial = pl->mb.serial;
  tb_mailbox_keep_latest(&pl->mb);
  snprintf(pl->lockdown_id, sizeof pl->lockdown_id, "%s", c->id);
  if (!pl->mb.lockdown[0] && c->disk[0]) { /* a locked-down client: every disk of it */
    struct tb_mailbox *cm = malloc(sizeof *cm);
    if (!cm || tb_mailbox_read(state, c->client, cm) == -1) {
      free(cm);
      return -1;
    }
    snprintf(pl->mb.lockdown, sizeof pl->mb.lockdown, "%s", cm->lockdown);
    snprintf(pl->lockdown_id, sizeof pl->lockdown_id, "%s", c->client);
    free(cm);
  }
  if (pl->mb.lockdown[0]) {
    if (!admin_look) {
      tb_error("client %s is locked down (%s); release it with: tabulactl unlock %s", c->id,
               pl->mb.lockdown, pl->lockdown_id);
      errno = EACCES;
      return -1;
    }
    pl->locked_down = true;
  }
  pl->read_only = c->read_only;
  const struct tb_mailbox *mb = &pl->mb;
  if (mb->restore > 0 && !pl->locked_down) {
    if (tb_clientdir_session(state, c->id, (uint64_t)mb->restore, src, TB_PATH_MAX) == -1)
      return -1;
    if (access(src, F_OK) == -1) {
      tb_error("client %s: cannot restore session %lld: it is not retained (see tabulactl "
               "sessions %s)",
               c->id, (long long)mb->restore, c->id);
      return -1;
    }
  }
  pl->prev_number = tb_client_last_session(state, c->id);
  bool exists = !pl->read_only && access(overlay, F_OK) == 0;
  /* A maintenance PC keeps its overlay whatever its policy (maintenance.h). */
  bool rolls = c->policy == TB_POLICY_ROLLBACK && tb_maintenance_read(state, c->id, NULL) != 1;
  pl->discard = !pl->locked_down && !pl->read_only &&
                (rolls || mb->rollback || mb->refresh || mb->restore > 0);
  pl->retain = pl->discard && exists && !overlay_unused(overlay) && pl->prev_number != 0;
  pl->keep_overlay = exists && !pl->discard;

  const char *view_path = pl->keep_overlay ? overlay : pl->discard && mb->restore > 0 ? src : NULL;
  if (view_path) {
    if (!(pl->view = open_ro(state, view_path, &pl->base, pl->base_path, &pl->size))) {
      tb_error_prefix("client %s: the version its overlay is built on is gone", c->id);
      return -1;
    }
    pl->block_size = tb_overlay_block_size(pl->view);
  } else {
    char image[TB_NAME_MAX + 1];
    uint32_t version;
    if (tb_client_target(state, c, image, &version) == -1 ||
        tb_base_lookup(state, image, version, &pl->base, pl->base_path, TB_PATH_MAX, &pl->size) ==
            -1) {
      tb_error_prefix("client %s", c->id);
      return -1;
    }
    pl->block_size = cfg->block_size;
    if ((pl->view_fd = open(pl->base_path, O_RDONLY | O_CLOEXEC)) == -1) {
      tb_error_errno("client %s: cannot open %s", c->id, pl->base_path);
      return -1;
    }
  }
  return plan_carry(pl, overlay);
}

struct tb_session_plan *tb_session_plan(const struct tb_config *cfg, const struct tb_client_conf *c,
                                        bool admin_look)
{
  struct tb_session_plan *pl = calloc(1, sizeof *pl);
  if (!pl || !(pl->state_dir = strdup(cfg->state_dir))) {
    tb_error_errno("session of %s", c->id);
    int saved = errno;
    free(pl);
    errno = saved;
    return NULL;
  }
  pl->cfg = cfg;
  pl->c = c;
  pl->view_fd = -1;
  pl->lock_fd = -1;
  if (plan_build(pl, admin_look) == -1) {
    tb_error_prefix("session start of %s", c->id);
    int saved = errno; /* EWOULDBLOCK and EACCES tell busy and locked down apart */
    tb_session_plan_free(pl);
    errno = saved;
    return NULL;
  }
  return pl;
}

void tb_session_plan_free(struct tb_session_plan *pl)
{
  if (!pl)
    return;
  tb_overlay_close(pl->view);
  tb_overlay_close(pl->carried);
  if (pl->view_fd >= 0)
    close(pl->view_fd);
  tb_client_unlock(pl->lock_fd);
  free(pl->state_dir);
  free(pl);
}

uint64_t tb_session_plan_size(const struct tb_session_plan *pl)
{
  return pl->size;
}

uint32_t tb_session_plan_block_size(const struct tb_session_plan *pl)
{
  return pl->block_size;
}

bool tb_session_plan_locked_down(const struct tb_session_plan *pl)
{
  return pl->locked_down;
}

bool tb_session_plan_read_only(const struct tb_session_plan *pl)
{
  return pl->locked_down || pl->read_only;
}

const char *tb_session_plan_base_path(const struct tb_session_plan *pl)
{
  return pl->base_path;
}

int tb_session_plan_base_fd(const struct tb_session_plan *pl)
{
  return pl->view ? tb_overlay_base_fd(pl->view) : pl->view_fd;
}

static int view_read(struct tb_session_plan *pl, void *buf, uint32_t count, uint64_t offset)
{
  if (pl->view)
    return tb_overlay_pread(pl->view, buf, count, offset);
  if (tb_pread_full(pl->view_fd, buf, count, offset) == -1)
    return tb_error_errno("client %s: read of %u bytes at %llu from %s", pl->c->id, count,
                          (unsigned long long)offset, pl->base_path);
  return 0;
}

int tb_session_plan_pread(struct tb_session_plan *pl, void *buf, uint32_t count, uint64_t offset)
{
  uint8_t *p = buf;
  uint64_t bs = pl->block_size, end = offset + count;
  while (offset < end) {
    /* The piece up to the next boundary of a carried range. */
    uint64_t piece_end = end;
    bool carried = false;
    for (size_t i = 0; i < pl->n_carry; i++) {
      uint64_t a = pl->carry_first[i] * bs, b = (pl->carry_first[i] + pl->carry_n[i]) * bs;
      if (offset >= a && offset < b) {
        carried = true;
        if (b < piece_end)
          piece_end = b;
      } else if (a > offset && a < piece_end) {
        piece_end = a;
      }
    }
    uint32_t n = (uint32_t)(piece_end - offset);
    int r = carried ? tb_overlay_pread(pl->carried, p, n, offset) : view_read(pl, p, n, offset);
    if (r == -1)
      return -1;
    p += n;
    offset += n;
  }
  return 0;
}

int tb_session_plan_extents(struct tb_session_plan *pl, uint64_t offset, uint64_t count,
                            tb_extent_fn fn, void *ctx)
{
  if (pl->n_carry) /* "data" is always a true answer */
    return fn(ctx, offset, count, TB_DATA);
  if (pl->view)
    return tb_overlay_extents(pl->view, offset, count, fn, ctx);
  return fn(ctx, offset, count, TB_CLEAN);
}

/* ---- the turn ------------------------------------------------------------------- */

/* The turn's paths live on the heap: this runs on frontend connection
 * threads, and every page of stack a thread touches once stays resident as
 * long as the connection (hundreds of idle clients). */
struct turn_paths {
  char dir[TB_PATH_MAX], overlay[TB_PATH_MAX], retained[TB_PATH_MAX];
};

/* The turn of PL into S (allocated, its id and boot set): -1 with tb_error,
 * S's overlay (if opened) for the caller to close. */
static int commit_turn(struct tb_session_plan *pl, struct tb_session *s, struct turn_paths *p,
                       int64_t turn_start)
{
  const struct tb_client_conf *c = pl->c;
  const char *state = pl->state_dir;
  char *dir = p->dir, *overlay = p->overlay, *retained = p->retained;
  retained[0] = '\0';
  const struct tb_mailbox *mb = &pl->mb;
  if (tb_clientdir_path(state, c->id, TB_CF_DIR, dir, TB_PATH_MAX) == -1 ||
      tb_clientdir_path(state, c->id, TB_CF_OVERLAY, overlay, TB_PATH_MAX) == -1 ||
      !(s->number = next_session_number(state, c->id)))
    return -1;

  remove_stale_temps(state, c->id, dir);
  abandon_move(state, c->id, overlay);
  if (pl->discard) {
    if (tb_client_retire(state, c->id, pl->prev_number, retained, TB_PATH_MAX) == -1)
      return -1;
    if (retained[0])
      tb_eventf(state, "rollback", c->id, "{s:I, s:s}", "retained_session",
                (json_int_t)pl->prev_number, "reason",
                mb->restore > 0 ? "restore"
                : mb->refresh   ? "refresh"
                : mb->rollback  ? "requested"
                                : "policy");
    if (mb->restore > 0 && restore_session(state, c->id, mb->restore, overlay) == -1)
      return -1;
  }
  if (!pl->keep_overlay && !(pl->discard && mb->restore > 0) &&
      tb_overlay_create(overlay, pl->size, pl->block_size, &pl->base, s->number) == -1)
    return -1;

  s->overlay = tb_overlay_open(overlay, pl->base_path, &pl->base, 0);
  if (!s->overlay)
    return -1;
  if (retained[0] && carry_preserved(state, c, s->overlay, retained, pl->base_path) == -1)
    return -1;
  tb_overlay_set_quota(s->overlay, c->quota);
  if (retained[0])
    prune_sessions(state, c->id, c->keep_sessions);
  if (mb->rollback || mb->refresh || mb->restore)
    TB_MAILBOX_CHANGE(state, c->id, .applied = true, .applied_serial = pl->mb_serial);

  /* The lock moves from the plan to the session. */
  s->lock_fd = pl->lock_fd;
  pl->lock_fd = -1;
  tb_overlay_info(s->overlay, &s->info);
  s->started_ms = tb_now_ms();
  write_session_json(s, "active", NULL, 0);
  tb_eventf(state, "session-start", c->id, "{s:I, s:s, s:I, s:I, s:I, s:s, s:s}", "session",
            (json_int_t)s->number, "image", s->info.base.image, "version",
            (json_int_t)s->info.base.version, "dirty_bytes",
            (json_int_t)(s->info.dirty_blocks * s->info.block_size), "turn_ms",
            (json_int_t)(s->started_ms - turn_start), "boot", s->boot.via[0] ? s->boot.via : "none",
            "peer", s->boot.peer);
  return 0;
}

/* A session of client ID in STATE, not started: no lock, no overlay. */
static struct tb_session *session_new(const char *state, const char *id)
{
  struct tb_session *s = calloc(1, sizeof *s);
  if (!s || !(s->state_dir = strdup(state))) {
    tb_error_errno("session of %s", id);
    free(s);
    return NULL;
  }
  s->lock_fd = -1;
  snprintf(s->id, sizeof s->id, "%s", id);
  return s;
}

struct tb_session *tb_session_commit(struct tb_session_plan *pl, const struct tb_boot_note *boot)
{
  const struct tb_client_conf *c = pl->c;
  const char *state = pl->state_dir;
  int64_t turn_start = tb_now_ms();
  if (pl->locked_down) {
    tb_error("client %s is locked down (%s): its disk can be read, not changed; release it "
             "with: tabulactl unlock %s",
             c->id, pl->mb.lockdown, pl->lockdown_id);
    errno = EPERM;
    return NULL;
  }
  if (pl->read_only) {
    tb_error("disk %s is read-only (\"read_only\": true in its configuration)", c->id);
    errno = EROFS;
    return NULL;
  }
  CLEANUP_FREE struct turn_paths *p = malloc(sizeof *p);
  struct tb_session *s = p ? session_new(state, c->id) : NULL;
  if (!s) {
    if (!p)
      tb_error_errno("session of %s", c->id);
    return NULL;
  }
  if (boot)
    s->boot = *boot;
  if (commit_turn(pl, s, p, turn_start) == -1) {
    tb_error_prefix("session start of %s", c->id);
    if (s->overlay)
      tb_overlay_close(s->overlay);
    free(s->state_dir);
    free(s);
    return NULL;
  }
  return s;
}

int tb_session_record(const char *state, const char *id, struct tb_session_record *rec)
{
  char path[TB_PATH_MAX];
  memset(rec, 0, sizeof *rec);
  if (tb_clientdir_path(state, id, TB_CF_SESSION_JSON, path, sizeof path) == -1)
    return -1;
  size_t len;
  char *text = tb_read_file(path, 65536, &len);
  if (!text)
    return errno == ENOENT ? 0 : tb_error_errno("cannot read %s", path);
  json_t *o = json_loadb(text, len, 0, NULL);
  free(text);
  if (!json_is_object(o)) {
    json_decref(o);
    return tb_error("%s: not a session record (JSON object); it is rewritten at the client's "
                    "next session",
                    path);
  }
  rec->active = json_is_string(json_object_get(o, "state")) &&
                strcmp(json_string_value(json_object_get(o, "state")), "active") == 0;
  rec->number = (uint64_t)json_integer_value(json_object_get(o, "session"));
  rec->started_ms = json_integer_value(json_object_get(o, "started_ts"));
  json_t *b = json_object_get(o, "boot");
  const char *tok = json_string_value(json_object_get(b, "token"));
  const char *via = json_string_value(json_object_get(b, "via"));
  snprintf(rec->boot.token, sizeof rec->boot.token, "%s", tok ? tok : "");
  snprintf(rec->boot.via, sizeof rec->boot.via, "%s", via ? via : "");
  rec->boot.marker_seq = (uint64_t)json_integer_value(json_object_get(b, "marker_seq"));
  json_decref(o);
  return 0;
}

/* Open S's overlay (S allocated, its fields from the record set) and take its
 * client's lock: -1 with tb_error, S's lock for the caller to release. */
static int resume_open(const char *state, const struct tb_client_conf *c, struct tb_session *s)
{
  CLEANUP_FREE char *overlay = malloc(TB_PATH_MAX);
  CLEANUP_FREE char *base_path = malloc(TB_PATH_MAX);
  if (!overlay || !base_path)
    return tb_error_errno("session of %s", c->id);
  struct tb_base_id base;
  struct tb_overlay_info info;
  if (tb_clientdir_path(state, c->id, TB_CF_OVERLAY, overlay, TB_PATH_MAX) == -1 ||
      (s->lock_fd = tb_client_lock(state, c->id, false)) == -1 ||
      tb_overlay_read_info(overlay, &info) == -1 ||
      tb_base_lookup(state, info.base.image, info.base.version, &base, base_path, TB_PATH_MAX,
                     NULL) == -1 ||
      !(s->overlay = tb_overlay_open(overlay, base_path, &base, 0)))
    return -1;
  tb_overlay_set_quota(s->overlay, c->quota);
  tb_overlay_info(s->overlay, &s->info);
  write_session_json(s, "active", NULL, 0);
  return 0;
}

struct tb_session *tb_session_resume(const struct tb_config *cfg, const struct tb_client_conf *c,
                                     const struct tb_session_record *rec)
{
  const char *state = cfg->state_dir;
  struct tb_session *s = session_new(state, c->id);
  if (!s)
    return NULL;
  s->boot = rec->boot;
  s->number = rec->number;
  s->started_ms = rec->started_ms;
  if (resume_open(state, c, s) == -1) {
    tb_error_prefix("resuming session %llu of %s", (unsigned long long)rec->number, c->id);
    int saved = errno; /* EWOULDBLOCK: busy */
    tb_client_unlock(s->lock_fd);
    free(s->state_dir);
    free(s);
    errno = saved;
    return NULL;
  }
  return s;
}

int tb_session_suspend(struct tb_session *s)
{
  if (!s)
    return 0;
  int r = tb_overlay_flush(s->overlay);
  write_session_json(s, "active", NULL, 0);
  if (tb_overlay_close(s->overlay) == -1)
    r = -1;
  tb_client_unlock(s->lock_fd);
  free(s->state_dir);
  free(s);
  return r;
}

int tb_session_end(struct tb_session *s)
{
  if (!s)
    return 0;
  int r = tb_overlay_flush(s->overlay);
  struct tb_overlay_stats st;
  tb_overlay_stats(s->overlay, &st);
  st.bytes_read += s->bytes_read_before;
  struct tb_overlay_info info;
  tb_overlay_info(s->overlay, &info);
  int64_t now = tb_now_ms();
  write_session_json(s, "idle", &st, now);
  tb_eventf(s->state_dir, "session-end", s->id, "{s:I, s:I, s:I, s:I, s:I, s:I, s:b}", "session",
            (json_int_t)s->number, "duration_ms", (json_int_t)(now - s->started_ms), "bytes_read",
            (json_int_t)st.bytes_read, "bytes_written", (json_int_t)st.bytes_written, "dirty_bytes",
            (json_int_t)(info.dirty_blocks * info.block_size), "errors", (json_int_t)st.errors,
            "flushed", r == 0);
  if (tb_overlay_close(s->overlay) == -1)
    r = -1;
  tb_client_unlock(s->lock_fd);
  free(s->state_dir);
  free(s);
  return r;
}
