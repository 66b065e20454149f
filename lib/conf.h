/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: the configuration file (one JSON document, read with Jansson).
 *
 * One parser for every program: the plugin, the daemon, the CLI and the view
 * all call tb_config_load().  Parsing is strict: an unknown key, a wrong type
 * or a value out of range is an error whose message starts with the JSON path
 * of the offending value and says what was expected, e.g.
 *   clients.pc01.policy: expected "rollback" or "persist", got "rollbak"
 *
 * Groups: "groups": {"lab": {...client settings...}} and a client with
 * "group": "lab" inherits every setting of the group; its own keys override.
 *
 * Disks: a client's "image" (with its version, policy, preserve...) is its
 * first disk, served as export ID.  "disks": {"games": {...}} gives it
 * further disks, each from its own image with its own version, policy,
 * keep_sessions, preserve, quota, watchdog, refresh and merge (and
 * "read_only": served as the master, never written); they share the
 * client's allow list, reconnect_grace and I/O limits.  Each further disk is
 * one more entry of cfg->clients, right after its client's, with the id
 * "ID/DISK" (util.h), so everything that works on a client id (sessions,
 * the mailbox, merges, the view, status) works on a disk; its "client"
 * names the machine and "disk" the disk.  One boot of the machine is one
 * session across its disks (live.c).
 *
 * The loaded config is immutable and reference counted, so a reload can swap
 * it while sessions still hold the old one.
 */
#ifndef TB_CONF_H
#define TB_CONF_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <jansson.h>

#include "iscsi-conf.h"
#include "limit.h"
#include "overlay.h" /* TB_MIN_BLOCK_SIZE, TB_MAX_BLOCK_SIZE */
#include "region.h"
#include "util.h"
#include "vector.h"

#define TB_DEFAULT_BLOCK_SIZE 4096
#define TB_DEFAULT_RECONNECT_GRACE_MS 60000

enum tb_policy { TB_POLICY_ROLLBACK = 0, TB_POLICY_PERSIST = 1 };

/* An address with a prefix length: "10.0.0.0/8", "::1", "127.0.0.1/32". */
struct tb_cidr {
  int family; /* AF_INET or AF_INET6 */
  uint8_t addr[16];
  int prefix;
};

/* Which peers may do something: the unix socket, and/or networks. */
struct tb_acl {
  bool unix_socket; /* "unix" */
  TB_VECTOR(tb_cidr_list, struct tb_cidr) nets;
};

struct tb_client_conf {
  char id[TB_NAME_MAX + 1];     /* "ID", or "ID/DISK" for a further disk */
  char client[TB_NAME_MAX + 1]; /* the machine: ID for its every disk */
  char disk[TB_NAME_MAX + 1];   /* "" for the client's first disk, else DISK */
  size_t n_disks;               /* first disk: its further disks follow it in cfg->clients */
  bool read_only;               /* a further disk served as its master, never written */
  char image[TB_NAME_MAX + 1];
  char group[TB_NAME_MAX + 1]; /* "" if none */
  enum tb_policy policy;
  uint32_t version;    /* 0: newest version of the image */
  int keep_sessions;   /* retained sessions (restore points), default 2 */
  struct tb_acl allow; /* default: unix socket and loopback */
  bool has_address;    /* found by peer address when the export name is "" */
  struct tb_cidr address;
  char *refresh; /* schedule text ("daily 03:00"...) or NULL */
  int64_t refresh_jitter_ms;
  /* Scheduled merge ("merge": {"into", "when", "note"}): the daemon merges
   * the client's overlay into image MERGE_INTO when MERGE_WHEN (a schedule
   * text) comes due, or as soon as the client's session has ended. */
  char merge_into[TB_NAME_MAX + 1]; /* "" if none */
  char *merge_when;
  char *merge_note;           /* or NULL */
  struct tb_region *preserve; /* "partition:N" or "lba:A-B" */
  size_t n_preserve;
  uint64_t quota; /* bytes of overlay, 0 = unlimited */
  /* "limits": {"read", "write" (bytes per second), "read_iops", "write_iops"}
   * over all the client's connections (limit.h); merged key by key over its
   * group's.  All 0: unlimited. */
  struct tb_io_limits limits;
  /* How long a session waits for its boot to reconnect after the last
   * connection closed (live.h); the top-level "reconnect_grace" by default. */
  int64_t reconnect_grace_ms;
  json_t *watchdog; /* the client's "watchdog" section (owned), or NULL */
  /* PXE (pxe.c in the daemon): "mac" makes the client a PXE client; its
   * "boot" {mode, kernel, initrd, cmdline} is merged key by key over its
   * group's and over pxe.{kernel, initrd, cmdline}. */
  bool has_mac;
  char mac[18];      /* "52:54:00:12:34:56", lowercase */
  bool boot_iscsi;   /* boot.mode "iscsi": iPXE sanboots its target (no kernel) */
  char *boot_kernel; /* absolute paths, or NULL (only for clients without a mac) */
  char *boot_initrd;
  char *boot_cmdline;            /* extra kernel command line, or NULL */
  struct tb_iscsi_client *iscsi; /* "iscsi" (iscsi-conf.h), or NULL */
};

#define TB_DEFAULT_MAX_CONNECTIONS 1024

struct tb_webhook_conf {
  char *url;
  char *secret; /* HMAC-SHA256 key, or NULL */
  int64_t timeout_ms;
  int retries;
};

