/* SPDX-License-Identifier: BSD-3-Clause */
/* repo-config: the config's "pull" section (lib/repo-pullconf.c), checked strictly:
 * every mistake is refused with a message that starts with its JSON path. */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <jansson.h>

#include "repo.h"
#include "check-run.h"

static json_t *parse(const char *text)
{
  json_error_t err;
  json_t *j = json_loads(text, JSON_DECODE_ANY, &err);
  ck_assert_msg(j != NULL, "bad test JSON: %s", err.text);
  return j;
}

/* The section must be refused with a message starting with PREFIX. */
static void refused(const char *text, const char *prefix)
{
  json_t *j = parse(text);
  ck_assert_int_eq(tb_repo_pull_config_validate(j, "pull"), -1);
  ck_assert_msg(strncmp(tb_errmsg(), prefix, strlen(prefix)) == 0,
                "%s: message \"%s\" does not start with \"%s\"", text, tb_errmsg(), prefix);
  json_decref(j);
}

START_TEST(full_section_accepted)
{
  json_t *j = parse("{\"from\": \"https://repo.example/tabula\", \"images\": [\"win11\"],"
                    " \"when\": \"daily 03:00\", \"make_current\": true,"
                    " \"rate_limit\": \"50M\", \"parallel\": 8, \"connect_timeout\": \"5s\","
                    " \"stall_timeout\": 20, \"max_redirects\": 3, \"max_index_size\": \"1M\","
                    " \"ca_file\": \"/etc/ssl/certs/ca.pem\","
                    " \"s3\": {\"region\": \"eu-west-1\", \"endpoint\": \"https://rgw:7480\","
                    " \"access_key_id\": \"AK\", \"secret_access_key\": \"SK\","
                    " \"session_token\": \"T\", \"sign\": true}}");
  ck_assert_msg(tb_repo_pull_config_validate(j, "pull") == 0, "%s", tb_errmsg());
  struct tb_repo_pull_opts o;
  tb_repo_pull_opts_init(&o);
  ck_assert_int_eq(tb_repo_pull_opts_from_config(j, "win11", &o), 0);
  ck_assert_str_eq(o.url, "https://repo.example/tabula");
  ck_assert_uint_eq(o.rate_limit, 50u << 20);
  ck_assert_int_eq(o.parallel, 8);
  ck_assert_int_eq(o.connect_timeout_ms, 5000);
  ck_assert_int_eq(o.stall_timeout_ms, 20000);
  ck_assert_int_eq(o.max_redirects, 3);
  ck_assert_uint_eq(o.max_index_size, 1u << 20);
  ck_assert_str_eq(o.ca_file, "/etc/ssl/certs/ca.pem");
  ck_assert_str_eq(o.s3_region, "eu-west-1");
  ck_assert_str_eq(o.s3_endpoint, "https://rgw:7480");
  ck_assert_str_eq(o.s3_access_key_id, "AK");
  ck_assert(o.s3_sign);
  json_decref(j);
}
END_TEST

START_TEST(defaults)
{
  struct tb_repo_pull_opts o;
  tb_repo_pull_opts_init(&o);
  ck_assert_int_eq(tb_repo_pull_opts_from_config(NULL, "x", &o), 0);
  ck_assert_ptr_null(o.url);
  ck_assert_int_eq(o.parallel, TB_REPO_DEFAULT_PARALLEL);
  ck_assert_int_eq(o.stall_timeout_ms, TB_REPO_DEFAULT_STALL_TIMEOUT_MS);
  ck_assert_int_eq(o.max_redirects, TB_REPO_DEFAULT_MAX_REDIRECTS);
  ck_assert_uint_eq(o.rate_limit, 0);
}
END_TEST

START_TEST(array_of_sources_picks_by_image)
{
  json_t *j = parse("[{\"from\": \"http://a/\", \"images\": [\"win11\"]},"
                    " {\"from\": \"s3://bucket/images\", \"rate_limit\": 1000}]");
  ck_assert_msg(tb_repo_pull_config_validate(j, "pull") == 0, "%s", tb_errmsg());
  struct tb_repo_pull_opts o;
  tb_repo_pull_opts_init(&o);
  ck_assert_int_eq(tb_repo_pull_opts_from_config(j, "win11", &o), 0);
  ck_assert_str_eq(o.url, "http://a/");
  tb_repo_pull_opts_init(&o);
  ck_assert_int_eq(tb_repo_pull_opts_from_config(j, "ubuntu", &o), 0);
  ck_assert_str_eq(o.url, "s3://bucket/images");
  ck_assert_uint_eq(o.rate_limit, 1000);
  json_decref(j);
  refused("[{\"from\": \"http://a/\"}, {\"from\": 3}]", "pull[1].from: expected");
}
END_TEST

START_TEST(mistakes_named_by_path)
{
  refused("\"http://x\"", "pull: expected an object");
  refused("{\"form\": \"http://x\"}", "pull.form: unknown key");
  refused("{\"from\": \"ftp://x\"}", "pull.from: expected an http://, https:// or s3:// URL");
  refused("{\"images\": \"win11\"}", "pull.images: expected an array");
  refused("{\"images\": [\"../etc\"]}", "pull.images[0]: expected an image name");
  refused("{\"when\": 3}", "pull.when: expected a schedule");
  refused("{\"when\": \"nightly\"}", "pull.when: ");
  refused("{\"make_current\": \"yes\"}", "pull.make_current: expected true or false");
  refused("{\"rate_limit\": \"fast\"}", "pull.rate_limit: expected a size");
  refused("{\"parallel\": 0}", "pull.parallel: expected an integer from 1 to 32");
  refused("{\"parallel\": 33}", "pull.parallel: expected an integer from 1 to 32");
  refused("{\"stall_timeout\": \"100ms\"}", "pull.stall_timeout: expected a duration");
  refused("{\"connect_timeout\": \"soon\"}", "pull.connect_timeout: expected a duration");
  refused("{\"max_redirects\": -1}", "pull.max_redirects: expected an integer");
  refused("{\"max_index_size\": 10}", "pull.max_index_size: must be at least 4K");
  refused("{\"ca_file\": 1}", "pull.ca_file: expected the path");
  refused("{\"s3\": []}", "pull.s3: expected an object");
  refused("{\"s3\": {\"bucket\": \"b\"}}", "pull.s3.bucket: unknown key");
  refused("{\"s3\": {\"region\": \"eu west\"}}", "pull.s3.region: expected a region name");
  refused("{\"s3\": {\"endpoint\": \"rgw:7480\"}}", "pull.s3.endpoint: expected an http");
  refused("{\"s3\": {\"access_key_id\": \"AK\"}}", "pull.s3: access_key_id and "
                                                   "secret_access_key go together");
  refused("{\"s3\": {\"sign\": 1}}", "pull.s3.sign: expected true or false");
}
END_TEST

int main(void)
{
  Suite *s = suite_create("repo-config");
  TCase *tc = tcase_create("pull");
  tcase_add_test(tc, full_section_accepted);
  tcase_add_test(tc, defaults);
  tcase_add_test(tc, array_of_sources_picks_by_image);
  tcase_add_test(tc, mistakes_named_by_path);
  suite_add_tcase(s, tc);
  return tb_check_run(s);
}
