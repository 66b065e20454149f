/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-iscsid: the iSCSI frontend -- each client a target, LUN 0 its disk.
 *
 *   tabula-iscsid [--listen ADDR:PORT] [--pidfile FILE] CONFIG
 *
 * Listens where listen.iscsi says (or --listen), or on the sockets it was
 * handed by socket activation (LISTEN_PID/LISTEN_FDS: tabula-restored binds
 * them and supervises this process as it does nbdkit, so the port outlives a
 * crash).  Writes FILE once it serves.  SIGHUP re-reads CONFIG for new
 * logins; SIGTERM/SIGINT end every connection, flush and leave the sessions
 * resumable (tb_live_shutdown) for the next start.  A thread calls
 * tb_live_tick() once a second (grace periods, idle clients, the reserve).
 * The admin views of the sessions it runs (ID@live, ID@overlay, served by
 * nbdkit) are answered on STATE/view-iscsi.sock (lib/liveview.h), so they
 * show every write acknowledged here, flushed or not.
 * Protocol and session rules: target.h; SCSI: scsi.h.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "live.h"
#include "liveview.h"
#include "target.h"

#define MAX_LISTEN 8

void isc_log(const char *fmt, ...) TB_PRINTF(1, 2);
void isc_log(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  char buf[1024];
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  fprintf(stderr, "tabula-iscsid: %s\n", buf);
}

static volatile sig_atomic_t stop_requested, reload_requested;

static void on_signal(int sig)
{
  if (sig == SIGHUP)
    reload_requested = 1;
  else
    stop_requested = 1;
}

static int bind_listen(const char *where, int *fds, int max)
{
  char host[256] = "", port[16];
  const char *colon = strrchr(where, ':');
  if (!colon)
    return tb_error("listen.iscsi \"%s\": expected \"ADDR:PORT\", e.g. \"0.0.0.0:3260\"", where);
  size_t hl = (size_t)(colon - where);
  if (hl >= sizeof host)
    hl = sizeof host - 1;
  memcpy(host, where, hl);
  host[hl] = '\0';
  if (host[0] == '[' && hl > 2) {
    memmove(host, host + 1, hl - 2);
    host[hl - 2] = '\0';
  }
  snprintf(port, sizeof port, "%s", colon + 1);
  bool any = !host[0] || strcmp(host, "*") == 0;
  struct addrinfo hints = {
      .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
  struct addrinfo *res;
  int e = getaddrinfo(any ? NULL : host, port, &hints, &res);
  if (e != 0)
    return tb_error("listen.iscsi \"%s\": %s", where, gai_strerror(e));
  int n = 0;
  for (struct addrinfo *ai = res; ai && n < max; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd == -1)
      continue;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ai->ai_family == AF_INET6 && any)
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == -1 || listen(fd, SOMAXCONN) == -1) {
      int saved = errno;
      close(fd);
      if (ai->ai_family == AF_INET6 && any && saved == EADDRNOTAVAIL)
        continue;
      for (int i = 0; i < n; i++)
        close(fds[i]);
      freeaddrinfo(res);
      errno = saved;
      return tb_error_errno("listen.iscsi \"%s\": cannot listen there (another iSCSI target on "
                            "the port? change listen.iscsi)",
                            where);
    }
    fds[n++] = fd;
  }
  freeaddrinfo(res);
  if (n == 0)
    return tb_error("listen.iscsi \"%s\": no address to listen on", where);
  return n;
}

/* Sockets handed over by socket activation, or 0. */
static int activated_fds(int *fds, int max)
{
  const char *pid = getenv("LISTEN_PID"), *nfds = getenv("LISTEN_FDS");
  if (!pid || !nfds || atol(pid) != (long)getpid())
    return 0;
  int n = atoi(nfds);
  if (n < 1)
    return 0;
  if (n > max)
    n = max;
  for (int i = 0; i < n; i++) {
    fds[i] = 3 + i;
    fcntl(fds[i], F_SETFD, FD_CLOEXEC);
  }
  unsetenv("LISTEN_PID");
  unsetenv("LISTEN_FDS");
  return n;
}

static void *ticker(void *arg)
{
  (void)arg;
  while (!stop_requested) {
    struct tb_config *cfg = isc_get_config();
    if (cfg) {
      tb_live_tick(cfg);
      tb_config_unref(cfg);
    }
    sleep(1);
  }
  return NULL;
}

static void usage(void)
{
  fprintf(stderr, "usage: tabula-iscsid [--listen ADDR:PORT] [--pidfile FILE] CONFIG\n"
                  "(tabula-iscsid --help says more)\n");
}

