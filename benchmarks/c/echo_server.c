/* The kernel's floor among the reference servers: one thread, one epoll loop, the tutorial conversation.
 *
 * greeting line -> the client's timeout line (clamped; no reply) -> every line echoed as PREFIX + LINE -> ":q"
 * echoed, then close; no complete line within the idle timeout -> "bye: idle timeout" and close; a line over
 * MAX_LINE closes the connection. The same rules as benchmarks/refservers.py, with no framing detection and no
 * notices: what is left is the kernel's work (accept, recv, send, close) plus a memchr per read.
 *
 *   echo_server [--host 127.0.0.1] [--port 0] [--name c-epoll] [--cpu N]
 * prints "NAME listening on HOST:PORT" (geventchat.testing's listening line) once it accepts, and runs until killed.
 *
 * Memory: a connection owns 40 bytes of state; input and output buffers exist only while a partial line or unsent
 * bytes are pending, so an idle connection costs the kernel's socket and little else. A peer that sends without
 * reading stops being read once OUT_CAP bytes of replies wait for it (read again when they drain), so its output
 * stays under OUT_CAP plus the replies to one read; a connection closing (after ":q" or the idle bye) that cannot
 * flush within CLOSE_GRACE seconds is closed anyway.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
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
#include <time.h>
#include <unistd.h>

#define GREETING "你好,我是geventchat~\n" /* geventchat's defaults (config.DEFAULT_GREETING / DEFAULT_PREFIX) */
#define PREFIX "我收到了你的信息:"
#define BYE_IDLE "bye: idle timeout\n"
#define QUIT ":q"
#define DEFAULT_TIMEOUT 60.0 /* ProtocolConfig's default, min and max timeouts and line limit */
#define MIN_TIMEOUT 0.1
#define MAX_TIMEOUT 3600.0
#define MAX_LINE 65536
#define BACKLOG 4096
#define SWEEP_SECONDS 0.25 /* idle timeouts are enforced by a sweep this often: their resolution */
#define LISTEN_TAG UINT32_MAX
#define OUT_CAP (256 * 1024) /* unsent reply bytes past which the peer's input is no longer read */
#define CLOSE_GRACE 2.0      /* seconds a closing connection gets to flush its output */

struct conn {
    double deadline; /* monotonic seconds (idle, or closing: flush by then); 0 = no connection on this fd */
    float timeout;   /* negotiated idle timeout; 0 until the timeout line came */
    bool closing;    /* close once the output is flushed */
    uint8_t watched; /* the epoll events registered for this fd */
    uint32_t in_len, out_len;
    char *in, *out; /* heap, only while a partial line / unsent bytes are pending */
};

