// Splits: configured weights beside the shares DNS serves now and the answers counted by target,
// with a chart of the last minutes. With a token, the weights can be changed here (after a confirmation).
import {follow, request, explain} from "../api.js";
import {h, s, num, percent, message} from "../dom.js";

const label = (t) => (t.ServiceSubset ? `${t.Service}:${t.ServiceSubset}` : t.Service);

function chart(series, targets, interval) {
  const width = 300, height = 64;
  const longest = Math.max(2, ...targets.map((t) => (series[t] || []).length));
  const top = Math.max(1, ...targets.flatMap((t) => series[t] || []));
  const span = (longest - 1) * interval;
  const ago = span >= 60 ? `${Math.round(span / 60)} min ago` : `${span} s ago`;
  return s("svg", {viewBox: `0 0 ${width} ${height + 14}`, class: "chart", role: "img",
                   "aria-label": `Answers by target per ${interval} s, from ${ago} to now`},
    s("line", {x1: 0, y1: height, x2: width, y2: height, class: "axis"}),
    targets.map((t, i) => {
      const values = series[t] || [];
      const offset = longest - values.length;
      const points = values.map((v, j) =>
        `${(((offset + j) / (longest - 1)) * width).toFixed(1)},${(height - (v / top) * (height - 4)).toFixed(1)}`);
      return points.length ? s("polyline", {points: points.join(" "), class: `line c${i % 6}`},
                               s("title", {}, `${t}: ${values.join(", ")}`)) : null;
    }),
    s("text", {x: 0, y: height + 12, class: "tick"}, ago),
    s("text", {x: width, y: height + 12, class: "tick end"}, `now · peak ${num(top)} per ${interval} s`));
}

class SplitCard {
  constructor(entry, editable, say) {
    this.entry = entry;
    this.editable = editable;
    this.say = say;
    this.answers = {};
    this.interval = 10;
    this.el = h("section", {class: "split", "aria-labelledby": `split-${entry.Name}`});
    this.build();
  }

  build() {
    const entry = this.entry;
    this.rows = entry.Splits.map((t, i) => {
      const input = this.editable ? h("input", {type: "number", min: 0, max: 100, step: "0.01", value: t.Weight,
        id: `weight-${entry.Name}-${i}`, oninput: () => { this.dirty = true; this.total(); }}) : null;
      return {target: t, input, weight: h("td", {class: "n weight", "data-label": "Configured weight"}),
              share: h("td", {class: "n share", "data-label": "Effective share"}),
              count: h("td", {class: "n answers", "data-label": "Answers"})};
    });
    this.dirty = false;
    this.meta = h("p", {class: "quiet"});
    this.srv = h("p", {class: "quiet"});
    this.figure = h("figure", {class: "chart"});
    this.note = h("div", {class: "edit-note"});
    this.el.replaceChildren(
      h("h2", {id: `split-${entry.Name}`}, entry.Name),
      this.meta,
      h("div", {class: "scroll"}, h("table", {class: "targets"},
        h("thead", {}, h("tr", {},
          h("th", {scope: "col"}, "Target"), h("th", {scope: "col", class: "n"}, "Configured weight"),
          h("th", {scope: "col", class: "n"}, "Effective share"), h("th", {scope: "col", class: "n"}, "Answers"),
          this.editable ? h("th", {scope: "col", class: "n"}, "New weight") : null)),
        h("tbody", {}, this.rows.map((r, i) => h("tr", {"data-target": label(r.target)},
          h("th", {scope: "row"}, h("span", {class: `swatch c${i % 6}`, "aria-hidden": "true"}), label(r.target)),
          r.weight, r.share, r.count,
          r.input ? h("td", {class: "n", "data-label": "New weight"}, h("label", {class: "visually-hidden", for: r.input.id},
                                               `New weight for ${label(r.target)}`), r.input) : null))))),
      this.srv,
      this.figure,
      this.note);
    if (this.editable) {
      this.sum = h("span", {class: "sum"});
      this.save = h("button", {type: "button", onclick: () => this.confirm()}, "Save");
      this.result = h("p", {class: "result", role: "status"});
      this.confirmBox = h("div", {class: "confirm"});
      this.note.replaceChildren(h("div", {class: "edit"}, this.sum, this.save), this.confirmBox, this.result);
    } else {
      this.note.replaceChildren(message("Read-only: enter a token above to change the weights."));
    }
    this.update(entry);
  }

