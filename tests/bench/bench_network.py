"""Benchmark: TCP between two containers on a bridge, pykvm vs Podman, side by side in one run.

    python tests/bench/bench_network.py [ROUNDS] [MIB] [ROUND_TRIPS]    (root; default 5, 256, 2000)

Rows:
  loopback          net_peer over `lo` of the bench namespace, no container: the floor
  pykvm bridge      container -> container over pykvm0 (veth, bridge, veth), `--network bridge`
  podman bridge     the same over Podman's default network (its bridge, 10.88.0.0/16)
Columns:
  MiB/s             one TCP stream of MIB MiB, 64 KiB writes: min / median / max over ROUNDS
  round trip us     one-byte request and answer, TCP_NODELAY: min / median / max over all
                    ROUNDS x ROUND_TRIPS round trips
and the ratios pykvm / podman.

Fair play:
  * One program (net_peer.c, built static) in one busybox rootfs for every row; the server is
    a detached container, each client a fresh container; the time is taken inside the client,
    so neither runtime's launch is counted.
  * Everything runs in a network namespace made for the run (`nsenter --net`): both bridges,
    their NAT rules and all traffic stay there, and go with it.
  * Rows are interleaved, each round starting one row later.
  * Each runtime gives the containers its own defaults (Podman runs them with runc and its
    seccomp profile). Podman runs with --cgroup-manager cgroupfs (no systemd here) and
    explicit ulimits (its default RLIMIT_NOFILE is above this machine's hard limit).

Results (2026-12-02, this 2-core machine under a load average of ~10 from other jobs;
defaults: 5 rounds, 256 MiB, 2000 round trips), two runs minutes apart:
                          MiB/s (min / median / max)     round trip us (min / median / max)
  run 1  loopback         815.1   1261.8   2174.5         15.1   15.4   41291.9
         pykvm bridge     635.8    745.8    983.1         19.8   20.1   10379.2
         podman bridge    700.8   1037.4   1737.6         20.5   20.9    2934.2
         pykvm / podman: throughput 0.72x, round trip 0.96x
  run 2  loopback         532.7    900.4   1708.7         15.1   15.5   83738.7
         pykvm bridge     280.2    767.1    950.9         19.7   21.3   25440.3
         podman bridge    237.1    383.9   1133.2         20.4   24.4   62020.5
         pykvm / podman: throughput 2.00x, round trip 0.87x
The round trips are steady: ~5 us over loopback for the veth -> bridge -> veth path, the same
for both runtimes (both are the kernel's veth and bridge; neither runtime is on the path once
the container runs). The throughputs swing with the load, by 2x between runs: read them as
"the same order", not as a ranking. The maxima are preemptions of this shared machine.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PORT = 5001
READY_TIMEOUT = 20.0          # seconds for a server to accept its first connection
RUN_TIMEOUT = 300.0           # seconds for one client run
PODMAN_ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


def sh(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(map(str, argv)), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, **kw)


class Side:
    """One row: a server started once, a client per measurement."""

    name = ""

    def __init__(self, netns: str, tmp: Path, rootfs: Path):
        self.enter = ["nsenter", f"--net=/run/netns/{netns}", "--"]
        self.tmp, self.rootfs, self.address = tmp, rootfs, ""

    def client(self, *args) -> str:
        r = sh(self.client_argv(*args), env=self.env())
        if r.returncode != 0:
            raise RuntimeError(f"{self.name}: net_peer {' '.join(map(str, args))}: {r.stderr.strip()}")
        return r.stdout

    def env(self) -> dict:
        return dict(os.environ)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while sh(self.client_argv("rr", self.address, PORT, 1), env=self.env()).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: the server never answered on {self.address}:{PORT}")
            time.sleep(0.2)

    def stream(self, mib: int) -> float:
        sent, seconds = self.client("stream", self.address, PORT, mib).split()
        return int(sent) / seconds_or_tiny(float(seconds)) / 2**20

    def round_trips(self, count: int) -> list[float]:
        return [float(line) * 1e6 for line in self.client("rr", self.address, PORT, count).split()]


def seconds_or_tiny(seconds: float) -> float:
    return max(seconds, 1e-9)


class Loopback(Side):
    name = "loopback"

    def start(self) -> None:
        self.server = subprocess.Popen([*self.enter, self.rootfs / "bin" / "net_peer", "serve", str(PORT)])
        self.address = "127.0.0.1"
        self.wait_ready()

    def client_argv(self, *args):
        return [*self.enter, self.rootfs / "bin" / "net_peer", *args]

    def stop(self) -> None:
        self.server.kill()
        self.server.wait()


class Pykvm(Side):
    name = "pykvm bridge"

    def env(self) -> dict:
        return {**os.environ, "PYKVM_STATE_ROOT": str(self.tmp / "pykvm" / "state")}

    def pykvm(self, *args):
        return [*self.enter, sys.executable, "-m", "pykvm", "container", *args]

    def start(self) -> None:
        r = sh(self.pykvm("run", "-d", "--network", "bridge", "--name", "srv", "--rootfs", self.rootfs,
                          "net_peer", "serve", PORT), env=self.env(), cwd=ROOT)
        if r.returncode != 0:
            raise RuntimeError(f"pykvm server: {r.stderr.strip()}")
        leases = json.loads((self.tmp / "pykvm" / "network" / "leases.json").read_text())["leases"]
        self.address = next(a for a, lease in leases.items() if lease["name"] == "srv")
        self.wait_ready()

    def client_argv(self, *args):
        return self.pykvm("run", "--rm", "--network", "bridge", "--rootfs", self.rootfs, "net_peer", *args)

    def stop(self) -> None:
        sh(self.pykvm("rm", "-f", "srv"), env=self.env())
        sh(self.pykvm("network", "rm"), env=self.env())


class Podman(Side):
    name = "podman bridge"

    def podman(self, *args):
        return [*self.enter, "podman", "--root", self.tmp / "podman" / "root", "--runroot",
                self.tmp / "podman" / "run", "--runtime", "runc", "--cgroup-manager", "cgroupfs",
                "--events-backend", "file", *args]

    def start(self) -> None:
        r = sh(self.podman("run", "-d", *PODMAN_ULIMITS, "--network", "bridge", "--name", "srv",
                           "--rootfs", self.rootfs, "net_peer", "serve", PORT))
        if r.returncode != 0:
            raise RuntimeError(f"podman server: {r.stderr.strip()}")
        self.address = sh(self.podman("inspect", "-f", "{{.NetworkSettings.IPAddress}}", "srv")).stdout.strip()
        self.wait_ready()

    def client_argv(self, *args):
        return self.podman("run", "--rm", *PODMAN_ULIMITS, "--network", "bridge", "--rootfs",
                           self.rootfs, "net_peer", *args)

    def stop(self) -> None:
        sh(self.podman("rm", "-f", "srv"))


def build(tmp: Path) -> Path:
    """net_peer, static, in a busybox rootfs."""
    sys.path.insert(0, str(ROOT))
    from pykvm.container.runtime.rootfs import make_busybox_rootfs
    rootfs = make_busybox_rootfs(tmp / "rootfs")
    subprocess.run(["gcc", "-O2", "-static", "-o", rootfs / "bin" / "net_peer", HERE / "net_peer.c"],
                   check=True)
    return rootfs


def spread(values: list[float]) -> str:
    return f"{min(values):9.1f} {statistics.median(values):9.1f} {max(values):9.1f}"


def main() -> int:
    if os.geteuid() != 0:
        print("bench_network: needs root (network namespaces, bridges)")
        return 1
    rounds, mib, count = (int(a) for a in (sys.argv[1:] + ["5", "256", "2000"][len(sys.argv) - 1:])[:3])
    tmp = Path(tempfile.mkdtemp(prefix="pykvm-bench-net-"))
    netns = f"pykvm-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
    sides: list[Side] = []
    try:
        rootfs = build(tmp)
        kinds = [Loopback, Pykvm] + ([Podman] if shutil.which("podman") else [])
        if not shutil.which("podman"):
            print("podman is not installed (apt-get install podman): its row is left out")
        for kind in kinds:
            side = kind(netns, tmp, rootfs)
            side.start()
            sides.append(side)
        results = {side.name: {"mibs": [], "rtts": []} for side in sides}
        for r in range(rounds):
            for side in sides[r % len(sides):] + sides[:r % len(sides)]:
                results[side.name]["mibs"].append(side.stream(mib))
                results[side.name]["rtts"] += side.round_trips(count)
        report(results, rounds, mib, count)
    finally:
        for side in sides:
            side.stop()
        subprocess.run(["ip", "netns", "del", netns], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def report(results: dict, rounds: int, mib: int, count: int) -> None:
    print(f"\nTCP over a bridge, container to container: {rounds} rounds, {mib} MiB streams, "
          f"{count} round trips each (min / median / max)")
    print(f"{'':16}{'MiB/s':>29}   {'round trip us':>29}")
    for name, r in results.items():
        print(f"{name:16}{spread(r['mibs'])}   {spread(r['rtts'])}")
    if "podman bridge" in results:
        ours, theirs = results["pykvm bridge"], results["podman bridge"]
        print(f"pykvm / podman: throughput {statistics.median(ours['mibs']) / statistics.median(theirs['mibs']):.2f}x, "
              f"round trip {statistics.median(ours['rtts']) / statistics.median(theirs['rtts']):.2f}x "
              f"(medians)")


if __name__ == "__main__":
    sys.exit(main())
