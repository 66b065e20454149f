/* SPDX-License-Identifier: BSD-3-Clause */
/* Unit tests of lib/clientdir, the one owner of the client directory's
 * layout: the paths it gives are the layout every tabula before it wrote
 * (a client's first disk in clients/ID, a further disk in
 * clients/ID/disks/DISK), numbered paths (retained sessions, pruned ones,
 * quarantined overlays, a good overlay being saved) are the directory joined
 * with the number, an entry a walk lists is its directory joined with one
 * name, an invalid id, entry or out-of-range file is refused, the temporaries
 * a crash leaves are told from the files, and a disk's directory is made
 * with private parents. */
#include <config.h>

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "clientdir.h"
#include "util.h"
#include "check-run.h"

#define S "/srv/state"

static void expect(int r, const char *got, const char *want)
{
  ck_assert_msg(r == 0, "%s: %s", want, tb_errmsg());
  ck_assert_str_eq(got, want);
}

START_TEST(test_layout)
{
  char p[TB_PATH_MAX];
  expect(tb_clientdir_root(S, p, sizeof p), p, S "/clients");
  expect(tb_clientdir_path(S, "pc01", TB_CF_DIR, p, sizeof p), p, S "/clients/pc01");
  expect(tb_clientdir_path(S, "pc01", TB_CF_OVERLAY, p, sizeof p), p, S "/clients/pc01/overlay");
  expect(tb_clientdir_path(S, "pc01", TB_CF_MAILBOX, p, sizeof p), p,
         S "/clients/pc01/mailbox.json");
  expect(tb_clientdir_path(S, "pc01", TB_CF_GOOD_OVERLAY, p, sizeof p), p,
         S "/clients/pc01/good/overlay");
  expect(tb_clientdir_path(S, "pc01", TB_CF_QUARANTINE_SEQ, p, sizeof p), p,
         S "/clients/pc01/quarantine/seq");
  expect(tb_clientdir_path(S, "pc01", TB_CF_DISKS_LOCK, p, sizeof p), p,
         S "/clients/pc01/disks.lock");
  expect(tb_clientdir_path(S, "pc01/data", TB_CF_DIR, p, sizeof p), p,
         S "/clients/pc01/disks/data");
  expect(tb_clientdir_path(S, "pc01/data", TB_CF_SESSION_JSON, p, sizeof p), p,
         S "/clients/pc01/disks/data/session.json");
  expect(tb_clientdir_session(S, "pc01", 17, p, sizeof p), p, S "/clients/pc01/sessions/17");
  expect(tb_clientdir_session(S, "pc01/data", 2, p, sizeof p), p,
         S "/clients/pc01/disks/data/sessions/2");
  expect(tb_clientdir_trashed(S, "pc01", 4, p, sizeof p), p, S "/clients/pc01/trash/4");
  expect(tb_clientdir_trashed(S, "pc01/data", 4, p, sizeof p), p,
         S "/clients/pc01/disks/data/trash/4");
  expect(tb_clientdir_entry(S, "pc01", TB_CF_DIR, "overlay.tmp.Ab3dE9", p, sizeof p), p,
         S "/clients/pc01/overlay.tmp.Ab3dE9");
  expect(tb_clientdir_entry(S, "pc01/data", TB_CF_SESSIONS, "12", p, sizeof p), p,
         S "/clients/pc01/disks/data/sessions/12");
  expect(tb_clientdir_good_pending(S, "pc01", 9, p, sizeof p), p, S "/clients/pc01/good/overlay.9");
  expect(tb_clientdir_quarantined(S, "pc01", 3, TB_CQ_DIR, p, sizeof p), p,
         S "/clients/pc01/quarantine/3");
  expect(tb_clientdir_quarantined(S, "pc01", 3, TB_CQ_OVERLAY, p, sizeof p), p,
         S "/clients/pc01/quarantine/3/overlay");
  expect(tb_clientdir_quarantined(S, "pc01", 3, TB_CQ_NOTE, p, sizeof p), p,
         S "/clients/pc01/quarantine/3/note.json");
}
END_TEST

