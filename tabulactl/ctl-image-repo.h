/* SPDX-License-Identifier: BSD-3-Clause */
/* tabulactl image publish / image pull: the command-line side of lib/repo.h.
 *
 * tabulactl's command table (image_commands in tabulactl.c) parses their
 * options and checks their operand counts, as for every other command; these
 * take what it parsed.  They return the process exit status: 0 done, 1
 * failed (message on stderr), 2 usage error (message on stderr; the caller
 * adds the usage line).
 */
#ifndef TB_CTL_IMAGE_REPO_H
#define TB_CTL_IMAGE_REPO_H

#include <stdbool.h>

#include "conf.h"

/* tabulactl image publish IMAGE[@N] DIR */
int ctl_image_publish(const char *ref, const char *dir, bool json, bool quiet,
                      const struct tb_config *cfg);

/* image pull's options as given, NULL when absent: lib/repo's defaults and
 * the config's "pull" section supply the rest. */
struct ctl_pull_options {
  const char *from, *version, *rate_limit, *parallel, *connect_timeout, *stall_timeout, *ca_file;
  bool json, quiet;
};

/* tabulactl image pull IMAGE [--from URL] [--version N] [--rate-limit RATE] ... */
int ctl_image_pull(const char *image, const struct ctl_pull_options *opts,
                   const struct tb_config *cfg);

#endif
