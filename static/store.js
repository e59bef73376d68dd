// The map's state and its copy in the URL hash. Modules read and set fields here; drawing lives in the
// layers, fetching in api.js.
import { DEFAULT_TRAIL_MIN, formatHash, parseHash } from "./lib/hash.js";

export const state = {
  config: null,          // /api/config
  view: "now",           // "now" (latest positions) or "density" (observations)
  where: [],             // filter expressions, field:expr
  colorBy: "speed",      // arrows and markers: "speed" or "fence"
  heat: false,
  paused: false,
  staleMs: 300000,
  trailMin: DEFAULT_TRAIL_MIN,
  replay: false,         // replay: a time window [start, end] over the data's extent
  playing: false,
  extent: null,
  start: null,
  end: null,
  windowMs: 900000,
  speed: 600,            // replay seconds per second
  bbox: null,            // the API bbox of the view, set at each refresh
  clock: 0,              // the newest report time seen (staleness is measured against it)
  now: new Map(),        // track -> latest-position feature (now view)
  mode: "none",          // what is drawn: "now", "now-cells", "cells", "markers"
  total: 0,              // tracks or observations in view
  staleCount: 0,
  latestCells: null,     // whether the server counts current tracks per cell (null: not asked yet)
  pendingFull: false,    // a pushed change was skipped: the next refresh fetches the whole view
  loading: false,
  refreshes: 0,
  polls: 0,              // /api/latest answers drawn
  lastError: null,
};

/** The now view: live, latest positions. */
export const nowMode = () => !state.replay && state.view === "now";

/** At most this many tracks or observations are drawn one by one. */
export const markerLimit = () => Math.max(1, state.config.markerThreshold);

/** The time window of a replay, else null (live). */
export const timeWindow = () => (state.replay && state.end !== null ? { start: state.start, end: state.end } : null);

/** The view the page's URL hash asks for. */
export const readHash = () => parseHash(location.hash.slice(1));

/** The view into the URL hash (replacing the history entry). */
export function writeHash(map) {
  const c = map.getCenter();
  history.replaceState(null, "", "#" + formatHash({
    zoom: map.getZoom(), lat: c.lat, lon: c.lng, replay: state.replay, view: state.view, start: state.start,
    end: state.end, heat: state.heat, colorBy: state.colorBy, staleMs: state.staleMs,
    defaultStaleMs: state.config.staleMs, trailMin: state.trailMin, where: state.where,
  }));
}
