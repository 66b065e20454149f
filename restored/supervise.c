/* tabula-restored: supervision of nbdkit.
 *
 * nbdkit runs as a child in the foreground (-f) with --exit-with-parent, so it
 * never outlives the daemon (a kill -9 of the daemon takes nbdkit with it, and
 * the next daemon can bind the sockets again).  Its stderr is the daemon's.
 *
 * When it exits the daemon records an "nbdkit-exit" event and starts it again
 * after a backoff that doubles with every run shorter than STABLE_MS (0.5 s,
 * 1 s, 2 s ... up to 30 s) and resets after a stable run.  Each start after
 * the first is an "nbdkit-restart" event.  "ready" means nbdkit wrote its
 * pidfile, which it does once it serves.
 *
 * One nbdkit serves every listener.  The daemon binds the unix socket and
 * the TCP addresses itself and hands them over by socket activation
 * (LISTEN_PID/LISTEN_FDS, the systemd protocol nbdkit speaks), so a client
 * reached over TCP and over the unix socket is one session of one overlay in
 * one process, and the sockets outlive nbdkit: after a crash clients
 * reconnect to the same addresses at once, and a restart can never fail
 * with EADDRINUSE.  A listener that cannot be bound is an error at start
 * that names it; on a reload it keeps the old sockets and says so.
 *
 * While nbdkit is down (between an exit and its restart) the daemon answers
 * on those sockets itself (standby below): a client gets an NBD error that
 * says so within a moment, rather than hanging in the backlog until nbdkit
 * is back.  One short-lived thread per such connection (at most
 * STANDBY_MAX), which touches no daemon state.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon.h"
#include "events.h"

#define BACKOFF_MIN_MS 500
#define BACKOFF_MAX_MS 30000
#define STABLE_MS 60000
#define STOP_WAIT_MS 10000
#define STALE_WAIT_MS 5000

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
         !str_eq(a->tls_certificates, b->tls_certificates) || a->tls_require != b->tls_require ||
         a->listen_max_connections != b->listen_max_connections;
}

/* True if a server listens on the unix socket SA (a full backlog, EAGAIN on
 * a non-blocking connect, is a server too). */
static bool unix_socket_in_use(const struct sockaddr_un *sa)
{
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  bool in_use = fd != -1 && (connect(fd, (const struct sockaddr *)sa, sizeof *sa) == 0 ||
                             errno == EAGAIN || errno == EINPROGRESS);
  if (fd != -1)
    close(fd);
  return in_use;
}

/* Remove a stale unix socket left by a daemon that was killed (never a file
 * that is not a socket, nor one another server still answers on).  The
 * nbdkit of a daemon killed a moment ago may still answer while it exits
 * (--exit-with-parent): it gets STALE_WAIT_MS to go. */
static int remove_stale_socket(const struct sockaddr_un *sa)
{
  struct stat st;
  if (lstat(sa->sun_path, &st) == -1 || !S_ISSOCK(st.st_mode))
    return 0;
  int64_t deadline = tb_now_ms() + STALE_WAIT_MS;
  bool in_use;
  while ((in_use = unix_socket_in_use(sa)) && tb_now_ms() < deadline)
    usleep(100 * 1000);
  if (in_use)
    return tb_error("listen.unix %s: another server is listening there: stop it or change "
                    "listen.unix",
                    sa->sun_path);
  unlink(sa->sun_path);
  return 0;
}

/* ---- listening sockets ------------------------------------------------------ */

static int bind_unix(const char *path)
{
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sa.sun_path)
    return tb_error("listen.unix %s: the path is longer than %zu bytes", path,
                    sizeof sa.sun_path - 1);
  strcpy(sa.sun_path, path);
  if (remove_stale_socket(&sa) == -1)
    return -1;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1 || bind(fd, (struct sockaddr *)&sa, sizeof sa) == -1 ||
      listen(fd, SOMAXCONN) == -1) {
    int saved = errno;
    if (fd != -1)
      close(fd);
    errno = saved;
    return tb_error_errno("listen.unix %s: cannot listen there (another tabula-restored, or a "
                          "file in the way?)",
                          path);
  }
  return fd;
}

static void tcp_host_port(const char *listen, char *host, size_t hlen, char *port, size_t plen);

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

