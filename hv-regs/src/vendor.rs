//! Where register semantics differ by processor vendor.

/// The processor vendor a vCPU presents in CPUID leaf 0, for the registers whose
/// architectural width differs between vendors.
///
/// The rules follow the processor the guest is told it runs on, which is also what
/// KVM follows: on AMD processors IA32_SYSENTER_EIP and IA32_SYSENTER_ESP hold 32
/// bits (the AMD64 APM's SYSENTER/SYSEXIT are legacy-mode only, and KVM's SVM code
/// keeps only the low half unless the guest's CPUID vendor is Intel-compatible),
/// while Intel processors keep 64-bit values there.
///
/// ```
/// use hv_regs::CpuVendor;
/// // CPUID.0: EBX, EDX, ECX spell the vendor.
/// let (ebx, edx, ecx) = (0x6874_7541, 0x6974_6e65, 0x444d_4163); // "AuthenticAMD"
/// assert_eq!(CpuVendor::from_cpuid0(ebx, ecx, edx), CpuVendor::Amd);
/// assert_eq!(CpuVendor::Amd.sysenter_width(), 32);
/// assert_eq!(CpuVendor::from_id(b"GenuineIntel").sysenter_width(), 64);
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum CpuVendor {
    /// `GenuineIntel`, and the Intel-compatible `CentaurHauls` and `  Shanghai  `.
    Intel,
    /// `AuthenticAMD`, and the AMD-compatible `HygonGenuine`.
    Amd,
    /// Any other vendor string; the narrower (AMD) rules apply.
    Other,
}

impl CpuVendor {
    /// The vendor from its 12-byte CPUID vendor string.
    pub fn from_id(id: &[u8; 12]) -> Self {
        match id {
            b"GenuineIntel" | b"CentaurHauls" | b"  Shanghai  " => CpuVendor::Intel,
            b"AuthenticAMD" | b"HygonGenuine" => CpuVendor::Amd,
            _ => CpuVendor::Other,
        }
    }

    /// The vendor from CPUID leaf 0's EBX, ECX and EDX (the string is EBX, EDX, ECX).
    pub fn from_cpuid0(ebx: u32, ecx: u32, edx: u32) -> Self {
        let mut id = [0u8; 12];
        id[..4].copy_from_slice(&ebx.to_le_bytes());
        id[4..8].copy_from_slice(&edx.to_le_bytes());
        id[8..].copy_from_slice(&ecx.to_le_bytes());
        Self::from_id(&id)
    }

    /// The vendor a vCPU's CPUID entries (as given to KVM_SET_CPUID2: with
    /// kvm-bindings' fam-wrappers, `cpuid.as_slice()`) present in leaf 0;
    /// [`CpuVendor::Other`] if there is no leaf 0.
    ///
    /// ```
    /// use hv_regs::{kvm_bindings::kvm_cpuid_entry2, CpuVendor};
    /// let leaf0 = kvm_cpuid_entry2 {
    ///     function: 0,
    ///     ebx: 0x756e_6547, // "Genu"
    ///     edx: 0x4965_6e69, // "ineI"
    ///     ecx: 0x6c65_746e, // "ntel"
    ///     ..Default::default()
    /// };
    /// assert_eq!(CpuVendor::of(&[leaf0]), CpuVendor::Intel);
    /// assert_eq!(CpuVendor::of(&[]), CpuVendor::Other);
    /// ```
    pub fn of(entries: &[kvm_bindings::kvm_cpuid_entry2]) -> Self {
        entries
            .iter()
            .find(|e| e.function == 0)
            .map_or(CpuVendor::Other, |e| Self::from_cpuid0(e.ebx, e.ecx, e.edx))
    }

    /// How many bits IA32_SYSENTER_EIP and IA32_SYSENTER_ESP hold on this vendor's
    /// processors: 64 on Intel, 32 elsewhere.
    pub const fn sysenter_width(self) -> u32 {
        match self {
            CpuVendor::Intel => 64,
            CpuVendor::Amd | CpuVendor::Other => 32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_strings() {
        for (id, v) in [
            (b"GenuineIntel", CpuVendor::Intel),
            (b"CentaurHauls", CpuVendor::Intel),
            (b"  Shanghai  ", CpuVendor::Intel),
            (b"AuthenticAMD", CpuVendor::Amd),
            (b"HygonGenuine", CpuVendor::Amd),
            (b"KVMKVMKVM\0\0\0", CpuVendor::Other),
        ] {
            assert_eq!(CpuVendor::from_id(id), v, "{:?}", core::str::from_utf8(id));
        }
        // "GenuineIntel" as CPUID.0 returns it.
        assert_eq!(
            CpuVendor::from_cpuid0(0x756e_6547, 0x6c65_746e, 0x4965_6e69),
            CpuVendor::Intel
        );
        assert_eq!(CpuVendor::Other.sysenter_width(), 32);
    }
}
