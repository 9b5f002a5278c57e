//! User errors end with one clear line and status 1; purpose-built guests exercise
//! power-off, the reset register, the i8042 reset and a triple fault end to end.

mod common;

use std::time::Duration;

use common::*;

const SHORT: Duration = Duration::from_secs(120);

fn one_error_line(r: &Run, needle: &str) {
    assert_eq!(r.status, Some(1), "{}", r.tail());
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {:?}", r.stderr);
    assert!(
        lines[0].starts_with("reference-vmm: error: "),
        "{:?}",
        lines[0]
    );
    assert!(
        lines[0].contains(needle),
        "{:?} should mention {needle:?}",
        lines[0]
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

/// `out dx, al` with DX = port, AL = value, then spin.
fn port_write(port: u16, value: u8) -> Vec<u8> {
    let mut c = vec![0x66, 0xBA];
    c.extend(port.to_le_bytes());
    c.extend([0xB0, value, 0xEE, 0xEB, 0xFE]);
    c
}

#[test]
fn user_errors_are_one_line_and_status_1() {
    let k = temp_file("poweroff-kernel", &elf_kernel(&port_write(0x600, 0x34)));
    let not_kernel = temp_file("not-a-kernel", b"this is not a kernel");
    one_error_line(
        &vmm(&["--kernel", "/nonexistent/bzImage"], SHORT),
        "No such file",
    );
    one_error_line(
        &vmm(&["--kernel", &not_kernel], SHORT),
        "not a Linux kernel",
    );
    one_error_line(&vmm(&["--kernel", &k, "--vcpus", "0"], SHORT), "--vcpus 0");
    one_error_line(
        &vmm(&["--kernel", &k, "--vcpus", "100000"], SHORT),
        "--vcpus 100000",
    );
    one_error_line(
        &vmm(&["--kernel", &k, "--memory", "8M"], SHORT),
        "too small",
    );
    one_error_line(
        &vmm(&["--kernel", &k, "--memory", "100000G"], SHORT),
        "more than this host has",
    );
    one_error_line(
        &vmm(
            &["--kernel", &k, "--initramfs", "/nonexistent/initrd"],
            SHORT,
        ),
        "initramfs /nonexistent/initrd",
    );
    let big = temp_file("big-initrd", &vec![0u8; 80 << 20]);
    one_error_line(
        &vmm(
            &["--kernel", &k, "--memory", "64M", "--initramfs", &big],
            SHORT,
        ),
        "too small",
    );
    // A usage error is clap's, with status 2.
    let r = vmm(&["--kernel", &k, "--memory", "lots"], SHORT);
    assert_eq!(r.status, Some(2), "{}", r.tail());
}

#[test]
fn acpi_power_off_reset_register_i8042_and_triple_fault() {
    let cases: [(&str, Vec<u8>, i32); 4] = [
        ("poweroff", port_write(0x600, 0x34), 0), // SLP_TYP=5 | SLP_EN, as Linux writes
        ("acpi-reset", port_write(0x602, 0x01), 3),
        ("i8042-reset", port_write(0x64, 0xFE), 3),
        // ud2 with no IDT: #UD cannot be delivered, the VP shuts down.
        ("triple-fault", vec![0x0F, 0x0B], 4),
    ];
    for (name, code, want) in cases {
        let k = temp_file(name, &elf_kernel(&code));
        let r = vmm(
            &["--kernel", &k, "--vcpus", "2", "--timings", "--stats"],
            SHORT,
        );
        assert_eq!(r.status, Some(want), "{name}: {}", r.tail());
        assert!(
            r.has("VMM start") && r.has("BSP first entry") && r.has("exit:"),
            "{name}: {}",
            r.tail()
        );
        assert!(r.has("exit reason"), "--stats table: {}", r.tail());
        if want == 4 {
            assert!(r.has("guest crashed: VP 0: triple fault"), "{}", r.tail());
        }
    }
}

#[test]
fn stdin_reaches_the_guest_through_com1() {
    // Poll the 16550's line status; echo every received byte; power off on 'q'.
    #[rustfmt::skip]
    let code = [
        0x66, 0xBA, 0xFD, 0x03, // 0: mov dx, LSR
        0xEC,                   // 4: in al, dx
        0xA8, 0x01,             // 5: test al, data ready
        0x74, 0xF7,             // 7: jz 0
        0x66, 0xBA, 0xF8, 0x03, // 9: mov dx, RBR/THR
        0xEC,                   // 13: in al, dx
        0xEE,                   // 14: out dx, al (echo)
        0x3C, b'q',             // 15: cmp al, 'q'
        0x75, 0xED,             // 17: jne 0
        0x66, 0xBA, 0x00, 0x06, // 19: mov dx, SLEEP_CONTROL
        0xB0, 0x34, 0xEE,       // 23: mov al, SLP_TYP 5 | SLP_EN; out dx, al
        0xEB, 0xFE,
    ];
    let k = temp_file("echo-kernel", &elf_kernel(&code));
    let r = vmm_with_input(&["--kernel", &k], Some(b"hello from stdin q"), SHORT);
    assert_eq!(r.status, Some(0), "{}", r.tail());
    assert_eq!(r.stdout, "hello from stdin q", "{}", r.tail());
}
