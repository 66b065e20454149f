/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-iscsid: iSCSI PDUs (RFC 7143 §11) -- framing, digests, text keys.
 *
 * A PDU on the wire is a 48-byte Basic Header Segment (BHS), optional
 * Additional Header Segments (TotalAHSLength words), an optional header
 * digest, the data segment padded to a multiple of 4 bytes and an optional
 * data digest.  Digests are CRC32C (Castagnoli), sent little-endian.
 *
 * isc_pdu_parse() is the one place bytes from the network become a PDU: it
 * takes a complete buffer (isc_pdu_total() says how long it must be once the
 * BHS is known) and checks every length against the negotiated limits before
 * anything is copied, so a hostile or truncated PDU is an error code, never a
 * read past the buffer.  The fuzz target (tests/iscsi-fuzz.c) drives it.
 *
 * Text data segments ("key=value\0...") are parsed by isc_text_parse() with
 * the RFC's limits (keys up to 63 bytes, values up to 8192 bytes before a
 * negotiated maximum), again without trusting any length.
 */
#ifndef ISC_PDU_H
#define ISC_PDU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ISC_BHS_LEN 48
#define ISC_AHS_MAX (255 * 4)
#define ISC_RSVD_TAG 0xffffffffu

/* Initiator opcodes */
enum {
  ISC_OP_NOP_OUT = 0x00,
  ISC_OP_SCSI_CMD = 0x01,
  ISC_OP_TMF_REQ = 0x02,
  ISC_OP_LOGIN_REQ = 0x03,
  ISC_OP_TEXT_REQ = 0x04,
  ISC_OP_DATA_OUT = 0x05,
  ISC_OP_LOGOUT_REQ = 0x06,
  ISC_OP_SNACK = 0x10,
};
/* Target opcodes */
enum {
  ISC_OP_NOP_IN = 0x20,
  ISC_OP_SCSI_RSP = 0x21,
  ISC_OP_TMF_RSP = 0x22,
  ISC_OP_LOGIN_RSP = 0x23,
  ISC_OP_TEXT_RSP = 0x24,
  ISC_OP_DATA_IN = 0x25,
  ISC_OP_LOGOUT_RSP = 0x26,
  ISC_OP_R2T = 0x31,
  ISC_OP_ASYNC = 0x32,
  ISC_OP_REJECT = 0x3f,
};
/* Reject reasons (§11.17.1) */
enum {
  ISC_REJ_DATA_DIGEST = 0x02,
  ISC_REJ_SNACK = 0x03,
  ISC_REJ_PROTOCOL = 0x04,
  ISC_REJ_NOT_SUPPORTED = 0x05,
  ISC_REJ_IMMEDIATE = 0x06,
  ISC_REJ_TASK_IN_PROGRESS = 0x07,
  ISC_REJ_INVALID_FIELD = 0x09,
  ISC_REJ_WAITING_LOGOUT = 0x0c,
};

/* What isc_pdu_parse() returns. */
enum isc_parse {
  ISC_PARSE_OK = 0,
  ISC_PARSE_SHORT = 1,    /* the buffer holds less than the whole PDU */
  ISC_PARSE_TOO_BIG = -1, /* data segment over the negotiated maximum */
  ISC_PARSE_HDIGEST = -2, /* header digest mismatch: the lengths cannot be trusted */
  ISC_PARSE_DDIGEST = -3, /* data digest mismatch: the PDU is rejected, the connection stays */
};

/* How PDUs are framed on one connection (changes at the end of login). */
struct isc_wire {
  bool header_digest;
  bool data_digest;
  uint32_t max_recv_data; /* our MaxRecvDataSegmentLength */
};

struct isc_pdu {
  uint8_t bhs[ISC_BHS_LEN];
  uint8_t ahs[ISC_AHS_MAX];
  uint32_t ahs_len;
  uint8_t *data; /* points into the parsed buffer */
  uint32_t data_len;
};

static inline uint32_t isc_get32(const uint8_t *p)
{
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint16_t isc_get16(const uint8_t *p)
{
  return (uint16_t)(p[0] << 8 | p[1]);
}
static inline uint32_t isc_get24(const uint8_t *p)
{
  return (uint32_t)p[0] << 16 | (uint32_t)p[1] << 8 | p[2];
}
static inline uint64_t isc_get64(const uint8_t *p)
{
  return (uint64_t)isc_get32(p) << 32 | isc_get32(p + 4);
}
static inline void isc_put32(uint8_t *p, uint32_t v)
{
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}
static inline void isc_put16(uint8_t *p, uint16_t v)
{
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}
static inline void isc_put24(uint8_t *p, uint32_t v)
{
  p[0] = (uint8_t)(v >> 16);
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)v;
}
static inline void isc_put64(uint8_t *p, uint64_t v)
{
  isc_put32(p, (uint32_t)(v >> 32));
  isc_put32(p + 4, (uint32_t)v);
}

static inline int isc_opcode(const uint8_t *bhs)
{
  return bhs[0] & 0x3f;
}
static inline bool isc_immediate(const uint8_t *bhs)
{
  return bhs[0] & 0x40;
}

/* CRC32C of LEN bytes, continuing from CRC (start with 0). */
uint32_t isc_crc32c(uint32_t crc, const void *buf, size_t len);

/* The whole PDU's length on the wire from its BHS, or a negative
 * enum isc_parse (ISC_PARSE_TOO_BIG) if its data segment is over the limit. */
long isc_pdu_total(const uint8_t *bhs, const struct isc_wire *w);

/* Parse one complete PDU from BUF (LEN bytes).  On ISC_PARSE_OK, P->data
 * points into BUF and *USED is the PDU's length on the wire. */
enum isc_parse isc_pdu_parse(const uint8_t *buf, size_t len, const struct isc_wire *w,
                             struct isc_pdu *p, size_t *used);

/* Write one PDU (BHS with lengths filled in from AHS_LEN and DATA_LEN,
 * digests as W says) to FD.  Returns 0 or -1 with errno set. */
int isc_pdu_send(int fd, uint8_t *bhs, const void *data, uint32_t data_len,
                 const struct isc_wire *w);

/* ---- text keys (§6) ---- */

#define ISC_KEY_MAX 63
#define ISC_VALUE_MAX 8192
#define ISC_TEXT_MAX_PAIRS 64

struct isc_kv {
  const char *key; /* point into the parsed text */
  const char *value;
};

/* Split TEXT (LEN bytes of "k=v\0" records; the last NUL may be missing only
 * if LEN == 0) into at most MAX pairs.  TEXT is modified ('=' becomes NUL).
 * Returns the number of pairs, or -1 for malformed text (a record without
 * '=', an empty or long key, a long value, too many pairs, no final NUL). */
int isc_text_parse(char *text, size_t len, struct isc_kv *kv, size_t max);

/* A growing buffer for text responses. */
struct isc_text {
  char buf[8192];
  size_t len;
  bool overflow;
};
void isc_text_add(struct isc_text *t, const char *key, const char *value);

/* Decode a CHAP binary value "0x..." (hex) or "0b..." (base64) into OUT;
 * returns its length or -1. */
int isc_decode_binary(const char *s, uint8_t *out, size_t max);
void isc_encode_hex(const uint8_t *in, size_t len, char *out /* 2*len+3 */);

#endif
