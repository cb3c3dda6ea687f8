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
    let tls_port = free_port();
    let broker = Mosquitto::start_with(
        bin,
        dir.path(),
        &format!(
            "listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n",
            ca = ca.display(),
            d = dir.path().display()
        ),
    );
    let config = config(
        dir.path(),
        &format!("mqtts://127.0.0.1:{tls_port}"),
        true,
        "gapless-tls",
    );

    // Without the CA the handshake fails and gapless keeps retrying.
    let mut untrusting = Gapless::start(dir.path(), &config);
    untrusting.wait_log("MQTT connection failed", 1, Duration::from_secs(20));
    assert!(!untrusting.log_text().contains("subscribed"));
    drop(untrusting);

    let text = std::fs::read_to_string(&config).unwrap();
    let with_ca = text.replace(
        "[store]",
        &format!("ca_file = \"{}\"\n\n[store]", ca.display()),
    );
    std::fs::write(&config, with_ca).unwrap();
    let mut gapless = Gapless::start(dir.path(), &config);
    gapless.wait_log("subscribed", 1, Duration::from_secs(20));
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
