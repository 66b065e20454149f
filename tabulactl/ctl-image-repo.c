/* SPDX-License-Identifier: BSD-3-Clause */
/* tabulactl image publish / image pull (see ctl-image-repo.h).
 *
 * Thin: tabulactl's command table parses the options (as for every other
 * command: --help, unknown options, operand counts); their values become
 * lib/repo's options here, and the work is lib/repo-*.c, so the daemon's
 * scheduled pulls behave exactly like a pull typed by hand.  The pull runs in
 * this process (not through the daemon), so it works while the daemon is down
 * and Ctrl-C simply leaves a pull that the next run resumes.  Options given on
 * the command line override the config's "pull" section.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "clientcheck.h"
#include "ctl-image-repo.h"
#include "progress.h"
#include "repo.h"
#include "store.h"

/* Why REF is not an image reference; -1. */
static int bad_image_ref(const char *ref)
{
  fprintf(stderr, "tabulactl: \"%s\" is not an image or IMAGE@VERSION (e.g. win11@3)\n", ref);
  return -1;
}

/* "win11@3" -> win11, 3; "win11" -> win11, 0. */
static int parse_image_ref(const char *ref, char name[TB_NAME_MAX + 1], uint32_t *ver)
{
  const char *at = strchr(ref, '@');
  size_t len = at ? (size_t)(at - ref) : strlen(ref);
  *ver = 0;
  if (len == 0 || len > TB_NAME_MAX)
    return bad_image_ref(ref);
  memcpy(name, ref, len);
  name[len] = '\0';
  if (!tb_name_valid(name))
    return bad_image_ref(ref);
  if (at) {
    char *end;
    errno = 0;
    unsigned long v = strtoul(at + 1, &end, 10);
    if (errno || *end || at[1] < '1' || at[1] > '9' || v > UINT32_MAX)
      return bad_image_ref(ref);
    *ver = (uint32_t)v;
  }
  return 0;
}

/* ---- progress (progress.c draws it) ----------------------------------------- */

static const char *phase_name(enum tb_repo_phase p)
{
  switch (p) {
  case TB_REPO_INDEX:
    return "fetching the index";
  case TB_REPO_CLONE:
    return "cloning";
  case TB_REPO_RESUME:
    return "re-checking";
  case TB_REPO_DOWNLOAD:
    return "downloading";
  case TB_REPO_VERIFY:
    return "verifying";
  case TB_REPO_PUBLISH:
    return "publishing";
  case TB_REPO_COPY:
    return "copying";
  }
  return "";
}

/* lib/repo's progress as the progress line: the index and the final rename
 * are steps without a size. */
static void repo_progress(void *ctx, const struct tb_repo_progress *p)
{
  if (p->phase == TB_REPO_INDEX || p->phase == TB_REPO_PUBLISH)
    progress_step(ctx, phase_name(p->phase));
  else
    progress_show(ctx, phase_name(p->phase), p->done, p->total);
}

/* ---- publish ------------------------------------------------------------------ */

int ctl_image_publish(const char *ref, const char *dir, bool json, bool quiet,
                      const struct tb_config *cfg)
{
  char image[TB_NAME_MAX + 1];
  uint32_t ver, published;
  if (parse_image_ref(ref, image, &ver) == -1)
    return 2;
  char what[TB_NAME_MAX + 48];
  snprintf(what, sizeof what, "publishing %s", ref);
  struct progress bar;
  progress_init(&bar, what, quiet || json);
  int rc = tb_repo_publish(cfg->state_dir, image, ver, dir, repo_progress, &bar, &published);
  progress_done(&bar);
  if (rc == -1) {
    fprintf(stderr, "tabulactl: image publish: %s\n", tb_errmsg());
    return 1;
  }
  if (json) {
    char where[TB_PATH_MAX];
    snprintf(where, sizeof where, "%s/%s", dir, image);
    json_t *j = json_pack("{s:s, s:I, s:s}", "image", image, "version", (json_int_t)published,
                          "dir", where);
    char *text = j ? json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    if (text)
      printf("%s\n", text);
    free(text);
    json_decref(j);
  } else
    printf("published %s@%" PRIu32 " to %s/%s/ (index: %s/%s/index.json)\n", image, published, dir,
           image, dir, image);
  return 0;
}

