/* tabula: the event journal.
 *
 * Every state change is one JSON object on one line of STATE/events.jsonl
 * (and of clients/ID/events.jsonl for a client's events):
 *   {"time":"2026-11-23T10:00:00.000Z","ts":1795...,"type":"session-end","client":"pc01",...}
 * Lines are written with one write(2) on an O_APPEND descriptor, so writers in
 * different processes (plugin, daemon, CLI) never interleave.  When a journal
 * passes its size limit it is renamed to .1 (the previous .1 is dropped) under
 * a lock.  Readers (tabulactl events, webhooks) follow the file by offset.
 */
#ifndef TB_EVENTS_H
#define TB_EVENTS_H

#include <jansson.h>

#include "util.h"

#define TB_EVENTS_DEFAULT_MAX (16 * 1024 * 1024)

/* Set the rotation size for this process (default TB_EVENTS_DEFAULT_MAX). */
void tb_events_set_max_bytes(uint64_t max);

/* Append an event.  FIELDS (may be NULL) is consumed (json_decref'd); "time",
 * "ts", "type" and "client" (if CLIENT != NULL) are added. */
int tb_event(const char *state, const char *type, const char *client, json_t *fields);

/* Convenience: tb_event with fields built by json_pack(fmt, ...). */
int tb_eventf(const char *state, const char *type, const char *client, const char *fmt, ...);

#endif
