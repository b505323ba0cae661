use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

use super::*;

const DAY: Duration = Duration::from_secs(86_400);

fn limits() -> SpoolLimits {
    SpoolLimits::new(1 << 30, 365 * 100 * DAY)
}

fn small_segments(segment_bytes: u64) -> SpoolLimits {
    SpoolLimits {
        segment_bytes,
        ..limits()
    }
}

/// Deterministic, so a child process and its parent build the same entries. Payloads are binary
/// (every byte value, NULs included) and vary in length.
fn entry(i: u64) -> Entry {
    let mut payload: Vec<u8> = (0..=255u8)
        .cycle()
        .skip(i as usize)
        .take(20 + i as usize % 13)
        .collect();
    payload.push(0);
    Entry {
        topic: format!("helmetd/gw1/cam{}/alert", i % 3),
        payload,
        properties: BTreeMap::from([
            ("content-type".to_owned(), "application/json".to_owned()),
            ("seq".to_owned(), i.to_string()),
        ]),
        retain: i.is_multiple_of(2),
        created: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_000 + i * 1_000_003),
    }
}

fn open(dir: &Path, limits: SpoolLimits) -> Spool {
    Spool::open(dir, limits, FsyncPolicy::EveryRecord).unwrap()
}

fn ids(spool: &Spool) -> Vec<u64> {
    spool
        .peek(usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

fn assert_entries(spool: &Spool, expected: impl IntoIterator<Item = u64>) {
    let got = spool.peek(usize::MAX).unwrap();
    let want: Vec<(u64, Entry)> = expected.into_iter().map(|i| (i, entry(i))).collect();
    assert_eq!(got, want);
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// Start offsets of the records in a segment file's bytes.
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        offsets.push(at);
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        at += record::HEADER_LEN + len as usize;
    }
    offsets
}

#[test]
fn spool_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Spool>();
}

#[test]
fn push_peek_ack_in_order() {
    let dir = TempDir::new().unwrap();
    let mut spool = open(dir.path(), limits());
    assert!(spool.is_empty());
    for i in 1..=5 {
        assert_eq!(spool.push(&entry(i)).unwrap(), i);
    }
    assert_entries(&spool, 1..=5);
    assert_eq!(ids(&spool)[..2], [1, 2]);
    assert_eq!(spool.peek(2).unwrap().len(), 2);
    let all_bytes = spool.bytes();

    spool.ack(2).unwrap();
    assert_entries(&spool, 3..=5);
    assert_eq!(spool.len(), 3);
    assert!(spool.bytes() < all_bytes);
    assert_eq!(
        spool
            .peek_after(3, 10)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect::<Vec<_>>(),
        [4, 5]
    );

    spool.ack(1).unwrap();
    assert_eq!(spool.len(), 3, "an ack behind the position changes nothing");
    assert!(matches!(
        spool.ack(6),
        Err(SpoolError::AckBeyondEnd {
            id: 6,
            newest: 5,
            ..
        })
    ));
    assert_eq!(spool.len(), 3);

    spool.ack(5).unwrap();
    assert!(spool.is_empty());
    assert_eq!(spool.bytes(), 0);
    assert!(spool.peek(10).unwrap().is_empty());
}

#[test]
fn reopen_keeps_unacked_entries_and_ack_position() {
    let dir = TempDir::new().unwrap();
    let mut spool = open(dir.path(), limits());
    for i in 1..=5 {
        spool.push(&entry(i)).unwrap();
    }
    spool.ack(2).unwrap();
    drop(spool);

    let mut spool = open(dir.path(), limits());
    assert_entries(&spool, 3..=5);
    assert_eq!(spool.push(&entry(6)).unwrap(), 6);
    drop(spool);

    let spool = open(dir.path(), limits());
    assert_entries(&spool, 3..=6);
    assert_eq!(spool.stats().corrupt_records, 0);
}

