//! The virtual processor lifecycle of the Microsoft Hypervisor TLFS as a pure state
//! machine: no KVM, no threads, exhaustively testable.
//!
//! A VP is created with explicit suspend set. VP 0, the boot processor, is ready;
//! every other VP waits for a SIPI (HvCreateVp). A waiting VP leaves its wait through
//! a SIPI or through HvCallStartVirtualProcessor, at most once until it is reset by
//! INIT. A VP runs only while neither explicit nor intercept suspend is set. Each VP
//! has a set of enabled VTLs; a start may only target an enabled VTL.
//!
//! Every transition is a method that returns the new state or the HV_STATUS of the
//! illegal request; the state itself is a small `Copy` value.
//!
//! ```
//! use hv_defs::{HvError, VpIndex, Vtl};
//! use vp_state::{Activity, VpState};
//!
//! let ap = VpState::new(VpIndex(1), Vtl::VTL0).unwrap();
//! assert!(ap.explicit_suspend() && ap.activity() == Activity::WaitForSipi);
//! // The parent clears explicit suspend; the AP still waits for a start.
//! let ap = ap.set_explicit_suspend(false);
//! assert_eq!(ap.start(Vtl::VTL2), Err(HvError::INVALID_VP_STATE)); // VTL 2 not enabled
//! let ap = ap.enable_vtl(Vtl::VTL2).unwrap();
//! let ap = ap.start(Vtl::VTL2).unwrap();
//! assert_eq!((ap.activity(), ap.active_vtl()), (Activity::Runnable, Vtl::VTL2));
//! assert_eq!(ap.start(Vtl::VTL2), Err(HvError::INVALID_VP_STATE)); // started once
//! ```
#![no_std]
#![deny(missing_docs)]
// Guest-visible enums are matched without catch-all arms, so a new variant breaks
// the build until it is handled.
#![deny(clippy::wildcard_enum_match_arm)]
#![forbid(unsafe_code)]

use hv_defs::{HvError, HvResult, VpIndex, Vtl};

/// What a VP's processor is doing, as far as the architecture says.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Activity {
    /// Waiting for a SIPI (or a StartVirtualProcessor); executes nothing.
    WaitForSipi,
    /// Able to execute instructions.
    Runnable,
    /// Halted (HLT) until an interrupt.
    Halted,
}

/// A lifecycle event, for driving the machine generically (tests, tracing).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// Write HvRegisterExplicitSuspend.
    SetExplicitSuspend(bool),
    /// Write HvRegisterInterceptSuspend.
    SetInterceptSuspend(bool),
    /// INIT received.
    Init,
    /// SIPI received, with its vector.
    Sipi(u8),
    /// HvCallStartVirtualProcessor targeting this VP at a VTL.
    Start(Vtl),
    /// HvCallEnableVpVtl for this VP.
    EnableVtl(Vtl),
    /// A thread is about to run the VP.
    EnterRun,
    /// The run returned.
    ExitRun,
    /// The VP executed HLT.
    Halt,
    /// An interrupt woke the halted VP.
    Wake,
}

/// The state of one virtual processor.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct VpState {
    index: VpIndex,
    boot_vtl: Vtl,
    explicit_suspend: bool,
    intercept_suspend: bool,
    activity: Activity,
    started: bool,
    running: bool,
    enabled_vtls: u16,
    active_vtl: Vtl,
    sipi_vector: Option<u8>,
}

/// The enabled-set bit of `vtl`; none for a VTL above [`Vtl::MAX_X64`], so that
/// VTL 16 + n can never alias VTL n.
const fn vtl_bit(vtl: Vtl) -> u16 {
    if vtl.0 <= Vtl::MAX_X64.0 {
        1 << vtl.0
    } else {
        0
    }
}

impl VpState {
    /// A VP as HvCreateVp leaves it: explicit suspend set; the boot processor
    /// (index 0) ready and started, at `boot_vtl` with VTL 0 and `boot_vtl` enabled;
    /// any other VP waiting for a SIPI, with only VTL 0 enabled.
    ///
    /// `HV_STATUS_INVALID_PARAMETER` if `boot_vtl` is above [`Vtl::MAX_X64`] (an
    /// x64 partition has VTLs 0 to 2, TLFS "Virtual Secure Mode").
    pub const fn new(index: VpIndex, boot_vtl: Vtl) -> HvResult<Self> {
        if boot_vtl.0 > Vtl::MAX_X64.0 {
            return Err(HvError::INVALID_PARAMETER);
        }
        let bsp = index.0 == VpIndex::BSP.0;
        Ok(VpState {
            index,
            boot_vtl,
            explicit_suspend: true,
            intercept_suspend: false,
            activity: if bsp {
                Activity::Runnable
            } else {
                Activity::WaitForSipi
            },
            started: bsp,
            running: false,
            enabled_vtls: if bsp {
                vtl_bit(Vtl::VTL0) | vtl_bit(boot_vtl)
            } else {
                vtl_bit(Vtl::VTL0)
            },
            active_vtl: if bsp { boot_vtl } else { Vtl::VTL0 },
            sipi_vector: None,
        })
    }

