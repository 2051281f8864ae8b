/* fanout_gen: a single-threaded epoll load generator for chat-room fan-out (geventchat and the broadcast references).
 *
 * R rooms x S members connect to 127.0.0.x:PORT, read the greeting, send a timeout line and `:join g<pid>rN` (a
 * room name no earlier run used: the leave notices of a previous run's members cannot land here), and wait
 * for the echo reply and `ok: joined`, at most --join-concurrency joins unanswered at once. Setup ends when every
 * room has seen all of its `info: ... joined` lines (S*(S-1)/2 per room), so nothing left over from it is counted
 * as a delivery, or, if a server loses some, 0.5 s after the last setup line (the count missing is reported).
 *
 * Then, per room, the first K members ("senders") send lines `m<ns>`:
 *   closed: at most W messages per room in flight, a message leaving flight once the room's receivers have taken
 *           (S-1) more room lines; receivers only count newlines in each read (no per-line parsing), so the
 *           generator's cost per delivery is one memchr step, not a parse.
 *   open:   RATE messages per second per room at fixed due times (a 250 us timerfd tick); <ns> is the due time and
 *           every receiver parses the trailing digits of each line to take latency from the due time (so a server
 *           that falls behind is charged for the wait, not hidden by it: no coordinated omission).
 * Deliveries are counted over the measured window (after the warm-up); after it, sending stops and the generator
 * drains until every room got sent*(S-1) deliveries (or the drain time runs out): loss = expected - delivered.
 *
 * Prints one JSON line. CPU figures come from getrusage (ours) and /proc/PID/stat (the servers' and the broker's
 * pids, given by the caller, who knows the process tree). Exit status 2 on a usage error, 1 if setup fails.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdint.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_PIDS 64
#define READ_BUF (256 * 1024)
#define LINE_MAX_SETUP 1024
#define OUT_MAX 16384
#define HIST_BUCKETS (64 + 40 * 32)
#define TIMER_TAG UINT64_MAX

enum state { GREETING, GREETED, JOINING, JOINED, CLOSED };

struct conn {
    int fd;
    int room;
    int is_sender;
    enum state state;
    int at_line_start;     /* sender parsing: the next byte starts a line */
    char line[LINE_MAX_SETUP]; /* setup: the partial line */
    int line_len;
    char tail[24];         /* open mode: the last bytes of a partial line (its digits may straddle reads) */
    int tail_len;
    char out[OUT_MAX];     /* bytes the socket did not take yet */
    int out_len;
    int watching_out;      /* EPOLLOUT is registered (changed only when needed: one epoll_ctl less per send) */
};

struct room {
    long long sent, delivered, echoes, info;
    int next_sender;
    uint64_t next_due;
};

static struct conn *conns;
static struct room *rooms;
static int n_rooms = 10, room_size = 10, senders = 1, window = 4, n_conns;
static int port, cpu = -1, sources = 1, epfd, join_concurrency = 50, joining, next_to_join;
static uint64_t last_setup_line;
static double duration = 2, warmup = 0.5, drain_s = 3, setup_timeout = 60, rate_per_room;
static int open_mode;
static const char *timeout_line = "600";
static int server_pids[MAX_PIDS], n_server_pids, broker_pids[MAX_PIDS], n_broker_pids;
static long long errors_seen, closed_seen;
static char first_error[160];
static uint64_t hist[HIST_BUCKETS];
static uint64_t hist_count;
static uint64_t window_start, window_end;
static int sending = 1;
static char rbuf[READ_BUF];

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double self_cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* utime + stime of one process from /proc/PID/stat (0 if it is gone: a worker that exited costs nothing more). */
static double proc_cpu(int pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the command name may hold spaces: fields start after its ')' */
    if (!p) return 0;
    unsigned long utime = 0, stime = 0;
    /* after ')': state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2) return 0;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

static double pids_cpu(const int *pids, int n) {
    double total = 0;
    for (int i = 0; i < n; i++) total += proc_cpu(pids[i]);
    return total;
}

static void fail(const char *what) {
    fprintf(stderr, "fanout_gen: %s\n", what);
    exit(1);
}

static void note_error(const char *line, int len) {
    errors_seen++;
    if (!first_error[0]) {
        int n = len < (int)sizeof first_error - 1 ? len : (int)sizeof first_error - 1;
        for (int i = 0; i < n; i++) first_error[i] = (line[i] == '"' || line[i] == '\\' || line[i] < 32) ? '?' : line[i];
        first_error[n] = 0;
    }
}

static void hist_add(uint64_t ns) {
    uint64_t us = ns / 1000;
    int index;
    if (us < 64) {
        index = (int)us;
    } else {
        int e = 63 - __builtin_clzll(us); /* e >= 6 */
        index = 64 + (e - 6) * 32 + (int)((us >> (e - 5)) & 31);
        if (index >= HIST_BUCKETS) index = HIST_BUCKETS - 1;
    }
    hist[index]++;
    hist_count++;
}

