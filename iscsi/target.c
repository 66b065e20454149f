/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-iscsid: the iSCSI connection state machine (see target.h).
 *
 * How it reads: a connection thread (conn_main) runs login() until the
 * full feature phase, then ffp_loop() until the connection or the boot ends.
 * The connection thread reads every PDU and answers all but SCSI commands
 * itself; a command whose data is complete becomes a job on the
 * connection's queue, which ISC_WORKERS worker threads (started at the first
 * command) run straight on tb_conn_* and answer in any order, so an
 * initiator's queue depth (16-32) runs in parallel.  StatSN is taken under
 * the send lock, so it rises in the order PDUs leave; ExpCmdSN and MaxCmdSN
 * are the reader's (atomic), the window is CMD_WINDOW and at most MAX_JOBS
 * jobs wait (beyond that: TASK SET FULL).  An ORDERED command waits until
 * every earlier one has answered and runs alone; ABORT TASK removes a queued
 * job (no answer for it) or waits for a running one to answer; the resets
 * drop the queue and wait for the running jobs; a Logout waits for every
 * job's answer first.
 * Every PDU passes isc_pdu_parse() (pdu.c) with the limits of the moment:
 * 8 KiB data segments during login, our MaxRecvDataSegmentLength after.
 * What the initiator may do wrong has one answer each:
 *   - a data segment over the limit, a header digest error, a bad opcode in
 *     the login, a Data-Out out of order: the connection is dropped (ERL 0);
 *   - a data digest error, an unknown or unsupported opcode, immediate data
 *     where none was negotiated: a Reject PDU, the connection stays;
 *   - a wrong target, initiator or CHAP answer: a Login Response with the
 *     status class and detail of RFC 7143 §11.13.5, then the connection ends;
 *   - a command to a LUN the target does not have: CHECK CONDITION LOGICAL
 *     UNIT NOT SUPPORTED (INQUIRY answers "no logical unit").
 * A client is one target: its first disk is LUN 0, each further disk
 * (conf.h "disks") LUN 1, 2... in configuration order, each its own
 * tb_conn of the same boot (live.c ties them into one).  A further disk that
 * cannot be opened (its image has no version) is a LUN the target lacks,
 * with a refusal event; the login goes on with the others.
 * Nothing a connection does touches another's state but the session table
 * (one iSCSI session per client), under one mutex.
 */
#include <config.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "cleanup.h"
#include "events.h"
#include "live.h"
#include "pdu.h"
#include "scsi.h"
#include "target.h"
#include "vector.h"

#define LOGIN_DATA_MAX 8192 /* before negotiation (RFC 7143 §13.12) */
#define LOGIN_TEXT_MAX 65536
#define LOGIN_MAX_PDUS 32
#define OUR_MRDSL 262144
#define OUR_MAX_BURST 1048576
#define OUR_FIRST_BURST 262144
#define CMD_WINDOW 64
#define WRITE_MAX (ISC_MAX_XFER_BLOCKS * ISC_LBS + 65536)
#define READ_MAX (ISC_MAX_XFER_BLOCKS * ISC_LBS)
#define MAX_TASKS 128
#define ISC_WORKERS 8
#define MAX_JOBS 256

void isc_log(const char *fmt, ...) TB_PRINTF(1, 2);

/* ---- configuration ---- */

static pthread_mutex_t cfg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tb_config *current_cfg;

void isc_set_config(struct tb_config *cfg)
{
  pthread_mutex_lock(&cfg_lock);
  struct tb_config *old = current_cfg;
  current_cfg = cfg ? tb_config_ref(cfg) : NULL;
  pthread_mutex_unlock(&cfg_lock);
  if (old)
    tb_config_unref(old);
}

struct tb_config *isc_get_config(void)
{
  pthread_mutex_lock(&cfg_lock);
  struct tb_config *c = current_cfg ? tb_config_ref(current_cfg) : NULL;
  pthread_mutex_unlock(&cfg_lock);
  return c;
}

void isc_target_name(const char *prefix, const char *id, char *out, size_t len)
{
  tb_iscsi_target_name(prefix, id, out, len);
}

/* ---- connection state ---- */

struct task {
  bool used;
  uint32_t itt, ttt;
  uint8_t cdb[16];
  uint8_t lun[8];
  uint32_t edtl;
  uint8_t *buf;
  uint32_t received;  /* contiguous bytes of data received */
  bool unsolicited;   /* unsolicited Data-Out still to come */
  uint32_t burst_end; /* end of the data the current R2T asked for */
  uint32_t data_sn;   /* DataSN expected of the next Data-Out */
  uint32_t r2t_sn;
  bool nolun;
  uint8_t attr; /* task attribute (SIMPLE, ORDERED, ...) */
};

/* A SCSI command with all its data, waiting for or run by a worker. */
struct job {
  struct job *next;
  uint32_t itt, edtl;
  uint8_t cdb[16];
  uint8_t lun[8];
  bool nolun, read;
  uint8_t *dout; /* owned */
  uint32_t dout_len;
};

TB_VECTOR(pdu_bytes, uint8_t);

struct conn {
  int fd;
  char peer[80];
  struct sockaddr_storage peer_sa;
  struct tb_config *cfg;
  struct isc_wire rx, tx;
  uint32_t peer_mrdsl;
  pthread_mutex_t send_lock;
  /* session */
  bool discovery;
  bool in_table;
  const struct tb_client_conf *client;
  char initiator[TB_ISCSI_NAME_MAX + 1];
  char target[256];
  uint8_t isid[6];
  uint16_t tsih;
  uint32_t stat_sn, exp_cmd_sn;
  /* negotiated */
  uint32_t max_burst, first_burst;
  bool initial_r2t, immediate_data;
  struct tb_conn *tconn[ISC_MAX_LUNS]; /* LUN N: the client's disk N, or NULL */
  struct isc_lu lu[ISC_MAX_LUNS];
  struct task tasks[MAX_TASKS];
  uint32_t next_ttt;
  struct pdu_bytes rbuf; /* the PDU being read: rbuf.cap bytes at rbuf.ptr (len stays 0) */
  volatile bool dropped; /* replaced by a reinstated session, or the server stops */
  struct conn *next;
  /* the job queue and its workers (jobs_lock guards all of it) */
  pthread_mutex_t jobs_lock;
  pthread_cond_t jobs_cond; /* a job was queued, or the workers must end */
  pthread_cond_t idle_cond; /* a job ended */
  struct job *queue_head, *queue_tail;
  int queued, running, n_workers;
  uint32_t running_itt[ISC_WORKERS];
  bool running_used[ISC_WORKERS];
  bool workers_quit;
  pthread_t workers[ISC_WORKERS];
};

/* TABULA_ISCSI_DEBUG=1: log every PDU of the full feature phase. */
static bool debug_pdus;

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t table_cond = PTHREAD_COND_INITIALIZER;
static struct conn *all_conns;
static int n_conns;
static uint16_t next_tsih = 1;

static void table_add(struct conn *c)
{
  pthread_mutex_lock(&table_lock);
  c->next = all_conns;
  all_conns = c;
  n_conns++;
  pthread_mutex_unlock(&table_lock);
}

static void table_remove(struct conn *c)
{
  pthread_mutex_lock(&table_lock);
  for (struct conn **p = &all_conns; *p; p = &(*p)->next)
    if (*p == c) {
      *p = c->next;
      break;
    }
  n_conns--;
  pthread_cond_broadcast(&table_cond);
  pthread_mutex_unlock(&table_lock);
}

void isc_stop_all(int wait_ms)
{
  pthread_mutex_lock(&table_lock);
  for (struct conn *c = all_conns; c; c = c->next) {
    c->dropped = true;
    shutdown(c->fd, SHUT_RDWR);
  }
  int64_t deadline = tb_now_ms() + wait_ms;
  while (n_conns > 0 && tb_now_ms() < deadline) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 100 * 1000 * 1000;
    if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&table_cond, &table_lock, &ts);
  }
  pthread_mutex_unlock(&table_lock);
}

/* Claim client C for this connection's initiator.  Returns 0, or -1 if
 * another initiator holds it (busy).  A session of the same initiator and
 * ISID is dropped: the machine logged in again (session reinstatement).
 * Sessions of the same initiator with other ISIDs stay: iPXE's session
 * lives on, orphaned, when Windows' initiator logs in with its own ISID;
 * TCP keepalive ends it. */
