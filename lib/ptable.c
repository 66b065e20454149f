/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: MBR and GPT partition tables without libtsk (see ptable.h).
 *
 * Which table a disk has is decided the way libtsk's autodetection decides
 * it, so that "partition:N" here and "pN-..." in the view are the same bytes:
 *   - an MBR is sector 0 with the 0x55AA signature, not a FAT or NTFS boot
 *     sector (OEM name "MSDOS", "MSWIN", "NTFS" or "FAT"), with at least one
 *     non-empty entry, and whose first two entries start inside the disk;
 *   - a GPT is the primary header at sector 1 ("EFI PART") behind an MBR
 *     whose first entry is the 0xEE protective partition, or else the backup
 *     header in the last sector;
 *   - both an MBR and a primary GPT: the GPT if the MBR holds a protective
 *     partition starting in the first 63 sectors, otherwise neither (libtsk
 *     calls that ambiguous); an MBR and only a backup GPT: the MBR.
 * libtsk's reading is followed where it is unusual, since agreeing with the
 * view is the point: GPT entries are 128 bytes apart whatever the header's
 * entry size says, and a GPT whose entry array reaches past the disk, or
 * whose first two entries start past it, is no GPT.  Where libtsk's result is
 * itself ambiguous (it follows every extended link of an extended boot
 * record and numbers two data entries of one record alike), this reader
 * takes what Linux takes: the first link, and the data entry that starts
 * first (the one libtsk's sorted list yields).  Other volume systems libtsk
 * knows (BSD, Sun, Mac) are not read here.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ptable.h"

#define SECTOR 512
#define MBR_ENTRIES 446 /* offset of the four 16-byte entries */
#define GPT_ENTRY 128
#define PROTECTIVE 0xEE

static bool is_extended(uint8_t type)
{
  return type == 0x05 || type == 0x0F || type == 0x85;
}

struct reader {
  tb_ptable_read_fn read;
  void *opaque;
  uint64_t size;
};

/* Read LEN bytes at OFF, inside the disk: 1 read, 0 outside the disk, -1 error. */
static int get(const struct reader *r, void *buf, size_t len, uint64_t off)
{
  if (off > r->size || len > r->size - off)
    return 0;
  if (r->read(r->opaque, buf, len, off) == -1)
    return tb_error_errno("cannot read the partition table at byte %llu", (unsigned long long)off);
  return 1;
}

static void add(struct tb_ptable *t, uint32_t number, uint64_t first, uint64_t sectors)
{
  if (t->n == TB_PTABLE_MAX || sectors == 0 || first > UINT64_MAX / SECTOR ||
      sectors > UINT64_MAX / SECTOR)
    return;
  t->part[t->n++] = (struct tb_partition){number, first * SECTOR, sectors * SECTOR};
}

/* ---- MBR ---------------------------------------------------------------------- */

static bool mbr_signed(const uint8_t *s)
{
  return s[510] == 0x55 && s[511] == 0xAA;
}

static bool mbr_valid(const uint8_t *s, uint64_t max_sector)
{
  const char *oem = (const char *)s + 3;
  if (!mbr_signed(s) || strncmp(oem, "MSDOS", 5) == 0 || strncmp(oem, "MSWIN", 5) == 0 ||
      strncmp(oem, "NTFS", 4) == 0 || strncmp(oem, "FAT", 4) == 0)
    return false;
  bool any = false;
  for (int i = 0; i < 4; i++) {
    const uint8_t *e = s + MBR_ENTRIES + 16 * i;
    if (tb_get_le32(e + 12) == 0)
      continue;
    if (i < 2 && tb_get_le32(e + 8) > max_sector)
      return false;
    any = true;
  }
  return any;
}

/* Logical partitions: the chain of extended boot records from BASE (the
 * extended partition's first sector).  Data entries are relative to their
 * record, links to BASE. */
static int mbr_logicals(const struct reader *r, uint64_t base, struct tb_ptable *t)
{
  uint64_t visited[TB_PTABLE_MAX];
  uint64_t ebr = base;
  uint8_t s[SECTOR];
  for (uint32_t depth = 1; depth <= TB_PTABLE_MAX; depth++) {
    for (uint32_t k = 0; k < depth - 1; k++)
      if (visited[k] == ebr)
        return 0; /* a loop: the partitions found so far stay */
    visited[depth - 1] = ebr;
    int g = get(r, s, sizeof s, ebr * SECTOR);
    if (g <= 0)
      return g;
    if (!mbr_signed(s))
      return 0;
    uint64_t next = 0, first = 0, len = 0;
    for (int i = 0; i < 4; i++) {
      const uint8_t *e = s + MBR_ENTRIES + 16 * i;
      uint32_t start = tb_get_le32(e + 8), sectors = tb_get_le32(e + 12);
      if (start == 0 || sectors == 0)
        continue;
      if (is_extended(e[4])) {
        if (!next)
          next = base + start;
      } else if (!len || ebr + start < first) {
        first = ebr + start;
        len = sectors;
      }
    }
    if (len)
      add(t, 4 + depth, first, len);
    if (!next || next > r->size / SECTOR)
      return 0;
    ebr = next;
  }
  return 0;
}

static int mbr_read(const struct reader *r, const uint8_t *s, struct tb_ptable *t)
{
  t->kind = TB_PTABLE_MBR;
  bool followed = false;
  for (int i = 0; i < 4; i++) {
    const uint8_t *e = s + MBR_ENTRIES + 16 * i;
    uint32_t start = tb_get_le32(e + 8), sectors = tb_get_le32(e + 12);
    if (sectors == 0)
      continue;
    if (!is_extended(e[4]))
      add(t, (uint32_t)i + 1, start, sectors);
    else if (!followed && start != 0) {
      followed = true;
      if (mbr_logicals(r, start, t) == -1)
        return -1;
    }
  }
  return 0;
}

/* A protective partition in the first 63 sectors: the MBR stands aside for a GPT. */
static bool mbr_protective(const uint8_t *s)
{
  for (int i = 0; i < 4; i++) {
    const uint8_t *e = s + MBR_ENTRIES + 16 * i;
    if (e[4] == PROTECTIVE && tb_get_le32(e + 12) != 0 && tb_get_le32(e + 8) <= 63)
      return true;
  }
  return false;
}

/* ---- GPT ---------------------------------------------------------------------- */

/* The GPT whose header is at sector AT: 1 read into T, 0 none there, -1 error.
 * Entries are 128 bytes apart whatever the header's entry size (as libtsk
 * reads them); the whole array must lie inside the disk (libtsk's reads of
 * it fail otherwise) but only its first TB_PTABLE_GPT_ENTRIES are read. */
static int gpt_read(const struct reader *r, uint64_t at, struct tb_ptable *t)
{
  uint8_t h[SECTOR];
  int g = get(r, h, sizeof h, at * SECTOR);
  if (g <= 0)
    return g;
  if (memcmp(h, "EFI PART", 8) != 0)
    return 0;
  uint64_t table = tb_get_le64(h + 72), max_sector = r->size / SECTOR;
  uint32_t count = tb_get_le32(h + 80);
  uint64_t sectors = ((uint64_t)count * GPT_ENTRY + SECTOR - 1) / SECTOR;
  if (tb_get_le32(h + 84) < GPT_ENTRY || table > max_sector || sectors > max_sector - table)
    return 0;
  if (count > TB_PTABLE_GPT_ENTRIES)
    count = TB_PTABLE_GPT_ENTRIES;
  uint8_t *a = malloc((size_t)count * GPT_ENTRY + 1);
  if (!a) {
    errno = ENOMEM;
    return tb_error("reading the GPT: out of memory");
  }
  g = get(r, a, (size_t)count * GPT_ENTRY, table * SECTOR);
  if (g <= 0) {
    free(a);
    return g;
  }
  t->kind = TB_PTABLE_GPT;
  t->n = 0;
  int found = 1;
  for (uint32_t i = 0; i < count; i++) {
    const uint8_t *e = a + (size_t)i * GPT_ENTRY;
    uint64_t first = tb_get_le64(e + 32), last = tb_get_le64(e + 40);
    if (first == 0)
      continue;
    if (i < 2 && first > max_sector) {
      found = 0; /* libtsk refuses such a table */
      break;
    }
    if (last >= first)
      add(t, i + 1, first, last - first + 1);
  }
  free(a);
  if (!found) {
    t->kind = TB_PTABLE_NONE;
    t->n = 0;
  }
  return found;
}

/* ---- the disk ----------------------------------------------------------------- */

int tb_ptable_read(tb_ptable_read_fn read, void *opaque, uint64_t size, struct tb_ptable *out)
{
  const struct reader r = {read, opaque, size};
  memset(out, 0, sizeof *out);
  uint8_t s[SECTOR];
  int g = get(&r, s, sizeof s, 0);
  if (g <= 0)
    return g;
  uint64_t max_sector = size / SECTOR;
  bool mbr = mbr_valid(s, max_sector);
  /* The primary GPT needs the protective entry first in a signed sector 0. */
  if (mbr_signed(s) && s[MBR_ENTRIES + 4] == PROTECTIVE) {
    g = gpt_read(&r, 1, out);
    if (g == -1)
      return -1;
    if (g == 1) {
      if (!mbr || mbr_protective(s))
        return 0;
      memset(out, 0, sizeof *out); /* an MBR and a GPT: ambiguous */
      return 0;
    }
  }
  if (mbr)
    return mbr_read(&r, s, out);
  if (max_sector >= 1) {
    g = gpt_read(&r, max_sector - 1, out);
    if (g == -1)
      return -1;
  }
  if (out->kind == TB_PTABLE_NONE)
    memset(out, 0, sizeof *out);
  return 0;
}

static int file_read(void *opaque, void *buf, size_t len, uint64_t off)
{
  int fd = *(int *)opaque;
  size_t done = 0;
  while (done < len) {
    ssize_t n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      if (n == 0)
        errno = EIO; /* the file shrank under us */
      return -1;
    }
    done += (size_t)n;
  }
  return 0;
}

int tb_ptable_read_file(const char *path, struct tb_ptable *out)
{
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd == -1)
    return tb_error_errno("cannot open %s to read its partition table", path);
  struct stat st;
  if (fstat(fd, &st) == -1) {
    tb_error_errno("cannot stat %s", path);
    close(fd);
    return -1;
  }
  int r = tb_ptable_read(file_read, &fd, (uint64_t)st.st_size, out);
  close(fd);
  if (r == -1)
    tb_error_prefix("%s", path);
  return r;
}

const struct tb_partition *tb_ptable_find(const struct tb_ptable *t, uint32_t n)
{
  for (size_t i = 0; i < t->n; i++)
    if (t->part[i].number == n)
      return &t->part[i];
  return NULL;
}
