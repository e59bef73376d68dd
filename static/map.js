/* The geoiot live map: geohash cells above the marker threshold, observations below it, a heatmap,
 * geofences, alerts and a replay slider. Plain Leaflet; all data from the read-only /api.
 * The view (centre, zoom, time window, mode) lives in the URL hash so it can be shared.
 * window.geoiotMap exposes the map and what is drawn (for people debugging, and for the browser test). */
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const COUNT_COLORS = ["#ffffb2", "#fed976", "#feb24c", "#fd8d3c", "#f03b20", "#bd0026"];
  const SPEED_CLASSES = [[2, "#2c7bb6"], [5, "#abd9e9"], [10, "#fdae61"], [20, "#f46d43"], [Infinity, "#d7191c"]];
  const state = {
    map: null, config: null, extent: null, cells: 0, markers: 0, total: 0, mode: "none", refreshes: 0,
    heat: false, replay: false, playing: false, paused: false, colorBy: "speed", lastError: null,
    start: null, end: null, windowMs: 900000, speed: 600, loading: false,
  };
  window.geoiotMap = state;

  // --- URL hash: #z=11&lat=40.75&lon=-73.95&mode=replay&start=..&end=..&heat=1&color=speed ---------------
  function readHash() {
    const h = new URLSearchParams(location.hash.slice(1));
    const num = (k) => (h.has(k) && isFinite(Number(h.get(k))) ? Number(h.get(k)) : null);
    return { z: num("z"), lat: num("lat"), lon: num("lon"), start: num("start"), end: num("end"),
             mode: h.get("mode"), heat: h.get("heat") === "1", color: h.get("color") };
  }
  function writeHash() {
    const c = state.map.getCenter();
    const h = new URLSearchParams({ z: state.map.getZoom(), lat: c.lat.toFixed(5), lon: c.lng.toFixed(5),
                                    mode: state.replay ? "replay" : "live" });
    if (state.replay && state.end !== null) { h.set("start", state.start); h.set("end", state.end); }
    if (state.heat) h.set("heat", "1");
    if (state.colorBy !== "speed") h.set("color", state.colorBy);
    history.replaceState(null, "", "#" + h.toString());
  }

  // --- helpers ------------------------------------------------------------------------------------
  async function getJSON(url, signal) {
    const resp = await fetch(url, { signal });
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.error || resp.statusText);
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
  const fmtTime = (ms) => new Date(ms).toISOString().replace(".000Z", "Z");
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

  // --- layers -------------------------------------------------------------------------------------
  let cellLayer, markerLayer, labelLayer, heatLayer, legend;

  function countBreaks(counts) {
    const max = Math.max(1, ...counts);
    return COUNT_COLORS.map((_, i) => Math.max(1, Math.round(Math.pow(max, i / COUNT_COLORS.length))));
  }
  function countColor(count, breaks) {
    let k = 0;
    breaks.forEach((b, i) => { if (count >= b) k = i; });
    return COUNT_COLORS[k];
  }
  function showLegend(breaks) {
    if (legend) legend.remove();
    if (!breaks) { legend = null; return; }
    legend = L.control({ position: "bottomleft" });
    legend.onAdd = () => {
      const div = L.DomUtil.create("div", "legend");
      div.innerHTML = "<b>observations per cell</b><br>" + breaks.map((b, i) =>
        `<i style="background:${COUNT_COLORS[i]}"></i>${b}${i + 1 < breaks.length ? "–" + (breaks[i + 1] - 1) : "+"}`
      ).join("<br>");
      return div;
    };
    legend.addTo(state.map);
  }
  function drawCells(fc) {
    const counts = fc.features.map((f) => f.properties.count);
    const breaks = countBreaks(counts);
    cellLayer.clearLayers(); labelLayer.clearLayers(); markerLayer.clearLayers();
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
    showLegend(breaks);
    state.cells = fc.features.length; state.markers = 0; state.mode = "cells";
    state.cellCountSum = counts.reduce((a, b) => a + b, 0);
  }
  function speedColor(v) {
    for (const [limit, color] of SPEED_CLASSES) if ((v || 0) < limit) return color;
    return SPEED_CLASSES[SPEED_CLASSES.length - 1][1];
  }
  function popup(props) {
    const rows = Object.entries(props).filter(([, v]) => v !== null && v !== undefined)
      .map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(Array.isArray(v) ? v.join(", ") : v)}</td></tr>`);
    return `<table class="popup-table">${rows.join("")}</table>`;
  }
  function drawMarkers(fc) {
    cellLayer.clearLayers(); labelLayer.clearLayers(); markerLayer.clearLayers();
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

  // --- refresh ------------------------------------------------------------------------------------
  let inflight = null;
  async function refresh() {
    if (inflight) inflight.abort();
    const ctrl = new AbortController();
    inflight = ctrl;
    state.loading = true;
    state.bbox = viewBBox();
    const bbox = state.bbox.join(",");
    try {
      const cells = await getJSON(`/api/aggregate?bbox=${bbox}&zoom=${state.map.getZoom()}${timeQuery()}`,
                                  ctrl.signal);
      state.total = cells.total;
      if (cells.total > state.config.markerThreshold) {
        drawCells(cells);
        drawHeat(cells.features.filter((f) => f.properties.centroid).map((f) =>
          [f.properties.centroid[1], f.properties.centroid[0], f.properties.count]));
      } else {
        const obs = await getJSON(`/api/observations?bbox=${bbox}&limit=${Math.max(1, state.config.markerThreshold)}` +
                                  timeQuery(), ctrl.signal);
        drawMarkers(obs);
        drawHeat(obs.features.map((f) => [f.geometry.coordinates[1], f.geometry.coordinates[0], 1]));
      }
      $("total").textContent = `${cells.total.toLocaleString("en")} observations in view` +
        (cells.truncated ? " (fullest cells shown)" : "");
      state.lastError = null;
      $("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      if (err.name === "AbortError") return;
      state.lastError = String(err.message || err);
      $("status").textContent = `error: ${state.lastError}`;
    } finally {
      if (inflight === ctrl) { inflight = null; state.loading = false; state.refreshes += 1; }
    }
    refreshAlerts();
  }
  async function refreshAlerts() {
    try {
      const body = await getJSON("/api/alerts?limit=50");
      $("alerts").innerHTML = body.alerts.map((a) =>
        `<li class="${esc(a.event)}">${esc(a.event)} ${esc(a.fence)}: ${esc(a.track)}` +
        (typeof a.time === "number" ? ` <span>${fmtTime(a.time)}</span>` : "") + "</li>").join("") ||
        `<li>${body.connected ? "none yet" : "alerts stream not connected"}</li>`;
    } catch (err) { /* the map itself shows data errors; alerts are secondary */ }
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
    for (const id of ["slider", "play", "speed", "windowSize"]) $(id).disabled = !on;
    if (on) {
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

  // --- start --------------------------------------------------------------------------------------
  async function main() {
    state.config = await getJSON("/api/config");
    const h = readHash();
    const map = L.map("map", { worldCopyJump: false, maxZoom: 22, preferCanvas: true });
    state.map = map;
    if (state.config.tileUrl) {
      L.tileLayer(state.config.tileUrl, { maxZoom: 22, maxNativeZoom: 19,
        attribution: state.config.tileAttribution || "" }).addTo(map);
    }
    cellLayer = L.layerGroup().addTo(map);
    labelLayer = L.layerGroup().addTo(map);
    markerLayer = L.layerGroup().addTo(map);
    getJSON("/api/geofences").then((fc) => {
      L.geoJSON(fc, { interactive: false, style: { color: "#7b3294", weight: 2, fill: false, dashArray: "4 3" } })
        .addTo(map);
      state.fences = fc.features.length;
    }).catch(() => { state.fences = 0; });

    if (h.z !== null && h.lat !== null && h.lon !== null) {
      map.setView([h.lat, h.lon], h.z);
    } else {
      const ext = await getJSON("/api/extent").catch(() => null);
      if (ext && ext.bbox) {
        let [w, s, e, n] = ext.bbox;
        if (w > e) e += 360;
        map.fitBounds([[s, w], [n, e]]);
      } else {
        map.setView([40.75, -73.95], 11);
      }
    }
    state.heat = h.heat; $("heat").checked = h.heat;
    if (h.color === "fence") { state.colorBy = "fence"; $("colorBy").value = "fence"; }

    map.on("moveend", () => { writeHash(); refresh(); });
    $("pause").addEventListener("click", () => {
      state.paused = !state.paused;
      $("pause").textContent = state.paused ? "Resume" : "Pause";
    });
    $("heat").addEventListener("change", (e) => { state.heat = e.target.checked; writeHash(); refresh(); });
    $("colorBy").addEventListener("change", (e) => { state.colorBy = e.target.value; writeHash(); refresh(); });
    $("replay").addEventListener("change", (e) => setReplay(e.target.checked));
    $("slider").addEventListener("input", () => { setWindowFromSlider(); writeHash(); refresh(); });
    $("play").addEventListener("click", () => (state.playing ? stopPlay() : startPlay()));
    $("speed").addEventListener("change", (e) => { state.speed = Number(e.target.value); });
    $("windowSize").addEventListener("change", (e) => {
      state.windowMs = Number(e.target.value);
      if (state.replay) { setWindowFromSlider(); writeHash(); refresh(); }
    });
    setInterval(() => {
      if (!state.paused && !state.playing && !document.hidden) refresh();
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
