// The now view's rules for tracks (pure: no DOM, no Leaflet): the data's clock, staleness and an arrow's look.
import { fenceColor, speedColor } from "./colors.js";
import { heading } from "./geo.js";

/** The key a latest-position feature is kept under: its track (else its id), as text. */
export const trackOf = (f) => String(f.properties.track ?? f.id);

/** The newest report time among ``clock`` and the features' times. Stale is measured against it, not the
 * wall clock: a live feed's newest report is about now, and replayed history fades the same way. */
export function advanceClock(clock, features) {
  for (const f of features) {
    const t = f.properties && f.properties.time;
    if (typeof t === "number" && t > clock) clock = t;
  }
  return clock;
}

/** No report for more than ``staleMs`` before ``clock``. */
export const isStale = (props, clock, staleMs) => typeof props.time === "number" && clock - props.time > staleMs;

/** How a track's arrow looks: its heading (null: a dot), colour (by speed or by fence) and staleness. */
export function look(props, { clock, staleMs, colorBy }) {
  const color = colorBy === "fence" ? fenceColor(props.geofences) : speedColor(props.speed_mps);
  return { heading: heading(props.heading_deg), color, stale: isStale(props, clock, staleMs) };
}
