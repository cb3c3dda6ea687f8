use super::*;

const MINIMAL: &str = r#"
        [source]
        kind = "vcd"
        name = "vcd-lab"
        [mqtt]
        url = "mqtt://127.0.0.1:1883"
        [[sink]]
        name = "out"
        kind = "file"
        path = "events.jsonl"
    "#;

#[test]
fn minimal_config_takes_defaults() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.mqtt.topics, vec!["publish/#"]);
    assert_eq!(c.mqtt.keep_alive.0, Duration::from_secs(30));
    assert_eq!(c.mqtt.max_packet_size.0, 1 << 20);
    assert!(c.mqtt.clean_session);
    assert_eq!(c.store.path, PathBuf::from("gapless.db"));
    assert_eq!(c.source.uri(), "vcd-lab");
    let SourceKind::Vcd(vcd) = &c.source.kind else {
        panic!("a vcd source")
    };
    assert_eq!(vcd.event_types, vec!["EVENT", "EXTERNAL_EVENT"]);
}

#[test]
fn history_retention_defaults_by_profile_and_zero_is_unbounded() {
    let vcd = Config::parse(MINIMAL).unwrap();
    assert_eq!(
        vcd.history_retention(),
        Some(Duration::from_secs(90 * 24 * 3600))
    );
    let mqtt = Config::parse(&MINIMAL.replace("kind = \"vcd\"", "kind = \"mqtt\"")).unwrap();
    assert_eq!(mqtt.history_retention(), None);
    let set = |v: &str| {
        Config::parse(&format!("{MINIMAL}\n[poll]\nhistory_retention = \"{v}\"\n"))
            .unwrap()
            .history_retention()
    };
    assert_eq!(set("4s"), Some(Duration::from_secs(4)));
    assert_eq!(set("0s"), None);
}

fn err_of(text: &str) -> String {
    Config::parse(text).unwrap_err().to_string()
}

/// MINIMAL with a sink of `kind` and `keys` first (so it is `sink[0]`).
fn with_sink(kind: &str, keys: &str) -> String {
    MINIMAL.replace(
        "[[sink]]",
        &format!("[[sink]]\nname = \"s\"\nkind = \"{kind}\"\n{keys}\n[[sink]]"),
    )
}

/// A `kind` sink with `keys` fails to load, naming `key` and saying `says`.
fn assert_named(kind: &str, (keys, key, says): (&str, &str, &str)) {
    let e = err_of(&with_sink(kind, keys));
    assert!(e.contains(key) && e.contains(says), "{keys}: {e}");
}

#[test]
fn nats_sink_keys_are_checked_and_named() {
    let nats = |keys: &str| with_sink("nats", keys);
    let ok = Config::parse(&nats("url = \"nats://127.0.0.1:4222\"")).unwrap();
    let SinkKind::Nats(n) = &ok.sinks[0].kind else {
        panic!("a nats sink")
    };
    assert_eq!(n.subject, NatsSink::DEFAULT_SUBJECT);
    assert_eq!(n.max_in_flight, 256);
    [
        ("url = \"http://x:4222\"", "sink[0].url", "nats://"),
        ("", "sink[0].url", "nats://"),
        (
            "url = \"nats://a:1\"\nsubject = \"x.{kind}\"",
            "sink[0].subject",
            "placeholder",
        ),
        (
            "url = \"nats://a:1\"\nmax_in_flight = 0",
            "sink[0].max_in_flight",
            "at least 1",
        ),
        (
            "url = \"nats://a:1\"\nuser = \"u\"",
            "sink[0].password_env",
            "together",
        ),
        (
            "url = \"nats://a:1\"\ntoken_env = \"T\"\ncreds_file = \"c\"",
            "sink[0].creds_file",
            "more than one",
        ),
        (
            "url = \"nats://a:1\"\nsecret_env = \"S\"",
            "sink[0].secret_env",
            "only a webhook sink",
        ),
    ]
    .into_iter()
    .for_each(|case| assert_named("nats", case));
    let e = err_of(&MINIMAL.replace("path = \"events.jsonl\"", "path = \"e\"\nsubject = \"x\""));
    assert!(
        e.contains("sink[0].subject") && e.contains("only a nats sink"),
        "{e}"
    );
    let e = err_of(&nats(
        "url = \"nats://a:1\"\ntoken_env = \"GAPLESS_TEST_UNSET_VAR\"",
    ));
    assert!(
        e.contains("sink[0].token_env") && e.contains("GAPLESS_TEST_UNSET_VAR"),
        "{e}"
    );
}

