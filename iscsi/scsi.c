/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-iscsid: SCSI commands of a client's disk (see scsi.h).
 *
 * Every command checks its CDB completely (reserved protection fields,
 * ranges, lengths) before it touches the disk, so a bad command is an
 * ILLEGAL REQUEST and never a partial write.  Data-in answers are built in
 * full and cut to the allocation length; the transport turns the difference
 * between what a command wanted to move and the initiator's expected length
 * into residuals.
 */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "live.h"
#include "pdu.h"
#include "scsi.h"

enum {
  SK_NO_SENSE = 0x0,
  SK_MEDIUM_ERROR = 0x3,
  SK_ILLEGAL_REQUEST = 0x5,
  SK_DATA_PROTECT = 0x7,
  SK_MISCOMPARE = 0xe,
};

void isc_sense(struct isc_task *t, uint8_t key, uint8_t asc, uint8_t ascq)
{
  memset(t->sense, 0, sizeof t->sense);
  t->sense[0] = 0x70; /* current error, fixed format */
  t->sense[2] = key;
  t->sense[7] = ISC_SENSE_LEN - 8;
  t->sense[12] = asc;
  t->sense[13] = ascq;
  t->sense_len = ISC_SENSE_LEN;
  t->status = ISC_CHECK_CONDITION;
}

static void invalid_cdb(struct isc_task *t)
{
  isc_sense(t, SK_ILLEGAL_REQUEST, 0x24, 0x00);
}

static void lba_out_of_range(struct isc_task *t)
{
  isc_sense(t, SK_ILLEGAL_REQUEST, 0x21, 0x00);
}

/* errno of a tb_conn_* call to sense (see scsi.h). */
static void io_error(struct isc_task *t, int err, bool write)
{
  switch (err) {
  case EPERM:
  case EROFS:
    isc_sense(t, SK_DATA_PROTECT, 0x27, 0x00);
    break;
  case ENOSPC:
    isc_sense(t, SK_DATA_PROTECT, 0x27, 0x07);
    break;
  case ESHUTDOWN:
    t->drop = true;
    isc_sense(t, SK_MEDIUM_ERROR, 0x11, 0x00);
    break;
  default:
    isc_sense(t, SK_MEDIUM_ERROR, write ? 0x0c : 0x11, 0x00);
    break;
  }
}

/* Answer with LEN bytes of BUF, cut to the allocation length ALLOC. */
static void reply(struct isc_task *t, const void *buf, size_t len, uint32_t alloc)
{
  size_t n = len < alloc ? len : alloc;
  t->wanted = n;
  if (n > t->din_cap)
    n = t->din_cap;
  memcpy(t->din, buf, n);
  t->din_len = (uint32_t)n;
}

static void pad_ascii(uint8_t *dst, const char *s, size_t n)
{
  size_t l = strlen(s);
  memset(dst, ' ', n);
  memcpy(dst, s, l < n ? l : n);
}

void isc_lu_init(struct isc_lu *lu, struct tb_conn *conn, const char *id, const char *target_name,
                 bool read_only)
{
  memset(lu, 0, sizeof *lu);
  lu->conn = conn;
  lu->blocks = conn ? tb_conn_size(conn) / ISC_LBS : 0;
  uint32_t bs = conn ? tb_conn_block_size(conn) : 4096;
  lu->phys_blocks = bs >= ISC_LBS ? bs / ISC_LBS : 1;
  snprintf(lu->serial, sizeof lu->serial, "%s", id);
  snprintf(lu->target_name, sizeof lu->target_name, "%s", target_name);
  /* LUN 0 keeps the identity it always had; a further disk's is its own
   * (an initiator tells disks apart by it). */
  uint8_t md[SHA256_DIGEST_LENGTH];
  char seed[512];
  const char *disk = strchr(id, '/');
  snprintf(seed, sizeof seed, "%s%s", target_name, disk ? disk : "");
  SHA256((const uint8_t *)seed, strlen(seed), md);
  memcpy(lu->naa, md, sizeof lu->naa);
  lu->naa[0] = (uint8_t)(0x60 | (lu->naa[0] & 0x0f)); /* NAA 6: IEEE registered extended */
  lu->read_only = read_only;
}

/* ---- INQUIRY ---- */

