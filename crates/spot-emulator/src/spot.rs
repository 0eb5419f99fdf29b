//! One emulated spot's state machine (sans-IO: the caller passes `now`).
//!
//! Call order on each connection: [`Spot::spot_create`], then [`Spot::config_create`]
//! (neither is buffered: they are regenerated per connection), then [`Spot::next_event`]
//! (or [`Spot::next_json`], the same event as bytes) as often as the event rate says. Each
//! command from a response goes to [`Spot::apply_command`], whose [`CommandEffect`] tells
//! the I/O layer what to do: buffer a `config update` echo, download firmware (then call
//! [`Spot::install_firmware`] and reconnect, which is how the new version reaches the next
//! `spot create`), or persist the zeroed counters.
//!
//! [`SpotCounters`] is what survives a restart (with the disk buffer); a new run calls
//! [`SpotCounters::boot`] so `boot_count` grows by one each run.

use serde_json::{json, Value};
use spot_protocol::{Action, Config, Event, EventKind, Firmware, SpotStatus, Timestamp};

use crate::population::{Behaviour, Made, Population, PopulationParams};

/// The firmware version an emulated spot starts with.
pub const DEFAULT_FIRMWARE: &str = "35-42-g0388fd9-emu";

/// Hold delay used when `auto_hold_delay` is on (what real spots report in captures).
pub const AUTO_HOLD_DELAY_S: i64 = 4;

/// What a spot remembers across restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpotCounters {
    /// Firmware version installed.
    pub firmware_version: String,
    /// Boots since production (or since the last `reset_counters`).
    pub boot_count: i64,
    /// Watchdog restarts.
    pub watchdog_count: i64,
    /// Presences created.
    pub presence_create_count: i64,
}

impl SpotCounters {
    /// A factory-fresh spot.
    pub fn factory() -> Self {
        SpotCounters {
            firmware_version: DEFAULT_FIRMWARE.into(),
            boot_count: 0,
            watchdog_count: 0,
            presence_create_count: 0,
        }
    }

    /// Counts one more boot.
    pub fn boot(&mut self) {
        self.boot_count += 1;
    }

    /// As a JSON object (for the state file of the disk buffer).
    pub fn to_json(&self) -> Value {
        json!({
            "firmware_version": self.firmware_version,
            "boot_count": self.boot_count,
            "watchdog_count": self.watchdog_count,
            "presence_create_count": self.presence_create_count,
        })
    }

    /// From [`SpotCounters::to_json`]'s form; missing keys take factory values.
    pub fn from_json(v: &Value) -> Self {
        let f = SpotCounters::factory();
        let int = |k: &str, d: i64| v.get(k).and_then(Value::as_i64).unwrap_or(d);
        SpotCounters {
            firmware_version: v
                .get("firmware_version")
                .and_then(Value::as_str)
                .unwrap_or(&f.firmware_version)
                .to_string(),
            boot_count: int("boot_count", f.boot_count),
            watchdog_count: int("watchdog_count", f.watchdog_count),
            presence_create_count: int("presence_create_count", f.presence_create_count),
        }
    }
}

/// What the I/O layer must do after a command.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandEffect {
    /// The config changed: buffer and send this `config update` (the changed keys).
    EchoConfig(Box<Event>),
    /// Download `url` (relative to the server), then [`Spot::install_firmware`] `version`.
    FetchFirmware {
        /// Path on the server.
        url: String,
        /// The version to report once installed.
        version: String,
    },
    /// `boot_count`, `watchdog_count` and `presence_create_count` are now 0: persist them.
    CountersReset,
    /// Not a command this spot understands; the text says why (count it, do not fail).
    Ignored(String),
}

/// One emulated spot. See the module docs for the call order.
#[derive(Debug, Clone)]
pub struct Spot {
    serial: u64,
    seq_epoch: u64,
    counters: SpotCounters,
    config: Config,
    default_config: Config,
    time_started: Timestamp,
    population: Population,
}

impl Spot {
    /// A spot that booted at `now` with `counters` (already counted this boot) and a seeded
    /// population. `brain_address` is the server host, as a real spot's config shows it.
    pub fn new(
        serial: u64,
        seq_epoch: u64,
        counters: SpotCounters,
        params: PopulationParams,
        seed: u64,
        brain_address: &str,
        now: Timestamp,
    ) -> Self {
        let default_config = default_config(serial, brain_address);
        Spot {
            serial,
            seq_epoch,
            counters,
            config: default_config.clone(),
            default_config,
            time_started: now,
            population: Population::new(params, seed),
        }
    }