START_TEST(test_refused)
{
  char p[TB_PATH_MAX];
  const char *bad[] = {"", "..", "../x", "pc01/", "/pc01", "pc01/a/b", "pc 01"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    ck_assert_msg(tb_clientdir_path(S, bad[i], TB_CF_OVERLAY, p, sizeof p) == -1, "%s", bad[i]);
    ck_assert_msg(strstr(tb_errmsg(), "invalid client name") != NULL, "%s", tb_errmsg());
  }
  ck_assert_int_eq(tb_clientdir_path(S, NULL, TB_CF_OVERLAY, p, sizeof p), -1);
  ck_assert_int_eq(tb_clientdir_path(S, "pc01", (enum tb_cf)999, p, sizeof p), -1);
  ck_assert_int_eq(tb_clientdir_quarantined(S, "pc01", 1, (enum tb_cq)7, p, sizeof p), -1);
  /* An entry is one name: a walk's readdir never gives more, so more is a bug. */
  const char *not_names[] = {"", ".", "..", "a/b", "../seq"};
  for (size_t i = 0; i < sizeof not_names / sizeof *not_names; i++)
    ck_assert_msg(tb_clientdir_entry(S, "pc01", TB_CF_TRASH, not_names[i], p, sizeof p) == -1, "%s",
                  not_names[i]);
  ck_assert_int_eq(tb_clientdir_entry(S, "pc01", TB_CF_TRASH, NULL, p, sizeof p), -1);
  ck_assert_int_eq(tb_clientdir_entry(S, "../x", TB_CF_TRASH, "1", p, sizeof p), -1);
  char small[24];
  ck_assert_int_eq(tb_clientdir_path(S, "pc01", TB_CF_OVERLAY, small, sizeof small), -1);
}
END_TEST

START_TEST(test_temporaries)
{
  ck_assert_int_eq(tb_clientdir_temp("overlay.restore"), TB_CT_OVERLAY);
  ck_assert_int_eq(tb_clientdir_temp("overlay.tmp.Ab3dE9"), TB_CT_OVERLAY);
  ck_assert_int_eq(tb_clientdir_temp("overlay.next.tmp.Ab3dE9"), TB_CT_OVERLAY);
  ck_assert_int_eq(tb_clientdir_temp("session.json.tmp.Ab3dE9"), TB_CT_RECORD);
  ck_assert_int_eq(tb_clientdir_temp("seq.tmp.Ab3dE9"), TB_CT_RECORD);
  ck_assert_int_eq(tb_clientdir_temp("mailbox.json.tmp.Ab3dE9"), TB_CT_MAILBOX);
  const char *kept[] = {"overlay",      "overlay.next", "overlay.good",
                        "session.json", "seq.tmp.abc",  "mailbox.json.tmp",
                        "health.json",  "sessions",     "seq.tmp.Ab3dE9x"};
  for (size_t i = 0; i < sizeof kept / sizeof *kept; i++)
    ck_assert_msg(tb_clientdir_temp(kept[i]) == TB_CT_NONE, "%s", kept[i]);
}
END_TEST

START_TEST(test_mkdir_disk_private)
{
  char dir[256], state[300], p[TB_PATH_MAX];
  snprintf(dir, sizeof dir, "%s/tabula-unit-clientdir.XXXXXX",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  ck_assert_ptr_nonnull(mkdtemp(dir));
  snprintf(state, sizeof state, "%s/state", dir);
  mode_t old = umask(0);
  int r = tb_clientdir_mkdir(state, "pc01/data", p, sizeof p);
  umask(old);
  ck_assert_msg(r == 0, "%s", tb_errmsg());
  const char *subs[] = {"/clients/pc01", "/clients/pc01/disks", "/clients/pc01/disks/data"};
  for (size_t i = 0; i < 3; i++) {
    char q[TB_PATH_MAX];
    struct stat st;
    snprintf(q, sizeof q, "%s%s", state, subs[i]);
    ck_assert_msg(stat(q, &st) == 0 && S_ISDIR(st.st_mode), "%s", q);
    ck_assert_msg((st.st_mode & 077) == 0, "%s is mode %o", q, st.st_mode & 07777);
  }
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  ck_assert_int_eq(system(cmd), 0);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("clientdir");
  TCase *tc = tcase_create("clientdir");
  tcase_add_test(tc, test_layout);
  tcase_add_test(tc, test_refused);
  tcase_add_test(tc, test_temporaries);
  tcase_add_test(tc, test_mkdir_disk_private);
  suite_add_tcase(s, tc);
  return tb_check_run(s);
}
