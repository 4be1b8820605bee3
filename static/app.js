// WebUI for POST /ocr_service: upload an image, draw the detected boxes over it,
// list the text lines. A PDF or TIFF goes as a task (block_flag=false) whose progress is
// followed by long-polling; its pages come back with a JPEG preview each (page_images=true),
// drawn with the boxes over it (a page without one: a sheet with each line's text in its box).
// Plain browser JavaScript, no dependencies, no build step.
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const byId = (id) => document.getElementById(id);
  const fileInput = byId("file");
  const detSelect = byId("det");
  const passwordField = byId("password-field");
  const passwordInput = byId("password");
  // The server's codes for a PDF that needs its password (or got a wrong one).
  const PASSWORD_CODES = new Set(["pdf_password_required", "pdf_password_wrong"]);
  const message = byId("message");
  const result = byId("result");
  const stage = document.querySelector(".stage");
  const image = byId("image");
  const overlay = byId("overlay");
  const linesList = byId("lines");
  const pagesView = byId("pages");
  const progress = byId("progress");
  const figure = byId("figure");
  // Seconds each task poll may wait for the document to finish (the progress bar moves as often).
  const POLL_WAIT_S = 1;
  // A poll that cannot reach the server (a dropped connection, a proxy's 502-504 while a node
  // restarts) is tried again after 1, 2, then 4 s before the page gives up: the task goes on.
  const POLL_RETRY_DELAYS_MS = [1000, 2000, 4000];
  const RETRY_STATUSES = new Set([502, 503, 504]);
  // How long the page waits for an answer before it gives up: a frozen server or proxy must not
  // leave it busy for ever. The server answers within its own deadlines (a queue wait and a run
  // of task_timeout each: 120 s by default); a 20 MiB upload over a slow link takes longer.
  const ANSWER_TIMEOUT_S = 600;
  // A task poll waits POLL_WAIT_S on the server: one silent this long is lost (and tried again).
  const POLL_TIMEOUT_S = 30;

  let lines = []; // text_lines of the result on screen
  let pinned = -1; // line selected by a click; hovering shows others only while hovering
  let lastFile = null; // re-read when the detection mode changes
  let imageUrl = null;
  let uploadSeq = 0; // an answer to an upload that a newer one replaced is dropped
  // Aborts the replaced upload's requests: the server then drops its task if it has not
  // started, and a few quick re-uploads do not hold all of the browser's connections.
  let inFlight = new AbortController();
  // The status URL of the document task being followed: a newer upload (or leaving the page)
  // cancels it on the server, whose pages not read yet would otherwise go on taking the
  // workers from the upload that replaced it.
  let followed = null;

  function cancelFollowed() {
    if (followed === null) return;
    fetch(followed, { method: "DELETE", keepalive: true }).catch(() => {});
    followed = null;
  }

  // body[data-state] is idle | busy | done | error: CSS and the end-to-end test read it.
  function setState(state) {
    document.body.dataset.state = state;
  }

  function showMessage(text, kind) {
    message.textContent = text;
    message.className = `message ${kind}`;
    // Errors interrupt a screen reader; progress notes do not.
    message.setAttribute("role", kind === "error" ? "alert" : "status");
    message.hidden = false;
  }

  function errorText(response, body) {
    const error = body && body.error;
    let text = error
      ? `${error.message} (HTTP ${response.status}, ${error.code})`
      : `The server answered HTTP ${response.status} ${response.statusText}`.trim();
    const retry = response.headers.get("Retry-After");
    if (retry) text += `. Try again in ${retry} s.`;
    return text;
  }

  async function upload(file) {
    const seq = ++uploadSeq;
    cancelFollowed();
    inFlight.abort();
    inFlight = new AbortController();
    lastFile = file;
    setState("busy");
    showMessage(`Reading ${file.name || "the image"}…`, "info");
    try {
      await send(file, seq, inFlight.signal);
    } catch (err) {
      // An answer the page cannot draw (not the shape it expects) must not leave it busy for ever.
      if (seq === uploadSeq) fail(`${file.name || "The image"}: cannot show the server's answer (${err.message}).`);
    }
  }

  // fetch and its JSON body (null when it is not JSON: a proxy's HTML page), given up after
  // `seconds` as well as when `signal` aborts.
  async function fetchAnswer(url, options, seconds, signal) {
    const own = new AbortController();
    const forward = () => own.abort();
    if (signal.aborted) own.abort();
    signal.addEventListener("abort", forward, { once: true });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      own.abort();
    }, seconds * 1000);
    try {
      const response = await fetch(url, { ...options, signal: own.signal });
      const body = await response.json().catch(() => null);
      if (own.signal.aborted) throw new DOMException("aborted", "AbortError"); // while reading the body
      return { response, body };
    } catch (err) {
      if (timedOut) throw new Error(`no answer within ${seconds} s`);
      throw err;
    } finally {
      clearTimeout(timer);
      signal.removeEventListener("abort", forward);
    }
  }

  async function send(file, seq, signal) {
    const form = new FormData();
    form.append("file_type", "file");
    form.append("det", detSelect.value);
    const asTask = looksLikeDocument(file);
    if (asTask) {
      form.append("block_flag", "false");
      form.append("page_images", "true"); // the browser cannot draw a PDF or TIFF page itself
    }
    if (asTask && passwordInput.value) form.append("password", passwordInput.value);
    form.append("file", file, file.name || "image");

    let response;
    let body = null;
    // A document's upload is not given up when a newer one starts: the server may have made
    // its task already, and only its 202 names it. A 202 that comes after a newer upload
    // started is cancelled at once (aborted instead, the task read every page for nobody).
    const postSignal = asTask ? new AbortController().signal : signal;
    try {
      ({ response, body } = await fetchAnswer("/ocr_service", { method: "POST", body: form }, ANSWER_TIMEOUT_S, postSignal));
    } catch (err) {
      if (seq === uploadSeq) fail(`Cannot reach the OCR server (${err.message}).`);
      return;
    }
    if (seq !== uploadSeq) {
      if (asTask && response.status === 202 && body && body.status !== "done" && typeof body.status_url === "string") {
        fetch(body.status_url, { method: "DELETE", keepalive: true }).catch(() => {});
      }
      return;
    }
    if (asTask && response.status === 202 && body && body.status !== "done") {
      ({ response, body } = await followTask(body, file, seq, signal));
      if (seq !== uploadSeq || !response) return;
    }
    progress.hidden = true;
    if (!response.ok || !body || body.status !== "done") {
      fail(`${file.name || "The image"}: ${errorText(response, body)}`);
      if (body && body.error && PASSWORD_CODES.has(body.error.code)) askPassword();
      return;
    }
    passwordField.hidden = true;
    if (body.pages) {
      renderDocument(body);
      const failed = body.pages_failed ? `; ${body.pages_failed} could not be read` : "";
      showMessage(`Read ${body.pages.length} page${body.pages.length === 1 ? "" : "s"}, ${lines.length} text lines${failed}.`, "info");
    } else {
      await render(file, body, seq);
      if (seq !== uploadSeq) return;
      const count = body.text_lines.length;
      showMessage(count ? `Found ${count} text line${count === 1 ? "" : "s"}.` : "No text found in this image.", "info");
    }
    setState("done");
  }

  function looksLikeDocument(file) {
    return /^(application\/pdf|image\/tiff)$/.test(file.type) || /\.(pdf|tiff?)$/i.test(file.name || "");
  }

  // Long-poll the task until it is done or failed, moving the progress bar as pages finish.
  async function followTask(task, file, seq, signal) {
    followed = task.status_url;
    try {
      return await pollTask(task, file, seq, signal);
    } finally {
      // Ended (or given up on): nothing to cancel, unless a newer upload follows its own.
      if (seq === uploadSeq && followed === task.status_url) followed = null;
    }
  }

  async function pollTask(task, file, seq, signal) {
    let body = task;
    let retries = 0;
    for (;;) {
      showProgress(body, file);
      let response;
      let lost = null; // why this poll did not get an answer, if it did not
      try {
        const answer = await fetchAnswer(`${task.status_url}?wait=${POLL_WAIT_S}`, {}, POLL_TIMEOUT_S, signal);
        response = answer.response;
        if (RETRY_STATUSES.has(response.status)) lost = `HTTP ${response.status}`;
        else body = answer.body;
      } catch (err) {
        if (signal.aborted) return { response: null, body: null }; // a newer upload replaced it
        lost = err.message;
      }
      if (seq !== uploadSeq) return { response: null, body: null };
      if (lost !== null) {
        if (retries === POLL_RETRY_DELAYS_MS.length) {
          fail(`Cannot reach the OCR server (${lost}); the task may still finish: ${task.status_url}`);
          return { response: null, body: null };
        }
        showMessage(`Connection lost (${lost}); trying again…`, "info");
        await new Promise((resolve) => setTimeout(resolve, POLL_RETRY_DELAYS_MS[retries++]));
        if (seq !== uploadSeq) return { response: null, body: null };
        continue;
      }
      retries = 0;
      if (!response.ok || !body) return { response, body };
      if (body.status === "failed") {
        const error = body.error || {};
        // Shown as the answer a blocking request would have had, its Retry-After included.
        const headers = new Headers(error.retry_after ? { "Retry-After": String(error.retry_after) } : {});
        return { response: { ok: false, status: error.http_status || 500, statusText: "", headers }, body };
      }
      if (body.status === "done") return { response, body };
    }
  }

  function showProgress(body, file) {
    const total = body.pages_total;
    const done = body.pages_done || 0;
    progress.hidden = false;
    if (total) {
      progress.max = total;
      progress.value = done;
      showMessage(`Reading ${file.name || "the document"}: page ${done} of ${total} done…`, "info");
    } else {
      progress.removeAttribute("value"); // indeterminate until the pages are counted
      showMessage(`Reading ${file.name || "the document"}: counting pages…`, "info");
    }
  }

  function fail(text) {
    result.hidden = true;
    progress.hidden = true;
    showMessage(text, "error");
    setState("error");
  }

  async function render(file, body, seq) {
    if (imageUrl) URL.revokeObjectURL(imageUrl);
    imageUrl = URL.createObjectURL(file);
    image.hidden = false;
    image.src = imageUrl;
    let decoded = true;
    try {
      await image.decode();
    } catch {
      decoded = false; // the server read it, the browser cannot show it (e.g. a TIFF)
    }
    // A newer upload started meanwhile: its answer, not this one, goes on screen.
    if (seq !== uploadSeq) return;
    stage.hidden = false;
    pagesView.hidden = true;
    pagesView.replaceChildren();
    const [width, height] = body.image_size;
    // The browser may show the picture turned otherwise than the server read it (an EXIF
    // orientation Chromium does not follow in a WebP, or after a PNG's image data): the boxes
    // would miss their text, so it is treated as a picture the browser cannot show.
    if (decoded && (image.naturalWidth !== width || image.naturalHeight !== height)) decoded = false;
    // A broken-image icon says nothing: each line's text is drawn in its box instead.
    image.hidden = !decoded;
    // The stage keeps the image's aspect ratio and fits the window; the SVG's viewBox is in
    // image pixels, so the boxes scale exactly with the displayed image.
    stage.style.aspectRatio = `${width} / ${height}`;
    stage.style.width = `min(100%, ${width}px, calc(80vh * ${width / height}))`;
    overlay.setAttribute("viewBox", `0 0 ${width} ${height}`);

    lines = body.text_lines;
    pinned = -1;
    drawBoxes(!decoded);
    listLines();
    summarize(body);
    result.hidden = false;
  }

  // A document: one sheet per page, sized from the page's pixels, with every line's box drawn
  // over the page's preview (a JPEG the server made), or its text set in the box without one.
  function renderDocument(body) {
    stage.hidden = true;
    image.removeAttribute("src");
    overlay.replaceChildren();
    lines = [];
    const sheets = body.pages.map((page) => {
      const section = document.createElement("section");
      section.className = "page";
      section.dataset.page = String(page.page);
      const title = document.createElement("h2");
      title.className = "page-title";
      const count = page.text_lines ? page.text_lines.length : 0;
      title.textContent = `Page ${page.page}` + (page.error ? "" : ` · ${count} line${count === 1 ? "" : "s"} · ${page.source === "layer" ? "text layer" : "OCR"}`);
      section.append(title);
      if (page.error) {
        const why = document.createElement("span");
        why.className = "page-error";
        why.textContent = ` · ${page.error.message} (HTTP ${page.error.http_status}, ${page.error.code})`;
        title.append(why);
        return section;
      }
      const [width, height] = page.image_size;
      const sheet = document.createElement("div");
      sheet.className = "sheet";
      sheet.style.aspectRatio = `${width} / ${height}`;
      sheet.style.width = `min(100%, ${width}px, calc(80vh * ${width / height}))`;
      if (page.preview) {
        const picture = document.createElement("img");
        picture.className = "page-image";
        picture.alt = `Page ${page.page}`;
        picture.loading = "lazy"; // a long document fetches the pages scrolled to
        picture.addEventListener("error", () => {
          // Dropped from the server's store since: the sheet shows the text in its boxes instead.
          picture.remove();
          sheet.classList.remove("has-image");
        });
        picture.src = page.preview.url;
        sheet.classList.add("has-image");
        sheet.append(picture);
      }
      const svg = document.createElementNS(SVG_NS, "svg");
      svg.setAttribute("class", "overlay");
      svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
      svg.setAttribute("preserveAspectRatio", "none");
      for (const line of page.text_lines) {
        const index = lines.length;
        lines.push({ ...line, page: page.page });
        svg.append(lineText(line), boxOf(line, index));
      }
      sheet.append(svg);
      section.append(sheet);
      return section;
    });
    fill(pagesView, sheets);
    pagesView.hidden = false;
    pinned = -1;
    listLines();
    summarizeDocument(body);
    result.hidden = false;
  }

  function lineText(line) {
    const xs = line.box.map(([x]) => x);
    const ys = line.box.map(([, y]) => y);
    const [left, right, top, bottom] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    const text = document.createElementNS(SVG_NS, "text");
    text.setAttribute("x", String(left));
    text.setAttribute("y", String(bottom - (bottom - top) * 0.2));
    text.setAttribute("font-size", String(Math.max(1, (bottom - top) * 0.8)));
    text.setAttribute("textLength", String(Math.max(1, right - left)));
    text.setAttribute("lengthAdjust", "spacingAndGlyphs");
    text.textContent = line.text;
    return text;
  }

  function boxOf(line, index) {
    const polygon = document.createElementNS(SVG_NS, "polygon");
    polygon.setAttribute("points", line.box.map(([x, y]) => `${x},${y}`).join(" "));
    polygon.setAttribute("class", "box");
    polygon.dataset.index = String(index);
    const title = document.createElementNS(SVG_NS, "title");
    title.textContent = line.text;
    polygon.append(title);
    return polygon;
  }

  function drawBoxes(withText) {
    const drawn = lines.map((line, index) => (withText ? [lineText(line), boxOf(line, index)] : [boxOf(line, index)]));
    fill(overlay, drawn.flat());
  }

  // replaceChildren(...nodes) overflows the call stack past ~120k nodes (a long text-layer PDF).
  function fill(container, nodes) {
    const fragment = document.createDocumentFragment();
    for (const node of nodes) fragment.append(node);
    container.replaceChildren(fragment);
  }

  function listLines() {
    const items = [];
    lines.forEach((line, index) => {
      if (line.page !== undefined && (index === 0 || lines[index - 1].page !== line.page)) {
        const heading = document.createElement("li");
        heading.className = "page-heading";
        heading.textContent = `Page ${line.page}`;
        items.push(heading);
      }
      items.push(lineItem(line, index));
    });
    fill(linesList, items);
  }

  function lineItem(line, index) {
    const item = document.createElement("li");
    item.className = "line";
    item.tabIndex = 0;
    item.dataset.index = String(index);
    // No item.value: Chrome then renumbers the whole list per item (10k lines froze it 30 s+);
    // page headings are kept out of the numbering by CSS instead.
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = line.text; // textContent, never innerHTML: OCR output is untrusted
    const confidence = document.createElement("span");
    confidence.className = "confidence";
    confidence.textContent = `${(line.confidence * 100).toFixed(1)}%`;
    item.append(text, confidence);
    return item;
  }


  function formatTiming(timing) {
    const order = ["request", "total", "queue_wait", "decode", "det", "cls", "rec"];
    const names = Object.keys(timing).sort((a, b) => rank(order, a) - rank(order, b));
    return names
      .filter((name) => typeof timing[name] === "number")
      .map((name) => `${name.replace("_", " ")} ${Math.round(timing[name])} ms`)
      .join(" · ");
  }

  function rank(order, name) {
    const index = order.indexOf(name);
    return index < 0 ? order.length : index;
  }

  function summarize(body) {
    byId("line-count").textContent = String(body.text_lines.length);
    byId("cached").textContent = body.cached ? "yes (served from the cache)" : "no";
    const detection = { true: "text lines detected", false: "read as one line" };
    byId("det-used").textContent = detection[body.det_used] || "–";
    byId("image-size").textContent = `${body.image_size[0]} × ${body.image_size[1]} px`;
    byId("timing").textContent = formatTiming(body.timing || {});
  }

  function summarizeDocument(body) {
    byId("line-count").textContent = String(lines.length);
    byId("cached").textContent = body.cached ? "yes (served from the cache)" : "no";
    const sources = body.pages.map((page) => (page.error ? "failed" : page.source));
    const counts = ["ocr", "layer", "failed"].map((name) => [name, sources.filter((s) => s === name).length]);
    byId("det-used").textContent = counts
      .filter(([, n]) => n)
      .map(([name, n]) => `${n} ${name === "ocr" ? "OCR" : name === "layer" ? "text layer" : "failed"}`)
      .join(", ");
    byId("image-size").textContent = `${body.document.type.toUpperCase()}, ${body.pages.length} page${body.pages.length === 1 ? "" : "s"}`;
    byId("timing").textContent = formatTiming(body.timing || {});
  }

  // Highlight one line and its box (-1: none).
  function highlight(index) {
    for (const el of document.querySelectorAll(".box.active, .line.active")) el.classList.remove("active");
    if (index < 0 || index >= lines.length) return;
    const box = figure.querySelector(`.box[data-index="${index}"]`);
    box.classList.add("active");
    if (box.parentNode.lastElementChild !== box) box.parentNode.append(box); // on top of overlapping boxes
    lineAt(index).classList.add("active");
  }

  function lineAt(index) {
    return linesList.querySelector(`.line[data-index="${index}"]`);
  }

  // Boxes are re-ordered by highlight(), so the index is read from the element, not its position.
  function indexOf(event) {
    const el = event.target.closest("[data-index]");
    return el ? Number(el.dataset.index) : -1;
  }

  function wireHighlighting(container) {
    container.addEventListener("mouseover", (event) => {
      const index = indexOf(event);
      if (index >= 0) highlight(index);
    });
    container.addEventListener("mouseout", () => highlight(pinned));
    container.addEventListener("click", (event) => {
      const index = indexOf(event);
      if (index < 0) return;
      pinned = pinned === index ? -1 : index;
      highlight(pinned);
      if (container !== linesList && pinned >= 0) {
        lineAt(pinned).scrollIntoView({ block: "nearest" });
      }
    });
  }

  async function copyAll() {
    const text = lines.map((line) => line.text).join("\n");
    let copied = false;
    try {
      await navigator.clipboard.writeText(text);
      copied = true;
    } catch {
      copied = legacyCopy(text); // navigator.clipboard needs a secure context (https or localhost)
    }
    if (copied) showMessage(`Copied ${lines.length} line${lines.length === 1 ? "" : "s"} to the clipboard.`, "info");
    else showMessage("The browser refused to copy: select the lines and copy them by hand.", "error");
  }

  function legacyCopy(text) {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    document.body.append(area);
    area.select();
    let copied = false;
    try {
      copied = document.execCommand("copy");
    } catch {
      copied = false;
    }
    area.remove();
    return copied;
  }

  function takeFile(files) {
    const file = files && files[0];
    if (!file) {
      showMessage("Drop an image file.", "error");
      return;
    }
    passwordInput.value = ""; // another file: a password typed for the last one is not sent with it
    passwordField.hidden = true;
    upload(file);
  }

  // A protected PDF: its password is asked for, and the same file is read again with it.
  function askPassword() {
    passwordField.hidden = false;
    passwordInput.select();
    passwordInput.focus();
  }

  byId("upload").addEventListener("submit", (event) => {
    event.preventDefault();
    if (lastFile) upload(lastFile);
  });

  fileInput.addEventListener("change", () => {
    takeFile(fileInput.files);
    fileInput.value = ""; // choosing the same file again still fires "change"
  });
  detSelect.addEventListener("change", () => {
    if (lastFile) upload(lastFile);
  });
  byId("copy").addEventListener("click", copyAll);
  wireHighlighting(figure);
  wireHighlighting(linesList);
  linesList.addEventListener("focusin", (event) => highlight(indexOf(event)));
  linesList.addEventListener("focusout", () => highlight(pinned));
  linesList.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      event.target.click();
    }
  });

  // The whole window takes a dropped file, so a near miss does not navigate away from the page.
  let dragDepth = 0;
  // Leaving or reloading the page: nobody will see the document being read.
  window.addEventListener("pagehide", cancelFollowed);
  window.addEventListener("dragenter", (event) => {
    event.preventDefault();
    dragDepth += 1;
    document.body.classList.add("dragging");
  });
  window.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) document.body.classList.remove("dragging");
  });
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    dragDepth = 0;
    document.body.classList.remove("dragging");
    takeFile(event.dataTransfer && event.dataTransfer.files);
  });

  setState("idle");
})();