static void inquiry_standard(struct isc_task *t, uint32_t alloc, bool no_lun)
{
  uint8_t d[96] = {0};
  d[0] = no_lun ? 0x7f : 0x00; /* qualifier 011b, type 1fh: no logical unit here */
  d[2] = 0x06;                 /* SPC-4 */
  d[3] = 0x12;                 /* HISUP, response data format 2 */
  d[4] = sizeof d - 5;
  d[7] = 0x02; /* CMDQUE */
  pad_ascii(d + 8, "TABULA", 8);
  pad_ascii(d + 16, "tabula disk", 16);
  pad_ascii(d + 32, "1", 4);
  static const uint16_t versions[] = {0x00a0 /* SAM-5 */, 0x0960 /* iSCSI */, 0x0460 /* SPC-4 */,
                                      0x04c0 /* SBC-3 */};
  for (size_t i = 0; i < sizeof versions / sizeof versions[0]; i++)
    isc_put16(d + 58 + 2 * i, versions[i]);
  reply(t, d, sizeof d, alloc);
}

static size_t vpd_device_id(const struct isc_lu *lu, uint8_t *d)
{
  size_t n = 4;
  /* NAA 6, binary, associated with the logical unit */
  d[n] = 0x01;
  d[n + 1] = 0x03;
  d[n + 3] = 16;
  memcpy(d + n + 4, lu->naa, 16);
  n += 20;
  /* T10 vendor id, ASCII: "TABULA  " + the client id */
  size_t sl = strlen(lu->serial);
  d[n] = 0x02;
  d[n + 1] = 0x01;
  d[n + 3] = (uint8_t)(8 + sl);
  pad_ascii(d + n + 4, "TABULA", 8);
  memcpy(d + n + 12, lu->serial, sl);
  n += 12 + sl;
  /* SCSI name string of the target device (iSCSI, UTF-8, NUL-padded to 4) */
  size_t tl = strlen(lu->target_name) + 1;
  size_t tp = (tl + 3) & ~(size_t)3;
  d[n] = 0x53;
  d[n + 1] = 0xa8;
  d[n + 3] = (uint8_t)tp;
  memset(d + n + 4, 0, tp);
  memcpy(d + n + 4, lu->target_name, tl - 1);
  n += 4 + tp;
  /* relative target port 1 */
  d[n] = 0x51;
  d[n + 1] = 0x94;
  d[n + 3] = 4;
  d[n + 4] = d[n + 5] = d[n + 6] = 0;
  d[n + 7] = 1;
  n += 8;
  isc_put16(d + 2, (uint16_t)(n - 4));
  return n;
}

static void inquiry_vpd(struct isc_lu *lu, struct isc_task *t, uint8_t page, uint32_t alloc)
{
  uint8_t d[512] = {0};
  size_t n;
  d[1] = page;
  switch (page) {
  case 0x00: {
    static const uint8_t pages[] = {0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2};
    memcpy(d + 4, pages, sizeof pages);
    n = 4 + sizeof pages;
    break;
  }
  case 0x80: {
    size_t sl = strlen(lu->serial);
    memcpy(d + 4, lu->serial, sl);
    n = 4 + sl;
    break;
  }
  case 0x83:
    n = vpd_device_id(lu, d);
    break;
  case 0xb0:
    n = 0x40;
    d[4] = 0x01; /* WSNZ: WRITE SAME with zero blocks is refused */
    isc_put16(d + 6, (uint16_t)lu->phys_blocks);
    isc_put32(d + 8, ISC_MAX_XFER_BLOCKS);
    isc_put32(d + 12, 2048);
    isc_put32(d + 20, ISC_MAX_UNMAP_BLOCKS);
    isc_put32(d + 24, ISC_MAX_UNMAP_DESC);
    isc_put32(d + 28, lu->phys_blocks);
    isc_put32(d + 32, 0x80000000u); /* UGAVALID, aligned at LBA 0 */
    isc_put64(d + 36, ISC_MAX_WS_BLOCKS);
    break;
  case 0xb1:
    n = 0x40;
    isc_put16(d + 4, 1); /* non-rotating medium */
    break;
  case 0xb2:
    n = 8;
    d[5] = 0x80 | 0x40 | 0x20 | 0x04; /* LBPU, LBPWS, LBPWS10, LBPRZ */
    d[6] = 0x02;                      /* thin provisioned */
    break;
  default:
    invalid_cdb(t);
    return;
  }
  if (page != 0x83)
    isc_put16(d + 2, (uint16_t)(n - 4));
  reply(t, d, n, alloc);
}

