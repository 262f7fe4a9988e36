// The page: a router over hash addresses (#/services, #/service/<name>, #/splits, #/topology, #/sources),
// the token and datacenter settings, and one status line. Each view follows its data until it is left.
import * as api from "./api.js";
import {h} from "./dom.js";
import services from "./views/services.js";
import service from "./views/service.js";
import splits from "./views/splits.js";
import topology from "./views/topology.js";
import sources from "./views/sources.js";

const VIEWS = {services, service, splits, topology, sources};
const main = document.getElementById("main");
const statusLine = document.getElementById("status");
const tokenInput = document.getElementById("token");
const dcSelect = document.getElementById("dc");

let current = null;  // the open view's AbortController
let datacenter = "";

function say(text) {
  statusLine.textContent = text || "";
}

function route({focus = true} = {}) {
  const [name, ...rest] = (location.hash.replace(/^#\/?/, "") || "services").split("/");
  const view = VIEWS[name] ? name : "services";
  current?.abort();
  current = new AbortController();
  say("");
  main.replaceChildren();
  for (const link of document.querySelectorAll("nav a")) {
    const here = link.getAttribute("href") === `#/${view === "service" ? "services" : view}`;
    if (here) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  VIEWS[view](main, {
    signal: current.signal,
    arg: decodeURIComponent(rest.join("/")),
    dc: datacenter,
    token: api.token(),
    say,
  });
  if (focus) main.focus({preventScroll: true});
}

function showDatacenters(list) {
  const chosen = datacenter || list[0] || "";
  dcSelect.replaceChildren(...list.map((dc) => h("option", {value: dc, selected: dc === chosen}, dc)));
  if (!datacenter) datacenter = chosen;
}

tokenInput.value = api.token();
tokenInput.addEventListener("change", () => {
  api.setToken(tokenInput.value.trim());
  route({focus: false});
});
document.getElementById("forget").addEventListener("click", () => {
  tokenInput.value = "";
  api.setToken("");
  route({focus: false});
});
dcSelect.addEventListener("change", () => {
  datacenter = dcSelect.value;
  route({focus: false});
});
window.addEventListener("hashchange", () => route());

const everything = new AbortController();
api.follow("/v1/catalog/datacenters", showDatacenters, everything.signal);
route({focus: false});
