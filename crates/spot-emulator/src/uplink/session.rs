//! The sans-IO session of one spot's uplink ([`Session`]): it owns the spot, its buffer and
//! counters, and decides everything a transport must not: which events are due at a given
//! instant, which buffered events are still unsent on this connection (and which of them are
//! resends), what a `2xx` with `X-Spot-Ack` or a raw-TCP `ack` means, which commands follow
//! from a response, and what the faults do to a POST. No socket, no sleep, no clock read:
//! every method that cares about time takes `now`.
//!
//! Call order per connection: [`Session::begin_connection`], then for HTTP, per POST,
//! [`Session::begin_post`], [`Session::hello`] (first POST only), [`Session::take_unsent`]
//! (again each tick), and at the response [`Session::on_response`] followed by
//! [`Session::apply_command`] for each command it returned; for raw TCP [`Session::hello`],
//! [`Session::take_unsent`] each tick and [`Session::on_stream_bytes`] for what the server
//! wrote. [`Session::generate`] runs on every tick, connected or not.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use spot_protocol::ack::{read_ack, AckRead};
use spot_protocol::{Decoder, Encoder, Encoding, Event, Limits, Timestamp};
use tokio::time::Instant;

use super::config::UplinkConfig;
use super::error::UplinkError;
use crate::buffer::{BufferError, SpotBuffer};
use crate::faults::MALFORMED_JSON;
use crate::replay::{Replay, ReplayTiming};
use crate::rng::Rng;
use crate::spot::{CommandEffect, Spot};
use crate::stats::SpotStats;
use crate::telnet::TelnetFeed;
use crate::wire::{self, Response};

/// What one spot reports at the end.
#[derive(Debug)]
pub struct SpotReport {
    /// The spot's serial.
    pub serial: u64,
    /// Its counters.
    pub stats: Arc<SpotStats>,
    /// Ack latency (from generation to the `2xx` that covered it), microseconds.
    pub ack_latency_us: Histogram<u64>,
    /// Response latency (from the end of a POST body to its `2xx`), microseconds: the
    /// server's own share of the ack latency. One sample per POST; none over raw TCP.
    pub response_latency_us: Histogram<u64>,
    /// The last connection error, if any.
    pub last_error: Option<String>,
}

/// Event bytes being built for the wire, and where each event ends in them (so HTTP can
/// send one chunk per event).
#[derive(Debug, Default)]
pub struct Body {
    /// The encoded events.
    pub bytes: Vec<u8>,
    /// The end offset of each event in `bytes`.
    pub event_ends: Vec<usize>,
}

impl Body {
    /// Empties the body, keeping its room.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.event_ends.clear();
    }
}

/// A firmware image the server asked for: download `url`, then
/// [`Session::install_firmware`] `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareDownload {
    /// Path on the server.
    pub url: String,
    /// The version to report once installed.
    pub version: String,
}

/// The faults drawn for one POST.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PostPlan {
    /// Cut the connection mid-chunk once this instant has passed.
    pub cut_at: Option<Instant>,
    /// Stop writing at this instant for this many milliseconds.
    pub stall: Option<(Instant, u64)>,
}

/// One spot's delivery state. See the module docs for the call order.
pub struct Session {
    spot: Spot,
    buffer: SpotBuffer,
    cfg: Arc<UplinkConfig>,
    stats: Arc<SpotStats>,
    latency: Histogram<u64>,
    /// From the end of each POST body to its `2xx`.
    response_latency: Histogram<u64>,
    /// When the body of the POST awaiting its response ended.
    body_end: Option<Instant>,
    /// When events were generated, for the ack latency: runs of seqs (first, last) made at
    /// one instant (all the events of one tick), oldest first.
    generated_at: VecDeque<(u64, u64, Instant)>,
    rng: Rng,
    /// When generation starts and, on the spot's clock, what time it is then (Unix ms).
    gen_start: Instant,
    wall_at_start: Timestamp,
    end: Option<Instant>,
    stop_requested: bool,
    generating: bool,
    scheduled: u64,
    drain_deadline: Option<Instant>,
    /// The buffer's JSON: encoding events into it, decoding them for another encoding.
    json: Encoder,
    json_decoder: Decoder,
    /// The uplink encoding's encoder (one per POST, or per raw TCP connection).
    encoder: Encoder,
    /// What the server writes on a raw TCP connection.
    stream_decoder: Decoder,
    last_error: Option<String>,
    /// The highest seq written on this connection so far.
    sent_upto: u64,
    /// The highest seq ever written to a connection (anything at or below is a resend).
    max_sent: u64,
    /// A recording replayed instead of the population.
    replay: Option<Replay>,
    telnet: Option<TelnetFeed>,
}

