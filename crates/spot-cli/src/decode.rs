//! `spot decode`: any encoding in, bare or as captured HTTP requests ([`http`] takes
//! those apart), one compact JSON event per line out (`--raw`: each message as received),
//! errors on stderr.

mod http;

use std::io::Write;
use std::process::ExitCode;

use spot_protocol::json::JsonEncoder;
use spot_protocol::{Decoder, Encoding, Limits};

use crate::encode::{for_each_chunk, Format};
use http::{Framing, Part, Unframer};

/// What `--from` names.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Source {
    /// `text/x-intellifi-events`
    Json,
    /// `application/x-intellifi-events-pb`
    Pb,
    /// Captured HTTP/1.1 requests (keep-alive: one after another), or a chunked body
    /// without its head; each body's encoding from its `Content-Type`.
    Http,
}

/// Flags of `spot decode`.
#[derive(clap::Args)]
pub struct Args {
    /// Encoding of the input (default: json, or http when the input starts with a request
    /// line or a chunk-size line).
    #[arg(short, long, value_enum)]
    from: Option<Source>,
    /// Print each message's text as received (JSON only), followed by a blank line, instead
    /// of the normalised event.
    #[arg(long)]
    raw: bool,
    /// Largest message accepted, in bytes.
    #[arg(long, default_value_t = Limits::default().max_message_bytes)]
    max_message_bytes: usize,
    /// Input file; `-` or none for standard input.
    #[arg(default_value = "-")]
    file: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.raw && args.from == Some(Source::Pb) {
        anyhow::bail!(
            "--raw prints JSON messages as received; a protobuf frame depends on the stream \
             before it, so it has no text of its own: decode without --raw"
        );
    }
    let limits = Limits {
        max_message_bytes: args.max_message_bytes,
        ..Limits::default()
    };
    let mut printer = EventPrinter::new(&args.file, args.raw);
    let mut input = Input::new(args.from, limits);
    for_each_chunk(&args.file, |chunk| input.feed(chunk, &mut printer))?;
    input.finish(&mut printer)?;
    Ok(if printer.errors > 0 {
        let requests = match input {
            Input::Http { requests, .. } => format!(" in {requests} request(s)"),
            _ => String::new(),
        };
        eprintln!(
            "spot decode: {}: {} event(s), {} malformed message(s){requests}",
            printer.name, printer.events, printer.errors
        );
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The input as far as it is understood: its first bytes until its framing is known, then
/// a bare event stream or HTTP requests.
enum Input {
    /// Waiting for the first line to tell the framing (`--from` not given, or `http`).
    /// With `force_http` (`--from http`) an input that is neither requests nor a chunked body
    /// is read as requests (and refused as such).
    Sniffing {
        start: Vec<u8>,
        limits: Limits,
        force_http: bool,
    },
    /// A bare event stream.
    Plain { decoder: Decoder, from: Format },
    /// HTTP requests: the current body's decoder, `None` between bodies or for a body that
    /// is not decoded (its `Content-Type` is unknown).
    Http {
        unframer: Unframer,
        body: Option<Decoder>,
        limits: Limits,
        requests: u64,
    },
}

impl Input {
    fn new(from: Option<Source>, limits: Limits) -> Self {
        match from {
            None | Some(Source::Http) => Input::Sniffing {
                start: Vec::new(),
                limits,
                force_http: from.is_some(),
            },
            Some(Source::Json) => Input::plain(Format::Json, limits),
            Some(Source::Pb) => Input::plain(Format::Pb, limits),
        }
    }

    fn plain(from: Format, limits: Limits) -> Self {
        Input::Plain {
            decoder: Decoder::new(from.encoding(), limits),
            from,
        }
    }

    fn http(framing: Framing, limits: Limits) -> Self {
        Input::Http {
            unframer: Unframer::new(framing),
            // A chunked body without its head: JSON, the spots' default.
            body: (framing == Framing::ChunkedBody).then(|| Decoder::new(Encoding::Json, limits)),
            limits,
            requests: 0,
        }
    }

    fn feed(&mut self, bytes: &[u8], printer: &mut EventPrinter) -> std::io::Result<()> {
        match self {
            Input::Sniffing {
                start,
                limits,
                force_http,
            } => {
                start.extend_from_slice(bytes);
                if let Some(framing) = http::sniff(start, false) {
                    let start = std::mem::take(start);
                    *self = Input::framed(framing, *limits, *force_http);
                    return self.feed(&start, printer);
                }
                Ok(())
            }
            Input::Plain { decoder, from } => {
                decoder.feed(bytes);
                printer.drain(decoder, "", from.hint())
            }
            Input::Http { unframer, .. } => {
                unframer.feed(bytes);
                self.drain_http(printer)
            }
        }
    }

    fn framed(framing: Framing, limits: Limits, force_http: bool) -> Self {
        match framing {
            Framing::Plain if force_http => Input::http(Framing::Requests, limits),
            Framing::Plain => Input::plain(Format::Json, limits),
            framing => Input::http(framing, limits),
        }
    }

    fn finish(&mut self, printer: &mut EventPrinter) -> std::io::Result<()> {
        if let Input::Sniffing {
            start,
            limits,
            force_http,
        } = self
        {
            let framing = http::sniff(start, true).unwrap_or(Framing::Plain);
            let start = std::mem::take(start);
            *self = Input::framed(framing, *limits, *force_http);
            self.feed(&start, printer)?;
        }
        match self {
            Input::Sniffing { .. } => Ok(()),
            Input::Plain { decoder, from } => {
                decoder.finish();
                printer.drain(decoder, "", from.hint())
            }
            Input::Http { unframer, .. } => {
                unframer.finish();
                self.drain_http(printer)
            }
        }
    }

    /// Decodes every part the unframer has ready; at the end of the capture, finishes the
    /// body it ended inside.
    fn drain_http(&mut self, printer: &mut EventPrinter) -> std::io::Result<()> {
        let Input::Http {
            unframer,
            body,
            limits,
            requests,
        } = self
        else {
            return Ok(());
        };
        let context = |requests: u64| format!("request {requests}: body ");
        while let Some(part) = unframer.next_part() {
            match part {
                Ok(Part::Head(head)) => {
                    *requests += 1;
                    let encoding = match &head.content_type {
                        None => Some(Encoding::Json),
                        Some(media_type) => Encoding::from_media_type(media_type),
                    };
                    *body = encoding.map(|e| Decoder::new(e, *limits));
                    if encoding.is_none() {
                        printer.error(&format!(
                            "request {requests} ({}): unsupported Content-Type {:?}, body skipped",
                            head.request_line,
                            head.content_type.unwrap_or_default()
                        ));
                    } else if printer.raw && encoding == Some(Encoding::Protobuf) {
                        printer.error(&format!(
                            "request {requests} ({}): --raw prints JSON messages only; this body \
                             is protobuf (decode it without --raw)",
                            head.request_line
                        ));
                        *body = None;
                    }
                }
                Ok(Part::Body(bytes)) => {
                    if let Some(decoder) = body {
                        decoder.feed(bytes);
                        printer.drain(decoder, &context(*requests), "")?;
                    }
                }
                Ok(Part::End) => {
                    if let Some(mut decoder) = body.take() {
                        decoder.finish();
                        printer.drain(&mut decoder, &context(*requests), "")?;
                    }
                }
                Err(e) => {
                    printer.error(&e.to_string());
                    // Nothing after broken framing can be read: end the body it broke.
                    if let Some(mut decoder) = body.take() {
                        decoder.finish();
                        printer.drain(&mut decoder, &context(*requests), "")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Prints decoded events as compact JSON lines (or, with `--raw`, as received) and reports
/// errors on stderr.
struct EventPrinter {
    name: String,
    raw: bool,
    encoder: JsonEncoder,
    line: Vec<u8>,
    out: std::io::BufWriter<std::io::Stdout>,
    events: u64,
    errors: u64,
}

impl EventPrinter {
    fn new(file: &str, raw: bool) -> Self {
        EventPrinter {
            name: if file == "-" {
                "<stdin>".into()
            } else {
                file.into()
            },
            raw,
            encoder: JsonEncoder::new(),
            line: Vec::new(),
            out: std::io::BufWriter::new(std::io::stdout()),
            events: 0,
            errors: 0,
        }
    }

    /// Reports one malformed message or unreadable part of the input.
    fn error(&mut self, text: &str) {
        self.errors += 1;
        eprintln!("spot decode: {}: {text}", self.name);
    }

    /// Writes every event the decoder has ready, then flushes so a live stream shows at once.
    /// `context` prefixes errors (which request's body); `hint` follows an error in the very
    /// first message of the input.
    fn drain(&mut self, decoder: &mut Decoder, context: &str, hint: &str) -> std::io::Result<()> {
        while let Some(item) = decoder.next_event() {
            match item {
                Ok(event) => {
                    self.line.clear();
                    match decoder.last_json().filter(|_| self.raw) {
                        Some(text) => {
                            self.line.extend_from_slice(text.as_bytes());
                            self.line.extend_from_slice(b"\n\n");
                        }
                        None => {
                            self.encoder.encode(&event, &mut self.line);
                            while self.line.last().is_some_and(|b| b.is_ascii_whitespace()) {
                                self.line.pop();
                            }
                            self.line.push(b'\n');
                        }
                    }
                    self.out.write_all(&self.line)?;
                    self.events += 1;
                }
                Err(e) => {
                    let hint = if self.errors == 0 && e.offset == 0 {
                        hint
                    } else {
                        ""
                    };
                    self.error(&format!("{context}{e}{hint}"));
                }
            }
        }
        self.out.flush()
    }
}
