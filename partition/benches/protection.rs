//! VTL memory protections, measured through the guest's own hypercalls.
//!
//! - "protect + unprotect N pages": a VTL 1 guest (the partition boots in
//!   VTL 1) makes N scattered VTL 0 pages (every third page, so each is a
//!   memslot split of its own) inaccessible with
//!   HvCallModifyVtlProtectionMask, then gives them full access again, in
//!   rep calls of at most 500 pages. One iteration is both; the per-page
//!   cost is the iteration's time / (2 N).
//! - "intercept round trip": VTL 0 reads 100 pages VTL 1 made inaccessible;
//!   each read enters VTL 1 with a GpaIntercept on SINT0, VTL 1 frees the
//!   slot, sends EOM, lifts that page (one ModifyVtlProtectionMask) and
//!   returns, and the read is retried. Then one VTL call lets VTL 1 protect
//!   the 100 pages again. One iteration is the 100 intercepts.
//!
//! For scale, `--bench hypercall` times a null hypercall and a VTL call +
//! VTL return on the same host.
//!
//! `cargo bench -p hv-partition --bench protection` (needs /dev/kvm).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;

use common::*;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hv_defs::{EnableVpVtlInput, InitialVpContext, PartitionId, VpIndex, Vtl};
use hv_partition::{Partition, Vp};

const VTL1_CODE: u64 = 0x30000;
const VTL1_STACK: u64 = 0x2F000;
const VTL1_HYPERCALL: u64 = 0x6000;
const VTL1_ASSIST: u64 = 0x50000;
const VTL1_SIMP: u64 = 0x51000;
/// The call table: (control, input GPA) pairs, a zero control ends it.
const TABLE: u64 = DATA + 0x8000;
/// Input blocks, a page each.
const INPUTS: u64 = 0x80_0000;
/// The protected pages: every third page from here.
const PAGES: u64 = 0x100_0000;
const STRIDE: u64 = 0x3000;
/// The intercept loop's pages.
const BATCH: u64 = 100;
const DONE_PORT: u16 = 0x21;
/// A single-page RWX input for the intercept handler.
const LIFT: u64 = DATA + 0x7000;

