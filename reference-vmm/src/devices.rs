//! The platform: a 16550 on COM1 (vm-superio), ACPI power-off and reset
//! registers, the i8042 reset command, harmless legacy ports, and the ACPI MP
//! wakeup mailbox, whose wakeup command starts an AP through
//! StartVirtualProcessor, and the register windows of the virtio-mmio disks.

use std::io::Write;
use std::sync::{Arc, Mutex};

use hv_defs::{VpIndex, Vtl};
use hv_partition::Partition;
use vm_superio::{serial::SerialEvents, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::{RESET_PORT, RESET_VALUE, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT, SLP_EN};
use crate::boot::context64;
use crate::layout::MAILBOX;
use crate::timeline::Timeline;

/// COM1.
pub const COM1: u16 = 0x3F8;

/// How the guest ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// ACPI S5.
    PowerOff,
    /// ACPI reset register, i8042 reset, or a KVM reset event.
    Reboot,
    /// Triple fault, unhandleable emulation failure, or another fatal exit.
    Crash(String),
    /// The VMM itself failed while the guest ran (a VP thread ended abnormally).
    VmmFailure(String),
    /// The VMM was asked to stop by this signal (SIGTERM, SIGINT).
    Signal(i32),
}

impl GuestExit {
    /// The process exit status (documented in `--help` and the README).
    pub fn status(&self) -> i32 {
        match self {
            GuestExit::PowerOff => 0,
            GuestExit::VmmFailure(_) => 1,
            GuestExit::Reboot => 3,
            GuestExit::Crash(_) => 4,
            GuestExit::Signal(n) => 128 + n,
        }
    }
}

/// Records how the guest ended and wakes the main thread.
pub struct ExitSignal {
    exit: Mutex<Option<GuestExit>>,
    /// Readable once an exit is recorded.
    pub event: EventFd,
}

impl ExitSignal {
    /// A signal with nothing recorded.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            exit: Mutex::new(None),
            event: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Records `e` unless an exit is already recorded.
    pub fn set(&self, e: GuestExit) {
        let mut g = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(e);
            let _ = self.event.write(1);
        }
    }

    /// The recorded exit.
    pub fn get(&self) -> Option<GuestExit> {
        self.exit.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The serial port's interrupt: an eventfd registered as an irqfd on GSI 4.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Signals (an eventfd) when the guest has read the serial port's receive
/// FIFO empty, so that the console can give it the input it held back.
pub struct InputDrained(pub EventFd);

impl SerialEvents for InputDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        let _ = self.0.write(1);
    }
}

/// The serial port as the devices use it.
pub type Com1 = Serial<IrqTrigger, InputDrained, Box<dyn Write + Send>>;

