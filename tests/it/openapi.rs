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

/// schemathesis against the committed document, with an admin key, on a server seeded with
/// real objects of every kind: no 5xx, every response as documented, schema-valid requests
/// accepted and schema-violating ones refused. Bounded in time (CI runs every suite).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schemathesis_finds_nothing() {
    let Ok(version) = std::process::Command::new("schemathesis").arg("--version").output() else {
        assert_ne!(std::env::var("LAKELEDGER_REQUIRE_SCHEMATHESIS").as_deref(), Ok("1"), "schemathesis is required (pip install schemathesis)");
        crate::support::notice("schemathesis not installed; skipping the API fuzz suite (pip install 'schemathesis==4.*')");
        return;
    };
    assert!(version.status.success());
    let s = crate::support::Server::start().await;
    let k = s.admin_key.clone();
    crate::tenancy::seed(&s, &k).await;
    let doc = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/openapi.json");
    let reports = tempfile::tempdir().unwrap();
    let max_time = std::env::var("LAKELEDGER_SCHEMATHESIS_SECONDS").unwrap_or_else(|_| "180".into());
    let out = tokio::process::Command::new("schemathesis")
        .args(["run", doc, "--url", &s.url(""), "--header", &format!("Authorization: Bearer {k}")])
        // Left out: positive_data_acceptance, since business rules a JSON schema cannot state
        // (a label the training set lacks, a name already taken) answer 422, documented on
        // each operation; negative_data_rejection, whose findings here were all optional
        // query parameters given values no query string can carry, so the request it sent
        // had none (sent by hand, such values get 400). Revoking keys and setting quotas or key
        // limits are left out too: the run would revoke its own key or throttle itself (all
        // are covered by the tenancy, audit, quota and key-limit tests).
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance,negative_data_rejection", "--exclude-operation-id", "revoke_key", "--exclude-operation-id", "set_quotas", "--exclude-operation-id", "set_key_limits"])
        .args(["--max-examples", "30", "--seed", "1", "--workers", "2", "--max-time", &max_time])
        // The generator's own health check (too many candidate inputs discarded for an
        // operation, seen on GET /v1/training-sets/{id}/data in one run of two) says nothing of
        // the server; every case that is generated is still checked.
        .args(["--suppress-health-check", "filter_too_much"])
        .args(["--request-timeout", "30", "--report", "junit", "--report-dir"])
        .arg(reports.path())
        .env("NO_COLOR", "1")
        // Its cache of past findings stays out of the tree.
        .current_dir(reports.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis found problems:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
}
