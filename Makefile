# pykvm: the two commands a new user needs are `make boot` and `make test`.
# Everything is built from this source tree into .venv/ and the guests' folders;
# nothing is installed from PyPI under the name "pykvm" (that name is another project's).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PYKVM  := $(VENV)/bin/pykvm
PYTEST_ARGS ?=
LANE_ARGS ?=
BOOT_ARGS ?=
# What `make boot` builds: the VM guests, which need only gcc and binutils (the README's
# set-up line).  `make guests` also builds the container images (busybox-static, `make deps`).
BOOT_GUESTS := guests/tiny guests/hello

.PHONY: all deps venv guests boot-guests boot gdb test test-unit test-hw bench kvm-unit-tests kvm-unit-tests-hw clean distclean help

all: venv guests

help:
	@echo "make boot    build the venv and the VM guests, boot the bundled guest (Ctrl-A x quits)"
	@echo "make gdb     boot it stopped, with gdb attached and the kernel's symbols loaded"
	@echo "make deps    (root) install the Debian/Ubuntu packages the tests use (.ci/packages)"
	@echo "make test    build everything and run the test suite"
	@echo "make test-hw run the VM tests on hardware-style KVM (an L1 under QEMU TCG if needed)"
	@echo "make bench   run the benchmarks in tests/bench/ side by side with their peers"
	@echo "make kvm-unit-tests  the KVM developers' x86 test suite under QEMU and pykvm, side by side"
	@echo "make kvm-unit-tests-hw  the same in the hardware lane (L1's nested KVM, its QEMU)"
	@echo "make fuzz    fuzz every parser of outside data (atheris); make fuzz-guest: random hostile guests"
	@echo "make chaos   (root) kill -9 pykvm mid-operation, check nothing leaked; make load: 1,000 container runs"
	@echo "make linux-guest  fetch Debian's kernel and build a busybox initramfs (pykvm boot linux)"
	@echo "make clean   remove build products (keeps .venv/)"

# The packages the tests use: QEMU, runc, a registry, skopeo, umoci, busybox... (apt-get,
# so root).  The README's test command is `sudo make deps test`.
deps:
	bash .ci/packages

# --- the Python side: a venv with pykvm installed editable (compiles the cffi bindings;
# pyproject.toml says why the editable install is a plain .pth line)
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py pykvm/vm/kvm/_build.py pykvm/vm/kvm/answered.c pykvm/vm/devices/virtio/chain.c \
		pykvm/container/runtime/_build.py \
		pykvm/container/runtime/_seccomp_build.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# --- the guests: built with the system gcc/binutils, nothing downloaded
guests:
	$(MAKE) -C guests

boot-guests:
	for d in $(BOOT_GUESTS); do $(MAKE) -C $$d || exit 1; done

# BOOT_ARGS for a boot without a terminal: make boot BOOT_ARGS='--cmdline "run=info;poweroff"'
boot: venv boot-guests
	$(PYKVM) boot $(BOOT_ARGS)

# pykvm waits for gdb on localhost:1234 in its own session (so gdb's Ctrl-C reaches gdb only;
# its console prints on this terminal), and gdb connects with the tiny kernel's symbols.
# gdb's `kill` ends both; after `detach` or `quit` the VM is stopped here.
gdb: venv boot-guests
	@setsid $(PYKVM) boot --gdb-wait </dev/null & pykvm=$$!; \
	trap 'kill $$pykvm 2>/dev/null' EXIT INT TERM; \
	gdb -q -ex 'target remote localhost:1234' guests/tiny/tiny.elf

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
	$(PY) tests/hw/lane.py $(LANE_ARGS) -- $(PYTEST_ARGS)

# Fuzzing (docs/40-reliability.md): each bounded by count and time; FUZZ_ARGS / FUZZ_GUEST_ARGS override.
FUZZ_ARGS ?= --runs 10000 --seed 1
FUZZ_GUEST_ARGS ?= --count 1000 --seconds 900 --seed 1
.PHONY: fuzz fuzz-guest chaos
fuzz: venv guests
	$(PY) tests/fuzz/parser_fuzz.py --all $(FUZZ_ARGS)

fuzz-guest: venv
	$(PY) tests/fuzz/guest_fuzz.py $(FUZZ_GUEST_ARGS)

# kill -9 at random moments of pull, push, build, rmi, run, exec, oci create/start/delete and boot,
# then look for leaks (root; docs/40-reliability.md).  CHAOS_ARGS='--count N --seconds S --ops pull,run'
CHAOS_ARGS ?= --count 20 --seconds 1800 --seed 1
chaos: venv guests
	$(PY) tests/chaos/chaos.py $(CHAOS_ARGS)

# 100 concurrent, then 1,000 sequential `container run --rm`, beside runc (root).  LOAD_ARGS='--sequential 200'
LOAD_ARGS ?= --concurrent 100 --sequential 1000 --seconds 1800
.PHONY: load
load: venv guests
	$(PY) tests/load/load.py $(LOAD_ARGS)

bench: venv guests
	$(PY) tests/bench/run.py

# kvm-unit-tests, built outside this repository (shared/kvm-unit-tests beside the checkout,
# or $$KVM_UNIT_TESTS_DIR): every configuration of its unittests.cfg that pykvm's machine can
# run, under QEMU and under pykvm, one line each.  KUT_ARGS="--only setjmp,la57 --timeout 60"
KUT_ARGS ?=
kvm-unit-tests: venv guests
	$(PY) tests/kvm_unit_tests.py $(KUT_ARGS)

# ... and in the hardware lane: both VMMs on L1's nested KVM, 90 s per test unless KUT_ARGS
# says --timeout; the whole run may take hours under TCG, hence the wider --tests-timeout.
kvm-unit-tests-hw: venv guests
	$(PY) tests/hw/lane.py --kvm-unit-tests --tests-timeout 14400 -- $(KUT_ARGS)

clean:
	$(MAKE) -C guests clean
	rm -rf build pykvm/*/*/_*_cffi.c pykvm/*/*/_*_cffi*.so .pytest_cache

distclean: clean
	rm -rf $(VENV) .cache

# --- the Linux guest: Debian's cloud kernel + a busybox initramfs in .cache/linux/
.PHONY: linux-guest linux-tiny
linux-guest: venv
	$(MAKE) -C guests/linux guest PYTHON=$(abspath $(PY))

# optional: a tiny kernel from Debian's linux-source (.cache/linux/bzImage-tiny)
linux-tiny:
	$(MAKE) -C guests/linux tiny
