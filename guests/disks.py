#!/usr/bin/env python3
"""Builds the root-disk images for virtio-blk: raw ext4 made with `mkfs.ext4 -d`
(no loop mount, no root needed for the busybox ones).

  disks.py busybox BUSYBOX OUTDIR   busybox-root.img: busybox and an /sbin/init that
                                    does what the kernel command line's `hvkvm=`
                                    asks (see INIT); probe-root.img: /sbin/init is
                                    the ud2 probe (for PVM hosts)
  disks.py debian OUTDIR            debian.img: Debian 12 (bookworm) from Debian's
                                    packages with debootstrap (minbase, systemd,
                                    udev), a serial getty, root without a password

The kernel passes `hvkvm=...` (and `hvkvm_seed=...`) to init as environment
variables; INIT's modes are what the boot tests and benchmarks need.
"""
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from initramfs import probe_elf  # noqa: E402

INIT = r"""#!/bin/busybox sh
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "HVKVM-INIT: disk root ($($bb grep ' / ' /proc/mounts | $bb cut -d' ' -f1,3,4))"
echo "HVKVM-NPROC: $($bb nproc)"
echo "HVKVM-ONLINE: $($bb cat /sys/devices/system/cpu/online)"
seed=${hvkvm_seed:-0}
case "${hvkvm:-}" in
  write)
    # 1 MiB derived from the seed; its checksum; sync (FLUSH) before the marker.
    $bb dd if=/dev/urandom of=/persist bs=64k count=16 2>/dev/null
    printf '\n%s\n' "$seed" >> /persist
    $bb sync
    echo "HVKVM-WROTE: $($bb md5sum /persist | $bb cut -d' ' -f1)"
    ;;
  write-hang)
    $bb dd if=/dev/urandom of=/persist bs=64k count=16 2>/dev/null
    printf '\n%s\n' "$seed" >> /persist
    $bb sync
    echo "HVKVM-SYNCED: $($bb md5sum /persist | $bb cut -d' ' -f1)"
    # Killed here by the test (SIGKILL of the VMM).
    while :; do $bb sleep 1; done
    ;;
  read)
    echo "HVKVM-READ: $($bb md5sum /persist | $bb cut -d' ' -f1) $($bb tail -n1 /persist)"
    ;;
  dd)
    # Sequential direct I/O on the second disk, 64 MiB each way, timed with
    # /proc/uptime (Debian's busybox dd prints no rate).
    up() { $bb cut -d' ' -f1 /proc/uptime; }
    rate() { echo "$1: 67108864 bytes copied, $($bb awk "BEGIN { print $3 - $2 }") seconds"; }
    a=$(up); $bb dd if=/dev/zero of=/dev/vdb bs=1M count=64 oflag=direct 2>/dev/null; b=$(up)
    rate HVKVM-DD-WRITE "$a" "$b"
    a=$(up); $bb dd if=/dev/vdb of=/dev/null bs=1M count=64 iflag=direct 2>/dev/null; b=$(up)
    rate HVKVM-DD-READ "$a" "$b"
    ;;
  shell)
    echo "HVKVM-SHELL"
    exec $bb sh
    ;;
esac
$bb sync
$bb mount -o remount,ro / 2>/dev/null
$bb poweroff -f
"""


def run(*cmd):
    subprocess.run(cmd, check=True)


def mkfs(src, img, size_mib, label):
    if os.path.exists(img):
        os.remove(img)
    run("mkfs.ext4", "-q", "-F", "-L", label, "-E", "root_owner=0:0", "-d", src, img,
        f"{size_mib}M")


def busybox(bb, out):
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "root")
        for d in ("bin", "sbin", "dev", "proc", "sys", "tmp", "etc"):
            os.makedirs(os.path.join(root, d))
        shutil.copy(bb, os.path.join(root, "bin", "busybox"))
        os.chmod(os.path.join(root, "bin", "busybox"), 0o755)
        init = os.path.join(root, "sbin", "init")
        open(init, "w").write(INIT)
        os.chmod(init, 0o755)
        mkfs(root, os.path.join(out, "busybox-root.img.tmp"), 16, "hvkvm-bb")
        os.replace(os.path.join(out, "busybox-root.img.tmp"), os.path.join(out, "busybox-root.img"))
        open(init, "wb").write(probe_elf())
        mkfs(root, os.path.join(out, "probe-root.img.tmp"), 16, "hvkvm-probe")
        os.replace(os.path.join(out, "probe-root.img.tmp"), os.path.join(out, "probe-root.img"))


DEBIAN_PACKAGES = "systemd-sysv,udev"


def debian(out):
    mirror = os.environ.get("HVKVM_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        root = os.path.join(tmp, "root")
        run("debootstrap", "--variant=minbase", f"--include={DEBIAN_PACKAGES}", "bookworm",
            root, mirror)
        open(os.path.join(root, "etc", "hostname"), "w").write("hvkvm\n")
        open(os.path.join(root, "etc", "fstab"), "w").write(
            "/dev/vda / ext4 rw,errors=remount-ro 0 1\n")
        # A console login without a password: a local test system.
        run("chroot", root, "passwd", "-d", "root")
        # No package caches in the image.
        shutil.rmtree(os.path.join(root, "var", "cache", "apt", "archives"), ignore_errors=True)
        os.makedirs(os.path.join(root, "var", "cache", "apt", "archives", "partial"))
        mkfs(root, os.path.join(out, "debian.img.tmp"), 512, "hvkvm-debian")
    os.replace(os.path.join(out, "debian.img.tmp"), os.path.join(out, "debian.img"))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "busybox":
        busybox(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "debian":
        debian(sys.argv[2])
    else:
        sys.exit(__doc__)
