/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: the state directory and its image store (see store.h for the layout).
 *
 * Publishing a version is the only delicate operation here.  A builder holds
 * images/NAME/.lock (flock) from begin to commit, so two imports or merges
 * never pick the same number.  The image is filled under a dot-name, fsynced,
 * hashed, renamed to N.img, and only then is N.json written (atomically):
 * the manifest is the commit record.  Readers ignore an N.img without N.json,
 * and tb_store_gc_temp() removes such leftovers and dot-files of builds that
 * died.
 *
 * Copies keep holes: tb_clone_file() first tries a reflink (FICLONE: O(1) on
 * XFS and btrfs), else copies only the data extents found with SEEK_DATA /
 * SEEK_HOLE using copy_file_range (which itself may share blocks on NFS, XFS).
 */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "cleanup.h"
#include "clientdir.h"
#include "store.h"
#include "vector.h"

/* ---- paths ------------------------------------------------------------- */

static int check_name(const char *what, const char *name)
{
  if (!tb_name_valid(name))
    return tb_error("invalid %s name \"%.80s\" (1-64 characters [A-Za-z0-9._-], starting "
                    "with a letter or digit)",
                    what, name ? name : "");
  return 0;
}

int tb_store_image_dir(const char *state, const char *image, char *buf, size_t len)
{
  if (check_name("image", image) == -1)
    return -1;
  return tb_path(buf, len, "%s/images/%s", state, image);
}

int tb_store_version_path(const char *state, const char *image, uint32_t ver, char *buf, size_t len)
{
  if (check_name("image", image) == -1)
    return -1;
  return tb_path(buf, len, "%s/images/%s/%u.img", state, image, ver);
}

int tb_store_manifest_path(const char *state, const char *image, uint32_t ver, char *buf,
                           size_t len)
{
  if (check_name("image", image) == -1)
    return -1;
  return tb_path(buf, len, "%s/images/%s/%u.json", state, image, ver);
}

int tb_store_open_version(const char *state, const char *image, uint32_t ver)
{
  char path[TB_PATH_MAX], manifest[TB_PATH_MAX];
  struct stat st;
  if (tb_store_version_path(state, image, ver, path, sizeof path) == -1 ||
      tb_store_manifest_path(state, image, ver, manifest, sizeof manifest) == -1)
    return -1;
  /* Not loaded: parsing it costs a reader (the view) OpenSSL's
   * initialisation for the manifest's digest, about a millisecond of its
   * first listing, and proves nothing more about the image. */
  if (stat(manifest, &st) == -1 || !S_ISREG(st.st_mode)) {
    errno = ENOENT;
    return tb_error("image %s has no version %u (no published manifest %s)", image, ver, manifest);
  }
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd == -1)
    return tb_error_errno("cannot open %s", path);
  return fd;
}

/* ---- privacy ------------------------------------------------------------
 *
 * Everything under the state directory is the daemon's: directories are
 * created 0700 and files 0600 (0400 for published versions) whatever the
 * umask.  A state directory, or a directory in it, that another user owns
 * or may write to is refused: whoever can write there can plant a symlink
 * or a file the daemon (often root) would then write through or trust. */

#define PRIVATE_CHECK_DEPTH 3    /* STATE/clients/ID/sessions */
#define PRIVATE_CHECK_MAX 100000 /* directories examined at most */

static int check_dir_private(const char *dir, const struct stat *st)
{
  if (st->st_uid != geteuid())
    return tb_error("%s is owned by uid %u, not by this user (uid %u), so that user could plant "
                    "files in tabula's state: chown -R %u %s (or run tabula as its owner)",
                    dir, (unsigned)st->st_uid, (unsigned)geteuid(), (unsigned)geteuid(), dir);
  if (st->st_mode & (S_IWGRP | S_IWOTH))
    return tb_error("%s is writable by %s (mode %04o), so they could plant files in tabula's "
                    "state: chmod go-w %s (tabula keeps its state private: chmod 700)",
                    dir, st->st_mode & S_IWOTH ? "every user" : "its group",
                    (unsigned)(st->st_mode & 07777), dir);
  return 0;
}