static int claim_client(struct conn *c)
{
  int r = 0;
  pthread_mutex_lock(&table_lock);
  for (struct conn *o = all_conns; o; o = o->next) {
    if (o == c || !o->in_table || o->dropped || strcmp(o->client->id, c->client->id) != 0)
      continue;
    if (strcasecmp(o->initiator, c->initiator) != 0) {
      r = -1;
      break;
    }
  }
  if (r == 0) {
    for (struct conn *o = all_conns; o; o = o->next) {
      if (o == c || !o->in_table || o->dropped || strcmp(o->client->id, c->client->id) != 0 ||
          memcmp(o->isid, c->isid, sizeof c->isid) != 0)
        continue;
      isc_log("%s: %s logged in again from %s: its session from %s ends", c->client->id,
              c->initiator, c->peer, o->peer);
      o->dropped = true;
      shutdown(o->fd, SHUT_RDWR);
    }
    c->in_table = true;
    c->tsih = next_tsih++;
    if (next_tsih == 0)
      next_tsih = 1;
  }
  pthread_mutex_unlock(&table_lock);
  return r;
}

/* ---- I/O ---- */

static int read_full(int fd, void *buf, size_t len)
{
  uint8_t *p = buf;
  while (len > 0) {
    ssize_t r = read(fd, p, len);
    if (r == 0)
      return -1;
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    p += r;
    len -= (size_t)r;
  }
  return 0;
}

/* Read one PDU into C->rbuf.  Returns an enum isc_parse, or 1 when the
 * connection closed. */
static int recv_pdu(struct conn *c, struct isc_pdu *p)
{
  if (read_full(c->fd, c->rbuf.ptr, ISC_BHS_LEN) == -1)
    return 1;
  long total = isc_pdu_total(c->rbuf.ptr, &c->rx);
  if (total < 0)
    return (int)total;
  if (tb_vector_reserve(&c->rbuf, (size_t)total) == -1)
    return 1;
  if (read_full(c->fd, c->rbuf.ptr + ISC_BHS_LEN, (size_t)total - ISC_BHS_LEN) == -1)
    return 1;
  size_t used;
  return isc_pdu_parse(c->rbuf.ptr, (size_t)total, &c->rx, p, &used);
}

static uint32_t exp_cmd_sn(const struct conn *c)
{
  return __atomic_load_n(&c->exp_cmd_sn, __ATOMIC_ACQUIRE);
}

static uint32_t max_cmd_sn(const struct conn *c)
{
  return exp_cmd_sn(c) + CMD_WINDOW - 1;
}

/* A non-immediate command with CMDSN was taken (the reader's thread only). */
static void sn_take(struct conn *c, uint32_t cmdsn)
{
  __atomic_store_n(&c->exp_cmd_sn, cmdsn + 1, __ATOMIC_RELEASE);
}

/* How send_pdu fills bytes 24, 28, 32 (StatSN, ExpCmdSN, MaxCmdSN). */
enum sn_mode {
  SN_NONE,    /* as the caller set them */
  SN_ADVANCE, /* StatSN: the next one, taken */
  SN_PEEK,    /* StatSN: the next one, not taken (R2T) */
  SN_CMD,     /* ExpCmdSN and MaxCmdSN only (Data-In without status) */
};

/* One PDU, whole, under the send lock: PDUs of several jobs interleave
 * but never mix, and StatSN rises in the order they leave. */
static int send_pdu_sn(struct conn *c, uint8_t *bhs, const void *data, uint32_t len,
                       enum sn_mode mode)
{
  pthread_mutex_lock(&c->send_lock);
  if (mode != SN_NONE) {
    if (mode != SN_CMD)
      isc_put32(bhs + 24, mode == SN_ADVANCE ? c->stat_sn++ : c->stat_sn);
    uint32_t exp = exp_cmd_sn(c);
    isc_put32(bhs + 28, exp);
    isc_put32(bhs + 32, exp + CMD_WINDOW - 1);
  }
  int r = isc_pdu_send(c->fd, bhs, data, len, &c->tx);
  pthread_mutex_unlock(&c->send_lock);
  return r;
}

static int send_pdu(struct conn *c, uint8_t *bhs, const void *data, uint32_t len)
{
  return send_pdu_sn(c, bhs, data, len, SN_ADVANCE);
}

static int send_reject(struct conn *c, const uint8_t *bad_bhs, uint8_t reason)
{
  uint8_t bhs[ISC_BHS_LEN] = {ISC_OP_REJECT, 0x80, reason};
  isc_put32(bhs + 16, ISC_RSVD_TAG);
  uint8_t copy[ISC_BHS_LEN];
  memcpy(copy, bad_bhs, ISC_BHS_LEN);
  return send_pdu(c, bhs, copy, ISC_BHS_LEN);
}

/* ---- login ---- */

struct login {
  int stage; /* CSG of the exchange so far */
  bool first;
  bool auth_done;
  bool need_chap;
  int chap_state; /* 0 AuthMethod, 1 CHAP_A, 2 CHAP_R */
  uint8_t chap_id;
  uint8_t chap_c[16];
  bool sent_tpgt, sent_mrdsl;
  bool header_digest, data_digest;
  uint16_t status; /* class << 8 | detail: 0 is success */
  char text[LOGIN_TEXT_MAX];
  size_t text_len;
};

enum {
  LS_AUTH_FAILED = 0x0201,
  LS_FORBIDDEN = 0x0202,
  LS_NOT_FOUND = 0x0203,
  LS_MISSING = 0x0207,
  LS_UNSUPPORTED_VERSION = 0x0205,
  LS_NO_SESSION = 0x020a,
  LS_INVALID = 0x0200,
  LS_TARGET_ERROR = 0x0300,
  LS_UNAVAILABLE = 0x0301,
};

static bool list_has(const char *list, const char *item)
{
  size_t n = strlen(item);
  for (const char *p = list; *p;) {
    const char *e = strchr(p, ',');
    size_t l = e ? (size_t)(e - p) : strlen(p);
    if (l == n && strncmp(p, item, n) == 0)
      return true;
    p += l + (e ? 1 : 0);
  }
  return false;
}

static bool parse_number(const char *v, uint64_t lo, uint64_t hi, uint32_t *out)
{
  char *end;
  errno = 0;
  unsigned long long n = strtoull(v, &end, 0);
  if (errno || end == v || *end || n < lo || n > hi)
    return false;
  *out = (uint32_t)n;
  return true;
}

static bool peer_is_addr(const struct conn *c, const struct tb_cidr *a)
{
  return tb_cidr_match(a, (const struct sockaddr *)&c->peer_sa);
}

/* The client a login names: PREFIX:ID, or the bare PREFIX for "the client I
 * am" (by initiator name, then by address). */
static const struct tb_client_conf *find_client(struct conn *c, const char *target)
{
  const struct tb_config *cfg = c->cfg;
  char name[300];
  if (strcasecmp(target, cfg->iscsi.iqn_prefix) == 0) {
    for (size_t i = 0; i < cfg->n_clients; i++) {
      const struct tb_client_conf *k = &cfg->clients[i];
      if (k->iscsi && k->iscsi->initiator[0] && strcasecmp(k->iscsi->initiator, c->initiator) == 0)
        return k;
    }
    for (size_t i = 0; i < cfg->n_clients; i++)
      if (cfg->clients[i].has_address && peer_is_addr(c, &cfg->clients[i].address))
        return &cfg->clients[i];
    return NULL;
  }
  for (size_t i = 0; i < cfg->n_clients; i++) {
    if (cfg->clients[i].disk[0])
      continue; /* a further disk is a LUN of its client's target */
    isc_target_name(cfg->iscsi.iqn_prefix, cfg->clients[i].id, name, sizeof name);
    if (strcasecmp(name, target) == 0)
      return &cfg->clients[i];
  }
  return NULL;
}

/* May this connection's initiator see client K's target? */
static bool client_allows(const struct conn *c, const struct tb_client_conf *k)
{
  if (!tb_acl_allows(&k->allow, (const struct sockaddr *)&c->peer_sa))
    return false;
  if (k->iscsi && k->iscsi->initiator[0] && strcasecmp(k->iscsi->initiator, c->initiator) != 0)
    return false;
  return true;
}