static double bucket_ms(int index) {
    if (index < 64) return index / 1000.0;
    int e = (index - 64) / 32 + 6, sub = (index - 64) % 32;
    return (double)((1ull << e) + ((uint64_t)sub << (e - 5))) / 1000.0;
}

static double percentile(double q) {
    if (!hist_count) return 0;
    uint64_t rank = (uint64_t)(q * (double)hist_count), seen = 0;
    if ((double)rank < q * (double)hist_count) rank++; /* ceil, without libm (cbuild links no -lm) */
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += hist[i];
        if (seen >= rank && hist[i]) return bucket_ms(i);
    }
    return bucket_ms(HIST_BUCKETS - 1);
}

static void watch(struct conn *c, int index, int want_out) {
    if (c->watching_out == want_out) return;
    c->watching_out = want_out;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.u64 = (uint64_t)index};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) fail("epoll_ctl MOD failed (our bug)");
}

static void flush_out(int index) {
    struct conn *c = &conns[index];
    while (c->out_len > 0) {
        ssize_t n = send(c->fd, c->out, (size_t)c->out_len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) break;
            if (errno == EINTR) continue;
            c->out_len = 0;
            return;
        }
        memmove(c->out, c->out + n, (size_t)(c->out_len - n));
        c->out_len -= (int)n;
    }
    watch(c, index, c->out_len > 0);
}

static int queue_out(int index, const char *data, int len) {
    struct conn *c = &conns[index];
    if (c->out_len + len > OUT_MAX) return 0; /* the server is not reading: do not grow without bound */
    memcpy(c->out + c->out_len, data, (size_t)len);
    c->out_len += len;
    return 1;
}

/* Queue up to `count` messages `m<ns>` on the room's senders (round robin), then write them. */
static long long send_messages(int r, long long count, uint64_t ns, uint64_t step) {
    long long done = 0;
    char msg[32];
    int touched[64], n_touched = 0;
    while (done < count) {
        int index = r * room_size + rooms[r].next_sender;
        if (conns[index].state != JOINED) break;
        int len = snprintf(msg, sizeof msg, "m%llu\n", (unsigned long long)(ns + (uint64_t)done * step));
        if (!queue_out(index, msg, len)) break;
        done++;
        int seen = 0;
        for (int t = 0; t < n_touched; t++) seen |= touched[t] == index;
        if (!seen && n_touched < 64) touched[n_touched++] = index;
        rooms[r].next_sender = (rooms[r].next_sender + 1) % senders;
    }
    for (int t = 0; t < n_touched; t++) flush_out(touched[t]);
    rooms[r].sent += done;
    return done;
}

/* Closed loop: top the room up to `window` messages in flight. */
static void pump_closed(int r) {
    if (!sending) return;
    struct room *rm = &rooms[r];
    long long receivers = room_size - 1;
    long long outstanding = rm->sent * receivers - rm->delivered;
    long long room_for = window - (outstanding + receivers - 1) / receivers;
    if (room_for > 0) send_messages(r, room_for, now_ns(), 0);
}

static void pump_open(uint64_t now) {
    if (!sending) return;
    uint64_t step = (uint64_t)(1e9 / rate_per_room);
    for (int r = 0; r < n_rooms; r++) {
        struct room *rm = &rooms[r];
        if (rm->next_due > now) continue;
        long long due = (long long)((now - rm->next_due) / step) + 1;
        if (due > 1000) due = 1000; /* bounded batch; the rest stays due */
        long long sent = send_messages(r, due, rm->next_due, step);
        rm->next_due += (uint64_t)sent * step;
    }
}