static int check_tree(const char *dir, int depth, size_t *budget)
{
  struct stat st;
  if (stat(dir, &st) == -1)
    return errno == ENOENT ? 0 : tb_error_errno("cannot examine %s", dir);
  if (!S_ISDIR(st.st_mode))
    return 0;
  if (check_dir_private(dir, &st) == -1)
    return -1;
  if (depth == 0)
    return 0;
  DIR *d = opendir(dir);
  if (!d)
    return tb_error_errno("cannot list %s", dir);
  struct dirent *e;
  int r = 0;
  while (r == 0 && (e = readdir(d)) && *budget > 0) {
    if (e->d_type != DT_DIR && e->d_type != DT_LNK && e->d_type != DT_UNKNOWN)
      continue;
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    char sub[TB_PATH_MAX];
    (*budget)--;
    if (tb_path(sub, sizeof sub, "%s/%s", dir, e->d_name) == 0)
      r = check_tree(sub, depth - 1, budget);
  }
  closedir(d);
  return r;
}

int tb_store_check_private(const char *state)
{
  size_t budget = PRIVATE_CHECK_MAX;
  return check_tree(state, PRIVATE_CHECK_DEPTH, &budget);
}

bool tb_store_exposed(const char *state)
{
  struct stat st;
  return stat(state, &st) == 0 && (st.st_mode & (S_IRWXG | S_IRWXO));
}

int tb_store_init(const char *state)
{
  char p[TB_PATH_MAX];
  if (tb_mkdirs(state, true) == -1)
    return -1;
  if (tb_path(p, sizeof p, "%s/images", state) == -1 || tb_mkdirs(p, true) == -1)
    return -1;
  if (tb_clientdir_root(state, p, sizeof p) == -1 || tb_mkdirs(p, true) == -1)
    return -1;
  if (tb_store_check_private(state) == -1)
    return tb_error_prefix("state directory %s", state);
  return 0;
}

void tb_strv_free(char **v, size_t n)
{
  if (!v)
    return;
  for (size_t i = 0; i < n; i++)
    free(v[i]);
  free(v);
}

/* ---- listing ----------------------------------------------------------- */

int tb_store_versions(const char *state, const char *image, uint32_t **vers, size_t *n)
{
  char dir[TB_PATH_MAX];
  uint64_t *nums;
  *vers = NULL;
  *n = 0;
  if (tb_store_image_dir(state, image, dir, sizeof dir) == -1 ||
      tb_list_numbers_suffix(dir, ".json", UINT32_MAX, &nums, n) == -1)
    return -1;
  if (*n && !(*vers = malloc(*n * sizeof **vers))) {
    free(nums);
    *n = 0;
    return tb_error_errno("listing %s", dir);
  }
  for (size_t i = 0; i < *n; i++)
    (*vers)[i] = (uint32_t)nums[i];
  free(nums);
  return 0;
}

uint32_t tb_store_latest(const char *state, const char *image)
{
  uint32_t *v;
  size_t n;
  if (tb_store_versions(state, image, &v, &n) == -1)
    return 0;
  uint32_t latest = n ? v[n - 1] : 0;
  free(v);
  if (!latest)
    tb_error("image \"%s\" has no versions yet; add one with: tabulactl image import %s FILE",
             image, image);
  return latest;
}

static int cmp_str(const void *a, const void *b)
{
  return strcmp(*(char *const *)a, *(char *const *)b);
}

TB_VECTOR(name_list, char *);

/* Add the names among DIR's entries to LIST, as PREFIX/NAME when PREFIX is set. */
static int list_names_into(const char *dir, const char *prefix, struct name_list *list)
{
  DIR *d = opendir(dir);
  if (!d)
    return errno == ENOENT || errno == ENOTDIR ? 0 : tb_error_errno("cannot list %s", dir);
  struct dirent *e;
  int r = 0;
  while (r == 0 && (e = readdir(d))) {
    if (!tb_name_valid(e->d_name))
      continue;
    if (prefix && strlen(prefix) + 1 + strlen(e->d_name) > TB_NAME_MAX)
      continue; /* no disk id (util.h) is that long */
    char *name = NULL;
    if (!prefix)
      name = strdup(e->d_name);
    else if (asprintf(&name, "%s/%s", prefix, e->d_name) == -1)
      name = NULL;
    if (!name || tb_vector_push(list, name) == -1) {
      free(name);
      r = tb_error("listing %s: out of memory", dir);
    }
  }
  closedir(d);
  return r;
}

/* Hand LIST to the caller sorted, or free it on an error R: a truncated list
 * would look like images or clients without state. */
