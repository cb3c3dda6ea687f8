//! Publishes each line of stdin as one QoS 1 (or 2) message and exits once
//! the broker has acknowledged every one. Used by `scripts/bench-drain.sh`:
//! `mosquitto_pub -l` drops messages when fed a large file at full speed.
//!
//! Usage: publish_lines PORT TOPIC [QOS] < lines.txt

use std::io::BufRead;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(port), Some(topic)) = (args.next(), args.next()) else {
        eprintln!("usage: publish_lines PORT TOPIC [QOS] < lines.txt");
        std::process::exit(2);
    };
    let port: u16 = port.parse().expect("PORT is a number");
    let qos = match args.next().as_deref() {
        None | Some("1") => rumqttc::QoS::AtLeastOnce,
        Some("2") => rumqttc::QoS::ExactlyOnce,
        Some(other) => {
            eprintln!("publish_lines: QOS is 1 or 2, not {other}");
            std::process::exit(2);
        }
    };
    let lines: Vec<(String, Vec<u8>)> = std::io::stdin()
        .lock()
        .lines()
        .map(|l| (topic.clone(), l.expect("stdin is readable").into_bytes()))
        .collect();
    let mut publisher =
        gapless_sim::publisher::Publisher::connect("127.0.0.1", port, "bench-publisher")
            .await
            .expect("connect to the broker")
            .with_qos(qos);
    let sent = publisher.publish_all(lines, None).await.expect("publish");
    publisher.disconnect().await;
    eprintln!("published {sent} messages (all acknowledged)");
}
