/* SPDX-License-Identifier: BSD-3-Clause */
/* tabulactl: the progress line (see progress.h). */
#include <config.h>

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "progress.h"
#include "util.h"

#define BAR_WIDTH 30
#define REDRAW_MS 100
#define RATE_AFTER_MS 500

void human_size(uint64_t n, char *out, size_t len)
{
  static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = (double)n;
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    u++;
  }
  if (u == 0)
    snprintf(out, len, "%" PRIu64 " B", n);
  else
    snprintf(out, len, "%.1f %s", v, units[u]);
}

void progress_init(struct progress *p, const char *what, bool quiet)
{
  memset(p, 0, sizeof *p);
  p->on = !quiet && isatty(STDERR_FILENO);
  snprintf(p->what, sizeof p->what, "%s", what);
  p->start_ms = p->phase_ms = tb_now_ms();
}

static void new_phase(struct progress *p, const char *phase, int64_t now)
{
  if (strcmp(phase, p->phase) != 0) {
    snprintf(p->phase, sizeof p->phase, "%s", phase);
    p->phase_ms = now;
  }
}

void progress_step(struct progress *p, const char *step)
{
  if (!p->on)
    return;
  new_phase(p, step, tb_now_ms());
  fprintf(stderr, "\r\033[K%s: %s...", p->what, step);
  fflush(stderr);
  p->drawn = true;
}

void progress_show(struct progress *p, const char *phase, uint64_t done, uint64_t total)
{
  if (!p->on)
    return;
  int64_t now = tb_now_ms();
  if (!phase)
    phase = "";
  new_phase(p, phase, now);
  if (now - p->last_ms < REDRAW_MS && done < total)
    return;
  p->last_ms = now;
  int pct = total ? (int)(done * 100 / total) : 100;
  char bar[BAR_WIDTH + 1];
  for (int i = 0; i < BAR_WIDTH; i++)
    bar[i] = i < pct * BAR_WIDTH / 100 ? '#' : '.';
  bar[BAR_WIDTH] = '\0';
  char d[32], t[32], rate[40] = "", eta[48] = "";
  bool chunks = strstr(phase, "chunks") != NULL;
  if (chunks) {
    snprintf(d, sizeof d, "%" PRIu64, done);
    snprintf(t, sizeof t, "%" PRIu64, total);
  } else {
    human_size(done, d, sizeof d);
    human_size(total, t, sizeof t);
  }
  if (now > p->phase_ms + RATE_AFTER_MS) {
    double per_s = (double)done * 1000 / (double)(now - p->phase_ms);
    if (chunks) {
      snprintf(rate, sizeof rate, " %.0f/s", per_s);
    } else {
      char r[32];
      human_size((uint64_t)per_s, r, sizeof r);
      snprintf(rate, sizeof rate, " %s/s", r);
    }
    /* The phase's remaining time at its rate so far. */
    if (per_s > 0 && done < total) {
      uint64_t left = (uint64_t)((double)(total - done) / per_s + 0.5);
      if (left >= 3600)
        snprintf(eta, sizeof eta, ", ETA %" PRIu64 "h%02" PRIu64 "m", left / 3600, left / 60 % 60);
      else
        snprintf(eta, sizeof eta, ", ETA %" PRIu64 "m%02" PRIu64 "s", left / 60, left % 60);
    }
  }
  fprintf(stderr, "\r\033[K%s: %s [%s] %3d%% %s of %s%s%s", p->what, phase, bar, pct, d, t, rate,
          eta);
  fflush(stderr);
  p->drawn = true;
}

void progress_done(struct progress *p)
{
  /* Flushed before the result goes to stdout: stderr is line-buffered in
   * tabulactl (its --json error capture), and the erased line must not
   * follow the result. */
  if (p->on && p->drawn) {
    fprintf(stderr, "\r\033[K");
    fflush(stderr);
  }
}
