//! `spot encode`: a JSON event stream in, the chosen encoding out.

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::Context;
use spot_protocol::json::JsonEncoder;
use spot_protocol::{Decoder, Encoder, Encoding, Limits};

/// An encoding as named on the command line.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `text/x-intellifi-events`
    Json,
    /// `application/x-intellifi-events-pb`
    Pb,
}

impl Format {
    pub fn encoding(self) -> Encoding {
        match self {
            Format::Json => Encoding::Json,
            Format::Pb => Encoding::Protobuf,
        }
    }

    /// What to suggest when the very first message of an input does not decode.
    pub fn hint(self) -> &'static str {
        match self {
            Format::Json => " (if the input is protobuf, use --from pb)",
            Format::Pb => " (if the input is JSON, use --from json)",
        }
    }
}

/// Flags of `spot encode`.
#[derive(clap::Args)]
pub struct Args {
    /// Encoding to write.
    #[arg(short, long, value_enum)]
    to: Format,
    /// Human-readable JSON (indented objects); only with `--to json`.
    #[arg(long)]
    pretty: bool,
    /// JSON input file; `-` or none for standard input.
    #[arg(default_value = "-")]
    file: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.pretty && args.to != Format::Json {
        anyhow::bail!("--pretty applies only to --to json");
    }
    let mut encoder = match (args.to, args.pretty) {
        (Format::Json, true) => Encoder::Json(JsonEncoder::pretty()),
        (format, _) => Encoder::new(format.encoding()),
    };
    let name = if args.file == "-" {
        "<stdin>"
    } else {
        &args.file
    };
    let mut decoder = Decoder::new(Encoding::Json, Limits::default());
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut buf = Vec::new();
    let mut errors = 0u64;
    let mut drain = |decoder: &mut Decoder| -> std::io::Result<()> {
        while let Some(item) = decoder.next_event() {
            match item {
                Ok(event) => {
                    buf.clear();
                    encoder.encode(&event, &mut buf);
                    out.write_all(&buf)?;
                }
                Err(e) => {
                    errors += 1;
                    eprintln!("spot encode: {name}: {e}");
                }
            }
        }
        out.flush()
    };
    for_each_chunk(&args.file, |chunk| {
        decoder.feed(chunk);
        drain(&mut decoder)
    })?;
    decoder.finish();
    drain(&mut decoder)?;
    Ok(if errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Calls `f` with each block read from `file` (`-` is standard input) as soon as it is read,
/// so that a live stream (`nc spot 23 | spot decode`) is processed as it arrives.
pub fn for_each_chunk(
    file: &str,
    mut f: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let mut input: Box<dyn Read> = if file == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(file).with_context(|| format!("cannot open {file}"))?)
    };
    let mut block = vec![0u8; 64 * 1024];
    loop {
        let n = match input.read(&mut block) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {file}")),
        };
        match f(&block[..n]) {
            Ok(()) => {}
            // A closed pipe (`spot decode | head`) is a normal way to stop.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e).context("cannot write output"),
        }
    }
}
