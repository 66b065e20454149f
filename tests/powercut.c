/* SPDX-License-Identifier: BSD-3-Clause */
/* powercut: a FUSE passthrough that loses, at a "cut", everything a power loss
 * would lose -- in the spirit of LazyFS (the FUSE filesystem Jepsen uses to find
 * lost writes).  The power-cut tests (tests/powercut-*.sh) run tabula over it.
 *
 *   powercut [--strict] [--cut-at N] STATE MOUNTPOINT
 *
 * STATE/disk is "the disk": what survives a cut.  At start the simulator copies
 * it to STATE/live (what programs see through MOUNTPOINT, i.e. the page cache)
 * and mounts STATE/live.  Every call is passed through to STATE/live; the disk
 * follows only as far as the calls that make things durable:
 *
 *   file data and size   durable at fsync/fdatasync of that file: the ranges
 *                        written (pwrite, ftruncate, fallocate punch-hole and
 *                        zero-range, copy_file_range) since its last sync are
 *                        copied to the disk, holes as holes;
 *   directory entries    (create, mkdir, rename, link, unlink, rmdir, symlink)
 *                        durable at once by default -- as on a journalling
 *                        filesystem that may commit the create of a file before
 *                        its data -- or, with --strict, only when the directory
 *                        that holds the entry is fsynced, as on ext2 (a rename
 *                        is two entries: the new name becomes durable with its
 *                        new directory, the old name goes with the old one).
 *
 * A cut is the death of this process: kill -9 (or SIGUSR1, which exits at once)
 * and the mount goes away (auto_unmount); nothing pending reaches the disk.  The
 * test then kills the programs that used the mount and starts powercut again on
 * the same STATE, which rebuilds STATE/live from the disk: the "reboot".
 * --cut-at N cuts by itself at the Nth sync call (fsync, fdatasync, fsyncdir),
 * before doing it; STATE/syncs.log lists the calls, so a test can count a
 * run's calls and then cut before each one in turn: every cut point, not a
 * random sample.  SIGUSR2 arms the same cut for the next sync call, whatever
 * its number: a test that cuts at a random moment lands inside a write; if
 * STATE/arm-path exists then, the cut waits for a sync call of a path that
 * contains the text it holds (one line): inside that writer's write.
 *
 * How the disk is kept: every file has one durable inode, STATE/disk/.pc-inodes/
 * OID (OID: a number given to each file or directory when it is created or found
 * at start), and its durable names are hard links to it, so data synced through
 * any name shows under every durable name, and a file whose name is not durable
 * yet still has durable data that appears with the name.  A directory whose own
 * entry is not durable yet lives at .pc-inodes/OID until it is.  SEEK_DATA and
 * SEEK_HOLE pass through; FICLONE does not exist in FUSE (callers fall back to
 * copy_file_range, as on any filesystem without reflinks); sync(2)/syncfs(2)
 * never reach a FUSE filesystem, so only fsync counts.  Locks are the kernel's.
 */
#define FUSE_USE_VERSION 35
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <unistd.h>

#define STORE ".pc-inodes"

static char disk_dir[PATH_MAX], live_dir[PATH_MAX];
static int live_fd = -1;
static bool strict;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t next_oid = 1;
static long sync_count, cut_at;        /* --cut-at N: the cut comes at the Nth sync call */
static volatile sig_atomic_t cut_next; /* SIGUSR2: the cut comes at the next one */
static char arm_file[PATH_MAX];        /* STATE/arm-path */
static char arm_path[256];             /* ... of a path containing this ("": any) */
static bool arm_read;
static int sync_log = -1; /* STATE/syncs.log: one line per sync call */

static void die(const char *what, const char *path)
{
  fprintf(stderr, "powercut: %s %s: %s\n", what, path ? path : "", strerror(errno));
  exit(2);
}

/* ---- objects: files and directories, by live inode ---------------------- */

struct range {
  uint64_t start, end;
};

struct obj {
  ino_t lino;   /* inode in STATE/live */
  uint64_t oid; /* its durable identity */
  bool dir;
  /* files: ranges written since the last sync */
  struct range *dirty;
  size_t ndirty, capdirty;
  bool size_dirty;
  /* directories: where the disk holds it */
  bool staged;        /* at .pc-inodes/OID (its entry is not durable) */
  struct obj *parent; /* else: PARENT/NAME on the disk */
  char *name;
  struct obj *next;
};

#define NBUCKETS 1024
static struct obj *objs[NBUCKETS];
static struct obj *root;

