/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz target of the iSCSI PDU parser: every byte string through
 * isc_pdu_parse() under each framing (digests on and off, small and large
 * data limits), and every parsed data segment through isc_text_parse() and
 * each value through isc_decode_binary(), as the login does.  Built two ways:
 *
 *   - with clang -fsanitize=fuzzer (libFuzzer provides main; tests/iscsi-fuzz.sh
 *     builds it when clang is installed): coverage-guided;
 *   - otherwise with the built-in main below: N inputs mutated from seed
 *     PDUs with a fixed-seed generator (reproducible), for make check under
 *     ASan/UBSan.  Usage: iscsi-fuzz [ITERATIONS]
 */
#include <config.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pdu.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static const struct isc_wire wires[] = {
      {false, false, 8192}, {true, false, 8192}, {true, true, 262144}, {false, true, 512}};
  for (size_t w = 0; w < sizeof wires / sizeof wires[0]; w++) {
    size_t off = 0;
    for (int k = 0; k < 8 && off < size; k++) { /* a stream of PDUs */
      struct isc_pdu p;
      size_t used = 0;
      enum isc_parse r = isc_pdu_parse(data + off, size - off, &wires[w], &p, &used);
      if (r != ISC_PARSE_OK && r != ISC_PARSE_DDIGEST)
        break;
      if (used == 0 || used > size - off)
        abort(); /* the parser claimed bytes it was not given */
      if (r == ISC_PARSE_OK && p.data_len) {
        if (p.data < data + off || p.data + p.data_len > data + size)
          abort();
        char *text = malloc(p.data_len);
        if (!text)
          return 0;
        memcpy(text, p.data, p.data_len);
        struct isc_kv kv[ISC_TEXT_MAX_PAIRS];
        int n = isc_text_parse(text, p.data_len, kv, ISC_TEXT_MAX_PAIRS);
        for (int i = 0; i < n; i++) {
          uint8_t bin[1024];
          if (strlen(kv[i].key) > ISC_KEY_MAX || strlen(kv[i].value) > ISC_VALUE_MAX)
            abort();
          (void)isc_decode_binary(kv[i].value, bin, sizeof bin);
        }
        free(text);
      }
      off += used;
    }
  }
  return 0;
}

#ifndef ISC_LIBFUZZER
static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint32_t next(void)
{
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (uint32_t)rng;
}

static size_t seed_pdu(uint8_t *buf, size_t cap, int kind)
{
  static const char login[] = "InitiatorName=iqn.2024-01.x:y\0SessionType=Normal\0"
                              "TargetName=iqn.2026-12.lan.tabula:pc01\0AuthMethod=CHAP,None\0"
                              "CHAP_R=0x00112233445566778899aabbccddeeff\0CHAP_C=0bAAECAwQ=\0";
  memset(buf, 0, cap);
  buf[0] = (uint8_t)(kind == 0 ? 0x43 : kind == 1 ? 0x01 : 0x05);
  buf[1] = 0x87;
  uint32_t dlen = kind == 0 ? (uint32_t)sizeof login - 1 : kind == 1 ? 512 : 0;
  isc_put24(buf + 5, dlen);
  if (kind == 0)
    memcpy(buf + ISC_BHS_LEN, login, dlen);
  return ISC_BHS_LEN + ((dlen + 3) & ~3u);
}

int main(int argc, char **argv)
{
  long iterations = argc > 1 ? atol(argv[1]) : 200000;
  static uint8_t buf[8192];
  for (long i = 0; i < iterations; i++) {
    size_t n = seed_pdu(buf, sizeof buf, (int)(i % 3));
    int flips = 1 + (int)(next() % 8);
    for (int f = 0; f < flips; f++) {
      uint32_t r = next();
      switch (r % 4) {
      case 0:
        buf[(r >> 8) % n] ^= (uint8_t)(1u << ((r >> 4) % 8));
        break;
      case 1:
        buf[(r >> 8) % n] = (uint8_t)(r >> 24);
        break;
      case 2: /* lengths: AHS words, data segment length */
        buf[4 + (r >> 8) % 4] = (uint8_t)(r >> 16);
        break;
      default: /* a NUL or '=' somewhere in the text */
        buf[ISC_BHS_LEN + (r >> 8) % (n - ISC_BHS_LEN + 1 > 1 ? n - ISC_BHS_LEN : 1)] =
            (r & 0x100) ? '=' : 0;
        break;
      }
    }
    size_t len = n - (next() % 4 == 0 ? next() % n : 0); /* sometimes truncated */
    if (next() % 8 == 0) {
      len = next() % sizeof buf; /* or followed by noise */
      for (size_t k = n; k < len; k++)
        buf[k] = (uint8_t)next();
    }
    LLVMFuzzerTestOneInput(buf, len);
  }
  printf("iscsi-fuzz: %ld inputs, no crash\n", iterations);
  return 0;
}
#endif
