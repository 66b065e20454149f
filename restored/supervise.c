/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-restored: the children the daemon supervises, one engine for all
 * of them: nbdkit (nbd.c), tabula-iscsid (iscsi.c) and dnsmasq (pxe.c).
 *
 * A child starts with a clean signal mask, SIGPIPE at its default and a
 * process group of its own (a ^C on the daemon's terminal goes to the daemon,
 * which stops it); if asked, with PR_SET_PDEATHSIG so it never outlives the
 * daemon (nbdkit has --exit-with-parent of its own), with the listening
 * sockets the daemon bound handed over by socket activation (fds 3, 4, ...,
 * LISTEN_FDS and LISTEN_PID: the systemd protocol nbdkit and tabula-iscsid
 * speak), and with stdin /dev/null and its output to a log file.  "Ready"
 * means it wrote its pidfile, which those programs do once they serve (a
 * child without one is ready once started).
 *
 * When it exits of its own accord its owner records the event and calls
 * child_backoff: the restart comes after a delay that doubles with every run
 * shorter than STABLE_MS (0.5 s, 1 s, 2 s ... up to 30 s) and resets after a
 * stable one.  A stop is SIGTERM, a wait of the owner's choosing, SIGKILL.
 * Which events, log lines and restarts a child gets is its owner's business;
 * this file keeps none of them.
 *
 * Also here: binding "ADDR:PORT" listeners (listen.tcp, listen.iscsi).
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon.h"

#define STABLE_MS 60000

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

/* Bind every address "ADDR:PORT" resolves to into FDS; returns how many, or
 * -1 with a message naming KEY (the configuration key, "listen.tcp").  ADDR "*" is every address of
 * both families (each socket IPv6-only beside the IPv4 one); "0.0.0.0" is every IPv4 address and
 * "::" every IPv6 one (and IPv4-mapped ones where the system allows), as for other servers. */
int supervise_bind_tcp(const char *key, const char *listen_tcp, int *fds, int max)
{
  char host[256], port[16];
  tcp_host_port(listen_tcp, host, sizeof host, port, sizeof port);
  bool any = !host[0] || strcmp(host, "*") == 0;
  struct addrinfo hints = {
      .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
  struct addrinfo *res;
  int e = getaddrinfo(any ? NULL : host, port, &hints, &res);
  if (e != 0)
    return tb_error("%s \"%s\": %s (expected \"ADDR:PORT\", e.g. \"0.0.0.0:10809\")", key,
                    listen_tcp, gai_strerror(e));
  int n = 0, saved = 0;
  for (struct addrinfo *ai = res; ai && n < max; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd == -1)
      continue;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ai->ai_family == AF_INET6 && any)
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == -1 || listen(fd, SOMAXCONN) == -1) {
      saved = errno;
      close(fd);
      if (ai->ai_family == AF_INET6 && any && saved == EADDRNOTAVAIL)
        continue; /* no IPv6 on this machine: IPv4 alone */
      n = -n - 1; /* remember the failure */
      break;
    }
    fds[n++] = fd;
  }
  freeaddrinfo(res);
  if (n <= 0) {
    for (int i = 0; i < -n - 1; i++)
      close(fds[i]);
    errno = saved ? saved : EADDRNOTAVAIL;
    const char *hint = errno == EADDRINUSE      ? "another server has the port: stop it or change"
                       : errno == EADDRNOTAVAIL ? "the address is not one of this machine's: "
                                                  "change"
                       : errno == EACCES        ? "a port below 1024 needs root or "
                                                  "CAP_NET_BIND_SERVICE, or change"
                                                : "change";
    return tb_error_errno("%s \"%s\": cannot listen there (%s %s)", key, listen_tcp, hint, key);
  }
  return n;
}

/* Decimal digits of V into BUF (async-signal-safe, for the child). */
static void put_decimal(char *buf, long v)
{
  char tmp[24];
  int n = 0;
  do
    tmp[n++] = (char)('0' + v % 10);
  while ((v /= 10) > 0);
  while (n > 0)
    *buf++ = tmp[--n];
  *buf = '\0';
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

static int64_t backoff_after(int *failures, int64_t ran_ms)
{
  *failures = ran_ms >= STABLE_MS ? 0 : *failures + 1;
  if (ran_ms >= STABLE_MS)
    return 0;
  int64_t backoff = SUPERVISE_BACKOFF_MIN_MS;
  for (int i = 1; i < *failures && backoff < SUPERVISE_BACKOFF_MAX_MS; i++)
    backoff *= 2;
  return backoff > SUPERVISE_BACKOFF_MAX_MS ? SUPERVISE_BACKOFF_MAX_MS : backoff;
}

static void wait_child(pid_t pid, int64_t deadline_mono_ms, const char *name, char *last_exit,
                       size_t len)
{
  for (;;) {
    int status;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid || (r == -1 && errno == ECHILD)) {
      if (r == pid)
        describe_status(status, last_exit, len);
      return;
    }
    if (tb_mono_ms() > deadline_mono_ms) {
      log_msg("%s (pid %d) did not stop in time after SIGTERM; killing it", name, (int)pid);
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return;
    }
    usleep(20000);
  }
}

