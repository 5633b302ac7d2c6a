//! Whether an object already holds everything we would apply, so an unchanged child costs no write.
//! The comparison is the contract's, shared with the sidecars and the cluster tests.

pub use outrigger_contract::json::is_subset;
