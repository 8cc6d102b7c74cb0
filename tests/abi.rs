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
    assert_eq!(
        layouts["pt_exec"].size,
        abi::EXEC_FILENAME_OFF,
        "exec's variable part starts right after the fixed part"
    );
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
