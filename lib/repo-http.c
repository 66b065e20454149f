/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula: a pull's HTTP(S) and S3 transfers (libcurl).
 *
 * Network trust: URLs are built only from the configured base URL, a validated
 * image name and a version number.  Transfers are bounded (connect and stall
 * timeouts, redirect count, sizes: the body goes into a buffer of a fixed
 * capacity, and a server that sends more aborts the transfer), HTTPS peers
 * are always verified, only http and https are followed, S3 credentials are
 * never sent on to a redirect's host, and a range response must be exactly
 * the range asked for (206 with a matching Content-Range) before its bytes
 * are hashed.  Every failure becomes one message naming the URL and what to
 * do (repo_xfer_check).
 */
#include <config.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "repo-internal.h"

static const char *env_or(const char *value, const char *env)
{
  if (value)
    return value;
  const char *e = getenv(env);
  return e && *e ? e : NULL;
}

int repo_http_init(struct http *h, const struct tb_repo_pull_opts *o)
{
  memset(h, 0, sizeof *h);
  h->o = o;
  const char *url = o->url;
  if (!url || !repo_url_scheme_ok(url))
    return tb_error("repository URL \"%s\" must start with http://, https:// or s3://",
                    url ? url : "");
  const char *region = env_or(o->s3_region, "AWS_REGION");
  if (!region)
    region = env_or(NULL, "AWS_DEFAULT_REGION");
  if (!region)
    region = "us-east-1";
  int n;
  if (strncmp(url, "s3://", 5) == 0) {
    /* Path-style URLs work with AWS, Ceph RGW and MinIO alike. */
    char endpoint[512];
    if (o->s3_endpoint)
      snprintf(endpoint, sizeof endpoint, "%s", o->s3_endpoint);
    else
      snprintf(endpoint, sizeof endpoint, "https://s3.%s.amazonaws.com", region);
    size_t el = strlen(endpoint);
    while (el && endpoint[el - 1] == '/')
      endpoint[--el] = '\0';
    n = snprintf(h->base, sizeof h->base, "%s/%s", endpoint, url + 5);
    h->sign = true;
  } else {
    n = snprintf(h->base, sizeof h->base, "%s", url);
    h->sign = o->s3_sign;
  }
  if (n < 0 || (size_t)n >= sizeof h->base)
    return tb_error("repository URL is too long");
  size_t bl = strlen(h->base);
  while (bl && h->base[bl - 1] == '/')
    h->base[--bl] = '\0';
  if (h->sign) {
    const char *key = env_or(o->s3_access_key_id, "AWS_ACCESS_KEY_ID");
    const char *secret = env_or(o->s3_secret_access_key, "AWS_SECRET_ACCESS_KEY");
    const char *token = env_or(o->s3_session_token, "AWS_SESSION_TOKEN");
    if (!key || !secret)
      return tb_error("%s needs S3 credentials: set pull.s3.access_key_id and "
                      "secret_access_key in the config, or AWS_ACCESS_KEY_ID and "
                      "AWS_SECRET_ACCESS_KEY",
                      url);
    snprintf(h->sigv4, sizeof h->sigv4, "aws:amz:%s:s3", region);
    n = snprintf(h->userpwd, sizeof h->userpwd, "%s:%s", key, secret);
    if (n < 0 || (size_t)n >= sizeof h->userpwd)
      return tb_error("S3 credentials are too long");
    if (token) {
      char hdr[4096];
      n = snprintf(hdr, sizeof hdr, "x-amz-security-token: %s", token);
      if (n < 0 || (size_t)n >= sizeof hdr || !(h->headers = curl_slist_append(NULL, hdr)))
        return tb_error("S3 session token is too long");
    }
  }
  return 0;
}

void repo_http_cleanup(struct http *h)
{
  curl_slist_free_all(h->headers);
  h->headers = NULL;
}

static size_t xfer_write(char *data, size_t size, size_t nmemb, void *ud)
{
  struct xfer *x = ud;
  size_t n = size * nmemb;
  x->http->bytes += n;
  if (n > x->limit - x->body.len) {
    x->overflow = true;
    return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
  }
  memcpy(x->body.ptr + x->body.len, data, n);
  x->body.len += n;
  return n;
}

