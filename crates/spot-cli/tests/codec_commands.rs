//! `spot decode` and `spot encode` as an integrator runs them: real processes, real pipes.

use std::process::Output;

use test_support::fixtures;
use test_support::process::run_with_stdin;

/// Runs `spot ARGS` with `stdin` piped in.
fn spot(args: &[&str], stdin: &[u8]) -> Output {
    run_with_stdin(env!("CARGO_BIN_EXE_spot"), args, stdin)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn decode_prints_the_expected_line_per_event_and_exits_0() {
    let expected =
        std::fs::read_to_string(fixtures::protocol("vendor-telnet-spot201.expected.jsonl"))
            .unwrap();
    let out = spot(
        &[
            "decode",
            fixtures::protocol("vendor-telnet-spot201.txt")
                .to_str()
                .unwrap(),
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), expected);
    assert!(out.stderr.is_empty());
}

#[test]
fn encode_to_pb_then_decode_from_pb_reproduces_the_events() {
    let mix = std::fs::read(fixtures::protocol("realistic-mix.events")).unwrap();
    let direct = spot(&["decode", "-"], &mix);
    assert_eq!(direct.status.code(), Some(0));

    let pb = spot(&["encode", "--to", "pb"], &mix);
    assert_eq!(pb.status.code(), Some(0), "{}", text(&pb.stderr));
    assert!(pb.stdout.len() * 4 < mix.len(), "protobuf is much smaller");
    let back = spot(&["decode", "--from", "pb"], &pb.stdout);
    assert_eq!(back.status.code(), Some(0), "{}", text(&back.stderr));
    assert_eq!(back.stdout, direct.stdout);
    assert_eq!(text(&back.stdout).lines().count(), 5002);
}

#[test]
fn pretty_json_decodes_to_the_same_events() {
    let input = std::fs::read(fixtures::protocol("spec-examples.events")).unwrap();
    let direct = spot(&["decode"], &input);
    let pretty = spot(&["encode", "--to", "json", "--pretty"], &input);
    assert_eq!(pretty.status.code(), Some(0));
    assert!(text(&pretty.stdout).contains("\n  \""), "indented keys");
    assert_eq!(spot(&["decode"], &pretty.stdout).stdout, direct.stdout);
}

#[test]
fn a_malformed_message_is_reported_with_its_offset_and_the_rest_is_kept() {
    let input = b"[\"hit\",\"create\",{\"item_code\":\"ab\"}]\n\n[\"hit\",oops]\n\n[\"hit\",\"create\",{\"item_code\":\"cd\"}]\n\n";
    let out = spot(&["decode"], input);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stdout),
        "[\"hit\",\"create\",{\"item_code\":\"ab\"}]\n[\"hit\",\"create\",{\"item_code\":\"cd\"}]\n"
    );
    let stderr = text(&out.stderr);
    assert!(stderr.contains("at byte 37:"), "{stderr}");
    assert!(stderr.contains("2 event(s), 1 malformed"), "{stderr}");
}

#[test]
fn protobuf_fed_as_json_says_what_to_try() {
    let mix = std::fs::read(fixtures::protocol("realistic-mix.events")).unwrap();
    let pb = spot(&["encode", "--to", "pb"], &mix).stdout;
    let out = spot(&["decode"], &pb);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("at byte 0:"), "{stderr}");
    assert!(stderr.contains("use --from pb"), "{stderr}");
}

#[test]
fn missing_files_and_bad_flags_are_clear_errors() {
    let out = spot(&["decode", "/nonexistent/stream.events"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot open /nonexistent/stream.events"));

    let out = spot(&["decode", "--from", "xml"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("invalid value 'xml'"));

    let out = spot(&["encode", "--to", "pb", "--pretty"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--pretty applies only to --to json"));
}
