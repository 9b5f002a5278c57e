//! A synthetic interrupt controller per (VP, VTL), as far as messages need it
//! (TLFS "Synthetic Interrupt Controller (SynIC)", "SynIC Messages"): the
//! SCONTROL, SVERSION, SIEFP, SIMP, EOM and SINT0-15 MSRs, and the message
//! slot protocol: a message goes into its SINT's slot of the SIMP page when
//! the slot is free (message type zero), otherwise the slot's
//! MessagePending flag is set and the message waits for the guest's EOM.
//!
//! The SIMP and SIEFP pages are the guest RAM at the GPAs the VTL names (as
//! the VP assist page is, and as KVM's own SynIC does), not overlay pages: a
//! VTL keeps them from lower VTLs with HvCallModifyVtlProtectionMask, as it
//! keeps the rest of its memory ([`crate::choices`]).

use hv_defs::message::{HvMessage, HvMessageHeader, HvMessageType};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use zerocopy::IntoBytes;

/// HV_X64_MSR_SCONTROL.
pub const MSR_SCONTROL: u32 = 0x4000_0080;
/// HV_X64_MSR_SVERSION.
pub const MSR_SVERSION: u32 = 0x4000_0081;
/// HV_X64_MSR_SIEFP.
pub const MSR_SIEFP: u32 = 0x4000_0082;
/// HV_X64_MSR_SIMP.
pub const MSR_SIMP: u32 = 0x4000_0083;
/// HV_X64_MSR_EOM.
pub const MSR_EOM: u32 = 0x4000_0084;
/// HV_X64_MSR_SINT0; SINT`n` is `MSR_SINT0 + n`.
pub const MSR_SINT0: u32 = 0x4000_0090;
/// The SINT intercept messages use (TLFS "SynIC Messages": SINT0 is the
/// hypervisor's).
pub const INTERCEPT_SINT: usize = 0;

/// Whether `index` is one of the SynIC MSRs this module serves.
pub(crate) fn is_synic_msr(index: u32) -> bool {
    (MSR_SCONTROL..=MSR_EOM).contains(&index) || (MSR_SINT0..MSR_SINT0 + 16).contains(&index)
}

/// SINTx: vector (7:0), masked (16), auto-EOI (17), polling (18).
const SINT_MASKED: u64 = 1 << 16;
const SINT_POLLING: u64 = 1 << 18;
const SINT_BITS: u64 = 0xFF | SINT_MASKED | (1 << 17) | SINT_POLLING;

/// One VTL's SynIC on one VP.
#[derive(Clone, Debug)]
pub(crate) struct Synic {
    pub scontrol: u64,
    pub siefp: u64,
    pub simp: u64,
    pub sint: [u64; 16],
    /// Per SINT: a message waiting for its slot.
    queued: [Option<Box<HvMessage>>; 16],
}

impl Default for Synic {
    fn default() -> Self {
        Synic {
            scontrol: 0,
            siefp: 0,
            simp: 0,
            // Every SINT starts masked.
            sint: [SINT_MASKED; 16],
            queued: Default::default(),
        }
    }
}

/// What [`Synic::post`] did with a message.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Posted {
    /// In its slot; raise this vector in the VTL's LAPIC, if any (not
    /// masked, not polled).
    Delivered(Option<u8>),
    /// The slot is busy: MessagePending is set, the message waits for EOM.
    Queued,
    /// The SynIC or the SIMP is disabled: nothing to deliver to.
    Dropped,
}

/// Why an MSR access is refused (#GP).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refused;

impl Synic {
    /// Reads SynIC MSR `index`; `None` if it is not one.
    pub fn read(&self, index: u32) -> Option<u64> {
        Some(match index {
            MSR_SCONTROL => self.scontrol,
            MSR_SVERSION => 1,
            MSR_SIEFP => self.siefp,
            MSR_SIMP => self.simp,
            MSR_EOM => 0,
            i if (MSR_SINT0..MSR_SINT0 + 16).contains(&i) => self.sint[(i - MSR_SINT0) as usize],
            _ => return None,
        })
    }

