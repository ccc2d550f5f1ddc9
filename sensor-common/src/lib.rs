//! Types shared by the kernel programs (`sensor-ebpf`) and the userspace daemon (`sensor`).
//!
//! Every type here is `#[repr(C)]` and plain data, so both sides agree on its layout byte for
//! byte. Ring-buffer records all start with an [`event::EventHeader`] whose first field is the
//! record's kind; the maps the two sides share are named by the constants in [`maps`].
#![no_std]

pub mod event;
pub mod maps;
pub mod settings;

#[cfg(feature = "user")]
mod user;
