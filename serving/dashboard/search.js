// The search tab: raw events of a time range, newest first, page by page.
"use strict";

async function search(cursor) {
  const params = new URLSearchParams({
    start_time: String(Math.floor(new Date($("search-from").value).getTime() / 1000)),
    end_time: String(Math.ceil(new Date($("search-to").value).getTime() / 1000) + 60),
    limit: "100",
  });
  if ($("search-type").value.trim()) params.set("event_type", $("search-type").value.trim());
  if (cursor) params.set("cursor", cursor);
  try {
    const answer = await api(`/v1/events/search?${params}`);
    fill("events", answer.result, [
      { value: (e) => new Date(e.ts).toISOString() },
      { value: (e) => e.event_type },
      { value: (e) => e.user_id },
      { value: (e) => e.source },
      { value: (e) => JSON.stringify(e.tags), className: "payload" },
      { value: (e) => e.event_id },
    ]);
    state.searchCursor = answer.nextCursor;
    $("search-next").disabled = !answer.nextCursor;
    showError("");
  } catch (err) {
    showError(err.message);
  }
}
