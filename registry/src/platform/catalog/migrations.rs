//! The catalog's schema migrations, embedded in the binary: each backend has its own folder
//! under `migrations/`, listed here file by file. (Listing them by hand instead of with
//! `sqlx::migrate!` keeps sqlx's proc-macro, which compiles both database drivers a second
//! time, out of the build; a test checks the lists against the folders.)

use std::borrow::Cow;

use sqlx::SqlStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// (version, description, SQL); the description is the file name's after the version, as
/// sqlx records it in `_sqlx_migrations`.
type File = (i64, &'static str, &'static str);

pub(super) const SQLITE: &[File] = &[
    (1, "initial", include_str!("../../../../migrations/sqlite/0001_initial.sql")),
    (2, "models", include_str!("../../../../migrations/sqlite/0002_models.sql")),
    (3, "serving", include_str!("../../../../migrations/sqlite/0003_serving.sql")),
    (4, "idempotency", include_str!("../../../../migrations/sqlite/0004_idempotency.sql")),
    (5, "job leases", include_str!("../../../../migrations/sqlite/0005_job_leases.sql")),
    (6, "quotas", include_str!("../../../../migrations/sqlite/0006_quotas.sql")),
    (7, "stored bytes", include_str!("../../../../migrations/sqlite/0007_stored_bytes.sql")),
    (8, "key limits", include_str!("../../../../migrations/sqlite/0008_key_limits.sql")),
];

pub(super) const POSTGRES: &[File] = &[
    (1, "initial", include_str!("../../../../migrations/postgres/0001_initial.sql")),
    (2, "models", include_str!("../../../../migrations/postgres/0002_models.sql")),
    (3, "serving", include_str!("../../../../migrations/postgres/0003_serving.sql")),
    (4, "idempotency", include_str!("../../../../migrations/postgres/0004_idempotency.sql")),
    (5, "job leases", include_str!("../../../../migrations/postgres/0005_job_leases.sql")),
    (6, "quotas", include_str!("../../../../migrations/postgres/0006_quotas.sql")),
    (7, "stored bytes", include_str!("../../../../migrations/postgres/0007_stored_bytes.sql")),
    (8, "key limits", include_str!("../../../../migrations/postgres/0008_key_limits.sql")),
];

/// The same migrator `sqlx::migrate!` would build from the folder: same versions,
/// descriptions and checksums, so databases migrated by earlier builds stay valid.
pub(super) fn migrator(files: &[File]) -> Migrator {
    Migrator::with_migrations(
        files
            .iter()
            .map(|&(version, description, sql)| {
                let no_tx = sql.starts_with("-- no-transaction");
                Migration::new(version, Cow::Borrowed(description), MigrationType::Simple, SqlStr::from_static(sql), no_tx)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `.sql` file in a backend's folder is listed, with the version and description
    /// its name gives, and nothing else is.
    #[test]
    fn lists_match_the_folders() {
        for (dir, files) in [("sqlite", SQLITE), ("postgres", POSTGRES)] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations").join(dir);
            let mut on_disk: Vec<(i64, String, String)> = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|name| name.ends_with(".sql"))
                .map(|name| {
                    let (version, rest) = name.split_once('_').unwrap();
                    let sql = std::fs::read_to_string(path.join(&name)).unwrap();
                    (version.parse().unwrap(), rest.trim_end_matches(".sql").replace('_', " "), sql)
                })
                .collect();
            on_disk.sort();
            let listed: Vec<(i64, String, String)> = files.iter().map(|&(v, d, s)| (v, d.to_string(), s.to_string())).collect();
            assert_eq!(listed, on_disk, "migrations/{dir} and the list in migrations.rs differ");
        }
    }
}