#[test]
fn ids_keep_increasing_after_everything_is_acked_and_reclaimed() {
    let dir = TempDir::new().unwrap();
    let mut spool = open(dir.path(), small_segments(200));
    for i in 1..=10 {
        spool.push(&entry(i)).unwrap();
    }
    spool.ack(10).unwrap();
    drop(spool);

    let mut spool = open(dir.path(), small_segments(200));
    assert!(spool.is_empty());
    assert_eq!(spool.push(&entry(11)).unwrap(), 11);
    spool.ack(11).unwrap();
    drop(spool);

    // Without the cursor, the newest segment's name and records still carry the ids.
    fs::remove_file(dir.path().join("cursor")).unwrap();
    let mut spool = open(dir.path(), small_segments(200));
    assert!(spool.push(&entry(12)).unwrap() > 11);
}

#[test]
fn torn_tail_at_every_offset_keeps_complete_records() {
    let pristine = TempDir::new().unwrap();
    let mut spool = open(pristine.path(), limits());
    for i in 1..=3 {
        spool.push(&entry(i)).unwrap();
    }
    drop(spool);
    let [segment] = &segment_files(pristine.path())[..] else {
        panic!("expected one segment");
    };
    let bytes = fs::read(segment).unwrap();
    let last_start = record_offsets(&bytes)[2];

    for cut in last_start..=bytes.len() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join(segment.file_name().unwrap());
        fs::write(&path, &bytes[..cut]).unwrap();

        let mut spool = open(dir.path(), limits());
        let complete = if cut == bytes.len() { 3 } else { 2 };
        assert_entries(&spool, 1..=complete);
        assert_eq!(spool.stats().corrupt_records, 0, "cut at {cut}");
        let expected_len = if cut == bytes.len() { cut } else { last_start };
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            expected_len as u64,
            "cut at {cut}"
        );

        let id = spool.push(&entry(complete + 1)).unwrap();
        assert_eq!(id, complete + 1, "cut at {cut}");
        drop(spool);
        assert_entries(&open(dir.path(), limits()), 1..=complete + 1);
    }

    // A complete-length record with a bad CRC at the very end is an interrupted write as well.
    let dir = TempDir::new().unwrap();
    let mut damaged = bytes.clone();
    *damaged.last_mut().unwrap() ^= 0xff;
    fs::write(dir.path().join(segment.file_name().unwrap()), &damaged).unwrap();
    let spool = open(dir.path(), limits());
    assert_entries(&spool, 1..=2);
    assert_eq!(spool.stats().corrupt_records, 0);
}