static void help(void)
{
  printf("usage: tabula-iscsid [--listen ADDR:PORT] [--pidfile FILE] CONFIG\n"
         "\n"
         "The iSCSI target of tabula: each client of CONFIG is a target PREFIX:ID\n"
         "(iscsi.iqn_prefix, default " TB_ISCSI_DEFAULT_PREFIX "), LUN 0 its disk, with the\n"
         "sessions, policies, guards, quotas and events of the NBD plugin.\n"
         "tabula-restored runs it while listen.iscsi is set; run by hand it listens\n"
         "on listen.iscsi or --listen.\n"
         "\n"
         "  --listen ADDR:PORT  listen there instead of listen.iscsi (\"*:3260\" every\n"
         "                      address, \"[::]:3260\" IPv6); sockets handed over by\n"
         "                      socket activation (LISTEN_PID, LISTEN_FDS) come first\n"
         "  --pidfile FILE      write the pid to FILE once the target serves\n"
         "  --help              this text\n"
         "\n"
         "nbdkit's admin views of the sessions it runs (ID@live, ID@overlay, the view)\n"
         "are answered on STATE/view-iscsi.sock, so they show unflushed writes too.\n"
         "\n"
         "SIGHUP re-reads CONFIG (new logins use it); SIGTERM ends every connection\n"
         "and leaves the sessions to continue within reconnect_grace.\n"
         "TABULA_ISCSI_DEBUG=1 logs every PDU.  See tabula-iscsid(8).\n");
}

int main(int argc, char **argv)
{
  const char *listen_arg = NULL, *pidfile = NULL, *config = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      help();
      return 0;
    } else if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc)
      listen_arg = argv[++i];
    else if (strcmp(argv[i], "--pidfile") == 0 && i + 1 < argc)
      pidfile = argv[++i];
    else if (argv[i][0] == '-' || config) {
      usage();
      return 2;
    } else
      config = argv[i];
  }
  if (!config) {
    usage();
    return 2;
  }
  struct tb_config *cfg = tb_config_load(config);
  if (!cfg) {
    isc_log("%s", tb_errmsg());
    return 1;
  }
  for (size_t i = 0; i < cfg->n_clients; i++)
    if (strchr(cfg->clients[i].id, '_'))
      isc_log("client %s: '_' is not allowed in iSCSI names, so it has no iSCSI target; rename "
              "it to use it over iSCSI",
              cfg->clients[i].id);
  isc_set_config(cfg);

  int fds[MAX_LISTEN];
  int n = activated_fds(fds, MAX_LISTEN);
  if (n == 0) {
    const char *where = listen_arg ? listen_arg : cfg->listen_iscsi;
    if (!where) {
      isc_log("%s: listen.iscsi is not set (e.g. \"listen\": {\"iscsi\": \"0.0.0.0:3260\"}) and no "
              "--listen was given",
              config);
      return 1;
    }
    if ((n = bind_listen(where, fds, MAX_LISTEN)) == -1) {
      isc_log("%s", tb_errmsg());
      return 1;
    }
  }
  /* Without it the admin views would show this target's clients as of
   * their last flush: refuse to run rather than serve them wrong. */
  if (tb_liveview_serve(cfg->state_dir, "iscsi") == -1) {
    isc_log("%s", tb_errmsg());
    return 1;
  }
  tb_config_unref(cfg);

  struct sigaction sa = {.sa_handler = on_signal};
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  pthread_t tick;
  if (pthread_create(&tick, NULL, ticker, NULL) != 0) {
    isc_log("cannot start the session timer thread");
    return 1;
  }
  if (pidfile) {
    char buf[32];
    int len = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
    if (tb_write_file_atomic(pidfile, buf, (size_t)len, 0644) == -1)
      isc_log("%s", tb_errmsg());
  }
  struct pollfd pfd[MAX_LISTEN];
  for (int i = 0; i < n; i++)
    pfd[i] = (struct pollfd){.fd = fds[i], .events = POLLIN};
  while (!stop_requested) {
    if (reload_requested) {
      reload_requested = 0;
      struct tb_config *nc = tb_config_load(config);
      if (nc) {
        isc_set_config(nc);
        tb_config_unref(nc);
        isc_log("reloaded %s (new logins use it)", config);
      } else {
        isc_log("reload: %s; still using the previous configuration", tb_errmsg());
      }
    }
    if (poll(pfd, (nfds_t)n, 500) <= 0)
      continue;
    for (int i = 0; i < n; i++) {
      if (!(pfd[i].revents & POLLIN))
        continue;
      int fd = accept4(fds[i], NULL, NULL, SOCK_CLOEXEC);
      if (fd == -1)
        continue;
      if (isc_serve(fd) == -1)
        isc_log("cannot serve a connection: %s", strerror(errno));
    }
  }
  for (int i = 0; i < n; i++)
    close(fds[i]);
  isc_stop_all(10000);
  pthread_join(tick, NULL);
  tb_liveview_serve_stop();
  tb_live_shutdown();
  struct tb_config *last = isc_get_config();
  if (last) {
    tb_config_unref(last);
    isc_set_config(NULL);
  }
  if (pidfile)
    unlink(pidfile);
  return 0;
}
