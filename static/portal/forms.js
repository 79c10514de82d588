// New allocation form: offer only the chosen cluster's resources. The server checks the
// same rule, so without this script every resource is listed and a wrong one is refused.
(function () {
  "use strict";
  var cluster = document.getElementById("id_cluster");
  if (!cluster) return;
  function sync() {
    document.querySelectorAll("input[data-cluster]").forEach(function (box) {
      var wrapper = box.closest("div") || box.parentNode;
      var match = box.dataset.cluster === cluster.value;
      wrapper.hidden = !match;
      if (!match) box.checked = false;
    });
  }
  cluster.addEventListener("change", sync);
  sync();
})();
