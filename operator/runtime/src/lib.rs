//! The Outrigger operator binary's library: command line, controllers and servers.

pub mod cli;