    /// Writes SynIC MSR `index` (`gpa_limit`: one past the highest GPA).
    /// An EOM delivers queued messages whose slots are free, and returns
    /// the vectors to raise. SVERSION is read-only, a SINT vector below 16
    /// or a page beyond the GPA space is refused (#GP).
    pub fn write(
        &mut self,
        index: u32,
        value: u64,
        gpa_limit: u64,
        mem: &GuestMemoryMmap,
        may_write: &dyn Fn(u64) -> bool,
    ) -> Result<Vec<u8>, Refused> {
        match index {
            MSR_SCONTROL => self.scontrol = value & 1,
            MSR_SIEFP | MSR_SIMP => {
                if value & !0xFFF >= gpa_limit {
                    return Err(Refused);
                }
                let v = value & !0xFFE;
                if index == MSR_SIMP {
                    self.simp = v;
                } else {
                    self.siefp = v;
                }
                return Ok(self.redeliver(mem, may_write));
            }
            MSR_EOM => return Ok(self.redeliver(mem, may_write)),
            i if (MSR_SINT0..MSR_SINT0 + 16).contains(&i) => {
                let vector = value & 0xFF;
                if value & SINT_MASKED == 0 && vector < 16 {
                    return Err(Refused);
                }
                self.sint[(i - MSR_SINT0) as usize] = value & SINT_BITS;
            }
            _ => return Err(Refused),
        }
        Ok(Vec::new())
    }

    /// The SIMP page's GPA while the SynIC and the page are enabled.
    fn simp_page(&self) -> Option<u64> {
        (self.scontrol & 1 != 0 && self.simp & 1 != 0).then_some(self.simp & !0xFFF)
    }

    /// The vector a message on `sint` raises, if it raises one.
    fn vector(&self, sint: usize) -> Option<u8> {
        let s = self.sint[sint];
        (s & (SINT_MASKED | SINT_POLLING) == 0).then_some(s as u8)
    }

    /// Posts `msg` on `sint` (0-15). `may_write` says whether the VTL may
    /// write the page at a GPA: a SIMP it may not write (a higher VTL
    /// protects it) is not written for it either, and the message is
    /// dropped.
    pub fn post(
        &mut self,
        sint: usize,
        msg: &HvMessage,
        mem: &GuestMemoryMmap,
        may_write: &dyn Fn(u64) -> bool,
    ) -> Posted {
        let Some(page) = self.simp_page().filter(|&p| may_write(p)) else {
            return Posted::Dropped;
        };
        let slot = GuestAddress(page + 256 * sint as u64);
        let busy = mem
            .read_obj::<u32>(slot)
            .map(|t| HvMessageType(t) != HvMessageType::NONE)
            .unwrap_or(true);
        if busy {
            if let Ok(flags) = mem.read_obj::<u8>(slot.unchecked_add(5)) {
                let _ = mem.write_obj(
                    flags | HvMessageHeader::MESSAGE_PENDING,
                    slot.unchecked_add(5),
                );
            }
            self.queued[sint] = Some(Box::new(*msg));
            return Posted::Queued;
        }
        // The type goes in last: the guest sees a whole message or none.
        let bytes = msg.as_bytes();
        if mem.write_slice(&bytes[4..], slot.unchecked_add(4)).is_err()
            || mem.write_slice(&bytes[..4], slot).is_err()
        {
            return Posted::Dropped;
        }
        Posted::Delivered(self.vector(sint))
    }

