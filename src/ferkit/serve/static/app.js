// The ferkit page: send photos, a short video or webcam frames to /v1/predict, draw the boxes, a bar per
// expression, and offer the results as JSON lines or CSV.
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

// -- results of several photos and videos ------------------------------------------------------------
const PER_REQUEST = 8;            // photos or video frames sent in one request (the server allows 16)
const VIDEO_STEP_S = 0.5;         // a video is read every half second ...
const VIDEO_MAX_FRAMES = 60;      // ... up to 60 frames, spread over it when it is longer
const resultsList = document.getElementById("results");
const downloads = document.getElementById("downloads");
let items = [];                   // {record, source, width, height}: what was read, in order

function show(source, width, height, answer) {
  showRecord(source, width, height, answer.images[0]);
}

function showRecord(source, width, height, result) {
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

function caption(record) {
  const where = record.time_s === null ? record.source : `${record.source} at ${record.time_s.toFixed(1)} s`;
  if (record.status === "error") return `${where}: ${record.error}`;
  if (!record.faces.length) return `${where}: no face`;
  const top = record.faces[0];
  return `${where}: ${record.faces.length} face${record.faces.length === 1 ? "" : "s"}, ${top.label} ` +
    `${Math.round(top.confidence * 100)}%`;
}

function addItem(item) {
  items.push(item);
  const entry = document.createElement("li");
  entry.className = "result";
  entry.dataset.status = item.record.status;
  entry.textContent = caption(item.record);
  entry.addEventListener("click", () => showRecord(item.source, item.width, item.height, item.record));
  resultsList.append(entry);
}

// The one output schema as CSV: the columns of ferkit/engine/schema.py csv_header, one row per face.
function csvText() {
  const names = classes.length ? classes : Object.keys(items.find((i) => i.record.faces.length)?.record.faces[0].probs || {});
  const imageColumns = ["source", "status", "error", "frame", "time_s", "width", "height", "model", "detector"];
  const header = [...imageColumns, "face", "track", "x", "y", "w", "h", "score", "label", "confidence",
    "right_eye_x", "right_eye_y", "left_eye_x", "left_eye_y", ...names];
  const cell = (value) => {
    if (value === null || value === undefined) return "";
    const text = String(value);
    return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  };
  const rows = [header];
  for (const { record } of items) {
    const head = imageColumns.map((name) => record[name]);
    if (!record.faces.length) rows.push([...head, ...Array(13 + names.length).fill(null)]);
    record.faces.forEach((face, n) => {
      const eyes = face.eyes ? face.eyes.flat() : [null, null, null, null];
      rows.push([...head, n + 1, face.track, ...face.box, face.score, face.label, face.confidence, ...eyes,
        ...names.map((name) => face.probs[name])]);
    });
  }
  return rows.map((row) => row.map(cell).join(",")).join("\r\n") + "\r\n";
}

function offerDownloads() {
  const lines = items.map((item) => JSON.stringify(item.record)).join("\n") + "\n";
  for (const [id, text, type] of [["download-json", lines, "application/x-ndjson"],
                                  ["download-csv", csvText(), "text/csv"]]) {
    const link = document.getElementById(id);
    if (link.href) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(new Blob([text], { type }));
  }
  downloads.hidden = items.length === 0;
}

async function sendImages(blobs, names) {
  const form = new FormData();
  blobs.forEach((blob, i) => form.append("files", blob, names[i]));
  return (await api(predictUrl(), { method: "POST", body: form })).images;
}

async function readPhotos(files) {
  for (let start = 0; start < files.length; start += PER_REQUEST) {
    const chunk = files.slice(start, start + PER_REQUEST);
    const records = await sendImages(chunk, chunk.map((f) => f.name));
    for (const [file, record] of chunk.map((f, i) => [f, records[i]])) {
      const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" }).catch(() => null);
      addItem({ record, source: bitmap, width: bitmap?.width, height: bitmap?.height });
    }
  }
}

async function seek(player, time) {
  await new Promise((done) => { player.onseeked = () => done(); player.currentTime = time; });
  // On a busy machine the frame may not be decoded yet when the seek ends: a canvas drawn then is blank.
  if (player.readyState < HTMLMediaElement.HAVE_CURRENT_DATA) {
    await new Promise((done) => player.addEventListener("canplay", done, { once: true }));
  }
}

async function readVideo(file) {
  const player = document.createElement("video");
  player.muted = true;
  player.src = URL.createObjectURL(file);
  await new Promise((done, fail) => {
    player.onloadeddata = done;
    player.onerror = () => fail(new Error(`${file.name}: this browser cannot play the video`));
  });
  const step = Math.max(VIDEO_STEP_S, player.duration / VIDEO_MAX_FRAMES);
  const times = [];
  for (let t = 0; t < player.duration && times.length < VIDEO_MAX_FRAMES; t += step) times.push(t);
  for (let start = 0; start < times.length; start += PER_REQUEST) {
    const frames = [];
    for (const time of times.slice(start, start + PER_REQUEST)) {
      await seek(player, time);
      const frame = document.createElement("canvas");
      frame.width = player.videoWidth;
      frame.height = player.videoHeight;
      frame.getContext("2d").drawImage(player, 0, 0);
      frames.push({ frame, time, blob: await new Promise((done) => frame.toBlob(done, "image/jpeg", 0.9)) });
      say(`reading ${file.name}: ${start + frames.length} of ${times.length} frames…`);
    }
    const records = await sendImages(frames.map((f) => f.blob), frames.map(() => file.name));
    frames.forEach(({ frame, time }, i) => {
      // The browser samples the video by time: the frame's index in the file is not known here.
      const record = { ...records[i], source: file.name, time_s: Math.round(time * 1000) / 1000 };
      addItem({ record, source: frame, width: frame.width, height: frame.height });
    });
  }
  URL.revokeObjectURL(player.src);
}

async function predictFiles(fileList) {
  const files = [...fileList];
  if (!files.length) return;
  stopCamera();
  items = [];
  resultsList.replaceChildren();
  say(`reading ${files.length} file${files.length === 1 ? "" : "s"}…`);
  try {
    const photos = files.filter((f) => !f.type.startsWith("video/"));
    if (photos.length) await readPhotos(photos);
    for (const video of files.filter((f) => f.type.startsWith("video/"))) await readVideo(video);
    offerDownloads();
    const first = items.find((i) => i.record.status !== "error") || items[0];
    showRecord(first.source, first.width, first.height, first.record);
    if (items.length > 1) {
      const faces = items.reduce((n, i) => n + i.record.faces.length, 0);
      say(`${items.length} images and frames read, ${faces} face${faces === 1 ? "" : "s"} found`);
    }
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
document.getElementById("file").addEventListener("change", (event) => predictFiles(event.target.files));
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  predictFiles(event.dataTransfer.files);
});
document.getElementById("camera").addEventListener("click", () => (camera ? stopCamera() : startCamera()));
keyInput.addEventListener("change", loadModel);
loadModel();
