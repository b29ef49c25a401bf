"""`pykvm check`: can this machine run pykvm's VMs?  Each failure comes with its fix."""
from __future__ import annotations

import click

__all__ = ["check"]


@click.command()
def check():
    """Check /dev/kvm, the KVM API version and the capabilities pykvm needs."""
    from pykvm.errors import KvmError
    from pykvm.vm.guests import hardware_kvm_problem
    from pykvm.vm.kvm.bindings import lib
    from pykvm.vm.kvm.system import REQUIRED_CAPABILITIES, Kvm, kvm_backend
    from pykvm.vm.machine import MAX_CPUS

    failures = 0

    def report(ok: bool, what: str, detail: str = "") -> None:
        nonlocal failures
        failures += not ok
        mark = "ok  " if ok else "FAIL"
        click.echo(f"[{mark}] {what}" + (f": {detail}" if detail else ""))

    try:
        kvm = Kvm()
    except KvmError as e:
        report(False, "open /dev/kvm", str(e))
        raise SystemExit(1)
    with kvm:
        report(True, f"open {kvm.path}")
        report(True, f"KVM API version {kvm.api_version()}")
        for capability, why in REQUIRED_CAPABILITIES.items():
            ok = kvm.check_extension(capability) > 0
            report(ok, capability, why if ok else f"missing: needed for {why}; try a newer kernel")
        click.echo(f"       vCPU mmap size {kvm.vcpu_mmap_size()} bytes; "
                   f"{len(kvm.supported_cpuid())} CPUID leaves; KVM_API_VERSION {lib.KVM_API_VERSION}")
        click.echo(f"       vCPUs per VM: {kvm.check_extension('KVM_CAP_NR_VCPUS')} recommended "
                   f"(KVM_CAP_NR_VCPUS), up to {kvm.check_extension('KVM_CAP_MAX_VCPUS')} "
                   f"(KVM_CAP_MAX_VCPUS); `pykvm boot --cpus` takes up to {MAX_CPUS} and warns "
                   "above the recommendation")
        click.echo(f"       kvm flavour: {kvm_backend()}")
        if problem := hardware_kvm_problem():
            click.echo(f"       note: {problem}")
    if failures:
        click.echo(f"{failures} check(s) failed", err=True)
        raise SystemExit(1)
    click.echo("pykvm can run VMs here")
