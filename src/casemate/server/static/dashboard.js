// The dashboard's live graphs: the last hour of /api/history, drawn with uPlot and
// extended every 2 seconds with the samples taken since the last one shown.
"use strict";
(() => {
  const HOUR = 3600;
  const bytes = (n) => {
    if (n == null) return "";
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return (i && n < 10 ? n.toFixed(1) : Math.round(n)) + " " + units[i] + "/s";
  };
  const plain = (suffix) => (n) => (n == null ? "" : (Math.round(n * 10) / 10) + suffix);
  const GRAPHS = [
    {id: "sessions", series: [["sessions", "Sessions", "#2f6db5"]], fmt: plain("")},
    {id: "encrypted", series: [["encrypted_percent", "Encrypted", "#17703a"]], fmt: plain(" %"),
     range: [0, 100]},
    {id: "statements", series: [["statements_per_second", "Statements/s", "#8a4baf"]],
     fmt: plain("/s")},
    {id: "bytes", series: [["bytes_in_per_second", "In", "#2f6db5"],
                           ["bytes_out_per_second", "Out", "#d9822b"]], fmt: bytes},
    {id: "cpu", series: [["cpu_percent", "CPU", "#b3261e"]], fmt: plain(" %")},
  ];
  const data = {time: []};
  let last = 0;
  const charts = [];

  function columns(g) {
    return [data.time, ...g.series.map(([key]) => data[key])];
  }

  function build() {
    for (const g of GRAPHS) {
      const box = document.getElementById("graph-" + g.id);
      if (!box) continue;
      const opts = {
        width: box.clientWidth || 380, height: 150,
        legend: {live: true},
        scales: {x: {time: true}, y: g.range ? {range: g.range} : {range: (u, lo, hi) => [0, Math.max(hi, 1) * 1.1]}},
        axes: [{}, {values: (u, vals) => vals.map(g.fmt), size: 70}],
        series: [{}, ...g.series.map(([key, label, color]) => ({
          label, stroke: color, width: 2, value: (u, v) => g.fmt(v),
        }))],
      };
      charts.push([g, new uPlot(opts, columns(g), box.querySelector(".plot"))]);
    }
  }

  async function poll() {
    try {
      const r = await fetch("/api/history?since=" + last);
      if (!r.ok) return;
      const h = await r.json();
      for (const key of Object.keys(h)) {
        if (Array.isArray(h[key])) data[key] = (data[key] || []).concat(h[key]);
      }
      if (h.time.length) last = h.time[h.time.length - 1];
      const from = data.time.findIndex((t) => t > last - HOUR);
      for (const key of Object.keys(data)) data[key] = data[key].slice(Math.max(from, 0));
      for (const [g, u] of charts) u.setData(columns(g));
      document.getElementById("graphs").dataset.samples = data.time.length;
    } catch (e) { /* the server restarts: the next poll tries again */ }
  }

  build();
  poll();
  setInterval(poll, 2000);
})();
