// Observations as small circles (the density view below the marker threshold), coloured by speed or fence.
import { IN_FENCE, OUT_OF_FENCE, speedColor } from "../lib/colors.js";
import { near } from "../lib/geo.js";
import { propertiesTable } from "../lib/popups.js";

export function createMarkersLayer(map) {
  const group = L.layerGroup().addTo(map);
  return {
    /** Draw a FeatureCollection of observations. */
    draw(fc, colorBy) {
      group.clearLayers();
      const centre = map.getCenter().lng;
      for (const f of fc.features) {
        const p = f.properties, [lon, lat] = f.geometry.coordinates;
        const inFence = Array.isArray(p.geofences) && p.geofences.length > 0;
        const color = colorBy === "fence" ? (inFence ? IN_FENCE : OUT_OF_FENCE) : speedColor(p.speed_mps);
        L.circleMarker([lat, near(lon, centre)], { radius: 5, color: "#333", weight: 1, fillColor: color,
                                                   fillOpacity: 0.85 })
          .bindPopup(() => propertiesTable(p)).addTo(group);
      }
    },
    clear: () => group.clearLayers(),
    /** How many observations are drawn. */
    count: () => group.getLayers().length,
  };
}
