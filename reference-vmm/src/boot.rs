//! Loading Linux and the state the boot processor and woken APs start in.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use hv_defs::{HvRegisterValue, InitialVpContext};
use hv_regs::HvRegisterName as N;
use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::image;
use crate::layout::*;
use crate::VmmError;

/// What was loaded.
pub struct Loaded {
    /// The 64-bit entry point.
    pub entry: u64,
}

/// A kernel file, opened and validated ([`crate::image`]) before anything is loaded.
pub struct Kernel {
    file: File,
    /// What its headers say.
    pub image: KernelImage,
}

/// The validated headers of a kernel.
#[derive(Debug)]
pub enum KernelImage {
    /// An ELF vmlinux (including a PVH ELF).
    Elf(image::ElfImage),
    /// A bzImage.
    BzImage(image::BzImage),
}

impl Kernel {
    /// The longest command line the kernel takes (without its NUL).
    pub fn cmdline_max(&self) -> usize {
        match &self.image {
            KernelImage::Elf(_) => CMDLINE_MAX - 1,
            KernelImage::BzImage(b) => b.cmdline_max.min(CMDLINE_MAX - 1),
        }
    }

    /// The first byte above the memory the kernel occupies once running.
    pub fn needs_up_to(&self) -> u64 {
        match &self.image {
            KernelImage::Elf(e) => e.end,
            KernelImage::BzImage(b) => b.needs_up_to,
        }
    }

    /// The highest byte the initramfs may occupy.
    pub fn initrd_addr_max(&self) -> u64 {
        match &self.image {
            KernelImage::Elf(_) => 0x7FFF_FFFF,
            KernelImage::BzImage(b) => b.initrd_addr_max,
        }
    }
}

/// Opens and validates the kernel at `path` for a guest whose RAM below 4 GiB
/// ends at `ram_top`: a regular file, an ELF vmlinux or a bzImage whose headers
/// pass [`image::check_elf`] or [`image::check_bzimage`].
pub fn open_kernel(path: &Path, ram_top: u64) -> Result<Kernel, VmmError> {
    let err = |e: String| VmmError::Kernel(path.into(), e);
    let (mut file, len) = image::open_regular(path).map_err(err)?;
    let mut head = vec![0u8; len.min(HEAD_BYTES) as usize];
    file.read_exact(&mut head).map_err(|e| err(e.to_string()))?;
    let image = if head.starts_with(b"\x7fELF") {
        KernelImage::Elf(image::check_elf(&head, len, ram_top).map_err(err)?)
    } else if head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        KernelImage::BzImage(image::check_bzimage(&head, len, ram_top).map_err(err)?)
    } else {
        return Err(err(
            "not a Linux kernel (neither an ELF vmlinux nor a bzImage)".into(),
        ));
    };
    Ok(Kernel { file, image })
}

/// How much of a kernel file is read for its headers: the bzImage setup header,
/// or an ELF header with its program headers.
const HEAD_BYTES: u64 = 64 << 10;

/// Loads the validated kernel; returns the entry point and, for a bzImage, its
/// setup header.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &mut Kernel,
) -> Result<
    (
        Loaded,
        Option<linux_loader::loader::bootparam::setup_header>,
    ),
    VmmError,
> {
    let bad = |e: linux_loader::loader::Error| VmmError::Kernel(path.into(), e.to_string());
    let f = &mut kernel.file;
    f.seek(SeekFrom::Start(0))
        .map_err(|e| VmmError::Kernel(path.into(), e.to_string()))?;
    match &kernel.image {
        KernelImage::Elf(_) => {
            let r = Elf::load(mem, None, f, Some(GuestAddress(HIGH_RAM))).map_err(bad)?;
            Ok((
                Loaded {
                    entry: r.kernel_load.0,
                },
                None,
            ))
        }
        KernelImage::BzImage(b) => {
            let r = BzImage::load(mem, None, f, Some(GuestAddress(HIGH_RAM))).map_err(bad)?;
            // The 64-bit entry point is 0x200 into the protected-mode kernel.
            debug_assert_eq!(r.kernel_load.0, b.load);
            Ok((
                Loaded {
                    entry: r.kernel_load.0 + 0x200,
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

/// The 64-bit state both the BSP and mailbox-woken APs start in: flat segments,
/// the VMM's identity map, EFER.NXE set (Linux 6.12's trampoline needs it), IF=0.
pub fn context64(rip: u64, rsp: u64) -> InitialVpContext {
    InitialVpContext::long_mode(rip, rsp, PML4).with_gdt(GDT, 0x1F)
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
    if p.hdr.cmdline_size == 0 {
        // An ELF kernel brings no setup header; a bzImage's own value is kept.
        p.hdr.cmdline_size = cmdline.len() as u32 + 1;
    }
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

/// An initramfs opened for loading: a regular file, its size known from its
/// metadata before a byte is read.
pub struct Initramfs {
    file: File,
    /// Its size in bytes.
    pub size: u64,
}

/// Opens the initramfs at `path`.
pub fn open_initramfs(path: &Path) -> Result<Initramfs, VmmError> {
    let (file, size) =
        image::open_regular(path).map_err(|e| VmmError::Initramfs(path.into(), e))?;
    if size == 0 {
        return Err(VmmError::Initramfs(path.into(), "is empty".into()));
    }
    Ok(Initramfs { file, size })
}

/// Where the initramfs goes: the top of RAM below 4 GiB and below the kernel's
/// `initrd_addr_max`, page aligned, above everything the kernel occupies
/// (`kernel_end`). Checked before anything is loaded.
pub fn place_initramfs(
    path: &Path,
    size: u64,
    ram_top: u64,
    kernel_end: u64,
    initrd_addr_max: u64,
) -> Result<u64, VmmError> {
    let limit = ram_top.min(initrd_addr_max.saturating_add(1));
    match limit.checked_sub(size).map(|a| a & !0xFFF) {
        Some(addr) if addr >= kernel_end => Ok(addr),
        _ if limit < ram_top => Err(VmmError::Initramfs(
            path.into(),
            format!(
                "is {}; this kernel takes an initramfs only below {:#x} (initrd_addr_max), \
                 and the kernel itself needs the RAM up to {:#x}",
                crate::diag::size(size),
                limit,
                kernel_end
            ),
        )),
        _ => Err(VmmError::TooSmall {
            memory: ram_top,
            needed: kernel_end.saturating_add(size).saturating_add(0xFFF) & !0xFFF,
            what: format!("the kernel and the {} initramfs", crate::diag::size(size)),
        }),
    }
}

/// Streams the initramfs into guest memory at `addr` (from [`place_initramfs`]);
/// returns (address, size).
pub fn load_initramfs(
    mem: &GuestMemoryMmap,
    path: &Path,
    initramfs: &mut Initramfs,
    addr: u64,
) -> Result<(u64, u64), VmmError> {
    let size = initramfs.size;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut initramfs.file, size as usize)
        .map_err(|e| VmmError::Initramfs(path.into(), format!("reading it: {e}")))?;
    Ok((addr, size))
}
