// The live geofences on the map: drawn from /api/geofences, fetched again on a `fences` event of /api/events
// (map.js) or, while that stream is not open, polled (each fence carries its version, so only changed fences are
// redrawn), and, with a token of scope `fences`, drawn, edited and
// deleted with Leaflet-Geoman (vendored at /vendor/geoman). Without a token the fences are read-only.
"use strict";
(function () {
  const STYLE = { color: "#7b3294", weight: 2, fill: false, dashArray: "4 3" };
  const EDIT_STYLE = { color: "#7b3294", weight: 2, fillOpacity: 0.08 };
  const TOKEN_KEY = "geoiot.fenceToken";
  const $ = (id) => document.getElementById(id);

  const fences = {
    map: null,
    group: null,
    layers: new Map(), // fence id -> { layer, version }
    version: -1,
    count: 0,
    token: "",
    pollMs: 3000,
    timer: null,
    lastError: "",
  };

  function say(text, isError) {
    fences.lastError = isError ? text : "";
    const el = $("fenceStatus");
    if (el) { el.textContent = text; el.classList.toggle("error", !!isError); }
  }

  function editable() { return !!fences.token; }

  function toGeoJSON(layer) {
    const gj = layer.toGeoJSON();
    return gj.type === "Feature" ? gj.geometry : gj;
  }

  async function send(method, id, body) {
    const resp = await fetch(`/api/geofences/${encodeURIComponent(id)}`, {
      method,
      headers: { "Authorization": `Bearer ${fences.token}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const answer = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error(`${resp.status}: ${answer.error || resp.statusText}`);
    return answer;
  }

  function attach(id, layer) {
    layer.feature = layer.feature || { properties: {} };
    layer.fenceId = id;
    layer.bindTooltip(id);
    layer.setStyle(editable() ? EDIT_STYLE : STYLE);
    layer.options.pmIgnore = !editable();
    if (editable() && L.PM) L.PM.reInitLayer(layer);
    layer.on("pm:edit", async () => {
      try {
        const props = (layer.feature && layer.feature.properties) || {};
        const stored = await send("PUT", id, { type: "Feature", properties: props, geometry: toGeoJSON(layer) });
        fences.layers.set(id, { layer, version: stored.version });
        say(`fence ${id} saved (version ${stored.version})`);
      } catch (e) {
        say(`fence ${id} not saved: ${e.message}`, true);
        poll(true); // redraw what is stored
      }
    });
  }

  function draw(feature) {
    const shown = fences.layers.get(feature.id);
    if (shown && shown.version === feature.version) return;
    if (shown) fences.group.removeLayer(shown.layer);
    let layer = null;
    L.geoJSON(feature, { style: editable() ? EDIT_STYLE : STYLE, interactive: true }).eachLayer((l) => { layer = l; });
    if (!layer) return;
    layer.feature = feature;
    attach(feature.id, layer);
    fences.group.addLayer(layer);
    fences.layers.set(feature.id, { layer, version: feature.version });
  }

  async function poll(force) {
    try {
      const resp = await fetch("/api/geofences");
      const fc = await resp.json();
      if (!resp.ok) throw new Error(fc.error || resp.statusText);
      if (force || fc.version !== fences.version) {
        const seen = new Set();
        for (const f of fc.features) { seen.add(f.id); draw(f); }
        for (const [id, shown] of [...fences.layers]) {
          if (!seen.has(id)) { fences.group.removeLayer(shown.layer); fences.layers.delete(id); }
        }
        fences.version = fc.version;
      }
      fences.count = fc.features.length;
    } catch (e) {
      say(`fences: ${e.message}`, true);
    }
  }

  function setToken(token) {
    fences.token = token || "";
    if (fences.token) sessionStorage.setItem(TOKEN_KEY, fences.token); else sessionStorage.removeItem(TOKEN_KEY);
    const map = fences.map;
    if (map && map.pm) {
      map.pm.removeControls();
      if (editable()) {
        map.pm.addControls({ position: "topleft", drawPolygon: true, editMode: true, removalMode: true,
          drawMarker: false, drawCircleMarker: false, drawPolyline: false, drawRectangle: false, drawCircle: false,
          drawText: false, dragMode: false, cutPolygon: false, rotateMode: false });
      }
    }
    for (const [id, shown] of fences.layers) attach(id, shown.layer);
    say(editable() ? "fences: editing enabled" : "fences: read-only (enter a token to edit)");
  }

  async function created(e) {
    const layer = e.layer;
    const id = (window.prompt("Fence id (letters, digits, . _ : -)") || "").trim();
    fences.map.removeLayer(layer); // what is drawn is what the server stored
    if (!id) return;
    try {
      const stored = await send("PUT", id, { type: "Feature", properties: { name: id }, geometry: toGeoJSON(layer) });
      draw(stored);
      say(`fence ${id} created (version ${stored.version})`);
    } catch (err) {
      say(`fence ${id} not created: ${err.message}`, true);
    }
  }

  async function removed(e) {
    const id = e.layer.fenceId;
    if (!id) return;
    try {
      const answer = await send("DELETE", id);
      fences.layers.delete(id);
      say(`fence ${id} deleted (version ${answer.version})`);
    } catch (err) {
      say(`fence ${id} not deleted: ${err.message}`, true);
      fences.layers.delete(id);
      poll(true);
    }
  }

  function start(map, pollMs) {
    fences.map = map;
    fences.pollMs = Math.max(500, pollMs || 3000);
    fences.group = L.featureGroup().addTo(map);
    if (map.pm) {
      map.pm.setGlobalOptions({ allowSelfIntersection: false, layerGroup: fences.group });
      map.on("pm:create", created);
      map.on("pm:remove", removed);
    }
    const input = $("fenceToken");
    const saved = sessionStorage.getItem(TOKEN_KEY) || "";
    if (input) {
      input.value = saved;
      input.addEventListener("change", () => {
        if (input.value.trim() !== fences.token) setToken(input.value.trim()); // not again on blur: it would end a drawing
      });
    }
    setToken(saved);
    poll(true);
    fences.timer = setInterval(() => { // the fallback: while the event stream is open it pushes `fences` events
      if (!(window.geoiotMap && window.geoiotMap.sse === "open")) poll(false);
    }, fences.pollMs);
  }

  window.geoiotFences = { start, poll, setToken, state: fences };
})();
