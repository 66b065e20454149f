/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-nbd-persist: keeps a kernel NBD device attached across reconnects.
 *
 * Debian 12's nbd-client (3.24) attaches /dev/nbdN through netlink, and there
 * its -persist does nothing (the old ioctl path's -persist ends too: the
 * kernel call returns 0 when the link dies).  When the server restarts or the
 * TCP connection breaks, the device is dead for good and a mounted root gets
 * I/O errors.  The kernel can do better, and this program asks it to, the way
 * upstream nbd-client's netlink persist mode (after 3.24) does:
 *
 *   1. NBD_CMD_RECONFIGURE sets a dead-connection timeout on the device:
 *      requests then wait (up to that long) for a new connection instead of
 *      failing;
 *   2. it listens on the "nbd_mc_group" multicast group, where the kernel
 *      announces each dead link (NBD_CMD_LINK_DEAD);
 *   3. on such an announcement it connects to HOST:PORT again (every second,
 *      until the timeout), negotiates the same export NAME with NBD_OPT_GO,
 *      checks that the size did not change, and hands the socket to the kernel
 *      (NBD_CMD_RECONFIGURE with NBD_ATTR_SOCKETS); the waiting requests go on.
 *
 *   tabula-nbd-persist [-t SECONDS] DEVICE HOST PORT NAME
 *
 * DEVICE (/dev/nbdN) must already be attached by nbd-client to NAME.  The
 * same NAME is sent again, so a server that keys sessions on it (tabula's
 * "ID@boot/BOOT_ID") sees a reconnect of the same boot.  Promises: the device
 * never gets a socket to another export or of another size (such a socket is
 * closed and the attempt repeated); the program exits 0 once the device is
 * disconnected (nbd-client -d), 1 on a setup error or when the timeout passes
 * without a connection.  It runs in the foreground and logs to stderr; its
 * argv[0] starts with '@' so that systemd's shutdown leaves it alone, as it
 * must for a root device.  It depends on libc only, for an initramfs.
 */
#include <config.h>

#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <linux/genetlink.h>
#include <linux/nbd-netlink.h>
#include <linux/netlink.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PROG "tabula-nbd-persist"
#define NBD_OPT_GO 7
#define NBD_REP_ACK 1
#define NBD_REP_INFO 3
#define NBD_INFO_EXPORT 0
#define NBD_FLAG_FIXED_NEWSTYLE 1
#define NBD_FLAG_NO_ZEROES 2
#define NBD_IHAVEOPT 0x49484156454F5054ULL
#define NBD_REPLY_MAGIC 0x3e889045565a9ULL

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, PROG ": ");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

/* ---- generic netlink ----------------------------------------------------------------- */

struct msg {
  char buf[1024];
  size_t len;
};

static void msg_start(struct msg *m, uint16_t family, uint8_t cmd, uint16_t flags)
{
  memset(m, 0, sizeof *m);
  struct nlmsghdr *h = (struct nlmsghdr *)m->buf;
  h->nlmsg_type = family;
  h->nlmsg_flags = NLM_F_REQUEST | flags;
  struct genlmsghdr *g = (struct genlmsghdr *)(m->buf + NLMSG_HDRLEN);
  g->cmd = cmd;
  g->version = 1;
  m->len = NLMSG_HDRLEN + GENL_HDRLEN;
}

/* Add an attribute; returns its offset (for a nest to be closed later). */
static size_t msg_put(struct msg *m, uint16_t type, const void *data, size_t len)
{
  size_t at = m->len;
  struct nlattr *a = (struct nlattr *)(m->buf + at);
  a->nla_type = type;
  a->nla_len = (uint16_t)(NLA_HDRLEN + len);
  if (len)
    memcpy(m->buf + at + NLA_HDRLEN, data, len);
  m->len += NLA_ALIGN(NLA_HDRLEN + len);
  return at;
}

static void msg_end_nest(struct msg *m, size_t at)
{
  ((struct nlattr *)(m->buf + at))->nla_len = (uint16_t)(m->len - at);
}

static int nl_open(void)
{
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
  struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
  if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    say("cannot open a generic netlink socket: %s", strerror(errno));
    return -1;
  }
  return fd;
}

/* Send M and read the reply into REPLY (an ack or the answer); returns the
 * kernel's error (0 or -errno) or -EIO. */
