// The operator console: principals, enroll, set-level, revoke, re-enroll, live audit.
"use strict";

(() => {
  const { el, fill, notice } = agora;
  const $ = (id) => document.getElementById(id);
  const filters = $("filters");
  let pending = null;  // the action waiting for confirmation
  let reloading = false, again = false;

  function say(text, kind) { notice($("notice"), text, kind); }

  async function run(action, params) {
    try {
      const answer = await agora.act(action, params);
      say(answer.message, "ok");
      await reload();
      return answer;
    } catch (e) {
      say(e.message, "bad");
      return null;
    }
  }

  function stateBadge(p) {
    if (p.flagged) return el("span", { class: "badge bad" }, p.state);
    if (p.revoked) return el("span", { class: "badge dim" }, p.state);
    return el("span", { class: p.state === "registered" ? "badge ok" : "badge" }, p.state);
  }

  function levelCell(p) {
    const select = el("select", { "aria-label": `level of ${p.username}` },
      [1, 2, 3, 4, 5].map((n) => el("option", { value: n, selected: n === p.level }, n)));
    const button = el("button", { type: "button", class: "plain", onclick: () =>
      run("set-level", { username: p.username, level: select.value }) }, "set");
    return el("span", { class: "row" }, select, button);
  }

  function ask(text, action, username, typed) {
    pending = { action, username, typed };
    $("confirm-text").textContent = text;
    $("confirm-input").value = "";
    $("confirm-input").classList.toggle("hidden", !typed);
    $("confirm").classList.remove("hidden");
    if (typed) $("confirm-input").focus();
  }

  $("confirm-no").addEventListener("click", () => {
    pending = null;
    $("confirm").classList.add("hidden");
  });
  $("confirm-yes").addEventListener("click", async () => {
    if (!pending) return;
    const { action, username, typed } = pending;
    const params = { username };
    if (typed) params.confirm = $("confirm-input").value.trim();
    $("confirm").classList.add("hidden");
    pending = null;
    const answer = await run(action, params);
    if (answer && answer.one_time_id) showHandover(answer);
  });

  function row(p) {
    const actions = el("span", { class: "row" },
      el("button", { type: "button", class: "danger", disabled: p.revoked, onclick: () =>
        ask(`Revoke ${p.username}? Their sessions end at once and they can no longer log in.`,
            "revoke", p.username, false) }, "revoke"),
      p.revoked ?
        el("button", { type: "button", class: "plain", onclick: () =>
          ask(`Restore ${p.username}? This lifts the revocation: they get a new one-time ID ` +
              "handed over in person. Type the username to confirm.", "restore", p.username, true) },
          "restore") :
        el("button", { type: "button", class: "plain", onclick: () =>
          ask(`Re-enroll ${p.username}? Their keys stop working; they need a new one-time ID ` +
              "handed over in person. Type the username to confirm.", "reenroll", p.username, true) },
          "re-enroll"));
    const cls = p.flagged ? "flagged" : p.revoked ? "revoked" : "";
    return el("tr", { class: cls, "data-username": p.username },
      el("td", { class: "mono" }, p.username), el("td", { class: "hide-narrow" }, p.name),
      el("td", {}, p.kind), el("td", {}, levelCell(p)), el("td", {}, stateBadge(p)),
      el("td", { class: "hide-narrow" }, agora.when(p.last_login_at)), el("td", {}, actions));
  }

  function auditRow(r) {
    const refused = r.outcome !== "ok";
    return el("tr", { class: refused ? "flagged" : "" },
      el("td", {}, agora.when(r.ts)), el("td", { class: "mono" }, r.username || "-"),
      el("td", {}, r.action),
      el("td", {}, el("span", { class: refused ? "badge bad" : "badge ok" }, r.outcome)),
      el("td", {}, r.detail || ""));
  }

  function showHandover(a) {
    $("ho-username").textContent = a.username;
    $("ho-otid").textContent = a.one_time_id;
    $("ho-fingerprint").textContent = a.fingerprint;
    $("handover").classList.remove("hidden");
  }

  $("ho-done").addEventListener("click", () => {
    for (const id of ["ho-username", "ho-otid", "ho-fingerprint"]) $(id).textContent = "";
    $("handover").classList.add("hidden");
  });

  async function reload() {
    if (reloading) { again = true; return; }
    reloading = true;
    try {
      const query = new URLSearchParams(new FormData(filters)).toString();
      const state = await agora.get(`/api/state?${query}`);
      $("fingerprint").textContent = state.fingerprint;
      fill(document.querySelector("#principals tbody"), state.principals.map(row));
      fill(document.querySelector("#audit tbody"), state.audit.map(auditRow));
      const select = $("filter-principal"), chosen = select.value;
      fill(select, el("option", { value: "" }, "all"),
        state.principals.map((p) => el("option", { value: p.username,
          selected: p.username === chosen }, p.username)));
    } catch (e) {
      say(e.message, "bad");
    } finally {
      reloading = false;
      if (again) { again = false; reload(); }
    }
  }

  $("enroll").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const params = Object.fromEntries(new FormData(form));
    const answer = await run("enroll", params);
    if (answer) { showHandover(answer); form.reset(); }
  });
  filters.addEventListener("change", reload);

  agora.stream(() => reload(),
               (on) => agora.live($("live"), on));
})();
