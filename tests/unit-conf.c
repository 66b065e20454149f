/* SPDX-License-Identifier: BSD-3-Clause */
/* Unit tests of lib/conf.c: the example of issue 3 parses with the right
 * defaults, groups merge, and every kind of bad input is refused with a
 * message that starts with the JSON path of the offending value. */
#include <config.h>

#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "check-run.h"

static const char *example =
    "{\n"
    "  \"state_dir\": \"/var/lib/tabula\",\n"
    "  \"block_size\": 4096,\n"
    "  \"images\": { \"demo\": {} },\n"
    "  \"clients\": {\n"
    "    \"pc01\": { \"image\": \"demo\", \"policy\": \"rollback\", \"keep_sessions\": 2, "
    "\"allow\": [\"127.0.0.1/32\", \"unix\"] },\n"
    "    \"vm01\": { \"image\": \"demo\", \"policy\": \"persist\" }\n"
    "  }\n"
    "}\n";

START_TEST(test_example)
{
  struct tb_config *cfg = tb_config_parse(example, "example");
  ck_assert_msg(cfg != NULL, "%s", tb_errmsg());
  ck_assert_str_eq(cfg->state_dir, "/var/lib/tabula");
  ck_assert_uint_eq(cfg->block_size, 4096);
  ck_assert_uint_eq(cfg->n_clients, 2);
  const struct tb_client_conf *pc = tb_config_client(cfg, "pc01");
  ck_assert_ptr_nonnull(pc);
  ck_assert_int_eq(pc->policy, TB_POLICY_ROLLBACK);
  ck_assert_int_eq(pc->keep_sessions, 2);
  ck_assert(pc->allow.unix_socket);
  ck_assert_uint_eq(pc->allow.nets.len, 1);
  const struct tb_client_conf *vm = tb_config_client(cfg, "vm01");
  ck_assert_int_eq(vm->policy, TB_POLICY_PERSIST);
  ck_assert_uint_eq(vm->version, 0);
  ck_assert(vm->allow.unix_socket); /* default: unix socket and loopback */
  ck_assert_str_eq(cfg->listen_unix, "/var/lib/tabula/nbd.sock");
  ck_assert_str_eq(cfg->control, "/var/lib/tabula/control.sock");
  ck_assert_ptr_null(tb_config_client(cfg, "pc02"));
  tb_config_unref(cfg);
}
END_TEST

START_TEST(test_groups_and_acl)
{
  const char *text =
      "{\"state_dir\": \"/s\", \"images\": {\"a\": {}, \"b\": {}},"
      " \"groups\": {\"lab\": {\"image\": \"a\", \"policy\": \"persist\","
      "   \"allow\": [\"10.1.0.0/16\"], \"keep_sessions\": 5,"
      "   \"limits\": {\"read\": \"50M\", \"write\": \"20M/s\", \"read_iops\": 2000}}},"
      " \"clients\": {\"pc1\": {\"group\": \"lab\"},"
      "   \"pc2\": {\"group\": \"lab\", \"image\": \"b\", \"address\": \"10.1.2.3\","
      "     \"limits\": {\"write\": 1000, \"write_iops\": 50}}}}";
  struct tb_config *cfg = tb_config_parse(text, "t");
  ck_assert_msg(cfg != NULL, "%s", tb_errmsg());
  const struct tb_client_conf *p1 = tb_config_client(cfg, "pc1");
  const struct tb_client_conf *p2 = tb_config_client(cfg, "pc2");
  ck_assert_str_eq(p1->image, "a");
  ck_assert_str_eq(p2->image, "b");
  ck_assert_int_eq(p1->policy, TB_POLICY_PERSIST);
  ck_assert_int_eq(p2->keep_sessions, 5);
  ck_assert(!p1->allow.unix_socket);
  /* limits: the group's, merged key by key under the client's own */
  ck_assert_uint_eq(p1->limits.read_bps, 50ull << 20);
  ck_assert_uint_eq(p1->limits.write_bps, 20ull << 20);
  ck_assert_uint_eq(p1->limits.read_iops, 2000);
  ck_assert_uint_eq(p1->limits.write_iops, 0);
  ck_assert_uint_eq(p2->limits.read_bps, 50ull << 20);
  ck_assert_uint_eq(p2->limits.write_bps, 1000);
  ck_assert_uint_eq(p2->limits.read_iops, 2000);
  ck_assert_uint_eq(p2->limits.write_iops, 50);
  struct sockaddr_in in = {.sin_family = AF_INET};
  inet_pton(AF_INET, "10.1.200.1", &in.sin_addr);
  ck_assert(tb_acl_allows(&p1->allow, (struct sockaddr *)&in));
  inet_pton(AF_INET, "10.2.0.1", &in.sin_addr);
  ck_assert(!tb_acl_allows(&p1->allow, (struct sockaddr *)&in));
  ck_assert(!tb_acl_allows(&p1->allow, NULL)); /* unix not listed */
  ck_assert(p2->has_address);
  inet_pton(AF_INET, "10.1.2.3", &in.sin_addr);
  ck_assert(tb_cidr_match(&p2->address, (struct sockaddr *)&in));
  /* IPv4-mapped IPv6 peers match IPv4 networks. */
  struct sockaddr_in6 in6 = {.sin6_family = AF_INET6};
  inet_pton(AF_INET6, "::ffff:10.1.2.3", &in6.sin6_addr);
  ck_assert(tb_cidr_match(&p2->address, (struct sockaddr *)&in6));
  tb_config_unref(cfg);
}
END_TEST

