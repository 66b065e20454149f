/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-iscsid: iSCSI PDU framing, CRC32C digests and text keys.
 *
 * See pdu.h.  Everything here is pure (no sockets but isc_pdu_send) so the
 * unit tests and the fuzz target exercise the exact code the target runs.
 * CRC32C is table-driven, slicing by 8 (Debian has no small exported CRC32C
 * library; libiscsi keeps its own internal one).
 */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "pdu.h"

/* ---- CRC32C ---- */

static uint32_t crc_table[8][256];

static void crc_init(void)
{
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++)
      c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    crc_table[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; i++)
    for (int t = 1; t < 8; t++)
      crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
}

uint32_t isc_crc32c(uint32_t crc, const void *buf, size_t len)
{
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, crc_init);
  const uint8_t *p = buf;
  crc = ~crc;
  while (len >= 8) {
    uint32_t lo =
        crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
    crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
          crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^ crc_table[3][p[4]] ^
          crc_table[2][p[5]] ^ crc_table[1][p[6]] ^ crc_table[0][p[7]];
    p += 8;
    len -= 8;
  }
  while (len--)
    crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return ~crc;
}

static void put_le32(uint8_t *p, uint32_t v)
{
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_le32(const uint8_t *p)
{
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ---- framing ---- */

static uint32_t pad4(uint32_t n)
{
  return (n + 3) & ~3u;
}

long isc_pdu_total(const uint8_t *bhs, const struct isc_wire *w)
{
  uint32_t ahs = (uint32_t)bhs[4] * 4;
  uint32_t dlen = isc_get24(bhs + 5);
  if (dlen > w->max_recv_data)
    return ISC_PARSE_TOO_BIG;
  long total = ISC_BHS_LEN + ahs + (w->header_digest ? 4 : 0);
  if (dlen)
    total += pad4(dlen) + (w->data_digest ? 4 : 0);
  return total;
}

enum isc_parse isc_pdu_parse(const uint8_t *buf, size_t len, const struct isc_wire *w,
                             struct isc_pdu *p, size_t *used)
{
  if (len < ISC_BHS_LEN)
    return ISC_PARSE_SHORT;
  long total = isc_pdu_total(buf, w);
  if (total < 0)
    return (enum isc_parse)total;
  if (len < (size_t)total)
    return ISC_PARSE_SHORT;
  memcpy(p->bhs, buf, ISC_BHS_LEN);
  p->ahs_len = (uint32_t)buf[4] * 4;
  memcpy(p->ahs, buf + ISC_BHS_LEN, p->ahs_len);
  size_t off = ISC_BHS_LEN + p->ahs_len;
  if (w->header_digest) {
    if (isc_crc32c(0, buf, off) != get_le32(buf + off))
      return ISC_PARSE_HDIGEST;
    off += 4;
  }
  p->data_len = isc_get24(buf + 5);
  p->data = p->data_len ? (uint8_t *)buf + off : NULL;
  if (p->data_len && w->data_digest) {
    uint32_t padded = pad4(p->data_len);
    if (isc_crc32c(0, buf + off, padded) != get_le32(buf + off + padded)) {
      *used = (size_t)total;
      return ISC_PARSE_DDIGEST;
    }
  }
  *used = (size_t)total;
  return ISC_PARSE_OK;
}

static int writev_full(int fd, struct iovec *iov, int n)
{
  while (n > 0) {
    ssize_t r = writev(fd, iov, n);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    while (n > 0 && (size_t)r >= iov->iov_len) {
      r -= (ssize_t)iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = (uint8_t *)iov->iov_base + r;
      iov->iov_len -= (size_t)r;
    }
  }
  return 0;
}

int isc_pdu_send(int fd, uint8_t *bhs, const void *data, uint32_t data_len,
                 const struct isc_wire *w)
{
  static const uint8_t zeros[4];
  uint8_t hd[4], dd[4];
  struct iovec iov[5];
  int n = 0;
  bhs[4] = 0; /* we never send AHS */
  isc_put24(bhs + 5, data_len);
  iov[n++] = (struct iovec){bhs, ISC_BHS_LEN};
  if (w->header_digest) {
    put_le32(hd, isc_crc32c(0, bhs, ISC_BHS_LEN));
    iov[n++] = (struct iovec){hd, 4};
  }
  if (data_len) {
    uint32_t pad = pad4(data_len) - data_len;
    iov[n++] = (struct iovec){(void *)data, data_len};
    if (pad)
      iov[n++] = (struct iovec){(void *)zeros, pad};
    if (w->data_digest) {
      uint32_t c = isc_crc32c(0, data, data_len);
      c = isc_crc32c(c, zeros, pad);
      put_le32(dd, c);
      iov[n++] = (struct iovec){dd, 4};
    }
  }
  return writev_full(fd, iov, n);
}

/* ---- text ---- */

int isc_text_parse(char *text, size_t len, struct isc_kv *kv, size_t max)
{
  if (len == 0)
    return 0;
  if (text[len - 1] != '\0')
    return -1;
  size_t n = 0, i = 0;
  while (i < len) {
    char *rec = text + i;
    size_t rlen = strlen(rec); /* bounded: text[len-1] is NUL */
    i += rlen + 1;
    if (rlen == 0)
      continue; /* padding NULs some initiators leave */
    char *eq = memchr(rec, '=', rlen);
    if (!eq || eq == rec || eq - rec > ISC_KEY_MAX || rlen - (size_t)(eq - rec) - 1 > ISC_VALUE_MAX)
      return -1;
    if (n == max)
      return -1;
    *eq = '\0';
    kv[n].key = rec;
    kv[n].value = eq + 1;
    n++;
  }
  return (int)n;
}

void isc_text_add(struct isc_text *t, const char *key, const char *value)
{
  size_t kl = strlen(key), vl = strlen(value);
  if (t->len + kl + vl + 2 > sizeof t->buf) {
    t->overflow = true;
    return;
  }
  memcpy(t->buf + t->len, key, kl);
  t->buf[t->len + kl] = '=';
  memcpy(t->buf + t->len + kl + 1, value, vl);
  t->buf[t->len + kl + 1 + vl] = '\0';
  t->len += kl + vl + 2;
}

static int hexval(int c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

static int b64val(int c)
{
  if (c >= 'A' && c <= 'Z')
    return c - 'A';
  if (c >= 'a' && c <= 'z')
    return c - 'a' + 26;
  if (c >= '0' && c <= '9')
    return c - '0' + 52;
  if (c == '+')
    return 62;
  if (c == '/')
    return 63;
  return -1;
}

int isc_decode_binary(const char *s, uint8_t *out, size_t max)
{
  if (s[0] != '0' || (s[1] != 'x' && s[1] != 'X' && s[1] != 'b' && s[1] != 'B'))
    return -1;
  bool hex = s[1] == 'x' || s[1] == 'X';
  s += 2;
  size_t n = 0;
  if (hex) {
    size_t l = strlen(s);
    if (l == 0)
      return -1;
    size_t i = 0;
    if (l % 2) { /* an odd count: the first digit stands alone */
      if (hexval(s[0]) < 0 || max < 1)
        return -1;
      out[n++] = (uint8_t)hexval(s[0]);
      i = 1;
    }
    for (; i < l; i += 2) {
      int h = hexval(s[i]), lo = hexval(s[i + 1]);
      if (h < 0 || lo < 0 || n == max)
        return -1;
      out[n++] = (uint8_t)(h << 4 | lo);
    }
    return (int)n;
  }
  uint32_t acc = 0;
  int bits = 0;
  for (; *s && *s != '='; s++) {
    int v = b64val(*s);
    if (v < 0)
      return -1;
    acc = acc << 6 | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      if (n == max)
        return -1;
      out[n++] = (uint8_t)(acc >> bits);
    }
  }
  for (; *s == '='; s++)
    ;
  return *s || n == 0 ? -1 : (int)n;
}

void isc_encode_hex(const uint8_t *in, size_t len, char *out)
{
  static const char digits[] = "0123456789abcdef";
  *out++ = '0';
  *out++ = 'x';
  for (size_t i = 0; i < len; i++) {
    *out++ = digits[in[i] >> 4];
    *out++ = digits[in[i] & 15];
  }
  *out = '\0';
}
