// Building the page's elements. Text from the API is only ever set as text, never parsed as markup.

const SVG_NS = "http://www.w3.org/2000/svg";

function fill(el, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function h(tag, attrs, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

export function s(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

const numbers = new Intl.NumberFormat("en");
export const num = (n) => numbers.format(n);

export function percent(share) {
  return `${(share * 100).toFixed(1)}%`;
}

// Health as Consul's words, as text; the colour only repeats it.
export function health(word) {
  return h("span", {class: `health ${word}`}, word);
}

export function message(text, kind = "note") {
  return h("p", {class: `message ${kind}`}, text);
}

// "zone" of an instance as /v1/health/service shows it: service meta, else node meta.
export function zoneOf(entry) {
  return entry.Service?.Meta?.zone || entry.Node?.Meta?.zone || "";
}
