use super::*;

#[test]
fn shipped_example_is_the_defaults() {
    let text = include_str!("../../podtrail.example.toml");
    let parsed = Config::from_toml(text).expect("example parses");
    assert_eq!(parsed, Config::default(), "podtrail.example.toml drifted from the defaults");
}

/// Dotted key paths of a JSON tree: `(path, is_null)`; an empty table is a key itself.
fn keys(v: &serde_json::Value, prefix: &str, out: &mut Vec<(String, bool)>) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                keys(v, &if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, out);
            }
        }
        serde_json::Value::Null => out.push((prefix.to_owned(), true)),
        _ => out.push((prefix.to_owned(), false)),
    }
}

/// The commented text of the example's section `[section]`, up to the next section.
fn section_text<'a>(text: &'a str, section: &str) -> &'a str {
    let head = format!("\n[{section}]\n");
    let Some(start) = text.find(&head) else { return "" };
    let rest = &text[start + head.len()..];
    &rest[..rest.find("\n[").unwrap_or(rest.len())]
}

/// Every key of the configuration (serde_json keeps the unset optional ones, as null)
/// against the example: a key with a default is set in it, an optional one is at least
/// shown in a comment of its section, and the example has nothing else.
fn example_key_problems(text: &str) -> Vec<String> {
    let mut schema = Vec::new();
    keys(&serde_json::to_value(Config::default()).unwrap(), "", &mut schema);
    let example: toml::Value = toml::from_str(text).expect("example parses");
    let mut present = Vec::new();
    keys(&serde_json::to_value(example).unwrap(), "", &mut present);
    let present: Vec<String> = present.into_iter().map(|(k, _)| k).collect();
    let mut problems = Vec::new();
    for (key, optional) in &schema {
        if present.contains(key) {
            continue;
        }
        let (section, name) = key.rsplit_once('.').unwrap_or(("", key));
        let shown = section_text(text, section).lines().any(|l| {
            let l = l.trim_start_matches('#').trim();
            l.starts_with(&format!("{name} =")) || l.starts_with(&format!("[{key}]"))
        });
        if !(*optional && shown) {
            problems.push(format!("missing: {key}"));
        }
    }
    let known: Vec<&String> = schema.iter().map(|(k, _)| k).collect();
    problems.extend(present.iter().filter(|k| !known.contains(k)).map(|k| format!("extra: {k}")));
    problems
}

#[test]
fn shipped_example_documents_every_key() {
    let text = include_str!("../../podtrail.example.toml");
    assert_eq!(example_key_problems(text), Vec::<String>::new());
    // and the check notices a key taken out, set or commented
    let without = text.replacen("\nexport_probes = false\n", "\n", 1);
    assert_ne!(without, text, "the example sets kube.export_probes");
    assert_eq!(example_key_problems(&without), ["missing: kube.export_probes"]);
    let without = text.replacen("#   otlp_endpoint = ", "#   ", 1);
    assert_eq!(example_key_problems(&without), ["missing: export.otlp_endpoint"]);
}

#[test]
fn unknown_keys_and_bad_values_are_refused_with_their_name() {
    let e = Config::from_toml("[capture]\nring_mb = 4\n").unwrap_err().to_string();
    assert!(e.contains("ring_mb"), "{e}");
    let e = Config::from_toml("[capture]\nring_mib = 3\n").unwrap().validate().unwrap_err().to_string();
    assert!(e.contains("capture.ring_mib"), "{e}");
    let bad = "[attribution.audit_webhook]\nlisten = \"0.0.0.0:8443\"\nplaintext_loopback = true\n";
    let e = Config::from_toml(bad).unwrap().validate().unwrap_err().to_string();
    assert!(e.contains("loopback"), "{e}");
    let no_ca = "[attribution.audit_webhook]\nlisten = \"0.0.0.0:8443\"\ntls_cert = \"c\"\ntls_key = \"k\"\n";
    let e = Config::from_toml(no_ca).unwrap().validate().unwrap_err().to_string();
    assert!(e.contains("client_ca"), "{e}");
}

