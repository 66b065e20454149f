/* SPDX-License-Identifier: BSD-3-Clause */
/* Unit tests of the iSCSI frontend's pure parts: CRC32C (RFC 7143 B.4 test
 * vectors), PDU framing (truncated, oversized, digest errors, AHS and
 * padding), text keys, CHAP binary values, and the configuration keys
 * (listen.iscsi, iscsi.*, clients.ID.iscsi). */
#include <config.h>

#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "pdu.h"
#include "check-run.h"

START_TEST(test_crc32c_vectors)
{
  uint8_t buf[32];
  ck_assert_uint_eq(isc_crc32c(0, "123456789", 9), 0xe3069283u);
  memset(buf, 0, sizeof buf);
  ck_assert_uint_eq(isc_crc32c(0, buf, 32), 0x8a9136aau); /* sent as aa 36 91 8a */
  memset(buf, 0xff, sizeof buf);
  ck_assert_uint_eq(isc_crc32c(0, buf, 32), 0x62a8ab43u);
  for (int i = 0; i < 32; i++)
    buf[i] = (uint8_t)i;
  ck_assert_uint_eq(isc_crc32c(0, buf, 32), 0x46dd794eu);
  for (int i = 0; i < 32; i++)
    buf[i] = (uint8_t)(31 - i);
  ck_assert_uint_eq(isc_crc32c(0, buf, 32), 0x113fdb5cu);
  /* continuing a CRC over pieces is the CRC of the whole */
  ck_assert_uint_eq(isc_crc32c(isc_crc32c(0, "1234", 4), "56789", 5), 0xe3069283u);
}
END_TEST

