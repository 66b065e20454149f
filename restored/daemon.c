/* tabula-restored: the tabula daemon.
 *
 *   tabula-restored [-c CONFIG]
 *
 * Runs in the foreground (systemd Type=notify, or any supervisor), and:
 *   - supervises nbdkit with the tabula plugin (nbd.c, supervise.c): restarts it with
 *     a growing backoff when it dies, each restart an event;
 *   - serves the control socket (server.c, ops.c): JSON lines, mode 0600,
 *     only the daemon's own uid and root;
 *   - runs refresh schedules (here), merges (jobs.c, on a thread), webhooks
 *     (webhooks.c, on threads), the Prometheus textfile (metrics.c);
 *   - follows the event journal (journal.c) for webhooks, `events --follow`
 *     and metrics.
 * SIGHUP or `tabulactl reload` re-read the configuration; a file with an error
 * is refused and the running configuration stays.  SIGTERM/SIGINT stop nbdkit
 * and exit.
 *
 * The daemon never changes a live client's overlay: actions are written to the
 * client's mailbox and applied by the plugin at the next session start; merges
 * run only on clients whose lock the daemon holds.
 */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "control.h"
#include "daemon.h"
#include "events.h"
#include "mailbox.h"
#include "overlay.h"
#include "repo.h"
#include "session.h"
#include "store.h"
#include "watchdog.h"

static void warn_if_exposed(const char *config, const char *state);

#define DEFAULT_CONFIG "/etc/tabula/tabula.json"

/* True when stderr is the journal (systemd sets JOURNAL_STREAM to its
 * "DEV:INODE"): the journal adds the program's name and time, and reads a
 * "<N>" prefix as the line's priority. */