#[test]
fn damaged_record_mid_segment_skips_only_the_rest_of_that_segment() {
    for damage_length_field in [false, true] {
        let dir = TempDir::new().unwrap();
        let limits = small_segments(500);
        let mut spool = open(dir.path(), limits);
        for i in 1..=12 {
            spool.push(&entry(i)).unwrap();
        }
        drop(spool);
        let files = segment_files(dir.path());
        assert!(files.len() >= 3, "{files:?}");
        let mut bytes = fs::read(&files[0]).unwrap();
        let offsets = record_offsets(&bytes);
        assert!(offsets.len() >= 3);
        if damage_length_field {
            bytes[offsets[1]..offsets[1] + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        } else {
            bytes[offsets[1] + record::HEADER_LEN + 5] ^= 0x01;
        }
        fs::write(&files[0], &bytes).unwrap();
        let first_of_second = fs::read(&files[1]).unwrap();
        let second_id = u64::from_le_bytes(first_of_second[8..16].try_into().unwrap());

        let mut spool = open(dir.path(), limits);
        assert_eq!(spool.stats().corrupt_records, 1);
        assert_entries(&spool, std::iter::once(1).chain(second_id..=12));
        assert_eq!(
            fs::read(&files[0]).unwrap(),
            bytes,
            "older segments are not rewritten"
        );
        assert_eq!(spool.push(&entry(13)).unwrap(), 13);
    }
}

#[test]
fn damage_after_open_is_reported_by_peek_and_skipped_by_ack() {
    let dir = TempDir::new().unwrap();
    let mut spool = open(dir.path(), limits());
    for i in 1..=3 {
        spool.push(&entry(i)).unwrap();
    }
    let [segment] = &segment_files(dir.path())[..] else {
        panic!("expected one segment");
    };
    let mut bytes = fs::read(segment).unwrap();
    let second = record_offsets(&bytes)[1];
    bytes[second + record::HEADER_LEN] ^= 0x80;
    fs::write(segment, &bytes).unwrap();

    assert_eq!(spool.peek(1).unwrap(), [(1, entry(1))]);
    assert!(matches!(
        spool.peek(3),
        Err(SpoolError::Corrupt { id: 2, .. })
    ));
    spool.ack(2).unwrap();
    assert_entries(&spool, [3]);
}

#[test]
fn size_bound_drops_oldest_and_counts() {
    let dir = TempDir::new().unwrap();
    let one = record::encode(1, &entry(1)).unwrap().len() as u64;
    // Entries 1..=8 differ in size by a few bytes; room for about four of them.
    let limits = SpoolLimits {
        max_bytes: 4 * one + 10,
        ..small_segments(3 * one)
    };
    let mut spool = open(dir.path(), limits);
    for i in 1..=8 {
        spool.push(&entry(i)).unwrap();
        assert!(spool.bytes() <= limits.max_bytes);
    }
    let kept = ids(&spool);
    assert_eq!(*kept.last().unwrap(), 8);
    assert_eq!(
        kept,
        (kept[0]..=8).collect::<Vec<_>>(),
        "a contiguous newest tail"
    );
    assert_eq!(spool.dropped_oldest(), kept[0] - 1);
    assert_eq!(spool.stats().dropped_full, kept[0] - 1);
    assert_entries(&spool, kept[0]..=8);
    // Dropped entries are reclaimed like acked ones: only segments holding kept entries remain
    // (plus the newest, always kept).
    assert!(spool.stats().disk_bytes <= limits.max_bytes + limits.segment_bytes + one);

    // An entry bigger than the whole bound is still stored, alone.
    let mut big = entry(9);
    big.payload = vec![7; limits.max_bytes as usize * 2];
    let id = spool.push(&big).unwrap();
    assert_eq!(ids(&spool), [id]);
    assert_eq!(spool.dropped_oldest(), 8);
    drop(spool);

    let spool = open(dir.path(), limits);
    assert_eq!(spool.peek(10).unwrap(), [(id, big)]);
}

#[test]
fn age_bound_drops_expired_entries_on_push_and_on_open() {
    let dir = TempDir::new().unwrap();
    let hour = Duration::from_secs(3600);
    let aged = |i: u64, age: Duration| Entry {
        created: SystemTime::now() - age,
        ..entry(i)
    };
    let mut spool = open(dir.path(), limits());
    for i in 1..=3 {
        spool.push(&aged(i, 2 * hour)).unwrap();
    }
    spool.push(&aged(4, Duration::ZERO)).unwrap();
    drop(spool);

    let strict = SpoolLimits::new(1 << 30, hour);
    let mut spool = open(dir.path(), strict);
    assert_eq!(ids(&spool), [4], "expired on open");
    assert_eq!(spool.stats().dropped_expired, 3);

    spool.ack(4).unwrap();
    spool.push(&aged(5, 2 * hour)).unwrap();
    spool.push(&aged(6, Duration::ZERO)).unwrap();
    assert_eq!(ids(&spool), [6], "expired on push");
    assert_eq!(spool.dropped_oldest(), 4);
    drop(spool);

    assert_eq!(
        ids(&open(dir.path(), strict)),
        [6],
        "the drop moved the saved position"
    );
}

#[test]
fn segments_roll_over_and_fully_acked_ones_are_deleted() {
    let dir = TempDir::new().unwrap();
    let limits = small_segments(500);
    let mut spool = open(dir.path(), limits);
    for i in 1..=12 {
        spool.push(&entry(i)).unwrap();
    }
    let files = segment_files(dir.path());
    assert!(files.len() >= 4, "{files:?}");
    assert_eq!(spool.stats().segments, files.len());
    for file in &files {
        assert!(fs::metadata(file).unwrap().len() <= limits.segment_bytes);
    }
    let first_ids: Vec<u64> = files
        .iter()
        .map(|f| segment::parse_file_name(f.file_name().unwrap().to_str().unwrap()).unwrap())
        .collect();

    // Acking up to the second segment's first id frees the first segment only.
    spool.ack(first_ids[1]).unwrap();
    assert_eq!(segment_files(dir.path()), files[1..]);
    spool.ack(first_ids[2] - 1).unwrap();
    assert_eq!(segment_files(dir.path()), files[2..]);

    spool.ack(12).unwrap();
    assert_eq!(
        segment_files(dir.path()),
        files[files.len() - 1..],
        "the newest stays"
    );
    assert_eq!(spool.stats().segments, 1);
    assert!(spool.is_empty());
}

#[test]
fn entries_survive_a_crash_without_drop_under_every_policy() {
    for policy in [
        FsyncPolicy::EveryRecord,
        FsyncPolicy::Interval(Duration::from_secs(3600)),
        FsyncPolicy::Never,
    ] {
        let dir = TempDir::new().unwrap();
        let mut spool = Spool::open(dir.path(), small_segments(500), policy).unwrap();
        for i in 1..=20 {
            spool.push(&entry(i)).unwrap();
        }
        std::mem::forget(spool);

        let spool = Spool::open(dir.path(), small_segments(500), policy).unwrap();
        assert_entries(&spool, 1..=20);
        assert_eq!(spool.stats().corrupt_records, 0, "{policy:?}");
    }
}

#[test]
fn garbage_in_the_directory_and_a_damaged_cursor_are_survived() {
    let dir = TempDir::new().unwrap();
    let mut spool = open(dir.path(), limits());
    for i in 1..=3 {
        spool.push(&entry(i)).unwrap();
    }
    spool.ack(1).unwrap();
    drop(spool);
    fs::write(dir.path().join("notes.txt"), "hello").unwrap();
    fs::write(dir.path().join("123.seg"), "short name").unwrap();
    fs::write(dir.path().join("0000000000000000000x.seg"), "not digits").unwrap();
    fs::write(dir.path().join("99999999999999999999.seg"), "beyond u64").unwrap();
    fs::create_dir(dir.path().join("00000000000000000050.seg")).unwrap();
    fs::write(dir.path().join("cursor.tmp"), "left over").unwrap();
    fs::write(dir.path().join("cursor"), "garbage").unwrap();

    // The position is lost, so entry 1 comes back: a duplicate, which is allowed.
    let mut spool = open(dir.path(), limits());
    assert_entries(&spool, 1..=3);
    assert_eq!(spool.stats().corrupt_records, 0);
    assert_eq!(spool.push(&entry(4)).unwrap(), 4);
}

const CHILD_DIR_ENV: &str = "HELMETD_SPOOL_TEST_CHILD_DIR";

/// The real thing: a separate process pushes and is SIGKILLed midway (like `kill -9`: no
/// destructors, no flushing), then every id it printed as returned must be in the spool.
#[test]
fn killed_process_loses_no_returned_entry() {
    if let Some(dir) = std::env::var_os(CHILD_DIR_ENV) {
        push_until_killed(Path::new(&dir));
    }
    use std::os::unix::process::ExitStatusExt;

    let dir = TempDir::new().unwrap();
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "spool::tests::killed_process_loses_no_returned_entry",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir.path())
        .output()
        .unwrap();
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGKILL),
        "child: {output:?}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("pushed "))
        .map(|id| id.parse::<u64>().unwrap())
        .next_back()
        .unwrap();
    assert_eq!(last, 30);

    let spool = open(dir.path(), small_segments(600));
    let got = spool.peek(usize::MAX).unwrap();
    assert!(got.len() >= last as usize);
    assert_eq!(
        got[..last as usize],
        (1..=last).map(|i| (i, entry(i))).collect::<Vec<_>>()
    );
}

