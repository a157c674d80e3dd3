//! # fms-loadtest
//!
//! A load-testing harness for capacity planning: a scenario file ([`scenario`]) says who does
//! what and how much; [`run`] drives a running fms over its public REST API, open loop (a
//! schedule of arrivals, [`schedule`]) or closed loop (N virtual users), and records latency
//! from when each request was *due* in HDR histograms ([`stats`]), so a stall is measured
//! rather than hidden; [`report`] sets the client's numbers beside the server's own
//! `/metrics` and checks the scenario's SLO.
//!
//! First part (issue 10): REST actions (upload, download whole and ranged, list, login),
//! open and closed loop with a ramp, Markdown and JSON reports. Not yet: tus and gRPC and
//! WebSocket actions, the capacity search, charts, server CPU/memory.

pub mod report;
pub mod run;
pub mod scenario;
pub mod schedule;
pub mod stats;
