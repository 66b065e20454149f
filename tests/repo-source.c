/* SPDX-License-Identifier: BSD-3-Clause */
/* repo-source: run one source of the config's "pull" section, as the daemon's
 * schedule does (lib/repo.h tb_repo_pull_source_run).  Prints the source's
 * schedule and the number of images that failed; exits 0 only if none did. */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>

#include "conf.h"
#include "repo.h"

int main(int argc, char **argv)
{
  if (argc != 3) {
    fprintf(stderr, "usage: repo-source CONFIG INDEX\n");
    return 2;
  }
  struct tb_config *cfg = tb_config_load(argv[1]);
  if (!cfg) {
    fprintf(stderr, "repo-source: %s\n", tb_errmsg());
    return 1;
  }
  size_t i = (size_t)strtoul(argv[2], NULL, 10);
  int r = 1;
  if (i >= tb_repo_pull_sources(cfg->pull)) {
    fprintf(stderr, "repo-source: the config has %zu pull sources\n",
            tb_repo_pull_sources(cfg->pull));
    goto out;
  }
  const char *when = tb_repo_pull_source_when(cfg->pull, i);
  printf("when: %s\nmake_current: %s\n", when ? when : "(manual)",
         tb_repo_pull_source_make_current(cfg->pull, i) ? "true" : "false");
  int failed = tb_repo_pull_source_run(cfg, i, NULL, NULL);
  if (failed == -1)
    fprintf(stderr, "repo-source: %s\n", tb_errmsg());
  else
    printf("failed: %d\n", failed);
  r = failed == 0 ? 0 : 1;
out:
  tb_config_unref(cfg);
  return r;
}
