//! The settings' layers, their errors, and the default settings file.
// figment::Jail's closures return figment's own (large) error.
#![allow(clippy::result_large_err)]

mod layers {
    use super::super::*;

    #[derive(Serialize, Default)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        listen: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        bus: Option<String>,
    }

    #[test]
    fn layers_override_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "flashsale.toml",
                "listen = \"0.0.0.0:1\"\nstore = \"sqlite://file.db\"\nbus_capacity = 7",
            )?;
            jail.set_env("FLASHSALE_STORE", "sqlite://env.db");
            let flags = Flags {
                listen: Some("127.0.0.1:9".into()),
                ..Default::default()
            };
            let config = Config::load(Path::new("flashsale.toml"), &flags).unwrap();
            assert_eq!(config.listen, "127.0.0.1:9");
            assert_eq!(config.store.as_str(), "sqlite://env.db");
            assert_eq!(config.orders.bus_capacity, 7);
            assert_eq!(config.gate, GateUrl::Local);
            Ok(())
        });
    }

    #[test]
    fn a_bad_setting_is_named_at_start() {
        figment::Jail::expect_with(|jail| {
            let flags = Flags {
                bus: Some("rabbitmq://x".into()),
                ..Default::default()
            };
            let error = Config::load(Path::new("none.toml"), &flags).unwrap_err();
            assert!(error.to_string().contains("unsupported bus"), "{error}");
            jail.set_env("FLASHSALE_BATCH_MAX", "0");
            let error = Config::load(Path::new("none.toml"), &Flags::default()).unwrap_err();
            assert!(error.to_string().contains("`batch_max`"), "{error}");
            jail.set_env("FLASHSALE_BATCH_MAX", "10");
            jail.set_env("FLASHSALE_GATE", "memcached://x");
            let error = Config::load(Path::new("none.toml"), &Flags::default()).unwrap_err();
            assert!(error.to_string().contains("gate"), "{error}");
            Ok(())
        });
    }

    /// Issue #23: on a Cluster a write waits for a replica unless told otherwise; on one
    /// Redis or behind Sentinel (fenced instead) it does not; the wait must end before
    /// the buyer's.
    #[test]
    fn the_gate_waits_for_a_replica_on_a_cluster_and_within_the_buyers_wait() {
        figment::Jail::expect_with(|jail| {
            let load = || Config::load(Path::new("none.toml"), &Flags::default());
            jail.set_env("FLASHSALE_GATE", "redis://127.0.0.1:6379");
            assert_eq!(load().unwrap().replica_acks().replicas, 0);
            jail.set_env("FLASHSALE_GATE", "redis-sentinel://127.0.0.1:26379/shop");
            assert_eq!(load().unwrap().replica_acks().replicas, 0);
            jail.set_env(
                "FLASHSALE_GATE",
                "redis-cluster://127.0.0.1:7001,127.0.0.1:7002",
            );
            let acks = load().unwrap().replica_acks();
            assert_eq!((acks.replicas, acks.timeout.as_millis()), (1, 250));
            jail.set_env("FLASHSALE_GATE_REPLICA_ACKS", "0");
            assert_eq!(load().unwrap().replica_acks().replicas, 0);
            jail.set_env("FLASHSALE_GATE", "redis-sentinel://127.0.0.1:26379");
            let error = load().unwrap_err();
            assert!(error.to_string().contains("MASTER_NAME"), "{error}");
            jail.set_env("FLASHSALE_GATE", "redis-cluster://127.0.0.1:7001");
            jail.set_env("FLASHSALE_GATE_REPLICA_TIMEOUT_MS", "1000");
            let error = load().unwrap_err();
            assert!(
                error.to_string().contains("`gate_replica_timeout_ms`"),
                "{error}"
            );
            Ok(())
        });
    }

    /// Issue #21: on Kafka an order may land up to a request timeout and librdkafka's
    /// one-second scan after its delivery timeout; a hold younger than that is not its
    /// gateway's death, and a rebuild waits that long.
    #[test]
    fn the_kafka_delivery_deadline_covers_a_late_retry() {
        let mut config = Config {
            bus: BusUrl::Kafka {
                brokers: "127.0.0.1:9092".into(),
            },
            ..Config::default()
        };
        config.kafka.kafka_delivery_timeout_ms = 3_000;
        assert_eq!(
            config.bus_settings().delivery_deadline(),
            Duration::from_millis(3_000 + 1_000 + 1_000)
        );
        config.orders.hold_grace_ms = 4_000;
        let error = config.validate().unwrap_err();
        assert!(error.to_string().contains("hold_grace_ms"), "{error}");
        config.orders.hold_grace_ms = 5_001;
        if cfg!(feature = "kafka") {
            config.validate().unwrap();
        }
    }
}

mod default_file {
    use std::collections::BTreeSet;

    use figment::Provider;

    use super::super::*;

    /// The keys `config/default.toml` sets, and those it mentions commented out.
    fn keys_of_the_file() -> (BTreeSet<String>, BTreeSet<String>) {
        let data = Toml::string(DEFAULTS).data().unwrap();
        let set = data[&figment::Profile::Default].keys().cloned().collect();
        let commented = DEFAULTS
            .lines()
            .filter_map(|l| l.strip_prefix("# ")?.split_once(" = "))
            .map(|(key, _)| key.to_string())
            .collect();
        (set, commented)
    }