static struct obj *obj_find(ino_t lino)
{
  for (struct obj *o = objs[lino % NBUCKETS]; o; o = o->next)
    if (o->lino == lino)
      return o;
  return NULL;
}

/* A new object for LINO (an inode number may come back after its file died:
 * the old object stays alive for the pending entries that name it). */
static struct obj *obj_new(ino_t lino, bool dir)
{
  struct obj *o = calloc(1, sizeof *o);
  if (!o)
    die("out of memory", NULL);
  o->lino = lino;
  o->oid = next_oid++;
  o->dir = dir;
  struct obj **b = &objs[lino % NBUCKETS];
  /* Unhook an older object of the same inode from lookups (it is leaked on
   * purpose: pending entries may still point at it). */
  for (struct obj **p = b; *p; p = &(*p)->next)
    if ((*p)->lino == lino) {
      *p = (*p)->next;
      break;
    }
  o->next = *b;
  *b = o;
  return o;
}

static void store_path(char *buf, size_t len, const struct obj *o)
{
  snprintf(buf, len, "%s/" STORE "/%llu", disk_dir, (unsigned long long)o->oid);
}

/* Where directory O is on the disk now. */
static void dir_path(char *buf, size_t len, const struct obj *o)
{
  if (o == root)
    snprintf(buf, len, "%s", disk_dir);
  else if (o->staged || !o->parent)
    store_path(buf, len, o);
  else {
    char up[PATH_MAX];
    dir_path(up, sizeof up, o->parent);
    snprintf(buf, len, "%s/%s", up, o->name);
  }
}

static void mark_dirty(struct obj *o, uint64_t start, uint64_t end)
{
  if (start >= end)
    return;
  /* Merge with every range that overlaps or touches [start, end). */
  size_t i = 0;
  while (i < o->ndirty && o->dirty[i].end < start)
    i++;
  size_t j = i;
  while (j < o->ndirty && o->dirty[j].start <= end) {
    if (o->dirty[j].start < start)
      start = o->dirty[j].start;
    if (o->dirty[j].end > end)
      end = o->dirty[j].end;
    j++;
  }
  if (j == i) { /* insert */
    if (o->ndirty == o->capdirty) {
      o->capdirty = o->capdirty ? o->capdirty * 2 : 16;
      o->dirty = realloc(o->dirty, o->capdirty * sizeof *o->dirty);
      if (!o->dirty)
        die("out of memory", NULL);
    }
    memmove(&o->dirty[i + 1], &o->dirty[i], (o->ndirty - i) * sizeof *o->dirty);
    o->ndirty++;
  } else if (j > i + 1) {
    memmove(&o->dirty[i + 1], &o->dirty[j], (o->ndirty - j) * sizeof *o->dirty);
    o->ndirty -= j - i - 1;
  }
  o->dirty[i] = (struct range){start, end};
}

/* ---- the disk: copying, entries ------------------------------------------ */

/* Copy [start, end) of live file IN to disk file OUT, holes as holes. */
static int copy_range(int in, int out, uint64_t start, uint64_t end)
{
  static __thread char buf[1 << 20];
  uint64_t pos = start;
  while (pos < end) {
    off_t d = lseek(in, (off_t)pos, SEEK_DATA);
    uint64_t data = d == -1 ? end : (uint64_t)d; /* ENXIO: only a hole is left */
    if (data > end)
      data = end;
    if (data > pos && fallocate(out, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)pos,
                                (off_t)(data - pos)) == -1)
      return -1;
    if (data >= end)
      break;
    off_t hl = lseek(in, (off_t)data, SEEK_HOLE);
    uint64_t hole = hl == -1 || (uint64_t)hl > end ? end : (uint64_t)hl;
    for (pos = data; pos < hole;) {
      size_t want = hole - pos < sizeof buf ? (size_t)(hole - pos) : sizeof buf;
      ssize_t n = pread(in, buf, want, (off_t)pos);
      if (n <= 0)
        return n == 0 ? 0 : -1;
      if (pwrite(out, buf, (size_t)n, (off_t)pos) != n)
        return -1;
      pos += (uint64_t)n;
    }
  }
  return 0;
}

