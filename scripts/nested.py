#!/usr/bin/env python3
"""The nested real-KVM tier: KVM's SVM code under QEMU's TCG.

QEMU's TCG emulates an AMD CPU with SVM and nested paging, so a Linux "L1" booted
under `qemu-system-x86_64 -accel tcg -cpu EPYC,+svm,+npt` loads kvm_amd and has a
/dev/kvm backed by KVM's real SVM code. This script builds that L1 from Debian
packages only (the cloud kernel with its kvm, kvm-amd and irqbypass modules, and
busybox-static), cached by content hash, and runs a payload inside it:

  nested.py l1                          build (or find) the L1; print its directory
  nested.py run [--timeout S] [--file PATH]... -- CMD [ARG]...
                                        run CMD inside a fresh L1; the listed files,
                                        CMD and every ARG that names a file (and the
                                        shared libraries of any ELF among them) sit
                                        at the same absolute paths there
  nested.py tests [--extra PATH]... EXE...
                                        run each test executable in its own L1
                                        session (a boot-test binary: one session per
                                        test) and print "N passed, N failed"
  nested.py boots --vmm PATH --initramfs PATH [--vcpus 4,16] [--hyperv MODE]
                                        the stock-kernel boots (Debian's cloud
                                        kernel + busybox, 4 and 16 vCPUs)
  nested.py stock-root                  print the stock cloud kernel (bzImage) and
                                        an initramfs that mounts /dev/vda with it
  nested.py debian --vmm PATH [--disk target/debian/debian.img] [--vcpus 4]
                                        Debian 12 from its root disk (virtio-blk)
                                        with the stock kernel, to systemd's login
                                        prompt; the VMM is killed there
  nested.py suite                       what scripts/test-all.sh runs: builds the
                                        workspace's test executables, runs them
                                        all (`tests`), then the stock boots (4 and
                                        16 vCPUs, and 4 with --hyperv vsm), and
                                        the Debian boot

`run` prints the payload's output and exits with its status. A failure of the tier
itself is never mistaken for the payload's: QEMU missing, L1 not coming up, TCG
without SVM, kvm_amd not loading, an L1 panic, reset or freeze each end with one
line starting "nested: L1 failure:" and status 125. L1 prints a heartbeat that the
driver filters out; a payload that runs past its time bound while the heartbeat
goes on is a payload hang (status 124), one whose heartbeat stopped is an L1 freeze.

Facts this follows (see shared/docs/design.md): L1 gets one CPU (two froze), boots
with tsc=reliable (TCG otherwise marks the TSC unstable and IA32_TSC reads go
backwards), and each session is short: a fresh L1 per payload.
"""
import argparse
import hashlib
import inspect
import json
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CACHE = os.environ.get("HVKVM_GUEST_CACHE", "/var/cache/hvkvm-guests")
sys.path.insert(0, os.path.join(REPO, "guests"))
from initramfs import Cpio  # noqa: E402

READY = "HVKVM-L1-READY"
ALIVE = "HVKVM-L1-ALIVE"
EXIT = "HVKVM-L1-EXIT: "
FAIL = "HVKVM-L1-FAIL: "
INFRA = 125
HANG = 124
HEARTBEAT_S = 5

L1_INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /dev/shm && mount -t tmpfs tmpfs /dev/shm
grep -qw svm /proc/cpuinfo || { echo "HVKVM-L1-FAIL: the emulated CPU has no SVM (QEMU TCG without +svm)"; poweroff -f; }
for m in irqbypass kvm kvm-amd; do
  insmod /modules/$m.ko || { echo "HVKVM-L1-FAIL: insmod $m.ko failed"; poweroff -f; }
