//! One conformance suite for every catalog backend.

use lakeledger::catalog::{Catalog, FeatureGroupRecord, GroupMetadata, GroupState, NewApiKey, Role, Tenant, VersionRecord};
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
    c.delete_feature_group("fg_1").await.unwrap();
    assert!(c.feature_group("ten_1", "g").await.unwrap().is_none());
}

#[tokio::test]
async fn sqlite_catalog_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("c.sqlite").display());
    let c = lakeledger::catalog::connect(&url).await.unwrap();
    conformance(c.as_ref()).await;
}

#[tokio::test]
async fn postgres_catalog_conforms() {
    let Some(base) = postgres_url().await else { return };
    let url = fresh_postgres_schema(&base).await;
    let c = lakeledger::catalog::connect(&url).await.unwrap();
    conformance(c.as_ref()).await;
}

#[tokio::test]
async fn server_runs_on_postgres() {
    let Some(base) = postgres_url().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut config = lakeledger::config::Config::embedded(dir.path()).unwrap();
    config.catalog_url = lakeledger::config::Secret::new(fresh_postgres_schema(&base).await);
    let s = crate::support::Server::start_with(config, None).await;
    let k = s.admin_key.clone();
    s.create_clicks(&k).await;
    let r = s.ingest_json(&k, "clicks", "append", serde_json::json!([{"user_id": 1, "ts": "2026-01-01T00:00:00Z"}])).await;
    assert_eq!(r.status(), 201);
    assert_eq!(s.read_json(&k, "/v1/feature-groups/clicks/data?version=1").await.len(), 1);
}
