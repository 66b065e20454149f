/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-restored: PXE boot through dnsmasq and iPXE (the "pxe" section).
 *
 * No home-made DHCP or TFTP: the daemon writes a dnsmasq configuration and
 * runs dnsmasq as a supervised child, like nbdkit (supervise.c's engine:
 * restart with a doubling backoff; dnsmasq-exit / dnsmasq-restart events).
 * Everything lives in STATE/pxe (the TFTP root in pxe.tftp_dir):
 *
 *   dnsmasq.conf   DHCP only (port=0: no DNS) on pxe.interface, a static
 *                  range for pxe.network (+ pxe.unknown_range for PCs that are
 *                  not registered, so they can be recorded), TFTP, and the
 *                  iPXE chain: a plain PXE ROM gets Debian's undionly.kpxe
 *                  (BIOS) or ipxe.efi (UEFI, by client-arch), iPXE (user
 *                  class "iPXE") gets the client's script ID.ipxe, an unknown
 *                  MAC unknown.ipxe (which says how to register the PC);
 *   hosts          dhcp-hostsfile: "MAC,ADDRESS,ID" per client with a "mac";
 *   event.sh       dhcp-script: runs `tabulactl --socket CONTROL pxe-event`,
 *                  which sends dnsmasq's lease and TFTP events here;
 *   unknown.json   MACs that asked for a lease and are not configured;
 *   dnsmasq.log    dnsmasq's stderr (its log), truncated at each start.
 *   tftp/ID.ipxe, tftp/boot/ID/{linux,initrd} (symlinks to the configured
 *                  kernel and initrd), tftp/unknown.ipxe, tftp/undionly.kpxe,
 *                  tftp/ipxe.efi (symlinks into /usr/lib/ipxe).  A client
 *                  with boot.mode "iscsi" (Windows) has no kernel: its script
 *                  sets its initiator name and CHAP and sanboots its target
 *                  on tabula-iscsid (listen.iscsi), and iPXE hands the iBFT
 *                  to the operating system it boots.
 *
 * Files are rewritten atomically (the symlinks too: a new link renamed over
 * the old one, its directory fsynced), and only when their content changes;
 * what a power cut leaves of a rewrite (NAME.tmp.XXXXXX) is removed when the
 * files are written, at the daemon's start and at each reload; a
 * changed dnsmasq.conf restarts dnsmasq, a changed hosts file alone is a
 * SIGHUP (dnsmasq re-reads it).  dnsmasq runs with the daemon's user (it
 * reads the TFTP tree inside the private state directory) and dies with the
 * daemon (PR_SET_PDEATHSIG), so a daemon killed with -9 leaves no DHCP server
 * holding port 67 behind.  pxe.dnsmasq "none" writes the files and runs
 * nothing (an administrator who runs dnsmasq himself uses `tabulactl pxe`).
 *
 * What is a boot (lib/boot.h): a DHCP request of a configured MAC whose
 * vendor class starts with "PXEClient" or whose user class is "iPXE", or the
 * TFTP fetch of the client's ID.ipxe by its address; each one is a boot
 * marker (tb_boot_mark) and a boot-seen event.  A renewal by the running OS
 * carries neither class and is not a boot.  dnsmasq or its files failing
 * never touches the NBD side: every client keeps being served.
 */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>

#include "boot.h"
#include "daemon.h"
#include "events.h"

#define IPXE_DIR "/usr/lib/ipxe"
#define STOP_WAIT_MS 5000
#define LOG_CHECK_MS 60000
#define UNKNOWN_EVENT_INTERVAL_MS (10 * 60 * 1000)
#define UNKNOWN_MAX 1000

static struct {
  bool enabled; /* a "pxe" section and a dnsmasq to run */
  struct child child;
  char error[1024];    /* why dnsmasq is not running, or "" */
  char reported[1024]; /* the last error sent as an event (each once) */
  int64_t next_log_check_ms;
  char renewal_bin[TB_PATH_MAX]; /* the binary script_on_renewal was probed on */
  bool renewal;
} P = {.child.name = "dnsmasq"};

/* ---- paths and small helpers ------------------------------------------------------------ */

static int pxe_path(const struct tb_config *cfg, const char *name, char *buf, size_t len)
{
  return tb_path(buf, len, "%s/pxe/%s", cfg->state_dir, name);
}

static bool runs_dnsmasq(const struct tb_config *cfg)
{
  return cfg->pxe.enabled && strcmp(cfg->pxe.dnsmasq, "none") != 0;
}

/* An error the administrator must see: logged, and an "error" event once
 * per distinct message (a retry loop does not flood the journal). */
static void pxe_problem(struct daemon *d, const char *client, const char *msg)
{
  if (strcmp(P.reported, msg) == 0)
    return;
  log_msg("pxe: %s", msg);
  snprintf(P.reported, sizeof P.reported, "%s", msg);
  tb_eventf(d->cfg->state_dir, "pxe-error", client, "{s:s}", "message", msg);
}

/* Write TEXT to PATH if it differs: 1 written, 0 unchanged, -1 error. */
static int write_if_changed(const char *path, const char *text, int mode)
{
  size_t len;
  char *old = tb_read_file(path, 16 * 1024 * 1024, &len);
  bool same = old && len == strlen(text) && memcmp(old, text, len) == 0;
  free(old);
  if (same)
    return 0;
  if (tb_write_file_atomic(path, text, strlen(text), mode) == -1)
    return -1;
  return 1;
}

/* LINK -> TARGET, replaced atomically when it points elsewhere. */
static int ensure_symlink(const char *target, const char *link)
{
  char cur[TB_PATH_MAX];
  ssize_t n = readlink(link, cur, sizeof cur - 1);
  if (n >= 0) {
    cur[n] = '\0';
    if (strcmp(cur, target) == 0)
      return 0;
  }
  /* Named as tb_write_file_atomic's temporaries, so pxe_apply's sweep
   * removes what a cut leaves of it. */
  char tmp[TB_PATH_MAX];
  if (tb_path(tmp, sizeof tmp, "%s.tmp.%06d", link, (int)(getpid() % 1000000)) == -1)
    return -1;
  unlink(tmp);
  if (symlink(target, tmp) == -1 || rename(tmp, link) == -1) {
    int saved = errno;
    unlink(tmp);
    errno = saved;
    return tb_error_errno("cannot link %s to %s", link, target);
  }
  return tb_fsync_dir(link);
}

