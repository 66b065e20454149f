/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-restored: the daemon's configuration: loading, the checks beyond
 * the core parser's (lib/conf.c), and reloading.
 *
 * A reload (SIGHUP, tabulactl reload) loads and checks the file as a start
 * does; a file with an error is refused and the running configuration
 * stays.  A good one replaces it: schedules resume where they stood, nbdkit
 * restarts only when its own settings changed (else its listeners are
 * re-applied), dnsmasq and tabula-iscsid get theirs, webhooks and the
 * journal's limits follow.
 */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "clientcheck.h"
#include "control.h"
#include "daemon.h"
#include "events.h"
#include "repo.h"
#include "store.h"

/* Checks beyond the core parser's that only the daemon needs: the "pull"
 * section (the repository layer's) and the schedules. */
struct tb_config *config_load(const char *file, struct client_sched **sched, size_t *n)
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

/* The configuration may hold secrets (a webhook's secret, S3 keys): say so
 * when others may read it.  A state directory others may enter (an older
 * tabula made it 0755) exposes what is in it. */
void config_warn_if_exposed(const char *config, const char *state)
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

/* What start and reload check beyond config_load(), alike: -1 refuses the
 * configuration (a group that does not exist, a missing TLS directory:
 * nbdkit could not start with it).  A client that cannot be served (no
 * version of its image yet, a pinned version missing or torn, a preserved or
 * protected partition its version lacks) does not refuse the file: the
 * plugin refuses that client alone.  Each is a log line, a
 * "client-unservable" event and an entry in WARNINGS (id -> reason). */
int config_validate(const struct tb_config *cfg, json_t *warnings)
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

int daemon_reload(struct daemon *d)
{
  return daemon_reload_warn(d, NULL);
}

int daemon_reload_warn(struct daemon *d, json_t *warnings)
{
  char err[2048];
  struct client_sched *sched;
  size_t n;
  struct tb_config *cfg = config_load(d->config_file, &sched, &n);
  if (cfg && config_validate(cfg, warnings) == -1) {
    tb_config_unref(cfg);
    free(sched);
    cfg = NULL;
  }
  if (!cfg) {
    char why[1024];
    snprintf(why, sizeof why, "%s", tb_errmsg());
    snprintf(err, sizeof err, "configuration not reloaded, the running one stays: %s", why);
    log_msg("%s", err);
    tb_eventf(d->cfg->state_dir, "reload-failed", NULL, "{s:s}", "error", why);
    return tb_error("%s", err);
  }
  if (strcmp(cfg->state_dir, d->cfg->state_dir) != 0) {
    snprintf(err, sizeof err,
             "configuration not reloaded: state_dir changed from %s to %s; restart "
             "tabula-restored to move it",
             d->cfg->state_dir, cfg->state_dir);
    tb_config_unref(cfg);
    free(sched);
    log_msg("%s", err);
    return tb_error("%s", err);
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
  config_warn_if_exposed(d->config_file, cfg->state_dir);
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
