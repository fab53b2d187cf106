//! `jobledger cost` (cli/src/cost.rs) compiled against this crate's price table, so its estimate
//! tests run with the backend tests (the cli crate wires the same file into its binary).

#[allow(dead_code)]
#[path = "../../cli/src/cost.rs"]
mod cost;