static void put_le(uint8_t *p, uint32_t v)
{
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

/* A NOP-Out with AHS words and DLEN bytes of data, digests as W says. */
static size_t build(uint8_t *buf, const struct isc_wire *w, uint8_t ahs_words, uint32_t dlen)
{
  memset(buf, 0, 4096);
  buf[0] = ISC_OP_NOP_OUT;
  buf[1] = 0x80;
  buf[4] = ahs_words;
  isc_put24(buf + 5, dlen);
  size_t off = ISC_BHS_LEN + ahs_words * 4u;
  if (w->header_digest) {
    put_le(buf + off, isc_crc32c(0, buf, off));
    off += 4;
  }
  for (uint32_t i = 0; i < dlen; i++)
    buf[off + i] = (uint8_t)('a' + i % 26);
  uint32_t padded = (dlen + 3) & ~3u;
  if (dlen && w->data_digest) {
    put_le(buf + off + padded, isc_crc32c(0, buf + off, padded));
    padded += 4;
  }
  return off + (dlen ? padded : 0);
}

START_TEST(test_pdu_framing)
{
  uint8_t buf[4096];
  struct isc_pdu p;
  size_t used;
  struct isc_wire plain = {false, false, 8192}, dig = {true, true, 8192};
  size_t n = build(buf, &plain, 0, 5);
  ck_assert_uint_eq(n, 48 + 8);
  ck_assert_int_eq(isc_pdu_parse(buf, n, &plain, &p, &used), ISC_PARSE_OK);
  ck_assert_uint_eq(used, n);
  ck_assert_uint_eq(p.data_len, 5);
  ck_assert(memcmp(p.data, "abcde", 5) == 0);
  /* every truncation is "short", never a read past the end */
  for (size_t k = 0; k < n; k++)
    ck_assert_int_eq(isc_pdu_parse(buf, k, &plain, &p, &used), ISC_PARSE_SHORT);
  /* AHS and digests */
  n = build(buf, &dig, 2, 7);
  ck_assert_uint_eq(n, 48 + 8 + 4 + 8 + 4);
  ck_assert_int_eq(isc_pdu_parse(buf, n, &dig, &p, &used), ISC_PARSE_OK);
  ck_assert_uint_eq(p.ahs_len, 8);
  buf[56] ^= 1; /* header digest */
  ck_assert_int_eq(isc_pdu_parse(buf, n, &dig, &p, &used), ISC_PARSE_HDIGEST);
  buf[56] ^= 1;
  buf[61] ^= 1; /* data */
  ck_assert_int_eq(isc_pdu_parse(buf, n, &dig, &p, &used), ISC_PARSE_DDIGEST);
  ck_assert_uint_eq(used, n); /* the PDU can be skipped: the connection stays */
  /* a data segment over the negotiated maximum */
  struct isc_wire small = {false, false, 512};
  n = build(buf, &plain, 0, 513);
  ck_assert_int_eq(isc_pdu_parse(buf, n, &small, &p, &used), ISC_PARSE_TOO_BIG);
  ck_assert_int_eq(isc_pdu_total(buf, &small), ISC_PARSE_TOO_BIG);
  isc_put24(buf + 5, 0xffffff);
  ck_assert_int_eq(isc_pdu_total(buf, &plain), ISC_PARSE_TOO_BIG);
}
END_TEST

START_TEST(test_text)
{
  char t1[] = "InitiatorName=iqn.x:y\0SessionType=Normal\0";
  struct isc_kv kv[4];
  ck_assert_int_eq(isc_text_parse(t1, sizeof t1 - 1, kv, 4), 2);
  ck_assert_str_eq(kv[0].key, "InitiatorName");
  ck_assert_str_eq(kv[0].value, "iqn.x:y");
  ck_assert_str_eq(kv[1].value, "Normal");
  char t2[] = "NoEquals\0";
  ck_assert_int_eq(isc_text_parse(t2, sizeof t2 - 1, kv, 4), -1);
  char t3[] = "A=b";
  ck_assert_int_eq(isc_text_parse(t3, 3, kv, 4), -1); /* no final NUL */
  char t4[] = "=b\0";
  ck_assert_int_eq(isc_text_parse(t4, 3, kv, 4), -1);
  char t5[] = "a=1\0b=2\0c=3\0";
  ck_assert_int_eq(isc_text_parse(t5, sizeof t5 - 1, kv, 2), -1); /* too many */
  char t6[80];
  memset(t6, 'k', 64);
  strcpy(t6 + 64, "=v");
  ck_assert_int_eq(isc_text_parse(t6, strlen(t6) + 1, kv, 4), -1); /* key of 64 bytes */
  ck_assert_int_eq(isc_text_parse(t6, 0, kv, 4), 0);

  struct isc_text out = {.len = 0};
  isc_text_add(&out, "AuthMethod", "None");
  ck_assert_uint_eq(out.len, strlen("AuthMethod=None") + 1);
  ck_assert(!out.overflow);
}
END_TEST

START_TEST(test_binary)
{
  uint8_t out[16];
  ck_assert_int_eq(isc_decode_binary("0x0aff", out, sizeof out), 2);
  ck_assert_uint_eq(out[0], 0x0a);
  ck_assert_uint_eq(out[1], 0xff);
  ck_assert_int_eq(isc_decode_binary("0xabc", out, sizeof out), 2); /* odd: 0a bc */
  ck_assert_uint_eq(out[0], 0x0a);
  ck_assert_int_eq(isc_decode_binary("0bAAEC", out, sizeof out), 3);
  ck_assert_uint_eq(out[2], 2);
  ck_assert_int_eq(isc_decode_binary("0x", out, sizeof out), -1);
  ck_assert_int_eq(isc_decode_binary("0xzz", out, sizeof out), -1);
  ck_assert_int_eq(isc_decode_binary("1234", out, sizeof out), -1);
  ck_assert_int_eq(isc_decode_binary("0x00112233445566778899aabbccddeeff00", out, sizeof out),
                   -1); /* longer than the buffer */
  char hex[8];
  uint8_t in[2] = {0x12, 0xab};
  isc_encode_hex(in, 2, hex);
  ck_assert_str_eq(hex, "0x12ab");
}
END_TEST

static struct tb_config *parse_with(const char *extra)
{
  char buf[2048];
  snprintf(buf, sizeof buf, "{\"state_dir\": \"/tmp/x\", \"images\": {\"demo\": {}}, %s}", extra);
  return tb_config_parse(buf, "t");
}

START_TEST(test_conf)
{
  struct tb_config *cfg =
      parse_with("\"listen\": {\"iscsi\": \"0.0.0.0:3260\"}, \"iscsi\": {\"iqn_prefix\": "
                 "\"iqn.2030-01.lan.cafe\"},"
                 "\"clients\": {\"pc07\": {\"image\": \"demo\", \"iscsi\": {\"initiator\": "
                 "\"iqn.1991-05.com.microsoft:pc07\", \"chap\": {\"user\": \"pc07\", \"secret\": "
                 "\"twelve-chars\"}, \"mutual_chap\": {\"user\": \"tabula\", \"secret\": "
                 "\"other-secret\"}}}}");
  ck_assert_msg(cfg != NULL, "%s", tb_errmsg());
  ck_assert_str_eq(cfg->listen_iscsi, "0.0.0.0:3260");
  ck_assert_str_eq(cfg->iscsi.iqn_prefix, "iqn.2030-01.lan.cafe");
  const struct tb_client_conf *c = tb_config_client(cfg, "pc07");
  ck_assert_ptr_nonnull(c->iscsi);
  ck_assert_str_eq(c->iscsi->initiator, "iqn.1991-05.com.microsoft:pc07");
  ck_assert(c->iscsi->chap.set);
  ck_assert_uint_eq(c->iscsi->chap.secret_len, 12);
  ck_assert_str_eq(c->iscsi->mutual_chap.user, "tabula");
  tb_config_unref(cfg);

  cfg = parse_with("\"clients\": {}");
  ck_assert_ptr_nonnull(cfg);
  ck_assert_str_eq(cfg->iscsi.iqn_prefix, "iqn.2026-12.lan.tabula");
  ck_assert_ptr_null(cfg->listen_iscsi);
  tb_config_unref(cfg);

  static const struct {
    const char *extra, *msg;
  } bad[] = {
      {"\"listen\": {\"iscsi\": \"3260\"}", "listen.iscsi: expected"},
      {"\"listen\": {\"iscsi\": \"x:0\"}", "listen.iscsi: expected"},
      {"\"iscsi\": {\"iqn_prefix\": \"tabula\"}", "iscsi.iqn_prefix:"},
      {"\"iscsi\": {\"prefix\": \"iqn.2026-12.x\"}", "iscsi.prefix: unknown key"},
      {"\"clients\": {\"a\": {\"image\": \"demo\", \"iscsi\": {\"initiator\": \"pc07\"}}}",
       "clients.a.iscsi.initiator:"},
      {"\"clients\": {\"a\": {\"image\": \"demo\", \"iscsi\": {\"chap\": {\"user\": \"u\"}}}}",
       "clients.a.iscsi.chap: needs"},
      {"\"clients\": {\"a\": {\"image\": \"demo\", \"iscsi\": {\"mutual_chap\": {\"user\": \"u\", "
       "\"secret\": \"s\"}}}}",
       "clients.a.iscsi.mutual_chap: needs \"chap\""},
      {"\"clients\": {\"a\": {\"image\": \"demo\", \"iscsi\": {\"chap\": {\"user\": \"u\", "
       "\"secret\": \"same\"}, \"mutual_chap\": {\"user\": \"t\", \"secret\": \"same\"}}}}",
       "must differ"},
      {"\"clients\": {\"a\": {\"image\": \"demo\", \"iscsi\": 1}}", "clients.a.iscsi: expected"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    cfg = parse_with(bad[i].extra);
    ck_assert_msg(cfg == NULL, "accepted: %s", bad[i].extra);
    ck_assert_msg(strstr(tb_errmsg(), bad[i].msg), "%s: got \"%s\"", bad[i].extra, tb_errmsg());
  }
}
END_TEST

int main(void)
{
  Suite *s = suite_create("iscsi");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_crc32c_vectors);
  tcase_add_test(tc, test_pdu_framing);
  tcase_add_test(tc, test_text);
  tcase_add_test(tc, test_binary);
  tcase_add_test(tc, test_conf);
  suite_add_tcase(s, tc);
  return tb_check_run(s);
}
