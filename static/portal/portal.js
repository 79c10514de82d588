// Behaviour every portal page shares. Widths are set through the CSSOM because the
// Content-Security-Policy refuses style attributes in the markup.
(function () {
  "use strict";
  document.querySelectorAll("[data-meter]").forEach(function (bar) {
    var percent = Math.max(0, Math.min(100, parseFloat(bar.dataset.meter) || 0));
    bar.style.width = percent + "%";
  });
})();
