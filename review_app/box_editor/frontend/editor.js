/* Paperloop page editor: one document's whole edit state, held in the browser.
 *
 * Boxes, text, labels, links and entity merges/splits are edited here without a server round trip;
 * Save sends one diff (segments changed or made, ids removed, the links as they are now). The only
 * other messages to Python are re-reading a box with the recognizer in service, skipping and going
 * back to the queue. Streamlit sends the document (args.doc) with a key that changes when a new
 * document or revision is loaded; renders with the same key keep the local edits.
 */
(function () {
  "use strict";
  const NS = "http://www.w3.org/2000/svg";
  const $ = id => document.getElementById(id);
  const svg = $("svg"), view = $("view"), textBox = $("text");
  const ZOOM_KEY = "paperloop.editor.zoom";
  const uid = Math.random().toString(36).slice(2);

  const S = {
    args: null, key: null, docId: null,
    pages: [], segs: new Map(), links: [], base: null,
    page: 1, sel: [], selLink: null, mode: "select", linkFrom: null,
    visited: new Set(), undo: [], onlyUncertain: false,
    zoom: parseFloat(localStorage.getItem(ZOOM_KEY) || "1") || 1,
    drag: null, space: false, typing: null, counter: 0, nextRequest: 1,
    rereadQueue: [], rereadSent: null, busy: null, textBefore: null,
  };
  window.__paperloopEditor = S;  // read by the browser tests and bench/review.py
  S.timings = [];

  // -- messages to Streamlit ------------------------------------------------------------------

  function send(type, data) {
    window.parent.postMessage(Object.assign({isStreamlitMessage: true, type: type}, data), "*");
  }
  function emit(action, extra) {
    S.counter += 1;
    const value = Object.assign({uid: uid + "-" + S.counter, action: action, doc: S.docId, at: Date.now()}, extra || {});
    send("streamlit:setComponentValue", {value: value, dataType: "json"});
  }

  // -- the document model -----------------------------------------------------------------------

  function clone(x) { return JSON.parse(JSON.stringify(x)); }
  function seg(id) { return S.segs.get(id); }
  function pageOf(n) { return S.pages.find(p => p.number === n) || S.pages[0]; }
  function onPage(n) { return Array.from(S.segs.values()).filter(s => s.page === n); }
  function bboxOf(words) {
    return [Math.min(...words.map(w => w.box[0])), Math.min(...words.map(w => w.box[1])),
            Math.max(...words.map(w => w.box[2])), Math.max(...words.map(w => w.box[3]))];
  }
  function wordsOf(s) {
    if (s.words && s.words.length) return s.words;
    return s.text.trim() ? [{text: s.text, box: s.box.slice()}] : [];
  }
  /* Lines top to bottom (a word joins a line when its centre lies within the line's first word), each
     left to right: the same rule as service.review.editor.reading_order. */
  function readingOrder(words) {
    const sorted = words.slice().sort((a, b) => ((a.box[1] + a.box[3]) / 2 - (b.box[1] + b.box[3]) / 2) || a.box[0] - b.box[0]);
    const lines = [];
    for (const w of sorted) {
      const c = (w.box[1] + w.box[3]) / 2, line = lines[lines.length - 1];
      if (line && line[0].box[1] <= c && c <= line[0].box[3]) line.push(w); else lines.push([w]);
    }
    return [].concat(...lines.map(l => l.sort((a, b) => a.box[0] - b.box[0])));
  }
  function newId(page, kind) {
    for (let n = 0; ; n++) {
      const id = "p" + page + "-" + kind + String(n).padStart(4, "0");
      if (!S.segs.has(id) && !S.base.segs.has(id)) return id;
    }
  }
  function load(doc) {
    S.pages = doc.pages;
    S.segs = new Map(doc.segments.map(s => [s.id, clone(s)]));
    S.links = doc.links.map(l => Object.assign({}, l));
    S.base = {segs: new Map(doc.segments.map(s => [s.id, clone(s)])), links: doc.links.map(l => l.key + ">" + l.value)};
    S.undo = [];
    S.sel = S.sel.filter(id => S.segs.has(id));
    if (!S.pages.some(p => p.number === S.page)) S.page = S.pages.length ? S.pages[0].number : 1;
  }

  function snapshot() {
    S.undo.push(JSON.stringify({segs: Array.from(S.segs.values()), links: S.links}));
    if (S.undo.length > 200) S.undo.shift();
  }
  function undo() {
    const last = S.undo.pop();
    if (!last) return;
    const data = JSON.parse(last);
    S.segs = new Map(data.segs.map(s => [s.id, s]));
    S.links = data.links;
    S.sel = S.sel.filter(id => S.segs.has(id));
    changed();
  }

  /* What a save sends: new segments in full, known ones with the fields that changed, removed ids, and
     the links when they changed. */
  function diff() {
    const segments = [], deleted = [];
    for (const id of S.base.segs.keys()) if (!S.segs.has(id)) deleted.push(id);
    for (const s of S.segs.values()) {
      const b = S.base.segs.get(s.id);
      if (!b) { segments.push({id: s.id, page: s.page, box: s.box, text: s.text, label: s.label, words: s.words || [],
                               rec_score: s.rec_score, rec_version: s.rec_version}); continue; }
      const d = {id: s.id};
      if (s.text !== b.text) d.text = s.text;
      if ((s.label || null) !== (b.label || null)) d.label = s.label || null;
      if (s.box.some((v, i) => Math.abs(v - b.box[i]) > 0.5)) d.box = s.box;
      if (s.reread) { d.words = s.words; d.rec_version = s.rec_version; d.rec_score = s.rec_score; }
      if (Object.keys(d).length > 1) segments.push(d);
    }
    const now = S.links.map(l => l.key + ">" + l.value);
    const same = now.length === S.base.links.length && now.every((p, i) => p === S.base.links[i]);
    return {segments: segments, deleted: deleted, links: same ? null : S.links.map(l => [l.key, l.value])};
  }
  function edits(d) { return d.segments.length + d.deleted.length + (d.links ? 1 : 0); }
  function isDirty() { return S.base !== null && edits(diff()) > 0; }

  // -- edits (each one: snapshot, change, redraw; no server) ------------------------------------

  /* Record how long an edit took: in the handler (ms) and until the next frame is drawn (frame_ms). */
  function record(name, t0) {
    const entry = {action: name, ms: performance.now() - t0, frame_ms: null};
    S.timings.push(entry);
    requestAnimationFrame(() => requestAnimationFrame(() => { entry.frame_ms = performance.now() - t0; }));
  }
  function timed(name, fn) {
    const t0 = performance.now();
    fn();
    record(name, t0);
  }
  function setText(id, text) { const s = seg(id); if (s && s.text !== text) { s.text = text; s.words = []; s.reread = false; } }
  function setLabel(label) {
    if (!S.sel.length) return;
    timed("label", () => { snapshot(); for (const id of S.sel) seg(id).label = label; visit(S.sel); changed(); });
  }
  function addBox(box) {
    let id;
    timed("box", () => {
      snapshot();
      id = newId(S.page, "r");
      S.segs.set(id, {id: id, page: S.page, box: box, text: "", label: null, words: [], low: true, unc: null, conf: null});
      S.sel = [id];
      changed();
    });
    requestReread(id);
  }
  function moveBox(id, box) { timed("box", () => { snapshot(); seg(id).box = box; changed(); }); }
  function deleteSelected() {
    if (S.selLink) {
      const [k, v] = S.selLink;
      timed("link", () => { snapshot(); S.links = S.links.filter(l => !(l.key === k && l.value === v)); S.selLink = null; changed(); });
      return;
    }
    if (!S.sel.length) return;
    timed("box", () => {
      snapshot();
      const gone = new Set(S.sel);
      for (const id of gone) S.segs.delete(id);
      S.links = S.links.filter(l => !gone.has(l.key) && !gone.has(l.value));
      S.sel = [];
      changed();
    });
  }
  function addLink(key, value) {
    if (key === value || S.links.some(l => l.key === key && l.value === value)) return;
    timed("link", () => { snapshot(); S.links.push({key: key, value: value, score: null, weak: false}); visit([key, value]); changed(); });
  }
  /* Links that named the old segments name the new one instead (self-links and repeats dropped). */
  function repoint(oldIds, newId_) {
    const seen = new Set();
    S.links = S.links.map(l => ({key: oldIds.has(l.key) ? newId_ : l.key, value: oldIds.has(l.value) ? newId_ : l.value,
                                 score: l.score, weak: l.weak}))
      .filter(l => { const k = l.key + ">" + l.value; if (l.key === l.value || seen.has(k)) return false; seen.add(k); return true; });
  }
  function merge() {
    const parts = S.sel.map(seg).filter(s => s && s.page === S.page);
    if (parts.length < 2) { status("Select two or more segments (Shift+click), then M.", ""); return; }
    timed("merge", () => {
      snapshot();
      const words = readingOrder([].concat(...parts.map(wordsOf)));
      const id = newId(S.page, "m");
      const merged = {id: id, page: S.page, box: bboxOf(words.length ? words : parts.map(p => ({box: p.box}))),
                      text: words.map(w => w.text).join(" "), label: parts[0].label, words: words, low: false, unc: null, conf: null};
      for (const p of parts) S.segs.delete(p.id);
      S.segs.set(id, merged);
      repoint(new Set(parts.map(p => p.id)), id);
      S.sel = [id];
      visit([id]);
      changed();
    });
  }
  function splitAt(id, index) {
    const s = seg(id), words = readingOrder(wordsOf(s));
    const cut = Math.max(1, Math.min(words.length - 1, index));
    timed("split", () => {
      snapshot();
      const made = [words.slice(0, cut), words.slice(cut)].map(part => {
        const nid = newId(s.page, "s");
        const piece = {id: nid, page: s.page, box: bboxOf(part), text: part.map(w => w.text).join(" "), label: s.label,
                       words: part, low: false, unc: null, conf: null};
        S.segs.set(nid, piece);
        return nid;
      });
      S.segs.delete(id);
      repoint(new Set([id]), made[0]);
      S.sel = made;
      S.mode = "select";
      changed();
    });
  }

  // -- re-reading (the one edit that asks the server: the recognizer runs there) ----------------

  function requestReread(id) {
    const s = seg(id);
    if (!s) return;
    s.pending = true;
    S.rereadQueue.push({request: S.nextRequest++, id: id, page: s.page, box: s.box.map(Math.round), t0: performance.now()});
    pumpReread();
    draw();
  }
  function pumpReread() {
    if (S.rereadSent || !S.rereadQueue.length) return;
    S.rereadSent = S.rereadQueue.shift();
    const r = S.rereadSent;
    emit("reread", {request: r.request, id: r.id, page: r.page, box: r.box});
  }
  function receiveReread(result) {
    const r = S.rereadSent;
    if (!result || !r || result.request !== r.request) return;
    S.rereadSent = null;
    const s = seg(r.id);
    if (s) {
      s.pending = false;
      if (!result.error && s.box.every((v, i) => Math.abs(v - r.box[i]) <= 1)) {
        snapshot();
        Object.assign(s, {text: result.text, words: result.words, rec_score: result.score, rec_version: result.rec_version,
                          reread: true, conf: result.score});
        S.timings.push({action: "reread", ms: performance.now() - r.t0});
        status("Read: “" + result.text + "” (" + result.score.toFixed(2) + ")", "ok");
      } else if (result.error) status("Not read: " + result.error, "error");
      changed();
    }
    pumpReread();
  }

  // -- uncertainty: the items to check, most uncertain first ------------------------------------

  function uncertainItems() {
    const items = [];
    for (const s of S.segs.values()) if (s.low) items.push({kind: "seg", id: s.id, page: s.page, unc: s.unc == null ? 1 : s.unc});
    for (const l of S.links) if (l.weak && S.segs.has(l.key)) {
      items.push({kind: "link", id: l.key + ">" + l.value, pair: [l.key, l.value], page: seg(l.key).page, unc: 1 - (l.score || 0)});
    }
    return items.sort((a, b) => b.unc - a.unc || a.page - b.page);
  }
  function visit(ids) { for (const id of ids) S.visited.add(id); }
  function goItem(item) {
    if (!item) return;
    S.page = item.page;
    if (item.kind === "seg") { S.sel = [item.id]; S.selLink = null; } else { S.selLink = item.pair; S.sel = [item.pair[0]]; }
    visit([item.id]);
    draw();
    scrollToSelection();
  }
  function tab(step) {
    const items = uncertainItems();
    if (!items.length) return;
    const current = S.selLink ? S.selLink.join(">") : S.sel[0];
    const i = items.findIndex(it => it.id === current);
    goItem(items[(i < 0 ? (step > 0 ? 0 : items.length - 1) : (i + step + items.length) % items.length)]);
  }

  // -- drawing -----------------------------------------------------------------------------------

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const k in attrs) node.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(node);
    return node;
  }
  function hexA(hex, a) {
    const h = (hex || "#9e9e9e").replace("#", "");
    return "rgba(" + parseInt(h.slice(0, 2), 16) + "," + parseInt(h.slice(2, 4), 16) + "," + parseInt(h.slice(4, 6), 16) + "," + a + ")";
  }
  function colour(label) { return (S.args.colours || {})[label] || "#9e9e9e"; }
  function fitScale() { const p = pageOf(S.page); return p ? Math.max(0.05, (view.clientWidth - 2) / p.width) : 1; }
  /* The point where the segment from a box's centre towards (tx, ty) leaves the box. */
  function edge(b, tx, ty) {
    const cx = (b[0] + b[2]) / 2, cy = (b[1] + b[3]) / 2, dx = tx - cx, dy = ty - cy;
    const sx = dx ? ((dx > 0 ? b[2] : b[0]) - cx) / dx : Infinity, sy = dy ? ((dy > 0 ? b[3] : b[1]) - cy) / dy : Infinity;
    const t = Math.min(sx, sy, 1);
    return [cx + dx * t, cy + dy * t];
  }

  let imageNode = null, overlay = null;
  function layout() {
    const p = pageOf(S.page);
    if (!p) return;
    const scale = fitScale() * S.zoom;
    svg.setAttribute("width", Math.round(p.width * scale));
    svg.setAttribute("height", Math.round(p.height * scale));
    $("zlabel").textContent = Math.round(S.zoom * 100) + "%";
  }
  function drawPage() {
    const p = pageOf(S.page);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    if (!p) return;
    svg.setAttribute("viewBox", "0 0 " + p.width + " " + p.height);
    const defs = el("defs", {}, svg);
    for (const [name, fill] of [["arrow", "#0f766e"], ["arrowweak", "#ea580c"]]) {
      const m = el("marker", {id: name, viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "5", markerHeight: "5", orient: "auto"}, defs);
      el("path", {d: "M 0 0 L 10 5 L 0 10 z", fill: fill}, m);
    }
    imageNode = el("image", {href: (S.args.images || {})[String(p.number)] || "", x: 0, y: 0, width: p.width, height: p.height,
                             preserveAspectRatio: "none"}, svg);
    el("rect", {x: 0, y: 0, width: p.width, height: p.height, fill: "transparent", "data-bg": "1"}, svg);
    overlay = el("g", {}, svg);
    layout();
  }
  function draw() {
    if (!S.base) return;
    if (!overlay || svg.dataset.page !== String(S.page) || svg.dataset.key !== S.key) {
      svg.dataset.page = String(S.page); svg.dataset.key = S.key;
      drawPage();
    }
    while (overlay.firstChild) overlay.removeChild(overlay.firstChild);
    const p = pageOf(S.page), font = Math.max(10, Math.round(p.width / 80));
    const ranks = new Map(uncertainItems().filter(i => i.kind === "seg").map((it, n) => [it.id, n + 1]));
    for (const s of onPage(S.page)) drawSegment(s, ranks.get(s.id), font);
    for (const l of S.links) drawLink(l, font);
    if (S.mode === "split" && S.sel.length === 1 && seg(S.sel[0])) drawWords(seg(S.sel[0]));
    const only = S.sel.length === 1 ? seg(S.sel[0]) : null;
    if (only && only.page === S.page && S.mode === "select") drawHandles(only);
    panel();
  }
  function drawSegment(s, rank, font) {
    const selected = S.sel.includes(s.id);
    const dim = S.onlyUncertain && !s.low && !selected;
    const cls = "seg" + (selected ? " sel" : "") + (dim ? " dim" : "") + (S.visited.has(s.id) ? " visited" : "") +
                (S.linkFrom === s.id ? " from" : "") + (s.pending ? " pending" : "");
    const g = el("g", {class: cls, "data-id": s.id}, overlay);
    const [x0, y0, x1, y1] = s.box, c = colour(s.label);
    el("title", {}, g).textContent = (s.label || "no label") + (s.conf != null ? " · confidence " + s.conf.toFixed(2) : "") + "\n" + s.text;
    el("rect", {class: "body", x: x0, y: y0, width: Math.max(1, x1 - x0), height: Math.max(1, y1 - y0),
                fill: hexA(c, selected ? 0.25 : 0.08), stroke: c, "data-id": s.id}, g);
    if (s.low) {
      const u = s.unc == null ? 1 : s.unc;  // the more uncertain, the heavier the ring
      el("rect", {class: "ring", x: x0 - 3, y: y0 - 3, width: x1 - x0 + 6, height: y1 - y0 + 6,
                  "stroke-width": (1 + 3 * u).toFixed(1), "stroke-opacity": (0.35 + 0.65 * u).toFixed(2)}, g);
      if (rank && !S.visited.has(s.id)) el("text", {class: "rank", x: x0 - 4, y: y0 - 4, "font-size": font, "text-anchor": "end"}, g).textContent = rank;
    }
    if (selected) el("rect", {class: "selring", x: x0 - 6, y: y0 - 6, width: x1 - x0 + 12, height: y1 - y0 + 12}, g);
  }
  function drawLink(l, font) {
    const k = seg(l.key), v = seg(l.value);
    if (!k || !v || k.page !== S.page || v.page !== S.page) return;
    const vc = [(v.box[0] + v.box[2]) / 2, (v.box[1] + v.box[3]) / 2], kc = [(k.box[0] + k.box[2]) / 2, (k.box[1] + k.box[3]) / 2];
    const a = edge(k.box, vc[0], vc[1]), b = edge(v.box, kc[0], kc[1]);
    const selected = S.selLink && S.selLink[0] === l.key && S.selLink[1] === l.value;
    // a gentle curve above the text, ending at the value's border so the arrow never covers it
    const mx = (a[0] + b[0]) / 2, my = (a[1] + b[1]) / 2 - Math.min(40, Math.abs(b[0] - a[0]) / 6);
    const d = "M " + a[0] + " " + a[1] + " Q " + mx + " " + my + " " + b[0] + " " + b[1];
    el("path", {class: "link" + (l.weak ? " weak" : "") + (selected ? " sel" : ""), d: d, "marker-end": l.weak ? "url(#arrowweak)" : "url(#arrow)"}, overlay);
    el("path", {class: "linkhit", d: d, "data-link": l.key + ">" + l.value}, overlay);
    if (l.weak) el("text", {class: "linkq", x: mx, y: my, "font-size": font, "text-anchor": "middle"}, overlay).textContent = "?" + (l.score != null ? l.score.toFixed(2) : "");
  }
  function drawHandles(s) {
    const r = Math.max(3, pageOf(S.page).width / 250) / S.zoom;
    const [x0, y0, x1, y1] = s.box, mx = (x0 + x1) / 2, my = (y0 + y1) / 2;
    for (const [hx, hy, name] of [[x0, y0, "nw"], [mx, y0, "n"], [x1, y0, "ne"], [x1, my, "e"], [x1, y1, "se"], [mx, y1, "s"], [x0, y1, "sw"], [x0, my, "w"]]) {
      el("rect", {class: "handle", x: hx - r, y: hy - r, width: 2 * r, height: 2 * r, "data-handle": name, "data-id": s.id,
                  style: "cursor:" + name + "-resize"}, overlay);
    }
  }
  function drawWords(s) {
    readingOrder(wordsOf(s)).forEach((w, i) => {
      el("rect", {class: "word", x: w.box[0], y: w.box[1], width: w.box[2] - w.box[0], height: w.box[3] - w.box[1], "data-word": i}, overlay)
        .appendChild(document.createElementNS(NS, "title")).textContent = "split before “" + w.text + "”";
    });
  }
  function scrollToSelection() {
    const s = seg(S.sel[0]);
    if (!s) return;
    const scale = fitScale() * S.zoom, cx = (s.box[0] + s.box[2]) / 2 * scale, cy = (s.box[1] + s.box[3]) / 2 * scale;
    if (cx < view.scrollLeft || cx > view.scrollLeft + view.clientWidth || cy < view.scrollTop || cy > view.scrollTop + view.clientHeight) {
      view.scrollTo({left: cx - view.clientWidth / 2, top: cy - view.clientHeight / 2});
    }
  }

  // -- the side panel ---------------------------------------------------------------------------

  function short(t, n) { t = (t || "").trim(); return t.length > n ? t.slice(0, n - 1) + "…" : (t || "(no text)"); }
  function row(parent, text, opts) {
    const r = document.createElement("div");
    r.className = "row" + (opts.on ? " on" : "") + (opts.done ? " done" : "");
    const t = document.createElement("span"); t.className = "t"; t.textContent = text; r.appendChild(t);
    if (opts.extra) { const e = document.createElement("span"); e.className = opts.extraClass || "muted"; e.textContent = opts.extra; r.appendChild(e); }
    if (opts.remove) {
      const x = document.createElement("button"); x.className = "x"; x.textContent = "×"; x.title = "Remove this link";
      x.addEventListener("click", ev => { ev.stopPropagation(); opts.remove(); }); r.appendChild(x);
    }
    r.addEventListener("click", opts.click);
    parent.appendChild(r);
  }
  function panel() {
    const s = S.sel.length === 1 ? seg(S.sel[0]) : null;
    $("selname").textContent = S.sel.length > 1 ? S.sel.length + " segments selected (M merges)" : s ? s.id + (s.label ? " · " + s.label : "") : "Nothing selected";
    if (document.activeElement !== textBox) textBox.value = s ? s.text : "";
    textBox.disabled = !s;
    const labels = $("labels");
    labels.textContent = "";
    (S.args.labels || []).slice(0, 9).concat([null]).forEach((label, i) => {
      const b = document.createElement("button");
      b.textContent = (label === null ? "0 none" : (i + 1) + " " + label);
      b.style.borderColor = label ? colour(label) : "#9e9e9e";
      if (s && (s.label || null) === label) b.classList.add("on");
      b.disabled = !S.sel.length;
      b.addEventListener("click", () => setLabel(label));
      labels.appendChild(b);
    });
    const scores = s ? [s.rec_score != null ? "recognition " + s.rec_score.toFixed(2) : "", s.label_score != null ? "label " + s.label_score.toFixed(2) : "",
                        s.group_score != null ? "grouping " + s.group_score.toFixed(2) : "", s.words && s.words.length > 1 ? s.words.length + " words" : "",
                        s.pending ? "reading…" : ""].filter(Boolean).join(" · ") : "";
    $("scores").textContent = scores;
    const items = uncertainItems(), list = $("uncertain");
    list.textContent = "";
    const current = S.selLink ? S.selLink.join(">") : S.sel[0];
    for (const it of items) {
      const text = it.kind === "seg" ? "p" + it.page + " " + short(seg(it.id).text, 34) : "link " + short(seg(it.pair[0]).text, 14) + " → " + short((seg(it.pair[1]) || {}).text, 14);
      row(list, text, {on: it.id === current, done: S.visited.has(it.id), extra: it.unc.toFixed(2), click: () => goItem(it)});
    }
    $("todo").textContent = items.filter(i => !S.visited.has(i.id)).length + " of " + items.length + " left";
    const pairs = $("pairs");
    pairs.textContent = "";
    for (const l of S.links) {
      const k = seg(l.key), v = seg(l.value);
      if (!k || !v) continue;
      const on = S.selLink && S.selLink[0] === l.key && S.selLink[1] === l.value;
      row(pairs, short(k.text, 22) + " → " + short(v.text, 22), {on: on, extra: l.weak ? "? " + (l.score || 0).toFixed(2) : (l.score != null ? l.score.toFixed(2) : "new"),
          extraClass: l.weak ? "weak" : "muted", click: () => { S.selLink = [l.key, l.value]; S.sel = [l.key]; S.page = k.page; visit([l.key + ">" + l.value]); draw(); },
          remove: () => { S.selLink = [l.key, l.value]; deleteSelected(); }});
    }
    $("paircount").textContent = S.links.length;
    summary(items);
    toolbar();
  }
  function summary(items) {
    const lines = S.pages.map(p => {
      const left = items.filter(i => i.page === p.number && !S.visited.has(i.id)).length;
      return "Page " + p.number + ": " + onPage(p.number).length + " segments, " + (left ? left + " to check" : "checked");
    });
    const d = diff();
    lines.push(edits(d) ? edits(d) + " unsaved edit(s)" : "no unsaved edits");
    $("summary").textContent = lines.join(" · ");
  }
  function toolbar() {
    const n = S.pages.findIndex(p => p.number === S.page);
    $("pageinfo").textContent = " Page " + S.page + " of " + S.pages.length + " ";
    $("prev").disabled = n <= 0; $("next").disabled = n >= S.pages.length - 1;
    $("mdraw").classList.toggle("on", S.mode === "draw");
    $("mlink").classList.toggle("on", S.mode === "link");
    $("split").classList.toggle("on", S.mode === "split");
    $("only").classList.toggle("on", S.onlyUncertain);
    $("merge").disabled = S.sel.length < 2;
    $("split").disabled = !(S.sel.length === 1 && seg(S.sel[0]) && wordsOf(seg(S.sel[0])).length > 1);
    $("reread").disabled = S.sel.length !== 1;
    svg.style.cursor = S.mode === "select" ? "default" : "crosshair";
  }

  function changed() {
    draw();
    const dirty = isDirty();
    $("dirty").textContent = dirty ? "● unsaved changes" : "";
    try { window.parent.__paperloopDirty = dirty; } catch (e) { /* not same-origin */ }
  }
  function status(message, kind) { const s = $("status"); s.textContent = message; s.className = kind || ""; s.title = message; }

  // -- pointer: select, move, resize, draw, link, split, pan ------------------------------------

  function toPage(evt) {
    const pt = svg.createSVGPoint();
    pt.x = evt.clientX; pt.y = evt.clientY;
    const q = pt.matrixTransform(svg.getScreenCTM().inverse()), p = pageOf(S.page);
    return {x: Math.max(0, Math.min(p.width, q.x)), y: Math.max(0, Math.min(p.height, q.y))};
  }
  function clickSegment(id, evt) {
    S.selLink = null;
    if (S.mode === "link") {
      if (!S.linkFrom || S.linkFrom === id) { S.linkFrom = id; S.sel = [id]; draw(); status("Now click the value", ""); }
      else { const k = S.linkFrom; S.linkFrom = null; S.sel = [id]; addLink(k, id); status("Linked", "ok"); }
      return;
    }
    if (evt.shiftKey || evt.ctrlKey || evt.metaKey) S.sel = S.sel.includes(id) ? S.sel.filter(x => x !== id) : S.sel.concat([id]);
    else S.sel = [id];
    visit([id]);
    draw();
  }
  // A second press on the same box within DOUBLE_MS, no key between, edits its text at once (selected): a text fix
  // is one double click plus typing. Counted here, not with "dblclick": every press redraws the boxes, and
  // the browser does not pair two clicks on different nodes.
  const DOUBLE_MS = 400;
  document.addEventListener("keydown", () => { S.lastPress = null; }, true);  // a key between presses: two clicks
  function isDoublePress(id) {
    const now = performance.now(), last = S.lastPress;
    S.lastPress = {id: id, t: now};
    return !!last && last.id === id && now - last.t < DOUBLE_MS;
  }
  svg.addEventListener("pointerdown", function (evt) {
    if (!S.base) return;
    view.focus({preventScroll: true});
    if (evt.button === 1 || S.space || evt.altKey) {  // pan
      S.drag = {kind: "pan", x: evt.clientX, y: evt.clientY, left: view.scrollLeft, top: view.scrollTop};
      view.classList.add("panning");
    } else if (evt.button !== 0) {
      return;
    } else {
      const t = evt.target, p = toPage(evt);
      const handle = t.getAttribute("data-handle"), id = t.getAttribute("data-id"), word = t.getAttribute("data-word"), link = t.getAttribute("data-link");
      if (word !== null && S.mode === "split") { splitAt(S.sel[0], parseInt(word, 10)); return; }
      if (link && S.mode === "select") { S.selLink = link.split(">"); S.sel = [S.selLink[0]]; visit([link]); draw(); return; }
      if (handle) S.drag = {kind: "resize", id: id, handle: handle, start: p, orig: seg(id).box.slice()};
      else if (id && S.mode === "select" && isDoublePress(id) && S.sel.length === 1 && S.sel[0] === id) {
        textBox.focus(); textBox.select(); S.lastPress = null; evt.preventDefault(); return;
      } else if (id && S.mode !== "draw") {
        clickSegment(id, evt);
        if (S.mode === "select" && S.sel.length === 1) S.drag = {kind: "move", id: id, start: p, orig: seg(id).box.slice(), moved: false};
      } else if (S.mode !== "link" && S.mode !== "split") {
        S.drag = {kind: "draw", start: p, node: el("rect", {class: "draft", x: p.x, y: p.y, width: 0, height: 0}, overlay)};
      }
    }
    if (S.drag) svg.setPointerCapture(evt.pointerId);
    evt.preventDefault();
  });
  svg.addEventListener("pointermove", function (evt) {
    const d = S.drag;
    if (!d) return;
    if (d.kind === "pan") { view.scrollLeft = d.left - (evt.clientX - d.x); view.scrollTop = d.top - (evt.clientY - d.y); return; }
    const p = toPage(evt), dx = p.x - d.start.x, dy = p.y - d.start.y;
    if (d.kind === "draw") {
      d.node.setAttribute("x", Math.min(p.x, d.start.x)); d.node.setAttribute("y", Math.min(p.y, d.start.y));
      d.node.setAttribute("width", Math.abs(dx)); d.node.setAttribute("height", Math.abs(dy));
      return;
    }
    const s = seg(d.id), o = d.orig, pg = pageOf(S.page);
    if (d.kind === "move") {
      if (!d.moved && Math.abs(dx) + Math.abs(dy) <= 2) return;
      if (!d.moved) { snapshot(); d.moved = true; }
      const w = o[2] - o[0], h = o[3] - o[1];
      const x0 = Math.max(0, Math.min(pg.width - w, o[0] + dx)), y0 = Math.max(0, Math.min(pg.height - h, o[1] + dy));
      s.box = [x0, y0, x0 + w, y0 + h];
    } else {
      if (!d.resized) { snapshot(); d.resized = true; }
      const b = o.slice(), hd = d.handle;
      if (hd.includes("w")) b[0] = Math.min(o[2] - 3, o[0] + dx);
      if (hd.includes("e")) b[2] = Math.max(o[0] + 3, o[2] + dx);
      if (hd.includes("n")) b[1] = Math.min(o[3] - 3, o[1] + dy);
      if (hd.includes("s")) b[3] = Math.max(o[1] + 3, o[3] + dy);
      s.box = b;
    }
    draw();
  });
  svg.addEventListener("pointerup", function (evt) {
    const d = S.drag;
    S.drag = null;
    view.classList.remove("panning");
    if (!d || d.kind === "pan") return;
    const t0 = performance.now();
    if (d.kind === "draw") {
      const p = toPage(evt), w = Math.abs(p.x - d.start.x), h = Math.abs(p.y - d.start.y);
      if (d.node.parentNode) d.node.parentNode.removeChild(d.node);
      if (w >= 4 && h >= 4) {
        S.mode = "select";
        addBox([Math.round(Math.min(p.x, d.start.x)), Math.round(Math.min(p.y, d.start.y)), Math.round(Math.max(p.x, d.start.x)), Math.round(Math.max(p.y, d.start.y))]);
      } else { S.sel = []; S.selLink = null; draw(); }
      return;
    }
    if (d.moved || d.resized) {
      const s = seg(d.id);
      s.box = s.box.map(Math.round);
      changed();
      record("box", t0);
    }
  });
  view.addEventListener("wheel", function (evt) {
    if (!S.base) return;
    evt.preventDefault();
    const rect = view.getBoundingClientRect(), mx = evt.clientX - rect.left, my = evt.clientY - rect.top;
    const before = fitScale() * S.zoom, px = (view.scrollLeft + mx) / before, py = (view.scrollTop + my) / before;
    setZoom(S.zoom * Math.pow(1.0015, -evt.deltaY));
    const after = fitScale() * S.zoom;
    view.scrollLeft = px * after - mx; view.scrollTop = py * after - my;
  }, {passive: false});
  function setZoom(z) {
    S.zoom = Math.max(0.5, Math.min(6, z));
    localStorage.setItem(ZOOM_KEY, String(S.zoom));  // kept across documents (and reloads)
    layout();
    draw();
  }

  // -- keyboard: the same keys wherever the focus is --------------------------------------------

  const GLOBAL = evt => ((evt.ctrlKey || evt.metaKey) && (evt.key === "s" || evt.key === "S" || evt.key === "Enter")) || (evt.altKey && evt.code === "KeyN");
  function global(evt) {
    if ((evt.ctrlKey || evt.metaKey) && (evt.key === "s" || evt.key === "S")) save(false);
    else if ((evt.ctrlKey || evt.metaKey) && evt.key === "Enter") save(true);
    else if (evt.altKey && evt.code === "KeyN") leave("skip");
    else return false;
    evt.preventDefault();
    evt.stopPropagation();
    return true;
  }
  function onKey(evt) {
    if (!S.base || global(evt)) return;
    if (evt.target === textBox) { textKey(evt); return; }
    const tag = (evt.target && evt.target.tagName) || "";
    if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || (evt.target && evt.target.isContentEditable)) return;
    if (!editorKey(evt)) return;
    evt.preventDefault();
    evt.stopPropagation();
  }
  function editorKey(evt) {
    const k = evt.key, ctrl = evt.ctrlKey || evt.metaKey;
    if (ctrl && (k === "z" || k === "Z")) undo();
    else if (ctrl || evt.altKey) return false;
    else if (k === "Tab") tab(evt.shiftKey ? -1 : 1);
    else if (k === "Enter" && S.sel.length === 1) { textBox.focus(); textBox.select(); }
    else if (/^[0-9]$/.test(k)) { const i = parseInt(k, 10); if (i === 0) setLabel(null); else if ((S.args.labels || [])[i - 1]) setLabel(S.args.labels[i - 1]); }
    else if (k === "Delete" || k === "Backspace") deleteSelected();
    else if (k === "Escape") { S.mode = "select"; S.linkFrom = null; S.sel = []; S.selLink = null; draw(); }
    else if (k === "b" || k === "B") { S.mode = S.mode === "draw" ? "select" : "draw"; draw(); }
    else if (k === "l" || k === "L") { S.mode = S.mode === "link" ? "select" : "link"; S.linkFrom = S.mode === "link" && S.sel.length === 1 ? S.sel[0] : null; draw(); }
    else if (k === "m" || k === "M") merge();
    else if (k === "x" || k === "X") { if (!$("split").disabled) { S.mode = S.mode === "split" ? "select" : "split"; draw(); } }
    else if (k === "r" || k === "R") { if (S.sel.length === 1) requestReread(S.sel[0]); }
    else if (k === "u" || k === "U") { S.onlyUncertain = !S.onlyUncertain; draw(); }
    else if (k === "f" || k === "F") setZoom(1);
    else if (k === "+" || k === "=") setZoom(S.zoom * 1.25);
    else if (k === "-") setZoom(S.zoom / 1.25);
    else if (k === "PageDown") turn(1);
    else if (k === "PageUp") turn(-1);
    else if (k === " ") S.space = true;
    else if (k.startsWith("Arrow") && S.sel.length === 1) nudge(k, evt.shiftKey ? 10 : 1);
    else return false;
    return true;
  }
  function nudge(key, step) {
    const s = seg(S.sel[0]);
    const dx = key === "ArrowLeft" ? -step : key === "ArrowRight" ? step : 0, dy = key === "ArrowUp" ? -step : key === "ArrowDown" ? step : 0;
    moveBox(s.id, [s.box[0] + dx, s.box[1] + dy, s.box[2] + dx, s.box[3] + dy]);
  }
  function textKey(evt) {
    if (evt.key === "Enter") { view.focus({preventScroll: true}); evt.preventDefault(); }
    else if (evt.key === "Escape") { setText(S.sel[0], S.textBefore); textBox.value = S.textBefore; view.focus({preventScroll: true}); changed(); evt.preventDefault(); }
    else if (evt.key === "Tab") { view.focus({preventScroll: true}); tab(evt.shiftKey ? -1 : 1); evt.preventDefault(); }
  }
  textBox.addEventListener("focus", () => { S.textBefore = textBox.value; });
  textBox.addEventListener("input", function () {  // every keystroke is in the edit state at once
    if (S.sel.length !== 1) return;
    const t0 = performance.now(), id = S.sel[0];
    if (!S.typing || S.typing !== id) { snapshot(); S.typing = id; }
    setText(id, textBox.value);
    visit([id]);
    changed();
    record("text", t0);
  });
  textBox.addEventListener("blur", () => { S.typing = null; });
  document.addEventListener("keydown", onKey, true);
  document.addEventListener("keyup", evt => { if (evt.key === " ") S.space = false; });

  /* The app's own page forwards the save / next / skip keys (and the editor's keys when nothing there
     takes typing), and asks before a click in the sidebar leaves unsaved edits. */
  function installInParent() {
    let page;
    try { page = window.parent.document; } catch (e) { return; }
    const w = window.parent;
    if (w.__paperloopEditorKeys) page.removeEventListener("keydown", w.__paperloopEditorKeys, true);
    if (w.__paperloopEditorClicks) page.removeEventListener("click", w.__paperloopEditorClicks, true);
    w.__paperloopEditorKeys = function (evt) {
      if (GLOBAL(evt)) { global(evt); return; }
      if ((evt.target === page.body || !evt.target) && S.base && editorKey(evt)) evt.preventDefault();
    };
    w.__paperloopEditorClicks = function (evt) {
      const bar = evt.target && evt.target.closest && evt.target.closest('[data-testid="stSidebar"]');
      if (bar && evt.target.closest("label, button, a") && isDirty() && !w.confirm("This document has unsaved edits. Leave and discard them?")) {
        evt.preventDefault(); evt.stopPropagation();
      }
    };
    page.addEventListener("keydown", w.__paperloopEditorKeys, true);
    page.addEventListener("click", w.__paperloopEditorClicks, true);
    if (!w.__paperloopGuard) {
      w.__paperloopGuard = true;
      w.addEventListener("beforeunload", function (event) { if (w.__paperloopDirty) { event.preventDefault(); event.returnValue = ""; } });
    }
    window.addEventListener("pagehide", function () {
      page.removeEventListener("keydown", w.__paperloopEditorKeys, true);
      page.removeEventListener("click", w.__paperloopEditorClicks, true);
      w.__paperloopDirty = false;
    });
  }

  // -- saving and leaving -----------------------------------------------------------------------

  function save(accept) {
    if (S.busy) return;
    if (document.activeElement === textBox && S.sel.length === 1) setText(S.sel[0], textBox.value);  // the pending keystrokes too
    const d = diff();
    if (accept && Array.from(S.segs.values()).some(s => !s.text.trim() && !s.pending)) {
      if (!window.confirm("Some boxes have no text. Accept anyway?")) return;
    }
    S.busy = {action: accept ? "accept" : "save", t0: performance.now()};
    status(accept ? "Saving and opening the next…" : "Saving…", "");
    emit(accept ? "accept" : "save", {diff: d, edits: edits(d)});
  }
  function leave(action) {
    if (S.busy) return;
    if (isDirty() && !window.confirm("This document has unsaved edits. Leave and discard them?")) return;
    S.busy = {action: action, t0: performance.now()};
    try { window.parent.__paperloopDirty = false; } catch (e) { /* not same-origin */ }
    emit(action);
  }
  $("save").addEventListener("click", () => save(false));
  $("accept").addEventListener("click", () => save(true));
  $("skip").addEventListener("click", () => leave("skip"));
  $("queue").addEventListener("click", () => leave("queue"));
  $("prev").addEventListener("click", () => turn(-1));
  $("next").addEventListener("click", () => turn(1));
  $("mdraw").addEventListener("click", () => { S.mode = S.mode === "draw" ? "select" : "draw"; draw(); view.focus(); });
  $("mlink").addEventListener("click", () => { S.mode = S.mode === "link" ? "select" : "link"; S.linkFrom = null; draw(); view.focus(); });
  $("merge").addEventListener("click", merge);
  $("split").addEventListener("click", () => { S.mode = S.mode === "split" ? "select" : "split"; draw(); view.focus(); });
  $("reread").addEventListener("click", () => { if (S.sel.length === 1) requestReread(S.sel[0]); });
  $("only").addEventListener("click", () => { S.onlyUncertain = !S.onlyUncertain; draw(); });
  $("zin").addEventListener("click", () => setZoom(S.zoom * 1.25));
  $("zout").addEventListener("click", () => setZoom(S.zoom / 1.25));
  $("zfit").addEventListener("click", () => setZoom(1));
  function turn(step) {
    const i = S.pages.findIndex(p => p.number === S.page) + step;
    if (i < 0 || i >= S.pages.length) return;
    S.page = S.pages[i].number; S.sel = []; S.selLink = null; S.linkFrom = null;
    draw();
  }

  // -- Streamlit renders ------------------------------------------------------------------------

  function fitHeight() {
    let avail = 900;
    try {
      const top = window.frameElement ? window.frameElement.getBoundingClientRect().top + window.parent.scrollY : 0;
      avail = Math.max(520, window.parent.innerHeight - Math.max(0, Math.min(top, 400)) - 24);
    } catch (e) { /* not same-origin */ }
    const barH = $("bar").offsetHeight;
    view.style.height = (avail - barH - 8) + "px";
    $("panel").style.maxHeight = (avail - barH - 8) + "px";
    send("streamlit:setFrameHeight", {height: avail});
  }
  window.addEventListener("message", function (event) {
    const data = event.data;
    if (!data || data.type !== "streamlit:render") return;
    const args = data.args, first = S.args === null;
    S.args = args;
    if (S.busy && (args.load !== S.key || (args.status && args.status.seq !== S.lastSeq))) {
      S.timings.push({action: S.busy.action + " round trip", ms: performance.now() - S.busy.t0});
    }
    if (args.load !== S.key) {
      const sameDoc = args.doc && args.doc.id === S.docId;
      S.key = args.load; S.docId = args.doc ? args.doc.id : null; S.busy = null;
      if (!sameDoc) { S.sel = []; S.selLink = null; S.visited = new Set(); S.page = 1; S.mode = "select"; S.rereadQueue = []; S.rereadSent = null; view.scrollTo(0, 0); }
      load(args.doc);
      overlay = null;
    } else if (S.busy && args.status && args.status.seq !== S.lastSeq) {
      S.busy = null;  // the server answered but kept this document (an error, or nothing to do)
    }
    if (args.status && args.status.seq !== S.lastSeq) {
      S.lastSeq = args.status.seq;
      status(args.status.message, args.status.kind);
      if (args.status.ms != null) S.timings.push({action: args.status.action, ms: args.status.ms});
    }
    receiveReread(args.reread);
    if (first) { installInParent(); fitHeight(); }
    changed();
    if (first) view.focus({preventScroll: true});
  });
  window.addEventListener("resize", () => { fitHeight(); layout(); draw(); });
  send("streamlit:componentReady", {apiVersion: 1});
})();
