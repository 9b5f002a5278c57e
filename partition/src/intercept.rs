//! Memory intercepts (TLFS "Virtual Secure Mode", "Memory Access
//! Protections", "Secure Intercepts"): a lower VTL's access that a higher
//! VTL's protection refuses does not retire, and the higher VTL is entered
//! with an `HvMessageTypeGpaIntercept` message carrying an
//! HV_X64_MEMORY_INTERCEPT_MESSAGE: on its SINT0 (entry reason Interrupt),
//! or in its VP assist page's intercept message area when it set
//! VsmPartitionConfig.InterceptPage (entry reason Intercept). Once the
//! higher VTL lifted the protection and returned, the access is retried.
//!
//! KVM reports the access as an MMIO exit already in flight (an instruction
//! fetch as an emulation failure): the exit is completed without a further
//! instruction run, and the registers are put back as they were before the
//! instruction ([`crate::rewind`]). An MMIO write never reaches RAM, so
//! nothing was written.

use hv_defs::message::{HvMessage, HvMessageType, InterceptMessageHeader, MemoryInterceptMessage};
use hv_defs::vsm::assist;
use hv_defs::Vtl;
use kvm_bindings::{kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};
use zerocopy::{FromZeros, IntoBytes};

use crate::memview::AccessKind;
use crate::rewind::{self, MAX_LEN};
use crate::synic::{Posted, INTERCEPT_SINT};
use crate::vp::Vp;
use crate::vsm::Switch;

/// HV_CACHE_TYPE_X64_WB: guest RAM is write-back.
const CACHE_WRITE_BACK: u32 = 6;
/// #GP.
const VECTOR_GP: u8 = 13;

/// An access a protection refused, as the exit reported it.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Violation {
    pub gpa: u64,
    pub kind: AccessKind,
    /// A write's data (its first `len` bytes).
    pub data: [u8; 8],
    pub len: usize,
}

impl Vp {
    /// Turns `v`, refused by `by`'s protection, into an intercept: the
    /// instruction is undone, the message built and delivered, and the VP
    /// switched to `by`. If `by` is not enabled on this VP there is no one
    /// to deliver it to: the lower VTL gets #GP at the instruction
    /// ([`crate::choices`]).
    pub(crate) fn intercept(&mut self, v: Violation, by: Vtl) {
        let index = self.index().0;
        let (regs, sregs) = self.exit_registers();
        if v.kind != AccessKind::Execute {
            // The completion may leave an event behind (a fault of the
            // emulator's own page walk on the data it was given): the
            // events are put back as they were at the exit.
            let events = self.vcpu_mut().get_vcpu_events().ok();
            self.drain_pending_exit();
            if let Some(e) = events {
                if let Err(err) = self.vcpu_mut().set_vcpu_events(&e) {
                    log::error!("VP {index}: events not put back: {err}");
                }
            }
        }
        let mut bytes = [0u8; 16];
        let (restored, len, count) = match v.kind {
            AccessKind::Read => {
                let n = self.fetch(rewind::linear_ip(&sregs, regs.rip), &mut bytes);
                let len = rewind::decode_at(&bytes[..n], regs.rip, rewind::bitness(&sregs))
                    .map_or(0, |i| i.len());
                (regs, len as u8, n as u8)
            }
            AccessKind::Write => match self.rewind(&regs, &sregs, &v) {
                Some(f) => {
                    let n = self.fetch(rewind::linear_ip(&sregs, f.regs.rip), &mut bytes);
                    (f.regs, f.len, n as u8)
                }
                None => {
                    log::debug!(
                        "VP {index}: the write to {:#x} at RIP {:#x} cannot be undone",
                        v.gpa,
                        regs.rip
                    );
                    (regs, 0, 0)
                }
            },
            // An instruction fetch: the fetched address is RIP, nothing
            // decoded (as Hyper-V reports it).
            AccessKind::Execute => (regs, 0, 0),
        };
        self.put_registers(&restored);
        if self.parked[by.0 as usize].is_none() {
            log::debug!(
                "VP {index}: VTL {} protection of {:#x}, VTL not enabled on the VP: #GP",
                by.0,
                v.gpa
            );
            self.inject_exception(VECTOR_GP, Some(0));
            return;
        }
        let message = self.message(&v, &restored, &sregs, len, &bytes, count);
        let partition = self.partition().clone();
        let kind = if partition.vsm.intercept_page(by) {
            if let Some(page) = self.assist_page(by) {
                let _ = partition.memory().write_slice(
                    message.as_bytes(),
                    GuestAddress(page + assist::INTERCEPT_MESSAGE),
                );
            }
            Switch::Intercept
        } else {
            let shared = self.shared().clone();
            let may_write = |page| partition.vtl_may_access(by, page, 0x1000, true);
            let posted = shared.lock().synic[by.0 as usize].post(
                INTERCEPT_SINT,
                &message,
                partition.memory(),
                &may_write,
            );
            match posted {
                Posted::Delivered(Some(vector)) => partition.raise(by, &shared, vector),
                Posted::Delivered(None) | Posted::Queued => {}
                Posted::Dropped => log::debug!(
                    "VP {index}: VTL {} has no SIMP: intercept message dropped",
                    by.0
                ),
            }
            Switch::Interrupt
        };
        partition.stats.intercept();
        if let Err(e) = self.switch_to(kind, by, false, false) {
            log::error!("VP {index}: intercept entry of VTL {} failed: {e}", by.0);
        }
    }

