/* container-init: PID 1 of `pykvm container run --isolation vm`: run one image's command in a VM.
 *
 * The kernel starts it from pykvm's initramfs (rdinit=/bin/container-init on the command line)
 * instead of the recipe's shell /init.  It does what a container runtime does on the host,
 * but inside the guest, with the guest's own kernel:
 *
 *   1. mount /proc, /sys and /dev (devtmpfs) in the initramfs
 *   2. load the virtio and overlay modules listed in /etc/modules.load (dependencies first)
 *   3. find the run disk among /dev/vd* by its magic and read the request (pykvm/vm/rundisk.py);
 *      the other disk is the image's root filesystem
 *   4. build the root: the ext4 disk read-only at /lower, a tmpfs at /rw for what the command
 *      writes, overlayfs of both at /newroot (gone when the VM ends); /proc, /sys, /dev in it
 *   5. set the hostname
 *   6. fork: the child takes its stdin (the request's "stdin" field: /dev/null; or, for -i, a
 *      pipe that the relay fills from hvc2; or, for -t, hvc0 as its terminal), hvc0 as
 *      stdout and hvc1 as stderr (raw, so no \n -> \r\n; with -t both are the terminal, in
 *      a terminal's usual cooked mode), chroots into /newroot, chdirs, sets HOME if unset
 *      (runc's rule), drops to the user, execs the command
 *  6b. fork the relay: pykvm's channel on hvc2 becomes the command's stdin (-i) and the
 *      signals pykvm passes on (stop, kill, a Ctrl-C)
 *   7. reap every process until the command itself ends (PID 1 inherits orphans)
 *   8. wait until both consoles have sent their output, write "exit=N\n" to the run disk's
 *      answer part, and power off; pykvm reads the answer and exits with N
 *
 * Why C and not a busybox script like the recipe's /init: the command's argv and environment
 * must reach execve(2) byte for byte (a shell would re-split and re-quote them), the image may
 * have no shell at all, and chroot + setuid + exec in that order has no busybox applet.
 * Static, so it needs nothing from the initramfs or the image.
 *
 * On the host, `container-init --print FILE` reads a run disk image and prints what it would
 * run, one line per field, and `container-init --unescape` copies stdin to stdout as the relay
 * copies hvc2 to the command (a signal message printed to stderr): how tests/unit/test_rundisk.py
 * checks both ends agree.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ioctl.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

/* pykvm/vm/rundisk.py: the layout of the run disk */
#define MAGIC          "pykvm-run 1"
#define REQUEST_SIZE   (64 << 10)
#define ANSWER_OFFSET  REQUEST_SIZE
#define MAX_STRINGS    4096            /* arguments plus environment entries, at most */
#define MAX_GROUPS     64

#define NEW_ROOT       "/newroot"
#define STDOUT_CONSOLE "/dev/hvc0"
#define STDERR_CONSOLE "/dev/hvc1"
#define CHANNEL_CONSOLE "/dev/hvc2"    /* pykvm -> the command: stdin (-i) and signals */
/* pykvm/vm/rundisk.py: on CHANNEL_CONSOLE, ESCAPE ESCAPE is one ESCAPE byte of input,
 * ESCAPE END_OF_INPUT the end of the caller's stdin, ESCAPE SIGNAL N "send signal N to the
 * command"; READY is what the relay writes back once the console is raw, the moment pykvm
 * starts sending (so no byte is read cooked). */
#define STDIN_ESCAPE   '\0'
#define STDIN_END      'E'
#define STDIN_SIGNAL   'S'
#define STDIN_READY    "R"

enum stdin_mode { STDIN_NULL, STDIN_PIPE, STDIN_TTY };
#define DEVICE_WAIT_MS 5000            /* for /dev/vd* and /dev/hvc* after the modules load */

struct request {
    char *args[MAX_STRINGS + 1];       /* NULL-terminated, as execve wants */
    char *env[MAX_STRINGS + 1];
    int nargs, nenv;
    const char *cwd, *hostname;
    uid_t uid;
    gid_t gid;
    gid_t groups[MAX_GROUPS];
    int ngroups;
    enum stdin_mode stdin_mode;
};

static char request_bytes[REQUEST_SIZE + 1];   /* +1: always NUL-terminated */

/* Something went wrong before the command could run: say so on the kernel's console (pykvm
 * shows it when no exit status comes back) and power off. */