impl Session {
    /// A session whose generation starts at `start`, when the wall clock reads `wall_at_start`,
    /// and stops after `duration` (or at [`Session::request_stop`]).
    pub fn new(
        spot: Spot,
        buffer: SpotBuffer,
        cfg: Arc<UplinkConfig>,
        seed: u64,
        (start, wall_at_start): (Instant, Timestamp),
        duration: Option<Duration>,
    ) -> Self {
        let buffer_last_seq = buffer.next_seq() - 1;
        let stats = Arc::new(SpotStats::default());
        let generated_at = buffer
            .first_seq()
            .map(|first| (first, buffer_last_seq, start))
            .into_iter()
            .collect();
        stats.events_buffered.store(buffer.len() as u64, Relaxed);
        let encoding = cfg.encoding;
        Session {
            spot,
            sent_upto: buffer.acked(),
            buffer,
            cfg,
            stats,
            latency: Histogram::new(3).expect("3 significant digits is valid"),
            response_latency: Histogram::new(3).expect("3 significant digits is valid"),
            body_end: None,
            generated_at,
            rng: Rng::new(seed),
            gen_start: start,
            wall_at_start,
            end: duration.map(|d| start + d),
            stop_requested: false,
            generating: true,
            scheduled: 0,
            drain_deadline: None,
            json: Encoder::new(Encoding::Json),
            json_decoder: Decoder::new(Encoding::Json, Limits::default()),
            encoder: Encoder::new(encoding),
            stream_decoder: Decoder::new(encoding, Limits::default()),
            last_error: None,
            // Recovered records may have been sent before the restart: count them as resends.
            max_sent: buffer_last_seq,
            replay: None,
            telnet: None,
        }
    }

    /// The spot.
    pub fn spot(&self) -> &Spot {
        &self.spot
    }

    /// The live counters.
    pub fn stats(&self) -> &Arc<SpotStats> {
        &self.stats
    }

    /// Replays `replay` instead of simulating a population; the run ends with it.
    pub fn set_replay(&mut self, replay: Replay) {
        self.replay = Some(replay);
    }

    /// Publishes every generated event (and the hello, see [`Session::telnet_hello`]) to `feed`.
    pub fn set_telnet(&mut self, feed: TelnetFeed) {
        self.telnet = Some(feed);
    }

    /// Tells the telnet feed what a new client gets first.
    pub fn telnet_hello(&mut self, now: Instant) {
        if let Some(feed) = &self.telnet {
            let mut hello = Vec::new();
            self.json
                .encode(&self.spot.spot_create(self.wall_clock(now)), &mut hello);
            self.json.encode(&self.spot.config_create(), &mut hello);
            feed.hello.send_replace(hello);
        }
    }

    /// Generation stops at the next tick (the run was asked to stop).
    pub fn request_stop(&mut self) {
        self.stop_requested = true;
    }

    /// Remembers why the last connection failed (the report's `last_error`).
    pub fn set_last_error(&mut self, error: &UplinkError) {
        self.last_error = Some(error.to_string());
    }

    /// The buffer could not be written: the spot stops.
    pub fn buffer_broken(&self) -> bool {
        self.stats.buffer_errors.load(Relaxed) > 0
    }

    /// Generation is over and everything is delivered, the drain time is over, or the
    /// buffer broke.
    pub fn finished(&self, now: Instant) -> bool {
        !self.generating
            && (self.buffer.is_empty()
                || self.drain_deadline.is_some_and(|d| now >= d)
                || self.buffer_broken())
    }