static struct conn *conns; /* indexed by fd */
static int conns_cap;
static int ep;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *grow(void *p, size_t bytes) {
    void *q = realloc(p, bytes);
    if (q == NULL && bytes) {
        fprintf(stderr, "echo_server: out of memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return q;
}

static void drop(int fd) {
    struct conn *c = &conns[fd];
    free(c->in);
    free(c->out);
    memset(c, 0, sizeof *c);
    close(fd);
}

/* The idle timeout a timeout line asks for, clamped; the default if it is not a positive number. */
static float negotiate(const char *text, size_t len) {
    char buf[64];
    if (len == 0 || len >= sizeof buf) return DEFAULT_TIMEOUT;
    memcpy(buf, text, len);
    buf[len] = 0;
    char *end;
    double v = strtod(buf, &end);
    while (*end == ' ' || *end == '\t') end++;
    if (*end != 0 || !(v > 0) || v > 1e300) return DEFAULT_TIMEOUT;
    return (float)(v < MIN_TIMEOUT ? MIN_TIMEOUT : v > MAX_TIMEOUT ? MAX_TIMEOUT : v);
}

/* Watches the fd for what its state needs: output while replies are pending, input unless OUT_CAP bytes of them
 * wait (a peer that does not read must not make us buffer without limit). */
static void watch(int fd) {
    struct conn *c = &conns[fd];
    uint8_t want = (uint8_t)((c->out_len > OUT_CAP ? 0 : EPOLLIN) | (c->out_len ? EPOLLOUT : 0));
    if (want == c->watched) return;
    struct epoll_event ev = {.events = want, .data.u32 = (uint32_t)fd};
    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
    c->watched = want;
}

/* Sends what it can of data now and keeps the rest; false if the peer is gone. */
static bool send_or_keep(int fd, const char *data, size_t len) {
    struct conn *c = &conns[fd];
    if (c->out_len == 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN) return false;
        if (n == (ssize_t)len) return true;
        if (n > 0) data += n, len -= (size_t)n;
    }
    c->out = grow(c->out, c->out_len + len);
    memcpy(c->out + c->out_len, data, len);
    c->out_len += (uint32_t)len; /* at most OUT_CAP plus the replies to one read: no wrap */
    watch(fd);
    return true;
}

static void flush(int fd) {
    struct conn *c = &conns[fd];
    ssize_t n = send(fd, c->out, c->out_len, MSG_NOSIGNAL);
    if (n < 0) {
        if (errno != EAGAIN) drop(fd);
        return;
    }
    memmove(c->out, c->out + n, c->out_len - (size_t)n);
    c->out_len -= (uint32_t)n;
    if (c->out_len == 0) {
        free(c->out);
        c->out = NULL;
        if (c->closing) {
            drop(fd);
            return;
        }
    }
    watch(fd); /* input again once the output is under OUT_CAP; no output watch once it is empty */
}

/* Answers every complete line in data (the pending partial line first); keeps the new partial line. */
static void on_data(int fd, const char *data, size_t len) {
    static char reply[2 * 65536 + 64];
    struct conn *c = &conns[fd];
    size_t out = 0;
    const char *p = data, *end = data + len;
    bool quit = false, any_line = false;
    while (p < end && !quit) { /* bounded: each turn consumes one line of this read */
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL) break;
        const char *line = p;
        size_t line_len = (size_t)(nl - p);
        char *joined = NULL;
        if (c->in_len) { /* the line began in an earlier read */
            joined = grow(NULL, c->in_len + line_len);
            memcpy(joined, c->in, c->in_len);
            memcpy(joined + c->in_len, p, line_len);
            line = joined;
            line_len += c->in_len;
            free(c->in);
            c->in = NULL;
            c->in_len = 0;
        }
        p = nl + 1;
        any_line = true;
        if (line_len && line[line_len - 1] == '\r') line_len--;
        if (line_len > MAX_LINE) {
            free(joined);
            drop(fd);
            return;
        }
        if (c->timeout == 0) {
            c->timeout = negotiate(line, line_len);
        } else {
            if (out + sizeof PREFIX + line_len + 1 > sizeof reply) { /* flush a full batch before going on */
                if (!send_or_keep(fd, reply, out)) {
                    free(joined);
                    drop(fd);
                    return;
                }
                out = 0;
            }
            memcpy(reply + out, PREFIX, sizeof PREFIX - 1);
            out += sizeof PREFIX - 1;
            memcpy(reply + out, line, line_len);
            out += line_len;
            reply[out++] = '\n';
            quit = line_len == 2 && memcmp(line, QUIT, 2) == 0;
        }
        free(joined);
    }
    if (!quit && p < end) { /* keep the partial line */
        size_t rest = (size_t)(end - p);
        if (c->in_len + rest > MAX_LINE + 1) {
            drop(fd);
            return;
        }
        c->in = grow(c->in, c->in_len + rest);
        memcpy(c->in + c->in_len, p, rest);
        c->in_len += (uint32_t)rest;
    }
    if (out && !send_or_keep(fd, reply, out)) {
        drop(fd);
        return;
    }
    if (quit) {
        if (c->out_len == 0) drop(fd);
        else c->closing = true, c->deadline = now() + CLOSE_GRACE;
        return;
    }
    if (any_line) c->deadline = now() + (c->timeout ? c->timeout : DEFAULT_TIMEOUT);
}

