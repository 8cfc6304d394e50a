//! The Redis backend of the online store: the latest row per entity kept in a Redis that
//! every replica shares, written after each Delta commit with the version it came from.
//!
//! Key layout (every command touches one key, so it runs unchanged on Redis Cluster):
//!
//! - `ll:{<group id>}:meta` — hash: `gen` (the generation lookups read) and `version` (the
//!   Delta version every row of that generation is at least as new as);
//! - `ll:{<group id>}:gens` — counter handing out generation numbers;
//! - `ll:e:<group id>:<gen>:<entity key as JSON>` — hash: `_ts` (event time, µs), `_v` (the
//!   Delta version the row came from) and `f:<feature>` (the value as JSON) per feature.
//!
//! Entity keys carry no hash tag, so a group's rows spread over a cluster's slots.
//!
//! Writes follow three rules that keep replicas from undoing each other without a lock
//! they share:
//!
//! 1. A row replaces the stored one only if its event time is later, or equal and from a
//!    version at least as new (a script compares and writes in one step).
//! 2. A commit's rows go to the generation the meta key names, unless its `version` is
//!    already at least the commit's. `version` is then raised to the commit's only if it
//!    held the commit before (or, for a catch-up of several commits, the version the
//!    catch-up started from), and the generation is still current: the served version
//!    never skips a commit whose rows may be missing (a replica that died between its Delta
//!    commit and its Redis write leaves `version` behind, and the refresh task catches up
//!    from there). If a rebuild switched generations meanwhile, the rows go again to the
//!    new one unless it was built from a version at least as new.
//! 3. A rebuild (from Delta, or an overwrite) fills a fresh generation and switches to it
//!    only if no newer version is served; the generation it replaces is deleted.

use std::sync::Arc;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde_json::Value;

use super::lookup::{EntityRows, FeatureRef, Found, Lookup, entity_key};
use super::{EntityKey, Entry, KeyPart};
use crate::error::{Error, Result};

/// Compares a row with the stored one and writes it if it is newer (rule 1). `KEYS[1]` is
/// the entity key; `ARGV` is event time, version, then `f:<feature>`/value pairs.
const UPSERT: &str = r"
local cur = redis.call('HMGET', KEYS[1], '_ts', '_v')
if cur[1] then
  local t, nt = tonumber(cur[1]), tonumber(ARGV[1])
  if t > nt or (t == nt and tonumber(cur[2]) > tonumber(ARGV[2])) then return 0 end
end
redis.call('HSET', KEYS[1], '_ts', ARGV[1], '_v', ARGV[2])
for i = 3, #ARGV, 200 do
  redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 199, #ARGV)))
end
return 1
";

/// Raises the served version to `ARGV[2]` if the generation `ARGV[1]` is still current and
/// holds every version up to `ARGV[3]` (rule 2: the served version never skips a commit
/// whose rows may be missing). Answers the current generation and version; `{-1, -1}`
/// when the group has none.
const ADVANCE: &str = r"
local m = redis.call('HMGET', KEYS[1], 'gen', 'version')
if not m[1] then return {-1, -1} end
if m[1] ~= ARGV[1] then return {tonumber(m[1]), tonumber(m[2])} end
local v = tonumber(m[2])
if v < tonumber(ARGV[2]) and v >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'version', ARGV[2])
  return {tonumber(m[1]), tonumber(ARGV[2])}
end
return {tonumber(m[1]), v}
";

/// Switches to a filled generation unless a newer version is served (rule 3). Answers the
/// generation replaced (0: none), or -1 when refused.
const SWITCH: &str = r"
local m = redis.call('HMGET', KEYS[1], 'gen', 'version')
if m[1] and tonumber(m[2]) > tonumber(ARGV[2]) then return -1 end
redis.call('HSET', KEYS[1], 'gen', ARGV[1], 'version', ARGV[2])
if m[1] then return tonumber(m[1]) end
return 0
";

/// Commands sent in one pipeline at most, so a large write holds a bounded buffer.
const PIPELINE: usize = 1000;

/// Where a group's rows are served from: its generation and the version it is at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Served {
    pub generation: i64,
    pub version: i64,
}

