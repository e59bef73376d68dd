/* The geoiot live map. Two views of the same read-only /api:
 *  - "now" (the default in live mode): each track's latest position as an arrow along its heading, coloured
 *    by speed or by geofence, faded when the track has not reported for a while; click one for its popup
 *    (the preset's fields) and its trail (the last minutes, segments coloured by speed). Zoomed out, above
 *    the marker threshold, it counts current tracks per geohash cell instead.
 *  - "density": geohash cells above the marker threshold, observations below it, a heatmap, and the replay
 *    slider over a time window.
 * Attribute filters (the panel is built from /api/config `fields`) go into every request, the event stream
 * included. Updates are pushed over Server-Sent Events (/api/events: latest positions of the view, alerts);
 * while that stream is not open, the map polls /api/latest and /api/alerts instead.
 * The view (centre, zoom, mode, filters, time window) lives in the URL hash so it can be shared.
 * window.geoiotMap exposes the map and what is drawn (for people debugging, and for the browser tests). */
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const COUNT_COLORS = ["#ffffb2", "#fed976", "#feb24c", "#fd8d3c", "#f03b20", "#bd0026"];
  // m/s: walking, cycling, town and highway traffic, then trains and aircraft (a flight preset too gets colours)
  const SPEED_CLASSES = [[2, "#313695"], [5, "#4575b4"], [10, "#74add1"], [20, "#fee090"], [40, "#fdae61"],
                         [100, "#f46d43"], [200, "#d73027"], [Infinity, "#7f0000"]];
  const FENCE_COLORS = ["#7b3294", "#e66101", "#008837", "#0571b0", "#ca0020", "#5e3c99", "#a6611a"];
  const NO_FENCE = "#8c8c8c";
  const RANGE_KINDS = ["int", "float", "time"];
  const VALUE_KINDS = ["string", "int", "bool"];
  const DEFAULT_TRAIL_MIN = 15;
  const SSE_RETRY_MS = [2000, 5000, 15000, 30000, 60000];
  const MAX_ALERTS = 50;
  const state = {
    map: null, config: null, extent: null, cells: 0, markers: 0, total: 0, mode: "none", refreshes: 0,
    heat: false, replay: false, playing: false, paused: false, colorBy: "speed", lastError: null,
    start: null, end: null, windowMs: 900000, speed: 600, loading: false,
    view: "now", where: [], staleMs: 300000, trailMin: DEFAULT_TRAIL_MIN, clock: 0, staleCount: 0,
    now: new Map(), trail: null, latestCells: null, polls: 0,
    sse: "off", sseUrl: null, sseFirst: false, ssePushes: 0, sseAlerts: 0, sseFailures: 0,
    alerts: [], alertPolls: 0,
  };
  window.geoiotMap = state;

  // --- URL hash: #z=11&lat=40.75&lon=-73.95&mode=live&view=now&where=vendor_id:VTS&stale=5&trail=15 ... ------
  function readHash() {
    const h = new URLSearchParams(location.hash.slice(1));
    const num = (k) => (h.has(k) && h.get(k) !== "" && isFinite(Number(h.get(k))) ? Number(h.get(k)) : null);
    return { z: num("z"), lat: num("lat"), lon: num("lon"), start: num("start"), end: num("end"),
             mode: h.get("mode"), heat: h.get("heat") === "1", color: h.get("color"), view: h.get("view"),
             where: h.getAll("where").filter((w) => w.includes(":")), stale: num("stale"), trail: num("trail") };
  }
  function writeHash() {
    const c = state.map.getCenter();
    const h = new URLSearchParams({ z: state.map.getZoom(), lat: c.lat.toFixed(5), lon: c.lng.toFixed(5),
                                    mode: state.replay ? "replay" : "live", view: state.view });
    if (state.replay && state.end !== null) { h.set("start", state.start); h.set("end", state.end); }
    if (state.heat) h.set("heat", "1");
    if (state.colorBy !== "speed") h.set("color", state.colorBy);
    if (state.staleMs !== state.config.staleMs) h.set("stale", +(state.staleMs / 60000).toFixed(4));
    if (state.trailMin !== DEFAULT_TRAIL_MIN) h.set("trail", state.trailMin);
    for (const w of state.where) h.append("where", w);
    history.replaceState(null, "", "#" + h.toString());
  }

  // --- helpers ------------------------------------------------------------------------------------
  async function getJSON(url, signal) {
    const resp = await fetch(url, { signal });
    const body = await resp.json();
    if (!resp.ok) {
      const err = new Error(body.error || resp.statusText);
      err.status = resp.status;
      throw err;
    }
    return body;
  }
  const wrap = (lon) => ((((lon + 180) % 360) + 360) % 360) - 180;
  function viewBBox() {
    const b = state.map.getBounds();
    const s = Math.max(-90, b.getSouth()), n = Math.min(90, b.getNorth());
    if (b.getEast() - b.getWest() >= 360) return [-180, s, 180, n];
    return [wrap(b.getWest()), s, wrap(b.getEast()), n].map((v) => +v.toFixed(6));
  }
  // Shift a longitude by whole turns so it is drawn next to the map centre (views across the antimeridian).
  function near(lon) {
    const c = state.map.getCenter().lng;
    return lon + 360 * Math.round((c - lon) / 360);
  }
  function timeQuery() {
    return state.replay && state.end !== null ? `&start=${state.start}&end=${state.end}` : "";
  }
  const whereQuery = () => state.where.map((w) => "&where=" + encodeURIComponent(w)).join("");
  const fmtTime = (ms) => new Date(ms).toISOString().replace(".000Z", "Z");
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  const nowMode = () => !state.replay && state.view === "now";
  const markerLimit = () => Math.max(1, state.config.markerThreshold);

  // --- layers -------------------------------------------------------------------------------------
  let cellLayer, markerLayer, labelLayer, nowLayer, trailLayer, trailRenderer, heatLayer, legend;
  const nowMarkers = new Map(); // track -> L.marker

  // Geometric class breaks up to the largest count, each once (small counts give fewer classes, spread
  // over the whole palette).
  function countBreaks(counts) {
    const max = Math.max(1, ...counts);
    return [...new Set(COUNT_COLORS.map((_, i) => Math.max(1, Math.round(Math.pow(max, i / COUNT_COLORS.length)))))];
  }
  const classColor = (i, n) => COUNT_COLORS[n <= 1 ? 0 : Math.round(i * (COUNT_COLORS.length - 1) / (n - 1))];
  function countColor(count, breaks) {
    let k = 0;
    breaks.forEach((b, i) => { if (count >= b) k = i; });
    return classColor(k, breaks.length);
  }
  function showLegend(html) {
    if (legend) legend.remove();
    if (!html) { legend = null; return; }
    legend = L.control({ position: "bottomleft" });
    legend.onAdd = () => {
      const div = L.DomUtil.create("div", "legend");
      div.innerHTML = html;
      return div;
    };
    legend.addTo(state.map);
  }
  function countLegend(breaks, what) {
    return `<b>${what} per cell</b><br>` + breaks.map((b, i) =>
      `<i style="background:${classColor(i, breaks.length)}"></i>${b}` +
      (i + 1 < breaks.length ? (breaks[i + 1] - 1 > b ? "–" + (breaks[i + 1] - 1) : "") : "+")
    ).join("<br>");
  }
  function clearNow() {
    nowLayer.clearLayers(); nowMarkers.clear();
  }
  function drawCells(fc, what) {
    const counts = fc.features.map((f) => f.properties.count);
    const breaks = countBreaks(counts);
    cellLayer.clearLayers(); labelLayer.clearLayers(); markerLayer.clearLayers(); clearNow();
    const label = fc.features.length <= 400;
    for (const f of fc.features) {
      const ring = f.geometry.coordinates[0];
      const w = near((ring[0][0] + ring[1][0]) / 2) - (ring[1][0] - ring[0][0]) / 2;
      const e = w + (ring[1][0] - ring[0][0]);
      const bounds = [[ring[0][1], w], [ring[2][1], e]];
      const color = countColor(f.properties.count, breaks);
      L.rectangle(bounds, { color: "#555", weight: 0.5, fillColor: color, fillOpacity: 0.55 })
        .bindTooltip(`${f.properties.geohash}: ${f.properties.count}`).addTo(cellLayer);
      if (label) {
        L.marker([(bounds[0][0] + bounds[1][0]) / 2, (w + e) / 2], { interactive: false, keyboard: false,
          icon: L.divIcon({ className: "cell-label", html: String(f.properties.count), iconSize: [40, 14] }) })
          .addTo(labelLayer);
      }
    }
    showLegend(countLegend(breaks, what));
    state.cells = fc.features.length; state.markers = 0; state.mode = "cells";
    state.cellCountSum = counts.reduce((a, b) => a + b, 0);
  }
  function speedColor(v) {
    for (const [limit, color] of SPEED_CLASSES) if ((v || 0) < limit) return color;
    return SPEED_CLASSES[SPEED_CLASSES.length - 1][1];
  }
  function speedLegend() {
    let low = 0;
    return "<b>speed (m/s)</b><br>" + SPEED_CLASSES.map(([limit, color]) => {
      const text = limit === Infinity ? `${low}+` : `${low}–${limit}`;
      low = limit;
      return `<i style="background:${color}"></i>${text}`;
    }).join("<br>");
  }
  // One colour per fence id (stable across refreshes: a hash of the id), grey outside every fence.
  function fenceColor(fences) {
    if (!Array.isArray(fences) || !fences.length) return NO_FENCE;
    let h = 0;
    for (const ch of String(fences[0])) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
    return FENCE_COLORS[h % FENCE_COLORS.length];
  }
  function popup(props) {
    const rows = Object.entries(props).filter(([, v]) => v !== null && v !== undefined)
      .map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(Array.isArray(v) ? v.join(", ") : v)}</td></tr>`);
    return `<table class="popup-table">${rows.join("")}</table>`;
  }
  function drawMarkers(fc) {
    cellLayer.clearLayers(); labelLayer.clearLayers(); markerLayer.clearLayers(); clearNow();
    for (const f of fc.features) {
      const p = f.properties, [lon, lat] = f.geometry.coordinates;
      const inFence = Array.isArray(p.geofences) && p.geofences.length > 0;
      const color = state.colorBy === "fence" ? (inFence ? "#7b3294" : "#4d9221") : speedColor(p.speed_mps);
      L.circleMarker([lat, near(lon)], { radius: 5, color: "#333", weight: 1, fillColor: color, fillOpacity: 0.85 })
        .bindPopup(() => popup(p)).addTo(markerLayer);
    }
    showLegend(null);
    state.markers = fc.features.length; state.cells = 0; state.mode = "markers";
  }
  function drawHeat(points) {
    if (heatLayer) { heatLayer.remove(); heatLayer = null; }
    state.heatPoints = points.length;
    if (!state.heat || !points.length) return;
    const max = Math.max(...points.map((p) => p[2]));
    heatLayer = L.heatLayer(points.map(([lat, lon, w]) => [lat, near(lon), w / max]),
                            { radius: 25, blur: 20, max: 1 }).addTo(state.map);
  }

  // --- now mode: latest positions as arrows ---------------------------------------------------------
  // Stale means no report for staleMs before the newest report the map has seen (the data's clock): a live
  // feed's newest report is about now, and replayed history fades the same way as a live feed.
  function advanceClock(features) {
    for (const f of features) {
      const t = f.properties && f.properties.time;
      if (typeof t === "number" && t > state.clock) state.clock = t;
    }
  }
  function heading(p) {
    const h = p.heading_deg;
    return typeof h === "number" && isFinite(h) ? ((h % 360) + 360) % 360 : null;
  }
  function look(f) {
    const p = f.properties;
    const stale = typeof p.time === "number" && state.clock - p.time > state.staleMs;
    const color = state.colorBy === "fence" ? fenceColor(p.geofences) : speedColor(p.speed_mps);
    return { heading: heading(p), color, stale };
  }
  function arrowIcon(track, lk) {
    const shape = lk.heading === null
      ? `<circle cx="10" cy="10" r="5" fill="${lk.color}" stroke="#222" stroke-width="1.2"/>`
      : `<path d="M10 1.5 L16 17 L10 13 L4 17 Z" fill="${lk.color}" stroke="#222" stroke-width="1.2"` +
        ` stroke-linejoin="round"/>`;
    const rotate = lk.heading === null ? "" : ` style="transform: rotate(${lk.heading.toFixed(2)}deg)"`;
    return L.divIcon({
      className: "track-icon" + (lk.stale ? " stale" : ""), iconSize: [20, 20], iconAnchor: [10, 10],
      html: `<svg class="track-arrow" width="20" height="20" viewBox="0 0 20 20" data-track="${esc(track)}"` +
            ` data-heading="${lk.heading === null ? "" : lk.heading}"${rotate}>${shape}</svg>`,
    });
  }
  // The preset's fields, whatever the preset: /api/config `fields` in its order, read from the feature.
  function trackPopup(track) {
    const f = state.now.get(track);
    if (!f) return esc(track);
    const p = f.properties, a = p.attributes || {}, sch = state.config.schema, fields = state.config.fields;
    const [lon, lat] = f.geometry.coordinates;
    const value = (name) => {
      if (name === sch.track) return p.track;
      if (name === sch.time) return p.time;
      if (name === sch.lon) return lon;
      if (name === sch.lat) return lat;
      return name in p && name !== "attributes" ? p[name] : a[name];
    };
    const show = (name, v) => {
      if (v === null || v === undefined || (Array.isArray(v) && !v.length)) return "–";
      if (fields[name] === "time" && typeof v === "number") return fmtTime(v);
      if (Array.isArray(v)) return v.join(", ");
      return typeof v === "number" && !Number.isInteger(v) ? v.toFixed(2) : v;
    };
    const names = Object.keys(fields).filter((n) => n !== "geohash");
    for (const n of Object.keys(a)) if (!names.includes(n)) names.push(n);
    const rows = names.map((n) =>
      `<tr data-field="${esc(n)}"><td>${esc(n)}</td><td>${esc(show(n, value(n)))}</td></tr>`);
    const stale = look(f).stale ? ' <span class="stale-tag">stale</span>' : "";
    return `<b>${esc(p.track)}</b>${stale}<table class="popup-table">${rows.join("")}</table>` +
           `<p class="small trail-note">trail: last ${state.trailMin} min</p>`;
  }
  function syncNow() {
    cellLayer.clearLayers(); labelLayer.clearLayers(); markerLayer.clearLayers();
    let stale = 0;
    for (const [track, f] of state.now) {
      const [lon, lat] = f.geometry.coordinates;
      const lk = look(f);
      if (lk.stale) stale += 1;
      const key = `${lk.heading}|${lk.color}|${lk.stale}`;
      let m = nowMarkers.get(track);
      if (!m) {
        m = L.marker([lat, near(lon)], { icon: arrowIcon(track, lk), keyboard: false, riseOnHover: true });
        m.bindPopup(() => trackPopup(track), { maxWidth: 320 });
        m.on("click", () => showTrail(track));
        m.lookKey = key;
        m.addTo(nowLayer);
        nowMarkers.set(track, m);
      } else {
        m.setLatLng([lat, near(lon)]);
        if (m.lookKey !== key) { m.setIcon(arrowIcon(track, lk)); m.lookKey = key; }
        if (m.isPopupOpen()) m.setPopupContent(trackPopup(track));
      }
    }
    for (const [track, m] of nowMarkers) {
      if (!state.now.has(track)) { nowLayer.removeLayer(m); nowMarkers.delete(track); }
    }
    state.markers = state.now.size; state.cells = 0; state.mode = "now"; state.staleCount = stale;
    showLegend(state.colorBy === "speed" ? speedLegend() : fenceLegend());
    drawHeat([...state.now.values()].map((f) => [f.geometry.coordinates[1], f.geometry.coordinates[0], 1]));
  }
  function fenceLegend() {
    const ids = new Set();
    for (const f of state.now.values()) for (const id of f.properties.geofences || []) ids.add(id);
    return "<b>geofence</b><br>" + [...ids].sort().slice(0, 12).map((id) =>
      `<i style="background:${fenceColor([id])}"></i>${esc(id)}`).concat(
      [`<i style="background:${NO_FENCE}"></i>none`]).join("<br>");
  }
  function nowTotal(total, shown) {
    state.total = total;
    $("total").textContent = `${total.toLocaleString("en")} tracks in view` +
      (shown < total ? ` (newest ${shown.toLocaleString("en")} shown)` : "") +
      (state.staleCount ? `, ${state.staleCount.toLocaleString("en")} stale` : "");
  }
  function replaceNow(features) {
    advanceClock(features);
    state.now = new Map(features.map((f) => [String(f.properties.track ?? f.id), f]));
    syncNow();
    followTrail();
  }
  // A pushed change: these features are new positions, the tracks in `removed` left the view (or the filters).
  function mergeNow(features, removed) {
    advanceClock(features);
    for (const track of removed || []) state.now.delete(String(track));
    for (const f of features) state.now.set(String(f.properties.track ?? f.id), f);
    syncNow();
    followTrail();
  }
  // The shown trail follows its track: a newer report redraws the last minutes up to it.
  function followTrail() {
    const t = state.trail, f = t && state.now.get(t.track);
    if (f && !t.loading && typeof f.properties.time === "number" && f.properties.time > t.end) showTrail(t.track);
  }

  // --- trails ---------------------------------------------------------------------------------------
  function metres([lon1, lat1], [lon2, lat2]) {
    const r = Math.PI / 180, dLat = (lat2 - lat1) * r, dLon = (lon2 - lon1) * r;
    const x = Math.sin(dLat / 2) ** 2 + Math.cos(lat1 * r) * Math.cos(lat2 * r) * Math.sin(dLon / 2) ** 2;
    return 2 * 6371008.8 * Math.asin(Math.min(1, Math.sqrt(x)));
  }
  let trailCtrl = null;
  async function showTrail(track) {
    const f = state.now.get(track);
    if (!f || typeof f.properties.time !== "number") return;
    if (trailCtrl) trailCtrl.abort();
    const ctrl = new AbortController();
    trailCtrl = ctrl;
    const end = f.properties.time, start = end - Math.round(state.trailMin * 60000);
    trailLayer.clearLayers();
    state.trail = { track, loading: true, start, end };
    try {
      const body = await getJSON(`/api/tracks/${encodeURIComponent(track)}?start=${start}&end=${end}` +
                                 whereQuery(), ctrl.signal);
      const coords = body.geometry.type === "LineString" ? body.geometry.coordinates : [body.geometry.coordinates];
      const times = body.properties.times || [];
      const speeds = [], colors = [];
      for (let i = 1; i < coords.length; i++) {
        const dt = (times[i] - times[i - 1]) / 1000;
        const v = dt > 0 ? metres(coords[i - 1], coords[i]) / dt : 0;
        const color = speedColor(v);
        speeds.push(v); colors.push(color);
        L.polyline([[coords[i - 1][1], near(coords[i - 1][0])], [coords[i][1], near(coords[i][0])]],
                   { color, weight: 4, opacity: 0.9, interactive: false, className: "trail-segment",
                     renderer: trailRenderer }).addTo(trailLayer);
      }
      state.trail = { track, loading: false, start, end, points: coords.length, segments: colors.length,
                      speeds, colors, complete: body.properties.complete };
      $("status").textContent = `trail of ${track}: ${coords.length} reports in the last ${state.trailMin} min`;
    } catch (err) {
      if (err.name === "AbortError") return;
      state.trail = { track, loading: false, start, end, points: 0, segments: 0, error: String(err.message || err) };
      $("status").textContent = `trail of ${track}: ${state.trail.error}`;
    } finally {
      if (trailCtrl === ctrl) trailCtrl = null;
    }
  }
  function clearTrail() {
    if (trailCtrl) trailCtrl.abort();
    trailLayer.clearLayers(); state.trail = null;
  }

  // --- refresh ------------------------------------------------------------------------------------
  let inflight = null;
  // Pushed updates keep the now view current: polling only while the stream is not open for this view.
  const sseLive = () => state.sse === "open" && state.sseFirst && state.sseUrl === eventsURL();
  async function refreshNow(bbox, signal) {
    if (state.latestCells !== false) {
      try {
        const cells = await getJSON(`/api/aggregate?source=latest&bbox=${bbox}&zoom=${state.map.getZoom()}` +
                                    whereQuery(), signal);
        state.latestCells = true;
        if (cells.total > state.config.markerThreshold) {
          state.now = new Map();
          drawCells(cells, "tracks");
          state.mode = "now-cells"; state.total = cells.total;
          drawHeat(cells.features.filter((f) => f.properties.centroid).map((f) =>
            [f.properties.centroid[1], f.properties.centroid[0], f.properties.count]));
          $("total").textContent = `${cells.total.toLocaleString("en")} tracks in view` +
            (cells.truncated ? " (fullest cells shown)" : "");
          return;
        }
      } catch (err) {
        // a server without per-cell counts of current tracks: markers of the newest, as many as allowed
        if (err.status === 400 && /source/.test(err.message)) state.latestCells = false; else throw err;
      }
    }
    if (sseLive() && !state.pendingFull) { syncNow(); nowTotal(state.total, state.now.size); return; }
    const fc = await getJSON(`/api/latest?bbox=${bbox}&limit=${markerLimit()}${whereQuery()}`, signal);
    state.polls += 1; state.pendingFull = false;
    replaceNow(fc.features);
    nowTotal(fc.total, fc.features.length);
  }
  async function refreshDensity(bbox, signal) {
    clearNow();
    const cells = await getJSON(`/api/aggregate?bbox=${bbox}&zoom=${state.map.getZoom()}${timeQuery()}${whereQuery()}`,
                                signal);
    state.total = cells.total;
    if (cells.total > state.config.markerThreshold) {
      drawCells(cells, "observations");
      drawHeat(cells.features.filter((f) => f.properties.centroid).map((f) =>
        [f.properties.centroid[1], f.properties.centroid[0], f.properties.count]));
    } else {
      const obs = await getJSON(`/api/observations?bbox=${bbox}&limit=${markerLimit()}` + timeQuery() +
                                whereQuery(), signal);
      drawMarkers(obs);
      drawHeat(obs.features.map((f) => [f.geometry.coordinates[1], f.geometry.coordinates[0], 1]));
    }
    $("total").textContent = `${cells.total.toLocaleString("en")} observations in view` +
      (cells.truncated ? " (fullest cells shown)" : "");
  }
  async function refresh() {
    if (inflight) inflight.abort();
    const ctrl = new AbortController();
    inflight = ctrl;
    state.loading = true;
    state.bbox = viewBBox();
    const bbox = state.bbox.join(",");
    connectEvents();
    try {
      if (nowMode()) await refreshNow(bbox, ctrl.signal); else await refreshDensity(bbox, ctrl.signal);
      state.lastError = null;
      $("filterError").textContent = "";
      $("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      if (err.name === "AbortError") return;
      state.lastError = String(err.message || err);
      $("status").textContent = `error: ${state.lastError}`;
      if (err.status === 400 && /where/.test(state.lastError)) $("filterError").textContent = state.lastError;
    } finally {
      if (inflight === ctrl) { inflight = null; state.loading = false; state.refreshes += 1; }
    }
    if (state.sse !== "open") refreshAlerts();
  }

  // --- alerts -------------------------------------------------------------------------------------
  const alertKey = (a) => [a.track, a.fence, a.event, a.time].join("\u0001");
  function renderAlerts() {
    $("alerts").innerHTML = state.alerts.map((a) =>
      `<li class="${esc(a.event)}" data-via="${esc(a.via)}">${esc(a.event)} ${esc(a.fence)}` +
      (a.removed ? " (fence removed)" : "") + `: ${esc(a.track)}` +
      (typeof a.time === "number" ? ` <span>${fmtTime(a.time)}</span>` : "") + "</li>").join("") ||
      `<li>${state.alertsConnected === false ? "alerts stream not connected" : "none yet"}</li>`;
  }
  // Newest first; an alert already shown (from the poll and the stream alike) is not shown twice.
  function addAlerts(list, via) {
    const seen = new Set(state.alerts.map(alertKey));
    const fresh = list.filter((a) => a && typeof a === "object" && !seen.has(alertKey(a)))
      .map((a) => Object.assign({}, a, { via }));
    if (!fresh.length) return;
    state.alerts = fresh.concat(state.alerts)
      .sort((x, y) => (typeof y.time === "number" ? y.time : 0) - (typeof x.time === "number" ? x.time : 0))
      .slice(0, MAX_ALERTS);
    renderAlerts();
  }
  async function refreshAlerts() {
    try {
      const body = await getJSON("/api/alerts?limit=50");
      state.alertPolls += 1;
      state.alertsConnected = body.connected;
      addAlerts(body.alerts, "poll");
      renderAlerts();
    } catch (err) { /* the map itself shows data errors; alerts are secondary */ }
  }

  // --- pushed updates: Server-Sent Events, polling while they are unavailable ----------------------------
  let events = null, retryTimer = null;
  function eventsURL() {
    return `/api/events?bbox=${(state.bbox || viewBBox()).join(",")}&limit=${markerLimit()}${whereQuery()}`;
  }
  function showConnection() {
    const text = { open: "live (pushed)", connecting: "connecting…", reconnecting: "reconnecting… (polling)",
                   failed: "push unavailable (polling)", off: "polling" }[state.sse] || state.sse;
    $("connection").textContent = text;
    $("connection").className = "small conn-" + state.sse;
  }
  function closeEvents() {
    if (events) events.close();
    events = null; state.sseFirst = false;
  }
  function connectEvents() {
    if (state.replay || !window.EventSource) {
      closeEvents(); state.sse = "off"; state.sseUrl = null; showConnection(); return;
    }
    const url = eventsURL();
    if (events && state.sseUrl === url && events.readyState !== EventSource.CLOSED) return;
    if (retryTimer && state.sseUrl === url) return; // a retry is scheduled for this very view
    if (retryTimer) { clearTimeout(retryTimer); retryTimer = null; }
    closeEvents();
    state.sseUrl = url; state.sse = "connecting"; showConnection();
    // a new view's stream resumes the alerts after the last event of the previous one
    const resume = state.lastEventId ? "&last_event_id=" + encodeURIComponent(state.lastEventId) : "";
    const es = new EventSource(url + resume);
    events = es;
    es.onopen = () => {
      if (events !== es) return;
      state.sse = "open"; state.sseFailures = 0; showConnection();
      window.geoiotFences.poll(false); // fence changes missed while the stream was not open
    };
    // `latest`: {total, full, removed, features}; `full` (the first one, and after this client lost some)
    // is the whole view, the others what changed. Paused, the map holds still and takes the next full view.
    es.addEventListener("latest", (e) => {
      if (events !== es) return;
      if (e.lastEventId) state.lastEventId = e.lastEventId;
      let fc;
      try { fc = JSON.parse(e.data); } catch (err) { return; }
      const features = Array.isArray(fc.features) ? fc.features : [];
      state.ssePushes += 1;
      if (fc.full) state.sseFirst = true;
      if (!state.sseFirst) return; // a change to a view this page has not had whole yet
      if (!nowMode() || state.mode === "now-cells" || state.paused) {
        state.pendingFull = true; // drawn from the next full answer or poll
        return;
      }
      if (fc.full) replaceNow(features); else mergeNow(features, fc.removed);
      nowTotal(typeof fc.total === "number" ? fc.total : state.now.size, state.now.size);
    });
    es.addEventListener("fences", () => { // a fence changed: static/fences.js fetches them now
      if (events === es) window.geoiotFences.poll(false);
    });
    es.addEventListener("gap", () => {
      if (events !== es) return;
      refreshAlerts(); // alerts older than the server keeps for a resume: the recent ones from the poll
    });
    es.addEventListener("alert", (e) => {
      if (events !== es) return;
      if (e.lastEventId) state.lastEventId = e.lastEventId;
      try {
        const alert = JSON.parse(e.data);
        state.sseAlerts += 1;
        addAlerts([alert], "sse");
      } catch (err) { /* not JSON: nothing to show */ }
    });
    es.onerror = () => {
      if (events !== es) return;
      state.sseFirst = false;
      if (es.readyState === EventSource.CLOSED) {
        // refused (404, 400, not an event stream): poll, and ask again later
        events = null; state.sse = "failed";
        const wait = SSE_RETRY_MS[Math.min(state.sseFailures, SSE_RETRY_MS.length - 1)];
        state.sseFailures += 1;
        retryTimer = setTimeout(() => { retryTimer = null; connectEvents(); }, wait);
      } else {
        state.sse = "reconnecting"; // the browser reconnects by itself, with Last-Event-ID
      }
      showConnection();
    };
  }

  // --- filters: a panel built from /api/config fields; the `where` list in the URL ----------------------
  function parseExpr(kind, expr) {
    const m = /^(>=|<=)(.+)$/.exec(expr);
    if (RANGE_KINDS.includes(kind)) {
      if (m) return m[1] === ">=" ? { min: m[2], max: "" } : { min: "", max: m[2] };
      if (/^[<>]/.test(expr)) return { raw: expr };
      if (expr.includes("..")) { const [min, max] = expr.split(".."); return { min, max }; }
    }
    return { values: expr };
  }
  // A time bound in the text a datetime-local input shows (UTC, seconds); other forms stay as typed.
  function timeInput(text) {
    if (/^-?\d{1,13}$/.test(text)) { // epoch s or ms, told apart by magnitude as the server does
      const ms = Math.abs(+text) < 1e11 ? +text * 1000 : +text;
      return ms % 1000 === 0 ? fmtTime(ms).slice(0, 19) : text;
    }
    const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d)?)Z?$/.exec(text);
    return m ? m[1] : text;
  }
  function addFilterRow(field, expr) {
    const kind = state.config.fields[field];
    if (!kind) return;
    let parsed = expr ? parseExpr(kind, expr) : {};
    // what the row's inputs cannot show (equality on a float or time, a time with an offset) stays as typed
    const local = /^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d)?$/;
    if (parsed.values !== undefined && !VALUE_KINDS.includes(kind)) parsed = { raw: expr };
    if (kind === "time" && [parsed.min, parsed.max].some((t) => t && !local.test(timeInput(t)))) parsed = { raw: expr };
    const row = document.createElement("div");
    row.className = "filter-row";
    row.dataset.field = field;
    row.dataset.kind = kind;
    const inputType = kind === "time" ? "datetime-local" : "text";
    let html = `<span class="filter-name" title="${esc(kind)}">${esc(field)}</span>`;
    if (parsed.raw !== undefined) {
      html += `<input class="f-raw" type="text" value="${esc(parsed.raw)}" aria-label="${esc(field)} expression">`;
    } else {
      if (kind === "bool") {
        html += `<select class="f-values" aria-label="${esc(field)}"><option value="true">true</option>` +
                `<option value="false"${parsed.values === "false" ? " selected" : ""}>false</option></select>`;
      } else if (VALUE_KINDS.includes(kind)) {
        html += `<input class="f-values" type="text" placeholder="${kind === "int" ? "1|2" : "a|b"}" ` +
                `value="${esc(parsed.values || "")}" aria-label="${esc(field)} is one of">`;
      }
      if (RANGE_KINDS.includes(kind)) {
        const conv = kind === "time" ? timeInput : (x) => x;
        const step = kind === "time" ? ' step="1"' : "";
        const bound = (cls, text, label) => `<input class="${cls}" type="${inputType}"${step} ` +
          `placeholder="${cls === "f-min" ? "min" : "max"}" value="${esc(conv(text || ""))}" ` +
          `aria-label="${esc(field)} ${label}">`;
        html += bound("f-min", parsed.min, "at least") + bound("f-max", parsed.max, "at most");
      }
    }
    html += `<button type="button" class="f-remove" title="remove this filter" aria-label="remove ${esc(field)}">` +
            "×</button>";
    row.innerHTML = html;
    row.querySelector(".f-remove").addEventListener("click", () => row.remove());
    $("filterRows").appendChild(row);
  }
  // The where expressions of the panel's rows (several per row when a row has values and a range: AND).
  function panelWhere() {
    const out = [];
    for (const row of $("filterRows").querySelectorAll(".filter-row")) {
      const f = row.dataset.field;
      const val = (cls) => { const el = row.querySelector(cls); return el ? el.value.trim() : ""; };
      if (val(".f-raw")) out.push(`${f}:${val(".f-raw")}`);
      if (val(".f-values")) out.push(`${f}:${val(".f-values")}`);
      const min = val(".f-min"), max = val(".f-max");
      if (min && max) out.push(`${f}:${min}..${max}`);
      else if (min) out.push(`${f}:>=${min}`);
      else if (max) out.push(`${f}:<=${max}`);
    }
    return out;
  }
  function showFilterSummary() {
    $("filterSummary").textContent = state.where.length ? state.where.join(" AND ") : "none";
  }
  function setFilters(where) {
    const changed = JSON.stringify(where) !== JSON.stringify(state.where);
    state.where = where;
    showFilterSummary();
    if (changed) { // other tracks: nothing drawn stays; the stream of the new filters starts afresh
      clearTrail();
      state.now = new Map(); clearNow();
    }
    writeHash(); refresh();
  }
  function buildFilterPanel() {
    const fields = state.config.fields || {};
    $("filterField").innerHTML = Object.entries(fields).filter(([n]) => n !== "geohash")
      .map(([n, k]) => `<option value="${esc(n)}">${esc(n)} (${esc(k)})</option>`).join("");
    $("addFilter").addEventListener("click", () => addFilterRow($("filterField").value, ""));
    $("applyFilters").addEventListener("click", () => setFilters(panelWhere()));
    $("clearFilters").addEventListener("click", () => { $("filterRows").innerHTML = ""; setFilters([]); });
    for (const w of state.where) {
      const i = w.indexOf(":");
      addFilterRow(w.slice(0, i), w.slice(i + 1));
    }
    showFilterSummary();
  }

  // --- replay -------------------------------------------------------------------------------------
  function setWindowFromSlider() {
    const ext = state.extent;
    if (!ext || ext.start === null) return;
    const frac = Number($("slider").value) / 1000;
    state.end = Math.round(ext.start + frac * (ext.end - ext.start));
    state.start = Math.max(ext.start, state.end - state.windowMs);
    $("windowLabel").textContent = `${fmtTime(state.start)} – ${fmtTime(state.end)}`;
  }
  function sliderFromWindow() {
    const ext = state.extent;
    if (!ext || ext.start === null || state.end === null || ext.end === ext.start) return;
    $("slider").value = String(Math.round(1000 * (state.end - ext.start) / (ext.end - ext.start)));
    $("windowLabel").textContent = `${fmtTime(state.start)} – ${fmtTime(state.end)}`;
  }
  async function setReplay(on) {
    state.replay = on;
    $("replay").checked = on;
    $("viewMode").disabled = on;
    for (const id of ["slider", "play", "speed", "windowSize"]) $(id).disabled = !on;
    if (on) {
      clearTrail();
      state.extent = await getJSON("/api/extent");
      if (state.end === null) { $("slider").value = "0"; setWindowFromSlider(); } else sliderFromWindow();
    } else {
      stopPlay(); state.start = state.end = null; $("windowLabel").textContent = "";
    }
    writeHash(); refresh();
  }
  let playTimer = null;
  function stopPlay() {
    state.playing = false; $("play").textContent = "Play";
    if (playTimer) clearInterval(playTimer); playTimer = null;
  }
  function startPlay() {
    state.playing = true; $("play").textContent = "Pause";
    playTimer = setInterval(() => {
      const ext = state.extent;
      if (!ext || ext.end === null) return stopPlay();
      state.end = Math.min(ext.end, (state.end ?? ext.start) + state.speed * 1000);
      state.start = Math.max(ext.start, state.end - state.windowMs);
      sliderFromWindow(); writeHash(); refresh();
      if (state.end >= ext.end) stopPlay();
    }, 1000);
  }

  state.speedColor = (v) => speedColor(v);
  state.fenceColor = (ids) => fenceColor(ids);

  // --- start --------------------------------------------------------------------------------------
  async function main() {
    state.config = await getJSON("/api/config");
    const h = readHash();
    state.staleMs = h.stale !== null && h.stale > 0 ? Math.round(h.stale * 60000) : state.config.staleMs || 300000;
    state.trailMin = h.trail !== null && h.trail > 0 ? h.trail : DEFAULT_TRAIL_MIN;
    state.view = h.view === "density" ? "density" : "now";
    state.where = h.where;
    const map = L.map("map", { worldCopyJump: false, maxZoom: 22, preferCanvas: true });
    state.map = map;
    if (state.config.tileUrl) {
      L.tileLayer(state.config.tileUrl, { maxZoom: 22, maxNativeZoom: 19,
        attribution: state.config.tileAttribution || "" }).addTo(map);
    }
    cellLayer = L.layerGroup().addTo(map);
    labelLayer = L.layerGroup().addTo(map);
    markerLayer = L.layerGroup().addTo(map);
    trailLayer = L.layerGroup().addTo(map);
    trailRenderer = L.svg({ padding: 0.5 }); // its own SVG pane: each segment an element (styled, inspectable)
    nowLayer = L.layerGroup().addTo(map);
    window.geoiotFences.start(map, state.config.refreshMs); // static/fences.js: drawn, followed, edited with a token

    const ext = await getJSON("/api/extent").catch(() => null);
    if (ext && typeof ext.end === "number") state.clock = ext.end;
    if (h.z !== null && h.lat !== null && h.lon !== null) {
      map.setView([h.lat, h.lon], h.z);
    } else if (ext && ext.bbox) {
      let [w, s, e, n] = ext.bbox;
      if (w > e) e += 360;
      map.fitBounds([[s, w], [n, e]]);
    } else {
      map.setView([40.75, -73.95], 11);
    }
    state.heat = h.heat; $("heat").checked = h.heat;
    if (h.color === "fence") { state.colorBy = "fence"; $("colorBy").value = "fence"; }
    $("viewMode").value = state.view;
    $("staleMin").value = String(+(state.staleMs / 60000).toFixed(4));
    $("trailMin").value = String(state.trailMin);
    buildFilterPanel();
    renderAlerts();
    refreshAlerts(); // the history: a new stream carries only alerts from now on

    map.on("moveend", () => { writeHash(); refresh(); });
    map.on("click", () => clearTrail());
    $("pause").addEventListener("click", () => {
      state.paused = !state.paused;
      $("pause").textContent = state.paused ? "Resume" : "Pause";
      if (!state.paused) refresh();
    });
    $("heat").addEventListener("change", (e) => { state.heat = e.target.checked; writeHash(); refresh(); });
    $("colorBy").addEventListener("change", (e) => {
      state.colorBy = e.target.value; writeHash();
      if (state.mode === "now") syncNow(); else refresh();
    });
    $("viewMode").addEventListener("change", (e) => {
      state.view = e.target.value; clearTrail(); writeHash(); refresh();
    });
    $("staleMin").addEventListener("change", (e) => {
      const v = Number(e.target.value);
      if (!(v > 0)) { e.target.value = String(+(state.staleMs / 60000).toFixed(4)); return; }
      state.staleMs = Math.round(v * 60000); writeHash();
      if (state.mode === "now") { syncNow(); nowTotal(state.total, state.now.size); }
    });
    $("trailMin").addEventListener("change", (e) => {
      const v = Number(e.target.value);
      if (!(v > 0)) { e.target.value = String(state.trailMin); return; }
      state.trailMin = v; writeHash();
      if (state.trail) showTrail(state.trail.track);
    });
    $("replay").addEventListener("change", (e) => setReplay(e.target.checked));
    $("slider").addEventListener("input", () => { setWindowFromSlider(); writeHash(); refresh(); });
    $("play").addEventListener("click", () => (state.playing ? stopPlay() : startPlay()));
    $("speed").addEventListener("change", (e) => { state.speed = Number(e.target.value); });
    $("windowSize").addEventListener("change", (e) => {
      state.windowMs = Number(e.target.value);
      if (state.replay) { setWindowFromSlider(); writeHash(); refresh(); }
    });
    setInterval(() => {
      if (state.paused || state.playing || document.hidden) return;
      if (nowMode() && state.mode === "now" && sseLive() && !state.pendingFull) {
        syncNow(); state.refreshes += 1; // pushed: restyled (staleness moves on), no request
        return;
      }
      refresh();
    }, state.config.refreshMs);

    if (h.mode === "replay") {
      state.start = h.start; state.end = h.end;
      await setReplay(true);
    } else {
      writeHash(); refresh();
    }
  }

  main().catch((err) => {
    state.lastError = String(err.message || err);
    $("status").textContent = `error: ${state.lastError}`;
  });
})();
