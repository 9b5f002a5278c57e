//! Puts a lower VTL's registers back to before the instruction a protection
//! refused, from what KVM reports (TLFS "Memory Access Protections": the
//! faulting instruction does not retire; the intercept names it).
//!
//! KVM reports an access to a GPA with no memslot, or a write to a
//! read-only one, as an MMIO exit of its instruction emulator. For a read
//! the instruction has not retired yet: RIP is at it. For a write it has:
//! KVM wrote the registers back (RIP past the instruction, RSP for a push,
//! RDI/RSI/RCX for a string store) and only the memory write is pending, so
//! the instruction has to be found and its register effects undone. The
//! instruction is the one that ends at RIP (a repeated string store that
//! has iterations left is at RIP itself), writes memory of at least the
//! exit's size, and whose address, from the registers put back, is the
//! one written. Decoding is iced-x86's.
//!
//! Undone: RIP; RSP of a push; RDI, RSI and RCX of `stos`/`movs` (repeated
//! or not); the register of an `xchg` with memory. Not undone (the
//! registers stay as the emulator left them, [`crate::choices`]): RFLAGS of
//! a read-modify-write, the other registers of `cmpxchg`, `xadd` and other
//! instructions that write both memory and registers, and a near call's
//! jump (such a write is not rewound at all).

// iced-x86's Register and Mnemonic have thousands of variants, of which a
// handful matter here; they are the decoder's, not guest-visible enums.
#![allow(clippy::wildcard_enum_match_arm)]

use iced_x86::{
    Decoder, DecoderOptions, Instruction, InstructionInfoFactory, Mnemonic, OpAccess, OpKind,
    Register,
};
use kvm_bindings::{kvm_regs, kvm_sregs};

/// The longest x86 instruction.
pub(crate) const MAX_LEN: usize = 15;

/// The code size of the vCPU's current mode: 64, 32 or 16.
pub(crate) fn bitness(sregs: &kvm_sregs) -> u32 {
    const EFER_LMA: u64 = 1 << 10;
    if sregs.efer & EFER_LMA != 0 && sregs.cs.l != 0 {
        64
    } else if sregs.cs.db != 0 {
        32
    } else {
        16
    }
}

/// The linear address of `rip` in the vCPU's current mode.
pub(crate) fn linear_ip(sregs: &kvm_sregs, rip: u64) -> u64 {
    if bitness(sregs) == 64 {
        rip
    } else {
        sregs.cs.base.wrapping_add(rip) & 0xFFFF_FFFF
    }
}

/// An instruction found for an intercept.
#[derive(Copy, Clone, Debug, PartialEq)]
pub(crate) struct Found {
    /// The registers as before the instruction.
    pub regs: kvm_regs,
    /// Its length.
    pub len: u8,
}

/// The instruction at the start of `code` (fetched at `ip`), if it decodes.
pub(crate) fn decode_at(code: &[u8], ip: u64, bitness: u32) -> Option<Instruction> {
    let mut d = Decoder::with_ip(bitness, code, ip, DecoderOptions::NONE);
    let i = d.decode();
    (!i.is_invalid()).then_some(i)
}

fn value(r: &kvm_regs, s: &kvm_sregs, reg: Register) -> Option<u64> {
    use Register as R;
    let v = match reg.full_register() {
        R::RAX => r.rax,
        R::RCX => r.rcx,
        R::RDX => r.rdx,
        R::RBX => r.rbx,
        R::RSP => r.rsp,
        R::RBP => r.rbp,
        R::RSI => r.rsi,
        R::RDI => r.rdi,
        R::R8 => r.r8,
        R::R9 => r.r9,
        R::R10 => r.r10,
        R::R11 => r.r11,
        R::R12 => r.r12,
        R::R13 => r.r13,
        R::R14 => r.r14,
        R::R15 => r.r15,
        R::RIP => r.rip,
        // A segment register stands for its base.
        R::ES => return Some(s.es.base),
        R::CS => return Some(s.cs.base),
        R::SS => return Some(s.ss.base),
        R::DS => return Some(s.ds.base),
        R::FS => return Some(s.fs.base),
        R::GS => return Some(s.gs.base),
        _ => return None,
    };
    Some(match reg.size() {
        8 => v,
        4 => v & 0xFFFF_FFFF,
        2 => v & 0xFFFF,
        _ if matches!(reg, R::AH | R::CH | R::DH | R::BH) => (v >> 8) & 0xFF,
        _ => v & 0xFF,
    })
}

