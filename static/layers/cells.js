// Geohash cells coloured by their count, with count labels when there are few.
import { countBreaks, countColor, countLegend } from "../lib/colors.js";
import { near } from "../lib/geo.js";

const MAX_LABELS = 400;

export function createCellsLayer(map, legend) {
  const cells = L.layerGroup().addTo(map);
  const labels = L.layerGroup().addTo(map);
  let drawn = { count: 0, sum: 0 };
  return {
    /** Draw a FeatureCollection of cells (properties geohash, count) counting ``what``. */
    draw(fc, what) {
      const counts = fc.features.map((f) => f.properties.count);
      const breaks = countBreaks(counts);
      cells.clearLayers(); labels.clearLayers();
      const centre = map.getCenter().lng;
      const label = fc.features.length <= MAX_LABELS;
      for (const f of fc.features) {
        const ring = f.geometry.coordinates[0];
        const w = near((ring[0][0] + ring[1][0]) / 2, centre) - (ring[1][0] - ring[0][0]) / 2;
        const e = w + (ring[1][0] - ring[0][0]);
        const bounds = [[ring[0][1], w], [ring[2][1], e]];
        const color = countColor(f.properties.count, breaks);
        L.rectangle(bounds, { color: "#555", weight: 0.5, fillColor: color, fillOpacity: 0.55 })
          .bindTooltip(`${f.properties.geohash}: ${f.properties.count}`).addTo(cells);
        if (label) {
          L.marker([(bounds[0][0] + bounds[1][0]) / 2, (w + e) / 2], { interactive: false, keyboard: false,
            icon: L.divIcon({ className: "cell-label", html: String(f.properties.count), iconSize: [40, 14] }) })
            .addTo(labels);
        }
      }
      legend.show(countLegend(breaks, what));
      drawn = { count: fc.features.length, sum: counts.reduce((a, b) => a + b, 0) };
    },
    clear() {
      cells.clearLayers(); labels.clearLayers();
      drawn = { count: 0, sum: 0 };
    },
    /** What is drawn: the number of cells and the sum of their counts. */
    drawn: () => ({ ...drawn }),
  };
}
