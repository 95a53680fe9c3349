// rnnkit view: draws the recurrent network's trace from the JSON data block of this page.
// Plain JavaScript, no network.  Shapes: T steps, H units of a quantity, L layers, D directions.
// window.rnnkitView exposes the state, the decoded values and `ready` / `renderMs` for tests.
(function () {
  "use strict";
  const view = (window.rnnkitView = { ready: false, errors: [] });
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const HEAT_WIDTH = 860, CHART_LEFT = 50;

  function fail(message) {
    view.errors.push(String(message));
    const box = $("errors");
    box.hidden = false;
    box.textContent += String(message) + "\n";
  }
  window.addEventListener("error", (e) => fail(e.message));
  window.addEventListener("unhandledrejection", (e) => fail(e.reason && e.reason.message || e.reason));

  const data = JSON.parse($("rnnkit-data").textContent);
  const T = data.steps, model = data.model;
  const state = { layer: 0, dir: 0, unit: 0, quantity: null, width: 0, start: 0, signal: null, hover: null };
  const blocks = {};                      // "l/d/name" -> {units, q (H*T bytes), lo, step, min, max}

  // ---------- data ----------

  async function inflate(b64) {
    /** base64 of zlib bytes -> Uint8Array of the packed trace. */
    if (typeof DecompressionStream === "undefined")
      throw new Error("this browser cannot unpack the page's data (no DecompressionStream); use a current Chrome, Firefox or Safari");
    const bin = atob(b64), bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  function decode(bytes) {
    /** Slice the packed bytes into blocks, in the order the page wrote them (layer, direction, name). */
    const levels = (1 << data.trace.bits) - 1;
    let k = 0;
    for (let l = 0; l < model.layers; l++)
      for (let d = 0; d < model.directions; d++)
        for (const name of model.names) {
          const m = data.trace.blocks[k++];
          const b = { units: m.units, q: bytes.subarray(m.offset, m.offset + m.units * T), lo: m.lo, step: m.step };
          b.min = Math.min(...m.lo);
          b.max = Math.max(...m.lo.map((lo, u) => lo + levels * m.step[u]));
          b.sequential = b.min >= 0 && b.max <= 1;
          b.scale = b.sequential ? 1 : m.scale;        // diverging colours saturate at +-scale
          blocks[`${l}/${d}/${name}`] = b;
        }
  }

  const block = (name) => blocks[`${state.layer}/${state.dir}/${name}`];
  const value = (b, u, t) => b.lo[u] + b.q[u * T + t] * b.step[u];   // within step[u] / 2 of the trace
  view.value = (layer, dir, name, u, t) => value(blocks[`${layer}/${dir}/${name}`], u, t);
  view.state = state;

  // ---------- colours ----------

  const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const DIVERGING = [[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130], [178, 24, 43]];

  function ramp(stops, x) {
    /** x in [0, 1] -> [r, g, b] interpolated between the stops. */
    const p = Math.min(Math.max(x, 0), 1) * (stops.length - 1), i = Math.min(Math.floor(p), stops.length - 2), f = p - i;
    return stops[i].map((c, j) => Math.round(c + f * (stops[i + 1][j] - c)));
  }
  const colour = (b, v) => b.sequential ? ramp(VIRIDIS, v) : ramp(DIVERGING, 0.5 + 0.5 * v / b.scale);
  const css = (rgb) => `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`;
  const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];
  const fmt = (v) => v === null || v === undefined ? "—" : Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(3) : v.toPrecision(4);

  // ---------- window ----------

  const windowEnd = () => Math.min(state.start + state.width, T);
  function setWindow(start) {
    state.start = Math.max(0, Math.min(Math.round(start), T - state.width));
    $("scroll").value = state.start;
    $("window-label").textContent = `steps ${state.start}–${windowEnd() - 1} of ${T}`;
  }
  function centreOn(t) { setWindow(t - state.width / 2); redraw(); }

  // ---------- charts (SVG lines) ----------

  function el(name, attrs, parent) {
    const e = document.createElementNS(SVG, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }

  function lineChart(container, lines, opts) {
    /** lines: [{name, values (T,) with nulls, colour, dash}]; opts: {x0, x1, height, log, shade: [a, b]}.
        Draws steps x0..x1-1 across HEAT_WIDTH pixels; returns the svg. */
    const x0 = opts.x0, x1 = opts.x1, W = HEAT_WIDTH, H = opts.height || 140;
    const tx = (v) => opts.log ? (v > 0 ? Math.log10(v) : null) : v;
    let lo = Infinity, hi = -Infinity;
    for (const line of lines)
      for (let t = x0; t < x1; t++) {
        const v = line.values[t] === null ? null : tx(line.values[t]);
        if (v !== null && isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
      }
    if (!isFinite(lo)) { lo = 0; hi = 1; }
    if (hi - lo < 1e-12) { lo -= 0.5; hi += 0.5; }
    const top = 6 + 13 * Math.ceil(lines.length / 6), bottom = H + top - 16;    // legend rows above
    const sx = (t) => CHART_LEFT + ((t - x0 + 0.5) / (x1 - x0)) * W, sy = (v) => top + 4 + (1 - (v - lo) / (hi - lo)) * (bottom - top - 8);
    container.textContent = "";
    const svg = el("svg", { width: CHART_LEFT + W + 10, height: bottom + 16 }, container);
    svg.dataset.x0 = x0; svg.dataset.x1 = x1;
    if (opts.shade) el("rect", { x: sx(opts.shade[0] - 0.5), y: top, width: Math.max(sx(opts.shade[1] - 0.5) - sx(opts.shade[0] - 0.5), 1), height: bottom - top, fill: "#eef3ff" }, svg);
    for (const v of [lo, hi]) {
      const label = el("text", { x: CHART_LEFT - 4, y: sy(v) + 4, "text-anchor": "end", class: "axis" }, svg);
      label.textContent = opts.log ? Math.pow(10, v).toExponential(0) : fmt(v);
    }
    for (const t of [x0, x1 - 1]) el("text", { x: sx(t), y: bottom + 14, "text-anchor": "middle", class: "axis" }, svg).textContent = t;
    el("line", { x1: CHART_LEFT, x2: CHART_LEFT + W, y1: bottom, y2: bottom, stroke: "#ccc" }, svg);
    lines.forEach((line, i) => {
      let d = "", pen = false;
      for (let t = x0; t < x1; t++) {
        const v = line.values[t] === null ? null : tx(line.values[t]);
        if (v === null || !isFinite(v)) { pen = false; continue; }
        d += `${pen ? "L" : "M"}${sx(t).toFixed(1)},${sy(v).toFixed(1)}`;
        pen = true;
      }
      const path = el("path", { d: d, fill: "none", stroke: line.colour || PALETTE[i % PALETTE.length], "stroke-width": 1.5 }, svg);
      if (line.dash) path.setAttribute("stroke-dasharray", "5 3");
      path.dataset.name = line.name;
      const legend = el("text", { x: CHART_LEFT + 140 * (i % 6), y: 12 + 13 * Math.floor(i / 6), class: "legend", fill: line.colour || PALETTE[i % PALETTE.length] }, svg);
      legend.textContent = line.name;
    });
    svg.appendChild(el("line", { class: "cursor", y1: top, y2: bottom, stroke: "#000", "stroke-width": 1, visibility: "hidden" }));
    svg.addEventListener("mousemove", (e) => {
      const t = x0 + Math.floor(((e.clientX - svg.getBoundingClientRect().left - CHART_LEFT) / W) * (x1 - x0));
      if (t >= x0 && t < x1) hover(t, null);
    });
    if (opts.clickToScroll) svg.addEventListener("click", (e) => {
      const t = x0 + Math.floor(((e.clientX - svg.getBoundingClientRect().left - CHART_LEFT) / W) * (x1 - x0));
      if (t >= x0 && t < x1) centreOn(t);
    });
    return svg;
  }

  function moveCursors(t) {
    for (const svg of document.querySelectorAll(".chart svg")) {
      const x0 = +svg.dataset.x0, x1 = +svg.dataset.x1, c = svg.querySelector(".cursor");
      if (t === null || t < x0 || t >= x1) { c.setAttribute("visibility", "hidden"); continue; }
      const x = CHART_LEFT + ((t - x0 + 0.5) / (x1 - x0)) * HEAT_WIDTH;
      c.setAttribute("x1", x); c.setAttribute("x2", x); c.setAttribute("visibility", "visible");
    }
  }

  // ---------- the task view ----------

  function buildTask() {
    const box = $("task");
    if (data.kind === "text") {
      box.innerHTML = "<h2>The text, each character coloured by the unit</h2><div id=\"text\"></div>";
      const frag = document.createDocumentFragment();
      for (let t = 0; t < T; t++) {
        const s = document.createElement("span");
        const ch = data.text[t];
        s.textContent = ch === "\n" ? "↵\n" : ch;
        s.dataset.t = t;
        frag.appendChild(s);
      }
      const text = $("text");
      text.appendChild(frag);
      text.addEventListener("mouseover", (e) => { if (e.target.dataset.t) hover(+e.target.dataset.t, null); });
      text.addEventListener("click", (e) => { if (e.target.dataset.t) centreOn(+e.target.dataset.t); });
    } else {
      const title = { series: "The series: input, forecast and truth", classes: "The sequence and the class probabilities per step", sequence: "The input" }[data.kind];
      box.innerHTML = `<h2>${title}</h2><div id="task-plot" class="chart"></div><div id="task-plot2" class="chart"></div>`;
    }
  }

  function drawTask() {
    const u = state.unit, shade = [state.start, windowEnd()];
    if (data.kind === "text") {
      const b = block(state.quantity), spans = $("text").children, ok = u < b.units;
      for (let t = 0; t < T; t++) {
        const rgb = ok ? colour(b, value(b, u, t)) : [255, 255, 255];
        spans[t].style.backgroundColor = css(rgb);
        spans[t].style.color = rgb[0] * 0.3 + rgb[1] * 0.59 + rgb[2] * 0.11 < 110 ? "#fff" : "#000";
        spans[t].classList.toggle("out", t < shade[0] || t >= shade[1]);
      }
      return;
    }
    const plot = $("task-plot"), plot2 = $("task-plot2");
    if (data.kind === "series") {
      const styles = { input: ["#999", false], truth: ["#000", false], forecast: ["#d62728", false] };
      const lines = Object.keys(data.series).map((k, i) => ({ name: k, values: data.series[k], colour: (styles[k] || [PALETTE[(i + 2) % 10]])[0], dash: !styles[k] }));
      lineChart(plot, lines, { x0: 0, x1: T, height: 180, shade: shade, clickToScroll: true });
      return;
    }
    if (data.input) lineChart(plot, data.input[0].map((_, c) => ({ name: `input ${c}`, values: data.input.map((row) => row[c]) })), { x0: 0, x1: T, height: 140, shade: shade, clickToScroll: true });
    else plot.textContent = "(the input has too many channels to draw)";
    if (data.kind === "classes") {
      const c = data.classes;
      const lines = c.names.map((n, k) => ({ name: `p(${n})` + (c.label === k ? " (true class)" : ""), values: c.probs.map((row) => row[k]), dash: c.label !== null && c.label !== undefined && c.label !== k }));
      lineChart(plot2, lines.slice(0, 10), { x0: 0, x1: T, height: 160, shade: shade, clickToScroll: true });
    }
  }

  // ---------- heatmaps ----------

  const heat = {};                                   // name -> {canvas, image (offscreen), rowPx}

  function buildHeatmaps() {
    const box = $("heatmaps");
    for (const name of model.names) {
      const div = document.createElement("div");
      div.className = "heat";
      div.dataset.name = name;
      div.innerHTML = `<div class="heat-label"><span>${model.labels[name]} <code>${name}</code></span><span class="range"></span></div>`;
      const canvas = document.createElement("canvas");
      canvas.dataset.name = name;
      div.appendChild(canvas);
      box.appendChild(div);
      heat[name] = { canvas: canvas, image: document.createElement("canvas"), rowPx: 1, label: div.querySelector(".range") };
      canvas.addEventListener("mousemove", (e) => {
        const r = canvas.getBoundingClientRect(), h = heat[name];
        const t = state.start + Math.floor(((e.clientX - r.left) / r.width) * (windowEnd() - state.start));
        const u = Math.floor((e.clientY - r.top) / h.rowPx);
        if (t >= state.start && t < windowEnd() && u < block(name).units) hover(t, { name: name, unit: u });
      });
      canvas.addEventListener("click", (e) => {
        const r = canvas.getBoundingClientRect(), u = Math.floor((e.clientY - r.top) / heat[name].rowPx);
        if (u < block(name).units) selectUnit(u);
      });
      canvas.addEventListener("wheel", (e) => {
        const dx = e.shiftKey ? e.deltaY : e.deltaX;
        if (!dx) return;
        e.preventDefault();
        setWindow(state.start + Math.sign(dx) * Math.max(1, state.width / 10));
        redraw();
      }, { passive: false });
    }
  }

  function drawHeatmap(name) {
    /** Paint the block's window (units x steps) into the offscreen canvas, then compose. */
    const b = block(name), h = heat[name], W = windowEnd() - state.start;
    h.rowPx = Math.max(1, Math.min(8, Math.floor(256 / b.units)));
    h.image.width = W; h.image.height = b.units;
    const ctx = h.image.getContext("2d"), img = ctx.createImageData(W, b.units), px = img.data;
    for (let u = 0; u < b.units; u++)
      for (let i = 0; i < W; i++) {
        const rgb = colour(b, value(b, u, state.start + i)), o = 4 * (u * W + i);
        px[o] = rgb[0]; px[o + 1] = rgb[1]; px[o + 2] = rgb[2]; px[o + 3] = 255;
      }
    ctx.putImageData(img, 0, 0);
    h.canvas.width = HEAT_WIDTH; h.canvas.height = b.units * h.rowPx;
    h.label.textContent = `${b.units} units, ${fmt(b.min)} … ${fmt(b.max)}` + (b.sequential ? "" : `, colours saturate at ±${fmt(b.scale)}`);
    compose(name);
  }

  function compose(name) {
    /** The painted window, the selected unit's row and the hovered step's column. */
    const h = heat[name], ctx = h.canvas.getContext("2d"), W = windowEnd() - state.start;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(h.image, 0, 0, h.canvas.width, h.canvas.height);
    ctx.strokeStyle = "#000";
    if (state.unit < block(name).units) ctx.strokeRect(0.5, state.unit * h.rowPx - 0.5, h.canvas.width - 1, h.rowPx + 1);
    if (state.hover !== null && state.hover >= state.start && state.hover < windowEnd()) {
      const x = ((state.hover - state.start) / W) * h.canvas.width;
      ctx.strokeRect(x, 0, Math.max(h.canvas.width / W, 1), h.canvas.height);
    }
  }

  // ---------- the unit's plot, the readout ----------

  function drawUnitPlot() {
    const u = state.unit;
    $("unit-title").textContent = `${u} (layer ${state.layer + 1}, ${state.dir ? "reverse" : "forward"})`;
    const lines = model.names.filter((n) => u < block(n).units).map((n, i) => {
      const b = block(n), values = new Array(T).fill(null);
      for (let t = state.start; t < windowEnd(); t++) values[t] = value(b, u, t);
      return { name: n, values: values, colour: PALETTE[i] };
    });
    lineChart($("unit-plot"), lines, { x0: state.start, x1: windowEnd(), height: 150 });
  }

  function stepLabel(t) {
    /** What the network read at step t, in words. */
    const show = (ch) => ch === undefined ? "(end)" : JSON.stringify(ch);
    if (data.kind === "text") return `reads ${show(data.text[t])}, next ${show(data.text[t + 1])}`;
    if (data.kind === "series") return Object.keys(data.series).map((k) => `${k} ${fmt(data.series[k][t])}`).join(", ");
    if (data.kind === "classes") return data.classes.names.map((n, k) => `p(${n}) ${fmt(data.classes.probs[t][k])}`).join(", ");
    return data.input ? `input ${data.input[t].map(fmt).join(", ")}` : "";
  }

  function drawReadout() {
    const box = $("readout"), t = state.hover;
    if (t === null) { box.innerHTML = "<p class=\"hint\">Hover a step to read every value.</p>"; return; }
    const u = state.unit;
    let rows = "";
    for (const n of model.names) {
      const b = block(n), v = u < b.units ? value(b, u, t) : null;
      rows += `<tr data-name="${n}" data-value="${v === null ? "" : v}"><td>${n}</td><td class="v">${fmt(v)}</td></tr>`;
    }
    const sig = state.signal ? `<p>${state.signal}: ${fmt(data.signals[state.signal][t])}</p>` : "";
    let cell = "";
    if (state.hoverCell) {
      const hb = block(state.hoverCell.name), hv = value(hb, state.hoverCell.unit, t);
      cell = `<p id="pointer" data-name="${state.hoverCell.name}" data-unit="${state.hoverCell.unit}" data-value="${hv}">under the pointer: ${state.hoverCell.name}, unit ${state.hoverCell.unit} = ${fmt(hv)}</p>`;
    }
    box.innerHTML = `<p><b>step <span id="readout-step">${t}</span></b>: ${escapeHtml(stepLabel(t))}</p>` +
      `<p>unit ${u}, layer ${state.layer + 1}, ${state.dir ? "reverse" : "forward"}:</p><table>${rows}</table>${cell}${sig}`;
  }

  const escapeHtml = (s) => s.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;" })[c]);

  function hover(t, cellInfo) {
    const prev = state.hover;
    state.hover = t; state.hoverCell = cellInfo;
    if (data.kind === "text") {
      const spans = $("text").children;
      if (prev !== null) spans[prev].classList.remove("hover");
      spans[t].classList.add("hover");
    }
    for (const n of model.names) compose(n);
    moveCursors(t);
    drawReadout();
  }

  // ---------- top units ----------

  function correlations(b, s) {
    /** Pearson r of every unit of block b with signal s (T,), over the steps where s is known. */
    const steps = [];
    for (let t = 0; t < T; t++) if (s[t] !== null) steps.push(t);
    const n = steps.length;
    let ms = 0;
    for (const t of steps) ms += s[t];
    ms /= n;
    let ss = 0;
    for (const t of steps) ss += (s[t] - ms) ** 2;
    const r = new Float64Array(b.units);
    if (ss === 0) return null;
    for (let u = 0; u < b.units; u++) {
      let mu = 0;
      for (const t of steps) mu += value(b, u, t);
      mu /= n;
      let su = 0, cov = 0;
      for (const t of steps) { const d = value(b, u, t) - mu; su += d * d; cov += d * (s[t] - ms); }
      r[u] = su > 0 ? cov / Math.sqrt(su * ss) : 0;
    }
    return r;
  }

  function varies(s) {
    /** Whether a signal (T,) with nulls takes more than one value. */
    const known = s.filter((v) => v !== null);
    return known.some((v) => v !== known[0]);
  }

  function drawTop() {
    const body = $("top-table").querySelector("tbody"), note = $("top-note");
    body.textContent = "";
    if (!state.signal) { note.textContent = "no signals for this input"; return; }
    const r = varies(data.signals[state.signal]) ? correlations(block(state.quantity), data.signals[state.signal]) : null;
    if (!r) { note.textContent = `${state.signal} is constant over this input: no ranking`; return; }
    note.textContent = `${state.quantity}, layer ${state.layer + 1}, ${state.dir ? "reverse" : "forward"}: |r| over all ${T} steps`;
    const order = Array.from(r.keys()).sort((a, c) => Math.abs(r[c]) - Math.abs(r[a])).slice(0, 10);
    order.forEach((u, i) => {
      const tr = document.createElement("tr");
      tr.dataset.unit = u; tr.dataset.r = r[u];
      tr.innerHTML = `<td>${i + 1}</td><td>${u}</td><td class="v">${r[u].toFixed(3)}</td>`;
      tr.classList.toggle("selected", u === state.unit);
      tr.addEventListener("click", () => selectUnit(u));
      body.appendChild(tr);
    });
  }

  // ---------- gradient flow ----------

  function drawFlow() {
    const f = data.flow;
    if (!f) {
      $("flow-what").textContent = "No loss was given, so no gradient flow (rnnkit.view.page(..., loss_fn=...)).";
      return;
    }
    const dashed = f.states.length > 1 ? `, dashed: ||dL/d${f.states[1]}||` : "";
    $("flow-what").textContent = `L = ${f.what || "the given loss"} (${fmt(f.loss)}); direction ${state.dir ? "reverse" : "forward"}; solid: ||dL/d${f.states[0]}||${dashed}`;
    const lines = [];
    for (let l = 0; l < model.layers; l++)
      f.states.forEach((s, k) => lines.push({ name: `layer ${l + 1} ${s}`, values: f.norms[k][l][state.dir], colour: PALETTE[l % 10], dash: k > 0 }));
    lineChart($("flow-plot"), lines, { x0: 0, x1: T, height: 180, log: true, shade: [state.start, windowEnd()], clickToScroll: true });
    const story = $("flow-story");
    story.textContent = "";
    for (let l = 0; l < model.layers; l++) {
      const li = document.createElement("li");
      li.textContent = `layer ${l + 1}: ${f.story[l][state.dir]}`;
      story.appendChild(li);
    }
  }

  // ---------- controls ----------

  function options(select, items) {
    select.textContent = "";
    for (const [v, label] of items) {
      const o = document.createElement("option");
      o.value = v; o.textContent = label;
      select.appendChild(o);
    }
  }

  function selectUnit(u) {
    const max = block(state.quantity).units - 1;
    state.unit = Math.max(0, Math.min(max, u | 0));
    $("unit").value = state.unit;
    redraw();
  }

  function buildControls() {
    options($("layer"), Array.from({ length: model.layers }, (_, l) => [l, `${l + 1}${l === 0 ? " (reads the input)" : ""}`]));
    options($("direction"), model.directions === 2 ? [[0, "forward"], [1, "reverse"]] : [[0, "forward"]]);
    $("direction").disabled = model.directions === 1;
    options($("quantity"), model.names.map((n) => [n, model.labels[n]]));
    state.quantity = model.names.includes("cell") ? "cell" : model.names[model.names.length - 1];
    $("quantity").value = state.quantity;
    const widths = [50, 100, 200, 400, 1000].filter((w) => w < T).map((w) => [w, `${w} steps`]).concat([[T, `all ${T} steps`]]);
    options($("width"), widths);
    state.width = Math.min(T, 200);
    $("width").value = widths.some((w) => w[0] === state.width) ? state.width : T;
    state.width = +$("width").value;
    const names = Object.keys(data.signals);
    options($("signal"), names.map((n) => [n, n]));
    state.signal = names.find((n) => varies(data.signals[n])) || names[0] || null;
    $("signal").value = state.signal;
    $("layer").addEventListener("change", (e) => { state.layer = +e.target.value; selectUnit(state.unit); });
    $("direction").addEventListener("change", (e) => { state.dir = +e.target.value; redraw(); });
    $("quantity").addEventListener("change", (e) => { state.quantity = e.target.value; selectUnit(state.unit); });
    $("unit").addEventListener("change", (e) => selectUnit(+e.target.value));
    $("signal").addEventListener("change", (e) => { state.signal = e.target.value; drawTop(); drawReadout(); });
    $("width").addEventListener("change", (e) => {
      state.width = +e.target.value; $("scroll").max = T - state.width; setWindow(state.start); redraw();
    });
    $("scroll").max = T - state.width;
    $("scroll").addEventListener("input", (e) => { setWindow(+e.target.value); redraw(); });
    $("back").addEventListener("click", () => { setWindow(state.start - state.width / 2); redraw(); });
    $("forward").addEventListener("click", () => { setWindow(state.start + state.width / 2); redraw(); });
    setWindow(0);
  }

  function fromHash() {
    /** #layer=2&direction=1&unit=17&quantity=cell&start=300: a link to one view (layers from 1). */
    const p = new URLSearchParams(location.hash.slice(1));
    if (p.has("layer")) state.layer = Math.max(0, Math.min(model.layers - 1, (+p.get("layer") || 1) - 1));
    if (p.has("direction")) state.dir = Math.min(model.directions - 1, +p.get("direction") || 0);
    if (p.has("quantity") && model.names.includes(p.get("quantity"))) state.quantity = p.get("quantity");
    if (p.has("unit")) state.unit = Math.max(0, Math.min(block(state.quantity).units - 1, +p.get("unit") || 0));
    if (p.has("start")) setWindow(+p.get("start") || 0);
    $("layer").value = state.layer; $("direction").value = state.dir; $("quantity").value = state.quantity; $("unit").value = state.unit;
  }

  function redraw() {
    $("unit-max").textContent = `of 0–${block(state.quantity).units - 1}`;
    drawTask();
    for (const n of model.names) drawHeatmap(n);
    drawUnitPlot();
    drawTop();
    drawFlow();
    drawReadout();
    view.redraws = (view.redraws || 0) + 1;
  }

  async function main() {
    $("title").textContent = data.title;
    $("describe").textContent = `${model.describe} — ${T} steps`;
    $("note").textContent = data.note || "";
    decode(await inflate(data.trace.blob));
    const levels = (1 << data.trace.bits) - 1;
    $("quantisation").textContent = `Values stored in ${data.trace.bits} bits per unit's range: each is within half a step ((max − min) / ${levels}) of the traced value. Cap: ${data.maxSteps} steps.`;
    buildControls();
    fromHash();
    buildTask();
    buildHeatmaps();
    redraw();
    view.renderMs = performance.now();
    view.ready = true;
    document.body.dataset.ready = "1";
  }

  main().catch((e) => fail(e && e.stack || e));
})();
