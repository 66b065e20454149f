/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-restored: the daemon's private header, what its parts share (in
 * the manner of nbdkit's server/internal.h): one section per file, each
 * file's declarations under its name.
 *
 * The files call each other without a cycle; each calls only files before
 * it in this order:
 *
 *   system.c      log lines, sd_notify, group names
 *   supervise.c   the supervision engine for every child
 *   server.c      the control socket: connections, replies (its dispatcher
 *                 is handed to it by main)
 *   pulls.c       scheduled pulls
 *   nbd.c iscsi.c pxe.c   nbdkit, tabula-iscsid, dnsmasq as children
 *   jobs.c        merges on the job thread
 *   health.c      health.json and the last known good of a session end
 *   canary.c      canary versions: their counts, promotion and withdrawal
 *   scan.c        the scans of client disks (their thread), the actions on
 *                 what they find, quarantines
 *   journal.c maintenance.c schedules.c
 *   webhooks.c
 *   config.c      loading, checking and reloading the configuration
 *   ops.c         the control operations: one dispatcher over every
 *                 part's table of operations
 *   metrics.c
 *   daemon.c      main() and the loop, which walks every part's timer
 *
 * Files on one line call none of each other.  make check keeps it so
 * (scripts/check-calls.sh, run by restored/Makefile.am's check-calls): the
 * graph is derived from what each object defines and leaves undefined (nm)
 * and from include lines, and an edge against this order, a cycle or a file
 * placed nowhere here fails the build's check.  A new file gets a line here.
 *
 * One thread, the main loop's, runs everything that touches daemon state (a
 * struct daemon and what it points to): a poll() loop over signals
 * (signalfd), the control socket and its connections, the job completion
 * pipe, and the timers.  Helper threads never touch that state: the job
 * thread (merges) talks back through a pipe, the watchdog's scan thread
 * through the event journal, one thread per webhook URL reads the journal
 * itself, and standby threads answer NBD clients while nbdkit is down.
 *
 * Errors, one style in every file.  A function that can fail returns -1 (or
 * NULL, or false where it says so) with the thread's message set by tb_error
 * or, after a failed call that set errno, tb_error_errno, which appends
 * strerror and keeps errno (lib/util.h); a caller adds its context with
 * tb_error_prefix and reads the message with tb_errmsg(), copying it into a
 * buffer of its own only when it must outlive a later call that may fail.
 * No helper fills a caller's "char *err, size_t errlen".  A control
 * operation turns the message into its reply (reply_error("%s",
 * tb_errmsg())); struct op_call's err keeps the first problem found with a
 * request's arguments across one handler's checks (ops.c).
 *
 * Locks.  Each is its file's own and guards only that file's shared data:
 * jobs.c lock (the job queue, the outbox, progress), journal.c gens_lock
 * (the generations seen), pulls.c lock (pull schedules and results),
 * scan.c lock (the scan queue), canary.c canary_lock (the canary files),
 * webhooks.c totals_lock (the worker list, totals) and each worker's lock
 * (its counters, kick and stop flags).  No code path holds two of them at
 * once, so there is no order to keep; a new path that must takes them in
 * the order listed here.
 */
#ifndef TB_DAEMON_H
#define TB_DAEMON_H

#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

#include "conf.h"
#include "schedule.h"
#include "vector.h"

struct daemon;
struct conn;

/* ---- system.c: what the daemon says to the system that runs it ---- */
void log_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* stderr is the journal (JOURNAL_STREAM): log_msg writes "<N>" priorities
 * without the program name, and nbdkit logs through syslog. */
bool daemon_stderr_is_journal(void);
/* A sd_notify(3) message ("READY=1", "STATUS=...") to systemd, if it asked. */
void daemon_notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* A group named (or numbered) TEXT, for the setting KEY: -1 with a message. */
int daemon_group(const char *text, const char *key, gid_t *gid);

/* ---- supervise.c: the children the daemon runs ----
 * nbdkit (nbd.c), tabula-iscsid (iscsi.c) and dnsmasq (pxe.c), each one of
 * these, started, watched, reaped and stopped by the same engine. */