  update(entry) {
    const sameTargets = JSON.stringify(entry.Splits.map(label)) === JSON.stringify(this.entry.Splits.map(label));
    const changed = JSON.stringify(entry.Splits) !== JSON.stringify(this.entry.Splits);
    this.entry = entry;
    if (!sameTargets) return this.build();
    const shares = Object.fromEntries((entry.EffectiveShares || []).map((x) => [label(x), x.Share]));
    this.meta.textContent = `Source: ${entry.Meta?.["meshdns-source"] || "—"} · healthy targets: ${
      (entry.HealthyTargets || []).join(", ") || "none"} · with no healthy target: ${entry.OnAllUnhealthy || "nxdomain"}`;
    entry.Splits.forEach((t, i) => {
      const r = this.rows[i];
      r.target = t;
      r.weight.textContent = num(t.Weight);
      r.share.textContent = percent(shares[label(t)] || 0);
      if (r.input && (changed || !this.dirty)) r.input.value = t.Weight;
    });
    if (changed) this.dirty = false;
    this.total();
    this.showAnswers(this.answers, this.interval);
  }

  showAnswers(answers, interval) {
    this.answers = answers || {};
    this.interval = interval;
    const labels = this.rows.map((r) => label(r.target));
    labels.forEach((l, i) => { this.rows[i].count.textContent = num(this.answers[l]?.count || 0); });
    const srv = this.answers["*"];
    this.srv.textContent = srv ? `SRV answers (every target in one answer): ${num(srv.count)}` : "";
    const series = Object.fromEntries(labels.map((l) => [l, this.answers[l]?.series || []]));
    this.figure.replaceChildren(chart(series, labels, interval),
      h("figcaption", {}, `Answers by target, per ${interval} s`));
  }

  values() {
    return this.rows.map((r) => Number(r.input.value));
  }

  total() {
    if (!this.sum) return;
    const total = this.values().reduce((a, b) => a + b, 0);
    this.sum.textContent = `Total ${num(Math.round(total * 100) / 100)} of 100`;
  }

  confirm() {
    const values = this.values();
    const total = values.reduce((a, b) => a + b, 0);
    if (values.some((v) => !Number.isFinite(v) || v < 0 || v > 100) || Math.abs(total - 100) > 1e-6) {
      this.result.replaceChildren(message(`The weights must be numbers from 0 to 100 adding up to 100 (now ${num(total)}).`, "error"));
      return;
    }
    const changes = this.rows.map((r, i) => `${label(r.target)} ${num(r.target.Weight)} → ${num(values[i])}`).join(", ");
    const yes = h("button", {type: "button", onclick: () => this.send(values)}, "Confirm");
    const no = h("button", {type: "button", onclick: () => { this.confirmBox.replaceChildren(); this.save.focus(); }}, "Cancel");
    this.confirmBox.replaceChildren(h("p", {}, `Change ${this.entry.Name}: ${changes}?`), yes, no);
    yes.focus();
  }

  async send(values) {
    this.confirmBox.replaceChildren();
    const body = {Kind: "service-splitter", Name: this.entry.Name,
                  Splits: this.entry.Splits.map((t, i) => ({...t, Weight: values[i]}))};
    try {
      await request("PUT", "/v1/config", {body});
      const text = `Saved: ${this.entry.Name} is now ${this.rows.map((r, i) => `${label(r.target)} ${num(values[i])}`).join(", ")}.`;
      this.result.replaceChildren(message(text, "ok"));
      this.say(text);
      this.dirty = false;
    } catch (err) {
      this.result.replaceChildren(message(`Not saved. ${explain(err)}`, "error"));
    }
    this.save.focus();
  }
}

export default function splits(main, {signal, token, say}) {
  const cards = new Map();
  const list = h("div", {class: "splits"}, message("Loading…"));
  const problem = h("div", {class: "problem"});
  let answers = {splits: {}, interval: 10};
  main.append(h("h1", {}, "Splits"), problem, list);
  const onError = (err) => problem.replaceChildren(...(err ? [message(explain(err), "error")] : []));
  follow("/v1/config/service-splitter", (entries) => {
    const names = new Set(entries.map((e) => e.Name));
    for (const name of [...cards.keys()]) if (!names.has(name)) cards.delete(name);
    for (const entry of entries) {
      const card = cards.get(entry.Name);
      if (card) card.update(entry);
      else {
        const made = new SplitCard(entry, Boolean(token), say);
        made.showAnswers(answers.splits[entry.Name], answers.interval);
        cards.set(entry.Name, made);
      }
    }
    list.replaceChildren(...(entries.length ? entries.map((e) => cards.get(e.Name).el)
                                            : [message("No splits are configured.")]));
  }, signal, {onError});
  follow("/v1/meshdns/split-answers", (data) => {
    answers = data;
    for (const [name, card] of cards) card.showAnswers(data.splits[name], data.interval);
  }, signal, {onError, indexOf: (reply) => reply.data.index});
}
