/* The C load generator: one thread, one epoll loop, the same modes, flags and JSON lines as benchmarks/loadgen.py.
 *
 * Why C: the Python (uvloop) generator spends about 12 us of its core per reply, so against the fastest servers
 * it was the side that saturated. This one costs a few us (mostly the kernel's send/recv), and reports its own
 * CPU (getrusage) beside the server's (/proc) so the report can say who saturated.
 *
 * Modes (loadgen MODE --port P [...]; every mode ends by itself: durations, per-connection timeouts, a hold cap):
 *   echo   N connections, one 32-byte line in flight on each (closed loop): replies/s and latency.
 *   rate   N connections, a fixed offered load (open loop): request i is due at start + i/rate and its latency is
 *          counted from that due time, so a stalled server cannot hide its queue (no coordinated omission).
 *   churn  C concurrent cycles of connect, greeting, timeout line, one echo, ":q", its echo, the server's close.
 *   hold   open N connections (handshake timed each), keep them idle; "check" on stdin makes each send a line
 *          that must be echoed, "close" (or end of input) ends it.
 *
 * Replies are framed by newlines whatever the read sizes (a reply split over reads, or several in one read), and
 * every reply is compared byte for byte with the expected echo, PREFIX + LINE; a wrong one counts as an error.
 * Latency: CLOCK_MONOTONIC; percentiles by nearest rank, in milliseconds, as the Python generator's.
 * Sources are spread over loopback addresses (--sources): past ~14,000 connections from one source address
 * Linux's connect() scans the ephemeral port range and stalls.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MESSAGE "mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm\n" /* 32-byte lines, as in the anchors */
#define TIMEOUT_LINE "60\n"
#define HOLD_TIMEOUT_LINE "3600\n"
#define QUIT_LINE ":q\n"
#define DEFAULT_PREFIX "我收到了你的信息:" /* geventchat's default prefix (config.DEFAULT_PREFIX), UTF-8 */
#define LINE_CAP 512                     /* longest reply line kept for comparison; longer ones are wrong */
#define OUT_CAP 256                      /* unsent bytes per connection: one request in flight never needs more */
#define CONNECTING_MAX 256               /* connects in progress at once (echo, rate), as the Python generator */
#define CHURN_CYCLE_TIMEOUT 10.0         /* seconds one churn cycle may take before it counts as an error */
#define CHECK_TIMEOUT 60.0               /* seconds every held connection has to answer a check */
#define RATE_TICK_NS 100000              /* the open-loop scheduler's tick: 100 us */
#define STDIN_TAG UINT32_MAX
#define TIMER_TAG (UINT32_MAX - 1)

enum mode { ECHO, RATE, CHURN, HOLD };
enum state { FREE, CONNECTING, GREETING, READY, QUITTING };

struct conn {
    int fd;
    enum state state;
    bool in_flight;  /* rate: a request is out; hold: a check is out */
    bool overflow;   /* the current line outgrew LINE_CAP */
    bool answered;   /* hold: the check was echoed */
    int lines;       /* complete lines received (the greeting is line 1) */
    int line_len;
    int out_len;
    double started;  /* connect began (hold handshake, churn cycle) */
    double sent_at;  /* echo: when the line in flight was sent; rate: when it was due */
    double *due;     /* rate: due times queued behind the request in flight (a ring) */
    int due_head, due_len, due_cap;
    char out[OUT_CAP];
    char line[LINE_CAP];
};

struct samples {
    double *v;
    size_t len, cap;
};

static struct {
    enum mode mode;
    const char *host;
    int port;
    int connections;
    double duration, warmup, rate, greet_timeout, hold_max;
    int sources, first_source, opening, cpu, server_pid;
    const char *prefix;
} opt = {.host = "127.0.0.1", .port = -1, .connections = 100, .duration = 5.0, .warmup = 1.0, .rate = 10000.0,
         .greet_timeout = 30.0, .hold_max = 3600.0, .sources = 4, .first_source = 1, .opening = 100, .cpu = -1,
         .server_pid = 0, .prefix = DEFAULT_PREFIX};

static int ep;
static struct conn *conns;
static int nconns;
static struct in_addr *source_addrs;
static int next_source;
static struct sockaddr_in target;
static char expected_echo[LINE_CAP], expected_quit[LINE_CAP];
static int expected_echo_len, expected_quit_len;