static void md5_chap(uint8_t id, const uint8_t *secret, size_t slen, const uint8_t *chal,
                     size_t clen, uint8_t out[16])
{
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  unsigned int n = 16;
  EVP_DigestInit_ex(ctx, EVP_md5(), NULL);
  EVP_DigestUpdate(ctx, &id, 1);
  EVP_DigestUpdate(ctx, secret, slen);
  EVP_DigestUpdate(ctx, chal, clen);
  EVP_DigestFinal_ex(ctx, out, &n);
  EVP_MD_CTX_free(ctx);
}

/* The CHAP keys of one request (RFC 7143 §12.1.3). */
static void chap_step(struct conn *c, struct login *lg, struct isc_kv *kv, int n,
                      struct isc_text *resp)
{
  const char *a = NULL, *nm = NULL, *r = NULL, *ii = NULL, *cc = NULL;
  for (int i = 0; i < n; i++) {
    if (strcmp(kv[i].key, "CHAP_A") == 0)
      a = kv[i].value;
    else if (strcmp(kv[i].key, "CHAP_N") == 0)
      nm = kv[i].value;
    else if (strcmp(kv[i].key, "CHAP_R") == 0)
      r = kv[i].value;
    else if (strcmp(kv[i].key, "CHAP_I") == 0)
      ii = kv[i].value;
    else if (strcmp(kv[i].key, "CHAP_C") == 0)
      cc = kv[i].value;
  }
  const struct tb_iscsi_client *ic = c->client->iscsi;
  if (lg->chap_state == 1 && a) {
    if (!list_has(a, "5")) {
      isc_text_add(resp, "CHAP_A", "Reject");
      lg->status = LS_AUTH_FAILED;
      return;
    }
    char hex[40], idtxt[8];
    if (RAND_bytes(lg->chap_c, sizeof lg->chap_c) != 1 || RAND_bytes(&lg->chap_id, 1) != 1) {
      lg->status = LS_TARGET_ERROR;
      return;
    }
    snprintf(idtxt, sizeof idtxt, "%u", lg->chap_id);
    isc_encode_hex(lg->chap_c, sizeof lg->chap_c, hex);
    isc_text_add(resp, "CHAP_A", "5");
    isc_text_add(resp, "CHAP_I", idtxt);
    isc_text_add(resp, "CHAP_C", hex);
    lg->chap_state = 2;
    return;
  }
  if (lg->chap_state == 2 && (nm || r)) {
    uint8_t got[64], want[16];
    int glen = r ? isc_decode_binary(r, got, sizeof got) : -1;
    md5_chap(lg->chap_id, (const uint8_t *)ic->chap.secret, ic->chap.secret_len, lg->chap_c,
             sizeof lg->chap_c, want);
    if (!nm || strcmp(nm, ic->chap.user) != 0 || glen != 16 || CRYPTO_memcmp(got, want, 16) != 0) {
      isc_log("%s: CHAP from %s (%s) failed: wrong user or secret; check clients.%s.iscsi.chap",
              c->client->id, c->peer, c->initiator, c->client->id);
      lg->status = LS_AUTH_FAILED;
      return;
    }
    if (ic->mutual_chap.set) {
      uint8_t chal[1024];
      uint32_t id;
      int clen = cc ? isc_decode_binary(cc, chal, sizeof chal) : -1;
      if (!ii || !parse_number(ii, 0, 255, &id) || clen < 1 ||
          ((size_t)clen == sizeof lg->chap_c && memcmp(chal, lg->chap_c, (size_t)clen) == 0)) {
        isc_log("%s: %s did not ask the target to authenticate (mutual CHAP is configured)",
                c->client->id, c->initiator);
        lg->status = LS_AUTH_FAILED;
        return;
      }
      uint8_t ans[16];
      char hex[40];
      md5_chap((uint8_t)id, (const uint8_t *)ic->mutual_chap.secret, ic->mutual_chap.secret_len,
               chal, (size_t)clen, ans);
      isc_encode_hex(ans, 16, hex);
      isc_text_add(resp, "CHAP_N", ic->mutual_chap.user);
      isc_text_add(resp, "CHAP_R", hex);
    } else if (ii || cc) {
      isc_log("%s: %s asked for mutual CHAP, which clients.%s.iscsi.mutual_chap does not set up",
              c->client->id, c->initiator, c->client->id);
      lg->status = LS_AUTH_FAILED;
      return;
    }
    lg->auth_done = true;
    lg->chap_state = 3;
  }
}

/* The first request names the initiator, the session type and the target. */
static void login_identify(struct conn *c, struct login *lg, struct isc_kv *kv, int n)
{
  const char *init = NULL, *type = "Normal", *target = NULL;
  for (int i = 0; i < n; i++) {
    if (strcmp(kv[i].key, "InitiatorName") == 0)
      init = kv[i].value;
    else if (strcmp(kv[i].key, "SessionType") == 0)
      type = kv[i].value;
    else if (strcmp(kv[i].key, "TargetName") == 0)
      target = kv[i].value;
  }
  if (!init || !init[0] || strlen(init) > TB_ISCSI_NAME_MAX) {
    lg->status = LS_MISSING;
    return;
  }
  snprintf(c->initiator, sizeof c->initiator, "%s", init);
  if (strcmp(type, "Discovery") == 0) {
    c->discovery = true;
    lg->auth_done = true;
    return;
  }
  if (strcmp(type, "Normal") != 0) {
    lg->status = LS_INVALID;
    return;
  }
  if (!target) {
    lg->status = LS_MISSING;
    return;
  }
  const struct tb_client_conf *k = find_client(c, target);
  if (!k) {
    isc_log("login from %s (%s): no target %s (targets are %s:ID for the ids in \"clients\")",
            c->peer, c->initiator, target, c->cfg->iscsi.iqn_prefix);
    lg->status = LS_NOT_FOUND;
    return;
  }
  if (!client_allows(c, k)) {
    isc_log("login from %s (%s) to %s refused: not in clients.%s.allow or not its "
            "iscsi.initiator",
            c->peer, c->initiator, target, k->id);
    lg->status = LS_FORBIDDEN;
    return;
  }
  c->client = k;
  isc_target_name(c->cfg->iscsi.iqn_prefix, k->id, c->target, sizeof c->target);
  lg->need_chap = k->iscsi && k->iscsi->chap.set;
  lg->auth_done = !lg->need_chap;
}

static void answer_number(struct isc_text *resp, const char *key, uint32_t v)
{
  char buf[16];
  snprintf(buf, sizeof buf, "%u", v);
  isc_text_add(resp, key, buf);
}

/* Operational keys (§13): the result of each negotiation, or NotUnderstood /
 * Reject.  Values we can't accept end the login (LS_INVALID). */