#define SUPERVISE_BACKOFF_MIN_MS 500
#define SUPERVISE_BACKOFF_MAX_MS 30000
#define TB_MAX_LISTEN 8
struct child {
  const char *name;           /* in log lines: "nbdkit", "tabula-iscsid", "dnsmasq" */
  pid_t pid;                  /* 0 when not running */
  bool ready;                 /* it serves: its pidfile is written (no pidfile: once started) */
  bool stopping;              /* its owner stops it: an exit now is no failure */
  int failures;               /* consecutive short runs, for the backoff */
  int restarts;               /* since the daemon started */
  int64_t started_mono_ms;    /* of the running child, tb_mono_ms() */
  int64_t restart_at_mono_ms; /* tb_mono_ms(); 0: no restart pending */
  char last_exit[128];        /* "exited with status 2", "killed by signal 9 (Killed)" */
  char pidfile[TB_PATH_MAX];
};
struct child_spawn {
  const char *const *argv; /* argv[0] on PATH unless it holds a slash */
  const int *listen_fds;   /* handed over as fds 3, 4, ... (LISTEN_FDS, LISTEN_PID) */
  int n_listen;            /* at most TB_MAX_LISTEN */
  int output_fd;           /* -1: the daemon's stdout and stderr; else both, stdin /dev/null */
  bool die_with_parent;    /* PR_SET_PDEATHSIG */
  const char *pidfile;     /* NULL: ready once started; removed before the start */
  const char *exec_error;  /* the child's stderr line when the program cannot run */
};
/* Start C as HOW says: -1 with a message naming the program. */
int child_start(struct child *c, const struct child_spawn *how);
/* PID exited with STATUS: true if it was C (then it is not running, its last
 * exit is noted and *RAN_MS is how long it ran). */
bool child_reaped(struct child *c, pid_t pid, int status, int64_t *ran_ms);
/* Schedule the restart after a run of RAN_MS (0: a start that failed): the
 * delay doubles with each consecutive short run (0.5 s ... 30 s), 0 after a
 * stable one.  Returns it. */
int64_t child_backoff(struct child *c, int64_t ran_ms);
bool child_became_ready(struct child *c); /* true once, when its pidfile appears */
bool child_restart_due(const struct child *c, int64_t now);
int64_t child_next_wakeup(const struct child *c); /* the pidfile watch, the restart */
/* How long until its pending restart (0 when due), -1 when none is pending. */
int64_t child_restart_in_ms(const struct child *c);
void child_stop(struct child *c, int64_t wait_ms); /* SIGTERM, reap, SIGKILL after WAIT_MS */
/* Bind "ADDR:PORT" (errors name KEY) into FDS: how many, or -1 with a message. */
int supervise_bind_tcp(const char *key, const char *listen, int *fds, int max);

/* ---- the daemon ---- */

/* nbd.c: nbdkit.
 * One nbdkit serves every listener (unix and TCP), on sockets the daemon binds
 * and hands over by socket activation, so one client is one session. */
struct nbd_server {
  struct child child;
  /* The listeners, bound by the daemon and handed to nbdkit. */
  int listen_fds[TB_MAX_LISTEN];
  int n_listen;
  char unix_path[TB_PATH_MAX];
  char *bound_unix, *bound_tcp; /* the configuration they were bound for */
};

/* schedules.c: a client's schedules. */
struct client_sched {
  char id[TB_NAME_MAX + 1];
  bool has;
  struct tb_schedule sched;
  int64_t last_ms; /* last scheduled refresh, 0: never (kept in clients/ID/schedule.json) */
  int64_t next_ms;
  /* The scheduled merge ("merge" of the client; clients/ID/merge-schedule.json). */
  bool merge_has;
  struct tb_schedule merge_sched;
  int64_t merge_last_ms, merge_next_ms;
  bool merge_pending;  /* due: waiting for the client's session to end */
  bool merge_deferred; /* the wait was announced (one merge-deferred event) */
};

/* journal.c: counters of a client's sessions, for status and metrics. */
struct client_counters {
  char id[TB_NAME_MAX + 1];
  uint64_t sessions, bytes_read, bytes_written, errors;
};
TB_VECTOR(client_counters_vector, struct client_counters);

struct daemon {
  const char *config_file;
  struct tb_config *cfg;
  char control_path[TB_PATH_MAX];
  int64_t started_ms;
  int signal_fd;
  int listen_fd;
  struct nbd_server nbd;
  struct client_sched *sched;
  size_t n_sched;
  struct client_counters_vector counters; /* counters_for */
  uint64_t merges;                        /* finished or failed since the start (jobs.c) */
  int64_t next_metrics_ms;
  bool quit;
};

/* ---- timers ----
 * A part with work at times of its own (restarts, schedules, scans, the
 * journal's tail) defines one of these; the main loop (daemon.c) runs every
 * tick each turn and sleeps until the earliest next (at most 1 s).  NOW and
 * what next returns are tb_mono_ms() times, so a stepped wall clock neither
 * delays nor hastens an interval (a backoff, a scan, a poll); the calendar
 * schedules (schedules.c, pulls.c) read the wall clock themselves and give
 * their wake-ups back through tb_mono_at_wall. */
