// The geoiot live map, the page's entry module: it wires the store, the API client, the layers and the panel.
// A view change writes the URL hash, points the event stream at the view and refreshes; a refresh fetches and
// draws the view (and polls the alerts while the stream is not open), nothing else.
// window.geoiotMap = {map, snapshot()}: the Leaflet map and what is drawn, for debugging and the browser tests.
import * as api from "./api.js";
import { createAlerts } from "./alerts.js";
import { createEventStream } from "./events.js";
import { startFences } from "./fences.js";
import { buildFilterPanel, showFilterError, showFilters } from "./filters.js";
import { createCellsLayer } from "./layers/cells.js";
import { createHeatLayer } from "./layers/heatmap.js";
import { createLegend } from "./layers/legend.js";
import { createMarkersLayer } from "./layers/markers.js";
import { createNowLayer } from "./layers/now.js";
import { fenceLegend, speedLegend } from "./lib/colors.js";
import { esc } from "./lib/format.js";
import { bboxBounds, viewBBox } from "./lib/geo.js";
import { DEFAULT_TRAIL_MIN } from "./lib/hash.js";
import { trackTable } from "./lib/popups.js";
import { advanceClock, isStale, trackOf } from "./lib/tracks.js";
import { createReplay } from "./replay.js";
import { markerLimit, nowMode, readHash, state, timeWindow, writeHash } from "./store.js";
import { createTrail } from "./trail.js";

const $ = (id) => document.getElementById(id);
const say = (text) => { $("status").textContent = text; };
const CONNECTION = { open: "live (pushed)", connecting: "connecting…", reconnecting: "reconnecting… (polling)",
                     failed: "push unavailable (polling)", off: "polling" };

function createMap(config) {
  const map = L.map("map", { worldCopyJump: false, maxZoom: 22, preferCanvas: true });
  if (config.tileUrl) {
    L.tileLayer(config.tileUrl, { maxZoom: 22, maxNativeZoom: 19, attribution: config.tileAttribution || "" })
      .addTo(map);
  }
  return map;
}