static size_t xfer_header(char *data, size_t size, size_t nmemb, void *ud)
{
  struct xfer *x = ud;
  size_t n = size * nmemb;
  char line[256];
  size_t l = n < sizeof line - 1 ? n : sizeof line - 1;
  memcpy(line, data, l);
  line[l] = '\0';
  /* A new response (after a redirect) starts over. */
  if (strncmp(line, "HTTP/", 5) == 0)
    x->have_range = false;
  unsigned long long a, b, t;
  if (strncasecmp(line, "content-range:", 14) == 0 &&
      sscanf(line + 14, " bytes %llu-%llu/%llu", &a, &b, &t) == 3) {
    x->have_range = true;
    x->cr_first = a;
    x->cr_last = b;
    x->cr_total = t;
  }
  return n;
}

int repo_xfer_setup(struct xfer *x, struct http *h, const char *path, size_t cap,
                    long max_recv_speed)
{
  const struct tb_repo_pull_opts *o = h->o;
  if (!x->curl && !(x->curl = curl_easy_init()))
    return tb_error("cannot initialise libcurl");
  curl_easy_reset(x->curl);
  x->http = h;
  x->body.len = 0;
  x->overflow = false;
  x->have_range = false;
  x->range = false;
  x->errbuf[0] = '\0';
  /* All of it now: the write callback only copies (at least 1 byte, so
   * body.ptr is never NULL for memcpy). */
  if (tb_vector_reserve(&x->body, cap ? cap : 1) == -1)
    return tb_error_prefix("allocating a %zu-byte buffer", cap);
  x->limit = cap;
  snprintf(x->url, sizeof x->url, "%s/%s", h->base, path);
  CURL *c = x->curl;
  curl_easy_setopt(c, CURLOPT_URL, x->url);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(c, CURLOPT_MAXREDIRS, o->max_redirects);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)o->connect_timeout_ms);
  /* Stalls: fewer than 1 byte/s for the stall time aborts (also while waiting
   * for the response headers). */
  long stall_s = (long)((o->stall_timeout_ms + 999) / 1000);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, stall_s > 0 ? stall_s : 1L);
  curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
  if (o->ca_file)
    curl_easy_setopt(c, CURLOPT_CAINFO, o->ca_file);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, x->errbuf);
  curl_easy_setopt(c, CURLOPT_USERAGENT, "tabula/" PACKAGE_VERSION);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, xfer_write);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, x);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, xfer_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, x);
  curl_easy_setopt(c, CURLOPT_PRIVATE, x);
  if (max_recv_speed > 0)
    curl_easy_setopt(c, CURLOPT_MAX_RECV_SPEED_LARGE, (curl_off_t)max_recv_speed);
  if (h->sign) {
    curl_easy_setopt(c, CURLOPT_AWS_SIGV4, h->sigv4);
    curl_easy_setopt(c, CURLOPT_USERPWD, h->userpwd);
    /* Redirects must not carry the credentials elsewhere. */
    curl_easy_setopt(c, CURLOPT_UNRESTRICTED_AUTH, 0L);
  }
  if (h->headers)
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h->headers);
  return 0;
}

void repo_xfer_free(struct xfer *x)
{
  if (x->curl)
    curl_easy_cleanup(x->curl);
  tb_vector_free(&x->body);
  x->curl = NULL;
}

void repo_xfer_set_range(struct xfer *x, uint64_t first, uint64_t last)
{
  char r[64];
  snprintf(r, sizeof r, "%" PRIu64 "-%" PRIu64, first, last);
  curl_easy_setopt(x->curl, CURLOPT_RANGE, r);
  x->range = true;
  x->first = first;
  x->last = last;
}

/* Turn a finished transfer into 0 or a message that says what went wrong and
 * what to do.  WHAT says what was being fetched ("the index", "chunk 7"). */