/* Is PROG runnable (a path, or a name found in $PATH)? */
static bool find_program(const char *prog, char *out, size_t len)
{
  if (strchr(prog, '/')) {
    snprintf(out, len, "%s", prog);
    return access(prog, X_OK) == 0;
  }
  const char *path = getenv("PATH");
  char *copy = strdup(path ? path : "/usr/sbin:/usr/bin:/sbin:/bin");
  bool found = false;
  for (char *save, *dir = copy ? strtok_r(copy, ":", &save) : NULL; dir && !found;
       dir = strtok_r(NULL, ":", &save)) {
    snprintf(out, len, "%s/%s", dir, prog);
    found = access(out, X_OK) == 0;
  }
  free(copy);
  return found;
}

/* Does BIN know --script-on-renewal (dnsmasq 2.86 and later)?  Asked once
 * per binary: `BIN --help` lists it. */
static bool has_script_on_renewal(const char *bin)
{
  if (strcmp(P.renewal_bin, bin) == 0)
    return P.renewal;
  snprintf(P.renewal_bin, sizeof P.renewal_bin, "%s", bin);
  P.renewal = false;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) == -1)
    return false;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 1);
    int null = open("/dev/null", O_WRONLY);
    if (null >= 0)
      dup2(null, 2);
    execl(bin, bin, "--help", (char *)NULL);
    _exit(127);
  }
  close(fds[1]);
  if (pid > 0) {
    char buf[65536];
    size_t got = 0;
    ssize_t r;
    while (got < sizeof buf - 1 && (r = read(fds[0], buf + got, sizeof buf - 1 - got)) > 0)
      got += (size_t)r;
    buf[got] = '\0';
    P.renewal = strstr(buf, "--script-on-renewal") != NULL;
    waitpid(pid, NULL, 0);
  }
  close(fds[0]);
  return P.renewal;
}

/* A client id usable as a DHCP host name (a DNS label). */
static bool dns_label(const char *id)
{
  for (const char *c = id; *c; c++)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
          (*c == '-' && c != id)))
      return false;
  return strlen(id) <= 63;
}

static void address_text(const struct tb_cidr *a, char *out, size_t len)
{
  if (!inet_ntop(a->family, a->addr, out, (socklen_t)len))
    snprintf(out, len, "?");
}

/* ---- the generated files ------------------------------------------------------------------- */

/* The kernel command line a client boots with (see README "PXE boot"). */
static void kernel_cmdline(const struct tb_config *cfg, const struct tb_client_conf *c, char *out,
                           size_t len)
{
  /* The client's further disks, in configuration order: /dev/nbd1, 2... */
  char disks[2048] = "";
  for (size_t k = 1; k <= c->n_disks; k++) {
    size_t n = strlen(disks);
    snprintf(disks + n, sizeof disks - n, "%s%s", k == 1 ? " tabula.disks=" : ",", c[k].disk);
  }
  snprintf(out, len, "initrd=initrd ip=dhcp root=/dev/nbd0 tabula.nbd=%s:%d:%s%s%s%s",
           cfg->pxe.server, cfg->pxe.nbd_port, c->id, disks, c->boot_cmdline ? " " : "",
           c->boot_cmdline ? c->boot_cmdline : "");
}

/* Where a PC reaches tabula-iscsid: listen.iscsi's address, or pxe.server
 * when it listens on every address; listen.iscsi's port. */
static void iscsi_portal(const struct tb_config *cfg, char *host, size_t hlen, char *port,
                         size_t plen)
{
  const char *where = cfg->listen_iscsi ? cfg->listen_iscsi : "";
  const char *colon = strrchr(where, ':');
  size_t n = colon ? (size_t)(colon - where) : 0;
  if (n >= 2 && where[0] == '[')
    snprintf(host, hlen, "%.*s", (int)(n - 2), where + 1);
  else
    snprintf(host, hlen, "%.*s", (int)n, where);
  /* iPXE's iscsi: URI has no room for an IPv6 literal; PXE is IPv4 anyway. */
  if (!host[0] || strcmp(host, "*") == 0 || strcmp(host, "0.0.0.0") == 0 || strchr(host, ':'))
    snprintf(host, hlen, "%s", cfg->pxe.server);
  snprintf(port, plen, "%s", colon ? colon + 1 : "3260");
}

/* "set NAME:hex 70:63:..." : any byte of a CHAP name or secret reaches iPXE
 * as it is (its script parser would expand "${", split at spaces...). */
static void ipxe_set_hex(FILE *f, const char *name, const char *value, size_t len)
{
  fprintf(f, "set %s:hex ", name);
  for (size_t i = 0; i < len; i++)
    fprintf(f, "%s%02x", i ? ":" : "", (unsigned char)value[i]);
  fputc('\n', f);
}

/* The script of a client with boot.mode "iscsi": iPXE logs into the
 * client's target with its initiator name and CHAP, publishes them in the
 * iBFT and boots the disk (README "Windows PCs over iSCSI"). */
static void sanboot_script(FILE *f, const struct tb_config *cfg, const struct tb_client_conf *c)
{
  char host[256], port[16], target[TB_ISCSI_NAME_MAX + TB_NAME_MAX + 2];
  char initiator[TB_ISCSI_NAME_MAX + 1];
  iscsi_portal(cfg, host, sizeof host, port, sizeof port);
  tb_iscsi_target_name(cfg->iscsi.iqn_prefix, c->id, target, sizeof target);
  if (c->iscsi && c->iscsi->initiator[0])
    snprintf(initiator, sizeof initiator, "%s", c->iscsi->initiator);
  else /* iPXE's own form, with the client's id */
    tb_iscsi_target_name("iqn.2010-04.org.ipxe", c->id, initiator, sizeof initiator);
  fprintf(f, "echo tabula: booting %s (%s) over iSCSI from %s\nset initiator-iqn %s\n", c->id,
          c->image, host, initiator);
  if (c->iscsi && c->iscsi->chap.set) {
    ipxe_set_hex(f, "username", c->iscsi->chap.user, strlen(c->iscsi->chap.user));
    ipxe_set_hex(f, "password", c->iscsi->chap.secret, c->iscsi->chap.secret_len);
  }
  if (c->iscsi && c->iscsi->mutual_chap.set) {
    ipxe_set_hex(f, "reverse-username", c->iscsi->mutual_chap.user,
                 strlen(c->iscsi->mutual_chap.user));
    ipxe_set_hex(f, "reverse-password", c->iscsi->mutual_chap.secret,
                 c->iscsi->mutual_chap.secret_len);
  }
  fprintf(f, "sanboot iscsi:%s::%s::%s\n", host, port, target);
}

