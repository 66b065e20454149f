/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: a client's mailbox (see mailbox.h).
 *
 * The file is small JSON rewritten atomically; every change happens under an
 * flock on clients/ID/mailbox.lock, held only for the read-modify-write, so
 * the daemon can post while a session runs and the plugin never loses a
 * request that arrives while it applies the previous one.
 *
 * One-shot requests carry the number they were posted under ("posted":
 * {"restore": 7, "rollback": 8}, the counter in "serial"), so the turn can
 * apply the latest one and clear exactly the requests it saw: one posted
 * after the turn read the mailbox stays for the next turn.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include <jansson.h>

#include "clientdir.h"
#include "cleanup.h"
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
  /* Request numbers only order requests: a bad one is an unknown order. */
  if ((v = json_object_get(root, "serial")) && json_is_integer(v) && json_integer_value(v) > 0)
    mb->serial = (uint64_t)json_integer_value(v);
  json_t *posted = json_object_get(root, "posted");
  static const char *const names[] = {"rollback", "refresh", "restore"};
  uint64_t *nos[] = {&mb->rollback_no, &mb->refresh_no, &mb->restore_no};
  for (size_t i = 0; i < 3; i++)
    if ((v = json_object_get(posted, names[i])) && json_is_integer(v) &&
        json_integer_value(v) > 0 && (uint64_t)json_integer_value(v) <= mb->serial)
      *nos[i] = (uint64_t)json_integer_value(v);
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
  if (tb_clientdir_path(state, id, TB_CF_MAILBOX, path, sizeof path) == -1)
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
  json_t *posted = json_object();
  bad |= !posted;
  if (mb->rollback && mb->rollback_no)
    bad |= json_object_set_new(posted, "rollback", json_integer((json_int_t)mb->rollback_no));
  if (mb->refresh && mb->refresh_no)
    bad |= json_object_set_new(posted, "refresh", json_integer((json_int_t)mb->refresh_no));
  if (mb->restore > 0 && mb->restore_no)
    bad |= json_object_set_new(posted, "restore", json_integer((json_int_t)mb->restore_no));
  if (json_object_size(posted))
    bad |= json_object_set_new(o, "posted", posted);
  else
    json_decref(posted);
  if (mb->serial)
    bad |= json_object_set_new(o, "serial", json_integer((json_int_t)mb->serial));
  char *text = bad ? NULL : json_dumps(o, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
  json_decref(o);
  if (!text)
    return tb_error("cannot encode %s (a value is not valid UTF-8?); the mailbox is unchanged",
                    path);
  int r = tb_write_file_atomic(path, text, strlen(text), 0600);
  free(text);
  return r;
}

/* CH's standing conditions on MB (as it is on disk). */
static bool conditions_hold(const struct tb_mailbox_change *ch, const struct tb_mailbox *mb)
{
  if (ch->if_image && strcmp(mb->image, ch->if_image) != 0)
    return false;
  return !ch->if_pin || mb->pin == ch->pin_was;
}

/* Clear the one-shots a turn applied: those numbered up to SERIAL (every
 * pending one it saw, the latest it applied and those it superseded). */
static void clear_applied(struct tb_mailbox *mb, uint64_t serial)
{
  if (mb->rollback && mb->rollback_no <= serial) {
    mb->rollback = false;
    mb->rollback_no = 0;
  }
  if (mb->refresh && mb->refresh_no <= serial) {
    mb->refresh = false;
    mb->refresh_no = 0;
  }
  if (mb->restore > 0 && mb->restore_no <= serial) {
    mb->restore = 0;
    mb->restore_no = 0;
  }
}

/* CH on the mailbox MB as it is on disk: a new one-shot is numbered after
 * every pending one. */
static void apply(const struct tb_mailbox_change *ch, struct tb_mailbox *mb)
{
  if (ch->applied)
    clear_applied(mb, ch->applied_serial);
  if (ch->image)
    snprintf(mb->image, sizeof mb->image, "%s", ch->image);
  if (ch->set_pin)
    mb->pin = ch->pin;
  if (ch->lockdown) {
    snprintf(mb->lockdown, sizeof mb->lockdown, "%s", ch->lockdown);
    tb_utf8_truncate(mb->lockdown);
  }
  if (ch->rollback) {
    mb->rollback = true;
    mb->rollback_no = ++mb->serial;
  }
  if (ch->refresh) {
    mb->refresh = true;
    mb->refresh_no = ++mb->serial;
  }
  if (ch->restore > 0) {
    mb->restore = ch->restore;
    mb->restore_no = ++mb->serial;
  }
}

/* Whether writing NEW over OLD changes what the file says. */
static bool changed(const struct tb_mailbox *old, const struct tb_mailbox *new)
{
  return old->rollback != new->rollback || old->refresh != new->refresh ||
         old->restore != new->restore || old->rollback_no != new->rollback_no ||
         old->refresh_no != new->refresh_no || old->restore_no != new->restore_no ||
         old->serial != new->serial || old->pin != new->pin ||
         strcmp(old->image, new->image) != 0 || strcmp(old->lockdown, new->lockdown) != 0;
}

int tb_mailbox_change(const char *state, const char *id, const struct tb_mailbox_change *ch,
                      struct tb_mailbox *after)
{
  if (ch->image && ch->image[0] && !tb_name_valid(ch->image))
    return tb_error("client %s: \"%s\" is not a valid image name; the mailbox is unchanged", id,
                    ch->image);
  if (ch->restore < 0)
    return tb_error("client %s: restore %lld is not a session number; the mailbox is unchanged", id,
                    (long long)ch->restore);
  char dir[TB_PATH_MAX], path[TB_PATH_MAX], lock[TB_PATH_MAX];
  if (tb_clientdir_mkdir(state, id, dir, sizeof dir) == -1 ||
      tb_clientdir_path(state, id, TB_CF_MAILBOX, path, sizeof path) == -1 ||
      tb_clientdir_path(state, id, TB_CF_MAILBOX_LOCK, lock, sizeof lock) == -1)
    return -1;
  CLEANUP_CLOSE int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd == -1 || flock(fd, LOCK_EX) == -1)
    return tb_error_errno("cannot lock %s", lock);
  struct tb_mailbox old, mb;
  if (read_locked(path, &old) == -1)
    return -1;
  mb = old;
  int r = 1;
  if (conditions_hold(ch, &old)) {
    apply(ch, &mb);
    if (changed(&old, &mb) && write_mailbox(path, &mb) == -1)
      return -1;
    r = 0;
  }
  if (after)
    *after = r == 0 ? mb : old;
  return r;
}

void tb_mailbox_keep_latest(struct tb_mailbox *mb)
{
  /* Ties (requests of unknown order) rank restore, refresh, rollback. */
  uint64_t rb = mb->rollback ? mb->rollback_no : 0, rf = mb->refresh ? mb->refresh_no : 0,
           rs = mb->restore > 0 ? mb->restore_no : 0;
  if (mb->restore > 0 && rs >= rb && rs >= rf) {
    mb->rollback = mb->refresh = false;
  } else if (mb->refresh && rf >= rb) {
    mb->rollback = false;
    mb->restore = 0;
  } else if (mb->rollback) {
    mb->refresh = false;
    mb->restore = 0;
  }
}