#[test]
fn kafka_sink_keys_are_checked_and_named() {
    let kafka = |keys: &str| with_sink("kafka", keys);
    let ok = Config::parse(&kafka("brokers = \"a:9092\"\ntopic = \"vcd-events\"")).unwrap();
    let SinkKind::Kafka(k) = &ok.sinks[0].kind else {
        panic!("a kafka sink")
    };
    assert_eq!(k.key, KafkaKey::Id);
    [
        ("topic = \"t\"", "sink[0].brokers", "bootstrap"),
        ("brokers = \"a:1\"", "sink[0].topic", "not a Kafka topic"),
        (
            "brokers = \"a:1\"\ntopic = \"a b\"",
            "sink[0].topic",
            "not a Kafka topic",
        ),
        (
            "brokers = \"a:1\"\ntopic = \"t\"\nproperties = { acks = \"1\" }",
            "sink[0].properties.\"acks\"",
            "sets this itself",
        ),
        (
            "brokers = \"a:1\"\ntopic = \"t\"\nproperties = { \"transactional.id\" = \"x\" }",
            "sink[0].properties.\"transactional.id\"",
            "transactional_id have their own keys",
        ),
        (
            "brokers = \"a:1\"\ntopic = \"t\"\nuser = \"u\"",
            "sink[0].password_env",
            "together",
        ),
        (
            "brokers = \"a:1\"\ntopic = \"t\"\nsubject = \"x\"",
            "sink[0].subject",
            "only a nats sink",
        ),
        (
            "brokers = \"a:1\"\ntopic = \"t\"\nkey = \"seq\"",
            "key",
            "unknown variant",
        ),
    ]
    .into_iter()
    .for_each(|case| assert_named("kafka", case));
    let e = err_of(&MINIMAL.replace("path = \"events.jsonl\"", "path = \"e\"\ntopic = \"t\""));
    assert!(
        e.contains("sink[0].topic") && e.contains("only a kafka sink"),
        "{e}"
    );
}

#[test]
fn unknown_key_is_named() {
    let e = err_of(&MINIMAL.replace("[mqtt]", "[mqtt]\nbogus_key = 1"));
    assert!(e.contains("bogus_key"), "{e}");
}

#[test]
fn bad_values_name_their_key_and_hint() {
    let e = err_of(&MINIMAL.replace("mqtt://127.0.0.1:1883", "http://x"));
    assert!(e.contains("mqtt.url") && e.contains("hint"), "{e}");
    let e = err_of(&MINIMAL.replace("[mqtt]", "[mqtt]\nkeep_alive = \"soon\""));
    assert!(e.contains("keep_alive") && e.contains("30s"), "{e}");
    let e = err_of(&MINIMAL.replace("path = \"events.jsonl\"", ""));
    assert!(e.contains("sink[0].path"), "{e}");
    let e = err_of(&MINIMAL.replace(
        "[mqtt]",
        "[mqtt]\npassword_env = \"GAPLESS_TEST_UNSET_VAR\"",
    ));
    assert!(
        e.contains("GAPLESS_TEST_UNSET_VAR") && e.contains("mqtt.password_env"),
        "{e}"
    );
    let e = err_of(&MINIMAL.replace("[mqtt]", "[source2]\n[mqtt]"));
    assert!(e.contains("source2"), "{e}");
    let e = err_of(&MINIMAL.replace("name = \"vcd-lab\"", "name = \"x\"\nid_pointer = \"/id\""));
    assert!(e.contains("source.id_pointer"), "{e}");
}