static void cmd_inquiry(struct isc_lu *lu, struct isc_task *t, bool no_lun)
{
  const uint8_t *c = t->cdb;
  uint32_t alloc = isc_get16(c + 3);
  if (c[1] & 0x02 || (!(c[1] & 0x01) && c[2] != 0)) {
    invalid_cdb(t);
    return;
  }
  if (c[1] & 0x01) {
    if (no_lun) {
      invalid_cdb(t);
      return;
    }
    inquiry_vpd(lu, t, c[2], alloc);
  } else {
    inquiry_standard(t, alloc, no_lun);
  }
}

/* ---- capacity, LUNs, sense, mode ---- */

static void cmd_read_capacity10(struct isc_lu *lu, struct isc_task *t)
{
  uint8_t d[8];
  isc_put32(d, lu->blocks - 1 > 0xffffffffu ? 0xffffffffu : (uint32_t)(lu->blocks - 1));
  isc_put32(d + 4, ISC_LBS);
  reply(t, d, sizeof d, sizeof d);
}

static int log2u(uint32_t v)
{
  int l = 0;
  while (v > 1) {
    v >>= 1;
    l++;
  }
  return l;
}

static void cmd_read_capacity16(struct isc_lu *lu, struct isc_task *t)
{
  uint8_t d[32] = {0};
  isc_put64(d, lu->blocks - 1);
  isc_put32(d + 8, ISC_LBS);
  d[13] = (uint8_t)(log2u(lu->phys_blocks) & 0x0f);
  d[14] = 0x80 | 0x40; /* LBPME, LBPRZ */
  reply(t, d, sizeof d, isc_get32(t->cdb + 10));
}

static void cmd_report_luns(struct isc_lu *lu, struct isc_task *t)
{
  const uint8_t *c = t->cdb;
  uint32_t alloc = isc_get32(c + 6);
  if (c[2] > 0x02 || alloc < 16) {
    invalid_cdb(t);
    return;
  }
  uint8_t d[8 + 8 * ISC_MAX_LUNS] = {0};
  uint32_t n = 0;
  for (uint32_t k = 0; k < ISC_MAX_LUNS; k++)
    if (k == 0 || (lu->lun_mask & (1u << k)))
      d[8 + 8 * n++ + 1] = (uint8_t)k; /* peripheral device addressing, bus 0 */
  isc_put32(d, 8 * n);
  reply(t, d, 8 + 8 * n, alloc);
}

static void cmd_request_sense(struct isc_task *t)
{
  if (t->cdb[1] & 0x01) { /* descriptor format: not supported */
    invalid_cdb(t);
    return;
  }
  uint8_t d[ISC_SENSE_LEN] = {0x70, 0, SK_NO_SENSE, 0, 0, 0, 0, ISC_SENSE_LEN - 8};
  reply(t, d, sizeof d, t->cdb[4]);
}

/* Mode pages: caching (WCE: writes are volatile until SYNCHRONIZE CACHE or
 * FUA) and control.  PC 1 (changeable) answers all-zero fields. */
static size_t mode_pages(uint8_t page, bool changeable, uint8_t *d)
{
  size_t n = 0;
  if (page == 0x08 || page == 0x3f) {
    memset(d + n, 0, 20);
    d[n] = 0x08;
    d[n + 1] = 0x12;
    if (!changeable)
      d[n + 2] = 0x04; /* WCE */
    n += 20;
  }
  if (page == 0x0a || page == 0x3f) {
    memset(d + n, 0, 12);
    d[n] = 0x0a;
    d[n + 1] = 0x0a;
    if (!changeable) {
      d[n + 3] = 0x10;               /* QUEUE ALGORITHM MODIFIER 1: unrestricted reordering */
      isc_put16(d + n + 10, 0xffff); /* busy timeout: unlimited */
    }
    n += 12;
  }
  return n;
}