/* The top-level "pxe" section: tabula-restored writes and runs dnsmasq
 * (DHCP with a static lease per client "mac", TFTP, iPXE) on INTERFACE. */
struct tb_pxe_conf {
  bool enabled; /* the section is present */
  char *interface;
  char *server;           /* IPv4 address of this host on INTERFACE */
  struct tb_cidr network; /* IPv4 network the clients' addresses are in */
  char *network_text;     /* as written, e.g. "10.20.0.0/24" */
  char *unknown_first;    /* leases for unregistered PCs, or NULL */
  char *unknown_last;
  char *kernel, *initrd, *cmdline; /* defaults of clients.ID.boot, or NULL */
  int nbd_port;                    /* default: the port of listen.tcp, else 10809 */
  char *dnsmasq;                   /* binary, default "dnsmasq" */
  char *tftp_dir;                  /* TFTP root the daemon fills, default STATE/pxe/tftp */
};

struct tb_config {
  int refcount;
  char *path; /* file it was read from */
  char *state_dir;
  uint32_t block_size;
  int64_t reconnect_grace_ms; /* default of clients.ID.reconnect_grace */
  char **images;              /* names from "images" */
  size_t n_images;
  struct tb_client_conf *clients;
  size_t n_clients; /* entries: clients and their further disks */
  size_t n_disks;   /* of which further disks ("ID/DISK"); clients: n_clients - n_disks */
  /* daemon */
  char *listen_unix;       /* NBD unix socket, default STATE/nbd.sock */
  int listen_unix_mode;    /* its mode (listen.unix_mode), -1: 0700 under the daemon's umask */
  char *listen_unix_group; /* its group (listen.unix_group, name or number), or NULL */
  char *listen_tcp;        /* "ADDR:PORT" or NULL */
  char *control;           /* control socket, default STATE/control.sock */
  char *control_group;     /* operators' group: may use the control socket (mode 0660), or NULL */
  char *nbdkit;            /* nbdkit binary, default "nbdkit" */
  char *plugin;            /* plugin path, default: nbdkit finds "tabula" */
  char *tls_certificates;  /* directory for nbdkit --tls-certificates, or NULL */
  bool tls_require;
  /* NBD connections nbdkit serves at once (listen.max_connections, nbdkit's
   * limit filter; default TB_DEFAULT_MAX_CONNECTIONS, 0: no limit) */
  long long listen_max_connections;
  /* how long a TCP connection may take to open an export
   * (listen.handshake_timeout, lib/handshake.h; 0: forever) */
  int64_t listen_handshake_timeout_ms;
  struct tb_acl admin_nets; /* admin peers over TCP (require TLS) */
  int64_t *admin_uids;      /* admin uids on the unix socket; default: 0 and our uid */
  size_t n_admin_uids;
  uint64_t events_max_bytes; /* journal rotation size */
  unsigned events_keep;      /* rotated generations kept (events.keep) */
  struct tb_webhook_conf *webhooks;
  size_t n_webhooks;
  char *metrics_file;
  int metrics_mode; /* metrics.mode, -1: 0644 (node_exporter reads it as another user) */
  int64_t metrics_interval_ms;
  json_t *pull;     /* "pull" section (image distribution), or NULL */
  json_t *watchdog; /* top-level "watchdog" defaults, or NULL */
  json_t *json;     /* the whole document, for sections parsed elsewhere */
  struct tb_pxe_conf pxe;
  char *listen_iscsi;         /* "ADDR:PORT" where tabula-iscsid listens, or NULL */
  struct tb_iscsi_conf iscsi; /* top-level "iscsi" (iscsi-conf.h) */
};

/* Load and validate FILE.  On error returns NULL; tb_errmsg() has
 * "FILE: json.path: what was expected". */
struct tb_config *tb_config_load(const char *file);
/* Same from a string (for tests); NAME is used in messages. */
struct tb_config *tb_config_parse(const char *text, const char *name);
struct tb_config *tb_config_ref(struct tb_config *cfg);
void tb_config_unref(struct tb_config *cfg);
/* A reference dropped when the variable goes out of scope. */
static inline void tb_cleanup_config_unref(struct tb_config **cfg)
{
  tb_config_unref(*cfg);
}
#define CLEANUP_CONFIG_UNREF __attribute__((cleanup(tb_cleanup_config_unref)))

/* Client ID or disk "ID/DISK". */
const struct tb_client_conf *tb_config_client(const struct tb_config *cfg, const char *id);
bool tb_config_has_image(const struct tb_config *cfg, const char *name);
/* Where C is written in the file, for messages: "clients.pc01", or
 * "clients.pc01.disks.games" for a further disk.  Returns BUF. */
const char *tb_client_conf_path(const struct tb_client_conf *c, char *buf, size_t len);
/* The client whose "mac" is MAC (any case), or NULL. */
const struct tb_client_conf *tb_config_client_by_mac(const struct tb_config *cfg, const char *mac);

/* Parse a MAC address "xx:xx:xx:xx:xx:xx" (any case) into OUT as lowercase. */
int tb_mac_parse(const char *text, char out[18]);

/* Parse "10.0.0.0/8", "::1", "127.0.0.1" into a cidr. */
int tb_cidr_parse(const char *text, struct tb_cidr *out);
bool tb_cidr_match(const struct tb_cidr *net, const struct sockaddr *sa);
/* Does the ACL allow this peer?  sa == NULL or AF_UNIX means the unix socket. */
bool tb_acl_allows(const struct tb_acl *acl, const struct sockaddr *sa);

#endif
