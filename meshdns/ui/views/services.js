// Every service with its instance counts by health and by source: one blocking query for the whole list,
// filtered and paged in the page (10,000 services stay responsive: only one page is in the document).
import {follow, explain} from "../api.js";
import {h, num, message} from "../dom.js";

const PAGE = 100;
const WORDS = ["passing", "warning", "critical"];

function matches(svc, needle) {
  return !needle || svc.Name.toLowerCase().includes(needle) || svc.Tags.some((t) => t.toLowerCase().includes(needle));
}

function row(svc) {
  const href = `#/service/${encodeURIComponent(svc.Name)}`;
  return h("tr", {},
    h("th", {scope: "row"}, h("a", {href}, svc.Name), svc.Split ? h("span", {class: "badge"}, "split") : null),
    h("td", {class: "n"}, num(svc.Instances)),
    WORDS.map((w) => h("td", {class: `n ${svc.Health[w] ? w : "zero"}`}, num(svc.Health[w]))),
    h("td", {class: "sources"}, Object.entries(svc.Sources).map(([name, n]) => `${name} ${num(n)}`).join(", ")),
    h("td", {class: "tags"}, svc.Tags.join(", ")));
}

export default function services(main, {signal, dc}) {
  let all = [];
  let page = 0;
  let drawn = false;
  const search = h("input", {id: "search", type: "search", autocomplete: "off", placeholder: "name or tag"});
  const counter = h("span", {class: "count", "aria-live": "polite"}, "Loading…");
  const prev = h("button", {type: "button"}, "Previous page");
  const next = h("button", {type: "button"}, "Next page");
  const body = h("tbody");
  const problem = h("div", {class: "problem"});

  function draw() {
    const needle = search.value.trim().toLowerCase();
    const shown = all.filter((svc) => matches(svc, needle));
    const pages = Math.max(1, Math.ceil(shown.length / PAGE));
    page = Math.min(page, pages - 1);
    const first = page * PAGE;
    body.replaceChildren(...shown.slice(first, first + PAGE).map(row));
    counter.textContent = shown.length
      ? `${num(shown.length)} ${shown.length === 1 ? "service" : "services"}${needle ? ` matching “${needle}”` : ""}, ` +
        `showing ${num(first + 1)}–${num(Math.min(first + PAGE, shown.length))}`
      : needle ? `No service matches “${needle}”` : "No services";
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
    if (!drawn) {
      drawn = true;
      performance.mark("meshdns:services-drawn");  // first paint of the list, for the page's timing tests
    }
  }

  search.addEventListener("input", () => { page = 0; draw(); });
  prev.addEventListener("click", () => { page -= 1; draw(); });
  next.addEventListener("click", () => { page += 1; draw(); });

  main.append(
    h("h1", {}, "Services"),
    h("div", {class: "toolbar"},
      h("label", {for: "search"}, "Search"), search, counter,
      h("span", {class: "pager"}, prev, next)),
    problem,
    h("div", {class: "scroll"},
      h("table", {class: "list"},
        h("caption", {class: "visually-hidden"}, "Services, instances by health and by source"),
        h("thead", {}, h("tr", {},
          h("th", {scope: "col"}, "Service"), h("th", {scope: "col", class: "n"}, "Instances"),
          WORDS.map((w) => h("th", {scope: "col", class: "n"}, w)),
          h("th", {scope: "col"}, "Sources"), h("th", {scope: "col", class: "tags"}, "Tags"))),
        body)));
  const path = "/v1/meshdns/services" + (dc ? `?dc=${encodeURIComponent(dc)}` : "");
  follow(path, (data) => { all = data; draw(); }, signal,
    {onError: (err) => problem.replaceChildren(...(err ? [message(explain(err), "error")] : []))});
}
