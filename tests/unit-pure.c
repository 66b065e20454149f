/* SPDX-License-Identifier: BSD-3-Clause */
/* Unit tests of lib/'s pure functions with tricky semantics (issue 17 §6):
 *
 *   schedules    tb_schedule_next across daylight-saving changes
 *                (TZ=Europe/Berlin: 29 March 2026 02:00 -> 03:00, 25 October
 *                2026 03:00 -> 02:00): no due time skipped, none twice
 *   rule paths   tb_rule_path_match: '*' within a directory, "**" over any
 *                number of whole directories, anchored at both ends
 *   CIDR, allow  tb_cidr_parse/tb_cidr_match and "allow" lists through the
 *                parser: prefixes, IPv4-mapped IPv6, bad prefixes
 *   regions      tb_region_parse and tb_region_resolve: clipping to the disk,
 *                the GPT's two tables, the bounds
 *   manifests    tb_manifest_parse: one hash per chunk, the field checks
 *   partitions   lib/ptable on disks built in memory: a reader that faults
 *                outside the disk is never called there
 */
#include <config.h>

#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conf.h"
#include "ptable.h"
#include "region.h"
#include "rules.h"
#include "schedule.h"
#include "store.h"
#include "vector.h"
#include "check-run.h"

/* ---- schedules ---------------------------------------------------------------------- */

#define H (3600 * 1000LL)

/* Epoch milliseconds of a UTC time. */
static int64_t utc(int y, int mo, int d, int h, int mi)
{
  struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h, .tm_min = mi};
  return (int64_t)timegm(&tm) * 1000;
}

static int64_t next(const char *text, int64_t after)
{
  struct tb_schedule s;
  ck_assert_msg(tb_schedule_parse(text, &s) == 0, "%s: %s", text, tb_errmsg());
  int64_t n = tb_schedule_next(&s, after);
  ck_assert_msg(n > after, "%s: next %lld is not after %lld", text, (long long)n, (long long)after);
  return n;
}

static void berlin(void)
{
  setenv("TZ", "Europe/Berlin", 1);
  tzset();
}

