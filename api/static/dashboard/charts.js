// Small inline-SVG charts: the quota gauge, stacked bars per day (one group per day with usage, one segment per
// model) and a share bar. Colours come from CSS classes (m0..m7 per model), never from inline styles.

import { fmt, s } from "./dom.js";

export const modelClass = (index) => `m${index % 8}`;

/** A half-ring gauge. `percent` is the API's decimal string, or null on an unlimited plan. */
export function gauge(percent, { unlimited }) {
  const arc = "M 20 110 A 80 80 0 0 1 180 110";
  const value = unlimited ? 100 : Math.max(0, Math.min(100, Number(percent ?? 0)));
  const level = unlimited ? "unlimited" : Number(percent) >= 100 ? "over" : Number(percent) >= 80 ? "warn" : "ok";
  const label = unlimited ? "Unlimited" : fmt.percent(percent ?? "0");
  return s("svg", { class: `gauge gauge-${level}`, viewBox: "0 0 200 128", role: "img",
                    "aria-label": unlimited ? "Unlimited plan" : `${label} of the monthly quota used`,
                    "data-percent": unlimited ? "unlimited" : percent ?? "0" },
    s("path", { class: "gauge-track", d: arc, pathLength: 100 }),
    s("path", { class: "gauge-value", d: arc, pathLength: 100, "stroke-dasharray": `${value} 100` }),
    s("text", { class: "gauge-label", x: 100, y: 100, "text-anchor": "middle" }, label),
    s("text", { class: "gauge-sub", x: 100, y: 122, "text-anchor": "middle" },
      unlimited ? "no monthly limit" : "of the monthly quota"));
}

function niceMax(max) {
  if (max <= 0) return { top: 4, step: 1 };
  const rough = max / 4;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((m) => m >= rough);
  return { top: Math.ceil(max / step) * step, step };
}

/**
 * Stacked bars: `days` (every day of the month, the x axis), `lines` ({day, model, ...}), `models` (names, in
 * legend order) and `value(line)` (the number to draw). One <g class="bar" data-day> per day that has lines.
 */
export function stackedBars({ days, lines, models, value, title }) {
  const W = 640, H = 240, left = 52, right = 10, top = 14, bottom = 30;
  const plotW = W - left - right, plotH = H - top - bottom;
  const byDay = new Map();
  for (const line of lines) {
    if (!byDay.has(line.day)) byDay.set(line.day, []);
    byDay.get(line.day).push(line);
  }
  const totals = [...byDay.values()].map((group) => group.reduce((sum, line) => sum + value(line), 0));
  const { top: yMax, step } = niceMax(Math.max(0, ...totals));
  const y = (v) => top + plotH - (v / yMax) * plotH;
  const slot = plotW / days.length;
  const barW = Math.max(2, slot * 0.62);

  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  const grid = s("g", { class: "grid" });
  for (let v = 0; v <= yMax + step / 2; v += step) {
    grid.append(s("line", { x1: left, x2: W - right, y1: y(v), y2: y(v) }),
                s("text", { class: "tick", x: left - 8, y: y(v) + 4, "text-anchor": "end" }, fmt.compact(v)));
  }
  svg.append(grid);
  const axis = s("g", { class: "axis" });
  days.forEach((day, i) => {
    const n = i + 1;
    if (n === 1 || n === days.length || (n % 5 === 0 && days.length - n > 2)) {
      axis.append(s("text", { class: "tick", x: left + slot * (i + 0.5), y: H - 10, "text-anchor": "middle" }, n));
    }
  });
  svg.append(axis);

  const bars = s("g", { class: "bars" });
  days.forEach((day, i) => {
    const group = byDay.get(day);
    if (!group) return;
    const x = left + slot * i + (slot - barW) / 2;
    const g = s("g", { class: "bar", "data-day": day });
    let base = 0;
    for (const model of models) {
      const v = group.filter((line) => line.model === model).reduce((sum, line) => sum + value(line), 0);
      if (v <= 0) continue;
      const y0 = y(base), y1 = y(base + v);
      g.append(s("rect", { class: `seg ${modelClass(models.indexOf(model))}`, x, y: y1, width: barW,
                           height: Math.max(1, y0 - y1), "data-model": model },
        s("title", {}, `${fmt.date(day)} · ${model}: ${fmt.int(v)}`)));
      base += v;
    }
    g.append(s("title", {}, `${fmt.date(day)}: ${fmt.int(base)}`));
    bars.append(g);
  });
  svg.append(bars);
  return svg;
}

/** A thin horizontal bar: `part` of `whole`. */
export function shareBar(part, whole, index) {
  const width = whole > 0 ? (part / whole) * 100 : 0;
  return s("svg", { class: "share", viewBox: "0 0 100 8", preserveAspectRatio: "none", "aria-hidden": "true" },
    s("rect", { class: "share-track", x: 0, y: 0, width: 100, height: 8, rx: 4 }),
    s("rect", { class: `share-fill ${modelClass(index)}`, x: 0, y: 0, width, height: 8, rx: 4 }));
}
