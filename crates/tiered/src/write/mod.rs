//! The write paths: write-through and write-behind to a [`Store`].
//!
//! (Module docs are completed with the write-behind queue.)

pub mod store;

pub use store::{Store, StoreError, StoreErrorKind, StoreFuture, StoreWrite};
