"""The VM path: KVM (kvm/), guest memory, vCPU state (arch/), loaders (boot/),
devices (devices/), the machine that builds and runs a VM, and its console."""
