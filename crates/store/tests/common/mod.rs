//! The backend the store suites run on: a SQLite file in the test's directory, or, with
//! `SYNCSTEAD_TEST_BACKEND=postgres`, a scratch schema in the test PostgreSQL.
// Test support: a failure here is a failed test, so unwrap is the right answer.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::sync::Arc;

use syncstead_store::testing::{backend_is_postgres, ScratchSchema};
use syncstead_store::{Backend, PgStore, SqliteOptions, SqliteStore};

pub struct TestStore {
    pub store: Arc<dyn Backend>,
    pub postgres: Option<ScratchSchema>,
}

impl std::ops::Deref for TestStore {
    type Target = dyn Backend;
    fn deref(&self) -> &Self::Target {
        self.store.as_ref()
    }
}

pub async fn open(dir: &tempfile::TempDir) -> TestStore {
    if backend_is_postgres() {
        let scratch = ScratchSchema::create()
            .await
            .expect("SYNCSTEAD_TEST_BACKEND=postgres needs SYNCSTEAD_TEST_POSTGRES_URL");
        let store = PgStore::open(&scratch.url, 8).await.expect("open PostgreSQL");
        TestStore {
            store: Arc::new(store),
            postgres: Some(scratch),
        }
    } else {
        let store = SqliteStore::open(SqliteOptions::new(dir.path().join("t.db")))
            .await
            .expect("open SQLite");
        TestStore {
            store: Arc::new(store),
            postgres: None,
        }
    }
}