/* The run's counters: replies and latencies count only while measuring; errors count until stopping. */
static bool measuring, stopping;
static long replies, errors, greeted, failed, connecting;
static struct samples latencies, handshakes;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void *grow(void *p, size_t bytes) {
    void *q = realloc(p, bytes);
    if (q == NULL) {
        fprintf(stderr, "loadgen: out of memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return q;
}

static void push(struct samples *s, double value) {
    if (s->len == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 65536;
        s->v = grow(s->v, s->cap * sizeof(double));
    }
    s->v[s->len++] = value;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ", "p50": ..., "p99": ..., "p99.9": ..., "max": ..." in ms, nearest rank (Python's percentiles()). */
static void print_percentiles(const char *key_prefix, struct samples *s) {
    static const double points[] = {50, 99, 99.9};
    static const char *names[] = {"p50", "p99", "p99.9"};
    if (s->len) qsort(s->v, s->len, sizeof(double), by_value);
    for (int i = 0; i < 3; i++) {
        double value = 0.0;
        if (s->len) {
            size_t rank = (size_t)((double)s->len * points[i] / 100.0);
            value = s->v[rank < s->len - 1 ? rank : s->len - 1] * 1000.0;
        }
        printf(", \"%s%s\": %.6f", key_prefix, names[i], value);
    }
    printf(", \"%smax\": %.6f", key_prefix, s->len ? s->v[s->len - 1] * 1000.0 : 0.0);
}

/* ------------------------------------------------------------------------------------------- CPU meter */

static double own_cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
           (double)ru.ru_stime.tv_usec * 1e-6;
}

/* utime + stime of one process in seconds, and its parent; false if it is gone. */
static bool proc_stat(int pid, double *cpu, int *ppid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return false;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return false;
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
    if (p == NULL) return false;
    /* after ") ": field 3 state, 4 ppid, ..., 14 utime, 15 stime */
    char state;
    int parent;
    unsigned long utime, stime;
    if (sscanf(p + 2, "%c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &state, &parent, &utime, &stime) != 4)
        return false;
    *cpu = (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
    *ppid = parent;
    return true;
}

#define TREE_MAX 4096
struct tree {
    int pids[TREE_MAX];
    int len;
};

static bool in_tree(const struct tree *t, int pid) {
    for (int i = 0; i < t->len; i++)
        if (t->pids[i] == pid) return true;
    return false;
}

/* Adds root and every process below it (one /proc scan; each process visited once). */
static void add_descendants(struct tree *t, int root) {
    static int pid[65536], ppid[65536];
    int n = 0;
    DIR *d = opendir("/proc");
    if (d == NULL) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < 65536) {
        if (!isdigit((unsigned char)e->d_name[0])) continue;
        double cpu;
        int parent;
        if (proc_stat(atoi(e->d_name), &cpu, &parent)) {
            pid[n] = atoi(e->d_name);
            ppid[n++] = parent;
        }
    }
    closedir(d);
    if (!in_tree(t, root) && t->len < TREE_MAX) t->pids[t->len++] = root;
    for (int done = 0; done < t->len; done++) /* bounded: the tree only grows by unseen pids, at most TREE_MAX */
        for (int i = 0; i < n; i++)
            if (ppid[i] == t->pids[done] && !in_tree(t, pid[i]) && t->len < TREE_MAX) t->pids[t->len++] = pid[i];
}

/* Seconds a process has waited on a run queue for a core (/proc/PID/schedstat's second field); 0 if it is gone. */
static double run_wait(int pid) {
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/schedstat", pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    unsigned long long running, waiting;
    return sscanf(buf, "%llu %llu", &running, &waiting) == 2 ? (double)waiting * 1e-9 : 0;
}

static double tree_wait(const struct tree *t) {
    double sum = 0;
    for (int i = 0; i < t->len; i++) sum += run_wait(t->pids[i]);
    return sum;
}

static double tree_cpu(const struct tree *t) {
    double sum = 0;
    for (int i = 0; i < t->len; i++) {
        double cpu;
        int parent;
        if (proc_stat(t->pids[i], &cpu, &parent)) sum += cpu;
    }
    return sum;
}

/* CPU used and time spent waiting for a core (other work had it), by this process and the server's tree. */
static struct {
    double wall, own, server, own_wait, server_wait;
    struct tree tree;
} meter;

static void meter_start(void) {
    meter.wall = now();
    meter.own = own_cpu();
    meter.own_wait = run_wait(getpid());
    meter.tree.len = 0;
    if (opt.server_pid) {
        add_descendants(&meter.tree, opt.server_pid);
        meter.server = tree_cpu(&meter.tree);
        meter.server_wait = tree_wait(&meter.tree);
    }
}

struct usage {
    double wall, own, server, own_wait, server_wait;
};

/* ", "seconds": ..., "loadgen_cpu": ..., "loadgen_cpu_seconds": ..., "loadgen_wait": ...[, "server_cpu": ...,
 * "server_wait": ...]": CPU and run-queue waits as fractions of the wall time (of one core each). */
static void meter_print(struct usage u) {
    printf(", \"seconds\": %.6f, \"loadgen_cpu\": %.6f, \"loadgen_cpu_seconds\": %.6f, \"loadgen_wait\": %.6f", u.wall,
           u.own / u.wall, u.own, u.own_wait);
    if (opt.server_pid) printf(", \"server_cpu\": %.6f, \"server_wait\": %.6f", u.server, u.server_wait);
}

static struct usage meter_stop(void) {
    struct usage u;
    u.wall = now() - meter.wall;
    u.own = own_cpu() - meter.own;
    u.own_wait = (run_wait(getpid()) - meter.own_wait) / u.wall;
    u.server = u.server_wait = 0;
    if (opt.server_pid) {
        /* Workers started meanwhile count too (from 0: their waits and CPU before the window are small). */
        add_descendants(&meter.tree, opt.server_pid);
        u.server = (tree_cpu(&meter.tree) - meter.server) / u.wall;
        u.server_wait = (tree_wait(&meter.tree) - meter.server_wait) / u.wall;
    }
    return u;
}

/* ------------------------------------------------------------------------------------------- connections */

static void watch(struct conn *c, uint32_t events, int op) {
    struct epoll_event ev = {.events = events, .data.u32 = (uint32_t)(c - conns)};
    if (epoll_ctl(ep, op, c->fd, &ev) < 0) die("epoll_ctl");
}

static void conn_close(struct conn *c) {
    if (c->fd >= 0) close(c->fd); /* close() also takes it out of the epoll set */
    if (c->state == CONNECTING) connecting--;
    c->fd = -1;
    c->state = FREE;
    c->lines = c->line_len = c->out_len = 0;
    c->overflow = c->in_flight = false;
    c->due_len = c->due_head = 0;
}

/* Starts a non-blocking connect from the next source address; false (and the socket closed) if it failed. */
static bool conn_open(struct conn *c) {
    c->started = now();
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) return false;
    int one = 1;
    /* The kernel picks the port per destination at connect(), not at bind(): no port reserved per source. */
    setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in source = {.sin_family = AF_INET, .sin_addr = source_addrs[next_source]};
    next_source = (next_source + 1) % opt.sources;
    if (bind(c->fd, (struct sockaddr *)&source, sizeof source) < 0 ||
        (connect(c->fd, (struct sockaddr *)&target, sizeof target) < 0 && errno != EINPROGRESS)) {
        close(c->fd);
        c->fd = -1;
        c->state = FREE;
        return false;
    }
    c->state = CONNECTING;
    connecting++;
    watch(c, EPOLLIN | EPOLLOUT, EPOLL_CTL_ADD);
    return true;
}

/* Sends (or queues) bytes; false if the connection failed or its queue would overflow. */
static bool conn_send(struct conn *c, const char *data, int len) {
    if (c->out_len == 0 && c->state != CONNECTING) {
        ssize_t n = send(c->fd, data, (size_t)len, MSG_NOSIGNAL);
        if (n == len) return true;
        if (n < 0 && errno != EAGAIN) return false;
        if (n > 0) data += n, len -= (int)n;
        watch(c, EPOLLIN | EPOLLOUT, EPOLL_CTL_MOD);
    }
    if (c->out_len + len > OUT_CAP) return false;
    memcpy(c->out + c->out_len, data, (size_t)len);
    c->out_len += len;
    return true;
}

static bool conn_flush(struct conn *c) {
    ssize_t n = send(c->fd, c->out, (size_t)c->out_len, MSG_NOSIGNAL);
    if (n < 0) return errno == EAGAIN;
    memmove(c->out, c->out + n, (size_t)(c->out_len - n));
    c->out_len -= (int)n;
    if (c->out_len == 0) watch(c, EPOLLIN, EPOLL_CTL_MOD);
    return true;
}

static bool is_echo(const struct conn *c, const char *expected, int expected_len) {
    return !c->overflow && c->line_len == expected_len && memcmp(c->line, expected, (size_t)expected_len) == 0;
}

/* ------------------------------------------------------------------------------------------- the modes */

static void fail(struct conn *c);

static void rate_request(struct conn *c, double due) {
    if (!c->in_flight) {
        c->in_flight = true;
        c->sent_at = due;
        if (!conn_send(c, MESSAGE, sizeof MESSAGE - 1)) fail(c);
        return;
    }
    if (c->due_len == c->due_cap) { /* grow the ring, unrolling it */
        int cap = c->due_cap ? c->due_cap * 2 : 8;
        double *ring = grow(NULL, (size_t)cap * sizeof(double));
        for (int i = 0; i < c->due_len; i++) ring[i] = c->due[(c->due_head + i) % c->due_cap];
        free(c->due);
        c->due = ring;
        c->due_cap = cap;
        c->due_head = 0;
    }
    c->due[(c->due_head + c->due_len++) % c->due_cap] = due;
}

/* Churn slots to start a new cycle on. Filled by the callbacks, emptied by the main loop: a callback must not reuse
 * a slot while its caller may still be reading the old connection's bytes. */
static int *restart;
static int restart_len;

static void open_churn_cycle(struct conn *c) {
    if (!stopping && !conn_open(c) && measuring) errors++; /* a failed connect is a failed cycle; retried later */
}

static void restart_cycles(void) {
    while (restart_len) open_churn_cycle(&conns[restart[--restart_len]]);
}

/* The connection failed (peer closed, reset, wrong reply, timeout): count it and close it. */
static void fail(struct conn *c) {
    if (c->state == FREE) return;
    if (!stopping && (opt.mode != CHURN || measuring)) errors++;
    if (opt.mode != CHURN && c->lines == 0) failed++; /* never greeted: the connect phase stops waiting for it */
    conn_close(c);
    if (opt.mode == CHURN) restart[restart_len++] = (int)(c - conns);
}

static void on_greeting(struct conn *c, double t) {
    greeted++;
    c->state = READY;
    bool ok = true;
    switch (opt.mode) {
        case ECHO:
            c->sent_at = t;
            ok = conn_send(c, TIMEOUT_LINE MESSAGE, sizeof TIMEOUT_LINE MESSAGE - 1);
            break;
        case RATE: ok = conn_send(c, TIMEOUT_LINE, sizeof TIMEOUT_LINE - 1); break;
        case CHURN: ok = conn_send(c, TIMEOUT_LINE MESSAGE, sizeof TIMEOUT_LINE MESSAGE - 1); break;
        case HOLD:
            push(&handshakes, t - c->started);
            ok = conn_send(c, HOLD_TIMEOUT_LINE, sizeof HOLD_TIMEOUT_LINE - 1);
            break;
    }
    if (!ok) fail(c);
}

/* One complete line (without its newline) in c->line; may close c. */
static void on_line(struct conn *c, double t) {
    c->lines++;
    if (c->lines == 1) {
        on_greeting(c, t);
        return;
    }
    bool ok = is_echo(c, expected_echo, expected_echo_len);
    switch (opt.mode) {
        case ECHO:
            if (!ok && !stopping) errors++;
            else if (measuring) replies++, push(&latencies, t - c->sent_at);
            if (!stopping) {
                c->sent_at = t;
                if (!conn_send(c, MESSAGE, sizeof MESSAGE - 1)) fail(c);
            }
            break;
        case RATE:
            if (!ok && !stopping) errors++;
            else if (c->in_flight && measuring) replies++, push(&latencies, t - c->sent_at);
            c->in_flight = false;
            if (c->due_len) {
                double due = c->due[c->due_head];
                c->due_head = (c->due_head + 1) % c->due_cap;
                c->due_len--;
                rate_request(c, due);
            }
            break;
        case CHURN:
            if (c->lines == 2 && ok) {
                if (!conn_send(c, QUIT_LINE, sizeof QUIT_LINE - 1)) fail(c);
            } else if (c->lines == 3 && is_echo(c, expected_quit, expected_quit_len)) {
                c->state = QUITTING; /* the cycle ends with the server's close */
            } else {
                fail(c);
            }
            break;
        case HOLD:
            if (c->in_flight && ok && !c->answered) c->answered = true;
            else if (!stopping) errors++;
            break;
    }
}

static void on_eof(struct conn *c, double t) {
    if (opt.mode == CHURN && c->state == QUITTING) {
        if (measuring) replies++, push(&latencies, t - c->started);
        conn_close(c);
        restart[restart_len++] = (int)(c - conns);
        return;
    }
    fail(c);
}

static void on_readable(struct conn *c) {
    static char buf[65536];
    for (int reads = 0; reads < 16 && c->fd >= 0; reads++) { /* bounded: others get their turn */
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n < 0) {
            if (errno != EAGAIN) fail(c);
            return;
        }
        double t = now();
        if (n == 0) {
            on_eof(c, t);
            return;
        }
        /* Frame by newlines, whatever the chunking: a line may span reads and one read may hold many lines. */
        const char *p = buf, *end = buf + n;
        while (p < end && c->fd >= 0) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            const char *stop = nl ? nl : end;
            size_t take = (size_t)(stop - p);
            if (c->line_len + take > LINE_CAP) {
                c->overflow = true;
                take = (size_t)(LINE_CAP - c->line_len);
            }
            memcpy(c->line + c->line_len, p, take);
            c->line_len += (int)take;
            if (nl == NULL) break;
            on_line(c, t);
            c->line_len = 0;
            c->overflow = false;
            p = nl + 1;
        }
        if (n < (ssize_t)sizeof buf) return;
    }
}

static void on_event(struct conn *c, uint32_t events) {
    if (c->state == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0 || (events & EPOLLERR)) {
            fail(c);
            return;
        }
        connecting--;
        c->state = GREETING;
        watch(c, c->out_len ? EPOLLIN | EPOLLOUT : EPOLLIN, EPOLL_CTL_MOD);
        if (c->out_len && !conn_flush(c)) {
            fail(c);
            return;
        }
    } else if ((events & EPOLLOUT) && c->out_len) {
        if (!conn_flush(c)) {
            fail(c);
            return;
        }
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
}

/* Waits for events at most `timeout` seconds and dispatches them; returns the stdin/timer tags seen. */
static bool stdin_ready, timer_fired;
static void poll_once(double timeout) {
    static struct epoll_event events[1024];
    int ms = timeout <= 0 ? 0 : (int)(timeout * 1000.0) + 1;
    if (ms > 50) ms = 50; /* phase deadlines and timeouts are checked at least every 50 ms */
    int n = epoll_wait(ep, events, 1024, ms);
    if (n < 0 && errno != EINTR) die("epoll_wait");
    for (int i = 0; i < n; i++) {
        uint32_t tag = events[i].data.u32;
        if (tag == STDIN_TAG) stdin_ready = true;
        else if (tag == TIMER_TAG) timer_fired = true;
        else on_event(&conns[tag], events[i].events);
    }
}

/* Starts connects until `total` were started: at most CONNECTING_MAX connecting at once, or in hold mode at most
 * --opening between connect and greeting (as the Python generator's gates). */
static int started_count;
static void open_more(int total) {
    while (started_count < total) {
        if (opt.mode == HOLD ? started_count - greeted - failed >= opt.opening : connecting >= CONNECTING_MAX) break;
        struct conn *c = &conns[started_count++];
        if (!conn_open(c)) errors++, failed++;
    }
}

static void close_all(void) {
    stopping = true;
    for (int i = 0; i < nconns; i++) conn_close(&conns[i]);
}

/* Connects every connection and waits for every greeting (at most --greet-timeout): a server that serves one
 * client at a time (the iterative model) greets only some, and the run goes on with those. */
static void connect_all(void) {
    double deadline = now() + opt.greet_timeout;
    while (greeted + failed < opt.connections && now() < deadline) {
        open_more(opt.connections);
        poll_once(deadline - now());
    }
}

static void run_for(double seconds) {
    double end = now() + seconds;
    for (double t = now(); t < end; t = now()) poll_once(end - t);
}

static void run_echo(void) {
    connect_all();
    run_for(opt.warmup);
    meter_start();
    measuring = true;
    run_for(opt.duration);
    measuring = false;
    struct usage u = meter_stop();
    close_all();
    printf("{\"generator\": \"c\", \"mode\": \"echo\", \"connections\": %d, \"greeted\": %ld, \"replies\": %ld, "
           "\"replies_per_s\": %.3f, \"errors\": %ld",
           opt.connections, greeted, replies, (double)replies / u.wall, errors);
    meter_print(u);
    print_percentiles("", &latencies);
    printf("}\n");
}

static void run_rate(void) {
    connect_all();
    run_for(0.2); /* let the timeout lines land */
    struct conn **clients = grow(NULL, (size_t)(opt.connections ? opt.connections : 1) * sizeof *clients);
    int count = 0;
    for (int i = 0; i < opt.connections; i++)
        if (conns[i].state == READY) clients[count++] = &conns[i];
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (tfd < 0) die("timerfd_create");
    struct itimerspec tick = {.it_interval = {0, RATE_TICK_NS}, .it_value = {0, RATE_TICK_NS}};
    if (timerfd_settime(tfd, 0, &tick, NULL) < 0) die("timerfd_settime");
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = TIMER_TAG};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev) < 0) die("epoll_ctl adding the rate timer");
    double start = now(), warm_until = start + opt.warmup, end = warm_until + opt.duration;
    long issued = 0;
    for (double t = now(); t < end; t = now()) {
        if (!measuring && t >= warm_until) {
            meter_start();
            measuring = true;
        }
        long due_count = (long)((t - start) * opt.rate);
        /* Request i is due at start + i/rate, whenever this loop gets to issue it: late issuing is latency. */
        for (; count && issued < due_count; issued++) {
            struct conn *c = clients[issued % count];
            if (c->state == READY) rate_request(c, start + (double)issued / opt.rate);
        }
        poll_once(end - t);
        if (timer_fired) {
            uint64_t expirations;
            if (read(tfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN) die("timerfd read");
            timer_fired = false;
        }
    }
    measuring = false;
    struct usage u = meter_stop();
    long backlog = 0;
    for (int i = 0; i < count; i++) backlog += clients[i]->due_len;
    close_all();
    close(tfd);
    printf("{\"generator\": \"c\", \"mode\": \"rate\", \"connections\": %d, \"greeted\": %ld, \"offered_per_s\": %.3f, "
           "\"issued\": %ld, \"replies_per_s\": %.3f, \"backlog\": %ld, \"errors\": %ld",
           opt.connections, greeted, opt.rate, issued, (double)replies / u.wall, backlog, errors);
    meter_print(u);
    print_percentiles("", &latencies);
    printf("}\n");
    free(clients);
}

