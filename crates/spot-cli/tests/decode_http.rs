//! `spot decode` on captured HTTP requests (issue 14, item 1), as a user runs it: the real
//! binary on the vendor capture of spot 203's POST, byte for byte and in the forms captures
//! take (line ends converted, the body without its head, requests back to back), `--raw`,
//! and the help that says values are normalised.

use std::process::Output;

use test_support::captures::{http_spot203_body, HTTP_SPOT203};
use test_support::fixtures;
use test_support::process::run_with_stdin;

/// Runs `spot ARGS` with `stdin` piped in.
fn spot(args: &[&str], stdin: &[u8]) -> Output {
    run_with_stdin(env!("CARGO_BIN_EXE_spot"), args, stdin)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn expected() -> String {
    std::fs::read_to_string(fixtures::protocol("vendor-http-spot203.expected.jsonl")).unwrap()
}

/// Asserts `spot decode ARGS` on `stdin` exits 0, silent on stderr, and prints `lines`.
fn assert_decodes(args: &[&str], stdin: &[u8], lines: &str) {
    let out = spot(args, stdin);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), lines, "{args:?}");
    assert!(out.stderr.is_empty(), "{args:?}: {}", text(&out.stderr));
}

#[test]
fn the_captured_post_decodes_to_its_three_events_detected_or_with_from_http() {
    let capture = fixtures::protocol("vendor-http-spot203.http");
    let path = capture.to_str().unwrap();
    assert_decodes(&["decode", path], b"", &expected());
    assert_decodes(&["decode", "--from", "http", path], b"", &expected());
    assert_decodes(&["decode"], HTTP_SPOT203, &expected());
    assert_eq!(expected().lines().count(), 3);
}

#[test]
fn captures_with_converted_line_ends_a_bare_body_or_several_requests_decode_too() {
    // Line ends converted to LF (the body itself has no CR, so chunk sizes still hold).
    let lf = text(HTTP_SPOT203).replace("\r\n", "\n");
    assert_decodes(&["decode"], lf.as_bytes(), &expected());

    // The chunked body without its head.
    let head_end = HTTP_SPOT203
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap()
        + 4;
    assert_decodes(&["decode"], &HTTP_SPOT203[head_end..], &expected());
    assert_decodes(
        &["decode", "--from", "http"],
        &HTTP_SPOT203[head_end..],
        &expected(),
    );

    // Two POSTs on one keep-alive connection, then one with a Content-Length body.
    let mut keep_alive = [HTTP_SPOT203, HTTP_SPOT203].concat();
    let body = b"[\"hit\",\"create\",{\"item_code\":\"ab\"}]\n";
    keep_alive.extend_from_slice(
        format!(
            "POST /api/spots/203/events/ HTTP/1.1\r\nContent-Type: text/x-intellifi-events\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    keep_alive.extend_from_slice(body);
    let lines = format!("{}{}{}\n", expected(), expected(), text(body).trim_end());
    assert_decodes(&["decode"], &keep_alive, &lines);
}

#[test]
fn raw_prints_each_message_as_received() {
    let out = spot(&["decode", "--raw"], HTTP_SPOT203);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The spot's body is its three messages, each followed by a blank line: exactly what
    // --raw prints, tabs and line ends as the spot wrote them.
    assert_eq!(text(&out.stdout), text(&http_spot203_body()));
    assert!(text(&out.stdout).contains("\t\"rfid_power_dbm\":\t30,\n"));
    // And it is a stream that decodes to the same events again.
    assert_decodes(&["decode"], &out.stdout, &expected());

    let out = spot(&["decode", "--from", "pb", "--raw"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("decode without --raw"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn raw_keeps_what_the_default_output_normalises() {
    let input =
        b"[\"spot\",\"create\",{\"spot_id\":\"201\",\"time\":\"2014-12-09T12:12:49.29Z\"}]\n\n";
    let normalised = spot(&["decode"], input);
    assert_eq!(
        text(&normalised.stdout),
        "[\"spot\",\"create\",{\"spot_id\":201,\"time\":\"2014-12-09T12:12:49.290Z\"}]\n"
    );
    assert_decodes(&["decode", "--raw"], input, &text(input));
}

#[test]
fn help_says_values_are_normalised_and_offers_raw_and_http() {
    let out = spot(&["decode", "--help"], b"");
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for needle in [
        "normalised",
        "`201`",
        "`.290Z`",
        "--raw",
        "--from http",
        "http:",
    ] {
        assert!(help.contains(needle), "{needle:?} missing from:\n{help}");
    }
}

#[test]
fn a_capture_cut_short_keeps_its_events_and_says_where_it_ends() {
    // Cut inside the presence event (the third), after the config event's last chunk.
    let cut = text(HTTP_SPOT203).find("\"proximity\"").unwrap();
    let out = spot(&["decode"], &HTTP_SPOT203[..cut]);
    assert_eq!(out.status.code(), Some(1));
    let first_two: String = expected()
        .lines()
        .take(2)
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(text(&out.stdout), first_two);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("the capture ends inside a request"),
        "{stderr}"
    );
    assert!(stderr.contains("request 1: body at byte"), "{stderr}");
    assert!(
        stderr.contains("2 event(s), 2 malformed message(s) in 1 request(s)"),
        "{stderr}"
    );

    let out = spot(
        &["decode", "--from", "http"],
        b"[\"hit\",\"create\",{}]\n\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not an HTTP request head"),
        "{}",
        text(&out.stderr)
    );
}
