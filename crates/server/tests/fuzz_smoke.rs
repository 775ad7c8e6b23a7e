//! The fuzz targets' smoke run: every target body of `fuzz/` on its seeds and on random
//! and mutated inputs, built with the workspace's tests. (The fuzz crate itself needs
//! cargo-fuzz and libFuzzer, whose C++ build would double the test command's cold time;
//! its long runs are in fuzz/README.md.)
#![allow(clippy::unwrap_used)]

#[path = "../../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod targets;
