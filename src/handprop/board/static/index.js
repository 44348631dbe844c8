// The Backprop tab: 3Blue1Brown's backpropagation lesson, asked of your own digit and your own run.
//
// Plain JavaScript, no build step, nothing fetched from the internet. TensorBoard loads this
// module in an iframe whose <base> is the plugin's route (data/plugin/backprop/), so every URL
// below is relative: it works offline, behind --path_prefix and from another host. Every number
// comes from the plugin's JSON routes (handprop/board/plugin.py), computed by the run's own
// network through the hand-written backward pass that trains it.

const LESSON = "784-16-16-10, sigmoid neurons, quadratic cost"; // 3Blue1Brown's network (experiment=3b1b)
const UP = "#d62728", DOWN = "#1f77b4"; // red: increase, blue: decrease (a nudge's sign)
const state = { runs: [], run: null, snap: 0, source: null, target: null, layer: null, neuron: null, strokes: [] };
let last = null; // the latest explain answer
let asked = 0; // requests in flight are numbered: only the newest answer is drawn

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}
const $ = (id) => document.getElementById(id);
// d decimals; a number that would show as 0.00... gets its own digits instead (7.0e-4, not 0.00)
const fmt = (v, d = 3) => (Math.abs(v) >= 0.5 * 10 ** -d || v === 0 ? v.toFixed(d) : v.toExponential(1));
const aDigit = (k) => (k === 8 ? "an 8" : `a ${k}`); // as it is read aloud
const signed = (v, d = 3) => (v > 0 ? "+" : "") + fmt(v, d);

let waiting = 0; // requests in flight: the page says so while any is

