//! The segment store against real files: replay, acknowledgement, a torn tail, a damaged
//! segment, the budget, a full disk.

use super::*;
use crate::capture::event::ProcessKey;
use crate::model::SessionId;

fn body(i: u32, session: Option<u32>, root: bool, pad: usize) -> Vec<u8> {
    let mut b = Meta { session: session.map(|p| SessionId(ProcessKey { pid: p, start_ns: 7 })), root }.bytes().to_vec();
    b.extend_from_slice(&i.to_le_bytes());
    b.resize(b.len() + pad, 0xab);
    b
}

fn id(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[META_LEN..META_LEN + 4].try_into().unwrap())
}

fn cfg(dir: &Path, budget: u64) -> StoreConfig {
    StoreConfig::new(dir.to_owned(), budget, Fsync::Batch)
}

fn segs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn unacknowledged_records_are_replayed_oldest_first_and_acknowledged_ones_are_not() {
    let d = tempfile::tempdir().unwrap();
    {
        let (mut s, rec) = SegmentStore::open(cfg(d.path(), 1 << 20)).unwrap();
        assert_eq!(rec.records, 0);
        s.append((0..10).map(|i| body(i, Some(1), false, 10)).collect::<Vec<_>>()).unwrap();
        let got = s.read(4, &mut Evicted::default()).unwrap();
        assert_eq!(got.iter().map(|r| id(&r.body)).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        s.ack(got[3].end).unwrap();
        // read but not acknowledged: in flight when the process dies
        let more = s.read(3, &mut Evicted::default()).unwrap();
        assert_eq!(more.len(), 3);
    }
    let (mut s, rec) = SegmentStore::open(cfg(d.path(), 1 << 20)).unwrap();
    assert_eq!(rec.records, 6, "4 acknowledged, 6 left (3 of them were in flight)");
    s.append(vec![body(100, None, false, 0)]).unwrap();
    let got = s.read(100, &mut Evicted::default()).unwrap();
    assert_eq!(got.iter().map(|r| id(&r.body)).collect::<Vec<_>>(), vec![4, 5, 6, 7, 8, 9, 100]);
    s.ack(got.last().unwrap().end).unwrap();
    assert_eq!(segs(d.path()).len(), 1, "fully acknowledged segments are deleted: {:?}", segs(d.path()));
    drop(s);
    let (_, rec) = SegmentStore::open(cfg(d.path(), 1 << 20)).unwrap();
    assert_eq!(rec.records, 0);
}

#[test]
fn a_torn_tail_record_is_cut_off_and_counted_and_the_rest_replays() {
    let d = tempfile::tempdir().unwrap();
    {
        let (mut s, _) = SegmentStore::open(cfg(d.path(), 1 << 20)).unwrap();
        s.append((0..5).map(|i| body(i, None, false, 20)).collect::<Vec<_>>()).unwrap();
    }
    let seg = segs(d.path()).pop().unwrap();
    let good = fs::metadata(&seg).unwrap().len();
    // a crash mid-write: a header promising 200 bytes, 30 of them written
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&200u32.to_le_bytes()).unwrap();
    f.write_all(&1234u32.to_le_bytes()).unwrap();
    f.write_all(&[7u8; 30]).unwrap();
    drop(f);
    let (mut s, rec) = SegmentStore::open(cfg(d.path(), 1 << 20)).unwrap();
    assert_eq!((rec.torn, rec.records, rec.corrupt.len()), (1, 5, 0));
    assert_eq!(fs::metadata(&seg).unwrap().len(), good, "cut back to the last whole record");
    let got = s.read(100, &mut Evicted::default()).unwrap();
    assert_eq!(got.iter().map(|r| id(&r.body)).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
}

#[test]
fn a_segment_with_a_bad_checksum_is_moved_aside_keeping_its_good_start() {
    let d = tempfile::tempdir().unwrap();
    {
        let (mut s, _) = SegmentStore::open(cfg(d.path(), 1 << 20)).unwrap();
        s.append((0..5).map(|i| body(i, None, false, 20)).collect::<Vec<_>>()).unwrap();
    }
    let seg = segs(d.path()).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    // flip a byte inside the third record's body (records are 8 + 13 + 4 + 20 = 45 bytes)
    let third = HEADER as usize + 2 * 45 + 8 + 15;
    bytes[third] ^= 0xff;
    fs::write(&seg, &bytes).unwrap();
    let (mut s, rec) = SegmentStore::open(cfg(d.path(), 1 << 20)).unwrap();
    assert_eq!((rec.torn, rec.corrupt.len(), rec.records), (0, 1, 2));
    assert!(rec.corrupt[0].starts_with(d.path().join("corrupt")), "{:?}", rec.corrupt);
    assert_eq!(fs::read(&rec.corrupt[0]).unwrap(), bytes, "the damaged file is kept as it was");
    let got = s.read(100, &mut Evicted::default()).unwrap();
    assert_eq!(got.iter().map(|r| id(&r.body)).collect::<Vec<_>>(), vec![0, 1]);

    // garbage where a segment should be (no magic) goes aside whole, and opening still works
    fs::write(d.path().join(format!("{:016x}.seg", 999)), b"not a segment at all").unwrap();
    drop(s);
    let (_, rec) = SegmentStore::open(cfg(d.path(), 1 << 20)).unwrap();
    assert_eq!(rec.corrupt.len(), 1);
}

#[test]
fn over_budget_the_oldest_segments_go_and_their_unread_records_are_reported() {
    let d = tempfile::tempdir().unwrap();
    let budget = 512 << 10; // segments of 64 KiB
    let (mut s, _) = SegmentStore::open(cfg(d.path(), budget)).unwrap();
    let mut evicted = Vec::new();
    let mut segments = 0;
    // 2 000 batches of 10 records of ~1 KiB: about 20 MiB through a 512 KiB budget
    for b in 0..2000u32 {
        let batch: Vec<Vec<u8>> = (0..10).map(|i| body(b * 10 + i, Some(b % 7), i == 9, 1000)).collect();
        let ev = s.append(batch).unwrap();
        segments += ev.segments;
        evicted.extend(ev.unread);
        assert!(s.bytes() <= budget, "{} bytes over a budget of {budget}", s.bytes());
    }
    let on_disk: u64 = segs(d.path()).iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    assert_eq!(on_disk, s.bytes());
    assert!(segments > 100, "{segments} segments evicted");
    let kept = s.unread();
    assert_eq!(evicted.len() as u64 + kept, 20_000, "every record is either kept or reported lost");
    assert_eq!(evicted.iter().filter(|m| m.root).count() as u64, evicted.len() as u64 / 10);
    assert!(evicted.iter().all(|m| m.session.is_some()));
    // what is left is the newest, in order
    let got = s.read(usize::MAX, &mut Evicted::default()).unwrap();
    assert_eq!(got.len() as u64, kept);
    let ids: Vec<u32> = got.iter().map(|r| id(&r.body)).collect();
    assert_eq!(*ids.last().unwrap(), 19_999);
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "contiguous, oldest first");
    assert_eq!(ids[0] as usize, evicted.len());
}