static void die(const char *what, const char *detail)
{
    fprintf(stderr, "container-init: %s %s: %s\n", what, detail ? detail : "", strerror(errno));
    fflush(stderr);
    if (getpid() == 1) {
        sync();
        reboot(RB_POWER_OFF);
    }
    exit(125);
}

/* --- 1. and 4.: mounts */
static void mount_or_die(const char *source, const char *target, const char *type,
                         unsigned long flags, const char *options)
{
    mkdir(target, 0755);               /* EEXIST is fine; a real failure shows in mount(2) */
    if (mount(source, target, type, flags, options) != 0)
        die("cannot mount", target);
}

/* --- 2.: modules, as the recipe's /init does with busybox insmod */
static void load_modules(void)
{
    struct utsname uts;
    char line[512], path[1024];
    FILE *list = fopen("/etc/modules.load", "r");
    if (list == NULL)
        return;                        /* a kernel with everything built in */
    uname(&uts);
    while (fgets(line, sizeof line, list) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        if (line[0] == '\0')
            continue;
        snprintf(path, sizeof path, "/lib/modules/%s/%s", uts.release, line);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST))
            fprintf(stderr, "container-init: cannot load %s: %s\n", path, strerror(errno));
        if (fd >= 0)
            close(fd);
    }
    fclose(list);
}

/* Devices appear as the drivers probe them; wait (bounded) for one. */
static int wait_for_device(const char *path)
{
    struct timespec tick = {0, 10 * 1000 * 1000};
    for (int waited = 0; waited < DEVICE_WAIT_MS; waited += 10) {
        if (access(path, F_OK) == 0)
            return 0;
        nanosleep(&tick, NULL);
    }
    return -1;
}

/* --- 3.: the request */
static unsigned long parse_number(const char *text, const char *field)
{
    char *end;
    errno = 0;
    unsigned long value = strtoul(text, &end, 10);
    if (*text == '\0' || *end != '\0' || errno != 0) {
        errno = EINVAL;
        die("bad number in the run disk's field", field);
    }
    return value;
}

static void parse_groups(struct request *req, char *list)
{
    for (char *item = strtok(list, ","); item != NULL; item = strtok(NULL, ",")) {
        if (req->ngroups == MAX_GROUPS) {
            errno = E2BIG;
            die("too many groups in the run disk", NULL);
        }
        req->groups[req->ngroups++] = (gid_t)parse_number(item, "groups");
    }
}

static enum stdin_mode parse_stdin_mode(const char *value)
{
    if (strcmp(value, "null") == 0)
        return STDIN_NULL;
    if (strcmp(value, "pipe") == 0)
        return STDIN_PIPE;
    if (strcmp(value, "tty") == 0)
        return STDIN_TTY;
    errno = EINVAL;
    die("bad stdin in the run disk (null, pipe or tty)", value);
    return STDIN_NULL;                 /* not reached */
}

/* The records "key=value\0", after the magic, up to the empty record (rundisk.py's grammar). */
static void parse_request(char *data, size_t size, struct request *req)
{
    memset(req, 0, sizeof *req);
    req->cwd = "/";
    req->hostname = "pykvm";
    data[size] = '\0';
    if (strcmp(data, MAGIC) != 0) {
        errno = EINVAL;
        die("no run request (magic " MAGIC ") on the run disk", NULL);
    }
    char *record = data + strlen(data) + 1;
    while (record < data + size && *record != '\0') {
        char *value = strchr(record, '=');
        if (value == NULL) {
            errno = EINVAL;
            die("a run disk record without '='", record);
        }
        *value++ = '\0';
        char *next = value + strlen(value) + 1;        /* before strtok cuts the value up */
        if (strcmp(record, "arg") == 0 && req->nargs < MAX_STRINGS)
            req->args[req->nargs++] = value;
        else if (strcmp(record, "env") == 0 && req->nenv < MAX_STRINGS)
            req->env[req->nenv++] = value;
        else if (strcmp(record, "cwd") == 0)
            req->cwd = value;
        else if (strcmp(record, "hostname") == 0)
            req->hostname = value;
        else if (strcmp(record, "uid") == 0)
            req->uid = (uid_t)parse_number(value, "uid");
        else if (strcmp(record, "gid") == 0)
            req->gid = (gid_t)parse_number(value, "gid");
        else if (strcmp(record, "groups") == 0)
            parse_groups(req, value);
        else if (strcmp(record, "stdin") == 0)
            req->stdin_mode = parse_stdin_mode(value);
        else {
            errno = EINVAL;
            die("unknown (or one too many) run disk field", record);
        }
        record = next;
    }
    if (req->nargs == 0) {
        errno = EINVAL;
        die("the run request has no command", NULL);
    }
}