static int list_finish(struct name_list *list, int r, char ***names, size_t *n)
{
  if (r == -1) {
    for (size_t i = 0; i < list->len; i++)
      free(list->ptr[i]);
    tb_vector_free(list);
    return -1;
  }
  if (list->len)
    qsort(list->ptr, list->len, sizeof *list->ptr, cmp_str);
  *names = list->ptr;
  *n = list->len;
  return 0;
}

int tb_store_images(const char *state, char ***names, size_t *n)
{
  char dir[TB_PATH_MAX];
  *names = NULL;
  *n = 0;
  if (tb_path(dir, sizeof dir, "%s/images", state) == -1)
    return -1;
  struct name_list list = {0};
  return list_finish(&list, list_names_into(dir, NULL, &list), names, n);
}

int tb_store_clients(const char *state, char ***ids, size_t *n)
{
  char dir[TB_PATH_MAX];
  *ids = NULL;
  *n = 0;
  if (tb_clientdir_root(state, dir, sizeof dir) == -1)
    return -1;
  struct name_list list = {0};
  int r = list_names_into(dir, NULL, &list);
  size_t clients = list.len;
  for (size_t i = 0; r == 0 && i < clients; i++) {
    char disks[TB_PATH_MAX];
    r = tb_clientdir_path(state, list.ptr[i], TB_CF_DISKS, disks, sizeof disks);
    if (r == 0)
      r = list_names_into(disks, list.ptr[i], &list);
  }
  return list_finish(&list, r, ids, n);
}

/* ---- manifests ----------------------------------------------------------- */

struct tb_manifest *tb_manifest_load(const char *state, const char *image, uint32_t ver)
{
  char path[TB_PATH_MAX];
  if (tb_store_manifest_path(state, image, ver, path, sizeof path) == -1)
    return NULL;
  size_t len;
  char *text = tb_read_file(path, 256 * 1024 * 1024, &len);
  if (!text) {
    if (errno == ENOENT)
      tb_error("image %s has no version %u", image, ver);
    return NULL;
  }
  struct tb_manifest *m = tb_manifest_parse(text, len, path);
  free(text);
  if (m && (strcmp(m->image, image) != 0 || m->version != ver)) {
    tb_error("%s: manifest says %s@%u", path, m->image, m->version);
    tb_manifest_free(m);
    return NULL;
  }
  return m;
}

/* ---- hashing and copying ------------------------------------------------- */

void tb_chunks_digest(const uint8_t (*chunks)[32], size_t n, uint8_t digest[32])
{
  EVP_Digest(chunks, n * 32, digest, NULL, EVP_sha256(), NULL);
}

static uint8_t zero_chunk_sha256[32];
static void hash_zero_chunk(void)
{
  char *zeros = calloc(1, TB_CHUNK_SIZE);
  if (zeros)
    EVP_Digest(zeros, TB_CHUNK_SIZE, zero_chunk_sha256, NULL, EVP_sha256(), NULL);
  free(zeros);
}

int tb_hash_chunk(int fd, uint64_t off, size_t len, char *buf, uint8_t sha256[32])
{
  /* A chunk inside a hole need not be read, nor (the usual size) hashed. */
  off_t d = lseek(fd, (off_t)off, SEEK_DATA);
  bool hole = d == -1 || (uint64_t)d >= off + len;
  if (hole && len == TB_CHUNK_SIZE) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, hash_zero_chunk);
    memcpy(sha256, zero_chunk_sha256, 32);
    return 0;
  }
  if (hole)
    memset(buf, 0, len);
  else if (tb_pread_full(fd, buf, len, off) == -1)
    return tb_error_errno("read error at byte %llu", (unsigned long long)off);
  EVP_Digest(buf, len, sha256, NULL, EVP_sha256(), NULL);
  return 0;
}

