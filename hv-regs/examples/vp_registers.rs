//! Creates a KVM vCPU, loads the HV_INITIAL_VP_CONTEXT Linux gives its application
//! processors, and prints the vCPU's registers by HV_REGISTER_NAME.
//!
//! Run with `cargo run -p hv-regs --example vp_registers` (needs /dev/kvm).

#[path = "../tests/common/mod.rs"]
mod common;

use hv_defs::{InitialVpContext, TableRegister};
use hv_regs::{get_register, load_context, HvRegisterName};

fn main() {
    let (_kvm, _vm, vcpu) = common::long_mode_vcpu();
    let ctx = InitialVpContext {
        rip: 0xFFFF_FFFF_8101_2A2D,
        rsp: 0xFFFF_8880_0019_BF58,
        tr: common::seg(0xFFFF_FE00_0000_3000, 0x4087, 0x40, 0x008B),
        idtr: TableRegister {
            pad: [0; 3],
            limit: 0xFFF,
            base: 0xFFFF_FE00_0000_0000,
        },
        gdtr: TableRegister {
            pad: [0; 3],
            limit: 0x7F,
            base: 0xFFFF_FE00_0000_1000,
        },
        cr3: 0x161_4000,
        cr4: 0x10_06B0,
        ..common::long_mode_context()
    };
    if let Err(e) = load_context(&vcpu, &ctx) {
        eprintln!("error: KVM refused the context: {e}");
        std::process::exit(1);
    }
    println!("{:<38} {:>18} {:>18}", "HV_REGISTER_NAME", "low", "high");
    for &name in HvRegisterName::KNOWN {
        match get_register(&vcpu, name) {
            Ok(v) => println!(
                "{:<38} {:#018x} {:#018x}",
                format!("{name:?} ({:#010x})", name.0),
                v.low,
                v.high
            ),
            Err(e) => println!("{name:?}: {e}"),
        }
    }
}
