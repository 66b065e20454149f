/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer target: a repository's index.json (lib/repo-index.c), fetched
 * from any HTTP(S) or S3 server.  An index that parses must dump to text
 * that parses again to the same dump. */
#include "../../lib/repo-index.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct repo_index ix;
  if (repo_parse_index((const char *)data, size, "demo", "fuzz", &ix) == -1)
    return 0;
  char *text = repo_dump_index("demo", &ix);
  if (text) {
    struct repo_index again;
    if (repo_parse_index(text, strlen(text), "demo", "dump", &again) == -1)
      abort();
    char *text2 = repo_dump_index("demo", &again);
    if (!text2 || strcmp(text, text2) != 0)
      abort();
    free(text2);
    repo_index_free(&again);
  }
  free(text);
  repo_index_free(&ix);
  return 0;
}
