//! Online serving through the server: the online store (latest values, max age, updates on
//! every write mode, rebuilt at restart), Feast-shaped lookups with audited hashed keys,
//! and model invocations: MLflow input formats, schema checks, predictions by entity,
//! hot swap on alias moves, tamper checks at load, canaries rolled back by their guard.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Server, error_code};

pub(crate) fn ago(seconds: i64) -> String {
    (std::time::SystemTime::now() - Duration::from_secs(seconds as u64))
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| {
            let secs = d.as_secs() as i64;
            let days = secs.div_euclid(86_400);
            let rem = secs.rem_euclid(86_400);
            // Civil date from days since the epoch (Howard Hinnant's algorithm).
            let z = days + 719_468;
            let era = z.div_euclid(146_097);
            let doe = z - era * 146_097;
            let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
            let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
            let mp = (5 * doy + 2) / 153;
            let d = doy - (153 * mp + 2) / 5 + 1;
            let m = if mp < 10 { mp + 3 } else { mp - 9 };
            let y = yoe + era * 400 + i64::from(m <= 2);
            format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
        })
        .unwrap()
}

pub(crate) async fn lookup(s: &Server, k: &str, body: Value) -> Value {
    let r = s.post(k, "/v1/online/features").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

/// (values, statuses) of result column `i`.
pub(crate) fn column(v: &Value, i: usize) -> (Vec<Value>, Vec<String>) {
    let c = &v["results"][i];
    (c["values"].as_array().unwrap().clone(), c["statuses"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect())
}

#[tokio::test]
async fn online_features_follow_every_write_and_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(lakeledger::app::config::Config::embedded(dir.path()).unwrap(), None).await;
    let k = s.admin_key.clone();
    let r = s
        .post(&k, "/v1/feature-groups")
        .json(&json!({"name": "profiles", "entity_keys": [{"name": "user_id", "type": "int64"}], "event_time": "ts",
                      "features": [{"name": "age", "type": "float64"}, {"name": "plan", "type": "string"}],
                      "online": true, "online_max_age_seconds": 86400}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let (recent, older, stale) = (ago(60), ago(3600), ago(10 * 86400));
    let r = s.ingest_json(&k, "profiles", "append", json!([
        {"user_id": 1, "ts": recent, "age": 31.0, "plan": "pro"},
        {"user_id": 2, "ts": older, "age": 45.0, "plan": null},
        {"user_id": 3, "ts": stale, "age": 52.0, "plan": "free"},
    ])).await;
    assert_eq!(r.status(), 201);
    // A later commit with an older event time does not replace the latest value.
    let r = s.ingest_json(&k, "profiles", "append", json!([{"user_id": 1, "ts": older, "age": 30.0, "plan": "free"}])).await;
    assert_eq!(r.status(), 201);

    let ask = json!({"features": ["profiles:age", "profiles:plan"], "entities": {"user_id": [1, 2, 3, 4]}});
    let v = lookup(&s, &k, ask.clone()).await;
    assert_eq!(v["metadata"]["feature_names"], json!(["user_id", "age", "plan"]));
    assert_eq!(v["metadata"]["versions"], json!({"profiles": 2}));
    assert_eq!(column(&v, 0).0, vec![json!(1), json!(2), json!(3), json!(4)]);
    let (ages, statuses) = column(&v, 1);
    assert_eq!(ages, vec![json!(31.0), json!(45.0), Value::Null, Value::Null]);
    assert_eq!(statuses, ["PRESENT", "PRESENT", "OUTSIDE_MAX_AGE", "NOT_FOUND"]);
    assert_eq!(column(&v, 2).1, ["PRESENT", "NULL_VALUE", "OUTSIDE_MAX_AGE", "NOT_FOUND"]);
    assert_eq!(v["results"][1]["event_timestamps"][0].as_str().unwrap()[..19], recent[..19]);
    // Rows instead of columns, whole groups, full names: the same values.
    let v = lookup(&s, &k, json!({"features": ["profiles"], "entities": [{"user_id": 1}], "full_feature_names": true})).await;
    assert_eq!(v["metadata"]["feature_names"], json!(["user_id", "profiles__age", "profiles__plan"]));
    assert_eq!(column(&v, 2).0, vec![json!("pro")]);

    // Upsert on (key, event time) replaces the value; overwrite replaces everything.
    let r = s.ingest_json(&k, "profiles", "upsert", json!([{"user_id": 1, "ts": recent, "age": 32.0, "plan": "team"}])).await;
    assert_eq!(r.status(), 201);
    assert_eq!(column(&lookup(&s, &k, ask.clone()).await, 1).0[0], json!(32.0));
    let r = s.ingest_json(&k, "profiles", "overwrite", json!([{"user_id": 4, "ts": recent, "age": 20.0, "plan": "pro"},
                                                               {"user_id": 1, "ts": older, "age": 33.0, "plan": "pro"}])).await;
    assert_eq!(r.status(), 201);
    let v = lookup(&s, &k, ask.clone()).await;
    assert_eq!(column(&v, 1), (vec![json!(33.0), Value::Null, Value::Null, json!(20.0)],
                               ["PRESENT", "NOT_FOUND", "NOT_FOUND", "PRESENT"].map(String::from).to_vec()));
    assert_eq!(v["metadata"]["versions"], json!({"profiles": 4}));

    // Clear errors for what cannot be answered.
    let bad = |body: Value| s.post(&k, "/v1/online/features").json(&body).send();
    let (_, m) = error_code(bad(json!({"features": ["profiles:age"], "entities": {"uid": [1]}})).await.unwrap(), 422).await;
    assert!(m.contains("entity key `user_id`"), "{m}");
    let (_, m) = error_code(bad(json!({"features": ["profiles:age"], "entities": {"user_id": ["1"]}})).await.unwrap(), 422).await;
    assert!(m.contains("entities.user_id[0]: expected an integer"), "{m}");
    let (_, m) = error_code(bad(json!({"features": ["profiles:height"], "entities": {"user_id": [1]}})).await.unwrap(), 422).await;
    assert!(m.contains("no feature `height`"), "{m}");
    s.create_clicks(&k).await;
    let (_, m) = error_code(bad(json!({"features": ["clicks:ctr"], "entities": {"user_id": [1]}})).await.unwrap(), 422).await;
    assert!(m.contains("not served online"), "{m}");
    // Switching a group on loads it from its table.
    s.ingest_json(&k, "clicks", "append", json!([{"user_id": 9, "ts": recent, "ctr": 0.5}])).await;
    let r = s.client.patch(s.url("/v1/feature-groups/clicks")).bearer_auth(&k).json(&json!({"online": true})).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let v = lookup(&s, &k, json!({"features": ["clicks:ctr"], "entities": {"user_id": [9]}})).await;
    assert_eq!(column(&v, 1).0, vec![json!(0.5)]);
    // Other tenants see nothing.
    let other = {
        let r = s.post(&k, "/v1/tenants").json(&json!({"name": "acme"})).send().await.unwrap();
        assert_eq!(r.status(), 201);
        s.create_key("reader", Some("acme")).await
    };
    let r = s.post(&other, "/v1/online/features").json(&ask).send().await.unwrap();
    assert_eq!(error_code(r, 422).await.0, "unprocessable");

    // Audited: groups at versions served and keyed hashes of the keys, never the keys.
    let r = s.post(&k, "/v1/online/features").header("x-request-id", "online-1").json(&ask).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await;
    let all = crate::audit::wait_for_outcomes(&s, &["online-1".into()]).await;
    let outcome = crate::audit::find(&all, "online-1", "outcome").unwrap();
    assert_eq!(outcome["kind"], "online.features");
    assert_eq!(outcome["details"]["served"], "profiles@4");
    assert_eq!(outcome["resource"]["versions_read"], json!([4]));
    let auditor = s.create_key("auditor", None).await;
    let hash = |id: i64| {
        let s = &s;
        let auditor = auditor.clone();
        async move {
            let r = s.post(&auditor, "/v1/audit/entity-hash").json(&json!({"entity": {"user_id": id}})).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()["hash"].as_str().unwrap().to_string()
        }
    };
    let hashes = outcome["details"]["entity_key_hashes"].as_str().unwrap().split(',').map(str::to_string).collect::<Vec<_>>();
    assert_eq!(hashes, vec![hash(1).await, hash(2).await, hash(3).await, hash(4).await]);
    assert!(!outcome.to_string().contains("user_id=1"));
    let reader = s.create_key("reader", None).await;
    assert_eq!(s.post(&reader, "/v1/audit/entity-hash").json(&json!({"entity": {"user_id": 1}})).send().await.unwrap().status(), 403);

    // A restart rebuilds the store from the tables.
    s.stop().await;
    let s = Server::start_with(lakeledger::app::config::Config::embedded(dir.path()).unwrap(), Some(k.clone())).await;
    let v = lookup(&s, &k, ask).await;
    assert_eq!(column(&v, 1).0, vec![json!(33.0), Value::Null, Value::Null, json!(20.0)]);
    assert_eq!(v["metadata"]["versions"], json!({"profiles": 4}));
    let r = s.post(&k, "/v1/feature-groups/profiles/online/rebuild").send().await.unwrap();
    let report: Value = r.json().await.unwrap();
    assert_eq!((report["version"].as_i64(), report["entities"].as_u64()), (Some(4), Some(2)));
}

/// Wine as two feature groups (`wine_features` online), a model trained on all features
/// (version 1) and one on three of them (version 2).
async fn wine_models(s: &Server, k: &str) -> Vec<String> {
    crate::models::ingest_dataset(s, k, "wine", "cultivar", "int64").await;
    let r = s.client.patch(s.url("/v1/feature-groups/wine_features")).bearer_auth(k).json(&json!({"online": true})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ts = crate::models::training_set("wine", "cultivar");
    let config = json!({"task": "classification", "hidden_layers": [16], "max_epochs": 60, "seed": 7});
    crate::models::train(s, k, json!({"model": "wine", "training_set": ts, "label": "cultivar", "config": config})).await;
    let few = ["wine_features__alcohol", "wine_features__flavanoids", "wine_features__color_intensity"];
    crate::models::train(s, k, json!({"model": "wine", "training_set": ts, "label": "cultivar", "inputs": few, "config": config})).await;
    let v: Value = s.get(k, "/v1/models/wine/versions/1").send().await.unwrap().json().await.unwrap();
    assert_eq!(v["state"], "active");
    let text = std::fs::read_to_string(format!("{}/../trainer/tests/data/wine.csv", env!("CARGO_MANIFEST_DIR"))).unwrap();
    text.lines().map(str::to_string).collect()
}

async fn invoke(s: &Server, k: &str, path: &str, body: Value) -> Value {
    let r = s.post(k, path).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

#[tokio::test]
async fn models_score_mlflow_inputs_and_entities_swap_on_alias_moves_and_refuse_tampering() {
    let s = Server::start().await;
    let k = s.admin_key.clone();
    let lines = wine_models(&s, &k).await;
    let header: Vec<String> = lines[0].split(',').map(|h| format!("wine_features__{h}")).collect();
    let label_at = header.iter().position(|h| h == "wine_features__cultivar").unwrap();
    let rows: Vec<Vec<f64>> = lines[1..].iter().map(|l| l.split(',').map(|c| c.parse().unwrap()).collect()).collect();
    let columns: Vec<&String> = header.iter().enumerate().filter(|(i, _)| *i != label_at && *i != 0).map(|(_, h)| h).collect();
    let data: Vec<Vec<f64>> = rows.iter().map(|r| r.iter().enumerate().filter(|(i, _)| *i != label_at && *i != 0).map(|(_, v)| *v).collect()).collect();

    // The same rows in every MLflow shape give the same predictions.
    let split = invoke(&s, &k, "/v1/models/wine/versions/1/invocations", json!({"dataframe_split": {"columns": columns, "data": data}})).await;
    let predictions = split["predictions"].as_array().unwrap().clone();
    assert_eq!(predictions.len(), rows.len());
    let correct = predictions.iter().zip(&rows).filter(|(p, r)| p.as_f64() == Some(r[label_at])).count();
    assert!(correct as f64 / rows.len() as f64 > 0.9, "{correct} of {} right", rows.len());
    assert_eq!(split["classes"], json!([0, 1, 2]));
    let p0: f64 = split["probabilities"][0].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).sum();
    assert!((p0 - 1.0).abs() < 1e-4);
    assert_eq!((split["model"].as_str(), split["version"].as_i64()), (Some("wine"), Some(1)));
    let records: Vec<Value> = data.iter().map(|r| Value::Object(columns.iter().zip(r).map(|(c, v)| (c.to_string(), json!(v))).collect())).collect();
    for body in [json!({"dataframe_records": records}), json!({"instances": records}), json!({"inputs": records})] {
        assert_eq!(invoke(&s, &k, "/v1/models/wine/versions/1/invocations", body).await["predictions"].as_array().unwrap(), &predictions);
    }
    let mut csv = columns.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(",");
    for r in &data {
        csv.push('\n');
        csv.push_str(&r.iter().map(f64::to_string).collect::<Vec<_>>().join(","));
    }
    let r = s.post(&k, "/v1/models/wine/versions/1/invocations").header("content-type", "text/csv").body(csv).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["predictions"].as_array().unwrap(), &predictions);

    // Schema checks name the column.
    let mut missing = records[0].clone();
    missing.as_object_mut().unwrap().remove("wine_features__alcohol");
    let r = s.post(&k, "/v1/models/wine/versions/1/invocations").json(&json!({"dataframe_records": [missing]})).send().await.unwrap();
    assert!(error_code(r, 422).await.1.contains("input column `wine_features__alcohol` is missing"));
    let mut text = records[0].clone();
    text["wine_features__hue"] = json!("high");
    let r = s.post(&k, "/v1/models/wine/versions/1/invocations").json(&json!({"dataframe_records": [records[1], text]})).send().await.unwrap();
    assert!(error_code(r, 422).await.1.contains("column `wine_features__hue` row 1: expected a number"));
    let r = s.post(&k, "/v1/models/wine/versions/1/invocations").body("{not json").send().await.unwrap();
    assert_eq!(error_code(r, 400).await.0, "bad_request");
    let r = s.post(&k, "/v1/models/wine/versions/9/invocations").json(&json!({"instances": records})).send().await.unwrap();
    assert_eq!(error_code(r, 404).await.0, "model_version_not_found");

    // By entity: the inputs come from the online store; the answer is the same.
    let ids: Vec<i64> = rows.iter().map(|r| r[0] as i64).collect();
    let by_entity = invoke(&s, &k, "/v1/models/wine/versions/1/invocations", json!({"entities": {"id": ids}})).await;
    assert_eq!(by_entity["predictions"].as_array().unwrap(), &predictions);
    let r = s.post(&k, "/v1/models/wine/versions/1/invocations").json(&json!({"entities": [{"wine_id": 1}]})).send().await.unwrap();
    assert!(error_code(r, 422).await.1.contains("entity key `id`"));

    // Aliases: a move swaps the model for the next request.
    let put = |alias: &str, body: Value| s.client.put(s.url(&format!("/v1/models/wine/aliases/{alias}"))).bearer_auth(&k).json(&body).send();
    assert_eq!(put("champion", json!({"version": 1})).await.unwrap().status(), 200);
    let one = json!({"dataframe_records": [records[0]]});
    assert_eq!(invoke(&s, &k, "/v1/models/wine@champion/invocations", one.clone()).await["version"], 1);
    assert_eq!(put("champion", json!({"version": 2})).await.unwrap().status(), 200);
    assert_eq!(invoke(&s, &k, "/v1/models/wine@champion/invocations", one.clone()).await["version"], 2);
    let r = s.post(&k, "/v1/models/wine@nobody/invocations").json(&one).send().await.unwrap();
    assert_eq!(error_code(r, 404).await.0, "alias_not_found");

    // A tampered artifact is refused at load: no alias, no scores.
    crate::models::train(&s, &k, json!({"model": "wine", "training_set": crate::models::training_set("wine", "cultivar"), "label": "cultivar",
                                         "config": {"task": "classification", "hidden_layers": [], "max_epochs": 3, "seed": 3}})).await;
    let v3: Value = s.get(&k, "/v1/models/wine/versions/3").send().await.unwrap().json().await.unwrap();
    let sha = v3["artifact_sha256"].as_str().unwrap();
    let path = walk(&s.data_dir).into_iter().find(|p| p.to_string_lossy().ends_with(&format!("{sha}.json"))).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.iter().position(|b| *b == b'[').unwrap();
    bytes.insert(at + 1, b' ');
    std::fs::write(&path, bytes).unwrap();
    assert_eq!(error_code(put("champion", json!({"version": 3})).await.unwrap(), 409).await.0, "integrity_check_failed");
    let r = s.post(&k, "/v1/models/wine/versions/3/invocations").json(&one).send().await.unwrap();
    assert_eq!(error_code(r, 409).await.0, "integrity_check_failed");
    assert_eq!(invoke(&s, &k, "/v1/models/wine@champion/invocations", one.clone()).await["version"], 2);

    // Audited with the version that answered and a hash of the input; metrics per model.
    let r = s.post(&k, "/v1/models/wine@champion/invocations").header("x-request-id", "score-1").json(&one).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await;
    let all = crate::audit::wait_for_outcomes(&s, &["score-1".into()]).await;
    let outcome = crate::audit::find(&all, "score-1", "outcome").unwrap();
    assert_eq!((outcome["kind"].as_str(), &outcome["resource"]["versions_read"]), (Some("model.invoke"), &json!([2])));
    assert_eq!((outcome["details"]["alias"].as_str(), outcome["details"]["variant"].as_str()), (Some("champion"), Some("stable")));
    assert_eq!(outcome["details"]["input_sha256"].as_str().unwrap().len(), 64);
    let metrics = s.get(&s.admin_key, "/metrics").send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("lakeledger_model_requests_total{model=\"default/wine\",version=\"2\",status=\"ok\"}"), "{metrics}");
    assert!(metrics.contains("lakeledger_model_batch_rows_bucket{model=\"default/wine\",version=\"1\""));
}

/// A unary call of the inference service, as any gRPC client makes it.
async fn grpc_infer<Req: prost::Message + 'static, Res: prost::Message + Default + 'static>(s: &Server, key: &str, method: &'static str, message: Req) -> Result<Res, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.flight)).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    let path = http::uri::PathAndQuery::from_static(method);
    grpc.unary(request, path, tonic_prost::ProstCodec::<Req, Res>::default()).await.map(tonic::Response::into_inner)
}

#[tokio::test]
async fn native_models_answer_the_open_inference_protocol_over_http_and_grpc() {
    use lakeledger::rpc::inference::proto::*;
    let s = Server::start().await;
    let k = s.admin_key.clone();
    let lines = wine_models(&s, &k).await;
    let header: Vec<&str> = lines[0].split(',').collect();
    let rows: Vec<Vec<f64>> = lines[1..6].iter().map(|l| l.split(',').map(|c| c.parse().unwrap()).collect()).collect();
    let few = ["alcohol", "flavanoids", "color_intensity"];
    let column = |name: &str| -> Vec<f64> { let i = header.iter().position(|h| *h == name).unwrap(); rows.iter().map(|r| r[i]).collect() };
    let records: Vec<Value> = (0..rows.len()).map(|r| Value::Object(few.iter().map(|f| (format!("wine_features__{f}"), json!(column(f)[r]))).collect())).collect();
    let mlflow = invoke(&s, &k, "/v1/models/wine/versions/2/invocations", json!({"dataframe_records": records})).await;

    // Metadata: one FP64 tensor per column; predictions (the class) and probabilities.
    let meta: Value = s.get(&k, "/v2/models/wine/versions/2").send().await.unwrap().json().await.unwrap();
    assert_eq!(meta["platform"], "lakeledger");
    assert_eq!(meta["inputs"].as_array().unwrap().len(), 3);
    assert_eq!(meta["inputs"][0], json!({"name": "wine_features__alcohol", "datatype": "FP64", "shape": [-1]}));
    assert_eq!(meta["outputs"], json!([{"name": "predictions", "datatype": "INT64", "shape": [-1]}, {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]));
    let r = s.get(&k, "/v2/models/wine/ready").send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"name": "wine", "version": "2", "ready": true}));

    // Inference over HTTP gives the MLflow-shaped answer's predictions.
    let inputs: Vec<Value> = few.iter().map(|f| json!({"name": format!("wine_features__{f}"), "shape": [rows.len()], "datatype": "FP64", "data": column(f)})).collect();
    let answer = invoke(&s, &k, "/v2/models/wine/versions/2/infer", json!({"id": "q1", "inputs": inputs})).await;
    assert_eq!((answer["model_name"].as_str(), answer["model_version"].as_str(), answer["id"].as_str()), (Some("wine"), Some("2"), Some("q1")));
    assert_eq!(&answer["outputs"][0]["data"], &mlflow["predictions"]);
    assert_eq!(answer["outputs"][1]["shape"], json!([rows.len(), 3]));
    // A missing input is named.
    let r = s.post(&k, "/v2/models/wine/versions/2/infer").json(&json!({"inputs": [inputs[0]]})).send().await.unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("wine_features__flavanoids` is missing"));

    // The same over gRPC, with typed contents, through the alias; audited as model.invoke.
    s.client.put(s.url("/v1/models/wine/aliases/champion")).bearer_auth(&k).json(&json!({"version": 2})).send().await.unwrap();
    let request = ModelInferRequest {
        model_name: "wine@champion".into(),
        inputs: few
            .iter()
            .map(|f| InferInputTensor {
                name: format!("wine_features__{f}"),
                datatype: "FP64".into(),
                shape: vec![rows.len() as i64],
                contents: Some(InferTensorContents { fp64_contents: column(f), ..Default::default() }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let reply: ModelInferResponse = grpc_infer(&s, &k, "/inference.GRPCInferenceService/ModelInfer", request.clone()).await.unwrap();
    assert_eq!(reply.model_version, "2");
    let labels: Vec<i64> = reply.raw_output_contents[0].chunks(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(labels.iter().map(|l| json!(l)).collect::<Vec<_>>(), *mlflow["predictions"].as_array().unwrap());
    let ready: ModelReadyResponse = grpc_infer(&s, &k, "/inference.GRPCInferenceService/ModelReady", ModelReadyRequest { name: "wine".into(), version: "1".into() }).await.unwrap();
    assert!(ready.ready);
    let refused = grpc_infer::<_, ModelInferResponse>(&s, "llk_not_a_key", "/inference.GRPCInferenceService/ModelInfer", request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let missing = grpc_infer::<_, ModelMetadataResponse>(&s, &k, "/inference.GRPCInferenceService/ModelMetadata", ModelMetadataRequest { name: "nope".into(), version: String::new() }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

#[tokio::test]
async fn a_failing_canary_is_rolled_back_by_its_guard_and_a_good_one_promoted() {
    let s = Server::start().await;
    let k = s.admin_key.clone();
    wine_models(&s, &k).await;
    let put = |path: &str, body: Value| s.client.put(s.url(path)).bearer_auth(&k).json(&body).send();
    assert_eq!(put("/v1/models/wine/aliases/champion", json!({"version": 2})).await.unwrap().status(), 200);
    // Version 1 needs all thirteen inputs; these requests carry the three version 2 takes.
    let three = json!({"dataframe_records": [{"wine_features__alcohol": 13.2, "wine_features__flavanoids": 2.7, "wine_features__color_intensity": 4.4}]});
    let r = put("/v1/models/wine/aliases/champion/canary", json!({"version": 1, "percent": 50, "reason": "try all features",
                                                                   "guard": {"max_error_rate": 0.2, "min_requests": 5, "window": 20}})).await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let again = put("/v1/models/wine/aliases/champion/canary", json!({"version": 1, "percent": 10})).await.unwrap();
    assert_eq!(error_code(again, 409).await.0, "conflict");

    let (mut stable, mut failed) = (0, 0);
    let mut failed_ids = Vec::new();
    for i in 0..200 {
        let id = format!("canary-{i}");
        let r = s.post(&k, "/v1/models/wine@champion/invocations").header("x-request-id", &id).json(&three).send().await.unwrap();
        match r.status().as_u16() {
            200 => stable += 1,
            422 => {
                failed += 1;
                failed_ids.push(id);
            }
            other => panic!("unexpected status {other}"),
        }
    }
    // Failed requests are audited with what was tried.
    let all = crate::audit::wait_for_outcomes(&s, &failed_ids).await;
    let outcome = crate::audit::find(&all, &failed_ids[0], "outcome").unwrap();
    assert_eq!((outcome["details"]["variant"].as_str(), &outcome["resource"]["versions_read"]), (Some("canary"), &json!([1])), "{outcome}");
    // The guard stops routing to the canary as soon as it judges: a handful failed, no more.
    assert!((5..=6).contains(&failed), "{failed} canary requests failed");
    assert_eq!(stable + failed, 200);
    let mut history = Vec::new();
    for _ in 0..400 {
        history = s.get(&k, "/v1/models/wine/aliases/champion/canary").send().await.unwrap().json::<Vec<Value>>().await.unwrap();
        if history[0]["ended_at"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let reason = history[0]["end_reason"].as_str().unwrap();
    assert!(reason.starts_with("rolled back by guard: error rate 1.0000"), "{reason}");
    assert_eq!(history[0]["ended_by"], "guard");

    // A good canary is promoted: the alias moves and says why.
    let r = put("/v1/models/wine/aliases/champion/canary", json!({"version": 1, "percent": 5})).await.unwrap();
    assert_eq!(r.status(), 201);
    let r = s.post(&k, "/v1/models/wine/aliases/champion/canary/promote?reason=looks+good").send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let moves: Vec<Value> = s.get(&k, "/v1/models/wine/aliases/champion/history").send().await.unwrap().json().await.unwrap();
    assert_eq!((moves.last().unwrap()["to_version"].as_i64(), moves.last().unwrap()["reason"].as_str()), (Some(1), Some("canary promoted: looks good")));
    let full = json!({"instances": [[13.2, 1.8, 2.4, 16.0, 100.0, 2.8, 2.7, 0.3, 1.9, 4.4, 1.0, 3.2, 1000.0]]});
    let v = invoke(&s, &k, "/v1/models/wine@champion/invocations", full).await;
    assert_eq!(v["version"], 1);
    let (_, m) = error_code(put("/v1/models/wine/aliases/champion/canary", json!({"version": 1, "percent": 5})).await.unwrap(), 422).await;
    assert!(m.contains("already points at version 1"), "{m}");
    let (_, m) = error_code(put("/v1/models/wine/aliases/champion/canary", json!({"version": 2, "percent": 100})).await.unwrap(), 422).await;
    assert!(m.contains("percent"), "{m}");
}

#[tokio::test]
async fn inference_logs_are_queryable_and_drift_is_measured_and_signalled() {
    // A webhook receiver for the scheduled drift check.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(axum::http::HeaderMap, bytes::Bytes)>();
    let hook = axum::Router::new().route(
        "/drift",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((headers, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, hook).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hook.secret"), "s3cret\n").unwrap();
    let mut config = lakeledger::app::config::Config::embedded(dir.path().join("data")).unwrap();
    config.inference_log_flush = Duration::from_millis(50);
    let check = format!(
        "tenant = 'default'\nmodel = 'wine'\nalias = 'champion'\nevery_seconds = 1\nwindow_seconds = 3600\nwebhook_url = 'http://{hook_addr}/drift'\nsecret_file = {:?}\n",
        dir.path().join("hook.secret")
    );
    config.drift_checks = vec![check.parse().unwrap()];
    let s = Server::start_with(config, None).await;
    let k = s.admin_key.clone();
    let lines = wine_models(&s, &k).await;
    let header: Vec<String> = lines[0].split(',').map(|h| format!("wine_features__{h}")).collect();
    let records = |shift: f64| -> Vec<Value> {
        lines[1..]
            .iter()
            .map(|l| {
                let cells: Vec<f64> = l.split(',').map(|c| c.parse().unwrap()).collect();
                let mut row = serde_json::Map::new();
                for (h, v) in header.iter().zip(cells).skip(1).take(13) {
                    row.insert(h.clone(), json!(if h.ends_with("__alcohol") { v + shift } else { v }));
                }
                Value::Object(row)
            })
            .collect()
    };
    let put = s.client.put(s.url("/v1/models/wine/aliases/champion")).bearer_auth(&k).json(&json!({"version": 1})).send().await.unwrap();
    assert_eq!(put.status(), 200);

    // The training rows themselves: no drift.
    let r = s.post(&k, "/v1/models/wine@champion/invocations").header("x-request-id", "logged-1").json(&json!({"dataframe_records": records(0.0)})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let count = |sql: &'static str| {
        let s = &s;
        let k = k.clone();
        async move {
            for _ in 0..400 {
                let r = s.post(&k, "/v1/sql").json(&json!({"sql": sql, "format": "json"})).send().await.unwrap();
                if r.status() == 200 {
                    let rows: Value = r.json().await.unwrap();
                    if rows[0]["n"].as_i64().unwrap_or(0) > 0 {
                        return rows[0]["n"].as_i64().unwrap();
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("nothing logged: {sql}");
        }
    };
    let n = count("SELECT count(*) AS n FROM inference_wine WHERE request_id = 'logged-1' AND model_version = 1 AND alias = 'champion'").await;
    assert_eq!(n as usize, lines.len() - 1);

    // Nobody but the server writes the log or marks a group as one: a writer (even an
    // admin) cannot forge what drift reports and auditors read.
    let writer = s.create_key("writer", None).await;
    for key in [&writer, &k] {
        let r = s.ingest_json(key, "inference_wine", "append", json!([{"request_id": "forged", "row": 0, "served_at": "2026-01-01T00:00:00Z"}])).await;
        let (_, m) = error_code(r, 403).await;
        assert!(m.contains("inference_"), "{m}");
        let r = s.client.patch(s.url("/v1/feature-groups/inference_wine")).bearer_auth(key).json(&json!({"tags": {}})).send().await.unwrap();
        let (code, m) = error_code(r, 403).await;
        assert_eq!(code, "reserved_name");
        assert!(m.contains("lakeledger.inference_log"), "{m}");
        let r = s.client.patch(s.url("/v1/feature-groups/wine_features")).bearer_auth(key).json(&json!({"tags": {"lakeledger.inference_log": "wine"}})).send().await.unwrap();
        assert_eq!(error_code(r, 403).await.0, "reserved_name");
        let r = s.client.put(s.url("/v1/feature-groups/inference_wine/schema")).bearer_auth(key).json(&json!({"features": []})).send().await.unwrap();
        assert_eq!(error_code(r, 403).await.0, "reserved_name");
        let create = json!({"name": "inference_other", "entity_keys": [{"name": "id", "type": "int64"}], "event_time": "ts"});
        let r = s.post(key, "/v1/feature-groups").json(&create).send().await.unwrap();
        assert_eq!(error_code(r, 403).await.0, "reserved_name");
        let tagged = json!({"name": "sneaky", "entity_keys": [{"name": "id", "type": "int64"}], "event_time": "ts", "tags": {"lakeledger.inference_log": "wine"}});
        let r = s.post(key, "/v1/feature-groups").json(&tagged).send().await.unwrap();
        assert_eq!(error_code(r, 403).await.0, "reserved_name");
    }
    // Describing the log stays open; its reserved tag stays as the server set it.
    let r = s.client.patch(s.url("/v1/feature-groups/inference_wine")).bearer_auth(&k).json(&json!({"description": "wine scoring log"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["tags"]["lakeledger.inference_log"], "wine");
    let forged = count("SELECT count(*) + 1 AS n FROM inference_wine WHERE request_id = 'forged'").await;
    assert_eq!(forged, 1, "no forged row was written");

    let drift: Value = s.get(&k, "/v1/models/wine/versions/1/drift").send().await.unwrap().json().await.unwrap();
    assert_eq!(drift["current_rows"].as_u64(), Some(lines.len() as u64 - 1), "{drift}");
    assert_eq!(drift["drifted"], json!([]), "{drift}");
    assert!(drift["features"].as_array().unwrap().iter().all(|f| f["ks"].as_f64().unwrap() < 1e-9));

    // Alcohol five points up: that input drifts, the others do not.
    let r = s.post(&k, "/v1/models/wine@champion/invocations").header("x-request-id", "logged-2").json(&json!({"dataframe_records": records(5.0)})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    count("SELECT count(*) AS n FROM inference_wine WHERE request_id = 'logged-2'").await;
    // Half the logged rows are shifted: enough for both measures to flag it.
    let drift: Value = s.get(&k, "/v1/models/wine/versions/1/drift").send().await.unwrap().json().await.unwrap();
    assert_eq!(drift["drifted"], json!(["wine_features__alcohol"]), "{drift}");
    let alcohol = drift["features"].as_array().unwrap().iter().find(|f| f["name"] == "wine_features__alcohol").unwrap();
    assert!(alcohol["psi"].as_f64().unwrap() > 0.5 && alcohol["ks"].as_f64().unwrap() > 0.4 && alcohol["ks_p_value"].as_f64().unwrap() < 1e-6, "{alcohol}");
    let later: Value = s.get(&k, "/v1/models/wine/versions/1/drift?since=2999-01-01T00:00:00Z").send().await.unwrap().json().await.unwrap();
    assert_eq!((later["current_rows"].as_u64(), &later["drifted"]), (Some(0), &json!([])), "a window with no rows");
    let r = s.get(&k, "/v1/models/wine/versions/1/drift?since=yesterday").send().await.unwrap();
    assert_eq!(error_code(r, 400).await.0, "bad_request");

    // Or against what a feature group's later commits wrote: new wines, alcohol shifted.
    let mut csv = String::from("id,ts,") + &lines[0].split(',').skip(1).take(13).collect::<Vec<_>>().join(",") + "\n";
    for l in &lines[1..] {
        let cells: Vec<f64> = l.split(',').map(|c| c.parse().unwrap()).collect();
        let rest: Vec<String> = cells[1..14].iter().enumerate().map(|(i, v)| if i == 0 { (v + 5.0).to_string() } else { v.to_string() }).collect();
        csv.push_str(&format!("{},2026-02-01T00:00:00Z,{}\n", cells[0] as i64 + 1000, rest.join(",")));
    }
    let r = s.post(&k, "/v1/feature-groups/wine_features/data").header("content-type", "text/csv").body(csv).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let by_group: Value = s.get(&k, "/v1/models/wine/versions/1/drift?feature_group=wine_features&from_version=1").send().await.unwrap().json().await.unwrap();
    assert_eq!((by_group["current_rows"].as_u64(), &by_group["drifted"]), (Some(lines.len() as u64 - 1), &json!(["wine_features__alcohol"])), "{by_group}");
    let r = s.get(&k, "/v1/models/wine/versions/1/drift?feature_group=wine_features").send().await.unwrap();
    assert_eq!(error_code(r, 400).await.0, "bad_request");

    // The scheduled check calls the webhook with a body signed over its timestamp.
    let (headers, body) = loop {
        let (h, b) = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await.expect("the drift webhook is called").unwrap();
        if serde_json::from_slice::<Value>(&b).unwrap()["report"]["drifted"] == json!(["wine_features__alcohol"]) {
            break (h, b);
        }
    };
    let ts: i64 = headers["x-lakeledger-timestamp"].to_str().unwrap().parse().unwrap();
    assert_eq!(headers["x-lakeledger-signature"].to_str().unwrap(), lakeledger::serving::drift::sign_webhook(b"s3cret", ts, &body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alias_moves_under_load_drop_no_request() {
    // One loaded version at a time: every move, and every request the canary takes, also
    // evicts the version others are using.
    let dir = tempfile::tempdir().unwrap();
    let mut config = lakeledger::app::config::Config::embedded(dir.path()).unwrap();
    config.serving_max_loaded_models = 1;
    // Inference-log commits write to the catalog while aliases move.
    config.inference_log_flush = Duration::from_millis(50);
    let s = Server::start_with(config, None).await;
    let k = s.admin_key.clone();
    wine_models(&s, &k).await;
    // Three input sets: version 1 takes all thirteen inputs, version 2 three, version 3
    // (a linear model) five.
    let five = ["wine_features__alcohol", "wine_features__malic_acid", "wine_features__ash", "wine_features__magnesium", "wine_features__proline"];
    let linear = json!({"task": "classification", "hidden_layers": [], "max_epochs": 40, "seed": 3});
    crate::models::train(&s, &k, json!({"model": "wine", "training_set": crate::models::training_set("wine", "cultivar"), "label": "cultivar", "inputs": five, "config": linear})).await;
    let put = |v: i64| s.client.put(s.url("/v1/models/wine/aliases/champion")).bearer_auth(&k).json(&json!({"version": v})).send();
    let canary = |start: bool| {
        let r = s.client.request(if start { reqwest::Method::PUT } else { reqwest::Method::DELETE }, s.url("/v1/models/wine/aliases/champion/canary")).bearer_auth(&k);
        if start { r.json(&json!({"version": 3, "percent": 30})) } else { r }.send()
    };
    assert_eq!(put(2).await.unwrap().status(), 200);
    let body = json!({"instances": [[13.2, 1.8, 2.4, 16.0, 100.0, 2.8, 2.7, 0.3, 1.9, 4.4, 1.0, 3.2, 1000.0]]});
    let full = {
        let names: Vec<String> = std::fs::read_to_string(format!("{}/../trainer/tests/data/wine.csv", env!("CARGO_MANIFEST_DIR"))).unwrap()
            .lines().next().unwrap().split(',').skip(1).take(13).map(|h| format!("wine_features__{h}")).collect();
        let row: serde_json::Map<String, Value> = names.into_iter().zip(body["instances"][0].as_array().unwrap().iter().cloned()).collect();
        json!({"dataframe_records": [row]})
    };
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (client, url, k, full) = (s.client.clone(), s.url("/v1/models/wine@champion/invocations"), k.clone(), full.clone());
            tokio::spawn(async move {
                let mut versions = Vec::new();
                for _ in 0..60 {
                    let r = client.post(&url).bearer_auth(&k).json(&full).send().await.unwrap();
                    let status = r.status();
                    let answer: Value = r.json().await.unwrap();
                    assert_eq!(status, 200, "{answer}");
                    versions.push(answer["version"].as_i64().unwrap());
                }
                versions
            })
        })
        .collect();
    // Moves between versions 1 and 2, with a canary of version 3 started and stopped
    // along the way.
    for i in 0..30 {
        let r = put(1 + i % 2).await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        if i % 6 == 1 {
            let r = canary(true).await.unwrap();
            assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        }
        if i % 6 == 4 {
            let r = canary(false).await.unwrap();
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for c in clients {
        seen.extend(c.await.unwrap());
    }
    assert!(seen.iter().all(|v| [1, 2, 3].contains(v)), "{seen:?}");
    // After the last move (to version 2; no canary open) every request is answered by
    // the version the alias points at.
    for _ in 0..20 {
        assert_eq!(invoke(&s, &k, "/v1/models/wine@champion/invocations", full.clone()).await["version"], 2);
    }
}

/// Polls `lookup` on `s` until `done` holds (another replica's commit takes a refresh
/// round to arrive); the cap only stops a hang.
async fn until_seen(s: &Server, k: &str, ask: &Value, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..400 {
        let v = lookup(s, k, ask.clone()).await;
        if done(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the replica never saw the commit");
}

#[tokio::test]
async fn replicas_sharing_catalog_and_tables_see_each_others_writes() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a_config = lakeledger::app::config::Config::embedded(a_dir.path()).unwrap();
    let mut b_config = lakeledger::app::config::Config::embedded(b_dir.path()).unwrap();
    b_config.catalog_url = a_config.catalog_url.clone();
    b_config.data_root = a_config.data_root.clone();
    let a = Server::start_with(a_config, None).await;
    let k = a.admin_key.clone();
    let r = a
        .post(&k, "/v1/feature-groups")
        .json(&json!({"name": "profiles", "entity_keys": [{"name": "user_id", "type": "int64"}], "event_time": "ts",
                      "features": [{"name": "age", "type": "float64"}], "online": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let recent = ago(60);
    a.ingest_json(&k, "profiles", "append", json!([{"user_id": 1, "ts": ago(120), "age": 30.0}, {"user_id": 2, "ts": ago(120), "age": 40.0}])).await;
    let b = Server::start_with(b_config, Some(k.clone())).await;
    let ask = json!({"features": ["profiles:age"], "entities": {"user_id": [1, 2]}});
    assert_eq!(column(&lookup(&b, &k, ask.clone()).await, 1).0, vec![json!(30.0), json!(40.0)]);

    // An append through A reaches B incrementally; an overwrite through A rebuilds B's copy.
    a.ingest_json(&k, "profiles", "append", json!([{"user_id": 1, "ts": recent, "age": 31.0}])).await;
    let v = until_seen(&b, &k, &ask, |v| column(v, 1).0[0] == json!(31.0)).await;
    assert_eq!(v["metadata"]["versions"], json!({"profiles": 2}));
    a.ingest_json(&k, "profiles", "overwrite", json!([{"user_id": 1, "ts": recent, "age": 32.0}])).await;
    let v = until_seen(&b, &k, &ask, |v| column(v, 1).1[1] == "NOT_FOUND").await;
    assert_eq!((column(&v, 1).0[0].clone(), &v["metadata"]["versions"]), (json!(32.0), &json!({"profiles": 3})));
}

/// The embedded online store keeps to its memory budget: a group that would take it over
/// is refused (loading) or taken out (a commit), its data safe in Delta, and lookups say
/// why with 507 `online_store_full`; the store's size is in the metrics.
#[tokio::test]
async fn the_online_store_keeps_to_its_memory_budget_and_says_which_group_is_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = lakeledger::app::config::Config::embedded(dir.path()).unwrap();
    config.online_store_max_bytes = Some(40_000);
    let s = Server::start_with(config, None).await;
    let k = s.admin_key.clone();
    let create = |name: &str, online: bool| {
        s.post(&k, "/v1/feature-groups")
            .json(&json!({"name": name, "entity_keys": [{"name": "id", "type": "int64"}], "event_time": "ts",
                          "features": [{"name": "note", "type": "string"}], "online": online}))
            .send()
    };
    let rows = |from: i64, n: i64| -> Value {
        json!((from..from + n).map(|i| json!({"id": i, "ts": "2026-01-01T00:00:00Z", "note": format!("{i:0>40}")})).collect::<Vec<_>>())
    };
    let lookup = |group: &str| s.post(&k, "/v1/online/features").json(&json!({"features": [group], "entities": {"id": [1]}})).send();
    assert_eq!(create("small", true).await.unwrap().status(), 201);
    assert_eq!(s.ingest_json(&k, "small", "append", rows(0, 50)).await.status(), 201);
    assert_eq!(lookup("small").await.unwrap().status(), 200);

    // Loading a group that does not fit is refused, saying so; the group's data is intact.
    assert_eq!(create("big", false).await.unwrap().status(), 201);
    assert_eq!(s.ingest_json(&k, "big", "append", rows(0, 1000)).await.status(), 201);
    let r = s.client.patch(s.url("/v1/feature-groups/big")).bearer_auth(&k).json(&json!({"online": true})).send().await.unwrap();
    let (code, message) = error_code(r, 507).await;
    assert_eq!(code, "online_store_full");
    assert!(message.contains("`big`") && message.contains("40000"), "{message}");
    let (code, _) = error_code(lookup("big").await.unwrap(), 507).await;
    assert_eq!(code, "online_store_full");
    assert_eq!(s.read_json(&k, "/v1/feature-groups/big/data?limit=5000").await.len(), 1000);
    assert_eq!(lookup("small").await.unwrap().status(), 200, "the groups that fit keep serving");

    // A commit that takes a served group over the budget takes it out, not the server down.
    assert_eq!(s.ingest_json(&k, "small", "append", rows(1000, 1000)).await.status(), 201);
    let (code, message) = error_code(lookup("small").await.unwrap(), 507).await;
    assert_eq!(code, "online_store_full");
    assert!(message.contains("`small`"), "{message}");
    let metrics = s.get(&k, "/metrics").send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("lakeledger_online_store_bytes") && metrics.contains("lakeledger_online_groups_dropped_total"), "{metrics}");
}