    /// The VP's index.
    pub const fn index(&self) -> VpIndex {
        self.index
    }
    /// Whether this is the boot processor.
    pub const fn is_bsp(&self) -> bool {
        self.index.0 == VpIndex::BSP.0
    }
    /// HvRegisterExplicitSuspend.
    pub const fn explicit_suspend(&self) -> bool {
        self.explicit_suspend
    }
    /// HvRegisterInterceptSuspend.
    pub const fn intercept_suspend(&self) -> bool {
        self.intercept_suspend
    }
    /// Whether either suspend is set.
    pub const fn suspended(&self) -> bool {
        self.explicit_suspend || self.intercept_suspend
    }
    /// What the processor is doing.
    pub const fn activity(&self) -> Activity {
        self.activity
    }
    /// Whether the VP has left its wait-for-SIPI since creation or the last INIT.
    pub const fn started(&self) -> bool {
        self.started
    }
    /// Whether a thread is running the VP now.
    pub const fn running(&self) -> bool {
        self.running
    }
    /// The VTL the VP executes in.
    pub const fn active_vtl(&self) -> Vtl {
        self.active_vtl
    }
    /// Bit n set when VTL n is enabled on this VP.
    pub const fn enabled_vtls(&self) -> u16 {
        self.enabled_vtls
    }
    /// Whether `vtl` is enabled on this VP.
    pub const fn vtl_enabled(&self, vtl: Vtl) -> bool {
        self.enabled_vtls & vtl_bit(vtl) != 0
    }
    /// The vector of the SIPI that started the VP, if one did.
    pub const fn sipi_vector(&self) -> Option<u8> {
        self.sipi_vector
    }

    /// Writes HvRegisterExplicitSuspend. Always legal.
    pub const fn set_explicit_suspend(self, suspend: bool) -> Self {
        VpState {
            explicit_suspend: suspend,
            ..self
        }
    }

    /// Writes HvRegisterInterceptSuspend. Always legal.
    pub const fn set_intercept_suspend(self, suspend: bool) -> Self {
        VpState {
            intercept_suspend: suspend,
            ..self
        }
    }

    /// INIT: resets the processor. An application processor returns to
    /// wait-for-SIPI and may be started again; the boot processor stays runnable.
    /// Suspend flags, enabled VTLs and whether a thread is running are kept.
    pub const fn init(self) -> Self {
        if self.is_bsp() {
            VpState {
                activity: Activity::Runnable,
                active_vtl: self.boot_vtl,
                ..self
            }
        } else {
            VpState {
                activity: Activity::WaitForSipi,
                started: false,
                active_vtl: Vtl::VTL0,
                sipi_vector: None,
                ..self
            }
        }
    }

    /// SIPI with `vector`: leaves wait-for-SIPI at VTL 0. A SIPI to a VP that is
    /// not waiting for one is `HV_STATUS_INVALID_VP_STATE` (hardware ignores it).
    pub const fn sipi(self, vector: u8) -> HvResult<Self> {
        match self.activity {
            Activity::WaitForSipi => Ok(VpState {
                activity: Activity::Runnable,
                started: true,
                active_vtl: Vtl::VTL0,
                sipi_vector: Some(vector),
                ..self
            }),
            Activity::Runnable | Activity::Halted => Err(HvError::INVALID_VP_STATE),
        }
    }

    /// HvCallStartVirtualProcessor at `vtl`.
    ///
    /// * `HV_STATUS_INVALID_VP_STATE` if the VP is the boot processor, has already
    ///   started since creation or INIT, or `vtl` is not enabled on it.
    ///
    /// Suspend flags are left alone: a started VP that is still suspended does not
    /// run until they are cleared.
    pub const fn start(self, vtl: Vtl) -> HvResult<Self> {
        if self.is_bsp() || !self.vtl_enabled(vtl) || self.started {
            return Err(HvError::INVALID_VP_STATE);
        }
        match self.activity {
            Activity::WaitForSipi => Ok(VpState {
                activity: Activity::Runnable,
                started: true,
                active_vtl: vtl,
                ..self
            }),
            Activity::Runnable | Activity::Halted => Err(HvError::INVALID_VP_STATE),
        }
    }