bool daemon_stderr_is_journal(void)
{
  static int known = -1;
  if (known == -1) {
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    known = js && sscanf(js, "%llu:%llu", &dev, &ino) == 2 && fstat(2, &st) == 0 &&
            (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
  }
  return known;
}

/* The syslog priority of a log line: warnings 4, errors 3, the rest 6 (info). */
static int line_priority(const char *line)
{
  if (strncmp(line, "warning", 7) == 0)
    return 4;
  static const char *const errs[] = {"cannot ", "error",  "failed",  "refused", "not reloaded",
                                     "No such", "denied", "invalid", "unknown"};
  for (size_t i = 0; i < sizeof errs / sizeof *errs; i++)
    if (strstr(line, errs[i]))
      return 3;
  return 6;
}

void log_msg(const char *fmt, ...)
{
  char line[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (daemon_stderr_is_journal())
    fprintf(stderr, "<%d>%s\n", line_priority(line), line);
  else
    fprintf(stderr, "tabula-restored: %s\n", line);
}

/* ---- counters ------------------------------------------------------------------ */

struct client_counters *counters_for(struct daemon *d, const char *id)
{
  for (size_t i = 0; i < d->n_counters; i++)
    if (strcmp(d->counters[i].id, id) == 0)
      return &d->counters[i];
  struct client_counters *n = realloc(d->counters, (d->n_counters + 1) * sizeof *n);
  if (!n)
    return NULL;
  d->counters = n;
  struct client_counters *c = &d->counters[d->n_counters++];
  memset(c, 0, sizeof *c);
  snprintf(c->id, sizeof c->id, "%s", id);
  return c;
}

/* ---- schedules --------------------------------------------------------------------- */

static int64_t jitter(int64_t max_ms)
{
  return max_ms > 0 ? (int64_t)(random() % (max_ms + 1)) : 0;
}

int schedules_build(const struct tb_config *cfg, struct client_sched **out, size_t *n)
{
  struct client_sched *s = calloc(cfg->n_clients ? cfg->n_clients : 1, sizeof *s);
  if (!s)
    return tb_error_errno("schedules");
  int64_t now = tb_now_ms();
  for (size_t i = 0; i < cfg->n_clients; i++) {
    const struct tb_client_conf *c = &cfg->clients[i];
    snprintf(s[i].id, sizeof s[i].id, "%s", c->id);
    if (c->merge_when) {
      if (tb_schedule_parse(c->merge_when, &s[i].merge_sched) == -1) {
        tb_error_prefix("clients.%s.merge.when", c->id);
        free(s);
        return -1;
      }
      s[i].merge_has = true;
      s[i].merge_next_ms = tb_schedule_next(&s[i].merge_sched, now);
    }
    if (!c->refresh)
      continue;
    if (tb_schedule_parse(c->refresh, &s[i].sched) == -1) {
      tb_error_prefix("clients.%s.refresh", c->id);
      free(s);
      return -1;
    }
    s[i].has = true;
    s[i].next_ms = tb_schedule_next(&s[i].sched, now) + jitter(c->refresh_jitter_ms);
  }
  *out = s;
  *n = cfg->n_clients;
  return 0;
}

/* Where each schedule stands after a start or a reload: from the client's
 * clients/ID/schedule.json (lib/schedule.h), so a restart neither fires every
 * refresh again nor forgets one that came due meanwhile (it fires at once). */
void schedules_resume(const struct tb_config *cfg, struct client_sched *s, size_t n)
{
  int64_t now = tb_now_ms();
  for (size_t i = 0; i < n; i++) {
    const struct tb_client_conf *c = tb_config_client(cfg, s[i].id);
    char file[TB_PATH_MAX];
    if (s[i].merge_has && c &&
        tb_store_client_path(cfg->state_dir, s[i].id, "merge-schedule.json", file, sizeof file) ==
            0) {
      struct tb_schedule_mark m;
      if (tb_schedule_resume(&s[i].merge_sched, c->merge_when, file, now, 0, &m) == -1)
        log_msg("merge schedule of %s: %s; it counts from now", s[i].id, tb_errmsg());
      s[i].merge_last_ms = m.last_ms;
      s[i].merge_next_ms = m.next_ms;
    }
    if (!s[i].has || !c ||
        tb_store_client_path(cfg->state_dir, s[i].id, "schedule.json", file, sizeof file) == -1)
      continue;
    struct tb_schedule_mark m;
    if (tb_schedule_resume(&s[i].sched, c->refresh, file, now, jitter(c->refresh_jitter_ms), &m) ==
        -1)
      log_msg("refresh schedule of %s: %s; it counts from now", s[i].id, tb_errmsg());
    s[i].last_ms = m.last_ms;
    s[i].next_ms = m.next_ms;
  }
}

const struct client_sched *schedule_for(const struct daemon *d, const char *id)
{
  for (size_t i = 0; i < d->n_sched; i++)
    if (strcmp(d->sched[i].id, id) == 0)
      return d->sched[i].has || d->sched[i].merge_has ? &d->sched[i] : NULL;
  return NULL;
}

static int set_refresh(struct tb_mailbox *mb, void *ctx)
{
  if (mb->refresh)
    return 1;
  mb->refresh = true;
  return 0;
}

static void save_mark(const char *state, const struct client_sched *s, const char *text)
{
  char file[TB_PATH_MAX];
  struct tb_schedule_mark m = {s->last_ms, s->next_ms};
  if (tb_store_client_path(state, s->id, "schedule.json", file, sizeof file) == -1 ||
      tb_schedule_save(file, text, &m) == -1)
    log_msg("refresh schedule of %s: %s", s->id, tb_errmsg());
}

/* A scheduled merge that came due: merge now if the client is between
 * sessions and wrote something since, else wait for its session to end (the
 * tick retries every PENDING_RETRY_MS).  Returns true when the turn is done. */
#define PENDING_RETRY_MS 2000
static bool scheduled_merge(struct daemon *d, struct client_sched *s,
                            const struct tb_client_conf *c)
{
  const char *state = d->cfg->state_dir;
  if (tb_client_locked(state, s->id)) {
    if (!s->merge_deferred)
      tb_eventf(state, "merge-deferred", s->id, "{s:s, s:s}", "into", c->merge_into, "reason",
                "the client is in a session: the merge runs when it ends");
    s->merge_deferred = true;
    return false;
  }
  char overlay[TB_PATH_MAX];
  struct tb_overlay_info info;
  /* Nothing to merge: no overlay (never served) or not a dirty block in it
   * (the merged client starts over with an empty overlay on the new version). */
  bool empty = tb_store_client_path(state, s->id, "overlay", overlay, sizeof overlay) == 0 &&
               (access(overlay, F_OK) == -1 ||
                (tb_overlay_exact_info(state, overlay, &info) == 0 && info.dirty_blocks == 0));
  if (empty) {
    tb_eventf(state, "merge-skipped", s->id, "{s:s, s:s}", "into", c->merge_into, "reason",
              "nothing written since the last merge");
    return true;
  }
  struct merge_request *r = calloc(1, sizeof *r);
  char err[512];
  if (!r)
    return false;
  snprintf(r->client, sizeof r->client, "%s", s->id);
  snprintf(r->into, sizeof r->into, "%s", c->merge_into);
  if (c->merge_note)
    r->note = strdup(c->merge_note);
  else if (asprintf(&r->note, "scheduled merge (%s)", c->merge_when) < 0)
    r->note = NULL;
  if (jobs_submit_merge(d, r, err, sizeof err) == -1) /* frees r */
    tb_eventf(state, "merge-failed", s->id, "{s:s, s:s}", "into", c->merge_into, "error", err);
  return true;
}

static void merge_tick(struct daemon *d, struct client_sched *s, int64_t now)
{
  const struct tb_client_conf *c = tb_config_client(d->cfg, s->id);
  if (!c || !c->merge_when)
    return;
  if (now >= s->merge_next_ms) {
    char due[32];
    tb_iso_time(s->merge_next_ms, due);
    tb_eventf(d->cfg->state_dir, "merge-scheduled", s->id, "{s:s, s:s, s:s}", "into", c->merge_into,
              "schedule", c->merge_when, "due", due);
    s->merge_pending = true;
    s->merge_next_ms = tb_schedule_next(&s->merge_sched, now);
  }
  if (s->merge_pending && scheduled_merge(d, s, c)) {
    s->merge_pending = false;
    s->merge_deferred = false;
    /* Saved once the turn is done: a restart while it waits fires it again. */
    char file[TB_PATH_MAX];
    s->merge_last_ms = now;
    struct tb_schedule_mark m = {s->merge_last_ms, s->merge_next_ms};
    if (tb_store_client_path(d->cfg->state_dir, s->id, "merge-schedule.json", file, sizeof file) ==
            -1 ||
        tb_schedule_save(file, c->merge_when, &m) == -1)
      log_msg("merge schedule of %s: %s", s->id, tb_errmsg());
  }
}

static void schedules_tick(struct daemon *d, int64_t now)
{
  for (size_t i = 0; i < d->n_sched; i++) {
    struct client_sched *s = &d->sched[i];
    if (s->merge_has)
      merge_tick(d, s, now);
    if (!s->has || now < s->next_ms)
      continue;
    const struct tb_client_conf *c = tb_config_client(d->cfg, s->id);
    char due[32];
    tb_iso_time(s->next_ms, due);
    if (tb_mailbox_update(d->cfg->state_dir, s->id, set_refresh, NULL) == -1) {
      log_msg("scheduled refresh of %s: %s", s->id, tb_errmsg());
    } else {
      tb_eventf(d->cfg->state_dir, "refresh-scheduled", s->id, "{s:s, s:s}", "schedule",
                c && c->refresh ? c->refresh : "", "due", due);
      s->last_ms = now;
    }
    s->next_ms = tb_schedule_next(&s->sched, now) + (c ? jitter(c->refresh_jitter_ms) : 0);
    /* After the mailbox: a crash in between fires it again, never loses it. */
    if (c && c->refresh)
      save_mark(d->cfg->state_dir, s, c->refresh);
  }
}

static int64_t schedules_next(const struct daemon *d)
{
  int64_t next = INT64_MAX;
  for (size_t i = 0; i < d->n_sched; i++) {
    const struct client_sched *s = &d->sched[i];
    if (s->has && s->next_ms < next)
      next = s->next_ms;
    if (s->merge_has && s->merge_next_ms < next)
      next = s->merge_next_ms;
    if (s->merge_pending && tb_now_ms() + PENDING_RETRY_MS < next)
      next = tb_now_ms() + PENDING_RETRY_MS;
  }
  return next;
}

const struct daemon_timer schedules_timer = {"schedules", schedules_tick, schedules_next};

/* ---- configuration --------------------------------------------------------------- */

/* Checks beyond the core parser's that only the daemon needs: the "pull"
 * section (the repository layer's) and the schedules. */
static struct tb_config *load_config(const char *file, struct client_sched **sched, size_t *n)
{
  struct tb_config *cfg = tb_config_load(file);
  if (!cfg)
    return NULL;
  if ((cfg->pull && tb_repo_pull_config_validate(cfg->pull, "pull") == -1) ||
      schedules_build(cfg, sched, n) == -1) {
    tb_error_prefix("%s", file);
    tb_config_unref(cfg);
    return NULL;
  }
  return cfg;
}

int daemon_group(const char *text, const char *key, gid_t *gid)
{
  char *end;
  unsigned long n = strtoul(text, &end, 10);
  if (text[0] && !*end) {
    *gid = (gid_t)n;
    return 0;
  }
  struct group *g = getgrnam(text);
  if (!g)
    return tb_error("%s: no group \"%s\" on this machine (create it with groupadd, or name "
                    "another)",
                    key, text);
  *gid = g->gr_gid;
  return 0;
}

/* What start and reload check beyond load_config(), alike: -1 refuses the
 * configuration (a group that does not exist, a missing TLS directory:
 * nbdkit could not start with it).  A client that cannot be served (no
 * version of its image yet, a pinned version missing or torn, a preserved or
 * protected partition its version lacks) does not refuse the file: the
 * plugin refuses that client alone.  Each is a log line, a
 * "client-unservable" event and an entry in WARNINGS (id -> reason). */
static int validate_config(const struct tb_config *cfg, json_t *warnings)
{
  gid_t gid;
  if ((cfg->listen_unix_group &&
       daemon_group(cfg->listen_unix_group, "listen.unix_group", &gid) == -1) ||
      (cfg->control_group && daemon_group(cfg->control_group, "control_group", &gid) == -1))
    return tb_error_prefix("%s", cfg->path);
  struct stat st;
  if (cfg->tls_certificates && (stat(cfg->tls_certificates, &st) == -1 || !S_ISDIR(st.st_mode)))
    return tb_error("%s: tls.certificates: %s is not a directory (nbdkit could not start: see "
                    "nbdkit-tls(1) for the files it holds)",
                    cfg->path, cfg->tls_certificates);
  json_t *memo = json_object(); /* each version's manifest read once */
  for (size_t i = 0; i < cfg->n_clients; i++) {
    const struct tb_client_conf *c = &cfg->clients[i];
    if (tb_client_check_memo(cfg, c, memo) == 0)
      continue;
    char why[1024];
    snprintf(why, sizeof why, "%s", tb_errmsg());
    log_msg("warning: client %s will be refused until this is fixed (the other clients are "
            "served): %s",
            c->id, why);
    tb_eventf(cfg->state_dir, "client-unservable", c->id, "{s:s}", "error", why);
    if (warnings)
      json_object_set_new(warnings, c->id, json_string(why));
  }
  json_decref(memo);
  return 0;
}

int daemon_reload(struct daemon *d, char *err, size_t errlen)
{
  return daemon_reload_warn(d, err, errlen, NULL);
}

int daemon_reload_warn(struct daemon *d, char *err, size_t errlen, json_t *warnings)
{
  struct client_sched *sched;
  size_t n;
  struct tb_config *cfg = load_config(d->config_file, &sched, &n);
  if (cfg && validate_config(cfg, warnings) == -1) {
    tb_config_unref(cfg);
    free(sched);
    cfg = NULL;
  }
  if (!cfg) {
    snprintf(err, errlen, "configuration not reloaded, the running one stays: %s", tb_errmsg());
    log_msg("%s", err);
    tb_eventf(d->cfg->state_dir, "reload-failed", NULL, "{s:s}", "error", tb_errmsg());
    return -1;
  }
  if (strcmp(cfg->state_dir, d->cfg->state_dir) != 0) {
    snprintf(err, errlen,
             "configuration not reloaded: state_dir changed from %s to %s; restart "
             "tabula-restored to move it",
             d->cfg->state_dir, cfg->state_dir);
    tb_config_unref(cfg);
    free(sched);
    log_msg("%s", err);
    return -1;
  }
  char control[sizeof d->control_path];
  if (tb_control_socket_path(cfg, control, sizeof control) == 0 &&
      strcmp(control, d->control_path) != 0)
    log_msg("the control socket moved to %s in the configuration; it stays at %s until a "
            "restart",
            control, d->control_path);
  struct tb_config *old = d->cfg;
  d->cfg = cfg;
  /* Unchanged schedules keep their due times (their files), changed ones
   * count from their last refresh. */
  schedules_resume(cfg, sched, n);
  for (size_t i = 0; i < n; i++) /* a merge waiting for its client's session still waits */
    for (size_t k = 0; k < d->n_sched; k++)
      if (sched[i].merge_has && strcmp(sched[i].id, d->sched[k].id) == 0) {
        sched[i].merge_pending = d->sched[k].merge_pending;
        sched[i].merge_deferred = d->sched[k].merge_deferred;
      }
  free(d->sched);
  d->sched = sched;
  d->n_sched = n;
  tb_events_set_max_bytes(cfg->events_max_bytes);
  tb_events_set_keep(cfg->events_keep);
  warn_if_exposed(d->config_file, cfg->state_dir);
  webhooks_configure(cfg);
  bool restart = nbd_config_changed(old, cfg);
  tb_config_unref(old);
  tb_eventf(cfg->state_dir, "reload", NULL, "{s:s, s:I, s:b}", "config", d->config_file, "clients",
            (json_int_t)cfg->n_clients, "nbdkit_restart", restart);
  log_msg("configuration reloaded from %s (%zu clients)", d->config_file, cfg->n_clients);
  if (restart)
    nbd_restart(d, "its settings changed in the configuration");
  else if (nbd_listen(d) == -1) /* the same sockets: their mode and group */
    log_msg("%s", tb_errmsg());
  if (!restart)
    nbd_retry_now(d); /* a good file after a bad state: no backoff wait */
  pxe_apply(d);
  iscsid_apply(d);
  d->next_metrics_ms = 0;
  return 0;
}

/* ---- systemd readiness (Type=notify), without linking libsystemd ---------------------- */

static void notify_systemd(const char *msg);

void daemon_notify(const char *fmt, ...)
{
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  notify_systemd(msg);
}

static void notify_systemd(const char *msg)
{
  const char *path = getenv("NOTIFY_SOCKET");
  if (!path || (path[0] != '/' && path[0] != '@') || strlen(path) >= 108)
    return;
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  strcpy(sa.sun_path, path);
  if (sa.sun_path[0] == '@')
    sa.sun_path[0] = '\0';
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd == -1)
    return;
  sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa,
         (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path)));
  close(fd);
}

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
      char err[1024];
      daemon_reload(d, err, sizeof err);
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
    &nbd_timer,      &pxe_timer,    &iscsid_timer,  &schedules_timer, &pulls_timer,
    &watchdog_timer, &server_timer, &journal_timer, &metrics_timer,
};

