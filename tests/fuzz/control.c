/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer target: control-socket reply lines (lib/control.c
 * tb_control_recv), the JSON lines tabulactl reads.  Each input is what a
 * daemon sends before closing: it goes through a real unix socket, and
 * every reply read from it must be an object; the loop ends at the close. */
#include <config.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "control.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[] = "/tmp/tabula-fuzz-control.XXXXXX";
static char path[108];
static int listener = -1;

static void cleanup(void)
{
  unlink(path);
  rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
  if (!mkdtemp(dir))
    abort();
  snprintf(path, sizeof path, "%s/s", dir);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
  listener = socket(AF_UNIX, SOCK_STREAM, 0);
  if (listener == -1 || bind(listener, (struct sockaddr *)&sa, sizeof sa) == -1 ||
      listen(listener, 4) == -1)
    abort();
  atexit(cleanup);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct tb_control *c = tb_control_connect(path);
  if (!c)
    abort();
  int s = accept(listener, NULL, NULL);
  if (s == -1)
    abort();
  int big = 1 << 20;
  setsockopt(s, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  size_t off = 0;
  while (off < size) {
    ssize_t n = write(s, data + off, size - off);
    if (n <= 0)
      abort(); /* more than the socket holds: keep -max_len under its buffer */
    off += (size_t)n;
  }
  close(s);
  for (size_t i = 0; i <= size; i++) {
    json_t *v = tb_control_recv(c, 5000);
    if (!v && strstr(tb_errmsg(), "closed the connection"))
      break;
    if (v && !json_is_object(v))
      abort();
    json_decref(v);
  }
  tb_control_close(c);
  return 0;
}