/// What applying a commit's rows found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Written (or already covered), and the served version holds the commit.
    Served,
    /// Written, but the served version is behind an earlier commit whose rows may be
    /// missing: a catch-up from the table must follow.
    Behind,
    /// The group has no generation in Redis: it must be built whole from its table.
    Unloaded,
}

/// Rows kept in Redis.
pub struct RedisRows {
    conn: ConnectionManager,
    upsert: redis::Script,
    advance: redis::Script,
    switch: redis::Script,
    /// Where the server was, for messages (password removed).
    shown: String,
}

impl RedisRows {
    /// A store at `url` (`redis://[user:password@]host[:port][/db]`). Connects on first
    /// use and reconnects by itself after a failure.
    pub fn new(url: &str, shown: String) -> Result<Arc<RedisRows>> {
        let client = redis::Client::open(url).map_err(|e| Error::BadRequest(format!("online store `{shown}`: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(2)))
            .set_response_timeout(Some(std::time::Duration::from_secs(10)))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| Error::BadRequest(format!("online store `{shown}`: {e}")))?;
        Ok(Arc::new(RedisRows {
            conn,
            upsert: redis::Script::new(UPSERT),
            advance: redis::Script::new(ADVANCE),
            switch: redis::Script::new(SWITCH),
            shown,
        }))
    }

    fn unreachable(&self, e: redis::RedisError) -> Error {
        metrics::counter!("lakeledger_online_store_errors_total").increment(1);
        Error::Unavailable(format!("the online store (Redis at {}) failed: {e}", self.shown))
    }

    /// Loads the scripts (after a Redis restart they are gone; pipelines call them by hash).
    async fn load_scripts(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        for s in [&self.upsert, &self.advance, &self.switch] {
            s.prepare_invoke().load_async(&mut conn).await.map_err(|e| self.unreachable(e))?;
        }
        Ok(())
    }

    /// Runs a pipeline of `EVALSHA`s, loading the scripts first if Redis lost them.
    async fn run_scripts(&self, pipe: &redis::Pipeline) -> Result<()> {
        let mut conn = self.conn.clone();
        match pipe.exec_async(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.load_scripts().await?;
                pipe.exec_async(&mut conn).await.map_err(|e| self.unreachable(e))
            }
            other => other.map_err(|e| self.unreachable(e)),
        }
    }

    /// Checks the server answers (startup, readiness).
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<String>(&mut conn).await.map_err(|e| self.unreachable(e))?;
        self.load_scripts().await
    }

    fn meta_key(group_id: &str) -> String {
        format!("ll:{{{group_id}}}:meta")
    }

    fn entity_prefix(group_id: &str, generation: i64) -> String {
        format!("ll:e:{group_id}:{generation}:")
    }

    fn entity_key(prefix: &str, key: &EntityKey) -> String {
        let parts: Vec<Value> = key
            .iter()
            .map(|p| match p {
                KeyPart::Int(i) => Value::from(*i),
                KeyPart::Str(s) => Value::from(s.as_ref()),
            })
            .collect();
        format!("{prefix}{}", Value::Array(parts))
    }

    /// The generation and version a group is served from, or `None` when it was never
    /// loaded (or Redis lost it).
    pub async fn served(&self, group_id: &str) -> Result<Option<Served>> {
        let mut conn = self.conn.clone();
        let (generation, version): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
            .arg(Self::meta_key(group_id))
            .arg("gen")
            .arg("version")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok(generation.zip(version).map(|(generation, version)| Served { generation, version }))
    }

    /// Writes rows with the upsert script; returns the keys written.
    async fn upsert_rows(&self, prefix: &str, version: i64, features: &[String], rows: &[(EntityKey, Entry)]) -> Result<Vec<String>> {
        let mut keys = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(PIPELINE) {
            let mut pipe = redis::pipe();
            for (key, entry) in chunk {
                let k = Self::entity_key(prefix, key);
                let cmd = pipe.cmd("EVALSHA").arg(self.upsert.get_hash()).arg(1).arg(&k).arg(entry.event_time).arg(version);
                for (i, f) in features.iter().enumerate() {
                    let v = entry.values.get(i).unwrap_or(&Value::Null);
                    cmd.arg(format!("f:{f}")).arg(v.to_string());
                }
                pipe.ignore();
                keys.push(k);
            }
            self.run_scripts(&pipe).await?;
        }
        Ok(keys)
    }

