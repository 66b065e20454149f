/* SPDX-License-Identifier: BSD-3-Clause */
/* Unit tests of lib/export.c, the export-name grammar every NBD peer can
 * feed (tests/fuzz-export.sh fuzzes the same function): each form parses to
 * its kind, name, number and token, and the near misses are refused. */
#include <config.h>

#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "export.h"
#include "check-run.h"

static struct tb_export e;

START_TEST(test_forms)
{
  ck_assert_int_eq(tb_export_parse("pc01", &e), 0);
  ck_assert_int_eq(e.kind, TB_EXPORT_CLIENT);
  ck_assert_str_eq(e.name, "pc01");
  ck_assert_str_eq(e.token, "");
  ck_assert(!tb_export_is_admin(e.kind));
  ck_assert_int_eq(tb_export_parse("pc01@boot/Ab-9", &e), 0);
  ck_assert_int_eq(e.kind, TB_EXPORT_CLIENT);
  ck_assert_str_eq(e.token, "Ab-9");
  ck_assert_int_eq(tb_export_parse("pc01@live", &e), 0);
  ck_assert_int_eq(e.kind, TB_EXPORT_LIVE);
  ck_assert(tb_export_is_admin(e.kind));
  ck_assert_int_eq(tb_export_parse("pc01@overlay", &e), 0);
  ck_assert_int_eq(e.kind, TB_EXPORT_OVERLAY);
  ck_assert_int_eq(tb_export_parse("pc01@session/12", &e), 0);
  ck_assert_int_eq(e.kind, TB_EXPORT_SESSION);
  ck_assert_uint_eq(e.num, 12);
  ck_assert_int_eq(tb_export_parse("win11@3", &e), 0);
  ck_assert_int_eq(e.kind, TB_EXPORT_IMAGE);
  ck_assert_str_eq(e.name, "win11");
  ck_assert_uint_eq(e.num, 3);
  ck_assert_int_eq(tb_export_parse("win11@9999999999999999999", &e), 0);
  ck_assert_uint_eq(e.num, 9999999999999999999ull);
}
END_TEST

START_TEST(test_refused)
{
  static const char *bad[] = {
      "",
      "@live",
      "pc01@",
      "pc01@LIVE",
      "pc01@live ",
      "pc01@overlay/",
      "pc01@session/",
      "pc01@session/0",
      "pc01@session/01",
      "pc01@session/1x",
      "pc01@session/-1",
      "win11@0",
      "win11@+3",
      "win11@ 3",
      "win11@3 ",
      "win11@10000000000000000000",
      "pc01@boot/",
      "pc01@boot/a b",
      "pc01@boot/a/b",
      "../etc@live",
      "pc01/",
      "/games",
      "pc01//games",
      "pc01/games/x",
      "pc01/.games",
      "pc01/ga mes",
      "win11/games@3",
      "pc01/games@",
      "pc01/games@boot/",
      "pc01/games@session/0",
      ".pc01",
      "pc01@live@live",
      "pc01\n@live",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    ck_assert_msg(tb_export_parse(bad[i], &e) == -1, "\"%s\" must be refused", bad[i]);
  char longname[200];
  memset(longname, 'a', sizeof longname);
  longname[TB_NAME_MAX] = '\0';
  ck_assert_int_eq(tb_export_parse(longname, &e), 0);
  longname[TB_NAME_MAX] = 'a';
  longname[TB_NAME_MAX + 1] = '\0';
  ck_assert_int_eq(tb_export_parse(longname, &e), -1);
  char token[120] = "pc01@boot/";
  memset(token + 10, 'x', 65);
  token[75] = '\0';
  ck_assert_int_eq(tb_export_parse(token, &e), -1); /* a token of 65 characters */
  token[74] = '\0';
  ck_assert_int_eq(tb_export_parse(token, &e), 0);
  ck_assert_uint_eq(strlen(e.token), 64);
}
END_TEST

/* A client's further disk: ID/DISK in every client form (conf.h "disks"). */
START_TEST(test_disks)
{
  ck_assert_int_eq(tb_export_parse("pc01/games", &e), 0);
  ck_assert_int_eq(e.kind, TB_EXPORT_CLIENT);
  ck_assert_str_eq(e.name, "pc01/games");
  ck_assert_str_eq(e.token, "");
  ck_assert_int_eq(tb_export_parse("pc01/games@boot/5f3e-a1", &e), 0);
  ck_assert_int_eq(e.kind, TB_EXPORT_CLIENT);
  ck_assert_str_eq(e.name, "pc01/games");
  ck_assert_str_eq(e.token, "5f3e-a1");
  ck_assert_int_eq(tb_export_parse("pc01/games@live", &e), 0);
  ck_assert_int_eq(e.kind, TB_EXPORT_LIVE);
  ck_assert_str_eq(e.name, "pc01/games");
  ck_assert_int_eq(tb_export_parse("pc01/games@overlay", &e), 0);
  ck_assert_int_eq(e.kind, TB_EXPORT_OVERLAY);
  ck_assert_int_eq(tb_export_parse("pc01/games@session/7", &e), 0);
  ck_assert_int_eq(e.kind, TB_EXPORT_SESSION);
  ck_assert_str_eq(e.name, "pc01/games");
  ck_assert_uint_eq(e.num, 7);
  /* 64 characters in all, the '/' included. */
  char id[200];
  memset(id, 'a', sizeof id);
  id[10] = '/';
  id[TB_NAME_MAX] = '\0';
  ck_assert_int_eq(tb_export_parse(id, &e), 0);
  ck_assert_str_eq(e.name, id);
  id[TB_NAME_MAX] = 'a';
  id[TB_NAME_MAX + 1] = '\0';
  ck_assert_int_eq(tb_export_parse(id, &e), -1);
  ck_assert(tb_client_id_valid("pc01/games"));
  ck_assert(!tb_client_id_valid("pc01/games/x"));
  ck_assert(!tb_client_id_valid("pc01/"));
}
END_TEST

int main(void)
{
  Suite *s = suite_create("export");
  TCase *tc = tcase_create("export");
  tcase_add_test(tc, test_forms);
  tcase_add_test(tc, test_refused);
  tcase_add_test(tc, test_disks);
  suite_add_tcase(s, tc);
  return tb_check_run(s);
}
