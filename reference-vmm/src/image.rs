//! Validation of the kernel and initramfs files before anything is loaded: every
//! field the VMM relies on is read and checked, with checked arithmetic, against
//! the file's length and the guest's RAM. Each refusal is a sentence that names
//! what the file says and what the guest has.
//!
//! References: Linux `Documentation/arch/x86/boot.rst` (the bzImage setup header
//! and the 64-bit boot protocol) and the ELF-64 object file format.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::diag::size;
use crate::layout::HIGH_RAM;

/// Offsets in a bzImage's first sectors (boot.rst, "The real-mode kernel header").
mod hdr {
    pub const SETUP_SECTS: usize = 0x1F1;
    pub const SYSSIZE: usize = 0x1F4;
    pub const BOOT_FLAG: usize = 0x1FE;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const LOADFLAGS: usize = 0x211;
    pub const CODE32_START: usize = 0x214;
    pub const INITRD_ADDR_MAX: usize = 0x22C;
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    pub const RELOCATABLE: usize = 0x234;
    pub const XLOADFLAGS: usize = 0x236;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const PREF_ADDRESS: usize = 0x258;
    pub const INIT_SIZE: usize = 0x260;
    /// Bytes needed to read every field above.
    pub const END: usize = 0x264;
}

/// The oldest boot protocol with a 64-bit entry point (xloadflags, 2.12).
const MIN_PROTOCOL: u16 = 0x020C;
/// xloadflags: the kernel has the 64-bit entry at 0x200 (XLF_KERNEL_64).
const XLF_KERNEL_64: u16 = 1;
/// loadflags: the protected-mode kernel is loaded at 1 MiB (LOADED_HIGH).
const LOADED_HIGH: u8 = 1;

/// What the VMM takes from a valid bzImage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BzImage {
    /// Boot protocol version (0x020F is 2.15).
    pub protocol: u16,
    /// Where the protected-mode kernel is loaded.
    pub load: u64,
    /// The first byte after the memory the kernel decompresses into and runs
    /// from (its alignment and `init_size` taken into account).
    pub needs_up_to: u64,
    /// The longest command line the kernel takes, without its NUL (cmdline_size).
    pub cmdline_max: usize,
    /// The highest address the initramfs may end at (inclusive).
    pub initrd_addr_max: u64,
}

/// What the VMM takes from a valid ELF kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfImage {
    /// The entry point (a physical address inside a loaded segment).
    pub entry: u64,
    /// The first byte after the highest loaded segment.
    pub end: u64,
}

fn u8_at(b: &[u8], o: usize) -> u8 {
    b[o]
}
fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    (u32_at(b, o) as u64) | ((u32_at(b, o + 4) as u64) << 32)
}

fn align_up(v: u64, align: u64) -> Option<u64> {
    v.checked_add(align - 1).map(|x| x & !(align - 1))
}

