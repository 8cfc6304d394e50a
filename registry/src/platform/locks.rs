//! Keyed locks: one async mutex per key (a feature group's id, a model's id), so work
//! on one object is serialized in this process while different objects never wait for
//! each other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct KeyedLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    /// The lock of `key`, created on first use.
    pub fn get(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().expect("keyed lock table");
        locks.entry(key.to_string()).or_default().clone()
    }
}