/* Make file O's data durable from live descriptor FD.  Caller holds LOCK. */
static int sync_file(struct obj *o, int fd)
{
  if (o->ndirty == 0 && !o->size_dirty)
    return 0;
  char sp[PATH_MAX], fdp[64];
  store_path(sp, sizeof sp, o);
  snprintf(fdp, sizeof fdp, "/proc/self/fd/%d", fd);
  fd = open(fdp, O_RDONLY | O_CLOEXEC); /* the caller's may be write-only */
  int out = fd == -1 ? -1 : open(sp, O_WRONLY | O_CLOEXEC);
  struct stat st;
  if (out == -1 || fstat(fd, &st) == -1) {
    int e = errno;
    if (out != -1)
      close(out);
    if (fd != -1)
      close(fd);
    return -e;
  }
  int r = 0;
  for (size_t i = 0; i < o->ndirty && r == 0; i++) {
    uint64_t a = o->dirty[i].start, z = o->dirty[i].end;
    if (z > (uint64_t)st.st_size)
      z = (uint64_t)st.st_size;
    if (a < z)
      r = copy_range(fd, out, a, z);
  }
  if (r == 0)
    r = ftruncate(out, st.st_size);
  if (r == 0 && fchmod(out, st.st_mode & 07777) == -1)
    r = -1;
  r = r == -1 ? -errno : 0;
  close(out);
  close(fd);
  if (r == 0) {
    o->ndirty = 0;
    o->size_dirty = false;
  }
  return r;
}

static void rm_rf(const char *path);

/* Count a sync call (fsync, fdatasync, fsyncdir) of FD and log it with the
 * file's path below STATE/live (FUSE passes no path for an open file:
 * nullpath_ok); at the Nth one with --cut-at N the power goes before it is
 * done.  Caller holds LOCK. */
static void count_sync(const char *what, int fd)
{
  long n = ++sync_count;
  char link[64], path[PATH_MAX];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t len = readlink(link, path, sizeof path - 1);
  path[len > 0 ? len : 0] = '\0';
  size_t skip = strlen(live_dir);
  dprintf(sync_log, "%ld %s %s\n", n, what,
          len <= 0                             ? "?"
          : strncmp(path, live_dir, skip) == 0 ? (path[skip] ? path + skip : "/")
                                               : path);
  if (cut_next && !arm_read) {
    arm_read = true;
    FILE *f = fopen(arm_file, "r");
    if (f && fgets(arm_path, sizeof arm_path, f))
      arm_path[strcspn(arm_path, "\n")] = '\0';
    if (f)
      fclose(f);
  }
  if ((cut_at && n >= cut_at) || (cut_next && (!arm_path[0] || strstr(path, arm_path))))
    _exit(0);
}

/* A directory entry change: DIR/NAME now names TARGET, or (remove) no longer does. */
struct effect {
  struct obj *dir;
  char *name;
  struct obj *target;
  bool remove, dead; /* dead: a removed directory is gone, not moved */
  struct effect *next;
};
static struct effect *pending, **pending_tail = &pending;

static void apply(const struct effect *e)
{
  char dp[PATH_MAX], ep[PATH_MAX], sp[PATH_MAX];
  dir_path(dp, sizeof dp, e->dir);
  snprintf(ep, sizeof ep, "%s/%s", dp, e->name);
  struct obj *t = e->target;
  struct stat st, st2;
  if (!t->dir && !e->remove) {
    char tmp[PATH_MAX];
    store_path(sp, sizeof sp, t);
    snprintf(tmp, sizeof tmp, "%s/.pc-link", dp);
    unlink(tmp);
    if (link(sp, tmp) == 0 && rename(tmp, ep) == -1)
      unlink(tmp);
  } else if (!t->dir) {
    store_path(sp, sizeof sp, t);
    if (lstat(ep, &st) == 0 && lstat(sp, &st2) == 0 && st.st_ino == st2.st_ino)
      unlink(ep);
  } else if (!e->remove) {
    dir_path(sp, sizeof sp, t);
    if (strcmp(sp, ep) != 0) {
      if (lstat(ep, &st) == 0)
        rm_rf(ep); /* what L's rename replaced (an empty directory there) */
      if (rename(sp, ep) == 0) {
        t->staged = false;
        t->parent = e->dir;
        free(t->name);
        t->name = strdup(e->name);
      }
    }
  } else if (!t->staged && t->parent == e->dir && t->name && strcmp(t->name, e->name) == 0) {
    if (e->dead) {
      rm_rf(ep);
    } else { /* moved away: nameless until its new entry is durable */
      store_path(sp, sizeof sp, t);
      if (rename(ep, sp) == 0)
        t->staged = true;
    }
  }
}

/* Record an entry change: applied at once, or in strict mode when DIR is fsynced. */
static void entry(struct obj *dir, const char *name, struct obj *target, bool remove, bool dead)
{
  struct effect e = {dir, strdup(name), target, remove, dead, NULL};
  if (!strict || !dir) {
    if (dir)
      apply(&e);
    free(e.name);
    return;
  }
  struct effect *p = malloc(sizeof *p);
  if (!p)
    die("out of memory", NULL);
  *p = e;
  *pending_tail = p;
  pending_tail = &p->next;
}