done
[ -c /dev/kvm ] || { echo "HVKVM-L1-FAIL: kvm_amd loaded but /dev/kvm is missing"; poweroff -f; }
grep -q Y /sys/module/kvm_amd/parameters/npt || echo "nested: warning: kvm_amd without nested paging"
(while :; do sleep %(hb)d; echo %(alive)s; done) &
echo %(ready)s
sh /hvkvm-payload.sh
echo "HVKVM-L1-EXIT: $?"
poweroff -f
""" % {"hb": HEARTBEAT_S, "alive": ALIVE, "ready": READY}

L1_APPEND = "console=ttyS0 quiet loglevel=3 tsc=reliable panic=-1 rdinit=/init"


class L1Failure(Exception):
    """The tier itself failed (not the payload)."""


def log(msg):
    print(f"nested: {msg}", file=sys.stderr, flush=True)


def sudo():
    return [] if os.geteuid() == 0 else ["sudo"]


def apt_download(pkg, dest):
    """Downloads a Debian package into dest (once); returns the .deb path."""
    os.makedirs(dest, exist_ok=True)
    for f in sorted(os.listdir(dest)):
        if f.startswith(pkg + "_") and f.endswith(".deb"):
            return os.path.join(dest, f)
    for attempt in range(2):
        r = subprocess.run(["apt-get", "download", pkg], cwd=dest,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode == 0:
            return apt_download(pkg, dest)
        if attempt == 0:
            subprocess.run(sudo() + ["apt-get", "update", "-qq"], check=False)
    raise L1Failure(f"apt-get download {pkg} failed: {r.stderr.strip()}")


def cloud_kernel_package():
    """The versioned package behind Debian's linux-image-cloud-amd64."""
    out = subprocess.run(["apt-cache", "depends", "linux-image-cloud-amd64"],
                         capture_output=True, text=True).stdout
    m = re.search(r"Depends: (linux-image-\S+-cloud-amd64)\b", out)
    if not m:
        subprocess.run(sudo() + ["apt-get", "update", "-qq"], check=False)
        out = subprocess.run(["apt-cache", "depends", "linux-image-cloud-amd64"],
                             capture_output=True, text=True).stdout
        m = re.search(r"Depends: (linux-image-\S+-cloud-amd64)\b", out)
    if not m:
        raise L1Failure("apt-cache knows no linux-image-cloud-amd64 (run apt-get update)")
    return m.group(1)


