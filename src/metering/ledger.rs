//! The spend ledger: what each key spent, per month and per hour, durable across restarts.
//! (Filled in by the ledger implementation.)
