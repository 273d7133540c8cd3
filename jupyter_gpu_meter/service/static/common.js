/* jupyter_gpu_meter: what the usage pages' scripts share. No library, nothing fetched
   but the meter's own API. Every value goes into the page as text (textContent), and
   as the server wrote it: money, durations, times and sizes come finished (the API's
   `text` and `*_text` fields); nothing here formats a number. */
window.gpuMeter = (function () {
  "use strict";

  function config() {
    return JSON.parse(document.getElementById("gpu-meter-live").textContent);
  }

  function xsrfToken() {
    return (window.jhdata && window.jhdata.xsrf_token) || "";
  }

  /* GET a JSON API URL with the page's cookie and XSRF token. */
  function getJSON(url) {
    return fetch(url, {
      credentials: "same-origin",
      headers: { Accept: "application/json", "X-XSRFToken": xsrfToken() },
    }).then(function (response) {
      if (!response.ok) {
        throw new Error(response.status === 403
          ? "not logged in any more: reload the page"
          : "the meter answered " + response.status);
      }
      return response.json();
    });
  }

  function setText(id, text) {
    var element = document.getElementById(id);
    if (element) element.textContent = text;
  }

  function cell(row, text, className) {
    var td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  /* Put `rows` in `table`'s body, each cell labelled with its column's header
     (the labels show on narrow screens, see meter.css). */
  function setRows(table, rows) {
    var labels = Array.prototype.map.call(table.querySelectorAll("thead th"), function (th) {
      return th.textContent.trim();
    });
    rows.forEach(function (row) {
      Array.prototype.forEach.call(row.children, function (td, i) {
        if (labels[i]) td.dataset.label = labels[i];
      });
    });
    var body = table.querySelector("tbody");
    body.replaceChildren.apply(body, rows);
  }

  /* Call refresh() every `seconds`, and say when it last worked. */
  function every(seconds, refresh) {
    function run() {
      refresh().then(function () {
        setText("gpu-meter-updated", "updated " + new Date().toISOString().slice(11, 19) + " UTC");
      }).catch(function (error) {
        setText("gpu-meter-updated", "not updated: " + error.message);
      });
    }
    window.setInterval(run, seconds * 1000);
  }

  return {
    config: config, getJSON: getJSON, setText: setText, cell: cell, setRows: setRows,
    every: every,
  };
})();
