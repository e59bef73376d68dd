// Text for the page: times and HTML escaping (pure: no DOM, no Leaflet).

/** An epoch-millisecond time as ISO 8601 UTC, without zero milliseconds. */
export const fmtTime = (ms) => new Date(ms).toISOString().replace(".000Z", "Z");

/** Any value as text safe inside HTML elements and quoted attributes. */
export const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
