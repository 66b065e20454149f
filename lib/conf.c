/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: the configuration file (see conf.h).
 *
 * The parser walks the JSON document top-down with a "path" string that grows
 * as it descends (clients.pc01.allow[2]), so every error names exactly the
 * value that is wrong.  Each object is checked against the list of keys it may
 * have before any value is read: a typo is an error, never a silently ignored
 * setting.  Defaults are applied here, once, so every program sees the same
 * values.
 */
#include <config.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "conf.h"
#include "json.h"
#include "events.h"
#include "handshake.h"
#include "schedule.h"
#include "watchdog-conf.h"

/* ---- typed getters (missing key: leave *out alone) ----------------------- */

/* tb_json_bad reports a bad value; the getters of ints, sizes and durations
 * are json.h's, which watchdog-conf.c shares; these are conf.c's alone. */

static int get_string(const json_t *obj, const char *path, const char *key, char **out)
{
  json_t *v = json_object_get(obj, key);
  if (!v)
    return 0;
  char p[512];
  tb_json_subpath(p, sizeof p, path, key);
  if (!json_is_string(v) || json_string_length(v) == 0)
    return tb_json_bad(p, "a non-empty string", v);
  free(*out);
  *out = strdup(json_string_value(v));
  return *out ? 0 : tb_error_errno("%s", p);
}

static int get_name(const json_t *obj, const char *path, const char *key, char *out)
{
  json_t *v = json_object_get(obj, key);
  if (!v)
    return 0;
  char p[512];
  tb_json_subpath(p, sizeof p, path, key);
  if (!json_is_string(v) || !tb_name_valid(json_string_value(v)))
    return tb_json_bad(
        p, "a name of 1-64 characters [A-Za-z0-9._-] starting with a letter or digit", v);
  strcpy(out, json_string_value(v));
  return 0;
}

static int get_bool(const json_t *obj, const char *path, const char *key, bool *out)
{
  json_t *v = json_object_get(obj, key);
  if (!v)
    return 0;
  char p[512];
  tb_json_subpath(p, sizeof p, path, key);
  if (!json_is_boolean(v))
    return tb_json_bad(p, "true or false", v);
  *out = json_is_true(v);
  return 0;
}

/* A file mode written as an octal string such as "0660" (a string, since JSON
 * has no octal numbers); *OUT is left alone when KEY is missing. */
static int get_mode(const json_t *obj, const char *path, const char *key, int *out)
{
  json_t *v = json_object_get(obj, key);
  if (!v)
    return 0;
  char p[256];
  tb_json_subpath(p, sizeof p, path, key);
  const char *t = json_is_string(v) ? json_string_value(v) : "";
  char *end;
  long m = strtol(t, &end, 8);
  if (!t[0] || *end || m < 0 || m > 0777 || strspn(t, "01234567") != strlen(t))
    return tb_json_bad(p, "a file mode as an octal string, such as \"0660\"", v);
  *out = (int)m;
  return 0;
}

/* ---- addresses ----------------------------------------------------------- */

int tb_cidr_parse(const char *text, struct tb_cidr *out)
{
  char buf[128];
  if (strlen(text) >= sizeof buf)
    return tb_error("\"%s\" is not an address", text);
  strcpy(buf, text);
  char *slash = strchr(buf, '/');
  if (slash)
    *slash = '\0';
  memset(out, 0, sizeof *out);
  if (inet_pton(AF_INET, buf, out->addr) == 1) {
    out->family = AF_INET;
    out->prefix = 32;
  } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
    out->family = AF_INET6;
    out->prefix = 128;
  } else {
    return tb_error("\"%s\" is not an IPv4 or IPv6 address (such as 10.0.0.0/8 or ::1)", text);
  }
  if (slash) {
    char *end;
    long n = strtol(slash + 1, &end, 10);
    if (!slash[1] || *end || n < 0 || n > out->prefix)
      return tb_error("\"%s\": bad prefix length (0 to %d)", text, out->prefix);
    out->prefix = (int)n;
  }
  return 0;
}

