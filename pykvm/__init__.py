"""pykvm: a readable Python hypervisor front-end on Linux KVM, with a container launcher beside it.

The package is laid out the way data flows (see docs/ and DESIGN.md):

    cli.py          the `pykvm` command
    machine.py      a VM built from a MachineConfig, run, torn down
    boot/           loaders (flat binary, PVH ELF, Linux bzImage) and the guest memory layout
    arch/x86/       vCPU boot state: segments, CPUID, MSRs, boot tables
    devices/        PIO/MMIO buses and one module per device (16550 UART, debug-exit, ...)
    memory.py       guest memory, bounds-checked
    kvm/            the thin KVM API layer: Kvm -> Vm -> Vcpu
    container/      namespaces, cgroups, root filesystems, OCI images and registries

Imports stay lazy: `import pykvm` loads nothing heavy, so the CLI starts fast.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
