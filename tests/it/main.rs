//! Integration tests: real companions on ephemeral loopback ports, real
//! HTTP, real SQLite files. One test binary, so the crate links once.

mod accounting;
mod attacks;
mod attacks_database;
mod attacks_listeners;
mod attacks_memory;
mod attacks_oauth;
mod auth;
mod budgets;
mod cli;
mod cluster;
mod control;
mod daemon;
mod endpoints;
mod heist;
mod hostile_process;
mod model;
mod model_double;
mod ops;
mod postgres;
mod properties;
mod rate_limits;
mod resilience;
mod services_process;
mod store_contract;
mod support;
mod systemd;
mod tidy;
mod tls;
mod tokens;
mod tools;
