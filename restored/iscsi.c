/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-restored: supervision of tabula-iscsid, the iSCSI frontend.
 *
 * When listen.iscsi is set the daemon binds it itself (like nbdkit's
 * listeners: the port outlives a crash of the target, so initiators
 * reconnect to the same address at once and a restart never meets
 * EADDRINUSE) and runs tabula-iscsid as a child with the socket handed over
 * by socket activation (LISTEN_PID/LISTEN_FDS), the configuration file and
 * --pidfile STATE/iscsid.pid: "ready" means that file exists, which the
 * target writes once it serves.  The child dies with the daemon
 * (PR_SET_PDEATHSIG), never outlives it.
 *
 * It exits: an "iscsid-exit" event and a restart after the supervision
 * engine's backoff (supervise.c: 0.5 s doubling to 30 s while runs stay short), each an
 * "iscsid-restart" event.  A reload re-binds when listen.iscsi changed, restarts the target when
 * its address or iscsi.program changed, and otherwise sends it SIGHUP (new logins use the new
 * configuration; running sessions go on).  No listen.iscsi: no target, state "off".  The program is
 * iscsi.program, else tabula-iscsid beside tabula-restored, else on PATH.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon.h"
#include "events.h"

#define STOP_WAIT_MS 15000

static struct {
  struct child child;
  char error[1024];
  int fds[TB_MAX_LISTEN];
  int n_fds;
  char *bound;   /* listen.iscsi the sockets were bound for */
  char *program; /* the program of the running child */
} I = {.child.name = "tabula-iscsid"};

static void pidfile_path(const struct daemon *d, char *buf, size_t len)
{
  snprintf(buf, len, "%s/iscsid.pid", d->cfg->state_dir);
}

/* iscsi.program, else tabula-iscsid beside this executable, else PATH. */
static void program_path(const struct tb_config *cfg, char *out, size_t len)
{
  if (cfg->iscsi.program) {
    snprintf(out, len, "%s", cfg->iscsi.program);
    return;
  }
  char self[TB_PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) {
    self[n] = '\0';
    snprintf(out, len, "%s/tabula-iscsid", dirname(self));
    if (access(out, X_OK) == 0)
      return;
  }
  snprintf(out, len, "tabula-iscsid");
}

