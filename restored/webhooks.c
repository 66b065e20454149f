/* tabula-restored: webhooks -- every event POSTed as JSON to configured URLs.
 *
 * One thread and one bounded queue per URL, so a slow or dead endpoint delays
 * only its own deliveries and never the daemon's loop: webhooks_post() copies
 * the event into each queue and returns at once; when a queue is full the
 * oldest event is dropped (and counted).
 *
 * A delivery is a POST with Content-Type: application/json, the event's JSON
 * line as the body, X-Tabula-Event: TYPE, and, with a secret,
 *   X-Tabula-Signature: sha256=HEX(HMAC-SHA256(secret, body))
 * A 2xx answer is success.  Anything else (refused, timeout, 500) is retried
 * up to "retries" times (default 3) after 1 s, 2 s, 4 s ... (at most 60 s);
 * events behind a waiting retry wait too, so each URL sees events in order.
 *
 * A reload replaces the set of workers; old workers are told to stop, finish
 * the request in flight (bounded by its timeout) and free themselves.
 */
#include <config.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "daemon.h"

#define QUEUE_MAX 1000
#define DEFAULT_TIMEOUT_MS 5000
#define DEFAULT_RETRIES 3
#define BACKOFF_MAX_MS 60000

struct item {
  struct item *next;
  char *type;
  char *body;
};

struct worker {
  char *url, *secret;
  int64_t timeout_ms;
  int retries;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  struct item *head, *tail;
  size_t len;
  bool stop;
  /* counters (under lock) */
  uint64_t sent, failed, dropped, retried;
  char last_error[256];
};

static struct worker **workers;
static size_t n_workers;
/* Counters of retired workers, so totals survive a reload. */
static uint64_t old_sent, old_failed, old_dropped;
static pthread_mutex_t totals_lock = PTHREAD_MUTEX_INITIALIZER;

static void item_free(struct item *it)
{
  free(it->type);
  free(it->body);
  free(it);
}

static void sign(const char *secret, const char *body, char out[80])
{
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)body, strlen(body), mac,
       &len);
  strcpy(out, "sha256=");
  tb_hex(mac, len, out + 7);
}

static size_t discard_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
  return size * nmemb;
}

/* One POST; returns 0 on a 2xx answer, else -1 with ERR filled. */
static int deliver(struct worker *w, const struct item *it, char *err, size_t errlen)
{
  CURL *curl = curl_easy_init();
  if (!curl) {
    snprintf(err, errlen, "curl_easy_init failed");
    return -1;
  }
  struct curl_slist *h = NULL;
  char line[512];
  h = curl_slist_append(h, "Content-Type: application/json");
  snprintf(line, sizeof line, "X-Tabula-Event: %s", it->type ? it->type : "event");
  h = curl_slist_append(h, line);
  if (w->secret) {
    char sig[80];
    sign(w->secret, it->body, sig);
    snprintf(line, sizeof line, "X-Tabula-Signature: %s", sig);
    h = curl_slist_append(h, line);
  }
  h = curl_slist_append(h, "Expect:");
  curl_easy_setopt(curl, CURLOPT_URL, w->url);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(curl, CURLOPT_POSTFIELDS, it->body);
  curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)strlen(it->body));
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long)w->timeout_ms);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, (long)w->timeout_ms);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, discard_body);
  curl_easy_setopt(curl, CURLOPT_USERAGENT, "tabula-restored/" PACKAGE_VERSION);
#if LIBCURL_VERSION_NUM >= 0x075500
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
#else
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
  CURLcode rc = curl_easy_perform(curl);
  long status = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(h);
  curl_easy_cleanup(curl);
  if (rc != CURLE_OK) {
    snprintf(err, errlen, "%s: %s", w->url, curl_easy_strerror(rc));
    return -1;
  }
  if (status < 200 || status > 299) {
    snprintf(err, errlen, "%s: HTTP status %ld", w->url, status);
    return -1;
  }
  return 0;
}

/* Sleep up to MS, or until told to stop.  Returns true if stopping. */
static bool wait_or_stop(struct worker *w, int64_t ms)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += ms / 1000;
  ts.tv_nsec += (ms % 1000) * 1000000;
  if (ts.tv_nsec >= 1000000000) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000;
  }
  pthread_mutex_lock(&w->lock);
  while (!w->stop && pthread_cond_timedwait(&w->cond, &w->lock, &ts) == 0)
    ;
  bool stop = w->stop;
  pthread_mutex_unlock(&w->lock);
  return stop;
}

static void worker_free(struct worker *w)
{
  while (w->head) {
    struct item *it = w->head;
    w->head = it->next;
    item_free(it);
  }
  pthread_mutex_lock(&totals_lock);
  old_sent += w->sent;
  old_failed += w->failed;
  old_dropped += w->dropped;
  pthread_mutex_unlock(&totals_lock);
  pthread_mutex_destroy(&w->lock);
  pthread_cond_destroy(&w->cond);
  free(w->url);
  free(w->secret);
  free(w);
}