static char *client_script(const struct tb_config *cfg, const struct tb_client_conf *c,
                           const char *problem)
{
  char *text = NULL, cmdline[4096];
  size_t len;
  FILE *f = open_memstream(&text, &len);
  if (!f)
    return NULL;
  fprintf(f, "#!ipxe\n# tabula: client %s (mac %s), written by tabula-restored\n", c->id, c->mac);
  if (problem) {
    fprintf(f,
            "echo tabula: client %s cannot boot: %s\necho Fix it on the appliance, then this PC "
            "retries in 5 minutes.\nsleep 300\nreboot\n",
            c->id, problem);
  } else if (c->boot_iscsi) {
    sanboot_script(f, cfg, c);
  } else {
    kernel_cmdline(cfg, c, cmdline, sizeof cmdline);
    fprintf(f,
            "echo tabula: booting %s (%s) from %s\n"
            "kernel boot/%s/linux %s\n"
            "initrd --name initrd boot/%s/initrd\n"
            "boot\n",
            c->id, c->image, cfg->pxe.server, c->id, cmdline, c->id);
  }
  return fclose(f) == 0 ? text : (free(text), NULL);
}

static const char unknown_script[] =
    "#!ipxe\n"
    "# tabula: the script of PCs whose MAC is not configured, written by tabula-restored\n"
    "echo\n"
    "echo tabula: this PC (${net0/mac}) is not registered.\n"
    "echo On the appliance: tabulactl register ${net0/mac} ID  (tabulactl clients --unknown\n"
    "echo lists such PCs).  This PC retries in 5 minutes.\n"
    "sleep 300\n"
    "reboot\n";

static char *hosts_text(const struct tb_config *cfg)
{
  char *text = NULL;
  size_t len;
  FILE *f = open_memstream(&text, &len);
  if (!f)
    return NULL;
  fprintf(f, "# tabula: static leases (MAC,ADDRESS,ID), written by tabula-restored\n");
  for (size_t i = 0; i < cfg->n_clients; i++) {
    const struct tb_client_conf *c = &cfg->clients[i];
    if (!c->has_mac)
      continue;
    char addr[64];
    address_text(&c->address, addr, sizeof addr);
    if (dns_label(c->id))
      fprintf(f, "%s,%s,%s\n", c->mac, addr, c->id);
    else
      fprintf(f, "%s,%s\n", c->mac, addr);
  }
  return fclose(f) == 0 ? text : (free(text), NULL);
}

static char *dnsmasq_conf(const struct tb_config *cfg, bool renewal)
{
  const struct tb_pxe_conf *x = &cfg->pxe;
  char hosts[TB_PATH_MAX], leases[TB_PATH_MAX], script[TB_PATH_MAX];
  if (pxe_path(cfg, "hosts", hosts, sizeof hosts) == -1 ||
      pxe_path(cfg, "dnsmasq.leases", leases, sizeof leases) == -1 ||
      pxe_path(cfg, "event.sh", script, sizeof script) == -1)
    return NULL;
  char net[64], mask[64];
  struct in_addr m = {.s_addr = x->network.prefix ? htonl(~0u << (32 - x->network.prefix)) : 0};
  inet_ntop(AF_INET, x->network.addr, net, sizeof net);
  inet_ntop(AF_INET, &m, mask, sizeof mask);
  struct passwd *pw = getpwuid(geteuid());
  char *text = NULL;
  size_t len;
  FILE *f = open_memstream(&text, &len);
  if (!f)
    return NULL;
  fprintf(f,
          "# tabula: dnsmasq for PXE boots, written by tabula-restored from %s\n"
          "# (the \"pxe\" section); it is rewritten at every reload: do not edit.\n"
          "port=0\n"
          "no-resolv\n"
          "no-hosts\n"
          "interface=%s\n"
          "bind-interfaces\n"
          "%s%s%s"
          "log-facility=-\n"
          "pid-file=\n"
          "dhcp-leasefile=%s\n"
          "dhcp-hostsfile=%s\n"
          "dhcp-range=set:tabula,%s,static,%s,12h\n",
          cfg->path, x->interface, pw ? "user=" : "", pw ? pw->pw_name : "", pw ? "\n" : "", leases,
          hosts, net, mask);
  if (x->unknown_first)
    fprintf(f,
            "# PCs that are not registered get a short lease, so they are recorded\n"
            "dhcp-range=set:unknown,%s,%s,%s,10m\n",
            x->unknown_first, x->unknown_last, mask);
  fprintf(f,
          "dhcp-authoritative\n"
          "# no router: the PCs talk to the appliance\n"
          "dhcp-option=option:router\n"
          "enable-tftp\n"
          "tftp-root=%s\n"
          "dhcp-userclass=set:ipxe,iPXE\n"
          "dhcp-match=set:efi64,option:client-arch,7\n"
          "dhcp-match=set:efi64,option:client-arch,9\n"
          "# a PXE ROM chainloads iPXE, iPXE gets the client's script\n"
          "dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe,,%s\n"
          "dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi,,%s\n"
          "dhcp-boot=tag:ipxe,tag:!known,unknown.ipxe,,%s\n",
          x->tftp_dir, x->server, x->server, x->server);
  for (size_t i = 0; i < cfg->n_clients; i++) {
    const struct tb_client_conf *c = &cfg->clients[i];
    if (c->has_mac)
      fprintf(f, "dhcp-mac=set:tb-%s,%s\ndhcp-boot=tag:ipxe,tag:tb-%s,%s.ipxe,,%s\n", c->id, c->mac,
              c->id, c->id, x->server);
  }
  fprintf(f, "# lease and TFTP events: boot markers (tabulactl pxe-event)\ndhcp-script=%s\n%s",
          script, renewal ? "script-on-renewal\n" : "");
  return fclose(f) == 0 ? text : (free(text), NULL);
}

