use std::net::SocketAddr;
use std::path::PathBuf;

use lakeledger::app::config::Config;
use reqwest::{Client, RequestBuilder, Response};
use serde_json::{Value, json};

pub struct Server {
    pub addr: SocketAddr,
    /// Arrow Flight SQL (on for every test server).
    pub flight: SocketAddr,
    pub state: lakeledger::http::AppState,
    pub admin_key: String,
    pub data_dir: PathBuf,
    pub client: Client,
    _dir: Option<tempfile::TempDir>,
    handle: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl Server {
    /// A server on embedded defaults in a fresh temp dir.
    pub async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Server::start_with(Config::embedded(dir.path()).unwrap(), None).await;
        s._dir = Some(dir);
        s
    }

    /// Starts on `config` (listen forced to port 0). `admin_key` is needed when the
    /// catalog was bootstrapped earlier.
    pub async fn start_with(mut config: Config, admin_key: Option<String>) -> Server {
        config.listen = "127.0.0.1:0".parse().unwrap();
        if config.flight_listen.is_none() {
            config.flight_listen = Some("127.0.0.1:0".parse().unwrap());
        }
        let data_dir = config.data_dir.clone();
        let prepared = lakeledger::app::server::prepare(config).await.expect("server prepares");
        let admin_key = prepared.first_admin_key.as_ref().map(|k| k.secret.clone()).or(admin_key).expect("an admin key");
        let state = prepared.state.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            lakeledger::app::server::serve_until(prepared, |bound| tx.send(bound).unwrap(), shutdown).await.unwrap();
        });
        let bound = rx.await.unwrap();
        let (addr, flight) = (bound.http, bound.flight.expect("Flight is on").0);
        Server { addr, flight, state, admin_key, data_dir, client: Client::new(), _dir: None, handle, stop: Some(stop) }
    }

    /// Shuts down gracefully: the ledger records the shutdown and is released, so a new
    /// server can open the same data dir.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        // Idle keep-alive connections would hold the graceful shutdown open.
        self.client = Client::new();
        let handle = std::mem::replace(&mut self.handle, tokio::spawn(async {}));
        let _ = handle.await;
    }

    /// Serves this server's state over its route table plus `extra` (a route that panics,
    /// one that never answers), with the same layers, on another port; returns its address.
    pub async fn serve_with_routes(&self, extra: axum::Router<lakeledger::http::AppState>) -> SocketAddr {
        let routes = lakeledger::http::routes().merge(extra);
        let app = lakeledger::app::server::app_with_routes(self.state.clone(), routes);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn get(&self, key: &str, path: &str) -> RequestBuilder {
        self.client.get(self.url(path)).bearer_auth(key)
    }

    pub fn post(&self, key: &str, path: &str) -> RequestBuilder {
        self.client.post(self.url(path)).bearer_auth(key)
    }

    pub fn delete(&self, key: &str, path: &str) -> RequestBuilder {
        self.client.delete(self.url(path)).bearer_auth(key)
    }

    pub async fn create_key(&self, role: &str, tenant: Option<&str>) -> String {
        let mut body = json!({"name": format!("{role} key"), "role": role});
        if let Some(t) = tenant {
            body["tenant"] = json!(t);
        }
        let r = self.post(&self.admin_key, "/v1/keys").json(&body).send().await.unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["secret"].as_str().unwrap().to_string()
    }

    /// Creates `clicks`: user_id int64 key, ts event time, a few typed features.
    pub async fn create_clicks(&self, key: &str) {
        let r = self
            .post(key, "/v1/feature-groups")
            .json(&json!({
                "name": "clicks",
                "entity_keys": [{"name": "user_id", "type": "int64"}],
                "event_time": "ts",
                "features": [
                    {"name": "clicks", "type": "int32"},
                    {"name": "ctr", "type": "float64"},
                    {"name": "country", "type": "string"},
                    {"name": "emb", "type": "list<float32>"}
                ],
                "description": "clicks per user", "owner": "growth", "tags": {"team": "growth"}
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }

    pub async fn ingest_json(&self, key: &str, group: &str, mode: &str, rows: Value) -> Response {
        self.post(key, &format!("/v1/feature-groups/{group}/data?mode={mode}"))
            .header("content-type", "application/json")
            .body(rows.to_string())
            .send()
            .await
            .unwrap()
    }

    pub async fn read_json(&self, key: &str, path: &str) -> Vec<Value> {
        let r = self.get(key, path).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}: {}", r.text().await.unwrap());
        r.json::<Vec<Value>>().await.unwrap()
    }
}

/// A server spoken to over HTTP: one started in this process ([`Server`]) or a
/// `lakeledger serve` process ([`Remote`]); helpers that only send requests take either.
pub trait Http {
    fn client(&self) -> &Client;
    fn url(&self, path: &str) -> String;
    fn get(&self, key: &str, path: &str) -> RequestBuilder {
        self.client().get(self.url(path)).bearer_auth(key)
    }
    fn post(&self, key: &str, path: &str) -> RequestBuilder {
        self.client().post(self.url(path)).bearer_auth(key)
    }
}

impl Http for Server {
    fn client(&self) -> &Client {
        &self.client
    }
    fn url(&self, path: &str) -> String {
        Server::url(self, path)
    }
}

/// A server in another process, at `base` (`http://host:port`).
#[derive(Clone)]
pub struct Remote {
    pub base: String,
    pub client: Client,
}

impl Http for Remote {
    fn client(&self) -> &Client {
        &self.client
    }
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Reports a suite skipped for want of a part (a database, Python, a binary). The test
/// harness hides what a passing test prints, so the notice is also appended to the file
/// named by `LAKELEDGER_NOTICE_FILE`, which `scripts/test` prints at the end.
pub fn notice(message: &str) {
    eprintln!("NOTICE: {message}");
    if let Ok(path) = std::env::var("LAKELEDGER_NOTICE_FILE") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "NOTICE: {message}");
        }
    }
}

