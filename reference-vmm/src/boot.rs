//! Loading Linux and the state the boot processor and woken APs start in.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use hv_defs::{
    HvRegisterValue, InitialVpContext, SegmentAttributes, SegmentRegister, TableRegister,
};
use hv_regs::HvRegisterName as N;
use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::*;
use crate::VmmError;

/// What was loaded.
pub struct Loaded {
    /// The 64-bit entry point.
    pub entry: u64,
    /// The first byte after the kernel image.
    pub kernel_end: u64,
}

/// Which image format a kernel file has.
#[derive(Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF vmlinux (including a PVH ELF).
    Elf,
    /// A bzImage.
    BzImage,
}

/// Identifies a kernel image by its magic numbers.
pub fn kernel_format(path: &Path) -> Result<KernelFormat, VmmError> {
    let mut f = File::open(path).map_err(|e| VmmError::Kernel(path.into(), e.to_string()))?;
    let mut head = [0u8; 0x210];
    let n =
        read_up_to(&mut f, &mut head).map_err(|e| VmmError::Kernel(path.into(), e.to_string()))?;
    if n >= 4 && &head[..4] == b"\x7fELF" {
        Ok(KernelFormat::Elf)
    } else if n >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        Ok(KernelFormat::BzImage)
    } else {
        Err(VmmError::Kernel(
            path.into(),
            "not a Linux kernel (neither an ELF vmlinux nor a bzImage)".into(),
        ))
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Loads the kernel; returns the entry point and, for a bzImage, its setup header.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
) -> Result<
    (
        Loaded,
        Option<linux_loader::loader::bootparam::setup_header>,
    ),
    VmmError,
> {
    let format = kernel_format(path)?;
    let mut f = File::open(path).map_err(|e| VmmError::Kernel(path.into(), e.to_string()))?;
    let bad = |e: linux_loader::loader::Error| VmmError::Kernel(path.into(), e.to_string());
    match format {
        KernelFormat::Elf => {
            let r = Elf::load(mem, None, &mut f, Some(GuestAddress(HIGH_RAM))).map_err(bad)?;
            Ok((
                Loaded {
                    entry: r.kernel_load.0,
                    kernel_end: r.kernel_end,
                },
                None,
            ))
        }
        KernelFormat::BzImage => {
            f.seek(SeekFrom::Start(0))
                .map_err(|e| VmmError::Kernel(path.into(), e.to_string()))?;
            let r = BzImage::load(mem, None, &mut f, Some(GuestAddress(HIGH_RAM))).map_err(bad)?;
            // The 64-bit entry point is 0x200 into the protected-mode kernel.
            Ok((
                Loaded {
                    entry: r.kernel_load.0 + 0x200,
                    kernel_end: r.kernel_end,
                },
                r.setup_header,
            ))
        }
    }
}

/// Writes the identity map (0-4 GiB, 2 MiB pages, read/write) and the GDT into the
/// reserved area.
pub fn write_page_tables_and_gdt(mem: &GuestMemoryMmap) -> Result<(), VmmError> {
    let w = |v: u64, at: u64| {
        mem.write_obj(v, GuestAddress(at))
            .map_err(|e| VmmError::Memory(e.to_string()))
    };
    w(PDPT | 3, PML4)?;
    for i in 0..4u64 {
        w((PD + 0x1000 * i) | 3, PDPT + 8 * i)?;
    }
    for i in 0..2048u64 {
        w((i << 21) | 0x83, PD + 8 * i)?;
    }
    // null, unused, 0x10: 64-bit code, 0x18: data.
    for (i, d) in [0u64, 0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF]
        .into_iter()
        .enumerate()
    {
        w(d, GDT + 8 * i as u64)?;
    }
    Ok(())
}

fn seg(selector: u16, attr: u16, limit: u32) -> SegmentRegister {
    SegmentRegister {
        base: 0,
        limit,
        selector,
        attributes: SegmentAttributes(attr),
    }
}