static void negotiate(struct conn *c, struct login *lg, const char *k, const char *v,
                      struct isc_text *resp)
{
  uint32_t n;
  if (strcmp(k, "HeaderDigest") == 0 || strcmp(k, "DataDigest") == 0) {
    bool crc = false;
    const char *pick = NULL;
    for (const char *p = v; *p && !pick;) { /* the initiator's first choice we know */
      const char *e = strchr(p, ',');
      size_t l = e ? (size_t)(e - p) : strlen(p);
      if (l == 6 && strncmp(p, "CRC32C", 6) == 0)
        pick = "CRC32C", crc = true;
      else if (l == 4 && strncmp(p, "None", 4) == 0)
        pick = "None";
      p += l + (e ? 1 : 0);
    }
    isc_text_add(resp, k, pick ? pick : "Reject");
    *(k[0] == 'H' ? &lg->header_digest : &lg->data_digest) = crc; /* from the full feature phase */
  } else if (strcmp(k, "MaxRecvDataSegmentLength") == 0) {
    if (!parse_number(v, 512, 16777215, &n)) {
      lg->status = LS_INVALID;
      return;
    }
    c->peer_mrdsl = n; /* declarative: what the initiator can receive */
  } else if (strcmp(k, "MaxBurstLength") == 0 || strcmp(k, "FirstBurstLength") == 0) {
    if (!parse_number(v, 512, 16777215, &n)) {
      lg->status = LS_INVALID;
      return;
    }
    bool first = k[0] == 'F';
    uint32_t ours = first ? OUR_FIRST_BURST : OUR_MAX_BURST;
    n = n < ours ? n : ours;
    *(first ? &c->first_burst : &c->max_burst) = n;
    answer_number(resp, k, n);
  } else if (strcmp(k, "InitialR2T") == 0 || strcmp(k, "ImmediateData") == 0 ||
             strcmp(k, "DataPDUInOrder") == 0 || strcmp(k, "DataSequenceInOrder") == 0) {
    bool yes = strcmp(v, "Yes") == 0;
    if (!yes && strcmp(v, "No") != 0) {
      lg->status = LS_INVALID;
      return;
    }
    if (strcmp(k, "InitialR2T") == 0) {
      c->initial_r2t = yes; /* OR with our No */
    } else if (strcmp(k, "ImmediateData") == 0) {
      c->immediate_data = yes; /* AND with our Yes */
    } else {
      yes = true; /* OR with our Yes: in order */
    }
    isc_text_add(resp, k, yes ? "Yes" : "No");
  } else if (strcmp(k, "MaxConnections") == 0 || strcmp(k, "MaxOutstandingR2T") == 0) {
    if (!parse_number(v, 1, 65535, &n)) {
      lg->status = LS_INVALID;
      return;
    }
    answer_number(resp, k, 1);
  } else if (strcmp(k, "ErrorRecoveryLevel") == 0) {
    if (!parse_number(v, 0, 2, &n)) {
      lg->status = LS_INVALID;
      return;
    }
    answer_number(resp, k, 0);
  } else if (strcmp(k, "DefaultTime2Wait") == 0 || strcmp(k, "DefaultTime2Retain") == 0) {
    if (!parse_number(v, 0, 3600, &n)) {
      lg->status = LS_INVALID;
      return;
    }
    bool wait = strcmp(k, "DefaultTime2Wait") == 0;
    answer_number(resp, k, wait ? (n > 2 ? n : 2) : (n < 20 ? n : 20));
  } else if (strcmp(k, "IFMarker") == 0 || strcmp(k, "OFMarker") == 0) {
    isc_text_add(resp, k, "No"); /* RFC 3720 markers: AND with our No */
  } else if (strcmp(k, "IFMarkInt") == 0 || strcmp(k, "OFMarkInt") == 0) {
    isc_text_add(resp, k, "Irrelevant");
  } else if (strcmp(k, "InitiatorName") == 0 || strcmp(k, "TargetName") == 0 ||
             strcmp(k, "SessionType") == 0 || strcmp(k, "InitiatorAlias") == 0 ||
             strcmp(k, "AuthMethod") == 0 || strncmp(k, "CHAP_", 5) == 0) {
    /* handled elsewhere / declarative */
  } else if (strncmp(k, "X-", 2) == 0 || strncmp(k, "X#", 2) == 0) {
    isc_text_add(resp, k, "NotUnderstood");
  } else {
    isc_text_add(resp, k, "NotUnderstood");
  }
}

static void security_keys(struct conn *c, struct login *lg, struct isc_kv *kv, int n,
                          struct isc_text *resp)
{
  for (int i = 0; i < n && !lg->status; i++) {
    if (strcmp(kv[i].key, "AuthMethod") != 0)
      continue;
    const char *v = kv[i].value;
    if (c->discovery || !lg->need_chap) {
      if (list_has(v, "None")) {
        isc_text_add(resp, "AuthMethod", "None");
        lg->auth_done = true;
      } else {
        isc_text_add(resp, "AuthMethod", "Reject");
        lg->status = LS_AUTH_FAILED;
      }
    } else if (list_has(v, "CHAP")) {
      isc_text_add(resp, "AuthMethod", "CHAP");
      lg->chap_state = 1;
    } else {
      isc_log("%s: %s offered no CHAP, which clients.%s.iscsi.chap requires", c->client->id,
              c->initiator, c->client->id);
      isc_text_add(resp, "AuthMethod", "Reject");
      lg->status = LS_AUTH_FAILED;
    }
  }
  if (!lg->status && lg->need_chap && lg->chap_state >= 1)
    chap_step(c, lg, kv, n, resp);
}

static int send_login_rsp(struct conn *c, const uint8_t *req, struct login *lg, bool transit,
                          int nsg, const struct isc_text *resp)
{
  uint8_t bhs[ISC_BHS_LEN] = {ISC_OP_LOGIN_RSP};
  int csg = (req[1] >> 2) & 3;
  bhs[1] = (uint8_t)((transit ? 0x80 : 0) | csg << 2 | (transit ? nsg : 0));
  bhs[2] = 0;
  bhs[3] = 0;
  memcpy(bhs + 8, req + 8, 6); /* ISID */
  isc_put16(bhs + 14, lg->status ? 0 : (transit && nsg == 3 ? c->tsih : 0));
  memcpy(bhs + 16, req + 16, 4); /* ITT */
  bhs[36] = (uint8_t)(lg->status >> 8);
  bhs[37] = (uint8_t)lg->status;
  return send_pdu(c, bhs, resp ? resp->buf : NULL, resp ? (uint32_t)resp->len : 0);
}

static int open_disk(struct conn *c, struct login *lg)
{
  if (claim_client(c) == -1) {
    isc_log("%s: login from %s (%s) refused: another initiator is logged in to %s", c->client->id,
            c->peer, c->initiator, c->target);
    lg->status = LS_UNAVAILABLE;
    return -1;
  }
  struct tb_conn_info info = {.frontend = "iscsi", .peer = c->peer, .boot_token = NULL};
  enum tb_conn_refusal why;
  /* LUN 0, then the client's further disks, right after it in cfg->clients. */
  uint32_t mask = 0;
  for (size_t k = 0; k <= c->client->n_disks && k < ISC_MAX_LUNS; k++) {
    const struct tb_client_conf *d = &c->client[k];
    c->tconn[k] = tb_conn_open(c->cfg, d, &info, &why);
    if (!c->tconn[k]) {
      isc_log("%s: login from %s (%s): %s%s", d->id, c->peer, c->initiator, tb_errmsg(),
              k ? " (the target has no such LUN meanwhile)" : "");
      tb_event_refusal(c->cfg->state_dir, d->id, c->peer, tb_conn_refusal_reason(why, tb_errmsg()),
                       NULL);
      if (k > 0)
        continue;
      lg->status = why == TB_CONN_BUSY ? LS_UNAVAILABLE : LS_TARGET_ERROR;
      return -1;
    }
    isc_lu_init(&c->lu[k], c->tconn[k], d->id, c->target, tb_conn_read_only(c->tconn[k]));
    mask |= 1u << k;
  }
  if (c->client->n_disks >= ISC_MAX_LUNS)
    isc_log("%s: %zu disks, of which the first %d are LUNs", c->client->id, c->client->n_disks + 1,
            ISC_MAX_LUNS);
  for (size_t k = 0; k < ISC_MAX_LUNS; k++)
    c->lu[k].lun_mask = mask;
  return 0;
}