int tb_hash_file(int fd, uint64_t size, uint32_t chunk_size, uint8_t sha256[32],
                 uint8_t (**chunks_out)[32], size_t *n_chunks, tb_progress_fn progress, void *ctx)
{
  size_t n = (size_t)((size + chunk_size - 1) / chunk_size);
  CLEANUP_FREE uint8_t(*chunks)[32] = calloc(n + 1, 32);
  CLEANUP_FREE char *buf = malloc(chunk_size);
  if (!chunks || !buf)
    return tb_error_errno("hashing");
  for (size_t i = 0; i < n; i++) {
    uint64_t off = (uint64_t)i * chunk_size;
    size_t len = (size_t)(size - off < chunk_size ? size - off : chunk_size);
    if (tb_hash_chunk(fd, off, len, buf, chunks[i]) == -1)
      return -1;
    if (progress && progress(ctx, off + len, size)) {
      errno = ECANCELED;
      return tb_error("cancelled");
    }
  }
  tb_chunks_digest((const uint8_t(*)[32])chunks, n, sha256);
  *chunks_out = chunks;
  *n_chunks = n;
  chunks = NULL;
  return 0;
}

/* Copy IN's data extents into OUT, SIZE bytes (holes stay holes): 0, or -1
 * with a message. */
static int copy_data(int in, int out, uint64_t size, const char *src, const char *dst,
                     tb_progress_fn progress, void *ctx)
{
  if (ftruncate(out, (off_t)size) == -1)
    return tb_error_errno("cannot size %s", dst);
  int r = 0;
  uint64_t off = 0;
  while (off < size && r == 0) {
    off_t data = lseek(in, (off_t)off, SEEK_DATA);
    if (data == -1 && errno == ENXIO)
      break; /* only a hole remains */
    if (data == -1)
      data = (off_t)off;
    off_t hole = lseek(in, data, SEEK_HOLE);
    if (hole == -1)
      hole = (off_t)size;
    loff_t ipos = data, opos = data;
    /* With a progress display, pieces small enough for it to move. */
    uint64_t step = progress ? UINT64_C(64) << 20 : UINT64_C(1) << 30;
    while (ipos < hole) {
      size_t want = (size_t)((uint64_t)(hole - ipos) > step ? step : (uint64_t)(hole - ipos));
      ssize_t n = copy_file_range(in, &ipos, out, &opos, want, 0);
      if (n == -1 && (errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP)) {
        /* Fall back to read/write for this extent. */
        char *buf = malloc(1 << 20);
        n = 0;
        if (buf) {
          size_t len = want > (1 << 20) ? (1 << 20) : want;
          if (tb_pread_full(in, buf, len, (uint64_t)ipos) == 0 &&
              tb_pwrite_full(out, buf, len, (uint64_t)opos) == 0) {
            n = (ssize_t)len;
            ipos += n;
            opos += n;
          } else
            n = -1;
          free(buf);
        } else
          n = -1;
      }
      if (n <= 0) {
        r = tb_error_errno("copying %s to %s", src, dst);
        break;
      }
      if (progress && progress(ctx, (uint64_t)ipos, size)) {
        errno = ECANCELED;
        r = tb_error("cancelled");
        break;
      }
    }
    off = (uint64_t)hole;
  }
  return r;
}

int tb_clone_file(const char *src, const char *dst, tb_progress_fn progress, void *ctx)
{
  CLEANUP_CLOSE int in = open(src, O_RDONLY | O_CLOEXEC);
  if (in == -1)
    return tb_error_errno("cannot open %s", src);
  struct stat st;
  if (fstat(in, &st) == -1)
    return tb_error_errno("%s is not a regular file", src);
  if (!S_ISREG(st.st_mode)) {
    errno = EINVAL;
    return tb_error_errno("%s is not a regular file", src);
  }
  int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (out == -1)
    return tb_error_errno("cannot create %s", dst);
  uint64_t size = (uint64_t)st.st_size;
  int r = 0;
  if (ioctl(out, FICLONE, in) == -1) /* a reflink shares every block, O(1) */
    r = copy_data(in, out, size, src, dst, progress, ctx);
  if (r == 0 && fsync(out) == -1)
    r = tb_error_errno("cannot write %s", dst);
  if (close(out) == -1 && r == 0)
    r = tb_error_errno("cannot write %s", dst);
  if (r == 0 && progress)
    progress(ctx, size, size);
  return r;
}

/* ---- building versions ------------------------------------------------------ */

struct tb_version_builder {
  char state[TB_PATH_MAX];
  char image[TB_NAME_MAX + 1];
  char tmp[TB_PATH_MAX];
  uint32_t version, parent;
  char *note;
  int lock_fd;
};

