// The portal shell's small behaviours, and the Server parameters blade's pending edits.
//
// Pending edits live here, in the page, not in the session: editing costs no request, and the
// edits survive searching, paging and switching tabs (the rows are re-rendered by htmx and
// the pending values re-applied). The server sees them only on Save, with the value each row
// was read at, and validates everything again.
(function () {
  "use strict";

  const pending = new Map(); // parameter name -> {value, base}

  function paramRows() {
    return document.querySelectorAll("tr.param-row");
  }

  function editorOf(row) {
    return row.querySelector(".param-editor");
  }

  function normalise(kind, value) {
    const text = (value || "").trim();
    if (kind === "set") {
      return text.split(",").map((s) => s.trim().toLowerCase()).filter(Boolean).sort().join(",");
    }
    if (kind === "boolean" || kind === "enumeration") return text.toLowerCase();
    return text;
  }

  function setEditorValue(row, value) {
    const editor = editorOf(row);
    if (!editor) return;
    editor.value = value;
    if (row.dataset.kind === "set") {
      const members = normalise("set", value).split(",");
      row.querySelectorAll(".set-choice input[type=checkbox]").forEach((box) => {
        box.checked = members.includes(box.value);
      });
    }
  }

  function markRow(row) {
    row.classList.toggle("is-pending", pending.has(row.dataset.param));
  }

  function updateCommands() {
    const count = pending.size;
    const label = document.getElementById("unsaved-count");
    if (label) label.textContent = count + (count === 1 ? " unsaved change" : " unsaved changes");
    const save = document.getElementById("cmd-save");
    if (save) save.disabled = count === 0 || save.dataset.readonly === "1";
    const discard = document.getElementById("cmd-discard");
    if (discard) discard.disabled = count === 0;
    const tab = document.getElementById("param-tab");
    const resetAll = document.getElementById("cmd-reset-all");
    if (resetAll && tab) resetAll.hidden = tab.value !== "modified";
  }

  function recordEdit(row) {
    const editor = editorOf(row);
    if (!editor) return;
    const name = row.dataset.param;
    const kind = row.dataset.kind;
    if (normalise(kind, editor.value) === normalise(kind, editor.dataset.original)) {
      pending.delete(name);
    } else {
      const base = pending.has(name) ? pending.get(name).base : row.dataset.base;
      pending.set(name, { value: editor.value, base: base });
    }
    markRow(row);
    updateCommands();
  }

  // After htmx re-renders rows (search, paging, tabs, save), show the edits still pending.
  function reapplyPending() {
    paramRows().forEach((row) => {
      const edit = pending.get(row.dataset.param);
      if (edit) setEditorValue(row, edit.value);
      markRow(row);
    });
    updateCommands();
  }

  document.addEventListener("change", (event) => {
    const row = event.target.closest("tr.param-row");
    if (!row) return;
    if (event.target.matches(".set-choice input[type=checkbox]")) {
      // A box ticked by work under way (a deployment) is not part of the value yet.
      const ticked = Array.from(
        row.querySelectorAll(".set-choice input[type=checkbox]:checked:not([data-busy])")
      );
      editorOf(row).value = ticked.map((box) => box.value).join(",");
    }
    recordEdit(row);
  });

  document.addEventListener("input", (event) => {
    const row = event.target.closest("tr.param-row");
    if (!row) return;
    if (event.target.matches(".set-filter")) {
      const needle = event.target.value.trim().toLowerCase();
      row.querySelectorAll(".set-choice").forEach((choice) => {
        choice.hidden = needle !== "" && !choice.dataset.choice.includes(needle);
      });
    } else if (event.target.matches("input.param-editor")) {
      recordEdit(row);
    }
  });

  document.addEventListener("click", (event) => {
    const reset = event.target.closest(".reset-row");
    if (reset) {
      const row = reset.closest("tr.param-row");
      setEditorValue(row, row.dataset.default);
      recordEdit(row);
      return;
    }
    if (event.target.closest("#cmd-discard")) {
      pending.clear();
      paramRows().forEach((row) => {
        const editor = editorOf(row);
        if (editor) setEditorValue(row, editor.dataset.original);
        row.classList.remove("has-error");
        row.querySelectorAll(".row-error").forEach((error) => error.remove());
        markRow(row);
      });
      const errors = document.getElementById("save-errors");
      if (errors) errors.remove();
      updateCommands();
      return;
    }
    if (event.target.closest("[data-close-dialog]")) {
      const dialog = event.target.closest("dialog");
      if (dialog) dialog.close();
    }
  });

  document.addEventListener("htmx:configRequest", (event) => {
    if (event.detail.elt.id !== "cmd-save") return;
    const form = event.detail.formData;
    pending.forEach((edit, name) => {
      form.append("name", name);
      form.append("value:" + name, edit.value);
      form.append("base:" + name, edit.base);
    });
  });

  // Sent by the server (HX-Trigger) with the names it applied; the others stay pending.
  document.body.addEventListener("parametersSaved", (event) => {
    (event.detail.applied || []).forEach((name) => pending.delete(name));
  });

  document.addEventListener("htmx:beforeRequest", (event) => {
    const dialog = event.detail.elt.closest && event.detail.elt.closest("dialog");
    if (dialog) dialog.close();
  });

  document.addEventListener("htmx:afterSettle", (event) => {
    const host = document.getElementById("dialog-host");
    if (host && event.detail.target === host) {
      const dialog = host.querySelector("dialog");
      if (dialog && !dialog.open) dialog.showModal();
    }
    reapplyPending();
  });

  // A session that expired answers htmx requests with the sign-in page: go there instead of
  // swapping it into the blade.
  document.addEventListener("htmx:beforeSwap", (event) => {
    const url = event.detail.xhr.responseURL || "";
    if (url.includes("/accounts/login/")) {
      event.detail.shouldSwap = false;
      window.location.assign(url);
    }
  });

  // A refused or failed request (403, 500, network) is not swapped in: say so instead.
  function showProblem(text) {
    const box = document.getElementById("blade-messages");
    if (!box) return;
    const message = document.createElement("div");
    message.className = "message error";
    message.setAttribute("role", "alert");
    message.textContent = text;
    box.replaceChildren(message);
  }

  document.addEventListener("htmx:responseError", (event) => {
    const status = event.detail.xhr.status;
    showProblem(
      status === 403
        ? "Not allowed: your role may not make this change, or your session expired (reload the page)."
        : "The console could not complete the request (HTTP " + status + "). Try again, or check the console's log."
    );
  });

  document.addEventListener("htmx:sendError", () => {
    showProblem("The console cannot be reached. Check that it is running, then try again.");
  });

  window.addEventListener("beforeunload", (event) => {
    if (pending.size > 0) event.preventDefault();
  });

  document.addEventListener("DOMContentLoaded", reapplyPending);

  // The top bar's search: "/" focuses it, the arrows move through the results (the box keeps
  // the focus and names the active one with aria-activedescendant), Enter opens the active
  // result or the first, Escape closes the list.
  function searchBox() {
    return document.getElementById("global-search");
  }

  function searchOptions() {
    return Array.from(document.querySelectorAll("#search-results [role=option]"));
  }

  function showResults(show) {
    const results = document.getElementById("search-results");
    const box = searchBox();
    if (!results || !box) return;
    results.hidden = !show;
    box.setAttribute("aria-expanded", show ? "true" : "false");
  }

  function setActive(index) {
    const box = searchBox();
    searchOptions().forEach((option, i) => {
      option.classList.toggle("active", i === index);
      option.setAttribute("aria-selected", i === index ? "true" : "false");
      if (i === index) {
        box.setAttribute("aria-activedescendant", option.id);
        option.scrollIntoView({ block: "nearest" });
      }
    });
    if (index < 0 && box) box.removeAttribute("aria-activedescendant");
  }

  function activeIndex() {
    return searchOptions().findIndex((option) => option.classList.contains("active"));
  }

  document.addEventListener("keydown", (event) => {
    const box = searchBox();
    if (!box) return;
    const typing = event.target.closest && event.target.closest("input, textarea, select, [contenteditable]");
    if (event.key === "/" && !typing) {
      event.preventDefault();
      box.focus();
      box.select();
      return;
    }
    if (event.target !== box) return;
    const options = searchOptions();
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      if (!options.length) return;
      showResults(true);
      const current = activeIndex();
      const next = event.key === "ArrowDown"
        ? (current + 1) % options.length
        : (current <= 0 ? options.length - 1 : current - 1);
      setActive(next);
    } else if (event.key === "Enter") {
      const current = activeIndex();
      const target = options[current >= 0 ? current : 0];
      if (target) {
        event.preventDefault();
        window.location.assign(target.href);
      }
    } else if (event.key === "Escape") {
      showResults(false);
      setActive(-1);
    }
  });

  document.addEventListener("htmx:afterSwap", (event) => {
    if (event.detail.target.id !== "search-results") return;
    const found = event.detail.target.textContent.trim() !== "";
    showResults(found && document.activeElement === searchBox());
    setActive(-1);
  });

  document.addEventListener("focusin", (event) => {
    if (event.target === searchBox() && searchOptions().length) showResults(true);
  });

  document.addEventListener("click", (event) => {
    if (!event.target.closest(".topbar-search")) showResults(false);
  });

  // A Copy button beside every block of SQL or shell to copy (added here, so that the page
  // without script still shows the text, selectable at one click).
  function addCopyButtons() {
    document.querySelectorAll("pre.copyable:not([data-copy-ready])").forEach((block) => {
      block.dataset.copyReady = "1";
      const button = document.createElement("button");
      button.type = "button";
      button.className = "btn copy-btn";
      button.textContent = "Copy";
      const label = block.getAttribute("aria-labelledby");
      const title = label && document.getElementById(label);
      button.setAttribute("aria-label", "Copy " + (title ? title.textContent.trim() : "the text"));
      button.addEventListener("click", () => {
        const done = () => {
          button.textContent = "Copied";
          setTimeout(() => { button.textContent = "Copy"; }, 2000);
        };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(block.textContent).then(done, () => selectAll(block));
        } else {
          selectAll(block);
        }
      });
      block.before(button);
    });
  }

  function selectAll(block) {
    const range = document.createRange();
    range.selectNodeContents(block);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  document.addEventListener("DOMContentLoaded", addCopyButtons);
  document.addEventListener("htmx:afterSettle", addCopyButtons);
})();
