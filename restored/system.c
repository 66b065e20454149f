/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-restored: what the daemon says to the system that runs it.
 *
 * Log lines go to stderr: under systemd (stderr is the journal) each with a
 * "<N>" priority prefix (warnings 4, errors 3, the rest 6), elsewhere
 * prefixed "tabula-restored: ".  Readiness and status go to systemd's
 * NOTIFY_SOCKET (sd_notify(3)'s protocol, without linking libsystemd).  And
 * the groups the configuration names (control_group, listen.unix_group).
 */
#include <config.h>

#include <grp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon.h"

/* True when stderr is the journal (systemd sets JOURNAL_STREAM to its
 * "DEV:INODE"): the journal adds the program's name and time, and reads a
 * "<N>" prefix as the line's priority. */
bool daemon_stderr_is_journal(void)
{
  static int known = -1;
  if (known == -1) {
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    known = js && sscanf(js, "%llu:%llu", &dev, &ino) == 2 && fstat(2, &st) == 0 &&
            (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
  }
  return known;
}

/* The syslog priority of a log line: warnings 4, errors 3, the rest 6 (info). */
static int line_priority(const char *line)
{
  if (strncmp(line, "warning", 7) == 0)
    return 4;
  static const char *const errs[] = {"cannot ", "error",  "failed",  "refused", "not reloaded",
                                     "No such", "denied", "invalid", "unknown"};
  for (size_t i = 0; i < sizeof errs / sizeof *errs; i++)
    if (strstr(line, errs[i]))
      return 3;
  return 6;
}

void log_msg(const char *fmt, ...)
{
  char line[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (daemon_stderr_is_journal())
    fprintf(stderr, "<%d>%s\n", line_priority(line), line);
  else
    fprintf(stderr, "tabula-restored: %s\n", line);
}

/* ---- systemd readiness (Type=notify) ---------------------------------------------------- */

static void notify_systemd(const char *msg);

void daemon_notify(const char *fmt, ...)
{
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  notify_systemd(msg);
}

static void notify_systemd(const char *msg)
{
  const char *path = getenv("NOTIFY_SOCKET");
  if (!path || (path[0] != '/' && path[0] != '@') || strlen(path) >= 108)
    return;
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  strcpy(sa.sun_path, path);
  if (sa.sun_path[0] == '@')
    sa.sun_path[0] = '\0';
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd == -1)
    return;
  sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa,
         (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path)));
  close(fd);
}

/* ---- groups ------------------------------------------------------------------------------ */

int daemon_group(const char *text, const char *key, gid_t *gid)
{
  char *end;
  unsigned long n = strtoul(text, &end, 10);
  if (text[0] && !*end) {
    *gid = (gid_t)n;
    return 0;
  }
  struct group *g = getgrnam(text);
  if (!g)
    return tb_error("%s: no group \"%s\" on this machine (create it with groupadd, or name "
                    "another)",
                    key, text);
  *gid = g->gr_gid;
  return 0;
}
