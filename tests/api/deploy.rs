//! The deployment files (deploy/): no container engine runs here, so what can be checked
//! is: every file parses; the names they use exist (settings, routes, images built from
//! files that exist, labels that match); the metrics they query are in a real scrape
//! (`metrics::every_metric_the_dashboards_and_alerts_query_exists`).

use std::collections::BTreeSet;

use serde_yaml::Value;

fn root() -> std::path::PathBuf {
    env!("CARGO_MANIFEST_DIR").into()
}

fn yaml_documents(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: {e}")))
        .collect()
}

use serde::Deserialize;

/// Every setting name (`FLASHSALE_<NAME>` in the environment).
fn settings() -> BTreeSet<String> {
    let config = serde_json::to_value(flashsale::config::Config::default()).unwrap();
    config
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.to_uppercase())
        .collect()
}

fn check_env_names(file: &str, names: impl Iterator<Item = String>) -> usize {
    let settings = settings();
    let mut n = 0;
    for name in names {
        if let Some(setting) = name.strip_prefix("FLASHSALE_") {
            assert!(
                settings.contains(setting),
                "{file}: {name} is not a setting"
            );
            n += 1;
        }
    }
    n
}

#[test]
fn every_deployment_file_parses() {
    let mut files = Vec::new();
    let mut stack = vec![root().join("deploy")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    let mut parsed = 0;
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        match path.extension().and_then(|e| e.to_str()) {
            Some("yml" | "yaml") => {
                for doc in serde_yaml::Deserializer::from_str(&text) {
                    Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                }
                parsed += 1;
            }
            Some("json") => {
                serde_json::from_str::<serde_json::Value>(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                parsed += 1;
            }
            _ => {}
        }
    }
    assert!(parsed >= 9, "only {parsed} files parsed of {files:?}");
}

#[test]
fn the_dockerfile_builds_from_files_that_exist() {
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let stages: Vec<_> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    assert!(stages[0].ends_with(" AS builder"));
    assert!(text.contains("COPY --from=builder /src/target/release/flashsale"));
    for line in text
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let words: Vec<_> = line.split_whitespace().collect();
        for source in &words[1..words.len() - 1] {
            assert!(
                root().join(source).exists(),
                "Dockerfile copies {source}, which is missing"
            );
        }
    }
    // The default settings are built into the binary (include_str!).
    assert!(
        text.contains("COPY config ./config"),
        "the build needs config/"
    );
    // Every feature it builds exists; the binary's default command is a real one.
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    assert!(text.contains("--features kafka") && manifest.contains("\nkafka = "));
    assert!(text.contains("CMD [\"serve\"]"));
    check_env_names(
        "Dockerfile",
        text.split_whitespace()
            .filter_map(|w| w.split('=').next())
            .map(String::from),
    );
}

#[test]
fn compose_runs_every_part_with_settings_that_exist() {
    let compose = &yaml_documents("deploy/docker-compose.yml")[0];
    let services = compose["services"].as_mapping().unwrap();
    let names: BTreeSet<_> = services
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    for needed in [
        "redis",
        "postgres",
        "kafka",
        "gateway-1",
        "gateway-2",
        "worker-1",
        "worker-2",
        "prometheus",
        "grafana",
    ] {
        assert!(names.contains(needed), "no {needed} in {names:?}");
    }
    let mut checked = 0;
    for (name, service) in services {
        if let Some(env) = service["environment"].as_mapping() {
            checked += check_env_names(
                name.as_str().unwrap(),
                env.keys().filter_map(|k| k.as_str().map(String::from)),
            );
        }
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            if source.starts_with("./") {
                assert!(
                    root().join("deploy").join(source).exists(),
                    "{name:?} mounts {source}"
                );
            }
        }
    }
    assert!(checked >= 8, "{checked} settings checked");
    // Gateways and workers run commands the binary has.
    assert_eq!(services["gateway-1"]["command"][0], "serve");
    assert_eq!(services["worker-1"]["command"][0], "worker");
}

