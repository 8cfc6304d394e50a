//! End-to-end tests for lakeledger live in `it/`.
