/* jupyter_gpu_meter: what the usage pages' scripts share. No library, nothing fetched
   but the meter's own API. Every value goes into the page as text (textContent). */
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

  function money(item, minorUnits) {
    var digits = minorUnits && minorUnits[item.currency];
    if (digits === undefined) digits = 2;
    return Number(item.amount).toLocaleString("en-US", {
      minimumFractionDigits: digits,
      maximumFractionDigits: digits,
    }) + " " + item.currency;
  }

  function charges(list, currency, minorUnits) {
    if (!list.length) return money({ amount: "0", currency: currency || "USD" }, minorUnits);
    return list.map(function (item) { return money(item, minorUnits); }).join(" + ");
  }

  function hours(text) {
    return Number(text).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  }

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function duration(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    var days = Math.floor(seconds / 86400), rest = seconds % 86400;
    var h = Math.floor(rest / 3600), m = Math.floor((rest % 3600) / 60), s = rest % 60;
    if (days) return days + " d " + pad(h) + " h";
    if (h) return h + " h " + pad(m) + " min";
    if (m) return m + " min " + pad(s) + " s";
    return s + " s";
  }

  function utc(iso) {
    return iso ? iso.slice(0, 16).replace("T", " ") + " UTC" : "";
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
    config: config, getJSON: getJSON, money: money, charges: charges, hours: hours,
    duration: duration, utc: utc, setText: setText, cell: cell, setRows: setRows, every: every,
  };
})();