/* tabulactl of the build tree this program is in (BUILD/tabulactl/tabulactl
 * beside BUILD/restored/), else next to it (one directory for both), else
 * $PATH's. */
static void tabulactl_path(char *out, size_t len)
{
  char self[TB_PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) {
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (slash) {
      *slash = '\0';
      snprintf(out, len, "%s/../tabulactl/tabulactl", self);
      if (access(out, X_OK) == 0)
        return;
      snprintf(out, len, "%s/tabulactl", self);
      if (access(out, X_OK) == 0)
        return;
    }
  }
  snprintf(out, len, "tabulactl");
}

/* A shell word in single quotes. */
static void sh_quote(FILE *f, const char *s)
{
  fputc('\'', f);
  for (; *s; s++)
    if (*s == '\'')
      fputs("'\\''", f);
    else
      fputc(*s, f);
  fputc('\'', f);
}

static char *event_script(const char *ctl, const char *control)
{
  char *text = NULL;
  size_t len;
  FILE *f = open_memstream(&text, &len);
  if (!f)
    return NULL;
  fprintf(f, "#!/bin/sh\n# tabula: dnsmasq's dhcp-script, written by tabula-restored.\n"
             "# DHCP: ACTION MAC ADDRESS [HOSTNAME]; TFTP: tftp SIZE ADDRESS FILE; the\n"
             "# DNSMASQ_* variables (vendor and user class, tags) pass through.\nexec ");
  sh_quote(f, ctl);
  fputs(" --socket ", f);
  sh_quote(f, control);
  fputs(" pxe-event \"$@\"\n", f);
  return fclose(f) == 0 ? text : (free(text), NULL);
}

/* ---- the TFTP tree ------------------------------------------------------------------------------
 */

static bool is_pxe_client(const struct tb_config *cfg, const char *id)
{
  const struct tb_client_conf *c = tb_config_client(cfg, id);
  return c && c->has_mac;
}

/* Does client ID boot a kernel and an initrd (TFTP boot/ID/{linux,initrd})? */
static bool boots_kernel(const struct tb_config *cfg, const char *id)
{
  const struct tb_client_conf *c = tb_config_client(cfg, id);
  return c && c->has_mac && !c->boot_iscsi;
}

/* Remove the scripts of clients that are no longer PXE clients, and the boot
 * links of those that do not boot a kernel any more. */
static void tftp_prune(const struct tb_config *cfg)
{
  const char *root = cfg->pxe.tftp_dir;
  DIR *dir = opendir(root);
  struct dirent *e;
  char path[TB_PATH_MAX], id[TB_NAME_MAX + 8];
  while (dir && (e = readdir(dir))) {
    size_t n = strlen(e->d_name);
    if (n <= 5 || n - 5 > TB_NAME_MAX || strcmp(e->d_name + n - 5, ".ipxe") != 0 ||
        strcmp(e->d_name, "unknown.ipxe") == 0)
      continue;
    memcpy(id, e->d_name, n - 5);
    id[n - 5] = '\0';
    if (!is_pxe_client(cfg, id) && tb_path(path, sizeof path, "%s/%s", root, e->d_name) == 0)
      unlink(path);
  }
  if (dir)
    closedir(dir);
  if (tb_path(path, sizeof path, "%s/boot", root) == -1 || !(dir = opendir(path)))
    return;
  while ((e = readdir(dir))) {
    if (e->d_name[0] == '.' || !tb_name_valid(e->d_name) || boots_kernel(cfg, e->d_name))
      continue;
    char f[TB_PATH_MAX];
    if (tb_path(f, sizeof f, "%s/boot/%s/linux", root, e->d_name) == 0)
      unlink(f);
    if (tb_path(f, sizeof f, "%s/boot/%s/initrd", root, e->d_name) == 0)
      unlink(f);
    if (tb_path(f, sizeof f, "%s/boot/%s", root, e->d_name) == 0)
      rmdir(f);
  }
  closedir(dir);
}

/* BOOT (the client's kernel or initrd, WHAT) is a regular file: -1 with a
 * message saying what to fix. */
static int boot_file(const char *what, const char *boot, const char *id)
{
  struct stat st;
  int e = stat(boot, &st) == -1 ? errno : 0;
  if (e || !S_ISREG(st.st_mode))
    return tb_error("its %s %s is not a file (%s): fix clients.%s.boot", what, boot,
                    e ? strerror(e) : "not a regular file", id);
  return 0;
}

/* C's kernel and initrd linked under the TFTP root ROOT (none for an iSCSI
 * boot, whose target is the disk): -1 with a message. */
static int boot_links(const char *root, const struct tb_client_conf *c)
{
  if (c->boot_iscsi)
    return 0;
  char dir[TB_PATH_MAX], link[TB_PATH_MAX];
  if (boot_file("kernel", c->boot_kernel, c->id) == -1 ||
      boot_file("initrd", c->boot_initrd, c->id) == -1 ||
      tb_path(dir, sizeof dir, "%s/boot/%s", root, c->id) == -1 || tb_mkdirs(dir, false) == -1 ||
      tb_remove_atomic_temps(dir, "") < 0 || tb_path(link, sizeof link, "%s/linux", dir) == -1 ||
      ensure_symlink(c->boot_kernel, link) == -1 ||
      tb_path(link, sizeof link, "%s/initrd", dir) == -1 ||
      ensure_symlink(c->boot_initrd, link) == -1)
    return -1;
  return 0;
}

/* One client's script and boot links; a missing kernel or initrd gives a
 * script that says so on the PC's screen (the other clients are not concerned). */
