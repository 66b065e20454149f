/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-restored: Prometheus metrics in node exporter's textfile format.
 *
 * Every "metrics.interval" (default 15 s) the daemon writes "metrics.file"
 * atomically (a temporary in the same directory, then rename), as the
 * textfile collector requires.  Per-client gauges come from the state
 * directory (session.json, the lock); counters (sessions, bytes, errors) from
 * the session-end events the daemon has seen since it started.
 *
 * A scraper must tell a stopped daemon from a quiet one: the daemon writes
 * the file once more as it stops, with tabula_up 0, and every write carries
 * tabula_metrics_timestamp_seconds (when it was written), so a file left by
 * a daemon that was killed shows its age.
 */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon.h"
#include "session.h"
#include "store.h"

/* The file is built in memory (open_memstream) and written at once: a
 * failure anywhere drops the whole write, never a file with lines missing. */
struct buf {
  FILE *f;
  char *p;
  size_t len;
};

static void add(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(struct buf *b, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vfprintf(b->f, fmt, ap);
  va_end(ap);
}

static void header(struct buf *b, const char *name, const char *type, const char *help)
{
  add(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void metrics_write(struct daemon *d)
{
  const struct tb_config *cfg = d->cfg;
  struct buf b = {0};
  if (!(b.f = open_memstream(&b.p, &b.len))) {
    log_msg("metrics: cannot build %s: %s", cfg->metrics_file, strerror(errno));
    return;
  }
  bool up = d->nbd.child.ready;
  header(&b, "tabula_up", "gauge", "1 while tabula-restored runs, 0 once it has stopped");
  add(&b, "tabula_up %d\n", !d->quit);
  header(&b, "tabula_metrics_timestamp_seconds", "gauge",
         "when this file was written (seconds since the epoch): a stale file shows its age");
  add(&b, "tabula_metrics_timestamp_seconds %.3f\n", (double)tb_now_ms() / 1000.0);
  header(&b, "tabula_nbdkit_up", "gauge", "1 while nbdkit serves");
  add(&b, "tabula_nbdkit_up %d\n", up && !d->quit);
  header(&b, "tabula_nbdkit_restarts_total", "counter", "nbdkit restarts since the daemon started");
  add(&b, "tabula_nbdkit_restarts_total %d\n", d->nbd.child.restarts);
  header(&b, "tabula_merges_total", "counter",
         "merges finished (or failed) since the daemon started");
  add(&b, "tabula_merges_total %llu\n", (unsigned long long)d->merges);
  json_t *wh = webhooks_status();
  header(&b, "tabula_webhook_sent_total", "counter", "webhook deliveries that succeeded");
  add(&b, "tabula_webhook_sent_total %lld\n",
      (long long)json_integer_value(json_object_get(wh, "sent")));
  header(&b, "tabula_webhook_failed_total", "counter",
         "webhook deliveries that failed after retries");
  add(&b, "tabula_webhook_failed_total %lld\n",
      (long long)json_integer_value(json_object_get(wh, "failed")));
  header(&b, "tabula_webhook_dropped_total", "counter",
         "events a webhook lost: rotated out of the journal before it could send them");
  add(&b, "tabula_webhook_dropped_total %lld\n",
      (long long)json_integer_value(json_object_get(wh, "dropped")));
  json_decref(wh);
  header(&b, "tabula_clients", "gauge", "configured clients");
  add(&b, "tabula_clients %zu\n", cfg->n_clients - cfg->n_disks);
  header(&b, "tabula_disks", "gauge",
         "further disks of the configured clients (each has its own tabula_client_* lines, "
         "client=\"ID/DISK\")");
  add(&b, "tabula_disks %zu\n", cfg->n_disks);

  json_t *clients;
  clients_status_json(d, &clients);
  static const struct {
    const char *name, *type, *help;
  } per[] = {
      {"tabula_client_active", "gauge", "1 while the client is in a session"},
      {"tabula_client_dirty_bytes", "gauge",
       "bytes of the client's overlay that differ from its base"},
      {"tabula_client_session", "gauge", "the client's current or last session number"},
      {"tabula_client_sessions_total", "counter", "sessions ended since the daemon started"},
      {"tabula_client_read_bytes_total", "counter",
       "bytes read by the client's sessions since the daemon started, the running one included"},
      {"tabula_client_written_bytes_total", "counter",
       "bytes written by the client's sessions since the daemon started, the running one included"},
      {"tabula_client_errors_total", "counter",
       "I/O errors of ended sessions since the daemon started"},
  };
  for (size_t m = 0; m < sizeof per / sizeof *per; m++) {
    header(&b, per[m].name, per[m].type, per[m].help);
    size_t i;
    json_t *c;
    json_array_foreach(clients, i, c)
    {
      const char *id = json_string_value(json_object_get(c, "id"));
      struct client_counters *cc = counters_for(d, id);
      /* A running session's figures (live.json), added to the ended ones. */
      json_t *fig = json_object_get(json_object_get(c, "live"), "figures");
      unsigned long long run_read = 0, run_written = 0;
      if (json_is_object(fig)) {
        run_read = (unsigned long long)json_integer_value(json_object_get(fig, "bytes_read"));
        run_written = (unsigned long long)json_integer_value(json_object_get(fig, "bytes_written"));
      }
      unsigned long long v = 0;
      switch (m) {
      case 0:
        v = strcmp(json_string_value(json_object_get(c, "state")), "active") == 0;
        break;
      case 1:
        v = (unsigned long long)json_integer_value(json_object_get(c, "dirty_bytes"));
        break;
      case 2:
        v = (unsigned long long)json_integer_value(json_object_get(c, "session"));
        break;
      case 3:
        v = cc ? cc->sessions : 0;
        break;
      case 4:
        v = (cc ? cc->bytes_read : 0) + run_read;
        break;
      case 5:
        v = (cc ? cc->bytes_written : 0) + run_written;
        break;
      case 6:
        v = cc ? cc->errors : 0;
        break;
      }
      add(&b, "%s{client=\"%s\"} %llu\n", per[m].name, id, v);
    }
  }
  json_decref(clients);
  bool built = !ferror(b.f);
  if (fclose(b.f) != 0 || !built)
    log_msg("metrics: cannot build %s: out of memory", cfg->metrics_file);
  else if (tb_write_file_atomic(cfg->metrics_file, b.p, b.len,
                                cfg->metrics_mode >= 0 ? cfg->metrics_mode : 0644) == -1)
    log_msg("metrics: %s", tb_errmsg());
  free(b.p);
}

/* Every metrics_interval (DEFAULT_INTERVAL_MS unset), while metrics_file is
 * set; a reload writes at once (it zeroes next_metrics_ms). */
#define DEFAULT_INTERVAL_MS 15000

static void metrics_tick(struct daemon *d, int64_t now)
{
  if (!d->cfg->metrics_file || now < d->next_metrics_ms)
    return;
  metrics_write(d);
  d->next_metrics_ms =
      now + (d->cfg->metrics_interval_ms > 0 ? d->cfg->metrics_interval_ms : DEFAULT_INTERVAL_MS);
}

static int64_t metrics_next(const struct daemon *d)
{
  return d->cfg->metrics_file ? d->next_metrics_ms : INT64_MAX;
}

const struct daemon_timer metrics_timer = {"metrics", metrics_tick, metrics_next};
