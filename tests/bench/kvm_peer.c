/*
 * The C peer for pykvm's VMM benchmarks: the same work as the Python side,
 * written the way kvm-host or the LWN "Using the KVM API" example would.
 *
 *   kvm_peer exits FILE N   run flat real-mode binary FILE (loaded at 0x1000),
 *                           count IO exits until a write to port 0x604; print
 *                           "<exits> <seconds>"
 *   kvm_peer create N       N times: open /dev/kvm, create VM, 2 MiB memory,
 *                           vCPU, run a one-byte HLT guest to its HLT exit;
 *                           print each duration in seconds
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "peer_common.h"

#define MEM_SIZE (2 << 20)
#define LOAD_ADDR 0x1000
#define POWER_OFF_PORT 0x604

struct vm { int kvm, vm, vcpu; unsigned char *mem; struct kvm_run *run; size_t run_size; };

static void vm_create(struct vm *v, const void *code, size_t len)
{
    v->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (v->kvm < 0) die("/dev/kvm");
    v->vm = ioctl(v->kvm, KVM_CREATE_VM, 0);
    if (v->vm < 0) die("KVM_CREATE_VM");
    v->mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (v->mem == MAP_FAILED) die("mmap");
    memcpy(v->mem + LOAD_ADDR, code, len);
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE, .userspace_addr = (unsigned long)v->mem,
    };
    if (ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");
    v->vcpu = ioctl(v->vm, KVM_CREATE_VCPU, 0);
    if (v->vcpu < 0) die("KVM_CREATE_VCPU");
    v->run_size = ioctl(v->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    v->run = mmap(NULL, v->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->vcpu, 0);
    if (v->run == MAP_FAILED) die("mmap kvm_run");
    struct kvm_sregs sregs;
    if (ioctl(v->vcpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    if (ioctl(v->vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
    struct kvm_regs regs = { .rip = LOAD_ADDR, .rflags = 2 };
    if (ioctl(v->vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");
}

static void vm_destroy(struct vm *v)
{
    munmap(v->run, v->run_size);
    munmap(v->mem, MEM_SIZE);
    close(v->vcpu);
    close(v->vm);
    close(v->kvm);
}

static int bench_exits(const char *path)
{
    unsigned char code[4096];
    FILE *f = fopen(path, "rb");
    if (!f) die(path);
    size_t len = fread(code, 1, sizeof code, f);
    fclose(f);
    struct vm v;
    vm_create(&v, code, len);
    long exits = 0;
    double start = now();
    for (;;) {
        if (ioctl(v.vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
        exits++;
        if (v.run->exit_reason == KVM_EXIT_IO && v.run->io.port == POWER_OFF_PORT)
            break;
        if (v.run->exit_reason != KVM_EXIT_IO) {
            fprintf(stderr, "unexpected exit %u\n", v.run->exit_reason);
            return 1;
        }
    }
    printf("%ld %.6f\n", exits, now() - start);
    vm_destroy(&v);
    return 0;
}

static int bench_create(int n)
{
    static const unsigned char hlt[] = { 0xf4 };
    for (int i = 0; i < n; i++) {
        struct vm v;
        double start = now();
        vm_create(&v, hlt, sizeof hlt);
        if (ioctl(v.vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
        if (v.run->exit_reason != KVM_EXIT_HLT) {
            fprintf(stderr, "unexpected exit %u\n", v.run->exit_reason);
            return 1;
        }
        double elapsed = now() - start;
        vm_destroy(&v);
        printf("%.6f\n", elapsed);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "exits"))
        return bench_exits(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "create"))
        return bench_create(atoi(argv[2]));
    fprintf(stderr, "usage: %s exits FILE | create N\n", argv[0]);
    return 2;
}