/* The login phase: 0 when the full feature phase begins, -1 to close. */
static int login(struct conn *c)
{
  CLEANUP_FREE struct login *lg = calloc(1, sizeof *lg);
  CLEANUP_FREE struct isc_text *resp = calloc(1, sizeof *resp);
  CLEANUP_FREE struct isc_pdu *p = malloc(sizeof *p);
  if (!lg || !resp || !p)
    return -1;
  lg->first = true;
  lg->stage = -1;
  for (int round = 0; round < LOGIN_MAX_PDUS; round++) {
    int r = recv_pdu(c, p);
    if (r != ISC_PARSE_OK)
      return -1;
    const uint8_t *b = p->bhs;
    if (isc_opcode(b) != ISC_OP_LOGIN_REQ)
      return -1; /* only logins before the full feature phase: drop */
    bool transit = b[1] & 0x80, cont = b[1] & 0x40;
    int csg = (b[1] >> 2) & 3, nsg = b[1] & 3;
    if (lg->first) {
      memcpy(c->isid, b + 8, 6);
      c->exp_cmd_sn = isc_get32(b + 24);
      c->stat_sn = isc_get32(b + 28);
      if (b[3] > 0) /* Version-min */
        lg->status = LS_UNSUPPORTED_VERSION;
      else if (isc_get16(b + 14) != 0)
        lg->status = LS_NO_SESSION; /* no connections added to sessions (MaxConnections=1) */
    }
    if ((transit && cont) || csg == 2 || (transit && (nsg == 2 || nsg <= csg)) ||
        (lg->stage >= 0 && csg < lg->stage))
      lg->status = lg->status ? lg->status : LS_INVALID;
    memset(resp, 0, sizeof *resp);
    if (!lg->status) {
      if (p->data_len > sizeof lg->text - lg->text_len) {
        lg->status = LS_INVALID;
      } else {
        memcpy(lg->text + lg->text_len, p->data, p->data_len);
        lg->text_len += p->data_len;
      }
    }
    if (!lg->status && cont) { /* more text follows: acknowledge, no keys yet */
      lg->status = 0;
      if (send_login_rsp(c, b, lg, false, 0, resp) == -1)
        return -1;
      continue;
    }
    struct isc_kv kv[ISC_TEXT_MAX_PAIRS];
    int n = 0;
    if (!lg->status && (n = isc_text_parse(lg->text, lg->text_len, kv, ISC_TEXT_MAX_PAIRS)) < 0)
      lg->status = LS_INVALID;
    lg->text_len = 0;
    if (!lg->status && lg->first)
      login_identify(c, lg, kv, n);
    if (!lg->status && csg == 0)
      security_keys(c, lg, kv, n, resp);
    if (!lg->status && csg == 0 && lg->need_chap && lg->chap_state == 0 && !lg->auth_done &&
        lg->first) {
      bool offered = false;
      for (int i = 0; i < n; i++)
        offered |= strcmp(kv[i].key, "AuthMethod") == 0;
      if (!offered)
        lg->status = LS_AUTH_FAILED;
    }
    if (!lg->status && csg == 1) {
      if (lg->need_chap && !lg->auth_done)
        lg->status = LS_AUTH_FAILED; /* skipped the security stage */
      for (int i = 0; i < n && !lg->status; i++)
        negotiate(c, lg, kv[i].key, kv[i].value, resp);
      if (!lg->sent_mrdsl && !lg->status) {
        answer_number(resp, "MaxRecvDataSegmentLength", OUR_MRDSL);
        lg->sent_mrdsl = true;
      }
    }
    if (!lg->status && !c->discovery && !lg->sent_tpgt) {
      isc_text_add(resp, "TargetPortalGroupTag", "1");
      lg->sent_tpgt = true;
    }
    if (resp->overflow && !lg->status)
      lg->status = LS_TARGET_ERROR;
    lg->first = false;
    lg->stage = csg;
    bool grant = transit && !lg->status && lg->auth_done;
    if (grant && nsg == 3 && !c->discovery && open_disk(c, lg) == -1)
      grant = false;
    if (grant && nsg == 3 && c->discovery) {
      pthread_mutex_lock(&table_lock);
      c->tsih = next_tsih++;
      if (next_tsih == 0)
        next_tsih = 1;
      pthread_mutex_unlock(&table_lock);
    }
    if (lg->status) {
      send_login_rsp(c, b, lg, false, 0, NULL);
      return -1;
    }
    if (send_login_rsp(c, b, lg, grant, nsg, resp) == -1)
      return -1;
    if (grant && nsg == 3) {
      c->rx.header_digest = c->tx.header_digest = lg->header_digest;
      c->rx.data_digest = c->tx.data_digest = lg->data_digest;
      return 0;
    }
  }
  return -1;
}

/* ---- full feature phase ---- */

static bool sn_lt(uint32_t a, uint32_t b)
{
  return (int32_t)(a - b) < 0;
}

/* The index of the logical unit LUN (SAM-5: peripheral device or flat
 * space addressing of a single level) this connection has, or -1. */
static int lun_index(const struct conn *c, const uint8_t *lun)
{
  for (int i = 2; i < 8; i++)
    if (lun[i])
      return -1;
  int method = lun[0] >> 6, n;
  if (method == 0 && (lun[0] & 0x3f) == 0)
    n = lun[1];
  else if (method == 1)
    n = (lun[0] & 0x3f) << 8 | lun[1];
  else
    return -1;
  return n < ISC_MAX_LUNS && c->tconn[n] ? n : -1;
}

static int send_scsi_rsp(struct conn *c, uint32_t itt, const struct isc_task *t, uint32_t edtl)
{
  uint8_t bhs[ISC_BHS_LEN] = {ISC_OP_SCSI_RSP, 0x80, 0x00, t->status};
  isc_put32(bhs + 16, itt);
  if (t->status == ISC_GOOD && t->wanted != edtl) {
    if (t->wanted > edtl) {
      bhs[1] |= 0x04;
      isc_put32(bhs + 44,
                (uint32_t)(t->wanted - edtl > 0xffffffffu ? 0xffffffffu : t->wanted - edtl));
    } else {
      bhs[1] |= 0x02;
      isc_put32(bhs + 44, (uint32_t)(edtl - t->wanted));
    }
  }
  uint8_t sense[2 + ISC_SENSE_LEN];
  uint32_t slen = 0;
  if (t->sense_len) {
    isc_put16(sense, (uint16_t)t->sense_len);
    memcpy(sense + 2, t->sense, t->sense_len);
    slen = 2 + t->sense_len;
  }
  return send_pdu(c, bhs, sense, slen);
}

/* Data-In PDUs for the task's data; status in the last one when it is GOOD. */
static int send_data_in(struct conn *c, uint32_t itt, const uint8_t *lun, const struct isc_task *t,
                        uint32_t edtl)
{
  uint32_t off = 0, sn = 0, seq = 0;
  bool collapse = t->status == ISC_GOOD;
  while (off < t->din_len) {
    uint32_t n = t->din_len - off;
    if (n > c->peer_mrdsl)
      n = c->peer_mrdsl;
    if (n > c->max_burst - seq)
      n = c->max_burst - seq;
    bool last = off + n == t->din_len;
    uint8_t bhs[ISC_BHS_LEN] = {ISC_OP_DATA_IN};
    seq += n;
    bool end_seq = last || seq == c->max_burst;
    if (end_seq)
      seq = 0;
    bhs[1] = end_seq ? 0x80 : 0;
    memcpy(bhs + 8, lun, 8);
    isc_put32(bhs + 16, itt);
    isc_put32(bhs + 20, ISC_RSVD_TAG);
    if (last && collapse) {
      bhs[1] |= 0x01; /* S: status follows in this PDU */
      bhs[3] = t->status;
      if (t->wanted != edtl) {
        bhs[1] |= t->wanted > edtl ? 0x04 : 0x02;
        uint64_t res = t->wanted > edtl ? t->wanted - edtl : edtl - t->wanted;
        isc_put32(bhs + 44, res > 0xffffffffu ? 0xffffffffu : (uint32_t)res);
      }
    }
    isc_put32(bhs + 36, sn++);
    isc_put32(bhs + 40, off);
    if (send_pdu_sn(c, bhs, t->din + off, n, last && collapse ? SN_ADVANCE : SN_CMD) == -1)
      return -1;
    off += n;
  }
  if (t->din_len > 0 && collapse)
    return 0;
  return send_scsi_rsp(c, itt, t, edtl);
}

enum { ATTR_ORDERED = 2, ATTR_HEAD_OF_QUEUE = 3 };
#define ISC_TASK_SET_FULL 0x28

static void drop_conn(struct conn *c)
{
  c->dropped = true;
  shutdown(c->fd, SHUT_RDWR);
}

/* Run one command and answer it: a worker's job, or the reader's for an
 * ORDERED command.  -1: the connection must end. */
static int exec_job(struct conn *c, const struct job *j)
{
  struct isc_task t = {.cdb = j->cdb, .dout = j->dout, .dout_len = j->dout_len};
  uint8_t small[512];
  uint32_t cap = j->read ? (j->edtl < READ_MAX ? j->edtl : READ_MAX) : 0;
  t.din = cap <= sizeof small ? small : malloc(cap);
  if (!t.din)
    return -1;
  t.din_cap = cap;
  int k = lun_index(c, j->lun);
  if (j->nolun || k < 0)
    isc_scsi_exec_nolun(&c->lu[0], &t);
  else
    isc_scsi_exec(&c->lu[k], &t);
  int r = t.drop ? -1 : send_data_in(c, j->itt, j->lun, &t, j->edtl);
  if (t.drop)
    isc_log("%s: the boot this connection from %s belonged to has ended: dropping it",
            c->client->id, c->peer);
  if (t.din != small)
    free(t.din);
  return r;
}

static void job_free(struct job *j)
{
  free(j->dout);
  free(j);
}