static int read_request(const char *disk, struct request *req)
{
    int fd = open(disk, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t got = pread(fd, request_bytes, REQUEST_SIZE, 0);
    close(fd);
    if (got < (ssize_t)sizeof MAGIC || memcmp(request_bytes, MAGIC, sizeof MAGIC) != 0)
        return -1;                     /* not the run disk (the root disk, say) */
    parse_request(request_bytes, (size_t)got, req);
    return 0;
}

/* --- 6.: the command, in the child */
static void console_as(const char *console, int target)
{
    struct termios raw;
    int fd = open(console, O_WRONLY | O_NOCTTY);
    if (fd < 0 || dup2(fd, target) < 0)
        die("cannot open", console);
    if (tcgetattr(target, &raw) == 0) {
        cfmakeraw(&raw);               /* bytes as written: no \n -> \r\n */
        tcsetattr(target, TCSANOW, &raw);
    }
    if (fd != target)
        close(fd);
}

/* runc's rule, as the container path's command.py: HOME, when the environment has none, is
 * the user's home in the image's /etc/passwd (name:x:uid:gid:gecos:home:shell), else "/". */
static void set_home(struct request *req)
{
    static char home[512] = "HOME=/";
    char line[512];
    for (int i = 0; i < req->nenv; i++)
        if (strncmp(req->env[i], "HOME=", 5) == 0)
            return;
    FILE *passwd = fopen("/etc/passwd", "r");
    while (passwd != NULL && fgets(line, sizeof line, passwd) != NULL) {
        char *fields[7] = {0}, *rest = line;
        line[strcspn(line, "\n")] = '\0';
        for (int i = 0; i < 7 && rest != NULL; i++)
            fields[i] = strsep(&rest, ":");
        if (fields[5] != NULL && fields[5][0] != '\0' && strtoul(fields[2], NULL, 10) == req->uid &&
                fields[2][0] != '\0') {
            snprintf(home, sizeof home, "HOME=%s", fields[5]);
            break;
        }
    }
    if (passwd != NULL)
        fclose(passwd);
    if (req->nenv < MAX_STRINGS)
        req->env[req->nenv++] = home;
}

static void stdin_from(const char *path, int fd)
{
    int opened = fd >= 0 ? fd : open(path, O_RDONLY);
    if (opened < 0 || dup2(opened, 0) < 0)
        die("cannot open", path);
    if (opened > 2)
        close(opened);
}

/* -t: hvc0 becomes the session's controlling terminal and stdin, stdout and stderr, left in
 * the cooked mode a terminal starts in (echo, line editing, ^C -> SIGINT), as `docker run -t`. */
static void terminal_as_stdio(void)
{
    int fd = open(STDOUT_CONSOLE, O_RDWR);
    if (fd < 0 || ioctl(fd, TIOCSCTTY, 0) != 0)
        die("cannot take as the terminal", STDOUT_CONSOLE);
    for (int target = 0; target < 3; target++)
        if (dup2(fd, target) < 0)
            die("dup2", STDOUT_CONSOLE);
    if (fd > 2)
        close(fd);
}

/* `stdin_pipe`: the relay's pipe with -i (both ends; the command keeps the read end), else -1s */
static void run_command(struct request *req, int stdin_pipe[2])
{
    setsid();                          /* a new session: -t's terminal becomes its own */
    if (stdin_pipe[1] >= 0)
        close(stdin_pipe[1]);
    if (req->stdin_mode == STDIN_TTY) {
        terminal_as_stdio();
    } else {
        stdin_from("/dev/null", stdin_pipe[0]);
        console_as(STDOUT_CONSOLE, 1);
        console_as(STDERR_CONSOLE, 2);
    }
    if (chroot(NEW_ROOT) != 0 || chdir("/") != 0)
        die("cannot chroot to", NEW_ROOT);
    /* Docker makes a missing WorkingDir; one level is enough for the common case, the
     * chdir below reports a deeper one. */
    mkdir(req->cwd, 0755);
    if (chdir(req->cwd) != 0)
        die("cannot chdir to", req->cwd);
    set_home(req);
    if (setgroups(req->ngroups, req->groups) != 0 || setgid(req->gid) != 0 || setuid(req->uid) != 0)
        die("cannot switch to the user", NULL);
    environ = req->env;                /* execvp looks the command up in the command's PATH */
    execvp(req->args[0], req->args);
    int status = errno == ENOENT ? 127 : 126;          /* Docker's and the shell's codes */
    fprintf(stderr, "container-init: cannot run %s: %s\n", req->args[0], strerror(errno));
    exit(status);
}

/* 6b. the relay: hvc2 is pykvm's channel to the command.  It copies the caller's stdin (-i)
 * into the command's pipe, undoing pykvm's escapes, and closes the pipe at the end marker
 * (the command reads end of file); a signal message becomes kill(2) of the command (`pykvm
 * container stop` and `kill`, a Ctrl-C on pykvm in the foreground).  A process of its own,
 * so PID 1 only waits; it lives until the VM powers off. */
static int write_all(int fd, const unsigned char *data, size_t length)
{
    while (length > 0) {
        ssize_t put = write(fd, data, length);
        if (put < 0 && errno == EINTR)
            continue;
        if (put <= 0)
            return -1;                 /* the command closed its stdin, or is gone */
        data += put;
        length -= (size_t)put;
    }
    return 0;
}

/* A signal message's number: kill the command, or (on the host, `command` 0) say so. */
static void deliver_signal(pid_t command, unsigned char number)
{
    if (command > 0)
        kill(command, number);
    else
        fprintf(stderr, "signal %d\n", number);
}

/* Copy `from` to `to` (-1: nowhere) up to `from`'s end, undoing pykvm's escapes; the end
 * marker closes `to`, a signal message goes to `command`. */
static void copy_unescaped(int from, int to, pid_t command)
{
    unsigned char in[4096], out[4096];
    enum { PLAIN, ESCAPED, SIGNAL_NUMBER } state = PLAIN;
    for (;;) {
        ssize_t got = read(from, in, sizeof in);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return;
        size_t length = 0;
        for (ssize_t i = 0; i < got; i++) {
            if (state == SIGNAL_NUMBER) {
                deliver_signal(command, in[i]);
                state = PLAIN;
            } else if (state == PLAIN && in[i] == STDIN_ESCAPE) {
                state = ESCAPED;
            } else if (state == ESCAPED && in[i] == STDIN_END) {
                if (to >= 0 && write_all(to, out, length) == 0)
                    close(to);
                to = -1;                       /* the rest of stdin, if any, goes nowhere */
                length = 0;
                state = PLAIN;
            } else if (state == ESCAPED && in[i] == STDIN_SIGNAL) {
                state = SIGNAL_NUMBER;
            } else {
                out[length++] = in[i];         /* a plain byte, or the second of two ESCAPEs */
                state = PLAIN;
            }
        }
        if (to >= 0 && write_all(to, out, length) != 0) {
            close(to);                         /* the command will not read more: drop the rest */
            to = -1;
        }
    }
}

static void relay(int pipe_write, pid_t command)
{
    struct termios raw;
    int fd = open(CHANNEL_CONSOLE, O_RDWR | O_NOCTTY);
    if (fd < 0 || tcgetattr(fd, &raw) != 0)
        die("cannot open", CHANNEL_CONSOLE);
    cfmakeraw(&raw);                   /* every byte as sent: no echo, no \r -> \n, no ^C */
    if (tcsetattr(fd, TCSANOW, &raw) != 0 || write(fd, STDIN_READY, 1) != 1)
        die("cannot ready", CHANNEL_CONSOLE);
    copy_unescaped(fd, pipe_write, command);
    _exit(0);
}

static void start_relay(int pipe_write, pid_t command)
{
    pid_t pid = fork();
    if (pid < 0)
        die("fork", NULL);
    if (pid == 0) {
        signal(SIGPIPE, SIG_IGN);      /* a command that stops reading is a write error, not death */
        relay(pipe_write, command);
    }
}

/* --- 7.: PID 1 reaps everything; returns the command's status, shell-style */
static int wait_for_command(pid_t command)
{
    int status;
    for (;;) {
        pid_t pid = wait(&status);
        if (pid < 0 && errno == EINTR)
            continue;
        if (pid < 0)
            die("wait", NULL);
        if (pid == command)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
}

/* --- 8.: the answer */
static void drain_console(const char *console)
{
    int fd = open(console, O_WRONLY | O_NOCTTY);
    if (fd >= 0) {
        tcdrain(fd);                   /* hvc's buffer empty: pykvm has every byte */
        close(fd);
    }
}

static void write_answer(const char *disk, int status)
{
    char answer[32];
    int length = snprintf(answer, sizeof answer, "exit=%d\n", status);
    int fd = open(disk, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || pwrite(fd, answer, length, ANSWER_OFFSET) != length || fsync(fd) != 0)
        die("cannot write the exit status to", disk);
    close(fd);
}

static void print_request(struct request *req)
{
    for (int i = 0; i < req->nargs; i++)
        printf("arg %s\n", req->args[i]);
    for (int i = 0; i < req->nenv; i++)
        printf("env %s\n", req->env[i]);
    printf("cwd %s\nuid %u\ngid %u\ngroups", req->cwd, (unsigned)req->uid, (unsigned)req->gid);
    for (int i = 0; i < req->ngroups; i++)
        printf(" %u", (unsigned)req->groups[i]);
    printf("\nhostname %s\nstdin %s\n", req->hostname,
           req->stdin_mode == STDIN_PIPE ? "pipe" : req->stdin_mode == STDIN_TTY ? "tty" : "null");
}

int main(int argc, char **argv)
{
    static struct request req;
    static const char *disks[] = {"/dev/vda", "/dev/vdb"};
    const char *run_disk = NULL, *root_disk = NULL;

    if (argc == 3 && strcmp(argv[1], "--print") == 0) {       /* the host-side check */
        if (read_request(argv[2], &req) != 0)
            die("no run request in", argv[2]);
        print_request(&req);
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "--unescape") == 0) {   /* the host-side check of the relay */
        copy_unescaped(0, 1, 0);
        return 0;
    }
    if (getpid() != 1) {
        fprintf(stderr, "usage: container-init --print RUN_DISK | --unescape "
                        "(as PID 1 it runs the request)\n");
        return 2;
    }
    mount_or_die("proc", "/proc", "proc", 0, NULL);                            /* 1 */
    mount_or_die("sysfs", "/sys", "sysfs", 0, NULL);
    mount_or_die("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    load_modules();                                                             /* 2 */
    for (int i = 0; i < 2; i++) {                                               /* 3 */
        if (wait_for_device(disks[i]) != 0)
            die("no disk", disks[i]);
        if (run_disk == NULL && read_request(disks[i], &req) == 0)
            run_disk = disks[i];
        else
            root_disk = disks[i];
    }
    if (run_disk == NULL || root_disk == NULL) {
        errno = ENODEV;
        die("need two disks: the run disk and the root disk", NULL);
    }
    mount_or_die(root_disk, "/lower", "ext4", MS_RDONLY, NULL);                 /* 4 */
    mount_or_die("tmpfs", "/rw", "tmpfs", 0, "mode=0755");
    mkdir("/rw/upper", 0755);
    mkdir("/rw/work", 0755);
    mount_or_die("overlay", NEW_ROOT, "overlay", 0,
                 "lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work");
    mount_or_die("proc", NEW_ROOT "/proc", "proc", 0, NULL);
    mount_or_die("sysfs", NEW_ROOT "/sys", "sysfs", MS_RDONLY, NULL);
    mount_or_die("devtmpfs", NEW_ROOT "/dev", "devtmpfs", 0, NULL);
    if (sethostname(req.hostname, strlen(req.hostname)) != 0)                   /* 5 */
        die("cannot set the hostname", req.hostname);
    if (wait_for_device(STDOUT_CONSOLE) != 0 || wait_for_device(STDERR_CONSOLE) != 0)
        die("no virtio consoles", STDOUT_CONSOLE);
    int stdin_pipe[2] = {-1, -1};
    if (wait_for_device(CHANNEL_CONSOLE) != 0)
        die("no virtio console", CHANNEL_CONSOLE);
    if (req.stdin_mode == STDIN_PIPE && pipe(stdin_pipe) != 0)
        die("pipe", NULL);
    pid_t command = fork();                                                     /* 6 */
    if (command < 0)
        die("fork", NULL);
    if (command == 0)
        run_command(&req, stdin_pipe);
    start_relay(stdin_pipe[1], command);                                        /* 6b */
    for (int i = 0; i < 2; i++)
        if (stdin_pipe[i] >= 0)
            close(stdin_pipe[i]);
    int status = wait_for_command(command);                                     /* 7 */
    drain_console(STDOUT_CONSOLE);                                              /* 8 */
    drain_console(STDERR_CONSOLE);
    write_answer(run_disk, status);
    sync();
    reboot(RB_POWER_OFF);
    return 0;                          /* not reached: the VM is off */
}
