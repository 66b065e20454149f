/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: the client directory (see clientdir.h).
 *
 * One table names the files of a client directory; every path is the
 * client's directory joined with a name from it, with a number (a retained
 * session, a pruned one, a quarantined overlay), or with a name a walk of
 * one of its directories listed (tb_clientdir_entry).  A disk id "ID/DISK" maps to
 * clients/ID/disks/DISK, made (by tb_clientdir_mkdir) with its parents
 * private, as everything in the state directory is.
 */
#include <config.h>

#include <stdio.h>
#include <string.h>

#include "clientdir.h"
#include "util.h"

static const char *const names[] = {
    [TB_CF_DIR] = "",
    [TB_CF_OVERLAY] = "overlay",
    [TB_CF_OVERLAY_NEXT] = "overlay.next",
    [TB_CF_OVERLAY_GOOD] = "overlay.good",
    [TB_CF_OVERLAY_GOOD_TMP] = "overlay.good.tmp.watchdog",
    [TB_CF_OVERLAY_RESTORE] = "overlay.restore",
    [TB_CF_SESSIONS] = "sessions",
    [TB_CF_SEQ] = "seq",
    [TB_CF_LOCK] = "lock",
    [TB_CF_SESSION_JSON] = "session.json",
    [TB_CF_SESSION_SPARE] = "session.json.spare",
    [TB_CF_LIVE_JSON] = "live.json",
    [TB_CF_MAILBOX] = "mailbox.json",
    [TB_CF_MAILBOX_LOCK] = "mailbox.lock",
    [TB_CF_BOOT] = "boot",
    [TB_CF_EVENTS] = "events.jsonl",
    [TB_CF_MAINTENANCE] = "maintenance.json",
    [TB_CF_SCHEDULE] = "schedule.json",
    [TB_CF_MERGE_SCHEDULE] = "merge-schedule.json",
    [TB_CF_WATCHDOG] = "watchdog.json",
    [TB_CF_HEALTH] = "health.json",
    [TB_CF_GOOD] = "good",
    [TB_CF_GOOD_OVERLAY] = "good/overlay",
    [TB_CF_QUARANTINE] = "quarantine",
    [TB_CF_QUARANTINE_SEQ] = "quarantine/seq",
    [TB_CF_TRASH] = "trash",
    [TB_CF_DISKS] = "disks",
    [TB_CF_DISKS_LOCK] = "disks.lock",
};

int tb_clientdir_root(const char *state, char *buf, size_t len)
{
  return tb_path(buf, len, "%s/clients", state);
}

/* clients/ID, or clients/ID/disks/DISK for a disk id. */
static int client_dir(const char *state, const char *id, char *buf, size_t len)
{
  if (!tb_client_id_valid(id))
    return tb_error("invalid client name \"%.80s\" (1-64 characters [A-Za-z0-9._-], starting "
                    "with a letter or digit; a disk: CLIENT/DISK)",
                    id ? id : "");
  const char *slash = strchr(id, '/');
  if (!slash)
    return tb_path(buf, len, "%s/clients/%s", state, id);
  return tb_path(buf, len, "%s/clients/%.*s/disks/%s", state, (int)(slash - id), id, slash + 1);
}

int tb_clientdir_path(const char *state, const char *id, enum tb_cf f, char *buf, size_t len)
{
  if ((size_t)f >= sizeof names / sizeof names[0] || !names[f])
    return tb_error("client %s: no such file in a client directory (%d)", id, (int)f);
  if (f == TB_CF_DIR)
    return client_dir(state, id, buf, len);
  char dir[TB_PATH_MAX];
  if (client_dir(state, id, dir, sizeof dir) == -1)
    return -1;
  return tb_path(buf, len, "%s/%s", dir, names[f]);
}

int tb_clientdir_mkdir(const char *state, const char *id, char *buf, size_t len)
{
  if (client_dir(state, id, buf, len) == -1)
    return -1;
  const char *slash = strchr(id, '/');
  if (slash) { /* clients/ID and clients/ID/disks private too, not mkdir -p's 0755 */
    char client[TB_NAME_MAX + 1], parent[TB_PATH_MAX];
    snprintf(client, sizeof client, "%.*s", (int)(slash - id), id);
    if (client_dir(state, client, parent, sizeof parent) == -1 || tb_mkdirs(parent, true) == -1 ||
        tb_clientdir_path(state, client, TB_CF_DISKS, parent, sizeof parent) == -1 ||
        tb_mkdirs(parent, true) == -1)
      return -1;
  }
  return tb_mkdirs(buf, true);
}

