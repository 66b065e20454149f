/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: the watchdog's configuration, the "watchdog" sections (see watchdog-conf.h).
 *
 * Parsing follows conf.c's rules, with json.h's helpers: strict keys, errors
 * that start with the JSON path, the same getters of durations, sizes and
 * integers.  conf.c calls tb_watchdog_parse() on every watchdog section so a bad
 * rule stops the configuration from loading; the plugin and the daemon call
 * tb_watchdog_for() to get a client's effective settings.
 *
 * What it configures runs elsewhere: the data-path guards (guards.c), the
 * idle and reserve checks of the plugin's tick thread (lib/live.c), and the
 * daemon's scans, actions, health and canaries (restored/watchdog.c).
 */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "json.h"
#include "watchdog-conf.h"

/* A count from 1 to 1000, into an int. */
static int get_count(const json_t *obj, const char *path, const char *key, int *out)
{
  long long n = *out;
  if (tb_json_get_int(obj, path, key, 1, 1000, &n) == -1)
    return -1;
  *out = (int)n;
  return 0;
}

static int get_name(const json_t *obj, const char *path, char *out)
{
  json_t *v = json_object_get(obj, "name");
  if (!v)
    return tb_error("%s.name: missing (every rule has a name that its events carry)", path);
  if (!json_is_string(v) || !tb_name_valid(json_string_value(v)))
    return tb_json_bad_at(path, "name", "a name of 1-64 characters [A-Za-z0-9._-]", v);
  strcpy(out, json_string_value(v));
  return 0;
}

static int parse_protect(const json_t *arr, const char *path, struct tb_watchdog_conf *w)
{
  if (!json_is_array(arr))
    return tb_json_bad_at(path, NULL, "an array of {\"name\", \"region\", \"action\"}", arr);
  free(w->protect);
  w->n_protect = 0;
  w->protect = calloc(json_array_size(arr) + 1, sizeof *w->protect);
  if (!w->protect)
    return tb_error_errno("%s", path);
  size_t i;
  json_t *e;
  json_array_foreach(arr, i, e)
  {
    char p[512];
    snprintf(p, sizeof p, "%s[%zu]", path, i);
    static const char *const keys[] = {"name", "region", "action", NULL};
    struct tb_protect *pr = &w->protect[w->n_protect];
    if (!json_is_object(e))
      return tb_json_bad_at(p, NULL, "an object {\"name\", \"region\", \"action\"}", e);
    if (tb_json_check_keys(e, p, keys) == -1 || get_name(e, p, pr->name) == -1)
      return -1;
    json_t *r = json_object_get(e, "region");
    if (!json_is_string(r) || tb_region_parse(json_string_value(r), true, &pr->region) == -1)
      return tb_json_bad_at(p, "region", "\"mbr\", \"gpt\", \"partition:N\" or \"lba:FIRST-LAST\"",
                            r);
    json_t *a = json_object_get(e, "action");
    const char *as = json_is_string(a) ? json_string_value(a) : NULL;
    if (!a || (as && strcmp(as, "deny") == 0))
      pr->action = TB_GUARD_DENY;
    else if (as && strcmp(as, "alert") == 0)
      pr->action = TB_GUARD_ALERT;
    else
      return tb_json_bad_at(p, "action", "\"deny\" or \"alert\"", a);
    w->n_protect++;
  }
  return 0;
}

static const char *const on_names[] = {"created", "changed", "deleted", "exists"};
static const char *const action_names[] = {"alert", "quarantine", "rollback", "lockdown"};

const char *tb_rule_action_name(enum tb_rule_action a)
{
  return action_names[a];
}

static int parse_rules(const json_t *arr, const char *path, struct tb_watchdog_conf *w)
{
  if (!json_is_array(arr))
    return tb_json_bad_at(path, NULL, "an array of file rules", arr);
  for (size_t i = 0; i < w->n_rules; i++)
    free(w->rules[i].path);
  free(w->rules);
  w->n_rules = 0;
  w->rules = calloc(json_array_size(arr) + 1, sizeof *w->rules);
  if (!w->rules)
    return tb_error_errno("%s", path);
  size_t i;
  json_t *e;
  json_array_foreach(arr, i, e)
  {
    char p[512];
    snprintf(p, sizeof p, "%s[%zu]", path, i);
    static const char *const keys[] = {"name", "path", "volume", "on", "action", NULL};
    struct tb_file_rule *r = &w->rules[w->n_rules];
    if (!json_is_object(e))
      return tb_json_bad_at(p, NULL, "an object {\"name\", \"path\", \"on\", \"action\"}", e);
    if (tb_json_check_keys(e, p, keys) == -1 || get_name(e, p, r->name) == -1)
      return -1;
    json_t *v = json_object_get(e, "path");
    if (!json_is_string(v) || json_string_value(v)[0] != '/')
      return tb_json_bad_at(p, "path",
                            "an absolute glob inside the guest filesystem, such as "
                            "\"/Windows/System32/*.dll\"",
                            v);
    r->path = strdup(json_string_value(v));
    w->n_rules++; /* from here on, free() owns r->path */
    if ((v = json_object_get(e, "volume"))) {
      if (!json_is_string(v) || json_string_length(v) == 0 ||
          json_string_length(v) >= sizeof r->volume || strchr(json_string_value(v), '/'))
        return tb_json_bad_at(p, "volume", "a volume name of the view, such as \"p2-ntfs\"", v);
      strcpy(r->volume, json_string_value(v));
    }
    v = json_object_get(e, "on");
    int found = -1;
    for (int k = 0; k < 4 && json_is_string(v); k++)
      if (strcmp(json_string_value(v), on_names[k]) == 0)
        found = k;
    if (found < 0)
      return tb_json_bad_at(p, "on", "\"created\", \"changed\", \"deleted\" or \"exists\"", v);
    r->on = (enum tb_rule_on)found;
    v = json_object_get(e, "action");
    found = v ? -1 : TB_RULE_ALERT;
    for (int k = 0; k < 4 && json_is_string(v); k++)
      if (strcmp(json_string_value(v), action_names[k]) == 0)
        found = k;
    if (found < 0)
      return tb_json_bad_at(p, "action", "\"alert\", \"quarantine\", \"rollback\" or \"lockdown\"",
                            v);
    r->action = (enum tb_rule_action)found;
  }
  return 0;
}

