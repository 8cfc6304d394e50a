//! One conformance suite for every catalog backend.

use lakeledger::platform::catalog::{
    Catalog, FeatureGroupRecord, GroupMetadata, GroupState, JobRecord, ModelRecord, ModelVersionRecord, NewApiKey, Role, Tenant, VersionRecord,
};
use lakeledger::error::Error;

use crate::support::{fresh_postgres_schema, postgres_url};

async fn conformance(c: &dyn Catalog) {
    c.ping().await.unwrap();
    let t = Tenant { id: "ten_1".into(), name: "acme".into(), created_at: 1 };
    c.create_tenant(&t).await.unwrap();
    assert!(matches!(c.create_tenant(&Tenant { id: "ten_2".into(), ..t.clone() }).await, Err(Error::AlreadyExists { .. })));
    assert_eq!(c.tenant_by_name("acme").await.unwrap().unwrap().id, "ten_1");
    assert!(c.tenant_by_name("nope").await.unwrap().is_none());

    let key = NewApiKey {
        id: "key_1".into(),
        tenant_id: "ten_1".into(),
        name: "ci".into(),
        role: Role::Writer,
        secret_hash: "h1".into(),
        created_at: 5,
        created_by: "test".into(),
    };
    c.create_key(&key).await.unwrap();
    let (k, tenant) = c.key_by_hash("h1").await.unwrap().unwrap();
    assert_eq!((k.role, tenant.name.as_str()), (Role::Writer, "acme"));
    assert!(c.revoke_key("ten_1", "key_1", 9).await.unwrap());
    assert!(!c.revoke_key("ten_1", "key_1", 9).await.unwrap(), "revoking twice reports nothing revoked");
    assert!(c.key_by_hash("h1").await.unwrap().is_none());
    assert_eq!(c.list_keys("ten_1").await.unwrap()[0].revoked_at, Some(9));

    let schema: lakeledger_query::FeatureSchema = serde_json::from_str(
        r#"{"entity_keys":[{"name":"id","type":"string"}],"event_time":"ts","features":[{"name":"x","type":"float64"}]}"#,
    )
    .unwrap();
    let g = FeatureGroupRecord {
        id: "fg_1".into(),
        tenant_id: "ten_1".into(),
        name: "g".into(),
        schema: schema.clone(),
        description: "d".into(),
        owner: "o".into(),
        tags: [("a".to_string(), "b".to_string())].into(),
        online: true,
        online_max_age_seconds: Some(3600),
        location: "tenants/acme/feature-groups/g".into(),
        state: GroupState::Creating,
        created_at: 1,
        updated_at: 1,
        created_by: "me".into(),
    };
    c.insert_feature_group(&g).await.unwrap();
    assert!(matches!(c.insert_feature_group(&FeatureGroupRecord { id: "fg_2".into(), ..g.clone() }).await, Err(Error::AlreadyExists { .. })));
    assert!(c.list_feature_groups("ten_1").await.unwrap().is_empty(), "groups being created are not listed");
    c.set_feature_group_state("fg_1", GroupState::Active, 2).await.unwrap();
    c.update_feature_group_metadata("fg_1", &GroupMetadata { description: "d2".into(), owner: "o2".into(), tags: Default::default() }, 3)
        .await
        .unwrap();
    let got = c.feature_group("ten_1", "g").await.unwrap().unwrap();
    assert_eq!((got.description.as_str(), got.online, got.state, got.schema), ("d2", true, GroupState::Active, schema));
    assert_eq!(got.online_max_age_seconds, Some(3600));
    c.set_feature_group_online("fg_1", false, None, 4).await.unwrap();
    let got = c.feature_group("ten_1", "g").await.unwrap().unwrap();
    assert_eq!((got.online, got.online_max_age_seconds, got.updated_at), (false, None, 4));

    for (v, at) in [(0i64, 100i64), (1, 200), (2, 300)] {
        let rec = VersionRecord {
            version: v,
            committed_at: at,
            operation: "WRITE".into(),
            rows_added: Some(v * 10),
            actor: "a".into(),
            request_id: None,
            recovered: false,
        };
        c.record_version("fg_1", &rec).await.unwrap();
        c.record_version("fg_1", &rec).await.unwrap(); // idempotent
    }
    assert_eq!(c.versions("fg_1").await.unwrap().len(), 3);
    assert_eq!(c.latest_version("fg_1").await.unwrap().unwrap().version, 2);
    assert_eq!(c.version_as_of("fg_1", 250).await.unwrap().unwrap().version, 1);
    assert_eq!(c.version_as_of("fg_1", 200).await.unwrap().unwrap().version, 1);
    assert!(c.version_as_of("fg_1", 99).await.unwrap().is_none());
    assert_eq!(c.version("fg_1", 1).await.unwrap().unwrap().rows_added, Some(10));

    // Times rise with versions whatever order versions are recorded in and whatever the
    // clocks say: a late one is placed after its predecessor, a gap filled late before its
    // successor; when no microsecond is left between, it is refused, not misordered.
    let rec = |version: i64, committed_at: i64| VersionRecord {
        version,
        committed_at,
        operation: "WRITE".into(),
        rows_added: None,
        actor: "a".into(),
        request_id: None,
        recovered: false,
    };
    assert_eq!(c.record_version("fg_1", &rec(3, 50)).await.unwrap(), 301, "a clock behind its predecessor's");
    assert_eq!(c.record_version("fg_1", &rec(5, 400)).await.unwrap(), 400);
    assert_eq!(c.record_version("fg_1", &rec(4, 900)).await.unwrap(), 399, "a gap filled late stays before its successor");
    assert_eq!(c.record_version("fg_1", &rec(4, 1)).await.unwrap(), 399, "recording again changes nothing");
    c.record_version("fg_1", &rec(7, 500)).await.unwrap();
    c.record_version("fg_1", &rec(8, 501)).await.unwrap();
    assert!(matches!(c.record_version("fg_1", &rec(6, 450)).await, Ok(450)));
    let times: Vec<i64> = c.versions("fg_1").await.unwrap().iter().map(|v| v.committed_at).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");

    // The same through a held commit.
    let mut held = c.begin_commit("fg_1").await.unwrap();
    assert_eq!(held.latest_version().await.unwrap(), Some(8));
    assert_eq!(held.recorded_versions().await.unwrap(), (0..=8).collect::<Vec<_>>());
    assert_eq!(held.record(&rec(9, 10)).await.unwrap(), 502);
    held.finish().await.unwrap();
    assert_eq!(c.latest_version("fg_1").await.unwrap().unwrap().version, 9);
    c.delete_feature_group("fg_1").await.unwrap();
    assert!(c.feature_group("ten_1", "g").await.unwrap().is_none());

    models(c).await;
}