async function call(route, body) {
  waiting++;
  $("waiting").textContent = answered ? "working..." : "waiting for the first answer (TensorBoard loads PyTorch for it: a few seconds)...";
  try {
    const response = await fetch(route, body === undefined ? {} : {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || `${route}: HTTP ${response.status}`);
    if (route !== "runs") answered = true;
    return answer;
  } finally {
    if (--waiting === 0) $("waiting").textContent = "";
  }
}
let answered = false; // (the first answer that needs PyTorch has come)

function showError(message) {
  $("error").textContent = message ? `error: ${message}` : "";
}

// -- the page's frame: every panel, each saying what it shows and what its colours mean

function section(id, title, what, ...body) {
  return el("section", { id }, el("h2", { text: title }), el("p", { class: "what", text: what }), ...body);
}

function frame() {
  const pad = el("canvas", { id: "pad", class: "pad", width: 280, height: 280 });
  document.body.append(el("main", {},
    el("h1", { text: "Backprop: what does this digit want from the network?" }),
    el("div", { id: "error", class: "error" }),
    el("div", { id: "waiting", class: "note" }),
    section("run-panel", "The run and its checkpoints",
      "Pick a run, then scrub from the untrained network (epoch 0) to the last epoch; each point shows the share of the validation digits that network reads right.",
      el("div", { class: "controls" },
        el("label", {}, "run ", el("select", { id: "run", onchange: (e) => pickRun(e.target.value) })),
        el("div", {}, el("input", { id: "scrubber", type: "range", min: 0, max: 0, step: 1, value: 0, oninput: (e) => pickSnapshot(+e.target.value) }),
          el("br"), el("canvas", { id: "accuracy", width: 360, height: 40, title: "validation accuracy at each snapshot, 0 to 100%" })),
        el("span", { id: "snapshot-label" }),
        el("button", { id: "refresh", text: "refresh", onclick: () => loadRuns(true) })),
      el("p", { id: "network", class: "note" })),
    section("digit-panel", "Your digit",
      "Draw a digit with the mouse or a finger, or pick one of the run's validation digits (its mistakes first, framed red). The server brings the drawing to MNIST's form (cropped, scaled to 20 pixels, centred by its mass in 28x28) with predict.py's own to_mnist; the 28x28 on the right is exactly what the network reads.",
      el("div", { class: "row" },
        el("div", {}, pad, el("div", { class: "controls" },
          el("button", { id: "clear", text: "clear", onclick: clearPad }),
          el("button", { id: "undo", text: "undo a stroke", onclick: undoStroke }))),
        el("div", {}, el("canvas", { id: "read-image", class: "px", width: 28, height: 28, style: "width:168px;height:168px" }),
          el("div", { id: "label", class: "note" }),
          el("div", { class: "big-number" }, "read as ", el("span", { id: "read", text: "-" })),
          el("label", {}, "the cost wants ", el("select", { id: "target", onchange: (e) => { state.target = e.target.value === "" ? null : +e.target.value; stale(); explain(); } }))),
        el("div", {}, el("div", { class: "note", id: "gallery-note" }), el("div", { id: "gallery", class: "gallery" })))),
    section("forward-panel", "The forward pass",
      "Each neuron's activation a = f(z), layer by layer, as the network computes it (never rescaled to percentages). Black is 0; white is 1 for sigmoid neurons (their whole range), and the layer's largest activation for others (its value is written above the layer). Hover a neuron for its number.",
      el("div", { id: "forward" })),
    section("output-panel", "Output against desired",
      "Grey: the network's output for each digit; outlined: what the cost wants (the desired output). The cost is one number for how far apart they are.",
      el("div", { class: "row" }, el("div", { id: "output-bars", class: "bars" }),
        el("div", {}, el("div", { class: "note", id: "cost-formula" }), el("div", { class: "big-number" }, "cost C = ", el("span", { id: "cost" }))))),
    section("nudge-panel", "The nudges, flowing back",
      "Red bars: the neuron's activation should go up; blue: down (-dC/da, the nudge it wants). Output neurons want desired - output. A hidden neuron's nudge is the sum of the nudges of the neurons above, each weighted by its connection. Neurons are ranked, here and below, by the change they pass on to their own weights and bias (the nudge times the slope f'(z)): a saturated sigmoid or a switched-off ReLU passes on almost nothing, whatever it is asked. Click a neuron.",
      el("div", { id: "nudges" })),
    section("change-panel", "A change for every weight and bias",
      "The selected neuron's weight changes -dC/dw (a gradient-descent step of size η changes each weight by η times this): each is what the neuron passes on, -dC/dz, times the activation below that weight (a pixel, for the first layer). Red: increase, blue: decrease, white: no change (the scale is symmetric about zero).",
      el("div", { id: "change" })),
    section("step-panel", "One step",
      "A plain gradient-descent step, w <- w - size x dC/dw, taken on a copy of the network in memory (the run's files never change): on this digit alone, and on a mini-batch of the run's batch size that contains it. The output for this digit and the cost, before and after.",
      el("div", { class: "controls" }, el("label", {}, "step size ", el("input", { id: "lr", type: "number", min: 0, step: "any", size: 6 })),
        el("button", { id: "take-step", text: "take one step", onclick: takeStep })),
      el("div", { id: "step" })),
    section("check-panel", "Check the math",
      "This digit's gradient for every weight and bias, from handprop's hand-written backward pass (the one that trains the network) and from PyTorch's autograd on the same forward pass, in float64.",
      el("button", { id: "check", text: "check", onclick: checkMath }), el("div", { id: "check-result" }))));
  const target = $("target");
  target.append(el("option", { value: "", text: "(its label, or the digit read)" }));
  for (let k = 0; k < 10; k++) target.append(el("option", { value: k, text: String(k) }));
  drawing(pad);
}

// -- runs and the checkpoint scrubber

async function loadRuns(again = false) {
  try {
    const { runs } = await call("runs");
    const shown = again && state.run ? snapshot().epoch : null; // a refresh stays on the same epoch, if it is still kept
    state.runs = runs;
    const select = $("run");
    select.replaceChildren(...runs.map((r) => el("option", { value: r.run, text: `${r.run}  (${r.network})` })));
    if (!runs.length) {
      showError("");
      $("network").textContent = "No run with snapshots under --logdir yet. Train the lesson's network (under a minute on the embedded sample): python train.py experiment=3b1b, then press refresh.";
      return;
    }
    // the run shown: the one shown before a refresh; else the newest of the lesson's network, where the
    // learner's path starts; else the newest
    const keep = runs.find((r) => r.run === state.run);
    const newest = (list) => list.reduce((a, b) => (b.written > a.written ? b : a), list[0]);
    const lesson = runs.filter((r) => r.network === LESSON);
    const epoch = keep ? shown : null;
    pickRun((keep || (lesson.length ? newest(lesson) : newest(runs))).run, epoch);
  } catch (e) { showError(e.message); }
}

function pickRun(name, epoch = null) {
  if (name !== state.run) {
    if (state.source && state.source.digit != null) state.source = null; // another run's digits
    state.layer = state.neuron = null; // another network's neurons
    $("lr").value = ""; // the new run's learning rate, from its first answer
  }
  state.run = name;
  $("run").value = name;
  const run = state.runs.find((r) => r.run === name);
  const scrubber = $("scrubber");
  scrubber.max = run.snapshots.length - 1;
  const at = run.snapshots.findIndex((s) => s.epoch === epoch);
  const i = at >= 0 ? at : run.snapshots.length - 1;
  scrubber.value = i;
  $("network").textContent = `network: ${run.network}; ${run.snapshots.length} snapshots kept`;
  pickSnapshot(i);
}

function snapshot() { return state.runs.find((r) => r.run === state.run).snapshots[state.snap]; }

function pickSnapshot(i) {
  state.snap = i;
  const s = snapshot();
  stale();
  const acc = s.val_acc == null ? "" : `, validation accuracy ${(100 * s.val_acc).toFixed(1)}%`;
  $("snapshot-label").textContent = `${s.epoch === 0 ? "epoch 0 (untrained)" : `epoch ${s.epoch}`}, step ${s.step}${acc}`;
  drawAccuracy();
  loadDigits();
  explain();
}

function drawAccuracy() {
  // each snapshot's validation accuracy under the scrubber (0 at the bottom, 100% at the top), the current one marked
  const snaps = state.runs.find((r) => r.run === state.run).snapshots;
  const canvas = $("accuracy"), ctx = canvas.getContext("2d");
  const x = (i) => 8 + (i * (canvas.width - 16)) / Math.max(1, snaps.length - 1);
  const y = (acc) => canvas.height - 3 - (canvas.height - 6) * (acc || 0);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = "#ccc"; ctx.strokeRect(0.5, 0.5, canvas.width - 1, canvas.height - 1);
  ctx.strokeStyle = "#1f77b4"; ctx.beginPath();
  snaps.forEach((s, i) => (i ? ctx.lineTo(x(i), y(s.val_acc)) : ctx.moveTo(x(i), y(s.val_acc))));
  ctx.stroke();
  ctx.fillStyle = "#d62728"; ctx.beginPath(); ctx.arc(x(state.snap), y(snaps[state.snap].val_acc), 4, 0, 2 * Math.PI); ctx.fill();
}

let panelsAsked = 0; // a step or check answered after the digit, target or snapshot changed is dropped

function stale() {
  // a step's and a check's results belong to one digit, target and snapshot: cleared when any changes
  panelsAsked++;
  $("step").replaceChildren();
  $("check-result").replaceChildren();
}

const request = (extra = {}) => ({ run: state.run, snapshot: snapshot().epoch, target: state.target, ...state.source, ...extra });

// -- the digit: a canvas with strokes, or one of the run's validation digits

function drawing(pad) {
  let stroke = null;
  pad.addEventListener("pointerdown", (e) => {
    pad.setPointerCapture(e.pointerId);
    stroke = [[e.offsetX, e.offsetY]];
    state.strokes.push(stroke);
    paint();
  });
  pad.addEventListener("pointermove", (e) => { if (stroke) { stroke.push([e.offsetX, e.offsetY]); paint(); } });
  const end = () => { if (stroke) { stroke = null; fromPad(); } };
  pad.addEventListener("pointerup", end);
  pad.addEventListener("pointercancel", end);
}

function paint() {
  const ctx = $("pad").getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, 280, 280);
  ctx.strokeStyle = "#000"; ctx.lineWidth = 20; ctx.lineCap = "round"; ctx.lineJoin = "round";
  for (const s of state.strokes) {
    ctx.beginPath();
    ctx.moveTo(s[0][0], s[0][1]);
    for (const [x, y] of s.length > 1 ? s.slice(1) : [s[0]]) ctx.lineTo(x, y);
    ctx.stroke();
  }
}

