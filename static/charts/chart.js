// Draws every <figure class="chart" data-chart-url=...> on the page (templates/charts/_chart.html):
// loads plotly.js once, fetches each figure's JSON with the page's session, and shows the
// API's error message in place of the chart when the request is refused.
(function () {
  "use strict";
  if (window.suCharts) {
    return;
  }
  var plotly = null;

  function loadPlotly(src) {
    if (!plotly) {
      plotly = new Promise(function (resolve, reject) {
        if (window.Plotly) {
          resolve(window.Plotly);
          return;
        }
        var script = document.createElement("script");
        script.src = src;
        script.onload = function () { resolve(window.Plotly); };
        script.onerror = function () { reject(new Error("plotly.js could not be loaded")); };
        document.head.appendChild(script);
      });
    }
    return plotly;
  }

  function draw(box) {
    if (box.dataset.chartDrawn) {
      return;
    }
    box.dataset.chartDrawn = "1";
    // Set through the CSSOM: the Content-Security-Policy refuses style attributes.
    if (box.dataset.minHeight) {
      box.style.minHeight = box.dataset.minHeight + "px";
    }
    var status = box.querySelector(".chart-status");
    var plot = box.querySelector(".chart-plot");
    var figure = fetch(box.dataset.chartUrl, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    }).then(function (response) {
      return response.json().then(function (body) {
        if (!response.ok) {
          throw new Error(body.detail || "The chart could not be loaded (" + response.status + ").");
        }
        return body.figure;
      });
    });
    Promise.all([loadPlotly(box.dataset.plotlySrc), figure])
      .then(function (results) {
        var Plotly = results[0];
        var fig = results[1];
        return Plotly.newPlot(plot, fig.data, fig.layout, { responsive: true, displaylogo: false });
      })
      .then(function () { status.remove(); })
      .catch(function (error) {
        status.textContent = error.message;
        status.classList.add("chart-error");
      });
  }

  function drawAll() {
    document.querySelectorAll("figure.chart[data-chart-url]").forEach(draw);
  }

  window.suCharts = { drawAll: drawAll };
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", drawAll);
  } else {
    drawAll();
  }
})();
