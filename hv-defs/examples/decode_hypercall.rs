//! Decodes a hypercall the way a hypervisor sees it: the control word from RCX and
//! the input page at the GPA in RDX. The page here is the one Linux 6.12 builds for
//! HvCallStartVirtualProcessor when it starts AP 1 at VTL 2.
//!
//! Run with `cargo run -p hv-defs --example decode_hypercall`.

use hv_defs::*;

fn main() {
    let rcx = 0x0099u64; // HvCallStartVirtualProcessor, simple, slow
    let rdx = 0x0007_9000u64; // input GPA
    let mut page = [0u8; 4096];
    page[0..8].copy_from_slice(&PartitionId::SELF.0.to_le_bytes());
    page[8..12].copy_from_slice(&1u32.to_le_bytes());
    page[12] = 2;
    page[16..24].copy_from_slice(&0xFFFF_FFFF_8101_2A2Du64.to_le_bytes()); // rip
    page[24..32].copy_from_slice(&0xFFFF_8880_0019_BF58u64.to_le_bytes()); // rsp
    page[32..40].copy_from_slice(&2u64.to_le_bytes()); // rflags

    let control = HypercallControl(rcx);
    println!("control word {rcx:#018x}: {control:?}");
    let status = match control.check() {
        Err(e) => e.status(),
        Ok(kind) => {
            println!("call kind: {kind:?}");
            match StartVirtualProcessorInput::read_from_guest(&page, rdx) {
                Ok(input) => {
                    println!("partition {:#x}", input.partition_id.0);
                    println!("vp index  {}", input.vp_index.0);
                    println!("vtl       {}", input.target_vtl.0);
                    println!("rip       {:#x}", input.vp_context.rip);
                    println!("rsp       {:#x}", input.vp_context.rsp);
                    HvStatus::SUCCESS
                }
                Err(e) => {
                    println!("input refused: {e}");
                    HvError::from(e).status()
                }
            }
        }
    };
    let rax = HypercallResult::new(status, 0);
    println!("result RAX {:#018x} ({:?})", rax.0, rax.status());

    // The same page at a misaligned GPA is the guest's error.
    let e = StartVirtualProcessorInput::read_from_guest(&page, rdx + 4).unwrap_err();
    println!("at GPA {:#x}: {e} -> {}", rdx + 4, HvError::from(e));
}
