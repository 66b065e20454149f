/* SPDX-License-Identifier: BSD-3-Clause */
/* plugin-import: publish FILE as the next version of IMAGE in a state dir.
 *
 * The tests' stand-in for `tabulactl image import`: it calls the same
 * tb_store_import() the CLI does, so a test needs no daemon or control socket
 * to set up a store.  Prints the new version number.
 */
#include <config.h>

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "store.h"
#include "util.h"

int main(int argc, char **argv)
{
  if (argc != 4 || !strcmp(argv[1], "--help")) {
    fprintf(argc == 2 ? stdout : stderr, "usage: plugin-import STATE_DIR IMAGE FILE\n");
    return argc == 2 ? 0 : 1;
  }
  uint32_t ver;
  if (tb_store_init(argv[1]) == -1 ||
      tb_store_import(argv[1], argv[2], argv[3], "test", NULL, NULL, &ver) == -1) {
    fprintf(stderr, "plugin-import: %s\n", tb_errmsg());
    return 1;
  }
  printf("%" PRIu32 "\n", ver);
  return 0;
}
