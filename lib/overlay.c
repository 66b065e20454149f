/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: the overlay engine.
 *
 * An overlay holds one client's dirty blocks on top of one exact base version.
 * It is a single sparse file:
 *
 *   0            header (4 KiB): magic, format, geometry, base identity, session,
 *                a sha256 of the header.  Written once at creation, never again.
 *   map_offset   the block map, 2 bits a block (CLEAN, DATA, ZERO), 4 KiB pages;
 *                format 2 ends each page with a 32-byte trailer (magic, page
 *                index, truncated sha256), set when flush writes the page and
 *                checked when the map is loaded: a flipped entry is refused, not
 *                served.  Format 1 (no trailers, 16384 blocks a page) is still read.
 *   data_offset  the data region: block b lives at data_offset + b * block_size.
 *
 * Because a block's data has a fixed home, a read is a map lookup and a pread,
 * runs of blocks in one state are one pread, and the file's disk use is the
 * DATA blocks only (the rest are holes).  ZERO blocks (written zeros, trims)
 * have their data punched out.
 *
 * In memory the map is sparse: an array of pointers to 4 KiB pages, a page
 * allocated the first time one of its 16384 blocks leaves CLEAN.  An idle
 * client on a 64 GiB image costs the pointer array (8 KiB) and nothing more.
 *
 * Durability (the NBD contract): data is written in place, the map entry is
 * set in memory, and the page is marked dirty.  flush() snapshots the dirty
 * pages, fdatasyncs the data, then writes the snapshot and fdatasyncs again.
 * So the map on disk never claims data that is not durable, and after any
 * crash every block reads as its old content or its new content:
 *   CLEAN->DATA  unflushed: the disk map still says CLEAN (old content);
 *   DATA->ZERO   the hole is punched before the map says ZERO: reads zeros (new);
 *   ZERO->DATA   the disk map says ZERO until the data is durable (old).
 * The header is never rewritten, so it cannot be torn.  An overlay is created
 * under a temporary name, fsynced, then linked into place (a cut never leaves
 * a headerless file at the final path), and a DATA block past the end of the
 * file (a truncated copy) is refused at open: past EOF a pread reads zeros.
 * A map page is one aligned 4 KiB write; a disk that tears such a write (512-
 * byte sectors losing power mid-write) makes the page fail its checksum and the
 * overlay is refused rather than served with a torn map.
 *
 * Concurrency: any number of threads.  Writes to a block hold its stripe lock
 * (stripes are taken in ascending order, so multi-block requests cannot
 * deadlock and overlapping writes serialise), and a shared "writer" lock that
 * flush takes exclusively for the instant of its snapshot: every map entry in a
 * snapshot belongs to a write whose data pwrite had finished.  Map entries are
 * updated with compare-and-swap because four blocks share a byte.  Reads take
 * no lock: a read racing a write of the same block sees old or new data.
 * Unaligned writes do read-modify-write of their edge blocks under the stripe
 * lock.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/sha.h>

#include "cleanup.h"
#include "overlay.h"
#include "vector.h"

#define MAGIC "TABULAOV"
#define FORMAT_VERSION 2 /* what is created; format 1 (no map checksums) is still read */
#define PAGE_BYTES 4096
#define PAGE_TRAILER 32 /* format 2: each map page ends with its checksum */
#define PAGE_MAGIC "TBMP"
#define NSTRIPES 256
#define DATA_ALIGN (1024 * 1024)

struct tb_overlay {
  int fd;      /* the overlay file */
  int base_fd; /* the base version's raw image */
  bool rdonly;
  char *path; /* heap: a session costs memory as long as it runs */
  struct tb_overlay_info info;
  uint64_t nblocks;
  uint64_t bpp; /* blocks a map page holds (by format) */
  uint64_t file_size;
  uint32_t block_shift;
  uint64_t map_offset, data_offset;

  /* The sparse in-memory map. */
  uint8_t **pages;
  uint8_t *page_dirty; /* written since the last flush snapshot */
  uint64_t npages;
  pthread_mutex_t page_alloc_lock;

  uint64_t dirty_blocks, data_blocks; /* atomics */
  uint64_t quota_blocks;              /* 0 = no quota */
  bool deny_new_blocks;               /* the appliance is low on space */

  pthread_mutex_t stripes[NSTRIPES];
  pthread_rwlock_t writers; /* shared by writers, exclusive for the flush snapshot */
  pthread_mutex_t flush_lock;

  struct tb_overlay_stats stats; /* atomics */
};

/* ---- on-disk header ------------------------------------------------------- */

/* Header field offsets (little-endian). */
enum {
  H_MAGIC = 0,       /* 8 */
  H_FORMAT = 8,      /* u32 */
  H_BLOCK_SIZE = 12, /* u32 */
  H_SIZE = 16,       /* u64 */
  H_SESSION = 24,    /* u64 */
  H_CREATED = 32,    /* i64 */
  H_MAP_OFF = 40,    /* u64 */
  H_DATA_OFF = 48,   /* u64 */
  H_VERSION = 56,    /* u32 */
  H_IMAGE = 64,      /* 65 bytes, NUL-padded */
  H_MANIFEST = 136,  /* 32 bytes */
  H_END = 168,
  H_CHECKSUM = 4064, /* 32 bytes: sha256 of bytes [0, 4064) */
};

/* Blocks a map page holds: format 2 keeps the last PAGE_TRAILER bytes for the
 * page's checksum. */
static uint64_t blocks_per_page(uint32_t format)
{
  return format == 1 ? PAGE_BYTES * 4 : (PAGE_BYTES - PAGE_TRAILER) * 4;
}