static bool str_eq(const char *a, const char *b)
{
  return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static void unbind(void)
{
  for (int i = 0; i < I.n_fds; i++)
    close(I.fds[i]);
  I.n_fds = 0;
  free(I.bound);
  I.bound = NULL;
}

static int bind_listen(const struct tb_config *cfg)
{
  if (I.n_fds > 0 && str_eq(I.bound, cfg->listen_iscsi))
    return 0;
  int fds[TB_MAX_LISTEN];
  int n = supervise_bind_tcp("listen.iscsi", cfg->listen_iscsi, fds, TB_MAX_LISTEN);
  if (n == -1)
    return -1;
  unbind();
  memcpy(I.fds, fds, sizeof fds[0] * (size_t)n);
  I.n_fds = n;
  I.bound = strdup(cfg->listen_iscsi);
  return 0;
}

static int start_iscsid(struct daemon *d)
{
  const struct tb_config *cfg = d->cfg;
  char prog[TB_PATH_MAX], pidfile[TB_PATH_MAX];
  program_path(cfg, prog, sizeof prog);
  pidfile_path(d, pidfile, sizeof pidfile);
  const char *config = cfg->path ? cfg->path : d->config_file;
  const char *argv[] = {prog, "--pidfile", pidfile, config, NULL};

  struct child_spawn how = {.argv = argv,
                            .listen_fds = I.fds,
                            .n_listen = I.n_fds,
                            .output_fd = -1,
                            .die_with_parent = true, /* never outlives the daemon */
                            .pidfile = pidfile,
                            .exec_error =
                                "tabula-restored: cannot run tabula-iscsid (set iscsi.program)\n"};
  if (child_start(&I.child, &how) == -1)
    return -1;
  I.error[0] = '\0';
  free(I.program);
  I.program = strdup(prog);
  log_msg("started tabula-iscsid (pid %d) on %s", (int)I.child.pid, cfg->listen_iscsi);
  return 0;
}

static void try_start(struct daemon *d)
{
  if ((I.n_fds == 0 && bind_listen(d->cfg) == -1) || start_iscsid(d) == -1) {
    snprintf(I.error, sizeof I.error, "%s", tb_errmsg());
    log_msg("iscsi: %s; NBD clients are served as before", I.error);
    tb_eventf(d->cfg->state_dir, "error", NULL, "{s:s}", "message", I.error);
    child_backoff(&I.child, 0);
  }
}

static void stop_iscsid(void)
{
  child_stop(&I.child, STOP_WAIT_MS);
}

bool iscsid_reaped(struct daemon *d, pid_t pid, int status)
{
  int64_t ran;
  if (!child_reaped(&I.child, pid, status, &ran))
    return false;
  if (I.child.stopping)
    return true;
  int64_t backoff = child_backoff(&I.child, ran);
  log_msg("tabula-iscsid (pid %d) %s after %.1f s; restarting in %.1f s", (int)pid,
          I.child.last_exit, (double)ran / 1000, (double)backoff / 1000);
  tb_eventf(d->cfg->state_dir, "iscsid-exit", NULL, "{s:I, s:s, s:I, s:I}", "pid", (json_int_t)pid,
            "status", I.child.last_exit, "ran_ms", (json_int_t)ran, "restart_in_ms",
            (json_int_t)backoff);
  return true;
}

static void iscsid_tick(struct daemon *d, int64_t now)
{
  if (!d->cfg->listen_iscsi)
    return;
  if (child_became_ready(&I.child))
    tb_eventf(d->cfg->state_dir, "iscsid-ready", NULL, "{s:I, s:I, s:s}", "pid",
              (json_int_t)I.child.pid, "restarts", (json_int_t)I.child.restarts, "listen",
              d->cfg->listen_iscsi);
  if (child_restart_due(&I.child, now)) {
    I.child.restarts++;
    try_start(d);
    if (I.child.pid)
      tb_eventf(d->cfg->state_dir, "iscsid-restart", NULL, "{s:I, s:I, s:s}", "pid",
                (json_int_t)I.child.pid, "restarts", (json_int_t)I.child.restarts, "previous_exit",
                I.child.last_exit[0] ? I.child.last_exit : "not started");
  }
}

static int64_t iscsid_next_wakeup(const struct daemon *d)
{
  return d->cfg->listen_iscsi ? child_next_wakeup(&I.child) : INT64_MAX;
}

const struct daemon_timer iscsid_timer = {"iscsid", iscsid_tick, iscsid_next_wakeup};

void iscsid_apply(struct daemon *d)
{
  const struct tb_config *cfg = d->cfg;
  if (!cfg->listen_iscsi) {
    if (I.child.pid)
      log_msg("iscsi: listen.iscsi is no longer set: stopping tabula-iscsid");
    iscsid_stop(d);
    return;
  }
  char prog[TB_PATH_MAX];
  program_path(cfg, prog, sizeof prog);
  bool moved = !str_eq(I.bound, cfg->listen_iscsi);
  if (moved) {
    bool had = I.bound != NULL;
    if (bind_listen(cfg) == -1) {
      snprintf(I.error, sizeof I.error, "%s", tb_errmsg());
      log_msg("iscsi: %s%s", I.error,
              had ? "; tabula-iscsid keeps serving the previous address" : "");
      tb_eventf(cfg->state_dir, "error", NULL, "{s:s}", "message", I.error);
      if (!had)
        child_backoff(&I.child, 0);
      return;
    }
  }
  if (I.child.pid && (moved || !str_eq(I.program, prog))) {
    log_msg("iscsi: %s changed: restarting tabula-iscsid",
            moved ? "listen.iscsi" : "iscsi.program");
    stop_iscsid();
    I.child.failures = 0;
    I.child.restarts++;
    try_start(d);
    if (I.child.pid)
      tb_eventf(cfg->state_dir, "iscsid-restart", NULL, "{s:I, s:I, s:s}", "pid",
                (json_int_t)I.child.pid, "restarts", (json_int_t)I.child.restarts, "reason",
                "its settings changed in the configuration");
  } else if (I.child.pid) {
    kill(I.child.pid, SIGHUP); /* new logins use the new configuration */
  } else if (!I.child.restart_at_mono_ms) {
    I.child.failures = 0;
    try_start(d);
  }
}

void iscsid_stop(struct daemon *d)
{
  (void)d;
  stop_iscsid();
  I.child.restart_at_mono_ms = 0;
  unbind();
  free(I.program);
  I.program = NULL;
}

json_t *iscsid_status(struct daemon *d)
{
  const struct tb_config *cfg = d->cfg;
  if (!cfg->listen_iscsi)
    return json_pack("{s:s}", "state", "off");
  const char *state = I.child.pid && I.child.ready ? "running"
                      : I.child.pid                ? "starting"
                      : I.child.restart_at_mono_ms ? "restarting"
                                                   : "stopped";
  json_t *o = json_pack("{s:s, s:s, s:I, s:I, s:s}", "state", state, "listen", cfg->listen_iscsi,
                        "pid", (json_int_t)I.child.pid, "restarts", (json_int_t)I.child.restarts,
                        "iqn_prefix", cfg->iscsi.iqn_prefix);
  if (child_restart_in_ms(&I.child) >= 0)
    json_object_set_new(o, "restart_in_ms",
                        json_integer((json_int_t)child_restart_in_ms(&I.child)));
  if (I.error[0])
    json_object_set_new(o, "error", json_string(I.error));
  if (I.child.last_exit[0])
    json_object_set_new(o, "last_exit", json_string(I.child.last_exit));
  return o;
}
