//! # fms-loadtest
//!
//! A load-testing harness for capacity planning: a scenario file ([`scenario`]) says who does
//! what and how much; [`run`] drives a running fms over its public interfaces — REST and tus
//! ([`client`]), the gRPC bulk API ([`grpc`]), WebSocket subscribers ([`ws`]) — open loop (a
//! schedule of arrivals: steady, ramp or steps, [`schedule`]) or closed loop (N virtual
//! users), and records latency from when each request was *due* in HDR histograms
//! ([`stats`]), so a stall is measured rather than hidden. With steps it can search for the
//! capacity: the highest arrival rate that holds the scenario's SLO, and what saturated
//! first. [`report`] sets the client's numbers beside the server's own `/metrics`;
//! [`chart`] draws them.

pub mod chart;
pub mod client;
pub mod grpc;
pub mod report;
pub mod run;
pub mod scenario;
pub mod schedule;
pub mod stats;
pub mod ws;