static uint64_t map_bytes_for(uint64_t nblocks, uint32_t format)
{
  uint64_t bpp = blocks_per_page(format);
  return (nblocks + bpp - 1) / bpp * PAGE_BYTES;
}

/* Format 2's map page trailer: magic, the page's index (a page written to the
 * wrong place fails too), the first 20 bytes of the sha256 of both.  Computed
 * when flush writes the page, checked when the map is loaded. */
static void page_sum(const uint8_t *page, uint64_t index, uint8_t *sum)
{
  uint8_t buf[PAGE_BYTES - PAGE_TRAILER + 8], full[32];
  memcpy(buf, page, PAGE_BYTES - PAGE_TRAILER);
  tb_put_le64(buf + (PAGE_BYTES - PAGE_TRAILER), index); /* not buf + PAGE_BYTES: past the array */
  SHA256(buf, sizeof buf, full);
  memcpy(sum, full, 20);
}

static void page_seal(uint8_t *page, uint64_t index)
{
  uint8_t *t = page + PAGE_BYTES - PAGE_TRAILER;
  memcpy(t, PAGE_MAGIC, 4);
  tb_put_le64(t + 4, index);
  page_sum(page, index, t + 12);
}

static bool page_sealed(const uint8_t *page, uint64_t index)
{
  const uint8_t *t = page + PAGE_BYTES - PAGE_TRAILER;
  uint8_t sum[20];
  if (memcmp(t, PAGE_MAGIC, 4) != 0 || tb_get_le64(t + 4) != index)
    return false;
  page_sum(page, index, sum);
  return memcmp(sum, t + 12, 20) == 0;
}

static void encode_header(uint8_t *h, const struct tb_overlay_info *info, uint64_t map_off,
                          uint64_t data_off)
{
  memset(h, 0, TB_OVERLAY_HEADER_SIZE);
  memcpy(h + H_MAGIC, MAGIC, 8);
  tb_put_le32(h + H_FORMAT, FORMAT_VERSION);
  tb_put_le32(h + H_BLOCK_SIZE, info->block_size);
  tb_put_le64(h + H_SIZE, info->size);
  tb_put_le64(h + H_SESSION, info->session);
  tb_put_le64(h + H_CREATED, (uint64_t)info->created_ms);
  tb_put_le64(h + H_MAP_OFF, map_off);
  tb_put_le64(h + H_DATA_OFF, data_off);
  tb_put_le32(h + H_VERSION, info->base.version);
  memcpy(h + H_IMAGE, info->base.image, strnlen(info->base.image, TB_NAME_MAX));
  memcpy(h + H_MANIFEST, info->base.manifest_sha256, 32);
  SHA256(h, H_CHECKSUM, h + H_CHECKSUM);
}

/* Decode and validate a header; PATH and FILE_SIZE are for messages and checks. */
static int decode_header(const uint8_t *h, const char *path, uint64_t file_size,
                         struct tb_overlay_info *info, uint64_t *map_off, uint64_t *data_off)
{
  if (memcmp(h + H_MAGIC, MAGIC, 8) != 0)
    return tb_error("%s is not a tabula overlay (bad magic); move it aside or roll the "
                    "client back",
                    path);
  uint8_t sum[32];
  SHA256(h, H_CHECKSUM, sum);
  if (memcmp(sum, h + H_CHECKSUM, 32) != 0)
    return tb_error("%s: overlay header is corrupt (checksum mismatch); move it aside or "
                    "roll the client back",
                    path);
  memset(info, 0, sizeof *info);
  info->format_version = tb_get_le32(h + H_FORMAT);
  if (info->format_version != 1 && info->format_version != FORMAT_VERSION)
    return tb_error("%s: overlay format %u is not supported (this tabula reads format %d)", path,
                    info->format_version, FORMAT_VERSION);
  info->block_size = tb_get_le32(h + H_BLOCK_SIZE);
  info->size = tb_get_le64(h + H_SIZE);
  info->session = tb_get_le64(h + H_SESSION);
  info->created_ms = (int64_t)tb_get_le64(h + H_CREATED);
  info->base.version = tb_get_le32(h + H_VERSION);
  memcpy(info->base.image, h + H_IMAGE, TB_NAME_MAX);
  info->base.image[TB_NAME_MAX] = '\0';
  memcpy(info->base.manifest_sha256, h + H_MANIFEST, 32);
  *map_off = tb_get_le64(h + H_MAP_OFF);
  *data_off = tb_get_le64(h + H_DATA_OFF);

  uint64_t bs = info->block_size;
  if (!tb_is_pow2(bs) || bs < TB_MIN_BLOCK_SIZE || bs > TB_MAX_BLOCK_SIZE || info->size == 0 ||
      info->size > (UINT64_C(1) << 60) || !tb_name_valid(info->base.image))
    return tb_error("%s: overlay header has impossible values; move it aside", path);
  uint64_t nblocks = (info->size + bs - 1) / bs;
  if (*map_off < TB_OVERLAY_HEADER_SIZE ||
      *data_off < *map_off + map_bytes_for(nblocks, info->format_version) || *data_off % bs != 0)
    return tb_error("%s: overlay header has an impossible layout; move it aside", path);
  if (file_size < *data_off)
    return tb_error("%s: overlay file is truncated (%llu bytes, its map alone needs %llu); "
                    "move it aside or roll the client back",
                    path, (unsigned long long)file_size, (unsigned long long)*data_off);
  return 0;
}

static bool base_equal(const struct tb_base_id *a, const struct tb_base_id *b)
{
  return strcmp(a->image, b->image) == 0 && a->version == b->version &&
         memcmp(a->manifest_sha256, b->manifest_sha256, 32) == 0;
}

