/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: NTFS MFT records read by us (see ntfs-mft.h).
 *
 * Why.  A listing stats every entry, and libtsk's tsk_fs_file_open_meta()
 * loads a whole record for it: every attribute copied into a list, every
 * run list turned into linked runs, names converted, a 1 KiB buffer and a
 * dozen allocations a file.  ntfs-3g reads the one record.  So do we: the
 * caller reads the record (tb_ntfs_rec_offset: where $MFT's runs put it,
 * as libtsk's ntfs_dinode_lookup computes it), undoes its update sequence
 * (tb_ntfs_fixup) and parses it (tb_ntfs_parse) into what stat needs, with
 * pointers into the record instead of copies.
 *
 * What it promises.  A record tb_ntfs_parse accepts gives exactly what
 * libtsk 4.11's ntfs_dinode_copy and ntfs_proc_attrseq give for it: the
 * same sizes (a file's size is its last unnamed $DATA's), times (libtsk's
 * truncating nt2unixtime: tb_ntfs_time), flags, sequence number, link
 * count, stream names (libtsk's lenient UTF-16 decoding, cut at a NUL,
 * control characters as '^') and order.  Everything libtsk refuses
 * (TSK_COR: a torn update sequence, a bad run list, a non-resident
 * $STANDARD_INFORMATION...), reads in a way not mirrored here (an
 * attribute list, runs starting past VCN 0, attributes sharing a type and
 * id, an attribute whose bounds libtsk only half checks), or what is
 * merely unusual (no "FILE" magic, an extension record, more than
 * TB_NTFS_MAX_STREAMS streams) makes it return -1: the caller then asks
 * libtsk, so results never differ, only their cost.  The parser reads
 * nothing outside the record's G->rec_size bytes, whatever the lengths in
 * it say (tests/unit-ntfs-mft.c, tests/fuzz/ntfs-mft.c).  The on-disk
 * layouts are libtsk's (tsk/fs/tsk_ntfs.h). */
#include <config.h>

#include <stddef.h>
#include <string.h>

#include <tsk/libtsk.h>
#include <tsk/fs/tsk_ntfs.h>

#include "ntfs-mft.h"
#include "util.h"

#define SECTOR NTFS_UPDATE_SEQ_STRIDE
#define ATTR_END 0xFFFFFFFFu
#define RES_HEADER 24    /* a resident attribute's header */
#define NONRES_HEADER 64 /* a non-resident one's */
#define SI_MIN 48        /* libtsk's smallest $STANDARD_INFORMATION attribute */

bool tb_ntfs_rec_offset(const struct tb_ntfs_geom *g, uint64_t rec, uint64_t *off,
                        uint64_t *run_end)
{
  if (rec >= g->n_records || g->rec_size == 0 || rec > UINT64_MAX / g->rec_size)
    return false;
  uint64_t o = rec * g->rec_size;
  for (size_t i = 0; i < g->n_runs; i++) {
    const struct tb_ntfs_run *r = &g->runs[i];
    if (r->len > UINT64_MAX / 2 / g->cluster_size)
      return false;
    uint64_t len = r->len * g->cluster_size;
    if (o < len) {
      /* across two runs (512-byte clusters), in a hole: libtsk's */
      if (len - o < g->rec_size || r->lcn == UINT64_MAX ||
          r->lcn > UINT64_MAX / 2 / g->cluster_size)
        return false;
      *off = r->lcn * g->cluster_size + o;
      if (run_end)
        *run_end = *off - o + len;
      return *off != 0; /* libtsk takes address 0 for "not found" */
    }
    o -= len;
  }
  return false;
}

bool tb_ntfs_fixup(unsigned char *rec, size_t size)
{
  if (size < SECTOR || size % SECTOR || size > 65536)
    return false;
  size_t usa = tb_get_le16(rec + offsetof(ntfs_mft, upd_off)),
         count = tb_get_le16(rec + offsetof(ntfs_mft, upd_cnt));
  /* one entry per sector, the array inside the first sector's data */
  if (count != size / SECTOR + 1 || usa + 2 * count > SECTOR - 2)
    return false;
  const unsigned char *want = rec + usa;
  for (size_t i = 1; i < count; i++)
    if (memcmp(rec + i * SECTOR - 2, want, 2) != 0)
      return false;
  for (size_t i = 1; i < count; i++)
    memcpy(rec + i * SECTOR - 2, rec + usa + 2 * i, 2);
  return true;
}

size_t tb_ntfs_name(const unsigned char *p, size_t units, char *out)
{
  size_t o = 0;
  for (size_t i = 0; i < units; i++) {
    uint32_t c = tb_get_le16(p + 2 * i);
    if (c >= 0xD800 && c < 0xDC00) {
      if (i + 1 >= units) {
        o = 0;
        break;
      }
      uint32_t c2 = tb_get_le16(p + 2 * ++i);
      c = c2 >= 0xDC00 && c2 < 0xE000 ? ((c - 0xD800) << 10) + (c2 - 0xDC00) + 0x10000 : '^';
    } else if (c >= 0xDC00 && c < 0xE000) {
      c = '^';
    }
    if (c < 0x80) {
      out[o++] = (char)c;
    } else if (c < 0x800) {
      out[o++] = (char)(0xC0 | c >> 6);
      out[o++] = (char)(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
      out[o++] = (char)(0xE0 | c >> 12);
      out[o++] = (char)(0x80 | ((c >> 6) & 0x3F));
      out[o++] = (char)(0x80 | (c & 0x3F));
    } else {
      out[o++] = (char)(0xF0 | c >> 18);
      out[o++] = (char)(0x80 | ((c >> 12) & 0x3F));
      out[o++] = (char)(0x80 | ((c >> 6) & 0x3F));
      out[o++] = (char)(0x80 | (c & 0x3F));
    }
  }
  out[o] = '\0';
  return o;
}

int64_t tb_ntfs_time(uint64_t nt, uint32_t *ns)
{
  if (ns)
    *ns = (uint32_t)(nt % 10000000) * 100;
  return (int64_t)(uint32_t)((nt - 116444736000000000ull) / 10000000);
}

/* The run list at P (inside [P, END)) as ntfs_make_data_run checks it;
 * false where libtsk would fail the record (TSK_COR) or where the list
 * does not end inside the attribute.  *ANY: it holds a run. */
static bool runs_ok(const struct tb_ntfs_geom *g, uint64_t rec, const unsigned char *p,
                    const unsigned char *end, bool *any)
{
  uint64_t prev = 0;
  *any = false;
  for (;;) {
    if (p >= end)
      return false;
    unsigned lensz = *p & 0x0F, offsz = *p >> 4;
    if (lensz == 0)
      return true;
    if (lensz > 8 || offsz > 8 || (size_t)(end - p) < 1u + lensz + offsz)
      return false;
    *any = true;
    uint64_t len = 0;
    size_t idx = 1;
    for (unsigned i = 0; i < lensz; i++)
      len |= (uint64_t)p[idx++] << (i * 8);
    if (len > g->clusters)
      return false;
    uint64_t delta = 0;
    for (unsigned i = 0; i < offsz; i++)
      delta |= (uint64_t)p[idx++] << (i * 8);
    /* libtsk sign-extends from the last byte read, the length's when
     * there is no offset */
    if (p[idx - 1] & 0x80)
      for (unsigned i = offsz; i < 8; i++)
        delta |= (uint64_t)0xFF << (i * 8);
    if (delta == UINT64_MAX && (prev == 0 || g->nt4)) {
      /* a hole */
    } else if (delta || rec == NTFS_MFT_BOOT) {
      prev += delta;
      if (prev + len > g->clusters)
        return false;
    }
    p += idx;
  }
}

/* Name the attribute at A (LEN bytes) as libtsk does into OUT's arena;
 * NULL if it cannot be mirrored. */
static const char *attr_name(const unsigned char *a, uint32_t len, struct tb_ntfs_rec *out,
                             size_t *used)
{
  unsigned units = a[offsetof(ntfs_attr, nlen)];
  size_t noff = tb_get_le16(a + offsetof(ntfs_attr, name_off));
  if (units == 0)
    return "";
  /* libtsk leaves a name that reaches the attribute's end unnamed */
  if (noff + 2 * (size_t)units >= len || TB_NTFS_NAMES_MAX - *used < 4 * (size_t)units + 1)
    return NULL;
  char *s = out->names + *used;
  /* a failed conversion (a high surrogate at the end) is "" there too,
   * and the name stops at a NUL */
  tb_ntfs_name(a + noff, units, s);
  size_t n = strlen(s);
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] < 0x20)
      s[i] = '^';
  *used += n + 1;
  return s;
}