    /// Completes the MMIO exit in flight without a further instruction run,
    /// and the ones its completion leads to: KVM's emulator goes on with a
    /// repeated string instruction's next iteration, which is another MMIO
    /// exit. After the first completion RCX is set to 1, so that such an
    /// instruction ends with the iteration in flight. The registers are put
    /// back afterwards; a read's completion stores its (meaningless) data
    /// where the instruction would, in memory the lower VTL may write,
    /// which the retried instruction overwrites.
    fn drain_pending_exit(&mut self) {
        const EINTR: i32 = 4;
        let index = self.index().0;
        let shared = self.shared().clone();
        let v = self.vcpu_mut();
        let g = shared.lock();
        let before = v.get_kvm_run().immediate_exit;
        v.set_kvm_immediate_exit(1);
        for round in 0..64 {
            match v.run() {
                Err(e) if e.errno() == EINTR => break,
                Err(e) => {
                    log::error!("VP {index}: KVM_RUN (completion): {e}");
                    break;
                }
                Ok(kvm_ioctls::VcpuExit::MmioRead(_, data)) => data.fill(0xFF),
                Ok(kvm_ioctls::VcpuExit::MmioWrite(..)) => {}
                Ok(other) => {
                    log::debug!("VP {index}: completion ended in {other:?}");
                    break;
                }
            }
            if round == 0 {
                if let Ok(mut r) = v.get_regs() {
                    r.rcx = 1;
                    let _ = v.set_regs(&r);
                }
            }
        }
        v.set_kvm_immediate_exit(before);
        drop(g);
    }

    /// The registers KVM stored at the exit (its `kvm_run` copy where it
    /// syncs them there).
    fn exit_registers(&mut self) -> (kvm_regs, kvm_sregs) {
        let both = (kvm_bindings::KVM_SYNC_X86_REGS | kvm_bindings::KVM_SYNC_X86_SREGS) as u64;
        let v = self.vcpu_mut();
        if v.get_kvm_run().kvm_valid_regs & both == both {
            let s = v.sync_regs();
            return (s.regs, s.sregs);
        }
        (
            v.get_regs().unwrap_or_default(),
            v.get_sregs().unwrap_or_default(),
        )
    }

    /// Loads `regs` into the running vCPU and its `kvm_run` copy, so that
    /// both say the same (the VTL switch copies from `kvm_run`).
    fn put_registers(&mut self, regs: &kvm_regs) {
        let index = self.index().0;
        let v = self.vcpu_mut();
        if let Err(e) = v.set_regs(regs) {
            log::error!("VP {index}: registers not put back: {e}");
        }
        v.sync_regs_mut().regs = *regs;
    }