    /// HvCallEnableVpVtl at `vtl`: `HV_STATUS_INVALID_PARAMETER` above the highest
    /// x64 VTL, `HV_STATUS_VTL_ALREADY_ENABLED` if enabled (VTL 0 always is).
    pub const fn enable_vtl(self, vtl: Vtl) -> HvResult<Self> {
        if vtl.0 > Vtl::MAX_X64.0 {
            Err(HvError::INVALID_PARAMETER)
        } else if self.vtl_enabled(vtl) {
            Err(HvError::VTL_ALREADY_ENABLED)
        } else {
            Ok(VpState {
                enabled_vtls: self.enabled_vtls | vtl_bit(vtl),
                ..self
            })
        }
    }

    /// The VTL a VTL call from the active VTL enters: the next higher VTL
    /// enabled on the VP (TLFS HvCallVtlCall), `None` if there is none (the
    /// call is then #UD).
    pub const fn vtl_call_target(&self) -> Option<Vtl> {
        let mut v = self.active_vtl.0 + 1;
        while v <= Vtl::MAX_X64.0 {
            if self.vtl_enabled(Vtl(v)) {
                return Some(Vtl(v));
            }
            v += 1;
        }
        None
    }

    /// The VTL a VTL return from the active VTL enters: the highest VTL below
    /// it enabled on the VP, `None` from VTL 0 (the return is then #UD).
    pub const fn vtl_return_target(&self) -> Option<Vtl> {
        let mut v = self.active_vtl.0;
        while v > 0 {
            v -= 1;
            if self.vtl_enabled(Vtl(v)) {
                return Some(Vtl(v));
            }
        }
        None
    }

    /// The VP switches to `vtl` (a VTL call or return, or a start in that
    /// VTL): `HV_STATUS_INVALID_VP_STATE` unless `vtl` is enabled on it.
    pub const fn switch_vtl(self, vtl: Vtl) -> HvResult<Self> {
        if !self.vtl_enabled(vtl) {
            return Err(HvError::INVALID_VP_STATE);
        }
        Ok(VpState {
            active_vtl: vtl,
            ..self
        })
    }

    /// A thread is about to run the VP: `HV_STATUS_INVALID_VP_STATE` if it is
    /// suspended or already being run. A VP waiting for SIPI may be run: the
    /// hypervisor (KVM) holds it until a SIPI arrives.
    pub const fn enter_run(self) -> HvResult<Self> {
        if self.suspended() || self.running {
            Err(HvError::INVALID_VP_STATE)
        } else {
            Ok(VpState {
                running: true,
                ..self
            })
        }
    }

    /// The run returned: `HV_STATUS_INVALID_VP_STATE` if the VP was not running.
    pub const fn exit_run(self) -> HvResult<Self> {
        if self.running {
            Ok(VpState {
                running: false,
                ..self
            })
        } else {
            Err(HvError::INVALID_VP_STATE)
        }
    }

    /// HLT: only a runnable VP halts.
    pub const fn halt(self) -> HvResult<Self> {
        match self.activity {
            Activity::Runnable => Ok(VpState {
                activity: Activity::Halted,
                ..self
            }),
            Activity::WaitForSipi | Activity::Halted => Err(HvError::INVALID_VP_STATE),
        }
    }

    /// An interrupt wakes a halted VP.
    pub const fn wake(self) -> HvResult<Self> {
        match self.activity {
            Activity::Halted => Ok(VpState {
                activity: Activity::Runnable,
                ..self
            }),
            Activity::WaitForSipi | Activity::Runnable => Err(HvError::INVALID_VP_STATE),
        }
    }

    /// Applies `event`.
    pub const fn apply(self, event: Event) -> HvResult<Self> {
        match event {
            Event::SetExplicitSuspend(s) => Ok(self.set_explicit_suspend(s)),
            Event::SetInterceptSuspend(s) => Ok(self.set_intercept_suspend(s)),
            Event::Init => Ok(self.init()),
            Event::Sipi(v) => self.sipi(v),
            Event::Start(vtl) => self.start(vtl),
            Event::EnableVtl(vtl) => self.enable_vtl(vtl),
            Event::EnterRun => self.enter_run(),
            Event::ExitRun => self.exit_run(),
            Event::Halt => self.halt(),
            Event::Wake => self.wake(),
        }
    }

    /// Reconciles the model with an activity observed in the hypervisor after a run
    /// (for example KVM's MP state after an INIT/SIPI delivered by its in-kernel
    /// LAPIC). Leaving wait-for-SIPI this way counts as a SIPI start.
    pub const fn observe(self, observed: Activity) -> Self {
        match (self.activity, observed) {
            (Activity::WaitForSipi, Activity::Runnable | Activity::Halted) => VpState {
                activity: observed,
                started: true,
                active_vtl: Vtl::VTL0,
                ..self
            },
            (_, Activity::WaitForSipi) => self.init(),
            (Activity::Runnable | Activity::Halted, Activity::Runnable | Activity::Halted) => {
                VpState {
                    activity: observed,
                    ..self
                }
            }
        }
    }
}

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
