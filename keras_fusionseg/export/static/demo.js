// The demo page of scripts/serve.py: plain JavaScript, no external assets.
//
// 1. GET demo/config.json: model name, class names, palette, pixel and body limits.
// 2. The chosen or dropped image is decoded by the browser (EXIF orientation applied, no
//    colour-profile conversion, transparency flattened on white), shrunk to at most
//    `page_max_pixels`, and sent re-encoded as PNG to the REST API
//    (POST v1/models/<name>:predict, {"instances": [{"b64": ...}]}): the model sees exactly
//    the pixels the page shows.
// 3. The overlay is blended as keras_fusionseg.export.visualize.overlay does:
//    out = (1 - w) * pixel + w * palette[class id], w = opacity, except w = 0 for classes
//    coloured black and ids outside the palette (drawn transparent), rounded half to even
//    (Uint8ClampedArray), so the page and overlay() agree pixel for pixel.
"use strict";

const state = { config: null, pixels: null, ids: null, width: 0, height: 0, busy: false };
const $ = (id) => document.getElementById(id);

function setState(name, message) {
  document.body.dataset.state = name;
  $("status").textContent = message || "";
  $("status").className = name === "error" ? "error" : "";
}

function rgb(colour) {
  return `rgb(${colour[0]}, ${colour[1]}, ${colour[2]})`;
}

// Classes drawn transparent: black ones (the "background" of most palettes).
function isClear(classId) {
  const colour = state.config.palette[classId];
  return !colour || (colour[0] === 0 && colour[1] === 0 && colour[2] === 0);
}

function className(classId) {
  const names = state.config.class_names;
  return classId < names.length ? names[classId] : `class ${classId}`;
}

async function loadConfig() {
  const response = await fetch("demo/config.json", { cache: "no-store" });
  if (!response.ok) throw new Error(`demo/config.json: HTTP ${response.status}`);
  state.config = await response.json();
  const name = state.config.model_name;
  const status = await fetch(`v1/models/${encodeURIComponent(name)}`, { cache: "no-store" });
  const body = await status.json();
  const version = (body.model_version_status || [{}])[0];
  $("model").textContent =
    `Model "${name}" (${version.state || "unknown state"}), ` +
    `${state.config.class_names.length} classes.`;
  $("api").textContent = `POST v1/models/${name}:predict`;
  const alpha = Math.round(100 * state.config.alpha);
  $("alpha").value = String(alpha);
  $("alpha_value").textContent = `${alpha}%`;
  setState("ready", "Ready: choose or drop an image.");
}

// Decoded pixels (RGBA, alpha 255) at most `limit` pixels, shrunk keeping the aspect ratio.
async function decode(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, {
      imageOrientation: "from-image",
      colorSpaceConversion: "none",
      premultiplyAlpha: "none",
    });
  } catch (error) {
    throw new Error(`${file.name || "This file"} is not an image the browser can read.`);
  }
  const limit = state.config.page_max_pixels;
  const scale = Math.min(1, Math.sqrt(limit / (bitmap.width * bitmap.height)));
  const width = Math.max(1, Math.floor(bitmap.width * scale));
  const height = Math.max(1, Math.floor(bitmap.height * scale));
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.fillStyle = "#ffffff";
  context.fillRect(0, 0, width, height);
  context.imageSmoothingQuality = "high";
  context.drawImage(bitmap, 0, 0, width, height);
  const resized = width !== bitmap.width || height !== bitmap.height;
  const original = `${bitmap.width}x${bitmap.height}`;
  bitmap.close();
  const pixels = context.getImageData(0, 0, width, height);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  return { pixels, width, height, blob, note: resized ? ` (shrunk from ${original})` : "" };
}

function base64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

async function predict(blob) {
  const name = encodeURIComponent(state.config.model_name);
  const body = JSON.stringify({ instances: [{ b64: await base64(blob) }] });
  if (body.length > state.config.max_body_bytes) {
    throw new Error(`The request (${body.length} bytes) is over the server's limit.`);
  }
  const response = await fetch(`v1/models/${name}:predict`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body,
  });
  let answer;
  try {
    answer = await response.json();
  } catch (error) {
    throw new Error(`The server answered HTTP ${response.status} without JSON.`);
  }
  if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
  const prediction = answer.predictions[0];
  // One output: the id rows themselves; with probabilities too: {class_ids, probabilities}.
  return Array.isArray(prediction) ? prediction : prediction.class_ids;
}

