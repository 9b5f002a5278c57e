//! WHV_RUN_VP_EXIT_REASON: why WHvRunVirtualProcessor returned.

crate::open_enum! {
    /// WHV_RUN_VP_EXIT_REASON (Windows Hypervisor Platform, WHvRunVirtualProcessor):
    /// the reason code of a run's exit context, with the values of the platform
    /// headers.
    ///
    /// ```
    /// use hv_defs::WhvRunVpExitReason as R;
    /// assert_eq!(R::X64_IO_PORT_ACCESS.0, 0x2);
    /// assert_eq!(R::CANCELED.0, 0x2001);
    /// assert_eq!(R::from(0x1000), R::X64_MSR_ACCESS);
    /// ```
    pub struct WhvRunVpExitReason(u32) {
        /// WHvRunVpExitReasonNone.
        NONE = 0x0000_0000,
        /// WHvRunVpExitReasonMemoryAccess: an access to a GPA not mapped or not
        /// accessible.
        MEMORY_ACCESS = 0x0000_0001,
        /// WHvRunVpExitReasonX64IoPortAccess.
        X64_IO_PORT_ACCESS = 0x0000_0002,
        /// WHvRunVpExitReasonUnrecoverableException.
        UNRECOVERABLE_EXCEPTION = 0x0000_0004,
        /// WHvRunVpExitReasonInvalidVpRegisterValue.
        INVALID_VP_REGISTER_VALUE = 0x0000_0005,
        /// WHvRunVpExitReasonUnsupportedFeature.
        UNSUPPORTED_FEATURE = 0x0000_0006,
        /// WHvRunVpExitReasonX64InterruptWindow.
        X64_INTERRUPT_WINDOW = 0x0000_0007,
        /// WHvRunVpExitReasonX64Halt.
        X64_HALT = 0x0000_0008,
        /// WHvRunVpExitReasonX64ApicEoi.
        X64_APIC_EOI = 0x0000_0009,
        /// WHvRunVpExitReasonX64MsrAccess.
        X64_MSR_ACCESS = 0x0000_1000,
        /// WHvRunVpExitReasonX64Cpuid.
        X64_CPUID = 0x0000_1001,
        /// WHvRunVpExitReasonException.
        EXCEPTION = 0x0000_1002,
        /// WHvRunVpExitReasonCanceled: the host canceled the run.
        CANCELED = 0x0000_2001,
    }
}

#[cfg(test)]
mod tests {
    use super::WhvRunVpExitReason as R;

    #[test]
    fn values_of_the_platform_header() {
        // shared/seeds 004 (WHV_RUN_VP_EXIT_REASON).
        let table = [
            (R::NONE, 0x0),
            (R::MEMORY_ACCESS, 0x1),
            (R::X64_IO_PORT_ACCESS, 0x2),
            (R::UNRECOVERABLE_EXCEPTION, 0x4),
            (R::INVALID_VP_REGISTER_VALUE, 0x5),
            (R::UNSUPPORTED_FEATURE, 0x6),
            (R::X64_INTERRUPT_WINDOW, 0x7),
            (R::X64_HALT, 0x8),
            (R::X64_APIC_EOI, 0x9),
            (R::X64_MSR_ACCESS, 0x1000),
            (R::X64_CPUID, 0x1001),
            (R::EXCEPTION, 0x1002),
            (R::CANCELED, 0x2001),
        ];
        assert_eq!(table.len(), R::KNOWN.len());
        for (r, v) in table {
            assert_eq!(r.0, v, "{r:?}");
        }
        assert_eq!(core::mem::size_of::<R>(), 4);
    }
}
