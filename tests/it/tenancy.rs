//! Tenancy: every operation in the OpenAPI document that names an object, tried by every
//! role of another tenant against real objects, is refused with 403 or 404, changes
//! nothing, and is recorded as refused. The operations come from the document, so a new
//! route is covered as soon as it is documented.

use serde_json::{Value, json};

use crate::audit::{find, wait_for_outcomes};
use crate::models::{ingest_dataset, train, training_set};
use crate::support::Server;

/// Real objects of every kind a path can name, in one tenant.
pub struct Objects {
    pub tenant: String,
    pub group: String,
    pub features: Value,
    pub model: String,
    pub training_set: String,
    pub spine: String,
    pub job: String,
    pub key_id: String,
    pub artifact: bytes::Bytes,
}

/// Wine as feature groups (online), two trained versions of model `wine` (small, fast),
/// alias `champion` on version 1, a training set, a spine and a spare key.
pub async fn seed(s: &Server, k: &str) -> Objects {
    ingest_dataset(s, k, "wine", "cultivar", "int64").await;
    let r = s.client.patch(s.url("/v1/feature-groups/wine_features")).bearer_auth(k).json(&json!({"online": true})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let small = json!({"task": "classification", "hidden_layers": [], "max_epochs": 3, "seed": 1});
    let body = json!({"model": "wine", "training_set": training_set("wine", "cultivar"), "label": "cultivar", "config": small});
    let job = train(s, k, body.clone()).await["id"].as_str().unwrap().to_string();
    train(s, k, body).await;
    let r = s.client.put(s.url("/v1/models/wine/aliases/champion")).bearer_auth(k).json(&json!({"version": 1})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = s.post(k, "/v1/training-sets").json(&training_set("wine", "cultivar")).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let training_set = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let r = s.post(k, "/v1/spines?time=ts").header("content-type", "text/csv").body("id,ts\n1,2026-01-03T00:00:00Z\n").send().await.unwrap();
    assert_eq!(r.status(), 201);
    let spine = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let r = s.post(k, "/v1/keys").json(&json!({"name": "spare", "role": "reader"})).send().await.unwrap();
    let key_id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let g: Value = s.get(k, "/v1/feature-groups/wine_features").send().await.unwrap().json().await.unwrap();
    let artifact = s.get(k, "/v1/models/wine/versions/1/artifact").send().await.unwrap().bytes().await.unwrap();
    Objects { tenant: "default".into(), group: "wine_features".into(), features: g["features"].clone(), model: "wine".into(), training_set, spine, job, key_id, artifact }
}

/// The path with every parameter replaced by a real object of `o`.
pub fn substitute(template: &str, o: &Objects) -> String {
    let name = if template.starts_with("/v1/models") || template.starts_with("/v2/models") {
        &o.model
    } else if template.starts_with("/v1/tenants") {
        &o.tenant
    } else {
        &o.group
    };
    let id = if template.starts_with("/v1/training-sets") {
        &o.training_set
    } else if template.starts_with("/v1/spines") {
        &o.spine
    } else if template.starts_with("/v1/training-jobs") {
        &o.job
    } else {
        &o.key_id
    };
    template
        .replace("{name}", name)
        .replace("{version}", "1")
        .replace("{alias}", "champion")
        .replace("{target}", &format!("{}@champion", o.model))
        .replace("{id}", id)
        .replace("{path}", "0/000.p/1")
        .replace("{file}", "app.js")
}

/// A body the owner of `o` could send with success (so that only tenancy can stop it).
pub fn body_for(method: &str, template: &str, o: &Objects) -> Option<(&'static str, bytes::Bytes)> {
    let j = |v: Value| Some(("application/json", bytes::Bytes::from(v.to_string())));
    let instances = json!({"instances": [[13.2, 1.8, 2.4, 16.0, 100.0, 2.8, 2.7, 0.3, 1.9, 4.4, 1.0, 3.2, 1000.0]]});
    match (method, template) {
        ("PATCH", "/v1/feature-groups/{name}") => j(json!({"description": "changed by someone else"})),
        ("PUT", "/v1/feature-groups/{name}/schema") => {
            let mut features = o.features.as_array().unwrap().clone();
            features.push(json!({"name": "added_by_someone_else", "type": "float64"}));
            j(json!({"features": features}))
        }
        ("POST", "/v1/feature-groups/{name}/data") => j(json!([{"id": 99999, "ts": "2026-01-01T00:00:00Z"}])),
        ("POST", "/v1/feature-groups/{name}/vacuum") => j(json!({"dry_run": true})),
        ("POST", "/v1/models/{name}/versions") => Some(("application/json", o.artifact.clone())),
        ("POST", t) if t.ends_with("/invocations") => j(instances),
        ("PUT", "/v1/models/{name}/aliases/{alias}") => j(json!({"version": 2})),
        ("PUT", "/v1/models/{name}/aliases/{alias}/canary") => j(json!({"version": 2, "percent": 10})),
        ("PUT", "/v1/tenants/{name}/quotas") => j(json!({"requests_per_second": 0.001})),
        ("PUT", "/v1/keys/{id}/limits") => j(json!({"requests_per_second": 0.001})),
        _ => None,
    }
}

/// What the owner sees of its objects; equal before and after means nothing changed.
async fn snapshot(s: &Server, k: &str, o: &Objects) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let paths = [
        "/v1/feature-groups".to_string(),
        format!("/v1/feature-groups/{}", o.group),
        format!("/v1/feature-groups/{}/versions", o.group),
        format!("/v1/feature-groups/{}/data?limit=100000", o.group),
        format!("/v1/models/{}", o.model),
        format!("/v1/models/{}/versions", o.model),
        format!("/v1/models/{}/aliases/champion/history", o.model),
        format!("/v1/models/{}/aliases/champion/canary", o.model),
        "/v1/training-sets".into(),
        format!("/v1/spines/{}", o.spine),
        "/v1/training-jobs".into(),
        "/v1/keys".into(),
        format!("/v1/keys/{}/limits", o.key_id),
        "/v1/tenants/default/quotas".into(),
    ];
    for p in paths {
        let r = s.get(k, &p).send().await.unwrap();
        out.push((p, format!("{} {}", r.status(), r.text().await.unwrap())));
    }
    out
}

#[tokio::test]
async fn another_tenant_can_neither_read_nor_change_nor_learn_of_any_object() {
    let s = Server::start().await;
    let owner = s.admin_key.clone();
    let o = seed(&s, &owner).await;
    assert_eq!(s.post(&owner, "/v1/tenants").json(&json!({"name": "mallory"})).send().await.unwrap().status(), 201);
    let mut attackers = Vec::new();
    for role in ["admin", "writer", "reader", "auditor"] {
        attackers.push((role, s.create_key(role, Some("mallory")).await));
    }
    let before = snapshot(&s, &owner, &o).await;

    let doc: Value = serde_json::from_str(&lakeledger::http::openapi_document()).unwrap();
    let mut sent: Vec<(String, String)> = Vec::new();
    let mut answered_404: Vec<(String, String)> = Vec::new();
    let mut tried = 0;
    for (template, item) in doc["paths"].as_object().unwrap() {
        // Hash tiles are the log's, shared by every tenant by design; not a tenant's object.
        if !template.contains('{') || template.starts_with("/v1/audit/tlog/tile") {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            let path = substitute(template, &o);
            for (role, key) in &attackers {
                let rid = format!("xt-{tried}-{role}");
                let mut req = s.client.request(method.parse().unwrap(), s.url(&path)).bearer_auth(key).header("x-request-id", &rid);
                if let Some((content_type, body)) = body_for(&method, template, &o) {
                    req = req.header("content-type", content_type).body(body);
                }
                let r = req.send().await.unwrap();
                let status = r.status().as_u16();
                let text = r.text().await.unwrap();
                assert!(status == 403 || status == 404, "{method} {path} as mallory's {role}: {status} {text}");
                // A 404 says no more than "not found": never what exists elsewhere.
                let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: not the error body: {text}"));
                // The Open Inference Protocol's routes answer `{"error": "<message>"}`.
                let message = v["error"]["message"].as_str().or_else(|| v["error"].as_str().filter(|_| template.starts_with("/v2"))).unwrap();
                assert!(!message.contains("default"), "{method} {path}: {text}");
                if status == 404 {
                    answered_404.push((rid.clone(), format!("{method} {path} as {role}")));
                }
                sent.push((rid, format!("{method} {path} as {role}")));
            }
            tried += 1;
        }
    }
    assert!(tried >= 35, "{tried} operations name an object");

    // Objects named in bodies rather than paths are not reachable either.
    let (admin, writer) = (&attackers[0].1, &attackers[1].1);
    let by_body = [
        ("/v1/sql", json!({"sql": "SELECT * FROM wine_features"}), admin),
        ("/v1/online/features", json!({"features": ["wine_features"], "entities": {"id": [1]}}), admin),
        ("/v1/training-sets", training_set("wine", "cultivar"), writer),
        ("/v1/training-jobs", json!({"model": "wine", "training_set_id": o.training_set, "label": "cultivar", "config": {"task": "classification"}}), writer),
    ];
    for (i, (path, body, key)) in by_body.iter().enumerate() {
        let rid = format!("xt-body-{i}");
        let r = s.post(key, path).header("x-request-id", &rid).json(body).send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        // Online lookups answer a group they do not serve for this tenant with 422, the
        // same whether it exists elsewhere or nowhere (the store is in memory; the hot path
        // asks nothing else).
        assert!([403, 404, 422].contains(&status), "POST {path} naming the owner's objects: {status} {text}");
        assert!(!text.contains("default"), "{text}");
        sent.push((rid, format!("POST {path}")));
    }

    // Nothing changed, and every attempt is in the ledger as refused.
    assert_eq!(snapshot(&s, &owner, &o).await, before);
    let ids: Vec<String> = sent.iter().map(|(id, _)| id.clone()).collect();
    let all = wait_for_outcomes(&s, &ids).await;
    for (rid, what) in &sent {
        let intent = find(&all, rid, "intent").unwrap_or_else(|| panic!("{what}: no intent"));
        assert_eq!(intent["actor"]["tenant"], "mallory", "{what}");
        let outcome = &find(&all, rid, "outcome").unwrap()["outcome"];
        assert_ne!(outcome["result"], "success", "{what}");
        assert!(outcome["error_code"].is_string(), "{what}: {outcome}");
    }

    // A 404 tells mallory nothing, in the answer or in its own trail; the owner's trail has
    // the attempt as denied, naming who tried and what.
    let cross = |rid: &str| {
        all.iter().find(|r| r["kind"] == "access.cross_tenant" && r["details"]["request_id"] == rid).cloned()
    };
    let mut untold = Vec::new();
    for (rid, what) in &answered_404 {
        match cross(rid) {
            Some(r) => {
                assert_eq!((r["resource"]["tenant"].as_str(), r["outcome"]["result"].as_str()), (Some("default"), Some("denied")), "{what}: {r}");
                assert_eq!(r["details"]["attempted_by_tenant"], "mallory", "{what}: {r}");
                assert!(r["actor"]["tenant"].is_null(), "{what}: {r}");
            }
            None => untold.push(what.clone()),
        }
    }
    assert!(untold.is_empty(), "404s the owner's auditors were not told of: {untold:#?}");
    assert!(answered_404.len() >= 60, "{} attempts answered 404", answered_404.len());
    let auditor = &attackers[3].1;
    let theirs = s.get(auditor, "/v1/audit/records?limit=1000").send().await.unwrap().text().await.unwrap();
    assert!(!theirs.contains("access.cross_tenant"), "mallory's auditor sees what its 404s hid");
    let owners_auditor = s.create_key("auditor", None).await;
    let owners = s.get(&owners_auditor, "/v1/audit/records?action=access.cross_tenant&limit=1000").send().await.unwrap().text().await.unwrap();
    assert!(owners.contains("mallory"), "{owners}");
}