/* A PXE lab: pxe defaults, a group's boot, a client's own cmdline, MACs in
 * any case stored lowercase, nbd_port from listen.tcp. */
#define PXE_HEAD                                                                                   \
  "{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"listen\": {\"tcp\": \"0.0.0.0:10900\"},"     \
  " \"pxe\": {\"interface\": \"tbbr0\", \"server\": \"10.20.0.1\", \"network\": \"10.20.0.0/24\"," \
  "   \"kernel\": \"/srv/vmlinuz\", \"initrd\": \"/srv/initrd.img\", \"cmdline\": \"quiet\"},"

START_TEST(test_pxe)
{
  const char *text = PXE_HEAD
      "\"groups\": {\"lab\": {\"image\": \"d\", \"boot\": {\"kernel\": \"/lab/vmlinuz\","
      " \"cmdline\": \"console=ttyS0\"}}},"
      " \"clients\": {\"pc1\": {\"group\": \"lab\", \"mac\": \"52:54:00:AB:cd:01\","
      "   \"address\": \"10.20.0.21\", \"boot\": {\"cmdline\": \"single\"}},"
      "  \"pc2\": {\"image\": \"d\", \"mac\": \"52:54:00:00:00:02\", \"address\": \"10.20.0.22\"},"
      "  \"vm\": {\"image\": \"d\", \"address\": \"127.0.0.5\"}}}";
  struct tb_config *cfg = tb_config_parse(text, "t");
  ck_assert_msg(cfg != NULL, "%s", tb_errmsg());
  ck_assert(cfg->pxe.enabled);
  ck_assert_str_eq(cfg->pxe.interface, "tbbr0");
  ck_assert_int_eq(cfg->pxe.nbd_port, 10900);
  ck_assert_str_eq(cfg->pxe.dnsmasq, "dnsmasq");
  ck_assert_str_eq(cfg->pxe.tftp_dir, "/s/pxe/tftp");
  ck_assert_ptr_null(cfg->pxe.unknown_first);
  const struct tb_client_conf *p1 = tb_config_client(cfg, "pc1");
  ck_assert(p1->has_mac);
  ck_assert_str_eq(p1->mac, "52:54:00:ab:cd:01");
  ck_assert_str_eq(p1->boot_kernel, "/lab/vmlinuz");    /* the group's */
  ck_assert_str_eq(p1->boot_initrd, "/srv/initrd.img"); /* pxe's */
  ck_assert_str_eq(p1->boot_cmdline, "single");         /* its own, over the group's */
  const struct tb_client_conf *p2 = tb_config_client(cfg, "pc2");
  ck_assert_str_eq(p2->boot_kernel, "/srv/vmlinuz");
  ck_assert_str_eq(p2->boot_cmdline, "quiet");
  ck_assert(!tb_config_client(cfg, "vm")->has_mac); /* no mac: not checked against pxe */
  /* A PXE client may connect from its lease's address (and, as every client, unix/loopback). */
  struct sockaddr_in in = {.sin_family = AF_INET};
  inet_pton(AF_INET, "10.20.0.21", &in.sin_addr);
  ck_assert(tb_acl_allows(&p1->allow, (struct sockaddr *)&in));
  ck_assert(!tb_acl_allows(&p2->allow, (struct sockaddr *)&in));
  ck_assert(p1->allow.unix_socket);
  ck_assert_ptr_eq(tb_config_client_by_mac(cfg, "52:54:00:ab:CD:01"), p1);
  ck_assert_ptr_null(tb_config_client_by_mac(cfg, "52:54:00:ab:cd:09"));
  ck_assert_ptr_null(tb_config_client_by_mac(cfg, "nonsense"));
  tb_config_unref(cfg);

  /* nbd_port defaults to 10809 without listen.tcp; unknown_range parses. */
  cfg =
      tb_config_parse("{\"state_dir\": \"/s\", \"images\": {}, \"pxe\": {\"interface\": \"e0\","
                      " \"server\": \"10.9.0.1\", \"network\": \"10.9.0.0/16\", \"unknown_range\":"
                      " \"10.9.1.1,10.9.1.9\", \"nbd_port\": 10811}}",
                      "t");
  ck_assert_msg(cfg != NULL, "%s", tb_errmsg());
  ck_assert_int_eq(cfg->pxe.nbd_port, 10811);
  ck_assert_str_eq(cfg->pxe.unknown_first, "10.9.1.1");
  ck_assert_str_eq(cfg->pxe.unknown_last, "10.9.1.9");
  tb_config_unref(cfg);

  /* boot.mode "iscsi" (a group's): iPXE sanboots the target, no kernel needed. */
  cfg = tb_config_parse(
      "{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"listen\": {\"iscsi\": \"0.0.0.0:3260\"},"
      " \"pxe\": {\"interface\": \"e0\", \"server\": \"10.9.0.1\", \"network\": \"10.9.0.0/24\"},"
      " \"groups\": {\"win\": {\"image\": \"d\", \"boot\": {\"mode\": \"iscsi\"}}},"
      " \"clients\": {\"pc7\": {\"group\": \"win\", \"mac\": \"52:54:00:00:00:07\","
      "   \"address\": \"10.9.0.7\"}}}",
      "t");
  ck_assert_msg(cfg != NULL, "%s", tb_errmsg());
  ck_assert(tb_config_client(cfg, "pc7")->boot_iscsi);
  ck_assert_ptr_null(tb_config_client(cfg, "pc7")->boot_kernel);
  tb_config_unref(cfg);
  cfg = tb_config_parse("{\"state_dir\": \"/s\", \"images\": {}, \"pxe\": {\"interface\": \"e0\","
                        " \"server\": \"10.9.0.1\", \"network\": \"10.9.0.0/16\"}}",
                        "t");
  ck_assert_msg(cfg != NULL, "%s", tb_errmsg());
  ck_assert_int_eq(cfg->pxe.nbd_port, 10809);
  tb_config_unref(cfg);

  char mac[18];
  ck_assert_int_eq(tb_mac_parse("AA:BB:CC:DD:EE:FF", mac), 0);
  ck_assert_str_eq(mac, "aa:bb:cc:dd:ee:ff");
  ck_assert_int_eq(tb_mac_parse("aa-bb-cc-dd-ee-ff", mac), -1);
  ck_assert_int_eq(tb_mac_parse("aa:bb:cc:dd:ee:fg", mac), -1);
  ck_assert_int_eq(tb_mac_parse("aa:bb:cc:dd:ee:f", mac), -1);
}
END_TEST