static void *worker_main(void *arg)
{
  struct conn *c = arg;
  pthread_mutex_lock(&c->jobs_lock);
  for (;;) {
    while (!c->queue_head && !c->workers_quit)
      pthread_cond_wait(&c->jobs_cond, &c->jobs_lock);
    if (c->workers_quit)
      break;
    struct job *j = c->queue_head;
    c->queue_head = j->next;
    if (!c->queue_head)
      c->queue_tail = NULL;
    c->queued--;
    c->running++;
    int slot = 0;
    while (c->running_used[slot])
      slot++;
    c->running_used[slot] = true;
    c->running_itt[slot] = j->itt;
    pthread_mutex_unlock(&c->jobs_lock);
    int r = c->dropped ? -1 : exec_job(c, j);
    job_free(j);
    if (r == -1)
      drop_conn(c);
    pthread_mutex_lock(&c->jobs_lock);
    c->running_used[slot] = false;
    c->running--;
    pthread_cond_broadcast(&c->idle_cond);
  }
  pthread_mutex_unlock(&c->jobs_lock);
  return NULL;
}

/* Wait until every queued and running job has answered. */
static void jobs_wait_idle(struct conn *c)
{
  pthread_mutex_lock(&c->jobs_lock);
  while (c->queued || c->running)
    pthread_cond_wait(&c->idle_cond, &c->jobs_lock);
  pthread_mutex_unlock(&c->jobs_lock);
}

/* Drop every queued job (no answers: the initiator aborted them) and wait
 * for the running ones.  With jobs_lock held. */
static void jobs_clear_locked(struct conn *c)
{
  while (c->queue_head) {
    struct job *j = c->queue_head;
    c->queue_head = j->next;
    job_free(j);
  }
  c->queue_tail = NULL;
  c->queued = 0;
  while (c->running)
    pthread_cond_wait(&c->idle_cond, &c->jobs_lock);
}

/* At the end of the connection: the workers stop, the queue goes. */
static void jobs_end(struct conn *c)
{
  shutdown(c->fd, SHUT_RDWR); /* a worker blocked sending gives up */
  pthread_mutex_lock(&c->jobs_lock);
  c->workers_quit = true;
  pthread_cond_broadcast(&c->jobs_cond);
  pthread_mutex_unlock(&c->jobs_lock);
  for (int i = 0; i < c->n_workers; i++)
    pthread_join(c->workers[i], NULL);
  c->n_workers = 0;
  while (c->queue_head) {
    struct job *j = c->queue_head;
    c->queue_head = j->next;
    job_free(j);
  }
}

/* A command whose data is complete: queue it for the workers (DOUT is
 * taken, freed in any case).  -1: the connection must end. */
static int run_task(struct conn *c, uint32_t itt, const uint8_t *cdb, const uint8_t *lun,
                    bool nolun, uint8_t *dout, uint32_t dout_len, bool read, uint32_t edtl,
                    uint8_t attr)
{
  struct job *j = calloc(1, sizeof *j);
  if (!j) {
    free(dout);
    return -1;
  }
  j->itt = itt;
  j->edtl = edtl;
  memcpy(j->cdb, cdb, 16);
  memcpy(j->lun, lun, 8);
  j->nolun = nolun;
  j->read = read;
  j->dout = dout;
  j->dout_len = dout_len;
  pthread_mutex_lock(&c->jobs_lock);
  while (c->n_workers < ISC_WORKERS && attr != ATTR_ORDERED) {
    if (pthread_create(&c->workers[c->n_workers], NULL, worker_main, c) != 0)
      break;
    c->n_workers++;
  }
  if (attr == ATTR_ORDERED || c->n_workers == 0) { /* alone, after every earlier one */
    while (c->queued || c->running)
      pthread_cond_wait(&c->idle_cond, &c->jobs_lock);
    pthread_mutex_unlock(&c->jobs_lock);
    int r = exec_job(c, j);
    job_free(j);
    return r;
  }
  if (c->queued >= MAX_JOBS) {
    pthread_mutex_unlock(&c->jobs_lock);
    struct isc_task st = {.cdb = cdb, .status = ISC_TASK_SET_FULL};
    job_free(j);
    return send_scsi_rsp(c, itt, &st, edtl);
  }
  if (attr == ATTR_HEAD_OF_QUEUE || !c->queue_head) {
    j->next = c->queue_head;
    c->queue_head = j;
    if (!c->queue_tail)
      c->queue_tail = j;
  } else {
    c->queue_tail->next = j;
    c->queue_tail = j;
  }
  c->queued++;
  pthread_cond_signal(&c->jobs_cond);
  pthread_mutex_unlock(&c->jobs_lock);
  return 0;
}

static struct task *task_find(struct conn *c, uint32_t itt)
{
  for (int i = 0; i < MAX_TASKS; i++)
    if (c->tasks[i].used && c->tasks[i].itt == itt)
      return &c->tasks[i];
  return NULL;
}

static void task_free(struct task *t)
{
  free(t->buf);
  memset(t, 0, sizeof *t);
}

static int send_r2t(struct conn *c, struct task *t)
{
  uint32_t len = t->edtl - t->received;
  if (len > c->max_burst)
    len = c->max_burst;
  t->ttt = c->next_ttt++;
  if (t->ttt == ISC_RSVD_TAG)
    t->ttt = c->next_ttt++;
  t->burst_end = t->received + len;
  t->data_sn = 0;
  uint8_t bhs[ISC_BHS_LEN] = {ISC_OP_R2T, 0x80};
  memcpy(bhs + 8, t->lun, 8);
  isc_put32(bhs + 16, t->itt);
  isc_put32(bhs + 20, t->ttt);
  isc_put32(bhs + 36, t->r2t_sn++);
  isc_put32(bhs + 40, t->received);
  isc_put32(bhs + 44, len);
  return send_pdu_sn(c, bhs, NULL, 0, SN_PEEK);
}

/* A write task got data: run it when complete, else ask for more. */
static int task_progress(struct conn *c, struct task *t)
{
  if (t->received == t->edtl && !t->unsolicited) {
    struct task done = *t;
    t->buf = NULL; /* the job takes it */
    task_free(t);
    return run_task(c, done.itt, done.cdb, done.lun, done.nolun, done.buf, done.edtl, false,
                    done.edtl, done.attr);
  }
  if (!t->unsolicited && t->received == t->burst_end)
    return send_r2t(c, t);
  return 0;
}

static int handle_scsi_cmd(struct conn *c, struct isc_pdu *p)
{
  const uint8_t *b = p->bhs;
  uint32_t itt = isc_get32(b + 16), edtl = isc_get32(b + 20), cmdsn = isc_get32(b + 24);
  bool fbit = b[1] & 0x80, rbit = b[1] & 0x40, wbit = b[1] & 0x20;
  if (!isc_immediate(b)) {
    if (sn_lt(cmdsn, exp_cmd_sn(c)) || sn_lt(max_cmd_sn(c), cmdsn))
      return 0; /* outside the command window: ignored (RFC 7143 §4.2.2.1) */
    sn_take(c, cmdsn);
  }
  uint8_t lun[8];
  memcpy(lun, b + 8, 8);
  bool nolun = lun_index(c, lun) < 0;
  if (!wbit) {
    if (p->data_len)
      return send_reject(c, b, ISC_REJ_PROTOCOL);
    return run_task(c, itt, b + 32, lun, nolun, NULL, 0, rbit, edtl, b[1] & 7);
  }
  if ((p->data_len && !c->immediate_data) || p->data_len > edtl || p->data_len > c->first_burst ||
      (!fbit && c->initial_r2t))
    return send_reject(c, b, ISC_REJ_PROTOCOL);
  if (task_find(c, itt))
    return send_reject(c, b, ISC_REJ_TASK_IN_PROGRESS);
  if (edtl > WRITE_MAX) {
    struct isc_task t = {.cdb = b + 32};
    isc_sense(&t, 0x5, 0x24, 0x00);
    return send_scsi_rsp(c, itt, &t, edtl); /* later Data-Out for it is ignored */
  }
  struct task *t = NULL;
  for (int i = 0; i < MAX_TASKS && !t; i++)
    if (!c->tasks[i].used)
      t = &c->tasks[i];
  if (!t) {
    struct isc_task st = {.cdb = b + 32, .status = ISC_BUSY};
    return send_scsi_rsp(c, itt, &st, edtl);
  }
  memset(t, 0, sizeof *t);
  t->buf = malloc(edtl ? edtl : 1);
  if (!t->buf)
    return -1;
  t->used = true;
  t->itt = itt;
  t->ttt = ISC_RSVD_TAG;
  memcpy(t->cdb, b + 32, 16);
  memcpy(t->lun, lun, 8);
  t->nolun = nolun;
  t->attr = b[1] & 7;
  t->edtl = edtl;
  if (p->data_len)
    memcpy(t->buf, p->data, p->data_len);
  t->received = p->data_len;
  t->unsolicited = !fbit && t->received < edtl;
  t->burst_end = t->received;
  return task_progress(c, t);
}

