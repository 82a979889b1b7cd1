// The ferkit page: send a photo or webcam frames to /v1/predict, draw the boxes, a bar per expression.
"use strict";

const CAMERA_INTERVAL_MS = 250;   // a few frames a second; a frame is skipped while one is in flight
const CAMERA_JPEG_QUALITY = 0.8;

const view = document.getElementById("view");
const video = document.getElementById("video");
const statusLine = document.getElementById("status");
const facesList = document.getElementById("faces");
const keyInput = document.getElementById("key");
let classes = [];
let camera = null;   // {stream, timer, busy}

function say(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

function headers(extra = {}) {
  const key = keyInput.value.trim();
  return key ? { ...extra, "X-API-Key": key } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  const body = await response.json().catch(() => ({ error: `the server answered ${response.status}` }));
  if (response.status === 401) document.getElementById("key-row").hidden = false;
  if (!response.ok) throw new Error(body.error || `the server answered ${response.status}`);
  return body;
}

async function loadModel() {
  try {
    const meta = await api("/v1/model");
    classes = meta.classes || [];
    document.getElementById("model").textContent =
      `model ${meta.name || "?"}: ${meta.model} ${meta.attention}, ${classes.length} expressions`;
  } catch (error) {
    document.getElementById("model").textContent = error.message;
  }
}

function predictUrl() {
  return document.getElementById("no-detect").checked ? "/v1/predict?detect=false" : "/v1/predict";
}

function draw(source, width, height, result) {
  const scale = Math.min(1, 640 / width);
  view.width = Math.round(width * scale);
  view.height = Math.round(height * scale);
  const ctx = view.getContext("2d");
  ctx.drawImage(source, 0, 0, view.width, view.height);
  // Boxes are in the pixels of the image as the server decoded it (upright by its EXIF orientation).
  const sx = view.width / result.width, sy = view.height / result.height;
  const line = Math.max(2, Math.round(view.width / 250));
  ctx.font = `${Math.max(13, Math.round(view.width / 40))}px system-ui, sans-serif`;
  ctx.textBaseline = "top";
  result.faces.forEach((face, n) => {
    const [x, y, w, h] = face.box;
    ctx.strokeStyle = "#00dc5a";
    ctx.lineWidth = line;
    ctx.strokeRect(x * sx, y * sy, w * sx, h * sy);
    const text = `${n + 1}: ${face.label} ${Math.round(face.confidence * 100)}%`;
    const textHeight = parseInt(ctx.font, 10) + 2 * line;
    const top = y * sy - textHeight >= 0 ? y * sy - textHeight : (y + h) * sy;
    ctx.fillStyle = "#00dc5a";
    ctx.fillRect(x * sx, top, ctx.measureText(text).width + 2 * line, textHeight);
    ctx.fillStyle = "#000";
    ctx.fillText(text, x * sx + line, top + line);
  });
}

function listFaces(result) {
  facesList.replaceChildren();
  result.faces.forEach((face, n) => {
    const item = document.createElement("li");
    item.className = "face";
    item.dataset.label = face.label;
    const title = document.createElement("h2");
    title.textContent = `Face ${n + 1}: ${face.label} ${Math.round(face.confidence * 100)}%`;
    item.append(title);
    const names = classes.length ? classes : Object.keys(face.probs);
    for (const name of names) {
      const p = face.probs[name] || 0;
      const bar = document.createElement("div");
      bar.className = name === face.label ? "bar top" : "bar";
      bar.dataset.expression = name;
      const label = document.createElement("span");
      label.textContent = name;
      const track = document.createElement("div");
      track.className = "track";
      const fill = document.createElement("div");
      fill.className = "fill";
      fill.style.width = `${(p * 100).toFixed(1)}%`;
      track.append(fill);
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = `${Math.round(p * 100)}%`;
      bar.append(label, track, value);
      item.append(bar);
    }
    facesList.append(item);
  });
}

function show(source, width, height, answer) {
  const result = answer.images[0];
  if (result.status === "error") {
    facesList.replaceChildren();
    say(result.error, true);
    return;
  }
  draw(source, width, height, result);
  listFaces(result);
  const count = result.faces.length;
  say(result.status === "ok" ? `${count} face${count === 1 ? "" : "s"} found` : "no face found");
}

async function predictFile(file) {
  if (!file) return;
  stopCamera();
  say(`reading ${file.name}…`);
  try {
    const answer = await api(predictUrl(), {
      method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" },
    });
    const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    show(bitmap, bitmap.width, bitmap.height, answer);
  } catch (error) {
    facesList.replaceChildren();
    say(error.message, true);
  }
}

async function cameraFrame() {
  if (!camera || camera.busy || !video.videoWidth) return;
  camera.busy = true;
  const frame = document.createElement("canvas");
  frame.width = video.videoWidth;
  frame.height = video.videoHeight;
  frame.getContext("2d").drawImage(video, 0, 0);
  try {
    const blob = await new Promise((done) => frame.toBlob(done, "image/jpeg", CAMERA_JPEG_QUALITY));
    const answer = await api(predictUrl(), { method: "POST", body: blob, headers: { "Content-Type": "image/jpeg" } });
    if (camera) show(frame, frame.width, frame.height, answer);
  } catch (error) {
    say(error.message, true);
  } finally {
    if (camera) camera.busy = false;
  }
}

async function startCamera() {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
    video.srcObject = stream;
    await video.play();
    camera = { stream, timer: setInterval(cameraFrame, CAMERA_INTERVAL_MS), busy: false };
    document.getElementById("camera").textContent = "Stop webcam";
    document.getElementById("camera").classList.add("on");
    say("webcam on");
  } catch (error) {
    say(`no webcam: ${error.message}`, true);
  }
}

function stopCamera() {
  if (!camera) return;
  clearInterval(camera.timer);
  camera.stream.getTracks().forEach((track) => track.stop());
  camera = null;
  video.srcObject = null;
  document.getElementById("camera").textContent = "Start webcam";
  document.getElementById("camera").classList.remove("on");
}

const drop = document.getElementById("drop");
document.getElementById("file").addEventListener("change", (event) => predictFile(event.target.files[0]));
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  predictFile(event.dataTransfer.files[0]);
});
document.getElementById("camera").addEventListener("click", () => (camera ? stopCamera() : startCamera()));
keyInput.addEventListener("change", loadModel);
loadModel();
