//! The Outrigger operator binary's library: command line, controllers, leader election, metrics.

pub mod cli;
pub mod controller;
pub mod leader;
pub mod metrics;
pub mod run;
pub mod webhook;