/* The latency of one room line ending just before `end` (digits after the last 'm'), from its due time. */
static void take_latency(struct conn *c, const char *start, const char *end, uint64_t now) {
    uint64_t value = 0, scale = 1;
    const char *p = end;
    int digits = 0, from_tail = 0, ti = c->tail_len;
    char before = 0;
    for (;;) {
        char ch;
        if (!from_tail && p > start) {
            ch = *--p;
        } else {
            from_tail = 1;
            if (ti == 0) break;
            ch = c->tail[--ti];
        }
        if (ch < '0' || ch > '9') {
            before = ch;
            break;
        }
        if (digits++ > 19) return;
        value += (uint64_t)(ch - '0') * scale;
        scale *= 10;
    }
    if (before != 'm' || !digits) return;
    if (value >= window_start && value < window_end && now > value) hist_add(now - value);
}

static void on_room_data(int index, char *buf, ssize_t n, uint64_t now) {
    struct conn *c = &conns[index];
    struct room *rm = &rooms[c->room];
    char *p = buf, *end = buf + n;
    if (c->is_sender) {
        /* senders classify each line by its first byte: '#' a room line, 'e'/'b' error:/bye:, else an echo */
        while (p < end) {
            if (c->at_line_start) {
                if (*p == '#') {
                    rm->delivered++;
                    if (open_mode) c->tail_len = 0;
                } else if (*p == 'e' || *p == 'b') {
                    note_error(p, (int)(end - p < 60 ? end - p : 60));
                } else {
                    rm->echoes++;
                }
            }
            char *nl = memchr(p, '\n', (size_t)(end - p));
            if (!nl) {
                c->at_line_start = 0;
                break;
            }
            c->at_line_start = 1;
            p = nl + 1;
        }
        return;
    }
    if (!open_mode) {
        long long lines = 0;
        while ((p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
            lines++;
            p++;
        }
        rm->delivered += lines;
        return;
    }
    char *line_start = buf;
    while ((p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        rm->delivered++;
        take_latency(c, line_start, p, now);
        c->tail_len = 0;
        line_start = ++p;
    }
    int rest = (int)(end - line_start);
    if (rest > (int)sizeof c->tail) {
        line_start = end - sizeof c->tail;
        rest = sizeof c->tail;
        c->tail_len = 0;
    }
    if (c->tail_len + rest > (int)sizeof c->tail) {
        int keep = (int)sizeof c->tail - rest;
        memmove(c->tail, c->tail + c->tail_len - keep, (size_t)keep);
        c->tail_len = keep;
    }
    memcpy(c->tail + c->tail_len, line_start, (size_t)rest);
    c->tail_len += rest;
}

/* Send the timeout line and `:join` for greeted members in order, at most join_concurrency unanswered at once
 * (a thousand joins in one burst is a load test of its own, not this benchmark's subject). */
static void start_joins(void) {
    while (joining < join_concurrency && next_to_join < n_conns && conns[next_to_join].state == GREETED) {
        int index = next_to_join++;
        char msg[96];
        int n = snprintf(msg, sizeof msg, "%s\n:join g%dr%d\n", timeout_line, (int)getpid(), conns[index].room);
        conns[index].state = JOINING;
        joining++;
        if (!queue_out(index, msg, n)) fail("cannot queue the join (our bug)");
        flush_out(index);
    }
}

/* Setup: whole lines, parsed. */
static void on_setup_line(int index, const char *line, int len) {
    struct conn *c = &conns[index];
    struct room *rm = &rooms[c->room];
    last_setup_line = now_ns();
    if (c->state == GREETING) {
        c->state = GREETED;
        start_joins();
        return;
    }
    if (len >= 6 && memcmp(line, "info: ", 6) == 0) {
        rm->info++;
    } else if (len >= 11 && memcmp(line, "ok: joined ", 11) == 0) {
        if (c->state == JOINING) {
            c->state = JOINED;
            joining--;
            start_joins();
        }
    } else if ((len >= 7 && memcmp(line, "error: ", 7) == 0) || (len >= 5 && memcmp(line, "bye: ", 5) == 0)) {
        note_error(line, len);
    } else if (line[0] == '#') {
        rm->delivered++; /* not expected during setup, but counted if a server sends one */
    }
}

static void on_setup_data(int index, const char *buf, ssize_t n) {
    struct conn *c = &conns[index];
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] == '\n') {
            c->line[c->line_len < LINE_MAX_SETUP ? c->line_len : LINE_MAX_SETUP - 1] = 0;
            on_setup_line(index, c->line, c->line_len);
            c->line_len = 0;
        } else if (c->line_len < LINE_MAX_SETUP - 1) {
            c->line[c->line_len++] = buf[i];
        }
    }
}

