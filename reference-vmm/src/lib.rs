//! The reusable part of reference-vmm: virtio devices over the virtio-mmio
//! transport, with a small seam (guest memory, an interrupt, a backing file)
//! so that another VMM can take them.
//!
//! The binary (`reference-vmm`) composes them with the hvkvm crates.

pub mod virtio;