static int handle_data_out(struct conn *c, struct isc_pdu *p)
{
  const uint8_t *b = p->bhs;
  uint32_t itt = isc_get32(b + 16), ttt = isc_get32(b + 20);
  uint32_t dsn = isc_get32(b + 36), off = isc_get32(b + 40);
  struct task *t = task_find(c, itt);
  if (!t)
    return 0; /* data of a task that was aborted or refused */
  bool unsol = ttt == ISC_RSVD_TAG;
  uint32_t limit = unsol ? (c->first_burst < t->edtl ? c->first_burst : t->edtl) : t->burst_end;
  if (unsol != t->unsolicited || (!unsol && ttt != t->ttt) || off != t->received ||
      p->data_len > limit - off || dsn != t->data_sn) {
    /* The command fails; the connection stays (later Data-Out of the task
     * is ignored), so one bad PDU costs one command, not the session. */
    isc_log("%s: %s sent Data-Out out of sequence (offset %u, DataSN %u): the command fails",
            c->client->id, c->initiator, off, dsn);
    struct isc_task st = {.cdb = t->cdb};
    isc_sense(&st, 0x0b, 0x47, 0x00); /* ABORTED COMMAND, SCSI PARITY ERROR */
    task_free(t);
    return send_scsi_rsp(c, itt, &st, 0);
  }
  memcpy(t->buf + off, p->data, p->data_len);
  t->received += p->data_len;
  t->data_sn++;
  if (b[1] & 0x80) { /* F: end of this sequence */
    if (unsol) {
      t->unsolicited = false;
      t->burst_end = t->received;
      t->data_sn = 0;
    } else if (t->received != t->burst_end) {
      return -1;
    }
  }
  return task_progress(c, t);
}

static int handle_nop_out(struct conn *c, struct isc_pdu *p)
{
  const uint8_t *b = p->bhs;
  uint32_t itt = isc_get32(b + 16), cmdsn = isc_get32(b + 24);
  if (!isc_immediate(b) && !sn_lt(cmdsn, exp_cmd_sn(c)) && !sn_lt(max_cmd_sn(c), cmdsn))
    sn_take(c, cmdsn);
  if (itt == ISC_RSVD_TAG)
    return 0; /* an answer to a ping of ours, or a ping that wants none */
  uint8_t bhs[ISC_BHS_LEN] = {ISC_OP_NOP_IN, 0x80};
  memcpy(bhs + 8, b + 8, 8);
  isc_put32(bhs + 16, itt);
  isc_put32(bhs + 20, ISC_RSVD_TAG);
  uint32_t n = p->data_len < c->peer_mrdsl ? p->data_len : c->peer_mrdsl;
  return send_pdu(c, bhs, p->data, n);
}

static int handle_tmf(struct conn *c, struct isc_pdu *p)
{
  const uint8_t *b = p->bhs;
  uint8_t fn = b[1] & 0x7f;
  uint32_t ref = isc_get32(b + 20), cmdsn = isc_get32(b + 24);
  if (!isc_immediate(b) && !sn_lt(cmdsn, exp_cmd_sn(c)) && !sn_lt(max_cmd_sn(c), cmdsn))
    sn_take(c, cmdsn);
  uint8_t response = 0;
  switch (fn) {
  case 1: { /* ABORT TASK: a write still waiting for its data or a queued
             * job goes unanswered; a running job is waited for (it answers) */
    struct task *t = task_find(c, ref);
    if (t) {
      task_free(t);
      break;
    }
    response = 1; /* task does not exist: it completed before the abort */
    pthread_mutex_lock(&c->jobs_lock);
    for (struct job **jp = &c->queue_head, *prev = NULL; *jp; prev = *jp, jp = &(*jp)->next) {
      if ((*jp)->itt != ref)
        continue;
      struct job *j = *jp;
      *jp = j->next;
      if (c->queue_tail == j)
        c->queue_tail = prev;
      c->queued--;
      job_free(j);
      response = 0;
      break;
    }
    for (bool busy = true; response == 1 && busy;) {
      busy = false;
      for (int i = 0; i < ISC_WORKERS; i++)
        busy |= c->running_used[i] && c->running_itt[i] == ref;
      if (busy)
        pthread_cond_wait(&c->idle_cond, &c->jobs_lock);
    }
    pthread_mutex_unlock(&c->jobs_lock);
    break;
  }
  case 2: /* ABORT TASK SET */
  case 4: /* CLEAR TASK SET */
  case 5: /* LOGICAL UNIT RESET */
    if (lun_index(c, b + 8) < 0) {
      response = 2; /* LUN does not exist */
      break;
    }
    /* fall through */
  case 6: /* TARGET WARM RESET */
    for (int i = 0; i < MAX_TASKS; i++)
      if (c->tasks[i].used)
        task_free(&c->tasks[i]);
    pthread_mutex_lock(&c->jobs_lock);
    jobs_clear_locked(c);
    pthread_mutex_unlock(&c->jobs_lock);
    break;
  case 7: /* TARGET COLD RESET: answered, then the connection ends */
    break;
  default:
    response = 5; /* not supported (CLEAR ACA, TASK REASSIGN: ERL 0) */
    break;
  }
  uint8_t bhs[ISC_BHS_LEN] = {ISC_OP_TMF_RSP, 0x80, response};
  isc_put32(bhs + 16, isc_get32(b + 16));
  if (send_pdu(c, bhs, NULL, 0) == -1)
    return -1;
  return fn == 7 ? -1 : 0;
}

/* SendTargets: the targets this initiator may log in to. */
static void send_targets(struct conn *c, const char *what, struct isc_text *resp)
{
  const struct tb_config *cfg = c->cfg;
  char name[300], addr[128] = "";
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  if (getsockname(c->fd, (struct sockaddr *)&ss, &sl) == 0) {
    char host[64] = "";
    int port = 0;
    if (ss.ss_family == AF_INET) {
      struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
      inet_ntop(AF_INET, &s4->sin_addr, host, sizeof host);
      port = ntohs(s4->sin_port);
      snprintf(addr, sizeof addr, "%s:%d,1", host, port);
    } else if (ss.ss_family == AF_INET6) {
      struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
      inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
      port = ntohs(s6->sin6_port);
      snprintf(addr, sizeof addr, "[%s]:%d,1", host, port);
    }
  }
  for (size_t i = 0; i < cfg->n_clients; i++) {
    const struct tb_client_conf *k = &cfg->clients[i];
    if (k->disk[0])
      continue; /* a LUN of its client's target */
    isc_target_name(cfg->iscsi.iqn_prefix, k->id, name, sizeof name);
    bool mine = (k->iscsi && k->iscsi->initiator[0]) || k->has_address
                    ? (k->iscsi && k->iscsi->initiator[0]
                           ? strcasecmp(k->iscsi->initiator, c->initiator) == 0
                           : peer_is_addr(c, &k->address))
                    : true;
    if (!mine || !client_allows(c, k))
      continue;
    if (c->client && c->client != k)
      continue; /* a normal session sees its own target only */
    if (strcmp(what, "All") != 0 && strcasecmp(what, name) != 0 && what[0])
      continue;
    isc_text_add(resp, "TargetName", name);
    if (addr[0])
      isc_text_add(resp, "TargetAddress", addr);
  }
}