/* Fails cycles older than CHURN_CYCLE_TIMEOUT and queues idle slots (a connect that failed) for a new cycle. */
static void expire_churn_cycles(double t) {
    for (int i = 0; i < nconns; i++) {
        if (conns[i].state != FREE && t - conns[i].started > CHURN_CYCLE_TIMEOUT) fail(&conns[i]);
        else if (conns[i].state == FREE) restart[restart_len++] = i;
    }
}

static void run_churn(void) {
    restart = grow(NULL, (size_t)(2 * nconns + 1) * sizeof *restart);
    for (int i = 0; i < nconns; i++) open_churn_cycle(&conns[i]);
    double start = now(), warm_until = start + opt.warmup, end = warm_until + opt.duration, next_expiry = start;
    for (double t = now(); t < end; t = now()) {
        if (!measuring && t >= warm_until) {
            meter_start();
            measuring = true;
        }
        poll_once((measuring ? end : warm_until) - t);
        restart_cycles();
        if (t >= next_expiry) {
            expire_churn_cycles(t);
            next_expiry = t + 0.1;
        }
    }
    measuring = false;
    struct usage u = meter_stop();
    close_all();
    printf("{\"generator\": \"c\", \"mode\": \"churn\", \"concurrency\": %d, \"cycles\": %ld, \"cycles_per_s\": %.3f, "
           "\"errors\": %ld",
           opt.connections, replies, (double)replies / u.wall, errors);
    meter_print(u);
    print_percentiles("", &latencies);
    printf("}\n");
}