static void cmd_mode_sense(struct isc_lu *lu, struct isc_task *t, bool ten)
{
  const uint8_t *c = t->cdb;
  bool dbd = c[1] & 0x08, llbaa = ten && (c[1] & 0x10);
  uint8_t pc = c[2] >> 6, page = c[2] & 0x3f, sub = c[3];
  uint32_t alloc = ten ? isc_get16(c + 7) : c[4];
  if (pc == 3) {
    isc_sense(t, SK_ILLEGAL_REQUEST, 0x39, 0x00); /* saving parameters not supported */
    return;
  }
  if ((page != 0x08 && page != 0x0a && page != 0x3f) ||
      (sub != 0 && !(page == 0x3f && sub == 0xff))) {
    invalid_cdb(t);
    return;
  }
  uint8_t d[128] = {0};
  size_t hdr = ten ? 8 : 4, bd = dbd ? 0 : llbaa ? 16 : 8;
  uint8_t devspec = (uint8_t)((lu->read_only ? 0x80 : 0) | 0x10); /* WP, DPOFUA */
  uint8_t *b = d + hdr;
  if (bd == 8) {
    isc_put32(b, lu->blocks > 0xffffffffu ? 0xffffffffu : (uint32_t)lu->blocks);
    isc_put32(b + 4, ISC_LBS);
  } else if (bd == 16) {
    isc_put64(b, lu->blocks);
    isc_put32(b + 12, ISC_LBS);
  }
  size_t n = hdr + bd + mode_pages(page, pc == 1, d + hdr + bd);
  if (ten) {
    isc_put16(d, (uint16_t)(n - 2));
    d[3] = devspec;
    d[4] = bd == 16 ? 0x01 : 0;
    isc_put16(d + 6, (uint16_t)bd);
  } else {
    d[0] = (uint8_t)(n - 1);
    d[2] = devspec;
    d[3] = (uint8_t)bd;
  }
  reply(t, d, n, alloc);
}

/* ---- data path ---- */

/* LBA and block count of a READ/WRITE/VERIFY/SYNCHRONIZE CACHE/PREFETCH CDB. */
static void lba_count(const uint8_t *c, uint64_t *lba, uint64_t *n)
{
  switch (c[0]) {
  case 0x08: /* READ(6), WRITE(6) */
  case 0x0a:
    *lba = isc_get24(c + 1) & 0x1fffff;
    *n = c[4] ? c[4] : 256;
    break;
  case 0xa8: /* (12) */
  case 0xaa:
  case 0xaf:
    *lba = isc_get32(c + 2);
    *n = isc_get32(c + 6);
    break;
  case 0x88: /* (16) */
  case 0x8a:
  case 0x8f:
  case 0x91:
  case 0x90:
  case 0x93:
    *lba = isc_get64(c + 2);
    *n = isc_get32(c + 10);
    break;
  default: /* (10) */
    *lba = isc_get32(c + 2);
    *n = isc_get16(c + 7);
    break;
  }
}

static bool in_range(const struct isc_lu *lu, uint64_t lba, uint64_t n)
{
  return lba <= lu->blocks && n <= lu->blocks - lba;
}

static void cmd_read(struct isc_lu *lu, struct isc_task *t)
{
  const uint8_t *c = t->cdb;
  uint64_t lba, n;
  lba_count(c, &lba, &n);
  if (c[0] != 0x08 && (c[1] & 0xe0)) { /* RDPROTECT: no protection information here */
    invalid_cdb(t);
    return;
  }
  if (!in_range(lu, lba, n)) {
    lba_out_of_range(t);
    return;
  }
  if (n > ISC_MAX_XFER_BLOCKS) {
    invalid_cdb(t);
    return;
  }
  t->wanted = n * ISC_LBS;
  uint32_t len = t->wanted < t->din_cap ? (uint32_t)t->wanted : t->din_cap;
  if (len && tb_conn_pread(lu->conn, t->din, len, lba * ISC_LBS) == -1) {
    io_error(t, errno, false);
    return;
  }
  t->din_len = len;
}

static bool write_allowed(struct isc_lu *lu, struct isc_task *t)
{
  if (lu->read_only) {
    isc_sense(t, SK_DATA_PROTECT, 0x27, 0x00);
    return false;
  }
  return true;
}

