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

/**
 * Shows what went wrong (nothing: clears it). `from` names the part of the console that
 * showed it, so that a later success of another part (the analytics' periodic refresh) does
 * not wipe an error the user has yet to read.
 */
function showError(message, from = "") {
  $("error").textContent = message || "";
  $("error").dataset.from = message ? from : "";
}

/** Clears the error if the part `from` showed it. */
function clearError(from) {
  if ($("error").dataset.from === from) showError("");
}

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

/** Fills `table` with a row per item; a column may also give a cell's `title` (its whole
 * text, when the cell shows only its start). */
function fill(table, rows, columns) {
  const body = $(table).tBodies[0];
  body.replaceChildren();
  for (const item of rows) {
    const row = body.insertRow();
    for (const column of columns) {
      cell(row, column.value(item), column.className);
      if (column.title) row.cells[row.cells.length - 1].title = column.title(item);
    }
  }
}

/** The start of `text`, at most `length` characters, with "…" when cut. */
function clipped(text, length) {
  return text.length > length ? `${text.slice(0, length)}…` : text;
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

// Times: every time the page shows or reads is in one zone, UTC by default (as the API
// speaks), or this browser's local time when the header's switch says so.
function inUtc() { return $("time-zone").value !== "local"; }

/** Minutes to add to UTC for the zone shown, at `ms`. */
function zoneOffsetMinutes(ms) { return inUtc() ? 0 : -new Date(ms).getTimezoneOffset(); }

/** `ms` as "2026-12-07 19:22:20 UTC" (or "… local"). */
function showTime(ms) {
  const shifted = new Date(ms + zoneOffsetMinutes(ms) * 60000).toISOString();
  return `${shifted.slice(0, 10)} ${shifted.slice(11, 19)} ${inUtc() ? "UTC" : "local"}`;
}

/** `ms` as a datetime-local input's value, in the zone shown. */
function timeInput(ms) {
  return new Date(ms + zoneOffsetMinutes(ms) * 60000).toISOString().slice(0, 16);
}

/** A datetime-local input's value, read in the zone shown, as epoch ms. */
function inputTime(value) {
  const asUtc = Date.parse(`${value}:00Z`);
  return inUtc() ? asUtc : new Date(value).getTime();
}

/** The relative range `[to − span, to)` ending a minute from now, on whole seconds, as both
 * analytics and search ask it: the seed API reads seconds, so both count the same events. */
function recentRange(span) {
  const to = Math.ceil((Date.now() + 60000) / 1000) * 1000;
  return [to - span, to];
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
