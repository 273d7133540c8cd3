/* jupyter_gpu_meter: the admin page. The GPU table comes from api/gpus every refresh,
   its readings as the server wrote them (`*_text`). */
(function () {
  "use strict";
  var m = window.gpuMeter;
  var config = m.config();

  function rowFor(gpu) {
    var row = document.createElement("tr");
    row.dataset.uuid = gpu.uuid;
    m.cell(row, String(gpu.index));
    var model = m.cell(row, gpu.model);
    model.appendChild(document.createElement("br"));
    var uuid = document.createElement("span");
    uuid.className = "gpu-meter-uuid";
    uuid.textContent = gpu.uuid;
    model.appendChild(uuid);
    if (gpu.node) {  // cluster mode: the node it is on
      var node = document.createElement("span");
      node.className = "gpu-meter-node";
      node.textContent = "node " + gpu.node;
      model.appendChild(document.createElement("br"));
      model.appendChild(node);
    }
    m.cell(row, gpu.utilization_text);
    m.cell(row, gpu.memory_text);
    m.cell(row, gpu.power_text);
    var holder = gpu.holder
      ? gpu.holder.user + (gpu.holder.server ? "/" + gpu.holder.server : "")
      : (gpu.allocated ? "allocated" : "free");
    m.cell(row, holder);
    var health = m.cell(row, "");
    var badge = document.createElement("span");
    badge.className = "badge " + (gpu.healthy ? "text-bg-success" : "text-bg-danger");
    badge.textContent = gpu.healthy ? "ok" : "unhealthy";
    if (gpu.problem) badge.title = gpu.problem;
    health.appendChild(badge);
    return row;
  }

  function show(data) {
    if (data.gpus.length) m.setRows(document.getElementById("gpus-table"), data.gpus.map(rowFor));
  }

  m.every(config.refresh_s, function () { return m.getJSON(config.url).then(show); });
  // cluster mode: the page holds no GPU rows, load them now
  if (document.getElementById("gpus-table").dataset.deferred) m.getJSON(config.url).then(show);
})();