function fromPad() {
  if (!state.strokes.length) return;
  const small = el("canvas", { width: 140, height: 140 });
  const ctx = small.getContext("2d");
  ctx.drawImage($("pad"), 0, 0, 140, 140);
  const rgba = ctx.getImageData(0, 0, 140, 140).data;
  const grey = [];
  for (let i = 0; i < rgba.length; i += 4) grey.push(Math.round((rgba[i] + rgba[i + 1] + rgba[i + 2]) / 3));
  state.source = { canvas: { width: 140, height: 140, grey } };
  stale();
  for (const c of $("gallery").children) c.classList.remove("chosen");
  explain();
}

function clearPad() { state.strokes = []; paint(); forgetDrawing(); }
function undoStroke() { state.strokes.pop(); paint(); if (state.strokes.length) fromPad(); else forgetDrawing(); }

function forgetDrawing() {
  // an erased drawing is no longer the digit shown: the panels wait for the next one
  if (!state.source || !state.source.canvas) return;
  state.source = null;
  asked++; // (an answer still on its way for the erased drawing is dropped)
  $("read").textContent = "-";
  $("read").dataset.source = "none";
  $("label").textContent = "draw a digit, or pick one below";
  stale();
  for (const id of ["forward", "output-bars", "nudges", "change"]) $(id).replaceChildren();
  $("cost").textContent = "";
  $("read-image").getContext("2d").clearRect(0, 0, 28, 28);
}

