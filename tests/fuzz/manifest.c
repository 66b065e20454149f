/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer target: version manifests (lib/manifest.c tb_manifest_parse), read
 * from the state directory and from image repositories.  A manifest that
 * parses must dump to text that parses again to the same dump. */
#include <config.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct tb_manifest *m = tb_manifest_parse((const char *)data, size, "fuzz");
  if (!m)
    return 0;
  char *text = tb_manifest_dump(m);
  if (text) {
    struct tb_manifest *again = tb_manifest_parse(text, strlen(text), "dump");
    char *text2 = again ? tb_manifest_dump(again) : NULL;
    if (!again || !text2 || strcmp(text, text2) != 0)
      abort();
    free(text2);
    tb_manifest_free(again);
  }
  free(text);
  tb_manifest_free(m);
  return 0;
}