/* The next command on stdin: 'c' for "check", 'q' for "close", end of input or nonsense, 0 for none yet. */
static char read_command(void) {
    static char pending[256];
    static int len;
    char *nl = memchr(pending, '\n', (size_t)len);
    if (nl == NULL) {
        ssize_t n = read(STDIN_FILENO, pending + len, sizeof pending - 1 - (size_t)len);
        if (n <= 0) return n < 0 && errno == EAGAIN ? 0 : 'q';
        len += (int)n;
        nl = memchr(pending, '\n', (size_t)len);
        if (nl == NULL) return len >= (int)sizeof pending - 1 ? 'q' : 0;
    }
    *nl = 0;
    char command = strncmp(pending, "check", 5) == 0 ? 'c' : 'q';
    int rest = len - (int)(nl + 1 - pending);
    memmove(pending, nl + 1, (size_t)rest);
    len = rest;
    return command;
}

static void expire_handshakes(double t) {
    for (int i = 0; i < nconns; i++)
        if ((conns[i].state == CONNECTING || conns[i].state == GREETING) && t - conns[i].started > opt.greet_timeout)
            fail(&conns[i]);
}

static void hold_check(void) {
    long held = 0, answered = 0;
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        c->answered = false;
        c->in_flight = c->state == READY;
        if (c->in_flight) {
            held++;
            if (!conn_send(c, MESSAGE, sizeof MESSAGE - 1)) fail(c);
        }
    }
    double deadline = now() + CHECK_TIMEOUT;
    for (double t = now(); t < deadline; t = now()) {
        answered = 0;
        long waiting = 0;
        for (int i = 0; i < nconns; i++) {
            answered += conns[i].answered;
            waiting += conns[i].in_flight && !conns[i].answered && conns[i].state == READY;
        }
        if (!waiting) break;
        poll_once(deadline - t);
    }
    printf("{\"generator\": \"c\", \"mode\": \"hold\", \"phase\": \"checked\", \"answered\": %ld, \"held\": %ld}\n",
           answered, held);
    fflush(stdout);
}