static int in_setup = 1;
static int timer_fd = -1;

static void on_readable(int index, uint64_t now) {
    struct conn *c = &conns[index];
    for (int reads = 0; reads < 4; reads++) {
        ssize_t n = recv(c->fd, rbuf, sizeof rbuf, 0);
        if (n > 0) {
            if (in_setup)
                on_setup_data(index, rbuf, n);
            else
                on_room_data(index, rbuf, n, now);
            if (n < (ssize_t)sizeof rbuf) break;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
        /* end of input or a reset: the server closed this member (too slow, idle, or it crashed) */
        closed_seen++;
        c->state = CLOSED;
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
        break;
    }
    if (!in_setup && !open_mode) pump_closed(c->room);
}

static void run_loop_until(uint64_t deadline, int (*done)(void)) {
    struct epoll_event events[512];
    for (;;) {
        uint64_t now = now_ns();
        if (now >= deadline || (done && done())) return;
        int wait_ms = (int)((deadline - now) / 1000000) + 1;
        if (wait_ms > 100) wait_ms = 100;
        int n = epoll_wait(epfd, events, 512, wait_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            fail("epoll_wait failed (our bug)");
        }
        now = now_ns();
        for (int i = 0; i < n; i++) {
            uint64_t tag = events[i].data.u64;
            if (tag == TIMER_TAG) {
                uint64_t ticks;
                if (read(timer_fd, &ticks, sizeof ticks) < 0 && errno != EAGAIN) fail("timerfd read failed");
                continue;
            }
            int index = (int)tag;
            if (conns[index].fd < 0) continue;
            if (events[i].events & EPOLLOUT) flush_out(index);
            if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(index, now);
        }
        if (open_mode && !in_setup) pump_open(now);
    }
}

static int all_joined(void) {
    for (int i = 0; i < n_conns; i++)
        if (conns[i].state != JOINED) return 0;
    return 1;
}

/* Setup is over when every member is in and every join notice arrived, or, for a server that loses some (a
 * broker's at-most-once delivery), when nothing more arrived for QUIET_NS after the last member got in. */
#define QUIET_NS 500000000ull
static int setup_done(void) {
    if (!all_joined()) return 0;
    long long need = (long long)room_size * (room_size - 1) / 2;
    int complete = 1;
    for (int r = 0; r < n_rooms; r++)
        if (rooms[r].info < need) complete = 0;
    return complete || now_ns() - last_setup_line > QUIET_NS;
}

static int drained(void) {
    for (int r = 0; r < n_rooms; r++)
        if (rooms[r].delivered < rooms[r].sent * (room_size - 1) || rooms[r].echoes < rooms[r].sent) return 0;
    return 1;
}

static long long total(int which) {
    long long sum = 0;
    for (int r = 0; r < n_rooms; r++)
        sum += which == 0 ? rooms[r].sent : which == 1 ? rooms[r].delivered : rooms[r].echoes;
    return sum;
}

static void usage(void) {
    fprintf(stderr,
            "usage: fanout_gen --port P [--rooms R] [--size S] [--senders K] [--window W] [--duration D] [--warmup D]\n"
            "       [--rate PER_ROOM_PER_S (open loop)] [--drain D] [--setup-timeout D] [--timeout-line T]\n"
            "       [--sources N (127.0.0.1..N)] [--join-concurrency N] [--cpu N] [--server-pid P]... [--broker-pid P]...\n");
    exit(2);
}

/* A whole number in int's range (atoi's result out of range is undefined), or one clear line and exit 2. */
static int int_arg(const char *name, const char *text) {
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (*text == 0 || *end != 0 || errno == ERANGE || v < INT_MIN || v > INT_MAX) {
        fprintf(stderr, "fanout_gen: %s wants a whole number in range %d..%d, not %s\n", name, INT_MIN, INT_MAX, text);
        exit(2);
    }
    return (int)v;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--port")) port = int_arg(a, v);
        else if (!strcmp(a, "--rooms")) n_rooms = int_arg(a, v);
        else if (!strcmp(a, "--size")) room_size = int_arg(a, v);
        else if (!strcmp(a, "--senders")) senders = int_arg(a, v);
        else if (!strcmp(a, "--window")) window = int_arg(a, v);
        else if (!strcmp(a, "--duration")) duration = atof(v);
        else if (!strcmp(a, "--warmup")) warmup = atof(v);
        else if (!strcmp(a, "--drain")) drain_s = atof(v);
        else if (!strcmp(a, "--setup-timeout")) setup_timeout = atof(v);
        else if (!strcmp(a, "--rate")) { rate_per_room = atof(v); open_mode = 1; }
        else if (!strcmp(a, "--timeout-line")) timeout_line = v;
        else if (!strcmp(a, "--sources")) sources = int_arg(a, v);
        else if (!strcmp(a, "--join-concurrency")) join_concurrency = int_arg(a, v);
        else if (!strcmp(a, "--cpu")) cpu = int_arg(a, v);
        else if (!strcmp(a, "--server-pid") && n_server_pids < MAX_PIDS) server_pids[n_server_pids++] = int_arg(a, v);
        else if (!strcmp(a, "--broker-pid") && n_broker_pids < MAX_PIDS) broker_pids[n_broker_pids++] = int_arg(a, v);
        else usage();
    }
    /* senders: at most 64, the batch that send_messages() flushes at once */
    if (port <= 0 || n_rooms < 1 || room_size < 2 || senders < 1 || senders > 64 || senders > room_size - 1 ||
        window < 1 || sources < 1 || sources > 250 || join_concurrency < 1 || (open_mode && !(rate_per_room > 0)))
        usage();
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0) fail("cannot pin to the requested CPU");
    }
    n_conns = n_rooms * room_size;
    conns = calloc((size_t)n_conns, sizeof *conns);
    rooms = calloc((size_t)n_rooms, sizeof *rooms);
    if (!conns || !rooms) fail("out of memory");
    epfd = epoll_create1(0);
    uint64_t started = now_ns();

    /* Connect members room by room (blocking connects on loopback finish at once; then non-blocking). */
    for (int i = 0; i < n_conns; i++) {
        struct conn *c = &conns[i];
        c->room = i / room_size;
        c->is_sender = (i % room_size) < senders;
        c->at_line_start = 1;
        c->fd = socket(AF_INET, SOCK_STREAM, 0);
        if (c->fd < 0) fail("socket() failed: out of file descriptors? (raise ulimit -n)");
        struct sockaddr_in src = {.sin_family = AF_INET, .sin_port = 0};
        src.sin_addr.s_addr = htonl(0x7f000001u + (uint32_t)(i % sources));
        if (sources > 1 && bind(c->fd, (struct sockaddr *)&src, sizeof src) < 0) fail("bind to a source address failed");
        struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        dst.sin_addr.s_addr = htonl(0x7f000001u);
        if (connect(c->fd, (struct sockaddr *)&dst, sizeof dst) < 0) {
            char msg[96];
            snprintf(msg, sizeof msg, "connect to 127.0.0.1:%d failed: %s (is the server up?)", port, strerror(errno));
            fail(msg);
        }
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)i};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) fail("epoll_ctl ADD failed");
    }
    run_loop_until(started + (uint64_t)(setup_timeout * 1e9), setup_done);
    if (!setup_done()) {
        long long joined = 0, info = 0;
        for (int i = 0; i < n_conns; i++) joined += conns[i].state == JOINED;
        for (int r = 0; r < n_rooms; r++) info += rooms[r].info;
        fprintf(stderr,
                "fanout_gen: setup incomplete after %.0fs: %lld of %d joined, %lld of %lld join notices, "
                "%lld closed by the server; first error line: %s\n",
                setup_timeout, joined, n_conns, info, (long long)n_rooms * room_size * (room_size - 1) / 2,
                closed_seen, first_error[0] ? first_error : "none");
        return 1;
    }
    double setup_s = (double)(now_ns() - started) / 1e9;
    long long notices = 0;
    for (int r = 0; r < n_rooms; r++) notices += rooms[r].info;
    long long notices_missing = (long long)n_rooms * room_size * (room_size - 1) / 2 - notices;
    for (int r = 0; r < n_rooms; r++) rooms[r].delivered = 0; /* nothing yet: a stray setup line is not a delivery */
    long long setup_errors = errors_seen;
    in_setup = 0;

    uint64_t t0 = now_ns();
    window_start = t0 + (uint64_t)(warmup * 1e9);
    window_end = window_start + (uint64_t)(duration * 1e9);
    if (open_mode) {
        timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
        if (timer_fd < 0) fail("timerfd_create failed");
        struct itimerspec spec = {.it_interval = {0, 250000}, .it_value = {0, 250000}};
        if (timerfd_settime(timer_fd, 0, &spec, NULL) < 0) fail("timerfd_settime failed");
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TIMER_TAG};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, timer_fd, &ev) < 0) fail("epoll_ctl ADD of the send timer failed");
        for (int r = 0; r < n_rooms; r++) rooms[r].next_due = t0 + (uint64_t)(1e9 / rate_per_room * r / n_rooms);
    } else {
        for (int r = 0; r < n_rooms; r++) pump_closed(r);
    }
    run_loop_until(window_start, NULL);
    long long d0 = total(1), s0 = total(0);
    double g0 = self_cpu(), sv0 = pids_cpu(server_pids, n_server_pids), b0 = pids_cpu(broker_pids, n_broker_pids);
    uint64_t w0 = now_ns();
    run_loop_until(window_end, NULL);
    long long d1 = total(1), s1 = total(0);
    double g1 = self_cpu(), sv1 = pids_cpu(server_pids, n_server_pids), b1 = pids_cpu(broker_pids, n_broker_pids);
    double elapsed = (double)(now_ns() - w0) / 1e9;
    sending = 0;
    uint64_t drain_start = now_ns();
    run_loop_until(drain_start + (uint64_t)(drain_s * 1e9), drained);
    double drain_took = (double)(now_ns() - drain_start) / 1e9;

    long long sent = total(0), delivered = total(1), echoes = total(2);
    long long expected = sent * (room_size - 1);
    long long deliveries = d1 - d0;
    printf("{\"mode\": \"%s\", \"rooms\": %d, \"size\": %d, \"connections\": %d, \"senders\": %d, \"window\": %d, "
           "\"rate_per_room\": %.3f, \"offered_per_s\": %.1f, \"duration\": %.3f, \"setup_s\": %.3f, \"join_notices_missing\": %lld, "
           "\"messages\": %lld, \"messages_per_s\": %.1f, \"echoes\": %lld, \"deliveries\": %lld, "
           "\"deliveries_per_s\": %.1f, \"expected\": %lld, \"delivered\": %lld, \"loss\": %lld, "
           "\"drain_s\": %.3f, \"errors\": %lld, \"closed\": %lld, \"first_error\": \"%s\", "
           "\"loadgen_cpu_s\": %.4f, \"loadgen_cpu\": %.4f, \"server_cpu_s\": %.4f, \"server_cpu\": %.4f, "
           "\"broker_cpu_s\": %.4f, \"broker_cpu\": %.4f, \"latency_samples\": %llu, "
           "\"p50\": %.3f, \"p99\": %.3f, \"p999\": %.3f, \"max_bucket\": %.3f}\n",
           open_mode ? "open" : "closed", n_rooms, room_size, n_conns, senders, window, rate_per_room,
           rate_per_room * n_rooms * (room_size - 1), elapsed, setup_s, notices_missing, sent, (double)(s1 - s0) / elapsed, echoes,
           deliveries, (double)deliveries / elapsed, expected, delivered, expected - delivered, drain_took,
           errors_seen - setup_errors, closed_seen, first_error, g1 - g0, (g1 - g0) / elapsed, sv1 - sv0,
           (sv1 - sv0) / elapsed, b1 - b0, (b1 - b0) / elapsed, (unsigned long long)hist_count, percentile(0.5),
           percentile(0.99), percentile(0.999), percentile(1.0));
    for (int i = 0; i < n_conns; i++)
        if (conns[i].fd >= 0) close(conns[i].fd);
    return 0;
}
