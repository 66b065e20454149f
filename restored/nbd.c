/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-restored: the NBD server, nbdkit with the tabula plugin, as a child
 * of the supervision engine (supervise.c).
 *
 * nbdkit runs as a child in the foreground (-f) with --exit-with-parent, so it
 * never outlives the daemon (a kill -9 of the daemon takes nbdkit with it, and
 * the next daemon can bind the sockets again).  Its stderr is the daemon's.
 *
 * When it exits the daemon records an "nbdkit-exit" event and starts it again
 * after the engine's backoff (0.5 s doubling to 30 s while runs stay short).  Each start after
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
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/time.h>
#include <unistd.h>

#include "daemon.h"
#include "events.h"

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

bool nbd_config_changed(const struct tb_config *a, const struct tb_config *b)
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
  int64_t deadline_mono = tb_mono_ms() + STALE_WAIT_MS;
  bool in_use;
  while ((in_use = unix_socket_in_use(sa)) && tb_mono_ms() < deadline_mono)
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

int nbd_listen(struct daemon *d)
{
  const struct tb_config *cfg = d->cfg;
  struct nbd_server *st = &d->nbd;
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

void nbd_unlisten(struct daemon *d)
{
  struct nbd_server *st = &d->nbd;
  if (st->n_listen > 0)
    unlink(st->unix_path);
  close_listeners(st->listen_fds, &st->n_listen);
  free(st->bound_unix);
  free(st->bound_tcp);
  st->bound_unix = st->bound_tcp = NULL;
}

/* nbdkit writes its -P pidfile once it listens: that is "ready". */
static void pidfile_path(const struct daemon *d, char *buf, size_t len)
{
  snprintf(buf, len, "%s/nbdkit.pid", d->cfg->state_dir);
}

static int start_nbdkit(struct daemon *d)
{
  const struct tb_config *cfg = d->cfg;
  const struct nbd_server *st = &d->nbd;
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
  pidfile_path(d, pidfile, sizeof pidfile);
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

  struct child_spawn how = {.argv = argv,
                            .listen_fds = st->listen_fds,
                            .n_listen = st->n_listen,
                            .output_fd = -1,
                            .pidfile = pidfile,
                            .exec_error = "tabula-restored: cannot run nbdkit\n"};
  if (child_start(&d->nbd.child, &how) == -1)
    return -1;
  pid_t pid = d->nbd.child.pid;
  log_msg("started nbdkit (pid %d) on %s%s%s", (int)pid, st->unix_path,
          cfg->listen_tcp ? " and " : "", cfg->listen_tcp ? cfg->listen_tcp : "");
  return 0;
}

int nbd_start(struct daemon *d)
{
  struct child *c = &d->nbd.child; /* a fresh start: no backoff, no last exit */
  c->failures = 0;
  c->last_exit[0] = '\0';
  if (start_nbdkit(d) == -1) {
    d->nbd.child.restart_at_mono_ms = tb_mono_ms() + SUPERVISE_BACKOFF_MIN_MS;
    return -1;
  }
  return 0;
}

bool nbd_reaped(struct daemon *d, pid_t pid, int status)
{
  struct child *c = &d->nbd.child;
  int64_t ran;
  if (!child_reaped(c, pid, status, &ran))
    return false;
  if (c->stopping)
    return true;
  int64_t backoff = child_backoff(c, ran);
  log_msg("nbdkit (pid %d) %s after %.1f s; restarting in %.1f s", (int)pid, c->last_exit,
          (double)ran / 1000, (double)backoff / 1000);
  daemon_notify("STATUS=not serving: nbdkit %s; restarting in %.1f s", c->last_exit,
                (double)backoff / 1000);
  tb_eventf(d->cfg->state_dir, "nbdkit-exit", NULL, "{s:I, s:s, s:I, s:I}", "pid", (json_int_t)pid,
            "status", c->last_exit, "ran_ms", (json_int_t)ran, "restart_in_ms",
            (json_int_t)backoff);
  return true;
}

static void nbd_tick(struct daemon *d, int64_t now)
{
  struct child *c = &d->nbd.child;
  if (c->stopping)
    return;
  if (child_became_ready(c)) {
    /* systemd's READY=1 when nbdkit serves, not before (again after a
     * restart: harmless, and the STATUS line says it serves again). */
    daemon_notify("READY=1\nSTATUS=serving %zu clients on %s%s%s", d->cfg->n_clients,
                  d->nbd.unix_path, d->cfg->listen_tcp ? " and " : "",
                  d->cfg->listen_tcp ? d->cfg->listen_tcp : "");
    tb_eventf(d->cfg->state_dir, "nbdkit-ready", NULL, "{s:I, s:I}", "pid", (json_int_t)c->pid,
              "restarts", (json_int_t)c->restarts);
  }
  if (child_restart_due(c, now)) {
    c->restarts++;
    if (start_nbdkit(d) == -1) {
      log_msg("%s", tb_errmsg());
      c->restart_at_mono_ms = now + SUPERVISE_BACKOFF_MAX_MS;
      return;
    }
    tb_eventf(d->cfg->state_dir, "nbdkit-restart", NULL, "{s:I, s:I, s:s}", "pid",
              (json_int_t)c->pid, "restarts", (json_int_t)c->restarts, "previous_exit",
              c->last_exit);
  }
}

static int64_t nbd_next_wakeup(const struct daemon *d)
{
  return child_next_wakeup(&d->nbd.child);
}

const struct daemon_timer nbd_timer = {"nbdkit", nbd_tick, nbd_next_wakeup};

/* SIGTERM, wait (reaping) up to STOP_WAIT_MS, then SIGKILL; no restart pending. */
static void stop_nbdkit(struct daemon *d)
{
  child_stop(&d->nbd.child, STOP_WAIT_MS);
  d->nbd.child.restart_at_mono_ms = 0;
}

void nbd_stop(struct daemon *d)
{
  d->nbd.child.stopping = true;
  stop_nbdkit(d);
}

void nbd_retry_now(struct daemon *d)
{
  struct child *c = &d->nbd.child;
  if (!c->pid && c->restart_at_mono_ms) {
    log_msg("nbdkit is waiting out its backoff: starting it now with the new configuration");
    c->restart_at_mono_ms = tb_mono_ms();
    c->failures = 0;
  }
}

void nbd_restart(struct daemon *d, const char *why)
{
  log_msg("restarting nbdkit: %s", why);
  d->nbd.child.stopping = true;
  stop_nbdkit(d);
  if (nbd_listen(d) == -1) {
    log_msg("%s; nbdkit keeps serving the previous addresses", tb_errmsg());
    tb_eventf(d->cfg->state_dir, "error", NULL, "{s:s}", "message", tb_errmsg());
  }
  d->nbd.child.stopping = false;
  d->nbd.child.restarts++;
  if (nbd_start(d) == -1)
    log_msg("%s", tb_errmsg());
  tb_eventf(d->cfg->state_dir, "nbdkit-restart", NULL, "{s:I, s:s}", "restarts",
            (json_int_t)d->nbd.child.restarts, "reason", why);
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
  /* Not while nbdkit has the sockets (starting or serving). */
  return !d->nbd.child.stopping && d->nbd.n_listen > 0 && !d->nbd.child.pid;
}

size_t nbd_standby_pollfds(struct daemon *d, struct pollfd *fds, size_t max)
{
  if (!standby_active(d))
    return 0;
  size_t n = 0;
  for (int i = 0; i < d->nbd.n_listen && n < max; i++)
    fds[n++] = (struct pollfd){.fd = d->nbd.listen_fds[i], .events = POLLIN};
  return n;
}

void nbd_standby_io(struct daemon *d, const struct pollfd *fds, size_t n)
{
  if (!standby_active(d))
    return; /* nbdkit was started meanwhile: the connections are its own */
  const struct child *in = &d->nbd.child;
  int64_t mono = tb_mono_ms();
  int64_t wait = in->restart_at_mono_ms > mono ? in->restart_at_mono_ms - mono : 0;
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