/* Entry N of directory F of ID. */
static int numbered(const char *state, const char *id, enum tb_cf f, uint64_t n, char *buf,
                    size_t len)
{
  char dir[TB_PATH_MAX];
  if (tb_clientdir_path(state, id, f, dir, sizeof dir) == -1)
    return -1;
  return tb_path(buf, len, "%s/%llu", dir, (unsigned long long)n);
}

int tb_clientdir_session(const char *state, const char *id, uint64_t n, char *buf, size_t len)
{
  return numbered(state, id, TB_CF_SESSIONS, n, buf, len);
}

int tb_clientdir_trashed(const char *state, const char *id, uint64_t n, char *buf, size_t len)
{
  return numbered(state, id, TB_CF_TRASH, n, buf, len);
}

int tb_clientdir_entry(const char *state, const char *id, enum tb_cf f, const char *name, char *buf,
                       size_t len)
{
  char dir[TB_PATH_MAX];
  if (tb_clientdir_path(state, id, f, dir, sizeof dir) == -1)
    return -1;
  if (!name || !name[0] || strcmp(name, ".") == 0 || strcmp(name, "..") == 0 || strchr(name, '/'))
    return tb_error("%s: \"%.80s\" is not the name of an entry", dir, name ? name : "");
  return tb_path(buf, len, "%s/%s", dir, name);
}

int tb_clientdir_good_pending(const char *state, const char *id, uint64_t n, char *buf, size_t len)
{
  char dir[TB_PATH_MAX];
  if (tb_clientdir_path(state, id, TB_CF_GOOD, dir, sizeof dir) == -1)
    return -1;
  return tb_path(buf, len, "%s/overlay.%llu", dir, (unsigned long long)n);
}

int tb_clientdir_quarantined(const char *state, const char *id, uint64_t n, enum tb_cq what,
                             char *buf, size_t len)
{
  static const char *const parts[] = {
      [TB_CQ_DIR] = "", [TB_CQ_OVERLAY] = "/overlay", [TB_CQ_NOTE] = "/note.json"};
  char dir[TB_PATH_MAX];
  if ((size_t)what >= sizeof parts / sizeof parts[0] ||
      tb_clientdir_path(state, id, TB_CF_QUARANTINE, dir, sizeof dir) == -1)
    return -1;
  return tb_path(buf, len, "%s/%llu%s", dir, (unsigned long long)n, parts[what]);
}

enum tb_ctemp tb_clientdir_temp(const char *name)
{
  if (strcmp(name, names[TB_CF_OVERLAY_RESTORE]) == 0 ||
      (strncmp(name, "overlay.", 8) == 0 && strstr(name, ".tmp.")))
    return TB_CT_OVERLAY;
  /* tb_write_file_atomic's NAME.tmp.XXXXXX (session.json and seq are written
   * under the client's lock, mailbox.json also under mailbox.lock; the boot
   * marker, the maintenance record and the schedule marks only by the
   * daemon's main thread, the one that sweeps them at its start and for
   * tabulactl image gc) */
  static const enum tb_cf records[] = {TB_CF_SESSION_JSON,  TB_CF_SEQ,         TB_CF_MAILBOX,
                                       TB_CF_BOOT,          TB_CF_MAINTENANCE, TB_CF_SCHEDULE,
                                       TB_CF_MERGE_SCHEDULE};
  for (size_t i = 0; i < sizeof records / sizeof *records; i++) {
    size_t n = strlen(names[records[i]]);
    if (strncmp(name, names[records[i]], n) == 0 && strncmp(name + n, ".tmp.", 5) == 0 &&
        strlen(name) == n + 5 + 6)
      return records[i] == TB_CF_MAILBOX ? TB_CT_MAILBOX : TB_CT_RECORD;
  }
  return TB_CT_NONE;
}