static void tftp_client(struct daemon *d, const struct tb_client_conf *c)
{
  const char *root = d->cfg->pxe.tftp_dir;
  char script[TB_PATH_MAX], problem[1024] = "";
  if (boot_links(root, c) == -1)
    snprintf(problem, sizeof problem, "%s", tb_errmsg()); /* it outlives the calls below */
  if (problem[0]) {
    char msg[1200];
    snprintf(msg, sizeof msg, "client %s cannot PXE-boot: %s", c->id, problem);
    pxe_problem(d, c->id, msg);
  }
  char *text = client_script(d->cfg, c, problem[0] ? problem : NULL);
  if (!text || tb_path(script, sizeof script, "%s/%s.ipxe", root, c->id) == -1 ||
      write_if_changed(script, text, 0644) == -1)
    pxe_problem(d, c->id, text ? tb_errmsg() : "out of memory");
  free(text);
}

static void tftp_tree(struct daemon *d)
{
  const struct tb_config *cfg = d->cfg;
  const char *root = cfg->pxe.tftp_dir;
  char path[TB_PATH_MAX];
  if (tb_mkdirs(root, false) == -1) {
    pxe_problem(d, NULL, tb_errmsg());
    return;
  }
  static const char *const roms[] = {"undionly.kpxe", "ipxe.efi"};
  for (size_t i = 0; i < 2; i++) {
    char target[TB_PATH_MAX];
    snprintf(target, sizeof target, "%s/%s", IPXE_DIR, roms[i]);
    if (access(target, R_OK) == -1) {
      snprintf(path, sizeof path,
               "%s is missing: PCs whose network card is not iPXE cannot chainload iPXE "
               "(install Debian's ipxe package)",
               target);
      pxe_problem(d, NULL, path);
      continue;
    }
    if (tb_path(path, sizeof path, "%s/%s", root, roms[i]) == -1 ||
        ensure_symlink(target, path) == -1)
      pxe_problem(d, NULL, tb_errmsg());
  }
  if (tb_path(path, sizeof path, "%s/unknown.ipxe", root) == -1 ||
      write_if_changed(path, unknown_script, 0644) == -1)
    pxe_problem(d, NULL, tb_errmsg());
  for (size_t i = 0; i < cfg->n_clients; i++)
    if (cfg->clients[i].has_mac)
      tftp_client(d, &cfg->clients[i]);
  tftp_prune(cfg);
}

/* ---- dnsmasq ------------------------------------------------------------------------------- */

/* The last line dnsmasq wrote to its log (its reason for exiting). */
static void log_tail(const struct tb_config *cfg, char *out, size_t len)
{
  char path[TB_PATH_MAX];
  out[0] = '\0';
  if (pxe_path(cfg, "dnsmasq.log", path, sizeof path) == -1)
    return;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd == -1)
    return;
  char buf[2048];
  off_t end = lseek(fd, 0, SEEK_END);
  off_t from = end > (off_t)sizeof buf - 1 ? end - (off_t)sizeof buf + 1 : 0;
  ssize_t n = pread(fd, buf, sizeof buf - 1, from);
  close(fd);
  if (n <= 0)
    return;
  buf[n] = '\0';
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
    buf[--n] = '\0';
  char *line = strrchr(buf, '\n');
  snprintf(out, len, "%s", line ? line + 1 : buf);
}

/* What to do about dnsmasq's last words. */
static const char *exit_hint(const char *msg)
{
  if (strstr(msg, "Address already in use"))
    return "another DHCP or TFTP server runs on this machine (ports 67/69): stop it, or set "
           "pxe.dnsmasq to \"none\" and give your dnsmasq the output of tabulactl pxe";
  if (strstr(msg, "unknown interface") || strstr(msg, "No such device"))
    return "pxe.interface does not exist on this machine: create it or change pxe.interface";
  if (strstr(msg, "Permission denied") || strstr(msg, "Operation not permitted"))
    return "DHCP needs root (or CAP_NET_ADMIN and CAP_NET_BIND_SERVICE)";
  if (strstr(msg, "Cannot assign requested address"))
    return "pxe.server is not an address of pxe.interface";
  return "see STATE/pxe/dnsmasq.log";
}