#[test]
fn a_batch_larger_than_the_budget_is_refused_not_half_written() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = SegmentStore::open(cfg(d.path(), 64 << 10)).unwrap();
    let big: Vec<Vec<u8>> = (0..100).map(|i| body(i, None, false, 1000)).collect();
    assert!(matches!(s.append(big), Err(StoreError::TooLarge(..))));
    assert_eq!(s.unread(), 0);
    s.append(vec![body(1, None, false, 10)]).unwrap();
    assert_eq!(s.read(10, &mut Evicted::default()).unwrap().len(), 1);
}

/// A real full file system: a 256 KiB tmpfs (root, as CI is).
#[test]
fn a_full_disk_fails_the_batch_and_leaves_the_segment_whole() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "this test mounts a tmpfs to fill a real file system: run it as root (CI does)"
    );
    let d = tempfile::tempdir().unwrap();
    let mnt = d.path().join("small");
    fs::create_dir(&mnt).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "podtrail-test", mnt.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success(), "mount a tmpfs at {}", mnt.display());
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Umount(mnt.clone());
    let (mut s, _) = SegmentStore::open(cfg(&mnt, 64 << 20)).unwrap();
    let mut failed = None;
    let mut written = 0u32;
    for b in 0..1000u32 {
        match s.append((0..4).map(|i| body(b * 4 + i, None, false, 4000)).collect::<Vec<_>>()) {
            Ok(_) => written += 4,
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let e = failed.expect("a 256 KiB file system fills up");
    assert!(matches!(e, StoreError::Io { .. }), "{e}");
    assert!(e.to_string().contains("No space left"), "{e}");
    assert_eq!(s.unread(), written as u64);
    // what was written before is whole and readable, in order, and the store still works
    let got = s.read(usize::MAX, &mut Evicted::default()).unwrap();
    assert_eq!(got.len() as u32, written);
    s.ack(got.last().unwrap().end).unwrap();
    s.append(vec![body(77, None, false, 10)]).unwrap();
    let got = s.read(10, &mut Evicted::default()).unwrap();
    assert_eq!(got.iter().map(|r| id(&r.body)).collect::<Vec<_>>(), vec![77]);
    drop(s);
    let (_, rec) = SegmentStore::open(cfg(&mnt, 64 << 20)).unwrap();
    assert_eq!((rec.torn, rec.corrupt.len(), rec.records), (0, 0, 1));
}

fn read_all(s: &mut SegmentStore) -> Vec<Record> {
    s.read(usize::MAX, &mut Evicted::default()).unwrap()
}

/// Records this run wrote come back from memory while they fit its share, the others from
/// their file, in order, with the same bytes and positions as a store that keeps nothing
/// reads; room freed by reading is used by the next writes.
#[test]
fn written_records_come_from_memory_within_its_share_and_from_the_file_beyond() {
    let d = tempfile::tempdir().unwrap();
    let rec_len = META_LEN + 4 + 100;
    let c = StoreConfig { kept: 2 * rec_len, ..cfg(d.path(), 1 << 20) };
    let (mut s, _) = SegmentStore::open(c.clone()).unwrap();
    s.append((0..4).map(|i| body(i, None, false, 100)).collect()).unwrap();
    assert_eq!(s.kept.bytes(), 2 * rec_len, "0 and 1 kept, 2 and 3 only in the file");
    let first = s.read(1, &mut Evicted::default()).unwrap();
    assert_eq!((id(&first[0].body), first[0].kept), (0, true));
    s.append((4..6).map(|i| body(i, None, false, 100)).collect()).unwrap();
    let rest = read_all(&mut s);
    let got: Vec<(u32, bool)> = rest.iter().map(|r| (id(&r.body), r.kept)).collect();
    assert_eq!(got, vec![(1, true), (2, false), (3, false), (4, true), (5, false)]);
    assert_eq!((s.unread(), s.kept.bytes()), (0, 0));
    let ours: Vec<(Vec<u8>, Pos)> = first.into_iter().chain(rest).map(|r| (r.body, r.end)).collect();
    // the same file read by a store that keeps nothing
    let (mut plain, rec) = SegmentStore::open(StoreConfig { kept: 0, ..c }).unwrap();
    assert_eq!(rec.records, 6);
    let theirs: Vec<(Vec<u8>, Pos)> = read_all(&mut plain).into_iter().map(|r| (r.body, r.end)).collect();
    assert_eq!(ours, theirs);
}

/// A byte changed in a segment after the write: a kept record is sent as this process wrote
/// it (the file's copy is not read), and a record read from its file is checked against its
/// checksum there (the segment goes aside), as at a restart.
#[test]
fn a_record_changed_on_disk_after_the_write_never_reaches_the_reader() {
    for kept in [KEPT_MAX, 0] {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _) = SegmentStore::open(StoreConfig { kept, ..cfg(d.path(), 1 << 20) }).unwrap();
        let written: Vec<Vec<u8>> = (0..3).map(|i| body(i, None, false, 20)).collect();
        s.append(written.clone()).unwrap();
        let seg = segs(d.path()).pop().unwrap();
        let mut bytes = fs::read(&seg).unwrap();
        bytes[HEADER as usize + 45 + 8 + 15] ^= 0xff; // inside the second record's body
        fs::write(&seg, &bytes).unwrap();
        let mut ev = Evicted::default();
        let got = s.read(usize::MAX, &mut ev).unwrap();
        if kept > 0 {
            assert!(got.iter().all(|r| r.kept));
            assert_eq!(got.into_iter().map(|r| r.body).collect::<Vec<_>>(), written);
            assert!(ev.corrupt.is_empty());
        } else {
            assert_eq!(got.iter().map(|r| (id(&r.body), r.kept)).collect::<Vec<_>>(), vec![(0, false)]);
            assert_eq!(ev.corrupt.len(), 1, "moved aside");
        }
    }
}
