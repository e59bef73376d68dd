// A clicked track's trail: its reports of the last minutes up to its latest one, one segment per step,
// coloured by the step's speed. A newer request aborts the one in flight.
import * as api from "./api.js";
import { speedColor } from "./lib/colors.js";
import { near, stepSpeeds } from "./lib/geo.js";

/** ``say(text)`` reports what was drawn or what failed. */
export function createTrail(map, say) {
  const group = L.layerGroup().addTo(map);
  const renderer = L.svg({ padding: 0.5 }); // its own SVG pane: each segment an element (styled, inspectable)
  let current = null, ctrl = null;

  function draw(coords, colors) {
    const centre = map.getCenter().lng;
    for (let i = 1; i < coords.length; i++) {
      L.polyline([[coords[i - 1][1], near(coords[i - 1][0], centre)], [coords[i][1], near(coords[i][0], centre)]],
                 { color: colors[i - 1], weight: 4, opacity: 0.9, interactive: false, className: "trail-segment",
                   renderer }).addTo(group);
    }
  }

  return {
    /** Fetch and draw the trail of ``track`` ending at its latest report ``end``. */
    async show(track, end, minutes, where) {
      if (ctrl) ctrl.abort();
      const mine = new AbortController();
      ctrl = mine;
      const start = end - Math.round(minutes * 60000);
      group.clearLayers();
      current = { track, loading: true, start, end };
      try {
        const body = await api.track({ track, start, end, where }, mine.signal);
        const coords = body.geometry.type === "LineString" ? body.geometry.coordinates : [body.geometry.coordinates];
        const speeds = stepSpeeds(coords, body.properties.times || []);
        const colors = speeds.map(speedColor);
        draw(coords, colors);
        current = { track, loading: false, start, end, points: coords.length, segments: colors.length,
                    speeds, colors, complete: body.properties.complete };
        say(`trail of ${track}: ${coords.length} reports in the last ${minutes} min`);
      } catch (err) {
        if (err.name === "AbortError") return;
        current = { track, loading: false, start, end, points: 0, segments: 0, error: String(err.message || err) };
        say(`trail of ${track}: ${current.error}`);
      } finally {
        if (ctrl === mine) ctrl = null;
      }
    },
    clear() {
      if (ctrl) ctrl.abort();
      group.clearLayers(); current = null;
    },
    /** The trail shown (or being fetched), null when none: track, start, end, points, segments, speeds, colors. */
    current: () => (current ? { ...current } : null),
  };
}
