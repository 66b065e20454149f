/* tabula: a client's mailbox (see mailbox.h).
 *
 * The file is small JSON rewritten atomically; every change happens under an
 * flock on clients/ID/mailbox.lock, held only for the read-modify-write, so
 * the daemon can post while a session runs and the plugin never loses a
 * request that arrives while it applies the previous one.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include <jansson.h>

#include "mailbox.h"
#include "store.h"

static int parse(const char *path, const char *text, size_t len, struct tb_mailbox *mb)
{
  json_error_t jerr;
  json_t *root = json_loadb(text, len, 0, &jerr);
  if (!json_is_object(root)) {
    json_decref(root);
    return tb_error("%s: not a JSON object (%s); remove it to clear the mailbox", path, jerr.text);
  }
  json_t *v;
  const char *err = NULL;
  if ((v = json_object_get(root, "rollback")))
    mb->rollback = json_is_true(v);
  if ((v = json_object_get(root, "refresh")))
    mb->refresh = json_is_true(v);
  if ((v = json_object_get(root, "restore"))) {
    if (json_is_integer(v) && json_integer_value(v) >= 0)
      mb->restore = json_integer_value(v);
    else
      err = "\"restore\" is not a session number";
  }
  if ((v = json_object_get(root, "image"))) {
    if (json_is_string(v) && tb_name_valid(json_string_value(v)))
      strcpy(mb->image, json_string_value(v));
    else if (!json_is_null(v))
      err = "\"image\" is not a valid image name";
  }
  if ((v = json_object_get(root, "pin"))) {
    if (json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) <= UINT32_MAX)
      mb->pin = (uint32_t)json_integer_value(v);
    else if (!json_is_null(v))
      err = "\"pin\" is not a version number";
  }
  if ((v = json_object_get(root, "lockdown")) && json_is_string(v))
    snprintf(mb->lockdown, sizeof mb->lockdown, "%s", json_string_value(v));
  json_decref(root);
  if (err)
    return tb_error("%s: %s; fix or remove the file", path, err);
  return 0;
}

static int read_locked(const char *path, struct tb_mailbox *mb)
{
  memset(mb, 0, sizeof *mb);
  size_t len;
  char *text = tb_read_file(path, 1024 * 1024, &len);
  if (!text)
    return errno == ENOENT ? 0 : -1;
  int r = parse(path, text, len, mb);
  free(text);
  return r;
}

int tb_mailbox_read(const char *state, const char *id, struct tb_mailbox *mb)
{
  char path[TB_PATH_MAX];
  if (tb_store_client_path(state, id, "mailbox.json", path, sizeof path) == -1)
    return -1;
  return read_locked(path, mb);
}

/* Every key or none: a value jansson refuses (a string that is not UTF-8)
 * fails the write, so no request is ever dropped while the caller hears
 * it succeeded. */
static int write_mailbox(const char *path, const struct tb_mailbox *mb)
{
  json_t *o = json_object();
  int bad = !o;
  if (mb->rollback)
    bad |= json_object_set_new(o, "rollback", json_true());
  if (mb->refresh)
    bad |= json_object_set_new(o, "refresh", json_true());
  if (mb->restore > 0)
    bad |= json_object_set_new(o, "restore", json_integer(mb->restore));
  if (mb->image[0])
    bad |= json_object_set_new(o, "image", json_string(mb->image));
  if (mb->pin)
    bad |= json_object_set_new(o, "pin", json_integer(mb->pin));
  if (mb->lockdown[0])
    bad |= json_object_set_new(o, "lockdown", json_string(mb->lockdown));
  char *text = bad ? NULL : json_dumps(o, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
  json_decref(o);
  if (!text)
    return tb_error("cannot encode %s (a value is not valid UTF-8?); the mailbox is unchanged",
                    path);
  int r = tb_write_file_atomic(path, text, strlen(text), 0600);
  free(text);
  return r;
}

int tb_mailbox_update(const char *state, const char *id, tb_mailbox_fn fn, void *ctx)
{
  char dir[TB_PATH_MAX], path[TB_PATH_MAX], lock[TB_PATH_MAX];
  if (tb_store_client_dir(state, id, dir, sizeof dir) == -1 || tb_mkdirs(dir, true) == -1 ||
      tb_path(path, sizeof path, "%s/mailbox.json", dir) == -1 ||
      tb_path(lock, sizeof lock, "%s/mailbox.lock", dir) == -1)
    return -1;
  int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd == -1 || flock(fd, LOCK_EX) == -1) {
    tb_error_errno("cannot lock %s", lock);
    if (fd >= 0)
      close(fd);
    return -1;
  }
  struct tb_mailbox mb;
  int r = read_locked(path, &mb);
  if (r == 0) {
    r = fn(&mb, ctx);
    if (r == 0)
      r = write_mailbox(path, &mb);
    else if (r == 1)
      r = 0;
  }
  close(fd);
  return r;
}
