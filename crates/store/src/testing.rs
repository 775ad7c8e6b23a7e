//! Test support shared by the crates' test suites: a throw-away PostgreSQL schema per
//! test, found through `SYNCSTEAD_TEST_POSTGRES_URL`, and the choice of backend for the
//! HTTP suites (`SYNCSTEAD_TEST_BACKEND=postgres`). Not used by the server itself.

use std::sync::atomic::{AtomicU64, Ordering};

/// The variable naming the PostgreSQL server tests may use (a database URL).
pub const POSTGRES_URL_VAR: &str = "SYNCSTEAD_TEST_POSTGRES_URL";

/// The PostgreSQL URL for tests, if one is configured.
pub fn postgres_url() -> Option<String> {
    std::env::var(POSTGRES_URL_VAR).ok().filter(|u| !u.is_empty())
}

/// Whether the HTTP suites should run on PostgreSQL (`SYNCSTEAD_TEST_BACKEND=postgres`).
pub fn backend_is_postgres() -> bool {
    std::env::var("SYNCSTEAD_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// A schema of its own in the test database, dropped (with everything in it) when this
/// value is dropped. `url` connects with that schema as the search path.
pub struct ScratchSchema {
    pub url: String,
    pub schema: String,
    admin_url: String,
}

impl ScratchSchema {
    /// A new schema, or `None` when no test PostgreSQL is configured.
    pub async fn create() -> Option<Self> {
        let admin_url = postgres_url()?;
        static N: AtomicU64 = AtomicU64::new(0);
        let schema = format!(
            "t_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            rand_suffix()
        );
        let (client, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("{POSTGRES_URL_VAR}={admin_url}: cannot connect: {e}"));
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .expect("create a test schema");
        drop(client);
        let _ = task.await;
        let sep = if admin_url.contains('?') { '&' } else { '?' };
        Some(ScratchSchema {
            url: format!("{admin_url}{sep}options=-csearch_path%3D{schema}"),
            schema,
            admin_url,
        })
    }
}

impl ScratchSchema {
    /// Drops the schema now, under a running server: every query fails from then on (a
    /// real backend failure, for the tests of error answers).
    pub async fn drop_now(&self) {
        let (client, conn) = tokio_postgres::connect(&self.admin_url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .await
            .expect("drop the schema");
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

impl Drop for ScratchSchema {
    fn drop(&mut self) {
        let (url, schema) = (self.admin_url.clone(), self.schema.clone());
        // Drop runs inside or outside a runtime; a thread of its own works in both.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.ok()?;
                tokio::spawn(conn);
                let drop = format!("SET lock_timeout = '3s'; DROP SCHEMA IF EXISTS {schema} CASCADE");
                if client.batch_execute(&drop).await.is_err() {
                    // A test that failed mid-transaction (or a clean-up task it left
                    // behind), on a runtime now blocked in this drop, still holds locks
                    // in the schema: end those sessions, and only those (other tests run
                    // at the same time, in schemas of their own).
                    let _ = client
                        .batch_execute(&format!(
                            "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a
                             WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
                               AND a.pid IN (SELECT l.pid FROM pg_locks l
                                 JOIN pg_class c ON c.oid = l.relation
                                 JOIN pg_namespace n ON n.oid = c.relnamespace
                                 WHERE n.nspname = '{schema}')"
                        ))
                        .await;
                    client.batch_execute(&drop).await.ok()?;
                }
                Some(())
            })
        })
        .join();
    }
}

/// The embedded SQLite migrations up to and including `version`, in order: for tests that
/// build a database as an earlier release left it.
pub fn sqlite_migrations_through(version: i64) -> impl Iterator<Item = &'static str> {
    crate::sqlite::MIGRATIONS
        .iter()
        .filter(move |m| m.0 <= version)
        .map(|m| m.1)
}

/// The embedded PostgreSQL migrations up to and including `version`, in order.
pub fn postgres_migrations_through(version: i32) -> impl Iterator<Item = &'static str> {
    crate::postgres::MIGRATIONS
        .iter()
        .filter(move |m| m.0 <= version)
        .map(|m| m.1)
}