static int start_dnsmasq(struct daemon *d)
{
  const struct tb_config *cfg = d->cfg;
  char bin[TB_PATH_MAX], conf[TB_PATH_MAX], logfile[TB_PATH_MAX], confarg[TB_PATH_MAX + 16];
  if (!find_program(cfg->pxe.dnsmasq, bin, sizeof bin))
    return tb_error("pxe.dnsmasq \"%s\": no such program (install Debian's dnsmasq-base package, "
                    "or set pxe.dnsmasq to dnsmasq's path); PCs cannot PXE-boot, NBD clients are "
                    "served as before",
                    cfg->pxe.dnsmasq);
  if (pxe_path(cfg, "dnsmasq.conf", conf, sizeof conf) == -1 ||
      pxe_path(cfg, "dnsmasq.log", logfile, sizeof logfile) == -1)
    return -1;
  snprintf(confarg, sizeof confarg, "--conf-file=%s", conf);
  int logfd = open(logfile, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
  if (logfd == -1)
    return tb_error_errno("cannot open %s", logfile);
  const char *argv[] = {bin, "--keep-in-foreground", confarg, NULL};
  struct child_spawn how = {.argv = argv,
                            .output_fd = logfd,
                            .die_with_parent = true,
                            .exec_error = "tabula-restored: cannot run dnsmasq\n"};
  int r = child_start(&P.child, &how);
  close(logfd);
  if (r == -1)
    return -1;
  P.error[0] = '\0';
  log_msg("started dnsmasq (pid %d) for PXE on %s (%s)", (int)P.child.pid, cfg->pxe.interface,
          conf);
  return 0;
}

static void try_start(struct daemon *d)
{
  if (start_dnsmasq(d) == -1) {
    snprintf(P.error, sizeof P.error, "%s", tb_errmsg());
    pxe_problem(d, NULL, P.error);
    child_backoff(&P.child, 0);
  }
}

static void stop_dnsmasq(void)
{
  child_stop(&P.child, STOP_WAIT_MS);
}

bool pxe_reaped(struct daemon *d, pid_t pid, int status)
{
  int64_t ran;
  if (!child_reaped(&P.child, pid, status, &ran))
    return false;
  if (P.child.stopping)
    return true;
  char tail[512] = "";
  if (WIFEXITED(status)) /* its last words say why; a signal is the reason itself */
    log_tail(d->cfg, tail, sizeof tail);
  int64_t backoff = child_backoff(&P.child, ran);
  snprintf(P.error, sizeof P.error,
           "dnsmasq %s after %.1f s%s%s (%s); PCs cannot PXE-boot, NBD clients are served as "
           "before",
           P.child.last_exit, (double)ran / 1000, tail[0] ? ": " : "", tail,
           WIFEXITED(status) ? exit_hint(tail) : "it is restarted");
  log_msg("pxe: %s; restarting in %.1f s", P.error, (double)backoff / 1000);
  tb_eventf(d->cfg->state_dir, "dnsmasq-exit", NULL, "{s:I, s:s, s:s, s:I, s:I}", "pid",
            (json_int_t)pid, "status", P.child.last_exit, "message", tail, "ran_ms",
            (json_int_t)ran, "restart_in_ms", (json_int_t)backoff);
  return true;
}

static void pxe_tick(struct daemon *d, int64_t now)
{
  if (!P.enabled)
    return;
  if (child_restart_due(&P.child, now)) {
    P.child.restarts++;
    try_start(d);
    if (P.child.pid)
      tb_eventf(d->cfg->state_dir, "dnsmasq-restart", NULL, "{s:I, s:I, s:s}", "pid",
                (json_int_t)P.child.pid, "restarts", (json_int_t)P.child.restarts, "previous_exit",
                P.child.last_exit[0] ? P.child.last_exit : "not started");
  }
  if (P.child.pid && now >= P.next_log_check_ms) { /* dnsmasq.log stays bounded */
    P.next_log_check_ms = now + LOG_CHECK_MS;
    char path[TB_PATH_MAX];
    struct stat st;
    if (pxe_path(d->cfg, "dnsmasq.log", path, sizeof path) == 0 && stat(path, &st) == 0 &&
        (uint64_t)st.st_size > d->cfg->events_max_bytes && truncate(path, 0) == 0)
      log_msg("pxe: %s reached %llu bytes and was truncated", path, (unsigned long long)st.st_size);
  }
}

static int64_t pxe_next_wakeup(const struct daemon *d)
{
  (void)d;
  return P.enabled ? child_next_wakeup(&P.child) : INT64_MAX;
}

const struct daemon_timer pxe_timer = {"pxe", pxe_tick, pxe_next_wakeup};

void pxe_stop(struct daemon *d)
{
  (void)d;
  P.enabled = false;
  stop_dnsmasq();
}

/* ---- unknown MACs ----------------------------------------------------------------------- */

static json_t *unknown_load(const struct tb_config *cfg)
{
  char path[TB_PATH_MAX];
  if (pxe_path(cfg, "unknown.json", path, sizeof path) == -1)
    return json_object();
  char *text = tb_read_file(path, 4 * 1024 * 1024, NULL);
  json_t *v = text ? json_loads(text, 0, NULL) : NULL;
  free(text);
  if (!json_is_object(v)) {
    json_decref(v);
    v = json_object();
  }
  return v;
}

static int unknown_save(const struct tb_config *cfg, json_t *all)
{
  char path[TB_PATH_MAX];
  char *text = json_dumps(all, JSON_INDENT(1) | JSON_SORT_KEYS);
  int r = 0;
  if (!text)
    r = tb_error("out of memory");
  else if (pxe_path(cfg, "unknown.json", path, sizeof path) == -1 ||
           tb_write_file_atomic(path, text, strlen(text), 0600) == -1)
    r = -1;
  if (r == -1)
    log_msg("pxe: cannot save the unknown MACs: %s", tb_errmsg());
  free(text);
  return r;
}

/* Registered PCs leave the list. */
static void unknown_forget_registered(const struct tb_config *cfg)
{
  json_t *all = unknown_load(cfg);
  const char *mac;
  json_t *v, *tmp;
  bool changed = false;
  json_object_foreach_safe(all, tmp, mac, v)
  {
    if (tb_config_client_by_mac(cfg, mac)) {
      json_object_del(all, mac);
      changed = true;
    }
  }
  if (changed)
    unknown_save(cfg, all);
  json_decref(all);
}

/* Record an unknown MAC: -1 (with a message) if the record is not durable,
 * so the request is not acknowledged. */
static int unknown_seen(struct daemon *d, const char *mac, const char *address, const char *vendor,
                        bool pxe)
{
  const struct tb_config *cfg = d->cfg;
  json_t *all = unknown_load(cfg);
  int64_t now = tb_now_ms();
  json_t *e = json_object_get(all, mac);
  if (!e) {
    if (json_object_size(all) >= UNKNOWN_MAX) { /* forget the one seen longest ago */
      const char *k, *oldest = NULL;
      json_t *v;
      int64_t t = INT64_MAX;
      json_object_foreach(all, k, v)
      {
        int64_t seen = json_integer_value(json_object_get(v, "last_seen_ms"));
        if (seen < t) {
          t = seen;
          oldest = k;
        }
      }
      if (oldest)
        json_object_del(all, oldest);
    }
    e = json_pack("{s:I, s:I}", "first_seen_ms", (json_int_t)now, "count", (json_int_t)0);
    json_object_set_new(all, mac, e);
  }
  json_object_set_new(e, "last_seen_ms", json_integer(now));
  json_object_set_new(e, "count",
                      json_integer(json_integer_value(json_object_get(e, "count")) + 1));
  json_object_set_new(e, "address", json_string(address));
  json_object_set_new(e, "vendor_class", json_string(vendor));
  json_object_set_new(e, "pxe", json_boolean(pxe));
  int64_t last_event = json_integer_value(json_object_get(e, "last_event_ms"));
  bool announce = now - last_event >= UNKNOWN_EVENT_INTERVAL_MS;
  if (announce)
    json_object_set_new(e, "last_event_ms", json_integer(now));
  json_int_t count = json_integer_value(json_object_get(e, "count"));
  int r = unknown_save(cfg, all);
  json_decref(all);
  if (r == -1)
    return -1;
  if (announce)
    tb_eventf(cfg->state_dir, "pxe-unknown", NULL, "{s:s, s:s, s:s, s:b, s:I, s:s}", "mac", mac,
              "address", address, "vendor_class", vendor, "pxe", pxe, "count", count, "register",
              "tabulactl register MAC ID");
  return 0;
}

/* ---- configuration: start, reload --------------------------------------------------------- */

void pxe_apply(struct daemon *d)
{
  const struct tb_config *cfg = d->cfg;
  if (!cfg->pxe.enabled) {
    if (P.child.pid)
      log_msg("pxe: no \"pxe\" section any more: stopping dnsmasq");
    pxe_stop(d);
    return;
  }
  char dir[TB_PATH_MAX], path[TB_PATH_MAX], ctl[TB_PATH_MAX];
  if (pxe_path(cfg, "", dir, sizeof dir) == -1 || tb_mkdirs(dir, true) == -1) {
    pxe_problem(d, NULL, tb_errmsg());
    return;
  }
  char bin[TB_PATH_MAX];
  bool runs = runs_dnsmasq(cfg);
  bool renewal =
      runs && find_program(cfg->pxe.dnsmasq, bin, sizeof bin) && has_script_on_renewal(bin);
  /* What a cut left of the atomic writes below (every writer of pxe/ runs
   * on this thread, so none is in progress). */
  tb_remove_atomic_temps(dir, "");
  tb_remove_atomic_temps(cfg->pxe.tftp_dir, "");
  tftp_tree(d);
  tabulactl_path(ctl, sizeof ctl);
  char *script = event_script(ctl, d->control_path);
  char *hosts = hosts_text(cfg);
  char *conf = dnsmasq_conf(cfg, renewal);
  int conf_changed = 0, hosts_changed = 0;
  if (!script || !hosts || !conf) {
    pxe_problem(d, NULL, "cannot write the dnsmasq configuration: out of memory");
  } else if (pxe_path(cfg, "event.sh", path, sizeof path) == -1 ||
             write_if_changed(path, script, 0700) == -1 ||
             pxe_path(cfg, "hosts", path, sizeof path) == -1 ||
             (hosts_changed = write_if_changed(path, hosts, 0600)) == -1 ||
             pxe_path(cfg, "dnsmasq.conf", path, sizeof path) == -1 ||
             (conf_changed = write_if_changed(path, conf, 0600)) == -1) {
    pxe_problem(d, NULL, tb_errmsg());
  }
  free(script);
  free(hosts);
  free(conf);
  unknown_forget_registered(cfg);
  P.enabled = runs;
  if (!runs) {
    stop_dnsmasq();
    return;
  }
  if (P.child.pid && conf_changed == 1) {
    log_msg("pxe: dnsmasq.conf changed: restarting dnsmasq");
    stop_dnsmasq();
    P.child.failures = 0;
    P.child.restarts++;
    try_start(d);
    if (P.child.pid)
      tb_eventf(cfg->state_dir, "dnsmasq-restart", NULL, "{s:I, s:I, s:s}", "pid",
                (json_int_t)P.child.pid, "restarts", (json_int_t)P.child.restarts, "reason",
                "its configuration changed");
  } else if (P.child.pid && hosts_changed == 1) {
    log_msg("pxe: the static leases changed: dnsmasq re-reads them (SIGHUP)");
    kill(P.child.pid, SIGHUP);
  } else if (!P.child.pid && (!P.child.restart_at_mono_ms || conf_changed == 1)) {
    P.child.failures = 0;
    try_start(d);
  }
}

json_t *pxe_status(struct daemon *d)
{
  const struct tb_config *cfg = d->cfg;
  if (!cfg->pxe.enabled)
    return json_pack("{s:s}", "state", "off");
  const char *state = !runs_dnsmasq(cfg)           ? "external"
                      : P.child.pid                ? "running"
                      : P.child.restart_at_mono_ms ? "restarting"
                                                   : "stopped";
  json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:I}", "state", state, "interface",
                        cfg->pxe.interface, "server", cfg->pxe.server, "pid",
                        (json_int_t)P.child.pid, "restarts", (json_int_t)P.child.restarts);
  if (P.error[0])
    json_object_set_new(o, "error", json_string(P.error));
  if (P.child.last_exit[0])
    json_object_set_new(o, "last_exit", json_string(P.child.last_exit));
  size_t n = 0;
  for (size_t i = 0; i < cfg->n_clients; i++)
    n += cfg->clients[i].has_mac;
  json_object_set_new(o, "clients", json_integer((json_int_t)n));
  return o;
}

