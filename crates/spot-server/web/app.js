// The spot dashboard: one page (Preact + htm, no build step), signed in with an API key kept
// in sessionStorage. Reads the REST API (/api/...), the dashboard's routes
// (/api/whoami, /api/dashboard/...), /metrics, and follows every derived event over one
// WebSocket (/api/ws), handed to the pages in batches, one per animation frame.
import {
  html, render, useState, useEffect, useRef, useMemo, useCallback,
} from '/ui/htm-preact-standalone.module.js';

const KEY_STORE = 'spot.key';
/** Events waiting for the next animation frame; past it the oldest are dropped (a hidden tab runs no frames). */
const MAX_QUEUED = 20000;
/** The newest events kept for the pages (live events, a spot's and an item's recent events). */
const MAX_RECENT = 10000;
/** Seconds of events-per-second history the overview plots. */
const HISTORY_SECS = 300;

// ---------------------------------------------------------------- API

let apiKey = sessionStorage.getItem(KEY_STORE) || '';
let onUnauthorized = () => {};

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/**
 * JSON as the server sent it: an integer past 2^53 (a spot's `seq_epoch` is a u64) stays
 * the digits it was sent as (a raw JSON value, shown and sent back unchanged) instead of
 * the nearest double. Needs JSON.parse source access (Chromium 114, Firefox 135).
 */
function parseJson(text) {
  return JSON.parse(text, (key, value, context) => (
    typeof value === 'number' && !Number.isSafeInteger(value) && context
      && /^-?[0-9]+$/.test(context.source) && JSON.rawJSON
      ? JSON.rawJSON(context.source) : value));
}

/** Calls the API with the key; JSON in and out. A 401 signs out. */
async function api(path, { method = 'GET', body, text = false } = {}) {
  const headers = { 'X-Api-Key': apiKey };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (resp.status === 401) onUnauthorized('The key was refused (unknown or revoked).');
  if (!resp.ok) {
    let message = `${method} ${path}: ${resp.status}`;
    try { const e = await resp.json(); if (e.error) message = e.error; } catch (_) { /* not JSON */ }
    throw new ApiError(resp.status, message);
  }
  if (resp.status === 204) return null;
  const answer = await resp.text();
  return text ? answer : parseJson(answer);
}

/** The next page's URL of a list answer, whichever name the server gives it. */
function nextUrl(page) {
  return (page && (page.url_next || page.next_url)) || null;
}

const enc = encodeURIComponent;

// ---------------------------------------------------------------- push

/** The derived events, batched per animation frame to the listeners. */
const bus = {
  listeners: new Set(),
  queue: [],
  dropped: 0,
  scheduled: false,
  received: 0,
  recent: [],
  socket: null,
  state: 'closed',
  stateListeners: new Set(),
};

function setConnState(state) {
  bus.state = state;
  for (const l of bus.stateListeners) l(state);
}

function enqueue(event) {
  bus.received += 1;
  event.receivedAt = Date.now();
  bus.queue.push(event);
  if (bus.queue.length > MAX_QUEUED) {
    const over = bus.queue.length - MAX_QUEUED;
    bus.queue.splice(0, over);
    bus.dropped += over;
  }
  if (!bus.scheduled) {
    bus.scheduled = true;
    requestAnimationFrame(flush);
  }
}

function flush() {
  const batch = bus.queue;
  bus.queue = [];
  bus.scheduled = false;
  for (const event of batch) bus.recent.push(event);
  if (bus.recent.length > MAX_RECENT) bus.recent.splice(0, bus.recent.length - MAX_RECENT);
  for (const listener of bus.listeners) listener(batch);
}

let reconnectDelay = 500;
let reconnectTimer = null;

function connectPush() {
  disconnectPush();
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const socket = new WebSocket(`${scheme}://${location.host}/api/ws?key=${enc(apiKey)}`);
  bus.socket = socket;
  setConnState('connecting');
  socket.onopen = () => {
    reconnectDelay = 500;
    socket.send(JSON.stringify({ subscribe: '#' }));
    setConnState('open');
  };
  socket.onmessage = (msg) => {
    let data;
    try { data = parseJson(msg.data); } catch (_) { return; }
    if (data.topic) enqueue(data);
  };
  socket.onclose = (e) => {
    if (bus.socket !== socket) return;
    setConnState('closed');
    if (e.code === 1008) { onUnauthorized('The key was revoked.'); return; }
    reconnectTimer = setTimeout(connectPush, reconnectDelay);
    reconnectDelay = Math.min(reconnectDelay * 2, 15000);
  };
}

function disconnectPush() {
  clearTimeout(reconnectTimer);
  const socket = bus.socket;
  bus.socket = null;
  if (socket) socket.close();
  setConnState('closed');
}

/** Calls `fn(batch)` with each frame's events while the component is mounted. */
function useEvents(fn) {
  const ref = useRef(fn);
  ref.current = fn;
  useEffect(() => {
    const listener = (batch) => ref.current(batch);
    bus.listeners.add(listener);
    return () => bus.listeners.delete(listener);
  }, []);
}

function useConnState() {
  const [state, setState] = useState(bus.state);
  useEffect(() => {
    bus.stateListeners.add(setState);
    return () => bus.stateListeners.delete(setState);
  }, []);
  return state;
}

