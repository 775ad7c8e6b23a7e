//! The account file a device keeps: how to reach the account, its key material, this
//! device's identity and its sync state. It holds secrets (a 1.1 password, the Sync Key or
//! kSync, an access token), so it is written atomically with mode 0600.

use std::path::{Path, PathBuf};

use data_encoding::BASE64URL_NOPAD;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::crypto::{parse_sync_key, KeyBundle};
use crate::sync::{write_private, Device, SyncClient, SyncState};
use crate::transport::{Auth, Transport};
use crate::ClientError;

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "protocol")]
pub enum Login {
    /// Weave 1.1: User API + Storage 1.1 with HTTP Basic.
    #[serde(rename = "1.1")]
    Weave11 {
        server: String,
        email: String,
        username: String,
        password: String,
        /// The friendly (26-character) Sync Key.
        sync_key: String,
    },
    /// Sync 1.5: token server + storage 1.5 with Hawk.
    #[serde(rename = "1.5")]
    Sync15 {
        token_server: String,
        access_token: String,
        /// `X-KeyID` (`<keysChangedAt>-<client state>`).
        key_id: String,
        /// kSync, base64url (the scoped key's `k`).
        ksync: String,
    },
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Login::Weave11 {
                server,
                email,
                username,
                ..
            } => f
                .debug_struct("Weave11")
                .field("server", server)
                .field("email", email)
                .field("username", username)
                .finish_non_exhaustive(),
            Login::Sync15 {
                token_server, key_id, ..
            } => f
                .debug_struct("Sync15")
                .field("token_server", token_server)
                .field("key_id", key_id)
                .finish_non_exhaustive(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Account {
    #[serde(flatten)]
    pub login: Login,
    pub device: Device,
    #[serde(default)]
    pub state: SyncState,
}

impl Account {
    /// `$SYNCSTEAD_CLIENT_CONFIG`, else `$XDG_CONFIG_HOME/syncstead/client.json`, else
    /// `~/.config/syncstead/client.json`.
    pub fn default_path() -> PathBuf {
        if let Some(p) = std::env::var_os("SYNCSTEAD_CLIENT_CONFIG") {
            return PathBuf::from(p);
        }
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("syncstead").join("client.json")
    }

    pub fn load(path: &Path) -> Result<Self, ClientError> {
        let data = std::fs::read(path).map_err(|e| {
            ClientError::Config(format!(
                "cannot read {} ({e}): sign in first with `syncstead client signup`, `login` or `connect`",
                path.display()
            ))
        })?;
        serde_json::from_slice(&data).map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))
    }

    /// Writes the file with mode 0600 (its directory 0700), atomically.
    pub fn save(&self, path: &Path) -> Result<(), ClientError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                crate::sync::create_private_dir(dir)?;
            }
        }
        let data = serde_json::to_vec_pretty(self).expect("account serializes");
        write_private(path, &data)?;
        Ok(())
    }

    /// The Sync Key Bundle that protects crypto/keys.
    pub fn root_key(&self) -> Result<KeyBundle, ClientError> {
        match &self.login {
            Login::Weave11 { username, sync_key, .. } => {
                Ok(KeyBundle::from_sync_key(&parse_sync_key(sync_key)?, username))
            }
            Login::Sync15 { ksync, .. } => {
                let bytes = BASE64URL_NOPAD
                    .decode(ksync.trim_end_matches('=').as_bytes())
                    .map_err(|_| ClientError::Config("kSync is not base64url".into()))?;
                Ok(KeyBundle::from_ksync(&bytes)?)
            }
        }
    }

    pub fn transport(&self, http: reqwest::Client) -> Result<Transport, ClientError> {
        let url = |s: &str| Url::parse(s).map_err(|e| ClientError::Url(format!("{s}: {e}")));
        let auth = match &self.login {
            Login::Weave11 {
                server,
                username,
                password,
                ..
            } => Auth::Basic {
                server: url(server)?,
                username: username.clone(),
                password: password.clone(),
            },
            Login::Sync15 {
                token_server,
                access_token,
                key_id,
                ..
            } => Auth::Token {
                token_server: url(token_server)?,
                access_token: access_token.clone(),
                key_id: key_id.clone(),
            },
        };
        Ok(Transport::new(http, auth))
    }

    /// A client for this account (call [`SyncClient::prepare`] before using it).
    pub fn client(&self, http: reqwest::Client) -> Result<SyncClient, ClientError> {
        Ok(SyncClient::new(
            self.transport(http)?,
            self.root_key()?,
            self.device.clone(),
            self.state.clone(),
        ))
    }
}