    /// The serial number.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// The counters to persist.
    pub fn counters(&self) -> &SpotCounters {
        &self.counters
    }

    /// The configuration in effect.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The behaviour the current config asks of the tag model.
    pub fn behaviour(&self) -> Behaviour {
        let hold_delay_s = if self.config.auto_hold_delay == Some(true) {
            AUTO_HOLD_DELAY_S
        } else {
            self.config.fixed_hold_delay_s.unwrap_or(10)
        };
        Behaviour {
            send_hits: self.config.send_hits == Some(true),
            rfid_power_dbm: self.config.rfid_power_dbm.unwrap_or(30),
            hold_delay_s,
        }
    }

    /// The first message of a connection: who this spot is (no `seq`: not buffered).
    pub fn spot_create(&self, now: Timestamp) -> Event {
        Event::new(EventKind::Spot(
            Action::Create,
            SpotStatus {
                spot_id: Some(self.serial.to_string()),
                version: Some(self.counters.firmware_version.clone()),
                pcb_version: Some(3),
                online: Some(true),
                dip_mask: Some(6),
                rfid_swr: Some(vec![1100, 1150, 1210, 1080, 5631, 5631, 544]),
                boot_count: Some(self.counters.boot_count),
                watchdog_count: Some(self.counters.watchdog_count),
                presence_create_count: Some(self.counters.presence_create_count),
                time_started: Some(self.time_started),
                time: Some(now),
                seq_epoch: Some(self.seq_epoch),
                extra: Default::default(),
            },
        ))
    }

    /// The second message of a connection: every config key (no `seq`: not buffered).
    pub fn config_create(&self) -> Event {
        Event::new(EventKind::Config(Action::Create, self.config.clone()))
    }

    /// The next tag event at `now` (without `seq`: the buffer numbers it).
    pub fn next_event(&mut self, now: Timestamp) -> Event {
        let behaviour = self.behaviour();
        let event = self.population.next_event(now, &behaviour);
        if let EventKind::Presence(Action::Create, _) = event.kind {
            self.counters.presence_create_count += 1;
        }
        event
    }

    /// The next tag event at `now`, numbered `seq`, appended to `out` as compact JSON: the
    /// bytes the JSON encoder writes for [`Spot::next_event`] (same model, same counters).
    pub fn next_json(&mut self, now: Timestamp, seq: u64, out: &mut Vec<u8>) {
        let behaviour = self.behaviour();
        let made = self.population.next_json(now, &behaviour, Some(seq), out);
        if made == Made::PresenceCreate {
            self.counters.presence_create_count += 1;
        }
    }

    /// A new item arriving at `now`, outside the event rate (the burst fault).
    pub fn arrival(&mut self, now: Timestamp) -> Event {
        self.counters.presence_create_count += 1;
        self.population.arrive(now)
    }

    /// Applies one command from the server (spec §3.2).
    pub fn apply_command(&mut self, command: &Event) -> CommandEffect {
        match &command.kind {
            EventKind::Config(Action::Update, update) => {
                let mut echo = Config::default();
                if update.reset == Some(true) {
                    self.config = self.default_config.clone();
                    echo = self.config.clone();
                }
                merge_config(&mut self.config, update);
                merge_config(&mut echo, update);
                echo.reset = None;
                // Echo the values now in effect for every key the command named.
                let mut echo_event = Event::new(EventKind::Config(Action::Update, echo));
                if let EventKind::Config(_, echo) = &mut echo_event.kind {
                    for (k, _) in update.extra.iter() {
                        if let Some(v) = self.config.extra.get(k) {
                            echo.extra.insert(k.clone(), v.clone());
                        }
                    }
                }
                CommandEffect::EchoConfig(Box::new(echo_event))
            }
            EventKind::Firmware(Action::Update, fw) => self.apply_firmware(fw),
            _ => CommandEffect::Ignored(format!(
                "unknown command {:?} {:?}",
                command.resource_type(),
                command.action()
            )),
        }
    }

