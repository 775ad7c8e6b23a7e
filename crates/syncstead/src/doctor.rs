//! `syncstead doctor`: looks at what `serve` would use with the same settings and says
//! what is wrong and how to fix it, without changing anything (no database is created
//! or migrated, no secret generated).

use std::net::IpAddr;
use std::path::Path;

use syncstead_server::config::{Settings, TlsSource};
use syncstead_server::ConfigLayer;
use syncstead_store::{InstanceLock, LockError};

use crate::error::{CliError, CliResult};

#[derive(Default)]
struct Report {
    failures: usize,
    warnings: usize,
}

impl Report {
    fn ok(&mut self, what: &str, text: impl std::fmt::Display) {
        println!("ok    {what:<14} {text}");
    }
    fn warn(&mut self, what: &str, text: impl std::fmt::Display, fix: impl std::fmt::Display) {
        self.warnings += 1;
        println!("warn  {what:<14} {text}\n      {:<14} → {fix}", "");
    }
    fn fail(&mut self, what: &str, text: impl std::fmt::Display, fix: impl std::fmt::Display) {
        self.failures += 1;
        println!("FAIL  {what:<14} {text}\n      {:<14} → {fix}", "");
    }
}

pub async fn run(layer: ConfigLayer) -> CliResult<()> {
    let mut r = Report::default();
    let settings = match layer
        .with_file()
        .map_err(CliError::from)
        .and_then(|l| Ok(Settings::resolve(l)?))
    {
        Ok(s) => {
            r.ok("settings", "the file, environment and flags are valid");
            s
        }
        Err(e) => {
            r.fail(
                "settings",
                e,
                "fix the setting named above (`syncstead serve --help` describes each)",
            );
            return finish(r);
        }
    };
    data_dir(&mut r, &settings);
    secret(&mut r, &settings);
    let nodes = database(&mut r, &settings).await;
    public_url(&mut r, &settings);
    tls(&mut r, &settings);
    node(&mut r, &settings, nodes.as_deref());
    finish(r)
}

fn finish(r: Report) -> CliResult<()> {
    println!();
    match (r.failures, r.warnings) {
        (0, 0) => {
            println!("nothing to fix");
            Ok(())
        }
        (0, w) => {
            println!("{w} warning(s), nothing that stops the server");
            Ok(())
        }
        (f, _) => Err(CliError::Refused(format!(
            "{f} problem(s) to fix before `syncstead serve` works"
        ))),
    }
}

fn data_dir(r: &mut Report, s: &Settings) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = &s.data_dir;
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            return match std::fs::metadata(parent) {
                Ok(_) => r.ok(
                    "data_dir",
                    format!("{} will be created at the first start", dir.display()),
                ),
                Err(e) => r.fail(
                    "data_dir",
                    format!("{} cannot be created: {e}", dir.display()),
                    "create its parent directory, or set data_dir elsewhere",
                ),
            };
        }
        Err(e) => {
            let hint = syncstead_store::lock::access_hint(dir, &e);
            return r.fail(
                "data_dir",
                format!("{}: {e}{hint}", dir.display()),
                "see the note in brackets",
            );
        }
    };
    let probe = dir.join(".syncstead-doctor");
    match std::fs::write(&probe, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
        }
        Err(e) => {
            let hint = syncstead_store::lock::access_hint(dir, &e);
            return r.fail(
                "data_dir",
                format!("{} is not writable: {e}{hint}", dir.display()),
                "see the note in brackets",
            );
        }
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        r.warn(
            "data_dir",
            format!("{} has mode {mode:o}: other users may read the database", dir.display()),
            format!("chmod 700 {}", dir.display()),
        );
    } else {
        r.ok(
            "data_dir",
            format!("{} (owner uid {}, mode {mode:o})", dir.display(), meta.uid()),
        );
    }
    let lock = dir.join("syncstead.lock");
    if lock.exists() {
        match InstanceLock::acquire(&lock) {
            Ok(_) => r.ok("server", "no Syncstead process is using this data directory"),
            Err(LockError::Held { holder, .. }) => r.ok("server", format!("running ({holder})")),
            Err(e) => r.fail("server", e, "see the note in brackets"),
        }
    }
}