static int handle_text(struct conn *c, struct isc_pdu *p)
{
  const uint8_t *b = p->bhs;
  uint32_t cmdsn = isc_get32(b + 24);
  if (!isc_immediate(b) && !sn_lt(cmdsn, exp_cmd_sn(c)) && !sn_lt(max_cmd_sn(c), cmdsn))
    sn_take(c, cmdsn);
  if (b[1] & 0x40) /* continued text requests: our answers are small, we take none */
    return send_reject(c, b, ISC_REJ_NOT_SUPPORTED);
  struct isc_text *resp = calloc(1, sizeof *resp);
  char *text = malloc(p->data_len + 1);
  if (!resp || !text) {
    free(resp);
    free(text);
    return -1;
  }
  memcpy(text, p->data, p->data_len);
  struct isc_kv kv[ISC_TEXT_MAX_PAIRS];
  int n = isc_text_parse(text, p->data_len, kv, ISC_TEXT_MAX_PAIRS);
  int r;
  if (n < 0) {
    r = send_reject(c, b, ISC_REJ_PROTOCOL);
  } else {
    for (int i = 0; i < n; i++) {
      if (strcmp(kv[i].key, "SendTargets") == 0)
        send_targets(c, kv[i].value, resp);
      else
        isc_text_add(resp, kv[i].key, "NotUnderstood");
    }
    uint8_t bhs[ISC_BHS_LEN] = {ISC_OP_TEXT_RSP, 0x80};
    isc_put32(bhs + 16, isc_get32(b + 16));
    isc_put32(bhs + 20, ISC_RSVD_TAG);
    uint32_t len = (uint32_t)resp->len < c->peer_mrdsl ? (uint32_t)resp->len : c->peer_mrdsl;
    r = send_pdu(c, bhs, resp->buf, len);
  }
  free(resp);
  free(text);
  return r;
}

static int handle_logout(struct conn *c, struct isc_pdu *p)
{
  const uint8_t *b = p->bhs;
  uint8_t reason = b[1] & 0x7f;
  uint32_t cmdsn = isc_get32(b + 24);
  if (!isc_immediate(b) && !sn_lt(cmdsn, exp_cmd_sn(c)) && !sn_lt(max_cmd_sn(c), cmdsn))
    sn_take(c, cmdsn);
  jobs_wait_idle(c); /* every command answered before the Logout Response */
  uint8_t bhs[ISC_BHS_LEN] = {ISC_OP_LOGOUT_RSP, 0x80};
  bhs[2] = reason == 2 ? 2 : 0; /* connection recovery: not supported at ERL 0 */
  isc_put32(bhs + 16, isc_get32(b + 16));
  isc_put16(bhs + 40, 2);
  isc_put16(bhs + 42, 0);
  send_pdu(c, bhs, NULL, 0);
  return -1;
}

/* Full feature phase until the connection ends. */
static void ffp_loop(struct conn *c)
{
  struct isc_pdu *p = malloc(sizeof *p);
  if (!p)
    return;
  c->rx.max_recv_data = OUR_MRDSL;
  for (;;) {
    int r = recv_pdu(c, p);
    if (r == 1 || c->dropped)
      break;
    if (r == ISC_PARSE_DDIGEST) {
      if (send_reject(c, p->bhs, ISC_REJ_DATA_DIGEST) == -1)
        break;
      continue;
    }
    if (r != ISC_PARSE_OK) {
      isc_log("%s%s%s: %s from %s: dropping the connection", c->client ? c->client->id : "",
              c->client ? ": " : "", c->initiator,
              r == ISC_PARSE_TOO_BIG ? "a data segment over MaxRecvDataSegmentLength"
                                     : "a header digest error",
              c->peer);
      break;
    }
    int op = isc_opcode(p->bhs);
    if (debug_pdus)
      isc_log("pdu op 0x%02x flags 0x%02x itt 0x%08x ttt 0x%08x dlen %u sn36 %u off40 %u", op,
              p->bhs[1], isc_get32(p->bhs + 16), isc_get32(p->bhs + 20), p->data_len,
              isc_get32(p->bhs + 36), isc_get32(p->bhs + 40));
    if (c->discovery && op != ISC_OP_TEXT_REQ && op != ISC_OP_LOGOUT_REQ && op != ISC_OP_NOP_OUT) {
      r = send_reject(c, p->bhs, ISC_REJ_PROTOCOL);
    } else {
      switch (op) {
      case ISC_OP_NOP_OUT:
        r = handle_nop_out(c, p);
        break;
      case ISC_OP_SCSI_CMD:
        r = handle_scsi_cmd(c, p);
        break;
      case ISC_OP_DATA_OUT:
        r = handle_data_out(c, p);
        break;
      case ISC_OP_TMF_REQ:
        r = handle_tmf(c, p);
        break;
      case ISC_OP_TEXT_REQ:
        r = handle_text(c, p);
        break;
      case ISC_OP_LOGOUT_REQ:
        r = handle_logout(c, p);
        break;
      case ISC_OP_LOGIN_REQ:
        r = send_reject(c, p->bhs, ISC_REJ_PROTOCOL);
        break;
      default: /* SNACK (ERL 0) and anything else */
        r = send_reject(c, p->bhs, ISC_REJ_NOT_SUPPORTED);
        break;
      }
    }
    if (r == -1)
      break;
  }
  free(p);
}

static void *conn_main(void *arg)
{
  struct conn *c = arg;
  if (login(c) == 0) {
    if (c->client)
      isc_log("%s: %s logged in from %s (%s)", c->client->id, c->initiator, c->peer, c->target);
    ffp_loop(c);
  }
  jobs_end(c);
  for (int i = 0; i < MAX_TASKS; i++)
    if (c->tasks[i].used)
      task_free(&c->tasks[i]);
  if (c->tconn[0])
    isc_log("%s: %s from %s disconnected", c->client->id, c->initiator, c->peer);
  for (size_t k = 0; k < ISC_MAX_LUNS; k++)
    tb_conn_close(c->tconn[k]);
  table_remove(c);
  close(c->fd);
  tb_config_unref(c->cfg);
  pthread_mutex_destroy(&c->send_lock);
  pthread_mutex_destroy(&c->jobs_lock);
  pthread_cond_destroy(&c->jobs_cond);
  pthread_cond_destroy(&c->idle_cond);
  tb_vector_free(&c->rbuf);
  free(c);
  return NULL;
}

static void peer_text(const struct sockaddr_storage *ss, char *out, size_t len)
{
  char host[64] = "?";
  if (ss->ss_family == AF_INET)
    inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, host, sizeof host);
  else if (ss->ss_family == AF_INET6)
    inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, host, sizeof host);
  snprintf(out, len, "%s", host);
}

int isc_serve(int fd)
{
  struct conn *c = calloc(1, sizeof *c);
  if (!c) {
    close(fd);
    return -1;
  }
  socklen_t sl = sizeof c->peer_sa;
  if (getpeername(fd, (struct sockaddr *)&c->peer_sa, &sl) == -1)
    memset(&c->peer_sa, 0, sizeof c->peer_sa);
  peer_text(&c->peer_sa, c->peer, sizeof c->peer);
  int one = 1, idle = 30, intvl = 10, cnt = 3;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  /* A machine that rebooted without closing its connection (iPXE's, when
   * the OS takes the NIC) is noticed within about a minute. */
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
  c->fd = fd;
  c->cfg = isc_get_config();
  debug_pdus = getenv("TABULA_ISCSI_DEBUG") != NULL;
  c->rx.max_recv_data = LOGIN_DATA_MAX;
  c->tx.max_recv_data = LOGIN_DATA_MAX;
  c->peer_mrdsl = 8192;
  c->max_burst = 262144;
  c->first_burst = 65536;
  c->initial_r2t = true;
  c->immediate_data = true;
  c->next_ttt = 1;
  int rbuf_ok = tb_vector_reserve(&c->rbuf, 65536);
  pthread_mutex_init(&c->send_lock, NULL);
  pthread_mutex_init(&c->jobs_lock, NULL);
  pthread_cond_init(&c->jobs_cond, NULL);
  pthread_cond_init(&c->idle_cond, NULL);
  if (rbuf_ok == -1 || !c->cfg) {
    tb_config_unref(c->cfg);
    tb_vector_free(&c->rbuf);
    free(c);
    close(fd);
    return -1;
  }
  table_add(c);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_t th;
  int e = pthread_create(&th, &attr, conn_main, c);
  pthread_attr_destroy(&attr);
  if (e != 0) {
    table_remove(c);
    tb_config_unref(c->cfg);
    pthread_mutex_destroy(&c->send_lock);
    tb_vector_free(&c->rbuf);
    free(c);
    close(fd);
    errno = e;
    return -1;
  }
  return 0;
}