/* ---- operations ---------------------------------------------------------------------------- */

/* {"op": "pxe"}: the generated files, for admins who run dnsmasq themselves. */
static json_t *op_pxe(struct daemon *d)
{
  const struct tb_config *cfg = d->cfg;
  if (!cfg->pxe.enabled)
    return reply_error("no \"pxe\" section in %s: add one (see tabula-restored(8), \"pxe\") to "
                       "boot PCs over PXE",
                       d->config_file);
  char path[TB_PATH_MAX], hpath[TB_PATH_MAX];
  if (pxe_path(cfg, "dnsmasq.conf", path, sizeof path) == -1 ||
      pxe_path(cfg, "hosts", hpath, sizeof hpath) == -1)
    return reply_error("%s", tb_errmsg());
  char *conf = tb_read_file(path, 16 * 1024 * 1024, NULL);
  char *hosts = tb_read_file(hpath, 16 * 1024 * 1024, NULL);
  if (!conf || !hosts) {
    free(conf);
    free(hosts);
    return reply_error("the daemon could not write its PXE files (%s): see tabulactl events",
                       tb_errmsg());
  }
  json_t *r =
      json_pack("{s:s, s:s, s:s, s:s, s:s, s:o}", "dnsmasq_conf", conf, "hosts", hosts, "conf_file",
                path, "hosts_file", hpath, "tftp_dir", cfg->pxe.tftp_dir, "status", pxe_status(d));
  free(conf);
  free(hosts);
  return reply_ok(r);
}