/// Checks a bzImage's setup header (`head`: at least the first [`hdr::END`]
/// bytes of the file) against the file's length and the RAM below 4 GiB
/// (`ram_top`).
pub fn check_bzimage(head: &[u8], file_len: u64, ram_top: u64) -> Result<BzImage, String> {
    if head.len() < hdr::END || file_len < hdr::END as u64 {
        return Err(format!(
            "truncated: {file_len} bytes is shorter than a bzImage setup header"
        ));
    }
    if &head[hdr::HEADER..hdr::HEADER + 4] != b"HdrS" || u16_at(head, hdr::BOOT_FLAG) != 0xAA55 {
        return Err("not a bzImage (no HdrS header or boot flag)".into());
    }
    let protocol = u16_at(head, hdr::VERSION);
    if protocol < MIN_PROTOCOL {
        return Err(format!(
            "boot protocol {}.{:02} is older than 2.12, the first with a 64-bit entry point",
            protocol >> 8,
            protocol & 0xFF
        ));
    }
    if u16_at(head, hdr::XLOADFLAGS) & XLF_KERNEL_64 == 0 {
        return Err("has no 64-bit entry point (xloadflags bit 0 is clear)".into());
    }
    if u8_at(head, hdr::LOADFLAGS) & LOADED_HIGH == 0 {
        return Err("is not loaded high (loadflags bit 0 is clear)".into());
    }
    let sects = match u8_at(head, hdr::SETUP_SECTS) {
        0 => 4,
        n => n as u64,
    };
    let setup = (sects + 1) * 512;
    let payload = u32_at(head, hdr::SYSSIZE) as u64 * 16;
    if payload == 0 {
        return Err("syssize is 0: the header names no protected-mode kernel".into());
    }
    let needed = setup + payload;
    if file_len < needed {
        return Err(format!(
            "truncated: the setup header ({sects} setup sectors, syssize {}) describes {needed} \
             bytes, the file has {file_len}",
            payload / 16
        ));
    }
    let load = u32_at(head, hdr::CODE32_START) as u64;
    if load < HIGH_RAM {
        return Err(format!(
            "code32_start {load:#x} is below 1 MiB, inside the VMM's boot data"
        ));
    }
    let align = u32_at(head, hdr::KERNEL_ALIGNMENT) as u64;
    if align == 0 || !align.is_power_of_two() {
        return Err(format!("kernel_alignment {align:#x} is not a power of two"));
    }
    let pref = u64_at(head, hdr::PREF_ADDRESS);
    let init_size = u32_at(head, hdr::INIT_SIZE) as u64;
    // The decompressor runs at the load address rounded up to the alignment (no
    // lower than pref_address), or at pref_address if not relocatable, and uses
    // init_size bytes from there.
    let run_at = if u8_at(head, hdr::RELOCATABLE) != 0 {
        align_up(load, align).map(|a| a.max(pref))
    } else {
        Some(pref.max(load))
    };
    // load < 4 GiB and payload < 64 GiB: their sum cannot overflow.
    let needs_up_to = run_at
        .and_then(|a| a.checked_add(init_size))
        .map(|e| e.max(load + payload))
        .ok_or_else(|| "init_size and alignment overflow the address space".to_string())?;
    if needs_up_to > ram_top {
        return Err(format!(
            "needs {} of RAM below 4 GiB (it runs at {:#x} and uses init_size {} there); \
             the guest has {}",
            size(needs_up_to),
            run_at.unwrap_or(0),
            size(init_size),
            size(ram_top)
        ));
    }
    Ok(BzImage {
        protocol,
        load,
        needs_up_to,
        cmdline_max: u32_at(head, hdr::CMDLINE_SIZE) as usize,
        initrd_addr_max: u32_at(head, hdr::INITRD_ADDR_MAX) as u64,
    })
}

/// ELF-64 header and program header fields (System V gABI).
mod elf {
    pub const CLASS: usize = 4;
    pub const DATA: usize = 5;
    pub const MACHINE: usize = 18;
    pub const ENTRY: usize = 24;
    pub const PHOFF: usize = 32;
    pub const PHENTSIZE: usize = 54;
    pub const PHNUM: usize = 56;
    pub const HEADER_LEN: usize = 64;
    pub const PHDR_LEN: usize = 56;
    pub const PT_LOAD: u32 = 1;
    pub const EM_X86_64: u16 = 62;
}

/// Checks an ELF kernel (`file`: the whole file, or at least its headers and
/// program headers) against the guest's RAM: 64-bit little-endian x86-64, at
/// least one PT_LOAD segment, every segment inside the file, inside RAM below
/// `ram_top` and clear of the VMM's boot data below 1 MiB, and the entry point
/// inside a loaded segment.
pub fn check_elf(file: &[u8], file_len: u64, ram_top: u64) -> Result<ElfImage, String> {
    if file.len() < elf::HEADER_LEN {
        return Err(format!(
            "truncated: {file_len} bytes is shorter than an ELF header"
        ));
    }
    match file[elf::CLASS] {
        2 => {}
        1 => return Err("is a 32-bit ELF (ELFCLASS32); only 64-bit kernels boot".into()),
        c => return Err(format!("has an unknown ELF class {c}")),
    }
    if file[elf::DATA] != 1 {
        return Err("is not a little-endian ELF".into());
    }
    let machine = u16_at(file, elf::MACHINE);
    if machine != elf::EM_X86_64 {
        return Err(format!("is an ELF for machine {machine}, not x86-64 (62)"));
    }
    let entry = u64_at(file, elf::ENTRY);
    let phoff = u64_at(file, elf::PHOFF);
    let phentsize = u16_at(file, elf::PHENTSIZE) as u64;
    let phnum = u16_at(file, elf::PHNUM) as u64;
    if phnum == 0 {
        return Err("has no program headers, so nothing to load".into());
    }
    if phentsize != elf::PHDR_LEN as u64 {
        return Err(format!("program headers are {phentsize} bytes, not 56"));
    }
    phnum
        .checked_mul(phentsize)
        .and_then(|n| n.checked_add(phoff))
        .filter(|&e| e <= file.len() as u64)
        .ok_or_else(|| {
            format!("truncated: its program headers end past the file's {file_len} bytes")
        })?;
    let mut loads = 0;
    let mut end = 0u64;
    let mut entry_loaded = false;
    for i in 0..phnum {
        let p = (phoff + i * phentsize) as usize;
        if u32_at(file, p) != elf::PT_LOAD {
            continue;
        }
        loads += 1;
        let offset = u64_at(file, p + 8);
        let paddr = u64_at(file, p + 24);
        let filesz = u64_at(file, p + 32);
        let memsz = u64_at(file, p + 40);
        if offset.checked_add(filesz).is_none_or(|e| e > file_len) {
            return Err(format!(
                "truncated: segment {i} ({filesz} bytes at offset {offset:#x}) ends past the \
                 file's {file_len} bytes"
            ));
        }
        if filesz > memsz {
            return Err(format!("segment {i} has more file bytes than memory bytes"));
        }
        let seg_end = paddr.checked_add(memsz).ok_or_else(|| {
            format!("segment {i} at {paddr:#x} with {memsz} bytes overflows the address space")
        })?;
        if paddr < HIGH_RAM {
            return Err(format!(
                "segment {i} at {paddr:#x} is below 1 MiB, where the VMM keeps the zero page, \
                 page tables and ACPI tables"
            ));
        }
        if seg_end > ram_top {
            return Err(format!(
                "segment {i} ends at {seg_end:#x}, beyond the guest's {} of RAM below 4 GiB",
                size(ram_top)
            ));
        }
        if (paddr..seg_end).contains(&entry) {
            entry_loaded = true;
        }
        end = end.max(seg_end);
    }
    if loads == 0 {
        return Err("has no PT_LOAD segment, so nothing to load".into());
    }
    if !entry_loaded {
        return Err(format!(
            "its entry point {entry:#x} is outside every loaded segment"
        ));
    }
    Ok(ElfImage { entry, end })
}