static void stop_child(pid_t pid, int64_t deadline_mono_ms, const char *name, char *last_exit,
                       size_t len)
{
  kill(pid, SIGTERM);
  wait_child(pid, deadline_mono_ms, name, last_exit, len);
}

int child_start(struct child *c, const struct child_spawn *how)
{
  if (how->n_listen > TB_MAX_LISTEN)
    return tb_error("cannot start %s: %d listening sockets (at most %d)", c->name, how->n_listen,
                    TB_MAX_LISTEN);
  if (how->pidfile) {
    snprintf(c->pidfile, sizeof c->pidfile, "%s", how->pidfile);
    unlink(c->pidfile);
  } else {
    c->pidfile[0] = '\0';
  }
  /* The environment with LISTEN_FDS and room for LISTEN_PID, which only the
   * child knows: built here, since after fork only async-signal-safe calls. */
  extern char **environ;
  size_t nenv = 0;
  while (environ[nenv])
    nenv++;
  char **envp = calloc(nenv + 3, sizeof *envp);
  static char listen_pid[32], listen_fds[32];
  if (!envp)
    return tb_error_errno("cannot start %s", how->argv[0]);
  size_t k = 0;
  for (size_t i = 0; i < nenv; i++)
    if (strncmp(environ[i], "LISTEN_", 7) != 0)
      envp[k++] = environ[i];
  if (how->n_listen > 0) {
    snprintf(listen_fds, sizeof listen_fds, "LISTEN_FDS=%d", how->n_listen);
    strcpy(listen_pid, "LISTEN_PID=");
    envp[k++] = listen_fds;
    envp[k++] = listen_pid;
  }
  int fds[TB_MAX_LISTEN], nfds = how->n_listen, out = how->output_fd;
  if (nfds > 0) /* dnsmasq has none (and no listen_fds) */
    memcpy(fds, how->listen_fds, sizeof fds[0] * (size_t)nfds);
  bool pdeath = how->die_with_parent;
  const char *exec_error = how->exec_error;
  pid_t parent = getpid();

  pid_t pid = fork();
  if (pid == -1) {
    free(envp);
    return tb_error_errno("cannot start %s", how->argv[0]);
  }
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    setpgid(0, 0);
    if (pdeath) {
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (getppid() != parent)
        _exit(0); /* the daemon is already gone */
    }
    if (out != -1) {
      int null = open("/dev/null", O_RDONLY);
      if (null == -1 || dup2(null, 0) == -1 || dup2(out, 1) == -1 || dup2(out, 2) == -1)
        _exit(126);
    }
    /* The listeners become fds 3, 4, ...: first out of the way (above any
     * target), then into place, without close-on-exec. */
    for (int i = 0; i < nfds; i++)
      fds[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3 + TB_MAX_LISTEN);
    for (int i = 0; i < nfds; i++)
      if (fds[i] == -1 || dup2(fds[i], 3 + i) == -1)
        _exit(126);
    if (nfds > 0)
      put_decimal(listen_pid + strlen("LISTEN_PID="), (long)getpid());
    execvpe(how->argv[0], (char **)how->argv, envp);
    ssize_t ignored = write(2, exec_error, strlen(exec_error));
    (void)ignored;
    _exit(127);
  }
  free(envp);
  c->pid = pid;
  c->ready = !c->pidfile[0];
  c->started_mono_ms = tb_mono_ms();
  c->restart_at_mono_ms = 0;
  return 0;
}

bool child_reaped(struct child *c, pid_t pid, int status, int64_t *ran_ms)
{
  if (!pid || pid != c->pid)
    return false;
  *ran_ms = tb_mono_ms() - c->started_mono_ms;
  describe_status(status, c->last_exit, sizeof c->last_exit);
  c->pid = 0;
  c->ready = false;
  return true;
}

int64_t child_backoff(struct child *c, int64_t ran_ms)
{
  int64_t backoff = backoff_after(&c->failures, ran_ms);
  c->restart_at_mono_ms = tb_mono_ms() + backoff;
  return backoff;
}

bool child_became_ready(struct child *c)
{
  struct stat st;
  if (!c->pid || c->ready || stat(c->pidfile, &st) == -1 || st.st_size == 0)
    return false;
  c->ready = true;
  return true;
}

bool child_restart_due(const struct child *c, int64_t now)
{
  return !c->pid && c->restart_at_mono_ms && now >= c->restart_at_mono_ms;
}

int64_t child_next_wakeup(const struct child *c)
{
  if (c->pid && !c->ready)
    return tb_mono_ms() + 50; /* watch for the pidfile */
  if (!c->pid && c->restart_at_mono_ms)
    return c->restart_at_mono_ms;
  return INT64_MAX;
}

int64_t child_restart_in_ms(const struct child *c)
{
  if (c->pid || !c->restart_at_mono_ms)
    return -1;
  int64_t left = c->restart_at_mono_ms - tb_mono_ms();
  return left > 0 ? left : 0;
}

void child_stop(struct child *c, int64_t wait_ms)
{
  if (!c->pid)
    return;
  bool was_stopping = c->stopping;
  c->stopping = true;
  stop_child(c->pid, tb_mono_ms() + wait_ms, c->name, c->last_exit, sizeof c->last_exit);
  c->pid = 0;
  c->ready = false;
  c->stopping = was_stopping;
}
