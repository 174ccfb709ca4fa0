// The pending list refreshes itself: new candidates appear without a reload, and the time of the last
// successful check is shown, so a reviewer can trust that the list is current.
(function () {
  const table = document.getElementById("pending");
  if (!table) return;
  const fmt = (x) => (x === undefined ? "–" : x.toFixed(2));
  const figures = ["forget_score", "retain_score", "held_out_retain_score", "mmlu"];
  function row(r) {
    const tr = document.createElement("tr");
    tr.dataset.key = r.name + "/" + r.version;
    if (r.overdue) tr.className = "bad";
    const due = (r.soonest_due || "–") + (r.overdue ? " (" + r.overdue + " overdue)" : "");
    const cells = [r.name, null, r.gate, ...figures.map((k) => fmt(r.base_figures[k]) + " → " + fmt(r.figures[k])),
      String(r.requests), due, r.runner, Math.floor(r.age_s / 60) + " min"];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      if (i === 1) { const a = document.createElement("a"); a.href = r.url; a.textContent = "v" + r.version; td.appendChild(a); }
      else td.textContent = text;
      tr.appendChild(td);
    });
    return tr;
  }
  async function refresh() {
    try {
      const resp = await fetch("/api/pending", { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!resp.ok) throw new Error(resp.status);
      const data = await resp.json();
      const body = table.tBodies[0];
      body.replaceChildren(...(data.pending.length ? data.pending.map(row) : [(() => { const tr = document.createElement("tr"); tr.className = "empty"; tr.innerHTML = '<td colspan="11">Nothing waits for a decision.</td>'; return tr; })()]));
      document.getElementById("checked").textContent = "checked " + data.checked_at + ", " + data.pending.length + " pending";
    } catch (err) {
      document.getElementById("checked").textContent = "could not check (" + err.message + "): the list may be stale";
    }
  }
  setInterval(refresh, 1000 * Number(table.dataset.poll || 5));
})();