static int parse_health(const json_t *h, const char *path, struct tb_watchdog_conf *w)
{
  static const char *const keys[] = {"marker", "volume", "min_session", "strikes", NULL};
  if (!json_is_object(h))
    return tb_json_bad_at(path, NULL, "an object {\"marker\", \"min_session\", \"strikes\"}", h);
  if (tb_json_check_keys(h, path, keys) == -1)
    return -1;
  json_t *v;
  if ((v = json_object_get(h, "marker"))) {
    if (!json_is_string(v) || json_string_value(v)[0] != '/')
      return tb_json_bad_at(path, "marker", "an absolute path inside the guest filesystem", v);
    free(w->health_marker);
    w->health_marker = strdup(json_string_value(v));
  }
  if ((v = json_object_get(h, "volume"))) {
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        json_string_length(v) >= sizeof w->health_volume)
      return tb_json_bad_at(path, "volume", "a volume name of the view, such as \"p1-ext4\"", v);
    strcpy(w->health_volume, json_string_value(v));
  }
  return tb_json_get_duration(h, path, "min_session", &w->health_min_session_ms) == -1 ||
                 get_count(h, path, "strikes", &w->health_strikes) == -1
             ? -1
             : 0;
}

int tb_watchdog_parse(const json_t *obj, const char *path, struct tb_watchdog_conf *w)
{
  static const char *const keys[] = {"protect", "idle",   "reserve",      "rules", "interval",
                                     "health",  "canary", "scan_timeout", NULL};
  if (!w->health_strikes)
    w->health_strikes = 3;
  if (!w->canary_promote_after)
    w->canary_promote_after = 5;
  if (!w->canary_withdraw_after)
    w->canary_withdraw_after = 2;
  if (!json_is_object(obj))
    return tb_json_bad_at(path, NULL, "an object", obj);
  if (tb_json_check_keys(obj, path, keys) == -1)
    return -1;
  char p[512];
  json_t *v;
  if ((v = json_object_get(obj, "protect"))) {
    snprintf(p, sizeof p, "%s.protect", path);
    if (parse_protect(v, p, w) == -1)
      return -1;
  }
  if (tb_json_get_duration(obj, path, "idle", &w->idle_ms) == -1 ||
      tb_json_get_duration(obj, path, "interval", &w->interval_ms) == -1 ||
      tb_json_get_duration(obj, path, "scan_timeout", &w->scan_timeout_ms) == -1)
    return -1;
  if (json_object_get(obj, "scan_timeout") &&
      (w->scan_timeout_ms < 100 || w->scan_timeout_ms > 3600 * 1000))
    return tb_json_bad_at(path, "scan_timeout", "a duration from \"100ms\" to \"1h\"",
                          json_object_get(obj, "scan_timeout"));
  if (tb_json_get_size(obj, path, "reserve", &w->reserve_bytes) == -1)
    return -1;
  if ((v = json_object_get(obj, "rules"))) {
    snprintf(p, sizeof p, "%s.rules", path);
    if (parse_rules(v, p, w) == -1)
      return -1;
  }
  if ((v = json_object_get(obj, "health"))) {
    snprintf(p, sizeof p, "%s.health", path);
    if (parse_health(v, p, w) == -1)
      return -1;
  }
  if ((v = json_object_get(obj, "canary"))) {
    static const char *const ckeys[] = {"promote_after", "withdraw_after", NULL};
    snprintf(p, sizeof p, "%s.canary", path);
    if (!json_is_object(v))
      return tb_json_bad_at(p, NULL, "an object {\"promote_after\", \"withdraw_after\"}", v);
    if (tb_json_check_keys(v, p, ckeys) == -1 ||
        get_count(v, p, "promote_after", &w->canary_promote_after) == -1 ||
        get_count(v, p, "withdraw_after", &w->canary_withdraw_after) == -1)
      return -1;
  }
  return 0;
}

int tb_watchdog_for(const json_t *top, const json_t *client, struct tb_watchdog_conf *w)
{
  memset(w, 0, sizeof *w);
  w->health_strikes = 3;
  w->canary_promote_after = 5;
  w->canary_withdraw_after = 2;
  if (top && tb_watchdog_parse(top, "watchdog", w) == -1)
    return -1;
  if (client && tb_watchdog_parse(client, "client watchdog", w) == -1)
    return -1;
  return 0;
}

void tb_watchdog_free(struct tb_watchdog_conf *w)
{
  free(w->protect);
  for (size_t i = 0; i < w->n_rules; i++)
    free(w->rules[i].path);
  free(w->rules);
  free(w->health_marker);
  memset(w, 0, sizeof *w);
}
