/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer target: export names (lib/export.c), what any NBD peer sends.
 * A name that parses must be one the grammar allows, and printing what was
 * parsed must give back exactly the input (the grammar has one spelling for
 * each export). */
#include <config.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "export.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  char *s = malloc(size + 1);
  if (!s)
    return 0;
  memcpy(s, data, size);
  s[size] = '\0'; /* NBD names are strings: what follows a NUL is not seen */
  struct tb_export e;
  if (tb_export_parse(s, &e) == 0) {
    char back[256];
    switch (e.kind) {
    case TB_EXPORT_CLIENT:
      snprintf(back, sizeof back, e.token[0] ? "%s@boot/%s" : "%s", e.name, e.token);
      break;
    case TB_EXPORT_LIVE:
      snprintf(back, sizeof back, "%s@live", e.name);
      break;
    case TB_EXPORT_OVERLAY:
      snprintf(back, sizeof back, "%s@overlay", e.name);
      break;
    case TB_EXPORT_SESSION:
      snprintf(back, sizeof back, "%s@session/%llu", e.name, (unsigned long long)e.num);
      break;
    case TB_EXPORT_IMAGE:
      snprintf(back, sizeof back, "%s@%llu", e.name, (unsigned long long)e.num);
      break;
    default:
      abort();
    }
    bool name_ok = e.kind == TB_EXPORT_IMAGE ? tb_name_valid(e.name) : tb_client_id_valid(e.name);
    if (!name_ok || strcmp(back, s) != 0)
      abort();
  }
  free(s);
  return 0;
}