struct daemon_timer {
  const char *name;
  void (*tick)(struct daemon *d, int64_t now);
  int64_t (*next)(const struct daemon *d); /* INT64_MAX or NULL: nothing due */
};
extern const struct daemon_timer nbd_timer;       /* nbd.c: nbdkit's readiness, restarts */
extern const struct daemon_timer pxe_timer;       /* pxe.c: dnsmasq's restarts, its log */
extern const struct daemon_timer iscsid_timer;    /* iscsi.c: tabula-iscsid's restarts */
extern const struct daemon_timer schedules_timer; /* schedules.c: refreshes, merges */
extern const struct daemon_timer pulls_timer;     /* pulls.c: scheduled pulls */
extern const struct daemon_timer scan_timer;      /* scan.c: interval scans */
extern const struct daemon_timer server_timer;    /* server.c: idle timeouts, queued requests */
extern const struct daemon_timer journal_timer;   /* journal.c: the tail of events.jsonl */
extern const struct daemon_timer webhooks_timer;  /* webhooks.c: wake the senders after it */
extern const struct daemon_timer metrics_timer;   /* metrics.c: the textfile */

/* ---- config.c: the configuration ---- */
/* Load FILE with the checks beyond the core parser's (the "pull" section, the
 * schedules, built into *SCHED): NULL with a message. */
struct tb_config *config_load(const char *file, struct client_sched **sched, size_t *n);
/* What start and reload check beyond config_load(): -1 refuses the file; a
 * client that cannot be served is a warning (WARNINGS: id -> reason). */
int config_validate(const struct tb_config *cfg, json_t *warnings);
/* Log a warning when others may read CONFIG or enter STATE. */
void config_warn_if_exposed(const char *config, const char *state);
/* -1 with a message (also logged, and a reload-failed event): the running
 * configuration stays. */
int daemon_reload(struct daemon *d);
/* The same, with the clients that cannot be served (id -> reason) added to
 * WARNINGS (a JSON object, may be NULL). */
int daemon_reload_warn(struct daemon *d, json_t *warnings);

/* ---- nbd.c: nbdkit ---- */
/* Bind the listeners of the configuration (kept across nbdkit restarts;
 * rebound when listen.* changes).  -1 with a message naming the listener. */
int nbd_listen(struct daemon *d);
void nbd_unlisten(struct daemon *d);
int nbd_start(struct daemon *d);
bool nbd_reaped(struct daemon *d, pid_t pid, int status); /* true: it was nbdkit */
void nbd_stop(struct daemon *d);                          /* SIGTERM, wait, SIGKILL */
bool nbd_config_changed(const struct tb_config *a, const struct tb_config *b);
void nbd_restart(struct daemon *d, const char *why);
/* nbdkit waits out a backoff: start it at the next tick (after a good reload). */
void nbd_retry_now(struct daemon *d);
/* While nbdkit is not running, the daemon answers on its listeners: each
 * client gets the NBD handshake and, for its first option, an error
 * (NBD_REP_ERR_SHUTDOWN) whose text says nbdkit is down and when it comes
 * back, instead of waiting in the backlog.  0 fds while nbdkit runs. */
size_t nbd_standby_pollfds(struct daemon *d, struct pollfd *fds, size_t max);
void nbd_standby_io(struct daemon *d, const struct pollfd *fds, size_t n);

/* ---- iscsi.c: tabula-iscsid (the iSCSI frontend) while listen.iscsi is set ---- */
void iscsid_apply(struct daemon *d); /* at start and reload: bind, (re)start or SIGHUP */
bool iscsid_reaped(struct daemon *d, pid_t pid, int status); /* true: it was tabula-iscsid */
void iscsid_stop(struct daemon *d);
json_t *iscsid_status(struct daemon *d);

/* ---- pxe.c: dnsmasq (DHCP, TFTP, iPXE) for PXE boots, from the "pxe" section ---- */
void pxe_apply(struct daemon *d); /* at start and reload: files, (re)start or SIGHUP */
bool pxe_reaped(struct daemon *d, pid_t pid, int status); /* true: it was dnsmasq */
void pxe_stop(struct daemon *d);
json_t *pxe_status(struct daemon *d);