    /// The spot's clock at `now`: the wall clock plus the skew, or (no clock) time since boot
    /// from 1970.
    fn wall_clock(&self, now: Instant) -> Timestamp {
        let since_start = now.saturating_duration_since(self.gen_start).as_millis() as i64;
        match self.cfg.clock_offset_ms {
            None => Timestamp(since_start),
            Some(offset) => Timestamp(self.wall_at_start.as_millis() + since_start + offset),
        }
    }

    /// Events are generated as fast as the connection takes them (rate 0), not by the clock.
    pub fn is_fast(&self) -> bool {
        self.cfg.rate <= 0.0
            && self
                .replay
                .as_ref()
                .is_none_or(|r| r.timing == ReplayTiming::Rate)
    }

    /// Generates the events due at `now` into the buffer (paced modes only). Past the end of
    /// the run, the events due up to the end are still made (a late wake-up loses none).
    pub fn generate(&mut self, now: Instant) {
        if !self.generating || self.is_fast() {
            self.check_stop(now);
            return;
        }
        let until = self.end.map_or(now, |end| now.min(end));
        let elapsed = until.saturating_duration_since(self.gen_start);
        let due = match &self.replay {
            Some(r) if r.timing == ReplayTiming::Original => r.due(elapsed.as_millis() as i64),
            _ => ((elapsed.as_secs_f64() * self.cfg.rate) as u64).saturating_sub(self.scheduled),
        };
        self.generate_n(due.min(100_000), now);
        self.check_stop(now);
    }

    /// Rate 0: the next events, as many as the connection will take right away.
    pub fn generate_fast(&mut self, now: Instant) {
        if self.check_stop(now) {
            self.generate_n(256, now);
        }
    }

    /// Turns generation off when the run is over; `true` while still generating.
    fn check_stop(&mut self, now: Instant) -> bool {
        let replayed = self.replay.as_ref().is_some_and(|r| r.is_over());
        if self.generating
            && (self.stop_requested || self.end.is_some_and(|e| now >= e) || replayed)
        {
            self.generating = false;
            self.drain_deadline = Some(now + Duration::from_millis(self.cfg.drain_ms));
        }
        self.generating
    }

    fn generate_n(&mut self, n: u64, now: Instant) {
        if n == 0 {
            return;
        }
        let ts = self.wall_clock(now);
        let (mut made, mut not_made) = (0, 0);
        for _ in 0..n {
            if self.buffer.is_full() {
                if self.replay.is_some() {
                    break; // nothing of a recording is skipped: wait for room
                }
                self.scheduled += 1;
                not_made += 1;
                continue;
            }
            self.scheduled += 1;
            match &mut self.replay {
                None => {
                    // The hot path: the event's JSON straight into the buffer.
                    let spot = &mut self.spot;
                    match self
                        .buffer
                        .append_with(|seq, out| spot.next_json(ts, seq, out))
                    {
                        Ok(seq) => {
                            self.appended(seq, now);
                            made += 1;
                        }
                        Err(BufferError::Full { .. }) => not_made += 1,
                        Err(e) => self.buffer_failed(e),
                    }
                }
                Some(r) => match r.next_event() {
                    Some(e) => self.append(e, now),
                    None => break,
                },
            };
        }
        self.stats.events_generated.fetch_add(made, Relaxed);
        self.stats.events_buffered.fetch_add(made, Relaxed);
        if not_made > 0 {
            self.stats
                .events_not_generated_buffer_full
                .fetch_add(not_made, Relaxed);
        }
        self.flush();
    }

    /// The burst fault: `n` arrivals at once (subject to the buffer's room).
    fn burst(&mut self, n: u64, now: Instant) {
        self.stats.fault_bursts.fetch_add(1, Relaxed);
        let ts = self.wall_clock(now);
        for _ in 0..n {
            if self.buffer.is_full() {
                self.stats
                    .events_not_generated_buffer_full
                    .fetch_add(1, Relaxed);
                continue;
            }
            let event = self.spot.arrival(ts);
            self.append(event, now);
            self.stats.fault_burst_events.fetch_add(1, Relaxed);
        }
        self.flush();
    }

