// WebUI for POST /ocr_service: upload an image, draw the detected boxes over it,
// list the text lines. Plain browser JavaScript, no dependencies, no build step.
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const byId = (id) => document.getElementById(id);
  const fileInput = byId("file");
  const detSelect = byId("det");
  const message = byId("message");
  const result = byId("result");
  const stage = document.querySelector(".stage");
  const image = byId("image");
  const overlay = byId("overlay");
  const linesList = byId("lines");

  let lines = []; // text_lines of the result on screen
  let pinned = -1; // line selected by a click; hovering shows others only while hovering
  let lastFile = null; // re-read when the detection mode changes
  let imageUrl = null;
  let uploadSeq = 0; // an answer to an upload that a newer one replaced is dropped

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
    lastFile = file;
    setState("busy");
    showMessage(`Reading ${file.name || "the image"}…`, "info");
    const form = new FormData();
    form.append("file_type", "file");
    form.append("det", detSelect.value);
    form.append("file", file, file.name || "image");

    let response;
    let body = null;
    try {
      response = await fetch("/ocr_service", { method: "POST", body: form });
      body = await response.json().catch(() => null); // a proxy's HTML error page is not JSON
    } catch (err) {
      if (seq === uploadSeq) fail(`Cannot reach the OCR server (${err.message}).`);
      return;
    }
    if (seq !== uploadSeq) return;
    if (!response.ok || !body || body.status !== "done") {
      fail(`${file.name || "The image"}: ${errorText(response, body)}`);
      return;
    }
    await render(file, body);
    if (seq !== uploadSeq) return;
    const count = body.text_lines.length;
    showMessage(count ? `Found ${count} text line${count === 1 ? "" : "s"}.` : "No text found in this image.", "info");
    setState("done");
  }

  function fail(text) {
    result.hidden = true;
    showMessage(text, "error");
    setState("error");
  }

  async function render(file, body) {
    if (imageUrl) URL.revokeObjectURL(imageUrl);
    imageUrl = URL.createObjectURL(file);
    image.src = imageUrl;
    try {
      await image.decode();
    } catch {
      // The server read it, the browser cannot show it (e.g. TIFF): boxes and lines still help.
    }
    const [width, height] = body.image_size;
    // The stage keeps the image's aspect ratio and fits the window; the SVG's viewBox is in
    // image pixels, so the boxes scale exactly with the displayed image.
    stage.style.aspectRatio = `${width} / ${height}`;
    stage.style.width = `min(100%, ${width}px, calc(80vh * ${width / height}))`;
    overlay.setAttribute("viewBox", `0 0 ${width} ${height}`);

    lines = body.text_lines;
    pinned = -1;
    drawBoxes();
    listLines();
    summarize(body);
    result.hidden = false;
  }

  function drawBoxes() {
    overlay.replaceChildren(
      ...lines.map((line, index) => {
        const polygon = document.createElementNS(SVG_NS, "polygon");
        polygon.setAttribute("points", line.box.map(([x, y]) => `${x},${y}`).join(" "));
        polygon.setAttribute("class", "box");
        polygon.dataset.index = String(index);
        const title = document.createElementNS(SVG_NS, "title");
        title.textContent = line.text;
        polygon.append(title);
        return polygon;
      }),
    );
  }

  function listLines() {
    linesList.replaceChildren(
      ...lines.map((line, index) => {
        const item = document.createElement("li");
        item.className = "line";
        item.tabIndex = 0;
        item.dataset.index = String(index);
        const text = document.createElement("span");
        text.className = "text";
        text.textContent = line.text; // textContent, never innerHTML: OCR output is untrusted
        const confidence = document.createElement("span");
        confidence.className = "confidence";
        confidence.textContent = `${(line.confidence * 100).toFixed(1)}%`;
        item.append(text, confidence);
        return item;
      }),
    );
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

  // Highlight one line and its box (-1: none).
  function highlight(index) {
    for (const el of document.querySelectorAll(".box.active, .line.active")) el.classList.remove("active");
    if (index < 0 || index >= lines.length) return;
    const box = overlay.querySelector(`[data-index="${index}"]`);
    box.classList.add("active");
    if (overlay.lastElementChild !== box) overlay.append(box); // on top of overlapping boxes
    linesList.children[index].classList.add("active");
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
      if (container === overlay && pinned >= 0) {
        linesList.children[pinned].scrollIntoView({ block: "nearest" });
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
    upload(file);
  }

  fileInput.addEventListener("change", () => {
    takeFile(fileInput.files);
    fileInput.value = ""; // choosing the same file again still fires "change"
  });
  detSelect.addEventListener("change", () => {
    if (lastFile) upload(lastFile);
  });
  byId("copy").addEventListener("click", copyAll);
  wireHighlighting(overlay);
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
