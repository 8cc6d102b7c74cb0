//! Each field of the rule language on a recorded session: one rule per field, and where it
//! fired (docs/rules.md lists the fields).

mod support;

use podtrail::capture::event::{FileOp, Transport};
use podtrail::model::*;
use support::rules::*;
use support::sessions::*;

const RULES: &str = r#"
- name: by-parent
  severity: low
  description: a process whose parent is env
  on: exec
  match:
    parent.name: env
- name: by-ancestor
  severity: low
  description: anything under a shell started by the root
  on: exec
  match:
    ancestor.name: {prefix: "s"}
    process.name: ls
- name: by-cmdline
  severity: low
  description: regex over the command line
  on: exec
  match:
    process.cmdline: {regex: "^tar c.*/etc$"}
- name: by-args
  severity: low
  description: an argument (not argv[0]) with a prefix
  on: exec
  match:
    process.args: {prefix: "http://10.244."}
- name: by-exe-glob-and-uid
  severity: low
  description: the binary by path glob and the effective uid
  on: exec
  match:
    process.exe: {glob: "/usr/bin/e*"}
    process.uid: 0
- name: by-identity
  severity: info
  description: alice, from her network, in the billing namespace, group sre
  on: exec
  match:
    process.session_root: true
    user.name: alice@example.com
    user.groups: sre
    client.address: 203.0.113.0/24
    k8s.namespace: billing
    k8s.pod: {prefix: api-}
    k8s.container: api
    k8s.workload: api
    container.id: {prefix: "0123"}
    session.kind: exec
    session.attributed: true
- name: by-connect
  severity: medium
  description: tcp to a port range in a range
  on: connect
  match:
    connect.transport: tcp
    connect.address: 10.244.0.0/16
    connect.port: "8000-8999"
- name: by-connect-unless
  severity: medium
  description: any udp unless it is DNS
  on: connect
  match:
    connect.transport: udp
  unless:
    connect.port: 53
"#;

#[test]
fn every_field_matches_where_it_should() {
    let spans = Run { who: Some(alice()), rules: Some(RULES), ..Run::default() }.spans(shell_session());
    let mut got = fired(&spans);
    got.sort();
    let mut want: Vec<(String, String)> = [
        ("env", "by-exe-glob-and-uid"),
        ("ls", "by-ancestor"),
        ("tar", "by-cmdline"),
        ("wget", "by-args"),
        ("connect 10.244.1.5:8080", "by-connect"),
        ("kubectl exec", "by-identity"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    want.sort();
    // by-identity: the root process's span is named after its command (sh)
    let want: Vec<_> =
        want.into_iter().map(|(s, r)| if r == "by-identity" { ("sh".to_string(), r) } else { (s, r) }).collect();
    let mut want = want;
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn identity_fields_do_not_match_an_unattributed_session() {
    let spans = Run { rules: Some(RULES), ..Run::default() }.spans(shell_session());
    assert!(!fired(&spans).iter().any(|(_, r)| r == "by-identity"), "{:?}", fired(&spans));
}

#[test]
fn file_fields_and_failed_operations() {
    const FILE_RULES: &str = r#"
- name: chmod-ssh
  severity: high
  description: a change of mode under .ssh that worked
  on: file
  match:
    file.op: chmod
    file.path: {glob: "*/.ssh/*"}
    file.failed: false
- name: denied-write
  severity: low
  description: a write that was refused
  on: file
  match:
    file.write: true
    file.failed: true
"#;
    let i = info(100, SessionKind::Exec, 10 * S, None);
    let mut img = image(0, 10 * S, "/bin/busybox", &["sh"]);
    let mut denied = file(11 * S, FileOp::Open, "/etc/passwd", None, true, O_WRONLY);
    denied.result = -13;
    let mut chmod_failed = file(12 * S, FileOp::Chmod, "/root/.ssh/authorized_keys", None, false, 0o600);
    chmod_failed.result = -1;
    img.files =
        vec![denied, file(12 * S, FileOp::Chmod, "/root/.ssh/authorized_keys", None, false, 0o600), chmod_failed];
    img.connects = vec![connect(13 * S, Transport::Udp, "10.0.0.1", 514, ConnectOutcome::Connected, None, true)];
    let mut end = i.clone();
    end.end_ns = Some(20 * S);
    let updates = vec![
        SessionUpdate::Started(i.into()),
        SessionUpdate::Ended(end.into(), vec![process(100, None, 10 * S, 20 * S, 0, vec![img])]),
    ];
    let spans = Run { rules: Some(FILE_RULES), ..Run::default() }.spans(updates);
    let got: Vec<String> = fired(&spans).into_iter().map(|(_, r)| r).collect();
    assert_eq!(got, ["denied-write", "chmod-ssh"]);
    let sh = spans.iter().find(|s| s.name == "sh").unwrap();
    let errors: Vec<String> = sh
        .events
        .iter()
        .filter(|e| e.name.starts_with("file "))
        .flat_map(|e| {
            e.attributes.iter().filter(|kv| kv.key.as_str() == "podtrail.file.error").map(|kv| kv.value.to_string())
        })
        .collect();
    assert_eq!(errors, ["EACCES", "EPERM"], "failed operations say why");
}
