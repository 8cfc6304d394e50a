//! End-to-end tests: each starts the real server on 127.0.0.1:0 over a temp dir and
//! speaks HTTP to it.

mod audit;
mod catalog_conformance;
mod edge;
mod feature_groups;
mod flight;
mod interop;
mod models;
mod oidc;
mod online_redis;
mod openapi;
mod readme;
mod replicas;
mod s3;
mod serving;
mod sql;
mod support;
mod telemetry;
mod tenancy;
mod training_sets;
