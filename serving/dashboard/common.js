// The Tally dashboard's shared part: the key, the API calls, the tables. The page's other
// scripts, one per tab (analytics.js, governance.js, views.js, search.js), build on it, and
// app.js wires them together. They talk only to the public HTTP API, with the key taken from
// ?key= or typed in, and kept in this browser's localStorage. Everything shown is set as
// text, never as markup.
"use strict";

const REFRESH_MS = 2000;
const MAX_SERIES = 12;
const COLORS = ["#2a6ef0", "#e8710a", "#188038", "#d93025", "#9334e6", "#12b5cb",
  "#f9ab00", "#5f6368", "#b31412", "#1a73e8", "#0d652d", "#a142f4"];

const $ = (id) => document.getElementById(id);
const state = { overview: null, chart: null, searchCursor: null, timer: null, xRange: null, asked: 0, linked: null };

function key() { return $("key").value.trim(); }

function showError(message) { $("error").textContent = message || ""; }

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${key()}` } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${path}: HTTP ${response.status}`);
  return body;
}

function cell(row, value, className) {
  const td = row.insertCell();
  td.textContent = value === null || value === undefined ? "" : value;
  if (className) td.className = className;
}

function fill(table, rows, columns) {
  const body = $(table).tBodies[0];
  body.replaceChildren();
  for (const item of rows) {
    const row = body.insertRow();
    for (const column of columns) cell(row, column.value(item), column.className);
  }
}


const list = (text) => text.split(",").map((item) => item.trim()).filter(Boolean);

async function change(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${key()}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(answer.error || `${method} ${path}: HTTP ${response.status}`);
  return answer;
}

function localInput(ms) {
  const date = new Date(ms - new Date().getTimezoneOffset() * 60000);
  return date.toISOString().slice(0, 16);
}

/** Adds a button per `[label, run]` to `td`. */
function addButtons(td, buttons) {
  for (const [label, run] of buttons) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    button.addEventListener("click", run);
    td.appendChild(button);
  }
}
