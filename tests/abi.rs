//! The kernel/user contract: the Rust mirror (src/capture/abi.rs) must agree, struct by struct
//! and field by field, with the BTF clang wrote into the compiled object from ebpf/podtrail.h.

use podtrail::capture::{abi, btf, loader::BPF_OBJECT};

#[test]
fn rust_mirror_matches_the_objects_btf() {
    let diffs = btf::check_abi(BPF_OBJECT).expect("read BTF from the embedded object");
    assert!(diffs.is_empty(), "ABI drift:\n{}", diffs.join("\n"));
}

#[test]
fn the_btf_reader_sees_the_records_and_their_sizes() {
    let layouts = btf::struct_layouts(BPF_OBJECT).unwrap();
    assert_eq!(layouts["pt_header"].size, 40);
    assert_eq!(layouts["pt_exec"].size, abi::EXEC_VAR_OFF, "exec's variable part starts right after the fixed part");
    let argv_len = layouts["pt_exec"].members.iter().find(|m| m.0 == "argv_len").unwrap();
    assert_eq!((argv_len.1, argv_len.2), (std::mem::offset_of!(abi::Exec, argv_len), 2));
}

#[test]
fn a_drifted_field_is_reported() {
    let layouts = btf::struct_layouts(BPF_OBJECT).unwrap();
    let mut rust = abi::layouts();
    // pretend the Rust side moved `pid` by four bytes and forgot a field
    let header = rust.iter_mut().find(|l| l.0 == "pt_header").unwrap();
    header.2.iter_mut().find(|f| f.0 == "pid").unwrap().1 += 4;
    let exit = rust.iter_mut().find(|l| l.0 == "pt_exit").unwrap();
    exit.2.pop();
    let diffs = btf::compare(&layouts, &rust);
    assert!(diffs.iter().any(|d| d.starts_with("pt_header.pid")), "{diffs:?}");
    assert!(diffs.iter().any(|d| d.starts_with("struct pt_exit: C has 3 fields")), "{diffs:?}");
}

#[test]
fn every_c_constant_reaches_btf_and_matches_the_rust_mirror() {
    let enums = btf::enum_values(BPF_OBJECT).unwrap();
    // the ABI version, a kind, a flag, a slot size and a derived offset: all read from the object
    assert_eq!(enums["PT_ABI_VERSION"], abi::ABI_VERSION as i64);
    assert_eq!(enums["PT_KIND_FILE"], abi::KIND_FILE as i64);
    assert_eq!(enums["PT_EXEC_F_ENV_TRUNCATED"], abi::EXEC_F_ENV_TRUNCATED as i64);
    assert_eq!(enums["PT_ARGV_MAX"], abi::ARGV_MAX as i64);
    assert_eq!(enums["PT_EXEC_VAR_OFF"], abi::EXEC_VAR_OFF as i64);
    assert_eq!(enums["PT_EXEC_MAX_LEN"], abi::EXEC_MAX_LEN as i64);
    let mirrored: Vec<&str> = abi::constants().iter().map(|c| c.0).collect();
    let mut in_c: Vec<&str> = enums.keys().map(String::as_str).filter(|n| n.starts_with("PT_")).collect();
    in_c.sort();
    assert_eq!(in_c.len(), mirrored.len(), "C constants {in_c:?}");
    assert!(btf::compare_constants(&enums, &abi::constants()).is_empty());
}

#[test]
fn a_drifted_constant_is_reported() {
    let enums = btf::enum_values(BPF_OBJECT).unwrap();
    let mut rust = abi::constants();
    // pretend the Rust side bumped the version alone and forgot a flag
    rust.iter_mut().find(|c| c.0 == "PT_ABI_VERSION").unwrap().1 += 1;
    rust.retain(|c| c.0 != "PT_EXEC_F_TTY");
    let diffs = btf::compare_constants(&enums, &rust);
    let drifted = format!("PT_ABI_VERSION: C {} != Rust {}", abi::ABI_VERSION, abi::ABI_VERSION + 1);
    assert!(diffs.iter().any(|d| d.starts_with(&drifted)), "{diffs:?}");
    assert!(diffs.iter().any(|d| d.starts_with("PT_EXEC_F_TTY: in C, not mirrored")), "{diffs:?}");
    assert_eq!(diffs.len(), 2, "{diffs:?}");
}