fn push_until_killed(dir: &Path) -> ! {
    let mut spool = open(dir, small_segments(600));
    for i in 1..=50 {
        let id = spool.push(&entry(i)).unwrap();
        println!("pushed {id}");
        if i == 30 {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    }
    std::process::abort()
}

/// Pushes entries from `first` on until the disk refuses one (bounded); returns the id of the
/// last one stored.
fn push_until_full(spool: &mut Spool, first: u64) -> u64 {
    for i in first..first + 100_000 {
        match spool.push(&entry(i)) {
            Ok(id) => assert_eq!(id, i),
            Err(_) => return i - 1,
        }
    }
    panic!("the disk never filled up");
}

#[test]
fn full_disk_fails_pushes_without_new_segments_and_recovers() {
    let disk = helmetd_e2e::tmpfs::Tmpfs::mount(256 << 10).unwrap();
    let dir = disk.path().join("spool");
    let mut spool = open(&dir, limits());
    assert_eq!(spool.push(&entry(1)).unwrap(), 1);
    disk.fill().unwrap();
    // The active segment can still grow within its last page.
    let stored = push_until_full(&mut spool, 2);

    for i in 0..50 {
        assert!(
            spool.push(&entry(1000 + i)).is_err(),
            "push {i} on a full disk"
        );
    }
    assert_eq!(
        segment_files(&dir).len(),
        1,
        "failed writes must not leave segments behind: {:?}",
        segment_files(&dir)
    );
    assert_eq!(spool.stats().write_failures, 51);
    assert_entries(&spool, 1..=stored);

    disk.free().unwrap();
    // Writes are retried on a schedule, not per push: the first try after it succeeds.
    let mut next = None;
    for _ in 0..300 {
        match spool.push(&entry(stored + 1)) {
            Ok(id) => {
                next = Some(id);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    assert_eq!(next, Some(stored + 1), "ids continue without a gap");
    assert_entries(&spool, 1..=stored + 1);
    drop(spool);
    let spool = open(&dir, limits());
    assert_entries(&spool, 1..=stored + 1);
    assert_eq!(spool.stats().corrupt_records, 0);
}

#[test]
fn failed_write_does_not_drop_entries_to_make_room() {
    let disk = helmetd_e2e::tmpfs::Tmpfs::mount(256 << 10).unwrap();
    let dir = disk.path().join("spool");
    let one = record::encode(1, &entry(1)).unwrap().len() as u64;
    // Room for about three entries: every push beyond that drops the oldest first.
    let mut spool = open(
        &dir,
        SpoolLimits {
            max_bytes: 3 * one + one / 2,
            ..limits()
        },
    );
    for i in 1..=3 {
        spool.push(&entry(i)).unwrap();
    }
    disk.fill().unwrap();
    for i in 4..100_000 {
        let kept = spool.peek(usize::MAX).unwrap();
        let dropped = spool.stats().dropped_full;
        if spool.push(&entry(i)).is_err() {
            assert_eq!(kept.len(), 3);
            assert_eq!(
                spool.peek(usize::MAX).unwrap(),
                kept,
                "a failed push drops nothing"
            );
            assert_eq!(spool.stats().dropped_full, dropped);
            return;
        }
    }
    panic!("the disk never filled up");
}

/// A valid record for `id` in a segment file named after `first_id`.
fn craft_segment(dir: &Path, first_id: u64, ids: impl IntoIterator<Item = u64>) -> PathBuf {
    let path = dir.join(segment::file_name(first_id));
    let mut bytes = Vec::new();
    for id in ids {
        bytes.extend(record::encode(id, &entry(id % 7)).unwrap());
    }
    fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn segment_names_near_u64_max_are_quarantined_not_wrapped() {
    for first_id in [u64::MAX, u64::MAX - 2, MAX_ID + 1] {
        let dir = TempDir::new().unwrap();
        let mut spool = open(dir.path(), limits());
        for i in 1..=3 {
            spool.push(&entry(i)).unwrap();
        }
        drop(spool);
        let ids = first_id..=first_id.saturating_add(2);
        let crafted = craft_segment(dir.path(), first_id, ids);

        let mut spool = open(dir.path(), limits());
        assert_entries(&spool, 1..=3);
        assert_eq!(spool.stats().quarantined_segments, 1, "{first_id}");
        assert!(
            !crafted.exists(),
            "{first_id}: the crafted segment stays in place"
        );
        assert_eq!(spool.push(&entry(4)).unwrap(), 4, "{first_id}");
        spool.ack(4).unwrap();
        assert!(spool.is_empty());
        drop(spool);

        // Set aside once, not found again.
        let spool = open(dir.path(), limits());
        assert_eq!(spool.stats().quarantined_segments, 0);
        assert!(spool.is_empty());
    }
}

#[test]
fn ids_stop_at_the_bound_instead_of_wrapping() {
    let dir = TempDir::new().unwrap();
    craft_segment(dir.path(), MAX_ID - 1, [MAX_ID - 1, MAX_ID]);
    let mut spool = open(dir.path(), limits());
    assert_eq!(ids(&spool), [MAX_ID - 1, MAX_ID]);
    assert!(matches!(
        spool.push(&entry(1)),
        Err(SpoolError::IdsExhausted { .. })
    ));
    spool.ack(MAX_ID).unwrap();
    assert!(spool.is_empty());
}

#[test]
fn cursor_near_u64_max_counts_as_damaged() {
    let dir = TempDir::new().unwrap();
    let mut spool = open(dir.path(), limits());
    for i in 1..=3 {
        spool.push(&entry(i)).unwrap();
    }
    drop(spool);
    let id = (u64::MAX - 1).to_le_bytes();
    let mut cursor = id.to_vec();
    cursor.extend(crc32fast::hash(&id).to_le_bytes());
    fs::write(dir.path().join("cursor"), cursor).unwrap();

    let mut spool = open(dir.path(), limits());
    // A damaged position re-sends from the oldest segment, as for any other damage.
    assert_entries(&spool, 1..=3);
    assert_eq!(spool.push(&entry(4)).unwrap(), 4);
    spool.ack(4).unwrap();
}

#[test]
fn oversize_or_special_cursor_counts_as_damaged() {
    let dir = TempDir::new().unwrap();
    let mut spool = open(dir.path(), limits());
    for i in 1..=3 {
        spool.push(&entry(i)).unwrap();
    }
    spool.ack(1).unwrap();
    drop(spool);
    let path = dir.path().join("cursor");
    let mut oversize = fs::read(&path).unwrap();
    oversize.resize(1 << 20, 0);
    fs::write(&path, &oversize).unwrap();
    assert_entries(&open(dir.path(), limits()), 1..=3);

    // A FIFO would block an open for reading until a writer came: it must not be opened so.
    fs::remove_file(&path).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    let (tx, rx) = std::sync::mpsc::channel();
    let opening = dir.path().to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(Spool::open(&opening, limits(), FsyncPolicy::Never).map(|s| ids(&s)));
    });
    let opened = rx.recv_timeout(Duration::from_secs(30));
    if opened.is_err() {
        // Unblocks the stuck open so the thread ends.
        let _ = fs::OpenOptions::new().write(true).open(&path);
    }
    assert_eq!(opened.expect("open hung on the cursor").unwrap(), [1, 2, 3]);
}

#[test]
fn parse_functions_take_bytes() {
    let mut bytes = Vec::new();
    for id in 5..=7 {
        bytes.extend(record::encode(id, &entry(id)).unwrap());
    }
    let whole = bytes.len() as u64;
    bytes.extend_from_slice(&[1, 2, 3]);
    let parsed = parse_segment(5, &bytes).unwrap();
    assert_eq!(parsed.records, 3);
    assert_eq!(parsed.valid_bytes, whole);
    assert!(parsed.damaged);
    assert!(parse_segment(MAX_ID + 1, &bytes).is_err());

    let id = 42u64.to_le_bytes();
    let mut cursor = id.to_vec();
    cursor.extend(crc32fast::hash(&id).to_le_bytes());
    assert_eq!(parse_cursor(&cursor), Some(42));
    assert_eq!(parse_cursor(&cursor[..11]), None);
    cursor[0] ^= 1;
    assert_eq!(parse_cursor(&cursor), None);
}