// Row-major Int32Array of the [height][width] class ids, checked against the image size.
function flatten(rows, width, height) {
  if (!Array.isArray(rows) || rows.length !== height || rows[0].length !== width) {
    const got = Array.isArray(rows) ? `${rows.length}x${(rows[0] || []).length}` : typeof rows;
    throw new Error(`The model answered ${got} class ids for a ${height}x${width} image.`);
  }
  const ids = new Int32Array(width * height);
  for (let y = 0; y < height; y++) ids.set(rows[y], y * width);
  return ids;
}

function draw() {
  const { pixels, ids, width, height } = state;
  const alpha = Number($("alpha").value) / 100;
  const palette = state.config.palette;
  const weights = palette.map((colour, k) => (isClear(k) ? 0 : alpha));
  const out = new ImageData(width, height);
  const source = pixels.data;
  const target = out.data; // Uint8ClampedArray: rounds half to even, as numpy's round
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    const w = id >= 0 && id < palette.length ? weights[id] : 0;
    const colour = w ? palette[id] : null;
    for (let c = 0; c < 3; c++) {
      const value = source[4 * i + c];
      target[4 * i + c] = w ? (1 - w) * value + w * colour[c] : value;
    }
    target[4 * i + 3] = 255;
  }
  const canvas = $("overlay");
  canvas.width = width;
  canvas.height = height;
  canvas.getContext("2d").putImageData(out, 0, 0);
}

function legend() {
  const counts = new Map();
  for (const id of state.ids) counts.set(id, (counts.get(id) || 0) + 1);
  const total = state.ids.length;
  const list = $("legend");
  list.replaceChildren();
  const rows = [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0] - b[0]);
  for (const [id, count] of rows) {
    const share = count / total;
    const item = document.createElement("li");
    item.dataset.classId = String(id);
    item.dataset.pixels = String(count);
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    if (isClear(id)) {
      swatch.classList.add("clear");
      swatch.title = "drawn transparent";
    } else {
      swatch.style.background = rgb(state.config.palette[id]);
    }
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = className(id);
    const percent = document.createElement("span");
    percent.className = "share";
    percent.textContent = `${(100 * share).toFixed(1)}%`;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${(100 * share).toFixed(1)}%`;
    item.append(swatch, name, percent, bar);
    list.append(item);
  }
}

async function show(file) {
  if (!state.config || state.busy) return;
  state.busy = true;
  setState("busy", `Segmenting ${file.name || "the image"}...`);
  try {
    const image = await decode(file);
    const started = performance.now();
    const rows = await predict(image.blob);
    const milliseconds = Math.round(performance.now() - started);
    state.ids = flatten(rows, image.width, image.height);
    state.pixels = image.pixels;
    state.width = image.width;
    state.height = image.height;
    draw();
    legend();
    $("result").hidden = false;
    setState(
      "done",
      `${file.name || "Image"}: ${image.width}x${image.height}${image.note}, ` +
        `answered in ${milliseconds} ms.`
    );
  } catch (error) {
    setState("error", error.message || String(error));
  } finally {
    state.busy = false;
  }
}

function hover(event) {
  const canvas = $("overlay");
  const box = canvas.getBoundingClientRect();
  const x = Math.floor(((event.clientX - box.left) / box.width) * state.width);
  const y = Math.floor(((event.clientY - box.top) / box.height) * state.height);
  if (!state.ids || x < 0 || y < 0 || x >= state.width || y >= state.height) return;
  $("hover").textContent = `(${x}, ${y}): ${className(state.ids[y * state.width + x])}`;
}

function init() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) show(file);
    event.target.value = "";
  });
  for (const name of ["dragenter", "dragover"]) {
    document.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    document.addEventListener(name, () => drop.classList.remove("over"));
  }
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) show(file);
  });
  $("alpha").addEventListener("input", () => {
    $("alpha_value").textContent = `${$("alpha").value}%`;
    if (state.ids) draw();
  });
  $("overlay").addEventListener("mousemove", hover);
  loadConfig().catch((error) => setState("error", `Cannot reach the model: ${error.message}`));
}

init();