static void sync_dir(struct obj *dir)
{
  struct effect **pp = &pending;
  pending_tail = &pending;
  while (*pp) {
    struct effect *e = *pp;
    if (e->dir == dir) {
      apply(e);
      *pp = e->next;
      free(e->name);
      free(e);
    } else {
      pp = &e->next;
    }
  }
  for (pp = &pending; *pp; pp = &(*pp)->next)
    ;
  pending_tail = pp;
}

/* ---- start: the disk becomes the live tree -------------------------------- */

static void rm_rf(const char *path)
{
  struct stat st;
  if (lstat(path, &st) == -1)
    return;
  if (S_ISDIR(st.st_mode)) {
    DIR *d = opendir(path);
    if (d) {
      struct dirent *de;
      while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
          continue;
        char sub[PATH_MAX];
        snprintf(sub, sizeof sub, "%s/%s", path, de->d_name);
        rm_rf(sub);
      }
      closedir(d);
    }
    rmdir(path);
  } else {
    unlink(path);
  }
}

struct seen {
  ino_t dino;
  char lpath[PATH_MAX];
  struct obj *o;
  struct seen *next;
};
static struct seen *seen;

static void copy_file(const char *from, const char *to, const struct stat *st)
{
  int in = open(from, O_RDONLY | O_CLOEXEC);
  int out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, st->st_mode & 07777);
  if (in == -1 || out == -1)
    die("cannot copy", from);
  if (ftruncate(out, st->st_size) == -1 || copy_range(in, out, 0, (uint64_t)st->st_size) == -1)
    die("cannot copy", from);
  close(in);
  close(out);
}

/* Copy disk directory DPATH into live directory LPATH (object DIR), and index
 * every file's durable inode. */
static void load_tree(const char *dpath, const char *lpath, struct obj *dir)
{
  DIR *d = opendir(dpath);
  if (!d)
    die("cannot read", dpath);
  struct dirent *de;
  while ((de = readdir(d))) {
    if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") ||
        (dir == root && !strcmp(de->d_name, STORE)) || !strcmp(de->d_name, ".pc-link"))
      continue;
    char dp[PATH_MAX], lp[PATH_MAX], sp[PATH_MAX];
    snprintf(dp, sizeof dp, "%s/%s", dpath, de->d_name);
    snprintf(lp, sizeof lp, "%s/%s", lpath, de->d_name);
    struct stat st, lst;
    if (lstat(dp, &st) == -1)
      die("cannot stat", dp);
    if (S_ISDIR(st.st_mode)) {
      if (mkdir(lp, st.st_mode & 07777) == -1 || lstat(lp, &lst) == -1)
        die("cannot create", lp);
      struct obj *o = obj_new(lst.st_ino, true);
      o->parent = dir;
      o->name = strdup(de->d_name);
      load_tree(dp, lp, o);
      continue;
    }
    struct seen *s = seen;
    while (s && s->dino != st.st_ino)
      s = s->next;
    if (s) { /* another name of a file already copied */
      if (link(s->lpath, lp) == -1)
        die("cannot link", lp);
      continue;
    }
    if (S_ISREG(st.st_mode)) {
      copy_file(dp, lp, &st);
    } else if (S_ISLNK(st.st_mode)) {
      char target[PATH_MAX];
      ssize_t n = readlink(dp, target, sizeof target - 1);
      if (n < 0)
        die("cannot read link", dp);
      target[n] = '\0';
      if (symlink(target, lp) == -1)
        die("cannot create", lp);
    } else {
      continue; /* sockets, fifos: not state */
    }
    if (lstat(lp, &lst) == -1)
      die("cannot stat", lp);
    struct obj *o = obj_new(lst.st_ino, false);
    store_path(sp, sizeof sp, o);
    if (link(dp, sp) == -1)
      die("cannot link", sp);
    s = calloc(1, sizeof *s);
    s->dino = st.st_ino;
    snprintf(s->lpath, sizeof s->lpath, "%s", lp);
    s->o = o;
    s->next = seen;
    seen = s;
  }
  closedir(d);
}

/* ---- FUSE operations ------------------------------------------------------- */

static const char *rel(const char *path)
{
  return path[1] ? path + 1 : ".";
}