static int nl_call(int fd, struct msg *m, char *reply, size_t size)
{
  struct nlmsghdr *h = (struct nlmsghdr *)m->buf;
  h->nlmsg_len = (uint32_t)m->len;
  if (send(fd, m->buf, m->len, 0) < 0)
    return -errno;
  for (;;) {
    ssize_t n = recv(fd, reply, size, 0);
    if (n < 0)
      return errno == EINTR ? -EINTR : -errno;
    struct nlmsghdr *r = (struct nlmsghdr *)reply;
    if (!NLMSG_OK(r, (size_t)n))
      return -EIO;
    if (r->nlmsg_type == NLMSG_ERROR)
      return ((struct nlmsgerr *)NLMSG_DATA(r))->error;
    return 0; /* an answer (GETFAMILY); its ack follows, ignored */
  }
}

/* The attributes after the genl header of a message, or within a nest. */
#define ATTR_FOREACH(a, start, len)                                                                \
  for (struct nlattr *a = (struct nlattr *)(start);                                                \
       (char *)a + NLA_HDRLEN <= (char *)(start) + (len) && a->nla_len >= NLA_HDRLEN &&            \
       (char *)a + a->nla_len <= (char *)(start) + (len);                                          \
       a = (struct nlattr *)((char *)a + NLA_ALIGN(a->nla_len)))
#define ATTR_DATA(a) ((char *)(a) + NLA_HDRLEN)
#define ATTR_LEN(a) ((size_t)((a)->nla_len - NLA_HDRLEN))

/* The nbd family's id and its multicast group's id. */
static int resolve_family(int fd, uint16_t *family, uint32_t *group)
{
  struct msg m;
  char reply[8192];
  msg_start(&m, GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 0);
  msg_put(&m, CTRL_ATTR_FAMILY_NAME, NBD_GENL_FAMILY_NAME, sizeof NBD_GENL_FAMILY_NAME);
  int e = nl_call(fd, &m, reply, sizeof reply);
  if (e < 0) {
    say("the kernel has no \"nbd\" netlink family (%s): load the nbd module", strerror(-e));
    return -1;
  }
  struct nlmsghdr *h = (struct nlmsghdr *)reply;
  char *attrs = (char *)NLMSG_DATA(h) + GENL_HDRLEN;
  size_t len = h->nlmsg_len - NLMSG_HDRLEN - GENL_HDRLEN;
  *family = 0;
  *group = 0;
  ATTR_FOREACH(a, attrs, len)
  {
    if (a->nla_type == CTRL_ATTR_FAMILY_ID && ATTR_LEN(a) >= 2)
      memcpy(family, ATTR_DATA(a), 2);
    if ((a->nla_type & NLA_TYPE_MASK) != CTRL_ATTR_MCAST_GROUPS)
      continue;
    ATTR_FOREACH(g, ATTR_DATA(a), ATTR_LEN(a))
    {
      const char *name = NULL;
      uint32_t id = 0;
      ATTR_FOREACH(f, ATTR_DATA(g), ATTR_LEN(g))
      {
        if (f->nla_type == CTRL_ATTR_MCAST_GRP_NAME)
          name = ATTR_DATA(f);
        if (f->nla_type == CTRL_ATTR_MCAST_GRP_ID && ATTR_LEN(f) >= 4)
          memcpy(&id, ATTR_DATA(f), 4);
      }
      if (name && strcmp(name, NBD_GENL_MCAST_GROUP_NAME) == 0)
        *group = id;
    }
  }
  if (!*family || !*group) {
    say("the kernel's nbd netlink family has no %s group", NBD_GENL_MCAST_GROUP_NAME);
    return -1;
  }
  return 0;
}

/* NBD_CMD_RECONFIGURE of device INDEX: the dead-connection timeout, and a
 * new socket if SOCK >= 0. */
static int reconfigure(int fd, uint16_t family, uint32_t index, uint64_t dead_timeout, int sock)
{
  struct msg m;
  char reply[4096];
  msg_start(&m, family, NBD_CMD_RECONFIGURE, NLM_F_ACK);
  msg_put(&m, NBD_ATTR_INDEX, &index, sizeof index);
  msg_put(&m, NBD_ATTR_DEAD_CONN_TIMEOUT, &dead_timeout, sizeof dead_timeout);
  if (sock >= 0) {
    uint32_t sfd = (uint32_t)sock;
    size_t socks = msg_put(&m, NBD_ATTR_SOCKETS | NLA_F_NESTED, NULL, 0);
    size_t item = msg_put(&m, NBD_SOCK_ITEM | NLA_F_NESTED, NULL, 0);
    msg_put(&m, NBD_SOCK_FD, &sfd, sizeof sfd);
    msg_end_nest(&m, item);
    msg_end_nest(&m, socks);
  }
  return nl_call(fd, &m, reply, sizeof reply);
}

