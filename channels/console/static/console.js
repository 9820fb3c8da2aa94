// The monitoring page's live charts: polls /console/monitoring/data every 2 s and
// redraws the SVG charts and the refusals table. No library, no inline script (the
// console's CSP); text goes in with textContent only, never as HTML.
(function () {
  "use strict";

  var SVG = "http://www.w3.org/2000/svg";
  var WIDTH = 600;
  var HEIGHT = 170;
  var LEFT = 52;
  var RIGHT = 8;
  var TOP = 8;
  var BOTTOM = 20;
  var COLORS = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#17becf", "#bcbd22"
  ];

  var root = document.getElementById("monitoring");
  if (!root) {
    return;
  }
  var source = root.getAttribute("data-source");
  var intervalMs = parseInt(root.getAttribute("data-interval-ms"), 10) || 2000;
  var stopped = false;

  function node(name, attributes, text) {
    var element = document.createElementNS(SVG, name);
    for (var key in attributes) {
      if (Object.prototype.hasOwnProperty.call(attributes, key)) {
        element.setAttribute(key, String(attributes[key]));
      }
    }
    if (text !== undefined) {
      element.textContent = text;
    }
    return element;
  }

  function clear(element) {
    while (element.firstChild) {
      element.removeChild(element.firstChild);
    }
  }

  function format(value) {
    if (value >= 1000) {
      return Math.round(value).toLocaleString();
    }
    if (value >= 10) {
      return value.toFixed(0);
    }
    if (value >= 1) {
      return value.toFixed(1);
    }
    return value === 0 ? "0" : value.toFixed(2);
  }

  function clock(seconds) {
    var date = new Date(seconds * 1000);
    function two(n) { return (n < 10 ? "0" : "") + n; }
    return two(date.getHours()) + ":" + two(date.getMinutes()) + ":" + two(date.getSeconds());
  }

  // series: [{name, values (numbers or null), color}], times: seconds (x axis)
  function drawChart(id, times, series) {
    var svg = document.getElementById(id);
    if (!svg) {
      return;
    }
    clear(svg);
    var maximum = 0;
    series.forEach(function (one) {
      one.values.forEach(function (value) {
        if (value !== null && value > maximum) {
          maximum = value;
        }
      });
    });
    maximum = maximum > 0 ? maximum * 1.1 : 1;
    var plotWidth = WIDTH - LEFT - RIGHT;
    var plotHeight = HEIGHT - TOP - BOTTOM;
    var count = times.length;
    function x(index) {
      return LEFT + (count > 1 ? (index * plotWidth) / (count - 1) : plotWidth);
    }
    function y(value) {
      return TOP + plotHeight - (value / maximum) * plotHeight;
    }
    for (var step = 0; step <= 4; step += 1) {
      var level = (maximum * step) / 4;
      var lineY = y(level).toFixed(1);
      svg.appendChild(node("line", {x1: LEFT, x2: WIDTH - RIGHT, y1: lineY, y2: lineY,
                                    stroke: "#ddd", "stroke-width": 1}));
      svg.appendChild(node("text", {x: LEFT - 4, y: lineY, "text-anchor": "end",
                                    "dominant-baseline": "middle", "font-size": 10,
                                    fill: "#555"}, format(level)));
    }
    if (count > 0) {
      svg.appendChild(node("text", {x: LEFT, y: HEIGHT - 4, "font-size": 10, fill: "#555"},
                           clock(times[0])));
      svg.appendChild(node("text", {x: WIDTH - RIGHT, y: HEIGHT - 4, "font-size": 10,
                                    fill: "#555", "text-anchor": "end"},
                           clock(times[count - 1])));
    }
    series.forEach(function (one) {
      var points = [];
      function flush() {
        if (points.length > 1) {
          svg.appendChild(node("polyline", {points: points.join(" "), fill: "none",
                                            stroke: one.color, "stroke-width": 1.5}));
        } else if (points.length === 1) {
          var xy = points[0].split(",");
          svg.appendChild(node("circle", {cx: xy[0], cy: xy[1], r: 2, fill: one.color}));
        }
        points = [];
      }
      one.values.forEach(function (value, index) {
        if (value === null || value === undefined) {
          flush();
        } else {
          points.push(x(index).toFixed(1) + "," + y(value).toFixed(1));
        }
      });
      flush();
    });
    var legend = document.getElementById(id + "-legend");
    if (legend) {
      clear(legend);
      series.forEach(function (one) {
        var last = null;
        for (var index = one.values.length - 1; index >= 0; index -= 1) {
          if (one.values[index] !== null) {
            last = one.values[index];
            break;
          }
        }
        var item = document.createElement("span");
        item.className = "legend-item";
        var swatch = document.createElementNS(SVG, "svg");
        swatch.setAttribute("width", "10");
        swatch.setAttribute("height", "10");
        swatch.appendChild(node("rect", {width: 10, height: 10, fill: one.color}));
        item.appendChild(swatch);
        item.appendChild(document.createTextNode(
          " " + one.name + ": " + (last === null ? "-" : format(last)) + "  "));
        legend.appendChild(item);
      });
    }
  }

  function drawRefusals(rows) {
    var table = document.getElementById("refusals");
    if (!table) {
      return;
    }
    var body = table.tBodies[0];
    clear(body);
    if (!rows.length) {
      var empty = body.insertRow();
      empty.className = "empty";
      var cell = empty.insertCell();
      cell.colSpan = 4;
      cell.textContent = table.getAttribute("data-empty") || "";
      return;
    }
    rows.forEach(function (row) {
      var tr = body.insertRow();
      tr.className = "refusal";
      ["code", "channel", "count", "recent"].forEach(function (key) {
        var td = tr.insertCell();
        td.className = key;
        td.textContent = String(row[key]);
      });
    });
  }

  function drawReplication(data) {
    var replication = data.replication || {};
    var kind = document.getElementById("replication-kind");
    var state = document.getElementById("replication-state");
    var detail = document.getElementById("replication-detail");
    var facts = document.getElementById("replication");
    if (kind) {
      kind.textContent = replication.kind || "-";
    }
    if (state) {
      state.textContent = replication.kind === "journal"
        ? (facts && facts.getAttribute("data-embedded")) || "embedded journal"
        : (replication.state || "-");
    }
    if (detail) {
      var lines = [];
      Object.keys(replication).forEach(function (key) {
        var value = replication[key];
        if (key !== "kind" && key !== "state" && value !== null && value !== undefined) {
          lines.push(key + ": " + (typeof value === "object" ? JSON.stringify(value) : value));
        }
      });
      detail.textContent = lines.join("\n");
      detail.hidden = lines.length === 0;
    }
    var ready = document.getElementById("ready");
    if (ready) {
      ready.textContent = data.ready ? "True" : "False";
    }
    var depth = document.getElementById("queue-depth");
    if (depth) {
      depth.textContent = String(data.queue_depth);
    }
  }

  function draw(data) {
    var series = data.series;
    var times = series.t;
    var groups = [];
    data.groups.forEach(function (group, index) {
      var values = series.requests_per_s[group] || [];
      var moving = values.some(function (value) { return value > 0; });
      if (moving) {
        groups.push({name: group, values: values, color: COLORS[index % COLORS.length]});
      }
    });
    drawChart("chart-throughput", times, groups);
    drawChart("chart-latency", times, [
      {name: "p50", values: series.latency_p50_ms, color: COLORS[0]},
      {name: "p99", values: series.latency_p99_ms, color: COLORS[1]}
    ]);
    drawChart("chart-refused", times, [
      {name: "4xx/s", values: series.refused_per_s, color: COLORS[1]}
    ]);
    drawChart("chart-queue", times, [
      {name: "queue", values: series.queue_depth, color: COLORS[2]},
      {name: "in flight", values: series.in_flight, color: COLORS[3]}
    ]);
    drawChart("chart-commit", times, [
      {name: "p50", values: series.commit_p50_ms, color: COLORS[0]},
      {name: "p99", values: series.commit_p99_ms, color: COLORS[1]}
    ]);
    drawRefusals(data.refusals);
    drawReplication(data);
    var countNode = document.getElementById("sample-count");
    if (countNode) {
      countNode.textContent = String(times.length);
    }
    var updated = document.getElementById("updated");
    if (updated) {
      updated.textContent = clock(data.now_s);
    }
  }

  function schedule() {
    if (!stopped) {
      window.setTimeout(poll, intervalMs);
    }
  }

  function poll() {
    if (document.hidden) {
      schedule();
      return;
    }
    fetch(source, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (response) {
        var type = response.headers.get("content-type") || "";
        if (!response.ok || response.redirected || type.indexOf("application/json") !== 0) {
          // Logged out, or no longer permitted: stop, and say so.
          stopped = response.status === 401 || response.status === 403 || response.redirected;
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(function (data) {
        root.classList.remove("stale");
        draw(data);
      })
      .catch(function () {
        root.classList.add("stale");
      })
      .then(schedule);
  }

  poll();
}());