static void close_listeners(int *fds, int *n)
{
  for (int i = 0; i < *n; i++)
    close(fds[i]);
  *n = 0;
}

/* listen.unix_mode and listen.unix_group on the socket (by default it is
 * the daemon's alone, 0700 under its umask): e.g. 0660 and the group QEMU
 * runs as under libvirt.  Applied at every bind and every reload. */
static int unix_access(const struct tb_config *cfg, const char *sock)
{
  gid_t gid = (gid_t)-1;
  if (cfg->listen_unix_group &&
      daemon_group(cfg->listen_unix_group, "listen.unix_group", &gid) == -1)
    return -1;
  if (gid != (gid_t)-1 && chown(sock, (uid_t)-1, gid) == -1)
    return tb_error_errno("listen.unix_group: cannot give %s to group %s (the daemon must run as "
                          "root or be a member of it)",
                          sock, cfg->listen_unix_group);
  if (cfg->listen_unix_mode >= 0 && chmod(sock, (mode_t)cfg->listen_unix_mode) == -1)
    return tb_error_errno("listen.unix_mode: cannot chmod %s", sock);
  return 0;
}

int nbdkit_listen(struct daemon *d)
{
  const struct tb_config *cfg = d->cfg;
  struct nbdkit_state *st = &d->nbdkit;
  if (st->n_listen > 0 && str_eq(st->bound_unix, cfg->listen_unix) &&
      str_eq(st->bound_tcp, cfg->listen_tcp))
    return unix_access(cfg, st->unix_path); /* already listening where the configuration says */
  int fds[TB_MAX_LISTEN], n = 0;
  char sock[TB_PATH_MAX];
  nbd_socket_path(cfg, sock, sizeof sock);
  /* Our own socket of the previous configuration is still bound: rebind. */
  bool same_unix = st->n_listen > 0 && strcmp(st->unix_path, sock) == 0;
  if (same_unix)
    fds[n++] = dup(st->listen_fds[0]);
  else if ((fds[n++] = bind_unix(sock)) == -1)
    return -1;
  if (unix_access(cfg, sock) == -1) {
    close_listeners(fds, &n);
    if (!same_unix)
      unlink(sock);
    return -1;
  }
  if (cfg->listen_tcp) {
    int k = supervise_bind_tcp("listen.tcp", cfg->listen_tcp, fds + n, TB_MAX_LISTEN - n);
    if (k == -1) {
      if (!same_unix)
        unlink(sock);
      close_listeners(fds, &n);
      return -1;
    }
    n += k;
  }
  if (st->n_listen > 0 && !same_unix)
    unlink(st->unix_path);
  close_listeners(st->listen_fds, &st->n_listen);
  memcpy(st->listen_fds, fds, sizeof fds[0] * (size_t)n);
  st->n_listen = n;
  snprintf(st->unix_path, sizeof st->unix_path, "%s", sock);
  free(st->bound_unix);
  free(st->bound_tcp);
  st->bound_unix = cfg->listen_unix ? strdup(cfg->listen_unix) : NULL;
  st->bound_tcp = cfg->listen_tcp ? strdup(cfg->listen_tcp) : NULL;
  return 0;
}

void nbdkit_unlisten(struct daemon *d)
{
  struct nbdkit_state *st = &d->nbdkit;
  if (st->n_listen > 0)
    unlink(st->unix_path);
  close_listeners(st->listen_fds, &st->n_listen);
  free(st->bound_unix);
  free(st->bound_tcp);
  st->bound_unix = st->bound_tcp = NULL;
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
  (void)in;
  snprintf(buf, len, "%s/nbdkit.pid", d->cfg->state_dir);
}

static bool instance_listening(const struct daemon *d, const struct nbdkit_instance *in)
{
  char path[4200];
  pidfile_path(d, in, path, sizeof path);
  struct stat st;
  return stat(path, &st) == 0 && st.st_size > 0;
}

/* Decimal digits of V into BUF (async-signal-safe, for the child). */
void supervise_put_decimal(char *buf, long v)
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

