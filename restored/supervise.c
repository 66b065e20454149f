/* tabula-restored: supervision of nbdkit.
 *
 * nbdkit runs as a child in the foreground (-f) with --exit-with-parent, so it
 * never outlives the daemon (a kill -9 of the daemon takes nbdkit with it, and
 * the next daemon can bind the sockets again).  Its stderr is the daemon's.
 *
 * When it exits the daemon records an "nbdkit-exit" event and starts it again
 * after a backoff that doubles with every run shorter than STABLE_MS (0.5 s,
 * 1 s, 2 s ... up to 30 s) and resets after a stable run.  Each start after
 * the first is an "nbdkit-restart" event.  "ready" means its unix socket
 * accepts connections (or its TCP port, for the second instance that serves
 * "listen.tcp": nbdkit cannot serve a unix socket and TCP at once).
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon.h"
#include "events.h"

#define BACKOFF_MIN_MS 500
#define BACKOFF_MAX_MS 30000
#define STABLE_MS 60000
#define STOP_WAIT_MS 10000

static void nbd_socket_path(const struct tb_config *cfg, char *buf, size_t len)
{
  if (cfg->listen_unix)
    snprintf(buf, len, "%s", cfg->listen_unix);
  else
    snprintf(buf, len, "%s/nbd.sock", cfg->state_dir);
}

static bool str_eq(const char *a, const char *b)
{
  return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

bool nbdkit_config_changed(const struct tb_config *a, const struct tb_config *b)
{
  return !str_eq(a->listen_unix, b->listen_unix) || !str_eq(a->listen_tcp, b->listen_tcp) ||
         !str_eq(a->nbdkit, b->nbdkit) || !str_eq(a->plugin, b->plugin) ||
         !str_eq(a->tls_certificates, b->tls_certificates) || a->tls_require != b->tls_require;
}

/* Remove a stale unix socket left by an nbdkit that was killed (never a file
 * that is not a socket). */
static void remove_stale_socket(const char *path)
{
  struct stat st;
  if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
    unlink(path);
}

static void tcp_host_port(const char *listen, char *host, size_t hlen, char *port, size_t plen)
{
  const char *colon = strrchr(listen, ':');
  size_t hl = colon ? (size_t)(colon - listen) : 0;
  if (hl >= hlen)
    hl = hlen - 1;
  memcpy(host, listen, hl);
  host[hl] = '\0';
  if (host[0] == '[' && hl > 2) { /* [::1]:10809 */
    memmove(host, host + 1, hl - 2);
    host[hl - 2] = '\0';
  }
  snprintf(port, plen, "%s", colon ? colon + 1 : listen);
}

/* nbdkit writes its -P pidfile once it listens: that is "ready". */
static void pidfile_path(const struct daemon *d, const struct nbdkit_instance *in, char *buf,
                         size_t len)
{
  snprintf(buf, len, "%s/nbdkit%s.pid", d->cfg->state_dir, in->tcp ? "-tcp" : "");
}

static bool instance_listening(const struct daemon *d, const struct nbdkit_instance *in)
{
  char path[4200];
  pidfile_path(d, in, path, sizeof path);
  struct stat st;
  return stat(path, &st) == 0 && st.st_size > 0;
}