std::arch::global_asm!(
    r#"
    .pushsection .rodata.hvkvm_bench_protection, "a"
    .macro os_id_and_page page
    mov ecx, 0x40000000
    mov eax, 1
    mov edx, 0x81000000
    wrmsr
    mov ecx, 0x40000001
    mov eax, \page + 1
    xor edx, edx
    wrmsr
    .endm
    // VTL 1 booted: EnableVtlProtection, then the table's calls forever.
    .globl hvkvm_bp_table_start
hvkvm_bp_table_start:
    .code64
    os_id_and_page {hc1}
    mov rcx, 0x0000000100000051
    mov edx, {data}
    xor r8d, r8d
    mov eax, {hc1}
    call rax
    out 0x30, eax
2:  mov r12d, {table}
3:  mov rcx, qword ptr [r12]
    test rcx, rcx
    jz 4f
    mov rdx, qword ptr [r12 + 8]
    xor r8d, r8d
    mov eax, {hc1}
    call rax
    test ax, ax
    jnz 5f
    add r12, 16
    jmp 3b
4:  out {done}, eax
    jmp 2b
5:  out 0x31, eax
    jmp 5b
    .globl hvkvm_bp_table_end
hvkvm_bp_table_end:

    // VTL 0: enables VTL 1, enters it once (it protects the pages), then
    // reads the pages, each an intercept.
    .globl hvkvm_bp_vtl0_start
hvkvm_bp_vtl0_start:
    os_id_and_page {hc0}
    mov ecx, 0x1000D
    mov rdx, -1
    mov r8d, 1
    mov eax, {hc0}
    call rax
    mov rcx, 0x0F
    mov edx, {data} + 0x100
    xor r8d, r8d
    mov eax, {hc0}
    call rax
    out 0x32, eax
6:  xor ecx, ecx
    mov eax, {hc0} + 0x10
    call rax
    mov rbx, {pages}
    mov r12d, {batch}
7:  mov rax, qword ptr [rbx]
    add rbx, {stride}
    dec r12d
    jnz 7b
    out {done}, eax
    jmp 6b
    .globl hvkvm_bp_vtl0_end
hvkvm_bp_vtl0_end:

    // VTL 1 of the intercept loop.
    .globl hvkvm_bp_vtl1_start
hvkvm_bp_vtl1_start:
    os_id_and_page {hc1}
    mov ecx, 0x40000073
    mov eax, {assist} + 1
    wrmsr
    mov ecx, 0x40000083
    mov eax, {simp} + 1
    wrmsr
    mov ecx, 0x40000080
    mov eax, 1
    wrmsr
    mov rcx, 0x0000000100000051
    mov edx, {data}
    xor r8d, r8d
    mov eax, {hc1}
    call rax
    out 0x30, eax
    jmp 12f
    // Entered by a VTL call: protect the batch; by an intercept: lift its
    // page.
8:  mov eax, dword ptr [{assist} + 8]
    cmp eax, 1
    jne 9f
12: mov rcx, qword ptr [{table}]
    mov rdx, qword ptr [{table} + 8]
    xor r8d, r8d
    mov eax, {hc1}
    call rax
    jmp 10f
9:  mov rax, qword ptr [{simp} + 72]
    shr rax, 12
    mov qword ptr [{lift} + 16], rax
    mov dword ptr [{simp}], 0
    mov ecx, 0x40000084
    xor eax, eax
    xor edx, edx
    wrmsr
    mov rcx, 0x000000010000000C
    mov edx, {lift}
    xor r8d, r8d
    mov eax, {hc1}
    call rax
10: test ax, ax
    jnz 11f
    mov ecx, 1
    mov eax, {hc1} + 0x20
    call rax
    jmp 8b
11: out 0x31, eax
    jmp 11b
    .globl hvkvm_bp_vtl1_end
hvkvm_bp_vtl1_end:
    .popsection
"#,
    hc0 = const HYPERCALL_PAGE,
    hc1 = const VTL1_HYPERCALL,
    data = const DATA,
    table = const TABLE,
    done = const DONE_PORT,
    assist = const VTL1_ASSIST,
    simp = const VTL1_SIMP,
    pages = const PAGES,
    stride = const STRIDE,
    batch = const BATCH,
    lift = const LIFT,
);

extern "C" {
    static hvkvm_bp_table_start: u8;
    static hvkvm_bp_table_end: u8;
    static hvkvm_bp_vtl0_start: u8;
    static hvkvm_bp_vtl0_end: u8;
    static hvkvm_bp_vtl1_start: u8;
    static hvkvm_bp_vtl1_end: u8;
}

/// HvCallModifyVtlProtectionMask's input for VTL 0's `pages`.
fn prot(flags: u32, pages: &[u64]) -> Vec<u8> {
    let mut b = PartitionId::SELF.0.to_le_bytes().to_vec();
    b.extend(flags.to_le_bytes());
    b.extend([0x10, 0, 0, 0]);
    for g in pages {
        b.extend((g >> 12).to_le_bytes());
    }
    b
}

/// Writes the calls that apply `flags` to `pages` in rep calls of at most
/// 500 pages, from input page `first` on; returns the table entries.
fn calls(p: &Partition, flags: u32, pages: &[u64], first: u64) -> Vec<(u64, u64)> {
    pages
        .chunks(500)
        .enumerate()
        .map(|(i, chunk)| {
            let gpa = INPUTS + (first + i as u64) * 0x1000;
            put(p, gpa, &prot(flags, chunk));
            (0x0C | ((chunk.len() as u64) << 32), gpa)
        })
        .collect()
}

fn write_table(p: &Partition, entries: &[(u64, u64)]) {
    let mut b = vec![];
    for (c, g) in entries.iter().chain([(0, 0)].iter()) {
        b.extend(c.to_le_bytes());
        b.extend(g.to_le_bytes());
    }
    put(p, TABLE, &b);
}