/// Everything the VP threads reach on an exit.
pub struct Devices {
    /// COM1.
    pub serial: Mutex<Com1>,
    /// Written when the guest drained COM1's receive FIFO.
    pub input_drained: EventFd,
    mailbox: Mutex<[u8; 4096]>,
    /// Whether the MADT advertises the mailbox; if not, its page is plain
    /// unbacked MMIO.
    mailbox_enabled: bool,
    /// Refused wakeups are guest-triggered: their messages are rate-limited.
    refused_wakeups: crate::diag::RateLimit,
    /// How the guest ended.
    pub exit: ExitSignal,
    partition: Arc<Partition>,
    timeline: Arc<Timeline>,
    /// The virtio-blk disks.
    pub disks: Vec<crate::disks::Slot>,
    mem: vm_memory::GuestMemoryMmap,
    handled: Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl Devices {
    /// The devices of `partition`; the serial port writes to `out`; the MP wakeup
    /// mailbox answers only if `mailbox` (the MADT advertises it).
    pub fn new(
        partition: Arc<Partition>,
        serial_irq: EventFd,
        out: Box<dyn Write + Send>,
        timeline: Arc<Timeline>,
        mailbox: bool,
        disks: Vec<crate::disks::Slot>,
    ) -> std::io::Result<Self> {
        let mem = partition.memory().clone();
        let input_drained = EventFd::new(libc::EFD_NONBLOCK)?;
        let events = InputDrained(input_drained.try_clone()?);
        Ok(Devices {
            serial: Mutex::new(Serial::with_events(IrqTrigger(serial_irq), events, out)),
            input_drained,
            mailbox: Mutex::new([0; 4096]),
            mailbox_enabled: mailbox,
            refused_wakeups: crate::diag::RateLimit::new(),
            exit: ExitSignal::new()?,
            partition,
            timeline,
            disks,
            mem,
            handled: Mutex::new(Default::default()),
        })
    }

    /// Counts an emulation failure the VMM completed (`int3`, `fwait`).
    pub fn count_handled(&self, what: &'static str) {
        *self
            .handled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(what)
            .or_default() += 1;
    }

    /// The emulation failures the VMM completed, by instruction.
    pub fn handled(&self) -> Vec<(&'static str, u64)> {
        let m = self.handled.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// A port write. `data` holds every element of a string instruction: each
    /// byte written to COM1's data register is sent in order.
    pub fn io_out(&self, port: u16, data: &[u8]) {
        let byte = data.first().copied().unwrap_or(0);
        match port {
            COM1 => {
                let mut s = self.serial.lock().unwrap_or_else(|e| e.into_inner());
                for &b in data {
                    let _ = s.write(0, b);
                }
            }
            0x3F9..=0x3FF => {
                let mut s = self.serial.lock().unwrap_or_else(|e| e.into_inner());
                let _ = s.write((port - COM1) as u8, byte);
            }
            SLEEP_CONTROL_PORT if byte & SLP_EN != 0 => self.exit.set(GuestExit::PowerOff),
            RESET_PORT if byte == RESET_VALUE => self.exit.set(GuestExit::Reboot),
            // i8042: 0xFE on the command port pulses the reset line.
            0x64 if byte == 0xFE => self.exit.set(GuestExit::Reboot),
            // Sleep status, CMOS (the warm-reset vector), POST codes, PCI config,
            // PIT/speaker probing: harmless.
            _ => {}
        }
    }

    /// A port read.
    pub fn io_in(&self, port: u16, data: &mut [u8]) {
        match port {
            COM1..=0x3FF => {
                let mut s = self.serial.lock().unwrap_or_else(|e| e.into_inner());
                data.fill(0);
                if let Some(b) = data.first_mut() {
                    *b = s.read((port - COM1) as u8);
                }
            }
            // The i8042 status port: nothing pending, input buffer empty.
            0x64 | SLEEP_STATUS_PORT | 0x70 | 0x71 => data.fill(0),
            _ => data.fill(0xFF),
        }
    }

    /// An MMIO write: the disks' register windows, and the MP wakeup mailbox
    /// when the MADT advertises it.
    pub fn mmio_write(&self, gpa: u64, data: &[u8]) {
        if let Some((slot, off)) = crate::disks::find(&self.disks, gpa) {
            let mut t = slot.transport.lock().unwrap_or_else(|e| e.into_inner());
            t.write(off, data, &self.mem);
            return;
        }
        let Some(off) = self.mailbox_offset(gpa) else {
            return;
        };
        let off = off as usize;
        let mut mb = self.mailbox.lock().unwrap_or_else(|e| e.into_inner());
        let end = (off + data.len()).min(4096);
        mb[off..end].copy_from_slice(&data[..end - off]);
        // The OS writes the 16-bit command last; 1 is WAKEUP.
        if off == 0 && u16::from_le_bytes([mb[0], mb[1]]) == 1 {
            let apic_id = u32::from_le_bytes(mb[4..8].try_into().unwrap_or_default());
            let vector = u64::from_le_bytes(mb[8..16].try_into().unwrap_or_default());
            self.wake_ap(apic_id, vector);
            // Acknowledge before the BSP polls.
            mb[0] = 0;
            mb[1] = 0;
        }
    }

    fn mailbox_offset(&self, gpa: u64) -> Option<u64> {
        let off = gpa.checked_sub(MAILBOX).filter(|&o| o < 4096)?;
        self.mailbox_enabled.then_some(off)
    }

    /// An MMIO read.
    pub fn mmio_read(&self, gpa: u64, data: &mut [u8]) {
        if let Some((slot, off)) = crate::disks::find(&self.disks, gpa) {
            let t = slot.transport.lock().unwrap_or_else(|e| e.into_inner());
            t.read(off, data);
            return;
        }
        match self.mailbox_offset(gpa) {
            Some(off) => {
                let mb = self.mailbox.lock().unwrap_or_else(|e| e.into_inner());
                for (i, b) in data.iter_mut().enumerate() {
                    *b = mb.get(off as usize + i).copied().unwrap_or(0);
                }
            }
            None => data.fill(0xFF),
        }
    }

    fn wake_ap(&self, apic_id: u32, vector: u64) {
        let r = self
            .partition
            .vp_index_from_apic_id(apic_id)
            .map_err(hv_partition::VpError::from)
            .and_then(|vp: VpIndex| {
                self.partition
                    .start_virtual_processor(vp, Vtl::VTL0, &context64(vector, 0))
                    .map(|()| vp)
            });
        match r {
            Ok(vp) => self.timeline.mark(&format!(
                "mailbox wakeup: APIC id {apic_id} is VP {}, started at vector {vector:#x}",
                vp.0
            )),
            Err(e) => {
                if let Some(n) = self.refused_wakeups.allow() {
                    log::warn!("mailbox wakeup of APIC id {apic_id} refused: {e} (refusal {n})");
                }
            }
        }
    }
}