/* ---- pull ---------------------------------------------------------------------- */

static int parse_duration_opt(const char *opt, const char *arg, int64_t *ms)
{
  if (tb_parse_duration(arg, ms) == -1 || *ms < 1000) {
    fprintf(stderr,
            "tabulactl: %s: expected a duration of at least 1s such as 10s, got "
            "\"%s\"\n",
            opt, arg);
    return -1;
  }
  return 0;
}

static void print_pull_result(const char *image, const char *url,
                              const struct tb_repo_pull_result *r, bool json)
{
  if (json) {
    json_t *j = json_pack(
        "{s:s, s:s, s:I, s:I, s:I, s:b, s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "image", image,
        "url", url, "remote_version", (json_int_t)r->remote_version, "version",
        (json_int_t)r->local_version, "base", (json_int_t)r->base_version, "already_present",
        r->already_present, "resumed", r->resumed, "size", (json_int_t)r->size, "chunks",
        (json_int_t)r->chunks_total, "chunks_cloned", (json_int_t)r->chunks_cloned, "chunks_copied",
        (json_int_t)r->chunks_copied, "chunks_resumed", (json_int_t)r->chunks_resumed,
        "chunks_downloaded", (json_int_t)r->chunks_downloaded, "bytes_downloaded",
        (json_int_t)r->bytes_downloaded);
    char *text = j ? json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    if (text)
      printf("%s\n", text);
    free(text);
    json_decref(j);
    return;
  }
  if (r->already_present) {
    printf("%s@%" PRIu32 " from %s is already here as %s@%" PRIu32 " (identical sha256)\n", image,
           r->remote_version, url, image, r->local_version);
    return;
  }
  char got[32], size[32];
  human_size(r->bytes_downloaded, got, sizeof got);
  human_size(r->size, size, sizeof size);
  printf("pulled %s@%" PRIu32 " from %s as %s@%" PRIu32 " (%s)\n", image, r->remote_version, url,
         image, r->local_version, size);
  if (r->base_version)
    printf("  base %s@%" PRIu32 ": %zu of %zu chunks cloned\n", image, r->base_version,
           r->chunks_cloned, r->chunks_total);
  printf("  %zu chunks downloaded (%s transferred), %zu found locally%s", r->chunks_downloaded, got,
         r->chunks_copied, r->resumed ? "" : "\n");
  if (r->resumed)
    printf(", %zu kept from the interrupted pull\n", r->chunks_resumed);
}

/* Fields the command line changed from their defaults win over the config. */
static void merge_cli_opts(struct tb_repo_pull_opts *o, const struct tb_repo_pull_opts *cli,
                           const struct tb_repo_pull_opts *def)
{
  if (cli->url)
    o->url = cli->url;
  if (cli->version)
    o->version = cli->version;
  if (cli->rate_limit)
    o->rate_limit = cli->rate_limit;
  if (cli->parallel != def->parallel)
    o->parallel = cli->parallel;
  if (cli->connect_timeout_ms != def->connect_timeout_ms)
    o->connect_timeout_ms = cli->connect_timeout_ms;
  if (cli->stall_timeout_ms != def->stall_timeout_ms)
    o->stall_timeout_ms = cli->stall_timeout_ms;
  if (cli->ca_file)
    o->ca_file = cli->ca_file;
}

/* A's option values onto O (lib/repo's defaults); 2 after a message
 * naming the bad one. */