static void *worker_main(void *arg)
{
  struct worker *w = arg;
  for (;;) {
    pthread_mutex_lock(&w->lock);
    while (!w->head && !w->stop)
      pthread_cond_wait(&w->cond, &w->lock);
    if (w->stop) {
      pthread_mutex_unlock(&w->lock);
      break;
    }
    struct item *it = w->head; /* stays queued (first) while it is being delivered */
    pthread_mutex_unlock(&w->lock);

    char err[256] = "";
    int64_t backoff = 1000;
    bool ok = false, stop = false;
    for (int attempt = 0; attempt <= w->retries; attempt++) {
      if (deliver(w, it, err, sizeof err) == 0) {
        ok = true;
        break;
      }
      if (attempt == w->retries)
        break;
      pthread_mutex_lock(&w->lock);
      w->retried++;
      snprintf(w->last_error, sizeof w->last_error, "%s", err);
      pthread_mutex_unlock(&w->lock);
      if ((stop = wait_or_stop(w, backoff)))
        break;
      backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
    }
    pthread_mutex_lock(&w->lock);
    if (ok) {
      w->sent++;
    } else if (!stop) {
      w->failed++;
      snprintf(w->last_error, sizeof w->last_error, "%s", err);
    }
    /* Dequeue it unless the queue dropped it meanwhile (it was the oldest). */
    if (w->head == it) {
      w->head = it->next;
      if (!w->head)
        w->tail = NULL;
      w->len--;
      item_free(it);
    }
    bool stopping = w->stop;
    pthread_mutex_unlock(&w->lock);
    if (!ok && !stop)
      log_msg("webhook %s", err);
    if (stopping)
      break;
  }
  worker_free(w);
  return NULL;
}

static void stop_all(void)
{
  for (size_t i = 0; i < n_workers; i++) {
    struct worker *w = workers[i];
    pthread_mutex_lock(&w->lock);
    w->stop = true;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
  }
  free(workers);
  workers = NULL;
  n_workers = 0;
}

void webhooks_configure(const struct tb_config *cfg)
{
  stop_all();
  if (!cfg->n_webhooks)
    return;
  workers = calloc(cfg->n_webhooks, sizeof *workers);
  if (!workers)
    return;
  for (size_t i = 0; i < cfg->n_webhooks; i++) {
    const struct tb_webhook_conf *c = &cfg->webhooks[i];
    struct worker *w = calloc(1, sizeof *w);
    if (!w || !c->url)
      continue;
    w->url = strdup(c->url);
    w->secret = c->secret ? strdup(c->secret) : NULL;
    w->timeout_ms = c->timeout_ms > 0 ? c->timeout_ms : DEFAULT_TIMEOUT_MS;
    w->retries = c->retries > 0 ? c->retries : DEFAULT_RETRIES;
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    pthread_t t;
    if (pthread_create(&t, NULL, worker_main, w) != 0) {
      log_msg("cannot start the webhook thread for %s", c->url);
      pthread_mutex_destroy(&w->lock);
      pthread_cond_destroy(&w->cond);
      free(w->url);
      free(w->secret);
      free(w);
      continue;
    }
    pthread_detach(t);
    workers[n_workers++] = w;
  }
}

void webhooks_post(const char *type, const char *body)
{
  for (size_t i = 0; i < n_workers; i++) {
    struct worker *w = workers[i];
    struct item *it = calloc(1, sizeof *it);
    if (!it)
      continue;
    it->type = strdup(type ? type : "event");
    it->body = strdup(body);
    pthread_mutex_lock(&w->lock);
    if (w->len >= QUEUE_MAX && w->head && w->head->next) {
      /* Full: drop the oldest that is not being delivered right now. */
      struct item *old = w->head->next;
      w->head->next = old->next;
      if (w->tail == old)
        w->tail = w->head;
      w->len--;
      w->dropped++;
      item_free(old);
    }
    if (w->tail)
      w->tail->next = it;
    else
      w->head = it;
    w->tail = it;
    w->len++;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
  }
}

json_t *webhooks_status(void)
{
  pthread_mutex_lock(&totals_lock);
  uint64_t sent = old_sent, failed = old_failed, dropped = old_dropped, queued = 0;
  pthread_mutex_unlock(&totals_lock);
  json_t *urls = json_array();
  for (size_t i = 0; i < n_workers; i++) {
    struct worker *w = workers[i];
    pthread_mutex_lock(&w->lock);
    sent += w->sent;
    failed += w->failed;
    dropped += w->dropped;
    queued += w->len;
    json_array_append_new(urls,
                          json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:s}", "url", w->url, "sent",
                                    (json_int_t)w->sent, "failed", (json_int_t)w->failed, "retried",
                                    (json_int_t)w->retried, "queued", (json_int_t)w->len, "dropped",
                                    (json_int_t)w->dropped, "last_error", w->last_error));
    pthread_mutex_unlock(&w->lock);
  }
  return json_pack("{s:I, s:I, s:I, s:I, s:o}", "sent", (json_int_t)sent, "failed",
                   (json_int_t)failed, "queued", (json_int_t)queued, "dropped", (json_int_t)dropped,
                   "urls", urls);
}

void webhooks_shutdown(void)
{
  /* Give queued events a moment to go out, bounded, then stop the workers. */
  int64_t deadline = tb_now_ms() + 2000;
  for (;;) {
    size_t pending = 0;
    for (size_t i = 0; i < n_workers; i++) {
      pthread_mutex_lock(&workers[i]->lock);
      pending += workers[i]->len;
      pthread_mutex_unlock(&workers[i]->lock);
    }
    if (!pending || tb_now_ms() > deadline)
      break;
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  stop_all();
}