/* Split PATH into its parent directory's object and its last component. */
static struct obj *parent_of(const char *path, const char **name)
{
  const char *slash = strrchr(path, '/');
  *name = slash + 1;
  char up[PATH_MAX];
  size_t n = (size_t)(slash - path);
  if (n == 0)
    snprintf(up, sizeof up, ".");
  else
    snprintf(up, sizeof up, "%.*s", (int)(n - 1), path + 1);
  struct stat st;
  if (fstatat(live_fd, up, &st, AT_SYMLINK_NOFOLLOW) == -1)
    return NULL;
  return obj_find(st.st_ino);
}

static struct obj *obj_of_fd(int fd)
{
  struct stat st;
  return fstat(fd, &st) == 0 ? obj_find(st.st_ino) : NULL;
}

static struct obj *obj_of_path(const char *path)
{
  struct stat st;
  return fstatat(live_fd, rel(path), &st, AT_SYMLINK_NOFOLLOW) == 0 ? obj_find(st.st_ino) : NULL;
}

#define ERR(x) ((x) == -1 ? -errno : 0)

static void *pc_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
  (void)conn;
  cfg->use_ino = 1;
  cfg->hard_remove = 1;
  cfg->nullpath_ok = 1;
  cfg->entry_timeout = cfg->attr_timeout = cfg->negative_timeout = 0;
  return NULL;
}

static int pc_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
  if (fi)
    return ERR(fstat((int)fi->fh, st));
  return ERR(fstatat(live_fd, rel(path), st, AT_SYMLINK_NOFOLLOW));
}

static int pc_readlink(const char *path, char *buf, size_t len)
{
  ssize_t n = readlinkat(live_fd, rel(path), buf, len - 1);
  if (n == -1)
    return -errno;
  buf[n] = '\0';
  return 0;
}

static int pc_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
                      struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
  (void)path, (void)off, (void)flags;
  int fd = dup((int)fi->fh);
  DIR *d = fd == -1 ? NULL : fdopendir(fd);
  if (!d) {
    int e = errno;
    if (fd != -1)
      close(fd);
    return -e;
  }
  rewinddir(d);
  struct dirent *de;
  while ((de = readdir(d)))
    if (fill(buf, de->d_name, NULL, 0, 0))
      break;
  closedir(d);
  return 0;
}

static int pc_mknod(const char *path, mode_t mode, dev_t rdev)
{
  (void)rdev;
  if (!S_ISFIFO(mode) && !S_ISSOCK(mode))
    return -EPERM;
  return ERR(mknodat(live_fd, rel(path), mode, 0)); /* not state: never durable */
}

static int pc_mkdir(const char *path, mode_t mode)
{
  pthread_mutex_lock(&lock);
  const char *name;
  struct obj *dir = parent_of(path, &name);
  struct stat st;
  int r = ERR(mkdirat(live_fd, rel(path), mode));
  if (r == 0 && fstatat(live_fd, rel(path), &st, AT_SYMLINK_NOFOLLOW) == 0) {
    struct obj *o = obj_new(st.st_ino, true);
    o->staged = true;
    char sp[PATH_MAX];
    store_path(sp, sizeof sp, o);
    mkdir(sp, mode & 07777);
    entry(dir, name, o, false, false);
  }
  pthread_mutex_unlock(&lock);
  return r;
}

static int remove_common(const char *path, bool is_dir)
{
  pthread_mutex_lock(&lock);
  const char *name;
  struct obj *dir = parent_of(path, &name);
  struct obj *o = obj_of_path(path);
  int r =
      ERR(is_dir ? unlinkat(live_fd, rel(path), AT_REMOVEDIR) : unlinkat(live_fd, rel(path), 0));
  if (r == 0 && o)
    entry(dir, name, o, true, is_dir);
  pthread_mutex_unlock(&lock);
  return r;
}

static int pc_unlink(const char *path)
{
  return remove_common(path, false);
}

static int pc_rmdir(const char *path)
{
  return remove_common(path, true);
}

/* A new file (regular or symlink) at PATH: its durable inode, empty. */
static void new_file(const char *path, struct stat *st)
{
  const char *name;
  struct obj *dir = parent_of(path, &name);
  struct obj *o = obj_new(st->st_ino, false);
  char sp[PATH_MAX];
  store_path(sp, sizeof sp, o);
  if (S_ISLNK(st->st_mode)) {
    char target[PATH_MAX];
    ssize_t n = readlinkat(live_fd, rel(path), target, sizeof target - 1);
    if (n >= 0) {
      target[n] = '\0';
      if (symlink(target, sp) == -1)
        die("cannot create", sp);
    }
  } else {
    int fd = open(sp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, st->st_mode & 07777);
    if (fd == -1)
      die("cannot create", sp);
    close(fd);
    if (st->st_size > 0) { /* cannot happen for a create; be exact anyway */
      o->size_dirty = true;
      mark_dirty(o, 0, (uint64_t)st->st_size);
    }
  }
  entry(dir, name, o, false, false);
}