def extract(deb, into):
    os.makedirs(into, exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", deb, into], check=True)


def kernel_and_busybox(prefix, builder, init):
    """What both initramfs builds start from: the cloud kernel's and busybox-static's
    packages, and the cache directory named by their versions and the recipe (the
    builder's source and its init script). Returns (kernel deb, busybox deb, key,
    directory)."""
    dl = os.path.join(CACHE, "dl")
    kdeb = apt_download(cloud_kernel_package(), dl)
    bdeb = apt_download("busybox-static", dl)
    recipe = (inspect.getsource(builder) + init).encode()
    key = hashlib.sha256(os.path.basename(kdeb).encode() + os.path.basename(bdeb).encode()
                         + recipe).hexdigest()[:16]
    return kdeb, bdeb, key, os.path.join(CACHE, f"{prefix}-{key}")


def unpack(kdeb, bdeb, tmp):
    """Extracts both packages under tmp (k/ and b/), afresh."""
    shutil.rmtree(tmp, ignore_errors=True)
    extract(kdeb, os.path.join(tmp, "k"))
    extract(bdeb, os.path.join(tmp, "b"))


def kernel_modules(kdeb, tmp, names):
    """{file name: path} of the named .ko files in the kernel package unpacked under
    tmp; all of them, or L1Failure."""
    found = {}
    for root, _, files in os.walk(os.path.join(tmp, "k", "lib", "modules")):
        for f in files:
            if f in names:
                found[f] = os.path.join(root, f)
    if set(found) != set(names):
        raise L1Failure(f"{os.path.basename(kdeb)} lacks {sorted(set(names) - set(found))}")
    return found


def build_l1():
    """Builds (or finds) the L1 kernel and base initramfs; returns their directory."""
    kdeb, bdeb, key, d = kernel_and_busybox("l1", build_l1, L1_INIT)
    if os.path.exists(os.path.join(d, "base.cpio")):
        return d
    log(f"building L1 {key} from {os.path.basename(kdeb)} and {os.path.basename(bdeb)}")
    tmp = d + ".tmp"
    unpack(kdeb, bdeb, tmp)
    boot = os.path.join(tmp, "k", "boot")
    vmlinuz = [f for f in os.listdir(boot) if f.startswith("vmlinuz-")][0]
    shutil.copy(os.path.join(boot, vmlinuz), os.path.join(tmp, "vmlinuz"))
    c = Cpio()
    for dname in ("dev", "proc", "sys", "bin", "tmp", "modules", "sbin", "usr", "usr/bin"):
        c.dir(dname)
    c.chardev("dev/console", 5, 1)
    c.file("bin/busybox", open(os.path.join(tmp, "b", "bin", "busybox"), "rb").read())
    c.file("init", L1_INIT.encode())
    for f, p in kernel_modules(kdeb, tmp, ("irqbypass.ko", "kvm.ko", "kvm-amd.ko")).items():
        c.file(f"modules/{f}", open(p, "rb").read(), 0o100644)
    open(os.path.join(tmp, "base.cpio"), "wb").write(c.finish())
    # The release name, so the stock-kernel boots can name the kernel they run.
    open(os.path.join(tmp, "release"), "w").write(vmlinuz[len("vmlinuz-"):])
    shutil.rmtree(os.path.join(tmp, "k"))
    shutil.rmtree(os.path.join(tmp, "b"))
    shutil.rmtree(d, ignore_errors=True)
    os.rename(tmp, d)
    return d


STOCK_ROOT_INIT = """#!/bin/busybox sh
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t devtmpfs devtmpfs /dev
for m in virtio_ring virtio virtio_mmio virtio_blk; do
  $bb insmod /modules/$m.ko || echo "HVKVM-ROOT: insmod $m.ko failed"
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do $bb sleep 0.1; i=$((i + 1)); done
$bb mkdir -p /newroot
$bb mount -t ext4 -o rw /dev/vda /newroot || { echo "HVKVM-ROOT: cannot mount /dev/vda"; $bb poweroff -f; }
echo "HVKVM-ROOT: /dev/vda mounted; switching to its /sbin/init"
$bb umount /dev /proc
exec $bb switch_root /newroot /sbin/init
"""


def stock_root_initramfs():
    """An initramfs for Debian's stock cloud kernel, whose virtio drivers are
    modules: busybox loads virtio_ring, virtio, virtio_mmio and virtio_blk (in
    that order, their dependencies), mounts /dev/vda and switches to its
    /sbin/init. Cached by content hash."""
    kdeb, bdeb, _, d = kernel_and_busybox("stock-root", stock_root_initramfs, STOCK_ROOT_INIT)
    out = os.path.join(d, "root.cpio")
    if os.path.exists(out):
        return out
    tmp = d + ".tmp"
    unpack(kdeb, bdeb, tmp)
    c = Cpio()
    for dname in ("dev", "proc", "sys", "bin", "modules", "newroot"):
        c.dir(dname)
    c.chardev("dev/console", 5, 1)
    c.file("bin/busybox", open(os.path.join(tmp, "b", "bin", "busybox"), "rb").read())
    c.file("init", STOCK_ROOT_INIT.encode())
    want = [f"{m}.ko" for m in ("virtio_ring", "virtio", "virtio_mmio", "virtio_blk")]
    for f, p in kernel_modules(kdeb, tmp, want).items():
        c.file(f"modules/{f}", open(p, "rb").read(), 0o100644)
    os.makedirs(tmp + ".out", exist_ok=True)
    open(os.path.join(tmp + ".out", "root.cpio"), "wb").write(c.finish())
    shutil.rmtree(tmp)
    shutil.rmtree(d, ignore_errors=True)
    os.rename(tmp + ".out", d)
    return out


def shared_libs(path):
    """The shared libraries an ELF needs (ldd), as real paths and link paths."""
    with open(path, "rb") as f:
        if f.read(4) != b"\x7fELF":
            return []
    r = subprocess.run(["ldd", path], capture_output=True, text=True)
    libs = []
    for line in r.stdout.splitlines():
        m = re.search(r"(\S*/\S+) \(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


class Payload:
    """The second initramfs: the files at their absolute paths and the command."""

    def __init__(self):
        self.c = Cpio()
        self.dirs = set()
        self.seen = set()

    def _parents(self, path):
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.dirs:
                self.dirs.add(d)
                self.c.dir(d)

    def add(self, path, strip=True):
        path = os.path.abspath(path)
        if path in self.seen:
            return
        self.seen.add(path)
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                self.add(os.path.join(path, name), strip)
            return
        if not os.path.exists(path):
            raise SystemExit(f"nested: error: {path} does not exist")
        self._parents(path)
        data = open(path, "rb").read()
        if strip and data[:4] == b"\x7fELF" and len(data) > 1 << 20:
            # Debug info is most of a debug build; an ELF objcopy cannot read (a
            # test's hand-made kernel) goes in as it is.
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "stripped")
                r = subprocess.run(["objcopy", "--strip-debug", path, out],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                if r.returncode == 0:
                    data = open(out, "rb").read()
        mode = os.stat(path).st_mode & 0o777
        self.c.file(path.lstrip("/"), data, 0o100000 | mode)
        for lib in shared_libs(path):
            self.add(lib, strip=False)

    def finish(self, cmd, cwd):
        script = "mkdir -p {0} && cd {0} || exit 1\nexport PATH=/bin:/usr/bin HOME=/tmp RUST_BACKTRACE=1\n" \
                 "{1}\n".format(shlex.quote(cwd), " ".join(shlex.quote(a) for a in cmd))
        self.c.file("hvkvm-payload.sh", script.encode(), 0o100644)
        return self.c.finish()


class Outcome:
    """A payload's status and output, the seconds L1 took to be ready, and each
    output line with the seconds since the payload started."""

    def __init__(self, status, text, ready, stamps, end=None):
        self.status, self.text, self.ready, self.stamps = status, text, ready, stamps
        self.end = end  # seconds from the payload's start to its exit

    def at(self, needle):
        """Seconds from the payload's start to the first line containing needle."""
        return next((t for t, line in self.stamps if needle in line), None)


def run(cmd, files, timeout, mem_mib=3072, cwd=None, echo=True):
    """Runs cmd in a fresh L1; returns its Outcome.

    Raises L1Failure when the tier itself fails."""
    if shutil.which("qemu-system-x86_64") is None:
        raise L1Failure("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    l1 = build_l1()
    p = Payload()
    for f in files:
        p.add(f)
    with tempfile.TemporaryDirectory() as tmp:
        initrd = os.path.join(tmp, "initrd.cpio")
        with open(initrd, "wb") as out:
            out.write(open(os.path.join(l1, "base.cpio"), "rb").read())
            out.write(p.finish(cmd, cwd or os.getcwd()))
        cpu = os.environ.get("HVKVM_NESTED_CPU", "EPYC,+svm,+npt")
        # L1's processors (TCG runs one host thread each): 1 by default.
        smp = os.environ.get("HVKVM_NESTED_SMP", "1")
        qemu = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", cpu,
                "-machine", "q35", "-smp", smp, "-m", str(mem_mib), "-nodefaults",
                "-display", "none", "-serial", "stdio", "-no-reboot",
                "-kernel", os.path.join(l1, "vmlinuz"), "-initrd", initrd,
                "-append", L1_APPEND]
        return _drive(qemu, timeout, echo)


def _drive(qemu, timeout, echo):
    start = time.monotonic()
    proc = subprocess.Popen(qemu, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    lines = queue.Queue()

    def reader():
        for raw in proc.stdout:
            lines.put(raw.decode("utf-8", "replace").replace("\r", ""))
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    boot_log, out, stamps = [], [], []
    ready_at = end = None
    last_alive = start
    status = None
    # L1 must come up well inside the payload's bound.
    ready_limit = min(timeout, 120)
    try:
        while True:
            now = time.monotonic()
            limit = (start + ready_limit) if ready_at is None else (ready_at + timeout)
            try:
                line = lines.get(timeout=max(0.1, min(1.0, limit - now)))
            except queue.Empty:
                line = ""
            if line is None:
                break
            if ALIVE in line:
                last_alive = time.monotonic()
                line = line.replace(ALIVE + "\n", "").replace(ALIVE, "")
            if line:
                if ready_at is None:
                    boot_log.append(line)
                    if READY in line:
                        ready_at = time.monotonic()
                        last_alive = ready_at
                    elif FAIL in line:
                        raise L1Failure(line.split(FAIL, 1)[1].strip())
                elif status is not None:
                    pass  # L1's own power-off lines
                elif line.startswith(EXIT):
                    status = int(line[len(EXIT):].strip())
                    end = time.monotonic() - ready_at
                else:
                    out.append(line)
                    stamps.append((time.monotonic() - ready_at, line))
                    if echo:
                        sys.stdout.write(line)
                        sys.stdout.flush()
            if time.monotonic() > limit:
                if ready_at is None:
                    raise L1Failure(f"L1 not ready after {ready_limit} s:\n"
                                    + "".join(boot_log[-30:]))
                if time.monotonic() - last_alive > 3 * HEARTBEAT_S:
                    raise L1Failure(f"L1 froze: no heartbeat for "
                                    f"{time.monotonic() - last_alive:.0f} s")
                log(f"payload still running after {timeout} s: killed (a hang, not L1)")
                return Outcome(HANG, "".join(out), ready_at - start, stamps)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if ready_at is None:
        raise L1Failure(f"QEMU exited ({proc.returncode}) before L1 was ready:\n"
                        + "".join(boot_log[-30:]))
    text = "".join(out)
    if status is None:
        why = "panicked" if "Kernel panic" in text else "reset or powered off"
        raise L1Failure(f"L1 {why} before the payload finished:\n" + "".join(out[-30:]))
    return Outcome(status, text, ready_at - start, stamps, end)


# ---------------------------------------------------------------------------
# Test executables, one L1 session each.

def list_tests(exe):
    r = subprocess.run([exe, "--list", "--format", "terse"], capture_output=True, text=True)
    return [l[: -len(": test")] for l in r.stdout.splitlines() if l.endswith(": test")]


def run_with_retry(cmd, files, timeout, what, mem_mib=3072):
    """One retry when the tier itself fails, said out loud; a second failure stands."""
    for attempt in (1, 2):
        try:
            return run(cmd, files, timeout, mem_mib=mem_mib, echo=False)
        except L1Failure as e:
            log(f"L1 failure: {what} (attempt {attempt}): {e}")
            if attempt == 2:
                return Outcome(INFRA, f"nested: L1 failure: {e}\n", 0.0, [])
    raise AssertionError


def tests(exes, extra, timeout):
    passed = failed = 0
    failures = []
    for exe in exes:
        names = list_tests(exe)
        if not names:
            continue
        # Boot tests each get a fresh L1: the tier is least stable over many boots.
        per_test = os.path.basename(exe).startswith("boot-")
        groups = [[n] for n in names] if per_test else [None]
        for g in groups:
            cmd = [exe] + (["--exact", g[0]] if g else []) + ["--test-threads", "1"]
            label = os.path.basename(exe) + (f" {g[0]}" if g else "")
            t0 = time.monotonic()
            o = run_with_retry(cmd, [exe] + extra, timeout, label)
            st, text, ready = o.status, o.text, o.ready
            n_pass = sum(int(m) for m in re.findall(r"test result: \w+\. (\d+) passed", text))
            n_fail = sum(int(m) for m in re.findall(r"; (\d+) failed", text))
            if st != 0 and n_fail == 0:
                n_fail = 1
            passed += n_pass
            failed += n_fail
            log(f"{label}: status {st}, {n_pass} passed, {n_fail} failed "
                f"(L1 ready {ready:.1f} s, session {time.monotonic() - t0:.1f} s)")
            if st != 0:
                failures.append(label)
                sys.stdout.write(text)
    print(f"nested tests: {passed} passed, {failed} failed")
    for f in failures:
        print(f"  failed: {f}")
    return 0 if failed == 0 else 1


# ---------------------------------------------------------------------------
# Boots of Debian's stock cloud kernel, as shipped.

def stock_kernel():
    """Debian's linux-image-*-cloud-amd64 bzImage (the L1's own kernel package)."""
    return os.path.join(build_l1(), "vmlinuz")


def fmt(t):
    return "-" if t is None else f"{t:.1f}"


def timeline_last(text, pattern):
    found = None
    for line in text.splitlines():
        m = re.match(r"\[\s*([\d.]+) s\] (.*)", line)
        if m and re.search(pattern, m.group(2)):
            found = float(m.group(1))
    return found


def boots(vmm, busybox, sweep, extra=()):
    kernel = stock_kernel()
    name = open(os.path.join(build_l1(), "release")).read().strip()
    passed = failed = 0
    for vcpus in sweep:
        cmd = [vmm, "--kernel", kernel, "--vcpus", str(vcpus), "--initramfs", busybox,
               "--timings", "--stats", *extra]
        label = f"stock {name} bzImage, {vcpus} vCPUs, busybox /init"
        if extra:
            label += " (" + " ".join(extra) + ")"
        o = run_with_retry(cmd, [vmm, kernel, busybox], 600, label)
        st, text = o.status, o.text
        aps = vcpus - 1
        checks = [
            ("status 0 (power-off)", st == 0),
            (f"HVKVM-NPROC: {vcpus}", f"HVKVM-NPROC: {vcpus}\n" in text),
            (f"HVKVM-ONLINE: 0-{vcpus - 1}", f"HVKVM-ONLINE: 0-{vcpus - 1}\n" in text),
            (f"{aps} mailbox wakeups", text.count("mailbox wakeup: APIC id") == aps),
            (f"{aps} starts through StartVirtualProcessor",
             text.count("started through StartVirtualProcessor (VTL 0)") == aps),
        ]
        bad = [c for c, ok in checks if not ok]
        aps_online = timeline_last(text, r"started through StartVirtualProcessor")
        user = o.at("HVKVM-INIT")
        log(f"{label}: L1 ready {o.ready:.1f} s; from the VMM's start: APs online "
            f"{fmt(aps_online)}, user space {fmt(user)}, exit {fmt(o.end)} "
            f"s; status {st}")
        if bad:
            failed += 1
            print(f"FAIL {label}: missing {bad}\n{text[-4000:]}")
        else:
            passed += 1
            print(f"ok   {label}")
    print(f"nested boots: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


DEBIAN_BOOT = """vmm=%(vmm)s
( %(cmd)s; echo "HVKVM-VMM-STATUS: $?" ) 2>&1 | tee /tmp/vmm.out &
i=0
while ! grep -q -e 'login: *$' -e 'HVKVM-VMM-STATUS' /tmp/vmm.out 2>/dev/null; do
  [ $i -ge %(ticks)d ] && { echo "HVKVM-DEBIAN: no login prompt after %(limit)d s"; break; }
  sleep 0.5; i=$((i + 1))
done
st=1
grep -q 'login: *$' /tmp/vmm.out && { st=0; echo; echo "HVKVM-DEBIAN: login prompt"; }
killall -9 "${vmm##*/}" 2>/dev/null
wait
exit $st
"""


def debian_boot(vmm, disk, vcpus=4, limit=300):
    """Debian 12 from a virtio-blk root disk (guests/build.sh debian) with the
    stock cloud kernel: reference-vmm boots it to systemd's login prompt on the
    serial console, every AP started through StartVirtualProcessor. The VMM is
    killed (SIGKILL) at the prompt; the L1 has its own copy of the disk (in its
    initramfs), so the image stays as built."""
    kernel = stock_kernel()
    initrd = stock_root_initramfs()
    name = open(os.path.join(build_l1(), "release")).read().strip()
    label = f"stock {name} bzImage, {vcpus} vCPUs, Debian 12 root disk to login"
    if not os.path.isfile(disk):
        print(f"FAIL {label}: {disk} is missing (guests/build.sh debian builds it)")
        return 1
    copy = os.path.abspath(disk)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [vmm, "--kernel", kernel, "--initramfs", initrd, "--disk", copy,
               "--vcpus", str(vcpus), "--memory", "1G", "--timings"]
        script = DEBIAN_BOOT % {"vmm": shlex.quote(vmm),
                                "cmd": " ".join(shlex.quote(c) for c in cmd),
                                "ticks": limit * 2, "limit": limit}
        sh = os.path.join(tmp, "debian-boot.sh")
        open(sh, "w").write(script)
        size = os.path.getsize(copy) >> 20
        o = run_with_retry(["sh", sh], [vmm, kernel, initrd, copy, sh], limit + 120, label,
                           mem_mib=max(3072, 2048 + 2 * size))
    st, text = o.status, o.text
    aps = vcpus - 1
    checks = [
        ("a login prompt", st == 0 and "HVKVM-DEBIAN: login prompt" in text),
        (f"{vcpus} CPUs brought up", f"smp: Brought up 1 node, {vcpus} CPUs" in text),
        (f"{aps} starts through StartVirtualProcessor",
         text.count("started through StartVirtualProcessor (VTL 0)") == aps),
        ("the disk found", "[vda]" in text),
        ("systemd as init", "systemd" in text and "HVKVM-ROOT: /dev/vda mounted" in text),
    ]
    bad = [c for c, ok in checks if not ok]
    log(f"{label}: L1 ready {o.ready:.1f} s; from the VMM's start: root mounted "
        f"{fmt(o.at('HVKVM-ROOT: /dev/vda mounted'))}, login prompt "
        f"{fmt(o.at('login:'))} s; status {st}")
    if bad:
        print(f"FAIL {label}: missing {bad}\n{text[-6000:]}")
        return 1
    print(f"ok   {label}")
    return 0


def suite():
    """Every test executable of the workspace in L1, then the stock-kernel boots."""
    t0 = time.monotonic()
    r = subprocess.run(["cargo", "test", "--workspace", "--locked", "--no-run",
                        "--message-format=json-render-diagnostics"],
                       cwd=REPO, stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        log("cargo test --no-run failed")
        return r.returncode
    tests_by_pkg, bins_by_pkg, vmm = {}, {}, None
    for line in r.stdout.splitlines():
        j = json.loads(line)
        exe = j.get("executable") if j.get("reason") == "compiler-artifact" else None
        if not exe:
            continue
        pkg = j["package_id"]
        if not j["profile"]["test"]:
            if "bin" in j["target"]["kind"]:
                bins_by_pkg.setdefault(pkg, []).append(exe)
            if j["target"]["name"] == "reference-vmm":
                vmm = exe
            continue
        tests_by_pkg.setdefault(pkg, []).append(exe)
    if vmm is None:
        log("cargo built no reference-vmm binary")
        return 1
    guests = os.path.join(REPO, "target", "guests")
    log(f"{sum(map(len, tests_by_pkg.values()))} test executables; each runs in a fresh L1")
    st = 0
    for pkg in sorted(tests_by_pkg):
        # A package's tests get its binaries; the reference-vmm tests also boot
        # the guests that guests/build.sh built.
        extra = bins_by_pkg.get(pkg, []) + ([guests] if "reference-vmm" in pkg else [])
        st |= tests(sorted(tests_by_pkg[pkg]), extra, 900)
    st |= boots(vmm, os.path.join(guests, "busybox.cpio"), [4, 16])
    # The same kernel in a partition that may enable VTLs 1 and 2.
    st |= boots(vmm, os.path.join(guests, "busybox.cpio"), [4], ("--hyperv", "vsm"))
    # Debian 12 from its root disk (guests/build.sh debian) to a login prompt.
    st |= debian_boot(vmm, os.path.join(REPO, "target", "debian", "debian.img"))
    log(f"nested tier done in {time.monotonic() - t0:.0f} s")
    return st


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("l1")
    r = sub.add_parser("run")
    r.add_argument("--timeout", type=float, default=600)
    r.add_argument("--mem", type=int, default=3072, help="L1 memory in MiB")
    r.add_argument("--file", action="append", default=[])
    r.add_argument("command", nargs=argparse.REMAINDER)
    t = sub.add_parser("tests")
    t.add_argument("--extra", action="append", default=[])
    t.add_argument("--timeout", type=float, default=900)
    t.add_argument("exes", nargs="+")
    b = sub.add_parser("boots")
    b.add_argument("--vmm", required=True)
    b.add_argument("--initramfs", required=True)
    b.add_argument("--vcpus", default="4,16")
    b.add_argument("--hyperv", help="reference-vmm --hyperv mode (default: none given)")
    sub.add_parser("stock-root")
    d = sub.add_parser("debian")
    d.add_argument("--vmm", required=True)
    d.add_argument("--disk", default=os.path.join(REPO, "target", "debian", "debian.img"))
    d.add_argument("--vcpus", type=int, default=4)
    sub.add_parser("suite")
    a = ap.parse_args()
    try:
        if a.cmd == "l1":
            print(build_l1())
            return 0
        if a.cmd == "run":
            cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
            if not cmd:
                ap.error("run needs a command after --")
            # The command and every argument naming an existing file come along.
            files = a.file + [c for c in cmd if os.path.isfile(c)]
            o = run(cmd, files, a.timeout, a.mem)
            log(f"L1 ready after {o.ready:.1f} s; payload status {o.status}")
            return o.status
        if a.cmd == "tests":
            return tests(a.exes, a.extra, a.timeout)
        if a.cmd == "suite":
            return suite()
        if a.cmd == "stock-root":
            print(stock_kernel())
            print(stock_root_initramfs())
            return 0
        if a.cmd == "debian":
            return debian_boot(os.path.abspath(a.vmm), a.disk, a.vcpus)
        if a.cmd == "boots":
            return boots(os.path.abspath(a.vmm), os.path.abspath(a.initramfs),
                         [int(v) for v in a.vcpus.split(",")],
                         ("--hyperv", a.hyperv) if a.hyperv else ())
    except L1Failure as e:
        print(f"nested: L1 failure: {e}", file=sys.stderr)
        return INFRA
    return 2


if __name__ == "__main__":
    sys.exit(main())
