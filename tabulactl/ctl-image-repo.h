/* SPDX-License-Identifier: BSD-3-Clause */
/* tabulactl image publish / image pull: the command-line side of lib/repo.h.
 *
 * Both take argv as main() would for the subcommand: argv[0] is the
 * subcommand's name ("publish" or "pull"), options and operands follow.
 * They return the process exit status: 0 done, 1 failed (message on stderr),
 * 2 usage error.
 */
#ifndef TB_CTL_IMAGE_REPO_H
#define TB_CTL_IMAGE_REPO_H

#include "conf.h"

/* tabulactl image publish IMAGE[@N] DIR */
int ctl_image_publish(int argc, char **argv, const struct tb_config *cfg);
/* tabulactl image pull IMAGE [--from URL] [--version N] [--rate-limit RATE] ... */
int ctl_image_pull(int argc, char **argv, const struct tb_config *cfg);

#endif