/* ---- NBD handshake ----------------------------------------------------------------------- */

static int read_full(int fd, void *buf, size_t len)
{
  char *p = buf;
  while (len) {
    ssize_t n = read(fd, p, len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return -1;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

static int write_full(int fd, const void *buf, size_t len)
{
  const char *p = buf;
  while (len) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return -1;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

static int tcp_connect(const char *host, const char *port)
{
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
  struct addrinfo *ai = NULL;
  if (getaddrinfo(host, port, &hints, &ai) != 0)
    return -1;
  int fd = -1;
  for (struct addrinfo *p = ai; p; p = p->ai_next) {
    fd = socket(p->ai_family, p->ai_socktype | SOCK_CLOEXEC, p->ai_protocol);
    if (fd >= 0 && connect(fd, p->ai_addr, p->ai_addrlen) == 0)
      break;
    if (fd >= 0)
      close(fd);
    fd = -1;
  }
  freeaddrinfo(ai);
  if (fd >= 0) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  }
  return fd;
}

/* Fixed-newstyle handshake with NBD_OPT_GO for NAME; *SIZE from NBD_INFO_EXPORT.
 * Returns 0 in the transmission phase, -1 (with a message) otherwise. */
static int negotiate(int fd, const char *name, uint64_t *size)
{
  char magic[16];
  uint16_t hflags;
  if (read_full(fd, magic, 16) < 0 || memcmp(magic, "NBDMAGIC", 8) != 0 ||
      read_full(fd, &hflags, 2) < 0) {
    say("the server sent no NBD greeting");
    return -1;
  }
  hflags = ntohs(hflags);
  if (!(hflags & NBD_FLAG_FIXED_NEWSTYLE)) {
    say("the server does not speak fixed newstyle NBD");
    return -1;
  }
  uint32_t cflags = htonl(NBD_FLAG_FIXED_NEWSTYLE | (hflags & NBD_FLAG_NO_ZEROES));
  uint32_t nlen = (uint32_t)strlen(name);
  struct __attribute__((packed)) {
    uint64_t magic;
    uint32_t opt, len, namelen;
  } opt = {htobe64(NBD_IHAVEOPT), htonl(NBD_OPT_GO), htonl(4 + nlen + 2), htonl(nlen)};
  uint16_t ninfo = 0;
  if (write_full(fd, &cflags, 4) < 0 || write_full(fd, &opt, sizeof opt) < 0 ||
      write_full(fd, name, nlen) < 0 || write_full(fd, &ninfo, 2) < 0)
    return -1;
  *size = 0;
  for (int replies = 0; replies < 64; replies++) {
    struct __attribute__((packed)) {
      uint64_t magic;
      uint32_t opt, type, len;
    } rep;
    if (read_full(fd, &rep, sizeof rep) < 0 || be64toh(rep.magic) != NBD_REPLY_MAGIC) {
      say("the server's answer to NBD_OPT_GO is not an option reply");
      return -1;
    }
    uint32_t type = ntohl(rep.type), len = ntohl(rep.len);
    char data[1024];
    if (len > sizeof data || read_full(fd, data, len) < 0) {
      say("the server's option reply is too long (%u bytes)", len);
      return -1;
    }
    if (type == NBD_REP_ACK)
      return *size ? 0 : -1;
    if (type & 0x80000000u) {
      say("the server refused export \"%s\": %.*s", name, (int)len, data);
      return -1;
    }
    if (type == NBD_REP_INFO && len >= 12) {
      uint16_t info;
      memcpy(&info, data, 2);
      if (ntohs(info) == NBD_INFO_EXPORT) {
        memcpy(size, data + 2, 8);
        *size = be64toh(*size);
      }
    }
  }
  say("the server sent too many option replies");
  return -1;
}

/* ---- the device -------------------------------------------------------------------------- */

static char sysdir[128];

static uint64_t device_bytes(void)
{
  char path[160];
  snprintf(path, sizeof path, "%s/size", sysdir);
  FILE *f = fopen(path, "r");
  unsigned long long sectors = 0;
  if (f) {
    if (fscanf(f, "%llu", &sectors) != 1)
      sectors = 0;
    fclose(f);
  }
  return (uint64_t)sectors * 512;
}

/* The kernel removes the pid attribute when the device is disconnected. */
static int device_connected(void)
{
  char path[160];
  snprintf(path, sizeof path, "%s/pid", sysdir);
  return access(path, F_OK) == 0;
}

/* Connect again until the kernel has a new socket, or DEADLINE (monotonic s). */
static int reconnect(int ctl, uint16_t family, uint32_t index, uint64_t timeout, const char *host,
                     const char *port, const char *name)
{
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  time_t deadline = now.tv_sec + (time_t)timeout;
  uint64_t want = device_bytes();
  for (int attempt = 1;; attempt++) {
    int sock = tcp_connect(host, port);
    uint64_t size = 0;
    if (sock >= 0 && negotiate(sock, name, &size) == 0) {
      if (size != want) {
        say("export \"%s\" is %llu bytes now, the device %llu: not reattached", name,
            (unsigned long long)size, (unsigned long long)want);
      } else {
        int e = reconfigure(ctl, family, index, timeout, sock);
        close(sock);
        if (e == 0) {
          say("reconnected to %s:%s (attempt %d)", host, port, attempt);
          return 0;
        }
        say("the kernel refused the new socket: %s", strerror(-e));
        sock = -1;
      }
    }
    if (sock >= 0)
      close(sock);
    if (!device_connected())
      return 0;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec >= deadline) {
      say("no connection to %s:%s within %llu s; giving up", host, port,
          (unsigned long long)timeout);
      return -1;
    }
    sleep(1);
  }
}

int main(int argc, char **argv)
{
  uint64_t timeout = 3600;
  int opt;
  while ((opt = getopt(argc, argv, "t:")) != -1) {
    if (opt == 't' && atoll(optarg) > 0)
      timeout = (uint64_t)atoll(optarg);
    else {
      fprintf(stderr, "usage: " PROG " [-t SECONDS] DEVICE HOST PORT NAME\n");
      return 2;
    }
  }
  if (argc - optind != 4) {
    fprintf(stderr, "usage: " PROG " [-t SECONDS] DEVICE HOST PORT NAME\n");
    return 2;
  }
  const char *dev = argv[optind], *host = argv[optind + 1], *port = argv[optind + 2];
  const char *name = argv[optind + 3];
  unsigned index;
  if (sscanf(dev, "/dev/nbd%u", &index) != 1) {
    say("%s is not an NBD device (/dev/nbdN)", dev);
    return 2;
  }
  snprintf(sysdir, sizeof sysdir, "/sys/block/nbd%u", index);
  argv[0][0] = '@'; /* systemd's shutdown spares it (a root device's helper) */

  int ctl = nl_open(), mon = nl_open();
  uint16_t family;
  uint32_t group;
  if (ctl < 0 || mon < 0 || resolve_family(ctl, &family, &group) < 0)
    return 1;
  if (setsockopt(mon, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &group, sizeof group) < 0) {
    say("cannot join the nbd multicast group: %s", strerror(errno));
    return 1;
  }
  if (!device_connected()) {
    say("%s is not connected: attach it with nbd-client first", dev);
    return 1;
  }
  int e = reconfigure(ctl, family, index, timeout, -1);
  if (e < 0) {
    say("cannot set the dead-connection timeout of %s: %s", dev, strerror(-e));
    return 1;
  }
  say("%s: requests wait up to %llu s for a reconnect to %s:%s", dev, (unsigned long long)timeout,
      host, port);
  for (;;) {
    struct pollfd p = {.fd = mon, .events = POLLIN};
    int n = poll(&p, 1, 2000);
    if (n == 0) {
      if (!device_connected())
        return 0;
      continue;
    }
    char buf[4096];
    ssize_t len = n > 0 ? recv(mon, buf, sizeof buf, 0) : -1;
    if (len < 0) {
      if (errno == EINTR || errno == ENOBUFS)
        continue;
      say("reading the nbd multicast group: %s", strerror(errno));
      return 1;
    }
    for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)len);
         h = NLMSG_NEXT(h, len)) {
      struct genlmsghdr *g = NLMSG_DATA(h);
      if (h->nlmsg_type != family || g->cmd != NBD_CMD_LINK_DEAD)
        continue;
      uint32_t dead = UINT32_MAX;
      ATTR_FOREACH(a, (char *)g + GENL_HDRLEN, h->nlmsg_len - NLMSG_HDRLEN - GENL_HDRLEN)
      {
        if (a->nla_type == NBD_ATTR_INDEX && ATTR_LEN(a) >= 4)
          memcpy(&dead, ATTR_DATA(a), 4);
      }
      if (dead != index)
        continue;
      say("%s: the connection to %s:%s died; reconnecting", dev, host, port);
      if (reconnect(ctl, family, index, timeout, host, port, name) < 0)
        return 1;
    }
  }
}
