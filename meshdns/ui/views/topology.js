// Who resolves whom: clients (services known by their address, or a.b.c.0/24 networks) joined to the
// services and splits they asked for, over a window. An SVG graph with text labels, and the same edges
// as a table.
import {every, explain} from "../api.js";
import {h, s, num, message} from "../dom.js";

const WINDOWS = ["1m", "5m", "15m"];
const ROW = 40, BOX_W = 190, BOX_H = 28, GAP = 150;

function short(name) {
  return name.length > 24 ? `${name.slice(0, 23)}…` : name;
}

// Three columns: clients that only ask, names that ask and are asked for, names only asked for.
function layout(data) {
  const asks = new Set(data.edges.map((e) => e.source));
  const asked = new Set(data.edges.map((e) => e.target));
  const columns = [[], [], []];
  for (const node of data.nodes) {
    const col = asks.has(node.name) ? (asked.has(node.name) ? 1 : 0) : 2;
    columns[col].push(node);
  }
  const used = columns.filter((c) => c.length);
  const place = new Map();
  used.forEach((col, i) => col.forEach((node, j) => place.set(node.name, {node, x: i * (BOX_W + GAP), y: j * ROW})));
  const width = used.length * BOX_W + (used.length - 1) * GAP;
  const height = Math.max(1, ...used.map((c) => c.length)) * ROW;
  return {place, width: Math.max(width, BOX_W), height};
}

function graph(data) {
  const {place, width, height} = layout(data);
  const edges = data.edges.map((e) => {
    const a = place.get(e.source), b = place.get(e.target);
    if (!a || !b) return null;
    const x1 = a.x + BOX_W, y1 = a.y + BOX_H / 2, x2 = b.x, y2 = b.y + BOX_H / 2;
    const back = x2 <= x1;
    const d = back
      ? `M${x1},${y1} C${x1 + 60},${y1} ${x2 - 60},${y2 + ROW} ${x2},${y2}`
      : `M${x1},${y1} C${(x1 + x2) / 2},${y1} ${(x1 + x2) / 2},${y2} ${x2},${y2}`;
    const mx = (x1 + x2) / 2, my = (y1 + y2) / 2;
    const text = `${num(e.rate_per_min)}/min${e.denied ? " denied" : ""}`;
    return s("g", {class: `edge${e.denied ? " denied" : ""}`},
      s("title", {}, `${e.source} → ${e.target}: ${num(e.count)} queries, ${num(e.rate_per_min)} per minute${e.denied ? ", denied" : ""}`),
      s("path", {d, "marker-end": "url(#arrow)"}),
      s("text", {x: mx, y: my - 4, class: "rate"}, text));
  });
  const nodes = [...place.values()].map(({node, x, y}) => s("g", {class: `node ${node.kind}`},
    s("title", {}, `${node.name} (${node.kind}${node.addresses ? `, ${node.addresses} addresses` : ""})`),
    s("rect", {x, y, width: BOX_W, height: BOX_H, rx: 4}),
    s("text", {x: x + 8, y: y + BOX_H / 2 + 5}, short(node.name))));
  return s("svg", {viewBox: `-4 -24 ${width + 8} ${height + 28}`, class: "graph", role: "img",
                   width: width + 8, "aria-label": `Topology graph: ${data.nodes.length} nodes, ${data.edges.length} edges`},
    s("defs", {}, s("marker", {id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 6, markerHeight: 6,
                                orient: "auto-start-reverse"}, s("path", {d: "M0,0 L10,5 L0,10 z"}))),
    edges, nodes);
}

function table(data) {
  return h("div", {class: "scroll"}, h("table", {class: "edges"},
    h("caption", {}, "Queries by client and name asked for"),
    h("thead", {}, h("tr", {}, h("th", {scope: "col"}, "Client"), h("th", {scope: "col"}, "Asked for"),
      h("th", {scope: "col", class: "n"}, "Queries"), h("th", {scope: "col", class: "n"}, "Per minute"),
      h("th", {scope: "col"}, "Denied"))),
    h("tbody", {}, data.edges.map((e) => h("tr", {class: e.denied ? "denied" : ""},
      h("td", {}, e.source), h("td", {}, e.target), h("td", {class: "n"}, num(e.count)),
      h("td", {class: "n"}, num(e.rate_per_min)), h("td", {}, e.denied ? "denied" : "no"))))));
}

export default function topology(main, {signal}) {
  const choice = h("select", {id: "window"}, WINDOWS.map((w) => h("option", {value: w, selected: w === "15m"}, w)));
  const about = h("p", {class: "quiet"}, "Loading…");
  const picture = h("div", {class: "graph-box"});
  const listing = h("div");
  const problem = h("div", {class: "problem"});
  let inner = null;

  function show(data) {
    if (!data.enabled) {
      about.textContent = "Topology counting is off on this server ([ui] topology = false).";
      picture.replaceChildren();
      listing.replaceChildren();
      return;
    }
    about.textContent = `Last ${data.window} (${data.minutes} min counted), generated ${data.generated}` +
      (data.dropped ? `; ${num(data.dropped)} queries not counted (too many distinct clients)` : "");
    picture.replaceChildren(data.edges.length ? graph(data) : message("No queries for services in this window."));
    listing.replaceChildren(data.edges.length ? table(data) : "");
  }

  function start() {
    inner?.abort();
    inner = new AbortController();
    signal.addEventListener("abort", () => inner.abort(), {once: true});
    every(`/v1/meshdns/topology?window=${choice.value}`, 10000, show, inner.signal,
      {onError: (err) => problem.replaceChildren(...(err ? [message(explain(err), "error")] : []))});
  }

  choice.addEventListener("change", start);
  main.append(h("h1", {}, "Topology"),
    h("div", {class: "toolbar"}, h("label", {for: "window"}, "Window"), choice, about),
    h("p", {class: "quiet"}, "Clients that are catalog instances are named by their services; others by their /24 (IPv6: /64)."),
    problem, picture, listing);
  start();
}
