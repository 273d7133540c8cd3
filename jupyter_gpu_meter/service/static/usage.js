/* jupyter_gpu_meter: the user page. Running sessions' elapsed time ticks every
   second; their cost and the totals come from api/usage every refresh. */
(function () {
  "use strict";
  var m = window.gpuMeter;
  var config = m.config();
  var data = config.data;
  // the server's clock minus ours, so elapsed times follow the server
  var skew = Date.parse(data.as_of) - Date.now();

  function runningBody() {
    return document.querySelector("#running-sessions tbody");
  }

  function rowFor(item) {
    var row = document.createElement("tr");
    row.dataset.sessionId = String(item.id);
    m.cell(row, (item.server || "default") + (item.profile ? " (" + item.profile + ")" : ""));
    m.cell(row, item.gpus ? item.gpus + " × " + item.gpu_model : "CPU only");
    m.cell(row, m.utc(item.started_at));
    m.cell(row, m.duration(item.duration_s), "gpu-meter-elapsed");
    m.cell(row, "", "gpu-meter-cost");
    m.cell(row, m.money(item.price_per_hour, config.minor_units) + "/h");
    m.cell(row, item.utilization_avg === null ? "–" : Math.round(item.utilization_avg) + "%",
           "gpu-meter-spark");
    return row;
  }

  function show(next) {
    data = next;
    skew = Date.parse(data.as_of) - Date.now();
    var body = runningBody();
    var shown = Array.prototype.map.call(body.rows, function (r) { return r.dataset.sessionId; });
    var wanted = data.running.map(function (item) { return String(item.id); });
    if (shown.join(",") !== wanted.join(",")) {
      // a server started or stopped: rebuild the rows (sparklines come back on reload)
      m.setRows(document.getElementById("running-sessions"), data.running.map(rowFor));
    }
    data.running.forEach(function (item) {
      var row = body.querySelector('tr[data-session-id="' + item.id + '"]');
      row.querySelector(".gpu-meter-cost").textContent = m.money(item.charge, config.minor_units);
    });
    document.getElementById("no-running").hidden = data.running.length > 0;
    m.setText("month-gpu-hours", m.hours(data.this_month.gpu_hours));
    m.setText("month-charges", m.charges(data.this_month.charges, data.currency, config.minor_units));
    m.setText("all-gpu-hours", m.hours(data.all_time.gpu_hours));
    m.setText("all-charges", m.charges(data.all_time.charges, data.currency, config.minor_units));
    tick();
  }

  function tick() {
    var now = Date.now() + skew;
    data.running.forEach(function (item) {
      var row = runningBody().querySelector('tr[data-session-id="' + item.id + '"]');
      if (row) {
        var seconds = (now - Date.parse(item.started_at)) / 1000;
        row.querySelector(".gpu-meter-elapsed").textContent = m.duration(seconds);
      }
    });
  }

  window.setInterval(tick, 1000);
  m.every(config.refresh_s, function () { return m.getJSON(config.url).then(show); });
})();
