use super::*;

/// `docker pull busybox` with stdout a pipe (docker 28.2): status lines only.
const PIPE: &str = "latest: Pulling from library/busybox\n\
a3ed95caeb02: Pulling fs layer\n\
9ad63333ebc9: Pulling fs layer\n\
9ad63333ebc9: Waiting\n\
a3ed95caeb02: Downloading\n\
a3ed95caeb02: Verifying Checksum\n\
a3ed95caeb02: Download complete\n\
a3ed95caeb02: Extracting\n\
a3ed95caeb02: Pull complete\n\
9ad63333ebc9: Already exists\n\
Digest: sha256:7edf5efe6b86dbf01ccc3c76b32a37a8e23b84e6bad81ce8ae8c221fa456fda8\n\
Status: Downloaded newer image for busybox:latest\n\
docker.io/library/busybox:latest\n";

/// The same pull on a 200-column terminal, as `jsonmessage.Display` draws it: a new layer
/// gets a line (`\n`), each update moves up to its line (`ESC[<n>A`), erases it (`ESC[2K`),
/// returns (`\r`), prints `<id>: <status> <bar>\r` and moves back down (`ESC[<n>B`); the
/// terminal turns `\n` into `\r\n`.
fn terminal_output() -> Vec<String> {
    let e = "\x1b";
    vec![
        "latest: Pulling from library/busybox\r\n".into(),
        format!("\r\n{e}[1A{e}[2K\ra3ed95caeb02: Pulling fs layer \r{e}[1B"),
        format!("\r\n{e}[1A{e}[2K\r9ad63333ebc9: Pulling fs layer \r{e}[1B"),
        format!(
            "{e}[2A{e}[2K\ra3ed95caeb02: Downloading [=====>                                             ]  1.049MB/10.49MB 2s\r{e}[2B"
        ),
        format!(
            "{e}[1A{e}[2K\r9ad63333ebc9: Downloading [=========================>                         ]  1.5kB/3kB\r{e}[1B"
        ),
        format!(
            "{e}[2A{e}[2K\ra3ed95caeb02: Downloading [==========================>                        ]  5.243MB/10.49MB 1s\r{e}[2B"
        ),
    ]
}

fn read(parts: &[&str]) -> PullProgress {
    let mut reader = PullReader::default();
    for part in parts {
        reader.feed(part.as_bytes());
    }
    reader.progress()
}

#[test]
fn a_pipe_gives_layers_and_no_bytes() {
    let half = PIPE.find("a3ed95caeb02: Extracting").unwrap();
    assert_eq!(
        read(&[&PIPE[..half]]),
        PullProgress {
            layers_total: 2,
            layers_done: 0,
            bytes_done: None,
            bytes_total: None,
        }
    );
    assert_eq!(
        read(&[PIPE]),
        PullProgress {
            layers_total: 2,
            layers_done: 2,
            bytes_done: None,
            bytes_total: None,
        }
    );
}

#[test]
fn a_terminal_gives_layers_and_bytes_as_the_bars_advance() {
    let parts = terminal_output();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    assert_eq!(
        read(&parts[..3]),
        PullProgress {
            layers_total: 2,
            layers_done: 0,
            bytes_done: None,
            bytes_total: None,
        }
    );
    assert_eq!(
        read(&parts[..5]),
        PullProgress {
            layers_total: 2,
            layers_done: 0,
            bytes_done: Some(1_049_000 + 1_500),
            bytes_total: Some(10_490_000 + 3_000),
        }
    );
    assert_eq!(read(&parts).bytes_done, Some(5_243_000 + 1_500));
    // Then the layers finish: each counts whole.
    let e = "\x1b";
    let end = [
        format!("{e}[1A{e}[2K\r9ad63333ebc9: Download complete \r{e}[1B"),
        format!("{e}[2A{e}[2K\ra3ed95caeb02: Verifying Checksum \r{e}[2B"),
        format!("{e}[2A{e}[2K\ra3ed95caeb02: Extracting [==================================================>]  10.49MB/10.49MB\r{e}[2B"),
        format!("{e}[2A{e}[2K\ra3ed95caeb02: Pull complete \r{e}[2B"),
        format!("{e}[1A{e}[2K\r9ad63333ebc9: Pull complete \r{e}[1B"),
        "Digest: sha256:7edf5efe6b86dbf01ccc3c76b32a37a8e23b84e6bad81ce8ae8c221fa456fda8\r\n".into(),
        "Status: Downloaded newer image for busybox:latest\r\n".into(),
    ];
    let all: Vec<&str> = parts
        .iter()
        .copied()
        .chain(end.iter().map(String::as_str))
        .collect();
    assert_eq!(
        read(&all),
        PullProgress {
            layers_total: 2,
            layers_done: 2,
            bytes_done: Some(10_493_000),
            bytes_total: Some(10_493_000),
        }
    );
}