/* Each bad document and the text its error must contain. */
static const struct {
  const char *json;
  const char *expect;
} bad_cases[] = {
    {"{", "not valid JSON"},
    {"[]", "expected an object"},
    {"{\"images\": {}}", "state_dir: missing"},
    {"{\"state_dir\": 5, \"images\": {}}", "state_dir: expected a non-empty string, got 5"},
    {"{\"state_dir\": \"rel\", \"images\": {}}", "state_dir: expected an absolute path"},
    {"{\"state_dir\": \"/s\"}", "images: missing"},
    {"{\"state_dir\": \"/s\", \"images\": {}, \"bogus\": 1}", "bogus: unknown key"},
    {"{\"state_dir\": \"/s\", \"images\": {}, \"block_size\": 3000}",
     "block_size: expected a power of two from 512 to 1048576, got 3000"},
    {"{\"state_dir\": \"/s\", \"images\": {}, \"block_size\": 256}", "block_size: expected"},
    {"{\"state_dir\": \"/s\", \"images\": {}, \"block_size\": 2097152}", "block_size: expected"},
    {"{\"state_dir\": \"/s\", \"images\": {}, \"block_size\": \"4096\"}", "block_size: expected"},
    {"{\"state_dir\": \"/s\", \"images\": {\"../x\": {}}}", "images.../x: not a valid image name"},
    {"{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"clients\": {\"pc01\": {\"image\": \"d\", "
     "\"policy\": \"rollbak\"}}}",
     "clients.pc01.policy: expected \"rollback\" or \"persist\", got \"rollbak\""},
    {"{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"clients\": {\"pc01\": {\"image\": "
     "\"x\"}}}",
     "clients.pc01.image: image \"x\" is not listed"},
    {"{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"clients\": {\"pc01\": {}}}",
     "clients.pc01.image: missing"},
    {"{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"clients\": {\"pc01\": {\"image\": \"d\", "
     "\"polcy\": \"persist\"}}}",
     "clients.pc01.polcy: unknown key"},
    {"{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"clients\": {\"a/b\": {\"image\": \"d\"}}}",
     "clients.a/b: not a valid client id"},
    {"{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"clients\": {\"pc01\": {\"image\": \"d\", "
     "\"keep_sessions\": -1}}}",
     "clients.pc01.keep_sessions: expected an integer from 0 to 1000, got -1"},
    {"{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"clients\": {\"pc01\": {\"image\": \"d\", "
     "\"allow\": [\"300.1.1.1\"]}}}",
     "clients.pc01.allow[0]: \"300.1.1.1\" is not an IPv4 or IPv6 address"},
    {"{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"clients\": {\"pc01\": {\"image\": \"d\", "
     "\"allow\": \"unix\"}}}",
     "clients.pc01.allow: expected an array"},
    {"{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"clients\": {\"pc01\": {\"image\": \"d\", "
     "\"version\": \"3\"}}}",
     "clients.pc01.version: expected an integer"},
    {"{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"clients\": {\"pc01\": {\"image\": \"d\", "
     "\"group\": \"nope\"}}}",
     "clients.pc01.group: group \"nope\" is not defined"},
    {"{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"clients\": {\"pc01\": {\"image\": \"d\", "
     "\"preserve\": [\"partition:0\"]}}}",
     "clients.pc01.preserve[0]: expected \"partition:N\""},
    {"{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"clients\": {\"a\": {\"image\": \"d\", "
     "\"address\": \"10.0.0.1\"}, \"b\": {\"image\": \"d\", \"address\": \"10.0.0.1\"}}}",
     "clients.b.address: same address as client \"a\""},
    {"{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"clients\": {\"pc01\": {\"image\": \"d\", "
     "\"refresh\": \"daily 25:00\"}}}",
     "clients.pc01.refresh: "},
    /* A setting a client inherits is reported where it is written: its group. */
    {"{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"groups\": {\"lab\": {\"policy\": "
     "\"rollbak\"}}, \"clients\": {\"pc01\": {\"image\": \"d\", \"group\": \"lab\"}}}",
     "groups.lab.policy: expected \"rollback\" or \"persist\", got \"rollbak\" (inherited by "
     "client pc01)"},
    {"{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"groups\": {\"lab\": {\"limits\": "
     "{\"read\": \"fast\"}}}, \"clients\": {\"pc01\": {\"image\": \"d\", \"group\": \"lab\", "
     "\"limits\": {\"write\": \"1M\"}}}}",
     "groups.lab.limits.read: expected bytes per second"},
    /* ... and the client's own setting on the client. */
    {"{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"groups\": {\"lab\": {\"policy\": "
     "\"persist\"}}, \"clients\": {\"pc01\": {\"image\": \"d\", \"group\": \"lab\", "
     "\"keep_sessions\": -2}}}",
     "clients.pc01.keep_sessions: expected an integer"},
    {"{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"clients\": {\"pc01\": {\"image\": \"d\", "
     "\"limits\": {\"read_iops\": -1}}}}",
     "clients.pc01.limits.read_iops: expected an integer from 0"},
    {"{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"clients\": {\"pc01\": {\"image\": \"d\", "
     "\"limits\": {\"reads\": \"1M\"}}}}",
     "clients.pc01.limits.reads: unknown key"},
    /* The section's type only: its contents are the repository layer's
     * (tests/repo-config, checked by the daemon at load). */
    {"{\"state_dir\": \"/s\", \"images\": {}, \"pull\": 5}", "pull"},
    {"{\"state_dir\": \"/s\", \"images\": {}, \"listen\": {\"tcp\": \"10809\"}}",
     "listen.tcp: expected \"ADDR:PORT\""},
    {"{\"state_dir\": \"/s\", \"images\": {}, \"webhooks\": [{\"url\": \"ftp://x\"}]}",
     "webhooks[0].url: expected an http:// or https:// URL"},
    {"{\"state_dir\": \"/s\", \"state_dir\": \"/t\", \"images\": {}}", "duplicate"},
    /* PXE */
    {PXE_HEAD
     "\"clients\": {\"a\": {\"image\": \"d\", \"mac\": \"52:54:00:00:00:0A\", \"address\":"
     " \"10.20.0.5\"}, \"b\": {\"image\": \"d\", \"mac\": \"52:54:00:00:00:0a\", \"address\":"
     " \"10.20.0.6\"}}}",
     "clients.b.mac: MAC 52:54:00:00:00:0a is given to clients \"a\" and \"b\""},
    {PXE_HEAD "\"clients\": {\"a\": {\"image\": \"d\", \"mac\": \"52:54:00:00:00:0A\", \"address\":"
              " \"10.30.0.5\"}}}",
     "clients.a.address: client \"a\" has address 10.30.0.5, outside pxe.network 10.20.0.0/24"},
    {PXE_HEAD "\"clients\": {\"a\": {\"image\": \"d\", \"mac\": \"52:54:00:00:00:0A\"}}}",
     "clients.a.address: missing: a PXE client"},
    {PXE_HEAD "\"clients\": {\"a\": {\"image\": \"d\", \"mac\": \"52:54:00:00:00:0A\", \"address\":"
              " \"10.20.0.1\"}}}",
     "clients.a.address: 10.20.0.1 is pxe.server"},
    {PXE_HEAD "\"clients\": {\"a\": {\"image\": \"d\", \"mac\": \"52-54-00-00-00-0A\", \"address\":"
              " \"10.20.0.5\"}}}",
     "clients.a.mac: \"52-54-00-00-00-0A\" is not a MAC address"},
    {PXE_HEAD "\"clients\": {\"a\": {\"image\": \"d\", \"boot\": {\"kernal\": \"/k\"}}}}",
     "clients.a.boot.kernal: unknown key (allowed here: kernel, initrd, cmdline, mode)"},
    {PXE_HEAD "\"clients\": {\"a\": {\"image\": \"d\", \"boot\": {\"mode\": \"sanboot\"}}}}",
     "clients.a.boot.mode: expected \"nbd\" (a kernel and an initrd, root over NBD) or \"iscsi\""},
    {PXE_HEAD "\"clients\": {\"a\": {\"image\": \"d\", \"mac\": \"52:54:00:00:00:0A\", \"address\":"
              " \"10.20.0.5\", \"boot\": {\"mode\": \"iscsi\"}}}}",
     "clients.a.boot.mode: \"iscsi\" boots the client from tabula-iscsid, which needs "
     "listen.iscsi"},
    {PXE_HEAD "\"clients\": {\"a\": {\"image\": \"d\", \"boot\": {\"kernel\": \"vmlinuz\"}}}}",
     "clients.a.boot.kernel: expected an absolute path, got \"vmlinuz\""},
    {PXE_HEAD "\"groups\": {\"lab\": {\"boot\": {\"initrd\": 7}}}, \"clients\": {}}",
     "groups.lab.boot.initrd: expected an absolute path, got 7"},
    {PXE_HEAD "\"groups\": {\"lab\": {\"mac\": \"zz:54:00:00:00:0A\"}}, \"clients\": {}}",
     "groups.lab.mac: \"zz:54:00:00:00:0A\" is not a MAC address"},
    {PXE_HEAD "\"groups\": {\"lab\": {\"boot\": {\"cmdline\": \"a\\nb\"}}}, \"clients\": {}}",
     "groups.lab.boot.cmdline: the kernel command line must be one line"},
    {"{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"pxe\": {\"interface\": \"e0\", \"server\":"
     " \"10.9.0.1\", \"network\": \"10.9.0.0/24\"}, \"clients\": {\"a\": {\"image\": \"d\", "
     "\"mac\":"
     " \"52:54:00:00:00:0a\", \"address\": \"10.9.0.5\"}}}",
     "clients.a.boot.kernel: missing: PXE client \"a\" needs a kernel"},
    {"{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"pxe\": {\"interface\": \"e0\", \"server\":"
     " \"10.9.0.1\", \"network\": \"10.9.0.0/24\", \"kernel\": \"/k\"}, \"clients\": {\"a\":"
     " {\"image\": \"d\", \"mac\": \"52:54:00:00:00:0a\", \"address\": \"10.9.0.5\"}}}",
     "clients.a.boot.initrd: missing"},
    {"{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"clients\": {\"a\": {\"image\": \"d\","
     " \"mac\": \"52:54:00:00:00:0a\", \"address\": \"10.9.0.5\"}}}",
     "clients.a.mac: a client with a MAC boots over PXE, which needs the top-level \"pxe\""},
    {"{\"state_dir\": \"/s\", \"images\": {}, \"pxe\": {\"interface\": \"e0\", \"server\": "
     "\"10.9.0.1\"}}",
     "pxe.network: missing"},
    {"{\"state_dir\": \"/s\", \"images\": {}, \"pxe\": {\"interface\": \"e0\", \"server\": "
     "\"10.9.0.1\", \"network\": \"10.9.0.0/24\", \"dhcp\": 1}}",
     "pxe.dhcp: unknown key"},
    {"{\"state_dir\": \"/s\", \"images\": {}, \"pxe\": {\"interface\": \"e0\", \"server\": "
     "\"10.8.0.1\", \"network\": \"10.9.0.0/24\"}}",
     "pxe.server: 10.8.0.1 is outside pxe.network 10.9.0.0/24"},
    {"{\"state_dir\": \"/s\", \"images\": {}, \"pxe\": {\"interface\": \"e0\", \"server\": "
     "\"10.9.0.1\", \"network\": \"10.9.0.1\"}}",
     "pxe.network: expected an IPv4 network"},
    {"{\"state_dir\": \"/s\", \"images\": {}, \"pxe\": {\"interface\": \"e0\", \"server\": "
     "\"10.9.0.1\", \"network\": \"10.9.0.0/24\", \"unknown_range\": \"10.9.0.200\"}}",
     "pxe.unknown_range: expected \"FIRST,LAST\""},
    {"{\"state_dir\": \"/s\", \"images\": {}, \"pxe\": {\"interface\": \"e0\", \"server\": "
     "\"10.9.0.1\", \"network\": \"10.9.0.0/24\", \"unknown_range\": \"10.9.0.250,10.9.0.200\"}}",
     "pxe.unknown_range: 10.9.0.250 comes after 10.9.0.200"},
    {"{\"state_dir\": \"/s\", \"images\": {}, \"pxe\": {\"interface\": \"e0\", \"server\": "
     "\"10.9.0.1\", \"network\": \"10.9.0.0/24\", \"unknown_range\": \"10.9.0.2,10.9.1.2\"}}",
     "pxe.unknown_range: 10.9.1.2 is outside pxe.network"},
    {"{\"state_dir\": \"/s\", \"images\": {}, \"pxe\": {\"interface\": \"e0\", \"server\": "
     "\"10.9.0.1\", \"network\": \"10.9.0.0/24\", \"nbd_port\": 0}}",
     "pxe.nbd_port: expected an integer from 1 to 65535"},
    {"{\"state_dir\": \"/s\", \"images\": {}, \"pxe\": {\"interface\": \"a/b\", \"server\": "
     "\"10.9.0.1\", \"network\": \"10.9.0.0/24\"}}",
     "pxe.interface: expected a network interface name"},
    /* disks (conf.h) */
    {"{\"state_dir\": \"/s\", \"images\": {\"a\": {}}, \"clients\": {\"pc1\": {\"image\": "
     "\"a\", \"disks\": []}}}",
     "clients.pc1.disks: expected an object of disk names"},
    {"{\"state_dir\": \"/s\", \"images\": {\"a\": {}}, \"clients\": {\"pc1\": {\"image\": "
     "\"a\", \"disks\": {\"g\": {\"policy\": \"persist\"}}}}}",
     "clients.pc1.disks.g.image: missing"},
    {"{\"state_dir\": \"/s\", \"images\": {\"a\": {}}, \"clients\": {\"pc1\": {\"image\": "
     "\"a\", \"disks\": {\"g\": {\"image\": \"b\"}}}}}",
     "clients.pc1.disks.g.image: image \"b\" is not listed"},
    {"{\"state_dir\": \"/s\", \"images\": {\"a\": {}}, \"clients\": {\"pc1\": {\"image\": "
     "\"a\", \"disks\": {\"g\": {\"image\": \"a\", \"mac\": \"52:54:00:00:00:01\"}}}}}",
     "clients.pc1.disks.g.mac: unknown key"},
    {"{\"state_dir\": \"/s\", \"images\": {\"a\": {}}, \"clients\": {\"pc1\": {\"image\": "
     "\"a\", \"disks\": {\"g/h\": {\"image\": \"a\"}}}}}",
     "clients.pc1.disks.g/h: not a valid disk name"},
    {"{\"state_dir\": \"/s\", \"images\": {\"a\": {}}, \"clients\": {\"pc1\": {\"image\": "
     "\"a\", \"disks\": {\"g\": {\"image\": \"a\", \"read_only\": 1}}}}}",
     "clients.pc1.disks.g.read_only: expected true or false"},
    {"{\"state_dir\": \"/s\", \"images\": {\"a\": {}}, \"clients\": {\"pc1\": {\"image\": "
     "\"a\", \"disks\": {\"gggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggg\": "
     "{\"image\": \"a\"}}}}}",
     "is longer than 64 characters"},
    {"{\"state_dir\": \"/s\", \"images\": {\"a\": {}}, \"groups\": {\"lab\": {\"disks\": "
     "{\"g\": {\"image\": \"a\", \"policy\": \"x\"}}}}, \"clients\": {\"pc1\": {\"image\": "
     "\"a\", \"group\": \"lab\"}}}",
     "groups.lab.disks.g.policy: expected \"rollback\" or \"persist\""},
    /* The watchdog's sections read values with conf.c's getters (json.h). */
    {"{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"watchdog\": {\"idle\": 30}, "
     "\"clients\": {}}",
     "watchdog.idle: expected a duration such as \"90s\", \"15m\", \"2h\" or \"1d\", got 30"},
    {"{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"watchdog\": {\"reserve\": \"lots\"}, "
     "\"clients\": {}}",
     "watchdog.reserve: expected a size in bytes or a string such as \"64M\" or \"10G\", got "
     "\"lots\""},
    {"{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"watchdog\": {\"health\": "
     "{\"strikes\": 0}}, \"clients\": {}}",
     "watchdog.health.strikes: expected an integer from 1 to 1000, got 0"},
    {"{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"watchdog\": {\"canary\": "
     "{\"promote_after\": true}}, \"clients\": {}}",
     "watchdog.canary.promote_after: expected an integer from 1 to 1000, got a boolean"},
    {"{\"state_dir\": \"/s\", \"images\": {\"d\": {}}, \"clients\": {\"pc01\": {\"image\": "
     "\"d\", \"watchdog\": {\"rules\": [{\"name\": \"r\", \"path\": \"/x\"}]}}}}",
     "watchdog.rules[0].on: expected \"created\", \"changed\", \"deleted\" or \"exists\""},
};