    fn append(&mut self, mut event: Event, now: Instant) {
        let json = &mut self.json;
        match self.buffer.append_with(|seq, out| {
            event.seq = Some(seq);
            json.encode(&event, out);
        }) {
            Ok(seq) => {
                self.appended(seq, now);
                self.stats.events_generated.fetch_add(1, Relaxed);
                self.stats.events_buffered.fetch_add(1, Relaxed);
            }
            Err(BufferError::Full { .. }) => {
                self.stats
                    .events_not_generated_buffer_full
                    .fetch_add(1, Relaxed);
            }
            Err(e) => self.buffer_failed(e),
        }
    }

    /// Bookkeeping of an event just buffered as `seq` (its stats are the caller's).
    fn appended(&mut self, seq: u64, now: Instant) {
        if let (Some(feed), Some(r)) = (&self.telnet, self.buffer.last()) {
            feed.publish(r.payload);
        }
        match self.generated_at.back_mut() {
            Some((_, last, at)) if *at == now && *last + 1 == seq => *last = seq,
            _ => self.generated_at.push_back((seq, seq, now)),
        }
    }

    fn flush(&mut self) {
        if let Err(e) = self.buffer.flush() {
            self.buffer_failed(e);
        }
    }

    fn buffer_failed(&mut self, e: BufferError) {
        self.stats.buffer_errors.fetch_add(1, Relaxed);
        self.last_error = Some(e.to_string());
        self.generating = false;
    }

    /// A new connection: everything not acknowledged is unsent again (a resend), and the
    /// encoder and stream decoder start over.
    pub fn begin_connection(&mut self) {
        self.sent_upto = self.buffer.acked();
        self.encoder = Encoder::new(self.cfg.encoding);
        self.stream_decoder = Decoder::new(self.cfg.encoding, Limits::default());
    }

    /// A new POST body: its own encoder (each body decodes on its own).
    pub fn begin_post(&mut self) {
        self.encoder = Encoder::new(self.cfg.encoding);
    }

    /// Appends what a connection starts with: `spot create` and `config create` (not
    /// buffered, never acknowledged).
    pub fn hello(&mut self, now: Instant, body: &mut Body) {
        let mut spot_create = self.spot.spot_create(self.wall_clock(now));
        if self.cfg.raw_tcp {
            // Spot admission `secret` on raw TCP: the secret rides in the spot create.
            if let (Some(secret), spot_protocol::EventKind::Spot(_, status)) = (
                self.cfg.secrets.get(&self.spot.serial()),
                &mut spot_create.kind,
            ) {
                status
                    .extra
                    .insert("spot_secret".into(), secret.clone().into());
            }
        }
        self.encoder.encode(&spot_create, &mut body.bytes);
        body.event_ends.push(body.bytes.len());
        self.encoder
            .encode(&self.spot.config_create(), &mut body.bytes);
        body.event_ends.push(body.bytes.len());
    }

    /// Appends to `body` the wire form of the buffered events not yet sent on this
    /// connection: as many as fit in `max_bytes` (and `max_write_bytes`), at least one when
    /// `max_bytes` > 0.
    pub fn take_unsent(&mut self, body: &mut Body, max_bytes: usize) {
        let Some(first) = self.buffer.first_seq() else {
            return;
        };
        let start = self.sent_upto.saturating_add(1).saturating_sub(first) as usize;
        let limit = body.bytes.len() + self.cfg.max_write_bytes.min(max_bytes);
        for r in self.buffer.records_from(start) {
            if body.bytes.len() >= limit {
                break; // the rest goes in the next ticks
            }
            match &mut self.encoder {
                Encoder::Json(_) => {
                    if self.cfg.faults.malformed > 0.0 && self.rng.chance(self.cfg.faults.malformed)
                    {
                        body.bytes.extend_from_slice(MALFORMED_JSON);
                        self.stats.fault_malformed.fetch_add(1, Relaxed);
                    }
                    body.bytes.extend_from_slice(r.payload);
                }
                encoder => {
                    self.json_decoder.feed(r.payload);
                    while let Some(item) = self.json_decoder.next_event() {
                        match item {
                            Ok(event) => encoder.encode(&event, &mut body.bytes),
                            Err(e) => {
                                self.last_error = Some(format!("buffered event {}: {e}", r.seq))
                            }
                        }
                    }
                }
            }
            body.event_ends.push(body.bytes.len());
            self.sent_upto = r.seq;
            if r.seq <= self.max_sent {
                self.stats.events_resent.fetch_add(1, Relaxed);
            }
        }
        self.max_sent = self.max_sent.max(self.sent_upto);
    }