static int start_instance(struct daemon *d, struct nbdkit_instance *in)
{
  const struct tb_config *cfg = d->cfg;
  const struct nbdkit_state *st = &d->nbdkit;
  char cfgarg[4200], tls[4200] = "", pidfile[4200], limit[64];
  if (st->n_listen == 0)
    return tb_error("nbdkit has no listening socket (see the error about listen.unix or "
                    "listen.tcp above)");
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
  /* Under the journal nbdkit's messages (a client refused, a plugin error)
   * go through syslog with their priority: on the shared stderr every one
   * of them would be an info line. */
  if (daemon_stderr_is_journal())
    argv[n++] = "--log=syslog";
  if (cfg->tls_certificates) {
    /* Admin exports over TCP are for verified client certificates only
     * (signed by the directory's ca-cert.pem): a TLS peer without one is
     * refused by the handshake; with tls.require false, clients' own
     * exports still work over plain TCP. */
    snprintf(tls, sizeof tls, "--tls-certificates=%s", cfg->tls_certificates);
    argv[n++] = cfg->tls_require ? "--tls=require" : "--tls=on";
    argv[n++] = tls;
    argv[n++] = "--tls-verify-peer";
  }
  if (cfg->listen_max_connections > 0) {
    /* nbdkit's limit filter: past the limit a connection is refused at
     * once instead of taking another thread. */
    snprintf(limit, sizeof limit, "limit=%lld", cfg->listen_max_connections);
    argv[n++] = "--filter=limit";
  }
  argv[n++] = cfg->plugin ? cfg->plugin : "tabula";
  argv[n++] = cfgarg;
  if (cfg->listen_max_connections > 0)
    argv[n++] = limit;
  argv[n] = NULL;

  /* The environment with LISTEN_FDS and room for LISTEN_PID, which only the
   * child knows: built here, since after fork only async-signal-safe calls. */
  extern char **environ;
  size_t nenv = 0;
  while (environ[nenv])
    nenv++;
  char **envp = calloc(nenv + 3, sizeof *envp);
  static char listen_pid[32], listen_fds[32];
  if (!envp)
    return tb_error_errno("cannot start nbdkit");
  size_t k = 0;
  for (size_t i = 0; i < nenv; i++)
    if (strncmp(environ[i], "LISTEN_", 7) != 0)
      envp[k++] = environ[i];
  snprintf(listen_fds, sizeof listen_fds, "LISTEN_FDS=%d", st->n_listen);
  strcpy(listen_pid, "LISTEN_PID=");
  envp[k++] = listen_fds;
  envp[k++] = listen_pid;
  int fds[TB_MAX_LISTEN], nfds = st->n_listen;
  memcpy(fds, st->listen_fds, sizeof fds[0] * (size_t)nfds);

  pid_t pid = fork();
  if (pid == -1) {
    free(envp);
    return tb_error_errno("cannot start nbdkit");
  }
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    setpgid(0, 0); /* a ^C on the daemon's terminal goes to the daemon, which stops nbdkit */
    /* The listeners become fds 3, 4, ...: first out of the way (above any
     * target), then into place, without close-on-exec. */
    for (int i = 0; i < nfds; i++)
      fds[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3 + TB_MAX_LISTEN);
    for (int i = 0; i < nfds; i++)
      if (fds[i] == -1 || dup2(fds[i], 3 + i) == -1)
        _exit(126);
    supervise_put_decimal(listen_pid + strlen("LISTEN_PID="), (long)getpid());
    execvpe(argv[0], (char **)argv, envp);
    static const char msg[] = "tabula-restored: cannot run nbdkit\n";
    ssize_t ignored = write(2, msg, sizeof msg - 1);
    (void)ignored;
    _exit(127);
  }
  free(envp);
  in->pid = pid;
  in->ready = false;
  in->started_ms = tb_now_ms();
  in->restart_at_ms = 0;
  log_msg("started nbdkit (pid %d) on %s%s%s", (int)pid, st->unix_path,
          cfg->listen_tcp ? " and " : "", cfg->listen_tcp ? cfg->listen_tcp : "");
  return 0;
}

int nbdkit_start(struct daemon *d)
{
  memset(d->nbdkit.inst, 0, sizeof d->nbdkit.inst);
  d->nbdkit.n = 1;
  if (start_instance(d, &d->nbdkit.inst[0]) == -1) {
    d->nbdkit.inst[0].restart_at_ms = tb_now_ms() + BACKOFF_MIN_MS;
    return -1;
  }
  return 0;
}