static int start_instance(struct daemon *d, struct nbdkit_instance *in)
{
  const struct tb_config *cfg = d->cfg;
  char sock[4096], cfgarg[4200], host[256] = "", port[16] = "", tls[4200] = "", pidfile[4200];
  snprintf(cfgarg, sizeof cfgarg, "config=%s", cfg->path ? cfg->path : d->config_file);
  const char *argv[32];
  int n = 0;
  argv[n++] = cfg->nbdkit ? cfg->nbdkit : "nbdkit";
  argv[n++] = "-f";
  argv[n++] = "--exit-with-parent";
  pidfile_path(d, in, pidfile, sizeof pidfile);
  unlink(pidfile);
  argv[n++] = "-P";
  argv[n++] = pidfile;
  if (in->tcp) {
    tcp_host_port(cfg->listen_tcp, host, sizeof host, port, sizeof port);
    if (host[0] && strcmp(host, "0.0.0.0") != 0 && strcmp(host, "*") != 0) {
      argv[n++] = "-i";
      argv[n++] = host;
    }
    argv[n++] = "-p";
    argv[n++] = port;
  } else {
    nbd_socket_path(cfg, sock, sizeof sock);
    remove_stale_socket(sock);
    argv[n++] = "--unix";
    argv[n++] = sock;
  }
  if (cfg->tls_certificates) {
    snprintf(tls, sizeof tls, "--tls-certificates=%s", cfg->tls_certificates);
    argv[n++] = cfg->tls_require ? "--tls=require" : "--tls=on";
    argv[n++] = tls;
  }
  argv[n++] = cfg->plugin ? cfg->plugin : "tabula";
  argv[n++] = cfgarg;
  argv[n] = NULL;

  pid_t pid = fork();
  if (pid == -1)
    return tb_error_errno("cannot start nbdkit");
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    setpgid(0, 0); /* a ^C on the daemon's terminal goes to the daemon, which stops nbdkit */
    execvp(argv[0], (char **)argv);
    fprintf(stderr, "tabula-restored: cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  in->pid = pid;
  in->ready = false;
  in->started_ms = tb_now_ms();
  in->restart_at_ms = 0;
  log_msg("started nbdkit (pid %d) on %s", (int)pid, in->tcp ? cfg->listen_tcp : sock);
  return 0;
}

int nbdkit_start(struct daemon *d)
{
  memset(d->nbdkit.inst, 0, sizeof d->nbdkit.inst);
  d->nbdkit.n = d->cfg->listen_tcp ? 2 : 1;
  d->nbdkit.inst[1].tcp = true;
  int r = 0;
  for (int i = 0; i < d->nbdkit.n; i++)
    if (start_instance(d, &d->nbdkit.inst[i]) == -1) {
      d->nbdkit.inst[i].restart_at_ms = tb_now_ms() + BACKOFF_MIN_MS;
      r = -1;
    }
  return r;
}

static void describe_status(int status, char *buf, size_t len)
{
  if (WIFEXITED(status))
    snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
  else if (WIFSIGNALED(status))
    snprintf(buf, len, "killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
  else
    snprintf(buf, len, "stopped (status %d)", status);
}

static struct nbdkit_instance *instance_of(struct daemon *d, pid_t pid)
{
  for (int i = 0; i < d->nbdkit.n; i++)
    if (d->nbdkit.inst[i].pid == pid)
      return &d->nbdkit.inst[i];
  return NULL;
}

void nbdkit_reap(struct daemon *d)
{
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    struct nbdkit_instance *in = instance_of(d, pid);
    if (!in)
      continue;
    int64_t now = tb_now_ms();
    int64_t ran = now - in->started_ms;
    describe_status(status, in->last_exit, sizeof in->last_exit);
    in->pid = 0;
    in->ready = false;
    if (d->nbdkit.stopping)
      continue;
    in->failures = ran >= STABLE_MS ? 0 : in->failures + 1;
    int64_t backoff = BACKOFF_MIN_MS;
    for (int i = 1; i < in->failures && backoff < BACKOFF_MAX_MS; i++)
      backoff *= 2;
    if (backoff > BACKOFF_MAX_MS)
      backoff = BACKOFF_MAX_MS;
    if (ran >= STABLE_MS)
      backoff = 0;
    in->restart_at_ms = now + backoff;
    log_msg("nbdkit (pid %d) %s after %.1f s; restarting in %.1f s", (int)pid, in->last_exit,
            (double)ran / 1000, (double)backoff / 1000);
    tb_eventf(d->cfg->state_dir, "nbdkit-exit", NULL, "{s:I, s:s, s:s, s:I, s:I}", "pid",
              (json_int_t)pid, "listen", in->tcp ? "tcp" : "unix", "status", in->last_exit,
              "ran_ms", (json_int_t)ran, "restart_in_ms", (json_int_t)backoff);
  }
}

void nbdkit_tick(struct daemon *d, int64_t now)
{
  if (d->nbdkit.stopping)
    return;
  for (int i = 0; i < d->nbdkit.n; i++) {
    struct nbdkit_instance *in = &d->nbdkit.inst[i];
    if (in->pid && !in->ready && instance_listening(d, in)) {
      in->ready = true;
      tb_eventf(d->cfg->state_dir, "nbdkit-ready", NULL, "{s:I, s:s, s:I}", "pid",
                (json_int_t)in->pid, "listen", in->tcp ? "tcp" : "unix", "restarts",
                (json_int_t)d->nbdkit.restarts);
    }
    if (!in->pid && in->restart_at_ms && now >= in->restart_at_ms) {
      d->nbdkit.restarts++;
      if (start_instance(d, in) == -1) {
        log_msg("%s", tb_errmsg());
        in->restart_at_ms = now + BACKOFF_MAX_MS;
        continue;
      }
      tb_eventf(d->cfg->state_dir, "nbdkit-restart", NULL, "{s:I, s:s, s:I, s:s}", "pid",
                (json_int_t)in->pid, "listen", in->tcp ? "tcp" : "unix", "restarts",
                (json_int_t)d->nbdkit.restarts, "previous_exit", in->last_exit);
    }
  }
}

int64_t nbdkit_next_wakeup(const struct daemon *d)
{
  int64_t next = INT64_MAX;
  for (int i = 0; i < d->nbdkit.n; i++) {
    const struct nbdkit_instance *in = &d->nbdkit.inst[i];
    if (in->pid && !in->ready)
      next = tb_now_ms() + 50; /* watch for the socket */
    else if (!in->pid && in->restart_at_ms && in->restart_at_ms < next)
      next = in->restart_at_ms;
  }
  return next;
}

/* SIGTERM every instance, wait (reaping) up to STOP_WAIT_MS, then SIGKILL. */
static void stop_all(struct daemon *d)
{
  int64_t deadline = tb_now_ms() + STOP_WAIT_MS;
  for (int i = 0; i < d->nbdkit.n; i++)
    if (d->nbdkit.inst[i].pid)
      kill(d->nbdkit.inst[i].pid, SIGTERM);
  for (int i = 0; i < d->nbdkit.n; i++) {
    struct nbdkit_instance *in = &d->nbdkit.inst[i];
    while (in->pid) {
      int status;
      pid_t r = waitpid(in->pid, &status, WNOHANG);
      if (r == in->pid || (r == -1 && errno == ECHILD)) {
        if (r == in->pid)
          describe_status(status, in->last_exit, sizeof in->last_exit);
        break;
      }
      if (tb_now_ms() > deadline) {
        log_msg("nbdkit (pid %d) did not stop within %d s of SIGTERM; killing it", (int)in->pid,
                STOP_WAIT_MS / 1000);
        kill(in->pid, SIGKILL);
        waitpid(in->pid, &status, 0);
        break;
      }
      usleep(20000);
    }
    in->pid = 0;
    in->ready = false;
    in->restart_at_ms = 0;
  }
}

void nbdkit_stop(struct daemon *d)
{
  d->nbdkit.stopping = true;
  stop_all(d);
}

void nbdkit_restart(struct daemon *d, const char *why)
{
  log_msg("restarting nbdkit: %s", why);
  d->nbdkit.stopping = true;
  stop_all(d);
  d->nbdkit.stopping = false;
  d->nbdkit.restarts++;
  if (nbdkit_start(d) == -1)
    log_msg("%s", tb_errmsg());
  tb_eventf(d->cfg->state_dir, "nbdkit-restart", NULL, "{s:I, s:s}", "restarts",
            (json_int_t)d->nbdkit.restarts, "reason", why);
}
