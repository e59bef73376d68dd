// The live geofences on the map: drawn from /api/geofences and fetched again when the event stream says they
// changed or, while it is not open, polled (each fence carries its version: only changed fences are redrawn).
// With a token of scope `fences`, drawn, edited and deleted with Leaflet-Geoman (vendored at /vendor/geoman);
// without one they are read-only.
import * as api from "./api.js";

const STYLE = { color: "#7b3294", weight: 2, fill: false, dashArray: "4 3" };
const EDIT_STYLE = { color: "#7b3294", weight: 2, fillOpacity: 0.08 };
const TOKEN_KEY = "geoiot.fenceToken";
const $ = (id) => document.getElementById(id);

function toGeoJSON(layer) {
  const gj = layer.toGeoJSON();
  return gj.type === "Feature" ? gj.geometry : gj;
}

/** Draw the fences on ``map`` and keep them current; ``streamOpen()`` says whether the event stream pushes
 * fence changes (then there is no poll). */
export function startFences(map, pollMs, streamOpen) {
  const group = L.featureGroup().addTo(map);
  const layers = new Map(); // fence id -> { layer, version }
  let version = -1, count = 0, token = "", lastError = "";
  const editable = () => !!token;

  function say(text, isError) {
    lastError = isError ? text : "";
    const el = $("fenceStatus");
    if (el) { el.textContent = text; el.classList.toggle("error", !!isError); }
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
        const stored = await api.sendFence("PUT", id, token,
                                           { type: "Feature", properties: props, geometry: toGeoJSON(layer) });
        layers.set(id, { layer, version: stored.version });
        say(`fence ${id} saved (version ${stored.version})`);
      } catch (e) {
        say(`fence ${id} not saved: ${e.message}`, true);
        poll(true); // redraw what is stored
      }
    });
  }
  function draw(feature) {
    const shown = layers.get(feature.id);
    if (shown && shown.version === feature.version) return;
    if (shown) group.removeLayer(shown.layer);
    let layer = null;
    L.geoJSON(feature, { style: editable() ? EDIT_STYLE : STYLE, interactive: true }).eachLayer((l) => { layer = l; });
    if (!layer) return;
    layer.feature = feature;
    attach(feature.id, layer);
    group.addLayer(layer);
    layers.set(feature.id, { layer, version: feature.version });
  }
  /** Fetch the fences; redraw what changed (everything when ``force``). */
  async function poll(force) {
    try {
      const fc = await api.geofences();
      if (force || fc.version !== version) {
        const seen = new Set();
        for (const f of fc.features) { seen.add(f.id); draw(f); }
        for (const [id, shown] of [...layers]) {
          if (!seen.has(id)) { group.removeLayer(shown.layer); layers.delete(id); }
        }
        version = fc.version;
      }
      count = fc.features.length;
    } catch (e) {
      say(`fences: ${e.message}`, true);
    }
  }
  function setToken(value) {
    token = value || "";
    if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
    if (map.pm) {
      map.pm.removeControls();
      if (editable()) {
        map.pm.addControls({ position: "topleft", drawPolygon: true, editMode: true, removalMode: true,
          drawMarker: false, drawCircleMarker: false, drawPolyline: false, drawRectangle: false, drawCircle: false,
          drawText: false, dragMode: false, cutPolygon: false, rotateMode: false });
      }
    }
    for (const [id, shown] of layers) attach(id, shown.layer);
    say(editable() ? "fences: editing enabled" : "fences: read-only (enter a token to edit)");
  }
  async function created(e) {
    const layer = e.layer;
    const id = (window.prompt("Fence id (letters, digits, . _ : -)") || "").trim();
    map.removeLayer(layer); // what is drawn is what the server stored
    if (!id) return;
    try {
      const stored = await api.sendFence("PUT", id, token,
                                         { type: "Feature", properties: { name: id }, geometry: toGeoJSON(layer) });
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
      const answer = await api.sendFence("DELETE", id, token);
      layers.delete(id);
      say(`fence ${id} deleted (version ${answer.version})`);
    } catch (err) {
      say(`fence ${id} not deleted: ${err.message}`, true);
      layers.delete(id);
      poll(true);
    }
  }

  if (map.pm) {
    map.pm.setGlobalOptions({ allowSelfIntersection: false, layerGroup: group });
    map.on("pm:create", created);
    map.on("pm:remove", removed);
  }
  const input = $("fenceToken");
  const saved = sessionStorage.getItem(TOKEN_KEY) || "";
  if (input) {
    input.value = saved;
    input.addEventListener("change", () => {
      if (input.value.trim() !== token) setToken(input.value.trim()); // not again on blur: it would end a drawing
    });
  }
  setToken(saved);
  poll(true);
  setInterval(() => { if (!streamOpen()) poll(false); }, Math.max(500, pollMs || 3000));

  return {
    poll,
    /** What is drawn: fence ids, the collection's version and size, whether editing is on, the last error. */
    drawn: () => ({ ids: [...layers.keys()], version, count, editable: editable(), lastError }),
  };
}