bool tb_cidr_match(const struct tb_cidr *net, const struct sockaddr *sa)
{
  const uint8_t *addr;
  uint8_t mapped[4];
  int family = sa->sa_family;
  if (family == AF_INET) {
    addr = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
  } else if (family == AF_INET6) {
    addr = (const uint8_t *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
    /* An IPv4-mapped IPv6 peer matches IPv4 networks. */
    if (net->family == AF_INET && IN6_IS_ADDR_V4MAPPED((const struct in6_addr *)addr)) {
      memcpy(mapped, addr + 12, 4);
      addr = mapped;
      family = AF_INET;
    }
  } else {
    return false;
  }
  if (family != net->family)
    return false;
  int bits = net->prefix;
  for (int i = 0; bits > 0; i++, bits -= 8) {
    uint8_t mask = bits >= 8 ? 0xff : (uint8_t)(0xff << (8 - bits));
    if ((addr[i] & mask) != (net->addr[i] & mask))
      return false;
  }
  return true;
}

bool tb_acl_allows(const struct tb_acl *acl, const struct sockaddr *sa)
{
  if (!sa || sa->sa_family == AF_UNIX)
    return acl->unix_socket;
  for (size_t i = 0; i < acl->nets.len; i++)
    if (tb_cidr_match(&acl->nets.ptr[i], sa))
      return true;
  return false;
}

static int parse_acl(const json_t *v, const char *path, struct tb_acl *acl)
{
  if (!json_is_array(v))
    return tb_json_bad(path, "an array of \"unix\" and addresses or networks", v);
  tb_vector_free(&acl->nets);
  memset(acl, 0, sizeof *acl);
  /* Room for every entry now: the loop below does not allocate. */
  if (tb_vector_reserve(&acl->nets, json_array_size(v)) == -1)
    return tb_error_prefix("%s", path);
  size_t i;
  json_t *e;
  json_array_foreach(v, i, e)
  {
    char p[512];
    snprintf(p, sizeof p, "%s[%zu]", path, i);
    if (!json_is_string(e))
      return tb_json_bad(p, "\"unix\" or an address or network such as \"10.0.0.0/8\"", e);
    if (strcmp(json_string_value(e), "unix") == 0) {
      acl->unix_socket = true;
      continue;
    }
    if (tb_cidr_parse(json_string_value(e), &acl->nets.ptr[acl->nets.len]) == -1)
      return tb_error_prefix("%s", p);
    acl->nets.len++; /* reserved above */
  }
  return 0;
}

static int default_client_acl(struct tb_acl *acl)
{
  acl->unix_socket = true;
  struct tb_cidr loopback4, loopback6;
  tb_cidr_parse("127.0.0.0/8", &loopback4);
  tb_cidr_parse("::1", &loopback6);
  if (tb_vector_push(&acl->nets, loopback4) == -1 || tb_vector_push(&acl->nets, loopback6) == -1)
    return tb_error_prefix("config");
  return 0;
}

/* ---- clients ------------------------------------------------------------- */

static const char *const client_keys[] = {
    "image",   "version",  "policy",  "keep_sessions",   "allow",
    "address", "group",    "refresh", "refresh_jitter",  "preserve",
    "quota",   "watchdog", "merge",   "reconnect_grace", "mac",
    "boot",    "iscsi",    "limits",  "disks",           NULL};

/* What a further disk may set for itself; the rest is its client's. */
static const char *const disk_keys[] = {"image",          "version", "policy",    "keep_sessions",
                                        "preserve",       "quota",   "watchdog",  "refresh",
                                        "refresh_jitter", "merge",   "read_only", NULL};

int tb_mac_parse(const char *text, char out[18])
{
  static const char hex[] = "0123456789abcdef";
  if (strlen(text) != 17)
    return tb_error("\"%s\" is not a MAC address such as \"52:54:00:12:34:56\"", text);
  for (int i = 0; i < 17; i++) {
    char ch = text[i];
    if (i % 3 == 2) {
      if (ch != ':')
        return tb_error("\"%s\" is not a MAC address such as \"52:54:00:12:34:56\"", text);
      out[i] = ':';
      continue;
    }
    if (ch >= 'A' && ch <= 'F')
      ch = (char)(ch - 'A' + 'a');
    if (!strchr(hex, ch) || !ch)
      return tb_error("\"%s\" is not a MAC address such as \"52:54:00:12:34:56\"", text);
    out[i] = ch;
  }
  out[17] = '\0';
  return 0;
}

/* An absolute path (a kernel, an initrd, a directory). */
static int get_abs_path(const json_t *obj, const char *path, const char *key, char **out)
{
  json_t *v = json_object_get(obj, key);
  if (!v)
    return 0;
  char p[512];
  tb_json_subpath(p, sizeof p, path, key);
  if (!json_is_string(v) || json_string_value(v)[0] != '/')
    return tb_json_bad(p, "an absolute path", v);
  return get_string(obj, path, key, out);
}

/* A kernel command line: printable text on one line (it goes into an iPXE script). */
static int get_cmdline(const json_t *obj, const char *path, const char *key, char **out)
{
  json_t *v = json_object_get(obj, key);
  if (!v)
    return 0;
  char p[512];
  tb_json_subpath(p, sizeof p, path, key);
  if (!json_is_string(v))
    return tb_json_bad(p, "a kernel command line such as \"console=ttyS0 quiet\"", v);
  for (const char *c = json_string_value(v); *c; c++)
    if ((unsigned char)*c < 0x20 || *c == 0x7f)
      return tb_error("%s: the kernel command line must be one line of printable text", p);
  free(*out);
  *out = strdup(json_string_value(v));
  return *out ? 0 : tb_error_errno("%s", p);
}

/* "mode": "nbd" (the default: a Linux kernel and initrd, root over NBD) or
 * "iscsi" (iPXE sanboots the client's iSCSI target: Windows PCs). */
static int get_boot_mode(const json_t *obj, const char *path, bool *iscsi)
{
  json_t *v = json_object_get(obj, "mode");
  if (!v)
    return 0;
  char p[512];
  tb_json_subpath(p, sizeof p, path, "mode");
  const char *m = json_string_value(v);
  if (!m || (strcmp(m, "nbd") != 0 && strcmp(m, "iscsi") != 0))
    return tb_json_bad(
        p,
        "\"nbd\" (a kernel and an initrd, root over NBD) or \"iscsi\" (iPXE sanboots the "
        "client's iSCSI target, e.g. Windows)",
        v);
  *iscsi = strcmp(m, "iscsi") == 0;
  return 0;
}

/* "boot": {"mode": "nbd"|"iscsi", "kernel": PATH, "initrd": PATH,
 * "cmdline": TEXT}, each optional; with OUT NULL only checked (a group's),
 * else stored into OUT's fields. */
static int parse_boot(const json_t *v, const char *path, struct tb_client_conf *c)
{
  static const char *const keys[] = {"kernel", "initrd", "cmdline", "mode", NULL};
  if (!json_is_object(v))
    return tb_json_bad(
        path,
        "an object such as {\"kernel\": \"/srv/tabula/vmlinuz\", \"initrd\": "
        "\"/srv/tabula/initrd.img\", \"cmdline\": \"quiet\"} or {\"mode\": \"iscsi\"}",
        v);
  if (tb_json_check_keys(v, path, keys) == -1)
    return -1;
  struct tb_client_conf scratch = {0};
  struct tb_client_conf *t = c ? c : &scratch;
  int r = get_boot_mode(v, path, &t->boot_iscsi) == -1 ||
                  get_abs_path(v, path, "kernel", &t->boot_kernel) == -1 ||
                  get_abs_path(v, path, "initrd", &t->boot_initrd) == -1 ||
                  get_cmdline(v, path, "cmdline", &t->boot_cmdline) == -1
              ? -1
              : 0;
  free(scratch.boot_kernel);
  free(scratch.boot_initrd);
  free(scratch.boot_cmdline);
  return r;
}

/* A group's "mac" and "boot" are checked where they are written, so an error
 * names the group's path rather than each client's. */
static int check_group_pxe(const json_t *g, const char *path)
{
  char p[512], mac[18];
  json_t *v = json_object_get(g, "mac");
  if (v) {
    tb_json_subpath(p, sizeof p, path, "mac");
    if (!json_is_string(v))
      return tb_json_bad(p, "a MAC address such as \"52:54:00:12:34:56\"", v);
    if (tb_mac_parse(json_string_value(v), mac) == -1)
      return tb_error_prefix("%s", p);
  }
  v = json_object_get(g, "boot");
  if (v) {
    tb_json_subpath(p, sizeof p, path, "boot");
    return parse_boot(v, p, NULL);
  }
  return 0;
}

/* The PXE settings of a client with a "mac": an IPv4 address inside
 * pxe.network, and a kernel and an initrd from its boot, its group or pxe. */
static int check_client_pxe(const struct tb_config *cfg, const char *path, struct tb_client_conf *c)
{
  char p[512];
  tb_json_subpath(p, sizeof p, path, "mac");
  if (!cfg->pxe.enabled)
    return tb_error("%s: a client with a MAC boots over PXE, which needs the top-level \"pxe\" "
                    "section ({\"interface\": ..., \"server\": ..., \"network\": ...})",
                    p);
  tb_json_subpath(p, sizeof p, path, "address");
  if (!c->has_address)
    return tb_error("%s: missing: a PXE client (it has a \"mac\") needs the address of its "
                    "static DHCP lease, inside pxe.network %s",
                    p, cfg->pxe.network_text);
  char text[INET6_ADDRSTRLEN] = "?";
  inet_ntop(c->address.family, c->address.addr, text, sizeof text);
  struct sockaddr_in sin = {.sin_family = AF_INET};
  memcpy(&sin.sin_addr, c->address.addr, 4);
  if (c->address.family != AF_INET || !tb_cidr_match(&cfg->pxe.network, (struct sockaddr *)&sin))
    return tb_error("%s: client \"%s\" has address %s, outside pxe.network %s (give it an "
                    "address in that network, or remove its \"mac\")",
                    p, c->id, text, cfg->pxe.network_text);
  if (strcmp(text, cfg->pxe.server) == 0)
    return tb_error("%s: %s is pxe.server, the appliance's own address; give client \"%s\" "
                    "another one",
                    p, text, c->id);
  if (c->boot_iscsi)
    return 0; /* iPXE boots its iSCSI target: no kernel, no initrd */
  if (!c->boot_kernel && cfg->pxe.kernel && !(c->boot_kernel = strdup(cfg->pxe.kernel)))
    return tb_error_errno("%s", path);
  if (!c->boot_initrd && cfg->pxe.initrd && !(c->boot_initrd = strdup(cfg->pxe.initrd)))
    return tb_error_errno("%s", path);
  if (!c->boot_cmdline && cfg->pxe.cmdline && !(c->boot_cmdline = strdup(cfg->pxe.cmdline)))
    return tb_error_errno("%s", path);
  const char *missing = !c->boot_kernel ? "kernel" : !c->boot_initrd ? "initrd" : NULL;
  if (missing) {
    snprintf(p, sizeof p, "%s.boot.%s", path, missing);
    return tb_error("%s: missing: PXE client \"%s\" needs a %s: set it here, in its group's "
                    "\"boot\" or as pxe.%s",
                    p, c->id, missing, missing);
  }
  return 0;
}

/* "merge": {"into": IMAGE, "when": SCHEDULE, "note": TEXT} */
static int parse_merge(const struct tb_config *cfg, const json_t *v, const char *path,
                       struct tb_client_conf *c)
{
  static const char *const keys[] = {"into", "when", "note", NULL};
  const char *want = "an object such as {\"into\": \"demo\", \"when\": \"daily 03:00\"}";
  if (!json_is_object(v))
    return tb_json_bad(path, want, v);
  if (tb_json_check_keys(v, path, keys) == -1)
    return -1;
  char p[512];
  if (!json_object_get(v, "into") || !json_object_get(v, "when"))
    return tb_error("%s: needs \"into\" (an image) and \"when\" (a schedule such as \"daily "
                    "03:00\")",
                    path);
  if (get_name(v, path, "into", c->merge_into) == -1 ||
      get_string(v, path, "when", &c->merge_when) == -1 ||
      get_string(v, path, "note", &c->merge_note) == -1)
    return -1;
  if (!tb_config_has_image(cfg, c->merge_into)) {
    tb_json_subpath(p, sizeof p, path, "into");
    return tb_error("%s: image \"%s\" is not listed in \"images\"", p, c->merge_into);
  }
  struct tb_schedule sched;
  if (tb_schedule_parse(c->merge_when, &sched) == -1) {
    tb_json_subpath(p, sizeof p, path, "when");
    return tb_error_prefix("%s", p);
  }
  return 0;
}

static int parse_preserve(const json_t *v, const char *path, struct tb_client_conf *c)
{
  if (!json_is_array(v))
    return tb_json_bad(path, "an array such as [\"partition:2\", \"lba:2048-4095\"]", v);
  free(c->preserve);
  c->n_preserve = 0;
  c->preserve = calloc(json_array_size(v) + 1, sizeof *c->preserve);
  if (!c->preserve)
    return tb_error_errno("%s", path);
  size_t i;
  json_t *e;
  json_array_foreach(v, i, e)
  {
    char p[512];
    snprintf(p, sizeof p, "%s[%zu]", path, i);
    const char *s = json_is_string(e) ? json_string_value(e) : NULL;
    if (!s || tb_region_parse(s, false, &c->preserve[c->n_preserve]) == -1)
      return tb_json_bad(p, "\"partition:N\" (1-128) or \"lba:FIRST-LAST\"", e);
    c->n_preserve++;
  }
  return 0;
}

/* "limits": {"read": "50M", "write": "20M", "read_iops": N, "write_iops": N}.
 * A rate is bytes per second ("50M" or "50M/s": 50 MiB/s); 0 is unlimited. */
static int parse_limits(const json_t *v, const char *path, struct tb_io_limits *l)
{
  static const char *const keys[] = {"read", "write", "read_iops", "write_iops", NULL};
  if (!json_is_object(v))
    return tb_json_bad(
        path, "an object such as {\"read\": \"50M\", \"write\": \"20M\", \"read_iops\": 2000}", v);
  if (tb_json_check_keys(v, path, keys) == -1)
    return -1;
  static const char *const rates[] = {"read", "write"};
  uint64_t *out[] = {&l->read_bps, &l->write_bps};
  for (int i = 0; i < 2; i++) {
    json_t *r = json_object_get(v, rates[i]);
    if (!r)
      continue;
    char p[512], text[64];
    tb_json_subpath(p, sizeof p, path, rates[i]);
    const char *s = json_string_value(r);
    size_t n = s ? strlen(s) : 0;
    if (s && n > 2 && n < sizeof text && strcmp(s + n - 2, "/s") == 0) {
      memcpy(text, s, n - 2);
      text[n - 2] = '\0';
      s = text;
    }
    if (json_is_integer(r) && json_integer_value(r) >= 0)
      *out[i] = (uint64_t)json_integer_value(r);
    else if (!s || tb_parse_size(s, out[i]) == -1)
      return tb_json_bad(p, "bytes per second, a number or a string such as \"50M\" (MiB/s)", r);
  }
  long long n = 0;
  if (tb_json_get_int(v, path, "read_iops", 0, 100000000, &n) == -1)
    return -1;
  l->read_iops = (uint64_t)n;
  n = 0;
  if (tb_json_get_int(v, path, "write_iops", 0, 100000000, &n) == -1)
    return -1;
  l->write_iops = (uint64_t)n;
  return 0;
}

/* Parse one client object (already merged with its group) into C. */
static int parse_client(const struct tb_config *cfg, const json_t *obj, const char *path,
                        struct tb_client_conf *c)
{
  if (tb_json_check_keys(obj, path, client_keys) == -1)
    return -1;
  char p[512];
  if (!json_object_get(obj, "image")) {
    tb_json_subpath(p, sizeof p, path, "image");
    return tb_error("%s: missing (the name of one of \"images\")", p);
  }
  if (get_name(obj, path, "image", c->image) == -1)
    return -1;
  if (!tb_config_has_image(cfg, c->image)) {
    tb_json_subpath(p, sizeof p, path, "image");
    return tb_error("%s: image \"%s\" is not listed in \"images\"", p, c->image);
  }
  long long n;
  n = 0;
  if (tb_json_get_int(obj, path, "version", 0, UINT32_MAX, &n) == -1)
    return -1;
  c->version = (uint32_t)n;
  json_t *pol = json_object_get(obj, "policy");
  c->policy = TB_POLICY_ROLLBACK;
  if (pol) {
    tb_json_subpath(p, sizeof p, path, "policy");
    const char *s = json_is_string(pol) ? json_string_value(pol) : "";
    if (strcmp(s, "rollback") == 0)
      c->policy = TB_POLICY_ROLLBACK;
    else if (strcmp(s, "persist") == 0)
      c->policy = TB_POLICY_PERSIST;
    else
      return tb_json_bad(p, "\"rollback\" or \"persist\"", pol);
  }
  n = 2;
  if (tb_json_get_int(obj, path, "keep_sessions", 0, 1000, &n) == -1)
    return -1;
  c->keep_sessions = (int)n;
  json_t *allow = json_object_get(obj, "allow");
  if (allow) {
    tb_json_subpath(p, sizeof p, path, "allow");
    if (parse_acl(allow, p, &c->allow) == -1)
      return -1;
  } else if (default_client_acl(&c->allow) == -1) {
    return -1;
  }
  json_t *addr = json_object_get(obj, "address");
  if (addr) {
    tb_json_subpath(p, sizeof p, path, "address");
    if (!json_is_string(addr))
      return tb_json_bad(p, "an IP address such as \"192.168.1.17\"", addr);
    if (tb_cidr_parse(json_string_value(addr), &c->address) == -1)
      return tb_error_prefix("%s", p);
    if (strchr(json_string_value(addr), '/'))
      return tb_json_bad(p, "a single IP address, not a network", addr);
    c->has_address = true;
  }
  if (get_name(obj, path, "group", c->group) == -1 ||
      get_string(obj, path, "refresh", &c->refresh) == -1 ||
      tb_json_get_duration(obj, path, "refresh_jitter", &c->refresh_jitter_ms) == -1 ||
      tb_json_get_size(obj, path, "quota", &c->quota) == -1)
    return -1;
  c->reconnect_grace_ms = cfg->reconnect_grace_ms;
  if (tb_json_get_duration(obj, path, "reconnect_grace", &c->reconnect_grace_ms) == -1)
    return -1;
  json_t *mac = json_object_get(obj, "mac");
  if (mac) {
    tb_json_subpath(p, sizeof p, path, "mac");
    if (!json_is_string(mac))
      return tb_json_bad(p, "a MAC address such as \"52:54:00:12:34:56\"", mac);
    if (tb_mac_parse(json_string_value(mac), c->mac) == -1)
      return tb_error_prefix("%s", p);
    c->has_mac = true;
  }
  json_t *boot = json_object_get(obj, "boot");
  if (boot) {
    tb_json_subpath(p, sizeof p, path, "boot");
    if (parse_boot(boot, p, c) == -1)
      return -1;
  }
  if (c->has_mac && check_client_pxe(cfg, path, c) == -1)
    return -1;
  /* A PXE client's static lease is its address: by default it may connect from there. */
  if (c->has_mac && !json_object_get(obj, "allow")) {
    if (tb_vector_push(&c->allow.nets, c->address) == -1)
      return tb_error_prefix("%s", path);
  }
  if (c->refresh) {
    struct tb_schedule sched;
    if (tb_schedule_parse(c->refresh, &sched) == -1) {
      tb_json_subpath(p, sizeof p, path, "refresh");
      return tb_error_prefix("%s", p);
    }
  }
  json_t *pres = json_object_get(obj, "preserve");
  if (pres) {
    tb_json_subpath(p, sizeof p, path, "preserve");
    if (parse_preserve(pres, p, c) == -1)
      return -1;
  }
  json_t *merge = json_object_get(obj, "merge");
  if (merge) {
    tb_json_subpath(p, sizeof p, path, "merge");
    if (parse_merge(cfg, merge, p, c) == -1)
      return -1;
  }
  json_t *wd = json_object_get(obj, "watchdog");
  if (wd) {
    tb_json_subpath(p, sizeof p, path, "watchdog");
    struct tb_watchdog_conf w = {0};
    int r = tb_watchdog_parse(wd, p, &w);
    tb_watchdog_free(&w);
    if (r == -1)
      return -1;
    c->watchdog = json_incref(wd);
  }
  json_t *lim = json_object_get(obj, "limits");
  if (lim) {
    tb_json_subpath(p, sizeof p, path, "limits");
    if (parse_limits(lim, p, &c->limits) == -1)
      return -1;
  }
  json_t *isc = json_object_get(obj, "iscsi");
  if (isc) {
    tb_json_subpath(p, sizeof p, path, "iscsi");
    if (!(c->iscsi = malloc(sizeof *c->iscsi)))
      return tb_error_errno("%s", p);
    if (tb_iscsi_client_parse(isc, p, c->iscsi) == -1)
      return -1;
  }
  return 0;
}

/* The client's object with its group's settings underneath. */
static json_t *merged_client(const json_t *root, const json_t *client, const char *path)
{
  json_t *g = json_object_get(client, "group");
  if (!g)
    return json_incref((json_t *)client);
  char p[512];
  tb_json_subpath(p, sizeof p, path, "group");
  json_t *groups = json_object_get(root, "groups");
  const char *name = json_is_string(g) ? json_string_value(g) : NULL;
  json_t *grp = name && groups ? json_object_get(groups, name) : NULL;
  if (!grp) {
    if (name)
      tb_error("%s: group \"%s\" is not defined in \"groups\"", p, name);
    else
      tb_json_bad(p, "the name of a group in \"groups\"", g);
    return NULL;
  }
  json_t *m = json_deep_copy(grp);
  if (!m || json_object_update(m, (json_t *)client) == -1) {
    json_decref(m);
    tb_error("%s: out of memory", path);
    return NULL;
  }
  /* "boot", "limits" and "disks" merge key by key: a client may set only its
   * cmdline, or only its write limit, or add a disk to its group's. */
  static const char *const by_key[] = {"boot", "limits", "disks"};
  for (size_t k = 0; k < sizeof by_key / sizeof *by_key; k++) {
    json_t *gb = json_object_get(grp, by_key[k]), *cb = json_object_get(client, by_key[k]);
    if (!json_is_object(gb) || !json_is_object(cb))
      continue;
    json_t *b = json_deep_copy(gb);
    if (!b || json_object_update(b, cb) == -1 || json_object_set_new(m, by_key[k], b) == -1) {
      json_decref(m);
      tb_error("%s: out of memory", path);
      return NULL;
    }
  }
  return m;
}

/* ---- top level ------------------------------------------------------------ */

static const char *const top_keys[] = {
    "state_dir", "block_size",    "images",  "clients", "groups",   "listen",
    "control",   "control_group", "nbdkit",  "plugin",  "tls",      "admin",
    "events",    "webhooks",      "metrics", "pull",    "watchdog", "reconnect_grace",
    "pxe",       "iscsi",         NULL};

static int parse_images(struct tb_config *cfg, const json_t *v)
{
  if (!json_is_object(v))
    return tb_json_bad("images", "an object of image names, such as {\"win11\": {}}", v);
  cfg->images = calloc(json_object_size(v) + 1, sizeof *cfg->images);
  if (!cfg->images)
    return tb_error_errno("images");
  const char *name;
  json_t *img;
  json_object_foreach((json_t *)v, name, img)
  {
    char p[512];
    snprintf(p, sizeof p, "images.%s", name);
    if (!tb_name_valid(name))
      return tb_error("%s: not a valid image name (1-64 characters [A-Za-z0-9._-], starting "
                      "with a letter or digit)",
                      p);
    if (!json_is_object(img))
      return tb_json_bad(p, "an object (settings of the image; {} for none)", img);
    static const char *const image_keys[] = {"description", NULL};
    if (tb_json_check_keys(img, p, image_keys) == -1)
      return -1;
    cfg->images[cfg->n_images++] = strdup(name);
  }
  return 0;
}

static int parse_groups(const json_t *v)
{
  if (!json_is_object(v))
    return tb_json_bad("groups", "an object of group names", v);
  const char *name;
  json_t *g;
  json_object_foreach((json_t *)v, name, g)
  {
    char p[512];
    snprintf(p, sizeof p, "groups.%s", name);
    if (!tb_name_valid(name))
      return tb_error("%s: not a valid group name", p);
    if (!json_is_object(g))
      return tb_json_bad(p, "an object of client settings", g);
    if (tb_json_check_keys(g, p, client_keys) == -1)
      return -1;
    if (json_object_get(g, "group"))
      return tb_error("%s.group: groups cannot be nested", p);
    if (check_group_pxe(g, p) == -1)
      return -1;
  }
  return 0;
}

/* An error in a setting the client inherits names the group's path, where the
 * administrator must fix it: "groups.lab.policy: ... (inherited by client
 * pc01)" rather than "clients.pc01.policy".  MSG starts with PATH (the
 * client's) when it is about one of its settings. */
static void blame_group(const json_t *client, const char *path, const char *id)
{
  const char *group = json_string_value(json_object_get(client, "group"));
  char msg[1024];
  snprintf(msg, sizeof msg, "%s", tb_errmsg());
  size_t n = strlen(path);
  if (!group || strncmp(msg, path, n) != 0 || msg[n] != '.')
    return;
  const char *key = msg + n + 1;
  size_t k = strcspn(key, ".[:");
  char name[64];
  if (k == 0 || k >= sizeof name)
    return;
  memcpy(name, key, k);
  name[k] = '\0';
  json_t *own = json_object_get(client, name);
  if (own && key[k] == '.' && json_is_object(own)) { /* "boot", "limits", "disks": by key */
    const char *sub = key + k + 1;
    size_t s = strcspn(sub, ".[:");
    char subname[64];
    if (s == 0 || s >= sizeof subname)
      return;
    memcpy(subname, sub, s);
    subname[s] = '\0';
    own = json_object_get(own, subname);
  }
  if (own)
    return; /* the client's own setting */
  tb_error("groups.%s.%s (inherited by client %s)", group, key, id);
}

/* Further disk NAME of client C (whose merged settings are M) into D. */
static int parse_disk(const struct tb_config *cfg, const json_t *m, const char *name,
                      const json_t *obj, const char *path, const struct tb_client_conf *c,
                      struct tb_client_conf *d)
{
  if (!tb_name_valid(name))
    return tb_error("%s: not a valid disk name (1-64 characters [A-Za-z0-9._-], starting with "
                    "a letter or digit)",
                    path);
  if (strlen(c->id) + 1 + strlen(name) > TB_NAME_MAX)
    return tb_error("%s: the disk's id \"%s/%s\" is longer than %d characters (shorten the "
                    "client id or the disk name)",
                    path, c->id, name, TB_NAME_MAX);
  if (!json_is_object(obj))
    return tb_json_bad(path, "an object such as {\"image\": \"games\", \"policy\": \"persist\"}",
                       obj);
  if (tb_json_check_keys(obj, path, disk_keys) == -1 ||
      get_bool(obj, path, "read_only", &d->read_only))
    return -1;
  /* The machine's settings every disk shares, as the client has them. */
  json_t *o = json_deep_copy(obj);
  static const char *const shared[] = {"allow", "reconnect_grace", "limits"};
  for (size_t i = 0; o && i < sizeof shared / sizeof *shared; i++) {
    json_t *v = json_object_get(m, shared[i]);
    if (v && json_object_set(o, shared[i], v) == -1) {
      json_decref(o);
      o = NULL;
    }
  }
  if (!o)
    return tb_error("%s: out of memory", path);
  json_object_del(o, "read_only");
  snprintf(d->id, sizeof d->id, "%s/%s", c->id, name);
  int r = parse_client(cfg, o, path, d);
  json_decref(o);
  if (r == -1)
    return -1;
  snprintf(d->client, sizeof d->client, "%s", c->id);
  snprintf(d->disk, sizeof d->disk, "%s", name);
  snprintf(d->group, sizeof d->group, "%s", c->group);
  return 0;
}

/* Entries cfg->clients needs for V: every client and every disk it or its
 * group names (an upper bound: a client's disk may replace its group's). */
static size_t count_entries(const json_t *root, const json_t *v)
{
  size_t n = 0;
  const char *id;
  json_t *cv;
  json_t *groups = json_object_get(root, "groups");
  json_object_foreach((json_t *)v, id, cv)
  {
    n += 1 + json_object_size(json_object_get(cv, "disks"));
    json_t *g = json_object_get(cv, "group");
    if (json_is_string(g) && json_is_object(groups))
      n +=
          json_object_size(json_object_get(json_object_get(groups, json_string_value(g)), "disks"));
  }
  return n;
}

static int parse_clients(struct tb_config *cfg, const json_t *root, const json_t *v)
{
  if (!json_is_object(v))
    return tb_json_bad("clients", "an object of client ids, such as {\"pc01\": {...}}", v);
  cfg->clients = calloc(count_entries(root, v) + 1, sizeof *cfg->clients);
  if (!cfg->clients)
    return tb_error_errno("clients");
  const char *id;
  json_t *cv;
  json_object_foreach((json_t *)v, id, cv)
  {
    char p[512];
    snprintf(p, sizeof p, "clients.%s", id);
    if (!tb_name_valid(id))
      return tb_error("%s: not a valid client id (1-64 characters [A-Za-z0-9._-], starting "
                      "with a letter or digit)",
                      p);
    if (!json_is_object(cv))
      return tb_json_bad(p, "an object of client settings", cv);
    struct tb_client_conf *c = &cfg->clients[cfg->n_clients++];
    strcpy(c->id, id);
    strcpy(c->client, id);
    json_t *m = merged_client(root, cv, p);
    if (!m)
      return -1;
    int r = parse_client(cfg, m, p, c);
    json_t *disks = json_object_get(m, "disks");
    if (r == 0 && disks && !json_is_object(disks)) {
      char dp[512];
      tb_json_subpath(dp, sizeof dp, p, "disks");
      r = tb_json_bad(dp, "an object of disk names, such as {\"games\": {\"image\": \"games\"}}",
                      disks);
    }
    const char *dname;
    json_t *dv;
    json_object_foreach(r == 0 ? disks : NULL, dname, dv)
    {
      char dp[512];
      snprintf(dp, sizeof dp, "%s.disks.%s", p, dname);
      if ((r = parse_disk(cfg, m, dname, dv, dp, c, &cfg->clients[cfg->n_clients])) == -1)
        break;
      cfg->n_clients++;
      cfg->n_disks++;
      c->n_disks++;
    }
    json_decref(m);
    if (r == -1) {
      blame_group(cv, p, id);
      return -1;
    }
    size_t self = (size_t)(c - cfg->clients); /* its disks follow it */
    for (size_t i = 0; i < self && c->has_address; i++)
      if (cfg->clients[i].has_address &&
          memcmp(&cfg->clients[i].address, &c->address, sizeof c->address) == 0)
        return tb_error("%s.address: same address as client \"%s\"", p, cfg->clients[i].id);
    for (size_t i = 0; i < self && c->has_mac; i++)
      if (cfg->clients[i].has_mac && strcmp(cfg->clients[i].mac, c->mac) == 0)
        return tb_error("%s.mac: MAC %s is given to clients \"%s\" and \"%s\" (one PC has one "
                        "MAC: remove it from one of them)",
                        p, c->mac, cfg->clients[i].id, c->id);
  }
  return 0;
}

/* One IPv4 address inside pxe.network (PATH names it in errors). */
static int pxe_address_in(const struct tb_config *cfg, const char *path, const char *text)
{
  struct sockaddr_in sin = {.sin_family = AF_INET};
  if (inet_pton(AF_INET, text, &sin.sin_addr) != 1)
    return tb_error("%s: \"%s\" is not an IPv4 address such as \"10.20.0.1\"", path, text);
  if (!tb_cidr_match(&cfg->pxe.network, (struct sockaddr *)&sin))
    return tb_error("%s: %s is outside pxe.network %s", path, text, cfg->pxe.network_text);
  return 0;
}

/* "pxe": {"interface", "server", "network", "unknown_range", "kernel",
 * "initrd", "cmdline", "nbd_port", "dnsmasq", "tftp_dir"} */
static int parse_pxe(struct tb_config *cfg, const json_t *v)
{
  static const char *const keys[] = {"interface", "server",   "network", "unknown_range",
                                     "kernel",    "initrd",   "cmdline", "nbd_port",
                                     "dnsmasq",   "tftp_dir", NULL};
  struct tb_pxe_conf *x = &cfg->pxe;
  if (!json_is_object(v))
    return tb_json_bad("pxe",
                       "an object such as {\"interface\": \"tbbr0\", \"server\": \"10.20.0.1\", "
                       "\"network\": \"10.20.0.0/24\"}",
                       v);
  if (tb_json_check_keys(v, "pxe", keys) == -1)
    return -1;
  x->enabled = true;
  static const char *const required[] = {"interface", "server", "network", NULL};
  for (const char *const *k = required; *k; k++)
    if (!json_object_get(v, *k))
      return tb_error("pxe.%s: missing (pxe needs \"interface\": the network interface the PCs "
                      "are on, \"server\": this host's IPv4 address there, \"network\": their "
                      "network such as \"10.20.0.0/24\")",
                      *k);
  long long port = 0;
  if (get_string(v, "pxe", "interface", &x->interface) == -1 ||
      get_string(v, "pxe", "server", &x->server) == -1 ||
      get_string(v, "pxe", "network", &x->network_text) == -1 ||
      get_abs_path(v, "pxe", "kernel", &x->kernel) == -1 ||
      get_abs_path(v, "pxe", "initrd", &x->initrd) == -1 ||
      get_cmdline(v, "pxe", "cmdline", &x->cmdline) == -1 ||
      tb_json_get_int(v, "pxe", "nbd_port", 1, 65535, &port) == -1 ||
      get_string(v, "pxe", "dnsmasq", &x->dnsmasq) == -1 ||
      get_abs_path(v, "pxe", "tftp_dir", &x->tftp_dir) == -1)
    return -1;
  x->nbd_port = (int)port;
  if (strlen(x->interface) > 15 || strpbrk(x->interface, "/ ,\t\n:"))
    return tb_json_bad("pxe.interface",
                       "a network interface name such as \"tbbr0\" (1-15 characters)",
                       json_object_get(v, "interface"));
  if (tb_cidr_parse(x->network_text, &x->network) == -1)
    return tb_error_prefix("pxe.network");
  if (x->network.family != AF_INET || !strchr(x->network_text, '/'))
    return tb_json_bad("pxe.network", "an IPv4 network such as \"10.20.0.0/24\"",
                       json_object_get(v, "network"));
  if (pxe_address_in(cfg, "pxe.server", x->server) == -1)
    return -1;
  json_t *r = json_object_get(v, "unknown_range");
  if (r) {
    const char *want = "\"FIRST,LAST\" such as \"10.20.0.200,10.20.0.250\"";
    const char *s = json_is_string(r) ? json_string_value(r) : NULL;
    const char *comma = s ? strchr(s, ',') : NULL;
    if (!comma || comma == s || !comma[1] || strchr(comma + 1, ','))
      return tb_json_bad("pxe.unknown_range", want, r);
    x->unknown_first = strndup(s, (size_t)(comma - s));
    x->unknown_last = strdup(comma + 1);
    if (!x->unknown_first || !x->unknown_last)
      return tb_error_errno("pxe.unknown_range");
    if (pxe_address_in(cfg, "pxe.unknown_range", x->unknown_first) == -1 ||
        pxe_address_in(cfg, "pxe.unknown_range", x->unknown_last) == -1)
      return -1;
    struct in_addr a, b;
    inet_pton(AF_INET, x->unknown_first, &a);
    inet_pton(AF_INET, x->unknown_last, &b);
    if (ntohl(a.s_addr) > ntohl(b.s_addr))
      return tb_error("pxe.unknown_range: %s comes after %s (write the lower address first)",
                      x->unknown_first, x->unknown_last);
  }
  return 0;
}

static int parse_listen(struct tb_config *cfg, const json_t *v)
{
  if (!json_is_object(v))
    return tb_json_bad("listen", "an object such as {\"unix\": PATH, \"tcp\": \"ADDR:PORT\"}", v);
  static const char *const keys[] = {"unix",  "unix_mode",       "unix_group",        "tcp",
                                     "iscsi", "max_connections", "handshake_timeout", NULL};
  if (tb_json_check_keys(v, "listen", keys) == -1 ||
      get_string(v, "listen", "unix", &cfg->listen_unix) ||
      get_mode(v, "listen", "unix_mode", &cfg->listen_unix_mode) == -1 ||
      get_string(v, "listen", "unix_group", &cfg->listen_unix_group) == -1 ||
      get_string(v, "listen", "tcp", &cfg->listen_tcp) ||
      get_string(v, "listen", "iscsi", &cfg->listen_iscsi) ||
      tb_json_get_int(v, "listen", "max_connections", 0, 1000000, &cfg->listen_max_connections) ==
          -1 ||
      tb_json_get_duration(v, "listen", "handshake_timeout", &cfg->listen_handshake_timeout_ms) ==
          -1)
    return -1;
  const char *icolon = cfg->listen_iscsi ? strrchr(cfg->listen_iscsi, ':') : NULL;
  char *iend = NULL;
  long iport = icolon ? strtol(icolon + 1, &iend, 10) : -1;
  if (cfg->listen_iscsi &&
      (!icolon || icolon == cfg->listen_iscsi || !icolon[1] || *iend || iport < 1 || iport > 65535))
    return tb_error("listen.iscsi: expected \"ADDR:PORT\" such as \"0.0.0.0:3260\", got \"%s\"",
                    cfg->listen_iscsi);
  if (cfg->listen_unix && strlen(cfg->listen_unix) >= sizeof(((struct sockaddr_un *)0)->sun_path))
    return tb_error("listen.unix: path is too long for a unix socket (limit 107 bytes)");
  if (cfg->listen_tcp) {
    const char *colon = strrchr(cfg->listen_tcp, ':');
    char *end;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || colon == cfg->listen_tcp || !colon[1] || *end || port < 1 || port > 65535)
      return tb_error("listen.tcp: expected \"ADDR:PORT\" such as \"0.0.0.0:10809\", got \"%s\"",
                      cfg->listen_tcp);
  }
  return 0;
}

