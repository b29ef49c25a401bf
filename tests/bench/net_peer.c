/*
 * The traffic program of bench_network.py: built static, copied into the container's
 * rootfs, run the same way under pykvm and under Podman.
 *
 *   net_peer serve PORT              accept connections forever; each one is either a
 *                                    sink (first byte 'S': read to EOF) or an echo
 *                                    (first byte 'E': send back every byte)
 *   net_peer stream ADDR PORT MIB    send MIB MiB to a sink; print "<bytes> <seconds>"
 *   net_peer rr ADDR PORT N          N one-byte round trips on one connection;
 *                                    print each round trip's seconds, one a line
 *
 * TCP_NODELAY on both sides of rr, so a round trip is two segments and nothing waits
 * for Nagle.  Every loop is bounded: MIB and N are counts, and a peer gone is an exit.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "peer_common.h"

#define CHUNK (64 * 1024)
#define MAX_MIB 4096
#define MAX_RR 1000000

static void nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void handle(int fd)
{
    static char buf[CHUNK];
    char kind;
    ssize_t n;
    if (read(fd, &kind, 1) != 1)
        return;
    if (kind == 'E')
        nodelay(fd);
    while ((n = read(fd, buf, sizeof buf)) > 0) {
        if (kind == 'E' && write(fd, buf, n) != n)
            return;
    }
}

static int serve(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    int one = 1, s = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 16))
        die("bind/listen");
    signal(SIGCHLD, SIG_IGN);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0)
            continue;
        if (fork() == 0) {
            handle(c);
            _exit(0);
        }
        close(c);
    }
}

static int dial(const char *addr, int port, char kind)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (inet_pton(AF_INET, addr, &a.sin_addr) != 1)
        die("address");
    if (connect(s, (struct sockaddr *)&a, sizeof a))
        die("connect");
    if (kind == 'E')
        nodelay(s);
    if (write(s, &kind, 1) != 1)
        die("write");
    return s;
}

static int stream(const char *addr, int port, long mib)
{
    static char buf[CHUNK];
    int s = dial(addr, port, 'S');
    long total = mib * 1024 * 1024, sent = 0;
    double t0 = now();
    while (sent < total) {
        ssize_t n = write(s, buf, sizeof buf);
        if (n <= 0)
            die("write");
        sent += n;
    }
    shutdown(s, SHUT_WR);
    while (read(s, buf, sizeof buf) > 0)      /* the sink closes after reading it all */
        ;
    printf("%ld %.6f\n", sent, now() - t0);
    return 0;
}

static int rr(const char *addr, int port, long n)
{
    int s = dial(addr, port, 'E');
    char c = 'x';
    for (long i = 0; i < n; i++) {
        double t0 = now();
        if (write(s, &c, 1) != 1 || read(s, &c, 1) != 1)
            die("round trip");
        printf("%.9f\n", now() - t0);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "serve"))
        return serve(atoi(argv[2]));
    if (argc == 5 && !strcmp(argv[1], "stream") && atol(argv[4]) > 0 && atol(argv[4]) <= MAX_MIB)
        return stream(argv[2], atoi(argv[3]), atol(argv[4]));
    if (argc == 5 && !strcmp(argv[1], "rr") && atol(argv[4]) > 0 && atol(argv[4]) <= MAX_RR)
        return rr(argv[2], atoi(argv[3]), atol(argv[4]));
    fprintf(stderr, "usage: net_peer serve PORT | stream ADDR PORT MIB | rr ADDR PORT N\n");
    return 2;
}
