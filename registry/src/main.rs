//! `lakeledger`: serve the API, manage keys and the audit ledger offline, train, print
//! the OpenAPI document.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    lakeledger::cli::main()
}
