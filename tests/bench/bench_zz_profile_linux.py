"""TEMPORARY (not committed): profile pykvm booting Linux to poweroff, in L1."""
import cProfile, pstats, subprocess, sys, time, io, os
sys.path.insert(0, "tests")
from bench_linux_boot import CMDLINE  # noqa
from linux_guest import CACHE
out = "/work/main/.cache/hw/prof.out"
t = time.monotonic()
p = subprocess.run([sys.executable, "-m", "cProfile", "-o", out, "-m", "pykvm", "boot", "--kernel", str(CACHE / "vmlinuz"),
                    "--initrd", str(CACHE / "initramfs.cpio"), "--mem", "256M", "--cmdline", CMDLINE],
                   input=b"poweroff -f\n", capture_output=True, timeout=600)
print("status", p.returncode, "wall", round(time.monotonic() - t, 2), "output bytes", len(p.stdout))
s = pstats.Stats(out)
s.sort_stats("tottime").print_stats(25)
