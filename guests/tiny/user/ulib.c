/* ulib.c: printf for user programs: formats into a buffer, one write(). */
#include <stdarg.h>
#include "ulib.h"

static char *put_int(char *out, char *end, long v)
{
    char digits[20];
    int n = 0;
    unsigned long u = v < 0 ? -(unsigned long)v : (unsigned long)v;
    if (v < 0 && out < end)
        *out++ = '-';
    do {
        digits[n++] = '0' + u % 10;
        u /= 10;
    } while (u);
    while (n && out < end)
        *out++ = digits[--n];
    return out;
}

void printf(const char *fmt, ...)
{
    char buf[128], *out = buf, *end = buf + sizeof(buf);
    va_list ap;
    va_start(ap, fmt);
    for (; *fmt && out < end; fmt++) {
        if (*fmt != '%') {
            *out++ = *fmt;
        } else if (*++fmt == 'd') {
            out = put_int(out, end, va_arg(ap, int));
        } else if (*fmt == 's') {
            for (const char *s = va_arg(ap, const char *); *s && out < end; s++)
                *out++ = *s;
        }
    }
    va_end(ap);
    write(buf, out - buf);
}