    /// Delivers queued messages whose slots are free again.
    fn redeliver(&mut self, mem: &GuestMemoryMmap, may_write: &dyn Fn(u64) -> bool) -> Vec<u8> {
        let mut vectors = Vec::new();
        for sint in 0..16 {
            if let Some(m) = self.queued[sint].take() {
                match self.post(sint, &m, mem, may_write) {
                    Posted::Delivered(v) => vectors.extend(v),
                    Posted::Queued => {}
                    Posted::Dropped => self.queued[sint] = Some(m),
                }
            }
        }
        vectors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromZeros;

    fn ok(_: u64) -> bool {
        true
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn message(tag: u8) -> HvMessage {
        let mut m = HvMessage::new_zeroed();
        m.header.message_type = HvMessageType::GPA_INTERCEPT;
        m.header.payload_size = 0x50;
        m.payload[0] = tag;
        m
    }

    /// TLFS "SynIC Messages": a free slot takes the message; a busy one gets
    /// MessagePending and the message waits for EOM.
    #[test]
    fn slot_protocol() {
        let mem = mem();
        let mut s = Synic::default();
        assert_eq!(s.post(0, &message(1), &mem, &ok), Posted::Dropped);
        s.write(MSR_SCONTROL, 1, 1 << 40, &mem, &ok).unwrap();
        s.write(MSR_SIMP, 0x3001, 1 << 40, &mem, &ok).unwrap();
        assert_eq!(s.read(MSR_SIMP), Some(0x3001));
        // SINT0 masked: delivered without an interrupt.
        assert_eq!(s.post(0, &message(1), &mem, &ok), Posted::Delivered(None));
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x3000)).unwrap(),
            0x8000_0001
        );
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x3010)).unwrap(), 1);
        s.write(MSR_SINT0, 0x40, 1 << 40, &mem, &ok).unwrap();
        assert_eq!(s.post(0, &message(2), &mem, &ok), Posted::Queued);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x3005)).unwrap(), 1);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x3010)).unwrap(), 1);
        // EOM with the slot still busy: still queued.
        assert_eq!(s.write(MSR_EOM, 0, 1 << 40, &mem, &ok), Ok(vec![]));
        // The guest frees the slot, then EOM: delivered, vector 0x40.
        mem.write_obj(0u32, GuestAddress(0x3000)).unwrap();
        assert_eq!(s.write(MSR_EOM, 0, 1 << 40, &mem, &ok), Ok(vec![0x40]));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x3010)).unwrap(), 2);
        // A SIMP the VTL may not write: dropped, nothing written.
        mem.write_obj(0u32, GuestAddress(0x3000)).unwrap();
        assert_eq!(s.post(0, &message(9), &mem, &|_| false), Posted::Dropped);
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x3000)).unwrap(), 0);
        // Another SINT's slot is its own.
        assert_eq!(s.post(3, &message(3), &mem, &ok), Posted::Delivered(None));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x3310)).unwrap(), 3);
    }

    /// TLFS SynIC MSRs: SVERSION is 1 and read-only, SINT vectors below 16
    /// are refused unless masked, SINTs start masked, pages stay in the GPA
    /// space.
    #[test]
    fn msr_rules() {
        let mem = mem();
        let mut s = Synic::default();
        assert_eq!(s.read(MSR_SVERSION), Some(1));
        assert_eq!(s.write(MSR_SVERSION, 2, 1 << 40, &mem, &ok), Err(Refused));
        assert_eq!(s.read(MSR_SINT0 + 15), Some(1 << 16));
        assert_eq!(
            s.write(MSR_SINT0 + 2, 0x0F, 1 << 40, &mem, &ok),
            Err(Refused)
        );
        assert!(s.write(MSR_SINT0 + 2, 0x1_000F, 1 << 40, &mem, &ok).is_ok());
        assert_eq!(
            s.write(MSR_SIMP, 1 << 40 | 1, 1 << 40, &mem, &ok),
            Err(Refused)
        );
        assert_eq!(s.read(MSR_EOM), Some(0));
        assert_eq!(s.read(0x4000_0085), None);
        assert!(!is_synic_msr(0x4000_0085) && !is_synic_msr(0x4000_00A0));
        assert!(
            is_synic_msr(MSR_SCONTROL) && is_synic_msr(MSR_EOM) && is_synic_msr(MSR_SINT0 + 15)
        );
        // Polling SINTs raise nothing.
        s.write(MSR_SCONTROL, 1, 1 << 40, &mem, &ok).unwrap();
        s.write(MSR_SIMP, 0x1001, 1 << 40, &mem, &ok).unwrap();
        s.write(MSR_SINT0 + 1, 0x4_0050, 1 << 40, &mem, &ok)
            .unwrap();
        assert_eq!(s.post(1, &message(1), &mem, &ok), Posted::Delivered(None));
        s.write(MSR_SINT0 + 4, 0x51, 1 << 40, &mem, &ok).unwrap();
        assert_eq!(
            s.post(4, &message(1), &mem, &ok),
            Posted::Delivered(Some(0x51))
        );
    }
}
