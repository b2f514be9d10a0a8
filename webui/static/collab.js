// A collaborator's console: the live auction, peer messages, services and notes.
"use strict";

(() => {
  const { el, fill, money, notice } = agora;
  const $ = (id) => document.getElementById(id);
  const LEVELS = ["", "public", "internal", "confidential", "secret", "top-secret"];
  // Fields of the broker's own services; other services take a JSON object.
  const FORMS = {
    echo: [["text", "text"]],
    lookup: [["username", "text"]],
    "notes.write": [["title", "text"], ["text", "textarea"], ["level", "level"]],
    "notes.read": [["id", "number"]],
  };
  const NO_ARGS = new Set(["whoami", "time", "directory", "services", "notes.list"]);

  let auction = null;        // the latest auction state from the console
  let clockOffset = 0;       // console clock minus this browser's, in seconds
  let current = null;        // the conversation shown
  const conversations = {};  // peer -> [messages]
  let services = [];
  let signedIn = true;

  // -- session -------------------------------------------------------------------------

  function showSession(s) {
    signedIn = s.signed_in;
    if (!s.signed_in) {
      notice($("session-banner"), `You were signed out: ${s.reason}`, "bad");
      for (const b of document.querySelectorAll("main button, main input, main select, main textarea")) {
        b.disabled = true;
      }
    }
    if (s.broker) notice($("broker-banner"), s.broker, "warn");
    else $("broker-banner").classList.add("hidden");
  }

  // -- auction -------------------------------------------------------------------------

  function showAuction(a) {
    if (!a) return;
    auction = a;
    clockOffset = a.now - Date.now() / 1000;
    const note = $("auction-note");
    if (a.note) notice(note, a.note, a.link === "live" ? "ok" : "warn");
    else note.classList.add("hidden");
    const item = a.item;
    $("item-box").classList.toggle("hidden", !item);
    $("no-item").classList.toggle("hidden", !!item);
    if (item) {
      $("item-title").textContent = `${item.title} (${item.id})`;
      $("item-description").textContent = item.description || "";
      $("item-start").textContent = money(item.start_cents);
      $("best").textContent = a.best ? money(a.best.amount) : "no bids yet";
      $("best-bidder").textContent = a.best ? a.best.bidder : "-";
      $("reserve").textContent = a.reserve === null ? "none" : a.reserve;
      const open = a.status === "open" || a.status === "closing";
      $("minimum").textContent = open && a.minimum !== null ?
        `Next bid at least ${money(a.minimum)} (increment ${money(item.increment_cents)})` : "";
      const one = nextAmount(1), five = nextAmount(5);
      $("bid-1").textContent = `bid +1 increment (${money(one)})`;
      $("bid-5").textContent = `+5 increments (${money(five)})`;
      for (const id of ["bid-1", "bid-5", "bid-custom", "bid-amount"]) {
        $(id).disabled = !signedIn || !open || !(a.link === "live" || a.link === "silent");
      }
      fill(document.querySelector("#bids tbody"), a.bids.map((b) =>
        el("tr", {}, el("td", {}, agora.clock(b.at)), el("td", {}, b.bidder),
           el("td", {}, money(b.amount)))));
    }
    const w = a.winner;
    const showWinner = w && (a.status === "closed" || !item || item.id === w.item);
    $("winner").classList.toggle("hidden", !showWinner);
    if (showWinner) {
      $("winner").textContent = w.sold ?
        `${w.title || w.item}: sold to ${w.winner} for ${money(w.price_cents)}` :
        `${w.title || w.item}: not sold (${w.reason || "reserve not met"})`;
    }
    fill(document.querySelector("#results tbody"), (a.results || []).map((r) =>
      el("tr", {}, el("td", {}, r.title || r.item), el("td", {}, r.sold ? r.winner : "not sold"),
         el("td", {}, r.sold ? money(r.price_cents) : "-"),
         el("td", { class: "hide-narrow" }, agora.clock(r.closed_at)))));
    tick();
  }

  function nextAmount(count) {
    const item = auction && auction.item;
    if (!item) return null;
    const base = auction.best ? auction.best.amount : item.start_cents - item.increment_cents;
    return base + count * item.increment_cents;
  }

  function tick() {
    const a = auction;
    if (!a || !a.item) return;
    const box = $("countdown");
    if (a.status === "closed") { box.textContent = "closed"; return; }
    if (a.link === "silent") { box.textContent = "auctioneer silent"; return; }
    if (a.link !== "live") { box.textContent = "-"; return; }
    const left = Math.max(0, a.closes_at - (Date.now() / 1000 + clockOffset));
    box.textContent = left > 0 ? `${Math.ceil(left)} s` : "closing…";
  }
  setInterval(tick, 250);

  // The custom amount, checked before anything is sent.
  function checkAmount(text) {
    const t = text.trim();
    if (!/^\d+(\.\d+)?$/.test(t)) return [null, "not a number: type an amount like 12.50"];
    if (/\.\d{3,}$/.test(t)) return [null, "at most two decimals, like 12.50"];
    const [whole, part = ""] = t.split(".");
    const cents = Number(whole) * 100 + Number(part.padEnd(2, "0"));
    if (auction && auction.minimum !== null && cents < auction.minimum) {
      return [null, `too low: the bid must be at least ${money(auction.minimum)}`];
    }
    return [t, null];
  }

  async function bid(params) {
    const box = $("bid-result");
    try {
      const answer = await agora.act("bid", params);
      notice(box, `accepted: ${money(answer.amount)} on ${answer.item}` +
        (answer.extended ? " — closing time extended" : ""), "ok");
    } catch (e) {
      notice(box, e.message, "bad");
    }
  }

  $("bid-1").addEventListener("click", () => bid({ increments: 1 }));
  $("bid-5").addEventListener("click", () => bid({ increments: 5 }));
  $("bid-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const [amount, problem] = checkAmount($("bid-amount").value);
    if (problem) { notice($("bid-result"), `not sent: ${problem}`, "bad"); return; }
    bid({ amount });
  });

  // -- messages ------------------------------------------------------------------------

  function addMessage(m) {
    (conversations[m.peer] = conversations[m.peer] || []).push(m);
    if (!current || m.direction === "out") current = m.peer;
    showConversations();
  }

  function showConversations() {
    fill($("conversations"), Object.keys(conversations).map((peer) =>
      el("button", { type: "button", class: peer === current ? "active" : "",
        onclick: () => { current = peer; $("msg-to").value = peer; showConversations(); } },
        peer)));
    const box = $("messages");
    if (!current) return;
    fill(box, conversations[current].map((m) =>
      el("div", { class: `msg ${m.direction}` },
        el("div", { class: "muted" }, `${m.direction === "in" ? m.peer : "you"} · ` +
          `${agora.clock(m.at)}${m.status === "received" ? "" : " · " + m.status}`),
        el("span", { class: "text" }, m.text))));
    box.scrollTop = box.scrollHeight;
  }

  function showOnline(rows) {
    const me = $("me").textContent;
    const others = rows.filter((r) => r.username !== me);
    fill($("online"), others.map((r) => el("option", { value: r.username })));
    $("online-list").textContent = others.length ?
      `Online: ${others.map((r) => r.username).join(", ")}` : "Nobody else online.";
  }

  $("send-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const to = $("msg-to").value.trim(), text = $("msg-text").value;
    const box = $("send-result");
    try {
      const answer = await agora.act("send", { to, text });
      $("msg-text").value = "";
      notice(box, answer.status, answer.delivered ? "ok" : "warn");
    } catch (e) {
      notice(box, e.message, "bad");
    }
  });

  // -- services ------------------------------------------------------------------------

  function showServices(rows) {
    services = rows;
    const select = $("service"), chosen = select.value;
    fill(select, rows.map((s) => el("option", { value: s.name, selected: s.name === chosen },
      `${s.name} (level ${s.level})`)));
    showFields();
  }

  function showFields() {
    const name = $("service").value;
    const info = services.find((s) => s.name === name);
    $("service-description").textContent = info ? info.description : "";
    const fields = FORMS[name];
    if (fields) {
      fill($("service-fields"), fields.map(([field, kind]) => {
        let input;
        if (kind === "textarea") input = el("textarea", { name: field });
        else if (kind === "level") {
          input = el("select", { name: field }, [1, 2, 3, 4, 5].map((n) =>
            el("option", { value: n }, `${n} ${LEVELS[n]}`)));
        } else input = el("input", { name: field, type: kind === "number" ? "number" : "text" });
        return el("p", {}, el("label", {}, `${field} `, input));
      }));
    } else if (NO_ARGS.has(name)) {
      fill($("service-fields"), el("p", { class: "muted" }, "No arguments."));
    } else {
      fill($("service-fields"), el("p", {}, el("label", {}, "arguments (a JSON object) ",
        el("textarea", { name: "args", placeholder: '{"text": "hello"}' }))));
    }
  }

  function formatted(value) {
    if (Array.isArray(value) && value.length && value.every((v) => v && typeof v === "object" && !Array.isArray(v))) {
      const keys = [...new Set(value.flatMap((v) => Object.keys(v)))];
      return el("div", { class: "scroll" }, el("table", {},
        el("thead", {}, el("tr", {}, keys.map((k) => el("th", {}, k)))),
        el("tbody", {}, value.map((v) => el("tr", {}, keys.map((k) =>
          el("td", {}, typeof v[k] === "object" && v[k] !== null ? JSON.stringify(v[k]) : String(v[k] ?? ""))))))));
    }
    if (value && typeof value === "object" && !Array.isArray(value)) {
      return el("table", {}, el("tbody", {}, Object.entries(value).map(([k, v]) =>
        el("tr", {}, el("th", {}, k), el("td", { class: "mono" },
          typeof v === "object" && v !== null ? JSON.stringify(v) : String(v))))));
    }
    return el("pre", { class: "result" }, JSON.stringify(value, null, 2));
  }

  $("service").addEventListener("change", showFields);
  $("call-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = $("service").value;
    const data = Object.fromEntries(new FormData($("call-form")));
    let args = {};
    if (FORMS[name]) {
      for (const [field, kind] of FORMS[name]) {
        if (data[field] === "" || data[field] === undefined) continue;
        args[field] = kind === "number" || kind === "level" ? Number(data[field]) : data[field];
      }
    } else if (!NO_ARGS.has(name)) {
      args = data.args || "";
    }
    $("call-error").classList.add("hidden");
    try {
      const answer = await agora.act("call", { service: name, args });
      fill($("call-result"), el("h3", {}, `${name}:`), formatted(answer.result));
    } catch (e) {
      notice($("call-error"), e.message, "bad");
      fill($("call-result"));
    }
  });

  function showNotes(rows) {
    const byLevel = {};
    for (const n of rows) (byLevel[n.level] = byLevel[n.level] || []).push(n);
    const levels = Object.keys(byLevel).map(Number).sort((a, b) => b - a);
    if (!levels.length) { fill($("notes"), el("p", { class: "muted" }, "No notes you may read.")); return; }
    fill($("notes"), levels.map((level) => el("div", {},
      el("h3", {}, `level ${level} · ${LEVELS[level] || ""}`),
      el("ul", {}, byLevel[level].map((n) => el("li", {},
        el("strong", {}, n.title), ` — ${n.author || ""} (#${n.id})`))))));
  }

  $("notes-refresh").addEventListener("click", async () => {
    try { await agora.act("refresh", { what: "notes" }); }
    catch (e) { notice($("call-error"), e.message, "bad"); }
  });

  // -- state and live events -------------------------------------------------------------

  function showMe(me) {
    $("me-level").textContent = `level ${me.level} (${LEVELS[me.level] || ""}), ${me.kind}`;
  }

  async function load() {
    const s = await agora.get("/api/state");
    showMe(s.me);
    for (const key of Object.keys(conversations)) delete conversations[key];
    for (const msgs of Object.values(s.conversations)) for (const m of msgs) addMessage(m);
    showOnline(s.online);
    showServices(s.services);
    showNotes(s.notes);
    showAuction(s.auction);
    showSession(s.session);
  }

  const handlers = {
    hello: () => load(), resync: () => load(),
    auction: showAuction, message: addMessage, session: showSession,
    online: showOnline, services: showServices, notes: showNotes,
    me: showMe, note: (text) => notice($("broker-banner"), text, "warn"),
  };
  agora.stream((event) => {
    const handler = handlers[event.kind];
    if (handler) handler(event.data);
  }, (on) => agora.live($("live"), on));
})();
