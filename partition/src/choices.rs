//! Where the TLFS leaves the answer open, and what this crate answers.
//!
//! Each entry names the situation, the answer a guest observes, and why. The
//! conformance tests (`tests/guest_hypercalls.rs`) assert every one of them.
//!
//! | situation | answer | why |
//! |---|---|---|
//! | HvCallStartVirtualProcessor names the caller (or `HV_VP_INDEX_SELF`) | `HV_STATUS_INVALID_PARAMETER` | the caller is running, so "already started" (`INVALID_VP_STATE`) would also fit; the TLFS gives neither, and starting oneself is a malformed request rather than a state |
//! | a partition id other than `HV_PARTITION_ID_SELF` or the caller's own | `HV_STATUS_ACCESS_DENIED` | a guest has no privilege over other partitions; the TLFS prefers `ACCESS_DENIED` over codes that reveal whether the partition exists ("Ordering of Error Conditions") |
//! | Get/SetVpRegisters of another VP's architectural registers | `HV_STATUS_INVALID_VP_STATE` | that VP's vCPU belongs to its own thread and may be running; registers the VP model keeps (suspend, VP index, VSM status, initial APIC id) are served |
//! | an input VTL below the caller's | `HV_STATUS_INVALID_VTL_STATE` | one register context per VP: the lower VTL's context does not exist separately yet |
//! | a write that changes a locked HV_X64_MSR_HYPERCALL | #GP | the TLFS makes the MSR immutable once locked; writing the value it already has is accepted |
//! | the hypercall page executed at CPL > 0, in real mode or virtual-8086 mode | #UD, taken after the trapping `OUT` | KVM completes the port write before it exits, so the exception cannot be made to point at the call itself |
//! | a write to the hypercall page | #GP, taken after the writing instruction | KVM reports the write to the read-only overlay slot once the instruction has retired |
//! | a hypercall input or output block inside the hypercall overlay page | the RAM beneath is read or written | the TLFS calls this undefined |
//! | an input or output GPA outside guest RAM but inside the GPA space | `HV_STATUS_INVALID_ALIGNMENT` | the common status table's "not within the bounds of the GPA space"; the partition's GPA space for parameters is its RAM |
//! | a guest that remaps the hypercall page's linear address to other code without changing CR0, CR3, CR4 or EFER | a port write to the trap port from offset 0 or 2 of that linear page is still taken for the hypercall page | the translation is cached per VP for the paging state, so a hypercall costs no KVM_TRANSLATE; only CPL 0 code can remap pages, and CPL 0 code may make hypercalls anyway |
//! | how KVM's verdict on a start context is obtained | the context is loaded on a spare vCPU of the partition's own VM (id `max_vps`, never run, in no table; a VM of its own for an adopted VM), and contexts it accepted are remembered by the part its checks depend on | a vCPU of the target's own kind says what the target would refuse; a spare vCPU costs no VM creation and destruction (each waits for KVM's grace periods); the guest can reach it only by an IPI to an APIC id no table names, which, as for a missing CPU, nothing answers |