#[test]
fn a_vcd_source_alone_derives_the_broker() {
    let text = r#"
            [source]
            kind = "vcd"
            name = "lab"
            url = "https://vcd.example.com"
            org = "System"
            user = "administrator"
            password_file = "/dev/null"
            [[sink]]
            name = "out"
            kind = "stdout"
        "#;
    let c = Config::parse(text).unwrap();
    assert_eq!(c.mqtt.url, "wss://vcd.example.com/messaging/mqtt");
    assert_eq!(c.mqtt.topics, vec!["publish/#"]);
    assert_eq!(c.mqtt.auth, MqttAuthMode::Password);
    let login = c.vcd_login().unwrap();
    assert!(login.is_provider());
    assert_eq!(login.api_version, "38.0");
    assert_eq!(c.poll.schedule, "0 * * * * *");
    assert_eq!(c.poll.page_size, 128);

    let e = err_of(&text.replace("org = \"System\"", ""));
    assert!(e.contains("source.org"), "{e}");
    let e = err_of(&text.replace("password_file = \"/dev/null\"", ""));
    assert!(e.contains("source.password_env"), "{e}");
    let e = err_of(&text.replace("https://vcd.example.com", "vcd.example.com"));
    assert!(e.contains("source.url"), "{e}");
    let e = err_of(&text.replace("[[sink]]", "[poll]\nschedule = \"* * * * *\"\n[[sink]]"));
    assert!(e.contains("poll.schedule"), "{e}");
    let e = err_of(&text.replace("[[sink]]", "[poll]\npage_size = 500\n[[sink]]"));
    assert!(e.contains("poll.page_size"), "{e}");
    let no_url = text.replace("url = \"https://vcd.example.com\"", "");
    let e = err_of(&no_url);
    assert!(e.contains("source.org") || e.contains("mqtt.url"), "{e}");
}

#[test]
fn scaleit_keys_are_checked() {
    let text = r#"
            [source]
            kind = "scaleit"
            name = "apps"
            apps = ["de-ondics-pacman"]
            schema_base_url = "http://{app}.apps.local"
            history_url = "http://{app}.apps.local/api/history"
            [mqtt]
            url = "mqtt://127.0.0.1:1883"
            [[sink]]
            name = "out"
            kind = "stdout"
        "#;
    let c = Config::parse(text).unwrap();
    assert!(c.has_history());
    assert_eq!(c.mqtt.topics, vec!["app/de-ondics-pacman/#"]);
    assert!(
        !Config::parse(&text.replace("history_url", "# history_url"))
            .unwrap()
            .has_history()
    );
    let e = err_of(&text.replace("apps = [\"de-ondics-pacman\"]", ""));
    assert!(
        e.contains("source.history_url") && e.contains("source.apps"),
        "{e}"
    );
    let e = err_of(&text.replace("http://{app}.apps.local/api", "{app}/api"));
    assert!(
        e.contains("source.history_url") && e.contains("e.g."),
        "{e}"
    );
    let e = err_of(&text.replace("http://{app}.apps.local\"", "ftp://x\""));
    assert!(e.contains("source.schema_base_url"), "{e}");
    let e = err_of(&MINIMAL.replace(
        "name = \"vcd-lab\"",
        "name = \"x\"\nhistory_url = \"http://h\"",
    ));
    assert!(
        e.contains("source.history_url") && e.contains("scaleit"),
        "{e}"
    );
}

#[test]
fn sizes_parse_with_units() {
    assert_eq!(ByteSize::parse("1MiB").unwrap().0, 1 << 20);
    assert_eq!(ByteSize::parse("512 KiB").unwrap().0, 512 << 10);
    assert_eq!(ByteSize::parse("2MB").unwrap().0, 2_000_000);
    assert_eq!(ByteSize::parse("4096").unwrap().0, 4096);
    assert!(ByteSize::parse("1 parsec").is_err());
    assert!(ByteSize::parse("MiB").is_err());
}

#[test]
fn broker_urls_split() {
    let u = BrokerUrl::parse("wss://vcd.example.com/messaging/mqtt").unwrap();
    assert_eq!(
        (u.scheme, u.host.as_str(), u.port),
        (Scheme::Wss, "vcd.example.com", 443)
    );
    let u = BrokerUrl::parse("mqtt://127.0.0.1:18830").unwrap();
    assert_eq!(
        (u.scheme, u.host.as_str(), u.port),
        (Scheme::Mqtt, "127.0.0.1", 18830)
    );
    let u = BrokerUrl::parse("mqtts://[::1]:8883").unwrap();
    assert_eq!((u.host.as_str(), u.port), ("::1", 8883));
    let u = BrokerUrl::parse("ws://[::1]/mqtt").unwrap();
    assert_eq!((u.host.as_str(), u.port), ("::1", 80));
    assert!(BrokerUrl::parse("mqtt://user:pw@host").is_err());
    assert!(BrokerUrl::parse("host:1883").is_err());
}

#[test]
fn secrets_do_not_print() {
    let s = Secret::new("hunter2");
    assert!(!format!("{s:?}").contains("hunter2"));
}

