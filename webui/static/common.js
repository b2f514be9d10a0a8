// agora consoles: what both pages share. The page only ever talks to its own console
// (same origin); it holds the CSRF value from the page, never a token or a key.
"use strict";

const agora = (() => {
  const csrf = document.querySelector('meta[name="agora-csrf"]').content;

  async function answer(response) {
    let data;
    try { data = await response.json(); } catch (e) { data = {}; }
    if (!response.ok) {
      throw new Error(data.error || `the console answered ${response.status}`);
    }
    return data;
  }

  async function get(url) {
    return answer(await fetch(url, { credentials: "same-origin", cache: "no-store" }));
  }

  async function act(action, params) {
    const body = JSON.stringify(Object.assign({ action }, params || {}));
    return answer(await fetch("/api/action", {
      method: "POST", credentials: "same-origin", body,
      headers: { "Content-Type": "application/json", "X-Agora-CSRF": csrf },
    }));
  }

  // Live events; `onStatus(true|false)` says whether the stream is connected.
  function stream(onEvent, onStatus) {
    const source = new EventSource("/events");
    source.onopen = () => onStatus(true);
    source.onerror = () => onStatus(false);
    source.onmessage = (msg) => {
      let event;
      try { event = JSON.parse(msg.data); } catch (e) { return; }
      onEvent(event);
    };
    return source;
  }

  // Build DOM safely: text is always text (never parsed as HTML).
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "class") node.className = value;
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function fill(node, ...children) {
    node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
  }

  function money(cents) {
    if (cents === null || cents === undefined) return "-";
    const whole = Math.floor(cents / 100), part = String(cents % 100).padStart(2, "0");
    return `${whole}.${part}`;
  }

  function clock(ts) {
    if (!ts) return "-";
    return new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
  }

  function when(ts) {
    if (!ts) return "-";
    const d = new Date(ts * 1000);
    return `${d.toLocaleDateString()} ${d.toLocaleTimeString([], { hour12: false })}`;
  }

  // A one-line message in `node`: kind is "ok", "bad" or "warn".
  function notice(node, text, kind) {
    node.classList.remove("ok", "bad", "warn", "hidden");
    node.classList.add("notice", kind);
    node.textContent = text;
  }

  function live(node, on) {
    node.className = `live ${on ? "on" : "off"}`;
    node.textContent = on ? "live" : "reconnecting…";
  }

  return { get, act, stream, el, fill, money, clock, when, notice, live };
})();
