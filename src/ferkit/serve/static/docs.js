// The API reference, rendered from the server's own /openapi.json (no third-party viewer, no network).
"use strict";

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function typeOf(schema) {
  if (!schema) return "";
  if (schema.anyOf) return schema.anyOf.map(typeOf).join(" | ");
  if (schema.enum) return schema.enum.join(" | ");
  if (schema.type === "array") return `array of ${typeOf(schema.items)}`;
  return schema.format ? `${schema.type} (${schema.format})` : schema.type || "";
}

function table(headings, rows) {
  const out = element("table");
  const head = out.createTHead().insertRow();
  headings.forEach((h) => head.append(element("th", h)));
  const body = out.createTBody();
  rows.forEach((cells) => {
    const row = body.insertRow();
    cells.forEach((cell) => row.append(element("td", cell)));
  });
  return out;
}

function endpoint(path, method, op) {
  const box = element("section", undefined, "endpoint");
  const title = element("h2");
  title.append(element("span", method.toUpperCase(), `method ${method}`), ` ${path}`);
  box.append(title, element("p", op.summary || ""));
  if (op.description) box.append(element("p", op.description, "muted"));
  const params = op.parameters || [];
  if (params.length) {
    box.append(element("h3", "Query and header parameters"));
    box.append(table(["name", "in", "type", "default", "what"], params.map((p) => [
      p.name, p.in, typeOf(p.schema), p.schema && "default" in p.schema ? String(p.schema.default) : "",
      p.description || (p.schema && p.schema.description) || ""])));
  }
  if (op.requestBody) {
    box.append(element("h3", "Body"));
    box.append(element("p", Object.keys(op.requestBody.content).join(", ")));
  }
  box.append(element("h3", "Answers"));
  box.append(table(["status", "what"], Object.entries(op.responses || {}).map(([code, r]) => [code, r.description])));
  return box;
}

async function render() {
  const target = document.getElementById("endpoints");
  try {
    const spec = await (await fetch("/openapi.json")).json();
    document.title = `${spec.info.title} ${spec.info.version} API`;
    document.getElementById("description").textContent = spec.info.description || "";
    target.replaceChildren();
    for (const [path, methods] of Object.entries(spec.paths)) {
      for (const [method, op] of Object.entries(methods)) target.append(endpoint(path, method, op));
    }
  } catch (error) {
    target.textContent = `could not read /openapi.json: ${error.message}`;
  }
}

render();
