"""The compiled cffi module, imported once, with a clear error if it was never built.

`ffi` and `lib` come from pykvm/vm/kvm/_build.py, compiled against <linux/kvm.h>
when pykvm is installed.  Every KVM_* constant and struct used by pykvm is read
from here, never typed by hand.
"""
from __future__ import annotations

from pykvm.errors import KvmError

__all__ = ["ffi", "lib"]

try:
    from pykvm.vm.kvm._kvm_cffi import ffi, lib  # type: ignore[import-not-found]
except ImportError as e:  # pragma: no cover - only on a broken install
    raise KvmError(
        "pykvm's KVM bindings are not compiled (pykvm/vm/kvm/_kvm_cffi); "
        "run `make venv` (it needs gcc and the Linux headers)") from e