/// Models, versions, aliases with history, and jobs.
async fn models(c: &dyn Catalog) {
    let m = ModelRecord {
        id: "m_1".into(),
        tenant_id: "ten_1".into(),
        name: "churn".into(),
        description: String::new(),
        owner: "ml".into(),
        tags: Default::default(),
        created_at: 1,
        updated_at: 1,
        created_by: "me".into(),
    };
    c.insert_model(&m).await.unwrap();
    assert!(matches!(c.insert_model(&ModelRecord { id: "m_2".into(), ..m.clone() }).await, Err(Error::AlreadyExists { .. })));
    assert_eq!(c.list_models("ten_1").await.unwrap().len(), 1);
    let v = ModelVersionRecord {
        model_id: "m_1".into(),
        version: 0,
        state: "active".into(),
        source: "trained".into(),
        artifact_location: "a".into(),
        artifact_sha256: "s".into(),
        signature: "sig".into(),
        signing_key_id: "k".into(),
        training_set_id: Some("ts_1".into()),
        lineage_json: "{}".into(),
        config_json: "{}".into(),
        metrics_json: "{}".into(),
        backend: "cpu".into(),
        build_id: "b".into(),
        job_id: None,
        created_at: 5,
        created_by: "me".into(),
    };
    assert_eq!(c.insert_model_version(&v).await.unwrap(), 1);
    assert_eq!(c.insert_model_version(&v).await.unwrap(), 2, "versions number themselves");
    c.set_model_version_state("m_1", 2, "archived").await.unwrap();
    assert_eq!(c.model_version("m_1", 2).await.unwrap().unwrap().state, "archived");
    let by_set = c.model_versions_by_training_sets("ten_1", &["ts_1".into()]).await.unwrap();
    assert_eq!(by_set.iter().map(|(n, v)| (n.as_str(), v.version)).collect::<Vec<_>>(), vec![("churn", 1), ("churn", 2)]);

    let first = c.move_alias("m_1", "champion", Some(1), "a", "first", 10).await.unwrap();
    assert_eq!((first.seq, first.from_version, first.to_version), (1, None, Some(1)));
    let second = c.move_alias("m_1", "champion", Some(2), "b", "better", 20).await.unwrap();
    assert_eq!((second.seq, second.from_version), (2, Some(1)));
    assert_eq!(c.aliases("m_1").await.unwrap(), vec![("champion".to_string(), 2)]);
    c.move_alias("m_1", "champion", None, "c", "retired", 30).await.unwrap();
    assert!(c.aliases("m_1").await.unwrap().is_empty());
    let history = c.alias_history("m_1", "champion").await.unwrap();
    assert_eq!(history.iter().map(|h| (h.to_version, h.reason.as_str())).collect::<Vec<_>>(), vec![(Some(1), "first"), (Some(2), "better"), (None, "retired")]);

    let canary = lakeledger::platform::catalog::CanaryRecord {
        alias: "champion".into(),
        seq: 0,
        version: 2,
        percent: 12.5,
        guard_json: r#"{"max_error_rate":0.1}"#.into(),
        started_at: 40,
        started_by: "a".into(),
        reason: "try".into(),
        ended_at: None,
        end_reason: None,
        ended_by: None,
    };
    assert_eq!(c.start_canary("m_1", &canary).await.unwrap().seq, 1);
    assert!(matches!(c.start_canary("m_1", &canary).await, Err(Error::Conflict(_))), "one open canary per alias");
    assert!(c.end_canary("m_1", "champion", 50, "rolled back", "guard").await.unwrap());
    assert!(!c.end_canary("m_1", "champion", 51, "again", "guard").await.unwrap(), "nothing open to end");
    assert_eq!(c.start_canary("m_1", &canary).await.unwrap().seq, 2);
    let all = c.canaries("m_1", "champion").await.unwrap();
    assert_eq!(all.iter().map(|c| (c.seq, c.percent, c.ended_at, c.end_reason.as_deref())).collect::<Vec<_>>(),
               vec![(1, 12.5, Some(50), Some("rolled back")), (2, 12.5, None, None)]);

    let job = JobRecord {
        id: "job_1".into(),
        tenant_id: "ten_1".into(),
        model_name: "churn".into(),
        state: "running".into(),
        spec_json: "{}".into(),
        progress_json: "null".into(),
        error: None,
        model_version: None,
        created_at: 1,
        started_at: Some(2),
        finished_at: None,
        created_by: "me".into(),
        worker: Some("replica_a".into()),
        lease_until: Some(100),
        cancel_requested: false,
    };
    c.insert_job(&job).await.unwrap();
    assert_eq!(c.unfinished_jobs().await.unwrap().len(), 1);
    // Only the replica holding the lease renews it or changes the job; a cancel asked
    // anywhere reaches it with the renewal.
    assert_eq!(c.renew_job_lease("job_1", "replica_b", 200).await.unwrap(), None);
    assert_eq!(c.renew_job_lease("job_1", "replica_a", 200).await.unwrap(), Some(false));
    assert!(!c.update_job(&JobRecord { progress_json: "{}".into(), worker: Some("replica_b".into()), ..job.clone() }).await.unwrap());
    assert!(c.request_job_cancel("ten_1", "job_1").await.unwrap());
    assert!(!c.request_job_cancel("other", "job_1").await.unwrap());
    assert_eq!(c.renew_job_lease("job_1", "replica_a", 300).await.unwrap(), Some(true));
    // While the lease holds nobody else may fail it; once lapsed, exactly one may.
    assert!(!c.fail_abandoned_job("job_1", 250, "replica_b", "lapsed").await.unwrap());
    let done = JobRecord { state: "succeeded".into(), model_version: Some(1), finished_at: Some(3), ..job.clone() };
    assert!(c.update_job(&done).await.unwrap());
    assert!(!c.update_job(&JobRecord { state: "failed".into(), ..job.clone() }).await.unwrap(), "a finished job stays finished");
    assert_eq!(c.job("ten_1", "job_1").await.unwrap().unwrap().state, "succeeded");
    assert!(c.job("other", "job_1").await.unwrap().is_none());
    assert!(c.unfinished_jobs().await.unwrap().is_empty());
    assert!(!c.fail_abandoned_job("job_1", 10_000, "replica_b", "lapsed").await.unwrap(), "a finished job is never failed");

    let lapsed = JobRecord { id: "job_2".into(), state: "queued".into(), lease_until: Some(500), ..job.clone() };
    c.insert_job(&lapsed).await.unwrap();
    assert!(!c.fail_abandoned_job("job_2", 400, "replica_b", "lapsed").await.unwrap());
    assert!(c.fail_abandoned_job("job_2", 600, "replica_b", "lapsed").await.unwrap());
    assert!(!c.fail_abandoned_job("job_2", 700, "replica_c", "lapsed").await.unwrap(), "ended once");
    let j = c.job("ten_1", "job_2").await.unwrap().unwrap();
    assert_eq!((j.state.as_str(), j.error.as_deref(), j.finished_at), ("failed", Some("lapsed"), Some(600)));
    // Quotas and their counters.
    assert!(c.tenant_quotas("ten_1").await.unwrap().is_none());
    let q = lakeledger::platform::catalog::Quotas { requests_per_second: Some(2.5), burst: Some(5), ingest_bytes_per_day: Some(100), max_stored_bytes: Some(1 << 40), ..Default::default() };
    c.set_tenant_quotas("ten_1", &q, 1, "op").await.unwrap();
    assert_eq!(c.tenant_quotas("ten_1").await.unwrap(), Some(q.clone()));
    let lifted = lakeledger::platform::catalog::Quotas::default();
    c.set_tenant_quotas("ten_1", &lifted, 2, "op").await.unwrap();
    assert_eq!(c.tenant_quotas("ten_1").await.unwrap(), Some(lifted));
    // A full bucket of 5, then refilled at 2.5 a second, never above 5.
    assert_eq!(c.claim_rate_tokens("tenant:ten_1", 2.5, 5.0, 4.0, 0).await.unwrap(), 4.0);
    assert_eq!(c.claim_rate_tokens("tenant:ten_1", 2.5, 5.0, 4.0, 0).await.unwrap(), 1.0);
    assert_eq!(c.claim_rate_tokens("tenant:ten_1", 2.5, 5.0, 4.0, 0).await.unwrap(), 0.0);
    assert_eq!(c.claim_rate_tokens("tenant:ten_1", 2.5, 5.0, 4.0, 1_000_000).await.unwrap(), 2.5);
    assert_eq!(c.claim_rate_tokens("tenant:ten_1", 2.5, 5.0, 9.0, 100_000_000).await.unwrap(), 5.0);
    // Buckets are apart: a key's has its own tokens.
    assert_eq!(c.claim_rate_tokens("key:key_2", 1.0, 2.0, 9.0, 100_000_000).await.unwrap(), 2.0);
    // Key limits: only a live key of the tenant takes them.
    let k2 = NewApiKey {
        id: "key_2".into(),
        tenant_id: "ten_1".into(),
        name: "batch".into(),
        role: Role::Writer,
        secret_hash: "h2".into(),
        created_at: 5,
        created_by: "test".into(),
    };
    c.create_key(&k2).await.unwrap();
    assert!(c.key_limits("key_2").await.unwrap().is_none());
    let l = lakeledger::platform::catalog::KeyLimits { requests_per_second: Some(0.5), burst: Some(3), max_concurrent_requests: Some(2) };
    assert!(c.set_key_limits("ten_1", "key_2", &l, 1, "op").await.unwrap());
    assert_eq!(c.key_limits("key_2").await.unwrap(), Some(l.clone()));
    let lifted = lakeledger::platform::catalog::KeyLimits::default();
    assert!(c.set_key_limits("ten_1", "key_2", &lifted, 2, "op").await.unwrap());
    assert_eq!(c.key_limits("key_2").await.unwrap(), Some(lifted));
    assert!(!c.set_key_limits("ten_2", "key_2", &l, 3, "op").await.unwrap(), "another tenant's key");
    assert!(!c.set_key_limits("ten_1", "key_1", &l, 3, "op").await.unwrap(), "a revoked key");
    assert!(!c.set_key_limits("ten_1", "key_9", &l, 3, "op").await.unwrap(), "no such key");
    assert_eq!(c.ingest_bytes("ten_1", 20_000).await.unwrap(), 0);
    c.add_ingest_bytes("ten_1", 20_000, 60).await.unwrap();
    c.add_ingest_bytes("ten_1", 20_000, 50).await.unwrap();
    c.add_ingest_bytes("ten_1", 20_001, 7).await.unwrap();
    assert_eq!((c.ingest_bytes("ten_1", 20_000).await.unwrap(), c.ingest_bytes("ten_1", 20_001).await.unwrap()), (110, 7));
    assert_eq!(c.running_jobs("ten_1").await.unwrap(), 0);

    // A replica's own leftovers, from before its restart, it may fail at once.
    let own = JobRecord { id: "job_3".into(), lease_until: Some(i64::MAX), ..job };
    c.insert_job(&own).await.unwrap();
    assert!(!c.fail_abandoned_job("job_3", 700, "replica_b", "stopped").await.unwrap());
    assert!(c.fail_abandoned_job("job_3", 700, "replica_a", "stopped").await.unwrap());

    // Queued jobs nobody claimed are claimed oldest first, each by one replica; one
    // cancelled before a claim ends at once, one claimed can no longer be.
    let queued = |id: &str, at: i64| JobRecord { id: id.into(), state: "queued".into(), created_at: at, started_at: None, worker: None, lease_until: None, ..own.clone() };
    for (id, at) in [("job_q2", 20), ("job_q1", 10), ("job_q3", 30)] {
        c.insert_job(&queued(id, at)).await.unwrap();
    }
    let first = c.claim_job("replica_b", 900).await.unwrap().unwrap();
    assert_eq!((first.id.as_str(), first.worker.as_deref(), first.lease_until), ("job_q1", Some("replica_b"), Some(900)));
    assert!(!c.cancel_queued_job("ten_1", "job_q1", 950).await.unwrap(), "claimed: cancelled through its lease instead");
    assert!(c.cancel_queued_job("ten_1", "job_q3", 950).await.unwrap());
    let j = c.job("ten_1", "job_q3").await.unwrap().unwrap();
    assert_eq!((j.state.as_str(), j.finished_at), ("cancelled", Some(950)));
    assert_eq!(c.claim_job("replica_a", 900).await.unwrap().unwrap().id, "job_q2");
    assert!(c.claim_job("replica_a", 900).await.unwrap().is_none());
}

