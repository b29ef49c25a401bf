/*
 * serial.c: the console, a 16550A UART on COM1.
 *
 * Registers and bits from the TI/National PC16550D datasheet, "Register
 * Description" (Table 2).  Output is polled: wait for THR empty, write the
 * byte.  Input is interrupt-driven: the UART raises IRQ 4 when a byte has
 * arrived, serial_intr() moves it into a ring buffer and serial_getc()
 * takes it from there, halting the CPU while the buffer is empty.
 */
#include "defs.h"
#include "x86.h"

#define COM1      0x3f8
#define UART_RBR  0        /* receive buffer (read, DLAB=0)              */
#define UART_THR  0        /* transmit holding register (write, DLAB=0)  */
#define UART_DLL  0        /* divisor latch, low byte (DLAB=1)           */
#define UART_IER  1        /* interrupt enable (DLAB=0)                  */
#define UART_DLM  1        /* divisor latch, high byte (DLAB=1)          */
#define UART_FCR  2        /* FIFO control (write): left at reset value  */
#define UART_LCR  3        /* line control                               */
#define UART_MCR  4        /* modem control                              */
#define UART_LSR  5        /* line status                                */

#define IER_RDA   0x01     /* interrupt when received data is available  */
#define LCR_8N1   0x03     /* 8 data bits, no parity, 1 stop bit         */
#define LCR_DLAB  0x80     /* divisor latch access                       */
#define MCR_DTR   0x01
#define MCR_RTS   0x02
#define MCR_OUT2  0x08     /* on a PC, OUT2 gates the UART's IRQ line    */
#define LSR_DR    0x01     /* data ready                                 */
#define LSR_THRE  0x20     /* transmit holding register empty            */
#define BAUD_DIVISOR 1     /* 115200 baud = 1.8432 MHz / 16 / 1          */

#define RX_SIZE 256        /* a power of two: indexes wrap with a mask   */

static struct {
    char buf[RX_SIZE];
    volatile uint32_t head;        /* written by serial_intr()  */
    volatile uint32_t tail;        /* written by serial_getc()  */
} rx;

void serial_init(void)
{
    outb(COM1 + UART_IER, 0);
    outb(COM1 + UART_LCR, LCR_DLAB);
    outb(COM1 + UART_DLL, BAUD_DIVISOR & 0xff);
    outb(COM1 + UART_DLM, BAUD_DIVISOR >> 8);
    outb(COM1 + UART_LCR, LCR_8N1);
    /* FCR is left alone: switching the FIFOs on or off empties them
     * (16550D datasheet, FCR bit 0), and bytes piped into the VMM before
     * this point would be lost.  Without FIFOs the UART holds one byte in
     * RBR, plenty for an interrupt-driven reader. */
    outb(COM1 + UART_MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
    outb(COM1 + UART_IER, IER_RDA);
    pic_unmask(IRQ_COM1);
}

void serial_putc(char c)
{
    if (c == '\n')
        serial_putc('\r');         /* terminals want CR LF */
    while (!(inb(COM1 + UART_LSR) & LSR_THRE))
        ;
    outb(COM1 + UART_THR, c);
}

/* IRQ 4: drain the receiver.  Reading RBR clears the interrupt. */
void serial_intr(void)
{
    while (inb(COM1 + UART_LSR) & LSR_DR) {
        char c = inb(COM1 + UART_RBR);
        if (rx.head - rx.tail < RX_SIZE)
            rx.buf[rx.head++ & (RX_SIZE - 1)] = c;
    }
}

/* Next input byte; sleeps (runs user programs or halts) until there is one. */
int serial_getc(void)
{
    for (;;) {
        cli();
        if (rx.head != rx.tail) {
            char c = rx.buf[rx.tail++ & (RX_SIZE - 1)];
            sti();
            return (uint8_t)c;
        }
        wait_for_interrupt();
    }
}
