/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-restored: the tabula daemon.
 *
 *   tabula-restored [-c CONFIG]
 *
 * Runs in the foreground (systemd Type=notify, or any supervisor), and:
 *   - supervises nbdkit with the tabula plugin (nbd.c, supervise.c): restarts
 *     it with a growing backoff when it dies, each restart an event; likewise
 *     tabula-iscsid (iscsi.c) and dnsmasq (pxe.c) when configured;
 *   - serves the control socket (server.c, ops.c): JSON lines, mode 0600,
 *     only the daemon's own uid and root (and control_group);
 *   - runs refresh and merge schedules (schedules.c), merges (jobs.c, on a
 *     thread), scheduled pulls (pulls.c), the watchdog (scan.c, health.c,
 *     canary.c), webhooks (webhooks.c, on threads), the Prometheus textfile
 *     (metrics.c);
 *   - follows the event journal (journal.c) for `events --follow`, the
 *     watchdog and metrics.
 * This file is main() and the loop: a poll() over the signals, the control
 * socket, the job pipe and nbdkit's standby listeners, with the timers of
 * every part (daemon.h's daemon_timer) between polls.  SIGHUP or `tabulactl
 * reload` re-read the configuration (config.c); a file with an error is
 * refused and the running configuration stays.  SIGTERM/SIGINT stop the
 * children and exit.
 *
 * The daemon never changes a live client's overlay: actions are written to the
 * client's mailbox and applied by the plugin at the next session start; merges
 * run only on clients whose lock the daemon holds.
 */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <curl/curl.h>

#include "daemon.h"
#include "events.h"
#include "store.h"

#define DEFAULT_CONFIG "/etc/tabula/tabula.json"

/* ---- the loop ------------------------------------------------------------------------ */

/* After SIGCHLD: every child that exited goes to its owner (nbdkit,
 * dnsmasq, tabula-iscsid); others (a helper a part waited for) are of no
 * interest. */
static void reap_children(struct daemon *d)
{
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
    if (!nbd_reaped(d, pid, status) && !pxe_reaped(d, pid, status))
      iscsid_reaped(d, pid, status);
}

static void handle_signals(struct daemon *d)
{
  struct signalfd_siginfo si;
  while (read(d->signal_fd, &si, sizeof si) == (ssize_t)sizeof si) {
    switch (si.ssi_signo) {
    case SIGCHLD:
      reap_children(d);
      break;
    case SIGHUP: {
      daemon_reload(d); /* logged: an error leaves the running configuration */
      break;
    }
    case SIGTERM:
    case SIGINT:
      log_msg("signal %d: stopping", (int)si.ssi_signo);
      d->quit = true;
      break;
    }
  }
}

static int64_t min64(int64_t a, int64_t b)
{
  return a < b ? a : b;
}

/* Every part with work at times of its own, in the order their ticks run
 * (nbdkit's restarts first, the journal's tail and the metrics last, so they
 * see what the others did in the same turn). */
static const struct daemon_timer *const timers[] = {
    &nbd_timer,  &pxe_timer,    &iscsid_timer,  &schedules_timer, &pulls_timer,
    &scan_timer, &server_timer, &journal_timer, &webhooks_timer,  &metrics_timer,
};

static int run(struct daemon *d)
{
  size_t max = 3 + server_max_fds() + TB_MAX_LISTEN;
  struct pollfd *fds = calloc(max, sizeof *fds);
  if (!fds)
    return tb_error_errno("poll set");
  while (!d->quit) {
    int64_t now = tb_mono_ms(); /* see struct daemon_timer */
    int64_t wake = INT64_MAX;
    for (size_t i = 0; i < sizeof timers / sizeof *timers; i++)
      timers[i]->tick(d, now);
    for (size_t i = 0; i < sizeof timers / sizeof *timers; i++)
      if (timers[i]->next)
        wake = min64(wake, timers[i]->next(d));
    int timeout = wake <= now ? 0 : (int)min64(wake - now, 1000);

    fds[0] = (struct pollfd){.fd = d->signal_fd, .events = POLLIN};
    fds[1] = (struct pollfd){.fd = d->listen_fd, .events = POLLIN};
    fds[2] = (struct pollfd){.fd = jobs_fd(), .events = POLLIN};
    size_t n_srv = server_pollfds(fds + 3, max - 3 - TB_MAX_LISTEN);
    /* While nbdkit is down, its listeners: connecting clients are answered. */
    size_t n_sb = nbd_standby_pollfds(d, fds + 3 + n_srv, TB_MAX_LISTEN);
    size_t n = 3 + n_srv + n_sb;
    int r = poll(fds, n, timeout);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      free(fds);
      return tb_error_errno("poll");
    }
    if (fds[0].revents)
      handle_signals(d);
    if (fds[2].revents)
      jobs_drain(d);
    if (n_srv > 0)
      server_io(d, fds + 3, n_srv);
    if (n_sb > 0)
      nbd_standby_io(d, fds + 3 + n_srv, n_sb);
    if (fds[1].revents)
      server_accept(d);
  }
  free(fds);
  return 0;
}

static void usage(FILE *f)
{
  fprintf(f, "usage: tabula-restored [-c CONFIG]\n\n"
             "The tabula daemon: supervises nbdkit with the tabula plugin, serves the control\n"
             "socket used by tabulactl, runs refresh schedules, merges, webhooks and metrics.\n"
             "Runs in the foreground; logs to stderr.\n\n"
             "  -c, --config FILE  configuration (default $TABULA_CONFIG or " DEFAULT_CONFIG ")\n"
             "  -h, --help         this help\n"
             "  -V, --version      print the version\n\n"
             "Signals: SIGHUP reloads the configuration, SIGTERM stops.\n"
             "Exit status: 0 stopped by a signal, 1 could not start.\n");
}

int main(int argc, char **argv)
{
  static const struct option lo[] = {{"config", required_argument, NULL, 'c'},
                                     {"help", no_argument, NULL, 'h'},
                                     {"version", no_argument, NULL, 'V'},
                                     {"foreground", no_argument, NULL, 'f'},
                                     {0}};
  /* The one daemon; every part is handed it. */
  struct daemon daemon = {.nbd.child.name = "nbdkit"};
  struct daemon *d = &daemon;
  int ch;
  d->config_file = getenv("TABULA_CONFIG") ? getenv("TABULA_CONFIG") : DEFAULT_CONFIG;
  while ((ch = getopt_long(argc, argv, "c:hVf", lo, NULL)) != -1) {
    switch (ch) {
    case 'c':
      d->config_file = optarg;
      break;
    case 'h':
      usage(stdout);
      return 0;
    case 'V':
      printf("tabula-restored %s\n", PACKAGE_VERSION);
      return 0;
    case 'f':
      break; /* always in the foreground */
    default:
      usage(stderr);
      return 1;
    }
  }
  if (optind != argc) {
    fprintf(stderr, "tabula-restored: unexpected argument \"%s\"\n", argv[optind]);
    usage(stderr);
    return 1;
  }
  /* Everything the daemon creates (and nbdkit, which inherits it) is its
   * own: the state is private whatever the shell's or the unit's umask. */
  umask(077);
  d->started_ms = tb_now_ms();
  srandom((unsigned)(d->started_ms ^ getpid()));
  d->signal_fd = d->listen_fd = -1;

  d->cfg = config_load(d->config_file, &d->sched, &d->n_sched);
  if (!d->cfg) {
    log_msg("%s", tb_errmsg());
    return 1;
  }
  const char *state = d->cfg->state_dir;
  tb_events_set_max_bytes(d->cfg->events_max_bytes);
  tb_events_set_keep(d->cfg->events_keep);
  if (tb_store_init(state) == -1) {
    log_msg("%s", tb_errmsg());
    return 1;
  }
  config_warn_if_exposed(d->config_file, state);
  if (config_validate(d->cfg, NULL) == -1) {
    log_msg("%s", tb_errmsg());
    return 1;
  }
  schedules_resume(d->cfg, d->sched, d->n_sched);
  int tmp = tb_store_gc(state, false); /* interrupted pulls stay: they resume */
  /* The marks of the scheduled pulls and the webhooks' positions: written by
   * threads that do not run yet. */
  char sub[TB_PATH_MAX];
  if (tb_path(sub, sizeof sub, "%s/schedules", state) == 0)
    tmp += tb_remove_atomic_temps(sub, ".json");
  if (tb_path(sub, sizeof sub, "%s/webhooks", state) == 0)
    tmp += tb_remove_atomic_temps(sub, ".pos");
  if (tmp > 0)
    log_msg("removed %d leftover temporaries of interrupted builds", tmp);
  jobs_recover(d->cfg);
  scan_recover(d->cfg);

  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigaddset(&mask, SIGHUP);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigprocmask(SIG_BLOCK, &mask, NULL);
  signal(SIGPIPE, SIG_IGN);
  d->signal_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  if (d->signal_fd == -1) {
    log_msg("signalfd: %s", strerror(errno));
    return 1;
  }
  curl_global_init(CURL_GLOBAL_DEFAULT);
  if (server_open(d, ops_dispatch) == -1) {
    log_msg("%s", tb_errmsg());
    return 1;
  }
  if (jobs_start() == -1 || scan_start() == -1) {
    log_msg("%s", tb_errmsg());
    server_close(d);
    return 1;
  }
  scan_resume(d->cfg);
  journal_open(d);
  webhooks_configure(d->cfg);
  tb_eventf(state, "daemon-start", NULL, "{s:s, s:I, s:s}", "config", d->config_file, "pid",
            (json_int_t)getpid(), "version", PACKAGE_VERSION);
  if (nbd_listen(d) == -1) {
    log_msg("%s", tb_errmsg());
    tb_eventf(state, "daemon-stop", NULL, "{s:I, s:s}", "pid", (json_int_t)getpid(), "error",
              tb_errmsg());
    webhooks_shutdown();
    server_close(d);
    return 1;
  }
  if (nbd_start(d) == -1)
    log_msg("%s", tb_errmsg()); /* retried with backoff by nbd_timer */
  pxe_apply(d);                 /* dnsmasq failing leaves the NBD side serving */
  iscsid_apply(d);              /* so does tabula-iscsid */
  log_msg("serving %s (control %s, %zu clients)", state, d->control_path, d->cfg->n_clients);
  state = NULL; /* a reload replaces d->cfg and its strings */
  /* READY=1 comes once nbdkit serves (nbd.c), not before. */
  daemon_notify("STATUS=starting nbdkit for %zu clients", d->cfg->n_clients);

  int r = run(d);
  d->quit = true; /* also after a failed loop: the last metrics say the daemon is down */
  daemon_notify("STOPPING=1");
  pxe_stop(d);
  iscsid_stop(d);
  nbd_stop(d);
  nbd_unlisten(d);
  tb_eventf(d->cfg->state_dir, "daemon-stop", NULL, "{s:I}", "pid", (json_int_t)getpid());
  journal_poll(d); /* hand the last events to the webhooks */
  if (d->cfg->metrics_file)
    metrics_write(d); /* d->quit: tabula_up 0, so a scraper sees the daemon stopped */
  scan_stop();
  scan_free();
  webhooks_shutdown();
  server_close(d);
  tb_config_unref(d->cfg);
  free(d->sched);
  tb_vector_free(&d->counters);
  curl_global_cleanup();
  if (r == -1) {
    log_msg("%s", tb_errmsg());
    return 1;
  }
  return 0;
}