static int parse_admin(struct tb_config *cfg, const json_t *v)
{
  if (!json_is_object(v))
    return tb_json_bad("admin",
                       "an object such as {\"uids\": [0], \"networks\": [\"10.0.0.0/24\"]}", v);
  static const char *const keys[] = {"uids", "networks", NULL};
  if (tb_json_check_keys(v, "admin", keys) == -1)
    return -1;
  json_t *uids = json_object_get(v, "uids");
  if (uids) {
    if (!json_is_array(uids))
      return tb_json_bad("admin.uids", "an array of user ids", uids);
    free(cfg->admin_uids);
    cfg->admin_uids = calloc(json_array_size(uids) + 1, sizeof *cfg->admin_uids);
    cfg->n_admin_uids = 0;
    size_t i;
    json_t *e;
    json_array_foreach(uids, i, e)
    {
      if (!json_is_integer(e) || json_integer_value(e) < 0) {
        char p[64];
        snprintf(p, sizeof p, "admin.uids[%zu]", i);
        return tb_json_bad(p, "a user id (integer >= 0)", e);
      }
      cfg->admin_uids[cfg->n_admin_uids++] = json_integer_value(e);
    }
  }
  json_t *nets = json_object_get(v, "networks");
  if (nets && parse_acl(nets, "admin.networks", &cfg->admin_nets) == -1)
    return -1;
  return 0;
}