/// The 64-bit state both the BSP and mailbox-woken APs start in: flat segments,
/// the VMM's identity map, EFER.NXE set (Linux 6.12's trampoline needs it), IF=0.
pub fn context64(rip: u64, rsp: u64) -> InitialVpContext {
    let data = seg(0x18, 0xC093, 0xFFFF_FFFF);
    InitialVpContext {
        rip,
        rsp,
        rflags: 2,
        cs: seg(0x10, 0xA09B, 0xFFFF_FFFF),
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: seg(0, 0x008B, 0x67),
        ldtr: seg(0, 0, 0),
        idtr: TableRegister {
            pad: [0; 3],
            limit: 0,
            base: 0,
        },
        gdtr: TableRegister {
            pad: [0; 3],
            limit: 0x1F,
            base: GDT,
        },
        efer: 0xD00,
        cr0: 0x8005_0033,
        cr3: PML4,
        cr4: 0x20,
        msr_cr_pat: 0x0007_0406_0007_0406,
    }
}

/// The BSP's registers, by HV name, for the 64-bit boot protocol: RIP at the
/// kernel's 64-bit entry and RSI at the zero page.
pub fn bsp_registers(entry: u64) -> Vec<(N, HvRegisterValue)> {
    let mut regs = hv_regs::context_registers(&context64(entry, BOOT_STACK));
    regs.push((N::RSI, ZERO_PAGE.into()));
    regs
}

/// Writes the command line and the zero page.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    memory_size: u64,
    cmdline: &str,
    setup_header: Option<linux_loader::loader::bootparam::setup_header>,
    initrd: Option<(u64, u64)>,
    rsdp: u64,
) -> Result<(), VmmError> {
    let mut cl = Cmdline::new(CMDLINE_MAX).map_err(|e| VmmError::Cmdline(e.to_string()))?;
    cl.insert_str(cmdline)
        .map_err(|e| VmmError::Cmdline(e.to_string()))?;
    load_cmdline(mem, GuestAddress(CMDLINE), &cl).map_err(|e| VmmError::Cmdline(e.to_string()))?;
    let mut p = boot_params::default();
    if let Some(h) = setup_header {
        p.hdr = h;
    }
    p.hdr.type_of_loader = 0xFF;
    p.hdr.boot_flag = 0xAA55;
    p.hdr.header = 0x5372_6448; // "HdrS"
    p.hdr.kernel_alignment = 0x0100_0000;
    p.hdr.cmd_line_ptr = CMDLINE as u32;
    p.hdr.cmdline_size = cmdline.len() as u32 + 1;
    if let Some((addr, size)) = initrd {
        p.hdr.ramdisk_image = addr as u32;
        p.hdr.ramdisk_size = size as u32;
    }
    p.acpi_rsdp_addr = rsdp;
    let map = e820(memory_size);
    for (i, &(addr, size, kind)) in map.iter().enumerate() {
        p.e820_table[i] = boot_e820_entry {
            addr,
            size,
            r#type: kind,
        };
    }
    p.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&p, GuestAddress(ZERO_PAGE)),
        mem,
    )
    .map_err(|e| VmmError::Memory(e.to_string()))
}

/// Places the initramfs at the top of RAM below 4 GiB (and below the kernel's
/// limit), page aligned, above the kernel; returns (address, size).
pub fn load_initramfs(
    mem: &GuestMemoryMmap,
    path: &Path,
    memory_size: u64,
    kernel_end: u64,
    initrd_addr_max: u64,
) -> Result<(u64, u64), VmmError> {
    let data = std::fs::read(path).map_err(|e| VmmError::Initramfs(path.into(), e.to_string()))?;
    let size = data.len() as u64;
    let top = low_ram_top(memory_size).min(initrd_addr_max.saturating_add(1));
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xFFF)
        .filter(|&a| a >= kernel_end);
    let Some(addr) = addr else {
        return Err(VmmError::TooSmall {
            memory: memory_size,
            needed: kernel_end + size + (16 << 20),
        });
    };
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(|e| VmmError::Memory(e.to_string()))?;
    Ok((addr, size))
}