function pixelsTo(canvas, pixels, scale = 255) {
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(28, 28);
  pixels.forEach((v, i) => {
    const g = 255 - Math.max(0, Math.min(255, Math.round(v * scale))); // ink dark on white, as drawn
    image.data.set([g, g, g, 255], 4 * i);
  });
  ctx.putImageData(image, 0, 0);
}

let galleryAsked = 0; // as for explain: only the newest gallery is drawn

async function loadDigits() {
  const mine = ++galleryAsked;
  try {
    const answer = await call("digits", request());
    if (mine !== galleryAsked) return;
    $("gallery-note").textContent = `or pick one of the run's validation digits: this network reads ${answer.mistakes} of the ${answer.count} kept wrong; the first ${answer.digits.length} are shown, its mistakes first and framed red (hover for label and reading)`;
    $("gallery").replaceChildren(...answer.digits.map((d) => {
      const c = el("canvas", { width: 28, height: 28, title: `${aDigit(d.label)}, read as ${d.read}`, "data-index": d.index, class: d.read !== d.label ? "wrong" : "" });
      pixelsTo(c, d.pixels, 1);
      c.addEventListener("click", () => {
        state.strokes = []; // the canvas is for a drawing: a validation digit shows on the right only
        paint();
        state.source = { digit: d.index };
        stale();
        for (const other of $("gallery").children) other.classList.toggle("chosen", other === c);
        explain();
      });
      return c;
    }));
    if (!state.source && answer.digits.length) { state.source = { digit: answer.digits[0].index }; explain(); }
  } catch (e) { showError(e.message); }
}

// -- the explain answer, drawn panel by panel

async function explain(extra = {}) {
  if (!state.run || !state.source) return;
  const mine = ++asked;
  try {
    const answer = await call("explain", request({ layer: state.layer, neuron: state.neuron, ...extra }));
    if (mine !== asked) return;
    showError("");
    last = answer;
    drawAll(answer);
  } catch (e) { if (mine === asked) showError(e.message); }
}

function drawAll(a) {
  pixelsTo($("read-image"), a.pixels);
  $("read").textContent = String(a.read);
  $("read").dataset.source = Object.keys(state.source)[0]; // what was read: "canvas" or "digit"
  $("read-image").dataset.pixels = JSON.stringify(a.pixels);
  $("label").textContent = a.label == null ? "your drawing" : `the run's validation digit #${state.source.digit}: ${aDigit(a.label)}`;
  $("target").options[0].text = a.label == null ? `the digit read (${a.target})` : `its label (${a.target})`;
  $("target").value = state.target == null ? "" : String(state.target);
  if (!$("lr").value) $("lr").value = a.step_size;
  drawForward(a);
  drawOutput(a);
  drawNudges(a);
  drawChange(a);
}

