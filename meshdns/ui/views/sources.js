// Sources and peers as /readyz names them (zones, registrations, config, kubernetes/<name>, peers),
// with their sync state and errors; and the datacenters this server knows.
import {every, follow, explain} from "../api.js";
import {h, message} from "../dom.js";

function value(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function row(name, st) {
  const {synced, errors, ...details} = st;
  const problems = Object.entries(errors || {});
  return h("tr", {"data-source": name},
    h("th", {scope: "row"}, name),
    h("td", {class: synced ? "passing" : "critical"}, synced ? "synced" : "not synced"),
    h("td", {}, Object.entries(details).map(([k, v]) => `${k.replaceAll("_", " ")}: ${value(v)}`).join("; ") || "—"),
    h("td", {}, problems.length ? h("ul", {class: "errors"}, problems.map(([k, v]) => h("li", {}, `${k}: ${v}`))) : "none"));
}

export default function sources(main, {signal}) {
  const ready = h("p", {class: "summary"}, "Loading…");
  const body = h("tbody");
  const extra = h("div");
  const dcs = h("ul", {class: "dcs"});
  const problem = h("div", {class: "problem"});
  main.append(h("h1", {}, "Sources and peers"), ready, problem,
    h("div", {class: "scroll"}, h("table", {class: "sources"},
      h("thead", {}, h("tr", {}, h("th", {scope: "col"}, "Source"), h("th", {scope: "col"}, "State"),
        h("th", {scope: "col"}, "Details"), h("th", {scope: "col"}, "Errors"))), body)),
    extra,
    h("h2", {}, "Datacenters"), dcs);
  const onError = (err) => problem.replaceChildren(...(err ? [message(explain(err), "error")] : []));
  every("/readyz", 10000, (data) => {
    ready.textContent = data.ready ? "Ready: every source has synced." : "Not ready: a source has not synced yet.";
    body.replaceChildren(...Object.entries(data.sources || {}).map(([name, st]) => row(name, st)));
    const others = Object.entries(data).filter(([k]) => k !== "ready" && k !== "sources");
    extra.replaceChildren(...others.map(([k, v]) => h("p", {}, h("strong", {}, `${k}: `), value(v))));
  }, signal, {onError, accept: [503]});
  follow("/v1/catalog/datacenters", (list) => {
    dcs.replaceChildren(...list.map((dc, i) => h("li", {}, dc, i === 0 ? " (this server's)" : "")));
  }, signal, {onError});
}