fn slot(r: &mut kvm_regs, reg: Register) -> Option<&mut u64> {
    use Register as R;
    Some(match reg.full_register() {
        R::RAX => &mut r.rax,
        R::RCX => &mut r.rcx,
        R::RDX => &mut r.rdx,
        R::RBX => &mut r.rbx,
        R::RSP => &mut r.rsp,
        R::RBP => &mut r.rbp,
        R::RSI => &mut r.rsi,
        R::RDI => &mut r.rdi,
        R::R8 => &mut r.r8,
        R::R9 => &mut r.r9,
        R::R10 => &mut r.r10,
        R::R11 => &mut r.r11,
        R::R12 => &mut r.r12,
        R::R13 => &mut r.r13,
        R::R14 => &mut r.r14,
        R::R15 => &mut r.r15,
        _ => return None,
    })
}

/// Whether `i` is a string store (`stos`, `movs`: ES:rDI is written).
fn is_string_store(i: &Instruction) -> bool {
    matches!(
        i.op0_kind(),
        OpKind::MemoryESRDI | OpKind::MemoryESEDI | OpKind::MemoryESDI
    )
}

/// The registers before `i`, which KVM retired into `post` apart from its
/// write of `data`; `None` for an instruction whose effects cannot be
/// undone this way.
fn undo(i: &Instruction, post: &kvm_regs, data: &[u8], size: u64) -> Option<kvm_regs> {
    let mut r = *post;
    r.rip = i.ip();
    let string_store = is_string_store(i);
    match i.mnemonic() {
        Mnemonic::Call | Mnemonic::Enter | Mnemonic::Cmpxchg | Mnemonic::Xadd => return None,
        Mnemonic::Push | Mnemonic::Pushf | Mnemonic::Pushfd | Mnemonic::Pushfq => {
            r.rsp = r.rsp.wrapping_add(size);
        }
        Mnemonic::Xchg => {
            // The register got the memory's value; the memory would have got
            // the register's, which is the data written.
            let reg = (0..i.op_count())
                .map(|n| i.op_kind(n))
                .position(|k| k == OpKind::Register)
                .map(|n| i.op_register(n as u32))?;
            let mut v = [0u8; 8];
            let n = data.len().min(8);
            v[..n].copy_from_slice(&data[..n]);
            *slot(&mut r, reg)? = u64::from_le_bytes(v);
        }
        _ if string_store => {
            const DF: u64 = 1 << 10;
            let delta = if post.rflags & DF != 0 {
                size.wrapping_neg()
            } else {
                size
            };
            r.rdi = r.rdi.wrapping_sub(delta);
            if matches!(
                i.mnemonic(),
                Mnemonic::Movsb | Mnemonic::Movsw | Mnemonic::Movsd | Mnemonic::Movsq
            ) {
                r.rsi = r.rsi.wrapping_sub(delta);
            }
            if i.has_rep_prefix() || i.has_repne_prefix() {
                r.rcx = r.rcx.wrapping_add(1);
            }
        }
        _ => {}
    }
    Some(r)
}

/// Whether `i`, run from `regs`, writes memory covering the page offset of
/// `gpa`; its memory's size.
fn writes_at(
    factory: &mut InstructionInfoFactory,
    i: &Instruction,
    regs: &kvm_regs,
    sregs: &kvm_sregs,
    gpa: u64,
    len: usize,
) -> Option<u64> {
    let info = factory.info(i);
    info.used_memory().iter().find_map(|m| {
        let written = matches!(
            m.access(),
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        );
        let size = match m.memory_size().size() {
            // A repeated string store's element.
            0 => i.memory_size().size() as u64,
            n => n as u64,
        };
        // The whole write, or the part of one that crosses a page.
        let len = len as u64;
        let split = len < size && (gpa & 0xFFF == 0 || (gpa + len) & 0xFFF == 0);
        if !written || (len != size && !split) {
            return None;
        }
        let ea = m.virtual_address(0, |reg, _, _| value(regs, sregs, reg))?;
        (gpa.wrapping_sub(ea) & 0xFFF < size).then_some(size)
    })
}

/// For a `mov` to memory, whether `data` is what it stores (the source
/// register's or immediate's bytes); true for other instructions.
fn stores(i: &Instruction, regs: &kvm_regs, sregs: &kvm_sregs, data: &[u8]) -> bool {
    if i.mnemonic() != Mnemonic::Mov || i.op0_kind() != OpKind::Memory {
        return true;
    }
    let v = match i.op1_kind() {
        OpKind::Register => match value(regs, sregs, i.op1_register()) {
            Some(v) => v,
            None => return true,
        },
        OpKind::Immediate8
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate8to32
        | OpKind::Immediate32to64 => i.immediate(1),
        _ => return true,
    };
    let n = data.len().min(8);
    v.to_le_bytes()[..n] == data[..n]
}

