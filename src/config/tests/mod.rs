//! Tests of config loading, one file per concern: layering, problems,
//! secrets, schedules, printed output, and the generated reference.

use std::path::Path;

use super::load::is_same_or_below;
use super::*;
use crate::config::test_kit::config_file as write;

mod endpoints;
mod field_docs;
mod layers;
mod printed;
mod problems;
mod reference;
mod schedules;
mod secrets;