function shade(value, top) {
  const g = Math.round(255 * Math.max(0, Math.min(1, top > 0 ? value / top : 0)));
  return `rgb(${g},${g},${g})`;
}

function drawForward(a) {
  const rows = [el("div", { class: "layer note", text: `input: 784 pixels as the network reads them, from ${fmt(a.input_range[0])} to ${fmt(a.input_range[1])}${a.network.normalize ? " (standardised: the background is below 0)" : " (raw, in [0, 1])"}` })];
  a.layers.forEach((layer, i) => {
    const largest = Math.max(...layer.a.map(Math.abs), 1e-12);
    const top = layer.activation === "sigmoid" ? 1 : largest; // a sigmoid's scale is its range, 0 to 1
    const numbered = layer.a.length <= 32; // small layers show each neuron's number, as the nudge panel names it
    const cells = layer.a.map((v, j) => el("div", { class: numbered ? "cell big" : "cell", title: `neuron ${j}: a = ${fmt(v, 4)}`, style: `background:${shade(v, top)};color:${v / top > 0.5 ? "#000" : "#fff"}` }, numbered ? String(j) : null));
    const scale = layer.activation === "sigmoid" ? "white = 1" : "white = the largest";
    rows.push(el("div", { class: "layer" }, el("div", { class: "note", text: `${layer.name}: ${layer.a.length} ${layer.activation} neurons, largest activation ${fmt(largest)} (${scale})` }), el("div", { class: "cells" }, ...cells)));
  });
  $("forward").replaceChildren(...rows);
}

function bar(height, colour, extra = "") { return el("div", { class: "fill", style: `height:${height}%;background:${colour};${extra}` }); }

function drawOutput(a) {
  const { read, desired } = a.output;
  const top = Math.max(1, ...read.map(Math.abs), ...desired.map(Math.abs));
  $("output-bars").replaceChildren(...read.map((v, k) => el("div", { class: "bar", title: `${k}: output ${fmt(v, 4)}, desired ${fmt(desired[k], 4)}` },
    el("div", { class: "plot" },
      el("div", { class: "pair", style: `left:6%;height:${(100 * Math.max(v, 0)) / top}%;background:#777`, "data-output": v }),
      el("div", { class: "pair", style: `right:6%;height:${(100 * Math.max(desired[k], 0)) / top}%;border:1.5px solid #000;box-sizing:border-box` })),
    el("div", { class: k === a.target ? "wanted" : "", text: String(k), title: k === a.target ? "the digit the cost wants" : "" }), el("div", { text: fmt(v, 2) }))));
  $("cost-formula").textContent = `${a.network.reads} against the desired output y; ${a.network.formula}`;
  $("cost").textContent = fmt(a.cost, 4);
}

function signedBars(values, labels, options = {}) {
  const top = Math.max(...values.map(Math.abs), 1e-12);
  return el("div", { class: `bars signed${options.click ? " clickable" : ""}` }, ...values.map((v, i) => {
    const h = (50 * Math.abs(v)) / top;
    const b = el("div", { class: `bar${options.selected === i ? " selected" : ""}`, title: options.titles ? options.titles[i] : `${labels[i]}: ${signed(v, 4)}` },
      el("div", { class: "plot" }, bar(h, v > 0 ? UP : DOWN, v > 0 ? `bottom:50%` : `top:50%`)),
      el("div", { text: String(labels[i]) }), options.tags ? el("div", { class: "tag", text: options.tags[i] || "" }) : null);
    if (options.data) Object.assign(b.dataset, options.data(i));
    if (options.click) b.addEventListener("click", () => options.click(i));
    return b;
  }));
}

const SHOWN = 16; // the hidden neurons shown per layer: the first of the ranking