/** Whether an MQTT-style filter (`+` one level, `#` the rest) matches a topic. */
function topicMatches(filter, topic) {
  if (!filter || filter === '#') return !topic.startsWith('$');
  const f = filter.split('/');
  const t = topic.split('/');
  for (let i = 0; i < f.length; i += 1) {
    if (f[i] === '#') return i === f.length - 1;
    if (i >= t.length) return false;
    if (f[i] !== '+' && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}

// ---------------------------------------------------------------- metrics sampling

/** The samples of a Prometheus text exposition: name{labels} -> value. */
function parseMetrics(text) {
  const samples = new Map();
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    const space = line.lastIndexOf(' ');
    if (space < 0) continue;
    samples.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return samples;
}

/** The ack histogram's cumulative buckets, [[upper bound s, count]...], +Inf last. */
function ackBuckets(samples) {
  const buckets = [];
  for (const [name, value] of samples) {
    const m = /^spot_ack_seconds_bucket\{le="([^"]+)"\}$/.exec(name);
    if (m) buckets.push([m[1] === '+Inf' ? Infinity : Number(m[1]), value]);
  }
  buckets.sort((a, b) => a[0] - b[0]);
  const count = samples.get('spot_ack_seconds_count');
  if (count !== undefined && !buckets.some((b) => b[0] === Infinity)) buckets.push([Infinity, count]);
  return buckets;
}

/** The q-quantile of cumulative buckets (linear within a bucket, as Prometheus' histogram_quantile). */
function quantile(q, buckets) {
  if (!buckets.length) return null;
  const total = buckets[buckets.length - 1][1];
  if (!(total > 0)) return null;
  const rank = q * total;
  let prevBound = 0;
  let prevCount = 0;
  for (const [bound, count] of buckets) {
    if (count >= rank) {
      if (bound === Infinity) return prevBound;
      const inBucket = count - prevCount;
      return prevBound + (bound - prevBound) * (inBucket > 0 ? (rank - prevCount) / inBucket : 1);
    }
    prevBound = bound;
    prevCount = count;
  }
  return prevBound;
}

/** What the overview plots and shows, sampled once a second while signed in. */
const sampler = {
  t: [], upstream: [], derived: [], listeners: new Set(),
  last: null, snapshots: [], ack: { p50: null, p99: null, window: null },
  received: 0, timer: null, error: null,
};

async function sample() {
  const now = Date.now() / 1000;
  try {
    const samples = parseMetrics(await api('/metrics', { text: true }));
    sampler.error = null;
    const received = samples.get('spot_events_received_total') || 0;
    const buckets = ackBuckets(samples);
    const prev = sampler.last;
    if (prev) {
      const dt = Math.max(now - prev.now, 0.001);
      sampler.t.push(now);
      sampler.upstream.push(Math.max(received - prev.received, 0) / dt);
      sampler.derived.push(Math.max(bus.received - prev.derived, 0) / dt);
      if (sampler.t.length > HISTORY_SECS) {
        for (const a of [sampler.t, sampler.upstream, sampler.derived]) a.shift();
      }
    }
    sampler.last = { now, received, derived: bus.received };
    // Latency over the last minute: this sample's buckets less those of a minute ago.
    sampler.snapshots.push({ now, buckets });
    while (sampler.snapshots.length > 1 && now - sampler.snapshots[0].now > 60) sampler.snapshots.shift();
    const old = sampler.snapshots[0].buckets;
    const window = buckets.map(([b, c], i) => [b, c - ((old[i] && old[i][1]) || 0)]);
    const windowed = window.length && window[window.length - 1][1] > 0;
    const use = windowed ? window : buckets;
    sampler.ack = { p50: quantile(0.5, use), p99: quantile(0.99, use), window: windowed ? 'last minute' : 'since start' };
    sampler.spotsOnline = samples.get('spot_spots_online');
  } catch (e) {
    sampler.error = e.message;
  }
  for (const l of sampler.listeners) l();
}

function startSampler() {
  stopSampler();
  sampler.timer = setInterval(sample, 1000);
  sample();
}

function stopSampler() {
  clearInterval(sampler.timer);
  Object.assign(sampler, { t: [], upstream: [], derived: [], last: null, snapshots: [] });
}

function useSampler() {
  const [, setTick] = useState(0);
  useEffect(() => {
    const l = () => setTick((n) => n + 1);
    sampler.listeners.add(l);
    return () => sampler.listeners.delete(l);
  }, []);
  return sampler;
}

// ---------------------------------------------------------------- helpers

/** Runs `fn` now and every `ms` while mounted (and when `deps` change); a failure is kept in `error`. */
function usePoll(fn, ms, deps = []) {
  const [error, setError] = useState(null);
  const ref = useRef(fn);
  ref.current = fn;
  useEffect(() => {
    let stopped = false;
    let timer = null;
    const run = async () => {
      try { await ref.current(); if (!stopped) setError(null); } catch (e) { if (!stopped) setError(e.message); }
      if (!stopped) timer = setTimeout(run, ms);
    };
    run();
    return () => { stopped = true; clearTimeout(timer); };
  }, deps);
  return error;
}

/** A local time in the browser's zone. */
function fmtTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

/** Seconds as milliseconds, without the unit. */
function fmtMs(secs) {
  if (secs === null || secs === undefined) return '—';
  const ms = secs * 1000;
  return ms < 10 ? ms.toFixed(1) : ms.toFixed(0);
}

const fmtNum = (n) => (n === undefined || n === null ? '—' : Number(n).toLocaleString());

function ErrorLine({ error }) {
  return error ? html`<p class="error" role="alert">${error}</p>` : null;
}

function Json({ value }) {
  return html`<pre class="json">${JSON.stringify(value, null, 2)}</pre>`;
}

/** Parses what a person typed as a config value: JSON when it is JSON, else the text. */
function parseValue(text) {
  try { return JSON.parse(text); } catch (_) { return text; }
}

/** A list that renders only the rows in view (fixed row height). */
function VirtualList({ items, rowHeight = 24, height = 480, renderRow, id }) {
  const [top, setTop] = useState(0);
  const first = Math.max(0, Math.floor(top / rowHeight) - 5);
  const last = Math.min(items.length, Math.ceil((top + height) / rowHeight) + 5);
  const rows = [];
  for (let i = first; i < last; i += 1) {
    rows.push(html`<div class="row" key=${i} style=${`top:${i * rowHeight}px`}>${renderRow(items[i])}</div>`);
  }
  return html`<div class="virtual" id=${id} tabindex="0" role="log" aria-label="events"
      style=${`height:${height}px`} onScroll=${(e) => setTop(e.currentTarget.scrollTop)}>
    <div style=${`height:${items.length * rowHeight}px`}></div>${rows}</div>`;
}

// ---------------------------------------------------------------- overview

function EventsPlot() {
  const el = useRef(null);
  const plot = useRef(null);
  const s = useSampler();
  useEffect(() => {
    if (typeof uPlot === 'undefined' || !el.current) return undefined;
    const width = () => Math.max(el.current.clientWidth - 4, 260);
    plot.current = new uPlot({
      width: width(), height: 220,
      series: [{}, { label: 'spot events/s', stroke: '#0b5cad', width: 2 },
        { label: 'derived events/s', stroke: '#16794a', width: 1.5 }],
      axes: [{ space: 90, values: (u, ticks) => ticks.map((t) => new Date(t * 1000).toLocaleTimeString()) },
        { size: 60 }],
      scales: { x: { time: true } },
    }, [[], [], []], el.current);
    const onResize = () => plot.current.setSize({ width: width(), height: 220 });
    window.addEventListener('resize', onResize);
    return () => { window.removeEventListener('resize', onResize); plot.current.destroy(); };
  }, []);
  useEffect(() => {
    if (plot.current) plot.current.setData([s.t.slice(), s.upstream.slice(), s.derived.slice()]);
  });
  return html`<div class="plot" ref=${el} id="events-plot"></div>`;
}

function Overview({ go }) {
  const [ov, setOv] = useState(null);
  const s = useSampler();
  const error = usePoll(async () => setOv(await api('/api/dashboard/overview')), 2000);
  const up = s.upstream.length ? s.upstream[s.upstream.length - 1] : null;
  const locations = ov ? ov.locations.filter((l) => l.items_present > 0).slice(0, 15) : [];
  return html`<h1>Overview</h1>
    <${ErrorLine} error=${error || s.error} />
    <div class="cards">
      <div class="card"><div class="label">Spots online</div>
        <div class="value on" id="spots-online">${ov ? fmtNum(ov.spots.online) : '—'}</div></div>
      <div class="card"><div class="label">Spots offline</div>
        <div class="value" id="spots-offline">${ov ? fmtNum(ov.spots.total - ov.spots.online) : '—'}</div></div>
      <div class="card"><div class="label">Items present</div>
        <div class="value" id="items-present">${ov ? fmtNum(ov.items.present) : '—'}</div>
        <div class="label">of ${ov ? fmtNum(ov.items.total) : '—'} known</div></div>
      <div class="card"><div class="label">Spot events / s</div>
        <div class="value" id="events-rate">${up === null ? '—' : fmtNum(Math.round(up))}</div></div>
      <div class="card"><div class="label">Ack latency p50 / p99</div>
        <div class="value" id="ack-latency">${fmtMs(s.ack.p50)} / ${fmtMs(s.ack.p99)} ms</div>
        <div class="label">${s.ack.window || ''}</div></div>
    </div>
    <div class="grid2">
      <section class="panel"><h2>Events per second, last ${HISTORY_SECS / 60} minutes</h2><${EventsPlot} /></section>
      <section class="panel"><h2>Items per location</h2>
        <table id="items-per-location"><thead><tr><th>Location</th><th class="num">Items present</th></tr></thead>
        <tbody>${locations.map((l) => html`<tr key=${l.id}>
          <td><a href=${`#/items?location=${l.id}`}>${l.label}</a></td><td class="num">${fmtNum(l.items_present)}</td></tr>`)}
        </tbody></table>
        ${ov && ov.locations.length > locations.length
          ? html`<p><a href="#/items" onClick=${() => go('#/items')}>All ${fmtNum(ov.locations.length)} locations</a></p>` : null}
      </section>
    </div>`;
}

// ---------------------------------------------------------------- spots

const SPOTS_PAGE = 50;

function Spots() {
  const [online, setOnline] = useState('');
  const [serial, setSerial] = useState('');
  const [starts, setStarts] = useState([null]);
  const [page, setPage] = useState(null);
  const rates = useRef(new Map());
  const after = starts[starts.length - 1];
  const error = usePoll(async () => {
    let q = `/api/spots?limit=${SPOTS_PAGE}&sort=id`;
    if (after) q += `&after_id=${enc(after)}`;
    if (online) q += `&is_online=${online}`;
    if (serial.trim()) q += `&serial_number=${enc(serial.trim())}`;
    const answer = await api(q);
    const now = Date.now();
    for (const spot of answer.results) {
      const prev = rates.current.get(spot.id);
      const rate = prev ? ((spot.event_counter - prev.n) * 1000) / Math.max(now - prev.t, 1) : null;
      rates.current.set(spot.id, { n: spot.event_counter, t: now, rate: prev ? rate : null });
    }
    setPage(answer);
  }, 2000, [after, online, serial]);
  const reset = () => setStarts([null]);
  const rows = page ? page.results : [];
  return html`<h1>Spots</h1>
    <div class="toolbar">
      <label>Show <select value=${online} onChange=${(e) => { setOnline(e.target.value); reset(); }}>
        <option value="">all</option><option value="true">online</option><option value="false">offline</option>
      </select></label>
      <label>Serial <input id="spot-serial-filter" size="10" value=${serial}
        onInput=${(e) => { setSerial(e.target.value); reset(); }} placeholder="exact" /></label>
    </div>
    <${ErrorLine} error=${error} />
    <div class="panel"><table id="spots-table">
      <thead><tr><th>Serial</th><th>Online</th><th>Last seen</th><th>Firmware</th>
        <th class="num">Events/s</th><th class="num">Requests</th><th>Pending</th></tr></thead>
      <tbody>${rows.map((s) => {
        const r = rates.current.get(s.id);
        return html`<tr key=${s.id} data-serial=${s.serial_number}>
          <td><a href=${`#/spots/${s.id}`}>${s.serial_number}</a></td>
          <td class=${s.is_online ? 'on' : 'off'}>${s.is_online ? 'online' : 'offline'}</td>
          <td>${fmtTime(s.time_last_request)}</td><td>${s.version || '—'}</td>
          <td class="num">${r && r.rate !== null ? r.rate.toFixed(1) : '—'}</td>
          <td class="num">${fmtNum(s.request_counter)}</td>
          <td>${[s.config_request && 'config', s.firmware_request && 'firmware'].filter(Boolean).join(', ') || ''}</td>
        </tr>`;
      })}</tbody></table>
      ${page && !rows.length ? html`<p class="muted">No spots${online || serial ? ' match' : ' yet'}.</p>` : null}
      <div class="pager">
        <button disabled=${starts.length < 2} onClick=${() => setStarts(starts.slice(0, -1))}>Previous</button>
        <button disabled=${!page || !page.is_limited || !rows.length}
          onClick=${() => setStarts([...starts, rows[rows.length - 1].id])}>Next</button>
        <span class="muted">page ${starts.length}</span>
      </div></div>`;
}

/** What became of an action queued on a spot. */
function Progress({ sent, spot }) {
  if (!sent) return null;
  const field = sent.kind === 'firmware' ? 'firmware_request' : 'config_request';
  const pending = spot[field];
  let text;
  let cls = 'wait';
  if (pending) {
    text = `Queued at ${new Date(sent.at).toLocaleTimeString()}: waiting for the spot's next request.`;
  } else {
    text = `Taken by the spot (handed over with its answer; requests now ${fmtNum(spot.request_counter)}).`;
    cls = 'done';
    if (sent.kind === 'config' && !sent.body.reset) {
      const confirmed = Object.entries(sent.body)
        .every(([k, v]) => JSON.stringify(spot.config[k]) === JSON.stringify(v));
      text += confirmed ? ' The spot reports the new values in its config.' : ' Waiting for the spot to report its config.';
      if (!confirmed) cls = 'wait';
    }
  }
  return html`<div class=${`progress ${cls}`} role="status" id=${`progress-${sent.kind}`}>${sent.label}: ${text}</div>`;
}

function SpotDetail({ id, role }) {
  const [spot, setSpot] = useState(null);
  const [events, setEvents] = useState([]);
  const [sent, setSent] = useState({});
  const [actionError, setActionError] = useState(null);
  const [cfgKey, setCfgKey] = useState('');
  const [cfgValue, setCfgValue] = useState('');
  const [fwUrl, setFwUrl] = useState('');
  const [fwVersion, setFwVersion] = useState('');
  const error = usePoll(async () => setSpot(await api(`/api/spots/${enc(id)}?populate=report_location`)), 1000, [id]);
  // The location, populated (an id when it could not be).
  const loc = spot && spot.report_location;
  const locId = loc && typeof loc === 'object' ? loc.id : loc;
  const relevant = useCallback((ev) => {
    if (!spot) return false;
    if (ev.topic.startsWith(`spots/${spot.id}/`)) return true;
    const t = ev.topic.split('/');
    return t[0] === 'presences' && locId && t[4] === locId;
  }, [spot && spot.id, locId]);
  useEffect(() => {
    if (spot) setEvents(bus.recent.filter(relevant).slice(-100).reverse());
  }, [relevant]);
  useEvents((batch) => {
    const mine = batch.filter(relevant);
    if (mine.length) setEvents((old) => [...mine.reverse(), ...old].slice(0, 100));
  });
  if (!spot) return html`<h1>Spot</h1><${ErrorLine} error=${error} />`;
  const canWrite = role === 'write' || role === 'admin';
  const put = async (kind, label, field, body) => {
    setActionError(null);
    try {
      const merged = kind === 'config' && !body.reset && spot.config_request && !spot.config_request.reset
        ? { ...spot.config_request, ...body } : body;
      await api(`/api/spots/${enc(spot.id)}`, { method: 'PUT', body: { [field]: merged } });
      setSpot(await api(`/api/spots/${enc(spot.id)}?populate=report_location`));
      setSent((s) => ({ ...s, [kind]: { kind, label, body, at: Date.now() } }));
    } catch (e) { setActionError(e.message); }
  };
  const queueConfig = (e) => {
    e.preventDefault();
    if (!cfgKey.trim()) return;
    put('config', `Config ${cfgKey.trim()} = ${cfgValue}`, 'config_request', { [cfgKey.trim()]: parseValue(cfgValue) });
  };
  const queueFirmware = (e) => {
    e.preventDefault();
    if (!fwUrl.trim()) return;
    const body = { url: fwUrl.trim() };
    if (fwVersion.trim()) body.version = fwVersion.trim();
    put('firmware', `Firmware ${fwVersion || fwUrl}`, 'firmware_request', body);
  };
  const reset = () => {
    if (window.confirm(`Reset spot ${spot.serial_number} to its factory defaults?`)) {
      put('config', 'Factory reset', 'config_request', { reset: true });
    }
  };
  return html`<h1>Spot ${spot.serial_number} <span class=${spot.is_online ? 'on' : 'off'} id="spot-online">
      ${spot.is_online ? 'online' : 'offline'}</span></h1>
    <p><a href="#/spots">← all spots</a></p>
    <${ErrorLine} error=${error} />
    <div class="grid2">
      <section class="panel"><h2>Status</h2>
        <dl class="kv">
          <dt>Firmware</dt><dd>${spot.version || '—'}</dd>
          <dt>Last request</dt><dd>${fmtTime(spot.time_last_request)}</dd>
          <dt>Requests</dt><dd>${fmtNum(spot.request_counter)}</dd>
          <dt>Events</dt><dd>${fmtNum(spot.event_counter)}</dd>
          <dt>Location</dt><dd>${locId
            ? html`<a href=${`#/items?location=${locId}`}>${(loc && loc.label) || locId}</a>` : '—'}</dd>
          <dt>Created</dt><dd>${fmtTime(spot.time_created)}</dd>
        </dl>
        <h2>Status</h2>
        <dl class="kv" id="spot-status">${Object.entries(spot.status || {}).map(([k, v]) =>
          html`<dt>${k}</dt><dd data-key=${k}>${JSON.stringify(v)}</dd>`)}</dl>
        <h2>Config</h2>
        <dl class="kv" id="spot-config">${Object.entries(spot.config || {}).map(([k, v]) =>
          html`<dt>${k}</dt><dd data-key=${k}>${JSON.stringify(v)}</dd>`)}</dl>
      </section>
      <section class="panel"><h2>Pending commands</h2>
        <dl class="kv" id="spot-pending">
          <dt>config</dt><dd>${spot.config_request ? JSON.stringify(spot.config_request) : 'none'}</dd>
          <dt>firmware</dt><dd>${spot.firmware_request ? JSON.stringify(spot.firmware_request) : 'none'}</dd>
        </dl>
        <${Progress} sent=${sent.config} spot=${spot} />
        <${Progress} sent=${sent.firmware} spot=${spot} />
        <${ErrorLine} error=${actionError} />
        ${canWrite ? html`
          <h2>Change config</h2>
          <form class="stack" id="config-form" onSubmit=${queueConfig}>
            <label>Key <input id="config-key" list="config-keys" value=${cfgKey} onInput=${(e) => setCfgKey(e.target.value)} required /></label>
            <datalist id="config-keys">${Object.keys(spot.config || {}).map((k) => html`<option value=${k} />`)}</datalist>
            <label>Value (JSON or text) <input id="config-value" value=${cfgValue} onInput=${(e) => setCfgValue(e.target.value)} /></label>
            <button class="primary" type="submit">Queue config change</button>
          </form>
          <h2>Firmware</h2>
          <form class="stack" id="firmware-form" onSubmit=${queueFirmware}>
            <label>URL (relative to the server) <input id="firmware-url" value=${fwUrl} onInput=${(e) => setFwUrl(e.target.value)} placeholder="/firmware/beta/beta22.bin" required /></label>
            <label>Version <input id="firmware-version" value=${fwVersion} onInput=${(e) => setFwVersion(e.target.value)} /></label>
            <button class="primary" type="submit">Queue firmware request</button>
          </form>
          <h2>Reset</h2>
          <button class="danger" id="reset-spot" onClick=${reset}>Reset to factory defaults</button>`
          : html`<p class="muted">This key is read-only: no actions.</p>`}
      </section>
    </div>
    <section class="panel"><h2>Recent events</h2>
      <table id="spot-events"><thead><tr><th>Time</th><th>Topic</th></tr></thead>
      <tbody>${events.slice(0, 50).map((e) => html`<tr key=${e.id}>
        <td>${fmtTime(e.payload && (e.payload.time_created || e.payload.time_updated))}</td><td>${e.topic}</td></tr>`)}</tbody></table>
      ${events.length ? null : html`<p class="muted">None since the page opened.</p>`}
    </section>`;
}

// ---------------------------------------------------------------- locations and items

const LOCATIONS_PAGE = 25;
const ITEMS_PAGE = 50;

function ItemsTable({ items, labels, select }) {
  return html`<table class="items"><thead><tr><th>Code</th><th>Label</th><th>Present</th><th>Location</th><th>Moved</th></tr></thead>
    <tbody>${items.map((i) => html`<tr key=${i.id} data-code=${i.code_hex}>
      <td><a href=${`#/items?item=${i.id}`} onClick=${(e) => { e.preventDefault(); select(i.id); }}>${i.code_hex}</a></td>
      <td>${typeof i.label === 'string' ? i.label : ''}</td>
      <td class=${i.is_present ? 'on' : 'off'}>${i.is_present ? 'yes' : 'no'}</td>
      <td>${labels.get(i.location) || i.location || '—'}</td><td>${fmtTime(i.time_moved)}</td></tr>`)}</tbody></table>`;
}

function ItemDetail({ id, labels }) {
  const [item, setItem] = useState(null);
  const [moves, setMoves] = useState([]);
  const error = usePoll(async () => {
    setItem(await api(`/api/items/${enc(id)}`));
    const page = await api(`/api/events?data.id=${enc(id)}&limit=50`);
    setMoves(page.results.filter((e) => e.topic.startsWith(`items/${id}/`)));
  }, 3000, [id]);
  if (!item) return html`<${ErrorLine} error=${error} />`;
  return html`<section class="panel" id="item-detail"><h2>Item ${item.code_hex}</h2>
    <${ErrorLine} error=${error} />
    <dl class="kv"><dt>Technology</dt><dd>${item.technology}</dd>
      <dt>Present</dt><dd>${item.is_present ? 'yes' : 'no'}</dd>
      <dt>Location</dt><dd>${labels.get(item.location) || item.location || '—'}</dd>
      <dt>Moves</dt><dd>${fmtNum(item.move_count)}</dd><dt>Last moved</dt><dd>${fmtTime(item.time_moved)}</dd></dl>
    <h2>Recent moves</h2>
    <table><thead><tr><th>Time</th><th>What</th></tr></thead><tbody>
      ${moves.map((e) => {
        const t = e.topic.split('/');
        const what = t[2] === 'moved-to' ? `moved to ${labels.get(t[3]) || t[3]}` : t[2];
        return html`<tr key=${e.id}><td>${fmtTime(e.time_created)}</td><td>${what}</td></tr>`;
      })}</tbody></table>
    ${moves.length ? null : html`<p class="muted">No moves in the events log.</p>`}</section>`;
}

function hashParams() {
  const q = location.hash.split('?')[1] || '';
  return new URLSearchParams(q);
}

function Items() {
  const params = hashParams();
  const [ov, setOv] = useState(null);
  const [labelFilter, setLabelFilter] = useState('');
  const [locPage, setLocPage] = useState(0);
  const [location_, setLocation] = useState(params.get('location'));
  const [item, setItem] = useState(params.get('item'));
  const [starts, setStarts] = useState([null]);
  const [items, setItems] = useState(null);
  const [search, setSearch] = useState('');
  const [found, setFound] = useState(null);
  const ovError = usePoll(async () => setOv(await api('/api/dashboard/overview')), 3000);
  const labels = useMemo(() => new Map((ov ? ov.locations : []).map((l) => [l.id, l.label])), [ov]);
  const after = starts[starts.length - 1];
  const itemsError = usePoll(async () => {
    if (!location_) { setItems(null); return; }
    let q = `/api/items?location=${enc(location_)}&is_present=true&sort=id&limit=${ITEMS_PAGE}`;
    if (after) q += `&after_id=${enc(after)}`;
    setItems(await api(q));
  }, 2000, [location_, after]);
  const searchError = usePoll(async () => {
    if (!search.trim()) { setFound(null); return; }
    setFound(await api(`/api/dashboard/items?q=${enc(search.trim())}&limit=${ITEMS_PAGE}`));
  }, 3000, [search]);
  const wanted = labelFilter.trim().toLowerCase();
  const locs = (ov ? ov.locations : []).filter((l) => !wanted || l.label.toLowerCase().includes(wanted));
  const shown = locs.slice(locPage * LOCATIONS_PAGE, (locPage + 1) * LOCATIONS_PAGE);
  const pick = (id) => { setLocation(id); setStarts([null]); };
  const rows = items ? items.results : [];
  return html`<h1>Locations and items</h1>
    <${ErrorLine} error=${ovError || itemsError || searchError} />
    <div class="toolbar">
      <label>Find items <input id="item-search" type="search" size="28" value=${search}
        placeholder="code prefix or label" onInput=${(e) => setSearch(e.target.value)} /></label>
    </div>
    ${found ? html`<section class="panel" id="search-results"><h2>Items matching “${search}”${found.is_limited ? ` (first ${ITEMS_PAGE})` : ''}</h2>
      <${ItemsTable} items=${found.results} labels=${labels} select=${setItem} /></section>` : null}
    ${item ? html`<${ItemDetail} id=${item} labels=${labels} />` : null}
    <div class="grid2">
      <section class="panel"><h2>Items at ${location_ ? labels.get(location_) || location_ : '…'}</h2>
        ${location_ ? html`<${ItemsTable} items=${rows} labels=${labels} select=${setItem} />
          <div class="pager">
            <button disabled=${starts.length < 2} onClick=${() => setStarts(starts.slice(0, -1))}>Previous</button>
            <button disabled=${!items || !items.is_limited || !rows.length}
              onClick=${() => setStarts([...starts, rows[rows.length - 1].id])}>Next</button>
            <span class="muted">page ${starts.length}</span></div>`
          : html`<p class="muted">Pick a location.</p>`}
      </section>
      <section class="panel"><h2>Locations</h2>
        <input type="search" aria-label="filter locations" placeholder="filter by label" value=${labelFilter}
          onInput=${(e) => { setLabelFilter(e.target.value); setLocPage(0); }} />
        <table id="locations-table"><thead><tr><th>Location</th><th class="num">Items present</th></tr></thead>
          <tbody>${shown.map((l) => html`<tr key=${l.id} data-location=${l.id}>
            <td><a href=${`#/items?location=${l.id}`} aria-current=${l.id === location_ ? 'true' : undefined}
              onClick=${(e) => { e.preventDefault(); pick(l.id); }}>${l.label}</a></td>
            <td class="num">${fmtNum(l.items_present)}</td></tr>`)}</tbody></table>
        <div class="pager">
          <button disabled=${locPage === 0} onClick=${() => setLocPage(locPage - 1)}>Previous</button>
          <button disabled=${(locPage + 1) * LOCATIONS_PAGE >= locs.length} onClick=${() => setLocPage(locPage + 1)}>Next</button>
          <span class="muted">${fmtNum(locs.length)} locations</span></div>
      </section>
    </div>`;
}

// ---------------------------------------------------------------- live events

function Live() {
  const [filter, setFilter] = useState('#');
  const [cap, setCap] = useState(2000);
  const [paused, setPaused] = useState(false);
  const [, setVersion] = useState(0);
  const list = useRef(null);
  const held = useRef(0);
  if (list.current === null) list.current = bus.recent.slice(-cap).reverse();
  const matching = (e) => topicMatches(filter, e.topic);
  const rebuild = (f, c) => {
    list.current = bus.recent.filter((e) => topicMatches(f, e.topic)).slice(-c).reverse();
    held.current = 0;
    setVersion((v) => v + 1);
  };
  useEvents((batch) => {
    const mine = batch.filter(matching);
    if (!mine.length) return;
    if (paused) { held.current += mine.length; setVersion((v) => v + 1); return; }
    list.current = mine.reverse().concat(list.current);
    if (list.current.length > cap) list.current.length = cap;
    setVersion((v) => v + 1);
  });
  const items = list.current;
  return html`<h1>Live events</h1>
    <div class="toolbar">
      <label>Topic filter <input id="topic-filter" value=${filter} size="30"
        onChange=${(e) => { setFilter(e.target.value || '#'); rebuild(e.target.value || '#', cap); }} /></label>
      <label>Keep <select value=${cap} onChange=${(e) => { const c = Number(e.target.value); setCap(c); rebuild(filter, c); }}>
        ${[200, 2000, 10000].map((c) => html`<option value=${c}>${fmtNum(c)}</option>`)}</select></label>
      <button id="pause" onClick=${() => { if (paused) rebuild(filter, cap); setPaused(!paused); }}>
        ${paused ? `Resume (${fmtNum(held.current)} new)` : 'Pause'}</button>
      <span class="muted">${fmtNum(items.length)} shown${bus.dropped ? `, ${fmtNum(bus.dropped)} dropped while the tab was hidden` : ''}</span>
    </div>
    <${VirtualList} id="live-events" items=${items} height=${Math.max(240, window.innerHeight - 220)}
      renderRow=${(e) => html`<span class="t">${new Date(e.receivedAt).toLocaleTimeString()}</span><span class="t">${e.id}</span>${e.topic}`} />`;
}

// ---------------------------------------------------------------- subscriptions

function Subscriptions() {
  const [subs, setSubs] = useState(null);
  const [form, setForm] = useState({ topic_filter: '#', target_url: '', description: '', target_retry: true });
  const [actionError, setActionError] = useState(null);
  const load = async () => {
    const all = [];
    let url = '/api/subscriptions?limit=1000';
    for (let pages = 0; url && pages < 10; pages += 1) {
      const page = await api(url);
      all.push(...page.results);
      url = page.is_limited ? nextUrl(page) : null;
    }
    setSubs(all);
  };
  const error = usePoll(load, 2000);
  const create = async (e) => {
    e.preventDefault();
    setActionError(null);
    try {
      const body = { topic_filter: form.topic_filter, target_url: form.target_url, target_retry: form.target_retry };
      if (form.description) body.description = form.description;
      await api('/api/subscriptions', { method: 'POST', body });
      setForm({ ...form, target_url: '', description: '' });
      await load();
    } catch (err) { setActionError(err.message); }
  };
  const remove = async (s) => {
    if (!window.confirm(`Delete the subscription to ${s.target_url}?`)) return;
    try { await api(`/api/subscriptions/${s.id}`, { method: 'DELETE' }); await load(); } catch (err) { setActionError(err.message); }
  };
  const field = (name) => (e) => setForm({ ...form, [name]: e.target.type === 'checkbox' ? e.target.checked : e.target.value });
  return html`<h1>Webhook subscriptions</h1>
    <${ErrorLine} error=${error || actionError} />
    <div class="panel"><table id="subscriptions-table">
      <thead><tr><th>Id</th><th>Topic filter</th><th>Target</th><th>State</th><th class="num">Delivered</th>
        <th class="num">Failed</th><th class="num">Queued</th><th>Last error</th><th></th></tr></thead>
      <tbody>${(subs || []).map((s) => html`<tr key=${s.id} data-id=${s.id}>
        <td>${s.id}</td><td>${s.topic_filter}</td><td>${s.target_url}</td><td>${s.state}</td>
        <td class="num delivered">${fmtNum(s.delivered_count)}</td><td class="num">${fmtNum(s.failed_count)}</td>
        <td class="num">${fmtNum(s.queued_count)}</td><td class="error">${s.last_error || ''}</td>
        <td><button class="danger" onClick=${() => remove(s)} aria-label=${`delete subscription ${s.id}`}>Delete</button></td>
      </tr>`)}</tbody></table>
      ${subs && !subs.length ? html`<p class="muted">No subscriptions.</p>` : null}</div>
    <h2>New subscription</h2>
    <form class="stack" id="subscription-form" onSubmit=${create}>
      <label>Topic filter <input id="sub-filter" value=${form.topic_filter} onInput=${field('topic_filter')} required /></label>
      <label>Target URL <input id="sub-target" type="url" value=${form.target_url} onInput=${field('target_url')} required placeholder="https://example.org/hook" /></label>
      <label>Description <input id="sub-description" value=${form.description} onInput=${field('description')} /></label>
      <label><span><input type="checkbox" checked=${form.target_retry} onChange=${field('target_retry')} /> retry failed deliveries</span></label>
      <button class="primary" type="submit">Create subscription</button>
    </form>`;
}

// ---------------------------------------------------------------- shell

function SignIn({ onSignedIn, message }) {
  const [key, setKey] = useState('');
  const [error, setError] = useState(message);
  const submit = async (e) => {
    e.preventDefault();
    apiKey = key.trim();
    try {
      const who = await api('/api/whoami');
      sessionStorage.setItem(KEY_STORE, apiKey);
      onSignedIn(who);
    } catch (err) {
      apiKey = '';
      setError(err.status === 401 ? 'That key was refused: unknown, revoked or mistyped.' : err.message);
    }
  };
  return html`<main><form class="signin stack" id="signin" onSubmit=${submit}>
    <h1>spot dashboard</h1>
    <p class="muted">Sign in with an API key (the first admin key is in <code>&lt;data&gt;/admin.key</code>;
      make more with <code>spot keys create --role read</code>). It is kept in this tab only.</p>
    <label>API key <input id="api-key" type="password" autocomplete="off" value=${key}
      onInput=${(e) => setKey(e.target.value)} required autofocus /></label>
    <${ErrorLine} error=${error} />
    <button class="primary" type="submit">Sign in</button></form></main>`;
}

const PAGES = [
  ['#/overview', 'Overview'], ['#/spots', 'Spots'], ['#/items', 'Locations & items'],
  ['#/events', 'Live events'], ['#/subscriptions', 'Subscriptions', 'admin'],
];

function useHash() {
  const [hash, setHash] = useState(location.hash || '#/overview');
  useEffect(() => {
    const on = () => setHash(location.hash || '#/overview');
    window.addEventListener('hashchange', on);
    return () => window.removeEventListener('hashchange', on);
  }, []);
  return hash;
}

function App() {
  const [who, setWho] = useState(null);
  const [checked, setChecked] = useState(!apiKey);
  const [message, setMessage] = useState(null);
  const hash = useHash();
  const conn = useConnState();
  const signOut = useCallback((why) => {
    sessionStorage.removeItem(KEY_STORE);
    apiKey = '';
    disconnectPush();
    stopSampler();
    setMessage(typeof why === 'string' ? why : null);
    setWho(null);
  }, []);
  onUnauthorized = signOut;
  useEffect(() => {
    if (!apiKey) return;
    api('/api/whoami').then(setWho, () => signOut()).finally(() => setChecked(true));
  }, []);
  useEffect(() => {
    if (!who) return undefined;
    connectPush();
    startSampler();
    return () => { disconnectPush(); stopSampler(); };
  }, [who]);
  if (!checked) return html`<p class="loading">Signing in…</p>`;
  if (!who) return html`<${SignIn} onSignedIn=${(w) => { setMessage(null); setWho(w); }} message=${message} />`;
  const path = hash.split('?')[0];
  const go = (h) => { location.hash = h; };
  let page;
  const spot = /^#\/spots\/(.+)$/.exec(path);
  if (spot) page = html`<${SpotDetail} id=${decodeURIComponent(spot[1])} role=${who.role} />`;
  else if (path === '#/spots') page = html`<${Spots} />`;
  else if (path === '#/items') page = html`<${Items} key=${hash} />`;
  else if (path === '#/events') page = html`<${Live} />`;
  else if (path === '#/subscriptions' && who.role === 'admin') page = html`<${Subscriptions} />`;
  else page = html`<${Overview} go=${go} />`;
  const current = spot ? '#/spots' : path;
  return html`<a class="skip" href="#main" onClick=${(e) => { e.preventDefault(); document.getElementById('main').focus(); }}>Skip to content</a>
    <header class="top"><span class="brand">spot</span>
      <nav aria-label="pages">${PAGES.filter(([, , need]) => !need || who.role === need).map(([h, label]) =>
        html`<a href=${h} aria-current=${current === h ? 'page' : undefined}>${label}</a>`)}</nav>
      <span class="who"><span class=${`conn ${conn}`} title=${`live updates: ${conn}`} aria-label=${`live updates ${conn}`}></span>
        <span id="whoami">key ${who.key_id} (${who.role})</span>
        <button id="signout" onClick=${() => signOut()}>Sign out</button></span>
    </header>
    <main id="main" tabindex="-1">${page}</main>`;
}

const root = document.getElementById('app');
root.textContent = '';
render(html`<${App} />`, root);
window.__spotDashboardReady = performance.now();
