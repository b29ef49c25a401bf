"""Build hook for the cffi extension modules (API mode).

pyproject.toml holds the metadata; this file only exists because cffi's
setuptools integration is the `cffi_modules` keyword of setup().
"""
from setuptools import setup

setup(
    cffi_modules=[
        "pykvm/vm/kvm/_build.py:ffibuilder",
        "pykvm/container/runtime/_build.py:ffibuilder",
        "pykvm/container/runtime/_seccomp_build.py:ffibuilder",
    ],
)