static void on_readable(int fd) {
    static char buf[65536];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN)) {
        drop(fd);
        return;
    }
    if (n > 0 && !conns[fd].closing) on_data(fd, buf, (size_t)n);
}

static void accept_all(int listener) {
    for (int i = 0; i < 256; i++) { /* bounded per turn: the connections already open get their turn too */
        int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return; /* EAGAIN, or out of files (EMFILE): the backlog waits for the next turn */
        if (fd >= conns_cap) {
            int cap = conns_cap;
            conns_cap = fd * 2 + 1024;
            conns = grow(conns, (size_t)conns_cap * sizeof *conns);
            memset(conns + cap, 0, (size_t)(conns_cap - cap) * sizeof *conns);
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conns[fd].deadline = now() + DEFAULT_TIMEOUT;
        conns[fd].watched = EPOLLIN;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)fd};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0 || !send_or_keep(fd, GREETING, sizeof GREETING - 1)) drop(fd);
    }
}

/* Idle connections get the bye and start closing; closing ones whose peer did not take their output in
 * CLOSE_GRACE seconds are closed with it unsent (else a peer that never reads would keep its fd and buffer). */
static void sweep_idle(double t) {
    for (int fd = 0; fd < conns_cap; fd++) {
        struct conn *c = &conns[fd];
        if (c->deadline == 0 || t < c->deadline) continue;
        if (c->closing) drop(fd);
        else if (!send_or_keep(fd, BYE_IDLE, sizeof BYE_IDLE - 1) || c->out_len == 0) drop(fd);
        else c->closing = true, c->deadline = t + CLOSE_GRACE;
    }
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *name = "c-epoll";
    int port = 0, cpu = -1;
    static const struct option longs[] = {
        {"host", 1, 0, 'h'}, {"port", 1, 0, 'p'}, {"name", 1, 0, 'n'}, {"cpu", 1, 0, 'c'}, {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (ch) {
            case 'h': host = optarg; break;
            case 'p': port = atoi(optarg); break;
            case 'n': name = optarg; break;
            case 'c': cpu = atoi(optarg); break;
            default:
                fprintf(stderr, "usage: echo_server [--host H] [--port P] [--name NAME] [--cpu N]\n");
                return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        sched_setaffinity(0, sizeof set, &set);
    }
    struct rlimit files;
    if (getrlimit(RLIMIT_NOFILE, &files) == 0) {
        files.rlim_cur = files.rlim_max;
        setrlimit(RLIMIT_NOFILE, &files);
    }
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "echo_server: --host wants an IPv4 address, not %s\n", host);
        return 2;
    }
    socklen_t len = sizeof addr;
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(listener, BACKLOG) < 0 ||
        getsockname(listener, (struct sockaddr *)&addr, &len) < 0) {
        fprintf(stderr, "echo_server: cannot listen on %s:%d: %s\n", host, port, strerror(errno));
        return 1;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = LISTEN_TAG};
    epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev);
    printf("%s listening on %s:%d\n", name, host, ntohs(addr.sin_port));
    fflush(stdout);
    static struct epoll_event events[1024];
    double next_sweep = now() + SWEEP_SECONDS;
    for (;;) {
        int n = epoll_wait(ep, events, 1024, (int)(SWEEP_SECONDS * 1000));
        for (int i = 0; i < n; i++) {
            uint32_t tag = events[i].data.u32;
            if (tag == LISTEN_TAG) {
                accept_all(listener);
                continue;
            }
            int fd = (int)tag;
            if (conns[fd].deadline == 0) continue; /* dropped earlier in this batch */
            if (events[i].events & EPOLLOUT) flush(fd);
            if (conns[fd].deadline != 0 && (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) on_readable(fd);
        }
        double t = now();
        if (t >= next_sweep) {
            sweep_idle(t);
            next_sweep = t + SWEEP_SECONDS;
        }
    }
}