/* ---- creation and opening ------------------------------------------------ */

int tb_overlay_create(const char *path, uint64_t size, uint32_t block_size,
                      const struct tb_base_id *base, uint64_t session)
{
  if (!tb_is_pow2(block_size) || block_size < TB_MIN_BLOCK_SIZE || block_size > TB_MAX_BLOCK_SIZE)
    return tb_error("block size %u is not a power of two between %u and %u", block_size,
                    TB_MIN_BLOCK_SIZE, TB_MAX_BLOCK_SIZE);
  if (size == 0)
    return tb_error("cannot create an overlay of an empty image");
  struct tb_overlay_info info = {.block_size = block_size,
                                 .size = size,
                                 .session = session,
                                 .created_ms = tb_now_ms(),
                                 .base = *base};
  uint64_t nblocks = (size + block_size - 1) / block_size;
  uint64_t map_off = TB_OVERLAY_HEADER_SIZE;
  uint64_t data_off =
      (map_off + map_bytes_for(nblocks, FORMAT_VERSION) + DATA_ALIGN - 1) / DATA_ALIGN * DATA_ALIGN;
  CLEANUP_FREE uint8_t *h = calloc(1, TB_OVERLAY_HEADER_SIZE);
  if (!h)
    return tb_error_errno("creating overlay %s", path);
  encode_header(h, &info, map_off, data_off);

  /* Built under a temporary name and linked into place once durable: a cut
   * can never leave PATH empty or headerless (on ext4 the create of PATH may
   * reach the disk with another file's fsync, long before its header). */
  char tmp[TB_PATH_MAX];
  if (tb_path(tmp, sizeof tmp, "%s.tmp.XXXXXX", path) == -1)
    return -1;
  CLEANUP_CLOSE int fd = mkostemp(tmp, O_CLOEXEC);
  if (fd == -1)
    return tb_error_errno("cannot create overlay %s", tmp);
  if (tb_pwrite_full(fd, h, TB_OVERLAY_HEADER_SIZE, 0) == -1 ||
      ftruncate(fd, (off_t)(data_off + nblocks * block_size)) == -1 || fsync(fd) == -1) {
    tb_error_errno("cannot write overlay %s", tmp);
    unlink(tmp);
    return -1;
  }
  close(fd);
  fd = -1;
  if (link(tmp, path) == -1) { /* never replaces: PATH must not exist */
    tb_error_errno("cannot create overlay %s", path);
    unlink(tmp);
    return -1;
  }
  unlink(tmp);
  return tb_fsync_dir(path);
}

int tb_overlay_read_info(const char *path, struct tb_overlay_info *info)
{
  CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd == -1)
    return tb_error_errno("cannot open overlay %s", path);
  CLEANUP_FREE uint8_t *h = calloc(1, TB_OVERLAY_HEADER_SIZE);
  if (!h)
    return tb_error_errno("reading %s", path);
  struct stat st;
  if (fstat(fd, &st) == -1)
    return tb_error_errno("cannot stat %s", path);
  if ((uint64_t)st.st_size < TB_OVERLAY_HEADER_SIZE)
    return tb_error("%s: overlay file is truncated (%lld bytes, shorter than its header); move it "
                    "aside or roll the client back",
                    path, (long long)st.st_size);
  if (tb_pread_full(fd, h, TB_OVERLAY_HEADER_SIZE, 0) == -1)
    return tb_error_errno("cannot read %s", path);
  uint64_t map_off, data_off;
  return decode_header(h, path, (uint64_t)st.st_size, info, &map_off, &data_off);
}

/* A page index past the map reads as no page (CLEAN): the request checks
 * above keep callers inside, this keeps a bug from reading past the array. */
static uint8_t *page_get(struct tb_overlay *o, uint64_t pi)
{
  if (pi >= o->npages)
    return NULL;
  return __atomic_load_n(&o->pages[pi], __ATOMIC_ACQUIRE);
}

static uint8_t *page_get_or_alloc(struct tb_overlay *o, uint64_t pi)
{
  uint8_t *p = page_get(o, pi);
  if (p)
    return p;
  if (pi >= o->npages)
    return NULL;
  pthread_mutex_lock(&o->page_alloc_lock);
  p = o->pages[pi];
  if (!p) {
    p = calloc(1, PAGE_BYTES);
    if (p)
      __atomic_store_n(&o->pages[pi], p, __ATOMIC_RELEASE);
  }
  pthread_mutex_unlock(&o->page_alloc_lock);
  return p;
}

/* Count page PI's dirty and DATA blocks; *LAST_DATA: its last DATA block + 1. */
static int count_page(const struct tb_overlay *o, const uint8_t *page, uint64_t pi, uint64_t *dirty,
                      uint64_t *data, uint64_t *last_data)
{
  for (size_t i = 0; i < o->bpp / 4; i++) {
    uint8_t v = page[i];
    for (int k = 0; k < 4; k++, v >>= 2) {
      switch (v & 3) {
      case TB_DATA:
        (*data)++;
        (*dirty)++;
        *last_data = pi * o->bpp + i * 4 + (uint64_t)k + 1;
        break;
      case TB_ZERO:
        (*dirty)++;
        break;
      case 3:
        return -1;
      }
    }
  }
  return 0;
}

/* Load the on-disk map, allocating memory only for pages that are not all CLEAN.
 * Holes in the map region (never-written pages) are skipped with SEEK_DATA. */