#[test]
fn output_cut_anywhere_reads_the_same() {
    let whole: String = terminal_output().concat();
    let expected = read(&[&whole]);
    let bytes = whole.as_bytes();
    for size in [1, 2, 3, 7, 64] {
        let mut reader = PullReader::default();
        for chunk in bytes.chunks(size) {
            reader.feed(chunk);
        }
        assert_eq!(reader.progress(), expected, "chunks of {size}");
    }
}

#[test]
fn figures_as_go_units_prints_them() {
    assert_eq!(parse_size("512B"), Some(512));
    assert_eq!(parse_size("1.049kB"), Some(1_049));
    assert_eq!(parse_size("12.35MB"), Some(12_350_000));
    assert_eq!(parse_size("1.2GB"), Some(1_200_000_000));
    for bad in [
        "",
        "MB",
        "1.2",
        "-1MB",
        "1e3MB",
        "1.2XB",
        "NaNMB",
        "infGB",
        "9999999YB",
    ] {
        assert_eq!(parse_size(bad), None, "{bad:?}");
    }
    // Past the total docker prints the current size alone.
    assert_eq!(
        progress_figures(" [====>  ]  3.1MB"),
        Some((3_100_000, None))
    );
    assert_eq!(progress_figures(""), None);
}

#[test]
fn arbitrary_output_never_panics_and_stays_bounded() {
    let mut reader = PullReader::default();
    // Noise: every byte value, broken escapes, invalid UTF-8.
    let noise: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    reader.feed(&noise);
    reader.feed(b"\x1b[99999999999999999999999999A\x1b\x1b[\xff\xfe: Downloading 1MB/2MB\n");
    // A line far past the cap is ignored whole.
    let long = format!("abc: Downloading {}1MB/2MB\n", " ".repeat(MAX_LINE * 4));
    reader.feed(long.as_bytes());
    assert!(reader.line.capacity() <= MAX_LINE * 2);
    // More layer ids than the cap: only the cap is counted.
    for n in 0..(MAX_LAYERS + 500) {
        reader.feed(format!("{n:012x}: Pulling fs layer\n").as_bytes());
    }
    assert_eq!(reader.progress().layers_total as usize, MAX_LAYERS);
    // Huge figures saturate instead of overflowing.
    let mut reader = PullReader::default();
    for n in 0..100 {
        reader.feed(format!("{n:012x}: Downloading 15EB/15EB\n").as_bytes());
    }
    let progress = reader.progress();
    assert_eq!(progress.bytes_done, Some(u64::MAX));
    assert_eq!(progress.bytes_total, Some(u64::MAX));
}

#[test]
fn lines_that_are_not_layers_are_ignored() {
    assert_eq!(
        read(&[
            "latest: Pulling from library/busybox\n",
            "Digest: sha256:00\n",
            "Status: Image is up to date for busybox:latest\n",
            "abc: Something new\n",
            ": Pull complete\n",
            "not-hex: Pull complete\n",
        ]),
        PullProgress::default()
    );
}

#[test]
fn the_pull_gets_a_terminal_its_stderr_stays_apart_and_the_deadline_holds() {
    let (_trigger, shutdown) = crate::shutdown::channel();
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "if [ -t 1 ]; then echo tty; else echo pipe; fi; echo refused >&2; exit 3",
    ]);
    let mut seen = Vec::new();
    let finished = run_in_terminal(cmd, Duration::from_secs(10), &shutdown, &mut |c| {
        seen.extend_from_slice(c)
    })
    .unwrap();
    assert_eq!(finished.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&seen), "tty\r\n");
    assert_eq!(finished.stderr.text(), "refused");

    // Past its deadline the whole group is killed and reaped, however it keeps printing.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "while :; do echo x; sleep 0.05; done"]);
    let started = Instant::now();
    let mut lines = 0;
    let ended = run_in_terminal(cmd, Duration::from_millis(500), &shutdown, &mut |c| {
        lines += c.iter().filter(|b| **b == b'\n').count()
    });
    assert!(matches!(ended, Err(RunError::Timeout)), "{ended:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(lines >= 2, "read {lines} lines while it ran");
}
