// Draws every figure whose data the page embeds with json_script ("<id>-data" beside "<id>").
(function () {
  "use strict";
  if (typeof Plotly === "undefined") return;
  document.querySelectorAll("script[type='application/json'][id$='-data']").forEach(function (node) {
    var target = document.getElementById(node.id.slice(0, -"-data".length));
    if (!target) return;
    var figure = JSON.parse(node.textContent);
    Plotly.newPlot(target, figure.data, figure.layout, {
      responsive: true,
      displaylogo: false,
      modeBarButtonsToRemove: ["select2d", "lasso2d"],
    });
  });
})();
