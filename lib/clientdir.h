/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: the client directory -- the one owner of every path under
 * STATE/clients.
 *
 * Layout (ID a client id; a disk id "ID/DISK" has the same files in
 * clients/ID/disks/DISK, so a client's first disk keeps the layout it always
 * had):
 *   clients/ID/overlay              the current overlay (overlay.h)
 *   clients/ID/overlay.next         a merge's move onto its new version, the journal
 *                                   of intent (restored/jobs.c)
 *   clients/ID/overlay.good         the watchdog's fall-back to the last known good,
 *                                   its journal (restored/health.c); built as
 *                                   overlay.good.tmp.watchdog
 *   clients/ID/overlay.restore      a retained session being made the overlay again
 *   clients/ID/sessions/N           retained sessions (restore points)
 *   clients/ID/seq                  the last session number given out
 *   clients/ID/lock                 flock: held for a whole session, or by the daemon
 *   clients/ID/session.json         the plugin's view of the session (state, figures);
 *                                   session.json.spare its room on a full disk
 *   clients/ID/live.json            a live session's figures for the live view (live.h)
 *   clients/ID/mailbox.json, .lock  what the daemon asks of the next session (mailbox.h)
 *   clients/ID/boot                 the boot marker (boot.h)
 *   clients/ID/events.jsonl         the client's share of the event journal (events.h)
 *   clients/ID/maintenance.json     a maintenance PC's record (maintenance.h)
 *   clients/ID/schedule.json        the refresh schedule's mark (restored/schedules.c)
 *   clients/ID/merge-schedule.json  the merge schedule's mark
 *   clients/ID/watchdog.json        the watchdog's scan mark (restored/scan.c)
 *   clients/ID/health.json          health: strikes, the last known good
 *   clients/ID/good/overlay         the last known good overlay; good/overlay.N one
 *                                   being saved from session N
 *   clients/ID/quarantine/N/{overlay,note.json}  quarantined overlays; quarantine/seq
 *                                   keeps their numbers from being reused
 *   clients/ID/trash/N              a turn's retained sessions being pruned
 *   clients/ID/disks/DISK/          a further disk of the client (conf.h "disks")
 *   clients/ID/disks.lock           flock: held while a frontend serves any disk of a
 *                                   client with further disks (live.c)
 *
 * Why its own module and not store.c: store.c owns the image store
 * (images/NAME/N.img and its manifests, publishing, gc); the client
 * directory is read and written by every owner of a client concept
 * (session turns, the mailbox, live figures, boots, maintenance, merges,
 * the watchdog, schedules), and naming its files in one enum keeps the
 * layout in one place: no other file formats a clients/ path (make check:
 * check-clientdir in lib/Makefile.am).
 *
 * tb_store_clients (store.h) lists the client and disk directories there
 * are, through these paths.
 *
 * Every function validates the id (tb_client_id_valid) and returns -1 with
 * tb_error if it is invalid or the path too long; none touches the disk
 * except tb_clientdir_mkdir.
 */
#ifndef TB_CLIENTDIR_H
#define TB_CLIENTDIR_H

#include <stddef.h>
#include <stdint.h>

/* The files and directories of a client directory. */
enum tb_cf {
  TB_CF_DIR, /* clients/ID itself */
  TB_CF_OVERLAY,
  TB_CF_OVERLAY_NEXT,
  TB_CF_OVERLAY_GOOD,
  TB_CF_OVERLAY_GOOD_TMP,
  TB_CF_OVERLAY_RESTORE,
  TB_CF_SESSIONS,
  TB_CF_SEQ,
  TB_CF_LOCK,
  TB_CF_SESSION_JSON,
  TB_CF_SESSION_SPARE,
  TB_CF_LIVE_JSON,
  TB_CF_MAILBOX,
  TB_CF_MAILBOX_LOCK,
  TB_CF_BOOT,
  TB_CF_EVENTS,
  TB_CF_MAINTENANCE,
  TB_CF_SCHEDULE,
  TB_CF_MERGE_SCHEDULE,
  TB_CF_WATCHDOG,
  TB_CF_HEALTH,
  TB_CF_GOOD,
  TB_CF_GOOD_OVERLAY,
  TB_CF_QUARANTINE,
  TB_CF_QUARANTINE_SEQ,
  TB_CF_TRASH,
  TB_CF_DISKS,
  TB_CF_DISKS_LOCK,
};

/* STATE/clients. */
int tb_clientdir_root(const char *state, char *buf, size_t len);
/* File F of client (or disk) ID. */
int tb_clientdir_path(const char *state, const char *id, enum tb_cf f, char *buf, size_t len);
/* Create ID's directory (and a disk's parents), private; BUF gets its path. */
int tb_clientdir_mkdir(const char *state, const char *id, char *buf, size_t len);
/* clients/ID/sessions/N: retained session N. */
int tb_clientdir_session(const char *state, const char *id, uint64_t n, char *buf, size_t len);
/* clients/ID/trash/N: retained session N being pruned (session.c). */
int tb_clientdir_trashed(const char *state, const char *id, uint64_t n, char *buf, size_t len);
/* Entry NAME of F, a directory of client ID (TB_CF_DIR, TB_CF_SESSIONS,
 * TB_CF_TRASH...), for a name readdir(3) listed there: a walk of a client
 * directory joins through here too.  NAME must be one name ("", ".", ".."
 * and any with a '/' are refused). */
int tb_clientdir_entry(const char *state, const char *id, enum tb_cf f, const char *name, char *buf,
                       size_t len);
/* clients/ID/good/overlay.N: the good overlay being saved from session N. */
int tb_clientdir_good_pending(const char *state, const char *id, uint64_t n, char *buf, size_t len);
/* Quarantined overlay N: its directory, its overlay or its note. */
enum tb_cq { TB_CQ_DIR, TB_CQ_OVERLAY, TB_CQ_NOTE };
int tb_clientdir_quarantined(const char *state, const char *id, uint64_t n, enum tb_cq what,
                             char *buf, size_t len);
/* What NAME, an entry of a client directory, is if it is a temporary that a
 * crash can leave: an overlay being built by a turn or a merge's move
 * (overlay.restore, overlay.tmp.XXXXXX, overlay.next.tmp.XXXXXX), or a
 * record's atomic write (session.json, seq: under the client's lock;
 * mailbox.json: under mailbox.lock too). */
enum tb_ctemp { TB_CT_NONE, TB_CT_OVERLAY, TB_CT_RECORD, TB_CT_MAILBOX };
enum tb_ctemp tb_clientdir_temp(const char *name);

#endif