static int parse_tls(struct tb_config *cfg, const json_t *v)
{
  if (!json_is_object(v))
    return tb_json_bad("tls", "an object such as {\"certificates\": DIR, \"require\": true}", v);
  static const char *const keys[] = {"certificates", "require", NULL};
  return tb_json_check_keys(v, "tls", keys) == -1 ||
                 get_string(v, "tls", "certificates", &cfg->tls_certificates) == -1 ||
                 get_bool(v, "tls", "require", &cfg->tls_require) == -1
             ? -1
             : 0;
}

static int parse_webhooks(struct tb_config *cfg, const json_t *v)
{
  if (!json_is_array(v))
    return tb_json_bad("webhooks", "an array of {\"url\": ..., \"secret\": ...}", v);
  cfg->webhooks = calloc(json_array_size(v) + 1, sizeof *cfg->webhooks);
  if (!cfg->webhooks)
    return tb_error_errno("webhooks");
  size_t i;
  json_t *e;
  json_array_foreach(v, i, e)
  {
    char p[64];
    snprintf(p, sizeof p, "webhooks[%zu]", i);
    if (!json_is_object(e))
      return tb_json_bad(p, "an object {\"url\": ..., \"secret\": ...}", e);
    static const char *const keys[] = {"url", "secret", "timeout", "retries", NULL};
    struct tb_webhook_conf *w = &cfg->webhooks[cfg->n_webhooks++];
    w->timeout_ms = 5000;
    w->retries = 5;
    long long retries = w->retries;
    if (tb_json_check_keys(e, p, keys) == -1 || get_string(e, p, "url", &w->url) == -1 ||
        get_string(e, p, "secret", &w->secret) == -1 ||
        tb_json_get_duration(e, p, "timeout", &w->timeout_ms) == -1 ||
        tb_json_get_int(e, p, "retries", 0, 100, &retries) == -1)
      return -1;
    w->retries = (int)retries;
    if (!w->url || (strncmp(w->url, "http://", 7) != 0 && strncmp(w->url, "https://", 8) != 0))
      return tb_error("%s.url: expected an http:// or https:// URL", p);
  }
  return 0;
}

