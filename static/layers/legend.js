// The map's one legend (bottom left), replaced by whichever layer is drawn.

export function createLegend(map) {
  let control = null;
  return {
    /** Show ``html`` as the legend; none when empty. */
    show(html) {
      if (control) control.remove();
      control = null;
      if (!html) return;
      control = L.control({ position: "bottomleft" });
      control.onAdd = () => {
        const div = L.DomUtil.create("div", "legend");
        div.innerHTML = html;
        return div;
      };
      control.addTo(map);
    },
  };
}