/// Finds the instruction whose write of `data` (`len` bytes at `gpa`) KVM
/// reports with the registers `post` (RIP past it, or at it for a repeated
/// string store with iterations left). `code` holds the bytes at linear
/// addresses `rip - MAX_LEN .. rip + MAX_LEN` of the instruction pointer
/// (`post.rip`), as far as they could be fetched: `before` of them precede
/// RIP.
pub(crate) fn rewind_write(
    code: &[u8],
    before: usize,
    post: &kvm_regs,
    sregs: &kvm_sregs,
    gpa: u64,
    data: &[u8],
) -> Option<Found> {
    let bits = bitness(sregs);
    let mut factory = InstructionInfoFactory::new();
    let len = data.len();
    // Iterations left: the string store is at RIP.
    if let Some(i) = decode_at(&code[before..], post.rip, bits) {
        let repeated = i.has_rep_prefix() || i.has_repne_prefix();
        let string = is_string_store(&i);
        if repeated && string {
            let size = i.memory_size().size() as u64;
            if let Some(r) = undo(&i, post, data, size) {
                if writes_at(&mut factory, &i, &r, sregs, gpa, len).is_some() {
                    return Some(Found {
                        regs: r,
                        len: i.len() as u8,
                    });
                }
            }
        }
    }
    // The shortest instruction that ends at RIP and did this write: a
    // longer one ending there adds prefixes, which either change what is
    // written (and do not fit) or are redundant (an empty REX, a segment
    // override in 64-bit mode), so the retried instruction is the same.
    for k in 1..=before.min(MAX_LEN) {
        let start = post.rip.wrapping_sub(k as u64);
        let Some(i) = decode_at(&code[before - k..before], start, bits) else {
            continue;
        };
        if i.len() != k {
            continue;
        }
        let string = is_string_store(&i);
        if string
            && !i.has_rep_prefix()
            && k < before
            && matches!(code[before - k - 1], 0xF2 | 0xF3)
            && post.rcx == 0
        {
            // A repeated string store's last iteration (RCX is 0 now): the
            // REP before it is its own.
            continue;
        }
        let size = match factory
            .info(&i)
            .used_memory()
            .iter()
            .find(|m| m.access() != OpAccess::Read)
            .map_or(0, |m| m.memory_size().size() as u64)
        {
            0 => i.memory_size().size() as u64,
            n => n,
        };
        let Some(r) = undo(&i, post, data, size) else {
            continue;
        };
        if writes_at(&mut factory, &i, &r, sregs, gpa, len).is_some() && stores(&i, &r, sregs, data)
        {
            return Some(Found {
                regs: r,
                len: k as u8,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long_mode() -> kvm_sregs {
        let mut s = kvm_sregs {
            efer: 1 << 10 | 1 << 8,
            ..Default::default()
        };
        s.cs.l = 1;
        s
    }

    /// `code` placed at 0x1000, RIP after `at` bytes of it.
    fn run(code: &[u8], at: usize, post: kvm_regs, gpa: u64, data: &[u8]) -> Option<Found> {
        let mut bytes = vec![0x90u8; MAX_LEN];
        bytes.extend_from_slice(code);
        bytes.resize(2 * MAX_LEN + code.len(), 0x90);
        let mut r = post;
        r.rip = 0x1000 + at as u64;
        let window = &bytes[at..at + 2 * MAX_LEN];
        rewind_write(window, MAX_LEN, &r, &long_mode(), gpa, data)
    }

    /// `mov [0x100000], rbx` (8 bytes written): RIP goes back 8, not 7
    /// (`mov [0x100000], ebx` without REX.W writes 4).
    #[test]
    fn a_store_goes_back_its_length() {
        let code = [0x48, 0x89, 0x1C, 0x25, 0x00, 0x00, 0x10, 0x00];
        let rbx = kvm_regs {
            rbx: 0x1122_3344_5566_7788,
            ..Default::default()
        };
        let data = 0x1122_3344_5566_7788u64.to_le_bytes();
        let f = run(&code, 8, rbx, 0x10_0000, &data).unwrap();
        assert_eq!((f.regs.rip, f.len), (0x1000, 8));
        // A 4-byte write is not this instruction's (the 7-byte form that
        // ends at RIP stores EBX, 4 bytes, and is what fits).
        let f = run(&code, 8, rbx, 0x10_0000, &data[..4]).unwrap();
        assert_eq!(f.len, 7);
        // An address the instruction does not write: not this instruction.
        assert_eq!(run(&code, 8, rbx, 0x10_0800, &data), None);
        // Not the data RBX holds: not this instruction either.
        assert_eq!(run(&code, 8, rbx, 0x10_0000, &[0; 8]), None);
        // An empty REX before `mov [..], ebx` is redundant: the shorter
        // instruction is reported.
        let code = [0x40, 0x89, 0x1C, 0x25, 0x00, 0x00, 0x10, 0x00];
        let f = run(&code, 8, rbx, 0x10_0000, &data[..4]).unwrap();
        assert_eq!((f.regs.rip, f.len), (0x1001, 7));
        // REX.R is not: `mov [..], r11d` stores R11.
        let r11 = kvm_regs {
            r11: 0xAABB_CCDD,
            ..rbx
        };
        let code = [0x44, 0x89, 0x1C, 0x25, 0x00, 0x00, 0x10, 0x00];
        let f = run(&code, 8, r11, 0x10_0000, &[0xDD, 0xCC, 0xBB, 0xAA]).unwrap();
        assert_eq!((f.regs.rip, f.len), (0x1000, 8));
    }

    /// `mov [rax+8], ecx` with RAX as KVM left it.
    #[test]
    fn the_address_comes_from_the_registers() {
        let code = [0x89, 0x48, 0x08];
        let post = kvm_regs {
            rax: 0x2_0FF8,
            ..Default::default()
        };
        let post = kvm_regs {
            rcx: 0x0403_0201,
            ..post
        };
        let f = run(&code, 3, post, 0x5_1000, &[1, 2, 3, 4]).unwrap();
        assert_eq!((f.regs.rip, f.len, f.regs.rax), (0x1000, 3, 0x2_0FF8));
        // The first part of a write KVM split at a page end.
        let post = kvm_regs {
            rax: 0x2_0FF6,
            ..post
        };
        assert_eq!(
            run(&code, 3, post, 0x5_0FFE, &[1, 2]).map(|f| f.len),
            Some(3)
        );
        assert_eq!(run(&code, 3, post, 0x5_0FFC, &[1, 2]), None);
    }

    /// `push rbx`: RSP back up by 8.
    #[test]
    fn a_push_gives_its_stack_back() {
        let post = kvm_regs {
            rsp: 0x7FF8,
            ..Default::default()
        };
        let f = run(&[0x53], 1, post, 0x7FF8, &[0; 8]).unwrap();
        assert_eq!((f.regs.rip, f.regs.rsp), (0x1000, 0x8000));
    }

    /// `rep stosb` mid-way (RIP at it) and at its last iteration (RIP past
    /// it): RDI and RCX back by one iteration; `movsd` (string) moves RSI
    /// too, down with DF set.
    #[test]
    fn string_stores() {
        let post = kvm_regs {
            rdi: 0x3001,
            rcx: 15,
            ..Default::default()
        };
        let f = run(&[0xF3, 0xAA], 0, post, 0x3000, &[0]).unwrap();
        assert_eq!(
            (f.regs.rip, f.regs.rdi, f.regs.rcx, f.len),
            (0x1000, 0x3000, 16, 2)
        );
        let last = kvm_regs {
            rdi: 0x3010,
            rcx: 0,
            ..Default::default()
        };
        let f = run(&[0xF3, 0xAA], 2, last, 0x300F, &[0]).unwrap();
        assert_eq!((f.regs.rip, f.regs.rdi, f.regs.rcx), (0x1000, 0x300F, 1));
        let down = kvm_regs {
            rdi: 0x2FFC,
            rsi: 0x4FFC,
            rflags: 1 << 10 | 2,
            ..Default::default()
        };
        let f = run(&[0xA5], 1, down, 0x3000, &[0; 4]).unwrap();
        assert_eq!((f.regs.rdi, f.regs.rsi), (0x3000, 0x5000));
    }

    /// `xchg [rbx], eax`: EAX gets back the value that was to be written;
    /// `call` is not rewound.
    #[test]
    fn xchg_and_call() {
        let post = kvm_regs {
            rbx: 0x6000,
            rax: 0xDEAD,
            ..Default::default()
        };
        let f = run(&[0x87, 0x03], 2, post, 0x6000, &[0x11, 0x22, 0, 0]).unwrap();
        assert_eq!(f.regs.rax, 0x2211);
        let call = kvm_regs {
            rsp: 0x7FF8,
            ..Default::default()
        };
        assert_eq!(
            run(
                &[0xE8, 0, 0, 0, 0],
                5,
                call,
                0x7FF8,
                &[5, 0x10, 0, 0, 0, 0, 0, 0]
            ),
            None
        );
    }

    /// The mode's code size and instruction pointer.
    #[test]
    fn modes() {
        let mut s = long_mode();
        assert_eq!(bitness(&s), 64);
        assert_eq!(linear_ip(&s, 0x1234), 0x1234);
        s.efer = 0;
        s.cs.l = 0;
        s.cs.db = 1;
        s.cs.base = 0x1000;
        assert_eq!(bitness(&s), 32);
        assert_eq!(linear_ip(&s, 0xFFFF_F000), 0);
        s.cs.db = 0;
        assert_eq!(bitness(&s), 16);
    }
}