fn secret(r: &mut Report, s: &Settings) {
    use std::os::unix::fs::PermissionsExt;
    if !s.master_secret.is_empty() {
        if s.master_secret.len() < 16 {
            r.fail(
                "master_secret",
                "shorter than 16 characters",
                "make one with `openssl rand -hex 32`",
            );
        } else {
            r.ok("master_secret", "set in the settings");
        }
        return;
    }
    let path = s.data_dir.join("master-secret");
    match std::fs::metadata(&path) {
        Ok(m) => {
            let mode = m.permissions().mode() & 0o777;
            match std::fs::read_to_string(&path) {
                Err(e) => {
                    let hint = syncstead_store::lock::access_hint(&path, &e);
                    r.fail(
                        "master_secret",
                        format!("{}: {e}{hint}", path.display()),
                        "see the note in brackets",
                    );
                }
                Ok(t) if t.lines().next().unwrap_or("").trim().len() < 16 => r.fail(
                    "master_secret",
                    format!("{} holds fewer than 16 characters", path.display()),
                    "write a longer one (`openssl rand -hex 32`), or delete it to have one generated",
                ),
                Ok(_) if mode & 0o077 != 0 => r.warn(
                    "master_secret",
                    format!("{} has mode {mode:o}: others can read it", path.display()),
                    format!("chmod 600 {}", path.display()),
                ),
                Ok(_) => r.ok("master_secret", format!("kept in {}", path.display())),
            }
        }
        Err(_) => r.ok(
            "master_secret",
            format!("none yet: one is generated into {} at the first start", path.display()),
        ),
    }
}

async fn database(r: &mut Report, s: &Settings) -> Option<Vec<String>> {
    let looked = if s.is_postgres() {
        syncstead_store::postgres::inspect(&s.database_url).await.map(Some)
    } else {
        let path = match s.sqlite_path() {
            Ok(p) => p,
            Err(e) => {
                r.fail("database", e, "set database_url to sqlite://PATH or postgres://…");
                return None;
            }
        };
        if let Some((e, hint)) = syncstead_store::sqlite::unwritable(&path) {
            r.fail(
                "database",
                format!("{} cannot be written: {e}{hint}", path.display()),
                "see the note in brackets",
            );
            return None;
        }
        syncstead_store::sqlite::inspect(&path)
    };
    match looked {
        Ok(None) => {
            r.ok(
                "database",
                format!("{} will be created at the first start", s.database_display()),
            );
            Some(Vec::new())
        }
        Ok(Some(i)) if i.schema > i.latest => {
            r.fail(
                "database",
                format!(
                    "{} is at schema {}, newer than this release ({})",
                    s.database_display(),
                    i.schema,
                    i.latest
                ),
                "run the release that wrote it, or restore a backup taken before the upgrade",
            );
            None
        }
        Ok(Some(i)) => {
            if i.schema < i.latest {
                r.ok(
                    "database",
                    format!(
                        "{} at schema {}; the next start upgrades it to {} (take a backup first)",
                        s.database_display(),
                        i.schema,
                        i.latest
                    ),
                );
            } else {
                r.ok("database", format!("{} at schema {}", s.database_display(), i.schema));
            }
            if i.autovacuum == Some(false) {
                use syncstead_store::postgres::{AUTOVACUUM_FIX, AUTOVACUUM_OFF};
                r.warn("database", AUTOVACUUM_OFF, AUTOVACUUM_FIX);
            }
            Some(i.nodes)
        }
        Err(e) => {
            r.fail(
                "database",
                format!("{}: {e}", s.database_display()),
                "start the database server, or fix database_url",
            );
            None
        }
    }
}