function drawNudges(a) {
  const out = a.layers[a.layers.length - 1];
  const largest = (values) => fmt(Math.max(...values.map(Math.abs)), 4);
  const parts = [el("div", { class: "note", text: `output layer: the nudge each output neuron wants, desired - output (each row has its own scale; here the longest bar is ${largest(out.nudge)})` }),
    signedBars(out.nudge, out.nudge.map((_, k) => k), { data: (k) => ({ k, value: out.nudge[k] }), selected: a.neuron.layer === a.layers.length - 1 ? a.neuron.index : null, click: (k) => pickNeuron(a.layers.length - 1, k) })];
  parts[1].id = "output-nudges";
  for (const b of parts[1].children) b.classList.add("nudge-out");
  for (let i = a.layers.length - 2; i >= 0; i--) {
    const layer = a.layers[i];
    const order = layer.order.slice(0, SHOWN);
    const off = layer.state.filter((s) => s).length;
    parts.push(el("div", { class: "note", text: `${layer.name}: the ${order.length} of ${layer.a.length} neurons passing on the largest change, largest first (number: the neuron; ${off} of ${layer.a.length} are ${layer.activation === "relu" ? "switched off (a = 0)" : "saturated (slope f'(z) near 0)"} for this digit; the longest bar: ${largest(order.map((j) => layer.nudge[j]))})` }),
      signedBars(order.map((j) => layer.nudge[j]), order, {
        titles: order.map((j) => `neuron ${j}: nudge ${signed(layer.nudge[j], 4)}, slope f'(z) ${fmt(layer.slope[j], 4)}, passes on ${signed(layer.passed_on[j], 4)}${layer.state[j] ? ` (${layer.state[j]})` : ""}`),
        tags: order.map((j) => layer.state[j]),
        selected: a.neuron.layer === i ? order.indexOf(a.neuron.index) : null,
        click: (n) => pickNeuron(i, order[n]),
      }));
  }
  $("nudges").replaceChildren(...parts);
}

function pickNeuron(layer, index) { state.layer = layer; state.neuron = index; explain(); }

function diverging(canvas, values, width) {
  const top = Math.max(...values.map(Math.abs), 1e-12);
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(width, values.length / width);
  values.forEach((v, i) => {
    const t = Math.min(1, Math.abs(v) / top), c = v > 0 ? [214, 39, 40] : [31, 119, 180];
    image.data.set([255 + (c[0] - 255) * t, 255 + (c[1] - 255) * t, 255 + (c[2] - 255) * t, 255], 4 * i);
  });
  ctx.putImageData(image, 0, 0);
  return top;
}

function drawChange(a) {
  const n = a.neuron, layer = a.layers[n.layer];
  const parts = [el("p", {}, `${layer.name}, neuron ${n.index}: activation ${fmt(n.a, 4)}, nudge wanted ${signed(n.nudge, 4)}, slope f'(z) ${fmt(layer.slope[n.index], 4)}, so it passes on ${signed(n.passed_on, 4)}: its bias change is ${signed(n.bias_change, 4)}.${layer.state[n.index] ? ` It is ${layer.state[n.index]}.` : ""}`)];
  if (n.layer === 0) {
    const c = el("canvas", { id: "weight-change", class: "px", width: 28, height: 28, style: "width:224px;height:224px" });
    const top = diverging(c, n.weight_change, 28);
    parts.push(el("div", { class: "row" }, c, el("div", { class: "note" },
      `its 784 weight changes as a 28x28 picture (red up, blue down, white 0; the strongest ${fmt(top, 4)}).`, el("br"),
      `Each is ${signed(n.passed_on, 4)} times the pixel below it${a.network.normalize ? " as the network reads it (standardised pixels: the background pixels are not 0, so the background is tinted)" : " (the background pixels are 0, so they ask no change)"}.`)));
  } else {
    parts.push(el("div", { class: "note", text: `its ${n.weight_change.length} weight changes, one per neuron of the layer below (each ${signed(n.passed_on, 4)} times that neuron's activation)` }),
      signedBars(n.weight_change, n.weight_change.map((_, i) => i)));
  }
  if (n.from_above) {
    const t = n.from_above;
    const rows = t.above.map((k, i) => el("tr", {}, el("td", { text: `neuron ${k} above` }), el("td", { text: fmt(t.weight[i], 4) }), el("td", { text: signed(t.passed_on_above[i], 4) }), el("td", { text: signed(t.term[i], 4) })));
    if (t.above.length < a.layers[n.layer + 1].a.length) rows.push(el("tr", {}, el("td", { text: "every other neuron above" }), el("td"), el("td"), el("td", { text: signed(t.rest, 4) })));
    rows.push(el("tr", {}, el("th", { text: "its nudge, the sum" }), el("th"), el("th"), el("th", { text: signed(t.sum, 4) })));
    parts.push(el("p", { class: "note", text: "Its nudge is the sum of what the neurons above pass on, each weighted by the connection from this neuron to it:" }),
      el("table", {}, el("tr", {}, el("th", { text: "from" }), el("th", { text: "weight" }), el("th", { text: "passes on" }), el("th", { text: "weight x passes on" })), ...rows));
  }
  $("change").replaceChildren(...parts);
}

