//! Running the reference-vmm binary in tests.
#![allow(dead_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a run printed and how it ended.
pub struct Run {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn has(&self, needle: &str) -> bool {
        self.stdout.contains(needle) || self.stderr.contains(needle)
    }

    pub fn count(&self, needle: &str) -> usize {
        self.stdout.matches(needle).count() + self.stderr.matches(needle).count()
    }

    /// The tail of the output, for failure messages.
    pub fn tail(&self) -> String {
        let out: Vec<&str> = self.stdout.lines().rev().take(25).collect();
        let err: Vec<&str> = self.stderr.lines().rev().take(25).collect();
        format!(
            "status {:?} after {:.1} s\n--- stdout (last lines)\n{}\n--- stderr (last lines)\n{}",
            self.status,
            self.elapsed.as_secs_f64(),
            out.into_iter().rev().collect::<Vec<_>>().join("\n"),
            err.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

/// The kernel command line reference-vmm uses by default.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 panic=-1 pci=off";

/// Runs reference-vmm with `args`, killing it after `limit`.
pub fn vmm(args: &[&str], limit: Duration) -> Run {
    vmm_with_input(args, None, limit)
}

/// [`vmm`] with `input` on its stdin.
pub fn vmm_with_input(args: &[&str], input: Option<&[u8]>, limit: Duration) -> Run {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_reference-vmm"))
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn reference-vmm");
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Run {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
        elapsed: start.elapsed(),
    }
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A guest artifact built by guests/build.sh; the test fails, never skips, when it
/// is missing.
pub fn guest(rel: &str) -> String {
    let p = repo().join("target/guests").join(rel);
    assert!(
        p.exists(),
        "{} is missing: run guests/build.sh (scripts/test-all.sh does) before the boot tests",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

/// Whether this host's KVM is PVM, where guest user space cannot make syscalls.
pub fn pvm_host() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// A minimal ELF64 "kernel": one PT_LOAD segment with `code` at physical 16 MiB,
/// entered in 64-bit mode by the VMM's boot path.
pub fn elf_kernel(code: &[u8]) -> Vec<u8> {
    let base: u64 = 0x100_0000;
    let (ehdr, phdr) = (64u16, 56u16);
    let off = (ehdr + phdr) as u64;
    let mut f = Vec::new();
    f.extend(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    f.extend(2u16.to_le_bytes()); // ET_EXEC
    f.extend(62u16.to_le_bytes()); // x86-64
    f.extend(1u32.to_le_bytes());
    f.extend((base + off).to_le_bytes()); // entry
    f.extend((ehdr as u64).to_le_bytes()); // phoff
    f.extend(0u64.to_le_bytes()); // shoff
    f.extend(0u32.to_le_bytes());
    f.extend(ehdr.to_le_bytes());
    f.extend(phdr.to_le_bytes());
    f.extend(1u16.to_le_bytes());
    f.extend([0u8; 6]);
    f.extend(1u32.to_le_bytes()); // PT_LOAD
    f.extend(5u32.to_le_bytes()); // R X
    f.extend(0u64.to_le_bytes()); // offset
    f.extend((base).to_le_bytes()); // vaddr
    f.extend((base).to_le_bytes()); // paddr
    let size = off + code.len() as u64;
    f.extend(size.to_le_bytes());
    f.extend(size.to_le_bytes());
    f.extend(0x1000u64.to_le_bytes());
    f.extend(code);
    f
}

/// Writes `bytes` to a fresh file in the test's temp area; returns its path.
pub fn temp_file(name: &str, bytes: &[u8]) -> String {
    let dir = repo().join("target/test-tmp");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{}-{}", std::process::id(), name));
    std::fs::write(&p, bytes).unwrap();
    p.to_string_lossy().into_owned()
}

/// Runs reference-vmm with `args` and kills it (SIGKILL) as soon as its
/// standard output shows `marker`, or after `limit`. `status` is `None` when
/// it was killed.
pub fn vmm_until(args: &[&str], marker: &str, limit: Duration) -> Run {
    use std::io::BufRead;
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_reference-vmm"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn reference-vmm");
    let out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let mut stdout = String::new();
    let mut status = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                stdout.push_str(&line);
                stdout.push('\n');
                if line.contains(marker) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                status = child.wait().unwrap().code();
                break;
            }
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
    }
    while let Ok(line) = rx.try_recv() {
        stdout.push_str(&line);
        stdout.push('\n');
    }
    Run {
        status,
        stdout,
        stderr: t_err.join().unwrap(),
        elapsed: start.elapsed(),
    }
}

/// A private copy of a guest disk image (tests write to it), removed on drop.
pub struct DiskCopy(pub PathBuf);

impl DiskCopy {
    pub fn of(rel: &str, name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("hvkvm-{}-{name}", std::process::id()));
        std::fs::copy(guest(rel), &p).expect("copy the disk image");
        DiskCopy(p)
    }

    pub fn path(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

impl Drop for DiskCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
