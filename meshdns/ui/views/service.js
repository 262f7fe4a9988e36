// One service: each instance with its address, port, zone, weights, tags, meta and checks (with output).
import {follow, explain} from "../api.js";
import {h, health, num, message, zoneOf} from "../dom.js";

const WORDS = ["passing", "warning", "critical"];

function worst(checks) {
  const order = {passing: 0, warning: 1, critical: 2};
  return checks.reduce((w, c) => (order[c.Status] > order[w] ? c.Status : w), "passing");
}

function pairs(meta) {
  const entries = Object.entries(meta || {});
  return entries.length ? entries.map(([k, v]) => `${k}=${v}`).join(", ") : "—";
}

function check(c) {
  return h("li", {class: "check"},
    h("p", {}, health(c.Status), " ", h("strong", {}, c.Name), c.Type ? ` (${c.Type})` : "",
      c.ServiceID ? "" : " — node check"),
    c.Output ? h("pre", {class: "output"}, c.Output) : h("p", {class: "quiet"}, "No output"),
    c.Notes ? h("p", {class: "quiet"}, c.Notes) : null);
}

function instance(entry) {
  const svc = entry.Service;
  const address = svc.Address || entry.Node.Address;
  const w = svc.Weights || {Passing: 1, Warning: 1};
  return h("article", {class: "instance"},
    h("h2", {}, svc.ID, " ", health(worst(entry.Checks))),
    h("dl", {class: "facts"},
      h("dt", {}, "Address"), h("dd", {}, address || "—"),
      h("dt", {}, "Port"), h("dd", {}, svc.Port ? String(svc.Port) : "—"),
      h("dt", {}, "Node"), h("dd", {}, entry.Node.Node || "—"),
      h("dt", {}, "Zone"), h("dd", {}, zoneOf(entry) || "—"),
      h("dt", {}, "Weights"), h("dd", {}, `passing ${w.Passing}, warning ${w.Warning}`),
      h("dt", {}, "Tags"), h("dd", {}, svc.Tags.length ? svc.Tags.join(", ") : "—"),
      h("dt", {}, "Meta"), h("dd", {}, pairs(svc.Meta))),
    h("h3", {}, "Checks"),
    h("ul", {class: "checks"}, entry.Checks.map(check)));
}

export default function service(main, {signal, arg, dc}) {
  const summary = h("p", {class: "summary"}, "Loading…");
  const list = h("div", {class: "instances"});
  const problem = h("div", {class: "problem"});
  main.append(h("p", {class: "crumbs"}, h("a", {href: "#/services"}, "Services")),
    h("h1", {}, arg), summary, problem, list);
  const query = dc ? `?dc=${encodeURIComponent(dc)}` : "";
  follow(`/v1/health/service/${encodeURIComponent(arg)}${query}`, (entries) => {
    const counts = {passing: 0, warning: 0, critical: 0};
    for (const e of entries) counts[worst(e.Checks)] += 1;
    summary.replaceChildren(entries.length
      ? `${num(entries.length)} ${entries.length === 1 ? "instance" : "instances"}: ` +
        WORDS.map((word) => `${num(counts[word])} ${word}`).join(", ")
      : "No instances of this service.");
    list.replaceChildren(...entries.map(instance));
  }, signal, {onError: (err) => problem.replaceChildren(...(err ? [message(explain(err), "error")] : []))});
}