async function main() {
  state.config = await api.config();
  const h = readHash();
  state.staleMs = h.stale !== null && h.stale > 0 ? Math.round(h.stale * 60000) : state.config.staleMs || 300000;
  state.trailMin = h.trail !== null && h.trail > 0 ? h.trail : DEFAULT_TRAIL_MIN;
  state.view = h.view === "density" ? "density" : "now";
  state.where = h.where;

  const map = createMap(state.config);
  const legend = createLegend(map);
  const cells = createCellsLayer(map, legend);
  const markers = createMarkersLayer(map);
  const trail = createTrail(map, say);
  const now = createNowLayer(map, { popup: trackPopup, onClick: showTrail });
  const heat = createHeatLayer(map);
  const alerts = createAlerts($("alerts"));
  const stream = createEventStream({
    target: () => (state.replay ? null : eventsURL()),
    onOpen: () => fences.poll(false), // fence changes missed while the stream was not open
    onFences: () => fences.poll(false),
    onGap: () => alerts.poll(), // alerts older than the server keeps for a resume: the recent ones from the poll
    onAlert: (alert) => alerts.add([alert], "sse"),
    onLatest: pushed,
    onStatus: (s) => {
      $("connection").textContent = CONNECTION[s] || s;
      $("connection").className = "small conn-" + s;
    },
  });
  const fences = startFences(map, state.config.refreshMs, stream.isOpen);
  const replay = createReplay(changed, () => trail.clear());

  function currentBBox() {
    const b = map.getBounds();
    return viewBBox(b.getWest(), b.getSouth(), b.getEast(), b.getNorth());
  }
  const eventsURL = () => api.eventsURL({ bbox: (state.bbox || currentBBox()).join(","), limit: markerLimit(),
                                          where: state.where });
  // Pushed updates keep the now view current: polling only while the stream is not open for this view.
  const streamLive = () => stream.live(eventsURL());

  // --- the now view --------------------------------------------------------------------------------
  function trackPopup(track) {
    const f = state.now.get(track);
    if (!f) return esc(track);
    return trackTable(f, state.config, { stale: isStale(f.properties, state.clock, state.staleMs),
                                         trailMin: state.trailMin });
  }
  function showTrail(track) {
    const f = state.now.get(track);
    if (!f || typeof f.properties.time !== "number") return;
    trail.show(track, f.properties.time, state.trailMin, state.where);
  }
  // The shown trail follows its track: a newer report redraws the last minutes up to it.
  function followTrail() {
    const t = trail.current(), f = t && state.now.get(t.track);
    if (f && !t.loading && typeof f.properties.time === "number" && f.properties.time > t.end) showTrail(t.track);
  }
  function drawNow() {
    cells.clear(); markers.clear();
    state.staleCount = now.sync(state.now, { clock: state.clock, staleMs: state.staleMs, colorBy: state.colorBy });
    state.mode = "now";
    const ids = [...state.now.values()].flatMap((f) => f.properties.geofences || []);
    legend.show(state.colorBy === "speed" ? speedLegend() : fenceLegend(ids));
    heat.draw([...state.now.values()].map((f) => [f.geometry.coordinates[1], f.geometry.coordinates[0], 1]),
              state.heat);
  }
  function showNowTotal(total, shown) {
    state.total = total;
    $("total").textContent = `${total.toLocaleString("en")} tracks in view` +
      (shown < total ? ` (newest ${shown.toLocaleString("en")} shown)` : "") +
      (state.staleCount ? `, ${state.staleCount.toLocaleString("en")} stale` : "");
  }
  function takeNow(features, removed) { // removed: null for a whole view, else the tracks that left it
    state.clock = advanceClock(state.clock, features);
    if (removed === null) state.now = new Map();
    for (const track of removed || []) state.now.delete(String(track));
    for (const f of features) state.now.set(trackOf(f), f);
    drawNow();
    followTrail();
  }
  // A pushed `latest` event: the whole view (full) or what changed. Paused, or not showing the arrows, the map
  // holds still and takes the next full view.
  function pushed(fc) {
    const features = Array.isArray(fc.features) ? fc.features : [];
    if (!nowMode() || state.mode === "now-cells" || state.paused) {
      state.pendingFull = true;
      return;
    }
    takeNow(features, fc.full ? null : fc.removed);
    showNowTotal(typeof fc.total === "number" ? fc.total : state.now.size, state.now.size);
  }
  const cellCentroids = (fc) => fc.features.filter((f) => f.properties.centroid).map((f) =>
    [f.properties.centroid[1], f.properties.centroid[0], f.properties.count]);
  const cellsTotal = (fc, what) => `${fc.total.toLocaleString("en")} ${what} in view` +
    (fc.truncated ? " (fullest cells shown)" : "");

  async function refreshNow(bbox, signal) {
    if (state.latestCells !== false) {
      try {
        const fc = await api.latestCells({ bbox, zoom: map.getZoom(), where: state.where }, signal);
        state.latestCells = true;
        if (fc.total > state.config.markerThreshold) {
          state.now = new Map();
          markers.clear(); now.clear();
          cells.draw(fc, "tracks");
          state.mode = "now-cells"; state.total = fc.total;
          heat.draw(cellCentroids(fc), state.heat);
          $("total").textContent = cellsTotal(fc, "tracks");
          return;
        }
      } catch (err) {
        // a server without per-cell counts of current tracks: markers of the newest, as many as allowed
        if (err.status === 400 && /source/.test(err.message)) state.latestCells = false; else throw err;
      }
    }
    if (streamLive() && !state.pendingFull) { drawNow(); showNowTotal(state.total, state.now.size); return; }
    const fc = await api.latest({ bbox, limit: markerLimit(), where: state.where }, signal);
    state.polls += 1; state.pendingFull = false;
    takeNow(fc.features, null);
    showNowTotal(fc.total, fc.features.length);
  }
  async function refreshDensity(bbox, signal) {
    now.clear();
    const query = { bbox, zoom: map.getZoom(), window: timeWindow(), where: state.where, limit: markerLimit() };
    const fc = await api.cells(query, signal);
    state.total = fc.total;
    if (fc.total > state.config.markerThreshold) {
      markers.clear();
      cells.draw(fc, "observations");
      state.mode = "cells";
      heat.draw(cellCentroids(fc), state.heat);
    } else {
      const obs = await api.observations(query, signal);
      cells.clear();
      markers.draw(obs, state.colorBy);
      legend.show(null);
      state.mode = "markers";
      heat.draw(obs.features.map((f) => [f.geometry.coordinates[1], f.geometry.coordinates[0], 1]), state.heat);
    }
    $("total").textContent = cellsTotal(fc, "observations");
  }

  let inflight = null;
  async function refresh() {
    if (inflight) inflight.abort();
    const ctrl = new AbortController();
    inflight = ctrl;
    state.loading = true;
    state.bbox = currentBBox();
    const bbox = state.bbox.join(",");
    try {
      if (nowMode()) await refreshNow(bbox, ctrl.signal); else await refreshDensity(bbox, ctrl.signal);
      state.lastError = null;
      showFilterError("");
      say(`updated ${new Date().toLocaleTimeString()}`);
    } catch (err) {
      if (err.name === "AbortError") return;
      state.lastError = String(err.message || err);
      say(`error: ${state.lastError}`);
      if (err.status === 400 && /where/.test(state.lastError)) showFilterError(state.lastError);
    } finally {
      if (inflight === ctrl) { inflight = null; state.loading = false; state.refreshes += 1; }
    }
    if (!stream.isOpen()) alerts.poll();
  }
  // The view changed: into the URL, the stream follows it, then a refresh.
  function changed() {
    writeHash(map);
    state.bbox = currentBBox();
    stream.follow();
    refresh();
  }
  function setFilters(where) {
    const differ = JSON.stringify(where) !== JSON.stringify(state.where);
    state.where = where;
    showFilters(where);
    if (differ) { // other tracks: nothing drawn stays; the stream of the new filters starts afresh
      trail.clear();
      state.now = new Map(); now.clear();
    }
    changed();
  }

  window.geoiotMap = {
    map,
    /** What the page shows, as plain data. */
    snapshot: () => ({
      mode: state.mode, view: state.view, replay: state.replay, playing: state.playing, paused: state.paused,
      heat: state.heat, heatPoints: heat.points(), colorBy: state.colorBy, where: [...state.where],
      staleMs: state.staleMs, trailMin: state.trailMin, start: state.start, end: state.end, clock: state.clock,
      bbox: state.bbox, zoom: map.getZoom(), total: state.total, staleCount: state.staleCount,
      loading: state.loading, refreshes: state.refreshes, polls: state.polls, error: state.lastError,
      cells: cells.drawn(), markers: markers.count() + now.count(), arrows: now.drawn(), trail: trail.current(),
      stream: stream.stats(), alerts: alerts.stats(), fences: fences.drawn(),
    }),
  };

  const ext = await api.extent().catch(() => null);
  if (ext && typeof ext.end === "number") state.clock = ext.end;
  if (h.z !== null && h.lat !== null && h.lon !== null) map.setView([h.lat, h.lon], h.z);
  else if (ext && ext.bbox) map.fitBounds(bboxBounds(ext.bbox));
  else map.setView([40.75, -73.95], 11);
  state.heat = h.heat; $("heat").checked = h.heat;
  if (h.color === "fence") { state.colorBy = "fence"; $("colorBy").value = "fence"; }
  $("viewMode").value = state.view;
  $("staleMin").value = String(+(state.staleMs / 60000).toFixed(4));
  $("trailMin").value = String(state.trailMin);
  buildFilterPanel(state.config.fields || {}, state.where, setFilters);
  alerts.render();
  alerts.poll(); // the history: a new stream carries only alerts from now on

  map.on("moveend", changed);
  map.on("click", () => trail.clear());
  $("pause").addEventListener("click", () => {
    state.paused = !state.paused;
    $("pause").textContent = state.paused ? "Resume" : "Pause";
    if (!state.paused) refresh();
  });
  $("heat").addEventListener("change", (e) => { state.heat = e.target.checked; changed(); });
  $("colorBy").addEventListener("change", (e) => {
    state.colorBy = e.target.value; writeHash(map);
    if (state.mode === "now") drawNow(); else refresh();
  });
  $("viewMode").addEventListener("change", (e) => { state.view = e.target.value; trail.clear(); changed(); });
  $("staleMin").addEventListener("change", (e) => {
    const v = Number(e.target.value);
    if (!(v > 0)) { e.target.value = String(+(state.staleMs / 60000).toFixed(4)); return; }
    state.staleMs = Math.round(v * 60000); writeHash(map);
    if (state.mode === "now") { drawNow(); showNowTotal(state.total, state.now.size); }
  });
  $("trailMin").addEventListener("change", (e) => {
    const v = Number(e.target.value);
    if (!(v > 0)) { e.target.value = String(state.trailMin); return; }
    state.trailMin = v; writeHash(map);
    const t = trail.current();
    if (t) showTrail(t.track);
  });
  setInterval(() => {
    if (state.paused || state.playing || document.hidden) return;
    if (nowMode() && state.mode === "now" && streamLive() && !state.pendingFull) {
      drawNow(); state.refreshes += 1; // pushed: restyled (staleness moves on), no request
      return;
    }
    refresh();
  }, state.config.refreshMs);

  if (h.mode === "replay") {
    state.start = h.start; state.end = h.end;
    await replay.set(true);
  } else {
    changed();
  }
}

main().catch((err) => {
  state.lastError = String(err.message || err);
  say(`error: ${state.lastError}`);
});
