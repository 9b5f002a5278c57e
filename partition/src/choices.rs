//! Where the TLFS leaves the answer open, and what this crate answers.
//!
//! Each entry names the situation, the answer a guest observes, and why. The
//! conformance tests (`tests/guest_hypercalls.rs`, `tests/vsm.rs`) assert them.
//!
//! | situation | answer | why |
//! |---|---|---|
//! | HvCallStartVirtualProcessor names the caller (or `HV_VP_INDEX_SELF`) | `HV_STATUS_INVALID_PARAMETER` | the caller is running, so "already started" (`INVALID_VP_STATE`) would also fit; the TLFS gives neither, and starting oneself is a malformed request rather than a state |
//! | a partition id other than `HV_PARTITION_ID_SELF` or the caller's own | `HV_STATUS_ACCESS_DENIED` | a guest has no privilege over other partitions; the TLFS prefers `ACCESS_DENIED` over codes that reveal whether the partition exists ("Ordering of Error Conditions") |
//! | Get/SetVpRegisters of another VP's architectural registers | `HV_STATUS_INVALID_VP_STATE` | that VP's vCPU belongs to its own thread and may be running; registers the VP model keeps (suspend, VP index, VSM status, initial APIC id) are served |
//! | an input VTL below the caller's, for a register private to a VTL, on the calling VP | that VTL's vCPU is read or written; `HV_STATUS_INVALID_VTL_STATE` if the VP has none (a VP of a partition booted in VTL 2 has no VTL 0 context of its own yet) | each enabled VTL of a VP is a vCPU in that VTL's VM; registers shared across VTLs or partition-wide (VP index, the VSM registers) are served for any valid input VTL |
//! | HvCallEnablePartitionVtl with EnableMbec | `HV_STATUS_INVALID_PARAMETER` | stock KVM cannot give separate user and supervisor execute permissions; VsmCapabilities offers no MBEC VTL |
//! | the order of HvCallEnablePartitionVtl's checks | partition, target above the maximum VTL (`INVALID_PARAMETER`), privilege (`ACCESS_DENIED`), already enabled (`VTL_ALREADY_ENABLED`) | the TLFS lists the restrictions without an order |
//! | a VTL call or return the TLFS makes #UD (no higher VTL enabled on the VP, a return from VTL 0, a reserved control bit) | #UD, taken after the sequence's trapping `OUT`, so the handler sees RIP at the sequence's `RET` | as for the hypercall page: KVM completes the port write before it exits |
//! | RAX and RCX after a fast VTL return | as they were at the return: RAX holds the return's control input, RCX the call code | the hypercall page's VTL sequences move the control input to RAX, which the TLFS leaves clobbered, and put the code in RCX (the register ABI of a hypercall) |
//! | MTRRs, which the TLFS shares between VTLs | each VTL's vCPU keeps its own | copying them on every switch costs two ioctls for registers guests set once at boot |
//! | a write that changes a locked HV_X64_MSR_HYPERCALL | #GP | the TLFS makes the MSR immutable once locked; writing the value it already has is accepted |
//! | the hypercall page executed at CPL > 0, in real mode or virtual-8086 mode | #UD, taken after the trapping `OUT` | KVM completes the port write before it exits, so the exception cannot be made to point at the call itself |
//! | a write to the hypercall page | #GP, taken after the writing instruction | KVM reports the write to the read-only overlay slot once the instruction has retired |
//! | a hypercall input or output block inside the hypercall overlay page | the RAM beneath is read or written | the TLFS calls this undefined |
//! | an input or output GPA outside guest RAM but inside the GPA space | `HV_STATUS_INVALID_ALIGNMENT` | the common status table's "not within the bounds of the GPA space"; the partition's GPA space for parameters is its RAM |
//! | a guest that remaps the hypercall page's linear address to other code without changing CR0, CR3, CR4 or EFER | a port write to the trap port from offset 0 or 2 of that linear page is still taken for the hypercall page | the translation is cached per VP for the paging state, so a hypercall costs no KVM_TRANSLATE; only CPL 0 code can remap pages, and CPL 0 code may make hypercalls anyway |
//! | how KVM's verdict on a start context is obtained | the context is loaded on a spare vCPU of the partition's own VM (id `max_vps`, never run, in no table; a VM of its own for an adopted VM), and contexts it accepted are remembered by the part its checks depend on | a vCPU of the target's own kind says what the target would refuse; a spare vCPU costs no VM creation and destruction (each waits for KVM's grace periods); the guest can reach it only by an IPI to an APIC id no table names, which, as for a missing CPU, nothing answers |
