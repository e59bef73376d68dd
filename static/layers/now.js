// The now view's tracks: each latest position as an arrow along its heading (a dot without one), coloured
// and faded as lib/tracks.js `look` says. Markers are kept per track and only restyled when their look changes.
import { esc } from "../lib/format.js";
import { near } from "../lib/geo.js";
import { look } from "../lib/tracks.js";

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

/** ``popup(track)`` gives a track's popup HTML, ``onClick(track)`` is called when its arrow is clicked. */
export function createNowLayer(map, { popup, onClick }) {
  const group = L.layerGroup().addTo(map);
  const markers = new Map(); // track -> { marker, key, feature, look }
  return {
    /** Draw the tracks of ``now`` (track -> feature) with ``opts`` {clock, staleMs, colorBy}; returns how many
     * are stale. */
    sync(now, opts) {
      let stale = 0;
      const centre = map.getCenter().lng;
      for (const [track, f] of now) {
        const [lon, lat] = f.geometry.coordinates;
        const lk = look(f.properties, opts);
        if (lk.stale) stale += 1;
        const key = `${lk.heading}|${lk.color}|${lk.stale}`;
        const shown = markers.get(track);
        if (!shown) {
          const marker = L.marker([lat, near(lon, centre)], { icon: arrowIcon(track, lk), keyboard: false,
                                                              riseOnHover: true });
          marker.bindPopup(() => popup(track), { maxWidth: 320 });
          marker.on("click", () => onClick(track));
          marker.addTo(group);
          markers.set(track, { marker, key, feature: f, look: lk });
        } else {
          shown.marker.setLatLng([lat, near(lon, centre)]);
          if (shown.key !== key) { shown.marker.setIcon(arrowIcon(track, lk)); shown.key = key; }
          shown.feature = f; shown.look = lk;
          if (shown.marker.isPopupOpen()) shown.marker.setPopupContent(popup(track));
        }
      }
      for (const [track, shown] of markers) {
        if (!now.has(track)) { group.removeLayer(shown.marker); markers.delete(track); }
      }
      return stale;
    },
    clear() {
      group.clearLayers(); markers.clear();
    },
    count: () => markers.size,
    /** What is drawn: per track its position [lon, lat] and report time, and its look. */
    drawn: () => [...markers].map(([track, { feature, look: lk }]) => ({
      track, coordinates: feature.geometry.coordinates, time: feature.properties.time, ...lk })),
  };
}