START_TEST(test_schedule_parse)
{
  struct tb_schedule s;
  static const char *const bad[] = {"",
                                    "daily",
                                    "daily 24:00",
                                    "daily 3:5x",
                                    "daily -1:00",
                                    "weekly 03:00",
                                    "weekly xyz 03:00",
                                    "every 0s",
                                    "every 500ms",
                                    "hourly ",
                                    "Daily 03:00"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    ck_assert_msg(tb_schedule_parse(bad[i], &s) == -1, "\"%s\" parsed", bad[i]);
  ck_assert_int_eq(tb_schedule_parse(NULL, &s), -1);
  ck_assert_int_eq(tb_schedule_parse("weekly Sunday 23:59", &s), 0);
  ck_assert_int_eq(s.wday, 0);
  ck_assert_int_eq(tb_schedule_parse("weekly sat 00:00", &s), 0);
  ck_assert_int_eq(s.wday, 6);
}
END_TEST

START_TEST(test_schedule_plain)
{
  berlin();
  /* Winter: CET, UTC+1. */
  int64_t t = utc(2026, 1, 14, 11, 0); /* Wed 12:00 CET */
  ck_assert_int_eq(next("daily 03:00", t), utc(2026, 1, 15, 2, 0));
  ck_assert_int_eq(next("daily 12:00", t), utc(2026, 1, 15, 11, 0)); /* strictly after */
  ck_assert_int_eq(next("daily 12:01", t), utc(2026, 1, 14, 11, 1));
  ck_assert_int_eq(next("hourly", t), utc(2026, 1, 14, 12, 0));
  ck_assert_int_eq(next("hourly", t + 1), utc(2026, 1, 14, 12, 0));
  ck_assert_int_eq(next("weekly wed 12:00", t), utc(2026, 1, 21, 11, 0));
  ck_assert_int_eq(next("weekly thu 00:30", t), utc(2026, 1, 14, 23, 30));
  ck_assert_int_eq(next("weekly tue 08:00", t), utc(2026, 1, 20, 7, 0));
  ck_assert_int_eq(next("every 90s", t), t + 90000);
  /* Month and year ends, a leap day. */
  ck_assert_int_eq(next("daily 00:00", utc(2026, 12, 31, 23, 30)), utc(2027, 1, 1, 23, 0));
  ck_assert_int_eq(next("daily 01:00", utc(2028, 2, 28, 12, 0)), utc(2028, 2, 29, 0, 0));
}
END_TEST

/* 29 March 2026: 02:00 CET becomes 03:00 CEST; 02:00-02:59 do not exist. */
START_TEST(test_schedule_spring)
{
  berlin();
  int64_t noon = utc(2026, 3, 28, 11, 0);
  /* A time after the jump: in summer time the same day. */
  ck_assert_int_eq(next("daily 03:00", noon), utc(2026, 3, 29, 1, 0));
  ck_assert_int_eq(next("daily 04:00", noon + 24 * H), utc(2026, 3, 30, 2, 0));
  /* A time that does not exist fires once that day, in the hour after. */
  int64_t a = next("daily 02:30", noon);
  ck_assert_msg(a >= utc(2026, 3, 29, 0, 30) && a <= utc(2026, 3, 29, 1, 30),
                "daily 02:30 on the day of the jump fired at %lld", (long long)a);
  ck_assert_int_eq(next("daily 02:30", a), utc(2026, 3, 30, 0, 30));
  /* Hourly: every hour of real time, 01:00 CET is followed by 03:00 CEST. */
  ck_assert_int_eq(next("hourly", utc(2026, 3, 29, 0, 10)), utc(2026, 3, 29, 1, 0));
  ck_assert_int_eq(next("hourly", utc(2026, 3, 29, 1, 0)), utc(2026, 3, 29, 2, 0));
  /* every: real time, whatever the clock on the wall says */
  ck_assert_int_eq(next("every 1h", utc(2026, 3, 29, 0, 30)), utc(2026, 3, 29, 1, 30));
}
END_TEST

/* 25 October 2026: 03:00 CEST becomes 02:00 CET; 02:00-02:59 happen twice. */
START_TEST(test_schedule_autumn)
{
  berlin();
  int64_t noon = utc(2026, 10, 24, 10, 0);
  /* A time in the repeated hour fires once that day, not twice. */
  int64_t a = next("daily 02:30", noon);
  ck_assert_msg(a == utc(2026, 10, 25, 0, 30) || a == utc(2026, 10, 25, 1, 30),
                "daily 02:30 fired at %lld", (long long)a);
  ck_assert_int_eq(next("daily 02:30", a), utc(2026, 10, 26, 1, 30));
  ck_assert_int_eq(next("daily 03:00", noon), utc(2026, 10, 25, 2, 0));
  ck_assert_int_eq(next("weekly sun 02:30", a), utc(2026, 11, 1, 1, 30));
  /* Hourly: each of the 25 hours of the day, the repeated 02:00 included. */
  int64_t t = utc(2026, 10, 24, 22, 0); /* 00:00 CEST */
  for (int i = 1; i <= 25; i++) {
    int64_t n = next("hourly", t);
    ck_assert_msg(n == t + H, "hourly after %lld gave %lld, not the next hour", (long long)t,
                  (long long)n);
    t = n;
  }
  ck_assert_int_eq(t, utc(2026, 10, 25, 23, 0)); /* 00:00 CET the next day */
}
END_TEST

/* ---- rule paths ------------------------------------------------------------------- */

START_TEST(test_rule_paths)
{
  static const struct {
    const char *pattern, *path;
    bool match;
  } cases[] = {
      {"/Windows/System32/drivers/etc/hosts", "/Windows/System32/drivers/etc/hosts", true},
      {"/Windows/System32/drivers/etc/hosts", "/Windows/System32/drivers/etc/hosts2", false},
      {"/Windows/*.exe", "/Windows/a.exe", true},
      {"/Windows/*.exe", "/Windows/sub/a.exe", false}, /* '*' stays in a directory */
      {"/Windows/Temp/[!~]*.exe", "/Windows/Temp/x.exe", true},
      {"/Windows/Temp/[!~]*.exe", "/Windows/Temp/~x.exe", false},
      {"/**/*.exe", "/a.exe", true}, /* zero directories */
      {"/**/*.exe", "/a/b/c/d.exe", true},
      {"/**/*.exe", "/a/b/c/d.exee", false},
      {"/Users/**/Desktop/*.lnk", "/Users/bob/Desktop/x.lnk", true},
      {"/Users/**/Desktop/*.lnk", "/Users/Desktop/x.lnk", true},
      {"/Users/**/Desktop/*.lnk", "/Users/a/b/Desktop/x.lnk", true},
      {"/Users/**/Desktop/*.lnk", "/Users/a/Desktop/b/x.lnk", false},
      {"/Users/**/Desktop/*.lnk", "/Other/a/Desktop/x.lnk", false},
      {"/a/**", "/a/b/c", true}, /* a trailing ** matches everything below */
      {"/a/**", "/b/c", false},
      {"/a/**/b", "/a/xb", false},    /* whole components only */
      {"/a/x**/b", "/a/xyz/b", true}, /* not a "**" component: a '*' */
      {"/a/x**/b", "/a/x/y/b", false},
      {"/**/**/z", "/z", true},
      {"/**/**/z", "/a/b/z", true},
      {"/*", "/", true},
      {"a/*", "a/b", false}, /* relative: never */
      {"/a/*", "a/b", false},
      {"/A/b", "/a/b", false}, /* case-sensitive */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    ck_assert_msg(tb_rule_path_match(cases[i].pattern, cases[i].path) == cases[i].match,
                  "pattern %s, path %s: expected %s", cases[i].pattern, cases[i].path,
                  cases[i].match ? "a match" : "no match");
}
END_TEST

/* ---- CIDR and allow lists --------------------------------------------------------- */

static struct sockaddr_in6 sa6(const char *text)
{
  struct sockaddr_in6 a = {.sin6_family = AF_INET6};
  ck_assert_int_eq(inet_pton(AF_INET6, text, &a.sin6_addr), 1);
  return a;
}

static struct sockaddr_in sa4(const char *text)
{
  struct sockaddr_in a = {.sin_family = AF_INET};
  ck_assert_int_eq(inet_pton(AF_INET, text, &a.sin_addr), 1);
  return a;
}

static bool match4(const char *net, const char *addr)
{
  struct tb_cidr c;
  ck_assert_msg(tb_cidr_parse(net, &c) == 0, "%s: %s", net, tb_errmsg());
  struct sockaddr_in a = sa4(addr);
  return tb_cidr_match(&c, (struct sockaddr *)&a);
}

static bool match6(const char *net, const char *addr)
{
  struct tb_cidr c;
  ck_assert_msg(tb_cidr_parse(net, &c) == 0, "%s: %s", net, tb_errmsg());
  struct sockaddr_in6 a = sa6(addr);
  return tb_cidr_match(&c, (struct sockaddr *)&a);
}

START_TEST(test_cidr)
{
  ck_assert(match4("10.0.0.0/8", "10.255.1.2"));
  ck_assert(!match4("10.0.0.0/8", "11.0.0.1"));
  ck_assert(match4("192.168.1.128/25", "192.168.1.200"));
  ck_assert(!match4("192.168.1.128/25", "192.168.1.127"));
  ck_assert(match4("192.168.1.7", "192.168.1.7")); /* no prefix: /32 */
  ck_assert(!match4("192.168.1.7", "192.168.1.8"));
  ck_assert(match4("0.0.0.0/0", "203.0.113.9"));
  ck_assert(match4("10.1.2.3/31", "10.1.2.2")); /* host bits in the network are ignored */
  ck_assert(match6("fd00::/8", "fd12:3456::1"));
  ck_assert(!match6("fd00::/8", "fe80::1"));
  ck_assert(match6("::1", "::1"));
  ck_assert(match6("2001:db8::/33", "2001:db8:7fff::1"));
  ck_assert(!match6("2001:db8::/33", "2001:db8:8000::1"));
  /* An IPv4-mapped IPv6 peer matches IPv4 networks, not IPv6 ones. */
  ck_assert(match6("10.0.0.0/8", "::ffff:10.1.2.3"));
  ck_assert(!match6("10.0.0.0/8", "::ffff:11.1.2.3"));
  ck_assert(!match4("::/0", "10.0.0.1"));
  struct tb_cidr c;
  static const char *const bad[] = {"10.0.0.0/33",  "::1/129", "10.0.0.0/",   "10.0.0.0/-1",
                                    "10.0.0.0/8x",  "10.0.0",  "example.org", "",
                                    "10.0.0.0/08/1"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    ck_assert_msg(tb_cidr_parse(bad[i], &c) == -1, "\"%s\" parsed", bad[i]);
  char longer[300];
  memset(longer, '1', sizeof longer - 1);
  longer[sizeof longer - 1] = '\0';
  ck_assert_int_eq(tb_cidr_parse(longer, &c), -1);
}
END_TEST

START_TEST(test_allow_lists)
{
  struct tb_config *cfg = tb_config_parse(
      "{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"clients\": {"
      "\"a\": {\"image\": \"d\", \"allow\": [\"unix\", \"10.0.0.0/24\", \"fd00::/8\"]},"
      "\"b\": {\"image\": \"d\", \"allow\": []},"
      "\"c\": {\"image\": \"d\"}}}",
      "allow");
  ck_assert_msg(cfg != NULL, "%s", tb_errmsg());
  const struct tb_client_conf *a = tb_config_client(cfg, "a"), *b = tb_config_client(cfg, "b"),
                              *c = tb_config_client(cfg, "c");
  struct sockaddr_in in = sa4("10.0.0.77"), out = sa4("10.0.1.77"), lo = sa4("127.0.0.1");
  struct sockaddr_in6 in6 = sa6("fd00::5"), lo6 = sa6("::1");
  ck_assert(tb_acl_allows(&a->allow, NULL));
  ck_assert(tb_acl_allows(&a->allow, (struct sockaddr *)&in));
  ck_assert(!tb_acl_allows(&a->allow, (struct sockaddr *)&out));
  ck_assert(tb_acl_allows(&a->allow, (struct sockaddr *)&in6));
  ck_assert(!tb_acl_allows(&a->allow, (struct sockaddr *)&lo));
  /* An empty list allows nobody; no list: the unix socket and loopback. */
  ck_assert(!tb_acl_allows(&b->allow, NULL));
  ck_assert(!tb_acl_allows(&b->allow, (struct sockaddr *)&lo));
  ck_assert(tb_acl_allows(&c->allow, NULL));
  ck_assert(tb_acl_allows(&c->allow, (struct sockaddr *)&lo));
  ck_assert(tb_acl_allows(&c->allow, (struct sockaddr *)&lo6));
  ck_assert(!tb_acl_allows(&c->allow, (struct sockaddr *)&in));
  tb_config_unref(cfg);
  static const char *const bad[] = {"[\"10.0.0.0/40\"]", "[\"unix:x\"]", "\"unix\"", "[5]"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char text[256];
    snprintf(text, sizeof text,
             "{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"clients\": "
             "{\"a\": {\"image\": \"d\", \"allow\": %s}}}",
             bad[i]);
    cfg = tb_config_parse(text, "allow");
    ck_assert_msg(cfg == NULL, "allow %s parsed", bad[i]);
    ck_assert_msg(strstr(tb_errmsg(), "clients.a.allow") != NULL, "allow %s: %s", bad[i],
                  tb_errmsg());
  }
}
END_TEST

/* ---- regions ----------------------------------------------------------------------- */

START_TEST(test_regions)
{
  struct tb_region r;
  static const char *const bad[] = {"partition:0",
                                    "partition:129",
                                    "partition:1x",
                                    "lba:5-4",
                                    "lba:1",
                                    "lba:-1-3",
                                    "lba:1-2x",
                                    "sector:1",
                                    "",
                                    "partition:",
                                    "lba:0-36028797018963968"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    ck_assert_msg(tb_region_parse(bad[i], true, &r) == -1, "\"%s\" parsed", bad[i]);
  ck_assert_int_eq(tb_region_parse("mbr", false, &r), -1); /* tables only where allowed */
  ck_assert_int_eq(tb_region_parse("gpt", false, &r), -1);
  ck_assert_int_eq(tb_region_parse("partition:128", false, &r), 0);
  ck_assert_int_eq(r.partition, 128);

  uint64_t off[2], len[2];
  int n;
  const uint64_t size = 1 << 20; /* 2048 sectors */
  ck_assert_int_eq(tb_region_parse("mbr", true, &r), 0);
  ck_assert_int_eq(tb_region_resolve(&r, "/nonexistent", size, off, len, &n), 0);
  ck_assert_int_eq(n, 1);
  ck_assert_uint_eq(off[0], 0);
  ck_assert_uint_eq(len[0], 512);
  ck_assert_int_eq(tb_region_parse("gpt", true, &r), 0);
  ck_assert_int_eq(tb_region_resolve(&r, "/nonexistent", size, off, len, &n), 0);
  ck_assert_int_eq(n, 2);
  ck_assert_uint_eq(len[0], 34 * 512);
  ck_assert_uint_eq(off[1], size - 33 * 512);
  ck_assert_uint_eq(len[1], 33 * 512);
  /* A disk too small for two tables: the primary only, clipped. */
  ck_assert_int_eq(tb_region_resolve(&r, "/nonexistent", 20 * 512, off, len, &n), 0);
  ck_assert_int_eq(n, 1);
  ck_assert_uint_eq(len[0], 20 * 512);
  /* LBA ranges are inclusive and clipped to the disk. */
  ck_assert_int_eq(tb_region_parse("lba:2040-3000", true, &r), 0);
  ck_assert_int_eq(tb_region_resolve(&r, "/nonexistent", size, off, len, &n), 0);
  ck_assert_int_eq(n, 1);
  ck_assert_uint_eq(off[0], 2040 * 512);
  ck_assert_uint_eq(len[0], 8 * 512);
  ck_assert_int_eq(tb_region_parse("lba:2048-2048", true, &r), 0);
  ck_assert_int_eq(tb_region_resolve(&r, "/nonexistent", size, off, len, &n), 0);
  ck_assert_int_eq(n, 0); /* past the end: nothing */
  ck_assert_int_eq(tb_region_parse("lba:7-7", true, &r), 0);
  ck_assert_int_eq(tb_region_resolve(&r, "/nonexistent", size, off, len, &n), 0);
  ck_assert_uint_eq(len[0], 512);
  /* A partition of an image that cannot be read is an error naming it. */
  ck_assert_int_eq(tb_region_parse("partition:2", true, &r), 0);
  ck_assert_int_eq(tb_region_resolve(&r, "/nonexistent/disk.img", size, off, len, &n), -1);
  ck_assert_msg(strstr(tb_errmsg(), "/nonexistent/disk.img") != NULL, "%s", tb_errmsg());
}
END_TEST

/* ---- manifests ------------------------------------------------------------------- */

#define HASH "\"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\""

static struct tb_manifest *manifest(const char *fields, const char *chunks)
{
  char text[4096];
  snprintf(text, sizeof text,
           "{\"image\": \"demo\", \"version\": 3, \"sha256\": " HASH
           ", \"chunk_size\": 4194304, %s, \"chunks\": [%s]}",
           fields, chunks);
  return tb_manifest_parse(text, strlen(text), "m");
}

START_TEST(test_manifests)
{
  struct tb_manifest *m =
      manifest("\"size\": 4194305, \"parent\": 2, \"note\": \"n\"", HASH ", " HASH);
  ck_assert_msg(m != NULL, "%s", tb_errmsg());
  ck_assert_str_eq(m->image, "demo");
  ck_assert_uint_eq(m->version, 3);
  ck_assert_uint_eq(m->n_chunks, 2);
  ck_assert_uint_eq(m->parent, 2);
  ck_assert_str_eq(m->note, "n");
  ck_assert_uint_eq(m->chunks[1][31], 0xff);
  tb_manifest_free(m);
  /* Exactly one hash per chunk: 4 MiB is one, 4 MiB + 1 two.  No version is
   * empty (tb_version_commit refuses one), so size 0 is as wrong here as in a
   * repository's index: one rule for both (lib/manifest.c). */
  m = manifest("\"size\": 4194304", HASH);
  ck_assert_msg(m != NULL, "%s", tb_errmsg());
  tb_manifest_free(m);
  static const struct {
    const char *fields, *chunks, *msg;
  } bad[] = {
      {"\"size\": 4194305", HASH, "one hash per chunk"},
      {"\"size\": 1", HASH ", " HASH, "one hash per chunk"},
      {"\"size\": -1", "", "\"size\""},
      {"\"size\": 0", "", "\"size\""},
      {"\"size\": 1125899906842625", "", "\"size\""},
      {"\"size\": 1, \"sha265\": 1", HASH, "m.sha265: unknown key"},
      {"\"size\": 1, \"file\": \"3.img\"", HASH, "m.file: unknown key"},
      {"\"size\": \"1\"", "", "\"size\""},
      {"\"size\": 1", "\"00\"", "chunk hash"},
      {"\"size\": 1", "5", "chunk hash"},
      {"\"size\": 1, \"parent\": -2", HASH, "\"parent\""},
      {"\"size\": 1, \"note\": 5", HASH, "\"note\""},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    m = manifest(bad[i].fields, bad[i].chunks);
    ck_assert_msg(m == NULL, "%s [%s] parsed", bad[i].fields, bad[i].chunks);
    ck_assert_msg(strstr(tb_errmsg(), bad[i].msg) != NULL, "%s: %s", bad[i].fields, tb_errmsg());
  }
  static const char *const whole[] = {
      "",
      "[]",
      "{\"image\": \"../x\", \"version\": 1}",
      "{\"image\": \"d\", \"version\": 0}",
      "{\"image\": \"d\", \"version\": 4294967296}",
      "{\"image\": \"d\", \"version\": 1, \"size\": 1, \"sha256\": \"xyz\"}",
      "{\"image\": \"d\", \"version\": 1, \"size\": 1, \"sha256\": " HASH
      ", \"chunk_size\": 3000, \"chunks\": []}",
      "{\"image\": \"d\", \"version\": 1, \"size\": 1, \"sha256\": " HASH
      ", \"chunk_size\": 4096}"};
  for (size_t i = 0; i < sizeof whole / sizeof whole[0]; i++) {
    m = tb_manifest_parse(whole[i], strlen(whole[i]), "m");
    ck_assert_msg(m == NULL, "%s parsed", whole[i]);
    ck_assert_msg(strncmp(tb_errmsg(), "m: ", 3) == 0, "%s: %s", whole[i], tb_errmsg());
  }
}
END_TEST

/* ---- partition tables in memory ------------------------------------------------- */

struct mem {
  uint8_t *b;
  uint64_t size;
  unsigned reads;
};

static int mem_read(void *opaque, void *buf, size_t len, uint64_t off)
{
  struct mem *m = opaque;
  m->reads++;
  ck_assert_msg(off <= m->size && len <= m->size - off, "read of %zu at %llu outside the disk", len,
                (unsigned long long)off);
  memcpy(buf, m->b + off, len);
  return 0;
}

static int failing_read(void *opaque, void *buf, size_t len, uint64_t off)
{
  errno = EIO;
  return -1;
}

static void put32(uint8_t *p, uint32_t v)
{
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static void entry(uint8_t *sector, int slot, uint8_t type, uint32_t start, uint32_t n)
{
  uint8_t *e = sector + 446 + 16 * slot;
  e[4] = type;
  put32(e + 8, start);
  put32(e + 12, n);
  sector[510] = 0x55;
  sector[511] = 0xAA;
}

/* The growable array: doubling keeps every element, in order, and a
 * refused size leaves the vector as it was. */
START_TEST(test_vector)
{
  TB_VECTOR(, uint32_t) v = {0};
  for (uint32_t i = 0; i < 1000; i++)
    ck_assert_int_eq(tb_vector_push(&v, i * 7), 0);
  ck_assert_uint_eq(v.len, 1000);
  ck_assert_uint_ge(v.cap, 1000);
  for (uint32_t i = 0; i < 1000; i++)
    ck_assert_uint_eq(v.ptr[i], i * 7);
  uint32_t *before = v.ptr;
  /* LEN + N wraps around: refused before any allocation. */
  volatile size_t huge = SIZE_MAX;
  ck_assert_int_eq(tb_vector_reserve(&v, huge), -1);
  ck_assert(v.ptr == before && v.len == 1000);
  ck_assert_msg(strstr(tb_errmsg(), "out of memory"), "%s", tb_errmsg());
  tb_vector_free(&v);
  ck_assert(v.ptr == NULL && v.len == 0 && v.cap == 0);
}
END_TEST

START_TEST(test_ptable_memory)
{
  struct tb_ptable *t = malloc(sizeof *t);
  ck_assert_ptr_nonnull(t);
  struct mem m = {calloc(1, 1 << 20), 1 << 20, 0};
  ck_assert_ptr_nonnull(m.b);
  /* Nothing: no table, no error. */
  ck_assert_int_eq(tb_ptable_read(mem_read, &m, m.size, t), 0);
  ck_assert_int_eq(t->kind, TB_PTABLE_NONE);
  ck_assert_uint_eq(t->n, 0);
  /* A disk smaller than a sector is never read. */
  m.reads = 0;
  ck_assert_int_eq(tb_ptable_read(mem_read, &m, 100, t), 0);
  ck_assert_uint_eq(m.reads, 0);
  /* Primaries and a 255-link extended chain: partitions 5.., bounded. */
  entry(m.b, 0, 0x83, 8, 8);
  entry(m.b, 1, 0x05, 64, 1500);
  for (uint32_t k = 0; k < 255; k++) {
    uint32_t at = 64 + 4 * k;
    entry(m.b + at * 512, 0, 0x83, 1, 1);
    if (k < 254)
      entry(m.b + at * 512, 1, 0x05, 4 * (k + 1), 4);
  }
  ck_assert_int_eq(tb_ptable_read(mem_read, &m, m.size, t), 0);
  ck_assert_int_eq(t->kind, TB_PTABLE_MBR);
  ck_assert_uint_eq(t->n, TB_PTABLE_MAX); /* 1 primary + 255 logicals */
  ck_assert_uint_eq(tb_ptable_find(t, 1)->offset, 8 * 512);
  ck_assert_uint_eq(tb_ptable_find(t, 5)->offset, 65 * 512);
  ck_assert_uint_eq(tb_ptable_find(t, 6)->offset, 69 * 512);
  ck_assert_ptr_null(tb_ptable_find(t, 2)); /* the extended partition itself */
  ck_assert_ptr_null(tb_ptable_find(t, 3));
  /* The same disk cut in the middle of the chain: what lies inside only. */
  m.reads = 0;
  ck_assert_int_eq(tb_ptable_read(mem_read, &m, 100 * 512, t), 0);
  ck_assert_uint_eq(t->n, 1 + 9); /* records at 64, 68 ... 96 */
  /* A failing read is an error. */
  ck_assert_int_eq(tb_ptable_read(failing_read, NULL, m.size, t), -1);
  free(m.b);
  free(t);
}
END_TEST

static Suite *pure_suite(void)
{
  Suite *s = suite_create("pure");
  TCase *tc = tcase_create("schedule");
  tcase_add_test(tc, test_schedule_parse);
  tcase_add_test(tc, test_schedule_plain);
  tcase_add_test(tc, test_schedule_spring);
  tcase_add_test(tc, test_schedule_autumn);
  suite_add_tcase(s, tc);
  tc = tcase_create("parsers");
  tcase_add_test(tc, test_rule_paths);
  tcase_add_test(tc, test_cidr);
  tcase_add_test(tc, test_allow_lists);
  tcase_add_test(tc, test_regions);
  tcase_add_test(tc, test_manifests);
  tcase_add_test(tc, test_vector);
  tcase_add_test(tc, test_ptable_memory);
  suite_add_tcase(s, tc);
  return s;
}

int main(void)
{
  return tb_check_run(pure_suite());
}