/* A client's further disks: entries after it, "ID/DISK", their own image
 * and policy, the client's allow, grace and limits; a group's disks merge
 * with the client's by name. */
START_TEST(test_disks)
{
  const char *text =
      "{\"state_dir\": \"/s\", \"images\": {\"win\": {}, \"games\": {}},"
      " \"groups\": {\"cafe\": {\"image\": \"win\", \"allow\": [\"10.1.0.0/16\"],"
      "   \"reconnect_grace\": \"5m\", \"limits\": {\"write\": \"20M\"},"
      "   \"disks\": {\"games\": {\"image\": \"games\", \"policy\": \"persist\"},"
      "             \"tools\": {\"image\": \"games\", \"read_only\": true}}}},"
      " \"clients\": {\"pc1\": {\"group\": \"cafe\", \"address\": \"10.1.0.5\"},"
      "   \"pc2\": {\"group\": \"cafe\", \"address\": \"10.1.0.6\","
      "     \"disks\": {\"games\": {\"image\": \"games\", \"version\": 3, \"quota\": \"1G\"}}},"
      "   \"vm\": {\"image\": \"win\"}}}";
  struct tb_config *cfg = tb_config_parse(text, "t");
  ck_assert_msg(cfg != NULL, "%s", tb_errmsg());
  ck_assert_uint_eq(cfg->n_clients, 7);
  const struct tb_client_conf *pc1 = tb_config_client(cfg, "pc1");
  ck_assert_uint_eq(pc1->n_disks, 2);
  ck_assert_str_eq(pc1->client, "pc1");
  ck_assert_str_eq(pc1->disk, "");
  ck_assert_str_eq(pc1[1].id, "pc1/games");
  const struct tb_client_conf *g = tb_config_client(cfg, "pc1/games");
  ck_assert_ptr_eq(g, &pc1[1]);
  ck_assert_str_eq(g->client, "pc1");
  ck_assert_str_eq(g->disk, "games");
  ck_assert_str_eq(g->image, "games");
  ck_assert_int_eq(g->policy, TB_POLICY_PERSIST);
  ck_assert(!g->has_address); /* the machine's, not the disk's */
  ck_assert_uint_eq(g->n_disks, 0);
  ck_assert_uint_eq(g->allow.nets.len, 1);
  ck_assert(!g->allow.unix_socket);
  ck_assert_int_eq(g->reconnect_grace_ms, 300000);
  ck_assert_uint_eq(g->limits.write_bps, 20 << 20);
  ck_assert(!g->read_only);
  const struct tb_client_conf *t = tb_config_client(cfg, "pc1/tools");
  ck_assert(t->read_only);
  char path[128];
  ck_assert_str_eq(tb_client_conf_path(t, path, sizeof path), "clients.pc1.disks.tools");
  ck_assert_str_eq(tb_client_conf_path(pc1, path, sizeof path), "clients.pc1");
  /* pc2's own games disk replaces the group's; tools stays. */
  const struct tb_client_conf *pc2 = tb_config_client(cfg, "pc2");
  ck_assert_uint_eq(pc2->n_disks, 2);
  const struct tb_client_conf *g2 = tb_config_client(cfg, "pc2/games");
  ck_assert_uint_eq(g2->version, 3);
  ck_assert_int_eq(g2->policy, TB_POLICY_ROLLBACK);
  ck_assert_uint_eq(g2->quota, 1 << 30);
  ck_assert_ptr_nonnull(tb_config_client(cfg, "pc2/tools"));
  ck_assert_uint_eq(tb_config_client(cfg, "vm")->n_disks, 0);
  ck_assert_ptr_null(tb_config_client(cfg, "vm/games"));
  tb_config_unref(cfg);
}
END_TEST