/// Asserts the common error body and returns its code.
pub async fn error_code(r: Response, status: u16) -> (String, String) {
    assert_eq!(r.status().as_u16(), status);
    let v: Value = r.json().await.unwrap();
    let e = &v["error"];
    assert!(e["error_id"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    (e["code"].as_str().unwrap().to_string(), e["message"].as_str().unwrap().to_string())
}

/// The Postgres URL for tests, or None (with a printed notice) when none is reachable.
/// With LAKELEDGER_REQUIRE_POSTGRES=1 (as in CI) an unreachable Postgres fails the test.
pub async fn postgres_url() -> Option<String> {
    let url = std::env::var("LAKELEDGER_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    match sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_secs(3))
        .connect(&url)
        .await
    {
        Ok(_) => Some(url),
        Err(e) => {
            if std::env::var("LAKELEDGER_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
                panic!("Postgres at {url} is required but unreachable: {e}");
            }
            notice(&format!("skipping Postgres tests: {url} unreachable ({e})"));
            None
        }
    }
}

/// The Redis URL for tests, or None (with a printed notice) when none answers. With
/// LAKELEDGER_REQUIRE_REDIS=1 (as in CI) an unreachable Redis fails the test.
pub async fn redis_url() -> Option<String> {
    let url = std::env::var("LAKELEDGER_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let ping = async {
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(3), ping).await {
        Ok(Ok(_)) => Some(url),
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "no answer in 3 s".into(),
            };
            if std::env::var("LAKELEDGER_REQUIRE_REDIS").is_ok_and(|v| v == "1") {
                panic!("Redis at {url} is required but unreachable: {why}");
            }
            notice(&format!("skipping Redis tests: {url} unreachable ({why})"));
            None
        }
    }
}

/// A fresh, empty Postgres schema for one test, as a connection URL using it.
pub async fn fresh_postgres_schema(base: &str) -> String {
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::postgres::PgPoolOptions::new().connect(base).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&pool).await.unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}