static int load_map(struct tb_overlay *o)
{
  uint8_t buf[PAGE_BYTES];
  uint64_t map_end = o->map_offset + o->npages * PAGE_BYTES, last_data = 0;
  uint64_t off = o->map_offset;
  while (off < map_end) {
    off_t d = lseek(o->fd, (off_t)off, SEEK_DATA);
    if (d == -1 && errno == ENXIO)
      break;
    if (d == -1) /* SEEK_DATA unsupported: read every page */
      d = (off_t)off;
    if ((uint64_t)d >= map_end)
      break;
    uint64_t pi = ((uint64_t)d - o->map_offset) / PAGE_BYTES;
    if (tb_pread_full(o->fd, buf, PAGE_BYTES, o->map_offset + pi * PAGE_BYTES) == -1)
      return tb_error_errno("cannot read the block map of %s", o->path);
    off = o->map_offset + (pi + 1) * PAGE_BYTES;
    static const uint8_t zero[PAGE_BYTES];
    if (memcmp(buf, zero, PAGE_BYTES) == 0)
      continue;
    if (o->info.format_version >= 2 && !page_sealed(buf, pi))
      return tb_error("%s: block map page %llu is corrupt (checksum mismatch); move the "
                      "overlay aside (tabulactl quarantine) or roll the client back",
                      o->path, (unsigned long long)pi);
    if (count_page(o, buf, pi, &o->dirty_blocks, &o->data_blocks, &last_data) == -1)
      return tb_error("%s: block map page %llu is corrupt; move the overlay aside", o->path,
                      (unsigned long long)pi);
    o->pages[pi] = malloc(PAGE_BYTES);
    if (!o->pages[pi])
      return tb_error_errno("loading the block map of %s", o->path);
    memcpy(o->pages[pi], buf, PAGE_BYTES);
    if (o->info.format_version >= 2)
      memset(o->pages[pi] + PAGE_BYTES - PAGE_TRAILER, 0, PAGE_TRAILER);
  }
  /* pread past the end reads zeros: a truncated file would serve them silently. */
  uint64_t need = last_data ? o->data_offset + (last_data << o->block_shift) : 0;
  if (need > o->data_offset + o->info.size)
    need = o->data_offset + o->info.size;
  if (need > o->file_size)
    return tb_error("%s: overlay file is truncated (%llu bytes) but its map has data up to "
                    "byte %llu; move it aside (tabulactl quarantine) or roll the client back",
                    o->path, (unsigned long long)o->file_size, (unsigned long long)need);
  return 0;
}

static void overlay_free(struct tb_overlay *o)
{
  if (!o)
    return;
  if (o->pages)
    for (uint64_t i = 0; i < o->npages; i++)
      free(o->pages[i]);
  free(o->pages);
  free(o->page_dirty);
  if (o->fd >= 0)
    close(o->fd);
  if (o->base_fd >= 0)
    close(o->base_fd);
  for (int i = 0; i < NSTRIPES; i++)
    pthread_mutex_destroy(&o->stripes[i]);
  pthread_rwlock_destroy(&o->writers);
  pthread_mutex_destroy(&o->flush_lock);
  pthread_mutex_destroy(&o->page_alloc_lock);
  free(o->path);
  free(o);
}

static void overlay_freep(struct tb_overlay **o)
{
  overlay_free(*o);
}
/* An overlay being opened is freed on every failure. */
#define CLEANUP_OVERLAY_FREE __attribute__((cleanup(overlay_freep)))