static void cmd_write(struct isc_lu *lu, struct isc_task *t)
{
  const uint8_t *c = t->cdb;
  uint64_t lba, n;
  lba_count(c, &lba, &n);
  if (c[0] != 0x0a && (c[1] & 0xe0)) { /* WRPROTECT */
    invalid_cdb(t);
    return;
  }
  if (!in_range(lu, lba, n)) {
    lba_out_of_range(t);
    return;
  }
  if (n > ISC_MAX_XFER_BLOCKS) {
    invalid_cdb(t);
    return;
  }
  t->wanted = n * ISC_LBS;
  if (!write_allowed(lu, t))
    return;
  uint32_t len = t->wanted < t->dout_len ? (uint32_t)t->wanted : t->dout_len;
  int flags = c[0] != 0x0a && (c[1] & 0x08) ? TB_FUA : 0;
  if (len && tb_conn_pwrite(lu->conn, t->dout, len, lba * ISC_LBS, flags) == -1)
    io_error(t, errno, true);
}

static void cmd_verify(struct isc_lu *lu, struct isc_task *t)
{
  const uint8_t *c = t->cdb;
  uint64_t lba, n;
  lba_count(c, &lba, &n);
  uint8_t bytchk = (c[1] >> 1) & 3;
  if ((c[1] & 0xe0) || (bytchk != 0 && bytchk != 1)) {
    invalid_cdb(t);
    return;
  }
  if (!in_range(lu, lba, n)) {
    lba_out_of_range(t);
    return;
  }
  if (bytchk == 0 || n == 0)
    return;
  if (n > ISC_MAX_XFER_BLOCKS) {
    invalid_cdb(t);
    return;
  }
  t->wanted = n * ISC_LBS;
  if (t->dout_len < t->wanted) {
    isc_sense(t, SK_ILLEGAL_REQUEST, 0x1a, 0x00); /* parameter list length error */
    return;
  }
  uint8_t *buf = malloc(t->wanted);
  if (!buf) {
    io_error(t, EIO, false);
    return;
  }
  if (tb_conn_pread(lu->conn, buf, (uint32_t)t->wanted, lba * ISC_LBS) == -1)
    io_error(t, errno, false);
  else if (memcmp(buf, t->dout, t->wanted) != 0)
    isc_sense(t, SK_MISCOMPARE, 0x1d, 0x00);
  free(buf);
}

static void cmd_sync_cache(struct isc_lu *lu, struct isc_task *t)
{
  uint64_t lba, n;
  lba_count(t->cdb, &lba, &n);
  if (!in_range(lu, lba, n)) {
    lba_out_of_range(t);
    return;
  }
  if (tb_conn_flush(lu->conn) == -1)
    io_error(t, errno, true);
}

static void cmd_prefetch(struct isc_lu *lu, struct isc_task *t)
{
  uint64_t lba, n;
  lba_count(t->cdb, &lba, &n);
  if (!in_range(lu, lba, n))
    lba_out_of_range(t);
}

/* Zero [lba, lba+n): whole overlay blocks become ZERO (unmapped, read as
 * zeros: LBPRZ), partial ones are written with zeros. */
static int zero_range(struct isc_lu *lu, uint64_t lba, uint64_t n, int flags)
{
  const uint64_t chunk = 1u << 21; /* 1 GiB of 512-byte blocks a call */
  while (n > 0) {
    uint64_t k = n < chunk ? n : chunk;
    if (tb_conn_zero(lu->conn, (uint32_t)(k * ISC_LBS), lba * ISC_LBS, flags) == -1)
      return -1;
    lba += k;
    n -= k;
  }
  return 0;
}

static bool all_zero(const uint8_t *p, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (p[i])
      return false;
  return true;
}

