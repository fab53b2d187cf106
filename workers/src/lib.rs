//! The jobledger worker runtime, job kinds and AI backends.
