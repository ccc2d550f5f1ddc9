//! Userspace-only impls: lets aya read and write the shared types in maps.

use crate::maps::{ConnControl, ConnState, FdEntry, SocketKey};
use crate::settings::Settings;

// SAFETY: each type is #[repr(C)], made only of integers and byte arrays, with explicit padding
// fields, so every bit pattern is valid and there are no uninitialised bytes.
unsafe impl aya::Pod for SocketKey {}
// SAFETY: as above.
unsafe impl aya::Pod for FdEntry {}
// SAFETY: as above.
unsafe impl aya::Pod for ConnState {}
// SAFETY: as above.
unsafe impl aya::Pod for ConnControl {}
// SAFETY: as above.
unsafe impl aya::Pod for Settings {}