static void cmd_write_same(struct isc_lu *lu, struct isc_task *t)
{
  const uint8_t *c = t->cdb;
  bool sixteen = c[0] == 0x93;
  uint64_t lba, n;
  lba_count(c, &lba, &n);
  bool ndob = sixteen && (c[1] & 0x01);
  if ((c[1] & 0xe0) || (c[1] & 0x10) /* ANCHOR */) {
    invalid_cdb(t);
    return;
  }
  if (!in_range(lu, lba, n)) {
    lba_out_of_range(t);
    return;
  }
  if (n == 0 || n > ISC_MAX_WS_BLOCKS) { /* WSNZ; the VPD B0 limit */
    invalid_cdb(t);
    return;
  }
  t->wanted = ndob ? 0 : ISC_LBS;
  /* The Data-Out buffer is exactly one logical block: shorter or longer is
   * a parameter list length error (SBC-4 5.49; iscsi-test-cu
   * WriteSame*.InvalidDataOutSize), not a block taken from a longer buffer. */
  if (!ndob && t->dout_len != ISC_LBS) {
    isc_sense(t, SK_ILLEGAL_REQUEST, 0x1a, 0x00);
    return;
  }
  if (!write_allowed(lu, t))
    return;
  if (ndob || all_zero(t->dout, ISC_LBS)) {
    if (zero_range(lu, lba, n, 0) == -1)
      io_error(t, errno, true);
    return;
  }
  const uint32_t per = 2048; /* blocks a write: 1 MiB */
  uint32_t k = n < per ? (uint32_t)n : per;
  uint8_t *buf = malloc((size_t)k * ISC_LBS);
  if (!buf) {
    io_error(t, EIO, true);
    return;
  }
  for (uint32_t i = 0; i < k; i++)
    memcpy(buf + (size_t)i * ISC_LBS, t->dout, ISC_LBS);
  while (n > 0) {
    uint32_t m = n < k ? (uint32_t)n : k;
    if (tb_conn_pwrite(lu->conn, buf, m * ISC_LBS, lba * ISC_LBS, 0) == -1) {
      io_error(t, errno, true);
      break;
    }
    lba += m;
    n -= m;
  }
  free(buf);
}

static void cmd_unmap(struct isc_lu *lu, struct isc_task *t)
{
  const uint8_t *c = t->cdb;
  uint32_t plen = isc_get16(c + 7);
  if (c[1] & 0x01) { /* ANCHOR */
    invalid_cdb(t);
    return;
  }
  if (plen == 0)
    return;
  if (plen < 8 || t->dout_len < plen) {
    isc_sense(t, SK_ILLEGAL_REQUEST, 0x1a, 0x00);
    return;
  }
  const uint8_t *p = t->dout;
  uint32_t blen = isc_get16(p + 2);
  if (blen > plen - 8)
    blen = plen - 8;
  uint32_t nd = blen / 16;
  if (nd > ISC_MAX_UNMAP_DESC) {
    isc_sense(t, SK_ILLEGAL_REQUEST, 0x26, 0x00);
    return;
  }
  uint64_t total = 0;
  for (uint32_t i = 0; i < nd; i++) {
    uint64_t lba = isc_get64(p + 8 + 16 * i);
    uint64_t n = isc_get32(p + 8 + 16 * i + 8);
    if (!in_range(lu, lba, n)) {
      lba_out_of_range(t);
      return;
    }
    total += n;
  }
  if (total > ISC_MAX_UNMAP_BLOCKS) {
    isc_sense(t, SK_ILLEGAL_REQUEST, 0x26, 0x00);
    return;
  }
  if (!write_allowed(lu, t))
    return;
  for (uint32_t i = 0; i < nd; i++) {
    uint64_t lba = isc_get64(p + 8 + 16 * i);
    uint64_t n = isc_get32(p + 8 + 16 * i + 8);
    if (n && zero_range(lu, lba, n, 0) == -1) {
      io_error(t, errno, true);
      return;
    }
  }
}

/* GET LBA STATUS: ZERO blocks are deallocated, everything else mapped. */
struct lba_status {
  uint8_t *d;
  size_t n, max;
  uint64_t first; /* the LBA asked for: the first descriptor starts there */
};

static int lba_status_run(void *ctx, uint64_t offset, uint64_t length, enum tb_block_state st)
{
  struct lba_status *s = ctx;
  uint8_t status = st == TB_ZERO ? 1 : 0;
  uint64_t lba = offset / ISC_LBS, cnt = (offset + length + ISC_LBS - 1) / ISC_LBS - lba;
  if (lba < s->first) { /* the overlay block began before the LBA asked for */
    cnt -= s->first - lba < cnt ? s->first - lba : cnt;
    lba = s->first;
  }
  if (cnt == 0)
    return 0;
  if (s->n > 0) {
    uint8_t *last = s->d + 8 + 16 * (s->n - 1);
    uint64_t llba = isc_get64(last);
    uint32_t lcnt = isc_get32(last + 8);
    if (last[12] == status && llba + lcnt == lba && lcnt + cnt <= 0xffffffffu) {
      isc_put32(last + 8, (uint32_t)(lcnt + cnt));
      return 0;
    }
  }
  if (s->n == s->max)
    return 1;
  uint8_t *e = s->d + 8 + 16 * s->n++;
  memset(e, 0, 16);
  isc_put64(e, lba);
  isc_put32(e + 8, cnt > 0xffffffffu ? 0xffffffffu : (uint32_t)cnt);
  e[12] = status;
  return 0;
}

