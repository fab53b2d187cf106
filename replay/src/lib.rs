//! The auditor's tool: history, state at any point, verify, rebuild, export.
