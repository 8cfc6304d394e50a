//! The online store in Redis (`--online-store redis://…`): replicas share one copy of the
//! latest rows, written after each commit with the version it came from, so a lookup on
//! any replica sees a commit made through another as soon as the commit is answered;
//! restarts do not reload it; a group Redis lost is rebuilt from Delta; max age holds on
//! read; a group switched off is taken out of Redis.

use std::time::Duration;

use serde_json::{Value, json};

use crate::serving::{ago, column, lookup};
use crate::support::{Server, error_code, redis_url};

/// Configs of two replicas on one SQLite catalog, one table root and one Redis.
fn configs(dir: &std::path::Path, redis: &str) -> (lakeledger::app::config::Config, lakeledger::app::config::Config) {
    let mut a = lakeledger::app::config::Config::embedded(dir.join("a")).unwrap();
    a.online_store = Some(lakeledger::app::config::Secret::new(redis));
    a.entity_hash_key_path = dir.join("shared/entity-hash.key");
    let mut b = lakeledger::app::config::Config::embedded(dir.join("b")).unwrap();
    b.catalog_url = a.catalog_url.clone();
    b.data_root = a.data_root.clone();
    b.online_store = a.online_store.clone();
    b.entity_hash_key_path = a.entity_hash_key_path.clone();
    (a, b)
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// The group's id, as the catalog knows it (Redis keys carry it).
async fn group_id(s: &Server, name: &str) -> String {
    s.state.features.all().await.unwrap().into_iter().find(|g| g.name == name).unwrap().id
}

/// The (generation, version) Redis serves a group from.
async fn served(conn: &mut redis::aio::MultiplexedConnection, id: &str) -> (Option<i64>, Option<i64>) {
    redis::cmd("HMGET").arg(format!("ll:{{{id}}}:meta")).arg("gen").arg("version").query_async(conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_the_online_store_in_redis() {
    let Some(url) = redis_url().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let (a_config, b_config) = configs(dir.path(), &url);
    let a = Server::start_with(a_config.clone(), None).await;
    let k = a.admin_key.clone();
    let r = a
        .post(&k, "/v1/feature-groups")
        .json(&json!({"name": "profiles", "entity_keys": [{"name": "user_id", "type": "int64"}, {"name": "region", "type": "string"}],
                      "event_time": "ts", "features": [{"name": "age", "type": "float64"}, {"name": "tier", "type": "string"}],
                      "online": true, "online_max_age_seconds": 3600}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let id = group_id(&a, "profiles").await;
    let mut conn = redis_conn(&url).await;
    let rows = json!([
        {"user_id": 1, "region": "eu", "ts": ago(120), "age": 30.0, "tier": "gold"},
        {"user_id": 1, "region": "us", "ts": ago(120), "age": 50.0, "tier": null},
        {"user_id": 2, "region": "eu", "ts": ago(7200), "age": 40.0, "tier": "free"},
    ]);
    assert_eq!(a.ingest_json(&k, "profiles", "append", rows).await.status(), 201);
    let ask = json!({"features": ["profiles:age", "profiles:tier"], "entities": {"user_id": [1, 1, 2, 3], "region": ["eu", "us", "eu", "eu"]}});
    // (On SQLite, b hears of groups at its start; on Postgres, at once.)
    let b = Server::start_with(b_config, Some(k.clone())).await;

    // Written through a, read through b at once: the commit's answer came after its rows
    // were in Redis. Max age holds on read; a null value and a missing entity are told apart.
    let v = lookup(&b, &k, ask.clone()).await;
    assert_eq!(v["metadata"]["versions"], json!({"profiles": 1}));
    let (ages, statuses) = column(&v, 2);
    assert_eq!(ages, vec![json!(30.0), json!(50.0), Value::Null, Value::Null]);
    assert_eq!(statuses, vec!["PRESENT", "PRESENT", "OUTSIDE_MAX_AGE", "NOT_FOUND"]);
    assert_eq!(column(&v, 3).1, vec!["PRESENT", "NULL_VALUE", "OUTSIDE_MAX_AGE", "NOT_FOUND"]);
    assert_eq!(served(&mut conn, &id).await.1, Some(1));

    // An upsert through b, an older row that must not win, then an append through a: each
    // seen by the other replica at once.
    let r = b.ingest_json(&k, "profiles", "upsert", json!([{"user_id": 3, "region": "eu", "ts": ago(60), "age": 20.0, "tier": "free"}])).await;
    assert_eq!(r.status(), 201);
    let r = a.ingest_json(&k, "profiles", "append", json!([{"user_id": 1, "region": "eu", "ts": ago(600), "age": 1.0, "tier": "old"}])).await;
    assert_eq!(r.status(), 201);
    let v = lookup(&a, &k, ask.clone()).await;
    assert_eq!(v["metadata"]["versions"], json!({"profiles": 3}));
    assert_eq!(column(&v, 2).0, vec![json!(30.0), json!(50.0), Value::Null, json!(20.0)], "the later event wins, not the later write");

    // An overwrite replaces the whole group: entities it does not hold are gone everywhere.
    let (generation, _) = served(&mut conn, &id).await;
    let r = a.ingest_json(&k, "profiles", "overwrite", json!([{"user_id": 2, "region": "eu", "ts": ago(30), "age": 41.0, "tier": "gold"}])).await;
    assert_eq!(r.status(), 201);
    let v = lookup(&b, &k, ask.clone()).await;
    assert_eq!(v["metadata"]["versions"], json!({"profiles": 4}));
    assert_eq!(column(&v, 2).1, vec!["NOT_FOUND", "NOT_FOUND", "PRESENT", "NOT_FOUND"]);
    let (after, _) = served(&mut conn, &id).await;
    assert_ne!(generation, after, "an overwrite is served from a fresh generation");

    // The audit record of a lookup on b names the version served.
    let auditor = b.create_key("auditor", None).await;
    let r = b.get(&auditor, "/v1/audit/records?action=online.features&limit=10").send().await.unwrap();
    let records: Value = r.json().await.unwrap();
    let text = records.to_string();
    assert!(text.contains("profiles@4"), "the record names the version served: {text}");

    // A column added: older rows read null for it, newer rows carry it.
    let r = a
        .client
        .put(a.url("/v1/feature-groups/profiles/schema"))
        .bearer_auth(&k)
        .json(&json!({"features": [{"name": "age", "type": "float64"}, {"name": "tier", "type": "string"}, {"name": "score", "type": "int64"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = a.ingest_json(&k, "profiles", "append", json!([{"user_id": 5, "region": "eu", "ts": ago(10), "age": 9.0, "tier": "free", "score": 7}])).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let with_score = json!({"features": ["profiles:score"], "entities": {"user_id": [2, 5], "region": ["eu", "eu"]}});
    let v = until_ok(&b, &k, &with_score).await;
    assert_eq!(column(&v, 2), (vec![Value::Null, json!(7)], vec!["NULL_VALUE".to_string(), "PRESENT".to_string()]));

    // A restart does not reload what Redis holds.
    let before = served(&mut conn, &id).await;
    a.stop().await;
    let a = Server::start_with(a_config, Some(k.clone())).await;
    assert_eq!(served(&mut conn, &id).await, before, "the restarted replica served Redis as it was");
    assert_eq!(column(&lookup(&a, &k, with_score.clone()).await, 2).0, vec![Value::Null, json!(7)]);

    // Redis lost the group (restarted without persistence): lookups say so with 503 until
    // a replica has rebuilt it from the table, which the refresh does by itself.
    let _: () = redis::cmd("DEL").arg(format!("ll:{{{id}}}:meta")).query_async(&mut conn).await.unwrap();
    let r = b.post(&k, "/v1/online/features").json(&with_score).send().await.unwrap();
    if r.status() == 503 {
        let (code, message) = error_code(r, 503).await;
        assert_eq!(code, "unavailable");
        assert!(message.contains("`profiles`"), "{message}");
    }
    let v = until_ok(&b, &k, &with_score).await;
    assert_eq!(column(&v, 2).0, vec![Value::Null, json!(7)]);

    // Switched off: taken out of Redis; lookups refuse it on every replica.
    let r = a.client.patch(a.url("/v1/feature-groups/profiles")).bearer_auth(&k).json(&json!({"online": false})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(served(&mut conn, &id).await, (None, None));
    let r = a.post(&k, "/v1/online/features").json(&with_score).send().await.unwrap();
    assert_eq!(error_code(r, 422).await.0, "unprocessable");
}

/// Polls a lookup on `s` until it is answered 200 (a refresh round rebuilds what Redis
/// lost, or loads a column added elsewhere); the cap only stops a hang.
async fn until_ok(s: &Server, k: &str, ask: &Value) -> Value {
    for _ in 0..400 {
        let r = s.post(k, "/v1/online/features").json(ask).send().await.unwrap();
        if r.status() == 200 {
            return r.json().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the lookup never succeeded");
}

/// A Redis that does not answer stops the server at start, naming the online store.
#[tokio::test]
async fn an_unreachable_redis_stops_the_server_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = lakeledger::app::config::Config::embedded(dir.path()).unwrap();
    config.online_store = Some(lakeledger::app::config::Secret::new("redis://:secret@127.0.0.1:1/0"));
    let err = lakeledger::app::server::prepare(config).await.err().expect("start refused").to_string();
    assert!(err.contains("online store (Redis at redis://:****@127.0.0.1:1/0)"), "{err}");
    assert!(!err.contains("secret"), "{err}");
}

/// The write rules that keep replicas from undoing each other in Redis without a shared
/// lock: a later event wins whatever the order of writes, a replay of an older commit
/// changes nothing once a newer version is served, the served version never skips a
/// commit whose rows may be missing, and a rebuild from an older version than the one
/// served is refused.
#[tokio::test]
async fn writes_to_redis_keep_the_newest_state_in_any_order() {
    use lakeledger::online::{Applied, Entry, KeyPart, RedisRows, Served};
    let Some(url) = redis_url().await else { return };
    let rows = RedisRows::new(&url, url.clone()).unwrap();
    let group = uuid::Uuid::new_v4().to_string();
    let features = vec!["x".to_string()];
    let row = |id: i64, ts: i64, x: f64| (vec![KeyPart::Int(id)].into_boxed_slice(), Entry { event_time: ts, values: vec![json!(x)].into() });
    let mut conn = redis_conn(&url).await;
    let read = |conn: &mut redis::aio::MultiplexedConnection, generation: i64, id: i64| {
        let key = format!("ll:e:{group}:{generation}:[{id}]");
        let mut conn = conn.clone();
        async move {
            let (x, v): (Option<String>, Option<i64>) = redis::cmd("HMGET").arg(key).arg("f:x").arg("_v").query_async(&mut conn).await.unwrap();
            (x, v)
        }
    };

    // Never loaded: a commit's rows are not written (the group must be built whole).
    assert_eq!(rows.apply(&group, 0, 1, &features, vec![row(1, 10, 1.0)]).await.unwrap(), Applied::Unloaded);
    assert_eq!(rows.served(&group).await.unwrap(), None);

    assert!(rows.replace(&group, 1, &features, vec![row(1, 10, 1.0), row(2, 10, 2.0)]).await.unwrap());
    let Some(Served { generation, version: 1 }) = rows.served(&group).await.unwrap() else { panic!("served at version 1") };
    assert_eq!(rows.apply(&group, 1, 2, &features, vec![row(1, 20, 1.5)]).await.unwrap(), Applied::Served);
    // An older event written later, by a later commit, does not win.
    assert_eq!(rows.apply(&group, 2, 3, &features, vec![row(1, 15, 0.0)]).await.unwrap(), Applied::Served);
    assert_eq!(read(&mut conn, generation, 1).await, (Some("1.5".into()), Some(2)));
    // A replay of an older commit (a catch-up racing a commit) changes nothing.
    assert_eq!(rows.apply(&group, 1, 2, &features, vec![row(3, 99, 3.0)]).await.unwrap(), Applied::Served);
    assert_eq!(read(&mut conn, generation, 3).await, (None, None));
    assert_eq!(rows.served(&group).await.unwrap(), Some(Served { generation, version: 3 }));
    // Commit 4's writer died before Redis heard of it: commit 5's rows are written, but the
    // served version stays at 3 until a catch-up from 3 (which reads commit 4's rows too).
    assert_eq!(rows.apply(&group, 4, 5, &features, vec![row(5, 50, 5.0)]).await.unwrap(), Applied::Behind);
    assert_eq!(rows.served(&group).await.unwrap(), Some(Served { generation, version: 3 }));
    assert_eq!(rows.apply(&group, 3, 5, &features, vec![row(4, 40, 4.0), row(5, 50, 5.0)]).await.unwrap(), Applied::Served);
    assert_eq!(rows.served(&group).await.unwrap(), Some(Served { generation, version: 5 }));

    // A rebuild from an older version than served is refused; a current one replaces all.
    assert!(!rows.replace(&group, 4, &features, vec![row(9, 1, 9.0)]).await.unwrap());
    assert_eq!(rows.served(&group).await.unwrap(), Some(Served { generation, version: 5 }));
    assert!(rows.replace(&group, 5, &features, vec![row(2, 30, 2.5)]).await.unwrap());
    let Some(Served { generation: fresh, version: 5 }) = rows.served(&group).await.unwrap() else { panic!("served at version 5") };
    assert_ne!(fresh, generation);
    assert_eq!(read(&mut conn, fresh, 2).await, (Some("2.5".into()), Some(5)));
    assert_eq!(read(&mut conn, fresh, 1).await, (None, None), "the rebuild holds only what it was built from");
    // The replaced generation is deleted in the background.
    for _ in 0..200 {
        if read(&mut conn, generation, 1).await == (None, None) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(read(&mut conn, generation, 1).await, (None, None));
    rows.forget(&group).await.unwrap();
}
