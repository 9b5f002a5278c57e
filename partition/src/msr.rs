//! The synthetic MSRs, served at the partition level so that a VMM with its own
//! run loop can hand an MSR exit to [`Partition::handle_msr`] while the exit still
//! borrows its vCPU.

use exit_decoder::MsrAccess;
use std::sync::atomic::Ordering;

use hv_defs::VpIndex;

use crate::hyperv;
use crate::partition::Partition;
use crate::vp::Handled;

/// HV_X64_MSR_HYPERCALL: enable (bit 0), locked (bit 1), RsvdP (bits 11:2).
pub(crate) const HYPERCALL_ENABLE: u64 = 1;
const HYPERCALL_LOCKED: u64 = 1 << 1;

impl Partition {
    /// Serves an MSR exit of VP `vp` if it is one of the partition's synthetic
    /// MSRs (with Hyper-V configured): reads answered, writes applied, an access
    /// the TLFS does not allow answered with #GP (`*m.error = 1`).
    /// [`Handled::NotMine`] for any other MSR.
    pub fn handle_msr(&self, vp: VpIndex, m: &mut MsrAccess<'_>) -> Handled {
        if self.config.hyperv.is_none() || !hyperv::is_synthetic(m.index) {
            return Handled::NotMine;
        }
        let Some(shared) = self.existing_vp(vp) else {
            return Handled::NotMine;
        };
        // The guest OS id, the hypercall page and the VP assist page are
        // private to the VTL the VP runs in (TLFS "Virtual Secure Mode").
        let vtl = shared.lock().state.active_vtl();
        let Some(space) = self.space(vtl) else {
            *m.error = 1;
            return Handled::Served;
        };
        if crate::synic::is_synic_msr(m.index) {
            match m.written {
                None => {
                    let value = shared.lock().synic[vtl.0 as usize].read(m.index);
                    if let (Some(v), Some(out)) = (value, m.read.as_deref_mut()) {
                        *out = v;
                    }
                }
                Some(v) => {
                    let may_write = |page| self.vtl_may_access(vtl, page, 0x1000, true);
                    let written = shared.lock().synic[vtl.0 as usize].write(
                        m.index,
                        v,
                        self.gpa_limit(),
                        &self.memory,
                        &may_write,
                    );
                    match written {
                        Ok(vectors) => {
                            for vector in vectors {
                                self.raise(vtl, &shared, vector);
                            }
                        }
                        Err(crate::synic::Refused) => *m.error = 1,
                    }
                }
            }
            return Handled::Served;
        }
        let value = match (m.index, m.written) {
            (hyperv::MSR_GUEST_OS_ID, None) => Some(space.hv().guest_os_id),
            (hyperv::MSR_GUEST_OS_ID, Some(v)) => {
                let mut hv = space.hv();
                hv.guest_os_id = v;
                if v == 0 && hv.hypercall & HYPERCALL_ENABLE != 0 {
                    // Clearing the guest OS id disables the hypercall page.
                    if self.place_hypercall_overlay(vtl, None).is_err() {
                        *m.error = 1;
                        return Handled::Served;
                    }
                    hv.hypercall &= !HYPERCALL_ENABLE;
                }
                None
            }
            (hyperv::MSR_HYPERCALL, None) => Some(space.hv().hypercall),
            (hyperv::MSR_HYPERCALL, Some(v)) => match self.write_hypercall_msr(vtl, v) {
                Ok(()) => None,
                Err(()) => {
                    *m.error = 1;
                    return Handled::Served;
                }
            },
            (hyperv::MSR_VP_INDEX, None) => Some(vp.0 as u64),
            (hyperv::MSR_TSC_FREQUENCY, None) => Some(shared.tsc_hz),
            (hyperv::MSR_APIC_FREQUENCY, None) => Some(1_000_000_000),
            (hyperv::MSR_VP_ASSIST_PAGE, None) => {
                Some(shared.lock().vp_assist_page[vtl.0 as usize])
            }
            (hyperv::MSR_VP_ASSIST_PAGE, Some(v)) => {
                shared.lock().vp_assist_page[vtl.0 as usize] = v;
                None
            }
            (hyperv::MSR_TSC_INVARIANT_CONTROL, None) => {
                Some(self.tsc_invariant_control.load(Ordering::Relaxed))
            }
            (hyperv::MSR_TSC_INVARIANT_CONTROL, Some(v)) if v & !1 == 0 => {
                self.tsc_invariant_control.store(v, Ordering::Relaxed);
                None
            }
            _ => {
                *m.error = 1;
                return Handled::Served;
            }
        };
        if let (Some(v), Some(out)) = (value, m.read.as_deref_mut()) {
            *out = v;
        }
        Handled::Served
    }

    /// HV_X64_MSR_HYPERCALL (TLFS "Establishing the Hypercall Interface"): bit 0
    /// enables the page at the GPFN in bits 63:12, bit 1 locks the MSR, bits 11:2
    /// are RsvdP (kept as written). The page is an overlay mapped read-only over
    /// whatever is at that GPA, RAM or nothing. `Err` means #GP: a GPFN beyond
    /// the GPA space, a write that changes a locked MSR (see [`crate::choices`]),
    /// or a host failure to map the page.
    fn write_hypercall_msr(&self, vtl: hv_defs::Vtl, v: u64) -> Result<(), ()> {
        let Some(space) = self.space(vtl) else {
            return Err(());
        };
        let mut hv = space.hv();
        if hv.hypercall & HYPERCALL_LOCKED != 0 {
            return if v == hv.hypercall { Ok(()) } else { Err(()) };
        }
        let gpa = v & !0xFFF;
        if gpa >= self.gpa_limit() {
            return Err(());
        }
        let mut value = v;
        if hv.guest_os_id == 0 {
            // Without a guest OS id the enable bit stays zero.
            value &= !HYPERCALL_ENABLE;
        }
        let place = (value & HYPERCALL_ENABLE != 0).then_some(gpa);
        if let Err(e) = self.place_hypercall_overlay(vtl, place) {
            log::error!("cannot map the hypercall page at {gpa:#x}: {e}");
            return Err(());
        }
        hv.hypercall = value;
        Ok(())
    }
}