#[test]
fn kubernetes_manifests_hang_together() {
    let mut kinds = BTreeSet::new();
    let mut deployments = std::collections::BTreeMap::new();
    let mut config_keys = Vec::new();
    let mut services = Vec::new();
    let mut hpa_target = None;
    for file in ["config.yaml", "secret.yaml", "gateway.yaml", "worker.yaml"] {
        for doc in yaml_documents(&format!("deploy/k8s/{file}")) {
            let kind = doc["kind"].as_str().unwrap().to_string();
            assert!(doc["apiVersion"].is_string(), "{file}: no apiVersion");
            let name = doc["metadata"]["name"].as_str().unwrap().to_string();
            match kind.as_str() {
                "ConfigMap" => config_keys.extend(
                    doc["data"]
                        .as_mapping()
                        .unwrap()
                        .keys()
                        .map(|k| k.as_str().unwrap().to_string()),
                ),
                "Secret" => config_keys.extend(
                    doc["stringData"]
                        .as_mapping()
                        .unwrap()
                        .keys()
                        .map(|k| k.as_str().unwrap().to_string()),
                ),
                "Deployment" => {
                    let spec = &doc["spec"];
                    assert_eq!(
                        spec["selector"]["matchLabels"],
                        spec["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
                            .clone()
                            .into_label(),
                        "{name}: selector and pod labels differ"
                    );
                    deployments.insert(name.clone(), doc.clone());
                }
                "Service" => services.push(doc.clone()),
                "HorizontalPodAutoscaler" => {
                    hpa_target = doc["spec"]["scaleTargetRef"]["name"]
                        .as_str()
                        .map(String::from)
                }
                _ => {}
            }
            kinds.insert(kind);
        }
    }
    for needed in [
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
    ] {
        assert!(kinds.contains(needed), "no {needed}");
    }
    assert!(check_env_names("k8s", config_keys.into_iter()) >= 8);
    let gateway = &deployments["flashsale-gateway"];
    assert_eq!(hpa_target.as_deref(), Some("flashsale-gateway"));
    let container = &gateway["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    // Issue #21: a start gets time (startupProbe), and the probes use the internal
    // listener, a port the container declares, that buyers cannot fill.
    assert_eq!(container["startupProbe"]["httpGet"]["path"], "/healthz");
    let internal_port = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "internal")
        .expect("an internal port")["containerPort"]
        .as_u64()
        .unwrap();
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "internal", "{probe}");
    }
    let config = std::fs::read_to_string("deploy/k8s/config.yaml").unwrap();
    assert!(
        config.contains(&format!(
            "FLASHSALE_INTERNAL_LISTEN: \"0.0.0.0:{internal_port}\""
        )),
        "the internal listener is on the probes' port"
    );
    assert_eq!(container["args"][0], "serve");
    assert_eq!(
        deployments["flashsale-worker"]["spec"]["template"]["spec"]["containers"][0]["args"][0],
        "worker"
    );
    // The Service selects the gateway's pods.
    let service = services
        .iter()
        .find(|s| s["metadata"]["name"] == "flashsale-gateway")
        .unwrap();
    assert_eq!(
        service["spec"]["selector"]["app.kubernetes.io/name"],
        gateway["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
    );
}

trait IntoLabel {
    fn into_label(self) -> Value;
}

impl IntoLabel for Value {
    /// `{app.kubernetes.io/name: <self>}`, as a selector's matchLabels.
    fn into_label(self) -> Value {
        let mut map = serde_yaml::Mapping::new();
        map.insert("app.kubernetes.io/name".into(), self);
        Value::Mapping(map)
    }
}

#[test]
fn prometheus_scrapes_metrics_and_loads_the_alerts() {
    for file in [
        "deploy/prometheus/prometheus.yml",
        "deploy/prometheus/prometheus-compose.yml",
    ] {
        let config = &yaml_documents(file)[0];
        let job = &config["scrape_configs"][0];
        assert_eq!(job["metrics_path"], "/metrics", "{file}");
        assert!(
            config["rule_files"][0]
                .as_str()
                .unwrap()
                .ends_with("alerts.yml")
        );
    }
    let alerts = &yaml_documents("deploy/prometheus/alerts.yml")[0];
    let rules: Vec<_> = alerts["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter())
        .collect();
    assert!(rules.len() >= 6);
    for rule in rules {
        assert!(
            rule["alert"].is_string() && rule["expr"].is_string(),
            "{rule:?}"
        );
    }
}
