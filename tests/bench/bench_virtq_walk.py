#!/usr/bin/env python3
"""The cost of one virtio-blk read request on the host: Python per descriptor vs C.

No guest and no KVM: a ToyDriver (tests/virtio_driver.py) lays requests out in
guest memory as Linux does and hands them to pykvm's virtio-blk, so only the
device's own work is timed.  Two shapes of a read request:

  Linux 1 MiB   an indirect table: header, 254 scattered 4 KiB pages, status
  tiny 1 MiB    three descriptors: header, one 1 MiB buffer, status (the tiny kernel)

For each, side by side in one run (runs interleaved, so both see the same noise):
  walk      SplitQueue.read_chain (Python)    vs  read_chain_in_c (chain.c)
  data      os.preadv over one memoryview per piece  vs  GuestMemory.rw_vectored (chain.c)
  request   Block.process with walk_in_c False  vs  True (the whole request, both data in C)
Prints microseconds per request, min / median / max over --runs, and the ratio of medians
(Python / C: how many times longer Python takes).

    .venv/bin/python tests/bench/bench_virtq_walk.py [--runs 7] [--requests 1000]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent)]
from pykvm.vm.devices.virtio.blk import VIRTIO_BLK_T_IN, Block  # noqa: E402
from pykvm.vm.devices.virtio.queue import (VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT,  # noqa: E402
                                          VIRTQ_DESC_F_WRITE, SplitQueue, slice_buffers)
from virtio_driver import ToyDriver  # noqa: E402

MEMORY = 64 << 20
IMAGE = 16 << 20
HEADER, STATUS, TABLE, BUFFER = 0x200000, 0x200100, 0x201000, 0x400000
QUEUE_SIZE = 256
NEXT, WRITE = VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE


def lay_out(driver: ToyDriver, shape: str) -> None:
    """Descriptor 0 of the queue: a 1 MiB read of sector 0, in `shape`."""
    driver.memory.write(HEADER, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 0))
    if shape == "tiny":
        driver.descriptor(0, 0, HEADER, 16, NEXT, 1)
        driver.descriptor(0, 1, BUFFER, 1 << 20, WRITE | NEXT, 2)
        driver.descriptor(0, 2, STATUS, 1, WRITE)
        return
    pages = random.Random(1).sample(range((8 << 20) >> 12, MEMORY >> 12), 254)
    driver.descriptor(0, 0, HEADER, 16, NEXT, 1, table=TABLE)
    for i, page in enumerate(pages, start=1):
        driver.descriptor(0, i, page << 12, 4096, WRITE | NEXT, i + 1, table=TABLE)
    driver.descriptor(0, 255, STATUS, 1, WRITE, table=TABLE)
    driver.descriptor(0, 0, TABLE, 256 * 16, VIRTQ_DESC_F_INDIRECT)


def per_request(work, requests: int) -> float:
    start = time.perf_counter()
    for _ in range(requests):
        work()
    return (time.perf_counter() - start) / requests * 1e6


def measure(driver: ToyDriver, requests: int) -> dict[str, float]:
    device, memory = driver.device, driver.memory
    queue = device.queues[0]
    chain = queue.read_chain(0)
    length = chain.writable_length - 1                  # the data, not the status byte
    pieces = slice_buffers(chain.writable, 0, length)
    packed = chain.packed_buffers(writable=True)

    def python_data():
        views = [memory.view(address, length) for address, length in pieces]
        os.preadv(device.fd, views, 0)
        for view in views:
            view.release()

    def request(walk_in_c: bool):
        def one():
            queue.walk_in_c = walk_in_c
            driver.offer(0, 0)
            device.process(0)
        return one

    return {
        "walk, Python": per_request(lambda: queue.read_chain(0), requests),
        "walk, C": per_request(lambda: queue.read_chain_in_c(0), requests),
        "data, Python": per_request(python_data, requests),
        "data, C": per_request(lambda: memory.rw_vectored(device.fd, packed, 0, 0, length), requests),
        "request, Python walk": per_request(request(False), requests),
        "request, C walk": per_request(request(True), requests),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--requests", type=int, default=1000, help="requests per run and figure")
    args = parser.parse_args()
    if args.runs < 1 or args.requests < 1:
        parser.error("--runs and --requests must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "disk.img"
        image.write_bytes(os.urandom(IMAGE))
        for shape, title in (("linux", "Linux 1 MiB: 256 descriptors in an indirect table"),
                             ("tiny", "tiny 1 MiB: 3 descriptors")):
            driver = ToyDriver(Block(image, read_only=True), memory_size=MEMORY)
            driver.start(size=QUEUE_SIZE)
            lay_out(driver, shape)
            samples: dict[str, list[float]] = {}
            for _ in range(args.runs):
                for name, value in measure(driver, args.requests).items():
                    samples.setdefault(name, []).append(value)
            driver.close()
            print(f"\n{title} ({args.runs} runs of {args.requests} requests, us per request)")
            print(f"{'':22} {'min':>8} {'median':>8} {'max':>8}")
            for name, values in samples.items():
                print(f"{name:22} {min(values):8.1f} {statistics.median(values):8.1f} {max(values):8.1f}")
            for what in ("walk", "data", "request"):
                python = statistics.median(samples[f"{what}, Python" if what != "request"
                                                   else "request, Python walk"])
                c = statistics.median(samples[f"{what}, C" if what != "request" else "request, C walk"])
                print(f"{what}: Python / C = {python / c:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