int tb_ntfs_parse(const struct tb_ntfs_geom *g, uint64_t rec, const unsigned char *buf,
                  struct tb_ntfs_rec *out)
{
  size_t size = g->rec_size;
  memset(out, 0, offsetof(struct tb_ntfs_rec, names));
  if (size < SECTOR || memcmp(buf, "FILE", 4) != 0 ||
      (tb_get_le64(buf + offsetof(ntfs_mft, base_ref)) & 0xFFFFFFFFFFFFull) != 0)
    return -1;
  uint16_t flags = tb_get_le16(buf + offsetof(ntfs_mft, flags));
  out->seq = tb_get_le16(buf + offsetof(ntfs_mft, seq));
  out->nlink = tb_get_le16(buf + offsetof(ntfs_mft, link));
  out->in_use = flags & NTFS_MFT_INUSE;
  out->dir = flags & NTFS_MFT_DIR;
  size_t p = tb_get_le16(buf + offsetof(ntfs_mft, attr_off)), used = 0;
  if (p < sizeof(ntfs_mft) || p % 8)
    return -1;
  /* (type, id) of each attribute seen: libtsk merges non-resident ones
   * sharing both, and fails resident ones */
  uint32_t seen_type[64];
  uint16_t seen_id[64];
  size_t n_seen = 0;
  for (;;) {
    if (p + 4 > size)
      return -1; /* no end marker */
    const unsigned char *a = buf + p;
    uint32_t type = tb_get_le32(a + offsetof(ntfs_attr, type));
    if (type == ATTR_END)
      return 0;
    if (p + RES_HEADER > size)
      return -1;
    uint32_t len = tb_get_le32(a + offsetof(ntfs_attr, len));
    unsigned res = a[offsetof(ntfs_attr, res)];
    uint16_t aflags = tb_get_le16(a + offsetof(ntfs_attr, flags)),
             id = tb_get_le16(a + offsetof(ntfs_attr, id));
    if (len < RES_HEADER || len % 8 || len > size - p || res > NTFS_MFT_NONRES ||
        (res == NTFS_MFT_NONRES && len < NONRES_HEADER) ||
        tb_get_le16(a + offsetof(ntfs_attr, name_off)) > len || type == NTFS_ATYPE_ATTRLIST ||
        n_seen == sizeof seen_id / sizeof *seen_id)
      return -1;
    /* libtsk also merges a non-resident attribute of id 0 into an earlier
     * one of its type and name */
    for (size_t i = 0; i < n_seen; i++)
      if (seen_type[i] == type && (seen_id[i] == id || (id == 0 && res == NTFS_MFT_NONRES)))
        return -1;
    seen_type[n_seen] = type;
    seen_id[n_seen++] = id;
    const char *name = attr_name(a, len, out, &used);
    if (!name)
      return -1;
    uint64_t asize;
    const unsigned char *content = NULL;
    if (res == NTFS_MFT_RES) {
      uint32_t soff = tb_get_le16(a + offsetof(ntfs_attr, c.r.soff)),
               ssize = tb_get_le32(a + offsetof(ntfs_attr, c.r.ssize));
      if (soff > len || ssize > len - soff)
        return -1;
      content = a + soff;
      asize = ssize;
      if (type == NTFS_ATYPE_SI) {
        /* libtsk's bounds, and one $STANDARD_INFORMATION (the last wins there) */
        if (out->has_si || soff < 16 || len < SI_MIN || soff > len - SI_MIN)
          return -1;
        const unsigned char *si = a + soff;
        out->has_si = true;
        out->crtime = tb_get_le64(si + offsetof(ntfs_attr_si, crtime));
        out->mtime = tb_get_le64(si + offsetof(ntfs_attr_si, mtime));
        out->ctime = tb_get_le64(si + offsetof(ntfs_attr_si, ctime));
        out->atime = tb_get_le64(si + offsetof(ntfs_attr_si, atime));
        out->si_len = ssize;
        out->dos = ssize >= offsetof(ntfs_attr_si, maxver)
                       ? tb_get_le32(si + offsetof(ntfs_attr_si, dos))
                       : 0;
      }
    } else {
      if (type == NTFS_ATYPE_SI || type == NTFS_ATYPE_FNAME)
        return -1; /* libtsk: "is not resident" */
      size_t roff = tb_get_le16(a + offsetof(ntfs_attr, c.nr.run_off));
      uint64_t ssize = tb_get_le64(a + offsetof(ntfs_attr, c.nr.ssize)),
               alen = tb_get_le64(a + offsetof(ntfs_attr, c.nr.alen));
      bool any;
      if (tb_get_le64(a + offsetof(ntfs_attr, c.nr.start_vcn)) != 0 || roff < NONRES_HEADER ||
          roff > len || !runs_ok(g, rec, a + roff, a + len, &any) ||
          tb_get_le16(a + offsetof(ntfs_attr, c.nr.compusize)) > 16 || ssize > INT64_MAX ||
          alen > INT64_MAX || (ssize == 0 && any) || (alen != 0 && alen < ssize))
        return -1;
      asize = ssize;
    }
    if (type == NTFS_ATYPE_DATA) {
      if (out->n_streams == TB_NTFS_MAX_STREAMS)
        return -1;
      out->streams[out->n_streams++] = (struct tb_ntfs_stream){name, asize, content, aflags};
      if (!*name && !out->dir)
        out->size = asize;
    } else if (type == NTFS_ATYPE_REPARSE && !out->has_reparse) {
      out->has_reparse = true;
      out->reparse = content;
      out->reparse_len = content ? (uint32_t)asize : 0;
    } else if (type == NTFS_ATYPE_IDXALLOC && !out->has_idxalloc) {
      out->has_idxalloc = true;
      out->idxalloc_size = asize;
    }
    p += len;
  }
}