    /// Frames `body` as HTTP chunks into `out`, cut as `chunk_split` says.
    pub fn push_chunks(&mut self, out: &mut Vec<u8>, body: &Body) {
        wire::push_chunks(
            out,
            &body.bytes,
            &body.event_ends,
            self.cfg.chunk_split,
            &mut self.rng,
        );
    }

    /// The body of the current POST ended at `now` (its response latency starts).
    pub fn body_ended(&mut self, now: Instant) {
        self.body_end = Some(now);
    }

    /// Draws the faults of a POST starting at `now`; a burst fault happens right away.
    pub fn plan_post(&mut self, now: Instant) -> PostPlan {
        let faults = &self.cfg.faults;
        let post_ms = self.cfg.post_ms;
        let cut_at = (faults.cut_mid_chunk > 0.0 && self.rng.chance(faults.cut_mid_chunk))
            .then(|| now + Duration::from_millis(self.rng.below(post_ms)));
        let stall = faults
            .stall
            .filter(|(p, _)| self.rng.chance(*p))
            .map(|(_, ms)| (now + Duration::from_millis(post_ms / 2), ms));
        if let Some((p, n)) = faults.burst {
            if self.rng.chance(p) {
                self.burst(n, now);
            }
        }
        PostPlan { cut_at, stall }
    }

    /// What a response to a POST means: a `2xx` acknowledges every event up to `X-Spot-Ack`
    /// (or, without it, everything sent, spec §6) and events above it are unsent again;
    /// returns the commands of its body, in order. Anything else is an error (the
    /// connection closes; the events stay buffered).
    pub fn on_response(
        &mut self,
        response: &Response,
        now: Instant,
    ) -> Result<Vec<Event>, UplinkError> {
        if !(200..300).contains(&response.status) {
            self.stats.responses_not_2xx.fetch_add(1, Relaxed);
            return Err(UplinkError::Status(response.status));
        }
        if let Some(end) = self.body_end.take() {
            let us = now.saturating_duration_since(end).as_micros() as u64;
            let _ = self.response_latency.record(us.max(1));
        }
        let ack = response.ack.unwrap_or(self.sent_upto);
        if ack < self.sent_upto {
            self.sent_upto = ack.max(self.buffer.acked());
        }
        self.acked(ack, now);
        let mut commands = Vec::new();
        if response.body.is_empty() {
            return Ok(commands);
        }
        let encoding = response
            .content_type
            .as_deref()
            .and_then(Encoding::from_media_type)
            .unwrap_or(self.cfg.encoding);
        let mut decoder = Decoder::new(encoding, Limits::default());
        decoder.feed(&response.body);
        decoder.finish();
        while let Some(item) = decoder.next_event() {
            match item {
                Ok(c) => commands.push(c),
                Err(e) => {
                    self.stats.commands_ignored.fetch_add(1, Relaxed);
                    self.last_error = Some(format!("malformed command: {e}"));
                }
            }
        }
        Ok(commands)
    }

    /// What the server wrote on a raw TCP connection: acks and commands (a firmware update
    /// is refused: downloads need HTTP). `true` if an ack arrived.
    pub fn on_stream_bytes(&mut self, bytes: &[u8], now: Instant) -> bool {
        self.stream_decoder.feed(bytes);
        let mut any_ack = false;
        while let Some(item) = self.stream_decoder.next_event() {
            let event = match item {
                Ok(e) => e,
                Err(e) => {
                    self.stats.commands_ignored.fetch_add(1, Relaxed);
                    self.last_error = Some(format!("malformed message from server: {e}"));
                    continue;
                }
            };
            match read_ack(&event) {
                AckRead::Acked(seq) => {
                    any_ack = true;
                    self.acked(seq, now);
                }
                AckRead::Malformed => {}
                AckRead::NotAck => {
                    self.apply_command(&event, now, false);
                }
            }
        }
        any_ack
    }