    /// After an emulation failure: the fetch of the instruction at RIP, if
    /// it is from a page a higher VTL gave no access.
    pub(crate) fn refused_fetch(&mut self) -> Option<(Violation, Vtl)> {
        let (regs, sregs) = self.exit_registers();
        let gpa = self.gpa_of(rewind::linear_ip(&sregs, regs.rip))?;
        let by = self
            .partition()
            .refused_by(self.vtl, gpa, AccessKind::Execute)?;
        let v = Violation {
            gpa,
            kind: AccessKind::Execute,
            data: [0; 8],
            len: 0,
        };
        Some((v, by))
    }

    /// The GPA of linear address `linear` through the running VTL's page
    /// tables (KVM_TRANSLATE), if mapped.
    fn gpa_of(&mut self, linear: u64) -> Option<u64> {
        let t = self.vcpu_mut().translate_gva(linear).ok()?;
        (t.valid != 0).then_some(t.physical_address)
    }

    /// Reads the instruction bytes at linear address `linear` through the
    /// running VTL's page tables; how many could be read.
    fn fetch(&mut self, linear: u64, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() {
            let at = linear.wrapping_add(done as u64);
            let Some(gpa) = self.gpa_of(at) else {
                break;
            };
            let room = (0x1000 - (at & 0xFFF)) as usize;
            let n = room.min(buf.len() - done);
            if self
                .partition()
                .memory()
                .read_slice(&mut buf[done..done + n], GuestAddress(gpa))
                .is_err()
            {
                break;
            }
            done += n;
        }
        done
    }

    /// The instruction a write exit retired, and the registers before it.
    fn rewind(
        &mut self,
        regs: &kvm_regs,
        sregs: &kvm_sregs,
        v: &Violation,
    ) -> Option<rewind::Found> {
        let ip = rewind::linear_ip(sregs, regs.rip);
        let mut window = [0u8; 2 * MAX_LEN];
        // As many bytes before RIP as are mapped (the page before may not be).
        let mut before = MAX_LEN.min(ip as usize);
        while before > 0 {
            let n = self.fetch(ip - before as u64, &mut window);
            if n >= before {
                return rewind::rewind_write(
                    &window[..n],
                    before,
                    regs,
                    sregs,
                    v.gpa,
                    &v.data[..v.len],
                );
            }
            before = (ip & 0xFFF).min(before as u64 - 1) as usize;
        }
        None
    }

    /// The HV_MESSAGE for `v`.
    fn message(
        &self,
        v: &Violation,
        regs: &kvm_regs,
        sregs: &kvm_sregs,
        len: u8,
        bytes: &[u8; 16],
        count: u8,
    ) -> HvMessage {
        const CR0_PE: u64 = 1;
        const CR0_AM: u64 = 1 << 18;
        const EFER_LMA: u64 = 1 << 10;
        let access = match v.kind {
            AccessKind::Read => InterceptMessageHeader::ACCESS_READ,
            AccessKind::Write => InterceptMessageHeader::ACCESS_WRITE,
            AccessKind::Execute => InterceptMessageHeader::ACCESS_EXECUTE,
        };
        let payload = MemoryInterceptMessage {
            header: InterceptMessageHeader {
                vp_index: self.index().0,
                instruction_length_and_cr8: (len & 0xF) | (((sregs.cr8 & 0xF) as u8) << 4),
                intercept_access_type: access,
                execution_state: InterceptMessageHeader::execution_state(
                    sregs.ss.dpl,
                    sregs.cr0 & CR0_PE != 0,
                    sregs.cr0 & CR0_AM != 0,
                    sregs.efer & EFER_LMA != 0,
                    self.vtl,
                ),
                cs_segment: hv_regs::segment_from_kvm(&sregs.cs),
                rip: regs.rip,
                rflags: regs.rflags,
            },
            cache_type: CACHE_WRITE_BACK,
            instruction_byte_count: count,
            // The exit names no GVA.
            memory_access_info: 0,
            tpr_priority: (sregs.cr8 & 0xF) as u8,
            reserved: 0,
            guest_virtual_address: 0,
            guest_physical_address: v.gpa,
            instruction_bytes: *bytes,
        };
        let mut m = HvMessage::new_zeroed();
        m.header.message_type = HvMessageType::GPA_INTERCEPT;
        m.header.payload_size = core::mem::size_of::<MemoryInterceptMessage>() as u8;
        m.payload[..payload.as_bytes().len()].copy_from_slice(payload.as_bytes());
        m
    }
}