struct tb_overlay *tb_overlay_open(const char *path, const char *base_path,
                                   const struct tb_base_id *expect, int flags)
{
  CLEANUP_OVERLAY_FREE struct tb_overlay *o = calloc(1, sizeof *o);
  if (!o) {
    tb_error_errno("opening overlay %s", path);
    return NULL;
  }
  o->fd = o->base_fd = -1;
  o->rdonly = flags & TB_OVL_RDONLY;
  for (int i = 0; i < NSTRIPES; i++)
    pthread_mutex_init(&o->stripes[i], NULL);
  pthread_rwlock_init(&o->writers, NULL);
  pthread_mutex_init(&o->flush_lock, NULL);
  pthread_mutex_init(&o->page_alloc_lock, NULL);
  if (!(o->path = strdup(path))) {
    tb_error_errno("opening overlay %s", path);
    return NULL;
  }

  if (tb_overlay_read_info(path, &o->info) == -1)
    return NULL;
  if (expect && !base_equal(&o->info.base, expect)) {
    tb_error("%s: overlay was built on %s@%u but the client's base is %s@%u%s; refusing to "
             "serve it (roll the client back, or restore the version it was built on)",
             path, o->info.base.image, o->info.base.version, expect->image, expect->version,
             strcmp(o->info.base.image, expect->image) == 0 &&
                     o->info.base.version == expect->version
                 ? " with a different manifest"
                 : "");
    return NULL;
  }
  o->fd = open(path, (o->rdonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
  if (o->fd == -1) {
    tb_error_errno("cannot open overlay %s", path);
    return NULL;
  }
  /* Re-read the header from the fd we keep, so the file cannot change between. */
  CLEANUP_FREE uint8_t *h = malloc(TB_OVERLAY_HEADER_SIZE);
  struct stat st;
  if (!h || fstat(o->fd, &st) == -1 || tb_pread_full(o->fd, h, TB_OVERLAY_HEADER_SIZE, 0) == -1) {
    tb_error_errno("cannot read overlay %s", path);
    return NULL;
  }
  o->file_size = (uint64_t)st.st_size;
  if (decode_header(h, path, (uint64_t)st.st_size, &o->info, &o->map_offset, &o->data_offset) == -1)
    return NULL;

  o->base_fd = open(base_path, O_RDONLY | O_CLOEXEC);
  if (o->base_fd == -1) {
    tb_error_errno("cannot open base image %s", base_path);
    return NULL;
  }
  if (fstat(o->base_fd, &st) == -1 || (uint64_t)st.st_size != o->info.size) {
    tb_error("%s: base image %s is %lld bytes but the overlay was made for %llu", path, base_path,
             (long long)st.st_size, (unsigned long long)o->info.size);
    return NULL;
  }

  o->block_shift = (uint32_t)__builtin_ctz(o->info.block_size);
  o->nblocks = (o->info.size + o->info.block_size - 1) >> o->block_shift;
  o->bpp = blocks_per_page(o->info.format_version);
  o->npages = (o->nblocks + o->bpp - 1) / o->bpp;
  o->pages = calloc(o->npages, sizeof *o->pages);
  o->page_dirty = calloc(o->npages, 1);
  if (!o->pages || !o->page_dirty) {
    tb_error_errno("opening overlay %s", path);
    return NULL;
  }
  if (load_map(o) == -1)
    return NULL;
  struct tb_overlay *ret = o;
  o = NULL;
  return ret;
}

int tb_overlay_close(struct tb_overlay *o)
{
  if (!o)
    return 0;
  int r = o->rdonly ? 0 : tb_overlay_flush(o);
  overlay_free(o);
  return r;
}

void tb_overlay_info(struct tb_overlay *o, struct tb_overlay_info *info)
{
  *info = o->info;
  info->dirty_blocks = __atomic_load_n(&o->dirty_blocks, __ATOMIC_RELAXED);
  info->data_blocks = __atomic_load_n(&o->data_blocks, __ATOMIC_RELAXED);
}

uint64_t tb_overlay_size(const struct tb_overlay *o)
{
  return o->info.size;
}

uint32_t tb_overlay_block_size(const struct tb_overlay *o)
{
  return o->info.block_size;
}

int tb_overlay_base_fd(const struct tb_overlay *o)
{
  return o->base_fd;
}

void tb_overlay_set_quota(struct tb_overlay *o, uint64_t bytes)
{
  o->quota_blocks = bytes ? (bytes + o->info.block_size - 1) >> o->block_shift : 0;
}

void tb_overlay_deny_new_blocks(struct tb_overlay *o, bool deny)
{
  __atomic_store_n(&o->deny_new_blocks, deny, __ATOMIC_RELAXED);
}

void tb_overlay_stats(struct tb_overlay *o, struct tb_overlay_stats *st)
{
  st->bytes_read = __atomic_load_n(&o->stats.bytes_read, __ATOMIC_RELAXED);
  st->bytes_written = __atomic_load_n(&o->stats.bytes_written, __ATOMIC_RELAXED);
  st->bytes_zeroed = __atomic_load_n(&o->stats.bytes_zeroed, __ATOMIC_RELAXED);
  st->bytes_trimmed = __atomic_load_n(&o->stats.bytes_trimmed, __ATOMIC_RELAXED);
  st->flushes = __atomic_load_n(&o->stats.flushes, __ATOMIC_RELAXED);
  st->errors = __atomic_load_n(&o->stats.errors, __ATOMIC_RELAXED);
}

#define STAT_ADD(o, field, n) __atomic_fetch_add(&(o)->stats.field, (n), __ATOMIC_RELAXED)

/* ---- the map --------------------------------------------------------------- */

enum tb_block_state tb_overlay_block(struct tb_overlay *o, uint64_t b)
{
  const uint8_t *p = page_get(o, b / o->bpp);
  if (!p)
    return TB_CLEAN;
  uint64_t i = b % o->bpp;
  uint8_t v = __atomic_load_n(&p[i / 4], __ATOMIC_RELAXED);
  return (enum tb_block_state)((v >> (2 * (i % 4))) & 3);
}

/* Set block B's state; returns its previous state, or -1 if memory ran out.
 * The caller holds B's stripe lock, so only neighbours change under us. */
static int block_set(struct tb_overlay *o, uint64_t b, enum tb_block_state s)
{
  uint64_t pi = b / o->bpp;
  uint8_t *p = s == TB_CLEAN ? page_get(o, pi) : page_get_or_alloc(o, pi);
  if (!p)
    return s == TB_CLEAN ? TB_CLEAN : -1;
  uint64_t i = b % o->bpp;
  unsigned shift = 2 * (i % 4);
  uint8_t *byte = &p[i / 4];
  uint8_t old = __atomic_load_n(byte, __ATOMIC_RELAXED), nv;
  do {
    nv = (uint8_t)((old & ~(3u << shift)) | ((unsigned)s << shift));
  } while (!__atomic_compare_exchange_n(byte, &old, nv, true, __ATOMIC_RELEASE, __ATOMIC_RELAXED));
  enum tb_block_state prev = (enum tb_block_state)((old >> shift) & 3);
  if (prev != s) {
    __atomic_store_n(&o->page_dirty[pi], 1, __ATOMIC_RELAXED);
    int64_t ddirty = (s != TB_CLEAN) - (prev != TB_CLEAN);
    int64_t ddata = (s == TB_DATA) - (prev == TB_DATA);
    __atomic_fetch_add(&o->dirty_blocks, (uint64_t)ddirty, __ATOMIC_RELAXED);
    __atomic_fetch_add(&o->data_blocks, (uint64_t)ddata, __ATOMIC_RELAXED);
  }
  return (int)prev;
}

/* ---- locking ------------------------------------------------------------- */

/* Lock the stripes of blocks [first, last] in ascending stripe order. */
static void stripes_lock(struct tb_overlay *o, uint64_t first, uint64_t last)
{
  if (last - first + 1 >= NSTRIPES) {
    for (int i = 0; i < NSTRIPES; i++)
      pthread_mutex_lock(&o->stripes[i]);
    return;
  }
  unsigned a = (unsigned)(first % NSTRIPES), z = (unsigned)(last % NSTRIPES);
  if (a <= z) {
    for (unsigned i = a; i <= z; i++)
      pthread_mutex_lock(&o->stripes[i]);
  } else { /* wraps: [0, z] then [a, NSTRIPES) keeps ascending order */
    for (unsigned i = 0; i <= z; i++)
      pthread_mutex_lock(&o->stripes[i]);
    for (unsigned i = a; i < NSTRIPES; i++)
      pthread_mutex_lock(&o->stripes[i]);
  }
}

static void stripes_unlock(struct tb_overlay *o, uint64_t first, uint64_t last)
{
  if (last - first + 1 >= NSTRIPES) {
    for (int i = NSTRIPES - 1; i >= 0; i--)
      pthread_mutex_unlock(&o->stripes[i]);
    return;
  }
  for (uint64_t b = first; b <= last; b++)
    pthread_mutex_unlock(&o->stripes[b % NSTRIPES]);
}

static void write_begin(struct tb_overlay *o, uint64_t first, uint64_t last)
{
  stripes_lock(o, first, last);
  pthread_rwlock_rdlock(&o->writers);
}

static void write_end(struct tb_overlay *o, uint64_t first, uint64_t last)
{
  pthread_rwlock_unlock(&o->writers);
  stripes_unlock(o, first, last);
}

/* ---- reads ------------------------------------------------------------- */

/* Read [offset, offset+count) with CLEAN blocks from the base (or as zeros
 * when DIRTY_ONLY), one pread per run of blocks in the same state. */
static int read_runs(struct tb_overlay *o, char *buf, uint64_t count, uint64_t offset,
                     bool dirty_only)
{
  uint64_t bs = o->info.block_size, end = offset + count;
  while (offset < end) {
    uint64_t b = offset >> o->block_shift;
    enum tb_block_state s = tb_overlay_block(o, b);
    uint64_t run_end = (b + 1) * bs;
    while (run_end < end && tb_overlay_block(o, run_end >> o->block_shift) == s)
      run_end += bs;
    if (run_end > end)
      run_end = end;
    size_t len = (size_t)(run_end - offset);
    int r = 0;
    if (s == TB_DATA)
      r = tb_pread_full(o->fd, buf, len, o->data_offset + offset);
    else if (s == TB_CLEAN && !dirty_only)
      r = tb_pread_full(o->base_fd, buf, len, offset);
    else
      memset(buf, 0, len);
    if (r == -1) {
      STAT_ADD(o, errors, 1);
      return tb_error_errno("read of %zu bytes at %llu from %s", len, (unsigned long long)offset,
                            s == TB_DATA ? o->path : "the base image");
    }
    buf += len;
    offset = run_end;
  }
  return 0;
}

/* Every request is checked against the overlay's own size: a caller that
 * announced another size (an admin handle that outlived a re-image) gets an
 * error, never a read past the map. */
static int check_range(const struct tb_overlay *o, uint32_t count, uint64_t offset)
{
  if (offset > o->info.size || count > o->info.size - offset) {
    errno = EINVAL;
    return tb_error("request of %u bytes at %llu is beyond the end of the %llu-byte overlay", count,
                    (unsigned long long)offset, (unsigned long long)o->info.size);
  }
  return 0;
}

int tb_overlay_pread(struct tb_overlay *o, void *buf, uint32_t count, uint64_t offset)
{
  if (check_range(o, count, offset) == -1)
    return -1;
  STAT_ADD(o, bytes_read, count);
  return read_runs(o, buf, count, offset, false);
}

int tb_overlay_pread_dirty(struct tb_overlay *o, void *buf, uint32_t count, uint64_t offset)
{
  if (check_range(o, count, offset) == -1)
    return -1;
  return read_runs(o, buf, count, offset, true);
}

/* ---- writes ------------------------------------------------------------- */

static int check_writable(struct tb_overlay *o)
{
  if (o->rdonly) {
    errno = EROFS;
    return tb_error("%s is open read-only", o->path);
  }
  return 0;
}

/* Reserve N new DATA blocks against the quota (released by the caller on failure). */
static int quota_reserve(struct tb_overlay *o, uint64_t n)
{
  if (n > 0 && __atomic_load_n(&o->deny_new_blocks, __ATOMIC_RELAXED)) {
    errno = ENOSPC;
    return tb_error("the appliance is below its free-space reserve: only rewrites of blocks "
                    "the client already changed are accepted");
  }
  if (!o->quota_blocks || n == 0)
    return 0;
  if (__atomic_load_n(&o->data_blocks, __ATOMIC_RELAXED) + n > o->quota_blocks) {
    errno = ENOSPC;
    return tb_error("the client's overlay quota of %llu bytes is used up",
                    (unsigned long long)(o->quota_blocks << o->block_shift));
  }
  return 0;
}

static int write_error(struct tb_overlay *o, const char *what, uint64_t off, uint64_t len)
{
  STAT_ADD(o, errors, 1);
  return tb_error_errno("%s of %llu bytes at %llu in %s", what, (unsigned long long)len,
                        (unsigned long long)off, o->path);
}

/* Write part of block B (LEN bytes at IN_OFF within it) by read-modify-write.
 * SRC NULL means zeros.  Caller holds B's stripe lock. */
static int write_partial(struct tb_overlay *o, uint64_t b, uint32_t in_off, uint32_t len,
                         const char *src)
{
  uint32_t bs = o->info.block_size;
  enum tb_block_state s = tb_overlay_block(o, b);
  if (s == TB_ZERO && !src)
    return 0; /* zeros over zeros */
  if (s != TB_DATA && quota_reserve(o, 1) == -1)
    return -1;
  char *blk = malloc(bs);
  if (!blk)
    return write_error(o, "read-modify-write", b << o->block_shift, bs);
  int r = 0;
  uint64_t boff = b << o->block_shift;
  if (s == TB_DATA)
    r = tb_pread_full(o->fd, blk, bs, o->data_offset + boff);
  else if (s == TB_CLEAN)
    r = tb_pread_full(o->base_fd, blk, bs, boff);
  else
    memset(blk, 0, bs);
  if (r == 0) {
    if (src)
      memcpy(blk + in_off, src, len);
    else
      memset(blk + in_off, 0, len);
    r = tb_pwrite_full(o->fd, blk, bs, o->data_offset + boff);
  }
  free(blk);
  if (r == -1)
    return write_error(o, "write", boff + in_off, len);
  if (block_set(o, b, TB_DATA) == -1)
    return write_error(o, "map update", boff, bs);
  return 0;
}

/* Write whole blocks [b, b+n) from SRC. */
static int write_full(struct tb_overlay *o, uint64_t b, uint64_t n, const char *src)
{
  uint64_t fresh = 0;
  for (uint64_t i = 0; i < n; i++)
    fresh += tb_overlay_block(o, b + i) != TB_DATA;
  if (quota_reserve(o, fresh) == -1)
    return -1;
  uint64_t off = b << o->block_shift, len = n << o->block_shift;
  if (tb_pwrite_full(o->fd, src, len, o->data_offset + off) == -1)
    return write_error(o, "write", off, len);
  for (uint64_t i = 0; i < n; i++)
    if (block_set(o, b + i, TB_DATA) == -1)
      return write_error(o, "map update", off, len);
  return 0;
}

/* Make whole blocks [b, b+n) ZERO: punch their data out, then mark them. */
static int zero_full(struct tb_overlay *o, uint64_t b, uint64_t n)
{
  uint64_t off = b << o->block_shift, len = n << o->block_shift;
  bool any_data = false;
  for (uint64_t i = 0; i < n && !any_data; i++)
    any_data = tb_overlay_block(o, b + i) == TB_DATA;
  /* A failed punch only costs space: the map says ZERO, so reads are zeros. */
  if (any_data)
    (void)fallocate(o->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    (off_t)(o->data_offset + off), (off_t)len);
  for (uint64_t i = 0; i < n; i++)
    if (block_set(o, b + i, TB_ZERO) == -1)
      return write_error(o, "map update", off, len);
  return 0;
}

enum write_kind { W_DATA, W_ZERO, W_TRIM };

static int do_write(struct tb_overlay *o, const char *src, uint64_t count, uint64_t offset,
                    int flags, enum write_kind kind)
{
  if (check_writable(o) == -1)
    return -1;
  if (count == 0)
    return 0;
  if (offset > o->info.size || count > o->info.size - offset) {
    errno = EINVAL;
    return tb_error("request of %llu bytes at %llu is past the end of the disk (%llu bytes)",
                    (unsigned long long)count, (unsigned long long)offset,
                    (unsigned long long)o->info.size);
  }
  uint32_t bs = o->info.block_size;
  uint64_t end = offset + count;
  uint64_t first = offset >> o->block_shift, last = (end - 1) >> o->block_shift;
  int r = 0;

  write_begin(o, first, last);
  uint64_t pos = offset;
  while (pos < end && r == 0) {
    uint64_t b = pos >> o->block_shift;
    uint32_t in_off = (uint32_t)(pos & (bs - 1));
    if (in_off != 0 || end - pos < bs) { /* an edge block */
      uint32_t len = (uint32_t)((end - pos < (uint64_t)(bs - in_off)) ? end - pos : bs - in_off);
      /* The last block of a disk whose size is not a multiple of the block size
       * counts as whole when the request reaches the end of the disk. */
      bool whole = in_off == 0 && end == o->info.size;
      if (kind == W_DATA)
        r = write_partial(o, b, in_off, len, src);
      else if (whole)
        r = zero_full(o, b, 1);
      else if (kind == W_ZERO)
        r = write_partial(o, b, in_off, len, NULL);
      /* a partial trim is a no-op: trim is advisory */
      pos += len;
      if (src)
        src += len;
      continue;
    }
    uint64_t n = (end - pos) >> o->block_shift;
    r = kind == W_DATA ? write_full(o, b, n, src) : zero_full(o, b, n);
    pos += n << o->block_shift;
    if (src)
      src += n << o->block_shift;
  }
  write_end(o, first, last);

  if (r == 0 && (flags & TB_FUA))
    r = tb_overlay_flush(o);
  return r;
}

int tb_overlay_pwrite(struct tb_overlay *o, const void *buf, uint32_t count, uint64_t offset,
                      int flags)
{
  if (check_range(o, count, offset) == -1)
    return -1;
  int r = do_write(o, buf, count, offset, flags, W_DATA);
  if (r == 0)
    STAT_ADD(o, bytes_written, count);
  return r;
}

int tb_overlay_zero(struct tb_overlay *o, uint32_t count, uint64_t offset, int flags)
{
  if (check_range(o, count, offset) == -1)
    return -1;
  int r = do_write(o, NULL, count, offset, flags, W_ZERO);
  if (r == 0)
    STAT_ADD(o, bytes_zeroed, count);
  return r;
}

int tb_overlay_trim(struct tb_overlay *o, uint32_t count, uint64_t offset, int flags)
{
  if (check_range(o, count, offset) == -1)
    return -1;
  int r = do_write(o, NULL, count, offset, flags, W_TRIM);
  if (r == 0)
    STAT_ADD(o, bytes_trimmed, count);
  return r;
}

/* ---- flush --------------------------------------------------------------- */

/* A dirty map page as a flush writes it: copied under writers, then sealed
 * and written without them. */
struct map_page {
  uint64_t index;
  uint8_t bytes[PAGE_BYTES];
};
TB_VECTOR(map_pages, struct map_page);
static void map_pages_free(struct map_pages *v)
{
  tb_vector_free(v);
}

int tb_overlay_flush(struct tb_overlay *o)
{
  if (o->rdonly)
    return 0;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&o->flush_lock);

  /* Snapshot the dirty pages while no write is between its data and its map update. */
  __attribute__((cleanup(map_pages_free))) struct map_pages snap = {0};
  int r = 0;
  pthread_rwlock_wrlock(&o->writers);
  for (uint64_t pi = 0; pi < o->npages; pi++) {
    if (!o->page_dirty[pi])
      continue;
    if (tb_vector_reserve(&snap, 1) == -1) {
      r = -1;
      break;
    }
    struct map_page *p = &snap.ptr[snap.len++];
    p->index = pi;
    memcpy(p->bytes, o->pages[pi], PAGE_BYTES);
    o->page_dirty[pi] = 0;
  }
  if (r == -1) /* out of memory: nothing was cleared past the failure point */
    for (size_t i = 0; i < snap.len; i++)
      o->page_dirty[snap.ptr[i].index] = 1;
  pthread_rwlock_unlock(&o->writers);

  if (r == -1) {
    errno = ENOMEM;
    tb_error_errno("flush of %s", o->path);
  } else if (fdatasync(o->fd) == -1) { /* data first: the map never points at lost data */
    tb_error_errno("flush of %s (data)", o->path);
    r = -1;
  } else if (snap.len > 0) {
    if (o->info.format_version >= 2) /* checksums per page per flush, not per write */
      for (size_t i = 0; i < snap.len; i++)
        page_seal(snap.ptr[i].bytes, snap.ptr[i].index);
    for (size_t i = 0; i < snap.len && r == 0; i++)
      if (tb_pwrite_full(o->fd, snap.ptr[i].bytes, PAGE_BYTES,
                         o->map_offset + snap.ptr[i].index * PAGE_BYTES) == -1) {
        tb_error_errno("flush of %s (map)", o->path);
        r = -1;
      }
    if (r == 0 && fdatasync(o->fd) == -1) {
      tb_error_errno("flush of %s (map)", o->path);
      r = -1;
    }
  }
  if (r == -1) { /* the pages must be written again by the next flush */
    STAT_ADD(o, errors, 1);
    for (size_t i = 0; i < snap.len; i++)
      __atomic_store_n(&o->page_dirty[snap.ptr[i].index], 1, __ATOMIC_RELAXED);
  }
  STAT_ADD(o, flushes, 1);
  return r;
}

/* ---- extents and copies ---------------------------------------------------- */

int tb_overlay_extents(struct tb_overlay *o, uint64_t offset, uint64_t count, tb_extent_fn fn,
                       void *ctx)
{
  uint64_t bs = o->info.block_size;
  uint64_t end = offset + count > o->info.size ? o->info.size : offset + count;
  while (offset < end) {
    uint64_t b = offset >> o->block_shift;
    enum tb_block_state s = tb_overlay_block(o, b);
    uint64_t run_end = (b + 1) * bs;
    while (run_end < end) {
      uint64_t nb = run_end >> o->block_shift;
      /* Skip whole unallocated pages (all CLEAN) in one step. */
      if (s == TB_CLEAN && nb % o->bpp == 0 && !page_get(o, nb / o->bpp)) {
        run_end += o->bpp * bs;
        continue;
      }
      if (tb_overlay_block(o, nb) != s)
        break;
      run_end += bs;
    }
    if (run_end > end)
      run_end = end;
    int r = fn(ctx, offset, run_end - offset, s);
    if (r)
      return r;
    offset = run_end;
  }
  return 0;
}

int tb_overlay_copy_blocks(struct tb_overlay *o, struct tb_overlay *src, uint64_t first, uint64_t n)
{
  if (check_writable(o) == -1)
    return -1;
  if (src->info.block_size != o->info.block_size || src->info.size != o->info.size)
    return tb_error("cannot copy blocks between overlays of different geometry");
  if (first >= o->nblocks)
    return 0;
  if (n > o->nblocks - first)
    n = o->nblocks - first;
  uint32_t bs = o->info.block_size;
  char *buf = malloc(bs);
  if (!buf)
    return tb_error_errno("copying blocks");
  int r = 0;
  for (uint64_t b = first; b < first + n && r == 0; b++) {
    enum tb_block_state s = tb_overlay_block(src, b);
    write_begin(o, b, b);
    if (s == TB_DATA) {
      r = tb_pread_full(src->fd, buf, bs, src->data_offset + (b << o->block_shift));
      if (r == -1)
        tb_error_errno("reading %s", src->path);
      else
        r = write_full(o, b, 1, buf);
    } else if (s == TB_ZERO) {
      r = zero_full(o, b, 1);
    }
    write_end(o, b, b);
  }
  free(buf);
  return r;
}
