// The latent explorer: plain JavaScript over the service's public HTTP/JSON API (the google.api.http mapping of
// vae.v1: /v1/models, /v1/models/{model}:sample, ...). No framework, no build step, nothing from a CDN.
// Every image shown is a PNG the server rendered (Accept: image/png); latents travel with their latent_space stamp.
"use strict";

const state = { models: [], model: null, latents: [], space: "", start: 0, end: 1, weights: {} };
let pending = 0; // requests in flight (the tests wait for 0)

const $ = (id) => document.getElementById(id);

function setStatus(text) {
  $("status").textContent = text;
}

async function api(path, body, png) {
  pending += 1;
  document.body.dataset.pending = String(pending);
  try {
    const headers = { "Content-Type": "application/json", Accept: png ? "image/png" : "application/json" };
    const reply = await fetch(path, { method: body === undefined ? "GET" : "POST", headers,
      body: body === undefined ? undefined : JSON.stringify(body) });
    if (!reply.ok) {
      const error = await reply.json().catch(() => ({ message: reply.statusText }));
      throw new Error(`${reply.status}: ${error.message}`);
    }
    return png ? await reply.blob() : await reply.json();
  } catch (error) {
    setStatus(String(error.message || error));
    throw error;
  } finally {
    pending -= 1;
    document.body.dataset.pending = String(pending);
  }
}

function show(img, blob) {
  const url = URL.createObjectURL(blob);
  img.onload = () => {
    img.dataset.updates = String(Number(img.dataset.updates || 0) + 1);
    URL.revokeObjectURL(url);
  };
  img.src = url;
}

function tensor(values) {
  const bytes = new Uint8Array(new Float32Array(values).buffer);
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return { shape: [String(values.length)], dtype: "ELEMENT_TYPE_FLOAT32", data: btoa(text) };
}

function floats(t) {
  const text = atob(t.data);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i += 1) bytes[i] = text.charCodeAt(i);
  const values = new Float32Array(bytes.buffer);
  const [n, d] = t.shape.map(Number);
  return Array.from({ length: n }, (_, i) => Array.from(values.slice(i * d, (i + 1) * d)));
}

const modelPath = (verb) => `/v1/models/${encodeURIComponent(state.model.name)}:${verb}`;
const latent = (z) => ({ latent: tensor(z), latentSpace: state.space });

async function loadModels() {
  const listed = await api("/v1/models");
  state.models = listed.models;
  const select = $("model");
  select.innerHTML = "";
  for (const m of listed.models) {
    const option = document.createElement("option");
    option.value = m.name;
    option.textContent = m.name;
    select.appendChild(option);
  }
  select.value = listed.defaultModel;
  await chooseModel(listed.defaultModel);
}

async function chooseModel(name) {
  state.model = state.models.find((m) => m.name === name);
  const m = state.model;
  const nll = m.testNll ? `test NLL ${m.testNll.toFixed(2)} nats` : "test NLL unknown";
  const data = m.dataset && m.dataset !== m.name ? ` (${m.dataset})` : "";
  $("model-info").textContent = `${m.name}${data}: latent ${m.latentDim}, ${m.imageShape.join("x")}, ${nll}`;
  state.weights = {};
  buildSliders();
  $("plane-section").hidden = m.latentDim !== 2;
  await sample();
  if (m.latentDim === 2) await drawPlane();
}

async function sample() {
  const body = { n: 16, temperature: Number($("temperature").value), seed: { value: String($("seed").value) } };
  const [grid, reply] = await Promise.all([
    api(modelPath("sample"), body, true),
    api(modelPath("sample"), { ...body, output: { format: "IMAGE_FORMAT_PNG" } }),
  ]);
  show($("samples"), grid);
  state.latents = floats(reply.latents);
  state.space = reply.latentSpace || "";
  state.start = 0;
  state.end = 1;
  const strip = $("thumbnails");
  strip.innerHTML = "";
  reply.images.png.images.forEach((png, i) => {
    const img = document.createElement("img");
    img.src = `data:image/png;base64,${png}`;
    img.title = `sample ${i}`;
    img.dataset.index = String(i);
    img.addEventListener("click", () => pick(i));
    strip.appendChild(img);
  });
  markChosen();
  await Promise.all([walk(), applyAttributes()]);
}

function pick(i) {
  // clicks alternate: the first chosen is the start, the next the end
  if (state.picking === "end") {
    state.end = i;
    state.picking = "start";
  } else {
    state.start = i;
    state.picking = "end";
  }
  markChosen();
  walk();
  applyAttributes();
}

function markChosen() {
  for (const img of $("thumbnails").children) {
    const i = Number(img.dataset.index);
    img.className = i === state.start ? "start" : i === state.end ? "end" : "";
  }
}

