//! The configuration reference.
