//! Integration tests: the real daemon on loopback, real TLS, real RocksDB in a temp dir,
//! driven by our CLI and client and by `openssl` and `curl`.

#![allow(clippy::unwrap_used)]

mod admission;
mod attack;
mod bad_input;
mod cas;
mod console;
mod crash;
mod est;
mod fleet;
mod hsm;
mod in_process;
mod lifecycle;
mod loadtest;
mod management;
mod monitoring;
mod openziti_api;
mod ops;
mod ott;
mod postgres;
mod postgres_server;
mod property;
mod renewal;
mod revoke;
mod secrets;
mod store_contract;
mod support;
mod version;