static int parse_top(struct tb_config *cfg, json_t *root)
{
  if (!json_is_object(root))
    return tb_json_bad("(top level)", "an object", root);
  if (tb_json_check_keys(root, "", top_keys) == -1)
    return -1;
  if (!json_object_get(root, "state_dir"))
    return tb_error("state_dir: missing (the directory that holds images and clients, such "
                    "as \"/var/lib/tabula\")");
  if (get_string(root, "", "state_dir", &cfg->state_dir) == -1)
    return -1;
  if (cfg->state_dir[0] != '/')
    return tb_error("state_dir: expected an absolute path, got \"%s\"", cfg->state_dir);
  long long bs = TB_DEFAULT_BLOCK_SIZE;
  json_t *bsv = json_object_get(root, "block_size");
  if (bsv && (!json_is_integer(bsv) || !tb_is_pow2((uint64_t)json_integer_value(bsv)) ||
              json_integer_value(bsv) < TB_MIN_BLOCK_SIZE ||
              json_integer_value(bsv) > TB_MAX_BLOCK_SIZE)) {
    char what[64];
    snprintf(what, sizeof what, "a power of two from %d to %d", TB_MIN_BLOCK_SIZE,
             TB_MAX_BLOCK_SIZE);
    return tb_json_bad("block_size", what, bsv);
  }
  if (bsv)
    bs = json_integer_value(bsv);
  cfg->block_size = (uint32_t)bs;
  cfg->reconnect_grace_ms = TB_DEFAULT_RECONNECT_GRACE_MS;
  if (tb_json_get_duration(root, "", "reconnect_grace", &cfg->reconnect_grace_ms) == -1)
    return -1;

  json_t *v;
  if (!(v = json_object_get(root, "images")))
    return tb_error("images: missing (an object of image names, such as {\"demo\": {}})");
  if (parse_images(cfg, v) == -1)
    return -1;
  if ((v = json_object_get(root, "pxe")) && parse_pxe(cfg, v) == -1)
    return -1;
  if (tb_iscsi_conf_parse(json_object_get(root, "iscsi"), &cfg->iscsi) == -1)
    return -1;
  if ((v = json_object_get(root, "groups")) && parse_groups(v) == -1)
    return -1;
  if ((v = json_object_get(root, "clients")) && parse_clients(cfg, root, v) == -1)
    return -1;
  if ((v = json_object_get(root, "listen")) && parse_listen(cfg, v) == -1)
    return -1;
  for (size_t i = 0; i < cfg->n_clients && !cfg->listen_iscsi; i++)
    if (cfg->clients[i].has_mac && cfg->clients[i].boot_iscsi)
      return tb_error("clients.%s.boot.mode: \"iscsi\" boots the client from tabula-iscsid, "
                      "which needs listen.iscsi (e.g. \"0.0.0.0:3260\")",
                      cfg->clients[i].id);
  if (get_string(root, "", "control", &cfg->control) == -1 ||
      get_string(root, "", "control_group", &cfg->control_group) == -1 ||
      get_string(root, "", "nbdkit", &cfg->nbdkit) == -1 ||
      get_string(root, "", "plugin", &cfg->plugin) == -1)
    return -1;
  if ((v = json_object_get(root, "tls")) && parse_tls(cfg, v) == -1)
    return -1;
  if ((v = json_object_get(root, "admin")) && parse_admin(cfg, v) == -1)
    return -1;
  if ((v = json_object_get(root, "events"))) {
    static const char *const keys[] = {"max_bytes", "keep", NULL};
    if (!json_is_object(v))
      return tb_json_bad("events", "an object such as {\"max_bytes\": \"16M\", \"keep\": 5}", v);
    long long keep = TB_EVENTS_DEFAULT_KEEP;
    if (tb_json_check_keys(v, "events", keys) == -1 ||
        tb_json_get_size(v, "events", "max_bytes", &cfg->events_max_bytes) == -1 ||
        tb_json_get_int(v, "events", "keep", 1, TB_EVENTS_MAX_KEEP, &keep) == -1)
      return -1;
    cfg->events_keep = (unsigned)keep;
  }
  if ((v = json_object_get(root, "webhooks")) && parse_webhooks(cfg, v) == -1)
    return -1;
  if ((v = json_object_get(root, "metrics"))) {
    static const char *const keys[] = {"file", "interval", "mode", NULL};
    if (!json_is_object(v))
      return tb_json_bad("metrics", "an object such as {\"file\": PATH, \"interval\": \"15s\"}", v);
    if (tb_json_check_keys(v, "metrics", keys) == -1 ||
        get_string(v, "metrics", "file", &cfg->metrics_file) == -1 ||
        get_mode(v, "metrics", "mode", &cfg->metrics_mode) == -1 ||
        tb_json_get_duration(v, "metrics", "interval", &cfg->metrics_interval_ms) == -1)
      return -1;
  }
  if ((v = json_object_get(root, "pull"))) {
    if (!json_is_object(v) && !json_is_array(v))
      return tb_json_bad("pull", "an object or an array of objects", v);
    /* Its contents are the repository layer's (tb_repo_pull_config_validate,
     * called by the daemon at load): the core does not link libcurl. */
    cfg->pull = json_incref(v);
  }
  if ((v = json_object_get(root, "watchdog"))) {
    struct tb_watchdog_conf w = {0};
    int r = tb_watchdog_parse(v, "watchdog", &w);
    tb_watchdog_free(&w);
    if (r == -1)
      return -1;
    cfg->watchdog = json_incref(v);
  }
  return 0;
}

