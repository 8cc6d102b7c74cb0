//! Reads struct layouts and enum constants back from the BTF that clang wrote into the
//! compiled BPF object, and compares them with the Rust mirror in `abi.rs`.
//!
//! In: the object's bytes. Out: each named struct's size and its members' offsets and sizes,
//! each enum constant's value (the ABI version, kinds, flags, slot sizes and offsets are enums
//! in `ebpf/podtrail.h` so that they reach BTF), or the list of disagreements. Used by `tests/abi.rs` and by the loader at start-up, so a
//! build whose two sides drifted apart refuses to run instead of misreading events.
//! Only the BTF kinds needed to size struct members are understood; anything else is skipped.

use std::collections::HashMap;

use object::{Object, ObjectSection};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("object file: {0}")]
    Object(#[from] object::Error),
    #[error("object has no .BTF section")]
    NoBtf,
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StructLayout {
    pub size: usize,
    /// (member name, byte offset, byte size)
    pub members: Vec<(String, usize, usize)>,
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
enum Ty {
    Sized(usize),
    Ref(u32),
    Array { elem: u32, n: usize },
    Struct { name: String, size: usize, members: Vec<(String, u32, usize)> },
    Other,
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn u32(&mut self) -> Result<u32, BtfError> {
        let v = self.b.get(self.pos..self.pos + 4).ok_or(BtfError::Malformed("type section ends early"))?;
        self.pos += 4;
        Ok(u32::from_le_bytes([v[0], v[1], v[2], v[3]]))
    }
    fn skip(&mut self, n: usize) {
        self.pos += n;
    }
}

/// Every struct with a name in the object's BTF.
pub fn struct_layouts(obj_bytes: &[u8]) -> Result<HashMap<String, StructLayout>, BtfError> {
    Ok(parse(obj_bytes)?.0)
}

/// Every enum constant in the object's BTF, by name (C enum constants share one namespace).
pub fn enum_values(obj_bytes: &[u8]) -> Result<HashMap<String, i64>, BtfError> {
    Ok(parse(obj_bytes)?.1)
}

type Parsed = (HashMap<String, StructLayout>, HashMap<String, i64>);

fn parse(obj_bytes: &[u8]) -> Result<Parsed, BtfError> {
    let obj = object::File::parse(obj_bytes)?;
    let sec = obj.section_by_name(".BTF").ok_or(BtfError::NoBtf)?;
    let data = sec.data()?;
    let hdr = |o: usize| -> Result<u32, BtfError> {
        let v = data.get(o..o + 4).ok_or(BtfError::Malformed("short header"))?;
        Ok(u32::from_le_bytes([v[0], v[1], v[2], v[3]]))
    };
    let hdr_len = hdr(4)? as usize;
    let (type_off, type_len, str_off, str_len) =
        (hdr(8)? as usize, hdr(12)? as usize, hdr(16)? as usize, hdr(20)? as usize);
    let types =
        data.get(hdr_len + type_off..hdr_len + type_off + type_len).ok_or(BtfError::Malformed("type section"))?;
    let strs = data.get(hdr_len + str_off..hdr_len + str_off + str_len).ok_or(BtfError::Malformed("string section"))?;
    let name = |off: u32| -> String {
        let s = strs.get(off as usize..).unwrap_or(&[]);
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        String::from_utf8_lossy(&s[..end]).into_owned()
    };

    let mut all = vec![Ty::Other]; // type id 0 is void
    let mut enums = HashMap::new();
    let mut r = Reader { b: types, pos: 0 };
    while r.pos < types.len() {
        let name_off = r.u32()?;
        let info = r.u32()?;
        let size_or_type = r.u32()?;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kflag = info >> 31 == 1;
        let ty = match kind {
            KIND_INT => {
                r.skip(4);
                Ty::Sized(size_or_type as usize)
            }
            KIND_PTR => Ty::Sized(8),
            KIND_ARRAY => {
                let elem = r.u32()?;
                let _index = r.u32()?;
                let n = r.u32()? as usize;
                Ty::Array { elem, n }
            }
            KIND_STRUCT | KIND_UNION => {
                let mut members = Vec::with_capacity(vlen);
                for _ in 0..vlen {
                    let m_name = r.u32()?;
                    let m_type = r.u32()?;
                    let m_off = r.u32()?;
                    let bits = if kflag { m_off & 0xffffff } else { m_off };
                    members.push((name(m_name), m_type, bits as usize / 8));
                }
                Ty::Struct { name: name(name_off), size: size_or_type as usize, members }
            }
            KIND_ENUM => {
                for _ in 0..vlen {
                    let (n, v) = (r.u32()?, r.u32()?);
                    // kflag: signed values
                    let v = if kflag { v as i32 as i64 } else { v as i64 };
                    enums.insert(name(n), v);
                }
                Ty::Sized(size_or_type as usize)
            }
            KIND_ENUM64 => {
                for _ in 0..vlen {
                    let (n, lo, hi) = (r.u32()?, r.u32()?, r.u32()?);
                    enums.insert(name(n), ((hi as u64) << 32 | lo as u64) as i64);
                }
                Ty::Sized(size_or_type as usize)
            }
            KIND_FWD | KIND_FUNC => Ty::Other,
            KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => Ty::Ref(size_or_type),
            KIND_FUNC_PROTO => {
                r.skip(8 * vlen);
                Ty::Other
            }
            KIND_VAR => {
                r.skip(4);
                Ty::Other
            }
            KIND_DATASEC => {
                r.skip(12 * vlen);
                Ty::Other
            }
            KIND_FLOAT => Ty::Sized(size_or_type as usize),
            KIND_DECL_TAG => {
                r.skip(4);
                Ty::Other
            }
            _ => return Err(BtfError::Malformed("unknown BTF kind")),
        };
        all.push(ty);
    }

    fn size_of(all: &[Ty], id: u32, depth: usize) -> usize {
        if depth > 32 {
            return 0;
        }
        match all.get(id as usize) {
            Some(Ty::Sized(s)) => *s,
            Some(Ty::Ref(t)) => size_of(all, *t, depth + 1),
            Some(Ty::Array { elem, n }) => n * size_of(all, *elem, depth + 1),
            Some(Ty::Struct { size, .. }) => *size,
            _ => 0,
        }
    }

    let mut out = HashMap::new();
    for ty in &all {
        if let Ty::Struct { name, size, members } = ty {
            if name.is_empty() {
                continue;
            }
            let members = members.iter().map(|(n, t, off)| (n.clone(), *off, size_of(&all, *t, 0))).collect();
            out.insert(name.clone(), StructLayout { size: *size, members });
        }
    }
    Ok((out, enums))
}

/// Compares the Rust mirror (`abi::layouts`, `abi::constants`) with the object's BTF: one
/// line per difference.
pub fn check_abi(obj_bytes: &[u8]) -> Result<Vec<String>, BtfError> {
    let (structs, enums) = parse(obj_bytes)?;
    let mut diffs = compare(&structs, &super::abi::layouts());
    diffs.extend(compare_constants(&enums, &super::abi::constants()));
    Ok(diffs)
}

/// The differences between the object's enum constants and the Rust constants.
pub fn compare_constants(btf: &HashMap<String, i64>, constants: &[(&'static str, i64)]) -> Vec<String> {
    let mut diffs = Vec::new();
    for (name, rust) in constants {
        match btf.get(*name) {
            None => diffs.push(format!("{name}: not an enum constant in the object's BTF")),
            Some(c) if c != rust => diffs.push(format!("{name}: C {c} != Rust {rust}")),
            Some(_) => {}
        }
    }
    // a C constant of podtrail's with no Rust counterpart is drift too
    for name in btf.keys().filter(|n| n.starts_with("PT_")) {
        if !constants.iter().any(|(r, _)| r == name) {
            diffs.push(format!("{name}: in C, not mirrored in src/capture/abi.rs"));
        }
    }
    diffs.sort();
    diffs
}

/// The differences between the object's structs and a set of Rust layouts.
pub fn compare(
    btf: &HashMap<String, StructLayout>,
    layouts: &[(&'static str, usize, Vec<super::abi::FieldLayout>)],
) -> Vec<String> {
    let mut diffs = Vec::new();
    for (cname, size, fields) in layouts {
        let (cname, size) = (*cname, *size);
        let Some(c) = btf.get(cname) else {
            diffs.push(format!("struct {cname} is not in the object's BTF"));
            continue;
        };
        if c.size != size {
            diffs.push(format!("struct {cname}: C size {} != Rust size {size}", c.size));
        }
        if c.members.len() != fields.len() {
            diffs.push(format!("struct {cname}: C has {} fields, Rust {}", c.members.len(), fields.len()));
        }
        for (fname, off, fsize) in fields.iter() {
            match c.members.iter().find(|(n, _, _)| n == fname) {
                None => diffs.push(format!("{cname}.{fname}: no such field in C")),
                Some((_, coff, csize)) => {
                    if coff != off || csize != fsize {
                        diffs.push(format!(
                            "{cname}.{fname}: C offset {coff} size {csize}, Rust offset {off} size {fsize}"
                        ));
                    }
                }
            }
        }
    }
    diffs
}
