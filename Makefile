# pykvm: the two commands a new user needs are `make boot` and `make test`.
# Everything is built from this source tree into .venv/ and the guests' folders;
# nothing is installed from PyPI under the name "pykvm" (that name is another project's).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PYKVM  := $(VENV)/bin/pykvm
PYTEST_ARGS ?=

.PHONY: all deps venv guests boot test test-unit test-hw bench kvm-unit-tests clean distclean help

all: venv guests

help:
	@echo "make boot    build everything and boot the bundled guest (Ctrl-A x quits)"
	@echo "make deps    (root) install the Debian/Ubuntu packages the tests use (.ci/packages)"
	@echo "make test    build everything and run the test suite"
	@echo "make test-hw run the VM tests on hardware-style KVM (an L1 under QEMU TCG if needed)"
	@echo "make bench   run the benchmarks in tests/bench/ side by side with their peers"
	@echo "make kvm-unit-tests  the KVM developers' x86 test suite under QEMU and pykvm, side by side"
	@echo "make linux-guest  fetch Debian's kernel and build a busybox initramfs (pykvm boot linux)"
	@echo "make clean   remove build products (keeps .venv/)"

# The packages the tests use: QEMU, runc, a registry, skopeo, umoci, busybox... (apt-get,
# so root).  The README's test command is `sudo make deps test`.
deps:
	bash .ci/packages

# --- the Python side: a venv with pykvm installed editable (compiles the cffi bindings)
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py $(wildcard pykvm/*/_build.py)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# --- the guests: built with the system gcc/binutils, nothing downloaded
guests:
	$(MAKE) -C guests

boot: venv guests
	$(PYKVM) boot

test: venv guests
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: venv
	$(PY) -m pytest -m "not kvm and not root and not slow and not linux" $(PYTEST_ARGS)

# The VM tiers (kvm, linux) on hardware-style KVM: directly where /dev/kvm is
# kvm_amd/kvm_intel, else in an L1 Linux under QEMU TCG with SVM (tests/hw/lane.py,
# docs/contributing-test-lanes.md). Kernel, serial log and junit.xml: .cache/hw/
# The `linux` tier's guest is built first (it needs apt); if it cannot be, those tests skip, saying why.
test-hw: venv guests
	-$(MAKE) linux-guest
	$(PY) tests/hw/lane.py -- $(PYTEST_ARGS)

bench: venv guests
	$(PY) tests/bench/run.py

# kvm-unit-tests, built outside this repository (shared/kvm-unit-tests beside the checkout,
# or $$KVM_UNIT_TESTS_DIR): every configuration of its unittests.cfg that pykvm's machine can
# run, under QEMU and under pykvm, one line each.  KUT_ARGS="--only setjmp,la57 --timeout 60"
KUT_ARGS ?=
kvm-unit-tests: venv guests
	$(PY) tests/kvm_unit_tests.py $(KUT_ARGS)

clean:
	$(MAKE) -C guests clean
	rm -rf build pykvm/*/_*_cffi.c pykvm/*/_*_cffi*.so .pytest_cache

distclean: clean
	rm -rf $(VENV) .cache

# --- the Linux guest (issue 5): Debian's cloud kernel + a busybox initramfs in .cache/linux/
.PHONY: linux-guest linux-tiny
linux-guest: venv
	$(MAKE) -C guests/linux guest PYTHON=$(abspath $(PY))

# optional: a tiny kernel from Debian's linux-source (.cache/linux/bzImage-tiny)
linux-tiny:
	$(MAKE) -C guests/linux tiny