    /// Every setting of `Config`, with whether it has a default (`None` settings have not).
    fn settings() -> Vec<(String, bool)> {
        let value = serde_json::to_value(Config::default()).unwrap();
        value
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), !v.is_null()))
            .collect()
    }

    #[test]
    fn sets_every_setting_with_a_default_and_no_other_key() {
        let (set, commented) = keys_of_the_file();
        let with_default: BTreeSet<_> = settings()
            .into_iter()
            .filter(|(_, d)| *d)
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            set, with_default,
            "config/default.toml's keys are the settings"
        );
        // The ones without a default are there, commented out, so that the file is the
        // list of every setting.
        for (key, has_default) in settings() {
            if !has_default {
                assert!(
                    commented.contains(&key),
                    "config/default.toml: no `# {key} = …`"
                );
            }
        }
        assert_eq!(
            settings().len(),
            53,
            "a setting added: add it to config/default.toml"
        );
    }

    #[test]
    fn comments_every_setting() {
        let lines: Vec<_> = DEFAULTS.lines().collect();
        let (set, commented) = keys_of_the_file();
        for (i, line) in lines.iter().enumerate() {
            let key = line.trim_start_matches("# ").split(" = ").next().unwrap();
            if line.contains(" = ") && (set.contains(key) || commented.contains(key)) {
                let above = lines[i - 1];
                assert!(
                    above.starts_with("# ") && !above.contains(" = "),
                    "config/default.toml: `{key}` has no comment of its own"
                );
            }
        }
    }

    /// The file is read with the same value model as every other layer: its values pass
    /// `validate`, and they are what `Config::default()` is.
    #[test]
    fn is_valid_and_is_the_default() {
        let config = Config::from_settings(&serde_json::json!({})).unwrap();
        assert_eq!(
            serde_json::to_value(&config).unwrap(),
            serde_json::to_value(Config::default()).unwrap()
        );
        config.validate().unwrap();
        assert_eq!(config.listen, "127.0.0.1:8080");
        assert_eq!(config.http.body_limit, 16 * 1024);
        assert_eq!(config.protection.rate_per_buyer.to_string(), "5/s burst 10");
        assert_eq!(config.kafka.kafka_replication_factor, None);
    }

    /// Grouping is for the code: a grouped setting keeps its flat name in a file and in the
    /// environment, and an optional or numeric one parses from an environment string.
    #[test]
    fn grouped_settings_keep_their_names_in_every_layer() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "flashsale.toml",
                "max_connections = 77\nrate_per_buyer = \"off\"\n\
                 kafka_replication_factor = 2\ntrusted_proxies = [\"10.0.0.0/8\"]\n\
                 admin_token = \"an-admin-token-of-16-bytes\"",
            )?;
            jail.set_env("FLASHSALE_BODY_LIMIT", "1234");
            jail.set_env("FLASHSALE_KAFKA_MIN_INSYNC_REPLICAS", "2");
            jail.set_env("FLASHSALE_TOPIC_PREFIX", "t.");
            jail.set_env("FLASHSALE_BREAKER_FAILURES", "9");
            jail.set_env("FLASHSALE_INSECURE", "true");
            let flags = serde_json::json!({ "hold_grace_ms": 12_345 });
            let config = Config::load(Path::new("flashsale.toml"), &flags).unwrap();
            assert_eq!(config.http.max_connections, 77);
            assert_eq!(config.http.body_limit, 1234);
            assert_eq!(config.protection.rate_per_buyer, RateLimit::Off);
            assert_eq!(config.protection.trusted_proxies, ["10.0.0.0/8"]);
            assert_eq!(config.protection.breaker_failures, 9);
            assert_eq!(config.kafka.kafka_replication_factor, Some(2));
            assert_eq!(config.kafka.kafka_min_insync_replicas, Some(2));
            assert_eq!(config.kafka.topic_prefix, "t.");
            assert_eq!(
                config.auth.admin_token.as_deref(),
                Some("an-admin-token-of-16-bytes")
            );
            assert!(config.auth.insecure);
            assert_eq!(config.orders.hold_grace_ms, 12_345);
            // Untouched grouped settings keep the file's defaults.
            assert_eq!(config.http.sale_body_limit, 1024 * 1024);
            assert_eq!(config.kafka.worker_group, "flashsale-workers");
            // The JSON names are the flat ones too.
            let json = serde_json::to_value(&config).unwrap();
            assert_eq!(json["max_connections"], 77);
            assert!(json.get("http").is_none());

            jail.set_env("FLASHSALE_MAX_HEADER_BUFFER", "lots");
            let error = Config::load(Path::new("flashsale.toml"), &flags).unwrap_err();
            assert!(
                error
                    .to_string()
                    .contains("\"MAX_HEADER_BUFFER\" in `FLASHSALE_`"),
                "a bad grouped setting is named: {error}"
            );
            jail.set_env("FLASHSALE_MAX_HEADER_BUFFER", "8192");
            jail.create_file("flashsale.toml", "rate_per_ip = \"lots\"")?;
            let error = Config::load(Path::new("flashsale.toml"), &flags).unwrap_err();
            assert!(
                error
                    .to_string()
                    .contains("\"default.rate_per_ip\" in flashsale.toml"),
                "{error}"
            );
            Ok(())
        });
    }
}
