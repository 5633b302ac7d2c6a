//! The health adapter.