static int pc_symlink(const char *target, const char *path)
{
  pthread_mutex_lock(&lock);
  struct stat st;
  int r = ERR(symlinkat(target, live_fd, rel(path)));
  if (r == 0 && fstatat(live_fd, rel(path), &st, AT_SYMLINK_NOFOLLOW) == 0)
    new_file(path, &st);
  pthread_mutex_unlock(&lock);
  return r;
}

static int pc_rename(const char *from, const char *to, unsigned int flags)
{
  if (flags & ~RENAME_NOREPLACE)
    return -EINVAL;
  pthread_mutex_lock(&lock);
  const char *fname, *tname;
  struct obj *fdir = parent_of(from, &fname), *tdir = parent_of(to, &tname);
  struct obj *o = obj_of_path(from);
  int r = ERR(renameat2(live_fd, rel(from), live_fd, rel(to), flags));
  if (r == 0 && o) {
    if (o->dir) { /* the new name first: a directory has one place on the disk */
      entry(tdir, tname, o, false, false);
      entry(fdir, fname, o, true, false);
    } else {
      entry(fdir, fname, o, true, false);
      entry(tdir, tname, o, false, false);
    }
  }
  pthread_mutex_unlock(&lock);
  return r;
}

static int pc_link(const char *from, const char *to)
{
  pthread_mutex_lock(&lock);
  const char *tname;
  struct obj *tdir = parent_of(to, &tname);
  struct obj *o = obj_of_path(from);
  int r = ERR(linkat(live_fd, rel(from), live_fd, rel(to), 0));
  if (r == 0 && o)
    entry(tdir, tname, o, false, false);
  pthread_mutex_unlock(&lock);
  return r;
}

static int pc_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
  pthread_mutex_lock(&lock);
  int r = fi ? ERR(fchmod((int)fi->fh, mode)) : ERR(fchmodat(live_fd, rel(path), mode, 0));
  struct obj *o = fi ? obj_of_fd((int)fi->fh) : obj_of_path(path);
  if (r == 0 && o && !o->dir)
    o->size_dirty = true; /* modes are synced with the data */
  pthread_mutex_unlock(&lock);
  return r;
}

static int pc_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
  if (fi)
    return ERR(fchown((int)fi->fh, uid, gid));
  return ERR(fchownat(live_fd, rel(path), uid, gid, AT_SYMLINK_NOFOLLOW));
}

static void note_resize(struct obj *o, uint64_t old_size, uint64_t new_size)
{
  o->size_dirty = true;
  mark_dirty(o, old_size < new_size ? old_size : new_size,
             old_size < new_size ? new_size : old_size);
}

static int pc_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
  int fd = fi ? (int)fi->fh : openat(live_fd, rel(path), O_WRONLY | O_CLOEXEC);
  if (fd == -1)
    return -errno;
  pthread_mutex_lock(&lock);
  struct stat st;
  int r = fstat(fd, &st) == -1 ? -errno : ERR(ftruncate(fd, size));
  struct obj *o = obj_find(st.st_ino);
  if (r == 0 && o)
    note_resize(o, (uint64_t)st.st_size, (uint64_t)size);
  pthread_mutex_unlock(&lock);
  if (!fi)
    close(fd);
  return r;
}

static int pc_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
  if (fi)
    return ERR(futimens((int)fi->fh, tv));
  return ERR(utimensat(live_fd, rel(path), tv, AT_SYMLINK_NOFOLLOW));
}

static int pc_open(const char *path, struct fuse_file_info *fi)
{
  pthread_mutex_lock(&lock);
  struct stat st;
  bool had = fstatat(live_fd, rel(path), &st, 0) == 0;
  int fd = openat(live_fd, rel(path), fi->flags | O_CLOEXEC);
  int r = fd == -1 ? -errno : 0;
  if (r == 0 && had && (fi->flags & O_TRUNC) && st.st_size > 0) {
    struct obj *o = obj_find(st.st_ino);
    if (o)
      note_resize(o, (uint64_t)st.st_size, 0);
  }
  pthread_mutex_unlock(&lock);
  fi->fh = (uint64_t)fd;
  return r;
}

