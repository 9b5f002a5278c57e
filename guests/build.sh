#!/usr/bin/env bash
# Builds the test guests from Debian packages, cached by content hash outside the
# work tree:
#   kernels:    linux-source-6.12 + tinyconfig + config/<name>.fragment(s)
#   initramfs:  busybox.cpio (busybox-static /init that prints a marker, nproc and
#               the online CPUs, then powers off) and probe.cpio (an /init whose first
#               instruction is ud2, for hosts whose user space cannot make syscalls)
#   disks:      busybox-root.img and probe-root.img, ext4 root disks with the same
#               two kinds of init (guests/disks.py), built with every run
#   debian:     target/debian/debian.img, Debian 12 from debootstrap (only when
#               named: about a minute and the network), with Debian's cloud
#               kernel (target/debian/vmlinuz) and an initramfs that mounts
#               /dev/vda with it (target/debian/initrd.cpio)
# Results are linked under target/guests/.
# Usage: guests/build.sh [minimal] [vtl2] [debian]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cache=${HVKVM_GUEST_CACHE:-/var/cache/hvkvm-guests}
out=$repo/target/guests
mkdir -p "$cache/dl" "$out"
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(minimal vtl2)

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
need=()
for p in flex bison bc libelf-dev gcc make xz-utils python3 e2fsprogs debootstrap; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "guests: apt-get install ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

fetch() { # package -> path of its .deb in the cache
  local deb
  deb=$(ls "$cache"/dl/"$1"_*.deb 2>/dev/null | head -n1 || true)
  if [ -z "$deb" ]; then
    (cd "$cache/dl" && apt-get download "$1" >/dev/null 2>&1) || {
      $SUDO apt-get update -qq && (cd "$cache/dl" && apt-get download "$1" >/dev/null)
    }
    deb=$(ls "$cache"/dl/"$1"_*.deb | head -n1)
  fi
  echo "$deb"
}

src_deb=$(fetch linux-source-6.12)
src_ver=$(dpkg-deb -f "$src_deb" Version)
src=$cache/linux-source-$src_ver
if [ ! -f "$src/.extracted" ]; then
  echo "guests: extracting linux-source $src_ver" >&2
  rm -rf "$src" "$cache/x"
  mkdir -p "$cache/x" "$src"
  dpkg -x "$src_deb" "$cache/x"
  tar -xf "$cache"/x/usr/src/linux-source-6.12.tar.xz -C "$src" --strip-components=1
  rm -rf "$cache/x"
  touch "$src/.extracted"
fi

build_kernel() { # name
  local name=$1 frags=("$here/config/minimal.fragment")
  [ "$name" = minimal ] || frags+=("$here/config/$name.fragment")
  local key
  key=$( (echo "$src_ver"; cat "${frags[@]}"; sed -n '/^build_kernel()/,/^}/p' "$0") | sha256sum | cut -c1-16)
  local dir=$cache/kernel-$name-$key
  if [ ! -f "$dir/vmlinux" ]; then
    echo "guests: building kernel '$name' ($src_ver, key $key); about 4-7 minutes" >&2
    rm -rf "$dir"
    mkdir -p "$dir/build"
    make -s -C "$src" O="$dir/build" ARCH=x86_64 tinyconfig >/dev/null
    "$src"/scripts/kconfig/merge_config.sh -m -O "$dir/build" "$dir/build/.config" "${frags[@]}" >/dev/null
    make -s -C "$src" O="$dir/build" ARCH=x86_64 olddefconfig >/dev/null
    for f in "${frags[@]}"; do
      while IFS= read -r line; do
        case "$line" in CONFIG_*=*) grep -qx "$line" "$dir/build/.config" || {
          echo "guests: $line did not survive olddefconfig" >&2; exit 1; } ;; esac
      done <"$f"
    done
    local t0=$SECONDS
    make -s -C "$src" O="$dir/build" ARCH=x86_64 -j"$(nproc)" bzImage >/dev/null
    echo "guests: kernel '$name' built in $((SECONDS - t0)) s" >&2
    cp "$dir/build/vmlinux" "$dir/vmlinux"
    cp "$dir/build/arch/x86/boot/bzImage" "$dir/bzImage"
    cp "$dir/build/.config" "$dir/config"
    rm -rf "$dir/build"
  fi
  mkdir -p "$out/$name"
  ln -sf "$dir/vmlinux" "$out/$name/vmlinux"
  ln -sf "$dir/bzImage" "$out/$name/bzImage"
  ln -sf "$dir/config" "$out/$name/config"
}

build_initramfs() {
  local bb_deb key dir
  bb_deb=$(fetch busybox-static)
  key=$( (basename "$bb_deb"; cat "$here/initramfs.py") | sha256sum | cut -c1-16)
  dir=$cache/initramfs-$key
  if [ ! -f "$dir/busybox.cpio" ]; then
    rm -rf "$dir"
    mkdir -p "$dir/x"
    dpkg -x "$bb_deb" "$dir/x"
    python3 "$here/initramfs.py" "$dir/x/bin/busybox" "$dir"
    rm -rf "$dir/x"
  fi
  ln -sf "$dir/busybox.cpio" "$out/busybox.cpio"
  ln -sf "$dir/probe.cpio" "$out/probe.cpio"
  key=$( (basename "$bb_deb"; cat "$here/initramfs.py" "$here/disks.py"; mkfs.ext4 -V 2>&1 | head -n1) | sha256sum | cut -c1-16)
  dir=$cache/disks-$key
  if [ ! -f "$dir/probe-root.img" ]; then
    rm -rf "$dir"
    mkdir -p "$dir/x"
    dpkg -x "$bb_deb" "$dir/x"
    python3 "$here/disks.py" busybox "$dir/x/bin/busybox" "$dir"
    rm -rf "$dir/x"
  fi
  # Tests write to their own copies; these stay as built.
  ln -sf "$dir/busybox-root.img" "$out/busybox-root.img"
  ln -sf "$dir/probe-root.img" "$out/probe-root.img"
}

build_debian() {
  local key dir t0=$SECONDS
  key=$( (cat "$here/disks.py"; echo bookworm) | sha256sum | cut -c1-16)
  dir=$cache/debian-$key
  if [ ! -f "$dir/debian.img" ]; then
    echo "guests: debootstrap of Debian 12 into debian.img (key $key)" >&2
    rm -rf "$dir"
    mkdir -p "$dir"
    python3 "$here/disks.py" debian "$dir" >"$dir/debootstrap.log" 2>&1 || {
      tail -n 30 "$dir/debootstrap.log" >&2; echo "guests: debootstrap failed" >&2; exit 1; }
    echo "guests: debian.img built in $((SECONDS - t0)) s" >&2
  fi
  # Not under target/guests, whose files every nested reference-vmm test takes.
  mkdir -p "$repo/target/debian"
  ln -sf "$dir/debian.img" "$repo/target/debian/debian.img"
  # Debian's own cloud kernel, and an initramfs that loads its virtio modules and
  # mounts /dev/vda (the nested tier's L1 kernel, cached there).
  local stock
  mapfile -t stock < <(python3 "$repo/scripts/nested.py" stock-root)
  ln -sf "${stock[0]}" "$repo/target/debian/vmlinuz"
  ln -sf "${stock[1]}" "$repo/target/debian/initrd.cpio"
}

build_initramfs
for n in "${names[@]}"; do
  if [ "$n" = debian ]; then build_debian; else build_kernel "$n"; fi
done
ls -l "$out" "$out"/*/ >&2