/* Fill in defaults that depend on other settings. */
static int apply_defaults(struct tb_config *cfg)
{
  char buf[TB_PATH_MAX];
  if (!cfg->listen_unix) {
    if (tb_path(buf, sizeof buf, "%s/nbd.sock", cfg->state_dir) == -1 ||
        !(cfg->listen_unix = strdup(buf)))
      return -1;
  }
  if (!cfg->control) {
    if (tb_path(buf, sizeof buf, "%s/control.sock", cfg->state_dir) == -1 ||
        !(cfg->control = strdup(buf)))
      return -1;
  }
  if (!cfg->admin_uids) {
    cfg->admin_uids = calloc(2, sizeof *cfg->admin_uids);
    if (!cfg->admin_uids)
      return tb_error_errno("config");
    cfg->admin_uids[cfg->n_admin_uids++] = 0;
    if (getuid() != 0)
      cfg->admin_uids[cfg->n_admin_uids++] = getuid();
  }
  if (cfg->pxe.enabled && !cfg->pxe.nbd_port)
    cfg->pxe.nbd_port = cfg->listen_tcp ? atoi(strrchr(cfg->listen_tcp, ':') + 1) : 10809;
  if (cfg->pxe.enabled && !cfg->pxe.dnsmasq && !(cfg->pxe.dnsmasq = strdup("dnsmasq")))
    return tb_error_errno("config");
  if (cfg->pxe.enabled && !cfg->pxe.tftp_dir) {
    if (tb_path(buf, sizeof buf, "%s/pxe/tftp", cfg->state_dir) == -1 ||
        !(cfg->pxe.tftp_dir = strdup(buf)))
      return -1;
  }
  if (!cfg->events_max_bytes)
    cfg->events_max_bytes = TB_EVENTS_DEFAULT_MAX;
  if (!cfg->events_keep)
    cfg->events_keep = TB_EVENTS_DEFAULT_KEEP;
  if (!cfg->metrics_interval_ms)
    cfg->metrics_interval_ms = 15000;
  return 0;
}