fn partition(boot: Vtl) -> Arc<Partition> {
    let p = Partition::new(hv_partition::PartitionConfig {
        max_vps: 1,
        memory: vec![(0, 32 << 20)],
        hyperv: Some(hv_partition::HyperVConfig {
            boot_vtl: boot,
            max_vtl: Vtl::VTL1,
        }),
        cpuid_masks: vec![],
    })
    .expect("the benchmark needs /dev/kvm");
    write_tables(p.memory());
    // VsmPartitionConfig: EnableVtlProtection, full-access default.
    put(
        &p,
        DATA,
        &set_registers_input(
            0,
            &[(
                hv_regs::HvRegisterName::VSM_PARTITION_CONFIG,
                0x1Fu64.into(),
            )],
        ),
    );
    p
}

/// Runs until the guest reports a finished batch.
fn batch(vp: &mut Vp) {
    loop {
        match vp.run() {
            hv_partition::VpExit::IoPortAccess {
                port,
                access: hv_partition::Access::Write(d),
            } => match port {
                DONE_PORT => return,
                0x30 | 0x32 => assert_eq!(d[0], 0, "setup status"),
                _ => panic!("guest failure on port {port:#x}: {d:x?}"),
            },
            other => panic!("unexpected exit {other:?}"),
        }
    }
}

fn start(p: &Arc<Partition>) -> Vp {
    let mut vp = p.create_vp(VpIndex(0)).unwrap();
    vp.set_registers(&bsp_registers(CODE, stack(0))).unwrap();
    p.set_explicit_suspend(VpIndex(0), false).unwrap();
    vp
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("VTL protections");
    g.sample_size(20);
    for n in [1u64, 64, 1024] {
        let p = partition(Vtl::VTL1);
        // SAFETY: symbols the global_asm! above defines; `blob` reads
        // between them.
        put(&p, CODE, unsafe {
            blob(&hvkvm_bp_table_start, &hvkvm_bp_table_end)
        });
        let pages: Vec<u64> = (0..n).map(|i| PAGES + i * STRIDE).collect();
        let mut t = calls(&p, 0, &pages, 0);
        t.extend(calls(&p, 0xF, &pages, 4));
        write_table(&p, &t);
        let mut vp = start(&p);
        batch(&mut vp);
        g.throughput(Throughput::Elements(2 * n));
        g.bench_with_input(
            BenchmarkId::new("protect + unprotect pages", n),
            &n,
            |b, _| b.iter(|| batch(&mut vp)),
        );
    }
    // The intercept loop.
    let p = partition(Vtl::VTL0);
    // SAFETY: as above.
    unsafe {
        put(&p, CODE, blob(&hvkvm_bp_vtl0_start, &hvkvm_bp_vtl0_end));
        put(
            &p,
            VTL1_CODE,
            blob(&hvkvm_bp_vtl1_start, &hvkvm_bp_vtl1_end),
        );
    }
    let pages: Vec<u64> = (0..BATCH).map(|i| PAGES + i * STRIDE).collect();
    write_table(&p, &calls(&p, 0, &pages, 0));
    put(&p, LIFT, &prot(0xF, &[0]));
    let ctx = InitialVpContext::long_mode(VTL1_CODE, VTL1_STACK, PML4)
        .with_gdt(GDT, 0x1F)
        .with_tss(TSS);
    let enable = EnableVpVtlInput {
        partition_id: PartitionId::SELF,
        vp_index: VpIndex::SELF,
        target_vtl: Vtl::VTL1,
        rsvdz: [0; 3],
        vp_vtl_context: ctx,
    };
    put(&p, DATA + 0x100, zerocopy::IntoBytes::as_bytes(&enable));
    let mut vp = start(&p);
    batch(&mut vp);
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("intercept round trip", |b| b.iter(|| batch(&mut vp)));
    eprintln!(
        "intercepts delivered: {}; {}",
        p.stats().intercepts(),
        p.stats()
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
