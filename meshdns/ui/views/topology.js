// Who resolves whom: clients (services known by their address, or a.b.c.0/24 networks) joined to the
// services and splits they asked for, over a window. An SVG graph with text labels, and the same edges
// as a table.
import {every, explain} from "../api.js";
import {h, s, num, message} from "../dom.js";

const WINDOWS = ["1m", "5m", "15m"];
const ROW = 40, LANE = 24, BOX_W = 190, BOX_H = 28, LABEL_W = 110, GAP = 130;

function short(name) {
  return name.length > 24 ? `${name.slice(0, 23)}…` : name;
}

// Two columns, clients on the left and the names they asked for on the right (a service that does
// both appears on each side); every edge gets its own lane in between, where its rate is written.
function layout(data) {
  const kinds = new Map(data.nodes.map((n) => [n.name, n]));
  const left = [...new Set(data.edges.map((e) => e.source))].sort();
  const right = [...new Set(data.edges.map((e) => e.target))].sort();
  const rowOf = (list) => new Map(list.map((name, i) => [name, i]));
  const lrow = rowOf(left), rrow = rowOf(right);
  const edges = [...data.edges].sort((a, b) => lrow.get(a.source) - lrow.get(b.source) ||
                                               rrow.get(a.target) - rrow.get(b.target));
  const height = Math.max(left.length * ROW, right.length * ROW, edges.length * LANE);
  const lpad = (height - left.length * ROW) / 2, rpad = (height - right.length * ROW) / 2;
  const epad = (height - edges.length * LANE) / 2;
  const mid = BOX_W + GAP + LABEL_W / 2;
  return {
    width: 2 * BOX_W + 2 * GAP + LABEL_W, height,
    left: left.map((name, i) => ({node: kinds.get(name) || {name, kind: "client"}, x: 0, y: lpad + i * ROW})),
    right: right.map((name, i) => ({node: kinds.get(name) || {name, kind: "service"},
                                    x: BOX_W + 2 * GAP + LABEL_W, y: rpad + i * ROW})),
    edges: edges.map((e, i) => ({edge: e, mid, y: epad + i * LANE + LANE / 2,
                                 y1: lpad + lrow.get(e.source) * ROW + BOX_H / 2,
                                 y2: rpad + rrow.get(e.target) * ROW + BOX_H / 2})),
  };
}

function box({node, x, y}) {
  return s("g", {class: `node ${node.kind}`},
    s("title", {}, `${node.name} (${node.kind}${node.addresses ? `, ${node.addresses} addresses` : ""})`),
    s("rect", {x, y, width: BOX_W, height: BOX_H, rx: 4}),
    s("text", {x: x + 8, y: y + BOX_H / 2 + 5}, short(node.name)));
}

function graph(data) {
  const {width, height, left, right, edges} = layout(data);
  const x1 = BOX_W, x2 = BOX_W + 2 * GAP + LABEL_W;
  const lines = edges.map(({edge: e, mid, y, y1, y2}) => {
    const a = mid - LABEL_W / 2, b = mid + LABEL_W / 2;
    const d = `M${x1},${y1} C${x1 + GAP / 2},${y1} ${a - GAP / 2},${y} ${a},${y} L${b},${y} ` +
              `C${b + GAP / 2},${y} ${x2 - GAP / 2},${y2} ${x2},${y2}`;
    return s("g", {class: `edge${e.denied ? " denied" : ""}`},
      s("title", {}, `${e.source} → ${e.target}: ${num(e.count)} queries, ${num(e.rate_per_min)} per minute${
        e.denied ? ", denied" : ""}`),
      s("path", {d, "marker-end": "url(#arrow)"}),
      s("rect", {x: a, y: y - 9, width: LABEL_W, height: 18, rx: 3, class: "lane"}),
      s("text", {x: mid, y: y + 4, class: "rate"}, `${num(e.rate_per_min)}/min${e.denied ? " denied" : ""}`));
  });
  return s("svg", {viewBox: `-4 -26 ${width + 8} ${height + 30}`, class: "graph", role: "img", width: width + 8,
                   "aria-label": `Topology graph: ${data.nodes.length} nodes, ${data.edges.length} edges`},
    s("defs", {}, s("marker", {id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 6, markerHeight: 6,
                                orient: "auto-start-reverse"}, s("path", {d: "M0,0 L10,5 L0,10 z"}))),
    s("text", {x: 0, y: -10, class: "heading"}, "Clients"),
    s("text", {x: x2, y: -10, class: "heading"}, "Asked for"),
    lines, left.map(box), right.map(box));
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
      (data.other ? `; ${num(data.other)} queries for names that are no service` : "") +
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
