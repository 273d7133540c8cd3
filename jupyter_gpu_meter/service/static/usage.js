/* jupyter_gpu_meter: the user page. Running sessions' elapsed time, their cost and the
   totals come from api/usage every refresh, as the server wrote them. */
(function () {
  "use strict";
  var m = window.gpuMeter;
  var config = m.config();

  function runningBody() {
    return document.querySelector("#running-sessions tbody");
  }

  function rowFor(item) {
    var row = document.createElement("tr");
    row.dataset.sessionId = String(item.id);
    var server = m.cell(row, (item.server || "default") + (item.profile ? " (" + item.profile + ")" : ""));
    if (item.image) {
      // as the page writes it: the image's display name under the server's
      var image = document.createElement("small");
      image.className = "text-muted d-block gpu-meter-image";
      image.title = "Image";
      image.textContent = item.image;
      server.appendChild(image);
    }
    m.cell(row, item.gpus ? item.gpus + " × " + item.gpu_model : "CPU only");
    m.cell(row, item.started_at_text);
    m.cell(row, "", "gpu-meter-elapsed");
    m.cell(row, "", "gpu-meter-cost");
    m.cell(row, item.price_text);
    m.cell(row, item.utilization_avg_text, "gpu-meter-spark");
    m.cell(row, item.busy_share_text, "gpu-meter-busy");
    m.cell(row, energyText(item), "gpu-meter-energy");
    return row;
  }

  function energyText(item) {
    // the energy and, where energy is priced, its charge: as the page writes them
    var charged = Number(item.energy_charge.amount) !== 0;
    return item.energy_kwh_text + (charged ? " " + item.energy_charge.text : "");
  }

  function show(data) {
    var body = runningBody();
    var shown = Array.prototype.map.call(body.rows, function (r) { return r.dataset.sessionId; });
    var wanted = data.running.map(function (item) { return String(item.id); });
    if (shown.join(",") !== wanted.join(",")) {
      // a server started or stopped: rebuild the rows (sparklines come back on reload)
      m.setRows(document.getElementById("running-sessions"), data.running.map(rowFor));
    }
    data.running.forEach(function (item) {
      var row = body.querySelector('tr[data-session-id="' + item.id + '"]');
      row.querySelector(".gpu-meter-elapsed").textContent = item.duration_text;
      row.querySelector(".gpu-meter-cost").textContent = item.charge.text;
      row.querySelector(".gpu-meter-busy").textContent = item.busy_share_text;
      row.querySelector(".gpu-meter-energy").textContent = energyText(item);
    });
    document.getElementById("no-running").hidden = data.running.length > 0;
    m.setText("month-gpu-hours", data.this_month.gpu_hours_text);
    m.setText("month-charges", data.this_month.charges_text);
    m.setText("all-gpu-hours", data.all_time.gpu_hours_text);
    m.setText("all-charges", data.all_time.charges_text);
    [["month", data.this_month], ["all", data.all_time]].forEach(function (pair) {
      m.setText(pair[0] + "-busy", pair[1].busy_share_text);
      m.setText(pair[0] + "-energy", pair[1].energy.kwh_text);
      m.setText(pair[0] + "-energy-charges", pair[1].energy.charges_text);
    });
  }

  m.every(config.refresh_s, function () { return m.getJSON(config.url).then(show); });
})();