// -- one step, and the check of the math

async function takeStep() {
  const mine = panelsAsked;
  try {
    const s = await call("step", request({ lr: Number($("lr").value) }));
    if (mine !== panelsAsked) return;
    const column = (title, r) => el("div", {}, el("h2", { text: title }),
      el("p", { text: `cost ${r.size > 1 ? `of the mini-batch ${fmt(r.cost_before, 4)} -> ${fmt(r.cost_after, 4)}; of this digit ` : ""}${fmt(r.digit_cost_before, 4)} -> ${fmt(r.digit_cost_after, 4)}` }),
      el("div", { class: "bars" }, ...r.read_before.map((v, k) => el("div", { class: "bar", title: `${k}: ${fmt(v, 4)} -> ${fmt(r.read_after[k], 4)}` },
        el("div", { class: "plot" }, el("div", { class: "pair", style: `left:6%;height:${100 * Math.min(1, Math.max(0, v))}%;background:#bbb` }),
          el("div", { class: "pair", style: `right:6%;height:${100 * Math.min(1, Math.max(0, r.read_after[k]))}%;background:#333` })),
        el("div", { text: String(k) })))),
      el("p", { class: "note", text: "light: this digit's output before the step; dark: after" }));
    const thumbs = s.batch.images.map((px, i) => { const c = el("canvas", { width: 28, height: 28, title: `label ${s.batch.labels[i]}${i === 0 ? " (your digit)" : ""}`, class: i === 0 ? "chosen" : "" }); pixelsTo(c, px, 1); return c; });
    $("step").replaceChildren(
      el("p", { class: "note", text: `the cost asked for ${aDigit(s.target)}; a step moves every weight by -size x dC/dw. An output neuron that is saturated (a sigmoid near 0 or 1) has a slope near 0: one step barely moves it.` }),
      el("div", { class: "row" }, column("this digit alone", s.digit), column(`a mini-batch of ${s.batch.size} with it`, s.batch)),
      el("p", { class: "note", text: `the mini-batch: your digit (outlined) and ${s.batch.size - 1} of the run's training digits, fixed for the run` }), el("div", { class: "gallery" }, ...thumbs));
  } catch (e) { showError(e.message); }
}

async function checkMath() {
  const mine = panelsAsked;
  try {
    const c = await call("check", request());
    if (mine !== panelsAsked) return;
    $("check-result").replaceChildren(el("table", {},
      el("tr", {}, el("th", { text: "" }), el("th", { text: "shape" }), el("th", { text: "largest |gradient|" }), el("th", { text: "largest |hand-written - autograd|" }), el("th", { text: "equal" })),
      ...c.rows.map((r) => el("tr", {}, el("td", { text: r.name }), el("td", { text: r.shape.join("x") }), el("td", { text: r.max_abs.toExponential(3) }), el("td", { text: r.max_abs_diff.toExponential(2) }), el("td", { text: r.allclose ? "yes" : "NO" })))),
      el("p", { text: c.agree ? "The hand-written backward pass and autograd agree on every weight and bias." : "They disagree: a bug in the hand-written backward pass." }));
  } catch (e) { showError(e.message); }
}

export function render() {
  const link = el("link", { rel: "stylesheet", href: "style.css" });
  document.head.append(link);
  frame();
  paint();
  loadRuns();
}
