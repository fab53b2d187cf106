//! Read models folded from jobledger events, and their view stores.
