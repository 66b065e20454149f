/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: the event journal.
 *
 * Every state change is one JSON object on one line of STATE/events.jsonl
 * (and of clients/ID/events.jsonl for a client's events):
 *   {"time":"2026-11-23T10:00:00.000Z","ts":1795...,"type":"session-end","client":"pc01",...}
 * Lines are written with one write(2) on an O_APPEND descriptor, so writers in
 * different processes (plugin, daemon, CLI) never interleave.  When a journal
 * passes its size limit it is renamed to .1 under a lock, the older
 * generations shifting up to .KEEP (events.keep, default 5; the oldest is
 * dropped).  Readers (tabulactl events, webhooks) follow the file by offset.
 * Journals are opened with O_NOFOLLOW: a symlink planted in the state
 * directory is refused, never appended through.
 *
 * Refusals (a peer a client's allow does not admit, an unknown export, a
 * locked-down client...) are events too, but any peer can cause them at
 * will: tb_event_refusal() writes at most one per peer and reason every
 * TB_REFUSAL_INTERVAL_MS, the next one carrying the count of those
 * suppressed in between ("suppressed"), so a flood cannot rotate the
 * history away.
 */
#ifndef TB_EVENTS_H
#define TB_EVENTS_H

#include <jansson.h>

#include "util.h"

#define TB_EVENTS_DEFAULT_MAX (16 * 1024 * 1024)
#define TB_EVENTS_MIN_MAX 4096 /* a smaller rotation size is ignored */
#define TB_EVENTS_DEFAULT_KEEP 5
#define TB_EVENTS_MAX_KEEP 100
#define TB_REFUSAL_INTERVAL_MS 60000

/* Set the rotation size for this process (default TB_EVENTS_DEFAULT_MAX, at
 * least TB_EVENTS_MIN_MAX). */
void tb_events_set_max_bytes(uint64_t max);
/* Set how many rotated generations (.1 ... .KEEP) are kept (1 to
 * TB_EVENTS_MAX_KEEP, default TB_EVENTS_DEFAULT_KEEP). */
void tb_events_set_keep(unsigned keep);

/* Append an event.  FIELDS (may be NULL) is consumed (json_decref'd); "time",
 * "ts", "type" and "client" (if CLIENT != NULL) are added. */
int tb_event(const char *state, const char *type, const char *client, json_t *fields);

/* Convenience: tb_event with fields built by json_pack(fmt, ...). */
int tb_eventf(const char *state, const char *type, const char *client, const char *fmt, ...);

/* Record a refused connection or request: a "refused" event
 *   {"type":"refused","client":CLIENT,"peer":PEER,"reason":REASON,"suppressed":N}
 * rate-limited per (PEER, REASON) to one per TB_REFUSAL_INTERVAL_MS; N counts
 * the refusals of that pair not written since its last event.  CLIENT is the
 * configured client concerned, or NULL (an unknown export: then pass what
 * the peer asked for as EXPORT, which is recorded encoded with
 * tb_guest_name(); else NULL).  Thread-safe.  Returns 1 if the event was
 * suppressed, 0 if written, -1 if it could not be written (tb_errmsg). */
int tb_event_refusal(const char *state, const char *client, const char *peer, const char *reason,
                     const char *export);

#endif