struct tb_version_builder *tb_version_begin(const char *state, const char *image, uint32_t parent,
                                            const char *note)
{
  char dir[TB_PATH_MAX], lock[TB_PATH_MAX];
  if (tb_store_image_dir(state, image, dir, sizeof dir) == -1 || tb_mkdirs(dir, true) == -1 ||
      tb_path(lock, sizeof lock, "%s/.lock", dir) == -1)
    return NULL;
  struct tb_version_builder *b = calloc(1, sizeof *b);
  if (!b) {
    tb_error_errno("new version of %s", image);
    return NULL;
  }
  b->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (b->lock_fd == -1 || flock(b->lock_fd, LOCK_EX) == -1) {
    tb_error_errno("cannot lock %s", lock);
    if (b->lock_fd >= 0)
      close(b->lock_fd);
    free(b);
    return NULL;
  }
  uint32_t *vers;
  size_t n;
  if (tb_store_versions(state, image, &vers, &n) == -1) {
    tb_version_abort(b);
    return NULL;
  }
  b->version = n ? vers[n - 1] + 1 : 1;
  free(vers);
  b->parent = parent;
  b->note = note ? strdup(note) : NULL;
  snprintf(b->state, sizeof b->state, "%s", state);
  snprintf(b->image, sizeof b->image, "%s", image);
  if (tb_path(b->tmp, sizeof b->tmp, "%s/.%u.img.tmp", dir, b->version) == -1) {
    tb_version_abort(b);
    return NULL;
  }
  unlink(b->tmp); /* left by a build that died */
  return b;
}

const char *tb_version_tmp_path(const struct tb_version_builder *b)
{
  return b->tmp;
}

uint32_t tb_version_number(const struct tb_version_builder *b)
{
  return b->version;
}

void tb_version_abort(struct tb_version_builder *b)
{
  if (!b)
    return;
  if (b->tmp[0])
    unlink(b->tmp);
  if (b->lock_fd >= 0)
    close(b->lock_fd);
  free(b->note);
  free(b);
}

static void builder_free(struct tb_version_builder *b)
{
  close(b->lock_fd);
  free(b->note);
  free(b);
}

/* Move B's file into place as its version and write M beside it: -1 with a
 * message (B's file then is where it was, or removed again). */
static int publish(struct tb_version_builder *b, struct tb_manifest *m)
{
  char img[TB_PATH_MAX], man[TB_PATH_MAX];
  if (tb_store_version_path(b->state, b->image, b->version, img, sizeof img) == -1 ||
      tb_store_manifest_path(b->state, b->image, b->version, man, sizeof man) == -1)
    return -1;
  {
    CLEANUP_CLOSE int fd = open(b->tmp, O_RDONLY | O_CLOEXEC);
    if (fd == -1 || fsync(fd) == -1)
      return tb_error_errno("cannot sync %s", b->tmp);
  }
  chmod(b->tmp, 0400); /* versions are immutable, and private (IMAGE@N is admin-only) */
  if (rename(b->tmp, img) == -1)
    return tb_error_errno("cannot publish %s", img);
  CLEANUP_FREE char *text = tb_manifest_dump(m);
  if (!text || tb_write_file_atomic(man, text, strlen(text), 0400) == -1) {
    unlink(img);
    return -1;
  }
  EVP_Digest(text, strlen(text), m->manifest_sha256, NULL, EVP_sha256(), NULL);
  return 0;
}

int tb_version_commit_manifest(struct tb_version_builder *b, struct tb_manifest *m)
{
  snprintf(m->image, sizeof m->image, "%s", b->image);
  m->version = b->version;
  if (!m->created[0])
    tb_iso_time(tb_now_ms(), m->created);
  if (!m->parent)
    m->parent = b->parent;
  if (!m->note && b->note)
    m->note = strdup(b->note);
  if (publish(b, m) == -1) {
    tb_error_prefix("publishing %s@%u", b->image, b->version);
    tb_version_abort(b);
    return -1;
  }
  builder_free(b);
  return 0;
}

