//! TLS: mosquitto with a certificate from a private CA; gapless trusts it
//! only through `mqtt.ca_file`.

use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use crate::support::*;

/// Writes a CA and a server certificate for 127.0.0.1; returns the CA path.
fn make_certs(dir: &std::path::Path) -> std::path::PathBuf {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server_cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    dir.join("ca.pem")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_a_private_ca_from_ca_file() {
    let Some(bin) = mosquitto_bin("mqtts_private_ca") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = make_certs(dir.path());
    let broker = Mosquitto::start_with(
        bin,
        dir.path(),
        &format!(
            "listener {{port}} 127.0.0.1\ncafile {ca}\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n",
            ca = ca.display(),
            d = dir.path().display()
        ),
    );
    let tls_port = broker.extra_port;
    let config = config(
        dir.path(),
        &format!("mqtts://127.0.0.1:{tls_port}"),
        true,
        "gapless-tls",
    );

    // Without the CA the handshake fails and gapless keeps retrying.
    let mut untrusting = Gapless::start(dir.path(), &config);
    untrusting.wait_metric("gapless_mqtt_connection_errors_total", 1.0);
    assert_eq!(untrusting.metric("gapless_mqtt_subscriptions_total"), 0.0);
    drop(untrusting);

    let text = std::fs::read_to_string(&config).unwrap();
    let with_ca = text.replace(
        "[store]",
        &format!("ca_file = \"{}\"\n\n[store]", ca.display()),
    );
    std::fs::write(&config, with_ca).unwrap();
    let mut gapless = Gapless::start(dir.path(), &config);
    gapless.wait_subscribed(1);
    let salt = 0x5eed_0300;
    let mut publisher = broker.publisher("tls-pub").await;
    publisher
        .publish_all(event_messages(salt, 0..500), None)
        .await
        .unwrap();
    let file = dir.path().join("events.jsonl");
    wait_lines(&file, 500, Duration::from_secs(60), &mut gapless);
    gapless.stop();
    assert_exactly_once(&file, salt, 500);
}

/// An HTTPS endpoint on 127.0.0.1 with the test CA's server certificate
/// (rustls on a plain thread): answers 200 and counts the requests.
fn https_endpoint(dir: &std::path::Path) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::io::{Read, Write};
    gapless::net::tls::install_crypto_provider();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = std::sync::Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let tls = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut stream = rustls::StreamOwned::new(tls, conn);
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then as many body bytes as content-length says.
            let complete = |r: &[u8]| {
                let text = String::from_utf8_lossy(r);
                let Some(end) = text.find("\r\n\r\n") else {
                    return false;
                };
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                r.len() >= end + 4 + len
            };
            while !complete(&request) {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            if complete(&request) {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                let _ = stream.flush();
            }
        }
    });
    (port, hits)
}

/// A webhook behind a private CA is trusted through the sink's `ca_file`;
/// without it the handshake fails and the sink retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_with_a_private_ca_from_its_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_certs(dir.path());
    let (port, hits) = https_endpoint(dir.path());
    let broker = gapless_sim::broker::EmbeddedBroker::start().await.unwrap();
    let config = config(dir.path(), &broker.url(), true, "gapless-hook-tls");
    let sink = |ca_line: &str| {
        format!(
            "[[sink]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"https://127.0.0.1:{port}/hook\"\n\
             {ca_line}\n\n[store]"
        )
    };
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("[store]", &sink(""))).unwrap();
    let mut untrusting = Gapless::start(dir.path(), &config);
    untrusting.wait_subscribed(1);
    let mut p =
        gapless_sim::publisher::Publisher::connect("127.0.0.1", broker.addr().port(), "tls-hook")
            .await
            .unwrap();
    p.publish_all(event_messages(0x5eed_0400, 0..3), None)
        .await
        .unwrap();
    untrusting.wait_metric("gapless_sink_retries_total{sink=\"hook\"}", 2.0);
    assert!(
        untrusting.log_text().contains("UnknownIssuer"),
        "{}",
        untrusting.log_text()
    );
    drop(untrusting);

    std::fs::write(
        &config,
        text.replace("[store]", &sink(&format!("ca_file = \"{}\"", ca.display()))),
    )
    .unwrap();
    let mut gapless = Gapless::start(dir.path(), &config);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while hits.load(std::sync::atomic::Ordering::SeqCst) < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            gapless.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gapless.wait_subscribed(1);
    gapless.stop();
}
