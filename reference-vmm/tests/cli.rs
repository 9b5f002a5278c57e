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
    // Far more than the 16550's 64-byte receive FIFO at once (a paste): every
    // byte arrives, in order, none dropped while the FIFO was full.
    let mut long: Vec<u8> = (0..1000u32)
        .map(|i| b"0123456789abcdef"[i as usize % 16])
        .collect();
    long.extend(b" q");
    let r = vmm_with_input(&["--kernel", &k], Some(&long), SHORT);
    assert_eq!(r.status, Some(0), "{}", r.tail());
    assert_eq!(r.stdout.as_bytes(), &long[..], "{}", r.tail());
}

/// A bzImage setup header (boot.rst) with a zero payload: protocol 2.15, 64-bit
/// entry, loaded high, relocatable, 2 MiB alignment, 16 MiB preferred address,
/// `init_size` 16 MiB, `cmdline_size` 2047. `f` edits it before it is written.
fn bzimage(len: usize, f: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut h = vec![0u8; len];
    let mut put = |off: usize, bytes: &[u8]| h[off..off + bytes.len()].copy_from_slice(bytes);
    put(0x1F1, &[1]);
    put(0x1F4, &(((len - 1024) / 16) as u32).to_le_bytes());
    put(0x1FE, &0xAA55u16.to_le_bytes());
    put(0x202, b"HdrS");
    put(0x206, &0x020Fu16.to_le_bytes());
    put(0x211, &[1]);
    put(0x214, &0x10_0000u32.to_le_bytes());
    put(0x22C, &0x7FFF_FFFFu32.to_le_bytes());
    put(0x230, &0x20_0000u32.to_le_bytes());
    put(0x234, &[1]);
    put(0x236, &1u16.to_le_bytes());
    put(0x238, &2047u32.to_le_bytes());
    put(0x258, &0x100_0000u64.to_le_bytes());
    put(0x260, &(16u32 << 20).to_le_bytes());
    f(&mut h);
    h
}