static void cmd_get_lba_status(struct isc_lu *lu, struct isc_task *t)
{
  const uint8_t *c = t->cdb;
  uint64_t lba = isc_get64(c + 2);
  uint32_t alloc = isc_get32(c + 10);
  if (lba >= lu->blocks) {
    lba_out_of_range(t);
    return;
  }
  uint8_t d[8 + 16 * 64] = {0};
  struct lba_status s = {d, 0, 64, lba};
  uint64_t span = (lu->blocks - lba) * ISC_LBS;
  if (span > (1ull << 30))
    span = 1ull << 30;
  if (tb_conn_extents(lu->conn, lba * ISC_LBS, span, lba_status_run, &s) == -1) {
    io_error(t, errno, false);
    return;
  }
  if (s.n == 0) { /* no extent reported: mapped */
    isc_put64(d + 8, lba);
    isc_put32(d + 16, (uint32_t)(span / ISC_LBS));
    s.n = 1;
  }
  isc_put32(d, (uint32_t)(4 + 16 * s.n));
  reply(t, d, 8 + 16 * s.n, alloc);
}

void isc_scsi_exec(struct isc_lu *lu, struct isc_task *t)
{
  const uint8_t *c = t->cdb;
  t->status = ISC_GOOD;
  t->sense_len = 0;
  t->din_len = 0;
  t->wanted = 0;
  switch (c[0]) {
  case 0x00: /* TEST UNIT READY */
    break;
  case 0x03:
    cmd_request_sense(t);
    break;
  case 0x12:
    cmd_inquiry(lu, t, false);
    break;
  case 0x25:
    cmd_read_capacity10(lu, t);
    break;
  case 0x9e:
    if ((c[1] & 0x1f) == 0x10)
      cmd_read_capacity16(lu, t);
    else if ((c[1] & 0x1f) == 0x12)
      cmd_get_lba_status(lu, t);
    else
      invalid_cdb(t);
    break;
  case 0xa0:
    cmd_report_luns(lu, t);
    break;
  case 0x1a:
    cmd_mode_sense(lu, t, false);
    break;
  case 0x5a:
    cmd_mode_sense(lu, t, true);
    break;
  case 0x08:
  case 0x28:
  case 0xa8:
  case 0x88:
    cmd_read(lu, t);
    break;
  case 0x0a:
  case 0x2a:
  case 0xaa:
  case 0x8a:
    cmd_write(lu, t);
    break;
  case 0x2f:
  case 0xaf:
  case 0x8f:
    cmd_verify(lu, t);
    break;
  case 0x35:
  case 0x91:
    cmd_sync_cache(lu, t);
    break;
  case 0x34:
  case 0x90:
    cmd_prefetch(lu, t);
    break;
  case 0x41:
  case 0x93:
    cmd_write_same(lu, t);
    break;
  case 0x42:
    cmd_unmap(lu, t);
    break;
  case 0x1b: /* START STOP UNIT: a network disk has no motor */
  case 0x1e: /* PREVENT ALLOW MEDIUM REMOVAL: nothing to remove */
    break;
  default:
    isc_sense(t, SK_ILLEGAL_REQUEST, 0x20, 0x00); /* invalid command operation code */
    break;
  }
}

void isc_scsi_exec_nolun(struct isc_lu *lu, struct isc_task *t)
{
  t->status = ISC_GOOD;
  t->sense_len = 0;
  t->din_len = 0;
  t->wanted = 0;
  if (t->cdb[0] == 0x12)
    cmd_inquiry(lu, t, true);
  else if (t->cdb[0] == 0xa0)
    cmd_report_luns(lu, t);
  else if (t->cdb[0] == 0x03)
    cmd_request_sense(t);
  else
    isc_sense(t, SK_ILLEGAL_REQUEST, 0x25, 0x00); /* logical unit not supported */
}