#[test]
fn pod_label_keys_are_checked_up_front() {
    for good in ["app", "app.kubernetes.io/name", "tier_2", "example.com/a-b.c", "A1"] {
        assert_eq!(label_key_problem(good), None, "{good}");
    }
    for bad in ["", "-app", "app-", "a b", "Example.com/app", "/app", "app/", &"x".repeat(64)] {
        assert!(label_key_problem(bad).is_some(), "{bad:?}");
    }
    let e = Config::from_toml("[kube]\npod_labels = [\"app\", \"bad key\"]\n").unwrap().validate().unwrap_err();
    assert!(e.to_string().contains("kube.pod_labels: \"bad key\""), "{e}");
    let many: Vec<String> = (0..=MAX_POD_LABELS).map(|i| format!("\"l{i}\"")).collect();
    let e = Config::from_toml(&format!("[kube]\npod_labels = [{}]\n", many.join(", "))).unwrap().validate();
    assert!(e.unwrap_err().to_string().contains("at most 16"));
}

#[test]
fn activity_settings_reach_the_process_stage_with_the_cluster_ranges() {
    let c = "[process.activity]\nscope = \"all\"\nwatch = [\"strace\"]\noutbound_scopes = [\"external\", \"private\"]\n\n[spans.scope]\npod_cidrs = [\"10.244.0.0/16\"]\n";
    let r = Config::from_toml(c).unwrap().validate().unwrap();
    let a = &r.process.activity;
    assert_eq!(a.scope, crate::process::activity::ActivityScope::All);
    assert_eq!(a.watch, vec!["strace".to_string()]);
    assert!(a.outbound("10.9.0.1".parse().unwrap()), "private, outside the pod range");
    assert!(!a.outbound("10.244.0.1".parse().unwrap()), "pod range");
    // what the API watches learn into the span stage's ranges, the process stage sees
    r.spans.scope.learned.set([(crate::scope::RangeKind::Pod, "10.9.0.0/24".parse().unwrap())]);
    assert!(!a.outbound("10.9.0.1".parse().unwrap()), "learned pod range");
    let e = Config::from_toml("[process.activity]\noutbound_scopes = [\"outside\"]\n")
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("outbound_scopes"), "{e}");
}

#[test]
fn a_configured_source_turns_on_the_hold() {
    let c = "[attribution.audit_webhook]\nlisten = \"127.0.0.1:8443\"\nplaintext_loopback = true\n";
    let r = Config::from_toml(c).unwrap().validate().unwrap();
    assert_eq!(r.spans.hold.deadline_ms, 10_000);
    assert_eq!(Config::default().validate().unwrap().spans.hold.deadline_ms, 0);
    // the deadline has one setting: the span stage's own knob is not a config key
    assert!(Config::from_toml("[spans.hold]\ndeadline_ms = 5\n").unwrap_err().to_string().contains("deadline_ms"));
}

#[test]
fn export_settings_and_the_node_name_are_resolved_before_anything_starts() {
    let none = |_: &str| None;
    let e = Config::from_toml("[export]\notlp_endpoint = \"collector:4317\"\n")
        .unwrap()
        .validate_with(none)
        .unwrap_err()
        .to_string();
    assert!(e.contains("export") && e.contains("collector:4317"), "{e}");
    let env = |k: &str| (k == "OTEL_EXPORTER_OTLP_PROTOCOL").then(|| "thrift".to_string());
    let e = Config::from_toml("[export]\notlp_endpoint = \"http://c:4317\"\n").unwrap().validate_with(env);
    assert!(e.unwrap_err().to_string().contains("thrift"));
    let env = |k: &str| (k == "NODE_NAME").then(|| "node-7".to_string());
    let r = Config::default().validate_with(env).unwrap();
    assert_eq!((r.node_name.as_str(), r.export.node_name.as_deref()), ("node-7", Some("node-7")));
    let r = Config::from_toml("[kube]\nnode_name = \"n1\"\n").unwrap().validate_with(env).unwrap();
    assert_eq!(r.node_name, "n1");
    let both = "[kube]\nnode_name = \"n1\"\n[export]\nnode_name = \"n2\"\n";
    assert!(Config::from_toml(both).unwrap().validate_with(env).unwrap_err().to_string().contains("disagree"));
}