#[test]
fn mqtt_qos_is_0_1_or_2_and_1_by_default() {
    assert_eq!(
        Config::parse(MINIMAL).unwrap().mqtt.qos,
        MqttQos::AtLeastOnce
    );
    for (n, qos) in [
        (0, MqttQos::AtMostOnce),
        (1, MqttQos::AtLeastOnce),
        (2, MqttQos::ExactlyOnce),
    ] {
        let c = Config::parse(&MINIMAL.replace("[mqtt]", &format!("[mqtt]\nqos = {n}")));
        assert_eq!(c.unwrap().mqtt.qos, qos);
    }
    let e = err_of(&MINIMAL.replace("[mqtt]", "[mqtt]\nqos = 3"));
    assert!(
        e.contains("mqtt.qos = 3") && e.contains("exactly once"),
        "{e}"
    );
}

#[test]
fn a_status_topic_is_one_topic_and_not_for_vcd() {
    let e = err_of(&MINIMAL.replace("[mqtt]", "[mqtt]\nstatus_topic = \"g/status\""));
    assert!(e.contains("mqtt.status_topic") && e.contains("VCD"), "{e}");
    let generic = MINIMAL.replace("kind = \"vcd\"", "kind = \"mqtt\"");
    let e = err_of(&generic.replace("[mqtt]", "[mqtt]\nstatus_topic = \"g/#\""));
    assert!(e.contains("wildcards"), "{e}");
    let e = err_of(&generic.replace("[mqtt]", "[mqtt]\nstatus_topic = \"publish/me\""));
    assert!(e.contains("matches the subscription `publish/#`"), "{e}");
    let ok = generic.replace("[mqtt]", "[mqtt]\nstatus_topic = \"g/status\"");
    assert_eq!(
        Config::parse(&ok).unwrap().mqtt.status_topic.as_deref(),
        Some("g/status")
    );
}

#[test]
/// The status-topic check relies on rumqttc's matching as MQTT defines it.
fn topic_filters_match_as_mqtt_says() {
    for (filter, topic, want) in [
        ("#", "a/b", true),
        ("a/#", "a", true),
        ("a/#", "a/b/c", true),
        ("a/+", "a/b", true),
        ("a/+", "a/b/c", false),
        ("+/+", "a/b", true),
        ("a/b", "a/b", true),
        ("a/b", "a/c", false),
        ("a/b", "a/b/c", false),
        ("#", "$SYS/x", false),
        ("+/x", "$SYS/x", false),
    ] {
        assert_eq!(rumqttc::matches(topic, filter), want, "{filter} vs {topic}");
    }
}

#[test]
fn qos_0_is_accepted_with_a_warning_that_names_the_recovery() {
    assert!(
        Config::parse(MINIMAL)
            .unwrap()
            .delivery_warnings()
            .is_empty()
    );
    let qos0 = MINIMAL.replace("[mqtt]", "[mqtt]\nqos = 0");
    let w = Config::parse(&qos0).unwrap().delivery_warnings();
    assert!(w.len() == 1 && w[0].contains("lost for good"), "{w:?}");
    let with_history = qos0.replace(
            "name = \"vcd-lab\"",
            "name = \"vcd-lab\"\nurl = \"https://vcd.example\"\norg = \"System\"\nuser = \"u\"\npassword_file = \"/dev/null\"",
        );
    let w = Config::parse(&with_history).unwrap().delivery_warnings();
    assert!(w.len() == 1 && w[0].contains("only the poller"), "{w:?}");
}

#[test]
fn a_persistent_session_needs_an_explicit_client_id() {
    let e = err_of(&MINIMAL.replace("[mqtt]", "[mqtt]\nclean_session = false"));
    assert!(
        e.contains("mqtt.client_id") && e.contains("orphaned"),
        "{e}"
    );
    let ok = MINIMAL.replace(
        "[mqtt]",
        "[mqtt]\nclean_session = false\nclient_id = \"g-1\"",
    );
    assert_eq!(Config::parse(&ok).unwrap().mqtt.client_id(), "g-1");
    assert!(
        Config::parse(MINIMAL)
            .unwrap()
            .mqtt
            .client_id()
            .starts_with("gapless-")
    );
}