static void run_hold(void) {
    double started = now(), next_expiry = started;
    /* Every connection ends greeted or failed (a handshake longer than --greet-timeout fails): this ends. */
    while (greeted + failed < opt.connections) {
        open_more(opt.connections);
        double t = now();
        if (t >= next_expiry) {
            expire_handshakes(t);
            next_expiry = t + 0.1;
        }
        poll_once(0.1);
    }
    printf("{\"generator\": \"c\", \"mode\": \"hold\", \"phase\": \"opened\", \"connections\": %d, \"opened\": %ld, "
           "\"failed\": %ld, \"open_seconds\": %.6f",
           opt.connections, greeted, opt.connections - greeted, now() - started);
    print_percentiles("handshake_", &handshakes);
    printf("}\n");
    fflush(stdout);
    fcntl(STDIN_FILENO, F_SETFL, fcntl(STDIN_FILENO, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = STDIN_TAG};
    bool watching_stdin = epoll_ctl(ep, EPOLL_CTL_ADD, STDIN_FILENO, &ev) == 0;
    double give_up = now() + opt.hold_max; /* held at most --hold-max seconds, even if nobody says close */
    for (double t = now(); t < give_up; t = now()) {
        poll_once(give_up - t);
        if (!stdin_ready && watching_stdin) continue; /* an unpollable stdin (a file) is read every turn */
        stdin_ready = false;
        char command;
        while ((command = read_command()) == 'c') hold_check();
        if (command == 'q') break;
    }
    close_all();
    printf("{\"generator\": \"c\", \"mode\": \"hold\", \"phase\": \"closed\"}\n");
}

/* ------------------------------------------------------------------------------------------- entry point */

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen {echo,rate,churn,hold} --port PORT [--host H] [--connections N] [--duration S]\n"
            "       [--warmup S] [--rate R] [--sources N] [--first-source I] [--opening N] [--greet-timeout S]\n"
            "       [--cpu N] [--server-pid PID] [--prefix TEXT] [--hold-max S]\n");
    exit(2);
}