static void client_free(struct tb_client_conf *c)
{
  tb_vector_free(&c->allow.nets);
  free(c->refresh);
  free(c->merge_when);
  free(c->merge_note);
  free(c->preserve);
  json_decref(c->watchdog);
  free(c->boot_kernel);
  free(c->boot_initrd);
  free(c->boot_cmdline);
  free(c->iscsi);
}

static void config_free(struct tb_config *cfg)
{
  if (!cfg)
    return;
  free(cfg->path);
  free(cfg->state_dir);
  for (size_t i = 0; i < cfg->n_images; i++)
    free(cfg->images[i]);
  free(cfg->images);
  for (size_t i = 0; i < cfg->n_clients; i++)
    client_free(&cfg->clients[i]);
  free(cfg->clients);
  free(cfg->listen_unix);
  free(cfg->listen_tcp);
  free(cfg->listen_iscsi);
  free(cfg->iscsi.program);
  free(cfg->control);
  free(cfg->control_group);
  free(cfg->listen_unix_group);
  free(cfg->nbdkit);
  free(cfg->plugin);
  free(cfg->tls_certificates);
  tb_vector_free(&cfg->admin_nets.nets);
  free(cfg->admin_uids);
  for (size_t i = 0; i < cfg->n_webhooks; i++) {
    free(cfg->webhooks[i].url);
    free(cfg->webhooks[i].secret);
  }
  free(cfg->webhooks);
  free(cfg->metrics_file);
  json_decref(cfg->pull);
  json_decref(cfg->watchdog);
  json_decref(cfg->json);
  struct tb_pxe_conf *x = &cfg->pxe;
  free(x->interface);
  free(x->server);
  free(x->network_text);
  free(x->unknown_first);
  free(x->unknown_last);
  free(x->kernel);
  free(x->initrd);
  free(x->cmdline);
  free(x->dnsmasq);
  free(x->tftp_dir);
  free(cfg);
}