START_TEST(test_bad_input)
{
  struct tb_config *cfg = tb_config_parse(bad_cases[_i].json, "bad.json");
  ck_assert_msg(cfg == NULL, "case %d parsed: %s", _i, bad_cases[_i].json);
  ck_assert_msg(strstr(tb_errmsg(), bad_cases[_i].expect) != NULL,
                "case %d: message \"%s\" lacks \"%s\"", _i, tb_errmsg(), bad_cases[_i].expect);
  ck_assert_msg(strncmp(tb_errmsg(), "bad.json: ", 10) == 0, "message lacks the file name: %s",
                tb_errmsg());
}
END_TEST

START_TEST(test_missing_file)
{
  ck_assert_ptr_null(tb_config_load("/nonexistent/tabula.json"));
  ck_assert_ptr_nonnull(strstr(tb_errmsg(), "/nonexistent/tabula.json"));
}
END_TEST

START_TEST(test_names)
{
  ck_assert(tb_name_valid("pc01"));
  ck_assert(tb_name_valid("a.b_c-d"));
  ck_assert(!tb_name_valid(""));
  ck_assert(!tb_name_valid(".hidden"));
  ck_assert(!tb_name_valid("../x"));
  ck_assert(!tb_name_valid("a/b"));
  ck_assert(!tb_name_valid("a@live"));
  char longname[301];
  memset(longname, 'a', 300);
  longname[300] = '\0';
  ck_assert(!tb_name_valid(longname));
  longname[64] = '\0';
  ck_assert(tb_name_valid(longname));
  longname[64] = 'a';
  longname[65] = '\0';
  ck_assert(!tb_name_valid(longname));
}
END_TEST

