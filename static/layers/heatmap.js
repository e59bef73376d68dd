// The heatmap (leaflet.heat) of weighted points, shown while the panel's toggle is on.
import { near } from "../lib/geo.js";

export function createHeatLayer(map) {
  let layer = null, points = 0;
  return {
    /** Draw [lat, lon, weight] points (weights scaled to the largest) when ``on``; else remove it. */
    draw(list, on) {
      if (layer) { layer.remove(); layer = null; }
      points = on ? list.length : 0;
      if (!on || !list.length) return;
      const max = Math.max(...list.map((p) => p[2]));
      const centre = map.getCenter().lng;
      layer = L.heatLayer(list.map(([lat, lon, w]) => [lat, near(lon, centre), w / max]),
                          { radius: 25, blur: 20, max: 1 }).addTo(map);
    },
    /** How many points the heatmap draws (0 when it is off). */
    points: () => points,
  };
}