void supervise_describe_status(int status, char *buf, size_t len)
{
  if (WIFEXITED(status))
    snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
  else if (WIFSIGNALED(status))
    snprintf(buf, len, "killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
  else
    snprintf(buf, len, "stopped (status %d)", status);
}

int64_t supervise_backoff(int *failures, int64_t ran_ms)
{
  *failures = ran_ms >= STABLE_MS ? 0 : *failures + 1;
  if (ran_ms >= STABLE_MS)
    return 0;
  int64_t backoff = BACKOFF_MIN_MS;
  for (int i = 1; i < *failures && backoff < BACKOFF_MAX_MS; i++)
    backoff *= 2;
  return backoff > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff;
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
    if (!in) {
      if (!pxe_reaped(d, pid, status)) /* dnsmasq (pxe.c) */
        iscsid_reaped(d, pid, status); /* tabula-iscsid (iscsi.c), or no child of interest */
      continue;
    }
    int64_t now = tb_now_ms();
    int64_t ran = now - in->started_ms;
    supervise_describe_status(status, in->last_exit, sizeof in->last_exit);
    in->pid = 0;
    in->ready = false;
    if (d->nbdkit.stopping)
      continue;
    int64_t backoff = supervise_backoff(&in->failures, ran);
    in->restart_at_ms = now + backoff;
    log_msg("nbdkit (pid %d) %s after %.1f s; restarting in %.1f s", (int)pid, in->last_exit,
            (double)ran / 1000, (double)backoff / 1000);
    daemon_notify("STATUS=not serving: nbdkit %s; restarting in %.1f s", in->last_exit,
                  (double)backoff / 1000);
    tb_eventf(d->cfg->state_dir, "nbdkit-exit", NULL, "{s:I, s:s, s:I, s:I}", "pid",
              (json_int_t)pid, "status", in->last_exit, "ran_ms", (json_int_t)ran, "restart_in_ms",
              (json_int_t)backoff);
  }
}

static void nbdkit_tick(struct daemon *d, int64_t now)
{
  if (d->nbdkit.stopping)
    return;
  for (int i = 0; i < d->nbdkit.n; i++) {
    struct nbdkit_instance *in = &d->nbdkit.inst[i];
    if (in->pid && !in->ready && instance_listening(d, in)) {
      in->ready = true;
      /* systemd's READY=1 when nbdkit serves, not before (again after a
       * restart: harmless, and the STATUS line says it serves again). */
      daemon_notify("READY=1\nSTATUS=serving %zu clients on %s%s%s", d->cfg->n_clients,
                    d->nbdkit.unix_path, d->cfg->listen_tcp ? " and " : "",
                    d->cfg->listen_tcp ? d->cfg->listen_tcp : "");
      tb_eventf(d->cfg->state_dir, "nbdkit-ready", NULL, "{s:I, s:I}", "pid", (json_int_t)in->pid,
                "restarts", (json_int_t)d->nbdkit.restarts);
    }
    if (!in->pid && in->restart_at_ms && now >= in->restart_at_ms) {
      d->nbdkit.restarts++;
      if (start_instance(d, in) == -1) {
        log_msg("%s", tb_errmsg());
        in->restart_at_ms = now + BACKOFF_MAX_MS;
        continue;
      }
      tb_eventf(d->cfg->state_dir, "nbdkit-restart", NULL, "{s:I, s:I, s:s}", "pid",
                (json_int_t)in->pid, "restarts", (json_int_t)d->nbdkit.restarts, "previous_exit",
                in->last_exit);
    }
  }
}

static int64_t nbdkit_next_wakeup(const struct daemon *d)
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

const struct daemon_timer nbdkit_timer = {"nbdkit", nbdkit_tick, nbdkit_next_wakeup};

void supervise_wait_child(pid_t pid, int64_t deadline_ms, const char *name, char *last_exit,
                          size_t len)
{
  for (;;) {
    int status;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid || (r == -1 && errno == ECHILD)) {
      if (r == pid)
        supervise_describe_status(status, last_exit, len);
      return;
    }
    if (tb_now_ms() > deadline_ms) {
      log_msg("%s (pid %d) did not stop in time after SIGTERM; killing it", name, (int)pid);
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return;
    }
    usleep(20000);
  }
}

