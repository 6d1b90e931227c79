"""The HTML table's sorting and filtering: one small inline script, no library, no network.

- Click a column header (or press Enter on it) to sort by that column;
  again to reverse. Numeric columns sort by the first number in the cell
  (``1,024``, ``>23.25``, ``+2.2% (stale)``); a missing value (``–``) sorts
  last either way; ties keep the table's own order.
- Type in the filter box to keep the rows whose text holds every word typed
  (case-insensitive, ``lora h200 oom``); a word starting with ``-`` removes
  the rows that hold it. The count of rows shown is beside the box.

The script reads the table with id ``cells`` and the input with id
``filter``; ``bench.report.html`` writes both.
"""

SCRIPT = r"""
(function () {
  const table = document.getElementById("cells");
  if (!table) return;
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.forEach((r, i) => { r.dataset.order = i; });
  const shown = document.getElementById("shown");
  const number = (text) => {
    const m = text.replace(/,/g, "").match(/[-+]?\d+(\.\d+)?/);
    return m ? parseFloat(m[0]) : null;
  };
  const heads = Array.from(table.tHead.rows[0].cells);
  function sortBy(index) {
    const th = heads[index];
    const dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    heads.forEach((h) => h.removeAttribute("aria-sort"));
    th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
    const numeric = th.classList.contains("num");
    const key = (r) => {
      const text = r.cells[index].textContent.trim();
      return numeric ? number(text) : (text === "\u2013" ? null : text.toLowerCase());
    };
    rows.sort((a, b) => {
      const ka = key(a), kb = key(b);
      if (ka === null || kb === null) {
        if (ka === kb) return a.dataset.order - b.dataset.order;
        return ka === null ? 1 : -1;
      }
      if (ka < kb) return -dir;
      if (ka > kb) return dir;
      return a.dataset.order - b.dataset.order;
    });
    rows.forEach((r) => body.appendChild(r));
  }
  heads.forEach((th, i) => {
    th.tabIndex = 0;
    th.title = "sort by " + th.textContent;
    th.addEventListener("click", () => sortBy(i));
    th.addEventListener("keydown", (e) => { if (e.key === "Enter") sortBy(i); });
  });
  const input = document.getElementById("filter");
  function filter() {
    const words = input.value.toLowerCase().split(/\s+/).filter((w) => w && w !== "-");
    let n = 0;
    rows.forEach((r) => {
      const text = r.textContent.toLowerCase();
      const keep = words.every((w) => (w.startsWith("-") ? !text.includes(w.slice(1)) : text.includes(w)));
      r.hidden = !keep;
      n += keep ? 1 : 0;
    });
    shown.textContent = n + " of " + rows.length + " rows";
  }
  input.addEventListener("input", filter);
  filter();
})();
""".strip()