    /// Applies a command; returns the firmware download it asks for when the transport
    /// `can_download` (otherwise the command is counted as ignored).
    pub fn apply_command(
        &mut self,
        command: &Event,
        now: Instant,
        can_download: bool,
    ) -> Option<FirmwareDownload> {
        match self.spot.apply_command(command) {
            CommandEffect::EchoConfig(echo) => {
                self.stats.commands_applied.fetch_add(1, Relaxed);
                self.append(*echo, now);
                self.flush();
                self.telnet_hello(now);
            }
            CommandEffect::CountersReset => {
                self.stats.commands_applied.fetch_add(1, Relaxed);
                self.save_state();
            }
            CommandEffect::FetchFirmware { url, version } if can_download => {
                self.stats.commands_applied.fetch_add(1, Relaxed);
                return Some(FirmwareDownload { url, version });
            }
            CommandEffect::FetchFirmware { url, .. } => {
                self.stats.commands_ignored.fetch_add(1, Relaxed);
                self.last_error = Some(format!(
                    "firmware {url}: downloads need the HTTP uplink, not raw TCP"
                ));
            }
            CommandEffect::Ignored(why) => {
                self.stats.commands_ignored.fetch_add(1, Relaxed);
                self.last_error = Some(why);
            }
        }
        None
    }

    /// The firmware image is downloaded: the spot now runs `version` (the next connection's
    /// `spot create` says so).
    pub fn install_firmware(&mut self, version: String, now: Instant) {
        self.spot.install_firmware(version, self.wall_clock(now));
        self.telnet_hello(now);
        self.stats.firmware_updates.fetch_add(1, Relaxed);
        self.save_state();
    }

    fn save_state(&mut self) {
        if let Err(e) = self.buffer.save_state(self.spot.counters()) {
            self.buffer_failed(e);
        }
    }

    /// Handles one acknowledgement up to `ack`.
    fn acked(&mut self, ack: u64, now: Instant) {
        let highest = self.buffer.next_seq() - 1;
        if ack > highest {
            self.last_error = Some(format!(
                "server acknowledged seq {ack}, beyond the highest given out ({highest}) in epoch {}",
                self.buffer.epoch()
            ));
        }
        match self.buffer.ack(ack) {
            Ok(n) => {
                self.stats.events_acked.fetch_add(n as u64, Relaxed);
                self.stats.events_buffered.fetch_sub(n as u64, Relaxed);
            }
            Err(e) => self.buffer_failed(e),
        }
        while let Some((first, last, at)) = self.generated_at.front_mut() {
            if *first > ack {
                break;
            }
            let us = now.saturating_duration_since(*at).as_micros() as u64;
            let covered = (*last).min(ack) - *first + 1;
            let _ = self.latency.record_n(us.max(1), covered);
            if *last <= ack {
                self.generated_at.pop_front();
            } else {
                *first = ack + 1;
                break;
            }
        }
    }

    /// The end of the run: the counters are saved and reported.
    pub fn into_report(mut self) -> SpotReport {
        if let Err(e) = self.buffer.save_state(self.spot.counters()) {
            self.last_error = Some(e.to_string());
        }
        SpotReport {
            serial: self.spot.serial(),
            stats: self.stats,
            ack_latency_us: self.latency,
            response_latency_us: self.response_latency,
            last_error: self.last_error,
        }
    }
}

#[cfg(test)]
mod tests {
    use spot_protocol::ack::ack_event;
    use spot_protocol::{Action, Config, EventKind, Firmware};

    use super::*;
    use crate::buffer::BufferLimits;
    use crate::population::PopulationParams;
    use crate::spot::SpotCounters;
    use crate::uplink::config::ServerAddr;