    fn apply_firmware(&mut self, fw: &Firmware) -> CommandEffect {
        if fw.reset_counters == Some(true) {
            self.counters.boot_count = 0;
            self.counters.watchdog_count = 0;
            self.counters.presence_create_count = 0;
        }
        match &fw.url {
            Some(url) => {
                let version = fw.version.clone().unwrap_or_else(|| {
                    let file = url.rsplit('/').next().unwrap_or(url);
                    file.split('.').next().unwrap_or(file).to_string()
                });
                CommandEffect::FetchFirmware {
                    url: url.clone(),
                    version,
                }
            }
            None if fw.reset_counters == Some(true) => CommandEffect::CountersReset,
            None => CommandEffect::Ignored("firmware update without url or reset_counters".into()),
        }
    }

    /// Installs downloaded firmware: the spot reboots (count it); the caller reconnects, so
    /// the next `spot create` reports `version`.
    pub fn install_firmware(&mut self, version: String, now: Timestamp) {
        self.counters.firmware_version = version;
        self.counters.boot();
        self.time_started = now;
    }
}

/// Copies every key that `update` sets into `config`.
fn merge_config(config: &mut Config, update: &Config) {
    macro_rules! take {
        ($($f:ident),*) => {$(
            if update.$f.is_some() {
                config.$f = update.$f.clone();
            }
        )*};
    }
    take!(
        rfid_power_dbm,
        send_hits,
        auto_hold_delay,
        fixed_hold_delay_s,
        telnet,
        hostname,
        brain_address
    );
    for (k, v) in &update.extra {
        config.extra.insert(k.clone(), v.clone());
    }
}