int tb_version_commit(struct tb_version_builder *b, tb_progress_fn progress, void *ctx)
{
  CLEANUP_MANIFEST struct tb_manifest *m = calloc(1, sizeof *m);
  CLEANUP_CLOSE int fd = open(b->tmp, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (!m || fd == -1 || fstat(fd, &st) == -1) {
    tb_error_errno("cannot read %s", b->tmp);
    tb_version_abort(b);
    return -1;
  }
  m->size = (uint64_t)st.st_size;
  m->chunk_size = TB_CHUNK_SIZE;
  if (m->size == 0)
    tb_error("the new version is empty (0 bytes)");
  else if (tb_hash_file(fd, m->size, m->chunk_size, m->sha256, &m->chunks, &m->n_chunks, progress,
                        ctx) == -1)
    tb_error_prefix("hashing %s", b->tmp);
  else
    return tb_version_commit_manifest(b, m);
  tb_version_abort(b);
  return -1;
}

int tb_store_import(const char *state, const char *image, const char *file, const char *note,
                    tb_progress_fn progress, void *ctx, uint32_t *ver)
{
  if (tb_store_init(state) == -1)
    return -1;
  uint32_t parent = 0;
  {
    uint32_t *v;
    size_t n;
    if (tb_store_versions(state, image, &v, &n) == -1)
      return -1;
    parent = n ? v[n - 1] : 0;
    free(v);
  }
  struct tb_version_builder *b = tb_version_begin(state, image, parent, note);
  if (!b)
    return -1;
  uint32_t num = b->version;
  if (tb_clone_file(file, b->tmp, progress, ctx) == -1) {
    tb_error_prefix("importing %s", file);
    tb_version_abort(b);
    return -1;
  }
  if (tb_version_commit(b, progress, ctx) == -1)
    return -1;
  *ver = num;
  return 0;
}

int tb_store_remove_version(const char *state, const char *image, uint32_t ver)
{
  char img[TB_PATH_MAX], man[TB_PATH_MAX];
  if (tb_store_version_path(state, image, ver, img, sizeof img) == -1 ||
      tb_store_manifest_path(state, image, ver, man, sizeof man) == -1)
    return -1;
  if (unlink(man) == -1)
    return tb_error_errno("cannot remove %s@%u", image, ver);
  tb_fsync_dir(man);
  if (unlink(img) == -1 && errno != ENOENT)
    return tb_error_errno("cannot remove %s", img);
  return 0;
}

/* Can the lock file LOCK be taken right now (nobody works under it)?  Then
 * it is taken and its fd returned; else -1.  A missing lock is free (0 would
 * be a valid fd: -2 means "free, nothing to close"). */
static int try_lock(const char *lock)
{
  int fd = open(lock, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  if (fd == -1)
    return errno == ENOENT ? -2 : -1;
  if (flock(fd, LOCK_EX | LOCK_NB) == -1) {
    close(fd);
    return -1;
  }
  return fd;
}

/* In images/NAME: a builder's dot-file, N.img without N.json (a build that
 * died between its two renames), a manifest's temporary N.json.tmp.XXXXXX. */
static bool image_leftover(const char *state, const char *image, const char *name)
{
  size_t len = strlen(name);
  if (name[0] == '.' && len > 4 && strcmp(name + len - 4, ".tmp") == 0)
    return true;
  unsigned v;
  int end = 0;
  if (sscanf(name, "%u.json.tmp.%n", &v, &end) == 1 && end > 0)
    return true;
  char tail[8];
  if (sscanf(name, "%u.im%7s", &v, tail) == 2 && strcmp(tail, "g") == 0) {
    char man[TB_PATH_MAX];
    return tb_store_manifest_path(state, image, v, man, sizeof man) == 0 && access(man, F_OK) == -1;
  }
  return false;
}

static int gc_images(const char *state)
{
  char **names;
  size_t n;
  int removed = 0;
  if (tb_store_images(state, &names, &n) == -1)
    return -1;
  for (size_t i = 0; i < n; i++) {
    char dir[TB_PATH_MAX];
    if (tb_store_image_dir(state, names[i], dir, sizeof dir) == -1)
      continue;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
      char p[TB_PATH_MAX];
      if (image_leftover(state, names[i], e->d_name) &&
          tb_path(p, sizeof p, "%s/%s", dir, e->d_name) == 0) {
        /* Skip temporaries of a build that is still running (it holds .lock). */
        char lock[TB_PATH_MAX];
        int lfd = tb_path(lock, sizeof lock, "%s/.lock", dir) == 0
                      ? open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600)
                      : -1;
        if (lfd >= 0 && flock(lfd, LOCK_EX | LOCK_NB) == 0 && unlink(p) == 0)
          removed++;
        if (lfd >= 0)
          close(lfd);
      }
    }
    if (d) {
      closedir(d);
      tb_fsync_dir(dir);
    }
  }
  tb_strv_free(names, n);
  return removed;
}