struct tb_config *tb_config_parse(const char *text, const char *name)
{
  json_error_t jerr;
  json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
  if (!root) {
    tb_error("%s: line %d, column %d: not valid JSON: %s", name, jerr.line, jerr.column, jerr.text);
    return NULL;
  }
  struct tb_config *cfg = calloc(1, sizeof *cfg);
  if (!cfg) {
    json_decref(root);
    tb_error_errno("%s", name);
    return NULL;
  }
  cfg->refcount = 1;
  cfg->listen_unix_mode = cfg->metrics_mode = -1; /* unset: the daemon's private default */
  cfg->listen_max_connections = TB_DEFAULT_MAX_CONNECTIONS;
  cfg->listen_handshake_timeout_ms = TB_HANDSHAKE_DEFAULT_TIMEOUT_MS;
  cfg->json = root;
  cfg->path = strdup(name);
  if (parse_top(cfg, root) == -1 || apply_defaults(cfg) == -1) {
    tb_error_prefix("%s", name);
    config_free(cfg);
    return NULL;
  }
  return cfg;
}

struct tb_config *tb_config_load(const char *file)
{
  char *text = tb_read_file_follow(file, 16 * 1024 * 1024, NULL);
  if (!text) {
    tb_error_prefix("cannot read the configuration");
    return NULL;
  }
  struct tb_config *cfg = tb_config_parse(text, file);
  free(text);
  return cfg;
}

struct tb_config *tb_config_ref(struct tb_config *cfg)
{
  __atomic_fetch_add(&cfg->refcount, 1, __ATOMIC_RELAXED);
  return cfg;
}

void tb_config_unref(struct tb_config *cfg)
{
  if (cfg && __atomic_sub_fetch(&cfg->refcount, 1, __ATOMIC_ACQ_REL) == 0)
    config_free(cfg);
}

const struct tb_client_conf *tb_config_client(const struct tb_config *cfg, const char *id)
{
  for (size_t i = 0; i < cfg->n_clients; i++)
    if (strcmp(cfg->clients[i].id, id) == 0)
      return &cfg->clients[i];
  return NULL;
}

const char *tb_client_conf_path(const struct tb_client_conf *c, char *buf, size_t len)
{
  if (c->disk[0])
    snprintf(buf, len, "clients.%s.disks.%s", c->client, c->disk);
  else
    snprintf(buf, len, "clients.%s", c->id);
  return buf;
}

bool tb_config_has_image(const struct tb_config *cfg, const char *name)
{
  for (size_t i = 0; i < cfg->n_images; i++)
    if (strcmp(cfg->images[i], name) == 0)
      return true;
  return false;
}

const struct tb_client_conf *tb_config_client_by_mac(const struct tb_config *cfg, const char *mac)
{
  char m[18];
  if (tb_mac_parse(mac, m) == -1)
    return NULL;
  for (size_t i = 0; i < cfg->n_clients; i++)
    if (cfg->clients[i].has_mac && strcmp(cfg->clients[i].mac, m) == 0)
      return &cfg->clients[i];
  return NULL;
}