#[test]
fn websocket_packets_stay_within_a_frame() {
    let ws = MINIMAL.replace("mqtt://127.0.0.1:1883", "ws://127.0.0.1:8080/mqtt");
    let e = err_of(&ws.replace("[mqtt]", "[mqtt]\nmax_packet_size = \"32MiB\""));
    assert!(
        e.contains("mqtt.max_packet_size") && e.contains("WebSocket"),
        "{e}"
    );
    assert!(Config::parse(&ws.replace("[mqtt]", "[mqtt]\nmax_packet_size = \"16MiB\"")).is_ok());
    let tcp = MINIMAL.replace("[mqtt]", "[mqtt]\nmax_packet_size = \"32MiB\"");
    assert!(Config::parse(&tcp).is_ok());
}

#[test]
fn skipping_verification_does_not_silently_drop_a_ca_file() {
    let text = MINIMAL.replace(
        "name = \"vcd-lab\"",
        "name = \"vcd-lab\"\ntls = { ca_file = \"/etc/ca.pem\", insecure_skip_verify = true }",
    );
    let e = err_of(&text);
    assert!(
        e.contains("source.tls.insecure_skip_verify") && e.contains("ca.pem"),
        "{e}"
    );
}

#[test]
fn an_invalid_whsec_secret_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    let hook = |secret: &str| {
        std::fs::write(&file, secret).unwrap();
        MINIMAL.replace(
            "[[sink]]",
            &format!(
                "[[sink]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"https://h.example/x\"\n\
                     secret_file = \"{}\"\n[[sink]]",
                file.display()
            ),
        )
    };
    let e = err_of(&hook("whsec_not*base64"));
    assert!(
        e.contains("sink[0].secret_file") && e.contains("base64"),
        "{e}"
    );
    assert!(!e.contains("not*base64"), "the secret is not echoed: {e}");
    assert!(Config::parse(&hook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).is_ok());
}

#[test]
fn a_zero_clock_skew_is_refused() {
    let e = err_of(&MINIMAL.replace(
        "name = \"vcd-lab\"",
        "name = \"vcd-lab\"\nmax_clock_skew = \"0s\"",
    ));
    assert!(e.contains("source.max_clock_skew"), "{e}");
}

#[test]
fn schedules_are_checked() {
    assert!(parse_schedule("0 * * * * *").is_ok());
    assert!(parse_schedule("*/10 * * * * *").is_ok());
    assert!(parse_schedule("* * * * *").is_err());
    assert!(parse_schedule("0 * * * * nope").is_err());
}

#[test]
fn a_postgres_store_takes_its_password_from_a_file_never_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pg-password");
    std::fs::write(&file, "s3cret\n").unwrap();
    let store = |keys: &str| MINIMAL.replace("[mqtt]", &format!("[store]\n{keys}\n[mqtt]"));
    let c = Config::parse(&store(&format!(
        "url = \"postgres://gapless@db:5432/events\"\npassword_file = \"{}\"\nca_file = \"/etc/ca.pem\"",
        file.display()
    )))
    .unwrap();
    assert_eq!(c.store.password.as_ref().unwrap().expose(), "s3cret");
    assert_eq!(c.store.location(), "postgres://gapless@db:5432/events");
    assert!(!format!("{:?}", c.store).contains("s3cret"));
    // The store keeps its connection options behind a Debug that names
    // the backend only.
    let options = crate::store::postgres::options(&c.store).unwrap().unwrap();
    let kept = crate::store::backend::Db::<(), _>::Postgres(options);
    assert_eq!(format!("{kept:?}"), "Postgres");

    let e = err_of(&store("url = \"postgres://gapless:hunter2@db/events\""));
    assert!(
        e.contains("store.url") && e.contains("password_env") && !e.contains("hunter2"),
        "{e}"
    );
    let e = err_of(&store("url = \"mysql://db/events\""));
    assert!(e.contains("store.url") && e.contains("store.path"), "{e}");
    let e = err_of(&store("sslmode = \"require\""));
    assert!(
        e.contains("store.sslmode") && e.contains("store.url"),
        "{e}"
    );
    let e = err_of(&store("url = \"postgres://db/e\"\nlease_ttl = \"3s\""));
    assert!(
        e.contains("store.lease_ttl") && e.contains("3 × lease_renew"),
        "{e}"
    );
    let e = err_of(&store("lease_renew = \"1s\""));
    assert!(
        e.contains("store.lease_renew") && e.contains("store.url"),
        "{e}"
    );
    let e = err_of(&store("url = \"postgres://db/e\"\nsslmode = \"sometimes\""));
    assert!(e.contains("sslmode") && e.contains("verify-full"), "{e}");
}