/// Replicas claiming queued jobs at once (many connections to one Postgres database):
/// every job is claimed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_claims_each_queued_job_once() {
    let Some(base) = postgres_url().await else { return };
    let url = fresh_postgres_schema(&base).await;
    let c: std::sync::Arc<dyn Catalog> = lakeledger::platform::catalog::connect(&url).await.unwrap();
    c.create_tenant(&Tenant { id: "ten_1".into(), name: "acme".into(), created_at: 1 }).await.unwrap();
    for i in 0..40 {
        let job = JobRecord {
            id: format!("job_{i:02}"),
            tenant_id: "ten_1".into(),
            model_name: "churn".into(),
            state: "queued".into(),
            spec_json: "{}".into(),
            progress_json: "null".into(),
            error: None,
            model_version: None,
            created_at: i,
            started_at: None,
            finished_at: None,
            created_by: "me".into(),
            worker: None,
            lease_until: None,
            cancel_requested: false,
        };
        c.insert_job(&job).await.unwrap();
    }
    let claimers: Vec<_> = (0..8)
        .map(|w| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                while let Some(j) = c.claim_job(&format!("replica_{w}"), 1000).await.unwrap() {
                    assert_eq!(j.worker, Some(format!("replica_{w}")));
                    mine.push(j.id);
                }
                mine
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in claimers {
        all.extend(t.await.unwrap());
    }
    all.sort();
    assert_eq!(all, (0..40).map(|i| format!("job_{i:02}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn sqlite_catalog_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("c.sqlite").display());
    let c = lakeledger::platform::catalog::connect(&url).await.unwrap();
    conformance(c.as_ref()).await;
}

#[tokio::test]
async fn postgres_catalog_conforms() {
    let Some(base) = postgres_url().await else { return };
    let url = fresh_postgres_schema(&base).await;
    let c = lakeledger::platform::catalog::connect(&url).await.unwrap();
    conformance(c.as_ref()).await;
}

/// On Postgres a held commit holds the group's row: another replica's commit of the same
/// group waits, and one of another group does not. (`NOWAIT` makes the check exact.)
#[tokio::test]
async fn postgres_holds_a_group_against_other_replicas_commits() {
    let Some(base) = postgres_url().await else { return };
    let url = fresh_postgres_schema(&base).await;
    let c = lakeledger::platform::catalog::connect(&url).await.unwrap();
    c.create_tenant(&Tenant { id: "ten_1".into(), name: "acme".into(), created_at: 1 }).await.unwrap();
    let schema: lakeledger_query::FeatureSchema =
        serde_json::from_str(r#"{"entity_keys":[{"name":"id","type":"string"}],"event_time":"ts","features":[]}"#).unwrap();
    for id in ["fg_a", "fg_b"] {
        c.insert_feature_group(&FeatureGroupRecord {
            id: id.into(),
            tenant_id: "ten_1".into(),
            name: id.into(),
            schema: schema.clone(),
            description: String::new(),
            owner: String::new(),
            tags: Default::default(),
            online: false,
            online_max_age_seconds: None,
            location: id.into(),
            state: GroupState::Active,
            created_at: 1,
            updated_at: 1,
            created_by: "t".into(),
        })
        .await
        .unwrap();
    }
    let other = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    let try_lock = |id: &'static str| {
        let other = other.clone();
        async move {
            let mut tx = other.begin().await.unwrap();
            let r = sqlx::query("SELECT id FROM feature_groups WHERE id = $1 FOR UPDATE NOWAIT").bind(id).execute(&mut *tx).await;
            r.map(|_| ()).map_err(|e| e.as_database_error().and_then(|d| d.code()).map(|c| c.to_string()))
        }
    };
    let held = c.begin_commit("fg_a").await.unwrap();
    assert_eq!(try_lock("fg_a").await, Err(Some("55P03".into())), "another replica's commit of the group waits");
    assert_eq!(try_lock("fg_b").await, Ok(()), "another group's does not");
    held.finish().await.unwrap();
    assert_eq!(try_lock("fg_a").await, Ok(()));
}

/// Two replicas on one fresh Postgres schema and one table root, each with its own data
/// dir and ledger, sharing the keys that sign artifacts and hash entities (a deployment's
/// mounted secrets); `tweak` adjusts both configs. Returns them, the admin key, and the
/// directory that holds everything (dropped last).
async fn two_replicas(base: &str, tweak: impl Fn(&mut lakeledger::app::config::Config)) -> (crate::support::Server, crate::support::Server, String, tempfile::TempDir) {
    let catalog = fresh_postgres_schema(base).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tables")).unwrap();
    let config = |name: &str| {
        let mut c = lakeledger::app::config::Config::embedded(dir.path().join(name)).unwrap();
        c.catalog_url = lakeledger::app::config::Secret::new(catalog.clone());
        c.data_root = url::Url::from_directory_path(dir.path().join("tables")).unwrap();
        c.model_key_path = dir.path().join("shared/model-signing.key");
        c.entity_hash_key_path = dir.path().join("shared/entity-hash.key");
        tweak(&mut c);
        c
    };
    let a = crate::support::Server::start_with(config("a"), None).await;
    let k = a.admin_key.clone();
    let b = crate::support::Server::start_with(config("b"), Some(k.clone())).await;
    (a, b, k, dir)
}

/// Two replicas on one Postgres catalog and one table root, ingesting into the same group
/// at once: every acknowledged ingest is present once, catalog versions are gap-free and
/// equal the Delta log's, commit times rise with the version, and `as_of` each recorded
/// time reads that version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_ingesting_into_one_group_record_versions_in_order() {
    let Some(base) = postgres_url().await else { return };
    let (a, b, k, _dir) = two_replicas(&base, |_| {}).await;
    a.create_clicks(&k).await;

    let mut tasks = Vec::new();
    for (i, url) in [a.url(""), b.url(""), a.url(""), b.url("")].into_iter().enumerate() {
        let (client, k) = (reqwest::Client::new(), k.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..6 {
                let id = (i * 100 + n) as i64;
                let r = client
                    .post(format!("{url}/v1/feature-groups/clicks/data"))
                    .bearer_auth(&k)
                    .json(&serde_json::json!([{"user_id": id, "ts": "2026-01-01T00:00:00Z"}]))
                    .send()
                    .await
                    .unwrap();
                // A lost race for the Delta log is a 409 the client may retry; anything
                // acknowledged must be there.
                if r.status() == 201 {
                    acked.push(id);
                } else {
                    assert_eq!(r.status(), 409, "{}", r.text().await.unwrap());
                }
            }
            acked
        }));
    }
    let mut acked: Vec<i64> = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(acked.len() >= 12, "most ingests go through: {}", acked.len());
    let rows = a.read_json(&k, "/v1/feature-groups/clicks/data?limit=100000").await;
    let mut seen: Vec<i64> = rows.iter().map(|r| r["user_id"].as_i64().unwrap()).collect();
    seen.sort();
    acked.sort();
    assert_eq!(seen, acked, "every acknowledged ingest once, nothing else");

    let history: Vec<serde_json::Value> = b.get(&k, "/v1/feature-groups/clicks/versions").send().await.unwrap().json().await.unwrap();
    let versions: Vec<i64> = history.iter().map(|v| v["version"].as_i64().unwrap()).collect();
    assert_eq!(versions, (0..=acked.len() as i64).collect::<Vec<_>>(), "gap-free, one per acknowledged ingest");
    let g: serde_json::Value = b.get(&k, "/v1/feature-groups/clicks").send().await.unwrap().json().await.unwrap();
    assert_eq!(g["current_version"].as_i64(), versions.last().copied(), "the Delta log ends where the catalog does");
    let times: Vec<&str> = history.iter().map(|v| v["committed_at"].as_str().unwrap()).collect();
    for (v, t) in times.iter().enumerate() {
        if v > 0 {
            assert!(times[v - 1] < *t, "commit times rise: {times:?}");
        }
        let at = a.read_json(&k, &format!("/v1/feature-groups/clicks/data?as_of={}&limit=100000", t.replace(':', "%3A").replace('+', "%2B"))).await;
        assert_eq!(at.len(), v, "as_of the commit time of version {v} reads version {v}");
    }
}