    /// Applies the rows of the commits after `from` up to `version` (rules 1 and 2): one
    /// commit's (`from` = `version - 1`), or a catch-up's.
    pub async fn apply(&self, group_id: &str, from: i64, version: i64, features: &[String], rows: Vec<(EntityKey, Entry)>) -> Result<Applied> {
        let meta = Self::meta_key(group_id);
        let mut served = match self.served(group_id).await? {
            Some(s) => s,
            None => return Ok(Applied::Unloaded),
        };
        loop {
            if served.version >= version {
                // The served version already holds this commit.
                return Ok(Applied::Served);
            }
            let written = self.upsert_rows(&Self::entity_prefix(group_id, served.generation), version, features, &rows).await?;
            let mut conn = self.conn.clone();
            let now: (i64, i64) = self
                .advance
                .key(&meta)
                .arg(served.generation)
                .arg(version)
                .arg(from)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.unreachable(e))?;
            match now {
                (-1, _) => return Ok(Applied::Unloaded),
                (generation, v) if generation == served.generation => {
                    return Ok(if v >= version { Applied::Served } else { Applied::Behind });
                }
                (generation, v) => {
                    // A rebuild switched generations while the rows were written: they went
                    // to one nobody reads. Take them out, then write to the new one if it
                    // is older than this commit.
                    self.unlink(written).await;
                    served = Served { generation, version: v };
                }
            }
        }
    }

    /// Fills a fresh generation with a group's whole content at `version` and serves it
    /// (rule 3). Returns `false` when a newer version was already served (nothing changes).
    pub async fn replace(&self, group_id: &str, version: i64, features: &[String], rows: Vec<(EntityKey, Entry)>) -> Result<bool> {
        let mut conn = self.conn.clone();
        let generation: i64 = redis::cmd("INCR")
            .arg(format!("ll:{{{group_id}}}:gens"))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.unreachable(e))?;
        let prefix = Self::entity_prefix(group_id, generation);
        let written = match self.upsert_rows(&prefix, version, features, &rows).await {
            Ok(w) => w,
            Err(e) => {
                self.spawn_drop_generation(group_id, generation);
                return Err(e);
            }
        };
        let replaced: i64 = self
            .switch
            .key(Self::meta_key(group_id))
            .arg(generation)
            .arg(version)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.unreachable(e))?;
        match replaced {
            -1 => {
                self.unlink(written).await;
                Ok(false)
            }
            0 => Ok(true),
            old => {
                self.spawn_drop_generation(group_id, old);
                Ok(true)
            }
        }
    }

    /// Takes a group out of Redis (it stopped being served online).
    pub async fn forget(&self, group_id: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let served = self.served(group_id).await?;
        redis::cmd("DEL").arg(Self::meta_key(group_id)).exec_async(&mut conn).await.map_err(|e| self.unreachable(e))?;
        if served.is_some() {
            self.spawn_drop_keys(format!("ll:e:{group_id}:*"));
        }
        Ok(())
    }

    async fn unlink(&self, keys: Vec<String>) {
        let mut conn = self.conn.clone();
        for chunk in keys.chunks(PIPELINE) {
            if let Err(e) = redis::cmd("UNLINK").arg(chunk).exec_async(&mut conn).await {
                tracing::warn!(error = %e, "could not delete online rows of a replaced generation; they are unread");
            }
        }
    }

    fn spawn_drop_generation(&self, group_id: &str, generation: i64) {
        self.spawn_drop_keys(format!("{}*", Self::entity_prefix(group_id, generation)));
    }

    /// Deletes every key matching `pattern` in the background (a replaced generation is
    /// never read again, so nothing waits for this).
    fn spawn_drop_keys(&self, pattern: String) {
        let mut conn = self.conn.clone();
        tokio::spawn(async move {
            let mut cursor: u64 = 0;
            loop {
                let step: redis::RedisResult<(u64, Vec<String>)> =
                    redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).query_async(&mut conn).await;
                let (next, keys) = match step {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, pattern = %pattern, "could not delete unread online rows");
                        return;
                    }
                };
                if !keys.is_empty()
                    && let Err(e) = redis::cmd("UNLINK").arg(&keys).exec_async(&mut conn).await
                {
                    tracing::warn!(error = %e, pattern = %pattern, "could not delete unread online rows");
                    return;
                }
                if next == 0 {
                    return;
                }
                cursor = next;
            }
        });
    }

    /// Looks up every feature for every entity row: one round trip for the groups'
    /// generations, one for the rows.
    pub async fn lookup(&self, features: &[FeatureRef], entities: &EntityRows, now: i64) -> Result<Found> {
        // The groups named, in order of first mention, with the features asked of each.
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for (j, f) in features.iter().enumerate() {
            match groups.iter_mut().find(|(i, _)| Arc::ptr_eq(&features[*i].group, &f.group)) {
                Some((_, members)) => members.push(j),
                None => groups.push((j, vec![j])),
            }
        }
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for (i, _) in &groups {
            pipe.cmd("HMGET").arg(Self::meta_key(&features[*i].group.id)).arg("gen").arg("version");
        }
        let metas: Vec<(Option<i64>, Option<i64>)> = pipe.query_async(&mut conn).await.map_err(|e| self.unreachable(e))?;
        let mut pipe = redis::pipe();
        let mut served = Vec::with_capacity(groups.len());
        for ((i, members), meta) in groups.iter().zip(metas) {
            let group = &features[*i].group;
            let (Some(generation), Some(version)) = meta else {
                return Err(Error::Unavailable(format!(
                    "feature group `{}` is not in the online store yet (it is being loaded from its table); retry shortly",
                    group.name
                )));
            };
            served.push((group.name.clone(), version));
            let prefix = Self::entity_prefix(&group.id, generation);
            for row in 0..entities.rows {
                let key = entity_key(group, entities, row)?;
                let cmd = pipe.cmd("HMGET").arg(Self::entity_key(&prefix, &key)).arg("_ts");
                for &j in members {
                    cmd.arg(format!("f:{}", features[j].feature));
                }
            }
        }
        let rows: Vec<Vec<Option<String>>> =
            if pipe.is_empty() { Vec::new() } else { pipe.query_async(&mut conn).await.map_err(|e| self.unreachable(e))? };
        let mut out: Vec<Vec<Lookup>> = (0..features.len()).map(|_| Vec::with_capacity(entities.rows)).collect();
        let mut rows = rows.into_iter();
        for (i, members) in &groups {
            let group = &features[*i].group;
            for _ in 0..entities.rows {
                let fields = rows.next().ok_or_else(|| Error::Internal("Redis answered fewer rows than asked".into()))?;
                let event_time = fields.first().cloned().flatten().and_then(|t| t.parse::<i64>().ok());
                let stale = event_time.is_some_and(|t| group.max_age_micros.is_some_and(|max| now.saturating_sub(t) > max));
                for (m, &j) in members.iter().enumerate() {
                    let found = match event_time {
                        None => Lookup { value: Value::Null, status: "NOT_FOUND", event_time: None },
                        Some(t) if stale => Lookup { value: Value::Null, status: "OUTSIDE_MAX_AGE", event_time: Some(t) },
                        Some(t) => {
                            // A feature added after the row was written has no field: null.
                            let value = match fields.get(m + 1).cloned().flatten() {
                                Some(text) => serde_json::from_str(&text)
                                    .map_err(|e| Error::Internal(format!("online row of `{}` holds a value that is not JSON: {e}", group.name)))?,
                                None => Value::Null,
                            };
                            let status = if value.is_null() { "NULL_VALUE" } else { "PRESENT" };
                            Lookup { value, status, event_time: Some(t) }
                        }
                    };
                    out[j].push(found);
                }
            }
        }
        Ok(Found { values: out, versions: served })
    }
}
