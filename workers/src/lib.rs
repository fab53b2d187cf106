//! The jobledger worker runtime, job kinds and AI backends.

pub mod objects;

pub use objects::{FsObjectStore, ObjectError, ObjectStore};