/// Factory defaults, with the keys and values of a real `config create` (spec §3.1).
pub fn default_config(serial: u64, brain_address: &str) -> Config {
    let extra = json!({
        "rfid_continues": true,
        "rfid_channel": 1,
        "rfid_region": 1,
        "rfid_period_ms": 250,
        "max_antenna_swr": 3500,
        "antenna_disable_mask": 64,
        "scramble_item_codes": false,
        "rfid_immediate": -550,
        "rfid_near": -650,
        "rfid_hysteresis": 25,
        "bt_immediate": -550,
        "bt_near": -650,
        "bt_hysteresis": 30,
        "control_schema": {"links": {"snd2": "boot", "ledg": "tick", "ledr": "hit"}},
        "dashboard_address": "dashboard.intellifi.nl",
        "use_dhcp": true,
        "ip": null,
        "subnet": null,
        "gateway": null,
        "dns_primary": null,
        "dns_secondary": null,
    });
    Config {
        rfid_power_dbm: Some(30),
        send_hits: Some(false),
        auto_hold_delay: Some(true),
        fixed_hold_delay_s: Some(10),
        telnet: Some(false),
        hostname: Some(format!("spot{serial}")),
        brain_address: Some(brain_address.to_string()),
        reset: None,
        extra: match extra {
            Value::Object(map) => map,
            _ => Default::default(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp(1_700_000_000_000);

    fn spot() -> Spot {
        let mut counters = SpotCounters::factory();
        counters.boot();
        Spot::new(
            203,
            77,
            counters,
            PopulationParams::default(),
            1,
            "10.0.0.1",
            T0,
        )
    }

    fn config_update(c: Config) -> Event {
        Event::new(EventKind::Config(Action::Update, c))
    }

    fn hits(spot: &mut Spot, n: i64) -> usize {
        (0..n)
            .map(|i| spot.next_event(Timestamp(T0.0 + i)))
            .filter(|e| matches!(e.kind, EventKind::Hit(..)))
            .count()
    }

    #[test]
    fn spot_create_names_serial_version_boot_count_and_epoch_without_seq() {
        let s = spot();
        let e = s.spot_create(Timestamp(T0.0 + 5));
        assert_eq!(e.seq, None);
        let EventKind::Spot(Action::Create, st) = e.kind else {
            panic!("{e:?}")
        };
        assert_eq!(st.spot_id.as_deref(), Some("203"));
        assert_eq!(st.version.as_deref(), Some(DEFAULT_FIRMWARE));
        assert_eq!(st.boot_count, Some(1));
        assert_eq!(st.seq_epoch, Some(77));
        assert_eq!(st.time_started, Some(T0));
        assert_eq!(st.time, Some(Timestamp(T0.0 + 5)));
        let c = s.config_create();
        assert_eq!(c.seq, None);
        let EventKind::Config(Action::Create, cfg) = c.kind else {
            panic!()
        };
        assert_eq!(cfg.hostname.as_deref(), Some("spot203"));
        assert_eq!(cfg.extra.get("rfid_near"), Some(&json!(-650)));
    }

    #[test]
    fn boot_count_grows_each_boot_and_survives_json() {
        let mut c = SpotCounters::factory();
        c.boot();
        c.boot();
        let back = SpotCounters::from_json(&c.to_json());
        assert_eq!(back, c);
        assert_eq!(back.boot_count, 2);
    }

    #[test]
    fn config_update_changes_behaviour_and_is_echoed() {
        let mut s = spot();
        assert_eq!(hits(&mut s, 500), 0);
        let mut update = Config {
            send_hits: Some(true),
            rfid_power_dbm: Some(20),
            ..Config::default()
        };
        update.extra.insert("rfid_near".into(), json!(-600));
        let effect = s.apply_command(&config_update(update));
        let CommandEffect::EchoConfig(echo) = effect else {
            panic!("{effect:?}")
        };
        let EventKind::Config(Action::Update, echo) = echo.kind else {
            panic!()
        };
        assert_eq!(echo.send_hits, Some(true));
        assert_eq!(echo.rfid_power_dbm, Some(20));
        assert_eq!(echo.extra.get("rfid_near"), Some(&json!(-600)));
        assert_eq!(echo.hostname, None, "only the keys the command named");
        assert!(hits(&mut s, 500) > 200);
        assert_eq!(s.behaviour().rfid_power_dbm, 20);

        let fixed = Config {
            auto_hold_delay: Some(false),
            fixed_hold_delay_s: Some(7),
            ..Config::default()
        };
        s.apply_command(&config_update(fixed));
        assert_eq!(s.behaviour().hold_delay_s, 7);
    }

    #[test]
    fn reset_restores_defaults_and_echoes_the_full_config() {
        let mut s = spot();
        s.apply_command(&config_update(Config {
            send_hits: Some(true),
            ..Config::default()
        }));
        let effect = s.apply_command(&config_update(Config {
            reset: Some(true),
            ..Config::default()
        }));
        assert_eq!(s.config(), &default_config(203, "10.0.0.1"));
        assert_eq!(s.behaviour(), Behaviour::default());
        let CommandEffect::EchoConfig(echo) = effect else {
            panic!()
        };
        let EventKind::Config(Action::Update, echo) = echo.kind else {
            panic!()
        };
        assert_eq!(echo.send_hits, Some(false));
        assert_eq!(echo.reset, None);
        assert_eq!(echo.extra.len(), default_config(203, "").extra.len());
    }

    #[test]
    fn firmware_update_fetches_then_next_spot_create_reports_version_and_reboot() {
        let mut s = spot();
        let fw = Firmware {
            url: Some("/firmware/beta/beta22.bin".into()),
            ..Firmware::default()
        };
        let effect = s.apply_command(&Event::new(EventKind::Firmware(Action::Update, fw)));
        assert_eq!(
            effect,
            CommandEffect::FetchFirmware {
                url: "/firmware/beta/beta22.bin".into(),
                version: "beta22".into()
            }
        );
        s.install_firmware("beta22".into(), Timestamp(T0.0 + 9));
        let EventKind::Spot(_, st) = s.spot_create(Timestamp(T0.0 + 10)).kind else {
            panic!()
        };
        assert_eq!(st.version.as_deref(), Some("beta22"));
        assert_eq!(st.boot_count, Some(2));
        assert_eq!(st.time_started, Some(Timestamp(T0.0 + 9)));
    }

    #[test]
    fn reset_counters_zeroes_counters() {
        let mut s = spot();
        for i in 0..100 {
            s.next_event(Timestamp(T0.0 + i));
        }
        assert!(s.counters().presence_create_count > 0);
        let fw = Firmware {
            reset_counters: Some(true),
            ..Firmware::default()
        };
        let effect = s.apply_command(&Event::new(EventKind::Firmware(Action::Update, fw)));
        assert_eq!(effect, CommandEffect::CountersReset);
        assert_eq!(s.counters().boot_count, 0);
        assert_eq!(s.counters().presence_create_count, 0);
        assert_eq!(s.counters().watchdog_count, 0);
    }

    #[test]
    fn unknown_command_is_ignored_with_a_reason() {
        let mut s = spot();
        let cmd = Event::new(EventKind::Presence(Action::Create, Default::default()));
        assert!(
            matches!(s.apply_command(&cmd), CommandEffect::Ignored(r) if r.contains("presence"))
        );
    }
}