fn loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn public_url(r: &mut Report, s: &Settings) {
    match &s.public_url {
        None if s.listen.ip().is_unspecified() => r.fail(
            "public_url",
            format!("not set, and the server listens on every interface ({})", s.listen),
            format!(
                "set public_url to the URL browsers reach, e.g. https://sync.example.com or http://192.168.1.20:{}",
                s.listen.port()
            ),
        ),
        None if s.listen.ip().is_loopback() && s.tls.is_none() => r.warn(
            "public_url",
            format!("not set: clients on this machine only (http://{})", s.listen),
            "for other devices, listen on an interface and set public_url (Firefox needs HTTPS then)",
        ),
        None => r.ok("public_url", "not set: each request's Host header is used"),
        Some(p) if p.url.scheme() == "http" && !loopback(&p.host) => r.warn(
            "public_url",
            format!("{} is plain HTTP: Firefox needs HTTPS off this machine", p.base()),
            "set tls_cert_file/tls_key_file or acme_domains (docs/https.md), or put a TLS proxy in front",
        ),
        Some(p) => r.ok("public_url", p.base()),
    }
}

fn tls(r: &mut Report, s: &Settings) {
    match &s.tls {
        None => r.ok("tls", "off (plain HTTP on the listener)"),
        Some(TlsSource::Files { cert, key }) => match syncstead_server::tls::load_files(cert, key) {
            Err(e) => r.fail(
                "tls",
                e,
                "point tls_cert_file and tls_key_file at a PEM chain and its key",
            ),
            Ok(_) => certificate(
                r,
                &std::fs::read(cert).unwrap_or_default(),
                &cert.display().to_string(),
                s,
            ),
        },
        Some(TlsSource::Acme(acme)) => {
            let stored = acme_dir_cert(&acme.dir);
            match stored {
                Some(pem) => certificate(r, &pem, "the ACME certificate", s),
                None => r.ok(
                    "tls",
                    format!(
                        "ACME for {}: the first certificate is ordered at start from {}",
                        acme.domains.join(", "),
                        acme.directory_url
                    ),
                ),
            }
            if s.listen.port() != 443 {
                r.warn(
                    "tls",
                    format!("listening on port {}: the CA validates on port 443", s.listen.port()),
                    "forward port 443 to it, or listen on 443 (docs/https.md)",
                );
            }
        }
    }
}

fn acme_dir_cert(dir: &Path) -> Option<Vec<u8>> {
    std::fs::read(dir.join("certificate.pem")).ok()
}

fn certificate(r: &mut Report, pem: &[u8], what: &str, s: &Settings) {
    let Ok(v) = syncstead_server::acme::validity(pem) else {
        return r.fail(
            "tls",
            format!("{what}: cannot read its dates"),
            "replace the certificate",
        );
    };
    let now = std::time::SystemTime::now();
    match v.not_after.duration_since(now) {
        Err(_) => r.fail("tls", format!("{what} has expired"), "renew it"),
        Ok(left) if left.as_secs() < 14 * 86_400 => r.warn(
            "tls",
            format!("{what} expires in {} days", left.as_secs() / 86_400),
            "renew it (ACME renews by itself when the CA can reach port 443)",
        ),
        Ok(left) => r.ok(
            "tls",
            format!("{what}: valid for {} more days", left.as_secs() / 86_400),
        ),
    }
    let _ = s;
}

fn node(r: &mut Report, s: &Settings, nodes: Option<&[String]>) {
    if !(s.token_server && s.storage_node) {
        return;
    }
    let Some(nodes) = nodes else { return };
    let own = s.public_url.as_ref().map(|p| p.base());
    match (nodes, own) {
        ([], _) => r.ok("node", "none yet: this server registers itself at the first start"),
        ([only], Some(own)) if *only != own => r.ok(
            "node",
            format!("{only}: the next start renames it to {own} (public_url), keeping every user"),
        ),
        ([only], None) if only.contains("0.0.0.0") => r.fail(
            "node",
            format!("{only} is registered: clients cannot reach it"),
            "set public_url; the next start renames the node to it",
        ),
        (list, _) => r.ok("node", list.join(", ")),
    }
}
