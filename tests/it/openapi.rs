/// The committed OpenAPI document must match what the code generates. To update it:
/// `cargo run -p lakeledger -- openapi > openapi/openapi.json`.
#[test]
fn committed_openapi_document_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/openapi.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let generated = lakeledger::http::openapi_document();
    assert!(
        committed == generated,
        "openapi/openapi.json is out of date; regenerate it with `cargo run -p lakeledger -- openapi > openapi/openapi.json`"
    );
}
