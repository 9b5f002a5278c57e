#!/usr/bin/env python3
"""Writes the two test initramfs images as uncompressed newc cpio archives.

busybox.cpio: /bin/busybox and an /init script that prints a marker, nproc and the
              online CPU list on the console, then powers the guest off.
probe.cpio:   an /init that is a 122-byte static ELF whose first instruction is
              ud2. On a host where guest user space cannot make system calls (PVM),
              the kernel's report of that fault at init's IP is the proof that init
              ran in user mode.

usage: initramfs.py BUSYBOX OUTDIR
"""
import struct
import sys

INIT_SCRIPT = b"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
echo "HVKVM-INIT: hello from /init"
echo "HVKVM-NPROC: $(/bin/busybox nproc)"
echo "HVKVM-ONLINE: $(/bin/busybox cat /sys/devices/system/cpu/online)"
/bin/busybox poweroff -f
"""

# The probe's load address; its entry point is right after the two headers.
PROBE_BASE = 0x400000


def probe_elf() -> bytes:
    code = b"\x0f\x0b"  # ud2
    ehdr_size, phdr_size = 64, 56
    entry = PROBE_BASE + ehdr_size + phdr_size
    total = ehdr_size + phdr_size + len(code)
    ehdr = struct.pack(
        "<16sHHIQQQIHHHHHH",
        b"\x7fELF\x02\x01\x01" + b"\x00" * 9,  # ELF64, little endian, SysV
        2,  # ET_EXEC
        62,  # EM_X86_64
        1,  # EV_CURRENT
        entry,
        ehdr_size,  # program headers right after this header
        0,  # no section headers
        0,
        ehdr_size,
        phdr_size,
        1,
        0,
        0,
        0,
    )
    phdr = struct.pack(
        "<IIQQQQQQ",
        1,  # PT_LOAD
        5,  # R + X
        0,
        PROBE_BASE,
        PROBE_BASE,
        total,
        total,
        0x1000,
    )
    return ehdr + phdr + code


class Cpio:
    def __init__(self) -> None:
        self.data = bytearray()
        self.ino = 1

    def _entry(self, name: str, mode: int, body: bytes = b"", rdev=(0, 0)) -> None:
        nb = name.encode() + b"\x00"
        hdr = b"070701" + b"".join(
            b"%08X" % v
            for v in (
                self.ino, mode, 0, 0, 1, 0, len(body), 0, 0, rdev[0], rdev[1], len(nb), 0,
            )
        )
        self.ino += 1
        self.data += hdr + nb
        self.data += b"\x00" * (-len(self.data) % 4)
        self.data += body
        self.data += b"\x00" * (-len(self.data) % 4)

    def dir(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, body: bytes, mode: int = 0o100755) -> None:
        self._entry(name, mode, body)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        self.data += b"\x00" * (-len(self.data) % 512)
        return bytes(self.data)


def base() -> Cpio:
    c = Cpio()
    for d in ("dev", "proc", "sys", "bin"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    return c


def main() -> None:
    busybox, outdir = sys.argv[1], sys.argv[2]
    c = base()
    c.file("bin/busybox", open(busybox, "rb").read())
    c.file("init", INIT_SCRIPT)
    open(f"{outdir}/busybox.cpio", "wb").write(c.finish())
    c = base()
    c.file("init", probe_elf())
    open(f"{outdir}/probe.cpio", "wb").write(c.finish())


if __name__ == "__main__":
    main()
