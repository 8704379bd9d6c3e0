// The search tab. With a query (q=), the recent events the full-text index keeps that match
// it, newest first, each with the parts of its fields that matched, marked; without one,
// every raw event of the range, oldest first, as the seed API gives them. Page by page.
"use strict";

/** `value` as text, with its `ranges` ([start, end) in UTF-8 bytes) inside <mark>. */
function marked(value, ranges) {
  const bytes = new TextEncoder().encode(value);
  const decode = (from, to) => new TextDecoder().decode(bytes.slice(from, to));
  const span = document.createElement("span");
  let at = 0;
  for (const [start, end] of ranges) {
    span.append(decode(at, start));
    const mark = document.createElement("mark");
    mark.textContent = decode(start, end);
    span.append(mark);
    at = end;
  }
  span.append(decode(at, bytes.length));
  return span;
}

async function search(cursor) {
  // The same range analytics would ask for the same choice.
  const [from, to] = $("search-range").value === "custom"
    ? [inputTime($("search-from").value), inputTime($("search-to").value)]
    : recentRange(Number($("search-range").value));
  const params = new URLSearchParams({
    start_time: String(Math.floor(from / 1000)),
    end_time: String(Math.ceil(to / 1000)),
    limit: "100",
  });
  const q = $("search-q").value.trim();
  if (q) params.set("q", q);
  if ($("search-type").value.trim()) params.set("event_type", $("search-type").value.trim());
  if ($("search-user").value.trim()) params.set("user_id", $("search-user").value.trim());
  if (cursor) params.set("cursor", cursor);
  try {
    const answer = await api(`/v1/events/search?${params}`);
    fill("events", answer.result, [
      { value: (e) => showTime(e.ts) },
      { value: (e) => e.event_type },
      { value: (e) => e.user_id },
      { value: (e) => e.source },
      { value: (e) => JSON.stringify(e.tags), className: "payload" },
      { value: (e) => e.event_id },
      { value: () => "" },
    ]);
    const rows = $("events").tBodies[0].rows;
    answer.result.forEach((event, i) => {
      const td = rows[i].cells[6];
      for (const highlight of event.highlights || []) {
        const line = document.createElement("div");
        line.append(`${highlight.field}: `, marked(highlight.value, highlight.ranges));
        td.append(line);
      }
    });
    $("search-summary").textContent = q
      ? `${answer.total} matching event(s)${answer.nextCursor ? `, showing ${answer.result.length} per page` : ""}` +
        (answer.incomplete ? `; some may be missing: ${answer.incomplete}` : "")
      : `${answer.result.length} event(s) on this page`;
    state.searchCursor = answer.nextCursor;
    $("search-next").disabled = !answer.nextCursor;
    showError("");
  } catch (err) {
    $("events").tBodies[0].replaceChildren();
    $("search-summary").textContent = "";
    showError(err.message);
  }
}