void supervise_stop_child(pid_t pid, int64_t deadline_ms, const char *name, char *last_exit,
                          size_t len)
{
  kill(pid, SIGTERM);
  supervise_wait_child(pid, deadline_ms, name, last_exit, len);
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
    if (in->pid)
      supervise_wait_child(in->pid, deadline, "nbdkit", in->last_exit, sizeof in->last_exit);
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

void nbdkit_retry_now(struct daemon *d)
{
  for (int i = 0; i < d->nbdkit.n; i++) {
    struct nbdkit_instance *in = &d->nbdkit.inst[i];
    if (!in->pid && in->restart_at_ms) {
      log_msg("nbdkit is waiting out its backoff: starting it now with the new configuration");
      in->restart_at_ms = tb_now_ms();
      in->failures = 0;
    }
  }
}

void nbdkit_restart(struct daemon *d, const char *why)
{
  log_msg("restarting nbdkit: %s", why);
  d->nbdkit.stopping = true;
  stop_all(d);
  if (nbdkit_listen(d) == -1) {
    log_msg("%s; nbdkit keeps serving the previous addresses", tb_errmsg());
    tb_eventf(d->cfg->state_dir, "error", NULL, "{s:s}", "message", tb_errmsg());
  }
  d->nbdkit.stopping = false;
  d->nbdkit.restarts++;
  if (nbdkit_start(d) == -1)
    log_msg("%s", tb_errmsg());
  tb_eventf(d->cfg->state_dir, "nbdkit-restart", NULL, "{s:I, s:s}", "restarts",
            (json_int_t)d->nbdkit.restarts, "reason", why);
}

/* ---- standby: answering while nbdkit is down ---------------------------------------- */

#define STANDBY_MAX 32
#define STANDBY_TIMEOUT_S 2
#define NBD_MAGIC 0x4e42444d41474943ULL /* "NBDMAGIC" */
#define NBD_IHAVEOPT 0x49484156454f5054ULL
#define NBD_REP_MAGIC 0x0003e889045565a9ULL
#define NBD_OPT_EXPORT_NAME 1
#define NBD_OPT_ABORT 2
#define NBD_REP_ACK 1
#define NBD_REP_ERR_SHUTDOWN (0x80000000u + 7)

static int standby_threads; /* atomic */

struct standby_conn {
  int fd;
  char msg[256];
};

static void put_be(unsigned char *p, uint64_t v, int bytes)
{
  for (int i = bytes - 1; i >= 0; i--, v >>= 8)
    p[i] = (unsigned char)v;
}

static uint64_t get_be(const unsigned char *p, int bytes)
{
  uint64_t v = 0;
  for (int i = 0; i < bytes; i++)
    v = v << 8 | p[i];
  return v;
}

static bool io_full(int fd, void *buf, size_t len, bool rd)
{
  unsigned char *p = buf;
  while (len > 0) {
    ssize_t r = rd ? read(fd, p, len) : send(fd, p, len, MSG_NOSIGNAL);
    if (r <= 0) {
      if (r == -1 && errno == EINTR)
        continue;
      return false;
    }
    p += r;
    len -= (size_t)r;
  }
  return true;
}

/* The fixed-newstyle handshake, then an error for each option (at most 16,
 * their data skipped) until the client gives up or asks for an export by
 * NBD_OPT_EXPORT_NAME, which cannot get an error: the close is the answer. */
static void *standby_run(void *arg)
{
  struct standby_conn *sc = arg;
  struct timeval tv = {.tv_sec = STANDBY_TIMEOUT_S};
  setsockopt(sc->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(sc->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  unsigned char hello[18], flags[4], opt[16];
  put_be(hello, NBD_MAGIC, 8);
  put_be(hello + 8, NBD_IHAVEOPT, 8);
  put_be(hello + 16, 3, 2); /* FIXED_NEWSTYLE | NO_ZEROES */
  if (io_full(sc->fd, hello, sizeof hello, false) && io_full(sc->fd, flags, sizeof flags, true)) {
    for (int k = 0; k < 16 && io_full(sc->fd, opt, sizeof opt, true); k++) {
      if (get_be(opt, 8) != NBD_IHAVEOPT)
        break;
      uint32_t option = (uint32_t)get_be(opt + 8, 4), len = (uint32_t)get_be(opt + 12, 4);
      if (option == NBD_OPT_EXPORT_NAME || len > 65536)
        break;
      unsigned char skip[4096];
      bool ok = true;
      for (uint32_t left = len; left > 0 && ok;) {
        uint32_t step = left < sizeof skip ? left : (uint32_t)sizeof skip;
        ok = io_full(sc->fd, skip, step, true);
        left -= step;
      }
      size_t mlen = option == NBD_OPT_ABORT ? 0 : strlen(sc->msg);
      unsigned char rep[20 + sizeof sc->msg];
      put_be(rep, NBD_REP_MAGIC, 8);
      put_be(rep + 8, option, 4);
      put_be(rep + 12, option == NBD_OPT_ABORT ? NBD_REP_ACK : NBD_REP_ERR_SHUTDOWN, 4);
      put_be(rep + 16, mlen, 4);
      memcpy(rep + 20, sc->msg, mlen);
      if (!ok || !io_full(sc->fd, rep, 20 + mlen, false) || option == NBD_OPT_ABORT)
        break;
    }
  }
  close(sc->fd);
  free(sc);
  __atomic_sub_fetch(&standby_threads, 1, __ATOMIC_RELAXED);
  return NULL;
}

static bool standby_active(const struct daemon *d)
{
  if (d->nbdkit.stopping || d->nbdkit.n_listen == 0 || d->nbdkit.n == 0)
    return false;
  for (int i = 0; i < d->nbdkit.n; i++)
    if (d->nbdkit.inst[i].pid)
      return false; /* nbdkit has the sockets (starting or serving) */
  return true;
}

size_t nbdkit_standby_pollfds(struct daemon *d, struct pollfd *fds, size_t max)
{
  if (!standby_active(d))
    return 0;
  size_t n = 0;
  for (int i = 0; i < d->nbdkit.n_listen && n < max; i++)
    fds[n++] = (struct pollfd){.fd = d->nbdkit.listen_fds[i], .events = POLLIN};
  return n;
}

void nbdkit_standby_io(struct daemon *d, const struct pollfd *fds, size_t n)
{
  if (!standby_active(d))
    return; /* nbdkit was started meanwhile: the connections are its own */
  const struct nbdkit_instance *in = &d->nbdkit.inst[0];
  int64_t wait = in->restart_at_ms > tb_now_ms() ? in->restart_at_ms - tb_now_ms() : 0;
  for (size_t i = 0; i < n; i++) {
    if (!(fds[i].revents & POLLIN))
      continue;
    /* The listener non-blocking while the daemon accepts (its flags are
     * shared with the nbdkit that gets it next: restored below). */
    int lfl = fcntl(fds[i].fd, F_GETFL);
    fcntl(fds[i].fd, F_SETFL, lfl | O_NONBLOCK);
    for (int k = 0; k < 16; k++) { /* a few per wakeup: the loop stays responsive */
      int fd = accept4(fds[i].fd, NULL, NULL, SOCK_CLOEXEC);
      if (fd == -1)
        break;
      struct standby_conn *sc = calloc(1, sizeof *sc);
      pthread_t t;
      pthread_attr_t at;
      if (!sc || __atomic_add_fetch(&standby_threads, 1, __ATOMIC_RELAXED) > STANDBY_MAX) {
        if (sc)
          __atomic_sub_fetch(&standby_threads, 1, __ATOMIC_RELAXED);
        free(sc);
        close(fd); /* too many at once: the close is the answer */
        continue;
      }
      sc->fd = fd;
      snprintf(sc->msg, sizeof sc->msg,
               "tabula: the NBD server is not running (nbdkit %s); it restarts in %.1f s: try "
               "again then",
               in->last_exit[0] ? in->last_exit : "is down", (double)wait / 1000);
      pthread_attr_init(&at);
      pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
      if (pthread_create(&t, &at, standby_run, sc) != 0) {
        __atomic_sub_fetch(&standby_threads, 1, __ATOMIC_RELAXED);
        close(fd);
        free(sc);
      }
      pthread_attr_destroy(&at);
    }
    fcntl(fds[i].fd, F_SETFL, lfl);
  }
}
