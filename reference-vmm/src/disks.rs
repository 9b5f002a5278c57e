//! `--disk`: raw images as virtio-blk devices on the virtio-mmio transport,
//! each with its register window and GSI from `layout`, an irqfd for its
//! interrupt and, where KVM offers it, an ioeventfd on QueueNotify whose
//! requests the main thread's event loop serves (without one, the VP thread
//! that wrote QueueNotify serves them).

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use reference_vmm::virtio::block::{Block, Counters, DiskFile, DmaGuard};
use reference_vmm::virtio::mmio::{reg, MmioTransport, WINDOW};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::layout;

/// One `--disk` argument: `PATH` or `PATH,ro`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// The raw image.
    pub path: PathBuf,
    /// The guest may only read it.
    pub read_only: bool,
}

/// Parses `PATH[,ro]` (clap's value parser).
pub fn parse_disk(s: &str) -> Result<DiskSpec, String> {
    let (path, read_only) = match s.rsplit_once(',') {
        Some((p, "ro")) => (p, true),
        Some((p, "rw")) => (p, false),
        Some((_, opt)) => {
            return Err(format!(
                "unknown disk option '{opt}' (only 'ro' or 'rw'; a path with a comma ends in ',rw')"
            ))
        }
        None => (s, false),
    };
    if path.is_empty() {
        return Err("a disk needs a path".into());
    }
    Ok(DiskSpec {
        path: path.into(),
        read_only,
    })
}

/// A virtio-blk device as the VMM holds it.
pub type Transport = Arc<Mutex<MmioTransport<Block>>>;

/// One disk on the bus.
pub struct Slot {
    /// Its register window.
    pub base: u64,
    /// The device.
    pub transport: Transport,
    /// QueueNotify's ioeventfd, if KVM took it.
    pub notify: Option<EventFd>,
}

/// Opens every disk (before KVM is touched: a bad path is a usage error).
pub fn open(specs: &[DiskSpec]) -> Result<Vec<DiskFile>, String> {
    if specs.len() > layout::VIRTIO_MAX {
        return Err(format!(
            "{} disks: at most {} are supported",
            specs.len(),
            layout::VIRTIO_MAX
        ));
    }
    specs
        .iter()
        .map(|d| DiskFile::open(&d.path, d.read_only).map_err(|e| e.to_string()))
        .collect()
}

/// Puts the disks on the bus of `vm`: an irqfd each, and an ioeventfd on
/// QueueNotify where KVM takes one.
pub fn attach(vm: &VmFd, disks: Vec<DiskFile>, guard: DmaGuard) -> Result<Vec<Slot>, String> {
    disks
        .into_iter()
        .enumerate()
        .map(|(i, disk)| {
            let (base, gsi) = layout::virtio_slot(i);
            let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| e.to_string())?;
            vm.register_irqfd(&irq, gsi)
                .map_err(|e| format!("KVM_IRQFD for disk {i} (GSI {gsi}): {e}"))?;
            let notify = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| e.to_string())?;
            let notify = match vm.register_ioevent(
                &notify,
                &IoEventAddress::Mmio(base + reg::QUEUE_NOTIFY),
                NoDatamatch,
            ) {
                Ok(()) => Some(notify),
                Err(e) => {
                    log::info!("disk {i}: no ioeventfd ({e}); VP threads serve its queue");
                    None
                }
            };
            Ok(Slot {
                base,
                transport: Arc::new(Mutex::new(MmioTransport::new(
                    Block::new(disk).with_guard(guard.clone()),
                    Box::new(irq),
                ))),
                notify,
            })
        })
        .collect()
}

/// The disk whose window holds `gpa`, and the offset in it.
pub fn find(slots: &[Slot], gpa: u64) -> Option<(&Slot, u64)> {
    let i = gpa.checked_sub(layout::VIRTIO_MMIO)? / layout::VIRTIO_STRIDE;
    let s = slots.get(usize::try_from(i).ok()?)?;
    let off = gpa - s.base;
    (off < WINDOW).then_some((s, off))
}

/// Serves a disk's queue when its ioeventfd fires (the main thread's loop).
pub struct Notifier {
    /// The device.
    pub transport: Transport,
    /// Its QueueNotify eventfd.
    pub event: EventFd,
    /// Guest memory.
    pub mem: GuestMemoryMmap,
}

impl MutEventSubscriber for Notifier {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() != self.event.as_raw_fd() {
            return;
        }
        let _ = self.event.read();
        let mut t = self.transport.lock().unwrap_or_else(|e| e.into_inner());
        t.notify(0, &self.mem);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.event, EventSet::IN)) {
            log::warn!("disk: cannot watch its queue notifications: {e:?}");
        }
    }
}

/// Each disk's path and request counters (for `--stats`).
pub fn counters(slots: &[Slot]) -> Vec<(PathBuf, Counters)> {
    slots
        .iter()
        .map(|s| {
            let t = s.transport.lock().unwrap_or_else(|e| e.into_inner());
            (
                t.device().disk().path().to_path_buf(),
                t.device().counters(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_arguments() {
        assert_eq!(
            parse_disk("a.img"),
            Ok(DiskSpec {
                path: "a.img".into(),
                read_only: false
            })
        );
        assert_eq!(parse_disk("/x/a,b.img,ro").map(|d| d.read_only), Ok(true));
        assert_eq!(
            parse_disk("/x/a,b.img,ro").map(|d| d.path),
            Ok("/x/a,b.img".into())
        );
        assert_eq!(parse_disk("a.img,rw").map(|d| d.read_only), Ok(false));
        assert!(parse_disk("a.img,wat").is_err());
        assert!(parse_disk(",ro").is_err());
        assert!(parse_disk("").is_err());
    }

    #[test]
    fn windows() {
        let slots: Vec<Slot> = vec![];
        assert!(find(&slots, layout::VIRTIO_MMIO).is_none());
        assert!(find(&slots, 0).is_none());
    }
}
