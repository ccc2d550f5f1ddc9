//! Library target so the userspace crate can depend on this one and be rebuilt when it changes;
//! the programs themselves are in the `sensor` binary target (see `main.rs`).
#![no_std]
