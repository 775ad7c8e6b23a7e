//! HTTPS in the binary (issue "The self-hoster's first hour", part 1): certificate files,
//! reloaded when they change or on SIGHUP, and certificates by ACME from a real ACME
//! server (Debian's `pebble`, on loopback) with TLS-ALPN-01 validation and renewal.
//! In its own test binary: the SIGHUP goes to this process.
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};

/// A test CA, and leaf certificates it signs.
struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A leaf for `names` as (chain PEM, key PEM).
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, names[0]);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A client that trusts only `root_pem` and reaches `name` at `addr`.
fn https_client(root_pem: &str, name: &str, addr: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root_pem.as_bytes()).unwrap())
        .resolve(name, addr)
        .build()
        .unwrap()
}

/// The leaf certificate the server presents to a client that trusts `root_pem` (the
/// handshake verifies it against that root and `name`).
async fn presented(root_pem: &str, name: &str, addr: SocketAddr) -> Result<CertificateDer<'static>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = connector
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned())
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

async fn wait_for(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Certificate files: HTTPS with Hawk requests over it, a reload when the files change, a
/// reload on SIGHUP, and a broken file that leaves the served certificate in place.
#[tokio::test]
async fn certificate_files_are_served_and_reloaded() {
    let ca = Ca::new("Syncstead test CA");
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = (files.path().join("cert.pem"), files.path().join("key.pem"));
    let (chain, secret) = ca.leaf(&["localhost"]);
    write(&cert, &chain);
    write(&key, &secret);
    let (c, k) = (cert.clone(), key.clone());
    let mut s = TestServer::start_with(move |l| {
        l.tls_cert_file = Some(c);
        l.tls_key_file = Some(k);
    })
    .await;
    let addr = s.running.as_ref().unwrap().addr;
    s.http = https_client(&ca.pem, "localhost", addr);
    s.base = format!("https://localhost:{}", addr.port());
    let beat = send(s.http.get(format!("{}/__heartbeat__", s.base))).await;
    assert_eq!(beat.status, 200, "{}", beat.text);
    let u = s.client(1);
    assert_eq!(
        u.put("/storage/tabs/a", serde_json::json!({"payload": "x"}))
            .await
            .status,
        200
    );
    assert_eq!(u.get("/storage/tabs/a").await.json()["payload"], "x");
    // Plain HTTP on the TLS port is not served.
    assert!(reqwest::get(format!("http://{addr}/__heartbeat__")).await.is_err());

    let first = presented(&ca.pem, "localhost", addr).await.unwrap();
    let served: CertificateDer<'_> = rustls::pki_types::pem::PemObject::from_pem_slice(chain.as_bytes()).unwrap();
    assert_eq!(first, served);

    // 1. New files: picked up by the watcher.
    let (chain2, secret2) = ca.leaf(&["localhost"]);
    write(&key, &secret2);
    write(&cert, &chain2);
    wait_for("reload after the files changed", Duration::from_secs(25), async || {
        presented(&ca.pem, "localhost", addr).await.is_ok_and(|c| c != first)
    })
    .await;
    let second = presented(&ca.pem, "localhost", addr).await.unwrap();

    // 2. New files that keep their modification times: only SIGHUP reloads them.
    let times: Vec<_> = [&cert, &key]
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .collect();
    let (chain3, secret3) = ca.leaf(&["localhost"]);
    write(&key, &secret3);
    write(&cert, &chain3);
    for (p, t) in [&cert, &key].iter().zip(&times) {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(*t)
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(
        presented(&ca.pem, "localhost", addr).await.unwrap(),
        second,
        "no reload without a change or a signal"
    );
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap()
        .success());
    wait_for("reload on SIGHUP", Duration::from_secs(5), async || {
        presented(&ca.pem, "localhost", addr).await.is_ok_and(|c| c != second)
    })
    .await;
    let third = presented(&ca.pem, "localhost", addr).await.unwrap();

    // 3. A broken file is refused and the served certificate stays.
    write(&cert, "not a certificate");
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(presented(&ca.pem, "localhost", addr).await.unwrap(), third);
    assert_eq!(u.get("/storage/tabs/a").await.status, 200);
}

/// A start with a missing or broken certificate fails with the file's name.
#[tokio::test]
async fn a_bad_certificate_file_fails_the_start() {
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = (files.path().join("cert.pem"), files.path().join("key.pem"));
    write(&cert, "garbage");
    write(&key, "garbage");
    let settings = syncstead_server::Settings::resolve(syncstead_server::ConfigLayer {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(files.path().join("data")),
        master_secret: Some(SECRET.into()),
        tls_cert_file: Some(cert.clone()),
        tls_key_file: Some(key),
        ..Default::default()
    })
    .unwrap();
    let Err(e) = syncstead_server::start(settings).await else {
        panic!("started with a broken certificate");
    };
    assert!(
        e.to_string().contains("cert.pem") && e.to_string().contains("no PEM certificate"),
        "{e}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// pebble with its own HTTPS certificate (from `ca`), validating TLS-ALPN-01 at
/// `tls_port` of whatever name, which its DNS (pebble-challtestsrv) maps to 127.0.0.1.
struct Pebble {
    directory: String,
    management: u16,
    _processes: (Kill, Kill),
}

fn start_pebble(dir: &Path, ca: &Ca, tls_port: u16, validity_seconds: u64) -> Option<Pebble> {
    let have = |b: &str| std::process::Command::new(b).arg("-h").output().is_ok();
    if !have("pebble") || !have("pebble-challtestsrv") {
        return None;
    }
    let (acme, management, dns) = (free_port(), free_port(), free_port());
    let (chain, key) = ca.leaf(&["localhost", "127.0.0.1"]);
    write(&dir.join("pebble-cert.pem"), &chain);
    write(&dir.join("pebble-key.pem"), &key);
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{acme}"),
        "managementListenAddress": format!("127.0.0.1:{management}"),
        "certificate": dir.join("pebble-cert.pem"),
        "privateKey": dir.join("pebble-key.pem"),
        "httpPort": free_port(),
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
        "certificateValidityPeriod": validity_seconds,
    }});
    write(&dir.join("pebble.json"), &config.to_string());
    let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
    let challtestsrv = std::process::Command::new("pebble-challtestsrv")
        .args([
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
        ])
        .args([
            "-dns01",
            &format!("127.0.0.1:{dns}"),
            "-management",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .stdout(log("challtestsrv.log"))
        .stderr(log("challtestsrv.err"))
        .spawn()
        .unwrap();
    let pebble = std::process::Command::new("pebble")
        .arg("-config")
        .arg(dir.join("pebble.json"))
        .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .env("PEBBLE_AUTHZREUSE", "0")
        .stdout(log("pebble.log"))
        .stderr(log("pebble.err"))
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", acme)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "pebble did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(Pebble {
        directory: format!("https://127.0.0.1:{acme}/dir"),
        management,
        _processes: (Kill(pebble), Kill(challtestsrv)),
    })
}

/// ACME end to end against pebble: Syncstead obtains a certificate by TLS-ALPN-01 on its
/// own port, serves HTTPS with it (verified by a client that trusts only pebble's root),
/// keeps it in the data directory (0600), renews the short-lived certificate before it
/// expires, and serves the stored one after a restart without asking the CA.
#[tokio::test]
async fn acme_certificates_from_pebble_are_served_and_renewed() {
    let work = tempfile::tempdir().unwrap();
    let ca = Ca::new("pebble's HTTPS CA");
    let port = free_port();
    let Some(pebble) = start_pebble(work.path(), &ca, port, 20) else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI installs pebble (.ci/run)"
        );
        eprintln!("SKIPPED: pebble and pebble-challtestsrv are not installed (Debian package pebble)");
        return;
    };
    write(&work.path().join("pebble-https-ca.pem"), &ca.pem);
    let name = "sync.example.org";
    let directory = pebble.directory.clone();
    let data = tempfile::tempdir().unwrap();
    let layer = |data: &Path| syncstead_server::ConfigLayer {
        listen: Some(format!("127.0.0.1:{port}").parse().unwrap()),
        data_dir: Some(data.to_path_buf()),
        master_secret: Some(SECRET.into()),
        acme_domains: Some(vec![name.into()]),
        acme_contact: Some("admin@example.org".into()),
        acme_directory_url: Some(directory.clone()),
        acme_ca_file: Some(work.path().join("pebble-https-ca.pem")),
        acme_renew_percent: Some(50),
        ..Default::default()
    };
    let settings = syncstead_server::Settings::resolve(layer(data.path())).unwrap();
    assert_eq!(
        settings.public_url.as_ref().unwrap().base(),
        format!("https://{name}:{port}")
    );
    let running = syncstead_server::start(settings).await.unwrap();
    let addr = running.addr;

    // pebble's issuing root is made at each start: ask its management interface.
    let management = https_client(
        &ca.pem,
        "localhost",
        SocketAddr::from(([127, 0, 0, 1], pebble.management)),
    );
    let root = management
        .get(format!("https://localhost:{}/roots/0", pebble.management))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(root.contains("BEGIN CERTIFICATE"), "{root}");

    wait_for("a certificate from pebble", Duration::from_secs(60), async || {
        presented(&root, name, addr).await.is_ok()
    })
    .await;
    let client = https_client(&root, name, addr);
    let beat = client
        .get(format!("https://{name}:{port}/__heartbeat__"))
        .send()
        .await
        .unwrap();
    assert_eq!(beat.status(), 200);
    let first = presented(&root, name, addr).await.unwrap();
    use std::os::unix::fs::PermissionsExt;
    for f in ["certificate.pem", "certificate.key", "account.json"] {
        let mode = std::fs::metadata(data.path().join("acme").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }

    // A 20 s certificate renewed at half its life.
    wait_for("a renewed certificate", Duration::from_secs(40), async || {
        presented(&root, name, addr).await.is_ok_and(|c| c != first)
    })
    .await;
    let renewed = presented(&root, name, addr).await.unwrap();

    // A restart serves the stored certificate at once, with the CA gone.
    running.shutdown().await.unwrap();
    drop(pebble);
    let running = syncstead_server::start(syncstead_server::Settings::resolve(layer(data.path())).unwrap())
        .await
        .unwrap();
    let stored = presented(&root, name, running.addr).await.unwrap();
    assert_eq!(stored, renewed, "the stored certificate is served after a restart");
    running.shutdown().await.unwrap();
}