static double parse_double(const char *name, const char *text) {
    char *end;
    double v = strtod(text, &end);
    if (*text == 0 || *end != 0 || !(v >= 0)) {
        fprintf(stderr, "loadgen: --%s wants a non-negative number, not %s\n", name, text);
        exit(2);
    }
    return v;
}

static int parse_int(const char *name, const char *text) {
    double v = parse_double(name, text);
    if (v > INT_MAX) { /* checked before the cast: converting a double out of int's range is undefined */
        fprintf(stderr, "loadgen: --%s is out of range (at most %d), not %s\n", name, INT_MAX, text);
        exit(2);
    }
    if (v != (double)(int)v) {
        fprintf(stderr, "loadgen: --%s wants a whole number, not %s\n", name, text);
        exit(2);
    }
    return (int)v;
}

static void parse(int argc, char **argv) {
    static const struct option longs[] = {
        {"host", 1, 0, 'h'},          {"port", 1, 0, 'p'},         {"connections", 1, 0, 'n'},
        {"duration", 1, 0, 'd'},      {"warmup", 1, 0, 'w'},       {"rate", 1, 0, 'r'},
        {"sources", 1, 0, 's'},       {"first-source", 1, 0, 'f'}, {"opening", 1, 0, 'o'},
        {"greet-timeout", 1, 0, 'g'}, {"cpu", 1, 0, 'c'},          {"server-pid", 1, 0, 'S'},
        {"prefix", 1, 0, 'P'},        {"hold-max", 1, 0, 'H'},     {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        const char *name = "";
        for (const struct option *o = longs; o->name; o++)
            if (o->val == ch) name = o->name;
        switch (ch) {
            case 'h': opt.host = optarg; break;
            case 'p': opt.port = parse_int(name, optarg); break;
            case 'n': opt.connections = parse_int(name, optarg); break;
            case 'd': opt.duration = parse_double(name, optarg); break;
            case 'w': opt.warmup = parse_double(name, optarg); break;
            case 'r': opt.rate = parse_double(name, optarg); break;
            case 's': opt.sources = parse_int(name, optarg); break;
            case 'f': opt.first_source = parse_int(name, optarg); break;
            case 'o': opt.opening = parse_int(name, optarg); break;
            case 'g': opt.greet_timeout = parse_double(name, optarg); break;
            case 'c': opt.cpu = parse_int(name, optarg); break;
            case 'S': opt.server_pid = parse_int(name, optarg); break;
            case 'P': opt.prefix = optarg; break;
            case 'H': opt.hold_max = parse_double(name, optarg); break;
            default: usage();
        }
    }
    if (optind != argc - 1 || opt.port <= 0 || opt.port > 65535 || opt.sources < 1 || opt.opening < 1) usage();
    const char *mode = argv[optind];
    if (strcmp(mode, "echo") == 0) opt.mode = ECHO;
    else if (strcmp(mode, "rate") == 0) opt.mode = RATE;
    else if (strcmp(mode, "churn") == 0) opt.mode = CHURN;
    else if (strcmp(mode, "hold") == 0) opt.mode = HOLD;
    else usage();
}

int main(int argc, char **argv) {
    parse(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    if (opt.cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(opt.cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0) die("sched_setaffinity");
    }
    struct rlimit files;
    if (getrlimit(RLIMIT_NOFILE, &files) == 0) {
        files.rlim_cur = files.rlim_max;
        setrlimit(RLIMIT_NOFILE, &files);
    }
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)opt.port);
    if (inet_pton(AF_INET, opt.host, &target.sin_addr) != 1) {
        fprintf(stderr, "loadgen: --host wants an IPv4 address, not %s\n", opt.host);
        return 2;
    }
    source_addrs = grow(NULL, (size_t)opt.sources * sizeof *source_addrs);
    for (int i = 0; i < opt.sources; i++) { /* 127.0.<k/254>.<k%254+1>, as source_addresses() in loadgen.py */
        int k = opt.first_source + i;
        source_addrs[i].s_addr = htonl((127u << 24) | ((unsigned)(k / 254) << 8) | (unsigned)(k % 254 + 1));
    }
    expected_echo_len = snprintf(expected_echo, sizeof expected_echo, "%s%.*s", opt.prefix,
                                 (int)(sizeof MESSAGE - 2), MESSAGE);
    expected_quit_len = snprintf(expected_quit, sizeof expected_quit, "%s:q", opt.prefix);
    if (expected_echo_len >= LINE_CAP) {
        fprintf(stderr, "loadgen: --prefix is too long\n");
        return 2;
    }
    nconns = opt.connections;
    conns = grow(NULL, (size_t)(nconns ? nconns : 1) * sizeof *conns);
    memset(conns, 0, (size_t)(nconns ? nconns : 1) * sizeof *conns);
    for (int i = 0; i < nconns; i++) conns[i].fd = -1;
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    switch (opt.mode) {
        case ECHO: run_echo(); break;
        case RATE: run_rate(); break;
        case CHURN: run_churn(); break;
        case HOLD: run_hold(); break;
    }
    fflush(stdout);
    return 0;
}