START_TEST(test_sizes_durations)
{
  uint64_t v;
  int64_t ms;
  ck_assert_int_eq(tb_parse_size("64K", &v), 0);
  ck_assert_uint_eq(v, 65536);
  ck_assert_int_eq(tb_parse_size("10GiB", &v), 0);
  ck_assert_uint_eq(v, 10ULL << 30);
  ck_assert_int_eq(tb_parse_size("12X", &v), -1);
  ck_assert_int_eq(tb_parse_size("-1", &v), -1);
  ck_assert_int_eq(tb_parse_duration("15m", &ms), 0);
  ck_assert_int_eq(ms, 900000);
  ck_assert_int_eq(tb_parse_duration("250ms", &ms), 0);
  ck_assert_int_eq(ms, 250);
  ck_assert_int_eq(tb_parse_duration("2w", &ms), -1);
}
END_TEST

static Suite *conf_suite(void)
{
  Suite *s = suite_create("conf");
  TCase *tc = tcase_create("parse");
  tcase_add_test(tc, test_example);
  tcase_add_test(tc, test_groups_and_acl);
  tcase_add_test(tc, test_pxe);
  tcase_add_test(tc, test_disks);
  tcase_add_loop_test(tc, test_bad_input, 0, sizeof bad_cases / sizeof bad_cases[0]);
  tcase_add_test(tc, test_missing_file);
  tcase_add_test(tc, test_names);
  tcase_add_test(tc, test_sizes_durations);
  suite_add_tcase(s, tc);
  return s;
}

int main(void)
{
  return tb_check_run(conf_suite());
}