/* In clients/ID (and each disk's directory), while no session holds it: the temporaries of a
 * session turn or a merge's move that died (overlay.restore,
 * overlay.tmp.XXXXXX, overlay.next.tmp.XXXXXX) and of its records' atomic
 * writes (tb_clientdir_temp). */
static int gc_clients(const char *state)
{
  int removed = 0;
  char **ids;
  size_t n_ids;
  if (tb_store_clients(state, &ids, &n_ids) == -1)
    return 0;
  for (size_t i = 0; i < n_ids; i++) {
    char cdir[TB_PATH_MAX], lock[TB_PATH_MAX];
    if (tb_clientdir_path(state, ids[i], TB_CF_DIR, cdir, sizeof cdir) == -1 ||
        tb_clientdir_path(state, ids[i], TB_CF_LOCK, lock, sizeof lock) == -1)
      continue;
    DIR *cd = opendir(cdir);
    struct dirent *f;
    int lfd = -1, mfd = -1;
    bool any = false;
    while (cd && (f = readdir(cd))) {
      enum tb_ctemp t = tb_clientdir_temp(f->d_name);
      bool mailbox = t == TB_CT_MAILBOX;
      if (t == TB_CT_NONE)
        continue;
      if (lfd == -1 && (lfd = try_lock(lock)) == -1)
        break; /* a session runs: its turn may be building it */
      char mlock[TB_PATH_MAX];
      if (mailbox && mfd < 0 &&
          (tb_clientdir_path(state, ids[i], TB_CF_MAILBOX_LOCK, mlock, sizeof mlock) == -1 ||
           (mfd = try_lock(mlock)) == -1))
        continue; /* a mailbox update runs */
      char p[TB_PATH_MAX];
      if (tb_clientdir_entry(state, ids[i], TB_CF_DIR, f->d_name, p, sizeof p) == 0 &&
          unlink(p) == 0) {
        removed++;
        any = true;
      }
    }
    if (cd)
      closedir(cd);
    if (any)
      tb_fsync_dir(cdir);
    if (lfd >= 0)
      close(lfd);
    if (mfd >= 0)
      close(mfd);
  }
  tb_strv_free(ids, n_ids);
  return removed;
}

/* STATE/pulls/IMAGE/SHA: interrupted pulls (their partial.img is kept for a
 * resume) that no pull holds.  Only an explicit gc reclaims them. */
static int gc_pulls(const char *state)
{
  static const char *const files[] = {"partial.img", "chunks.done", "pull.json", "lock"};
  char dir[TB_PATH_MAX];
  int removed = 0;
  if (tb_path(dir, sizeof dir, "%s/pulls", state) == -1)
    return 0;
  DIR *d = opendir(dir);
  struct dirent *e;
  while (d && (e = readdir(d))) {
    char idir[TB_PATH_MAX];
    if (!tb_name_valid(e->d_name) || tb_path(idir, sizeof idir, "%s/%s", dir, e->d_name) == -1)
      continue;
    DIR *id = opendir(idir);
    struct dirent *f;
    while (id && (f = readdir(id))) {
      char sub[TB_PATH_MAX], lock[TB_PATH_MAX], p[TB_PATH_MAX];
      if (f->d_name[0] == '.' || tb_path(sub, sizeof sub, "%s/%s", idir, f->d_name) == -1 ||
          tb_path(lock, sizeof lock, "%s/lock", sub) == -1)
        continue;
      int lfd = try_lock(lock);
      if (lfd == -1)
        continue; /* a pull runs in it */
      for (size_t i = 0; i < sizeof files / sizeof *files; i++)
        if (tb_path(p, sizeof p, "%s/%s", sub, files[i]) == 0)
          unlink(p);
      if (rmdir(sub) == 0)
        removed++;
      if (lfd >= 0)
        close(lfd);
    }
    if (id) {
      closedir(id);
      tb_fsync_dir(idir);
    }
  }
  if (d)
    closedir(d);
  return removed;
}

int tb_store_gc(const char *state, bool pulls)
{
  int images = gc_images(state);
  if (images == -1)
    return -1;
  return images + gc_clients(state) + (pulls ? gc_pulls(state) : 0);
}

int tb_store_gc_temp(const char *state)
{
  return tb_store_gc(state, true);
}