/* ---- server.c: the control socket ---- */
/* A request's reply, or NULL when the conn now waits (ops_dispatch). */
typedef json_t *server_dispatch_fn(struct daemon *d, struct conn *c, json_t *req);
int server_open(struct daemon *d, server_dispatch_fn *dispatch);
void server_close(struct daemon *d);
size_t server_pollfds(struct pollfd *fds, size_t max); /* connections' fds */
void server_accept(struct daemon *d);
void server_io(struct daemon *d, const struct pollfd *fds, size_t n);
size_t server_max_fds(void);
uint64_t server_requests(void); /* request lines run since the start */
/* Replies: {"ok": true, "result": RESULT} (consumed; NULL: {}), {"ok": false, "error": ...}. */
json_t *reply_ok(json_t *result);
json_t *reply_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* A request's arguments.  REQ_STR: the string argument KEY (NULL when absent
 * or not a string).  REQ_UNKNOWN_KEY: the first key other than "op" that KEYS
 * (NULL-terminated) does not list, or NULL.  REQ_CHECK_KEYS: NULL when REQ has
 * no such key, else the error reply "OP: unknown argument \"KEY\"". */
const char *req_str(json_t *req, const char *key);
const char *req_unknown_key(json_t *req, const char *const *keys);
json_t *req_check_keys(json_t *req, const char *op, const char *const *keys);
/* Replies from jobs and the journal tail. */
void conn_send(struct conn *c, json_t *line);    /* consumes LINE */
void conn_finish(struct conn *c, json_t *final); /* final reply; the conn takes requests again */
bool conn_alive(uint64_t conn_id);
struct conn *conn_by_id(uint64_t conn_id);
uint64_t conn_id(const struct conn *c);
void server_broadcast_event(const json_t *ev);        /* to `events --follow` conns */
void conn_follow(struct conn *c, const char *client); /* stream events */
void conn_wait(struct conn *c);                       /* a job will answer */

/* ---- jobs.c: long work on a thread ---- */
int jobs_start(void);
int jobs_fd(void);                              /* readable when a job has news */
void jobs_drain(struct daemon *d);              /* deliver news to connections (main thread) */
json_t *jobs_status(void);                      /* running and queued jobs */
void jobs_recover(const struct tb_config *cfg); /* at start: finish moves a kill cut */
struct merge_request {
  char client[TB_NAME_MAX + 1];
  char into[TB_NAME_MAX + 1];
  char *note;
  int64_t session; /* 0: the current overlay */
  bool progress;
  uint64_t conn_id;
  /* After a merge of the current overlay that moved the client onto
   * IMAGE@VERSION, on the job thread with the client's lock held (NULL:
   * nothing): maintenance finish (maintenance.c) takes the client out of
   * maintenance, back to this mailbox image ("" none) and pin. */
  void (*merged)(const char *state, const struct merge_request *req, const char *image,
                 uint32_t version);
  char maint_image[TB_NAME_MAX + 1];
  uint32_t maint_pin;
  /* A scheduled merge's turn (schedules.c sets merged to save it into
   * clients/ID/merge-schedule.json once the merge is done). */
  struct tb_schedule_mark sched_mark;
  char sched_text[128];
};
/* Queue REQ (taken, freed on failure): -1 with a message. */
int jobs_submit_merge(struct daemon *d, struct merge_request *req);

/* ---- journal.c: the tail of STATE/events.jsonl ---- */
void journal_open(struct daemon *d);
void journal_poll(struct daemon *d); /* read new lines: followers, the watchdog, counters */
struct client_counters *counters_for(struct daemon *d, const char *id);
json_t *journal_last(const char *state, const char *client, size_t n);

/* ---- webhooks.c: events POSTed to URLs ---- */
void webhooks_configure(const struct tb_config *cfg);
json_t *webhooks_status(void);
void webhooks_shutdown(void);

/* ---- health.c: health.json and the last known good of a session end; the
 * state-file helpers canary.c and scan.c share ---- */
struct tb_watchdog_conf;
struct tb_scan;

/* One piece of work of the scan thread (scan.c's queue). */
struct scan_request {
  struct scan_request *next;
  struct tb_config *cfg; /* a reference: a reload may swap the daemon's cfg */
  char id[TB_NAME_MAX + 1];
  bool end;            /* session end (else an interval scan of a live session) */
  uint64_t session;    /* the session that ended or runs */
  int64_t duration_ms; /* of the session that ended */
  char image[TB_NAME_MAX + 1];
  uint32_t version; /* what it ran on (session.json), 0 if unknown */
};

/* The state files: a JSON object read (NULL if absent or not an object),
 * written atomically. */