async function walk() {
  if (state.latents.length < 2) return;
  const method = document.querySelector('input[name="method"]:checked').value;
  const body = { start: latent(state.latents[state.start]), end: latent(state.latents[state.end]),
    steps: Number($("steps").value),
    method: method === "linear" ? "INTERPOLATION_METHOD_LINEAR" : "INTERPOLATION_METHOD_SPHERICAL" };
  show($("walk-row"), await api(modelPath("interpolate"), body, true));
}

function buildSliders() {
  const box = $("sliders");
  box.innerHTML = "";
  const names = state.model.attributeNames.filter((n) => !n.startsWith("class_"));
  const shown = names.length ? names : state.model.attributeNames.slice(0, 6);
  if (!shown.length) box.textContent = "This model has no attribute vectors.";
  for (const name of shown) {
    const label = document.createElement("label");
    label.textContent = `${name} `;
    const input = document.createElement("input");
    Object.assign(input, { type: "range", min: "-3", max: "3", step: "0.25", value: "0" });
    input.dataset.attribute = name;
    const out = document.createElement("output");
    out.textContent = "0";
    input.addEventListener("change", () => {
      state.weights[name] = Number(input.value);
      out.textContent = input.value;
      applyAttributes();
    });
    label.append(input, out);
    box.appendChild(label);
  }
}

async function applyAttributes() {
  if (!state.latents.length) return;
  const terms = [{ weight: 1, value: latent(state.latents[state.start]) }];
  for (const [name, weight] of Object.entries(state.weights)) {
    if (weight !== 0) terms.push({ weight, value: { attribute: name } });
  }
  show($("attributed"), await api(modelPath("arithmetic"), { terms }, true));
}

const PLANE = { size: 15, range: 3 };

async function drawPlane() {
  const points = [];
  for (let row = 0; row < PLANE.size; row += 1) {
    for (let col = 0; col < PLANE.size; col += 1) {
      const x = -PLANE.range + (2 * PLANE.range * col) / (PLANE.size - 1);
      const y = PLANE.range - (2 * PLANE.range * row) / (PLANE.size - 1);
      points.push(x, y);
    }
  }
  const latents = { shape: [String(PLANE.size * PLANE.size), "2"], dtype: "ELEMENT_TYPE_FLOAT32",
    data: tensor(points).data };
  show($("plane"), await api(modelPath("decode"), { latents, latentSpace: state.space }, true));
}

async function clickPlane(event) {
  const box = $("plane-wrap").getBoundingClientRect();
  const fx = (event.clientX - box.left) / box.width;
  const fy = (event.clientY - box.top) / box.height;
  const x = -PLANE.range + 2 * PLANE.range * fx;
  const y = PLANE.range - 2 * PLANE.range * fy;
  const mark = $("plane-mark");
  Object.assign(mark.style, { display: "block", left: `${fx * 100}%`, top: `${fy * 100}%` });
  $("plane-coords").textContent = `z = (${x.toFixed(2)}, ${y.toFixed(2)})`;
  const latents = { shape: ["1", "2"], dtype: "ELEMENT_TYPE_FLOAT32", data: tensor([x, y]).data };
  show($("plane-point"), await api(modelPath("decode"), { latents, latentSpace: state.space }, true));
}

async function useFile(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  const png = btoa(text);
  $("dropped").src = `data:image/png;base64,${png}`;
  const images = { png: { images: [png] } };
  try {
    const [reconstruction, scored] = await Promise.all([
      api(modelPath("reconstruct"), { images }, true),
      api(modelPath("score"), { images, importanceSamples: 100 }),
    ]);
    show($("reconstruction"), reconstruction);
    const nll = -scored.scores[0].logLikelihood;
    const test = state.model.testNll;
    const out = test && nll > test + 50; // the drift alert's margin (deploy/prometheus/rules/vae-alerts.yml)
    $("score").innerHTML = "";
    const line = document.createElement("p");
    line.textContent = `-log p(x) = ${nll.toFixed(1)} nats` + (test ? ` (test NLL ${test.toFixed(1)})` : "");
    const flag = document.createElement("p");
    flag.className = out ? "ood" : "ok";
    flag.textContent = test ? (out ? "out of distribution" : "in distribution") : "no test NLL to compare with";
    $("score").append(line, flag);
    $("score").dataset.nll = String(nll);
  } catch (error) {
    $("score").textContent = String(error.message || error);
  }
}

function wire() {
  $("model").addEventListener("change", (e) => chooseModel(e.target.value));
  $("sample").addEventListener("click", sample);
  $("temperature").addEventListener("input", (e) => {
    $("temperature-value").textContent = Number(e.target.value).toFixed(1);
  });
  $("walk").addEventListener("click", walk);
  for (const radio of document.querySelectorAll('input[name="method"]')) radio.addEventListener("change", walk);
  $("plane-wrap").addEventListener("click", clickPlane);
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) useFile(e.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", (e) => e.target.files.length && useFile(e.target.files[0]));
}

wire();
loadModels().then(() => setStatus("ready"));
