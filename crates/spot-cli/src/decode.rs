//! `spot decode`: any encoding in, one compact JSON event per line out, errors on stderr.

use std::io::Write;
use std::process::ExitCode;

use spot_protocol::json::JsonEncoder;
use spot_protocol::{Decoder, Limits};

use crate::encode::{for_each_chunk, Format};

/// Flags of `spot decode`.
#[derive(clap::Args)]
pub struct Args {
    /// Encoding of the input.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    from: Format,
    /// Largest message accepted, in bytes.
    #[arg(long, default_value_t = Limits::default().max_message_bytes)]
    max_message_bytes: usize,
    /// Input file; `-` or none for standard input.
    #[arg(default_value = "-")]
    file: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let limits = Limits {
        max_message_bytes: args.max_message_bytes,
        ..Limits::default()
    };
    let mut decoder = Decoder::new(args.from.encoding(), limits);
    let mut printer = EventPrinter::new(&args.file, args.from);
    for_each_chunk(&args.file, |chunk| {
        decoder.feed(chunk);
        printer.drain(&mut decoder)
    })?;
    decoder.finish();
    printer.drain(&mut decoder)?;
    Ok(if printer.errors > 0 {
        eprintln!(
            "spot decode: {}: {} event(s), {} malformed message(s)",
            printer.name, printer.events, printer.errors
        );
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints decoded events as compact JSON lines and reports errors on stderr.
struct EventPrinter {
    name: String,
    from: Format,
    encoder: JsonEncoder,
    line: Vec<u8>,
    out: std::io::BufWriter<std::io::Stdout>,
    events: u64,
    errors: u64,
}

impl EventPrinter {
    fn new(file: &str, from: Format) -> Self {
        EventPrinter {
            name: if file == "-" {
                "<stdin>".into()
            } else {
                file.into()
            },
            from,
            encoder: JsonEncoder::new(),
            line: Vec::new(),
            out: std::io::BufWriter::new(std::io::stdout()),
            events: 0,
            errors: 0,
        }
    }

    /// Writes every event the decoder has ready, then flushes so a live stream shows at once.
    fn drain(&mut self, decoder: &mut Decoder) -> std::io::Result<()> {
        while let Some(item) = decoder.next_event() {
            match item {
                Ok(event) => {
                    self.line.clear();
                    self.encoder.encode(&event, &mut self.line);
                    while self.line.last().is_some_and(|b| b.is_ascii_whitespace()) {
                        self.line.pop();
                    }
                    self.line.push(b'\n');
                    self.out.write_all(&self.line)?;
                    self.events += 1;
                }
                Err(e) => {
                    self.errors += 1;
                    let hint = if self.errors == 1 && e.offset == 0 {
                        self.from.hint()
                    } else {
                        ""
                    };
                    eprintln!("spot decode: {}: {e}{hint}", self.name);
                }
            }
        }
        self.out.flush()
    }
}
