/* SPDX-License-Identifier: BSD-3-Clause */
/* Unit tests of the state directory's defences (issue 14, items 6, 8, 9),
 * through the APIs every program uses (so each fails on a tabula without
 * the defence):
 *  - tb_write_file_atomic never writes through a planted temporary name
 *    (the old PATH.tmp.PID with O_CREAT|O_TRUNC followed a symlink there);
 *  - tb_remove_atomic_temps removes the temporaries a cut leaves of atomic
 *    writes and nothing else (with suffix "" it once removed every file);
 *  - files and directories it creates are private whatever the umask;
 *  - tb_store_init refuses a state directory, or a directory in it, that
 *    others may write to or another user owns, saying how to fix it;
 *  - the event journal is never appended through a symlink;
 *  - the journal keeps several rotated generations (a flood of events
 *    does not wipe out the history in one rotation);
 *  - testing whether a client is in a session never takes its lock, and
 *    taking it is patient with a process that only tests it (a probe in
 *    the wrong instant refused a booting client as busy). */
#include <config.h>

#include <check.h>
#include <stdbool.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "events.h"
#include "session.h"
#include "store.h"
#include "util.h"
#include "check-run.h"

static char dir[256];

static void setup(void)
{
  snprintf(dir, sizeof dir, "%s/tabula-unit-state.XXXXXX",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void)
{
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  ck_assert_int_eq(system(cmd), 0);
}

static char *slurp(const char *path)
{
  FILE *f = fopen(path, "r");
  ck_assert_msg(f != NULL, "cannot read %s", path);
  char *t = calloc(1, 1 << 20);
  size_t n = fread(t, 1, (1 << 20) - 1, f);
  t[n] = '\0';
  fclose(f);
  return t;
}

START_TEST(test_atomic_planted_tmp)
{
  char victim[512], path[512], planted[600];
  snprintf(victim, sizeof victim, "%s/victim", dir);
  snprintf(path, sizeof path, "%s/mailbox.json", dir);
  FILE *f = fopen(victim, "w");
  fputs("precious", f);
  fclose(f);
  /* What an attacker who guessed the temporary name would plant. */
  snprintf(planted, sizeof planted, "%s.tmp.%ld", path, (long)getpid());
  ck_assert_int_eq(symlink(victim, planted), 0);
  ck_assert_int_eq(tb_write_file_atomic(path, "new", 3, 0600), 0);
  char *t = slurp(victim);
  ck_assert_str_eq(t, "precious");
  free(t);
  t = slurp(path);
  ck_assert_str_eq(t, "new");
  free(t);
}
END_TEST

START_TEST(test_remove_atomic_temps)
{
  static const char *const keep[] = {"unknown.json",  "hosts",        "a.tmp",      "b.tmp.12345",
                                     "c.tmp.1234567", "d.tmp.abc!ef", ".tmp.abcdef"};
  static const char *const temps[] = {"unknown.json.tmp.aB3dE9", "linux.tmp.004211"};
  char p[600];
  for (size_t i = 0; i < sizeof keep / sizeof *keep; i++) {
    snprintf(p, sizeof p, "%s/%s", dir, keep[i]);
    ck_assert_int_eq(tb_write_file_atomic(p, "x", 1, 0600), 0);
  }
  for (size_t i = 0; i < sizeof temps / sizeof *temps; i++) {
    snprintf(p, sizeof p, "%s/%s", dir, temps[i]);
    ck_assert_int_eq(tb_write_file_atomic(p, "x", 1, 0600), 0);
  }
  ck_assert_uint_eq(tb_atomic_temp("unknown.json.tmp.aB3dE9"), strlen("unknown.json"));
  ck_assert_uint_eq(tb_atomic_temp("unknown.json"), 0);
  ck_assert_int_eq(tb_remove_atomic_temps(dir, ".pos"), 0);
  ck_assert_int_eq(tb_remove_atomic_temps(dir, ".json"), 1);
  ck_assert_int_eq(tb_remove_atomic_temps(dir, ""), 1);
  for (size_t i = 0; i < sizeof keep / sizeof *keep; i++) {
    snprintf(p, sizeof p, "%s/%s", dir, keep[i]);
    ck_assert_msg(access(p, F_OK) == 0, "%s was removed", keep[i]);
  }
}
END_TEST

START_TEST(test_private_whatever_the_umask)
{
  mode_t old = umask(0);
  char state[512], p[600];
  snprintf(state, sizeof state, "%s/state", dir);
  ck_assert_msg(tb_store_init(state) == 0, "%s", tb_errmsg());
  snprintf(p, sizeof p, "%s/f", state);
  ck_assert_int_eq(tb_write_file_atomic(p, "x", 1, 0600), 0);
  umask(old);
  struct stat st;
  const char *dirs[] = {"", "/images", "/clients"};
  for (size_t i = 0; i < 3; i++) {
    snprintf(p, sizeof p, "%s%s", state, dirs[i]);
    ck_assert_int_eq(stat(p, &st), 0);
    ck_assert_msg((st.st_mode & 077) == 0, "%s is mode %o", p, st.st_mode & 07777);
  }
  snprintf(p, sizeof p, "%s/f", state);
  ck_assert_int_eq(stat(p, &st), 0);
  ck_assert_msg((st.st_mode & 07777) == 0600, "%s is mode %o", p, st.st_mode & 07777);
}
END_TEST

START_TEST(test_state_writable_by_others)
{
  char state[512], p[600];
  snprintf(state, sizeof state, "%s/state", dir);
  ck_assert_int_eq(mkdir(state, 0700), 0);
  ck_assert_int_eq(chmod(state, 0777), 0);
  ck_assert_int_eq(tb_store_init(state), -1);
  ck_assert_msg(strstr(tb_errmsg(), "chmod") != NULL, "%s", tb_errmsg());
  /* A directory inside it. */
  ck_assert_int_eq(chmod(state, 0700), 0);
  ck_assert_msg(tb_store_init(state) == 0, "%s", tb_errmsg());
  snprintf(p, sizeof p, "%s/clients/pc01", state);
  ck_assert_int_eq(mkdir(p, 0700), 0);
  ck_assert_int_eq(chmod(p, 0757), 0);
  ck_assert_int_eq(tb_store_init(state), -1);
  ck_assert_msg(strstr(tb_errmsg(), "pc01") != NULL, "%s", tb_errmsg());
}
END_TEST

START_TEST(test_state_owned_by_another_user)
{
  if (geteuid() != 0)
    return; /* only root can give a directory away */
  char state[512];
  snprintf(state, sizeof state, "%s/state", dir);
  ck_assert_int_eq(mkdir(state, 0700), 0);
  ck_assert_int_eq(chown(state, 65534, 65534), 0);
  ck_assert_int_eq(tb_store_init(state), -1);
  ck_assert_msg(strstr(tb_errmsg(), "chown") != NULL, "%s", tb_errmsg());
}
END_TEST

START_TEST(test_journal_symlink)
{
  char victim[512], journal[512];
  snprintf(victim, sizeof victim, "%s/root-only", dir);
  snprintf(journal, sizeof journal, "%s/events.jsonl", dir);
  FILE *f = fopen(victim, "w");
  fputs("precious\n", f);
  fclose(f);
  ck_assert_int_eq(symlink(victim, journal), 0);
  ck_assert_int_eq(tb_eventf(dir, "test", NULL, "{s:i}", "n", 1), -1);
  char *t = slurp(victim);
  ck_assert_str_eq(t, "precious\n");
  free(t);
}
END_TEST

START_TEST(test_journal_generations)
{
  tb_events_set_max_bytes(4096);
  char p[600];
  /* About 130 bytes an event: 150 events are four or five rotations. */
  for (int i = 0; i < 150; i++)
    ck_assert_int_eq(tb_eventf(dir, "test", NULL, "{s:i, s:s}", "n", i, "pad",
                               "................................................"),
                     0);
  snprintf(p, sizeof p, "%s/events.jsonl.2", dir);
  ck_assert_msg(access(p, F_OK) == 0, "no second generation %s", p);
  /* The first event is still in some generation (5 kept by default). */
  bool found = false;
  for (int g = 1; g <= 5 && !found; g++) {
    snprintf(p, sizeof p, "%s/events.jsonl.%d", dir, g);
    if (access(p, F_OK) == 0) {
      char *t = slurp(p);
      found = strstr(t, "\"n\":0,") != NULL;
      free(t);
    }
  }
  ck_assert_msg(found, "the rotations lost the first event");
  tb_events_set_max_bytes(TB_EVENTS_DEFAULT_MAX);
}
END_TEST

static volatile bool probing;

static void *probe_loop(void *arg)
{
  (void)arg;
  while (probing)
    (void)tb_client_locked(dir, "pc01");
  return NULL;
}

START_TEST(test_client_lock_probe)
{
  ck_assert_int_eq(tb_store_init(dir), 0);
  int fd = tb_client_lock(dir, "pc01", false);
  ck_assert_msg(fd >= 0, "%s", tb_errmsg());
  tb_client_unlock(fd);
  ck_assert(!tb_client_locked(dir, "pc01"));

  /* Held by another process: seen; released: not. */
  int ready[2], go[2];
  ck_assert_int_eq(pipe(ready), 0);
  ck_assert_int_eq(pipe(go), 0);
  pid_t pid = fork();
  if (pid == 0) {
    int cfd = tb_client_lock(dir, "pc01", false);
    char c = cfd >= 0 ? 'y' : 'n';
    if (write(ready[1], &c, 1) != 1 || read(go[0], &c, 1) != 1)
      _exit(1);
    _exit(0);
  }
  char c;
  ck_assert_int_eq(read(ready[0], &c, 1), 1);
  ck_assert_int_eq(c, 'y');
  usleep((TB_FLOCK_SNAPSHOT_MS + 5) * 1000); /* past the probe's last snapshot */
  ck_assert(tb_client_locked(dir, "pc01"));
  ck_assert_int_eq(write(go[1], "x", 1), 1);
  int status;
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  usleep((TB_FLOCK_SNAPSHOT_MS + 5) * 1000);
  ck_assert(!tb_client_locked(dir, "pc01"));

  /* Probes while sessions start and end: no start is refused. */
  pthread_t t;
  probing = true;
  ck_assert_int_eq(pthread_create(&t, NULL, probe_loop, NULL), 0);
  int refused = 0;
  for (int i = 0; i < 2000; i++) {
    int f = tb_client_lock(dir, "pc01", false);
    if (f < 0)
      refused++;
    tb_client_unlock(f);
  }
  probing = false;
  pthread_join(t, NULL);
  ck_assert_msg(refused == 0, "%d of 2000 session starts refused as busy by a mere probe", refused);

  /* Someone else tests with flock(LOCK_SH) for an instant: still taken. */
  pid = fork();
  if (pid == 0) {
    char p[512];
    snprintf(p, sizeof p, "%s/clients/pc01/lock", dir);
    int pfd = open(p, O_RDONLY);
    if (pfd == -1 || flock(pfd, LOCK_SH) == -1 || write(ready[1], "y", 1) != 1)
      _exit(1);
    usleep(10 * 1000);
    _exit(0);
  }
  ck_assert_int_eq(read(ready[0], &c, 1), 1);
  fd = tb_client_lock(dir, "pc01", false);
  ck_assert_msg(fd >= 0, "a lock tested for 10 ms refused the session: %s", tb_errmsg());
  tb_client_unlock(fd);
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("state");
  TCase *tc = tcase_create("state");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_atomic_planted_tmp);
  tcase_add_test(tc, test_remove_atomic_temps);
  tcase_add_test(tc, test_private_whatever_the_umask);
  tcase_add_test(tc, test_state_writable_by_others);
  tcase_add_test(tc, test_state_owned_by_another_user);
  tcase_add_test(tc, test_journal_symlink);
  tcase_add_test(tc, test_journal_generations);
  tcase_add_test(tc, test_client_lock_probe);
  suite_add_tcase(s, tc);
  return tb_check_run(s);
}