    /// 1 s into the run at 10 events/s: ten events buffered, none sent.
    fn session_with_ten_events() -> (Session, Instant) {
        let mut cfg = UplinkConfig::new(ServerAddr::parse("http://127.0.0.1:9").unwrap());
        cfg.rate = 10.0;
        let mut counters = SpotCounters::factory();
        counters.boot();
        let spot = Spot::new(
            7,
            1,
            counters,
            PopulationParams::default(),
            1,
            "127.0.0.1",
            Timestamp(0),
        );
        let buffer = SpotBuffer::in_memory(1, BufferLimits::default());
        let start = Instant::now();
        let wall = Timestamp(1_700_000_000_000);
        let mut session = Session::new(spot, buffer, Arc::new(cfg), 1, (start, wall), None);
        let now = start + Duration::from_secs(1);
        session.generate(now);
        assert_eq!(session.stats().events_generated.load(Relaxed), 10);
        (session, now)
    }

    /// The sequence numbers of the events in `body` (the hello has none).
    fn seqs(body: &Body) -> Vec<u64> {
        let mut decoder = Decoder::new(Encoding::Json, Limits::default());
        decoder.feed(&body.bytes);
        std::iter::from_fn(|| decoder.next_event())
            .filter_map(|e| e.unwrap().seq)
            .collect()
    }

    fn sent(session: &mut Session) -> Vec<u64> {
        let mut body = Body::default();
        session.take_unsent(&mut body, usize::MAX);
        assert_eq!(
            body.event_ends.len(),
            seqs(&body).len(),
            "one end per event"
        );
        seqs(&body)
    }

    fn response(status: u16, ack: Option<u64>, commands: &[Event]) -> Response {
        let mut body = Vec::new();
        let mut encoder = Encoder::new(Encoding::Json);
        for c in commands {
            encoder.encode(c, &mut body);
        }
        Response {
            status,
            ack,
            content_type: None,
            close: false,
            body_len: body.len() as u64,
            body,
        }
    }

    #[test]
    fn events_are_due_by_the_time_passed_in_not_by_a_clock() {
        let (mut session, now) = session_with_ten_events();
        session.generate(now);
        assert_eq!(session.stats().events_generated.load(Relaxed), 10);
        session.generate(now + Duration::from_millis(500));
        assert_eq!(session.stats().events_generated.load(Relaxed), 15);
    }

    #[test]
    fn an_ack_of_part_of_a_post_leaves_only_the_tail_unsent() {
        let (mut session, now) = session_with_ten_events();
        session.begin_connection();
        session.begin_post();
        assert_eq!(sent(&mut session), (1..=10).collect::<Vec<_>>());
        assert!(sent(&mut session).is_empty(), "nothing is sent twice");
        let commands = session
            .on_response(&response(200, Some(4), &[]), now)
            .unwrap();
        assert!(commands.is_empty());
        let stats = session.stats().clone();
        assert_eq!(stats.events_acked.load(Relaxed), 4);
        assert_eq!(stats.events_buffered.load(Relaxed), 6);
        // The next POST carries the unacknowledged tail again, counted as resent.
        session.begin_post();
        assert_eq!(sent(&mut session), (5..=10).collect::<Vec<_>>());
        assert_eq!(stats.events_resent.load(Relaxed), 6);
        // Without X-Spot-Ack a 2xx covers everything sent.
        session.on_response(&response(204, None, &[]), now).unwrap();
        assert_eq!(stats.events_acked.load(Relaxed), 10);
        assert_eq!(stats.events_buffered.load(Relaxed), 0, "all delivered");
        let report = session.into_report();
        assert_eq!(report.ack_latency_us.len(), 10);
    }

    /// The response latency runs from the end of the body, the ack latency from generation:
    /// events that waited in the buffer do not make the server look slow.
    #[test]
    fn response_latency_counts_from_the_end_of_the_body() {
        let (mut session, now) = session_with_ten_events();
        session.begin_connection();
        session.begin_post();
        sent(&mut session);
        let body_end = now + Duration::from_secs(2);
        session.body_ended(body_end);
        let answered = body_end + Duration::from_millis(5);
        session
            .on_response(&response(200, None, &[]), answered)
            .unwrap();
        let report = session.into_report();
        assert_eq!(report.response_latency_us.len(), 1);
        let response_ms = report.response_latency_us.max() / 1000;
        assert_eq!(response_ms, 5);
        assert!(report.ack_latency_us.min() >= 2_000_000);
    }