json_t *state_load_json(const char *path);
int state_save_json(const char *path, json_t *v);
/* Is PATH the file DEV/INO? */
bool state_same_file(const char *path, dev_t dev, ino_t ino);
/* The client's lock, waiting up to a second while session SESSION is still
 * the client's last; -1 if a session holds it. */
int client_lock_after(const char *state, const char *id, uint64_t session);

/* Does W judge health at all (a marker or a minimum session)? */
bool health_configured(const struct tb_watchdog_conf *w);
int health_path(const char *state, const char *id, char *buf, size_t len);
/* clients/ID/health.json, checked (see health.c); *RECOVERED (if given) says
 * it was not plausible and counts from nothing. */
json_t *load_health(const char *state, const char *id, const char *path, bool *recovered);
/* Judge the session RQ ended (scan S, NULL if none): strikes, last known
 * good, fall-back.  A session judged already (a scan the daemon's start
 * resumed) is not judged again: *HEALTHY is its verdict then. */
void check_health(const struct scan_request *rq, const struct tb_client_conf *c,
                  const struct tb_watchdog_conf *w, struct tb_scan *s, bool *healthy);
/* At the daemon's start: a save of the last known good or a fall-back to it
 * that a crash cut, finished. */
void good_recover(const struct tb_config *cfg, const struct tb_client_conf *c);

/* ---- canary.c: canary versions; its operation is canary_ops ---- */
/* Count a finished session of a group client on a running canary version. */
void canary_count(const struct scan_request *rq, const struct tb_client_conf *c,
                  const struct tb_watchdog_conf *w, const char *image, uint32_t version,
                  bool healthy);
/* At the daemon's start: every canary record in DIR (STATE/watchdog) read back
 * with a plausibility check; a damaged one moved aside. */
void canary_check(const char *state, const char *dir);

/* ---- scan.c: the watchdog's file rules and their actions (scans on a thread
 * of their own, which health.c and canary.c judge and count session ends on) ---- */
int scan_start(void);
void scan_recover(const struct tb_config *cfg); /* at start: no half-moved quarantine */
void scan_resume(struct tb_config *cfg); /* at start: scan session ends a crash left unscanned */
void scan_stop(void);
void scan_free(void);
void scan_event(struct daemon *d, const json_t *ev); /* every journal event */
/* What the watchdog's state of client ID holds, for image rm and gc: its last
 * known good overlay and quarantined overlays (OVERLAY gets each path) and
 * health.json's last good version (VERSION). */
struct scan_refs_cb {
  void (*overlay)(void *ctx, const char *path, const char *why);
  void (*version)(void *ctx, const char *image, uint32_t version, const char *why);
  void *ctx;
};
void scan_refs(const char *state, const char *id, const struct scan_refs_cb *cb);

/* ---- maintenance.c: the maintenance PC of an image (lib/maintenance.h) ---- */
json_t *maintenance_status(struct daemon *d, const char *id); /* NULL: not in maintenance */

/* ---- schedules.c: refresh and merge schedules ---- */
int schedules_build(const struct tb_config *cfg, struct client_sched **out, size_t *n);
void schedules_resume(const struct tb_config *cfg, struct client_sched *s, size_t n);
const struct client_sched *schedule_for(const struct daemon *d, const char *id);

/* ---- pulls.c: scheduled pulls from image repositories: pulls_timer ---- */

/* ---- metrics.c: the Prometheus textfile ---- */
void metrics_write(struct daemon *d);

/* ---- ops.c: the operations ----
 *   A request {"op": NAME, ...} runs the entry NAME of
 * one of the tables (ops.c's own, maintenance_ops, scan_ops,
 * canary_ops, pxe_ops,
 * each ended by a NULL name); an unknown NAME gets an error listing them all.
 * A handler returns the final reply, or NULL when the conn now waits (a job,
 * the event stream). */
struct op_call {
  json_t *req;
  const char *op;
  struct conn *conn;
  char err[512]; /* the first problem with an argument (ops.c's checks) */
};
struct daemon_op {
  const char *name;
  json_t *(*run)(struct daemon *d, struct op_call *call);
};
extern const struct daemon_op maintenance_ops[]; /* maintenance.c */
extern const struct daemon_op scan_ops[];        /* scan.c */
extern const struct daemon_op canary_ops[];      /* canary.c */
extern const struct daemon_op pxe_ops[];         /* pxe.c */
json_t *ops_dispatch(struct daemon *d, struct conn *c, json_t *req);
int clients_status_json(struct daemon *d, json_t **out); /* for metrics.c */

#endif