static json_t *op_unknown(struct daemon *d)
{
  json_t *all = unknown_load(d->cfg);
  json_t *arr = json_array();
  const char *mac;
  json_t *v;
  json_object_foreach(all, mac, v)
  {
    json_t *e = json_deep_copy(v);
    json_object_set_new(e, "mac", json_string(mac));
    json_object_del(e, "last_event_ms");
    json_array_append_new(arr, e);
  }
  json_decref(all);
  return reply_ok(json_pack("{s:o}", "unknown", arr));
}

/* Only short printable strings from dnsmasq go into events and markers. */
static bool printable(const char *s, size_t max)
{
  size_t n = 0;
  for (; s && *s; s++, n++)
    if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
      return false;
  return n <= max;
}

/* {"op": "pxe-event", "action": "add"|"old"|"del"|"tftp", "mac", "address",
 *  "hostname", "vendor_class", "user_class": [...], "tags", "file", "size"} */
static json_t *op_event(struct daemon *d, json_t *req)
{
  static const char *const keys[] = {"op",       "action",       "mac",        "address",
                                     "hostname", "vendor_class", "user_class", "tags",
                                     "file",     "size",         "interface",  NULL};
  json_t *bad = req_check_keys(req, "pxe-event", keys);
  if (bad)
    return bad;
  const char *state = d->cfg->state_dir;
  const char *action = req_str(req, "action");
  const char *address = req_str(req, "address");
  const char *vendor = req_str(req, "vendor_class");
  if (!action || !address)
    return reply_error("pxe-event: needs \"action\" and \"address\"");
  if (!printable(address, 64) || !printable(vendor, 256))
    return reply_error("pxe-event: address or vendor class is not printable ASCII");
  if (!vendor)
    vendor = "";
  struct tb_cidr peer;
  if (tb_cidr_parse(address, &peer) == -1 || peer.family != AF_INET)
    return reply_error("pxe-event: address \"%.64s\" is not an IPv4 address", address);
  char detail[128];
  if (strcmp(action, "tftp") == 0) {
    /* The PC fetched a file: its own script is a boot. */
    const char *file = req_str(req, "file");
    if (!file)
      return reply_error("pxe-event: tftp needs \"file\"");
    const char *base = strrchr(file, '/') ? strrchr(file, '/') + 1 : file;
    const struct tb_client_conf *c = NULL;
    struct sockaddr_in sin = {.sin_family = AF_INET};
    memcpy(&sin.sin_addr, peer.addr, 4);
    for (size_t i = 0; i < d->cfg->n_clients && !c; i++)
      if (d->cfg->clients[i].has_mac &&
          tb_cidr_match(&d->cfg->clients[i].address, (struct sockaddr *)&sin))
        c = &d->cfg->clients[i];
    char want[TB_NAME_MAX + 8];
    if (c)
      snprintf(want, sizeof want, "%s.ipxe", c->id);
    if (!c || strcmp(base, want) != 0)
      return reply_ok(json_pack("{s:n, s:b}", "client", "boot", 0));
    snprintf(detail, sizeof detail, "tftp %s by %s", want, address);
    if (tb_boot_mark(state, c->id, "tftp", detail) == -1)
      return reply_error("%s", tb_errmsg());
    struct tb_boot_marker m;
    tb_boot_marker_read(state, c->id, &m);
    tb_eventf(state, "boot-seen", c->id, "{s:s, s:s, s:s, s:I}", "via", "tftp", "address", address,
              "file", want, "seq", (json_int_t)m.seq);
    return reply_ok(
        json_pack("{s:s, s:b, s:I}", "client", c->id, "boot", 1, "seq", (json_int_t)m.seq));
  }
  if (strcmp(action, "add") != 0 && strcmp(action, "old") != 0)
    return reply_ok(json_pack("{s:n, s:b, s:b}", "client", "boot", 0, "ignored", 1)); /* del, arp */
  const char *mac_text = req_str(req, "mac");
  char mac[18];
  if (!mac_text || tb_mac_parse(mac_text, mac) == -1)
    return reply_error("pxe-event: \"mac\" is not a MAC address such as 52:54:00:12:34:56");
  bool ipxe = false;
  size_t i;
  json_t *v;
  json_array_foreach(json_object_get(req, "user_class"), i, v) ipxe =
      ipxe || (json_is_string(v) && strcmp(json_string_value(v), "iPXE") == 0);
  bool pxe = strncmp(vendor, "PXEClient", 9) == 0 || ipxe;
  const struct tb_client_conf *c = tb_config_client_by_mac(d->cfg, mac);
  if (!c) {
    if (unknown_seen(d, mac, address, vendor, pxe) == -1)
      return reply_error("%s", tb_errmsg());
    return reply_ok(json_pack("{s:n, s:b, s:b}", "client", "boot", 0, "unknown", 1));
  }
  if (!pxe) /* a renewal by the running system */
    return reply_ok(json_pack("{s:s, s:b}", "client", c->id, "boot", 0));
  snprintf(detail, sizeof detail, "dhcp %s mac %s address %s", ipxe ? "iPXE" : "PXE", mac, address);
  if (tb_boot_mark(state, c->id, "dhcp", detail) == -1)
    return reply_error("%s", tb_errmsg());
  struct tb_boot_marker m;
  tb_boot_marker_read(state, c->id, &m);
  tb_eventf(state, "boot-seen", c->id, "{s:s, s:s, s:s, s:s, s:b, s:I}", "via", "dhcp", "mac", mac,
            "address", address, "vendor_class", vendor, "ipxe", ipxe, "seq", (json_int_t)m.seq);
  return reply_ok(
      json_pack("{s:s, s:b, s:I}", "client", c->id, "boot", 1, "seq", (json_int_t)m.seq));
}

/* The PXE operations (ops.c dispatches through this table). */
static json_t *run_pxe(struct daemon *d, struct op_call *call)
{
  (void)call;
  return op_pxe(d);
}

static json_t *run_event(struct daemon *d, struct op_call *call)
{
  return op_event(d, call->req);
}

static json_t *run_unknown(struct daemon *d, struct op_call *call)
{
  (void)call;
  return op_unknown(d);
}

const struct daemon_op pxe_ops[] = {
    {"pxe", run_pxe},
    {"pxe-event", run_event},
    {"pxe-unknown", run_unknown},
    {NULL, NULL},
};