static int pull_cli_opts(const struct ctl_pull_options *a, struct tb_repo_pull_opts *o)
{
  char *end;
  o->url = a->from;
  if (a->version) {
    errno = 0;
    unsigned long v = strtoul(a->version, &end, 10);
    if (errno || *end || a->version[0] < '1' || a->version[0] > '9' || v > UINT32_MAX) {
      fprintf(stderr, "tabulactl: --version: expected a version number, got \"%s\"\n", a->version);
      return 2;
    }
    o->version = (uint32_t)v;
  }
  if (a->rate_limit && tb_parse_size(a->rate_limit, &o->rate_limit) == -1) {
    fprintf(stderr, "tabulactl: --rate-limit: %s (bytes per second)\n", tb_errmsg());
    return 2;
  }
  if (a->parallel) {
    long v = strtol(a->parallel, &end, 10);
    if (*end || v < 1 || v > 32) {
      fprintf(stderr, "tabulactl: --parallel: expected 1 to 32, got \"%s\"\n", a->parallel);
      return 2;
    }
    o->parallel = (int)v;
  }
  if (a->connect_timeout &&
      parse_duration_opt("--connect-timeout", a->connect_timeout, &o->connect_timeout_ms) == -1)
    return 2;
  if (a->stall_timeout &&
      parse_duration_opt("--stall-timeout", a->stall_timeout, &o->stall_timeout_ms) == -1)
    return 2;
  o->ca_file = a->ca_file;
  return 0;
}

int ctl_image_pull(const char *image, const struct ctl_pull_options *a, const struct tb_config *cfg)
{
  struct tb_repo_pull_opts o;
  tb_repo_pull_opts_init(&o);
  int bad = pull_cli_opts(a, &o);
  if (bad)
    return bad;
  bool json = a->json, quiet = a->quiet;
  if (!tb_name_valid(image)) {
    fprintf(stderr, "tabulactl: \"%s\" is not an image name ([A-Za-z0-9._-], 1-64)\n", image);
    return 2;
  }
  /* Config first, then the command line on top. */
  struct tb_repo_pull_opts cli = o;
  tb_repo_pull_opts_init(&o);
  if (cfg->pull && tb_repo_pull_opts_from_config(cfg->pull, image, &o) == -1) {
    fprintf(stderr, "tabulactl: %s: %s\n", cfg->path ? cfg->path : "config", tb_errmsg());
    return 1;
  }
  struct tb_repo_pull_opts defaults;
  tb_repo_pull_opts_init(&defaults);
  merge_cli_opts(&o, &cli, &defaults);
  if (!o.url) {
    fprintf(stderr, "tabulactl: image pull: no repository: give --from URL, or set "
                    "\"pull\": {\"from\": URL} in the config\n");
    return 2;
  }
  char what[TB_NAME_MAX + 16];
  snprintf(what, sizeof what, "pulling %s", image);
  struct progress bar;
  progress_init(&bar, what, quiet || json);
  struct tb_repo_pull_result r;
  int rc = tb_repo_pull(cfg->state_dir, image, &o, repo_progress, &bar, &r);
  progress_done(&bar);
  if (rc == -1) {
    fprintf(stderr, "tabulactl: image pull %s: %s\n", image, tb_errmsg());
    if (r.chunks_downloaded && !json)
      fprintf(stderr,
              "tabulactl: %zu verified chunks are kept; run the same pull again to "
              "resume\n",
              r.chunks_downloaded);
    return 1;
  }
  print_pull_result(image, o.url, &r, json);
  /* The configured clients that follow IMAGE's newest version, checked
   * against the pulled one: one that cannot be served is named, with the
   * rule and the way back. */
  for (size_t i = 0; !r.already_present && i < cfg->n_clients; i++) {
    const struct tb_client_conf *cl = &cfg->clients[i];
    if (strcmp(cl->image, image) != 0 || cl->version ||
        tb_client_check_version(cfg, cl, image, r.local_version) == 0)
      continue;
    fprintf(stderr, "tabulactl: warning: %s (%s is refused on %s@%" PRIu32, tb_errmsg(), cl->id,
            image, r.local_version);
    if (r.local_version > 1)
      fprintf(stderr, "; to go back: tabulactl image promote %s@%" PRIu32, image,
              r.local_version - 1);
    fprintf(stderr, ")\n");
  }
  return 0;
}
