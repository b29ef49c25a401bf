/*
 * printf.c: formatted output on the console.  Supports what the kernel
 * uses: %d %u %x %p %s %c %%, an optional 0 flag and width, and the l
 * length modifier (64-bit argument; without it the argument is an int).
 */
#include "defs.h"
#include "spinlock.h"
#include "x86.h"

/* One CPU at a time on the console: each kprintf and kputs comes out whole. */
static struct spinlock console_lock = SPINLOCK_INIT("console");

static void put_chars(const char *s, size_t len)
{
    while (len--)
        serial_putc(*s++);
}

void kputs(const char *s, size_t len)
{
    acquire(&console_lock);
    put_chars(s, len);
    release(&console_lock);
}

static void put_number(uint64_t v, int base, int width, char pad)
{
    char digits[24];
    int n = 0;

    do {
        digits[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    while (width-- > n)
        serial_putc(pad);
    while (n)
        serial_putc(digits[--n]);
}

static void put_string(const char *s, int width)
{
    int len = strlen(s);
    put_chars(s, len);
    while (width-- > len)          /* strings are left-justified */
        serial_putc(' ');
}

void kvprintf(const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            serial_putc(*fmt);
            continue;
        }
        char pad = ' ';
        int width = 0;
        if (*++fmt == '0')
            pad = '0';
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        int is_long = 0;
        while (*fmt == 'l') {
            is_long = 1;
            fmt++;
        }
        switch (*fmt) {
        case 'd': {
            int64_t v = is_long ? va_arg(ap, int64_t) : va_arg(ap, int);
            if (v < 0) {
                serial_putc('-');
                v = -v;
                width--;
            }
            put_number(v, 10, width, pad);
            break;
        }
        case 'u': put_number(is_long ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 10, width, pad); break;
        case 'x': put_number(is_long ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 16, width, pad); break;
        case 'p': put_chars("0x", 2); put_number(va_arg(ap, uint64_t), 16, 16, '0'); break;
        case 's': put_string(va_arg(ap, const char *), width); break;
        case 'c': serial_putc(va_arg(ap, int)); break;
        case '%': serial_putc('%'); break;
        default: serial_putc('%'); serial_putc(*fmt); break;
        }
    }
}

void kprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    acquire(&console_lock);
    kvprintf(fmt, ap);
    release(&console_lock);
    va_end(ap);
}

/* A broken kernel invariant: say what, then stop the machine.  With the
 * debug-exit device present the VMM exits with status 3 ((1 << 1) | 1). */
void panic(const char *fmt, ...)
{
    va_list ap;
    cli();
    console_lock = (struct spinlock)SPINLOCK_INIT("console");   /* this CPU may hold it: break it */
    kprintf("\npanic: ");
    va_start(ap, fmt);
    kvprintf(fmt, ap);
    va_end(ap);
    kprintf("\n");
    debug_exit(1);
}