static int run(struct daemon *d)
{
  size_t max = 3 + server_max_fds() + TB_MAX_LISTEN;
  struct pollfd *fds = calloc(max, sizeof *fds);
  if (!fds)
    return tb_error_errno("poll set");
  while (!d->quit) {
    int64_t now = tb_now_ms();
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

/* The configuration may hold secrets (a webhook's secret, S3 keys): say so
 * when others may read it.  A state directory others may enter (an older
 * tabula made it 0755) exposes what is in it. */
static void warn_if_exposed(const char *config, const char *state)
{
  struct stat st;
  if (config && stat(config, &st) == 0 && (st.st_mode & (S_IROTH | S_IWOTH | S_IWGRP)))
    log_msg("warning: the configuration %s is %s by other users and may hold secrets (webhook "
            "secrets, S3 keys): chmod 600 %s",
            config, st.st_mode & (S_IWOTH | S_IWGRP) ? "writable" : "readable", config);
  if (tb_store_exposed(state))
    log_msg("warning: the state directory %s is open to other users (its images and clients' "
            "disks are admin-only): chmod 700 %s",
            state, state);
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

  d->cfg = load_config(d->config_file, &d->sched, &d->n_sched);
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
  warn_if_exposed(d->config_file, state);
  if (validate_config(d->cfg, NULL) == -1) {
    log_msg("%s", tb_errmsg());
    return 1;
  }
  schedules_resume(d->cfg, d->sched, d->n_sched);
  int tmp = tb_store_gc(state, false); /* interrupted pulls stay: they resume */
  if (tmp > 0)
    log_msg("removed %d leftover temporaries of interrupted builds", tmp);
  jobs_recover(d->cfg);
  watchdog_recover(d->cfg);

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
  if (server_open(d) == -1) {
    log_msg("%s", tb_errmsg());
    return 1;
  }
  if (jobs_start() == -1 || watchdog_start() == -1) {
    log_msg("%s", tb_errmsg());
    server_close(d);
    return 1;
  }
  watchdog_resume(d->cfg);
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
  notify_systemd("STOPPING=1");
  pxe_stop(d);
  iscsid_stop(d);
  nbd_stop(d);
  nbd_unlisten(d);
  tb_eventf(d->cfg->state_dir, "daemon-stop", NULL, "{s:I}", "pid", (json_int_t)getpid());
  journal_poll(d); /* hand the last events to the webhooks */
  if (d->cfg->metrics_file)
    metrics_write(d); /* d->quit: tabula_up 0, so a scraper sees the daemon stopped */
  watchdog_stop();
  watchdog_free();
  webhooks_shutdown();
  server_close(d);
  tb_config_unref(d->cfg);
  free(d->sched);
  free(d->counters);
  curl_global_cleanup();
  if (r == -1) {
    log_msg("%s", tb_errmsg());
    return 1;
  }
  return 0;
}
