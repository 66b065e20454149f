/* SPDX-License-Identifier: BSD-3-Clause */
/* Unit tests of lib/mailbox's one change API (tb_mailbox_change), through
 * the file it writes:
 *  - one-shot requests are numbered as posted, so the latest wins whatever
 *    its kind ("restore 1" then "rollback" is a rollback, and back), and
 *    several in one change rank rollback, refresh, restore;
 *  - standing settings are set and cleared, the rest left as they are;
 *    a lockdown reason is cut at a UTF-8 boundary; an invalid image name
 *    is refused with the file unchanged;
 *  - the conditions (image, pin) are a compare-and-set: a change whose
 *    condition fails leaves the file as it was, returns 1 and hands back
 *    the mailbox as it is;
 *  - a turn clears the one-shots it applied and keeps those posted since
 *    (a file older than the numbering: all of them);
 *  - a change that changes nothing does not rewrite the file;
 *  - concurrent posters under the lock lose no request. */
#include <config.h>

#include <check.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "clientdir.h"
#include "mailbox.h"
#include "store.h"
#include "util.h"
#include "check-run.h"

static char dir[256], state[300];

static void setup(void)
{
  snprintf(dir, sizeof dir, "%s/tabula-unit-mailbox.XXXXXX",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  ck_assert_ptr_nonnull(mkdtemp(dir));
  snprintf(state, sizeof state, "%s/state", dir);
  ck_assert_msg(tb_store_init(state) == 0, "%s", tb_errmsg());
}

static void teardown(void)
{
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  ck_assert_int_eq(system(cmd), 0);
}

static struct tb_mailbox get(const char *id)
{
  struct tb_mailbox mb;
  ck_assert_msg(tb_mailbox_read(state, id, &mb) == 0, "%s", tb_errmsg());
  return mb;
}

/* What the next turn applies. */
static struct tb_mailbox latest(const char *id)
{
  struct tb_mailbox mb = get(id);
  tb_mailbox_keep_latest(&mb);
  return mb;
}

static void mailbox_path(const char *id, char *buf, size_t len)
{
  ck_assert_int_eq(tb_clientdir_path(state, id, TB_CF_MAILBOX, buf, len), 0);
}

START_TEST(test_latest_request_wins)
{
  ck_assert_int_eq(TB_MAILBOX_CHANGE(state, "pc01", .restore = 1), 0);
  ck_assert_int_eq(TB_MAILBOX_CHANGE(state, "pc01", .rollback = true), 0);
  struct tb_mailbox mb = latest("pc01");
  ck_assert(mb.rollback && !mb.refresh && mb.restore == 0);
  ck_assert_uint_eq(mb.serial, 2);

  ck_assert_int_eq(TB_MAILBOX_CHANGE(state, "pc02", .rollback = true), 0);
  ck_assert_int_eq(TB_MAILBOX_CHANGE(state, "pc02", .restore = 3), 0);
  mb = latest("pc02");
  ck_assert(!mb.rollback && !mb.refresh && mb.restore == 3);

  /* A repeated request is a new one: refresh, rollback, refresh is a refresh. */
  ck_assert_int_eq(TB_MAILBOX_CHANGE(state, "pc03", .refresh = true), 0);
  ck_assert_int_eq(TB_MAILBOX_CHANGE(state, "pc03", .rollback = true), 0);
  ck_assert_int_eq(TB_MAILBOX_CHANGE(state, "pc03", .refresh = true), 0);
  mb = get("pc03");
  ck_assert_uint_eq(mb.refresh_no, 3);
  ck_assert_uint_eq(mb.rollback_no, 2);
  tb_mailbox_keep_latest(&mb);
  ck_assert(mb.refresh && !mb.rollback);

  /* Several in one change: posted rollback, refresh, restore. */
  struct tb_mailbox after;
  struct tb_mailbox_change all = {.rollback = true, .refresh = true, .restore = 2};
  ck_assert_int_eq(tb_mailbox_change(state, "pc04", &all, &after), 0);
  ck_assert_uint_eq(after.rollback_no, 1);
  ck_assert_uint_eq(after.refresh_no, 2);
  ck_assert_uint_eq(after.restore_no, 3);
  mb = latest("pc04");
  ck_assert(mb.restore == 2 && !mb.rollback && !mb.refresh);
}
END_TEST

START_TEST(test_standing_settings)
{
  struct tb_mailbox after;
  struct tb_mailbox_change reimage = {
      .image = "win11", .set_pin = true, .pin = 4, .rollback = true};
  ck_assert_int_eq(tb_mailbox_change(state, "pc01", &reimage, &after), 0);
  ck_assert_str_eq(after.image, "win11");
  ck_assert_uint_eq(after.pin, 4);
  ck_assert(after.rollback);
  /* Only what the change names changes; a pending one-shot stays. */
  ck_assert_int_eq(TB_MAILBOX_CHANGE(state, "pc01", .lockdown = "ransomware"), 0);
  struct tb_mailbox mb = get("pc01");
  ck_assert_str_eq(mb.image, "win11");
  ck_assert_uint_eq(mb.pin, 4);
  ck_assert_str_eq(mb.lockdown, "ransomware");
  ck_assert(mb.rollback);
  /* Clearing: "" and a pin of 0. */
  ck_assert_int_eq(TB_MAILBOX_CHANGE(state, "pc01", .set_pin = true, .pin = 0), 0);
  ck_assert_int_eq(TB_MAILBOX_CHANGE(state, "pc01", .lockdown = "", .image = ""), 0);
  mb = get("pc01");
  ck_assert_str_eq(mb.image, "");
  ck_assert_uint_eq(mb.pin, 0);
  ck_assert_str_eq(mb.lockdown, "");
  ck_assert(mb.rollback);
  ck_assert_uint_eq(mb.serial, 1);
}
END_TEST

START_TEST(test_lockdown_cut_at_utf8)
{
  /* 254 ASCII bytes then "é" (2 bytes): 256 bytes do not fit in 255. */
  char why[300];
  memset(why, 'a', 254);
  strcpy(why + 254, "\xc3\xa9");
  ck_assert_int_eq(TB_MAILBOX_CHANGE(state, "pc01", .lockdown = why), 0);
  struct tb_mailbox mb = get("pc01");
  ck_assert_uint_eq(strlen(mb.lockdown), 254);
}
END_TEST

START_TEST(test_invalid_image_refused)
{
  ck_assert_int_eq(TB_MAILBOX_CHANGE(state, "pc01", .image = "win11"), 0);
  ck_assert_int_eq(TB_MAILBOX_CHANGE(state, "pc01", .image = "../etc", .rollback = true), -1);
  ck_assert_msg(strstr(tb_errmsg(), "not a valid image name") != NULL, "%s", tb_errmsg());
  ck_assert_int_eq(TB_MAILBOX_CHANGE(state, "pc01", .restore = -2), -1);
  struct tb_mailbox mb = get("pc01");
  ck_assert_str_eq(mb.image, "win11");
  ck_assert(!mb.rollback);
  ck_assert_uint_eq(mb.serial, 0);
}
END_TEST

START_TEST(test_conditions)
{
  ck_assert_int_eq(TB_MAILBOX_CHANGE(state, "pc01", .set_pin = true, .pin = 5), 0);
  /* The pin is not 0: the hold of a pull does not apply. */
  struct tb_mailbox after;
  struct tb_mailbox_change hold = {
      .set_pin = true, .pin = 9, .if_pin = true, .pin_was = 0, .if_image = "", .refresh = true};
  ck_assert_int_eq(tb_mailbox_change(state, "pc01", &hold, &after), 1);
  ck_assert_uint_eq(after.pin, 5);
  ck_assert(!after.refresh);
  struct tb_mailbox mb = get("pc01");
  ck_assert_uint_eq(mb.pin, 5);
  ck_assert(!mb.refresh);
  /* The pin is what the caller read, but the image is not. */
  ck_assert_int_eq(TB_MAILBOX_CHANGE(state, "pc01", .image = "win11"), 0);
  hold.pin_was = 5;
  ck_assert_int_eq(tb_mailbox_change(state, "pc01", &hold, &after), 1);
  ck_assert_str_eq(after.image, "win11");
  /* Both hold. */
  hold.if_image = "win11";
  ck_assert_int_eq(tb_mailbox_change(state, "pc01", &hold, &after), 0);
  ck_assert_uint_eq(after.pin, 9);
  ck_assert(after.refresh);
  mb = get("pc01");
  ck_assert_uint_eq(mb.pin, 9);
  ck_assert(mb.refresh);
}
END_TEST

START_TEST(test_turn_clears_what_it_applied)
{
  ck_assert_int_eq(TB_MAILBOX_CHANGE(state, "pc01", .restore = 2), 0);
  ck_assert_int_eq(TB_MAILBOX_CHANGE(state, "pc01", .rollback = true), 0);
  /* The turn reads the mailbox here ... */
  uint64_t seen = get("pc01").serial;
  /* ... and a refresh arrives while it applies the rollback. */
  ck_assert_int_eq(TB_MAILBOX_CHANGE(state, "pc01", .refresh = true), 0);
  ck_assert_int_eq(TB_MAILBOX_CHANGE(state, "pc01", .applied = true, .applied_serial = seen), 0);
  struct tb_mailbox mb = get("pc01");
  ck_assert(!mb.rollback && mb.restore == 0);
  ck_assert(mb.refresh);
  ck_assert_uint_eq(mb.refresh_no, 3);
  ck_assert_uint_eq(mb.serial, 3);

  /* A file older than the numbering: the turn read serial 0 and clears all. */
  char path[TB_PATH_MAX];
  ck_assert_int_eq(tb_clientdir_mkdir(state, "pc02", path, sizeof path), 0);
  mailbox_path("pc02", path, sizeof path);
  const char *old = "{\"rollback\": true, \"restore\": 4, \"pin\": 2}";
  ck_assert_int_eq(tb_write_file_atomic(path, old, strlen(old), 0600), 0);
  mb = get("pc02");
  ck_assert_uint_eq(mb.serial, 0);
  ck_assert_int_eq(TB_MAILBOX_CHANGE(state, "pc02", .applied = true, .applied_serial = 0), 0);
  mb = get("pc02");
  ck_assert(!mb.rollback && mb.restore == 0);
  ck_assert_uint_eq(mb.pin, 2);
}
END_TEST

START_TEST(test_no_change_no_rewrite)
{
  char path[TB_PATH_MAX];
  mailbox_path("pc01", path, sizeof path);
  /* Nothing to change in no mailbox: none is written. */
  ck_assert_int_eq(TB_MAILBOX_CHANGE(state, "pc01", .lockdown = ""), 0);
  ck_assert_int_eq(access(path, F_OK), -1);
  ck_assert_int_eq(TB_MAILBOX_CHANGE(state, "pc01", .set_pin = true, .pin = 3), 0);
  struct stat a, b;
  ck_assert_int_eq(stat(path, &a), 0);
  ck_assert_int_eq(TB_MAILBOX_CHANGE(state, "pc01", .set_pin = true, .pin = 3), 0);
  ck_assert_int_eq(stat(path, &b), 0);
  ck_assert_msg(a.st_ino == b.st_ino, "an unchanged mailbox was rewritten");
  ck_assert_int_eq(TB_MAILBOX_CHANGE(state, "pc01", .set_pin = true, .pin = 4), 0);
  ck_assert_int_eq(stat(path, &b), 0);
  ck_assert_msg(a.st_ino != b.st_ino, "a changed mailbox was not rewritten atomically");
}
END_TEST

START_TEST(test_concurrent_posts_lose_nothing)
{
  enum { WRITERS = 4, POSTS = 25 };
  pid_t pids[WRITERS];
  for (int w = 0; w < WRITERS; w++) {
    pids[w] = fork();
    ck_assert_int_ge(pids[w], 0);
    if (pids[w] == 0) {
      for (int i = 0; i < POSTS; i++)
        if (TB_MAILBOX_CHANGE(state, "pc01", .rollback = w % 2 == 0, .refresh = w % 2 == 1,
                              .set_pin = true, .pin = (uint32_t)(w + 1)) != 0)
          _exit(1);
      _exit(0);
    }
  }
  for (int w = 0; w < WRITERS; w++) {
    int st;
    ck_assert_int_eq(waitpid(pids[w], &st, 0), pids[w]);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "writer %d failed", w);
  }
  struct tb_mailbox mb = get("pc01");
  ck_assert_uint_eq(mb.serial, WRITERS * POSTS);
  ck_assert(mb.rollback && mb.refresh);
  ck_assert(mb.pin >= 1 && mb.pin <= WRITERS);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("mailbox");
  TCase *tc = tcase_create("change");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_latest_request_wins);
  tcase_add_test(tc, test_standing_settings);
  tcase_add_test(tc, test_lockdown_cut_at_utf8);
  tcase_add_test(tc, test_invalid_image_refused);
  tcase_add_test(tc, test_conditions);
  tcase_add_test(tc, test_turn_clears_what_it_applied);
  tcase_add_test(tc, test_no_change_no_rewrite);
  tcase_add_test(tc, test_concurrent_posts_lose_nothing);
  suite_add_tcase(s, tc);
  return tb_check_run(s);
}
