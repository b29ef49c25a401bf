/*
 * flood: 64 KiB of text to the console as fast as the kernel takes it,
 * 64 writes of 1 KiB (from the stack: a user program has two pages of it).  Every byte leaves through the UART's transmit
 * register, an I/O exit to the VMM, so the time this takes measures the
 * VMM's console path (tests/bench/bench_console.py).  The last line says
 * how many bytes were written, so a reader can check none was lost.
 */
#include "ulib.h"

#define LINE   64                     /* 63 characters and a newline */
#define CHUNK  1024
#define CHUNKS 64

int main(void)
{
    char chunk[CHUNK];
    long written = 0;

    for (int i = 0; i < CHUNK; i++)
        chunk[i] = i % LINE == LINE - 1 ? '\n' : 'a' + (i / LINE) % 26;
    for (int n = 0; n < CHUNKS; n++)
        written += write(chunk, CHUNK);
    printf("flood: %d bytes\n", (int)written);
    return 0;
}