/// Opens `path` for reading if it is a regular file: a FIFO, a device or a
/// directory is refused without blocking.
pub fn open_regular(path: &Path) -> Result<(File, u64), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    Ok((f, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid bzImage header: protocol 2.15, 64-bit, loaded high,
    /// relocatable, 2 MiB alignment, 16 MiB preferred, init_size 20 MiB.
    fn bz() -> Vec<u8> {
        let mut h = vec![0u8; 0x1000];
        h[hdr::SETUP_SECTS] = 1;
        h[hdr::SYSSIZE..hdr::SYSSIZE + 4].copy_from_slice(&(0x1000u32 / 16).to_le_bytes());
        h[hdr::BOOT_FLAG..hdr::BOOT_FLAG + 2].copy_from_slice(&0xAA55u16.to_le_bytes());
        h[hdr::HEADER..hdr::HEADER + 4].copy_from_slice(b"HdrS");
        h[hdr::VERSION..hdr::VERSION + 2].copy_from_slice(&0x020Fu16.to_le_bytes());
        h[hdr::LOADFLAGS] = 1;
        h[hdr::CODE32_START..hdr::CODE32_START + 4].copy_from_slice(&0x10_0000u32.to_le_bytes());
        h[hdr::INITRD_ADDR_MAX..hdr::INITRD_ADDR_MAX + 4]
            .copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
        h[hdr::KERNEL_ALIGNMENT..hdr::KERNEL_ALIGNMENT + 4]
            .copy_from_slice(&0x20_0000u32.to_le_bytes());
        h[hdr::RELOCATABLE] = 1;
        h[hdr::XLOADFLAGS..hdr::XLOADFLAGS + 2].copy_from_slice(&1u16.to_le_bytes());
        h[hdr::CMDLINE_SIZE..hdr::CMDLINE_SIZE + 4].copy_from_slice(&2047u32.to_le_bytes());
        h[hdr::PREF_ADDRESS..hdr::PREF_ADDRESS + 8].copy_from_slice(&0x100_0000u64.to_le_bytes());
        h[hdr::INIT_SIZE..hdr::INIT_SIZE + 4].copy_from_slice(&(20u32 << 20).to_le_bytes());
        h
    }

    #[test]
    fn a_valid_bzimage_and_what_it_needs() {
        let h = bz();
        let b = check_bzimage(&h, 0x1400, 512 << 20).unwrap();
        assert_eq!(b.load, 0x10_0000);
        assert_eq!(b.needs_up_to, (16 << 20) + (20 << 20));
        assert_eq!(b.cmdline_max, 2047);
        // 36 MiB needed: 32 MiB of RAM is too little.
        let e = check_bzimage(&h, 0x1400, 32 << 20).unwrap_err();
        assert!(
            e.contains("needs 36 MiB") && e.contains("the guest has 32 MiB"),
            "{e}"
        );
    }

    #[test]
    fn every_bad_bzimage_field_is_named() {
        let set = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut h = bz();
            f(&mut h);
            check_bzimage(&h, 0x1400, 512 << 20).unwrap_err()
        };
        assert!(set(&|h| h[hdr::VERSION] = 0x0B).contains("older than 2.12"));
        assert!(set(&|h| h[hdr::XLOADFLAGS] = 0).contains("64-bit entry"));
        assert!(set(&|h| h[hdr::LOADFLAGS] = 0).contains("loaded high"));
        assert!(set(&|h| h[hdr::SETUP_SECTS] = 255).contains("truncated"));
        assert!(set(&|h| h[hdr::SYSSIZE + 2] = 1).contains("truncated"));
        assert!(set(&|h| h[hdr::SYSSIZE..hdr::SYSSIZE + 4].fill(0)).contains("syssize is 0"));
        assert!(set(&|h| h[hdr::KERNEL_ALIGNMENT] = 3).contains("power of two"));
        assert!(set(&|h| h[hdr::INIT_SIZE + 3] = 0xFF).contains("needs"));
        assert!(set(&|h| h[hdr::CODE32_START + 2] = 0).contains("below 1 MiB"));
        assert!(set(&|h| h[hdr::HEADER] = b'X').contains("not a bzImage"));
        assert!(check_bzimage(&bz()[..0x200], 0x200, 512 << 20)
            .unwrap_err()
            .contains("truncated"));
        // setup_sects 0 means 4.
        let mut h = bz();
        h[hdr::SETUP_SECTS] = 0;
        assert!(check_bzimage(&h, 0x1A00, 512 << 20).is_ok());
        assert!(check_bzimage(&h, 0x19FF, 512 << 20).is_err());
    }

    fn elf(class: u8, machine: u16, entry: u64, segs: &[(u32, u64, u64, u64)]) -> Vec<u8> {
        let mut f = vec![0u8; 64 + 56 * segs.len()];
        f[..4].copy_from_slice(b"\x7fELF");
        f[elf::CLASS] = class;
        f[elf::DATA] = 1;
        f[elf::MACHINE..elf::MACHINE + 2].copy_from_slice(&machine.to_le_bytes());
        f[elf::ENTRY..elf::ENTRY + 8].copy_from_slice(&entry.to_le_bytes());
        f[elf::PHOFF..elf::PHOFF + 8].copy_from_slice(&64u64.to_le_bytes());
        f[elf::PHENTSIZE..elf::PHENTSIZE + 2].copy_from_slice(&56u16.to_le_bytes());
        f[elf::PHNUM..elf::PHNUM + 2].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        for (i, &(kind, paddr, filesz, memsz)) in segs.iter().enumerate() {
            let p = 64 + 56 * i;
            f[p..p + 4].copy_from_slice(&kind.to_le_bytes());
            f[p + 24..p + 32].copy_from_slice(&paddr.to_le_bytes());
            f[p + 32..p + 40].copy_from_slice(&filesz.to_le_bytes());
            f[p + 40..p + 48].copy_from_slice(&memsz.to_le_bytes());
        }
        f
    }

    #[test]
    fn elf_kernels_are_checked_segment_by_segment() {
        let ram = 512 << 20;
        let ok = elf(2, 62, 0x100_0000, &[(1, 0x100_0000, 0x10, 0x1000)]);
        let len = ok.len() as u64;
        assert_eq!(
            check_elf(&ok, len, ram),
            Ok(ElfImage {
                entry: 0x100_0000,
                end: 0x100_1000
            })
        );
        let cases: [(Vec<u8>, &str); 8] = [
            (elf(1, 62, 0, &[]), "32-bit"),
            (elf(2, 3, 0, &[(1, 0x100_0000, 0, 0)]), "not x86-64"),
            (elf(2, 62, 0, &[]), "no program headers"),
            (
                elf(2, 62, 0x100_0000, &[(4, 0x100_0000, 0, 16)]),
                "no PT_LOAD",
            ),
            (elf(2, 62, 0x8_0000, &[(1, 0x8_0000, 0, 16)]), "below 1 MiB"),
            (
                elf(2, 62, 0x100_0000, &[(1, u64::MAX - 8, 0, 16)]),
                "overflows",
            ),
            (
                elf(2, 62, 0x100_0000, &[(1, 0x100_0000, 0, 1 << 40)]),
                "beyond the guest",
            ),
            (
                elf(2, 62, 0x200_0000, &[(1, 0x100_0000, 0, 16)]),
                "outside every loaded",
            ),
        ];
        for (f, want) in cases {
            let e = check_elf(&f, f.len() as u64, ram).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
        let big = elf(2, 62, 0x100_0000, &[(1, 0x100_0000, 1 << 20, 1 << 20)]);
        assert!(check_elf(&big, big.len() as u64, ram)
            .unwrap_err()
            .contains("truncated"));
    }
}