/// An ELF64 kernel with one segment (type, paddr, memsz) and an entry point.
fn elf_with(class: u8, entry: u64, segs: &[(u32, u64, u64)]) -> Vec<u8> {
    let mut f = elf_kernel(&[0xEB, 0xFE]);
    f[4] = class;
    f[24..32].copy_from_slice(&entry.to_le_bytes());
    f[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
    let phdrs: Vec<u8> = segs
        .iter()
        .flat_map(|&(kind, paddr, memsz)| {
            let mut p = vec![0u8; 56];
            p[0..4].copy_from_slice(&kind.to_le_bytes());
            p[24..32].copy_from_slice(&paddr.to_le_bytes());
            p[40..48].copy_from_slice(&memsz.to_le_bytes());
            p
        })
        .collect();
    f.truncate(64);
    f.extend(phdrs);
    f.extend([0xEB, 0xFE]);
    f
}

/// Hostile kernels, initramfs files and sizes: each refused before any guest
/// runs, with one line naming the problem and status 1.
#[test]
fn hostile_images_and_sizes_are_refused_with_one_line() {
    let real = guest("minimal/bzImage");
    let real_bytes = std::fs::read(&real).unwrap();
    let ok_elf = temp_file("ok-elf", &elf_kernel(&port_write(0x600, 0x34)));
    let fifo = repo().join(format!("target/test-tmp/{}-fifo", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let fifo = fifo.to_string_lossy().into_owned();
    let sparse = repo().join(format!("target/test-tmp/{}-sparse-1G", std::process::id()));
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let sparse = sparse.to_string_lossy().into_owned();
    let long_cmdline = "x".repeat(3000);

    type Case = (&'static str, Vec<u8>, Vec<String>, &'static str);
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let cases: Vec<Case> = vec![
        (
            "bzImage truncated to 64 KiB",
            real_bytes[..64 << 10].to_vec(),
            s(&[]),
            "truncated",
        ),
        (
            "bzImage truncated to half",
            real_bytes[..real_bytes.len() / 2].to_vec(),
            s(&[]),
            "truncated",
        ),
        (
            "a 4 KiB bzImage",
            real_bytes[..4096].to_vec(),
            s(&[]),
            "truncated",
        ),
        (
            "setup_sects 255",
            bzimage(64 << 10, |h| h[0x1F1] = 255),
            s(&[]),
            "truncated",
        ),
        (
            "setup_sects 0 (4) with a payload past the file",
            bzimage(4096, |h| h[0x1F1] = 0),
            s(&[]),
            "truncated",
        ),
        (
            "init_size larger than RAM",
            bzimage(8192, |h| {
                h[0x260..0x264].copy_from_slice(&(600u32 << 20).to_le_bytes())
            }),
            s(&[]),
            "needs 616 MiB of RAM below 4 GiB",
        ),
        (
            "a stock-like kernel in 64 MiB (16 MiB alignment + 52 MiB init_size)",
            bzimage(8192, |h| {
                h[0x230..0x234].copy_from_slice(&(16u32 << 20).to_le_bytes());
                h[0x260..0x264].copy_from_slice(&(52u32 << 20).to_le_bytes());
            }),
            s(&["--memory", "64M"]),
            "needs 68 MiB of RAM below 4 GiB",
        ),
        (
            "no 64-bit entry",
            bzimage(8192, |h| h[0x236] = 0),
            s(&[]),
            "no 64-bit entry point",
        ),
        (
            "boot protocol 2.11",
            bzimage(8192, |h| h[0x206] = 0x0B),
            s(&[]),
            "older than 2.12",
        ),
        (
            "a command line longer than cmdline_size",
            bzimage(8192, |_| {}),
            vec!["--cmdline".into(), long_cmdline.clone()],
            "this kernel takes at most 2047",
        ),
        (
            "initrd_addr_max 0",
            bzimage(8192, |h| h[0x22C..0x230].fill(0)),
            vec!["--initramfs".into(), guest("busybox.cpio")],
            "takes an initramfs only below 0x1 (initrd_addr_max)",
        ),
        (
            "ELF p_paddr + p_memsz overflows",
            elf_with(2, 0x100_0000, &[(1, u64::MAX - 0xFFF, 0x2000)]),
            s(&[]),
            "overflows",
        ),
        (
            "ELF segment below 1 MiB",
            elf_with(2, 0x8_0000, &[(1, 0x8_0000, 0x1000)]),
            s(&[]),
            "below 1 MiB",
        ),
        (
            "ELF without PT_LOAD",
            elf_with(2, 0x100_0000, &[(4, 0x100_0000, 0x1000)]),
            s(&[]),
            "no PT_LOAD",
        ),
        (
            "ELFCLASS32",
            elf_with(1, 0x100_0000, &[(1, 0x100_0000, 0x1000)]),
            s(&[]),
            "32-bit ELF",
        ),
        (
            "ELF entry outside every segment",
            elf_with(2, 0x300_0000, &[(1, 0x100_0000, 0x1000)]),
            s(&[]),
            "outside every loaded segment",
        ),
    ];
    for (name, image, extra, needle) in cases {
        let k = temp_file(&name.replace(' ', "-"), &image);
        let mut args = vec!["--kernel".to_string(), k];
        args.extend(extra);
        let args: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
        let r = vmm(&args, SHORT);
        assert!(
            r.elapsed < Duration::from_secs(20),
            "{name}: {:?}",
            r.elapsed
        );
        one_error_line(&r, needle);
    }
    let files: [(&str, Vec<&str>, &str); 5] = [
        (
            "kernel is a FIFO",
            vec!["--kernel", &fifo],
            "not a regular file",
        ),
        (
            "initramfs is /dev/zero",
            vec!["--kernel", &ok_elf, "--initramfs", "/dev/zero"],
            "not a regular file",
        ),
        (
            "a 1 GiB initramfs for a 512 MiB guest",
            vec!["--kernel", &ok_elf, "--initramfs", &sparse],
            "the 1 GiB initramfs need at least",
        ),
        (
            "memory not a page multiple",
            vec!["--kernel", &ok_elf, "--memory", "100000001"],
            "not a multiple of 4 KiB",
        ),
        (
            "memory named with units",
            vec!["--kernel", &ok_elf, "--memory", "8M"],
            "--memory 8 MiB is too small",
        ),
    ];
    for (name, args, needle) in files {
        let r = vmm(&args, SHORT);
        assert!(
            r.elapsed < Duration::from_secs(20),
            "{name}: {:?}",
            r.elapsed
        );
        one_error_line(&r, needle);
    }
    let _ = std::fs::remove_file(&fifo);
    let _ = std::fs::remove_file(&sparse);
}

/// A stderr or stdout whose reader has gone loses output and nothing else.
#[test]
fn broken_stderr_and_stdout_change_nothing_but_the_lost_output() {
    use std::process::{Command, Stdio};
    // A guest that prints on COM1, then powers off.
    let mut code = vec![];
    for b in b"hello\n" {
        code.extend([0x66, 0xBA, 0xF8, 0x03, 0xB0, *b, 0xEE]);
    }
    code.extend(port_write(0x600, 0x34));
    let k = temp_file("hello-kernel", &elf_kernel(&code));
    let bad = temp_file("bad-kernel", b"not a kernel at all");
    for (kernel, want) in [(&k, 0), (&bad, 1)] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_reference-vmm"))
            .args(["--kernel", kernel, "--timings", "--stats"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Both readers gone before the VMM writes a byte.
        drop(child.stdout.take());
        drop(child.stderr.take());
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(want), "{kernel}: {status:?}");
    }
}

/// The seccomp filter: a VP thread making a system call it does not allow ends
/// the VMM with one line and status 1; without the filter the same run is fine.
#[test]
fn a_forbidden_system_call_on_a_vp_thread_ends_the_vmm_cleanly() {
    let k = temp_file("spin-kernel", &elf_kernel(&[0xEB, 0xFE]));
    let r = vmm(
        &[
            "--kernel",
            &k,
            "--vcpus",
            "2",
            "--debug-forbidden-syscall",
            "1",
        ],
        SHORT,
    );
    assert_eq!(r.status, Some(1), "{}", r.tail());
    assert!(
        r.stderr
            .contains("system call        110 forbidden by the seccomp filter"),
        "getppid is 110: {}",
        r.tail()
    );
    let k = temp_file("poweroff-kernel-2", &elf_kernel(&port_write(0x600, 0x34)));
    let r = vmm(
        &[
            "--kernel",
            &k,
            "--vcpus",
            "2",
            "--no-seccomp",
            "--debug-forbidden-syscall",
            "1",
        ],
        SHORT,
    );
    assert_eq!(r.status, Some(0), "{}", r.tail());
}

/// SIGTERM ends the guest and the VMM: status 143, the console flushed.
#[test]
fn sigterm_ends_the_guest_and_the_vmm() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut code = vec![];
    for b in b"up\n" {
        code.extend([0x66, 0xBA, 0xF8, 0x03, 0xB0, *b, 0xEE]);
    }
    code.extend([0xEB, 0xFE]);
    let k = temp_file("up-kernel", &elf_kernel(&code));
    let mut child = Command::new(env!("CARGO_BIN_EXE_reference-vmm"))
        .args(["--kernel", &k, "--vcpus", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 3];
    out.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"up\n");
    // SAFETY: kill with the child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(143), "{err}");
    assert!(err.contains("stopped by signal 15"), "{err}");
}

/// A flood written to COM1 with `rep outsb` arrives on stdout, every byte in
/// order. `HVKVM_FLOOD_BYTES` sets the size (default 512 KiB: both KVMs this runs
/// on in CI exit once per byte of a string OUT, 12 us each on PVM and about 130 us
/// in the nested tier; by hand, e.g. 4 MiB).
#[test]
fn a_serial_flood_arrives_whole_and_in_order() {
    let len: usize = std::env::var("HVKVM_FLOOD_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512 << 10);
    let data: Vec<u8> = (0..len)
        .map(|i| {
            if i % 64 == 63 {
                b'\n'
            } else {
                b'a' + (i % 61 % 26) as u8
            }
        })
        .collect();
    // mov rsi, DATA; mov rcx, LEN; mov dx, COM1; cld; rep outsb; power off.
    let data_at = 0x100_0000u64 + 120 + 64;
    let mut blob = vec![0x48, 0xBE];
    blob.extend(data_at.to_le_bytes());
    blob.extend([0x48, 0xB9]);
    blob.extend((len as u64).to_le_bytes());
    blob.extend([0x66, 0xBA, 0xF8, 0x03, 0xFC, 0xF3, 0x6E]);
    blob.extend(port_write(0x600, 0x34));
    blob.resize(64, 0x90);
    blob.extend(&data);
    let k = temp_file("flood-kernel", &elf_kernel(&blob));
    let r = vmm(&["--kernel", &k], Duration::from_secs(600));
    assert_eq!(r.status, Some(0), "{}", r.tail());
    assert_eq!(r.stdout.len(), len, "bytes received");
    assert!(
        r.stdout.as_bytes() == data.as_slice(),
        "every byte in order"
    );
    eprintln!(
        "serial flood: {len} bytes sent, {} received in order in {:.1} s",
        r.stdout.len(),
        r.elapsed.as_secs_f64()
    );
}
