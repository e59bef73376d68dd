// The filter panel: built from /api/config `fields`, one row per expression, applied as a `where` list.
import { esc } from "./lib/format.js";
import { RANGE_KINDS, VALUE_KINDS, rowInputs, rowWhere, splitWhere, timeInput } from "./lib/where.js";

const $ = (id) => document.getElementById(id);

function addRow(fields, field, expr) {
  const kind = fields[field];
  if (!kind) return;
  const parsed = rowInputs(kind, expr);
  const row = document.createElement("div");
  row.className = "filter-row";
  row.dataset.field = field;
  row.dataset.kind = kind;
  const inputType = kind === "time" ? "datetime-local" : "text";
  let html = `<span class="filter-name" title="${esc(kind)}">${esc(field)}</span>`;
  if (parsed.raw !== undefined) {
    html += `<input class="f-raw" type="text" value="${esc(parsed.raw)}" aria-label="${esc(field)} expression">`;
  } else {
    if (kind === "bool") {
      html += `<select class="f-values" aria-label="${esc(field)}"><option value="true">true</option>` +
              `<option value="false"${parsed.values === "false" ? " selected" : ""}>false</option></select>`;
    } else if (VALUE_KINDS.includes(kind)) {
      html += `<input class="f-values" type="text" placeholder="${kind === "int" ? "1|2" : "a|b"}" ` +
              `value="${esc(parsed.values || "")}" aria-label="${esc(field)} is one of">`;
    }
    if (RANGE_KINDS.includes(kind)) {
      const conv = kind === "time" ? timeInput : (x) => x;
      const step = kind === "time" ? ' step="1"' : "";
      const bound = (cls, text, label) => `<input class="${cls}" type="${inputType}"${step} ` +
        `placeholder="${cls === "f-min" ? "min" : "max"}" value="${esc(conv(text || ""))}" ` +
        `aria-label="${esc(field)} ${label}">`;
      html += bound("f-min", parsed.min, "at least") + bound("f-max", parsed.max, "at most");
    }
  }
  html += `<button type="button" class="f-remove" title="remove this filter" aria-label="remove ${esc(field)}">` +
          "×</button>";
  row.innerHTML = html;
  row.querySelector(".f-remove").addEventListener("click", () => row.remove());
  $("filterRows").appendChild(row);
}

/** The where expressions of the panel's rows. */
function panelWhere() {
  return [...$("filterRows").querySelectorAll(".filter-row")].flatMap((row) => {
    const val = (cls) => { const el = row.querySelector(cls); return el ? el.value.trim() : ""; };
    return rowWhere(row.dataset.field, { raw: val(".f-raw"), values: val(".f-values"), min: val(".f-min"),
                                         max: val(".f-max") });
  });
}

/** Fill the panel for ``fields`` (name -> kind) with the rows of ``where``; ``apply(where)`` is called with the
 * panel's expressions on Apply, and with none on Clear. */
export function buildFilterPanel(fields, where, apply) {
  $("filterField").innerHTML = Object.entries(fields).filter(([n]) => n !== "geohash")
    .map(([n, k]) => `<option value="${esc(n)}">${esc(n)} (${esc(k)})</option>`).join("");
  $("addFilter").addEventListener("click", () => addRow(fields, $("filterField").value, ""));
  $("applyFilters").addEventListener("click", () => apply(panelWhere()));
  $("clearFilters").addEventListener("click", () => { $("filterRows").innerHTML = ""; apply([]); });
  for (const w of where) addRow(fields, ...splitWhere(w));
  showFilters(where);
}

/** The applied filters in the panel's summary line. */
export function showFilters(where) {
  $("filterSummary").textContent = where.length ? where.join(" AND ") : "none";
}

/** A filter error of the server (or none) under the panel. */
export function showFilterError(text) {
  $("filterError").textContent = text;
}