int repo_xfer_check(struct xfer *x, CURLcode rc, const char *what, uint64_t expect_total)
{
  const struct tb_repo_pull_opts *o = x->http->o;
  long status = 0;
  curl_easy_getinfo(x->curl, CURLINFO_RESPONSE_CODE, &status);
  const char *detail = x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc);
  switch (rc) {
  case CURLE_OK:
    break;
  case CURLE_WRITE_ERROR:
    if (x->overflow && !x->range)
      return tb_error("%s: %s is larger than the limit of %zu bytes (pull.max_index_size)", x->url,
                      what, x->limit);
    if (x->overflow && status == 200)
      return tb_error("%s: %s: HTTP 200 with the whole file instead of 206 Partial Content "
                      "(the server must support range requests)",
                      x->url, what);
    if (x->overflow)
      return tb_error("%s: %s: the server sent more than the expected %zu bytes", x->url, what,
                      x->limit);
    return tb_error("%s: %s: %s", x->url, what, detail);
  case CURLE_FILESIZE_EXCEEDED:
    return tb_error("%s: %s is larger than the limit of %zu bytes (pull.max_index_size)", x->url,
                    what, x->limit);
  case CURLE_OPERATION_TIMEDOUT:
    return tb_error("%s: %s: the server sent nothing for %llds (stall timeout: %s); try again "
                    "later, or raise pull.stall_timeout",
                    x->url, what, (long long)((o->stall_timeout_ms + 999) / 1000), detail);
  case CURLE_TOO_MANY_REDIRECTS:
    return tb_error("%s: %s: more than %ld redirects (a redirect loop on the server?)", x->url,
                    what, o->max_redirects);
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_CONNECT:
    return tb_error("%s: %s: cannot connect (%s); is the repository server up?", x->url, what,
                    detail);
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_CONNECT_ERROR:
    return tb_error("%s: %s: TLS certificate check failed (%s); set pull.ca_file to the CA "
                    "that signed the server's certificate",
                    x->url, what, detail);
  case CURLE_UNSUPPORTED_PROTOCOL:
    return tb_error("%s: %s: %s (only http and https are followed)", x->url, what, detail);
  default:
    return tb_error("%s: %s: %s", x->url, what, detail);
  }
  if (status == 404)
    return tb_error("%s: %s: HTTP 404 Not Found", x->url, what);
  if (status == 401 || status == 403)
    return tb_error("%s: %s: HTTP %ld access denied; check the S3 credentials "
                    "(pull.s3 or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)",
                    x->url, what, status);
  if (status == 416)
    return tb_error("%s: %s: HTTP 416 range not satisfiable: the file on the server is "
                    "shorter than the index says",
                    x->url, what);
  if (x->range && status != 206)
    return tb_error("%s: %s: HTTP %ld instead of 206 Partial Content (the server must "
                    "support range requests)",
                    x->url, what, status);
  if (!x->range && status != 200)
    return tb_error("%s: %s: HTTP %ld from the server", x->url, what, status);
  if (x->range) {
    if (!x->have_range)
      return tb_error("%s: %s: the 206 response has no Content-Range", x->url, what);
    if (x->cr_total != expect_total)
      return tb_error("%s: %s: the file on the server is %llu bytes, the index says %llu", x->url,
                      what, (unsigned long long)x->cr_total, (unsigned long long)expect_total);
    if (x->cr_first != x->first || x->cr_last != x->last || x->body.len != x->last - x->first + 1)
      return tb_error("%s: %s: the server sent bytes %llu-%llu (%zu bytes) for the range "
                      "%llu-%llu",
                      x->url, what, (unsigned long long)x->cr_first, (unsigned long long)x->cr_last,
                      x->body.len, (unsigned long long)x->first, (unsigned long long)x->last);
  }
  return 0;
}

/* Fetch NAME/index.json into a NUL-terminated malloc'd buffer. */
char *repo_fetch_index(struct http *h, const char *image, size_t *len, char *url_out,
                       size_t url_len)
{
  CLEANUP_XFER struct xfer x = {0};
  char path[TB_NAME_MAX + 32];
  snprintf(path, sizeof path, "%s/index.json", image);
  size_t cap =
      h->o->max_index_size > (64u << 20) * 16 ? (64u << 20) * 16 : (size_t)h->o->max_index_size;
  if (repo_xfer_setup(&x, h, path, cap, 0) == -1)
    return NULL;
  snprintf(url_out, url_len, "%s", x.url);
  curl_easy_setopt(x.curl, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)cap);
  CURLcode rc = curl_easy_perform(x.curl);
  char what[128];
  snprintf(what, sizeof what, "the index of %s", image);
  if (repo_xfer_check(&x, rc, what, 0) == -1) {
    long status = 0;
    curl_easy_getinfo(x.curl, CURLINFO_RESPONSE_CODE, &status);
    if (rc == CURLE_OK && status == 404)
      tb_error("%s: HTTP 404 Not Found: the repository has no image \"%s\" (check --from and "
               "the image name)",
               x.url, image);
    return NULL;
  }
  char *text = malloc(x.body.len + 1);
  if (!text) {
    tb_error_errno("%s", x.url);
    return NULL;
  }
  memcpy(text, x.body.ptr, x.body.len);
  text[x.body.len] = '\0';
  *len = x.body.len;
  return text;
}
