//! Syncstead's HTTP server. One module per protocol surface — [`storage15`],
//! [`storage11`], [`user_api`], [`tokenserver`] — over the shared parts: [`auth`] (Hawk,
//! HTTP Basic, throttling), [`error`] (every failure's response), [`state`], [`routes`],
//! [`middleware`], [`serve`] (start-up), [`config`], [`listener`] (with [`tls`] and [`acme`] for
//! HTTPS) and operations ([`ops`]).

pub mod accounts;
pub mod acme;
pub mod admin;
pub mod auth;
mod body;
pub mod config;
pub mod error;
pub mod headers;
pub mod listener;
pub mod mail;
pub mod middleware;
pub mod oauth;
mod ops;
pub mod passwords;
pub mod routes;
pub mod serve;
pub mod state;
pub mod storage11;
pub mod storage15;
pub mod streaming;
pub mod tls;
pub mod tokenserver;
pub mod user_api;

pub use config::{ConfigLayer, Settings};
pub use routes::router;
pub use serve::{open_store, start, start_with_store, RunningServer, ServeError};
pub use state::{AppState, RequestUid, Runtime};