/// Jobs queued on one replica are claimed by whichever has a free worker: with one worker
/// each, two long jobs queued on `a` run at once, one on each replica. A job is followed
/// and cancelled through the replica not running it: the events come from the catalog,
/// the cancel reaches the running replica with its lease renewal, and the job ends once,
/// cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_spread_over_replicas_and_are_followed_and_cancelled_through_another() {
    let Some(base) = postgres_url().await else { return };
    let (a, b, k, _dir) = two_replicas(&base, |c| {
        c.job_lease = std::time::Duration::from_secs(3);
        c.training_workers = 1;
    })
    .await;
    crate::models::ingest_dataset(&a, &k, "wine", "cultivar", "int64").await;
    let long = serde_json::json!({"model": "wine", "training_set": crate::models::training_set("wine", "cultivar"), "label": "cultivar",
                                  "config": {"task": "classification", "hidden_layers": [64], "max_epochs": 100000, "patience": 100000}});
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = a.post(&k, "/v1/training-jobs").json(&long).send().await.unwrap();
        assert_eq!(r.status(), 202);
        ids.push(r.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_string());
    }
    let mut workers = Vec::new();
    for id in &ids {
        let j = loop {
            let j: serde_json::Value = b.get(&k, &format!("/v1/training-jobs/{id}")).send().await.unwrap().json().await.unwrap();
            if j["state"] == "running" {
                break j;
            }
            assert_eq!(j["state"], "queued", "{j}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        workers.push(j["worker"].as_str().unwrap().to_string());
    }
    assert_ne!(workers[0], workers[1], "one job on each replica");
    // Followed and cancelled through the replica that does not run it.
    let (id, other) = (ids[0].clone(), ids[1].clone());
    let b_id = std::fs::read_to_string(b.data_dir.join("replica.id")).unwrap();
    let (follower, runner) = if workers[0] == b_id.trim() { (&a, &b) } else { (&b, &a) };
    let r = runner.post(&k, &format!("/v1/training-jobs/{other}/cancel")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let b = follower;

    let mut events = b.get(&k, &format!("/v1/training-jobs/{id}/events")).send().await.unwrap();
    let mut seen = String::new();
    let mut cancelled = false;
    while let Some(chunk) = events.chunk().await.unwrap() {
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if !cancelled && seen.contains("\"epoch\":") {
            let r = b.post(&k, &format!("/v1/training-jobs/{id}/cancel")).send().await.unwrap();
            assert_eq!(r.status(), 202);
            cancelled = true;
        }
    }
    assert!(seen.contains("\"state\":\"cancelled\""), "the stream on the other replica ends with the final state: {seen}");
    let j: serde_json::Value = a.get(&k, &format!("/v1/training-jobs/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(j["state"], "cancelled");
}

/// A change made on one replica reaches the others' caches through the database: a
/// revoked key, a moved alias and a commit to an online group. Each step waits (bounded)
/// for the other replica to have handled the notice, then checks what it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_on_one_replica_reach_the_others_caches() {
    let Some(base) = postgres_url().await else { return };
    let (a, b, k, _dir) = two_replicas(&base, |_| {}).await;
    let heard = |n: u64| {
        let b = &b;
        async move {
            for _ in 0..400 {
                if b.state.changes.received() >= n {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            panic!("replica b never heard notice {n}");
        }
    };

    // A key verified (and cached) on b, revoked on a.
    let r = a.post(&k, "/v1/keys").json(&serde_json::json!({"name": "temp", "role": "reader"})).send().await.unwrap();
    let minted: serde_json::Value = r.json().await.unwrap();
    let secret = minted["secret"].as_str().unwrap().to_string();
    assert_eq!(b.get(&secret, "/v1/whoami").send().await.unwrap().status(), 200);
    let before = b.state.changes.received();
    let r = a.delete(&k, &format!("/v1/keys/{}", minted["id"].as_str().unwrap())).send().await.unwrap();
    assert_eq!(r.status(), 204);
    heard(before + 1).await;
    assert_eq!(b.get(&secret, "/v1/whoami").send().await.unwrap().status(), 401, "b dropped the key it had cached");

    // An alias b routes through, moved on a.
    crate::models::ingest_dataset(&a, &k, "wine", "cultivar", "int64").await;
    let small = serde_json::json!({"task": "classification", "hidden_layers": [], "max_epochs": 3, "seed": 1});
    let job = serde_json::json!({"model": "wine", "training_set": crate::models::training_set("wine", "cultivar"), "label": "cultivar", "config": small});
    crate::models::train(&a, &k, job.clone()).await;
    crate::models::train(&a, &k, job).await;
    let put = |v: i64| a.client.put(a.url("/v1/models/wine/aliases/champion")).bearer_auth(&k).json(&serde_json::json!({"version": v})).send();
    assert_eq!(put(1).await.unwrap().status(), 200);
    let instances = serde_json::json!({"instances": [[13.2, 1.8, 2.4, 16.0, 100.0, 2.8, 2.7, 0.3, 1.9, 4.4, 1.0, 3.2, 1000.0]]});
    let scored = |b: &crate::support::Server| b.post(&k, "/v1/models/wine@champion/invocations").json(&instances).send();
    let v: serde_json::Value = scored(&b).await.unwrap().json().await.unwrap();
    assert_eq!(v["version"], 1, "{v}");
    let before = b.state.changes.received();
    assert_eq!(put(2).await.unwrap().status(), 200);
    heard(before + 1).await;
    let v: serde_json::Value = scored(&b).await.unwrap().json().await.unwrap();
    assert_eq!(v["version"], 2, "b follows the move");

    // A group turned online on a, and a commit to it there.
    let r = a.client.patch(a.url("/v1/feature-groups/wine_features")).bearer_auth(&k).json(&serde_json::json!({"online": true})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // b loads the group it now serves on a's notice, then follows a's commit to it.
    let lookup = serde_json::json!({"features": ["wine_features:alcohol"], "entities": {"id": [900]}});
    let r = a.post(&k, "/v1/feature-groups/wine_features/data").json(&serde_json::json!([{"id": 900, "ts": "2026-03-01T00:00:00Z", "alcohol": 99.5}])).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let mut served = serde_json::Value::Null;
    for _ in 0..400 {
        let got: serde_json::Value = b.post(&k, "/v1/online/features").json(&lookup).send().await.unwrap().json().await.unwrap();
        if got["results"][1]["values"][0] == 99.5 {
            served = got;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(served["results"][1]["values"][0], 99.5, "b serves a's commit");
}

#[tokio::test]
async fn server_runs_on_postgres() {
    let Some(base) = postgres_url().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut config = lakeledger::app::config::Config::embedded(dir.path()).unwrap();
    config.catalog_url = lakeledger::app::config::Secret::new(fresh_postgres_schema(&base).await);
    let s = crate::support::Server::start_with(config, None).await;
    let k = s.admin_key.clone();
    s.create_clicks(&k).await;
    let r = s.ingest_json(&k, "clicks", "append", serde_json::json!([{"user_id": 1, "ts": "2026-01-01T00:00:00Z"}])).await;
    assert_eq!(r.status(), 201);
    assert_eq!(s.read_json(&k, "/v1/feature-groups/clicks/data?version=1").await.len(), 1);
}