static int pc_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
  pthread_mutex_lock(&lock);
  struct stat st;
  bool had = fstatat(live_fd, rel(path), &st, 0) == 0;
  int fd = openat(live_fd, rel(path), fi->flags | O_CREAT | O_CLOEXEC, mode);
  int r = fd == -1 ? -errno : 0;
  if (r == 0 && fstat(fd, &st) == 0) {
    if (!had)
      new_file(path, &st);
  }
  pthread_mutex_unlock(&lock);
  fi->fh = (uint64_t)fd;
  return r;
}

static int pc_read(const char *path, char *buf, size_t len, off_t off, struct fuse_file_info *fi)
{
  (void)path;
  ssize_t n = pread((int)fi->fh, buf, len, off);
  return n == -1 ? -errno : (int)n;
}

static int pc_write(const char *path, const char *buf, size_t len, off_t off,
                    struct fuse_file_info *fi)
{
  (void)path;
  /* Under the lock with its marking: a sync between the write and the mark
   * would make the new size durable with a hole where these bytes are, and
   * report the data durable to a caller that already read it. */
  pthread_mutex_lock(&lock);
  ssize_t n = pwrite((int)fi->fh, buf, len, off);
  int e = errno;
  struct stat st;
  if (n > 0 && (fi->flags & O_APPEND) && fstat((int)fi->fh, &st) == 0)
    off = st.st_size - n; /* pwrite appends there, whatever OFF says */
  struct obj *o = n > 0 ? obj_of_fd((int)fi->fh) : NULL;
  if (o) {
    mark_dirty(o, (uint64_t)off, (uint64_t)off + (uint64_t)n);
    o->size_dirty = true;
  }
  pthread_mutex_unlock(&lock);
  return n == -1 ? -e : (int)n;
}

static int pc_statfs(const char *path, struct statvfs *st)
{
  (void)path;
  return ERR(fstatvfs(live_fd, st));
}

static int pc_release(const char *path, struct fuse_file_info *fi)
{
  (void)path;
  close((int)fi->fh);
  return 0;
}

static int pc_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
  pthread_mutex_lock(&lock);
  (void)path;
  count_sync(datasync ? "fdatasync" : "fsync", (int)fi->fh);
  struct obj *o = obj_of_fd((int)fi->fh);
  int r = o ? sync_file(o, (int)fi->fh) : 0;
  pthread_mutex_unlock(&lock);
  return r;
}

