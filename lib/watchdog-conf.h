/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: the watchdog's configuration.
 *
 * One "watchdog" object, at the top level (defaults for every client) and/or
 * in a group or client (which replaces the keys it sets):
 *
 *   "watchdog": {
 *     "protect":  [ {"name": "boot", "region": "mbr", "action": "deny"},
 *                   {"name": "sys",  "region": "partition:1", "action": "alert"},
 *                   {"name": "raw",  "region": "lba:0-2047", "action": "deny"} ],
 *     "idle":     "30m",            an event when a connected client does no I/O this long
 *     "reserve":  "2G",             (top level) keep this much free in the state dir:
 *                                   below it, writes needing new blocks fail with ENOSPC
 *     "rules":    [ {"name": "hosts", "path": "/Windows/System32/drivers/etc/hosts",
 *                    "volume": "p2-ntfs", "on": "changed", "action": "quarantine"} ],
 *     "interval": "5m",             how often rules run on live clients (and at session end)
 *     "scan_timeout": "10s",        deadline of each read into the guest's filesystems
 *                                   (a tree walk gets 12 times as long, a diff 24)
 *     "health":   {"marker": "/var/lib/tabula/healthy", "volume": "p1-ext4",
 *                  "min_session": "10m", "strikes": 3},
 *     "canary":   {"promote_after": 5, "withdraw_after": 2}
 *   }
 *
 * Regions: "mbr" (sector 0), "gpt" (sectors 0-33 and the backup table in the
 * last 33 sectors), "partition:N" (read from the base version's partition
 * table when a session starts) and "lba:FIRST-LAST" (512-byte sectors,
 * inclusive).  Actions: "deny" fails the write with EPERM, "alert" lets it
 * through; both record an event (rate-limited per region).
 *
 * File rules: "on" is "created", "changed", "deleted" (compared with the base
 * version) or "exists"; "path" is a glob (fnmatch, FNM_PATHNAME) inside the
 * volume, "volume" a volume name of the view (default: every volume).
 * Actions: "alert", "quarantine", "rollback", "lockdown".
 */
#ifndef TB_WATCHDOG_CONF_H
#define TB_WATCHDOG_CONF_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "region.h"
#include "util.h"

enum tb_guard_action { TB_GUARD_ALERT = 0, TB_GUARD_DENY = 1 };

struct tb_protect {
  char name[TB_NAME_MAX + 1];
  struct tb_region region;
  enum tb_guard_action action;
};

enum tb_rule_on { TB_RULE_CREATED, TB_RULE_CHANGED, TB_RULE_DELETED, TB_RULE_EXISTS };
enum tb_rule_action { TB_RULE_ALERT, TB_RULE_QUARANTINE, TB_RULE_ROLLBACK, TB_RULE_LOCKDOWN };

struct tb_file_rule {
  char name[TB_NAME_MAX + 1];
  char *path;      /* glob */
  char volume[48]; /* "" = every volume */
  enum tb_rule_on on;
  enum tb_rule_action action;
};

struct tb_watchdog_conf {
  struct tb_protect *protect;
  size_t n_protect;
  int64_t idle_ms;        /* 0 = off */
  uint64_t reserve_bytes; /* 0 = off */
  struct tb_file_rule *rules;
  size_t n_rules;
  int64_t interval_ms;     /* 0 = only at session end */
  int64_t scan_timeout_ms; /* 0 = lib/inspect's default (10 s) */
  char *health_marker;     /* NULL = no marker */
  char health_volume[48];
  int64_t health_min_session_ms; /* 0 = off */
  int health_strikes;            /* default 3 */
  int canary_promote_after;      /* default 5 */
  int canary_withdraw_after;     /* default 2 */
};

/* Parse a watchdog object (PATH names it in errors).  Keys absent from OBJ
 * keep the value already in *W, so a client's section can be parsed on top
 * of the defaults.  Returns 0, or -1 with "PATH.key: ..." in tb_errmsg(). */
int tb_watchdog_parse(const json_t *obj, const char *path, struct tb_watchdog_conf *w);
/* The effective watchdog of a client: top-level defaults, then its own section
 * (which, for a client in a group, already carries the group's). */
int tb_watchdog_for(const json_t *top, const json_t *client, struct tb_watchdog_conf *w);
void tb_watchdog_free(struct tb_watchdog_conf *w);

const char *tb_rule_action_name(enum tb_rule_action a);

#endif
