/* SPDX-License-Identifier: BSD-3-Clause */
/* tests/check-run.h: the end of every Check program's main -- run suite S,
 * print Check's report, exit nonzero if a test failed.  Included by the unit
 * test programs (tests/unit.am), one line each instead of five. */
#ifndef TB_CHECK_RUN_H
#define TB_CHECK_RUN_H

#include <check.h>
#include <stdlib.h>

static inline int tb_check_run(Suite *s)
{
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif
