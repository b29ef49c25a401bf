"""Virtio over MMIO (virtio 1.2): the transport, the split virtqueue, and the devices.

    mmio.py     the virtio-mmio register file (4.2), knows no device
    queue.py    split virtqueues (2.7): every descriptor checked against guest memory
    device.py   what a device is to the transport: ID, features, config, queues
    blk.py      virtio-blk (5.2): a raw image file
    console.py  virtio-console (5.3): one port, hvc0
    rng.py      virtio-rng (5.4): host entropy
    net.py      virtio-net (5.1): Ethernet frames to and from a tap device (tap.py)
    notify.py   kicks and interrupts: ioeventfd + irqfd + a worker, or plain MMIO exits
    attach.py   the machine's step: slots, command line, MMIO bus
"""