static int pc_opendir(const char *path, struct fuse_file_info *fi)
{
  int fd = openat(live_fd, rel(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  fi->fh = (uint64_t)fd;
  return fd == -1 ? -errno : 0;
}

static int pc_releasedir(const char *path, struct fuse_file_info *fi)
{
  (void)path;
  close((int)fi->fh);
  return 0;
}

static int pc_fsyncdir(const char *path, int datasync, struct fuse_file_info *fi)
{
  (void)datasync;
  pthread_mutex_lock(&lock);
  (void)path;
  count_sync("fsyncdir", (int)fi->fh);
  struct obj *o = obj_of_fd((int)fi->fh);
  if (o)
    sync_dir(o);
  pthread_mutex_unlock(&lock);
  return 0;
}

static int pc_access(const char *path, int mask)
{
  return ERR(faccessat(live_fd, rel(path), mask, 0));
}

static int pc_fallocate(const char *path, int mode, off_t off, off_t len, struct fuse_file_info *fi)
{
  (void)path;
  pthread_mutex_lock(&lock);
  struct stat st;
  int r = fstat((int)fi->fh, &st) == -1 ? -errno : ERR(fallocate((int)fi->fh, mode, off, len));
  struct obj *o = obj_find(st.st_ino);
  if (r == 0 && o) {
    mark_dirty(o, (uint64_t)off, (uint64_t)(off + len));
    if (!(mode & FALLOC_FL_KEEP_SIZE) && (uint64_t)(off + len) > (uint64_t)st.st_size)
      o->size_dirty = true;
  }
  pthread_mutex_unlock(&lock);
  return r;
}

static ssize_t pc_copy_file_range(const char *pin, struct fuse_file_info *fin, off_t oin,
                                  const char *pout, struct fuse_file_info *fout, off_t oout,
                                  size_t len, int flags)
{
  (void)pin, (void)pout;
  pthread_mutex_lock(&lock); /* with its marking, as pc_write */
  ssize_t n = copy_file_range((int)fin->fh, &oin, (int)fout->fh, &oout, len, (unsigned)flags);
  if (n == -1) {
    int e = errno;
    pthread_mutex_unlock(&lock);
    return -e;
  }
  struct obj *o = obj_of_fd((int)fout->fh);
  if (o) {
    mark_dirty(o, (uint64_t)(oout - n), (uint64_t)oout);
    o->size_dirty = true;
  }
  pthread_mutex_unlock(&lock);
  return n;
}

static off_t pc_lseek(const char *path, off_t off, int whence, struct fuse_file_info *fi)
{
  (void)path;
  off_t r = lseek((int)fi->fh, off, whence);
  return r == -1 ? -errno : r;
}

static const struct fuse_operations ops = {
    .init = pc_init,
    .getattr = pc_getattr,
    .readlink = pc_readlink,
    .readdir = pc_readdir,
    .mknod = pc_mknod,
    .mkdir = pc_mkdir,
    .unlink = pc_unlink,
    .rmdir = pc_rmdir,
    .symlink = pc_symlink,
    .rename = pc_rename,
    .link = pc_link,
    .chmod = pc_chmod,
    .chown = pc_chown,
    .truncate = pc_truncate,
    .utimens = pc_utimens,
    .open = pc_open,
    .create = pc_create,
    .read = pc_read,
    .write = pc_write,
    .statfs = pc_statfs,
    .release = pc_release,
    .fsync = pc_fsync,
    .opendir = pc_opendir,
    .releasedir = pc_releasedir,
    .fsyncdir = pc_fsyncdir,
    .access = pc_access,
    .fallocate = pc_fallocate,
    .copy_file_range = pc_copy_file_range,
    .lseek = pc_lseek,
};

static void on_cut(int sig)
{
  (void)sig;
  _exit(0); /* the power goes: nothing pending is written */
}

static void on_arm(int sig)
{
  (void)sig;
  cut_next = 1;
}

int main(int argc, char **argv)
{
  int a = 1;
  for (; a < argc && argv[a][0] == '-'; a++) {
    if (!strcmp(argv[a], "--strict"))
      strict = true;
    else if (!strcmp(argv[a], "--cut-at") && a + 1 < argc)
      cut_at = atol(argv[++a]);
    else
      break;
  }
  if (argc - a != 2) {
    fprintf(stderr, "usage: powercut [--strict] [--cut-at N] STATE MOUNTPOINT\n"
                    "  STATE/disk is the disk (created empty if missing); kill -9 or SIGUSR1 "
                    "is a power cut\n"
                    "  --cut-at N: the cut comes at the Nth fsync, fdatasync or fsyncdir, before "
                    "it is done\n"
                    "  (STATE/syncs.log lists them, one a line)\n");
    return 1;
  }
  const char *mnt = argv[a + 1];
  char state[PATH_MAX], store[PATH_MAX];
  mkdir(argv[a], 0755);
  if (!realpath(argv[a], state))
    die("cannot find", argv[a]);
  snprintf(disk_dir, sizeof disk_dir, "%s/disk", state);
  snprintf(arm_file, sizeof arm_file, "%s/arm-path", state);
  snprintf(live_dir, sizeof live_dir, "%s/live", state);
  snprintf(store, sizeof store, "%s/" STORE, disk_dir);
  mkdir(disk_dir, 0755);
  /* What a cut left: unnamed inodes and directories are lost, as after fsck. */
  rm_rf(store);
  rm_rf(live_dir);
  char stray[PATH_MAX];
  snprintf(stray, sizeof stray, "%s/.pc-link", disk_dir);
  unlink(stray);
  if (mkdir(store, 0700) == -1)
    die("cannot create", store);
  if (mkdir(live_dir, 0755) == -1)
    die("cannot create", live_dir);
  struct stat st;
  if (stat(live_dir, &st) == -1)
    die("cannot stat", live_dir);
  root = obj_new(st.st_ino, true);
  load_tree(disk_dir, live_dir, root);
  char logp[PATH_MAX];
  snprintf(logp, sizeof logp, "%s/syncs.log", state);
  sync_log = open(logp, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
  if (sync_log == -1)
    die("cannot create", logp);
  live_fd = open(live_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (live_fd == -1)
    die("cannot open", live_dir);

  struct sigaction sa = {.sa_handler = on_cut};
  sigaction(SIGUSR1, &sa, NULL);
  struct sigaction arm = {.sa_handler = on_arm};
  sigaction(SIGUSR2, &arm, NULL);

  char *fargv[] = {argv[0],     "-f",
                   "-o",        "auto_unmount,max_threads=16,fsname=powercut,subtype=powercut",
                   (char *)mnt, NULL};
  return fuse_main(5, fargv, &ops, NULL);
}