    #[test]
    fn a_response_with_commands_returns_them_in_order_and_each_is_applied() {
        let (mut session, now) = session_with_ten_events();
        session.begin_connection();
        sent(&mut session);
        let config = Event::new(EventKind::Config(
            Action::Update,
            Config {
                send_hits: Some(true),
                ..Config::default()
            },
        ));
        let firmware = Event::new(EventKind::Firmware(
            Action::Update,
            Firmware {
                url: Some("/firmware/beta/beta22.bin".into()),
                ..Firmware::default()
            },
        ));
        let commands = session
            .on_response(&response(200, Some(10), &[config, firmware.clone()]), now)
            .unwrap();
        assert_eq!(commands.len(), 2);
        assert!(matches!(commands[0].kind, EventKind::Config(..)));
        let stats = session.stats().clone();
        // The config update is applied and its echo buffered as the next event.
        assert_eq!(session.apply_command(&commands[0], now, true), None);
        assert_eq!(stats.commands_applied.load(Relaxed), 1);
        assert_eq!(stats.events_generated.load(Relaxed), 11);
        assert_eq!(sent(&mut session), [11]);
        // The firmware update asks the transport to download, then installs.
        let download = session.apply_command(&commands[1], now, true).unwrap();
        assert_eq!(
            download,
            FirmwareDownload {
                url: "/firmware/beta/beta22.bin".into(),
                version: "beta22".into(),
            }
        );
        assert_eq!(stats.commands_applied.load(Relaxed), 2);
        session.install_firmware(download.version, now);
        assert_eq!(session.spot().counters().firmware_version, "beta22");
        assert_eq!(stats.firmware_updates.load(Relaxed), 1);
        // A transport that cannot download (raw TCP) counts it as ignored.
        assert_eq!(session.apply_command(&firmware, now, false), None);
        assert_eq!(stats.commands_ignored.load(Relaxed), 1);
        assert!(session.last_error.as_deref().unwrap().contains("raw TCP"));
    }

    #[test]
    fn a_reconnect_resends_the_unacked_tail_and_only_it() {
        let (mut session, now) = session_with_ten_events();
        session.begin_connection();
        let mut hello = Body::default();
        session.hello(now, &mut hello);
        assert_eq!((hello.event_ends.len(), seqs(&hello).len()), (2, 0));
        assert_eq!(sent(&mut session), (1..=10).collect::<Vec<_>>());
        // A raw-TCP ack of 1..=4 arrives, split over two reads.
        let mut ack = Vec::new();
        Encoder::new(Encoding::Json).encode(&ack_event(4, 0), &mut ack);
        let (a, b) = ack.split_at(ack.len() / 2);
        assert!(!session.on_stream_bytes(a, now));
        assert!(session.on_stream_bytes(b, now));
        let stats = session.stats().clone();
        assert_eq!(stats.events_acked.load(Relaxed), 4);
        // The connection drops; two more events happen before the next one.
        let later = now + Duration::from_millis(200);
        session.generate(later);
        session.begin_connection();
        assert_eq!(sent(&mut session), (5..=12).collect::<Vec<_>>());
        assert_eq!(
            stats.events_resent.load(Relaxed),
            6,
            "5..=10, not 11 and 12"
        );
    }

    #[test]
    fn a_5xx_acknowledges_nothing_and_ends_the_connection() {
        let (mut session, now) = session_with_ten_events();
        session.begin_connection();
        sent(&mut session);
        let err = session
            .on_response(&response(503, Some(10), &[]), now)
            .unwrap_err();
        assert!(matches!(err, UplinkError::Status(503)), "{err}");
        let stats = session.stats().clone();
        assert_eq!(stats.responses_not_2xx.load(Relaxed), 1);
        assert_eq!(stats.events_acked.load(Relaxed), 0);
        assert_eq!(stats.events_buffered.load(Relaxed), 10);
        session.begin_connection();
        assert_eq!(sent(&mut session), (1..=10).collect::<Vec<_>>());
        assert_eq!(stats.events_resent.load(Relaxed), 10);
    }
}
