/* KVM_RUN with a few registers answered in C: words that need no device logic.
 *
 * Every exit to user space is a trip from the guest through KVM into this
 * process and back.  pykvm's run loop (machine.py) handles each one in Python:
 * decode kvm_run, find the device on the bus, call it, write the answer.  For
 * most registers that is the right place: the device's logic is there.  But
 * a virtio-mmio device's interrupt costs its driver two exits that carry no
 * logic at all (virtio 1.2, 4.2.2; Linux's vm_interrupt):
 *
 *     status = InterruptStatus      a read: the word's value
 *     InterruptACK = status         a write: clear those bits of the word
 *
 * A disk request pays both, every time.  kvm_run_answering() runs the vCPU
 * and answers such registers itself, re-entering the guest at once; every
 * other exit, and every error or signal, returns to the run loop as before.
 * It holds no Python lock, so the answer never waits for a device worker.
 *
 * The words live in memory the worker threads change too (a used buffer sets
 * a bit while the vCPU may be clearing another), so every access to them is
 * atomic: answered_word_or / answered_word_clear are what Python calls.
 *
 * Compiled into pykvm.vm.kvm._kvm_cffi by pykvm/vm/kvm/_build.py; uses the
 * <linux/kvm.h> that _build.py includes before it, and its kvm_run().
 */
#include <stdint.h>
#include <string.h>

enum { ANSWER_READ = 0, ANSWER_WRITE_CLEARS = 1 };

/* One register: a 4-byte access at `address` is answered from `word`. */
struct answered_register {
    uint64_t address;
    uint32_t kind;                     /* ANSWER_READ or ANSWER_WRITE_CLEARS */
    uint32_t *word;
};

/* What kvm_run_answering() answered, added up for the run loop's counts. */
struct answered_counts {
    uint64_t reads;
    uint64_t writes;
};

static const struct answered_register *answered_find(const struct answered_register *registers,
                                                     int count, uint64_t address, int kind)
{
    for (int i = 0; i < count; i++)
        if (registers[i].address == address && (int)registers[i].kind == kind)
            return &registers[i];
    return NULL;
}

/* KVM_RUN until an exit that is not one of `registers` (or an error):
 * return what that KVM_RUN returned.  Only aligned 4-byte accesses are
 * answered; a register accessed any other way goes to the run loop, whose
 * device logs it as the bad access it is. */
static int kvm_run_answering(int vcpu_fd, struct kvm_run *run,
                             const struct answered_register *registers, int count,
                             struct answered_counts *counts)
{
    for (;;) {
        int result = kvm_run(vcpu_fd);     /* _build.py's wrapper: no retry on EINTR */
        if (result < 0 || run->exit_reason != KVM_EXIT_MMIO || run->mmio.len != 4)
            return result;
        int kind = run->mmio.is_write ? ANSWER_WRITE_CLEARS : ANSWER_READ;
        const struct answered_register *r = answered_find(registers, count,
                                                          run->mmio.phys_addr, kind);
        if (r == NULL)
            return result;
        uint32_t value;
        if (kind == ANSWER_WRITE_CLEARS) {
            memcpy(&value, run->mmio.data, sizeof value);
            __atomic_fetch_and(r->word, ~value, __ATOMIC_SEQ_CST);
            counts->writes++;
        } else {
            value = __atomic_load_n(r->word, __ATOMIC_SEQ_CST);
            memcpy(run->mmio.data, &value, sizeof value);   /* KVM completes the load */
            counts->reads++;
        }
    }
}

static uint32_t answered_word_or(uint32_t *word, uint32_t bits)
{
    return __atomic_or_fetch(word, bits, __ATOMIC_SEQ_CST);
}

static uint32_t answered_word_clear(uint32_t *word, uint32_t bits)
{
    return __atomic_and_fetch(word, ~bits, __ATOMIC_SEQ_CST);
}

static void answered_word_store(uint32_t *word, uint32_t value)
{
    __atomic_store_n(word, value, __ATOMIC_SEQ_CST);
}

static uint32_t answered_word_load(uint32_t *word)
{
    return __atomic_load_n(word, __ATOMIC_SEQ_CST);
}
