//! Integration tests: real companions on ephemeral loopback ports, real
//! HTTP, real SQLite files. One test binary, so the crate links once.

mod attacks;
mod auth;
mod cli;
mod daemon;
mod heist;
mod model;
mod model_double;
mod ops;
mod properties;
mod resilience;
mod support;
mod systemd;
mod tidy;
mod tools;
